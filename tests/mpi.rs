//! MPI tests (feature `mpi`): run by `cargo test` as one rank, and by
//! `scripts/test.sh` under `mpirun -n 1`, `-n 2` and `-n 3`, once per
//! scenario: no argument (MPI initialized with `Threading::Single`: the
//! main suite), `multiple` (`Threading::Multiple`: products from two
//! threads), `finalized` (operators used and dropped after `MPI_Finalize`).
//! Every rank checks its own results; a failure on any rank aborts the
//! whole job (MPI_Abort), and every test has a watchdog that aborts the
//! process, naming the test, when it takes too long (a hang).

mod common;
#[path = "mpi/dist.rs"]
mod dist;
#[path = "mpi/solvers.rs"]
mod solvers;

use common::fixtures::{self, Formula};
use common::{assert_close, product, reference};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::Duration;

use faer::linalg::matmul::matmul;
use faer::traits::math_utils::is_nan;
use faer::{Accum, Mat, MatRef, Par};
use lazylinop::mpi::MpiLop;
use lazylinop::ops::Mode;
use lazylinop::parallel::{Error, Method, Pmatmat, Scalar, pmatmat, pmatmat_mpi};
use lazylinop::parallel::{Gather, MpiOptions};
use lazylinop::prelude::*;
use lazylinop::random;
use lazylinop::sparse::{Sparse, SparseView};
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Destination, Source};

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
        // `a` as a CSR matrix (every entry stored), on the crate's sparse kernel.
        let (ptr, idx): (Vec<usize>, Vec<usize>) =
            ((0..=m).map(|i| i * n).collect(), (0..m * n).map(|e| e % n).collect());
        let val: Vec<T> = (0..m * n).map(|e| a[(e / n, e % n)]).collect();
        let sparse = Sparse::new(SparseView::csr(m, n, &ptr, &idx, &val).unwrap());
        for gather in [Gather::Root, Gather::All] {
            let receives = gather == Gather::All || rank == 0;
            for use_matvec in [false, true] {
                for max_message in [usize::MAX, 7] {
                    let what = format!("{m}×{n}, {gather:?}, max message {max_message}");
                    let bytes = max_message.saturating_mul(size_of::<T>());
                    let options = MpiOptions::default().gather(gather).max_message_bytes(bytes);
                    let l = pmatmat_mpi(&a, world, use_matvec, options).unwrap();
                    check_distributed(&l, a.as_ref(), receives, &format!("dense {what}"));
                    let l = pmatmat_mpi(&closure, world, use_matvec, options).unwrap();
                    check_distributed(&l, a.as_ref(), receives, &format!("closure {what}"));
                    let l = pmatmat_mpi(&sparse, world, use_matvec, options).unwrap();
                    check_distributed(&l, a.as_ref(), receives, &format!("sparse {what}"));
                }
            }
        }
        // Small products: every rank computes the whole product, no message.
        let l = pmatmat_mpi(&a, world, false, MpiOptions::default()).unwrap();
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
    let l = pmatmat_mpi(&a, world, false, MpiOptions::default().gather(Gather::All)).unwrap().with_min_parallel_work(0);
    // Rank 1 has one column more than the others.
    let k = 3 + usize::from(world.rank() == 1);
    let err = l.try_matmat(random::mat::<f64>(4, k, 0).as_ref()).unwrap_err();
    assert!(matches!(&err, Error::Mpi(msg) if msg.contains("disagree")), "{err}");
    // And the operator still works afterwards.
    let x = random::mat::<f64>(4, 3, 0);
    assert_close(l.try_matmat(x.as_ref()).unwrap().as_ref(), (&a * &x).as_ref(), "after a disagreement");
}

/// `f64` operator `a` as a closure that panics on rank `panicking` while `PANIC` is set.
static PANIC: AtomicBool = AtomicBool::new(false);

/// Set while a test expects a panic from the crate (the panic hook then lets it be).
static EXPECTING_PANIC: AtomicBool = AtomicBool::new(false);

/// `f()`, catching the panic the test expects.
fn expect_panic<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    EXPECTING_PANIC.store(true, Ordering::SeqCst);
    let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    EXPECTING_PANIC.store(false, Ordering::SeqCst);
    got.map_err(|payload| payload.downcast_ref::<String>().cloned().unwrap_or_default())
}

fn rank_of_world() -> usize {
    SimpleCommunicator::world().rank() as usize
}

/// Item 1: a message the program sent to rank 0, and not yet received, is
/// neither taken by a product's gather nor lost.
fn user_messages_are_never_taken_by_a_product(world: &SimpleCommunicator) {
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let a = random::mat::<f64>(5, 4, 1);
    let path = fixtures::fixture("float64_c_stored.npz");
    let (m, n) = (7, 5);
    // Every rank but 0 sends rank 0 two messages that it receives only after the products.
    let message = [999.0f64; 5];
    if rank > 0 {
        world.process_at_rank(0).send_with_tag(&message[..], 7);
        world.process_at_rank(0).send_with_tag(&message[..], 8);
    }
    // One column per rank: a stolen message would be one whole column.
    let x = random::mat::<f64>(4, size, 2);
    let l = pmatmat(&a, Method::mpi(), None, false).unwrap();
    let y = l.try_matmat(x.as_ref()).unwrap();
    let l2 = pmatmat_mpi(&a, world, false, MpiOptions::default()).unwrap();
    let y2 = l2.try_matmat(x.as_ref()).unwrap();
    let lop = MpiLop::<f64>::new(world, &path, None, false, Some((m, n))).unwrap();
    let xl = random::mat::<f64>(n, size, 3);
    let yl = lop.matmat(&xl);
    if rank == 0 {
        assert_close(y.as_ref(), (&a * &x).as_ref(), "Method::Mpi with a pending user message");
        assert_close(y2.as_ref(), (&a * &x).as_ref(), "pmatmat_mpi with a pending user message");
        let dense = Mat::from_fn(m, n, |i, j| f64::value(seed_of("float64_c_stored.npz", "m7x5"), i, j));
        assert_close(yl.as_ref(), (&dense * &xl).as_ref(), "MpiLop with a pending user message");
        for r in 1..size {
            for tag in [7, 8] {
                let (got, _) = world.process_at_rank(r as i32).receive_vec_with_tag::<f64>(tag);
                assert_eq!(got, message, "the program's message from rank {r} (tag {tag})");
            }
        }
    }
}

