//! Passthrough: the guest's PCI bus with its VFIO devices, each BAR kept where the guest puts
//! it, each device's interrupts kept matching what the guest programmed; devices attached at
//! boot or while the guest runs, and detached again.
//!
//! Split by concern:
//! - [`attach`]: attaching and detaching one device (ordered steps, undone on failure), over
//!   the host's container ([`attach::Container`]) and the VM ([`crate::vm_ops::VmOps`]);
//! - [`bars`]: BAR parts as KVM memory slots, peer-to-peer DMA mappings and bus entries, moved
//!   with the guest's programming ([`p2p`]: large ones mapped in the background);
//! - [`config`]: the guest's config-space and trapped-BAR accesses;
//! - [`irqs`]: INTx/MSI/MSI-X from VFIO eventfds to KVM irqfds;
//! - [`dma`]: guest RAM mapped for DMA; [`describe`]: the info line of each device.
//!
//! 64-bit BARs present at boot are placed together in a window above RAM sized for them and
//! checked against the guest's physical address width; with hotplug (`--api-socket`) the
//! window reaches that limit, so devices added later find room.
//!
//! Lock order: a config-space access holds its `ConfigAccess` lock, then briefly the root's,
//! then the `BarMapper`'s; the mapper takes a device's lock only to read its BAR plan and
//! never while changing a bus. A device model's lock is taken before its `DeviceIrqs` lock.
//! The device list is read (a snapshot) after a config write and written only by attach and
//! detach, on the main thread. Buses never hold their map lock while calling a device.

mod attach;
#[cfg(test)]
mod attach_tests;
mod bars;
mod config;
mod describe;
mod dma;
mod irqs;
mod p2p;

pub use attach::read_romfile;
pub use dma::progress_text;

use crate::config::{format_size, DeviceConfig};
use crate::interrupts::IrqRouter;
use crate::vm_ops::VmOps;
use arch::GuestMemoryMmap;
use attach::{Container, HostContainer, Opened, Wiring};
use bars::{BarMapper, KvmDma, KvmMaps};
use devices::Bus;
use kvm_ioctls::VmFd;
use pci::{BarKind, PciResources, PciRoot, PciWindow, PciWindows};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use vfio::{DeviceOps, Sysfs, VfioPciDevice};

/// Config dword holding interrupt line (byte 0) and pin (byte 1).
const INTERRUPT_REG: usize = 0x3c / 4;

/// A device model over whatever VFIO device is behind it (the kernel's, or a fake in tests).
pub(crate) type Model = VfioPciDevice<Box<dyn DeviceOps>>;

