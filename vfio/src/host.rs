//! The host side of VFIO: one container per VM, the groups in it, the devices opened from
//! them, region I/O and mmap on a device fd, DMA maps, and the locked-memory check.
//!
//! Built on vfio-ioctls, with the ioctls it lacks (device flags, a reset that reports its
//! result) called through vfio-bindings. It must not touch KVM (the VMM hands in the KVM-VFIO
//! device) nor the guest's view of the device (`VfioPciDevice`).
//!
//! vfio-ioctls detaches a whole group from the container when any one `VfioDevice` of it is
//! dropped, so devices live as long as the VM: [`VfioHost`] keeps them and is dropped last.

use crate::sysfs::{Sysfs, SysfsDevice};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::sync::Arc;
use vfio_bindings::bindings::vfio::{
    vfio_device_info, VFIO_BASE, VFIO_DEVICE_FLAGS_RESET, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE, VFIO_TYPE,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioError, VfioOps, VfioRegionInfoCap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::ioctl::ioctl_with_mut_ref;
use vmm_sys_util::{ioctl::ioctl, ioctl_io_nr};

ioctl_io_nr!(VFIO_DEVICE_GET_INFO, VFIO_TYPE as u32, VFIO_BASE + 7);
ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE as u32, VFIO_BASE + 11);

/// Host VFIO errors; each says what to do.
#[derive(Debug)]
pub enum Error {
    /// sysfs says the device cannot be used (no group, wrong driver, group not viable).
    Sysfs(crate::sysfs::Error),
    /// `/dev/vfio/vfio` is missing.
    NoVfio,
    /// The container cannot be opened for another reason.
    Container(String),
    /// `/dev/vfio/N` is missing.
    NoGroupNode {
        /// Group number.
        group: u32,
        /// Device name.
        device: String,
    },
    /// Permission denied on a VFIO node.
    Permission {
        /// Group number.
        group: u32,
        /// Device name.
        device: String,
    },
    /// Another process holds the group or device.
    Busy {
        /// Group number.
        group: u32,
        /// Device name.
        device: String,
    },
    /// Anything else vfio-ioctls reported while opening.
    Open {
        /// Device name.
        device: String,
        /// vfio-ioctls' error text.
        reason: String,
    },
    /// DMA mapping of guest RAM failed.
    DmaMap {
        /// Guest physical address.
        iova: u64,
        /// Bytes.
        size: u64,
        /// Why.
        reason: String,
    },
    /// RLIMIT_MEMLOCK lower than the guest RAM that must be pinned.
    Memlock {
        /// Current soft limit, KiB.
        limit_kib: u64,
        /// Needed.
        needed_mib: u64,
        /// Needed, in the KiB `ulimit -l` takes.
        needed_kib: u64,
    },
}

diag::wrap!(Error: Sysfs(crate::sysfs::Error));

impl diag::Explain for Error {
    fn advice(&self) -> diag::Advice {
        use diag::Advice;
        match self {
            Error::Sysfs(e) => e.advice(),
            Error::NoVfio => Advice::new(
                "no /dev/vfio/vfio: the vfio-pci driver is not loaded",
                "run modprobe vfio-pci",
            ),
            Error::Container(reason) => Advice::new(
                format!("cannot open /dev/vfio/vfio: {reason}"),
                "check that VFIO works on this host",
            ),
            Error::NoGroupNode { group, device } => Advice::new(
                format!("no /dev/vfio/{group} for {device}"),
                format!(
                    "bind it to vfio-pci (echo vfio-pci > \
                     /sys/bus/pci/devices/{device}/driver_override; \
                     echo {device} > /sys/bus/pci/drivers_probe)"
                ),
            ),
            Error::Permission { group, device } => Advice::new(
                format!("permission denied opening /dev/vfio/{group} for {device}"),
                format!(
                    "run vmm as root or give your user the group node \
                     (chown $USER /dev/vfio/{group})"
                ),
            ),
            Error::Busy { group, device } => Advice::new(
                format!(
                    "{device} (IOMMU group {group}) is busy: another process (a VMM or a host \
                     driver user) holds it"
                ),
                "stop that process first",
            ),
            Error::Open { device, reason } => Advice::new(
                format!("cannot open VFIO device {device}: {reason}"),
                "check dmesg for what the kernel's VFIO reported",
            ),
            Error::DmaMap { iova, size, reason } => Advice::new(
                format!("cannot map guest memory for device DMA at {iova:#x}+{size:#x}: {reason}"),
                "check RLIMIT_MEMLOCK (ulimit -l) and free host memory",
            ),
            Error::Memlock {
                limit_kib,
                needed_mib,
                needed_kib,
            } => Advice::new(
                format!(
                    "the locked-memory limit is {limit_kib} KiB but all {needed_mib} MiB of guest \
                     RAM must be pinned for device DMA"
                ),
                format!(
                    "raise it to {needed_kib} KiB or more (ulimit -l {needed_kib}, \
                     LimitMEMLOCK= for a systemd unit, or memlock in \
                     /etc/security/limits.conf), or run as root"
                ),
            ),
        }
    }
}
diag::explained!(Error);

