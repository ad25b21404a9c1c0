//! The thread backend: a rayon pool created with the operator; the output
//! is split in place into column blocks, one per worker, with no copy of the
//! operand or of the output.
//!
//! The blocks are handed out by recursive halving with `rayon::join` inside
//! the pool, and each block gets its own piece of the caller's scratch, so a
//! product allocates nothing on the heap. A panic in a block reaches the
//! caller (rayon waits for the other blocks, then resumes the panic) and the
//! pool stays usable. The only heap allocation is rayon's own job queue,
//! which takes one block of 63 slots every 63 products (tests/alloc.rs
//! checks it). One operator may be used from several threads at once.
//!
//! In a forked process worker (the process backend), where rayon's threads
//! do not exist, the blocks run in turn on the calling thread.

use faer::dyn_stack::{MemStack, StackReq};
use faer::traits::ComplexField;
use faer::{MatMut, MatRef};

use super::{Error, Work, split};
use crate::BiLinOp;

/// A rayon pool of `nworkers` threads, owned by one operator.
#[derive(Debug)]
pub(crate) struct Threads {
    pool: rayon::ThreadPool,
}

impl Threads {
    pub(crate) fn new(nworkers: usize) -> Result<Self, Error> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(nworkers)
            .thread_name(|i| format!("lazylinop-{i}"))
            .build()
            .map_err(Error::ThreadPool)?;
        Ok(Self { pool })
    }

    pub(crate) fn nworkers(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// `work` over `nblocks` column blocks of `out` and `rhs`.
    pub(crate) fn run<T: ComplexField, L: BiLinOp<T>>(
        &self,
        work: Work<'_, L>,
        out: MatMut<'_, T>,
        rhs: MatRef<'_, T>,
        nblocks: usize,
        stack: &mut MemStack,
    ) {
        let k = rhs.ncols();
        let unit = work.scratch(k, nblocks);
        // In a forked worker process there are no pool threads to hand work
        // to: the blocks run one after the other there.
        let parallel = nblocks > 1 && !super::in_forked_worker();
        let job = Blocks { work, k, nblocks, unit, parallel };
        if parallel {
            self.pool.install(|| job.run(0..nblocks, out, rhs, stack));
        } else {
            job.run(0..nblocks, out, rhs, stack);
        }
    }
}

/// Scratch for one product over `nblocks` blocks, each needing `unit`.
pub(crate) fn scratch(nblocks: usize, unit: StackReq) -> StackReq {
    tree_scratch(nblocks, unit)
}

/// Scratch of `n` blocks cut the way [`Blocks::run`] cuts them: the left
/// half's piece, then the right half's.
fn tree_scratch(n: usize, unit: StackReq) -> StackReq {
    if n <= 1 {
        return unit;
    }
    let left = n / 2;
    tree_scratch(left, unit).and(tree_scratch(n - left, unit))
}

/// One product, split into `nblocks` column blocks.
struct Blocks<'a, L> {
    work: Work<'a, L>,
    k: usize,
    nblocks: usize,
    unit: StackReq,
    parallel: bool,
}

impl<L> Blocks<'_, L> {
    /// Computes the blocks `range` (whose columns `out` and `rhs` hold),
    /// halving the range across `rayon::join` (or in turn, when not
    /// parallel) until one block is left.
    fn run<T: ComplexField>(
        &self,
        range: core::ops::Range<usize>,
        out: MatMut<'_, T>,
        rhs: MatRef<'_, T>,
        stack: &mut MemStack,
    ) where
        L: BiLinOp<T>,
    {
        if range.len() <= 1 {
            return self.work.block(out, rhs, stack);
        }
        let mid = range.start + range.len() / 2;
        let col = split::block(self.k, self.nblocks, mid).start - split::block(self.k, self.nblocks, range.start).start;
        let (out_l, out_r) = out.split_at_col_mut(col);
        let (rhs_l, rhs_r) = rhs.split_at_col(col);
        let req = tree_scratch(mid - range.start, self.unit);
        let (buf, stack_r) = stack.make_aligned_uninit::<u8>(req.size_bytes(), req.align_bytes());
        let stack_l = MemStack::new(buf);
        let left = || self.run(range.start..mid, out_l, rhs_l, stack_l);
        let right = || self.run(mid..range.end, out_r, rhs_r, stack_r);
        if self.parallel {
            rayon::join(left, right);
        } else {
            left();
            right();
        }
    }
}
