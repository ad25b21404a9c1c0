//! Workers forked once, when the operator is built (`procs_created_once`).
//!
//! The workers are forked by the operator's `Keeper` thread, which lives
//! as long as the pool (so `PR_SET_PDEATHSIG` ties them to the process, not
//! to the thread that built the pool) and reaps a worker as soon as it dies.
//! Each worker keeps only its socket and the standard streams of the
//! parent's descriptors, ignores the signals a terminal sends to the whole
//! process group, and answers `Request`s with `Report`s. A worker that
//! cannot map a new shared buffer reports that it cannot go on and leaves:
//! the pool is then broken until rebuilt.
//!
//! A product takes two requests per worker, so that the worker's zeroing of
//! its output block is off the critical path:
//! 1. `Product(block)` to every worker; each zeroes its block of the output
//!    map, then waits for the next request;
//! 2. meanwhile the parent copies the workers' columns into the input map,
//!    and sends each worker `Go` once its columns are in; the worker
//!    computes its block and reports;
//! 3. the parent computes the last block into the caller's output, waits
//!    for every report (one wait, under the pool's deadline, which covers
//!    the whole product), and copies the workers' blocks out.
//!
//! A worker that gets anything but `Go` after `Product` reports that it
//! cannot go on and leaves; one whose parent goes away meanwhile sees
//! end-of-file and leaves. A request the parent cannot send loses that
//! worker (killed, reaped, the pool broken) and the others still get `Go`
//! and are awaited, so the sockets stay in step.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::reborrow::ReborrowMut;
use faer::traits::math_utils::zero;
use faer::{MatMut, MatRef};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::MsgFlags;

use super::keeper::Keeper;
use super::panic_message;
use super::protocol::{
    Block, Child, Command, Deadline, ExitCode, Lost, Outcome, Report, Request, exit_child, recv, send, socket_pair,
    wait_reports,
};
use super::shm::SharedBuf;
use crate::BiLinOp;
use crate::parallel::{Error, Scalar, Work, split};

#[derive(Debug)]
struct Worker {
    sock: OwnedFd,
    child: Arc<Child>,
}

#[derive(Debug)]
struct State {
    workers: Vec<Worker>,
    input: Option<SharedBuf>,
    output: Option<SharedBuf>,
    /// Why the pool cannot serve products any more.
    broken: Option<String>,
    /// The process that forked the workers (see `Drop`).
    owner: nix::unistd::Pid,
}

/// A pool of forked workers.
#[derive(Debug)]
pub(crate) struct Pool {
    nworkers: usize,
    deadline: Option<Duration>,
    // Dropped first: the workers are stopped before the keeper.
    state: Mutex<State>,
    keeper: Keeper,
}

impl Pool {
    /// Forks `nworkers - 1` workers, each with a snapshot of `op`; the
    /// parent is the last worker.
    pub(crate) fn new<T: Scalar, L: BiLinOp<T>>(
        op: &L,
        nworkers: usize,
        deadline: Option<Duration>,
    ) -> Result<Self, Error> {
        let keeper = Keeper::new()?;
        let mut state = State {
            workers: Vec::with_capacity(nworkers),
            input: None,
            output: None,
            broken: None,
            owner: nix::unistd::getpid(),
        };
        for index in 0..nworkers - 1 {
            let (ours, theirs) = socket_pair()?;
            // SAFETY: `worker_start::<T, L>` reads `op` through the address
            // given; `op` is borrowed for this whole call, so it is alive when
            // the keeper forks (`fork` returns after the fork).
            // On error, `state` drops: the workers forked so far are stopped and reaped.
            let child = unsafe { keeper.fork(worker_start::<T, L>, op as *const L as usize, index, theirs)? };
            state.workers.push(Worker { sock: ours, child });
        }
        Ok(Self { nworkers, deadline, state: Mutex::new(state), keeper })
    }

    pub(crate) fn nworkers(&self) -> usize {
        self.nworkers
    }

    pub(crate) fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    pub(crate) fn owned_here(&self) -> bool {
        self.keeper.owned_here()
    }

