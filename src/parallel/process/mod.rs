//! The process backend: forked workers, with the operand and the output
//! shared through memory maps, as Python lazylinop's
//! `pmatmat_multiprocess`. For operators whose product does not scale on
//! threads (a process-wide lock, a C library that is not thread-safe,
//! per-process global state).
//!
//! - **Per product** (`procs_created_once = false`, [`fork`]): each product
//!   forks `nworkers - 1` children, which see `L` and `A` through fork
//!   (copy-on-write: nothing is copied), write their blocks into a shared
//!   map and leave with `_exit`; the parent computes the last block itself,
//!   straight into the caller's output, then copies the children's blocks
//!   from the map (one copy of their part of the output). Children report
//!   on a pipe and the parent goes on without waiting for their exit; they
//!   are reaped by a thread of the operator as they exit. When the caller's
//!   output lies in a [`SharedMat`], the children write into it in place and
//!   nothing is copied.
//! - **Created once** (`procs_created_once = true`, [`pool`]): `nworkers - 1`
//!   workers forked when the operator is built, each holding its snapshot
//!   of `L`; the parent is the last worker, as above. A product writes the
//!   workers' columns of `A` into a shared input map, sends each worker its
//!   block over a Unix socket, computes the last block straight into the
//!   caller's output, and copies the workers' blocks from the shared output
//!   map.
//!   The maps grow when a larger operand arrives; the new memfd reaches the
//!   workers over the socket (`SCM_RIGHTS`). Products on one pool from
//!   several threads are serialized. Dropping the operator stops and reaps
//!   every worker; workers also die with their parent (`PR_SET_PDEATHSIG`),
//!   so a program never hangs at exit.
//!
//! # Faults
//! A worker that panics gives [`Error::WorkerPanicked`] with its message;
//! one that aborts, exits or is killed gives [`Error::WorkerDied`], as soon
//! as the parent sees it gone; no zombie is left (every child is reaped,
//! killed first if the parent unwinds). A pool that lost a worker answers
//! [`Error::PoolBroken`] until [`Pmatmat::rebuild_pool`](super::Pmatmat::rebuild_pool).
//! The faer trait methods panic with these messages;
//! [`Pmatmat::try_matmat`](super::Pmatmat::try_matmat) returns them. Failing
//! `fork`, `memfd_create` or `mmap` (ENOMEM, EMFILE, EAGAIN) give
//! [`Error::Os`].
//!
//! # Forking a process that runs threads
//! Only the forking thread exists in a child. What is done so that this is
//! safe:
//! - children never enter rayon (lazylinop's own thread backend runs its
//!   blocks in turn there) and run the operator with `Par::Seq`; an operator
//!   that starts threads or uses rayon itself must not run in a worker;
//! - panics are silent in a child (the default hook locks stderr, which
//!   another thread may have held at the fork): the backend wraps the panic
//!   hook once, in the parent, so that it does nothing in a worker, and the
//!   message goes to the parent instead. A hook set later by the program
//!   replaces the wrapper; it then runs in workers that panic;
//! - glibc's `fork` takes and resets its malloc locks around the fork, so
//!   allocating in a child is safe; nothing else a child does takes a lock
//!   shared with the parent's other threads;
//! - children leave with `libc::_exit`: no destructor, no atexit handler, no
//!   flush of buffers inherited from the parent.

pub mod fork;
mod keeper;
pub mod pool;
mod protocol;
pub mod shm;

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};

use faer::dyn_stack::MemStack;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{MatMut, MatRef};

pub use shm::SharedMat;

use super::{Error, ProcessOptions, Scalar, Work, split};
use crate::BiLinOp;

/// Set in forked workers only.
static IN_WORKER: AtomicBool = AtomicBool::new(false);

/// Whether this process is a forked worker.
pub(crate) fn in_forked_worker() -> bool {
    IN_WORKER.load(Ordering::Relaxed)
}

/// Makes panics in forked workers silent: the panic hook is wrapped, once,
/// in the parent (a child cannot replace it: another thread of the parent
/// may have held the hook's lock at the fork). A worker's panic message
/// goes to the parent instead.
fn silence_panics_in_workers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !in_forked_worker() {
                previous(info)
            }
        }));
    });
}

/// The message of a panic payload.
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic with a non-string payload)")
}

/// A failed system call.
pub(crate) fn os(what: &'static str, source: std::io::Error) -> Error {
    Error::Os { what, source }
}

/// The workers of a process-backend operator.
#[derive(Debug)]
pub(crate) enum Processes {
    PerProduct(fork::PerProduct),
    Pool(pool::Pool),
}

impl Processes {
    pub(crate) fn new<T: Scalar, L: BiLinOp<T>>(
        op: &L,
        nworkers: usize,
        options: ProcessOptions,
    ) -> Result<Self, Error> {
        silence_panics_in_workers();
        Ok(if options.procs_created_once {
            Processes::Pool(pool::Pool::new(op, nworkers, options.deadline)?)
        } else {
            Processes::PerProduct(fork::PerProduct::new(nworkers, options.deadline)?)
        })
    }

    pub(crate) fn nworkers(&self) -> usize {
        match self {
            Processes::PerProduct(p) => p.nworkers(),
            Processes::Pool(p) => p.nworkers(),
        }
    }

    pub(crate) fn worker_pids(&self) -> Vec<i32> {
        match self {
            Processes::PerProduct(_) => Vec::new(),
            Processes::Pool(p) => p.worker_pids(),
        }
    }

    /// Whether this is the process that built the operator: elsewhere (a
    /// worker, a process the program forked) its workers, maps and thread
    /// belong to another process.
    fn owned_here(&self) -> bool {
        match self {
            Processes::PerProduct(p) => p.owned_here(),
            Processes::Pool(p) => p.owned_here(),
        }
    }

    pub(crate) fn run<T: Scalar, L: BiLinOp<T>>(
        &self,
        work: Work<'_, L>,
        mut out: MatMut<'_, T>,
        rhs: MatRef<'_, T>,
        nblocks: usize,
        stack: &mut MemStack,
    ) -> Result<(), Error> {
        if nblocks <= 1 || !self.owned_here() {
            // The blocks in turn, here (the scratch is sized for one block).
            let k = rhs.ncols();
            for i in 0..nblocks.max(1) {
                let cols = split::block(k, nblocks.max(1), i);
                let out = out.rb_mut().subcols_mut(cols.start, cols.len());
                work.block(out, rhs.rb().subcols(cols.start, cols.len()), stack);
            }
            return Ok(());
        }
        match self {
            Processes::PerProduct(p) => p.run(work, out, rhs, nblocks, stack),
            Processes::Pool(p) => p.run(work, out, rhs, nblocks, stack),
        }
    }

    /// A new pool of workers forked from this process and this operator
    /// (the old one is stopped; in another process than the one that built
    /// it, only let go).
    pub(crate) fn rebuild<T: Scalar, L: BiLinOp<T>>(&mut self, op: &L) -> Result<(), Error> {
        if let Processes::Pool(p) = self {
            *p = pool::Pool::new(op, p.nworkers(), p.deadline())?;
        }
        Ok(())
    }
}
