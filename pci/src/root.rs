//! Bus 0 and the two ways the guest reaches its config spaces: mechanism #1 (ports
//! 0xcf8-0xcff) and ECAM (MMIO, bus 0 only). Both route to one [`PciRoot`].
//!
//! Lock order: a config-access `BusDevice` ([`PciConfigIo`], [`PciConfigMmio`]) -> the
//! [`PciRoot`] -> a device. Devices never lock the root or a bus.

use std::sync::{Arc, Mutex, MutexGuard};

use devices::bus::BusDevice;

use crate::bar::BarReprogram;
use crate::config::PciConfig;
use crate::{extract_bytes, Error, PciDevice};

/// Device numbers on bus 0, including the host bridge in slot 0.
pub const MAX_SLOTS: usize = 32;
/// First port of config mechanism #1.
pub const PCI_CONFIG_IO_PORT: u64 = 0xcf8;
/// Ports of config mechanism #1: address at 0xcf8, data at 0xcfc-0xcff.
pub const PCI_CONFIG_IO_SIZE: u64 = 8;
/// ECAM bytes decoded: bus 0 only (32 devices x 8 functions x 4 KiB).
pub const ECAM_SIZE: u64 = 1 << 20;

/// Mechanism #1 enable bit in the address register.
const CONFIG_ENABLE: u32 = 1 << 31;
/// Dwords in a PCIe config space.
const MAX_REG_IDX: usize = 1024;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A config space dword address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigAddress {
    /// Bus number.
    pub bus: u8,
    /// Device (slot) number, 0-31.
    pub device: u8,
    /// Function number, 0-7.
    pub function: u8,
    /// Dword index in the config space, 0-1023.
    pub reg_idx: usize,
}

impl ConfigAddress {
    /// Decodes a mechanism #1 address register; `None` if the enable bit is clear.
    pub fn from_io(address: u32) -> Option<Self> {
        (address & CONFIG_ENABLE != 0).then_some(Self {
            bus: (address >> 16) as u8,
            device: (address >> 11) as u8 & 0x1f,
            function: (address >> 8) as u8 & 0x7,
            reg_idx: (address as usize >> 2) & 0x3f,
        })
    }

    /// Decodes an ECAM offset (`bus << 20 | device << 15 | function << 12 | register`).
    pub fn from_ecam(offset: u64) -> Self {
        Self {
            bus: (offset >> 20) as u8,
            device: (offset >> 15) as u8 & 0x1f,
            function: (offset >> 12) as u8 & 0x7,
            reg_idx: (offset as usize & 0xfff) >> 2,
        }
    }
}

