//! The MSI-X capability, table and pending-bit array as the guest sees them: message control
//! (Enable, Function Mask) is emulated, the table (16-byte entries: address low, address high,
//! data, vector control) and the PBA live in this model, and none of it reaches the device.
//! Routing the vectors is the VMM's job: it reads [`MsixState`] (or one [`MsixEntry`]) when
//! told something changed, and reports pending vectors with [`Msix::set_pending`].
//!
//! This module also says where the table and PBA are, so the mmap plan can keep their pages
//! trapped.

use std::ops::Range;

use crate::caps::CapRegs;

/// Message control (upper half of dword 0): MSI-X Enable.
const CTL_ENABLE: u32 = 1 << 31;
/// Message control: Function Mask.
const CTL_FUNCTION_MASK: u32 = 1 << 30;
/// Message control: table size minus one.
const CTL_TABLE_SIZE_SHIFT: u32 = 16;
const CTL_TABLE_SIZE_MASK: u32 = 0x7ff;
/// Bytes per table entry.
const ENTRY_SIZE: u64 = 16;
/// Vector control: the entry's mask bit.
const VECTOR_MASKED: u32 = 1;
/// Dwords of the capability: control, table offset/BIR, PBA offset/BIR.
const CAP_DWORDS: usize = 3;

/// Errors decoding the device's MSI-X capability.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// A BAR indicator of 6 or 7 (reserved).
    Bir {
        /// "table" or "PBA".
        what: &'static str,
        /// The BAR indicator.
        bir: u8,
    },
}

impl diag::Explain for Error {
    fn advice(&self) -> diag::Advice {
        match self {
            Error::Bir { what, bir } => diag::Advice::new(
                format!("the device's MSI-X {what} names reserved BAR indicator {bir}"),
                "this device cannot be passed through: its MSI-X capability is broken",
            ),
        }
    }
}
diag::explained!(Error);

/// One table entry as the guest programmed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixEntry {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
    /// The entry's mask bit.
    pub masked: bool,
}

/// What the guest programmed into the MSI-X capability and table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsixState {
    /// MSI-X Enable.
    pub enabled: bool,
    /// Function Mask: every vector masked.
    pub masked: bool,
    /// The table, one entry per vector.
    pub entries: Vec<MsixEntry>,
}

/// Where a BAR access lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// At this offset in the table.
    Table(usize),
    /// At this offset in the PBA.
    Pba(usize),
    /// Partly in the table or PBA: reads all ones, writes dropped.
    Straddle,
    /// Neither: the device's own registers.
    Device,
}

/// A structure in a BAR: its BAR index and byte range there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BarArea {
    /// BAR index (0-5).
    pub bar: u8,
    /// Bytes in the BAR.
    pub range: Range<u64>,
}

/// The emulated MSI-X capability, table and PBA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msix {
    regs: CapRegs,
    table: Vec<[u32; 4]>,
    pba: Vec<u64>,
}

/// BAR indicator and offset from a table or PBA register.
fn decode_bir(what: &'static str, reg: u32) -> Result<(u8, u64), Error> {
    let bir = (reg & 0x7) as u8;
    if usize::from(bir) >= pci::NUM_BARS {
        return Err(Error::Bir { what, bir });
    }
    Ok((bir, u64::from(reg & !0x7)))
}

impl Msix {
    /// The capability at config `offset` whose three dwords on the device are `device`; starts
    /// disabled, unmasked, with every entry masked and nothing pending.
    pub fn new(offset: u64, device: [u32; CAP_DWORDS]) -> Result<Self, Error> {
        decode_bir("table", device[1])?;
        decode_bir("PBA", device[2])?;
        let control = device[0] & !(CTL_ENABLE | CTL_FUNCTION_MASK);
        let mut regs = CapRegs::new(offset, vec![control, device[1], device[2]]);
        regs.set_writable(0, CTL_ENABLE | CTL_FUNCTION_MASK);
        let size = (control >> CTL_TABLE_SIZE_SHIFT & CTL_TABLE_SIZE_MASK) as usize + 1;
        Ok(Self {
            regs,
            table: vec![[0, 0, 0, VECTOR_MASKED]; size],
            pba: vec![0; size.div_ceil(64)],
        })
    }

    /// Number of vectors (table entries).
    pub fn table_size(&self) -> u16 {
        self.table.len() as u16
    }

    /// Where the table is.
    pub fn table_area(&self) -> BarArea {
        self.area(1, self.table.len() as u64 * ENTRY_SIZE)
    }

    /// Where the PBA is.
    pub fn pba_area(&self) -> BarArea {
        self.area(2, self.pba.len() as u64 * 8)
    }

    fn area(&self, reg: usize, len: u64) -> BarArea {
        let bir = self.regs.get(reg) & 0x7;
        let start = u64::from(self.regs.get(reg) & !0x7);
        BarArea {
            bar: bir as u8,
            range: start..start + len,
        }
    }

