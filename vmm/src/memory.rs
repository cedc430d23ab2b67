//! Guest RAM, from one of two backings:
//!
//! - anonymous memory (the default), aligned to 2 MiB and advised for transparent huge pages,
//!   so the host backs it with huge pages and KVM can map them with 2 MiB page-table entries
//!   (KVM only does so where host address and guest address agree modulo 2 MiB). Nested under
//!   an emulated host, that turns 512 second-level page faults into one.
//! - `hugepages=on`: hugetlb pages of 2 MiB or 1 GiB from the host's pool, through a
//!   `memfd_create(MFD_HUGETLB)` file per RAM range. A memfd and not a hugetlbfs mount: it needs
//!   no mount point, leaves no file behind (the pages go back to the pool when the last
//!   mapping goes, also when vmm is killed with SIGKILL), picks the page size per file
//!   (`MFD_HUGE_2MB`/`MFD_HUGE_1GB`) whatever the host's default size, and the mmap reserves
//!   every page up front, so a short pool fails at start instead of with a SIGBUS later. The
//!   pool is read before (`/sys/kernel/mm/hugepages`) so that a short pool gets a message
//!   with the numbers. Pinning such RAM for device DMA costs one page walk per huge page.
//!
//! This module owns `--memory`'s value ([`MemoryConfig`]) and the mappings; it must not talk
//! to KVM (the builder registers the regions).

use arch::GuestMemoryMmap;
use resources::layout::ram_ranges;
use std::path::{Path, PathBuf};
use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestAddress, GuestRegionMmap};

/// Transparent huge page size on x86_64 (alignment of anonymous guest RAM).
const THP_SIZE: usize = 2 << 20;
/// Where the kernel describes its hugetlb pools, one directory per page size.
pub const HUGEPAGES_SYSFS: &str = "/sys/kernel/mm/hugepages";
/// The pool of the default huge page size.
const NR_HUGEPAGES_SYSCTL: &str = "/proc/sys/vm/nr_hugepages";

/// A hugetlb page size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HugePageSize {
    /// 2 MiB pages.
    Size2M,
    /// 1 GiB pages.
    Size1G,
}

impl HugePageSize {
    /// Bytes per page.
    pub fn bytes(self) -> u64 {
        match self {
            HugePageSize::Size2M => 2 << 20,
            HugePageSize::Size1G => 1 << 30,
        }
    }

    /// The pool's directory under [`HUGEPAGES_SYSFS`].
    fn dir_name(self) -> String {
        format!("hugepages-{}kB", self.bytes() >> 10)
    }

    /// The page size as `hugepage-size=` spells it.
    fn key(self) -> &'static str {
        match self {
            HugePageSize::Size2M => "2M",
            HugePageSize::Size1G => "1G",
        }
    }

    fn memfd_flag(self) -> libc::c_uint {
        match self {
            HugePageSize::Size2M => libc::MFD_HUGE_2MB,
            HugePageSize::Size1G => libc::MFD_HUGE_1GB,
        }
    }
}

/// `--memory SIZE[,hugepages=on|off][,hugepage-size=2M|1G][,phys-bits=N]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Guest RAM in bytes.
    pub size: u64,
    /// Back RAM with hugetlb pages of this size (`hugepages=on`); `None`: anonymous memory.
    pub hugepages: Option<HugePageSize>,
    /// The guest's physical address width (`phys-bits=N`, CPUID 0x80000008); `None`: what
    /// KVM supports.
    pub phys_bits: Option<u8>,
}

impl MemoryConfig {
    /// Anonymous RAM of `size` bytes, the host's address width.
    pub fn new(size: u64) -> Self {
        Self {
            size,
            hugepages: None,
            phys_bits: None,
        }
    }
}

/// Keys of `--memory` after the size.
const MEMORY_KEYS: &str = "hugepages, hugepage-size, phys-bits";
/// Narrowest `phys-bits=`: RAM and the 32-bit PCI hole end at 4 GiB.
pub const MIN_PHYS_BITS: u8 = 32;
/// Widest `phys-bits=` x86 defines.
pub const MAX_PHYS_BITS: u8 = 52;

