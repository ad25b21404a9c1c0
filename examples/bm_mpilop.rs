//! Benchmark of `MpiLop`, counterpart of Python lazylinop's `bm_mpilop.py`:
//! an `n × n` float64 matrix in a `.npz` file times `n × k`, first and
//! steady products, adjoint included, against one process's sequential faer
//! product. Run it with 1 and 2 ranks:
//!
//! ```text
//! cargo build --release --features mpi --example bm_mpilop
//! mpirun -n 1 target/release/examples/bm_mpilop [n k reps]
//! mpirun -n 2 target/release/examples/bm_mpilop [n k reps]
//! ```
//!
//! The sparse case, `sparse` first: a scipy sparse float64 file (CSR or
//! CSC, `scipy.sparse.save_npz`), or without a file a random square CSR
//! matrix of `rows` rows (10⁶) with about `per_row` nonzeros a row (20) at
//! random columns (within `band` columns of the diagonal if given: the
//! operand's rows a row reads are then near each other, as in a mesh's
//! matrix, while anywhere each entry reads a random row of the operand and
//! the product is bound by memory), generated with a fixed seed and written by rank 0 with
//! `lazylinop::npz::save_sparse` (aligned, stored members: every rank maps
//! its share in place). It times `k` columns (64) through one process
//! running the crate's sparse kernel ([`Sparse`]) on the whole matrix
//! against the sparse `MpiLop` on the ranks (`Par::Seq` everywhere), first
//! product and steady, `L·X` and `Lᴴ·Y`, and prints each rank's resident
//! memory before and after building the operator against its share of
//! `nnz·(value + index size)` plus its share of `indptr`:
//!
//! ```text
//! mpirun -n 2 target/release/examples/bm_mpilop sparse [rows k reps [per_row [band]]]
//! mpirun -n 2 target/release/examples/bm_mpilop sparse file.npz [k reps]
//! ```
//!
//! With `--csv` (anywhere in the arguments), rank 0 also merges its rows into
//! `bench-results/mpilop.csv` (one per case, rank count, `bcast_op` and
//! product, replacing those of an earlier run), which `scripts/plots.py`
//! draws; runs with 1 and 2 ranks each add theirs.

use std::time::Instant;

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use lazylinop::mpi::MpiLop;
use lazylinop::npz::{IndexDtype, NpzMatrix, SparseNpz};
use lazylinop::prelude::*;
use lazylinop::random;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};

#[path = "../benches/common/results.rs"]
mod results;

/// The columns of `bench-results/mpilop.csv`; the first four are a row's key.
const CSV_HEADER: [&str; 11] = [
    "case",
    "ranks",
    "bcast_op",
    "product",
    "anchor_seconds",
    "build_seconds",
    "first_seconds",
    "steady_seconds",
    "gflops",
    "speedup",
    "run",
];

/// One row of `bench-results/mpilop.csv`: `anchor` is one process's time for the same product
/// (`None` where not measured).
#[allow(clippy::too_many_arguments)]
fn csv_row(
    case: &str,
    ranks: i32,
    bcast_op: bool,
    product: &str,
    anchor: Option<f64>,
    build: f64,
    first: f64,
    steady: f64,
    flops: f64,
) -> Vec<String> {
    let secs = |t: f64| format!("{t:.6e}");
    vec![
        case.to_string(),
        ranks.to_string(),
        bcast_op.to_string(),
        product.to_string(),
        anchor.map_or(String::new(), secs),
        secs(build),
        secs(first),
        secs(steady),
        format!("{:.3}", flops / steady * 1e-9),
        anchor.map_or(String::new(), |a| format!("{:.3}", a / steady)),
        results::run_id(),
    ]
}

