//! [`VfioPciDevice`]: a passed-through device as a [`pci::PciDevice`]. The guest sees the
//! device's real config space, read through the backend on every access so live status bits
//! are real, except what must be virtual:
//!
//! - BARs 0-5 and the expansion ROM BAR: a [`BarSet`] (sizing, address shadow), never written
//!   to the device; the command register's decode enables gate where they are reported.
//! - The expansion ROM's contents: read from the device once, when the model is made (or taken
//!   from a file, or hidden: [`RomSource`]), and handed to the VMM as plain bytes
//!   ([`VfioPciDevice::rom_image`]) to serve as read-only guest memory.
//! - Interrupt line (a shadow) and the header type's multi-function bit (cleared).
//! - The MSI and MSI-X capabilities ([`crate::msi`], [`crate::msix`]), including the MSI-X
//!   table and PBA in the BARs.
//!
//! Every other config write, and every BAR access outside the MSI-X structures, goes to the
//! device with the guest's size and offset. This module must not talk to KVM or the kernel's
//! VFIO API directly: the VMM drains BAR moves through [`pci::PciRoot`] and interrupt changes
//! through [`VfioPciDevice::take_interrupt_changes`], and maps BARs per
//! [`VfioPciDevice::bar_plan`].

use pci::{Bar, BarKind, BarRange, BarReprogram, BarSet, PciDevice, ROM_BAR};

use crate::backend::{VfioBackend, CONFIG_REGION, ROM_REGION};
use crate::bars::{
    moves, plan_bar, probe_bars, rom_bar_size, Decode, PlanInput, Segment, SegmentKind,
};
use crate::caps::{find_capability, read_config_dword, CAP_ID_MSI, CAP_ID_MSIX};
use crate::msi::{Msi, MsiState};
use crate::msix::{Msix, MsixEntry, MsixState};

/// Dword index of the command and status registers.
const COMMAND_REG: usize = 1;
/// Dword index of cache line size, latency timer, header type and BIST.
const HEADER_TYPE_REG: usize = 3;
/// The header type's multi-function bit, in its dword.
const MULTI_FUNCTION: u32 = 0x80 << 16;
/// Dword index of interrupt line, interrupt pin, min grant and max latency.
const INTERRUPT_REG: usize = 15;

/// Errors modelling a VFIO device.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// The backend reports no config space region.
    NoConfigRegion,
    /// A BAR the PCI emulation cannot represent.
    Bars(pci::Error),
    /// A broken MSI-X capability.
    Msix(crate::msix::Error),
}

/// Where the guest's expansion ROM comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RomSource {
    /// The device's own ROM, if it has one (read once, when the model is made).
    #[default]
    Device,
    /// No ROM BAR at all (`rombar=off`).
    Hidden,
    /// This image, whatever the device has (`romfile=`); must not be empty.
    Image(Vec<u8>),
}

/// Bytes read from the ROM region per backend read.
const ROM_READ_CHUNK: u64 = 64 << 10;

/// The largest ROM vmm holds in memory, the device's own or a `romfile=`: 16 MiB, the most the
/// PCI spec lets an expansion ROM decode and far above any GPU's option ROM (they are well under
/// 1 MiB). A larger ROM BAR (its register can decode up to 2 GiB) is hidden with the reason.
pub const MAX_ROM: u64 = 16 << 20;

diag::wrap!(Error: Bars(pci::Error), Msix(crate::msix::Error));

impl diag::Explain for Error {
    fn advice(&self) -> diag::Advice {
        match self {
            Error::NoConfigRegion => diag::Advice::new(
                "the VFIO device has no PCI config space region",
                "pass through a PCI device (or a PCI mdev) with vfio-pci",
            ),
            Error::Bars(e) => e.advice(),
            Error::Msix(e) => e.advice(),
        }
    }
}
diag::explained!(Error);

/// The guest changed an interrupt capability; the VMM re-reads the state and reroutes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptChange {
    /// Something in [`VfioPciDevice::msi`] changed.
    Msi,
    /// MSI-X Enable or Function Mask changed.
    MsixControl,
    /// MSI-X table entry `n` changed (address, data or mask bit).
    MsixEntry(u16),
}

/// What probing a device's config space found.
struct Probed {
    config_size: u64,
    command: u16,
    bars: BarSet,
    msi: Option<Msi>,
    msix: Option<Msix>,
    rom: Option<Vec<u8>>,
    rom_problem: Option<String>,
}

