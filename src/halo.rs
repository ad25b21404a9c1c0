//! Halos: a block of rows of a sparse matrix split, as PETSc's `MatMPIAIJ`
//! splits it, into the columns its part owns and the others; and what such
//! a split exchanges per product, computed without MPI.
//!
//! When the rows of a sparse matrix are split over `p` parts (MPI ranks) and
//! the vectors are split the same way, part `r` owns rows `rows[r]` of the
//! matrix and entries `cols[r]` of the operand. Its rows read operand
//! entries it owns (the *diagonal block*, its columns renumbered from 0) and
//! entries other parts own, the *ghosts*: the *off-diagonal block* keeps only
//! its rows that hold such entries ("compressed rows") and numbers its
//! columns by their position in the sorted list of ghosts. A product then
//! multiplies the diagonal block while the ghosts travel, and adds the
//! off-diagonal block once they are in (the `mpi` module, feature `mpi`, does that over MPI).
//!
//! [`Blocks`] is that split of one part; [`stats`] computes what every part
//! of a split receives and sends per product (neighbours, ghost entries) in
//! one process, from a function that lists the columns of a row, so that
//! the volume of the exchange on thousands of ranks can be read off a
//! laptop; [`stats_of_file`] does it for a scipy `.npz` file split as
//! `MpiLop` splits it.

use core::ops::Range;

use faer::Index;
use rayon::prelude::*;

use crate::npz::{IndexDtype, NpzError, SparseIndex, SparseNpz};
use crate::sparse::{Format, SparseView};
use crate::{Dtype, Scalar};

/// One part's rows of a CSR matrix, split into the columns it owns (the
/// diagonal block) and the ghosts (the off-diagonal block, compressed rows).
///
/// Built once by [`Blocks::split`]; its arrays are owned and never change,
/// so the views it gives the kernels are checked once, when it is built.
#[derive(Clone, Debug)]
pub struct Blocks<I, T> {
    nrows: usize,
    own: Range<usize>,
    diag_ptr: Vec<I>,
    diag_idx: Vec<I>,
    diag_val: Vec<T>,
    /// The local rows that hold ghost entries, increasing.
    off_rows: Vec<I>,
    off_ptr: Vec<I>,
    off_idx: Vec<I>,
    off_val: Vec<T>,
    /// The ghost columns (global indices), increasing.
    ghosts: Vec<usize>,
}

impl<I: Index, T: Scalar> Blocks<I, T> {
    /// Splits `rows` (a CSR block of rows whose column indices are global)
    /// into the columns `own` and the others. The blocks' index type `I`
    /// need not be the source's `J`: it must hold the part's rows, stored
    /// entries and columns ([`Blocks::fits`]; `u32` almost always does, and
    /// reads faster than `u64`).
    ///
    /// # Panics
    /// If `own` is not within the columns, or `I` does not fit.
    pub fn split<J: Index>(rows: SparseView<'_, J, T>, own: Range<usize>) -> Self {
        assert!(Self::fits(rows), "Blocks::split: the part's sizes do not fit the index type");
        assert_eq!(rows.format(), Format::Csr, "Blocks::split takes a CSR block of rows");
        let ncols = rows.ncols();
        assert!(own.start <= own.end && own.end <= ncols, "Blocks::split: own columns {own:?} not within 0..{ncols}");
        let nrows = rows.nrows();
        let entries = |r: usize| rows.outer_entries(r);
        // Pass 1: the ghosts, and the entries of each block per row.
        let mut ghosts = Vec::new();
        let (mut ndiag, mut noff_rows) = (0usize, 0usize);
        for r in 0..nrows {
            let (idx, _) = entries(r);
            let before = ghosts.len();
            for &c in idx {
                let c = c.zx();
                if own.contains(&c) {
                    ndiag += 1;
                } else {
                    ghosts.push(c);
                }
            }
            noff_rows += usize::from(ghosts.len() > before);
        }
        let noff = ghosts.len();
        ghosts.sort_unstable();
        ghosts.dedup();
        ghosts.shrink_to_fit();
        // Pass 2: fill both blocks.
        let mut diag_ptr = Vec::with_capacity(nrows + 1);
        let (mut diag_idx, mut diag_val) = (Vec::with_capacity(ndiag), Vec::with_capacity(ndiag));
        let mut off_rows = Vec::with_capacity(noff_rows);
        let mut off_ptr = Vec::with_capacity(noff_rows + 1);
        let (mut off_idx, mut off_val) = (Vec::with_capacity(noff), Vec::with_capacity(noff));
        diag_ptr.push(I::truncate(0));
        off_ptr.push(I::truncate(0));
        for r in 0..nrows {
            let (idx, val) = entries(r);
            let before = off_idx.len();
            for (&c, &v) in idx.iter().zip(val) {
                let c = c.zx();
                if own.contains(&c) {
                    diag_idx.push(I::truncate(c - own.start));
                    diag_val.push(v);
                } else {
                    let slot = ghosts.binary_search(&c).expect("every ghost was listed in the first pass");
                    off_idx.push(I::truncate(slot));
                    off_val.push(v);
                }
            }
            diag_ptr.push(I::truncate(diag_idx.len()));
            if off_idx.len() > before {
                off_rows.push(I::truncate(r));
                off_ptr.push(I::truncate(off_idx.len()));
            }
        }
        Blocks { nrows, own, diag_ptr, diag_idx, diag_val, off_rows, off_ptr, off_idx, off_val, ghosts }
    }