/// Item 3: settings that differ between ranks are the same error on every
/// rank, naming the setting, instead of a hang or an MPI abort.
fn settings_that_differ_are_an_error_on_every_rank(world: &SimpleCommunicator) {
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let odd = rank == size - 1 && size > 1;
    let a = random::mat::<f64>(6, 4, 1);
    let x = random::mat::<f64>(4, 3, 0);
    let base = MpiOptions::default();
    #[track_caller]
    fn expect_disagreement<T>(got: Result<T, Error>, needle: &str, size: usize) {
        match got {
            Err(Error::Mpi(msg)) if size > 1 => assert!(msg.contains("disagree") && msg.contains(needle), "{msg}"),
            Err(e) => panic!("{needle}: unexpected error {e}"),
            Ok(_) => assert_eq!(size, 1, "{needle}: the ranks differ, yet the product succeeded"),
        }
    }
    let cases: [(&str, MpiOptions, usize); 3] = [
        ("gather", if odd { base.gather(Gather::All) } else { base }, 0),
        ("max_message_bytes", if odd { base.max_message_bytes(16) } else { base }, 0),
        ("min_parallel_work", base, if odd { usize::MAX } else { 0 }),
    ];
    for (what, options, work) in cases {
        let l = pmatmat_mpi(&a, world, false, options).unwrap().with_min_parallel_work(work);
        expect_disagreement(l.try_matmat(x.as_ref()), what, size);
        expect_disagreement(l.try_rmatmat(random::mat::<f64>(6, 3, 0).as_ref()), what, size);
    }
    let path = fixtures::fixture("float64_c_stored.npz");
    let lop = |bcast_op: bool, options: MpiOptions| {
        MpiLop::<f64>::new(world, &path, None, bcast_op, None).unwrap().with_options(options)
    };
    let try_product = |l: &MpiLop<f64>| expect_panic(|| l.matmat(&random::mat::<f64>(5, 3, 0)));
    for (what, l) in [
        ("bcast_op", lop(odd, base)),
        ("gather", lop(true, if odd { base.gather(Gather::All) } else { base })),
        ("max_message_bytes", lop(true, if odd { base.max_message_bytes(8) } else { base })),
    ] {
        match try_product(&l) {
            Err(msg) => {
                assert!(size > 1 && msg.contains("disagree") && msg.contains(what), "MpiLop {what}: {msg}");
            }
            Ok(_) => assert_eq!(size, 1, "MpiLop {what}: the ranks differ, yet the product succeeded"),
        }
    }
    // Operators whose settings agree still work, on the same communicator.
    let l = pmatmat_mpi(&a, world, false, base.gather(Gather::All)).unwrap();
    assert_close(l.try_matmat(x.as_ref()).unwrap().as_ref(), (&a * &x).as_ref(), "after disagreements");
}

#[track_caller]
fn assert_thread_error(got: Result<Mat<f64>, Error>, failing: usize, needle: &str) {
    match got {
        Err(Error::Rank { rank, message, source: None }) => {
            assert_eq!(rank, failing, "{message}");
            assert!(message.contains(needle), "{message}: no {needle:?}");
        }
        other => panic!("expected the error of rank {failing} ({needle}), got {other:?}"),
    }
}

/// Item 5 (and 2): a product called from a thread other than the one that
/// built the operator (here with `Threading::Single`, a thread MPI does not
/// allow), on one rank only, is an error on every rank, not a hang of the
/// others; the operator is then unusable on every rank, and a new one works.
fn a_product_from_another_thread_fails_on_every_rank(world: &SimpleCommunicator) {
    // main() initializes MPI with Threading::Single (rsmpi's `initialize`).
    assert_eq!(mpi::environment::threading_support(), mpi::Threading::Single);
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let last = size - 1;
    let a = random::mat::<f64>(6, 4, 1);
    let x = random::mat::<f64>(4, 3, 0);
    let build = || pmatmat_mpi(&a, world, false, MpiOptions::default().gather(Gather::All)).unwrap();
    let on_another_thread =
        |l: &Pmatmat<f64, &Mat<f64>>| std::thread::scope(|s| s.spawn(|| l.try_matmat(x.as_ref())).join().unwrap());
    let thread = "thread other than the one that built it";
    // The last rank calls from another thread; the others from the building thread.
    let l = build();
    let first = if rank == last { on_another_thread(&l) } else { l.try_matmat(x.as_ref()) };
    let second = l.try_matmat(x.as_ref());
    assert_thread_error(first, last, thread);
    assert_thread_error(second, last, thread);
    assert_thread_error(l.try_matmat(x.as_ref()), last, "build a new one");
    // Every rank from another thread: each refuses its own, and the next product tells all.
    let l = build();
    assert_thread_error(on_another_thread(&l), rank, thread);
    assert_thread_error(l.try_matmat(x.as_ref()), 0, thread);
    // The last rank's misuse is told by its drop.
    let l = build();
    let err = if rank == last {
        let err = on_another_thread(&l);
        drop(l);
        err
    } else {
        l.try_matmat(x.as_ref())
    };
    assert_thread_error(err, last, thread);
    // A new operator works.
    assert_close(build().try_matmat(x.as_ref()).unwrap().as_ref(), (&a * &x).as_ref(), "a new operator");
}

/// A product of an operator called from inside one of its own products
/// (here its user operator calls it) fails at once without MPI; the outer
/// product completes, and the next one is an error on every rank.
fn a_nested_product_fails_on_every_rank(world: &SimpleCommunicator) {
    type Inner = Box<dyn Fn() -> Result<Mat<f64>, Error> + Send + Sync>;
    static INNER: OnceLock<Inner> = OnceLock::new();
    static NESTED: Mutex<Option<String>> = Mutex::new(None);
    let a = random::mat::<f64>(6, 4, 1);
    let (a1, a2) = (a.clone(), a.clone());
    let op = from_matmat(
        6,
        4,
        move |out: faer::MatMut<'_, f64>, x: MatRef<'_, f64>| {
            if let Some(inner) = INNER.get() {
                let got = inner();
                *NESTED.lock().unwrap() = Some(got.map(|_| String::new()).unwrap_or_else(|e| e.to_string()));
            }
            matmul(out, Accum::Replace, &a1, x, 1.0, Par::Seq)
        },
        move |out: faer::MatMut<'_, f64>, y: MatRef<'_, f64>| {
            matmul(out, Accum::Replace, a2.adjoint(), y, 1.0, Par::Seq)
        },
    );
    // The operator refers to itself: leaked for the test.
    let l: &'static _ =
        Box::leak(Box::new(pmatmat_mpi(op, world, false, MpiOptions::default().gather(Gather::All)).unwrap()));
    let x = random::mat::<f64>(4, 3, 0);
    let x2 = x.clone();
    assert!(INNER.set(Box::new(move || l.try_matmat(x2.as_ref()))).is_ok());
    let outer = l.try_matmat(x.as_ref()).expect("the outer product");
    assert_close(outer.as_ref(), (&a * &x).as_ref(), "the outer product");
    let nested = NESTED.lock().unwrap().take().expect("the operator ran");
    assert!(nested.contains("from inside one of its own products"), "{nested}");
    assert_thread_error(l.try_matmat(x.as_ref()), 0, "from inside one of its own products");
}

/// Item 6: a panic in one rank's block of a product (a user's operator) is
/// the same error on every rank, and the operator stays usable.
fn a_panic_on_one_rank_is_an_error_on_every_rank(world: &SimpleCommunicator) {
    let last = world.size() as usize - 1;
    let a = random::mat::<f64>(6, 4, 1);
    let (a1, a2) = (a.clone(), a.clone());
    let op = from_matmat(
        6,
        4,
        move |out: faer::MatMut<'_, f64>, x: MatRef<'_, f64>| {
            if PANIC.load(Ordering::SeqCst) && rank_of_world() == last {
                panic!("deliberate panic in a user operator");
            }
            matmul(out, Accum::Replace, &a1, x, 1.0, Par::Seq)
        },
        move |out: faer::MatMut<'_, f64>, y: MatRef<'_, f64>| {
            matmul(out, Accum::Replace, a2.adjoint(), y, 1.0, Par::Seq)
        },
    );
    let x = random::mat::<f64>(4, 5, 0);
    for gather in [Gather::Root, Gather::All] {
        for min_work in [0, usize::MAX] {
            let l = pmatmat_mpi(&op, world, false, MpiOptions::default().gather(gather))
                .unwrap()
                .with_min_parallel_work(min_work);
            PANIC.store(true, Ordering::SeqCst);
            let err = l.try_matmat(x.as_ref()).unwrap_err();
            PANIC.store(false, Ordering::SeqCst);
            let Error::Rank { rank, message, .. } = &err else { panic!("{err}") };
            assert_eq!(*rank, last, "{err}");
            assert!(message.contains("deliberate panic in a user operator"), "{err}");
            let y = l.try_matmat(x.as_ref()).unwrap();
            if gather == Gather::All || world.rank() == 0 || min_work == usize::MAX {
                assert_close(y.as_ref(), (&a * &x).as_ref(), "the product after a panic");
            }
        }
    }
}

