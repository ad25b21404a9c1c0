//! Distributed Krylov solvers: solutions against a dense solve, the same
//! outcome on every rank, breakdowns and non-convergence as errors.

use super::dist::{same_error_everywhere_solve, saved_sparse};
use super::*;
use faer::c64;
use faer::sparse::{SparseRowMat, Triplet};
use faer::traits::math_utils::{add, mul};
use lazylinop::gallery::{Grid, laplacian_3d};
use lazylinop::mpi::{DistMat, DistOp, MpiLop};
use lazylinop::solvers::{self, CgVariant, InitialGuess, Params, SolveError, SolveInfo};

/// A Hermitian positive definite complex matrix: the Laplacian plus `i·K`,
/// `K` antisymmetric (real for `f64`).
fn hpd<T: Exact>(grid: Grid) -> SparseRowMat<u32, T> {
    let l = laplacian_3d(grid);
    let n = l.nrows();
    let mut t = Vec::new();
    for i in 0..n {
        for (j, &v) in l.col_idx_of_row(i).zip(l.val_of_row(i)) {
            let im = if j > i {
                0.05
            } else if j < i {
                -0.05
            } else {
                0.0
            };
            t.push(Triplet::new(i as u32, j as u32, T::from_pair(v, im)));
        }
    }
    SparseRowMat::try_new_from_triplets(n, n, &t).unwrap()
}

/// A non-symmetric matrix: the Laplacian with an upwind convection term.
fn convection<T: Exact>(grid: Grid) -> SparseRowMat<u32, T> {
    let l = laplacian_3d(grid);
    let n = l.nrows();
    let mut t = Vec::new();
    for i in 0..n {
        for (j, &v) in l.col_idx_of_row(i).zip(l.val_of_row(i)) {
            let c = if j + 1 == i {
                -0.8
            } else if j == i {
                0.8
            } else {
                0.0
            };
            t.push(Triplet::new(i as u32, j as u32, T::from_pair(v + c, if j == i { 0.3 } else { 0.0 })));
        }
    }
    SparseRowMat::try_new_from_triplets(n, n, &t).unwrap()
}

/// `‖b − A·x‖ / ‖b‖` for each column, with the dense matrix, on every rank.
fn true_residuals<T: Scalar>(a: MatRef<'_, T>, x: &DistMat<T>, b: MatRef<'_, T>) -> Vec<f64> {
    let x = x.gather(Gather::All).unwrap().unwrap();
    let r = b - a * &x;
    (0..b.ncols())
        .map(|j| T::real_to_f64(r.col(j).norm_l2()) / T::real_to_f64(b.col(j).norm_l2()).max(1e-300))
        .collect()
}

/// The info must be the same on every rank (its residuals' bits).
fn same_info(world: &SimpleCommunicator, info: &SolveInfo, what: &str) {
    let h = info
        .abs_residuals
        .iter()
        .chain(&info.rel_residuals)
        .fold(info.iterations as u64, |h, r| h.rotate_left(7) ^ r.to_bits());
    let all = all_gather_u64(world, [h]);
    assert!(all.iter().all(|x| *x == all[0]), "{what}: the ranks' outcomes differ: {info:?}");
}

