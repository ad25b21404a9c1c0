//! [`DynOp`]: a type-erased, cheaply cloneable operator handle.

use core::ops::{Add, Mul, Neg, Sub};
use std::sync::Arc;

use faer::dyn_stack::{MemStack, StackReq};
use faer::traits::ComplexField;
use faer::{MatMut, MatRef, Par};

use crate::{BiLinOp, LinOp, LinOpExt};

/// A shared handle to any operator: `Arc<dyn BiLinOp<T> + Send + Sync>`.
///
/// Cloning copies a pointer. Use it to store operators of different types
/// together (for example in [`hstack`](crate::ops::hstack)), to build
/// operators at run time, or to pass one operator to several owners.
/// `+`, `-`, unary `-`, `* DynOp` (composition) and `* T` (scaling) are
/// defined on it and give `DynOp`s again.
///
/// # Examples
/// ```
/// use lazylinop::prelude::*;
/// use faer::{Mat, mat};
///
/// let a = DynOp::new(mat![[1.0, 2.0], [3.0, 4.0]]);
/// let i = DynOp::new(eye(2, 2, 0));
/// let l = a.clone() * a.clone() + i * 2.0 - a.clone();
/// let dense: Mat<f64> = l.to_dense();
/// assert_eq!(dense, mat![[8.0, 8.0], [12.0, 20.0]]);
/// ```
pub struct DynOp<T: ComplexField>(Arc<dyn BiLinOp<T> + Send + Sync>);

impl<T: ComplexField> DynOp<T> {
    /// Wraps `op`.
    pub fn new(op: impl BiLinOp<T> + Send + Sync + 'static) -> Self {
        Self(Arc::new(op))
    }

    /// The shared operator.
    pub fn as_arc(&self) -> &Arc<dyn BiLinOp<T> + Send + Sync> {
        &self.0
    }
}

impl<T: ComplexField, L: BiLinOp<T> + Send + Sync + 'static> From<Arc<L>> for DynOp<T> {
    fn from(op: Arc<L>) -> Self {
        Self(op)
    }
}

impl<T: ComplexField> From<Arc<dyn BiLinOp<T> + Send + Sync>> for DynOp<T> {
    fn from(op: Arc<dyn BiLinOp<T> + Send + Sync>) -> Self {
        Self(op)
    }
}

impl<T: ComplexField> Clone for DynOp<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: ComplexField> core::fmt::Debug for DynOp<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("DynOp").field(&self.0).finish()
    }
}

impl<T: ComplexField> LinOp<T> for DynOp<T> {
    fn apply_scratch(&self, rhs_ncols: usize, par: Par) -> StackReq {
        self.0.apply_scratch(rhs_ncols, par)
    }
    fn nrows(&self) -> usize {
        self.0.nrows()
    }
    fn ncols(&self) -> usize {
        self.0.ncols()
    }
    #[track_caller]
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>, par: Par, stack: &mut MemStack) {
        self.0.apply(out, rhs, par, stack)
    }
    #[track_caller]
    fn conj_apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>, par: Par, stack: &mut MemStack) {
        self.0.conj_apply(out, rhs, par, stack)
    }
}

impl<T: ComplexField> BiLinOp<T> for DynOp<T> {
    fn transpose_apply_scratch(&self, rhs_ncols: usize, par: Par) -> StackReq {
        self.0.transpose_apply_scratch(rhs_ncols, par)
    }
    #[track_caller]
    fn transpose_apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>, par: Par, stack: &mut MemStack) {
        self.0.transpose_apply(out, rhs, par, stack)
    }
    #[track_caller]
    fn adjoint_apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>, par: Par, stack: &mut MemStack) {
        self.0.adjoint_apply(out, rhs, par, stack)
    }
}

impl<T: ComplexField + Send + Sync + 'static> Add for DynOp<T> {
    type Output = DynOp<T>;
    /// `self + rhs`. Panics if the shapes differ.
    #[track_caller]
    fn add(self, rhs: Self) -> Self {
        DynOp::new(self.plus(rhs))
    }
}

impl<T: ComplexField + Send + Sync + 'static> Sub for DynOp<T> {
    type Output = DynOp<T>;
    /// `self - rhs`. Panics if the shapes differ.
    #[track_caller]
    fn sub(self, rhs: Self) -> Self {
        DynOp::new(self.minus(rhs))
    }
}

impl<T: ComplexField + Send + Sync + 'static> Neg for DynOp<T> {
    type Output = DynOp<T>;
    /// `-self`.
    fn neg(self) -> Self {
        DynOp::new(LinOpExt::neg(self))
    }
}

impl<T: ComplexField + Send + Sync + 'static> Mul for DynOp<T> {
    type Output = DynOp<T>;
    /// The composition `self · rhs`. Panics if the inner dimensions differ.
    #[track_caller]
    fn mul(self, rhs: Self) -> Self {
        DynOp::new(self.compose(rhs))
    }
}

impl<T: ComplexField + Send + Sync + 'static> Mul<T> for DynOp<T> {
    type Output = DynOp<T>;
    /// `self` scaled by `alpha`.
    fn mul(self, alpha: T) -> Self {
        DynOp::new(self.scale(alpha))
    }
}
