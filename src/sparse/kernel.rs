//! The two multi-column kernels and their driver: scratch plan, panels,
//! layouts, threads, SIMD dispatch.
//!
//! A compressed matrix is walked along its *outer* dimension (rows of a
//! CSR matrix, columns of a CSC one). Two walks serve the four products:
//! - **gather** (`CSR·X`, `CSCᵀ·X`): output row `r` is `Σ a_p · X[idx_p, :]`
//!   over the entries `p` of outer `r`;
//! - **scatter** (`CSC·X`, `CSRᵀ·X`): each entry `p` of outer `j` adds
//!   `a_p · X[j, :]` to output row `idx_p`.
//!
//! Conjugated modes conjugate `a_p` before it is used; nothing else differs.
//!
//! **One column** (`k = 1`, SpMV) takes scalar loops straight on the
//! column's slices (staged copies if it is strided): the product is bound
//! by memory, and a SIMD lane per right-hand side has nothing to fill.
//!
//! **Panels.** More columns are processed in panels of `w` columns, one,
//! two or four SIMD vectors: each entry costs one load of `idx_p` and one
//! vector multiply-add per vector of one contiguous operand row. The
//! widest gather panel is two cache lines (16 `f64`: four AVX2 vectors, two
//! AVX-512 ones), the widest scatter panel four vectors. Operand rows must
//! be contiguous, so the layout decides the loop:
//! - a **row-major** operand (`X[i, :]` contiguous) is read in place, and
//!   the gather walks blocks of output rows, each block through every
//!   panel in turn, so the matrix is read from memory once whatever `k` is;
//!   a row-major output is written in place too;
//! - a **column-major** operand (faer's `Mat`) is copied panel by panel
//!   into a row-major scratch (the scatter: by blocks of rows), and the
//!   matrix is read once per panel; a column-major output is formed in a
//!   small row-major block and copied out.
//!
//! The scatter accumulates into random rows of its output: in place for a
//! row-major output on one thread, else in a row-major `m × w` scratch. It
//! is the slower walk with many columns (its random rows are read and
//! written back); [`super::BothWays`] holds a copy in the other format so
//! that every mode gathers.
//!
//! **Threads** (`Par::Rayon(t)`) form a *team* of `t` members, rayon
//! jobs joined in a tree (no allocation), all of them claiming *chunks*
//! (parts of the outer dimension of about equal nonzeros, a few per
//! member) from one atomic counter until none is left. A member that
//! starts late — a rayon worker woken from sleep (its cost is measured in
//! BENCHMARKS.md), or one slowed by other processes on a shared machine —
//! finds fewer chunks and does less; nothing waits for a fixed share. The
//! gather's chunks write disjoint output rows; the scatter's members each
//! accumulate into their own `m × w` scratch (the first, for one
//! contiguous column, into the output), summed into the output by a
//! second team over row chunks. With at least `t` whole panels of a
//! column-major operand, each member claims whole panels instead, with its
//! own scratch (no second phase, no sum). Small products (under
//! `MIN_WORK_PER_THREAD` multiply-adds a member) take fewer members.
//! [`super::Prepared`] computes the chunks once instead of by a binary
//! search over the offsets at each product.
//!
//! SIMD width is chosen at run time by pulp's [`Arch`] (AVX-512, AVX2+FMA or
//! scalar), as faer does, so the crate builds for the baseline target.
//!
//! Every memory access is a checked slice access but those at the indices
//! `idx_p`, and the one-column gather's: the one-column scatter writes
//! `y[idx_p]` unchecked ([`Parts::for_each_entry`]), as faer's own scatter
//! does, the gathers read operand rows `x[idx_p]` unchecked
//! ([`Parts::for_each_read`]), as faer's own gather does, the panel scatter
//! reads and writes accumulator rows unchecked, and the one-column gather
//! on compact storage reads `idx_p` and `a_p` unchecked too ([`gather1`]).
//! Measured side by side with faer (interleaved runs), the checks cost the
//! one-column walks 2–7% and the panel gather 5–7%, and a stencil's short
//! rows far more (the one-column gather, checked: 0.91× faer's product;
//! unchecked: 1.15×). That
//! rests on the invariant of [`Parts`] (every index below the inner
//! dimension), which only the constructors of [`SparseView`] (and faer's
//! own) establish, and on indices that cannot change since: a view into a
//! file's map (marked by [`SparseView::mapped`]) is bounds-checked there
//! too. Operand and output rows in place are read and written through
//! [`Rows`] and [`RowsMut`], which check their construction from faer's
//! views once.

use core::marker::PhantomData;
use core::ops::Range;
use core::sync::atomic::{AtomicUsize, Ordering};

use faer::dyn_stack::{MemStack, StackReq};
use faer::reborrow::ReborrowMut;
use faer::{Index, MatMut, MatRef, Par};
use pulp::{Arch, Simd, WithSimd};

use super::SparseView;
use crate::Scalar;

/// Rows staged at a time: the gather's output block, the scatter's operand block.
const BLOCK: usize = 128;
/// Fewest multiply-adds that make a team member worth starting.
const MIN_WORK_PER_THREAD: usize = 1 << 15;
/// Alignment of the scratch rows (one cache line).
const ALIGN: usize = 64;
/// Chunks a team cuts its work into, per member.
pub(super) const CHUNKS_PER_THREAD: usize = 8;
/// Fewest stored entries in a chunk: claiming one costs an atomic
/// increment, and about 20 ns of work is not worth it.
const MIN_CHUNK: usize = 4096;

/// The compressed structure the kernels walk: entries of outer `j` are
/// `idx[range(j)]`, `val[range(j)]`.
///
/// Invariant (what the unchecked accesses of [`Parts::for_each_entry`], [`gather1`],
/// [`Parts::for_each_read`] and the panel scatter rest on): for every
/// outer `j`, `range(j)` lies within `idx` and `val` (of one length) and every index in
/// `idx[range(j)]` is below `inner`. The fields are private to this module
/// and [`Parts::of`] is the only constructor: it takes them from a
/// [`SparseView`], whose constructors check exactly this (its checked
/// constructors, or faer's sparse views, which faer checks when they are
/// built and whose own products read them unchecked), or take it from a
/// crate-internal caller that checked it ([`SparseView::prechecked`]: the
/// npz reader's owned parts). Unless `mapped`: then the indices could change
/// after the check, and every access at them is checked.
#[derive(Copy, Clone, Debug)]
pub(super) struct Parts<'a, I, E> {
    /// `outer + 1` offsets into `idx`/`val` (not necessarily from 0).
    ptr: &'a [I],
    /// Entries per outer index when the storage is not compact (faer's `col_nnz`).
    nnz: Option<&'a [I]>,
    /// Inner indices.
    idx: &'a [I],
    /// Values.
    val: &'a [E],
    /// The bound of the inner indices.
    inner: usize,
    /// The indices may change after their check ([`SparseView::mapped`]).
    mapped: bool,
    /// Chunks of the outer dimension computed once ([`super::Prepared`]):
    /// non-decreasing, from 0 to the outer dimension. Only their count and
    /// balance depend on them, never a result.
    cuts: Option<&'a [usize]>,
}

impl<'a, I: Index, T> Parts<'a, I, T> {
    /// The structure of `a`.
    pub(super) fn of(a: SparseView<'a, I, T>) -> Self {
        let (outer, inner) = a.format.outer_inner((a.nrows, a.ncols));
        // Cuts that do not cover the outer dimension in order (a storage whose
        // views changed since they were computed) are not used.
        let cuts = a
            .cuts
            .filter(|c| c.len() >= 2 && c[0] == 0 && c[c.len() - 1] == outer && c.windows(2).all(|w| w[0] <= w[1]));
        Parts { ptr: a.ptr, nnz: a.nnz, idx: a.idx, val: a.val, inner, mapped: a.mapped, cuts }
    }

    /// The same structure with the values viewed as `E` (the same type as
    /// `T`, checked by the dispatch on [`Scalar::DTYPE`]).
    pub(super) fn cast<E: bytemuck::Pod>(self) -> Parts<'a, I, E>
    where
        T: bytemuck::Pod,
    {
        let Parts { ptr, nnz, idx, val, inner, mapped, cuts } = self;
        Parts { ptr, nnz, idx, val: bytemuck::cast_slice(val), inner, mapped, cuts }
    }
}

impl<'a, I: Index, E> Parts<'a, I, E> {
    fn outer(&self) -> usize {
        self.ptr.len() - 1
    }

