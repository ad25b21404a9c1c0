//! [`DistMat`]: a multi-vector whose rows are distributed over the ranks
//! of a [`Layout`], and its views [`DistMatRef`] and [`DistMatMut`].

use core::fmt;
use std::path::Path;

use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::linalg::matmul::matmul;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::traits::math_utils::{add, from_f64, mul, one, zero};
use faer::{Accum, Mat, MatMut, MatRef, Par, unzip, zip};
use mpi::collective::SystemOperation;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

use super::collective::{Fault, Pieces, caught, gather, scatter, temp_slice, temp_slice_scratch, verify_crc};
use super::layout::Layout;
use crate::Scalar;
use crate::npz::NpzMatrix;
use crate::parallel::{DEFAULT_MAX_MESSAGE_BYTES, Error, Gather};

/// A distributed `n × k` matrix (a block of `k` vectors): the rows of rank
/// `r` are [`layout.range(r)`](Layout::range), held on rank `r` only, as a
/// row-major block (each row's `k` entries side by side: what the sparse
/// kernels and MPI messages read best, and the order a numpy `.npy` file in
/// C order stores, so that a rank's rows are one contiguous piece of the
/// file). [`local`](DistMat::local) and [`local_mut`](DistMat::local_mut)
/// give it as a faer view; all of faer works on it.
///
/// - Made without communication: [`zeros`](DistMat::zeros),
///   [`from_fn`](DistMat::from_fn) (a function of the global row),
///   [`from_full`](DistMat::from_full) (every rank has the whole matrix and
///   keeps its rows); collectively: [`scatter`](DistMat::scatter) (the whole
///   matrix on one rank), [`read_npz`](DistMat::read_npz) (each rank reads
///   only its rows of a `.npz` member).
/// - Given back whole, collectively: [`gather`](DistMat::gather) (to one
///   rank or every rank).
/// - Reductions, collective, one allreduce for all `k` columns:
///   [`norms`](DistMatRef::norms_into), [`dots`](DistMatRef::dots_into) and
///   the `k₁ × k₂` Gram matrix [`gram`](DistMatRef::gram_into) `Xᴴ·Y`.
/// - Local updates, no communication: [`scale`](DistMatMut::scale),
///   [`axpby`](DistMatMut::axpby), [`copy_from`](DistMatMut::copy_from),
///   [`fill_zero`](DistMatMut::fill_zero), or any faer operation on
///   [`local_mut`](DistMat::local_mut).
///
/// The views ([`as_ref`](DistMat::as_ref), [`as_mut`](DistMat::as_mut),
/// [`DistMatRef::new`] over any local view, e.g. of scratch) carry the same
/// operations, so products and solvers take their temporaries from a
/// `MemStack` and allocate nothing.
///
/// Every collective call (and every product on it) must be made on every
/// rank of the layout, in the same order, from the thread that made the
/// layout's communicator (see [the module docs](super)); operands of
/// different layouts or column counts are the same [`Error`] on every rank.
pub struct DistMat<T> {
    layout: Layout,
    ncols: usize,
    /// The local rows, row-major, `local_len · ncols` entries.
    data: Vec<T>,
}

/// A view of a [`DistMat`] (or of any local rows with a [`Layout`]): the
/// layout and this rank's rows.
#[derive(Copy, Clone)]
pub struct DistMatRef<'a, T> {
    layout: &'a Layout,
    local: MatRef<'a, T>,
}

/// A mutable view of a [`DistMat`] (or of any local rows with a
/// [`Layout`]): the layout and this rank's rows.
pub struct DistMatMut<'a, T> {
    layout: &'a Layout,
    local: MatMut<'a, T>,
}

impl<T> fmt::Debug for DistMat<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DistMat").field("layout", &self.layout).field("ncols", &self.ncols).finish_non_exhaustive()
    }
}
impl<T> fmt::Debug for DistMatRef<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DistMatRef").field("layout", self.layout).field("ncols", &self.local.ncols()).finish()
    }
}
impl<T> fmt::Debug for DistMatMut<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DistMatMut").field("layout", self.layout).field("ncols", &self.local.ncols()).finish()
    }
}

