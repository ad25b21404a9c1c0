//! The sparse suite: generated matrices of the kinds users bring, faer's
//! product against this crate's `Sparse` kernel (plain and prepared), and
//! the memory-bandwidth bound, side by side in one run; Intel MKL's products
//! on the same matrices come from `scripts/bench_mkl.py`, which reads the
//! files this bench writes (`--out DIR`). `scripts/bench_sparse.sh` runs
//! both, alternating, and merges them into `bench-results/sparse.csv`.
//!
//! ```text
//! cargo bench --bench sparse -- [--matrices stencil2d,...] [--dtypes f64,c64] [--ks 1,4,16,64]
//!     [--layouts col,row] [--threads 1,2] [--budget SECONDS] [--faer-max-k 16] [--out DIR] [--csv FILE]
//!     [--wakeup]
//! ```
//!
//! Every matrix is CSR with `u32` indices. `A·X` is measured under the
//! matrix's name, `Aᵀ·X` (the scatter walk) under `<name>_t`. `lazylinop`
//! is `Sparse::new(view)` (zero-copy); `lazylinop_prepared` is
//! `Sparse::new(Prepared::new(BothWays::new(view)?, par))`: a CSC copy (the
//! matrix's memory again) on which `Aᵀ·X` gathers, and the thread chunks
//! computed once. For each
//! case the variants run in turns (faer, plain, prepared, again) until
//! `--budget` seconds per variant have passed (at least 5 turns), and the
//! median of each is kept: on a shared machine the variants then see the
//! same load. faer's product ignores `Par`, so it runs on one thread only,
//! and up to `--faer-max-k` columns (it computes one column at a time).
//!
//! The bound: the bytes a product must move — the matrix once (values,
//! 4-byte indices, offsets), the operand read once, the output written once —
//! over the bandwidth of a read stream (a dot product of two large arrays)
//! measured at the start of the run on the same number of threads.
//!
//! CSV columns: `matrix,dtype,rows,cols,nnz,k,layout,threads,kernel,seconds,gflops,gbytes_per_s`
//! (gflops: 2 flops an entry and column, 8 for complex; gbytes_per_s: the
//! compulsory bytes over the time).
//!
//! `--wakeup` instead measures what waking rayon's workers costs a small
//! product (about 0.2 ms): back to back, and after a pause in which the
//! pool's workers fall asleep.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::sparse::linalg::matmul::sparse_dense_matmul;
use faer::sparse::{SparseRowMat, SymbolicSparseRowMat};
use faer::{Accum, Mat, MatMut, MatRef, Par, c64};
use lazylinop::Scalar;
use lazylinop::prelude::*;
use lazylinop::sparse::{BothWays, Prepared, SparseView};

/// A generated matrix: name and CSR arrays (f64 values).
struct Generated {
    name: &'static str,
    nrows: usize,
    ncols: usize,
    ptr: Vec<u32>,
    idx: Vec<u32>,
    val: Vec<f64>,
}

/// xorshift64*.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 11) as u128 * n as u128) >> 53) as usize
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// CSR arrays from the column indices of each row (sorted, repeats removed).
fn from_rows(name: &'static str, nrows: usize, ncols: usize, mut row: impl FnMut(usize, &mut Vec<u32>)) -> Generated {
    let (mut ptr, mut idx, mut val) = (vec![0u32], Vec::new(), Vec::new());
    let mut cols = Vec::new();
    for i in 0..nrows {
        cols.clear();
        row(i, &mut cols);
        cols.sort_unstable();
        cols.dedup();
        for &j in &cols {
            idx.push(j);
            val.push(if j as usize == i { 4.0 } else { -1.0 - (j % 7) as f64 / 8.0 });
        }
        ptr.push(u32::try_from(idx.len()).unwrap());
    }
    Generated { name, nrows, ncols, ptr, idx, val }
}