/// Every product with at least two columns is split over the ranks.
fn products_are_split_over_ranks_by_default(world: &SimpleCommunicator) {
    let size = world.size() as usize;
    let l = pmatmat_mpi(
        common::who_ran(|| rank_of_world() as f64),
        world,
        false,
        MpiOptions::default().gather(Gather::All),
    )
    .unwrap();
    assert_eq!(common::workers_seen(&l, 8), size.min(8), "ranks that computed a block of 8 columns");
}

/// An operator that adds its product into `out` (instead of writing it)
/// gets zeros to add into: three products in a row, one scratch buffer and
/// one output reused, each equal to the dense reference.
fn accumulating_operators_get_zeroed_blocks(world: &SimpleCommunicator) {
    let a = random::mat::<f64>(5, 7, 1);
    let (a1, a2) = (a.clone(), a.clone());
    let acc = from_matmat(
        5,
        7,
        move |mut out: faer::MatMut<'_, f64>, x: MatRef<'_, f64>| {
            for j in 0..x.ncols() {
                for i in 0..out.nrows() {
                    out[(i, j)] += (0..x.nrows()).map(|l| a1[(i, l)] * x[(l, j)]).sum::<f64>();
                }
            }
        },
        move |out: faer::MatMut<'_, f64>, y: MatRef<'_, f64>| matmul(out, Accum::Add, a2.adjoint(), y, 1.0, Par::Seq),
    );
    let file = Mat::from_fn(7, 5, |i, j| f64::value(seed_of("float64_c_stored.npz", "m7x5"), i, j));
    let all = MpiOptions::default().gather(Gather::All);
    let lop = MpiLop::<f64>::new(world, fixtures::fixture("float64_c_stored.npz"), None, false, None)
        .unwrap()
        .with_options(all);
    let p = pmatmat_mpi(&acc, world, false, all).unwrap();
    check_three_products("pmatmat_mpi(acc)", &p, a.as_ref());
    check_three_products("MpiLop ∘ pmatmat_mpi(acc)", &(&lop).compose(&p), (&file * &a).as_ref());
    check_three_products("pmatmat_mpi(acc) ∘ MpiLop", &(&p).compose(&lop), (&a * &file).as_ref());
}

/// Three products of `l` in a row (and three of its adjoint) with one
/// scratch buffer and one output, each against `dense`.
fn check_three_products<L: BiLinOp<f64>>(what: &str, l: &L, dense: MatRef<'_, f64>) {
    for mode in [Mode::Apply, Mode::Adjoint] {
        let (m, n) = mode.dims_of(l);
        let k = 5;
        let mut buf = faer::dyn_stack::MemBuffer::new(mode.scratch(l, k, Par::Seq));
        let mut out = Mat::<f64>::zeros(m, k);
        for seed in 0..3 {
            let x = random::mat::<f64>(n, k, seed);
            mode.apply(l, out.as_mut(), x.as_ref(), Par::Seq, faer::dyn_stack::MemStack::new(&mut buf));
            let want = reference(dense, mode, x.as_ref());
            assert_close(out.as_ref(), want.as_ref(), &format!("{what}, {mode:?}, product {seed}"));
        }
    }
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
                    let bytes = max_message.saturating_mul(size_of::<T>());
                    let l = MpiLop::<T>::new(world, &path, Some(&member), bcast_op, Some((m, n)))
                        .unwrap()
                        .with_options(MpiOptions::default().gather(gather).max_message_bytes(bytes));
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
    let aligned = MpiLop::<f64>::new(world, fixtures::fixture("aligned.npz"), Some("f64c"), true, None).unwrap();
    assert!(aligned.is_mapped(), "stored, aligned f64 data is viewed in place");
    // np.savez leaves f64 data unaligned: a copy of this rank's rows.
    let unaligned = MpiLop::<f64>::new(world, fixtures::fixture("float64_c_stored.npz"), None, true, None).unwrap();
    assert!(!unaligned.is_mapped());
    assert_eq!(unaligned.member(), Some("m7x5"));
    let compressed =
        MpiLop::<f64>::new(world, fixtures::fixture("float64_f_compressed.npz"), None, true, None).unwrap();
    assert!(!compressed.is_mapped());
    assert_eq!(
        compressed.local_dense().expect("dense").nrows(),
        compressed.local_rows().len(),
        "only this rank's rows"
    );
}

/// `MpiLop::new` must fail on every rank with the same error; the failing
/// rank keeps the typed `NpzError` (`typed`), the others have its message.
#[track_caller]
fn fails_everywhere<T: Scalar>(
    world: &SimpleCommunicator,
    path: std::path::PathBuf,
    member: Option<&str>,
    shape: Option<(usize, usize)>,
    failing_rank: usize,
    needles: &[&str],
) {
    let err = MpiLop::<T>::new(world, &path, member, true, shape).unwrap_err();
    let Error::Rank { rank, message, source } = &err else { panic!("{err}") };
    assert_eq!(*rank, failing_rank, "{err}");
    for needle in needles {
        assert!(message.contains(needle), "{err}: no {needle:?}");
    }
    // Only a shape other than the one asked for is not the file's error.
    let typed = shape.is_none();
    if world.rank() as usize == failing_rank && typed {
        let npz = source.as_ref().expect("the failing rank keeps the typed error");
        assert_eq!(npz.to_string(), *message);
        assert!(std::error::Error::source(&err).is_some_and(|s| s.is::<lazylinop::npz::NpzError>()));
    } else {
        assert!(source.is_none(), "{err}: only the failing rank has the typed error");
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
    let l = MpiLop::<f64>::new(world, &good, None, true, None)
        .unwrap()
        .with_options(MpiOptions::default().gather(Gather::All));
    assert_eq!((l.nrows(), l.ncols()), (7, 5));
}

/// A copy of `bytes` with byte `at` flipped, written by rank 0 to a file
/// every rank of `world` then sees.
fn damaged_copy(world: &SimpleCommunicator, bytes: &[u8], at: usize, name: &str) -> std::path::PathBuf {
    use mpi::traits::Root;
    let mut pid = std::process::id();
    world.process_at_rank(0).broadcast_into(&mut pid);
    let path = std::env::temp_dir().join(format!("lazylinop-mpi-{pid}-{name}"));
    if world.rank() == 0 {
        let mut bytes = bytes.to_vec();
        bytes[at] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
    }
    world.barrier();
    path
}

fn a_damaged_member_is_an_error_on_every_rank(world: &SimpleCommunicator) {
    use mpi::traits::Root;
    // A stored, aligned member (viewed in place on every rank), one data byte flipped.
    let a = random::mat::<f64>(40, 30, 5);
    let mut pid = std::process::id();
    world.process_at_rank(0).broadcast_into(&mut pid);
    let good = std::env::temp_dir().join(format!("lazylinop-mpi-{pid}-good.npz"));
    if world.rank() == 0 {
        lazylinop::npz::save(&good, "a", a.as_ref()).unwrap();
    }
    world.barrier();
    let bytes = std::fs::read(&good).unwrap();
    let l = MpiLop::<f64>::new(world, &good, None, true, None).unwrap();
    assert!(l.is_mapped());
    // The middle of the file is in the data (9600 of its bytes).
    let bad = damaged_copy(world, &bytes, bytes.len() / 2, "stored.npz");
    let err = MpiLop::<f64>::new(world, &bad, None, true, None).unwrap_err();
    let Error::Rank { message, .. } = &err else { panic!("{err}") };
    assert!(message.contains("CRC"), "{err}");
    // Trusted: no checksum, the damaged value is read as it is.
    let l = MpiLop::<f64>::new_trusted(world, &bad, None, true, None).unwrap();
    assert_eq!((l.nrows(), l.ncols()), (40, 30));
    // A deflated member damaged near its end: only the last rank's rows reach
    // there, and its verdict is every rank's.
    let bytes = std::fs::read(fixtures::fixture("float64_c_compressed.npz")).unwrap();
    let bad = damaged_copy(world, &bytes, 745 + 900, "deflated.npz");
    let err = MpiLop::<f64>::new(world, &bad, Some("m33x17"), true, None).unwrap_err();
    assert!(matches!(err, Error::Rank { .. }), "{err}");
    world.barrier();
    if world.rank() == 0 {
        for name in ["good.npz", "stored.npz", "deflated.npz"] {
            let _ = std::fs::remove_file(std::env::temp_dir().join(format!("lazylinop-mpi-{pid}-{name}")));
        }
    }
}

fn lsmr_runs_on_every_rank_with_an_mpilop(world: &SimpleCommunicator) {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::solvers::Solve;
    use faer::matrix_free::IdentityPrecond;
    use faer::matrix_free::lsmr::{LsmrParams, lsmr, lsmr_scratch};
    // Regularized least squares, min ‖[εA; I]·x - [b; 0]‖, with A (33×17, rank 2: the
    // fixture's formula) distributed and every rank iterating.
    let a = MpiLop::<f64>::new(world, fixtures::fixture("float64_f_stored.npz"), Some("m33x17"), false, None)
        .unwrap()
        .with_options(MpiOptions::default().gather(Gather::All));
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

// ---------------------------------------------------------------------------------------------
// Sparse MpiLop (issue 14): the scipy sparse fixtures of `tests/data/sparse/` (written by
// `scripts/make_sparse_fixtures.py`, whose manifest carries each matrix densely), and files
// written by `lazylinop::npz::save_sparse`.
// ---------------------------------------------------------------------------------------------

fn sparse_fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sparse").join(name)
}

fn sparse_manifest() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(sparse_fixture("manifest.json")).unwrap()).unwrap()
}

