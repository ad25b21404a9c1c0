//! Sparse operators over faer's CSR and CSC matrices, with multi-column SIMD
//! kernels on column- or row-major operands, threads cut by nonzeros
//! ([`Prepared`]), and a matrix held in both formats ([`BothWays`]).
//!
//! [`Sparse`] wraps a faer sparse matrix (`SparseRowMat`, `SparseColMat`,
//! their `Ref` views, any faer index type) or a [`SparseView`] of raw
//! slices, and is an operator of this crate: all four products, faer's
//! [`LinOp`](crate::LinOp) / [`BiLinOp`](crate::BiLinOp), the whole algebra,
//! `pmatmat` on every backend. Unsorted indices and duplicate entries
//! (summed) are accepted, as faer accepts them.
//!
//! ```
//! use lazylinop::prelude::*;
//! use lazylinop::sparse::Sparse;
//! use faer::sparse::{SparseRowMat, Triplet};
//!
//! let a = SparseRowMat::<u32, f64>::try_new_from_triplets(
//!     3, 2, &[Triplet::new(0, 0, 1.0), Triplet::new(2, 1, 2.0), Triplet::new(2, 1, 3.0)],
//! ).unwrap();
//! let op = Sparse::new(a);
//! let x = faer::mat![[1.0], [10.0]];
//! assert_eq!(op.matmat(&x), faer::mat![[1.0], [0.0], [50.0]]);
//! assert_eq!(op.adjoint().to_dense(), faer::mat![[1.0, 0.0, 0.0], [0.0, 0.0, 5.0]]);
//! ```
//!
//! # Why not faer's own product
//! faer 0.24's sparse × dense product is a scalar loop that ignores its
//! `Par`: the CSC walk re-reads the whole matrix once per column of the
//! operand. The kernels here ([`matmul`]) walk the matrix once per *panel*
//! of columns (one to four SIMD vectors wide: 8 to 32 `f64` with AVX-512),
//! with one vector multiply-add per stored entry and vector of the panel,
//! and split
//! the work over the threads of `Par::Rayon` — also for a single column
//! (SpMV). The instruction set (AVX-512, AVX2+FMA, or scalar) is chosen at
//! run time by [pulp](https://docs.rs/pulp), faer's SIMD layer, so no
//! `target-cpu` flag is needed. All four scalar types take the SIMD path
//! (complex entries with pulp's complex vectors). How the walks, panels
//! and threads fit together is written at the top of the `kernel` module's
//! source.
//!
//! Inside `pmatmat`, workers call the operator with `Par::Seq`, so the
//! two levels of parallelism do not oversubscribe.
//!
//! Measured (`cargo bench --bench sparse`, f64, 20000 × 20000, 40 entries
//! a column, figures and machine in BENCHMARKS.md): on one core, several
//! times faer's product for 16 and 128 columns (the gather about 4×, the
//! scatter less) and on par or better for one column; two threads about
//! double that.
//!
//! # Both formats
//! A product walks the matrix along its stored dimension: a *gather* (each
//! output row a sum over the entries of one stored row: `CSR·X`, `CSCᵀ·X`)
//! or a *scatter* (each stored entry added into a random output row:
//! `CSC·X`, `CSRᵀ·X`), the slower of the two on many columns (its random
//! rows are read and written back). [`BothWays`] keeps a copy in the other
//! format, built once, so that every mode gathers: twice the memory, for
//! operators applied many times in the scatter's modes (a CSC matrix's
//! `A·X`, or both `A·X` and `Aᴴ·Y` in LSQR-like solvers).
//!
//! # Raw slices
//! [`SparseView::csr`] and [`SparseView::csc`] check compressed slices
//! once (offsets, lengths, every index) and return a typed error for bad
//! input, so memory-mapped or received data can be used without copying;
//! [`matmul`] and [`matmul_scratch`] are the kernel's entry on such a view.
//! The offsets need not start at 0: a block of rows of a CSR file is its
//! `indptr[r0..=r1]` with the file's whole `indices` and `data`.
//!
//! # Scratch and allocation
//! A product takes its temporaries from the `MemStack` sized by the
//! `*_scratch` methods (a row-major copy of one panel of the operand, or
//! one accumulator of the output's panel per thread, plus small blocks)
//! and allocates nothing (on threads, rayon may allocate a block of its
//! job queue once in many products).

