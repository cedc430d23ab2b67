//! Passthrough wiring: the guest PCI bus with its VFIO devices, and keeping each BAR's
//! KVM memory slots (mmapped parts) and bus entries (trapped parts) where the guest put it.
//!
//! Lock order: a config-space access holds its `ConfigAccess` lock, then briefly the root's,
//! then the `BarMapper`'s; the mapper takes a device's lock only to read its BAR plan and
//! never while changing a bus. Buses never hold their map lock while calling a device.

use crate::config::{DeviceConfig, DeviceSource};
use arch::GuestMemoryMmap;
use devices::{Bus, BusDevice};
use kvm_bindings::{
    kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO, kvm_userspace_memory_region,
};
use kvm_ioctls::VmFd;
use pci::{BarReprogram, PciConfigIo, PciConfigMmio, PciDevice, PciResources, PciRoot, PciWindows};
use resources::layout::PCI_ECAM_START;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use vfio::host::{HostDevice, MmapArea, VfioHost};
use vfio::{SegmentKind, Sysfs, VfioPciDevice};
use vfio_ioctls::VfioDeviceFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// Size of the 64-bit BAR window above RAM.
const MMIO64_SIZE: u64 = 64 << 30;
/// KVM memory slots for BARs start here (RAM uses the first few).
const FIRST_BAR_SLOT: u32 = 16;

/// Errors attaching passed-through devices.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The host side refused (group, driver, permissions, memlock, DMA).
    #[error(transparent)]
    Host(#[from] vfio::host::Error),
    /// sysfs lookups failed.
    #[error(transparent)]
    Sysfs(#[from] vfio::sysfs::Error),
    /// The device's config space cannot be modelled.
    #[error("{device}: {source}")]
    Model {
        /// Device name.
        device: String,
        /// Why.
        source: vfio::Error,
    },
    /// No room for BARs or slots.
    #[error("{device}: {source}")]
    Resources {
        /// Device name.
        device: String,
        /// Why.
        source: pci::Error,
    },
    /// A KVM call failed.
    #[error("KVM: cannot {what}: {source}")]
    Kvm {
        /// What.
        what: &'static str,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// mmap of a BAR failed.
    #[error("{device}: cannot mmap BAR {bar}: {source}")]
    Mmap {
        /// Device name.
        device: String,
        /// BAR index.
        bar: u8,
        /// Why.
        source: std::io::Error,
    },
    /// Bus layout clash (a bug).
    #[error("PCI bus layout: {0}")]
    Bus(#[from] devices::bus::Error),
}

type Device = Arc<Mutex<VfioPciDevice<HostDevice>>>;

/// A BAR part that is trapped: forwards to the device with the part's offset in the BAR.
struct TrappedPart {
    device: Arc<Mutex<dyn PciDevice>>,
    bar: u8,
    offset: u64,
}

impl BusDevice for TrappedPart {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut dev = self.device.lock().unwrap_or_else(|e| e.into_inner());
        dev.bar_read(self.bar, self.offset + offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut dev = self.device.lock().unwrap_or_else(|e| e.into_inner());
        dev.bar_write(self.bar, self.offset + offset, data);
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
    },
}

/// Keeps BARs installed at the addresses the guest programs.
pub struct BarMapper {
    vm: Arc<VmFd>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    /// Parts of each (PCI slot, BAR).
    bars: HashMap<(u8, u8), Vec<Part>>,
    free_slots: Vec<u32>,
    next_slot: u32,
}

impl BarMapper {
    fn new(vm: Arc<VmFd>, pio: Arc<Bus>, mmio: Arc<Bus>) -> Self {
        Self {
            vm,
            pio,
            mmio,
            bars: HashMap::new(),
            free_slots: Vec::new(),
            next_slot: FIRST_BAR_SLOT,
        }
    }

    /// Prepares the parts of every BAR of the device in PCI slot `slot`: mmaps what can be
    /// mapped, makes handlers for the rest. Nothing is installed until the guest enables
    /// decoding.
    fn add(&mut self, slot: u8, device: &Device, name: &str) -> Result<(), Error> {
        let dyn_dev: Arc<Mutex<dyn PciDevice>> = device.clone();
        let dev = device.lock().unwrap_or_else(|e| e.into_inner());
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
                            device: dyn_dev.clone(),
                            bar,
                            offset: seg.offset,
                        })),
                        base: None,
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

    fn bus(&self, is_io: bool) -> &Bus {
        if is_io {
            &self.pio
        } else {
            &self.mmio
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
            } => match self
                .bus(is_io)
                .insert(handler.clone(), base + *offset, *len)
            {
                Ok(()) => *at = Some(base + *offset),
                Err(e) => log::warn!("guest put a BAR where it clashes: {e}; left unmapped"),
            },
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
                if let Some(at) = base.take() {
                    self.bus(is_io).remove(at);
                }
            }
        }
    }
}

