//! Keeps every BAR of the passed-through devices installed where the guest programmed it:
//!
//! - a mmapped part of a BAR is a KVM memory slot at its guest address, and, unless the device
//!   has `p2p=off`, also a DMA mapping in the VFIO container at that same address (IOVA =
//!   guest physical address), so that another device's DMA reaches it (peer-to-peer);
//! - a trapped part is an entry on the MMIO or PIO bus;
//! - the expansion ROM is a read-only KVM memory slot (`KVM_MEM_READONLY`) over a copy of its
//!   contents, so the guest reads it without exits.
//!
//! The guest moves a BAR by reprogramming it or by turning decoding off and on
//! ([`pci::BarReprogram`], base 0 = not decoded). Slots and bus entries follow decoding
//! exactly. A DMA mapping follows the *address*: turning decoding off leaves it (nothing can
//! reach a BAR that does not decode through the CPU, and a device doing DMA to an address the
//! guest gave up is a guest bug either way), and it is moved only when the BAR decodes at a
//! new address. Re-pinning on every decode toggle would cost a page walk over the whole BAR
//! each time, and Linux toggles decoding around every 64-bit BAR update; the first mapping
//! has to wait for the first decode anyway, since vfio-pci refuses to fault in BAR pages while
//! the device's memory decoding is off. A mapping left at an address that another BAR then
//! decodes at is dropped first. When the kernel refuses a DMA mapping (an IOMMU aperture too
//! small for the address, a reserved range) that is one warning, not a failure: the guest
//! keeps the BAR, only peer-to-peer DMA to it is lost.
//!
//! KVM and the container are reached through [`Maps`], which tests replace with a fake. The
//! mapper never takes a device's lock.

use super::p2p::{DmaWorker, Job, ASYNC_FROM};
pub(super) use crate::vm_ops::Slot;
use crate::vm_ops::VmOps;
use devices::{Bus, BusDevice};
use pci::BarReprogram;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use vfio::host::Dma;
pub(super) use vfio::HostMemory;

/// KVM memory slots for BARs start here (RAM uses the first few).
const FIRST_BAR_SLOT: u32 = 16;

/// DMA mappings in the VFIO container. The mapper only passes host ranges of the
/// [`HostMemory`] it owns and keeps them alive until the VM ends; the mappings go with the
/// container.
pub(super) trait DmaMaps: Send {
    /// Maps `[host, host + len)` for device DMA at `iova`.
    fn map_dma(&mut self, iova: u64, len: u64, host: u64) -> Result<(), String>;
    /// Unmaps `[iova, iova + len)`.
    fn unmap_dma(&mut self, iova: u64, len: u64) -> Result<(), String>;
}

/// What installing BARs asks of KVM (and of the container, [`DmaMaps`]). The mapper only
/// passes host ranges of the [`HostMemory`] it owns and keeps them alive until the slot is
/// removed or the VM ends.
pub(super) trait Maps: DmaMaps {
    /// Creates KVM memory slot `slot`.
    fn add_slot(&mut self, slot: Slot) -> Result<(), String>;
    /// Deletes KVM memory slot `id` (whose memory is at `host`).
    fn remove_slot(&mut self, id: u32, host: u64) -> Result<(), String>;
}

/// [`DmaMaps`] on the VM's container, once there is one (until then every call fails): the
/// container is opened with the first device, at boot or at the first hot-add.
#[derive(Clone, Default)]
pub(super) struct KvmDma(Arc<OnceLock<Dma>>);

impl KvmDma {
    /// The container's DMA maps from now on (the first call wins).
    pub fn set(&self, dma: Dma) {
        let _ = self.0.set(dma);
    }
}

impl DmaMaps for KvmDma {
    fn map_dma(&mut self, iova: u64, len: u64, host: u64) -> Result<(), String> {
        let dma = self.0.get().ok_or("no VFIO container")?;
        // SAFETY: the memory is a BAR mmap the mapper owns for as long as the VM (and so the
        // container) lives, and the background mapper is joined before it goes; DMA into it
        // is what the device's BAR is for.
        unsafe { dma.map(iova, len, host as *mut u8) }
    }

    fn unmap_dma(&mut self, iova: u64, len: u64) -> Result<(), String> {
        let dma = self.0.get().ok_or("no VFIO container")?;
        dma.unmap(iova, len)
    }
}

