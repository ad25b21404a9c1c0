//! Sparse × dense products side by side, in one run: faer's
//! `sparse_dense_matmul` against this crate's kernel (`Sparse`) on one
//! thread and on two, CSR and CSC, f64, a random pattern of 20000 × 20000
//! with 40 entries a column, for k = 1, 16 and 128 columns (CSC also held
//! both ways, `BothWays`); the composite `S₁·S₂ + D` on faer's matrices, on
//! `Sparse` and on `Sparse<BothWays>`; and a STREAM-style copy
//! for the machine's memory bandwidth. Prints a table at the end: medians,
//! GFLOP/s, the compulsory memory traffic per second (each pass over the
//! matrix, plus operand and output once) against the copy's bandwidth, and
//! the ratio to faer: of the two medians, and, for one thread, the median
//! of ratios over runs alternating faer and the variant (the steadier
//! figure on a shared machine).
//!
//! `cargo bench --bench sparse` (filter with `-- csr_k16`, say).

use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, measurement::WallTime};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::sparse::linalg::matmul::sparse_dense_matmul;
use faer::sparse::{SparseColMat, SparseRowMat, Triplet};
use faer::{Accum, Mat, Par};
use lazylinop::parallel::{Method, pmatmat};
use lazylinop::prelude::*;
use lazylinop::random;
use lazylinop::sparse::BothWays;

const N: usize = 20_000;
const PER_COL: usize = 40;

/// A sparse `n × n` matrix with `per_col` entries a column at pseudo-random rows.
fn sparse(n: usize, per_col: usize, seed: u64) -> SparseColMat<usize, f64> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let triplets: Vec<_> = (0..n)
        .flat_map(|j| {
            (0..per_col)
                .map(|t| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    Triplet::new((state % n as u64) as usize, j, 1.0 / (1.0 + t as f64))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    SparseColMat::try_new_from_triplets(n, n, &triplets).unwrap()
}

fn configure(g: &mut BenchmarkGroup<'_, WallTime>, flops: usize) {
    if flops > 1 << 26 {
        g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    } else {
        g.sample_size(30).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    }
}

/// `op`'s product with `k` columns through faer's trait; operand, output
/// and scratch allocated once.
fn runner<'a, L: BiLinOp<f64>>(op: &'a L, k: usize, par: Par) -> impl FnMut() + 'a {
    let x = random::mat::<f64>(op.ncols(), k, 1);
    let mut out = Mat::zeros(op.nrows(), k);
    let mut buf = MemBuffer::new(op.apply_scratch(k, par));
    move || op.apply(black_box(out.as_mut()), black_box(x.as_ref()), par, MemStack::new(&mut buf))
}

/// Paired ratios: (group, variant, faer's time over the variant's).
static PAIRED: Mutex<Vec<(String, String, f64)>> = Mutex::new(Vec::new());

