//! The thread backend: parallel products equal the dense reference for every
//! scalar type, shape, width (k < nworkers, k = 0), worker count, operator
//! kind, product and use_matvec; errors; panics; concurrent use.

mod common;

use common::{assert_close, check_parallel};
use faer::traits::ComplexField;
use faer::traits::math_utils::from_f64;
use faer::{Mat, MatMut, MatRef};
use lazylinop::parallel::{Error, Method, pmatmat, pmatmat_multithread};
use lazylinop::prelude::*;
use lazylinop::random;

const SHAPES: [(usize, usize); 5] = [(0, 3), (3, 0), (1, 1), (7, 5), (33, 17)];
const WORKERS: [usize; 4] = [1, 2, 3, 7];

fn sparse<T: ComplexField>(m: usize, n: usize) -> (faer::sparse::SparseColMat<usize, T>, Mat<T>) {
    let dense = Mat::from_fn(m, n, |i, j| {
        if (i + 3 * j) % 4 == 0 { from_f64::<T>(1.0 + (i * n + j) as f64) } else { faer::traits::math_utils::zero() }
    });
    let triplets: Vec<_> = (0..n)
        .flat_map(|j| (0..m).map(move |i| (i, j)))
        .filter(|&(i, j)| (i + 3 * j) % 4 == 0)
        .map(|(i, j)| faer::sparse::Triplet::new(i, j, dense[(i, j)].clone()))
        .collect();
    (faer::sparse::SparseColMat::try_new_from_triplets(m, n, &triplets).unwrap(), dense)
}

fn all_kinds<T: lazylinop::parallel::Scalar>() {
    for (s, (m, n)) in SHAPES.into_iter().enumerate() {
        let a = random::mat::<T>(m, n, 100 + s as u64);
        let b = random::mat::<T>(n, n, 200 + s as u64);
        let (sp, sp_dense) = sparse::<T>(m, n);
        // A composite with no parallelism of its own: A·Bᴴ + S, with S sparse.
        let composite = (&a).compose(Adjoint(&b)).plus(&sp);
        let composite_dense = &a * b.adjoint() + &sp_dense;
        let closure = common::closure_of(&a);
        for nworkers in WORKERS {
            for use_matvec in [false, true] {
                let w = Some(nworkers);
                check_parallel(
                    pmatmat(&a, Method::Thread, w, use_matvec).unwrap(),
                    a.as_ref(),
                    &format!("dense {m}×{n}"),
                );
                check_parallel(
                    pmatmat_multithread(&sp, w, use_matvec).unwrap(),
                    sp_dense.as_ref(),
                    &format!("sparse {m}×{n}"),
                );
                check_parallel(
                    pmatmat(&composite, Method::Thread, w, use_matvec).unwrap(),
                    composite_dense.as_ref(),
                    &format!("composite {m}×{n}"),
                );
                check_parallel(
                    pmatmat(&closure, Method::Thread, w, use_matvec).unwrap(),
                    a.as_ref(),
                    &format!("closure {m}×{n}"),
                );
            }
        }
    }
}

#[test]
fn thread_products_match_dense_reference() {
    for_all_types!(all_kinds);
}

#[test]
fn splits_follow_lazylinop() {
    use lazylinop::parallel::split::block;
    assert_eq!((0..4).map(|i| block(10, 4, i)).collect::<Vec<_>>(), [0..3, 3..6, 6..8, 8..10]);
    assert_eq!((0..3).map(|i| block(2, 3, i)).collect::<Vec<_>>(), [0..1, 1..2, 2..2]);
    assert_eq!(block(0, 2, 1), 0..0);
    // Every split covers 0..k exactly, in order.
    for k in 0..40 {
        for p in 1..9 {
            let mut next = 0;
            for i in 0..p {
                let b = block(k, p, i);
                assert_eq!(b.start, next);
                assert!(b.len() == k / p || b.len() == k / p + 1);
                assert_eq!(b.len() == k / p + 1, i < k % p);
                next = b.end;
            }
            assert_eq!(next, k);
        }
    }
}

#[test]
fn pmatmat_wraps_owned_shared_and_erased_operators() {
    let a = random::mat::<f64>(20, 10, 1);
    let x = random::mat::<f64>(10, 9, 2);
    let want = &a * &x;
    let owned = pmatmat(a.clone(), Method::Thread, Some(3), false).unwrap().with_min_parallel_work(0);
    let erased = pmatmat(DynOp::new(a.clone()), Method::Thread, Some(3), false).unwrap().with_min_parallel_work(0);
    let shared = pmatmat(DynOp::from(std::sync::Arc::new(a.clone())), Method::Thread, Some(3), false).unwrap();
    for got in [owned.matmat(&x), erased.matmat(&x), shared.matmat(&x)] {
        assert_close(got.as_ref(), want.as_ref(), "wrapped");
    }
    // A parallel operator is an operator: compose it, take its adjoint, nest it.
    let nested = pmatmat(owned.adjoint().compose(&a), Method::Thread, Some(2), false).unwrap();
    assert_close(nested.matmat(&a.transpose()).as_ref(), (a.transpose() * &a * a.transpose()).as_ref(), "nested");
}

