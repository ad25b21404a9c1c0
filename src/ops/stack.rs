//! Horizontal stack `[A B C]`, vertical stack `[A; B; C]` and block-diagonal
//! `diag(A, B, C)` of any number of operators.

use faer::dyn_stack::{MemStack, StackReq};
use faer::linalg::temp_mat_scratch;
use faer::mat::AsMatRef;
use faer::reborrow::ReborrowMut;
use faer::traits::ComplexField;
use faer::{MatMut, MatRef, Par};

use crate::BiLinOp;
use crate::ops::sum::add_to;
use crate::ops::{Mode, ModeOp, impl_bilinop};

/// How the blocks of a [`Blocks`] operator are laid out.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[A B C]`: equal row counts, side by side.
    Horizontal,
    /// `[A; B; C]`: equal column counts, one above the other.
    Vertical,
    /// `diag(A, B, C)`: on the diagonal, zeros elsewhere.
    Diagonal,
}

/// Operators stacked side by side, one above the other, or on a block
/// diagonal. The blocks share one type `L`; to mix types, use
/// [`DynOp`](crate::ops::DynOp) handles.
///
/// Products go block by block on views of the output and operand: a vertical
/// or diagonal stack writes each block's rows in place; a horizontal stack
/// adds each block's product to the output through one temporary in scratch.
/// The transpose of a horizontal stack is a vertical stack and the reverse.
///
/// # Examples
/// ```
/// use lazylinop::prelude::*;
/// use faer::{Mat, mat};
///
/// let a = mat![[1.0, 2.0]];
/// let b = mat![[3.0, 4.0]];
/// assert_eq!(vstack(vec![&a, &b]).to_dense(), mat![[1.0, 2.0], [3.0, 4.0]]);
/// assert_eq!(hstack(vec![&a, &b]).to_dense(), mat![[1.0, 2.0, 3.0, 4.0]]);
/// let d: Mat<f64> = block_diag(vec![&a, &b]).to_dense();
/// assert_eq!(d, mat![[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 3.0, 4.0]]);
/// ```
#[derive(Clone, Debug)]
pub struct Blocks<L> {
    ops: Vec<L>,
    layout: Layout,
    nrows: usize,
    ncols: usize,
}

/// `[A B C …]`: see [`Blocks`].
///
/// # Panics
/// If `ops` is empty, the row counts differ, or the column counts add up to
/// more than `usize::MAX`; the message names the shapes.
#[track_caller]
pub fn hstack<T: ComplexField, L: BiLinOp<T>>(ops: Vec<L>) -> Blocks<L> {
    Blocks::new(ops, Layout::Horizontal)
}

/// `[A; B; C; …]`: see [`Blocks`].
///
/// # Panics
/// If `ops` is empty, the column counts differ, or the row counts add up to
/// more than `usize::MAX`; the message names the shapes.
#[track_caller]
pub fn vstack<T: ComplexField, L: BiLinOp<T>>(ops: Vec<L>) -> Blocks<L> {
    Blocks::new(ops, Layout::Vertical)
}

/// `diag(A, B, C, …)`: see [`Blocks`].
///
/// # Panics
/// If `ops` is empty, or the row or column counts add up to more than
/// `usize::MAX`; the message names the shapes.
#[track_caller]
pub fn block_diag<T: ComplexField, L: BiLinOp<T>>(ops: Vec<L>) -> Blocks<L> {
    Blocks::new(ops, Layout::Diagonal)
}

impl Layout {
    /// The function that builds this layout, for messages.
    fn function(self) -> &'static str {
        match self {
            Layout::Horizontal => "hstack",
            Layout::Vertical => "vstack",
            Layout::Diagonal => "block_diag",
        }
    }
}

