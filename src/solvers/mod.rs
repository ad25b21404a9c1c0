//! Krylov solvers on distributed operators and vectors (feature `mpi`):
//! every rank takes part, every vector is a [`DistMat`] (no rank holds a
//! whole one), and every decision is taken from values all ranks share, so
//! outcomes, iteration counts and residuals are the same on every rank.
//!
//! | solver | for | reductions per iteration |
//! |---|---|---|
//! | [`cg`] with [`CgVariant::Standard`] | Hermitian positive definite `A`, `k` right-hand sides at once | two allreduces, each for all `k` columns |
//! | [`cg`] with [`CgVariant::Fused`] | the same (Chronopoulos–Gear) | one |
//! | [`gmres`] | any square `A` (restarted GMRES(m), right preconditioning) | one (classical Gram–Schmidt), two when it reorthogonalises |
//! | [`lsqr`] | rectangular `A`, least squares (Paige–Saunders) | two |
//!
//! A product of the operator also agrees once with the other ranks on its
//! operands ([`DistOp`]); the preconditioner is any [`DistOp`] (`M ≈ A⁻¹`):
//! [`jacobi`] for the diagonal of an [`MpiLop`], a [`DistLocal`] around a
//! local solve of each rank's diagonal block ([`MpiLop::diagonal_block`])
//! for block-Jacobi, or the user's own.
//!
//! With `k` right-hand sides, [`cg`] runs `k` CG iterations side by side:
//! each column keeps its own coefficients (a column that has converged stops
//! moving), and each iteration reads the matrix once for all of them (one
//! product with `k` columns) and reduces all their dot products together: `k`
//! systems cost far less than `k` solves. [`gmres`] and [`lsqr`] solve the
//! columns one after the other.
//!
//! Stopping test, as faer's solvers: column `j` has converged when
//! `‖rⱼ‖ ≤ max(abs_tolerance, rel_tolerance · ‖bⱼ‖)` with `r = b − A·x` the
//! residual the recurrence carries (unpreconditioned; for [`lsqr`], the
//! residual of the normal equations `‖Aᴴr‖` against `‖A‖·‖r‖`, or `‖r‖`
//! against `‖b‖` for a consistent system).
//!
//! # Rounding
//! The fused CG computes `A·p` by a recurrence (`s = w + β s` with `w = A·u`)
//! instead of a product, and both inner products from the same vectors, so
//! that one allreduce serves an iteration; in exact arithmetic it is CG, in
//! floating point the recurred residual drifts from the true one by a few
//! more ulps per iteration: its attainable accuracy is somewhat worse (a
//! relative residual of `1e-12` instead of `1e-14` on ill-conditioned
//! systems), and it may need a few more iterations. Prefer the standard
//! variant for tight tolerances, the fused one when the allreduce's latency
//! dominates (many ranks).
//!
//! [`MpiLop`]: crate::mpi::MpiLop
//! [`MpiLop::diagonal_block`]: crate::mpi::MpiLop::diagonal_block
//! [`DistLocal`]: crate::mpi::DistLocal

mod cg;
mod gmres;
mod lsqr;

use core::fmt;

use faer::c64;
use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::reborrow::ReborrowMut;
use faer::traits::math_utils::{add, conj, mul, zero};
use faer::{MatMut, MatRef, Par, unzip, zip};

pub use cg::{CgVariant, cg};
pub use gmres::gmres;
pub use lsqr::lsqr;

use crate::Scalar;
use crate::mpi::{DistDiag, DistLocal, DistMat, DistMatMut, DistMatRef, DistOp, Layout, MpiLop};
use crate::ops::Mode;
use crate::parallel::Error;

/// Where the iteration starts.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum InitialGuess {
    /// From `x = 0` (what `x` holds is overwritten).
    #[default]
    Zero,
    /// From the `x` given.
    Given,
}

/// The parameters of a solve.
#[derive(Copy, Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Params {
    /// Stop when `‖r‖ ≤ abs_tolerance` (or the relative test holds). `0` by default.
    pub abs_tolerance: f64,
    /// Stop when `‖r‖ ≤ rel_tolerance · ‖b‖`. `1e-8` by default.
    pub rel_tolerance: f64,
    /// The most iterations (for GMRES, over all restarts). `1000` by default.
    pub max_iters: usize,
    /// Where to start.
    pub initial_guess: InitialGuess,
}

