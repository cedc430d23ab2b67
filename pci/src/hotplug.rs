//! ACPI PCI hotplug, as the guest's `acpiphp` driver knows it: every slot of the root bus is a
//! `Device(Snnn)` under `\_SB_.PCI0` with `_ADR`, `_SUN` and `_EJ0`, and a small register block
//! (`\_SB_.PHPR`) tells the guest which slots changed.
//!
//! - Hot-add: the VMM puts the device on the bus, sets its slot's bit in `PCIU` and raises the
//!   GED's PCI event; the guest's `_EVT` calls `PSCN`, which notifies the slot with "device
//!   check" (1), and the guest scans it and binds a driver.
//! - Hot-remove: the VMM sets the slot's bit in `PCID` and raises the event; the guest notifies
//!   the slot with "eject request" (3), unbinds the driver, and calls the slot's `_EJ0`, which
//!   writes the slot's bit to `B0EJ`. That write is the guest letting go: the VMM then takes
//!   the device off the bus.
//!
//! The registers (little-endian dwords at [`HOTPLUG_SIZE`] bytes from the block's base):
//! `PCIU` (0x0, read clears) slots to announce, `PCID` (0x4, read clears) slots to eject,
//! `B0EJ` (0x8, write) a slot the guest ejected, `PSEG` (0xc) the segment (only 0 exists).
//!
//! This module holds the register state and the AML only: which device sits in a slot, and
//! what an eject means for it, is the VMM's.

use crate::root::MAX_SLOTS;
use acpi_tables::{aml, Aml, AmlSink};
use devices::BusDevice;
use vmm_sys_util::eventfd::EventFd;

/// Size of the register block.
pub const HOTPLUG_SIZE: u64 = 16;

const PCIU: u64 = 0x0;
const PCID: u64 = 0x4;
const B0EJ: u64 = 0x8;

/// The slot registers: what the VMM announced and what the guest ejected.
pub struct HotplugRegs {
    up: u32,
    down: u32,
    ejected: u32,
    eject_evt: EventFd,
}

impl HotplugRegs {
    /// Registers whose eject writes are announced on `eject_evt`.
    pub fn new(eject_evt: EventFd) -> Self {
        Self {
            up: 0,
            down: 0,
            ejected: 0,
            eject_evt,
        }
    }

    /// Announces a device in `slot` (the VMM then raises the GED's PCI event).
    pub fn announce(&mut self, slot: u8) {
        self.up |= 1 << slot;
    }

    /// Asks the guest to eject `slot`.
    pub fn request_eject(&mut self, slot: u8) {
        self.down |= 1 << slot;
    }

    /// The slots the guest ejected since the last call (bit N = slot N).
    pub fn take_ejected(&mut self) -> u32 {
        std::mem::take(&mut self.ejected)
    }
}

impl BusDevice for HotplugRegs {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (PCIU, 4) => std::mem::take(&mut self.up),
            (PCID, 4) => std::mem::take(&mut self.down),
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes()[..data.len().min(4)]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != B0EJ || data.len() != 4 {
            return;
        }
        let slots = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) & !1;
        if slots != 0 {
            self.ejected |= slots;
            let _ = self.eject_evt.write(1);
        }
    }
}

/// The hotplug AML: `\_SB_.PHPR` with its registers at `base`, and under `\_SB_.PCI0` the slot
/// devices `S001`-`S031` with the `PCNT` method `PHPR.PSCN` calls.
#[derive(Clone, Copy, Debug)]
pub struct HotplugAml {
    /// Guest physical address of the register block.
    pub base: u64,
}

/// Slots that can hold a device (slot 0 is the host bridge).
fn slots() -> std::ops::Range<u8> {
    1..MAX_SLOTS as u8
}

/// `S001`-`S031` (ACPI names are four characters).
fn slot_name(slot: u8) -> String {
    format!("S{slot:03}")
}

