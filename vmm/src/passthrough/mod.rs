//! Passthrough wiring: the guest PCI bus with its VFIO devices, their BARs placed before boot
//! (the 64-bit ones in a window sized for them, checked against the guest's physical address
//! width) and then kept where the guest puts them ([`bars`]: KVM memory slots, DMA mappings for
//! peer-to-peer, bus entries, the ROM as read-only memory), and each device's interrupts
//! ([`irqs`]) kept matching what the guest programmed.
//!
//! Lock order: a config-space access holds its `ConfigAccess` lock, then briefly the root's,
//! then the `BarMapper`'s; the mapper takes a device's lock only to read its BAR plan and
//! never while changing a bus. A device model's lock is taken before its `DeviceIrqs` lock.
//! Buses never hold their map lock while calling a device.

mod bars;
mod describe;
mod dma;
mod irqs;
mod p2p;

pub use dma::progress_text;

use crate::config::{format_size, DeviceConfig};
use crate::interrupts::IrqRouter;
use arch::GuestMemoryMmap;
use bars::{BarMapper, KvmDma, KvmMaps, Part, RomMemory};
use devices::{Bus, BusDevice};
use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use kvm_ioctls::VmFd;
use pci::{BarKind, PciConfigIo, PciConfigMmio, PciDevice, PciResources, PciRoot, PciWindows};
use resources::layout::PCI_ECAM_START;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use vfio::backend::INTX_IRQ;
use vfio::host::{HostDevice, VfioHost};
use vfio::{RomSource, SegmentKind, Sysfs, SysfsDevice, VfioPciDevice};
use vfio_ioctls::VfioDeviceFd;

/// Config dword holding interrupt line (byte 0) and pin (byte 1).
const INTERRUPT_REG: usize = 0x3c / 4;
/// Largest `romfile=`: a ROM BAR decodes at most 2 GiB.
const MAX_ROMFILE: u64 = 1 << 31;

