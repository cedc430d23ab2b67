//! vmm: a minimal KVM VMM for PCI passthrough with VFIO.
//!
//! [`run`] moves `managed=on` devices to vfio-pci ([`managed`]), builds the VM
//! ([`builder`]), starts one thread per vCPU ([`vcpu`]) and waits on the main thread's event
//! loop (console input, the guest's exit request, `--timeout`, every terminating signal
//! ([`signals`]), the control API's actions ([`api`], [`control`], [`hotplug`])) for the
//! reason the guest stopped, which becomes the process exit status. Every way out tears down
//! in one order: vCPUs stopped, device interrupts off, every VM and VFIO file closed (vfio-pci
//! resets the devices), managed devices back on their drivers, terminal restored.

pub mod api;
pub mod builder;
pub mod check;
pub mod coalesced;
pub mod config;
pub mod console;
pub mod control;
pub mod hotplug;
pub mod images;
pub mod interrupts;
pub mod logger;
pub mod managed;
pub mod memory;
pub mod passthrough;
pub mod seccomp;
pub mod signals;
pub mod stats;
pub mod vcpu;
pub mod vm_ops;

use config::VmConfig;
use devices::{ExitReason, GuestExit};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use std::sync::Arc;
use std::time::Duration;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

/// Status when `--timeout` expires (as `timeout(1)`).
pub const STATUS_TIMEOUT: i32 = 124;
/// Status when the guest crashed.
pub const STATUS_CRASH: i32 = 2;
/// Status when the VMM itself failed.
pub const STATUS_ERROR: i32 = 1;

/// Errors of a run after the VM is built.
#[derive(Debug)]
pub enum Error {
    /// Building the VM failed.
    Build(builder::Error),
    /// The devices given cannot be passed through together.
    Passthrough(passthrough::Error),
    /// The API socket could not be set up.
    Api(api::server::Error),
    /// A `managed=on` device could not be moved to vfio-pci.
    Managed(vfio::bind::Error),
    /// A seccomp filter could not be installed.
    Seccomp(seccomp::Error),
    /// The event loop or a thread could not be set up.
    Os {
        /// What.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

impl diag::Explain for Error {
    fn advice(&self) -> diag::Advice {
        match self {
            Error::Build(e) => e.advice(),
            Error::Passthrough(e) => e.advice(),
            Error::Api(e) => e.advice(),
            Error::Managed(e) => e.advice(),
            Error::Seccomp(e) => e.advice(),
            Error::Os { what, source } => diag::Advice::new(
                format!("cannot {what}: {source}"),
                "check the process's limits (ulimit -n, ulimit -u) and free memory",
            ),
        }
    }
}
diag::explained!(Error);
diag::wrap!(Error:
    Build(builder::Error),
    Passthrough(passthrough::Error),
    Api(api::server::Error),
    Managed(vfio::bind::Error),
    Seccomp(seccomp::Error),
);

/// The exit status for a guest that stopped for `reason`, with its message if any.
pub fn exit_status(reason: &ExitReason) -> (i32, Option<String>) {
    match reason {
        ExitReason::Poweroff | ExitReason::Reset | ExitReason::Shutdown => (0, None),
        ExitReason::DebugExit(v) => (devices::debug_exit::DebugExit::status(*v), None),
        ExitReason::Crash(msg) => (STATUS_CRASH, Some(msg.clone())),
        ExitReason::Timeout(secs) => (
            STATUS_TIMEOUT,
            Some(format!(
                "guest still running after {secs} s (--timeout); stopped it"
            )),
        ),
        ExitReason::Signal(sig) => (
            128 + sig,
            Some(format!("stopped by {}", signals::name(*sig))),
        ),
        ExitReason::Failure(msg) => (STATUS_ERROR, Some(msg.clone())),
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

/// Wakes the loop when the API thread has an action waiting or the guest ejected a slot
/// (the loop then reads the eventfd when it takes them).
struct ApiWake(vmm_sys_util::eventfd::EventFd);

impl MutEventSubscriber for ApiWake {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // The loop reads the eventfd when it takes the actions.
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.0, EventSet::IN)) {
            log::error!("cannot watch the API: {e:?}");
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

/// How long a partial line of guest output may wait for the rest of its line (see
/// [`devices::serial::LineOut`]).
const OUTPUT_PATIENCE: Duration = Duration::from_millis(100);

/// Passes on guest output held back (writes KVM queued, a partial line in the UART), every
/// [`OUTPUT_PATIENCE`]: a guest that prints and then falls silent is seen within that time.
struct OutputWatch {
    timer: TimerFd,
    vm: Arc<builder::Output>,
}

impl MutEventSubscriber for OutputWatch {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.timer.wait();
        self.vm.pass_on();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            log::error!("cannot watch the console output timer: {e:?}");
        }
    }
}

fn os_err(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Os { what, source }
}

/// How long stopping the vCPUs may take before vmm gives up on a stuck one.
const VCPU_STOP_PATIENCE: Duration = Duration::from_secs(2);

/// Moves managed devices to vfio-pci, builds and runs the guest, tears it down and puts the
/// managed devices back; returns why the guest stopped.
pub fn run(cfg: &VmConfig) -> Result<ExitReason, Error> {
    // The kernel and initramfs are judged before any device moves.
    let images = builder::prepare(cfg)?;
    passthrough::check_distinct(&cfg.devices)?;
    let bindings = Arc::new(managed::Bindings::new(managed::bind(&cfg.devices)?));
    let result = run_vm(cfg, images, bindings.clone());
    // A vCPU thread that would not stop still holds the VM and its devices: then dropping
    // the bindings says which devices stay on vfio-pci and how to rebind them, since
    // vfio-pci's unbind would wait forever for files this process holds.
    let bindings = bindings.take();
    if bindings.is_empty() || !vm_files_open() {
        managed::restore(bindings);
    }
    result
}

/// Whether this process still holds a KVM VM, vCPU or VFIO file (then managed devices
/// cannot be unbound from vfio-pci).
fn vm_files_open() -> bool {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    let open: Vec<String> = dir
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.display().to_string())
        .filter(|t| t.starts_with("/dev/vfio/") || t.contains("vfio-device") || t.contains("kvm-"))
        .collect();
    if !open.is_empty() {
        log::warn!("still open after teardown: {}", open.join(", "));
    }
    !open.is_empty()
}

/// Builds, runs and tears down the guest.
fn run_vm(
    cfg: &VmConfig,
    images: images::BootImages,
    bindings: Arc<managed::Bindings>,
) -> Result<ExitReason, Error> {
    let mut vm = builder::build(cfg, images, bindings)?;
    // The API thread starts before the main thread's seccomp filter (which forbids starting
    // threads); it installs its own.
    let api = match &cfg.api_socket {
        Some(path) => Some(api::server::ApiServer::start(path, cfg.seccomp)?),
        None => None,
    };
    let events = event_loop(cfg, &vm, api.as_ref())?;
    console::enter_raw_mode();
    // On an early return `running` drops, which stops the vCPU threads.
    let running = vcpu::Running::start(vm.vcpus.drain(..).collect())
        .map_err(os_err("start a vCPU thread"))?;
    log::debug!("vCPUs running");
    seccomp::apply_if(cfg.seccomp, seccomp::Thread::Vmm)?;
    let reason = wait_for_exit(&mut vm, &running, cfg, events, api.as_ref());
    // The last answer (vm.shutdown's) goes out; later requests hear that vmm is going.
    if let Some(api) = api {
        api.finish();
    }
    // Teardown, in order: no vCPU runs, the devices are quiet, then every file goes.
    let released = running.stop(VCPU_STOP_PATIENCE);
    vm.output.pass_on();
    log::debug!("teardown: vCPUs stopped ({reason:?})");
    let report = cfg.stats.map(|format| {
        let serial = vm.serial.lock().map_or(0, |s| s.interrupts());
        let injected = vec![("serial".to_string(), serial)];
        stats::Report::collect(&vm.exits, &vm.pio, &vm.mmio, injected).render(format)
    });
    // A stuck vCPU may hold a device lock: quiescing would wait for it.
    if released {
        vm.passthrough.shutdown();
        log::debug!("teardown: devices quiesced");
    }
    drop(vm);
    log::debug!("teardown: VM and VFIO files closed (DMA mappings and pins released)");
    console::restore_terminal();
    if let Some(report) = report {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "{report}");
    }
    Ok(reason)
}

