//! Guest RAM mapped for device DMA: all of it, IOVA = guest physical address, in chunks of at
//! most [`CHUNK`] per VFIO_IOMMU_MAP_DMA so that a terminal can watch the pinning progress
//! (the kernel pins every page: seconds per GiB on real hosts). The progress line shows on
//! stderr when it is a terminal and the guest has [`PROGRESS_FROM`] of RAM or more; otherwise
//! only a debug line with the total time.
//!
//! Chunks of one region are contiguous and cover it exactly; VFIO type1 keeps each as its own
//! mapping, which changes nothing for the device (the IOVA space is the same). Nothing here
//! unmaps: the container's mappings go when it is closed.

use super::Error;
use arch::GuestMemoryMmap;
use std::io::{IsTerminal, Write};
use std::time::Instant;
use vfio::host::VfioHost;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// Most bytes one VFIO_IOMMU_MAP_DMA maps.
const CHUNK: u64 = 256 << 20;
/// From this much guest RAM on, a terminal on stderr gets a progress line.
const PROGRESS_FROM: u64 = 2 << 30;

/// One VFIO_IOMMU_MAP_DMA: `len` bytes at guest physical address (= IOVA) `gpa`, which are
/// `offset` bytes into RAM region `region`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Chunk {
    region: usize,
    offset: u64,
    gpa: u64,
    len: u64,
}

/// The chunks mapping `regions` (`(guest address, length)`), in order, each at most `max`.
fn chunks(regions: &[(u64, u64)], max: u64) -> Vec<Chunk> {
    let mut out = Vec::new();
    for (region, &(start, len)) in regions.iter().enumerate() {
        let mut offset = 0;
        while offset < len {
            let n = max.min(len - offset);
            out.push(Chunk {
                region,
                offset,
                gpa: start + offset,
                len: n,
            });
            offset += n;
        }
    }
    out
}

/// Maps all guest RAM into the container, IOVA = guest physical address.
pub(super) fn map_guest_ram(host: &VfioHost, memory: &GuestMemoryMmap) -> Result<(), Error> {
    let regions: Vec<_> = memory.iter().collect();
    let ranges: Vec<(u64, u64)> = regions
        .iter()
        .map(|r| (r.start_addr().0, r.len()))
        .collect();
    let total = ranges.iter().map(|r| r.1).sum();
    let started = Instant::now();
    let stderr = std::io::stderr();
    let terminal = (stderr.is_terminal() && total >= PROGRESS_FROM).then_some(stderr);
    let mut progress = Progress::new(total, terminal);
    for c in chunks(&ranges, CHUNK) {
        let at = regions[c.region].as_ptr().wrapping_add(c.offset as usize);
        // SAFETY: [at, at + len) lies inside one guest RAM region (chunks cover each region
        // exactly), which stays mapped for the VM's lifetime (it outlives `host` in `Vm`);
        // the VMM only accesses guest RAM through vm-memory's volatile accessors.
        unsafe { host.map_dma(c.gpa, c.len, at)? };
        progress.advance(c.len);
    }
    drop(progress);
    log::debug!(
        "{} of guest RAM pinned and mapped for DMA in {:.2} s",
        crate::config::format_size(total),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The progress line (on a terminal; nothing without one): rewritten in place, ended with a
/// newline when dropped, also when mapping failed, so the error starts its own line.
struct Progress<W: Write> {
    out: Option<W>,
    done: u64,
    total: u64,
}

impl<W: Write> Progress<W> {
    fn new(total: u64, out: Option<W>) -> Self {
        let mut p = Self {
            out,
            done: 0,
            total,
        };
        p.advance(0);
        p
    }

    fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        if let Some(out) = &mut self.out {
            let _ = write!(out, "\r{}", progress_text(self.done, self.total));
            let _ = out.flush();
        }
    }
}

impl<W: Write> Drop for Progress<W> {
    fn drop(&mut self) {
        if let Some(out) = &mut self.out {
            let _ = writeln!(out);
        }
    }
}

/// `vmm: pinning guest RAM for DMA: 1.5/4.0 GiB`: the progress line shown on a terminal
/// (public for the end-to-end tests, which expect it).
pub fn progress_text(done: u64, total: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    format!(
        "vmm: pinning guest RAM for DMA: {:.1}/{:.1} GiB",
        done as f64 / GIB,
        total as f64 / GIB
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn small_regions_are_one_chunk_each() {
        let got = chunks(&[(0, 512 * MIB)], CHUNK * 4);
        let want = Chunk {
            region: 0,
            offset: 0,
            gpa: 0,
            len: 512 * MIB,
        };
        assert_eq!(got, [want]);
        assert!(chunks(&[], CHUNK).is_empty());
        assert!(chunks(&[(0, 0)], CHUNK).is_empty());
    }

    #[test]
    fn chunks_cover_each_region_contiguously() {
        // RAM below the PCI hole and above 4 GiB, the second not a multiple of the chunk.
        let regions = [(0, 3 * GIB), (4 * GIB, GIB + 4096)];
        let got = chunks(&regions, 256 * MIB);
        assert_eq!(got.len(), 12 + 4 + 1);
        for (i, &(start, len)) in regions.iter().enumerate() {
            let mine: Vec<_> = got.iter().filter(|c| c.region == i).collect();
            let mut next = 0;
            for c in &mine {
                assert_eq!(c.offset, next, "contiguous: {c:?}");
                assert_eq!(c.gpa, start + c.offset, "IOVA = GPA: {c:?}");
                assert!(c.len > 0 && c.len <= 256 * MIB, "{c:?}");
                next += c.len;
            }
            assert_eq!(next, len, "region {i} covered exactly");
        }
        let last = got.last().unwrap();
        assert_eq!((last.gpa, last.len), (5 * GIB, 4096));
    }

    #[test]
    fn progress_line() {
        assert_eq!(
            progress_text(3 * GIB / 2, 4 * GIB),
            "vmm: pinning guest RAM for DMA: 1.5/4.0 GiB"
        );
        let mut out = Vec::new();
        let mut p = Progress::new(2 * GIB, Some(&mut out));
        p.advance(GIB);
        p.advance(GIB);
        drop(p);
        let want = "\rvmm: pinning guest RAM for DMA: 0.0/2.0 GiB\
                    \rvmm: pinning guest RAM for DMA: 1.0/2.0 GiB\
                    \rvmm: pinning guest RAM for DMA: 2.0/2.0 GiB\n";
        assert_eq!(String::from_utf8(out).unwrap(), want);
        let mut silent = Progress::<Vec<u8>>::new(2 * GIB, None);
        silent.advance(GIB);
    }
}
