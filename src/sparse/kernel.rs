//! The two multi-column kernels and their driver: scratch plan, panels,
//! threads, SIMD dispatch.
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
//! The right-hand side is processed in *panels* of `w` columns: one or two
//! SIMD vectors for the gather (two: 16 `f64` with AVX-512, two cache lines
//! of the operand per entry, measured 12–14% faster than one at k = 16
//! and 128; four were slower), up to four for the scatter (a quarter of
//! the passes over the matrix, measured 8% faster than two at k = 128; its
//! cost per row is per cache line, below). The gather copies the panel of
//! `X` into a row-major scratch, so each entry costs one load of `idx_p`
//! and one vector multiply-add per vector of one contiguous row; output
//! rows are formed in a small row-major block and copied out. The scatter accumulates into a
//! row-major `m × w` scratch, reading blocks of rows of `X` staged the same
//! way. One column (`k = 1`) takes scalar loops straight on the column's
//! slices (a panel kernel wastes its lanes there), or on staged copies if
//! the column is strided.
//!
//! Threads (`Par::Rayon(t)`): with at least `t` panels of two vectors or
//! more, each thread takes whole panels with its own scratch (measured
//! better than splitting each panel: no barrier, no sum). With fewer
//! columns (SpMV included), they split the outer dimension in `t` parts of
//! about equal nonzeros, for every panel: the gather's parts write disjoint
//! rows of the output; the scatter's parts accumulate into one `m × w`
//! scratch each (the first into the output itself for one contiguous
//! column), summed into the output by row blocks on the same threads. A threaded product enters
//! rayon's pool once (`rayon::scope`); the splits inside are joins on its
//! workers. Small products (under `MIN_WORK_PER_THREAD` multiply-adds a
//! thread) take fewer threads.
//!
//! What bounds the scatter with a panel (measured, 20000², 40 entries a
//! column, f64, AVX-512): the read-modify-write of random accumulator rows
//! that live in L3 (`m × w` is 1.3–5.1 MB, a core's L2 is 1 MB); perf puts
//! the samples on those loads and stores, and one or two vectors per row
//! take the same time, so the cost is per cache line. Tried and not kept:
//! blocks of accumulator rows that fit in L2 walked with a cursor per
//! column (each block re-reads a part of every column's cache lines and
//! pays a loop exit per column and block: 1.4–2.5× slower), software
//! prefetch of the rows 4–16 entries ahead (no change), staging blocks of
//! 32 or 512 rows instead of 128 (no change), panels of 4 columns (AVX2
//! vectors on the same machine) so that the accumulator fits in L2 (four
//! passes for 16 columns: 1.5× slower; the gather on 4 columns 1.7×). Going
//! further takes a copy of the matrix: [`super::BothWays`] holds one in the
//! other format, so that every mode gathers.
//!
//! SIMD width is chosen at run time by pulp's [`Arch`] (AVX-512, AVX2+FMA or
//! scalar), as faer does, so the crate builds for the baseline target.
//!
//! Every memory access is a checked slice access but those at the indices
//! `idx_p`: the one-column scatter writes `y[idx_p]` unchecked
//! ([`Parts::for_each_entry`]), as faer's own scatter does, and the gathers
//! read operand rows `x[idx_p]` unchecked ([`Parts::for_each_read`]), as
//! faer's own gather does. Measured side by side with faer (interleaved
//! runs): without the checks the one-column scatter reaches faer's speed
//! (it was 2–7% slower), the one-column gather went from 0.95–0.97× faer to
//! 1.02–1.05×, the panel gather gained 5–7% (BENCHMARKS.md). That rests on the invariant of
//! [`Parts`] (every index below the inner dimension), which only the
//! constructors of [`SparseView`] (and faer's own) establish, and on
//! indices that cannot change since: a view into a file's map (marked by
//! [`SparseView::mapped`]) is bounds-checked there too. Everywhere else,
//! invalid indices would panic.

