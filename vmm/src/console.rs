//! The guest console on the VMM's terminal: raw mode while the guest runs (restored on every
//! exit path, including panics) and stdin forwarded to the UART.

use devices::serial::Serial;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::io::Stdout;
use std::sync::{Arc, Mutex, OnceLock};
use vmm_sys_util::epoll::EventSet;

/// The guest's UART, writing to our stdout.
pub type GuestSerial = Arc<Mutex<Serial<Stdout>>>;

/// Terminal settings to restore, saved when raw mode was entered.
static SAVED_TERMIOS: OnceLock<libc::termios> = OnceLock::new();

/// Puts stdin's terminal in raw mode (no echo, no line editing, no signals from keys) so
/// keys reach the guest as typed. Does nothing when stdin is not a terminal.
pub fn enter_raw_mode() {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
        return;
    }
    // SAFETY: termios is plain data; tcgetattr fills it and we check the result.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and a valid pointer to a termios.
    if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
        return;
    }
    if SAVED_TERMIOS.set(t).is_err() {
        return;
    }
    t.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN);
    t.c_iflag &= !(libc::IXON | libc::ICRNL);
    // SAFETY: valid descriptor and termios derived from the one the kernel gave us.
    unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        previous(info);
    }));
}

/// Puts the terminal back as it was before [`enter_raw_mode`]. Safe to call any time, also
/// from a signal handler (the seccomp SIGSYS handler): it only loads the saved settings (no
/// lock, no allocation) and calls tcsetattr, an ioctl.
pub fn restore_terminal() {
    if let Some(t) = SAVED_TERMIOS.get() {
        // SAFETY: valid descriptor and the termios saved from it.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t) };
    }
}

/// Whether a write to stdout would not block now (a pipe with room, a terminal, a file).
pub fn stdout_writable() -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready == 1 && fd.revents & libc::POLLOUT != 0
}

/// Feeds stdin to the guest UART; stops watching stdin at end of file.
pub struct StdinInput {
    serial: GuestSerial,
}

impl StdinInput {
    /// Forwards stdin to `serial`.
    pub fn new(serial: GuestSerial) -> Self {
        Self { serial }
    }
}

impl MutEventSubscriber for StdinInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let room = self
            .serial
            .lock()
            .map_or(0, |s| s.rx_room())
            .clamp(1, buf.len());
        // Unbuffered on purpose: data left in a userspace buffer would not wake epoll again.
        // SAFETY: reads into a live buffer of at least `room` bytes.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), room) };
        match usize::try_from(n).map_err(|_| std::io::Error::last_os_error()) {
            Ok(n) if n > 0 => {
                if let Ok(mut s) = self.serial.lock() {
                    s.enqueue(&buf[..n]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // End of input or an unreadable stdin: the guest simply gets no more input.
            _ => {
                let _ = ops.remove(events);
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let stdin = std::io::stdin();
        if let Err(e) = ops.add(Events::new(&stdin, EventSet::IN)) {
            // Regular files and /dev/null cannot be polled: no input then.
            log::debug!("console: not reading stdin: {e:?}");
        }
    }
}