/// The suite: each matrix far larger than the last-level cache (32 MB here).
fn suite(only: &[String]) -> Vec<Generated> {
    let want = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let mut out = Vec::new();
    if want("stencil2d") {
        // 2-D 5-point Laplacian on a 1000 × 1000 grid.
        let g = 1000;
        out.push(from_rows("stencil2d", g * g, g * g, |i, c| {
            let (x, y) = (i % g, i / g);
            c.push(i as u32);
            if x > 0 {
                c.push(i as u32 - 1)
            }
            if x + 1 < g {
                c.push(i as u32 + 1)
            }
            if y > 0 {
                c.push((i - g) as u32)
            }
            if y + 1 < g {
                c.push((i + g) as u32)
            }
        }));
    }
    if want("stencil3d") {
        // 3-D 7-point Laplacian on a 100³ grid.
        let g = 100;
        out.push(from_rows("stencil3d", g * g * g, g * g * g, |i, c| {
            let (x, y, z) = (i % g, i / g % g, i / (g * g));
            c.push(i as u32);
            for (d, at) in [(1, x), (g, y), (g * g, z)] {
                if at > 0 {
                    c.push((i - d) as u32)
                }
                if at + 1 < g {
                    c.push((i + d) as u32)
                }
            }
        }));
    }
    if want("powerlaw") {
        // Chung–Lu graph: 500 000 nodes, Pareto degrees (exponent 2.1, mean
        // about 16, at most 20 000), neighbours drawn in proportion to degree.
        let n = 500_000;
        let mut rng = Rng(7);
        let degree: Vec<usize> =
            (0..n).map(|_| ((8.4 * (1.0 - rng.uniform()).powf(-1.0 / 1.1)) as usize).clamp(1, 20_000)).collect();
        let mut cum = Vec::with_capacity(n + 1);
        cum.push(0usize);
        for d in &degree {
            cum.push(cum.last().unwrap() + d);
        }
        let total = *cum.last().unwrap();
        out.push(from_rows("powerlaw", n, n, |i, c| {
            for _ in 0..degree[i] {
                let t = rng.below(total);
                c.push((cum.partition_point(|&s| s <= t) - 1) as u32);
            }
        }));
    }
    if want("random") {
        // 500 000², 16 entries a row at uniform columns.
        let n = 500_000;
        let mut rng = Rng(11);
        out.push(from_rows("random", n, n, |_, c| c.extend((0..16).map(|_| rng.below(n) as u32))));
    }
    if want("banded") {
        // 500 000², every entry within 8 of the diagonal.
        let n = 500_000usize;
        out.push(from_rows("banded", n, n, |i, c| c.extend((i.saturating_sub(8)..(i + 9).min(n)).map(|j| j as u32))));
    }
    if want("lsq") {
        // A least-squares matrix, 1 000 000 × 250 000: 8 entries a row, four
        // near the row's place along the columns, four anywhere.
        let (m, n) = (1_000_000usize, 250_000usize);
        let mut rng = Rng(13);
        out.push(from_rows("lsq", m, n, |i, c| {
            let at = i * n / m;
            for _ in 0..4 {
                c.push((at + rng.below(64)).min(n - 1) as u32);
                c.push(rng.below(n) as u32);
            }
        }));
    }
    out
}

/// Bytes a product must move (see the file's docs).
fn compulsory_bytes(g: &Generated, item: usize, rows: usize, cols: usize, k: usize) -> f64 {
    (g.idx.len() * (item + 4) + g.ptr.len() * 4 + (rows + cols) * k * item) as f64
}

/// A read stream, the dot product of two arrays of 2²⁴ f64 (128 MiB each)
/// on `threads` threads: bytes read per second, best of 10. A sparse
/// product is such a stream (the matrix and operand read, an output a
/// tenth of the traffic written); STREAM's triad, which writes a third of
/// its bytes (and reads them first, write-allocate), measured lower here
/// than what MKL's one-column product moves.
fn read_stream(threads: usize) -> f64 {
    let len = 1 << 24;
    let (b, c) = (vec![1.0f64; len], vec![2.0f64; len]);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let mut best = f64::INFINITY;
    for _ in 0..10 {
        let t = Instant::now();
        let sum: f64 = pool.install(|| {
            use rayon::prelude::*;
            let chunk = len.div_ceil(threads);
            b.par_chunks(chunk)
                .zip(c.par_chunks(chunk))
                .map(|(b, c)| {
                    // Four chains: the sum's latency is not the limit.
                    let mut acc = [0.0f64; 4];
                    for (b, c) in b.chunks_exact(4).zip(c.chunks_exact(4)) {
                        for l in 0..4 {
                            acc[l] += b[l] * c[l];
                        }
                    }
                    acc.iter().sum::<f64>()
                })
                .sum()
        });
        best = best.min(t.elapsed().as_secs_f64());
        black_box(sum);
    }
    2.0 * (len * 8) as f64 / best
}

