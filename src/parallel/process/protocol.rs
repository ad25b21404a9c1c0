//! The one protocol between a product and its forked workers, in both
//! modes: how a child starts and leaves ([`enter_child`], [`exit_child`]),
//! the handle of a forked worker ([`Child`]: a pidfd, so that waits and
//! signals never reach another process), the messages ([`Request`], pool
//! only, and [`Report`], both modes: "worker i finished, or panicked with
//! this message, or cannot go on"), and the one wait for reports
//! ([`wait_reports`]), with its deadline.
//!
//! Every worker has its own `SOCK_SEQPACKET` socket to the parent: one
//! message is one request or one report, whole. Messages are fixed-size
//! `#[repr(C)]` structs read with bytemuck and decoded with checks.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigHandler, Signal};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, recvmsg, sendmsg,
    socketpair,
};
use nix::unistd::Pid;

use super::os;
use crate::ops::Mode;
use crate::parallel::Error;

// ---------------------------------------------------------------------------
// A child's life.
// ---------------------------------------------------------------------------

/// What a forked child keeps of its parent's descriptors.
#[derive(Copy, Clone)]
pub(crate) enum Keep {
    /// Everything: a per-product child runs the operator once, with all the
    /// descriptors the operator may use, and leaves.
    All,
    /// Standard input, output and error, and this socket: a pool worker
    /// lives long, and must not keep a pipe or a file the program closed.
    Only(RawFd),
}

/// The first thing a forked child does: mark itself a worker (no rayon,
/// silent panics), make faer's global parallelism sequential, ignore the
/// signals a terminal or a service manager sends to a whole process group
/// (the program decides; the child dies with it), die with the parent
/// process (`PR_SET_PDEATHSIG`; the parent is gone already: leave), and
/// close the descriptors it must not keep. Only for a child just forked
/// by `parent` (it closes descriptors other code of this process owns).
pub(crate) fn enter_child(parent: Pid, keep: Keep) {
    super::IN_WORKER.store(true, std::sync::atomic::Ordering::Relaxed);
    faer::set_global_parallelism(faer::Par::Seq);
    for sig in GROUP_SIGNALS {
        // SAFETY: SIG_IGN installs no handler.
        let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigIgn) };
    }
    // They were blocked across the fork (see `GroupSignalsBlocked`): one
    // that came meanwhile is now discarded, not fatal.
    let _ = group_signals().thread_unblock();
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if nix::unistd::getppid() != parent {
        exit_child(ExitCode::ParentGone);
    }
    if let Keep::Only(fd) = keep {
        let fd = fd as u32;
        // SAFETY: close_range closes this child's copies of descriptors; the
        // child never uses the closed ones (it leaves through `exit_child`,
        // running no destructor that could close them again).
        unsafe {
            if fd > 3 {
                libc::close_range(3, fd - 1, 0);
            }
            libc::close_range(fd.max(2) + 1, u32::MAX, 0);
        }
    }
}

/// The signals a terminal or a service manager sends to a whole process
/// group, which workers ignore.
const GROUP_SIGNALS: [Signal; 4] = [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGHUP, Signal::SIGTERM];

fn group_signals() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    GROUP_SIGNALS.into_iter().for_each(|s| set.add(s));
    set
}

/// [`GROUP_SIGNALS`] blocked in this thread while it lives: hold one
/// across a `fork`, so that a Ctrl-C that comes before the child ignores
/// them does not kill it (the child unblocks them in [`enter_child`]).
pub(crate) struct GroupSignalsBlocked(Option<nix::sys::signal::SigSet>);

impl GroupSignalsBlocked {
    pub(crate) fn new() -> Self {
        Self(group_signals().thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK).ok())
    }
}

impl Drop for GroupSignalsBlocked {
    fn drop(&mut self) {
        if let Some(old) = self.0 {
            let _ = old.thread_set_mask();
        }
    }
}

/// Why a child leaves (its exit code).
#[derive(Copy, Clone)]
#[repr(i32)]
pub(crate) enum ExitCode {
    /// Done: its report is sent, or the parent asked it to stop.
    Done = 0,
    /// The parent was gone before the child could start, or its socket is.
    ParentGone = 3,
}

