//! Tests of [`VfioPciDevice`] over a [`FakeBackend`].

use super::*;
use crate::backend::{region_info, FakeBackend, ROM_REGION};
use crate::bars::SegmentKind;
use pci::BarKind;

const MSI_REG: usize = 0x50 / 4;
const MSIX_REG: usize = 0x70 / 4;

/// An NVMe-like PCIe device: 64-bit BAR0 of 16 KiB (MSI-X table at 0x2000, PBA at 0x3000),
/// a 32-bit prefetchable BAR2 of 1 MiB, an I/O BAR3 of 256 ports, a 32 KiB ROM, a
/// multi-function header, interrupt pin A on host line 11, capabilities PM (0x40), MSI (0x50,
/// 64-bit, per-vector masking, 4 vectors) and MSI-X (0x70, 8 vectors).
fn nvme_like() -> FakeBackend {
    let fake = FakeBackend::new(0x8086, 0x0953, true);
    fake.set_config(0x06, &[0x10, 0x00]);
    fake.set_config(0x0e, &[0x80]);
    fake.set_config(0x34, &[0x40]);
    fake.set_config(0x3c, &[0x0b, 0x01]);
    fake.set_config(0x40, &[0x01, 0x50, 0x03, 0x00]);
    fake.set_config(0x50, &[0x05, 0x70, 0x84, 0x01]);
    fake.set_config(0x70, &[0x11, 0x00, 0x07, 0x00]);
    fake.set_config(0x74, &0x2000u32.to_le_bytes());
    fake.set_config(0x78, &0x3000u32.to_le_bytes());
    fake.set_bar(0, 0x4, 0x4000, true);
    fake.set_bar(2, 0x8, 0x10_0000, true);
    fake.set_bar(3, 0x1, 0x100, false);
    fake.set_region(ROM_REGION, region_info(0x8000, false));
    fake
}

fn device() -> VfioPciDevice<FakeBackend> {
    VfioPciDevice::new(nvme_like()).unwrap()
}

fn write32(dev: &mut VfioPciDevice<FakeBackend>, reg: usize, value: u32) -> Vec<BarReprogram> {
    dev.write_config_register(reg, 0, &value.to_le_bytes())
}

/// The size mask a sizing probe of `reg` reads back (the register is restored after).
fn probe(dev: &mut VfioPciDevice<FakeBackend>, reg: usize) -> u32 {
    let old = dev.read_config_register(reg);
    write32(dev, reg, u32::MAX);
    let mask = dev.read_config_register(reg);
    write32(dev, reg, old);
    mask
}

/// (bar, old, new) of each move.
fn summary(moves: &[BarReprogram]) -> Vec<(u8, u64, u64)> {
    moves
        .iter()
        .map(|m| (m.bar, m.old_base, m.new_base))
        .collect()
}

#[test]
fn needs_a_config_region() {
    let fake = FakeBackend::default();
    assert_eq!(VfioPciDevice::new(fake).err(), Some(Error::NoConfigRegion));
    let bad = nvme_like();
    bad.set_config(0x74, &0x2007u32.to_le_bytes());
    assert!(matches!(VfioPciDevice::new(bad), Err(Error::Msix(_))));
}

#[test]
fn bar_sizing_for_every_type() {
    let mut dev = device();
    assert_eq!(
        (probe(&mut dev, 4), probe(&mut dev, 5)),
        (0xffff_c004, 0xffff_ffff)
    );
    assert_eq!(probe(&mut dev, 6), 0xfff0_0008, "32-bit prefetchable");
    assert_eq!(probe(&mut dev, 7), 0xffff_ff01, "I/O");
    assert_eq!(probe(&mut dev, 8), 0, "unimplemented");
    write32(&mut dev, 12, 0xffff_f800);
    assert_eq!(
        dev.read_config_register(12),
        0xffff_8000,
        "ROM, probed as Linux does"
    );
    let kinds: Vec<_> = dev
        .bar_set()
        .iter()
        .map(|b| (b.index(), b.kind()))
        .collect();
    assert_eq!(
        kinds[0],
        (
            0,
            BarKind::Mem64 {
                prefetchable: false
            }
        )
    );
    assert_eq!(kinds.len(), 4);
}

