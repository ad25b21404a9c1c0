//! [`Pmatmat`]: the operator whose products run over blocks of columns, and
//! the dispatch of a product to its backend.

use core::fmt;
use core::marker::PhantomData;

use faer::dyn_stack::{MemStack, StackReq};
use faer::{MatMut, MatRef, Par};

use super::{Error, Method, MpiOptions, Scalar, Work, split, thread};
use crate::BiLinOp;
use crate::ops::{Mode, ModeOp, impl_bilinop};

#[cfg(unix)]
use super::process;

/// The workers of a [`Pmatmat`].
#[derive(Debug)]
pub(crate) enum Backend {
    Thread(thread::Threads),
    #[cfg(unix)]
    Process(process::Processes),
    #[cfg(feature = "mpi")]
    Mpi(crate::mpi::Ranks),
}

/// An operator whose products run in parallel over blocks of columns: see
/// the [module docs](super) and [`pmatmat`](fn@super::pmatmat).
///
/// With a process pool ([`Method::process_pool`]), the workers compute with
/// a snapshot of the operator taken when it was built: refresh it with
/// [`Pmatmat::rebuild_pool`] after changing an operator that has interior
/// mutability.
///
/// The `par` argument of its products is ignored: the parallelism is the
/// one chosen when it was built (`nworkers`), and the wrapped operator
/// always runs with `Par::Seq` inside a worker, so that workers do not
/// oversubscribe the machine. Every product with at least two columns is
/// split, whatever its size (an operator's cost is not known from its
/// shape); [`Pmatmat::with_min_parallel_work`] keeps small products on the
/// calling thread.
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

impl<T, L> Pmatmat<T, L> {
    pub(crate) fn new(op: L, method: Method, use_matvec: bool, backend: Backend) -> Self {
        Self { op, method, use_matvec, min_parallel_work: 0, backend, _scalar: PhantomData }
    }

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
    /// thread; `0` (the default) splits every product with at least two
    /// columns.
    pub fn min_parallel_work(&self) -> usize {
        self.min_parallel_work
    }

    /// Sets [`Pmatmat::min_parallel_work`]: an opt-in for operators whose
    /// cost follows their shape, such as dense matrices. Handing a small
    /// dense product to workers costs more than it saves: on 2 cores,
    /// 200×200 @ 200×16 (work 2²⁰·0.6) split over two threads measured
    /// 0.96–1.3× the sequential time (see BENCHMARKS.md), so `1 << 20` is a
    /// reasonable threshold for dense operators on threads; processes and
    /// MPI ranks cost more per product. With MPI, every rank must set the
    /// same value (checked before each product).
    pub fn with_min_parallel_work(mut self, work: usize) -> Self {
        self.min_parallel_work = work;
        self
    }

    /// The MPI options (feature `mpi`); `None` for other methods.
    pub fn mpi_options(&self) -> Option<MpiOptions> {
        match self.method {
            Method::Mpi(o) => Some(o),
            _ => None,
        }
    }

    /// The process ids of a pool's forked workers that are still running
    /// (`procs_created_once`: `nworkers - 1` of them, this process being the
    /// last worker; a lost worker is left out); empty for other methods.
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
        let m = mode.dims_of(&self.op).0;
        crate::ops::mode::check_shapes("Pmatmat", self.shape(), mode, (m, rhs.ncols()), (rhs.nrows(), rhs.ncols()));
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
            Backend::Mpi(r) => r.run(work, out, rhs, self.min_parallel_work, nblocks <= 1, stack),
        }
    }

    fn work(&self, mode: Mode) -> Work<'_, L> {
        Work { op: &self.op, mode, use_matvec: self.use_matvec }
    }

    /// Replaces the workers of a process pool (`procs_created_once`) with new
    /// ones forked from this process: after a worker died, or to give the
    /// workers a fresh snapshot of the operator. **A pool's workers compute
    /// with the operator as it was when they were forked**: after changing an
    /// operator with interior mutability, call this, or the workers' columns
    /// come from the old operator and the parent's from the new one (see
    /// [`process`](super::process#snapshots)). Does nothing for other methods.
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
