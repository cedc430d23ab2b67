//! Attaching devices to the guest's PCI bus, at boot or while it runs, and detaching them:
//! one ordered list of steps each, and a failing attach step undoes the steps before it in
//! reverse, so a refused hot-add leaves the VM as it was.
//!
//! Attach: find and check the device (sysfs, memlock) -> open it into the container -> model
//! it -> give its BARs addresses -> reset it -> map guest RAM into the container if it is not
//! yet -> its BARs' parts to the mapper -> its interrupts -> the PCI bus (only now can the
//! guest see it) -> the list config writes sync interrupts for.
//!
//! Detach, the same backwards: off the list -> off the bus -> BARs out (KVM slots, bus
//! entries, peer-to-peer DMA mappings, mmaps) -> interrupts off and unwired -> BAR ranges
//! freed -> closed, which resets it (vfio-pci resets a device with a reset method on its last
//! close) and takes its IOMMU group out of the container with the group's last device.
//!
//! The host side is behind [`Container`] and the VM side behind [`VmOps`]: tests run the
//! steps against fakes. This module never decides *when* a device comes or goes (the builder
//! at boot, the control API later).

use super::bars::{BarMapper, KvmDma, Part, RomMemory};
use super::config::TrappedPart;
use super::irqs::DeviceIrqs;
use super::{lock, Devices, Error, Model, Passed, INTERRUPT_REG};
use crate::config::{format_size, DeviceConfig};
use crate::interrupts::IrqRouter;
use crate::vm_ops::VmOps;
use arch::GuestMemoryMmap;
use pci::{BarKind, PciDevice, PciResources, PciRoot};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vfio::backend::INTX_IRQ;
use vfio::{DeviceOps, RomSource, SegmentKind, Sysfs, SysfsDevice};

/// The host side of passthrough: finding devices, the one VFIO container they are opened
/// into, and guest RAM mapped in it for their DMA.
pub(super) trait Container: Send {
    /// Finds the device `cfg` names and checks that it can be passed through (IOMMU group,
    /// vfio-pci, the group's viability) and that guest RAM can be pinned.
    fn find(&self, cfg: &DeviceConfig) -> Result<SysfsDevice, Error>;
    /// Opens `dev` into the container (made with the first device); its group joins once.
    fn open(&mut self, dev: &SysfsDevice) -> Result<Box<dyn DeviceOps>, Error>;
    /// Maps all guest RAM for device DMA unless it is mapped already. The container loses
    /// every mapping with its last group, so this runs with each first device.
    fn map_ram(&mut self) -> Result<(), Error>;
    /// Closes `dev`; its group leaves the container with its last device.
    fn release(&mut self, dev: Box<dyn DeviceOps>);
}

/// The kernel's VFIO: sysfs, the container (opened with the first device, attached to the
/// VM's KVM-VFIO device), guest RAM.
pub(super) struct HostContainer {
    vm: Arc<kvm_ioctls::VmFd>,
    sysfs: Sysfs,
    host: Option<vfio::host::VfioHost>,
    dma: KvmDma,
    memory: GuestMemoryMmap,
    mem_size: u64,
    ram_mapped: bool,
}

impl HostContainer {
    /// The container of `vm`, whose RAM is `memory`; BAR mappings for peer-to-peer DMA go
    /// through `dma` once the container exists.
    pub fn new(
        vm: Arc<kvm_ioctls::VmFd>,
        memory: GuestMemoryMmap,
        mem_size: u64,
        dma: KvmDma,
    ) -> Self {
        Self {
            vm,
            sysfs: Sysfs::default(),
            host: None,
            dma,
            memory,
            mem_size,
            ram_mapped: false,
        }
    }

    /// The container, opened (with the VM's KVM-VFIO device) on first use.
    fn host(&mut self) -> Result<&vfio::host::VfioHost, Error> {
        if self.host.is_none() {
            use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
            let mut kvm_vfio = kvm_create_device {
                type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
                fd: 0,
                flags: 0,
            };
            let kvm_vfio = self
                .vm
                .create_device(&mut kvm_vfio)
                .map_err(|source| Error::Kvm {
                    what: "create the KVM-VFIO device",
                    source,
                })?;
            let fd = vfio_ioctls::VfioDeviceFd::new_from_kvm(kvm_vfio);
            let host = vfio::host::VfioHost::new(fd, self.sysfs.clone())?;
            self.dma.set(host.dma());
            self.host = Some(host);
        }
        Ok(self.host.as_ref().expect("opened above"))
    }
}

impl Container for HostContainer {
    fn find(&self, cfg: &DeviceConfig) -> Result<SysfsDevice, Error> {
        let dev = self.sysfs.device(cfg.spec())?;
        vfio::host::check_usable(&self.sysfs, &dev)?;
        vfio::host::check_memlock(self.mem_size)?;
        Ok(dev)
    }

    fn open(&mut self, dev: &SysfsDevice) -> Result<Box<dyn DeviceOps>, Error> {
        Ok(Box::new(self.host()?.open(dev)?))
    }

