//! Workers forked for each product (`procs_created_once = false`).
//!
//! A child reports on a pipe as soon as its block is written (4 bytes:
//! its index and whether it panicked) and then leaves; the parent does not
//! wait for the child's exit (tearing down its copy of the address space
//! costs as much as the fork): a reaper thread owned by the operator waits
//! for children that reported, so none stays a zombie. A child that dies
//! without reporting is found by `waitpid` (polled every 20 ms while reports
//! are missing) and reaped at once.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;

use faer::dyn_stack::MemStack;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{MatMut, MatRef};
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, pipe2};

use super::shm::{SharedBuf, is_shared, os};
use super::{describe, enter_child, panic_message};
use crate::BiLinOp;
use crate::parallel::{Error, Scalar, Work, split};

/// Where a child leaves its panic message: one slot per child at the start
/// of the shared buffer, `[len: u32][message bytes]`.
const SLOT: usize = 1024;

/// The per-product backend: a worker count, the shared buffer the children
/// write into (kept from one product to the next), and the reaper of the
/// children that reported.
#[derive(Debug)]
pub(crate) struct PerProduct {
    nworkers: usize,
    shared: Mutex<Option<SharedBuf>>,
    reaper: Reaper,
}

/// A thread that reaps the children it is given, as they exit.
#[derive(Debug)]
struct Reaper {
    pids: Option<Sender<Pid>>,
    thread: Option<JoinHandle<()>>,
}

impl Reaper {
    fn new() -> Self {
        let (pids, todo) = channel::<Pid>();
        let thread = std::thread::Builder::new().name("lazylinop-reaper".into()).spawn(move || {
            for pid in todo {
                let _ = reap(pid);
            }
        });
        // Without a thread, `reap` below waits for each child itself.
        match thread {
            Ok(thread) => Self { pids: Some(pids), thread: Some(thread) },
            Err(_) => Self { pids: None, thread: None },
        }
    }

    fn reap(&self, pid: Pid) {
        if self.pids.as_ref().is_none_or(|pids| pids.send(pid).is_err()) {
            let _ = reap(pid);
        }
    }
}

impl Drop for Reaper {
    /// Waits until every child given to it is reaped.
    fn drop(&mut self) {
        drop(self.pids.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl PerProduct {
    pub(crate) fn new(nworkers: usize) -> Self {
        Self { nworkers, shared: Mutex::new(None), reaper: Reaper::new() }
    }

    pub(crate) fn nworkers(&self) -> usize {
        self.nworkers
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
        let (m, k) = (out.nrows(), out.ncols());
        let nchildren = nblocks - 1;
        let child_cols = split::block(k, nblocks, nchildren).start;
        let in_place = is_shared(out.rb());
        // One product at a time uses the shared buffer.
        let mut guard = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let data_at = (nchildren * SLOT).next_multiple_of(64);
        let needed = data_at + if in_place { 0 } else { m * child_cols * size_of::<T>() };
        if guard.as_ref().is_none_or(|b| b.len() < needed) {
            *guard = None; // unmap the old one first
            *guard = Some(SharedBuf::new(needed.next_power_of_two())?);
        }
        let shared = guard.as_mut().expect("just made");
        shared.bytes_mut()[..data_at].fill(0);
        let (reports, report) = pipe2(OFlag::O_CLOEXEC).map_err(|e| os("pipe", e.into()))?;
        // The children never touch the caller's output (unless it is shared
        // memory): keep its pages out of their copy of the address space, so
        // that the parent writes them without copy-on-write faults.
        let _not_forked = (!in_place).then(|| DontFork::new(out.rb()));

        let mut children = Children(Vec::with_capacity(nchildren));
        for i in 0..nchildren {
            let cols = split::block(k, nblocks, i);
            // SAFETY: see the module docs of `process`: the child runs the
            // operator with Par::Seq, never enters rayon, takes no lock shared
            // with other threads but glibc's malloc (reset by fork), reports
            // through shared memory and a pipe, and leaves with `_exit`.
            match unsafe { fork() } {
                Ok(ForkResult::Child) => {
                    enter_child();
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let rhs = rhs.subcols(cols.start, cols.len());
                        let target = if in_place {
                            out.rb_mut().subcols_mut(cols.start, cols.len())
                        } else {
                            shared.mat_mut_at::<T>(data_at, m, child_cols).subcols_mut(cols.start, cols.len())
                        };
                        work.block(target, rhs, stack);
                    }));
                    let panicked = match result {
                        Ok(()) => 0,
                        Err(payload) => {
                            let msg = panic_message(&*payload).as_bytes();
                            let slot = &mut shared.bytes_mut()[i * SLOT..(i + 1) * SLOT];
                            let len = msg.len().min(SLOT - 4);
                            slot[..4].copy_from_slice(&(len as u32).to_ne_bytes());
                            slot[4..4 + len].copy_from_slice(&msg[..len]);
                            1
                        }
                    };
                    let _ = nix::unistd::write(&report, &((i as u32) << 1 | panicked).to_ne_bytes());
                    // SAFETY: leaving the child without running anything inherited from the parent.
                    unsafe { libc::_exit(panicked as i32) }
                }
                Ok(ForkResult::Parent { child }) => children.0.push((child, i)),
                Err(e) => return Err(os("fork", e.into())),
            }
        }
        drop(report);
        // The last block, here, straight into the caller's output. If it
        // panics, `children` kills and reaps the children on the way out.
        let last = split::block(k, nblocks, nchildren);
        work.block(out.rb_mut().subcols_mut(last.start, last.len()), rhs.subcols(last.start, last.len()), stack);
        let shared = guard.as_ref().expect("made above");
        let outcome = children.wait_reports(&reports, shared.bytes());
        match outcome {
            Ok(()) => children.0.drain(..).for_each(|(pid, _)| self.reaper.reap(pid)),
            Err(e) => {
                children.reap_all();
                return Err(e);
            }
        }
        if !in_place {
            out.subcols_mut(0, child_cols).copy_from(shared.mat_at::<T>(data_at, m, child_cols));
        }
        Ok(())
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
        // SAFETY: undoes `new` on the same pages.
        unsafe { libc::madvise(self.0 as *mut libc::c_void, self.1 - self.0, libc::MADV_DOFORK) };
    }
}