/// A config-space access path (mechanism #1 or ECAM) that applies BAR moves after each write.
struct ConfigAccess<D: BusDevice> {
    inner: D,
    root: Arc<Mutex<PciRoot>>,
    mapper: Arc<Mutex<BarMapper>>,
}

impl<D: BusDevice> BusDevice for ConfigAccess<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.inner.read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.inner.write(offset, data);
        let moves = self
            .root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_bar_moves();
        if moves.is_empty() {
            return;
        }
        let mut mapper = self.mapper.lock().unwrap_or_else(|e| e.into_inner());
        for (slot, mv) in &moves {
            mapper.apply(*slot, mv);
        }
    }
}

/// Everything passthrough needs to stay alive for the VM's lifetime.
pub struct Passthrough {
    /// The container and its devices' host side (dropped last).
    pub host: VfioHost,
    /// The guest PCI root.
    pub root: Arc<Mutex<PciRoot>>,
    /// The BAR mapper.
    pub mapper: Arc<Mutex<BarMapper>>,
    /// Windows the BARs were allocated from (for ACPI).
    pub windows: PciWindows,
}

/// What the passthrough setup needs from the builder.
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

/// Opens every `--device`, maps guest RAM for DMA and puts the devices on a new PCI bus.
pub fn attach(setup: &Setup, devices: &[DeviceConfig]) -> Result<Passthrough, Error> {
    // Everything sysfs can say comes first: it names the device and the fix most precisely.
    let sysfs = Sysfs::default();
    let mut found = Vec::new();
    for cfg in devices {
        let spec = match &cfg.source {
            DeviceSource::Host(bdf) => bdf.to_string(),
            DeviceSource::Sysfs(path) => path.display().to_string(),
        };
        let dev = sysfs.device(&spec)?;
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
    let host = VfioHost::new(VfioDeviceFd::new_from_kvm(kvm_vfio), Sysfs::default())?;
    let windows = PciWindows::new(setup.mem_size, MMIO64_SIZE);
    let mut resources = PciResources::new(windows).map_err(|source| Error::Resources {
        device: "PCI windows".into(),
        source,
    })?;
    let root = Arc::new(Mutex::new(PciRoot::new()));
    let mapper = Arc::new(Mutex::new(BarMapper::new(
        setup.vm.clone(),
        setup.pio.clone(),
        setup.mmio.clone(),
    )));
    for dev in &found {
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
        let model = Arc::new(Mutex::new(model));
        let slot = root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add_device(model.clone())
            .map_err(|source| Error::Resources {
                device: name.clone(),
                source,
            })?;
        mapper
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(slot, &model, &name)?;
        log::info!(
            "{name}: IOMMU group {group}, guest 00:{slot:02x}.0, {}",
            describe_bars(&model)
        );
    }
    map_guest_ram(&host, setup.memory)?;
    let io = ConfigAccess {
        inner: PciConfigIo::new(root.clone()),
        root: root.clone(),
        mapper: mapper.clone(),
    };
    setup.pio.insert(
        Arc::new(Mutex::new(io)),
        pci::PCI_CONFIG_IO_PORT,
        pci::PCI_CONFIG_IO_SIZE,
    )?;
    let ecam = ConfigAccess {
        inner: PciConfigMmio::new(root.clone()),
        root: root.clone(),
        mapper: mapper.clone(),
    };
    setup
        .mmio
        .insert(Arc::new(Mutex::new(ecam)), PCI_ECAM_START, pci::ECAM_SIZE)?;
    Ok(Passthrough {
        host,
        root,
        mapper,
        windows,
    })
}

fn describe_bars(device: &Device) -> String {
    let dev = device.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::new();
    for bar in dev.bar_set().iter() {
        let plan = dev.bar_plan(bar.index());
        let mapped: u64 = plan
            .iter()
            .filter(|s| s.kind == SegmentKind::Mmap)
            .map(|s| s.len)
            .sum();
        out.push(format!(
            "BAR{} {:#x} bytes at {:#x} ({:#x} mmapped)",
            bar.index(),
            bar.size(),
            bar.addr(),
            mapped
        ));
    }
    out.join(", ")
}

/// Maps all guest RAM into the container, IOVA = guest physical address.
fn map_guest_ram(host: &VfioHost, memory: &GuestMemoryMmap) -> Result<(), Error> {
    for region in memory.iter() {
        // SAFETY: guest RAM stays mapped for the VM's lifetime (it outlives `host` in `Vm`),
        // and the VMM only accesses it through vm-memory's volatile accessors.
        unsafe { host.map_dma(region.start_addr().0, region.len(), region.as_ptr())? };
    }
    Ok(())
}
