//! The thread each process-backend operator owns for its whole life. It
//! forks the pool's workers (`PR_SET_PDEATHSIG` fires when the *thread*
//! that forked a child exits, so workers forked from the caller's thread
//! would die with a helper thread that built the pool), and it reaps every
//! child it is given as soon as that child ends, watching their pidfds (no
//! zombie between products, even for a pool worker killed while idle).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::thread::JoinHandle;

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::unistd::{ForkResult, Pid, fork, pipe2};

use super::os;
use super::protocol::{Child, GroupSignalsBlocked, Keep, enter_child};
use crate::parallel::Error;

/// The entry point of a worker forked by [`Keeper::fork`]: `(arg, index,
/// socket)`; it never returns.
pub(crate) type Entry = unsafe fn(usize, usize, OwnedFd) -> !;

enum Job {
    Fork { entry: Entry, arg: usize, index: usize, sock: OwnedFd, done: SyncSender<Result<Arc<Child>, Error>> },
    Watch(Arc<Child>),
    Stop,
}

/// The operator's own thread: forks pool workers, reaps children.
#[derive(Debug)]
pub(crate) struct Keeper {
    /// The process that made it: only there does the thread exist.
    owner: Pid,
    jobs: Sender<Job>,
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl Keeper {
    pub(crate) fn new() -> Result<Self, Error> {
        let (wake_read, wake) = pipe2(OFlag::O_CLOEXEC).map_err(|e| os("pipe", e.into()))?;
        let (jobs, todo) = channel();
        let thread = std::thread::Builder::new()
            .name("lazylinop-keeper".into())
            // Pool workers run the operator on a copy of this thread's stack:
            // give it a main thread's 8 MiB (untouched pages cost nothing).
            .stack_size(8 << 20)
            .spawn(move || run(wake_read, todo))
            .map_err(|e| os("starting the process backend's thread", e))?;
        Ok(Self { owner: nix::unistd::getpid(), jobs, wake, thread: Some(thread) })
    }

    /// Whether this is the process that made the keeper (and its workers).
    pub(crate) fn owned_here(&self) -> bool {
        nix::unistd::getpid() == self.owner
    }

    fn send(&self, job: Job) {
        if self.jobs.send(job).is_ok() {
            let _ = nix::unistd::write(&self.wake, &[1]);
        }
    }

    /// Reaps `child` as soon as it ends.
    pub(crate) fn watch(&self, child: Arc<Child>) {
        self.send(Job::Watch(child));
    }

    /// Forks a worker from the keeper's thread; in the child, after
    /// [`enter_child`] (which keeps only `sock` and the standard streams),
    /// `entry(arg, index, sock)` runs. The child is watched and reaped when
    /// it ends.
    ///
    /// # Safety
    /// Calling `entry(arg, index, sock)` in the forked child must be sound
    /// given the parent's memory as it is while this function runs (if `arg`
    /// is an address, what it points to must be alive until this returns).
    pub(crate) unsafe fn fork(
        &self,
        entry: Entry,
        arg: usize,
        index: usize,
        sock: OwnedFd,
    ) -> Result<Arc<Child>, Error> {
        let (done, result) = sync_channel(1);
        self.send(Job::Fork { entry, arg, index, sock, done });
        result.recv().unwrap_or_else(|_| {
            Err(os("forking on the process backend's thread", std::io::ErrorKind::BrokenPipe.into()))
        })
    }
}

impl Drop for Keeper {
    /// Stops the thread, which first reaps every child it was given.
    fn drop(&mut self) {
        let thread = self.thread.take();
        if !self.owned_here() {
            // In another process (forked by the program), the thread does not exist.
            core::mem::forget(thread);
            return;
        }
        self.send(Job::Stop);
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// The keeper's loop: wait for a job or a child's end.
fn run(wake: OwnedFd, jobs: Receiver<Job>) {
    // For good: the program's signals go to its other threads, and a worker
    // forked here starts with them blocked until it ignores them.
    core::mem::forget(GroupSignalsBlocked::new());
    let parent = nix::unistd::getpid();
    let mut watched: Vec<Arc<Child>> = Vec::new();
    loop {
        watched.retain(|c| !c.is_reaped());
        let mut fds = vec![PollFd::new(wake.as_fd(), PollFlags::POLLIN)];
        fds.extend(watched.iter().filter_map(|c| c.pidfd()).map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
        let _ = poll(&mut fds, PollTimeout::NONE);
        let ended: Vec<bool> = fds[1..].iter().map(|f| f.any().unwrap_or(true)).collect();
        let woken = fds[0].any().unwrap_or(true);
        drop(fds);
        for (child, ended) in watched.iter().zip(ended) {
            if ended {
                let _ = child.try_reap();
            }
        }
        if !woken {
            continue;
        }
        let _ = nix::unistd::read(&wake, &mut [0u8; 64]);
        while let Ok(job) = jobs.try_recv() {
            match job {
                Job::Watch(child) => watched.push(child),
                Job::Fork { entry, arg, index, sock, done } => {
                    let forked = fork_one(parent, entry, arg, index, sock);
                    if let Ok(child) = &forked {
                        watched.push(child.clone());
                    }
                    let _ = done.send(forked);
                }
                Job::Stop => {
                    for child in watched {
                        child.reap();
                    }
                    return;
                }
            }
        }
    }
}

fn fork_one(parent: Pid, entry: Entry, arg: usize, index: usize, sock: OwnedFd) -> Result<Arc<Child>, Error> {
    // SAFETY: the child only runs `enter_child` (async-signal-safe calls and
    // an atomic store) and then `entry`, which `Keeper::fork`'s contract makes
    // sound; it never returns here.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            enter_child(parent, Keep::Only(sock.as_raw_fd()));
            // SAFETY: `Keeper::fork`'s contract: the caller is blocked in
            // `fork` while this copy of its memory was made.
            unsafe { entry(arg, index, sock) }
        }
        Ok(ForkResult::Parent { child }) => Child::new(child).map(Arc::new),
        Err(e) => Err(os("fork", e.into())),
    }
}