    fn map_ram(&mut self) -> Result<(), Error> {
        if !self.ram_mapped {
            self.host()?;
            let host = self.host.as_ref().expect("opened above");
            super::dma::map_guest_ram(host, &self.memory)?;
            self.ram_mapped = true;
        }
        Ok(())
    }

    fn release(&mut self, dev: Box<dyn DeviceOps>) {
        let Some(host) = &self.host else { return };
        host.release(dev);
        if host.is_empty() {
            self.ram_mapped = false;
        }
    }
}

/// A device opened and modelled, its BARs not placed yet.
pub(super) struct Opened {
    pub cfg: DeviceConfig,
    pub model: Model,
}

impl Opened {
    pub fn name(&self) -> String {
        self.model.backend().name().to_string()
    }
}

/// Finds, checks and opens the device of `cfg` and models it with the ROM it is to show.
pub(super) fn open(container: &mut dyn Container, cfg: &DeviceConfig) -> Result<Opened, Error> {
    let rom = rom_source(cfg)?;
    let dev = container.find(cfg)?;
    let backend = container.open(&dev)?;
    let model = match Model::try_with_rom(backend, rom) {
        Ok(model) => model,
        Err((source, backend)) => {
            container.release(backend);
            return Err(Error::Model {
                device: dev.name,
                source,
            });
        }
    };
    if let Some(problem) = model.rom_problem() {
        log::warn!(
            "{}: cannot read its expansion ROM ({problem}); the guest sees none (romfile=PATH \
             serves a dump of it)",
            dev.name
        );
    }
    Ok(Opened {
        cfg: cfg.clone(),
        model,
    })
}

/// The ROM a device shows: `rombar=off` none, `romfile=` the file's bytes (read now, so a bad
/// path is refused before anything is opened), else the device's own.
pub(super) fn rom_source(cfg: &DeviceConfig) -> Result<RomSource, Error> {
    match (&cfg.romfile, cfg.rombar) {
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
    }
}