    #[inline(always)]
    fn range(&self, j: usize) -> Range<usize> {
        let start = self.ptr[j].zx();
        let end = match self.nnz {
            Some(nnz) => start + nnz[j].zx(),
            None => self.ptr[j + 1].zx(),
        };
        start..end
    }

    /// The indices and values of outer `j`.
    #[inline(always)]
    pub(super) fn entries(&self, j: usize) -> (&'a [I], &'a [E]) {
        let r = self.range(j);
        (&self.idx[r.clone()], &self.val[r])
    }

    /// `f(&mut y[i], a_p)` for each entry `p` of outer `j`, `i` its index,
    /// without a bounds check on `y` (see the module docs).
    ///
    /// # Panics
    /// If `j` is not an outer index or `y` is shorter than the inner dimension.
    #[inline(always)]
    fn for_each_entry(&self, j: usize, y: &mut [E], mut f: impl FnMut(&mut E, E))
    where
        E: Copy,
    {
        assert!(y.len() >= self.inner, "{} outputs for an inner dimension of {}", y.len(), self.inner);
        let (idx, val) = self.entries(j);
        if self.mapped {
            for (i, v) in idx.iter().zip(val) {
                f(&mut y[i.zx()], *v);
            }
            return;
        }
        for (i, v) in idx.iter().zip(val) {
            // SAFETY: `idx` is `self.idx[self.range(j)]` (checked slicing),
            // whose indices are below `self.inner` and cannot have changed
            // since (not `mapped`; the invariant of `Parts`, which safe code
            // outside the crate cannot break:
            // private fields, one constructor from a `SparseView`, whose
            // constructors check it or, crate-private, require it checked),
            // and `self.inner <= y.len()` (asserted above).
            f(unsafe { y.get_unchecked_mut(i.zx()) }, *v);
        }
    }

    /// `f(t, row_i, a_p)` for each entry `p` of outer `j`, where `i` is its
    /// index, `row_i` row `i` of `x` and `t` the entry's place modulo `U`
    /// (`U` chains of accumulators), without bounds checks on `x` (see the
    /// module docs).
    ///
    /// # Panics
    /// If `j` is not an outer index or `x` has fewer than `inner` rows.
    #[inline(always)]
    fn for_each_read<const U: usize>(&self, j: usize, x: Rows<'_, E>, mut f: impl FnMut(usize, &[E], E))
    where
        E: Copy,
    {
        assert!(x.nrows >= self.inner, "{} operand rows for an inner dimension of {}", x.nrows, self.inner);
        let (idx, val) = self.entries(j);
        if self.mapped {
            for (i, v) in idx.iter().zip(val) {
                f(0, x.row(i.zx()), *v);
            }
            return;
        }
        let row = |i: &I| {
            // SAFETY: `i` is an index of `idx`, so `i < self.inner` (as in
            // `for_each_entry`), and `self.inner <= x.nrows` (asserted above).
            unsafe { x.row_unchecked(i.zx()) }
        };
        let (idx_u, val_u) = (idx.chunks_exact(U), val.chunks_exact(U));
        let (idx_rest, val_rest) = (idx_u.remainder(), val_u.remainder());
        for (p, v) in idx_u.zip(val_u) {
            for t in 0..U {
                f(t, row(&p[t]), v[t]);
            }
        }
        for (i, v) in idx_rest.iter().zip(val_rest) {
            f(0, row(i), *v);
        }
    }

    /// Stored entries of outers `range`.
    pub(super) fn nnz_of(&self, range: Range<usize>) -> usize {
        match self.nnz {
            None if range.start < range.end => self.ptr[range.end].zx().saturating_sub(self.ptr[range.start].zx()),
            None => 0,
            Some(nnz) => nnz[range].iter().map(|n| n.zx()).sum(),
        }
    }

    /// Where to cut the outer dimension so that outers `0..cut` hold about
    /// `num/den` of its entries (by count when the storage is not compact).
    pub(super) fn split(&self, num: usize, den: usize) -> usize {
        let outer = self.outer();
        let by_count = outer * num / den;
        if num >= den || self.nnz.is_some() || outer == 0 {
            return by_count.min(outer);
        }
        let (lo, hi) = (self.ptr[0].zx(), self.ptr[outer].zx());
        if hi <= lo {
            return by_count;
        }
        let target = lo + (hi - lo) * num / den;
        self.ptr[..outer].partition_point(|p| p.zx() < target).min(outer)
    }

    /// The chunks of the outer dimension a team of `t` claims: their count,
    /// and chunk `c` by [`Parts::chunk`].
    fn chunks(&self, t: usize) -> usize {
        if t <= 1 {
            return 1;
        }
        match self.cuts {
            Some(cuts) => cuts.len() - 1,
            None => (t * CHUNKS_PER_THREAD).min(self.nnz_of(0..self.outer()) / MIN_CHUNK).max(t),
        }
    }

    /// Chunk `c` of `count`: outers of about `1/count` of the entries.
    fn chunk(&self, c: usize, count: usize) -> Range<usize> {
        if let Some(cuts) = self.cuts.filter(|cuts| cuts.len() == count + 1) {
            return cuts[c]..cuts[c + 1];
        }
        if count == 1 { 0..self.outer() } else { self.split(c, count)..self.split(c + 1, count) }
    }
}

/// The element types of the kernels (f32, f64, c32, c64) and their SIMD vectors.
pub(super) trait Elem: bytemuck::Pod + Send + Sync + core::fmt::Debug + 'static {
    /// A SIMD vector of `Self` for instruction set `S`.
    type V<S: Simd>: Copy;
    /// `0`.
    const ZERO: Self;
    /// Elements in a vector.
    fn lanes<S: Simd>() -> usize;
    /// Complex conjugate (identity for reals).
    fn conj(self) -> Self;
    /// `a·b + c`, scalar, not fused (the baseline target has no FMA instruction).
    fn mul_add1(a: Self, b: Self, c: Self) -> Self;
    /// `a + b`, scalar.
    fn add1(a: Self, b: Self) -> Self;
    /// A vector of `a`.
    fn splat<S: Simd>(simd: S, a: Self) -> Self::V<S>;
    /// `a·b + c`, lane by lane.
    fn mul_add<S: Simd>(simd: S, a: Self::V<S>, b: Self::V<S>, c: Self::V<S>) -> Self::V<S>;
    /// `a + b`, lane by lane.
    fn add<S: Simd>(simd: S, a: Self::V<S>, b: Self::V<S>) -> Self::V<S>;
    /// The whole vectors at the start of `x`.
    fn as_simd<S: Simd>(x: &[Self]) -> &[Self::V<S>];
    /// The whole vectors at the start of `x`.
    fn as_mut_simd<S: Simd>(x: &mut [Self]) -> &mut [Self::V<S>];
}

macro_rules! elem {
    ($t:ty, $v:ident, $lanes:ident, $splat:ident, $mul_add:ident, $add:ident, $as:ident, $as_mut:ident, zero: $zero:expr, conj: $conj:expr) => {
        impl Elem for $t {
            type V<S: Simd> = S::$v;
            const ZERO: Self = $zero;
            #[inline(always)]
            fn lanes<S: Simd>() -> usize {
                S::$lanes
            }
            #[inline(always)]
            fn conj(self) -> Self {
                $conj(self)
            }
            #[inline(always)]
            fn mul_add1(a: Self, b: Self, c: Self) -> Self {
                a * b + c
            }
            #[inline(always)]
            fn add1(a: Self, b: Self) -> Self {
                a + b
            }
            #[inline(always)]
            fn splat<S: Simd>(simd: S, a: Self) -> S::$v {
                simd.$splat(a)
            }
            #[inline(always)]
            fn mul_add<S: Simd>(simd: S, a: S::$v, b: S::$v, c: S::$v) -> S::$v {
                simd.$mul_add(a, b, c)
            }
            #[inline(always)]
            fn add<S: Simd>(simd: S, a: S::$v, b: S::$v) -> S::$v {
                simd.$add(a, b)
            }
            #[inline(always)]
            fn as_simd<S: Simd>(x: &[Self]) -> &[S::$v] {
                S::$as(x).0
            }
            #[inline(always)]
            fn as_mut_simd<S: Simd>(x: &mut [Self]) -> &mut [S::$v] {
                S::$as_mut(x).0
            }
        }
    };
}
elem!(f32, f32s, F32_LANES, splat_f32s, mul_add_f32s, add_f32s, as_simd_f32s, as_mut_simd_f32s, zero: 0.0, conj: |x| x);
elem!(f64, f64s, F64_LANES, splat_f64s, mul_add_f64s, add_f64s, as_simd_f64s, as_mut_simd_f64s, zero: 0.0, conj: |x| x);
elem!(pulp::c32, c32s, C32_LANES, splat_c32s, mul_add_c32s, add_c32s, as_simd_c32s, as_mut_simd_c32s,
    zero: pulp::c32::new(0.0, 0.0), conj: |x: pulp::c32| pulp::c32::new(x.re, -x.im));
