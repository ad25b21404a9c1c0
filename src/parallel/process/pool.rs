//! Workers forked once, when the operator is built (`procs_created_once`).
//!
//! Each worker is connected to the parent by a `SOCK_SEQPACKET` socket pair.
//! The parent sends fixed-size requests (map this memfd as the input or the
//! output; compute this block) and each worker answers every product with
//! a status and, after a panic, its message. A worker that dies closes its
//! end: the parent reads end-of-file, reaps it and reports how it ended.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::reborrow::ReborrowMut;
use faer::{MatMut, MatRef};
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, recvmsg, sendmsg,
    socketpair,
};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use super::fork::reap;
use super::shm::{SharedBuf, os};
use super::{describe, enter_child, panic_message};
use crate::BiLinOp;
use crate::ops::Mode;
use crate::parallel::{Error, Scalar, Work, split};

/// Request kinds.
const MAP_INPUT: u64 = 1;
const MAP_OUTPUT: u64 = 2;
const PRODUCT: u64 = 3;
const EXIT: u64 = 4;

/// A request: `[kind, bytes or mode, use_matvec, m, n, k, first column, width]`.
type Request = [u64; 8];

/// A reply: `[status (0 ok, 1 panicked), message length]`, then the message.
const REPLY_MAX: usize = 1024;

#[derive(Debug)]
struct Worker {
    pid: Pid,
    sock: OwnedFd,
}

#[derive(Debug)]
struct State {
    workers: Vec<Worker>,
    input: Option<SharedBuf>,
    output: Option<SharedBuf>,
    /// Why the pool cannot serve products any more.
    broken: Option<String>,
}

/// A pool of forked workers.
#[derive(Debug)]
pub(crate) struct Pool {
    nworkers: usize,
    state: Mutex<State>,
}

impl Pool {
    /// Forks `nworkers - 1` workers, each with a snapshot of `op`; the
    /// parent is the last worker.
    pub(crate) fn new<T: Scalar, L: BiLinOp<T>>(op: &L, nworkers: usize) -> Result<Self, Error> {
        let parent = nix::unistd::getpid();
        let mut state = State { workers: Vec::with_capacity(nworkers), input: None, output: None, broken: None };
        for _ in 1..nworkers {
            let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
                .map_err(|e| os("socketpair", e.into()))?;
            // SAFETY: see the module docs of `process`; the worker never
            // returns from `worker_main`.
            match unsafe { fork() } {
                Ok(ForkResult::Child) => {
                    drop(ours);
                    // The other workers' sockets belong to the parent.
                    for w in &state.workers {
                        // SAFETY: closing this process's copy of a descriptor nothing here uses.
                        unsafe { libc::close(w.sock.as_raw_fd()) };
                    }
                    worker_main::<T, L>(op, theirs, parent)
                }
                Ok(ForkResult::Parent { child }) => state.workers.push(Worker { pid: child, sock: ours }),
                // `state` drops: the workers forked so far are stopped and reaped.
                Err(e) => return Err(os("fork", e.into())),
            }
        }
        Ok(Self { nworkers, state: Mutex::new(state) })
    }

    pub(crate) fn nworkers(&self) -> usize {
        self.nworkers
    }