/// A ROM image file's bytes, or why it cannot be one (the reason of [`Error::RomFile`], and of
/// `vmm check`'s ROM line).
pub fn read_romfile(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
    if meta.is_dir() {
        return Err("is a directory".into());
    }
    if meta.len() > vfio::MAX_ROM {
        return Err(format!(
            "{} is larger than the {} a ROM may have",
            format_size(meta.len()),
            format_size(vfio::MAX_ROM)
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.is_empty() {
        return Err("is empty".into());
    }
    Ok(bytes)
}

/// Gives every BAR of `model` still at address 0 a range from `resources` (a hot-added
/// device; at boot the 64-bit ones are planned together first). On failure the ranges taken
/// so far are given back.
pub(super) fn place_bars(resources: &mut PciResources, model: &mut Model) -> Result<(), Error> {
    let name = model.backend().name().to_string();
    let mut taken = Vec::new();
    let mut bars: Vec<_> = model
        .bar_set_mut()
        .iter_mut()
        .filter(|b| b.addr() == 0)
        .collect();
    bars.sort_by_key(|b| std::cmp::Reverse(b.size()));
    for bar in bars {
        match resources.allocate(bar.kind(), bar.size()) {
            Ok(addr) => {
                bar.set_addr(addr);
                taken.push((bar.kind(), addr, bar.size()));
            }
            Err(source) => {
                for (kind, addr, size) in taken {
                    resources.free(kind, addr, size);
                }
                return Err(Error::Resources {
                    device: name,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The ranges `model`'s BARs hold, to give back when it leaves.
pub(super) fn bar_ranges(model: &Model) -> Vec<(BarKind, u64, u64)> {
    model
        .bar_set()
        .iter()
        .filter(|b| b.addr() != 0)
        .map(|b| (b.kind(), b.addr(), b.size()))
        .collect()
}

/// The bus, the BAR mapper, the interrupt routes and the VM a device is wired into.
pub(super) struct Wiring<'a> {
    pub vm: &'a Arc<dyn VmOps>,
    pub router: &'a Arc<IrqRouter>,
    pub root: &'a Arc<Mutex<PciRoot>>,
    pub mapper: &'a Arc<Mutex<BarMapper>>,
    pub devices: &'a Devices,
}

/// Puts an opened device with placed BARs on the bus: reset, guest RAM mapped, BAR parts,
/// interrupts, bus slot, interrupt sync. On failure everything done is undone and the device
/// is handed back (so that its caller can close it).
pub(super) fn install(
    w: &Wiring,
    container: &mut dyn Container,
    opened: Opened,
) -> Result<Arc<Passed>, (Error, Option<Box<Model>>)> {
    let Opened { cfg, mut model } = opened;
    let name = model.backend().name().to_string();
    if !model.backend().reset() {
        log::warn!(
            "{name}: no reset method (or reset failed); it keeps the state its last user left"
        );
    }
    if let Err(e) = container.map_ram() {
        return Err((e, Some(Box::new(model))));
    }
    let Some(slot) = lock(w.root).free_slot() else {
        let source = pci::Error::NoFreeSlot;
        return Err((
            Error::Resources {
                device: name,
                source,
            },
            Some(Box::new(model)),
        ));
    };
    let pin = (model.read_config_register(INTERRUPT_REG) >> 8) as u8;
    let intx_gsi =
        (pin != 0 && model.backend().irq_count(INTX_IRQ) > 0).then(|| pci::intx_gsi(slot, pin - 1));
    let irqs = DeviceIrqs::new(&name, w.vm.clone(), w.router.clone(), intx_gsi);
    let passed = Arc::new(Passed {
        id: cfg.id.clone().unwrap_or_else(|| name.clone()),
        name: name.clone(),
        group: model.backend().group(),
        slot,
        bars: bar_ranges(&model),
        model: Arc::new(Mutex::new(model)),
        irqs: Mutex::new(irqs),
    });
    let undo = |passed: Arc<Passed>, e: Error| (e, take_model(passed).map(Box::new));
    let parts = match bar_parts(&passed, &name, cfg.p2p) {
        Ok(parts) => parts,
        Err(e) => return Err(undo(passed, e)),
    };
    {
        let mut mapper = lock(w.mapper);
        for (bar, is_io, parts) in parts {
            mapper.insert(slot, bar, is_io, format!("{name} BAR{bar}"), parts);
        }
    }
    lock(&passed.irqs).sync(&lock(&passed.model));
    let dev: Arc<Mutex<dyn PciDevice>> = passed.model.clone();
    if let Err(source) = lock(w.root).add_device_at(slot, dev) {
        lock(w.mapper).remove_device(slot);
        lock(&passed.irqs).teardown(&**lock(&passed.model).backend());
        let e = Error::Resources {
            device: name,
            source,
        };
        return Err(undo(passed, e));
    }
    w.devices
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .push(passed.clone());
    log::info!(
        "{name}: IOMMU group {}, guest 00:{slot:02x}.0; {}",
        passed.group,
        super::describe::device_summary(&passed.model, intx_gsi)
    );
    Ok(passed)
}

/// How long detaching waits for a vCPU still in the middle of an access to the device.
const LET_GO_PATIENCE: Duration = Duration::from_secs(2);

/// Takes `passed` off the bus and out of the VM, backwards from [`install`], and returns its
/// model (interrupts off, reset) for the caller to close (`None`: still held, left open).
/// `resources` gets its BAR ranges back.
pub(super) fn uninstall(
    w: &Wiring,
    resources: &mut PciResources,
    passed: Arc<Passed>,
) -> Option<Model> {
    w.devices
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|d| !Arc::ptr_eq(d, &passed));
    lock(w.root).remove_device(passed.slot);
    lock(w.mapper).remove_device(passed.slot);
    {
        // The reset comes when the caller closes the device (vfio-pci resets on close).
        let model = lock(&passed.model);
        lock(&passed.irqs).teardown(&**model.backend());
    }
    for &(kind, addr, size) in &passed.bars {
        resources.free(kind, addr, size);
    }
    take_model(passed)
}

/// The model out of `passed` once nothing else holds it (a vCPU in the middle of an access
/// lets go at once). Past [`LET_GO_PATIENCE`] the device is left open, with a warning: `None`.
fn take_model(mut passed: Arc<Passed>) -> Option<Model> {
    let deadline = Instant::now() + LET_GO_PATIENCE;
    let passed = loop {
        match Arc::try_unwrap(passed) {
            Ok(p) => break p,
            Err(back) if Instant::now() < deadline => {
                passed = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(back) => {
                log::warn!("{}: still in use after removal; left open", back.name);
                return None;
            }
        }
    };
    // The bus held the model too, and let it go when the slot was emptied.
    match Arc::try_unwrap(passed.model) {
        Ok(m) => Some(m.into_inner().unwrap_or_else(|e| e.into_inner())),
        Err(_) => {
            log::warn!("{}: still referenced after removal; left open", passed.name);
            None
        }
    }
}

/// The parts of every BAR of `device`: mmaps what can be mapped (also for peer-to-peer DMA
/// when `p2p`), a read-only copy of the ROM, handlers for the rest. `(bar, is_io, parts)`.
fn bar_parts(
    device: &Arc<Passed>,
    name: &str,
    p2p: bool,
) -> Result<Vec<(u8, bool, Vec<Part>)>, Error> {
    let dev = lock(&device.model);
    let mut all = Vec::new();
    for bar in dev.bar_set().iter() {
        let (index, is_io) = (bar.index(), bar.kind().is_io());
        let mut parts = Vec::new();
        for seg in dev.bar_plan(index) {
            let mmap_err = |source| Error::Mmap {
                device: name.to_owned(),
                bar: index,
                source,
            };
            parts.push(match seg.kind {
                SegmentKind::Mmap => {
                    let mem = dev
                        .backend()
                        .mmap(u32::from(index), seg.offset, seg.len)
                        .map_err(mmap_err)?;
                    Part::mapped(seg.offset, mem, p2p)
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
                        bar: index,
                        offset: seg.offset,
                    })),
                    base: None,
                    name: format!("{name} BAR{index}"),
                },
            });
        }
        all.push((index, is_io, parts));
    }
    Ok(all)
}