elem!(pulp::c64, c64s, C64_LANES, splat_c64s, mul_add_c64s, add_c64s, as_simd_c64s, as_mut_simd_c64s,
    zero: pulp::c64::new(0.0, 0.0), conj: |x: pulp::c64| pulp::c64::new(x.re, -x.im));

#[inline(always)]
fn maybe_conj<E: Elem>(a: E, conj: bool) -> E {
    if conj { a.conj() } else { a }
}

/// Rows of `w` contiguous elements, `stride` apart: a row-major scratch or
/// a row-major operand read in place. Like a `&'a [E]` of its rows.
///
/// Invariant: for every `i < nrows`, the `w` elements at
/// `ptr + i·stride` are valid, initialized and not written while `'a` lasts
/// (they belong to a shared borrow of that lifetime).
#[derive(Copy, Clone)]
struct Rows<'a, E> {
    ptr: *const E,
    stride: usize,
    nrows: usize,
    w: usize,
    _borrow: PhantomData<&'a [E]>,
}

// SAFETY: `Rows` is a shared borrow of elements (its invariant), so it may
// be sent and shared where `&[E]` may.
unsafe impl<E: Sync> Send for Rows<'_, E> {}
// SAFETY: as for `Send`.
unsafe impl<E: Sync> Sync for Rows<'_, E> {}

impl<'a, E> Rows<'a, E> {
    /// The rows of a row-major slice of width `w > 0`.
    fn of_slice(x: &'a [E], w: usize) -> Self {
        assert!(w > 0);
        Rows { ptr: x.as_ptr(), stride: w, nrows: x.len() / w, w, _borrow: PhantomData }
    }

    /// The rows of `x` in place, if its rows are contiguous (column stride 1,
    /// row stride not negative) and it has `E`'s size (`T` is `E`: the
    /// dispatch on [`Scalar::DTYPE`]).
    fn of_mat<T: bytemuck::Pod>(x: MatRef<'a, T>) -> Option<Self> {
        assert_eq!(size_of::<T>(), size_of::<E>());
        let rows_ok = x.ncols() <= 1 || x.col_stride() == 1;
        let stride = if x.nrows() <= 1 { 0 } else { usize::try_from(x.row_stride()).ok()? };
        (rows_ok && x.ncols() > 0).then(|| Rows {
            ptr: x.as_ptr() as *const E,
            stride,
            nrows: x.nrows(),
            w: x.ncols(),
            _borrow: PhantomData,
        })
    }

    /// Columns `c0..c0 + w` of these rows.
    fn cols(self, c0: usize, w: usize) -> Self {
        assert!(c0 + w <= self.w && w > 0);
        // `wrapping_add`: with no rows, `ptr` may point nowhere; with rows, it
        // stays within row 0 (`c0 < self.w`).
        Rows { ptr: self.ptr.wrapping_add(c0), w, ..self }
    }

    /// Rows `r` of these rows.
    fn rows(self, r: Range<usize>) -> Self {
        assert!(r.start <= r.end && r.end <= self.nrows, "rows {r:?} of {}", self.nrows);
        // `wrapping_add`: `ptr + r.start·stride` is row `r.start`, or (at the end) one past.
        Rows { ptr: self.ptr.wrapping_add(r.start * self.stride), nrows: r.len(), ..self }
    }

    /// Row `i`.
    ///
    /// # Safety
    /// `i < self.nrows`.
    #[inline(always)]
    unsafe fn row_unchecked(&self, i: usize) -> &'a [E] {
        // SAFETY: `i < nrows` (the caller), so the `w` elements at
        // `ptr + i·stride` are valid and not written for `'a` (the invariant).
        unsafe { core::slice::from_raw_parts(self.ptr.add(i * self.stride), self.w) }
    }

    /// Row `i`.
    ///
    /// # Panics
    /// If `i >= self.nrows`.
    #[inline(always)]
    fn row(&self, i: usize) -> &'a [E] {
        assert!(i < self.nrows, "row {i} of {}", self.nrows);
        // SAFETY: just checked.
        unsafe { self.row_unchecked(i) }
    }
}

/// Rows of `w` contiguous elements, `stride` apart, written: a row-major
/// scratch, or a row-major output written in place. Like a `&'a mut [E]`
/// of its rows.
///
/// Invariant: for every `i < nrows`, the `w` elements at `ptr + i·stride`
/// are valid, and no one else reads or writes them while `'a` lasts (they
/// belong to a mutable borrow of that lifetime); distinct rows do not
/// overlap.
struct RowsMut<'a, E> {
    ptr: *mut E,
    stride: usize,
    nrows: usize,
    w: usize,
    _borrow: PhantomData<&'a mut [E]>,
}

// SAFETY: `RowsMut` is a mutable borrow of elements (its invariant), so it
// may be sent where `&mut [E]` may.
unsafe impl<E: Send> Send for RowsMut<'_, E> {}

impl<'a, E> RowsMut<'a, E> {
    /// The rows of a row-major slice of width `w > 0`.
    fn of_slice(y: &'a mut [E], w: usize) -> Self {
        assert!(w > 0);
        RowsMut { ptr: y.as_mut_ptr(), stride: w, nrows: y.len() / w, w, _borrow: PhantomData }
    }

    /// The rows of `y` in place, if they are contiguous and apart (column
    /// stride 1, row stride at least the width) and `T` has `E`'s size.
    fn of_mat<T: bytemuck::Pod>(y: MatMut<'a, T>) -> Option<Self> {
        assert_eq!(size_of::<T>(), size_of::<E>());
        let (nrows, w) = (y.nrows(), y.ncols());
        let rows_ok = w <= 1 || y.col_stride() == 1;
        let stride = if nrows <= 1 { w } else { usize::try_from(y.row_stride()).ok().filter(|&s| s >= w)? };
        (rows_ok && w > 0).then(|| RowsMut { ptr: y.as_ptr_mut() as *mut E, stride, nrows, w, _borrow: PhantomData })
    }

    fn rb(&mut self) -> RowsMut<'_, E> {
        RowsMut { ptr: self.ptr, ..*self }
    }

    /// Row `i`.
    ///
    /// # Safety
    /// `i < self.nrows`.
    #[inline(always)]
    unsafe fn row_unchecked(&mut self, i: usize) -> &mut [E] {
        // SAFETY: `i < nrows` (the caller), so the `w` elements at
        // `ptr + i·stride` are valid and ours alone (the invariant), borrowed
        // through `&mut self`.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(i * self.stride), self.w) }
    }

    /// Row `i`.
    ///
    /// # Panics
    /// If `i >= self.nrows`.
    #[inline(always)]
    fn row(&mut self, i: usize) -> &mut [E] {
        assert!(i < self.nrows, "row {i} of {}", self.nrows);
        // SAFETY: just checked.
        unsafe { self.row_unchecked(i) }
    }
}

impl<E: Copy> RowsMut<'_, E> {
    fn fill(&mut self, v: E) {
        for i in 0..self.nrows {
            self.row(i).fill(v);
        }
    }
}

/// A mutable slice shared by a team whose members take parts of it that no
/// other member takes at the same time (chunks claimed once each).
struct Disjoint<'a, E> {
    ptr: *mut E,
    len: usize,
    _borrow: PhantomData<&'a mut [E]>,
}

// SAFETY: members only reach the elements through `Disjoint::part`, whose
// contract gives each part to one member at a time: as `&mut [E]` sent to
// that member's thread.
unsafe impl<E: Send> Sync for Disjoint<'_, E> {}

impl<'a, E> Disjoint<'a, E> {
    fn new(s: &'a mut [E]) -> Self {
        Disjoint { ptr: s.as_mut_ptr(), len: s.len(), _borrow: PhantomData }
    }

    /// Elements `r`.
    ///
    /// # Safety
    /// No other part overlapping `r` is alive.
    ///
    /// # Panics
    /// If `r` is not within the slice.
    #[allow(clippy::mut_from_ref)]
    unsafe fn part(&self, r: Range<usize>) -> &mut [E] {
        assert!(r.start <= r.end && r.end <= self.len, "part {r:?} of {}", self.len);
        // SAFETY: within the slice (checked), which is borrowed for `'a`, and
        // no overlapping part is alive (the caller).
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(r.start), r.len()) }
    }
}

