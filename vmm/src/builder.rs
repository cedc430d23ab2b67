//! Builds a VM from a [`VmConfig`], top to bottom: guest memory, the KVM VM and irqchip,
//! legacy devices, kernel and boot data, ACPI tables, vCPUs.

use crate::config::VmConfig;
use crate::console::GuestSerial;
use crate::images::{BootImages, Initrd};
use crate::vcpu::Vcpu;
use arch::boot::{self, BootData};
use arch::kernel::{Format, Image};
use arch::regs::Entry;
use arch::GuestMemoryMmap;
use devices::acpi_pm::AcpiPm;
use devices::debug_exit::DebugExit;
use devices::ged::{Ged, GedAml, GED_SIZE};
use devices::i8042::I8042;
use devices::serial::Serial;
use devices::{Bus, GuestExit};
use kvm_bindings::{
    kvm_irqchip, kvm_pic_state, kvm_pit_config, kvm_userspace_memory_region, CpuId,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::Elf;
use linux_loader::loader::KernelLoader;
use resources::layout::*;
use std::sync::{Arc, Mutex};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

/// Why a VM could not be built. Each message names the problem and the fix.
#[derive(Debug)]
pub enum Error {
    /// The kernel or initramfs is not usable.
    Images(crate::images::Error),
    /// The loader rejected the kernel after its header passed.
    Load {
        /// The kernel path.
        path: String,
        /// The loader's error.
        source: linux_loader::loader::Error,
    },
    /// Boot data did not fit.
    Boot(boot::Error),
    /// More RAM than the host has.
    HostMemory {
        /// Asked for.
        asked_mib: u64,
        /// Host total.
        host_mib: u64,
    },
    /// mmap of guest RAM failed.
    GuestMemory(crate::memory::Error),
    /// /dev/kvm cannot be opened.
    KvmOpen {
        /// The open error.
        source: kvm_ioctls::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// Too many vCPUs for this host's KVM.
    TooManyCpus {
        /// Asked for.
        asked: u8,
        /// KVM's limit.
        max: usize,
    },
    /// A KVM VM-level call failed.
    Kvm {
        /// What we were doing.
        what: &'static str,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
    /// vCPU register setup failed.
    Regs(arch::regs::Error),
    /// ACPI tables did not fit or could not be written.
    Acpi(arch::acpi::Error),
    /// An eventfd or similar OS resource failed.
    Os {
        /// What.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Device ranges collided (a bug, not user input).
    Bus(devices::bus::Error),
    /// A passed-through device could not be attached.
    Passthrough(crate::passthrough::Error),
    /// `phys-bits=` wider than KVM allows.
    PhysBits {
        /// Asked for.
        asked: u8,
        /// KVM's width.
        max: u8,
    },
}

impl diag::Explain for Error {
    fn advice(&self) -> diag::Advice {
        use diag::Advice;
        match self {
            Error::Images(e) => e.advice(),
            Error::Load { path, source } => Advice::new(
                format!("cannot load --kernel {path}: {source}"),
                "give an x86_64 Linux bzImage or ELF vmlinux",
            ),
            Error::Boot(e) => e.advice(),
            Error::HostMemory {
                asked_mib,
                host_mib,
            } => Advice::new(
                format!("--memory {asked_mib} MiB is more than this host's {host_mib} MiB of RAM"),
                "choose a smaller --memory",
            ),
            Error::GuestMemory(e) => e.advice(),
            Error::KvmOpen { source, hint } => {
                Advice::new(format!("cannot open /dev/kvm: {source}"), *hint)
            }
            Error::TooManyCpus { asked, max } => Advice::new(
                format!("--cpus {asked}: this host's KVM allows at most {max} vCPUs"),
                format!("use --cpus {max} or fewer"),
            ),
            Error::Kvm { what, source } => Advice::new(
                format!("KVM: cannot {what}: {source}"),
                "check that KVM works on this host (dmesg)",
            ),
            Error::Regs(e) => e.advice(),
            Error::Acpi(e) => e.advice(),
            Error::Os { what, source } => Advice::new(
                format!("cannot create {what}: {source}"),
                "check the process's limits (ulimit -n) and free memory",
            ),
            Error::Bus(e) => e.advice(),
            Error::Passthrough(e) => e.advice(),
            Error::PhysBits { asked, max } => Advice::new(
                format!(
                    "--memory ...,phys-bits={asked}: this host's KVM allows guests at most {max} \
                     physical address bits"
                ),
                format!("give phys-bits={max} or less, or leave it out"),
            ),
        }
    }
}
diag::explained!(Error);

diag::wrap!(Error:
    Images(crate::images::Error),
    Boot(boot::Error),
    GuestMemory(crate::memory::Error),
    Regs(arch::regs::Error),
    Acpi(arch::acpi::Error),
    Bus(devices::bus::Error),
    Passthrough(crate::passthrough::Error),
);

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
    /// The ACPI Generic Event Device (power button, PCI slot events).
    pub ged: Arc<Mutex<Ged>>,
    /// ACPI PCI hotplug, with `--api-socket`.
    pub hotplug: Option<crate::hotplug::Hotplug>,
    /// The `managed=on` devices moved to vfio-pci for the run.
    pub bindings: Arc<crate::managed::Bindings>,
    /// Guest output on its way out (for the main loop and teardown).
    pub output: Arc<Output>,
}

/// Guest output the VMM holds back: writes KVM queued (coalesced PIO) and what the UART keeps
/// until a line is complete.
pub struct Output {
    /// The UART.
    pub serial: GuestSerial,
    /// KVM's ring of queued writes, when the host has coalesced PIO.
    pub ring: Option<Arc<crate::coalesced::Ring>>,
    /// Port I/O bus (where queued writes go).
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
}

impl Output {
    /// Applies queued writes, then writes out what the UART held back; nothing when stdout
    /// would block: a reader that stopped reading must not stop the main loop or the
    /// teardown, where signals and the exit are handled (the vCPU threads write their lines
    /// themselves, as before).
    pub fn pass_on(&self) {
        if !crate::console::stdout_writable() {
            return;
        }
        if let Some(ring) = &self.ring {
            ring.drain(&self.pio, &self.mmio);
        }
        if let Ok(mut serial) = self.serial.lock() {
            serial.pass_on_output();
        }
    }
}

/// Opens and judges what the guest boots, and checks `--memory` against the host, before
/// anything is set up (and before `managed=on` devices move).
pub fn prepare(cfg: &VmConfig) -> Result<BootImages, Error> {
    let images = crate::images::open(cfg)?;
    check_host_memory(cfg.memory.size)?;
    Ok(images)
}

/// Builds the VM described by `cfg`, booting `images` (from [`prepare`]).
pub fn build(
    cfg: &VmConfig,
    images: BootImages,
    bindings: Arc<crate::managed::Bindings>,
) -> Result<Vm, Error> {
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
    let ged = attach_ged(&vm, &mmio)?;
    let hotplug = match cfg.api_socket {
        Some(_) => Some(attach_hotplug(&mmio)?),
        None => None,
    };
    let setup = crate::passthrough::Setup {
        vm: &vm,
        memory: &memory,
        mem_size: cfg.memory.size,
        phys_bits,
        kvm_phys_bits: arch::cpuid::phys_bits(&cpuid.supported),
        seccomp: cfg.seccomp,
        hotplug: cfg.api_socket.is_some(),
        pio: &pio,
        mmio: &mmio,
    };
    let passthrough = crate::passthrough::attach(&setup, &cfg.devices)?;

    log::debug!("devices attached");
    let entry = load_guest(&memory, cfg, images)?;
    log::debug!("kernel and initramfs loaded");
    write_acpi_tables(&memory, cfg, &passthrough.windows)?;
    arch::regs::write_boot_tables(&memory)?;

    let exits = Arc::new(crate::stats::ExitCounts::default());
    let routes = || crate::vcpu::Routes {
        pio: pio.clone(),
        mmio: mmio.clone(),
        exits: exits.clone(),
        ring: None,
    };
    let mut vcpus = create_vcpus(&cpuid, &vm, cfg.cpus, entry, routes, &exit, cfg.seccomp)?;
    let ring = batch_console_writes(&kvm, &vm, &mut vcpus, &serial);
    log::debug!("{} vCPUs ready", vcpus.len());
    let output = Arc::new(Output {
        serial: serial.clone(),
        ring,
        pio: pio.clone(),
        mmio: mmio.clone(),
    });
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
        ged,
        hotplug,
        bindings,
        output,
    })
}

/// The ACPI PCI hotplug registers (`--api-socket` only: devices come and go through it).
fn attach_hotplug(mmio: &Bus) -> Result<crate::hotplug::Hotplug, Error> {
    let eject = EventFd::new(libc::EFD_NONBLOCK).map_err(os_err("hotplug eventfd"))?;
    let signal = eject.try_clone().map_err(os_err("hotplug eventfd"))?;
    let regs = Arc::new(Mutex::new(pci::hotplug::HotplugRegs::new(signal)));
    mmio.insert_named(
        "pci-hotplug",
        regs.clone(),
        PCI_HOTPLUG_START,
        pci::hotplug::HOTPLUG_SIZE,
    )?;
    Ok(crate::hotplug::Hotplug::new(regs, eject))
}

/// The ACPI Generic Event Device: the power button (and PCI slot events), its interrupt
/// wired to a KVM irqfd.
fn attach_ged(vm: &VmFd, mmio: &Bus) -> Result<Arc<Mutex<Ged>>, Error> {
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(os_err("GED eventfd"))?;
    vm.register_irqfd(&irq, GED_GSI)
        .map_err(kvm_err("wire the GED interrupt"))?;
    let ged = Arc::new(Mutex::new(Ged::new(irq)));
    mmio.insert_named("ged", ged.clone(), GED_START, GED_SIZE)?;
    Ok(ged)
}

/// Lets the UART's transmit register be coalesced PIO when the host's KVM has it: maps the
/// ring KVM queues the writes in and gives it to every vCPU. Without it (or when mapping
/// fails) each write simply exits.
fn batch_console_writes(
    kvm: &Kvm,
    vm: &Arc<VmFd>,
    vcpus: &mut [Vcpu],
    serial: &GuestSerial,
) -> Option<Arc<crate::coalesced::Ring>> {
    if !kvm.check_extension(Cap::CoalescedPio) {
        return None;
    }
    let ring = match crate::coalesced::Ring::map(&vcpus.first()?.fd) {
        Ok(ring) => Arc::new(ring),
        Err(e) => {
            log::debug!("no coalesced PIO ring: {e}");
            return None;
        }
    };
    for vcpu in vcpus.iter_mut() {
        vcpu.routes.ring = Some(ring.clone());
    }
    let batch = crate::coalesced::KvmThrBatch::new(vm.clone(), COM1_PORT);
    if let Ok(mut serial) = serial.lock() {
        serial.set_thr_batch(Box::new(batch));
    }
    Some(ring)
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
    let pci_hotplug = cfg.api_socket.is_some();
    tables.add_dsdt_aml(&GedAml {
        base: GED_START,
        gsi: GED_GSI,
        pci_hotplug,
    });
    if pci_hotplug {
        tables.add_dsdt_aml(&pci::hotplug::HotplugAml {
            base: PCI_HOTPLUG_START,
        });
    }
    tables.add_table(&pci::mcfg(OEM_ID, OEM_REVISION))?;
    tables.write_to_guest(memory)?;
    Ok(())
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
    mask_legacy_pics(vm)?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("create the PIT"))
}

