//! The operator core: every operator and combinator against its dense
//! equivalent (faer's matmul), for f32, f64, c32 and c64, on odd and empty
//! shapes; shape errors; faer's solvers on lazy operators.

mod common;

use common::{assert_close, check_op};
use faer::linalg::solvers::Solve;
use faer::traits::ComplexField;
use faer::traits::math_utils::{from_f64, mul, one, sqrt, zero};
use faer::{Col, Mat, MatMut, MatRef, Par};
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
        for offset in [-3, -1, 0, 2, 10] {
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
    use faer::dyn_stack::{MemBuffer, MemStack};
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
    use faer::dyn_stack::{MemBuffer, MemStack};
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