/// The scalar types, built exactly from the sparse manifest's numbers.
trait Exact: Scalar {
    fn from_pair(re: f64, im: f64) -> Self;
}
impl Exact for f32 {
    fn from_pair(re: f64, _: f64) -> Self {
        re as f32
    }
}
impl Exact for f64 {
    fn from_pair(re: f64, _: f64) -> Self {
        re
    }
}
impl Exact for faer::c32 {
    fn from_pair(re: f64, im: f64) -> Self {
        faer::c32::new(re as f32, im as f32)
    }
}
impl Exact for faer::c64 {
    fn from_pair(re: f64, im: f64) -> Self {
        faer::c64::new(re, im)
    }
}

/// `(nrows, ncols)` of a manifest entry.
fn manifest_shape(e: &serde_json::Value) -> (usize, usize) {
    let s = e["shape"].as_array().unwrap();
    (s[0].as_u64().unwrap() as usize, s[1].as_u64().unwrap() as usize)
}

/// The manifest's dense matrix (row-major, complex entries as `[re, im]`), as `T`.
fn manifest_dense<T: Exact>(e: &serde_json::Value) -> Mat<T> {
    let (m, n) = manifest_shape(e);
    let rows = e["dense"].as_array().unwrap();
    Mat::from_fn(m, n, |i, j| {
        let x = &rows[i][j];
        match x.as_array() {
            Some(pair) => T::from_pair(pair[0].as_f64().unwrap(), pair[1].as_f64().unwrap()),
            None => T::from_pair(x.as_f64().unwrap(), 0.0),
        }
    })
}

/// Every rank's `values`, in rank order.
fn all_gather_u64<const N: usize>(world: &SimpleCommunicator, values: [u64; N]) -> Vec<[u64; N]> {
    let mut all = vec![0u64; N * world.size() as usize];
    world.all_gather_into(&values[..], &mut all[..]);
    all.chunks_exact(N).map(|c| c.try_into().unwrap()).collect()
}

/// FNV-1a of `s`: to compare the ranks' messages with one all-gather.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Asserts that the ranges tile `0..n`: every index in exactly one of them.
#[track_caller]
fn assert_tiles(ranges: &[std::ops::Range<usize>], n: usize, what: &str) {
    let mut sorted = ranges.to_vec();
    sorted.sort_by_key(|r| (r.start, r.end));
    assert!(sorted.iter().all(|r| r.start <= r.end), "{what}: {ranges:?}");
    assert_eq!(sorted.first().map_or(0, |r| r.start), 0, "{what}: {ranges:?} do not start at 0");
    assert_eq!(sorted.last().map_or(0, |r| r.end), n, "{what}: {ranges:?} do not end at {n}");
    for w in sorted.windows(2) {
        assert_eq!(w[0].end, w[1].start, "{what}: {ranges:?} overlap or leave a gap");
    }
}

/// The layout of a sparse operator across the ranks: its format, the blocks of the matrix the
/// ranks hold tile it without overlap (all the columns of a CSR, all the rows of a CSC), their
/// nonzeros add up to `nnz` and each rank's share is at most the ideal share plus the largest
/// row (column): `indptr` is the file's.
fn check_sparse_layout<T: Scalar>(
    world: &SimpleCommunicator,
    l: &MpiLop<T>,
    format: lazylinop::sparse::Format,
    indptr: &[u64],
    what: &str,
) {
    use lazylinop::sparse::Format;
    let (m, n) = (l.nrows(), l.ncols());
    let p = world.size() as usize;
    assert_eq!(l.format(), Some(format), "{what}: format");
    assert!(l.local_dense().is_none(), "{what}: a sparse operator has no dense block");
    let (rows, cols) = (l.local_rows(), l.local_cols());
    let nnz_here = l.local_nnz().unwrap_or_else(|| panic!("{what}: a sparse operator counts its nonzeros"));
    let all = all_gather_u64(world, [rows.start, rows.end, cols.start, cols.end, nnz_here].map(|v| v as u64));
    let all_rows: Vec<_> = all.iter().map(|a| a[0] as usize..a[1] as usize).collect();
    let all_cols: Vec<_> = all.iter().map(|a| a[2] as usize..a[3] as usize).collect();
    let (major, minor) = match format {
        Format::Csr => (&all_rows, &all_cols),
        Format::Csc => (&all_cols, &all_rows),
    };
    let (major_dim, minor_dim) = if format == Format::Csr { (m, n) } else { (n, m) };
    assert_tiles(
        major,
        major_dim,
        &format!("{what}: the ranks' {}", if format == Format::Csr { "rows" } else { "columns" }),
    );
    assert!(
        minor.iter().all(|r| *r == (0..minor_dim)),
        "{what}: every rank holds the whole other dimension: {minor:?}"
    );
    assert_eq!(indptr.len(), major_dim + 1, "{what}: the manifest's indptr");
    let nnz = indptr[major_dim];
    let shares: Vec<u64> = all.iter().map(|a| a[4]).collect();
    assert_eq!(shares.iter().sum::<u64>(), nnz, "{what}: the ranks' nonzeros {shares:?} add up to nnz");
    let widest = indptr.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    for (r, (share, block)) in shares.iter().zip(major).enumerate() {
        assert_eq!(*share, indptr[block.end] - indptr[block.start], "{what}: rank {r}'s nonzeros for {block:?}");
        assert!(
            *share as f64 <= nnz as f64 / p as f64 + widest as f64,
            "{what}: rank {r} holds {share} of {nnz} nonzeros ({p} ranks, widest {widest}): {shares:?}"
        );
    }
}