/// The main thread's event loop: the exit request, console input, signals, `--timeout`,
/// the API's actions.
fn event_loop(
    cfg: &VmConfig,
    vm: &builder::Vm,
    api: Option<&api::server::ApiServer>,
) -> Result<EventManager<Box<dyn MutEventSubscriber>>, Error> {
    let mut events: EventManager<Box<dyn MutEventSubscriber>> =
        EventManager::new().map_err(|e| Error::Os {
            what: "create the event loop",
            source: std::io::Error::other(format!("{e:?}")),
        })?;
    events.add_subscriber(Box::new(ExitWatch(vm.exit.clone())));
    events.add_subscriber(Box::new(console::StdinInput::new(vm.serial.clone())));
    let signals = signals::SignalWatch::new(vm.exit.clone()).map_err(os_err("watch signals"))?;
    events.add_subscriber(Box::new(signals));
    if let Some(api) = api {
        let wake = api.eventfd().try_clone().map_err(os_err("watch the API"))?;
        events.add_subscriber(Box::new(ApiWake(wake)));
    }
    if let Some(hotplug) = &vm.hotplug {
        let eject = hotplug.eject.try_clone().map_err(os_err("watch hotplug"))?;
        events.add_subscriber(Box::new(ApiWake(eject)));
    }
    let timer_err = |what| {
        move |e: vmm_sys_util::errno::Error| Error::Os {
            what,
            source: std::io::Error::from_raw_os_error(e.errno()),
        }
    };
    let mut output_timer = TimerFd::new().map_err(timer_err("set up the console output timer"))?;
    output_timer
        .reset(OUTPUT_PATIENCE, Some(OUTPUT_PATIENCE))
        .map_err(timer_err("set up the console output timer"))?;
    events.add_subscriber(Box::new(OutputWatch {
        timer: output_timer,
        vm: vm.output.clone(),
    }));
    if let Some(secs) = cfg.timeout {
        let timer_err = timer_err("set up the --timeout timer");
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
    Ok(events)
}

/// Runs the event loop until something asks the guest to stop; the API's actions run here,
/// on the main thread, between two rounds.
fn wait_for_exit(
    vm: &mut builder::Vm,
    running: &vcpu::Running,
    cfg: &VmConfig,
    mut events: EventManager<Box<dyn MutEventSubscriber>>,
    api: Option<&api::server::ApiServer>,
) -> ExitReason {
    loop {
        if let Some(reason) = vm.exit.reason() {
            return reason;
        }
        // A hot-remove waiting for the guest has a deadline; otherwise wait for an event.
        let wait = vm
            .hotplug
            .as_ref()
            .and_then(|h| h.next_deadline())
            .map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as i32 + 1);
        if let Err(e) = events.run_with_timeout(wait) {
            log::warn!("event loop: {e:?}");
        }
        for pending in api.map(|a| a.take()).unwrap_or_default() {
            let mut target = control::Target { vm, running, cfg };
            control::handle(pending, &mut target);
        }
        vm.poll_hotplug();
    }
}
