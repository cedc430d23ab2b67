//! Hot-add and hot-remove of passed-through devices through the control API, by ACPI PCI
//! hotplug ([`pci::hotplug`] registers and slot AML, the GED's interrupt): the guest's own
//! `acpiphp` driver scans a slot we announce and ejects a slot we ask it to release, so an
//! unmodified guest needs no command and no kernel parameter.
//!
//! Why ACPI hotplug and not native PCIe hotplug through emulated root ports: vmm's guest bus is
//! one flat root bus whose devices get their BARs from vmm, as firmware would, and the 64-bit
//! window reaches the guest's address limit; a root port would need its bridge windows sized
//! before boot for whatever might be plugged into it later (a 128 GiB BAR included), a PCIe
//! capability with a slot, MSI for its hotplug interrupt and a second bus level. ACPI hotplug
//! needs two small register blocks and AML, uses the GED the power button already uses, and is
//! what Cloud Hypervisor does.
//!
//! Runs on the main thread, which owns the VM. A removal is answered when the guest has let
//! go of the device (its `_EJ0` write) or after [`REMOVE_PATIENCE`] with an error, the device
//! staying; the main loop keeps serving meanwhile.

use crate::api::server::Pending;
use crate::api::Reply;
use crate::builder::Vm;
use crate::config::DeviceConfig;
use devices::ged::PCI_HOTPLUG;
use diag::Advice;
use pci::hotplug::HotplugRegs;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

/// How long a hot-remove waits for the guest to let go of the device.
pub const REMOVE_PATIENCE: Duration = Duration::from_secs(20);

/// How long after raising the GED's interrupt it is raised again while the guest has left
/// its events unread: the interrupt is an edge, and one raised before the guest's GED driver
/// enabled it (a device added while the guest boots) is lost, so the guest would never scan
/// the slot.
pub const GED_RETRY: Duration = Duration::from_millis(500);

/// The hotplug state of a VM started with `--api-socket`.
pub struct Hotplug {
    /// The slot registers the guest's AML reads and writes.
    pub regs: Arc<Mutex<HotplugRegs>>,
    /// Signalled when the guest ejects a slot (the main loop watches it).
    pub eject: EventFd,
    removals: Vec<Removal>,
    /// When to look again whether the guest read the GED's events.
    ged_retry: Option<Instant>,
}

/// A hot-remove waiting for the guest.
struct Removal {
    slot: u8,
    id: String,
    deadline: Instant,
    reply: Pending,
}

impl Hotplug {
    /// Hotplug over `regs`, whose eject writes signal `eject`.
    pub fn new(regs: Arc<Mutex<HotplugRegs>>, eject: EventFd) -> Self {
        Self {
            regs,
            eject,
            removals: Vec::new(),
            ged_retry: None,
        }
    }

    /// Until the nearest removal deadline or GED retry, for the main loop's wait.
    pub fn next_deadline(&self) -> Option<Duration> {
        let now = Instant::now();
        self.removals
            .iter()
            .map(|r| r.deadline)
            .chain(self.ged_retry)
            .map(|at| at.saturating_duration_since(now))
            .min()
    }
}