use core::ops::Range;

use faer::dyn_stack::{MemStack, StackReq};
use faer::reborrow::ReborrowMut;
use faer::{Index, MatMut, MatRef, Par};
use pulp::{Arch, Simd, WithSimd};

use super::SparseView;
use crate::Scalar;

/// Rows staged at a time: the gather's output block, the scatter's operand block.
const BLOCK: usize = 128;
/// Fewest multiply-adds that make a thread worth starting.
const MIN_WORK_PER_THREAD: usize = 1 << 15;
/// Alignment of the scratch rows (one cache line).
const ALIGN: usize = 64;

/// The compressed structure the kernels walk: entries of outer `j` are
/// `idx[range(j)]`, `val[range(j)]`.
///
/// Invariant (what the unchecked accesses of [`Parts::for_each_entry`] and
/// [`Parts::for_each_read`] rest on): for every outer `j`, `range(j)` lies
/// within `idx` and every index in `idx[range(j)]` is below `inner`. The
/// fields are private to this module and [`Parts::of`] is the only
/// constructor: it takes them from a
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
}

impl<'a, I: Index, T> Parts<'a, I, T> {
    /// The structure of `a`.
    pub(super) fn of(a: SparseView<'a, I, T>) -> Self {
        let (_, inner) = a.format.outer_inner((a.nrows, a.ncols));
        Parts { ptr: a.ptr, nnz: a.nnz, idx: a.idx, val: a.val, inner, mapped: a.mapped }
    }

    /// The same structure with the values viewed as `E` (the same type as
    /// `T`, checked by the dispatch on [`Scalar::DTYPE`]).
    pub(super) fn cast<E: bytemuck::Pod>(self) -> Parts<'a, I, E>
    where
        T: bytemuck::Pod,
    {
        let Parts { ptr, nnz, idx, val, inner, mapped } = self;
        Parts { ptr, nnz, idx, val: bytemuck::cast_slice(val), inner, mapped }
    }
}