fn sparse_case<T: Exact>(world: &SimpleCommunicator, e: &serde_json::Value) {
    use lazylinop::sparse::Format;
    let rank = world.rank() as usize;
    let file = e["file"].as_str().unwrap();
    let (m, n) = manifest_shape(e);
    let dense = manifest_dense::<T>(e);
    let format = if e["format"] == "csr" { Format::Csr } else { Format::Csc };
    let indptr: Vec<u64> = e["indptr"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let path = sparse_fixture(file);
    for bcast_op in [true, false] {
        for gather in [Gather::Root, Gather::All] {
            for max_message in [usize::MAX, 5] {
                let bytes = max_message.saturating_mul(size_of::<T>());
                let what = format!("sparse MpiLop {file} {m}×{n}, bcast_op {bcast_op}, {gather:?}, max {max_message}");
                let l = MpiLop::<T>::new(world, &path, None, bcast_op, Some((m, n)))
                    .unwrap_or_else(|err| panic!("{what}: {err}"))
                    .with_options(MpiOptions::default().gather(gather).max_message_bytes(bytes));
                assert_eq!((l.nrows(), l.ncols()), (m, n), "{what}");
                if bcast_op && gather == Gather::Root && max_message == usize::MAX {
                    check_sparse_layout(world, &l, format, &indptr, &what);
                    // A sparse share is the rank's own copy, split for the halo.
                    assert!(!l.is_mapped(), "{what}: a sparse share is copied into its blocks");
                }
                check_mpilop(&l, dense.as_ref(), gather == Gather::All || rank == 0, bcast_op, &what);
                if !bcast_op && gather == Gather::All && max_message == usize::MAX {
                    // The local products on two threads of each rank (the sparse kernel's own split).
                    for p in Mode::ALL {
                        let x = random::mat::<T>(p.dims((m, n)).1, 16, 9);
                        let got = product(&l, p, x.as_ref(), Par::rayon(2));
                        let want = reference(dense.as_ref(), p, x.as_ref());
                        assert_close(got.as_ref(), want.as_ref(), &format!("{what}, {p:?}, Par::rayon(2)"));
                    }
                }
            }
        }
    }
}

/// Every valid sparse fixture, every product, both gathers, both `bcast_op`, whole and
/// chunked messages, against the manifest's dense matrix; the ranks' blocks.
fn sparse_mpilop_products_match_the_manifest(world: &SimpleCommunicator) {
    let manifest = sparse_manifest();
    let valid = manifest["valid"].as_array().unwrap();
    assert!(valid.len() >= 56, "the manifest lists {} valid files", valid.len());
    for e in valid {
        match e["dtype"].as_str().unwrap() {
            "float32" => sparse_case::<f32>(world, e),
            "float64" => sparse_case::<f64>(world, e),
            "complex64" => sparse_case::<faer::c32>(world, e),
            "complex128" => sparse_case::<faer::c64>(world, e),
            other => panic!("unexpected dtype {other} in the sparse manifest"),
        }
    }
}

/// What the message of the error for a malformed fixture must say, by the manifest's reason.
fn malformed_needles(reason: &str) -> Vec<String> {
    let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect();
    match reason {
        // Another rank's view of an `indptr` fault may name another entry: the member and an entry.
        "indptr_not_monotonic" | "indptr_last_exceeds_nnz" | "indptr_entry_exceeds_nnz" | "indptr_last_below_nnz" => {
            v(&["member indptr", "indptr["])
        }
        "indptr_first_nonzero" => v(&["member indptr", "indptr[0] = 1", "must be 0"]),
        "index_out_of_range" => v(&["member indices", "out of range"]),
        "negative_index" => v(&["member indices", "= -1 is out of range"]),
        "data_indices_length_mismatch" => v(&["indices holds", "but data"]),
        "shape_indptr_mismatch" => v(&["indptr has 14 entries", "shape"]),
        "shape_not_2d" | "negative_shape" => v(&["member shape"]),
        "data_not_1d" => v(&["member data", "1-D"]),
        "index_dtype:int8" | "index_dtype:float64" => v(&["index dtype", "int32 or int64"]),
        "index_dtype_mismatch" => v(&["indices are int32 but indptr is int64"]),
        "bad_crc" => v(&["member data", "CRC-32"]),
        "truncated" => v(&["truncated"]),
        _ => {
            if let Some(member) = reason.strip_prefix("missing_member:") {
                vec![format!("member {member}"), "no such member".into()]
            } else if reason.starts_with("data_dtype:") {
                v(&["member data", "unsupported dtype"])
            } else if let Some(name) = reason.strip_prefix("unknown_format:") {
                vec![format!("{name:?}"), "only csr and csc".into()]
            } else if let Some(name) = reason.strip_prefix("unsupported_format:") {
                vec![format!("sparse format {name}"), ".tocsr()".into()]
            } else {
                panic!("unknown reason {reason} in the sparse manifest")
            }
        }
    }
}

/// `MpiLop::new` on `path` fails on every rank with the same [`Error::Rank`] (same rank, same
/// message), whose message names the file and holds every needle; the failing rank keeps the
/// typed error. Returns the failing rank.
#[track_caller]
fn sparse_fails_everywhere(
    world: &SimpleCommunicator,
    path: &std::path::Path,
    needles: &[String],
    what: &str,
) -> usize {
    let err = match MpiLop::<f64>::new(world, path, None, true, None) {
        Ok(l) => panic!("{what}: opened as a {}×{} operator", l.nrows(), l.ncols()),
        Err(err) => err,
    };
    let Error::Rank { rank, message, source } = &err else { panic!("{what}: not a rank's error: {err}") };
    let all = all_gather_u64(world, [*rank as u64, fnv(message)]);
    assert!(all.iter().all(|a| *a == all[0]), "{what}: the ranks report different errors ({all:?}); here: {err}");
    assert!(*rank < world.size() as usize, "{what}: {err}");
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(message.contains(name), "{what}: {err}: the message does not name the file");
    for needle in needles {
        assert!(message.contains(needle.as_str()), "{what}: {err}: no {needle:?}");
    }
    if world.rank() as usize == *rank {
        let npz = source.as_ref().unwrap_or_else(|| panic!("{what}: the failing rank keeps the typed error: {err}"));
        assert_eq!(npz.to_string(), *message, "{what}");
    } else {
        assert!(source.is_none(), "{what}: {err}: only the failing rank has the typed error");
    }
    *rank
}

/// Every malformed sparse fixture is the same error on every rank, naming the file and the
/// reason (other scipy formats: the format and `.tocsr()`); no hang, no panic, and the ranks
/// still work together afterwards.
fn sparse_malformed_files_fail_on_every_rank(world: &SimpleCommunicator) {
    let manifest = sparse_manifest();
    let malformed = manifest["malformed"].as_array().unwrap();
    assert!(malformed.len() >= 33, "the manifest lists {} malformed files", malformed.len());
    let mut reasons = std::collections::BTreeSet::new();
    for e in malformed {
        let (file, reason) = (e["file"].as_str().unwrap(), e["reason"].as_str().unwrap());
        let what = format!("{file} ({reason})");
        let failing = sparse_fails_everywhere(world, &sparse_fixture(file), &malformed_needles(reason), &what);
        reasons.insert(reason.split(':').next().unwrap().to_owned());
        if world.rank() == 0 && std::env::var_os("LAZYLINOP_TEST_VERBOSE").is_some() {
            println!("  {what}: rank {failing}");
        }
    }
    assert!(reasons.contains("unsupported_format") && reasons.contains("bad_crc"), "{reasons:?}");
    // A sparse file takes no member name (its members are scipy's).
    let good = sparse_fixture("csr_float64_int32_aligned.npz");
    let err = MpiLop::<f64>::new(world, &good, Some("data"), true, None).map(|_| ()).unwrap_err();
    let all = all_gather_u64(world, [fnv(&err.to_string())]);
    assert!(all.iter().all(|a| *a == all[0]), "a member for a sparse file: the ranks differ ({err})");
    assert!(err.to_string().contains("csr_float64_int32_aligned.npz"), "{err}");
    // A shape other than the file's, and a dtype other than T's: the same error everywhere.
    for (l, needles) in [
        (MpiLop::<f64>::new(world, &good, None, true, Some((11, 13))).map(|_| ()), ["13×11", "11×13"]),
        (MpiLop::<f32>::new(world, &good, None, true, None).map(|_| ()), ["float64", "float32"]),
    ] {
        let err = l.unwrap_err();
        let Error::Rank { message, .. } = &err else { panic!("{err}") };
        let all = all_gather_u64(world, [fnv(message)]);
        assert!(all.iter().all(|a| *a == all[0]), "the ranks differ ({err})");
        for needle in needles {
            assert!(
                message.contains(needle) && message.contains("csr_float64_int32_aligned.npz"),
                "{err}: no {needle}"
            );
        }
    }
    // Still fine afterwards.
    let l = MpiLop::<f64>::new(world, &good, None, true, None)
        .unwrap()
        .with_options(MpiOptions::default().gather(Gather::All));
    let x = random::mat::<f64>(l.ncols(), 3, 0);
    let _ = l.matmat(&x);
}

/// LSMR on every rank on a sparse `MpiLop` inside a lazy Tikhonov composition,
/// `min ‖[A; λI]·x - [b; 0]‖`, against a dense solve of the normal equations
/// `(AᴴA + λ²I)·x = Aᴴb`, for a CSR and a CSC fixture.
fn lsmr_runs_on_every_rank_with_a_sparse_mpilop(world: &SimpleCommunicator) {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::solvers::Solve;
    use faer::matrix_free::IdentityPrecond;
    use faer::matrix_free::lsmr::{LsmrParams, lsmr, lsmr_scratch};
    let manifest = sparse_manifest();
    for file in ["csr_float64_int32_aligned.npz", "csc_float64_int64_deflated.npz", "csr_skewed.npz"] {
        let e = manifest["valid"].as_array().unwrap().iter().find(|e| e["file"] == file).unwrap();
        let (m, n) = manifest_shape(e);
        let dense = manifest_dense::<f64>(e);
        let a = MpiLop::<f64>::new(world, sparse_fixture(file), None, false, None)
            .unwrap()
            .with_options(MpiOptions::default().gather(Gather::All));
        assert!(a.format().is_some(), "{file} is sparse");
        let lambda = 0.5;
        let l = vstack(vec![DynOp::new(a), DynOp::new(eye(n, n, 0).scale(lambda))]);
        let mut b = Mat::zeros(m + n, 1);
        b.as_mut().subrows_mut(0, m).copy_from(random::mat::<f64>(m, 1, 5));
        let precond = IdentityPrecond { dim: n };
        let mut x = Mat::zeros(n, 1);
        let params = LsmrParams { abs_tolerance: 0.0, rel_tolerance: 1e-13, max_iters: 500, ..Default::default() };
        let mut buf = MemBuffer::new(lsmr_scratch(precond, &l, 1, Par::Seq));
        lsmr(x.as_mut(), precond, &l, b.as_ref(), params, |_| {}, Par::Seq, MemStack::new(&mut buf))
            .unwrap_or_else(|e| panic!("LSMR on {file}: {e:?}"));
        let normal = dense.adjoint() * &dense + Mat::<f64>::identity(n, n) * (lambda * lambda);
        let want = normal.partial_piv_lu().solve(dense.adjoint() * b.subrows(0, m));
        let err = (&x - &want).norm_max() / want.norm_max();
        assert!(want.norm_max() > 0.0 && err < 1e-8, "LSMR on the sparse MpiLop of {file}: relative error {err:e}");
        // Every rank has the solution, the same one.
        let all =
            all_gather_u64(world, [fnv(&format!("{:?}", x.col(0).iter().map(|v| v.to_bits()).collect::<Vec<_>>()))]);
        assert!(all.iter().all(|a| *a == all[0]), "{file}: the ranks' LSMR solutions differ");
    }
}

/// A random `m × n` sparse matrix with unsorted and repeated indices in some rows, empty
/// rows, as CSR compressed slices `(indptr, indices, values)` and its dense matrix.
fn random_csr<T: Scalar, I: lazylinop::npz::SparseIndex>(
    m: usize,
    n: usize,
    seed: u64,
) -> (Vec<I>, Vec<I>, Vec<T>, Mat<T>) {
    let values = random::mat::<T>(m * 8 + 1, 1, seed);
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let (mut ptr, mut idx, mut val) = (vec![I::truncate(0)], Vec::new(), Vec::new());
    let mut dense = Mat::<T>::zeros(m, n);
    for i in 0..m {
        let count = if n == 0 || i % 5 == 3 { 0 } else { next() % 8 };
        for _ in 0..count {
            let j = next() % n;
            let v = values[(val.len(), 0)];
            idx.push(I::truncate(j));
            val.push(v);
            dense[(i, j)] += v;
        }
        ptr.push(I::truncate(idx.len()));
    }
    (ptr, idx, val, dense)
}

/// `save_sparse` writes a CSR (or CSC) file that every rank maps without a copy, and whose
/// products are the matrix's.
fn saved_round_trip<T: Scalar, I: lazylinop::npz::SparseIndex>(
    world: &SimpleCommunicator,
    format: lazylinop::sparse::Format,
    (m, n): (usize, usize),
) {
    use faer::sparse::{SparseColMatRef, SparseRowMatRef, SymbolicSparseColMatRef, SymbolicSparseRowMatRef};
    use lazylinop::sparse::Format;
    use mpi::traits::Root;
    let rank = world.rank() as usize;
    let seed = (m * 31 + n) as u64;
    // A CSC matrix is the CSR of its transpose.
    let (major, minor) = if format == Format::Csr { (m, n) } else { (n, m) };
    let (ptr, idx, val, dense_major) = random_csr::<T, I>(major, minor, seed);
    let dense = if format == Format::Csr { dense_major } else { dense_major.transpose().to_owned() };
    let mut pid = std::process::id();
    world.process_at_rank(0).broadcast_into(&mut pid);
    let name = format!("lazylinop-mpi-{pid}-saved-{format:?}-{}-{}-{m}x{n}.npz", T::DTYPE, I::DTYPE);
    let path = std::env::temp_dir().join(name);
    if rank == 0 {
        match format {
            Format::Csr => {
                let s = SymbolicSparseRowMatRef::new_unsorted_checked(m, n, &ptr, None, &idx);
                lazylinop::npz::save_sparse(&path, SparseRowMatRef::new(s, &val)).unwrap();
            }
            Format::Csc => {
                let s = SymbolicSparseColMatRef::new_unsorted_checked(m, n, &ptr, None, &idx);
                lazylinop::npz::save_sparse(&path, SparseColMatRef::new(s, &val)).unwrap();
            }
        }
    }
    world.barrier();
    let what = format!("save_sparse {format:?} {}×{} {} {}", m, n, T::DTYPE, I::DTYPE);
    for gather in [Gather::Root, Gather::All] {
        let l = MpiLop::<T>::new(world, &path, None, true, Some((m, n)))
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .with_options(MpiOptions::default().gather(gather));
        // save_sparse's members are read in place (then split into the halo's blocks).
        let npz = lazylinop::npz::SparseNpz::open(&path).unwrap();
        let part = npz.part::<T, I>(0..npz.major()).unwrap();
        assert!(part.is_mapped() && !l.is_mapped(), "{what}: save_sparse's members are viewed in place on rank {rank}");
        let indptr: Vec<u64> = ptr.iter().map(|v| v.zx() as u64).collect();
        check_sparse_layout(world, &l, format, &indptr, &what);
        check_mpilop(&l, dense.as_ref(), gather == Gather::All || rank == 0, true, &format!("{what}, {gather:?}"));
    }
    world.barrier();
    if rank == 0 {
        std::fs::remove_file(&path).unwrap();
    }
}

fn save_sparse_round_trips_through_mpilop_in_place(world: &SimpleCommunicator) {
    use lazylinop::sparse::Format;
    for format in [Format::Csr, Format::Csc] {
        for shape in [(37, 23), (2, 9), (0, 4)] {
            saved_round_trip::<f64, u32>(world, format, shape);
            saved_round_trip::<faer::c64, u64>(world, format, shape);
        }
        saved_round_trip::<f32, u64>(world, format, (19, 30));
        saved_round_trip::<faer::c32, u32>(world, format, (30, 19));
    }
}

/// Offset of `needle` in `hay` (the first one).
fn find_bytes(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).expect("the bytes are in the file")
}

