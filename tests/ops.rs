//! The operator core: every operator and combinator against its dense
//! equivalent (faer's matmul), for f32, f64, c32 and c64, on odd and empty
//! shapes; shape errors and shape overflow; faer's solvers on lazy operators;
//! products that must not depend on what the scratch or the output held.

mod common;

use common::{assert_close, check_op};
use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::linalg::matmul::matmul;
use faer::linalg::solvers::Solve;
use faer::traits::ComplexField;
use faer::traits::math_utils::{from_f64, mul, nan, one, sqrt, zero};
use faer::{Accum, Col, ColMut, ColRef, Mat, MatMut, MatRef, Par};
use lazylinop::parallel::{Method, pmatmat};
use lazylinop::prelude::*;
use lazylinop::random;

/// Shapes with empty and odd dimensions.
const SHAPES: [(usize, usize); 6] = [(0, 3), (3, 0), (0, 0), (1, 1), (7, 5), (4, 9)];

fn complex_scalar<T: ComplexField>() -> T {
    // 1.5 - 0.5i (1.5 for real types): conjugation must show in the products.
    let i: T = sqrt(&from_f64(-1.0));
    if T::IS_REAL { from_f64(1.5) } else { from_f64::<T>(1.5) - mul(&from_f64::<T>(0.5), &i) }
}

fn dense_matrices<T: ComplexField>() {
    for (s, (m, n)) in SHAPES.into_iter().enumerate() {
        let a = random::mat::<T>(m, n, s as u64);
        check_op(&a, a.as_ref(), &format!("Mat {m}×{n}"));
        check_op(&a.as_ref(), a.as_ref(), &format!("MatRef {m}×{n}"));
    }
}

fn compose<T: ComplexField>() {
    for (m, k, n) in [(3, 4, 5), (1, 7, 1), (0, 2, 3), (3, 0, 2), (2, 3, 0), (6, 6, 6)] {
        let a = random::mat::<T>(m, k, 1);
        let b = random::mat::<T>(k, n, 2);
        let dense = &a * &b;
        check_op(&(&a).compose(&b), dense.as_ref(), &format!("Compose {m}×{k}·{k}×{n}"));
        // Three factors, nested both ways.
        let c = random::mat::<T>(n, 2, 3);
        let dense3 = &dense * &c;
        check_op(&(&a).compose(&b).compose(&c), dense3.as_ref(), "Compose (A·B)·C");
        check_op(&(&a).compose((&b).compose(&c)), dense3.as_ref(), "Compose A·(B·C)");
    }
}

fn sum_scale_neg<T: ComplexField>() {
    for (s, (m, n)) in SHAPES.into_iter().enumerate() {
        let a = random::mat::<T>(m, n, 10 + s as u64);
        let b = random::mat::<T>(m, n, 20 + s as u64);
        let alpha = complex_scalar::<T>();
        check_op(&(&a).plus(&b), (&a + &b).as_ref(), "Sum");
        check_op(&(&a).minus(&b), (&a - &b).as_ref(), "Sum (minus)");
        check_op(&(&a).scale(alpha.clone()), (faer::Scale(alpha.clone()) * &a).as_ref(), "Scaled");
        check_op(&(&a).neg(), (-&a).as_ref(), "Scaled (neg)");
        // α·A + B, a sum of combinators.
        let dense = faer::Scale(alpha.clone()) * &a + &b;
        check_op(&(&a).scale(alpha).plus(&b), dense.as_ref(), "Sum of Scaled");
    }
}

fn views<T: ComplexField>() {
    for (s, (m, n)) in SHAPES.into_iter().enumerate() {
        let a = random::mat::<T>(m, n, 30 + s as u64);
        check_op(&Adjoint(&a), a.adjoint().to_owned().as_ref(), "Adjoint");
        check_op(&Transpose(&a), a.transpose().to_owned().as_ref(), "Transpose");
        check_op(&Conjugate(&a), a.conjugate().to_owned().as_ref(), "Conjugate");
        check_op(&Adjoint(Transpose(&a)), a.conjugate().to_owned().as_ref(), "Adjoint of Transpose");
        check_op(&Conjugate(Adjoint(&a)), a.transpose().to_owned().as_ref(), "Conjugate of Adjoint");
        // A view of a combinator: (α·A)ᴴ = conj(α)·Aᴴ.
        let alpha = complex_scalar::<T>();
        let scaled = (&a).scale(alpha.clone());
        let dense = (faer::Scale(alpha) * &a).adjoint().to_owned();
        check_op(&scaled.adjoint(), dense.as_ref(), "adjoint() of Scaled");
    }
}