/// The one way a forked child leaves: `_exit`, running nothing inherited
/// from the parent (no destructor, no atexit handler, no flush of buffers
/// another thread of the parent was filling).
pub(crate) fn exit_child(code: ExitCode) -> ! {
    // SAFETY: `_exit` ends the process at once; nothing after it runs.
    unsafe { libc::_exit(code as i32) }
}

// ---------------------------------------------------------------------------
// The handle of a forked worker.
// ---------------------------------------------------------------------------

/// A forked child, through a pidfd: its waits and signals can only reach
/// this process (never another one that got its pid after it was reaped),
/// and the pidfd is readable once it ended, so that a death is seen at once
/// even when another process holds a copy of the child's socket.
#[derive(Debug)]
pub(crate) struct Child {
    pid: Pid,
    /// `None` if it was gone before the pidfd could be opened (reaped by
    /// the system: the program ignores SIGCHLD).
    pidfd: Option<OwnedFd>,
    /// How it ended, once reaped. Reaping happens under this lock only.
    ended: Mutex<Option<String>>,
}

impl Child {
    /// The handle of the child `pid` just forked by this process. If the
    /// pidfd cannot be had, the child is killed and reaped.
    pub(crate) fn new(pid: Pid) -> Result<Self, Error> {
        // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
        if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
            // Our own child cannot have been reaped by us yet: the system did.
            return Ok(Self { pid, pidfd: None, ended: Mutex::new(Some(IGNORED.to_owned())) });
        }
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            return Err(os("pidfd_open", e));
        }
        // SAFETY: the kernel just gave this process this descriptor.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(Self { pid, pidfd: Some(pidfd), ended: Mutex::new(None) })
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// Readable once the child ended; `None` if it was reaped already.
    pub(crate) fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().filter(|_| !self.is_reaped()).map(|fd| fd.as_fd())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.ended.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether it was reaped.
    pub(crate) fn is_reaped(&self) -> bool {
        self.lock().is_some()
    }

    /// Kills it (SIGKILL), unless it ended already.
    pub(crate) fn kill(&self) {
        let ended = self.lock();
        if let (None, Some(pidfd)) = (&*ended, &self.pidfd) {
            // SAFETY: pidfd_send_signal takes integers and a null siginfo.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }
    }

    /// How it ended, if it has (reaping it), without waiting.
    pub(crate) fn try_reap(&self) -> Option<String> {
        self.wait(false)
    }

    /// Waits until it ended, reaps it and says how it ended.
    pub(crate) fn reap(&self) -> String {
        self.wait(true).expect("a blocking wait returns when the child ended")
    }

    fn wait(&self, block: bool) -> Option<String> {
        let mut ended = self.lock();
        if let Some(how) = &*ended {
            return Some(how.clone());
        }
        let Some(pidfd) = &self.pidfd else { return Some(IGNORED.to_owned()) };
        let flags = libc::WEXITED | if block { 0 } else { libc::WNOHANG };
        let how = loop {
            // SAFETY: all zeros is a valid siginfo_t; waitid writes into it.
            let mut info: libc::siginfo_t = unsafe { core::mem::zeroed() };
            // SAFETY: waitid writes the siginfo_t it is given.
            let r = unsafe { libc::waitid(libc::P_PIDFD, pidfd.as_raw_fd() as libc::id_t, &mut info, flags) };
            if r == 0 {
                // SAFETY: waitid filled a SIGCHLD siginfo (or left zeros: WNOHANG, still running).
                let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
                if pid == 0 {
                    return None;
                }
                break describe(info.si_code, status);
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                // Reaped by the system: this process ignores SIGCHLD.
                Some(libc::ECHILD) => break IGNORED.to_owned(),
                _ => break format!("ended (waitid failed: {})", std::io::Error::last_os_error()),
            }
        };
        *ended = Some(how.clone());
        Some(how)
    }
}

/// How a child reaped by the system ended.
const IGNORED: &str = "ended (how is not known: this process ignores SIGCHLD, so the system reaped it)";

/// How a child ended, from waitid's `si_code` and `si_status`.
fn describe(code: i32, status: i32) -> String {
    let signal = || Signal::try_from(status).map_or_else(|_| format!("signal {status}"), |s| s.as_str().to_owned());
    match code {
        libc::CLD_EXITED => format!("exited with code {status}"),
        libc::CLD_KILLED => format!("was killed by signal {}", signal()),
        libc::CLD_DUMPED => format!("was killed by signal {} (core dumped)", signal()),
        _ => format!("ended (waitid code {code}, status {status})"),
    }
}

