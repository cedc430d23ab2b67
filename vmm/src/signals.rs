//! Every catchable signal whose default would end vmm ends the guest in order instead: they
//! are blocked in every thread from the start ([`block_exit_signals`], inherited by the vCPU
//! threads) and read from a signalfd by the main loop ([`SignalWatch`]), which turns them into
//! [`ExitReason::Signal`]. The process then stops its vCPUs, quiesces and releases its
//! devices, puts managed devices back and exits with status 128 + the signal number.
//!
//! The set ([`exit_signals`]): SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGALRM,
//! SIGVTALRM, SIGPROF, SIGIO, SIGPWR, SIGSTKFLT, SIGXCPU, SIGXFSZ, the real-time signals but
//! the first (which kicks vCPU threads), and the fault signals SIGILL, SIGTRAP, SIGABRT,
//! SIGBUS, SIGFPE and SIGSEGV when another process sends them: a real fault (or abort()) is
//! forced through the block by the kernel and still ends the process the way it must.
//! Ignored: SIGPIPE (Rust's default; a write to a closed pipe fails with EPIPE instead) and a
//! SIGSYS another process sends (SIGSYS belongs to the seccomp filters, see
//! [`crate::seccomp`]).

use devices::{ExitReason, GuestExit};
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::fs::File;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::sync::Arc;
use vmm_sys_util::epoll::EventSet;

/// The signals that stop the guest in order, by name (the real-time ones come from
/// [`exit_signals`]).
const NAMED: [(libc::c_int, &str); 20] = [
    (libc::SIGHUP, "SIGHUP"),
    (libc::SIGINT, "SIGINT"),
    (libc::SIGQUIT, "SIGQUIT"),
    (libc::SIGILL, "SIGILL"),
    (libc::SIGTRAP, "SIGTRAP"),
    (libc::SIGABRT, "SIGABRT"),
    (libc::SIGBUS, "SIGBUS"),
    (libc::SIGFPE, "SIGFPE"),
    (libc::SIGUSR1, "SIGUSR1"),
    (libc::SIGSEGV, "SIGSEGV"),
    (libc::SIGUSR2, "SIGUSR2"),
    (libc::SIGALRM, "SIGALRM"),
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGSTKFLT, "SIGSTKFLT"),
    (libc::SIGXCPU, "SIGXCPU"),
    (libc::SIGXFSZ, "SIGXFSZ"),
    (libc::SIGVTALRM, "SIGVTALRM"),
    (libc::SIGPROF, "SIGPROF"),
    (libc::SIGIO, "SIGIO"),
    (libc::SIGPWR, "SIGPWR"),
];

/// Every signal that stops the guest in order: the named ones and the real-time signals
/// after the vCPU kick (`SIGRTMIN`).
pub fn exit_signals() -> Vec<libc::c_int> {
    let realtime = libc::SIGRTMIN() + 1..=libc::SIGRTMAX();
    NAMED.iter().map(|(sig, _)| *sig).chain(realtime).collect()
}

fn exit_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in exit_signals() {
            libc::sigaddset(&mut set, sig);
        }
    }
    set
}

