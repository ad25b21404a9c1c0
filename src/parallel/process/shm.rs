//! Shared memory for worker processes: anonymous files (`memfd_create`)
//! mapped `MAP_SHARED` with memmap2, so that writes from a forked child are
//! seen by its parent. Nothing is ever created on a filesystem: the memory
//! goes away with the last descriptor and mapping, even after a crash.
//!
//! A buffer freed by the process that created it frees its memory in every
//! process: its file is truncated to nothing first (then unmapped). Pool
//! workers keep the mappings the parent had when they were forked (the
//! operator may need any of them), so without this a freed buffer would stay
//! allocated as long as the pool lives. A process that still maps the file
//! (a worker's stale snapshot, a process the program forked) and touches it
//! afterwards gets `SIGBUS`: an error, never stale data. A buffer freed in
//! another process (a forked copy of it) only lets go of that copy.
//!
//! (memmap2's `map_anon` is `MAP_PRIVATE`: a child's writes would stay in
//! the child.)

use std::ffi::CStr;
use std::num::NonZeroI32;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use faer::{MatMut, MatRef};
use memmap2::{MmapMut, MmapOptions};
use nix::sys::memfd::{MFdFlags, memfd_create};

use super::os;
use crate::parallel::{Error, Scalar};

/// A shared, zero-filled buffer of bytes: a memfd and its `MAP_SHARED` map.
#[derive(Debug)]
pub(crate) struct SharedBuf {
    map: MmapMut,
    fd: OwnedFd,
    len: usize,
    /// The process that created the memfd: dropped there, it truncates it
    /// (see the module docs). `None` for a map of a received memfd.
    creator: Option<NonZeroI32>,
}

const NAME: &CStr = c"lazylinop";

impl SharedBuf {
    /// A new buffer of `len` bytes.
    pub(crate) fn new(len: usize) -> Result<Self, Error> {
        let fd = memfd_create(NAME, MFdFlags::MFD_CLOEXEC).map_err(|e| os("memfd_create", e.into()))?;
        // A map cannot be empty: keep at least one byte.
        nix::unistd::ftruncate(&fd, len.max(1) as i64).map_err(|e| os("ftruncate of a shared buffer", e.into()))?;
        let mut buf = Self::from_fd(fd, len)?;
        buf.creator = NonZeroI32::new(nix::unistd::getpid().as_raw());
        Ok(buf)
    }

    /// Maps `len` bytes of the memfd `fd` (received from another process).
    pub(crate) fn from_fd(fd: OwnedFd, len: usize) -> Result<Self, Error> {
        // SAFETY: the memfd is private to this crate's processes, which only
        // touch it through faer views of disjoint column blocks while a
        // product runs (see the backends). Its size shrinks only when the
        // process that created it drops its buffer (`Drop`), which no view
        // of that process outlives; a view in another process then faults
        // (SIGBUS) instead of reading: the process ends, nothing is read.
        let map =
            unsafe { MmapOptions::new().len(len.max(1)).map_mut(&fd) }.map_err(|e| os("mmap of a shared buffer", e))?;
        Ok(Self { map, fd, len, creator: None })
    }

    /// The size asked for, in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn elements<T: Scalar>(&self, n: usize) -> &[T] {
        bytemuck::cast_slice(&self.map[..n * size_of::<T>()])
    }

    fn elements_mut<T: Scalar>(&mut self, n: usize) -> &mut [T] {
        bytemuck::cast_slice_mut(&mut self.map[..n * size_of::<T>()])
    }

    /// The first `nrows · ncols` elements as a column-major matrix.
    ///
    /// # Panics
    /// If the buffer is too small.
    pub(crate) fn mat<T: Scalar>(&self, nrows: usize, ncols: usize) -> MatRef<'_, T> {
        MatRef::from_column_major_slice(self.elements(nrows * ncols), nrows, ncols)
    }

    /// The first `nrows · ncols` elements as a mutable column-major matrix.
    ///
    /// # Panics
    /// If the buffer is too small.
    pub(crate) fn mat_mut<T: Scalar>(&mut self, nrows: usize, ncols: usize) -> MatMut<'_, T> {
        MatMut::from_column_major_slice_mut(self.elements_mut(nrows * ncols), nrows, ncols)
    }
}

impl Drop for SharedBuf {
    /// In the process that created the memfd, empties it before unmapping:
    /// its memory goes now, also from every other process that maps it.
    fn drop(&mut self) {
        if self.creator.is_some_and(|pid| pid.get() == nix::unistd::getpid().as_raw()) {
            let _ = nix::unistd::ftruncate(&self.fd, 0);
        }
    }
}

/// The address ranges of live [`SharedMat`]s, to recognise an output that
/// worker processes can write in place.
static SHARED: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