/// A passed-through PCI device: the config space and BAR model over a [`VfioBackend`].
pub struct VfioPciDevice<B: VfioBackend> {
    backend: B,
    config_size: u64,
    bars: BarSet,
    decode: Decode,
    interrupt_line: u8,
    msi: Option<Msi>,
    msix: Option<Msix>,
    changes: Vec<InterruptChange>,
    /// The ROM's contents, as long as the ROM BAR (padded with 0xff).
    rom: Option<Vec<u8>>,
    /// Why the device's own ROM could not be read (then the guest sees none).
    rom_problem: Option<String>,
}

impl<B: VfioBackend> VfioPciDevice<B> {
    /// Models the device behind `backend` with its own ROM: see [`VfioPciDevice::with_rom`].
    pub fn new(backend: B) -> Result<Self, Error> {
        Self::with_rom(backend, RomSource::Device)
    }

    /// Models the device behind `backend`: BARs at address 0 (assign them with
    /// [`VfioPciDevice::bar_set_mut`]), decode enables as the device's command register has
    /// them, MSI and MSI-X disabled, interrupt line 0, the expansion ROM from `rom`.
    pub fn with_rom(backend: B, rom: RomSource) -> Result<Self, Error> {
        Self::try_with_rom(backend, rom).map_err(|(e, _)| e)
    }

    /// [`VfioPciDevice::with_rom`], handing the backend back when the device cannot be
    /// modelled (so that its owner can close it properly).
    pub fn try_with_rom(backend: B, rom: RomSource) -> Result<Self, (Error, B)> {
        match Self::probe(&backend, rom) {
            Ok(parts) => Ok(Self::from_parts(backend, parts)),
            Err(e) => Err((e, backend)),
        }
    }

    /// What the device's config space says: its size, command register, BARs, ROM, MSI and
    /// MSI-X.
    fn probe(backend: &B, rom: RomSource) -> Result<Probed, Error> {
        let config = backend.region(CONFIG_REGION).ok_or(Error::NoConfigRegion)?;
        let command = read_config_dword(backend, 0x4) as u16;
        let mut bars = probe_bars(backend)?;
        let (rom, rom_problem) = load_rom(backend, &mut bars, rom)?;
        let msi = find_capability(backend, CAP_ID_MSI)
            .map(|offset| Msi::new(offset, read_config_dword(backend, offset)));
        let msix = match find_capability(backend, CAP_ID_MSIX) {
            Some(offset) => {
                let dword = |i: u64| read_config_dword(backend, offset + 4 * i);
                Some(Msix::new(offset, [dword(0), dword(1), dword(2)])?)
            }
            None => None,
        };
        Ok(Probed {
            config_size: config.size,
            command,
            bars,
            msi,
            msix,
            rom,
            rom_problem,
        })
    }

    fn from_parts(backend: B, p: Probed) -> Self {
        Self {
            backend,
            config_size: p.config_size,
            bars: p.bars,
            decode: Decode::from_command(p.command),
            interrupt_line: 0,
            msi: p.msi,
            msix: p.msix,
            changes: Vec::new(),
            rom: p.rom,
            rom_problem: p.rom_problem,
        }
    }

    /// The expansion ROM's contents, as long as its BAR; `None` without a ROM.
    pub fn rom_image(&self) -> Option<&[u8]> {
        self.rom.as_deref()
    }

    /// Why the device's own ROM could not be read, when it could not (the guest sees none).
    pub fn rom_problem(&self) -> Option<&str> {
        self.rom_problem.as_deref()
    }

    /// The backend, the model done with (a device leaving the guest).
    pub fn into_backend(self) -> B {
        self.backend
    }

    /// The backend (the kernel device, or a fake in tests).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The BARs, with their sizes and shadow addresses.
    pub fn bar_set(&self) -> &BarSet {
        &self.bars
    }

    /// The BARs, to assign addresses before boot ([`pci::PciResources::assign_bars`]).
    pub fn bar_set_mut(&mut self) -> &mut BarSet {
        &mut self.bars
    }

    /// What the guest programmed into the MSI capability; `None` without one.
    pub fn msi(&self) -> Option<MsiState> {
        self.msi.as_ref().map(Msi::state)
    }

    /// What the guest programmed into the MSI-X capability and table; `None` without one.
    pub fn msix(&self) -> Option<MsixState> {
        self.msix.as_ref().map(Msix::state)
    }

    /// MSI-X table entry `vector`.
    pub fn msix_entry(&self, vector: u16) -> Option<MsixEntry> {
        self.msix.as_ref()?.entry(vector)
    }