    pub(crate) fn worker_pids(&self) -> Vec<i32> {
        self.lock().workers.iter().map(|w| w.pid.as_raw()).collect()
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
        let (mode, use_matvec) = (work.mode, work.use_matvec);
        let mut st = self.lock();
        if let Some(why) = &st.broken {
            return Err(Error::PoolBroken(why.clone()));
        }
        let (m, n, k) = (out.nrows(), rhs.nrows(), rhs.ncols());
        // The workers' columns go through the maps; the last block stays here.
        let nworkers = nblocks - 1;
        let kw = split::block(k, nblocks, nworkers).start;
        let size = size_of::<T>();
        st.ensure_map(MAP_INPUT, n * kw * size)?;
        st.ensure_map(MAP_OUTPUT, m * kw * size)?;
        st.input.as_mut().expect("mapped").mat_mut::<T>(n, kw).copy_from(rhs.subcols(0, kw));

        // Requests first, then the parent's block, then replies: all run at the same time.
        let mut result = Ok(());
        let mut sent = 0;
        for i in 0..nworkers {
            let cols = split::block(k, nblocks, i);
            let req: Request = [
                PRODUCT,
                u64::from(mode.code()),
                use_matvec as u64,
                m as u64,
                n as u64,
                kw as u64,
                cols.start as u64,
                cols.len() as u64,
            ];
            if let Err(e) = send(&st.workers[i].sock, &req, None) {
                result = Err(st.lost(i, e, None));
                break;
            }
            sent += 1;
        }
        let last = split::block(k, nblocks, nworkers);
        // A panic here waits for the workers' replies first, so that the next
        // product finds the sockets in step.
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let out = out.rb_mut().subcols_mut(last.start, last.len());
            work.block(out, rhs.subcols(last.start, last.len()), stack)
        }));
        for i in 0..sent {
            let mut reply = [0u8; 16 + REPLY_MAX];
            let got = wait_reply(&st.workers[i], &mut reply);
            let err = match got {
                Ok(len) if len >= 16 => {
                    let status = u64::from_ne_bytes(reply[..8].try_into().unwrap());
                    if status == 0 {
                        continue;
                    }
                    let msg_len = (u64::from_ne_bytes(reply[8..16].try_into().unwrap()) as usize).min(len - 16);
                    let message = String::from_utf8_lossy(&reply[16..16 + msg_len]).into_owned();
                    Error::WorkerPanicked { worker: i, pid: st.workers[i].pid.as_raw(), message }
                }
                Ok(_) => st.lost(i, std::io::ErrorKind::UnexpectedEof.into(), None),
                Err((e, status)) => st.lost(i, e, status),
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
    /// Makes sure the input or output map holds `bytes`; a new, larger map
    /// is sent to every worker.
    fn ensure_map(&mut self, which: u64, bytes: usize) -> Result<(), Error> {
        let slot = if which == MAP_INPUT { &mut self.input } else { &mut self.output };
        if slot.as_ref().is_some_and(|b| b.len() >= bytes) {
            return Ok(());
        }
        *slot = None;
        let buf = SharedBuf::new(bytes.next_power_of_two())?;
        let req: Request = [which, buf.len() as u64, 0, 0, 0, 0, 0, 0];
        let fd = buf.fd().as_raw_fd();
        *slot = Some(buf);
        for i in 0..self.workers.len() {
            if let Err(e) = send(&self.workers[i].sock, &req, Some(fd)) {
                return Err(self.lost(i, e, None));
            }
        }
        Ok(())
    }

    /// Worker `i` stopped answering (`e`): reap it (unless `reaped` says how
    /// it ended already), mark the pool broken and say how it ended.
    fn lost(&mut self, i: usize, e: std::io::Error, reaped: Option<WaitStatus>) -> Error {
        let pid = self.workers[i].pid;
        let status = reaped.map_or_else(|| waitpid(pid, Some(WaitPidFlag::WNOHANG)), Ok);
        let how = match status {
            Ok(WaitStatus::StillAlive) => {
                // Alive but its socket failed: it cannot be trusted any more.
                let _ = kill(pid, Signal::SIGKILL);
                format!("stopped answering ({e}) and was killed")
            }
            Ok(status) => describe(status),
            Err(_) => format!("stopped answering ({e})"),
        };
        let how = match reap(pid) {
            Ok(status) if reaped.is_none() && how.starts_with("stopped") => format!("{how}; {}", describe(status)),
            _ => how,
        };
        // Reaped: nothing to do for this one on drop.
        self.workers[i].pid = Pid::from_raw(0);
        self.broken = Some(format!("worker {i} (pid {}) {how}", pid.as_raw()));
        Error::WorkerDied { worker: i, pid: pid.as_raw(), how }
    }
}

impl Drop for State {
    /// Stops every worker: an exit request, then their sockets close; a
    /// worker still there after a second is killed. All are reaped.
    fn drop(&mut self) {
        for w in &self.workers {
            let _ = send(&w.sock, &[EXIT, 0, 0, 0, 0, 0, 0, 0], None);
        }
        let workers = std::mem::take(&mut self.workers);
        let pids: Vec<Pid> = workers.iter().map(|w| w.pid).filter(|p| p.as_raw() > 0).collect();
        drop(workers);
        let deadline = Instant::now() + Duration::from_secs(1);
        for pid in pids {
            loop {
                match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Ok(WaitStatus::StillAlive) => {
                        let _ = kill(pid, Signal::SIGKILL);
                        let _ = reap(pid);
                        break;
                    }
                    Err(nix::errno::Errno::EINTR) => {}
                    _ => break,
                }
            }
        }
    }
}

