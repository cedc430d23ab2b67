//! Config space emulation of a passed-through device (`vfio::VfioPciDevice` over
//! `vfio::FakeBackend`), reached directly and through the guest's two decoders on a
//! `pci::PciRoot` (mechanism #1 at 0xcf8-0xcff, ECAM), with what the VMM does after each
//! guest config write (drain BAR moves, drain interrupt changes and re-read MSI/MSI-X state).
//!
//! Input: the device shape (`vmm_fuzz::shaped_backend`), then operations until the input
//! ends: an opcode byte and its operands (see `Op`).
//!
//! Invariants checked beyond "no panic":
//! - a config dword reads the same twice in a row, and the same through ECAM and mechanism #1
//!   as directly; sub-dword reads are the dword's bytes, accesses leaving the dword read 1s;
//! - a BAR sizing probe (write all ones, read, write back) leaves the register as it was;
//! - the BAR moves reported (by the device, or queued in the root) take the VMM's map of BAR
//!   bases exactly to what the device reports, each move starting where the BAR was;
//! - nothing virtual reaches the device: no forwarded config write touches a BAR register,
//!   the interrupt line or the MSI/MSI-X capabilities, each stays in one dword of the config
//!   region, and no BAR write lands in the ROM or the MSI-X table/PBA;
//! - interrupt changes come without duplicates and name existing MSI-X vectors.

#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use devices::BusDevice;
use libfuzzer_sys::fuzz_target;
use pci::{BarReprogram, PciConfigIo, PciConfigMmio, PciDevice, PciRoot};
use vfio::caps::{find_capability, read_config_dword, CAP_ID_MSI, CAP_ID_MSIX};
use vfio::msix::Msix;
use vfio::{FakeBackend, InterruptChange, VfioBackend, VfioPciDevice, CONFIG_REGION, ROM_REGION};
use vmm_fuzz::{shaped_backend, Reader};

/// Config dword of the interrupt line.
const INTERRUPT_REG: usize = 15;
/// Config dwords that are BAR registers (BAR0-5, ROM).
const BAR_REGS: [usize; 7] = [4, 5, 6, 7, 8, 9, 12];
/// ECAM offset of slot 1 (where the device sits).
const SLOT1_ECAM: u64 = 1 << 15;
/// Mechanism #1 address of slot 1, register 0, enable bit set.
const SLOT1_IO: u32 = 1 << 31 | 1 << 11;

type Dev = Arc<Mutex<VfioPciDevice<FakeBackend>>>;