    /// The workers still running.
    pub(crate) fn worker_pids(&self) -> Vec<i32> {
        self.lock().workers.iter().filter(|w| !w.child.is_reaped()).map(|w| w.child.pid()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `work`: blocks `0..nblocks - 1` on the workers (with their snapshot
    /// of the operator), the last one here.
    pub(crate) fn run<T: Scalar, L: BiLinOp<T>>(
        &self,
        work: Work<'_, L>,
        mut out: MatMut<'_, T>,
        rhs: MatRef<'_, T>,
        nblocks: usize,
        stack: &mut MemStack,
    ) -> Result<(), Error> {
        let mut st = self.lock();
        let deadline = Deadline::start(self.deadline);
        if let Some(why) = &st.broken {
            return Err(Error::PoolBroken(why.clone()));
        }
        let (m, n, k) = (out.nrows(), rhs.nrows(), rhs.ncols());
        // The workers' columns go through the maps; the last block stays here.
        let nworkers = nblocks - 1;
        let kw = split::block(k, nblocks, nworkers).start;
        let size = size_of::<T>();
        st.ensure_map(true, n * kw * size)?;
        st.ensure_map(false, m * kw * size)?;
        // Two requests per worker: `Product` first, so that it zeroes its
        // block of the output map while the input is copied in here; then
        // `Go`, as soon as its columns are in, and it reads them. A worker
        // whose request cannot be sent is lost (killed, reaped, the pool
        // broken); it stays in the wait below, which then sees it dead at
        // once: every worker that got `Product` gets `Go`, and every report
        // is awaited.
        let mut result = Ok(());
        for i in 0..nworkers {
            let cols = split::block(k, nblocks, i);
            let block = Block {
                mode: work.mode,
                use_matvec: work.use_matvec,
                m,
                n,
                k: kw,
                start: cols.start,
                width: cols.len(),
            };
            st.request(i, Command::Product(block), &mut result);
        }
        for i in 0..nworkers {
            let cols = split::block(k, nblocks, i);
            let input = st.input.as_mut().expect("mapped").mat_mut::<T>(n, kw);
            input.subcols_mut(cols.start, cols.len()).copy_from(rhs.subcols(cols.start, cols.len()));
            st.request(i, Command::Go, &mut result);
        }
        let last = split::block(k, nblocks, nworkers);
        // A panic here waits for the workers' reports first, so that the next
        // product finds the sockets in step.
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let out = out.rb_mut().subcols_mut(last.start, last.len());
            work.block(out, rhs.subcols(last.start, last.len()), stack)
        }));
        let pairs: Vec<(&OwnedFd, &Child)> = st.workers[..nworkers].iter().map(|w| (&w.sock, &*w.child)).collect();
        let outcomes = wait_reports(&pairs, deadline);
        for (i, outcome) in outcomes.into_iter().enumerate() {
            let err = match outcome {
                Ok(Outcome::Done) => continue,
                Ok(Outcome::Panicked(message)) => {
                    Error::WorkerPanicked { worker: i, pid: st.workers[i].child.pid(), message }
                }
                Ok(Outcome::Broken(why)) => {
                    st.workers[i].child.reap();
                    Error::PoolBroken(st.mark_broken(i, &format!("could not go on: {why}")))
                }
                Err(lost) => st.lost(i, lost),
            };
            if result.is_ok() {
                result = Err(err);
            }
        }
        if let Err(payload) = mine {
            drop(st);
            std::panic::resume_unwind(payload);
        }
        result?;
        out.subcols_mut(0, kw).copy_from(st.output.as_ref().expect("mapped").mat::<T>(m, kw));
        Ok(())
    }
}

impl State {
    /// Sends worker `i` a request; if that fails, the worker is lost and
    /// the first error is kept in `result`.
    fn request(&mut self, i: usize, command: Command, result: &mut Result<(), Error>) {
        if let Err(e) = send(&self.workers[i].sock, &Request::new(command), None) {
            let err = self.lost_on_send(i, e);
            if result.is_ok() {
                *result = Err(err);
            }
        }
    }

    /// Makes sure the input or output map holds `bytes`; a new, larger map
    /// is sent to every worker.
    fn ensure_map(&mut self, input: bool, bytes: usize) -> Result<(), Error> {
        let slot = if input { &mut self.input } else { &mut self.output };
        if slot.as_ref().is_some_and(|b| b.len() >= bytes) {
            return Ok(());
        }
        *slot = None;
        let buf = SharedBuf::new(bytes.next_power_of_two())?;
        let req = Request::new(if input { Command::MapInput(buf.len()) } else { Command::MapOutput(buf.len()) });
        *slot = Some(buf);
        let slot = if input { &self.input } else { &self.output };
        let fd = slot.as_ref().expect("just set").fd();
        let failed = self.workers.iter().position(|w| send(&w.sock, &req, Some(fd.as_fd())).is_err());
        if let Some(i) = failed {
            let e = std::io::Error::other("sending a shared map failed");
            return Err(self.lost_on_send(i, e));
        }
        Ok(())
    }

