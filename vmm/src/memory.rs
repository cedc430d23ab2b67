//! Guest RAM: anonymous memory aligned to 2 MiB and advised for transparent huge pages, so
//! the host backs it with huge pages and KVM can map them with 2 MiB page-table entries
//! (KVM only does so where host address and guest address agree modulo 2 MiB). Nested under
//! an emulated host, that turns 512 second-level page faults into one.

use arch::GuestMemoryMmap;
use resources::layout::ram_ranges;
use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestAddress, GuestRegionMmap};

/// Huge page size on x86_64.
const HUGE_PAGE: usize = 2 << 20;

/// Why guest RAM could not be set up.
#[derive(Debug)]
pub struct Error {
    mib: u64,
    reason: String,
}

impl diag::Explain for Error {
    fn advice(&self) -> diag::Advice {
        diag::Advice::new(
            format!(
                "cannot allocate {} MiB of guest memory: {}",
                self.mib, self.reason
            ),
            "choose a smaller --memory",
        )
    }
}
diag::explained!(Error);

/// Maps `len` bytes of private anonymous memory at a 2 MiB-aligned address. Never unmapped:
/// guest RAM lives as long as the process.
fn map_aligned(len: usize) -> std::io::Result<*mut u8> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    let padded = len + HUGE_PAGE;
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            padded,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let start = raw as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE);
    let head = aligned - start;
    let tail = padded - head - len;
    // SAFETY: both ranges are parts of the mapping just made that nothing refers to.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
        // Only advice: on hosts where THP is off it changes nothing.
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    Ok(aligned as *mut u8)
}

/// `size` bytes of guest RAM laid out around the 32-bit hole.
pub fn create(size: u64) -> Result<GuestMemoryMmap, Error> {
    let err = |reason: String| Error {
        mib: size >> 20,
        reason,
    };
    let mut regions = Vec::new();
    for r in ram_ranges(size) {
        let len = r.len as usize;
        let ptr = map_aligned(len).map_err(|e| err(e.to_string()))?;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: `ptr` is a live mapping of `len` bytes with these prot/flags, made above and
        // never unmapped.
        let mapping = unsafe { MmapRegion::build_raw(ptr, len, prot, flags) }
            .map_err(|e| err(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(r.start))
            .ok_or_else(|| err("region wraps around".into()))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn regions_are_huge_page_aligned_and_usable() {
        let mem = create((3 << 30) + (64 << 20)).unwrap();
        let regions: Vec<_> = mem.iter().collect();
        assert_eq!(regions.len(), 2);
        for r in &regions {
            assert_eq!(r.as_ptr() as usize % HUGE_PAGE, 0);
        }
        assert_eq!(regions[1].start_addr(), GuestAddress(4 << 30));
        mem.write_obj(0x1234_5678u32, GuestAddress((4 << 30) + 8))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress((4 << 30) + 8)).unwrap(),
            0x1234_5678
        );
    }
}
