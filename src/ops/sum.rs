//! Sum `A + B` of two operators of equal shape.

use faer::dyn_stack::{MemStack, StackReq};
use faer::linalg::temp_mat_scratch;
use faer::mat::AsMatRef;
use faer::reborrow::ReborrowMut;
use faer::traits::ComplexField;
use faer::traits::math_utils::add;
use faer::{MatMut, MatRef, Par, unzip, zip};

use crate::BiLinOp;
use crate::ops::{Mode, ModeOp, impl_bilinop};

/// The sum `A + B` of two operators of equal shape: `(A+B)·X = A·X + B·X`.
///
/// `A·X` is written into the output, `B·X` into a temporary from the scratch.
/// Build it with [`LinOpExt::plus`](crate::LinOpExt::plus),
/// [`LinOpExt::minus`](crate::LinOpExt::minus), `+` and `-`, or [`Sum::new`].
///
/// # Examples
/// ```
/// use lazylinop::prelude::*;
/// use faer::mat;
///
/// let a = mat![[1.0, 2.0], [3.0, 4.0]];
/// let b = mat![[0.0, 1.0], [1.0, 0.0]];
/// assert_eq!((&a).plus(&b).to_dense(), &a + &b);
/// ```
#[derive(Clone, Debug)]
pub struct Sum<A, B> {
    a: A,
    b: B,
}

impl<A, B> Sum<A, B> {
    /// `a + b`.
    ///
    /// # Panics
    /// If the shapes differ; the message names both.
    #[track_caller]
    pub fn new<T: ComplexField>(a: A, b: B) -> Self
    where
        A: BiLinOp<T>,
        B: BiLinOp<T>,
    {
        assert!(
            a.nrows() == b.nrows() && a.ncols() == b.ncols(),
            "lazylinop: cannot add a {}×{} operator and a {}×{} operator (shapes differ)",
            a.nrows(),
            a.ncols(),
            b.nrows(),
            b.ncols(),
        );
        Self { a, b }
    }

    /// `a + b`, the terms' shapes checked by the caller.
    #[cfg(feature = "mpi")]
    pub(crate) fn from_parts(a: A, b: B) -> Self {
        Self { a, b }
    }

    /// The two terms.
    pub fn terms(&self) -> (&A, &B) {
        (&self.a, &self.b)
    }
}

impl<T: ComplexField, A: BiLinOp<T>, B: BiLinOp<T>> ModeOp<T> for Sum<A, B> {
    const NAME: &'static str = "Sum";

    fn shape(&self) -> (usize, usize) {
        (self.a.nrows(), self.a.ncols())
    }

    fn scratch(&self, mode: Mode, k: usize, par: Par) -> StackReq {
        let m = mode.dims_of(&self.a).0;
        StackReq::any_of(&[
            mode.scratch(&self.a, k, par),
            temp_mat_scratch::<T>(m, k).and(mode.scratch(&self.b, k, par)),
        ])
    }

    fn run(&self, mode: Mode, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>, par: Par, stack: &mut MemStack) {
        mode.apply(&self.a, out.rb_mut(), rhs, par, stack);
        let (tmp, _) = mode.apply_to_temp(&self.b, rhs, par, stack);
        add_to(out, tmp.as_mat_ref());
    }
}

impl_bilinop!([A: BiLinOp<T>, B: BiLinOp<T>] Sum<A, B>);

/// `out += x`.
pub(crate) fn add_to<T: ComplexField>(out: MatMut<'_, T>, x: MatRef<'_, T>) {
    zip!(out, x).for_each(|unzip!(o, x)| *o = add(o, x));
}
