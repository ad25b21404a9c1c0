//! The process backend, per product and created once: products against the
//! dense reference; faults caused for real (panics, aborts, SIGKILL); one
//! pool serving many products; concurrent products; no child process and no
//! shared-memory descriptor left behind.
#![cfg(unix)]

mod common;

use std::sync::RwLock;

use common::{assert_close, check_parallel};
use faer::{Mat, MatMut, MatRef, Par};
use lazylinop::parallel::process::SharedMat;
use lazylinop::parallel::{Error, Method, Scalar, pmatmat};

/// The process method, per product or a pool.
fn procs(once: bool) -> Method {
    if once { Method::process_pool() } else { Method::process() }
}
use lazylinop::prelude::*;
use lazylinop::random;

/// Tests take it shared; the leak check takes it alone, when no other test
/// has a worker or a map alive.
static EXCLUSIVE: RwLock<()> = RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().unwrap_or_else(|e| e.into_inner())
}

const SHAPES: [(usize, usize); 4] = [(0, 3), (3, 0), (1, 1), (33, 17)];
const MODES: [bool; 2] = [false, true];

fn all_kinds<T: Scalar>() {
    for (s, (m, n)) in SHAPES.into_iter().enumerate() {
        let a = random::mat::<T>(m, n, 100 + s as u64);
        let b = random::mat::<T>(n, n, 200 + s as u64);
        let composite = (&a).compose(Adjoint(&b)).plus(&a);
        let composite_dense = &a * b.adjoint() + &a;
        let closure = common::closure_of(&a);
        for once in MODES {
            for nworkers in [1, 2, 3] {
                for use_matvec in [false, true] {
                    let w = Some(nworkers);
                    let what = |kind: &str| format!("{kind} {m}×{n}, once {once}");
                    check_parallel(pmatmat(&a, procs(once), w, use_matvec).unwrap(), a.as_ref(), &what("dense"));
                    check_parallel(
                        pmatmat(&composite, procs(once), w, use_matvec).unwrap(),
                        composite_dense.as_ref(),
                        &what("composite"),
                    );
                    check_parallel(
                        pmatmat(&closure, procs(once), w, use_matvec).unwrap(),
                        a.as_ref(),
                        &what("closure"),
                    );
                }
            }
        }
    }
}

#[test]
fn process_products_match_dense_reference() {
    let _g = shared();
    for_all_types!(all_kinds);
}

/// An operator that copies its operand, except that a column starting with
/// `13` triggers `fault` (in whichever process computes that column).
fn faulty(fault: fn()) -> impl BiLinOp<f64> + Send + Sync + 'static {
    from_matmat(
        4,
        4,
        move |mut out: MatMut<'_, f64>, x: MatRef<'_, f64>| {
            if (0..x.ncols()).any(|j| x[(0, j)] == 13.0) {
                fault();
            }
            out.copy_from(x)
        },
        |mut out: MatMut<'_, f64>, y: MatRef<'_, f64>| out.copy_from(y),
    )
}

/// An operand whose first column (a worker's block in both modes) starts with 13.
fn poisoned() -> Mat<f64> {
    let mut x = random::mat::<f64>(4, 8, 1);
    x[(0, 0)] = 13.0;
    x
}

fn self_kill() {
    nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL).unwrap();
}

#[test]
fn a_worker_panic_is_an_error_with_its_message_and_the_operator_survives() {
    let _g = shared();
    for once in MODES {
        let l = pmatmat(faulty(|| panic!("boom in a worker")), procs(once), Some(2), false)
            .unwrap()
            .with_min_parallel_work(0);
        let err = l.try_matmat(poisoned().as_ref()).unwrap_err();
        assert!(
            matches!(&err, Error::WorkerPanicked { worker: 0, message, .. } if message == "boom in a worker"),
            "{err}"
        );
        // The faer trait method panics with the same message.
        let msg = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l.matmat(poisoned()))).unwrap_err();
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(msg.contains("panicked during a product: boom in a worker"), "{msg}");
        // Still usable.
        let x = random::mat::<f64>(4, 8, 2);
        assert_close(l.try_matmat(x.as_ref()).unwrap().as_ref(), x.as_ref(), "after a panic");
    }
}

