//! Passthrough wiring: the guest PCI bus with its VFIO devices, each BAR's KVM memory slots
//! (mmapped parts) and bus entries (trapped parts) kept where the guest put it, and each
//! device's interrupts ([`irqs`]) kept matching what the guest programmed.
//!
//! Lock order: a config-space access holds its `ConfigAccess` lock, then briefly the root's,
//! then the `BarMapper`'s; the mapper takes a device's lock only to read its BAR plan and
//! never while changing a bus. A device model's lock is taken before its `DeviceIrqs` lock.
//! Buses never hold their map lock while calling a device.

mod describe;
mod dma;
mod irqs;

pub use dma::progress_text;

use crate::config::DeviceConfig;
use crate::interrupts::IrqRouter;
use arch::GuestMemoryMmap;
use devices::{Bus, BusDevice};
use kvm_bindings::{
    kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO, kvm_userspace_memory_region,
};
use kvm_ioctls::VmFd;
use pci::{BarReprogram, PciConfigIo, PciConfigMmio, PciDevice, PciResources, PciRoot, PciWindows};
use resources::layout::PCI_ECAM_START;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use vfio::backend::INTX_IRQ;
use vfio::host::{HostDevice, MmapArea, VfioHost};
use vfio::{SegmentKind, Sysfs, SysfsDevice, VfioPciDevice};
use vfio_ioctls::VfioDeviceFd;

/// Config dword holding interrupt line (byte 0) and pin (byte 1).
const INTERRUPT_REG: usize = 0x3c / 4;
/// Size of the 64-bit BAR window above RAM.
const MMIO64_SIZE: u64 = 64 << 30;
/// KVM memory slots for BARs start here (RAM uses the first few).
const FIRST_BAR_SLOT: u32 = 16;

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

/// How one part of a BAR is served, and where it is installed now.
enum Part {
    Mapped {
        offset: u64,
        area: MmapArea,
        slot: Option<u32>,
    },
    Trapped {
        offset: u64,
        len: u64,
        handler: Arc<Mutex<dyn BusDevice>>,
        base: Option<u64>,
        /// For `--stats`: "DEVICE BARn".
        name: String,
    },
}

/// Keeps BARs installed at the addresses the guest programs.
pub struct BarMapper {
    vm: Arc<VmFd>,
    // Weak: the buses hold the config-access handlers that hold this mapper.
    pio: Weak<Bus>,
    mmio: Weak<Bus>,
    /// Parts of each (PCI slot, BAR).
    bars: HashMap<(u8, u8), Vec<Part>>,
    free_slots: Vec<u32>,
    next_slot: u32,
}

impl BarMapper {
    fn new(vm: Arc<VmFd>, pio: &Arc<Bus>, mmio: &Arc<Bus>) -> Self {
        Self {
            vm,
            pio: Arc::downgrade(pio),
            mmio: Arc::downgrade(mmio),
            bars: HashMap::new(),
            free_slots: Vec::new(),
            next_slot: FIRST_BAR_SLOT,
        }
    }