/// Leaves the two 8259 PICs as firmware does (vectors from 0x08 and 0x70, every line
/// masked). The guest never uses them (hardware-reduced ACPI: Linux routes everything through
/// the IOAPIC and leaves the PICs alone), but KVM's PICs start unmasked with vectors from 0
/// while the boot vCPU's LINT0 takes ExtINT until the guest sets up its local APIC: a legacy
/// GSI raised in those first moments (the GED's, for a device hot-added while the guest
/// boots) arrived as exception 5 (#BR) and killed the guest.
fn mask_legacy_pics(vm: &VmFd) -> Result<(), Error> {
    for (chip_id, vectors) in [
        (KVM_IRQCHIP_PIC_MASTER, 0x08),
        (KVM_IRQCHIP_PIC_SLAVE, 0x70),
    ] {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        vm.get_irqchip(&mut chip)
            .map_err(kvm_err("read the PIC state"))?;
        // SAFETY: for a PIC `chip_id` the kernel fills and reads the union's `pic` member, a
        // plain struct of bytes.
        firmware_pic(unsafe { &mut chip.chip.pic }, vectors);
        vm.set_irqchip(&chip).map_err(kvm_err("mask the PIC"))?;
    }
    Ok(())
}

/// A PIC as firmware leaves it: `vectors` its first vector, every line masked.
fn firmware_pic(pic: &mut kvm_pic_state, vectors: u8) {
    pic.irq_base = vectors;
    pic.imr = 0xff;
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
    pio.insert_named(
        "com1",
        serial.clone(),
        u64::from(COM1_PORT),
        u64::from(COM1_PORT_COUNT),
    )?;
    pio.insert_named(
        "i8042",
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
        u64::from(I8042_PORT),
        u64::from(I8042_PORT_COUNT),
    )?;
    pio.insert_named(
        "acpi-pm",
        Arc::new(Mutex::new(AcpiPm::new(exit.clone()))),
        u64::from(ACPI_PM_PORT),
        u64::from(ACPI_PM_PORT_COUNT),
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

/// Loads kernel, command line and initramfs, writes the boot structures, and returns how
/// the boot vCPU enters the kernel.
fn load_guest(
    memory: &GuestMemoryMmap,
    cfg: &VmConfig,
    images: BootImages,
) -> Result<Entry, Error> {
    let BootImages {
        mut kernel,
        image,
        initrd,
    } = images;
    let load_err = |source| Error::Load {
        path: diag::path(&cfg.kernel),
        source,
    };
    let himem = Some(GuestAddress(HIMEM_START));
    let (entry, header) = match image.format {
        Format::BzImage => {
            let r = BzImage::load(memory, None, &mut kernel, himem).map_err(load_err)?;
            let rip = Image::bzimage_entry(r.kernel_load.raw_value());
            let entry = Entry::Long64 {
                rip,
                boot_params: ZERO_PAGE_START,
            };
            (entry, r.setup_header)
        }
        Format::ElfPvh { entry: rip } => {
            Elf::load(memory, None, &mut kernel, himem).map_err(load_err)?;
            let entry = Entry::Pvh32 {
                rip,
                start_info: PVH_INFO_START,
            };
            (entry, None)
        }
        Format::Elf64 { entry: rip } => {
            Elf::load(memory, None, &mut kernel, himem).map_err(load_err)?;
            let entry = Entry::Long64 {
                rip,
                boot_params: ZERO_PAGE_START,
            };
            (entry, None)
        }
    };
    // Checked against the kernel's limit by images::open; the kernel reads it up to its NUL.
    let mut cmdline = cfg.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    memory
        .write_slice(&cmdline, GuestAddress(CMDLINE_START))
        .map_err(boot::Error::from)?;
    let initrd = match initrd {
        Some(i) => Some(load_initrd(memory, cfg, i)?),
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

/// Reads the initramfs to the place [`crate::images`] chose; returns (address, size).
fn load_initrd(
    memory: &GuestMemoryMmap,
    cfg: &VmConfig,
    mut initrd: Initrd,
) -> Result<(u64, u64), Error> {
    memory
        .read_exact_volatile_from(
            GuestAddress(initrd.addr),
            &mut initrd.file,
            initrd.size as usize,
        )
        .map_err(|e| crate::images::Error::Read {
            option: "--initramfs",
            path: cfg.initramfs.clone().unwrap_or_default(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok((initrd.addr, initrd.size))
}

/// KVM's supported CPUID, and the guest's: with `phys-bits=` narrowed to it; and what KVM
/// emulates beyond its supported CPUID.
struct GuestCpuid {
    supported: CpuId,
    guest: CpuId,
    host: arch::cpuid::HostFeatures,
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
    let host = arch::cpuid::HostFeatures {
        tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
    };
    Ok((
        GuestCpuid {
            supported,
            guest,
            host,
        },
        bits,
    ))
}

fn create_vcpus(
    cpuid: &GuestCpuid,
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
            let mut vcpu_cpuid = cpuid.guest.clone();
            arch::cpuid::adjust(&mut vcpu_cpuid, index, count, cpuid.host);
            fd.set_cpuid2(&vcpu_cpuid).map_err(kvm_err("set CPUID"))?;
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

    #[test]
    fn pics_are_left_masked_as_firmware_leaves_them() {
        let mut pic = kvm_pic_state::default();
        firmware_pic(&mut pic, 0x70);
        assert_eq!((pic.irq_base, pic.imr), (0x70, 0xff));
        assert_eq!(pic.init_state, 0, "the rest as KVM had it");
    }

    #[test]
    fn host_memory_limit() {
        assert!(check_host_memory(4096).is_ok());
        let e = check_host_memory(1 << 60).unwrap_err().to_string();
        assert!(e.contains("is more than this host's"), "{e}");
    }
}