#[track_caller]
fn check_local(layout: &Layout, nrows: usize, what: &str) {
    assert!(
        nrows == layout.local_len(),
        "lazylinop: {what}: this rank's rows are {nrows}, but the layout gives rank {} {} rows ({}..{} of {})",
        layout.rank(),
        layout.local_len(),
        layout.local_range().start,
        layout.local_range().end,
        layout.len(),
    );
}

impl<T: Scalar> DistMat<T> {
    /// Zeros, `k` columns. No communication.
    pub fn zeros(layout: &Layout, k: usize) -> Self {
        DistMat { layout: layout.clone(), ncols: k, data: vec![zero::<T>(); layout.local_len() * k] }
    }

    /// Entry `(i, j)` is `f(i, j)`, `i` the *global* row: the same function
    /// on every rank gives one distributed matrix. No communication.
    pub fn from_fn(layout: &Layout, k: usize, mut f: impl FnMut(usize, usize) -> T) -> Self {
        let rows = layout.local_range();
        let mut data = Vec::with_capacity(rows.len() * k);
        for i in rows {
            data.extend((0..k).map(|j| f(i, j)));
        }
        DistMat { layout: layout.clone(), ncols: k, data }
    }

    /// This rank's rows of `full`, the whole matrix (the same on every
    /// rank). No communication.
    ///
    /// # Panics
    /// If `full` does not have the layout's number of rows.
    #[track_caller]
    pub fn from_full(layout: &Layout, full: MatRef<'_, T>) -> Self {
        assert!(
            full.nrows() == layout.len(),
            "lazylinop: DistMat::from_full: the matrix is {}×{}, but the layout has {} rows",
            full.nrows(),
            full.ncols(),
            layout.len()
        );
        let rows = layout.local_range();
        let mut out = DistMat::zeros(layout, full.ncols());
        out.local_mut().copy_from(full.subrows(rows.start, rows.len()));
        out
    }

    /// The whole matrix `full`, given on rank `root` only (`None`
    /// elsewhere), each rank receiving its rows. Collective.
    ///
    /// # Errors
    /// On every rank: [`Error::Rank`] if `root` has no matrix or one with
    /// another number of rows than the layout's, or another rank passed a
    /// matrix; [`Error::Mpi`] if the ranks give different `root`s.
    pub fn scatter(layout: &Layout, root: usize, full: Option<MatRef<'_, T>>) -> Result<Self, Error> {
        let rank = layout.rank();
        let fault = match (rank == root, full) {
            (true, None) => Some(Fault::new(format!("DistMat::scatter: the root, rank {root}, has no matrix"))),
            (true, Some(f)) if f.nrows() != layout.len() => Some(Fault::new(format!(
                "DistMat::scatter: the matrix is {}×{}, but the layout has {} rows",
                f.nrows(),
                f.ncols(),
                layout.len()
            ))),
            (false, Some(_)) => Some(Fault::new(format!(
                "DistMat::scatter: rank {rank} passed a matrix, but only the root (rank {root}) may"
            ))),
            _ => None,
        };
        let root_ok = root < layout.size();
        let fault = fault.or_else(|| (!root_ok).then(|| Fault::new(format!("DistMat::scatter: no rank {root}"))));
        let settings = [("the root", root as u64), ("the layout (a hash of its offsets)", layout.hash())];
        layout.comm().collective(&settings, fault, |s| {
            let mut k = full.map_or(0, |f| f.ncols() as u64);
            s.mpi(|c| c.process_at_rank(root as i32).broadcast_into(&mut k));
            let k = k as usize;
            let max = DEFAULT_MAX_MESSAGE_BYTES / size_of::<T>();
            let mut out = DistMat::zeros(layout, k);
            let len = |r: usize| layout.range(r).len() * k;
            if rank == root {
                let full = full.expect("checked");
                // Row-major, one rank's rows at a time (they are each a contiguous piece).
                s.mpi(|c| {
                    scatter(c, root, len, max, |r, piece| {
                        let rows = layout.range(r);
                        MatMut::from_row_major_slice_mut(piece, rows.len(), k)
                            .copy_from(full.subrows(rows.start, rows.len()));
                    })
                });
                let rows = layout.local_range();
                out.local_mut().copy_from(full.subrows(rows.start, rows.len()));
            } else {
                s.mpi(|c| super::collective::receive_piece(c, root, &mut out.data, max));
            }
            Ok(out)
        })
    }

