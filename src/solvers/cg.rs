//! Preconditioned conjugate gradients, standard and fused (Chronopoulos–Gear).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt_pivoting::factor as piv_llt;
use faer::linalg::matmul::matmul;
use faer::linalg::triangular_solve::{solve_lower_triangular_in_place, solve_upper_triangular_in_place};
use faer::traits::math_utils::{add, one};
use faer::{Accum, Mat, MatMut, MatRef, Par, c64, unzip, zip};

use super::{
    Callback, InitialGuess, Params, Progress, SolveError, SolveInfo, Work, converged, local_dots, norm_of, relative,
    update_xr, xpby, zeros,
};
use crate::Scalar;
use crate::mpi::{DistMatMut, DistMatRef, DistOp};
use crate::ops::Mode;

/// Which CG recurrence [`cg`] runs (see the [module docs](super) for their
/// rounding).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum CgVariant {
    /// Hestenes–Stiefel: two allreduces per iteration.
    #[default]
    Standard,
    /// Chronopoulos–Gear: one allreduce per iteration (both inner products
    /// and the residual norm together), `A·p` by a recurrence.
    Fused,
    /// O'Leary's block CG, as faer's `conjugate_gradient`: the `k` columns
    /// share one Krylov space, with `k × k` coefficient matrices from the
    /// Gram matrices `Pᴴ·A·P` and `Rᴴ·M·R` (two allreduces per iteration, each
    /// for the whole Gram matrix). Fewer iterations than `k` independent
    /// solves when the right-hand sides are related, `O(n·k²)` more local
    /// work per iteration; a rank-deficient block (columns converged or
    /// dependent) is truncated at its numerical rank by a pivoted Cholesky.
    /// Every column iterates until all have converged.
    Block,
}

