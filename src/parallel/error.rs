//! The errors of the parallel backends.

use core::fmt;

use super::Method;

/// Why building a parallel operator, or running one of its products, failed.
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
    /// A worker process did not answer within
    /// [`ProcessOptions::deadline`](super::ProcessOptions::deadline): it was
    /// killed and reaped (a pool that lost it answers [`Error::PoolBroken`]
    /// until rebuilt). A worker blocked on a lock another thread held when
    /// it was forked ends this way.
    DeadlineExceeded {
        /// The worker's index.
        worker: usize,
        /// Its process id.
        pid: i32,
        /// The deadline it missed.
        deadline: std::time::Duration,
    },
    /// A pool of processes lost a worker earlier; rebuild it with
    /// [`Pmatmat::rebuild_pool`](super::Pmatmat::rebuild_pool).
    PoolBroken(String),
    /// MPI cannot run this: not initialized, wrong thread, ranks that
    /// disagree on a shape, a worker count that is not the communicator's.
    Mpi(String),
    /// A rank failed (reading its part of a file, a panic in its block of a
    /// product, a product called from a thread MPI does not allow); every
    /// rank returns this same error, with the same message.
    Rank {
        /// The lowest rank that failed.
        rank: usize,
        /// Its error.
        message: String,
        /// The typed error, on the failing rank only (its file's error);
        /// `None` on the other ranks, which only received the message.
        source: Option<crate::npz::NpzError>,
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
            Error::DeadlineExceeded { worker, pid, deadline } => {
                write!(
                    f,
                    "process worker {worker} (pid {pid}) gave no answer within the deadline of {deadline:?} and was killed"
                )
            }
            Error::PoolBroken(why) => {
                write!(f, "the process pool is broken ({why}); rebuild it with Pmatmat::rebuild_pool")
            }
            Error::Mpi(why) => write!(f, "MPI: {why}"),
            Error::Rank { rank, message, .. } => write!(f, "rank {rank} failed: {message}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::ThreadPool(e) => Some(e),
            Error::Os { source, .. } => Some(source),
            Error::Rank { source: Some(source), .. } => Some(source),
            _ => None,
        }
    }
}
