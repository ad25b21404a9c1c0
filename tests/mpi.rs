//! MPI tests (feature `mpi`): run by `cargo test` as one rank, and by
//! `scripts/test.sh` under `mpirun -n 2` and `-n 3`. Every rank checks its
//! own results; a failure on any rank aborts the whole job (MPI_Abort), so
//! no rank waits forever.

mod common;

use common::{PRODUCTS, Product, assert_close, product, reference};
use faer::traits::math_utils::{is_nan, one};
use faer::{MatMut, MatRef, Par};
use lazylinop::parallel::mpi::Gather;
use lazylinop::parallel::{Error, Method, Scalar, pmatmat, pmatmat_mpi};
use lazylinop::prelude::*;
use lazylinop::random;
use mpi::topology::SimpleCommunicator;
use mpi::traits::Communicator;

/// Checks every product of `l` on this rank: the reference where the result
/// goes, an untouched (NaN) output elsewhere.
fn check_distributed<T: Scalar, L: BiLinOp<T>>(
    l: &lazylinop::parallel::Pmatmat<T, L>,
    dense: MatRef<'_, T>,
    receives: bool,
    what: &str,
) {
    for (seed, k) in common::WIDTHS.into_iter().enumerate() {
        for p in PRODUCTS {
            let n = if matches!(p, Product::Apply | Product::Conj) { dense.ncols() } else { dense.nrows() };
            // The same operand on every rank (same seed).
            let x = random::mat::<T>(n, k, seed as u64);
            let got = product(l, p, x.as_ref(), Par::Seq);
            let label = format!("{what}, use_matvec {}, {p:?}, k = {k}", l.use_matvec());
            // A product with fewer than two columns is computed whole on every rank.
            if receives || k < 2 {
                assert_close(got.as_ref(), reference(dense, p, x.as_ref()).as_ref(), &label);
            } else {
                let all_nan = (0..got.ncols()).all(|j| (0..got.nrows()).all(|i| is_nan(&got[(i, j)])));
                assert!(all_nan, "{label}: a rank outside the gather wrote its output");
            }
        }
    }
}

fn pmatmat_mpi_all<T: Scalar>(world: &SimpleCommunicator) {
    let rank = world.rank();
    for (s, (m, n)) in [(0, 3), (3, 0), (1, 1), (7, 5), (33, 17)].into_iter().enumerate() {
        let a = random::mat::<T>(m, n, 100 + s as u64);
        let a2 = a.clone();
        let a3 = a.clone();
        let closure = from_matmat(
            m,
            n,
            move |out: MatMut<'_, T>, x: MatRef<'_, T>| {
                faer::linalg::matmul::matmul(out, faer::Accum::Replace, &a2, x, one(), Par::Seq)
            },
            move |out: MatMut<'_, T>, y: MatRef<'_, T>| {
                faer::linalg::matmul::matmul(out, faer::Accum::Replace, a3.adjoint(), y, one(), Par::Seq)
            },
        );
        for gather in [Gather::Root, Gather::All] {
            let receives = gather == Gather::All || rank == 0;
            for use_matvec in [false, true] {
                for max_message in [usize::MAX, 7] {
                    let what = format!("{m}×{n}, {gather:?}, max message {max_message}");
                    let l = pmatmat_mpi(&a, world.duplicate(), use_matvec, gather)
                        .unwrap()
                        .with_min_parallel_work(0)
                        .with_max_mpi_message(max_message);
                    check_distributed(&l, a.as_ref(), receives, &format!("dense {what}"));
                    let l = pmatmat_mpi(&closure, world.duplicate(), use_matvec, gather)
                        .unwrap()
                        .with_min_parallel_work(0)
                        .with_max_mpi_message(max_message);
                    check_distributed(&l, a.as_ref(), receives, &format!("closure {what}"));
                }
            }
        }
        // Small products: every rank computes the whole product, no message.
        let l = pmatmat_mpi(&a, world.duplicate(), false, Gather::Root).unwrap();
        check_distributed(&l, a.as_ref(), true, "small, computed whole");
    }
}