impl<'a, I: Index, E> Parts<'a, I, E> {
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
    /// index, `row_i = x[i·w..(i + 1)·w]` (a row of a row-major `x` of width
    /// `w`) and `t` the entry's place modulo `U` (`U` chains of
    /// accumulators), without bounds checks on `x` (see the module docs).
    ///
    /// # Panics
    /// If `j` is not an outer index or `x` has fewer than `inner` rows.
    #[inline(always)]
    fn for_each_read<const U: usize>(&self, j: usize, x: &[E], w: usize, mut f: impl FnMut(usize, &[E], E))
    where
        E: Copy,
    {
        assert!(
            w > 0 && x.len() / w >= self.inner,
            "{} operands of width {w} for an inner dimension of {}",
            x.len(),
            self.inner
        );
        let (idx, val) = self.entries(j);
        if self.mapped {
            for (i, v) in idx.iter().zip(val) {
                let i = i.zx();
                assert!(i < self.inner, "index {i} of outer {j} is out of bounds: the file changed after its check");
                f(0, &x[i * w..(i + 1) * w], *v);
            }
            return;
        }
        let row = |i: &I| {
            // SAFETY: `i` is an index of `idx`, so `i < self.inner` (as in
            // `for_each_entry`), and `self.inner · w <= x.len()` (asserted
            // above), so `i·w..(i + 1)·w` lies within `x`.
            unsafe { x.get_unchecked(i.zx() * w..(i.zx() + 1) * w) }
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

    /// Where to cut `range` so that the first part has about `num/den` of its entries.
    fn split(&self, range: Range<usize>, num: usize, den: usize) -> usize {
        let by_count = range.start + range.len() * num / den;
        if self.nnz.is_some() || range.is_empty() {
            return by_count;
        }
        let (lo, hi) = (self.ptr[range.start].zx(), self.ptr[range.end].zx());
        if hi <= lo {
            return by_count;
        }
        let target = lo + (hi - lo) * num / den;
        let cut = range.start + self.ptr[range.clone()].partition_point(|p| p.zx() < target);
        cut.clamp(range.start, range.end)
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

/// The `NV` vectors of row `i` of a row-major scratch of width `NV · lanes`.
#[inline(always)]
fn row<S: Simd, E: Elem, const NV: usize>(x: &[E], i: usize) -> &[E::V<S>; NV] {
    let w = NV * E::lanes::<S>();
    E::as_simd::<S>(&x[i * w..i * w + w]).try_into().unwrap()
}

#[inline(always)]
fn row_mut<S: Simd, E: Elem, const NV: usize>(x: &mut [E], i: usize) -> &mut [E::V<S>; NV] {
    let w = NV * E::lanes::<S>();
    E::as_mut_simd::<S>(&mut x[i * w..i * w + w]).try_into().unwrap()
}

/// Gather: row `r - rows.start` of `y` is `Σ_p a_p · x[idx_p]`, rows of `NV` vectors.
#[inline(always)]
fn gather<S: Simd, I: Index, E: Elem, const NV: usize>(
    simd: S,
    a: Parts<'_, I, E>,
    conj: bool,
    rows: Range<usize>,
    x: &[E],
    y: &mut [E],
) {
    let zero = E::splat(simd, E::ZERO);
    for (r, i) in rows.clone().zip(0..) {
        // Two chains of accumulators: a multiply-add's latency is hidden by the other.
        let mut acc = [[zero; NV]; 2];
        a.for_each_read::<2>(r, x, NV * E::lanes::<S>(), |t, xr, v| {
            let xr: &[E::V<S>; NV] = E::as_simd::<S>(xr).try_into().unwrap();
            let av = E::splat(simd, maybe_conj(v, conj));
            for s in 0..NV {
                acc[t][s] = E::mul_add(simd, av, xr[s], acc[t][s]);
            }
        });
        let out = row_mut::<S, E, NV>(y, i);
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
    x: &[E],
    y: &mut [E],
) {
    for (j, jj) in outer.zip(0..) {
        let xj = *row::<S, E, NV>(x, jj);
        let (idx, val) = a.entries(j);
        for (p, v) in idx.iter().zip(val) {
            let av = E::splat(simd, maybe_conj(*v, conj));
            let yr = row_mut::<S, E, NV>(y, p.zx());
            for t in 0..NV {
                yr[t] = E::mul_add(simd, av, xj[t], yr[t]);
            }
        }
    }
}

/// [`gather`] for one column, scalar.
fn gather1<I: Index, E: Elem>(a: Parts<'_, I, E>, conj: bool, rows: Range<usize>, x: &[E], y: &mut [E]) {
    for (r, out) in rows.zip(y) {
        // Four chains of accumulators: an addition's latency is hidden by the others.
        let mut acc = [E::ZERO; 4];
        a.for_each_read::<4>(r, x, 1, |t, xi, v| acc[t] = E::mul_add1(maybe_conj(v, conj), xi[0], acc[t]));
        *out = E::add1(E::add1(acc[0], acc[1]), E::add1(acc[2], acc[3]));
    }
}

/// [`scatter`] for one column, scalar.
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

/// One kernel call on the instruction set pulp picks; `w` (the row width of
/// `x` and `y`) is one or two vectors (gather) or one, two or four (scatter).
struct Kernel<'a, 'b, I, E> {
    walk: Walk,
    a: Parts<'a, I, E>,
    conj: bool,
    range: Range<usize>,
    x: &'b [E],
    y: &'b mut [E],
    w: usize,
}

impl<I: Index, E: Elem> WithSimd for Kernel<'_, '_, I, E> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Kernel { walk, a, conj, range, x, y, w } = self;
        let nv = w / E::lanes::<S>();
        match (walk, nv) {
            (Walk::Gather, 1) => gather::<S, I, E, 1>(simd, a, conj, range, x, y),
            (Walk::Gather, 2) => gather::<S, I, E, 2>(simd, a, conj, range, x, y),
            (Walk::Scatter, 1) => scatter::<S, I, E, 1>(simd, a, conj, range, x, y),
            (Walk::Scatter, 2) => scatter::<S, I, E, 2>(simd, a, conj, range, x, y),
            (Walk::Scatter, 4) => scatter::<S, I, E, 4>(simd, a, conj, range, x, y),
            _ => unreachable!(
                "panel width {w} is not one or two vectors of {} (gather) or one, two or four (scatter)",
                E::lanes::<S>()
            ),
        }
    }
}

struct Lanes<E>(core::marker::PhantomData<E>);

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
    /// Widest panel: 1 for one column, else up to two vectors (gather) or four (scatter).
    w: usize,
    /// Threads.
    threads: usize,
    /// Whether the threads take whole panels each (a scatter with enough
    /// columns: no accumulators to sum) instead of parts of every panel.
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
        let lanes = arch.dispatch(Lanes::<E>(core::marker::PhantomData));
        let work = nnz.saturating_mul(k);
        let threads = par.degree().min(work / MIN_WORK_PER_THREAD).max(1);
        // Threads take whole panels of two vectors or more when there are
        // enough: no accumulators to sum for the scatter, no barrier between
        // panels for the gather. With fewer columns they split each panel
        // (measured faster than narrower panels, one a thread: 16 columns
        // on 2 threads, gather 0.74–0.81 ms against 0.87–0.97 ms, scatter
        // 1.32 against 1.43 ms).
        let by_panels = threads > 1 && k >= 2 * lanes * threads;
        let w = match k {
            0 => 0,
            1 => 1,
            k if k <= lanes => lanes,
            // Four vectors for the scatter if that leaves a panel for each thread.
            k if walk == Walk::Scatter && k >= 4 * lanes * threads => 4 * lanes,
            _ => 2 * lanes,
        };
        Plan { arch, walk, lanes, w, threads, by_panels, m, n }
    }

    /// Scratch of [`run`] (elements of `E`).
    fn sizes(&self) -> (usize, usize) {
        let (w, t) = (self.w, self.threads);
        match self.walk {
            // The operand panel, shared (or one per thread taking whole
            // panels); an output block per thread.
            Walk::Gather if self.by_panels => (t * self.n * w, t * BLOCK * w),
            Walk::Gather => (self.n * w, t * BLOCK * w),
            // An accumulator per thread; an operand block per thread.
            Walk::Scatter => (t * self.m * w, t * BLOCK * w),
        }
    }

    pub(super) fn scratch<E: Elem>(&self) -> StackReq {
        let (a, b) = self.sizes();
        StackReq::new_aligned::<E>(a, ALIGN).and(StackReq::new_aligned::<E>(b, ALIGN))
    }

    fn panel_width(&self, remaining: usize) -> usize {
        if self.w == 1 || remaining > self.lanes { self.w } else { self.lanes }
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
    let ctx = Ctx { arch: plan.arch, a, conj, w: plan.w };
    let body = move || {
        if rhs.ncols() == 1 {
            // One column, stored contiguously (as usual): no staging, and
            // scratch only for the scatter's other threads.
            let x = rhs.col(0).try_as_col_major().map(|c| bytemuck::cast_slice::<T, E>(c.as_slice()));
            if let (Some(x), Some(y)) = (x, out.rb_mut().col_mut(0).try_as_col_major_mut()) {
                let y = bytemuck::cast_slice_mut::<T, E>(y.as_slice_mut());
                let accs = if plan.walk == Walk::Scatter { (plan.threads - 1) * plan.m } else { 0 };
                let (mut accs, _) = stack.make_aligned_with::<E>(accs, ALIGN, |_| E::ZERO);
                return ctx.spmv(plan, x, y, &mut accs, plan.threads);
            }
        }
        let (s1, s2) = plan.sizes();
        let (mut buf1, stack) = stack.make_aligned_with::<E>(s1, ALIGN, |_| E::ZERO);
        let (mut buf2, _) = stack.make_aligned_with::<E>(s2, ALIGN, |_| E::ZERO);
        let (buf1, buf2) = (&mut *buf1, &mut *buf2);
        if plan.by_panels {
            ctx.split_panels(plan, rhs, out, buf1, buf2, plan.threads)
        } else {
            ctx.panels(plan, rhs, out, buf1, buf2, plan.threads)
        }
    };
    if plan.threads > 1 {
        // Enter rayon's pool once per product (the joins inside stay on its
        // workers' own queues) instead of once per join.
        rayon::scope(|_| body());
    } else {
        body();
    }
}

/// What every part of one panel's product shares.
#[derive(Copy, Clone)]
struct Ctx<'a, I, E> {
    arch: Arch,
    a: Parts<'a, I, E>,
    conj: bool,
    w: usize,
}

impl<I: Index, E: Elem> Ctx<'_, I, E> {
    /// Runs `walk` on `range` with rows of width `self.w` (1: scalar loops).
    fn kernel(self, walk: Walk, range: Range<usize>, x: &[E], y: &mut [E]) {
        let Ctx { arch, a, conj, w } = self;
        match (walk, w) {
            (Walk::Gather, 1) => gather1(a, conj, range, x, y),
            (Walk::Scatter, 1) => scatter1(a, conj, range, x, y),
            _ => arch.dispatch(Kernel { walk, a, conj, range, x, y, w }),
        }
    }

