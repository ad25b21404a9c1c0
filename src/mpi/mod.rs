//! MPI (feature `mpi`): the [`pmatmat`](crate::parallel::pmatmat) backend
//! ([`pmatmat_mpi`](crate::parallel::pmatmat_mpi),
//! [`Method::Mpi`](crate::parallel::Method::Mpi)), [`MpiLop`], and
//! distributed vectors ([`Layout`], [`DistMat`]) with the operators that take
//! them ([`DistOp`]), with the rules every MPI object of this crate follows.
//!
//! | file | what it holds |
//! |---|---|
//! | `comm` | a communicator: a duplicate of the user's, the thread checks, the one road to MPI |
//! | `collective` | the agreement every collective call starts with; chunked broadcast, gather, scatter, sum, reduce-scatter |
//! | `pmatmat` | the `pmatmat` backend: column blocks over ranks |
//! | `mpilop` | [`MpiLop`]: a `.npz` matrix (dense, or scipy csr/csc) distributed by rows or columns, replicated and distributed products |
//! | `layout` | [`Layout`]: which contiguous range of indices each rank owns |
//! | `distmat` | [`DistMat`] and its views: each rank's rows, reductions in one allreduce, local updates, `.npz` in and out |
//! | `dist` | [`DistOp`]: products on distributed vectors, and their algebra ([`DistOpExt`], [`DistLocal`], [`DistDiag`]) |
//! | `halo` | a sparse share as the diagonal and off-diagonal blocks of [`crate::halo`], the local products |
//! | `exchange` | the halo's plan (built once) and its exchange, forward and in reverse |
//!
//! # Two kinds of products
//! An [`MpiLop`] is a faer operator on whole vectors, as Python lazylinop's
//! `MPILop`: every rank gives the whole operand (or rank 0 broadcasts it),
//! and the whole result is gathered on rank 0 or on every rank
//! ([`Gather`](crate::parallel::Gather)). That suits lazylinop's programs and
//! faer's solvers run on every rank, but each rank holds and receives whole
//! vectors.
//!
//! As a [`DistOp`], the same operator takes and gives [`DistMat`]s: each rank
//! holds only its rows of each vector. A sparse share is split, as PETSc's
//! `MatMPIAIJ` splits it, into the columns the rank owns and the *ghosts*
//! (columns other ranks own, renumbered compactly); the plan of which ranks
//! need which of this rank's entries is built once, collectively, when the
//! operator is made. `L·X` posts the ghost exchange with the neighbours only,
//! multiplies the diagonal block meanwhile, waits, then adds the
//! off-diagonal block; `Lᴴ·Y` multiplies the off-diagonal block first, sends
//! the ghosts' contributions back to their owners (summed there) and
//! multiplies the diagonal block meanwhile. A CSC share is the CSR share of
//! the transpose: the same plan, used the other way. A dense share needs the
//! whole operand: `L·X` all-gathers it, `Lᴴ·Y` reduce-scatters the partial
//! result. Both kinds of products run on the same blocks and through the same
//! communicator.
//!
//! Every distributed product starts with one agreement: the mode, the column
//! count and the operands' layouts (checked on every rank against the
//! operator's: the same indices over the same ranks in the same order) — a
//! mismatch on any rank is the same [`Error`](crate::parallel::Error) on every
//! rank. A rank-local operator ([`DistLocal`]) agrees once more on its
//! outcome, so that a panic in it is an error everywhere. Reductions of
//! [`DistMat`]s ([`norms`](DistMatRef::norms_into),
//! [`dots`](DistMatRef::dots_into), [`gram`](DistMatRef::gram_into)) agree
//! on their length and layout, then reduce all columns in one allreduce.