mod kernel;

use core::fmt;

use faer::dyn_stack::{MemStack, StackReq};
use faer::sparse::{FaerError, SparseColMat, SparseColMatRef, SparseRowMat, SparseRowMatRef};
use faer::traits::IndexCore;
use faer::{Index, MatMut, MatRef, Par};

use crate::Scalar;
use crate::ops::{Mode, ModeOp, impl_bilinop};
use kernel::{Parts, Plan, Walk, with_elem};

/// Which dimension a compressed sparse matrix is stored along.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Compressed sparse rows: offsets over rows, column indices.
    Csr,
    /// Compressed sparse columns: offsets over columns, row indices.
    Csc,
}

impl Format {
    /// The outer (stored along) and inner (indexed) dimensions of a
    /// `nrows × ncols` matrix in this format.
    fn outer_inner(self, (nrows, ncols): (usize, usize)) -> (usize, usize) {
        match self {
            Format::Csr => (nrows, ncols),
            Format::Csc => (ncols, nrows),
        }
    }

    /// The other format.
    fn other(self) -> Format {
        match self {
            Format::Csr => Format::Csc,
            Format::Csc => Format::Csr,
        }
    }
}

/// A compressed sparse matrix (CSR or CSC) borrowed from slices, its
/// structure known to be valid: what the kernels read.
///
/// Built from faer's sparse views (which check their structure when
/// built) with [`From`], or from raw slices with the checked constructors
/// [`SparseView::csr`] and [`SparseView::csc`].
#[derive(Debug)]
pub struct SparseView<'a, I, T> {
    format: Format,
    nrows: usize,
    ncols: usize,
    ptr: &'a [I],
    nnz: Option<&'a [I]>,
    idx: &'a [I],
    val: &'a [T],
    /// Whether the indices may change after they were checked (a file's
    /// map): the kernels then never read or write at them unchecked.
    mapped: bool,
    /// Where a team of threads cuts the outer dimension ([`Prepared`]).
    cuts: Option<&'a [usize]>,
}

impl<I, T> Clone for SparseView<'_, I, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<I, T> Copy for SparseView<'_, I, T> {}

/// Why compressed slices are not a valid sparse matrix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SparseError {
    /// `indptr` must have one more entry than the outer dimension.
    IndptrLength {
        /// `outer + 1`.
        expected: usize,
        /// `indptr.len()`.
        found: usize,
    },
    /// `indptr[at] > indptr[at + 1]`.
    IndptrDecreasing {
        /// The first offending position.
        at: usize,
    },
    /// The last offset lies past the end of `indices`.
    IndptrPastEnd {
        /// `indptr[outer]`.
        end: usize,
        /// `indices.len()`.
        len: usize,
    },
    /// `indices` and `values` differ in length.
    LengthMismatch {
        /// `indices.len()`.
        indices: usize,
        /// `values.len()`.
        values: usize,
    },
    /// An index is not below the inner dimension.
    IndexOutOfBounds {
        /// Its position in `indices`.
        position: usize,
        /// The index.
        index: usize,
        /// The inner dimension.
        bound: usize,
    },
}

