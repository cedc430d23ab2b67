//! Attaching and detaching devices against fakes: a fake container of [`FakeBackend`]
//! devices and a [`FakeVm`] that records memory slots, irqfds and routes. The guest's side is
//! config writes through ECAM on a real [`Bus`].

use super::attach::Container;
use super::bars::{BarMapper, KvmDma, KvmMaps};
use super::*;
use crate::vm_ops::{FakeVm, VmCall};
use pci::ConfigAddress;
use resources::layout::PCI_ECAM_START;
use std::sync::Mutex as StdMutex;
use vfio::backend::{FakeCall, MSIX_IRQ};
use vfio::{FakeBackend, SysfsDevice};

/// What the fake container saw, shared with the test.
#[derive(Default)]
struct Record {
    /// Per device name: its fake's interrupt/reset/release calls.
    calls: HashMap<String, Arc<StdMutex<Vec<FakeCall>>>>,
    /// How often guest RAM was mapped.
    ram_maps: usize,
}

/// A container of fake devices: `00:0N.0` is in IOMMU group N unless `groups` says else.
struct FakeContainer {
    record: Arc<StdMutex<Record>>,
    groups: HashMap<String, u32>,
    open: HashMap<u32, usize>,
    ram_mapped: bool,
    fail_map_ram: bool,
}

impl FakeContainer {
    fn new(record: Arc<StdMutex<Record>>) -> Self {
        Self {
            record,
            groups: HashMap::new(),
            open: HashMap::new(),
            ram_mapped: false,
            fail_map_ram: false,
        }
    }
}

/// An edu-like device: BAR0 32-bit 1 MiB (mmappable), BAR2 64-bit 16 KiB (its MSI-X table
/// at 0 and PBA at 0x800, so it is trapped), INTx pin A, MSI-X with 2 vectors.
fn fake_device(name: &str, group: u32) -> FakeBackend {
    let mut fake = FakeBackend::new(0x1234, 0x11e8, true);
    fake.identify(name, group, true);
    fake.set_config(0x06, &[0x10, 0x00]);
    fake.set_config(0x34, &[0x70]);
    fake.set_config(0x3c, &[0x00, 0x01]);
    fake.set_config(0x70, &[0x11, 0x00, 0x01, 0x00]);
    fake.set_config(0x74, &2u32.to_le_bytes());
    fake.set_config(0x78, &(0x800u32 | 2).to_le_bytes());
    fake.set_bar(0, 0x0, 1 << 20, true);
    fake.set_bar(2, 0x4, 0x4000, true);
    fake.set_irq_count(vfio::backend::INTX_IRQ, 1);
    fake.set_irq_count(MSIX_IRQ, 2);
    fake
}

impl Container for FakeContainer {
    fn find(&self, cfg: &DeviceConfig) -> Result<SysfsDevice, Error> {
        let name = cfg.spec();
        if name.ends_with(":1f.0") {
            return Err(Error::Sysfs(vfio::sysfs::Error::NotVfioBound {
                device: name,
                driver: Some("e1000e".into()),
            }));
        }
        Ok(SysfsDevice {
            path: format!("/sys/bus/pci/devices/{name}").into(),
            name,
        })
    }

    fn open(&mut self, dev: &SysfsDevice) -> Result<Box<dyn DeviceOps>, Error> {
        let slot = u32::from_str_radix(&dev.name[8..10], 16).unwrap_or(0);
        let group = *self.groups.get(&dev.name).unwrap_or(&slot);
        let fake = fake_device(&dev.name, group);
        self.record
            .lock()
            .unwrap()
            .calls
            .insert(dev.name.clone(), fake.calls());
        *self.open.entry(group).or_insert(0) += 1;
        Ok(Box::new(fake))
    }

    fn map_ram(&mut self) -> Result<(), Error> {
        if self.fail_map_ram {
            return Err(Error::Host(vfio::host::Error::DmaMap {
                iova: 0,
                size: 1 << 20,
                reason: "refused by the test".into(),
            }));
        }
        if !self.ram_mapped {
            self.record.lock().unwrap().ram_maps += 1;
            self.ram_mapped = true;
        }
        Ok(())
    }

    fn release(&mut self, dev: Box<dyn DeviceOps>) {
        let n = self.open.entry(dev.group()).or_insert(1);
        *n -= 1;
        let last = *n == 0;
        if last {
            self.open.remove(&dev.group());
        }
        if self.open.is_empty() {
            self.ram_mapped = false;
        }
        dev.release(last);
    }
}

/// A passthrough over fakes, with hotplug on, and the buses the guest reaches it through.
struct Rig {
    pt: Passthrough,
    vm: Arc<FakeVm>,
    mmio: Arc<Bus>,
    _pio: Arc<Bus>,
    record: Arc<StdMutex<Record>>,
}

