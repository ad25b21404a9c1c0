//! [`MpiLop`]: a distributed operator whose matrix lives in a `.npz` file,
//! dense (numpy) or sparse (scipy's `save_npz`), as Python lazylinop's
//! `MPILop`.

use std::ops::Range;
use std::path::{Path, PathBuf};

use faer::dyn_stack::{MemStack, StackReq};
use faer::matrix_free::BiLinOp;
use faer::reborrow::ReborrowMut;
use faer::{Mat, MatMut, MatRef, Par};
use mpi::traits::Communicator;

use super::collective::{
    Fault, Pieces, as_contiguous, broadcast, caught, gather, reduce_scatter, reduce_sum, temp_slice,
    temp_slice_scratch, verify_crc,
};
use super::comm::{Comm, Session};
use super::dist::{DistOp, agreement};
use super::distmat::{DistMat, DistMatMut, DistMatRef};
use super::halo::HaloMatrix;
use super::layout::Layout;
use crate::Scalar;
use crate::halo::{Blocks, HaloStats, offsets_of, other_offsets};
use crate::npz::{IndexDtype, NpzLayout, NpzMatrix, SparseIndex, SparseMember, SparseNpz, detect};
use crate::ops::{Mode, ModeOp, impl_bilinop};
use crate::parallel::{Error, Gather, MpiOptions, split};
use crate::sparse::Format;
use std::sync::Arc;

/// What this rank holds of the matrix.
#[derive(Debug)]
enum Local<T> {
    /// Dense rows: a zero-copy view into the file's map, taken again at each
    /// product.
    Mapped(NpzMatrix),
    /// Dense rows, copied (compressed, unaligned or big-endian data).
    Copied(Mat<T>),
    /// Sparse rows (CSR) or columns (CSC), split for the halo, 32-bit indices.
    Sparse32(HaloMatrix<T, u32>),
    /// The same with 64-bit indices (a part too large for 32).
    Sparse64(HaloMatrix<T, u64>),
}

/// Everything construction reads, agreed on every rank.
struct Opened<T> {
    local: Local<T>,
    parts: Vec<Range<usize>>,
    shape: (usize, usize),
    member: Option<String>,
    format: Option<Format>,
}

/// A matrix stored in a `.npz` file, distributed over the ranks of a
/// communicator: an `m × n` faer operator whose products run on every rank.
///
/// Each rank memory-maps the file and keeps only its own block of the
/// matrix; no rank holds the whole matrix unless it is alone. The file is
/// either of:
/// - **dense** (`np.save`/`np.savez` arrays): a block of rows (split as
///   [`split::block`] splits columns), a zero-copy strided view into the map
///   when the data is stored, aligned for `T` and in the machine's byte
///   order, otherwise a copy of its rows only (`np.savez` does not align
///   member data: expect the copy for `f64` and `c64`);
/// - **sparse** (`scipy.sparse.save_npz`, csr or csc, int32 or int64
///   indices, told from its members): a CSR file is split by rows, a CSC
///   file by columns, into contiguous blocks of about equal numbers of
///   stored entries ([`SparseNpz::split`]: a binary search in the file's
///   `indptr`). Each rank reads, checks and checksums only its share of
///   `indptr`, `indices` and `data` ([`SparseNpz::part`]: a view into the
///   map when the member is stored, aligned and native, as
///   [`save_sparse`](crate::npz::save_sparse) writes; a copy of the share
///   otherwise; a deflated member is streamed up to the end of the share),
///   and multiplies with the kernels of [`crate::sparse`].
///
/// The products follow the split: the rank's block times the operand gives
/// either a block of the output (rows of `L·X` for a row split, rows of
/// `Lᴴ·Y` for a column split), and the blocks are *gathered*, or a full-size
/// partial result from its block of the operand (`Lᴴ·Y` for a row split,
/// `L·X` for a column split), and the partial results are *summed* with a
/// reduce. The matrix is never distributed a second time.
/// - Operand: with `bcast_op`, it is broadcast from rank 0 (the other ranks'
///   operand only gives the shape); without it, each rank uses its own
///   (identical) operand.
/// - Result: on rank 0 or on every rank ([`MpiOptions::gather`]); with
///   [`Gather::Root`] (the default, as Python lazylinop) the other ranks'
///   output is not written.
/// - The local products use the `par` given to the product (faer's or the
///   sparse kernel's threads inside each rank).
///
/// Products are collective: every rank calls the same products in the same
/// order, with operands of the same shape and the same settings (checked: a
/// mismatch is the same error on every rank, not a hang); see [the module
/// docs](super) for threads and finalization.
///
/// # Examples
/// See `examples/mpilop.rs`, run with `mpirun -n 2`.
#[derive(Debug)]
pub struct MpiLop<T> {
    comm: Arc<Comm>,
    path: PathBuf,
    member: Option<String>,
    nrows: usize,
    ncols: usize,
    format: Option<Format>,
    /// Every rank's range of the split dimension: rows (dense, CSR) or
    /// columns (CSC).
    parts: Vec<Range<usize>>,
    row_layout: Layout,
    col_layout: Layout,
    local: Local<T>,
    bcast_op: bool,
    options: MpiOptions,
}