#[test]
fn bars_shadow_guest_writes_and_never_reach_the_device() {
    let mut dev = device();
    write32(&mut dev, 4, 0xc000_0000);
    write32(&mut dev, 5, 0x1);
    write32(&mut dev, 7, 0x2000);
    write32(&mut dev, 12, 0xd000_0001);
    assert_eq!(dev.read_config_register(4), 0xc000_0004);
    assert_eq!(dev.read_config_register(5), 0x1);
    assert_eq!(dev.read_config_register(7), 0x2001);
    assert_eq!(dev.read_config_register(12), 0xd000_0001);
    assert_eq!(dev.bar_set().get(0).unwrap().addr(), 0x1_c000_0000);
    assert!(dev.backend().take_writes().is_empty());
    assert_eq!(
        dev.backend().config_dword(0x10),
        0x4,
        "device register untouched"
    );
}

#[test]
fn interrupt_line_is_shadowed_and_pin_is_real() {
    let mut dev = device();
    assert_eq!(
        dev.read_config_register(15),
        0x0100,
        "line starts at 0, pin A"
    );
    dev.write_config_register(15, 0, &[0x0a]);
    dev.write_config_register(15, 1, &[0x04]);
    assert_eq!(dev.read_config_register(15), 0x010a);
    assert!(dev.backend().take_writes().is_empty());
}

#[test]
fn header_type_hides_multi_function() {
    let mut dev = device();
    dev.backend().set_config(0x0c, &[0x10, 0x20]);
    assert_eq!(dev.read_config_register(3), 0x0000_2010);
    dev.write_config_register(3, 0, &[0x08]);
    assert_eq!(
        dev.backend().take_writes(),
        vec![(CONFIG_REGION, 0xc, vec![0x08])]
    );
}

#[test]
fn msi_is_virtual_and_notifies() {
    let mut dev = device();
    assert_eq!(dev.read_config_register(MSI_REG), 0x0184_7005);
    write32(&mut dev, MSI_REG + 1, 0xfee0_0000);
    write32(&mut dev, MSI_REG + 3, 0x4021);
    assert_eq!(dev.take_interrupt_changes(), vec![InterruptChange::Msi]);
    dev.write_config_register(MSI_REG, 2, &[0x71]);
    write32(&mut dev, MSI_REG + 4, 0x2);
    let state = dev.msi().unwrap();
    assert_eq!((state.enabled, state.vectors, state.masked), (true, 4, 0x2));
    assert_eq!((state.address, state.data), (0xfee0_0000, 0x4021));
    assert_eq!(dev.read_config_register(MSI_REG + 1), 0xfee0_0000);
    assert_eq!(dev.take_interrupt_changes(), vec![InterruptChange::Msi]);
    write32(&mut dev, MSI_REG + 4, 0x2);
    assert!(dev.take_interrupt_changes().is_empty());
    assert!(dev.backend().take_writes().is_empty());
    assert_eq!(dev.backend().config_dword(0x50), 0x0184_7005);
}

#[test]
fn msix_is_virtual_and_notifies() {
    let mut dev = device();
    assert_eq!(dev.read_config_register(MSIX_REG), 0x0007_0011);
    assert_eq!(dev.read_config_register(MSIX_REG + 1), 0x2000);
    dev.write_config_register(MSIX_REG, 3, &[0xc0]);
    assert_eq!(
        dev.take_interrupt_changes(),
        vec![InterruptChange::MsixControl]
    );
    let state = dev.msix().unwrap();
    assert!(state.enabled && state.masked && state.entries.iter().all(|e| e.masked));
    dev.bar_write(0, 0x2010, &0xfee0_0000u32.to_le_bytes());
    dev.bar_write(0, 0x2018, &0x33u32.to_le_bytes());
    dev.bar_write(0, 0x201c, &0u32.to_le_bytes());
    dev.bar_write(0, 0x2070, &0xfee0_1000u64.to_le_bytes());
    let changes = dev.take_interrupt_changes();
    let expected = [InterruptChange::MsixEntry(1), InterruptChange::MsixEntry(7)];
    assert_eq!(changes, expected);
    let entry = dev.msix_entry(1).unwrap();
    assert_eq!(
        (entry.address, entry.data, entry.masked),
        (0xfee0_0000, 0x33, false)
    );
    let mut data = [0u8; 8];
    dev.bar_read(0, 0x2018, &mut data);
    assert_eq!(u64::from_le_bytes(data), 0x33);
    dev.set_msix_pending(7, true);
    dev.bar_read(0, 0x3000, &mut data);
    assert_eq!(u64::from_le_bytes(data), 0x80);
    assert!(dev.backend().take_writes().is_empty());
}

