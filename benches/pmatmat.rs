//! Parallel products side by side, in one run: faer's sequential matmul,
//! faer's own parallel matmul, and each backend of `pmatmat`, on dense,
//! composite and small cases (f64). Prints a table of medians, GFLOP/s and
//! speedups over sequential faer at the end, and writes them to
//! `bench-results/pmatmat.csv` (replacing the rows of the cases run), which
//! `scripts/plots.py` draws.
//!
//! `cargo bench --bench pmatmat` (filter with `-- dense_2000`, say).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::matmul::matmul;
use faer::sparse::{SparseColMat, Triplet};
use faer::{Accum, Mat, Par};
use lazylinop::parallel::{Method, pmatmat};
use lazylinop::prelude::*;
use lazylinop::random;

#[path = "common/results.rs"]
mod results;

/// Workers for the parallel variants: the CPUs this process may use.
fn nworkers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Benchmarks `op`'s product with `k` columns through faer's trait, as a user would call it.
fn bench_op<L: BiLinOp<f64>>(c: &mut Criterion, group: &str, id: &str, op: &L, k: usize) {
    let x = random::mat::<f64>(op.ncols(), k, 1);
    let mut out = Mat::zeros(op.nrows(), k);
    let mut buf = MemBuffer::new(op.apply_scratch(k, Par::Seq));
    let mut g = c.benchmark_group(group);
    configure(&mut g, op.nrows() * op.ncols() * k);
    g.bench_function(BenchmarkId::from_parameter(id), |b| {
        b.iter(|| op.apply(black_box(out.as_mut()), black_box(x.as_ref()), Par::Seq, MemStack::new(&mut buf)))
    });
    g.finish();
}

fn configure(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, work: usize) {
    if work > 1 << 26 {
        g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    } else {
        g.sample_size(50).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    }
}

/// Dense `m × m` times `m × k`: faer sequential, faer parallel, pmatmat thread.
fn dense(c: &mut Criterion, m: usize, k: usize) {
    let group = format!("dense_{m}x{m}_x_{k}");
    let a = random::mat::<f64>(m, m, 0);
    let x = random::mat::<f64>(m, k, 1);
    let mut out = Mat::zeros(m, k);
    let p = nworkers();
    {
        let mut g = c.benchmark_group(&group);
        configure(&mut g, m * m * k);
        g.bench_function("faer_seq", |b| {
            b.iter(|| matmul(out.as_mut(), Accum::Replace, a.as_ref(), black_box(x.as_ref()), 1.0, Par::Seq))
        });
        g.bench_function("faer_par", |b| {
            b.iter(|| matmul(out.as_mut(), Accum::Replace, a.as_ref(), black_box(x.as_ref()), 1.0, Par::rayon(p)))
        });
        g.finish();
    }
    bench_op(c, &group, "thread", &pmatmat(&a, Method::Thread, Some(p), false).unwrap(), k);
    bench_op(c, &group, "thread_matvec", &pmatmat(&a, Method::Thread, Some(p), true).unwrap(), k);
    bench_processes(c, &group, &a, k);
}

/// The process backend on `op`: forking per product (output copied back, or
/// written in place in a `SharedMat`), and a pool created once.
fn bench_processes<L: BiLinOp<f64>>(c: &mut Criterion, group: &str, op: &L, k: usize) {
    #[cfg(unix)]
    {
        use lazylinop::parallel::process::SharedMat;
        let p = Some(nworkers());
        let per_product = pmatmat(op, Method::process(), p, false).unwrap();
        bench_op(c, group, "process_per_product", &per_product, k);
        // The same, with the output in shared memory: no copy back.
        let x = random::mat::<f64>(op.ncols(), k, 1);
        let mut out = SharedMat::<f64>::zeros(op.nrows(), k).unwrap();
        let mut buf = MemBuffer::new(per_product.apply_scratch(k, Par::Seq));
        let mut g = c.benchmark_group(group);
        configure(&mut g, op.nrows() * op.ncols() * k);
        g.bench_function("process_per_product_shared_out", |b| {
            b.iter(|| per_product.apply(out.as_mut(), black_box(x.as_ref()), Par::Seq, MemStack::new(&mut buf)))
        });
        g.finish();
        let pool = pmatmat(op, Method::process_pool(), p, false).unwrap();
        bench_op(c, group, "process_pool", &pool, k);
    }
}

/// A sparse `n × n` matrix with `per_col` entries a column, at hashed rows.
fn sparse(n: usize, per_col: usize, seed: usize) -> SparseColMat<usize, f64> {
    let triplets: Vec<_> = (0..n)
        .flat_map(|j| {
            (0..per_col).map(move |t| {
                let i = (j.wrapping_mul(2654435761).wrapping_add(t.wrapping_mul(40503)).wrapping_add(seed)) % n;
                Triplet::new(i, j, 1.0 / (1.0 + t as f64))
            })
        })
        .collect();
    SparseColMat::try_new_from_triplets(n, n, &triplets).unwrap()
}

/// A lazy composite with no parallelism of its own: `S₁·S₂ + D` (sparse,
/// sparse, diagonal; the sparse factors as `Sparse` operators, so with this
/// crate's kernel), sequential against pmatmat thread.
fn composite(c: &mut Criterion) {
    let (n, k) = (20_000, 128);
    let s1 = sparse(n, 40, 1);
    let s2 = sparse(n, 40, 2);
    let d = diag(faer::Col::from_fn(n, |i| 1.0 + i as f64));
    let l = Sparse::new(&s1).compose(Sparse::new(&s2)).plus(&d);
    let group = format!("composite_sparse_{n}_x_{k}");
    bench_op(c, &group, "seq", &l, k);
    bench_op(c, &group, "thread", &pmatmat(&l, Method::Thread, Some(nworkers()), false).unwrap(), k);
    bench_processes(c, &group, &l, k);
}

