//! `devices::Bus` dispatch: ranges inserted (overlapping, empty, wrapping at `u64::MAX`) and
//! removed, and reads and writes at any address and length, routed to simple recording
//! devices and to the guest-facing platform devices (UART, i8042, ACPI PM, debug exit).
//!
//! Input: operations until the input ends, an opcode byte and its operands (see `run`).
//!
//! Invariants checked against a brute-force model of the bus (a list of ranges):
//! - an insert succeeds exactly when the range is non-empty, does not wrap and overlaps no
//!   range on the bus, and fails with the right error otherwise; a remove succeeds exactly
//!   when a range starts there;
//! - an access is routed exactly when a range covers its address, to that range's device,
//!   with the offset from the range's start and the full data (its exact length); an access
//!   that is not routed leaves `data` untouched;
//! - the per-name access counters add up to the accesses routed under each name.

#![no_main]

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use devices::acpi_pm::AcpiPm;
use devices::bus::{Bus, BusDevice, Error};
use devices::debug_exit::DebugExit;
use devices::i8042::I8042;
use devices::serial::Serial;
use devices::GuestExit;
use libfuzzer_sys::fuzz_target;
use vmm_fuzz::Reader;

/// Records every access and answers reads with a pattern derived from the offset.
#[derive(Default)]
struct Recorder {
    last: Option<(u64, Vec<u8>)>,
}

/// What a `Recorder` returns for byte `i` of a read at `offset`.
fn pattern(offset: u64, i: usize) -> u8 {
    (offset as u8).wrapping_mul(31).wrapping_add(i as u8) ^ 0xa5
}

impl BusDevice for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = pattern(offset, i);
        }
        self.last = Some((offset, vec![0; data.len()]));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.last = Some((offset, data.to_vec()));
    }
}

/// A small RAM that ignores accesses past its end (they read as all ones).
struct Ram(Vec<u8>);

impl BusDevice for Ram {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset
                .checked_add(i as u64)
                .and_then(|a| usize::try_from(a).ok());
            *b = at.and_then(|a| self.0.get(a)).copied().unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let at = offset
                .checked_add(i as u64)
                .and_then(|a| usize::try_from(a).ok());
            if let Some(slot) = at.and_then(|a| self.0.get_mut(a)) {
                *slot = b;
            }
        }
    }
}

/// A range on the model bus: its length, device index and counter name.
#[derive(Clone, Copy)]
struct Range {
    len: u64,
    device: usize,
    name: &'static str,
}

type Shared = Arc<Mutex<dyn BusDevice>>;

const NAMES: [&str; 4] = ["a", "b", "c", "other"];

struct Harness {
    bus: Bus,
    /// Every device made so far, and the recorder behind it if it is one.
    devices: Vec<(Shared, Option<Arc<Mutex<Recorder>>>)>,
    model: BTreeMap<u64, Range>,
    counts: BTreeMap<&'static str, u64>,
    exit: Arc<GuestExit>,
}

impl Harness {
    /// A device for a new range: bit 7 of `kind` reuses device `kind >> 3 & 0xf` if there is
    /// one (a device in several ranges), else bits 0-2 pick a new one's type.
    fn device(&mut self, kind: u8) -> usize {
        let index = usize::from(kind >> 3 & 0xf);
        if index < self.devices.len() && kind & 0x80 != 0 {
            return index;
        }
        let device: (Shared, _) = match kind % 8 {
            0 | 1 => {
                let rec = Arc::new(Mutex::new(Recorder::default()));
                (rec.clone(), Some(rec))
            }
            2 => (Arc::new(Mutex::new(Ram(vec![0; usize::from(kind)]))), None),
            3 => match Serial::new(io::sink()) {
                Ok((uart, _irq)) => (Arc::new(Mutex::new(uart)), None),
                Err(_) => return self.device(0),
            },
            4 => (Arc::new(Mutex::new(I8042::new(self.exit.clone()))), None),
            5 => (Arc::new(Mutex::new(AcpiPm::new(self.exit.clone()))), None),
            6 => (
                Arc::new(Mutex::new(DebugExit::new(self.exit.clone()))),
                None,
            ),
            _ => {
                let rec = Arc::new(Mutex::new(Recorder::default()));
                (rec.clone(), Some(rec))
            }
        };
        self.devices.push(device);
        self.devices.len() - 1
    }

    /// The model's range covering `addr`: (base, range).
    fn covering(&self, addr: u64) -> Option<(u64, Range)> {
        self.model
            .iter()
            .find(|(&base, r)| addr >= base && addr - base < r.len)
            .map(|(&base, &r)| (base, r))
    }