impl fmt::Display for SparseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SparseError::IndptrLength { expected, found } => {
                write!(f, "indptr has {found} entries, expected {expected} (outer dimension + 1)")
            }
            SparseError::IndptrDecreasing { at } => write!(f, "indptr decreases after position {at}"),
            SparseError::IndptrPastEnd { end, len } => {
                write!(f, "indptr ends at {end}, past the {len} stored indices")
            }
            SparseError::LengthMismatch { indices, values } => {
                write!(f, "{indices} indices but {values} values")
            }
            SparseError::IndexOutOfBounds { position, index, bound } => {
                write!(f, "index {index} at position {position} is out of bounds (must be < {bound})")
            }
        }
    }
}

impl std::error::Error for SparseError {}

impl<'a, I: Index, T> SparseView<'a, I, T> {
    /// An `nrows × ncols` CSR matrix: the entries of row `r` are
    /// `values[indptr[r]..indptr[r + 1]]` in columns
    /// `indices[indptr[r]..indptr[r + 1]]` (scipy's layout). Indices may be
    /// unsorted and repeated (repeats add up); `indptr[0]` need not be 0.
    ///
    /// # Errors
    /// A [`SparseError`] unless `indptr` has `nrows + 1` non-decreasing
    /// entries ending within `indices`, `indices` and `values` have the
    /// same length, and every index used is below `ncols`.
    pub fn csr(
        nrows: usize,
        ncols: usize,
        indptr: &'a [I],
        indices: &'a [I],
        values: &'a [T],
    ) -> Result<Self, SparseError> {
        Self::checked(Format::Csr, (nrows, ncols), indptr, indices, values)
    }

    /// An `nrows × ncols` CSC matrix: as [`SparseView::csr`] with rows and
    /// columns exchanged (`indptr` over the columns, row indices).
    ///
    /// # Errors
    /// As [`SparseView::csr`], with `ncols + 1` offsets and indices below `nrows`.
    pub fn csc(
        nrows: usize,
        ncols: usize,
        indptr: &'a [I],
        indices: &'a [I],
        values: &'a [T],
    ) -> Result<Self, SparseError> {
        Self::checked(Format::Csc, (nrows, ncols), indptr, indices, values)
    }

    /// [`SparseView::csr`] or [`SparseView::csc`].
    fn checked(
        format: Format,
        shape: (usize, usize),
        indptr: &'a [I],
        indices: &'a [I],
        values: &'a [T],
    ) -> Result<Self, SparseError> {
        let (outer, inner) = format.outer_inner(shape);
        check(outer, inner, indptr, indices, values.len())?;
        // SAFETY: `check` just verified what `prechecked` requires.
        Ok(unsafe { Self::prechecked(format, shape, indptr, indices, values) })
    }

    /// A view of slices whose structure was checked when they were made and
    /// cannot have changed since (memory the caller owns): no second pass.
    ///
    /// # Safety
    /// The slices must satisfy everything [`SparseView::csr`] (or `csc`)
    /// checks, and not change while the view lives: the kernels read and
    /// write unchecked at the indices of a `SparseView` (see `kernel::Parts`).
    pub(crate) unsafe fn prechecked(
        format: Format,
        (nrows, ncols): (usize, usize),
        indptr: &'a [I],
        indices: &'a [I],
        values: &'a [T],
    ) -> Self {
        let (outer, inner) = format.outer_inner((nrows, ncols));
        debug_assert_eq!(check(outer, inner, indptr, indices, values.len()), Ok(()));
        SparseView {
            format,
            nrows,
            ncols,
            ptr: indptr,
            nnz: None,
            idx: indices,
            val: values,
            mapped: false,
            cuts: None,
        }
    }

    /// The same view, its indices read from a file's map that the file's
    /// owner could change after the check (against the map's contract, but
    /// with safe code): the kernels then bounds-check every access at them,
    /// so that such a change panics instead of reading or writing out of
    /// bounds.
    pub(crate) fn mapped(self) -> Self {
        SparseView { mapped: true, ..self }
    }

    /// Number of rows.
    pub fn nrows(&self) -> usize {
        self.nrows
    }

    /// Number of columns.
    pub fn ncols(&self) -> usize {
        self.ncols
    }