/// Waits for worker `w`'s reply. Another process may hold a copy of the
/// worker's end of the socket (a child forked elsewhere in this program), so
/// end-of-file is not relied on: while no reply comes, `waitpid` checks every
/// 20 ms whether the worker is gone, and returns how it ended if so.
fn wait_reply(w: &Worker, buf: &mut [u8]) -> Result<usize, (std::io::Error, Option<WaitStatus>)> {
    loop {
        let mut fds = [PollFd::new(w.sock.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, 20u16) {
            Ok(n) if n > 0 => return recv(&w.sock, buf, None).map_err(|e| (e, None)),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err((e.into(), None)),
        }
        match waitpid(w.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => return Err((std::io::ErrorKind::UnexpectedEof.into(), Some(status))),
            Err(e) => return Err((e.into(), None)),
        }
    }
}

/// Sends one request, with a descriptor if given. Never raises SIGPIPE.
fn send(sock: &OwnedFd, req: &Request, fd: Option<RawFd>) -> std::io::Result<()> {
    let bytes = bytemuck::bytes_of(req);
    send_bytes(sock, bytes, fd)
}

fn send_bytes(sock: &OwnedFd, bytes: &[u8], fd: Option<RawFd>) -> std::io::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let fds;
    let cmsgs: &[ControlMessage] = match fd {
        Some(fd) => {
            fds = [fd];
            &[ControlMessage::ScmRights(&fds)]
        }
        None => &[],
    };
    loop {
        match sendmsg::<UnixAddr>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message (0 bytes: the other end is gone) and a descriptor
/// if one came with it and `fd` asks for it.
fn recv(sock: &OwnedFd, buf: &mut [u8], mut fd: Option<&mut Option<OwnedFd>>) -> std::io::Result<usize> {
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg::<UnixAddr>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(msg) => {
                let len = msg.bytes;
                for c in msg.cmsgs().map_err(std::io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for raw in fds {
                            // SAFETY: the kernel just gave this process these descriptors.
                            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                            if let Some(slot) = fd.as_deref_mut() {
                                *slot = Some(owned);
                            }
                        }
                    }
                }
                return Ok(len);
            }
        }
    }
}

/// A worker's life: answer requests until the parent says stop or goes away.
fn worker_main<T: Scalar, L: BiLinOp<T>>(op: &L, sock: OwnedFd, parent: Pid) -> ! {
    enter_child();
    // Die with the parent; if it is already gone, leave now.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if nix::unistd::getppid() != parent {
        // SAFETY: leaving the child without running anything inherited from the parent.
        unsafe { libc::_exit(0) }
    }
    let mut input: Option<SharedBuf> = None;
    let mut output: Option<SharedBuf> = None;
    let mut scratch = MemBuffer::new(StackReq::EMPTY);
    let mut have = StackReq::EMPTY;
    loop {
        let mut req: Request = [0; 8];
        let mut fd = None;
        // An error reading counts as the parent being gone.
        let len = recv(&sock, bytemuck::bytes_of_mut(&mut req), Some(&mut fd)).unwrap_or_default();
        if len == 0 || req[0] == EXIT {
            // SAFETY: as above.
            unsafe { libc::_exit(0) }
        }
        match req[0] {
            MAP_INPUT | MAP_OUTPUT => {
                let map = fd.map(|fd| SharedBuf::from_fd(fd, req[1] as usize));
                // A map that cannot be made leaves the slot empty: the next product panics and says so.
                let map = map.and_then(Result::ok);
                if req[0] == MAP_INPUT { input = map } else { output = map }
            }
            PRODUCT => {
                let [_, mode, use_matvec, m, n, k, start, width] = req.map(|w| w as usize);
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mode = u8::try_from(mode).ok().and_then(Mode::from_code);
                    let mode = mode.expect("lazylinop: a worker received an unknown product mode");
                    let work = Work { op, mode, use_matvec: use_matvec != 0 };
                    let need = work.scratch(width, 1);
                    if need.size_bytes() > have.size_bytes() || need.align_bytes() > have.align_bytes() {
                        have = have.or(need);
                        scratch = MemBuffer::new(have);
                    }
                    let (Some(input), Some(output)) = (&input, &mut output) else {
                        panic!("lazylinop: a worker could not map the shared operand or output");
                    };
                    let rhs = input.mat::<T>(n, k).subcols(start, width);
                    let out = output.mat_mut::<T>(m, k).subcols_mut(start, width);
                    work.block(out, rhs, MemStack::new(&mut scratch));
                }));
                let mut reply = [0u8; 16 + REPLY_MAX];
                let len = match &result {
                    Ok(()) => 16,
                    Err(payload) => {
                        let msg = panic_message(&**payload).as_bytes();
                        let len = msg.len().min(REPLY_MAX);
                        reply[..8].copy_from_slice(&1u64.to_ne_bytes());
                        reply[8..16].copy_from_slice(&(len as u64).to_ne_bytes());
                        reply[16..16 + len].copy_from_slice(&msg[..len]);
                        16 + len
                    }
                };
                if send_bytes(&sock, &reply[..len], None).is_err() {
                    // SAFETY: as above.
                    unsafe { libc::_exit(0) }
                }
            }
            _ => {}
        }
    }
}
