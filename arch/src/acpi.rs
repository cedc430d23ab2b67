//! ACPI tables for the guest: the RSDP, the XSDT, a hardware-reduced FADT, the MADT and the
//! DSDT, written into guest memory at [`ACPI_START`] (where the kernel's scan of
//! 0xe0000-0xfffff finds the RSDP) and kept within [`ACPI_SIZE`] bytes.
//!
//! The platform described is hardware-reduced ACPI (no PM1 blocks, no SCI, no FACS): the guest
//! powers off by writing `SLP_TYP << 2 | SLP_EN` to the sleep control register at
//! [`ACPI_PM_PORT`] and resets by writing [`ACPI_RESET_VALUE`] to the reset register at the same
//! port. The DSDT declares `_S5_` and COM1; more AML (a PCI host bridge) and more tables (MCFG)
//! are added through [`AcpiTables::add_dsdt_aml`] and [`AcpiTables::add_table`].

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use resources::layout::{
    ACPI_PM_PORT, ACPI_RESET_VALUE, ACPI_S5_SLP_TYP, ACPI_SIZE, ACPI_SLEEP_STATUS_PORT, ACPI_START,
    APIC_START, COM1_IRQ, COM1_PORT, IOAPIC_START,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub use acpi_tables::{aml, Aml};

/// OEM ID in every table header and the RSDP.
pub const OEM_ID: [u8; 6] = *b"VMMRS ";
/// OEM revision in every table header.
pub const OEM_REVISION: u32 = 1;
/// The FADT's hypervisor vendor identity.
pub const HYPERVISOR_VENDOR_ID: [u8; 8] = *b"VMMRSKVM";
/// Most vCPUs we describe: APIC IDs are the CPU indices, the IOAPIC takes the next ID, and 0xff
/// is the xAPIC broadcast ID.
pub const MAX_CPUS: u8 = 254;

/// Every table starts on this boundary (the RSDP needs 16 for the kernel's scan).
const TABLE_ALIGN: u64 = 16;
/// Size of the common table header.
const HEADER_LEN: usize = 36;

// FADT: minor version (major is the header revision, 6); 6.5's layout is 276 bytes like 6.0's.
const FADT_MINOR_VERSION: u8 = 5;
/// Length of a revision 6 FADT.
const FADT_LEN: usize = 276;
// IAPC_BOOT_ARCH bits. Not set: LEGACY_DEVICES (0); 8042 (1), so the kernel's i8042 driver
// does not probe our reset-only i8042 (its 0xfe reset fallback still works); and
// MSI_NOT_SUPPORTED (3), since passed-through devices use MSI.
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
/// The guest must not enable PCIe ASPM.
const IAPC_BOOT_ARCH_PCIE_ASPM_CONTROLS: u16 = 1 << 4;
/// No CMOS RTC at ports 0x70/0x71: the kernel then registers no rtc_cmos device.
const IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
const IAPC_BOOT_ARCH: u16 = IAPC_BOOT_ARCH_VGA_NOT_PRESENT
    | IAPC_BOOT_ARCH_PCIE_ASPM_CONTROLS
    | IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT;

// MADT header fields and structures not covered by `acpi_tables::madt`.
const MADT_REVISION: u8 = 5;
const MADT_LAPIC_ADDR_OFFSET: usize = 36;
const MADT_FLAGS_OFFSET: usize = 40;
const MADT_HEADER_LEN: u32 = 44;
/// MADT flag: the system also has dual 8259 PICs.
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_TYPE_LOCAL_APIC_NMI: u8 = 4;
/// MPS INTI flags: polarity and trigger conform to the bus.
const MPS_INTI_CONFORMS: u16 = 0;
/// Processor UID meaning "all processors" in a Local APIC NMI structure.
const ALL_PROCESSORS: u8 = 0xff;
/// Local APIC input the NMI is wired to.
const NMI_LINT: u8 = 1;

/// DSDT revision: 2 and above means 64-bit AML integers.
const DSDT_REVISION: u8 = 6;

/// Errors building or writing the ACPI tables.
#[derive(Debug)]
pub enum Error {
    /// The vCPU count cannot be described.
    CpuCount(u8),
    /// A table handed to [`AcpiTables::add_table`] is not a well-formed table.
    BadTable {
        /// The table's signature (or its first bytes).
        signature: String,
        /// The length in its header.
        header_len: usize,
        /// The bytes it actually serialized to.
        actual_len: usize,
    },
    /// The tables do not fit in the reserved ACPI area.
    TooLarge {
        /// Bytes needed from `ACPI_START`.
        needed: u64,
        /// `ACPI_SIZE`.
        available: u64,
    },
    /// Guest memory does not cover the ACPI area.
    GuestMemory(vm_memory::GuestMemoryError),
}

impl diag::Explain for Error {
    fn advice(&self) -> diag::Advice {
        use diag::Advice;
        match self {
            Error::CpuCount(n) => Advice::new(
                format!("cannot describe {n} vCPUs"),
                format!("use --cpus from 1 to {MAX_CPUS}"),
            ),
            Error::BadTable {
                signature,
                header_len,
                actual_len,
            } => Advice::bug(format!(
                "ACPI table {signature:?} is malformed: header says {header_len} bytes, got \
                 {actual_len}"
            )),
            Error::TooLarge { needed, available } => Advice::bug(format!(
                "ACPI tables need {needed:#x} bytes but only {available:#x} are reserved"
            )),
            Error::GuestMemory(e) => {
                Advice::bug(format!("cannot write ACPI tables to guest memory: {e}"))
            }
        }
    }
}
diag::explained!(Error);

impl From<vm_memory::GuestMemoryError> for Error {
    fn from(e: vm_memory::GuestMemoryError) -> Self {
        Error::GuestMemory(e)
    }
}

/// What the platform looks like to the tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs; vCPU `i` has APIC ID and ACPI processor UID `i`.
    pub num_cpus: u8,
}