    /// True if config dword `reg_idx` belongs to the capability.
    pub fn contains(&self, reg_idx: usize) -> bool {
        self.regs.index_of(reg_idx).is_some()
    }

    /// Config dword `reg_idx` as the guest reads it; `None` if not ours.
    pub fn read(&self, reg_idx: usize) -> Option<u32> {
        self.regs.index_of(reg_idx).map(|i| self.regs.get(i))
    }

    /// A guest config write; true if Enable or Function Mask changed.
    pub fn write(&mut self, reg_idx: usize, offset: usize, data: &[u8]) -> bool {
        let before = self.regs.get(0);
        self.regs.write(reg_idx, offset, data);
        self.regs.get(0) != before
    }

    /// What the guest programmed.
    pub fn state(&self) -> MsixState {
        let control = self.regs.get(0);
        MsixState {
            enabled: control & CTL_ENABLE != 0,
            masked: control & CTL_FUNCTION_MASK != 0,
            entries: (0..self.table_size())
                .filter_map(|v| self.entry(v))
                .collect(),
        }
    }

    /// Table entry `vector`.
    pub fn entry(&self, vector: u16) -> Option<MsixEntry> {
        let e = self.table.get(usize::from(vector))?;
        Some(MsixEntry {
            address: u64::from(e[1]) << 32 | u64::from(e[0]),
            data: e[2],
            masked: e[3] & VECTOR_MASKED != 0,
        })
    }

    /// Sets or clears vector `vector`'s pending bit; ignored past the table.
    pub fn set_pending(&mut self, vector: u16, pending: bool) {
        let v = usize::from(vector);
        if v >= self.table.len() {
            return;
        }
        let bit = 1u64 << (v % 64);
        if pending {
            self.pba[v / 64] |= bit;
        } else {
            self.pba[v / 64] &= !bit;
        }
    }

    /// Where an access of `len` bytes at `offset` in BAR `bar` lands.
    fn target(&self, bar: u8, offset: u64, len: usize) -> Target {
        let Some(end) = offset.checked_add(len as u64) else {
            return Target::Straddle;
        };
        let areas = [(self.table_area(), true), (self.pba_area(), false)];
        for (area, is_table) in areas {
            if area.bar != bar || end <= area.range.start || offset >= area.range.end {
                continue;
            }
            if offset < area.range.start || end > area.range.end {
                return Target::Straddle;
            }
            let at = (offset - area.range.start) as usize;
            return if is_table {
                Target::Table(at)
            } else {
                Target::Pba(at)
            };
        }
        Target::Device
    }

