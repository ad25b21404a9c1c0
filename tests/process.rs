//! The process backend, per product and created once: products against the
//! dense reference; faults caused for real (panics, aborts, SIGKILL, a lock
//! held at fork, signals, a parent that dies, a pool worker killed or
//! stopped between the two requests of a product, caught there by pausing
//! the product's copy of its input with a userfaultfd); operators and pools used the
//! way real programs use them (built on a thread that exits, used in a
//! process that forked on its own, nested); no child process and no
//! shared-memory descriptor left behind; shared memory freed while pool
//! workers live is freed in them too; a reaped worker's reused pid is never
//! waited on. Every test runs under a deadline
//! ([`within`], [`run_alone`]): a regression fails instead of hanging.
#![cfg(unix)]

mod common;

use std::sync::RwLock;
use std::time::{Duration, Instant};

use common::{assert_close, check_parallel};
use faer::{Mat, MatMut, MatRef, Par};
use lazylinop::parallel::process::SharedMat;
use lazylinop::parallel::{Error, Method, ProcessOptions, Scalar, pmatmat};
use lazylinop::prelude::*;
use lazylinop::random;

/// The process method, per product or a pool.
fn procs(once: bool) -> Method {
    if once { Method::process_pool() } else { Method::process() }
}

/// The process method with a deadline per product.
fn procs_within(once: bool, deadline: Duration) -> Method {
    Method::Process(ProcessOptions::default().procs_created_once(once).deadline(Some(deadline)))
}

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
    within(120, move || {
        for_all_types!(all_kinds);
    })
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
    within(120, move || {
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
    })
}

#[test]
fn a_worker_that_aborts_or_is_killed_is_an_error_not_a_hang() {
    let _g = shared();
    within(120, move || {
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
    })
}

#[test]
fn an_idle_pool_worker_killed_from_outside_is_reported() {
    let _g = shared();
    within(120, move || {
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
    })
}

#[test]
fn a_panic_in_the_parents_block_propagates_and_reaps_the_children() {
    let _g = shared();
    within(120, move || {
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
    })
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
    within(120, move || {
        let a = random::mat::<f64>(60, 45, 0);
        let l = pmatmat(&a, Method::process_pool(), Some(2), false).unwrap().with_min_parallel_work(0);
        let pids = l.worker_pids();
        many_products(&l, &a);
        let c = random::mat::<faer::c64>(60, 45, 0);
        let lc = pmatmat(&c, Method::process_pool(), Some(3), false).unwrap().with_min_parallel_work(0);
        many_products(&lc, &c);
        assert_eq!(l.worker_pids(), pids, "the same workers served every product");
    })
}

#[test]
fn concurrent_products_on_one_pool_are_serialized() {
    let _g = shared();
    within(120, move || {
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
    })
}

#[test]
fn the_output_in_a_shared_mat_is_written_in_place() {
    let _g = shared();
    within(120, move || {
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
    })
}

#[test]
fn a_thread_backend_inside_a_process_worker_runs_without_rayon() {
    let _g = shared();
    within(120, move || {
        let a = random::mat::<f64>(30, 20, 0);
        let inner = pmatmat(&a, Method::Thread, Some(2), false).unwrap().with_min_parallel_work(0);
        for once in MODES {
            let l = pmatmat(&inner, procs(once), Some(2), false).unwrap().with_min_parallel_work(0);
            let x = random::mat::<f64>(20, 8, 1);
            assert_close(l.matmat(&x).as_ref(), (&a * &x).as_ref(), "nested");
        }
    })
}

#[test]
fn bad_worker_counts_are_errors() {
    within(120, move || {
        let a = Mat::<f64>::identity(2, 2);
        for once in MODES {
            assert!(matches!(pmatmat(&a, procs(once), Some(0), false), Err(Error::ZeroWorkers)));
        }
    })
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
    within(120, move || {
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
    })
}

#[test]
fn running_out_of_descriptors_is_an_error_not_a_panic() {
    // Runs alone: it lowers this process's descriptor limit for a moment.
    let _alone = EXCLUSIVE.write().unwrap_or_else(|e| e.into_inner());
    within(120, move || {
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
    })
}

/// An operator like [`faulty`] whose fault forks a grandchild that keeps
/// every descriptor of the worker (its socket or pipe end too) for 5 s,
/// then kills the worker: end-of-file on the worker's socket does not come.
fn dies_leaving_a_descendant() -> impl BiLinOp<f64> + Send + Sync + 'static {
    faulty(|| {
        // SAFETY: the grandchild only sleeps and leaves with `_exit`.
        if let Ok(nix::unistd::ForkResult::Child) = unsafe { nix::unistd::fork() } {
            std::thread::sleep(Duration::from_secs(5));
            // SAFETY: leaving without running anything inherited.
            unsafe { libc::_exit(0) }
        }
        self_kill()
    })
}

#[test]
fn a_dead_worker_is_seen_even_when_other_processes_hold_its_socket() {
    let _g = shared();
    within(60, move || {
        for once in MODES {
            let l = pmatmat(dies_leaving_a_descendant(), procs(once), Some(2), false).unwrap();
            let start = Instant::now();
            let err = l.try_matmat(poisoned().as_ref()).unwrap_err();
            assert!(matches!(&err, Error::WorkerDied { how, .. } if how.contains("SIGKILL")), "{err}");
            assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
        }
    })
}

#[test]
fn every_product_with_two_columns_is_split_by_default() {
    within(120, move || {
        for once in [false, true] {
            let l = pmatmat(common::who_ran(|| f64::from(std::process::id())), procs(once), Some(2), false).unwrap();
            assert_eq!(common::workers_seen(&l, 8), 2, "8 columns, 2 processes, pool {once}");
        }
    })
}

