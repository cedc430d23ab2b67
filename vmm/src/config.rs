//! The command line: parsed into a typed [`VmConfig`], every rejection a one-line message
//! that names the problem and the fix.

use resources::layout::DEBUG_EXIT_PORT;
use std::path::PathBuf;

/// Usage text for `--help`.
pub const HELP: &str = "\
vmm: a minimal KVM virtual machine monitor for PCI passthrough with VFIO

Usage: vmm --kernel PATH [OPTIONS]
       vmm check [--device SPEC]... [--memory SIZE] [--json]

Options:
  --kernel PATH          Linux bzImage, or ELF vmlinux (PVH entry used when present)
  --initramfs PATH       initramfs (cpio, optionally compressed) loaded for the kernel
  --cmdline STR          kernel command line [default: console=ttyS0]
  --memory SIZE[,hugepages=on[,hugepage-size=2M|1G]][,phys-bits=N]
                         guest RAM: bytes or with K, M, G, T suffix [default: 512M];
                         hugepages=on backs it with the host's hugetlb pool (2M pages
                         unless hugepage-size=1G); phys-bits=N narrows the guest's physical
                         address width below what KVM offers (BARs must fit under it)
  --cpus N               number of vCPUs, 1-254 [default: 1]
  --device SPEC          pass a host device through (repeatable):
                           vfio-pci,host=[DOMAIN:]BUS:SLOT.FN[,KEY=VALUE]...
                           vfio-pci,sysfsdev=/sys/bus/pci/devices/...[,KEY=VALUE]...
                         sysfsdev wins when both are given; keys: id=NAME,
                         managed=on (move the device from its host driver to vfio-pci
                         and back when vmm ends; root), rombar=off (hide the expansion
                         ROM), romfile=PATH (serve this ROM image, e.g. a VBIOS dump),
                         p2p=off (do not map its BARs for other devices' DMA)
  --debug-exit[=PORT]    a guest write of byte V to PORT [default: 0xf4] ends vmm with
                         status (V << 1) | 1 (QEMU's isa-debug-exit convention)
  --timeout SECS         stop a guest still running after SECS seconds (status 124)
  --stats[=json]         on exit, print on stderr what vmm's userspace handled: vCPU exits
                         by kind, trapped accesses per device, interrupts it injected
  --seccomp=on|off       seccomp filters on vmm's threads; off only to debug a syscall
                         they refuse (status 159) [default: on]
  -v, --verbose          log more on stderr: -v info (one line per passed-through
                         device), -vv debug (startup profile), -vvv trace; wins over
                         RUST_LOG [default: warnings, or the level RUST_LOG names]
  -h, --help             print this help
  -V, --version          print the version

vmm check: is this host ready for passthrough? One PASS, WARN or FAIL line per check
(with the fix when not PASS): KVM and its capabilities, the IOMMU, vfio-pci, interrupt
remapping, the locked-memory limit (against --memory SIZE when given), the hugepage pool
(--memory SIZE,hugepages=on), and for each --device SPEC (as above) its driver, its IOMMU
group with every member, /dev/vfio/N, each BAR's size and whether it fits the guest's
physical address width, and its expansion ROM.
--json prints one object instead: {\"ok\":BOOL,\"checks\":[{\"name\":..,\"status\":..,
\"detail\":..,\"fix\":..},...]}. Status 0 when nothing FAILs, else 1.

Exit status: 0 guest powered off or rebooted; 1 vmm error; 2 guest crashed (triple fault,
KVM internal error; registers on stderr); 124 --timeout expired; (V << 1) | 1 debug exit;
128+N stopped by signal N (130 SIGINT, 143 SIGTERM, 129 SIGHUP): on these, like on every
other end, vmm stops the vCPUs, quiets and releases the devices and rebinds managed ones;
159 a vmm thread made a syscall its seccomp filter forbids (a vmm bug; see --seccomp).

Examples:
  vmm --kernel bzImage --initramfs initrd.cpio.gz --memory 1G --cpus 2
  vmm --kernel bzImage --initramfs initrd.cpio.gz --cmdline \"console=ttyS0 quiet\" \\
      --memory 1G --cpus 2 --device vfio-pci,host=0000:01:00.0
  vmm --kernel test-kernel.elf --debug-exit --timeout 60
  vmm check --device vfio-pci,host=0000:01:00.0 --memory 1G
";

/// Default guest RAM.
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// Default kernel command line.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";
/// Most vCPUs: APIC IDs 0..=253 leave 254 for the IOAPIC (255 is broadcast).
pub const MAX_CPUS: u8 = 254;

/// A parse or validation error: its text is the whole message the user sees.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Error(String);

impl Error {
    /// An error with text `msg` kept on one line: control characters the user typed (a
    /// newline or escape in an argument, quoted back in the message) are shown escaped.
    fn new(msg: impl Into<String>) -> Self {
        let msg = msg.into();
        let mut line = String::with_capacity(msg.len());
        for c in msg.chars() {
            if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
                line.extend(c.escape_default());
            } else {
                line.push(c);
            }
        }
        Self(line)
    }
}

pub(crate) fn err<T>(msg: impl Into<String>) -> Result<T, Error> {
    Err(Error::new(msg))
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Print help.
    Help,
    /// Print the version.
    Version,
    /// Run a guest.
    Run(VmConfig),
    /// Report whether the host is ready (`vmm check`).
    Check(crate::check::CheckConfig),
}

/// A PCI address `domain:bus:slot.function`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciBdf {
    /// PCI domain (segment).
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device (slot) number, 0-31.
    pub slot: u8,
    /// Function number, 0-7.
    pub function: u8,
}

impl std::fmt::Display for PciBdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.domain, self.bus, self.slot, self.function
        )
    }
}