/// Copies `block` into `dense` at (`row`, `col`).
fn put<T: ComplexField>(dense: &mut Mat<T>, row: usize, col: usize, block: MatRef<'_, T>) {
    dense.as_mut().submatrix_mut(row, col, block.nrows(), block.ncols()).copy_from(block);
}

fn stacks<T: ComplexField>() {
    // Blocks of odd sizes, one of them empty.
    let rows = [3, 0, 2];
    let cols = [2, 4, 0];
    let same_rows: Vec<Mat<T>> = cols.iter().enumerate().map(|(i, &c)| random::mat(3, c, 40 + i as u64)).collect();
    let same_cols: Vec<Mat<T>> = rows.iter().enumerate().map(|(i, &r)| random::mat(r, 4, 50 + i as u64)).collect();
    let diag_blocks: Vec<Mat<T>> =
        rows.iter().zip(cols).enumerate().map(|(i, (&r, c))| random::mat(r, c, 60 + i as u64)).collect();

    let mut h = Mat::zeros(3, 6);
    let mut v = Mat::zeros(5, 4);
    let mut d = Mat::zeros(5, 6);
    let (mut r, mut c) = (0, 0);
    for i in 0..3 {
        put(&mut h, 0, c, same_rows[i].as_ref());
        put(&mut v, r, 0, same_cols[i].as_ref());
        put(&mut d, r, c, diag_blocks[i].as_ref());
        r += rows[i];
        c += cols[i];
    }
    check_op(&hstack(same_rows.iter().collect()), h.as_ref(), "hstack");
    check_op(&vstack(same_cols.iter().collect()), v.as_ref(), "vstack");
    check_op(&block_diag(diag_blocks.iter().collect()), d.as_ref(), "block_diag");
    // A single block, and stacks of stacks.
    check_op(&hstack(vec![&same_rows[0]]), same_rows[0].as_ref(), "hstack of one");
    let hh = hstack(vec![hstack(same_rows.iter().collect()), hstack(same_rows.iter().collect())]);
    let mut hh_dense = Mat::zeros(3, 12);
    put(&mut hh_dense, 0, 0, h.as_ref());
    put(&mut hh_dense, 0, 6, h.as_ref());
    check_op(&hh, hh_dense.as_ref(), "hstack of hstacks");
}

fn kron<T: ComplexField>() {
    for ((m1, n1), (m2, n2)) in
        [((2, 3), (4, 1)), ((1, 1), (3, 2)), ((3, 2), (2, 5)), ((0, 2), (2, 2)), ((2, 2), (3, 0))]
    {
        let a = random::mat::<T>(m1, n1, 70);
        let b = random::mat::<T>(m2, n2, 71);
        let dense = Mat::from_fn(m1 * m2, n1 * n2, |r, c| mul(&a[(r / m2, c / n2)], &b[(r % m2, c % n2)]));
        check_op(&Kron::new(&a, &b), dense.as_ref(), &format!("Kron {m1}×{n1} ⊗ {m2}×{n2}"));
    }
    // Kron of combinators.
    let a = random::mat::<T>(2, 3, 72);
    let b = random::mat::<T>(3, 2, 73);
    let ab = &a * &b;
    let dense = Mat::from_fn(4, 4, |r, c| mul(&ab[(r / 2, c / 2)], &ab[(r % 2, c % 2)]));
    check_op(&Kron::new((&a).compose(&b), (&a).compose(&b)), dense.as_ref(), "Kron of Compose");
}

