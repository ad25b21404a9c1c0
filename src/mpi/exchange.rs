//! The halo exchange: the plan (who sends which entries to whom), built
//! once, collectively, and run at each distributed product, forward (the
//! owners send their entries to the ranks that hold them as ghosts) or in
//! reverse (the ghosts' contributions go back to their owners, summed).

use core::mem::MaybeUninit;
use core::ops::Range;
use std::os::raw::c_int;

use faer::dyn_stack::StackReq;
use mpi::datatype::Equivalence;
use mpi::ffi::MPI_Request;
use mpi::raw::AsRaw;
use mpi::topology::SimpleCommunicator;
use mpi::traits::CommunicatorCollectives;

use super::collective::Fault;
use super::comm::Session;
use crate::halo::{HaloStats, by_owner};

/// The tag of every halo message (on the operator's own communicator).
const TAG: c_int = 0x4a10;

/// Who exchanges what with whom, per column of the operand, for one rank.
#[derive(Clone, Debug, Default)]
pub(crate) struct HaloPlan {
    /// `(rank, ghost slots)`: the ghosts each owner sends this rank, by
    /// increasing rank; the slots tile `0..ghosts`.
    recv: Vec<(usize, Range<usize>)>,
    /// `(rank, range of send_idx)`: what this rank sends each, by increasing rank.
    send: Vec<(usize, Range<usize>)>,
    /// This rank's local indices (of the entries it owns) to send, concatenated.
    send_idx: Vec<usize>,
}

impl HaloPlan {
    /// The plan of `ghosts` (sorted global indices this rank needs, owned by
    /// others), the operand split by `offsets` (`p + 1`): an all-to-all of
    /// the counts, then of the indices, inside one collective call. Every
    /// rank checks the indices it is asked for (they must be its own).
    ///
    /// # Errors
    /// A rank's fault (agreed) if the indices others ask of it are not its
    /// own, or an exchange is too large for MPI's 32-bit counts.
    pub(crate) fn build(s: &Session<'_>, offsets: &[usize], ghosts: &[usize]) -> Result<Self, crate::parallel::Error> {
        let (p, rank) = (s.size(), s.rank());
        let mut recv = Vec::new();
        let mut at = 0;
        for (q, n) in by_owner(offsets, ghosts) {
            recv.push((q, at..at + n));
            at += n;
        }
        let fits = |n: usize| i32::try_from(n).is_ok();
        let too_large = (!fits(ghosts.len())).then(|| {
            Fault::new(format!("rank {rank} has {} ghosts, more than MPI's 32-bit counts allow", ghosts.len()))
        });
        s.outcome(too_large.map_or(Ok(()), Err))?;
        let mut want = vec![0i32; p];
        for (q, slots) in &recv {
            want[*q] = slots.len() as i32;
        }
        let mut asked = vec![0i32; p];
        s.mpi(|c| c.all_to_all_into(&want[..], &mut asked[..]));
        let total: usize = asked.iter().map(|&n| n.max(0) as usize).sum();
        let bad = (!fits(total)).then(|| {
            Fault::new(format!("rank {rank} is asked for {total} entries, more than MPI's 32-bit counts allow"))
        });
        s.outcome(bad.map_or(Ok(()), Err))?;
        let displs = |counts: &[i32]| {
            counts
                .iter()
                .scan(0i32, |acc, &n| {
                    let d = *acc;
                    *acc += n;
                    Some(d)
                })
                .collect::<Vec<i32>>()
        };
        let (send_displs, recv_displs) = (displs(&want), displs(&asked));
        let requested: Vec<u64> = ghosts.iter().map(|&g| g as u64).collect();
        let mut asked_for = vec![0u64; total];
        s.mpi(|c| {
            let send = mpi::datatype::Partition::new(&requested[..], &want[..], &send_displs[..]);
            let mut recv = mpi::datatype::PartitionMut::new(&mut asked_for[..], &asked[..], &recv_displs[..]);
            c.all_to_all_varcount_into(&send, &mut recv);
        });
        let own = offsets[rank]..offsets[rank + 1];
        let check = match asked_for.iter().find(|&&g| !own.contains(&(g as usize))) {
            Some(g) => Err(Fault::new(format!("rank {rank} was asked for entry {g}, which it does not own ({own:?})"))),
            None => Ok(()),
        };
        s.outcome(check)?;
        let send_idx = asked_for.iter().map(|&g| g as usize - own.start).collect();
        let send = (0..p)
            .filter(|&q| asked[q] > 0)
            .map(|q| (q, recv_displs[q] as usize..(recv_displs[q] + asked[q]) as usize))
            .collect();
        Ok(HaloPlan { recv, send, send_idx })
    }

