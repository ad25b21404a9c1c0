//! Workers forked for each product (`procs_created_once = false`).
//!
//! Each child gets its own socket and sends one `Report` as soon as its
//! block is written, then leaves; the parent does not wait for the child's
//! exit (tearing down its copy of the address space costs as much as the
//! fork): the operator's `Keeper` thread reaps it when it ends. A child
//! that dies without reporting is seen through its pidfd and reaped at once.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use faer::dyn_stack::MemStack;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::traits::math_utils::zero;
use faer::{MatMut, MatRef};
use nix::unistd::{ForkResult, fork};

use super::keeper::Keeper;
use super::protocol::{
    Child, Deadline, ExitCode, GroupSignalsBlocked, Keep, Lost, Outcome, Report, enter_child, exit_child, send,
    socket_pair, wait_reports,
};
use super::shm::{SharedBuf, is_shared};
use super::{os, panic_message};
use crate::BiLinOp;
use crate::parallel::{Error, Scalar, Work, split};

/// The per-product backend: a worker count, the shared buffer the children
/// write into (kept from one product to the next), and the thread that
/// reaps the children.
#[derive(Debug)]
pub(crate) struct PerProduct {
    nworkers: usize,
    deadline: Option<Duration>,
    shared: Mutex<Option<SharedBuf>>,
    keeper: Keeper,
}

impl PerProduct {
    pub(crate) fn new(nworkers: usize, deadline: Option<Duration>) -> Result<Self, Error> {
        Ok(Self { nworkers, deadline, shared: Mutex::new(None), keeper: Keeper::new()? })
    }

    pub(crate) fn nworkers(&self) -> usize {
        self.nworkers
    }

    pub(crate) fn owned_here(&self) -> bool {
        self.keeper.owned_here()
    }

    /// `work`: blocks `0..nblocks - 1` in forked children, the last one here.
    pub(crate) fn run<T: Scalar, L: BiLinOp<T>>(
        &self,
        work: Work<'_, L>,
        mut out: MatMut<'_, T>,
        rhs: MatRef<'_, T>,
        nblocks: usize,
        stack: &mut MemStack,
    ) -> Result<(), Error> {
        let deadline = Deadline::start(self.deadline);
        let (m, k) = (out.nrows(), out.ncols());
        let nchildren = nblocks - 1;
        let child_cols = split::block(k, nblocks, nchildren).start;
        let in_place = is_shared(out.rb());
        // One product at a time uses the shared buffer.
        let mut guard = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let needed = if in_place { 0 } else { m * child_cols * size_of::<T>() };
        if guard.as_ref().is_none_or(|b| b.len() < needed) {
            *guard = None; // unmap the old one first
            *guard = Some(SharedBuf::new(needed.next_power_of_two())?);
        }
        let shared = guard.as_mut().expect("just made");
        // The children never touch the caller's output (unless it is shared
        // memory): keep its pages out of their copy of the address space, so
        // that the parent writes them without copy-on-write faults.
        let _not_forked = (!in_place).then(|| DontFork::new(out.rb()));

        let parent = nix::unistd::getpid();
        let mut children = Forked(Vec::with_capacity(nchildren));
        for i in 0..nchildren {
            let cols = split::block(k, nblocks, i);
            let (ours, theirs) = socket_pair()?;
            let blocked = GroupSignalsBlocked::new();
            // SAFETY: see the module docs of `process`: the child runs the
            // operator with Par::Seq, never enters rayon, takes no lock shared
            // with other threads but glibc's malloc (reset by fork), reports
            // on its socket, and leaves with `exit_child`.
            match unsafe { fork() } {
                Ok(ForkResult::Child) => {
                    core::mem::forget(blocked);
                    enter_child(parent, Keep::All);
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let rhs = rhs.subcols(cols.start, cols.len());
                        let target = if in_place {
                            out.rb_mut().subcols_mut(cols.start, cols.len())
                        } else {
                            // Zeroed: the map holds the last product's data.
                            let mut t = shared.mat_mut::<T>(m, child_cols).subcols_mut(cols.start, cols.len());
                            t.fill(zero());
                            t
                        };
                        work.block(target, rhs, stack);
                    }));
                    let outcome = match result {
                        Ok(()) => Outcome::Done,
                        Err(payload) => Outcome::Panicked(panic_message(&*payload).to_owned()),
                    };
                    let _ = send(&theirs, &Report::new(i, &outcome), None);
                    exit_child(ExitCode::Done)
                }
                Ok(ForkResult::Parent { child }) => {
                    drop((blocked, theirs));
                    let child = Arc::new(Child::new(child)?);
                    children.0.push((ours, child));
                }
                Err(e) => return Err(os("fork", e.into())),
            }
        }
        // The last block, here, straight into the caller's output. If it
        // panics, `children` kills and reaps the children on the way out.
        let last = split::block(k, nblocks, nchildren);
        work.block(out.rb_mut().subcols_mut(last.start, last.len()), rhs.subcols(last.start, last.len()), stack);
        let pairs: Vec<(&OwnedFd, &Child)> = children.0.iter().map(|(s, c)| (s, &**c)).collect();
        let outcomes = wait_reports(&pairs, deadline);
        let mut result = Ok(());
        for (i, outcome) in outcomes.into_iter().enumerate() {
            let pid = children.0[i].1.pid();
            let err = match outcome {
                Ok(Outcome::Done) => continue,
                Ok(Outcome::Panicked(message)) => Error::WorkerPanicked { worker: i, pid, message },
                Ok(Outcome::Broken(how)) | Err(Lost::Died(how) | Lost::Garbled(how)) => {
                    Error::WorkerDied { worker: i, pid, how }
                }
                Err(Lost::Deadline(deadline)) => Error::DeadlineExceeded { worker: i, pid, deadline },
            };
            if result.is_ok() {
                result = Err(err);
            }
        }
        // Every child reported or ended: the keeper reaps those still exiting.
        for (_, child) in children.0.drain(..) {
            self.keeper.watch(child);
        }
        result?;
        if !in_place {
            out.subcols_mut(0, child_cols).copy_from(shared.mat::<T>(m, child_cols));
        }
        Ok(())
    }
}