// ---------------------------------------------------------------------------
// Messages.
// ---------------------------------------------------------------------------

/// A connected pair of sockets, one message per request or report.
pub(crate) fn socket_pair() -> Result<(OwnedFd, OwnedFd), Error> {
    socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| os("socketpair", e.into()))
}

/// What the parent asks a pool worker.
#[repr(C)]
#[derive(Copy, Clone, Debug, Pod, Zeroable)]
pub(crate) struct Request {
    kind: u32,
    mode: u32,
    use_matvec: u32,
    _pad: u32,
    bytes: u64,
    m: u64,
    n: u64,
    k: u64,
    start: u64,
    width: u64,
}

const MAP_INPUT: u32 = 1;
const MAP_OUTPUT: u32 = 2;
const PRODUCT: u32 = 3;
const EXIT: u32 = 4;
const GO: u32 = 5;

/// One worker's block of a pool product: columns `start..start + width` of
/// the `n × k` input map and of the `m × k` output map.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Block {
    pub(crate) mode: Mode,
    pub(crate) use_matvec: bool,
    pub(crate) m: usize,
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) start: usize,
    pub(crate) width: usize,
}

/// A decoded [`Request`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// Map the memfd that comes with this message, of this many bytes, as the input.
    MapInput(usize),
    /// Same, as the output.
    MapOutput(usize),
    /// A product is coming, of this block: get ready (zero the block of
    /// the output map), then wait for [`Command::Go`].
    Product(Block),
    /// The input map is written: compute the block of the last `Product`.
    Go,
    /// Leave.
    Exit,
}

impl Request {
    pub(crate) fn new(command: Command) -> Self {
        let mut r = Self::zeroed();
        match command {
            Command::MapInput(bytes) | Command::MapOutput(bytes) => {
                r.kind = if matches!(command, Command::MapInput(_)) { MAP_INPUT } else { MAP_OUTPUT };
                r.bytes = bytes as u64;
            }
            Command::Product(b) => {
                r.kind = PRODUCT;
                r.mode = u32::from(b.mode.code());
                r.use_matvec = u32::from(b.use_matvec);
                [r.m, r.n, r.k, r.start, r.width] = [b.m, b.n, b.k, b.start, b.width].map(|x| x as u64);
            }
            Command::Exit => r.kind = EXIT,
            Command::Go => r.kind = GO,
        }
        r
    }

    /// The command, checked: known kind and mode, a block inside its matrix.
    pub(crate) fn decode(&self) -> Result<Command, String> {
        let size = |x: u64| usize::try_from(x).map_err(|_| format!("{x} does not fit in usize"));
        match self.kind {
            MAP_INPUT => Ok(Command::MapInput(size(self.bytes)?)),
            MAP_OUTPUT => Ok(Command::MapOutput(size(self.bytes)?)),
            EXIT => Ok(Command::Exit),
            GO => Ok(Command::Go),
            PRODUCT => {
                let mode = u8::try_from(self.mode).ok().and_then(Mode::from_code);
                let mode = mode.ok_or_else(|| format!("unknown product mode {}", self.mode))?;
                let use_matvec = match self.use_matvec {
                    0 => false,
                    1 => true,
                    x => return Err(format!("use_matvec is {x}")),
                };
                let [m, n, k, start, width] = [self.m, self.n, self.k, self.start, self.width];
                let b = Block {
                    mode,
                    use_matvec,
                    m: size(m)?,
                    n: size(n)?,
                    k: size(k)?,
                    start: size(start)?,
                    width: size(width)?,
                };
                if b.start.checked_add(b.width).is_none_or(|end| end > b.k) {
                    return Err(format!("block {}..+{} outside {} columns", b.start, b.width, b.k));
                }
                Ok(Command::Product(b))
            }
            kind => Err(format!("unknown request kind {kind}")),
        }
    }
}

/// The longest message a report carries (longer ones are cut).
const MESSAGE: usize = 1024;

/// What a worker answers, in both modes.
#[repr(C)]
#[derive(Copy, Clone, Pod, Zeroable)]
pub(crate) struct Report {
    worker: u32,
    status: u32,
    len: u32,
    message: [u8; MESSAGE],
}

