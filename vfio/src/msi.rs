//! The MSI capability as the guest sees it: every register (message control with Multiple
//! Message Enable and Enable, the 32- or 64-bit address, data, and the mask and pending bits
//! when per-vector masking is offered) lives in an emulated copy and guest writes never reach
//! the device. Routing the vectors (VFIO_DEVICE_SET_IRQS, KVM MSI routes) is the VMM's job:
//! it reads [`MsiState`] when told the capability changed.

use crate::caps::CapRegs;

/// Message control (upper half of dword 0): MSI Enable.
const CTL_ENABLE: u32 = 1 << 16;
/// Message control: Multiple Message Capable (log2 of vectors), read-only.
const CTL_MMC_SHIFT: u32 = 17;
/// Message control: Multiple Message Enable (log2 of vectors), guest-written.
const CTL_MME_SHIFT: u32 = 20;
/// Message control: 64-bit address capable.
const CTL_64BIT: u32 = 1 << 23;
/// Message control: per-vector masking capable.
const CTL_PVM: u32 = 1 << 24;
/// The low 16 bits of dword 0: capability ID and next pointer.
const HEADER_BITS: u32 = 0xffff;
/// Largest MMC/MME encoding defined (32 vectors).
const MAX_LOG2_VECTORS: u32 = 5;

/// What the guest programmed into the MSI capability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiState {
    /// MSI Enable.
    pub enabled: bool,
    /// Vectors enabled: 1 << Multiple Message Enable, capped by Multiple Message Capable.
    pub vectors: u32,
    /// Message address (upper half 0 for the 32-bit form).
    pub address: u64,
    /// Message data; vector `n` sends `data | n`.
    pub data: u32,
    /// Mask bits (bit `n` masks vector `n`); 0 without per-vector masking.
    pub masked: u32,
}

/// The emulated MSI capability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msi {
    regs: CapRegs,
    is_64bit: bool,
    per_vector_mask: bool,
    /// log2 of the vectors the device can send.
    mmc: u32,
}

impl Msi {
    /// The capability at config `offset` whose first dword on the device is `header`; starts
    /// disabled with one vector enabled and every vector unmasked.
    pub fn new(offset: u64, header: u32) -> Self {
        let is_64bit = header & CTL_64BIT != 0;
        let per_vector_mask = header & CTL_PVM != 0;
        let mmc = (header >> CTL_MMC_SHIFT & 0x7).min(MAX_LOG2_VECTORS);
        let control = mmc << CTL_MMC_SHIFT | header & (CTL_64BIT | CTL_PVM);
        let mut msi = Self {
            regs: CapRegs::new(offset, Vec::new()),
            is_64bit,
            per_vector_mask,
            mmc,
        };
        let mut regs = CapRegs::new(offset, vec![0; msi.len_dwords()]);
        regs.set(0, header & HEADER_BITS | control);
        regs.set_writable(0, CTL_ENABLE | 0x7 << CTL_MME_SHIFT);
        regs.set_writable(1, 0xffff_fffc);
        regs.set_writable(2, if is_64bit { u32::MAX } else { 0xffff });
        regs.set_writable(msi.data_idx(), 0xffff);
        if per_vector_mask {
            regs.set_writable(msi.data_idx() + 1, msi.vector_bits());
        }
        msi.regs = regs;
        msi
    }

    /// Dword index of the data register.
    fn data_idx(&self) -> usize {
        if self.is_64bit {
            3
        } else {
            2
        }
    }

    /// Dwords the capability occupies: data, then mask and pending with per-vector masking.
    fn len_dwords(&self) -> usize {
        self.data_idx() + if self.per_vector_mask { 3 } else { 1 }
    }

    /// Bits of the mask register that name a vector the device can send.
    fn vector_bits(&self) -> u32 {
        (1u64 << (1u32 << self.mmc)).wrapping_sub(1) as u32
    }

    /// True if config dword `reg_idx` belongs to the capability.
    pub fn contains(&self, reg_idx: usize) -> bool {
        self.regs.index_of(reg_idx).is_some()
    }

    /// Config dword `reg_idx` as the guest reads it; `None` if not ours.
    pub fn read(&self, reg_idx: usize) -> Option<u32> {
        self.regs.index_of(reg_idx).map(|i| self.regs.get(i))
    }

