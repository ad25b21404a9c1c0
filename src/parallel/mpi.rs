//! The MPI backend (feature `mpi`): each rank computes its block of
//! columns, and the blocks are gathered on rank 0 or on every rank; and the
//! chunked collectives that [`MpiLop`](crate::mpilop::MpiLop) shares.
//!
//! Programs are SPMD: every rank builds the same operator and calls the same
//! products, in the same order, with operands of the same shape. Shapes are
//! checked across ranks before each product (one small allreduce), so a
//! mismatch is the same error on every rank instead of a hang.
//!
//! # Message sizes
//! MPI counts are 32-bit. Every transfer here is split into messages of at
//! most [`DEFAULT_MAX_MESSAGE`] elements (settable, to test the chunking
//! with tiny messages).
//!
//! # Threads
//! rsmpi's communicators are neither `Send` nor `Sync` (an OpenMPI handle is
//! a pointer), while faer's operators must be `Sync`. The communicator is
//! wrapped so that every use takes a mutex (one collective at a time per
//! operator) and checks the MPI threading level: with `Single` or
//! `Funneled`, products must run on the thread that initialized MPI (an
//! error otherwise); with `Serialized` or `Multiple`, on any thread.

use std::sync::Mutex;

use faer::dyn_stack::{MemStack, StackReq};
use faer::{MatMut, MatRef};
use mpi::Threading;
use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Destination, Root, Source};

pub use super::Gather;
use super::{Error, MpiOptions, Scalar, Work, split};
use crate::BiLinOp;

/// The largest message, in elements: MPI's counts are `i32`.
pub const DEFAULT_MAX_MESSAGE: usize = i32::MAX as usize;

/// A communicator that can sit in a `Sync` operator: see the module docs.
pub(crate) struct SharedComm {
    comm: SimpleCommunicator,
    lock: Mutex<()>,
    pub(crate) max_message: usize,
}

impl core::fmt::Debug for SharedComm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedComm")
            .field("rank", &self.comm.rank())
            .field("size", &self.comm.size())
            .field("max_message", &self.max_message)
            .finish()
    }
}

// SAFETY: the communicator is only used inside `SharedComm::with`, which
// holds `lock` (so one thread at a time uses it) and refuses threads other
// than MPI's main thread unless MPI was initialized with `Serialized` or
// `Multiple`, the levels at which MPI allows calls from any thread, one at a
// time. Moving the handle between threads is covered by the same check.
unsafe impl Send for SharedComm {}
// SAFETY: as above.
unsafe impl Sync for SharedComm {}

impl SharedComm {
    /// Wraps `comm`.
    ///
    /// # Errors
    /// [`Error::Mpi`] if MPI is not initialized (or already finalized).
    pub(crate) fn new(comm: SimpleCommunicator) -> Result<Self, Error> {
        if !mpi::is_initialized() || mpi::is_finalized() {
            return Err(Error::Mpi(
                "MPI is not initialized: call mpi::initialize() and keep its Universe alive".into(),
            ));
        }
        Ok(Self { comm, lock: Mutex::new(()), max_message: DEFAULT_MAX_MESSAGE })
    }

    /// The world communicator.
    pub(crate) fn world() -> Result<Self, Error> {
        if !mpi::is_initialized() {
            return Err(Error::Mpi(
                "MPI is not initialized: call mpi::initialize() and keep its Universe alive".into(),
            ));
        }
        Self::new(SimpleCommunicator::world())
    }

    pub(crate) fn size(&self) -> usize {
        self.comm.size() as usize
    }

    pub(crate) fn rank(&self) -> usize {
        self.comm.rank() as usize
    }

    /// Runs `f` with the communicator, one thread at a time, from a thread
    /// MPI allows.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&SimpleCommunicator) -> R) -> Result<R, Error> {
        if mpi::is_finalized() {
            return Err(Error::Mpi("MPI was finalized (its Universe was dropped)".into()));
        }
        if matches!(mpi::environment::threading_support(), Threading::Single | Threading::Funneled) {
            let mut main = 0;
            // SAFETY: MPI_Is_thread_main only writes the flag; MPI is initialized.
            unsafe { mpi::ffi::MPI_Is_thread_main(&mut main) };
            if main == 0 {
                return Err(Error::Mpi(
                    "MPI was initialized with threading Single or Funneled: products must run on the thread \
                     that initialized it (or initialize with Threading::Serialized or Multiple)"
                        .into(),
                ));
            }
        }
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        Ok(f(&self.comm))
    }
}