    /// Marks the pool broken by worker `i`: says what happened to it.
    fn mark_broken(&mut self, i: usize, what: &str) -> String {
        let why = format!("worker {i} (pid {}) {what}", self.workers[i].child.pid());
        self.broken.get_or_insert(why.clone());
        why
    }

    /// Worker `i` gave no report: the pool is broken.
    fn lost(&mut self, i: usize, lost: Lost) -> Error {
        let (worker, pid) = (i, self.workers[i].child.pid());
        match lost {
            Lost::Died(how) => {
                self.mark_broken(i, &how);
                Error::WorkerDied { worker, pid, how }
            }
            Lost::Garbled(why) => {
                let how = format!("broke the protocol ({why}) and was killed");
                self.mark_broken(i, &how);
                Error::WorkerDied { worker, pid, how }
            }
            Lost::Deadline(deadline) => {
                self.mark_broken(i, &format!("gave no answer within the deadline of {deadline:?} and was killed"));
                Error::DeadlineExceeded { worker, pid, deadline }
            }
        }
    }

    /// Worker `i`'s socket failed (`e`): it is dead or cannot be trusted:
    /// killed if need be, reaped, and the pool broken.
    fn lost_on_send(&mut self, i: usize, e: std::io::Error) -> Error {
        let child = &self.workers[i].child;
        let how = match child.try_reap() {
            Some(how) => how,
            None => {
                // (It may be ending already: how it ended says which.)
                child.kill();
                format!("stopped answering ({e}) and {}", child.reap())
            }
        };
        self.lost(i, Lost::Died(how))
    }
}

impl Drop for State {
    /// Stops every worker: an exit request, then their sockets close; a
    /// worker still there after a second is killed. All are reaped. In
    /// another process (forked by the program) the workers are not this
    /// process's: only its copies of the sockets and maps are let go.
    fn drop(&mut self) {
        if nix::unistd::getpid() != self.owner {
            return;
        }
        for w in &self.workers {
            let _ = send(&w.sock, &Request::new(Command::Exit), None);
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        for w in &self.workers {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(pidfd) = w.child.pidfd() {
                let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
                let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::ZERO);
                if !matches!(poll(&mut fds, timeout), Ok(1)) {
                    w.child.kill();
                }
            }
            w.child.reap();
        }
    }
}

/// A pool worker's entry point, run by the keeper in the forked child.
///
/// # Safety
/// `op` is the address of an `L` that was alive when this process was
/// forked (this process's copy of it never goes away: the worker never
/// returns).
unsafe fn worker_start<T: Scalar, L: BiLinOp<T>>(op: usize, index: usize, sock: OwnedFd) -> ! {
    // SAFETY: the contract above.
    let op = unsafe { &*(op as *const L) };
    worker_main::<T, L>(op, index, sock)
}

