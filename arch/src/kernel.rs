//! What an x86_64 Linux kernel image says about itself, read from its headers before
//! anything is loaded: which format it is, whether the file is whole, where it enters, how
//! much RAM it needs to reach its entry and run its decompressor, how long a command line it
//! takes and how high its initramfs may go.
//!
//! Pure parsing of bytes: it never opens files, touches guest memory or talks to KVM. The
//! VMM opens the file, hands in its first bytes and its length, and compares the
//! [`Image`]'s needs with the guest it is about to build.

use resources::layout::HIMEM_START;
use std::io::{Read, Seek, SeekFrom};

/// How many leading bytes of a file [`Image::parse`] needs at most (a bzImage's setup header,
/// an ELF header).
pub const HEADER_LEN: usize = 0x280;

/// "HdrS", the setup header magic at 0x202.
const HDRS_MAGIC: &[u8; 4] = b"HdrS";
/// The boot sector signature at 0x1fe.
const BOOT_FLAG: u16 = 0xaa55;
/// `xloadflags`: the kernel has the 64-bit entry point at 0x200.
const XLF_KERNEL_64: u16 = 1;
/// `loadflags`: the protected-mode code is loaded at 0x100000.
const LOADED_HIGH: u8 = 1;
/// The first boot protocol with `xloadflags` (and so a 64-bit entry point).
const PROTOCOL_64BIT: u16 = 0x20c;
/// x86's `COMMAND_LINE_SIZE`: what a kernel without a header field (an ELF vmlinux) takes,
/// with its NUL.
const X86_COMMAND_LINE_SIZE: usize = 2048;
/// Offset of the 64-bit entry from the start of a bzImage's protected-mode code.
const BZIMAGE_ENTRY_64: u64 = 0x200;

/// ELF constants (elf.h).
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// The Xen note that carries the PVH 32-bit entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// What is wrong with a kernel image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Defect {
    /// Neither a bzImage nor an ELF.
    NotAKernel,
    /// The file is empty.
    Empty,
    /// A bzImage without the 64-bit boot protocol, or an ELF that is not x86_64.
    Not64Bit {
        /// What it is instead.
        what: String,
    },
    /// The file is shorter than its own header says.
    Truncated {
        /// Bytes the header accounts for.
        expected: u64,
        /// Bytes the file has.
        actual: u64,
    },
    /// A header field no loadable kernel has.
    Malformed {
        /// Which field, and what is wrong with it.
        what: String,
    },
}

impl diag::Explain for Defect {
    fn advice(&self) -> diag::Advice {
        use diag::Advice;
        const KERNEL: &str = "give an x86_64 Linux bzImage or ELF vmlinux";
        match self {
            Defect::NotAKernel => Advice::new(
                "is not a Linux kernel (neither a bzImage nor an ELF vmlinux)",
                KERNEL,
            ),
            Defect::Empty => Advice::new("is empty", KERNEL),
            Defect::Not64Bit { what } => Advice::new(
                format!("is {what}"),
                "give an x86_64 kernel (bzImage or vmlinux)",
            ),
            Defect::Truncated { expected, actual } => Advice::new(
                format!(
                    "is cut short: its header accounts for {expected} bytes but the file has \
                     {actual}"
                ),
                "copy the whole kernel image again",
            ),
            Defect::Malformed { what } => Advice::new(format!("is malformed: {what}"), KERNEL),
        }
    }
}
diag::explained!(Defect);

/// The kernel's format and what the VMM needs from its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A bzImage entered at its 64-bit entry point with a zero page.
    BzImage,
    /// An ELF vmlinux entered through its PVH note.
    ElfPvh {
        /// The 32-bit PVH entry point.
        entry: u64,
    },
    /// An ELF vmlinux entered at its ELF entry point in 64-bit mode with a zero page.
    Elf64 {
        /// The entry point.
        entry: u64,
    },
}

/// A kernel image as its headers describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Image {
    /// Its format and entry.
    pub format: Format,
    /// First byte after everything the kernel needs as RAM to reach and run its entry: the
    /// loaded image, and for a bzImage the area it decompresses into.
    pub ram_end: u64,
    /// Where that area starts (the ELF's lowest segment, the bzImage's run address).
    pub run_at: u64,
    /// Longest command line it takes, without the NUL.
    pub cmdline_max: usize,
    /// Highest address the last byte of the initramfs may have.
    pub initrd_addr_max: u64,
}

