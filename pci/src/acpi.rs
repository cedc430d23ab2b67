//! ACPI description of the host bridge for the DSDT (`\_SB_.PCI0` and the ECAM reservation
//! `\_SB_.PRES`), the MCFG table, and the INTx -> GSI swizzle shared with the interrupt code.
//!
//! No `_OSC`: without it Linux keeps native PCIe services (AER, PME, hotplug) off, which an
//! endpoint-only root bus does not need, while MSI/MSI-X and extended config space work.

use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, Device, EISAName, Memory32Fixed, Name, Package,
    Path, ResourceTemplate, Scope,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::{Aml, AmlSink};
use resources::layout::PCI_ECAM_START;

use crate::resources::PciWindows;
use crate::root::{ECAM_SIZE, MAX_SLOTS, PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_SIZE};

/// First IOAPIC GSI used for PCI INTx.
pub const PCI_INTX_GSI_BASE: u32 = 16;
/// Number of GSIs INTx lines are spread over (16-23, the IOAPIC's top pins).
pub const PCI_INTX_GSI_COUNT: u32 = 8;

/// The GSI of `slot`'s interrupt pin `pin` (0 = INTA .. 3 = INTD):
/// `16 + (slot + pin) % 8`. Level-triggered, active low, as for any PCI GSI in `_PRT`.
pub fn intx_gsi(slot: u8, pin: u8) -> u32 {
    PCI_INTX_GSI_BASE + (u32::from(slot) + u32::from(pin)) % PCI_INTX_GSI_COUNT
}

/// `Scope(\_SB_) { Device(PCI0) {...} Device(PRES) {...} }` for `AcpiTables::add_dsdt_aml`.
pub struct PciHostAml {
    windows: PciWindows,
}

/// The DSDT AML of the host bridge decoding `windows`.
pub fn dsdt_aml(windows: &PciWindows) -> PciHostAml {
    PciHostAml { windows: *windows }
}

/// `(address, pin, source, GSI)` of every slot 1-31, pin INTA-INTD.
fn prt_entries() -> Vec<(u32, u8, u32)> {
    (1..MAX_SLOTS as u8)
        .flat_map(|slot| {
            (0..4).map(move |pin| (u32::from(slot) << 16 | 0xffff, pin, intx_gsi(slot, pin)))
        })
        .collect()
}

/// Already-serialized AML.
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

fn to_raw(aml: &dyn Aml) -> Raw {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    Raw(bytes)
}

impl PciHostAml {
    /// Bus 0, the mechanism #1 ports and the windows (the 64-bit one when not empty).
    fn crs(&self) -> Raw {
        let w = &self.windows;
        let bus = AddressSpace::new_bus_number(0u16, 0u16);
        let cfg_port = PCI_CONFIG_IO_PORT as u16;
        let cfg_io = aml::IO::new(cfg_port, cfg_port, 1, PCI_CONFIG_IO_SIZE as u8);
        let io = AddressSpace::new_io(w.io.start as u16, w.io.last() as u16, None);
        let mmio32 = AddressSpace::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            w.mmio32.start as u32,
            w.mmio32.last() as u32,
            None,
        );
        let mmio64 = AddressSpace::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            w.mmio64.start,
            w.mmio64.last(),
            None,
        );
        let mut resources: Vec<&dyn Aml> = vec![&bus, &cfg_io, &io, &mmio32];
        // Without 64-bit BARs there is no 64-bit window.
        if w.mmio64.size > 0 {
            resources.push(&mmio64);
        }
        let template = ResourceTemplate::new(resources);
        to_raw(&Name::new("_CRS".into(), &template))
    }

    /// `Package { Package { slot << 16 | 0xffff, pin, 0, GSI }, ... }`.
    fn prt(&self) -> Raw {
        let entries = prt_entries();
        let packages: Vec<Package> = entries
            .iter()
            .map(|(addr, pin, gsi)| Package::new(vec![addr, pin, &0u8, gsi]))
            .collect();
        let refs: Vec<&dyn Aml> = packages.iter().map(|p| p as &dyn Aml).collect();
        to_raw(&Name::new("_PRT".into(), &Package::new(refs)))
    }

    fn pci0(&self) -> Raw {
        let hid = Name::new("_HID".into(), &EISAName::new("PNP0A08"));
        let cid = Name::new("_CID".into(), &EISAName::new("PNP0A03"));
        let adr = Name::new("_ADR".into(), &0u8);
        let seg = Name::new("_SEG".into(), &0u8);
        let uid = Name::new("_UID".into(), &0u8);
        let bbn = Name::new("_BBN".into(), &0u8);
        let (crs, prt) = (self.crs(), self.prt());
        let body: Vec<&dyn Aml> = vec![&hid, &cid, &adr, &seg, &uid, &bbn, &crs, &prt];
        to_raw(&Device::new("PCI0".into(), body))
    }

    /// A motherboard resource reserving the decoded ECAM range, which Linux requires before
    /// it uses MMCONFIG.
    fn pres(&self) -> Raw {
        let hid = Name::new("_HID".into(), &EISAName::new("PNP0C02"));
        let uid = Name::new("_UID".into(), &1u8);
        let ecam = Memory32Fixed::new(true, PCI_ECAM_START as u32, ECAM_SIZE as u32);
        let crs = Name::new("_CRS".into(), &ResourceTemplate::new(vec![&ecam]));
        to_raw(&Device::new("PRES".into(), vec![&hid, &uid, &crs]))
    }
}

