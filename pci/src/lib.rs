//! The guest's PCI bus: one segment, bus 0, a host bridge in slot 0 and up to 31 devices.
//!
//! This crate owns config space access (mechanism #1 at ports 0xcf8-0xcff and ECAM for bus 0),
//! BAR emulation (sizing probes, the guest-programmed address shadow, BAR moves), the BAR
//! address windows and their allocator, and the ACPI description of the host bridge (DSDT AML
//! and MCFG). It must not touch KVM or VFIO: a passed-through device implements [`PciDevice`]
//! in the `vfio` crate and the `vmm` crate wires memory slots, interrupts and buses.
//!
//! # The device seam
//!
//! A device answers config accesses by dword register ([`PciDevice::read_config_register`],
//! [`PciDevice::write_config_register`]). A config write that moves BARs returns one
//! [`BarReprogram`] per BAR (several when a command-register write turns decoding on or off);
//! [`PciRoot`] queues them with the device's slot and the VMM drains the queue
//! with [`PciRoot::take_bar_moves`] after the guest's config write returns, then moves the
//! BAR's bus entries and, for VFIO, its KVM memory slots. Queueing
//! (instead of a callback) keeps the bus rule "no device calls back into a bus while holding
//! its own lock".
//!
//! Trapped BAR accesses go through [`PciDevice::bar_read`] / [`PciDevice::bar_write`] with the
//! BAR index and the offset in the BAR, not through a `BusDevice` impl on the device itself:
//! one device has several BARs but a `BusDevice` only learns the offset in one range, so the
//! VMM puts a small adapter per trapped part of a BAR on the MMIO or PIO bus; it holds no
//! address, so a BAR move is "remove the old range, insert the same adapter at the new base".

mod acpi;
mod bar;
mod config;
pub mod hotplug;
mod resources;
mod root;

pub use acpi::{dsdt_aml, intx_gsi, mcfg, PciHostAml, PCI_INTX_GSI_BASE, PCI_INTX_GSI_COUNT};
pub use bar::{Bar, BarKind, BarRange, BarReprogram, BarSet, NUM_BARS, ROM_BAR};
pub use config::{PciConfig, HOST_BRIDGE_DEVICE_ID, HOST_BRIDGE_VENDOR_ID};
pub use resources::{
    mmio64_start, plan_mmio64, Mmio64Overflow, Mmio64Plan, PciResources, PciWindow, PciWindows,
    MMIO64_ALIGN, PCI_IO_SIZE, PCI_IO_START,
};
pub use root::{
    ConfigAddress, PciConfigIo, PciConfigMmio, PciRoot, ECAM_SIZE, MAX_SLOTS, PCI_CONFIG_IO_PORT,
    PCI_CONFIG_IO_SIZE,
};

/// A device on the PCI bus (emulated, or passed through by the `vfio` crate).
///
/// Callers pass `reg_idx` (dword index, `offset = reg_idx * 4`) below 1024 and `offset +
/// data.len() <= 4` with non-empty `data`; implementations must still never panic on other
/// values (read all ones, ignore writes).
pub trait PciDevice: Send {
    /// The config space dword at `reg_idx`.
    fn read_config_register(&mut self, reg_idx: usize) -> u32;
    /// Writes `data` at byte `offset` within dword `reg_idx`; returns the BAR moves it causes,
    /// in the order the VMM must apply them.
    fn write_config_register(
        &mut self,
        reg_idx: usize,
        offset: usize,
        data: &[u8],
    ) -> Vec<BarReprogram>;
    /// The device's BARs as currently decoded, for the VMM's initial bus/memslot mapping. A
    /// range with base 0 is not decoded (not on the bus).
    fn bars(&self) -> Vec<BarRange> {
        Vec::new()
    }
    /// Trapped guest read at `offset` in BAR `bar` (0-5, or [`ROM_BAR`]).
    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        let _ = (bar, offset);
        data.fill(0xff);
    }
    /// Trapped guest write at `offset` in BAR `bar`.
    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        let _ = (bar, offset, data);
    }
}

/// Errors building the PCI bus and its resources.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// A BAR size the BAR type cannot have (not a power of two, too small or too large).
    BarSize {
        /// BAR index.
        index: u8,
        /// BAR type.
        kind: BarKind,
        /// Rejected size.
        size: u64,
    },
    /// A BAR index out of range, or whose registers another BAR already uses.
    BarIndex(u8),
    /// All device slots are taken.
    NoFreeSlot,
    /// An address window the allocator cannot manage (empty or wrapping).
    Window(&'static str, vm_allocator::Error),
    /// No room for a BAR in its window.
    Allocate {
        /// BAR type.
        kind: BarKind,
        /// BAR size.
        size: u64,
        /// The allocator's complaint.
        source: vm_allocator::Error,
    },
}

impl diag::Explain for Error {
    fn advice(&self) -> diag::Advice {
        use diag::Advice;
        const CANNOT: &str = "this device cannot be passed through: its BARs break the PCI rules";
        match self {
            Error::BarSize { index, kind, size } => Advice::new(
                format!("BAR {index}: size {size:#x} is not valid for a {kind:?} BAR"),
                CANNOT,
            ),
            Error::BarIndex(index) => Advice::new(
                format!("BAR {index}: index out of range or registers already used"),
                CANNOT,
            ),
            Error::NoFreeSlot => Advice::new(
                format!("no free PCI slot: at most {} devices", MAX_SLOTS - 1),
                "pass through fewer devices",
            ),
            Error::Window(name, e) => Advice::bug(format!("PCI {name} window: {e}")),
            Error::Allocate { kind, size, source } => Advice::new(
                format!("no room for a {size:#x}-byte {kind:?} BAR: {source}"),
                "pass through fewer devices or devices with smaller BARs",
            ),
        }
    }
}
diag::explained!(Error);

/// `dword` with `data` written at byte `offset`; `None` if the access leaves the dword or is
/// empty.
pub fn merge_bytes(dword: u32, offset: usize, data: &[u8]) -> Option<u32> {
    let mut bytes = dword.to_le_bytes();
    let end = offset.checked_add(data.len()).filter(|&e| e <= 4)?;
    if data.is_empty() {
        return None;
    }
    bytes[offset..end].copy_from_slice(data);
    Some(u32::from_le_bytes(bytes))
}

/// Fills `data` from byte `offset` of `dword`, or with all ones if the access leaves it.
pub fn extract_bytes(dword: Option<u32>, offset: usize, data: &mut [u8]) {
    let end = offset.checked_add(data.len()).filter(|&e| e <= 4);
    match (dword, end) {
        (Some(dword), Some(end)) => data.copy_from_slice(&dword.to_le_bytes()[offset..end]),
        _ => data.fill(0xff),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_helpers_stay_inside_the_dword() {
        assert_eq!(
            merge_bytes(0x1122_3344, 1, &[0xaa, 0xbb]),
            Some(0x11bb_aa44)
        );
        assert_eq!(merge_bytes(0, 3, &[1, 2]), None);
        assert_eq!(merge_bytes(0, usize::MAX, &[1]), None);
        assert_eq!(merge_bytes(0, 0, &[]), None);
        let mut data = [0u8; 2];
        extract_bytes(Some(0x1122_3344), 2, &mut data);
        assert_eq!(data, [0x22, 0x11]);
        extract_bytes(Some(0), 3, &mut data);
        assert_eq!(data, [0xff, 0xff]);
        extract_bytes(None, 0, &mut data);
        assert_eq!(data, [0xff, 0xff]);
    }
}
