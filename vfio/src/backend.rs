//! The seam between the VMM and the kernel's VFIO device. [`VfioBackend`] is what the PCI
//! device model needs (region info, region read/write, interrupt counts); [`DeviceOps`] adds
//! what the VMM's wiring needs (interrupt eventfds, mmap of regions, reset), so nothing past
//! this seam sees a vfio-ioctls type.
//!
//! This module owns the traits and [`FakeBackend`], an in-memory device for tests (of this
//! crate and of the VMM). It must not open files, issue ioctls or mmap device memory: the
//! kernel-facing implementation is [`crate::host::HostDevice`].

use std::cell::RefCell;
use std::io;
use vmm_sys_util::eventfd::EventFd;

/// VFIO region index of the expansion ROM (`VFIO_PCI_ROM_REGION_INDEX`); BARs are regions 0-5.
pub const ROM_REGION: u32 = 6;
/// VFIO region index of the config space (`VFIO_PCI_CONFIG_REGION_INDEX`).
pub const CONFIG_REGION: u32 = 7;
/// VFIO IRQ index of INTx (`VFIO_PCI_INTX_IRQ_INDEX`).
pub const INTX_IRQ: u32 = 0;
/// VFIO IRQ index of MSI (`VFIO_PCI_MSI_IRQ_INDEX`).
pub const MSI_IRQ: u32 = 1;
/// VFIO IRQ index of MSI-X (`VFIO_PCI_MSIX_IRQ_INDEX`).
pub const MSIX_IRQ: u32 = 2;

/// What the kernel says about one VFIO region.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionInfo {
    /// Size in bytes (0: the region does not exist).
    pub size: u64,
    /// The region can be read.
    pub readable: bool,
    /// The region can be written.
    pub writable: bool,
    /// The region (or its sparse areas) can be mmapped.
    pub mmap: bool,
    /// If present, only these `(offset, size)` areas can be mmapped.
    pub sparse: Option<Vec<(u64, u64)>>,
}

/// A VFIO PCI device as the device model sees it.
pub trait VfioBackend: Send {
    /// Info about region `index`; `None` if the device has no such region.
    fn region(&self, index: u32) -> Option<RegionInfo>;
    /// Reads `data.len()` bytes at `offset` in region `index`.
    fn read(&self, index: u32, offset: u64, data: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `offset` in region `index`.
    fn write(&self, index: u32, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Number of interrupts behind IRQ index `index` ([`INTX_IRQ`], [`MSI_IRQ`], [`MSIX_IRQ`]).
    fn irq_count(&self, index: u32) -> u32;
}

impl<T: VfioBackend + ?Sized> VfioBackend for Box<T> {
    fn region(&self, index: u32) -> Option<RegionInfo> {
        (**self).region(index)
    }
    fn read(&self, index: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        (**self).read(index, offset, data)
    }
    fn write(&self, index: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        (**self).write(index, offset, data)
    }
    fn irq_count(&self, index: u32) -> u32 {
        (**self).irq_count(index)
    }
}

/// Host memory a device region is mapped into (a BAR's mmap, a ROM's copy): what a KVM
/// memory slot or a DMA mapping points at. It stays mapped until dropped.
pub trait HostMemory: Send {
    /// Host address.
    fn addr(&self) -> u64;
    /// Length in bytes.
    fn len(&self) -> u64;
    /// Never true: empty mappings are not made.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A VFIO device as the VMM's wiring uses it: region I/O plus interrupts, mmap and reset.
pub trait DeviceOps: VfioBackend {
    /// The device's name (PCI address or mdev UUID).
    fn name(&self) -> &str;
    /// Its IOMMU group.
    fn group(&self) -> u32;
    /// Triggers the eventfds `fds` for the vectors of IRQ index `index` (enables them).
    fn enable_irq(&self, index: u32, fds: &[&EventFd]) -> io::Result<()>;
    /// Turns IRQ index `index` off.
    fn disable_irq(&self, index: u32) -> io::Result<()>;
    /// Unmasks IRQ index `index` (INTx) when `fd` is signalled (KVM's resample on EOI).
    fn set_irq_resample(&self, index: u32, fd: &EventFd) -> io::Result<()>;
    /// Maps `len` bytes at `offset` of region `index` into the VMM's address space.
    fn mmap(&self, index: u32, offset: u64, len: u64) -> io::Result<Box<dyn HostMemory>>;
    /// Whether the device has a reset method.
    fn can_reset(&self) -> bool;
    /// Resets the device; false when it has no reset method or the reset failed.
    fn reset(&self) -> bool;
    /// Closes the device. `last_of_group`: no other device of its IOMMU group stays open, so
    /// the group may leave the container; otherwise the group must stay for the others.
    fn release(self: Box<Self>, last_of_group: bool);
}

impl<T: DeviceOps + ?Sized> DeviceOps for Box<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn group(&self) -> u32 {
        (**self).group()
    }
    fn enable_irq(&self, index: u32, fds: &[&EventFd]) -> io::Result<()> {
        (**self).enable_irq(index, fds)
    }
    fn disable_irq(&self, index: u32) -> io::Result<()> {
        (**self).disable_irq(index)
    }
    fn set_irq_resample(&self, index: u32, fd: &EventFd) -> io::Result<()> {
        (**self).set_irq_resample(index, fd)
    }
    fn mmap(&self, index: u32, offset: u64, len: u64) -> io::Result<Box<dyn HostMemory>> {
        (**self).mmap(index, offset, len)
    }
    fn can_reset(&self) -> bool {
        (**self).can_reset()
    }
    fn reset(&self) -> bool {
        (**self).reset()
    }
    fn release(self: Box<Self>, last_of_group: bool) {
        (*self).release(last_of_group)
    }
}

/// What a [`FakeBackend`] was asked about interrupts and resets, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeCall {
    /// `enable_irq(index)` with this many eventfds.
    EnableIrq(u32, usize),
    /// `disable_irq(index)`.
    DisableIrq(u32),
    /// `set_irq_resample(index)`.
    Resample(u32),
    /// `reset()`.
    Reset,
    /// `release(last_of_group)`.
    Release(bool),
}

/// Stands in for a mapped region in tests: a distinct address and a length; nothing reads or
/// writes through it (tests hand it only to fakes), so only a page is allocated.
struct FakeMemory {
    page: Vec<u8>,
    len: u64,
}

impl HostMemory for FakeMemory {
    fn addr(&self) -> u64 {
        self.page.as_ptr() as u64
    }
    fn len(&self) -> u64 {
        self.len
    }
}

/// One region of a [`FakeBackend`]: its info and contents.
#[derive(Clone, Debug, Default)]
struct FakeRegion {
    info: RegionInfo,
    bytes: Vec<u8>,
}

/// Bytes of region contents a fake keeps; the rest of a larger region reads as zero.
const FAKE_REGION_BYTES: u64 = 1 << 20;

/// An in-memory VFIO device for tests: a config space and BAR contents as byte arrays, with
/// every write recorded. Config writes land in the config bytes unchanged (no read-only bits).
#[derive(Debug, Default)]
pub struct FakeBackend {
    regions: RefCell<Vec<FakeRegion>>,
    writes: RefCell<Vec<(u32, u64, Vec<u8>)>>,
    irqs: [u32; 3],
    unreadable: RefCell<Vec<u32>>,
    name: String,
    group: u32,
    resettable: bool,
    calls: std::sync::Arc<std::sync::Mutex<Vec<FakeCall>>>,
}

impl FakeBackend {
    /// A device with a 256-byte config space (4 KiB if `pcie`) holding only these IDs.
    pub fn new(vendor_id: u16, device_id: u16, pcie: bool) -> Self {
        let fake = Self::default();
        let size = if pcie { 4096 } else { 256 };
        fake.set_region(CONFIG_REGION, region_info(size, false));
        fake.set_config(0, &vendor_id.to_le_bytes());
        fake.set_config(2, &device_id.to_le_bytes());
        fake
    }

