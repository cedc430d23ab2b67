//! The device's BARs as the guest sees them: a [`pci::BarSet`] built from the real BAR
//! registers (type bits) and the VFIO region sizes, the command register's decode enables
//! layered on top (a BAR that does not decode is reported at base 0), and the plan that splits
//! each BAR into pages mmapped from the device and ranges trapped to the device model.
//!
//! This module never writes the device's BAR registers and never mmaps: the plan is data for
//! the VMM, which installs KVM memory slots for [`SegmentKind::Mmap`] segments and bus entries
//! for [`SegmentKind::Trap`] segments.

use std::ops::Range;

use pci::{Bar, BarKind, BarRange, BarReprogram, BarSet, NUM_BARS, ROM_BAR};

use crate::backend::{RegionInfo, VfioBackend, ROM_REGION};
use crate::caps::read_config_dword;

/// Granule of mmap and of KVM memory slots.
pub const PAGE_SIZE: u64 = 0x1000;
/// Config offset of BAR 0.
const BAR0_OFFSET: u64 = 0x10;
/// Command register: I/O space enable.
pub const COMMAND_IO: u16 = 1 << 0;
/// Command register: memory space enable.
pub const COMMAND_MEMORY: u16 = 1 << 1;

/// The BAR type encoded in the low bits of a BAR register.
fn bar_kind(reg: u32) -> BarKind {
    if reg & 1 != 0 {
        return BarKind::Io;
    }
    let prefetchable = reg & 0x8 != 0;
    match reg >> 1 & 0x3 {
        2 => BarKind::Mem64 { prefetchable },
        _ => BarKind::Mem32 { prefetchable },
    }
}

/// A VFIO region size as a BAR size: a power of two no smaller than the type's minimum. The
/// ROM is at least a page: the VMM serves it as memory.
fn bar_size(index: u8, kind: BarKind, region: u64) -> u64 {
    let min = match kind {
        BarKind::Io => 4,
        BarKind::Rom => PAGE_SIZE,
        _ => 16,
    };
    let size = region
        .checked_next_power_of_two()
        .unwrap_or(region)
        .max(min);
    if size != region && kind != BarKind::Rom {
        log::warn!("BAR {index}: region of {region:#x} bytes rounded up to {size:#x}");
    }
    size
}

/// The ROM BAR size for an image of `len` bytes.
pub fn rom_bar_size(len: u64) -> u64 {
    bar_size(ROM_BAR, BarKind::Rom, len)
}

/// The size of VFIO region `index`, if it exists.
fn region_size<B: VfioBackend>(backend: &B, index: u32) -> Option<u64> {
    backend
        .region(index)
        .map(|info| info.size)
        .filter(|&size| size > 0)
}

/// The device's BARs and expansion ROM, all at address 0.
pub fn probe_bars<B: VfioBackend>(backend: &B) -> Result<BarSet, pci::Error> {
    let mut set = BarSet::default();
    let mut index = 0;
    while index < NUM_BARS {
        let kind = bar_kind(read_config_dword(backend, BAR0_OFFSET + 4 * index as u64));
        if let Some(region) = region_size(backend, index as u32) {
            let size = bar_size(index as u8, kind, region);
            set.add(Bar::new(index as u8, kind, size)?)?;
        }
        index += if matches!(kind, BarKind::Mem64 { .. }) {
            2
        } else {
            1
        };
    }
    if let Some(region) = region_size(backend, ROM_REGION) {
        let size = bar_size(ROM_BAR, BarKind::Rom, region);
        set.add(Bar::new(ROM_BAR, BarKind::Rom, size)?)?;
    }
    Ok(set)
}

/// The command register's decode enables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decode {
    /// I/O space enable.
    pub io: bool,
    /// Memory space enable.
    pub memory: bool,
}