/// Merges rank 0's rows into `bench-results/mpilop.csv` when `--csv` was given.
fn write_csv(rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        return;
    }
    match results::merge("mpilop.csv", &CSV_HEADER, 4, rows) {
        Ok(path) => println!("written to {}", path.display()),
        Err(e) => eprintln!("could not write bench-results/mpilop.csv: {e}"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds `f` takes on rank 0, all ranks starting together.
fn timed(world: &SimpleCommunicator, f: impl FnOnce()) -> f64 {
    world.barrier();
    let start = Instant::now();
    f();
    let t = start.elapsed().as_secs_f64();
    world.barrier();
    t
}

fn main() {
    let universe = mpi::initialize().expect("MPI initializes");
    let world = universe.world();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let csv = args.iter().any(|a| a == "--csv");
    args.retain(|a| a != "--csv");
    let rows = match args.split_first() {
        Some((first, rest)) if first == "sparse" => sparse(&world, rest),
        _ => dense(&world, &args),
    };
    if csv && world.rank() == 0 {
        write_csv(rows);
    }
}

/// The dense case; returns rank 0's rows for the CSV.
fn dense(world: &SimpleCommunicator, args: &[String]) -> Vec<Vec<String>> {
    let (rank, size) = (world.rank(), world.size());
    let mut args = args.iter().map(|a| a.parse::<usize>().expect("usage: bm_mpilop [n k reps]"));
    let (n, k, reps) = (args.next().unwrap_or(4000), args.next().unwrap_or(256), args.next().unwrap_or(5));
    let path = std::env::temp_dir().join(format!("lazylinop-bm-mpilop-{n}.npz"));
    if rank == 0 {
        lazylinop::npz::save(&path, "M", random::mat::<f64>(n, n, 0).as_ref()).expect("write the matrix");
    }
    world.barrier();
    let x = random::mat::<f64>(n, k, 1);
    let flops = 2.0 * (n * n * k) as f64;

    // One process's sequential faer product, the matrix in memory.
    let mut t_seq = f64::NAN;
    if rank == 0 {
        let dense = NpzMatrix::open(&path, None).unwrap().read_rows::<f64>(0..n).unwrap();
        let mut out = Mat::zeros(n, k);
        t_seq = median(
            (0..reps)
                .map(|_| {
                    let start = Instant::now();
                    matmul(out.as_mut(), Accum::Replace, dense.as_ref(), x.as_ref(), 1.0, Par::Seq);
                    start.elapsed().as_secs_f64()
                })
                .collect(),
        );
        println!(
            "{n}×{n} @ {n}×{k}, float64, {size} rank(s); one process sequential: {:.1} ms ({:.1} GFLOP/s)",
            t_seq * 1e3,
            flops / t_seq * 1e-9
        );
        println!(
            "| ranks | bcast_op | build (CRC-32 verified) | build, trusted (no CRC) | copy of own rows | first L·X | steady L·X | GFLOP/s | speedup | first/steady | first Lᴴ·Y | steady Lᴴ·Y |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    }
    world.barrier();

    let case = format!("dense_{n}x{n}_x_{k}");
    let mut rows = Vec::new();
    for bcast_op in [false, true] {
        let t_trusted = timed(world, || {
            drop(MpiLop::<f64>::new_trusted(world, &path, None, bcast_op, Some((n, n))).unwrap());
        });
        let mut l = None;
        let t_build =
            timed(world, || l = Some(MpiLop::<f64>::new(world, &path, None, bcast_op, Some((n, n))).unwrap()));
        let l = l.unwrap();
        // What the copy path costs (np.savez data is unaligned for f64): reading this rank's rows.
        let t_copy = timed(world, || {
            NpzMatrix::open(&path, None).unwrap().read_rows::<f64>(l.local_rows()).unwrap();
        });
        let mut out = Mat::zeros(n, k);
        let mut buf = MemBuffer::new(l.apply_scratch(k, Par::Seq).or(l.transpose_apply_scratch(k, Par::Seq)));
        let mut apply = |adjoint: bool| {
            timed(world, || {
                let stack = MemStack::new(&mut buf);
                if adjoint {
                    l.adjoint_apply(out.as_mut(), x.as_ref(), Par::Seq, stack)
                } else {
                    l.apply(out.as_mut(), x.as_ref(), Par::Seq, stack)
                }
            })
        };
        let first = apply(false);
        let steady = median((0..reps).map(|_| apply(false)).collect());
        let first_adj = apply(true);
        let steady_adj = median((0..reps).map(|_| apply(true)).collect());
        if rank == 0 {
            println!(
                "| {size} | {bcast_op} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} | {:.2} | {:.2} | {:.1} ms | {:.1} ms |",
                t_build * 1e3,
                t_trusted * 1e3,
                t_copy * 1e3,
                first * 1e3,
                steady * 1e3,
                flops / steady * 1e-9,
                t_seq / steady,
                first / steady,
                first_adj * 1e3,
                steady_adj * 1e3
            );
            rows.push(csv_row(&case, size, bcast_op, "apply", Some(t_seq), t_build, first, steady, flops));
            rows.push(csv_row(&case, size, bcast_op, "adjoint", None, t_build, first_adj, steady_adj, flops));
        }
    }
    rows
}

/// This process's resident memory in bytes: `Rss` and `Anonymous` of
/// `/proc/self/smaps_rollup` (file-backed pages of a map count in `Rss` once
/// touched, and leave it when unmapped).
fn memory() -> [u64; 2] {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    [field("Rss:"), field("Anonymous:")]
}

/// A random square CSR matrix, `rows × rows`, with `per_row ± 5` nonzeros a
/// row at distinct sorted columns (one in each of as many equal buckets of a
/// window of `band` columns around the diagonal, or of the whole row when
/// `band` is 0), values in `[-1, 1)`; a fixed 64-bit LCG, so the same on
/// every run.
fn random_csr(rows: usize, per_row: usize, band: usize) -> (Vec<u32>, Vec<u32>, Vec<f64>) {
    let window = if band == 0 { rows } else { band.min(rows) };
    assert!(rows <= i32::MAX as usize, "rows must fit int32 indices");
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        state >> 16
    };
    let (mut ptr, mut idx, mut val) = (Vec::with_capacity(rows + 1), Vec::new(), Vec::new());
    ptr.push(0u32);
    for i in 0..rows {
        let count = (per_row.saturating_sub(5) + (next() % 11) as usize).min(window);
        let first = i.saturating_sub(window / 2).min(rows - window);
        if let Some(width) = window.checked_div(count) {
            for b in 0..count {
                idx.push((first + b * width + (next() % width as u64) as usize) as u32);
                val.push((next() % (1 << 40)) as f64 / (1u64 << 39) as f64 - 1.0);
            }
        }
        assert!(idx.len() <= i32::MAX as usize, "nonzeros must fit int32 indices");
        ptr.push(idx.len() as u32);
    }
    (ptr, idx, val)
}

/// Writes every page of the scratch and the outputs (freshly allocated
/// memory is mapped at its first write): the first product then measures the
/// operator, not the page faults of the caller's new buffers.
fn touch(buf: &mut MemBuffer, out: &mut Mat<f64>, out_adj: &mut Mat<f64>) {
    buf.iter_mut().step_by(4096).for_each(|b| {
        b.write(0);
    });
    out.as_mut().fill(0.0);
    out_adj.as_mut().fill(0.0);
}

/// A barrier whose waiting ranks sleep instead of spinning (MPI's barrier
/// polls): the other ranks leave the cores to rank 0's one-process baseline.
fn idle_barrier(world: &SimpleCommunicator) {
    let mut request = world.immediate_barrier();
    loop {
        match request.test() {
            Ok(_) => return,
            Err(pending) => request = pending,
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The sparse case (see the top of the file); returns rank 0's rows for the CSV.
fn sparse(world: &SimpleCommunicator, args: &[String]) -> Vec<Vec<String>> {
    use faer::sparse::{SparseRowMatRef, SymbolicSparseRowMatRef};
    use mpi::traits::Root;
    let (rank, size) = (world.rank(), world.size());
    let usage = "usage: bm_mpilop sparse [rows k reps [per_row [band]]] | file.npz [k reps]]";
    let given = args.first().filter(|a| a.ends_with(".npz")).map(std::path::PathBuf::from);
    let numbers: Vec<usize> = args.iter().skip(usize::from(given.is_some())).map(|a| a.parse().expect(usage)).collect();
    let number = |i: usize, default: usize| numbers.get(i).copied().unwrap_or(default);
    let (path, k, reps) = match &given {
        Some(path) => (path.clone(), number(0, 64), number(1, 5)),
        None => {
            let (rows, per_row, band) = (number(0, 1_000_000), number(3, 20), number(4, 0));
            let mut pid = std::process::id();
            world.process_at_rank(0).broadcast_into(&mut pid);
            let path =
                std::env::temp_dir().join(format!("lazylinop-bm-mpilop-sparse-{rows}x{per_row}-{band}-{pid}.npz"));
            if rank == 0 {
                let start = Instant::now();
                let (ptr, idx, val) = random_csr(rows, per_row, band);
                let s = SymbolicSparseRowMatRef::new_checked(rows, rows, &ptr, None, &idx);
                lazylinop::npz::save_sparse(&path, SparseRowMatRef::new(s, &val)).expect("write the matrix");
                println!(
                    "generated and saved a random {rows}×{rows} CSR matrix, {} nonzeros, {}, in {:.1} s",
                    val.len(),
                    if band == 0 { "columns anywhere".to_string() } else { format!("columns within a band of {band}") },
                    start.elapsed().as_secs_f64()
                );
            }
            world.barrier();
            (path, number(1, 64), number(2, 5))
        }
    };
    let reps = reps.max(1);
    let npz = SparseNpz::open(&path).expect("open the sparse file");
    let (m, n, nnz, index_size) = (npz.shape().0, npz.shape().1, npz.nnz(), npz.index_dtype().size());
    let format = npz.format();
    drop(npz);
    let flops = 2.0 * nnz as f64 * k as f64;

    // Resident memory around the construction, on every rank.
    world.barrier();
    let before = memory();
    let t0 = Instant::now();
    let l = MpiLop::<f64>::new(world, &path, None, false, None).unwrap_or_else(|e| {
        if rank == 0 {
            eprintln!("{e}");
        }
        std::process::exit(1)
    });
    let t_build = t0.elapsed().as_secs_f64();
    let after = memory();
    let major = if l.format() == Some(lazylinop::sparse::Format::Csc) { l.local_cols() } else { l.local_rows() };
    let local_nnz = l.local_nnz().expect("a sparse file") as u64;
    let share = local_nnz * (8 + index_size as u64) + (major.len() as u64 + 1) * index_size as u64;
    let mine = [before[0], after[0], before[1], after[1], share, local_nnz, major.start as u64, major.end as u64];
    let mut all = vec![0u64; mine.len() * size as usize];
    world.all_gather_into(&mine[..], &mut all[..]);
    let whole = nnz as u64 * (8 + index_size as u64) + (m.max(n) as u64 + 1) * index_size as u64;
    if rank == 0 {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "{} ({format:?}, {m}×{n}, {nnz} nonzeros, {} indices), float64, {size} rank(s), {k} columns; \
             whole matrix {:.1} MiB; MpiLop::new {:.1} ms on rank 0, {}",
            path.display(),
            if index_size == 4 { "int32" } else { "int64" },
            mib(whole),
            t_build * 1e3,
            if l.is_mapped() { "viewed in place" } else { "copied" }
        );
        println!(
            "| rank | major indices | nonzeros | share (MiB) | RSS before → after (MiB) | RSS growth / share | anonymous growth (MiB) | RSS growth / whole |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for (r, a) in all.chunks_exact(mine.len()).enumerate() {
            let grown = a[1].saturating_sub(a[0]);
            println!(
                "| {r} | {}..{} | {} | {:.1} | {:.1} → {:.1} | {:.3} | {:.1} | {:.3} |",
                a[6],
                a[7],
                a[5],
                mib(a[4]),
                mib(a[0]),
                mib(a[1]),
                grown as f64 / a[4].max(1) as f64,
                mib(a[3].saturating_sub(a[2])),
                grown as f64 / whole as f64
            );
        }
    }

    // One process running the same kernel on the whole matrix (a view into its own map).
    let x = random::mat::<f64>(n, k, 1);
    let y = random::mat::<f64>(m, k, 2);
    let mut seq = [f64::NAN; 4];
    let mut seq_out = (Mat::<f64>::zeros(0, 0), Mat::<f64>::zeros(0, 0));
    if rank == 0 {
        let npz = SparseNpz::open(&path).unwrap();
        let run = |op: &dyn BiLinOp<f64>| {
            let mut out = Mat::zeros(m, k);
            let mut out_adj = Mat::zeros(n, k);
            let mut buf = MemBuffer::new(op.apply_scratch(k, Par::Seq).or(op.transpose_apply_scratch(k, Par::Seq)));
            touch(&mut buf, &mut out, &mut out_adj);
            let mut time = |adjoint: bool, out: &mut Mat<f64>| {
                let start = Instant::now();
                let stack = MemStack::new(&mut buf);
                if adjoint {
                    op.adjoint_apply(out.as_mut(), y.as_ref(), Par::Seq, stack)
                } else {
                    op.apply(out.as_mut(), x.as_ref(), Par::Seq, stack)
                }
                start.elapsed().as_secs_f64()
            };
            let first = time(false, &mut out);
            let steady = median((0..reps).map(|_| time(false, &mut out)).collect());
            let first_adj = time(true, &mut out_adj);
            let steady_adj = median((0..reps).map(|_| time(true, &mut out_adj)).collect());
            ([first, steady, first_adj, steady_adj], (out, out_adj))
        };
        (seq, seq_out) = match npz.index_dtype() {
            IndexDtype::Int32 => {
                let part = npz.part::<f64, u32>(0..npz.major()).expect("read the matrix");
                match part.as_csr() {
                    Some(a) => run(&Sparse::new(a)),
                    None => run(&Sparse::new(part.as_csc().unwrap())),
                }
            }
            IndexDtype::Int64 => {
                let part = npz.part::<f64, u64>(0..npz.major()).expect("read the matrix");
                match part.as_csr() {
                    Some(a) => run(&Sparse::new(a)),
                    None => run(&Sparse::new(part.as_csc().unwrap())),
                }
            }
        };
        println!(
            "one process, the sparse kernel on the whole matrix (Par::Seq): L·X first {:.1} ms, steady {:.1} ms ({:.2} GFLOP/s); Lᴴ·Y first {:.1} ms, steady {:.1} ms",
            seq[0] * 1e3,
            seq[1] * 1e3,
            flops / seq[1] * 1e-9,
            seq[2] * 1e3,
            seq[3] * 1e3
        );
        println!(
            "| ranks | bcast_op | first L·X | steady L·X | GFLOP/s | speedup | first/steady | first Lᴴ·Y | steady Lᴴ·Y | speedup Lᴴ·Y | first/steady Lᴴ·Y |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
    }
    idle_barrier(world);

    let case = match &given {
        Some(path) => format!("sparse_{}_x_{k}", path.file_stem().unwrap_or_default().to_string_lossy()),
        None => format!("sparse_{m}x{n}_nnz{nnz}_x_{k}"),
    };
    let mut rows = Vec::new();
    let mut l = Some(l);
    for bcast_op in [false, true] {
        let l = match l.take() {
            Some(l) => l,
            None => MpiLop::<f64>::new(world, &path, None, bcast_op, None).unwrap(),
        };
        let mut out = Mat::zeros(m, k);
        let mut out_adj = Mat::zeros(n, k);
        let mut buf = MemBuffer::new(l.apply_scratch(k, Par::Seq).or(l.transpose_apply_scratch(k, Par::Seq)));
        touch(&mut buf, &mut out, &mut out_adj);
        let mut apply = |adjoint: bool| {
            timed(world, || {
                let stack = MemStack::new(&mut buf);
                if adjoint {
                    l.adjoint_apply(out_adj.as_mut(), y.as_ref(), Par::Seq, stack)
                } else {
                    l.apply(out.as_mut(), x.as_ref(), Par::Seq, stack)
                }
            })
        };
        let first = apply(false);
        let steady = median((0..reps).map(|_| apply(false)).collect());
        let first_adj = apply(true);
        let steady_adj = median((0..reps).map(|_| apply(true)).collect());
        if rank == 0 {
            // Gathered on rank 0: the same products as the one process's.
            let rel = |a: &Mat<f64>, b: &Mat<f64>| (a - b).norm_max() / b.norm_max().max(f64::MIN_POSITIVE);
            let (e1, e2) = (rel(&out, &seq_out.0), rel(&out_adj, &seq_out.1));
            assert!(e1 < 1e-12 && e2 < 1e-12, "MpiLop differs from the one process: {e1:.1e}, {e2:.1e}");
            println!(
                "| {size} | {bcast_op} | {:.1} ms | {:.1} ms | {:.2} | {:.2} | {:.2} | {:.1} ms | {:.1} ms | {:.2} | {:.2} |",
                first * 1e3,
                steady * 1e3,
                flops / steady * 1e-9,
                seq[1] / steady,
                first / steady,
                first_adj * 1e3,
                steady_adj * 1e3,
                seq[3] / steady_adj,
                first_adj / steady_adj
            );
            rows.push(csv_row(&case, size, bcast_op, "apply", Some(seq[1]), t_build, first, steady, flops));
            rows.push(csv_row(&case, size, bcast_op, "adjoint", Some(seq[3]), t_build, first_adj, steady_adj, flops));
        }
    }
    world.barrier();
    if rank == 0 && given.is_none() {
        let _ = std::fs::remove_file(&path);
    }
    rows
}