impl<T: Scalar> MpiLop<T> {
    /// Opens the `.npz` file at `path` on every rank of `comm`; each rank
    /// keeps its own block. A scipy sparse file (csr or csc) is told from
    /// its members; otherwise member `member` (`None`: the first array in
    /// the archive, as Python lazylinop) is read as a dense matrix.
    /// Collective: the operator works on its own duplicate of `comm`.
    /// Products use [`MpiOptions::default`]; see [`MpiLop::with_options`].
    ///
    /// `shape`, when given, is checked against the file. Every member read
    /// is checked against its CRC-32, each rank reading a share (see
    /// [`MpiLop::new_trusted`]).
    ///
    /// # Errors
    /// When any rank fails, every rank returns the same [`Error::Rank`],
    /// naming the lowest failing rank and, in its message, the path and the
    /// reason; on the failing rank its `source` is the typed
    /// [`NpzError`](crate::npz::NpzError). Reasons: the file missing on one rank, not a zip,
    /// truncated or damaged data (CRC-32), a dtype other than `T`'s; for a
    /// dense file a missing member, big-endian data that cannot be read, not
    /// a 2-D array, a header that lies about its size; for a sparse file a
    /// `member` given (a sparse file has none to choose), another scipy
    /// format than csr and csc (convert it with `.tocsr()`), a missing or
    /// ill-typed member, and any structure a kernel could not read (an
    /// `indptr` that decreases or leaves its member, an index out of range,
    /// lengths that disagree with each other or with `shape`), each checked
    /// by the rank that reads it; and a shape other than `shape`.
    /// [`Error::Mpi`] if MPI is not initialized, or the ranks read different
    /// files (shapes, formats, splits).
    pub fn new<C: Communicator + ?Sized>(
        comm: &C,
        path: impl AsRef<Path>,
        member: Option<&str>,
        bcast_op: bool,
        shape: Option<(usize, usize)>,
    ) -> Result<Self, Error> {
        Self::open(comm, path.as_ref(), member, bcast_op, shape, true)
    }

    /// As [`MpiLop::new`], without verifying the members' CRC-32 where that
    /// costs a pass over them: for files the caller trusts, to save that
    /// pass at construction (each rank reads `1/p` of a member; see
    /// BENCHMARKS.md for its cost). A sparse file's `indptr` (each rank its
    /// share), `format` and `shape`, and any deflated member streamed to its
    /// end, are still verified.
    ///
    /// # Errors
    /// As [`MpiLop::new`], but for the checksum.
    pub fn new_trusted<C: Communicator + ?Sized>(
        comm: &C,
        path: impl AsRef<Path>,
        member: Option<&str>,
        bcast_op: bool,
        shape: Option<(usize, usize)>,
    ) -> Result<Self, Error> {
        Self::open(comm, path.as_ref(), member, bcast_op, shape, false)
    }