/// Median seconds of each variant, run in turns for about `budget` seconds each.
fn measure(variants: &mut [&mut dyn FnMut()], budget: f64) -> Vec<f64> {
    for v in variants.iter_mut() {
        v();
    }
    let mut times = vec![Vec::new(); variants.len()];
    let start = Instant::now();
    let total = Duration::from_secs_f64(budget * variants.len() as f64);
    while times[0].len() < 5 || (start.elapsed() < total && times[0].len() < 10_000) {
        for (v, t) in variants.iter_mut().zip(&mut times) {
            let s = Instant::now();
            v();
            t.push(s.elapsed().as_secs_f64());
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect()
}

/// A `rows × k` matrix of pseudo-random entries in one contiguous slice,
/// row-major or column-major (a `Mat` pads its columns, and a transposed
/// one its rows).
fn operand<T: Scalar>(rows: usize, k: usize, row_major: bool, seed: u64) -> Vec<T> {
    let m = lazylinop::random::mat::<T>(rows, k, seed);
    let mut v = vec![faer::traits::math_utils::zero::<T>(); rows * k];
    view_mut(&mut v, rows, k, row_major).copy_from(&m);
    v
}

fn view<T>(v: &[T], rows: usize, k: usize, row_major: bool) -> MatRef<'_, T> {
    if row_major { MatRef::from_row_major_slice(v, rows, k) } else { MatRef::from_column_major_slice(v, rows, k) }
}

fn view_mut<T>(v: &mut [T], rows: usize, k: usize, row_major: bool) -> MatMut<'_, T> {
    if row_major {
        MatMut::from_row_major_slice_mut(v, rows, k)
    } else {
        MatMut::from_column_major_slice_mut(v, rows, k)
    }
}

struct Case<'a> {
    csv: &'a mut String,
    name: String,
    dtype: &'static str,
    rows: usize,
    cols: usize,
    nnz: usize,
    k: usize,
    layout: &'a str,
    threads: usize,
}

impl Case<'_> {
    fn row(&mut self, kernel: &str, seconds: f64, flops: f64, bytes: f64) {
        let Case { name, dtype, rows, cols, nnz, k, layout, threads, .. } = self;
        let line = format!(
            "{name},{dtype},{rows},{cols},{nnz},{k},{layout},{threads},{kernel},{seconds:.6e},{:.4},{:.4}",
            flops / seconds * 1e-9,
            bytes / seconds * 1e-9
        );
        println!("{line}");
        writeln!(self.csv, "{line}").unwrap();
    }
}

struct Options {
    ks: Vec<usize>,
    layouts: Vec<String>,
    threads: Vec<usize>,
    budget: f64,
    /// Widest operand faer is timed on (it computes column by column, so its
    /// time grows with k, and at 5 turns a case it would take most of the run).
    faer_max_k: usize,
}