    /// A guest read in BAR `bar`; false (and `data` untouched) if it is not for the table or
    /// PBA.
    pub fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]) -> bool {
        match self.target(bar, offset, data.len()) {
            Target::Device => return false,
            Target::Table(at) => self.read_table(at, data),
            Target::Pba(at) => self.read_pba(at, data),
            Target::Straddle => data.fill(0xff),
        }
        true
    }

    /// A guest write in BAR `bar`; `None` if it is not for the table or PBA, else the table
    /// entries whose contents changed (PBA and straddling writes are dropped).
    pub fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Option<Vec<u16>> {
        match self.target(bar, offset, data.len()) {
            Target::Device => None,
            Target::Table(at) => Some(self.write_table(at, data)),
            Target::Pba(_) | Target::Straddle => Some(Vec::new()),
        }
    }

    fn read_table(&self, at: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let off = at + i;
            let word = self.table[off / 16][off / 4 % 4];
            *b = word.to_le_bytes()[off % 4];
        }
    }

    fn read_pba(&self, at: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let off = at + i;
            *b = self.pba[off / 8].to_le_bytes()[off % 8];
        }
    }

    /// Writes table bytes; returns the entries whose contents changed.
    fn write_table(&mut self, at: usize, data: &[u8]) -> Vec<u16> {
        let mut changed: Vec<u16> = Vec::new();
        for (i, &b) in data.iter().enumerate() {
            let off = at + i;
            let (entry, word) = (off / 16, off / 4 % 4);
            let old = self.table[entry][word];
            let mut bytes = old.to_le_bytes();
            bytes[off % 4] = b;
            let mask = if word == 3 { VECTOR_MASKED } else { u32::MAX };
            let new = old & !mask | u32::from_le_bytes(bytes) & mask;
            self.table[entry][word] = new;
            let vector = entry as u16;
            if new != old && !changed.contains(&vector) {
                changed.push(vector);
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: usize = 0x70 / 4;

    /// 8 vectors (or `size`), table in BAR 0 at 0x2000, PBA in BAR 0 at 0x3000.
    fn msix(size: u32) -> Msix {
        let control = (size - 1) << CTL_TABLE_SIZE_SHIFT | 0x0011;
        Msix::new(0x70, [control | CTL_ENABLE, 0x2000, 0x3000]).unwrap()
    }

    fn read(m: &Msix, offset: u64, len: usize) -> u64 {
        let mut data = [0u8; 8];
        assert!(m.bar_read(0, offset, &mut data[..len]));
        u64::from_le_bytes(data)
    }

    #[test]
    fn decodes_the_capability() {
        let m = msix(8);
        assert_eq!(m.table_size(), 8);
        assert_eq!(
            m.table_area(),
            BarArea {
                bar: 0,
                range: 0x2000..0x2080
            }
        );
        assert_eq!(
            m.pba_area(),
            BarArea {
                bar: 0,
                range: 0x3000..0x3008
            }
        );
        assert_eq!(m.read(REG), Some(0x0007_0011), "starts disabled");
        assert_eq!(
            (m.read(REG + 1), m.read(REG + 2)),
            (Some(0x2000), Some(0x3000))
        );
        assert!(m.contains(REG + 2) && !m.contains(REG + 3) && m.read(REG - 1).is_none());
        let bad = Msix::new(0x70, [0, 0x2006, 0x3000]);
        assert_eq!(
            bad,
            Err(Error::Bir {
                what: "table",
                bir: 6
            })
        );
        assert!(Msix::new(0x70, [0, 0x2000, 0x3007]).is_err());
        assert_eq!(msix(2048).pba_area().range, 0x3000..0x3100);
    }

    #[test]
    fn entries_are_masked_at_reset() {
        let m = msix(4);
        let state = m.state();
        assert!(!state.enabled && !state.masked);
        assert_eq!(state.entries.len(), 4);
        assert!(state.entries.iter().all(|e| e.masked && e.address == 0));
        assert_eq!(read(&m, 0x200c, 4), 1);
    }

    #[test]
    fn control_enable_and_function_mask() {
        let mut m = msix(8);
        assert!(m.write(REG, 3, &[0xc0]));
        assert_eq!((m.state().enabled, m.state().masked), (true, true));
        assert!(m.write(REG, 2, &[0x00, 0x80]));
        assert_eq!((m.state().enabled, m.state().masked), (true, false));
        assert!(
            !m.write(REG, 0, &0x8fff_ffffu32.to_le_bytes()),
            "size is read-only"
        );
        assert_eq!(m.read(REG), Some(0x8007_0011));
        assert!(!m.write(REG + 1, 0, &[0xff; 4]));
        assert_eq!(m.read(REG + 1), Some(0x2000));
    }

    #[test]
    fn table_writes_read_back() {
        let mut m = msix(8);
        let entry = 0x2000 + 16 * 3;
        let ch = m.bar_write(0, entry, &0x1_fee0_1000u64.to_le_bytes());
        assert_eq!(ch, Some(vec![3]));
        m.bar_write(0, entry + 8, &0x41u32.to_le_bytes());
        assert_eq!(
            m.bar_write(0, entry + 12, &[0xfe, 0xff, 0xff, 0xff]),
            Some(vec![3])
        );
        let e = m.entry(3).unwrap();
        assert_eq!(
            e,
            MsixEntry {
                address: 0x1_fee0_1000,
                data: 0x41,
                masked: false
            }
        );
        assert_eq!(read(&m, entry, 8), 0x1_fee0_1000);
        assert_eq!(read(&m, entry + 12, 4), 0, "reserved control bits stay 0");
        assert_eq!(read(&m, entry + 9, 1), 0);
        assert_eq!(m.bar_write(0, entry + 8, &[0x41]), Some(vec![]));
        let both = m.bar_write(0, entry + 12, &[1, 0, 0, 0, 0x55, 0, 0, 0]);
        assert_eq!(both, Some(vec![3, 4]));
        assert!(m.entry(3).unwrap().masked && m.entry(8).is_none());
    }

    #[test]
    fn pba_is_read_only_and_set_by_the_hook() {
        let mut m = msix(70);
        m.set_pending(1, true);
        m.set_pending(65, true);
        m.set_pending(70, true);
        assert_eq!(read(&m, 0x3000, 8), 2);
        assert_eq!(read(&m, 0x3008, 4), 2);
        assert_eq!(m.bar_write(0, 0x3000, &[0; 8]), Some(vec![]));
        assert_eq!(read(&m, 0x3000, 1), 2);
        m.set_pending(1, false);
        assert_eq!(read(&m, 0x3000, 8), 0);
    }

    #[test]
    fn other_accesses_go_to_the_device() {
        let mut m = msix(8);
        let mut data = [0u8; 4];
        assert!(!m.bar_read(0, 0x1ffc, &mut data));
        assert!(!m.bar_read(1, 0x2000, &mut data));
        assert!(m.bar_write(0, 0x2080, &data).is_none());
        assert!(
            m.bar_read(0, 0x1ffe, &mut data),
            "straddles the table start"
        );
        assert_eq!(data, [0xff; 4]);
        assert_eq!(m.bar_write(0, 0x307e, &[0; 4]), None);
        assert!(m.bar_read(0, 0x3006, &mut data));
        assert!(m.bar_read(0, u64::MAX, &mut data));
    }
}