impl Default for Params {
    fn default() -> Self {
        Params { abs_tolerance: 0.0, rel_tolerance: 1e-8, max_iters: 1000, initial_guess: InitialGuess::Zero }
    }
}

impl Params {
    /// Sets [`Params::rel_tolerance`].
    pub fn rel_tolerance(mut self, tol: f64) -> Self {
        self.rel_tolerance = tol;
        self
    }

    /// Sets [`Params::abs_tolerance`].
    pub fn abs_tolerance(mut self, tol: f64) -> Self {
        self.abs_tolerance = tol;
        self
    }

    /// Sets [`Params::max_iters`].
    pub fn max_iters(mut self, n: usize) -> Self {
        self.max_iters = n;
        self
    }

    /// Sets [`Params::initial_guess`].
    pub fn initial_guess(mut self, guess: InitialGuess) -> Self {
        self.initial_guess = guess;
        self
    }

    /// The settings every rank must share.
    fn settings(&self) -> [(&'static str, u64); 4] {
        [
            ("abs_tolerance", self.abs_tolerance.to_bits()),
            ("rel_tolerance", self.rel_tolerance.to_bits()),
            ("max_iters", self.max_iters as u64),
            ("initial_guess (0 zero, 1 given)", u64::from(self.initial_guess == InitialGuess::Given)),
        ]
    }
}

/// How a solve ended: the same on every rank.
#[derive(Clone, Debug, PartialEq)]
pub struct SolveInfo {
    /// The iterations (the most over the columns; for GMRES and LSQR, the
    /// sum over the columns, each solved in turn).
    pub iterations: usize,
    /// Each column's iterations.
    pub column_iterations: Vec<usize>,
    /// Each column's final residual norm `‖rⱼ‖` (see the module docs).
    pub abs_residuals: Vec<f64>,
    /// `‖rⱼ‖ / ‖bⱼ‖` (`‖rⱼ‖` when `bⱼ = 0`).
    pub rel_residuals: Vec<f64>,
}

/// Why a solve did not give a solution: the same on every rank.
#[derive(Debug)]
#[non_exhaustive]
pub enum SolveError {
    /// A product, a reduction or the preconditioner failed ([`Error`]).
    Mpi(Error),
    /// A coefficient the method divides by vanished or had the wrong sign:
    /// for CG, `pᴴ·A·p ≤ 0` (the operator or the preconditioner is not
    /// Hermitian positive definite).
    Breakdown {
        /// The iteration.
        iteration: usize,
        /// The column.
        column: usize,
        /// What broke down.
        what: &'static str,
    },
    /// A residual or coefficient became infinite or NaN.
    NotFinite {
        /// The iteration.
        iteration: usize,
        /// The column.
        column: usize,
    },
    /// The tolerance was not reached within `max_iters`; the info of the
    /// last iterate (`x` holds it).
    NoConvergence(SolveInfo),
}

impl fmt::Display for SolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SolveError::Mpi(e) => write!(f, "{e}"),
            SolveError::Breakdown { iteration, column, what } => {
                write!(f, "breakdown at iteration {iteration}, column {column}: {what}")
            }
            SolveError::NotFinite { iteration, column } => {
                write!(f, "a residual or coefficient is not finite at iteration {iteration}, column {column}")
            }
            SolveError::NoConvergence(info) => write!(
                f,
                "no convergence within {} iterations (relative residuals {:?})",
                info.iterations, info.rel_residuals
            ),
        }
    }
}

impl std::error::Error for SolveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SolveError::Mpi(e) => Some(e),
            _ => None,
        }
    }
}

impl From<Error> for SolveError {
    fn from(e: Error) -> Self {
        SolveError::Mpi(e)
    }
}

/// One iteration's state, given to the callback on rank 0.
#[derive(Debug)]
pub struct Progress<'a> {
    /// The iteration (from 1).
    pub iteration: usize,
    /// The column being solved (GMRES, LSQR) or `None` for all (CG).
    pub column: Option<usize>,
    /// The residual norms, one per column (`‖r‖` of that column for GMRES, LSQR).
    pub residuals: &'a [f64],
}