    /// Prepares the parts of every BAR of the device in PCI slot `slot`: mmaps what can be
    /// mapped, makes handlers for the rest. Nothing is installed until the guest enables
    /// decoding.
    fn add(&mut self, slot: u8, device: &Arc<Passed>, name: &str) -> Result<(), Error> {
        let dev = lock(&device.model);
        let bars: Vec<u8> = dev.bar_set().iter().map(|b| b.index()).collect();
        for bar in bars {
            let mut parts = Vec::new();
            for seg in dev.bar_plan(bar) {
                parts.push(match seg.kind {
                    SegmentKind::Mmap => Part::Mapped {
                        offset: seg.offset,
                        area: dev
                            .backend()
                            .mmap(u32::from(bar), seg.offset, seg.len)
                            .map_err(|source| Error::Mmap {
                                device: name.to_owned(),
                                bar,
                                source,
                            })?,
                        slot: None,
                    },
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
            self.bars.insert((slot, bar), parts);
        }
        Ok(())
    }

    /// Moves BAR `mv.bar` of PCI slot `slot`: uninstalls it from the old base and installs it
    /// at the new one (0 means "not decoded"). A guest that programs a clashing address gets
    /// the clashing part left unmapped and a warning, never a VMM failure.
    fn apply(&mut self, slot: u8, mv: &BarReprogram) {
        let Some(mut parts) = self.bars.remove(&(slot, mv.bar)) else {
            return;
        };
        for part in &mut parts {
            self.uninstall(part, mv.is_io);
        }
        if mv.new_base != 0 {
            for part in &mut parts {
                self.install(part, mv.new_base, mv.is_io);
            }
        }
        log::debug!(
            "pci slot {slot} BAR {}: {:#x} -> {:#x} ({:#x} bytes)",
            mv.bar,
            mv.old_base,
            mv.new_base,
            mv.len
        );
        self.bars.insert((slot, mv.bar), parts);
    }

    /// The bus a BAR of this kind lives on; `None` once the VM is being dropped.
    fn bus(&self, is_io: bool) -> Option<Arc<Bus>> {
        if is_io {
            self.pio.upgrade()
        } else {
            self.mmio.upgrade()
        }
    }

    fn install(&mut self, part: &mut Part, base: u64, is_io: bool) {
        match part {
            Part::Mapped { offset, area, slot } => {
                let id = self.free_slots.pop().unwrap_or_else(|| {
                    self.next_slot += 1;
                    self.next_slot - 1
                });
                let region = kvm_userspace_memory_region {
                    slot: id,
                    flags: 0,
                    guest_phys_addr: base + *offset,
                    memory_size: area.len() as u64,
                    userspace_addr: area.addr() as u64,
                };
                // SAFETY: the mapping lives in `area` until this part is uninstalled (which
                // deletes the slot first) or the VM ends.
                match unsafe { self.vm.set_user_memory_region(region) } {
                    Ok(()) => *slot = Some(id),
                    Err(e) => {
                        self.free_slots.push(id);
                        log::warn!(
                            "guest put a BAR at {:#x}, which KVM refuses ({e}); left unmapped",
                            base + *offset
                        );
                    }
                }
            }
            Part::Trapped {
                offset,
                len,
                handler,
                base: at,
                name,
            } => {
                let Some(bus) = self.bus(is_io) else { return };
                match bus.insert_named(name, handler.clone(), base + *offset, *len) {
                    Ok(()) => *at = Some(base + *offset),
                    Err(e) => log::warn!("guest put a BAR where it clashes: {e}; left unmapped"),
                }
            }
        }
    }

    fn uninstall(&mut self, part: &mut Part, is_io: bool) {
        match part {
            Part::Mapped { slot, area, .. } => {
                if let Some(id) = slot.take() {
                    let region = kvm_userspace_memory_region {
                        slot: id,
                        memory_size: 0,
                        userspace_addr: area.addr() as u64,
                        ..Default::default()
                    };
                    // SAFETY: size 0 deletes the slot; no memory is handed to KVM.
                    if let Err(e) = unsafe { self.vm.set_user_memory_region(region) } {
                        log::warn!("cannot remove KVM slot {id}: {e}");
                    }
                    self.free_slots.push(id);
                }
            }
            Part::Trapped { base, .. } => {
                if let (Some(at), Some(bus)) = (base.take(), self.bus(is_io)) {
                    bus.remove(at);
                }
            }
        }
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

    /// Quiesces every device before it is released (the vCPUs are stopped): interrupts
    /// off and unwired from KVM, then a device reset where the device has one.
    pub fn shutdown(&self) {
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
    /// PIO bus.
    pub pio: &'a Arc<Bus>,
    /// MMIO bus.
    pub mmio: &'a Arc<Bus>,
}

/// Puts a PCI bus in the guest with every `--device` on it: checks and opens them, maps guest
/// RAM for their DMA and wires their interrupts. Without devices, just the host bridge.
pub fn attach(setup: &Setup, devices: &[DeviceConfig]) -> Result<Passthrough, Error> {
    let windows = PciWindows::new(setup.mem_size, MMIO64_SIZE);
    let root = Arc::new(Mutex::new(PciRoot::new()));
    let mapper = Arc::new(Mutex::new(BarMapper::new(
        setup.vm.clone(),
        setup.pio,
        setup.mmio,
    )));
    let (host, passed) = if devices.is_empty() {
        (None, Vec::new())
    } else {
        let (host, found) = open_host(setup, devices)?;
        let pci = PciParts {
            root: &root,
            mapper: &mapper,
            windows,
        };
        let passed = add_devices(setup, &host, &found, &pci)?;
        dma::map_guest_ram(&host, setup.memory)?;
        (Some(host), passed)
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
    })
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
/// The PCI bus pieces devices are added to.
struct PciParts<'a> {
    root: &'a Arc<Mutex<PciRoot>>,
    mapper: &'a Arc<Mutex<BarMapper>>,
    windows: PciWindows,
}

/// Opens each device, resets it, models it, gives its BARs guest addresses, puts it on the
/// bus and wires its INTx.
fn add_devices(
    setup: &Setup,
    host: &VfioHost,
    found: &[SysfsDevice],
    pci: &PciParts,
) -> Result<Vec<Arc<Passed>>, Error> {
    let router = Arc::new(IrqRouter::new(setup.vm.clone()));
    let mut resources = PciResources::new(pci.windows).map_err(|source| Error::Resources {
        device: "PCI windows".into(),
        source,
    })?;
    let mut passed = Vec::new();
    for dev in found {
        let hd = host.open(dev)?;
        let name = hd.name.clone();
        if !hd.reset() {
            log::warn!(
                "{name}: no reset method (or reset failed); it keeps the state its last user left"
            );
        }
        let group = hd.group;
        let mut model = VfioPciDevice::new(hd).map_err(|source| Error::Model {
            device: name.clone(),
            source,
        })?;
        resources
            .assign_bars(model.bar_set_mut())
            .map_err(|source| Error::Resources {
                device: name.clone(),
                source,
            })?;
        let pin = (model.read_config_register(INTERRUPT_REG) >> 8) as u8;
        let model = Arc::new(Mutex::new(model));
        let slot = lock(pci.root)
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
        lock(pci.mapper).add(slot, &device, &name)?;
        lock(&device.irqs).sync(&lock(&device.model));
        log::info!(
            "{name}: IOMMU group {group}, guest 00:{slot:02x}.0; {}",
            describe::device_summary(&device.model, intx_gsi)
        );
        passed.push(device);
    }
    Ok(passed)
}
