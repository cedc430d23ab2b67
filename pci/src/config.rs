//! A fully emulated config space (256 bytes, or 4 KiB for PCIe) with per-bit write masks and
//! a [`BarSet`] for the BAR registers; used by the host bridge and tests.

use crate::bar::{Bar, BarRange, BarReprogram, BarSet};
use crate::{merge_bytes, Error, PciDevice};

/// Host bridge vendor ID (Intel, as Cloud Hypervisor's host bridge).
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x8086;
/// Host bridge device ID (Cloud Hypervisor's virtual host bridge).
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0d57;
/// Class code of a host bridge: bridge device (0x06), host bridge (0x00), prog-if 0.
const CLASS_HOST_BRIDGE: u32 = 0x06_0000;

const COMMAND_REG: usize = 1;
/// I/O space, memory space, bus master, parity error response, SERR#, INTx disable.
const COMMAND_WRITABLE: u32 = 0x0547;
/// Cache line size and latency timer.
const BIST_HEADER_LATENCY_CACHE_REG: usize = 3;
const CACHE_LATENCY_WRITABLE: u32 = 0xffff;
/// Interrupt line (written by firmware/OS, no effect on the device).
const INTERRUPT_REG: usize = 15;
const INTERRUPT_LINE_WRITABLE: u32 = 0xff;

/// Dwords in a conventional config space.
const CONFIG_DWORDS: usize = 64;
/// Dwords in a PCIe (extended) config space.
const PCIE_CONFIG_DWORDS: usize = 1024;

/// An emulated type 0 config space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciConfig {
    regs: Vec<u32>,
    writable: Vec<u32>,
    bars: BarSet,
}

impl PciConfig {
    /// A type 0 header with these IDs and 24-bit class code (class, subclass, prog-if);
    /// `pcie` selects a 4 KiB config space instead of 256 bytes.
    pub fn new(vendor_id: u16, device_id: u16, class_code: u32, pcie: bool) -> Self {
        let dwords = if pcie {
            PCIE_CONFIG_DWORDS
        } else {
            CONFIG_DWORDS
        };
        let mut regs = vec![0; dwords];
        let mut writable = vec![0; dwords];
        regs[0] = u32::from(device_id) << 16 | u32::from(vendor_id);
        regs[2] = (class_code & 0xff_ffff) << 8;
        writable[COMMAND_REG] = COMMAND_WRITABLE;
        writable[BIST_HEADER_LATENCY_CACHE_REG] = CACHE_LATENCY_WRITABLE;
        writable[INTERRUPT_REG] = INTERRUPT_LINE_WRITABLE;
        Self {
            regs,
            writable,
            bars: BarSet::default(),
        }
    }

    /// The host bridge in slot 0: no BARs, no interrupts.
    pub fn host_bridge() -> Self {
        Self::new(
            HOST_BRIDGE_VENDOR_ID,
            HOST_BRIDGE_DEVICE_ID,
            CLASS_HOST_BRIDGE,
            false,
        )
    }

    /// Adds a BAR.
    pub fn add_bar(&mut self, bar: Bar) -> Result<(), Error> {
        self.bars.add(bar)
    }

    /// The BARs (e.g. to assign addresses with [`crate::PciResources::assign_bars`]).
    pub fn bars_mut(&mut self) -> &mut BarSet {
        &mut self.bars
    }

    /// Sets a device-specific dword and which of its bits the guest may write. Ignored for
    /// BAR registers and out-of-range indices.
    pub fn set_register(&mut self, reg_idx: usize, value: u32, writable: u32) {
        if BarSet::is_bar_register(reg_idx) || reg_idx >= self.regs.len() {
            return;
        }
        self.regs[reg_idx] = value;
        self.writable[reg_idx] = writable;
    }

    /// The dword at `reg_idx`; all ones beyond the config space.
    pub fn read_register(&self, reg_idx: usize) -> u32 {
        if BarSet::is_bar_register(reg_idx) {
            return self.bars.read(reg_idx);
        }
        self.regs.get(reg_idx).copied().unwrap_or(u32::MAX)
    }

    /// A guest write of `data` at byte `offset` of `reg_idx`; only writable bits change.
    pub fn write_register(
        &mut self,
        reg_idx: usize,
        offset: usize,
        data: &[u8],
    ) -> Option<BarReprogram> {
        if BarSet::is_bar_register(reg_idx) {
            return self.bars.write(reg_idx, offset, data);
        }
        let old = *self.regs.get(reg_idx)?;
        let new = merge_bytes(old, offset, data)?;
        let mask = self.writable[reg_idx];
        self.regs[reg_idx] = old & !mask | new & mask;
        None
    }
}

impl PciDevice for PciConfig {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        self.read_register(reg_idx)
    }

    fn write_config_register(
        &mut self,
        reg_idx: usize,
        offset: usize,
        data: &[u8],
    ) -> Vec<BarReprogram> {
        self.write_register(reg_idx, offset, data)
            .into_iter()
            .collect()
    }

    fn bars(&self) -> Vec<BarRange> {
        self.bars.ranges()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_bridge_ids_and_class() {
        let hb = PciConfig::host_bridge();
        assert_eq!(hb.read_register(0), 0x0d57_8086);
        assert_eq!(hb.read_register(2) >> 8, 0x06_0000);
        assert_eq!(hb.read_register(3) >> 16 & 0x7f, 0, "type 0 header");
        assert_eq!(hb.read_register(4), 0, "no BARs");
        assert_eq!(hb.read_register(64), u32::MAX, "no extended space");
    }

    #[test]
    fn write_masks_apply() {
        let mut cfg = PciConfig::new(0x1234, 0x5678, 0x02_0000, true);
        cfg.write_register(0, 0, &[0; 4]);
        assert_eq!(cfg.read_register(0), 0x5678_1234, "IDs are read-only");
        cfg.write_register(1, 0, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(cfg.read_register(1), 0x0547);
        cfg.write_register(15, 0, &[0x0b, 0xff]);
        assert_eq!(cfg.read_register(15), 0x0b);
        cfg.set_register(0x40, 0xabcd, 0xff00);
        cfg.write_register(0x40, 0, &[0x11, 0x22]);
        assert_eq!(cfg.read_register(0x40), 0x22cd);
        assert_eq!(cfg.read_register(1023), 0);
        assert_eq!(cfg.write_register(1024, 0, &[1]), None);
    }
}