/// The children of a product, with their sockets. Dropping it (the parent's
/// block panicked) kills and reaps them: no zombie, whatever happens.
struct Forked(Vec<(OwnedFd, Arc<Child>)>);

impl Drop for Forked {
    fn drop(&mut self) {
        for (_, child) in &self.0 {
            child.kill();
            child.reap();
        }
    }
}

/// The whole pages of a matrix's memory, marked `MADV_DONTFORK` while it
/// lives: a child does not get them at all.
struct DontFork(usize, usize);

impl DontFork {
    fn new<T>(m: MatRef<'_, T>) -> Option<Self> {
        // Only when the entries fill their span: then no other view (another
        // thread's, say) can own bytes in these pages.
        let contiguous = m.row_stride() == 1 && (m.ncols() <= 1 || m.col_stride() == m.nrows() as isize);
        if !contiguous {
            return None;
        }
        let (start, end) = super::shm::byte_range(m)?;
        let page = 4096;
        let (start, end) = (start.next_multiple_of(page), end / page * page);
        if start >= end {
            return None;
        }
        // Someone else (the program, an RDMA library) may have marked some
        // of these pages already; `Drop` could not tell them from ours: leave
        // such memory as it is.
        if !none_dont_fork(start, end)? {
            return None;
        }
        // SAFETY: the pages hold entries of `m` only, which this product
        // borrows mutably and which outlive this guard; only the children's
        // view of them changes, and the children never touch them (they
        // write into the shared buffer).
        let done = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTFORK) };
        (done == 0).then_some(Self(start, end))
    }
}

impl Drop for DontFork {
    fn drop(&mut self) {
        // SAFETY: undoes `new` on the same pages, which were not marked
        // before `new` marked them.
        unsafe { libc::madvise(self.0 as *mut libc::c_void, self.1 - self.0, libc::MADV_DOFORK) };
    }
}

/// Whether no mapping overlapping the bytes `[start, end)` is marked
/// `MADV_DONTFORK` (flag `dc` in `/proc/self/smaps`); `None` if unknown.
///
/// The kernel writes each mapping's entry as it is read, walking its page
/// tables: the file is read in small pieces (about one entry a read) and
/// no further than the last mapping overlapping the range.
fn none_dont_fork(start: usize, end: usize) -> Option<bool> {
    use std::io::BufRead;
    let smaps = std::io::BufReader::with_capacity(1024, std::fs::File::open("/proc/self/smaps").ok()?);
    // The mapping whose entry is being read.
    let mut current = (0, 0);
    for line in smaps.lines() {
        let line = line.ok()?;
        let range = line.split_once(' ').map_or(line.as_str(), |(r, _)| r);
        if !range.ends_with(':')
            && let Some((lo, hi)) = range.split_once('-')
            && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            current = (lo, hi);
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            // The last line of an entry.
            let (lo, hi) = current;
            if lo < end && start < hi && flags.split_whitespace().any(|f| f == "dc") {
                return Some(false);
            }
            if hi >= end {
                return Some(true);
            }
        }
    }
    Some(true)
}