    /// Sets region `index`'s info and zeroes its contents.
    pub fn set_region(&self, index: u32, info: RegionInfo) {
        let mut regions = self.regions.borrow_mut();
        let i = index as usize;
        if regions.len() <= i {
            regions.resize(i + 1, FakeRegion::default());
        }
        let bytes = vec![0; info.size.min(FAKE_REGION_BYTES) as usize];
        regions[i] = FakeRegion { info, bytes };
    }

    /// Sets BAR `index`'s register to `flags` (type bits) and its region to `size` bytes.
    pub fn set_bar(&self, index: u32, flags: u32, size: u64, mmap: bool) {
        self.set_config(0x10 + 4 * index as usize, &flags.to_le_bytes());
        self.set_region(index, region_info(size, mmap));
    }

    /// Writes config bytes directly (not recorded).
    pub fn set_config(&self, offset: usize, data: &[u8]) {
        self.store(CONFIG_REGION, offset as u64, data);
    }

    /// A config dword as the fake device holds it.
    pub fn config_dword(&self, offset: u64) -> u32 {
        let mut data = [0xff; 4];
        let _ = self.read(CONFIG_REGION, offset, &mut data);
        u32::from_le_bytes(data)
    }

    /// Makes every read of region `index` fail (a ROM the kernel cannot map).
    pub fn set_unreadable(&self, index: u32) {
        self.unreadable.borrow_mut().push(index);
    }

    /// Sets the number of interrupts behind IRQ index `index` (0-2).
    pub fn set_irq_count(&mut self, index: u32, count: u32) {
        if let Some(n) = self.irqs.get_mut(index as usize) {
            *n = count;
        }
    }

    /// Names the fake and puts it in IOMMU group `group`; `resettable` gives it a reset
    /// method.
    pub fn identify(&mut self, name: &str, group: u32, resettable: bool) {
        self.name = name.to_string();
        self.group = group;
        self.resettable = resettable;
    }

    /// The record of interrupt and reset calls, shared (it outlives the fake).
    pub fn calls(&self) -> std::sync::Arc<std::sync::Mutex<Vec<FakeCall>>> {
        self.calls.clone()
    }

