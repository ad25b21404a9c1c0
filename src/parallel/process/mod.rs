//! The process backend: forked workers, with the operand and the output
//! shared through memory maps, as Python lazylinop's
//! `pmatmat_multiprocess`. For operators whose product does not scale on
//! threads (a process-wide lock, a C library that is not thread-safe,
//! per-process global state) — but read [Locks held at fork](#locks-held-at-fork)
//! first: a lock another thread holds when a worker is forked stays held
//! in that worker forever.
//!
//! - **Per product** (`procs_created_once = false`, [`fork`]): each product
//!   forks `nworkers - 1` children, which see `L` and `A` through fork
//!   (copy-on-write: nothing is copied), write their blocks into a shared
//!   map and leave; the parent computes the last block itself, straight
//!   into the caller's output, then copies the children's blocks from the
//!   map (one copy of their part of the output). When the caller's output
//!   lies in a [`SharedMat`], the children write into it in place and
//!   nothing is copied.
//! - **Created once** (`procs_created_once = true`, [`pool`]): `nworkers - 1`
//!   workers forked when the operator is built, each holding its snapshot
//!   of `L` (see [Snapshots](#snapshots)); the parent is the last worker, as
//!   above. A product sends each worker its block over a Unix socket (the
//!   worker zeroes its part of the shared output map meanwhile), writes the
//!   workers' columns of `A` into a shared input map, tells the workers to
//!   go, computes the last block straight into the caller's output, and
//!   copies the workers' blocks from the shared output map. The maps grow
//!   when a larger operand arrives; the new memfd reaches the workers over
//!   the socket (`SCM_RIGHTS`). Products on one pool from several threads
//!   are serialized. Dropping the operator stops and reaps every worker.
//!
//! Both modes speak one protocol (`protocol`): a worker answers each block
//! with one report ("done", "panicked with this message", or "cannot go
//! on"), on its own socket; the parent waits on the sockets and on the
//! workers' pidfds together, so a death is seen at once.
//!
//! A worker's part of the shared output is zeroed before the operator
//! writes it: an operator that adds into `out` instead of overwriting it
//! gets zeros, never the last product's data.
//!
//! # Snapshots
//! **A pool's workers compute with the operator as it was when they were
//! forked** (when the operator was built, or at the last
//! [`Pmatmat::rebuild_pool`](super::Pmatmat::rebuild_pool)); the parent's
//! own block uses the operator as it is now. An operator with interior
//! mutability (a `Cell`, a `Mutex`, an atomic, a file it re-reads) changed
//! after that gives columns of two different operators. Call
//! `rebuild_pool` after every such change, or use per-product workers
//! (forked at each product, they see the operator as it is then).
//!
//! # Workers and the program around them
//! - Workers die with the process that forked them (`PR_SET_PDEATHSIG`,
//!   armed from a thread that lives as long as the operator, so a pool may
//!   be built on any thread, even one that exits), and are reaped as soon
//!   as they end, by that thread: no orphan, no zombie.
//! - An operator (pool or per product) used in another process than the
//!   one that built it — a process the program forked, a pool nested in a
//!   per-product operator — runs its blocks in place there, one after the
//!   other, as the thread backend does in a forked worker. Its workers,
//!   maps and thread belong to the process that built it.
//! - Workers ignore SIGINT, SIGQUIT, SIGHUP and SIGTERM, the signals a
//!   terminal (Ctrl-C) or a service manager sends to every process of a
//!   job: the program decides what they mean, and if it dies, its workers
//!   die with it. They stay in the program's process group, so job control
//!   (Ctrl-Z) stops them with it. Kill a worker with SIGKILL.
//! - A pool worker keeps only standard input, output and error and its
//!   socket of the parent's descriptors (a pipe the program closes reaches
//!   end-of-file); an operator that reads a descriptor it holds at each
//!   product must reopen it, or use per-product workers, which keep every
//!   descriptor. Memory mappings are kept (the operator may need any of
//!   them), but a [`SharedMat`] (or a map of the backend's own) freed in
//!   the process that made it is emptied first, so its memory goes at once
//!   from the workers too; a worker whose snapshot still reads it dies of
//!   `SIGBUS` ([`Error::WorkerDied`]): it never reads stale data (so does a
//!   process the program forked that reads it after its maker freed it).
//! - [`ProcessOptions::deadline`](super::ProcessOptions::deadline) bounds
//!   how long a product waits for its workers: a worker that has not
//!   answered by then is killed, reaped and reported as
//!   [`Error::DeadlineExceeded`] (and a pool is broken until rebuilt).
//! - Pidfds (Linux 5.3) are needed; `waitid` on them (Linux 5.4).
//!
//! # Locks held at fork
//! Only the forking thread exists in a child, and the child inherits every
//! lock as it was at the fork: a mutex another thread of the program held
//! then is held forever in the child. An operator that takes a
//! process-wide lock (the reason to use processes) blocks forever in a
//! worker forked while another thread held it; so does a closure that uses
//! rayon (no rayon thread exists in a child). Build pools, and run
//! per-product operators, when no other thread holds a lock the operator
//! takes, and set a deadline so that such a worker ends as an error rather
//! than a hang. What the backend does itself:
//! - children never enter rayon (lazylinop's own thread backend runs its
//!   blocks in turn there), run the operator with `Par::Seq`, and set faer's
//!   global parallelism to `Par::Seq` right after the fork;
//! - panics are silent in a child (the default hook locks stderr, which
//!   another thread may have held at the fork): the backend wraps the panic
//!   hook once, in the parent, so that it does nothing in a worker, and the
//!   message goes to the parent instead. A hook set later by the program
//!   replaces the wrapper; it then runs in workers that panic;
//! - glibc's `fork` takes and resets its malloc locks around the fork, so
//!   allocating in a child is safe; nothing else a child does takes a lock
//!   shared with the parent's other threads;
//! - children leave with `_exit`: no destructor, no atexit handler, no
//!   flush of buffers inherited from the parent.
//!
//! # Faults
//! A worker that panics gives [`Error::WorkerPanicked`] with its message;
//! one that aborts, exits or is killed gives [`Error::WorkerDied`], as soon
//! as the parent sees it gone (also when the program ignores SIGCHLD: then
//! how it ended is not known); one that misses the deadline gives
//! [`Error::DeadlineExceeded`]. A pool that lost a worker (or whose worker
//! could not map a new shared buffer) answers [`Error::PoolBroken`] until
//! [`Pmatmat::rebuild_pool`](super::Pmatmat::rebuild_pool). The faer trait
//! methods panic with these messages;
//! [`Pmatmat::try_matmat`](super::Pmatmat::try_matmat) returns them.
//! Failing `fork`, `memfd_create`, `mmap`, `pidfd_open` (ENOMEM, EMFILE,
//! EAGAIN) give [`Error::Os`].

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
