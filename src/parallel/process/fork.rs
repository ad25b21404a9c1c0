//! Workers forked for each product (`procs_created_once = false`).

use std::sync::Mutex;

use faer::dyn_stack::MemStack;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{MatMut, MatRef};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use super::shm::{SharedBuf, is_shared, os};
use super::{describe, enter_child, panic_message};
use crate::BiLinOp;
use crate::ops::Mode;
use crate::parallel::{Error, Scalar, block_product, split};

/// Where a child leaves its panic message: one slot per child at the start
/// of the shared buffer, `[len: u32][message bytes]`.
const SLOT: usize = 1024;

/// The per-product backend: a worker count, and the shared buffer the
/// children write into, kept from one product to the next.
#[derive(Debug)]
pub(crate) struct PerProduct {
    nworkers: usize,
    shared: Mutex<Option<SharedBuf>>,
}

impl PerProduct {
    pub(crate) fn new(nworkers: usize) -> Self {
        Self { nworkers, shared: Mutex::new(None) }
    }

    pub(crate) fn nworkers(&self) -> usize {
        self.nworkers
    }

    /// `out = op_mode · rhs`: blocks `0..nblocks - 1` in forked children, the
    /// last one here.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run<T: Scalar, L: BiLinOp<T>>(
        &self,
        op: &L,
        mode: Mode,
        mut out: MatMut<'_, T>,
        rhs: MatRef<'_, T>,
        nblocks: usize,
        use_matvec: bool,
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

        let mut children = Children(Vec::with_capacity(nchildren));
        for i in 0..nchildren {
            let cols = split::block(k, nblocks, i);
            // SAFETY: see the module docs of `process`: the child runs the
            // operator with Par::Seq, never enters rayon, takes no lock shared
            // with other threads but glibc's malloc (reset by fork), reports
            // through shared memory and leaves with `_exit`.
            match unsafe { fork() } {
                Ok(ForkResult::Child) => {
                    enter_child();
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let rhs = rhs.subcols(cols.start, cols.len());
                        let target = if in_place {
                            out.rb_mut().subcols_mut(cols.start, cols.len())
                        } else {
                            let (_, data) = shared.bytes_mut().split_at_mut(data_at);
                            let data: &mut [T] = bytemuck::cast_slice_mut(&mut data[..m * child_cols * size_of::<T>()]);
                            MatMut::from_column_major_slice_mut(data, m, child_cols).subcols_mut(cols.start, cols.len())
                        };
                        block_product(op, mode, target, rhs, use_matvec, stack);
                    }));
                    let code = match result {
                        Ok(()) => 0,
                        Err(payload) => {
                            let msg = panic_message(&*payload).as_bytes();
                            let slot = &mut shared.bytes_mut()[i * SLOT..(i + 1) * SLOT];
                            let len = msg.len().min(SLOT - 4);
                            slot[..4].copy_from_slice(&(len as u32).to_ne_bytes());
                            slot[4..4 + len].copy_from_slice(&msg[..len]);
                            101
                        }
                    };
                    // SAFETY: leaving the child without running anything inherited from the parent.
                    unsafe { libc::_exit(code) }
                }
                Ok(ForkResult::Parent { child }) => children.0.push((child, i)),
                Err(e) => return Err(os("fork", e.into())),
            }
        }
        // The last block, here, straight into the caller's output. If it
        // panics, `children` kills and reaps the children on the way out.
        let last = split::block(k, nblocks, nchildren);
        block_product(
            op,
            mode,
            out.rb_mut().subcols_mut(last.start, last.len()),
            rhs.subcols(last.start, last.len()),
            use_matvec,
            stack,
        );
        children.wait_all(shared.bytes_mut())?;
        if !in_place {
            let data: &[T] =
                bytemuck::cast_slice(&shared.bytes_mut()[data_at..data_at + m * child_cols * size_of::<T>()]);
            out.subcols_mut(0, child_cols).copy_from(MatRef::from_column_major_slice(data, m, child_cols));
        }
        Ok(())
    }
}

/// Forked children not reaped yet, with their block index. Dropping it
/// kills and reaps them: no zombie, whatever happens to the parent.
struct Children(Vec<(Pid, usize)>);

impl Children {
    /// Reaps every child; the first failure is the error.
    fn wait_all(&mut self, slots: &[u8]) -> Result<(), Error> {
        let mut first = Ok(());
        for (pid, i) in std::mem::take(&mut self.0) {
            let status = reap(pid);
            let err = match status {
                Ok(WaitStatus::Exited(_, 0)) => continue,
                Ok(WaitStatus::Exited(_, 101)) => {
                    let slot = &slots[i * SLOT..(i + 1) * SLOT];
                    let len = u32::from_ne_bytes(slot[..4].try_into().unwrap()) as usize;
                    let message = String::from_utf8_lossy(&slot[4..4 + len.min(SLOT - 4)]).into_owned();
                    Error::WorkerPanicked { worker: i, pid: pid.as_raw(), message }
                }
                Ok(status) => Error::WorkerDied { worker: i, pid: pid.as_raw(), how: describe(status) },
                Err(e) => os("waitpid", e.into()),
            };
            if first.is_ok() {
                first = Err(err);
            }
        }
        first
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for &(pid, _) in &self.0 {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = reap(pid);
        }
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
