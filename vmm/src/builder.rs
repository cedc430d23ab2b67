//! Builds a VM from a [`VmConfig`], top to bottom: guest memory, the KVM VM and irqchip,
//! legacy devices, kernel and boot data, ACPI tables, vCPUs.

use crate::config::VmConfig;
use crate::console::GuestSerial;
use crate::vcpu::Vcpu;
use arch::boot::{self, BootData, InitrdPlacement};
use arch::regs::Entry;
use arch::GuestMemoryMmap;
use devices::acpi_pm::AcpiPm;
use devices::debug_exit::DebugExit;
use devices::i8042::I8042;
use devices::serial::Serial;
use devices::{Bus, GuestExit};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use resources::layout::*;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// Why a VM could not be built. Each message names the problem and the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file given on the command line cannot be read.
    #[error("cannot read {what} '{path}': {source}; check --{what}")]
    File {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The path given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel file is neither a bzImage nor an ELF.
    #[error("'{0}' is not a Linux kernel (neither a bzImage nor an ELF vmlinux); check --kernel")]
    NotAKernel(String),
    /// A bzImage without the 64-bit entry point.
    #[error("'{0}' is a bzImage without the 64-bit boot protocol (boot protocol 2.12+ with XLF_KERNEL_64); use an x86_64 kernel")]
    Not64Bit(String),
    /// The loader rejected the kernel.
    #[error("cannot load kernel '{path}': {source}")]
    Load {
        /// The kernel path.
        path: String,
        /// The loader's error.
        source: linux_loader::loader::Error,
    },
    /// Boot data did not fit.
    #[error(transparent)]
    Boot(#[from] boot::Error),
    /// The command line is not acceptable to the kernel.
    #[error("bad --cmdline: {0}; use printable ASCII up to {CMDLINE_MAX_SIZE} bytes")]
    Cmdline(linux_loader::cmdline::Error),
    /// More RAM than the host has.
    #[error("--memory {asked_mib} MiB is more than this host's {host_mib} MiB of RAM; choose a smaller --memory")]
    HostMemory {
        /// Asked for.
        asked_mib: u64,
        /// Host total.
        host_mib: u64,
    },
    /// mmap of guest RAM failed.
    #[error(transparent)]
    GuestMemory(#[from] crate::memory::Error),
    /// /dev/kvm cannot be opened.
    #[error("cannot open /dev/kvm: {source}; {hint}")]
    KvmOpen {
        /// The open error.
        source: kvm_ioctls::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// Too many vCPUs for this host's KVM.
    #[error("--cpus {asked}: this host's KVM allows at most {max} vCPUs")]
    TooManyCpus {
        /// Asked for.
        asked: u8,
        /// KVM's limit.
        max: usize,
    },
    /// A KVM VM-level call failed.
    #[error("KVM: cannot {what}: {source}")]
    Kvm {
        /// What we were doing.
        what: &'static str,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
    /// vCPU register setup failed.
    #[error(transparent)]
    Regs(#[from] arch::regs::Error),
    /// ACPI tables did not fit or could not be written.
    #[error("cannot write ACPI tables: {0}")]
    Acpi(#[from] arch::acpi::Error),
    /// An eventfd or similar OS resource failed.
    #[error("cannot create {what}: {source}")]
    Os {
        /// What.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Device ranges collided (a bug, not user input).
    #[error("device layout: {0}")]
    Bus(#[from] devices::bus::Error),
    /// A passed-through device could not be attached.
    #[error(transparent)]
    Passthrough(#[from] crate::passthrough::Error),
    /// `phys-bits=` wider than KVM allows.
    #[error("--memory ...,phys-bits={asked}: this host's KVM allows guests at most {max} physical address bits; give phys-bits={max} or less, or leave it out")]
    PhysBits {
        /// Asked for.
        asked: u8,
        /// KVM's width.
        max: u8,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

fn os_err(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Os { what, source }
}

/// A VM ready to run.
pub struct Vm {
    /// Where devices and vCPUs report why the guest stopped.
    pub exit: Arc<GuestExit>,
    /// vCPUs, not yet started.
    pub vcpus: Vec<Vcpu>,
    /// The console UART.
    pub serial: GuestSerial,
    /// Kept open for the VM's lifetime.
    pub vm: Arc<VmFd>,
    /// Guest RAM (mapped into KVM and, with devices, for their DMA).
    pub memory: GuestMemoryMmap,
    /// The PCI bus, and passed-through devices with their container.
    pub passthrough: crate::passthrough::Passthrough,
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// vCPU exits by kind.
    pub exits: Arc<crate::stats::ExitCounts>,
}

/// Builds the VM described by `cfg`.
pub fn build(cfg: &VmConfig) -> Result<Vm, Error> {
    let mut kernel = open_file("kernel", &cfg.kernel)?;
    let initrd = match &cfg.initramfs {
        Some(path) => Some(open_file("initramfs", path)?),
        None => None,
    };
    check_host_memory(cfg.memory.size)?;
    let kvm = open_kvm()?;
    let max = kvm.get_max_vcpus();
    if usize::from(cfg.cpus) > max {
        return Err(Error::TooManyCpus {
            asked: cfg.cpus,
            max,
        });
    }
    let (cpuid, phys_bits) = guest_cpuid(&kvm, cfg)?;
    let vm = Arc::new(kvm.create_vm().map_err(kvm_err("create a VM"))?);
    log::debug!("KVM VM created");
    let memory = crate::memory::create(&cfg.memory)?;
    register_memory(&vm, &memory)?;
    setup_irqchip(&vm)?;
    log::debug!(
        "guest memory and irqchip ready (RAM at host {:?})",
        memory.iter().map(|r| r.as_ptr()).collect::<Vec<_>>()
    );

    let exit = Arc::new(GuestExit::new().map_err(os_err("exit eventfd"))?);
    let pio = Arc::new(Bus::new());
    let serial = attach_legacy_devices(&vm, &pio, &exit, cfg)?;

    let mmio = Arc::new(Bus::new());
    let setup = crate::passthrough::Setup {
        vm: &vm,
        memory: &memory,
        mem_size: cfg.memory.size,
        phys_bits,
        kvm_phys_bits: arch::cpuid::phys_bits(&cpuid.supported),
        seccomp: cfg.seccomp,
        pio: &pio,
        mmio: &mmio,
    };
    let passthrough = crate::passthrough::attach(&setup, &cfg.devices)?;

    log::debug!("devices attached");
    let entry = load_guest(&memory, cfg, &mut kernel, initrd)?;
    log::debug!("kernel and initramfs loaded");
    write_acpi_tables(&memory, cfg, &passthrough.windows)?;
    arch::regs::write_boot_tables(&memory)?;

    let exits = Arc::new(crate::stats::ExitCounts::default());
    let routes = || crate::vcpu::Routes {
        pio: pio.clone(),
        mmio: mmio.clone(),
        exits: exits.clone(),
    };
    let vcpus = create_vcpus(
        &cpuid.guest,
        &vm,
        cfg.cpus,
        entry,
        routes,
        &exit,
        cfg.seccomp,
    )?;
    log::debug!("{} vCPUs ready", vcpus.len());
    Ok(Vm {
        exit,
        vcpus,
        serial,
        vm,
        memory,
        passthrough,
        pio,
        mmio,
        exits,
    })
}

/// KVM's supported CPUID, and the guest's: with `phys-bits=` narrowed to it.
struct GuestCpuid {
    supported: CpuId,
    guest: CpuId,
}

/// The CPUID vCPUs start from and the guest's physical address width.
fn guest_cpuid(kvm: &Kvm, cfg: &VmConfig) -> Result<(GuestCpuid, u8), Error> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("read the supported CPUID"))?;
    let max = arch::cpuid::phys_bits(&supported);
    let mut guest = supported.clone();
    let bits = match cfg.memory.phys_bits {
        Some(asked) if asked > max => return Err(Error::PhysBits { asked, max }),
        Some(asked) => {
            arch::cpuid::limit_phys_bits(&mut guest, asked);
            asked
        }
        None => max,
    };
    Ok((GuestCpuid { supported, guest }, bits))
}

/// ACPI tables, with the PCI host bridge and MCFG.
fn write_acpi_tables(
    memory: &GuestMemoryMmap,
    cfg: &VmConfig,
    windows: &pci::PciWindows,
) -> Result<(), Error> {
    use arch::acpi::{AcpiConfig, AcpiTables, OEM_ID, OEM_REVISION};
    let mut tables = AcpiTables::new(&AcpiConfig { num_cpus: cfg.cpus })?;
    tables.add_dsdt_aml(&pci::dsdt_aml(windows));
    tables.add_table(&pci::mcfg(OEM_ID, OEM_REVISION))?;
    tables.write_to_guest(memory)?;
    Ok(())
}

fn open_file(what: &'static str, path: &Path) -> Result<File, Error> {
    let file_err = |source| Error::File {
        what,
        path: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(file_err)?;
    if file.metadata().map_err(file_err)?.is_dir() {
        return Err(file_err(std::io::Error::from(
            std::io::ErrorKind::IsADirectory,
        )));
    }
    Ok(file)
}

/// Refuses more RAM than the host has at all (a later OOM kill helps nobody).
fn check_host_memory(size: u64) -> Result<(), Error> {
    let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else {
        return Ok(());
    };
    let total_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    match total_kib {
        Some(kib) if size > kib << 10 => Err(Error::HostMemory {
            asked_mib: size >> 20,
            host_mib: kib >> 10,
        }),
        _ => Ok(()),
    }
}

fn open_kvm() -> Result<Kvm, Error> {
    Kvm::new().map_err(|source| {
        let hint = match source.errno() {
            libc::ENOENT | libc::ENXIO | libc::ENODEV => {
                "load KVM (modprobe kvm_intel or kvm_amd) and enable virtualization in firmware"
            }
            libc::EACCES | libc::EPERM => {
                "run as root or add your user to the group that owns /dev/kvm (usually 'kvm')"
            }
            _ => "check that KVM works on this host",
        };
        Error::KvmOpen { source, hint }
    })
}

fn register_memory(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<(), Error> {
    for (slot, region) in memory.iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping of exactly memory_size bytes owned by
        // `memory`, which the VM keeps for as long as the VM fd exists.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("map guest memory"))?;
    }
    Ok(())
}

/// TSS and identity-map pages (needed on Intel) in the hole below 4 GiB, the in-kernel
/// PIC/IOAPIC/LAPIC and the PIT.
fn setup_irqchip(vm: &VmFd) -> Result<(), Error> {
    const TSS_ADDRESS: usize = 0xfffb_d000;
    const IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
    vm.set_identity_map_address(IDENTITY_MAP_ADDRESS)
        .map_err(kvm_err("set the identity map address"))?;
    vm.set_tss_address(TSS_ADDRESS)
        .map_err(kvm_err("set the TSS address"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("create the in-kernel irqchip"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("create the PIT"))
}

fn attach_legacy_devices(
    vm: &VmFd,
    pio: &Bus,
    exit: &Arc<GuestExit>,
    cfg: &VmConfig,
) -> Result<GuestSerial, Error> {
    let (serial, irq) = Serial::new(std::io::stdout()).map_err(os_err("serial eventfd"))?;
    vm.register_irqfd(&irq, COM1_IRQ)
        .map_err(kvm_err("wire the serial interrupt"))?;
    // The irqfd holds its own reference to the eventfd; the UART keeps the other end.
    drop(irq);
    let serial = Arc::new(Mutex::new(serial));
    pio.insert_named("com1", serial.clone(), u64::from(COM1_PORT), 8)?;
    pio.insert_named(
        "i8042",
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
        u64::from(I8042_PORT),
        5,
    )?;
    pio.insert_named(
        "acpi-pm",
        Arc::new(Mutex::new(AcpiPm::new(exit.clone()))),
        u64::from(ACPI_PM_PORT),
        2,
    )?;
    if let Some(port) = cfg.debug_exit {
        pio.insert_named(
            "debug-exit",
            Arc::new(Mutex::new(DebugExit::new(exit.clone()))),
            u64::from(port),
            1,
        )?;
    }
    Ok(serial)
}

/// `HdrS` at 0x202 marks a bzImage; `\x7fELF` at 0 an ELF.
#[derive(Debug, PartialEq, Eq)]
enum KernelFormat {
    BzImage,
    Elf,
}

fn kernel_format(file: &mut File) -> Option<KernelFormat> {
    let mut magic = [0u8; 4];
    let mut at = |offset| {
        file.seek(SeekFrom::Start(offset)).ok()?;
        file.read_exact(&mut magic).ok()?;
        Some(magic)
    };
    if at(0x202) == Some(*b"HdrS") {
        return Some(KernelFormat::BzImage);
    }
    (at(0) == Some(*b"\x7fELF")).then_some(KernelFormat::Elf)
}

const XLF_KERNEL_64: u16 = 1;
/// Offset of the 64-bit entry point from the start of a bzImage's protected-mode code.
const BZIMAGE_ENTRY_64: u64 = 0x200;

/// Loads kernel, command line and initramfs, writes the boot structures, and returns how
/// the boot vCPU enters the kernel.
fn load_guest(
    memory: &GuestMemoryMmap,
    cfg: &VmConfig,
    kernel: &mut File,
    initrd: Option<File>,
) -> Result<Entry, Error> {
    let path = cfg.kernel.display().to_string();
    let low_end = ram_ranges(cfg.memory.size)[0].len;
    let file_len = kernel.metadata().map(|m| m.len()).unwrap_or(0);
    if HIMEM_START + file_len > low_end {
        return Err(boot::too_small(HIMEM_START + file_len).into());
    }
    let himem = Some(GuestAddress(HIMEM_START));
    let load_err = |source| Error::Load {
        path: path.clone(),
        source,
    };
    let (entry, header, kernel_end, addr_max) = match kernel_format(kernel) {
        Some(KernelFormat::BzImage) => {
            let r = BzImage::load(memory, None, kernel, himem).map_err(load_err)?;
            let hdr = r.setup_header.expect("bzImage loader returns its header");
            if hdr.version < 0x20c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(Error::Not64Bit(path));
            }
            let rip = r.kernel_load.raw_value() + BZIMAGE_ENTRY_64;
            let entry = Entry::Long64 {
                rip,
                boot_params: ZERO_PAGE_START,
            };
            let end = r
                .kernel_end
                .max(r.kernel_load.raw_value() + u64::from(hdr.init_size));
            (entry, Some(hdr), end, u64::from(hdr.initrd_addr_max))
        }
        Some(KernelFormat::Elf) => {
            let r = Elf::load(memory, None, kernel, himem).map_err(load_err)?;
            let entry = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(rip) => Entry::Pvh32 {
                    rip: rip.raw_value(),
                    start_info: PVH_INFO_START,
                },
                _ => Entry::Long64 {
                    rip: r.kernel_load.raw_value(),
                    boot_params: ZERO_PAGE_START,
                },
            };
            (entry, None, r.kernel_end, u64::from(u32::MAX))
        }
        None => return Err(Error::NotAKernel(path)),
    };
    if kernel_end > low_end {
        return Err(boot::too_small(kernel_end).into());
    }

    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(Error::Cmdline)?;
    cmdline.insert_str(&cfg.cmdline).map_err(Error::Cmdline)?;
    load_cmdline(memory, GuestAddress(CMDLINE_START), &cmdline).map_err(load_err)?;

    let initrd = match initrd {
        Some(file) => Some(load_initrd(memory, cfg, file, kernel_end, addr_max)?),
        None => None,
    };
    let data = BootData {
        cmdline_len: cfg.cmdline.len(),
        initrd,
        mem_size: cfg.memory.size,
    };
    match entry {
        Entry::Long64 { .. } => boot::write_boot_params(memory, header, &data)?,
        Entry::Pvh32 { .. } => boot::write_pvh_start_info(memory, &data)?,
    }
    Ok(entry)
}

fn load_initrd(
    memory: &GuestMemoryMmap,
    cfg: &VmConfig,
    mut file: File,
    kernel_end: u64,
    addr_max: u64,
) -> Result<(u64, u64), Error> {
    let path = cfg.initramfs.as_deref().unwrap_or(Path::new(""));
    let file_err = |source| Error::File {
        what: "initramfs",
        path: path.display().to_string(),
        source,
    };
    let size = file.metadata().map_err(file_err)?.len();
    let placement = InitrdPlacement {
        kernel_end,
        addr_max,
        size,
    };
    let addr = boot::initrd_address(cfg.memory.size, placement)?;
    memory
        .read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| file_err(std::io::Error::other(e.to_string())))?;
    Ok((addr, size))
}

fn create_vcpus(
    supported: &CpuId,
    vm: &VmFd,
    count: u8,
    entry: Entry,
    routes: impl Fn() -> crate::vcpu::Routes,
    exit: &Arc<GuestExit>,
    seccomp: bool,
) -> Result<Vec<Vcpu>, Error> {
    (0..count)
        .map(|index| {
            let fd = vm
                .create_vcpu(u64::from(index))
                .map_err(kvm_err("create a vCPU"))?;
            let mut cpuid = supported.clone();
            arch::cpuid::adjust(&mut cpuid, index, count);
            fd.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
            arch::regs::setup_msrs(&fd)?;
            arch::regs::setup_fpu(&fd)?;
            arch::regs::setup_lapic(&fd)?;
            if index == 0 {
                arch::regs::setup_boot_vcpu(&fd, entry)?;
            }
            Ok(Vcpu {
                fd,
                index,
                routes: routes(),
                exit: exit.clone(),
                seccomp,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_file(name: &str, bytes: &[u8]) -> (std::path::PathBuf, File) {
        let dir = std::env::temp_dir().join(format!("vmm-builder-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        File::create(&path).unwrap().write_all(bytes).unwrap();
        let file = File::open(&path).unwrap();
        (path, file)
    }

    #[test]
    fn recognises_kernel_formats() {
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(
            kernel_format(&mut temp_file("bz", &bz).1),
            Some(KernelFormat::BzImage)
        );
        let elf = b"\x7fELF\x02\x01\x01";
        assert_eq!(
            kernel_format(&mut temp_file("elf", elf).1),
            Some(KernelFormat::Elf)
        );
        assert_eq!(kernel_format(&mut temp_file("txt", b"hello").1), None);
        assert_eq!(kernel_format(&mut temp_file("empty", b"").1), None);
    }

    #[test]
    fn missing_and_directory_files_are_named() {
        let e = open_file("kernel", Path::new("/nonexistent/bzImage")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot read kernel '/nonexistent/bzImage': No such file or directory (os error 2); check --kernel"
        );
        let e = open_file("initramfs", Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read initramfs '/'"), "{e}");
    }

    #[test]
    fn host_memory_limit() {
        assert!(check_host_memory(4096).is_ok());
        let e = check_host_memory(1 << 60).unwrap_err().to_string();
        assert!(e.contains("is more than this host's"), "{e}");
    }
}