/// Every case of one matrix and scalar type: `A·X` and `Aᵀ·X`.
fn bench_matrix<T: Scalar<Real = f64>>(
    g: &Generated,
    dtype: &'static str,
    opts: &Options,
    bw: &[(usize, f64)],
    csv: &mut String,
) {
    let val: Vec<T> = g.val.iter().enumerate().map(|(p, &v)| value::<T>(v, p)).collect();
    let a = SparseView::csr(g.nrows, g.ncols, &g.ptr, &g.idx, &val).unwrap();
    let faer_csr = faer::sparse::SparseRowMatRef::new(
        faer::sparse::SymbolicSparseRowMatRef::new_checked(g.nrows, g.ncols, &g.ptr, None, &g.idx),
        &val,
    );
    let item = core::mem::size_of::<T>();
    let flops_per_entry = if T::IS_REAL { 2.0 } else { 8.0 };
    let plain = Sparse::new(a);
    // Prepared for the most threads measured, held both ways so that `Aᵀ·X` gathers too.
    let threads = opts.threads.iter().copied().max().unwrap_or(1);
    let prepared = Sparse::new(Prepared::new(BothWays::new(a).unwrap(), Par::rayon(threads)));
    for transpose in [false, true] {
        let (rows, cols) = if transpose { (g.ncols, g.nrows) } else { (g.nrows, g.ncols) };
        let name = if transpose { format!("{}_t", g.name) } else { g.name.to_string() };
        for layout in &opts.layouts {
            for &k in &opts.ks {
                let row_major = layout == "row";
                let xs = operand::<T>(cols, k, row_major, 1);
                let ys = RefCell::new(operand::<T>(rows, k, row_major, 2));
                let x = view(&xs, cols, k, row_major);
                let flops = flops_per_entry * g.idx.len() as f64 * k as f64;
                let bytes = compulsory_bytes(g, item, rows, cols, k);
                let mut want = None;
                for &threads in &opts.threads {
                    let par = if threads == 1 { Par::Seq } else { Par::rayon(threads) };
                    let scratch = |op: &dyn Fn(usize, Par) -> faer::dyn_stack::StackReq| MemBuffer::new(op(k, par));
                    let mut b1 = scratch(&|k, par| {
                        if transpose { plain.transpose_apply_scratch(k, par) } else { plain.apply_scratch(k, par) }
                    });
                    let mut b2 = scratch(&|k, par| {
                        if transpose {
                            prepared.transpose_apply_scratch(k, par)
                        } else {
                            prepared.apply_scratch(k, par)
                        }
                    });
                    let mut run_plain = || {
                        let (mut y, s) = (ys.borrow_mut(), MemStack::new(&mut b1));
                        let y = black_box(view_mut(&mut y, rows, k, row_major));
                        if transpose {
                            plain.transpose_apply(y, black_box(x), par, s)
                        } else {
                            plain.apply(y, black_box(x), par, s)
                        }
                    };
                    let mut run_prepared = || {
                        let (mut y, s) = (ys.borrow_mut(), MemStack::new(&mut b2));
                        let y = black_box(view_mut(&mut y, rows, k, row_major));
                        if transpose {
                            prepared.transpose_apply(y, black_box(x), par, s)
                        } else {
                            prepared.apply(y, black_box(x), par, s)
                        }
                    };
                    let mut run_faer = || {
                        let mut y = ys.borrow_mut();
                        let o = black_box(view_mut(&mut y, rows, k, row_major));
                        if transpose {
                            sparse_dense_matmul(
                                o,
                                Accum::Replace,
                                faer_csr.transpose(),
                                black_box(x),
                                faer::traits::math_utils::one::<T>(),
                                Par::Seq,
                            )
                        } else {
                            sparse_dense_matmul(
                                o,
                                Accum::Replace,
                                faer_csr,
                                black_box(x),
                                faer::traits::math_utils::one::<T>(),
                                Par::Seq,
                            )
                        }
                    };
                    // The three agree before they are timed (faer's result computed once a case).
                    let want = want.get_or_insert_with(|| {
                        run_faer();
                        view(&ys.borrow(), rows, k, row_major).to_owned()
                    });
                    for run in [&mut run_plain as &mut dyn FnMut(), &mut run_prepared] {
                        run();
                        let err = (view(&ys.borrow(), rows, k, row_major) - &*want).norm_max();
                        assert!(
                            err <= 1e-10 * want.norm_max().max(1e-300),
                            "{name} {dtype} k={k} {layout}: off by {err}"
                        );
                    }
                    let mut case =
                        Case { csv, name: name.clone(), dtype, rows, cols, nnz: g.idx.len(), k, layout, threads };
                    let times = if threads == 1 && k <= opts.faer_max_k {
                        measure(&mut [&mut run_faer, &mut run_plain, &mut run_prepared], opts.budget)
                    } else {
                        let t = measure(&mut [&mut run_plain, &mut run_prepared], opts.budget);
                        vec![f64::NAN, t[0], t[1]]
                    };
                    for (kernel, t) in ["faer", "lazylinop", "lazylinop_prepared"].into_iter().zip(times) {
                        if !t.is_nan() {
                            case.row(kernel, t, flops, bytes);
                        }
                    }
                    let bw = bw.iter().find(|(t, _)| *t == threads).map_or(f64::NAN, |b| b.1);
                    case.row("bound", bytes / bw, flops, bytes);
                }
            }
        }
    }
}

/// The suite's values as `T`: the f64 value, with an imaginary part for complex types.
fn value<T: Scalar>(v: f64, p: usize) -> T {
    let re: T = faer::traits::math_utils::from_f64(v);
    if T::IS_REAL {
        re
    } else {
        let i: T = faer::traits::math_utils::sqrt(&faer::traits::math_utils::from_f64(-1.0));
        re + i * faer::traits::math_utils::from_f64::<T>(((p % 5) as f64 - 2.0) / 4.0)
    }
}