    fn open<C: Communicator + ?Sized>(
        comm: &C,
        path: &Path,
        member: Option<&str>,
        bcast_op: bool,
        shape: Option<(usize, usize)>,
        verify: bool,
    ) -> Result<Self, Error> {
        let comm = Arc::new(Comm::new(comm)?);
        let path = path.to_owned();
        let opened = comm.collective(&[], None, |s| {
            let layout = caught("reading the file", || detect(&path).map_err(Fault::from));
            let layout = s.outcome(layout)?;
            let sparse = layout == NpzLayout::Sparse;
            s.agree(&[("the file's layout (0 dense, 1 sparse)", u64::from(sparse))], None)?;
            if sparse {
                open_sparse(s, &path, member, shape, verify)
            } else {
                open_dense(s, &path, member, shape, verify)
            }
        })?;
        let Opened { local, parts, shape: (nrows, ncols), member, format } = opened;
        // The split dimension's layout is the split; the other's, the same for a
        // square matrix (a product's result can be the next operand), even otherwise.
        let csc = format == Some(Format::Csc);
        let split = offsets_of(&parts);
        let (split_len, other_len) = if csc { (ncols, nrows) } else { (nrows, ncols) };
        let other = Layout::on(comm.clone(), other_offsets(&split, split_len, other_len));
        let split = Layout::on(comm.clone(), split);
        let (row_layout, col_layout) = if csc { (other, split) } else { (split, other) };
        Ok(Self {
            comm,
            path,
            member,
            nrows,
            ncols,
            format,
            parts,
            row_layout,
            col_layout,
            local,
            bcast_op,
            options: MpiOptions::default(),
        })
    }

    /// Sets where products' results go and how messages are split
    /// ([`MpiOptions::default`] at construction). Every rank must set the
    /// same options (checked before each product).
    pub fn with_options(mut self, options: MpiOptions) -> Self {
        self.options = options;
        self
    }

    /// The MPI options of the products.
    pub fn options(&self) -> MpiOptions {
        self.options
    }

    /// The file the matrix comes from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The member read from a dense file (numpy's name, without `.npy`);
    /// `None` for a sparse file.
    pub fn member(&self) -> Option<&str> {
        self.member.as_deref()
    }

    /// `Some(Csr)` or `Some(Csc)` for a scipy sparse file, `None` for a
    /// dense one.
    pub fn format(&self) -> Option<Format> {
        self.format
    }

    /// The rows of the block of the matrix this rank holds: its share of the
    /// rows for a dense or CSR file, all rows for a CSC file.
    pub fn local_rows(&self) -> Range<usize> {
        if self.format == Some(Format::Csc) { 0..self.nrows } else { self.parts[self.comm.rank()].clone() }
    }

    /// The columns of the block of the matrix this rank holds: all columns
    /// for a dense or CSR file, its share of the columns for a CSC file.
    pub fn local_cols(&self) -> Range<usize> {
        if self.format == Some(Format::Csc) { self.parts[self.comm.rank()].clone() } else { 0..self.ncols }
    }

    /// The number of stored entries this rank holds (sparse files; `None`
    /// for a dense one).
    pub fn local_nnz(&self) -> Option<usize> {
        match &self.local {
            Local::Sparse32(h) => Some(h.nnz()),
            Local::Sparse64(h) => Some(h.nnz()),
            Local::Mapped(_) | Local::Copied(_) => None,
        }
    }

    /// Whether this rank's block is a zero-copy view into the file's map
    /// (`false`: a copy of it). A sparse block is always held as this rank's
    /// own copy, split for the halo exchange (its share of the file is read
    /// through the map once, at construction).
    pub fn is_mapped(&self) -> bool {
        matches!(self.local, Local::Mapped(_))
    }

    /// The layout of the rows: the rows of `L·X`, and of the operand of the
    /// distributed `Lᴴ·Y` ([`DistOp`]). For a dense or CSR file, the split of
    /// the matrix; for a CSC file, the same as the columns' for a square
    /// matrix, even blocks otherwise.
    pub fn row_layout(&self) -> &Layout {
        &self.row_layout
    }

    /// The layout of the columns: the operand of the distributed `L·X` and
    /// the rows of `Lᴴ·Y`. For a CSC file, the split of the matrix; for a
    /// dense or CSR file, the same as the rows' for a square matrix, even
    /// blocks otherwise.
    pub fn col_layout(&self) -> &Layout {
        &self.col_layout
    }