#[test]
fn a_worker_that_aborts_or_is_killed_is_an_error_not_a_hang() {
    let _g = shared();
    let faults: [(fn(), &str); 2] = [(|| std::process::abort(), "SIGABRT"), (self_kill, "SIGKILL")];
    for (fault, signal) in faults {
        for once in MODES {
            let mut l = pmatmat(faulty(fault), procs(once), Some(2), false).unwrap().with_min_parallel_work(0);
            let start = std::time::Instant::now();
            let err = l.try_matmat(poisoned().as_ref()).unwrap_err();
            assert!(start.elapsed() < std::time::Duration::from_secs(10));
            let Error::WorkerDied { worker: 0, how, .. } = &err else { panic!("{err}") };
            assert!(how.contains(signal), "{err}");
            let x = random::mat::<f64>(4, 8, 2);
            if once {
                // The pool says it lost a worker, until rebuilt.
                let broken = l.try_matmat(x.as_ref()).unwrap_err();
                assert!(matches!(&broken, Error::PoolBroken(why) if why.contains(signal)), "{broken}");
                l.rebuild_pool().unwrap();
            }
            assert_close(l.try_matmat(x.as_ref()).unwrap().as_ref(), x.as_ref(), "after a dead worker");
        }
    }
}

#[test]
fn an_idle_pool_worker_killed_from_outside_is_reported() {
    let _g = shared();
    let a = random::mat::<f64>(10, 10, 0);
    let mut l = pmatmat(&a, Method::process_pool(), Some(3), false).unwrap().with_min_parallel_work(0);
    // Three workers: two forked, and this process.
    let pids = l.worker_pids();
    assert_eq!(pids.len(), 2);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[1]), nix::sys::signal::Signal::SIGKILL).unwrap();
    let x = random::mat::<f64>(10, 6, 1);
    let err = l.try_matmat(x.as_ref()).unwrap_err();
    assert!(matches!(&err, Error::WorkerDied { worker: 1, how, .. } if how.contains("SIGKILL")), "{err}");
    l.rebuild_pool().unwrap();
    assert_ne!(l.worker_pids(), pids);
    assert_close(l.try_matmat(x.as_ref()).unwrap().as_ref(), (&a * &x).as_ref(), "rebuilt pool");
}

#[test]
fn a_panic_in_the_parents_block_propagates_and_reaps_the_children() {
    let _g = shared();
    for once in MODES {
        // The parent computes the last block: poison the last column.
        let l = pmatmat(faulty(|| panic!("boom in the parent")), procs(once), Some(3), false)
            .unwrap()
            .with_min_parallel_work(0);
        let mut x = random::mat::<f64>(4, 8, 1);
        x[(0, 7)] = 13.0;
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l.matmat(&x))).unwrap_err();
        assert_eq!(err.downcast_ref::<&str>(), Some(&"boom in the parent"), "once {once}");
        // The workers' replies were collected: the next product is in step.
        x[(0, 7)] = 1.0;
        assert_close(l.matmat(&x).as_ref(), x.as_ref(), "after the parent's panic");
    }
}

fn many_products<T: Scalar>(l: &lazylinop::parallel::Pmatmat<T, &Mat<T>>, a: &Mat<T>) {
    for r in 0..50 {
        let k = [1, 7, 64, 3, 200, 0, 33][r % 7];
        let x = random::mat::<T>(a.ncols(), k, r as u64);
        assert_close(l.matmat(&x).as_ref(), (a * &x).as_ref(), "pool product");
    }
}

#[test]
fn one_pool_serves_a_hundred_products_of_varying_sizes() {
    let _g = shared();
    let a = random::mat::<f64>(60, 45, 0);
    let l = pmatmat(&a, Method::process_pool(), Some(2), false).unwrap().with_min_parallel_work(0);
    let pids = l.worker_pids();
    many_products(&l, &a);
    let c = random::mat::<faer::c64>(60, 45, 0);
    let lc = pmatmat(&c, Method::process_pool(), Some(3), false).unwrap().with_min_parallel_work(0);
    many_products(&lc, &c);
    assert_eq!(l.worker_pids(), pids, "the same workers served every product");
}

