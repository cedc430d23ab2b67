//! A vCPU on its own named thread: run, route each exit to the PIO or MMIO bus, stop on
//! the first exit reason. [`handle_exit`] is a plain function so it can be tested alone.
//!
//! [`Running`] starts, pauses, resumes and stops the threads through one [`Control`]: a
//! thread looks at it whenever KVM_RUN returns, and a kick (a signal) makes KVM_RUN return.
//! A paused thread parks outside KVM_RUN until it is resumed or stopped.

use crate::stats::ExitCounts;
use devices::{Bus, ExitReason, GuestExit};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm_sys_util::signal::Killable;

/// KVM_SYSTEM_EVENT_SHUTDOWN.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
/// KVM_SYSTEM_EVENT_RESET.
const SYSTEM_EVENT_RESET: u32 = 2;

/// What the vCPU loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Run the vCPU again.
    Continue,
    /// The guest asked to stop.
    Stop(ExitReason),
    /// The guest crashed; the text says how (registers are added by the caller).
    Crash(String),
}

/// The buses a vCPU routes to and the exit counters it keeps.
pub struct Routes {
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Exits by kind.
    pub exits: Arc<ExitCounts>,
    /// Writes KVM queued instead of exiting (coalesced PIO), applied before each exit.
    pub ring: Option<Arc<crate::coalesced::Ring>>,
}

impl Routes {
    /// Applies the writes KVM queued since the last exit (they came before it).
    fn drain(&self) {
        if let Some(ring) = &self.ring {
            ring.drain(&self.pio, &self.mmio);
        }
    }
}

/// Routes one exit. Reads nobody answers return all ones, as on real hardware.
pub fn handle_exit(exit: VcpuExit<'_>, routes: &Routes) -> Action {
    let (pio, mmio, counts) = (&routes.pio, &routes.mmio, &routes.exits);
    match exit {
        VcpuExit::IoIn(port, data) => {
            ExitCounts::bump(&counts.io_in);
            if !pio.read(u64::from(port), data) {
                data.fill(0xff);
            }
        }
        VcpuExit::IoOut(port, data) => {
            ExitCounts::bump(&counts.io_out);
            pio.write(u64::from(port), data);
        }
        VcpuExit::MmioRead(addr, data) => {
            ExitCounts::bump(&counts.mmio_read);
            if !mmio.read(addr, data) {
                data.fill(0xff);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            ExitCounts::bump(&counts.mmio_write);
            mmio.write(addr, data);
        }
        VcpuExit::Shutdown => return Action::Crash("triple fault (KVM_EXIT_SHUTDOWN)".into()),
        VcpuExit::FailEntry(reason, cpu) => {
            return Action::Crash(format!(
                "KVM entry failed: hardware reason {reason:#x} on host CPU {cpu}"
            ))
        }
        VcpuExit::InternalError => return Action::Crash("KVM internal error".into()),
        VcpuExit::SystemEvent(SYSTEM_EVENT_SHUTDOWN, _) => {
            return Action::Stop(ExitReason::Poweroff)
        }
        VcpuExit::SystemEvent(SYSTEM_EVENT_RESET, _) => return Action::Stop(ExitReason::Reset),
        VcpuExit::SystemEvent(kind, _) => return Action::Crash(format!("KVM system event {kind}")),
        // With the in-kernel irqchip, HLT is handled by KVM; anything else is harmless to
        // resume from.
        other => {
            ExitCounts::bump(&counts.other);
            log::debug!("vcpu: ignored exit {other:?}");
        }
    }
    Action::Continue
}

/// What the vCPU threads are asked to do, and how many of them are parked.
#[derive(Default)]
pub struct Control {
    state: Mutex<ControlState>,
    changed: Condvar,
}

#[derive(Default)]
struct ControlState {
    stop: bool,
    pause: bool,
    parked: usize,
}

impl Control {
    fn lock(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by a vCPU thread between two KVM_RUNs: parks while a pause is asked. Returns
    /// false when the thread must stop.
    fn checkpoint(&self) -> bool {
        let mut state = self.lock();
        if state.pause && !state.stop {
            state.parked += 1;
            self.changed.notify_all();
            while state.pause && !state.stop {
                state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            state.parked -= 1;
            self.changed.notify_all();
        }
        !state.stop
    }

    fn set(&self, f: impl FnOnce(&mut ControlState)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    /// Waits until `n` threads are parked (or `patience` passed): true when they are.
    fn wait_parked(&self, n: usize, patience: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, patience, |s| s.parked < n && !s.stop)
            .unwrap_or_else(|e| e.into_inner());
        state.parked >= n
    }
}

/// One vCPU and what it routes to.
pub struct Vcpu {
    /// The KVM vCPU.
    pub fd: VcpuFd,
    /// Index (= APIC ID).
    pub index: u8,
    /// Where exits go.
    pub routes: Routes,
    /// Where to report why the guest stopped.
    pub exit: Arc<GuestExit>,
    /// Install the vCPU seccomp filter when the thread starts (`--seccomp=on`).
    pub seccomp: bool,
}

impl Vcpu {
    /// Starts the vCPU on a thread named `vcpuN`; it runs until the guest stops or `control`
    /// says to stop (and the thread is kicked, see [`Running::stop`]). A panic on the thread becomes
    /// [`ExitReason::Failure`], so the main thread still tears the VM down in order.
    pub fn spawn(self, control: Arc<Control>) -> std::io::Result<JoinHandle<()>> {
        let (exit, index) = (self.exit.clone(), self.index);
        std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| self.run(&control));
                if let Err(panic) = std::panic::catch_unwind(run) {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    exit.request(ExitReason::Failure(format!(
                        "vcpu{index} thread failed: {what}"
                    )));
                }
            })
    }

    fn run(mut self, control: &Control) {
        if let Err(e) = crate::seccomp::apply_if(self.seccomp, crate::seccomp::Thread::Vcpu) {
            return self
                .exit
                .request(ExitReason::Failure(format!("vcpu{}: {e}", self.index)));
        }
        while control.checkpoint() {
            let action = match self.fd.run() {
                Ok(exit) => {
                    self.routes.drain();
                    handle_exit(exit, &self.routes)
                }
                // A kick (or any signal): look at `control` again.
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Action::Continue,
                Err(e) => {
                    let what = format!("vcpu{}: KVM_RUN failed: {e}", self.index);
                    return self.exit.request(ExitReason::Failure(what));
                }
            };
            match action {
                Action::Continue => {}
                Action::Stop(reason) => return self.exit.request(reason),
                Action::Crash(what) => {
                    let regs = registers(&self.fd);
                    let msg = format!("guest crashed on vcpu{}: {what}\n{regs}", self.index);
                    return self.exit.request(ExitReason::Crash(msg));
                }
            }
        }
    }
}