fn registry() -> std::sync::MutexGuard<'static, Vec<(usize, usize)>> {
    SHARED.lock().unwrap_or_else(|e| e.into_inner())
}

/// The bytes `[start, end)` spanned by the entries of `m`; `None` if it is empty.
pub(crate) fn byte_range<T>(m: MatRef<'_, T>) -> Option<(usize, usize)> {
    if m.nrows() == 0 || m.ncols() == 0 {
        return None;
    }
    let size = size_of::<T>() as isize;
    let rows = m.row_stride() * (m.nrows() as isize - 1);
    let cols = m.col_stride() * (m.ncols() as isize - 1);
    let lo = rows.min(0) + cols.min(0);
    let hi = rows.max(0) + cols.max(0);
    let base = m.as_ptr() as isize;
    Some(((base + lo * size) as usize, (base + hi * size + size) as usize))
}

/// Whether every entry of `m` lies in one live [`SharedMat`].
pub(crate) fn is_shared<T>(m: MatRef<'_, T>) -> bool {
    let Some((lo, hi)) = byte_range(m) else { return false };
    registry().iter().any(|&(start, end)| start <= lo && hi <= end)
}

/// A column-major matrix in shared memory.
///
/// Allocate the output of a process-backend product in one and the workers
/// write their blocks straight into it: nothing is copied back. It is also a
/// plain faer matrix ([`SharedMat::as_ref`], [`SharedMat::as_mut`]) and
/// behaves like any other memory for everything else.
///
/// Dropped in the process that made it, it frees its memory in every
/// process, also in pool workers forked while it lived (they keep the
/// parent's maps): another process that still reads it then dies of
/// `SIGBUS` (a pool worker's death is an [`Error::WorkerDied`]). Dropped in
/// another process (a forked copy), it leaves the memory to its maker.
///
/// # Examples
/// ```
/// use lazylinop::prelude::*;
/// use lazylinop::parallel::{pmatmat_multiprocess, process::SharedMat};
/// use faer::Par;
/// use faer::dyn_stack::{MemBuffer, MemStack};
///
/// let a = lazylinop::random::mat::<f64>(100, 80, 0);
/// let x = lazylinop::random::mat::<f64>(80, 16, 1);
/// let l = pmatmat_multiprocess(&a, Some(2), false, false).unwrap();
/// let mut out = SharedMat::<f64>::zeros(100, 16).unwrap();
/// let mut buf = MemBuffer::new(l.apply_scratch(16, Par::Seq));
/// l.apply(out.as_mut(), x.as_ref(), Par::Seq, MemStack::new(&mut buf));
/// assert!((out.as_ref() - &a * &x).norm_max() < 1e-12);
/// ```
#[derive(Debug)]
pub struct SharedMat<T> {
    buf: SharedBuf,
    nrows: usize,
    ncols: usize,
    _scalar: core::marker::PhantomData<T>,
}

impl<T: Scalar> SharedMat<T> {
    /// An `nrows × ncols` matrix of zeros in a new shared map.
    ///
    /// # Errors
    /// [`Error::Os`] if the memory cannot be created or mapped.
    pub fn zeros(nrows: usize, ncols: usize) -> Result<Self, Error> {
        let len = nrows.checked_mul(ncols).and_then(|n| n.checked_mul(size_of::<T>()));
        let len = len.ok_or_else(|| os("sizing a shared matrix", std::io::ErrorKind::OutOfMemory.into()))?;
        let buf = SharedBuf::new(len)?;
        let start = buf.map.as_ptr() as usize;
        registry().push((start, start + len));
        Ok(Self { buf, nrows, ncols, _scalar: core::marker::PhantomData })
    }

    /// A copy of `m` in a new shared map.
    ///
    /// # Errors
    /// As [`SharedMat::zeros`].
    pub fn from_mat(m: MatRef<'_, T>) -> Result<Self, Error> {
        let mut s = Self::zeros(m.nrows(), m.ncols())?;
        s.as_mut().copy_from(m);
        Ok(s)
    }

    /// The number of rows.
    pub fn nrows(&self) -> usize {
        self.nrows
    }

    /// The number of columns.
    pub fn ncols(&self) -> usize {
        self.ncols
    }

    /// A view of the matrix.
    pub fn as_ref(&self) -> MatRef<'_, T> {
        self.buf.mat(self.nrows, self.ncols)
    }

    /// A mutable view of the matrix.
    pub fn as_mut(&mut self) -> MatMut<'_, T> {
        self.buf.mat_mut(self.nrows, self.ncols)
    }
}

impl<T> Drop for SharedMat<T> {
    fn drop(&mut self) {
        let start = self.buf.map.as_ptr() as usize;
        registry().retain(|&(s, _)| s != start);
    }
}