#[test]
fn concurrent_products_on_one_pool_are_serialized() {
    let _g = shared();
    let a = random::mat::<faer::c32>(40, 30, 5);
    for once in MODES {
        let l = pmatmat(&a, procs(once), Some(2), false).unwrap().with_min_parallel_work(0);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (l, a) = (&l, &a);
                s.spawn(move || {
                    for r in 0..10 {
                        let x = random::mat::<faer::c32>(30, 1 + (t * 5 + r) % 13, (t * 100 + r) as u64);
                        assert_close(l.matmat(&x).as_ref(), (a * &x).as_ref(), "concurrent");
                        let y = random::mat::<faer::c32>(40, 1 + (t + r) % 5, (t * 7 + r) as u64);
                        assert_close(l.rmatmat(&y).as_ref(), (a.adjoint() * &y).as_ref(), "concurrent adjoint");
                    }
                });
            }
        });
    }
}

#[test]
fn the_output_in_a_shared_mat_is_written_in_place() {
    let _g = shared();
    use faer::dyn_stack::{MemBuffer, MemStack};
    let a = random::mat::<f64>(50, 40, 0);
    let x = random::mat::<f64>(40, 9, 1);
    for once in MODES {
        let l = pmatmat(&a, procs(once), Some(3), false).unwrap().with_min_parallel_work(0);
        let mut out = SharedMat::<f64>::zeros(50, 9).unwrap();
        let mut buf = MemBuffer::new(l.apply_scratch(9, Par::Seq));
        l.apply(out.as_mut(), x.as_ref(), Par::Seq, MemStack::new(&mut buf));
        assert_close(out.as_ref(), (&a * &x).as_ref(), "SharedMat output");
        // A strided view inside the shared matrix, too.
        let mut wide = SharedMat::<f64>::zeros(60, 12).unwrap();
        let y = random::mat::<f64>(50, 4, 2);
        l.adjoint_apply(wide.as_mut().submatrix_mut(5, 3, 40, 4), y.as_ref(), Par::Seq, MemStack::new(&mut buf));
        assert_close(wide.as_ref().submatrix(5, 3, 40, 4), (a.adjoint() * &y).as_ref(), "SharedMat sub-view");
        assert_eq!(wide.as_ref().submatrix(0, 0, 5, 12).norm_max(), 0.0, "nothing written outside the view");
    }
}

#[test]
fn a_thread_backend_inside_a_process_worker_runs_without_rayon() {
    let _g = shared();
    let a = random::mat::<f64>(30, 20, 0);
    let inner = pmatmat(&a, Method::Thread, Some(2), false).unwrap().with_min_parallel_work(0);
    for once in MODES {
        let l = pmatmat(&inner, procs(once), Some(2), false).unwrap().with_min_parallel_work(0);
        let x = random::mat::<f64>(20, 8, 1);
        assert_close(l.matmat(&x).as_ref(), (&a * &x).as_ref(), "nested");
    }
}

#[test]
fn bad_worker_counts_are_errors() {
    let a = Mat::<f64>::identity(2, 2);
    for once in MODES {
        assert!(matches!(pmatmat(&a, procs(once), Some(0), false), Err(Error::ZeroWorkers)));
    }
}

/// Children of this process, from /proc.
fn children() -> Vec<i32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // pid (comm) state ppid ...
            let after = &stat[stat.rfind(')')? + 2..];
            let ppid = after.split(' ').nth(1)?;
            (ppid == me).then(|| e.file_name().to_string_lossy().parse().ok()).flatten()
        })
        .collect()
}

/// Descriptors of this process that are memfds of this crate.
fn shared_maps() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("memfd:lazylinop")))
        .count()
}