/// The signal that kicks a vCPU thread out of KVM_RUN (its handler does nothing: the
/// interrupted ioctl returns EINTR and the loop looks at its [`Control`]).
fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The running vCPU threads.
pub struct Running {
    threads: Vec<JoinHandle<()>>,
    control: Arc<Control>,
}

impl Running {
    /// Starts every vCPU on its thread.
    pub fn start(vcpus: Vec<Vcpu>) -> std::io::Result<Self> {
        vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        let control = Arc::new(Control::default());
        let mut running = Self {
            threads: Vec::new(),
            control: control.clone(),
        };
        for vcpu in vcpus {
            // On failure `running` drops: the threads already started are stopped.
            running.threads.push(vcpu.spawn(control.clone())?);
        }
        Ok(running)
    }

    /// Kicks every thread still running out of KVM_RUN.
    fn kick(&self) {
        for t in self.threads.iter().filter(|t| !t.is_finished()) {
            let _ = t.kill(kick_signal());
        }
    }

    /// Parks every vCPU outside KVM_RUN; true once all are parked within `patience` (a
    /// thread busy in a device access may take a moment).
    pub fn pause(&self, patience: Duration) -> bool {
        self.control.set(|s| s.pause = true);
        let live = self.threads.iter().filter(|t| !t.is_finished()).count();
        let deadline = Instant::now() + patience;
        // A kick can land just before a thread enters KVM_RUN: kick until all are parked.
        while Instant::now() < deadline {
            self.kick();
            if self.control.wait_parked(live, Duration::from_millis(10)) {
                return true;
            }
        }
        false
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) {
        self.control.set(|s| s.pause = false);
    }

    /// Whether a pause is in force.
    pub fn paused(&self) -> bool {
        self.control.lock().pause
    }

    /// Stops every vCPU and joins its thread. A thread is kicked until it ends (a kick can
    /// land just before it enters KVM_RUN); one still running after `patience` (stuck in a
    /// device access) is left behind with a warning. True when all threads ended.
    pub fn stop(mut self, patience: Duration) -> bool {
        self.stop_threads(patience)
    }