    /// The diagonal of a square matrix, distributed as the rows: each rank
    /// reads the diagonal entries of its own block (repeated entries
    /// summed). No communication. The Jacobi preconditioner's diagonal.
    ///
    /// # Errors
    /// [`Error::Mpi`] (on every rank: the shape is) if the matrix is not square.
    pub fn diagonal(&self) -> Result<DistMat<T>, Error> {
        if self.nrows != self.ncols {
            return Err(Error::Mpi(format!(
                "the diagonal of a {}×{} matrix: it is not square",
                self.nrows, self.ncols
            )));
        }
        let mut d = DistMat::zeros(&self.row_layout, 1);
        let mut out = d.local_mut();
        let rows = self.row_layout.local_range();
        match &self.local {
            Local::Sparse32(h) => h.diagonal_into(out.col_mut(0)),
            Local::Sparse64(h) => h.diagonal_into(out.col_mut(0)),
            Local::Mapped(_) | Local::Copied(_) => {
                let a = self.local_dense().expect("a dense block");
                for (i, g) in rows.enumerate() {
                    out[(i, 0)] = a[(i, g)];
                }
            }
        }
        Ok(d)
    }

    /// This rank's diagonal block of a square matrix: its own rows and
    /// columns (a copy, as faer's CSR matrix), for a block-Jacobi
    /// preconditioner (factor it with faer, e.g. `sp_lu`, and apply it on
    /// each rank's rows with [`DistLocal`](super::DistLocal); see
    /// [`solvers::block_jacobi`](crate::solvers::block_jacobi)). No
    /// communication.
    ///
    /// # Errors
    /// [`Error::Mpi`] if the matrix is not square.
    pub fn diagonal_block(&self) -> Result<faer::sparse::SparseRowMat<usize, T>, Error> {
        if self.nrows != self.ncols {
            return Err(Error::Mpi(format!(
                "the diagonal block of a {}×{} matrix: it is not square",
                self.nrows, self.ncols
            )));
        }
        let rows = self.row_layout.local_range();
        Ok(match &self.local {
            Local::Sparse32(h) => h.diagonal_block(),
            Local::Sparse64(h) => h.diagonal_block(),
            Local::Mapped(_) | Local::Copied(_) => {
                let a = self.local_dense().expect("a dense block").subcols(rows.start, rows.len());
                let triplets: Vec<_> = (0..rows.len())
                    .flat_map(|i| (0..rows.len()).map(move |j| faer::sparse::Triplet::new(i, j, a[(i, j)])))
                    .collect();
                faer::sparse::SparseRowMat::try_new_from_triplets(rows.len(), rows.len(), &triplets)
                    .map_err(|e| Error::Mpi(format!("the diagonal block: {e:?}")))?
            }
        })
    }

    /// What this rank exchanges in a distributed product (a sparse file;
    /// `None` for a dense one, whose distributed products gather the whole
    /// operand): its neighbours and ghost entries. For a CSC file the halo
    /// is that of the transpose, whose rows the rank holds: "rows" are the
    /// matrix's columns.
    pub fn halo_stats(&self) -> Option<HaloStats> {
        let rank = self.comm.rank();
        match &self.local {
            Local::Sparse32(h) => Some(h.stats(rank)),
            Local::Sparse64(h) => Some(h.stats(rank)),
            Local::Mapped(_) | Local::Copied(_) => None,
        }
    }

    /// Whether the operand is broadcast from rank 0.
    pub fn bcast_op(&self) -> bool {
        self.bcast_op
    }

