//! SIGINT, SIGTERM and SIGHUP end the guest in order instead of killing the process: they are
//! blocked in every thread from the start ([`block_exit_signals`], inherited by the vCPU
//! threads) and read from a signalfd by the main loop ([`SignalWatch`]), which turns them into
//! [`ExitReason::Signal`]. The process then stops its vCPUs, quiesces and releases its
//! devices, puts managed devices back and exits with status 128 + the signal number.

use devices::{ExitReason, GuestExit};
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::fs::File;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::sync::Arc;
use vmm_sys_util::epoll::EventSet;

/// The signals that stop the guest in order.
pub const EXIT_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn exit_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in EXIT_SIGNALS {
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
/// all three whatever it inherited.)
pub fn block_exit_signals() -> std::io::Result<()> {
    for sig in EXIT_SIGNALS {
        // SAFETY: SIG_DFL for a standard signal; no handler code is involved.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let set = exit_sigset();
    // SAFETY: valid sigset; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    match rc {
        0 => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// The name of a signal, for messages.
pub fn name(sig: libc::c_int) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        n => format!("signal {n}"),
    }
}

/// Reads the exit signals from a signalfd and requests the guest's exit.
pub struct SignalWatch {
    fd: File,
    exit: Arc<GuestExit>,
}

impl SignalWatch {
    /// A signalfd for [`EXIT_SIGNALS`] (they must be blocked: [`block_exit_signals`]).
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
        assert_eq!(name(10), "signal 10");
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
