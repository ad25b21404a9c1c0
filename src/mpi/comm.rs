//! [`Comm`]: an operator's own duplicate of the user's communicator, and the
//! one road by which its collective calls reach MPI (see the module docs of
//! [`crate::mpi`] for the rules this enforces).

use core::fmt;
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::thread::ThreadId;

use mpi::Threading;
use mpi::topology::SimpleCommunicator;
use mpi::traits::Communicator;

use super::collective::{Fault, agree};
use crate::parallel::Error;

/// Taken around every MPI call of this crate when MPI was initialized with
/// `Threading::Serialized`: MPI then allows calls from any thread, but one
/// at a time in the whole process.
static SERIALIZED: Mutex<()> = Mutex::new(());

/// Whether the calling thread may call MPI at `level`.
fn thread_allowed(level: Threading) -> bool {
    match level {
        Threading::Single | Threading::Funneled => {
            let mut main = 0;
            // SAFETY: MPI is initialized and not finalized (checked by every
            // caller); MPI_Is_thread_main may be called from any thread and
            // only writes the flag.
            unsafe { mpi::ffi::MPI_Is_thread_main(&mut main) };
            main != 0
        }
        Threading::Serialized | Threading::Multiple => true,
    }
}

const WRONG_THREAD: &str = "an MPI operator was used from a thread other than the one that built it: its products \
                            are collective, one at a time, in the same order on every rank, so they run on that \
                            thread only (build one operator per thread; with Threading::Single or Funneled, on \
                            the thread that initialized MPI)";

const NOT_INITIALIZED: &str = "MPI is not initialized: call mpi::initialize() and keep its Universe alive";

const FINALIZED: &str = "MPI was finalized (its Universe was dropped): the operator can no longer run products";

/// The communicator of one operator: a duplicate of the one it was given,
/// its size and rank (read once), the thread that may use it, and the state
/// that keeps every rank's sequence of collectives the same.
pub(crate) struct Comm {
    /// `None` only while dropping.
    comm: Option<SimpleCommunicator>,
    size: usize,
    rank: usize,
    level: Threading,
    /// The thread that built the operator: the only one that runs its products.
    owner: ThreadId,
    /// Held during a collective call: a nested call (from inside the
    /// operator's own product) finds it taken.
    busy: Mutex<()>,
    /// The first misuse (a call from another thread, or a nested call) not
    /// yet told to the other ranks, and whether the ranks agreed that the
    /// operator is dead.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// A misuse on this rank, told to the other ranks at the next agreement.
    misuse: Option<String>,
    /// Agreed on every rank: the failing rank and its message.
    dead: Option<(usize, String)>,
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Comm").field("rank", &self.rank).field("size", &self.size).finish()
    }
}

// SAFETY: the communicator handle is passed to MPI only (a) in `Comm::new`,
// `Comm::collective` and `Drop`, on the thread that built the operator
// (checked in each: other threads never reach MPI) and after checking that
// MPI is initialized and not finalized; that thread is one MPI allows
// (`thread_allowed`, checked at construction: with Single or Funneled, MPI's
// main thread); under `Serialized` every MPI call of this crate is also
// serialized process-wide (`SERIALIZED`); (b) nowhere else: `size`, `rank`
// and `Debug` use values read at construction. Dropping on another thread
// leaks the handle. An MPI handle is a plain value with no thread affinity,
// so moving it to another thread is covered by the same checks.
unsafe impl Send for Comm {}
// SAFETY: as above: every use through `&Comm` goes through those checks.
unsafe impl Sync for Comm {}

