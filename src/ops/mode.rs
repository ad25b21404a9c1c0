//! One product, four faces: `L·X`, `conj(L)·X`, `Lᵀ·X`, `Lᴴ·X`.
//!
//! Every combinator writes its product once, for a [`Mode`], and
//! [`impl_bilinop!`] turns that into faer's four trait methods, with the
//! shape check in one place.

use faer::dyn_stack::{MemStack, StackReq};
use faer::linalg::temp_mat_zeroed;
use faer::mat::AsMatMut;
use faer::traits::ComplexField;
use faer::{MatMut, MatRef, Par};

use crate::BiLinOp;

/// Which of the four products of an operator is asked for.
///
/// faer's traits have one method per mode; the combinators of this crate
/// write their product once for a `Mode`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Mode {
    /// `L · X`
    Apply,
    /// `conj(L) · X`
    Conj,
    /// `Lᵀ · X`
    Transpose,
    /// `Lᴴ · X`
    Adjoint,
}

impl Mode {
    /// The four modes, in the order of their [`Mode::code`].
    pub const ALL: [Mode; 4] = [Mode::Apply, Mode::Conj, Mode::Transpose, Mode::Adjoint];

    /// A small number for this mode (its index in [`Mode::ALL`]), for
    /// messages between processes.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The mode whose [`Mode::code`] is `code`, or `None` for any other number.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// The shape `(nrows, ncols)` of an operator of shape `shape` used in
    /// this mode: swapped for `Lᵀ` and `Lᴴ`.
    pub fn dims(self, shape: (usize, usize)) -> (usize, usize) {
        if self.is_transposed() { (shape.1, shape.0) } else { shape }
    }

    /// The shape `(nrows, ncols)` of `op` used in this mode.
    pub fn dims_of<T: ComplexField, L: BiLinOp<T> + ?Sized>(self, op: &L) -> (usize, usize) {
        self.dims((op.nrows(), op.ncols()))
    }

    /// The scratch of `op`'s product in this mode with `k` right-hand sides:
    /// `op.apply_scratch` or `op.transpose_apply_scratch`.
    pub fn scratch<T: ComplexField, L: BiLinOp<T> + ?Sized>(self, op: &L, k: usize, par: Par) -> StackReq {
        if self.is_transposed() { op.transpose_apply_scratch(k, par) } else { op.apply_scratch(k, par) }
    }

    /// `out = op_mode · rhs`, through the faer trait method of this mode.
    ///
    /// # Panics
    /// As the trait method: if the shapes do not fit.
    #[track_caller]
    pub fn apply<T: ComplexField, L: BiLinOp<T> + ?Sized>(
        self,
        op: &L,
        out: MatMut<'_, T>,
        rhs: MatRef<'_, T>,
        par: Par,
        stack: &mut MemStack,
    ) {
        match self {
            Mode::Apply => op.apply(out, rhs, par, stack),
            Mode::Conj => op.conj_apply(out, rhs, par, stack),
            Mode::Transpose => op.transpose_apply(out, rhs, par, stack),
            Mode::Adjoint => op.adjoint_apply(out, rhs, par, stack),
        }
    }

    /// `op_mode · rhs` in a new temporary from `stack`, which the caller then
    /// reads; returns it with the rest of the stack.
    ///
    /// The temporary is zeroed before `op` writes it, so nothing the scratch
    /// held (uninitialized bytes, an earlier product) can reach a result,
    /// whether or not `op` overwrites every entry: an operator may accumulate
    /// into `out` (`out += …`), and a user's operator may skip entries, without
    /// making the crate read undefined memory. Needs
    /// `temp_mat_scratch::<T>(nrows, rhs.ncols())` followed by `op`'s scratch.
    pub(crate) fn apply_to_temp<'a, T: ComplexField + 'a, L: BiLinOp<T> + ?Sized>(
        self,
        op: &L,
        rhs: MatRef<'_, T>,
        par: Par,
        stack: &'a mut MemStack,
    ) -> (impl AsMatMut<T = T, Rows = usize, Cols = usize> + 'a, &'a mut MemStack) {
        let (mut tmp, stack) = temp_mat_zeroed::<T, _, _>(self.dims_of(op).0, rhs.ncols(), stack);
        self.apply(op, tmp.as_mat_mut(), rhs, par, stack);
        (tmp, stack)
    }

    fn from_flags(transpose: bool, conj: bool) -> Self {
        match (transpose, conj) {
            (false, false) => Mode::Apply,
            (false, true) => Mode::Conj,
            (true, false) => Mode::Transpose,
            (true, true) => Mode::Adjoint,
        }
    }

    /// Whether the operator is used transposed (`Lᵀ` or `Lᴴ`).
    pub fn is_transposed(self) -> bool {
        matches!(self, Mode::Transpose | Mode::Adjoint)
    }

    /// Whether the operator's entries are conjugated (`conj(L)` or `Lᴴ`).
    pub fn is_conj(self) -> bool {
        matches!(self, Mode::Conj | Mode::Adjoint)
    }

    /// This mode applied to `Lᴴ` instead of `L`.
    pub fn adjoint(self) -> Self {
        Self::from_flags(!self.is_transposed(), !self.is_conj())
    }

    /// This mode applied to `Lᵀ` instead of `L`.
    pub fn transpose(self) -> Self {
        Self::from_flags(!self.is_transposed(), self.is_conj())
    }