    /// This rank's rows of a dense matrix as a faer view (`None` for a sparse
    /// file).
    pub fn local_dense(&self) -> Option<MatRef<'_, T>> {
        match &self.local {
            Local::Mapped(npz) => Some(
                npz.view_rows::<T>(self.local_rows()).ok().flatten().expect("the view was checked at construction"),
            ),
            Local::Copied(m) => Some(m.as_ref()),
            Local::Sparse32(_) | Local::Sparse64(_) => None,
        }
    }

    /// `f` on this rank's block as an operator.
    fn with_local<R>(&self, f: impl FnOnce(&dyn BiLinOp<T>) -> R) -> R {
        match &self.local {
            Local::Sparse32(h) => f(h),
            Local::Sparse64(h) => f(h),
            Local::Mapped(_) | Local::Copied(_) => f(&self.local_dense().expect("a dense block")),
        }
    }

    /// `out = self_mode · rhs`, returning errors instead of panicking.
    fn try_run(
        &self,
        mode: Mode,
        mut out: MatMut<'_, T>,
        rhs: MatRef<'_, T>,
        par: Par,
        stack: &mut MemStack,
    ) -> Result<(), Error> {
        let max = (self.options.max_message_bytes / core::mem::size_of::<T>()).max(1);
        let gather_to = self.options.gather;
        let (m, n, k) = (out.nrows(), rhs.nrows(), rhs.ncols());
        let settings = [
            ("the output's rows", m as u64),
            ("the operand's rows", n as u64),
            ("the number of columns", k as u64),
            ("the product (0 L, 1 conj(L), 2 Lᵀ, 3 Lᴴ)", u64::from(mode.code())),
            ("gather (0 Root, 1 All)", u64::from(gather_to == Gather::All)),
            ("max_message_bytes", self.options.max_message_bytes as u64),
            ("bcast_op", u64::from(self.bcast_op)),
        ];
        self.comm.collective(&settings, None, |s| {
            let (p, rank) = (s.size(), s.rank());
            let parts = &self.parts;
            let own = parts[rank].clone();
            // The operand, broadcast from rank 0 or this rank's own.
            let (operand, stack) = temp_slice::<T>(if self.bcast_op { n * k } else { 0 }, stack);
            let rhs = if self.bcast_op {
                if rank == 0 {
                    MatMut::from_column_major_slice_mut(&mut operand[..], n, k).copy_from(rhs);
                }
                s.mpi(|c| broadcast(c, 0, operand, max));
                MatRef::from_column_major_slice(&operand[..], n, k)
            } else {
                rhs
            };
            let receives = gather_to == Gather::All || rank == 0;
            let local = |out: MatMut<'_, T>, rhs: MatRef<'_, T>, stack: &mut MemStack| {
                let done = caught("this rank's product", || {
                    self.with_local(|op| mode.apply(op, out, rhs, par, stack));
                    Ok(())
                });
                s.outcome(done)
            };
            // The split dimension is the output's (rows of L·X for a row
            // split): blocks gathered; or the operand's: partial sums reduced.
            if mode.is_transposed() == (self.format == Some(Format::Csc)) {
                let (staging, stack) = temp_slice::<T>(if receives { m * k } else { own.len() * k }, stack);
                let piece = |r: usize| parts[r].len() * k;
                let at = if receives { own.start * k } else { 0 };
                let mine = MatMut::from_column_major_slice_mut(&mut staging[at..at + piece(rank)], own.len(), k);
                local(mine, rhs, stack)?;
                if receives {
                    s.mpi(|c| gather(c, gather_to, piece, Pieces::All(&mut staging[..]), max));
                    for rows in &parts[..p] {
                        let block =
                            MatRef::from_column_major_slice(&staging[rows.start * k..rows.end * k], rows.len(), k);
                        out.rb_mut().subrows_mut(rows.start, rows.len()).copy_from(block);
                    }
                } else {
                    s.mpi(|c| gather(c, gather_to, piece, Pieces::Mine(&staging[..]), max));
                }
            } else {
                let (partial, stack) = temp_slice::<T>(m * k, stack);
                let mine = MatMut::from_column_major_slice_mut(&mut partial[..], m, k);
                local(mine, rhs.subrows(own.start, own.len()), stack)?;
                let (staging, _) = temp_slice::<T>(if receives { m * k } else { 0 }, stack);
                match as_contiguous(&mut out).filter(|_| receives) {
                    Some(all) => s.mpi(|c| reduce_sum(c, gather_to, partial, all, max)),
                    None => {
                        s.mpi(|c| reduce_sum(c, gather_to, partial, staging, max));
                        if receives {
                            out.copy_from(MatRef::from_column_major_slice(&staging[..], m, k));
                        }
                    }
                }
            }
            Ok(())
        })
    }
}

/// `shape` (the caller's) against the file's `found`.
fn check_shape(path: &Path, what: &str, found: (usize, usize), shape: Option<(usize, usize)>) -> Result<(), Fault> {
    match shape {
        Some(want) if want != found => Err(Fault::new(format!(
            "{}: {what} has shape {}×{}, expected {}×{}",
            path.display(),
            found.0,
            found.1,
            want.0,
            want.1
        ))),
        _ => Ok(()),
    }
}

