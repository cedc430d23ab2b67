//! Boot protocol structures: the e820 map, the Linux zero page (`boot_params`) and the PVH
//! `hvm_start_info`, and where the initramfs goes.

use crate::GuestMemoryMmap;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use resources::layout::*;
use vm_memory::{ByteValued, Bytes, GuestAddress};

/// Errors while writing boot structures.
#[derive(Debug)]
pub enum Error {
    /// The e820 map has more entries than the zero page holds.
    E820Overflow(usize),
    /// Writing to guest memory failed.
    Memory(vm_memory::GuestMemoryError),
}

impl diag::Explain for Error {
    fn advice(&self) -> diag::Advice {
        use diag::Advice;
        match self {
            Error::E820Overflow(n) => Advice::bug(format!(
                "e820 map has {n} entries, more than the zero page holds"
            )),
            Error::Memory(e) => Advice::bug(format!("cannot write boot data to guest memory: {e}")),
        }
    }
}
diag::explained!(Error);

impl From<vm_memory::GuestMemoryError> for Error {
    fn from(e: vm_memory::GuestMemoryError) -> Self {
        Error::Memory(e)
    }
}

/// e820 entry types.
pub const E820_RAM: u32 = 1;
/// e820 reserved.
pub const E820_RESERVED: u32 = 2;

/// "HdrS": the setup header magic.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// Boot sector signature.
const BOOT_FLAG: u16 = 0xaa55;
/// Loader type "undefined" (0xff), as other direct-boot VMMs use.
const LOADER_TYPE: u8 = 0xff;
/// Magic of `hvm_start_info`.
const PVH_MAGIC: u32 = 0x336e_c578;

/// One e820 range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// `E820_RAM` or `E820_RESERVED`.
    pub kind: u32,
}

/// The memory map for `mem_size` bytes of RAM: low RAM, the ACPI area, RAM from 1 MiB to
/// the 32-bit hole, ECAM reserved, and RAM above 4 GiB.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let entry = |addr, size, kind| E820Entry { addr, size, kind };
    let ranges = ram_ranges(mem_size);
    let low_end = ranges[0].len;
    let mut map = vec![
        entry(0, EBDA_START, E820_RAM),
        entry(ACPI_START, ACPI_SIZE, E820_RESERVED),
        entry(HIMEM_START, low_end - HIMEM_START, E820_RAM),
        entry(PCI_ECAM_START, PCI_ECAM_SIZE, E820_RESERVED),
    ];
    map.extend(ranges[1..].iter().map(|r| entry(r.start, r.len, E820_RAM)));
    map
}

/// What the zero page says about the command line and initramfs.
#[derive(Clone, Copy, Debug, Default)]
pub struct BootData {
    /// Length of the command line without its NUL.
    pub cmdline_len: usize,
    /// Initramfs (address, size), if any.
    pub initrd: Option<(u64, u64)>,
    /// Guest RAM size.
    pub mem_size: u64,
}