    /// The ghosts this rank receives.
    pub(crate) fn ghosts(&self) -> usize {
        self.recv.last().map_or(0, |r| r.1.end)
    }

    /// The entries this rank sends.
    pub(crate) fn sent(&self) -> usize {
        self.send_idx.len()
    }

    /// This rank's local indices to send, concatenated by destination.
    pub(crate) fn send_idx(&self) -> &[usize] {
        &self.send_idx
    }

    /// The rank's statistics (see [`HaloStats`]).
    pub(crate) fn stats(&self, part: usize, rows: usize, cols: usize, nnz: (usize, usize)) -> HaloStats {
        HaloStats {
            part,
            rows,
            cols,
            nnz,
            ghosts: self.ghosts(),
            recv_from: self.recv.iter().map(|(q, r)| (*q, r.len())).collect(),
            send_to: self.send.iter().map(|(q, r)| (*q, r.len())).collect(),
        }
    }

    /// The number of messages of an exchange of `k` columns in messages of
    /// at most `max` elements, each way.
    pub(crate) fn messages(&self, k: usize, max: usize) -> usize {
        let max = max.max(1);
        let count =
            |segs: &[(usize, Range<usize>)]| segs.iter().map(|(_, r)| (r.len() * k).div_ceil(max)).sum::<usize>();
        count(&self.recv) + count(&self.send)
    }

    /// Scratch of [`forward`](Self::forward) and [`reverse`](Self::reverse)
    /// (the requests; the buffers are the caller's).
    pub(crate) fn scratch(&self, k: usize, max: usize) -> StackReq {
        StackReq::new::<MaybeUninit<MPI_Request>>(self.messages(k, max.max(1)))
    }

    /// The forward exchange of `k` columns: `ghost_buf` (`ghosts · k`,
    /// row-major: each owner's rows are one piece) receives the ghosts while
    /// `send_buf` (`sent · k`, row-major, packed by the caller from
    /// [`send_idx`](Self::send_idx)) goes out; `meanwhile` runs between the
    /// posts and the wait, given a function that moves the messages on (see
    /// [`exchange`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward<T: Equivalence, R>(
        &self,
        s: &Session<'_>,
        ghost_buf: &mut [T],
        send_buf: &[T],
        k: usize,
        max: usize,
        reqs: &mut [MaybeUninit<MPI_Request>],
        meanwhile: impl FnOnce(&mut dyn FnMut()) -> R,
    ) -> R {
        exchange(s, (ghost_buf, &self.recv), (send_buf, &self.send), k, max, reqs, meanwhile)
    }

    /// The reverse exchange: `ghost_buf` (`ghosts · k`, this rank's
    /// contributions to others' entries) goes to the owners, and `recv_buf`
    /// (`sent · k`) receives the contributions to this rank's entries at
    /// [`send_idx`](Self::send_idx), for the caller to add.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn reverse<T: Equivalence, R>(
        &self,
        s: &Session<'_>,
        recv_buf: &mut [T],
        ghost_buf: &[T],
        k: usize,
        max: usize,
        reqs: &mut [MaybeUninit<MPI_Request>],
        meanwhile: impl FnOnce(&mut dyn FnMut()) -> R,
    ) -> R {
        exchange(s, (recv_buf, &self.send), (ghost_buf, &self.recv), k, max, reqs, meanwhile)
    }
}