impl Decode {
    /// The enables in a command register value.
    pub fn from_command(command: u16) -> Self {
        Self {
            io: command & COMMAND_IO != 0,
            memory: command & COMMAND_MEMORY != 0,
        }
    }

    /// True if `bar` decodes: its space is enabled (and, for the ROM, its enable bit set).
    pub fn decodes(&self, bar: &Bar) -> bool {
        match bar.kind() {
            BarKind::Io => self.io,
            BarKind::Rom => self.memory && bar.rom_enabled(),
            _ => self.memory,
        }
    }

    /// Where each BAR of `set` decodes; base 0 for those that do not.
    pub fn ranges(&self, set: &BarSet) -> Vec<BarRange> {
        let range = |bar: &Bar| BarRange {
            base: if self.decodes(bar) { bar.addr() } else { 0 },
            ..bar.range()
        };
        set.iter().map(range).collect()
    }
}

/// The moves that take BARs from `before` to `after` (both from [`Decode::ranges`] of the same
/// set), in BAR order.
pub fn moves(before: &[BarRange], after: &[BarRange]) -> Vec<BarReprogram> {
    let moved = |(old, new): (&BarRange, &BarRange)| {
        (old.base != new.base).then_some(BarReprogram {
            bar: new.bar,
            old_base: old.base,
            new_base: new.base,
            len: new.len,
            is_io: new.is_io,
        })
    };
    before.iter().zip(after).filter_map(moved).collect()
}

/// How the VMM serves one part of a BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentKind {
    /// Map the device's region at the same offset into the guest (a KVM memory slot).
    Mmap,
    /// Put a bus entry there that calls `bar_read`/`bar_write`.
    Trap,
    /// The expansion ROM: memory holding `VfioPciDevice::rom_image` at the same offset, read-only
    /// for the guest (a KVM memory slot with `KVM_MEM_READONLY`).
    Rom,
}

/// A part of a BAR: `[offset, offset + len)` from the BAR's start (and the region's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Offset in the BAR.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// How to serve it.
    pub kind: SegmentKind,
}

/// What [`plan_bar`] needs to know about one BAR.
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    /// The BAR's size (may exceed the region's if it was rounded up).
    pub bar_size: u64,
    /// Trap the whole BAR (I/O BARs and the expansion ROM).
    pub trapped: bool,
    /// The VFIO region behind the BAR.
    pub region: &'a RegionInfo,
    /// Byte ranges that must stay trapped (the MSI-X table and PBA); widened to pages.
    pub holes: &'a [Range<u64>],
}

/// Splits a BAR into page-aligned mmap segments and trapped segments covering all of it, in
/// order, adjacent segments of one kind merged.
pub fn plan_bar(input: &PlanInput) -> Vec<Segment> {
    let mut areas = if input.trapped {
        Vec::new()
    } else {
        mmap_areas(input.bar_size, input.region)
    };
    for hole in input.holes {
        let page = hole.start & !(PAGE_SIZE - 1)
            ..hole.end.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
        areas = areas.into_iter().flat_map(|a| subtract(a, &page)).collect();
    }
    segments(input.bar_size, &areas)
}

/// The mmappable page-aligned areas of `region` inside the first `bar_size` bytes, sorted and
/// merged.
fn mmap_areas(bar_size: u64, region: &RegionInfo) -> Vec<Range<u64>> {
    if !region.mmap {
        return Vec::new();
    }
    let limit = bar_size.min(region.size);
    let whole = [(0, region.size)];
    let listed = region.sparse.as_deref().unwrap_or(&whole);
    let mut areas: Vec<Range<u64>> = listed
        .iter()
        .map(|&(offset, size)| {
            let end = offset.saturating_add(size).min(limit) & !(PAGE_SIZE - 1);
            let start = offset.checked_next_multiple_of(PAGE_SIZE).unwrap_or(end);
            start.min(end)..end
        })
        .filter(|a| !a.is_empty())
        .collect();
    areas.sort_by_key(|a| a.start);
    let mut merged: Vec<Range<u64>> = Vec::new();
    for a in areas {
        match merged.last_mut() {
            Some(last) if a.start <= last.end => last.end = last.end.max(a.end),
            _ => merged.push(a),
        }
    }
    merged
}