fn basic<T: ComplexField>() {
    for (m, n) in SHAPES {
        for offset in [-3, -1, 0, 2, 10, isize::MIN, isize::MAX] {
            let dense = Mat::from_fn(m, n, |i, j| if j as isize - i as isize == offset { one::<T>() } else { zero() });
            check_op(&eye(m, n, offset), dense.as_ref(), &format!("eye({m}, {n}, {offset})"));
        }
        check_op(&zeros(m, n), Mat::<T>::zeros(m, n).as_ref(), "zeros");
    }
    for n in [0, 1, 6] {
        let v: Col<T> = random::mat::<T>(n, 1, 80).col(0).to_owned();
        let dense = Mat::from_fn(n, n, |i, j| if i == j { v[i].clone() } else { zero() });
        check_op(&diag(v), dense.as_ref(), "diag");
    }
}

fn closures<T: ComplexField + Send + Sync + 'static>() {
    for (s, (m, n)) in SHAPES.into_iter().enumerate() {
        let a = random::mat::<T>(m, n, 90 + s as u64);
        let op = common::closure_of(&a);
        check_op(&op, a.as_ref(), &format!("from_matmat {m}×{n}"));
        let (a3, a4) = (a.clone(), a.clone());
        let op = from_matvec(
            m,
            n,
            move |mut out: faer::ColMut<'_, T>, x: faer::ColRef<'_, T>| out.copy_from(&a3 * x),
            move |mut out: faer::ColMut<'_, T>, y: faer::ColRef<'_, T>| out.copy_from(a4.adjoint() * y),
        );
        check_op(&op, a.as_ref(), &format!("from_matvec {m}×{n}"));
        // Closures inside combinators: transpose and conj go through conj(Lᴴ conj(y)).
        check_op(&Transpose(&op).compose(&a), (a.transpose() * &a).as_ref(), "Transpose(closure)·A");
    }
}

fn dynop_mix<T: ComplexField + Send + Sync + 'static>() {
    let a = random::mat::<T>(4, 4, 100);
    let sp_dense = Mat::from_fn(4, 4, |i, j| if (i + 2 * j) % 3 == 0 { from_f64::<T>((i + j) as f64) } else { zero() });
    let triplets: Vec<_> = (0..4)
        .flat_map(|j| (0..4).map(move |i| (i, j)))
        .filter(|&(i, j)| (i + 2 * j) % 3 == 0)
        .map(|(i, j)| faer::sparse::Triplet::new(i, j, from_f64::<T>((i + j) as f64)))
        .collect();
    let sp = faer::sparse::SparseColMat::<usize, T>::try_new_from_triplets(4, 4, &triplets).unwrap();
    let alpha = complex_scalar::<T>();
    let (da, ds, di) = (DynOp::new(a.clone()), DynOp::new(sp), DynOp::new(eye(4, 4, 0)));
    // (A·S + 2I - S)·α, then -(…), through std::ops on handles.
    let l = -((da.clone() * ds.clone() + di.clone() * from_f64::<T>(2.0) - ds.clone()) * alpha.clone());
    let dense = -(faer::Scale(alpha)
        * (&a * &sp_dense + faer::Scale(from_f64::<T>(2.0)) * Mat::<T>::identity(4, 4) - &sp_dense));
    check_op(&l, dense.as_ref(), "DynOp algebra");
    // Mixed types in one stack.
    let stack = hstack(vec![da, ds, di, l]);
    let mut h = Mat::zeros(4, 16);
    put(&mut h, 0, 0, a.as_ref());
    put(&mut h, 0, 4, sp_dense.as_ref());
    put(&mut h, 0, 8, Mat::<T>::identity(4, 4).as_ref());
    put(&mut h, 0, 12, dense.as_ref());
    check_op(&stack, h.as_ref(), "hstack of DynOps");
}

#[test]
fn dense_matrices_match() {
    for_all_types!(dense_matrices);
}
#[test]
fn compose_matches() {
    for_all_types!(compose);
}
#[test]
fn sum_scale_neg_match() {
    for_all_types!(sum_scale_neg);
}
#[test]
fn adjoint_transpose_conj_views_match() {
    for_all_types!(views);
}
#[test]
fn hstack_vstack_block_diag_match() {
    for_all_types!(stacks);
}
#[test]
fn kron_matches() {
    for_all_types!(kron);
}
#[test]
fn eye_zeros_diag_match() {
    for_all_types!(basic);
}
#[test]
fn closure_operators_match() {
    for_all_types!(closures);
}
#[test]
fn dynop_handles_mix_types() {
    for_all_types!(dynop_mix);
}