#[test]
fn command_is_forwarded_and_gates_decoding() {
    let mut dev = device();
    dev.bar_set_mut().get_mut(2).unwrap().set_addr(0xc000_0000);
    dev.bar_set_mut().get_mut(3).unwrap().set_addr(0x1000);
    assert!(
        dev.bars().iter().all(|r| r.base == 0),
        "decoding starts off"
    );
    let on = dev.write_config_register(1, 0, &[0x07, 0x00]);
    assert_eq!(
        dev.backend().take_writes(),
        vec![(CONFIG_REGION, 4, vec![0x07, 0x00])]
    );
    assert_eq!(summary(&on), vec![(2, 0, 0xc000_0000), (3, 0, 0x1000)]);
    let off = dev.write_config_register(1, 0, &[0x05]);
    assert_eq!(summary(&off), vec![(2, 0xc000_0000, 0)]);
    assert!(
        write32(&mut dev, 6, 0xd000_0000).is_empty(),
        "moved while off"
    );
    assert_eq!(
        summary(&write32(&mut dev, 7, 0x2000)),
        vec![(3, 0x1000, 0x2000)]
    );
    write32(&mut dev, 12, 0xe000_0001);
    let again = dev.write_config_register(1, 0, &[0x06]);
    let expected = vec![
        (2, 0, 0xd000_0000),
        (3, 0x2000, 0),
        (ROM_BAR, 0, 0xe000_0000),
    ];
    assert_eq!(summary(&again), expected);
    assert!(
        dev.write_config_register(1, 1, &[0x04]).is_empty(),
        "high byte: no change"
    );
    assert_eq!(dev.bars().iter().filter(|r| r.base != 0).count(), 2);
}

#[test]
fn other_config_accesses_reach_the_device() {
    let mut dev = device();
    dev.write_config_register(0x41, 2, &[0xaa, 0xbb]);
    dev.write_config_register(0x100 / 4, 0, &[1, 2, 3, 4]);
    let writes = dev.backend().take_writes();
    assert_eq!(
        writes,
        vec![
            (CONFIG_REGION, 0x106, vec![0xaa, 0xbb]),
            (CONFIG_REGION, 0x100, vec![1, 2, 3, 4])
        ]
    );
    assert_eq!(dev.read_config_register(0x41), 0xbbaa_0000);
    assert_eq!(dev.read_config_register(0x100 / 4), 0x0403_0201);
    assert_eq!(dev.read_config_register(1023), 0);
    assert_eq!(dev.read_config_register(1024), u32::MAX);
    let conventional = FakeBackend::new(1, 2, false);
    let mut dev = VfioPciDevice::new(conventional).unwrap();
    assert_eq!(
        dev.read_config_register(0x40),
        u32::MAX,
        "no extended space"
    );
    dev.write_config_register(0x40, 0, &[1]);
    assert!(dev.backend().take_writes().is_empty());
    assert!(dev.msi().is_none() && dev.msix().is_none() && dev.bar_plan(0).is_empty());
}

#[test]
fn bar_accesses_are_forwarded_inside_the_bar() {
    let mut dev = device();
    dev.bar_write(0, 0x10, &[1, 2, 3, 4]);
    dev.bar_write(3, 0xfe, &[5, 6]);
    dev.bar_write(3, 0xff, &[5, 6]);
    dev.bar_write(ROM_BAR, 0, &[1]);
    dev.bar_write(1, 0, &[1]);
    let writes = dev.backend().take_writes();
    assert_eq!(
        writes,
        vec![(0, 0x10, vec![1, 2, 3, 4]), (3, 0xfe, vec![5, 6])]
    );
    let mut data = [0u8; 4];
    dev.bar_read(0, 0x10, &mut data);
    assert_eq!(data, [1, 2, 3, 4]);
    dev.bar_read(0, 0x3ffe, &mut data);
    assert_eq!(data, [0xff; 4]);
    dev.bar_read(ROM_BAR, 0x7ffc, &mut data);
    assert_eq!(data, [0; 4]);
    dev.bar_read(ROM_BAR, 0x7ffe, &mut data);
    assert_eq!(data, [0xff; 4], "past the ROM");
}