// ---------------------------------------------------------------------------
// Deadlines: every test runs its body under one, so that a regression fails
// the suite instead of hanging it.
// ---------------------------------------------------------------------------

/// Runs `body` on its own thread and fails the test if it has not returned
/// after `secs` seconds. The hung thread is left behind; the workers it
/// forked die with this process (or are killed by the operator's deadline).
#[track_caller]
fn within<R: Send + 'static>(secs: u64, body: impl FnOnce() -> R + Send + 'static) -> R {
    let (done, finished) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let r = body();
        let _ = done.send(());
        r
    });
    match finished.recv_timeout(Duration::from_secs(secs)) {
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("no answer within {secs} s: a hang"),
        _ => thread.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
    }
}

/// The environment variable that makes this test binary run one scenario.
const SCENARIO: &str = "LAZYLINOP_PROCESS_SCENARIO";

/// Whether this process was started by [`run_alone`] to run scenario `name`.
/// A scenario's process ends after 60 s whatever happens (SIGALRM), so
/// that nothing it started outlives the test binary by long.
fn is_scenario(name: &str) -> bool {
    let me = std::env::var(SCENARIO).as_deref() == Ok(name);
    if me {
        // SAFETY: alarm only arms a timer.
        unsafe { libc::alarm(60) };
    }
    me
}

/// Runs this binary's test `name` again, alone, in a new process in its own
/// process group (so that it may signal its group, change process-wide
/// signal dispositions, fork on its own); the test sees [`is_scenario`] and
/// runs its scenario. Fails if that process fails or takes more than `secs`
/// seconds; its whole process group is killed in the end. Returns its output.
#[track_caller]
fn run_alone(name: &str, secs: u64) -> String {
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(SCENARIO, name)
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(secs) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Whatever is left of its group (workers, a hung child) goes now.
    // SAFETY: kill has no memory effects; -pid is the group made above.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let _ = child.wait();
    let mut out = String::new();
    use std::io::Read;
    let _ = child.stdout.take().unwrap().read_to_string(&mut out);
    let _ = child.stderr.take().unwrap().read_to_string(&mut out);
    match status {
        Some(s) if s.success() => out,
        Some(s) => panic!("scenario {name} failed ({s}):\n{out}"),
        None => panic!("scenario {name} gave no answer within {secs} s (a hang):\n{out}"),
    }
}

/// Forks; the child runs `f` and leaves with `_exit(0)` if it returns true
/// (1 if false, 2 if it panicked). Waits at most `secs` seconds for it
/// (then kills it) and says how it ended. For the scenarios only: the child
/// of a multi-threaded process may block on a lock another thread held.
fn in_own_fork(secs: u64, f: impl FnOnce() -> bool) -> Result<(), String> {
    // SAFETY: the child runs `f` (products of this crate, which allocate
    // through glibc's fork-safe malloc) and leaves with `_exit`; scenarios
    // run in a process of their own with one test thread.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(_) => 2,
            };
            // SAFETY: leaving the child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let start = Instant::now();
            loop {
                match nix::sys::wait::waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG)).unwrap() {
                    nix::sys::wait::WaitStatus::StillAlive if start.elapsed() < Duration::from_secs(secs) => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    nix::sys::wait::WaitStatus::StillAlive => {
                        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                        let _ = nix::sys::wait::waitpid(child, None);
                        return Err(format!("the forked child gave no answer within {secs} s"));
                    }
                    nix::sys::wait::WaitStatus::Exited(_, 0) => return Ok(()),
                    other => return Err(format!("the forked child ended with {other:?}")),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Operators and pools used the way real programs use them.
// ---------------------------------------------------------------------------

/// `a` times `x` for `r` random operands of `k` columns, against the dense
/// reference; how many were wrong or failed.
fn wrong_products(l: &impl BiLinOp<f64>, a: &Mat<f64>, r: u64, k: usize) -> usize {
    (0..r)
        .filter(|&s| {
            let x = random::mat::<f64>(a.ncols(), k, s);
            let mut out = Mat::zeros(a.nrows(), k);
            l.apply(
                out.as_mut(),
                x.as_ref(),
                Par::Seq,
                faer::dyn_stack::MemStack::new(&mut faer::dyn_stack::MemBuffer::new(l.apply_scratch(k, Par::Seq))),
            );
            (out - a * &x).norm_max() > 1e-10
        })
        .count()
}

#[test]
fn a_pool_inside_a_per_product_operator_computes_correctly() {
    let _g = shared();
    within(120, move || {
        let a = random::mat::<f64>(40, 30, 0);
        let inner = pmatmat(a.clone(), Method::process_pool(), Some(2), false).unwrap();
        // Each per-product child runs the pool's product in its own process.
        let outer = pmatmat(inner, Method::process(), Some(3), false).unwrap();
        assert_eq!(wrong_products(&outer, &a, 30, 9), 0, "of 30 products");
    })
}

#[test]
fn operators_used_in_a_process_that_forked_on_its_own_compute_correctly() {
    if is_scenario("operators_used_in_a_process_that_forked_on_its_own_compute_correctly") {
        let a = random::mat::<f64>(40, 30, 0);
        for once in MODES {
            let l = std::sync::Arc::new(pmatmat(a.clone(), procs(once), Some(3), false).unwrap());
            assert_eq!(wrong_products(&*l, &a, 2, 9), 0);
            // This process keeps using the operator on another thread while it forks.
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let busy = {
                let (l, a, stop) = (l.clone(), a.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut wrong = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        wrong += wrong_products(&*l, &a, 1, 9);
                    }
                    wrong
                })
            };
            std::thread::sleep(Duration::from_millis(50));
            let child = in_own_fork(60, || wrong_products(&*l, &a, 30, 9) == 0);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            assert_eq!(busy.join().unwrap(), 0, "the parent's products, once {once}");
            child.unwrap_or_else(|e| panic!("the forked program's products, once {once}: {e}"));
            assert_eq!(wrong_products(&*l, &a, 5, 9), 0, "after the fork, once {once}");
            // A forked process that drops its copy of an operator leaves the
            // workers to the process that built them.
            let mine = std::cell::RefCell::new(Some(pmatmat(a.clone(), procs(once), Some(3), false).unwrap()));
            in_own_fork(60, || {
                drop(mine.borrow_mut().take());
                true
            })
            .unwrap();
            let mine = mine.into_inner().unwrap();
            assert_eq!(wrong_products(&mine, &a, 5, 9), 0, "after a forked process dropped its copy, once {once}");
        }
        return;
    }
    run_alone("operators_used_in_a_process_that_forked_on_its_own_compute_correctly", 120);
}

