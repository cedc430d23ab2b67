//! BAR emulation independent of where the rest of config space comes from: sizing probes
//! (the guest writes all ones and reads the size mask back) and the guest-programmed address
//! kept in a shadow. Moves are reported, never applied here.
//!
//! A move is reported on every dword write that changes the settled (non-probing) address, so
//! a guest rewriting both halves of a 64-bit BAR (Linux writes low, then high) yields two moves
//! through an intermediate address made of the new low and the old high half. Command-register
//! decode enables are not tracked here: a [`BarSet`] decodes at its shadow address at all times
//! (the VFIO device model layers decode enables on top).

use crate::{merge_bytes, Error};

/// Number of standard BARs in a type 0 header.
pub const NUM_BARS: usize = 6;
/// The index used for the expansion ROM BAR (as VFIO's region index for the ROM).
pub const ROM_BAR: u8 = 6;
/// Dword index of BAR 0.
const BAR0_REG: usize = 4;
/// Dword index of the expansion ROM BAR in a type 0 header.
const ROM_REG: usize = 12;

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// I/O ports.
    Io,
    /// Memory below 4 GiB.
    Mem32 {
        /// Prefetchable memory.
        prefetchable: bool,
    },
    /// Memory anywhere; takes this BAR's register and the next.
    Mem64 {
        /// Prefetchable memory.
        prefetchable: bool,
    },
    /// The expansion ROM (register 0x30, bit 0 is the enable bit).
    Rom,
}

impl BarKind {
    /// True for an I/O port BAR.
    pub fn is_io(self) -> bool {
        self == BarKind::Io
    }

    fn is_64bit(self) -> bool {
        matches!(self, BarKind::Mem64 { .. })
    }

    /// Low bits of the (first) register that are type flags, not address.
    fn flag_bits(self) -> u32 {
        match self {
            BarKind::Io => 0x3,
            BarKind::Rom => 0x7ff,
            _ => 0xf,
        }
    }

    /// The read-only type flags in the low bits of the (first) register.
    fn type_flags(self) -> u32 {
        match self {
            BarKind::Io => 0x1,
            BarKind::Mem32 { prefetchable } => u32::from(prefetchable) << 3,
            BarKind::Mem64 { prefetchable } => 0x4 | u32::from(prefetchable) << 3,
            BarKind::Rom => 0,
        }
    }

    fn valid_sizes(self) -> std::ops::RangeInclusive<u64> {
        match self {
            BarKind::Io => 4..=256,
            BarKind::Mem32 { .. } => 16..=1 << 31,
            BarKind::Mem64 { .. } => 16..=1 << 63,
            BarKind::Rom => 2048..=1 << 31,
        }
    }
}

/// Where a BAR currently decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRange {
    /// BAR index (0-5, or [`ROM_BAR`]).
    pub bar: u8,
    /// Guest address (memory) or port (I/O).
    pub base: u64,
    /// Size in bytes.
    pub len: u64,
    /// True if `base` is an I/O port.
    pub is_io: bool,
}

/// The guest moved a BAR: the caller moves its bus range (and KVM memory slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarReprogram {
    /// BAR index (0-5, or [`ROM_BAR`]).
    pub bar: u8,
    /// Where the BAR decoded before.
    pub old_base: u64,
    /// Where it decodes now.
    pub new_base: u64,
    /// BAR size.
    pub len: u64,
    /// True for an I/O BAR (PIO bus), false for memory (MMIO bus).
    pub is_io: bool,
}

/// One BAR: type, size, the guest-programmed address and whether a sizing probe is pending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bar {
    index: u8,
    kind: BarKind,
    size: u64,
    addr: u64,
    rom_enabled: bool,
    /// The low / high register last had all address bits written as ones.
    probing: [bool; 2],
}

