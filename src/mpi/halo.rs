//! A rank's share of a sparse `MpiLop`, split for the halo exchange: its
//! rows of the matrix (CSR) or of the transpose (CSC), as the diagonal and
//! off-diagonal [`Blocks`] of [`crate::halo`], with the [`HaloPlan`] of the
//! exchange; the local products both the replicated and the distributed
//! products are made of.
//!
//! Below, `B` is what the rank holds by rows: the matrix `A` for a CSR file
//! (split by rows), `Aᵀ` for a CSC file (split by columns: a CSC matrix's
//! arrays are its transpose's CSR arrays). A product of `A` in `mode` is a
//! product of `B` in `mode` (CSR) or in `mode.transpose()` (CSC); a product
//! of `B` is *forward* (`B·X`, `conj(B)·X`: the operand's ghosts come to the
//! rank) or *reverse* (`Bᵀ·Y`, `Bᴴ·Y`: the ghosts' contributions go back to
//! their owners).

use core::mem::MaybeUninit;
use core::ops::Range;

use faer::dyn_stack::{MemStack, StackReq};
use faer::linalg::{temp_mat_scratch, temp_mat_zeroed};
use faer::mat::AsMatMut;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::traits::math_utils::{add, conj, mul, zero};
use faer::{Index, MatMut, MatRef, Par};
use mpi::ffi::MPI_Request;

use super::collective::{temp_slice, temp_slice_scratch};
use super::comm::Session;
use super::exchange::HaloPlan;
use crate::Scalar;
use crate::halo::{Blocks, HaloStats};
use crate::ops::{Mode, ModeOp, impl_bilinop};
use crate::sparse::{matmul, matmul_scratch};

/// Multiply-adds of the diagonal block between two calls that move the
/// halo's messages on, in a forward product (a few hundred microseconds).
const PIECE_WORK: usize = 1 << 19;
/// At most this many pieces.
const MAX_PIECES: usize = 4;

/// A rank's rows of `B`, split, and the plan of their exchange.
#[derive(Debug)]
pub(crate) struct HaloMatrix<T, I> {
    blocks: Blocks<I, T>,
    plan: HaloPlan,
    /// `B = Aᵀ` (a CSC file).
    transposed: bool,
    /// The columns of `B` (the length of a forward product's operand).
    minor: usize,
}

impl<T: Scalar, I: Index> HaloMatrix<T, I> {
    /// `blocks` (this rank's rows of `B`, split at the columns
    /// `offsets[rank]..offsets[rank + 1]` it owns) and the plan of their
    /// exchange, built with the other ranks (collective).
    pub(crate) fn build(
        s: &Session<'_>,
        blocks: Blocks<I, T>,
        offsets: &[usize],
        transposed: bool,
    ) -> Result<Self, crate::parallel::Error> {
        let minor = *offsets.last().expect("p + 1 offsets");
        let plan = HaloPlan::build(s, offsets, blocks.ghosts())?;
        Ok(HaloMatrix { blocks, plan, transposed, minor })
    }

    /// The mode of `B` for a product of `A` in `mode`.
    pub(crate) fn b_mode(&self, mode: Mode) -> Mode {
        if self.transposed { mode.transpose() } else { mode }
    }

    /// The rank's rows of `B` and its own columns.
    fn dims(&self) -> (usize, usize) {
        (self.blocks.nrows(), self.blocks.own().len())
    }

    /// The stored entries of both blocks.
    pub(crate) fn nnz(&self) -> usize {
        let (d, o) = self.blocks.nnz();
        d + o
    }

    /// `d[i] = Σ B_d[i, i]` (a square matrix, whose row and column layouts
    /// are the same: the diagonal lies in the diagonal block).
    pub(crate) fn diagonal_into(&self, mut d: faer::ColMut<'_, T>) {
        let diag = self.blocks.diag();
        for i in 0..diag.nrows() {
            let (idx, val) = diag.outer_entries(i);
            for (c, v) in idx.iter().zip(val) {
                if c.zx() == i {
                    d[i] = add(&d[i], v);
                }
            }
        }
    }

    /// The diagonal block of `A` (its own rows and columns; a square matrix
    /// whose row and column layouts are the same), as faer's CSR matrix.
    pub(crate) fn diagonal_block(&self) -> faer::sparse::SparseRowMat<usize, T> {
        let d = self.blocks.diag();
        let n = d.nrows();
        let (mut ptr, mut idx, mut val) = (vec![0usize], Vec::with_capacity(d.nnz()), Vec::with_capacity(d.nnz()));
        for i in 0..n {
            let (is, vs) = d.outer_entries(i);
            idx.extend(is.iter().map(|c| c.zx()));
            val.extend_from_slice(vs);
            ptr.push(idx.len());
        }
        let symbolic = faer::sparse::SymbolicSparseRowMat::new_unsorted_checked(n, d.ncols(), ptr, None, idx);
        let b = faer::sparse::SparseRowMat::new(symbolic, val);
        // B = Aᵀ for a CSC share: A's block is the transpose of B's.
        if self.transposed { b.as_ref().transpose().to_row_major().expect("a copy of a valid block") } else { b }
    }

