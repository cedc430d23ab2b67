//! Initial vCPU state: GDT and identity page tables in guest memory, then registers, FPU,
//! MSRs and the local APIC's LINT pins for each vCPU.

use crate::GuestMemoryMmap;
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use resources::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PML4_START, RESET_VECTOR,
};
use vm_memory::{Bytes, GuestAddress};

/// Errors while setting up a vCPU.
#[derive(Debug)]
pub enum Error {
    /// A KVM vCPU ioctl failed.
    Kvm {
        /// Which state.
        what: &'static str,
        /// The ioctl's error.
        source: kvm_ioctls::Error,
    },
    /// KVM accepted only some of the boot MSRs.
    Msrs {
        /// How many were set.
        set: usize,
        /// How many were asked for.
        wanted: usize,
    },
    /// Writing tables to guest memory failed.
    Memory(vm_memory::GuestMemoryError),
}

impl diag::Explain for Error {
    fn advice(&self) -> diag::Advice {
        use diag::Advice;
        match self {
            Error::Kvm { what, source } => Advice::new(
                format!("KVM: cannot set the vCPU's {what}: {source}"),
                "check that KVM works on this host (dmesg)",
            ),
            Error::Msrs { set, wanted } => Advice::new(
                format!("KVM accepted {set} of {wanted} boot MSRs"),
                "check that KVM works on this host (dmesg)",
            ),
            Error::Memory(e) => {
                Advice::bug(format!("cannot write boot tables to guest memory: {e}"))
            }
        }
    }
}
diag::explained!(Error);

impl From<vm_memory::GuestMemoryError> for Error {
    fn from(e: vm_memory::GuestMemoryError) -> Self {
        Error::Memory(e)
    }
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// 64-bit long mode with identity paging; `rsi` points at the zero page.
    Long64 {
        /// Entry point.
        rip: u64,
        /// Zero page address.
        boot_params: u64,
    },
    /// PVH: 32-bit protected mode, paging off; `rbx` points at `hvm_start_info`.
    Pvh32 {
        /// Entry point.
        rip: u64,
        /// `hvm_start_info` address.
        start_info: u64,
    },
}

const GDT_CODE64: usize = 1;
const GDT_DATA: usize = 2;
const GDT_TSS: usize = 3;
const GDT_CODE32: usize = 4;
/// Flat descriptors: null, 64-bit code, data, TSS, 32-bit code.
const GDT: [u64; 5] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
    gdt_entry(0xc09b, 0, 0xfffff),
];