    /// `out = A_mode · rhs`, panel after panel, each on `t` threads.
    fn panels<T: Scalar>(
        self,
        plan: Plan,
        rhs: MatRef<'_, T>,
        out: MatMut<'_, T>,
        buf1: &mut [E],
        buf2: &mut [E],
        t: usize,
    ) {
        let (k, mut out) = (rhs.ncols(), out);
        let mut c0 = 0;
        while c0 < k {
            let w = plan.panel_width(k - c0);
            let wc = w.min(k - c0);
            let x = rhs.subcols(c0, wc);
            let y = out.rb_mut().subcols_mut(c0, wc);
            let ctx = Ctx { w, ..self };
            let blocks = &mut buf2[..t * BLOCK * w];
            match plan.walk {
                Walk::Gather => {
                    let xp = &mut buf1[..plan.n * w];
                    copy_in_par(x, 0..plan.n, xp, w, t);
                    ctx.gather_par(0..plan.m, y, xp, blocks, t);
                }
                Walk::Scatter => {
                    let accs = &mut buf1[..t * plan.m * w];
                    ctx.scatter_par(0..plan.n, x, accs, plan.m * w, blocks, t);
                    sum_out_par(y, 0..plan.m, accs, plan.m * w, w, t, t);
                }
            }
            c0 += wc;
        }
    }