#[test]
fn a_pool_built_on_a_thread_that_exits_keeps_its_workers() {
    let _g = shared();
    within(120, move || {
        let a = random::mat::<f64>(30, 20, 0);
        let b = a.clone();
        let mut l =
            std::thread::spawn(move || pmatmat(b, Method::process_pool(), Some(3), false).unwrap()).join().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(wrong_products(&l, &a, 10, 7), 0, "built on a thread that exited");
        // Rebuilt on a scoped thread that exits, too.
        std::thread::scope(|s| s.spawn(|| l.rebuild_pool().unwrap()).join().unwrap());
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(wrong_products(&l, &a, 10, 7), 0, "rebuilt on a thread that exited");
    })
}

/// A user's operator that adds its product to `out` instead of writing it
/// (as `LinOp::apply` may, when the caller hands it zeros).
#[derive(Debug)]
struct Accumulates<T>(Mat<T>);

impl<T: faer::traits::ComplexField> LinOp<T> for Accumulates<T> {
    fn apply_scratch(&self, _: usize, _: Par) -> faer::dyn_stack::StackReq {
        faer::dyn_stack::StackReq::EMPTY
    }
    fn nrows(&self) -> usize {
        self.0.nrows()
    }
    fn ncols(&self) -> usize {
        self.0.ncols()
    }
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>, _: Par, _: &mut faer::dyn_stack::MemStack) {
        faer::linalg::matmul::matmul(
            out,
            faer::Accum::Add,
            &self.0,
            rhs,
            faer::traits::math_utils::one::<T>(),
            Par::Seq,
        )
    }
    fn conj_apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>, _: Par, _: &mut faer::dyn_stack::MemStack) {
        faer::linalg::matmul::matmul(
            out,
            faer::Accum::Add,
            self.0.conjugate(),
            rhs,
            faer::traits::math_utils::one::<T>(),
            Par::Seq,
        )
    }
}

impl<T: faer::traits::ComplexField> BiLinOp<T> for Accumulates<T> {
    fn transpose_apply_scratch(&self, _: usize, _: Par) -> faer::dyn_stack::StackReq {
        faer::dyn_stack::StackReq::EMPTY
    }
    fn transpose_apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>, _: Par, _: &mut faer::dyn_stack::MemStack) {
        faer::linalg::matmul::matmul(
            out,
            faer::Accum::Add,
            self.0.transpose(),
            rhs,
            faer::traits::math_utils::one::<T>(),
            Par::Seq,
        )
    }
    fn adjoint_apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>, _: Par, _: &mut faer::dyn_stack::MemStack) {
        faer::linalg::matmul::matmul(
            out,
            faer::Accum::Add,
            self.0.adjoint(),
            rhs,
            faer::traits::math_utils::one::<T>(),
            Par::Seq,
        )
    }
}

fn accumulating_three_times<T: Scalar>() {
    use faer::dyn_stack::{MemBuffer, MemStack};
    let a = random::mat::<T>(13, 9, 3);
    for once in MODES {
        for nworkers in [2, 3] {
            for use_matvec in [false, true] {
                let l = pmatmat(Accumulates(a.clone()), procs(once), Some(nworkers), use_matvec).unwrap();
                for p in lazylinop::ops::Mode::ALL {
                    let (m, n) = p.dims((13, 9));
                    let mut buf = MemBuffer::new(p.scratch(&l, 7, Par::Seq));
                    for round in 0..3 {
                        let x = random::mat::<T>(n, 7, round);
                        let mut out = Mat::<T>::zeros(m, 7);
                        p.apply(&l, out.as_mut(), x.as_ref(), Par::Seq, MemStack::new(&mut buf));
                        let want = common::reference(a.as_ref(), p, x.as_ref());
                        let what =
                            format!("once {once}, {nworkers} workers, use_matvec {use_matvec}, {p:?}, round {round}");
                        assert_close(out.as_ref(), want.as_ref(), &what);
                    }
                }
            }
        }
    }
}

#[test]
fn every_product_equals_the_reference_three_times_in_a_row_for_an_operator_that_accumulates() {
    let _g = shared();
    within(120, move || for_all_types!(accumulating_three_times))
}

#[test]
fn a_pool_computes_with_its_snapshot_until_rebuilt() {
    let _g = shared();
    within(60, move || {
        use std::sync::atomic::{AtomicU64, Ordering};
        let scale = std::sync::Arc::new(AtomicU64::new(1));
        let s = scale.clone();
        let record = move |mut out: MatMut<'_, f64>, _: MatRef<'_, f64>| out.fill(s.load(Ordering::Relaxed) as f64);
        let mut l = pmatmat(from_matmat(1, 1, record.clone(), record), Method::process_pool(), Some(2), false).unwrap();
        scale.store(2, Ordering::Relaxed);
        // The documented contract: the worker's column comes from its snapshot.
        let out = l.try_matmat(Mat::<f64>::zeros(1, 2).as_ref()).unwrap();
        assert_eq!((out[(0, 0)], out[(0, 1)]), (1.0, 2.0));
        l.rebuild_pool().unwrap();
        let out = l.try_matmat(Mat::<f64>::zeros(1, 2).as_ref()).unwrap();
        assert_eq!((out[(0, 0)], out[(0, 1)]), (2.0, 2.0));
    })
}