/// Errors attaching passed-through devices.
#[derive(Debug)]
pub enum Error {
    /// The host side refused (group, driver, permissions, memlock, DMA).
    Host(vfio::host::Error),
    /// sysfs lookups failed.
    Sysfs(vfio::sysfs::Error),
    /// The device's config space cannot be modelled.
    Model {
        /// Device name.
        device: String,
        /// Why.
        source: vfio::Error,
    },
    /// No room for BARs or slots.
    Resources {
        /// Device name.
        device: String,
        /// Why.
        source: pci::Error,
    },
    /// A KVM call failed.
    Kvm {
        /// What.
        what: &'static str,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// mmap of a BAR failed.
    Mmap {
        /// Device name.
        device: String,
        /// BAR index.
        bar: u8,
        /// Why.
        source: std::io::Error,
    },
    /// Two `--device` options name the same host device.
    SameDevice {
        /// The first spec.
        first: String,
        /// The second spec.
        second: String,
        /// The device both resolve to.
        device: String,
    },
    /// Bus layout clash (a bug).
    Bus(devices::bus::Error),
    /// A 64-bit BAR does not fit below the guest's physical address width.
    BarTooLarge(TooLarge),
    /// The background mapper thread could not be started.
    Thread {
        /// Why.
        source: std::io::Error,
    },
    /// A `romfile=` that cannot be served.
    RomFile {
        /// The device as given.
        device: String,
        /// The path given.
        path: String,
        /// Why.
        reason: String,
    },
}

impl diag::Explain for Error {
    fn advice(&self) -> diag::Advice {
        use diag::Advice;
        match self {
            Error::Host(e) => e.advice(),
            Error::Sysfs(e) => e.advice(),
            Error::Model { device, source } => source.advice().within(device),
            Error::Resources { device, source } => source.advice().within(device),
            Error::Kvm { what, source } => Advice::new(
                format!("KVM: cannot {what}: {source}"),
                "check that KVM works on this host (dmesg)",
            ),
            Error::Mmap {
                device,
                bar,
                source,
            } => Advice::new(
                format!("{device}: cannot mmap BAR {bar}: {source}"),
                "check dmesg for what vfio-pci reported",
            ),
            Error::SameDevice {
                first,
                second,
                device,
            } => Advice::new(
                format!("--device {first} and --device {second} are the same device {device}"),
                "give each device once",
            ),
            Error::Bus(e) => e.advice(),
            Error::BarTooLarge(t) => Advice::new(t.problem.clone(), t.fix.clone()),
            Error::Thread { source } => Advice::new(
                format!(
                    "cannot start the thread that maps large BARs for peer-to-peer DMA: {source}"
                ),
                "check the process's limits (ulimit -u) and free memory",
            ),
            Error::RomFile {
                device,
                path,
                reason,
            } => Advice::new(
                format!("romfile '{path}' of --device {device}: {reason}"),
                "give a readable ROM image of 1 byte to 2 GiB (e.g. a VBIOS dump, see the \
                 README's GPU section) or drop romfile=",
            ),
        }
    }
}
diag::explained!(Error);
diag::wrap!(Error:
    Host(vfio::host::Error),
    Sysfs(vfio::sysfs::Error),
    Bus(devices::bus::Error),
);

type Device = Arc<Mutex<VfioPciDevice<HostDevice>>>;

/// A passed-through device: its model and its interrupt wiring.
struct Passed {
    model: Device,
    irqs: Mutex<irqs::DeviceIrqs>,
}

impl Passed {
    /// Rewires interrupts if the guest changed MSI/MSI-X programming.
    fn sync_irqs(&self, model: &mut VfioPciDevice<HostDevice>) {
        if !model.take_interrupt_changes().is_empty() {
            self.irqs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .sync(model);
        }
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A BAR part that is trapped: forwards to the device with the part's offset in the BAR.
struct TrappedPart {
    device: Arc<Passed>,
    bar: u8,
    offset: u64,
}

impl BusDevice for TrappedPart {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let at = self.offset + offset;
        let mut model = lock(&self.device.model);
        // The PBA shows which masked vectors fired: their eventfds hold a count.
        if model
            .msix_pba()
            .is_some_and(|a| a.bar == self.bar && a.range.contains(&at))
        {
            lock(&self.device.irqs).refresh_pending(&mut model);
        }
        model.bar_read(self.bar, at, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut model = lock(&self.device.model);
        model.bar_write(self.bar, self.offset + offset, data);
        self.device.sync_irqs(&mut model);
    }
}

/// A config-space access path (mechanism #1 or ECAM) that applies BAR moves and interrupt
/// reprogramming after each write.
struct ConfigAccess<D: BusDevice> {
    inner: D,
    root: Arc<Mutex<PciRoot>>,
    mapper: Arc<Mutex<BarMapper>>,
    devices: Arc<Vec<Arc<Passed>>>,
}

impl<D: BusDevice> BusDevice for ConfigAccess<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.inner.read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.inner.write(offset, data);
        let moves = lock(&self.root).take_bar_moves();
        if !moves.is_empty() {
            let mut mapper = lock(&self.mapper);
            for (slot, mv) in &moves {
                mapper.apply(*slot, mv);
            }
        }
        for device in self.devices.iter() {
            device.sync_irqs(&mut lock(&device.model));
        }
    }
}

/// Everything passthrough needs to stay alive for the VM's lifetime.
pub struct Passthrough {
    /// The container and its devices' host side, when devices were given (dropped last).
    pub host: Option<VfioHost>,
    /// Windows BARs are allocated from (for ACPI).
    pub windows: PciWindows,
    devices: Arc<Vec<Arc<Passed>>>,
    mapper: Arc<Mutex<BarMapper>>,
}

/// One passed-through device as `vm.info` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceInfo {
    /// Its id (`id=`, else its host name).
    pub id: String,
    /// The host device.
    pub host: String,
    /// Its guest PCI address.
    pub bdf: String,
}

impl Passthrough {
    /// What `vm.info` lists.
    pub fn info(&self) -> Vec<DeviceInfo> {
        Vec::new()
    }

    /// Quiesces every device before it is released (the vCPUs are stopped): no more DMA
    /// mappings made in the background, interrupts off and unwired from KVM, then a device
    /// reset where the device has one.
    pub fn shutdown(&self) {
        lock(&self.mapper).stop_worker();
        for device in self.devices.iter() {
            let model = lock(&device.model);
            let host = model.backend();
            lock(&device.irqs).teardown(host);
            if host.can_reset() && !host.reset() {
                log::warn!("{}: reset at shutdown failed", host.name);
            }
        }
    }
}