/// Checks that every rank has the same `values`; the same error everywhere otherwise.
pub(crate) fn agree_on(comm: &SimpleCommunicator, what: &str, values: [usize; 3]) -> Result<(), Error> {
    let mine: [i64; 6] = [
        values[0] as i64,
        values[1] as i64,
        values[2] as i64,
        -(values[0] as i64),
        -(values[1] as i64),
        -(values[2] as i64),
    ];
    let mut max = [0i64; 6];
    comm.all_reduce_into(&mine[..], &mut max[..], SystemOperation::max());
    let (hi, lo) = ([max[0], max[1], max[2]], [-max[3], -max[4], -max[5]]);
    if hi != lo {
        return Err(Error::Mpi(format!("the ranks disagree on {what}: from {lo:?} to {hi:?} across ranks")));
    }
    Ok(())
}

/// Every rank learns whether any rank failed; all return the error of the
/// lowest failing rank, with its message.
pub(crate) fn agree<V>(comm: &SimpleCommunicator, local: Result<V, String>) -> Result<V, Error> {
    let size = comm.size();
    let mine = if local.is_err() { comm.rank() } else { size };
    let mut first = size;
    comm.all_reduce_into(&mine, &mut first, SystemOperation::min());
    if first == size {
        return Ok(local.unwrap_or_else(|_| unreachable!()));
    }
    let root = comm.process_at_rank(first);
    let mut message = match &local {
        Err(m) if comm.rank() == first => m.clone().into_bytes(),
        _ => Vec::new(),
    };
    let mut len = message.len() as u64;
    root.broadcast_into(&mut len);
    message.resize(len as usize, 0);
    root.broadcast_into(&mut message[..]);
    Err(Error::Rank { rank: first as usize, message: String::from_utf8_lossy(&message).into_owned() })
}

/// `buf` from `root` to every rank, in messages of at most `max` elements.
pub(crate) fn broadcast<T: Equivalence>(comm: &SimpleCommunicator, root: usize, buf: &mut [T], max: usize) {
    for chunk in buf.chunks_mut(max.max(1)) {
        comm.process_at_rank(root as i32).broadcast_into(chunk);
    }
}

/// Reduces (sums) `send` into `recv` on rank 0 or on every rank, in
/// messages of at most `max` elements. `recv` is only touched where the
/// result goes.
pub(crate) fn reduce_sum<T: Equivalence>(
    comm: &SimpleCommunicator,
    gather: Gather,
    send: &[T],
    recv: &mut [T],
    max: usize,
) {
    let max = max.max(1);
    let root = comm.process_at_rank(0);
    for (i, chunk) in send.chunks(max).enumerate() {
        match gather {
            Gather::All => comm.all_reduce_into(chunk, &mut recv[i * max..][..chunk.len()], SystemOperation::sum()),
            Gather::Root if comm.rank() == 0 => {
                root.reduce_into_root(chunk, &mut recv[i * max..][..chunk.len()], SystemOperation::sum())
            }
            Gather::Root => root.reduce_into(chunk, SystemOperation::sum()),
        }
    }
}

