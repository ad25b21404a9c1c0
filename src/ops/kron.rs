//! Kronecker product `A ⊗ B`.

use faer::dyn_stack::{MemStack, StackReq};
use faer::linalg::{temp_mat_scratch, temp_mat_uninit};
use faer::mat::AsMatMut;
use faer::reborrow::{Reborrow, ReborrowMut};
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
}

impl<A, B> Kron<A, B> {
    /// `a ⊗ b`.
    pub fn new<T: ComplexField>(a: A, b: B) -> Self
    where
        A: BiLinOp<T>,
        B: BiLinOp<T>,
    {
        Self { a, b }
    }

    /// The two factors.
    pub fn factors(&self) -> (&A, &B) {
        (&self.a, &self.b)
    }
}

impl<T: ComplexField, A: BiLinOp<T>, B: BiLinOp<T>> ModeOp<T> for Kron<A, B> {
    const NAME: &'static str = "Kron";

    fn shape(&self) -> (usize, usize) {
        (self.a.nrows() * self.b.nrows(), self.a.ncols() * self.b.ncols())
    }

    fn scratch(&self, mode: Mode, _: usize, par: Par) -> StackReq {
        let (m2, n1) = (mode.dims_of(&self.b).0, mode.dims_of(&self.a).1);
        temp_mat_scratch::<T>(m2, n1).and(mode.scratch(&self.b, n1, par).or(mode.scratch(&self.a, m2, par)))
    }

    fn run(&self, mode: Mode, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>, par: Par, stack: &mut MemStack) {
        let (m1, n1) = mode.dims_of(&self.a);
        let (m2, n2) = mode.dims_of(&self.b);
        if out.nrows() == 0 || rhs.ncols() == 0 {
            return;
        }
        if rhs.nrows() == 0 {
            out.fill(zero());
            return;
        }
        // SAFETY: `b` writes every entry of `z` before `a` reads it.
        let (mut z, stack) = unsafe { temp_mat_uninit::<T, _, _>(m2, n1, stack) };
        let mut z = z.as_mat_mut();
        let (rs, os) = (rhs.row_stride(), out.row_stride());
        for c in 0..rhs.ncols() {
            // SAFETY: column c of `rhs` has n1·n2 entries at stride `rs`; X[j2, j1] is
            // entry j1·n2 + j2 of it, so every (j2 < n2, j1 < n1) lands inside the column.
            let x = unsafe { MatRef::from_raw_parts(rhs.ptr_at(0, c), n2, n1, rs, rs * n2 as isize) };
            mode.apply(&self.b, z.rb_mut(), x, par, stack);
            // SAFETY: column c of `out` has m1·m2 entries at stride `os`; Yᵀ[i1, i2] is
            // entry i1·m2 + i2 of it, inside the column, and no other view of it is alive.
            let yt = unsafe { MatMut::from_raw_parts_mut(out.rb_mut().ptr_at_mut(0, c), m1, m2, os * m2 as isize, os) };
            mode.apply(&self.a, yt, z.rb().transpose(), par, stack);
        }
    }
}

impl_bilinop!([A: BiLinOp<T>, B: BiLinOp<T>] Kron<A, B>);