/// What waking rayon's workers costs a product of about 0.2 ms (3-D 7-point
/// stencil, 40³ rows, one column): back to back, and after 1 ms of other
/// work on the calling thread (as a solver's vector operations), by which
/// time the pool's workers sleep.
fn wakeup() {
    let g = 40;
    let s = from_rows("stencil3d_small", g * g * g, g * g * g, |i, c| {
        let (x, y, z) = (i % g, i / g % g, i / (g * g));
        c.push(i as u32);
        for (d, at) in [(1, x), (g, y), (g * g, z)] {
            if at > 0 {
                c.push((i - d) as u32)
            }
            if at + 1 < g {
                c.push((i + d) as u32)
            }
        }
    });
    let a = SparseView::csr(s.nrows, s.ncols, &s.ptr, &s.idx, &s.val).unwrap();
    let op = Sparse::new(a);
    let x = Mat::<f64>::from_fn(s.ncols, 1, |i, _| i as f64);
    let mut y = Mat::<f64>::zeros(s.nrows, 1);
    let spin = |d: Duration| {
        let s = Instant::now();
        while s.elapsed() < d {
            std::hint::spin_loop();
        }
    };
    println!("| product | pause before each | median | min |\n|---|---|---|---|");
    for par in [Par::Seq, Par::rayon(2)] {
        let mut buf = MemBuffer::new(op.apply_scratch(1, par));
        for pause in [Duration::ZERO, Duration::from_millis(1)] {
            let mut t = Vec::new();
            for _ in 0..2000 {
                spin(pause);
                let s = Instant::now();
                op.apply(y.as_mut(), x.as_ref(), par, MemStack::new(&mut buf));
                t.push(s.elapsed().as_secs_f64() * 1e6);
            }
            t.sort_by(f64::total_cmp);
            println!("| SpMV {par:?} | {pause:?} | {:.1} µs | {:.1} µs |", t[t.len() / 2], t[0]);
        }
    }
    for pause in [Duration::ZERO, Duration::from_millis(1)] {
        let mut t = Vec::new();
        for _ in 0..2000 {
            spin(pause);
            let s = Instant::now();
            rayon::join(|| black_box(0), || black_box(1));
            t.push(s.elapsed().as_secs_f64() * 1e6);
        }
        t.sort_by(f64::total_cmp);
        println!("| empty rayon::join from outside the pool | {pause:?} | {:.1} µs | {:.1} µs |", t[t.len() / 2], t[0]);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let get = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let list = |flag: &str, default: &str| -> Vec<String> {
        get(flag).unwrap_or_else(|| default.into()).split(',').filter(|s| !s.is_empty()).map(String::from).collect()
    };
    if args.iter().any(|a| a == "--wakeup") {
        return wakeup();
    }
    let opts = Options {
        ks: list("--ks", "1,4,16,64").iter().map(|k| k.parse().unwrap()).collect(),
        layouts: list("--layouts", "col,row"),
        threads: list("--threads", "1,2").iter().map(|k| k.parse().unwrap()).collect(),
        budget: get("--budget").map_or(0.3, |b| b.parse().unwrap()),
        faer_max_k: get("--faer-max-k").map_or(16, |b| b.parse().unwrap()),
    };
    let dtypes = list("--dtypes", "f64,c64");
    let out_dir = get("--out").map(std::path::PathBuf::from);
    if let Some(dir) = &out_dir {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("--out {}: {e}", dir.display()));
    }
    let bw: Vec<(usize, f64)> = opts.threads.iter().map(|&t| (t, read_stream(t))).collect();
    for (t, b) in &bw {
        eprintln!("read stream, {t} thread(s): {:.1} GB/s", b * 1e-9);
    }
    let mut csv = String::from("matrix,dtype,rows,cols,nnz,k,layout,threads,kernel,seconds,gflops,gbytes_per_s\n");
    println!("{}", csv.trim_end());
    for g in suite(&list("--matrices", "")) {
        eprintln!("{}: {} × {}, {} entries", g.name, g.nrows, g.ncols, g.idx.len());
        for dtype in &dtypes {
            match dtype.as_str() {
                "f64" => {
                    save(&out_dir, &g, "f64", &g.val);
                    bench_matrix::<f64>(&g, "f64", &opts, &bw, &mut csv)
                }
                "c64" => {
                    let val: Vec<c64> = g.val.iter().enumerate().map(|(p, &v)| value::<c64>(v, p)).collect();
                    save(&out_dir, &g, "c64", &val);
                    bench_matrix::<c64>(&g, "c64", &opts, &bw, &mut csv)
                }
                other => panic!("dtype {other}: f64 or c64"),
            }
        }
    }
    if let Some(path) = get("--csv") {
        std::fs::write(path, csv).unwrap();
    }
}

/// Writes `g` with values `val` to `DIR/<name>.<dtype>.npz` for the MKL script, unless there.
fn save<T: Scalar>(dir: &Option<std::path::PathBuf>, g: &Generated, dtype: &str, val: &[T]) {
    let Some(dir) = dir else { return };
    let path = dir.join(format!("{}.{dtype}.npz", g.name));
    if path.exists() {
        return;
    }
    let sym = SymbolicSparseRowMat::new_checked(g.nrows, g.ncols, g.ptr.clone(), None, g.idx.clone());
    let a = SparseRowMat::new(sym, val.to_vec());
    lazylinop::npz::save_sparse(&path, a.as_ref()).unwrap();
}
