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
/// Alignment of the 64-bit MMIO window's start and end.
pub const MMIO64_ALIGN: u64 = 1 << 30;

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
    /// `mmio64_size` bytes starts at [`mmio64_start`]. It must stay below the guest's physical
    /// address width (e.g. 512 GiB for 39 bits); [`plan_mmio64`] sizes it.
    pub fn new(mem_size: u64, mmio64_size: u64) -> Self {
        Self::with_mmio64(PciWindow {
            start: mmio64_start(mem_size),
            size: mmio64_size,
        })
    }

    /// The fixed I/O and 32-bit windows and this 64-bit one (empty when no 64-bit BAR needs
    /// it).
    pub fn with_mmio64(mmio64: PciWindow) -> Self {
        Self {
            io: PciWindow {
                start: PCI_IO_START,
                size: PCI_IO_SIZE,
            },
            mmio32: PciWindow {
                start: PCI_MMIO32_START,
                size: PCI_MMIO32_SIZE,
            },
            mmio64,
        }
    }
}

/// Where the 64-bit window of a guest with `mem_size` bytes of RAM starts: above both RAM and
/// 4 GiB, aligned to [`MMIO64_ALIGN`].
pub fn mmio64_start(mem_size: u64) -> u64 {
    ram_end(mem_size)
        .max(RAM_64BIT_START)
        .next_multiple_of(MMIO64_ALIGN)
}

/// The 64-bit window and where each 64-bit BAR goes in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mmio64Plan {
    /// The window: from [`mmio64_start`] to the end of the highest BAR, rounded up to
    /// [`MMIO64_ALIGN`]; empty without 64-bit BARs.
    pub window: PciWindow,
    /// The address of each BAR, in the order of the sizes given.
    pub addrs: Vec<u64>,
}

/// A 64-bit BAR that does not fit below the guest's address limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mmio64Overflow {
    /// Which of the sizes given.
    pub index: usize,
    /// Where the window starts (above RAM and 4 GiB).
    pub start: u64,
    /// The first address the guest cannot reach (`1 << phys_bits`).
    pub limit: u64,
}

/// Places 64-bit BARs of `sizes` (powers of two) for a guest with `mem_size` bytes of RAM
/// whose physical addresses end at `limit`: each naturally aligned, largest first, at the
/// lowest free address from [`mmio64_start`] on (so smaller BARs fill the gaps that the
/// alignment of larger ones leaves). Several 128 GiB BARs fit as long as the address width
/// has room; the first one that does not (largest first) is the error.
pub fn plan_mmio64(mem_size: u64, sizes: &[u64], limit: u64) -> Result<Mmio64Plan, Mmio64Overflow> {
    let start = mmio64_start(mem_size);
    let overflow = |index| Mmio64Overflow {
        index,
        start,
        limit,
    };
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
    if limit <= start {
        return match order.first() {
            Some(&i) => Err(overflow(i)),
            None => Ok(Mmio64Plan {
                window: PciWindow { start, size: 0 },
                addrs: Vec::new(),
            }),
        };
    }
    let mut pool = AddressAllocator::new(start, limit - start).map_err(|_| overflow(0))?;
    let mut addrs = vec![0; sizes.len()];
    let mut end = start;
    for i in order {
        let size = sizes[i].max(1);
        let range = pool
            .allocate(size, size.next_power_of_two(), AllocPolicy::FirstMatch)
            .map_err(|_| overflow(i))?;
        addrs[i] = range.start();
        end = end.max(range.end() + 1);
    }
    let end = end.next_multiple_of(MMIO64_ALIGN).min(limit);
    Ok(Mmio64Plan {
        window: PciWindow {
            start,
            size: end - start,
        },
        addrs,
    })
}

/// Allocators for the three windows (none for an empty 64-bit window).
pub struct PciResources {
    windows: PciWindows,
    io: AddressAllocator,
    mmio32: AddressAllocator,
    mmio64: Option<AddressAllocator>,
}

fn allocator(name: &'static str, w: PciWindow) -> Result<AddressAllocator, Error> {
    AddressAllocator::new(w.start, w.size).map_err(|e| Error::Window(name, e))
}