/// Writes RSDP at `ACPI_START` and XSDT, FADT, MADT, DSDT after it (all within `ACPI_SIZE`);
/// returns the RSDP address.
pub fn create_acpi_tables(mem: &GuestMemoryMmap, cfg: &AcpiConfig) -> Result<GuestAddress, Error> {
    AcpiTables::new(cfg)?.write_to_guest(mem)
}

/// The guest's ACPI tables before they are written: the fixed platform plus whatever was added.
pub struct AcpiTables {
    num_cpus: u8,
    /// AML appended to the DSDT body after `_S5_` and COM1.
    extra_dsdt_aml: Vec<u8>,
    /// Complete tables listed in the XSDT after FACP and APIC.
    extra_tables: Vec<Vec<u8>>,
}

impl AcpiTables {
    /// The tables for `cfg`: FADT, MADT and a DSDT with `_S5_` and COM1.
    pub fn new(cfg: &AcpiConfig) -> Result<Self, Error> {
        if cfg.num_cpus == 0 || cfg.num_cpus > MAX_CPUS {
            return Err(Error::CpuCount(cfg.num_cpus));
        }
        Ok(Self {
            num_cpus: cfg.num_cpus,
            extra_dsdt_aml: Vec::new(),
            extra_tables: Vec::new(),
        })
    }

    /// Appends `aml` to the DSDT, e.g. `Scope(\_SB_) { Device(PCI0) { ... } }`.
    pub fn add_dsdt_aml(&mut self, aml: &dyn Aml) {
        aml.to_aml_bytes(&mut self.extra_dsdt_aml);
    }

    /// Adds a complete table (e.g. `acpi_tables::mcfg::MCFG`) and lists it in the XSDT. Its
    /// checksum is recomputed; its header length must match what it serializes to.
    pub fn add_table(&mut self, table: &dyn Aml) -> Result<(), Error> {
        let mut bytes = Vec::new();
        table.to_aml_bytes(&mut bytes);
        let header_len = bytes
            .get(4..8)
            .map(|l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize)
            .unwrap_or(0);
        if bytes.len() < HEADER_LEN || header_len != bytes.len() {
            return Err(Error::BadTable {
                signature: String::from_utf8_lossy(&bytes[..bytes.len().min(4)]).into_owned(),
                header_len,
                actual_len: bytes.len(),
            });
        }
        set_checksum(&mut bytes, 9);
        self.extra_tables.push(bytes);
        Ok(())
    }

