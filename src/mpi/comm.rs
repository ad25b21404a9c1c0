//! [`Comm`]: an operator's own duplicate of the user's communicator, and the
//! one road by which its collective calls reach MPI (see the module docs of
//! [`crate::mpi`] for the rules this enforces).

use core::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

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

const WRONG_THREAD: &str = "a product was called from a thread MPI does not allow: MPI was initialized with \
                            Threading::Single or Funneled, so products must run on the thread that initialized \
                            it (or initialize with Threading::Serialized or Multiple)";

const NOT_INITIALIZED: &str = "MPI is not initialized: call mpi::initialize() and keep its Universe alive";

const FINALIZED: &str = "MPI was finalized (its Universe was dropped): the operator can no longer run products";

/// The communicator of one operator: a duplicate of the one it was given,
/// its size and rank (read once), and the state that keeps every rank's
/// sequence of collectives the same.
pub(crate) struct Comm {
    /// `None` only while dropping.
    comm: Option<SimpleCommunicator>,
    size: usize,
    rank: usize,
    level: Threading,
    /// Held for a whole collective call: one call at a time on this rank.
    busy: Mutex<()>,
    /// Set by a call that found another call of this operator in flight on
    /// this rank; read (and cleared) by the call in flight at its next
    /// agreement.
    overlapped: AtomicBool,
    /// Calls that failed before they could reach MPI (a thread MPI does not
    /// allow): each still owes the other ranks its first agreement, which
    /// the next call (or the drop) that can reach MPI makes for it, with its
    /// fault, before its own.
    owed: Mutex<Vec<Fault>>,
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Comm").field("rank", &self.rank).field("size", &self.size).finish()
    }
}

// SAFETY: the communicator handle is passed to MPI only (a) in `Comm::new`
// and `Comm::collective`, after checking that MPI is initialized and not
// finalized and that MPI allows the calling thread (`thread_allowed`: with
// Single or Funneled only MPI's main thread, whichever thread holds the
// `Comm`), with every call serialized process-wide under `Serialized`
// (`Session::mpi` and `SERIALIZED`), and one collective call of this
// operator at a time on this rank (`busy`); (b) in `Drop`, under the same
// checks, else it is leaked. `size`, `rank` and `Debug` use values read at
// construction. An MPI handle is a plain value with no thread affinity, so
// moving it to another thread is covered by the same checks.
unsafe impl Send for Comm {}
// SAFETY: as above: every use through `&Comm` goes through those checks.
unsafe impl Sync for Comm {}

impl Comm {
    /// Duplicates `comm` (collective): this operator's messages can then
    /// never match the program's own.
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
            return Err(Error::Mpi(WRONG_THREAD.replace("a product was", "an MPI operator was built")));
        }
        let _serial = (level == Threading::Serialized).then(|| lock(&SERIALIZED));
        let dup = comm.duplicate();
        let (size, rank) = (dup.size() as usize, dup.rank() as usize);
        Ok(Self {
            comm: Some(dup),
            size,
            rank,
            level,
            busy: Mutex::new(()),
            overlapped: AtomicBool::new(false),
            owed: Mutex::new(Vec::new()),
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

    /// Runs one collective call: the agreement on `settings` (and on this
    /// call's faults) on every rank, then `body`. Every call of every rank
    /// makes that first agreement exactly once, in call order, so a call
    /// that fails on one rank fails on all of them, at that agreement.
    pub(crate) fn collective<R>(
        &self,
        settings: &[(&'static str, u64)],
        body: impl FnOnce(&Session<'_>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        // Finalization is collective: every rank sees it at the same call.
        if mpi::is_finalized() {
            return Err(Error::Mpi(FINALIZED.into()));
        }
        if !thread_allowed(self.level) {
            // No MPI from here: the other ranks wait in this call's first
            // agreement until the next call (or the drop) on this rank makes
            // it for this one.
            let fault = Fault::new(WRONG_THREAD.into());
            let error = Error::Rank { rank: self.rank, message: fault.message.clone(), source: None };
            lock(&self.owed).push(fault);
            return Err(error);
        }
        let mut fault = None;
        let _busy = match self.busy.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => {
                // Another thread's call of this operator is in flight here: it
                // fails at its next agreement, and so does this one, after it,
                // so that every rank's sequence of agreements stays the same.
                self.overlapped.store(true, Ordering::SeqCst);
                fault = Some(Fault::new(
                    "a product of this operator was started while another was running on the same rank: \
                     products are collective, one at a time, in the same order on every rank"
                        .into(),
                ));
                let guard = lock(&self.busy);
                // The call it overlapped is over: its flag must not fail a later call.
                self.overlapped.store(false, Ordering::SeqCst);
                guard
            }
        };
        let session = Session { comm: self, communicator: self.comm.as_ref().expect("alive") };
        session.settle_owed();
        session.agree(settings, fault)?;
        let value = body(&session)?;
        // Last, whether another thread started a product of this operator
        // here meanwhile (the body's errors come from agreements: every rank
        // gets here, or none).
        session.outcome(Ok(value))
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        let Some(comm) = self.comm.take() else { return };
        // After MPI_Finalize, or on a thread MPI does not allow, no MPI call
        // is possible: the handle is leaked (MPI freed it at finalize).
        if !mpi::is_initialized() || mpi::is_finalized() || !thread_allowed(self.level) {
            core::mem::forget(comm);
            return;
        }
        let session = Session { comm: self, communicator: &comm };
        session.settle_owed();
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

    /// The outcome of this rank's local work, agreed before anyone waits on
    /// another rank's data; also fails if another thread started a product
    /// of this operator on this rank meanwhile.
    pub(crate) fn outcome<V>(&self, local: Result<V, Fault>) -> Result<V, Error> {
        let overlapped = self.comm.overlapped.swap(false, Ordering::SeqCst);
        let (value, fault) = match local {
            Err(fault) => (None, Some(fault)),
            Ok(v) if overlapped => (
                Some(v),
                Some(Fault::new(
                    "another product of this operator was started on the same rank while this one ran: products \
                     are collective, one at a time, in the same order on every rank"
                        .into(),
                )),
            ),
            Ok(v) => (Some(v), None),
        };
        self.agree(&[], fault)?;
        Ok(value.expect("no fault: this rank has its value"))
    }

    /// Makes the first agreement of the calls that could not reach MPI.
    fn settle_owed(&self) {
        let owed = core::mem::take(&mut *lock(&self.comm.owed));
        for fault in owed {
            // That call already returned its error on this rank; the other
            // ranks' same call now returns it too.
            let _ = self.agree(&[], Some(fault));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