/// What is wrong with the options of `--memory` after its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionError {
    /// A field without `=`.
    NotKeyValue(String),
    /// A key vmm does not know.
    UnknownKey(String),
    /// The same key twice.
    KeyTwice(String),
    /// `hugepages=` neither `on` nor `off`.
    Hugepages(String),
    /// `hugepage-size=` neither `2M` nor `1G`.
    PageSize(String),
    /// `hugepage-size=` without `hugepages=on`.
    SizeWithoutHugepages,
    /// The size is not a whole number of huge pages.
    NotWholePages {
        /// The size in bytes.
        size: u64,
        /// The page size.
        page: HugePageSize,
    },
    /// `phys-bits=` not a width from [`MIN_PHYS_BITS`] to [`MAX_PHYS_BITS`].
    PhysBits(String),
}

impl diag::Explain for OptionError {
    fn advice(&self) -> diag::Advice {
        use diag::Advice;
        let keys = format!("the keys are {MEMORY_KEYS}");
        match self {
            Self::NotKeyValue(f) => Advice::new(format!("'{f}' is not KEY=VALUE"), keys),
            Self::UnknownKey(k) => Advice::new(format!("unknown key '{k}'"), keys),
            Self::KeyTwice(k) => Advice::new(format!("'{k}' given twice"), "give it once"),
            Self::Hugepages(v) => Advice::new(
                format!("bad value '{v}' for 'hugepages'"),
                "write hugepages=on or hugepages=off",
            ),
            Self::PageSize(v) => Advice::new(
                format!("bad value '{v}' for 'hugepage-size'"),
                "write hugepage-size=2M or hugepage-size=1G",
            ),
            Self::SizeWithoutHugepages => {
                Advice::new("hugepage-size= without hugepages=on", "add hugepages=on")
            }
            Self::NotWholePages { size, page } => Advice::new(
                format!(
                    "{size} bytes is not a whole number of {} huge pages",
                    page.key()
                ),
                format!("round the size to a multiple of {}", page.key()),
            ),
            Self::PhysBits(v) => Advice::new(
                format!("bad value '{v}' for 'phys-bits'"),
                format!("give a width from {MIN_PHYS_BITS} to {MAX_PHYS_BITS} bits"),
            ),
        }
    }
}
diag::explained!(OptionError);

impl MemoryConfig {
    /// RAM of `size` bytes with the options after it in `--memory` (`hugepages=on,...`).
    pub fn with_options(size: u64, options: &str) -> Result<Self, OptionError> {
        let (mut hugepages, mut page, mut bits) = (None, None, None::<&str>);
        for field in options.split(',') {
            let Some((key, value)) = field.split_once('=') else {
                return Err(OptionError::NotKeyValue(field.to_string()));
            };
            let slot = match key {
                "hugepages" => &mut hugepages,
                "hugepage-size" => &mut page,
                "phys-bits" => &mut bits,
                _ => return Err(OptionError::UnknownKey(key.to_string())),
            };
            if slot.replace(value).is_some() {
                return Err(OptionError::KeyTwice(key.to_string()));
            }
        }
        let on = match hugepages {
            None | Some("off") => false,
            Some("on") => true,
            Some(v) => return Err(OptionError::Hugepages(v.to_string())),
        };
        let page_given = page.is_some();
        let page = match page {
            None | Some("2M") | Some("2m") => HugePageSize::Size2M,
            Some("1G") | Some("1g") => HugePageSize::Size1G,
            Some(v) => return Err(OptionError::PageSize(v.to_string())),
        };
        if !on && page_given {
            return Err(OptionError::SizeWithoutHugepages);
        }
        if on && !size.is_multiple_of(page.bytes()) {
            return Err(OptionError::NotWholePages { size, page });
        }
        let phys_bits = match bits {
            None => None,
            Some(v) => match v.parse::<u8>() {
                Ok(n) if (MIN_PHYS_BITS..=MAX_PHYS_BITS).contains(&n) => Some(n),
                _ => return Err(OptionError::PhysBits(v.to_string())),
            },
        };
        Ok(MemoryConfig {
            size,
            hugepages: on.then_some(page),
            phys_bits,
        })
    }
}

/// `--memory` as the command line takes it (see [`crate::config`]).
impl std::str::FromStr for MemoryConfig {
    type Err = crate::config::Error;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        crate::config::memory_config(std::ffi::OsStr::new(spec))
    }
}

/// `2G,hugepages=on,hugepage-size=2M`: the memory options as `--memory` takes them.
impl std::fmt::Display for MemoryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = [(40, "T"), (30, "G"), (20, "M"), (10, "K")]
            .into_iter()
            .find(|&(shift, _)| self.size >= 1 << shift && self.size.is_multiple_of(1 << shift));
        match unit {
            Some((shift, u)) => write!(f, "{}{u}", self.size >> shift)?,
            None => write!(f, "{}", self.size)?,
        }
        if let Some(page) = self.hugepages {
            write!(f, ",hugepages=on,hugepage-size={}", page.key())?;
        }
        if let Some(bits) = self.phys_bits {
            write!(f, ",phys-bits={bits}")?;
        }
        Ok(())
    }
}