/// The attached devices, shared with the config-space handlers.
type Devices = Arc<RwLock<Vec<Arc<Passed>>>>;

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
    /// A hot-add of a device that is in the guest already.
    AlreadyAttached {
        /// The device's host name.
        device: String,
        /// The id it has.
        id: String,
    },
    /// A hot-add with an id another device has.
    SameId {
        /// The id.
        id: String,
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
            Error::AlreadyAttached { device, id } => Advice::new(
                format!("{device} is in the guest already (id {id})"),
                "remove it first, or give another device",
            ),
            Error::SameId { id } => Advice::new(
                format!("a device with id {id:?} is in the guest already"),
                "give the new device another id",
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

/// A passed-through device on the bus.
pub(crate) struct Passed {
    /// `id=`, else its host name.
    id: String,
    /// Its host name.
    name: String,
    /// Its IOMMU group.
    group: u32,
    /// Its slot on bus 0.
    slot: u8,
    /// The address ranges its BARs were given, to give back.
    bars: Vec<(BarKind, u64, u64)>,
    model: Arc<Mutex<Model>>,
    irqs: Mutex<irqs::DeviceIrqs>,
}

impl Passed {
    /// Rewires interrupts if the guest changed MSI/MSI-X programming.
    fn sync_irqs(&self, model: &mut Model) {
        if !model.take_interrupt_changes().is_empty() {
            lock(&self.irqs).sync(model);
        }
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
    /// Its IOMMU group on the host.
    pub iommu_group: u32,
    /// Its BARs where the guest has them now.
    pub bars: Vec<BarInfo>,
    /// The interrupt mechanism wired now: none, intx, msi or msix.
    pub interrupts: &'static str,
}

/// One BAR in [`DeviceInfo`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct BarInfo {
    /// BAR index (6: the ROM).
    pub index: u8,
    /// io, mem32, mem64 or rom.
    pub kind: &'static str,
    /// Guest physical address (or port), 0 while not placed.
    pub address: u64,
    /// Bytes.
    pub size: u64,
}

/// Everything passthrough keeps for the VM's lifetime.
pub struct Passthrough {
    /// Windows BARs are allocated from (for ACPI).
    pub windows: PciWindows,
    vm: Arc<dyn VmOps>,
    router: Arc<IrqRouter>,
    root: Arc<Mutex<PciRoot>>,
    mapper: Arc<Mutex<BarMapper>>,
    devices: Devices,
    resources: PciResources,
    dma: KvmDma,
    seccomp: bool,
    /// Devices may come later: the background mapper runs from the start (the main thread,
    /// which adds them, may not start threads under its seccomp filter).
    hotplug: bool,
    /// The host side, dropped last.
    container: Box<dyn Container>,
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
    /// Devices may be added later (`--api-socket`): the 64-bit window reaches the address
    /// limit so that they find room.
    pub hotplug: bool,
    /// PIO bus.
    pub pio: &'a Arc<Bus>,
    /// MMIO bus.
    pub mmio: &'a Arc<Bus>,
}

/// Puts a PCI bus in the guest with every `--device` on it: checks and opens them, places
/// their BARs, maps guest RAM for their DMA and wires their interrupts. Without devices, just
/// the host bridge.
pub fn attach(setup: &Setup, cfgs: &[DeviceConfig]) -> Result<Passthrough, Error> {
    let dma = KvmDma::default();
    let mut container: Box<dyn Container> = Box::new(HostContainer::new(
        setup.vm.clone(),
        setup.memory.clone(),
        setup.mem_size,
        dma.clone(),
    ));
    let mut opened = Vec::new();
    for cfg in cfgs {
        opened.push(attach::open(container.as_mut(), cfg)?);
    }
    let (windows, planned) = plan_windows(setup, &mut opened)?;
    let mut resources = PciResources::new(windows).map_err(|source| Error::Resources {
        device: "PCI windows".into(),
        source,
    })?;
    for &(addr, size) in &planned {
        let kind = BarKind::Mem64 { prefetchable: true };
        resources
            .reserve(kind, addr, size)
            .map_err(|source| Error::Resources {
                device: "PCI windows".into(),
                source,
            })?;
    }
    for o in opened.iter_mut() {
        attach::place_bars(&mut resources, &mut o.model)?;
    }
    let vm: Arc<dyn VmOps> = setup.vm.clone();
    let maps = KvmMaps::new(vm.clone(), dma.clone());
    let mapper = BarMapper::new(Box::new(maps), setup.pio, setup.mmio);
    let mut pt = Passthrough {
        windows,
        router: Arc::new(IrqRouter::new(vm.clone())),
        vm,
        root: Arc::new(Mutex::new(PciRoot::new())),
        mapper: Arc::new(Mutex::new(mapper)),
        devices: Arc::default(),
        resources,
        dma,
        seccomp: setup.seccomp,
        hotplug: setup.hotplug,
        container,
    };
    for o in opened {
        pt.install(o)?;
    }
    pt.start_worker()?;
    config::install(&pt.root, &pt.mapper, &pt.devices, setup.pio, setup.mmio)?;
    Ok(pt)
}

/// Gives the 64-bit BARs of every device an address as firmware would: together in a window
/// above RAM sized for them ([`pci::plan_mmio64`]), refused when they do not fit below the
/// guest's physical address width. Returns the windows and the planned ranges.
fn plan_windows(
    setup: &Setup,
    opened: &mut [Opened],
) -> Result<(PciWindows, Vec<(u64, u64)>), Error> {
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
        too_large(setup, &opened[i].name(), bar, size, o.start)
    })?;
    let mut planned = Vec::new();
    for (&(i, bar, size), &addr) in wanted.iter().zip(&plan.addrs) {
        if let Some(b) = opened[i].model.bar_set_mut().get_mut(bar) {
            b.set_addr(addr);
            planned.push((addr, size));
        }
    }
    let mut mmio64 = plan.window;
    if setup.hotplug && limit > mmio64.start {
        mmio64 = PciWindow {
            start: mmio64.start,
            size: limit - mmio64.start,
        };
    }
    Ok((PciWindows::with_mmio64(mmio64), planned))
}

impl Passthrough {
    /// What attach and detach work on: the wiring, the BAR ranges and the container.
    fn parts(&mut self) -> (Wiring<'_>, &mut PciResources, &mut dyn Container) {
        let wiring = Wiring {
            vm: &self.vm,
            router: &self.router,
            root: &self.root,
            mapper: &self.mapper,
            devices: &self.devices,
        };
        (wiring, &mut self.resources, self.container.as_mut())
    }

