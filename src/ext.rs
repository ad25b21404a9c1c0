//! [`LinOpExt`]: the lazy algebra as methods on every operator.

use faer::Mat;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::mat::AsMatRef;
use faer::traits::ComplexField;
use faer::traits::math_utils::from_f64;

use crate::BiLinOp;
use crate::ops::{Adjoint, Compose, Conjugate, DynOp, Scaled, Sum, Transpose};

/// Methods that build operators from operators, and allocating conveniences
/// for code that does not manage scratch. Implemented for every faer
/// [`BiLinOp`].
///
/// The views (`adjoint`, `transpose`, `conj`) borrow `self`; wrap an operator
/// in [`Adjoint`], [`Transpose`] or [`Conjugate`] to move it in. The other
/// builders take `self` by value: call them on a reference
/// (`(&a).compose(&b)`) to keep the operands. faer's matrices have inherent
/// `adjoint()`, `transpose()` and `to_dense()` methods that win over these
/// and mean the same.
///
/// # Examples
/// ```
/// use lazylinop::prelude::*;
/// use faer::mat;
///
/// let a = mat![[1.0, 2.0], [3.0, 4.0]];
/// let l = (&a).compose(Transpose(&a)).plus(eye(2, 2, 0)).scale(0.5);
/// let y = l.matmat(mat![[1.0], [0.0]]);
/// assert_eq!(y, mat![[3.0], [5.5]]);
/// assert_eq!(l.to_dense(), mat![[3.0, 5.5], [5.5, 13.0]]);
/// ```
pub trait LinOpExt<T: ComplexField>: BiLinOp<T> + Sized {
    /// `Aᴴ`, a view borrowing `self`: see [`Adjoint`] (`Adjoint(op)` owns `op`).
    fn adjoint(&self) -> Adjoint<&Self> {
        Adjoint(self)
    }

    /// `Aᵀ`, a view borrowing `self`: see [`Transpose`] (`Transpose(op)` owns `op`).
    fn transpose(&self) -> Transpose<&Self> {
        Transpose(self)
    }

    /// `conj(A)`, a view borrowing `self`: see [`Conjugate`] (`Conjugate(op)` owns `op`).
    fn conj(&self) -> Conjugate<&Self> {
        Conjugate(self)
    }

    /// `self · rhs`: see [`Compose`].
    ///
    /// # Panics
    /// If `self.ncols() != rhs.nrows()`.
    #[track_caller]
    fn compose<B: BiLinOp<T>>(self, rhs: B) -> Compose<Self, B> {
        Compose::new(self, rhs)
    }

    /// `self + rhs`: see [`Sum`].
    ///
    /// # Panics
    /// If the shapes differ.
    #[track_caller]
    fn plus<B: BiLinOp<T>>(self, rhs: B) -> Sum<Self, B> {
        Sum::new(self, rhs)
    }

    /// `self - rhs`, that is `self + (-1)·rhs`.
    ///
    /// # Panics
    /// If the shapes differ.
    #[track_caller]
    fn minus<B: BiLinOp<T>>(self, rhs: B) -> Sum<Self, Scaled<T, B>> {
        Sum::new(self, rhs.neg())
    }

    /// `alpha · self`: see [`Scaled`].
    fn scale(self, alpha: T) -> Scaled<T, Self> {
        Scaled::new(alpha, self)
    }

    /// `-self`.
    fn neg(self) -> Scaled<T, Self> {
        Scaled::new(from_f64(-1.0), self)
    }

    /// Wraps `self` in a shared, type-erased [`DynOp`].
    fn into_dyn(self) -> DynOp<T>
    where
        Self: Send + Sync + 'static,
    {
        DynOp::new(self)
    }

    /// The operator as a dense matrix: `self · I`, one product.
    fn to_dense(&self) -> Mat<T> {
        self.matmat(Mat::<T>::identity(self.ncols(), self.ncols()))
    }

    /// `self · rhs` in a new matrix, with scratch allocated for the call and
    /// faer's global parallelism.
    ///
    /// # Panics
    /// If `rhs.nrows() != self.ncols()`; the message names both shapes.
    #[track_caller]
    fn matmat(&self, rhs: impl AsMatRef<T = T, Rows = usize, Cols = usize>) -> Mat<T> {
        let rhs = rhs.as_mat_ref();
        let par = faer::get_global_parallelism();
        let mut out = Mat::zeros(self.nrows(), rhs.ncols());
        let mut buf = MemBuffer::new(self.apply_scratch(rhs.ncols(), par));
        self.apply(out.as_mut(), rhs, par, MemStack::new(&mut buf));
        out
    }

    /// `selfᴴ · rhs` in a new matrix, with scratch allocated for the call and
    /// faer's global parallelism.
    ///
    /// # Panics
    /// If `rhs.nrows() != self.nrows()`; the message names both shapes.
    #[track_caller]
    fn rmatmat(&self, rhs: impl AsMatRef<T = T, Rows = usize, Cols = usize>) -> Mat<T> {
        let rhs = rhs.as_mat_ref();
        let par = faer::get_global_parallelism();
        let mut out = Mat::zeros(self.ncols(), rhs.ncols());
        let mut buf = MemBuffer::new(self.transpose_apply_scratch(rhs.ncols(), par));
        self.adjoint_apply(out.as_mut(), rhs, par, MemStack::new(&mut buf));
        out
    }
}

impl<T: ComplexField, L: BiLinOp<T>> LinOpExt<T> for L {}