// ---------------------------------------------------------------------------
// Hangs and lost workers.
// ---------------------------------------------------------------------------

/// The process-wide lock of the locking operators below.
static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The identity, computed under [`LOCK`] (a process-wide lock, as a C
/// library that is not thread-safe needs).
fn locking() -> impl BiLinOp<f64> + Send + Sync + 'static {
    let copy = |mut out: MatMut<'_, f64>, x: MatRef<'_, f64>| {
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        out.copy_from(x)
    };
    from_matmat(4, 4, copy, copy)
}

/// Holds [`LOCK`] on another thread for `hold`; returns once it is held.
fn hold_lock(hold: Duration) -> std::thread::JoinHandle<()> {
    let (held, is_held) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        held.send(()).unwrap();
        std::thread::sleep(hold);
    });
    is_held.recv().unwrap();
    t
}

#[test]
fn a_worker_blocked_on_a_lock_held_at_fork_is_killed_at_the_deadline() {
    let _g = shared();
    within(120, move || {
        let x = random::mat::<f64>(4, 6, 0);
        for once in MODES {
            let method = procs_within(once, Duration::from_secs(2));
            // Pool: forked while another thread holds the lock. Per product:
            // the product forks while the lock is held (its parent's block
            // waits for the lock, then runs).
            let holder = hold_lock(Duration::from_millis(500));
            let mut l = pmatmat(locking(), method, Some(2), false).unwrap();
            let pids = l.worker_pids();
            let start = Instant::now();
            let err = l.try_matmat(x.as_ref()).unwrap_err();
            holder.join().unwrap();
            let elapsed = start.elapsed();
            assert!(
                matches!(&err, Error::DeadlineExceeded { worker: 0, deadline, .. } if *deadline == Duration::from_secs(2)),
                "once {once}: {err}"
            );
            assert!(elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(10), "{elapsed:?}");
            // The blocked worker was killed and reaped.
            let Error::DeadlineExceeded { pid, .. } = err else { unreachable!() };
            assert!(!children().contains(&pid), "worker {pid} left behind");
            if once {
                assert_eq!(pids, [pid]);
                let broken = l.try_matmat(x.as_ref()).unwrap_err();
                assert!(matches!(&broken, Error::PoolBroken(why) if why.contains("deadline")), "{broken}");
                l.rebuild_pool().unwrap();
            }
            assert_close(l.try_matmat(x.as_ref()).unwrap().as_ref(), x.as_ref(), "after the deadline");
        }
    })
}

/// Process `pid`'s state letter and how many times it blocked (voluntary context switches).
fn state_and_blocks(pid: i32) -> Option<(char, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    let state = field("State:")?.chars().next()?;
    Some((state, field("voluntary_ctxt_switches:")?.parse().ok()?))
}

/// An `n × k` copy of a matrix in private anonymous memory watched by a
/// userfaultfd: the first read of one page of column 1 (by the product's
/// copy of the workers' input) blocks the reader until `pause` has run on a
/// thread of this process. A way to act at a chosen moment inside a product.
struct PausingMat {
    ptr: *mut f64,
    bytes: usize,
    nrows: usize,
    ncols: usize,
    handler: Option<std::thread::JoinHandle<bool>>,
}

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

impl PausingMat {
    fn new(x: &Mat<f64>, pause: impl FnOnce() -> bool + Send + 'static) -> Self {
        const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
        const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
        const UFFDIO_COPY: libc::c_ulong = 0xC028_AA03;
        const UFFD_USER_MODE_ONLY: libc::c_long = 1;
        let (nrows, ncols) = (x.nrows(), x.ncols());
        let page = 4096;
        let bytes = (nrows * ncols * 8).next_multiple_of(page);
        // SAFETY: a new private anonymous mapping, owned by this struct (unmapped in Drop).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        let ptr = ptr as *mut f64;
        // SAFETY: the mapping holds `bytes` ≥ nrows·ncols·8 bytes, zero-filled, only ours.
        let data = unsafe { std::slice::from_raw_parts_mut(ptr, nrows * ncols) };
        MatMut::from_column_major_slice_mut(data, nrows, ncols).copy_from(x);
        // The page that pauses: in column 1, whole.
        let at = (nrows * 8).next_multiple_of(page);
        assert!(at + page <= 2 * nrows * 8, "column 1 must hold a whole page");
        // SAFETY: `at..at + page` lies inside the mapping.
        let content: Vec<u8> = unsafe { std::slice::from_raw_parts((ptr as *const u8).add(at), page) }.to_vec();
        // SAFETY: syscalls on our own mapping and a new descriptor; the structs are the kernel's layout.
        let uffd = unsafe {
            assert_eq!(libc::madvise((ptr as *mut u8).add(at).cast(), page, libc::MADV_DONTNEED), 0);
            let fd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC as libc::c_long | UFFD_USER_MODE_ONLY);
            assert!(fd >= 0, "userfaultfd: {}", std::io::Error::last_os_error());
            let fd = fd as libc::c_int;
            let mut api = UffdioApi { api: 0xAA, features: 0, ioctls: 0 };
            assert_eq!(libc::ioctl(fd, UFFDIO_API, &mut api), 0, "{}", std::io::Error::last_os_error());
            let mut reg = UffdioRegister { start: ptr as u64, len: bytes as u64, mode: 1, ioctls: 0 };
            assert_eq!(libc::ioctl(fd, UFFDIO_REGISTER, &mut reg), 0, "{}", std::io::Error::last_os_error());
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        };
        let dst = ptr as u64 + at as u64;
        let handler = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // The fault's message (32 bytes), then `pause`, then the page.
            let mut msg = [0u8; 32];
            // SAFETY: read into our buffer.
            let n = unsafe { libc::read(uffd.as_raw_fd(), msg.as_mut_ptr().cast(), 32) };
            assert_eq!(n, 32, "{}", std::io::Error::last_os_error());
            assert_eq!(msg[0], 0x12, "a page fault");
            let paused = pause();
            let mut copy = UffdioCopy { dst, src: content.as_ptr() as u64, len: page as u64, mode: 0, copy: 0 };
            // SAFETY: copies our buffer into the missing page, waking the reader.
            assert_eq!(unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_COPY, &mut copy) }, 0);
            paused
        });
        Self { ptr, bytes, nrows, ncols, handler: Some(handler) }
    }

    fn as_ref(&self) -> MatRef<'_, f64> {
        // SAFETY: the mapping holds nrows·ncols initialized f64s (the paused page is filled on first read).
        let data = unsafe { std::slice::from_raw_parts(self.ptr, self.nrows * self.ncols) };
        MatRef::from_column_major_slice(data, self.nrows, self.ncols)
    }

    /// What `pause` returned.
    fn paused(&mut self) -> bool {
        self.handler.take().unwrap().join().unwrap()
    }
}

