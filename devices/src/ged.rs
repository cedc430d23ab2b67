//! The ACPI Generic Event Device (GED, `ACPI0013`): how a hardware-reduced ACPI platform
//! tells the guest that something happened (the power button was pressed, a PCI slot changed).
//! The VMM sets the event's bit and raises the GED's interrupt; the guest's GED driver runs
//! `_EVT`, which reads (and so clears) the bits from the GED's register and acts on each: a
//! power-button notify on `\_SB_.PWRB` (`PNP0C0C`), a PCI slot scan through `\_SB_.PHPR.PSCN`.
//!
//! The device holds the pending bits and an interrupt `EventFd`; it never talks to KVM (the
//! VMM wires the eventfd to an irqfd).

use crate::bus::BusDevice;
use acpi_tables::{aml, Aml};
use vmm_sys_util::eventfd::EventFd;

/// Event bit: the power button was pressed.
pub const POWER_BUTTON: u32 = 1 << 0;
/// Event bit: PCI slots changed (a device arrived or must go).
pub const PCI_HOTPLUG: u32 = 1 << 1;

/// Size of the GED's register block: one 32-bit register of pending events.
pub const GED_SIZE: u64 = 4;

/// The device: pending event bits and the interrupt that announces them.
pub struct Ged {
    pending: u32,
    irq: EventFd,
}

impl Ged {
    /// A GED that raises `irq`.
    pub fn new(irq: EventFd) -> Self {
        Self { pending: 0, irq }
    }

    /// Marks `event` pending and raises the interrupt.
    pub fn notify(&mut self, event: u32) -> std::io::Result<()> {
        self.pending |= event;
        self.irq.write(1)
    }

    /// The bits not yet read by the guest.
    pub fn pending(&self) -> u32 {
        self.pending
    }

    /// Raises the interrupt again if events are still unread; whether it did. The interrupt
    /// is an edge: one raised before the guest's GED driver enabled it (early in the guest's
    /// boot) is lost, while the events wait in the register for the next one.
    pub fn raise_again(&mut self) -> std::io::Result<bool> {
        if self.pending == 0 {
            return Ok(false);
        }
        self.irq.write(1).map(|()| true)
    }
}

impl BusDevice for Ged {
    /// A read of the register returns the pending events and clears them.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.pending.to_le_bytes());
            self.pending = 0;
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

/// The GED and the power button in the DSDT: the GED's register at `base`, its edge-triggered
/// interrupt on `gsi`; `_EVT` scans PCI slots (`\_SB_.PHPR.PSCN`) when `pci_hotplug`.
#[derive(Clone, Copy, Debug)]
pub struct GedAml {
    /// Guest physical address of the register.
    pub base: u64,
    /// The interrupt.
    pub gsi: u32,
    /// Whether `_EVT` handles [`PCI_HOTPLUG`] (the slot controller must then exist).
    pub pci_hotplug: bool,
}

impl Aml for GedAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        dsdt_aml(self.base, self.gsi, self.pci_hotplug, sink);
    }
}