impl std::str::FromStr for PciBdf {
    type Err = Error;

    /// `[domain:]bus:slot.function`: hex domain, bus and slot, decimal function.
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| {
            Error::new(format!(
                "bad PCI address '{s}': {why}; write [DOMAIN:]BUS:SLOT.FUNCTION, e.g. 0000:01:00.0"
            ))
        };
        let Some((rest, function)) = s.rsplit_once('.') else {
            return Err(bad("no '.FUNCTION'"));
        };
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, slot) = match parts[..] {
            [bus, slot] => ("0", bus, slot),
            [domain, bus, slot] => (domain, bus, slot),
            _ => return Err(bad("expected one or two ':'")),
        };
        let hex = |field: &str, digits: usize, max: u32, name: &str| -> Result<u32, Error> {
            match u32::from_str_radix(field, 16) {
                Ok(v) if !field.is_empty() && field.len() <= digits && v <= max => Ok(v),
                _ => Err(bad(&format!("{name} '{field}' is not hex 0-{max:#x}"))),
            }
        };
        let domain = hex(domain, 4, 0xffff, "domain")? as u16;
        let bus = hex(bus, 2, 0xff, "bus")? as u8;
        let slot = hex(slot, 2, 0x1f, "slot")? as u8;
        let function = match function.parse::<u8>() {
            Ok(f) if f <= 7 && function.len() == 1 => f,
            _ => return Err(bad(&format!("function '{function}' is not 0-7"))),
        };
        Ok(PciBdf {
            domain,
            bus,
            slot,
            function,
        })
    }
}

/// Where a passed-through device is found on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSource {
    /// By PCI address; its sysfs path is `/sys/bus/pci/devices/<bdf>`.
    Host(PciBdf),
    /// By sysfs path (PCI device or mdev).
    Sysfs(PathBuf),
}

/// The keys a `--device vfio-pci,...` takes.
const DEVICE_KEYS: &str = "host, sysfsdev, id, managed, rombar, romfile, p2p";