impl HotplugAml {
    /// `Device(PHPR)`: the registers, a lock, `PCEJ(slot, segment)` (what `_EJ0` calls) and
    /// `PSCN` (what the GED's `_EVT` calls).
    fn controller(&self, sink: &mut dyn AmlSink) {
        let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A06"));
        let uid = aml::Name::new("_UID".into(), &"PCI Hotplug Controller");
        let lock = aml::Mutex::new("BLCK".into(), 0);
        let length = HOTPLUG_SIZE as usize;
        let region = aml::OpRegion::new(
            "PCST".into(),
            aml::OpRegionSpace::SystemMemory,
            &self.base,
            &length,
        );
        let field = aml::Field::new(
            "PCST".into(),
            aml::FieldAccessType::DWord,
            aml::FieldLockRule::NoLock,
            aml::FieldUpdateRule::WriteAsZeroes,
            vec![
                aml::FieldEntry::Named(*b"PCIU", 32),
                aml::FieldEntry::Named(*b"PCID", 32),
                aml::FieldEntry::Named(*b"B0EJ", 32),
                aml::FieldEntry::Named(*b"PSEG", 32),
            ],
        );
        let (b0ej, pseg) = (aml::Path::new("B0EJ"), aml::Path::new("PSEG"));
        let acquire = aml::Acquire::new("BLCK".into(), 0xffff);
        let set_seg = aml::Store::new(&pseg, &aml::Arg(1));
        let bit = aml::ShiftLeft::new(&b0ej, &aml::ONE, &aml::Arg(0));
        let release = aml::Release::new("BLCK".into());
        let ret = aml::Return::new(&aml::ZERO);
        let pcej = aml::Method::new(
            "PCEJ".into(),
            2,
            false,
            vec![&acquire, &set_seg, &bit, &release, &ret],
        );
        let pcnt = aml::MethodCall::new("\\_SB_.PCI0.PCNT".into(), vec![]);
        let pscn = aml::Method::new("PSCN".into(), 0, true, vec![&pcnt]);
        let phpr = aml::Device::new(
            "PHPR".into(),
            vec![&hid, &uid, &lock, &region, &field, &pcej, &pscn],
        );
        aml::Scope::new("\\_SB_".into(), vec![&phpr]).to_aml_bytes(sink);
    }

