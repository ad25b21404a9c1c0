//! Restarted GMRES(m), right-preconditioned, classical Gram–Schmidt with
//! one fused allreduce per iteration.

use std::cmp::Ordering;

use faer::c64;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par, unzip, zip};

use super::{
    Callback, InitialGuess, Params, Progress, SolveError, SolveInfo, Work, converged, local_dots, norm_of, relative,
    zeros,
};
use crate::Scalar;
use crate::mpi::{DistMat, DistMatMut, DistMatRef, DistOp};
use crate::ops::Mode;

/// Reorthogonalise when Gram–Schmidt leaves less than this share of `w`'s
/// norm (Daniel, Gragg, Kaufman and Stewart's `1/√2`).
const REORTH: f64 = 0.5;

/// Solves `A·X = B` for a square `A` with restarted GMRES(`restart`), each
/// column in turn, right-preconditioned by `m` if given (`A·M·y = b`,
/// `x = M·y`: the residual tested is `b − A·x`'s). The Arnoldi step
/// orthogonalises with classical Gram–Schmidt: the projections and the norm
/// in one allreduce, a second pass (and allreduce) when more than half of
/// `‖w‖²` cancels. `max_iters` bounds each column's iterations, over all
/// restarts. Collective.
///
/// # Errors
/// As [`cg`](super::cg), without the positive-definite breakdowns; a
/// `restart` of 0 is [`SolveError::Mpi`].
#[allow(clippy::too_many_arguments)]
pub fn gmres<T: Scalar, A: DistOp<T> + ?Sized>(
    mut x: DistMatMut<'_, T>,
    a: &A,
    m: Option<&dyn DistOp<T>>,
    b: DistMatRef<'_, T>,
    params: Params,
    restart: usize,
    mut callback: Callback<'_>,
    par: Par,
) -> Result<SolveInfo, SolveError> {
    let square = a.row_layout().offsets() == a.col_layout().offsets();
    let bad = if !square {
        Some("gmres: the operator is not square (its row and column layouts differ)")
    } else if restart == 0 {
        Some("gmres: a restart length of 0")
    } else {
        None
    };
    if let Some(why) = bad {
        crate::mpi::agree_on(b.layout(), &[], Some(crate::mpi::fault(why.into())))?;
    }
    let mut work = Work::start("gmres", a, m, &x, &b, &params, &[("restart", restart as u64)], par)?;
    let layout = a.row_layout();
    let k = b.ncols();
    let rank0 = layout.rank() == 0;
    let mut info = SolveInfo {
        iterations: 0,
        column_iterations: vec![0; k],
        abs_residuals: vec![0.0; k],
        rel_residuals: vec![0.0; k],
    };
    let mut v: DistMat<T> = zeros(layout, restart + 1);
    let (mut w, mut t, mut r) = (zeros::<T>(layout, 1), zeros::<T>(layout, 1), zeros::<T>(layout, 1));
    let mut h_local = Mat::<T>::zeros(restart + 1, 1);
    let mut y_t = Mat::<T>::zeros(restart, 1);
    let mut hess = vec![c64::new(0.0, 0.0); (restart + 1) * restart];
    let (mut cs, mut sn, mut g) =
        (vec![0.0f64; restart], vec![c64::new(0.0, 0.0); restart], vec![c64::new(0.0, 0.0); restart + 1]);
    let mut failed = false;
    for col in 0..k {
        let mut xj = x.rb_mut().subcols_mut(col, 1);
        let bj = b.subcols(col, 1);
        // r = b − A·x
        match params.initial_guess {
            InitialGuess::Zero => xj.fill_zero(),
            InitialGuess::Given => work.apply(a, Mode::Apply, r.as_mut(), xj.rb())?,
        }
        if params.initial_guess == InitialGuess::Zero {
            r.local_mut().fill(faer::traits::math_utils::zero());
        }
        zip!(r.local_mut(), bj.local()).for_each(|unzip!(r, b)| *r = faer::traits::math_utils::sub(b, r));
        let red = work.reduce(2, |s| {
            local_dots(r.local(), r.local(), &mut s[..1]);
            local_dots(bj.local(), bj.local(), &mut s[1..]);
        })?;
        let (mut beta, b_norm) = (norm_of(red[0]), norm_of(red[1]));
        let mut its = 0;
        let mut res = beta;
        loop {
            if !(beta.is_finite() && b_norm.is_finite()) {
                return Err(SolveError::NotFinite { iteration: its, column: col });
            }
            if converged(beta, b_norm, &params) || its >= params.max_iters {
                break;
            }
            // V₀ = r / β
            let inv = T::from_c64(c64::new(1.0 / beta, 0.0));
            zip!(v.local_mut().col_mut(0), r.local().col(0))
                .for_each(|unzip!(v, r)| *v = faer::traits::math_utils::mul(&inv, r));
            g.fill(c64::new(0.0, 0.0));
            g[0] = c64::new(beta, 0.0);
            let mut n = 0;
            while n < restart && its < params.max_iters {
                let i = n;
                // w = A·M·vᵢ
                let vi = DistMatRef::new(layout, v.local().subcols(i, 1));
                work.precond(m, t.as_mut(), vi)?;
                work.apply(a, Mode::Apply, w.as_mut(), t.as_ref())?;
                let mut norm2 = 0.0;
                for pass in 0..2 {
                    let vs = v.local().subcols(0, i + 1);
                    matmul(
                        h_local.as_mut().subrows_mut(0, i + 1),
                        Accum::Replace,
                        vs.adjoint(),
                        w.local(),
                        faer::traits::math_utils::one(),
                        Par::Seq,
                    );
                    let red = work.reduce(i + 2, |s| {
                        for (q, sq) in s[..i + 1].iter_mut().enumerate() {
                            *sq = h_local[(q, 0)].to_c64();
                        }
                        local_dots(w.local(), w.local(), &mut s[i + 1..]);
                    })?;
                    let ww = red[i + 1].re;
                    let mut hh = 0.0;
                    for q in 0..=i {
                        hess[q + i * (restart + 1)] += red[q];
                        hh += red[q].norm_sqr();
                        h_local[(q, 0)] = T::from_c64(red[q]);
                    }
                    // w −= V·h
                    matmul(
                        w.local_mut(),
                        Accum::Add,
                        vs,
                        h_local.as_ref().subrows(0, i + 1),
                        T::from_c64(c64::new(-1.0, 0.0)),
                        Par::Seq,
                    );
                    norm2 = ww - hh;
                    if !matches!(norm2.partial_cmp(&(REORTH * ww)), Some(Ordering::Less | Ordering::Equal)) || pass == 1
                    {
                        break;
                    }
                }
                let hn = if norm2.is_finite() { norm2.max(0.0).sqrt() } else { f64::NAN };
                if !hn.is_finite() {
                    return Err(SolveError::NotFinite { iteration: its + 1, column: col });
                }
                hess[i + 1 + i * (restart + 1)] = c64::new(hn, 0.0);
                if hn > 0.0 && i < restart {
                    let inv = T::from_c64(c64::new(1.0 / hn, 0.0));
                    let wl = w.local();
                    zip!(v.local_mut().col_mut(i + 1), wl.col(0))
                        .for_each(|unzip!(v, w)| *v = faer::traits::math_utils::mul(&inv, w));
                }
                // Givens rotations: the earlier ones on column i, then a new one.
                let col_h = &mut hess[i * (restart + 1)..(i + 1) * (restart + 1)];
                for q in 0..i {
                    let (a0, a1) = (col_h[q], col_h[q + 1]);
                    col_h[q] = a0 * cs[q] + sn[q] * a1;
                    col_h[q + 1] = -sn[q].conj() * a0 + a1 * cs[q];
                }
                let (a0, a1) = (col_h[i], col_h[i + 1]);
                let d = (a0.norm_sqr() + a1.norm_sqr()).sqrt();
                if d == 0.0 {
                    return Err(SolveError::Breakdown {
                        iteration: its + 1,
                        column: col,
                        what: "the Hessenberg matrix is singular",
                    });
                }
                let (c, s) = if a0.norm() == 0.0 {
                    (0.0, a1.conj() / a1.norm())
                } else {
                    let phase = a0 / a0.norm();
                    (a0.norm() / d, phase * a1.conj() / d)
                };
                cs[i] = c;
                sn[i] = s;
                col_h[i] = c * a0 + s * a1;
                col_h[i + 1] = c64::new(0.0, 0.0);
                let gi = g[i];
                g[i] = gi * c;
                g[i + 1] = -s.conj() * gi;
                res = g[i + 1].norm();
                its += 1;
                n += 1;
                if rank0 && let Some(cb) = callback.as_mut() {
                    cb(&Progress { iteration: its, column: Some(col), residuals: &[res] });
                }
                if converged(res, b_norm, &params) || hn == 0.0 {
                    break;
                }
            }
            // y = H⁻¹ g (upper triangular n × n), x += M·(V·y)
            let mut y = vec![c64::new(0.0, 0.0); n];
            for q in (0..n).rev() {
                let mut s = g[q];
                for c2 in q + 1..n {
                    s -= hess[q + c2 * (restart + 1)] * y[c2];
                }
                y[q] = s / hess[q + q * (restart + 1)];
            }
            for q in 0..n {
                y_t[(q, 0)] = T::from_c64(y[q]);
            }
            matmul(
                w.local_mut(),
                Accum::Replace,
                v.local().subcols(0, n),
                y_t.as_ref().subrows(0, n),
                faer::traits::math_utils::one(),
                Par::Seq,
            );
            work.precond(m, t.as_mut(), w.as_ref())?;
            zip!(xj.local_mut(), t.local()).for_each(|unzip!(x, t)| *x = faer::traits::math_utils::add(x, t));
            hess.fill(c64::new(0.0, 0.0));
            // The true residual at each restart.
            work.apply(a, Mode::Apply, r.as_mut(), xj.rb())?;
            zip!(r.local_mut(), bj.local()).for_each(|unzip!(r, b)| *r = faer::traits::math_utils::sub(b, r));
            let red = work.reduce(1, |s| local_dots(r.local(), r.local(), s))?;
            beta = norm_of(red[0]);
            res = beta;
        }
        info.column_iterations[col] = its;
        info.iterations += its;
        info.abs_residuals[col] = res;
        info.rel_residuals[col] = relative(res, b_norm);
        failed |= !converged(res, b_norm, &params);
    }
    if failed {
        return Err(SolveError::NoConvergence(info));
    }
    Ok(info)
}