impl Bar {
    /// A BAR at `index` (0-5; 0-4 for 64-bit; [`ROM_BAR`] for the ROM) of `size` bytes, at 0.
    pub fn new(index: u8, kind: BarKind, size: u64) -> Result<Self, Error> {
        let index_ok = match kind {
            BarKind::Rom => index == ROM_BAR,
            BarKind::Mem64 { .. } => usize::from(index) + 1 < NUM_BARS,
            _ => usize::from(index) < NUM_BARS,
        };
        if !index_ok {
            return Err(Error::BarIndex(index));
        }
        if !size.is_power_of_two() || !kind.valid_sizes().contains(&size) {
            return Err(Error::BarSize { index, kind, size });
        }
        Ok(Self {
            index,
            kind,
            size,
            addr: 0,
            rom_enabled: false,
            probing: [false; 2],
        })
    }

    /// BAR index.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// BAR type.
    pub fn kind(&self) -> BarKind {
        self.kind
    }

    /// BAR size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The guest-programmed (or VMM-assigned) address.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Sets the address as firmware would; low bits below the size are dropped.
    pub fn set_addr(&mut self, addr: u64) {
        self.addr = addr & self.addr_mask();
    }

    /// True if this is the expansion ROM and the guest set its enable bit.
    pub fn rom_enabled(&self) -> bool {
        self.kind == BarKind::Rom && self.rom_enabled
    }

    /// Where the BAR decodes.
    pub fn range(&self) -> BarRange {
        BarRange {
            bar: self.index,
            base: self.addr,
            len: self.size,
            is_io: self.kind.is_io(),
        }
    }

    /// Address bits the guest can write.
    fn addr_mask(&self) -> u64 {
        let mask = !(self.size - 1);
        if self.kind.is_64bit() {
            mask
        } else {
            mask & 0xffff_ffff
        }
    }

    /// The low (`high == false`) or high register as the guest reads it.
    pub fn read(&self, high: bool) -> u32 {
        let half = usize::from(high);
        let value = if self.probing[half] {
            self.addr_mask()
        } else {
            self.addr
        };
        let dword = (value >> (32 * half)) as u32;
        if high {
            return dword;
        }
        let enable = u32::from(self.kind == BarKind::Rom && self.rom_enabled);
        dword & !self.kind.flag_bits() | self.kind.type_flags() | enable
    }

    /// A guest write of a whole register; returns the move if the settled address changed.
    pub fn write(&mut self, high: bool, value: u32) -> Option<BarReprogram> {
        if self.kind == BarKind::Rom {
            self.rom_enabled = value & 1 != 0;
        }
        let half = usize::from(high);
        let flag_bits = if high { 0 } else { self.kind.flag_bits() };
        self.probing[half] = value | flag_bits == u32::MAX;
        if self.probing[half] {
            return None;
        }
        let shift = 32 * half;
        let kept = self.addr & !(0xffff_ffff << shift);
        let new = (kept | u64::from(value & !flag_bits) << shift) & self.addr_mask();
        let old = std::mem::replace(&mut self.addr, new);
        (new != old).then_some(BarReprogram {
            bar: self.index,
            old_base: old,
            new_base: new,
            len: self.size,
            is_io: self.kind.is_io(),
        })
    }

    /// Dword index of the low register.
    fn first_reg(&self) -> usize {
        match self.kind {
            BarKind::Rom => ROM_REG,
            _ => BAR0_REG + usize::from(self.index),
        }
    }

    /// Dword indices this BAR occupies.
    fn regs(&self) -> std::ops::RangeInclusive<usize> {
        let first = self.first_reg();
        first..=first + usize::from(self.kind.is_64bit())
    }
}

/// The BARs of one type 0 header; answers every BAR register (0x10-0x27 and 0x30).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BarSet {
    bars: Vec<Bar>,
}

impl BarSet {
    /// True if `reg_idx` is a BAR or ROM register of a type 0 header.
    pub fn is_bar_register(reg_idx: usize) -> bool {
        (BAR0_REG..BAR0_REG + NUM_BARS).contains(&reg_idx) || reg_idx == ROM_REG
    }