/// A damaged sparse member is the same error on every rank, whichever rank's share holds the
/// damage: a flipped bit of an index that stays in range (only the CRC-32 can tell) and of a
/// value, in stored members viewed in place; and a flipped byte in a deflated member (the
/// rank that streams it to its end verifies it).
fn a_damaged_sparse_member_is_an_error_on_every_rank(world: &SimpleCommunicator) {
    use faer::sparse::{SparseRowMatRef, SymbolicSparseRowMatRef};
    use mpi::traits::Root;
    let (m, n) = (40, 30);
    let (ptr, idx, val, _) = random_csr::<f64, u32>(m, n, 7);
    let mut pid = std::process::id();
    world.process_at_rank(0).broadcast_into(&mut pid);
    let good = std::env::temp_dir().join(format!("lazylinop-mpi-{pid}-sparse-good.npz"));
    if world.rank() == 0 {
        let s = SymbolicSparseRowMatRef::new_unsorted_checked(m, n, &ptr, None, &idx);
        lazylinop::npz::save_sparse(&good, SparseRowMatRef::new(s, &val)).unwrap();
    }
    world.barrier();
    let bytes = std::fs::read(&good).unwrap();
    MpiLop::<f64>::new(world, &good, None, true, None).expect("the undamaged file opens");
    let npz = lazylinop::npz::SparseNpz::open(&good).unwrap();
    assert!(npz.part::<f64, u32>(0..npz.major()).unwrap().is_mapped(), "stored, aligned members");
    // Entries at the start, the middle and the end: in the first, a middle and the last rank's share.
    let nnz = val.len();
    for e in [0, nnz / 2, nnz - 1] {
        // The index's low bit, where the flipped index stays below n.
        let at = find_bytes(&bytes, bytemuck::cast_slice(&idx)) + 4 * e;
        let flip = if (idx[e] ^ 1) < n as u32 { 1 } else { 2 };
        let value_at = find_bytes(&bytes, bytemuck::cast_slice(&val)) + 8 * e;
        for (at, bit, member) in [(at, flip, "indices"), (value_at, 0x01, "data")] {
            let mut bad = bytes.clone();
            bad[at] ^= bit;
            let path = std::env::temp_dir().join(format!("lazylinop-mpi-{pid}-sparse-{member}-{e}.npz"));
            if world.rank() == 0 {
                std::fs::write(&path, bad).unwrap();
            }
            world.barrier();
            let what = format!("{member} entry {e} of {nnz} flipped");
            let needles = [format!("member {member}"), "CRC-32".to_string()];
            sparse_fails_everywhere(world, &path, &needles, &what);
        }
    }
    // An `indptr` entry moved by one, still in order (an entry moves to the next row): only the
    // CRC-32 can tell, whichever rank's share of `indptr` it falls in.
    let ptr_at = find_bytes(&bytes, bytemuck::cast_slice(&ptr));
    for target in [1, m / 2, m - 1] {
        let j = (target..m).find(|&j| (ptr[j - 1]..=ptr[j + 1]).contains(&(ptr[j] ^ 1))).expect("a movable entry");
        let mut bad = bytes.clone();
        bad[ptr_at + 4 * j] ^= 1;
        let path = std::env::temp_dir().join(format!("lazylinop-mpi-{pid}-sparse-indptr-{target}.npz"));
        if world.rank() == 0 {
            std::fs::write(&path, bad).unwrap();
        }
        world.barrier();
        let needles = ["member indptr".to_string(), "CRC-32".to_string()];
        sparse_fails_everywhere(world, &path, &needles, &format!("indptr entry {j} of {m} moved by one"));
        // `new_trusted` still verifies `indptr`, as it says.
        let err = MpiLop::<f64>::new_trusted(world, &path, None, true, None).map(|_| ()).unwrap_err();
        let Error::Rank { rank, message, .. } = &err else { panic!("{err}") };
        let all = all_gather_u64(world, [*rank as u64, fnv(message)]);
        assert!(all.iter().all(|a| *a == all[0]), "new_trusted, indptr entry {j} moved: the ranks differ ({err})");
        assert!(message.contains("member indptr") && message.contains("CRC-32"), "new_trusted: {err}");
        world.barrier();
        if world.rank() == 0 {
            let _ = std::fs::remove_file(&path);
        }
    }
    // A deflated data member (scipy's compressed file, data last), one byte flipped near its end.
    let bytes = std::fs::read(sparse_fixture("csr_float64_int32_deflated.npz")).unwrap();
    let central = find_bytes(&bytes, b"PK\x01\x02");
    for back in [8, 40] {
        let path = damaged_copy(world, &bytes, central - back, &format!("sparse-deflated-{back}.npz"));
        let err = MpiLop::<f64>::new(world, &path, None, true, None).map(|_| ()).unwrap_err();
        let Error::Rank { rank, message, .. } = &err else { panic!("{err}") };
        let all = all_gather_u64(world, [*rank as u64, fnv(message)]);
        assert!(all.iter().all(|a| *a == all[0]), "deflated, {back} bytes from the end: the ranks differ ({err})");
        assert!(message.contains("member data"), "{err}");
    }
    world.barrier();
    if world.rank() == 0 {
        let _ = std::fs::remove_file(&good);
        for e in [0, nnz / 2, nnz - 1] {
            for member in ["indices", "data"] {
                let _ = std::fs::remove_file(
                    std::env::temp_dir().join(format!("lazylinop-mpi-{pid}-sparse-{member}-{e}.npz")),
                );
            }
        }
        for back in [8, 40] {
            let _ = std::fs::remove_file(
                std::env::temp_dir().join(format!("lazylinop-mpi-{pid}-sparse-deflated-{back}.npz")),
            );
        }
    }
}

