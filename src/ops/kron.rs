//! Kronecker product `A ⊗ B`.

use faer::dyn_stack::{MemStack, StackReq};
use faer::linalg::temp_mat_scratch;
use faer::mat::AsMatRef;
use faer::reborrow::ReborrowMut;
use faer::traits::ComplexField;
use faer::traits::math_utils::zero;
use faer::{MatMut, MatRef, Par};

use crate::BiLinOp;
use crate::ops::{Mode, ModeOp, impl_bilinop};

/// The Kronecker product `A ⊗ B` of an `m1 × n1` and an `m2 × n2` operator,
/// never formed: an `(m1·m2) × (n1·n2)` operator.
///
/// Each column `x` of the operand is viewed, without a copy, as the
/// `n2 × n1` matrix `X` whose columns are consecutive pieces of `x`, and
/// `(A ⊗ B)·x` is `B·X·Aᵀ` read back the same way (column-major `vec`): one
/// product of `B` with `n1` columns into scratch, then one of `A` with `m2`
/// columns straight into the output column. The transpose is `Aᵀ ⊗ Bᵀ`.
///
/// # Examples
/// ```
/// use lazylinop::prelude::*;
/// use faer::mat;
///
/// let a = mat![[1.0, 2.0]];
/// let b = mat![[0.0, 1.0], [1.0, 0.0]];
/// let k = Kron::new(&a, &b);
/// assert_eq!(k.to_dense(), mat![[0.0, 1.0, 0.0, 2.0], [1.0, 0.0, 2.0, 0.0]]);
/// ```
#[derive(Clone, Debug)]
pub struct Kron<A, B> {
    a: A,
    b: B,
    /// The shapes of `a` and `b`, read once at construction: the views a
    /// product builds rest on them, never on what the factors report later.
    a_shape: (usize, usize),
    b_shape: (usize, usize),
}

impl<A, B> Kron<A, B> {
    /// `a ⊗ b`.
    ///
    /// # Panics
    /// If the row or column count of the product, `a.nrows()·b.nrows()` or
    /// `a.ncols()·b.ncols()`, exceeds `usize::MAX`; the message names both
    /// shapes.
    #[track_caller]
    pub fn new<T: ComplexField>(a: A, b: B) -> Self
    where
        A: BiLinOp<T>,
        B: BiLinOp<T>,
    {
        let (a_shape, b_shape) = ((a.nrows(), a.ncols()), (b.nrows(), b.ncols()));
        let fits = a_shape.0.checked_mul(b_shape.0).is_some() && a_shape.1.checked_mul(b_shape.1).is_some();
        assert!(
            fits,
            "lazylinop: Kron of a {}×{} operator and a {}×{} operator would have more than usize::MAX rows or columns",
            a_shape.0, a_shape.1, b_shape.0, b_shape.1,
        );
        Self { a, b, a_shape, b_shape }
    }

    /// The two factors.
    pub fn factors(&self) -> (&A, &B) {
        (&self.a, &self.b)
    }
}

/// `stride · n` exactly, for a view that steps over `n` entries `stride`
/// apart at a time.
///
/// # Panics
/// If the product does not fit an `isize`, which no view of memory allows
/// (see [`Kron`]'s product).
fn stride_times(stride: isize, n: usize) -> isize {
    // i128 holds every isize × usize product.
    isize::try_from(stride as i128 * n as i128).expect("lazylinop: Kron: operand stride overflows isize")
}

impl<T: ComplexField, A: BiLinOp<T>, B: BiLinOp<T>> ModeOp<T> for Kron<A, B> {
    const NAME: &'static str = "Kron";

    fn shape(&self) -> (usize, usize) {
        // Checked in `new`: neither product overflows.
        (self.a_shape.0 * self.b_shape.0, self.a_shape.1 * self.b_shape.1)
    }

    fn scratch(&self, mode: Mode, _: usize, par: Par) -> StackReq {
        let (m2, n1) = (mode.dims(self.b_shape).0, mode.dims(self.a_shape).1);
        temp_mat_scratch::<T>(m2, n1).and(mode.scratch(&self.b, n1, par).or(mode.scratch(&self.a, m2, par)))
    }

    fn run(&self, mode: Mode, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>, par: Par, stack: &mut MemStack) {
        let (m1, n1) = mode.dims(self.a_shape);
        let (m2, n2) = mode.dims(self.b_shape);
        // `run_checked` checked this already; the views below rest on it, so
        // it is checked here again, next to them.
        assert!(out.nrows() == m1 * m2 && rhs.nrows() == n1 * n2 && out.ncols() == rhs.ncols());
        if out.nrows() == 0 || rhs.ncols() == 0 {
            return;
        }
        if rhs.nrows() == 0 {
            out.fill(zero());
            return;
        }
        // From here m1, m2, n1, n2 ≥ 1. The strides that step from one column
        // of X (one row of Yᵀ) to the next are exact, or the product panics
        // (never wraps); for any view of memory they fit, as a column of it
        // spans |rs|·(n1·n2 − 1) entries.
        let (rs, os) = (rhs.row_stride(), out.row_stride());
        let (x_cs, yt_rs) = (stride_times(rs, n2), stride_times(os, m2));
        for c in 0..rhs.ncols() {
            // SAFETY: column c of `rhs` has n1·n2 entries `rs` apart (asserted
            // above, from the shapes stored at construction); X[j2, j1] is at
            // (j1·n2 + j2)·rs, entry j1·n2 + j2 < n1·n2 of that column.
            let x = unsafe { MatRef::from_raw_parts(rhs.ptr_at(0, c), n2, n1, rs, x_cs) };
            let (z, stack) = mode.apply_to_temp(&self.b, x, par, &mut *stack);
            // SAFETY: column c of `out` has m1·m2 entries `os` apart (asserted
            // above); Yᵀ[i1, i2] is at (i1·m2 + i2)·os, entry i1·m2 + i2 < m1·m2
            // of that column, and no other view of `out` is used while it lives.
            let yt = unsafe { MatMut::from_raw_parts_mut(out.rb_mut().ptr_at_mut(0, c), m1, m2, yt_rs, os) };
            mode.apply(&self.a, yt, z.as_mat_ref().transpose(), par, stack);
        }
    }
}

impl_bilinop!([A: BiLinOp<T>, B: BiLinOp<T>] Kron<A, B>);