    /// Adds `bar`; its registers must be free.
    pub fn add(&mut self, bar: Bar) -> Result<(), Error> {
        if bar.regs().any(|reg| self.locate(reg).is_some()) {
            return Err(Error::BarIndex(bar.index));
        }
        self.bars.push(bar);
        Ok(())
    }

    /// Takes BAR `index` out of the set (its registers then read as unimplemented).
    pub fn remove(&mut self, index: u8) -> Option<Bar> {
        let at = self.bars.iter().position(|b| b.index == index)?;
        Some(self.bars.remove(at))
    }

    /// The BAR with `index`.
    pub fn get(&self, index: u8) -> Option<&Bar> {
        self.bars.iter().find(|b| b.index == index)
    }

    /// The BAR with `index`, mutably (to assign its address).
    pub fn get_mut(&mut self, index: u8) -> Option<&mut Bar> {
        self.bars.iter_mut().find(|b| b.index == index)
    }

    /// All BARs, in the order added.
    pub fn iter(&self) -> impl Iterator<Item = &Bar> {
        self.bars.iter()
    }

    /// All BARs, in the order added, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Bar> {
        self.bars.iter_mut()
    }

    /// Where each BAR decodes.
    pub fn ranges(&self) -> Vec<BarRange> {
        self.bars.iter().map(Bar::range).collect()
    }

    /// The BAR at `reg_idx` and whether it is its high register.
    fn locate(&self, reg_idx: usize) -> Option<(usize, bool)> {
        self.bars.iter().enumerate().find_map(|(i, bar)| {
            let regs = bar.regs();
            regs.contains(&reg_idx)
                .then_some((i, reg_idx != *regs.start()))
        })
    }

    /// A BAR register as the guest reads it; 0 for unimplemented BARs.
    pub fn read(&self, reg_idx: usize) -> u32 {
        self.locate(reg_idx)
            .map_or(0, |(i, high)| self.bars[i].read(high))
    }

    /// A guest write of `data` at byte `offset` of BAR register `reg_idx`.
    pub fn write(&mut self, reg_idx: usize, offset: usize, data: &[u8]) -> Option<BarReprogram> {
        let (i, high) = self.locate(reg_idx)?;
        let value = merge_bytes(self.bars[i].read(high), offset, data)?;
        self.bars[i].write(high, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEM32: BarKind = BarKind::Mem32 {
        prefetchable: false,
    };

    fn set_with(index: u8, kind: BarKind, size: u64, addr: u64) -> BarSet {
        let mut bar = Bar::new(index, kind, size).unwrap();
        bar.set_addr(addr);
        let mut set = BarSet::default();
        set.add(bar).unwrap();
        set
    }

    /// Writes a dword; returns the reported move as (old, new).
    fn write32(set: &mut BarSet, reg: usize, value: u32) -> Option<(u64, u64)> {
        let mv = set.write(reg, 0, &value.to_le_bytes())?;
        Some((mv.old_base, mv.new_base))
    }

    #[test]
    fn mem32_sizing_probe_and_shadow() {
        let mut set = set_with(0, MEM32, 0x1000, 0xc000_0000);
        assert_eq!(set.read(4), 0xc000_0000);
        assert_eq!(write32(&mut set, 4, 0xffff_ffff), None);
        assert_eq!(set.read(4), 0xffff_f000);
        assert_eq!(
            write32(&mut set, 4, 0xc000_0000),
            None,
            "restore is no move"
        );
        assert_eq!(set.read(4), 0xc000_0000);
        let mv = set.write(4, 0, &0xc010_0abcu32.to_le_bytes()).unwrap();
        let expected = (0, 0xc000_0000, 0xc010_0000, 0x1000, false);
        assert_eq!(
            (mv.bar, mv.old_base, mv.new_base, mv.len, mv.is_io),
            expected
        );
        assert_eq!(set.read(4), 0xc010_0000);
        assert_eq!(set.get(0).unwrap().addr(), 0xc010_0000);
    }

    #[test]
    fn mem64_prefetchable_uses_two_registers() {
        let kind = BarKind::Mem64 { prefetchable: true };
        let mut set = set_with(2, kind, 1 << 32, 0x40 << 32);
        assert_eq!((set.read(6), set.read(7)), (0xc, 0x40));
        write32(&mut set, 6, 0xffff_ffff);
        write32(&mut set, 7, 0xffff_ffff);
        assert_eq!((set.read(6), set.read(7)), (0xc, 0xffff_ffff));
        assert_eq!(write32(&mut set, 6, 0), None);
        assert_eq!(write32(&mut set, 7, 0x40), None);
        assert_eq!(write32(&mut set, 7, 0x41), Some((0x40 << 32, 0x41 << 32)));
        assert_eq!(set.read(7), 0x41);
        let mut small = set_with(
            0,
            BarKind::Mem64 {
                prefetchable: false,
            },
            0x4000,
            0,
        );
        write32(&mut small, 4, 0xffff_ffff);
        write32(&mut small, 5, 0xffff_ffff);
        assert_eq!((small.read(4), small.read(5)), (0xffff_c004, 0xffff_ffff));
    }

    #[test]
    fn io_and_rom_bars() {
        let mut set = set_with(1, BarKind::Io, 0x100, 0x1000);
        assert_eq!(set.read(5), 0x1001);
        write32(&mut set, 5, 0xffff_ffff);
        assert_eq!(set.read(5), 0xffff_ff01);
        assert_eq!(write32(&mut set, 5, 0x2001), Some((0x1000, 0x2000)));
        assert!(set.get(1).unwrap().range().is_io);
        let mut rom = set_with(ROM_BAR, BarKind::Rom, 0x8000, 0);
        assert_eq!(write32(&mut rom, 12, 0xffff_f800), None);
        assert_eq!(rom.read(12), 0xffff_8000);
        assert_eq!(write32(&mut rom, 12, 0xd000_0001), Some((0, 0xd000_0000)));
        assert_eq!(rom.read(12), 0xd000_0001);
        assert!(rom.get(ROM_BAR).unwrap().rom_enabled());
        write32(&mut rom, 12, 0xd000_0000);
        assert!(!rom.get(ROM_BAR).unwrap().rom_enabled());
        assert_eq!(rom.iter().count(), 1);
        assert_eq!(rom.remove(ROM_BAR).map(|b| b.size()), Some(0x8000));
        assert_eq!(rom.read(12), 0, "gone");
        assert!(rom.remove(ROM_BAR).is_none());
    }

    #[test]
    fn byte_writes_merge_and_unimplemented_bars_read_zero() {
        let mut set = set_with(0, MEM32, 0x1000, 0);
        let mv = set.write(4, 3, &[0xc1]).unwrap();
        assert_eq!(mv.new_base, 0xc100_0000);
        assert_eq!(set.read(9), 0);
        assert_eq!(set.write(9, 0, &[0xff; 4]), None);
        assert_eq!(set.write(4, 2, &[0xff; 4]), None);
        assert!(BarSet::is_bar_register(12) && !BarSet::is_bar_register(10));
    }

    #[test]
    fn rejects_bad_bars() {
        let bad_size = |kind, size| matches!(Bar::new(0, kind, size), Err(Error::BarSize { .. }));
        assert!(bad_size(MEM32, 0x1800) && bad_size(MEM32, 8) && bad_size(BarKind::Io, 0x200));
        assert_eq!(Bar::new(6, MEM32, 0x1000), Err(Error::BarIndex(6)));
        assert_eq!(Bar::new(0, BarKind::Rom, 0x1000), Err(Error::BarIndex(0)));
        let kind = BarKind::Mem64 {
            prefetchable: false,
        };
        assert_eq!(Bar::new(5, kind, 0x1000), Err(Error::BarIndex(5)));
        let mut set = set_with(0, kind, 0x1000, 0);
        assert_eq!(
            set.add(Bar::new(1, MEM32, 0x1000).unwrap()),
            Err(Error::BarIndex(1))
        );
    }
}