/// Solves `A·X = B` for Hermitian positive definite `A` (square, its row
/// and column layouts the same), `k` right-hand sides at once, with the
/// preconditioner `m` (`M ≈ A⁻¹`, Hermitian positive definite) if given;
/// `x` holds the initial guess ([`InitialGuess::Given`]) and receives the
/// solution. Collective. `callback` is called on rank 0 after each
/// iteration. See the [module docs](super).
///
/// # Errors
/// The same on every rank: [`SolveError::Mpi`] if the operands' layouts or
/// columns do not fit `A`, the ranks' parameters differ, or a product
/// fails; [`SolveError::Breakdown`] if `pᴴAp ≤ 0` or `rᴴMr < 0` (not
/// positive definite); [`SolveError::NotFinite`]; [`SolveError::NoConvergence`]
/// after `max_iters` (`x` holds the last iterate).
#[allow(clippy::too_many_arguments)]
pub fn cg<T: Scalar, A: DistOp<T> + ?Sized>(
    mut x: DistMatMut<'_, T>,
    a: &A,
    m: Option<&dyn DistOp<T>>,
    b: DistMatRef<'_, T>,
    params: Params,
    variant: CgVariant,
    mut callback: Callback<'_>,
    par: Par,
) -> Result<SolveInfo, SolveError> {
    let square = a.row_layout().offsets() == a.col_layout().offsets();
    let fault_square = (!square)
        .then(|| crate::mpi::fault("cg: the operator is not square (its row and column layouts differ)".into()));
    if let Some(f) = fault_square {
        crate::mpi::agree_on(b.layout(), &[], Some(f))?;
    }
    let extra = [("the CG variant (0 standard, 1 fused, 2 block)", variant as u64)];
    let mut work = Work::start("cg", a, m, &x, &b, &params, &extra, par)?;
    let layout = a.row_layout();
    let k = b.ncols();
    let mut r = zeros::<T>(layout, k);
    // `M·r`; without a preconditioner, `r` itself.
    let mut z = zeros::<T>(layout, if m.is_some() { k } else { 0 });
    let mut p = zeros::<T>(layout, k);
    let mut q = zeros::<T>(layout, k);
    // r = b − A·x
    match params.initial_guess {
        InitialGuess::Zero => x.fill_zero(),
        InitialGuess::Given => work.apply(a, Mode::Apply, r.as_mut(), x.rb())?,
    }
    zip!(r.local_mut(), b.local()).for_each(|unzip!(r, b)| *r = faer::traits::math_utils::sub(b, r));
    let mut info = SolveInfo {
        iterations: 0,
        column_iterations: vec![0; k],
        abs_residuals: vec![0.0; k],
        rel_residuals: vec![0.0; k],
    };
    let mut b_norms = vec![0.0; k];
    let mut active = vec![true; k];
    let mut residuals = vec![0.0; k];
    let rank0 = layout.rank() == 0;
    let zero = c64::new(0.0, 0.0);
    // What one reduction gave: per column (rᴴz, ‖r‖², other).
    let mut gamma = vec![zero; k];
    let mut alpha = vec![zero; k];
    let mut beta = vec![zero; k];
    let mut delta = vec![zero; k];
    // Per-iteration buffers (no allocation in the loop).
    let (mut neg, mut new_gamma, mut new_delta, mut rr) = (vec![zero; k], vec![zero; k], vec![zero; k], vec![zero; k]);

    // Updates `residuals`, `info` and `active` from ‖r‖²; `true` when all have converged.
    let mut check = |iteration: usize,
                     rr: &[c64],
                     active: &mut [bool],
                     info: &mut SolveInfo,
                     residuals: &mut [f64],
                     b_norms: &[f64]|
     -> Result<bool, SolveError> {
        for j in 0..k {
            let norm = norm_of(rr[j]);
            if !(norm.is_finite() && b_norms[j].is_finite()) {
                return Err(SolveError::NotFinite { iteration, column: j });
            }
            residuals[j] = norm;
            if active[j] {
                info.column_iterations[j] = iteration;
                if converged(norm, b_norms[j], &params) {
                    active[j] = false;
                }
            }
        }
        if rank0
            && iteration > 0
            && let Some(cb) = callback.as_mut()
        {
            cb(&Progress { iteration, column: None, residuals });
        }
        Ok(active.iter().all(|a| !a))
    };

    match variant {
        CgVariant::Standard => {
            // Without a preconditioner `z` is `r` (not a copy), and `rᴴz` is `‖r‖²`.
            if m.is_some() {
                work.precond(m, z.as_mut(), r.as_ref())?;
            }
            let zl = if m.is_some() { z.local() } else { r.local() };
            p.local_mut().copy_from(zl);
            let red = work.reduce(3 * k, |v| {
                if m.is_some() {
                    local_dots(r.local(), zl, &mut v[..k]);
                }
                local_dots(r.local(), r.local(), &mut v[k..2 * k]);
                local_dots(b.local(), b.local(), &mut v[2 * k..]);
                if m.is_none() {
                    v.copy_within(k..2 * k, 0);
                }
            })?;
            gamma.copy_from_slice(&red[..k]);
            rr.copy_from_slice(&red[k..2 * k]);
            for j in 0..k {
                b_norms[j] = norm_of(red[2 * k + j]);
            }
            let mut done = check(0, &rr, &mut active, &mut info, &mut residuals, &b_norms)?;
            let mut it = 0;
            while !done && it < params.max_iters {
                it += 1;
                work.apply(a, Mode::Apply, q.as_mut(), p.as_ref())?;
                let red = work.reduce(k, |v| local_dots(p.local(), q.local(), v))?;
                delta.copy_from_slice(red);
                for j in 0..k {
                    alpha[j] = zero;
                    if active[j] {
                        let (d, g) = (delta[j], gamma[j]);
                        if !(d.re.is_finite() && g.re.is_finite()) {
                            return Err(SolveError::NotFinite { iteration: it, column: j });
                        }
                        if d.re <= 0.0 {
                            return Err(SolveError::Breakdown {
                                iteration: it,
                                column: j,
                                what: "pᴴ·A·p ≤ 0: A is not positive definite",
                            });
                        }
                        alpha[j] = g / d;
                    }
                }
                let local_rr = update_xr(x.local_mut(), r.local_mut(), &alpha, &mut neg, p.local(), q.local());
                if m.is_some() {
                    work.precond(m, z.as_mut(), r.as_ref())?;
                }
                let zl = if m.is_some() { z.local() } else { r.local() };
                let red = work.reduce(2 * k, |v| {
                    match local_rr {
                        Some(rr) => v[k..].copy_from_slice(rr),
                        None => local_dots(r.local(), r.local(), &mut v[k..]),
                    }
                    if m.is_some() {
                        local_dots(r.local(), zl, &mut v[..k]);
                    } else {
                        v.copy_within(k.., 0);
                    }
                })?;
                new_gamma.copy_from_slice(&red[..k]);
                rr.copy_from_slice(&red[k..]);
                done = check(it, &rr, &mut active, &mut info, &mut residuals, &b_norms)?;
                for j in 0..k {
                    beta[j] = zero;
                    if active[j] {
                        if new_gamma[j].re < 0.0 {
                            return Err(SolveError::Breakdown {
                                iteration: it,
                                column: j,
                                what: "rᴴ·M·r < 0: M is not positive definite",
                            });
                        }
                        beta[j] = new_gamma[j] / gamma[j];
                    }
                    gamma[j] = new_gamma[j];
                }
                xpby(p.local_mut(), zl, &beta);
            }
            info.iterations = it;
        }
        CgVariant::Fused => {
            // u = M·r (in z), w = A·u (in q), s = A·p by recurrence.
            let mut s = zeros::<T>(layout, k);
            if m.is_some() {
                work.precond(m, z.as_mut(), r.as_ref())?;
            }
            let u = if m.is_some() { z.as_ref() } else { r.as_ref() };
            work.apply(a, Mode::Apply, q.as_mut(), u)?;
            let red = work.reduce(4 * k, |v| {
                local_dots(r.local(), r.local(), &mut v[2 * k..3 * k]);
                if m.is_some() {
                    local_dots(r.local(), u.local(), &mut v[..k]);
                } else {
                    v.copy_within(2 * k..3 * k, 0);
                }
                local_dots(u.local(), q.local(), &mut v[k..2 * k]);
                local_dots(b.local(), b.local(), &mut v[3 * k..]);
            })?;
            gamma.copy_from_slice(&red[..k]);
            delta.copy_from_slice(&red[k..2 * k]);
            rr.copy_from_slice(&red[2 * k..3 * k]);
            for j in 0..k {
                b_norms[j] = norm_of(red[3 * k + j]);
            }
            let mut done = check(0, &rr, &mut active, &mut info, &mut residuals, &b_norms)?;
            for j in 0..k {
                if active[j] {
                    if delta[j].re.is_nan() || delta[j].re <= 0.0 {
                        return Err(SolveError::Breakdown {
                            iteration: 0,
                            column: j,
                            what: "uᴴ·A·u ≤ 0: A is not positive definite",
                        });
                    }
                    alpha[j] = gamma[j] / delta[j];
                }
            }
            p.local_mut().copy_from(u.local());
            s.local_mut().copy_from(q.local());
            let mut it = 0;
            while !done && it < params.max_iters {
                it += 1;
                for j in 0..k {
                    if !active[j] {
                        alpha[j] = zero;
                    }
                }
                let local_rr = update_xr(x.local_mut(), r.local_mut(), &alpha, &mut neg, p.local(), s.local());
                if m.is_some() {
                    work.precond(m, z.as_mut(), r.as_ref())?;
                }
                let u = if m.is_some() { z.as_ref() } else { r.as_ref() };
                work.apply(a, Mode::Apply, q.as_mut(), u)?;
                let red = work.reduce(3 * k, |v| {
                    match local_rr {
                        Some(rr) => v[2 * k..].copy_from_slice(rr),
                        None => local_dots(r.local(), r.local(), &mut v[2 * k..]),
                    }
                    if m.is_some() {
                        local_dots(r.local(), u.local(), &mut v[..k]);
                    } else {
                        v.copy_within(2 * k.., 0);
                    }
                    local_dots(u.local(), q.local(), &mut v[k..2 * k]);
                })?;
                new_gamma.copy_from_slice(&red[..k]);
                new_delta.copy_from_slice(&red[k..2 * k]);
                rr.copy_from_slice(&red[2 * k..]);
                done = check(it, &rr, &mut active, &mut info, &mut residuals, &b_norms)?;
                for j in 0..k {
                    beta[j] = zero;
                    if active[j] {
                        let b = new_gamma[j] / gamma[j];
                        let denom = new_delta[j] - b * new_gamma[j] / alpha[j];
                        if !(denom.re.is_finite() && b.re.is_finite()) {
                            return Err(SolveError::NotFinite { iteration: it, column: j });
                        }
                        if denom.re <= 0.0 {
                            return Err(SolveError::Breakdown {
                                iteration: it,
                                column: j,
                                what: "pᴴ·A·p ≤ 0 (by recurrence): A is not positive definite",
                            });
                        }
                        beta[j] = b;
                        alpha[j] = new_gamma[j] / denom;
                    }
                    gamma[j] = new_gamma[j];
                }
                xpby(p.local_mut(), u.local(), &beta);
                xpby(s.local_mut(), q.local(), &beta);
            }
            info.iterations = it;
        }
        CgVariant::Block => {
            let kk = k * k;
            let mut block = BlockCoefficients::<T>::new(k);
            if m.is_some() {
                work.precond(m, z.as_mut(), r.as_ref())?;
            }
            let zl = if m.is_some() { z.local() } else { r.local() };
            p.local_mut().copy_from(zl);
            // G = Zᴴ·R, and ‖rⱼ‖², ‖bⱼ‖².
            let red = work.reduce(kk + 2 * k, |v| {
                block.local_gram(zl, r.local(), &mut v[..kk]);
                local_dots(r.local(), r.local(), &mut v[kk..kk + k]);
                local_dots(b.local(), b.local(), &mut v[kk + k..]);
            })?;
            block.set_g(&red[..kk]);
            rr.copy_from_slice(&red[kk..kk + k]);
            for j in 0..k {
                b_norms[j] = norm_of(red[kk + k + j]);
            }
            let mut done = check(0, &rr, &mut active, &mut info, &mut residuals, &b_norms)?;
            let mut it = 0;
            while !done && it < params.max_iters {
                it += 1;
                work.apply(a, Mode::Apply, q.as_mut(), p.as_ref())?;
                let red = work.reduce(kk, |v| block.local_gram(p.local(), q.local(), v))?;
                // α = (Pᴴ·A·P)⁻¹ · G; X += P·α, R −= Q·α.
                block.solve(red, it, "Pᴴ·A·P is not positive semi-definite: A is not positive definite")?;
                matmul(x.local_mut(), Accum::Add, p.local(), block.coef.as_ref(), one::<T>(), par);
                matmul(
                    r.local_mut(),
                    Accum::Add,
                    q.local(),
                    block.coef.as_ref(),
                    T::from_c64(c64::new(-1.0, 0.0)),
                    par,
                );
                if m.is_some() {
                    work.precond(m, z.as_mut(), r.as_ref())?;
                }
                let zl = if m.is_some() { z.local() } else { r.local() };
                let red = work.reduce(kk + k, |v| {
                    block.local_gram(zl, r.local(), &mut v[..kk]);
                    local_dots(r.local(), r.local(), &mut v[kk..]);
                })?;
                rr.copy_from_slice(&red[kk..]);
                done = check(it, &rr, &mut active, &mut info, &mut residuals, &b_norms)?;
                if done {
                    break;
                }
                // β = G⁻¹ · G_new; P = Z + P·β (Q, free until the next product, holds P·β).
                let g_new = &red[..kk];
                block.solve_g(g_new, it, "Rᴴ·M·R is not positive semi-definite: M is not positive definite")?;
                matmul(q.local_mut(), Accum::Replace, p.local(), block.coef.as_ref(), one::<T>(), par);
                zip!(p.local_mut(), zl, q.local()).for_each(|unzip!(p, z, q)| *p = add(z, q));
            }
            info.iterations = it;
        }
    }
    for j in 0..k {
        info.abs_residuals[j] = residuals[j];
        info.rel_residuals[j] = relative(residuals[j], b_norms[j]);
    }
    if active.iter().any(|&a| a) {
        return Err(SolveError::NoConvergence(info));
    }
    Ok(info)
}

