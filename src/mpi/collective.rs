//! The agreement every collective call starts with, and the chunked
//! collectives (broadcast, gather, sum) the operators share.

use faer::MatMut;
use faer::dyn_stack::{MemStack, StackReq};
use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Destination, Root, Source};

use crate::Scalar;
use crate::npz::NpzError;
use crate::parallel::{Error, Gather};

/// Why a rank cannot go on with a collective call: its message, and its
/// typed error when it has one (kept on that rank only).
#[derive(Debug)]
pub(crate) struct Fault {
    pub(crate) message: String,
    pub(crate) source: Option<NpzError>,
}

impl Fault {
    pub(crate) fn new(message: String) -> Self {
        Self { message, source: None }
    }
}

impl From<NpzError> for Fault {
    fn from(e: NpzError) -> Self {
        Self { message: e.to_string(), source: Some(e) }
    }
}

/// The most settings one agreement carries.
const SETTINGS: usize = 8;

/// One small allreduce: every rank learns whether any rank has a fault
/// (then all return the lowest failing rank's error, its message broadcast
/// from it) and whether all ranks have the same `settings` (then all return
/// the same [`Error::Mpi`] naming what differs). Every rank must call it at
/// the same point; the layout is the same for every call, so an agreement
/// that carries no settings (a fault owed by an earlier call) still pairs
/// with any other.
pub(crate) fn agree(
    comm: &SimpleCommunicator,
    settings: &[(&'static str, u64)],
    fault: Option<Fault>,
) -> Result<(), Error> {
    assert!(settings.len() <= SETTINGS, "at most {SETTINGS} settings per agreement");
    let (size, rank) = (comm.size() as usize, comm.rank() as usize);
    // The maximum of each value and of its complement: its maximum and minimum.
    let mut mine = [0u64; 2 * SETTINGS + 1];
    for (i, &(_, v)) in settings.iter().enumerate() {
        mine[i] = v;
        mine[SETTINGS + i] = !v;
    }
    mine[2 * SETTINGS] = fault.as_ref().map_or(0, |_| (size - rank) as u64);
    let mut max = [0u64; 2 * SETTINGS + 1];
    comm.all_reduce_into(&mine[..], &mut max[..], SystemOperation::max());
    if max[2 * SETTINGS] != 0 {
        let failing = size - max[2 * SETTINGS] as usize;
        let root = comm.process_at_rank(failing as i32);
        let (mut bytes, source) = match fault {
            Some(f) if rank == failing => (f.message.into_bytes(), f.source),
            _ => (Vec::new(), None),
        };
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        root.broadcast_into(&mut bytes[..]);
        let message = String::from_utf8_lossy(&bytes).into_owned();
        return Err(Error::Rank { rank: failing, message, source });
    }
    let differ: Vec<String> = settings
        .iter()
        .enumerate()
        .filter(|&(i, _)| max[i] != !max[SETTINGS + i])
        .map(|(i, (name, _))| format!("{name} (from {} to {})", !max[SETTINGS + i], max[i]))
        .collect();
    if !differ.is_empty() {
        return Err(Error::Mpi(format!(
            "the ranks disagree on {}: every rank must make the same products with the same settings",
            differ.join(", ")
        )));
    }
    Ok(())
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
/// every rank, in messages of at most `max` elements. The communicator is
/// the operator's own duplicate: no other message can match its receives.
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

/// `f()`, a panic caught as this rank's fault (`what` panicked: its message),
/// so that it becomes an error on every rank instead of leaving the others
/// waiting.
pub(crate) fn caught<V>(what: &str, f: impl FnOnce() -> Result<V, Fault>) -> Result<V, Fault> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|payload| Err(Fault::new(format!("{what} panicked: {}", panic_message(&*payload)))))
}

/// The message of a caught panic.
fn panic_message(payload: &(dyn core::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".into())
}