    /// Whether `I` can index the blocks of `rows` (its rows, columns and
    /// stored entries).
    pub fn fits<J: Index>(rows: SparseView<'_, J, T>) -> bool {
        let max = I::MAX.zx();
        rows.nrows() <= max && rows.ncols() <= max && rows.nnz() <= max
    }

    /// The diagonal block: every row of the part, its own columns numbered
    /// from 0 (`nrows × own.len()`).
    pub fn diag(&self) -> SparseView<'_, I, T> {
        // SAFETY: `split` built these arrays itself: `nrows + 1` offsets from 0,
        // non-decreasing (pushed after each row), ending at `diag_idx.len() ==
        // diag_val.len()`, and every index is `c - own.start` for a column `c` in
        // `own`, so below `own.len()`. The fields are private and never changed
        // after `split`. (Indices and offsets fit `I`, checked by `fits`: they are
        // at most the part's stored entries, rows or columns.)
        unsafe {
            SparseView::prechecked(
                Format::Csr,
                (self.nrows, self.own.len()),
                &self.diag_ptr,
                &self.diag_idx,
                &self.diag_val,
            )
        }
    }

    /// The off-diagonal block: the rows of [`off_rows`](Self::off_rows)
    /// only, its columns the ghosts, numbered by their place in
    /// [`ghosts`](Self::ghosts) (`off_rows().len() × ghosts().len()`).
    pub fn off(&self) -> SparseView<'_, I, T> {
        // SAFETY: as `diag`: `off_rows.len() + 1` offsets from 0, pushed in
        // order, ending at `off_idx.len() == off_val.len()`; every index is a
        // position in `ghosts` (a binary search's hit). Private, never changed.
        unsafe {
            SparseView::prechecked(
                Format::Csr,
                (self.off_rows.len(), self.ghosts.len()),
                &self.off_ptr,
                &self.off_idx,
                &self.off_val,
            )
        }
    }

    /// The part's rows that hold ghost entries (increasing, below
    /// [`nrows`](Self::nrows)): the rows of [`off`](Self::off).
    pub fn off_rows(&self) -> &[I] {
        &self.off_rows
    }

    /// The ghost columns, as global column indices, increasing.
    pub fn ghosts(&self) -> &[usize] {
        &self.ghosts
    }

    /// The number of rows of the part.
    pub fn nrows(&self) -> usize {
        self.nrows
    }

    /// The columns the part owns.
    pub fn own(&self) -> Range<usize> {
        self.own.clone()
    }

    /// The stored entries of the diagonal and the off-diagonal block.
    pub fn nnz(&self) -> (usize, usize) {
        (self.diag_idx.len(), self.off_idx.len())
    }
}

/// What one part of a split exchanges in a product (see the [module
/// docs](self)): the parts it receives ghost entries from and sends its
/// entries to, with how many entries each, per column of the operand.
/// Multiply by `k · size_of::<T>()` for the bytes of a product with `k`
/// columns ([`HaloStats::bytes_received`]). The adjoint product sends and
/// receives the same volumes the other way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HaloStats {
    /// The part's number.
    pub part: usize,
    /// Its rows of the matrix.
    pub rows: usize,
    /// Its entries of the operand (columns of the matrix it owns).
    pub cols: usize,
    /// Stored entries in its diagonal and off-diagonal blocks.
    pub nnz: (usize, usize),
    /// Its ghosts: the entries it receives.
    pub ghosts: usize,
    /// `(part, entries)` it receives from, by increasing part.
    pub recv_from: Vec<(usize, usize)>,
    /// `(part, entries)` it sends to, by increasing part.
    pub send_to: Vec<(usize, usize)>,
}