/// Why guest RAM could not be set up.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// mmap (or memfd) failed.
    Allocate {
        /// Size asked for.
        mib: u64,
        /// The OS error.
        reason: String,
    },
    /// The host has no pool of this page size.
    NoHugePages {
        /// The option as given.
        spec: String,
        /// The page size.
        page: &'static str,
        /// The pool directory that is missing.
        dir: String,
    },
    /// The pool has fewer free pages than the guest needs.
    HugePool {
        /// The option as given.
        spec: String,
        /// The page size.
        page: &'static str,
        /// Pages the guest needs.
        needed: u64,
        /// Pages free and not reserved.
        free: u64,
        /// The pool size that would do.
        target: u64,
        /// The file to write it to.
        file: String,
    },
}

impl diag::Explain for Error {
    fn advice(&self) -> diag::Advice {
        use diag::Advice;
        match self {
            Self::Allocate { mib, reason } => Advice::new(
                format!("cannot allocate {mib} MiB of guest memory: {reason}"),
                "choose a smaller --memory",
            ),
            Self::NoHugePages { spec, page, dir } => Advice::new(
                format!("--memory {spec}: this host has no {page} huge pages ({dir} is missing)"),
                "use the other hugepage-size (2M or 1G) or drop hugepages=on",
            ),
            Self::HugePool {
                spec,
                page,
                needed,
                free,
                target,
                file,
            } => Advice::new(
                format!(
                    "--memory {spec}: the guest needs {needed} huge pages of {page} but the pool \
                     has {free} free"
                ),
                format!("raise the pool to {target} pages (echo {target} > {file}) or drop hugepages=on"),
            ),
        }
    }
}
diag::explained!(Error);

/// One hugetlb pool as `/sys/kernel/mm/hugepages/hugepages-<N>kB` shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HugePool {
    /// `nr_hugepages`: the pool's size.
    pub total: u64,
    /// `free_hugepages`: pages not in use.
    pub free: u64,
    /// `resv_hugepages`: free pages already promised to mappings.
    pub reserved: u64,
}

impl HugePool {
    /// Reads the pool of `page` under `root` (normally [`HUGEPAGES_SYSFS`]); `None` if the
    /// host has no such pool.
    pub fn read(root: &Path, page: HugePageSize) -> Option<Self> {
        let dir = root.join(page.dir_name());
        let value = |name: &str| -> Option<u64> {
            std::fs::read_to_string(dir.join(name))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        Some(Self {
            total: value("nr_hugepages")?,
            free: value("free_hugepages")?,
            reserved: value("resv_hugepages").unwrap_or(0),
        })
    }

    /// Pages a new mapping can still get.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }

    /// The pool size that leaves `needed` pages available.
    pub fn target(&self, needed: u64) -> u64 {
        self.total + needed.saturating_sub(self.available())
    }
}

/// Huge pages of `page` that `size` bytes of RAM take (every RAM range is a whole number).
pub fn pages_needed(size: u64, page: HugePageSize) -> u64 {
    ram_ranges(size)
        .iter()
        .map(|r| r.len.div_ceil(page.bytes()))
        .sum()
}

/// Whether `cfg`'s hugetlb RAM fits the host's pool under `root`; the error names the numbers
/// and the file to raise. `default_page` is the host's default huge page size (whose pool
/// `/proc/sys/vm/nr_hugepages` sets).
pub fn check_pool(
    cfg: &MemoryConfig,
    root: &Path,
    default_page: Option<HugePageSize>,
) -> Result<(), Error> {
    let Some(page) = cfg.hugepages else {
        return Ok(());
    };
    let dir = root.join(page.dir_name());
    let Some(pool) = HugePool::read(root, page) else {
        return Err(Error::NoHugePages {
            spec: cfg.to_string(),
            page: page_text(page),
            dir: dir.display().to_string(),
        });
    };
    let needed = pages_needed(cfg.size, page);
    if pool.available() >= needed {
        return Ok(());
    }
    let file = match default_page == Some(page) {
        true => PathBuf::from(NR_HUGEPAGES_SYSCTL),
        false => dir.join("nr_hugepages"),
    };
    Err(Error::HugePool {
        spec: cfg.to_string(),
        page: page_text(page),
        needed,
        free: pool.available(),
        target: pool.target(needed),
        file: file.display().to_string(),
    })
}

fn page_text(page: HugePageSize) -> &'static str {
    match page {
        HugePageSize::Size2M => "2 MiB",
        HugePageSize::Size1G => "1 GiB",
    }
}

