//! Parallel products: an operator whose product `L·A` runs over blocks of
//! `A`'s columns on several workers, as Python lazylinop's `pmatmat`.
//!
//! [`pmatmat`] wraps any operator `L` into a [`Pmatmat`], itself a faer
//! [`BiLinOp`]: it composes with every other operator and goes into faer's
//! solvers. Its product splits the columns of `A` (and of the output) with
//! [`split::block`] into one contiguous block per worker; worker `i`
//! computes `L·A[:, block_i]` straight into `out[:, block_i]`, with
//! `Par::Seq` for the inner product. The conjugate, transpose and adjoint
//! products are split the same way.
//!
//! | method | workers | file |
//! |---|---|---|
//! | [`Method::Thread`] | a rayon pool owned by the operator | [`thread`] |
//! | [`Method::Process`] | forked processes, per product or a pool created once | [`process`] |
//! | [`Method::Mpi`] | the ranks of an MPI communicator (feature `mpi`) | `mpi` |

#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(unix)]
pub mod process;
pub mod split;
pub mod thread;

use core::fmt;
use core::marker::PhantomData;
use core::str::FromStr;

use faer::dyn_stack::{MemStack, StackReq};
use faer::reborrow::ReborrowMut;
use faer::traits::ComplexField;
use faer::{MatMut, MatRef, Par};

use crate::BiLinOp;
pub use crate::Scalar;
use crate::ops::{Mode, ModeOp, impl_bilinop};

/// Where the blocks of a parallel product run.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// Threads of a rayon pool created with the operator.
    Thread,
    /// Forked worker processes; with `procs_created_once`, a pool forked once
    /// when the operator is built, otherwise new workers for each product.
    Process {
        /// Keep a pool of workers forked once (`true`) or fork at each product.
        procs_created_once: bool,
    },
    /// The ranks of MPI's world communicator.
    Mpi,
}

impl FromStr for Method {
    type Err = Error;

    /// `"thread"`, `"process"` (forking at each product) or `"mpi"`, in any case.
    ///
    /// # Errors
    /// [`Error::UnknownMethod`] for anything else.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "thread" => Ok(Method::Thread),
            "process" => Ok(Method::Process { procs_created_once: false }),
            "mpi" => Ok(Method::Mpi),
            _ => Err(Error::UnknownMethod(s.to_owned())),
        }
    }
}