/// Posts a receive into `recv.0` for each `(rank, rows)` of `recv.1` and a
/// send from `send.0` for each of `send.1` (rows of `k` elements, messages
/// of at most `max`), runs `meanwhile`, then waits for every message.
///
/// `meanwhile` is given `progress`, which lets MPI move the messages on
/// (an `MPI_Testall`, a microsecond): an MPI library moves a large message
/// only inside its calls (the receiver, once it has matched the sender's
/// announcement, copies the data and tells the sender), so without calls
/// during the local product every message would wait for both ranks to
/// reach the wait (measured in BENCHMARKS.md's distributed section).
fn exchange<T: Equivalence, R>(
    s: &Session<'_>,
    recv: (&mut [T], &[(usize, Range<usize>)]),
    send: (&[T], &[(usize, Range<usize>)]),
    k: usize,
    max: usize,
    reqs: &mut [MaybeUninit<MPI_Request>],
    meanwhile: impl FnOnce(&mut dyn FnMut()) -> R,
) -> R {
    let max = max.max(1);
    let (rbuf, rsegs) = recv;
    let (sbuf, ssegs) = send;
    let count = |segs: &[(usize, Range<usize>)]| segs.iter().map(|(_, r)| (r.len() * k).div_ceil(max)).sum::<usize>();
    let n = count(rsegs) + count(ssegs);
    // Every check before the first post: nothing below panics until the wait.
    assert!(rsegs.iter().all(|(_, r)| r.end * k <= rbuf.len()), "halo receive buffer too short");
    assert!(ssegs.iter().all(|(_, r)| r.end * k <= sbuf.len()), "halo send buffer too short");
    let max = max.min(i32::MAX as usize);
    assert!(reqs.len() >= n && i32::try_from(n).is_ok(), "{} requests for {n} halo messages", reqs.len());
    let datatype = T::equivalent_datatype();
    let posted = s.mpi(|c: &SimpleCommunicator| {
        let raw = c.as_raw();
        let mut i = 0;
        let base = rbuf.as_mut_ptr();
        for (q, rows) in rsegs {
            let (mut at, end) = (rows.start * k, rows.end * k);
            while at < end {
                let len = (end - at).min(max);
                // SAFETY: `at + len <= rbuf.len()` (asserted above), and `rbuf` is
                // borrowed mutably until every request is waited for below, so no
                // one else reads or writes it meanwhile; `reqs[i]` is written by MPI.
                // The pieces of different requests do not overlap (the ranges
                // tile the buffer).
                unsafe {
                    mpi::ffi::MPI_Irecv(
                        base.add(at).cast(),
                        len as c_int,
                        datatype.as_raw(),
                        *q as c_int,
                        TAG,
                        raw,
                        reqs[i].as_mut_ptr(),
                    );
                }
                (at, i) = (at + len, i + 1);
            }
        }
        for (q, rows) in ssegs {
            let (mut at, end) = (rows.start * k, rows.end * k);
            while at < end {
                let len = (end - at).min(max);
                // SAFETY: as above, for reading `sbuf`, borrowed until the wait.
                unsafe {
                    mpi::ffi::MPI_Isend(
                        sbuf.as_ptr().add(at).cast(),
                        len as c_int,
                        datatype.as_raw(),
                        *q as c_int,
                        TAG,
                        raw,
                        reqs[i].as_mut_ptr(),
                    );
                }
                (at, i) = (at + len, i + 1);
            }
        }
        i
    });
    debug_assert_eq!(posted, n);
    let mut progress = || {
        if n > 0 {
            let mut done: c_int = 0;
            s.mpi(|_| {
                // SAFETY: as for the wait below: `reqs[..n]` were initialized by
                // the posts; a request MPI_Testall completes becomes
                // MPI_REQUEST_NULL, which the wait accepts.
                unsafe {
                    mpi::ffi::MPI_Testall(
                        n as c_int,
                        reqs.as_mut_ptr().cast(),
                        &mut done,
                        mpi::ffi::RSMPI_STATUSES_IGNORE,
                    )
                };
            });
        }
    };
    // The buffers stay borrowed until the wait, even if `meanwhile` panics.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| meanwhile(&mut progress)));
    s.mpi(|_| {
        // SAFETY: `reqs[..n]` were all initialized by the posts above; MPI_Waitall
        // completes them (the buffers are released only after it returns).
        unsafe { mpi::ffi::MPI_Waitall(n as c_int, reqs.as_mut_ptr().cast(), mpi::ffi::RSMPI_STATUSES_IGNORE) };
    });
    result.unwrap_or_else(|payload| std::panic::resume_unwind(payload))
}