/// Writes the Linux zero page at `ZERO_PAGE_START`. `header` is the bzImage setup header,
/// or `None` for an ELF vmlinux entered at its 64-bit entry point.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    header: Option<setup_header>,
    data: &BootData,
) -> Result<(), Error> {
    let mut params = boot_params {
        hdr: header.unwrap_or(setup_header {
            header: HDRS_MAGIC,
            boot_flag: BOOT_FLAG,
            kernel_alignment: 0x100_0000,
            ..Default::default()
        }),
        acpi_rsdp_addr: ACPI_START,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = data.cmdline_len as u32;
    if let Some((addr, size)) = data.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820_map(data.mem_size);
    if map.len() > params.e820_table.len() {
        return Err(Error::E820Overflow(map.len()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))?;
    Ok(())
}

/// Writes the PVH `hvm_start_info` at `PVH_INFO_START`, followed by its memory map and
/// module list. The vCPU enters with `rbx` = `PVH_INFO_START`.
pub fn write_pvh_start_info(mem: &GuestMemoryMmap, data: &BootData) -> Result<(), Error> {
    let map = e820_map(data.mem_size);
    let info_size = std::mem::size_of::<hvm_start_info>() as u64;
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    let memmap_addr = PVH_INFO_START + info_size;
    let modlist_addr = memmap_addr + entry_size * map.len() as u64;
    let mut info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: ACPI_START,
        memmap_paddr: memmap_addr,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    for (i, e) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        mem.write_obj(entry, GuestAddress(memmap_addr + i as u64 * entry_size))?;
    }
    if let Some((paddr, size)) = data.initrd {
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(modlist_addr))?;
        info.nr_modules = 1;
        info.modlist_paddr = modlist_addr;
    }
    mem.write_slice(info.as_slice(), GuestAddress(PVH_INFO_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(size: u64) -> GuestMemoryMmap {
        let ranges: Vec<_> = ram_ranges(size)
            .iter()
            .map(|r| (GuestAddress(r.start), r.len as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&ranges).unwrap()
    }

    fn ram_total(map: &[E820Entry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn e820_small_guest() {
        let map = e820_map(512 << 20);
        assert_eq!(map.len(), 4);
        assert_eq!(
            map[0],
            E820Entry {
                addr: 0,
                size: EBDA_START,
                kind: E820_RAM
            }
        );
        assert_eq!(map[2].addr, HIMEM_START);
        assert_eq!(map[2].addr + map[2].size, 512 << 20);
        assert_eq!(map[3].kind, E820_RESERVED);
        assert_eq!(ram_total(&map), (512 << 20) - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn e820_large_guest_leaves_the_pci_hole() {
        let map = e820_map(6 << 30);
        let last = map.last().unwrap();
        assert_eq!(
            (last.addr, last.size, last.kind),
            (4 << 30, 3 << 30, E820_RAM)
        );
        assert_eq!(map[2].addr + map[2].size, MEM_32BIT_GAP_START);
        for e in map.iter().filter(|e| e.kind == E820_RAM) {
            let end = e.addr + e.size;
            assert!(end <= MEM_32BIT_GAP_START || e.addr >= RAM_64BIT_START);
        }
        // Sorted and disjoint.
        for w in map.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr);
        }
    }

    #[test]
    fn zero_page_fields() {
        let mem = memory(64 << 20);
        let data = BootData {
            cmdline_len: 12,
            initrd: Some((0x300_0000, 0x1000)),
            mem_size: 64 << 20,
        };
        write_boot_params(&mem, None, &data).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.header }, HDRS_MAGIC);
        assert_eq!({ hdr.boot_flag }, BOOT_FLAG);
        assert_eq!({ hdr.type_of_loader }, LOADER_TYPE);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 12);
        assert_eq!({ hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x1000);
        assert_eq!({ p.acpi_rsdp_addr }, ACPI_START);
        assert_eq!(p.e820_entries, 4);
        let e = p.e820_table[2];
        assert_eq!(
            ({ e.addr }, { e.size }),
            (HIMEM_START, (64 << 20) - HIMEM_START)
        );
    }

    #[test]
    fn pvh_start_info_fields() {
        let mem = memory(5 << 30);
        let data = BootData {
            cmdline_len: 3,
            initrd: Some((0x400_0000, 0x2000)),
            mem_size: 5 << 30,
        };
        write_pvh_start_info(&mem, &data).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, PVH_MAGIC);
        assert_eq!(info.memmap_entries, 5);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.rsdp_paddr, ACPI_START);
        let last: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(info.memmap_paddr + 4 * 24))
            .unwrap();
        assert_eq!((last.addr, last.size), (4 << 30, 2 << 30));
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x400_0000, 0x2000));
        assert!(info.modlist_paddr + 32 <= CMDLINE_START);
    }
}