#[test]
fn to_dense_matmat_rmatmat() {
    let a = random::mat::<faer::c64>(5, 3, 1);
    let l = (&a).scale(faer::c64::new(0.0, 1.0));
    let x = random::mat::<faer::c64>(3, 2, 2);
    let y = random::mat::<faer::c64>(5, 2, 3);
    let ia = faer::Scale(faer::c64::new(0.0, 1.0)) * &a;
    assert_close(l.to_dense().as_ref(), ia.as_ref(), "to_dense");
    assert_close(l.matmat(&x).as_ref(), (&ia * &x).as_ref(), "matmat");
    assert_close(l.rmatmat(&y).as_ref(), (ia.adjoint() * &y).as_ref(), "rmatmat");
}

#[test]
fn dottest_catches_a_wrong_adjoint() {
    // L = [I; 0] (3×2), but the "adjoint" doubles: Lᴴ·y should be y[0..2].
    let wrong = from_matmat(
        3,
        2,
        |mut out: MatMut<'_, f64>, x: MatRef<'_, f64>| {
            out.fill(0.0);
            out.subrows_mut(0, 2).copy_from(x);
        },
        |mut out: MatMut<'_, f64>, y: MatRef<'_, f64>| out.copy_from(faer::Scale(2.0) * y.subrows(0, 2)),
    );
    let report = lazylinop::dottest(&wrong, 0).unwrap_err();
    assert!(report.rel_err > 0.1, "{report}");
    let right = eye(3, 2, 0);
    let report = lazylinop::dottest::<f64, _>(&right, 0).unwrap();
    assert!(report.rel_err <= report.tol);
}

/// The panic message of `f`, which must panic.
fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let err = std::panic::catch_unwind(f).expect_err("expected a panic");
    err.downcast_ref::<String>().cloned().or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string())).unwrap()
}

#[test]
fn shape_mismatches_name_both_shapes() {
    let a = random::mat::<f64>(3, 4, 0);
    let b = random::mat::<f64>(4, 2, 1);
    let l = (&a).compose(&b); // 3×2
    let x = random::mat::<f64>(5, 6, 2);
    let msg = panic_message(|| {
        l.matmat(&x);
    });
    assert!(msg.contains("3×2") && msg.contains("5×6") && msg.contains("Compose::apply"), "{msg}");
    let msg = panic_message(|| {
        l.rmatmat(&x);
    });
    assert!(msg.contains("3×2") && msg.contains("5×6") && msg.contains("adjoint_apply"), "{msg}");
    // Output of the wrong shape, through the faer trait method.
    let msg = panic_message(|| {
        let mut out = Mat::<f64>::zeros(2, 6);
        let x = random::mat::<f64>(2, 6, 3);
        l.apply(out.as_mut(), x.as_ref(), Par::Seq, faer::dyn_stack::MemStack::new(&mut []));
    });
    assert!(msg.contains("out is 2×6") && msg.contains("rhs is 2×6") && msg.contains("3×2"), "{msg}");
    let msg = panic_message(|| {
        (&a).compose(&a);
    });
    assert!(msg.contains("3×4") && msg.contains("compose"), "{msg}");
    let msg = panic_message(|| {
        (&a).plus(&b);
    });
    assert!(msg.contains("3×4") && msg.contains("4×2"), "{msg}");
    let msg = panic_message(|| {
        hstack(vec![&a, &b]);
    });
    assert!(msg.contains("3×4, 4×2"), "{msg}");
    let msg = panic_message(|| {
        vstack(vec![&a, &b]);
    });
    assert!(msg.contains("3×4, 4×2"), "{msg}");
    let msg = panic_message(|| {
        let _ = DynOp::new(a.clone()) * DynOp::new(a.clone());
    });
    assert!(msg.contains("3×4"), "{msg}");
}