/// Inside the construction's collective call: a dense file, by rows.
fn open_dense<T: Scalar>(
    s: &Session<'_>,
    path: &Path,
    member: Option<&str>,
    shape: Option<(usize, usize)>,
    verify: bool,
) -> Result<Opened<T>, Error> {
    let (p, r) = (s.size(), s.rank());
    let opened = caught("reading the file", || {
        let npz = NpzMatrix::open(path, member)?;
        check_shape(path, &format!("member {}", npz.member()), npz.shape(), shape)?;
        Ok(npz)
    });
    let npz = s.outcome(opened)?;
    if verify {
        // Even shares of the member's bytes.
        let span = npz.crc_span();
        let at = |i: usize| (u128::from(span.unwrap_or(0)) * i as u128 / p as u128) as u64;
        verify_crc(s, span, |i| at(i)..at(i + 1), |range| npz.crc32_of(range), |parts| npz.verify_crc(parts))?;
    }
    let (m, n) = npz.shape();
    let member = npz.member().to_owned();
    s.agree(&[("the matrix's rows in the file", m as u64), ("the matrix's columns in the file", n as u64)], None)?;
    // This rank's rows: a view into the map where possible, else a copy of them only.
    let rows = split::block(m, p, r);
    let local = caught("reading the file", || match npz.view_rows::<T>(rows.clone()) {
        Ok(Some(view)) => {
            // Read this rank's rows once now, so that their pages are mapped
            // before the first product rather than during it.
            core::hint::black_box(view.norm_max());
            Ok(None)
        }
        Ok(None) => npz.read_rows::<T>(rows).map(Some).map_err(Fault::from),
        Err(e) => Err(Fault::from(e)),
    })
    .map(|copied| copied.map_or(Local::Mapped(npz), Local::Copied));
    let local = s.outcome(local)?;
    Ok(Opened {
        local,
        parts: (0..p).map(|i| split::block(m, p, i)).collect(),
        shape: (m, n),
        member: Some(member),
        format: None,
    })
}

/// Inside the construction's collective call: a scipy sparse file, by rows
/// (CSR) or columns (CSC) balanced by stored entries.
fn open_sparse<T: Scalar>(
    s: &Session<'_>,
    path: &Path,
    member: Option<&str>,
    shape: Option<(usize, usize)>,
    verify: bool,
) -> Result<Opened<T>, Error> {
    let opened = caught("reading the file", || {
        if let Some(member) = member {
            return Err(Fault::new(format!(
                "{}: a scipy sparse matrix (members data, indices, indptr, format, shape) has no member to \
                 choose; pass None instead of {member:?}",
                path.display()
            )));
        }
        let npz = SparseNpz::open(path)?;
        check_shape(path, "the sparse matrix", npz.shape(), shape)?;
        Ok(npz)
    });
    let npz = s.outcome(opened)?;
    let (m, n) = npz.shape();
    s.agree(
        &[
            ("the matrix's rows in the file", m as u64),
            ("the matrix's columns in the file", n as u64),
            ("the sparse format (0 csr, 1 csc)", u64::from(npz.format() == Format::Csc)),
            ("the number of stored entries", npz.nnz() as u64),
            ("the size of an index", npz.index_dtype().size() as u64),
        ],
        None,
    )?;
    match npz.index_dtype() {
        IndexDtype::Int32 => read_part::<T, u32>(s, &npz, verify),
        IndexDtype::Int64 => read_part::<T, u64>(s, &npz, verify),
    }
}