    /// Member `member` of the `.npz` file at `path` (`None`: its first
    /// array), an `n × k` array with `n` the layout's length: each rank maps
    /// the file and reads only its own rows (a C-order member stores them as
    /// one contiguous piece); the member's CRC-32 is verified, each rank
    /// checksumming its share. Collective.
    ///
    /// # Errors
    /// [`Error::Rank`] on every rank, with the path and the reason, if any
    /// rank cannot read the file or the member has another dtype than `T`
    /// or another number of rows than the layout, or is damaged;
    /// [`Error::Mpi`] if the ranks read members of different shapes.
    pub fn read_npz(layout: &Layout, path: impl AsRef<Path>, member: Option<&str>) -> Result<Self, Error> {
        let path = path.as_ref();
        let settings = [("the layout (a hash of its offsets)", layout.hash())];
        layout.comm().collective(&settings, None, |s| {
            let opened = caught("reading the file", || {
                let npz = NpzMatrix::open(path, member)?;
                if npz.shape().0 != layout.len() {
                    return Err(Fault::new(format!(
                        "{}: member {} is {}×{}, but the layout has {} rows",
                        path.display(),
                        npz.member(),
                        npz.shape().0,
                        npz.shape().1,
                        layout.len()
                    )));
                }
                Ok(npz)
            });
            let npz = s.outcome(opened)?;
            let (n, k) = npz.shape();
            s.agree(&[("the member's columns", k as u64)], None)?;
            let span = npz.crc_span();
            let rows = layout.local_range();
            // Each rank checksums its rows' bytes in a C-order member (rank 0 the header too),
            // even shares otherwise.
            let c_order = npz.order() == crate::npz::Order::C;
            let at = |r: usize| match span {
                Some(span) if c_order && r < layout.size() => {
                    span - ((n - layout.offsets()[r]) * k * size_of::<T>()) as u64
                }
                Some(span) if c_order => span,
                Some(span) => (u128::from(span) * r as u128 / layout.size() as u128) as u64,
                None => 0,
            };
            let at = |r: usize| if r == 0 { 0 } else { at(r) };
            verify_crc(s, span, |r| at(r)..at(r + 1), |range| npz.crc32_of(range), |parts| npz.verify_crc(parts))?;
            let read = caught("reading the file", || {
                let mut out = DistMat::zeros(layout, k);
                match npz.view_rows::<T>(rows.clone())? {
                    Some(view) => out.local_mut().copy_from(view),
                    None => out.local_mut().copy_from(npz.read_rows::<T>(rows)?),
                }
                Ok(out)
            });
            s.outcome(read)
        })
    }

