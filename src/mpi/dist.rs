//! [`DistOp`]: operators whose products take and give distributed
//! multi-vectors ([`DistMat`]), and their algebra.

use core::fmt;

use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::reborrow::ReborrowMut;
use faer::traits::math_utils::{add, conj, mul};
use faer::{MatMut, MatRef, Par, unzip, zip};

use super::collective::{Fault, caught, temp_slice, temp_slice_scratch};
use super::distmat::{DistMat, DistMatMut, DistMatRef};
use super::layout::Layout;
use crate::BiLinOp;
use crate::Scalar;
use crate::ops::{Adjoint, Compose, Conjugate, Mode, Scaled, Sum, Transpose};
use crate::parallel::Error;

/// A distributed linear operator: `L` is `m × n`, its rows split by
/// [`row_layout`](DistOp::row_layout) and its columns by
/// [`col_layout`](DistOp::col_layout), and its four products take and give
/// [`DistMat`]s: `L·X` and `conj(L)·X` map a multi-vector of the column
/// layout to one of the row layout, `Lᵀ·Y` and `Lᴴ·Y` the other way. No
/// rank holds a whole vector.
///
/// As faer's [`LinOp`](crate::LinOp): the caller's output, scratch from a `MemStack` sized
/// by [`dist_scratch`](DistOp::dist_scratch), a `Par` for the threads
/// inside each rank. Every rank calls the same products in the same order
/// (they are collective); operands whose layouts or column counts are not
/// the operator's are the same [`Error`] on every rank.
///
/// Implemented by [`MpiLop`](super::MpiLop) (halo exchange for sparse files,
/// all-gather and reduce-scatter for dense ones), [`DistLocal`] (any faer
/// operator on each rank's rows), [`DistDiag`], and faer's algebra of this
/// crate: [`Compose`], [`Sum`], [`Scaled`] and the [`Adjoint`] /
/// [`Transpose`] / [`Conjugate`] views, built with [`DistOpExt`].
pub trait DistOp<T: Scalar>: Sync + fmt::Debug {
    /// The layout of the rows (of `L·X`; of the operand of `Lᴴ·Y`).
    fn row_layout(&self) -> &Layout;

    /// The layout of the columns (of the operand of `L·X`; of `Lᴴ·Y`).
    fn col_layout(&self) -> &Layout;

    /// The scratch of [`dist_apply`](DistOp::dist_apply) in `mode` with `k`
    /// columns, on this rank.
    fn dist_scratch(&self, mode: Mode, k: usize, par: Par) -> StackReq;

    /// `out = L_mode · rhs`, `out` in the layout of `L_mode`'s rows and `rhs`
    /// in that of its columns. Collective.
    ///
    /// # Errors
    /// The same [`Error`] on every rank if the operands' layouts or column
    /// counts are not the operator's on some rank, or a rank fails (a panic
    /// in a rank-local operator, MPI finalized, a call from a thread MPI does
    /// not allow).
    fn dist_apply(
        &self,
        mode: Mode,
        out: DistMatMut<'_, T>,
        rhs: DistMatRef<'_, T>,
        par: Par,
        stack: &mut MemStack,
    ) -> Result<(), Error>;
}

impl<T: Scalar, D: DistOp<T> + ?Sized> DistOp<T> for &D {
    fn row_layout(&self) -> &Layout {
        (**self).row_layout()
    }
    fn col_layout(&self) -> &Layout {
        (**self).col_layout()
    }
    fn dist_scratch(&self, mode: Mode, k: usize, par: Par) -> StackReq {
        (**self).dist_scratch(mode, k, par)
    }
    fn dist_apply(
        &self,
        mode: Mode,
        out: DistMatMut<'_, T>,
        rhs: DistMatRef<'_, T>,
        par: Par,
        stack: &mut MemStack,
    ) -> Result<(), Error> {
        (**self).dist_apply(mode, out, rhs, par, stack)
    }
}

/// The layouts of `op_mode`'s rows and columns.
pub(crate) fn layouts<T: Scalar, D: DistOp<T> + ?Sized>(op: &D, mode: Mode) -> (&Layout, &Layout) {
    if mode.is_transposed() { (op.col_layout(), op.row_layout()) } else { (op.row_layout(), op.col_layout()) }
}