    /// Sets or clears MSI-X vector `vector`'s pending bit (for a vector that fired masked).
    pub fn set_msix_pending(&mut self, vector: u16, pending: bool) {
        if let Some(msix) = self.msix.as_mut() {
            msix.set_pending(vector, pending);
        }
    }

    /// Where the MSI-X PBA lives, if the device has MSI-X.
    pub fn msix_pba(&self) -> Option<crate::msix::BarArea> {
        self.msix.as_ref().map(|m| m.pba_area())
    }

    /// Interrupt capability changes since the last call, oldest first, without duplicates.
    pub fn take_interrupt_changes(&mut self) -> Vec<InterruptChange> {
        std::mem::take(&mut self.changes)
    }

    /// How to serve BAR `bar` (0-5 or [`ROM_BAR`]): mmap segments and trapped segments covering
    /// it; empty if there is no such BAR. I/O BARs are trapped whole, the ROM is one
    /// [`SegmentKind::Rom`] segment; the pages of the MSI-X table and PBA are always trapped.
    pub fn bar_plan(&self, bar: u8) -> Vec<Segment> {
        let Some(b) = self.bars.get(bar) else {
            return Vec::new();
        };
        if bar == ROM_BAR {
            return vec![Segment {
                offset: 0,
                len: b.size(),
                kind: SegmentKind::Rom,
            }];
        }
        let region = self.backend.region(u32::from(bar)).unwrap_or_default();
        let holes: Vec<_> = self
            .msix
            .iter()
            .flat_map(|m| [m.table_area(), m.pba_area()])
            .filter(|area| area.bar == bar)
            .map(|area| area.range)
            .collect();
        plan_bar(&PlanInput {
            bar_size: b.size(),
            trapped: b.kind().is_io() || bar == ROM_BAR,
            region: &region,
            holes: &holes,
        })
    }

    fn notify(&mut self, change: InterruptChange) {
        if !self.changes.contains(&change) {
            self.changes.push(change);
        }
    }

    /// The device's config dword `reg_idx`; all ones beyond its config region.
    fn device_dword(&self, reg_idx: usize) -> u32 {
        match config_offset(reg_idx, 0, 4).filter(|&end| end <= self.config_size) {
            Some(end) => read_config_dword(&self.backend, end - 4),
            None => u32::MAX,
        }
    }

    /// Writes `data` at byte `offset` of config dword `reg_idx` on the device.
    fn forward_config(&self, reg_idx: usize, offset: usize, data: &[u8]) {
        let Some(end) = config_offset(reg_idx, offset, data.len()) else {
            return;
        };
        if end > self.config_size {
            return;
        }
        let at = end - data.len() as u64;
        if let Err(e) = self.backend.write(CONFIG_REGION, at, data) {
            log::warn!("VFIO config write at {at:#x} failed: {e}");
        }
    }

    /// A virtual config dword, or `None` if the device's own value (maybe patched) is shown.
    fn virtual_dword(&self, reg_idx: usize) -> Option<u32> {
        if BarSet::is_bar_register(reg_idx) {
            return Some(self.bars.read(reg_idx));
        }
        let msi = self.msi.as_ref().and_then(|m| m.read(reg_idx));
        msi.or_else(|| self.msix.as_ref().and_then(|m| m.read(reg_idx)))
    }

    /// Applies a guest config write to the model or the device.
    fn route_write(&mut self, reg_idx: usize, offset: usize, data: &[u8]) {
        if BarSet::is_bar_register(reg_idx) {
            // The move is reported by diffing decoded ranges, with decode enables applied.
            let _ = self.bars.write(reg_idx, offset, data);
        } else if let Some(msi) = self.msi.as_mut().filter(|m| m.contains(reg_idx)) {
            if msi.write(reg_idx, offset, data) {
                self.notify(InterruptChange::Msi);
            }
        } else if let Some(msix) = self.msix.as_mut().filter(|m| m.contains(reg_idx)) {
            if msix.write(reg_idx, offset, data) {
                self.notify(InterruptChange::MsixControl);
            }
        } else if reg_idx == INTERRUPT_REG {
            // Pin, min grant and max latency are read-only.
            if offset == 0 {
                self.interrupt_line = data[0];
            }
        } else {
            self.forward_config(reg_idx, offset, data);
            if reg_idx == COMMAND_REG && offset == 0 {
                self.decode = Decode::from_command(u16::from(data[0]));
            }
        }
    }

    /// True if `[offset, offset + len)` lies inside BAR `bar`.
    fn in_bar(&self, bar: u8, offset: u64, len: usize) -> bool {
        let end = offset.checked_add(len as u64);
        self.bars
            .get(bar)
            .is_some_and(|b| end.is_some_and(|end| end <= b.size()))
    }
}