/// `area` without `hole`: zero, one or two ranges.
fn subtract(area: Range<u64>, hole: &Range<u64>) -> Vec<Range<u64>> {
    if hole.end <= area.start || hole.start >= area.end {
        return vec![area];
    }
    [area.start..hole.start, hole.end..area.end]
        .into_iter()
        .filter(|r| !r.is_empty())
        .collect()
}

/// `[0, bar_size)` as mmap segments for the sorted, disjoint `mmaps` and trap segments between.
fn segments(bar_size: u64, mmaps: &[Range<u64>]) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut push = |start: u64, end: u64, kind| {
        if end > start {
            out.push(Segment {
                offset: start,
                len: end - start,
                kind,
            });
        }
    };
    for m in mmaps {
        push(at, m.start, SegmentKind::Trap);
        push(m.start, m.end, SegmentKind::Mmap);
        at = m.end;
    }
    push(at, bar_size, SegmentKind::Trap);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{region_info, FakeBackend};

    fn seg(offset: u64, len: u64, kind: SegmentKind) -> Segment {
        Segment { offset, len, kind }
    }

    fn plan(bar_size: u64, region: &RegionInfo, holes: &[Range<u64>]) -> Vec<Segment> {
        plan_bar(&PlanInput {
            bar_size,
            trapped: false,
            region,
            holes,
        })
    }

    #[test]
    fn probes_types_and_sizes() {
        let fake = FakeBackend::new(1, 2, false);
        fake.set_bar(0, 0x0, 0x1000, true);
        fake.set_bar(1, 0xc, 0x10_0000, true);
        fake.set_bar(3, 0x1, 0x20, false);
        fake.set_bar(4, 0x8, 0x3000, false);
        fake.set_region(ROM_REGION, region_info(0x400, false));
        let set = probe_bars(&fake).unwrap();
        let kinds: Vec<_> = set
            .iter()
            .map(|b| (b.index(), b.kind(), b.size()))
            .collect();
        let mem = |prefetchable| BarKind::Mem32 { prefetchable };
        assert_eq!(
            kinds,
            vec![
                (0, mem(false), 0x1000),
                (1, BarKind::Mem64 { prefetchable: true }, 0x10_0000),
                (3, BarKind::Io, 0x20),
                (4, mem(true), 0x4000),
                (ROM_BAR, BarKind::Rom, 0x1000),
            ]
        );
    }

    #[test]
    fn probe_rejects_unrepresentable_bars() {
        let fake = FakeBackend::new(1, 2, false);
        fake.set_bar(5, 0x4, 0x1000, true);
        assert_eq!(probe_bars(&fake), Err(pci::Error::BarIndex(5)));
        let io = FakeBackend::new(1, 2, false);
        io.set_bar(0, 0x1, 0x1000, false);
        assert!(matches!(probe_bars(&io), Err(pci::Error::BarSize { .. })));
    }

    #[test]
    fn decode_gates_ranges() {
        let fake = FakeBackend::new(1, 2, false);
        fake.set_bar(0, 0x0, 0x1000, true);
        fake.set_bar(1, 0x1, 0x100, false);
        fake.set_region(ROM_REGION, region_info(0x800, false));
        let mut set = probe_bars(&fake).unwrap();
        set.iter_mut()
            .for_each(|b| b.set_addr(0xc000_0000 + u64::from(b.index()) * 0x1000));
        let bases = |d: Decode| d.ranges(&set).iter().map(|r| r.base).collect::<Vec<_>>();
        assert_eq!(bases(Decode::from_command(0)), vec![0, 0, 0]);
        assert_eq!(
            bases(Decode::from_command(COMMAND_MEMORY)),
            vec![0xc000_0000, 0, 0]
        );
        assert_eq!(
            bases(Decode::from_command(COMMAND_IO)),
            vec![0, 0xc000_1000, 0]
        );
        set.write(12, 0, &[1]);
        let on = Decode::from_command(COMMAND_MEMORY | COMMAND_IO);
        assert_eq!(on.ranges(&set)[2].base, 0xc000_6000, "ROM enabled");
        assert_eq!(rom_bar_size(1), PAGE_SIZE);
        assert_eq!(rom_bar_size(0x8001), 0x1_0000);
        let mv = moves(&Decode::default().ranges(&set), &on.ranges(&set));
        assert_eq!(
            mv.iter().map(|m| (m.bar, m.old_base)).collect::<Vec<_>>(),
            vec![(0, 0), (1, 0), (6, 0)]
        );
        assert!(mv[1].is_io && !mv[2].is_io);
    }

    #[test]
    fn plan_whole_region() {
        let edu = region_info(0x10_0000, true);
        assert_eq!(
            plan(0x10_0000, &edu, &[]),
            vec![seg(0, 0x10_0000, SegmentKind::Mmap)]
        );
        let io = PlanInput {
            bar_size: 0x100,
            trapped: true,
            region: &edu,
            holes: &[],
        };
        assert_eq!(plan_bar(&io), vec![seg(0, 0x100, SegmentKind::Trap)]);
        let small = region_info(0x100, true);
        assert_eq!(
            plan(0x100, &small, &[]),
            vec![seg(0, 0x100, SegmentKind::Trap)]
        );
    }

    #[test]
    fn plan_msix_holes() {
        let nvme = region_info(0x4000, true);
        let holes = [0x2000..0x2100, 0x3000..0x3008];
        let expected = vec![
            seg(0, 0x2000, SegmentKind::Mmap),
            seg(0x2000, 0x2000, SegmentKind::Trap),
        ];
        assert_eq!(plan(0x4000, &nvme, &holes), expected);
        let mid = plan(
            0x10000,
            &region_info(0x10000, true),
            std::slice::from_ref(&(0x8010..0x8020)),
        );
        assert_eq!(
            mid,
            vec![
                seg(0, 0x8000, SegmentKind::Mmap),
                seg(0x8000, 0x1000, SegmentKind::Trap),
                seg(0x9000, 0x7000, SegmentKind::Mmap),
            ]
        );
    }

    #[test]
    fn plan_sparse_and_unmappable() {
        let mut sparse = region_info(0x10000, true);
        sparse.sparse = Some(vec![
            (0x8000, 0x8000),
            (0x0, 0x3000),
            (0x2000, 0x1800),
            (0x4800, 0x1000),
        ]);
        assert_eq!(
            plan(0x10000, &sparse, &[]),
            vec![
                seg(0, 0x3000, SegmentKind::Mmap),
                seg(0x3000, 0x5000, SegmentKind::Trap),
                seg(0x8000, 0x8000, SegmentKind::Mmap),
            ]
        );
        let none = region_info(0x4000, false);
        assert_eq!(
            plan(0x4000, &none, &[]),
            vec![seg(0, 0x4000, SegmentKind::Trap)]
        );
        let rounded = region_info(0x3000, true);
        assert_eq!(
            plan(0x4000, &rounded, &[]),
            vec![
                seg(0, 0x3000, SegmentKind::Mmap),
                seg(0x3000, 0x1000, SegmentKind::Trap),
            ]
        );
        sparse.sparse = Some(vec![(u64::MAX - 5, 100), (0x20000, 0x1000)]);
        assert_eq!(
            plan(
                0x10000,
                &sparse,
                std::slice::from_ref(&(u64::MAX - 1..u64::MAX))
            ),
            vec![seg(0, 0x10000, SegmentKind::Trap)]
        );
    }
}
