//! The agreement every collective call starts with, and the chunked
//! collectives (broadcast, gather, sum) the operators share.

use faer::MatMut;
use faer::dyn_stack::{MemStack, StackReq};
use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::raw::AsRaw;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Destination, Root, Source};

use std::ops::Range;

use super::comm::Session;
use crate::npz::NpzError;
use crate::parallel::{Error, Gather};

/// Why a rank cannot go on with a collective call: its message, and its
/// typed error when it has one (kept on that rank only).
#[derive(Debug)]
pub(crate) struct Fault {
    pub(crate) message: String,
    pub(crate) source: Option<NpzError>,
    /// A misuse of an operator (a call from the wrong thread, a nested
    /// call): it wins over every other fault in an agreement.
    misuse: bool,
}

impl Fault {
    pub(crate) fn new(message: String) -> Self {
        Self { message, source: None, misuse: false }
    }

    pub(crate) fn misuse(message: String) -> Self {
        Self { message, source: None, misuse: true }
    }
}

impl From<NpzError> for Fault {
    fn from(e: NpzError) -> Self {
        Self { message: e.to_string(), source: Some(e), misuse: false }
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
    // The lowest failing rank's fault, a misuse before any other.
    mine[2 * SETTINGS] = fault.as_ref().map_or(0, |f| (if f.misuse { 2 * size } else { size } - rank) as u64);
    let mut max = [0u64; 2 * SETTINGS + 1];
    comm.all_reduce_into(&mine[..], &mut max[..], SystemOperation::max());
    if max[2 * SETTINGS] != 0 {
        let v = max[2 * SETTINGS] as usize;
        let failing = if v > size { 2 * size - v } else { size - v };
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

/// Sums `send` (every rank's whole buffer, piece `r` of `len(r)` elements
/// for rank `r`, in rank order) over the ranks, rank `r` receiving the sum
/// of piece `r` into `recv`: one `MPI_Reduce_scatter` when every piece fits
/// a message of at most `max` elements (`counts`, of `p` entries, is its
/// scratch), else one chunked reduce to each rank.
pub(crate) fn reduce_scatter<T: Equivalence>(
    comm: &SimpleCommunicator,
    len: impl Fn(usize) -> usize,
    send: &[T],
    recv: &mut [T],
    counts: &mut [i32],
    max: usize,
) {
    let (p, rank, max) = (comm.size() as usize, comm.rank() as usize, max.max(1));
    assert!(counts.len() >= p && recv.len() == len(rank), "reduce_scatter: buffers too short");
    assert_eq!(send.len(), (0..p).map(&len).sum::<usize>(), "reduce_scatter: the pieces do not fill the buffer");
    if (0..p).all(|r| len(r) <= max.min(i32::MAX as usize)) {
        for (r, c) in counts[..p].iter_mut().enumerate() {
            *c = len(r) as i32;
        }
        // SAFETY: `send` holds the sum of `counts` elements and `recv` this
        // rank's count (asserted above), both of `T`'s MPI datatype; both are
        // borrowed for the duration of this blocking call.
        unsafe {
            mpi::ffi::MPI_Reduce_scatter(
                send.as_ptr().cast(),
                recv.as_mut_ptr().cast(),
                counts.as_ptr(),
                T::equivalent_datatype().as_raw(),
                SystemOperation::sum().as_raw(),
                comm.as_raw(),
            );
        }
        return;
    }
    let mut at = 0;
    for r in 0..p {
        let root = comm.process_at_rank(r as i32);
        for (i, chunk) in send[at..at + len(r)].chunks(max).enumerate() {
            if r == rank {
                root.reduce_into_root(chunk, &mut recv[i * max..][..chunk.len()], SystemOperation::sum());
            } else {
                root.reduce_into(chunk, SystemOperation::sum());
            }
        }
        at += len(r);
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

/// Sends piece `r` (`len(r)` elements, filled by `fill(r, piece)` on the
/// root) from `root` to each rank `r`, in messages of at most `max`
/// elements, one piece at a time (the root's own piece is not sent). The
/// other ranks call [`receive_piece`].
pub(crate) fn scatter<T: Equivalence + bytemuck::Pod>(
    comm: &SimpleCommunicator,
    root: usize,
    len: impl Fn(usize) -> usize,
    max: usize,
    mut fill: impl FnMut(usize, &mut [T]),
) {
    let max = max.max(1);
    let widest = (0..comm.size() as usize).filter(|&r| r != root).map(&len).max().unwrap_or(0);
    let mut piece = vec![T::zeroed(); widest];
    for r in (0..comm.size() as usize).filter(|&r| r != root) {
        let piece = &mut piece[..len(r)];
        fill(r, piece);
        let dest = comm.process_at_rank(r as i32);
        for chunk in piece.chunks(max) {
            dest.send(chunk);
        }
    }
}

/// This rank's piece of a [`scatter`] from `root`, into `buf`.
pub(crate) fn receive_piece<T: Equivalence>(comm: &SimpleCommunicator, root: usize, buf: &mut [T], max: usize) {
    let source = comm.process_at_rank(root as i32);
    for chunk in buf.chunks_mut(max.max(1)) {
        source.receive_into(chunk);
    }
}

/// Verifies a stored member's CRC-32 (of `span` bytes, `None` when it is
/// deflated) with every rank reading a contiguous share of its bytes
/// (`share(rank)`, the shares in rank order covering `0..span`): the shares'
/// CRC-32s are gathered on every rank and combined by `verify`, so that
/// every rank returns the same verdict. The ranks first agree on `span`.
pub(crate) fn verify_crc(
    s: &Session<'_>,
    span: Option<u64>,
    share: impl Fn(usize) -> Range<u64>,
    crc32_of: impl FnOnce(Range<u64>) -> Result<u32, NpzError>,
    verify: impl FnOnce(&mut dyn Iterator<Item = (u32, u64)>) -> Result<(), NpzError>,
) -> Result<(), Error> {
    s.agree(&[("the size of the checksummed member (u64::MAX: deflated)", span.unwrap_or(u64::MAX))], None)?;
    if span.is_none() {
        return Ok(());
    }
    let p = s.size();
    let mine = caught("checking the file's CRC-32", || crc32_of(share(s.rank())).map_err(Fault::from));
    let mine = s.outcome(mine)?;
    let mut all = vec![0u32; p];
    s.mpi(|c| c.all_gather_into(&mine, &mut all[..]));
    let mut parts = all.iter().enumerate().map(|(i, &crc)| (crc, share(i).end - share(i).start));
    let verdict = caught("checking the file's CRC-32", || verify(&mut parts).map_err(Fault::from));
    s.outcome(verdict)
}

/// A zeroed slice of `len` elements from `stack`.
pub(crate) fn temp_slice<T: bytemuck::Pod>(len: usize, stack: &mut MemStack) -> (&mut [T], &mut MemStack) {
    let (uninit, stack) = stack.make_aligned_uninit::<T>(len, 64);
    for x in uninit.iter_mut() {
        x.write(T::zeroed());
    }
    // SAFETY: every element was just initialized, and MaybeUninit<T> has T's layout.
    let slice = unsafe { &mut *(uninit as *mut [core::mem::MaybeUninit<T>] as *mut [T]) };
    (slice, stack)
}

/// Scratch of [`temp_slice`].
pub(crate) fn temp_slice_scratch<T>(len: usize) -> StackReq {
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