    /// One contiguous column `y = A_mode · x` on `t` threads: the gather
    /// splits the rows of `y`; the scatter splits the outer dimension, the
    /// first part accumulating into `y`, the others into `accs` (`m` each),
    /// then adds those into `y`.
    fn spmv(self, plan: Plan, x: &[E], y: &mut [E], accs: &mut [E], t: usize) {
        match plan.walk {
            Walk::Gather => self.gather_spmv(0..plan.m, x, y, t),
            Walk::Scatter => {
                let accs = &mut accs[..(t - 1) * plan.m];
                self.scatter_spmv(0..plan.n, x, y, accs, t);
                if t > 1 {
                    add_rows_par(y, accs, t);
                }
            }
        }
    }

    fn gather_spmv(self, rows: Range<usize>, x: &[E], y: &mut [E], t: usize) {
        if t > 1 {
            let cut = self.a.split(rows.clone(), t / 2, t);
            let (y0, y1) = y.split_at_mut(cut - rows.start);
            rayon::join(
                || self.gather_spmv(rows.start..cut, x, y0, t / 2),
                || self.gather_spmv(cut..rows.end, x, y1, t - t / 2),
            );
            return;
        }
        gather1(self.a, self.conj, rows, x, y)
    }

    /// Outers `outer` into `target`, and with `t > 1` threads, the later
    /// parts into `accs` (`t - 1` accumulators of `target.len()`).
    fn scatter_spmv(self, outer: Range<usize>, x: &[E], target: &mut [E], accs: &mut [E], t: usize) {
        if t > 1 {
            let m = target.len();
            let cut = self.a.split(outer.clone(), t / 2, t);
            let (a0, a1) = accs.split_at_mut((t / 2 - 1) * m);
            let (target1, a1) = a1.split_at_mut(m);
            rayon::join(
                || self.scatter_spmv(outer.start..cut, x, target, a0, t / 2),
                || self.scatter_spmv(cut..outer.end, x, target1, a1, t - t / 2),
            );
            return;
        }
        target.fill(E::ZERO);
        scatter1(self.a, self.conj, outer.clone(), &x[outer], target)
    }