/// A worker's life: answer requests until the parent says stop or goes away.
fn worker_main<T: Scalar, L: BiLinOp<T>>(op: &L, index: usize, sock: OwnedFd) -> ! {
    let mut input: Option<SharedBuf> = None;
    let mut output: Option<SharedBuf> = None;
    // Why a map could not be made: the next product reports it and leaves.
    let mut cannot: Option<String> = None;
    let mut scratch = MemBuffer::new(StackReq::EMPTY);
    let mut have = StackReq::EMPTY;
    // The next request, decoded (the parent gone: leave).
    let next = || {
        let mut req = bytemuck::Zeroable::zeroed();
        match recv(&sock, bytemuck::bytes_of_mut::<Request>(&mut req), MsgFlags::empty()) {
            Ok((0, _)) | Err(_) => exit_child(ExitCode::ParentGone),
            Ok((len, fd)) if len == size_of::<Request>() => req.decode().map(|c| (c, fd)),
            Ok((len, _)) => Err(format!("a request of {len} bytes")),
        }
    };
    loop {
        let outcome = match next() {
            Ok((Command::Exit, _)) => exit_child(ExitCode::Done),
            Ok((map @ (Command::MapInput(bytes) | Command::MapOutput(bytes)), fd)) => {
                let is_input = matches!(map, Command::MapInput(_));
                let map = match fd {
                    Some(fd) => SharedBuf::from_fd(fd, bytes).map_err(|e| e.to_string()),
                    None => Err("no memfd came with the request".to_owned()),
                };
                let map = map
                    .map_err(|e| {
                        cannot.get_or_insert(format!("could not map a shared buffer of {bytes} bytes: {e}")).clone()
                    })
                    .ok();
                if is_input {
                    input = map
                } else {
                    output = map
                }
                continue;
            }
            Ok((Command::Product(b), _)) => {
                // Get ready while the parent copies the input in: zero the
                // block (the map holds the last product's data).
                let fits = |map: &SharedBuf, rows: usize| {
                    let bytes = rows.checked_mul(b.k).and_then(|e| e.checked_mul(size_of::<T>()));
                    bytes.is_some_and(|bytes| bytes <= map.len())
                };
                let ready = match (&cannot, &input, &mut output) {
                    (Some(why), ..) => Err(why.clone()),
                    (None, Some(input), Some(output)) if fits(input, b.n) && fits(output, b.m) => {
                        output.mat_mut::<T>(b.m, b.k).subcols_mut(b.start, b.width).fill(zero());
                        Ok((input, output))
                    }
                    (None, Some(_), Some(_)) => Err(format!("a product of {} columns outside the shared maps", b.k)),
                    _ => Err("a product came before its shared maps".to_owned()),
                };
                // Whatever happened, the parent sends `Go` and awaits one report.
                match (next(), ready) {
                    (Ok((Command::Go, _)), Ok((input, output))) => {
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            let work = Work { op, mode: b.mode, use_matvec: b.use_matvec };
                            let need = work.scratch(b.width, 1);
                            if need.size_bytes() > have.size_bytes() || need.align_bytes() > have.align_bytes() {
                                have = have.or(need);
                                scratch = MemBuffer::new(have);
                            }
                            let rhs = input.mat::<T>(b.n, b.k).subcols(b.start, b.width);
                            let out = output.mat_mut::<T>(b.m, b.k).subcols_mut(b.start, b.width);
                            work.block(out, rhs, MemStack::new(&mut scratch));
                        }));
                        match result {
                            Ok(()) => Outcome::Done,
                            Err(payload) => Outcome::Panicked(panic_message(&*payload).to_owned()),
                        }
                    }
                    (Ok((Command::Go, _)), Err(why)) => Outcome::Broken(why),
                    (Ok((other, _)), _) => Outcome::Broken(format!("received {other:?} instead of Go after a product")),
                    (Err(why), _) => Outcome::Broken(format!("received a bad request: {why}")),
                }
            }
            Ok((Command::Go, _)) => Outcome::Broken("received Go without a product".to_owned()),
            Err(why) => Outcome::Broken(format!("received a bad request: {why}")),
        };
        let broken = matches!(outcome, Outcome::Broken(_));
        if send(&sock, &Report::new(index, &outcome), None).is_err() {
            exit_child(ExitCode::ParentGone)
        }
        if broken {
            exit_child(ExitCode::Done)
        }
    }
}

#[cfg(test)]
mod tests {
    //! A pool worker driven message by message, as no pool would: each
    //! test forks one and waits for it under a deadline.

    use std::os::fd::AsRawFd;

    use faer::Mat;
    use nix::unistd::{ForkResult, fork};

    use super::*;
    use crate::ops::Mode;
    use crate::parallel::process::protocol::{Keep, enter_child};