/// The callback of a solve: called on rank 0 after each iteration.
pub type Callback<'a> = Option<&'a mut dyn FnMut(&Progress<'_>)>;

/// The Jacobi preconditioner of a square `MpiLop`: the inverse of its
/// diagonal ([`MpiLop::diagonal`]), distributed as its rows.
///
/// # Errors
/// [`Error::Mpi`] if the matrix is not square; [`Error::Rank`] on every
/// rank if a diagonal entry is zero (naming the lowest such row).
pub fn jacobi<T: Scalar>(a: &MpiLop<T>) -> Result<DistDiag<T>, Error> {
    let mut d = a.diagonal()?;
    let start = d.layout().local_range().start;
    let mut zero_at = None;
    for (i, x) in d.local_mut().col_mut(0).iter_mut().enumerate() {
        let z = x.to_c64();
        if z.re == 0.0 && z.im == 0.0 {
            zero_at = zero_at.or(Some(start + i));
        } else {
            *x = T::from_c64(c64::new(1.0, 0.0) / z);
        }
    }
    // The lowest failing rank's message names the lowest zero row.
    let fault = zero_at.map(|row| crate::mpi::fault(format!("jacobi: the diagonal entry of row {row} is zero")));
    crate::mpi::agree_on(d.layout(), &[], fault)?;
    Ok(DistDiag::new(d))
}

/// A faer factorization (`Lu`, `Llt`, … of this rank's block) as the
/// operator `B⁻¹`: its products solve with the factors (faer's solves take
/// their own scratch). For [`DistLocal`].
#[derive(Debug)]
pub struct LocalSolve<S> {
    n: usize,
    factors: S,
}

impl<S> LocalSolve<S> {
    /// The inverse of the `n × n` matrix whose factorization is `factors`.
    pub fn new(n: usize, factors: S) -> Self {
        LocalSolve { n, factors }
    }
}

impl<T: Scalar, S: faer::linalg::solvers::SolveCore<T> + Sync + fmt::Debug> crate::ops::ModeOp<T> for LocalSolve<S> {
    const NAME: &'static str = "LocalSolve";
    fn shape(&self) -> (usize, usize) {
        (self.n, self.n)
    }
    fn scratch(&self, _: Mode, _: usize, _: Par) -> StackReq {
        StackReq::EMPTY
    }
    fn run(&self, mode: Mode, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>, _: Par, _: &mut MemStack) {
        use faer::Conj;
        out.copy_from(rhs);
        let conj = if mode.is_conj() { Conj::Yes } else { Conj::No };
        if mode.is_transposed() {
            self.factors.solve_transpose_in_place_with_conj(conj, out);
        } else {
            self.factors.solve_in_place_with_conj(conj, out);
        }
    }
}

crate::ops::impl_bilinop!([S: faer::linalg::solvers::SolveCore<T> + Sync + fmt::Debug] LocalSolve<S> where T: Scalar);

/// The block-Jacobi preconditioner of a square `MpiLop`: on each rank, the
/// sparse LU factors (faer's `sp_lu`) of its diagonal block
/// ([`MpiLop::diagonal_block`]), applied to its rows.
///
/// # Errors
/// [`Error::Mpi`] if the matrix is not square; [`Error::Rank`] on every rank
/// if a rank's block cannot be factored (singular).
pub fn block_jacobi<T: Scalar>(
    a: &MpiLop<T>,
) -> Result<DistLocal<LocalSolve<faer::sparse::linalg::solvers::Lu<usize, T>>>, Error> {
    let block = a.diagonal_block()?;
    let rows = a.row_layout();
    let lu = block.sp_lu();
    let fault = lu.as_ref().err().map(|e| {
        crate::mpi::fault(format!("block_jacobi: the diagonal block of rank {} cannot be factored: {e:?}", rows.rank()))
    });
    crate::mpi::agree_on(rows, &[], fault)?;
    let lu = lu.expect("agreed");
    Ok(DistLocal::new(rows, rows, LocalSolve::new(rows.local_len(), lu)))
}

/// The workspace every solver shares: the product's scratch, the buffers of
/// the fused reductions.
struct Work<'a, T> {
    /// The layout whose communicator the reductions run on (the operands').
    layout: &'a Layout,
    send: Vec<c64>,
    recv: Vec<c64>,
    scratch: MemBuffer,
    par: Par,
    _t: core::marker::PhantomData<T>,
}

