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
//! | [`Method::Process`] | forked processes (not yet available) | |
//! | [`Method::Mpi`] | MPI ranks (not yet available) | |

pub mod split;
pub mod thread;

use core::fmt;
use core::marker::PhantomData;
use core::str::FromStr;

use faer::dyn_stack::{MemStack, StackReq};
use faer::traits::ComplexField;
use faer::{MatMut, MatRef, Par};

use crate::BiLinOp;
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
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::ThreadPool(e) => Some(e),
            _ => None,
        }
    }
}

/// The workers of a [`Pmatmat`].
#[derive(Debug)]
enum Backend {
    Thread(thread::Threads),
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
/// [`DynOp`](crate::ops::DynOp), or a reference `&L`.
///
/// # Errors
/// [`Error::ZeroWorkers`] for `Some(0)`; [`Error::Unavailable`] for a method
/// this build does not have; [`Error::ThreadPool`] if the threads cannot
/// start.
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
pub fn pmatmat<T: ComplexField, L: BiLinOp<T>>(
    op: L,
    method: Method,
    nworkers: Option<usize>,
    use_matvec: bool,
) -> Result<Pmatmat<T, L>, Error> {
    let nworkers = resolve_nworkers(nworkers)?;
    let backend = match method {
        Method::Thread => Backend::Thread(thread::Threads::new(nworkers)?),
        Method::Process { .. } => {
            return Err(Error::Unavailable(method, "the process backend is not implemented yet"));
        }
        Method::Mpi => return Err(Error::Unavailable(method, "the MPI backend is not implemented yet")),
    };
    Ok(Pmatmat { op, method, use_matvec, min_parallel_work: DEFAULT_MIN_PARALLEL_WORK, backend, _scalar: PhantomData })
}

/// `pmatmat(op, Method::Thread, nworkers, use_matvec)`, as Python
/// lazylinop's `pmatmat_multithread`.
///
/// # Errors
/// As [`pmatmat`].
pub fn pmatmat_multithread<T: ComplexField, L: BiLinOp<T>>(
    op: L,
    nworkers: Option<usize>,
    use_matvec: bool,
) -> Result<Pmatmat<T, L>, Error> {
    pmatmat(op, Method::Thread, nworkers, use_matvec)
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

    /// How many blocks a product with `k` columns is split into.
    fn nblocks(&self, m: usize, n: usize, k: usize) -> usize {
        let work = m.saturating_mul(n).saturating_mul(k);
        if work < self.min_parallel_work { 1 } else { split::nonempty(k, self.nworkers()) }
    }
}

impl<T: ComplexField, L: BiLinOp<T>> ModeOp<T> for Pmatmat<T, L> {
    const NAME: &'static str = "Pmatmat";

    fn shape(&self) -> (usize, usize) {
        (self.op.nrows(), self.op.ncols())
    }

    fn scratch(&self, mode: Mode, k: usize, _: Par) -> StackReq {
        let nblocks = self.nblocks(self.op.nrows(), self.op.ncols(), k);
        match &self.backend {
            Backend::Thread(_) => thread::scratch(&self.op, mode, k, nblocks, self.use_matvec),
        }
    }

    fn run(&self, mode: Mode, out: MatMut<'_, T>, rhs: MatRef<'_, T>, _: Par, stack: &mut MemStack) {
        let nblocks = self.nblocks(self.op.nrows(), self.op.ncols(), rhs.ncols());
        match &self.backend {
            Backend::Thread(t) => t.run(&self.op, mode, out, rhs, nblocks, self.use_matvec, stack),
        }
    }
}

impl_bilinop!([L: BiLinOp<T>] Pmatmat<T, L>);