    /// A worker of `op`, forked from this test, and its socket.
    fn worker(op: &Mat<f64>) -> (OwnedFd, Child) {
        let (ours, theirs) = socket_pair().unwrap();
        let parent = nix::unistd::getpid();
        // SAFETY: the child only enters the worker's life, as a pool's
        // keeper does (it allocates through glibc's fork-safe malloc, takes
        // no lock of this test process) and leaves with `_exit`.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                enter_child(parent, Keep::Only(theirs.as_raw_fd()));
                worker_main::<f64, Mat<f64>>(op, 0, theirs)
            }
            ForkResult::Parent { child } => (ours, Child::new(child).unwrap()),
        }
    }

    /// How `child` ended, once it did; killed after 10 s.
    fn ended(child: &Child) -> String {
        let start = Instant::now();
        loop {
            if let Some(how) = child.try_reap() {
                return how;
            }
            if start.elapsed() > Duration::from_secs(10) {
                child.kill();
                return format!("no exit within 10 s ({})", child.reap());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The worker's one report, within 10 s.
    fn report(sock: &OwnedFd, child: &Child) -> Result<Outcome, Lost> {
        wait_reports(&[(sock, child)], Deadline::start(Some(Duration::from_secs(10)))).remove(0)
    }

    /// Input and output maps of 5 columns, sent to the worker; the output full of 7s.
    fn maps(sock: &OwnedFd) -> (SharedBuf, SharedBuf) {
        let input = SharedBuf::new(4 * 5 * 8).unwrap();
        let mut output = SharedBuf::new(3 * 5 * 8).unwrap();
        output.mat_mut::<f64>(3, 5).fill(7.0);
        send(sock, &Request::new(Command::MapInput(input.len())), Some(input.fd())).unwrap();
        send(sock, &Request::new(Command::MapOutput(output.len())), Some(output.fd())).unwrap();
        (input, output)
    }

    /// Columns 1..4 of a 3 × 4 operator's product with 5 columns.
    const BLOCK: Block = Block { mode: Mode::Apply, use_matvec: false, m: 3, n: 4, k: 5, start: 1, width: 3 };

    #[test]
    fn a_worker_zeroes_its_block_on_product_and_reads_the_input_on_go() {
        let a = crate::random::mat::<f64>(3, 4, 0);
        let x = crate::random::mat::<f64>(4, 5, 1);
        let (sock, child) = worker(&a);
        let (mut input, output) = maps(&sock);
        send(&sock, &Request::new(Command::Product(BLOCK)), None).unwrap();
        // Zeroed before `Go`, while the input is still unwritten; the other columns untouched.
        let start = Instant::now();
        while (1..4).any(|j| output.mat::<f64>(3, 5).col(j).iter().any(|&v| v != 0.0)) {
            assert!(start.elapsed() < Duration::from_secs(10), "the block was not zeroed before Go");
            std::thread::sleep(Duration::from_millis(1));
        }
        input.mat_mut::<f64>(4, 5).copy_from(&x);
        send(&sock, &Request::new(Command::Go), None).unwrap();
        assert!(matches!(report(&sock, &child), Ok(Outcome::Done)));
        let out = output.mat::<f64>(3, 5);
        assert!((out.subcols(1, 3) - &a * x.subcols(1, 3)).norm_max() < 1e-12);
        assert!(out.col(0).iter().chain(out.col(4).iter()).all(|&v| v == 7.0));
        send(&sock, &Request::new(Command::Exit), None).unwrap();
        assert_eq!(ended(&child), "exited with code 0");
    }

    #[test]
    fn a_worker_given_anything_but_go_after_a_product_or_a_block_outside_its_maps_answers_broken_and_leaves() {
        let a = crate::random::mat::<f64>(3, 4, 0);
        let mut garbage = Request::new(Command::Go);
        bytemuck::bytes_of_mut(&mut garbage)[0] = 42;
        let expected = [(Some(Command::Exit), "instead of Go"), (Some(Command::Product(BLOCK)), "instead of Go")];
        for (after, why) in expected.into_iter().chain([(None, "bad request")]) {
            let (sock, child) = worker(&a);
            let _maps = maps(&sock);
            send(&sock, &Request::new(Command::Product(BLOCK)), None).unwrap();
            send(&sock, &after.map_or(garbage, Request::new), None).unwrap();
            let outcome = report(&sock, &child);
            assert!(matches!(&outcome, Ok(Outcome::Broken(m)) if m.contains(why)), "{after:?}: {outcome:?}");
            assert_eq!(ended(&child), "exited with code 0");
        }
        // A block larger than the maps, and `Go` without a product.
        let (sock, child) = worker(&a);
        let _maps = maps(&sock);
        send(&sock, &Request::new(Command::Product(Block { k: 1 << 40, ..BLOCK })), None).unwrap();
        send(&sock, &Request::new(Command::Go), None).unwrap();
        assert!(matches!(report(&sock, &child), Ok(Outcome::Broken(m)) if m.contains("outside the shared maps")));
        assert_eq!(ended(&child), "exited with code 0");
        let (sock, child) = worker(&a);
        send(&sock, &Request::new(Command::Go), None).unwrap();
        assert!(matches!(report(&sock, &child), Ok(Outcome::Broken(m)) if m.contains("without a product")));
        assert_eq!(ended(&child), "exited with code 0");
    }

    #[test]
    fn a_worker_whose_parent_goes_away_between_product_and_go_leaves() {
        let a = crate::random::mat::<f64>(3, 4, 0);
        let (sock, child) = worker(&a);
        let _maps = maps(&sock);
        send(&sock, &Request::new(Command::Product(BLOCK)), None).unwrap();
        drop(sock);
        assert_eq!(ended(&child), format!("exited with code {}", ExitCode::ParentGone as i32));
    }
}
