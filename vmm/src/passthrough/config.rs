//! The guest's ways into the passed-through devices that the VMM serves: PCI config space
//! (mechanism #1 ports and ECAM), after each write of which BAR moves are applied and
//! interrupt wiring follows what the guest programmed, and the trapped parts of BARs (the
//! MSI-X table and PBA, parts the kernel does not let us mmap), forwarded to the device model.
//!
//! These run on vCPU threads. They must not add or remove devices: attaching and detaching
//! ([`super::attach`]) changes the shared list they read.

use super::bars::BarMapper;
use super::{lock, Devices, Passed};
use devices::{Bus, BusDevice};
use pci::{PciConfigIo, PciConfigMmio, PciDevice, PciRoot};
use resources::layout::PCI_ECAM_START;
use std::sync::{Arc, Mutex};

/// A BAR part that is trapped: forwards to the device with the part's offset in the BAR.
pub(super) struct TrappedPart {
    pub device: Arc<Passed>,
    pub bar: u8,
    pub offset: u64,
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
    devices: Devices,
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
        // Under the read lock, no copy of the list per access: attach and detach take the
        // write lock holding no model lock, so waiting for it here cannot deadlock.
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        for device in devices.iter() {
            device.sync_irqs(&mut lock(&device.model));
        }
    }
}

/// Puts mechanism #1 on the PIO bus and ECAM on the MMIO bus, both for `root`.
pub(super) fn install(
    root: &Arc<Mutex<PciRoot>>,
    mapper: &Arc<Mutex<BarMapper>>,
    devices: &Devices,
    pio: &Bus,
    mmio: &Bus,
) -> Result<(), devices::bus::Error> {
    let io = ConfigAccess {
        inner: PciConfigIo::new(root.clone()),
        root: root.clone(),
        mapper: mapper.clone(),
        devices: devices.clone(),
    };
    pio.insert_named(
        "pci-config",
        Arc::new(Mutex::new(io)),
        pci::PCI_CONFIG_IO_PORT,
        pci::PCI_CONFIG_IO_SIZE,
    )?;
    let ecam = ConfigAccess {
        inner: PciConfigMmio::new(root.clone()),
        root: root.clone(),
        mapper: mapper.clone(),
        devices: devices.clone(),
    };
    mmio.insert_named(
        "pci-ecam",
        Arc::new(Mutex::new(ecam)),
        PCI_ECAM_START,
        pci::ECAM_SIZE,
    )
}
