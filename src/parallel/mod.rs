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
//! | [`Method::Mpi`] | the ranks of an MPI communicator (feature `mpi`) | `crate::mpi` |

//!
//! | file | what it holds |
//! |---|---|
//! | [`method`] | [`Method`] and each backend's options |
//! | [`error`] | [`Error`] |
//! | [`operator`] | [`Pmatmat`] and the dispatch of a product to its backend |
//! | `work` | one worker's job: the operator, the mode, `use_matvec` |
//! | [`split`] | the one column split every backend uses |

pub mod error;
pub mod method;
pub mod operator;
#[cfg(unix)]
pub mod process;
pub mod split;
pub mod thread;
mod work;

pub use error::Error;
pub use method::{DEFAULT_MAX_MESSAGE_BYTES, Gather, Method, MpiOptions, ProcessOptions};
pub use operator::Pmatmat;
pub(crate) use work::{Work, in_forked_worker};

use crate::BiLinOp;
pub use crate::Scalar;
use operator::Backend;

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
        Method::Process(options) => Backend::Process(process::Processes::new(&op, nworkers, options)?),
        #[cfg(not(unix))]
        Method::Process { .. } => return Err(Error::Unavailable(method, "forked processes need a unix system")),
        #[cfg(feature = "mpi")]
        Method::Mpi(options) => {
            let ranks = crate::mpi::Ranks::world(options)?;
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
        Method::Mpi(_) => return Err(Error::Unavailable(method, "build lazylinop with the cargo feature `mpi`")),
    };
    Ok(Pmatmat::new(op, method, use_matvec, backend))
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

/// `pmatmat(op, Method::Process(ProcessOptions::default().procs_created_once(procs_created_once)), nworkers, use_matvec)`,
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
    pmatmat(op, Method::Process(ProcessOptions::default().procs_created_once(procs_created_once)), nworkers, use_matvec)
}

/// `op` with its products distributed over the ranks of `comm`, as Python
/// lazylinop's `pmatmat_mpi` (feature `mpi`).
///
/// Collective: the operator works on its own duplicate of `comm`, made
/// here, so that its messages never match the program's own. SPMD: every
/// rank builds the same operator and calls the same products, one at a
/// time, in the same order, with operands of the same shape and the same
/// settings (checked before each product: a difference is the same error
/// on every rank). Rank `r` computes column block `r` of the result;
/// `options.gather` says whether the blocks are gathered on rank 0 only
/// ([`Gather::Root`], the other ranks' output is not written) or on every
/// rank ([`Gather::All`], for faer's solvers running on every rank).
/// Products with fewer than two columns or less work than
/// [`Pmatmat::min_parallel_work`] are computed whole on every rank, without
/// messages. See [`crate::mpi`] for threads, panics and finalization.
///
/// # Errors
/// [`Error::Mpi`] if MPI is not initialized, finalized, or does not allow
/// the calling thread.
///
/// # Examples
/// See `examples/pmatmat_mpi.rs`, run with `mpirun -n 2`.
#[cfg(feature = "mpi")]
pub fn pmatmat_mpi<T: Scalar, L: BiLinOp<T>, C: ::mpi::traits::Communicator + ?Sized>(
    op: L,
    comm: &C,
    use_matvec: bool,
    options: MpiOptions,
) -> Result<Pmatmat<T, L>, Error> {
    let ranks = crate::mpi::Ranks::new(comm, options)?;
    Ok(Pmatmat::new(op, Method::Mpi(options), use_matvec, Backend::Mpi(ranks)))
}

fn resolve_nworkers(nworkers: Option<usize>) -> Result<usize, Error> {
    match nworkers {
        Some(0) => Err(Error::ZeroWorkers),
        Some(n) => Ok(n),
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}