impl<'a, T: Scalar> Work<'a, T> {
    /// The workspace of products of `ops` in `modes` with `k` columns, after
    /// the agreement that starts the solve: `settings` (the solver's own and
    /// `params`') and the operands' layouts (`x` against `a`'s columns and
    /// `b` against its rows in `mode`).
    #[allow(clippy::too_many_arguments)]
    fn start<A: DistOp<T> + ?Sized>(
        name: &'static str,
        a: &A,
        m: Option<&dyn DistOp<T>>,
        x: &DistMatMut<'_, T>,
        b: &DistMatRef<'a, T>,
        params: &Params,
        extra: &[(&'static str, u64)],
        par: Par,
    ) -> Result<Self, Error> {
        let k = b.ncols();
        let fault = a
            .row_layout()
            .mismatch(b.layout(), "the right-hand side")
            .or_else(|| a.col_layout().mismatch(x.layout(), "the solution"))
            .or_else(|| {
                (x.ncols() != k).then(|| {
                    crate::mpi::fault(format!(
                        "{name}: the solution has {} columns, the right-hand side {k}",
                        x.ncols()
                    ))
                })
            })
            .or_else(|| {
                m.and_then(|m| {
                    m.row_layout()
                        .mismatch(a.col_layout(), "the preconditioner's rows")
                        .or_else(|| m.col_layout().mismatch(a.row_layout(), "the preconditioner's columns"))
                })
            });
        let mut settings = params.settings().to_vec();
        settings.push(("the number of right-hand sides", k as u64));
        settings.push(("a preconditioner (0 none, 1 given)", u64::from(m.is_some())));
        settings.extend_from_slice(extra);
        let layout = b.layout();
        crate::mpi::agree_on(layout, &settings, fault)?;
        let req = StackReq::any_of(&[
            a.dist_scratch(Mode::Apply, k, par),
            a.dist_scratch(Mode::Adjoint, k, par),
            m.map_or(StackReq::EMPTY, |m| m.dist_scratch(Mode::Apply, k, par)),
        ]);
        Ok(Work {
            layout,
            send: Vec::new(),
            recv: Vec::new(),
            scratch: MemBuffer::new(req),
            par,
            _t: core::marker::PhantomData,
        })
    }

    /// `out = op_mode · rhs`.
    fn apply<A: DistOp<T> + ?Sized>(
        &mut self,
        op: &A,
        mode: Mode,
        out: DistMatMut<'_, T>,
        rhs: DistMatRef<'_, T>,
    ) -> Result<(), Error> {
        op.dist_apply(mode, out, rhs, self.par, MemStack::new(&mut self.scratch))
    }

    /// `out = M · rhs` (a copy without a preconditioner).
    fn precond(
        &mut self,
        m: Option<&dyn DistOp<T>>,
        mut out: DistMatMut<'_, T>,
        rhs: DistMatRef<'_, T>,
    ) -> Result<(), Error> {
        match m {
            Some(m) => self.apply(m, Mode::Apply, out, rhs),
            None => {
                out.local_mut().copy_from(rhs.local());
                Ok(())
            }
        }
    }

    /// Sums over the ranks the `n` values `fill` writes locally, in one
    /// allreduce.
    fn reduce(&mut self, n: usize, fill: impl FnOnce(&mut [c64])) -> Result<&[c64], Error> {
        self.send.clear();
        self.send.resize(n, c64::new(0.0, 0.0));
        self.recv.clear();
        self.recv.resize(n, c64::new(0.0, 0.0));
        fill(&mut self.send);
        self.layout.sum_unagreed(&self.send, &mut self.recv)?;
        Ok(&self.recv)
    }
}

/// `m`'s entries as one row-major slice, when they are contiguous so (the
/// local rows of a `DistMat`).
fn row_major<'a, T>(m: MatRef<'a, T>) -> Option<&'a [T]> {
    let (n, k) = (m.nrows(), m.ncols());
    if n == 0 || k == 0 {
        return Some(&[]);
    }
    (m.col_stride() == 1 && (n == 1 || m.row_stride() == k as isize)).then(|| {
        // SAFETY: the n·k entries of `m` are contiguous from `as_ptr` (checked
        // above), and `m` borrows them for 'a.
        unsafe { core::slice::from_raw_parts(m.as_ptr(), n * k) }
    })
}