impl PciResources {
    /// Allocators over `windows`; the I/O and 32-bit windows must be non-empty.
    pub fn new(windows: PciWindows) -> Result<Self, Error> {
        let mmio64 = match windows.mmio64.size {
            0 => None,
            _ => Some(allocator("64-bit MMIO", windows.mmio64)?),
        };
        Ok(Self {
            io: allocator("I/O", windows.io)?,
            mmio32: allocator("32-bit MMIO", windows.mmio32)?,
            mmio64,
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
        let Some(pool) = self.pool(kind) else {
            let source = vm_allocator::Error::ResourceNotAvailable;
            return Err(Error::Allocate { kind, size, source });
        };
        pool.allocate(size, size, AllocPolicy::FirstMatch)
            .map(|range| range.start())
            .map_err(|source| Error::Allocate { kind, size, source })
    }

    /// Marks `[addr, addr + size)` of the window of `kind` as used (a BAR placed elsewhere,
    /// e.g. by [`plan_mmio64`]).
    pub fn reserve(&mut self, kind: BarKind, addr: u64, size: u64) -> Result<(), Error> {
        let pool = self.pool(kind).ok_or(Error::Allocate {
            kind,
            size,
            source: vm_allocator::Error::ResourceNotAvailable,
        })?;
        pool.allocate(size.max(1), 1, AllocPolicy::ExactMatch(addr))
            .map(|_| ())
            .map_err(|source| Error::Allocate { kind, size, source })
    }

    /// Gives back the range a BAR of `kind` had at `addr` (a device that left the bus).
    pub fn free(&mut self, kind: BarKind, addr: u64, size: u64) {
        if let (Some(pool), Ok(range)) = (
            self.pool(kind),
            vm_allocator::RangeInclusive::new(addr, addr + size.max(1) - 1),
        ) {
            let _ = pool.free(&range);
        }
    }

    fn pool(&mut self, kind: BarKind) -> Option<&mut AddressAllocator> {
        match kind {
            BarKind::Io => Some(&mut self.io),
            BarKind::Mem64 { .. } => self.mmio64.as_mut(),
            BarKind::Mem32 { .. } | BarKind::Rom => Some(&mut self.mmio32),
        }
    }

    /// Allocates and sets the address of every BAR in `bars` still at 0, largest first.
    pub fn assign_bars(&mut self, bars: &mut BarSet) -> Result<(), Error> {
        let mut all: Vec<_> = bars.iter_mut().filter(|b| b.addr() == 0).collect();
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

    #[test]
    fn reserved_ranges_are_skipped_and_freed_ranges_reused() {
        let windows = PciWindows::with_mmio64(PciWindow {
            start: 4 << 30,
            size: 64 << 30,
        });
        let mut res = PciResources::new(windows).unwrap();
        res.reserve(MEM64, 8 << 30, 8 << 30).unwrap();
        assert!(res.reserve(MEM64, 8 << 30, 8 << 30).is_err(), "taken");
        let a = res.allocate(MEM64, 8 << 30).unwrap();
        assert_eq!(a, 16 << 30, "past the reserved BAR");
        res.free(MEM64, 8 << 30, 8 << 30);
        assert_eq!(res.allocate(MEM64, 8 << 30).unwrap(), 8 << 30, "reused");
        let b = res.allocate(MEM32, 0x1000).unwrap();
        res.free(MEM32, b, 0x1000);
        assert_eq!(res.allocate(MEM32, 0x1000).unwrap(), b);
    }

    const MEM32: BarKind = BarKind::Mem32 {
        prefetchable: false,
    };
    const MEM64: BarKind = BarKind::Mem64 { prefetchable: true };

    const GIB: u64 = 1 << 30;

    #[test]
    fn windows_follow_ram() {
        let w = PciWindows::new(512 << 20, 64 << 30);
        assert_eq!(w.mmio64.start, 4 << 30);
        assert_eq!(w.mmio64.last(), (68 << 30) - 1);
        assert_eq!(PciWindows::new(6 << 30, 1 << 30).mmio64.start, 7 << 30);
        assert_eq!(mmio64_start((6 << 30) + 1), 8 << 30);
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
        let mut no64 = PciResources::new(PciWindows::new(1 << 30, 0)).unwrap();
        assert!(matches!(
            no64.allocate(MEM64, 0x1000),
            Err(Error::Allocate { .. })
        ));
        let mut bad = PciWindows::new(1 << 30, 0);
        bad.mmio32.size = 0;
        assert!(matches!(PciResources::new(bad), Err(Error::Window(..))));
    }

    #[test]
    fn mmio64_plan_fits_several_128g_bars() {
        let limit = 1 << 40;
        let sizes = [128 * GIB, 16 << 10, 128 * GIB, 8 * GIB];
        let plan = plan_mmio64(512 << 20, &sizes, limit).unwrap();
        // Largest first, naturally aligned; the small ones fill the gap below 128 GiB.
        assert_eq!(plan.addrs, vec![128 * GIB, 4 * GIB, 256 * GIB, 8 * GIB]);
        assert_eq!(plan.window.start, 4 * GIB);
        assert_eq!(plan.window.start + plan.window.size, 384 * GIB);
        for (&addr, &size) in plan.addrs.iter().zip(&sizes) {
            assert_eq!(addr % size, 0, "{addr:#x} is aligned to {size:#x}");
            assert!(addr >= plan.window.start);
            assert!(addr + size <= plan.window.start + plan.window.size);
        }
    }

    #[test]
    fn mmio64_plan_follows_ram_and_rounds_the_end() {
        let plan = plan_mmio64(6 * GIB, &[16 << 10, 1 << 20], 1 << 39).unwrap();
        assert_eq!(
            plan.window,
            PciWindow {
                start: 7 * GIB,
                size: GIB
            }
        );
        assert_eq!(plan.addrs, vec![(7 * GIB) + (1 << 20), 7 * GIB]);
        let none = plan_mmio64(6 * GIB, &[], 1 << 39).unwrap();
        assert_eq!(none.window.size, 0);
        assert!(none.addrs.is_empty());
    }

    #[test]
    fn mmio64_plan_refuses_past_the_address_width() {
        // 37 bits: 128 GiB of guest physical addresses; a 128 GiB BAR needs 128-256 GiB.
        let e = plan_mmio64(512 << 20, &[8 * GIB, 128 * GIB], 1 << 37).unwrap_err();
        assert_eq!(
            e,
            Mmio64Overflow {
                index: 1,
                start: 4 * GIB,
                limit: 1 << 37
            }
        );
        // Exactly at the limit fits: 64 GiB at 64-128 GiB.
        let plan = plan_mmio64(512 << 20, &[64 * GIB], 1 << 37).unwrap();
        assert_eq!(plan.addrs, vec![64 * GIB]);
        assert_eq!(plan.window.start + plan.window.size, 1 << 37);
        // Two halves of the address space do not: the first half holds RAM.
        let e = plan_mmio64(512 << 20, &[64 * GIB, 64 * GIB], 1 << 37).unwrap_err();
        assert_eq!(e.index, 1);
        // RAM above the limit leaves no window at all.
        let e = plan_mmio64(6 * GIB, &[4096], 1 << 32).unwrap_err();
        assert_eq!((e.index, e.start), (0, 7 * GIB));
    }

    #[test]
    fn placed_bars_are_kept() {
        let plan = plan_mmio64(GIB, &[16 << 10], 1 << 39).unwrap();
        let mut res = PciResources::new(PciWindows::with_mmio64(plan.window)).unwrap();
        let mut bars = BarSet::default();
        let mut placed = Bar::new(0, MEM64, 0x4000).unwrap();
        placed.set_addr(plan.addrs[0]);
        bars.add(placed).unwrap();
        bars.add(Bar::new(2, MEM32, 0x1000).unwrap()).unwrap();
        res.assign_bars(&mut bars).unwrap();
        assert_eq!(bars.get(0).unwrap().addr(), 4 * GIB, "already placed");
        assert_eq!(bars.get(2).unwrap().addr(), 0xc000_0000);
    }
}