/// Why a parallel operator could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The method name is not one of `thread`, `process`, `mpi`.
    UnknownMethod(String),
    /// `nworkers` was `Some(0)`.
    ZeroWorkers,
    /// This method is not available in this build or on this platform.
    Unavailable(Method, &'static str),
    /// The thread pool could not be started.
    ThreadPool(rayon::ThreadPoolBuildError),
    /// A system call failed: fork, memfd, mmap, socket.
    Os {
        /// What was being done.
        what: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// A worker process panicked during a product.
    WorkerPanicked {
        /// The worker's index.
        worker: usize,
        /// Its process id.
        pid: i32,
        /// The panic message.
        message: String,
    },
    /// A worker process died during a product (killed by a signal, aborted,
    /// or exited) without giving its result.
    WorkerDied {
        /// The worker's index.
        worker: usize,
        /// Its process id.
        pid: i32,
        /// How it ended, e.g. "was killed by signal SIGKILL".
        how: String,
    },
    /// A pool of processes lost a worker earlier; rebuild it with
    /// [`Pmatmat::rebuild_pool`].
    PoolBroken(String),
    /// MPI cannot run this: not initialized, wrong thread, ranks that
    /// disagree on a shape, a worker count that is not the communicator's.
    Mpi(String),
    /// A rank failed (reading its part of a file, say); every rank returns
    /// this same error.
    Rank {
        /// The lowest rank that failed.
        rank: usize,
        /// Its error.
        message: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnknownMethod(s) => {
                write!(f, "unknown parallel method {s:?}: expected \"thread\", \"process\" or \"mpi\"")
            }
            Error::ZeroWorkers => write!(f, "nworkers must be at least 1, got 0"),
            Error::Unavailable(method, why) => write!(f, "parallel method {method:?} is not available: {why}"),
            Error::ThreadPool(e) => write!(f, "could not start the thread pool: {e}"),
            Error::Os { what, source } => write!(f, "{what} failed: {source}"),
            Error::WorkerPanicked { worker, pid, message } => {
                write!(f, "process worker {worker} (pid {pid}) panicked during a product: {message}")
            }
            Error::WorkerDied { worker, pid, how } => {
                write!(f, "process worker {worker} (pid {pid}) {how} during a product")
            }
            Error::PoolBroken(why) => {
                write!(f, "the process pool is broken ({why}); rebuild it with Pmatmat::rebuild_pool")
            }
            Error::Mpi(why) => write!(f, "MPI: {why}"),
            Error::Rank { rank, message } => write!(f, "rank {rank} failed: {message}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::ThreadPool(e) => Some(e),
            Error::Os { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The workers of a [`Pmatmat`].
#[derive(Debug)]
enum Backend {
    Thread(thread::Threads),
    #[cfg(unix)]
    Process(process::Processes),
    #[cfg(feature = "mpi")]
    Mpi(self::mpi::Ranks),
}

/// An operator whose products run in parallel over blocks of columns: see
/// the [module docs](self) and [`pmatmat`].
///
/// The `par` argument of its products is ignored: the parallelism is the
/// one chosen when it was built (`nworkers`), and the wrapped operator
/// always runs with `Par::Seq` inside a worker, so that workers do not
/// oversubscribe the machine. Products with fewer than
/// [`Pmatmat::min_parallel_work`] (`nrows · ncols · k`) run on the calling
/// thread, where the handoff to workers would cost more than it saves.
pub struct Pmatmat<T, L> {
    op: L,
    method: Method,
    use_matvec: bool,
    min_parallel_work: usize,
    backend: Backend,
    _scalar: PhantomData<fn(T) -> T>,
}

impl<T, L: fmt::Debug> fmt::Debug for Pmatmat<T, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pmatmat")
            .field("op", &self.op)
            .field("method", &self.method)
            .field("use_matvec", &self.use_matvec)
            .field("backend", &self.backend)
            .finish()
    }
}

/// Below this many `nrows · ncols · k`, a product runs on the calling
/// thread (measured in `benches/pmatmat.rs`, see README).
pub const DEFAULT_MIN_PARALLEL_WORK: usize = 1 << 20;

/// `op` with a parallel product, as Python lazylinop's
/// `pmatmat(L, method, nworkers, use_matvec)`.
///
/// - `method`: where the blocks run ([`Method`], or parse one from
///   `"thread"`, `"process"`, `"mpi"`).
/// - `nworkers`: `None` for the CPUs this process may run on (its affinity
///   mask and CPU quota, as [`std::thread::available_parallelism`] reads them).
/// - `use_matvec`: each worker goes through its columns one at a time, with
///   single-column products (for operators that only have a matvec).
///
/// Takes the operator by value: a matrix, any combinator, a
/// [`DynOp`](crate::ops::DynOp) (an `Arc<L>` becomes one with
/// `DynOp::from(arc)`), or a reference `&L`.
///
/// # Errors
/// [`Error::ZeroWorkers`] for `Some(0)`; [`Error::Unavailable`] for a method
/// this build or platform does not have; [`Error::ThreadPool`] if the
/// threads cannot start; [`Error::Os`] if a process pool cannot be forked;
/// [`Error::Mpi`] if MPI is not initialized or `nworkers` is not the world
/// communicator's size.
///
/// # Examples
/// ```
/// use lazylinop::prelude::*;
/// use lazylinop::parallel::{Method, pmatmat};
///
/// let a = lazylinop::random::mat::<f64>(300, 200, 0);
/// let l = pmatmat(&a, Method::Thread, Some(2), false).unwrap();
/// let x = lazylinop::random::mat::<f64>(200, 64, 1);
/// assert!((l.matmat(&x) - &a * &x).norm_max() < 1e-12);
/// assert!((l.rmatmat(&a) - a.adjoint() * &a).norm_max() < 1e-10);
/// ```
pub fn pmatmat<T: Scalar, L: BiLinOp<T>>(
    op: L,
    method: Method,
    nworkers: Option<usize>,
    use_matvec: bool,
) -> Result<Pmatmat<T, L>, Error> {
    #[cfg(feature = "mpi")]
    let nworkers_arg = nworkers;
    let nworkers = resolve_nworkers(nworkers)?;
    let backend = match method {
        Method::Thread => Backend::Thread(thread::Threads::new(nworkers)?),
        #[cfg(unix)]
        Method::Process { procs_created_once } => {
            Backend::Process(process::Processes::new(&op, nworkers, procs_created_once)?)
        }
        #[cfg(not(unix))]
        Method::Process { .. } => return Err(Error::Unavailable(method, "forked processes need a unix system")),
        #[cfg(feature = "mpi")]
        Method::Mpi => {
            let ranks = self::mpi::Ranks { comm: self::mpi::SharedComm::world()?, gather: self::mpi::Gather::Root };
            if nworkers_arg.is_some_and(|n| n != ranks.nworkers()) {
                return Err(Error::Mpi(format!(
                    "Method::Mpi runs on the world communicator's {} ranks: pass nworkers None or Some({0}), not {:?}",
                    ranks.nworkers(),
                    nworkers_arg
                )));
            }
            Backend::Mpi(ranks)
        }
        #[cfg(not(feature = "mpi"))]
        Method::Mpi => return Err(Error::Unavailable(method, "build lazylinop with the cargo feature `mpi`")),
    };
    Ok(Pmatmat { op, method, use_matvec, min_parallel_work: DEFAULT_MIN_PARALLEL_WORK, backend, _scalar: PhantomData })
}

/// `pmatmat(op, Method::Thread, nworkers, use_matvec)`, as Python
/// lazylinop's `pmatmat_multithread`.
///
/// # Errors
/// As [`pmatmat`].
pub fn pmatmat_multithread<T: Scalar, L: BiLinOp<T>>(
    op: L,
    nworkers: Option<usize>,
    use_matvec: bool,
) -> Result<Pmatmat<T, L>, Error> {
    pmatmat(op, Method::Thread, nworkers, use_matvec)
}

/// `pmatmat(op, Method::Process { procs_created_once }, nworkers, use_matvec)`,
/// as Python lazylinop's `pmatmat_multiprocess`: see [`process`].
///
/// # Errors
/// As [`pmatmat`]; with `procs_created_once`, [`Error::Os`] if the workers
/// cannot be forked.
pub fn pmatmat_multiprocess<T: Scalar, L: BiLinOp<T>>(
    op: L,
    nworkers: Option<usize>,
    use_matvec: bool,
    procs_created_once: bool,
) -> Result<Pmatmat<T, L>, Error> {
    pmatmat(op, Method::Process { procs_created_once }, nworkers, use_matvec)
}

/// `op` with its products distributed over the ranks of `comm`, as Python
/// lazylinop's `pmatmat_mpi` (feature `mpi`).
///
/// SPMD: every rank builds the same operator and calls the same products
/// with operands of the same shape (checked before each product). Rank `r`
/// computes column block `r` of the result; `gather` says whether the blocks
/// are gathered on rank 0 only ([`Gather::Root`](self::mpi::Gather::Root),
/// the other ranks' output is not written) or on every rank
/// ([`Gather::All`](self::mpi::Gather::All), for faer's solvers running on
/// every rank). Products with fewer than two columns or less work than
/// [`Pmatmat::min_parallel_work`] are computed whole on every rank, without
/// messages.
///
/// # Errors
/// [`Error::Mpi`] if MPI is not initialized.
///
/// # Examples
/// See `examples/pmatmat_mpi.rs`, run with `mpirun -n 2`.
#[cfg(feature = "mpi")]
pub fn pmatmat_mpi<T: Scalar, L: BiLinOp<T>>(
    op: L,
    comm: ::mpi::topology::SimpleCommunicator,
    use_matvec: bool,
    gather: self::mpi::Gather,
) -> Result<Pmatmat<T, L>, Error> {
    let ranks = self::mpi::Ranks { comm: self::mpi::SharedComm::new(comm)?, gather };
    Ok(Pmatmat {
        op,
        method: Method::Mpi,
        use_matvec,
        min_parallel_work: DEFAULT_MIN_PARALLEL_WORK,
        backend: Backend::Mpi(ranks),
        _scalar: PhantomData,
    })
}

fn resolve_nworkers(nworkers: Option<usize>) -> Result<usize, Error> {
    match nworkers {
        Some(0) => Err(Error::ZeroWorkers),
        Some(n) => Ok(n),
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

impl<T, L> Pmatmat<T, L> {
    /// The wrapped operator.
    pub fn inner(&self) -> &L {
        &self.op
    }

    /// Where the blocks run.
    pub fn method(&self) -> Method {
        self.method
    }

    /// How many workers share a product.
    pub fn nworkers(&self) -> usize {
        match &self.backend {
            Backend::Thread(t) => t.nworkers(),
            #[cfg(unix)]
            Backend::Process(p) => p.nworkers(),
            #[cfg(feature = "mpi")]
            Backend::Mpi(r) => r.nworkers(),
        }
    }

    /// Whether workers apply the operator one column at a time.
    pub fn use_matvec(&self) -> bool {
        self.use_matvec
    }

    /// Products with `nrows · ncols · k` below this run on the calling
    /// thread ([`DEFAULT_MIN_PARALLEL_WORK`] unless set).
    pub fn min_parallel_work(&self) -> usize {
        self.min_parallel_work
    }

    /// Sets [`Pmatmat::min_parallel_work`]; `0` makes every product with at
    /// least two columns parallel.
    pub fn with_min_parallel_work(mut self, work: usize) -> Self {
        self.min_parallel_work = work;
        self
    }

    /// With MPI: split messages into pieces of at most `elements` elements
    /// (default [`i32::MAX`], MPI's count limit). Does nothing for other
    /// methods. Every rank must set the same value.
    #[cfg_attr(not(feature = "mpi"), allow(unused_mut))]
    pub fn with_max_mpi_message(mut self, elements: usize) -> Self {
        #[cfg(feature = "mpi")]
        if let Backend::Mpi(r) = &mut self.backend {
            r.comm.max_message = elements.max(1);
        }
        let _ = elements;
        self
    }

    /// Where the result goes, with MPI ([`Gather::Root`](self::mpi::Gather::Root)
    /// for `Method::Mpi`); `None` for other methods.
    #[cfg(feature = "mpi")]
    pub fn gather(&self) -> Option<self::mpi::Gather> {
        match &self.backend {
            Backend::Mpi(r) => Some(r.gather),
            _ => None,
        }
    }

    /// Sets where the result of an MPI product goes; does nothing for other
    /// methods. Every rank must set the same value.
    #[cfg(feature = "mpi")]
    pub fn with_gather(mut self, gather: self::mpi::Gather) -> Self {
        if let Backend::Mpi(r) = &mut self.backend {
            r.gather = gather;
        }
        self
    }

    /// The process ids of a pool's forked workers (`procs_created_once`:
    /// `nworkers - 1` of them, this process being the last worker); empty for
    /// other methods.
    pub fn worker_pids(&self) -> Vec<i32> {
        match &self.backend {
            #[cfg(unix)]
            Backend::Process(p) => p.worker_pids(),
            _ => Vec::new(),
        }
    }

    /// How many blocks a product with `k` columns is split into.
    fn nblocks(&self, m: usize, n: usize, k: usize) -> usize {
        let work = m.saturating_mul(n).saturating_mul(k);
        if work < self.min_parallel_work { 1 } else { split::nonempty(k, self.nworkers()) }
    }
}

impl<T: Scalar, L: BiLinOp<T>> Pmatmat<T, L> {
    /// `self · rhs` in a new matrix, with errors from workers returned
    /// instead of panicking (the faer trait methods panic with the same
    /// message).
    ///
    /// # Errors
    /// For the process backend: a worker that panicked or died, a broken
    /// pool, a failed fork or map.
    ///
    /// # Panics
    /// If `rhs.nrows() != self.ncols()`.
    #[track_caller]
    pub fn try_matmat(&self, rhs: MatRef<'_, T>) -> Result<faer::Mat<T>, Error> {
        self.try_product(Mode::Apply, rhs)
    }

    /// `selfᴴ · rhs` in a new matrix, with errors returned: see
    /// [`Pmatmat::try_matmat`].
    ///
    /// # Errors
    /// As [`Pmatmat::try_matmat`].
    ///
    /// # Panics
    /// If `rhs.nrows() != self.nrows()`.
    #[track_caller]
    pub fn try_rmatmat(&self, rhs: MatRef<'_, T>) -> Result<faer::Mat<T>, Error> {
        self.try_product(Mode::Adjoint, rhs)
    }

    #[track_caller]
    fn try_product(&self, mode: Mode, rhs: MatRef<'_, T>) -> Result<faer::Mat<T>, Error> {
        let (m, n) = mode.dims_of(&self.op);
        crate::ops::mode::check_shapes("Pmatmat", self.shape(), mode, (m, rhs.ncols()), (rhs.nrows(), rhs.ncols()));
        let _ = n;
        let mut out = faer::Mat::zeros(m, rhs.ncols());
        let mut buf = faer::dyn_stack::MemBuffer::new(self.scratch(mode, rhs.ncols(), Par::Seq));
        self.try_run(mode, out.as_mut(), rhs, MemStack::new(&mut buf))?;
        Ok(out)
    }

    fn try_run(&self, mode: Mode, out: MatMut<'_, T>, rhs: MatRef<'_, T>, stack: &mut MemStack) -> Result<(), Error> {
        let nblocks = self.nblocks(self.op.nrows(), self.op.ncols(), rhs.ncols());
        let work = self.work(mode);
        match &self.backend {
            Backend::Thread(t) => {
                t.run(work, out, rhs, nblocks, stack);
                Ok(())
            }
            #[cfg(unix)]
            Backend::Process(p) => p.run(work, out, rhs, nblocks, stack),
            #[cfg(feature = "mpi")]
            Backend::Mpi(r) => r.run(work, out, rhs, nblocks <= 1, stack),
        }
    }

    fn work(&self, mode: Mode) -> Work<'_, L> {
        Work { op: &self.op, mode, use_matvec: self.use_matvec }
    }

    /// Replaces the workers of a process pool (`procs_created_once`) with new
    /// ones forked from this process: after a worker died, or to give the
    /// workers a fresh snapshot. Does nothing for other methods.
    ///
    /// # Errors
    /// [`Error::Os`] if the new workers cannot be forked.
    pub fn rebuild_pool(&mut self) -> Result<(), Error> {
        match &mut self.backend {
            #[cfg(unix)]
            Backend::Process(p) => p.rebuild(&self.op),
            _ => Ok(()),
        }
    }
}

impl<T: Scalar, L: BiLinOp<T>> ModeOp<T> for Pmatmat<T, L> {
    const NAME: &'static str = "Pmatmat";

    fn shape(&self) -> (usize, usize) {
        (self.op.nrows(), self.op.ncols())
    }

    fn scratch(&self, mode: Mode, k: usize, _: Par) -> StackReq {
        let nblocks = self.nblocks(self.op.nrows(), self.op.ncols(), k);
        let unit = self.work(mode).scratch(k, nblocks);
        match &self.backend {
            Backend::Thread(_) => thread::scratch(nblocks, unit),
            // Each process has its own copy of the caller's scratch.
            #[cfg(unix)]
            Backend::Process(_) => unit,
            #[cfg(feature = "mpi")]
            Backend::Mpi(r) => r.scratch::<T>(mode.dims_of(&self.op).0, k, unit),
        }
    }

    #[track_caller]
    fn run(&self, mode: Mode, out: MatMut<'_, T>, rhs: MatRef<'_, T>, _: Par, stack: &mut MemStack) {
        if let Err(e) = self.try_run(mode, out, rhs, stack) {
            panic!("lazylinop: {e}");
        }
    }
}

impl_bilinop!([L: BiLinOp<T>] Pmatmat<T, L> where T: Scalar);

/// Whether this process is a forked worker of the process backend (no
/// threads but the one that forked; rayon must not be entered).
pub(crate) fn in_forked_worker() -> bool {
    #[cfg(unix)]
    return process::in_forked_worker();
    #[cfg(not(unix))]
    return false;
}

/// What every worker computes in one product: `op` in `mode` on its block
/// of columns, at once or (`use_matvec`) one column at a time, with
/// `Par::Seq`.
pub(crate) struct Work<'a, L> {
    pub(crate) op: &'a L,
    pub(crate) mode: Mode,
    pub(crate) use_matvec: bool,
}

impl<L> Clone for Work<'_, L> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<L> Copy for Work<'_, L> {}

impl<L> Work<'_, L> {
    /// One worker's block: `out = op_mode · rhs`.
    pub(crate) fn block<T: ComplexField>(&self, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>, stack: &mut MemStack)
    where
        L: BiLinOp<T>,
    {
        if !self.use_matvec {
            return self.mode.apply(self.op, out, rhs, Par::Seq, stack);
        }
        for j in 0..rhs.ncols() {
            self.mode.apply(self.op, out.rb_mut().subcols_mut(j, 1), rhs.subcols(j, 1), Par::Seq, stack);
        }
    }

    /// Scratch of the widest block when `k` columns are split into `nblocks`.
    pub(crate) fn scratch<T: ComplexField>(&self, k: usize, nblocks: usize) -> StackReq
    where
        L: BiLinOp<T>,
    {
        let width = if self.use_matvec { k.min(1) } else { split::widest(k, nblocks.max(1)) };
        self.mode.scratch(self.op, width, Par::Seq)
    }
}