    /// CSR or CSC.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Stored entries (repeated indices counted each time).
    pub fn nnz(&self) -> usize {
        self.parts().nnz_of(0..self.ptr.len() - 1)
    }

    /// The transpose, a view of the same slices: a CSR matrix's arrays are
    /// its transpose's CSC arrays, and the other way.
    pub fn transpose(self) -> Self {
        SparseView { format: self.format.other(), nrows: self.ncols, ncols: self.nrows, ..self }
    }

    /// Outer indices `outer` alone (rows of a CSR matrix, columns of a CSC
    /// one), a view of the same slices.
    ///
    /// # Panics
    /// If `outer` is not within the outer dimension.
    #[cfg(feature = "mpi")]
    pub(crate) fn outer_block(self, outer: core::ops::Range<usize>) -> Self {
        let (len, _) = self.format.outer_inner((self.nrows, self.ncols));
        assert!(outer.start <= outer.end && outer.end <= len, "outer block {outer:?} not within 0..{len}");
        let (nrows, ncols) = match self.format {
            Format::Csr => (outer.len(), self.ncols),
            Format::Csc => (self.nrows, outer.len()),
        };
        SparseView {
            nrows,
            ncols,
            ptr: &self.ptr[outer.start..=outer.end],
            nnz: self.nnz.map(|n| &n[outer.clone()]),
            cuts: None,
            ..self
        }
    }

    /// The indices and values stored for outer index `j`: row `j` of a CSR
    /// matrix, column `j` of a CSC one.
    ///
    /// # Panics
    /// If `j` is not below the outer dimension.
    pub fn outer_entries(&self, j: usize) -> (&'a [I], &'a [T]) {
        self.parts().entries(j)
    }

    fn parts(&self) -> Parts<'a, I, T> {
        Parts::of(*self)
    }
}

/// Checks compressed slices with `outer` offsets over indices below `inner`.
fn check<I: Index>(outer: usize, inner: usize, ptr: &[I], idx: &[I], nval: usize) -> Result<(), SparseError> {
    if ptr.len() != outer + 1 {
        return Err(SparseError::IndptrLength { expected: outer + 1, found: ptr.len() });
    }
    if idx.len() != nval {
        return Err(SparseError::LengthMismatch { indices: idx.len(), values: nval });
    }
    if let Some(at) = ptr.windows(2).position(|p| p[0] > p[1]) {
        return Err(SparseError::IndptrDecreasing { at });
    }
    let (start, end) = (ptr[0].zx(), ptr[outer].zx());
    if end > idx.len() {
        return Err(SparseError::IndptrPastEnd { end, len: idx.len() });
    }
    match idx[start..end].iter().position(|i| i.zx() >= inner) {
        Some(p) => Err(SparseError::IndexOutOfBounds { position: start + p, index: idx[start + p].zx(), bound: inner }),
        None => Ok(()),
    }
}

impl<'a, I: Index, T> From<SparseRowMatRef<'a, I, T>> for SparseView<'a, I, T> {
    /// faer's view, whose structure faer checked when it was built.
    fn from(a: SparseRowMatRef<'a, I, T>) -> Self {
        let (sym, val) = a.parts();
        let (nrows, ncols, ptr, nnz, idx) = sym.parts();
        SparseView { format: Format::Csr, nrows, ncols, ptr, nnz, idx, val, mapped: false, cuts: None }
    }
}

impl<'a, I: Index, T> From<SparseColMatRef<'a, I, T>> for SparseView<'a, I, T> {
    /// faer's view, whose structure faer checked when it was built.
    fn from(a: SparseColMatRef<'a, I, T>) -> Self {
        let (sym, val) = a.parts();
        let (nrows, ncols, ptr, nnz, idx) = sym.parts();
        SparseView { format: Format::Csc, nrows, ncols, ptr, nnz, idx, val, mapped: false, cuts: None }
    }
}