/// [`Maps`] on the VM (its memory slots) and its container (DMA).
pub(super) struct KvmMaps {
    vm: Arc<dyn VmOps>,
    dma: KvmDma,
}

impl KvmMaps {
    /// Slots on `vm`, DMA mappings through `dma`.
    pub fn new(vm: Arc<dyn VmOps>, dma: KvmDma) -> Self {
        Self { vm, dma }
    }
}

impl DmaMaps for KvmMaps {
    fn map_dma(&mut self, iova: u64, len: u64, host: u64) -> Result<(), String> {
        self.dma.map_dma(iova, len, host)
    }

    fn unmap_dma(&mut self, iova: u64, len: u64) -> Result<(), String> {
        self.dma.unmap_dma(iova, len)
    }
}

impl Maps for KvmMaps {
    fn add_slot(&mut self, slot: Slot) -> Result<(), String> {
        // SAFETY: the mapper passes only memory it owns (a BAR mmap or a ROM copy) and keeps
        // it until it deletes the slot or the VM ends (see the trait).
        unsafe { self.vm.add_slot(slot) }.map_err(|e| e.to_string())
    }

    fn remove_slot(&mut self, id: u32, host: u64) -> Result<(), String> {
        self.vm.remove_slot(id, host).map_err(|e| e.to_string())
    }
}

/// A read-only copy of an expansion ROM in anonymous memory, for a read-only KVM slot.
pub(super) struct RomMemory {
    addr: *mut u8,
    len: usize,
}

// SAFETY: plain memory that only KVM reads after `new` filled it.
unsafe impl Send for RomMemory {}

impl RomMemory {
    /// `image` (a whole number of pages: a ROM BAR is at least one) in fresh memory that is
    /// then made read-only.
    pub fn new(image: &[u8]) -> std::io::Result<Self> {
        let len = image
            .len()
            .next_multiple_of(vfio::PAGE_SIZE as usize)
            .max(1);
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let rom = Self {
            addr: addr.cast(),
            len,
        };
        // SAFETY: `addr` is `len >= image.len()` writable bytes that nothing else refers to
        // yet; afterwards the mapping is only read.
        unsafe {
            std::ptr::copy_nonoverlapping(image.as_ptr(), rom.addr, image.len());
            if libc::mprotect(addr, len, libc::PROT_READ) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(rom)
    }
}

impl HostMemory for RomMemory {
    fn addr(&self) -> u64 {
        self.addr as u64
    }

