//! Scaling `α · A` and negation `-A`.

use faer::dyn_stack::{MemStack, StackReq};
use faer::reborrow::ReborrowMut;
use faer::traits::ComplexField;
use faer::traits::math_utils::{conj, mul};
use faer::{MatMut, MatRef, Par, unzip, zip};

use crate::BiLinOp;
use crate::ops::{Mode, ModeOp, impl_bilinop};

/// An operator times a scalar: `(α·A)·X = α·(A·X)`, scaled in place in the
/// output. `-A` is `Scaled` with `α = -1`.
///
/// Build it with [`LinOpExt::scale`](crate::LinOpExt::scale),
/// [`LinOpExt::neg`](crate::LinOpExt::neg) or [`Scaled::new`].
///
/// # Examples
/// ```
/// use lazylinop::prelude::*;
/// use faer::{mat, Scale};
///
/// let a = mat![[1.0, 2.0], [3.0, 4.0]];
/// assert_eq!((&a).scale(2.0).to_dense(), Scale(2.0) * &a);
/// ```
#[derive(Clone, Debug)]
pub struct Scaled<T, A> {
    alpha: T,
    a: A,
}

#[cfg(feature = "mpi")]
impl<T, A> Scaled<T, A> {
    /// `alpha · a`, for operators that are not faer's.
    pub(crate) fn from_parts(alpha: T, a: A) -> Self {
        Self { alpha, a }
    }

    /// The factor and the operator.
    pub(crate) fn factor_and_op(&self) -> (&T, &A) {
        (&self.alpha, &self.a)
    }
}

impl<T: ComplexField, A: BiLinOp<T>> Scaled<T, A> {
    /// `alpha · a`.
    pub fn new(alpha: T, a: A) -> Self {
        Self { alpha, a }
    }

    /// The scalar and the operator it scales.
    pub fn parts(&self) -> (&T, &A) {
        (&self.alpha, &self.a)
    }
}

impl<T: ComplexField, A: BiLinOp<T>> ModeOp<T> for Scaled<T, A> {
    const NAME: &'static str = "Scaled";

    fn shape(&self) -> (usize, usize) {
        (self.a.nrows(), self.a.ncols())
    }

    fn scratch(&self, mode: Mode, k: usize, par: Par) -> StackReq {
        mode.scratch(&self.a, k, par)
    }

    fn run(&self, mode: Mode, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>, par: Par, stack: &mut MemStack) {
        mode.apply(&self.a, out.rb_mut(), rhs, par, stack);
        let alpha = if mode.is_conj() { conj(&self.alpha) } else { self.alpha.clone() };
        scale_in_place(out, &alpha);
    }
}

impl_bilinop!([A: BiLinOp<T>] Scaled<T, A>);

/// `out *= alpha`.
pub(crate) fn scale_in_place<T: ComplexField>(out: MatMut<'_, T>, alpha: &T) {
    zip!(out).for_each(|unzip!(o)| *o = mul(alpha, o));
}
