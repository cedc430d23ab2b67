//! Shared helpers of the fuzz targets: a byte reader that turns fuzzer input into operations
//! (every read succeeds: past the end it yields zeros), and the fake passed-through device
//! the config-space and MSI-X targets drive.
//!
//! The input formats are documented in each target and produced by `gen_seeds.py`; keep the
//! three in step.

use vfio::backend::{region_info, MSIX_IRQ, MSI_IRQ};
use vfio::{FakeBackend, VfioBackend, CONFIG_REGION, ROM_REGION};

/// A cursor over fuzzer input. Reads past the end return zeros and set [`Reader::is_empty`],
/// so decoding never fails and the fuzzer controls everything that matters.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// True when every byte has been consumed.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// The next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// The next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// The next little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// The next `len` bytes (zero-padded past the end).
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.u8()).collect()
    }

    /// An access length as a bus could hand it over: one byte `b` selects 1, 2, 4 or 8 most
    /// of the time, else 0-16 (odd sizes, empty, longer than a dword).
    pub fn access_len(&mut self) -> usize {
        let b = self.u8();
        match b >> 6 {
            0 => 1 << (b & 3),
            1 => 4,
            2 => 2,
            _ => usize::from(b & 0xf) + usize::from(b >> 4 & 1),
        }
    }

    /// A length byte followed by that many data bytes.
    pub fn access_data(&mut self) -> Vec<u8> {
        let len = self.access_len();
        self.bytes(len)
    }
}

/// Capability offsets of the template device.
pub const PM_CAP: usize = 0x40;
/// MSI capability offset of the template device.
pub const MSI_CAP: usize = 0x50;
/// MSI-X capability offset of the template device.
pub const MSIX_CAP: usize = 0x70;

/// An NVMe-like PCIe device (the one the vfio crate's own tests use): 64-bit BAR0 of 16 KiB
/// with the MSI-X table (8 vectors) at 0x2000 and PBA at 0x3000, a 32-bit prefetchable BAR2
/// of 1 MiB, an I/O BAR3 of 256 ports, a 32 KiB ROM, a multi-function header, interrupt pin
/// A, capabilities PM (0x40), MSI (0x50: 64-bit, per-vector masking, 4 vectors) and MSI-X
/// (0x70).
pub fn template(pcie: bool) -> FakeBackend {
    let mut fake = FakeBackend::new(0x8086, 0x0953, pcie);
    fake.set_config(0x06, &[0x10, 0x00]);
    fake.set_config(0x0e, &[0x80]);
    fake.set_config(0x34, &[PM_CAP as u8]);
    fake.set_config(0x3c, &[0x0b, 0x01]);
    fake.set_config(PM_CAP, &[0x01, MSI_CAP as u8, 0x03, 0x00]);
    fake.set_config(MSI_CAP, &[0x05, MSIX_CAP as u8, 0x84, 0x01]);
    fake.set_config(MSIX_CAP, &[0x11, 0x00, 0x07, 0x00]);
    fake.set_config(MSIX_CAP + 4, &0x2000u32.to_le_bytes());
    fake.set_config(MSIX_CAP + 8, &0x3000u32.to_le_bytes());
    fake.set_bar(0, 0x4, 0x4000, true);
    fake.set_bar(2, 0x8, 0x10_0000, true);
    fake.set_bar(3, 0x1, 0x100, false);
    fake.set_region(ROM_REGION, region_info(0x8000, false));
    fake.set_irq_count(MSI_IRQ, 4);
    fake.set_irq_count(MSIX_IRQ, 8);
    fake
}

/// Largest region a shape byte asks for: the fake keeps at most 1 MiB of contents, the rest
/// reads as zero, so big BARs cost nothing.
const MAX_REGION_LOG2: u8 = 40;

/// Builds the fake device an input describes, consuming its "shape" prefix:
///
/// - 1 byte: bit 0 set = conventional (256-byte) config space, else PCIe (4 KiB);
/// - 7 bytes, one per VFIO region BAR0-5 and ROM: 0 keeps the template's region, 0xff
///   removes it, else size `1 << (b & 0x3f)` (at most 2^40; plus 0x100 if bit 7 is set, a
///   size that is no power of two), mmappable if bit 6 is set;
/// - 1 byte n, then n % 64 config patches of 3 bytes: offset (u16 LE, modulo the config
///   size) and the byte to store there (IDs, BAR type bits, capability lists...).
pub fn shaped_backend(r: &mut Reader) -> FakeBackend {
    let pcie = r.u8() & 1 == 0;
    let fake = template(pcie);
    for index in 0..=ROM_REGION {
        let b = r.u8();
        match b {
            0 => {}
            0xff => fake.set_region(index, region_info(0, false)),
            _ => {
                let size = (1u64 << (b & 0x3f).min(MAX_REGION_LOG2)) + u64::from(b >> 7) * 0x100;
                fake.set_region(index, region_info(size, b & 0x40 != 0));
            }
        }
    }
    let config_size = fake.region(CONFIG_REGION).map_or(256, |r| r.size);
    for _ in 0..r.u8() % 64 {
        let offset = u64::from(r.u16()) % config_size;
        fake.set_config(offset as usize, &[r.u8()]);
    }
    fake
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_pads_with_zeros() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), 0x0201);
        assert!(!r.is_empty());
        assert_eq!(r.u32(), 3);
        assert!(r.is_empty());
        assert_eq!(r.bytes(2), vec![0, 0]);
    }

    #[test]
    fn access_lengths() {
        let lens: Vec<usize> = [0x00, 0x01, 0x02, 0x03, 0x40, 0x80, 0xc0, 0xcf, 0xdf]
            .iter()
            .map(|&b| Reader::new(&[b]).access_len())
            .collect();
        assert_eq!(lens, vec![1, 2, 4, 8, 4, 2, 0, 15, 16]);
    }

    /// Every pci_config seed describes a device the model accepts (else it tests nothing).
    #[test]
    fn pci_config_seeds_build_devices() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/pci_config");
        let mut seeds = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let fake = shaped_backend(&mut Reader::new(&data));
            let dev = vfio::VfioPciDevice::new(fake);
            assert!(dev.is_ok(), "{}: {:?}", path.display(), dev.err());
            seeds += 1;
        }
        assert!(seeds >= 5);
    }

    #[test]
    fn template_is_a_valid_device() {
        let mut r = Reader::new(&[]);
        let dev = vfio::VfioPciDevice::new(shaped_backend(&mut r)).unwrap();
        assert_eq!(dev.msix().unwrap().entries.len(), 8);
        assert!(dev.msi().is_some());
    }
}