    /// An address: near a range's edges, near 0 or `u64::MAX`, or anywhere.
    fn addr(&self, r: &mut Reader) -> u64 {
        let b = r.u8();
        let pick = self
            .model
            .iter()
            .nth(usize::from(b >> 3) % self.model.len().max(1));
        let delta = i64::from(r.u8() as i8);
        match (b % 4, pick) {
            (0, Some((&base, _))) => base.wrapping_add_signed(delta),
            (1, Some((&base, range))) => base.wrapping_add(range.len).wrapping_add_signed(delta),
            (2, _) => (delta as u64).wrapping_sub(0x40),
            _ => r.u64(),
        }
    }

    fn len(r: &mut Reader) -> u64 {
        let b = r.u8();
        match b % 4 {
            0 => u64::from(b >> 2),
            1 => 1 << (b >> 2 & 63),
            2 => u64::MAX - u64::from(b >> 2),
            _ => r.u64(),
        }
    }

    fn insert(&mut self, r: &mut Reader) {
        let kind = r.u8();
        let name = NAMES[usize::from(r.u8() % 4)];
        let base = self.addr(r);
        let len = Self::len(r);
        let device = self.device(kind);
        let handle = self.devices[device].0.clone();
        let result = if name == "other" {
            self.bus.insert(handle, base, len)
        } else {
            self.bus.insert_named(name, handle, base, len)
        };
        let expected = match base.checked_add(len).filter(|_| len > 0) {
            None => Err(Error::BadRange { base, len }),
            Some(end) => {
                // The bus names the overlapped device that starts last below `end`.
                let overlapped = self
                    .model
                    .range(..end)
                    .next_back()
                    .filter(|(&b, range)| base < b + range.len);
                match overlapped {
                    Some((_, range)) => Err(Error::Overlap {
                        name: name.to_string(),
                        base,
                        len,
                        existing: range.name.to_string(),
                    }),
                    None => Ok(()),
                }
            }
        };
        assert_eq!(result, expected, "insert {base:#x}+{len:#x}");
        if result.is_ok() {
            self.model.insert(base, Range { len, device, name });
        }
    }

    fn access(&mut self, r: &mut Reader, write: bool) {
        let addr = self.addr(r);
        let covering = self.covering(addr);
        let mut data = if write {
            r.access_data()
        } else {
            vec![0x5a; r.access_len()]
        };
        let routed = if write {
            self.bus.write(addr, &data)
        } else {
            self.bus.read(addr, &mut data)
        };
        assert_eq!(routed, covering.is_some(), "access at {addr:#x}");
        let Some((base, range)) = covering else {
            assert!(
                write || data.iter().all(|&b| b == 0x5a),
                "unrouted read wrote data"
            );
            return;
        };
        *self.counts.entry(range.name).or_default() += 1;
        let offset = addr - base;
        if let Some(rec) = &self.devices[range.device].1 {
            let last = rec.lock().unwrap().last.take();
            let (seen, seen_data) = last.expect("the recorder saw the access");
            assert_eq!(seen, offset, "offset in the range");
            if write {
                assert_eq!(seen_data, data, "written data");
            } else {
                assert_eq!(seen_data.len(), data.len(), "read length");
                for (i, &b) in data.iter().enumerate() {
                    assert_eq!(b, pattern(offset, i));
                }
            }
        }
    }

    fn run(&mut self, r: &mut Reader) {
        while !r.is_empty() {
            match r.u8() % 5 {
                0 => self.insert(r),
                1 => {
                    let base = self.addr(r);
                    assert_eq!(self.bus.remove(base), self.model.remove(&base).is_some());
                }
                2 => self.access(r, false),
                3 => self.access(r, true),
                _ => {
                    let counts: BTreeMap<String, u64> = self.bus.counts().into_iter().collect();
                    for (name, &n) in &self.counts {
                        assert_eq!(
                            counts.get(*name).copied().unwrap_or(0),
                            n,
                            "count of {name}"
                        );
                    }
                    assert_eq!(
                        counts.values().sum::<u64>(),
                        self.counts.values().sum::<u64>()
                    );
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(exit) = GuestExit::new() else {
        return;
    };
    let mut h = Harness {
        bus: Bus::new(),
        devices: Vec::new(),
        model: BTreeMap::new(),
        counts: BTreeMap::new(),
        exit: Arc::new(exit),
    };
    h.run(&mut Reader::new(data));
});
