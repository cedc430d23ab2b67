//! A passed-through device's interrupts, from its VFIO eventfds straight into KVM irqfds:
//! INTx (with a resample eventfd that VFIO uses to unmask the line on the guest's EOI),
//! MSI and MSI-X (one GSI and MSI route per vector). The VMM runs only when the guest
//! reprograms the device; no code of ours runs per interrupt.
//!
//! [`DeviceIrqs::sync`] makes the wiring match what the guest programmed (the device model's
//! MSI/MSI-X state), so mode switches and reprogramming are one code path.

use super::Model;
use crate::interrupts::{IrqRouter, MsiMessage};
use crate::vm_ops::VmOps;
use std::sync::Arc;
use vfio::backend::{INTX_IRQ, MSIX_IRQ, MSI_IRQ};
use vfio::DeviceOps;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Which interrupt mechanism is wired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Off,
    Intx,
    Msi,
    Msix,
}

/// INTx: a level-triggered IOAPIC pin.
struct Intx {
    gsi: u32,
    trigger: EventFd,
    resample: EventFd,
}

/// One MSI or MSI-X vector.
struct Vector {
    efd: EventFd,
    gsi: u32,
    msg: MsiMessage,
    irqfd: bool,
}

/// The interrupt wiring of one device.
pub struct DeviceIrqs {
    name: String,
    vm: Arc<dyn VmOps>,
    router: Arc<IrqRouter>,
    intx: Option<Intx>,
    mode: Mode,
    vectors: Vec<Vector>,
}

impl DeviceIrqs {
    /// Wiring for a device whose INTx pin (if any) is routed to `intx_gsi`.
    pub fn new(
        name: &str,
        vm: Arc<dyn VmOps>,
        router: Arc<IrqRouter>,
        intx_gsi: Option<u32>,
    ) -> Self {
        let intx = intx_gsi.and_then(|gsi| {
            Some(Intx {
                gsi,
                trigger: EventFd::new(EFD_NONBLOCK).ok()?,
                resample: EventFd::new(EFD_NONBLOCK).ok()?,
            })
        });
        Self {
            name: name.to_owned(),
            vm,
            router,
            intx,
            mode: Mode::Off,
            vectors: Vec::new(),
        }
    }