/// Where a rank's pieces are during [`gather`].
pub(crate) enum Pieces<'a, T> {
    /// On a rank that receives: the whole buffer, piece `r` at the offset of
    /// the pieces before it, this rank's own piece already in place.
    All(&'a mut [T]),
    /// On a rank that only sends: its piece.
    Mine(&'a [T]),
}

/// Gathers piece `r` (`len(r)` elements, from rank `r`) on rank 0 or on
/// every rank, in messages of at most `max` elements.
pub(crate) fn gather<T: Equivalence>(
    comm: &SimpleCommunicator,
    gather: Gather,
    len: impl Fn(usize) -> usize,
    pieces: Pieces<'_, T>,
    max: usize,
) {
    let (size, rank, max) = (comm.size() as usize, comm.rank() as usize, max.max(1));
    match (gather, pieces) {
        (Gather::All, Pieces::All(buf)) => {
            let mut offset = 0;
            for r in 0..size {
                broadcast(comm, r, &mut buf[offset..offset + len(r)], max);
                offset += len(r);
            }
        }
        (Gather::Root, Pieces::All(buf)) => {
            debug_assert_eq!(rank, 0);
            let mut offset = len(0);
            for r in 1..size {
                let source = comm.process_at_rank(r as i32);
                for chunk in buf[offset..offset + len(r)].chunks_mut(max) {
                    source.receive_into(chunk);
                }
                offset += len(r);
            }
        }
        (_, Pieces::Mine(mine)) => {
            debug_assert!(gather == Gather::Root && rank != 0);
            let root = comm.process_at_rank(0);
            for chunk in mine.chunks(max) {
                root.send(chunk);
            }
        }
    }
}

/// A zeroed slice of `len` elements from `stack`.
pub(crate) fn temp_slice<T: Scalar>(len: usize, stack: &mut MemStack) -> (&mut [T], &mut MemStack) {
    let (uninit, stack) = stack.make_aligned_uninit::<T>(len, 64);
    for x in uninit.iter_mut() {
        x.write(T::zeroed());
    }
    // SAFETY: every element was just initialized, and MaybeUninit<T> has T's layout.
    let slice = unsafe { &mut *(uninit as *mut [core::mem::MaybeUninit<T>] as *mut [T]) };
    (slice, stack)
}

/// Scratch of [`temp_slice`].
pub(crate) fn temp_slice_scratch<T: Scalar>(len: usize) -> StackReq {
    StackReq::new_aligned::<T>(len, 64)
}

/// `out` as one slice, if its entries are contiguous in column-major order.
pub(crate) fn as_contiguous<'a, T>(out: &'a mut MatMut<'_, T>) -> Option<&'a mut [T]> {
    let (m, k) = (out.nrows(), out.ncols());
    let contiguous = m == 0 || k == 0 || (out.row_stride() == 1 && (k == 1 || out.col_stride() == m as isize));
    if !contiguous {
        return None;
    }
    if m == 0 || k == 0 {
        return Some(&mut []);
    }
    // SAFETY: the m·k entries of `out` are contiguous (checked above) and
    // `out` is borrowed mutably for the slice's lifetime.
    Some(unsafe { core::slice::from_raw_parts_mut(out.as_ptr_mut(), m * k) })
}

/// The ranks of a communicator, as the workers of a `Pmatmat`.
#[derive(Debug)]
pub(crate) struct Ranks {
    pub(crate) comm: SharedComm,
    pub(crate) options: MpiOptions,
}

impl Ranks {
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
    /// product is computed whole on every rank.
    pub(crate) fn run<T: Scalar, L: BiLinOp<T>>(
        &self,
        work: Work<'_, L>,
        mut out: MatMut<'_, T>,
        rhs: MatRef<'_, T>,
        small: bool,
        stack: &mut MemStack,
    ) -> Result<(), Error> {
        let max = (self.options.max_message_bytes / core::mem::size_of::<T>()).max(1);
        let gather_to = self.options.gather;
        self.comm.with(|comm| {
            let (m, n, k) = (out.nrows(), rhs.nrows(), rhs.ncols());
            agree_on(comm, "the product's shapes (out rows, operand rows, columns)", [m, n, k])?;
            if small {
                // Every rank computes the whole (small) product: no message at all.
                work.block(out, rhs, stack);
                return Ok(());
            }
            let (p, r) = (comm.size() as usize, comm.rank() as usize);
            let cols = split::block(k, p, r);
            let width = |i: usize| m * split::block(k, p, i).len();
            let receives = gather_to == Gather::All || r == 0;
            let (mine, stack) = temp_slice::<T>(m * split::widest(k, p), stack);
            let (staging, stack) = temp_slice::<T>(m * k, stack);
            if !receives {
                let local = MatMut::from_column_major_slice_mut(&mut mine[..m * cols.len()], m, cols.len());
                work.block(local, rhs.subcols(cols.start, cols.len()), stack);
                gather(comm, gather_to, width, Pieces::Mine(&mine[..m * cols.len()]), max);
                return Ok(());
            }
            // Compute this rank's block in place in the gathered result, then gather.
            let mut compute_and_gather = |all: &mut [T]| {
                let local = MatMut::from_column_major_slice_mut(&mut all[m * cols.start..m * cols.end], m, cols.len());
                work.block(local, rhs.subcols(cols.start, cols.len()), stack);
                gather(comm, gather_to, width, Pieces::All(all), max);
            };
            match as_contiguous(&mut out) {
                Some(all) => compute_and_gather(all),
                None => {
                    compute_and_gather(&mut staging[..]);
                    out.copy_from(MatRef::from_column_major_slice(&staging[..], m, k));
                }
            }
            Ok(())
        })?
    }
}