    /// Writes the matrix as member `member` of a new `.npz` file at `path`
    /// (numpy reads it with `np.load`; [`read_npz`](Self::read_npz) reads it
    /// back, each rank its rows): stored, in C order, so that each rank's rows
    /// are one contiguous piece of it. Rank 0 writes the file, receiving the
    /// other ranks' rows one block at a time (in messages of at most 1 GiB):
    /// no rank holds the whole matrix. Atomic, as [`npz::save`](crate::npz::save).
    /// Collective.
    ///
    /// # Errors
    /// [`Error::Rank`] on every rank if rank 0 cannot write the file (its
    /// [`NpzError`](crate::npz::NpzError) as the source on rank 0).
    pub fn save_npz(&self, path: impl AsRef<Path>, member: &str) -> Result<(), Error> {
        let (layout, k, path) = (&self.layout, self.ncols, path.as_ref());
        let settings = [("the number of columns", k as u64), ("the layout (a hash of its offsets)", layout.hash())];
        layout.comm().collective(&settings, None, |s| {
            let max = DEFAULT_MAX_MESSAGE_BYTES / size_of::<T>();
            if s.rank() != 0 {
                s.mpi(|c| {
                    let root = c.process_at_rank(0);
                    for chunk in self.data.chunks(max) {
                        mpi::point_to_point::Destination::send(&root, chunk);
                    }
                });
                return s.outcome(Ok(()));
            }
            // Every block is received, even when the file cannot be written: the
            // other ranks are sending them.
            let receive_all = |mut w: Option<&mut dyn std::io::Write>| -> std::io::Result<()> {
                let mut result = w.as_mut().map_or(Ok(()), |w| w.write_all(bytemuck::cast_slice(&self.data)));
                let widest = (1..layout.size()).map(|r| layout.range(r).len() * k).max().unwrap_or(0);
                let mut piece = vec![zero::<T>(); widest.min(max)];
                for r in 1..layout.size() {
                    let mut left = layout.range(r).len() * k;
                    while left > 0 {
                        let chunk = &mut piece[..left.min(max)];
                        s.mpi(|c| mpi::point_to_point::Source::receive_into(&c.process_at_rank(r as i32), chunk));
                        if let (Ok(()), Some(w)) = (&result, w.as_mut()) {
                            result = w.write_all(bytemuck::cast_slice(chunk));
                        }
                        left -= chunk.len();
                    }
                }
                result
            };
            let mut received = false;
            let written = crate::npz::save_rows::<T>(path, member, (layout.len(), k), |w| {
                received = true;
                receive_all(Some(w))
            });
            if !received {
                let _ = receive_all(None);
            }
            let written = written.map_err(Fault::from);
            s.outcome(written)
        })
    }

    /// The layout of the rows.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The global number of rows.
    pub fn nrows(&self) -> usize {
        self.layout.len()
    }

    /// The number of columns.
    pub fn ncols(&self) -> usize {
        self.ncols
    }

    /// This rank's rows (row-major).
    pub fn local(&self) -> MatRef<'_, T> {
        MatRef::from_row_major_slice(&self.data, self.layout.local_len(), self.ncols)
    }

    /// This rank's rows (row-major), mutable.
    pub fn local_mut(&mut self) -> MatMut<'_, T> {
        MatMut::from_row_major_slice_mut(&mut self.data, self.layout.local_len(), self.ncols)
    }

    /// The view.
    pub fn as_ref(&self) -> DistMatRef<'_, T> {
        DistMatRef { layout: &self.layout, local: self.local() }
    }

    /// The mutable view.
    pub fn as_mut(&mut self) -> DistMatMut<'_, T> {
        let local = MatMut::from_row_major_slice_mut(&mut self.data, self.layout.local_len(), self.ncols);
        DistMatMut { layout: &self.layout, local }
    }

    /// The whole matrix on rank 0 ([`Gather::Root`]: `None` elsewhere) or
    /// on every rank ([`Gather::All`]). Collective.
    ///
    /// # Errors
    /// [`Error::Mpi`] on every rank if the ranks ask for different
    /// `to`, or have different column counts or layouts.
    pub fn gather(&self, to: Gather) -> Result<Option<Mat<T>>, Error> {
        self.as_ref().gather(to)
    }
}

impl<T: Scalar> Clone for DistMat<T> {
    fn clone(&self) -> Self {
        DistMat { layout: self.layout.clone(), ncols: self.ncols, data: self.data.clone() }
    }
}

impl<'a, T: Scalar> DistMatRef<'a, T> {
    /// `local` (this rank's rows) distributed as `layout`.
    ///
    /// # Panics
    /// If `local` does not have the layout's number of rows for this rank.
    #[track_caller]
    pub fn new(layout: &'a Layout, local: MatRef<'a, T>) -> Self {
        check_local(layout, local.nrows(), "DistMatRef::new");
        DistMatRef { layout, local }
    }