#[test]
fn conjugate_gradient_on_a_lazy_spd_operator() {
    use faer::matrix_free::IdentityPrecond;
    use faer::matrix_free::conjugate_gradient::{CgParams, conjugate_gradient, conjugate_gradient_scratch};
    let (m, n, k) = (60, 40, 2);
    let b = random::mat::<faer::c64>(m, n, 7);
    // Bᴴ·B + I, never formed.
    let l = Adjoint(&b).compose(&b).plus(eye(n, n, 0));
    let rhs = random::mat::<faer::c64>(n, k, 8);
    let precond = IdentityPrecond { dim: n };
    let mut x = Mat::zeros(n, k);
    let params = CgParams { abs_tolerance: 0.0, rel_tolerance: 1e-12, max_iters: 500, ..Default::default() };
    let mut buf = MemBuffer::new(conjugate_gradient_scratch(precond, &l, k, Par::Seq));
    let info =
        conjugate_gradient(x.as_mut(), precond, &l, rhs.as_ref(), params, |_| {}, Par::Seq, MemStack::new(&mut buf))
            .expect("CG converges");
    let dense = b.adjoint() * &b + Mat::<faer::c64>::identity(n, n);
    let want = dense.partial_piv_lu().solve(&rhs);
    assert!((&x - &want).norm_max() < 1e-9 * want.norm_max(), "CG after {} iterations", info.iter_count);
}

#[test]
fn lsmr_on_a_lazy_stacked_operator() {
    use faer::matrix_free::IdentityPrecond;
    use faer::matrix_free::lsmr::{LsmrParams, lsmr, lsmr_scratch};
    let (n, k) = (30, 1);
    let a = random::mat::<f64>(50, n, 11);
    // Tikhonov: min ‖[A; 0.5·I]·x - [b; 0]‖, a rectangular stack.
    let reg = eye(n, n, 0).scale(0.5);
    let l = vstack(vec![DynOp::new(a.clone()), DynOp::new(reg)]);
    let mut rhs = Mat::zeros(50 + n, k);
    rhs.as_mut().subrows_mut(0, 50).copy_from(random::mat::<f64>(50, k, 12));
    let precond = IdentityPrecond { dim: n };
    let mut x = Mat::zeros(n, k);
    let params = LsmrParams { abs_tolerance: 0.0, rel_tolerance: 1e-13, max_iters: 1000, ..Default::default() };
    let mut buf = MemBuffer::new(lsmr_scratch(precond, &l, k, Par::Seq));
    lsmr(x.as_mut(), precond, &l, rhs.as_ref(), params, |_| {}, Par::Seq, MemStack::new(&mut buf))
        .expect("LSMR converges");
    // Normal equations, dense: (AᵀA + 0.25 I) x = Aᵀ b.
    let normal = a.transpose() * &a + faer::Scale(0.25) * Mat::<f64>::identity(n, n);
    let want = normal.partial_piv_lu().solve(a.transpose() * rhs.subrows(0, 50));
    assert!((&x - &want).norm_max() < 1e-8 * want.norm_max(), "max diff {}", (&x - &want).norm_max());
}

// No result may depend on what scratch (or the output) held before.

/// A user's operator that adds its product to `out` (`out += A·X`) instead of
/// overwriting it, as a sparse scatter or faer's `Accum::Add` is often
/// written. faer's traits do not promise that `out` is zeroed, so alone this
/// is the user's bug; but wherever the crate hands it a temporary of its own,
/// the temporary must be zeroed first, whatever the scratch held.
#[derive(Debug)]
struct Accumulating<T>(Mat<T>);

impl<T: ComplexField> LinOp<T> for Accumulating<T> {
    fn apply_scratch(&self, _: usize, _: Par) -> StackReq {
        StackReq::EMPTY
    }
    fn nrows(&self) -> usize {
        self.0.nrows()
    }
    fn ncols(&self) -> usize {
        self.0.ncols()
    }
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>, par: Par, _: &mut MemStack) {
        matmul(out, Accum::Add, &self.0, rhs, one(), par)
    }
    fn conj_apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>, par: Par, _: &mut MemStack) {
        matmul(out, Accum::Add, self.0.conjugate(), rhs, one(), par)
    }
}

impl<T: ComplexField> BiLinOp<T> for Accumulating<T> {
    fn transpose_apply_scratch(&self, _: usize, _: Par) -> StackReq {
        StackReq::EMPTY
    }
    fn transpose_apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>, par: Par, _: &mut MemStack) {
        matmul(out, Accum::Add, self.0.transpose(), rhs, one(), par)
    }
    fn adjoint_apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>, par: Par, _: &mut MemStack) {
        matmul(out, Accum::Add, self.0.adjoint(), rhs, one(), par)
    }
}