fn rig(configure: impl FnOnce(&mut FakeContainer)) -> Rig {
    let record = Arc::new(StdMutex::new(Record::default()));
    let mut container = FakeContainer::new(record.clone());
    configure(&mut container);
    let fake_vm = Arc::new(FakeVm::default());
    let vm: Arc<dyn VmOps> = fake_vm.clone();
    let (pio, mmio) = (Arc::new(Bus::new()), Arc::new(Bus::new()));
    let windows = PciWindows::with_mmio64(PciWindow {
        start: 4 << 30,
        size: 64 << 30,
    });
    let dma = KvmDma::default();
    let maps = KvmMaps::new(vm.clone(), dma.clone());
    let pt = Passthrough {
        windows,
        router: Arc::new(IrqRouter::new(vm.clone())),
        vm,
        root: Arc::new(Mutex::new(PciRoot::new())),
        mapper: Arc::new(Mutex::new(BarMapper::new(Box::new(maps), &pio, &mmio))),
        devices: Arc::default(),
        resources: PciResources::new(windows).unwrap(),
        dma,
        seccomp: false,
        hotplug: false,
        container: Box::new(container),
    };
    config::install(&pt.root, &pt.mapper, &pt.devices, &pio, &mmio).unwrap();
    Rig {
        pt,
        vm: fake_vm,
        mmio,
        _pio: pio,
        record,
    }
}

fn cfg(spec: &str) -> DeviceConfig {
    spec.parse().unwrap()
}

impl Rig {
    fn calls(&self, name: &str) -> Vec<FakeCall> {
        let record = self.record.lock().unwrap();
        let calls = record.calls[name].lock().unwrap();
        calls.clone()
    }

    fn take_calls(&self, name: &str) -> Vec<FakeCall> {
        let record = self.record.lock().unwrap();
        let mut calls = record.calls[name].lock().unwrap();
        std::mem::take(&mut *calls)
    }

    /// The guest writes config dword `reg` of `slot` through ECAM.
    fn guest_config_write(&self, slot: u8, reg: u64, value: u32) {
        let at = PCI_ECAM_START + (u64::from(slot) << 15) + reg;
        assert!(self.mmio.write(at, &value.to_le_bytes()));
    }

    fn config_read(&self, slot: u8, reg_idx: usize) -> u32 {
        lock(&self.pt.root).config_read(ConfigAddress {
            bus: 0,
            device: slot,
            function: 0,
            reg_idx,
        })
    }
}

#[test]
fn hot_add_wires_the_device_and_the_guest_finds_it() {
    let mut r = rig(|_| {});
    let (id, slot) = r.pt.hot_add(&cfg("vfio-pci,host=00:03.0,id=edu")).unwrap();
    assert_eq!((id.as_str(), slot), ("edu", 1));
    assert_eq!(r.config_read(1, 0), 0x11e8_1234, "the guest can see it");
    assert_eq!(
        r.record.lock().unwrap().ram_maps,
        1,
        "guest RAM mapped once"
    );
    // Reset, then INTx wired (no MSI-X enabled yet) with its resample eventfd.
    assert_eq!(
        r.take_calls("0000:00:03.0"),
        vec![
            FakeCall::Reset,
            FakeCall::EnableIrq(0, 1),
            FakeCall::Resample(0)
        ]
    );
    let intx = pci::intx_gsi(1, 0);
    assert_eq!(r.vm.take(), vec![VmCall::Irqfd(intx, true)]);
    // BARs placed as firmware would: BAR0 in the 32-bit window, BAR2 in the 64-bit one.
    let info = r.pt.info();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].bdf, "0000:00:01.0");
    assert_eq!(info[0].interrupts, "intx");
    assert_eq!(info[0].bars[0].address, 0xc000_0000);
    assert_eq!(info[0].bars[1].address, 4 << 30);
    // The guest turns memory decoding on: BAR0 becomes a memory slot at its address.
    r.guest_config_write(1, 4, 0x0000_0002);
    let calls = r.vm.take();
    assert!(
        calls
            .iter()
            .any(|c| matches!(c, VmCall::AddSlot(s) if s.gpa == 0xc000_0000
            && s.len == 1 << 20)),
        "{calls:?}"
    );
    // The guest enables MSI-X (the control register at 0x72, in dword 0x70): vectors routed.
    r.guest_config_write(1, 0x70, 0x8001_0011);
    let calls = r.vm.take();
    assert!(calls.contains(&VmCall::RemoveIrqfd(intx)), "{calls:?}");
    assert!(
        calls
            .iter()
            .any(|c| matches!(c, VmCall::MsiRoutes(g) if g.len() == 2)),
        "{calls:?}"
    );
    assert_eq!(r.pt.info()[0].interrupts, "msix");
}

