//! Finding capabilities in the device's config space, and [`CapRegs`]: the emulated dwords of
//! one capability (values plus guest-writable bits) that the MSI and MSI-X models keep instead
//! of the device's.
//!
//! This module only reads the config space through the backend; it never writes the device.

use crate::backend::{VfioBackend, CONFIG_REGION};

/// Capability ID of MSI.
pub const CAP_ID_MSI: u8 = 0x05;
/// Capability ID of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;

/// Status register bit: the capabilities list at 0x34 is valid.
const STATUS_CAP_LIST: u32 = 1 << 20;
/// Config offset of the capabilities pointer.
const CAP_POINTER: u64 = 0x34;
/// Capabilities live after the standard header and before extended space.
const CAP_AREA: std::ops::Range<u64> = 0x40..0x100;
/// At most this many capabilities fit in 192 bytes; bounds a looping list.
const MAX_CAPS: usize = 48;

/// The config dword at byte `offset`; all ones if the device does not answer.
pub fn read_config_dword<B: VfioBackend>(backend: &B, offset: u64) -> u32 {
    let mut data = [0xff; 4];
    if backend.read(CONFIG_REGION, offset, &mut data).is_err() {
        data = [0xff; 4];
    }
    u32::from_le_bytes(data)
}

/// Config offsets of the standard capabilities as `(id, offset)`, in list order.
pub fn capabilities<B: VfioBackend>(backend: &B) -> Vec<(u8, u64)> {
    let mut caps = Vec::new();
    if read_config_dword(backend, 0x4) & STATUS_CAP_LIST == 0 {
        return caps;
    }
    let mut next = u64::from(read_config_dword(backend, CAP_POINTER) as u8 & 0xfc);
    while CAP_AREA.contains(&next) && caps.len() < MAX_CAPS {
        let header = read_config_dword(backend, next);
        caps.push((header as u8, next));
        next = u64::from((header >> 8) as u8 & 0xfc);
    }
    caps
}

/// The config offset of the first capability with `id`.
pub fn find_capability<B: VfioBackend>(backend: &B, id: u8) -> Option<u64> {
    capabilities(backend)
        .into_iter()
        .find_map(|(cap, offset)| (cap == id).then_some(offset))
}

/// Emulated dwords of one capability starting at a dword-aligned config offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapRegs {
    first_reg: usize,
    values: Vec<u32>,
    writable: Vec<u32>,
}

impl CapRegs {
    /// `values.len()` dwords at config byte `offset`; nothing writable yet.
    pub fn new(offset: u64, values: Vec<u32>) -> Self {
        let writable = vec![0; values.len()];
        Self {
            first_reg: (offset / 4) as usize,
            values,
            writable,
        }
    }

    /// Sets the guest-writable bits of dword `i` of the capability.
    pub fn set_writable(&mut self, i: usize, mask: u32) {
        if let Some(w) = self.writable.get_mut(i) {
            *w = mask;
        }
    }

    /// Dword `i` of the capability (0 past its end).
    pub fn get(&self, i: usize) -> u32 {
        self.values.get(i).copied().unwrap_or(0)
    }

    /// Sets dword `i` as the device model (not the guest) would.
    pub fn set(&mut self, i: usize, value: u32) {
        if let Some(v) = self.values.get_mut(i) {
            *v = value;
        }
    }

    /// Dword index within the capability of config dword `reg_idx`, if it is one of ours.
    pub fn index_of(&self, reg_idx: usize) -> Option<usize> {
        let i = reg_idx.checked_sub(self.first_reg)?;
        (i < self.values.len()).then_some(i)
    }

    /// A guest write of `data` at byte `offset` of config dword `reg_idx`; only writable bits
    /// change. False if `reg_idx` is not ours or the access leaves the dword.
    pub fn write(&mut self, reg_idx: usize, offset: usize, data: &[u8]) -> bool {
        let Some(i) = self.index_of(reg_idx) else {
            return false;
        };
        let Some(new) = pci::merge_bytes(self.values[i], offset, data) else {
            return false;
        };
        let mask = self.writable[i];
        self.values[i] = self.values[i] & !mask | new & mask;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::FakeBackend;

    /// A fake with capabilities (id, offset, next) and the status bit set.
    fn with_caps(caps: &[(u8, u8, u8)]) -> FakeBackend {
        let fake = FakeBackend::new(1, 2, false);
        fake.set_config(0x6, &[0x10]);
        fake.set_config(0x34, &[caps.first().map_or(0, |c| c.1)]);
        for &(id, offset, next) in caps {
            fake.set_config(usize::from(offset), &[id, next]);
        }
        fake
    }

    #[test]
    fn walks_the_list() {
        let fake = with_caps(&[(0x01, 0x40, 0x50), (0x05, 0x50, 0x70), (0x11, 0x70, 0)]);
        let caps = capabilities(&fake);
        assert_eq!(caps, vec![(0x01, 0x40), (0x05, 0x50), (0x11, 0x70)]);
        assert_eq!(find_capability(&fake, CAP_ID_MSIX), Some(0x70));
        assert_eq!(find_capability(&fake, 0x10), None);
    }

    #[test]
    fn survives_bad_lists() {
        let looping = with_caps(&[(0x05, 0x40, 0x40)]);
        assert_eq!(capabilities(&looping).len(), MAX_CAPS);
        let low = with_caps(&[(0x05, 0x40, 0x10)]);
        assert_eq!(capabilities(&low), vec![(0x05, 0x40)]);
        let unaligned = with_caps(&[(0x05, 0x40, 0x53), (0x11, 0x50, 0)]);
        assert_eq!(capabilities(&unaligned)[1], (0x11, 0x50));
        let no_status = with_caps(&[(0x05, 0x40, 0)]);
        no_status.set_config(0x6, &[0]);
        assert!(capabilities(&no_status).is_empty());
    }

    #[test]
    fn cap_regs_apply_write_masks() {
        let mut regs = CapRegs::new(0x50, vec![0x0080_7005, 0, 0]);
        regs.set_writable(0, 0x0071_0000);
        regs.set_writable(2, 0xffff);
        assert!(regs.write(20, 2, &[0xff, 0xff]));
        assert_eq!(regs.get(0), 0x00f1_7005);
        assert!(regs.write(22, 0, &[1, 2, 3, 4]));
        assert_eq!(regs.get(2), 0x0201);
        assert!(!regs.write(23, 0, &[1]) && !regs.write(19, 0, &[1]));
        assert!(!regs.write(20, 3, &[1, 2]));
        assert_eq!(
            (regs.index_of(21), regs.index_of(usize::MAX)),
            (Some(1), None)
        );
        regs.set(1, 7);
        assert_eq!((regs.get(1), regs.get(9)), (7, 0));
    }
}
