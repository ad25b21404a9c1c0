//! MPI (feature `mpi`): the [`pmatmat`](crate::parallel::pmatmat) backend
//! ([`pmatmat_mpi`](crate::parallel::pmatmat_mpi),
//! [`Method::Mpi`](crate::parallel::Method::Mpi)) and [`MpiLop`], with the
//! rules every MPI operator of this crate follows.
//!
//! | file | what it holds |
//! |---|---|
//! | `comm` | an operator's communicator: a duplicate of the user's, the thread checks, the one road to MPI |
//! | `collective` | the agreement every product starts with; chunked broadcast, gather and sum |
//! | `pmatmat` | the `pmatmat` backend: column blocks over ranks |
//! | `mpilop` | [`MpiLop`]: a `.npz` matrix distributed by rows |
//!
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
//! rank's fault) before anyone waits on another rank's data, and once
//! after the gather (on whether another thread started a product of the
//! operator meanwhile: see below). Nobody waits on a collective whose
//! outcome was not agreed, and the operator stays usable after such an
//! error. Three allreduces of 17 integers per product: microseconds.
//!
//! # Threads
//! faer's operators must be `Sync`, while MPI restricts threads:
//! - With `Threading::Single` or `Funneled` (rsmpi's `mpi::initialize()`
//!   gives `Single`), only the thread that initialized MPI may run
//!   products. A product called from another thread cannot talk to MPI: it
//!   returns [`Error::Rank`](crate::parallel::Error::Rank) at once, and
//!   the agreement it owes the other ranks (which are waiting in the same
//!   product) is made for it, with that error, by the next product of the
//!   operator on an allowed thread of this rank, or by its drop. So the
//!   other ranks return the same error instead of waiting forever, as soon
//!   as this rank goes on with the operator (or drops it).
//! - With `Serialized`, products may run on any thread; this crate's MPI
//!   calls are serialized process-wide.
//! - With `Multiple`, products may run on any thread, but still one at a
//!   time per operator: MPI does not order collectives that two threads of
//!   a rank issue on one communicator, and no lock on one rank can order
//!   them across ranks (rank 0 would pair its product A with rank 1's
//!   product B: a silent wrong result). A product that starts while another
//!   product of the same operator runs on the same rank waits for it, then
//!   fails at its own agreement, on every rank; the product that was running
//!   fails too, at its last agreement, on every rank, if the overlap began
//!   before it. Neither can hang: every call of every rank makes its
//!   first agreement exactly once and in call order, so the ranks'
//!   sequences of collectives stay the same. What no check can see is a
//!   program whose ranks call products in different orders without
//!   overlap (or with an overlap that begins in the microseconds between
//!   the running product's last agreement and its return): that is the
//!   rule above, for the program to keep
//!   (use one operator per thread, or a lock and an order the ranks share).
//!
//! Building an operator (duplicating the communicator) is collective too,
//! and must run on every rank from a thread MPI allows: it is checked on
//! each rank before the duplication, but a rank that fails that check
//! leaves the others in `MPI_Comm_dup`.
//!
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
mod mpilop;
mod pmatmat;

pub use mpilop::MpiLop;
pub(crate) use pmatmat::Ranks;