fn cg_of<T: Exact>(world: &SimpleCommunicator) {
    let grid = Grid { n: [9, 7, 6], blocks: [1, 1, 1] };
    let a = hpd::<T>(grid);
    let path = saved_sparse(world, &format!("cg-{}", T::DTYPE), a.as_ref());
    let l = MpiLop::<T>::new(world, &path, None, false, None).unwrap();
    let dense = a.to_dense();
    let tol = if T::DTYPE.component_size() == 4 { 1e-4 } else { 1e-9 };
    let jacobi = solvers::jacobi(&l).unwrap();
    let block = solvers::block_jacobi(&l).unwrap();
    let pcs: [(&str, Option<&dyn DistOp<T>>); 3] =
        [("none", None), ("jacobi", Some(&jacobi)), ("block-Jacobi", Some(&block))];
    for k in [1, 3] {
        let b = random::mat::<T>(a.nrows(), k, 5);
        let db = DistMat::from_full(l.row_layout(), b.as_ref());
        for variant in [CgVariant::Standard, CgVariant::Fused, CgVariant::Block] {
            for (name, m) in pcs {
                let what = format!("cg {variant:?} {name} k = {k} [{}]", T::DTYPE);
                let mut x = DistMat::zeros(l.col_layout(), k);
                let params = Params::default().rel_tolerance(tol).max_iters(500);
                let info = solvers::cg(x.as_mut(), &l, m, db.as_ref(), params, variant, None, Par::Seq)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                same_info(world, &info, &what);
                for (j, r) in true_residuals(dense.as_ref(), &x, b.as_ref()).into_iter().enumerate() {
                    assert!(r <= 20.0 * tol, "{what}: column {j}'s true relative residual {r:e} ({info:?})");
                }
                assert!(info.rel_residuals.iter().all(|&r| r <= tol), "{what}: {info:?}");
                if name != "none" {
                    assert!(info.iterations > 0, "{what}");
                }
                // Restarted from the solution: converged at once.
                let again = solvers::cg(
                    x.as_mut(),
                    &l,
                    m,
                    db.as_ref(),
                    params.initial_guess(InitialGuess::Given),
                    variant,
                    None,
                    Par::Seq,
                )
                .unwrap();
                assert!(again.iterations <= 1, "{what}: restarted from the solution: {again:?}");
            }
        }
    }
    // Block CG on a rank-deficient block (columns b, 2b, b + c): truncated, still solved,
    // and in no more iterations than the columns side by side.
    let b0 = random::mat::<T>(a.nrows(), 2, 9);
    let two = T::from_c64(c64::new(2.0, 0.0));
    let b = faer::Mat::<T>::from_fn(a.nrows(), 3, |i, j| match j {
        0 => b0[(i, 0)],
        1 => mul(&two, &b0[(i, 0)]),
        _ => add(&b0[(i, 0)], &b0[(i, 1)]),
    });
    let db = DistMat::from_full(l.row_layout(), b.as_ref());
    let params = Params::default().rel_tolerance(tol).max_iters(500);
    let mut its = [0; 2];
    for (v, variant) in [CgVariant::Standard, CgVariant::Block].into_iter().enumerate() {
        let what = format!("cg {variant:?}, dependent right-hand sides [{}]", T::DTYPE);
        let mut x = DistMat::zeros(l.col_layout(), 3);
        let info = solvers::cg(x.as_mut(), &l, None, db.as_ref(), params, variant, None, Par::Seq)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        same_info(world, &info, &what);
        for (j, r) in true_residuals(dense.as_ref(), &x, b.as_ref()).into_iter().enumerate() {
            assert!(r <= 20.0 * tol, "{what}: column {j}'s true relative residual {r:e} ({info:?})");
        }
        its[v] = info.iterations;
    }
    assert!(its[1] <= its[0], "block CG took {} iterations, side by side {}", its[1], its[0]);
    world.barrier();
    if world.rank() == 0 {
        std::fs::remove_file(&path).unwrap();
    }
}

/// CG (standard, fused; none, Jacobi, block-Jacobi; 1 and 3 right-hand
/// sides) solves to the tolerance, the same outcome on every rank.
fn cg_solves(world: &SimpleCommunicator) {
    cg_of::<f64>(world);
    cg_of::<c64>(world);
    cg_of::<f32>(world);
}

fn gmres_of<T: Exact>(world: &SimpleCommunicator) {
    let grid = Grid { n: [8, 7, 5], blocks: [1, 1, 1] };
    let a = convection::<T>(grid);
    let path = saved_sparse(world, &format!("gmres-{}", T::DTYPE), a.as_ref());
    let l = MpiLop::<T>::new(world, &path, None, false, None).unwrap();
    let dense = a.to_dense();
    let jacobi = solvers::jacobi(&l).unwrap();
    let b = random::mat::<T>(a.nrows(), 2, 8);
    let db = DistMat::from_full(l.row_layout(), b.as_ref());
    for (name, m) in [("none", None), ("jacobi", Some(&jacobi as &dyn DistOp<T>))] {
        for restart in [5, 30] {
            let what = format!("gmres({restart}) {name} [{}]", T::DTYPE);
            let mut x = DistMat::zeros(l.col_layout(), 2);
            let params = Params::default().rel_tolerance(1e-9).max_iters(2000);
            let info = solvers::gmres(x.as_mut(), &l, m, db.as_ref(), params, restart, None, Par::Seq)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            same_info(world, &info, &what);
            for r in true_residuals(dense.as_ref(), &x, b.as_ref()) {
                assert!(r <= 1e-8, "{what}: true relative residual {r:e} ({info:?})");
            }
        }
    }
    world.barrier();
    if world.rank() == 0 {
        std::fs::remove_file(&path).unwrap();
    }
}

/// GMRES(m) on a non-symmetric matrix, with and without Jacobi, restarts
/// short and long.
fn gmres_solves(world: &SimpleCommunicator) {
    gmres_of::<f64>(world);
    gmres_of::<c64>(world);
}

/// LSQR on a rectangular matrix (rows split by nonzeros, columns evenly):
/// the least-squares solution of the dense normal equations.
fn lsqr_solves(world: &SimpleCommunicator) {
    let (m, n) = (83, 31);
    let mut t = Vec::new();
    for i in 0..m {
        for q in 0..4 {
            let j = (i * 7 + q * 5) % n;
            t.push(Triplet::new(i as u32, j as u32, 1.0 + ((i + 3 * q) % 5) as f64 / 3.0));
        }
    }
    for j in 0..n {
        t.push(Triplet::new(j as u32, j as u32, 4.0));
    }
    let a = SparseRowMat::<u32, f64>::try_new_from_triplets(m, n, &t).unwrap();
    let path = saved_sparse(world, "lsqr", a.as_ref());
    let l = MpiLop::<f64>::new(world, &path, None, false, None).unwrap();
    let dense = a.to_dense();
    let b = random::mat::<f64>(m, 2, 3);
    let db = DistMat::from_full(l.row_layout(), b.as_ref());
    let mut x = DistMat::zeros(l.col_layout(), 2);
    let info = solvers::lsqr(
        x.as_mut(),
        &l,
        db.as_ref(),
        Params::default().rel_tolerance(1e-12).max_iters(500),
        None,
        Par::Seq,
    )
    .unwrap_or_else(|e| panic!("lsqr: {e}"));
    same_info(world, &info, "lsqr");
    let ata = dense.adjoint() * &dense;
    let want = faer::linalg::solvers::Solve::solve(&ata.partial_piv_lu(), dense.adjoint() * &b);
    let got = x.gather(Gather::All).unwrap().unwrap();
    assert!((&got - &want).norm_max() <= 1e-8 * want.norm_max(), "lsqr: {:e}", (&got - &want).norm_max());
    world.barrier();
    if world.rank() == 0 {
        std::fs::remove_file(&path).unwrap();
    }
}