    /// The rank's statistics.
    pub(crate) fn stats(&self, rank: usize) -> HaloStats {
        let (rows, cols) = self.dims();
        self.plan.stats(rank, rows, cols, self.blocks.nnz())
    }

    /// `out[off_rows] += B_o · ghosts` (`b_mode` forward), each row of the
    /// off-diagonal block summed straight into its row of `out`: no scratch
    /// (the block holds only the rows with ghosts, each a few entries).
    fn add_off(&self, b_mode: Mode, mut out: MatMut<'_, T>, ghosts: MatRef<'_, T>) {
        let off = self.blocks.off();
        let k = ghosts.ncols();
        for (i, &r) in self.blocks.off_rows().iter().enumerate() {
            let (idx, val) = off.outer_entries(i);
            let mut row = out.rb_mut().row_mut(r.zx());
            for (c, v) in idx.iter().zip(val) {
                let v = if b_mode.is_conj() { conj(v) } else { *v };
                let g = ghosts.row(c.zx());
                // Contiguous rows (a DistMat's) as slices, which the compiler vectorizes.
                match (row.rb_mut().try_as_row_major_mut(), g.try_as_row_major()) {
                    (Some(o), Some(g)) => {
                        for (o, g) in o.as_slice_mut().iter_mut().zip(g.as_slice()) {
                            *o = add(o, &mul(&v, g));
                        }
                    }
                    _ => {
                        for j in 0..k {
                            row[j] = add(&row[j], &mul(&v, &g[j]));
                        }
                    }
                }
            }
        }
    }

    /// `g = B_oᵀ · y[off_rows]` (or `ᴴ`; `b_mode` reverse), `g` the ghosts' rows.
    fn off_reverse(&self, b_mode: Mode, g: MatMut<'_, T>, y: MatRef<'_, T>, par: Par, stack: &mut MemStack) {
        let off = self.blocks.off();
        let (mut yo, stack) = temp_mat_zeroed::<T, _, _>(off.nrows(), y.ncols(), stack);
        let mut yo = yo.as_mat_mut();
        for (i, &r) in self.blocks.off_rows().iter().enumerate() {
            yo.rb_mut().row_mut(i).copy_from(y.row(r.zx()));
        }
        matmul(g, off, b_mode, yo.rb(), par, stack);
    }

    /// Scratch of the local products with `k` columns (either direction).
    fn local_scratch(&self, k: usize, par: Par) -> StackReq {
        let (diag, off) = (self.blocks.diag(), self.blocks.off());
        // Forward: the diagonal block; reverse: it, or the off-diagonal one
        // on a copy of the rows of `y` that have ghosts.
        StackReq::any_of(&[
            matmul_scratch(diag, Mode::Apply, k, par),
            matmul_scratch(diag, Mode::Transpose, k, par),
            temp_mat_scratch::<T>(off.nrows(), k).and(matmul_scratch(off, Mode::Transpose, k, par)),
        ])
    }

    /// The pieces of rows a forward product multiplies the diagonal block
    /// by (one when no message travels), tiling its rows.
    fn pieces(&self, k: usize, max: usize) -> impl Iterator<Item = Range<usize>> {
        let diag = self.blocks.diag();
        let pieces = if self.plan.messages(k, max) == 0 { 1 } else { diag.nnz().saturating_mul(k) / PIECE_WORK };
        let (rows, pieces) = (diag.nrows(), pieces.clamp(1, MAX_PIECES));
        (0..pieces).map(move |p| rows * p / pieces..rows * (p + 1) / pieces)
    }

    /// Scratch of [`dist_run`](Self::dist_run): a piece may take another
    /// plan than the whole block (fewer threads), so each piece's is asked for.
    pub(crate) fn dist_scratch(&self, k: usize, max: usize, par: Par) -> StackReq {
        let (ghosts, sent) = (self.plan.ghosts(), self.plan.sent());
        let diag = self.blocks.diag();
        let pieces = self.pieces(k, max).map(|r| matmul_scratch(diag.outer_block(r), Mode::Apply, k, par));
        let pieces = pieces.fold(StackReq::EMPTY, StackReq::or);
        temp_slice_scratch::<T>(ghosts * k)
            .and(temp_slice_scratch::<T>(sent * k))
            .and(self.plan.scratch(k, max))
            .and(self.local_scratch(k, par).or(pieces))
    }