    /// [`Ctx::panels`] with whole panels shared out over `t` threads, each
    /// with its own scratch (one thread's share of `buf1` and `buf2`).
    fn split_panels<T: Scalar>(
        self,
        plan: Plan,
        rhs: MatRef<'_, T>,
        out: MatMut<'_, T>,
        buf1: &mut [E],
        buf2: &mut [E],
        t: usize,
    ) {
        if t > 1 {
            let panels = rhs.ncols().div_ceil(plan.w);
            let cut = (panels * (t / 2) / t).max(1) * plan.w;
            if cut < rhs.ncols() {
                let (x0, x1) = rhs.split_at_col(cut);
                let (y0, y1) = out.split_at_col_mut(cut);
                let (a0, a1) = buf1.split_at_mut(t / 2 * (buf1.len() / t));
                let (b0, b1) = buf2.split_at_mut(t / 2 * (buf2.len() / t));
                rayon::join(
                    || self.split_panels(plan, x0, y0, a0, b0, t / 2),
                    || self.split_panels(plan, x1, y1, a1, b1, t - t / 2),
                );
                return;
            }
        }
        self.panels(plan, rhs, out, buf1, buf2, 1)
    }

    /// Rows `rows` of the output (`y`, whose first row is `rows.start`) on `t` threads.
    fn gather_par<T: Scalar>(self, rows: Range<usize>, y: MatMut<'_, T>, xp: &[E], blocks: &mut [E], t: usize) {
        if t > 1 {
            let cut = self.a.split(rows.clone(), t / 2, t);
            let (y0, y1) = y.split_at_row_mut(cut - rows.start);
            let (b0, b1) = blocks.split_at_mut(t / 2 * BLOCK * self.w);
            rayon::join(
                || self.gather_par(rows.start..cut, y0, xp, b0, t / 2),
                || self.gather_par(cut..rows.end, y1, xp, b1, t - t / 2),
            );
            return;
        }
        let mut y = y;
        let block = &mut blocks[..BLOCK * self.w];
        let mut r0 = rows.start;
        while r0 < rows.end {
            let len = BLOCK.min(rows.end - r0);
            let yb = &mut block[..len * self.w];
            self.kernel(Walk::Gather, r0..r0 + len, xp, yb);
            copy_out(yb, self.w, y.rb_mut().subrows_mut(r0 - rows.start, len));
            r0 += len;
        }
    }