/// The GED retry at `now`, set for `at`, the guest having left events `unread`: whether to
/// raise the interrupt again, and when to look next (`None`: nothing left to retry).
fn ged_retry(at: Option<Instant>, now: Instant, unread: bool) -> (bool, Option<Instant>) {
    match at {
        Some(at) if at <= now && unread => (true, Some(now + GED_RETRY)),
        Some(at) if at <= now => (false, None),
        at => (false, at),
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The HTTP status of a refused attach: the request's fault (the device, its group, its
/// driver, the id) or vmm's (KVM, an mmap, a thread).
fn status_of(e: &crate::passthrough::Error) -> u16 {
    use crate::passthrough::Error as E;
    match e {
        E::Kvm { .. } | E::Mmap { .. } | E::Bus(_) | E::Thread { .. } => 500,
        _ => 400,
    }
}

#[derive(serde::Serialize)]
struct Added {
    id: String,
    bdf: String,
}

impl Vm {
    /// `vm.add-device`: every check of `--device` (group, driver, memlock, `managed=on`
    /// binding), then the device on the bus and the guest told; answers with its id and
    /// guest address.
    pub fn hot_add(&mut self, cfg: &DeviceConfig) -> Reply {
        let Some(hotplug) = &self.hotplug else {
            return Reply::error(
                409,
                &Advice::new("hotplug is off", "start vmm with --api-socket"),
            );
        };
        let regs = hotplug.regs.clone();
        let binding = match cfg.managed {
            true => match crate::managed::bind(std::slice::from_ref(cfg)) {
                Ok(mut b) => b.pop(),
                Err(e) => return Reply::error(400, &e),
            },
            false => None,
        };
        let (id, slot) = match self.passthrough.hot_add(cfg) {
            Ok(added) => added,
            Err(e) => {
                if let Some(b) = binding {
                    crate::managed::restore(vec![b]);
                }
                return Reply::error(status_of(&e), &e);
            }
        };
        if let Some(b) = binding {
            self.bindings.add(b);
        }
        lock(&regs).announce(slot);
        if let Err(e) = self.notify_ged(PCI_HOTPLUG) {
            log::warn!("cannot raise the GED interrupt for slot {slot}: {e}");
        }
        log::info!("{id}: added in slot {slot}");
        Reply::ok(Added {
            id,
            bdf: format!("0000:00:{slot:02x}.0"),
        })
    }

    /// `vm.remove-device`: asks the guest to eject the device's slot; `reply` is answered
    /// once it did and the device is released, or with an error after [`REMOVE_PATIENCE`].
    pub fn hot_remove(&mut self, id: &str, reply: Pending) {
        let Some(slot) = self.passthrough.slot_of(id) else {
            return reply.answer(Reply::error(
                404,
                &Advice::new(
                    format!("no device with id {id:?}"),
                    "list them with vm.info",
                ),
            ));
        };
        let Some(hotplug) = &mut self.hotplug else {
            return reply.answer(Reply::error(
                409,
                &Advice::new("hotplug is off", "start vmm with --api-socket"),
            ));
        };
        if hotplug.removals.iter().any(|r| r.slot == slot) {
            return reply.answer(Reply::error(
                409,
                &Advice::new(
                    format!("{id} is being removed already"),
                    "wait for the first vm.remove-device to answer",
                ),
            ));
        }
        lock(&hotplug.regs).request_eject(slot);
        hotplug.removals.push(Removal {
            slot,
            id: id.to_string(),
            deadline: Instant::now() + REMOVE_PATIENCE,
            reply,
        });
        if let Err(e) = self.notify_ged(PCI_HOTPLUG) {
            log::warn!("cannot raise the GED interrupt for slot {slot}: {e}");
        }
    }

    /// Tells the guest about `event` through the GED, and raises its interrupt again every
    /// [`GED_RETRY`] until the guest has read it ([`Vm::poll_hotplug`]).
    pub fn notify_ged(&mut self, event: u32) -> std::io::Result<()> {
        lock(&self.ged).notify(event)?;
        if let Some(hotplug) = &mut self.hotplug {
            hotplug.ged_retry = Some(Instant::now() + GED_RETRY);
        }
        Ok(())
    }

    /// Raises the GED's interrupt again when the guest left its events unread past the retry
    /// time.
    fn retry_ged(&mut self) {
        let Some(hotplug) = &mut self.hotplug else {
            return;
        };
        let mut ged = lock(&self.ged);
        let (raise, next) = ged_retry(hotplug.ged_retry, Instant::now(), ged.pending() != 0);
        hotplug.ged_retry = next;
        if raise {
            log::debug!(
                "GED events {:#x} not read yet: interrupt raised again",
                ged.pending()
            );
            if let Err(e) = ged.raise_again() {
                log::warn!("cannot raise the GED interrupt again: {e}");
                hotplug.ged_retry = None;
            }
        }
    }

    /// Finishes the removals the guest let go of and answers those past their deadline; a
    /// slot the guest ejects late (or by itself) is released then, with nobody to answer.
    /// Raises the GED's interrupt again if the guest left its events unread.
    pub fn poll_hotplug(&mut self) {
        self.retry_ged();
        let Some(hotplug) = &mut self.hotplug else {
            return;
        };
        let _ = hotplug.eject.read();
        let ejected = lock(&hotplug.regs).take_ejected();
        let now = Instant::now();
        let mut released: Vec<(u8, Option<Removal>)> = Vec::new();
        let mut expired = Vec::new();
        for r in std::mem::take(&mut hotplug.removals) {
            if ejected & (1 << r.slot) != 0 {
                released.push((r.slot, Some(r)));
            } else if r.deadline <= now {
                expired.push(r);
            } else {
                hotplug.removals.push(r);
            }
        }
        for slot in (1..32u8).filter(|s| ejected & (1 << s) != 0) {
            if !released.iter().any(|(s, _)| *s == slot) {
                released.push((slot, None));
            }
        }
        for (slot, removal) in released {
            let name = self.passthrough.hot_remove(slot);
            if let Some(name) = &name {
                log::info!("{name}: removed from slot {slot}");
                self.bindings.restore(name);
            }
            if let Some(r) = removal {
                r.reply.answer(match name {
                    Some(_) => Reply::done(),
                    None => Reply::error(
                        404,
                        &Advice::new(
                            format!("{} is gone already", r.id),
                            "list them with vm.info",
                        ),
                    ),
                });
            }
        }
        for r in expired {
            r.reply.answer(Reply::error(
                504,
                &Advice::new(
                    format!(
                        "the guest did not release {} within {} s; it stays",
                        r.id,
                        REMOVE_PATIENCE.as_secs()
                    ),
                    "check the guest (its driver may hold the device), then ask again",
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ged_retries_while_events_stay_unread() {
        let t0 = Instant::now();
        let at = t0 + GED_RETRY;
        assert_eq!(ged_retry(None, t0, true), (false, None), "nothing raised");
        assert_eq!(ged_retry(Some(at), t0, true), (false, Some(at)), "not yet");
        let later = at + Duration::from_millis(1);
        assert_eq!(
            ged_retry(Some(at), later, true),
            (true, Some(later + GED_RETRY)),
            "unread: again, and again later"
        );
        assert_eq!(ged_retry(Some(at), later, false), (false, None), "read");
    }
}