    /// This mode applied to `conj(L)` instead of `L`.
    pub fn conj(self) -> Self {
        Self::from_flags(self.is_transposed(), !self.is_conj())
    }

    /// What the product is called in messages.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Apply => "apply",
            Mode::Conj => "conj_apply",
            Mode::Transpose => "transpose_apply",
            Mode::Adjoint => "adjoint_apply",
        }
    }
}

/// A product written once for all four modes; [`impl_bilinop!`] makes it a
/// faer [`BiLinOp`].
pub(crate) trait ModeOp<T: ComplexField> {
    /// Name used in panic messages.
    const NAME: &'static str;
    /// `(nrows, ncols)` of the operator itself (not transposed).
    fn shape(&self) -> (usize, usize);
    /// Scratch for [`ModeOp::run`] with `k` right-hand sides.
    fn scratch(&self, mode: Mode, k: usize, par: Par) -> StackReq;
    /// `out = self_mode · rhs`; shapes are already checked.
    fn run(&self, mode: Mode, out: MatMut<'_, T>, rhs: MatRef<'_, T>, par: Par, stack: &mut MemStack);
}

/// Panics, naming every shape, unless `out = op_mode · rhs` fits.
#[track_caller]
pub(crate) fn check_shapes(name: &str, shape: (usize, usize), mode: Mode, out: (usize, usize), rhs: (usize, usize)) {
    let (m, n) = mode.dims(shape);
    if out.0 != m || rhs.0 != n || out.1 != rhs.1 {
        panic!(
            "lazylinop: shape mismatch in {name}::{}: the operator is {}×{}{}, so out must be {m}×k and rhs {n}×k, \
             but out is {}×{} and rhs is {}×{}",
            mode.name(),
            shape.0,
            shape.1,
            if mode.is_transposed() { " (used transposed)" } else { "" },
            out.0,
            out.1,
            rhs.0,
            rhs.1,
        );
    }
}

/// Checks the shapes, then runs the product.
#[track_caller]
pub(crate) fn run_checked<T: ComplexField, O: ModeOp<T>>(
    op: &O,
    mode: Mode,
    out: MatMut<'_, T>,
    rhs: MatRef<'_, T>,
    par: Par,
    stack: &mut MemStack,
) {
    check_shapes(O::NAME, op.shape(), mode, (out.nrows(), out.ncols()), (rhs.nrows(), rhs.ncols()));
    op.run(mode, out, rhs, par, stack)
}

/// Implements faer's `LinOp` and `BiLinOp` for a type that implements
/// [`ModeOp`]: `impl_bilinop!([A, B] Compose<A, B> where A: BiLinOp<T>, B: BiLinOp<T>);`
/// (`T` is the scalar type, bound by the macro).
macro_rules! impl_bilinop {
    ([$($g:tt)*] $ty:ty $(where $($w:tt)+)?) => {
        impl<T: faer::traits::ComplexField, $($g)*> $crate::LinOp<T> for $ty $(where $($w)+)? {
            fn apply_scratch(&self, rhs_ncols: usize, par: faer::Par) -> faer::dyn_stack::StackReq {
                $crate::ops::ModeOp::<T>::scratch(self, $crate::ops::Mode::Apply, rhs_ncols, par)
            }
            fn nrows(&self) -> usize {
                $crate::ops::ModeOp::<T>::shape(self).0
            }
            fn ncols(&self) -> usize {
                $crate::ops::ModeOp::<T>::shape(self).1
            }
            #[track_caller]
            fn apply(
                &self,
                out: faer::MatMut<'_, T>,
                rhs: faer::MatRef<'_, T>,
                par: faer::Par,
                stack: &mut faer::dyn_stack::MemStack,
            ) {
                $crate::ops::mode::run_checked(self, $crate::ops::Mode::Apply, out, rhs, par, stack)
            }
            #[track_caller]
            fn conj_apply(
                &self,
                out: faer::MatMut<'_, T>,
                rhs: faer::MatRef<'_, T>,
                par: faer::Par,
                stack: &mut faer::dyn_stack::MemStack,
            ) {
                $crate::ops::mode::run_checked(self, $crate::ops::Mode::Conj, out, rhs, par, stack)
            }
        }
        impl<T: faer::traits::ComplexField, $($g)*> $crate::BiLinOp<T> for $ty $(where $($w)+)? {
            fn transpose_apply_scratch(&self, rhs_ncols: usize, par: faer::Par) -> faer::dyn_stack::StackReq {
                $crate::ops::ModeOp::<T>::scratch(self, $crate::ops::Mode::Transpose, rhs_ncols, par)
            }
            #[track_caller]
            fn transpose_apply(
                &self,
                out: faer::MatMut<'_, T>,
                rhs: faer::MatRef<'_, T>,
                par: faer::Par,
                stack: &mut faer::dyn_stack::MemStack,
            ) {
                $crate::ops::mode::run_checked(self, $crate::ops::Mode::Transpose, out, rhs, par, stack)
            }
            #[track_caller]
            fn adjoint_apply(
                &self,
                out: faer::MatMut<'_, T>,
                rhs: faer::MatRef<'_, T>,
                par: faer::Par,
                stack: &mut faer::dyn_stack::MemStack,
            ) {
                $crate::ops::mode::run_checked(self, $crate::ops::Mode::Adjoint, out, rhs, par, stack)
            }
        }
    };
}
pub(crate) use impl_bilinop;