    /// The layout of the rows.
    pub fn layout(&self) -> &'a Layout {
        self.layout
    }

    /// This rank's rows.
    pub fn local(&self) -> MatRef<'a, T> {
        self.local
    }

    /// The global number of rows.
    pub fn nrows(&self) -> usize {
        self.layout.len()
    }

    /// The number of columns.
    pub fn ncols(&self) -> usize {
        self.local.ncols()
    }

    /// Columns `start..start + n`.
    ///
    /// # Panics
    /// If they are not within the columns.
    #[track_caller]
    pub fn subcols(self, start: usize, n: usize) -> Self {
        DistMatRef { layout: self.layout, local: self.local.subcols(start, n) }
    }

    /// A copy.
    pub fn to_owned(&self) -> DistMat<T> {
        let mut out = DistMat::zeros(self.layout, self.ncols());
        out.local_mut().copy_from(self.local);
        out
    }

    /// See [`DistMat::gather`].
    ///
    /// # Errors
    /// As [`DistMat::gather`].
    pub fn gather(&self, to: Gather) -> Result<Option<Mat<T>>, Error> {
        let (layout, k) = (self.layout, self.ncols());
        let settings = [
            ("gather (0 Root, 1 All)", u64::from(to == Gather::All)),
            ("the number of columns", k as u64),
            ("the layout (a hash of its offsets)", layout.hash()),
        ];
        layout.comm().collective(&settings, None, |s| {
            let receives = to == Gather::All || s.rank() == 0;
            let max = DEFAULT_MAX_MESSAGE_BYTES / size_of::<T>();
            let len = |r: usize| layout.range(r).len() * k;
            let mut buf = vec![zero::<T>(); if receives { layout.len() * k } else { layout.local_len() * k }];
            let mine = layout.local_range();
            let at = if receives { mine.start * k } else { 0 };
            MatMut::from_row_major_slice_mut(&mut buf[at..at + mine.len() * k], mine.len(), k).copy_from(self.local);
            if receives {
                s.mpi(|c| gather(c, to, len, Pieces::All(&mut buf), max));
                Ok(Some(MatRef::from_row_major_slice(&buf, layout.len(), k).to_owned()))
            } else {
                s.mpi(|c| gather(c, to, len, Pieces::Mine(&buf), max));
                Ok(None)
            }
        })
    }

    /// Scratch of [`norms_into`](Self::norms_into), [`dots_into`](Self::dots_into)
    /// and [`gram_into`](Self::gram_into) with `k₁ × k₂` results (`k₂ = 1`
    /// for norms and dots).
    pub fn reduce_scratch(k1: usize, k2: usize) -> StackReq {
        StackReq::any_of(&[
            temp_slice_scratch::<T>(k1 * k2).and(temp_slice_scratch::<T>(k1 * k2)),
            temp_slice_scratch::<f64>(2 * k1),
        ])
    }

    /// The 2-norm of each column, in `out` (`k` entries), on every rank: one
    /// allreduce (of the squares of the local norms, in `f64`: no overflow
    /// for `f32` data, and for `f64` only above `1e154`, as PETSc's).
    /// Collective.
    ///
    /// # Errors
    /// [`Error::Mpi`] on every rank if the ranks have different column counts or layouts.
    ///
    /// # Panics
    /// If `out.len()` is not the number of columns.
    pub fn norms_into(&self, out: &mut [T::Real], stack: &mut MemStack) -> Result<(), Error> {
        let k = self.ncols();
        assert_eq!(out.len(), k, "lazylinop: norms_into: {} outputs for {k} columns", out.len());
        let (buf, _) = temp_slice::<f64>(2 * k, stack);
        let (mine, all) = buf.split_at_mut(k);
        for (j, m) in mine.iter_mut().enumerate() {
            let v = T::real_to_f64(self.local.col(j).norm_l2());
            *m = v * v;
        }
        self.reduce(k, |c| c.all_reduce_into(&mine[..], &mut all[..], SystemOperation::sum()))?;
        for (o, a) in out.iter_mut().zip(all.iter()) {
            *o = from_f64::<T::Real>(a.sqrt());
        }
        Ok(())
    }

    /// `xⱼᴴ·yⱼ` for each column `j` of `self` (`x`) and `other` (`y`), in
    /// `out`, on every rank: one allreduce. Collective.
    ///
    /// # Errors
    /// As [`norms_into`](Self::norms_into), or if `other` has another layout.
    ///
    /// # Panics
    /// If the column counts or `out.len()` differ.
    pub fn dots_into(&self, other: DistMatRef<'_, T>, out: &mut [T], stack: &mut MemStack) -> Result<(), Error> {
        let k = self.ncols();
        assert!(
            other.ncols() == k && out.len() == k,
            "lazylinop: dots_into: {k} and {} columns, {} outputs",
            other.ncols(),
            out.len()
        );
        let (mine, _) = temp_slice::<T>(k, stack);
        for (j, m) in mine.iter_mut().enumerate() {
            let d = MatMut::from_column_major_slice_mut(core::slice::from_mut(m), 1, 1);
            let (x, y) = (self.local.subcols(j, 1), other.local.subcols(j, 1));
            matmul(d, Accum::Replace, x.adjoint(), y, one::<T>(), Par::Seq);
        }
        let fault = self.layout.mismatch(other.layout, "the second operand");
        self.reduce_with(k, fault, |c| c.all_reduce_into(&mine[..], out, SystemOperation::sum()))
    }

    /// The `k₁ × k₂` Gram matrix `selfᴴ · other` in `out` (any strides), on
    /// every rank: one allreduce. Collective.
    ///
    /// # Errors
    /// As [`dots_into`](Self::dots_into).
    ///
    /// # Panics
    /// If `out` is not `k₁ × k₂`.
    pub fn gram_into(
        &self,
        other: DistMatRef<'_, T>,
        mut out: MatMut<'_, T>,
        par: Par,
        stack: &mut MemStack,
    ) -> Result<(), Error> {
        let (k1, k2) = (self.ncols(), other.ncols());
        assert!(
            out.nrows() == k1 && out.ncols() == k2,
            "lazylinop: gram_into: out is {}×{}, expected {k1}×{k2}",
            out.nrows(),
            out.ncols()
        );
        let (mine, stack) = temp_slice::<T>(k1 * k2, stack);
        let (all, _) = temp_slice::<T>(k1 * k2, stack);
        matmul(
            MatMut::from_column_major_slice_mut(&mut mine[..], k1, k2),
            Accum::Replace,
            self.local.adjoint(),
            other.local,
            one::<T>(),
            par,
        );
        let fault = self.layout.mismatch(other.layout, "the second operand");
        self.reduce_with(k1 * k2, fault, |c| c.all_reduce_into(&mine[..], &mut all[..], SystemOperation::sum()))?;
        out.copy_from(MatRef::from_column_major_slice(&all[..], k1, k2));
        Ok(())
    }

    fn reduce(&self, len: usize, f: impl FnOnce(&mpi::topology::SimpleCommunicator)) -> Result<(), Error> {
        self.reduce_with(len, None, f)
    }

    /// One collective reduction of `len` entries, agreed first.
    fn reduce_with(
        &self,
        len: usize,
        fault: Option<Fault>,
        f: impl FnOnce(&mpi::topology::SimpleCommunicator),
    ) -> Result<(), Error> {
        let settings =
            [("the reduction's length", len as u64), ("the layout (a hash of its offsets)", self.layout.hash())];
        self.layout.comm().collective(&settings, fault, |s| {
            s.mpi(f);
            Ok(())
        })
    }

    /// Allocating [`norms_into`](Self::norms_into).
    ///
    /// # Errors
    /// As [`norms_into`](Self::norms_into).
    pub fn norms(&self) -> Result<Vec<T::Real>, Error> {
        let k = self.ncols();
        let mut out = vec![zero::<T::Real>(); k];
        self.norms_into(&mut out, MemStack::new(&mut MemBuffer::new(Self::reduce_scratch(k, 1))))?;
        Ok(out)
    }

    /// Allocating [`dots_into`](Self::dots_into).
    ///
    /// # Errors
    /// As [`dots_into`](Self::dots_into).
    pub fn dots(&self, other: DistMatRef<'_, T>) -> Result<Vec<T>, Error> {
        let k = self.ncols();
        let mut out = vec![zero::<T>(); k];
        self.dots_into(other, &mut out, MemStack::new(&mut MemBuffer::new(Self::reduce_scratch(k, 1))))?;
        Ok(out)
    }

    /// Allocating [`gram_into`](Self::gram_into).
    ///
    /// # Errors
    /// As [`gram_into`](Self::gram_into).
    pub fn gram(&self, other: DistMatRef<'_, T>) -> Result<Mat<T>, Error> {
        let (k1, k2) = (self.ncols(), other.ncols());
        let mut out = Mat::zeros(k1, k2);
        self.gram_into(
            other,
            out.as_mut(),
            Par::Seq,
            MemStack::new(&mut MemBuffer::new(Self::reduce_scratch(k1, k2))),
        )?;
        Ok(out)
    }
}