    /// Under `\_SB_.PCI0`: `DVNT(bits, event)` notifies each slot whose bit is set, `PCNT`
    /// announces the slots `PCIU` and `PCID` name, and one `Snnn` per slot.
    fn slots(&self, sink: &mut dyn AmlSink) {
        let names: Vec<String> = slots().map(slot_name).collect();
        let paths: Vec<aml::Path> = names.iter().map(|n| aml::Path::new(n)).collect();
        let masks: Vec<u32> = slots().map(|s| 1u32 << s).collect();
        let ands: Vec<aml::And> = masks
            .iter()
            .map(|m| aml::And::new(&aml::ZERO, &aml::Arg(0), m))
            .collect();
        let notifies: Vec<aml::Notify> = paths
            .iter()
            .map(|p| aml::Notify::new(p, &aml::Arg(1)))
            .collect();
        let ifs: Vec<aml::If> = ands
            .iter()
            .zip(&notifies)
            .map(|(and, notify)| aml::If::new(and, vec![notify as &dyn Aml]))
            .collect();
        let dvnt = aml::Method::new(
            "DVNT".into(),
            2,
            false,
            ifs.iter().map(|i| i as &dyn Aml).collect(),
        );
        let acquire = aml::Acquire::new("\\_SB_.PHPR.BLCK".into(), 0xffff);
        let (pciu, pcid) = (
            aml::Path::new("\\_SB_.PHPR.PCIU"),
            aml::Path::new("\\_SB_.PHPR.PCID"),
        );
        let (check, eject) = (1u8, 3u8);
        let up = aml::MethodCall::new("DVNT".into(), vec![&pciu, &check]);
        let down = aml::MethodCall::new("DVNT".into(), vec![&pcid, &eject]);
        let release = aml::Release::new("\\_SB_.PHPR.BLCK".into());
        let pcnt = aml::Method::new(
            "PCNT".into(),
            0,
            false,
            vec![&acquire, &up, &down, &release],
        );

        let slot_numbers: Vec<u32> = slots().map(u32::from).collect();
        let adrs: Vec<u32> = slots().map(|s| u32::from(s) << 16).collect();
        let seg = aml::ZERO;
        let ej0_calls: Vec<aml::MethodCall> = slot_numbers
            .iter()
            .map(|s| aml::MethodCall::new("\\_SB_.PHPR.PCEJ".into(), vec![s, &seg]))
            .collect();
        let ej0s: Vec<aml::Method> = ej0_calls
            .iter()
            .map(|call| aml::Method::new("_EJ0".into(), 1, false, vec![call as &dyn Aml]))
            .collect();
        let adr_names: Vec<aml::Name> = adrs
            .iter()
            .map(|a| aml::Name::new("_ADR".into(), a))
            .collect();
        let sun_names: Vec<aml::Name> = slot_numbers
            .iter()
            .map(|s| aml::Name::new("_SUN".into(), s))
            .collect();
        let devices: Vec<aml::Device> = names
            .iter()
            .zip(adr_names.iter().zip(sun_names.iter().zip(&ej0s)))
            .map(|(name, (adr, (sun, ej0)))| {
                aml::Device::new(name.as_str().into(), vec![adr as &dyn Aml, sun, ej0])
            })
            .collect();
        let mut body: Vec<&dyn Aml> = vec![&dvnt, &pcnt];
        body.extend(devices.iter().map(|d| d as &dyn Aml));
        aml::Scope::new("\\_SB_.PCI0".into(), body).to_aml_bytes(sink);
    }
}

impl Aml for HotplugAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        self.controller(sink);
        self.slots(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_read_once_and_ejects_wake_the_vmm() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut regs = HotplugRegs::new(evt.try_clone().unwrap());
        regs.announce(3);
        regs.request_eject(5);
        let mut word = [0u8; 4];
        regs.read(PCIU, &mut word);
        assert_eq!(u32::from_le_bytes(word), 1 << 3);
        regs.read(PCIU, &mut word);
        assert_eq!(u32::from_le_bytes(word), 0, "read clears");
        regs.read(PCID, &mut word);
        assert_eq!(u32::from_le_bytes(word), 1 << 5);
        assert!(evt.read().is_err(), "no eject yet");
        regs.write(B0EJ, &(1u32 << 5).to_le_bytes());
        assert_eq!(evt.read().unwrap(), 1);
        assert_eq!(regs.take_ejected(), 1 << 5);
        assert_eq!(regs.take_ejected(), 0);
        // Slot 0 (the host bridge) cannot be ejected; byte writes are ignored.
        regs.write(B0EJ, &1u32.to_le_bytes());
        regs.write(B0EJ, &[0x20]);
        assert_eq!(regs.take_ejected(), 0);
    }

    fn find(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn aml_has_the_controller_and_every_slot() {
        let mut bytes = Vec::new();
        HotplugAml { base: 0xfeb0_1000 }.to_aml_bytes(&mut bytes);
        for name in [
            &b"PHPR"[..],
            b"PCEJ",
            b"PSCN",
            b"PCNT",
            b"DVNT",
            b"B0EJ",
            b"_EJ0",
        ] {
            assert!(find(&bytes, name), "{}", String::from_utf8_lossy(name));
        }
        assert!(find(&bytes, b"S001"), "slot 1");
        assert!(find(&bytes, b"S031"), "slot 31");
        assert!(!find(&bytes, b"S000"), "slot 0 is the host bridge");
        assert!(find(&bytes, &0xfeb0_1000u32.to_le_bytes()));
    }
}