const fn gdt_entry(flags: u64, base: u64, limit: u64) -> u64 {
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0xf_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The KVM view of GDT entry `index`.
fn segment(index: usize) -> kvm_segment {
    let e = GDT[index];
    let bit = |n: u32| ((e >> n) & 1) as u8;
    let g = bit(55);
    let raw_limit = (((e >> 32) & 0xf_0000) | (e & 0xffff)) as u32;
    kvm_segment {
        base: ((e >> 32) & 0xff00_0000) | ((e >> 16) & 0x00ff_ffff),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: (index * 8) as u16,
        type_: ((e >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((e >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Page directories identity-map this many GiB with 2 MiB pages.
const IDENTITY_GIB: u64 = 4;

/// Real-mode code at the reset vector: ask the i8042 to pulse the reset line, then halt.
/// `mov al, 0xfe; out 0x64, al; hlt; jmp $-1`.
const RESET_STUB: [u8; 7] = [0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd];

/// Writes the GDT, an empty IDT, identity page tables for the first 4 GiB, and the reset
/// stub at the reset vector (there is no firmware to jump back into).
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), Error> {
    mem.write_slice(&RESET_STUB, GuestAddress(RESET_VECTOR))?;
    for (i, entry) in GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + i as u64 * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))?;
    let pdpt = PML4_START + 0x1000;
    mem.write_obj(pdpt | 0x3, GuestAddress(PML4_START))?;
    for gib in 0..IDENTITY_GIB {
        let pd = pdpt + 0x1000 * (gib + 1);
        mem.write_obj(pd | 0x3, GuestAddress(pdpt + gib * 8))?;
        for i in 0..512u64 {
            let page = ((gib << 30) + (i << 21)) | 0x83;
            mem.write_obj(page, GuestAddress(pd + i * 8))?;
        }
    }
    Ok(())
}

/// Puts the boot vCPU at `entry`.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, entry: Entry) -> Result<(), Error> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("special registers"))?;
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.tr = segment(GDT_TSS);
    match entry {
        Entry::Long64 { rip, boot_params } => {
            set_segments(&mut sregs, segment(GDT_CODE64));
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = rip;
            regs.rsi = boot_params;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
        }
        Entry::Pvh32 { rip, start_info } => {
            set_segments(&mut sregs, segment(GDT_CODE32));
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = rip;
            regs.rbx = start_info;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("special registers"))?;
    vcpu.set_regs(&regs).map_err(kvm("registers"))
}

fn set_segments(sregs: &mut kvm_sregs, code: kvm_segment) {
    let data = segment(GDT_DATA);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
}

/// FPU control word and MXCSR at their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), Error> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("FPU state"))
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRRs enabled, default type write-back: all RAM cacheable.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// The MSRs a freshly booted x86_64 CPU should have. The TSC is left alone: KVM starts
/// every vCPU's TSC in sync, and rewriting it per vCPU can make the guest see them apart.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), Error> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .iter()
    .map(|&(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| Error::Msrs {
        set: 0,
        wanted: entries.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("MSRs"))?;
    if set != entries.len() {
        return Err(Error::Msrs {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// LINT0 as ExtINT (the legacy PIC) and LINT1 as NMI, as firmware leaves them.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), Error> {
    let mut lapic = vcpu.get_lapic().map_err(kvm("local APIC"))?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: &mut [u8] = bytemuck_regs(&mut lapic.regs[reg..reg + 4]);
        let value = u32::from_le_bytes(bytes.try_into().expect("4 bytes"));
        let value = (value & !0x700) | (mode << 8);
        bytes.copy_from_slice(&value.to_le_bytes());
    }
    vcpu.set_lapic(&lapic).map_err(kvm("local APIC"))
}

/// The APIC register page is `c_char`; view it as bytes.
fn bytemuck_regs(regs: &mut [std::os::raw::c_char]) -> &mut [u8] {
    // SAFETY: c_char and u8 have the same size and alignment; the slice is borrowed
    // mutably for the returned lifetime, so no alias exists.
    unsafe { std::slice::from_raw_parts_mut(regs.as_mut_ptr().cast::<u8>(), regs.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode() {
        let code = segment(GDT_CODE64);
        assert_eq!((code.l, code.db, code.present, code.type_), (1, 0, 1, 0xb));
        assert_eq!((code.base, code.limit, code.selector), (0, 0xffff_ffff, 8));
        let data = segment(GDT_DATA);
        assert_eq!((data.db, data.s, data.type_), (1, 1, 3));
        let code32 = segment(GDT_CODE32);
        assert_eq!((code32.l, code32.db, code32.g), (0, 1, 1));
        let tss = segment(GDT_TSS);
        assert_eq!((tss.s, tss.type_, tss.g), (0, 0xb, 1));
        assert_eq!(segment(0).unusable, 1);
    }

    #[test]
    fn page_tables_identity_map_4gib() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        let pdpt = pml4 & !0xfff;
        for gib in 0..4u64 {
            let pdpte: u64 = mem.read_obj(GuestAddress(pdpt + gib * 8)).unwrap();
            let last: u64 = mem
                .read_obj(GuestAddress((pdpte & !0xfff) + 511 * 8))
                .unwrap();
            assert_eq!(last & !0xfff, (gib << 30) + (511 << 21));
            assert_eq!(last & 0x83, 0x83, "present, writable, 2 MiB page");
        }
        let gdt1: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(gdt1, 0x00af_9b00_0000_ffff);
        let mut stub = [0u8; 7];
        mem.read_slice(&mut stub, GuestAddress(RESET_VECTOR))
            .unwrap();
        assert_eq!(stub, RESET_STUB);
    }
}