/// An open device: the vfio-ioctls device plus what it does not expose.
pub struct HostDevice {
    device: VfioDevice,
    /// The device's name (PCI address or mdev UUID).
    pub name: String,
    /// IOMMU group number.
    pub group: u32,
    flags: u32,
}

impl HostDevice {
    /// Reads `data.len()` bytes at `offset` of region `index`.
    pub fn read(&self, index: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        let at = self.checked(index, offset, data.len())?;
        self.file().read_exact_at(data, at)
    }

    /// Writes `data` at `offset` of region `index`.
    pub fn write(&self, index: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let at = self.checked(index, offset, data.len())?;
        self.file().write_all_at(data, at)
    }

    /// The fd offset of `[offset, offset + len)` in region `index`, if it lies inside.
    fn checked(&self, index: u32, offset: u64, len: usize) -> std::io::Result<u64> {
        let size = self.device.get_region_size(index);
        match offset.checked_add(len as u64) {
            Some(end) if end <= size => Ok(self.device.get_region_offset(index) + offset),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{}: region {index} access {offset:#x}+{len} outside {size:#x}",
                    self.name
                ),
            )),
        }
    }

    /// The device fd as a `File` that must never be closed (ManuallyDrop).
    fn file(&self) -> std::mem::ManuallyDrop<File> {
        // SAFETY: the fd is owned by `self.device` and outlives this borrow; ManuallyDrop
        // keeps the temporary File from closing it.
        std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(self.device.as_raw_fd()) })
    }

    /// Maps `len` bytes at `offset` of region `index` into our address space (shared,
    /// read/write), for a KVM memory slot and DMA from other devices.
    ///
    /// One contiguous range made of adjacent mappings of at most [`MMAP_CHUNK`]: vfio-pci in
    /// Linux 6.1 fills the page tables of a whole mapping on its first fault (and again after
    /// every memory-decode toggle), which for a 128 GiB BAR is 32 Mi page-table entries for one
    /// guest access. Mappings of special memory are never merged, so each chunk faults on its
    /// own. The range is aligned to min(`len`, 1 GiB) so that kernels that map BARs with huge
    /// page-table entries can.
    pub fn mmap(&self, index: u32, offset: u64, len: u64) -> std::io::Result<MmapArea> {
        let at = self.checked(index, offset, len as usize)?;
        let area = MmapArea::reserve(len as usize, len.min(MMAP_ALIGN) as usize)?;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MMAP_CHUNK);
            // SAFETY: MAP_FIXED replaces part of the reservation `area` owns (nothing else
            // refers to it) with a shared mapping of the device fd; `area` unmaps it on drop.
            let addr = unsafe {
                libc::mmap(
                    area.addr.add(done as usize).cast(),
                    n as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    self.device.as_raw_fd(),
                    (at + done) as libc::off_t,
                )
            };
            if addr == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            done += n;
        }
        Ok(area)
    }

    /// Whether VFIO_DEVICE_RESET is supported.
    pub fn can_reset(&self) -> bool {
        self.flags & VFIO_DEVICE_FLAGS_RESET != 0
    }

    /// VFIO_DEVICE_RESET; false when the device has no reset method or the reset failed.
    pub fn reset(&self) -> bool {
        if !self.can_reset() {
            return false;
        }
        // SAFETY: VFIO_DEVICE_RESET takes no argument and acts only on this device fd.
        unsafe { ioctl(&*self.file(), VFIO_DEVICE_RESET()) == 0 }
    }

    /// Interrupt count of VFIO irq index `index` (0 INTx, 1 MSI, 2 MSI-X).
    pub fn irq_count(&self, index: u32) -> u32 {
        self.device.get_irq_info(index).map_or(0, |i| i.count)
    }
}