/// The `k × k` algebra of the block CG, in `c64` (as the reductions), on
/// values every rank shares, so every rank computes the same coefficients;
/// its buffers are allocated once, before the iterations.
struct BlockCoefficients<T> {
    k: usize,
    /// This rank's part of a Gram matrix.
    gram: Mat<T>,
    /// `G = Zᴴ·R` of the last iteration, and of this one.
    g: Mat<c64>,
    g_new: Mat<c64>,
    /// The matrix factored in place.
    factor: Mat<c64>,
    /// The right-hand side and solution of the small solve, rows permuted.
    rhs: Mat<c64>,
    /// The last coefficients (α or β), as `T`.
    coef: Mat<T>,
    perm: Vec<usize>,
    perm_inv: Vec<usize>,
    scratch: MemBuffer,
}

impl<T: Scalar> BlockCoefficients<T> {
    fn new(k: usize) -> Self {
        BlockCoefficients {
            k,
            gram: Mat::zeros(k, k),
            g: Mat::zeros(k, k),
            g_new: Mat::zeros(k, k),
            factor: Mat::zeros(k, k),
            rhs: Mat::zeros(k, k),
            coef: Mat::zeros(k, k),
            perm: vec![0; k],
            perm_inv: vec![0; k],
            scratch: MemBuffer::new(piv_llt::cholesky_in_place_scratch::<usize, c64>(k, Par::Seq, Default::default())),
        }
    }

