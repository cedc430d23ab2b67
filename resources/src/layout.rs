//! The x86_64 guest physical memory map.
//!
//! ```text
//! 0x0000_0000  real-mode area: GDT, IDT, zero page, boot stack, page tables, cmdline
//! 0x0009_fc00  end of low RAM (EBDA and VGA hole above)
//! 0x000e_0000  ACPI tables (RSDP first), reserved in the e820 map
//! 0x0010_0000  kernel, then RAM up to min(RAM, 3 GiB)
//! 0xc000_0000  32-bit PCI MMIO window (512 MiB)
//! 0xe000_0000  PCI ECAM (256 buses x 1 MiB), reserved in the e820 map
//! 0xfec0_0000  IOAPIC
//! 0xfee0_0000  local APIC
//! 0x1_0000_0000  RAM beyond 3 GiB continues here, then the 64-bit PCI MMIO window
//! ```

/// GDT location.
pub const BOOT_GDT_START: u64 = 0x500;
/// IDT location (an empty IDT).
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` and its memory map.
pub const PVH_INFO_START: u64 = 0x6000;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, PDPT, then four page directories (4 GiB, 2 MiB pages).
pub const PML4_START: u64 = 0x9000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we accept (the kernel's own limit on x86 is 2048 by default).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// End of the RAM below the EBDA.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables live here; the RSDP is found by the kernel's scan of 0xe0000-0xfffff.
pub const ACPI_START: u64 = 0xe0000;
/// Size reserved for the ACPI tables.
pub const ACPI_SIZE: u64 = 0x20000;
/// The x86 reset vector (f000:fff0): Linux jumps there to reboot through the "BIOS", which
/// it picks on hardware-reduced ACPI platforms without EFI.
pub const RESET_VECTOR: u64 = 0xffff0;
/// Where the kernel and everything above it start.
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit hole (no RAM from here to 4 GiB).
pub const MEM_32BIT_GAP_START: u64 = 0xc000_0000;
/// 4 GiB: RAM beyond the hole resumes here.
pub const RAM_64BIT_START: u64 = 0x1_0000_0000;
/// The 32-bit PCI MMIO window handed out to BARs.
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
/// Size of the 32-bit PCI MMIO window.
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCI Express enhanced configuration access (ECAM) base.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// ECAM size for buses 0-255.
pub const PCI_ECAM_SIZE: u64 = 0x1000_0000;
/// The ACPI Generic Event Device's register (power button, PCI slot events).
pub const GED_START: u64 = 0xfeb0_0000;
/// The GED's interrupt (an ISA IRQ nothing else uses, edge-triggered).
pub const GED_GSI: u32 = 5;
/// The ACPI PCI hotplug controller's registers (slots up/down, eject).
pub const PCI_HOTPLUG_START: u64 = 0xfeb0_1000;
/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;

/// I/O port of COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// Ports of COM1's UART, from [`COM1_PORT`].
pub const COM1_PORT_COUNT: u16 = 8;
/// IRQ (IOAPIC pin / GSI) of COM1.
pub const COM1_IRQ: u32 = 4;
/// i8042 data and command ports.
pub const I8042_PORT: u16 = 0x60;
/// Ports vmm's i8042 takes from [`I8042_PORT`]: 0x60 data to 0x64 command (0x61, the PC
/// speaker, is in between; KVM's in-kernel PIT handles it).
pub const I8042_PORT_COUNT: u16 = 5;
/// The ACPI sleep-control/reset register (hardware-reduced ACPI), one byte.
pub const ACPI_PM_PORT: u16 = 0x600;
/// The ACPI sleep-status register, one byte.
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
/// Ports of the ACPI power management device, from [`ACPI_PM_PORT`].
pub const ACPI_PM_PORT_COUNT: u16 = 2;
/// KVM's in-kernel PIC (8259) pair, master and slave command/data ports: guest accesses
/// there never reach vmm.
pub const KVM_PIC_PORTS: [u16; 2] = [0x20, 0xa0];
/// Ports of each in-kernel PIC.
pub const KVM_PIC_PORT_COUNT: u16 = 2;
/// KVM's in-kernel PIT (8254): channels 0-2 and the mode register.
pub const KVM_PIT_PORT: u16 = 0x40;
/// Ports of the in-kernel PIT.
pub const KVM_PIT_PORT_COUNT: u16 = 4;
/// KVM's in-kernel ELCR (edge/level control of the PICs' IRQs), two ports.
pub const KVM_ELCR_PORT: u16 = 0x4d0;
/// Ports of the in-kernel ELCR.
pub const KVM_ELCR_PORT_COUNT: u16 = 2;
/// Value the guest writes to [`ACPI_PM_PORT`] (the FADT reset register) to reset.
pub const ACPI_RESET_VALUE: u8 = 1;
/// SLP_TYP of the S5 (soft-off) state as declared by the DSDT's `_S5_` object.
pub const ACPI_S5_SLP_TYP: u8 = 5;
/// Default port of the debug-exit device (QEMU's isa-debug-exit default).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// A guest RAM range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRange {
    /// Guest physical start.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Splits `size` bytes of guest RAM around the 32-bit hole: up to 3 GiB below it and the
/// rest from 4 GiB up.
pub fn ram_ranges(size: u64) -> Vec<RamRange> {
    let low = size.min(MEM_32BIT_GAP_START);
    let mut ranges = vec![RamRange { start: 0, len: low }];
    if size > low {
        ranges.push(RamRange {
            start: RAM_64BIT_START,
            len: size - low,
        });
    }
    ranges
}

// The fixed regions must not overlap; checked when the crate compiles.
const _: () = {
    assert!(PCI_MMIO32_START + PCI_MMIO32_SIZE <= PCI_ECAM_START);
    assert!(PCI_ECAM_START + PCI_ECAM_SIZE <= GED_START);
    assert!(GED_START + 0x1000 <= PCI_HOTPLUG_START);
    assert!(PCI_HOTPLUG_START + 0x1000 <= IOAPIC_START);
    assert!(ACPI_START + ACPI_SIZE <= HIMEM_START);
    assert!(PML4_START + 6 * 0x1000 <= CMDLINE_START);
    assert!(PVH_INFO_START + 0x1000 <= ZERO_PAGE_START);
};

/// First guest physical address above RAM (where the 64-bit PCI window can start).
pub fn ram_end(size: u64) -> u64 {
    ram_ranges(size)
        .last()
        .map(|r| r.start + r.len)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_is_one_range() {
        assert_eq!(
            ram_ranges(512 << 20),
            vec![RamRange {
                start: 0,
                len: 512 << 20
            }]
        );
        assert_eq!(ram_end(512 << 20), 512 << 20);
    }

    #[test]
    fn large_ram_jumps_the_hole() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            RamRange {
                start: 0,
                len: 3 << 30
            }
        );
        assert_eq!(
            r[1],
            RamRange {
                start: 4 << 30,
                len: 1 << 30
            }
        );
        assert_eq!(ram_end(4 << 30), 5 << 30);
    }

    #[test]
    fn exactly_three_gib_stays_low() {
        assert_eq!(ram_ranges(3 << 30).len(), 1);
    }
}