/// A matrix shared by a team whose members write row blocks of it that no
/// other member takes at the same time.
struct DisjointRows<'a, T> {
    mat: MatMut<'a, T>,
}

// SAFETY: as for `Disjoint`: members reach the matrix only through
// `DisjointRows::rows`, one member per row block.
unsafe impl<T: Send> Sync for DisjointRows<'_, T> {}

impl<T> DisjointRows<'_, T> {
    /// Rows `r`, every column.
    ///
    /// # Safety
    /// As [`DisjointRows::block`].
    unsafe fn rows(&self, r: Range<usize>) -> MatMut<'_, T> {
        // SAFETY: the caller's.
        unsafe { self.block(r, 0..self.mat.ncols()) }
    }

    /// Rows `r` of columns `c`.
    ///
    /// # Safety
    /// No other block overlapping this one is alive.
    ///
    /// # Panics
    /// If the block is not within the matrix.
    unsafe fn block(&self, r: Range<usize>, c: Range<usize>) -> MatMut<'_, T> {
        let m = &self.mat;
        assert!(r.start <= r.end && r.end <= m.nrows(), "rows {r:?} of {}", m.nrows());
        assert!(c.start <= c.end && c.end <= m.ncols(), "columns {c:?} of {}", m.ncols());
        // SAFETY: a block of the matrix's own elements (checked), with its
        // strides, so every index used is one of its elements; no other live
        // block overlaps it (the caller), so this mutable view is its only one.
        unsafe {
            MatMut::from_raw_parts_mut(m.ptr_at_mut(r.start, c.start), r.len(), c.len(), m.row_stride(), m.col_stride())
        }
    }
}

/// A counter handing out chunks `0..count`, each once.
struct Claims {
    next: AtomicUsize,
    count: usize,
}

impl Claims {
    fn new(count: usize) -> Self {
        Claims { next: AtomicUsize::new(0), count }
    }

    /// The next unclaimed chunk.
    fn claim(&self) -> Option<usize> {
        // Relaxed: the counter only hands out distinct numbers; the team's
        // join orders the writes made for them.
        let c = self.next.fetch_add(1, Ordering::Relaxed);
        (c < self.count).then_some(c)
    }

    /// `f(c)` for each chunk `c` this member claims.
    fn each(&self, mut f: impl FnMut(usize)) {
        while let Some(c) = self.claim() {
            f(c)
        }
    }
}

/// `f(p)` for every member `p` of a team of `t`, on the current rayon
/// pool: a tree of `rayon::join`s (no allocation; from outside the pool,
/// the calling thread hands the tree to the pool and waits for it).
/// Returns when all have returned; a panic in any is resumed here.
fn team(t: usize, f: impl Fn(usize) + Sync) {
    fn members(p: Range<usize>, f: &(impl Fn(usize) + Sync)) {
        if p.len() <= 1 {
            return f(p.start);
        }
        let mid = p.start + p.len() / 2;
        rayon::join(|| members(p.start..mid, f), || members(mid..p.end, f));
    }
    members(0..t.max(1), &f)
}

/// The `NV` vectors of a row of `NV · lanes` elements.
#[inline(always)]
fn vectors<S: Simd, E: Elem, const NV: usize>(x: &[E]) -> &[E::V<S>; NV] {
    E::as_simd::<S>(x).try_into().unwrap()
}

#[inline(always)]
fn vectors_mut<S: Simd, E: Elem, const NV: usize>(x: &mut [E]) -> &mut [E::V<S>; NV] {
    E::as_mut_simd::<S>(x).try_into().unwrap()
}

/// Gather: row `r - rows.start` of `y` is `Σ_p a_p · x[idx_p]`, rows of `NV` vectors.
#[inline(always)]
fn gather<S: Simd, I: Index, E: Elem, const NV: usize>(
    simd: S,
    a: Parts<'_, I, E>,
    conj: bool,
    rows: Range<usize>,
    x: Rows<'_, E>,
    mut y: RowsMut<'_, E>,
) {
    let zero = E::splat(simd, E::ZERO);
    assert!(y.nrows >= rows.len());
    for (r, i) in rows.clone().zip(0..) {
        // Two chains of accumulators: a multiply-add's latency is hidden by the other.
        let mut acc = [[zero; NV]; 2];
        // `inline(always)`: else LLVM may keep the closure out of line, compiled
        // without the instruction set's features, and with it every SIMD
        // intrinsic as a call (measured: c64 with AVX2, 10× slower).
        a.for_each_read::<2>(
            r,
            x,
            #[inline(always)]
            |t, xr, v| {
                let xr = vectors::<S, E, NV>(xr);
                let av = E::splat(simd, maybe_conj(v, conj));
                for s in 0..NV {
                    acc[t][s] = E::mul_add(simd, av, xr[s], acc[t][s]);
                }
            },
        );
        // SAFETY: `i < rows.len() <= y.nrows` (asserted above).
        let out = vectors_mut::<S, E, NV>(unsafe { y.row_unchecked(i) });
        for t in 0..NV {
            out[t] = E::add(simd, acc[0][t], acc[1][t]);
        }
    }
}

/// Scatter: for each outer `j` in `outer` (row `j - outer.start` of `x`),
/// adds `a_p · x[j]` to row `idx_p` of `y`, rows of `NV` vectors.
#[inline(always)]
fn scatter<S: Simd, I: Index, E: Elem, const NV: usize>(
    simd: S,
    a: Parts<'_, I, E>,
    conj: bool,
    outer: Range<usize>,
    x: Rows<'_, E>,
    mut y: RowsMut<'_, E>,
) {
    assert!(x.nrows >= outer.len());
    assert!(y.nrows >= a.inner, "{} accumulator rows for an inner dimension of {}", y.nrows, a.inner);
    for (j, jj) in outer.zip(0..) {
        // SAFETY: `jj < outer.len() <= x.nrows` (asserted above).
        let xj = *vectors::<S, E, NV>(unsafe { x.row_unchecked(jj) });
        let (idx, val) = a.entries(j);
        for (p, v) in idx.iter().zip(val) {
            let av = E::splat(simd, maybe_conj(*v, conj));
            let i = p.zx();
            let yr = if a.mapped {
                y.row(i)
            } else {
                // SAFETY: `i` is an index of outer `j`, below `a.inner` (the
                // invariant of `Parts`; not `mapped`, so unchanged since its
                // check), and `a.inner <= y.nrows` (asserted above).
                unsafe { y.row_unchecked(i) }
            };
            let yr = vectors_mut::<S, E, NV>(yr);
            for t in 0..NV {
                yr[t] = E::mul_add(simd, av, xj[t], yr[t]);
            }
        }
    }
}

/// [`gather`] for one column, scalar: `y[r - rows.start] = Σ_p a_p · x[idx_p]`.
///
/// Compact storage that cannot change (not `mapped`) takes a loop over the
/// offsets with no bounds check at all: rows of a few entries (stencils)
/// spend most of their time in a row's setup, not in its entries. Each row
/// asks for the matrix [`PREFETCH`] bytes ahead.
fn gather1<I: Index, E: Elem>(a: Parts<'_, I, E>, conj: bool, rows: Range<usize>, x: &[E], y: &mut [E]) {
    if a.mapped || a.nnz.is_some() {
        let x = Rows::of_slice(x, 1);
        for (r, out) in rows.zip(y) {
            // Four chains of accumulators: an addition's latency is hidden by the others.
            let mut acc = [E::ZERO; 4];
            a.for_each_read::<4>(r, x, |t, xi, v| acc[t] = E::mul_add1(maybe_conj(v, conj), xi[0], acc[t]));
            *out = E::add1(E::add1(acc[0], acc[1]), E::add1(acc[2], acc[3]));
        }
        return;
    }
    assert!(x.len() >= a.inner, "{} operand rows for an inner dimension of {}", x.len(), a.inner);
    let (idx, val) = (a.idx, a.val);
    let ptr = &a.ptr[rows.start..rows.end + 1];
    for (ends, out) in ptr.windows(2).zip(y) {
        let (mut p, end) = (ends[0].zx(), ends[1].zx());
        // SAFETY: `term` is called below with `p < end` only, and
        // `ptr[r]..ptr[r + 1]` lies within `idx` and `val` for every outer
        // `r` (the invariant of `Parts`; compact storage, not `mapped`, so
        // unchanged since its check), so `p` indexes both; `idx[p] <
        // a.inner <= x.len()` (the invariant, and asserted above).
        let term = |p: usize, acc: E| unsafe {
            E::mul_add1(maybe_conj(*val.get_unchecked(p), conj), *x.get_unchecked(idx.get_unchecked(p).zx()), acc)
        };
        prefetch(val.as_ptr().wrapping_add(p + PREFETCH / size_of::<E>()));
        prefetch(idx.as_ptr().wrapping_add(p + PREFETCH / size_of::<I>()));
        // Two chains of accumulators: a multiply-add's latency is hidden by the other.
        let mut acc = [E::ZERO; 2];
        while p + 2 <= end {
            acc[0] = term(p, acc[0]);
            acc[1] = term(p + 1, acc[1]);
            p += 2;
        }
        if p < end {
            acc[0] = term(p, acc[0]);
        }
        *out = E::add1(acc[0], acc[1]);
    }
}