    fn call(&self, c: FakeCall) {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push(c);
    }

    /// Every write so far as (region, offset, bytes), oldest first; clears the record.
    pub fn take_writes(&self) -> Vec<(u32, u64, Vec<u8>)> {
        std::mem::take(&mut self.writes.borrow_mut())
    }

    /// The in-range byte range `[offset, offset + len)` of region `index`, or an error.
    fn check(&self, index: u32, offset: u64, len: usize) -> io::Result<u64> {
        let regions = self.regions.borrow();
        let size = regions.get(index as usize).map_or(0, |r| r.info.size);
        offset
            .checked_add(len as u64)
            .filter(|&end| end <= size)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
    }

    fn store(&self, index: u32, offset: u64, data: &[u8]) {
        let mut regions = self.regions.borrow_mut();
        let Some(region) = regions.get_mut(index as usize) else {
            return;
        };
        for (i, &b) in data.iter().enumerate() {
            if let Some(slot) = region.bytes.get_mut(offset as usize + i) {
                *slot = b;
            }
        }
    }
}

/// A readable, writable region of `size` bytes, mmappable as a whole if `mmap`.
pub fn region_info(size: u64, mmap: bool) -> RegionInfo {
    RegionInfo {
        size,
        readable: true,
        writable: true,
        mmap,
        sparse: None,
    }
}

impl VfioBackend for FakeBackend {
    fn region(&self, index: u32) -> Option<RegionInfo> {
        let regions = self.regions.borrow();
        regions.get(index as usize).map(|r| r.info.clone())
    }

    fn read(&self, index: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        self.check(index, offset, data.len())?;
        if self.unreadable.borrow().contains(&index) {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        let regions = self.regions.borrow();
        let bytes = &regions[index as usize].bytes;
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(offset as usize + i).copied().unwrap_or(0);
        }
        Ok(())
    }

    fn write(&self, index: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check(index, offset, data.len())?;
        self.writes
            .borrow_mut()
            .push((index, offset, data.to_vec()));
        self.store(index, offset, data);
        Ok(())
    }

    fn irq_count(&self, index: u32) -> u32 {
        self.irqs.get(index as usize).copied().unwrap_or(0)
    }
}

impl DeviceOps for FakeBackend {
    fn name(&self) -> &str {
        &self.name
    }
    fn group(&self) -> u32 {
        self.group
    }
    fn enable_irq(&self, index: u32, fds: &[&EventFd]) -> io::Result<()> {
        self.call(FakeCall::EnableIrq(index, fds.len()));
        Ok(())
    }
    fn disable_irq(&self, index: u32) -> io::Result<()> {
        self.call(FakeCall::DisableIrq(index));
        Ok(())
    }
    fn set_irq_resample(&self, index: u32, _fd: &EventFd) -> io::Result<()> {
        self.call(FakeCall::Resample(index));
        Ok(())
    }
    fn mmap(&self, index: u32, offset: u64, len: u64) -> io::Result<Box<dyn HostMemory>> {
        self.check(index, offset, len as usize)?;
        Ok(Box::new(FakeMemory {
            page: vec![0; 4096],
            len,
        }))
    }
    fn can_reset(&self) -> bool {
        self.resettable
    }
    fn reset(&self) -> bool {
        self.call(FakeCall::Reset);
        self.resettable
    }
    fn release(self: Box<Self>, last_of_group: bool) {
        self.call(FakeCall::Release(last_of_group));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_reads_writes_and_records() {
        let mut fake = FakeBackend::new(0x1b36, 0x0010, true);
        assert_eq!(fake.config_dword(0), 0x0010_1b36);
        assert_eq!(fake.region(CONFIG_REGION).unwrap().size, 4096);
        fake.set_bar(0, 0x4, 0x4000, true);
        assert_eq!(fake.config_dword(0x10), 0x4);
        fake.write(0, 0x10, &[1, 2]).unwrap();
        let mut data = [0; 3];
        fake.read(0, 0x10, &mut data).unwrap();
        assert_eq!(data, [1, 2, 0]);
        assert!(fake.read(0, 0x3fff, &mut data).is_err());
        assert!(fake.write(5, 0, &[1]).is_err());
        assert_eq!(fake.take_writes(), vec![(0, 0x10, vec![1, 2])]);
        assert!(fake.take_writes().is_empty());
        fake.set_irq_count(MSIX_IRQ, 8);
        assert_eq!((fake.irq_count(MSIX_IRQ), fake.irq_count(9)), (8, 0));
    }

    #[test]
    fn large_regions_read_zero_past_the_kept_bytes() {
        let fake = FakeBackend::new(1, 2, false);
        fake.set_region(2, region_info(1 << 32, true));
        let mut data = [0xff; 8];
        fake.read(2, (1 << 32) - 8, &mut data).unwrap();
        assert_eq!(data, [0; 8]);
        fake.write(2, (1 << 32) - 8, &data).unwrap();
        assert!(fake.read(2, u64::MAX, &mut data).is_err());
    }
}