/// What every rank agrees on before a distributed product of `op` in
/// `mode`, and this rank's fault if its operands do not fit.
pub(crate) fn agreement<T: Scalar, D: DistOp<T> + ?Sized>(
    op: &D,
    mode: Mode,
    out: &DistMatMut<'_, T>,
    rhs: &DistMatRef<'_, T>,
) -> ([(&'static str, u64); 4], Option<Fault>) {
    let (rows, cols) = layouts(op, mode);
    let fault = rows
        .mismatch(out.layout(), "the output")
        .or_else(|| cols.mismatch(rhs.layout(), "the operand"))
        .or_else(|| {
            (out.ncols() != rhs.ncols())
                .then(|| Fault::new(format!("the output has {} columns and the operand {}", out.ncols(), rhs.ncols())))
        });
    let settings = [
        ("the product (0 L, 1 conj(L), 2 Lᵀ, 3 Lᴴ)", u64::from(mode.code())),
        ("the number of columns", rhs.ncols() as u64),
        ("the output's layout (a hash of its offsets)", out.layout().hash()),
        ("the operand's layout (a hash of its offsets)", rhs.layout().hash()),
    ];
    (settings, fault)
}

/// Methods on every [`DistOp`]: the algebra (named `dist_*`, apart from
/// [`LinOpExt`](crate::LinOpExt)'s, since an [`MpiLop`](super::MpiLop) is
/// both) and allocating conveniences.
pub trait DistOpExt<T: Scalar>: DistOp<T> + Sized {
    /// `self · b`, the intermediate in scratch.
    ///
    /// # Panics
    /// If `self`'s column layout is not `b`'s row layout (naming both).
    #[track_caller]
    fn dist_compose<B: DistOp<T>>(self, b: B) -> Compose<Self, B> {
        same_split(
            self.col_layout(),
            b.row_layout(),
            "compose",
            "the left factor's columns",
            "the right factor's rows",
        );
        Compose::from_parts(self, b)
    }

    /// `self + b`.
    ///
    /// # Panics
    /// If the layouts differ.
    #[track_caller]
    fn dist_plus<B: DistOp<T>>(self, b: B) -> Sum<Self, B> {
        same_split(self.row_layout(), b.row_layout(), "add", "the rows of the first term", "of the second");
        same_split(self.col_layout(), b.col_layout(), "add", "the columns of the first term", "of the second");
        Sum::from_parts(self, b)
    }

    /// `alpha · self`.
    fn dist_scale(self, alpha: T) -> Scaled<T, Self> {
        Scaled::from_parts(alpha, self)
    }

    /// `selfᴴ`, a view.
    fn dist_adjoint(&self) -> Adjoint<&Self> {
        Adjoint(self)
    }

    /// `selfᵀ`, a view.
    fn dist_transpose(&self) -> Transpose<&Self> {
        Transpose(self)
    }

    /// `self_mode · x` in a new [`DistMat`] (scratch allocated here).
    ///
    /// # Errors
    /// As [`DistOp::dist_apply`].
    fn dist_product(&self, mode: Mode, x: DistMatRef<'_, T>) -> Result<DistMat<T>, Error> {
        let (rows, _) = layouts(self, mode);
        let mut out = DistMat::zeros(rows, x.ncols());
        let mut buf = MemBuffer::new(self.dist_scratch(mode, x.ncols(), Par::Seq));
        self.dist_apply(mode, out.as_mut(), x, Par::Seq, MemStack::new(&mut buf))?;
        Ok(out)
    }
}

impl<T: Scalar, D: DistOp<T>> DistOpExt<T> for D {}

#[track_caller]
fn same_split(a: &Layout, b: &Layout, what: &str, a_name: &str, b_name: &str) {
    assert!(
        a.offsets() == b.offsets(),
        "lazylinop: cannot {what} distributed operators: {a_name} are split as {:?}, {b_name} as {:?}",
        a.offsets(),
        b.offsets()
    );
}

impl<T: Scalar, A: DistOp<T>, B: DistOp<T>> DistOp<T> for Compose<A, B> {
    fn row_layout(&self) -> &Layout {
        self.factors().0.row_layout()
    }
    fn col_layout(&self) -> &Layout {
        self.factors().1.col_layout()
    }
    fn dist_scratch(&self, mode: Mode, k: usize, par: Par) -> StackReq {
        let (first, second) = order(self, mode);
        let mid = layouts(first, mode).0.local_len();
        temp_slice_scratch::<T>(mid * k)
            .and(StackReq::any_of(&[first.dist_scratch(mode, k, par), second.dist_scratch(mode, k, par)]))
    }
    fn dist_apply(
        &self,
        mode: Mode,
        out: DistMatMut<'_, T>,
        rhs: DistMatRef<'_, T>,
        par: Par,
        stack: &mut MemStack,
    ) -> Result<(), Error> {
        let (first, second) = order(self, mode);
        let mid = layouts(first, mode).0;
        let k = rhs.ncols();
        let (tmp, stack) = temp_slice::<T>(mid.local_len() * k, stack);
        let mut tmp = DistMatMut::new(mid, MatMut::from_row_major_slice_mut(tmp, mid.local_len(), k));
        first.dist_apply(mode, tmp.rb_mut(), rhs, par, stack)?;
        second.dist_apply(mode, out, tmp.rb(), par, stack)
    }
}

/// The factor applied first in `mode`, then the second.
fn order<T: Scalar, A: DistOp<T>, B: DistOp<T>>(c: &Compose<A, B>, mode: Mode) -> (&dyn DistOp<T>, &dyn DistOp<T>) {
    let (a, b) = c.factors();
    if mode.is_transposed() { (a, b) } else { (b, a) }
}

impl<T: Scalar, A: DistOp<T>, B: DistOp<T>> DistOp<T> for Sum<A, B> {
    fn row_layout(&self) -> &Layout {
        self.terms().0.row_layout()
    }
    fn col_layout(&self) -> &Layout {
        self.terms().0.col_layout()
    }
    fn dist_scratch(&self, mode: Mode, k: usize, par: Par) -> StackReq {
        let (a, b) = self.terms();
        let m = layouts(a, mode).0.local_len();
        StackReq::any_of(&[
            a.dist_scratch(mode, k, par),
            temp_slice_scratch::<T>(m * k).and(b.dist_scratch(mode, k, par)),
        ])
    }
    fn dist_apply(
        &self,
        mode: Mode,
        mut out: DistMatMut<'_, T>,
        rhs: DistMatRef<'_, T>,
        par: Par,
        stack: &mut MemStack,
    ) -> Result<(), Error> {
        let (a, b) = self.terms();
        a.dist_apply(mode, out.rb_mut(), rhs, par, stack)?;
        let rows = layouts(b, mode).0;
        let k = rhs.ncols();
        let (tmp, stack) = temp_slice::<T>(rows.local_len() * k, stack);
        let mut tmp = DistMatMut::new(rows, MatMut::from_row_major_slice_mut(tmp, rows.local_len(), k));
        b.dist_apply(mode, tmp.rb_mut(), rhs, par, stack)?;
        // `b`'s product checked that `out` (a's, checked by `a`) has its layout too.
        zip!(out.local_mut(), tmp.local()).for_each(|unzip!(o, t)| *o = add(o, t));
        Ok(())
    }
}

impl<T: Scalar, A: DistOp<T>> DistOp<T> for Scaled<T, A> {
    fn row_layout(&self) -> &Layout {
        self.factor_and_op().1.row_layout()
    }
    fn col_layout(&self) -> &Layout {
        self.factor_and_op().1.col_layout()
    }
    fn dist_scratch(&self, mode: Mode, k: usize, par: Par) -> StackReq {
        self.factor_and_op().1.dist_scratch(mode, k, par)
    }
    fn dist_apply(
        &self,
        mode: Mode,
        mut out: DistMatMut<'_, T>,
        rhs: DistMatRef<'_, T>,
        par: Par,
        stack: &mut MemStack,
    ) -> Result<(), Error> {
        let (alpha, a) = self.factor_and_op();
        a.dist_apply(mode, out.rb_mut(), rhs, par, stack)?;
        let alpha = if mode.is_conj() { conj(alpha) } else { *alpha };
        out.scale(alpha);
        Ok(())
    }
}

macro_rules! view {
    ($name:ident, $map:ident, $swap:expr) => {
        impl<T: Scalar, A: DistOp<T>> DistOp<T> for $name<A> {
            fn row_layout(&self) -> &Layout {
                if $swap { self.0.col_layout() } else { self.0.row_layout() }
            }
            fn col_layout(&self) -> &Layout {
                if $swap { self.0.row_layout() } else { self.0.col_layout() }
            }
            fn dist_scratch(&self, mode: Mode, k: usize, par: Par) -> StackReq {
                self.0.dist_scratch(mode.$map(), k, par)
            }
            fn dist_apply(
                &self,
                mode: Mode,
                out: DistMatMut<'_, T>,
                rhs: DistMatRef<'_, T>,
                par: Par,
                stack: &mut MemStack,
            ) -> Result<(), Error> {
                self.0.dist_apply(mode.$map(), out, rhs, par, stack)
            }
        }
    };
}
view!(Adjoint, adjoint, true);
view!(Transpose, transpose, true);
view!(Conjugate, conj, false);

/// A rank-local operator: on each rank, a faer operator `op` of shape
/// `rows.local_len() × cols.local_len()` applied to that rank's rows of the
/// operand (block-diagonal over the ranks): a preconditioner, a local solve,
/// or a [`pmatmat`](crate::parallel::pmatmat) on threads inside each rank
/// (MPI × threads). A panic in `op` on any rank is the same [`Error`] on
/// every rank (an agreement after the local product).
#[derive(Debug)]
pub struct DistLocal<L> {
    rows: Layout,
    cols: Layout,
    op: L,
}

impl<L> DistLocal<L> {
    /// `op` on each rank's rows.
    ///
    /// # Panics
    /// If `op`'s shape is not this rank's `rows.local_len() × cols.local_len()`.
    #[track_caller]
    pub fn new<T: Scalar>(rows: &Layout, cols: &Layout, op: L) -> Self
    where
        L: BiLinOp<T>,
    {
        assert!(
            op.nrows() == rows.local_len() && op.ncols() == cols.local_len(),
            "lazylinop: DistLocal::new: the local operator is {}×{}, but rank {} owns {} rows and {} columns",
            op.nrows(),
            op.ncols(),
            rows.rank(),
            rows.local_len(),
            cols.local_len()
        );
        DistLocal { rows: rows.clone(), cols: cols.clone(), op }
    }

    /// The local operator.
    pub fn local(&self) -> &L {
        &self.op
    }
}

impl<T: Scalar, L: BiLinOp<T>> DistOp<T> for DistLocal<L> {
    fn row_layout(&self) -> &Layout {
        &self.rows
    }
    fn col_layout(&self) -> &Layout {
        &self.cols
    }
    fn dist_scratch(&self, mode: Mode, k: usize, par: Par) -> StackReq {
        mode.scratch(&self.op, k, par)
    }
    fn dist_apply(
        &self,
        mode: Mode,
        out: DistMatMut<'_, T>,
        rhs: DistMatRef<'_, T>,
        par: Par,
        stack: &mut MemStack,
    ) -> Result<(), Error> {
        let (settings, fault) = agreement(self, mode, &out, &rhs);
        self.rows.comm().collective(&settings, fault, |s| {
            let done = caught("the rank-local operator", || {
                mode.apply(&self.op, out.into_local(), rhs.local(), par, stack);
                Ok(())
            });
            s.outcome(done)
        })
    }
}

/// A distributed diagonal operator `diag(d)`: `d` a distributed vector
/// (one column); each rank scales its own rows. (For a preconditioner, the
/// diagonal of an [`MpiLop`](super::MpiLop) is
/// [`MpiLop::diagonal`](super::MpiLop::diagonal).)
#[derive(Debug)]
pub struct DistDiag<T> {
    d: DistMat<T>,
}

impl<T: Scalar> DistDiag<T> {
    /// `diag(d)`.
    ///
    /// # Panics
    /// If `d` has another number of columns than one.
    #[track_caller]
    pub fn new(d: DistMat<T>) -> Self {
        assert_eq!(d.ncols(), 1, "lazylinop: DistDiag::new: the diagonal has {} columns, expected 1", d.ncols());
        DistDiag { d }
    }

    /// The diagonal.
    pub fn diagonal(&self) -> &DistMat<T> {
        &self.d
    }
}

impl<T: Scalar> DistOp<T> for DistDiag<T> {
    fn row_layout(&self) -> &Layout {
        self.d.layout()
    }
    fn col_layout(&self) -> &Layout {
        self.d.layout()
    }
    fn dist_scratch(&self, _: Mode, _: usize, _: Par) -> StackReq {
        StackReq::EMPTY
    }
    fn dist_apply(
        &self,
        mode: Mode,
        mut out: DistMatMut<'_, T>,
        rhs: DistMatRef<'_, T>,
        _: Par,
        _: &mut MemStack,
    ) -> Result<(), Error> {
        let (settings, fault) = agreement(self, mode, &out, &rhs);
        self.d.layout().comm().collective(&settings, fault, |_| {
            scale_rows(out.local_mut(), self.d.local(), rhs.local(), mode.is_conj());
            Ok(())
        })
    }
}

/// `out[i, j] = d[i] · rhs[i, j]` (`conj(d[i])` with `conj`).
fn scale_rows<T: Scalar>(mut out: MatMut<'_, T>, d: MatRef<'_, T>, rhs: MatRef<'_, T>, conj_d: bool) {
    if out.ncols() == 1 {
        // One column: one vectorized pass (a loop over rows of one entry is not).
        let z = zip!(out.col_mut(0), d.col(0), rhs.col(0));
        if conj_d {
            z.for_each(|unzip!(o, d, x)| *o = mul(&conj(d), x));
        } else {
            z.for_each(|unzip!(o, d, x)| *o = mul(d, x));
        }
        return;
    }
    for i in 0..out.nrows() {
        let di = if conj_d { conj(&d[(i, 0)]) } else { d[(i, 0)] };
        zip!(out.rb_mut().row_mut(i), rhs.row(i)).for_each(|unzip!(o, x)| *o = mul(&di, x));
    }
}