    /// A guest write at byte `offset` of config dword `reg_idx`; true if [`Msi::state`]
    /// changed.
    pub fn write(&mut self, reg_idx: usize, offset: usize, data: &[u8]) -> bool {
        let before = self.state();
        self.regs.write(reg_idx, offset, data);
        self.state() != before
    }

    /// What the guest programmed.
    pub fn state(&self) -> MsiState {
        let control = self.regs.get(0);
        let mme = (control >> CTL_MME_SHIFT & 0x7).min(self.mmc);
        let high = if self.is_64bit { self.regs.get(2) } else { 0 };
        let masked = if self.per_vector_mask {
            self.regs.get(self.data_idx() + 1)
        } else {
            0
        };
        MsiState {
            enabled: control & CTL_ENABLE != 0,
            vectors: 1 << mme,
            address: u64::from(high) << 32 | u64::from(self.regs.get(1)),
            data: self.regs.get(self.data_idx()),
            masked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFF: u64 = 0x50;
    const REG: usize = 0x50 / 4;

    fn header(mmc: u32, is_64bit: bool, pvm: bool) -> u32 {
        let flag = |on: bool, bit: u32| if on { bit } else { 0 };
        0x6005 | mmc << CTL_MMC_SHIFT | flag(is_64bit, CTL_64BIT) | flag(pvm, CTL_PVM)
    }

    fn write32(msi: &mut Msi, reg: usize, value: u32) -> bool {
        msi.write(reg, 0, &value.to_le_bytes())
    }

    #[test]
    fn msi_32bit_without_masking() {
        let mut msi = Msi::new(OFF, header(0, false, false) | 0x0600_0000);
        assert_eq!(
            msi.read(REG),
            Some(0x0000_6005),
            "extended data bits hidden"
        );
        assert!((REG..REG + 3).all(|r| msi.contains(r)) && !msi.contains(REG + 3));
        assert!(write32(&mut msi, REG + 1, 0xfee0_1003));
        assert!(write32(&mut msi, REG + 2, 0xdead_0041));
        assert_eq!(msi.read(REG + 2), Some(0x41));
        assert!(msi.write(REG, 2, &[0x01]));
        let expected = MsiState {
            enabled: true,
            vectors: 1,
            address: 0xfee0_1000,
            data: 0x41,
            masked: 0,
        };
        assert_eq!(msi.state(), expected);
        assert!(!msi.write(REG, 2, &[0x01]), "no change, no notification");
    }

    #[test]
    fn msi_64bit_with_masking() {
        let mut msi = Msi::new(OFF, header(3, true, true));
        assert!(msi.contains(REG + 5) && !msi.contains(REG + 6));
        write32(&mut msi, REG + 1, 0xfee0_0000);
        write32(&mut msi, REG + 2, 0x1);
        write32(&mut msi, REG + 3, 0x4020);
        write32(&mut msi, REG + 4, 0xffff_ffff);
        assert!(!write32(&mut msi, REG + 5, 0xff), "pending is read-only");
        let state = msi.state();
        assert_eq!(state.address, 0x1_fee0_0000);
        assert_eq!((state.data, state.masked), (0x4020, 0xff));
        assert_eq!(msi.read(REG + 5), Some(0));
        assert_eq!(msi.read(REG), Some(0x0186_6005));
    }

    #[test]
    fn mme_is_capped_by_mmc() {
        let mut msi = Msi::new(OFF, header(2, false, true));
        assert!(msi.write(REG, 2, &[0x71]));
        assert_eq!((msi.state().vectors, msi.state().enabled), (4, true));
        assert!(!msi.write(REG, 2, &[0x21]), "MME 2 is the same 4 vectors");
        assert_eq!(msi.read(REG).map(|c| c >> CTL_MME_SHIFT & 7), Some(2));
        assert!(msi.write(REG, 2, &[0x11]));
        assert_eq!(msi.state().vectors, 2);
        write32(&mut msi, REG + 3, u32::MAX);
        assert_eq!(msi.state().masked, 0xf);
        let full = Msi::new(OFF, header(7, false, true));
        assert_eq!(
            full.vector_bits(),
            u32::MAX,
            "32 vectors, reserved MMC clamped"
        );
    }
}