impl Image {
    /// Reads an image's headers from `file`, `file_len` bytes long. Reads only headers (an
    /// ELF's program headers and notes, wherever they are), never the whole image. A read
    /// error counts as a file cut short.
    pub fn parse<F: Read + Seek>(file: &mut F, file_len: u64) -> Result<Image, Defect> {
        if file_len == 0 {
            return Err(Defect::Empty);
        }
        let head = read_at(file, 0, HEADER_LEN.min(file_len as usize)).unwrap_or_default();
        if head.get(0x202..0x206) == Some(HDRS_MAGIC) {
            return bzimage(&head, file_len);
        }
        if head.get(..4) == Some(ELF_MAGIC) {
            return elf(file, &head, file_len);
        }
        Err(Defect::NotAKernel)
    }

    /// The 64-bit entry point of a bzImage whose protected-mode code was loaded at `load`.
    pub fn bzimage_entry(load: u64) -> u64 {
        load + BZIMAGE_ENTRY_64
    }

    /// Where `size` bytes of initramfs go in `low_ram_end` bytes of RAM below the 32-bit hole:
    /// page-aligned, as high as both the RAM and [`Image::initrd_addr_max`] allow, above the
    /// kernel. `None` when it does not fit.
    pub fn initrd_address(&self, low_ram_end: u64, size: u64) -> Option<u64> {
        let top = low_ram_end.min(self.initrd_addr_max.saturating_add(1));
        let addr = top.checked_sub(size)? & !0xfff;
        (addr >= self.ram_end).then_some(addr)
    }

    /// The smallest RAM below the hole, in whole MiB, that holds the kernel and `initrd` bytes
    /// of initramfs; `None` when no amount does (the initramfs does not fit below
    /// `initrd_addr_max` or `hole`).
    pub fn min_low_ram_mib(&self, initrd: Option<u64>, hole: u64) -> Option<u64> {
        let mib = |bytes: u64| bytes.div_ceil(1 << 20);
        let Some(size) = initrd else {
            return (self.ram_end <= hole).then(|| mib(self.ram_end));
        };
        // The initramfs sits at the top, page-aligned down: with RAM ending at `end` it
        // starts at (end - size) & !0xfff, which must be at or above the kernel's end.
        let need = self.ram_end.next_multiple_of(0x1000).checked_add(size)?;
        let mib_need = mib(need);
        let fits = |end: u64| self.initrd_address(end.min(hole), size).is_some();
        fits(mib_need << 20).then_some(mib_need)
    }
}

/// `len` bytes of `file` from `offset`; `None` when the file is shorter.
fn read_at<F: Read + Seek>(file: &mut F, offset: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.seek(SeekFrom::Start(offset)).ok()?;
    file.read_exact(&mut buf).ok()?;
    Some(buf)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A bzImage's setup header (Documentation/arch/x86/boot.rst).
fn bzimage(h: &[u8], file_len: u64) -> Result<Image, Defect> {
    if h.len() < HEADER_LEN {
        return Err(Defect::Truncated {
            expected: HEADER_LEN as u64,
            actual: file_len,
        });
    }
    let malformed = |what: &str| Err(Defect::Malformed { what: what.into() });
    if u16_at(h, 0x1fe) != BOOT_FLAG {
        return malformed("no boot sector signature 0xaa55 at 0x1fe");
    }
    let version = u16_at(h, 0x206);
    let xloadflags = u16_at(h, 0x236);
    if version < PROTOCOL_64BIT || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(Defect::Not64Bit {
            what: format!(
                "a bzImage without the 64-bit entry point (boot protocol {}.{:02}, needs 2.12 \
                 with XLF_KERNEL_64)",
                version >> 8,
                version & 0xff
            ),
        });
    }
    if h[0x211] & LOADED_HIGH == 0 {
        return malformed("loadflags lack LOADED_HIGH (a zImage, not a bzImage)");
    }
    let setup_sects = match h[0x1f1] {
        0 => 4,
        n => u64::from(n),
    };
    let expected = (setup_sects + 1) * 512 + u64::from(u32_at(h, 0x1f4)) * 16;
    if file_len < expected {
        return Err(Defect::Truncated {
            expected,
            actual: file_len,
        });
    }
    let init_size = u64::from(u32_at(h, 0x260));
    let pref_address = u64_at(h, 0x258);
    let alignment = u64::from(u32_at(h, 0x230));
    let relocatable = h[0x234] != 0;
    if relocatable && !alignment.is_power_of_two() {
        return malformed("kernel_alignment is not a power of two");
    }
    if init_size == 0 {
        return malformed("init_size is 0");
    }
    // Where the decompressor runs, as arch/x86/boot/compressed/head_64.S computes it: the
    // load address rounded up to kernel_alignment, but never below LOAD_PHYSICAL_ADDR
    // (pref_address); a kernel that is not relocatable runs at pref_address.
    // linux-loader puts the protected-mode code at code32_start (0x100000 by convention).
    let load = u64::from(u32_at(h, 0x214));
    if load < HIMEM_START {
        return malformed("code32_start is below 1 MiB");
    }
    let run_at = match relocatable {
        true => load.next_multiple_of(alignment).max(pref_address),
        false => pref_address,
    };
    let payload_end = load + (file_len - (setup_sects + 1) * 512);
    let ram_end = run_at
        .checked_add(init_size)
        .ok_or(Defect::Malformed {
            what: "pref_address + init_size overflows".into(),
        })?
        .max(payload_end);
    Ok(Image {
        format: Format::BzImage,
        ram_end,
        run_at,
        cmdline_max: u32_at(h, 0x238) as usize,
        initrd_addr_max: u64::from(u32_at(h, 0x22c)),
    })
}