    /// Installs an opened device whose BARs are placed; on failure it is closed again.
    fn install(&mut self, opened: Opened) -> Result<Arc<Passed>, Error> {
        let ranges = attach::bar_ranges(&opened.model);
        let (wiring, _, container) = self.parts();
        match attach::install(&wiring, container, opened) {
            Ok(passed) => Ok(passed),
            Err((e, model)) => {
                for (kind, addr, size) in ranges {
                    self.resources.free(kind, addr, size);
                }
                if let Some(model) = model {
                    self.container.release((*model).into_backend());
                }
                Err(e)
            }
        }
    }

    /// Starts the background mapper of large BARs ([`p2p`]) once some BAR needs it (with
    /// hotplug, at once).
    fn start_worker(&mut self) -> Result<(), Error> {
        let mut mapper = lock(&self.mapper);
        if !mapper.has_worker() && (self.hotplug || mapper.needs_worker()) {
            let worker =
                p2p::DmaWorker::start(Box::new(self.dma.clone()), p2p::CHUNK, self.seccomp)
                    .map_err(|source| Error::Thread { source })?;
            mapper.set_worker(worker, p2p::ASYNC_FROM);
        }
        Ok(())
    }

    fn find(&self, pred: impl Fn(&Passed) -> bool) -> Option<Arc<Passed>> {
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        devices.iter().find(|d| pred(d)).cloned()
    }

    /// The slot of the device with `id`, if one is attached.
    pub fn slot_of(&self, id: &str) -> Option<u8> {
        self.find(|d| d.id == id).map(|d| d.slot)
    }

    /// Attaches the device `cfg` names to the running guest; returns its id and slot.
    /// Nothing changes when it fails.
    pub fn hot_add(&mut self, cfg: &DeviceConfig) -> Result<(String, u8), Error> {
        if let Some(id) = &cfg.id {
            if self.find(|d| &d.id == id).is_some() {
                return Err(Error::SameId { id: id.clone() });
            }
        }
        let mut opened = attach::open(self.container.as_mut(), cfg)?;
        let name = opened.name();
        if let Some(d) = self.find(|d| d.name == name) {
            self.container.release(opened.model.into_backend());
            return Err(Error::AlreadyAttached {
                device: name,
                id: d.id.clone(),
            });
        }
        if let Err(e) = attach::place_bars(&mut self.resources, &mut opened.model) {
            self.container.release(opened.model.into_backend());
            return Err(e);
        }
        let passed = self.install(opened)?;
        if let Err(e) = self.start_worker() {
            log::warn!("{e}");
        }
        Ok((passed.id.clone(), passed.slot))
    }

    /// Detaches the device in `slot` (the guest let go of it) and closes it; returns its host
    /// name, `None` when the slot is empty.
    pub fn hot_remove(&mut self, slot: u8) -> Option<String> {
        let passed = self.find(|d| d.slot == slot)?;
        let name = passed.name.clone();
        let (wiring, resources, _) = self.parts();
        let model = attach::uninstall(&wiring, resources, passed);
        if let Some(model) = model {
            self.container.release(model.into_backend());
        }
        Some(name)
    }

    /// What `vm.info` lists, in slot order.
    pub fn info(&self) -> Vec<DeviceInfo> {
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<DeviceInfo> = devices.iter().map(|d| describe::info(d)).collect();
        all.sort_by(|a, b| a.bdf.cmp(&b.bdf));
        all
    }

    /// Quiesces every device before it is released (the vCPUs are stopped): no more DMA
    /// mappings made in the background, interrupts off and unwired from KVM. The reset comes
    /// with the close: vfio-pci resets a device that has a reset method when its file is
    /// closed for the last time, so an explicit VFIO_DEVICE_RESET here would only do it twice
    /// (130 ms per device in the rig).
    pub fn shutdown(&self) {
        lock(&self.mapper).stop_worker();
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        for device in devices.iter() {
            let model = lock(&device.model);
            lock(&device.irqs).teardown(&**model.backend());
        }
    }
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
        let roms: Vec<_> = cfgs
            .iter()
            .map(|c| attach::rom_source(c).unwrap())
            .collect();
        assert_eq!(
            roms,
            vec![
                vfio::RomSource::Device,
                vfio::RomSource::Hidden,
                vfio::RomSource::Image(vec![0x55, 0xaa, 1])
            ]
        );
        let bad: DeviceConfig = format!("vfio-pci,host=00:12.0,romfile={}", empty.display())
            .parse()
            .unwrap();
        let e = attach::rom_source(&bad).unwrap_err().to_string();
        assert!(
            e.contains("of --device 0000:00:12.0: is empty; give a readable ROM image"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
