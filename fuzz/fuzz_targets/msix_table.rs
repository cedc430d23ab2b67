//! MSI-X table and PBA emulation (`vfio::msix::Msix`), standalone and as the device model
//! (`vfio::VfioPciDevice`) exposes it, driven side by side: the device must answer every
//! table/PBA access exactly as the standalone model does.
//!
//! Input: 12 bytes of capability (message control, table offset/BIR, PBA offset/BIR, each a
//! u32 LE as the device's config space holds them; the BIRs are taken modulo 6 so the device
//! can be built), then operations until the input ends: an opcode byte and its operands.
//!
//! Invariants checked beyond "no panic":
//! - an access is emulated exactly when it overlaps the table or PBA of its BAR; one that
//!   straddles their edge reads all ones and writes nothing;
//! - reads are stable, and a table write reads back as written (only the mask bit of vector
//!   control is writable, the reserved bits read 0);
//! - the entries reported changed are exactly the entries whose contents changed (checked on
//!   every entry of tables up to 64 vectors; on the touched entries, their neighbours and
//!   both ends of larger ones), and nothing but a table write changes an entry;
//! - the PBA is read-only to the guest and shows exactly the vectors set pending;
//! - message control: only Enable and Function Mask change, the other dwords never do;
//! - the device and the standalone model agree on every read and on the whole state.

#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use pci::PciDevice;
use vfio::msix::Msix;
use vfio::{FakeBackend, InterruptChange, VfioPciDevice};
use vmm_fuzz::{template, Reader, MSIX_CAP};

/// Config dword of the capability.
const CAP_REG: usize = MSIX_CAP / 4;
/// Enable and Function Mask.
const CONTROL_WRITABLE: u32 = 0xc000_0000;

struct Harness {
    msix: Msix,
    dev: VfioPciDevice<FakeBackend>,
    /// Vectors set pending, as the VMM's PBA refresh reported them.
    pending: BTreeSet<u16>,
    /// (bar, start, end) of the table, then the PBA.
    areas: [(u8, u64, u64); 2],
    cap: [u32; 3],
}

/// Where an access lands, computed independently of the model.
#[derive(Debug, PartialEq, Eq)]
enum Hit {
    Table(u64),
    Pba(u64),
    Straddle,
    Device,
}

impl Harness {
    fn hit(&self, bar: u8, offset: u64, len: usize) -> Hit {
        let Some(end) = offset.checked_add(len as u64) else {
            return Hit::Straddle;
        };
        for (i, &(b, start, area_end)) in self.areas.iter().enumerate() {
            if b != bar || end <= start || offset >= area_end {
                continue;
            }
            if offset < start || end > area_end {
                return Hit::Straddle;
            }
            return if i == 0 {
                Hit::Table(offset - start)
            } else {
                Hit::Pba(offset - start)
            };
        }
        Hit::Device
    }

    fn read(&mut self, bar: u8, offset: u64, len: usize) -> Option<Vec<u8>> {
        let mut data = vec![0x5a; len];
        let emulated = self.msix.bar_read(bar, offset, &mut data);
        let hit = self.hit(bar, offset, len);
        assert_eq!(
            emulated,
            hit != Hit::Device,
            "{hit:?} at BAR {bar} {offset:#x}+{len}"
        );
        if !emulated {
            assert!(
                data.iter().all(|&b| b == 0x5a),
                "untouched when not emulated"
            );
            return None;
        }
        let mut again = vec![0; len];
        self.msix.bar_read(bar, offset, &mut again);
        assert_eq!(data, again, "unstable read");
        let mut from_dev = vec![0; len];
        self.dev.bar_read(bar, offset, &mut from_dev);
        assert_eq!(
            data, from_dev,
            "device and model disagree at BAR {bar} {offset:#x}"
        );
        match hit {
            Hit::Straddle => assert!(data.iter().all(|&b| b == 0xff), "straddle {data:x?}"),
            Hit::Pba(at) => {
                for (i, &b) in data.iter().enumerate() {
                    for bit in 0..8 {
                        let vector = (at + i as u64) * 8 + bit;
                        let expected =
                            u16::try_from(vector).is_ok_and(|v| self.pending.contains(&v));
                        assert_eq!(b >> bit & 1 != 0, expected, "PBA bit of vector {vector}");
                    }
                }
            }
            _ => {}
        }
        Some(data)
    }