/// One `--device vfio-pci,...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// The host device.
    pub source: DeviceSource,
    /// Optional name for messages.
    pub id: Option<String>,
    /// `managed=on`: bind the device to vfio-pci for the run, its own driver back after.
    pub managed: bool,
    /// `rombar=on` (default): the guest sees the expansion ROM BAR; `off` hides it.
    pub rombar: bool,
    /// `romfile=PATH`: the ROM the guest reads is this file, not the device's.
    pub romfile: Option<PathBuf>,
    /// `p2p=on` (default): the device's mmapped BARs are also mapped for DMA at their guest
    /// addresses, so other passed-through devices can reach them.
    pub p2p: bool,
}

impl DeviceConfig {
    /// The device as `vfio::Sysfs::device` takes it: a PCI address or a sysfs path.
    pub fn spec(&self) -> String {
        match &self.source {
            DeviceSource::Host(bdf) => bdf.to_string(),
            DeviceSource::Sysfs(path) => path.display().to_string(),
        }
    }
}

impl std::str::FromStr for DeviceConfig {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self, Error> {
        let mut fields = spec.split(',');
        match fields.next() {
            Some("vfio-pci") => {}
            Some(other) => {
                return err(format!(
                    "unknown device type '{other}' in --device '{spec}'; \
                     the supported type is vfio-pci"
                ))
            }
            None => unreachable!("split yields at least one field"),
        }
        let (mut host, mut sysfs, mut id, mut managed) = (None, None, None, None);
        let (mut rombar, mut romfile, mut p2p) = (None, None, None);
        for field in fields {
            let Some((key, value)) = field.split_once('=') else {
                return err(format!(
                    "'{field}' in --device '{spec}' is not KEY=VALUE; keys: {DEVICE_KEYS}"
                ));
            };
            if value.is_empty() {
                return err(format!("empty value for '{key}' in --device '{spec}'"));
            }
            let slot = match key {
                "host" => &mut host,
                "sysfsdev" => &mut sysfs,
                "id" => &mut id,
                "managed" => &mut managed,
                "rombar" => &mut rombar,
                "romfile" => &mut romfile,
                "p2p" => &mut p2p,
                _ => {
                    return err(format!(
                        "unknown key '{key}' in --device '{spec}'; keys: {DEVICE_KEYS}"
                    ))
                }
            };
            if slot.replace(value).is_some() {
                return err(format!("'{key}' given twice in --device '{spec}'"));
            }
        }
        let source = match (sysfs, host) {
            (Some(path), _) => DeviceSource::Sysfs(PathBuf::from(path)),
            (None, Some(bdf)) => DeviceSource::Host(bdf.parse()?),
            (None, None) => {
                return err(format!(
                    "--device '{spec}' names no device; add host=BUS:SLOT.FN or sysfsdev=PATH"
                ))
            }
        };
        let on_off = |key: &str, value: Option<&str>, default: bool| match value {
            None => Ok(default),
            Some("on") => Ok(true),
            Some("off") => Ok(false),
            Some(other) => err(format!(
                "bad value '{other}' for '{key}' in --device '{spec}'; write {key}=on or {key}=off"
            )),
        };
        let rombar = on_off("rombar", rombar, true)?;
        if !rombar && romfile.is_some() {
            return err(format!(
                "--device '{spec}' gives both rombar=off and romfile=; drop one (rombar=off hides \
                 the ROM, romfile= serves a file as the ROM)"
            ));
        }
        Ok(DeviceConfig {
            source,
            id: id.map(str::to_owned),
            managed: on_off("managed", managed, false)?,
            rombar,
            romfile: romfile.map(PathBuf::from),
            p2p: on_off("p2p", p2p, true)?,
        })
    }
}

/// Everything needed to build and run a guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest RAM: size, backing, physical address width.
    pub memory: crate::memory::MemoryConfig,
    /// vCPU count.
    pub cpus: u8,
    /// Passed-through devices, in guest slot order.
    pub devices: Vec<DeviceConfig>,
    /// Debug-exit port, when enabled.
    pub debug_exit: Option<u16>,
    /// Stop the guest after this many seconds.
    pub timeout: Option<u64>,
    /// Print counters on exit.
    pub stats: Option<crate::stats::Format>,
    /// Install seccomp filters on vmm's threads (`--seccomp=on`).
    pub seccomp: bool,
    /// How many `-v`: 1 info, 2 debug, 3 trace; 0 leaves the level to RUST_LOG.
    pub verbose: u8,
}