/// One variant of `g` (named `group`): criterion's measurement, then, given
/// `faer`, the median ratio of faer's time to its time over runs that
/// alternate the two (at least 11 pairs, about 2 s): both then see the
/// machine in the same state, which two medians taken a minute apart on a
/// shared machine do not. Only for one thread: after each of faer's runs, a
/// threaded variant would first wake the pool's sleeping workers.
fn variant(
    g: &mut BenchmarkGroup<'_, WallTime>,
    group: &str,
    id: &str,
    mut run: impl FnMut(),
    faer: Option<&mut dyn FnMut()>,
) {
    let mut ran = false;
    g.bench_function(id, |b| {
        ran = true;
        b.iter(&mut run)
    });
    let (Some(faer), true) = (faer, ran) else { return };
    let start = Instant::now();
    let mut ratios = Vec::new();
    while ratios.len() < 11 || (start.elapsed() < Duration::from_secs(2) && ratios.len() < 1000) {
        let t = Instant::now();
        faer();
        let tf = t.elapsed();
        let t = Instant::now();
        run();
        ratios.push(tf.as_secs_f64() / t.elapsed().as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    PAIRED.lock().unwrap().push((group.into(), id.into(), ratios[ratios.len() / 2]));
}

/// faer against the kernel on `Par::Seq` and `Par::rayon(2)`, both formats.
fn spmm(c: &mut Criterion, csc: &SparseColMat<usize, f64>, csr: &SparseRowMat<usize, f64>, k: usize) {
    let x = random::mat::<f64>(N, k, 1);
    let mut out = Mat::<f64>::zeros(N, k);
    for (name, is_csr) in [("csc", false), ("csr", true)] {
        let group = format!("{name}_k{k}");
        let mut g = c.benchmark_group(&group);
        configure(&mut g, 2 * csc.val().len() * k);
        let mut faer = || {
            let out = black_box(out.as_mut());
            if is_csr {
                sparse_dense_matmul(out, Accum::Replace, csr.as_ref(), black_box(x.as_ref()), 1.0, Par::Seq)
            } else {
                sparse_dense_matmul(out, Accum::Replace, csc.as_ref(), black_box(x.as_ref()), 1.0, Par::Seq)
            }
        };
        variant(&mut g, &group, "faer", &mut faer, None);
        // The CSC matrix held both ways: its product gathers on the CSR copy.
        let both = Sparse::new(BothWays::new(csc).unwrap());
        let (on_csr, on_csc) = (Sparse::new(csr), Sparse::new(csc));
        for (id, par) in [("kernel_seq", Par::Seq), ("kernel_par2", Par::rayon(2))] {
            let run: Box<dyn FnMut()> =
                if is_csr { Box::new(runner(&on_csr, k, par)) } else { Box::new(runner(&on_csc, k, par)) };
            variant(&mut g, &group, id, run, (par == Par::Seq).then_some(&mut faer));
        }
        if !is_csr {
            for (id, par) in [("both_seq", Par::Seq), ("both_par2", Par::rayon(2))] {
                variant(&mut g, &group, id, runner(&both, k, par), (par == Par::Seq).then_some(&mut faer));
            }
        }
        g.finish();
    }
}

/// `S₁·S₂ + D` (k = 128): on faer's sparse matrices, and on `Sparse`,
/// sequential and with pmatmat's thread backend.
fn composite(c: &mut Criterion, s1: &SparseColMat<usize, f64>) {
    let k = 128;
    let s2 = sparse(N, PER_COL, 2);
    let d = diag(faer::Col::from_fn(N, |i| 1.0 + i as f64));
    let on_faer = s1.compose(&s2).plus(&d);
    let on_sparse = Sparse::new(s1).compose(Sparse::new(&s2)).plus(&d);
    let (b1, b2) = (BothWays::new(s1).unwrap(), BothWays::new(&s2).unwrap());
    let on_both = Sparse::new(&b1).compose(Sparse::new(&b2)).plus(&d);
    let (thread, both_thread) = (
        pmatmat(&on_sparse, Method::Thread, Some(2), false).unwrap(),
        pmatmat(&on_both, Method::Thread, Some(2), false).unwrap(),
    );
    let group = format!("composite_k{k}");
    let mut g = c.benchmark_group(&group);
    configure(&mut g, 1 << 30);
    let mut faer = runner(&on_faer, k, Par::Seq);
    variant(&mut g, &group, "faer", &mut faer, None);
    variant(&mut g, &group, "kernel_seq", runner(&on_sparse, k, Par::Seq), Some(&mut faer));
    variant(&mut g, &group, "kernel_thread", runner(&thread, k, Par::Seq), None);
    variant(&mut g, &group, "both_seq", runner(&on_both, k, Par::Seq), Some(&mut faer));
    variant(&mut g, &group, "both_thread", runner(&both_thread, k, Par::Seq), None);
    g.finish();
}

/// A STREAM-style copy of 2 × 128 MiB: bytes read plus bytes written per second.
fn stream(c: &mut Criterion) {
    let len = 16 << 20;
    let src = vec![1.0f64; len];
    let mut dst = vec![0.0f64; len];
    let mut g = c.benchmark_group("stream_copy_128MiB");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    g.bench_function("copy", |b| b.iter(|| black_box(&mut dst).copy_from_slice(black_box(&src))));
    g.finish();
}

/// Flops and compulsory bytes of a variant: the matrix is read once per
/// pass (faer: once per column; the kernel: once per panel, 16 columns for
/// the gather (CSR, or CSC held both ways) and 16 (k = 16) or 32 for the
/// scatter (CSC) with AVX-512), operand and output once. The matrix (12.8 MB) partly stays in the last-level cache between
/// faer's passes, so faer's figure can pass the copy's bandwidth.
fn model(group: &str, variant: &str) -> Option<(f64, f64)> {
    let k: f64 = group.rsplit_once("_k")?.1.parse().ok()?;
    let nnz = (N * PER_COL) as f64;
    let matrix_bytes = nnz * 16.0 + (N as f64 + 1.0) * 8.0;
    let dense_bytes = 2.0 * N as f64 * k * 8.0;
    let gathers = group.starts_with("csr") || variant.starts_with("both");
    let panel = if !gathers && k >= 32.0 { 32.0 } else { 16.0 };
    let passes = if variant == "faer" { k } else { (k / panel).ceil() };
    let (flops, bytes) = if group.starts_with("composite") {
        // Two sparse products and a diagonal one.
        (2.0 * (2.0 * nnz * k) + 2.0 * N as f64 * k, 2.0 * (passes * matrix_bytes + dense_bytes))
    } else {
        (2.0 * nnz * k, passes * matrix_bytes + dense_bytes)
    };
    Some((flops, bytes))
}

/// The medians of this run (since `start`), grouped, with GFLOP/s,
/// compulsory GB/s (and its share of the copy's bandwidth) and the ratio to
/// each group's `faer` variant.
fn summary(start: std::time::SystemTime) {
    let target =
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target").into());
    let root = std::path::Path::new(&target).join("criterion");
    let median = |group: &str, id: &str| -> Option<f64> {
        let path = root.join(group).join(id).join("new/estimates.json");
        if std::fs::metadata(&path).ok()?.modified().ok()? < start {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        Some(v["median"]["point_estimate"].as_f64()? * 1e-9)
    };
    let bandwidth = median("stream_copy_128MiB", "copy").map(|t| 2.0 * (128u64 << 20) as f64 / t);
    if let Some(bw) = bandwidth {
        println!("\nSTREAM-style copy: {:.1} GB/s (bytes read + written)", bw * 1e-9);
    }
    println!(
        "\n| case | variant | median | GFLOP/s | compulsory GB/s | % of copy | vs faer | paired vs faer |\n|---|---|---|---|---|---|---|---|"
    );
    let mut groups: Vec<String> = ["csr", "csc"]
        .iter()
        .flat_map(|f| [1, 16, 128].map(|k| format!("{f}_k{k}")))
        .chain(["composite_k128".to_string()])
        .collect();
    groups.dedup();
    for group in groups {
        let faer = median(&group, "faer");
        for id in ["faer", "kernel_seq", "kernel_par2", "kernel_thread", "both_seq", "both_par2", "both_thread"] {
            let Some(t) = median(&group, id) else { continue };
            let Some((flops, bytes)) = model(&group, id) else { continue };
            let share = bandwidth.map_or("-".into(), |bw| format!("{:.0}%", 100.0 * bytes / t / bw));
            let ratio = faer.map_or("-".into(), |f| format!("{:.2}", f / t));
            let paired =
                PAIRED.lock().unwrap().iter().find(|(g, v, _)| (g, v) == (&group, &id.to_string())).map(|p| p.2);
            let paired = paired.map_or("-".into(), |r| format!("{r:.2}"));
            println!(
                "| {group} | {id} | {:.3} ms | {:.2} | {:.1} | {share} | {ratio} | {paired} |",
                t * 1e3,
                flops / t * 1e-9,
                bytes / t * 1e-9
            );
        }
    }
}

fn main() {
    let start = std::time::SystemTime::now();
    let mut c = Criterion::default().configure_from_args();
    let csc = sparse(N, PER_COL, 1);
    let csr = csc.to_row_major().unwrap();
    stream(&mut c);
    for k in [1, 16, 128] {
        spmm(&mut c, &csc, &csr, k);
    }
    composite(&mut c, &csc);
    c.final_summary();
    summary(start);
}