fn dsdt_aml(base: u64, gsi: u32, pci_hotplug: bool, sink: &mut dyn acpi_tables::AmlSink) {
    let (pwrb_hid, uid) = (aml::EISAName::new("PNP0C0C"), aml::ZERO);
    let pwrb_hid = aml::Name::new("_HID".into(), &pwrb_hid);
    let pwrb_uid = aml::Name::new("_UID".into(), &uid);
    let pwrb = aml::Device::new("PWRB".into(), vec![&pwrb_hid, &pwrb_uid]);

    let irq = aml::Interrupt::new(true, true, false, false, gsi);
    let resources = aml::ResourceTemplate::new(vec![&irq]);
    let crs = aml::Name::new("_CRS".into(), &resources);
    let length = GED_SIZE as usize;
    let region = aml::OpRegion::new(
        "GDST".into(),
        aml::OpRegionSpace::SystemMemory,
        &base,
        &length,
    );
    let field = aml::Field::new(
        "GDST".into(),
        aml::FieldAccessType::DWord,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![aml::FieldEntry::Named(*b"GDAT", 32)],
    );

    // _EVT: Local0 = GDAT (reading clears it), then one If per event bit.
    let (local, gdat) = (aml::Local(0), aml::Path::new("GDAT"));
    let store = aml::Store::new(&local, &gdat);
    let power_bits = aml::And::new(&aml::ZERO, &local, &POWER_BUTTON);
    let is_power = aml::Equal::new(&power_bits, &POWER_BUTTON);
    let (button, pressed) = (aml::Path::new("\\_SB_.PWRB"), 0x80u8);
    let notify = aml::Notify::new(&button, &pressed);
    let power = aml::If::new(&is_power, vec![&notify]);
    let slot_bits = aml::And::new(&aml::ZERO, &local, &PCI_HOTPLUG);
    let is_slot = aml::Equal::new(&slot_bits, &PCI_HOTPLUG);
    let scan = aml::MethodCall::new("\\_SB_.PHPR.PSCN".into(), vec![]);
    let hotplug = aml::If::new(&is_slot, vec![&scan]);
    let mut body: Vec<&dyn Aml> = vec![&store, &power];
    if pci_hotplug {
        body.push(&hotplug);
    }
    let evt = aml::Method::new("_EVT".into(), 1, true, body);

    let hid = aml::Name::new("_HID".into(), &"ACPI0013");
    let ged_uid = aml::Name::new("_UID".into(), &uid);
    let ged = aml::Device::new(
        "GEC_".into(),
        vec![&hid, &ged_uid, &crs, &region, &field, &evt],
    );
    aml::Scope::new("\\_SB_".into(), vec![&pwrb, &ged]).to_aml_bytes(sink);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_latch_until_read_and_raise_the_interrupt() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut ged = Ged::new(irq.try_clone().unwrap());
        ged.notify(POWER_BUTTON).unwrap();
        ged.notify(PCI_HOTPLUG).unwrap();
        assert_eq!(irq.read().unwrap(), 2, "one interrupt per event");
        let mut data = [0u8; 4];
        ged.read(0, &mut data);
        assert_eq!(u32::from_le_bytes(data), POWER_BUTTON | PCI_HOTPLUG);
        ged.read(0, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0, "reading clears");
        ged.notify(POWER_BUTTON).unwrap();
        let mut byte = [0xaau8; 1];
        ged.read(0, &mut byte);
        assert_eq!(byte, [0], "only the whole register reads the events");
        assert_eq!(ged.pending(), POWER_BUTTON);
    }

    #[test]
    fn unread_events_raise_the_interrupt_again() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut ged = Ged::new(irq.try_clone().unwrap());
        assert!(!ged.raise_again().unwrap(), "nothing pending");
        assert!(irq.read().is_err());
        ged.notify(PCI_HOTPLUG).unwrap();
        assert_eq!(irq.read().unwrap(), 1);
        assert!(ged.raise_again().unwrap(), "the guest has not read it");
        assert_eq!(irq.read().unwrap(), 1);
        let mut data = [0u8; 4];
        ged.read(0, &mut data);
        assert!(!ged.raise_again().unwrap(), "read");
        assert!(irq.read().is_err());
    }

    fn find(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    fn bytes(pci_hotplug: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let aml = GedAml {
            base: 0xfeb0_0000,
            gsi: 5,
            pci_hotplug,
        };
        aml.to_aml_bytes(&mut out);
        out
    }

    #[test]
    fn aml_declares_the_ged_and_the_power_button() {
        let aml = bytes(false);
        for name in [
            &b"ACPI0013"[..],
            b"PWRB",
            b"GEC_",
            b"_EVT",
            b"GDST",
            b"GDAT",
        ] {
            assert!(find(&aml, name), "{}", String::from_utf8_lossy(name));
        }
        assert!(
            find(&aml, &0xfeb0_0000u32.to_le_bytes()),
            "the register's address"
        );
        assert!(!find(&aml, b"PSCN"), "no slot scan without hotplug");
        assert!(find(&bytes(true), b"PSCN"));
    }
}
