//! Helpers shared by the integration tests: dense references and comparisons.
#![allow(dead_code)]

pub mod fixtures;

use faer::linalg::matmul::matmul;
use faer::traits::ComplexField;
use faer::traits::math_utils::{eps, from_f64, is_nan, max, one};
use faer::{Accum, Mat, MatRef, Par};
use lazylinop::prelude::*;

/// The shapes every operator is checked on: empty, tiny and odd.
pub const KS: [usize; 4] = [0, 1, 3, 7];

/// Runs `f::<T>()` for f32, f64, c32 and c64.
#[macro_export]
macro_rules! for_all_types {
    ($f:ident) => {{
        $f::<f32>();
        $f::<f64>();
        $f::<faer::c32>();
        $f::<faer::c64>();
    }};
}

/// `a` as a closure operator (matmat and rmatmat closures around faer's
/// matmul): the pattern of Python lazylinop's `LazyLinOp(shape, matmat, rmatmat)`.
pub fn closure_of<T: ComplexField + Send + Sync + 'static>(a: &Mat<T>) -> impl BiLinOp<T> + Send + Sync + 'static {
    let (a1, a2) = (a.clone(), a.clone());
    from_matmat(
        a.nrows(),
        a.ncols(),
        move |out: faer::MatMut<'_, T>, x: MatRef<'_, T>| matmul(out, Accum::Replace, &a1, x, one(), Par::Seq),
        move |out: faer::MatMut<'_, T>, y: MatRef<'_, T>| matmul(out, Accum::Replace, a2.adjoint(), y, one(), Par::Seq),
    )
}

/// `dense_p · x` computed by faer's matmul: the reference.
pub fn reference<T: ComplexField>(dense: MatRef<'_, T>, p: Mode, x: MatRef<'_, T>) -> Mat<T> {
    let rows = p.dims((dense.nrows(), dense.ncols())).0;
    let mut out = Mat::zeros(rows, x.ncols());
    let o = out.as_mut();
    match p {
        Mode::Apply => matmul(o, Accum::Replace, dense, x, one(), Par::Seq),
        Mode::Conj => matmul(o, Accum::Replace, dense.conjugate(), x, one(), Par::Seq),
        Mode::Transpose => matmul(o, Accum::Replace, dense.transpose(), x, one(), Par::Seq),
        Mode::Adjoint => matmul(o, Accum::Replace, dense.adjoint(), x, one(), Par::Seq),
    }
    out
}

/// `op_p · x` through the faer trait method, with exactly the scratch the
/// operator asks for, into an output filled with NaN (so unwritten entries show).
pub fn product<T: ComplexField, L: BiLinOp<T> + ?Sized>(op: &L, p: Mode, x: MatRef<'_, T>, par: Par) -> Mat<T> {
    use faer::dyn_stack::{MemBuffer, MemStack};
    let k = x.ncols();
    let mut buf = MemBuffer::new(p.scratch(op, k, par));
    let mut out = Mat::from_fn(p.dims_of(op).0, k, |_, _| faer::traits::math_utils::nan::<T>());
    p.apply(op, out.as_mut(), x, par, MemStack::new(&mut buf));
    out
}

/// Asserts `got` equals `want` within a tolerance relative to the scalar's ε.
#[track_caller]
pub fn assert_close<T: ComplexField>(got: MatRef<'_, T>, want: MatRef<'_, T>, what: &str) {
    assert_eq!(
        (got.nrows(), got.ncols()),
        (want.nrows(), want.ncols()),
        "{what} [{}]: shapes differ",
        std::any::type_name::<T>()
    );
    if got.nrows() == 0 || got.ncols() == 0 {
        return;
    }
    // faer's norm_max skips NaN: look for unwritten (NaN) entries first.
    let unwritten =
        (0..got.ncols()).flat_map(|j| (0..got.nrows()).map(move |i| (i, j))).find(|&(i, j)| is_nan(&got[(i, j)]));
    assert!(unwritten.is_none(), "{what} [{}]: entry {unwritten:?} is NaN (not written?)", std::any::type_name::<T>());
    let err = (got - want).norm_max();
    let scale = max(&want.norm_max(), &one::<T::Real>());
    let tol = from_f64::<T::Real>(1e3) * eps::<T::Real>() * scale;
    assert!(err <= tol, "{what} [{}]: max difference {err:?} > tolerance {tol:?}", std::any::type_name::<T>());
}

/// Checks all four products of `op` against `dense` for several operand
/// widths (including 0), its shape, and the dot test.
#[track_caller]
pub fn check_op<T: ComplexField, L: BiLinOp<T>>(op: &L, dense: MatRef<'_, T>, what: &str) {
    assert_eq!((op.nrows(), op.ncols()), (dense.nrows(), dense.ncols()), "{what}: shape");
    for (seed, k) in KS.into_iter().enumerate() {
        for p in Mode::ALL {
            let n = p.dims_of(op).1;
            let x = lazylinop::random::mat::<T>(n, k, seed as u64);
            let got = product(op, p, x.as_ref(), Par::Seq);
            let want = reference(dense, p, x.as_ref());
            assert_close(got.as_ref(), want.as_ref(), &format!("{what}, {p:?}, k = {k}"));
        }
    }
    if let Err(report) = lazylinop::dottest(op, 3) {
        panic!("{what} [{}]: {report}", std::any::type_name::<T>());
    }
}

/// Widths of the operand for parallel products: none, fewer than the
/// workers, uneven splits.
pub const WIDTHS: [usize; 6] = [0, 1, 2, 3, 5, 16];

/// Every product of the parallel operator `l` (always split: no sequential
/// fallback) against `dense`.
#[track_caller]
pub fn check_parallel<T: lazylinop::parallel::Scalar, L: BiLinOp<T>>(
    l: lazylinop::parallel::Pmatmat<T, L>,
    dense: MatRef<'_, T>,
    what: &str,
) {
    let l = l.with_min_parallel_work(0);
    for (seed, k) in WIDTHS.into_iter().enumerate() {
        for p in Mode::ALL {
            let n = p.dims((dense.nrows(), dense.ncols())).1;
            let x = lazylinop::random::mat::<T>(n, k, seed as u64);
            let got = product(&l, p, x.as_ref(), Par::Seq);
            let want = reference(dense, p, x.as_ref());
            let label = format!(
                "{what}, {:?}, {} workers, use_matvec {}, {p:?}, k = {k}",
                l.method(),
                l.nworkers(),
                l.use_matvec()
            );
            assert_close(got.as_ref(), want.as_ref(), &label);
        }
    }
}

/// A 1×1 operator whose product writes, in every column of its output, the
/// number `id()` gives where that column was computed (a thread, a process,
/// a rank): what tells which workers ran a product. Each product takes
/// 20 ms, as an operator around a simulation code would take its time.
pub fn who_ran(id: fn() -> f64) -> impl BiLinOp<f64> + Send + Sync + 'static {
    let record = move |mut out: faer::MatMut<'_, f64>, _: MatRef<'_, f64>| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        out.fill(id())
    };
    from_matmat(1, 1, record, record)
}

/// How many distinct workers `who_ran`'s product with `k` columns saw.
pub fn workers_seen<L: BiLinOp<f64>>(op: &L, k: usize) -> usize {
    let out = op.matmat(&Mat::<f64>::zeros(1, k));
    let mut ids: Vec<u64> = (0..k).map(|j| out[(0, j)].to_bits()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.len()
}
