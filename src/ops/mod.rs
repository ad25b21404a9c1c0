//! The lazy algebra: operators built from other operators, never formed.
//!
//! Every type here implements faer's [`LinOp`] and [`BiLinOp`], so it can be
//! applied with scratch from a [`MemStack`], combined further, handed to the
//! parallel backends, or passed to faer's iterative solvers.
//!
//! | file | what it holds |
//! |---|---|
//! | [`compose`] | `A · B` |
//! | [`sum`] | `A + B` |
//! | [`scale`] | `α · A`, `-A` |
//! | [`adjoint`] | `Aᴴ`, `Aᵀ`, `conj(A)` as views |
//! | [`stack`] | horizontal, vertical and block-diagonal stacks |
//! | [`kron`] | `A ⊗ B` |
//! | [`basic`] | `eye`, `zeros`, `diag` |
//! | [`closure`] | operators from user closures (matmat or matvec) |
//! | [`dynop`] | [`DynOp`], a type-erased, cheaply cloneable handle |
//!
//! Scratch: a product takes its temporaries from the caller's [`MemStack`]
//! and allocates nothing. A temporary that an inner operator writes and a
//! combinator then reads is zeroed before each inner product, so no result
//! depends on what the scratch held before, and an inner operator that adds
//! into its output or leaves entries alone is never read as undefined memory.
//! Closure operators ([`closure`]) get a zeroed `out` too, so closures may
//! accumulate. Shapes that would exceed `usize::MAX` ([`kron`], [`stack`])
//! are refused at construction.
//!
//! Combinators take their operands by value. To combine without moving, pass
//! references: faer implements its traits for `&L`.

pub mod adjoint;
pub mod basic;
pub mod closure;
pub mod compose;
pub mod dynop;
pub mod kron;
pub mod scale;
pub mod stack;
pub mod sum;

pub(crate) mod mode;

pub use adjoint::{Adjoint, Conjugate, Transpose};
pub use basic::{Eye, Zeros, diag, eye, zeros};
pub use closure::{ClosureOp, MatMatFn, from_matmat, from_matvec};
pub use compose::Compose;
pub use dynop::DynOp;
pub use kron::Kron;
pub use scale::Scaled;
pub use stack::{Blocks, block_diag, hstack, vstack};
pub use sum::Sum;

pub use mode::Mode;
pub(crate) use mode::{ModeOp, impl_bilinop};

#[allow(unused_imports)] // used by the module docs
use crate::{BiLinOp, LinOp};
#[allow(unused_imports)]
use faer::dyn_stack::MemStack;