/// `a` as `from_matmat` closures that accumulate: `out += A·X`, `out += Aᴴ·Y`.
fn accumulating_matmat<T: ComplexField + Send + Sync + 'static>(a: &Mat<T>) -> DynOp<T> {
    let (a1, a2) = (a.clone(), a.clone());
    DynOp::new(from_matmat(
        a.nrows(),
        a.ncols(),
        move |out: MatMut<'_, T>, x: MatRef<'_, T>| matmul(out, Accum::Add, &a1, x, one(), Par::Seq),
        move |out: MatMut<'_, T>, y: MatRef<'_, T>| matmul(out, Accum::Add, a2.adjoint(), y, one(), Par::Seq),
    ))
}

/// `a` as `from_matvec` closures that accumulate: `out += A·x`, `out += Aᴴ·y`.
fn accumulating_matvec<T: ComplexField + Send + Sync + 'static>(a: &Mat<T>) -> DynOp<T> {
    let (a1, a2) = (a.clone(), a.clone());
    DynOp::new(from_matvec(
        a.nrows(),
        a.ncols(),
        move |out: ColMut<'_, T>, x: ColRef<'_, T>| {
            matmul(out.as_mat_mut(), Accum::Add, &a1, x.as_mat(), one(), Par::Seq)
        },
        move |out: ColMut<'_, T>, y: ColRef<'_, T>| {
            matmul(out.as_mat_mut(), Accum::Add, a2.adjoint(), y.as_mat(), one(), Par::Seq)
        },
    ))
}

/// `I · op · I`: every output `op` writes is then a temporary of the crate.
fn sandwich<T: ComplexField + Send + Sync + 'static>(op: DynOp<T>) -> DynOp<T> {
    let (m, n) = (op.nrows(), op.ncols());
    DynOp::new(eye(m, m, 0).compose(op.compose(eye(n, n, 0))))
}

/// How a test operator is made from a dense matrix.
type Leaf<T> = dyn Fn(&Mat<T>) -> DynOp<T>;

/// Every combinator around `leaf`, with its dense equivalent.
fn combinators_around<T: ComplexField + Send + Sync + 'static>(
    leaf: &Leaf<T>,
) -> Vec<(&'static str, DynOp<T>, Mat<T>)> {
    let a = random::mat::<T>(4, 3, 200);
    let a2 = random::mat::<T>(4, 3, 201);
    let b = random::mat::<T>(3, 5, 202);
    let c = random::mat::<T>(2, 4, 203);
    let h = random::mat::<T>(4, 2, 204);
    let v = random::mat::<T>(2, 3, 205);
    let k = random::mat::<T>(2, 2, 206);
    let alpha = complex_scalar::<T>();
    let dyn_mat = |m: &Mat<T>| DynOp::new(m.clone());
    let kron = |x: &Mat<T>, y: &Mat<T>| {
        let (m2, n2) = (y.nrows(), y.ncols());
        Mat::from_fn(x.nrows() * m2, x.ncols() * n2, |r, c| mul(&x[(r / m2, c / n2)], &y[(r % m2, c % n2)]))
    };
    let stacked = |blocks: &[(usize, usize, &Mat<T>)], m, n| {
        let mut d = Mat::zeros(m, n);
        for &(r, c, x) in blocks {
            put(&mut d, r, c, x.as_ref());
        }
        d
    };
    vec![
        ("alone", leaf(&a), a.clone()),
        ("compose, on the left", DynOp::new(leaf(&a).compose(dyn_mat(&b))), &a * &b),
        ("compose, on the right", DynOp::new(dyn_mat(&c).compose(leaf(&a))), &c * &a),
        ("compose, both sides", DynOp::new(leaf(&a).compose(leaf(&b))), &a * &b),
        ("plus", DynOp::new(leaf(&a).plus(leaf(&a2))), &a + &a2),
        ("minus", DynOp::new(leaf(&a).minus(leaf(&a2))), &a - &a2),
        ("scale", DynOp::new(leaf(&a).scale(alpha.clone())), faer::Scale(alpha.clone()) * &a),
        ("hstack", DynOp::new(hstack(vec![leaf(&a), leaf(&h), leaf(&a2)])), {
            stacked(&[(0, 0, &a), (0, 3, &h), (0, 5, &a2)], 4, 8)
        }),
        ("vstack", DynOp::new(vstack(vec![leaf(&a), leaf(&v)])), stacked(&[(0, 0, &a), (4, 0, &v)], 6, 3)),
        ("block_diag", DynOp::new(block_diag(vec![leaf(&a), leaf(&v)])), { stacked(&[(0, 0, &a), (4, 3, &v)], 6, 6) }),
        ("Kron, left factor", DynOp::new(Kron::new(leaf(&a), dyn_mat(&k))), kron(&a, &k)),
        ("Kron, right factor", DynOp::new(Kron::new(dyn_mat(&k), leaf(&a))), kron(&k, &a)),
        ("Kron, both factors", DynOp::new(Kron::new(leaf(&v), leaf(&k))), kron(&v, &k)),
        ("Adjoint", DynOp::new(Adjoint(leaf(&a))), a.adjoint().to_owned()),
        ("Transpose", DynOp::new(Transpose(leaf(&a))), a.transpose().to_owned()),
        ("Conjugate", DynOp::new(Conjugate(leaf(&a))), a.conjugate().to_owned()),
        ("DynOp algebra", (leaf(&a) - leaf(&a2)) * alpha.clone(), faer::Scale(alpha) * (&a - &a2)),
    ]
}