/// The same, mutable.
fn row_major_mut<'a, T>(m: MatMut<'a, T>) -> Result<&'a mut [T], MatMut<'a, T>> {
    let (n, k) = (m.nrows(), m.ncols());
    if n == 0 || k == 0 {
        return Ok(&mut []);
    }
    if m.col_stride() == 1 && (n == 1 || m.row_stride() == k as isize) {
        // SAFETY: as `row_major`, and `m` is borrowed mutably for 'a.
        Ok(unsafe { core::slice::from_raw_parts_mut(m.as_ptr_mut(), n * k) })
    } else {
        Err(m)
    }
}

/// `out[j] = xⱼᴴ · yⱼ` for each column, on this rank's rows: faer's SIMD
/// dot for one column, one pass over the rows for several.
fn local_dots<T: Scalar>(x: MatRef<'_, T>, y: MatRef<'_, T>, out: &mut [c64]) {
    let k = out.len();
    if let (true, Some(xs), Some(ys)) = (k > 1, row_major(x), row_major(y)) {
        out.fill(c64::new(0.0, 0.0));
        // Partial sums over blocks of rows, in T, added up in c64: panels of
        // eight columns with their sums in registers (measured: 1.4× faster
        // at k = 16 than sums over a runtime width, which stay in memory),
        // then the last columns.
        const BLOCK: usize = 256;
        for (xb, yb) in xs.chunks(BLOCK * k).zip(ys.chunks(BLOCK * k)) {
            let rows = || xb.chunks_exact(k).zip(yb.chunks_exact(k));
            let mut j0 = 0;
            while j0 + 8 <= k {
                let mut acc = [zero::<T>(); 8];
                for (xr, yr) in rows() {
                    let (xr, yr): (&[T; 8], &[T; 8]) =
                        (xr[j0..j0 + 8].try_into().unwrap(), yr[j0..j0 + 8].try_into().unwrap());
                    for j in 0..8 {
                        acc[j] = add(&acc[j], &mul(&conj(&xr[j]), &yr[j]));
                    }
                }
                for j in 0..8 {
                    out[j0 + j] += acc[j].to_c64();
                }
                j0 += 8;
            }
            if j0 == k {
                continue;
            }
            let mut acc = [zero::<T>(); 8];
            for (xr, yr) in rows() {
                for ((a, xv), yv) in acc.iter_mut().zip(&xr[j0..]).zip(&yr[j0..]) {
                    *a = add(a, &mul(&conj(xv), yv));
                }
            }
            for (o, a) in out[j0..].iter_mut().zip(&acc) {
                *o += a.to_c64();
            }
        }
        return;
    }
    for (j, o) in out.iter_mut().enumerate() {
        *o = (x.col(j).adjoint() * y.col(j)).to_c64();
    }
}

/// `y_j = b[j] · y_j + a[j] · x_j` for each column, in one pass.
fn update<T: Scalar>(y: MatMut<'_, T>, a: &[c64], x: MatRef<'_, T>, b: &[c64]) {
    let k = a.len();
    let (mut av, mut bv) = ([zero::<T>(); 64], [zero::<T>(); 64]);
    match (k > 1 && k <= 64, row_major(x), row_major_mut(y)) {
        (true, Some(xs), Ok(ys)) => {
            for j in 0..k {
                (av[j], bv[j]) = (T::from_c64(a[j]), T::from_c64(b[j]));
            }
            for (yr, xr) in ys.chunks_exact_mut(k).zip(xs.chunks_exact(k)) {
                for j in 0..k {
                    yr[j] = add(&mul(&bv[j], &yr[j]), &mul(&av[j], &xr[j]));
                }
            }
        }
        (_, _, Ok(ys)) => update_cols(MatMut::from_row_major_slice_mut(ys, x.nrows(), k), a, x, b),
        (_, _, Err(y)) => update_cols(y, a, x, b),
    }
}