/// How far ahead of the entries being read [`gather1`] asks for the
/// matrix's values and indices, bytes: the hardware's prefetcher alone keeps
/// one core's stream of a stencil's short rows at about 0.8× MKL's; 1024
/// bytes ahead measured 1.3–1.4× faster than faer's product (was 1.15×;
/// 512 bytes 1.3×) on the 2-D and 3-D stencils.
const PREFETCH: usize = 1024;

/// Asks the cache for the line at `p` (nothing on other targets): a hint,
/// which never faults, whatever the address.
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing and cannot fault, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// [`scatter`] for one column, scalar (`x[j - outer.start]` for outer `j`).
fn scatter1<I: Index, E: Elem>(a: Parts<'_, I, E>, conj: bool, outer: Range<usize>, x: &[E], y: &mut [E]) {
    for (j, &xj) in outer.zip(x) {
        a.for_each_entry(j, y, |yi, v| *yi = E::mul_add1(maybe_conj(v, conj), xj, *yi));
    }
}

/// Which walk a product takes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Walk {
    /// Outer = output rows.
    Gather,
    /// Outer = operand rows.
    Scatter,
}

/// One kernel call on the instruction set pulp picks; `x.w == y.w` is one,
/// two or four vectors.
struct Kernel<'a, 'b, I, E> {
    walk: Walk,
    a: Parts<'a, I, E>,
    conj: bool,
    range: Range<usize>,
    x: Rows<'b, E>,
    y: RowsMut<'b, E>,
}

impl<I: Index, E: Elem> WithSimd for Kernel<'_, '_, I, E> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Kernel { walk, a, conj, range, x, y } = self;
        assert_eq!(x.w, y.w);
        let (w, lanes) = (x.w, E::lanes::<S>());
        match (walk, w / lanes, w % lanes) {
            (Walk::Gather, 1, 0) => gather::<S, I, E, 1>(simd, a, conj, range, x, y),
            (Walk::Gather, 2, 0) => gather::<S, I, E, 2>(simd, a, conj, range, x, y),
            (Walk::Gather, 4, 0) => gather::<S, I, E, 4>(simd, a, conj, range, x, y),
            (Walk::Scatter, 1, 0) => scatter::<S, I, E, 1>(simd, a, conj, range, x, y),
            (Walk::Scatter, 2, 0) => scatter::<S, I, E, 2>(simd, a, conj, range, x, y),
            (Walk::Scatter, 4, 0) => scatter::<S, I, E, 4>(simd, a, conj, range, x, y),
            _ => unreachable!("panel width {w} is not one, two or four vectors of {lanes}"),
        }
    }
}

struct Lanes<E>(PhantomData<E>);

impl<E: Elem> WithSimd for Lanes<E> {
    type Output = usize;
    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) -> usize {
        E::lanes::<S>()
    }
}

/// How a product runs: walk, panel width, threads.
#[derive(Copy, Clone, Debug)]
pub(super) struct Plan {
    /// The instruction set, chosen once.
    arch: Arch,
    walk: Walk,
    /// Elements in a SIMD vector on this machine.
    lanes: usize,
    /// Widest panel: 1 for one column, else one, two or four vectors.
    w: usize,
    /// Team members.
    threads: usize,
    /// Whether members take whole panels of a staged (column-major)
    /// operand each, instead of chunks of every panel.
    by_panels: bool,
    /// Output rows `m` and operand rows `n`.
    m: usize,
    n: usize,
}

impl Plan {
    /// The plan of `out (m×k) = A_mode · X (n×k)`, where `A` has `nnz` entries.
    pub(super) fn new<E: Elem>(walk: Walk, m: usize, n: usize, k: usize, nnz: usize, par: Par) -> Self {
        Self::on::<E>(Arch::new(), walk, m, n, k, nnz, par)
    }

    /// [`Plan::new`] on the instruction set `arch` (the tests take pulp's
    /// scalar one, whose vectors hold one element, as `c64`'s do on NEON).
    fn on<E: Elem>(arch: Arch, walk: Walk, m: usize, n: usize, k: usize, nnz: usize, par: Par) -> Self {
        let lanes = arch.dispatch(Lanes::<E>(PhantomData));
        let work = nnz.saturating_mul(k);
        let threads = par.degree().min(work / MIN_WORK_PER_THREAD).max(1);
        // The widest panel: two cache lines of the operand per entry for the
        // gather (measured 12–14% faster than one with AVX-512 at k = 16 and
        // 128; four were slower), four vectors for the scatter (a quarter of
        // the passes over the matrix, measured 8% faster than two).
        let vector_bytes = lanes * size_of::<E>();
        let widest = match walk {
            Walk::Gather => (128 / vector_bytes).clamp(1, 4),
            Walk::Scatter => 4,
        };
        let widest = if widest >= 4 {
            4
        } else if widest >= 2 {
            2
        } else {
            1
        };
        let w = match k {
            0 => 0,
            1 => 1,
            k if k <= lanes => lanes,
            // Panels as wide as the columns allow, in whole vectors.
            k => {
                let vectors = k.div_ceil(lanes);
                lanes
                    * if vectors >= widest {
                        widest
                    } else if vectors >= 2 {
                        2
                    } else {
                        1
                    }
                    .min(widest)
            }
        };
        // Whole panels to each member when each gets at least one: no second
        // phase, no sum, no barrier between panels (measured faster than
        // splitting each panel).
        let by_panels = threads > 1 && w > 1 && k >= w * threads;
        Plan { arch, walk, lanes, w, threads, by_panels, m, n }
    }

    /// Scratch of [`run`] (elements of `E`): the widest layouts' need.
    fn sizes(&self) -> (usize, usize) {
        let (w, t) = (self.w, self.threads);
        match (self.walk, w) {
            (_, 0) => (0, 0),
            // A staged operand column and output column; the scatter's accumulators.
            (Walk::Gather, 1) => (self.n + self.m, 0),
            (Walk::Scatter, 1) => (self.n + self.m, (t - 1) * self.m),
            // The operand panel, shared (or one per member taking whole
            // panels); an output block per member.
            (Walk::Gather, _) if self.by_panels => (t * self.n * w, t * BLOCK * w),
            (Walk::Gather, _) => (self.n * w, t * BLOCK * w),
            // An accumulator per member; an operand block per member.
            (Walk::Scatter, _) => (t * self.m * w, t * BLOCK * w),
        }
    }

    pub(super) fn scratch<E: Elem>(&self) -> StackReq {
        let (a, b) = self.sizes();
        StackReq::new_aligned::<E>(a, ALIGN).and(StackReq::new_aligned::<E>(b, ALIGN))
    }

    /// The width of the staged panel starting `remaining` columns before the
    /// end: the widest, or (the last panel) the narrowest kernel width that
    /// holds every remaining column, padded (three vectors' worth takes four:
    /// members claiming whole panels count on one panel for the rest).
    fn panel_width(&self, remaining: usize) -> usize {
        if self.w <= 1 {
            return self.w;
        }
        let vectors = remaining.div_ceil(self.lanes).min(self.w / self.lanes);
        self.lanes * if vectors > 2 { 4 } else { vectors }
    }

    /// How many of `k` columns of a row-major operand the gather reads in
    /// place: the panels of [`Plan::exact_width`], one after the other.
    fn in_place(&self, k: usize) -> usize {
        let mut done = 0;
        while self.exact_width(k - done) > 0 {
            done += self.exact_width(k - done);
        }
        done
    }

    /// The width of the in-place panel starting `remaining` columns before
    /// the end: whole vectors only, 0 when fewer than one vector remains.
    fn exact_width(&self, remaining: usize) -> usize {
        let vectors = (remaining / self.lanes).min(self.w / self.lanes);
        self.lanes
            * if vectors >= 4 {
                4
            } else if vectors >= 2 {
                2
            } else {
                vectors
            }
    }
}