/// Bus 0: the host bridge in slot 0, then devices in the first free slots. Single-function
/// devices only: function 1-7, empty slots and other buses read as absent.
pub struct PciRoot {
    slots: Vec<Option<Arc<Mutex<dyn PciDevice>>>>,
    moves: Vec<(u8, BarReprogram)>,
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl PciRoot {
    /// Bus 0 with only the host bridge.
    pub fn new() -> Self {
        let mut slots: Vec<Option<Arc<Mutex<dyn PciDevice>>>> = vec![None; MAX_SLOTS];
        slots[0] = Some(Arc::new(Mutex::new(PciConfig::host_bridge())));
        Self {
            slots,
            moves: Vec::new(),
        }
    }

    /// Puts `device` in the lowest free slot (1, 2, ...) and returns the slot.
    pub fn add_device(&mut self, device: Arc<Mutex<dyn PciDevice>>) -> Result<u8, Error> {
        let slot = self.free_slot().ok_or(Error::NoFreeSlot)?;
        self.slots[usize::from(slot)] = Some(device);
        Ok(slot)
    }

    /// The lowest free slot, if any.
    pub fn free_slot(&self) -> Option<u8> {
        self.slots.iter().position(Option::is_none).map(|s| s as u8)
    }

    /// Puts `device` in `slot`, which must be free (see [`PciRoot::free_slot`]).
    pub fn add_device_at(
        &mut self,
        slot: u8,
        device: Arc<Mutex<dyn PciDevice>>,
    ) -> Result<(), Error> {
        match self.slots.get_mut(usize::from(slot)) {
            Some(free @ None) => {
                *free = Some(device);
                Ok(())
            }
            _ => Err(Error::NoFreeSlot),
        }
    }

    /// Takes the device out of `slot` (never the host bridge); the slot reads as absent.
    /// BAR moves it queued and nobody took are dropped with it.
    pub fn remove_device(&mut self, slot: u8) -> Option<Arc<Mutex<dyn PciDevice>>> {
        if slot == 0 {
            return None;
        }
        self.moves.retain(|(s, _)| *s != slot);
        self.slots.get_mut(usize::from(slot))?.take()
    }

    /// The device in `slot` (0 is the host bridge).
    pub fn device(&self, slot: u8) -> Option<Arc<Mutex<dyn PciDevice>>> {
        self.slots.get(usize::from(slot)).cloned().flatten()
    }

    fn lookup(&self, addr: ConfigAddress) -> Option<&Arc<Mutex<dyn PciDevice>>> {
        if addr.bus != 0 || addr.function != 0 || addr.reg_idx >= MAX_REG_IDX {
            return None;
        }
        self.slots.get(usize::from(addr.device))?.as_ref()
    }

    /// A config dword; all ones for absent devices.
    pub fn config_read(&self, addr: ConfigAddress) -> u32 {
        self.lookup(addr)
            .map_or(u32::MAX, |dev| lock(dev).read_config_register(addr.reg_idx))
    }

    /// A config write of `data` at byte `offset` of the dword; queues any BAR move.
    pub fn config_write(&mut self, addr: ConfigAddress, offset: usize, data: &[u8]) {
        if data.is_empty() || offset + data.len() > 4 {
            return;
        }
        let Some(dev) = self.lookup(addr) else {
            return;
        };
        let moved = lock(dev).write_config_register(addr.reg_idx, offset, data);
        for mv in moved {
            log::debug!("PCI slot {} moved BAR: {mv:x?}", addr.device);
            self.moves.push((addr.device, mv));
        }
    }

    /// BAR moves (slot, move) queued by guest config writes since the last call, in order.
    pub fn take_bar_moves(&mut self) -> Vec<(u8, BarReprogram)> {
        std::mem::take(&mut self.moves)
    }
}

/// Config mechanism #1 at [`PCI_CONFIG_IO_PORT`], [`PCI_CONFIG_IO_SIZE`] ports.
pub struct PciConfigIo {
    root: Arc<Mutex<PciRoot>>,
    address: u32,
}

impl PciConfigIo {
    /// Mechanism #1 for `root`.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        Self { root, address: 0 }
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            0 if data.len() == 4 => Some(self.address),
            4..=7 => Some(
                ConfigAddress::from_io(self.address)
                    .map_or(u32::MAX, |a| lock(&self.root).config_read(a)),
            ),
            _ => None,
        };
        extract_bytes(value, offset.saturating_sub(4) as usize, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, <[u8; 4]>::try_from(data)) {
            // Only dword accesses reach the address register (0xcf9 is not ours).
            (0, Ok(dword)) => self.address = u32::from_le_bytes(dword) & !0x3,
            (4..=7, _) => {
                if let Some(addr) = ConfigAddress::from_io(self.address) {
                    lock(&self.root).config_write(addr, offset as usize - 4, data);
                }
            }
            _ => log::debug!("ignored PCI config port write at {offset:#x}"),
        }
    }
}

/// ECAM for bus 0 at `PCI_ECAM_START`, [`ECAM_SIZE`] bytes.
pub struct PciConfigMmio {
    root: Arc<Mutex<PciRoot>>,
}

