//! Lazy linear operators on [faer], with products that run in parallel.
//!
//! A Rust counterpart of the Python package
//! [lazylinop](https://faustgrp.gitlabpages.inria.fr/lazylinop/), for
//! scientific code that applies large operators it never wants to form.
//!
//! # Operators are faer's
//! An operator here *is* a faer matrix-free operator: it implements
//! [`LinOp`] and [`BiLinOp`] (re-exported from [`faer::matrix_free`]). It
//! computes `L·X`, `conj(L)·X`, `Lᵀ·X` and `Lᴴ·X` on faer views, writing into
//! the caller's [`MatMut`](faer::MatMut), with temporaries taken from a
//! [`MemStack`](faer::dyn_stack::MemStack) sized by its `*_scratch` method:
//! no allocation in a product. faer already implements these traits for
//! `Mat`, `MatRef`, diagonal and sparse matrices, which are this crate's dense
//! and sparse operators; everything built here also goes into faer's
//! iterative solvers (`conjugate_gradient`, `bicgstab`, `lsmr`, the partial
//! eigen and SVD solvers).
//!
//! # Tour
//! - [`ops`]: the lazy algebra, one combinator a file: [`Compose`](ops::Compose),
//!   [`Sum`](ops::Sum), [`Scaled`](ops::Scaled), the [`Adjoint`](ops::Adjoint) /
//!   [`Transpose`](ops::Transpose) / [`Conjugate`](ops::Conjugate) views,
//!   [`Blocks`](ops::Blocks) (`hstack`, `vstack`, `block_diag`),
//!   [`Kron`](ops::Kron), [`eye`](ops::eye), [`zeros`](ops::zeros),
//!   [`diag`](ops::diag), [`from_matmat`](ops::from_matmat) /
//!   [`from_matvec`](ops::from_matvec) for closures, and the type-erased
//!   handle [`DynOp`](ops::DynOp).
//! - [`LinOpExt`]: the same as methods (`.compose()`, `.adjoint()`,
//!   `.plus()`, `.scale()`, …) and allocating conveniences (`.to_dense()`,
//!   `.matmat()`, `.rmatmat()`).
//! - [`parallel`]: [`pmatmat`](parallel::pmatmat) and friends, an operator
//!   whose product runs over blocks of columns on threads
//!   ([`parallel::thread`]), forked processes (`parallel::process`, unix) or
//!   MPI ranks (`parallel::pmatmat_mpi`, feature `mpi`).
//! - [`sparse`]: [`Sparse`](sparse::Sparse), faer's CSR and CSC matrices
//!   (or checked raw slices) as operators, with multi-column SIMD kernels
//!   that use `Par`'s threads (cut by nonzeros, once, with
//!   [`Prepared`](sparse::Prepared)) on column- or row-major operands;
//!   [`BothWays`](sparse::BothWays) holds a matrix in both formats.
//! - [`npz`]: numpy `.npz` files through a memory map: a dense 2-D member
//!   read by blocks of rows (viewed in place or copied,
//!   [`npz::NpzMatrix`]), scipy sparse files (CSR, CSC) by shares of their
//!   nonzeros ([`npz::SparseNpz`]), each `.npy` header parsed by npyz behind
//!   a guard; and [`npz::save`], [`npz::save_sparse`], which write members
//!   that ranks map in place.
//! - `mpi` (feature `mpi`): MPI's one home: the communicator each operator
//!   duplicates, the rules of collective products, `MpiLop`, a matrix
//!   from a `.npz` (dense, or scipy csr/csc) distributed over MPI ranks, and
//!   distributed vectors (`Layout`, `DistMat`) with the operators that take
//!   them (`DistOp`: halo exchanges for sparse matrices).
//! - `solvers` (feature `mpi`): CG, GMRES(m) and LSQR on distributed
//!   operators and vectors, with Jacobi and block-Jacobi preconditioners.
//! - [`Scalar`]: the four scalar types (`f32`, `f64`, `c32`, `c64`) that
//!   shared memory, MPI and `.npz` files carry, and their [`Dtype`].
//! - [`dottest()`]: checks that an operator's adjoint matches its product.
//! - [`random`]: reproducible random matrices of any scalar type;
//!   [`gallery`]: the 7-point Laplacian on a 3-D grid.
//! - [`halo`]: a sparse matrix's rows split into the columns a part owns
//!   and its ghosts, and the exchange of such a split, computed offline.
//!
//! # Quick start
//! ```
//! use lazylinop::prelude::*;
//! use faer::{Mat, Par};
//! use faer::dyn_stack::{MemBuffer, MemStack};
//!
//! let b = lazylinop::random::mat::<f64>(300, 200, 0);
//! // L = Bᴴ·B + I, never formed.
//! let l = Adjoint(&b).compose(&b).plus(eye(200, 200, 0));
//! let x = lazylinop::random::mat::<f64>(200, 8, 1);
//!
//! // The faer way: caller's output, scratch sized once, no allocation inside.
//! let mut y = Mat::zeros(200, 8);
//! let mut buf = MemBuffer::new(l.apply_scratch(8, Par::Seq));
//! l.apply(y.as_mut(), x.as_ref(), Par::Seq, MemStack::new(&mut buf));
//!
//! // The convenient way, and a dense check.
//! let reference = b.adjoint() * &b * &x + &x;
//! assert!((&y - &reference).norm_max() < 1e-10);
//! assert!((l.matmat(&x) - &reference).norm_max() < 1e-10);
//! dottest(&l, 0).unwrap();
//! ```
//!
//! # Python lazylinop names
//! | lazylinop | here |
//! |---|---|
//! | `LazyLinOp(shape, matmat, rmatmat)` | [`ops::from_matmat`], [`ops::from_matvec`] |
//! | `L1 @ L2`, `L1 + L2`, `a * L`, `-L` | [`LinOpExt::compose`], [`LinOpExt::plus`], [`LinOpExt::scale`], [`LinOpExt::neg`]; operators on [`DynOp`](ops::DynOp) |
//! | `L.H`, `L.T`, `L.conj()` | [`LinOpExt::adjoint`], [`LinOpExt::transpose`], [`LinOpExt::conj`] |
//! | `hstack`, `vstack`, `block_diag`, `kron` | [`ops::hstack`], [`ops::vstack`], [`ops::block_diag`], [`ops::Kron`] |
//! | `eye`, `zeros`, `diag` | [`ops::eye`], [`ops::zeros`], [`ops::diag`] |
//! | `L.toarray()`, `L @ A` | [`LinOpExt::to_dense`], [`LinOpExt::matmat`] |
//! | `pmatmat`, `pmatmat_multithread`, `pmatmat_multiprocess` | [`parallel::pmatmat`], [`parallel::pmatmat_multithread`], [`parallel::pmatmat_multiprocess`] |
//! | `pmatmat_mpi`, `MPILop` (feature `mpi`) | `parallel::pmatmat_mpi`, `mpi::MpiLop` |
#![deny(missing_docs)]
// docs.rs (`--cfg docsrs`, nightly rustdoc): mark each item of the `mpi` feature as such.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(clippy::undocumented_unsafe_blocks)]

pub use faer;
pub use faer::matrix_free::{BiLinOp, LinOp};

pub mod dottest;
mod ext;
pub mod gallery;
pub mod halo;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod npz;
pub mod ops;
pub mod parallel;
pub mod random;
mod scalar;
#[cfg(feature = "mpi")]
pub mod solvers;
pub mod sparse;

pub use dottest::{DotTest, dottest};
pub use scalar::{Dtype, Scalar};

/// The README's code blocks, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
pub use ext::LinOpExt;

/// Everything needed to build and apply operators: `use lazylinop::prelude::*;`.
pub mod prelude {
    pub use crate::dottest::dottest;
    pub use crate::ext::LinOpExt;
    pub use crate::ops::*;
    pub use crate::sparse::Sparse;
    pub use crate::{BiLinOp, LinOp};
}