impl HaloStats {
    /// The entries it sends per column (the sum over [`send_to`](Self::send_to)).
    pub fn sent(&self) -> usize {
        self.send_to.iter().map(|s| s.1).sum()
    }

    /// Bytes received per product of `k` columns of `elem` bytes each.
    pub fn bytes_received(&self, k: usize, elem: usize) -> usize {
        self.ghosts * k * elem
    }

    /// Bytes sent per product of `k` columns of `elem` bytes each.
    pub fn bytes_sent(&self, k: usize, elem: usize) -> usize {
        self.sent() * k * elem
    }

    /// The parts it exchanges with, either way.
    pub fn neighbours(&self) -> usize {
        let mut all: Vec<usize> = self.recv_from.iter().chain(&self.send_to).map(|s| s.0).collect();
        all.sort_unstable();
        all.dedup();
        all.len()
    }
}

/// The part that owns index `i` of a split given by its `offsets` (part
/// `r` owns `offsets[r]..offsets[r + 1]`).
pub(crate) fn owner(offsets: &[usize], i: usize) -> usize {
    offsets.partition_point(|&o| o <= i) - 1
}

/// `(part, entries)` of sorted `ghosts` by their owner in `col_offsets`.
pub(crate) fn by_owner(col_offsets: &[usize], ghosts: &[usize]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &g in ghosts {
        let q = owner(col_offsets, g);
        match out.last_mut() {
            Some((last, n)) if *last == q => *n += 1,
            _ => out.push((q, 1)),
        }
    }
    out
}

/// The exchange of every part of a split, in one process: part `r` owns
/// rows `row_offsets[r]..row_offsets[r + 1]` and operand entries
/// `col_offsets[r]..col_offsets[r + 1]` (both with `p + 1` offsets from 0);
/// `row(i, cols)` appends the column indices of global row `i` to `cols`.
/// Parts run on rayon's threads; each holds only its own ghosts.
///
/// # Panics
/// If the offsets do not have the same length, do not start at 0 or
/// decrease, or a column index is not below the last column offset.
pub fn stats(
    row_offsets: &[usize],
    col_offsets: &[usize],
    row: impl Fn(usize, &mut Vec<usize>) + Sync,
) -> Vec<HaloStats> {
    for (what, o) in [("row", row_offsets), ("column", col_offsets)] {
        assert!(!o.is_empty() && o[0] == 0, "halo::stats: {what} offsets must start at 0");
        assert!(o.windows(2).all(|w| w[0] <= w[1]), "halo::stats: {what} offsets decrease");
    }
    assert_eq!(row_offsets.len(), col_offsets.len(), "halo::stats: as many row parts as column parts");
    let p = row_offsets.len() - 1;
    let n = col_offsets[p];
    let mut all: Vec<HaloStats> = (0..p)
        .into_par_iter()
        .map(|r| {
            let own = col_offsets[r]..col_offsets[r + 1];
            let (mut ghosts, mut cols) = (Vec::new(), Vec::new());
            let (mut diag, mut off) = (0, 0);
            for i in row_offsets[r]..row_offsets[r + 1] {
                cols.clear();
                row(i, &mut cols);
                for &c in &cols {
                    assert!(c < n, "halo::stats: row {i} has column {c}, not below {n}");
                    if own.contains(&c) {
                        diag += 1;
                    } else {
                        off += 1;
                        ghosts.push(c);
                    }
                }
            }
            ghosts.sort_unstable();
            ghosts.dedup();
            HaloStats {
                part: r,
                rows: row_offsets[r + 1] - row_offsets[r],
                cols: own.len(),
                nnz: (diag, off),
                ghosts: ghosts.len(),
                recv_from: by_owner(col_offsets, &ghosts),
                send_to: Vec::new(),
            }
        })
        .collect();
    for r in 0..p {
        for i in 0..all[r].recv_from.len() {
            let (q, n) = all[r].recv_from[i];
            all[q].send_to.push((r, n));
        }
    }
    all
}