/// Seed of a fixture array, from the manifest.
fn seed_of(file: &str, member: &str) -> u64 {
    fixtures_of("float64").into_iter().find(|a| a.0 == file && a.1 == member).expect("fixture in the manifest").3
}

/// Aborts the process, naming `name`, if it is not dropped within `secs`
/// seconds: a hang fails fast (mpirun then stops the other ranks).
struct Watchdog(#[allow(dead_code)] mpsc::Sender<()>);

fn watchdog(name: &'static str, secs: u64) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs)) {
            eprintln!("test {name} did not finish within {secs} s (a hang?): aborting");
            std::process::abort();
        }
    });
    Watchdog(tx)
}

/// Item 2 (`Threading::Multiple`): one operator used from two threads per
/// rank (the one that built it and another), each with its own operands:
/// products fail, none is wrong, nothing hangs.
fn products_from_two_threads_are_never_wrong(world: &SimpleCommunicator) {
    let a = random::mat::<f64>(40, 30, 1);
    let rank = world.rank();
    for gather in [Gather::All, Gather::Root] {
        let l = pmatmat_mpi(&a, world, false, MpiOptions::default().gather(gather)).unwrap();
        let hammer = |t: u64| {
            let (mut ok, mut failed) = (0, 0);
            for i in 0..100 {
                let x = random::mat::<f64>(30, 4, 1000 * (t + 1) + i);
                match l.try_matmat(x.as_ref()) {
                    Ok(y) => {
                        if gather == Gather::All || rank == 0 {
                            assert_close(y.as_ref(), (&a * &x).as_ref(), &format!("thread {t}, product {i}"));
                        }
                        ok += 1;
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        assert!(msg.contains("thread other than") || msg.contains("build a new one"), "{msg}");
                        failed += 1;
                    }
                }
            }
            (ok, failed)
        };
        let (mine, other) = std::thread::scope(|s| {
            let other = s.spawn(|| hammer(1));
            (hammer(0), other.join().unwrap())
        });
        assert_eq!(other.0, 0, "the other thread's products must all fail");
        if rank == 0 {
            println!("  {gather:?}: (succeeded, failed) on rank 0: building thread {mine:?}, other thread {other:?}");
        }
    }
}

