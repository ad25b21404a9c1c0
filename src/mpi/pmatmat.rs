//! The MPI backend of [`pmatmat`](crate::parallel::pmatmat): rank `r`
//! computes column block `r`, and the blocks are gathered on rank 0 or on
//! every rank.

use faer::dyn_stack::{MemStack, StackReq};
use faer::reborrow::ReborrowMut;
use faer::{MatMut, MatRef};
use mpi::traits::Communicator;

use super::collective::{Pieces, as_contiguous, caught, gather, temp_slice, temp_slice_scratch};
use super::comm::Comm;
use crate::BiLinOp;
use crate::Scalar;
use crate::parallel::{Error, Gather, MpiOptions, Work, split};

/// The ranks of a communicator (its duplicate), as the workers of a `Pmatmat`.
#[derive(Debug)]
pub(crate) struct Ranks {
    comm: Comm,
    options: MpiOptions,
}

impl Ranks {
    /// Duplicates `comm` (collective).
    pub(crate) fn new<C: Communicator + ?Sized>(comm: &C, options: MpiOptions) -> Result<Self, Error> {
        Ok(Self { comm: Comm::new(comm)?, options })
    }

    /// Duplicates the world communicator (collective).
    pub(crate) fn world(options: MpiOptions) -> Result<Self, Error> {
        Ok(Self { comm: Comm::world()?, options })
    }

    pub(crate) fn nworkers(&self) -> usize {
        self.comm.size()
    }

    /// Scratch: this rank's block (where it has no place in the output),
    /// the gathered result (where the output is not contiguous), and the
    /// block's product.
    pub(crate) fn scratch<T: Scalar>(&self, m: usize, k: usize, unit: StackReq) -> StackReq {
        let p = self.comm.size();
        temp_slice_scratch::<T>(m * split::widest(k, p)).and(temp_slice_scratch::<T>(m * k)).and(unit)
    }

    /// `work` on column block `rank` here, the blocks gathered; a `small`
    /// product (less work than `min_parallel_work`, or one column) is
    /// computed whole on every rank.
    ///
    /// Every rank first agrees on the shapes, the mode and the settings,
    /// then computes its block (a panic is caught), then agrees on every
    /// rank's outcome, and only then gathers: a failure anywhere is the same
    /// error everywhere, and the operator stays usable.
    pub(crate) fn run<T: Scalar, L: BiLinOp<T>>(
        &self,
        work: Work<'_, L>,
        mut out: MatMut<'_, T>,
        rhs: MatRef<'_, T>,
        min_parallel_work: usize,
        small: bool,
        stack: &mut MemStack,
    ) -> Result<(), Error> {
        let max = (self.options.max_message_bytes / core::mem::size_of::<T>()).max(1);
        let gather_to = self.options.gather;
        let (m, n, k) = (out.nrows(), rhs.nrows(), rhs.ncols());
        let settings = [
            ("the output's rows", m as u64),
            ("the operand's rows", n as u64),
            ("the number of columns", k as u64),
            ("the product (0 L, 1 conj(L), 2 Lᵀ, 3 Lᴴ)", u64::from(work.mode.code())),
            ("gather (0 Root, 1 All)", u64::from(gather_to == Gather::All)),
            ("max_message_bytes", self.options.max_message_bytes as u64),
            ("min_parallel_work", min_parallel_work as u64),
            ("use_matvec", u64::from(work.use_matvec)),
        ];
        // The user's operator computes into zeros, whatever `out` held.
        let block = |mut out: MatMut<'_, T>, rhs: MatRef<'_, T>, stack: &mut MemStack| {
            out.fill(T::zeroed());
            caught("the operator, in its block of a product,", || {
                work.block(out, rhs, stack);
                Ok(())
            })
        };
        self.comm.collective(&settings, None, |s| {
            if small {
                // Every rank computes the whole (small) product: no message but the agreements.
                return s.outcome(block(out.rb_mut(), rhs, stack));
            }
            let (p, r) = (s.size(), s.rank());
            let cols = split::block(k, p, r);
            let width = |i: usize| m * split::block(k, p, i).len();
            let receives = gather_to == Gather::All || r == 0;
            let (mine, stack) = temp_slice::<T>(m * split::widest(k, p), stack);
            let (staging, stack) = temp_slice::<T>(m * k, stack);
            if !receives {
                let local = MatMut::from_column_major_slice_mut(&mut mine[..m * cols.len()], m, cols.len());
                s.outcome(block(local, rhs.subcols(cols.start, cols.len()), stack))?;
                s.mpi(|c| gather(c, gather_to, width, Pieces::Mine(&mine[..m * cols.len()]), max));
                return Ok(());
            }
            // Compute this rank's block in place in the gathered result, then gather.
            let mut compute_and_gather = |all: &mut [T]| {
                let local = MatMut::from_column_major_slice_mut(&mut all[m * cols.start..m * cols.end], m, cols.len());
                s.outcome(block(local, rhs.subcols(cols.start, cols.len()), stack))?;
                s.mpi(|c| gather(c, gather_to, width, Pieces::All(all), max));
                Ok(())
            };
            match as_contiguous(&mut out) {
                Some(all) => compute_and_gather(all),
                None => {
                    compute_and_gather(&mut staging[..])?;
                    out.copy_from(MatRef::from_column_major_slice(&staging[..], m, k));
                    Ok(())
                }
            }
        })
    }
}