/// Three products in each mode with one scratch buffer, reused, whose bytes
/// start as 0xFF (NaN in every scalar type), into one output that starts as
/// NaN: each must equal the dense product.
#[track_caller]
fn check_reused_scratch<T: ComplexField, L: BiLinOp<T>>(op: &L, dense: MatRef<'_, T>, what: &str) {
    assert_eq!((op.nrows(), op.ncols()), (dense.nrows(), dense.ncols()), "{what}: shape");
    let k = 3;
    for mode in Mode::ALL {
        let mut buf = MemBuffer::new(mode.scratch(op, k, Par::Seq));
        buf.iter_mut().for_each(|byte| {
            byte.write(0xFF);
        });
        let (m, n) = mode.dims_of(op);
        let mut out = Mat::from_fn(m, k, |_, _| nan::<T>());
        for product in 1..=3 {
            let x = random::mat::<T>(n, k, 300 + product);
            mode.apply(op, out.as_mut(), x.as_ref(), Par::Seq, MemStack::new(&mut buf));
            let want = common::reference(dense, mode, x.as_ref());
            assert_close(out.as_ref(), want.as_ref(), &format!("{what}, {mode:?}, product {product}"));
        }
    }
}

fn accumulating_closures_in_reused_scratch<T: ComplexField + Send + Sync + 'static>() {
    let leaves: [(&str, &Leaf<T>); 2] =
        [("from_matmat +=", &accumulating_matmat::<T>), ("from_matvec +=", &accumulating_matvec::<T>)];
    for (name, leaf) in leaves {
        for (case, op, dense) in combinators_around(leaf) {
            check_reused_scratch(&op, dense.as_ref(), &format!("{name}, {case}"));
        }
    }
}

fn accumulating_operators_in_crate_temporaries<T: ComplexField + Send + Sync + 'static>() {
    let leaf = |a: &Mat<T>| DynOp::new(Accumulating(a.clone()));
    for (case, op, dense) in combinators_around(&leaf) {
        check_reused_scratch(&sandwich(op), dense.as_ref(), &format!("I·({case})·I, BiLinOp +="));
    }
}

fn accumulating_operators_under_threads<T: lazylinop::Scalar + Send + Sync + 'static>() {
    let a = random::mat::<T>(5, 4, 210);
    let ops = [
        ("from_matmat +=", accumulating_matmat(&a)),
        ("from_matvec +=", accumulating_matvec(&a)),
        ("I·(BiLinOp +=)·I", sandwich(DynOp::new(Accumulating(a.clone())))),
    ];
    for (name, op) in ops {
        for use_matvec in [false, true] {
            let p = pmatmat(op.clone(), Method::Thread, Some(2), use_matvec).unwrap().with_min_parallel_work(0);
            check_reused_scratch(&p, a.as_ref(), &format!("pmatmat thread, use_matvec {use_matvec}, {name}"));
        }
    }
}

