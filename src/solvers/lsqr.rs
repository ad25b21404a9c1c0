//! LSQR (Paige and Saunders, 1982): least squares `min ‖A·x − b‖` for a
//! rectangular `A`, on its row and column layouts.

use faer::c64;
use faer::{Par, unzip, zip};

use super::{
    Callback, InitialGuess, Params, Progress, SolveError, SolveInfo, Work, axpy, converged, local_dots, norm_of,
    relative, xpby, zeros,
};
use crate::Scalar;
use crate::mpi::{DistMatMut, DistMatRef, DistOp};
use crate::ops::Mode;

/// Solves `min ‖A·xⱼ − bⱼ‖` for each column (one after the other) of `b`
/// (in `A`'s row layout), `x` in its column layout, with LSQR: one `A·v`,
/// one `Aᴴ·u` and two allreduces per iteration. Column `j` stops when
/// `‖r‖ ≤ max(abs_tolerance, rel_tolerance·‖b‖)` (a consistent system) or
/// `‖Aᴴr‖ ≤ rel_tolerance·‖A‖·‖r‖` (a least-squares solution; `‖A‖` is
/// LSQR's Frobenius-norm estimate); `abs_residuals` reports `‖r‖`. No
/// preconditioner. Collective.
///
/// # Errors
/// As [`cg`](super::cg), without the positive-definite breakdowns.
pub fn lsqr<T: Scalar, A: DistOp<T> + ?Sized>(
    mut x: DistMatMut<'_, T>,
    a: &A,
    b: DistMatRef<'_, T>,
    params: Params,
    mut callback: Callback<'_>,
    par: Par,
) -> Result<SolveInfo, SolveError> {
    let mut work = Work::start("lsqr", a, None, &x, &b, &params, &[], par)?;
    let (rows, cols) = (a.row_layout(), a.col_layout());
    let k = b.ncols();
    let rank0 = rows.rank() == 0;
    let mut info = SolveInfo {
        iterations: 0,
        column_iterations: vec![0; k],
        abs_residuals: vec![0.0; k],
        rel_residuals: vec![0.0; k],
    };
    let (mut u, mut au) = (zeros::<T>(rows, 1), zeros::<T>(rows, 1));
    let (mut v, mut av, mut w) = (zeros::<T>(cols, 1), zeros::<T>(cols, 1), zeros::<T>(cols, 1));
    let mut failed = false;
    let scale = |z: &mut crate::mpi::DistMat<T>, by: f64| {
        if by > 0.0 {
            let f = T::from_c64(c64::new(1.0 / by, 0.0));
            zip!(z.local_mut()).for_each(|unzip!(z)| *z = faer::traits::math_utils::mul(&f, z));
        }
    };
    for col in 0..k {
        let mut xj = x.rb_mut().subcols_mut(col, 1);
        let bj = b.subcols(col, 1);
        match params.initial_guess {
            InitialGuess::Zero => {
                xj.fill_zero();
                u.local_mut().fill(faer::traits::math_utils::zero());
            }
            InitialGuess::Given => work.apply(a, Mode::Apply, u.as_mut(), xj.rb())?,
        }
        zip!(u.local_mut(), bj.local()).for_each(|unzip!(u, b)| *u = faer::traits::math_utils::sub(b, u));
        let red = work.reduce(2, |s| {
            local_dots(u.local(), u.local(), &mut s[..1]);
            local_dots(bj.local(), bj.local(), &mut s[1..]);
        })?;
        let (mut beta, b_norm) = (norm_of(red[0]), norm_of(red[1]));
        scale(&mut u, beta);
        work.apply(a, Mode::Adjoint, v.as_mut(), u.as_ref())?;
        let mut alpha = norm_of(work.reduce(1, |s| local_dots(v.local(), v.local(), s))?[0]);
        scale(&mut v, alpha);
        w.local_mut().copy_from(v.local());
        let (mut phibar, mut rhobar) = (beta, alpha);
        let mut anorm2 = 0.0;
        let (mut rnorm, mut its) = (beta, 0);
        if !(alpha.is_finite() && beta.is_finite() && b_norm.is_finite()) {
            return Err(SolveError::NotFinite { iteration: 0, column: col });
        }
        let mut done = converged(rnorm, b_norm, &params) || alpha * beta == 0.0;
        while !done && its < params.max_iters {
            its += 1;
            // β·u = A·v − α·u
            work.apply(a, Mode::Apply, au.as_mut(), v.as_ref())?;
            xpby(u.local_mut(), au.local(), &[c64::new(-alpha, 0.0)]);
            beta = norm_of(work.reduce(1, |s| local_dots(u.local(), u.local(), s))?[0]);
            scale(&mut u, beta);
            anorm2 += alpha * alpha + beta * beta;
            // α·v = Aᴴ·u − β·v
            work.apply(a, Mode::Adjoint, av.as_mut(), u.as_ref())?;
            xpby(v.local_mut(), av.local(), &[c64::new(-beta, 0.0)]);
            alpha = norm_of(work.reduce(1, |s| local_dots(v.local(), v.local(), s))?[0]);
            scale(&mut v, alpha);
            let rho = rhobar.hypot(beta);
            if !(rho.is_finite() && alpha.is_finite() && beta.is_finite()) {
                return Err(SolveError::NotFinite { iteration: its, column: col });
            }
            if rho == 0.0 {
                break;
            }
            let (c, s) = (rhobar / rho, beta / rho);
            let theta = s * alpha;
            rhobar = -c * alpha;
            let phi = c * phibar;
            phibar *= s;
            axpy(xj.local_mut(), &[c64::new(phi / rho, 0.0)], w.local());
            // w = v − (θ/ρ)·w
            xpby(w.local_mut(), v.local(), &[c64::new(-theta / rho, 0.0)]);
            rnorm = phibar;
            let arnorm = phibar * alpha * c.abs();
            if rank0 && let Some(cb) = callback.as_mut() {
                cb(&Progress { iteration: its, column: Some(col), residuals: &[rnorm] });
            }
            done = converged(rnorm, b_norm, &params) || arnorm <= params.rel_tolerance * anorm2.sqrt() * rnorm;
        }
        info.column_iterations[col] = its;
        info.iterations += its;
        info.abs_residuals[col] = rnorm;
        info.rel_residuals[col] = relative(rnorm, b_norm);
        failed |= !done;
    }
    if failed {
        return Err(SolveError::NoConvergence(info));
    }
    Ok(info)
}