impl Drop for PausingMat {
    fn drop(&mut self) {
        // SAFETY: our mapping, no view of it left (`as_ref` borrows self).
        unsafe { libc::munmap(self.ptr.cast(), self.bytes) };
    }
}

/// Waits until the pool's worker `pid` waits for `Go` (it got `Product`: it
/// blocked once more than when `idle`, having zeroed its block), at most
/// 10 s, and then sends it `signal`. True if it did.
fn signal_when_waiting_for_go(pid: i32, idle: u64, signal: nix::sys::signal::Signal) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Some(('S', blocks)) = state_and_blocks(pid)
            && blocks == idle + 1
        {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

#[test]
fn a_pool_worker_killed_or_stopped_while_it_waits_for_go_is_an_error_within_the_deadline() {
    use nix::sys::signal::Signal;
    let _g = shared();
    within(120, move || {
        // 3 workers, 2 columns each: columns 0..4 go through the input map.
        let (m, n, k) = (8, 4096, 6);
        let a = random::mat::<f64>(m, n, 0);
        let x = random::mat::<f64>(n, k, 1);
        let want = &a * &x;
        for (signal, deadline) in [(Signal::SIGKILL, None), (Signal::SIGSTOP, Some(Duration::from_secs(2)))] {
            let method = Method::Process(ProcessOptions::default().procs_created_once(true).deadline(deadline));
            let mut l = pmatmat(&a, method, Some(3), false).unwrap().with_min_parallel_work(0);
            // A first product maps the shared buffers: the next one sends only `Product` and `Go`.
            assert_close(l.try_matmat(x.as_ref()).unwrap().as_ref(), want.as_ref(), "first product");
            let pid = l.worker_pids()[0];
            // Idle: asleep on its socket, its report sent.
            let idle = loop {
                if let Some(('S', blocks)) = state_and_blocks(pid) {
                    break blocks;
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            // The product stops in its copy of the input, until worker 0 was signalled.
            let mut paused = PausingMat::new(&x, move || signal_when_waiting_for_go(pid, idle, signal));
            let start = Instant::now();
            let result = l.try_matmat(paused.as_ref());
            let elapsed = start.elapsed();
            assert!(paused.paused(), "{signal}: worker 0 was never waiting for Go");
            let err = result.unwrap_err();
            match signal {
                Signal::SIGKILL => {
                    assert!(
                        matches!(&err, Error::WorkerDied { worker: 0, how, .. } if how.contains("SIGKILL")),
                        "{err}"
                    );
                    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
                }
                _ => {
                    assert!(matches!(&err, Error::DeadlineExceeded { worker: 0, .. }), "{err}");
                    assert!(elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(10), "{elapsed:?}");
                }
            }
            assert!(!children().contains(&pid), "{signal}: worker {pid} left behind");
            // As for any lost worker: the pool says so until rebuilt, then computes correctly.
            let broken = l.try_matmat(x.as_ref()).unwrap_err();
            assert!(matches!(&broken, Error::PoolBroken(why) if why.contains(&format!("pid {pid}"))), "{broken}");
            l.rebuild_pool().unwrap();
            assert_close(l.try_matmat(paused.as_ref()).unwrap().as_ref(), want.as_ref(), "rebuilt");
        }
    })
}

#[test]
fn per_product_children_die_with_their_parent() {
    const NAME: &str = "per_product_children_die_with_their_parent";
    if is_scenario(NAME) {
        // A child blocks forever on the lock; so does this process.
        let _holder = hold_lock(Duration::from_secs(3600));
        let l = pmatmat(locking(), Method::process(), Some(2), false).unwrap();
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(500));
            println!("children {:?}", children());
        });
        let _ = l.try_matmat(random::mat::<f64>(4, 6, 0).as_ref());
        unreachable!("the product cannot finish");
    }
    let _g = shared();
    within(60, || {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut scenario = std::process::Command::new(std::env::current_exe().unwrap())
            .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(SCENARIO, NAME)
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pgid = scenario.id() as i32;
        let mut lines = std::io::BufReader::new(scenario.stdout.take().unwrap()).lines();
        // (The harness's "test NAME ... " may begin the line.)
        let line = lines.find_map(|l| l.unwrap().split_once("children ").map(|(_, c)| c.to_owned())).unwrap();
        let kids: Vec<i32> = serde_json::from_str(&line).unwrap();
        assert_eq!(kids.len(), 1, "{line}");
        // The parent dies: its blocked child must not stay.
        scenario.kill().unwrap();
        scenario.wait().unwrap();
        let gone = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
        };
        let start = Instant::now();
        while !gone(kids[0]) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let orphan = !gone(kids[0]);
        // SAFETY: kill has no memory effects; the scenario's own group.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        assert!(!orphan, "the child {} outlived its parent, blocked", kids[0]);
    })
}

