//! MPI tests (feature `mpi`): run by `cargo test` as one rank, and by
//! `scripts/test.sh` under `mpirun -n 2` and `-n 3`. Every rank checks its
//! own results; a failure on any rank aborts the whole job (MPI_Abort), so
//! no rank waits forever.

mod common;

use common::fixtures::{self, Formula};
use common::{assert_close, product, reference};
use faer::traits::math_utils::is_nan;
use faer::{Mat, MatRef, Par};
use lazylinop::mpilop::MpiLop;
use lazylinop::ops::Mode;
use lazylinop::parallel::{Error, Method, Scalar, pmatmat, pmatmat_mpi};
use lazylinop::parallel::{Gather, MpiOptions};
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
        for p in Mode::ALL {
            let n = p.dims((dense.nrows(), dense.ncols())).1;
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
        let closure = common::closure_of(&a);
        for gather in [Gather::Root, Gather::All] {
            let receives = gather == Gather::All || rank == 0;
            for use_matvec in [false, true] {
                for max_message in [usize::MAX, 7] {
                    let what = format!("{m}×{n}, {gather:?}, max message {max_message}");
                    let bytes = max_message.saturating_mul(size_of::<T>());
                    let options = MpiOptions::default().gather(gather).max_message_bytes(bytes);
                    let l = pmatmat_mpi(&a, world.duplicate(), use_matvec, options).unwrap();
                    check_distributed(&l, a.as_ref(), receives, &format!("dense {what}"));
                    let l = pmatmat_mpi(&closure, world.duplicate(), use_matvec, options).unwrap();
                    check_distributed(&l, a.as_ref(), receives, &format!("closure {what}"));
                }
            }
        }
        // Small products: every rank computes the whole product, no message.
        let l = pmatmat_mpi(&a, world.duplicate(), false, MpiOptions::default()).unwrap();
        let l = l.with_min_parallel_work(usize::MAX);
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
    let l = pmatmat(&a, Method::mpi(), None, false).unwrap();
    assert_eq!(l.nworkers(), world.size() as usize);
    assert_eq!(l.mpi_options().map(|o| o.gather), Some(Gather::Root));
    let l = pmatmat(&a, Method::Mpi(MpiOptions::default().gather(Gather::All)), None, false).unwrap();
    let x = random::mat::<f64>(10, 9, 2);
    assert_close(l.try_matmat(x.as_ref()).unwrap().as_ref(), (&a * &x).as_ref(), "Method::Mpi, all");
    let size = world.size() as usize;
    let err = pmatmat(&a, Method::mpi(), Some(size + 1), false).unwrap_err();
    assert!(matches!(&err, Error::Mpi(msg) if msg.contains(&format!("{size} ranks"))), "{err}");
    assert!(pmatmat(&a, Method::mpi(), Some(size), false).is_ok());
}

fn ranks_that_disagree_on_shapes_all_get_the_error(world: &SimpleCommunicator) {
    if world.size() < 2 {
        return;
    }
    let a = random::mat::<f64>(6, 4, 1);
    let l = pmatmat_mpi(&a, world.duplicate(), false, MpiOptions::default().gather(Gather::All))
        .unwrap()
        .with_min_parallel_work(0);
    // Rank 1 has one column more than the others.
    let k = 3 + usize::from(world.rank() == 1);
    let err = l.try_matmat(random::mat::<f64>(4, k, 0).as_ref()).unwrap_err();
    assert!(matches!(&err, Error::Mpi(msg) if msg.contains("disagree")), "{err}");
    // And the operator still works afterwards.
    let x = random::mat::<f64>(4, 3, 0);
    assert_close(l.try_matmat(x.as_ref()).unwrap().as_ref(), (&a * &x).as_ref(), "after a disagreement");
}

fn products_from_another_thread_are_refused_with_threading_single(world: &SimpleCommunicator) {
    // main() initializes MPI with Threading::Single (rsmpi's `initialize`).
    assert_eq!(mpi::environment::threading_support(), mpi::Threading::Single);
    let a = random::mat::<f64>(6, 4, 1);
    let l = pmatmat_mpi(&a, world.duplicate(), false, MpiOptions::default().gather(Gather::All)).unwrap();
    let x = random::mat::<f64>(4, 3, 0);
    let err = std::thread::scope(|s| s.spawn(|| l.try_matmat(x.as_ref())).join().unwrap()).unwrap_err();
    assert!(matches!(&err, Error::Mpi(msg) if msg.contains("thread")), "{err}");
}