#[test]
fn bad_arguments_are_errors() {
    let a = Mat::<f64>::identity(3, 3);
    assert!(matches!(pmatmat(&a, Method::Thread, Some(0), false), Err(Error::ZeroWorkers)));
    let err = "threads".parse::<Method>().unwrap_err();
    assert!(matches!(&err, Error::UnknownMethod(s) if s == "threads"));
    let msg = err.to_string();
    assert!(msg.contains("\"thread\"") && msg.contains("\"process\"") && msg.contains("\"mpi\""), "{msg}");
    assert_eq!("THREAD".parse::<Method>().unwrap(), Method::Thread);
    assert_eq!("Process".parse::<Method>().unwrap(), Method::process());
    assert_eq!("mpi".parse::<Method>().unwrap(), Method::mpi());
    // nworkers = None: the CPUs this process may use.
    let l = pmatmat(&a, Method::Thread, None, false).unwrap();
    assert_eq!(l.nworkers(), std::thread::available_parallelism().unwrap().get());
}

#[test]
fn a_panic_in_a_worker_reaches_the_caller_and_the_operator_survives() {
    let bomb = from_matmat(
        4,
        4,
        |mut out: MatMut<'_, f64>, x: MatRef<'_, f64>| {
            if x[(0, 0)] == 13.0 {
                panic!("boom: column starting with 13");
            }
            out.copy_from(x);
        },
        |mut out: MatMut<'_, f64>, y: MatRef<'_, f64>| out.copy_from(y),
    );
    let l = pmatmat(bomb, Method::Thread, Some(4), true).unwrap().with_min_parallel_work(0);
    let mut x = random::mat::<f64>(4, 8, 3);
    x[(0, 6)] = 13.0;
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l.matmat(&x))).unwrap_err();
    let msg = err.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| err.downcast_ref::<String>().cloned());
    assert_eq!(msg.as_deref(), Some("boom: column starting with 13"));
    x[(0, 6)] = 1.0;
    assert_close(l.matmat(&x).as_ref(), x.as_ref(), "after the panic");
}

#[test]
fn one_operator_from_several_threads_at_once() {
    let a = random::mat::<faer::c64>(64, 48, 5);
    let l = pmatmat(&a, Method::Thread, Some(3), false).unwrap().with_min_parallel_work(0);
    std::thread::scope(|s| {
        for t in 0..6 {
            let (l, a) = (&l, &a);
            s.spawn(move || {
                for r in 0..20 {
                    let x = random::mat::<faer::c64>(48, 1 + (t * 7 + r) % 11, (t * 100 + r) as u64);
                    assert_close(l.matmat(&x).as_ref(), (a * &x).as_ref(), "concurrent");
                    let y = random::mat::<faer::c64>(64, 5, r as u64);
                    assert_close(l.rmatmat(&y).as_ref(), (a.adjoint() * &y).as_ref(), "concurrent adjoint");
                }
            });
        }
    });
}

/// A number naming the calling thread.
fn thread_number() -> f64 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    thread_local!(static ID: f64 = f64::from(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    ID.with(|id| *id)
}

#[test]
fn every_product_with_two_columns_is_split_by_default() {
    // A 1×1 operator: its cost is not known from its shape.
    let l = pmatmat(common::who_ran(thread_number), Method::Thread, Some(2), false).unwrap();
    assert_eq!(common::workers_seen(&l, 8), 2, "8 columns, 2 workers");
    assert_eq!(common::workers_seen(&l, 1), 1, "1 column");
}

#[test]
fn small_products_run_on_the_calling_thread_when_asked() {
    // Below min_parallel_work the product must not need the pool: it runs
    // even when called from inside a worker of the same pool.
    let a = random::mat::<f64>(8, 8, 1);
    let l = pmatmat(&a, Method::Thread, Some(2), false).unwrap().with_min_parallel_work(1 << 20);
    let x = random::mat::<f64>(8, 4, 2);
    assert_close(l.matmat(&x).as_ref(), (&a * &x).as_ref(), "small");
    let l = pmatmat(common::who_ran(thread_number), Method::Thread, Some(2), false).unwrap();
    let l = l.with_min_parallel_work(1 << 20);
    assert_eq!(common::workers_seen(&l, 8), 1);
    let here = thread_number();
    assert_eq!(l.matmat(&Mat::<f64>::zeros(1, 8))[(0, 0)], here, "ran on the calling thread");
}

#[test]
fn method_mpi_without_mpi_is_an_error() {
    let a = Mat::<f64>::identity(3, 3);
    let err = pmatmat(&a, Method::mpi(), Some(2), false).unwrap_err();
    // Without the feature, the backend is not built; with it, MPI is not initialized here.
    #[cfg(not(feature = "mpi"))]
    assert!(matches!(err, Error::Unavailable(Method::Mpi(_), _)), "{err}");
    #[cfg(feature = "mpi")]
    assert!(matches!(&err, Error::Mpi(msg) if msg.contains("not initialized")), "{err}");
}