/// Parses a size: plain bytes or a number with K, M, G or T (binary units; "MiB", "MB"
/// and "m" are accepted too).
pub fn parse_size(s: &str) -> Result<u64, Error> {
    let bad = || {
        err(format!(
            "bad size '{s}'; write bytes or a number with K, M, G or T, e.g. 512M or 2G"
        ))
    };
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits_end);
    let Ok(num) = num.parse::<u64>() else {
        return bad();
    };
    let shift = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return bad(),
    };
    num.checked_mul(1 << shift).map_or_else(bad, Ok)
}

/// A size as text in the largest binary unit it reaches: `512 MiB`, `64 KiB`, and one
/// decimal when not a whole number of them (`1.5 GiB`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
    match UNITS.iter().find(|(shift, _)| bytes >= 1 << shift) {
        Some((shift, unit)) if bytes.is_multiple_of(1 << shift) => {
            format!("{} {unit}", bytes >> shift)
        }
        Some((shift, unit)) => format!("{:.1} {unit}", bytes as f64 / (1u64 << shift) as f64),
        None => format!("{bytes} bytes"),
    }
}

fn parse_number<T: std::str::FromStr>(s: &str) -> Option<T> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok()?.to_string().parse().ok(),
        None => s.parse().ok(),
    }
}

/// An argument as option name and inline value: `--name=value` splits, anything else is
/// all name.
pub(crate) fn split_option(arg: &str) -> (String, Option<String>) {
    match arg.split_once('=') {
        Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
        _ => (arg.to_owned(), None),
    }
}

/// The value of option `name`: its inline `=value`, else the next argument; `usage` shows how
/// to give it in the error.
pub(crate) fn option_value(
    name: &str,
    inline: Option<String>,
    rest: &mut impl Iterator<Item = String>,
    usage: &str,
) -> Result<String, Error> {
    match inline.or_else(|| rest.next()) {
        Some(v) => Ok(v),
        None => err(format!("{name} needs a value: {usage}")),
    }
}