impl Aml for PciHostAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let (pci0, pres) = (self.pci0(), self.pres());
        Scope::new(Path::new("\\_SB_"), vec![&pci0, &pres]).to_aml_bytes(sink);
    }
}

/// The MCFG table: segment 0, buses 0-0, at `PCI_ECAM_START`; for `AcpiTables::add_table`.
pub fn mcfg(oem_id: [u8; 6], oem_revision: u32) -> MCFG {
    let mut table = MCFG::new(oem_id, *b"VMMMCFG ", oem_revision);
    table.add_ecam(PCI_ECAM_START, 0, 0, 0);
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(aml: &dyn Aml) -> Vec<u8> {
        let mut out = Vec::new();
        aml.to_aml_bytes(&mut out);
        out
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    /// Element count of the package that `Name(name, Package(...))` defines.
    fn package_len(aml: &[u8], name: &[u8]) -> u8 {
        let at = find(aml, name).unwrap() + name.len();
        assert_eq!(aml[at], 0x12, "PackageOp");
        let extra = usize::from(aml[at + 1] >> 6);
        aml[at + 2 + extra]
    }

    #[test]
    fn swizzle_spreads_over_gsi_16_to_23() {
        assert_eq!(intx_gsi(1, 0), 17);
        assert_eq!(intx_gsi(7, 1), 16);
        assert_eq!(intx_gsi(31, 3), 18);
        assert!((0..32).all(|s| (0..4).all(|p| (16..24).contains(&intx_gsi(s, p)))));
    }

    #[test]
    fn dsdt_aml_names_the_bridge() {
        let windows = PciWindows::new(1 << 30, 64 << 30);
        let aml = bytes(&dsdt_aml(&windows));
        for name in [
            &b"_SB_"[..],
            b"PCI0",
            b"_CID",
            b"_SEG",
            b"_BBN",
            b"_CRS",
            b"PRES",
        ] {
            assert!(
                find(&aml, name).is_some(),
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        let hid = bytes(&Name::new("_HID".into(), &EISAName::new("PNP0A08")));
        assert!(find(&aml, &hid).is_some());
        let pnp0c02 = bytes(&EISAName::new("PNP0C02"));
        assert!(find(&aml, &pnp0c02).is_some());
        assert_eq!(package_len(&aml, b"_PRT"), 31 * 4);
        let prt = prt_entries();
        assert_eq!(prt[0], (0x1_ffff, 0, 17));
        assert_eq!(prt[prt.len() - 1], (0x1f_ffff, 3, intx_gsi(31, 3)));
        // QWordMemory descriptor with the 64-bit window's start.
        let mut qword = vec![0x8a];
        qword.extend_from_slice(&43u16.to_le_bytes());
        let at = find(&aml, &qword).unwrap();
        let min = u64::from_le_bytes(aml[at + 14..at + 22].try_into().unwrap());
        assert_eq!(min, windows.mmio64.start);
        let max = u64::from_le_bytes(aml[at + 22..at + 30].try_into().unwrap());
        assert_eq!(max, windows.mmio64.last());
        let len = u64::from_le_bytes(aml[at + 38..at + 46].try_into().unwrap());
        assert_eq!(len, windows.mmio64.size);
        // A 128 GiB window above RAM shows as it is.
        let big = PciWindows::new(1 << 30, 256 << 30);
        let aml = bytes(&dsdt_aml(&big));
        let at = find(&aml, &qword).unwrap();
        let len = u64::from_le_bytes(aml[at + 38..at + 46].try_into().unwrap());
        assert_eq!(len, 256 << 30);
        // No 64-bit window: no QWordMemory at all.
        let none = bytes(&dsdt_aml(&PciWindows::new(1 << 30, 0)));
        assert!(find(&none, &qword).is_none());
        // Memory32Fixed of the ECAM range.
        let mut ecam = vec![0x86, 9, 0, 1];
        ecam.extend_from_slice(&(PCI_ECAM_START as u32).to_le_bytes());
        ecam.extend_from_slice(&(ECAM_SIZE as u32).to_le_bytes());
        assert!(find(&aml, &ecam).is_some());
    }

    #[test]
    fn mcfg_fields_and_checksum() {
        let table = bytes(&mcfg(*b"VMMRS ", 1));
        assert_eq!(&table[..4], b"MCFG");
        assert_eq!(table.len(), 60);
        assert_eq!(u32::from_le_bytes(table[4..8].try_into().unwrap()), 60);
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(&table[10..16], b"VMMRS ");
        assert_eq!(
            u64::from_le_bytes(table[44..52].try_into().unwrap()),
            PCI_ECAM_START
        );
        assert_eq!(&table[52..56], &[0, 0, 0, 0], "segment 0, buses 0-0");
    }
}
