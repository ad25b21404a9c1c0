//! The job of one worker: the operator, the product's mode, and how it is
//! applied to a block of columns.

use faer::dyn_stack::{MemStack, StackReq};
use faer::reborrow::ReborrowMut;
use faer::traits::ComplexField;
use faer::{MatMut, MatRef, Par};

use super::split;
use crate::BiLinOp;
use crate::ops::Mode;

/// Whether this process is a forked worker of the process backend (no
/// threads but the one that forked; rayon must not be entered).
pub(crate) fn in_forked_worker() -> bool {
    #[cfg(unix)]
    return super::process::in_forked_worker();
    #[cfg(not(unix))]
    return false;
}

/// What every worker computes in one product: `op` in `mode` on its block
/// of columns, at once or (`use_matvec`) one column at a time, with
/// `Par::Seq`.
pub(crate) struct Work<'a, L> {
    pub(crate) op: &'a L,
    pub(crate) mode: Mode,
    pub(crate) use_matvec: bool,
}

impl<L> Clone for Work<'_, L> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<L> Copy for Work<'_, L> {}

impl<L> Work<'_, L> {
    /// One worker's block: `out = op_mode · rhs`.
    pub(crate) fn block<T: ComplexField>(&self, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>, stack: &mut MemStack)
    where
        L: BiLinOp<T>,
    {
        if !self.use_matvec {
            return self.mode.apply(self.op, out, rhs, Par::Seq, stack);
        }
        for j in 0..rhs.ncols() {
            self.mode.apply(self.op, out.rb_mut().subcols_mut(j, 1), rhs.subcols(j, 1), Par::Seq, stack);
        }
    }

    /// Scratch of the widest block when `k` columns are split into `nblocks`.
    pub(crate) fn scratch<T: ComplexField>(&self, k: usize, nblocks: usize) -> StackReq
    where
        L: BiLinOp<T>,
    {
        let width = if self.use_matvec { k.min(1) } else { split::widest(k, nblocks.max(1)) };
        self.mode.scratch(self.op, width, Par::Seq)
    }
}