/// [`stats`] for a scipy sparse file split over `parts` as
/// `mpi::MpiLop` (feature `mpi`) splits it: a CSR file by rows and a CSC file by
/// columns, in blocks of about equal numbers of stored entries, the other
/// dimension (the vectors' split on the other side) the same blocks for a
/// square matrix and even blocks otherwise. For a CSC file, "rows" are the
/// matrix's columns (the parts own columns) and "columns" its rows. Reads
/// the whole `indptr` and `indices` once.
///
/// # Errors
/// The file's errors, as [`SparseNpz::indptr`] and [`SparseNpz::part`]
/// give them.
pub fn stats_of_file(npz: &SparseNpz, parts: usize) -> Result<Vec<HaloStats>, NpzError> {
    fn with<I: SparseIndex>(npz: &SparseNpz, parts: usize) -> Result<Vec<HaloStats>, NpzError> {
        let major: Vec<_> = npz.split::<I>(parts)?.into_iter().map(|(r, _)| r).collect();
        let major_offsets = offsets_of(&major);
        let minor_offsets = other_offsets(&major_offsets, npz.major(), npz.minor());
        match npz.dtype() {
            Dtype::Float32 => of_part::<f32, I>(npz, &major_offsets, &minor_offsets),
            Dtype::Float64 => of_part::<f64, I>(npz, &major_offsets, &minor_offsets),
            Dtype::Complex64 => of_part::<faer::c32, I>(npz, &major_offsets, &minor_offsets),
            Dtype::Complex128 => of_part::<faer::c64, I>(npz, &major_offsets, &minor_offsets),
        }
    }
    fn of_part<T: Scalar, I: SparseIndex>(
        npz: &SparseNpz,
        major_offsets: &[usize],
        minor_offsets: &[usize],
    ) -> Result<Vec<HaloStats>, NpzError> {
        let all = npz.part::<T, I>(0..npz.major())?;
        let view = all.view();
        Ok(stats(major_offsets, minor_offsets, |i, cols| {
            cols.extend(view.outer_entries(i).0.iter().map(|c| c.zx()));
        }))
    }
    match npz.index_dtype() {
        IndexDtype::Int32 => with::<u32>(npz, parts),
        IndexDtype::Int64 => with::<u64>(npz, parts),
    }
}

/// The `p + 1` offsets of contiguous ranges covering `0..n` in order.
pub(crate) fn offsets_of(ranges: &[Range<usize>]) -> Vec<usize> {
    let mut o = Vec::with_capacity(ranges.len() + 1);
    o.push(0);
    o.extend(ranges.iter().map(|r| r.end));
    o
}

/// The split of the other dimension (`minor` long) of a matrix whose
/// `major` dimension is split by `major_offsets`: the same for a square
/// matrix (so that a product's result can be its next operand), even
/// blocks ([`crate::parallel::split::block`]) otherwise.
pub(crate) fn other_offsets(major_offsets: &[usize], major: usize, minor: usize) -> Vec<usize> {
    let p = major_offsets.len() - 1;
    if major == minor {
        major_offsets.to_vec()
    } else {
        let mut o = vec![0];
        o.extend((0..p).map(|r| crate::parallel::split::block(minor, p, r).end));
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_every_entry_in_one_block() {
        // Rows 2..5 of a 6×8 matrix, owning columns 3..6; row 2 repeats column 0.
        let ptr = [0usize, 3, 4, 7];
        let idx = [0usize, 3, 7, 4, 0, 0, 5];
        let val = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        let b = Blocks::<u32, f64>::split(SparseView::csr(3, 8, &ptr, &idx, &val).unwrap(), 3..6);
        assert_eq!(b.ghosts(), &[0, 7]);
        assert_eq!(b.off_rows(), &[0, 2]);
        assert_eq!(b.nnz(), (3, 4));
        let d = faer::Mat::from_fn(3, 3, |i, j| {
            let (idx, val) = b.diag().outer_entries(i);
            idx.iter().zip(val).filter(|e| *e.0 as usize == j).map(|e| *e.1).sum::<f64>()
        });
        assert_eq!(d, faer::mat![[2.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 7.0]]);
        let (idx, val) = b.off().outer_entries(1);
        assert_eq!((idx, val), (&[0u32, 0][..], &[5.0, 6.0][..]));
    }

    #[test]
    fn stats_of_a_path_graph() {
        // Tridiagonal 6×6 in 3 parts of 2: each inner part has two neighbours.
        let offsets = [0, 2, 4, 6];
        let s = stats(&offsets, &offsets, |i, cols| {
            cols.extend(i.saturating_sub(1)..(i + 2).min(6));
        });
        assert_eq!(s[0].recv_from, vec![(1, 1)]);
        assert_eq!(s[1].recv_from, vec![(0, 1), (2, 1)]);
        assert_eq!(s[1].send_to, vec![(0, 1), (2, 1)]);
        assert_eq!(s[2].ghosts, 1);
        assert_eq!(s[1].nnz, (4, 2));
        assert_eq!(s[1].neighbours(), 2);
        assert_eq!(s[1].bytes_received(3, 8), 48);
    }
}