    /// The vectors whose entries a write is checked on: all of a small table, else the ones
    /// the write touches, their neighbours and the first and last (whole-table snapshots of
    /// 2048 entries per write would make the target crawl).
    fn watched(&self, hit: &Hit, len: usize) -> Vec<u16> {
        let size = self.msix.table_size();
        if size <= 64 {
            return (0..size).collect();
        }
        let mut v = vec![0, size - 1];
        if let (Hit::Table(at), true) = (hit, len > 0) {
            let first = (at / 16) as u16;
            let last = ((at + len as u64 - 1) / 16) as u16;
            v.extend(first.saturating_sub(1)..=last.saturating_add(1).min(size - 1));
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    fn write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        let hit = self.hit(bar, offset, data.len());
        let watched = self.watched(&hit, data.len());
        let before: Vec<_> = watched.iter().map(|&v| self.msix.entry(v)).collect();
        let changed = self.msix.bar_write(bar, offset, data);
        assert_eq!(changed.is_some(), hit != Hit::Device, "{hit:?}");
        let really: Vec<u16> = watched
            .iter()
            .zip(&before)
            .filter(|&(&v, old)| self.msix.entry(v) != *old)
            .map(|(&v, _)| v)
            .collect();
        let mut reported = changed.clone().unwrap_or_default();
        reported.sort_unstable();
        assert_eq!(reported, really, "reported changes");
        if !matches!(hit, Hit::Table(_)) {
            assert!(really.is_empty(), "{hit:?} write changed the table");
        }

        self.dev.bar_write(bar, offset, data);
        let mut dev_changes: Vec<u16> = self
            .dev
            .take_interrupt_changes()
            .into_iter()
            .map(|c| match c {
                InterruptChange::MsixEntry(v) => v,
                other => panic!("table write reported {other:?}"),
            })
            .collect();
        dev_changes.sort_unstable();
        assert_eq!(dev_changes, really, "device's changes");
        let forwarded = self.dev.backend().take_writes();
        if hit == Hit::Device {
            return;
        }
        assert!(forwarded.is_empty(), "table/PBA write reached the device");

        if let Hit::Table(at) = hit {
            let back = self.read(bar, offset, data.len()).expect("table read");
            for (i, (&w, &r)) in data.iter().zip(&back).enumerate() {
                let expected = match (at + i as u64) % 16 {
                    12 => w & 1,
                    13..=15 => 0,
                    _ => w,
                };
                assert_eq!(r, expected, "table byte {:#x}", at + i as u64);
            }
        }
    }

    fn control_write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        let watched = self.watched(&Hit::Device, 0);
        let before: Vec<_> = watched.iter().map(|&v| self.msix.entry(v)).collect();
        let old: Vec<Option<u32>> = (0..4).map(|i| self.msix.read(CAP_REG + i)).collect();
        let changed = self.msix.write(reg, offset, data);
        let new: Vec<Option<u32>> = (0..4).map(|i| self.msix.read(CAP_REG + i)).collect();
        assert_eq!(changed, old[0] != new[0], "control change reported");
        let (old0, new0) = (old[0].expect("dword 0"), new[0].expect("dword 0"));
        assert_eq!(
            old0 & !CONTROL_WRITABLE,
            new0 & !CONTROL_WRITABLE,
            "read-only bits"
        );
        assert_eq!(old[1..], new[1..], "table/PBA registers are read-only");
        assert_eq!(new0 & !CONTROL_WRITABLE, self.cap[0] & !CONTROL_WRITABLE);
        let after = self.msix.state();
        for (&v, old) in watched.iter().zip(&before) {
            assert_eq!(after.entries.get(usize::from(v)), old.as_ref(), "entry {v}");
        }
        assert_eq!(after.enabled, new0 & 1 << 31 != 0);
        assert_eq!(after.masked, new0 & 1 << 30 != 0);

        self.dev.write_config_register(reg, offset, data);
        let changes = self.dev.take_interrupt_changes();
        let expected: &[InterruptChange] = if changed {
            &[InterruptChange::MsixControl]
        } else {
            &[]
        };
        assert_eq!(changes, expected);
        let forwarded = self.dev.backend().take_writes();
        if reg < CAP_REG + 3 {
            assert!(forwarded.is_empty(), "capability write reached the device");
        }
    }

