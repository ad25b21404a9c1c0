//! Where the blocks of a parallel product run, and each backend's options.
//!
//! Options that only one backend has live in that backend's variant of
//! [`Method`], so that no setter can silently do nothing on another one.

use core::str::FromStr;
use std::time::Duration;

use super::Error;

/// Where the blocks of a parallel product run.
///
/// Parse one from `"thread"`, `"process"` (forked per product) or `"mpi"`,
/// as Python lazylinop's `method` argument.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// Threads of a rayon pool created with the operator.
    Thread,
    /// Forked worker processes (unix).
    Process(ProcessOptions),
    /// The ranks of MPI's world communicator (feature `mpi`).
    Mpi(MpiOptions),
}

impl Method {
    /// Forked processes, new ones for each product.
    pub fn process() -> Self {
        Method::Process(ProcessOptions::default())
    }

    /// Forked processes, a pool forked once when the operator is built.
    pub fn process_pool() -> Self {
        Method::Process(ProcessOptions { procs_created_once: true, ..ProcessOptions::default() })
    }

    /// MPI's world communicator, the result gathered on rank 0.
    pub fn mpi() -> Self {
        Method::Mpi(MpiOptions::default())
    }
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
            "process" => Ok(Method::process()),
            "mpi" => Ok(Method::mpi()),
            _ => Err(Error::UnknownMethod(s.to_owned())),
        }
    }
}

/// Options of the process backend ([`Method::Process`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ProcessOptions {
    /// Keep a pool of workers forked once, when the operator is built
    /// (`true`), or fork new workers at each product (`false`, the default).
    pub procs_created_once: bool,
    /// How long a product may wait for its workers; `None` (the default) is
    /// no limit. A worker that has not answered by then (blocked on a lock
    /// another thread held when it was forked, say) is killed, reaped and
    /// reported as [`Error::DeadlineExceeded`]; a pool is then broken until
    /// rebuilt.
    pub deadline: Option<Duration>,
}

impl ProcessOptions {
    /// Sets [`ProcessOptions::procs_created_once`].
    pub fn procs_created_once(mut self, once: bool) -> Self {
        self.procs_created_once = once;
        self
    }

    /// Sets [`ProcessOptions::deadline`].
    pub fn deadline(mut self, deadline: Option<Duration>) -> Self {
        self.deadline = deadline;
        self
    }
}

/// Where the result of a distributed product goes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum Gather {
    /// To rank 0 only, as Python lazylinop; the other ranks' output is not
    /// written (except for products computed whole on every rank: fewer
    /// than two columns, or less work than
    /// [`Pmatmat::min_parallel_work`](crate::parallel::Pmatmat::min_parallel_work)).
    #[default]
    Root,
    /// To every rank (allgather, allreduce): what faer's solvers need when
    /// they run on every rank.
    All,
}

/// The default largest MPI message: 1 GiB. MPI counts are `i32`, and some
/// MPI stacks mishandle messages of several GiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 30;

/// Options of the MPI backend ([`Method::Mpi`], `pmatmat_mpi`, `MpiLop`).
/// Every rank must use the same options (checked before each product).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MpiOptions {
    /// Where the result goes ([`Gather::Root`] by default).
    pub gather: Gather,
    /// Messages are split into pieces of at most this many bytes (at least
    /// one element); [`DEFAULT_MAX_MESSAGE_BYTES`] by default.
    pub max_message_bytes: usize,
}

impl Default for MpiOptions {
    fn default() -> Self {
        Self { gather: Gather::Root, max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES }
    }
}

impl MpiOptions {
    /// Sets [`MpiOptions::gather`].
    pub fn gather(mut self, gather: Gather) -> Self {
        self.gather = gather;
        self
    }

    /// Sets [`MpiOptions::max_message_bytes`].
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }
}