/// Blocks the exit signals in the calling thread and every thread it starts later, so they
/// wait for the main loop's signalfd. Call first thing in `main`.
///
/// Their dispositions are reset to the default first: a shell starts background jobs with
/// SIGINT ignored, and an ignored signal is discarded even while blocked. (QEMU also handles
/// SIGINT, SIGTERM and SIGHUP whatever it inherited.)
pub fn block_exit_signals() -> std::io::Result<()> {
    for sig in exit_signals() {
        // SAFETY: SIG_DFL for a standard signal; no handler code is involved.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    crate::seccomp::install_handler().map_err(|e| std::io::Error::other(e.to_string()))?;
    let set = exit_sigset();
    // SAFETY: valid sigset; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    match rc {
        0 => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// The name of a signal, for messages: `SIGTERM`, `SIGRTMIN+3`.
pub fn name(sig: libc::c_int) -> String {
    if let Some((_, name)) = NAMED.iter().find(|(s, _)| *s == sig) {
        return (*name).into();
    }
    match sig - libc::SIGRTMIN() {
        0 => "SIGRTMIN".into(),
        k if k > 0 && sig <= libc::SIGRTMAX() => format!("SIGRTMIN+{k}"),
        _ => format!("signal {sig}"),
    }
}

/// Reads the exit signals from a signalfd and requests the guest's exit.
pub struct SignalWatch {
    fd: File,
    exit: Arc<GuestExit>,
}

impl SignalWatch {
    /// A signalfd for [`exit_signals`] (they must be blocked: [`block_exit_signals`]).
    pub fn new(exit: Arc<GuestExit>) -> std::io::Result<Self> {
        let set = exit_sigset();
        // SAFETY: -1 asks for a new descriptor; `set` is valid.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        let fd = unsafe { File::from_raw_fd(fd) };
        Ok(Self { fd, exit })
    }
}

impl MutEventSubscriber for SignalWatch {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        while let Ok(n) = self.fd.read(&mut info) {
            if n != info.len() {
                break;
            }
            // ssi_signo is the first u32 of signalfd_siginfo.
            let sig = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
            let sig = libc::c_int::try_from(sig).unwrap_or(libc::SIGTERM);
            log::info!("received {}; stopping the guest", name(sig));
            self.exit.request(ExitReason::Signal(sig));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("cannot watch signals: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(name(libc::SIGTERM), "SIGTERM");
        assert_eq!(name(libc::SIGHUP), "SIGHUP");
        assert_eq!(name(libc::SIGINT), "SIGINT");
        assert_eq!(name(libc::SIGQUIT), "SIGQUIT");
        assert_eq!(name(libc::SIGRTMIN() + 2), "SIGRTMIN+2");
        assert_eq!(name(0), "signal 0");
    }

    #[test]
    fn every_terminating_signal_but_the_kick_and_sigpipe() {
        let set = exit_signals();
        for sig in [
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGALRM,
            libc::SIGSEGV,
            libc::SIGXFSZ,
        ] {
            assert!(set.contains(&sig), "{}", name(sig));
        }
        assert!(
            !set.contains(&libc::SIGRTMIN()),
            "the vCPU kick stays deliverable"
        );
        assert!(set.contains(&libc::SIGRTMAX()));
        assert!(!set.contains(&libc::SIGPIPE), "SIGPIPE stays ignored");
        assert!(!set.contains(&libc::SIGSYS), "SIGSYS belongs to seccomp");
        for sig in [
            libc::SIGCHLD,
            libc::SIGKILL,
            libc::SIGSTOP,
            libc::SIGCONT,
            libc::SIGWINCH,
        ] {
            assert!(!set.contains(&sig), "{}", name(sig));
        }
        assert_eq!(
            set.len(),
            NAMED.len() + (libc::SIGRTMAX() - libc::SIGRTMIN()) as usize
        );
    }

    #[test]
    fn a_blocked_signal_is_read_from_the_signalfd() {
        // Runs on its own thread so the test harness's threads keep their masks.
        std::thread::spawn(|| {
            block_exit_signals().unwrap();
            let exit = Arc::new(GuestExit::new().unwrap());
            let mut watch = SignalWatch::new(exit.clone()).unwrap();
            // SAFETY: sends SIGHUP to this thread only, where it is blocked.
            let rc = unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGHUP) };
            assert_eq!(rc, 0);
            let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
            let n = watch.fd.read(&mut info).unwrap();
            assert_eq!(n, info.len());
            assert_eq!(
                u32::from_ne_bytes([info[0], info[1], info[2], info[3]]),
                libc::SIGHUP as u32
            );
        })
        .join()
        .unwrap();
    }
}
