//! The dot test: does an operator's adjoint match its product?

use core::fmt;

use faer::MatRef;
use faer::traits::ComplexField;
use faer::traits::math_utils::{abs, conj, eps, from_f64, max, min_positive, mul, sub, zero};

use crate::{BiLinOp, LinOpExt, random};

/// What [`dottest`] measured: `<L·x, y>` and `<x, Lᴴ·y>`, their relative
/// difference and the tolerance it was held to.
#[derive(Clone, Debug)]
pub struct DotTest<T: ComplexField> {
    /// `yᴴ·(L·x)`.
    pub lhs: T,
    /// `(Lᴴ·y)ᴴ·x`.
    pub rhs: T,
    /// `|lhs - rhs| / max(|lhs|, |rhs|)`.
    pub rel_err: T::Real,
    /// The tolerance: `16 · ε · (nrows + ncols + 1)` for the scalar's `ε`.
    pub tol: T::Real,
}

impl<T: ComplexField> fmt::Display for DotTest<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dot test: <Lx, y> = {:?}, <x, L^H y> = {:?}, relative difference {:?} (tolerance {:?})",
            self.lhs, self.rhs, self.rel_err, self.tol
        )
    }
}

impl<T: ComplexField> std::error::Error for DotTest<T> {}

/// Checks `<L·x, y> = <x, Lᴴ·y>` for random `x` (`ncols × 3`) and `y`
/// (`nrows × 3`) drawn from `seed`, like PyLops' `dottest`, within a
/// tolerance scaled to the scalar type (see [`DotTest::tol`]).
///
/// # Errors
/// The measured [`DotTest`] when the relative difference exceeds the
/// tolerance: the adjoint does not match the product.
///
/// # Examples
/// ```
/// use lazylinop::prelude::*;
/// use faer::Mat;
///
/// let a = lazylinop::random::mat::<f64>(5, 3, 1);
/// let l = (&a).compose(Transpose(&a)).plus(eye(5, 5, 1));
/// dottest(&l, 0).unwrap();
///
/// // An operator whose "adjoint" is wrong fails.
/// let wrong = from_matmat(
///     2,
///     2,
///     |mut out: faer::MatMut<'_, f64>, x: faer::MatRef<'_, f64>| out.copy_from(x),
///     |mut out: faer::MatMut<'_, f64>, y: faer::MatRef<'_, f64>| out.copy_from(faer::Scale(2.0) * y),
/// );
/// assert!(dottest(&wrong, 0).is_err());
/// ```
pub fn dottest<T: ComplexField, L: BiLinOp<T>>(op: &L, seed: u64) -> Result<DotTest<T>, DotTest<T>> {
    let (m, n) = (op.nrows(), op.ncols());
    let x = random::mat::<T>(n, 3, seed);
    let y = random::mat::<T>(m, 3, seed.wrapping_add(1));
    let lx = op.matmat(&x);
    let lhy = op.rmatmat(&y);
    let lhs = inner(lx.as_ref(), y.as_ref());
    let rhs = inner(x.as_ref(), lhy.as_ref());
    let scale = max(&max(&abs(&lhs), &abs(&rhs)), &min_positive());
    let rel_err = abs(&sub(&lhs, &rhs)) / scale;
    let tol = from_f64::<T::Real>(16.0 * (m + n + 1) as f64) * eps::<T::Real>();
    let report = DotTest { lhs, rhs, rel_err, tol };
    if report.rel_err <= report.tol { Ok(report) } else { Err(report) }
}

/// `<u, v> = Σ conj(v) · u`.
fn inner<T: ComplexField>(u: MatRef<'_, T>, v: MatRef<'_, T>) -> T {
    let mut acc = zero::<T>();
    for j in 0..u.ncols() {
        for i in 0..u.nrows() {
            acc += mul(&conj(&v[(i, j)]), &u[(i, j)]);
        }
    }
    acc
}