/// What the PCI setup needs from the builder.
pub struct Setup<'a> {
    /// The VM.
    pub vm: &'a Arc<VmFd>,
    /// Guest RAM (mapped for DMA).
    pub memory: &'a GuestMemoryMmap,
    /// RAM size.
    pub mem_size: u64,
    /// The guest's physical address width (CPUID 0x80000008): BARs must end below
    /// `1 << phys_bits`.
    pub phys_bits: u8,
    /// The widest the host's KVM allows (for the advice when BARs do not fit).
    pub kvm_phys_bits: u8,
    /// Threads started here install their seccomp filter (`--seccomp=on`).
    pub seccomp: bool,
    /// PIO bus.
    pub pio: &'a Arc<Bus>,
    /// MMIO bus.
    pub mmio: &'a Arc<Bus>,
}

/// Puts a PCI bus in the guest with every `--device` on it: checks and opens them, places
/// their BARs, maps guest RAM for their DMA and wires their interrupts. Without devices, just
/// the host bridge.
pub fn attach(setup: &Setup, devices: &[DeviceConfig]) -> Result<Passthrough, Error> {
    let root = Arc::new(Mutex::new(PciRoot::new()));
    let (host, windows, mapper, passed) = if devices.is_empty() {
        let maps = KvmMaps::new(setup.vm.clone(), KvmDma::new(None));
        let mapper = BarMapper::new(Box::new(maps), setup.pio, setup.mmio);
        let windows = PciWindows::new(setup.mem_size, 0);
        (None, windows, Arc::new(Mutex::new(mapper)), Vec::new())
    } else {
        let roms = read_romfiles(devices)?;
        let (host, found) = open_host(setup, devices)?;
        let mut opened = open_devices(&host, &found, devices, roms)?;
        let windows = place_bars(setup, &mut opened)?;
        let dma = KvmDma::new(Some(host.dma()));
        let maps = KvmMaps::new(setup.vm.clone(), dma.clone());
        let mapper = Arc::new(Mutex::new(BarMapper::new(
            Box::new(maps),
            setup.pio,
            setup.mmio,
        )));
        let passed = add_devices(setup, opened, &root, &mapper)?;
        start_worker(&mut lock(&mapper), dma, setup.seccomp)?;
        dma::map_guest_ram(&host, setup.memory)?;
        (Some(host), windows, mapper, passed)
    };
    let devices = Arc::new(passed);
    let io = ConfigAccess {
        inner: PciConfigIo::new(root.clone()),
        root: root.clone(),
        mapper: mapper.clone(),
        devices: devices.clone(),
    };
    setup.pio.insert_named(
        "pci-config",
        Arc::new(Mutex::new(io)),
        pci::PCI_CONFIG_IO_PORT,
        pci::PCI_CONFIG_IO_SIZE,
    )?;
    let mapper_ref = mapper.clone();
    let ecam = ConfigAccess {
        inner: PciConfigMmio::new(root.clone()),
        root,
        mapper,
        devices: devices.clone(),
    };
    setup.mmio.insert_named(
        "pci-ecam",
        Arc::new(Mutex::new(ecam)),
        PCI_ECAM_START,
        pci::ECAM_SIZE,
    )?;
    Ok(Passthrough {
        host,
        windows,
        devices,
        mapper: mapper_ref,
    })
}

/// Starts the background mapper of large BARs ([`p2p`]) when some BAR needs it.
fn start_worker(mapper: &mut BarMapper, dma: KvmDma, seccomp: bool) -> Result<(), Error> {
    if mapper.needs_worker() {
        let worker = p2p::DmaWorker::start(Box::new(dma), p2p::CHUNK, seccomp)
            .map_err(|source| Error::Thread { source })?;
        mapper.set_worker(worker, p2p::ASYNC_FROM);
    }
    Ok(())
}

/// Refuses two `--device` options that resolve to the same host device (a BDF written two
/// ways, a sysfs path and an address). Devices that do not resolve are left to the checks
/// that open them, which say why.
pub fn check_distinct(devices: &[DeviceConfig]) -> Result<(), Error> {
    check_distinct_in(&Sysfs::default(), devices)
}

fn check_distinct_in(sysfs: &Sysfs, devices: &[DeviceConfig]) -> Result<(), Error> {
    let mut seen: HashMap<std::path::PathBuf, String> = HashMap::new();
    for cfg in devices {
        let Ok(dev) = sysfs.device(cfg.spec()) else {
            continue;
        };
        if let Some(first) = seen.insert(dev.path.clone(), cfg.spec()) {
            return Err(Error::SameDevice {
                first,
                second: cfg.spec(),
                device: dev.name,
            });
        }
    }
    Ok(())
}

