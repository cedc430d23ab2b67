//! The VM's GSI routing table: the in-kernel irqchip routes for GSIs 0-23 (as KVM sets them
//! by default) plus one MSI route per allocated GSI from 24 up. KVM_SET_GSI_ROUTING replaces
//! the whole table, so every change rewrites it from this model.

use crate::vm_ops::VmOps;
use kvm_bindings::{
    kvm_irq_routing_entry, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_MAX_IRQ_ROUTES,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// IOAPIC pins (GSIs 0-23).
pub const IOAPIC_PINS: u32 = 24;
/// First GSI handed out for MSI.
const FIRST_MSI_GSI: u32 = IOAPIC_PINS;

/// Routing errors.
#[derive(Debug)]
pub enum Error {
    /// All GSIs are in use.
    NoGsi,
    /// KVM refused the table.
    Kvm(std::io::Error),
}

impl diag::Explain for Error {
    fn advice(&self) -> diag::Advice {
        use diag::Advice;
        match self {
            Error::NoGsi => Advice::new(
                format!("no free GSI for another MSI vector (at most {KVM_MAX_IRQ_ROUTES} routes)"),
                "pass through fewer devices or let the guest use fewer vectors",
            ),
            Error::Kvm(e) => Advice::new(
                format!("KVM_SET_GSI_ROUTING failed: {e}"),
                "check that KVM works on this host (dmesg)",
            ),
        }
    }
}
diag::explained!(Error);

/// An MSI message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Address.
    pub address: u64,
    /// Data.
    pub data: u32,
}

#[derive(Default)]
struct Table {
    msi: BTreeMap<u32, MsiMessage>,
    free: Vec<u32>,
    next: u32,
}

/// Owns GSIs >= 24 and the routing table.
pub struct IrqRouter {
    vm: Arc<dyn VmOps>,
    table: Mutex<Table>,
}

impl IrqRouter {
    /// A router with only the irqchip routes.
    pub fn new(vm: Arc<dyn VmOps>) -> Self {
        Self {
            vm,
            table: Mutex::new(Table {
                next: FIRST_MSI_GSI,
                ..Default::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A GSI for one MSI vector, routed to `msg`.
    pub fn add_msi(&self, msg: MsiMessage) -> Result<u32, Error> {
        let mut t = self.lock();
        let gsi = match t.free.pop() {
            Some(g) => g,
            None if (t.next as usize) < KVM_MAX_IRQ_ROUTES => {
                t.next += 1;
                t.next - 1
            }
            None => return Err(Error::NoGsi),
        };
        t.msi.insert(gsi, msg);
        self.commit(&t)?;
        Ok(gsi)
    }

    /// Points `gsi` at a new message (no-op when unchanged).
    pub fn update_msi(&self, gsi: u32, msg: MsiMessage) -> Result<(), Error> {
        let mut t = self.lock();
        if t.msi.insert(gsi, msg) == Some(msg) {
            return Ok(());
        }
        self.commit(&t)
    }

    /// Removes the routes of `gsis` and frees them.
    pub fn remove(&self, gsis: &[u32]) -> Result<(), Error> {
        let mut t = self.lock();
        for gsi in gsis {
            if t.msi.remove(gsi).is_some() {
                t.free.push(*gsi);
            }
        }
        self.commit(&t)
    }

    fn commit(&self, t: &Table) -> Result<(), Error> {
        let entries = routing_entries(&t.msi);
        self.vm.set_gsi_routing(&entries).map_err(Error::Kvm)
    }
}

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

/// KVM's default irqchip routes (PIC for GSIs 0-15, IOAPIC for 0-23) and the MSI routes.
fn routing_entries(msi: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
    let mut entries = Vec::with_capacity(40 + msi.len());
    for gsi in 0..IOAPIC_PINS {
        if gsi < 16 {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            entries.push(irqchip(gsi, chip, gsi % 8));
        }
        entries.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    for (&gsi, m) in msi {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = m.address as u32;
        e.u.msi.address_hi = (m.address >> 32) as u32;
        e.u.msi.data = m.data;
        entries.push(e);
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn irqchip_routes_are_always_there() {
        let e = routing_entries(&BTreeMap::new());
        assert_eq!(e.len(), 16 + 24);
        let ioapic: Vec<_> = e
            .iter()
            .filter(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP)
            // SAFETY: irqchip entries carry the irqchip member of the union.
            .filter(|e| unsafe { e.u.irqchip.irqchip } == KVM_IRQCHIP_IOAPIC)
            .collect();
        assert_eq!(ioapic.len(), 24);
        // SAFETY: as above.
        assert!(ioapic.iter().all(|e| unsafe { e.u.irqchip.pin } == e.gsi));
    }

    #[test]
    fn msi_routes_follow() {
        let mut msi = BTreeMap::new();
        msi.insert(
            24,
            MsiMessage {
                address: 0x1_fee0_0000,
                data: 0x4041,
            },
        );
        let e = routing_entries(&msi);
        let last = e.last().unwrap();
        assert_eq!((last.gsi, last.type_), (24, KVM_IRQ_ROUTING_MSI));
        // SAFETY: MSI entries carry the msi member of the union.
        let m = unsafe { last.u.msi };
        assert_eq!(
            (m.address_lo, m.address_hi, m.data),
            (0xfee0_0000, 1, 0x4041)
        );
    }
}