/// Not positive definite, too few iterations, a NaN on one rank, parameters
/// that differ: the same error on every rank; the callback runs on rank 0.
fn solver_failures_are_the_same_on_every_rank(world: &SimpleCommunicator) {
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let a = laplacian_3d(Grid::cube(6));
    let mut neg = a.clone();
    for v in neg.val_mut() {
        *v = -*v;
    }
    let path = saved_sparse(world, "neg", neg.as_ref());
    let l = MpiLop::<f64>::new(world, &path, None, false, None).unwrap();
    let b = DistMat::from_fn(l.row_layout(), 1, |i, _| 1.0 + i as f64);
    let mut x = DistMat::zeros(l.col_layout(), 1);
    let got = solvers::cg(x.as_mut(), &l, None, b.as_ref(), Params::default(), CgVariant::Standard, None, Par::Seq);
    assert!(matches!(got, Err(SolveError::Breakdown { iteration: 1, .. })), "{got:?}");
    same_error_everywhere_solve(world, got, "positive definite");
    let got = solvers::cg(x.as_mut(), &l, None, b.as_ref(), Params::default(), CgVariant::Fused, None, Par::Seq);
    same_error_everywhere_solve(world, got, "positive definite");
    let got = solvers::cg(x.as_mut(), &l, None, b.as_ref(), Params::default(), CgVariant::Block, None, Par::Seq);
    assert!(matches!(got, Err(SolveError::Breakdown { iteration: 1, .. })), "block: {got:?}");
    same_error_everywhere_solve(world, got, "positive definite");
    // Too few iterations on the positive definite one.
    let path2 = saved_sparse(world, "pos", a.as_ref());
    let l2 = MpiLop::<f64>::new(world, &path2, None, false, None).unwrap();
    let mut calls = 0;
    let mut cb = |p: &lazylinop::solvers::Progress<'_>| {
        assert_eq!(p.residuals.len(), 1);
        calls += 1;
    };
    let got = solvers::cg(
        x.as_mut(),
        &l2,
        None,
        b.as_ref(),
        Params::default().max_iters(3),
        CgVariant::Standard,
        Some(&mut cb),
        Par::Seq,
    );
    match &got {
        Err(SolveError::NoConvergence(info)) => {
            assert_eq!(info.iterations, 3);
            same_info(world, info, "no convergence");
        }
        other => panic!("expected NoConvergence, got {other:?}"),
    }
    assert_eq!(calls, if rank == 0 { 3 } else { 0 }, "the callback runs on rank 0, once per iteration");
    // A NaN in the right-hand side, on the last rank only.
    let mut bad = b.clone();
    if rank == size - 1 && bad.local().nrows() > 0 {
        bad.local_mut()[(0, 0)] = f64::NAN;
    }
    let got = solvers::cg(x.as_mut(), &l2, None, bad.as_ref(), Params::default(), CgVariant::Standard, None, Par::Seq);
    same_error_everywhere_solve(world, got, "not finite");
    let got = solvers::gmres(x.as_mut(), &l2, None, bad.as_ref(), Params::default(), 10, None, Par::Seq);
    same_error_everywhere_solve(world, got, "not finite");
    // Parameters that differ on one rank.
    if size > 1 {
        let params = Params::default().max_iters(if rank == 1 { 7 } else { 8 });
        let got = solvers::cg(x.as_mut(), &l2, None, b.as_ref(), params, CgVariant::Standard, None, Par::Seq);
        same_error_everywhere_solve(world, got, "max_iters");
    }
    // And the solver works afterwards.
    solvers::cg(x.as_mut(), &l2, None, b.as_ref(), Params::default(), CgVariant::Fused, None, Par::Seq).unwrap();
    world.barrier();
    if rank == 0 {
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&path2).unwrap();
    }
}

/// The solver tests, with their deadlines in seconds.
pub(super) const TESTS: &[(&str, super::Test, u64)] = &[
    ("cg_solves", cg_solves, 300),
    ("gmres_solves", gmres_solves, 300),
    ("lsqr_solves", lsqr_solves, 120),
    ("solver_failures_are_the_same_on_every_rank", solver_failures_are_the_same_on_every_rank, 120),
];