/// The host's default huge page size (`Hugepagesize:` of /proc/meminfo).
pub fn default_huge_page() -> Option<HugePageSize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Hugepagesize:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    match kib << 10 {
        n if n == HugePageSize::Size2M.bytes() => Some(HugePageSize::Size2M),
        n if n == HugePageSize::Size1G.bytes() => Some(HugePageSize::Size1G),
        _ => None,
    }
}

/// Maps `len` bytes of private anonymous memory at a 2 MiB-aligned address, advised for THP.
/// Never unmapped: guest RAM lives as long as the process.
fn map_anonymous(len: usize) -> std::io::Result<*mut u8> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    let padded = len + THP_SIZE;
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
    let aligned = start.next_multiple_of(THP_SIZE);
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

/// Maps `len` bytes of hugetlb pages of `page` from a fresh memfd (shared, so the pages are
/// the file's and go back to the pool with the last mapping). Never unmapped.
fn map_hugetlb(len: usize, page: HugePageSize) -> std::io::Result<*mut u8> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let flags = libc::MFD_CLOEXEC | libc::MFD_HUGETLB | page.memfd_flag();
    // SAFETY: memfd_create reads the NUL-terminated name and returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"vmm-guest-ram".as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(len as u64)?;
    // SAFETY: a fresh shared mapping of the whole file at an address of the kernel's choosing;
    // the mapping keeps the file alive after `file` closes its descriptor.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(addr.cast())
}