#[test]
fn workers_run_faer_sequentially() {
    let _g = shared();
    within(60, move || {
        let seq = || f64::from(u8::from(matches!(faer::get_global_parallelism(), Par::Seq)));
        for once in MODES {
            let l = pmatmat(common::who_ran(seq), procs(once), Some(2), false).unwrap();
            let out = l.try_matmat(Mat::<f64>::zeros(1, 2).as_ref()).unwrap();
            assert_eq!(out[(0, 0)], 1.0, "faer's global parallelism in a worker, once {once}");
        }
    })
}

#[test]
fn a_pipe_closed_by_the_program_reaches_end_of_file_while_a_pool_lives() {
    let _g = shared();
    within(60, move || {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let a = random::mat::<f64>(8, 8, 0);
        let l = pmatmat(&a, Method::process_pool(), Some(3), false).unwrap();
        drop(write);
        // Per-product children of other tests hold it for a moment at most.
        let mut fds = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&read), nix::poll::PollFlags::POLLIN)];
        let ready = nix::poll::poll(&mut fds, 5000u16).unwrap();
        assert_eq!(ready, 1, "no end-of-file: a pool worker holds the pipe's write end");
        assert_eq!(nix::unistd::read(&read, &mut [0u8; 1]).unwrap(), 0);
        assert_eq!(wrong_products(&l, &a, 2, 5), 0);
    })
}

extern "C" fn note_sigint(_: libc::c_int) {
    SIGINTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

static SIGINTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[test]
fn workers_survive_a_sigint_the_program_handles() {
    const NAME: &str = "workers_survive_a_sigint_the_program_handles";
    if is_scenario(NAME) {
        let a = random::mat::<f64>(20, 20, 0);
        let pool = pmatmat(&a, Method::process_pool(), Some(3), false).unwrap();
        let per = pmatmat(&a, Method::process(), Some(3), false).unwrap();
        // The program handles Ctrl-C (installed after the pool, as a
        // program's main loop would), and Ctrl-C comes: the terminal sends
        // SIGINT to the whole foreground process group.
        // SAFETY: the handler only increments an atomic.
        unsafe { libc::signal(libc::SIGINT, note_sigint as *const () as libc::sighandler_t) };
        // SAFETY: kill has no memory effects; 0 is this process's own group.
        assert_eq!(unsafe { libc::kill(0, libc::SIGINT) }, 0);
        let start = Instant::now();
        while SIGINTS.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(start.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(SIGINTS.load(std::sync::atomic::Ordering::SeqCst), 1, "the handler ran once, in the program");
        for l in [&pool, &per] {
            for r in 0..5 {
                let x = random::mat::<f64>(20, 6, r);
                let got = l.try_matmat(x.as_ref()).unwrap_or_else(|e| panic!("after Ctrl-C: {e}"));
                assert_close(got.as_ref(), (&a * &x).as_ref(), "after Ctrl-C");
            }
        }
        return;
    }
    run_alone(NAME, 120);
}

#[test]
fn a_dead_worker_is_reported_when_sigchld_is_ignored() {
    const NAME: &str = "a_dead_worker_is_reported_when_sigchld_is_ignored";
    if is_scenario(NAME) {
        // SAFETY: SIG_IGN installs no handler.
        unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
        for once in MODES {
            let l = pmatmat(faulty(self_kill), procs(once), Some(2), false).unwrap();
            let err = l.try_matmat(poisoned().as_ref()).unwrap_err();
            assert!(matches!(&err, Error::WorkerDied { worker: 0, .. }), "once {once}: {err}");
            let ok = pmatmat(faulty(self_kill), procs(once), Some(2), false).unwrap();
            let x = random::mat::<f64>(4, 8, 2);
            assert_close(ok.try_matmat(x.as_ref()).unwrap().as_ref(), x.as_ref(), "SIGCHLD ignored");
        }
        return;
    }
    run_alone(NAME, 120);
}

#[test]
fn an_idle_pool_worker_that_dies_is_reaped_at_once() {
    let _g = shared();
    within(60, move || {
        let a = random::mat::<f64>(10, 10, 0);
        let l = pmatmat(&a, Method::process_pool(), Some(3), false).unwrap();
        let pids = l.worker_pids();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0]), nix::sys::signal::Signal::SIGKILL).unwrap();
        let start = Instant::now();
        while children().contains(&pids[0]) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!children().contains(&pids[0]), "the dead worker is still a zombie");
        assert_eq!(l.worker_pids(), [pids[1]], "only live workers are listed");
        let err = l.try_matmat(random::mat::<f64>(10, 6, 1).as_ref()).unwrap_err();
        assert!(matches!(&err, Error::WorkerDied { worker: 0, how, .. } if how.contains("SIGKILL")), "{err}");
    })
}

#[test]
fn worker_pids_lists_only_running_workers() {
    let _g = shared();
    within(60, move || {
        let mut l = pmatmat(faulty(self_kill), Method::process_pool(), Some(3), false).unwrap();
        let pids = l.worker_pids();
        assert_eq!(pids.len(), 2);
        let _ = l.try_matmat(poisoned().as_ref()).unwrap_err();
        let now = l.worker_pids();
        assert_eq!(now, [pids[1]], "the lost worker 0 is not listed (never as 0)");
        l.rebuild_pool().unwrap();
        let running = children();
        assert!(l.worker_pids().iter().all(|p| *p > 0 && running.contains(p)));
    })
}

