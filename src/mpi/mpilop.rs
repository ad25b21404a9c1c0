//! [`MpiLop`]: a distributed dense operator whose matrix lives in a numpy
//! `.npz` file, as Python lazylinop's `MPILop`.

use std::ops::Range;
use std::path::{Path, PathBuf};

use faer::dyn_stack::{MemStack, StackReq};
use faer::reborrow::ReborrowMut;
use faer::{Mat, MatMut, MatRef, Par};
use mpi::traits::{Communicator, CommunicatorCollectives};

use super::collective::{
    Fault, Pieces, as_contiguous, broadcast, caught, gather, reduce_sum, temp_slice, temp_slice_scratch,
};
use super::comm::{Comm, Session};
use crate::Scalar;
use crate::npz::NpzMatrix;
use crate::ops::{Mode, ModeOp, impl_bilinop};
use crate::parallel::{Error, Gather, MpiOptions, split};

/// Verifies a stored member's CRC-32 with every rank reading a contiguous
/// share of its bytes: the shares' CRC-32s are gathered on every rank and
/// combined, so that every rank returns the same verdict. A deflated member
/// is verified by the rank whose rows reach its end, which streams it all
/// ([`NpzMatrix::read_rows`]).
fn verify_crc(s: &Session<'_>, npz: &NpzMatrix) -> Result<(), Error> {
    let Some(span) = npz.crc_span() else { return Ok(()) };
    let (p, r) = (s.size() as u64, s.rank() as u64);
    // In u128: span · (i + 1) cannot overflow.
    let at = |i: u64| (u128::from(span) * u128::from(i) / u128::from(p)) as u64;
    let share = |i: u64| at(i)..at(i + 1);
    let mine = caught("checking the file's CRC-32", || npz.crc32_of(share(r)).map_err(Fault::from));
    let mine = s.outcome(mine)?;
    let mut all = vec![0u32; p as usize];
    s.mpi(|c| c.all_gather_into(&mine, &mut all[..]));
    let parts = all.iter().enumerate().map(|(i, &crc)| (crc, share(i as u64).end - share(i as u64).start));
    let verdict = npz.verify_crc(parts).map_err(Fault::from);
    s.outcome(verdict)
}

/// This rank's rows of the matrix.
#[derive(Debug)]
enum Rows<T> {
    /// A zero-copy view into the file's map, taken again at each product.
    Mapped(NpzMatrix),
    /// A copy (compressed, unaligned or big-endian data).
    Copied(Mat<T>),
}

/// A matrix stored in a `.npz` file, distributed by rows over the ranks of a
/// communicator: an `m × n` faer operator whose products run on every rank.
///
/// Each rank memory-maps the file, reads the member's header, and keeps
/// only its own block of rows (split as [`split::block`] splits columns):
/// a zero-copy strided view into the map when the data is stored, aligned
/// for `T` and in the machine's byte order, otherwise a copy of its rows
/// only (`np.savez` does not align member data: expect the copy for `f64`
/// and `c64`). No rank holds the whole matrix unless it is alone.
///
/// - `L·A`: with `bcast_op`, `A` is broadcast from rank 0 (the other ranks'
///   operand only gives the shape); without it, each rank uses its own
///   (identical) operand. Each rank multiplies its rows, and the row blocks
///   are gathered on rank 0 or on every rank ([`MpiOptions::gather`]).
/// - `Lᴴ·Y`, `Lᵀ·Y`: each rank multiplies its rows' adjoint by its own rows
///   of `Y` (broadcast from rank 0 with `bcast_op`), and the partial results
///   are summed with a reduce, on rank 0 or on every rank. The matrix is not
///   distributed a second time.
/// - The local products use the `par` given to the product (faer's own
///   parallelism inside each rank).
///
/// With [`Gather::Root`] (the default, as Python lazylinop) the other ranks'
/// output is not written. Products are collective: every rank calls the same
/// products in the same order, with operands of the same shape and the same
/// settings (checked: a mismatch is the same error on every rank, not a
/// hang); see [the module docs](super) for threads and finalization.
///
/// # Examples
/// See `examples/mpilop.rs`, run with `mpirun -n 2`.
#[derive(Debug)]
pub struct MpiLop<T> {
    comm: Comm,
    path: PathBuf,
    member: String,
    nrows: usize,
    ncols: usize,
    rows: Range<usize>,
    local: Rows<T>,
    bcast_op: bool,
    options: MpiOptions,
}

impl<T: Scalar> MpiLop<T> {
    /// Opens member `member` (`None`: the first array in the archive, as
    /// Python lazylinop) of the `.npz` file at `path` on every rank of
    /// `comm`; each rank keeps its own rows. Collective: the operator works
    /// on its own duplicate of `comm`. Products use
    /// [`MpiOptions::default`]; see [`MpiLop::with_options`].
    ///
    /// `shape`, when given, is checked against the file.
    ///
    /// # Errors
    /// When any rank fails (file missing on one rank, not a zip, member
    /// missing, truncated data, a dtype other than `T`'s, big-endian data
    /// that cannot be read, not a 2-D array, a shape other than `shape`, a
    /// header that lies about its size), every rank returns the same
    /// [`Error::Rank`], naming the lowest failing rank and, in its message,
    /// the path and the reason; on the failing rank its `source` is the
    /// typed [`NpzError`](crate::npz::NpzError). [`Error::Mpi`] if MPI is
    /// not initialized, or the ranks read different shapes.
    pub fn new<C: Communicator + ?Sized>(
        comm: &C,
        path: impl AsRef<Path>,
        member: Option<&str>,
        bcast_op: bool,
        shape: Option<(usize, usize)>,
    ) -> Result<Self, Error> {
        Self::open(comm, path.as_ref(), member, bcast_op, shape, true)
    }