    /// The distributed product `out = A_mode · rhs` on this rank's rows
    /// (inside the product's collective call, shapes agreed): the exchange
    /// posted, the diagonal block multiplied meanwhile, then the
    /// off-diagonal one.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dist_run(
        &self,
        s: &Session<'_>,
        mode: Mode,
        mut out: MatMut<'_, T>,
        rhs: MatRef<'_, T>,
        max: usize,
        par: Par,
        stack: &mut MemStack,
    ) {
        let b_mode = self.b_mode(mode);
        let k = rhs.ncols();
        let (ghosts, sent) = (self.plan.ghosts(), self.plan.sent());
        let (ghost_buf, stack) = temp_slice::<T>(ghosts * k, stack);
        let (sent_buf, stack) = temp_slice::<T>(sent * k, stack);
        let (reqs, stack) = stack.make_uninit::<MPI_Request>(self.plan.messages(k, max));
        let reqs: &mut [MaybeUninit<MPI_Request>] = reqs;
        let diag = self.blocks.diag();
        if !b_mode.is_transposed() {
            // Forward: this rank's entries that others hold as ghosts go out.
            for (dst, &l) in sent_buf.chunks_exact_mut(k.max(1)).zip(self.plan.send_idx()) {
                match rhs.row(l).try_as_row_major() {
                    Some(src) => dst.copy_from_slice(src.as_slice()),
                    None => dst.iter_mut().zip(rhs.row(l).iter()).for_each(|(d, s)| *d = *s),
                }
            }
            self.plan.forward(s, ghost_buf, sent_buf, k, max, reqs, |progress| {
                // The diagonal block by pieces of rows, the messages moved on between them.
                for r in self.pieces(k, max) {
                    let out = out.rb_mut().subrows_mut(r.start, r.len());
                    matmul(out, diag.outer_block(r), b_mode, rhs, par, stack);
                    progress();
                }
            });
            let ghosts = MatRef::from_row_major_slice(&ghost_buf[..], ghosts, k);
            self.add_off(b_mode, out, ghosts);
        } else {
            // Reverse: the ghosts' contributions go to their owners.
            let g = MatMut::from_row_major_slice_mut(&mut ghost_buf[..], ghosts, k);
            self.off_reverse(b_mode, g, rhs, par, stack);
            self.plan
                .reverse(s, sent_buf, ghost_buf, k, max, reqs, |_| matmul(out.rb_mut(), diag, b_mode, rhs, par, stack));
            for (i, &l) in self.plan.send_idx().iter().enumerate() {
                for j in 0..k {
                    out[(l, j)] = add(&out[(l, j)], &sent_buf[i * k + j]);
                }
            }
        }
    }
}

/// The rank's block of `A` as an operator on whole operands, for the
/// replicated products: its rows of `A` (CSR, `own × n`) or its columns
/// (CSC, `m × own`); its forward products read the ghosts straight from
/// the whole operand, its reverse products write them into the whole
/// partial result.
impl<T: Scalar, I: Index> ModeOp<T> for HaloMatrix<T, I> {
    const NAME: &'static str = "MpiLop (a rank's block)";

    fn shape(&self) -> (usize, usize) {
        let h = self;
        let rows = h.blocks.nrows();
        if h.transposed { (h.minor, rows) } else { (rows, h.minor) }
    }

    fn scratch(&self, _: Mode, k: usize, par: Par) -> StackReq {
        let h = self;
        temp_mat_scratch::<T>(h.plan.ghosts(), k).and(h.local_scratch(k, par))
    }

    fn run(&self, mode: Mode, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>, par: Par, stack: &mut MemStack) {
        let h = self;
        let b_mode = h.b_mode(mode);
        let own = h.blocks.own();
        let ghosts = h.blocks.ghosts();
        let (mut g, stack) = temp_mat_zeroed::<T, _, _>(ghosts.len(), rhs.ncols(), stack);
        let mut g = g.as_mat_mut();
        if !b_mode.is_transposed() {
            for (i, &c) in ghosts.iter().enumerate() {
                g.rb_mut().row_mut(i).copy_from(rhs.row(c));
            }
            matmul(out.rb_mut(), h.blocks.diag(), b_mode, rhs.subrows(own.start, own.len()), par, stack);
            h.add_off(b_mode, out, g.rb());
        } else {
            out.fill(zero());
            matmul(out.rb_mut().subrows_mut(own.start, own.len()), h.blocks.diag(), b_mode, rhs, par, stack);
            h.off_reverse(b_mode, g.rb_mut(), rhs, par, stack);
            for (i, &c) in ghosts.iter().enumerate() {
                for j in 0..g.ncols() {
                    out[(c, j)] = add(&out[(c, j)], &g[(i, j)]);
                }
            }
        }
    }
}

impl_bilinop!([I: Index] HaloMatrix<T, I> where T: Scalar);