const DONE: u32 = 0;
const PANICKED: u32 = 1;
const BROKEN: u32 = 2;

/// A decoded [`Report`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The block is written.
    Done,
    /// The operator panicked, with this message.
    Panicked(String),
    /// The worker cannot go on (it could not map shared memory, say) and leaves.
    Broken(String),
}

impl Report {
    pub(crate) fn new(worker: usize, outcome: &Outcome) -> Self {
        let mut r = Self::zeroed();
        r.worker = worker as u32;
        let message = match outcome {
            Outcome::Done => "",
            Outcome::Panicked(m) => {
                r.status = PANICKED;
                m
            }
            Outcome::Broken(m) => {
                r.status = BROKEN;
                m
            }
        };
        // Cut at a character boundary.
        let mut len = message.len().min(MESSAGE);
        while !message.is_char_boundary(len) {
            len -= 1;
        }
        r.message[..len].copy_from_slice(&message.as_bytes()[..len]);
        r.len = len as u32;
        r
    }

    /// The outcome, checked: whole, from worker `worker`, a known status.
    fn decode(bytes: &[u8], worker: usize) -> Result<Outcome, String> {
        let r: Report = bytemuck::try_pod_read_unaligned(bytes)
            .map_err(|_| format!("a report of {} bytes instead of {}", bytes.len(), size_of::<Report>()))?;
        if r.worker as usize != worker {
            return Err(format!("a report from worker {} on worker {worker}'s socket", r.worker));
        }
        let len = r.len as usize;
        if len > MESSAGE {
            return Err(format!("a message of {len} bytes"));
        }
        let message = || String::from_utf8_lossy(&r.message[..len]).into_owned();
        match r.status {
            DONE => Ok(Outcome::Done),
            PANICKED => Ok(Outcome::Panicked(message())),
            BROKEN => Ok(Outcome::Broken(message())),
            s => Err(format!("unknown status {s}")),
        }
    }
}