impl Command {
    /// Parses the arguments after the program name.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, Error> {
        let mut args = args.into_iter().peekable();
        if args.next_if(|a| a == "check").is_some() {
            return crate::check::parse(args);
        }
        let mut kernel = None;
        let mut cfg = VmConfig {
            kernel: PathBuf::new(),
            initramfs: None,
            cmdline: DEFAULT_CMDLINE.to_owned(),
            memory: crate::memory::MemoryConfig::new(DEFAULT_MEMORY),
            cpus: 1,
            devices: Vec::new(),
            debug_exit: None,
            timeout: None,
            stats: None,
            seccomp: true,
            verbose: 0,
        };
        while let Some(arg) = args.next() {
            let (name, inline) = split_option(&arg);
            let mut value = |what: &str| {
                option_value(&name, inline.clone(), &mut args, &format!("{name} {what}"))
            };
            match name.as_str() {
                "-h" | "--help" => return Ok(Command::Help),
                "-V" | "--version" => return Ok(Command::Version),
                "--verbose" if inline.is_some() => {
                    return err("--verbose takes no value; repeat it for more (-vv, -vvv)")
                }
                "--verbose" => cfg.verbose = cfg.verbose.saturating_add(1),
                v if v.len() > 1 && v.starts_with('-') && v[1..].bytes().all(|b| b == b'v') => {
                    cfg.verbose = cfg.verbose.saturating_add((v.len() - 1).min(3) as u8)
                }
                "--kernel" => kernel = Some(PathBuf::from(value("PATH")?)),
                "--initramfs" => cfg.initramfs = Some(PathBuf::from(value("PATH")?)),
                "--cmdline" => cfg.cmdline = value("STRING")?,
                "--memory" => cfg.memory = value("SIZE")?.parse()?,
                "--cpus" => {
                    let v = value("N")?;
                    cfg.cpus = match v.parse::<u8>() {
                        Ok(n) if (1..=MAX_CPUS).contains(&n) => n,
                        _ => return err(format!("--cpus {v}: give a number from 1 to {MAX_CPUS}")),
                    };
                }
                "--device" => cfg
                    .devices
                    .push(value("vfio-pci,host=BUS:SLOT.FN")?.parse()?),
                "--debug-exit" => {
                    cfg.debug_exit = Some(match inline {
                        Some(v) => match parse_number::<u16>(&v) {
                            Some(port) => port,
                            None => {
                                return err(format!(
                            "--debug-exit={v}: give an I/O port 0-0xffff, e.g. --debug-exit=0xf4"
                        ))
                            }
                        },
                        None => DEBUG_EXIT_PORT,
                    })
                }
                "--stats" => {
                    cfg.stats = Some(match inline.as_deref() {
                        None | Some("text") => crate::stats::Format::Text,
                        Some("json") => crate::stats::Format::Json,
                        Some(v) => return err(format!("--stats={v}: use --stats or --stats=json")),
                    })
                }
                "--seccomp" => {
                    cfg.seccomp = match value("on|off")?.as_str() {
                        "on" => true,
                        "off" => false,
                        v => {
                            return err(format!("--seccomp {v}: use --seccomp=on or --seccomp=off"))
                        }
                    }
                }
                "--timeout" => {
                    let v = value("SECS")?;
                    cfg.timeout = match v.parse::<u64>() {
                        Ok(s) if s > 0 => Some(s),
                        _ => {
                            return err(format!(
                                "--timeout {v}: give a whole number of seconds > 0"
                            ))
                        }
                    };
                }
                _ if name.starts_with('-') => {
                    return err(format!(
                        "unknown option '{name}'; run 'vmm --help' for the options"
                    ))
                }
                _ => {
                    return err(format!(
                        "unexpected argument '{arg}'; options start with --, see 'vmm --help'"
                    ))
                }
            }
        }
        cfg.kernel = match kernel {
            Some(k) => k,
            None => return err("no kernel given; add --kernel PATH (see 'vmm --help')"),
        };
        if cfg.memory.size == 0 || !cfg.memory.size.is_multiple_of(4096) {
            return err(format!(
                "--memory {} is not a positive multiple of 4 KiB; use e.g. 512M",
                cfg.memory.size
            ));
        }
        Ok(Command::Run(cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, Error> {
        Command::parse(args.iter().map(|s| s.to_string()))
    }

    fn run(args: &[&str]) -> VmConfig {
        match parse(args) {
            Ok(Command::Run(cfg)) => cfg,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn rejects(args: &[&str], needle: &str) {
        let e = parse(args).expect_err("should be rejected").to_string();
        assert!(e.contains(needle), "{args:?}: '{e}' lacks '{needle}'");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn defaults() {
        let cfg = run(&["--kernel", "bz"]);
        assert_eq!(cfg.kernel, PathBuf::from("bz"));
        assert_eq!(cfg.memory, crate::memory::MemoryConfig::new(512 << 20));
        assert_eq!(cfg.cpus, 1);
        assert_eq!(cfg.cmdline, "console=ttyS0");
        assert_eq!(
            (cfg.debug_exit, cfg.timeout, cfg.initramfs),
            (None, None, None)
        );
        assert!(cfg.devices.is_empty());
        assert!(cfg.seccomp, "seccomp is on by default");
    }

    #[test]
    fn seccomp_on_and_off() {
        assert!(!run(&["--kernel", "k", "--seccomp=off"]).seccomp);
        assert!(!run(&["--kernel", "k", "--seccomp", "off"]).seccomp);
        assert!(run(&["--kernel", "k", "--seccomp=off", "--seccomp=on"]).seccomp);
        rejects(
            &["--kernel", "k", "--seccomp=no"],
            "--seccomp no: use --seccomp=on or --seccomp=off",
        );
        rejects(&["--kernel", "k", "--seccomp"], "--seccomp needs a value");
    }

    #[test]
    fn all_options_both_forms() {
        let cfg = run(&[
            "--kernel=bz",
            "--initramfs",
            "rd",
            "--cmdline=console=ttyS0 quiet",
            "--memory",
            "2G",
            "--cpus=4",
            "--debug-exit",
            "--timeout",
            "30",
            "--device",
            "vfio-pci,host=01:00.0",
        ]);
        assert_eq!(cfg.initramfs, Some(PathBuf::from("rd")));
        assert_eq!(cfg.cmdline, "console=ttyS0 quiet");
        assert_eq!((cfg.memory.size, cfg.cpus), (2 << 30, 4));
        assert_eq!((cfg.debug_exit, cfg.timeout), (Some(0xf4), Some(30)));
        assert_eq!(cfg.devices.len(), 1);
        assert_eq!(
            run(&["--kernel", "k", "--debug-exit=0x501"]).debug_exit,
            Some(0x501)
        );
        assert_eq!(
            run(&["--kernel", "k", "--debug-exit=80"]).debug_exit,
            Some(80)
        );
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse(&["--help"]), Ok(Command::Help));
        assert_eq!(parse(&["--kernel", "k", "-h"]), Ok(Command::Help));
        assert_eq!(parse(&["-V"]), Ok(Command::Version));
        for opt in [
            "--kernel",
            "--initramfs",
            "--cmdline",
            "--memory",
            "--cpus",
            "--device",
            "--debug-exit",
            "--timeout",
            "--stats",
            "--seccomp",
        ] {
            assert!(HELP.contains(opt), "help documents {opt}");
        }
    }

    #[test]
    fn memory_with_options() {
        let cfg = run(&["--kernel", "k", "--memory=2G,hugepages=on,phys-bits=40"]);
        assert_eq!(cfg.memory.size, 2 << 30);
        assert_eq!(
            cfg.memory.hugepages,
            Some(crate::memory::HugePageSize::Size2M)
        );
        assert_eq!(cfg.memory.phys_bits, Some(40));
        rejects(
            &["--kernel", "k", "--memory", "2G,hugepages=maybe"],
            "write hugepages=on or hugepages=off",
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64MB"), Ok(64 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("16K"), Ok(16 << 10));
        for bad in [
            "",
            "M",
            "1.5G",
            "-1G",
            "12X",
            "99999999999999999999",
            "20000000T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn size_text() {
        assert_eq!(format_size(512 << 20), "512 MiB");
        assert_eq!(format_size(1 << 30), "1 GiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size(64 << 10), "64 KiB");
        assert_eq!(format_size(2 << 40), "2 TiB");
        assert_eq!(format_size(100), "100 bytes");
    }

    #[test]
    fn verbosity_and_check() {
        assert_eq!(run(&["--kernel", "k"]).verbose, 0);
        assert_eq!(run(&["--kernel", "k", "-v"]).verbose, 1);
        assert_eq!(run(&["-vv", "--kernel", "k"]).verbose, 2);
        assert_eq!(run(&["--kernel", "k", "-v", "--verbose", "-v"]).verbose, 3);
        assert_eq!(run(&["--kernel", "k", "-vvv"]).verbose, 3);
        rejects(&["--kernel", "k", "-vx"], "unknown option '-vx'");
        rejects(
            &["--kernel", "k", "--verbose=2"],
            "--verbose takes no value",
        );
        assert!(matches!(parse(&["check"]), Ok(Command::Check(_))));
        assert_eq!(parse(&["check", "--help"]), Ok(Command::Help));
        rejects(&["--kernel", "k", "check"], "unexpected argument 'check'");
        for word in ["vmm check", "-v, --verbose", "--json"] {
            assert!(HELP.contains(word), "help documents {word}");
        }
    }

    #[test]
    fn rejections() {
        rejects(&[], "no kernel given");
        rejects(
            &["--kernel", "k", "--frobnicate"],
            "unknown option '--frobnicate'",
        );
        rejects(&["--kernel"], "--kernel needs a value");
        rejects(&["--kernel", "k", "stray"], "unexpected argument 'stray'");
        rejects(
            &["--kernel", "k", "--cpus", "0"],
            "--cpus 0: give a number from 1 to 254",
        );
        rejects(&["--kernel", "k", "--cpus", "255"], "from 1 to 254");
        rejects(&["--kernel", "k", "--cpus", "two"], "--cpus two");
        rejects(&["--kernel", "k", "--memory", "lots"], "bad size 'lots'");
        rejects(
            &["--kernel", "k", "--memory", "0"],
            "not a positive multiple of 4 KiB",
        );
        rejects(&["--kernel", "k", "--memory", "1000"], "multiple of 4 KiB");
        rejects(&["--kernel", "k", "--timeout", "0"], "--timeout 0");
        rejects(&["--kernel", "k", "--timeout", "soon"], "seconds");
        rejects(&["--kernel", "k", "--debug-exit=0x10000"], "I/O port");
        rejects(
            &["--kernel", "k", "--stats=xml"],
            "--stats=xml: use --stats or --stats=json",
        );
    }

    #[test]
    fn bdf_forms() {
        let b: PciBdf = "0000:01:00.0".parse().unwrap();
        assert_eq!(
            b,
            PciBdf {
                domain: 0,
                bus: 1,
                slot: 0,
                function: 0
            }
        );
        let b: PciBdf = "00:03.0".parse().unwrap();
        assert_eq!(
            b,
            PciBdf {
                domain: 0,
                bus: 0,
                slot: 3,
                function: 0
            }
        );
        let b: PciBdf = "ffff:ff:1f.7".parse().unwrap();
        assert_eq!(
            b,
            PciBdf {
                domain: 0xffff,
                bus: 0xff,
                slot: 0x1f,
                function: 7
            }
        );
        assert_eq!(b.to_string(), "ffff:ff:1f.7");
        assert_eq!(
            "0:a:1.2".parse::<PciBdf>().unwrap().to_string(),
            "0000:0a:01.2"
        );
    }

    /// Found by the `device_parser` fuzz target: a newline in an argument was quoted back
    /// raw, so the "one line" error spanned several.
    #[test]
    fn errors_quoting_the_input_stay_on_one_line() {
        rejects(
            &["--kernel", "k", "--bogus\nx"],
            "unknown option '--bogus\\nx'",
        );
        rejects(&["\n"], "unexpected argument '\\n'");
        rejects(&["--kernel", "k", "--cpus", "2\r\n"], "--cpus 2\\r\\n");
        rejects(&["--kernel", "k", "--memory", "1G\n"], "bad size '1G\\n'");
        rejects(
            &["--kernel", "k", "--device", "\n"],
            "unknown device type '\\n'",
        );
        rejects(
            &["--kernel", "k", "--device", "vfio-pci,host=0\u{1b}[2J:00.0"],
            "bad PCI address '0\\u{1b}[2J:00.0'",
        );
        rejects(&["--kernel", "k", "--stats=\u{2028}"], "--stats=\\u{2028}");
        let e = "0:0\n.0".parse::<PciBdf>().unwrap_err().to_string();
        assert!(!e.contains('\n') && e.contains("'0:0\\n.0'"), "{e}");
        rejects(&["--kernel", "k", "--cpus", "zwölf"], "--cpus zwölf");
    }

    #[test]
    fn bdf_rejections() {
        for (bad, why) in [
            ("01:00", "no '.FUNCTION'"),
            ("01.0", "one or two ':'"),
            ("0:0:0:0.0", "one or two ':'"),
            ("10000:00:00.0", "domain '10000'"),
            ("00:100:00.0", "bus '100'"),
            ("00:20.0", "slot '20'"),
            ("00:1g.0", "slot '1g'"),
            ("00:00.8", "function '8'"),
            ("00:00.a", "function 'a'"),
            ("00:00.", "function ''"),
            (":00.0", "bus ''"),
        ] {
            let e = bad.parse::<PciBdf>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.contains("e.g. 0000:01:00.0"), "{e}");
        }
    }

    #[test]
    fn device_specs() {
        let d: DeviceConfig = "vfio-pci,host=00:03.0,id=edu".parse().unwrap();
        assert_eq!(
            d.source,
            DeviceSource::Host("0000:00:03.0".parse().unwrap())
        );
        assert_eq!(d.id.as_deref(), Some("edu"));
        assert!(!d.managed);
        let d: DeviceConfig = "vfio-pci,host=00:04.0,managed=on".parse().unwrap();
        assert!(d.managed);
        let d: DeviceConfig = "vfio-pci,host=00:04.0,managed=off".parse().unwrap();
        assert!(!d.managed);
        let d: DeviceConfig = "vfio-pci,host=00:03.0,sysfsdev=/sys/bus/pci/devices/0000:00:04.0"
            .parse()
            .unwrap();
        assert_eq!(
            d.source,
            DeviceSource::Sysfs("/sys/bus/pci/devices/0000:00:04.0".into()),
            "sysfsdev wins"
        );
        assert!(d.rombar && d.p2p && d.romfile.is_none(), "defaults: {d:?}");
        let d: DeviceConfig = "vfio-pci,host=00:03.0,rombar=off,p2p=off".parse().unwrap();
        assert!(!d.rombar && !d.p2p);
        let d: DeviceConfig = "vfio-pci,host=00:03.0,romfile=/tmp/vbios.rom,rombar=on,p2p=on"
            .parse()
            .unwrap();
        assert_eq!(d.romfile, Some(PathBuf::from("/tmp/vbios.rom")));
        assert!(d.rombar && d.p2p);
        // sysfsdev wins even over a malformed host=.
        let d: DeviceConfig = "vfio-pci,sysfsdev=/sys/bus/mdev/devices/u,host=zz"
            .parse()
            .unwrap();
        assert_eq!(
            d.source,
            DeviceSource::Sysfs("/sys/bus/mdev/devices/u".into())
        );
    }

    #[test]
    fn device_spec_rejections() {
        for (bad, why) in [
            (
                "virtio-net,host=00:03.0",
                "unknown device type 'virtio-net'",
            ),
            ("vfio-pci", "names no device"),
            ("vfio-pci,id=x", "names no device"),
            ("vfio-pci,host", "not KEY=VALUE"),
            ("vfio-pci,host=", "empty value for 'host'"),
            ("vfio-pci,bdf=00:03.0", "unknown key 'bdf'"),
            ("vfio-pci,host=00:03.0,host=00:04.0", "'host' given twice"),
            ("vfio-pci,host=00:03", "bad PCI address"),
            (
                "vfio-pci,host=00:03.0,managed=yes",
                "write managed=on or managed=off",
            ),
            (
                "vfio-pci,host=00:03.0,rombar=0",
                "write rombar=on or rombar=off",
            ),
            ("vfio-pci,host=00:03.0,p2p=no", "write p2p=on or p2p=off"),
            (
                "vfio-pci,host=00:03.0,romfile=",
                "empty value for 'romfile'",
            ),
            (
                "vfio-pci,host=00:03.0,romfile=a,romfile=b",
                "'romfile' given twice",
            ),
            (
                "vfio-pci,host=00:03.0,rombar=off,romfile=v.rom",
                "both rombar=off and romfile=",
            ),
            (
                "vfio-pci,host=00:03.0,rom=off",
                "keys: host, sysfsdev, id, managed, rombar",
            ),
        ] {
            let e = bad.parse::<DeviceConfig>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