/// Views `s` as elements of `T`: `T` and `E` are the same type (checked by
/// the dispatch on [`Scalar::DTYPE`]), so this never panics.
fn as_t<E: bytemuck::Pod, T: bytemuck::Pod>(s: &mut [E]) -> &mut [T] {
    bytemuck::cast_slice_mut(s)
}

/// `out = A_mode · rhs`, shapes already checked, `a.val` already of type `E` (= `T`).
pub(super) fn run<I: Index, T: Scalar, E: Elem>(
    plan: Plan,
    a: Parts<'_, I, E>,
    conj: bool,
    mut out: MatMut<'_, T>,
    rhs: MatRef<'_, T>,
    stack: &mut MemStack,
) {
    let ctx = Ctx { arch: plan.arch, a, conj, plan };
    let (s1, s2) = plan.sizes();
    // Only the staging this product's layouts need is initialized (the
    // rest of the request is the widest layouts' need, never touched):
    // contiguous one-column operands and row-major panels read in place.
    let contiguous = |c: faer::ColRef<'_, T>| c.try_as_col_major().is_some();
    let s1 = match rhs.ncols() {
        0 => 0,
        1 if out.as_ref().col(0).try_as_col_major().is_some() => {
            if contiguous(rhs.col(0)) {
                0
            } else {
                plan.n
            }
        }
        k if plan.walk == Walk::Gather && Rows::<E>::of_mat(rhs).is_some() && plan.in_place(k) == k => 0,
        _ => s1,
    };
    let (mut buf1, stack) = stack.make_aligned_with::<E>(s1, ALIGN, |_| E::ZERO);
    let (mut buf2, _) = stack.make_aligned_with::<E>(s2, ALIGN, |_| E::ZERO);
    let (buf1, buf2) = (&mut *buf1, &mut *buf2);
    match rhs.ncols() {
        0 => {}
        1 => {
            let (xs, ys) = buf1.split_at_mut(plan.n.min(buf1.len()));
            let x = match rhs.col(0).try_as_col_major() {
                Some(c) => bytemuck::cast_slice::<T, E>(c.as_slice()),
                None => {
                    as_t::<E, T>(xs).iter_mut().zip(rhs.col(0).iter()).for_each(|(s, v)| *s = *v);
                    &*xs
                }
            };
            match out.rb_mut().col_mut(0).try_as_col_major_mut() {
                Some(y) => ctx.spmv(x, bytemuck::cast_slice_mut::<T, E>(y.as_slice_mut()), buf2),
                None => {
                    let ys = &mut ys[..plan.m];
                    ctx.spmv(x, ys, buf2);
                    out.col_mut(0).iter_mut().zip(as_t::<E, T>(ys)).for_each(|(v, s)| *v = *s);
                }
            }
        }
        _ => match plan.walk {
            Walk::Gather => ctx.gather_panels(rhs, out, buf1, buf2),
            Walk::Scatter => ctx.scatter_panels(rhs, out, buf1, buf2),
        },
    }
}

/// What every part of a product shares.
#[derive(Copy, Clone)]
struct Ctx<'a, I, E> {
    arch: Arch,
    a: Parts<'a, I, E>,
    conj: bool,
    plan: Plan,
}