impl<'a, T: Scalar> DistMatMut<'a, T> {
    /// `local` (this rank's rows) distributed as `layout`.
    ///
    /// # Panics
    /// If `local` does not have the layout's number of rows for this rank.
    #[track_caller]
    pub fn new(layout: &'a Layout, local: MatMut<'a, T>) -> Self {
        check_local(layout, local.nrows(), "DistMatMut::new");
        DistMatMut { layout, local }
    }

    /// The layout of the rows.
    pub fn layout(&self) -> &'a Layout {
        self.layout
    }

    /// This rank's rows.
    pub fn local(&self) -> MatRef<'_, T> {
        self.local.rb()
    }

    /// This rank's rows, mutable.
    pub fn local_mut(&mut self) -> MatMut<'_, T> {
        self.local.rb_mut()
    }

    /// The view, consumed into its local rows.
    pub fn into_local(self) -> MatMut<'a, T> {
        self.local
    }

    /// The number of columns.
    pub fn ncols(&self) -> usize {
        self.local.ncols()
    }

    /// A shorter-lived mutable view.
    pub fn rb_mut(&mut self) -> DistMatMut<'_, T> {
        DistMatMut { layout: self.layout, local: self.local.rb_mut() }
    }

    /// The read-only view.
    pub fn rb(&self) -> DistMatRef<'_, T> {
        DistMatRef { layout: self.layout, local: self.local.rb() }
    }

    /// Columns `start..start + n`.
    ///
    /// # Panics
    /// If they are not within the columns.
    #[track_caller]
    pub fn subcols_mut(self, start: usize, n: usize) -> Self {
        DistMatMut { layout: self.layout, local: self.local.subcols_mut(start, n) }
    }

    /// `self = 0`. Local.
    pub fn fill_zero(&mut self) {
        self.local.fill(zero::<T>());
    }

    /// `self *= alpha`. Local.
    pub fn scale(&mut self, alpha: T) {
        zip!(self.local.rb_mut()).for_each(|unzip!(x)| *x = mul(&alpha, x));
    }

    /// `self = other`. Local.
    ///
    /// # Panics
    /// If the layouts or shapes differ.
    #[track_caller]
    pub fn copy_from(&mut self, other: DistMatRef<'_, T>) {
        self.check_same(&other, "copy_from");
        self.local.copy_from(other.local);
    }

    /// `self = alpha · x + beta · self`. Local.
    ///
    /// # Panics
    /// If the layouts or shapes differ.
    #[track_caller]
    pub fn axpby(&mut self, alpha: T, x: DistMatRef<'_, T>, beta: T) {
        self.check_same(&x, "axpby");
        zip!(self.local.rb_mut(), x.local).for_each(|unzip!(y, x)| *y = add(&mul(&alpha, x), &mul(&beta, y)));
    }

    #[track_caller]
    fn check_same(&self, other: &DistMatRef<'_, T>, what: &str) {
        assert!(
            self.layout.offsets() == other.layout.offsets() && self.ncols() == other.ncols(),
            "lazylinop: DistMatMut::{what}: a {}×{} distributed matrix and a {}×{} one (or another layout)",
            self.layout.len(),
            self.ncols(),
            other.layout.len(),
            other.ncols()
        );
    }
}