/// An ELF64 vmlinux: its loadable segments, entry point and PVH note.
fn elf<F: Read + Seek>(file: &mut F, f: &[u8], file_len: u64) -> Result<Image, Defect> {
    let malformed = |what: String| Defect::Malformed { what };
    let truncated = |expected: u64| Defect::Truncated {
        expected,
        actual: file_len,
    };
    if f.len() < 64 {
        return Err(truncated(64));
    }
    if f[4] != ELFCLASS64 || f[5] != ELFDATA2LSB || u16_at(f, 18) != EM_X86_64 {
        return Err(Defect::Not64Bit {
            what: format!(
                "an ELF for another machine (class {}, data {}, machine {})",
                f[4],
                f[5],
                u16_at(f, 18)
            ),
        });
    }
    let (phoff, phentsize, phnum) = (u64_at(f, 32), u16_at(f, 54), u16_at(f, 56));
    if phnum == 0 || phentsize < 56 {
        return Err(malformed("no program headers".into()));
    }
    let ph_len = usize::from(phnum) * usize::from(phentsize);
    let ph_end = phoff.saturating_add(ph_len as u64);
    let table = match ph_end <= file_len {
        true => read_at(file, phoff, ph_len).ok_or_else(|| truncated(ph_end))?,
        false => return Err(truncated(ph_end)),
    };
    let mut segments = Vec::new();
    let mut pvh = None;
    for (i, p) in table.chunks_exact(usize::from(phentsize)).enumerate() {
        let (kind, offset, paddr) = (u32_at(p, 0), u64_at(p, 8), u64_at(p, 24));
        let (filesz, memsz) = (u64_at(p, 32), u64_at(p, 40));
        let end = offset
            .checked_add(filesz)
            .ok_or_else(|| malformed(format!("segment {i} overflows")))?;
        if end > file_len {
            return Err(truncated(end));
        }
        match kind {
            PT_LOAD => {
                if filesz > memsz {
                    return Err(malformed(format!("segment {i} has more file than memory")));
                }
                if paddr < HIMEM_START {
                    return Err(malformed(format!(
                        "segment {i} loads at {paddr:#x}, below 1 MiB"
                    )));
                }
                let top = paddr
                    .checked_add(memsz)
                    .ok_or_else(|| malformed(format!("segment {i} overflows")))?;
                segments.push(paddr..top);
            }
            // Notes are small; a huge one is not a kernel's.
            PT_NOTE if pvh.is_none() && filesz <= 1 << 20 => {
                pvh = read_at(file, offset, filesz as usize)
                    .as_deref()
                    .and_then(pvh_entry);
            }
            _ => {}
        }
    }
    let (Some(low), Some(high)) = (
        segments.iter().map(|s| s.start).min(),
        segments.iter().map(|s| s.end).max(),
    ) else {
        return Err(malformed("no loadable segment".into()));
    };
    let (format, entry) = match pvh {
        Some(entry) => (Format::ElfPvh { entry }, entry),
        None => {
            let entry = u64_at(f, 24);
            (Format::Elf64 { entry }, entry)
        }
    };
    if !segments.iter().any(|s| s.contains(&entry)) {
        return Err(malformed(format!(
            "its entry point {entry:#x} is outside its loadable segments"
        )));
    }
    Ok(Image {
        format,
        ram_end: high,
        run_at: low,
        cmdline_max: X86_COMMAND_LINE_SIZE - 1,
        initrd_addr_max: u64::from(u32::MAX),
    })
}