/// Storage a [`Sparse`] operator can wrap: faer's sparse matrices and
/// views, a [`SparseView`], a [`BothWays`], or a reference to any of them.
pub trait SparseStorage<T>: Sync + fmt::Debug {
    /// The index type.
    type Index: Index;
    /// The matrix as a view.
    fn view(&self) -> SparseView<'_, Self::Index, T>;
    /// The view a product in `mode` walks: [`SparseStorage::view`], unless
    /// the storage also holds the matrix in the other format
    /// ([`BothWays`]). An implementation must return the same matrix as
    /// `view` (same shape and entries, in either format): a product
    /// checks its operands against the shape of `view`.
    fn view_for(&self, mode: Mode) -> SparseView<'_, Self::Index, T> {
        let _ = mode;
        self.view()
    }
}

impl<I: Index, T: Sync + fmt::Debug> SparseStorage<T> for SparseRowMat<I, T> {
    type Index = I;
    fn view(&self) -> SparseView<'_, I, T> {
        self.as_ref().into()
    }
}
impl<I: Index, T: Sync + fmt::Debug> SparseStorage<T> for SparseColMat<I, T> {
    type Index = I;
    fn view(&self) -> SparseView<'_, I, T> {
        self.as_ref().into()
    }
}
impl<I: Index, T: Sync + fmt::Debug> SparseStorage<T> for SparseRowMatRef<'_, I, T> {
    type Index = I;
    fn view(&self) -> SparseView<'_, I, T> {
        (*self).into()
    }
}
impl<I: Index, T: Sync + fmt::Debug> SparseStorage<T> for SparseColMatRef<'_, I, T> {
    type Index = I;
    fn view(&self) -> SparseView<'_, I, T> {
        (*self).into()
    }
}
impl<I: Index, T: Sync + fmt::Debug> SparseStorage<T> for SparseView<'_, I, T> {
    type Index = I;
    fn view(&self) -> SparseView<'_, I, T> {
        *self
    }
}
impl<T, M: SparseStorage<T> + ?Sized> SparseStorage<T> for &M {
    type Index = M::Index;
    fn view(&self) -> SparseView<'_, M::Index, T> {
        (**self).view()
    }
    fn view_for(&self, mode: Mode) -> SparseView<'_, M::Index, T> {
        (**self).view_for(mode)
    }
}

/// A sparse matrix held in both formats: the storage `M` and an owned copy
/// of it in the other format (CSC for a CSR matrix, CSR for a CSC one),
/// so that every product mode walks the gather kernel, the faster of the
/// two (a CSC matrix's `A·X` and a CSR matrix's `Aᵀ·X` read-modify-write
/// random rows of the output: measured 10–50% slower with 16 and 128
/// columns, BENCHMARKS.md). The price is a second copy of the entries, built once
/// by [`BothWays::new`] in `O(nnz + nrows + ncols)`: the trade made by the
/// "optimize" step of inspector-executor libraries. Use it as storage of a
/// [`Sparse`] operator:
///
/// ```
/// use lazylinop::prelude::*;
/// use lazylinop::sparse::{BothWays, Sparse};
/// use faer::sparse::{SparseColMat, Triplet};
///
/// let a = SparseColMat::<u32, f64>::try_new_from_triplets(
///     3, 2, &[Triplet::new(0, 0, 1.0), Triplet::new(2, 1, 2.0)],
/// ).unwrap();
/// let op = Sparse::new(BothWays::new(&a).unwrap());
/// assert_eq!(op.matmat(&faer::mat![[1.0], [10.0]]), faer::mat![[1.0], [0.0], [20.0]]);
/// ```
#[derive(Clone, Debug)]
pub struct BothWays<M, I, T> {
    mat: M,
    /// The copy: its format, shape and compressed arrays (valid by
    /// construction, never changed after [`BothWays::new`]).
    format: Format,
    shape: (usize, usize),
    ptr: Vec<I>,
    idx: Vec<I>,
    val: Vec<T>,
}