impl<L> Blocks<L> {
    /// Stacks `ops` in `layout`.
    ///
    /// # Panics
    /// If `ops` is empty, if the shapes do not fit the layout, or if the total
    /// row or column count exceeds `usize::MAX`; the message names every shape.
    #[track_caller]
    pub fn new<T: ComplexField>(ops: Vec<L>, layout: Layout) -> Self
    where
        L: BiLinOp<T>,
    {
        let name = layout.function();
        assert!(!ops.is_empty(), "lazylinop: cannot {name} an empty list of operators");
        let shapes = || ops.iter().map(|op| format!("{}×{}", op.nrows(), op.ncols())).collect::<Vec<_>>().join(", ");
        // The total of the row (or column) counts, which must fit in a usize.
        let total = |what: &str, dim: fn(&L) -> usize| {
            ops.iter().try_fold(0usize, |sum, op| sum.checked_add(dim(op))).unwrap_or_else(|| {
                panic!("lazylinop: {name} of shapes [{}] would have more than usize::MAX {what}", shapes())
            })
        };
        let (nrows, ncols) = match layout {
            Layout::Horizontal => {
                let m = ops[0].nrows();
                assert!(
                    ops.iter().all(|op| op.nrows() == m),
                    "lazylinop: hstack needs equal row counts, got shapes [{}]",
                    shapes()
                );
                (m, total("columns", |op| op.ncols()))
            }
            Layout::Vertical => {
                let n = ops[0].ncols();
                assert!(
                    ops.iter().all(|op| op.ncols() == n),
                    "lazylinop: vstack needs equal column counts, got shapes [{}]",
                    shapes()
                );
                (total("rows", |op| op.nrows()), n)
            }
            Layout::Diagonal => (total("rows", |op| op.nrows()), total("columns", |op| op.ncols())),
        };
        Self { ops, layout, nrows, ncols }
    }

    /// The blocks, in order.
    pub fn blocks(&self) -> &[L] {
        &self.ops
    }

    /// How the blocks are laid out.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The layout seen in `mode`: transposing swaps horizontal and vertical.
    fn layout_as(&self, mode: Mode) -> Layout {
        match (self.layout, mode.is_transposed()) {
            (Layout::Horizontal, true) => Layout::Vertical,
            (Layout::Vertical, true) => Layout::Horizontal,
            (layout, _) => layout,
        }
    }
}

impl<T: ComplexField, L: BiLinOp<T>> ModeOp<T> for Blocks<L> {
    const NAME: &'static str = "Blocks";

    fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }

    fn scratch(&self, mode: Mode, k: usize, par: Par) -> StackReq {
        let inner = self.ops.iter().fold(StackReq::EMPTY, |req, op| req.or(mode.scratch(op, k, par)));
        match self.layout_as(mode) {
            Layout::Horizontal => {
                let m = mode.dims_of(&self.ops[0]).0;
                temp_mat_scratch::<T>(m, k).and(inner)
            }
            Layout::Vertical | Layout::Diagonal => inner,
        }
    }

    fn run(&self, mode: Mode, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>, par: Par, stack: &mut MemStack) {
        let layout = self.layout_as(mode);
        if layout == Layout::Horizontal {
            // out = Σ op_i · rhs[rows_i]: the first block writes `out`, the others add.
            let mut row = 0;
            for (i, op) in self.ops.iter().enumerate() {
                let n = mode.dims_of(op).1;
                let x = rhs.subrows(row, n);
                row += n;
                if i == 0 {
                    mode.apply(op, out.rb_mut(), x, par, stack);
                } else {
                    let (tmp, _) = mode.apply_to_temp(op, x, par, stack);
                    add_to(out.rb_mut(), tmp.as_mat_ref());
                }
            }
            return;
        }
        // out[rows_i] = op_i · rhs (vertical) or op_i · rhs[cols_i] (diagonal).
        let (mut out_row, mut rhs_row) = (0, 0);
        for op in &self.ops {
            let (m, n) = mode.dims_of(op);
            let x = if layout == Layout::Diagonal { rhs.subrows(rhs_row, n) } else { rhs };
            mode.apply(op, out.rb_mut().subrows_mut(out_row, m), x, par, stack);
            out_row += m;
            rhs_row += n;
        }
    }
}

impl_bilinop!([L: BiLinOp<T>] Blocks<L>);
