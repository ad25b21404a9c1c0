//! Operators from user closures: the `LazyLinOp(shape, matmat, rmatmat)`
//! pattern of Python lazylinop, and its matvec variant.

use core::fmt;
use core::marker::PhantomData;

use faer::dyn_stack::{MemStack, StackReq};
use faer::linalg::{temp_mat_scratch, temp_mat_uninit};
use faer::mat::AsMatMut;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::traits::ComplexField;
use faer::traits::math_utils::{conj, zero};
use faer::{ColMut, ColRef, MatMut, MatRef, Par, unzip, zip};

use crate::ops::{Mode, ModeOp, impl_bilinop};

/// A matmat closure, `f(out, x)` writing a product into `out`: any
/// `Fn(MatMut<'_, T>, MatRef<'_, T>) + Sync`.
pub trait MatMatFn<T>: Fn(MatMut<'_, T>, MatRef<'_, T>) + Sync {}

impl<T, F: Fn(MatMut<'_, T>, MatRef<'_, T>) + Sync> MatMatFn<T> for F {}

/// An operator defined by two closures: `matmat(out, X)` writes `L·X` into
/// `out`, `rmatmat(out, Y)` writes `Lᴴ·Y` into `out`.
///
/// The conjugate and transpose products come from these two:
/// `conj(L)·X = conj(L·conj(X))` and `Lᵀ·Y = conj(Lᴴ·conj(Y))`, with
/// `conj(X)` in scratch (real types skip the conjugations).
///
/// The closures get views whose shapes are already checked against
/// `nrows × ncols`, and an `out` filled with zeros: they may write it or add
/// into it (`out[(i, j)] += …`, faer's `Accum::Add`, a sparse scatter), and
/// entries they leave alone stay zero. They run from
/// whatever thread calls the product, several at once if the operator is
/// shared (`Sync`), and under the parallel backends, from several workers at
/// once.
///
/// Build it with [`from_matmat`] or [`from_matvec`].
pub struct ClosureOp<T, F, G> {
    nrows: usize,
    ncols: usize,
    matmat: F,
    rmatmat: G,
    _scalar: PhantomData<fn(T) -> T>,
}

impl<T, F, G> fmt::Debug for ClosureOp<T, F, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClosureOp").field("nrows", &self.nrows).field("ncols", &self.ncols).finish_non_exhaustive()
    }
}

impl<T: Clone, F: Clone, G: Clone> Clone for ClosureOp<T, F, G> {
    fn clone(&self) -> Self {
        Self {
            nrows: self.nrows,
            ncols: self.ncols,
            matmat: self.matmat.clone(),
            rmatmat: self.rmatmat.clone(),
            _scalar: PhantomData,
        }
    }
}

/// An `nrows × ncols` operator from a matmat closure (`out = L·X`) and an
/// rmatmat closure (`out = Lᴴ·Y`): see [`ClosureOp`]. `out` arrives filled
/// with zeros, so a closure may also add into it (`out += L·X`).
///
/// # Examples
/// A cumulative sum, whose adjoint is the reversed cumulative sum:
/// ```
/// use lazylinop::prelude::*;
/// use faer::{Mat, MatMut, MatRef};
///
/// let n = 4;
/// let cumsum = from_matmat(
///     n,
///     n,
///     |mut out: MatMut<'_, f64>, x: MatRef<'_, f64>| {
///         for j in 0..x.ncols() {
///             let mut acc = 0.0;
///             for i in 0..x.nrows() {
///                 acc += x[(i, j)];
///                 out[(i, j)] = acc;
///             }
///         }
///     },
///     |mut out: MatMut<'_, f64>, y: MatRef<'_, f64>| {
///         for j in 0..y.ncols() {
///             let mut acc = 0.0;
///             for i in (0..y.nrows()).rev() {
///                 acc += y[(i, j)];
///                 out[(i, j)] = acc;
///             }
///         }
///     },
/// );
/// let lower = Mat::from_fn(n, n, |i, j| if j <= i { 1.0 } else { 0.0 });
/// assert_eq!(cumsum.to_dense(), lower);
/// assert_eq!(cumsum.adjoint().to_dense(), lower.transpose());
/// ```
pub fn from_matmat<T, F, G>(nrows: usize, ncols: usize, matmat: F, rmatmat: G) -> ClosureOp<T, F, G>
where
    T: ComplexField,
    F: Fn(MatMut<'_, T>, MatRef<'_, T>) + Sync,
    G: Fn(MatMut<'_, T>, MatRef<'_, T>) + Sync,
{
    ClosureOp { nrows, ncols, matmat, rmatmat, _scalar: PhantomData }
}