impl<M: SparseStorage<T>, T: Scalar> BothWays<M, M::Index, T> {
    /// `mat`, and a copy of it in the other format.
    ///
    /// # Errors
    /// [`FaerError::IndexOverflow`] if the copy's indices or offsets (up
    /// to the outer dimension and the number of entries) do not fit the
    /// index type, [`FaerError::OutOfMemory`] if it cannot be allocated.
    ///
    /// # Panics
    /// A view of a file's map that the file's owner rewrites while it is
    /// copied may panic, or leave a copy that differs from the original
    /// (as products on such a view may give wrong values); never a read or
    /// write out of bounds.
    pub fn new(mat: M) -> Result<Self, FaerError> {
        let a = mat.view();
        let parts = a.parts();
        let (outer, inner) = a.format.outer_inner((a.nrows, a.ncols));
        let nnz = a.nnz();
        // The copy's indices are the outer indices (its offsets, at most
        // `nnz`, fit: they are the original's entries, counted by its own offsets).
        if outer > M::Index::MAX.zx() {
            return Err(FaerError::IndexOverflow);
        }
        // Counting sort by inner index: `ptr[i + 1]` counts, then offsets.
        let mut ptr = filled(inner.checked_add(1).ok_or(FaerError::OutOfMemory)?, 0usize)?;
        for j in 0..outer {
            for i in parts.entries(j).0 {
                // Only a view into a file changed since its check (`SparseView::mapped`) fails this.
                assert!(i.zx() < inner, "the sparse matrix changed while it was copied");
                ptr[i.zx() + 1] += 1;
            }
        }
        for i in 0..inner {
            ptr[i + 1] += ptr[i];
        }
        assert_eq!(ptr[inner], nnz, "the sparse matrix changed while it was copied");
        let mut next = filled(inner + 1, 0usize)?;
        next.copy_from_slice(&ptr);
        let mut idx = filled(nnz, M::Index::truncate(0))?;
        let mut val = filled(nnz, faer::traits::math_utils::zero::<T>())?;
        for j in 0..outer {
            let (is, vs) = parts.entries(j);
            for (i, v) in is.iter().zip(vs) {
                let p = &mut next[i.zx()];
                idx[*p] = M::Index::truncate(j);
                val[*p] = *v;
                *p += 1;
            }
        }
        let mut typed = filled(inner + 1, M::Index::truncate(0))?;
        for (t, p) in typed.iter_mut().zip(&ptr) {
            *t = M::Index::truncate(*p);
        }
        let format = a.format.other();
        Ok(BothWays { format, shape: (a.nrows, a.ncols), ptr: typed, idx, val, mat })
    }
}

impl<M, I, T> BothWays<M, I, T> {
    /// The wrapped storage.
    pub fn inner(&self) -> &M {
        &self.mat
    }

    /// The wrapped storage, given back (the copy is dropped).
    pub fn into_inner(self) -> M {
        self.mat
    }

    /// The copy in the other format.
    pub fn copy(&self) -> SparseView<'_, I, T>
    where
        I: Index,
    {
        // SAFETY: `BothWays::new` built the arrays itself, whatever the
        // original holds: `ptr` is the prefix sums of counts that add up to
        // `nnz == idx.len() == val.len()` (`outer + 1` non-decreasing offsets
        // of the copy, from 0), and every index it stored is an outer index
        // `j < outer` of the original, the copy's inner dimension (or the
        // initial 0, only when `nnz > 0`, so `outer > 0`). The fields are
        // private and never changed since.
        unsafe { SparseView::prechecked(self.format, self.shape, &self.ptr, &self.idx, &self.val) }
    }
}