impl crate::backend::DeviceOps for HostDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn group(&self) -> u32 {
        self.group
    }

    fn enable_irq(&self, index: u32, fds: &[&EventFd]) -> std::io::Result<()> {
        self.device
            .enable_irq(index, fds.to_vec())
            .map_err(|e| std::io::Error::other(dma_text(&e)))
    }

    fn disable_irq(&self, index: u32) -> std::io::Result<()> {
        self.device
            .disable_irq(index)
            .map_err(|e| std::io::Error::other(dma_text(&e)))
    }

    fn set_irq_resample(&self, index: u32, fd: &EventFd) -> std::io::Result<()> {
        self.device
            .set_irq_resample_fd(index, vec![fd])
            .map_err(|e| std::io::Error::other(dma_text(&e)))
    }

    fn mmap(
        &self,
        index: u32,
        offset: u64,
        len: u64,
    ) -> std::io::Result<Box<dyn crate::backend::HostMemory>> {
        Ok(Box::new(HostDevice::mmap(self, index, offset, len)?))
    }

    fn can_reset(&self) -> bool {
        HostDevice::can_reset(self)
    }

    fn reset(&self) -> bool {
        HostDevice::reset(self)
    }

    /// The last device of its group is dropped: vfio-ioctls then takes the group out of the
    /// KVM-VFIO device and the container (the container's IOMMU, and every DMA mapping in it,
    /// goes with its last group). Any other device only closes its file: vfio-ioctls would
    /// detach the whole group on any device's drop, under the feet of the group's other
    /// devices, so this one is forgotten instead (a few bytes stay allocated).
    fn release(self: Box<Self>, last_of_group: bool) {
        if last_of_group {
            drop(self);
            return;
        }
        let fd = self.device.as_raw_fd();
        // SAFETY: `fd` is this device's VFIO file, owned by `self.device`; it is closed once
        // here and the device is forgotten, so nothing closes or uses it again.
        unsafe { libc::close(fd) };
        std::mem::forget(self);
    }
}

impl crate::backend::HostMemory for MmapArea {
    fn addr(&self) -> u64 {
        MmapArea::addr(self) as u64
    }

    fn len(&self) -> u64 {
        MmapArea::len(self) as u64
    }
}

impl crate::backend::VfioBackend for HostDevice {
    fn region(&self, index: u32) -> Option<crate::backend::RegionInfo> {
        let size = self.device.get_region_size(index);
        let flags = self.device.get_region_flags(index);
        let sparse = self
            .device
            .get_region_caps(index)
            .into_iter()
            .find_map(|cap| match cap {
                VfioRegionInfoCap::SparseMmap(s) => {
                    Some(s.areas.iter().map(|a| (a.offset, a.size)).collect())
                }
                _ => None,
            });
        (size > 0).then_some(crate::backend::RegionInfo {
            size,
            readable: flags & VFIO_REGION_INFO_FLAG_READ != 0,
            writable: flags & VFIO_REGION_INFO_FLAG_WRITE != 0,
            mmap: flags & VFIO_REGION_INFO_FLAG_MMAP != 0,
            sparse,
        })
    }

    fn read(&self, index: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        HostDevice::read(self, index, offset, data)
    }

    fn write(&self, index: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        HostDevice::write(self, index, offset, data)
    }

    fn irq_count(&self, index: u32) -> u32 {
        HostDevice::irq_count(self, index)
    }
}