    fn stop_threads(&mut self, patience: Duration) -> bool {
        self.control.set(|s| s.stop = true);
        let deadline = Instant::now() + patience;
        while self.threads.iter().any(|t| !t.is_finished()) {
            if Instant::now() > deadline {
                log::warn!("a vCPU thread did not stop within {patience:?}; leaving it");
                return false;
            }
            self.kick();
            std::thread::sleep(Duration::from_millis(2));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        true
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop_threads(Duration::from_secs(2));
        }
    }
}

/// The vCPU's registers, for a crash report.
pub fn registers(fd: &VcpuFd) -> String {
    let (Ok(r), Ok(s)) = (fd.get_regs(), fd.get_sregs()) else {
        return "  (registers unavailable)".into();
    };
    format!(
        "  rip={:#018x} rsp={:#018x} rflags={:#010x}\n  \
         rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n  \
         rsi={:#018x} rdi={:#018x} rbp={:#018x}\n  \
         cr0={:#010x} cr2={:#018x} cr3={:#018x} cr4={:#010x} efer={:#x}\n  \
         cs={:#06x} base={:#x} l={} db={}",
        r.rip,
        r.rsp,
        r.rflags,
        r.rax,
        r.rbx,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        r.rbp,
        s.cr0,
        s.cr2,
        s.cr3,
        s.cr4,
        s.efer,
        s.cs.selector,
        s.cs.base,
        s.cs.l,
        s.cs.db
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::BusDevice;

    /// Threads that loop on `checkpoint` like vCPU threads (without KVM): they park on a
    /// pause, run on resume and end on stop.
    #[test]
    fn control_parks_resumes_and_stops_threads() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let control = Arc::new(Control::default());
        let laps = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (control, laps) = (control.clone(), laps.clone());
                std::thread::spawn(move || {
                    while control.checkpoint() {
                        laps.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        control.set(|s| s.pause = true);
        assert!(
            control.wait_parked(3, Duration::from_secs(5)),
            "all three park"
        );
        let parked_at = laps.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            laps.load(Ordering::Relaxed),
            parked_at,
            "no lap while paused"
        );
        control.set(|s| s.pause = false);
        std::thread::sleep(Duration::from_millis(50));
        assert!(laps.load(Ordering::Relaxed) > parked_at, "running again");
        control.set(|s| s.pause = true);
        assert!(control.wait_parked(3, Duration::from_secs(5)));
        // Stop while paused: parked threads end too.
        control.set(|s| s.stop = true);
        for t in threads {
            t.join().unwrap();
        }
        assert!(!control.checkpoint(), "a stopped control says stop");
    }

    struct Answer(u8);

    impl BusDevice for Answer {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(self.0);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    fn routes() -> Routes {
        Routes {
            pio: Arc::new(Bus::new()),
            mmio: Arc::new(Bus::new()),
            exits: Arc::new(ExitCounts::default()),
            ring: None,
        }
    }

    #[test]
    fn io_is_routed_and_unclaimed_reads_float_high() {
        let r = routes();
        r.pio
            .insert(Arc::new(Mutex::new(Answer(7))), 0x70, 2)
            .unwrap();
        let mut data = [0u8; 2];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x71, &mut data), &r),
            Action::Continue
        );
        assert_eq!(data, [7, 7]);
        handle_exit(VcpuExit::IoOut(0x70, &[9]), &r);
        handle_exit(VcpuExit::IoIn(0x70, &mut data), &r);
        assert_eq!(data, [9, 9]);
        handle_exit(VcpuExit::IoIn(0x80, &mut data), &r);
        assert_eq!(data, [0xff, 0xff]);
        assert_eq!(r.exits.io_in.load(std::sync::atomic::Ordering::Relaxed), 3);
        let mut word = [0u8; 4];
        handle_exit(VcpuExit::MmioRead(0xd000_0000, &mut word), &r);
        assert_eq!(word, [0xff; 4]);
    }

    #[test]
    fn shutdown_is_a_crash_and_system_events_stop() {
        let r = routes();
        assert!(matches!(
            handle_exit(VcpuExit::Shutdown, &r),
            Action::Crash(m) if m.contains("triple fault")
        ));
        assert_eq!(
            handle_exit(VcpuExit::SystemEvent(SYSTEM_EVENT_RESET, &[]), &r),
            Action::Stop(ExitReason::Reset)
        );
        assert_eq!(
            handle_exit(VcpuExit::SystemEvent(SYSTEM_EVENT_SHUTDOWN, &[]), &r),
            Action::Stop(ExitReason::Poweroff)
        );
        assert!(matches!(
            handle_exit(VcpuExit::InternalError, &r),
            Action::Crash(_)
        ));
    }
}