/// The PVH entry point in a PT_NOTE segment's notes, if it has one.
fn pvh_entry(mut notes: &[u8]) -> Option<u64> {
    while notes.len() >= 12 {
        let namesz = u32_at(notes, 0) as usize;
        let descsz = u32_at(notes, 4) as usize;
        let kind = u32_at(notes, 8);
        let desc_at = 12 + namesz.next_multiple_of(4);
        let next = desc_at + descsz.next_multiple_of(4);
        let name = notes.get(12..12 + namesz)?;
        let desc = notes.get(desc_at..desc_at + descsz)?;
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && name.starts_with(b"Xen") {
            return match desc.len() {
                4 => Some(u64::from(u32_at(desc, 0))),
                8 => Some(u64_at(desc, 0)),
                _ => None,
            };
        }
        notes = notes.get(next..)?;
    }
    None
}

/// Kernel images for tests (here and in the VMM's tests): headers with the fields the VMM
/// reads, and room for code.
pub mod fixtures {
    use super::*;

    /// A bzImage header (no code) with the given fields; `payload` bytes (rounded up to 16)
    /// after the setup.
    pub fn bzimage_bytes(pref: u64, init_size: u32, payload: usize) -> Vec<u8> {
        let payload = payload.next_multiple_of(16);
        let setup_sects = 1u8;
        let mut b = vec![0u8; (usize::from(setup_sects) + 1) * 512 + payload];
        b[0x1f1] = setup_sects;
        b[0x1f4..0x1f8].copy_from_slice(&(payload.div_ceil(16) as u32).to_le_bytes());
        b[0x1fe..0x200].copy_from_slice(&BOOT_FLAG.to_le_bytes());
        b[0x202..0x206].copy_from_slice(HDRS_MAGIC);
        b[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        b[0x211] = LOADED_HIGH;
        b[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        b[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        b[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
        b[0x234] = 1;
        b[0x236..0x238].copy_from_slice(&0x7fu16.to_le_bytes());
        b[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        b[0x258..0x260].copy_from_slice(&pref.to_le_bytes());
        b[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
        b
    }

    /// A minimal x86_64 ELF: one PT_LOAD of `memsz` at `paddr`, entry `entry`, and a PVH
    /// note when `pvh` is given.
    pub fn elf_bytes(paddr: u64, memsz: u64, entry: u64, pvh: Option<u32>) -> Vec<u8> {
        let mut f = vec![0u8; 0x200];
        f[..4].copy_from_slice(ELF_MAGIC);
        f[4] = ELFCLASS64;
        f[5] = ELFDATA2LSB;
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        f[24..32].copy_from_slice(&entry.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&2u16.to_le_bytes());
        let ph =
            |f: &mut Vec<u8>, at: usize, kind: u32, off: u64, addr: u64, fsz: u64, msz: u64| {
                f[at..at + 4].copy_from_slice(&kind.to_le_bytes());
                f[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
                f[at + 16..at + 24].copy_from_slice(&addr.to_le_bytes());
                f[at + 24..at + 32].copy_from_slice(&addr.to_le_bytes());
                f[at + 32..at + 40].copy_from_slice(&fsz.to_le_bytes());
                f[at + 40..at + 48].copy_from_slice(&msz.to_le_bytes());
            };
        ph(&mut f, 64, PT_LOAD, 0x100, paddr, 0x100, memsz);
        // The note: namesz 4 "Xen\0", descsz 4, type 18.
        let mut note = Vec::new();
        if let Some(e) = pvh {
            note.extend_from_slice(&4u32.to_le_bytes());
            note.extend_from_slice(&4u32.to_le_bytes());
            note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&e.to_le_bytes());
        }
        ph(
            &mut f,
            120,
            PT_NOTE,
            0x180,
            0,
            note.len() as u64,
            note.len() as u64,
        );
        f[0x180..0x180 + note.len()].copy_from_slice(&note);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    fn parse(b: &[u8]) -> Result<Image, Defect> {
        Image::parse(&mut std::io::Cursor::new(b), b.len() as u64)
    }

    /// The header of Debian's 6.1 bzImage: runs at 16 MiB and decompresses into 63.6 MiB.
    #[test]
    fn debian_bzimage_needs_80_mib() {
        let b = bzimage_bytes(0x100_0000, 0x3f9_8000, 4096);
        let img = parse(&b).unwrap();
        assert_eq!(img.format, Format::BzImage);
        assert_eq!(img.run_at, 0x100_0000);
        assert_eq!(img.ram_end, 0x100_0000 + 0x3f9_8000);
        assert_eq!((img.cmdline_max, img.initrd_addr_max), (2047, 0x7fff_ffff));
        let hole = 3 << 30;
        assert_eq!(img.min_low_ram_mib(None, hole), Some(80));
        // 20 MiB of initramfs: 79.6 MiB of kernel, page-aligned, plus 20 MiB.
        assert_eq!(img.min_low_ram_mib(Some(20 << 20), hole), Some(100));
        assert!(img.initrd_address(100 << 20, 20 << 20).is_some());
        assert!(img.initrd_address(99 << 20, 20 << 20).is_none());
        // More than fits below initrd_addr_max (2 GiB) whatever the RAM.
        assert_eq!(img.min_low_ram_mib(Some(2 << 30), hole), None);
    }

    #[test]
    fn run_address_follows_the_decompressor() {
        // Relocatable, preferring 1 MiB: runs at 1 MiB rounded up to the 2 MiB alignment.
        let img = parse(&bzimage_bytes(0x10_0000, 0x100_0000, 512)).unwrap();
        assert_eq!(img.run_at, 0x20_0000);
        // Not relocatable: runs at pref_address whatever the load address.
        let mut b = bzimage_bytes(0x40_0000, 0x100_0000, 512);
        b[0x234] = 0;
        assert_eq!(parse(&b).unwrap().run_at, 0x40_0000);
    }

    #[test]
    fn bzimage_defects() {
        let good = bzimage_bytes(0x100_0000, 0x100_0000, 8192);
        assert!(parse(&good).is_ok());
        let cut = &good[..good.len() - 100];
        assert_eq!(
            parse(cut),
            Err(Defect::Truncated {
                expected: good.len() as u64,
                actual: cut.len() as u64
            })
        );
        assert!(matches!(
            parse(&good[..0x250]),
            Err(Defect::Truncated { .. })
        ));
        let mut old = good.clone();
        old[0x206..0x208].copy_from_slice(&0x20bu16.to_le_bytes());
        let e = parse(&old).unwrap_err().to_string();
        assert!(e.contains("boot protocol 2.11, needs 2.12"), "{e}");
        let mut no64 = good.clone();
        no64[0x236] = 0;
        assert!(matches!(parse(&no64), Err(Defect::Not64Bit { .. })));
        let mut zimage = good.clone();
        zimage[0x211] = 0;
        assert!(matches!(parse(&zimage), Err(Defect::Malformed { .. })));
        let mut no_init = good.clone();
        no_init[0x260..0x264].fill(0);
        assert!(matches!(parse(&no_init), Err(Defect::Malformed { .. })));
        let mut no_flag = good;
        no_flag[0x1fe] = 0;
        assert!(matches!(parse(&no_flag), Err(Defect::Malformed { .. })));
        assert_eq!(parse(b""), Err(Defect::Empty));
        assert_eq!(parse(b"hello"), Err(Defect::NotAKernel));
    }

    #[test]
    fn elf_entry_pvh_and_end() {
        let img = parse(&elf_bytes(0x100_0000, 0x200_0000, 0x100_0000, None)).unwrap();
        assert_eq!(img.format, Format::Elf64 { entry: 0x100_0000 });
        assert_eq!((img.run_at, img.ram_end), (0x100_0000, 0x300_0000));
        assert_eq!(img.cmdline_max, 2047);
        let img = parse(&elf_bytes(
            0x100_0000,
            0x200_0000,
            0x100_0000,
            Some(0x100_1000),
        ));
        assert_eq!(img.unwrap().format, Format::ElfPvh { entry: 0x100_1000 });
    }

    #[test]
    fn elf_defects() {
        let good = elf_bytes(0x100_0000, 0x200_0000, 0x100_0000, None);
        let outside = elf_bytes(0x100_0000, 0x200_0000, 0x500_0000, None);
        assert!(parse(&outside).unwrap_err().to_string().contains("outside"));
        let low = elf_bytes(0x1000, 0x2000, 0x1000, None);
        assert!(parse(&low).unwrap_err().to_string().contains("below 1 MiB"));
        assert!(matches!(
            parse(&good[..0x150]),
            Err(Defect::Truncated { .. })
        ));
        let mut i386 = good.clone();
        i386[4] = 1;
        assert!(matches!(parse(&i386), Err(Defect::Not64Bit { .. })));
        let mut arm = good;
        arm[18] = 183;
        assert!(matches!(parse(&arm), Err(Defect::Not64Bit { .. })));
    }
}