/// This rank's part of a sparse file, split for the halo, and
/// every rank's range of its major dimension.
fn read_part<T: Scalar, I: SparseIndex>(s: &Session<'_>, npz: &SparseNpz, verify: bool) -> Result<Opened<T>, Error> {
    let (p, r) = (s.size(), s.rank());
    // The split from a binary search in `indptr` (streamed whole if deflated):
    // each rank reads only its own entries of the three members.
    let split = caught("reading the file", || Ok(npz.split::<I>(p)?));
    let (parts, starts): (Vec<_>, Vec<_>) = s.outcome(split)?.into_iter().unzip();
    // FNV-1a of the split: every rank must have cut the same blocks.
    let hash = parts
        .iter()
        .flat_map(|range| [range.start, range.end])
        .fold(0xcbf2_9ce4_8422_2325u64, |h, v| (h ^ v as u64).wrapping_mul(0x0000_0100_0000_01b3));
    s.agree(&[("the split of the stored entries over the ranks (a hash)", hash)], None)?;
    {
        // Each rank checksums the bytes of its own entries of each member
        // (rank 0 the member's header too), so that it reads no page of
        // another's. `indptr` always (a share of it is small; a whole read
        // would verify it anyway), `indices` and `data` unless trusted.
        let (major, nnz) = (npz.major(), npz.nnz());
        let mut members =
            vec![(SparseMember::Indptr, size_of::<I>(), major + 1, parts.iter().map(|r| r.start).collect::<Vec<_>>())];
        if verify {
            members.push((SparseMember::Indices, size_of::<I>(), nnz, starts.clone()));
            members.push((SparseMember::Data, size_of::<T>(), nnz, starts.clone()));
        }
        for (member, size, len, first) in members {
            let span = npz.crc_span(member);
            // The data end the member: element `e` starts `(len - e) · size` bytes
            // before its end. Kept in order and within the member whatever the
            // file's `indptr` says (its parts refuse it later, precisely).
            let mut at = vec![0u64; p + 1];
            for i in 1..=p {
                let wanted = match span {
                    Some(span) if i < p => span.saturating_sub(len.saturating_sub(first[i]) as u64 * size as u64),
                    _ => span.unwrap_or(0),
                };
                at[i] = wanted.max(at[i - 1]);
            }
            verify_crc(
                s,
                span,
                |i| at[i]..at[i + 1],
                |range| npz.crc32_of(member, range),
                |shares| npz.verify_crc(member, shares),
            )?;
        }
    }
    // This rank's rows of `B` (the matrix, or its transpose for a CSC file),
    // split at the columns it owns, then the halo's plan with the others.
    let csc = npz.format() == Format::Csc;
    let minor = other_offsets(&offsets_of(&parts), npz.major(), npz.minor());
    // (32-bit indices when the part's sizes allow: a quarter less to read per
    // entry than 64-bit ones.)
    let blocks = caught("reading the file", || {
        let part = npz.part::<T, I>(parts[r].clone())?;
        let rows = if csc { part.view().transpose() } else { part.view() };
        let own = minor[r]..minor[r + 1];
        Ok(if Blocks::<u32, T>::fits(rows) {
            Split::B32(Blocks::split(rows, own))
        } else {
            Split::B64(Blocks::split(rows, own))
        })
    });
    let local = match s.outcome(blocks)? {
        Split::B32(b) => Local::Sparse32(HaloMatrix::build(s, b, &minor, csc)?),
        Split::B64(b) => Local::Sparse64(HaloMatrix::build(s, b, &minor, csc)?),
    };
    Ok(Opened { local, parts, shape: npz.shape(), member: None, format: Some(npz.format()) })
}

/// A part's blocks, with 32- or 64-bit indices.
enum Split<T> {
    B32(Blocks<u32, T>),
    B64(Blocks<u64, T>),
}

impl<T: Scalar> ModeOp<T> for MpiLop<T> {
    const NAME: &'static str = "MpiLop";

    fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }

    fn scratch(&self, mode: Mode, k: usize, par: Par) -> StackReq {
        // What `try_run` takes on this rank.
        let (m, n) = mode.dims_of(self);
        let local = self.with_local(|op| mode.scratch(op, k, par));
        let operand = temp_slice_scratch::<T>(if self.bcast_op { n * k } else { 0 });
        let receives = self.options.gather == Gather::All || self.comm.rank() == 0;
        let result = if mode.is_transposed() == (self.format == Some(Format::Csc)) {
            let own = self.parts[self.comm.rank()].len();
            temp_slice_scratch::<T>(if receives { m * k } else { own * k })
        } else {
            temp_slice_scratch::<T>(m * k).and(temp_slice_scratch::<T>(if receives { m * k } else { 0 }))
        };
        operand.and(result).and(local)
    }

    #[track_caller]
    fn run(&self, mode: Mode, out: MatMut<'_, T>, rhs: MatRef<'_, T>, par: Par, stack: &mut MemStack) {
        if let Err(e) = self.try_run(mode, out, rhs, par, stack) {
            panic!("lazylinop: {e}");
        }
    }
}