/// An `nrows × ncols` operator from a matvec closure (`out = L·x`) and an
/// rmatvec closure (`out = Lᴴ·y`), applied one column at a time: see
/// [`ClosureOp`]. `out` arrives filled with zeros, so a closure may also add
/// into it (`out += L·x`).
///
/// # Examples
/// ```
/// use lazylinop::prelude::*;
/// use faer::{ColMut, ColRef, mat};
///
/// // [1 2] · x, one column at a time.
/// let row = from_matvec(
///     1,
///     2,
///     |mut out: ColMut<'_, f64>, x: ColRef<'_, f64>| out[0] = x[0] + 2.0 * x[1],
///     |mut out: ColMut<'_, f64>, y: ColRef<'_, f64>| {
///         out[0] = y[0];
///         out[1] = 2.0 * y[0];
///     },
/// );
/// assert_eq!(row.to_dense(), mat![[1.0, 2.0]]);
/// ```
pub fn from_matvec<T, F, G>(
    nrows: usize,
    ncols: usize,
    matvec: F,
    rmatvec: G,
) -> ClosureOp<T, impl MatMatFn<T>, impl MatMatFn<T>>
where
    T: ComplexField,
    F: Fn(ColMut<'_, T>, ColRef<'_, T>) + Sync,
    G: Fn(ColMut<'_, T>, ColRef<'_, T>) + Sync,
{
    from_matmat(nrows, ncols, by_columns(matvec), by_columns(rmatvec))
}

fn by_columns<T: ComplexField>(matvec: impl Fn(ColMut<'_, T>, ColRef<'_, T>) + Sync) -> impl MatMatFn<T> {
    move |mut out: MatMut<'_, T>, x: MatRef<'_, T>| {
        for j in 0..x.ncols() {
            matvec(out.rb_mut().col_mut(j), x.col(j));
        }
    }
}

impl<T: ComplexField, F: MatMatFn<T>, G: MatMatFn<T>> ModeOp<T> for ClosureOp<T, F, G> {
    const NAME: &'static str = "ClosureOp";

    fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }

    fn scratch(&self, mode: Mode, k: usize, _: Par) -> StackReq {
        if T::IS_REAL {
            return StackReq::EMPTY;
        }
        let rhs_rows = mode.dims((self.nrows, self.ncols)).1;
        temp_mat_scratch::<T>(rhs_rows, k)
    }

    fn run(&self, mode: Mode, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>, _: Par, stack: &mut MemStack) {
        let f = if mode.is_transposed() { &self.rmatmat as &dyn Fn(_, _) } else { &self.matmat };
        // The closure may add into `out` (see the type's docs).
        out.fill(zero());
        // The closures give L·X and Lᴴ·Y; conj(L) and Lᵀ conjugate around them.
        let conjugated = mode == Mode::Conj || mode == Mode::Transpose;
        if !conjugated || T::IS_REAL {
            return f(out, rhs);
        }
        // SAFETY: faer's `copy_from` writes every entry of `tmp` before
        // anything reads it; the closure gets it only afterwards, as a `MatRef`.
        let (mut tmp, _) = unsafe { temp_mat_uninit::<T, _, _>(rhs.nrows(), rhs.ncols(), stack) };
        let mut tmp = tmp.as_mat_mut();
        tmp.copy_from(rhs.conjugate());
        f(out.rb_mut(), tmp.rb());
        zip!(out).for_each(|unzip!(o)| *o = conj(o));
    }
}

impl_bilinop!([F: MatMatFn<T>, G: MatMatFn<T>] ClosureOp<T, F, G>);
