//! Adjoint `Aᴴ`, transpose `Aᵀ` and conjugate `conj(A)` of an operator, as
//! views: nothing is copied, each product calls the matching product of `A`.

use faer::dyn_stack::{MemStack, StackReq};
use faer::traits::ComplexField;
use faer::{MatMut, MatRef, Par};

use crate::BiLinOp;
use crate::ops::{Mode, ModeOp, impl_bilinop};

macro_rules! view {
    ($(#[$doc:meta])* $name:ident, $flip:ident, $swaps:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $name<A>(pub A);

        impl<A> $name<A> {
            /// The operator this is a view of.
            pub fn inner(&self) -> &A {
                &self.0
            }
        }

        impl<T: ComplexField, A: BiLinOp<T>> ModeOp<T> for $name<A> {
            const NAME: &'static str = stringify!($name);

            fn shape(&self) -> (usize, usize) {
                if $swaps { (self.0.ncols(), self.0.nrows()) } else { (self.0.nrows(), self.0.ncols()) }
            }

            fn scratch(&self, mode: Mode, k: usize, par: Par) -> StackReq {
                mode.$flip().scratch(&self.0, k, par)
            }

            fn run(&self, mode: Mode, out: MatMut<'_, T>, rhs: MatRef<'_, T>, par: Par, stack: &mut MemStack) {
                mode.$flip().apply(&self.0, out, rhs, par, stack)
            }
        }

        impl_bilinop!([A: BiLinOp<T>] $name<A>);
    };
}

view!(
    /// The adjoint (conjugate transpose) `Aᴴ` of `A`: `Aᴴ·X` calls
    /// `A.adjoint_apply`. Build it with [`LinOpExt::adjoint`](crate::LinOpExt::adjoint).
    ///
    /// # Examples
    /// ```
    /// use lazylinop::prelude::*;
    /// use faer::{c64, mat};
    ///
    /// let a = mat![[c64::new(1.0, 2.0), c64::new(0.0, 1.0)]];
    /// assert_eq!(Adjoint(&a).to_dense(), a.adjoint().to_owned());
    /// ```
    Adjoint,
    adjoint,
    true
);
view!(
    /// The transpose `Aᵀ` of `A`: `Aᵀ·X` calls `A.transpose_apply`. Build it
    /// with [`LinOpExt::transpose`](crate::LinOpExt::transpose).
    ///
    /// # Examples
    /// ```
    /// use lazylinop::prelude::*;
    /// use faer::mat;
    ///
    /// let a = mat![[1.0, 2.0, 3.0]];
    /// assert_eq!(Transpose(&a).to_dense(), a.transpose());
    /// ```
    Transpose,
    transpose,
    true
);
view!(
    /// The entrywise conjugate `conj(A)` of `A`: `conj(A)·X` calls
    /// `A.conj_apply`. Build it with [`LinOpExt::conj`](crate::LinOpExt::conj).
    ///
    /// # Examples
    /// ```
    /// use lazylinop::prelude::*;
    /// use faer::{c64, mat};
    ///
    /// let a = mat![[c64::new(1.0, 2.0)]];
    /// assert_eq!(Conjugate(&a).to_dense(), a.conjugate().to_owned());
    /// ```
    Conjugate,
    conj,
    false
);
