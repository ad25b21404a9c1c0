//! Composition `A · B`.

use faer::dyn_stack::{MemStack, StackReq};
use faer::linalg::temp_mat_scratch;
use faer::mat::AsMatRef;
use faer::traits::ComplexField;
use faer::{MatMut, MatRef, Par};

use crate::BiLinOp;
use crate::ops::{Mode, ModeOp, impl_bilinop};

/// The product `A · B` of two operators, never formed: `(A·B)·X = A·(B·X)`.
///
/// The intermediate `B·X` lives in the scratch given to the product.
/// Build it with [`LinOpExt::compose`](crate::LinOpExt::compose) or
/// [`Compose::new`].
///
/// # Examples
/// ```
/// use lazylinop::prelude::*;
/// use faer::mat;
///
/// let a = mat![[1.0, 2.0], [3.0, 4.0]];
/// let b = mat![[0.0, 1.0], [1.0, 0.0]];
/// let ab = (&a).compose(&b);
/// assert_eq!(ab.to_dense(), &a * &b);
/// ```
#[derive(Clone, Debug)]
pub struct Compose<A, B> {
    a: A,
    b: B,
}

impl<A, B> Compose<A, B> {
    /// `a · b`.
    ///
    /// # Panics
    /// If `a.ncols() != b.nrows()`; the message names both shapes.
    #[track_caller]
    pub fn new<T: ComplexField>(a: A, b: B) -> Self
    where
        A: BiLinOp<T>,
        B: BiLinOp<T>,
    {
        assert!(
            a.ncols() == b.nrows(),
            "lazylinop: cannot compose a {}×{} operator with a {}×{} operator (inner dimensions differ)",
            a.nrows(),
            a.ncols(),
            b.nrows(),
            b.ncols(),
        );
        Self { a, b }
    }

    /// `a · b`, the factors' shapes checked by the caller.
    #[cfg(feature = "mpi")]
    pub(crate) fn from_parts(a: A, b: B) -> Self {
        Self { a, b }
    }

    /// The left and right factors.
    pub fn factors(&self) -> (&A, &B) {
        (&self.a, &self.b)
    }

    /// The operator applied first in `mode`, then the one applied second.
    fn order<T: ComplexField>(&self, mode: Mode) -> (&dyn BiLinOp<T>, &dyn BiLinOp<T>)
    where
        A: BiLinOp<T>,
        B: BiLinOp<T>,
    {
        // (A·B)·X = A·(B·X) and (A·B)ᵀ·X = Bᵀ·(Aᵀ·X).
        if mode.is_transposed() { (&self.a, &self.b) } else { (&self.b, &self.a) }
    }
}

impl<T: ComplexField, A: BiLinOp<T>, B: BiLinOp<T>> ModeOp<T> for Compose<A, B> {
    const NAME: &'static str = "Compose";

    fn shape(&self) -> (usize, usize) {
        (self.a.nrows(), self.b.ncols())
    }

    fn scratch(&self, mode: Mode, k: usize, par: Par) -> StackReq {
        let (first, second) = self.order::<T>(mode);
        let mid = mode.dims_of(first).0;
        temp_mat_scratch::<T>(mid, k)
            .and(StackReq::any_of(&[mode.scratch(first, k, par), mode.scratch(second, k, par)]))
    }

    fn run(&self, mode: Mode, out: MatMut<'_, T>, rhs: MatRef<'_, T>, par: Par, stack: &mut MemStack) {
        let (first, second) = self.order::<T>(mode);
        let (tmp, stack) = mode.apply_to_temp(first, rhs, par, stack);
        mode.apply(second, out, tmp.as_mat_ref(), par, stack);
    }
}

impl_bilinop!([A: BiLinOp<T>, B: BiLinOp<T>] Compose<A, B>);