impl<I: Index, E: Elem> Ctx<'_, I, E> {
    /// Runs `walk` on `range` with rows of width `x.w` (vectors; 1: scalar loops on slices).
    fn kernel(self, walk: Walk, range: Range<usize>, x: Rows<'_, E>, y: RowsMut<'_, E>) {
        let Ctx { arch, a, conj, .. } = self;
        arch.dispatch(Kernel { walk, a, conj, range, x, y })
    }

    /// One contiguous column `y = A_mode · x`: the gather's members write
    /// the rows of their chunks; the scatter's accumulate their chunks into
    /// `y` (member 0) or their part of `accs`, then add those into `y`.
    fn spmv(self, x: &[E], y: &mut [E], accs: &mut [E]) {
        let (a, conj, t, m) = (self.a, self.conj, self.plan.threads, self.plan.m);
        let count = a.chunks(t);
        let claims = Claims::new(count);
        match self.plan.walk {
            Walk::Gather => {
                let y = Disjoint::new(y);
                team(t, |_| {
                    claims.each(|c| {
                        let rows = a.chunk(c, count);
                        // SAFETY: each chunk is claimed once, and chunks are disjoint ranges of rows.
                        let y = unsafe { y.part(rows.clone()) };
                        gather1(a, conj, rows, x, y)
                    })
                })
            }
            Walk::Scatter if t == 1 => {
                y.fill(E::ZERO);
                scatter1(a, conj, 0..self.plan.n, x, y)
            }
            Walk::Scatter => {
                let (ys, accs) = (Disjoint::new(y), Disjoint::new(&mut accs[..(t - 1) * m]));
                team(t, |p| {
                    // SAFETY: member `p` alone takes `y` (p = 0) or accumulator `p - 1`.
                    let target = unsafe { if p == 0 { ys.part(0..m) } else { accs.part((p - 1) * m..p * m) } };
                    target.fill(E::ZERO);
                    claims.each(|c| {
                        let outer = a.chunk(c, count);
                        scatter1(a, conj, outer.clone(), &x[outer], target)
                    })
                });
                // SAFETY: the first team has ended; these are the only parts alive.
                let (y, accs) = unsafe { (ys.part(0..m), &*accs.part(0..(t - 1) * m)) };
                let rows = Claims::new(t * CHUNKS_PER_THREAD);
                let y = Disjoint::new(y);
                team(t, |_| {
                    rows.each(|c| {
                        let r = m * c / rows.count..m * (c + 1) / rows.count;
                        // SAFETY: each chunk of rows is claimed once; they are disjoint.
                        let y = unsafe { y.part(r.clone()) };
                        for acc in accs.chunks_exact(m) {
                            for (v, s) in y.iter_mut().zip(&acc[r.clone()]) {
                                *v = E::add1(*v, *s);
                            }
                        }
                    })
                })
            }
        }
    }

    /// `out = A_mode · rhs` by gathers, `k >= 2`.
    fn gather_panels<T: Scalar>(self, rhs: MatRef<'_, T>, out: MatMut<'_, T>, buf1: &mut [E], buf2: &mut [E]) {
        let (plan, k) = (self.plan, rhs.ncols());
        let (t, w) = (plan.threads, plan.w);
        let mut out = out;
        // Columns read in place: whole vectors of a row-major operand.
        let in_place = match Rows::<E>::of_mat(rhs) {
            Some(x) if plan.exact_width(k) > 0 => self.gather_in_place(x, out.rb_mut(), buf2),
            _ => 0,
        };
        if in_place == k {
            return;
        }
        let (rhs, mut out) = (rhs.subcols(in_place, k - in_place), out.subcols_mut(in_place, k - in_place));
        let k = rhs.ncols();
        let count = self.a.chunks(t);
        if plan.by_panels && k >= w * t {
            // Each member claims whole panels, with its own operand panel and block.
            let panels = Claims::new(k.div_ceil(w));
            let (xps, blocks) = (Disjoint::new(&mut buf1[..t * plan.n * w]), Disjoint::new(&mut buf2[..t * BLOCK * w]));
            let out = DisjointRows { mat: out };
            team(t, |p| {
                // SAFETY: member `p` alone takes part `p` of each scratch.
                let (xp, block) = unsafe {
                    (xps.part(p * plan.n * w..(p + 1) * plan.n * w), blocks.part(p * BLOCK * w..(p + 1) * BLOCK * w))
                };
                panels.each(|q| {
                    let c0 = q * w;
                    let wq = plan.panel_width(k - c0);
                    let wc = wq.min(k - c0);
                    let xp = &mut xp[..plan.n * wq];
                    copy_in(rhs.subcols(c0, wc), xp, wq);
                    // SAFETY: panel `q` is claimed once; its columns are this member's alone.
                    let y = unsafe { out.block(0..plan.m, c0..c0 + wc) };
                    self.gather_block_rows(0..plan.m, Rows::of_slice(xp, wq), y, &mut block[..BLOCK * wq]);
                })
            });
            return;
        }
        let mut c0 = 0;
        while c0 < k {
            let wq = plan.panel_width(k - c0);
            let wc = wq.min(k - c0);
            let x = rhs.subcols(c0, wc);
            let xp = &mut buf1[..plan.n * wq];
            // Stage the panel (rows split over the team), then gather.
            {
                let xd = Disjoint::new(xp);
                let rows = Claims::new(if t > 1 { t * CHUNKS_PER_THREAD } else { 1 });
                let n = plan.n;
                team(t, |_| {
                    rows.each(|c| {
                        let r = n * c / rows.count..n * (c + 1) / rows.count;
                        // SAFETY: each chunk of rows is claimed once; they are disjoint.
                        let dst = unsafe { xd.part(r.start * wq..r.end * wq) };
                        copy_in(x.subrows(r.start, r.len()), dst, wq);
                    })
                });
            }
            let xp = Rows::of_slice(&*xp, wq);
            let claims = Claims::new(count);
            let blocks = Disjoint::new(&mut buf2[..t * BLOCK * wq]);
            let y = DisjointRows { mat: out.rb_mut().subcols_mut(c0, wc) };
            team(t, |p| {
                // SAFETY: member `p` alone takes block `p`.
                let block = unsafe { blocks.part(p * BLOCK * wq..(p + 1) * BLOCK * wq) };
                claims.each(|c| {
                    let rows = self.a.chunk(c, count);
                    // SAFETY: each chunk is claimed once, and chunks are disjoint ranges of rows.
                    let yc = unsafe { y.rows(rows.clone()) };
                    self.gather_block_rows(rows, xp, yc, block);
                })
            });
            c0 += wc;
        }
    }

    /// The gather of the whole vectors of columns of a row-major operand
    /// `x`, read in place, blocks of output rows through every panel in
    /// turn. Returns the columns done.
    fn gather_in_place<T: Scalar>(self, x: Rows<'_, E>, out: MatMut<'_, T>, buf2: &mut [E]) -> usize {
        let (plan, k) = (self.plan, x.w);
        let (t, w) = (plan.threads, plan.w);
        let count = self.a.chunks(t);
        let claims = Claims::new(count);
        let blocks = Disjoint::new(&mut buf2[..t * BLOCK * w]);
        let y = DisjointRows { mat: out };
        let done = plan.in_place(k);
        team(t, |p| {
            // SAFETY: member `p` alone takes block `p`.
            let block = unsafe { blocks.part(p * BLOCK * w..(p + 1) * BLOCK * w) };
            claims.each(|c| {
                let rows = self.a.chunk(c, count);
                // SAFETY: each chunk is claimed once, and chunks are disjoint ranges of rows.
                let mut yc = unsafe { y.rows(rows.clone()) };
                let mut r0 = rows.start;
                while r0 < rows.end {
                    let len = BLOCK.min(rows.end - r0);
                    let mut c0 = 0;
                    while c0 < done {
                        let wq = plan.exact_width(k - c0);
                        let yb = yc.rb_mut().subrows_mut(r0 - rows.start, len).subcols_mut(c0, wq);
                        self.gather_block_rows(r0..r0 + len, x.cols(c0, wq), yb, &mut block[..BLOCK * wq]);
                        c0 += wq;
                    }
                    r0 += len;
                }
            })
        });
        done
    }

    /// Output rows `rows` (`y`'s first row is `rows.start`; `y.ncols() <= x.w`)
    /// from operand rows `x`: in place when `y`'s rows are contiguous and
    /// as wide as the panel, else through `block` by blocks of rows.
    fn gather_block_rows<T: Scalar>(self, rows: Range<usize>, x: Rows<'_, E>, y: MatMut<'_, T>, block: &mut [E]) {
        let (w, mut y) = (x.w, y);
        if y.ncols() == w
            && let Some(yr) = RowsMut::of_mat(y.rb_mut())
        {
            return self.kernel(Walk::Gather, rows, x, yr);
        }
        let mut r0 = rows.start;
        while r0 < rows.end {
            let len = BLOCK.min(rows.end - r0);
            let yb = &mut block[..len * w];
            self.kernel(Walk::Gather, r0..r0 + len, x, RowsMut::of_slice(yb, w));
            copy_out(yb, w, y.rb_mut().subrows_mut(r0 - rows.start, len));
            r0 += len;
        }
    }

    /// `out = A_mode · rhs` by scatters, `k >= 2`: panel by panel, each
    /// member accumulating its chunks of the operand's rows (or, with
    /// enough panels, its whole panels).
    fn scatter_panels<T: Scalar>(self, rhs: MatRef<'_, T>, out: MatMut<'_, T>, buf1: &mut [E], buf2: &mut [E]) {
        let (plan, k) = (self.plan, rhs.ncols());
        let (t, w, m) = (plan.threads, plan.w, plan.m);
        let x_rows = Rows::<E>::of_mat(rhs);
        let mut out = out;
        if t == 1 || plan.by_panels {
            let panels = Claims::new(k.div_ceil(w));
            let (accs, blocks) = (Disjoint::new(&mut buf1[..t * m * w]), Disjoint::new(&mut buf2[..t * BLOCK * w]));
            let out = DisjointRows { mat: out };
            // Panels of the widest width but the last (in place needs exact widths).
            let starts = |q: usize| -> (usize, usize) {
                let c0 = q * w;
                (c0, plan.panel_width(k - c0).min(w))
            };
            team(t, |p| {
                // SAFETY: member `p` alone takes part `p` of each scratch.
                let (acc, block) =
                    unsafe { (accs.part(p * m * w..(p + 1) * m * w), blocks.part(p * BLOCK * w..(p + 1) * BLOCK * w)) };
                panels.each(|q| {
                    let (c0, wq) = starts(q);
                    let wc = wq.min(k - c0);
                    // SAFETY: panel `q` is claimed once; its columns are this member's alone.
                    let mut y = unsafe { out.block(0..m, c0..c0 + wc) };
                    let x = x_rows.filter(|_| wc == wq).map(|x| x.cols(c0, wq));
                    match RowsMut::of_mat(y.rb_mut()).filter(|_| wc == wq) {
                        Some(mut yr) => {
                            yr.fill(E::ZERO);
                            self.scatter_rows(0..plan.n, x, rhs.subcols(c0, wc), yr, &mut block[..BLOCK * wq]);
                        }
                        None => {
                            let acc = &mut acc[..m * wq];
                            acc.fill(E::ZERO);
                            let ya = RowsMut::of_slice(acc, wq);
                            self.scatter_rows(0..plan.n, x, rhs.subcols(c0, wc), ya, &mut block[..BLOCK * wq]);
                            copy_out(acc, wq, y);
                        }
                    }
                })
            });
            return;
        }
        let count = self.a.chunks(t);
        let mut c0 = 0;
        while c0 < k {
            let wq = plan.panel_width(k - c0);
            let wc = wq.min(k - c0);
            let x = x_rows.filter(|_| wc == wq).map(|x| x.cols(c0, wq));
            let xm = rhs.subcols(c0, wc);
            let claims = Claims::new(count);
            let acc_len = m * wq;
            let (accs, blocks) = (Disjoint::new(&mut buf1[..t * acc_len]), Disjoint::new(&mut buf2[..t * BLOCK * wq]));
            team(t, |p| {
                // SAFETY: member `p` alone takes part `p` of each scratch.
                let (acc, block) = unsafe {
                    (accs.part(p * acc_len..(p + 1) * acc_len), blocks.part(p * BLOCK * wq..(p + 1) * BLOCK * wq))
                };
                acc.fill(E::ZERO);
                claims.each(|c| {
                    let outer = self.a.chunk(c, count);
                    self.scatter_rows(outer, x, xm, RowsMut::of_slice(acc, wq), block);
                })
            });
            // SAFETY: the team has ended; this is the only part alive.
            let accs = unsafe { &*accs.part(0..t * acc_len) };
            let y = DisjointRows { mat: out.rb_mut().subcols_mut(c0, wc) };
            let rows = Claims::new(t * CHUNKS_PER_THREAD);
            team(t, |_| {
                rows.each(|c| {
                    let r = m * c / rows.count..m * (c + 1) / rows.count;
                    // SAFETY: each chunk of rows is claimed once; they are disjoint.
                    let yc = unsafe { y.rows(r.clone()) };
                    sum_out(yc, r, accs, acc_len, wq, t);
                })
            });
            c0 += wc;
        }
    }

    /// Adds `a_p · X[j]` into accumulator row `idx_p` for the entries of outers
    /// `outer`: operand rows in place (`x`) or staged from `xm` (whose first
    /// row is row 0 of the operand) through `block`, by blocks of rows.
    fn scatter_rows<T: Scalar>(
        self,
        outer: Range<usize>,
        x: Option<Rows<'_, E>>,
        xm: MatRef<'_, T>,
        mut acc: RowsMut<'_, E>,
        block: &mut [E],
    ) {
        let w = acc.w;
        if let Some(x) = x {
            return self.kernel(Walk::Scatter, outer.clone(), x.rows(outer), acc);
        }
        let mut j0 = outer.start;
        while j0 < outer.end {
            let len = BLOCK.min(outer.end - j0);
            let xb = &mut block[..len * w];
            copy_in(xm.subrows(j0, len), xb, w);
            self.kernel(Walk::Scatter, j0..j0 + len, Rows::of_slice(xb, w), acc.rb());
            j0 += len;
        }
    }
}