/// Sends one message, with a descriptor if given. Never raises SIGPIPE.
pub(crate) fn send<M: Pod>(sock: &OwnedFd, message: &M, fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    let iov = [std::io::IoSlice::new(bytemuck::bytes_of(message))];
    let fds;
    let cmsgs: &[ControlMessage] = match fd {
        Some(fd) => {
            fds = [fd.as_raw_fd()];
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

/// Receives one message into `buf` (0 bytes: the other end is gone), and
/// the descriptor that came with it, if any.
pub(crate) fn recv(sock: &OwnedFd, buf: &mut [u8], flags: MsgFlags) -> std::io::Result<(usize, Option<OwnedFd>)> {
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    loop {
        let mut iov = [std::io::IoSliceMut::new(buf)];
        match recvmsg::<UnixAddr>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), flags | MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(msg) => {
                let mut fd = None;
                for c in msg.cmsgs().map_err(std::io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for raw in fds {
                            // SAFETY: the kernel just gave this process these descriptors.
                            fd = Some(unsafe { OwnedFd::from_raw_fd(raw) });
                        }
                    }
                }
                return Ok((msg.bytes, fd));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The one wait.
// ---------------------------------------------------------------------------

/// Why a worker gave no report.
#[derive(Debug)]
pub(crate) enum Lost {
    /// It ended (reaped: how).
    Died(String),
    /// It did not answer before the deadline: killed and reaped.
    Deadline(Duration),
    /// Its socket failed, or it sent something that is not a report: killed and reaped.
    Garbled(String),
}

/// The deadline of one product: when it ends, and how long it was.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Deadline {
    at: Instant,
    after: Duration,
}

impl Deadline {
    /// From now, if any.
    pub(crate) fn start(after: Option<Duration>) -> Option<Self> {
        after.map(|after| Self { at: Instant::now().checked_add(after).unwrap_or_else(far_future), after })
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Waits for one report from each worker (its socket, its child), until
/// every one reported or ended, or the deadline passed (those still silent
/// are then killed and reaped). Returns each worker's outcome, in order.
/// Waiting is on the sockets and the pidfds together: a death is seen at
/// once, whoever else holds a copy of the worker's socket.
pub(crate) fn wait_reports(workers: &[(&OwnedFd, &Child)], deadline: Option<Deadline>) -> Vec<Result<Outcome, Lost>> {
    let mut results: Vec<Option<Result<Outcome, Lost>>> = workers.iter().map(|_| None).collect();
    loop {
        let pending: Vec<usize> = (0..workers.len()).filter(|&i| results[i].is_none()).collect();
        if pending.is_empty() {
            break;
        }
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    for &i in &pending {
                        let child = workers[i].1;
                        child.kill();
                        child.reap();
                        results[i] = Some(Err(Lost::Deadline(d.after)));
                    }
                    continue;
                }
                // Rounded up.
                PollTimeout::try_from(left.as_millis() + 1).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds: Vec<PollFd<'_>> = pending
            .iter()
            .flat_map(|&i| {
                let (sock, child) = workers[i];
                // A child reaped already: its pidfd slot is a dummy, and it counts as ended.
                let ended = child
                    .pidfd()
                    .map_or(PollFd::new(sock.as_fd(), PollFlags::empty()), |fd| PollFd::new(fd, PollFlags::POLLIN));
                [PollFd::new(sock.as_fd(), PollFlags::POLLIN), ended]
            })
            .collect();
        let reaped = pending.iter().any(|&i| workers[i].1.is_reaped());
        let timeout = if reaped { PollTimeout::ZERO } else { timeout };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                // Cannot wait: treat every silent worker as lost.
                for &i in &pending {
                    results[i] = Some(Err(garbled(workers[i].1, format!("poll failed: {e}"))));
                }
                continue;
            }
        }
        let ready: Vec<(bool, bool)> = fds
            .chunks(2)
            .zip(&pending)
            .map(|(p, &i)| (p[0].any().unwrap_or(true), workers[i].1.is_reaped() || p[1].any().unwrap_or(true)))
            .collect();
        drop(fds);
        for (&i, (sock_ready, ended)) in pending.iter().zip(ready) {
            if !sock_ready && !ended {
                continue;
            }
            let (sock, child) = workers[i];
            let mut buf = [0u8; size_of::<Report>()];
            results[i] = match recv(sock, &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok((0, _)) => Some(Err(Lost::Died(child.reap()))),
                Ok((len, _)) => Some(Report::decode(&buf[..len], i).map_err(|why| garbled(child, why))),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // No report waiting: if the child ended, it never will.
                    ended.then(|| Err(Lost::Died(child.reap())))
                }
                // The worker's end closed without a report: it is ending.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNRESET | libc::EPIPE)) => {
                    Some(Err(Lost::Died(child.reap())))
                }
                Err(e) => Some(Err(garbled(child, format!("its socket failed: {e}")))),
            };
        }
    }
    results.into_iter().map(|r| r.expect("every worker has a result")).collect()
}

fn garbled(child: &Child, why: String) -> Lost {
    child.kill();
    child.reap();
    Lost::Garbled(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused() {
        let b = Block { mode: Mode::Adjoint, use_matvec: true, m: 3, n: 4, k: 9, start: 5, width: 4 };
        for c in [Command::MapInput(77), Command::MapOutput(1 << 40), Command::Product(b), Command::Go, Command::Exit] {
            assert_eq!(Request::new(c).decode(), Ok(c));
        }
        let mut bad = Request::new(Command::Product(Block { width: 5, ..b }));
        assert!(bad.decode().is_err());
        bad = Request::new(Command::Product(b));
        bad.mode = 9;
        assert!(bad.decode().is_err());
        bad.kind = 42;
        assert!(bad.decode().is_err());
    }

    #[test]
    fn reports_round_trip_and_bad_ones_are_refused() {
        for o in [Outcome::Done, Outcome::Panicked("boom é".into()), Outcome::Broken("no map".into())] {
            let r = Report::new(3, &o);
            assert_eq!(Report::decode(bytemuck::bytes_of(&r), 3), Ok(o));
            assert!(Report::decode(bytemuck::bytes_of(&r), 2).is_err());
            assert!(Report::decode(&bytemuck::bytes_of(&r)[..10], 3).is_err());
        }
        let long = "é".repeat(MESSAGE);
        let r = Report::new(0, &Outcome::Panicked(long));
        let Ok(Outcome::Panicked(m)) = Report::decode(bytemuck::bytes_of(&r), 0) else { panic!() };
        assert!(m.len() <= MESSAGE && m.chars().all(|c| c == 'é'));
    }
}