#[test]
fn nothing_is_left_behind() {
    // Runs alone: every other test's operators are gone, or not made yet.
    let _alone = EXCLUSIVE.write().unwrap_or_else(|e| e.into_inner());
    let (kids, maps) = (children(), shared_maps());
    {
        let a = random::mat::<f64>(20, 20, 0);
        let x = random::mat::<f64>(20, 10, 1);
        let pool = pmatmat(&a, Method::process_pool(), Some(3), false).unwrap().with_min_parallel_work(0);
        let per = pmatmat(&a, Method::process(), Some(3), false).unwrap().with_min_parallel_work(0);
        pool.matmat(&x);
        per.matmat(&x);
        let running = children();
        assert!(pool.worker_pids().iter().all(|p| running.contains(p)), "the pool's workers are running");
        // The per-product children are reaped as they exit, without waiting for the next product.
        let mut expected = kids.clone();
        expected.extend(pool.worker_pids());
        expected.sort();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut now = children();
        while {
            now.sort();
            now != expected
        } && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
            now = children();
        }
        assert_eq!(now, expected, "a finished child is not reaped (zombie)");
        assert!(shared_maps() > maps);
        let _ = pmatmat(faulty(self_kill), Method::process(), Some(2), false)
            .unwrap()
            .with_min_parallel_work(0)
            .try_matmat(poisoned().as_ref());
        let _ = pmatmat(faulty(|| panic!("x")), Method::process_pool(), Some(2), false)
            .unwrap()
            .with_min_parallel_work(0)
            .try_matmat(poisoned().as_ref());
    }
    assert_eq!(children(), kids, "child processes left behind");
    assert_eq!(shared_maps(), maps, "shared memory left behind");
}

#[test]
fn running_out_of_descriptors_is_an_error_not_a_panic() {
    // Runs alone: it lowers this process's descriptor limit for a moment.
    let _alone = EXCLUSIVE.write().unwrap_or_else(|e| e.into_inner());
    let a = random::mat::<f64>(8, 8, 0);
    let x = random::mat::<f64>(8, 4, 1);
    let per = pmatmat(&a, Method::process(), Some(2), false).unwrap().with_min_parallel_work(0);
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as libc::rlim_t;
    // No descriptor left: memfd_create, socketpair and pipe fail with EMFILE.
    let none_left = libc::rlimit { rlim_cur: open.saturating_sub(2), rlim_max: limit.rlim_max };
    // SAFETY: setrlimit reads the struct it is given.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &none_left) }, 0);
    let pool = pmatmat(&a, Method::process_pool(), Some(2), false);
    let product = per.try_matmat(x.as_ref());
    // SAFETY: as above; back to the limit read first.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let err = pool.unwrap_err();
    assert!(matches!(&err, Error::Os { source, .. } if source.raw_os_error() == Some(libc::EMFILE)), "{err}");
    let err = product.unwrap_err();
    assert!(matches!(&err, Error::Os { source, .. } if source.raw_os_error() == Some(libc::EMFILE)), "{err}");
    // With descriptors again, the same operator works.
    assert_close(per.try_matmat(x.as_ref()).unwrap().as_ref(), (&a * &x).as_ref(), "after EMFILE");
}

#[test]
fn a_dead_worker_is_seen_even_when_other_processes_hold_its_socket() {
    let _g = shared();
    // Pools forked at the same time from two threads: a worker of one pool may
    // inherit the other pool's sockets, so end-of-file alone would never come.
    let pools: Vec<_> = std::thread::scope(|s| {
        let builders: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    (0..5)
                        .map(|_| {
                            pmatmat(faulty(self_kill), Method::process_pool(), Some(2), false)
                                .unwrap()
                                .with_min_parallel_work(0)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        builders.into_iter().flat_map(|b| b.join().unwrap()).collect()
    });
    for l in &pools {
        let start = std::time::Instant::now();
        let err = l.try_matmat(poisoned().as_ref()).unwrap_err();
        assert!(matches!(&err, Error::WorkerDied { how, .. } if how.contains("SIGKILL")), "{err}");
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "took {:?}", start.elapsed());
    }
}

#[test]
fn every_product_with_two_columns_is_split_by_default() {
    for once in [false, true] {
        let l = pmatmat(common::who_ran(|| f64::from(std::process::id())), procs(once), Some(2), false).unwrap();
        assert_eq!(common::workers_seen(&l, 8), 2, "8 columns, 2 processes, pool {once}");
    }
}