    /// As [`MpiLop::new`], without verifying the member's CRC-32: for files
    /// the caller trusts, to save the checksum's pass over the member at
    /// construction (each rank reads `1/p` of it; see BENCHMARKS.md for its
    /// cost).
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
        let comm = Comm::new(comm)?;
        let path = path.to_owned();
        let (p, r) = (comm.size(), comm.rank());
        let (local, rows, nrows, ncols, member) = comm.collective(&[], |s| {
            let opened =
                caught("reading the file", || NpzMatrix::open(&path, member).map_err(Fault::from)).and_then(|npz| {
                    let found = npz.shape();
                    match shape {
                        Some(want) if want != found => Err(Fault::new(format!(
                            "{}: member {} has shape {}×{}, expected {}×{}",
                            path.display(),
                            npz.member(),
                            found.0,
                            found.1,
                            want.0,
                            want.1
                        ))),
                        _ => Ok(npz),
                    }
                });
            let npz = s.outcome(opened)?;
            if verify {
                verify_crc(s, &npz)?;
            }
            let (m, n) = npz.shape();
            let member = npz.member().to_owned();
            s.agree(
                &[("the matrix's rows in the file", m as u64), ("the matrix's columns in the file", n as u64)],
                None,
            )?;
            // This rank's rows: a view into the map where possible, else a copy of them only.
            let rows = split::block(m, p, r);
            let local = caught("reading the file", || match npz.view_rows::<T>(rows.clone()) {
                Ok(Some(view)) => {
                    // Read this rank's rows once now, so that their pages are mapped
                    // before the first product rather than during it.
                    core::hint::black_box(view.norm_max());
                    Ok(None)
                }
                Ok(None) => npz.read_rows::<T>(rows.clone()).map(Some).map_err(Fault::from),
                Err(e) => Err(Fault::from(e)),
            })
            .map(|copied| copied.map_or(Rows::Mapped(npz), Rows::Copied));
            let local = s.outcome(local)?;
            Ok((local, rows, m, n, member))
        })?;
        Ok(Self { comm, path, member, nrows, ncols, rows, local, bcast_op, options: MpiOptions::default() })
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

    /// The member read (numpy's name, without `.npy`).
    pub fn member(&self) -> &str {
        &self.member
    }

    /// This rank's rows of the matrix.
    pub fn local_rows(&self) -> Range<usize> {
        self.rows.clone()
    }

    /// Whether this rank's rows are a zero-copy view into the file's map
    /// (`false`: a copy of them).
    pub fn is_mapped(&self) -> bool {
        matches!(self.local, Rows::Mapped(_))
    }

    /// Whether the operand is broadcast from rank 0.
    pub fn bcast_op(&self) -> bool {
        self.bcast_op
    }

    /// This rank's rows as a faer view.
    pub fn local(&self) -> MatRef<'_, T> {
        match &self.local {
            Rows::Mapped(npz) => {
                npz.view_rows::<T>(self.rows.clone()).ok().flatten().expect("the view was checked at construction")
            }
            Rows::Copied(m) => m.as_ref(),
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
        let local = self.local();
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
        self.comm.collective(&settings, |s| {
            let (p, rank) = (s.size(), s.rank());
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
            if !mode.is_transposed() {
                // Row block `rank` of the result here; the blocks gathered.
                let (staging, stack) = temp_slice::<T>(if receives { m * k } else { self.rows.len() * k }, stack);
                let piece = |r: usize| split::block(m, p, r).len() * k;
                let at = if receives { split::block(m, p, rank).start * k } else { 0 };
                let mine = MatMut::from_column_major_slice_mut(&mut staging[at..at + piece(rank)], self.rows.len(), k);
                mode.apply(&local, mine, rhs, par, stack);
                s.outcome(Ok(()))?;
                if receives {
                    s.mpi(|c| gather(c, gather_to, piece, Pieces::All(&mut staging[..]), max));
                    for r in 0..p {
                        let rows = split::block(m, p, r);
                        let block =
                            MatRef::from_column_major_slice(&staging[rows.start * k..rows.end * k], rows.len(), k);
                        out.rb_mut().subrows_mut(rows.start, rows.len()).copy_from(block);
                    }
                } else {
                    s.mpi(|c| gather(c, gather_to, piece, Pieces::Mine(&staging[..]), max));
                }
            } else {
                // This rank's rows' adjoint times its rows of the operand; summed.
                let (partial, stack) = temp_slice::<T>(m * k, stack);
                let mine = MatMut::from_column_major_slice_mut(&mut partial[..], m, k);
                mode.apply(&local, mine, rhs.subrows(self.rows.start, self.rows.len()), par, stack);
                s.outcome(Ok(()))?;
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

impl<T: Scalar> ModeOp<T> for MpiLop<T> {
    const NAME: &'static str = "MpiLop";

    fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }

    fn scratch(&self, mode: Mode, k: usize, par: Par) -> StackReq {
        let (m, n) = mode.dims_of(self);
        let local = mode.scratch(&self.local(), k, par);
        temp_slice_scratch::<T>(n * k)
            .and(temp_slice_scratch::<T>(m * k))
            .and(temp_slice_scratch::<T>(m * k))
            .and(local)
    }

    #[track_caller]
    fn run(&self, mode: Mode, out: MatMut<'_, T>, rhs: MatRef<'_, T>, par: Par, stack: &mut MemStack) {
        if let Err(e) = self.try_run(mode, out, rhs, par, stack) {
            panic!("lazylinop: {e}");
        }
    }
}

impl_bilinop!([] MpiLop<T> where T: Scalar);