#[test]
fn rom_from_the_device_is_read_once() {
    let fake = nvme_like();
    fake.set_config(0x10, &[0x04]);
    let rom: Vec<u8> = (0..0x8000u32).map(|i| (i * 7) as u8).collect();
    fake.set_region(ROM_REGION, region_info(0x8000, false));
    // Backend writes go to the fake's bytes; the ROM region is read-only only for the guest.
    crate::backend::VfioBackend::write(&fake, ROM_REGION, 0, &rom).unwrap();
    fake.take_writes();
    let mut dev = VfioPciDevice::new(fake).unwrap();
    assert_eq!(dev.rom_image(), Some(&rom[..]));
    assert_eq!(dev.rom_problem(), None);
    assert_eq!(dev.bar_set().get(ROM_BAR).map(|b| b.size()), Some(0x8000));
    let mut data = [0u8; 4];
    dev.bar_read(ROM_BAR, 8, &mut data);
    assert_eq!(data, rom[8..12]);
    assert!(dev.backend().take_writes().is_empty());
}

#[test]
fn rom_sources() {
    let hidden = VfioPciDevice::with_rom(nvme_like(), RomSource::Hidden).unwrap();
    assert!(hidden.rom_image().is_none() && hidden.bar_set().get(ROM_BAR).is_none());
    assert!(hidden.bar_plan(ROM_BAR).is_empty());
    let mut hidden = hidden;
    assert_eq!(hidden.read_config_register(12), 0, "no ROM BAR");
    // A file replaces the device's ROM; the BAR is a power of two of at least a page.
    let image = vec![0x55, 0xaa, 3];
    let file = VfioPciDevice::with_rom(nvme_like(), RomSource::Image(image)).unwrap();
    let rom = file.rom_image().unwrap();
    assert_eq!(rom.len(), 0x1000);
    assert_eq!(
        (&rom[..3], rom[3], rom[0xfff]),
        (&[0x55, 0xaa, 3][..], 0xff, 0xff)
    );
    assert_eq!(file.bar_set().get(ROM_BAR).unwrap().kind(), BarKind::Rom);
    // Also on a device without a ROM of its own.
    let bare = FakeBackend::new(1, 2, false);
    let file = VfioPciDevice::with_rom(bare, RomSource::Image(vec![1; 0x1_0001])).unwrap();
    assert_eq!(file.bar_set().get(ROM_BAR).unwrap().size(), 0x2_0000);
    let bare = VfioPciDevice::new(FakeBackend::new(1, 2, false)).unwrap();
    assert!(bare.rom_image().is_none() && bare.rom_problem().is_none());
}

#[test]
fn rom_larger_than_vmm_reads_is_hidden_without_reading_it() {
    // The ROM BAR register decodes up to 2 GiB; vmm holds at most MAX_ROM in memory.
    let fake = nvme_like();
    fake.set_region(ROM_REGION, region_info(2 << 30, false));
    fake.set_unreadable(ROM_REGION);
    let mut dev = VfioPciDevice::new(fake).unwrap();
    assert!(dev.rom_image().is_none());
    let problem = dev.rom_problem().unwrap();
    assert!(
        problem.contains("ROM BAR of 2 GiB is larger than the 16 MiB vmm reads")
            && problem.contains("romfile="),
        "{problem}"
    );
    assert_eq!(dev.read_config_register(12), 0);
    // At the limit it is read.
    let fake = nvme_like();
    fake.set_region(ROM_REGION, region_info(crate::MAX_ROM, false));
    let dev = VfioPciDevice::new(fake).unwrap();
    assert_eq!(
        dev.rom_image().map(<[u8]>::len),
        Some(crate::MAX_ROM as usize)
    );
}