/// The fixed cost of the process backend: a product too small to matter
/// (1×1 operator, one column a worker), forced parallel, so what is measured
/// is forking, waiting and reaping (per product) or one round trip to the
/// pool.
fn process_overhead(c: &mut Criterion) {
    #[cfg(unix)]
    {
        let a = Mat::<f64>::identity(1, 1);
        let k = nworkers();
        let group = "process_overhead_1x1_x_nworkers";
        let per = pmatmat(&a, Method::process(), Some(k), false).unwrap();
        bench_op(c, group, "process_per_product", &per.with_min_parallel_work(0), k);
        let pool = pmatmat(&a, Method::process_pool(), Some(k), false).unwrap();
        bench_op(c, group, "process_pool", &pool.with_min_parallel_work(0), k);
        bench_op(
            c,
            group,
            "thread",
            &pmatmat(&a, Method::Thread, Some(k), false).unwrap().with_min_parallel_work(0),
            k,
        );
        bench_op(c, group, "seq", &a, k);
    }
}

/// The fixed overhead: 200 × 200 times 200 × 16.
fn small(c: &mut Criterion) {
    let (m, k) = (200, 16);
    let group = format!("small_{m}x{m}_x_{k}");
    let a = random::mat::<f64>(m, m, 0);
    let x = random::mat::<f64>(m, k, 1);
    let mut out = Mat::zeros(m, k);
    {
        let mut g = c.benchmark_group(&group);
        configure(&mut g, m * m * k);
        g.bench_function("faer_seq", |b| {
            b.iter(|| matmul(out.as_mut(), Accum::Replace, a.as_ref(), black_box(x.as_ref()), 1.0, Par::Seq))
        });
        g.bench_function("faer_par", |b| {
            b.iter(|| {
                matmul(out.as_mut(), Accum::Replace, a.as_ref(), black_box(x.as_ref()), 1.0, Par::rayon(nworkers()))
            })
        });
        g.finish();
    }
    let l = pmatmat(&a, Method::Thread, Some(nworkers()), false).unwrap();
    bench_op(c, &group, "thread", &l, k);
    bench_op(c, &group, "thread_forced_parallel", &l.with_min_parallel_work(0), k);
}

/// Flops of each group's product, for the table.
fn flops(group: &str) -> f64 {
    let nums: Vec<f64> =
        group.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    match nums.as_slice() {
        [m, _, k] if group.starts_with("dense") || group.starts_with("small") => 2.0 * m * m * k,
        _ => 0.0,
    }
}

/// Prints the medians measured in this run (since `start`), with GFLOP/s and
/// the speedup over each group's sequential variant, and merges them into
/// `bench-results/pmatmat.csv` (one row per case, variant and worker count;
/// the sequential variants count as one worker).
fn summary(start: std::time::SystemTime) {
    let target =
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target").into());
    let root = std::path::Path::new(&target).join("criterion");
    let Ok(groups) = std::fs::read_dir(&root) else { return };
    let mut groups: Vec<_> =
        groups.flatten().map(|e| e.path()).filter(|p| p.join("report").exists() || p.is_dir()).collect();
    groups.sort();
    println!("\n| case | variant | median | GFLOP/s | speedup vs sequential |\n|---|---|---|---|---|");
    let (run, mut csv) = (results::run_id(), Vec::new());
    for group in groups {
        let name = group.file_name().unwrap().to_string_lossy().into_owned();
        let mut rows: Vec<(String, f64)> = std::fs::read_dir(&group)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let path = e.path().join("new/estimates.json");
                if std::fs::metadata(&path).ok()?.modified().ok()? < start {
                    return None;
                }
                let json = std::fs::read_to_string(path).ok()?;
                let v: serde_json::Value = serde_json::from_str(&json).ok()?;
                Some((e.file_name().to_string_lossy().into_owned(), v["median"]["point_estimate"].as_f64()? * 1e-9))
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        let base = rows.iter().find(|(id, _)| id == "faer_seq" || id == "seq").map(|r| r.1);
        for (id, secs) in rows {
            let gflops = if flops(&name) > 0.0 { format!("{:.1}", flops(&name) / secs * 1e-9) } else { "-".into() };
            let speedup = base.map_or("-".into(), |b| format!("{:.2}", b / secs));
            println!("| {name} | {id} | {:.3} ms | {gflops} | {speedup} |", secs * 1e3);
            let workers = if id == "seq" || id == "faer_seq" { 1 } else { nworkers() };
            let blank = |v: String| if v == "-" { String::new() } else { v };
            let row = [name.clone(), id, workers.to_string(), format!("{secs:.6e}"), blank(gflops), blank(speedup)];
            csv.push(row.into_iter().chain([run.clone()]).collect());
        }
    }
    if !csv.is_empty() {
        let header = ["case", "variant", "workers", "seconds", "gflops", "speedup", "run"];
        match results::merge("pmatmat.csv", &header, 3, csv) {
            Ok(path) => println!("\nwritten to {}", path.display()),
            Err(e) => eprintln!("could not write bench-results/pmatmat.csv: {e}"),
        }
    }
}

fn main() {
    let start = std::time::SystemTime::now();
    let mut c = Criterion::default().configure_from_args();
    dense(&mut c, 2000, 512);
    dense(&mut c, 4000, 256);
    composite(&mut c);
    small(&mut c);
    process_overhead(&mut c);
    c.final_summary();
    summary(start);
}