    /// An offset near the table or PBA (or anywhere), and a BAR (usually theirs).
    fn target(&self, r: &mut Reader) -> (u8, u64) {
        let b = r.u8();
        let area = self.areas[usize::from(b & 1)];
        let bar = if b & 2 == 0 { area.0 } else { r.u8() % 8 };
        let offset = match b >> 2 & 3 {
            0 => area.1 + u64::from(r.u16() % 0x8000),
            1 => area.1.wrapping_add(u64::from(r.u8())).wrapping_sub(0x80),
            2 => area.2.wrapping_add(u64::from(r.u8())).wrapping_sub(0x80),
            _ => r.u64(),
        };
        (bar, offset)
    }

    fn run(&mut self, r: &mut Reader) {
        while !r.is_empty() {
            match r.u8() % 6 {
                0 | 1 => {
                    let (bar, offset) = self.target(r);
                    let data = r.access_data();
                    self.write(bar, offset, &data);
                }
                2 => {
                    let (bar, offset) = self.target(r);
                    let len = r.access_len();
                    self.read(bar, offset, len);
                }
                3 => {
                    let reg = CAP_REG + usize::from(r.u8() % 4);
                    let offset = usize::from(r.u8() % 5);
                    let data = r.access_data();
                    self.control_write(reg, offset, &data);
                }
                4 => {
                    let vector = r.u16() % 2100;
                    let pending = r.u8() & 1 != 0;
                    self.msix.set_pending(vector, pending);
                    self.dev.set_msix_pending(vector, pending);
                    if vector < self.msix.table_size() {
                        if pending {
                            self.pending.insert(vector);
                        } else {
                            self.pending.remove(&vector);
                        }
                    }
                }
                _ => {
                    let vector = r.u16() % 2100;
                    assert_eq!(self.msix.entry(vector), self.dev.msix_entry(vector));
                    assert_eq!(
                        self.msix.entry(vector).is_some(),
                        vector < self.msix.table_size()
                    );
                }
            }
        }
        assert_eq!(Some(self.msix.state()), self.dev.msix());
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let control = r.u32();
    // Table and PBA BIRs 0-5 (6 and 7 are rejected, tested by the unit tests).
    let bir = |reg: u32| reg & !7 | ((reg & 7) % 6);
    let (table, pba) = (bir(r.u32()), bir(r.u32()));
    // The capability's ID and next pointer as the device has them.
    let cap = [control & !0xffff | 0x0011, table, pba];
    let msix = Msix::new(MSIX_CAP as u64, cap).expect("BIRs 0-5");
    // The device: the template with this capability and 64-bit BARs 0, 2 and 4.
    let fake = template(true);
    for (i, dword) in cap.iter().enumerate() {
        fake.set_config(MSIX_CAP + 4 * i, &dword.to_le_bytes());
    }
    for bar in 0..6u32 {
        // 64-bit BARs in pairs. Their size only matters to accesses the device forwards (not
        // checked here): keep them small, the fake allocates each region's contents.
        if bar % 2 == 0 {
            fake.set_bar(bar, 0x4, 0x1_0000, true);
        } else {
            fake.set_config(0x10 + 4 * bar as usize, &0u32.to_le_bytes());
        }
    }
    let Ok(dev) = VfioPciDevice::new(fake) else {
        panic!("device with a valid MSI-X capability rejected");
    };
    let table_area = msix.table_area();
    let pba_area = msix.pba_area();
    let mut h = Harness {
        areas: [
            (table_area.bar, table_area.range.start, table_area.range.end),
            (pba_area.bar, pba_area.range.start, pba_area.range.end),
        ],
        msix,
        dev,
        pending: BTreeSet::new(),
        cap,
    };
    h.run(&mut r);
});