    fn len(&self) -> u64 {
        self.len as u64
    }
}

impl Drop for RomMemory {
    fn drop(&mut self) {
        // SAFETY: addr/len are exactly what mmap returned, unmapped only here.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

/// How one part of a BAR is served, and where it is installed now.
pub(super) enum Part {
    /// Memory: a KVM slot while the BAR decodes, plus a DMA mapping when `p2p`.
    Mapped {
        /// Offset in the BAR.
        offset: u64,
        /// The memory (a BAR mmap or a ROM copy).
        mem: Box<dyn HostMemory>,
        /// Read-only for the guest (the ROM).
        readonly: bool,
        /// Also mapped for DMA at its guest address.
        p2p: bool,
        /// The KVM slot while installed.
        slot: Option<u32>,
        /// The IOVA it is DMA-mapped at (or being mapped at, in the background).
        dma: Option<u64>,
        /// Bumped on every DMA request for the part (see [`super::p2p`]).
        gen: Arc<AtomicU64>,
    },
    /// A bus entry calling the device model.
    Trapped {
        /// Offset in the BAR.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// The handler on the bus.
        handler: Arc<Mutex<dyn BusDevice>>,
        /// Where it is on the bus while installed.
        base: Option<u64>,
        /// For `--stats`: "DEVICE BARn".
        name: String,
    },
}

impl Part {
    /// A mapped part of a device BAR.
    pub fn mapped(offset: u64, mem: Box<dyn HostMemory>, p2p: bool) -> Self {
        Part::Mapped {
            offset,
            mem,
            readonly: false,
            p2p,
            slot: None,
            dma: None,
            gen: Arc::default(),
        }
    }

    /// The expansion ROM.
    pub fn rom(mem: Box<dyn HostMemory>) -> Self {
        Part::Mapped {
            offset: 0,
            mem,
            readonly: true,
            p2p: false,
            slot: None,
            dma: None,
            gen: Arc::default(),
        }
    }
}

/// The parts of one BAR and whose they are.
struct BarParts {
    /// "DEVICE BARn", for messages.
    name: String,
    /// An I/O BAR (its trapped parts live on the PIO bus).
    is_io: bool,
    parts: Vec<Part>,
}

/// Keeps BARs installed at the addresses the guest programs.
pub struct BarMapper {
    /// Maps large parts in the background; first, so that it is stopped before the parts'
    /// memory goes.
    worker: Option<DmaWorker>,
    /// Parts of this size or more go to `worker`.
    async_from: u64,
    maps: Box<dyn Maps>,
    // Weak: the buses hold the config-access handlers that hold this mapper.
    pio: Weak<Bus>,
    mmio: Weak<Bus>,
    /// Parts of each (PCI slot, BAR).
    bars: HashMap<(u8, u8), BarParts>,
    free_slots: Vec<u32>,
    next_slot: u32,
}

impl BarMapper {
    pub(super) fn new(maps: Box<dyn Maps>, pio: &Arc<Bus>, mmio: &Arc<Bus>) -> Self {
        Self {
            worker: None,
            async_from: ASYNC_FROM,
            maps,
            pio: Arc::downgrade(pio),
            mmio: Arc::downgrade(mmio),
            bars: HashMap::new(),
            free_slots: Vec::new(),
            next_slot: FIRST_BAR_SLOT,
        }
    }

    /// Whether a part is large enough for the background mapper ([`super::p2p`]).
    pub(super) fn needs_worker(&self) -> bool {
        self.bars.values().flat_map(|b| &b.parts).any(
            |p| matches!(p, Part::Mapped { p2p: true, mem, .. } if mem.len() >= self.async_from),
        )
    }

    /// Whether the background mapper runs.
    pub(super) fn has_worker(&self) -> bool {
        self.worker.is_some()
    }

    /// Hands parts of `async_from` bytes or more to `worker`.
    pub(super) fn set_worker(&mut self, worker: DmaWorker, async_from: u64) {
        self.worker = Some(worker);
        self.async_from = async_from;
    }

    /// Stops the background mapper (at its next chunk) and waits for it.
    pub(super) fn stop_worker(&mut self) {
        self.worker.take();
    }

    /// Registers the parts of BAR `bar` of the device in PCI slot `slot` (`name` is "DEVICE
    /// BARn"); nothing is installed until the guest enables decoding.
    pub(super) fn insert(
        &mut self,
        slot: u8,
        bar: u8,
        is_io: bool,
        name: String,
        parts: Vec<Part>,
    ) {
        self.bars
            .insert((slot, bar), BarParts { name, is_io, parts });
    }

    /// Takes every BAR of the device in PCI slot `slot` out: its KVM slots and bus entries
    /// go, its peer-to-peer DMA mappings are unmapped for good (the background mapper can map
    /// no chunk of them afterwards), and then its memory (the BAR mmaps) is dropped. After
    /// this nothing of the device's BARs is reachable by the guest or by another device's DMA.
    pub(super) fn remove_device(&mut self, slot: u8) {
        let keys: Vec<(u8, u8)> = self.bars.keys().filter(|k| k.0 == slot).copied().collect();
        let mut removed = Vec::new();
        let mut unmaps = Vec::new();
        for key in keys {
            let Some(mut bar) = self.bars.remove(&key) else {
                continue;
            };
            for part in &mut bar.parts {
                self.uninstall(part, bar.is_io);
                if let Part::Mapped { mem, dma, gen, .. } = part {
                    // A map in the background sees the new generation and stops.
                    gen.fetch_add(1, Ordering::Relaxed);
                    if let Some(iova) = dma.take() {
                        unmaps.push((iova, mem.len()));
                    }
                }
            }
            removed.push(bar);
        }
        let held = self.worker.as_ref().map(|w| w.hold());
        for (iova, len) in unmaps {
            if let Err(e) = self.maps.unmap_dma(iova, len) {
                log::debug!("unmap of {len:#x} bytes of peer-to-peer DMA at {iova:#x}: {e}");
            }
        }
        drop(held);
        drop(removed);
    }

    /// Moves BAR `mv.bar` of PCI slot `slot`: uninstalls it from the old base and installs it
    /// at the new one (0 means "not decoded"). A guest that programs a clashing address gets
    /// the clashing part left unmapped and a warning, never a VMM failure.
    pub(super) fn apply(&mut self, slot: u8, mv: &BarReprogram) {
        let Some(mut bar) = self.bars.remove(&(slot, mv.bar)) else {
            return;
        };
        for part in &mut bar.parts {
            self.uninstall(part, mv.is_io);
        }
        if mv.new_base != 0 {
            self.move_dma(&mut bar, mv.new_base, mv.len);
            for part in &mut bar.parts {
                self.install(part, mv.new_base, mv.is_io);
            }
            self.map_dma(&mut bar, mv.new_base);
        }
        log::debug!(
            "pci slot {slot} BAR {}: {:#x} -> {:#x} ({:#x} bytes)",
            mv.bar,
            mv.old_base,
            mv.new_base,
            mv.len
        );
        self.bars.insert((slot, mv.bar), bar);
    }

    /// The bus a BAR of this kind lives on; `None` once the VM is being dropped.
    fn bus(&self, is_io: bool) -> Option<Arc<Bus>> {
        if is_io {
            self.pio.upgrade()
        } else {
            self.mmio.upgrade()
        }
    }

    fn install(&mut self, part: &mut Part, base: u64, is_io: bool) {
        match part {
            Part::Mapped {
                offset,
                mem,
                readonly,
                slot,
                ..
            } => {
                let id = self.free_slots.pop().unwrap_or_else(|| {
                    self.next_slot += 1;
                    self.next_slot - 1
                });
                let wanted = Slot {
                    id,
                    gpa: base + *offset,
                    len: mem.len(),
                    host: mem.addr(),
                    readonly: *readonly,
                };
                match self.maps.add_slot(wanted) {
                    Ok(()) => *slot = Some(id),
                    Err(e) => {
                        self.free_slots.push(id);
                        log::warn!(
                            "guest put a BAR at {:#x}, which KVM refuses ({e}); left unmapped",
                            wanted.gpa
                        );
                    }
                }
            }
            Part::Trapped {
                offset,
                len,
                handler,
                base: at,
                name,
            } => {
                let Some(bus) = self.bus(is_io) else { return };
                match bus.insert_named(name, handler.clone(), base + *offset, *len) {
                    Ok(()) => *at = Some(base + *offset),
                    Err(e) => log::warn!("guest put a BAR where it clashes: {e}; left unmapped"),
                }
            }
        }
    }

    fn uninstall(&mut self, part: &mut Part, is_io: bool) {
        match part {
            Part::Mapped { slot, mem, .. } => {
                if let Some(id) = slot.take() {
                    if let Err(e) = self.maps.remove_slot(id, mem.addr()) {
                        log::warn!("cannot remove KVM slot {id}: {e}");
                    }
                    self.free_slots.push(id);
                }
            }
            Part::Trapped { base, .. } => {
                if let (Some(at), Some(bus)) = (base.take(), self.bus(is_io)) {
                    bus.remove(at);
                }
            }
        }
    }

    /// Before `bar` decodes at `base`: unmaps its DMA mappings that are elsewhere, and any
    /// other BAR's mapping left (while that BAR does not decode) in `[base, base + len)`.
    fn move_dma(&mut self, bar: &mut BarParts, base: u64, len: u64) {
        let mut dmas = Dmas {
            maps: self.maps.as_mut(),
            worker: self.worker.as_ref(),
            async_from: self.async_from,
        };
        for part in &mut bar.parts {
            if let Part::Mapped {
                offset,
                mem,
                dma: dma @ Some(_),
                gen,
                ..
            } = part
            {
                if *dma != Some(base + *offset) {
                    dmas.unmap(dma, mem.len(), gen);
                }
            }
        }
        for other in self.bars.values_mut() {
            for part in &mut other.parts {
                if let Part::Mapped {
                    mem,
                    slot: None,
                    dma: dma @ Some(_),
                    gen,
                    ..
                } = part
                {
                    let at = dma.unwrap_or_default();
                    if at < base + len && base < at + mem.len() {
                        dmas.unmap(dma, mem.len(), gen);
                    }
                }
            }
        }
    }

    /// Maps the `p2p` parts of `bar`, decoding at `base`, for DMA where not mapped yet.
    fn map_dma(&mut self, bar: &mut BarParts, base: u64) {
        let mut dmas = Dmas {
            maps: self.maps.as_mut(),
            worker: self.worker.as_ref(),
            async_from: self.async_from,
        };
        for part in &mut bar.parts {
            let Part::Mapped {
                offset,
                mem,
                p2p: true,
                dma: dma @ None,
                gen,
                ..
            } = part
            else {
                continue;
            };
            dmas.map(&bar.name, base + *offset, mem.as_ref(), dma, gen);
        }
    }
}

/// DMA mapping of parts: small ones right away, large ones through the background worker.
struct Dmas<'a> {
    maps: &'a mut dyn Maps,
    worker: Option<&'a DmaWorker>,
    async_from: u64,
}

impl Dmas<'_> {
    /// The worker, when a part of `len` bytes is for it.
    fn worker_for(&self, len: u64) -> Option<&DmaWorker> {
        self.worker.filter(|_| len >= self.async_from)
    }