impl<M: SparseStorage<T>, T: Sync + fmt::Debug> SparseStorage<T> for BothWays<M, M::Index, T> {
    type Index = M::Index;
    fn view(&self) -> SparseView<'_, M::Index, T> {
        self.mat.view()
    }
    fn view_for(&self, mode: Mode) -> SparseView<'_, M::Index, T> {
        let a = self.mat.view();
        if walk(a.format, mode) == Walk::Gather { a } else { self.copy() }
    }
}

/// A sparse matrix inspected once for many products, as the "optimize"
/// step of inspector-executor libraries: whatever the kernels would work
/// out from the matrix at each product is worked out here, once, and
/// reused. The plain [`Sparse`] operator on the same storage copies
/// nothing and computes the same results; this one is opt-in.
///
/// What it holds now, besides the storage: for the view each walk takes
/// (the storage's, or with [`BothWays`] the copy a mode gathers on), the
/// cuts of its outer dimension into chunks of about equal nonzeros that a
/// team of threads claims (`CHUNKS_PER_THREAD` chunks per thread of the
/// `par` given, so `8 · threads + 1` offsets a view, at most two views):
/// [`Prepared::memory`] bytes. The plain operator finds the same cuts by a
/// binary search over the offsets at each threaded product. For the
/// scatter's modes (`CSC·X`, `CSRᵀ·X`), wrap a [`BothWays`]: every mode then
/// gathers, for twice the matrix's memory.
///
/// It works on any storage, a [`SparseView`] of raw slices included (a
/// block of a distributed matrix's rows, say):
///
/// ```
/// use lazylinop::prelude::*;
/// use lazylinop::sparse::{BothWays, Prepared, Sparse, SparseView};
/// use faer::Par;
///
/// let (ptr, idx, val) = ([0u32, 1, 3], [1u32, 0, 1], [2.0f64, 3.0, 4.0]);
/// let a = SparseView::csr(2, 2, &ptr, &idx, &val).unwrap();
/// let op = Sparse::new(Prepared::new(a, Par::rayon(2)));
/// assert_eq!(op.matmat(&faer::mat![[1.0], [10.0]]), faer::mat![[20.0], [43.0]]);
/// // Every mode a gather, and its cuts: twice the memory.
/// let both = Sparse::new(Prepared::new(BothWays::new(a).unwrap(), Par::rayon(2)));
/// assert_eq!(both.adjoint().matmat(&faer::mat![[1.0], [10.0]]), faer::mat![[30.0], [42.0]]);
/// ```
#[derive(Clone, Debug)]
pub struct Prepared<M> {
    mat: M,
    /// The cuts of the views of `Mode::Apply` and `Mode::Transpose`
    /// (conjugation does not change the view).
    cuts: [Vec<usize>; 2],
}

impl<M> Prepared<M> {
    /// `mat`, inspected for products on up to `par.degree()` threads (any
    /// number of threads works; this many are balanced best).
    pub fn new<T>(mat: M, par: Par) -> Self
    where
        M: SparseStorage<T>,
    {
        let threads = par.degree().max(1);
        let cuts = [Mode::Apply, Mode::Transpose].map(|mode| {
            let parts = mat.view_for(mode).parts();
            let count = (threads * kernel::CHUNKS_PER_THREAD).max(1);
            (0..=count).map(|c| parts.split(c, count)).collect()
        });
        Prepared { mat, cuts }
    }

    /// Bytes held besides the storage (the cuts).
    pub fn memory(&self) -> usize {
        self.cuts.iter().map(|c| c.len() * size_of::<usize>()).sum()
    }

    /// The wrapped storage.
    pub fn inner(&self) -> &M {
        &self.mat
    }

    /// The wrapped storage, given back.
    pub fn into_inner(self) -> M {
        self.mat
    }
}

impl<T, M: SparseStorage<T>> SparseStorage<T> for Prepared<M> {
    type Index = M::Index;
    fn view(&self) -> SparseView<'_, M::Index, T> {
        self.mat.view()
    }
    fn view_for(&self, mode: Mode) -> SparseView<'_, M::Index, T> {
        let cuts = &self.cuts[usize::from(mode.is_transposed())];
        SparseView { cuts: Some(cuts), ..self.mat.view_for(mode) }
    }
}