//! # A communicator of its own
//! Every operator duplicates the communicator it is given, once,
//! collectively, when it is built (as PETSc and Trilinos do), and runs all
//! its messages on that duplicate: they can never match the program's own
//! messages, whatever tags the program uses. The duplicate is freed when
//! the operator is dropped (not after `MPI_Finalize`: see below).
//!
//! # Products are collective
//! Every rank calls the same products of an operator, one at a time, in the
//! same order, with operands of the same shape. Each product starts with one
//! small allreduce, the *agreement*, which carries the shapes, the product
//! (`L`, `Lᴴ`, …) and every setting ([`MpiOptions`](crate::parallel::MpiOptions),
//! [`Pmatmat::with_min_parallel_work`](crate::parallel::Pmatmat::with_min_parallel_work),
//! `use_matvec`, `bcast_op`) and any fault of this rank: if the ranks
//! differ, or any rank has a fault, every rank returns the same error
//! (the lowest failing rank's, as [`Error::Rank`](crate::parallel::Error::Rank)
//! with its message). After its local block, each rank agrees once more on
//! the outcome (a panic in a user's operator is caught and becomes that
//! rank's fault) before anyone waits on another rank's data. Nobody waits
//! on a collective whose outcome was not agreed, and the operator stays
//! usable after such an error (a disagreement, a panic). Two allreduces of
//! 17 integers per product: microseconds.
//!
//! # Threads: one operator, one thread
//! faer's operators must be `Sync`, but MPI does not order the collectives
//! that two threads of a rank issue on one communicator, and no lock on one
//! rank can order them across ranks: rank 0 would pair its product A with
//! rank 1's product B, a silent wrong result even when no two products
//! overlap in time. So an operator's products run on the thread that built
//! it, and only there (with `Threading::Single` or `Funneled`, rsmpi's
//! `mpi::initialize()` giving `Single`, that must be the thread that
//! initialized MPI; with `Serialized` this crate's MPI calls are also
//! serialized process-wide). Then every rank's sequence of collectives is
//! that thread's products, in its order: the rule "one product at a time,
//! in the same order on every rank" holds by construction. Threads that
//! need products of their own build their own operators (each on its own
//! duplicate communicator; with `Threading::Multiple` they may run at the
//! same time).
//!
//! A product called from any other thread (or from inside one of the
//! operator's own products) makes no MPI call: it returns
//! [`Error::Rank`](crate::parallel::Error::Rank) at once and marks the
//! operator. The other ranks may be waiting in that same product (if they
//! called it from the right thread): the mark travels with this rank's next
//! agreement, that is its next product of the operator or its drop, and
//! there every rank returns the same error and the operator becomes unusable
//! on every rank at once (later products fail at once, on every rank,
//! without MPI; build a new operator). It cannot stay usable: the ranks no
//! longer call the same products in the same order, and pairing what is
//! left could give wrong results. It cannot hang a program whose ranks go
//! on (a next product, or the drop at the end of its scope); a rank that
//! leaves the misused operator alive and stops calling MPI leaves the
//! others waiting, as any missing collective would.
//!
//! Building an operator (duplicating the communicator) is collective too,
//! and must run on every rank from a thread MPI allows: it is checked on
//! each rank before the duplication, but a rank that fails that check
//! leaves the others in `MPI_Comm_dup`.

//! # After `MPI_Finalize`
//! Once the `Universe` is dropped (which finalizes MPI, on every rank), a
//! product returns [`Error::Mpi`](crate::parallel::Error::Mpi) and a drop
//! makes no MPI call (MPI already freed the duplicate). An operator's
//! size, rank and `Debug` never call MPI.
//!
//! # Message sizes
//! MPI counts are 32-bit. Every transfer is split into messages of at most
//! [`MpiOptions::max_message_bytes`](crate::parallel::MpiOptions::max_message_bytes)
//! (1 GiB by default; the tests use a few elements, to test the chunking).

mod collective;
mod comm;
mod dist;
mod distmat;
mod exchange;
mod halo;
mod layout;
mod mpilop;
mod pmatmat;

pub use dist::{DistDiag, DistLocal, DistOp, DistOpExt};
pub use distmat::{DistMat, DistMatMut, DistMatRef};
pub use layout::Layout;
pub use mpilop::MpiLop;

/// A rank's fault for an agreement (for the solvers).
pub(crate) fn fault(message: String) -> collective::Fault {
    collective::Fault::new(message)
}

/// One agreement on `layout`'s communicator: `settings` the same on every
/// rank, and no rank's `fault` (the same error everywhere otherwise).
pub(crate) fn agree_on(
    layout: &Layout,
    settings: &[(&'static str, u64)],
    fault: Option<collective::Fault>,
) -> Result<(), crate::parallel::Error> {
    layout.comm().collective(settings, fault, |_| Ok(()))
}
pub(crate) use pmatmat::Ranks;
