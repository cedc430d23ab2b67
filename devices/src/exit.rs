//! How a device or a vCPU asks for the guest to end: the first reason wins and an `EventFd`
//! wakes the VMM's main loop, which turns the reason into the process exit status.

use std::sync::Mutex;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the guest stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// ACPI S5 (guest `poweroff`).
    Poweroff,
    /// ACPI reset register, i8042 reset or KVM system reset (guest `reboot`).
    Reset,
    /// A byte written to the debug-exit port.
    DebugExit(u8),
    /// Triple fault, failed entry or KVM internal error; the text holds the details.
    Crash(String),
    /// The VMM's `--timeout` expired after this many seconds.
    Timeout(u64),
    /// The VMM received this signal (SIGINT, SIGTERM, SIGHUP, ...).
    Signal(i32),
    /// `vm.shutdown` through the control API.
    Shutdown,
    /// The VMM itself failed while the guest ran (a vCPU thread failed); the text says how.
    Failure(String),
}

/// Exit request shared by every device and vCPU.
pub struct GuestExit {
    evt: EventFd,
    reason: Mutex<Option<ExitReason>>,
}

impl GuestExit {
    /// A fresh, unsignalled exit request.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
            reason: Mutex::new(None),
        })
    }

    /// Records `reason` unless another one came first, and wakes the main loop.
    pub fn request(&self, reason: ExitReason) {
        let mut current = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if current.is_none() {
            *current = Some(reason);
        }
        // A full counter (impossible at one write per exit) would still leave it readable.
        let _ = self.evt.write(1);
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The eventfd that becomes readable on the first request.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_signals() {
        let exit = GuestExit::new().unwrap();
        assert_eq!(exit.reason(), None);
        assert!(exit.eventfd().read().is_err(), "not signalled yet");
        exit.request(ExitReason::DebugExit(3));
        exit.request(ExitReason::Poweroff);
        assert_eq!(exit.reason(), Some(ExitReason::DebugExit(3)));
        assert_eq!(exit.eventfd().read().unwrap(), 2);
    }
}