fn update_cols<T: Scalar>(mut y: MatMut<'_, T>, a: &[c64], x: MatRef<'_, T>, b: &[c64]) {
    for j in 0..a.len() {
        let (a, b) = (T::from_c64(a[j]), T::from_c64(b[j]));
        zip!(y.rb_mut().col_mut(j), x.col(j)).for_each(|unzip!(y, x)| *y = add(&mul(&b, y), &mul(&a, x)));
    }
}

/// CG's updates `x += α·p` and `r −= α·q`, each column with its own `α`:
/// one pass that also sums the local `‖r‖²` of each column into `work`
/// (returned) when the four are row-major (contiguous, as a `DistMat`'s
/// rows are) and `k ≤ 64`, else two axpys (`work` holds `−α`; `None`). The
/// pass reads `r` once where two axpys and the dots read it three times.
fn update_xr<'w, T: Scalar>(
    mut x: MatMut<'_, T>,
    mut r: MatMut<'_, T>,
    alpha: &[c64],
    work: &'w mut [c64],
    p: MatRef<'_, T>,
    q: MatRef<'_, T>,
) -> Option<&'w [c64]> {
    if cg_update(x.rb_mut(), r.rb_mut(), alpha, work, p, q).is_some() {
        return Some(work);
    }
    axpy(x, alpha, p);
    work.iter_mut().zip(alpha).for_each(|(n, a)| *n = -a);
    axpy(r, work, q);
    None
}

/// The one pass of [`update_xr`] (`None`: nothing done). The sums: partial
/// sums in `T` over blocks of rows, added up in c64, as [`local_dots`] sums;
/// eight chains of them for one column.
fn cg_update<T: Scalar>(
    x: MatMut<'_, T>,
    r: MatMut<'_, T>,
    alpha: &[c64],
    out: &mut [c64],
    p: MatRef<'_, T>,
    q: MatRef<'_, T>,
) -> Option<()> {
    let k = alpha.len();
    if k > 64 || k == 0 {
        return None;
    }
    let (xs, rs) = (row_major_mut(x).ok()?, row_major_mut(r).ok()?);
    let (ps, qs) = (row_major(p)?, row_major(q)?);
    if [xs.len(), rs.len(), qs.len()] != [ps.len(); 3] || ps.len() != p.nrows() * k {
        return None;
    }
    let (mut a, mut na) = ([zero::<T>(); 64], [zero::<T>(); 64]);
    for j in 0..k {
        (a[j], na[j]) = (T::from_c64(alpha[j]), T::from_c64(-alpha[j]));
    }
    let step = |x: &mut T, r: &mut T, p: &T, q: &T, acc: &mut T, j: usize| {
        *x = add(x, &mul(&a[j], p));
        *r = add(r, &mul(&na[j], q));
        *acc = add(acc, &mul(&conj(r), r));
    };
    out.fill(c64::new(0.0, 0.0));
    // Rows per block: about 1024 elements of each operand.
    let block = (1024 / k).max(1) * k;
    let mut acc = [zero::<T>(); 64];
    for (((xb, rb), pb), qb) in
        xs.chunks_mut(block).zip(rs.chunks_mut(block)).zip(ps.chunks(block)).zip(qs.chunks(block))
    {
        acc.fill(zero());
        if k == 1 {
            // Eight independent chains, for one column.
            let mut x8 = xb.chunks_exact_mut(8);
            let mut r8 = rb.chunks_exact_mut(8);
            let (mut p8, mut q8) = (pb.chunks_exact(8), qb.chunks_exact(8));
            for (((x, r), p), q) in (&mut x8).zip(&mut r8).zip(&mut p8).zip(&mut q8) {
                for l in 0..8 {
                    step(&mut x[l], &mut r[l], &p[l], &q[l], &mut acc[l], 0);
                }
            }
            let rest = x8.into_remainder().iter_mut().zip(r8.into_remainder()).zip(p8.remainder()).zip(q8.remainder());
            for (((x, r), p), q) in rest {
                step(x, r, p, q, &mut acc[0], 0);
            }
            out[0] += acc.iter().fold(zero::<T>(), |s, v| add(&s, v)).to_c64();
        } else {
            let rows =
                xb.chunks_exact_mut(k).zip(rb.chunks_exact_mut(k)).zip(pb.chunks_exact(k)).zip(qb.chunks_exact(k));
            for (((x, r), p), q) in rows {
                for j in 0..k {
                    step(&mut x[j], &mut r[j], &p[j], &q[j], &mut acc[j], j);
                }
            }
            for (o, v) in out.iter_mut().zip(&acc[..k]) {
                *o += v.to_c64();
            }
        }
    }
    Some(())
}

