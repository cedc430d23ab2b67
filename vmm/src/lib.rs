//! vmm: a minimal KVM VMM for PCI passthrough with VFIO.
//!
//! [`run`] builds the VM ([`builder`]), starts one thread per vCPU ([`vcpu`]) and waits on
//! the main thread's event loop (console input, the guest's exit request, `--timeout`) for
//! the reason the guest stopped, which becomes the process exit status.

pub mod builder;
pub mod config;
pub mod console;
pub mod interrupts;
pub mod logger;
pub mod memory;
pub mod passthrough;
pub mod stats;
pub mod vcpu;

use config::VmConfig;
use devices::{ExitReason, GuestExit};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use std::sync::Arc;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

/// Status when `--timeout` expires (as `timeout(1)`).
pub const STATUS_TIMEOUT: i32 = 124;
/// Status when the guest crashed.
pub const STATUS_CRASH: i32 = 2;
/// Status when the VMM itself failed.
pub const STATUS_ERROR: i32 = 1;

/// Errors of a run after the VM is built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Building the VM failed.
    #[error(transparent)]
    Build(#[from] builder::Error),
    /// The event loop or a thread could not be set up.
    #[error("cannot {what}: {source}")]
    Os {
        /// What.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// The exit status for a guest that stopped for `reason`, with its message if any.
pub fn exit_status(reason: &ExitReason) -> (i32, Option<String>) {
    match reason {
        ExitReason::Poweroff | ExitReason::Reset => (0, None),
        ExitReason::DebugExit(v) => (devices::debug_exit::DebugExit::status(*v), None),
        ExitReason::Crash(msg) => (STATUS_CRASH, Some(msg.clone())),
        ExitReason::Timeout(secs) => (
            STATUS_TIMEOUT,
            Some(format!(
                "guest still running after {secs} s (--timeout); stopped it"
            )),
        ),
    }
}

/// Wakes the loop when the exit eventfd fires.
struct ExitWatch(Arc<GuestExit>);

impl MutEventSubscriber for ExitWatch {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.eventfd().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.eventfd(), EventSet::IN)) {
            log::error!("cannot watch the exit eventfd: {e:?}");
        }
    }
}

/// Turns an expired timer into [`ExitReason::Timeout`].
struct TimeoutWatch {
    timer: TimerFd,
    secs: u64,
    exit: Arc<GuestExit>,
}

impl MutEventSubscriber for TimeoutWatch {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.timer.wait();
        self.exit.request(ExitReason::Timeout(self.secs));
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            log::error!("cannot watch the timeout timer: {e:?}");
        }
    }
}

fn os_err(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Os { what, source }
}

/// Builds and runs the guest; returns why it stopped.
pub fn run(cfg: &VmConfig) -> Result<ExitReason, Error> {
    let mut vm = builder::build(cfg)?;
    let mut events: EventManager<Box<dyn MutEventSubscriber>> =
        EventManager::new().map_err(|e| Error::Os {
            what: "create the event loop",
            source: std::io::Error::other(format!("{e:?}")),
        })?;
    events.add_subscriber(Box::new(ExitWatch(vm.exit.clone())));
    events.add_subscriber(Box::new(console::StdinInput::new(vm.serial.clone())));
    if let Some(secs) = cfg.timeout {
        let timer_err = |e: vmm_sys_util::errno::Error| Error::Os {
            what: "set up the --timeout timer",
            source: std::io::Error::from_raw_os_error(e.errno()),
        };
        let mut timer = TimerFd::new().map_err(timer_err)?;
        timer
            .reset(std::time::Duration::from_secs(secs), None)
            .map_err(timer_err)?;
        events.add_subscriber(Box::new(TimeoutWatch {
            timer,
            secs,
            exit: vm.exit.clone(),
        }));
    }

    console::enter_raw_mode();
    for vcpu in vm.vcpus.drain(..) {
        vcpu.spawn().map_err(os_err("start a vCPU thread"))?;
    }
    loop {
        if let Some(reason) = vm.exit.reason() {
            if let Some(format) = cfg.stats {
                let serial = vm.serial.lock().map_or(0, |s| s.interrupts());
                let injected = vec![("serial".to_string(), serial)];
                let report = stats::Report::collect(&vm.exits, &vm.pio, &vm.mmio, injected);
                eprintln!("{}", report.render(format));
            }
            return Ok(reason);
        }
        if let Err(e) = events.run() {
            log::warn!("event loop: {e:?}");
        }
    }
}
