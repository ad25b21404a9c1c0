//! [`Layout`]: which contiguous range of global indices each rank owns.

use core::fmt;
use core::ops::Range;
use std::sync::Arc;

use mpi::topology::CommunicatorRelation;
use mpi::traits::{Communicator, CommunicatorCollectives};

use super::collective::Fault;
use super::comm::Comm;
use crate::parallel::{Error, split};

/// How `n` global indices (rows of a distributed vector, rows or columns of
/// a distributed operator) are split over the ranks of a communicator: rank
/// `r` owns the contiguous range [`range(r)`](Layout::range), in rank order.
/// The same on every rank, agreed when it is made.
///
/// A layout carries the communicator its vectors reduce on (a duplicate of
/// the one it was made from, shared by every clone and by every
/// [`DistMat`](super::DistMat) made on it); an [`MpiLop`](super::MpiLop)'s
/// [`row_layout`](super::MpiLop::row_layout) and
/// [`col_layout`](super::MpiLop::col_layout) share the operator's. Cheap to
/// clone. Two layouts are *compatible* when they split the same indices the
/// same way over the same ranks in the same order (their communicators
/// identical or congruent): a product checks its operands' layouts against
/// the operator's on every rank.
#[derive(Clone)]
pub struct Layout {
    inner: Arc<Inner>,
}

struct Inner {
    comm: Arc<Comm>,
    /// `p + 1` offsets: rank `r` owns `offsets[r]..offsets[r + 1]`.
    offsets: Vec<usize>,
    /// FNV-1a of `offsets`, for agreements.
    hash: u64,
}

impl fmt::Debug for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layout")
            .field("len", &self.len())
            .field("rank", &self.rank())
            .field("local", &self.local_range())
            .finish()
    }
}

impl Layout {
    /// A layout in which this rank owns `local_len` indices, the ranks'
    /// ranges following each other in rank order (collective: every rank
    /// gives its own length). With `len`, the total is checked against it.
    /// Duplicates `comm` (as every MPI object of this crate does).
    ///
    /// # Errors
    /// [`Error::Mpi`] on every rank if MPI is not initialized, or the local
    /// lengths do not add up to `len`, or the ranks give different `len`.
    pub fn from_local_len<C: Communicator + ?Sized>(
        comm: &C,
        local_len: usize,
        len: Option<usize>,
    ) -> Result<Self, Error> {
        let comm = Arc::new(Comm::new(comm)?);
        Self::gathered(comm, local_len, len)
    }

    /// `len` indices split evenly (as [`split::block`] splits columns: the
    /// first `len mod p` ranks own one more). Collective (duplicates `comm`).
    ///
    /// # Errors
    /// [`Error::Mpi`] on every rank if MPI is not initialized or the ranks
    /// give different `len`.
    pub fn even<C: Communicator + ?Sized>(comm: &C, len: usize) -> Result<Self, Error> {
        let comm = Arc::new(Comm::new(comm)?);
        let p = comm.size();
        let offsets = offsets_of((0..p).map(|r| split::block(len, p, r).len()));
        let layout = Self::on(comm, offsets);
        layout.agree_same("Layout::even")?;
        Ok(layout)
    }

    /// Another layout on this one's communicator (no new duplicate), in
    /// which this rank owns `local_len` indices; collective, as
    /// [`Layout::from_local_len`].
    ///
    /// # Errors
    /// As [`Layout::from_local_len`].
    pub fn with_local_len(&self, local_len: usize, len: Option<usize>) -> Result<Self, Error> {
        Self::gathered(self.inner.comm.clone(), local_len, len)
    }

    /// Every rank's `local_len`, gathered.
    fn gathered(comm: Arc<Comm>, local_len: usize, len: Option<usize>) -> Result<Self, Error> {
        let settings = [("the layout's total length (u64::MAX: not given)", len.map_or(u64::MAX, |n| n as u64))];
        let lens = comm.collective(&settings, None, |s| {
            let mut all = vec![0u64; s.size()];
            s.mpi(|c| c.all_gather_into(&(local_len as u64), &mut all[..]));
            Ok(all)
        })?;
        let total = lens.iter().try_fold(0usize, |acc, &l| acc.checked_add(usize::try_from(l).ok()?));
        match (total, len) {
            (Some(t), Some(n)) if t != n => Err(Error::Mpi(format!(
                "the ranks' local lengths ({}) add up to {t}, not to the layout's length {n}",
                summary(&lens)
            ))),
            (None, _) => Err(Error::Mpi(format!("the ranks' local lengths ({}) overflow", summary(&lens)))),
            _ => Ok(Self::on(comm, offsets_of(lens.iter().map(|&l| l as usize)))),
        }
    }