/// `y_j += a[j] · x_j` for each column.
fn axpy<T: Scalar>(y: MatMut<'_, T>, a: &[c64], x: MatRef<'_, T>) {
    const ONES: [c64; 64] = [c64::new(1.0, 0.0); 64];
    if a.len() <= 64 {
        update(y, a, x, &ONES[..a.len()]);
    } else {
        update_cols(y, a, x, &vec![c64::new(1.0, 0.0); a.len()]);
    }
}

/// `y_j = x_j + b[j] · y_j` for each column.
fn xpby<T: Scalar>(y: MatMut<'_, T>, x: MatRef<'_, T>, b: &[c64]) {
    const ONES: [c64; 64] = [c64::new(1.0, 0.0); 64];
    if b.len() <= 64 {
        update(y, &ONES[..b.len()], x, b);
    } else {
        update_cols(y, &vec![c64::new(1.0, 0.0); b.len()], x, b);
    }
}

/// A new zero multi-vector like `like`'s layout.
fn zeros<T: Scalar>(layout: &Layout, k: usize) -> DistMat<T> {
    DistMat::zeros(layout, k)
}

/// `√re(z)` for a sum of squares `z`: NaN when it is not finite (a NaN is
/// never taken for 0), 0 for a rounding below 0.
fn norm_of(z: c64) -> f64 {
    if z.re.is_finite() { z.re.max(0.0).sqrt() } else { f64::NAN }
}

/// Whether `‖r‖` (`norm`) passes the test against `‖b‖`.
fn converged(norm: f64, b_norm: f64, params: &Params) -> bool {
    norm <= params.abs_tolerance.max(params.rel_tolerance * b_norm)
}

/// `‖r‖ / ‖b‖`, or `‖r‖` when `b = 0`.
fn relative(norm: f64, b_norm: f64) -> f64 {
    if b_norm > 0.0 { norm / b_norm } else { norm }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row-major column dots (panels of eight, then the rest) against
    /// faer's dot of each column, real and complex, every panel shape.
    #[test]
    fn local_dots_are_the_column_dots() {
        fn check<T: Scalar>() {
            for (n, k) in [(300, 2), (300, 8), (601, 9), (5, 17), (0, 3)] {
                let x = crate::random::mat::<T>(k, n, 1);
                let y = crate::random::mat::<T>(k, n, 2);
                let (x, y) = (x.transpose(), y.transpose());
                // Row-major copies, as a DistMat's rows.
                let (xs, ys): (Vec<T>, Vec<T>) =
                    ((0..n * k).map(|p| x[(p / k, p % k)]).collect(), (0..n * k).map(|p| y[(p / k, p % k)]).collect());
                let mut got = vec![c64::new(0.0, 0.0); k];
                local_dots(MatRef::from_row_major_slice(&xs, n, k), MatRef::from_row_major_slice(&ys, n, k), &mut got);
                for (j, got) in got.iter().enumerate() {
                    let want = (x.col(j).adjoint() * y.col(j)).to_c64();
                    let err = (got - want).norm();
                    let tol = if size_of::<T::Real>() == 4 { 1e-4 } else { 1e-12 };
                    assert!(err <= tol * (1.0 + want.norm()), "{n}×{k}, column {j}: {got:?} against {want:?}");
                }
            }
        }
        check::<f32>();
        check::<f64>();
        check::<faer::c32>();
        check::<c64>();
    }
}