/// Every valid fixture array of dtype `T`, as (file, member, shape, seed, compressed).
fn fixtures_of(dtype: &str) -> Vec<(String, String, (usize, usize), u64)> {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures::fixture("manifest.json")).unwrap()).unwrap();
    manifest["arrays"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["dtype"] == dtype)
        .map(|a| {
            let shape = (a["shape"][0].as_u64().unwrap() as usize, a["shape"][1].as_u64().unwrap() as usize);
            (
                a["file"].as_str().unwrap().to_owned(),
                a["member"].as_str().unwrap().to_owned(),
                shape,
                a["seed"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn mpilop_all<T: Scalar + Formula>(world: &SimpleCommunicator, dtype: &str) {
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let arrays = fixtures_of(dtype);
    assert!(arrays.len() >= 6, "fixtures of {dtype}");
    for (file, member, (m, n), seed) in arrays {
        // The dense reference, from the formula: independent of the reader.
        let dense = Mat::from_fn(m, n, |i, j| T::value(seed, i, j));
        let path = fixtures::fixture(&file);
        for bcast_op in [true, false] {
            for gather in [Gather::Root, Gather::All] {
                for max_message in [usize::MAX, 5] {
                    let l = MpiLop::<T>::new(world.duplicate(), &path, Some(&member), bcast_op, Some((m, n)))
                        .unwrap()
                        .with_gather(gather)
                        .with_max_mpi_message(max_message);
                    assert_eq!(l.local_rows(), lazylinop::parallel::split::block(m, size, rank));
                    let what =
                        format!("MpiLop {file}:{member} {m}×{n}, bcast_op {bcast_op}, {gather:?}, max {max_message}");
                    check_mpilop(&l, dense.as_ref(), gather == Gather::All || rank == 0, bcast_op, &what);
                }
            }
        }
    }
}

/// Like [`check_distributed`], with operands that differ off rank 0 when
/// `bcast_op` (only rank 0's counts).
fn check_mpilop<T: Scalar>(l: &MpiLop<T>, dense: MatRef<'_, T>, receives: bool, bcast_op: bool, what: &str) {
    let rank = mpi::topology::SimpleCommunicator::world().rank() as u64;
    for (seed, k) in common::WIDTHS.into_iter().enumerate() {
        for p in Mode::ALL {
            let n = p.dims((dense.nrows(), dense.ncols())).1;
            let x = random::mat::<T>(n, k, seed as u64);
            // With bcast_op, the other ranks' operands are garbage: rank 0's is broadcast.
            let mine = if bcast_op && rank > 0 { random::mat::<T>(n, k, 1000 + rank) } else { x.clone() };
            let got = product(l, p, mine.as_ref(), Par::Seq);
            let label = format!("{what}, {p:?}, k = {k}");
            if receives {
                assert_close(got.as_ref(), reference(dense, p, x.as_ref()).as_ref(), &label);
            } else {
                let all_nan = (0..got.ncols()).all(|j| (0..got.nrows()).all(|i| is_nan(&got[(i, j)])));
                assert!(all_nan, "{label}: a rank outside the gather wrote its output");
            }
        }
    }
}

fn mpilop_products_match_the_file(world: &SimpleCommunicator) {
    mpilop_all::<f32>(world, "float32");
    mpilop_all::<f64>(world, "float64");
    mpilop_all::<faer::c32>(world, "complex64");
    mpilop_all::<faer::c64>(world, "complex128");
}

fn mpilop_maps_aligned_data_and_copies_the_rest(world: &SimpleCommunicator) {
    let aligned =
        MpiLop::<f64>::new(world.duplicate(), fixtures::fixture("aligned.npz"), Some("f64c"), true, None).unwrap();
    assert!(aligned.is_mapped(), "stored, aligned f64 data is viewed in place");
    // np.savez leaves f64 data unaligned: a copy of this rank's rows.
    let unaligned =
        MpiLop::<f64>::new(world.duplicate(), fixtures::fixture("float64_c_stored.npz"), None, true, None).unwrap();
    assert!(!unaligned.is_mapped());
    assert_eq!(unaligned.member(), "m7x5");
    let compressed =
        MpiLop::<f64>::new(world.duplicate(), fixtures::fixture("float64_f_compressed.npz"), None, true, None).unwrap();
    assert!(!compressed.is_mapped());
    assert_eq!(compressed.local().nrows(), compressed.local_rows().len(), "only this rank's rows");
}

/// `MpiLop::new` must fail on every rank with the same error.
#[track_caller]
fn fails_everywhere<T: Scalar>(
    world: &SimpleCommunicator,
    path: std::path::PathBuf,
    member: Option<&str>,
    shape: Option<(usize, usize)>,
    failing_rank: usize,
    needles: &[&str],
) {
    let err = MpiLop::<T>::new(world.duplicate(), &path, member, true, shape).unwrap_err();
    let Error::Rank { rank, message } = &err else { panic!("{err}") };
    assert_eq!(*rank, failing_rank, "{err}");
    for needle in needles {
        assert!(message.contains(needle), "{err}: no {needle:?}");
    }
}

fn mpilop_errors_are_collective(world: &SimpleCommunicator) {
    let size = world.size() as usize;
    let good = fixtures::fixture("float64_c_stored.npz");
    let missing = fixtures::fixture("no_such_file.npz");
    fails_everywhere::<f64>(world, missing.clone(), None, None, 0, &["no_such_file.npz"]);
    // The file is missing on the last rank only.
    let last = size - 1;
    let path = if world.rank() as usize == last { missing } else { good.clone() };
    fails_everywhere::<f64>(world, path, None, None, last, &["no_such_file.npz"]);
    fails_everywhere::<f32>(world, good.clone(), None, None, 0, &["float64", "float32", "complex64", "complex128"]);
    fails_everywhere::<f64>(world, good.clone(), Some("nope"), None, 0, &["nope", "m7x5"]);
    fails_everywhere::<f64>(world, good.clone(), None, Some((5, 7)), 0, &["7×5", "5×7"]);
    fails_everywhere::<f64>(world, fixtures::fixture("not_a_zip.txt"), None, None, 0, &["not_a_zip.txt"]);
    fails_everywhere::<f64>(world, fixtures::fixture("truncated.npz"), None, None, 0, &["truncated.npz"]);
    for member in ["d0", "d1", "d3"] {
        fails_everywhere::<f64>(
            world,
            fixtures::fixture("ndim.npz"),
            Some(member),
            None,
            0,
            &["ndim.npz", "not a 2-D array"],
        );
    }
    fails_everywhere::<f64>(
        world,
        fixtures::fixture("unsupported.npz"),
        None,
        None,
        0,
        &["unsupported.npz", "float64"],
    );
    // Still fine afterwards.
    let l = MpiLop::<f64>::new(world.duplicate(), &good, None, true, None).unwrap().with_gather(Gather::All);
    assert_eq!((l.nrows(), l.ncols()), (7, 5));
}

fn lsmr_runs_on_every_rank_with_an_mpilop(world: &SimpleCommunicator) {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::solvers::Solve;
    use faer::matrix_free::IdentityPrecond;
    use faer::matrix_free::lsmr::{LsmrParams, lsmr, lsmr_scratch};
    // Regularized least squares, min ‖[εA; I]·x - [b; 0]‖, with A (33×17, rank 2: the
    // fixture's formula) distributed and every rank iterating.
    let a =
        MpiLop::<f64>::new(world.duplicate(), fixtures::fixture("float64_f_stored.npz"), Some("m33x17"), false, None)
            .unwrap()
            .with_gather(Gather::All);
    let eps = 1e-6;
    let l = vstack(vec![DynOp::new(a.scale(eps)), DynOp::new(eye(17, 17, 0))]);
    let seed = fixtures_of("float64").into_iter().find(|a| a.0 == "float64_f_stored.npz" && a.1 == "m33x17").unwrap().3;
    let dense = Mat::from_fn(33, 17, |i, j| eps * f64::value(seed, i, j));
    let mut b = Mat::zeros(33 + 17, 1);
    b.as_mut().subrows_mut(0, 33).copy_from(random::mat::<f64>(33, 1, 5));
    let precond = IdentityPrecond { dim: 17 };
    let mut x = Mat::zeros(17, 1);
    let params = LsmrParams { abs_tolerance: 0.0, rel_tolerance: 1e-12, max_iters: 500, ..Default::default() };
    let mut buf = MemBuffer::new(lsmr_scratch(precond, &l, 1, Par::Seq));
    lsmr(x.as_mut(), precond, &l, b.as_ref(), params, |_| {}, Par::Seq, MemStack::new(&mut buf))
        .expect("LSMR converges");
    let normal = dense.transpose() * &dense + Mat::<f64>::identity(17, 17);
    let want = normal.partial_piv_lu().solve(dense.transpose() * b.subrows(0, 33));
    assert!((&x - &want).norm_max() < 1e-8 * want.norm_max(), "LSMR on MpiLop: {}", (&x - &want).norm_max());
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
        ("mpilop_products_match_the_file", mpilop_products_match_the_file),
        ("mpilop_maps_aligned_data_and_copies_the_rest", mpilop_maps_aligned_data_and_copies_the_rest),
        ("mpilop_errors_are_collective", mpilop_errors_are_collective),
        ("lsmr_runs_on_every_rank_with_an_mpilop", lsmr_runs_on_every_rank_with_an_mpilop),
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