    /// Operand rows `outer` (`x`'s first row is row 0 of the operand) added
    /// into `accs` (one accumulator of `acc_len` per thread) on `t` threads.
    fn scatter_par<T: Scalar>(
        self,
        outer: Range<usize>,
        x: MatRef<'_, T>,
        accs: &mut [E],
        acc_len: usize,
        blocks: &mut [E],
        t: usize,
    ) {
        if t > 1 {
            let cut = self.a.split(outer.clone(), t / 2, t);
            let (a0, a1) = accs.split_at_mut(t / 2 * acc_len);
            let (b0, b1) = blocks.split_at_mut(t / 2 * BLOCK * self.w);
            rayon::join(
                || self.scatter_par(outer.start..cut, x, a0, acc_len, b0, t / 2),
                || self.scatter_par(cut..outer.end, x, a1, acc_len, b1, t - t / 2),
            );
            return;
        }
        let acc = &mut accs[..acc_len];
        acc.fill(E::ZERO);
        let block = &mut blocks[..BLOCK * self.w];
        let mut j0 = outer.start;
        while j0 < outer.end {
            let len = BLOCK.min(outer.end - j0);
            let xb = &mut block[..len * self.w];
            copy_in(x.subrows(j0, len), xb, self.w);
            self.kernel(Walk::Scatter, j0..j0 + len, xb, acc);
            j0 += len;
        }
    }
}

/// `y += Σ accs` (each accumulator `y.len()` long), rows split over `t` threads.
fn add_rows_par<E: Elem>(y: &mut [E], accs: &[E], t: usize) {
    let m = y.len();
    if t > 1 && m > 1 {
        let cut = m / 2;
        let (y0, y1) = y.split_at_mut(cut);
        rayon::join(|| add_rows_par_at(y0, accs, m, 0), || add_rows_par_at(y1, accs, m, cut));
        return;
    }
    add_rows_par_at(y, accs, m, 0)
}

/// `y[i] += Σ_p accs[p·m + offset + i]`.
fn add_rows_par_at<E: Elem>(y: &mut [E], accs: &[E], m: usize, offset: usize) {
    for acc in accs.chunks_exact(m) {
        for (v, a) in y.iter_mut().zip(&acc[offset..]) {
            *v = E::add1(*v, *a);
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

/// [`copy_in`] of rows `rows` on `t` threads.
fn copy_in_par<T: Scalar, E: Elem>(x: MatRef<'_, T>, rows: Range<usize>, xp: &mut [E], w: usize, t: usize) {
    if t > 1 && rows.len() > 1 {
        let cut = rows.start + rows.len() / 2;
        let (x0, x1) = xp.split_at_mut((cut - rows.start) * w);
        rayon::join(
            || copy_in_par(x, rows.start..cut, x0, w, t / 2),
            || copy_in_par(x, cut..rows.end, x1, w, t - t / 2),
        );
        return;
    }
    copy_in(x.subrows(rows.start, rows.len()), &mut xp[..rows.len() * w], w);
}

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
/// first `parts` accumulators in `accs` (each `acc_len` long, rows of `w`),
/// on `t` threads.
fn sum_out_par<T: Scalar, E: Elem>(
    y: MatMut<'_, T>,
    rows: Range<usize>,
    accs: &[E],
    acc_len: usize,
    w: usize,
    parts: usize,
    t: usize,
) {
    if t > 1 && rows.len() > 1 {
        let cut = rows.start + rows.len() / 2;
        let (y0, y1) = y.split_at_row_mut(cut - rows.start);
        rayon::join(
            || sum_out_par(y0, rows.start..cut, accs, acc_len, w, parts, t / 2),
            || sum_out_par(y1, cut..rows.end, accs, acc_len, w, parts, t - t / 2),
        );
        return;
    }
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
    /// in `Kernel` is never hit) and fit the scratch, and with whole panels
    /// per thread every thread gets one: every type, both walks, one lane
    /// (pulp's scalar set) and this machine's, k up to 300, 1 to 17 threads.
    #[test]
    fn plans_pick_widths_the_kernels_have() {
        fn check<E: Elem>(arch: Arch) {
            let lanes = arch.dispatch(Lanes::<E>(core::marker::PhantomData));
            for walk in [Walk::Gather, Walk::Scatter] {
                let widest = if walk == Walk::Gather { 2 } else { 4 };
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
