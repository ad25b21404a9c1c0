//! The main job: a lazy operator on a built-in default problem, applied the
//! faer way, sequentially, on threads and on forked processes, checked
//! against a dense reference, and used in a solver.
//!
//! `cargo run --release --example demo [-- n k]`

use std::time::Instant;

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::matrix_free::IdentityPrecond;
use faer::matrix_free::conjugate_gradient::{CgParams, conjugate_gradient, conjugate_gradient_scratch};
use faer::{Mat, MatMut, MatRef, Par};
use lazylinop::parallel::{Method, pmatmat};
use lazylinop::prelude::*;
use lazylinop::random;

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("usage: demo [n k]"));
    let n = args.next().unwrap_or(1500);
    let k = args.next().unwrap_or(256);

    // L = Bᵀ·B + D + C, with B dense (2n×n), D diagonal, C a closure (cumulative sum
    // plus its adjoint, so L stays symmetric positive definite). Never formed.
    let b = random::mat::<f64>(2 * n, n, 0);
    let d = diag(faer::Col::from_fn(n, |i| 1.0 + i as f64 / n as f64));
    let c = from_matmat(n, n, cumsum_sym, cumsum_sym);
    let l = Transpose(&b).compose(&b).plus(&d).plus(c.scale(1e-3));
    println!("operator: L = Bᵀ·B + D + 1e-3·(S + Sᵀ), {n}×{n}, B {}×{n}; operand {n}×{k}, f64", 2 * n);

    let x = random::mat::<f64>(n, k, 1);
    let par = Par::Seq;
    let flops = 2.0 * (2.0 * (2 * n * n * k) as f64);
    let (y, t_seq) = timed_product(&l, &x);
    println!("{:<46} {:8.1} ms  ({:5.1} GFLOP/s)", "L·X, sequential:", t_seq * 1e3, flops / t_seq * 1e-9);

    // The same product on threads (columns of X split in place over the workers),
    // then on forked processes: per product, and a pool created once.
    let mut methods = vec![("thread", Method::Thread)];
    #[cfg(unix)]
    methods.extend([("process per product", Method::process()), ("process pool", Method::process_pool())]);
    for (name, method) in methods {
        let pl = pmatmat(&l, method, None, false).expect("start the workers");
        let (y_par, t) = timed_product(&pl, &x);
        let diff = (&y_par - &y).norm_max();
        let label = format!("L·X, pmatmat {name} ({} workers):", pl.nworkers());
        println!(
            "{label:<46} {:8.1} ms  ({:5.1} GFLOP/s), speedup {:.2}, max difference from sequential {diff:.1e}",
            t * 1e3,
            flops / t * 1e-9,
            t_seq / t
        );
        assert!(diff <= 1e-12 * y.norm_max(), "the {name} product disagrees with the sequential one");
    }

    // Dense reference, formed here only to check.
    let mut s = Mat::<f64>::zeros(n, n);
    cumsum_sym(s.as_mut(), Mat::<f64>::identity(n, n).as_ref());
    let dense = b.transpose() * &b
        + d.as_ref().column_vector().as_diagonal() * Mat::<f64>::identity(n, n)
        + faer::Scale(1e-3) * &s;
    let reference = &dense * &x;
    let err = (&y - &reference).norm_max() / reference.norm_max();
    println!("max relative difference from the dense reference: {err:.2e}");
    assert!(err < 1e-12, "the lazy product disagrees with the dense one");

    // The same operator in faer's conjugate gradient.
    let rhs = x.subcols(0, 1);
    let mut sol = Mat::zeros(n, 1);
    let precond = IdentityPrecond { dim: n };
    let params = CgParams { rel_tolerance: 1e-10, max_iters: 5000, ..Default::default() };
    let mut buf = MemBuffer::new(conjugate_gradient_scratch(precond, &l, 1, par));
    let start = Instant::now();
    let info = conjugate_gradient(sol.as_mut(), precond, &l, rhs, params, |_| {}, par, MemStack::new(&mut buf))
        .expect("CG converges on an SPD operator");
    let residual = (&dense * &sol - rhs).norm_l2() / rhs.norm_l2();
    println!(
        "conjugate gradient on L: {} iterations in {:.1} ms, relative residual {residual:.2e}",
        info.iter_count,
        start.elapsed().as_secs_f64() * 1e3
    );
    assert!(residual < 1e-8);
    dottest(&l, 0).expect("the adjoint matches the product");
    println!("dot test passed");
}

/// `L·X` and the best time of three products, scratch allocated once.
fn timed_product<L: BiLinOp<f64>>(l: &L, x: &Mat<f64>) -> (Mat<f64>, f64) {
    let mut y = Mat::zeros(l.nrows(), x.ncols());
    let mut buf = MemBuffer::new(l.apply_scratch(x.ncols(), Par::Seq));
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = Instant::now();
        l.apply(y.as_mut(), x.as_ref(), Par::Seq, MemStack::new(&mut buf));
        best = best.min(start.elapsed().as_secs_f64());
    }
    (y, best)
}

/// `out = (S + Sᵀ)·x` where `S` is the cumulative sum (lower triangle of ones).
fn cumsum_sym(mut out: MatMut<'_, f64>, x: MatRef<'_, f64>) {
    for j in 0..x.ncols() {
        let total: f64 = (0..x.nrows()).map(|i| x[(i, j)]).sum();
        let mut below = 0.0;
        for i in 0..x.nrows() {
            below += x[(i, j)];
            // (S·x)_i = Σ_{r≤i} x_r ; (Sᵀ·x)_i = Σ_{r≥i} x_r = total - below + x_i
            out[(i, j)] = below + (total - below + x[(i, j)]);
        }
    }
}