    /// Lays the tables out from `ACPI_START` and writes them; returns the RSDP address.
    pub fn write_to_guest(&self, mem: &GuestMemoryMmap) -> Result<GuestAddress, Error> {
        let madt = self.madt();
        let dsdt = self.dsdt();
        let num_xsdt_entries = 2 + self.extra_tables.len();

        // Layout: RSDP, XSDT, FADT, MADT, DSDT, extra tables.
        let rsdp_addr = ACPI_START;
        let xsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
        let xsdt_len = (HEADER_LEN + 8 * num_xsdt_entries) as u64;
        let fadt_addr = align(xsdt_addr + xsdt_len);
        let madt_addr = align(fadt_addr + FADT_LEN as u64);
        let dsdt_addr = align(madt_addr + madt.len() as u64);
        let mut next = align(dsdt_addr + dsdt.len() as u64);
        let mut extra_addrs = Vec::with_capacity(self.extra_tables.len());
        for table in &self.extra_tables {
            extra_addrs.push(next);
            next = align(next + table.len() as u64);
        }
        let end = extra_addrs
            .last()
            .zip(self.extra_tables.last())
            .map_or(dsdt_addr + dsdt.len() as u64, |(a, t)| a + t.len() as u64);
        if end - ACPI_START > ACPI_SIZE {
            return Err(Error::TooLarge {
                needed: end - ACPI_START,
                available: ACPI_SIZE,
            });
        }

        let fadt = fadt(dsdt_addr);
        let mut xsdt = XSDT::new(OEM_ID, *b"VMMXSDT ", OEM_REVISION);
        xsdt.add_entry(fadt_addr);
        xsdt.add_entry(madt_addr);
        for addr in &extra_addrs {
            xsdt.add_entry(*addr);
        }
        let xsdt = to_bytes(&xsdt);
        debug_assert_eq!(xsdt.len() as u64, xsdt_len);
        let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));

        mem.write_slice(&rsdp, GuestAddress(rsdp_addr))?;
        mem.write_slice(&xsdt, GuestAddress(xsdt_addr))?;
        mem.write_slice(&fadt, GuestAddress(fadt_addr))?;
        mem.write_slice(madt.as_slice(), GuestAddress(madt_addr))?;
        mem.write_slice(dsdt.as_slice(), GuestAddress(dsdt_addr))?;
        for (table, addr) in self.extra_tables.iter().zip(&extra_addrs) {
            mem.write_slice(table, GuestAddress(*addr))?;
        }
        Ok(GuestAddress(rsdp_addr))
    }

    /// MADT: local APIC address, one Processor Local APIC per vCPU, the IOAPIC and the LINT1
    /// NMI. No IRQ0 -> GSI 2 override: KVM's default routing sends the PIT (GSI 0) to IOAPIC
    /// pin 0, and hardware-reduced ACPI guests do not use the PIT anyway.
    fn madt(&self) -> Sdt {
        let mut madt = Sdt::new(
            *b"APIC",
            MADT_HEADER_LEN,
            MADT_REVISION,
            OEM_ID,
            *b"VMMAPIC ",
            OEM_REVISION,
        );
        madt.write_u32(MADT_LAPIC_ADDR_OFFSET, APIC_START as u32);
        madt.write_u32(MADT_FLAGS_OFFSET, MADT_PCAT_COMPAT);
        for cpu in 0..self.num_cpus {
            let lapic = ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled);
            madt.append_slice(&to_bytes(&lapic));
        }
        let ioapic = IoApic::new(self.num_cpus, IOAPIC_START as u32, 0);
        madt.append_slice(&to_bytes(&ioapic));
        madt.append_slice(&local_apic_nmi(ALL_PROCESSORS, MPS_INTI_CONFORMS, NMI_LINT));
        // `append_slice` leaves the checksum covering only the old bytes.
        madt.update_checksum();
        madt
    }

    /// DSDT: `_S5_`, COM1 under `\_SB_`, then the added AML.
    fn dsdt(&self) -> Sdt {
        let mut dsdt = Sdt::new(
            *b"DSDT",
            HEADER_LEN as u32,
            DSDT_REVISION,
            OEM_ID,
            *b"VMMDSDT ",
            OEM_REVISION,
        );
        dsdt.append_slice(&s5_aml());
        dsdt.append_slice(&com1_aml());
        dsdt.append_slice(&self.extra_dsdt_aml);
        dsdt.update_checksum();
        dsdt
    }
}