impl PciConfigMmio {
    /// ECAM for `root`.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        Self { root }
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = lock(&self.root).config_read(ConfigAddress::from_ecam(offset));
        extract_bytes(Some(value), offset as usize & 3, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let addr = ConfigAddress::from_ecam(offset);
        lock(&self.root).config_write(addr, offset as usize & 3, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bar::{Bar, BarKind};

    /// A root with one 4 KiB-BAR PCIe device (vendor 0x1af4) in slot 1, and both decoders.
    fn setup() -> (Arc<Mutex<PciRoot>>, PciConfigIo, PciConfigMmio) {
        let mut dev = PciConfig::new(0x1af4, 0x1041, 0x02_0000, true);
        let mut bar = Bar::new(
            0,
            BarKind::Mem32 {
                prefetchable: false,
            },
            0x1000,
        )
        .unwrap();
        bar.set_addr(0xc000_0000);
        dev.add_bar(bar).unwrap();
        let root = Arc::new(Mutex::new(PciRoot::new()));
        assert_eq!(
            root.lock().unwrap().add_device(Arc::new(Mutex::new(dev))),
            Ok(1)
        );
        let io = PciConfigIo::new(root.clone());
        let mmio = PciConfigMmio::new(root.clone());
        (root, io, mmio)
    }

    fn io_read(io: &mut PciConfigIo, address: u32, port_off: u64, len: usize) -> u32 {
        io.write(0, &address.to_le_bytes());
        let mut data = [0u8; 4];
        io.read(4 + port_off, &mut data[..len]);
        u32::from_le_bytes(data)
    }

    #[test]
    fn mechanism1_decoding() {
        let (_, mut io, _) = setup();
        let dev1 = CONFIG_ENABLE | 1 << 11;
        assert_eq!(io_read(&mut io, CONFIG_ENABLE, 0, 4), 0x0d57_8086);
        assert_eq!(io_read(&mut io, dev1, 0, 4), 0x1041_1af4);
        assert_eq!(io_read(&mut io, dev1, 2, 2), 0x1041);
        assert_eq!(io_read(&mut io, dev1, 1, 1), 0x1a);
        assert_eq!(io_read(&mut io, dev1 | 0x10, 0, 4), 0xc000_0000);
        assert_eq!(io_read(&mut io, dev1 & !CONFIG_ENABLE, 0, 4), u32::MAX);
        assert_eq!(
            io_read(&mut io, dev1 | 1 << 8, 0, 4),
            u32::MAX,
            "function 1"
        );
        assert_eq!(io_read(&mut io, dev1 | 1 << 16, 0, 4), u32::MAX, "bus 1");
        assert_eq!(io_read(&mut io, CONFIG_ENABLE | 2 << 11, 0, 2), 0xffff);
        assert_eq!(io_read(&mut io, dev1, 3, 2), 0xffff, "crosses the dword");
        let mut addr = [0u8; 4];
        io.read(0, &mut addr);
        assert_eq!(u32::from_le_bytes(addr), dev1);
        io.write(3, &[0x01]);
        io.read(0, &mut addr);
        assert_eq!(
            u32::from_le_bytes(addr),
            dev1,
            "byte writes skip the address register"
        );
    }

    #[test]
    fn mechanism1_byte_write_moves_bar() {
        let (root, mut io, _) = setup();
        io.write(0, &(CONFIG_ENABLE | 1 << 11 | 0x10).to_le_bytes());
        io.write(7, &[0xd0]);
        let moves = root.lock().unwrap().take_bar_moves();
        assert_eq!(moves.len(), 1);
        let (slot, mv) = moves[0];
        assert_eq!(
            (slot, mv.old_base, mv.new_base),
            (1, 0xc000_0000, 0xd000_0000)
        );
        assert!(root.lock().unwrap().take_bar_moves().is_empty());
    }

    #[test]
    fn ecam_decoding_reaches_extended_space() {
        let (root, _, mut mmio) = setup();
        let dev1 = 1 << 15;
        let mut data = [0u8; 4];
        mmio.read(dev1, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0x1041_1af4);
        mmio.read(dev1 + 2, &mut data[..2]);
        assert_eq!(&data[..2], &[0x41, 0x10]);
        mmio.read(dev1 + 0x100, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0, "PCIe extended space is there");
        mmio.read(0x100, &mut data);
        assert_eq!(
            u32::from_le_bytes(data),
            u32::MAX,
            "host bridge is conventional"
        );
        mmio.read(2 << 15, &mut data);
        assert_eq!(u32::from_le_bytes(data), u32::MAX, "absent slot");
        mmio.read(dev1 | 1 << 12, &mut data);
        assert_eq!(u32::from_le_bytes(data), u32::MAX, "function 1");
        mmio.write(dev1 + 0x10, &0xffff_ffffu32.to_le_bytes());
        mmio.read(dev1 + 0x10, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0xffff_f000);
        assert!(root.lock().unwrap().take_bar_moves().is_empty());
    }

    #[test]
    fn slots_fill_up() {
        let mut root = PciRoot::new();
        for slot in 1..MAX_SLOTS {
            let dev = Arc::new(Mutex::new(PciConfig::new(1, 2, 0, false)));
            assert_eq!(root.add_device(dev), Ok(slot as u8));
        }
        let dev = Arc::new(Mutex::new(PciConfig::new(1, 2, 0, false)));
        assert_eq!(root.add_device(dev.clone()), Err(Error::NoFreeSlot));
        assert!(root.device(31).is_some() && root.device(32).is_none());
        // A removed slot reads as absent and is the next one filled.
        assert!(root.remove_device(7).is_some());
        assert!(root.remove_device(7).is_none());
        assert!(root.remove_device(0).is_none(), "the host bridge stays");
        let absent = ConfigAddress {
            bus: 0,
            device: 7,
            function: 0,
            reg_idx: 0,
        };
        assert_eq!(root.config_read(absent), u32::MAX);
        assert_eq!(root.add_device(dev), Ok(7));
    }

    #[test]
    fn random_accesses_do_not_panic() {
        let (root, mut io, mut mmio) = setup();
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let r = next();
            let len = [0, 1, 2, 3, 4, 8][(r % 6) as usize];
            let mut data = vec![0u8; len];
            data.fill((r >> 8) as u8);
            let io_off = (r >> 16) % 9;
            let ecam_off = (r >> 24) % (ECAM_SIZE + 0x10);
            if r & 1 << 40 != 0 {
                io.write(0, &((r >> 32) as u32 | CONFIG_ENABLE).to_le_bytes());
            }
            io.write(io_off, &data);
            io.read(io_off, &mut data);
            mmio.write(ecam_off, &data);
            mmio.read(ecam_off, &mut data);
        }
        root.lock().unwrap().take_bar_moves();
    }
}
