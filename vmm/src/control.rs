//! What the control API's actions do to the running VM, on the main thread (which owns the
//! VM): answer `vmm.ping` and `vm.info`, press the ACPI power button, stop the guest, pause
//! and resume the vCPUs, hot-add and hot-remove devices.
//!
//! It never reads a socket: [`crate::api`] turns requests into [`Action`]s and answers with
//! the [`Reply`] this returns.

use crate::api::server::Pending;
use crate::api::{Action, Reply};
use crate::builder::Vm;
use crate::config::VmConfig;
use crate::vcpu::Running;
use devices::ExitReason;
use diag::Advice;
use serde::Serialize;
use std::time::Duration;

/// How long `vm.pause` waits for every vCPU to park.
const PAUSE_PATIENCE: Duration = Duration::from_secs(2);

/// What an action may touch.
pub struct Target<'a> {
    /// The VM.
    pub vm: &'a mut Vm,
    /// Its vCPU threads.
    pub running: &'a Running,
    /// What the VM was started with.
    pub cfg: &'a VmConfig,
}

#[derive(Serialize)]
struct Ping {
    build_version: &'static str,
    version: &'static str,
    pid: u32,
    features: Vec<&'static str>,
}

#[derive(Serialize)]
struct Cpus {
    boot_vcpus: u8,
    max_vcpus: u8,
}

#[derive(Serialize)]
struct Memory {
    size: u64,
}

#[derive(Serialize)]
struct Config {
    cpus: Cpus,
    memory: Memory,
}

#[derive(Serialize)]
struct Info {
    state: &'static str,
    config: Config,
    memory_actual_size: u64,
    devices: Vec<crate::passthrough::DeviceInfo>,
}

/// Runs the action of `pending` on the VM and answers it (a hot-remove answers later, once
/// the guest let go of the device).
pub fn handle(pending: Pending, t: &mut Target) {
    match pending.action.clone() {
        Action::RemoveDevice(id) => t.vm.hot_remove(&id, pending),
        action => {
            let reply = handle_now(action, t);
            pending.answer(reply);
        }
    }
}

/// Runs an action that is answered at once.
fn handle_now(action: Action, t: &mut Target) -> Reply {
    match action {
        Action::Ping => Reply::ok(Ping {
            build_version: env!("CARGO_PKG_VERSION"),
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            features: vec!["vfio", "acpi-pci-hotplug"],
        }),
        Action::Info => Reply::ok(info(t)),
        Action::PowerButton => power_button(t),
        Action::Shutdown => {
            t.vm.exit.request(ExitReason::Shutdown);
            Reply::done()
        }
        Action::Pause => pause(t),
        Action::Resume => resume(t),
        Action::AddDevice(cfg) => t.vm.hot_add(&cfg),
        Action::RemoveDevice(id) => Reply::error(
            500,
            &Advice::bug(format!("remove-device {id} was not handed to hotplug")),
        ),
    }
}

fn info(t: &Target) -> Info {
    let state = if t.running.paused() {
        "Paused"
    } else {
        "Running"
    };
    Info {
        state,
        config: Config {
            cpus: Cpus {
                boot_vcpus: t.cfg.cpus,
                max_vcpus: t.cfg.cpus,
            },
            memory: Memory {
                size: t.cfg.memory.size,
            },
        },
        memory_actual_size: t.cfg.memory.size,
        devices: t.vm.passthrough.info(),
    }
}

fn power_button(t: &mut Target) -> Reply {
    match t.vm.notify_ged(devices::ged::POWER_BUTTON) {
        Ok(()) => Reply::done(),
        Err(e) => Reply::error(
            500,
            &Advice::bug(format!("cannot raise the power button's interrupt: {e}")),
        ),
    }
}

fn pause(t: &Target) -> Reply {
    if t.running.paused() {
        return Reply::error(
            409,
            &Advice::new("the guest is paused already", "resume it with vm.resume"),
        );
    }
    match t.running.pause(PAUSE_PATIENCE) {
        true => Reply::done(),
        false => Reply::error(
            500,
            &Advice::new(
                format!(
                    "a vCPU did not pause within {} s (busy in a device access)",
                    PAUSE_PATIENCE.as_secs()
                ),
                "try again, or vm.resume to cancel",
            ),
        ),
    }
}

fn resume(t: &Target) -> Reply {
    if !t.running.paused() {
        return Reply::error(
            409,
            &Advice::new(
                "the guest is running, not paused",
                "pause it first with vm.pause",
            ),
        );
    }
    t.running.resume();
    Reply::done()
}