fn pmatmat_mpi_products_match_dense_reference(world: &SimpleCommunicator) {
    pmatmat_mpi_all::<f32>(world);
    pmatmat_mpi_all::<f64>(world);
    pmatmat_mpi_all::<faer::c32>(world);
    pmatmat_mpi_all::<faer::c64>(world);
}

fn method_mpi_uses_the_world(world: &SimpleCommunicator) {
    let a = random::mat::<f64>(20, 10, 1);
    let l = pmatmat(&a, Method::Mpi, None, false).unwrap().with_min_parallel_work(0);
    assert_eq!(l.nworkers(), world.size() as usize);
    assert_eq!(l.gather(), Some(Gather::Root));
    let l = l.with_gather(Gather::All);
    let x = random::mat::<f64>(10, 9, 2);
    assert_close(l.try_matmat(x.as_ref()).unwrap().as_ref(), (&a * &x).as_ref(), "Method::Mpi, all");
    let size = world.size() as usize;
    let err = pmatmat(&a, Method::Mpi, Some(size + 1), false).unwrap_err();
    assert!(matches!(&err, Error::Mpi(msg) if msg.contains(&format!("{size} ranks"))), "{err}");
    assert!(pmatmat(&a, Method::Mpi, Some(size), false).is_ok());
}

fn ranks_that_disagree_on_shapes_all_get_the_error(world: &SimpleCommunicator) {
    if world.size() < 2 {
        return;
    }
    let a = random::mat::<f64>(6, 4, 1);
    let l = pmatmat_mpi(&a, world.duplicate(), false, Gather::All).unwrap().with_min_parallel_work(0);
    // Rank 1 has one column more than the others.
    let k = 3 + usize::from(world.rank() == 1);
    let err = l.try_matmat(random::mat::<f64>(4, k, 0).as_ref()).unwrap_err();
    assert!(matches!(&err, Error::Mpi(msg) if msg.contains("disagree")), "{err}");
    // And the operator still works afterwards.
    let x = random::mat::<f64>(4, 3, 0);
    assert_close(l.try_matmat(x.as_ref()).unwrap().as_ref(), (&a * &x).as_ref(), "after a disagreement");
}

fn products_from_another_thread_are_refused_with_threading_single(world: &SimpleCommunicator) {
    if mpi::environment::threading_support() != mpi::Threading::Single {
        return;
    }
    let a = random::mat::<f64>(6, 4, 1);
    let l = pmatmat_mpi(&a, world.duplicate(), false, Gather::All).unwrap();
    let x = random::mat::<f64>(4, 3, 0);
    let err = std::thread::scope(|s| s.spawn(|| l.try_matmat(x.as_ref())).join().unwrap()).unwrap_err();
    assert!(matches!(&err, Error::Mpi(msg) if msg.contains("thread")), "{err}");
}

type Test = fn(&SimpleCommunicator);

fn main() {
    let universe = mpi::initialize().expect("MPI initializes once");
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    // A failure on one rank must not leave the others waiting in a collective.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        eprintln!("rank {rank}: test failed, aborting the MPI job");
        SimpleCommunicator::world().abort(1);
    }));
    let tests: &[(&str, Test)] = &[
        ("pmatmat_mpi_products_match_dense_reference", pmatmat_mpi_products_match_dense_reference),
        ("method_mpi_uses_the_world", method_mpi_uses_the_world),
        ("ranks_that_disagree_on_shapes_all_get_the_error", ranks_that_disagree_on_shapes_all_get_the_error),
        (
            "products_from_another_thread_are_refused_with_threading_single",
            products_from_another_thread_are_refused_with_threading_single,
        ),
    ];
    for (name, test) in tests {
        test(&world);
        if rank == 0 {
            println!("test {name} ... ok ({size} ranks)");
        }
    }
    if rank == 0 {
        println!("test result: ok. {} passed ({size} ranks)", tests.len());
    }
}