    /// A layout of `offsets` (`p + 1`, from 0, the same on every rank)
    /// sharing `comm`; no communication.
    pub(crate) fn on(comm: Arc<Comm>, offsets: Vec<usize>) -> Self {
        debug_assert_eq!(offsets.len(), comm.size() + 1);
        let hash = offsets.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &v| (h ^ v as u64).wrapping_mul(0x0100_0000_01b3));
        Layout { inner: Arc::new(Inner { comm, offsets, hash }) }
    }

    /// Checks (collectively) that every rank has this same layout.
    fn agree_same(&self, what: &'static str) -> Result<(), Error> {
        let _ = what;
        self.comm().collective(&[("the layout (a hash of its offsets)", self.inner.hash)], None, |_| Ok(()))
    }

    /// The number of global indices.
    pub fn len(&self) -> usize {
        *self.inner.offsets.last().expect("p + 1 offsets")
    }

    /// Whether there are no indices.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.inner.offsets.len() - 1
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.inner.comm.rank()
    }

    /// The indices rank `r` owns.
    ///
    /// # Panics
    /// If `r` is not below [`size`](Self::size).
    pub fn range(&self, r: usize) -> Range<usize> {
        self.inner.offsets[r]..self.inner.offsets[r + 1]
    }

    /// The indices this rank owns.
    pub fn local_range(&self) -> Range<usize> {
        self.range(self.rank())
    }

    /// The number of indices this rank owns.
    pub fn local_len(&self) -> usize {
        self.local_range().len()
    }

    /// The `p + 1` offsets: rank `r` owns `offsets()[r]..offsets()[r + 1]`.
    pub fn offsets(&self) -> &[usize] {
        &self.inner.offsets
    }

    /// The rank that owns global index `i`.
    ///
    /// # Panics
    /// If `i` is not below [`len`](Self::len).
    pub fn owner(&self, i: usize) -> usize {
        assert!(i < self.len(), "index {i} of a layout of length {}", self.len());
        crate::halo::owner(&self.inner.offsets, i)
    }

    /// `recv = Σ over the ranks of send`, one allreduce, no agreement: see
    /// [`Comm::unagreed`] for when that is right (a solver's reductions).
    pub(crate) fn sum_unagreed(&self, send: &[faer::c64], recv: &mut [faer::c64]) -> Result<(), Error> {
        self.inner.comm.unagreed(|s| {
            s.mpi(|c| c.all_reduce_into(send, recv, mpi::collective::SystemOperation::sum()));
            Ok(())
        })
    }

    pub(crate) fn comm(&self) -> &Arc<Comm> {
        &self.inner.comm
    }

    pub(crate) fn hash(&self) -> u64 {
        self.inner.hash
    }

    /// `None` if `other` is compatible with `self` (see [`Layout`]), else
    /// why not, as this rank's fault (to be agreed: it may differ between
    /// ranks).
    pub(crate) fn mismatch(&self, other: &Layout, what: &str) -> Option<Fault> {
        if Arc::ptr_eq(&self.inner, &other.inner) {
            return None;
        }
        if self.inner.offsets != other.inner.offsets {
            return Some(Fault::new(format!(
                "{what} has a layout of {} indices over {} ranks ({} on rank {}), but the operator's is {} over {} ({} \
                 on rank {})",
                other.len(),
                other.size(),
                fmt_range(other.local_range()),
                other.rank(),
                self.len(),
                self.size(),
                fmt_range(self.local_range()),
                self.rank()
            )));
        }
        if !Arc::ptr_eq(&self.inner.comm, &other.inner.comm) {
            let relation = self.inner.comm.relation(&other.inner.comm);
            if !matches!(relation, Some(CommunicatorRelation::Identical | CommunicatorRelation::Congruent)) {
                return Some(Fault::new(format!(
                    "{what} lives on another communicator than the operator's (not the same ranks in the same order: \
                     {relation:?})"
                )));
            }
        }
        None
    }
}

/// Offsets from lengths.
fn offsets_of(lens: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut offsets = vec![0];
    for l in lens {
        offsets.push(offsets.last().unwrap() + l);
    }
    offsets
}

fn fmt_range(r: Range<usize>) -> String {
    format!("{}..{}", r.start, r.end)
}

/// The first few of many lengths.
fn summary(lens: &[u64]) -> String {
    let shown: Vec<String> = lens.iter().take(8).map(|l| l.to_string()).collect();
    if lens.len() > 8 { format!("{}, … ({} ranks)", shown.join(", "), lens.len()) } else { shown.join(", ") }
}