/// The ROM BAR and contents `source` asks for: the device's own (read now; hidden with the
/// reason when that fails), none, or an image. Returns the contents padded to the BAR size
/// and the reason the device's ROM could not be read.
fn load_rom<B: VfioBackend>(
    backend: &B,
    bars: &mut BarSet,
    source: RomSource,
) -> Result<(Option<Vec<u8>>, Option<String>), Error> {
    let probed = bars.remove(ROM_BAR);
    let image = match (source, probed) {
        (RomSource::Hidden, _) | (RomSource::Device, None) => return Ok((None, None)),
        (RomSource::Image(image), _) => image,
        (RomSource::Device, Some(bar)) => match read_rom(backend, bar.size()) {
            Ok(image) => image,
            Err(e) => return Ok((None, Some(e.to_string()))),
        },
    };
    let size = rom_bar_size(image.len() as u64);
    bars.add(Bar::new(ROM_BAR, BarKind::Rom, size)?)?;
    let mut padded = image;
    padded.resize(size as usize, 0xff);
    Ok((Some(padded), None))
}

/// The first `size` bytes of the ROM region (fewer when the region is smaller); refused
/// above [`MAX_ROM`].
fn read_rom<B: VfioBackend>(backend: &B, size: u64) -> std::io::Result<Vec<u8>> {
    let region = backend.region(ROM_REGION).map_or(0, |r| r.size);
    let len = size.min(region);
    if len > MAX_ROM {
        return Err(std::io::Error::other(format!(
            "its ROM BAR of {} is larger than the {} vmm reads; give romfile= with the image, \
             or rombar=off",
            diag::format_size(len),
            diag::format_size(MAX_ROM)
        )));
    }
    let mut image = vec![0u8; len as usize];
    for (i, chunk) in image.chunks_mut(ROM_READ_CHUNK as usize).enumerate() {
        backend.read(ROM_REGION, i as u64 * ROM_READ_CHUNK, chunk)?;
    }
    Ok(image)
}

/// The config byte offset just past `len` bytes at byte `offset` of dword `reg_idx`.
fn config_offset(reg_idx: usize, offset: usize, len: usize) -> Option<u64> {
    let start = reg_idx.checked_mul(4)?.checked_add(offset)?;
    u64::try_from(start.checked_add(len)?).ok()
}

impl<B: VfioBackend> PciDevice for VfioPciDevice<B> {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        if let Some(value) = self.virtual_dword(reg_idx) {
            return value;
        }
        let dword = self.device_dword(reg_idx);
        match reg_idx {
            HEADER_TYPE_REG => dword & !MULTI_FUNCTION,
            INTERRUPT_REG => dword & !0xff | u32::from(self.interrupt_line),
            _ => dword,
        }
    }

    fn write_config_register(
        &mut self,
        reg_idx: usize,
        offset: usize,
        data: &[u8],
    ) -> Vec<BarReprogram> {
        if pci::merge_bytes(0, offset, data).is_none() {
            return Vec::new();
        }
        let before = self.decode.ranges(&self.bars);
        self.route_write(reg_idx, offset, data);
        moves(&before, &self.decode.ranges(&self.bars))
    }

    /// Where each BAR decodes; base 0 while its decode enable is off.
    fn bars(&self) -> Vec<BarRange> {
        self.decode.ranges(&self.bars)
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if self
            .msix
            .as_ref()
            .is_some_and(|m| m.bar_read(bar, offset, data))
        {
            return;
        }
        if bar == ROM_BAR {
            let rom = self.rom.as_deref().unwrap_or_default();
            let bytes = usize::try_from(offset)
                .ok()
                .and_then(|at| rom.get(at..at.checked_add(data.len())?));
            match bytes {
                Some(bytes) => data.copy_from_slice(bytes),
                None => data.fill(0xff),
            }
            return;
        }
        let ok = self.in_bar(bar, offset, data.len())
            && self.backend.read(u32::from(bar), offset, data).is_ok();
        if !ok {
            data.fill(0xff);
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if let Some(entries) = self
            .msix
            .as_mut()
            .and_then(|m| m.bar_write(bar, offset, data))
        {
            for v in entries {
                self.notify(InterruptChange::MsixEntry(v));
            }
            return;
        }
        if bar == ROM_BAR || !self.in_bar(bar, offset, data.len()) {
            return;
        }
        if let Err(e) = self.backend.write(u32::from(bar), offset, data) {
            log::debug!("VFIO BAR {bar} write at {offset:#x} failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