/// A mapping of part of a device region.
pub struct MmapArea {
    addr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory of the device; the pointer is only handed to
// KVM (as a memory slot) and unmapped once, on drop.
unsafe impl Send for MmapArea {}
// SAFETY: as above; MmapArea itself never reads or writes through the pointer.
unsafe impl Sync for MmapArea {}

impl MmapArea {
    /// `len` bytes of address space, aligned to `align` (a power of two), that nothing can
    /// access until parts are mapped over it with MAP_FIXED.
    fn reserve(len: usize, align: usize) -> std::io::Result<Self> {
        let padded = len + align;
        // SAFETY: a fresh inaccessible anonymous mapping at an address of the kernel's choosing.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                padded,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let start = raw as usize;
        let aligned = start.next_multiple_of(align);
        let (head, tail) = (aligned - start, padded - (aligned - start) - len);
        // SAFETY: both ranges are parts of the reservation just made that nothing refers to.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((aligned + len) as *mut libc::c_void, tail);
            }
        }
        Ok(Self {
            addr: aligned as *mut u8,
            len,
        })
    }

    /// Host address of the mapping.
    pub fn addr(&self) -> *mut u8 {
        self.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: empty mappings are not created.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for MmapArea {
    fn drop(&mut self) {
        // SAFETY: addr/len are exactly what mmap returned, unmapped only here.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

/// Most bytes of a BAR one mmap covers (see [`HostDevice::mmap`]): what Linux 6.1 fills
/// the page tables of on one fault (65536 entries).
pub const MMAP_CHUNK: u64 = 256 << 20;
/// Alignment of a BAR's mapping when it is at least this large.
const MMAP_ALIGN: u64 = 1 << 30;

/// DMA maps and unmaps in the VM's container, for the code that keeps BARs mapped for
/// peer-to-peer DMA; holds the container open.
#[derive(Clone)]
pub struct Dma {
    container: Arc<VfioContainer>,
}

impl Dma {
    /// The container's DMA maps, for BARs that follow the guest's programming.
    pub fn dma(&self) -> Dma {
        Dma {
            container: self.container.clone(),
        }
    }

    /// Maps `[host, host + size)` for device DMA at `iova`.
    ///
    /// # Safety
    /// As [`VfioHost::map_dma`]: the range stays mapped in this process until it is unmapped
    /// here or the container is closed.
    pub unsafe fn map(&self, iova: u64, size: u64, host: *mut u8) -> Result<(), String> {
        // SAFETY: the caller upholds vfio_dma_map's contract (see above).
        unsafe { self.container.vfio_dma_map(iova, size as usize, host) }.map_err(|e| dma_text(&e))
    }

    /// Unmaps `[iova, iova + size)`.
    pub fn unmap(&self, iova: u64, size: u64) -> Result<(), String> {
        self.container
            .vfio_dma_unmap(iova, size as usize)
            .map_err(|e| dma_text(&e))
    }
}

/// A VFIO DMA error with the kernel's errno.
fn dma_text(e: &VfioError) -> String {
    use std::error::Error as _;
    match e.source() {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// The VM's one VFIO container and every device opened into it.
pub struct VfioHost {
    container: Arc<VfioContainer>,
    sysfs: Sysfs,
    /// Devices open per IOMMU group.
    open: std::sync::Mutex<std::collections::HashMap<u32, usize>>,
}

impl VfioHost {
    /// Opens the container, attached to the KVM-VFIO device `kvm_vfio`.
    pub fn new(kvm_vfio: VfioDeviceFd, sysfs: Sysfs) -> Result<Self, Error> {
        let container = VfioContainer::new(Some(Arc::new(kvm_vfio))).map_err(|e| match e {
            VfioError::OpenContainer(io) if io.kind() == std::io::ErrorKind::NotFound => {
                Error::NoVfio
            }
            e => Error::Container(e.to_string()),
        })?;
        Ok(Self {
            container: Arc::new(container),
            sysfs,
            open: Default::default(),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u32, usize>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes `dev`; its group leaves the container with its last open device.
    pub fn release(&self, dev: Box<dyn crate::backend::DeviceOps>) {
        let group = dev.group();
        let last = {
            let mut counts = self.counts();
            let n = counts.entry(group).or_insert(1);
            *n -= 1;
            let last = *n == 0;
            if last {
                counts.remove(&group);
            }
            last
        };
        dev.release(last);
    }

    /// Whether no device is open: the container then has no group and no IOMMU, and guest
    /// RAM must be mapped again for the next device.
    pub fn is_empty(&self) -> bool {
        self.counts().is_empty()
    }

    /// Checks `dev` (see [`check_usable`]), then opens it; its group joins the container
    /// once and is shared with the group's other devices.
    pub fn open(&self, dev: &SysfsDevice) -> Result<HostDevice, Error> {
        let group = check_usable(&self.sysfs, dev)?;
        let ops: Arc<dyn VfioOps> = self.container.clone();
        let device =
            VfioDevice::new(&dev.path, ops, false).map_err(|e| open_error(e, group, dev))?;
        let flags = device_flags(&device);
        *self.counts().entry(group).or_insert(0) += 1;
        Ok(HostDevice {
            device,
            name: dev.name.clone(),
            group,
            flags,
        })
    }

    /// The container's DMA maps, for BARs that follow the guest's programming.
    pub fn dma(&self) -> Dma {
        Dma {
            container: self.container.clone(),
        }
    }

    /// Maps `[host, host + size)` for device DMA at `iova`.
    ///
    /// # Safety
    /// The range must stay mapped in this process for as long as the container exists and
    /// must not be referenced by Rust references (devices write it at any time).
    pub unsafe fn map_dma(&self, iova: u64, size: u64, host: *mut u8) -> Result<(), Error> {
        // SAFETY: the caller upholds vfio_dma_map's contract (see above).
        unsafe { self.container.vfio_dma_map(iova, size as usize, host) }.map_err(|e| {
            Error::DmaMap {
                iova,
                size,
                reason: e.to_string(),
            }
        })
    }
}

/// What sysfs can tell before anything is opened: `dev` has an IOMMU group, is bound to
/// vfio-pci, and every other member of its group is harmless. Returns the group.
pub fn check_usable(sysfs: &Sysfs, dev: &SysfsDevice) -> Result<u32, Error> {
    let group = sysfs.require_group(dev)?;
    sysfs.require_vfio_pci(dev)?;
    sysfs.check_viable(group)?;
    Ok(group)
}

fn open_error(e: VfioError, group: u32, dev: &SysfsDevice) -> Error {
    let device = dev.name.clone();
    let errno = match &e {
        VfioError::OpenGroup(io, _) => io.raw_os_error(),
        VfioError::GroupGetDeviceFD(sys) => Some(sys.errno()),
        _ => None,
    };
    match errno {
        Some(libc::ENOENT) => Error::NoGroupNode { group, device },
        Some(libc::EACCES) | Some(libc::EPERM) => Error::Permission { group, device },
        Some(libc::EBUSY) => Error::Busy { group, device },
        _ => Error::Open {
            device,
            reason: e.to_string(),
        },
    }
}

/// VFIO_DEVICE_GET_INFO flags (vfio-ioctls keeps them private).
fn device_flags(device: &VfioDevice) -> u32 {
    let mut info = vfio_device_info {
        argsz: std::mem::size_of::<vfio_device_info>() as u32,
        ..Default::default()
    };
    // SAFETY: the kernel writes at most argsz bytes into `info`, which lives across the call.
    let ret = unsafe { ioctl_with_mut_ref(device, VFIO_DEVICE_GET_INFO(), &mut info) };
    if ret == 0 {
        info.flags
    } else {
        0
    }
}

/// The locked-memory limit that VFIO's pinning of guest RAM counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemlockLimit {
    /// CAP_IPC_LOCK (root): RLIMIT_MEMLOCK does not apply.
    IpcLock,
    /// The soft RLIMIT_MEMLOCK is unlimited (or cannot be read).
    Unlimited,
    /// The soft RLIMIT_MEMLOCK, in bytes.
    Bytes(u64),
}

impl MemlockLimit {
    /// This process's limit.
    pub fn current() -> Self {
        if has_ipc_lock() {
            return Self::IpcLock;
        }
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into `lim`.
        if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
            return Self::Unlimited;
        }
        Self::from_rlimit(lim.rlim_cur)
    }

    fn from_rlimit(limit: libc::rlim_t) -> Self {
        match limit {
            libc::RLIM_INFINITY => Self::Unlimited,
            n => Self::Bytes(n),
        }
    }

    /// Whether `bytes` of guest RAM can be pinned; otherwise [`Error::Memlock`] says how far
    /// to raise the limit.
    pub fn check(self, bytes: u64) -> Result<(), Error> {
        match self {
            Self::Bytes(limit) if limit < bytes => Err(Error::Memlock {
                limit_kib: limit >> 10,
                needed_mib: bytes.div_ceil(1 << 20),
                needed_kib: bytes.div_ceil(1 << 10),
            }),
            _ => Ok(()),
        }
    }
}

/// Checks RLIMIT_MEMLOCK against `bytes` of guest RAM that VFIO will pin. A process with
/// CAP_IPC_LOCK (root) is not limited by it.
pub fn check_memlock(bytes: u64) -> Result<(), Error> {
    MemlockLimit::current().check(bytes)
}

/// CAP_IPC_LOCK (bit 14) in the effective set, from /proc/self/status.
fn has_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_limits() {
        let verdict = |limit, bytes| MemlockLimit::from_rlimit(limit).check(bytes);
        assert_eq!(
            MemlockLimit::from_rlimit(libc::RLIM_INFINITY),
            MemlockLimit::Unlimited
        );
        assert!(verdict(libc::RLIM_INFINITY, 1 << 40).is_ok());
        assert!(MemlockLimit::IpcLock.check(1 << 40).is_ok());
        assert!(verdict(1 << 30, 1 << 30).is_ok());
        let e = verdict(64 << 10, 512 << 20).unwrap_err().to_string();
        assert_eq!(
            e,
            "the locked-memory limit is 64 KiB but all 512 MiB of guest RAM must be pinned for \
             device DMA; raise it to 524288 KiB or more (ulimit -l 524288, LimitMEMLOCK= for a \
             systemd unit, or memlock in /etc/security/limits.conf), or run as root"
        );
    }

    #[test]
    fn problem_and_fix_apart() {
        use diag::Explain;
        let (group, device) = (3, "0000:00:03.0".to_string());
        let a = Error::Permission {
            group,
            device: device.clone(),
        }
        .advice();
        assert_eq!(
            a.problem,
            "permission denied opening /dev/vfio/3 for 0000:00:03.0"
        );
        assert!(a.fix.starts_with("run vmm as root or "), "{a:?}");
        let a = Error::NoGroupNode { group, device }.advice();
        assert_eq!(a.problem, "no /dev/vfio/3 for 0000:00:03.0");
        assert!(a.fix.starts_with("bind it to vfio-pci ("), "{a:?}");
        let e = MemlockLimit::Bytes(64 << 10).check(1 << 30).unwrap_err();
        let a = e.advice();
        assert!(
            a.problem.ends_with("must be pinned for device DMA"),
            "{a:?}"
        );
        assert!(
            a.fix.starts_with("raise it to 1048576 KiB or more"),
            "{a:?}"
        );
        assert_eq!(e.to_string(), format!("{}; {}", a.problem, a.fix));
    }

    #[test]
    fn open_errors_by_errno() {
        let dev = SysfsDevice {
            name: "0000:00:03.0".into(),
            path: "/sys/devices/pci0000:00/0000:00:03.0".into(),
        };
        let io = |errno| VfioError::OpenGroup(std::io::Error::from_raw_os_error(errno), "3".into());
        assert!(matches!(
            open_error(io(libc::ENOENT), 3, &dev),
            Error::NoGroupNode { group: 3, .. }
        ));
        assert!(matches!(
            open_error(io(libc::EACCES), 3, &dev),
            Error::Permission { .. }
        ));
        let busy = open_error(io(libc::EBUSY), 3, &dev).to_string();
        assert!(
            busy.starts_with("0000:00:03.0 (IOMMU group 3) is busy"),
            "{busy}"
        );
        let sys = VfioError::GroupGetDeviceFD(vmm_sys_util::errno::Error::new(libc::EBUSY));
        assert!(matches!(open_error(sys, 3, &dev), Error::Busy { .. }));
        let other = open_error(VfioError::GroupViable, 3, &dev).to_string();
        assert!(other.contains("group is not viable"), "{other}");
    }
}