/// FADT for hardware-reduced ACPI with the sleep and reset registers on the ACPI PM ports.
fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, *b"VMMFACP ", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // No fixed-feature power or sleep button.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.fadt_minor_version = FADT_MINOR_VERSION;
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.reset_reg = io_port_byte(ACPI_PM_PORT);
    fadt.reset_value = ACPI_RESET_VALUE;
    fadt.sleep_control_reg = io_port_byte(ACPI_PM_PORT);
    fadt.sleep_status_reg = io_port_byte(ACPI_SLEEP_STATUS_PORT);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR_ID).into();
    let bytes = to_bytes(&fadt.finalize());
    debug_assert_eq!(bytes.len(), FADT_LEN);
    bytes
}

/// A one-byte register in I/O space.
fn io_port_byte(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// MADT Local APIC NMI (type 4, 6 bytes): NMI on `lint` of processor `uid`.
fn local_apic_nmi(uid: u8, flags: u16, lint: u8) -> [u8; 6] {
    let mut s = [0u8; 6];
    s[0] = MADT_TYPE_LOCAL_APIC_NMI;
    s[1] = s.len() as u8;
    s[2] = uid;
    s[3..5].copy_from_slice(&flags.to_le_bytes());
    s[5] = lint;
    s
}

/// `Name (_S5_, Package () { SLP_TYPa, SLP_TYPb, 0, 0 })`; only SLP_TYPa is used without a
/// PM1b block.
fn s5_aml() -> Vec<u8> {
    let slp_typ_b = 0u8;
    let reserved = 0u8;
    let package = aml::Package::new(vec![&ACPI_S5_SLP_TYP, &slp_typ_b, &reserved, &reserved]);
    to_bytes(&aml::Name::new("_S5_".into(), &package))
}

/// `Scope (\_SB_) { Device (COM1) { _HID PNP0501, _UID 0, _CRS { IO 0x3f8/8, IRQ 4 } } }`.
fn com1_aml() -> Vec<u8> {
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let uid = aml::Name::new("_UID".into(), &0u8);
    let io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    // Edge-triggered, active high, exclusive, consumed by the device.
    let irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&io, &irq]));
    let com1 = aml::Device::new("COM1".into(), vec![&hid, &uid, &crs]);
    to_bytes(&aml::Scope::new("\\_SB_".into(), vec![&com1]))
}

fn to_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

/// Sets `bytes[at]` so that all of `bytes` sums to 0 mod 256.
fn set_checksum(bytes: &mut [u8], at: usize) {
    bytes[at] = 0;
    let sum = bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    bytes[at] = sum.wrapping_neg();
}