/// A vector of `n` copies of `x`, or `OutOfMemory`.
fn filled<X: Clone>(n: usize, x: X) -> Result<Vec<X>, FaerError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| FaerError::OutOfMemory)?;
    v.resize(n, x);
    Ok(v)
}

/// A sparse matrix as an operator, with this module's kernels: see the
/// [module docs](self).
///
/// Wraps the storage by value; pass a reference (`Sparse::new(&a)`) to
/// keep the matrix.
#[derive(Clone, Debug)]
pub struct Sparse<M> {
    mat: M,
}

impl<M> Sparse<M> {
    /// The operator of the sparse matrix `mat`.
    pub fn new(mat: M) -> Self {
        Sparse { mat }
    }

    /// The wrapped storage.
    pub fn inner(&self) -> &M {
        &self.mat
    }

    /// The wrapped storage, given back.
    pub fn into_inner(self) -> M {
        self.mat
    }
}

impl<T: Scalar, M: SparseStorage<T>> ModeOp<T> for Sparse<M> {
    const NAME: &'static str = "Sparse";

    fn shape(&self) -> (usize, usize) {
        let v = self.mat.view();
        (v.nrows, v.ncols)
    }

    fn scratch(&self, mode: Mode, k: usize, par: Par) -> StackReq {
        matmul_scratch(self.mat.view_for(mode), mode, k, par)
    }

    fn run(&self, mode: Mode, out: MatMut<'_, T>, rhs: MatRef<'_, T>, par: Par, stack: &mut MemStack) {
        matmul(out, self.mat.view_for(mode), mode, rhs, par, stack)
    }
}

impl_bilinop!([M] Sparse<M> where T: Scalar, M: SparseStorage<T>);

fn walk(format: Format, mode: Mode) -> Walk {
    if (format == Format::Csr) != mode.is_transposed() { Walk::Gather } else { Walk::Scatter }
}

fn plan<I: Index, T: Scalar>(a: SparseView<'_, I, T>, mode: Mode, k: usize, par: Par) -> Plan {
    let (m, n) = mode.dims((a.nrows, a.ncols));
    // The view's stored entries, not all of `idx` (a view of a block of a file's rows starts
    // and ends inside it).
    with_elem!(T, |E| Plan::new::<E>(walk(a.format, mode), m, n, k, a.nnz(), par))
}

/// The scratch of [`matmul`] with `k` right-hand sides.
pub fn matmul_scratch<I: Index, T: Scalar>(a: SparseView<'_, I, T>, mode: Mode, k: usize, par: Par) -> StackReq {
    let plan = plan(a, mode, k, par);
    with_elem!(T, |E| plan.scratch::<E>())
}

/// `out = a_mode · rhs`: the kernels of this module on a sparse view, with
/// `par`'s threads and scratch from `stack`.
///
/// # Panics
/// If the shapes do not fit (naming them), or if `stack` is smaller than
/// [`matmul_scratch`] with the same arguments.
#[track_caller]
pub fn matmul<I: Index, T: Scalar>(
    out: MatMut<'_, T>,
    a: SparseView<'_, I, T>,
    mode: Mode,
    rhs: MatRef<'_, T>,
    par: Par,
    stack: &mut MemStack,
) {
    crate::ops::mode::check_shapes(
        "sparse::matmul",
        (a.nrows, a.ncols),
        mode,
        (out.nrows(), out.ncols()),
        (rhs.nrows(), rhs.ncols()),
    );
    let plan = plan(a, mode, rhs.ncols(), par);
    let parts = a.parts();
    with_elem!(T, |E| {
        let parts = parts.cast::<E>();
        kernel::run::<I, T, E>(plan, parts, mode.is_conj(), out, rhs, stack)
    })
}