impl Comm {
    /// Duplicates `comm` (collective): this operator's messages can then
    /// never match the program's own. The calling thread becomes the one
    /// that runs the operator's products.
    ///
    /// # Errors
    /// [`Error::Mpi`] if MPI is not initialized, already finalized, or does
    /// not allow the calling thread. These are checked on this rank only,
    /// before the duplication: construction must run on every rank from a
    /// thread MPI allows.
    pub(crate) fn new<C: Communicator + ?Sized>(comm: &C) -> Result<Self, Error> {
        if !mpi::is_initialized() {
            return Err(Error::Mpi(NOT_INITIALIZED.into()));
        }
        if mpi::is_finalized() {
            return Err(Error::Mpi(FINALIZED.into()));
        }
        let level = mpi::environment::threading_support();
        if !thread_allowed(level) {
            return Err(Error::Mpi(
                "MPI was initialized with Threading::Single or Funneled: MPI operators must be built (and used) on \
                 the thread that initialized it"
                    .into(),
            ));
        }
        let _serial = (level == Threading::Serialized).then(|| lock(&SERIALIZED));
        let dup = comm.duplicate();
        let (size, rank) = (dup.size() as usize, dup.rank() as usize);
        Ok(Self {
            comm: Some(dup),
            size,
            rank,
            level,
            owner: std::thread::current().id(),
            busy: Mutex::new(()),
            state: Mutex::new(State::default()),
        })
    }

    /// The duplicate of the world communicator.
    pub(crate) fn world() -> Result<Self, Error> {
        if !mpi::is_initialized() {
            return Err(Error::Mpi(NOT_INITIALIZED.into()));
        }
        Self::new(&SimpleCommunicator::world())
    }

    /// The number of ranks.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// This process's rank.
    pub(crate) fn rank(&self) -> usize {
        self.rank
    }

