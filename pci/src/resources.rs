//! The address windows BARs live in and a naturally aligned allocator for each (vm-allocator).
//!
//! The allocator only places BARs before boot; later guest moves are not reflected in it.

use resources::layout::{ram_end, PCI_MMIO32_SIZE, PCI_MMIO32_START, RAM_64BIT_START};
use vm_allocator::{AddressAllocator, AllocPolicy};

use crate::bar::{BarKind, BarSet};
use crate::Error;

/// First I/O port handed to BARs (legacy ISA ports and 0xcf8 stay below).
pub const PCI_IO_START: u64 = 0x1000;
/// Ports in the I/O window: 0x1000-0xffff.
pub const PCI_IO_SIZE: u64 = 0x1_0000 - PCI_IO_START;
/// Alignment of the 64-bit MMIO window's start.
pub const MMIO64_ALIGN: u64 = 4 << 30;

/// One address window `[start, start + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciWindow {
    /// First address.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
}

impl PciWindow {
    /// Last address (inclusive), as ACPI wants it.
    pub fn last(&self) -> u64 {
        self.start + self.size.max(1) - 1
    }
}

/// The host bridge's I/O, 32-bit and 64-bit MMIO windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciWindows {
    /// I/O ports.
    pub io: PciWindow,
    /// MMIO below 4 GiB.
    pub mmio32: PciWindow,
    /// MMIO above RAM and 4 GiB.
    pub mmio64: PciWindow,
}

impl PciWindows {
    /// The windows for a guest with `mem_size` bytes of RAM: the 64-bit window of
    /// `mmio64_size` bytes starts above both RAM and 4 GiB, aligned to [`MMIO64_ALIGN`]. It
    /// must stay below the guest's physical address width (e.g. 512 GiB for 39 bits).
    pub fn new(mem_size: u64, mmio64_size: u64) -> Self {
        let above = ram_end(mem_size).max(RAM_64BIT_START);
        Self {
            io: PciWindow {
                start: PCI_IO_START,
                size: PCI_IO_SIZE,
            },
            mmio32: PciWindow {
                start: PCI_MMIO32_START,
                size: PCI_MMIO32_SIZE,
            },
            mmio64: PciWindow {
                start: above.next_multiple_of(MMIO64_ALIGN),
                size: mmio64_size,
            },
        }
    }
}

/// Allocators for the three windows.
pub struct PciResources {
    windows: PciWindows,
    io: AddressAllocator,
    mmio32: AddressAllocator,
    mmio64: AddressAllocator,
}

fn allocator(name: &'static str, w: PciWindow) -> Result<AddressAllocator, Error> {
    AddressAllocator::new(w.start, w.size).map_err(|e| Error::Window(name, e))
}

impl PciResources {
    /// Allocators over `windows`; every window must be non-empty.
    pub fn new(windows: PciWindows) -> Result<Self, Error> {
        Ok(Self {
            io: allocator("I/O", windows.io)?,
            mmio32: allocator("32-bit MMIO", windows.mmio32)?,
            mmio64: allocator("64-bit MMIO", windows.mmio64)?,
            windows,
        })
    }

    /// The windows, for the ACPI description.
    pub fn windows(&self) -> &PciWindows {
        &self.windows
    }

    /// A naturally aligned range for a BAR: I/O BARs from the I/O window, 64-bit BARs from
    /// the 64-bit window, 32-bit and ROM BARs from the 32-bit window.
    pub fn allocate(&mut self, kind: BarKind, size: u64) -> Result<u64, Error> {
        let pool = match kind {
            BarKind::Io => &mut self.io,
            BarKind::Mem64 { .. } => &mut self.mmio64,
            BarKind::Mem32 { .. } | BarKind::Rom => &mut self.mmio32,
        };
        pool.allocate(size, size, AllocPolicy::FirstMatch)
            .map(|range| range.start())
            .map_err(|source| Error::Allocate { kind, size, source })
    }

    /// Allocates and sets the address of every BAR in `bars`, largest first.
    pub fn assign_bars(&mut self, bars: &mut BarSet) -> Result<(), Error> {
        let mut all: Vec<_> = bars.iter_mut().collect();
        all.sort_by_key(|bar| std::cmp::Reverse(bar.size()));
        for bar in all {
            let addr = self.allocate(bar.kind(), bar.size())?;
            bar.set_addr(addr);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bar::Bar;

    const MEM32: BarKind = BarKind::Mem32 {
        prefetchable: false,
    };
    const MEM64: BarKind = BarKind::Mem64 { prefetchable: true };

    #[test]
    fn windows_follow_ram() {
        let w = PciWindows::new(512 << 20, 64 << 30);
        assert_eq!(w.mmio64.start, 4 << 30);
        assert_eq!(w.mmio64.last(), (68 << 30) - 1);
        assert_eq!(PciWindows::new(6 << 30, 1 << 30).mmio64.start, 8 << 30);
        assert_eq!(w.mmio32.start, 0xc000_0000);
        assert_eq!(w.io.last(), 0xffff);
    }

    #[test]
    fn allocations_are_naturally_aligned() {
        let mut res = PciResources::new(PciWindows::new(1 << 30, 64 << 30)).unwrap();
        assert_eq!(res.allocate(MEM32, 0x1000), Ok(0xc000_0000));
        assert_eq!(res.allocate(MEM32, 0x10_0000), Ok(0xc010_0000));
        assert_eq!(res.allocate(BarKind::Io, 0x100), Ok(0x1000));
        assert_eq!(res.allocate(BarKind::Io, 0x20), Ok(0x1100));
        assert_eq!(res.allocate(MEM64, 0x4000), Ok(4 << 30));
        assert_eq!(res.allocate(MEM64, 16 << 30), Ok(16 << 30));
    }

    #[test]
    fn windows_run_out() {
        let mut res = PciResources::new(PciWindows::new(1 << 30, 1 << 30)).unwrap();
        assert_eq!(res.allocate(MEM32, 0x1000_0000), Ok(0xc000_0000));
        assert_eq!(res.allocate(MEM32, 0x1000_0000), Ok(0xd000_0000));
        assert!(matches!(
            res.allocate(MEM32, 0x1000),
            Err(Error::Allocate { .. })
        ));
        assert!(matches!(
            res.allocate(MEM64, 2 << 30),
            Err(Error::Allocate { .. })
        ));
        let empty = PciWindows::new(1 << 30, 0);
        assert!(matches!(PciResources::new(empty), Err(Error::Window(..))));
    }

    #[test]
    fn assign_bars_largest_first() {
        let mut res = PciResources::new(PciWindows::new(1 << 30, 1 << 30)).unwrap();
        let mut bars = BarSet::default();
        bars.add(Bar::new(0, MEM32, 0x1000).unwrap()).unwrap();
        bars.add(Bar::new(1, MEM32, 0x10_0000).unwrap()).unwrap();
        bars.add(Bar::new(2, MEM64, 0x1000).unwrap()).unwrap();
        res.assign_bars(&mut bars).unwrap();
        assert_eq!(bars.get(1).unwrap().addr(), 0xc000_0000);
        assert_eq!(bars.get(0).unwrap().addr(), 0xc010_0000);
        assert_eq!(bars.get(2).unwrap().addr(), 4 << 30);
    }
}