/// The ROM each device shows: `rombar=off` none, `romfile=` the file's bytes (read now, so a
/// bad path is refused before anything is opened), else the device's own.
fn read_romfiles(devices: &[DeviceConfig]) -> Result<Vec<RomSource>, Error> {
    devices
        .iter()
        .map(|cfg| match (&cfg.romfile, cfg.rombar) {
            (_, false) => Ok(RomSource::Hidden),
            (None, true) => Ok(RomSource::Device),
            (Some(path), true) => {
                read_romfile(path)
                    .map(RomSource::Image)
                    .map_err(|reason| Error::RomFile {
                        device: cfg.spec(),
                        path: path.display().to_string(),
                        reason,
                    })
            }
        })
        .collect()
}

/// A ROM image file's bytes, or why it cannot be one (the reason of [`Error::RomFile`], and of
/// `vmm check`'s ROM line).
pub fn read_romfile(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
    if meta.is_dir() {
        return Err("is a directory".into());
    }
    if meta.len() > MAX_ROMFILE {
        return Err(format!(
            "{} is larger than a ROM BAR",
            format_size(meta.len())
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.is_empty() {
        return Err("is empty".into());
    }
    Ok(bytes)
}

/// Checks every device through sysfs (the most precise messages), the memlock limit, then
/// opens the container.
fn open_host(
    setup: &Setup,
    devices: &[DeviceConfig],
) -> Result<(VfioHost, Vec<SysfsDevice>), Error> {
    let sysfs = Sysfs::default();
    let mut found = Vec::new();
    for cfg in devices {
        let dev = sysfs.device(cfg.spec())?;
        vfio::host::check_usable(&sysfs, &dev)?;
        found.push(dev);
    }
    vfio::host::check_memlock(setup.mem_size)?;
    let mut kvm_vfio = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
        fd: 0,
        flags: 0,
    };
    let kvm_vfio = setup
        .vm
        .create_device(&mut kvm_vfio)
        .map_err(|source| Error::Kvm {
            what: "create the KVM-VFIO device",
            source,
        })?;
    let host = VfioHost::new(VfioDeviceFd::new_from_kvm(kvm_vfio), sysfs)?;
    Ok((host, found))
}

/// A device opened and modelled, its BARs not placed yet.
struct Opened {
    name: String,
    group: u32,
    model: VfioPciDevice<HostDevice>,
    p2p: bool,
}

/// Opens each device and models it with the ROM it is to show (the reset comes once its BARs
/// are known to fit: a refusal is then the only line).
fn open_devices(
    host: &VfioHost,
    found: &[SysfsDevice],
    cfgs: &[DeviceConfig],
    roms: Vec<RomSource>,
) -> Result<Vec<Opened>, Error> {
    let mut opened = Vec::new();
    for ((dev, cfg), rom) in found.iter().zip(cfgs).zip(roms) {
        let hd = host.open(dev)?;
        let name = hd.name.clone();
        let group = hd.group;
        let model = VfioPciDevice::with_rom(hd, rom).map_err(|source| Error::Model {
            device: name.clone(),
            source,
        })?;
        if let Some(problem) = model.rom_problem() {
            log::warn!(
                "{name}: cannot read its expansion ROM ({problem}); the guest sees none \
                 (romfile=PATH serves a dump of it)"
            );
        }
        opened.push(Opened {
            name,
            group,
            model,
            p2p: cfg.p2p,
        });
    }
    Ok(opened)
}

/// Gives every BAR a guest address as firmware would: the 64-bit BARs of all devices together
/// in a window above RAM sized for them ([`pci::plan_mmio64`]), refused when they do not fit
/// below the guest's physical address width; the others from the fixed windows.
fn place_bars(setup: &Setup, opened: &mut [Opened]) -> Result<PciWindows, Error> {
    let wanted: Vec<(usize, u8, u64)> = opened
        .iter()
        .enumerate()
        .flat_map(|(i, o)| {
            o.model
                .bar_set()
                .iter()
                .filter(|b| matches!(b.kind(), BarKind::Mem64 { .. }))
                .map(move |b| (i, b.index(), b.size()))
        })
        .collect();
    let sizes: Vec<u64> = wanted.iter().map(|w| w.2).collect();
    let limit = 1u64 << setup.phys_bits;
    let plan = pci::plan_mmio64(setup.mem_size, &sizes, limit).map_err(|o| {
        let (i, bar, size) = wanted[o.index];
        too_large(setup, &opened[i].name, bar, size, o.start)
    })?;
    for (&(i, bar, _), &addr) in wanted.iter().zip(&plan.addrs) {
        if let Some(b) = opened[i].model.bar_set_mut().get_mut(bar) {
            b.set_addr(addr);
        }
    }
    let windows = PciWindows::with_mmio64(plan.window);
    let mut resources = PciResources::new(windows).map_err(|source| Error::Resources {
        device: "PCI windows".into(),
        source,
    })?;
    for o in opened.iter_mut() {
        resources
            .assign_bars(o.model.bar_set_mut())
            .map_err(|source| Error::Resources {
                device: o.name.clone(),
                source,
            })?;
    }
    Ok(windows)
}

/// The refusal of BAR `bar` (`size` bytes) of `device`, with the advice that fits.
fn too_large(setup: &Setup, device: &str, bar: u8, size: u64, start: u64) -> Error {
    Error::BarTooLarge(TooLarge::new(
        device,
        bar,
        size,
        start,
        setup.phys_bits,
        setup.kvm_phys_bits,
    ))
}

/// A 64-bit BAR past the guest's physical address limit, as problem and fix (shared by the
/// run's refusal and `vmm check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLarge {
    /// `DEVICE: BAR n (SIZE, 64-bit) does not fit below ...`.
    pub problem: String,
    /// What to do.
    pub fix: String,
}

impl TooLarge {
    /// BAR `bar` (`size` bytes) of `device` does not fit in a window starting at `start` below
    /// `1 << bits`; KVM allows `kvm_bits`.
    pub fn new(device: &str, bar: u8, size: u64, start: u64, bits: u8, kvm_bits: u8) -> Self {
        let limit = 1u64 << bits;
        let problem = format!(
            "{device}: BAR {bar} ({}, 64-bit) does not fit below the guest's {bits}-bit physical \
             address limit ({}): the 64-bit BARs start above guest RAM at {start:#x} and this \
             one would end past {limit:#x}",
            format_size(size),
            format_size(limit)
        );
        let fix = if bits < kvm_bits {
            format!(
                "raise phys-bits= in --memory (this host's KVM allows up to {kvm_bits} bits) or \
                 pass fewer or smaller BARs"
            )
        } else {
            format!(
                "this host's KVM gives guests at most {kvm_bits} bits: pass fewer or smaller BARs \
                 (shrink a resizable BAR on the host first) or use a host whose CPU has more \
                 physical address bits"
            )
        };
        Self { problem, fix }
    }
}

/// Resets each device, puts it on the bus, prepares its BARs' parts and wires its INTx.
fn add_devices(
    setup: &Setup,
    opened: Vec<Opened>,
    root: &Arc<Mutex<PciRoot>>,
    mapper: &Arc<Mutex<BarMapper>>,
) -> Result<Vec<Arc<Passed>>, Error> {
    let router = Arc::new(IrqRouter::new(setup.vm.clone()));
    let mut passed = Vec::new();
    for o in opened {
        let Opened {
            name,
            group,
            mut model,
            p2p,
        } = o;
        if !model.backend().reset() {
            log::warn!(
                "{name}: no reset method (or reset failed); it keeps the state its last user left"
            );
        }
        let pin = (model.read_config_register(INTERRUPT_REG) >> 8) as u8;
        let model = Arc::new(Mutex::new(model));
        let slot = lock(root)
            .add_device(model.clone())
            .map_err(|source| Error::Resources {
                device: name.clone(),
                source,
            })?;
        let intx_gsi = (pin != 0 && lock(&model).backend().irq_count(INTX_IRQ) > 0)
            .then(|| pci::intx_gsi(slot, pin - 1));
        let irqs = irqs::DeviceIrqs::new(&name, setup.vm.clone(), router.clone(), intx_gsi);
        let device = Arc::new(Passed {
            model,
            irqs: Mutex::new(irqs),
        });
        for (bar, parts) in bar_parts(&device, &name, p2p)? {
            lock(mapper).insert(slot, bar, format!("{name} BAR{bar}"), parts);
        }
        lock(&device.irqs).sync(&lock(&device.model));
        log::info!(
            "{name}: IOMMU group {group}, guest 00:{slot:02x}.0; {}",
            describe::device_summary(&device.model, intx_gsi)
        );
        passed.push(device);
    }
    Ok(passed)
}

/// The parts of every BAR of `device`: mmaps what can be mapped (also for peer-to-peer DMA
/// when `p2p`), a read-only copy of the ROM, handlers for the rest.
fn bar_parts(device: &Arc<Passed>, name: &str, p2p: bool) -> Result<Vec<(u8, Vec<Part>)>, Error> {
    let dev = lock(&device.model);
    let mut all = Vec::new();
    for bar in dev.bar_set().iter().map(|b| b.index()) {
        let mut parts = Vec::new();
        for seg in dev.bar_plan(bar) {
            let mmap_err = |source| Error::Mmap {
                device: name.to_owned(),
                bar,
                source,
            };
            parts.push(match seg.kind {
                SegmentKind::Mmap => {
                    let area = dev
                        .backend()
                        .mmap(u32::from(bar), seg.offset, seg.len)
                        .map_err(mmap_err)?;
                    Part::mapped(seg.offset, Box::new(area), p2p)
                }
                SegmentKind::Rom => {
                    let image = dev.rom_image().unwrap_or_default();
                    Part::rom(Box::new(RomMemory::new(image).map_err(mmap_err)?))
                }
                SegmentKind::Trap => Part::Trapped {
                    offset: seg.offset,
                    len: seg.len,
                    handler: Arc::new(Mutex::new(TrappedPart {
                        device: device.clone(),
                        bar,
                        offset: seg.offset,
                    })),
                    base: None,
                    name: format!("{name} BAR{bar}"),
                },
            });
        }
        all.push((bar, parts));
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_64bit_window_stays_out_of_the_e820_map() {
        for mem in [512 << 20, 3 * GIB, 6 * GIB + 4096] {
            let plan = pci::plan_mmio64(mem, &[128 * GIB, 8 * GIB, 16 << 10], 1 << 40).unwrap();
            let w = plan.window;
            assert!(w.size >= 136 * GIB, "{w:?}");
            for e in arch::boot::e820_map(mem) {
                assert!(
                    e.addr + e.size <= w.start || e.addr >= w.start + w.size,
                    "{e:?} overlaps {w:?}"
                );
            }
        }
    }

    #[test]
    fn too_large_advice_follows_phys_bits() {
        let narrowed = TooLarge::new("0000:41:00.0", 1, 128 * GIB, 4 * GIB, 37, 46);
        assert_eq!(
            narrowed.problem,
            "0000:41:00.0: BAR 1 (128 GiB, 64-bit) does not fit below the guest's 37-bit \
             physical address limit (128 GiB): the 64-bit BARs start above guest RAM at \
             0x100000000 and this one would end past 0x2000000000"
        );
        assert!(narrowed
            .fix
            .starts_with("raise phys-bits= in --memory (this host's KVM allows up to 46 bits)"));
        let host = TooLarge::new("0000:41:00.0", 1, 128 * GIB, 4 * GIB, 39, 39);
        assert!(host
            .fix
            .starts_with("this host's KVM gives guests at most 39 bits"));
        let e = Error::BarTooLarge(host).to_string();
        assert!(!e.contains('\n') && e.contains("; this host's KVM"), "{e}");
    }

    #[test]
    fn romfiles_are_read_or_refused() {
        let dir = std::env::temp_dir().join(format!("vmm-romfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.rom");
        std::fs::write(&empty, b"").unwrap();
        let good = dir.join("good.rom");
        std::fs::write(&good, [0x55, 0xaa, 1]).unwrap();
        assert_eq!(read_romfile(&good), Ok(vec![0x55, 0xaa, 1]));
        assert_eq!(read_romfile(&empty), Err("is empty".into()));
        assert_eq!(read_romfile(&dir), Err("is a directory".into()));
        let missing = read_romfile(&dir.join("missing.rom")).unwrap_err();
        assert!(
            missing.starts_with("cannot read it: No such file"),
            "{missing}"
        );
        let cfgs: Vec<DeviceConfig> = [
            "vfio-pci,host=00:12.0".to_string(),
            "vfio-pci,host=00:13.0,rombar=off".to_string(),
            format!("vfio-pci,host=00:14.0,romfile={}", good.display()),
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(
            read_romfiles(&cfgs).unwrap(),
            vec![
                RomSource::Device,
                RomSource::Hidden,
                RomSource::Image(vec![0x55, 0xaa, 1])
            ]
        );
        let bad: DeviceConfig = format!("vfio-pci,host=00:12.0,romfile={}", empty.display())
            .parse()
            .unwrap();
        let e = read_romfiles(&[bad]).unwrap_err().to_string();
        assert!(
            e.contains("of --device 0000:00:12.0: is empty; give a readable ROM image"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