/// Item 4: after `MPI_Finalize`, products are `Error::Mpi` and drops make no
/// MPI call (no abort).
fn finalized(universe: mpi::environment::Universe) {
    let world = universe.world();
    let a = random::mat::<f64>(6, 4, 1);
    let l = pmatmat_mpi(&a, &world, false, MpiOptions::default().gather(Gather::All)).unwrap();
    let m = pmatmat(&a, Method::mpi(), None, false).unwrap();
    let lop = MpiLop::<f64>::new(&world, fixtures::fixture("float64_c_stored.npz"), None, true, None).unwrap();
    let x = random::mat::<f64>(4, 3, 0);
    assert_close(l.try_matmat(x.as_ref()).unwrap().as_ref(), (&a * &x).as_ref(), "before MPI_Finalize");
    let size = world.size() as usize;
    drop(world);
    drop(universe);
    assert!(mpi::is_finalized());
    for l in [&l, &m] {
        let err = l.try_matmat(x.as_ref()).unwrap_err();
        assert!(matches!(&err, Error::Mpi(msg) if msg.contains("finalized")), "{err}");
        assert_eq!(l.nworkers(), size);
        assert!(format!("{l:?}").contains("Pmatmat"));
    }
    let msg = expect_panic(|| lop.matmat(&random::mat::<f64>(5, 2, 0)))
        .expect_err("a product after finalize panics in faer's API");
    assert!(msg.contains("finalized"), "{msg}");
    assert!(format!("{lop:?}").contains("MpiLop"));
    drop(l);
    drop(m);
    drop(lop);
}

type Test = fn(&SimpleCommunicator);

fn main() {
    // Other arguments (cargo test's filters and flags) select the main suite.
    let scenario = std::env::args()
        .nth(1)
        .filter(|a| ["multiple", "finalized", "sigkill"].contains(&a.as_str()))
        .unwrap_or_default();
    let threading = if scenario == "multiple" { mpi::Threading::Multiple } else { mpi::Threading::Single };
    let (universe, level) = mpi::initialize_with_threading(threading).expect("MPI initializes once");
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    // A failure on one rank must not leave the others waiting in a collective.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let deliberate = info.payload().downcast_ref::<&str>().is_some_and(|m| m.contains("deliberate panic"));
        if deliberate || EXPECTING_PANIC.load(Ordering::SeqCst) {
            return;
        }
        default_hook(info);
        if mpi::is_finalized() {
            std::process::abort();
        }
        eprintln!("rank {rank}: test failed, aborting the MPI job");
        SimpleCommunicator::world().abort(1);
    }));
    let tests: &[(&str, Test, u64)] = match scenario.as_str() {
        "" => &[
            ("pmatmat_mpi_products_match_dense_reference", pmatmat_mpi_products_match_dense_reference, 600),
            ("method_mpi_uses_the_world", method_mpi_uses_the_world, 60),
            ("ranks_that_disagree_on_shapes_all_get_the_error", ranks_that_disagree_on_shapes_all_get_the_error, 60),
            ("user_messages_are_never_taken_by_a_product", user_messages_are_never_taken_by_a_product, 60),
            ("settings_that_differ_are_an_error_on_every_rank", settings_that_differ_are_an_error_on_every_rank, 60),
            (
                "a_product_from_another_thread_fails_on_every_rank",
                a_product_from_another_thread_fails_on_every_rank,
                60,
            ),
            ("a_nested_product_fails_on_every_rank", a_nested_product_fails_on_every_rank, 60),
            ("a_panic_on_one_rank_is_an_error_on_every_rank", a_panic_on_one_rank_is_an_error_on_every_rank, 60),
            ("products_are_split_over_ranks_by_default", products_are_split_over_ranks_by_default, 60),
            ("accumulating_operators_get_zeroed_blocks", accumulating_operators_get_zeroed_blocks, 60),
            ("mpilop_products_match_the_file", mpilop_products_match_the_file, 600),
            ("mpilop_maps_aligned_data_and_copies_the_rest", mpilop_maps_aligned_data_and_copies_the_rest, 60),
            ("mpilop_errors_are_collective", mpilop_errors_are_collective, 60),
            ("a_damaged_member_is_an_error_on_every_rank", a_damaged_member_is_an_error_on_every_rank, 60),
            ("lsmr_runs_on_every_rank_with_an_mpilop", lsmr_runs_on_every_rank_with_an_mpilop, 120),
            ("sparse_mpilop_products_match_the_manifest", sparse_mpilop_products_match_the_manifest, 600),
            ("sparse_malformed_files_fail_on_every_rank", sparse_malformed_files_fail_on_every_rank, 120),
            ("lsmr_runs_on_every_rank_with_a_sparse_mpilop", lsmr_runs_on_every_rank_with_a_sparse_mpilop, 120),
            ("save_sparse_round_trips_through_mpilop_in_place", save_sparse_round_trips_through_mpilop_in_place, 300),
            (
                "a_damaged_sparse_member_is_an_error_on_every_rank",
                a_damaged_sparse_member_is_an_error_on_every_rank,
                120,
            ),
        ],
        "sigkill" => {
            let _deadline = watchdog("sigkill", 120);
            dist::a_rank_killed_in_a_product(&world);
            return;
        }
        "multiple" => {
            assert_eq!(level, mpi::Threading::Multiple, "this MPI does not provide Threading::Multiple");
            &[("products_from_two_threads_are_never_wrong", products_from_two_threads_are_never_wrong, 120)]
        }
        "finalized" => {
            let _deadline = watchdog("finalized", 60);
            finalized(universe);
            if rank == 0 {
                println!("test finalized ... ok ({size} ranks)");
            }
            return;
        }
        _ => unreachable!("filtered above"),
    };
    let extra: &[&[(&str, Test, u64)]] = if scenario.is_empty() { &[dist::TESTS, solvers::TESTS] } else { &[] };
    let tests: Vec<_> = tests.iter().chain(extra.iter().flat_map(|t| t.iter())).collect();
    // `LAZYLINOP_MPI_FILTER=text` runs only the tests whose name contains `text`.
    let filter = std::env::var("LAZYLINOP_MPI_FILTER").unwrap_or_default();
    let tests: Vec<_> = tests.into_iter().filter(|t| t.0.contains(filter.as_str())).collect();
    for &(name, test, secs) in tests.iter().copied() {
        let deadline = watchdog(name, secs);
        test(&world);
        drop(deadline);
        if rank == 0 {
            println!("test {name} ... ok ({size} ranks)");
        }
    }
    if rank == 0 {
        println!(
            "test result: ok. {} passed ({size} ranks{})",
            tests.len(),
            if scenario.is_empty() { String::new() } else { format!(", {scenario}") }
        );
    }
}