/// Guest RAM as `cfg` asks, laid out around the 32-bit hole. With `hugepages=on` the pool is
/// checked first (see [`check_pool`]).
pub fn create(cfg: &MemoryConfig) -> Result<GuestMemoryMmap, Error> {
    check_pool(cfg, Path::new(HUGEPAGES_SYSFS), default_huge_page())?;
    let err = |reason: String| Error::Allocate {
        mib: cfg.size >> 20,
        reason,
    };
    let (prot, flags) = match cfg.hugepages {
        Some(_) => (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED),
        None => (
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        ),
    };
    let mut regions = Vec::new();
    for r in ram_ranges(cfg.size) {
        let len = r.len as usize;
        let ptr = match cfg.hugepages {
            Some(page) => map_hugetlb(len, page),
            None => map_anonymous(len),
        }
        .map_err(|e| err(e.to_string()))?;
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

    const GIB: u64 = 1 << 30;

    #[test]
    fn regions_are_huge_page_aligned_and_usable() {
        let mem = create(&MemoryConfig::new((3 << 30) + (64 << 20))).unwrap();
        let regions: Vec<_> = mem.iter().collect();
        assert_eq!(regions.len(), 2);
        for r in &regions {
            assert_eq!(r.as_ptr() as usize % THP_SIZE, 0);
        }
        assert_eq!(regions[1].start_addr(), GuestAddress(4 << 30));
        mem.write_obj(0x1234_5678u32, GuestAddress((4 << 30) + 8))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress((4 << 30) + 8)).unwrap(),
            0x1234_5678
        );
    }

    fn parse(s: &str) -> Result<MemoryConfig, String> {
        s.parse::<MemoryConfig>().map_err(|e| e.to_string())
    }

    #[test]
    fn memory_options() {
        assert_eq!(parse("512M"), Ok(MemoryConfig::new(512 << 20)));
        let huge = parse("2G,hugepages=on").unwrap();
        assert_eq!(huge.size, 2 * GIB);
        assert_eq!(huge.hugepages, Some(HugePageSize::Size2M));
        let giant = parse("4G,hugepage-size=1G,hugepages=on").unwrap();
        assert_eq!(giant.hugepages, Some(HugePageSize::Size1G));
        assert_eq!(parse("1G,hugepages=off").unwrap().hugepages, None);
        assert_eq!(parse("1G,phys-bits=39").unwrap().phys_bits, Some(39));
        assert_eq!(giant.to_string(), "4G,hugepages=on,hugepage-size=1G");
        assert_eq!(
            parse("1536M,phys-bits=36").unwrap().to_string(),
            "1536M,phys-bits=36"
        );
        assert_eq!(MemoryConfig::new(4097).to_string(), "4097");
    }

    #[test]
    fn memory_option_rejections() {
        for (bad, why) in [
            ("lots", "--memory 'lots' is not a size"),
            (
                "1G,hugepages",
                "'hugepages' is not KEY=VALUE; the keys are hugepages",
            ),
            ("1G,huge=on", "unknown key 'huge'"),
            ("1G,hugepages=yes", "write hugepages=on or hugepages=off"),
            ("1G,hugepages=on,hugepages=on", "'hugepages' given twice"),
            ("1G,hugepages=on,hugepage-size=4M", "hugepage-size=2M or"),
            ("1G,hugepage-size=2M", "without hugepages=on"),
            ("3M,hugepages=on", "not a whole number of 2M huge pages"),
            ("1536M,hugepages=on,hugepage-size=1G", "multiple of 1G"),
            ("0,hugepages=on", "not a positive multiple of 4 KiB"),
            ("1G,phys-bits=31", "from 32 to 52 bits"),
            ("1G,phys-bits=53", "from 32 to 52 bits"),
            ("1G,phys-bits=x", "bad value 'x' for 'phys-bits'"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains('\n'), "{e}");
            if !bad.starts_with("lots") && !bad.starts_with("0,") {
                assert!(e.starts_with(&format!("--memory '{bad}': ")), "{e}");
            }
        }
    }

    /// A fake /sys/kernel/mm/hugepages with one 2 MiB pool.
    fn fake_pool(total: u64, free: u64, resv: u64) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "vmm-hugepages-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let dir = root.join("hugepages-2048kB");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, v) in [
            ("nr_hugepages", total),
            ("free_hugepages", free),
            ("resv_hugepages", resv),
        ] {
            std::fs::write(dir.join(name), format!("{v}\n")).unwrap();
        }
        root
    }

    #[test]
    fn pool_arithmetic() {
        assert_eq!(pages_needed(2 * GIB, HugePageSize::Size2M), 1024);
        assert_eq!(pages_needed(5 * GIB, HugePageSize::Size1G), 5);
        assert_eq!(pages_needed(4 * GIB, HugePageSize::Size2M), 2048);
        let pool = HugePool {
            total: 100,
            free: 60,
            reserved: 20,
        };
        assert_eq!(pool.available(), 40);
        assert_eq!(pool.target(40), 100);
        assert_eq!(pool.target(50), 110);
        let odd = HugePool {
            total: 1,
            free: 0,
            reserved: 3,
        };
        assert_eq!(odd.available(), 0);
    }

    #[test]
    fn pool_checks() {
        let cfg = parse("2G,hugepages=on").unwrap();
        let root = fake_pool(1100, 1030, 0);
        let two = Some(HugePageSize::Size2M);
        assert_eq!(check_pool(&cfg, &root, two), Ok(()));
        let root = fake_pool(1030, 1030, 10);
        let e = check_pool(&cfg, &root, two).unwrap_err().to_string();
        assert_eq!(
            e,
            "--memory 2G,hugepages=on,hugepage-size=2M: the guest needs 1024 huge pages of \
             2 MiB but the pool has 1020 free; raise the pool to 1034 pages (echo 1034 > \
             /proc/sys/vm/nr_hugepages) or drop hugepages=on"
        );
        // Not the default size: the per-size file.
        let e = check_pool(&cfg, &root, Some(HugePageSize::Size1G))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hugepages-2048kB/nr_hugepages)"), "{e}");
        let giant = parse("1G,hugepages=on,hugepage-size=1G").unwrap();
        let e = check_pool(&giant, &root, two).unwrap_err().to_string();
        assert!(e.contains("no 1 GiB huge pages"), "{e}");
        assert_eq!(check_pool(&MemoryConfig::new(GIB), &root, two), Ok(()));
    }

    /// Hugetlb RAM, when this host has a free pool (skipped without one: it needs root to set).
    #[test]
    fn hugetlb_ram_when_the_pool_allows() {
        let cfg = parse("4M,hugepages=on").unwrap();
        let root = Path::new(HUGEPAGES_SYSFS);
        if check_pool(&cfg, root, default_huge_page()).is_err() {
            return;
        }
        let mem = create(&cfg).unwrap();
        mem.write_obj(7u64, GuestAddress(3 << 20)).unwrap();
        assert_eq!(mem.read_obj::<u64>(GuestAddress(3 << 20)).unwrap(), 7);
    }
}