/// The virtual memory size of process `pid`, in bytes.
fn vm_size(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn a_worker_that_cannot_map_shared_memory_breaks_the_pool() {
    let _g = shared();
    within(120, move || {
        let a = random::mat::<f64>(4, 64, 0);
        let mut l = pmatmat(&a, Method::process_pool(), Some(2), false).unwrap();
        assert_eq!(wrong_products(&l, &a, 1, 4), 0);
        // The worker may not grow its address space by more than 8 MiB: the
        // 32 MiB map of the next operand fails there (not here).
        let pid = l.worker_pids()[0];
        let limit = vm_size(pid) + (8 << 20);
        let lim = libc::rlimit { rlim_cur: limit, rlim_max: limit };
        // SAFETY: prlimit reads the struct it is given; the worker is our child.
        assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_AS, &lim, std::ptr::null_mut()) }, 0);
        let big = random::mat::<f64>(64, 2 * 65536, 1);
        let err = l.try_matmat(big.as_ref()).unwrap_err();
        assert!(!matches!(err, Error::WorkerPanicked { .. }) && err.to_string().contains("map"), "{err}");
        let again = l.try_matmat(big.as_ref()).unwrap_err();
        assert!(matches!(&again, Error::PoolBroken(why) if why.contains("map")), "{again}");
        l.rebuild_pool().unwrap();
        assert_eq!(wrong_products(&l, &a, 1, 4), 0);
    })
}

/// Whether the memory at `addr` is marked `MADV_DONTFORK` (flag `dc`, "do not copy on fork").
fn dont_fork(addr: usize) -> bool {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && !range.ends_with(':')
            && let Some((lo, hi)) = range.split_once('-')
            && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            inside = lo <= addr && addr < hi;
        } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
            return flags.split_whitespace().any(|f| f == "dc");
        }
    }
    panic!("no mapping holds {addr:#x}:\n{smaps}")
}

#[test]
fn a_product_leaves_the_callers_dont_fork_marks_as_they_were() {
    let _g = shared();
    within(60, move || {
        let a = random::mat::<f64>(512, 64, 0);
        let x = random::mat::<f64>(64, 512, 1);
        let l = pmatmat(&a, Method::process(), Some(2), false).unwrap();
        // 2 MiB of output in its own mapping; this program marks it DONTFORK
        // (as RDMA libraries do with registered memory).
        let mut out = Mat::<f64>::zeros(512, 512);
        let (start, len) = (out.as_ptr() as usize, 512 * 512 * 8);
        let (lo, hi) = (start.next_multiple_of(4096), (start + len) / 4096 * 4096);
        // SAFETY: the pages lie inside `out`'s allocation; only their fork behaviour changes.
        assert_eq!(unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_DONTFORK) }, 0);
        assert!(dont_fork(lo));
        let mut buf = faer::dyn_stack::MemBuffer::new(l.apply_scratch(512, Par::Seq));
        l.apply(out.as_mut(), x.as_ref(), Par::Seq, faer::dyn_stack::MemStack::new(&mut buf));
        assert_close(out.as_ref(), (&a * &x).as_ref(), "into DONTFORK memory");
        assert!(dont_fork(lo), "the product cleared the program's own MADV_DONTFORK");
    })
}

// ---------------------------------------------------------------------------
// Shared memory freed while workers live; pids reused.
// ---------------------------------------------------------------------------

/// How many bytes of `[addr, addr + len)` are resident in memory, as the
/// calling process sees it (`mincore`: for a shared map, whether the pages
/// are in memory at all, mapped by this process or not); `-1` if the range
/// is not mapped here.
fn resident_bytes(addr: usize, len: usize) -> f64 {
    let mut pages = vec![0u8; len.div_ceil(4096)];
    // SAFETY: mincore only writes one byte a page into `pages`, which has
    // one a page; it reads no memory of the range.
    let r = unsafe { libc::mincore(addr as *mut libc::c_void, len, pages.as_mut_ptr()) };
    if r != 0 {
        return -1.0;
    }
    pages.iter().filter(|&&p| p & 1 == 1).count() as f64 * 4096.0
}

#[test]
fn a_shared_mat_freed_after_a_pool_was_built_is_freed_in_its_workers_too() {
    let _g = shared();
    within(120, move || {
        const BYTES: usize = 256 << 20;
        let mut big = SharedMat::<f64>::zeros(BYTES / 8 / 1024, 1024).unwrap();
        big.as_mut().fill(1.0);
        let addr = big.as_ref().as_ptr() as usize;
        // An operator that says how much of `big`'s memory is resident where it runs.
        let measure = move |mut out: MatMut<'_, f64>, _: MatRef<'_, f64>| out.fill(resident_bytes(addr, BYTES));
        let l = pmatmat(from_matmat(1, 1, measure, measure), Method::process_pool(), Some(3), false).unwrap();
        let x = Mat::<f64>::zeros(1, 3);
        let before = l.try_matmat(x.as_ref()).unwrap();
        // Columns 0 and 1 are the two workers'; 2 is this process's.
        for w in 0..3 {
            assert_eq!(before[(0, w)], BYTES as f64, "the measure sees the whole matrix in worker {w}");
        }
        drop(big);
        let after = l.try_matmat(x.as_ref()).unwrap();
        for w in 0..2 {
            let kept = after[(0, w)];
            assert!(kept == 0.0, "worker {w} still keeps {kept} B of the freed matrix resident");
        }
    })
}

