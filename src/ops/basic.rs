//! The elementary operators: identity (rectangular, with a diagonal offset),
//! zeros and diagonal.

use faer::diag::Diag;
use faer::dyn_stack::{MemStack, StackReq};
use faer::traits::ComplexField;
use faer::traits::math_utils::zero;
use faer::{Col, MatMut, MatRef, Par};

use crate::ops::{Mode, ModeOp, impl_bilinop};

/// The `nrows × ncols` matrix with ones on diagonal `offset` (0: main
/// diagonal, `k > 0`: above it, `k < 0`: below it) and zeros elsewhere, as
/// numpy's `eye(N, M, k)` and lazylinop's `eye`.
///
/// A product copies rows of the operand; nothing is multiplied.
///
/// # Examples
/// ```
/// use lazylinop::prelude::*;
/// use faer::Mat;
///
/// let e = eye(2, 3, 1);
/// let dense: Mat<f64> = e.to_dense();
/// assert_eq!(dense, faer::mat![[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Eye {
    nrows: usize,
    ncols: usize,
    offset: isize,
}

/// The `nrows × ncols` identity with ones on diagonal `offset`: see [`Eye`].
pub fn eye(nrows: usize, ncols: usize, offset: isize) -> Eye {
    Eye { nrows, ncols, offset }
}

impl<T: ComplexField> ModeOp<T> for Eye {
    const NAME: &'static str = "Eye";

    fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }

    fn scratch(&self, _: Mode, _: usize, _: Par) -> StackReq {
        StackReq::EMPTY
    }

    fn run(&self, mode: Mode, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>, _: Par, _: &mut MemStack) {
        // Row i of the output is row i + offset of the operand, where that
        // exists. In i128, where no usize or isize, nor their negation and
        // differences, overflow.
        let offset = self.offset as i128;
        let offset = if mode.is_transposed() { -offset } else { offset };
        let (m, n) = (out.nrows() as i128, rhs.nrows() as i128);
        let first = (-offset).clamp(0, m);
        let end = (n - offset).clamp(first, m);
        out.fill(zero());
        // 0 ≤ first ≤ end ≤ m and, when len > 0, 0 ≤ first + offset < n: all fit a usize.
        let len = (end - first) as usize;
        if len > 0 {
            out.subrows_mut(first as usize, len).copy_from(rhs.subrows((first + offset) as usize, len));
        }
    }
}

impl_bilinop!([] Eye);

/// The `nrows × ncols` zero operator: every product is zero.
///
/// # Examples
/// ```
/// use lazylinop::prelude::*;
/// use faer::Mat;
///
/// let z: Mat<f32> = zeros(2, 3).to_dense();
/// assert_eq!(z, Mat::zeros(2, 3));
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Zeros {
    nrows: usize,
    ncols: usize,
}

/// The `nrows × ncols` zero operator: see [`Zeros`].
pub fn zeros(nrows: usize, ncols: usize) -> Zeros {
    Zeros { nrows, ncols }
}

impl<T: ComplexField> ModeOp<T> for Zeros {
    const NAME: &'static str = "Zeros";

    fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }

    fn scratch(&self, _: Mode, _: usize, _: Par) -> StackReq {
        StackReq::EMPTY
    }

    fn run(&self, _: Mode, mut out: MatMut<'_, T>, _: MatRef<'_, T>, _: Par, _: &mut MemStack) {
        out.fill(zero());
    }
}

impl_bilinop!([] Zeros);

/// The square diagonal operator with `v` on its diagonal.
///
/// This is faer's own [`Diag`], which implements faer's operator traits; use
/// `v.as_diagonal()` for a borrowed view instead.
///
/// # Examples
/// ```
/// use lazylinop::prelude::*;
/// use faer::{col, mat};
///
/// let d = diag(col![1.0, 2.0]);
/// assert_eq!(d.to_dense(), mat![[1.0, 0.0], [0.0, 2.0]]);
/// ```
pub fn diag<T: ComplexField>(v: Col<T>) -> Diag<T> {
    v.into_diagonal()
}