fn align(addr: u64) -> u64 {
    addr.next_multiple_of(TABLE_ALIGN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use acpi_tables::mcfg::MCFG;
    use resources::layout::{PCI_ECAM_SIZE, PCI_ECAM_START};

    // FADT field offsets (ACPI 6.5, table 5.9).
    const FADT_IAPC_BOOT_ARCH: usize = 109;
    const FADT_FLAGS: usize = 112;
    const FADT_RESET_REG: usize = 116;
    const FADT_RESET_VALUE: usize = 128;
    const FADT_MINOR: usize = 131;
    const FADT_X_FIRMWARE_CTRL: usize = 132;
    const FADT_X_DSDT: usize = 140;
    const FADT_SLEEP_CONTROL_REG: usize = 244;
    const FADT_SLEEP_STATUS_REG: usize = 256;
    const FADT_HYPERVISOR_ID: usize = 268;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |acc, x| acc.wrapping_add(*x))
    }

    /// Reads the table at `addr`, checking its length stays in the ACPI area and its checksum.
    fn table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let mut header = [0u8; HEADER_LEN];
        mem.read_slice(&mut header, GuestAddress(addr)).unwrap();
        let len = u32_at(&header, 4) as usize;
        assert!(len >= HEADER_LEN);
        assert!(addr >= ACPI_START && addr + len as u64 <= ACPI_START + ACPI_SIZE);
        let mut bytes = vec![0u8; len];
        mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
        assert_eq!(sum(&bytes), 0, "checksum of {:?}", &bytes[..4]);
        assert_eq!(&bytes[10..16], &OEM_ID);
        bytes
    }

    /// Everything reachable from the RSDP, parsed back.
    struct Parsed {
        /// (address, bytes) of each XSDT entry, in order.
        xsdt_tables: Vec<(u64, Vec<u8>)>,
        dsdt: (u64, Vec<u8>),
    }

    impl Parsed {
        fn find(&self, sig: &[u8; 4]) -> &[u8] {
            &self
                .xsdt_tables
                .iter()
                .find(|(_, t)| &t[..4] == sig)
                .unwrap_or_else(|| panic!("no {:?} table", sig))
                .1
        }

        /// One past the last byte of any table.
        fn end(&self) -> u64 {
            self.xsdt_tables
                .iter()
                .chain(std::iter::once(&self.dsdt))
                .map(|(a, t)| a + t.len() as u64)
                .max()
                .unwrap()
        }
    }

    fn parse(mem: &GuestMemoryMmap, rsdp_addr: GuestAddress) -> Parsed {
        assert_eq!(rsdp_addr, GuestAddress(ACPI_START));
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, rsdp_addr).unwrap();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum");
        assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
        assert_eq!(&rsdp[9..15], &OEM_ID);
        assert_eq!(rsdp[15], 2, "revision");
        assert_eq!(u32_at(&rsdp, 16), 0, "RSDT address");
        assert_eq!(u32_at(&rsdp, 20), 36, "length");

        let xsdt_addr = u64_at(&rsdp, 24);
        let xsdt = table(mem, xsdt_addr);
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!((xsdt.len() - HEADER_LEN) % 8, 0);
        let xsdt_tables: Vec<_> = xsdt[HEADER_LEN..]
            .chunks(8)
            .map(|e| {
                let addr = u64::from_le_bytes(e.try_into().unwrap());
                (addr, table(mem, addr))
            })
            .collect();
        let fadt = &xsdt_tables
            .iter()
            .find(|(_, t)| &t[..4] == b"FACP")
            .unwrap()
            .1;
        let dsdt_addr = u64_at(fadt, FADT_X_DSDT);
        let dsdt = table(mem, dsdt_addr);
        assert_eq!(&dsdt[..4], b"DSDT");
        Parsed {
            xsdt_tables,
            dsdt: (dsdt_addr, dsdt),
        }
    }

    fn build(num_cpus: u8) -> (GuestMemoryMmap, Parsed) {
        let mem = mem();
        let rsdp = create_acpi_tables(&mem, &AcpiConfig { num_cpus }).unwrap();
        let parsed = parse(&mem, rsdp);
        (mem, parsed)
    }

    /// The MADT's interrupt controller structures as (type, bytes).
    fn madt_structures(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut off = MADT_HEADER_LEN as usize;
        while off < madt.len() {
            let len = madt[off + 1] as usize;
            assert!(len >= 2 && off + len <= madt.len());
            out.push((madt[off], madt[off + 1..off + len].to_vec()));
            off += len;
        }
        out
    }

    #[test]
    fn xsdt_lists_fadt_and_madt_without_overlap() {
        let (_mem, p) = build(2);
        let sigs: Vec<_> = p.xsdt_tables.iter().map(|(_, t)| &t[..4]).collect();
        assert_eq!(sigs, [b"FACP", b"APIC"]);
        let mut spans: Vec<_> = p
            .xsdt_tables
            .iter()
            .chain(std::iter::once(&p.dsdt))
            .map(|(a, t)| (*a, a + t.len() as u64))
            .collect();
        spans.sort();
        assert!(spans[0].0 >= ACPI_START + 36, "tables after the RSDP");
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{spans:x?} overlap");
        }
    }

    #[test]
    fn fadt_is_hardware_reduced_with_sleep_and_reset_registers() {
        let (_mem, p) = build(1);
        let fadt = p.find(b"FACP");
        assert_eq!(fadt.len(), 276);
        assert_eq!(fadt[8], 6, "major version");
        assert_eq!(fadt[FADT_MINOR], FADT_MINOR_VERSION);
        let flags = u32_at(fadt, FADT_FLAGS);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        let boot_arch = u16_at(fadt, FADT_IAPC_BOOT_ARCH);
        assert_ne!(boot_arch & (1 << 2), 0, "VGA not present");
        assert_eq!(boot_arch & (1 << 3), 0, "MSI must stay allowed");
        assert_eq!(boot_arch & (1 << 1), 0, "no i8042 for the kernel to probe");
        assert_ne!(boot_arch & (1 << 5), 0, "no CMOS RTC");
        // No FACS on hardware-reduced platforms; DSDT only through X_DSDT.
        assert_eq!(u32_at(fadt, 36), 0);
        assert_eq!(u64_at(fadt, FADT_X_FIRMWARE_CTRL), 0);
        assert_eq!(u32_at(fadt, 40), 0, "32-bit DSDT");
        assert_eq!(u64_at(fadt, FADT_X_DSDT), p.dsdt.0);

        let io_byte = |port: u16| {
            let mut gas = vec![1u8, 8, 0, 1];
            gas.extend_from_slice(&u64::from(port).to_le_bytes());
            gas
        };
        let gas_at = |off: usize| fadt[off..off + 12].to_vec();
        assert_eq!(gas_at(FADT_RESET_REG), io_byte(ACPI_PM_PORT));
        assert_eq!(fadt[FADT_RESET_VALUE], ACPI_RESET_VALUE);
        assert_eq!(gas_at(FADT_SLEEP_CONTROL_REG), io_byte(ACPI_PM_PORT));
        assert_eq!(
            gas_at(FADT_SLEEP_STATUS_REG),
            io_byte(ACPI_SLEEP_STATUS_PORT)
        );
        assert_eq!(&fadt[FADT_HYPERVISOR_ID..], &HYPERVISOR_VENDOR_ID);
    }

    #[test]
    fn madt_describes_cpus_ioapic_and_nmi() {
        for num_cpus in [1u8, 4, MAX_CPUS] {
            let (_mem, p) = build(num_cpus);
            let madt = p.find(b"APIC");
            assert_eq!(u32_at(madt, 36), APIC_START as u32);
            assert_eq!(u32_at(madt, 40), MADT_PCAT_COMPAT);
            let structs = madt_structures(madt);

            let lapics: Vec<_> = structs.iter().filter(|(t, _)| *t == 0).collect();
            assert_eq!(lapics.len(), num_cpus as usize);
            for (i, (_, s)) in lapics.iter().enumerate() {
                // [len, uid, apic id, flags u32]
                assert_eq!(s[0], 8);
                assert_eq!((s[1], s[2]), (i as u8, i as u8));
                assert_eq!(u32_at(s, 3), 1, "enabled");
            }

            let ioapics: Vec<_> = structs.iter().filter(|(t, _)| *t == 1).collect();
            assert_eq!(ioapics.len(), 1);
            let io = &ioapics[0].1;
            assert_eq!(io[0], 12);
            assert_eq!(io[1], num_cpus, "IOAPIC id after the APIC ids");
            assert_eq!(u32_at(io, 3), IOAPIC_START as u32);
            assert_eq!(u32_at(io, 7), 0, "GSI base");

            assert!(
                structs.iter().all(|(t, _)| *t != 2),
                "no interrupt source override: KVM routes GSI 0 to pin 0"
            );

            let nmis: Vec<_> = structs.iter().filter(|(t, _)| *t == 4).collect();
            assert_eq!(nmis.len(), 1);
            assert_eq!(nmis[0].1, [6, 0xff, 0, 0, 1], "all CPUs, LINT1");
            assert_eq!(structs.len(), num_cpus as usize + 2);
        }
    }

    #[test]
    fn dsdt_has_s5_and_com1() {
        let (_mem, p) = build(1);
        let dsdt = &p.dsdt.1;
        assert_eq!(dsdt[8], DSDT_REVISION);
        // NameOp "_S5_" PackageOp PkgLength(1 byte) NumElements=4 BytePrefix SLP_TYP Zero...
        let s5 = [
            0x08,
            b'_',
            b'S',
            b'5',
            b'_',
            0x12,
            0x07,
            4,
            0x0a,
            ACPI_S5_SLP_TYP,
        ];
        assert!(find(dsdt, &s5).is_some(), "_S5_ package");

        // EISAID("PNP0501") as a DWordConst.
        let pnp0501 = [0x0c, 0x41, 0xd0, 0x05, 0x01];
        assert!(find(dsdt, &pnp0501).is_some(), "COM1 _HID");
        assert!(find(dsdt, b"COM1").is_some());
        // IO descriptor: decode16, min, max, alignment 1, length 8.
        let [lo, hi] = COM1_PORT.to_le_bytes();
        assert!(
            find(dsdt, &[0x47, 1, lo, hi, lo, hi, 1, 8]).is_some(),
            "COM1 I/O"
        );
        // Extended interrupt descriptor: consumer, edge, active high, exclusive; IRQ 4.
        let mut irq = vec![0x89, 6, 0, 0b0011, 1];
        irq.extend_from_slice(&COM1_IRQ.to_le_bytes());
        assert!(find(dsdt, &irq).is_some(), "COM1 IRQ");
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn max_cpus_fit_in_the_acpi_area() {
        let (_mem, p) = build(MAX_CPUS);
        assert!(p.end() <= ACPI_START + ACPI_SIZE);
    }

    #[test]
    fn rejects_cpu_counts_that_cannot_be_described() {
        let mem = mem();
        for num_cpus in [0, MAX_CPUS + 1] {
            let err = create_acpi_tables(&mem, &AcpiConfig { num_cpus }).unwrap_err();
            assert!(matches!(err, Error::CpuCount(n) if n == num_cpus), "{err}");
        }
    }

    #[test]
    fn added_aml_and_tables_are_reachable() {
        let mem = mem();
        let mut tables = AcpiTables::new(&AcpiConfig { num_cpus: 2 }).unwrap();
        let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08"));
        let pci0 = aml::Device::new("PCI0".into(), vec![&hid]);
        tables.add_dsdt_aml(&aml::Scope::new("\\_SB_".into(), vec![&pci0]));
        let mut mcfg = MCFG::new(OEM_ID, *b"VMMMCFG ", OEM_REVISION);
        let last_bus = ((PCI_ECAM_SIZE >> 20) - 1) as u8;
        mcfg.add_ecam(PCI_ECAM_START, 0, 0, last_bus);
        tables.add_table(&mcfg).unwrap();
        let p = parse(&mem, tables.write_to_guest(&mem).unwrap());

        let sigs: Vec<_> = p.xsdt_tables.iter().map(|(_, t)| &t[..4]).collect();
        assert_eq!(sigs, [b"FACP", b"APIC", b"MCFG"]);
        let mcfg = p.find(b"MCFG");
        assert_eq!(u64_at(mcfg, 44), PCI_ECAM_START);
        assert!(find(&p.dsdt.1, b"PCI0").is_some());
        assert!(find(&p.dsdt.1, b"COM1").is_some());
    }

    /// Raw bytes as an AML object, to feed malformed or oversized input.
    struct Raw(Vec<u8>);

    impl Aml for Raw {
        fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
            sink.vec(&self.0);
        }
    }

    #[test]
    fn rejects_malformed_tables() {
        let mut tables = AcpiTables::new(&AcpiConfig { num_cpus: 1 }).unwrap();
        assert!(matches!(
            tables.add_table(&Raw(b"MCFG".to_vec())),
            Err(Error::BadTable { .. })
        ));
        let mut wrong_len = vec![0u8; 40];
        wrong_len[..4].copy_from_slice(b"TEST");
        wrong_len[4..8].copy_from_slice(&36u32.to_le_bytes());
        assert!(matches!(
            tables.add_table(&Raw(wrong_len)),
            Err(Error::BadTable {
                header_len: 36,
                actual_len: 40,
                ..
            })
        ));
    }

    #[test]
    fn too_much_aml_is_an_error_not_an_overflow() {
        let mem = mem();
        let mut tables = AcpiTables::new(&AcpiConfig { num_cpus: 1 }).unwrap();
        tables.add_dsdt_aml(&Raw(vec![0; ACPI_SIZE as usize]));
        assert!(matches!(
            tables.write_to_guest(&mem),
            Err(Error::TooLarge {
                available: ACPI_SIZE,
                ..
            })
        ));
    }

    #[test]
    fn guest_memory_must_cover_the_acpi_area() {
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
        let err = create_acpi_tables(&small, &AcpiConfig { num_cpus: 1 }).unwrap_err();
        assert!(matches!(err, Error::GuestMemory(_)), "{err}");
    }
}