#[test]
fn unreadable_rom_is_hidden_with_the_reason() {
    let fake = nvme_like();
    fake.set_unreadable(ROM_REGION);
    let mut dev = VfioPciDevice::new(fake).unwrap();
    assert!(dev.rom_image().is_none());
    assert!(dev
        .rom_problem()
        .unwrap()
        .contains("Cannot allocate memory"));
    assert_eq!(dev.read_config_register(12), 0);
    assert_eq!(dev.bars().len(), 3);
}

#[test]
fn mmap_plans() {
    let mut edu = FakeBackend::new(0x1234, 0x11e8, false);
    edu.set_bar(0, 0x0, 0x10_0000, true);
    edu.set_irq_count(crate::backend::MSI_IRQ, 1);
    let edu = VfioPciDevice::new(edu).unwrap();
    let whole = Segment {
        offset: 0,
        len: 0x10_0000,
        kind: SegmentKind::Mmap,
    };
    assert_eq!(edu.bar_plan(0), vec![whole]);
    let nvme = device();
    let mmap = Segment {
        offset: 0,
        len: 0x2000,
        kind: SegmentKind::Mmap,
    };
    let trap = Segment {
        offset: 0x2000,
        len: 0x2000,
        kind: SegmentKind::Trap,
    };
    assert_eq!(nvme.bar_plan(0), vec![mmap, trap]);
    assert_eq!(nvme.bar_plan(2)[0].kind, SegmentKind::Mmap);
    assert_eq!(
        nvme.bar_plan(3),
        vec![Segment {
            offset: 0,
            len: 0x100,
            kind: SegmentKind::Trap
        }]
    );
    assert_eq!(
        nvme.bar_plan(ROM_BAR),
        vec![Segment {
            offset: 0,
            len: 0x8000,
            kind: SegmentKind::Rom
        }]
    );
    assert!(nvme.bar_plan(1).is_empty());
    let sparse = nvme_like();
    let mut info = region_info(0x10_0000, true);
    info.sparse = Some(vec![(0x1000, 0x1000)]);
    sparse.set_region(2, info);
    let plan = VfioPciDevice::new(sparse).unwrap().bar_plan(2);
    let kinds: Vec<_> = plan.iter().map(|s| (s.offset, s.kind)).collect();
    let expected = [
        (0, SegmentKind::Trap),
        (0x1000, SegmentKind::Mmap),
        (0x2000, SegmentKind::Trap),
    ];
    assert_eq!(kinds, expected);
    let unmappable = nvme_like();
    unmappable.set_region(2, region_info(0x10_0000, false));
    let plan = VfioPciDevice::new(unmappable).unwrap().bar_plan(2);
    assert_eq!(
        plan,
        vec![Segment {
            offset: 0,
            len: 0x10_0000,
            kind: SegmentKind::Trap
        }]
    );
}

/// Pseudo-random config and BAR accesses at every offset and size never panic.
#[test]
fn random_accesses_do_not_panic() {
    let mut dev = device();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..50_000 {
        let r = next();
        let len = [0, 1, 2, 3, 4, 8, 16][(r % 7) as usize];
        let mut data = vec![(r >> 8) as u8; len];
        let reg = [
            (r >> 16) as usize % 1100,
            usize::MAX - (r >> 16) as usize % 4,
        ][(r >> 60) as usize & 1];
        let offset = [(r >> 32) as usize % 6, usize::MAX][usize::from(r >> 63 == 1 && r & 8 != 0)];
        dev.write_config_register(reg, offset, &data);
        dev.read_config_register(reg);
        let bar = (r >> 40) as u8 % 9;
        let bar_off = [(r >> 24) % 0x10_0010, u64::MAX - (r >> 24) % 8][(r >> 59) as usize & 1];
        dev.bar_write(bar, bar_off, &data);
        dev.bar_read(bar, bar_off, &mut data);
        dev.set_msix_pending((r >> 48) as u16, r & 1 != 0);
    }
    dev.take_interrupt_changes();
    dev.backend().take_writes();
    assert_eq!(dev.bars().len(), 4);
}