impl_bilinop!([] MpiLop<T> where T: Scalar);

impl<T: Scalar> MpiLop<T> {
    /// The largest message, in elements.
    fn max_elems(&self) -> usize {
        (self.options.max_message_bytes / size_of::<T>()).max(1)
    }

    /// A dense file's distributed product, inside its collective call: the
    /// whole operand all-gathered (`L·X`), or the whole partial result
    /// reduce-scattered (`Lᴴ·Y`).
    #[allow(clippy::too_many_arguments)]
    fn dense_dist(
        &self,
        s: &Session<'_>,
        mode: Mode,
        out: MatMut<'_, T>,
        rhs: MatRef<'_, T>,
        max: usize,
        par: Par,
        stack: &mut MemStack,
    ) {
        let k = rhs.ncols();
        let a = self.local_dense().expect("a dense block");
        let cols = &self.col_layout;
        let n = cols.len();
        let len = |r: usize| cols.range(r).len() * k;
        let (whole, stack) = temp_slice::<T>(n * k, stack);
        if !mode.is_transposed() {
            let own = cols.local_range();
            MatMut::from_row_major_slice_mut(&mut whole[own.start * k..own.end * k], own.len(), k).copy_from(rhs);
            s.mpi(|c| gather(c, Gather::All, len, Pieces::All(&mut whole[..]), max));
            mode.apply(&a, out, MatRef::from_row_major_slice(&whole[..], n, k), par, stack);
        } else {
            mode.apply(&a, MatMut::from_row_major_slice_mut(&mut whole[..], n, k), rhs, par, stack);
            let (counts, stack) = temp_slice::<i32>(s.size(), stack);
            let (mine, _) = temp_slice::<T>(cols.local_len() * k, stack);
            s.mpi(|c| reduce_scatter(c, len, whole, mine, counts, max));
            let mut out = out;
            out.copy_from(MatRef::from_row_major_slice(&mine[..], cols.local_len(), k));
        }
    }
}

impl<T: Scalar> DistOp<T> for MpiLop<T> {
    fn row_layout(&self) -> &Layout {
        &self.row_layout
    }

    fn col_layout(&self) -> &Layout {
        &self.col_layout
    }

    fn dist_scratch(&self, mode: Mode, k: usize, par: Par) -> StackReq {
        let max = self.max_elems();
        match &self.local {
            Local::Sparse32(h) => h.dist_scratch(k, max, par),
            Local::Sparse64(h) => h.dist_scratch(k, max, par),
            Local::Mapped(_) | Local::Copied(_) => {
                let (n, own) = (self.col_layout.len(), self.col_layout.local_len());
                temp_slice_scratch::<T>(n * k).and(StackReq::any_of(&[
                    self.with_local(|op| mode.scratch(op, k, par)),
                    temp_slice_scratch::<i32>(self.comm.size()).and(temp_slice_scratch::<T>(own * k)),
                ]))
            }
        }
    }

    fn dist_apply(
        &self,
        mode: Mode,
        out: DistMatMut<'_, T>,
        rhs: DistMatRef<'_, T>,
        par: Par,
        stack: &mut MemStack,
    ) -> Result<(), Error> {
        let (agreed, fault) = agreement(self, mode, &out, &rhs);
        let settings =
            [agreed[0], agreed[1], agreed[2], agreed[3], ("max_message_bytes", self.options.max_message_bytes as u64)];
        let max = self.max_elems();
        self.comm.collective(&settings, fault, |s| {
            let (out, rhs) = (out.into_local(), rhs.local());
            match &self.local {
                Local::Sparse32(h) => h.dist_run(s, mode, out, rhs, max, par, stack),
                Local::Sparse64(h) => h.dist_run(s, mode, out, rhs, max, par, stack),
                Local::Mapped(_) | Local::Copied(_) => self.dense_dist(s, mode, out, rhs, max, par, stack),
            }
            Ok(())
        })
    }
}