    /// The mechanism wired now: `none`, `intx`, `msi` or `msix`.
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Off => "none",
            Mode::Intx => "intx",
            Mode::Msi => "msi",
            Mode::Msix => "msix",
        }
    }

    /// Makes the wiring match the device's programmed state. Failures are the guest's or
    /// the host's problem, never the VMM's: they are logged and the vector stays unwired.
    pub fn sync(&mut self, dev: &Model) {
        let want = wanted_mode(dev, self.intx.is_some());
        if want != self.mode {
            self.teardown(&**dev.backend());
            if let Err(e) = self.setup(want, dev) {
                log::warn!("{}: cannot enable {want:?}: {e}", self.name);
                self.teardown(&**dev.backend());
                return;
            }
            self.mode = want;
        }
        self.update_vectors(dev);
    }

    /// Turns the device's interrupts off and unwires them from KVM (on a mode change, and
    /// when the VM is going away).
    pub fn teardown(&mut self, host: &dyn DeviceOps) {
        match self.mode {
            Mode::Off => return,
            Mode::Intx => {
                if let Some(intx) = &self.intx {
                    let _ = host.disable_irq(INTX_IRQ);
                    let _ = self.vm.unregister_irqfd(&intx.trigger, intx.gsi);
                }
            }
            Mode::Msi | Mode::Msix => {
                let index = if self.mode == Mode::Msi {
                    MSI_IRQ
                } else {
                    MSIX_IRQ
                };
                let _ = host.disable_irq(index);
                for v in self.vectors.iter().filter(|v| v.irqfd) {
                    let _ = self.vm.unregister_irqfd(&v.efd, v.gsi);
                }
                let gsis: Vec<u32> = self.vectors.iter().map(|v| v.gsi).collect();
                if let Err(e) = self.router.remove(&gsis) {
                    log::warn!("{}: {e}", self.name);
                }
                self.vectors.clear();
            }
        }
        self.mode = Mode::Off;
    }

    fn setup(&mut self, mode: Mode, dev: &Model) -> Result<(), String> {
        let vfio = dev.backend();
        match mode {
            Mode::Off => Ok(()),
            Mode::Intx => {
                let intx = self.intx.as_ref().ok_or("no INTx pin")?;
                self.vm
                    .register_irqfd_with_resample(&intx.trigger, &intx.resample, intx.gsi)
                    .map_err(|e| e.to_string())?;
                vfio.enable_irq(INTX_IRQ, &[&intx.trigger])
                    .map_err(|e| e.to_string())?;
                vfio.set_irq_resample(INTX_IRQ, &intx.resample)
                    .map_err(|e| e.to_string())
            }
            Mode::Msi | Mode::Msix => {
                let messages = messages(dev);
                for (msg, _) in &messages {
                    let efd = EventFd::new(EFD_NONBLOCK).map_err(|e| e.to_string())?;
                    let gsi = self.router.add_msi(*msg).map_err(|e| e.to_string())?;
                    self.vectors.push(Vector {
                        efd,
                        gsi,
                        msg: *msg,
                        irqfd: false,
                    });
                }
                let fds: Vec<&EventFd> = self.vectors.iter().map(|v| &v.efd).collect();
                let index = if mode == Mode::Msi { MSI_IRQ } else { MSIX_IRQ };
                // Mode is set by the caller on success; teardown needs it on failure.
                self.mode = mode;
                vfio.enable_irq(index, &fds).map_err(|e| e.to_string())
            }
        }
    }

    /// Sets the MSI-X pending bit of each masked vector whose eventfd has a count (it fired
    /// while masked), and clears the others. Polling does not consume the count, so the
    /// interrupt is still delivered when the vector is unmasked.
    pub fn refresh_pending(&self, dev: &mut Model) {
        if self.mode != Mode::Msix {
            return;
        }
        for (n, v) in self.vectors.iter().enumerate() {
            let pending = !v.irqfd && readable(&v.efd);
            dev.set_msix_pending(n as u16, pending);
        }
    }

    /// Routes each vector to its current message; wires the unmasked ones. A vector that
    /// fired while masked has a count in its eventfd, which KVM delivers when the irqfd is
    /// registered on unmask: exactly once.
    fn update_vectors(&mut self, dev: &Model) {
        let messages = messages(dev);
        for (v, (msg, masked)) in self.vectors.iter_mut().zip(messages) {
            if v.msg != msg {
                if let Err(e) = self.router.update_msi(v.gsi, msg) {
                    log::warn!("{}: {e}", self.name);
                }
                v.msg = msg;
            }
            let result = match (masked, v.irqfd) {
                (false, false) => self.vm.register_irqfd(&v.efd, v.gsi),
                (true, true) => self.vm.unregister_irqfd(&v.efd, v.gsi),
                _ => Ok(()),
            };
            match result {
                Ok(()) => v.irqfd = !masked,
                Err(e) => log::warn!("{}: irqfd for GSI {}: {e}", self.name, v.gsi),
            }
        }
    }
}

/// Whether the eventfd has a non-zero count, without reading it.
fn readable(efd: &EventFd) -> bool {
    use std::os::unix::io::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: efd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 && pfd.revents & libc::POLLIN != 0 }
}

/// MSI-X if enabled, else MSI if enabled, else INTx when the device has a pin.
fn wanted_mode(dev: &Model, has_intx: bool) -> Mode {
    if dev.msix().is_some_and(|m| m.enabled) {
        Mode::Msix
    } else if dev.msi().is_some_and(|m| m.enabled) {
        Mode::Msi
    } else if has_intx {
        Mode::Intx
    } else {
        Mode::Off
    }
}

/// Each vector's message and whether it is masked, from the enabled mechanism.
fn messages(dev: &Model) -> Vec<(MsiMessage, bool)> {
    if let Some(m) = dev.msix().filter(|m| m.enabled) {
        return m
            .entries
            .iter()
            .map(|e| {
                let msg = MsiMessage {
                    address: e.address,
                    data: e.data,
                };
                (msg, e.masked || m.masked)
            })
            .collect();
    }
    if let Some(m) = dev.msi().filter(|m| m.enabled) {
        return (0..m.vectors)
            .map(|n| {
                let msg = MsiMessage {
                    address: m.address,
                    data: m.data | n,
                };
                (msg, m.masked & (1 << n) != 0)
            })
            .collect();
    }
    Vec::new()
}