#[test]
fn accumulating_closures_get_a_zeroed_output_in_every_combinator() {
    for_all_types!(accumulating_closures_in_reused_scratch);
}
#[test]
fn combinator_temporaries_are_zeroed_before_each_inner_product() {
    for_all_types!(accumulating_operators_in_crate_temporaries);
}
#[test]
fn accumulating_operators_under_the_thread_backend() {
    for_all_types!(accumulating_operators_under_threads);
}

// Shapes whose arithmetic overflows usize are refused at construction.

const BIG: usize = (1 << 63) + 1;

#[test]
fn kron_shape_overflow_panics_naming_the_factors() {
    // The row count BIG·2 wraps to 2: a 2×1 operator over a view it does not fit.
    let msg = panic_message(|| {
        Kron::new::<f64>(zeros(BIG, 1), eye(2, 1, 0));
    });
    assert!(msg.contains(&format!("{BIG}×1")) && msg.contains("2×1") && msg.contains("Kron"), "{msg}");
    let msg = panic_message(|| {
        Kron::new::<f64>(eye(1, 2, 0), zeros(1, BIG));
    });
    assert!(msg.contains(&format!("1×{BIG}")) && msg.contains("1×2") && msg.contains("Kron"), "{msg}");
}

#[test]
fn stack_shape_overflow_panics_naming_the_blocks() {
    let max = usize::MAX;
    let msg = panic_message(|| {
        hstack::<f64, _>(vec![zeros(1, max), zeros(1, 1)]);
    });
    assert!(msg.contains(&format!("1×{max}, 1×1")) && msg.contains("hstack"), "{msg}");
    let msg = panic_message(|| {
        vstack::<f64, _>(vec![zeros(2, 1), zeros(max, 1)]);
    });
    assert!(msg.contains(&format!("2×1, {max}×1")) && msg.contains("vstack"), "{msg}");
    let msg = panic_message(|| {
        block_diag::<f64, _>(vec![zeros(max, 1), zeros(1, 1)]);
    });
    assert!(msg.contains(&format!("{max}×1, 1×1")) && msg.contains("block_diag"), "{msg}");
    let msg = panic_message(|| {
        block_diag::<f64, _>(vec![zeros(1, 1), zeros(1, max)]);
    });
    assert!(msg.contains(&format!("1×1, 1×{max}")) && msg.contains("block_diag"), "{msg}");
}

#[test]
fn products_with_huge_operand_views() {
    // A safe view may have more rows than isize::MAX (every row the same element).
    let v = 2.5_f64;
    let huge = MatRef::from_repeated_ref(&v, usize::MAX, 1);
    for offset in [0, 7, isize::MAX] {
        let e = eye(1, usize::MAX, offset);
        let mut out = Mat::from_fn(1, 1, |_, _| f64::NAN);
        e.apply(out.as_mut(), huge, Par::Seq, MemStack::new(&mut []));
        assert_eq!(out[(0, 0)], v, "eye(1, usize::MAX, {offset}) · x");
        Transpose(&e).transpose_apply(out.as_mut(), huge, Par::Seq, MemStack::new(&mut []));
        assert_eq!(out[(0, 0)], v, "eye(1, usize::MAX, {offset}) through Transpose");
    }
    // Kron's views of one column of the operand step over n2 rows at a time.
    let (n1, n2) = (2, 1 << 62);
    let k = Kron::new::<f64>(eye(2, 2, 0), eye(1, n2, 0));
    let x = MatRef::from_repeated_ref(&v, n1 * n2, 3);
    let mut out = Mat::from_fn(2, 3, |_, _| f64::NAN);
    let mut buf = MemBuffer::new(LinOp::<f64>::apply_scratch(&k, 3, Par::Seq));
    k.apply(out.as_mut(), x, Par::Seq, MemStack::new(&mut buf));
    assert_eq!(out, Mat::from_fn(2, 3, |_, _| v));
}