#[test]
fn a_shared_mat_dropped_in_another_process_leaves_its_data_to_its_maker() {
    const NAME: &str = "a_shared_mat_dropped_in_another_process_leaves_its_data_to_its_maker";
    if is_scenario(NAME) {
        let x = random::mat::<f64>(300, 200, 0);
        let mut slot = Some(SharedMat::from_mat(x.as_ref()).unwrap());
        // A process the program forked drops its copy, then leaves.
        in_own_fork(20, || {
            drop(slot.take());
            true
        })
        .unwrap();
        let m = slot.as_ref().unwrap();
        assert_eq!(m.as_ref(), x.as_ref(), "the maker's data after a drop in a forked process");
        // Also when a per-product worker drops it (the operator does, in a
        // worker only).
        let maker = std::process::id();
        let ours = std::sync::Mutex::new(Some(SharedMat::from_mat(x.as_ref()).unwrap()));
        let drops = |mut out: MatMut<'_, f64>, rhs: MatRef<'_, f64>| {
            if std::process::id() != maker {
                drop(ours.lock().unwrap_or_else(|e| e.into_inner()).take());
            }
            out.copy_from(rhs)
        };
        let l = pmatmat(from_matmat(4, 4, drops, drops), Method::process(), Some(2), false).unwrap();
        let y = random::mat::<f64>(4, 6, 1);
        assert_close(l.try_matmat(y.as_ref()).unwrap().as_ref(), y.as_ref(), "an operator that drops a SharedMat");
        let kept = ours.lock().unwrap();
        assert_eq!(kept.as_ref().unwrap().as_ref(), x.as_ref(), "the maker's data after a drop in a worker");
        return;
    }
    run_alone(NAME, 60);
}

#[test]
fn a_pool_worker_reading_a_shared_mat_freed_since_its_fork_is_an_error_not_stale_data() {
    let _g = shared();
    within(60, move || {
        // An operator with interior mutability: it fills its output with the
        // entry of a shared matrix it holds, which the program replaces.
        let held =
            std::sync::Arc::new(RwLock::new(SharedMat::from_mat(Mat::<f64>::full(64, 64, 1.0).as_ref()).unwrap()));
        let h = held.clone();
        let fill = move |mut out: MatMut<'_, f64>, _: MatRef<'_, f64>| {
            out.fill(h.read().unwrap_or_else(|e| e.into_inner()).as_ref()[(63, 63)])
        };
        let mut l = pmatmat(from_matmat(1, 1, fill.clone(), fill), Method::process_pool(), Some(2), false).unwrap();
        assert_eq!(l.try_matmat(Mat::<f64>::zeros(1, 2).as_ref()).unwrap(), Mat::<f64>::full(1, 2, 1.0));
        // The old matrix is freed here, where it was made; the worker's
        // snapshot still holds (and reads) its map.
        *held.write().unwrap() = SharedMat::from_mat(Mat::<f64>::full(64, 64, 2.0).as_ref()).unwrap();
        let err = l.try_matmat(Mat::<f64>::zeros(1, 2).as_ref()).unwrap_err();
        assert!(matches!(&err, Error::WorkerDied { worker: 0, how, .. } if how.contains("SIGBUS")), "{err}");
        l.rebuild_pool().unwrap();
        assert_eq!(l.try_matmat(Mat::<f64>::zeros(1, 2).as_ref()).unwrap(), Mat::<f64>::full(1, 2, 2.0));
    })
}

/// Makes the next process created in this pid namespace get `pid`, if the
/// system lets this process (root): writes `pid - 1` to `ns_last_pid`.
fn next_pid_is(pid: i32) -> std::io::Result<()> {
    std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
}

#[test]
fn a_reaped_worker_is_never_waited_on_again_when_its_pid_is_reused() {
    const NAME: &str = "a_reaped_worker_is_never_waited_on_again_when_its_pid_is_reused";
    if is_scenario(NAME) {
        let last: i32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid").unwrap().trim().parse().unwrap();
        if let Err(e) = next_pid_is(last + 1) {
            // Only root may choose the next pid: nothing can be checked here.
            println!("SKIPPED: {NAME} needs a writable /proc/sys/kernel/ns_last_pid ({e})");
            return;
        }
        let a = random::mat::<f64>(8, 8, 0);
        let mut l = pmatmat(&a, Method::process_pool(), Some(2), false).unwrap().with_min_parallel_work(0);
        assert_eq!(wrong_products(&l, &a, 1, 4), 0);
        let pid = l.worker_pids()[0];
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
        // The pool reaps it at once (`worker_pids` leaves out reaped workers).
        let start = Instant::now();
        while !l.worker_pids().is_empty() || children().contains(&pid) {
            assert!(start.elapsed() < Duration::from_secs(5), "the killed worker was not reaped");
            std::thread::sleep(Duration::from_millis(5));
        }
        // This program's own child gets the worker's pid (other processes of
        // the machine may take it first: try again), and exits at once: a
        // zombie whose status anyone who waits on `pid` would take.
        let mut mine = None;
        for _ in 0..200 {
            next_pid_is(pid).unwrap();
            let child = std::process::Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
            if child.id() as i32 == pid {
                mine = Some(child);
                break;
            }
            let mut child = child;
            child.wait().unwrap();
        }
        let mut mine = mine.expect("no child of this process got the reaped worker's pid in 200 tries");
        std::thread::sleep(Duration::from_millis(100));
        // The pool, driven: the lost worker is reported, the pool rebuilt,
        // used, and dropped.
        let err = l.try_matmat(random::mat::<f64>(8, 4, 1).as_ref()).unwrap_err();
        assert!(matches!(&err, Error::WorkerDied { worker: 0, how, .. } if how.contains("SIGKILL")), "{err}");
        l.rebuild_pool().unwrap();
        assert_eq!(wrong_products(&l, &a, 3, 4), 0);
        drop(l);
        // The program's child is still there for it to wait on, with its own status.
        let status = mine.wait().expect("the program's own child was waited on by the pool");
        assert_eq!(status.code(), Some(7), "{status}");
        return;
    }
    run_alone(NAME, 60);
}