    /// `v = xᴴ·y` on this rank's rows (column-major `k × k`).
    fn local_gram(&mut self, x: MatRef<'_, T>, y: MatRef<'_, T>, v: &mut [c64]) {
        matmul(self.gram.as_mut(), Accum::Replace, x.adjoint(), y, one::<T>(), Par::Seq);
        for j in 0..self.k {
            for i in 0..self.k {
                v[i + j * self.k] = self.gram[(i, j)].to_c64();
            }
        }
    }

    /// `G` from a reduction.
    fn set_g(&mut self, g: &[c64]) {
        let k = self.k;
        self.g.copy_from(MatRef::from_column_major_slice(g, k, k));
    }

    /// `coef = D⁻¹ · G` for the reduced Gram matrix `d`.
    fn solve(&mut self, d: &[c64], iteration: usize, what: &'static str) -> Result<(), SolveError> {
        let k = self.k;
        self.factor.copy_from(MatRef::from_column_major_slice(d, k, k));
        let g = core::mem::replace(&mut self.g, Mat::new());
        let solved = self.solve_factor(g.as_ref(), iteration, what);
        self.g = g;
        solved
    }

    /// `coef = G⁻¹ · G_new`, then `G = G_new`.
    fn solve_g(&mut self, g_new: &[c64], iteration: usize, what: &'static str) -> Result<(), SolveError> {
        let k = self.k;
        self.factor.copy_from(&self.g);
        self.g_new.copy_from(MatRef::from_column_major_slice(g_new, k, k));
        let g_new = core::mem::replace(&mut self.g_new, Mat::new());
        let solved = self.solve_factor(g_new.as_ref(), iteration, what);
        self.g_new = core::mem::replace(&mut self.g, g_new);
        solved
    }