/// `xp` (row-major, rows of `w`) = `x` (`wc ≤ w` columns); lanes past `wc` are left as they are.
fn copy_in<T: Scalar, E: Elem>(x: MatRef<'_, T>, xp: &mut [E], w: usize) {
    let xp = as_t::<E, T>(xp);
    // By blocks of rows, so that the block of `xp` stays in L1 while each
    // column writes into it.
    for r0 in (0..x.nrows()).step_by(COPY_ROWS) {
        let len = COPY_ROWS.min(x.nrows() - r0);
        let xb = x.subrows(r0, len);
        let pb = &mut xp[r0 * w..(r0 + len) * w];
        for c in 0..xb.ncols() {
            let col = xb.col(c);
            match col.try_as_col_major() {
                Some(col) => pb.chunks_exact_mut(w).zip(col.as_slice()).for_each(|(p, v)| p[c] = *v),
                None => pb.chunks_exact_mut(w).zip(col.iter()).for_each(|(p, v)| p[c] = *v),
            }
        }
    }
}

/// Rows copied at a time between column-major and row-major layouts.
const COPY_ROWS: usize = 64;

/// `y` (`wc ≤ w` columns) = `yp` (row-major, rows of `w`).
fn copy_out<T: Scalar, E: Elem>(yp: &mut [E], w: usize, y: MatMut<'_, T>) {
    let yp = as_t::<E, T>(yp);
    let mut y = y;
    for c in 0..y.ncols() {
        match y.rb_mut().col_mut(c).try_as_col_major_mut() {
            Some(col) => col.as_slice_mut().iter_mut().zip(yp.chunks_exact(w)).for_each(|(v, p)| *v = p[c]),
            None => y.rb_mut().col_mut(c).iter_mut().zip(yp.chunks_exact(w)).for_each(|(v, p)| *v = p[c]),
        }
    }
}

/// Rows `rows` of `y` (its first row is `rows.start`) = the sum of the
/// first `parts` accumulators in `accs` (each `acc_len` long, rows of `w`).
fn sum_out<T: Scalar, E: Elem>(
    y: MatMut<'_, T>,
    rows: Range<usize>,
    accs: &[E],
    acc_len: usize,
    w: usize,
    parts: usize,
) {
    let mut y = y;
    for r0 in rows.clone().step_by(COPY_ROWS) {
        let len = COPY_ROWS.min(rows.end - r0);
        let mut yb = y.rb_mut().subrows_mut(r0 - rows.start, len);
        for c in 0..yb.ncols() {
            for (i, v) in (r0..r0 + len).zip(yb.rb_mut().col_mut(c).iter_mut()) {
                let mut s = accs[i * w + c];
                for p in 1..parts {
                    s = E::add1(s, accs[p * acc_len + i * w + c]);
                }
                *v = bytemuck::cast(s);
            }
        }
    }
}

/// The element type of the kernels for `T`, and the call: `$body` with `E`
/// bound to it.
macro_rules! with_elem {
    ($t:ty, |$e:ident| $body:expr) => {
        match <$t as $crate::Scalar>::DTYPE {
            $crate::Dtype::Float32 => {
                type $e = f32;
                $body
            }
            $crate::Dtype::Float64 => {
                type $e = f64;
                $body
            }
            $crate::Dtype::Complex64 => {
                type $e = pulp::c32;
                $body
            }
            $crate::Dtype::Complex128 => {
                type $e = pulp::c64;
                $body
            }
        }
    };
}
pub(super) use with_elem;

#[cfg(test)]
mod tests {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::{Mat, Par};

    use pulp::Arch;

    use super::{Elem, Lanes, Parts, Plan, Walk, run};
    use crate::sparse::SparseView;

    /// With one element per SIMD vector (pulp's scalar fallback on x86-64
    /// without AVX2, `c64` on NEON), panels are one column wide: a product
    /// of several columns must still compute every column, sequentially and
    /// on threads (before, only the first was, when it was contiguous).
    #[test]
    fn one_lane_products_compute_every_column() {
        // A 600 × 500 CSR with 60 entries a row: enough work for two threads.
        let (m, n, per) = (600usize, 500usize, 60usize);
        let ptr: Vec<usize> = (0..=m).map(|i| i * per).collect();
        let idx: Vec<usize> = (0..m * per).map(|e| (e * 7 + e / per * 13) % n).collect();
        let val: Vec<f64> = (0..m * per).map(|e| (e % 11) as f64 - 5.0).collect();
        let a = SparseView::csr(m, n, &ptr, &idx, &val).unwrap();
        let mut dense = Mat::<f64>::zeros(m, n);
        for i in 0..m {
            for e in ptr[i]..ptr[i + 1] {
                dense[(i, idx[e])] += val[e];
            }
        }
        for k in [2, 3, 5] {
            for par in [Par::Seq, Par::rayon(2)] {
                // The gather computes A·X, the scatter Aᵀ·Y.
                for (walk, rows, cols) in [(Walk::Gather, m, n), (Walk::Scatter, n, m)] {
                    let x = Mat::<f64>::from_fn(cols, k, |i, j| (i % 7) as f64 + j as f64);
                    let want = match walk {
                        Walk::Gather => &dense * &x,
                        Walk::Scatter => dense.transpose() * &x,
                    };
                    let plan = Plan::on::<f64>(Arch::Scalar, walk, rows, cols, k, val.len(), par);
                    let mut out = Mat::<f64>::from_fn(rows, k, |_, _| f64::NAN);
                    let mut buf = MemBuffer::new(plan.scratch::<f64>());
                    run::<usize, f64, f64>(
                        plan,
                        Parts::of(a),
                        false,
                        out.as_mut(),
                        x.as_ref(),
                        MemStack::new(&mut buf),
                    );
                    let err = (&out - &want).norm_max();
                    assert!(err <= 1e-9, "{walk:?}, k = {k}, {par:?}: max error {err}");
                }
            }
        }
    }

    /// Every plan's panels have widths the kernels have (the `unreachable!`
    /// in `Kernel` is never hit), fit the scratch and hold the columns left,
    /// and with whole panels per thread every thread gets one: every type, both walks, one lane
    /// (pulp's scalar set) and this machine's, k up to 300, 1 to 17 threads.
    #[test]
    fn plans_pick_widths_the_kernels_have() {
        fn check<E: Elem>(arch: Arch) {
            let lanes = arch.dispatch(Lanes::<E>(core::marker::PhantomData));
            for walk in [Walk::Gather, Walk::Scatter] {
                let size = core::mem::size_of::<E>();
                let widest = if walk == Walk::Gather {
                    [4, 2, 1].into_iter().find(|v| v * lanes * size <= 128).unwrap_or(1)
                } else {
                    4
                };
                let ok = |w: usize, k: usize| {
                    (w == 1 && k == 1)
                        || (w.is_multiple_of(lanes) && [1, 2, 4].contains(&(w / lanes)) && w / lanes <= widest)
                };
                for degree in 1..=17 {
                    for k in 0..=300 {
                        let plan = Plan::on::<E>(arch, walk, 100, 90, k, 1 << 20, Par::rayon(degree));
                        let what = format!("{walk:?}, {lanes} lanes, k = {k}, {degree} threads: {plan:?}");
                        assert!((k == 0 && plan.w == 0) || ok(plan.w, k), "{what}");
                        for left in 1..=k {
                            let w = plan.panel_width(left);
                            assert!(w <= plan.w && ok(w, k), "{what}: {w} wide with {left} columns left");
                            // Members claiming whole panels take panel `q` at column `q·w`:
                            // the last must hold every column left (three vectors' worth did not).
                            assert!(w >= left.min(plan.w), "{what}: {w} wide with {left} columns left");
                        }
                        if plan.by_panels {
                            assert!(k.div_ceil(plan.w) >= plan.threads, "{what}: a thread without a panel");
                        }
                    }
                }
            }
        }
        for arch in [Arch::Scalar, Arch::new()] {
            check::<f32>(arch);
            check::<f64>(arch);
            check::<pulp::c32>(arch);
            check::<pulp::c64>(arch);
        }
    }
}