struct Harness {
    dev: Dev,
    root: Arc<Mutex<PciRoot>>,
    io: PciConfigIo,
    mmio: PciConfigMmio,
    /// The VMM's view of where each BAR decodes (bar -> base).
    bases: BTreeMap<u8, u64>,
    /// Config dwords the model must keep to itself.
    virtual_regs: Vec<usize>,
    /// MSI-X table and PBA as (bar, start, end).
    msix_areas: Vec<(u8, u64, u64)>,
    table_size: u16,
    config_size: u64,
    /// The mechanism #1 address register as the guest last wrote it.
    io_address: u32,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Harness {
    fn new(dev: VfioPciDevice<FakeBackend>) -> Self {
        let fake = dev.backend();
        let config_size = fake.region(CONFIG_REGION).map_or(0, |r| r.size);
        let mut virtual_regs: Vec<usize> = BAR_REGS.to_vec();
        virtual_regs.push(INTERRUPT_REG);
        // What the model decoded from the device at creation (the device's copy never changes
        // if nothing virtual is forwarded, which is checked below).
        let msi = find_capability(fake, CAP_ID_MSI);
        if let Some(offset) = msi {
            let header = read_config_dword(fake, offset);
            let dwords =
                3 + usize::from(header & 1 << 23 != 0) + 2 * usize::from(header & 1 << 24 != 0);
            let first = offset as usize / 4;
            virtual_regs.extend(first..first + dwords);
        }
        let mut msix_areas = Vec::new();
        let mut table_size = 0;
        if let Some(offset) = find_capability(fake, CAP_ID_MSIX) {
            let first = offset as usize / 4;
            virtual_regs.extend(first..first + 3);
            let dword = |i: u64| read_config_dword(fake, offset + 4 * i);
            let msix = Msix::new(offset, [dword(0), dword(1), dword(2)]).expect("device built");
            table_size = msix.table_size();
            for area in [msix.table_area(), msix.pba_area()] {
                msix_areas.push((area.bar, area.range.start, area.range.end));
            }
            assert_eq!(dev.msix_pba().map(|a| a.range), Some(msix.pba_area().range));
        }
        let bases = dev.bars().iter().map(|b| (b.bar, b.base)).collect();
        for bar in dev.bar_set().iter() {
            check_plan(&dev, bar.index(), bar.size(), &msix_areas);
        }
        let dev: Dev = Arc::new(Mutex::new(dev));
        let root = Arc::new(Mutex::new(PciRoot::new()));
        let slot = lock(&root).add_device(dev.clone()).expect("slot");
        assert_eq!(slot, 1);
        Self {
            io: PciConfigIo::new(root.clone()),
            mmio: PciConfigMmio::new(root.clone()),
            dev,
            root,
            bases,
            virtual_regs,
            msix_areas,
            table_size,
            config_size,
            io_address: 0,
        }
    }

    /// Applies BAR moves as the VMM's mapper does and checks they were consistent.
    fn apply_moves(&mut self, moves: &[BarReprogram]) {
        for mv in moves {
            let base = self.bases.get_mut(&mv.bar).expect("move of an unknown BAR");
            assert_eq!(
                *base, mv.old_base,
                "move {mv:x?} does not start where the BAR was"
            );
            assert_ne!(mv.old_base, mv.new_base, "empty move {mv:x?}");
            *base = mv.new_base;
        }
    }

    /// What the VMM does after every guest config write (`ConfigAccess::write`), plus checks.
    fn after_write(&mut self, direct_moves: Vec<BarReprogram>) {
        self.apply_moves(&direct_moves);
        let queued = lock(&self.root).take_bar_moves();
        for (slot, _) in &queued {
            assert_eq!(*slot, 1, "host bridge BARs moved");
        }
        let queued: Vec<_> = queued.into_iter().map(|(_, mv)| mv).collect();
        self.apply_moves(&queued);
        let mut dev = lock(&self.dev);
        let now: BTreeMap<u8, u64> = dev.bars().iter().map(|b| (b.bar, b.base)).collect();
        assert_eq!(
            now, self.bases,
            "moves do not add up to the BARs' positions"
        );
        let changes = dev.take_interrupt_changes();
        for (i, c) in changes.iter().enumerate() {
            assert!(!changes[..i].contains(c), "duplicate change {c:?}");
            match c {
                InterruptChange::Msi => assert!(dev.msi().is_some()),
                InterruptChange::MsixControl => assert!(dev.msix().is_some()),
                InterruptChange::MsixEntry(v) => {
                    assert!(*v < self.table_size, "change of vector {v}");
                    assert!(dev.msix_entry(*v).is_some());
                }
            }
        }
        if let Some(msi) = dev.msi() {
            assert!(
                msi.vectors.is_power_of_two() && msi.vectors <= 32,
                "{msi:?}"
            );
        }
        if let Some(msix) = dev.msix() {
            assert_eq!(msix.entries.len(), usize::from(self.table_size));
        }
        for (region, offset, data) in dev.backend().take_writes() {
            self.check_forwarded(region, offset, &data);
        }
    }

    /// A write the model passed to the device must be one the guest may make there.
    fn check_forwarded(&self, region: u32, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        if region == CONFIG_REGION {
            assert!(!data.is_empty(), "empty config write forwarded");
            assert!(end <= self.config_size, "config write past the end");
            assert_eq!(offset / 4, (end - 1) / 4, "config write leaves its dword");
            let reg = (offset / 4) as usize;
            assert!(
                !self.virtual_regs.contains(&reg),
                "virtual register {reg} written to the device"
            );
            return;
        }
        assert!(region < ROM_REGION, "write to region {region}");
        for &(bar, start, area_end) in &self.msix_areas {
            assert!(
                u32::from(bar) != region || end <= start || offset >= area_end,
                "MSI-X table/PBA write reached the device: BAR {bar} {offset:#x}+{}",
                data.len()
            );
        }
    }

    fn direct_read(&self, reg: usize) -> u32 {
        let mut dev = lock(&self.dev);
        let value = dev.read_config_register(reg);
        assert_eq!(
            value,
            dev.read_config_register(reg),
            "unstable read of {reg}"
        );
        value
    }

    /// Checks bytes read at byte `at` of dword `reg` of slot 1 against a direct read.
    fn check_read(&self, reg: usize, at: usize, data: &[u8]) {
        let dword = self.direct_read(reg).to_le_bytes();
        match dword.get(at..at + data.len()).filter(|_| !data.is_empty()) {
            Some(expected) => assert_eq!(data, expected, "reg {reg} byte {at}"),
            None => assert!(
                data.iter().all(|&b| b == 0xff),
                "reg {reg} byte {at}: {data:x?}"
            ),
        }
    }

    fn run(&mut self, r: &mut Reader) {
        while !r.is_empty() {
            match r.u8() % 16 {
                // Direct config read of any register (the trait allows any index).
                0 => {
                    let reg = usize::from(r.u16());
                    self.direct_read(reg);
                }
                // Direct config write: any register, offset and length.
                1 => {
                    let reg = usize::from(r.u16());
                    let offset = usize::from(r.u8());
                    let data = r.access_data();
                    let moves = lock(&self.dev).write_config_register(reg, offset, &data);
                    self.after_write(moves);
                }
                // Dword write through ECAM to a header or capability register.
                2 => {
                    let reg = u64::from(r.u8() % 64);
                    let value = r.u32();
                    self.mmio.write(SLOT1_ECAM + 4 * reg, &value.to_le_bytes());
                    self.after_write(Vec::new());
                }
                // BAR sizing probe through ECAM: all ones, read, restore.
                3 => {
                    let reg = BAR_REGS[usize::from(r.u8()) % BAR_REGS.len()];
                    let at = SLOT1_ECAM + 4 * reg as u64;
                    let old = self.ecam_dword(at);
                    self.mmio.write(at, &u32::MAX.to_le_bytes());
                    self.after_write(Vec::new());
                    self.ecam_dword(at);
                    self.mmio.write(at, &old.to_le_bytes());
                    self.after_write(Vec::new());
                    assert_eq!(self.ecam_dword(at), old, "sizing probe of reg {reg}");
                }
                // Command register toggle (decode enables).
                4 => {
                    let command = r.u16();
                    self.mmio.write(SLOT1_ECAM + 4, &command.to_le_bytes());
                    self.after_write(Vec::new());
                }
                // Mechanism #1 address register (any value, any width).
                5 => {
                    let data = r.access_data();
                    self.io_write(0, &data);
                }
                // Mechanism #1 data write: slot 1 register, any port, any width.
                6 => {
                    self.set_io_address(r);
                    let port = u64::from(r.u8() % 9);
                    let data = r.access_data();
                    self.io_write(port, &data);
                }
                // Mechanism #1 read, checked against a direct read when it is slot 1's.
                7 => {
                    self.set_io_address(r);
                    let port = u64::from(r.u8() % 9);
                    let mut data = vec![0; r.access_len()];
                    self.io.read(port, &mut data);
                    let a = self.io_address;
                    let slot1 = a & 0x80ff_ff00 == SLOT1_IO;
                    if (4..8).contains(&port) && slot1 {
                        self.check_read((a as usize >> 2) & 0x3f, port as usize - 4, &data);
                    } else if port == 0 && data.len() == 4 {
                        assert_eq!(data, self.io_address.to_le_bytes());
                    } else if !(4..8).contains(&port) {
                        assert!(data.iter().all(|&b| b == 0xff));
                    }
                }
                // ECAM write anywhere in (and past) the window.
                8 => {
                    let offset = u64::from(r.u32());
                    let data = r.access_data();
                    self.mmio.write(offset, &data);
                    self.after_write(Vec::new());
                }
                // ECAM read, checked against a direct read when it is slot 1's.
                9 => {
                    let offset = SLOT1_ECAM | u64::from(r.u16() & 0xfff);
                    let offset = if r.u8() & 1 == 0 {
                        offset
                    } else {
                        u64::from(r.u32())
                    };
                    let mut data = vec![0; r.access_len()];
                    self.mmio.read(offset, &mut data);
                    // Bus 0 (bits 20-27), device 1 and function 0 (bits 12-19).
                    if offset >> 12 & 0xffff == 8 {
                        let reg = (offset as usize & 0xfff) >> 2;
                        self.check_read(reg, offset as usize & 3, &data);
                    }
                }
                // Trapped BAR read: any BAR index, offset and length.
                10 => {
                    let bar = r.u8() % 8;
                    let offset = self.bar_offset(r, bar);
                    let mut data = vec![0; r.access_len()];
                    let mut dev = lock(&self.dev);
                    dev.bar_read(bar, offset, &mut data);
                    let mut again = vec![0; data.len()];
                    dev.bar_read(bar, offset, &mut again);
                    assert_eq!(data, again, "unstable BAR {bar} read at {offset:#x}");
                }
                // Trapped BAR write.
                11 => {
                    let bar = r.u8() % 8;
                    let offset = self.bar_offset(r, bar);
                    let data = r.access_data();
                    lock(&self.dev).bar_write(bar, offset, &data);
                    self.after_write(Vec::new());
                }
                // Write inside the MSI or MSI-X capability (enable, mask, address, data...).
                12 => {
                    let id = if r.u8() & 1 == 0 {
                        CAP_ID_MSI
                    } else {
                        CAP_ID_MSIX
                    };
                    let cap = find_capability(lock(&self.dev).backend(), id).unwrap_or(0x40);
                    let at = cap + u64::from(r.u8() % 24);
                    let data = r.access_data();
                    self.mmio.write(SLOT1_ECAM + at, &data);
                    self.after_write(Vec::new());
                }
                // A vector fired while masked (the VMM's PBA refresh).
                13 => {
                    let vector = r.u16() % 2100;
                    let pending = r.u8() & 1 != 0;
                    lock(&self.dev).set_msix_pending(vector, pending);
                }
                // The VMM's BAR plan (done at attach; the model must not care when).
                14 => {
                    let bar = r.u8() % 8;
                    let dev = lock(&self.dev);
                    let size = dev.bar_set().get(bar).map_or(0, |b| b.size());
                    check_plan(&dev, bar, size, &self.msix_areas);
                }
                // Sub-dword ECAM write at any byte of a register.
                _ => {
                    let reg = u64::from(r.u16() % 1024);
                    let at = u64::from(r.u8() % 4);
                    let data = r.access_data();
                    self.mmio.write(SLOT1_ECAM + 4 * reg + at, &data);
                    self.after_write(Vec::new());
                }
            }
        }
    }

    /// An offset in BAR `bar`: near the MSI-X structures, inside the BAR, or anywhere.
    fn bar_offset(&self, r: &mut Reader, bar: u8) -> u64 {
        let b = r.u8();
        match b % 4 {
            0 => self
                .msix_areas
                .get(usize::from(b >> 2 & 1))
                .map_or(0, |a| a.1)
                .wrapping_add(u64::from(r.u16()))
                .wrapping_sub(8),
            1 => {
                let size = lock(&self.dev).bar_set().get(bar).map_or(1, |b| b.size());
                r.u64() % size
            }
            2 => u64::from(r.u32()),
            _ => r.u64(),
        }
    }

    /// A guest write to the mechanism #1 ports, tracking the address register.
    fn io_write(&mut self, port: u64, data: &[u8]) {
        if let (0, Ok(dword)) = (port, <[u8; 4]>::try_from(data)) {
            self.io_address = u32::from_le_bytes(dword) & !3;
        }
        self.io.write(port, data);
        self.after_write(Vec::new());
    }

    /// Points the mechanism #1 address register at a slot 1 register (if asked to).
    fn set_io_address(&mut self, r: &mut Reader) {
        let b = r.u8();
        if b & 0x80 != 0 {
            self.io_address = SLOT1_IO | u32::from(b & 0x3f) << 2;
            self.io.write(0, &self.io_address.to_le_bytes());
        }
    }

    fn ecam_dword(&mut self, at: u64) -> u32 {
        let mut data = [0; 4];
        self.mmio.read(at, &mut data);
        let value = u32::from_le_bytes(data);
        assert_eq!(value, self.direct_read((at as usize & 0xfff) >> 2));
        value
    }
}

/// The mmap plan of BAR `bar` covers it exactly and keeps the MSI-X pages trapped.
fn check_plan(dev: &VfioPciDevice<FakeBackend>, bar: u8, size: u64, areas: &[(u8, u64, u64)]) {
    let plan = dev.bar_plan(bar);
    let mut at = 0;
    for seg in &plan {
        assert_eq!(
            seg.offset, at,
            "BAR {bar} plan has a gap or overlap: {plan:x?}"
        );
        assert!(seg.len > 0, "empty segment: {plan:x?}");
        at += seg.len;
        if seg.kind == vfio::SegmentKind::Mmap {
            assert_eq!(seg.offset % vfio::PAGE_SIZE, 0, "{plan:x?}");
            assert_eq!(seg.len % vfio::PAGE_SIZE, 0, "{plan:x?}");
            for &(b, start, end) in areas {
                let hit = b == bar && seg.offset < end && start < seg.offset + seg.len;
                assert!(!hit, "MSI-X area {start:#x}..{end:#x} mmapped: {plan:x?}");
            }
        }
    }
    assert_eq!(at, size, "BAR {bar} plan does not cover it: {plan:x?}");
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let fake = shaped_backend(&mut r);
    let Ok(dev) = VfioPciDevice::new(fake) else {
        return;
    };
    let mut h = Harness::new(dev);
    h.run(&mut r);
});