    /// Maps `mem` at `iova` and records it in `*dma` (a failure is a warning).
    fn map(
        &mut self,
        name: &str,
        iova: u64,
        mem: &dyn HostMemory,
        dma: &mut Option<u64>,
        gen: &Arc<AtomicU64>,
    ) {
        let want = gen.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(worker) = self.worker_for(mem.len()) {
            worker.send(Job::Map {
                name: name.to_string(),
                iova,
                len: mem.len(),
                host: mem.addr(),
                gen: gen.clone(),
                want,
            });
            *dma = Some(iova);
            return;
        }
        let started = std::time::Instant::now();
        match self.maps.map_dma(iova, mem.len(), mem.addr()) {
            Ok(()) => {
                *dma = Some(iova);
                log::debug!(
                    "{name}: {:#x} bytes at {iova:#x} mapped for peer-to-peer DMA in {:.2} s",
                    mem.len(),
                    started.elapsed().as_secs_f64()
                );
            }
            Err(e) => log::warn!(
                "{name}: cannot map {:#x} bytes at {iova:#x} for peer-to-peer DMA ({e}); other \
                 devices cannot reach it",
                mem.len()
            ),
        }
    }

    /// Unmaps the DMA mapping at `*dma` (`len` bytes) and forgets it.
    fn unmap(&mut self, dma: &mut Option<u64>, len: u64, gen: &AtomicU64) {
        let Some(iova) = dma.take() else { return };
        gen.fetch_add(1, Ordering::Relaxed);
        if let Some(worker) = self.worker_for(len) {
            worker.send(Job::Unmap { iova, len });
            return;
        }
        if let Err(e) = self.maps.unmap_dma(iova, len) {
            log::warn!("cannot unmap {len:#x} bytes of peer-to-peer DMA at {iova:#x}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the fake saw, in order.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Call {
        Add(u32, u64, u64, bool),
        Remove(u32),
        Map(u64, u64),
        Unmap(u64, u64),
    }

    /// Records calls; refuses DMA maps that overlap a live one or start at `refuse`.
    #[derive(Clone, Default)]
    struct Fake {
        calls: Arc<Mutex<Vec<Call>>>,
        live: Arc<Mutex<Vec<(u64, u64)>>>,
        refuse: Option<u64>,
    }

    impl Fake {
        fn take(&self) -> Vec<Call> {
            std::mem::take(&mut self.calls.lock().unwrap())
        }
        fn push(&self, c: Call) {
            self.calls.lock().unwrap().push(c);
        }
    }

    impl Maps for Fake {
        fn add_slot(&mut self, s: Slot) -> Result<(), String> {
            self.push(Call::Add(s.id, s.gpa, s.len, s.readonly));
            Ok(())
        }
        fn remove_slot(&mut self, id: u32, _host: u64) -> Result<(), String> {
            self.push(Call::Remove(id));
            Ok(())
        }
    }

    impl DmaMaps for Fake {
        fn map_dma(&mut self, iova: u64, len: u64, _host: u64) -> Result<(), String> {
            let mut live = self.live.lock().unwrap();
            if self.refuse == Some(iova)
                || live.iter().any(|&(a, l)| a < iova + len && iova < a + l)
            {
                return Err("EEXIST".into());
            }
            live.push((iova, len));
            self.push(Call::Map(iova, len));
            Ok(())
        }
        fn unmap_dma(&mut self, iova: u64, len: u64) -> Result<(), String> {
            self.live.lock().unwrap().retain(|&m| m != (iova, len));
            self.push(Call::Unmap(iova, len));
            Ok(())
        }
    }

    fn mapper(fake: &Fake) -> (BarMapper, Arc<Bus>, Arc<Bus>) {
        let (pio, mmio) = (Arc::new(Bus::new()), Arc::new(Bus::new()));
        let m = BarMapper::new(Box::new(fake.clone()), &pio, &mmio);
        (m, pio, mmio)
    }

    fn mem(len: usize) -> Box<dyn HostMemory> {
        Box::new(RomMemory::new(&vec![0xa5; len]).unwrap())
    }

    fn mv(bar: u8, old_base: u64, new_base: u64, len: u64) -> BarReprogram {
        BarReprogram {
            bar,
            old_base,
            new_base,
            len,
            is_io: false,
        }
    }

    const PAGE: u64 = 0x1000;

    /// A trapped part's handler that reads zeros.
    struct Nothing;

    impl BusDevice for Nothing {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write(&mut self, _offset: u64, _data: &[u8]) {}
    }

    #[test]
    fn rom_slot_follows_enable_and_moves() {
        let fake = Fake::default();
        let (mut m, ..) = mapper(&fake);
        m.insert(1, 6, false, "d ROM".into(), vec![Part::rom(mem(0x8000))]);
        m.apply(1, &mv(6, 0, 0xc000_0000, 0x8000));
        assert_eq!(fake.take(), vec![Call::Add(16, 0xc000_0000, 0x8000, true)]);
        m.apply(1, &mv(6, 0xc000_0000, 0, 0x8000));
        assert_eq!(fake.take(), vec![Call::Remove(16)]);
        m.apply(1, &mv(6, 0, 0xd000_0000, 0x8000));
        m.apply(1, &mv(6, 0xd000_0000, 0xd001_0000, 0x8000));
        assert_eq!(
            fake.take(),
            vec![
                Call::Add(16, 0xd000_0000, 0x8000, true),
                Call::Remove(16),
                Call::Add(16, 0xd001_0000, 0x8000, true),
            ],
            "the slot number is reused, never DMA"
        );
        m.apply(1, &mv(9, 0, 0xd000_0000, 0x8000));
        assert!(fake.take().is_empty(), "unknown BAR");
    }

    #[test]
    fn rom_memory_holds_the_image_read_only() {
        let rom = RomMemory::new(&[0x55, 0xaa, 7]).unwrap();
        assert_eq!(HostMemory::len(&rom), PAGE);
        // SAFETY: the mapping is PAGE readable bytes owned by `rom`.
        let bytes = unsafe { std::slice::from_raw_parts(rom.addr as *const u8, 4) };
        assert_eq!(bytes, [0x55, 0xaa, 7, 0]);
    }

    #[test]
    fn p2p_maps_on_first_decode_and_moves_with_the_address() {
        let fake = Fake::default();
        let (mut m, ..) = mapper(&fake);
        let parts = vec![
            Part::mapped(0, mem(2 * PAGE as usize), true),
            Part::mapped(2 * PAGE, mem(2 * PAGE as usize), true),
        ];
        m.insert(2, 2, false, "d BAR2".into(), parts);
        let (a, b) = (0x1_0000_0000, 0x1_4000_0000);
        m.apply(2, &mv(2, 0, a, 4 * PAGE));
        assert_eq!(
            fake.take(),
            vec![
                Call::Add(16, a, 2 * PAGE, false),
                Call::Add(17, a + 2 * PAGE, 2 * PAGE, false),
                Call::Map(a, 2 * PAGE),
                Call::Map(a + 2 * PAGE, 2 * PAGE),
            ]
        );
        // Decode off and on at the same address: slots go and come, DMA stays.
        m.apply(2, &mv(2, a, 0, 4 * PAGE));
        m.apply(2, &mv(2, 0, a, 4 * PAGE));
        let calls = fake.take();
        assert!(
            calls
                .iter()
                .all(|c| matches!(c, Call::Add(..) | Call::Remove(_))),
            "{calls:?}"
        );
        // A move: unmapped at the old address, mapped at the new one.
        m.apply(2, &mv(2, a, b, 4 * PAGE));
        let dma: Vec<_> = fake
            .take()
            .into_iter()
            .filter(|c| matches!(c, Call::Map(..) | Call::Unmap(..)))
            .collect();
        assert_eq!(
            dma,
            vec![
                Call::Unmap(a, 2 * PAGE),
                Call::Unmap(a + 2 * PAGE, 2 * PAGE),
                Call::Map(b, 2 * PAGE),
                Call::Map(b + 2 * PAGE, 2 * PAGE),
            ]
        );
        // Moved while not decoding: remapped when it decodes again, at the new address.
        m.apply(2, &mv(2, b, 0, 4 * PAGE));
        m.apply(2, &mv(2, 0, a + 2 * PAGE, 4 * PAGE));
        let dma: Vec<_> = fake
            .take()
            .into_iter()
            .filter(|c| matches!(c, Call::Map(..) | Call::Unmap(..)))
            .collect();
        assert_eq!(dma.len(), 4, "{dma:?}");
        assert_eq!(dma[2], Call::Map(a + 2 * PAGE, 2 * PAGE));
    }

    /// A BAR's second page, trapped (to a handler that does nothing).
    fn trapped_second_page(name: &str) -> Part {
        Part::Trapped {
            offset: PAGE,
            len: PAGE,
            handler: Arc::new(Mutex::new(Nothing)),
            base: None,
            name: name.into(),
        }
    }

    #[test]
    fn a_removed_device_leaves_no_slot_bus_entry_or_dma_mapping() {
        let fake = Fake::default();
        let (mut m, _pio, mmio) = mapper(&fake);
        let trap = trapped_second_page("d BAR0");
        let parts = vec![Part::mapped(0, mem(PAGE as usize), true), trap];
        m.insert(1, 0, false, "d BAR0".into(), parts);
        m.insert(
            2,
            0,
            false,
            "e BAR0".into(),
            vec![Part::mapped(0, mem(PAGE as usize), true)],
        );
        m.apply(1, &mv(0, 0, 0xc000_0000, 2 * PAGE));
        m.apply(2, &mv(0, 0, 0xc001_0000, PAGE));
        fake.take();
        m.remove_device(1);
        assert_eq!(
            fake.take(),
            vec![Call::Remove(16), Call::Unmap(0xc000_0000, PAGE)],
            "slot and DMA mapping gone, the other device's untouched"
        );
        let mut data = [0u8; 4];
        assert!(
            !mmio.read(0xc000_1000, &mut data),
            "the trapped page is off the bus"
        );
        m.apply(1, &mv(0, 0, 0xc000_0000, 2 * PAGE));
        assert!(
            fake.take().is_empty(),
            "a stale move of the removed device does nothing"
        );
        m.remove_device(2);
        assert_eq!(
            fake.take(),
            vec![Call::Remove(17), Call::Unmap(0xc001_0000, PAGE)]
        );
    }

    #[test]
    fn p2p_off_and_trapped_parts_are_never_dma_mapped() {
        let fake = Fake::default();
        let (mut m, _pio, mmio) = mapper(&fake);
        let trap = trapped_second_page("d BAR0");
        m.insert(
            1,
            0,
            false,
            "d BAR0".into(),
            vec![Part::mapped(0, mem(PAGE as usize), false), trap],
        );
        m.apply(1, &mv(0, 0, 0xc000_0000, 2 * PAGE));
        assert_eq!(fake.take(), vec![Call::Add(16, 0xc000_0000, PAGE, false)]);
        let mut data = [0u8; 4];
        assert!(
            mmio.read(0xc000_1000, &mut data),
            "the trapped page is on the bus"
        );
        m.apply(1, &mv(0, 0xc000_0000, 0, 2 * PAGE));
        assert!(!mmio.read(0xc000_1000, &mut data), "and gone with decoding");
    }

    #[test]
    fn large_parts_go_through_the_background_worker() {
        let fake = Fake::default();
        let (mut m, ..) = mapper(&fake);
        let big = 4 * PAGE;
        m.insert(
            1,
            2,
            false,
            "d BAR2".into(),
            vec![Part::mapped(0, mem(big as usize), true)],
        );
        m.insert(
            2,
            0,
            false,
            "e BAR0".into(),
            vec![Part::mapped(0, mem(PAGE as usize), true)],
        );
        assert!(!m.needs_worker(), "nothing of 1 GiB");
        m.async_from = big;
        assert!(m.needs_worker());
        let worker = DmaWorker::start(Box::new(fake.clone()), PAGE, false).unwrap();
        m.set_worker(worker, big);
        let (a, b) = (0x1_0000_0000, 0x2_0000_0000);
        m.apply(1, &mv(2, 0, a, big));
        m.apply(2, &mv(0, 0, 0xc000_0000, PAGE));
        m.apply(1, &mv(2, a, 0, big));
        m.apply(1, &mv(2, 0, b, big));
        let done = |c: &Call| *c == Call::Map(b + 3 * PAGE, PAGE);
        for _ in 0..5000 {
            if fake.calls.lock().unwrap().iter().any(done) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        m.stop_worker();
        let calls = fake.take();
        let dma: Vec<_> = calls
            .iter()
            .filter(|c| matches!(c, Call::Map(..) | Call::Unmap(..)))
            .cloned()
            .collect();
        // The small BAR mapped right away; the large one in chunks, in order, but the map at
        // `a` may have been cut short by the move.
        assert!(dma.contains(&Call::Map(0xc000_0000, PAGE)), "{dma:?}");
        let at_b: Vec<_> = dma
            .iter()
            .filter(|c| matches!(c, Call::Map(x, _) if *x >= b))
            .collect();
        assert_eq!(at_b.len(), 4, "{dma:?}");
        let unmap = dma
            .iter()
            .position(|c| *c == Call::Unmap(a, big))
            .expect("unmapped a");
        let first_b = dma.iter().position(|c| *c == Call::Map(b, PAGE)).unwrap();
        assert!(unmap < first_b, "{dma:?}");
    }

    #[test]
    fn a_stale_mapping_in_the_way_is_dropped_and_refusals_only_warn() {
        let fake = Fake {
            refuse: Some(0x3_0000_0000),
            ..Fake::default()
        };
        let (mut m, ..) = mapper(&fake);
        m.insert(
            1,
            2,
            false,
            "a BAR2".into(),
            vec![Part::mapped(0, mem(PAGE as usize), true)],
        );
        m.insert(
            2,
            2,
            false,
            "b BAR2".into(),
            vec![Part::mapped(0, mem(PAGE as usize), true)],
        );
        let x = 0x2_0000_0000;
        m.apply(1, &mv(2, 0, x, PAGE));
        m.apply(1, &mv(2, x, 0, PAGE));
        fake.take();
        // b decodes where a's mapping was left: a's goes first.
        m.apply(2, &mv(2, 0, x, PAGE));
        assert_eq!(
            fake.take(),
            vec![
                Call::Unmap(x, PAGE),
                Call::Add(16, x, PAGE, false),
                Call::Map(x, PAGE)
            ]
        );
        // a decodes again elsewhere and gets a new mapping.
        m.apply(1, &mv(2, 0, x + PAGE, PAGE));
        assert!(fake.take().contains(&Call::Map(x + PAGE, PAGE)));
        // The IOMMU refuses an address: the slot is there, DMA is not, nothing fails.
        m.apply(2, &mv(2, x, 0x3_0000_0000, PAGE));
        let calls = fake.take();
        assert!(
            calls.contains(&Call::Add(16, 0x3_0000_0000, PAGE, false)),
            "{calls:?}"
        );
        assert!(
            !calls.iter().any(|c| matches!(c, Call::Map(..))),
            "{calls:?}"
        );
        // Decoding again at a good address maps it.
        m.apply(2, &mv(2, 0x3_0000_0000, x + 4 * PAGE, PAGE));
        assert!(fake.take().contains(&Call::Map(x + 4 * PAGE, PAGE)));
    }
}