#[test]
fn hot_remove_undoes_every_step_and_the_slot_and_ranges_are_reused() {
    let mut r = rig(|_| {});
    r.pt.hot_add(&cfg("vfio-pci,host=00:03.0,id=edu")).unwrap();
    r.guest_config_write(1, 4, 0x0000_0002);
    r.guest_config_write(1, 0x70, 0x8001_0011);
    r.vm.take();
    r.take_calls("0000:00:03.0");
    assert_eq!(r.pt.slot_of("edu"), Some(1));
    assert_eq!(r.pt.hot_remove(1).as_deref(), Some("0000:00:03.0"));
    let calls = r.vm.take();
    assert!(
        calls.iter().any(|c| matches!(c, VmCall::RemoveSlot(_))),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| matches!(c, VmCall::MsiRoutes(g) if g.is_empty())),
        "MSI routes freed: {calls:?}"
    );
    assert_eq!(
        r.take_calls("0000:00:03.0"),
        vec![FakeCall::DisableIrq(MSIX_IRQ), FakeCall::Release(true)],
        "interrupts off, closed (which resets it) with its group"
    );
    assert_eq!(r.config_read(1, 0), u32::MAX, "the slot is empty");
    assert!(r.pt.info().is_empty());
    assert_eq!(r.pt.slot_of("edu"), None);
    assert_eq!(r.pt.hot_remove(1), None, "a second remove finds nothing");
    // Added again: the same slot, the same addresses, RAM mapped again (the container
    // lost its mappings with its last group).
    let (_, slot) = r.pt.hot_add(&cfg("vfio-pci,host=00:03.0,id=edu")).unwrap();
    assert_eq!(slot, 1);
    assert_eq!(r.pt.info()[0].bars[0].address, 0xc000_0000);
    assert_eq!(r.pt.info()[0].bars[1].address, 4 << 30);
    assert_eq!(r.record.lock().unwrap().ram_maps, 2);
}

#[test]
fn a_group_leaves_the_container_with_its_last_device() {
    let mut r = rig(|c| {
        c.groups.insert("0000:01:01.0".into(), 5);
        c.groups.insert("0000:01:02.0".into(), 5);
    });
    r.pt.hot_add(&cfg("vfio-pci,host=01:01.0")).unwrap();
    r.pt.hot_add(&cfg("vfio-pci,host=01:02.0")).unwrap();
    assert_eq!(r.record.lock().unwrap().ram_maps, 1);
    r.pt.hot_remove(1);
    assert_eq!(
        r.calls("0000:01:01.0").last(),
        Some(&FakeCall::Release(false))
    );
    r.pt.hot_remove(2);
    assert_eq!(
        r.calls("0000:01:02.0").last(),
        Some(&FakeCall::Release(true))
    );
}

#[test]
fn a_failed_attach_leaves_nothing_behind() {
    let mut r = rig(|c| c.fail_map_ram = true);
    let e = r.pt.hot_add(&cfg("vfio-pci,host=00:03.0")).unwrap_err();
    assert!(e.to_string().contains("refused by the test"), "{e}");
    assert_eq!(
        r.calls("0000:00:03.0").last(),
        Some(&FakeCall::Release(true)),
        "closed again"
    );
    assert_eq!(r.config_read(1, 0), u32::MAX, "not on the bus");
    assert!(r.pt.info().is_empty());
    assert!(r.vm.take().is_empty(), "no slot, irqfd or route made");
    // The BAR ranges it had are free again.
    assert_eq!(
        r.pt.resources
            .allocate(
                BarKind::Mem32 {
                    prefetchable: false
                },
                1 << 20
            )
            .unwrap(),
        0xc000_0000
    );
}

#[test]
fn refusals_name_the_problem() {
    let mut r = rig(|_| {});
    r.pt.hot_add(&cfg("vfio-pci,host=00:03.0,id=a")).unwrap();
    let e =
        r.pt.hot_add(&cfg("vfio-pci,host=00:04.0,id=a"))
            .unwrap_err();
    assert_eq!(
        e.to_string(),
        "a device with id \"a\" is in the guest already; give the new device another id"
    );
    let e =
        r.pt.hot_add(&cfg("vfio-pci,host=00:03.0,id=b"))
            .unwrap_err();
    assert_eq!(
        e.to_string(),
        "0000:00:03.0 is in the guest already (id a); remove it first, or give another device"
    );
    assert_eq!(
        r.calls("0000:00:03.0").last(),
        Some(&FakeCall::Release(false)),
        "the second handle closed, the group kept for the first"
    );
    let e = r.pt.hot_add(&cfg("vfio-pci,host=00:1f.0")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("device 0000:00:1f.0 is bound to e1000e"),
        "{e}"
    );
    assert_eq!(r.pt.info().len(), 1, "the first device is untouched");
}