    /// `coef = F⁻¹ · b` for the Hermitian positive semi-definite `F` in
    /// `factor` (its lower triangle), by a pivoted Cholesky truncated at its
    /// numerical rank (the directions past it get 0), as faer's block CG.
    fn solve_factor(&mut self, b: MatRef<'_, c64>, iteration: usize, what: &'static str) -> Result<(), SolveError> {
        let k = self.k;
        if !(0..k).all(|j| (0..k).all(|i| self.factor[(i, j)].re.is_finite() && self.factor[(i, j)].im.is_finite())) {
            return Err(SolveError::NotFinite { iteration, column: 0 });
        }
        // A positive semi-definite matrix has no negative diagonal entry (the
        // pivoted Cholesky would only stop at rank 0 on one).
        if let Some(column) = (0..k).find(|&j| self.factor[(j, j)].re < 0.0) {
            return Err(SolveError::Breakdown { iteration, column, what });
        }
        let factored = piv_llt::cholesky_in_place::<usize, c64>(
            self.factor.as_mut(),
            &mut self.perm,
            &mut self.perm_inv,
            Par::Seq,
            MemStack::new(&mut self.scratch),
            Default::default(),
        );
        let Ok((info, perm)) = factored else {
            return Err(SolveError::Breakdown { iteration, column: 0, what });
        };
        // The right-hand side, Hermitian from its lower triangle, rows permuted.
        let (fwd, _) = perm.arrays();
        for j in 0..k {
            for (i, &r) in fwd.iter().enumerate() {
                let c = j;
                self.rhs[(i, j)] = if r >= c { b[(r, c)] } else { b[(c, r)].conj() };
            }
        }
        let rank = info.rank;
        let l = self.factor.as_ref().get(..rank, ..rank);
        let mut top: MatMut<'_, c64> = self.rhs.as_mut().get_mut(..rank, ..);
        solve_lower_triangular_in_place(l, top.as_mut(), Par::Seq);
        solve_upper_triangular_in_place(l.adjoint(), top, Par::Seq);
        self.rhs.as_mut().get_mut(rank.., ..).fill(c64::new(0.0, 0.0));
        for j in 0..k {
            for (i, &r) in fwd.iter().enumerate() {
                self.coef[(r, j)] = T::from_c64(self.rhs[(i, j)]);
            }
        }
        if !(0..k).all(|j| (0..k).all(|i| self.rhs[(i, j)].re.is_finite() && self.rhs[(i, j)].im.is_finite())) {
            return Err(SolveError::NotFinite { iteration, column: 0 });
        }
        Ok(())
    }
}