    /// Runs one collective call: the agreement on `settings` and on this
    /// rank's `fault` (a check of its operands that failed here) and misuse,
    /// if any, on every rank, then `body`. Only the thread that built the
    /// operator reaches MPI, so every rank's sequence of agreements is its
    /// products in that thread's order.
    pub(crate) fn collective<R>(
        &self,
        settings: &[(&'static str, u64)],
        fault: Option<Fault>,
        body: impl FnOnce(&Session<'_>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        self.call(Some((settings, fault)), body)
    }

    /// A collective call without the agreement: for a call whose place in
    /// every rank's sequence was agreed by an earlier call of the same
    /// computation, on the same thread (the reductions of an iterative
    /// solver, whose start is agreed and whose every branch depends on
    /// values all ranks share). The same checks otherwise.
    pub(crate) fn unagreed<R>(&self, body: impl FnOnce(&Session<'_>) -> Result<R, Error>) -> Result<R, Error> {
        self.call(None, body)
    }

    fn call<R>(
        &self,
        agreement: Option<Agreement<'_>>,
        body: impl FnOnce(&Session<'_>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        // Finalization is collective: every rank sees it at the same call.
        if mpi::is_finalized() {
            return Err(Error::Mpi(FINALIZED.into()));
        }
        if let Some(error) = self.dead() {
            return Err(error);
        }
        let misuse = if std::thread::current().id() != self.owner { Some(WRONG_THREAD) } else { None };
        let busy = match (misuse, self.busy.try_lock()) {
            (None, Ok(guard)) => guard,
            (None, Err(TryLockError::Poisoned(e))) => e.into_inner(),
            (misuse, _) => {
                // No MPI from here: the other ranks learn of it at this rank's
                // next agreement (its next product, or its drop).
                let message = misuse.unwrap_or(NESTED).to_owned();
                lock(&self.state).misuse.get_or_insert_with(|| message.clone());
                return Err(Error::Rank { rank: self.rank, message, source: None });
            }
        };
        let session = Session { comm: self, communicator: self.comm.as_ref().expect("alive") };
        if let Some((settings, fault)) = agreement {
            session.first_agreement(settings, fault)?;
        }
        let value = body(&session);
        drop(busy);
        value
    }

    /// How `other` relates to this communicator (`MPI_Comm_compare`, a local
    /// call); `None` when this thread may not call MPI now.
    pub(crate) fn relation(&self, other: &Comm) -> Option<mpi::topology::CommunicatorRelation> {
        if mpi::is_finalized() || std::thread::current().id() != self.owner {
            return None;
        }
        let (a, b) = (self.comm.as_ref()?, other.comm.as_ref()?);
        let _serial = (self.level == Threading::Serialized).then(|| lock(&SERIALIZED));
        Some(a.compare(b))
    }

    /// The error of every call once the ranks agreed that the operator is dead.
    fn dead(&self) -> Option<Error> {
        let state = lock(&self.state);
        let (rank, message) = state.dead.as_ref()?;
        Some(Error::Rank {
            rank: *rank,
            message: format!("{message} (the operator can no longer run products: build a new one)"),
            source: None,
        })
    }
}

const NESTED: &str = "a product of an MPI operator was called from inside one of its own products";

impl Drop for Comm {
    fn drop(&mut self) {
        let Some(comm) = self.comm.take() else { return };
        // After MPI_Finalize, or on a thread that is not the operator's, no
        // MPI call is possible: the handle is leaked (MPI frees it at finalize).
        if !mpi::is_initialized() || mpi::is_finalized() || std::thread::current().id() != self.owner {
            core::mem::forget(comm);
            return;
        }
        // A misuse not yet told: the other ranks are waiting in the product
        // this rank called from another thread; tell them.
        let owed = {
            let state = lock(&self.state);
            state.dead.is_none() && state.misuse.is_some()
        };
        if owed {
            let session = Session { comm: self, communicator: &comm };
            let _ = session.first_agreement(&[], None);
        }
        let _serial = (self.level == Threading::Serialized).then(|| lock(&SERIALIZED));
        drop(comm);
    }
}

/// A collective call in progress: the communicator, one call at a time.
pub(crate) struct Session<'a> {
    comm: &'a Comm,
    communicator: &'a SimpleCommunicator,
}

impl Session<'_> {
    /// The number of ranks.
    pub(crate) fn size(&self) -> usize {
        self.comm.size
    }

    /// This process's rank.
    pub(crate) fn rank(&self) -> usize {
        self.comm.rank
    }

    /// Runs `f` with the communicator (process-wide one at a time under
    /// `Threading::Serialized`).
    pub(crate) fn mpi<R>(&self, f: impl FnOnce(&SimpleCommunicator) -> R) -> R {
        let _serial = (self.comm.level == Threading::Serialized).then(|| lock(&SERIALIZED));
        f(self.communicator)
    }

    /// Every rank checks that all have the same `settings` and learns
    /// whether any rank has a fault: the same error on every rank otherwise.
    pub(crate) fn agree(&self, settings: &[(&'static str, u64)], fault: Option<Fault>) -> Result<(), Error> {
        self.mpi(|c| agree(c, settings, fault))
    }

    /// The first agreement of a call: the settings, and this rank's misuse.
    /// A misuse on any rank makes the operator dead on every rank, at this
    /// same agreement.
    fn first_agreement(&self, settings: &[(&'static str, u64)], fault: Option<Fault>) -> Result<(), Error> {
        let misuse = lock(&self.comm.state).misuse.take().map(Fault::misuse);
        let result = self.agree(settings, misuse.or(fault));
        // A misuse on any rank wins over other faults (`agree`) and makes the
        // operator dead on every rank: all learn it from the agreed message.
        if let Err(Error::Rank { rank, message, .. }) = &result
            && (message == WRONG_THREAD || message == NESTED)
        {
            lock(&self.comm.state).dead = Some((*rank, message.clone()));
        }
        result
    }

    /// The outcome of this rank's local work (a file read, a block of a
    /// product), agreed before anyone waits on another rank's data.
    pub(crate) fn outcome<V>(&self, local: Result<V, Fault>) -> Result<V, Error> {
        match local {
            Ok(v) => self.agree(&[], None).map(|()| v),
            Err(fault) => Err(self.agree(&[], Some(fault)).expect_err("a fault is an error on every rank")),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a collective call agrees on first: its settings, and this rank's misuse.
type Agreement<'a> = (&'a [(&'static str, u64)], Option<Fault>);
