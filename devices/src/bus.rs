//! A range-keyed bus: the vCPU loop asks it to route a PIO or MMIO access to a device.
//!
//! Lock order: the bus's range map (a `RwLock`, read-locked per access, write-locked only
//! when devices are added or moved) is always taken before a device's own `Mutex`. No device
//! may call back into a bus while holding its own lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// A device that answers guest accesses on a bus.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `offset` from the start of the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset` from the start of the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors when adding a device to a bus.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// The new range overlaps one already on the bus.
    Overlap {
        /// Name of the device being added.
        name: String,
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
        /// Name of the device already there.
        existing: String,
    },
    /// A zero-length or wrapping range.
    BadRange {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

impl diag::Explain for Error {
    fn advice(&self) -> diag::Advice {
        match self {
            Error::Overlap {
                name,
                base,
                len,
                existing,
            } => diag::Advice::bug(format!(
                "{name} at {base:#x}+{len:#x} overlaps {existing}, already there"
            )),
            Error::BadRange { base, len } => diag::Advice::bug(format!(
                "bus range {base:#x}+{len:#x} is empty or wraps around"
            )),
        }
    }
}
diag::explained!(Error);

struct Entry {
    name: String,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
    accesses: Arc<AtomicU64>,
}

/// Devices keyed by the start of their address range, with an access count per device name
/// (what `--stats` reports: every access here is a VM exit the VMM handled).
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
    counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`, counted as "other".
    pub fn insert(
        &self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), Error> {
        self.insert_named("other", device, base, len)
    }

    /// Puts `device` at `[base, base + len)`; its accesses are counted under `name`.
    pub fn insert_named(
        &self,
        name: &str,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), Error> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(Error::BadRange { base, len })?;
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        let before = ranges.range(..end).next_back();
        if let Some((_, e)) = before.filter(|(&b, e)| b + e.len > base) {
            return Err(Error::Overlap {
                name: name.to_owned(),
                base,
                len,
                existing: e.name.clone(),
            });
        }
        let accesses = self
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone();
        ranges.insert(
            base,
            Entry {
                name: name.to_owned(),
                len,
                device,
                accesses,
            },
        );
        Ok(())
    }

    /// Accesses per device name so far.
    pub fn counts(&self) -> Vec<(String, u64)> {
        let counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        counters
            .iter()
            .map(|(name, c)| (name.clone(), c.load(Ordering::Relaxed)))
            .collect()
    }

    /// Removes the device whose range starts at `base`; true if there was one.
    pub fn remove(&self, base: u64) -> bool {
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        ranges.remove(&base).is_some()
    }

    /// The device covering `addr` and the offset of `addr` in it.
    fn resolve(&self, addr: u64) -> Option<(Arc<Mutex<dyn BusDevice>>, u64)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (&base, entry) = ranges.range(..=addr).next_back()?;
        if addr - base >= entry.len {
            return None;
        }
        entry.accesses.fetch_add(1, Ordering::Relaxed);
        Some((entry.device.clone(), addr - base))
    }

    /// Routes a read; false (and `data` untouched) when no device covers `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((device, offset)) = self.resolve(addr) else {
            return false;
        };
        device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read(offset, data);
        true
    }

    /// Routes a write; false when no device covers `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((device, offset)) = self.resolve(addr) else {
            return false;
        };
        device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(offset, data);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last write and answers reads with the offset.
    #[derive(Default)]
    struct Probe {
        last: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_with_offsets() {
        let bus = Bus::new();
        let probe = Arc::new(Mutex::new(Probe::default()));
        bus.insert(probe.clone(), 0x3f8, 8).unwrap();
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fa, &mut data));
        assert_eq!(data, [2]);
        assert!(bus.write(0x3ff, &[7]));
        assert_eq!(probe.lock().unwrap().last, Some((7, vec![7])));
        assert!(!bus.read(0x400, &mut data));
        assert!(!bus.read(0x3f7, &mut data));
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let bus = Bus::new();
        let probe = Arc::new(Mutex::new(Probe::default()));
        bus.insert(probe.clone(), 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(probe.clone(), 0x10f, 1),
            Err(Error::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(probe.clone(), 0xf8, 0x10),
            Err(Error::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(probe.clone(), 0x200, 0),
            Err(Error::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(probe.clone(), u64::MAX, 2),
            Err(Error::BadRange { .. })
        ));
        bus.insert(probe.clone(), 0x110, 1).unwrap();
        bus.insert(probe, 0xf0, 0x10).unwrap();
    }

    #[test]
    fn accesses_are_counted_by_name() {
        let bus = Bus::new();
        let probe = Arc::new(Mutex::new(Probe::default()));
        bus.insert_named("uart", probe.clone(), 0x3f8, 8).unwrap();
        bus.insert_named("bar", probe.clone(), 0x1000, 0x10)
            .unwrap();
        bus.insert_named("bar", probe, 0x2000, 0x10).unwrap();
        let mut data = [0u8; 1];
        bus.read(0x3f8, &mut data);
        bus.write(0x1004, &data);
        bus.write(0x2004, &data);
        bus.read(0x5000, &mut data);
        assert_eq!(
            bus.counts(),
            vec![("bar".to_string(), 2), ("uart".to_string(), 1)]
        );
    }

    #[test]
    fn remove_frees_the_range() {
        let bus = Bus::new();
        let probe = Arc::new(Mutex::new(Probe::default()));
        bus.insert(probe.clone(), 0x1000, 0x1000).unwrap();
        assert!(bus.remove(0x1000));
        assert!(!bus.remove(0x1000));
        assert!(!bus.write(0x1000, &[1]));
        bus.insert(probe, 0x1800, 0x1000).unwrap();
    }
}