/// Forked children not reaped yet, with their block index. Dropping it
/// kills and reaps them: no zombie, whatever happens to the parent.
struct Children(Vec<(Pid, usize)>);

impl Children {
    /// Waits until every child reported, or one failed. A child that dies
    /// without reporting is seen by `waitpid` and reaped here.
    fn wait_reports(&mut self, reports: &OwnedFd, slots: &[u8]) -> Result<(), Error> {
        let mut reported = vec![false; self.0.len()];
        let mut pending = self.0.len();
        let mut buf = [0u8; 4];
        let mut have = 0;
        while pending > 0 {
            let mut fds = [PollFd::new(reports.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, 20u16) {
                Ok(n) if n > 0 => match nix::unistd::read(reports, &mut buf[have..]) {
                    Ok(0) => {} // every child has exited; waitpid below says how
                    Ok(got) => {
                        have += got;
                        if have == 4 {
                            have = 0;
                            let record = u32::from_ne_bytes(buf);
                            let i = (record >> 1) as usize;
                            if record & 1 == 1 {
                                let (pid, _) = self.0[i];
                                let _ = super::fork::reap(pid);
                                self.0[i].0 = Pid::from_raw(0);
                                return Err(panicked(i, pid, slots));
                            }
                            if !reported[i] {
                                reported[i] = true;
                                pending -= 1;
                            }
                        }
                        continue;
                    }
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(os("reading the workers' reports", e.into())),
                },
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(os("poll", e.into())),
            }
            // No report for a while (or none coming): has a silent child died?
            for ((pid, i), done) in self.0.iter_mut().zip(reported.iter_mut()) {
                let (child, i) = (*pid, *i);
                if *done || child.as_raw() <= 0 {
                    continue;
                }
                let status = match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => continue,
                    Ok(status) => status,
                    Err(e) => return Err(os("waitpid", e.into())),
                };
                *pid = Pid::from_raw(0); // reaped
                match status {
                    // Exited 0 after reporting: the report is still in the pipe.
                    WaitStatus::Exited(_, 0) => {
                        *done = true;
                        pending -= 1;
                    }
                    WaitStatus::Exited(_, 1) => return Err(panicked(i, child, slots)),
                    status => return Err(Error::WorkerDied { worker: i, pid: child.as_raw(), how: describe(status) }),
                }
            }
        }
        // Children already reaped above are not finished children any more.
        self.0.retain(|&(pid, _)| pid.as_raw() > 0);
        Ok(())
    }

    /// Kills (if still running) and reaps every child.
    fn reap_all(&mut self) {
        for (pid, _) in self.0.drain(..) {
            if pid.as_raw() > 0 {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = reap(pid);
            }
        }
    }
}

fn panicked(i: usize, pid: Pid, slots: &[u8]) -> Error {
    let slot = &slots[i * SLOT..(i + 1) * SLOT];
    let len = u32::from_ne_bytes(slot[..4].try_into().unwrap()) as usize;
    let message = String::from_utf8_lossy(&slot[4..4 + len.min(SLOT - 4)]).into_owned();
    Error::WorkerPanicked { worker: i, pid: pid.as_raw(), message }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.reap_all();
    }
}

/// `waitpid` until the child is gone, through interruptions.
pub(crate) fn reap(pid: Pid) -> nix::Result<WaitStatus> {
    loop {
        match waitpid(pid, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(WaitStatus::Stopped(..) | WaitStatus::Continued(_)) => continue,
            other => return other,
        }
    }
}
