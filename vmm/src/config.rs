//! The command line: parsed into a typed [`Command`] ([`VmConfig`] for a run,
//! [`CheckConfig`](crate::check::CheckConfig) for `vmm check`), every refusal an [`Error`]
//! whose advice names the input, the problem and the fix.
//!
//! Two layers: [`cli`] declares the syntax to clap (options, values, help, version) and
//! turns clap's refusals into [`Error`]s; this module turns the values, taken as `OsString`,
//! into typed configuration and validates everything that can be judged without the host:
//! sizes, ranges, ports, duplicate devices. [`device`] parses `--device` specs. Nothing here
//! opens a file or looks at the host; the kernel, the devices and the host's limits are
//! checked where they are used.

pub mod cli;
pub mod device;

pub use device::{BdfError, BdfProblem, DeviceConfig, DeviceError, DeviceSource, PciBdf};

use diag::{Advice, Explain};
use resources::layout::{self, DEBUG_EXIT_PORT};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

/// Default guest RAM.
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// [`DEFAULT_MEMORY`] as the command line writes it.
pub const DEFAULT_MEMORY_TEXT: &str = "512M";
/// Most guest RAM vmm gives a guest: 1 PiB keeps the guest physical map (RAM, the hole
/// below 4 GiB, the 64-bit PCI window) within 52 address bits, the most x86-64 has.
pub const MAX_MEMORY: u64 = 1 << 50;
/// Default kernel command line.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";
/// Most vCPUs: APIC IDs 0..=253 leave 254 for the IOAPIC (255 is broadcast).
pub const MAX_CPUS: u8 = 254;
/// Longest `--timeout`: the seconds of a timerfd are a signed 64-bit `time_t`.
pub const MAX_TIMEOUT_SECS: u64 = i64::MAX as u64;

/// A command line vmm refuses: each variant names the option or argument it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// An option vmm does not have.
    UnknownOption {
        /// As given.
        arg: String,
        /// A known option it resembles.
        suggestion: Option<String>,
    },
    /// An argument of `vmm check` that is not one of its options.
    UnknownCheckArgument {
        /// As given.
        arg: String,
    },
    /// An argument that is not an option where an option belongs.
    UnexpectedArgument {
        /// As given.
        arg: String,
        /// The argument before it, when that is an option whose value needs `=`.
        after: Option<String>,
    },
    /// An option that takes a value given none (or given the next option instead).
    MissingValue {
        /// The option.
        option: String,
        /// What its value is (`PATH`, `SIZE`, ...).
        value_name: String,
    },
    /// An option that takes a value followed by something that looks like an option.
    DashValue {
        /// The option.
        option: String,
        /// What follows it.
        next: String,
    },
    /// A value given to an option that takes none.
    UnexpectedValue {
        /// The option.
        option: String,
    },
    /// No `--kernel`.
    NoKernel,
    /// Any other refusal of the command line's shape, in clap's words.
    Usage(String),
    /// A value that must be text is not UTF-8.
    NotText {
        /// The option.
        option: &'static str,
        /// The value, bytes that are not UTF-8 shown as `\xNN`.
        value: String,
    },
    /// An empty path.
    EmptyPath {
        /// The option.
        option: &'static str,
    },
    /// `--memory` that is not a size.
    Size {
        /// As given.
        value: String,
    },
    /// `--memory` that is zero or not a multiple of 4 KiB.
    MemoryNotPages {
        /// As given.
        value: String,
    },
    /// `--memory` above [`MAX_MEMORY`].
    MemoryTooLarge {
        /// As given.
        value: String,
    },
    /// `--memory SIZE,...` with options that do not parse.
    MemoryOption {
        /// The whole value as given.
        spec: String,
        /// What is wrong.
        error: crate::memory::OptionError,
    },
    /// `--cpus` not 1 to [`MAX_CPUS`].
    Cpus {
        /// As given.
        value: String,
    },
    /// `--timeout` not a whole number of seconds > 0.
    Timeout {
        /// As given.
        value: String,
    },
    /// `--timeout` above [`MAX_TIMEOUT_SECS`].
    TimeoutTooLong {
        /// As given.
        value: String,
    },
    /// `--debug-exit=` that is not an I/O port.
    DebugExitPort {
        /// As given.
        value: String,
    },
    /// `--debug-exit=` on a port another device holds.
    DebugExitTaken {
        /// The port.
        port: u16,
        /// What holds it.
        device: &'static str,
        /// The ports that device holds, first and last.
        range: (u16, u16),
    },
    /// `--stats=` other than `json` (or `text`).
    Stats {
        /// As given.
        value: String,
    },
    /// `--seccomp` other than `on` or `off`.
    Seccomp {
        /// As given.
        value: String,
    },
    /// A `--device` spec that does not parse.
    Device {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        error: DeviceError,
    },
    /// Two `--device`s naming one host device.
    SameDevice {
        /// The first spec.
        first: String,
        /// The second.
        second: String,
        /// The device both name.
        device: String,
    },
    /// `vmm remote` without its socket or verb (`missing`: what clap named).
    RemoteUsage {
        /// What is missing, as clap names it.
        missing: String,
    },
    /// `vmm remote` with a verb it does not know, or its argument wrong.
    Verb(Advice),
    /// Two `--device`s with one `id=`.
    SameId {
        /// The first spec.
        first: String,
        /// The second.
        second: String,
        /// The id both have.
        id: String,
    },
}

/// Where every fix that needs the options points.
const SEE_HELP: &str = "see 'vmm --help'";

impl Explain for Error {
    fn advice(&self) -> Advice {
        match self {
            Self::UnknownOption { arg, suggestion } => Advice::new(
                format!("unknown option '{arg}'"),
                match suggestion {
                    Some(s) => format!("did you mean '{s}'? ({SEE_HELP})"),
                    None => "run 'vmm --help' for the options".to_string(),
                },
            ),
            Self::UnknownCheckArgument { arg } => Advice::new(
                format!("unknown argument '{arg}' to check"),
                format!("it takes --device SPEC, --memory SIZE and --json ({SEE_HELP})"),
            ),
            Self::UnexpectedArgument { arg, after } => Advice::new(
                format!("unexpected argument '{arg}'"),
                match after {
                    _ if arg == "check" => {
                        "vmm check takes no options of a run: run 'vmm check [--device SPEC]... \
                         [--memory SIZE] [--json]' on its own"
                            .to_string()
                    }
                    Some(option) => {
                        format!("{option} takes its value after '=': write {option}={arg}")
                    }
                    None => format!("options start with --, {SEE_HELP}"),
                },
            ),
            Self::MissingValue { option, value_name } => Advice::new(
                format!("{option} needs a value"),
                format!("write {option} {value_name} or {option}={value_name} ({SEE_HELP})"),
            ),
            Self::DashValue { option, next } => Advice::new(
                format!("{option} needs a value, and '{next}' is taken for an option"),
                format!("give a value that starts with '-' after '=': {option}={next}"),
            ),
            Self::UnexpectedValue { option } if option == "--verbose" => {
                Advice::new("--verbose takes no value", "repeat it for more (-vv, -vvv)")
            }
            Self::UnexpectedValue { option } => Advice::new(
                format!("{option} takes no value"),
                format!("write {option} alone"),
            ),
            Self::NoKernel => {
                Advice::new("no kernel given", format!("add --kernel PATH ({SEE_HELP})"))
            }
            Self::Usage(problem) => Advice::new(problem.clone(), SEE_HELP),
            Self::NotText { option, value } => Advice::new(
                format!("{option} '{value}' is not UTF-8 text"),
                "write it in UTF-8",
            ),
            Self::EmptyPath { option } => {
                Advice::new(format!("{option} is empty"), "give the file's path")
            }
            Self::Size { value } => Advice::new(
                format!("--memory '{value}' is not a size"),
                "write bytes or a number with K, M, G or T, e.g. 512M or 2G",
            ),
            Self::MemoryNotPages { value } => Advice::new(
                format!("--memory {value} is not a positive multiple of 4 KiB"),
                "use e.g. 512M",
            ),
            Self::MemoryTooLarge { value } => Advice::new(
                format!(
                    "--memory {value} is more than the {} vmm gives a guest at most",
                    format_size(MAX_MEMORY)
                ),
                format!("give at most {}T", MAX_MEMORY >> 40),
            ),
            Self::MemoryOption { spec, error } => {
                error.advice().within(format!("--memory '{spec}'"))
            }
            Self::Cpus { value } => Advice::new(
                format!("--cpus '{value}' is not a vCPU count"),
                format!("give a number from 1 to {MAX_CPUS}"),
            ),
            Self::Timeout { value } => Advice::new(
                format!("--timeout '{value}' is not a time"),
                "give a whole number of seconds > 0",
            ),
            Self::TimeoutTooLong { value } => Advice::new(
                format!("--timeout {value} is longer than a timer can run"),
                format!("give at most {MAX_TIMEOUT_SECS} seconds"),
            ),
            Self::DebugExitPort { value } => Advice::new(
                format!("--debug-exit={value} is not an I/O port"),
                format!("give a port 0-0xffff, e.g. --debug-exit={DEBUG_EXIT_PORT:#x}"),
            ),
            Self::DebugExitTaken {
                port,
                device,
                range: (first, last),
            } => Advice::new(
                format!(
                    "--debug-exit={port:#x} collides with {device} (ports {first:#x}-{last:#x})"
                ),
                format!("use a free port, e.g. the default --debug-exit={DEBUG_EXIT_PORT:#x}"),
            ),
            Self::Stats { value } => Advice::new(
                format!("--stats={value} is not a format"),
                "use --stats or --stats=json",
            ),
            Self::Seccomp { value } => Advice::new(
                format!("--seccomp '{value}' is neither on nor off"),
                "use --seccomp=on or --seccomp=off",
            ),
            Self::Device { spec, error } => error.advice().within(format!("--device '{spec}'")),
            Self::SameDevice {
                first,
                second,
                device,
            } => Advice::new(
                format!("--device '{first}' and --device '{second}' name the same device {device}"),
                "give each device once",
            ),
            Self::RemoteUsage { missing } => Advice::new(
                match missing.is_empty() {
                    true => "vmm remote takes --api-socket PATH, a verb and its argument".into(),
                    false => format!("vmm remote needs {missing}"),
                },
                format!(
                    "write vmm remote --api-socket PATH VERB [ARG]; VERB is one of: {}",
                    crate::api::client::VERBS
                ),
            ),
            Self::Verb(advice) => advice.clone(),
            Self::SameId { first, second, id } => Advice::new(
                format!("--device '{first}' and --device '{second}' both have id={id}"),
                "give each device its own id",
            ),
        }
    }
}
diag::explained!(Error);

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Print this help text.
    Help(String),
    /// Print this version line.
    Version(String),
    /// Run a guest.
    Run(VmConfig),
    /// Report whether the host is ready (`vmm check`).
    Check(crate::check::CheckConfig),
    /// Ask a running vmm (`vmm remote`).
    Remote {
        /// Its API socket.
        socket: PathBuf,
        /// What to ask.
        verb: crate::api::client::Verb,
    },
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
    /// Serve the control API on a Unix socket here.
    pub api_socket: Option<PathBuf>,
}

impl Command {
    /// Parses the arguments after the program name.
    pub fn parse<I, T>(args: I) -> Result<Command, Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let parsed = match cli::parse(&args) {
            Ok(parsed) => parsed,
            Err(e) => return cli::early_exit(&e, &args),
        };
        match parsed.command {
            Some(cli::Sub::Check(check)) => check_config(check).map(Command::Check),
            Some(cli::Sub::Remote(remote)) => remote_command(remote),
            None => vm_config(parsed.run).map(Command::Run),
        }
    }
}

/// Whether a refusal of `args` is also reported as JSON on stdout: `vmm check` with `--json`
/// among its arguments (looked for in the raw arguments, since a refused command line may
/// have stopped before it).
pub fn json_refusal_wanted(args: &[OsString]) -> bool {
    args.first().is_some_and(|a| a == "check") && args.iter().any(|a| a == "--json")
}

fn vm_config(run: cli::RunArgs) -> Result<VmConfig, Error> {
    let kernel = path("--kernel", run.kernel.ok_or(Error::NoKernel)?)?;
    let initramfs = run.initramfs.map(|p| path("--initramfs", p)).transpose()?;
    Ok(VmConfig {
        kernel,
        initramfs,
        cmdline: text("--cmdline", &run.cmdline)?.to_owned(),
        memory: memory_config(&run.memory)?,
        cpus: cpus(&run.cpus)?,
        devices: devices(&run.device)?,
        debug_exit: run.debug_exit.as_deref().map(debug_exit).transpose()?,
        timeout: run.timeout.as_deref().map(timeout).transpose()?,
        stats: run.stats.as_deref().map(stats).transpose()?,
        seccomp: seccomp(&run.seccomp)?,
        verbose: run.verbose.min(3),
        api_socket: run
            .api_socket
            .map(|p| path("--api-socket", p))
            .transpose()?,
    })
}

fn remote_command(remote: cli::RemoteArgs) -> Result<Command, Error> {
    let missing = |what: &str| Error::RemoteUsage {
        missing: what.into(),
    };
    let socket = path(
        "--api-socket",
        remote
            .api_socket
            .ok_or_else(|| missing("--api-socket PATH"))?,
    )?;
    let verb = remote.verb.ok_or_else(|| missing("VERB"))?;
    let verb = text("VERB", &verb)?;
    let arg = remote.arg.as_deref().map(|a| text("ARG", a)).transpose()?;
    let verb = crate::api::client::Verb::parse(verb, arg).map_err(Error::Verb)?;
    Ok(Command::Remote { socket, verb })
}

fn check_config(check: cli::CheckArgs) -> Result<crate::check::CheckConfig, Error> {
    Ok(crate::check::CheckConfig {
        devices: devices(&check.device)?,
        memory: check.memory.as_deref().map(memory_config).transpose()?,
        json: check.json,
    })
}

/// `value` as text, bytes that are not UTF-8 shown as `\xNN` (the rest as is; control
/// characters are escaped when a message is shown, by [`Advice`]'s `Display`).
pub fn shown(value: &OsStr) -> String {
    let mut out = String::new();
    for chunk in value.as_encoded_bytes().utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn text<'a>(option: &'static str, value: &'a OsStr) -> Result<&'a str, Error> {
    value.to_str().ok_or_else(|| Error::NotText {
        option,
        value: shown(value),
    })
}

fn path(option: &'static str, value: OsString) -> Result<PathBuf, Error> {
    match value.is_empty() {
        true => Err(Error::EmptyPath { option }),
        false => Ok(PathBuf::from(value)),
    }
}

/// Parses a size: plain bytes or a number with K, M, G or T (binary units; "MiB", "MB"
/// and "m" are accepted too).
pub fn parse_size(s: &str) -> Result<u64, Error> {
    let bad = || Error::Size {
        value: s.to_string(),
    };
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits_end);
    let num = num.parse::<u64>().map_err(|_| bad())?;
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
        _ => return Err(bad()),
    };
    num.checked_mul(1 << shift).ok_or_else(bad)
}

/// Guest RAM as `--memory` gives it, for a run or a check: a size, a positive multiple of
/// 4 KiB, at most [`MAX_MEMORY`], then the options of [`crate::memory::MemoryConfig`]
/// (`,hugepages=on,...`).
pub(crate) fn memory_config(value: &OsStr) -> Result<crate::memory::MemoryConfig, Error> {
    let spec = text("--memory", value)?;
    let (size, options) = match spec.split_once(',') {
        Some((size, options)) => (size, Some(options)),
        None => (spec, None),
    };
    let bytes = memory(size)?;
    match options {
        None => Ok(crate::memory::MemoryConfig::new(bytes)),
        Some(options) => {
            crate::memory::MemoryConfig::with_options(bytes, options).map_err(|error| {
                Error::MemoryOption {
                    spec: spec.to_string(),
                    error,
                }
            })
        }
    }
}

/// The size of `--memory`: a positive multiple of 4 KiB, at most [`MAX_MEMORY`].
fn memory(text: &str) -> Result<u64, Error> {
    let bytes = parse_size(text)?;
    let value = text.to_string();
    if bytes == 0 || !bytes.is_multiple_of(4096) {
        return Err(Error::MemoryNotPages { value });
    }
    if bytes > MAX_MEMORY {
        return Err(Error::MemoryTooLarge { value });
    }
    Ok(bytes)
}

pub use diag::format_size;

fn cpus(value: &OsStr) -> Result<u8, Error> {
    let v = text("--cpus", value)?;
    match v.parse::<u8>() {
        Ok(n) if (1..=MAX_CPUS).contains(&n) => Ok(n),
        _ => Err(Error::Cpus {
            value: v.to_string(),
        }),
    }
}

fn timeout(value: &OsStr) -> Result<u64, Error> {
    let v = text("--timeout", value)?;
    let value = v.to_string();
    let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    match v.parse::<u64>() {
        Ok(0) => Err(Error::Timeout { value }),
        Ok(s) if s <= MAX_TIMEOUT_SECS => Ok(s),
        // All digits but more than u64 holds is too long too, not "not a time".
        Ok(_) => Err(Error::TimeoutTooLong { value }),
        Err(_) if digits => Err(Error::TimeoutTooLong { value }),
        Err(_) => Err(Error::Timeout { value }),
    }
}

/// I/O ports the guest reaches something at without `--debug-exit`: vmm's devices on its
/// port bus, and KVM's in-kernel devices, whose ports never exit to vmm.
pub const TAKEN_PORTS: [(&str, u16, u16); 8] = {
    use layout::*;
    let pci = pci::PCI_CONFIG_IO_PORT as u16;
    [
        ("KVM's in-kernel PIC", KVM_PIC_PORTS[0], KVM_PIC_PORT_COUNT),
        ("KVM's in-kernel PIT", KVM_PIT_PORT, KVM_PIT_PORT_COUNT),
        ("the i8042 controller", I8042_PORT, I8042_PORT_COUNT),
        ("KVM's in-kernel PIC", KVM_PIC_PORTS[1], KVM_PIC_PORT_COUNT),
        ("the COM1 serial port", COM1_PORT, COM1_PORT_COUNT),
        ("KVM's in-kernel ELCR", KVM_ELCR_PORT, KVM_ELCR_PORT_COUNT),
        (
            "the ACPI power management registers",
            ACPI_PM_PORT,
            ACPI_PM_PORT_COUNT,
        ),
        (
            "PCI configuration (mechanism #1)",
            pci,
            pci::PCI_CONFIG_IO_SIZE as u16,
        ),
    ]
};

fn debug_exit(value: &OsStr) -> Result<u16, Error> {
    let v = text("--debug-exit", value)?;
    let port = parse_port(v).ok_or_else(|| Error::DebugExitPort {
        value: v.to_string(),
    })?;
    match TAKEN_PORTS
        .iter()
        .find(|(_, first, count)| (*first..*first + count).contains(&port))
    {
        Some(&(device, first, count)) => Err(Error::DebugExitTaken {
            port,
            device,
            range: (first, first + count - 1),
        }),
        None => Ok(port),
    }
}

/// A port in decimal or `0x` hex.
fn parse_port(s: &str) -> Option<u16> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.starts_with('+') => u16::from_str_radix(hex, 16).ok(),
        Some(_) => None,
        None => s.parse().ok(),
    }
}

fn stats(value: &OsStr) -> Result<crate::stats::Format, Error> {
    match text("--stats", value)? {
        "text" => Ok(crate::stats::Format::Text),
        "json" => Ok(crate::stats::Format::Json),
        v => Err(Error::Stats {
            value: v.to_string(),
        }),
    }
}

fn seccomp(value: &OsStr) -> Result<bool, Error> {
    match text("--seccomp", value)? {
        "on" => Ok(true),
        "off" => Ok(false),
        v => Err(Error::Seccomp {
            value: v.to_string(),
        }),
    }
}

/// Every `--device`, refused when two name the same host device or share an `id=`.
fn devices(specs: &[OsString]) -> Result<Vec<DeviceConfig>, Error> {
    let parsed = specs
        .iter()
        .map(|s| DeviceConfig::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    for (j, b) in parsed.iter().enumerate() {
        for (i, a) in parsed[..j].iter().enumerate() {
            if let Some(e) = same(a, b, &specs[i], &specs[j]) {
                return Err(e);
            }
        }
    }
    Ok(parsed)
}

/// The refusal of devices `a` and `b` (given as `first` and `second`) side by side, if any.
fn same(a: &DeviceConfig, b: &DeviceConfig, first: &OsStr, second: &OsStr) -> Option<Error> {
    let (first, second) = (shown(first), shown(second));
    let device = match (a.address(), b.address()) {
        (Some(x), Some(y)) if x == y => Some(x.to_string()),
        _ if a.source == b.source => Some(a.spec()),
        _ => None,
    };
    if let Some(device) = device {
        return Some(Error::SameDevice {
            first,
            second,
            device,
        });
    }
    match (&a.id, &b.id) {
        (Some(x), Some(y)) if x == y => Some(Error::SameId {
            first,
            second,
            id: x.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn parse(args: &[&str]) -> Result<Command, Error> {
        Command::parse(args)
    }

    fn run(args: &[&str]) -> VmConfig {
        match parse(args) {
            Ok(Command::Run(cfg)) => cfg,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    /// `args` are refused with one line holding `needle`, and with a fix.
    fn rejects(args: &[&str], needle: &str) -> Error {
        let e = parse(args).expect_err("should be rejected");
        let line = e.to_string();
        assert!(line.contains(needle), "{args:?}: '{line}' lacks '{needle}'");
        assert!(!line.contains('\n'), "one line: {line}");
        assert!(!e.advice().fix.is_empty(), "a fix: {line}");
        e
    }

    fn rejects_os(args: &[&[u8]], needle: &str) {
        let args: Vec<&OsStr> = args.iter().map(|a| OsStr::from_bytes(a)).collect();
        let line = Command::parse(args).unwrap_err().to_string();
        assert!(line.contains(needle), "'{line}' lacks '{needle}'");
    }

    #[test]
    fn defaults() {
        let cfg = run(&["--kernel", "bz"]);
        assert_eq!(cfg.kernel, PathBuf::from("bz"));
        assert_eq!(cfg.memory, crate::memory::MemoryConfig::new(DEFAULT_MEMORY));
        assert_eq!(parse_size(DEFAULT_MEMORY_TEXT), Ok(DEFAULT_MEMORY));
        assert_eq!(cfg.cpus, 1);
        assert_eq!(cfg.cmdline, "console=ttyS0");
        assert_eq!(
            (cfg.debug_exit, cfg.timeout, cfg.initramfs, cfg.stats),
            (None, None, None, None)
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
            "--seccomp 'no' is neither on nor off; use --seccomp=on or --seccomp=off",
        );
        rejects(
            &["--kernel", "k", "--seccomp"],
            "--seccomp needs a value; write --seccomp on|off or --seccomp=on|off",
        );
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
            "--device=vfio-pci,host=02:00.0",
            "--stats=json",
        ]);
        assert_eq!(cfg.initramfs, Some(PathBuf::from("rd")));
        assert_eq!(cfg.cmdline, "console=ttyS0 quiet");
        assert_eq!((cfg.memory.size, cfg.cpus), (2 << 30, 4));
        assert_eq!((cfg.debug_exit, cfg.timeout), (Some(0xf4), Some(30)));
        assert_eq!(cfg.devices.len(), 2);
        assert_eq!(cfg.stats, Some(crate::stats::Format::Json));
        assert_eq!(
            run(&["--kernel", "k", "--stats"]).stats,
            Some(crate::stats::Format::Text)
        );
        assert_eq!(
            run(&["--kernel", "k", "--debug-exit=0x501"]).debug_exit,
            Some(0x501)
        );
        assert_eq!(
            run(&["--kernel", "k", "--debug-exit=80"]).debug_exit,
            Some(80)
        );
        // The last of an option given twice wins.
        assert_eq!(
            run(&["--kernel", "a", "--kernel", "b"]).kernel,
            PathBuf::from("b")
        );
    }

    #[test]
    fn values_starting_with_a_dash_are_given_with_equals() {
        assert_eq!(run(&["--kernel=-k"]).kernel, PathBuf::from("-k"));
        assert_eq!(run(&["--kernel", "k", "--cmdline=-x"]).cmdline, "-x");
        assert_eq!(run(&["--kernel", "-"]).kernel, PathBuf::from("-"));
    }

    #[test]
    fn help_and_version() {
        let help = |args: &[&str]| match parse(args) {
            Ok(Command::Help(text)) => text,
            other => panic!("{args:?}: {other:?}"),
        };
        let text = help(&["--help"]);
        assert_eq!(help(&["--kernel", "k", "-h"]), text);
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
            "-v, --verbose",
            "vmm check",
            "--json",
            "Exit status:",
            "managed=on",
            "Examples:",
        ] {
            assert!(text.contains(opt), "help documents {opt}: {text}");
        }
        let check = help(&["check", "--help"]);
        for word in ["vmm check", "--device", "--memory", "--json", "\"error\""] {
            assert!(check.contains(word), "check help documents {word}: {check}");
        }
        let version = format!("vmm {}\n", env!("CARGO_PKG_VERSION"));
        assert_eq!(parse(&["-V"]), Ok(Command::Version(version.clone())));
        assert_eq!(parse(&["--version"]), Ok(Command::Version(version)));
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
            "+1G",
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
    fn verbosity() {
        assert_eq!(run(&["--kernel", "k"]).verbose, 0);
        assert_eq!(run(&["--kernel", "k", "-v"]).verbose, 1);
        assert_eq!(run(&["-vv", "--kernel", "k"]).verbose, 2);
        assert_eq!(run(&["--kernel", "k", "-v", "--verbose", "-v"]).verbose, 3);
        assert_eq!(run(&["--kernel", "k", "-vvv"]).verbose, 3);
        assert_eq!(
            run(&["--kernel", "k", &format!("-{}", "v".repeat(300))]).verbose,
            3
        );
        rejects(&["--kernel", "k", "-vx"], "unknown option '-x'");
        rejects(
            &["--kernel", "k", "--verbose=2"],
            "--verbose takes no value; repeat it for more (-vv, -vvv)",
        );
    }

    #[test]
    fn check_arguments() {
        let Ok(Command::Check(cfg)) = parse(&[
            "check",
            "--device",
            "vfio-pci,host=00:03.0",
            "--json",
            "--memory=2G",
            "--device=vfio-pci,sysfsdev=/sys/bus/pci/devices/0000:00:04.0",
        ]) else {
            panic!()
        };
        assert_eq!(cfg.devices.len(), 2);
        assert_eq!(
            (cfg.memory.map(|m| m.size), cfg.json),
            (Some(2 << 30), true)
        );
        assert_eq!(
            parse(&["check"]),
            Ok(Command::Check(crate::check::CheckConfig::default()))
        );
        assert!(matches!(
            parse(&["check", "--json", "-h"]),
            Ok(Command::Help(_))
        ));
    }

    #[test]
    fn check_rejections() {
        rejects(
            &["check", "--kernel", "k"],
            "unknown argument '--kernel' to check; it takes --device SPEC, --memory SIZE and \
             --json",
        );
        rejects(&["check", "stray"], "unknown argument 'stray' to check");
        rejects(&["check", "--device"], "--device needs a value");
        rejects(
            &["check", "--device", "vfio-pci,host=3"],
            "bad PCI address '3'",
        );
        rejects(
            &["check", "--memory", "lots"],
            "--memory 'lots' is not a size",
        );
        rejects(&["check", "--memory"], "--memory needs a value");
        // Validated as a run validates it.
        rejects(
            &["check", "--memory", "1000"],
            "not a positive multiple of 4 KiB",
        );
        rejects(
            &["check", "--memory", "0"],
            "not a positive multiple of 4 KiB",
        );
        rejects(&["check", "--memory", "2000T"], "more than the 1024 TiB");
        rejects(
            &["check", "--json=yes"],
            "--json takes no value; write --json alone",
        );
        rejects(
            &[
                "check",
                "--device",
                "vfio-pci,host=01:00.0",
                "--device",
                "vfio-pci,host=1:0.0",
            ],
            "name the same device 0000:01:00.0",
        );
        rejects(
            &["--kernel", "k", "check"],
            "unexpected argument 'check'; vmm check takes no options of a run",
        );
    }

    #[test]
    fn json_refusals_are_for_check_with_json() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(json_refusal_wanted(&args(&[
            "check", "--memory", "x", "--json"
        ])));
        assert!(json_refusal_wanted(&args(&["check", "--json", "--bogus"])));
        assert!(!json_refusal_wanted(&args(&["check", "--bogus"])));
        assert!(!json_refusal_wanted(&args(&["--kernel", "k", "--json"])));
        assert!(!json_refusal_wanted(&args(&[])));
    }

    #[test]
    fn shape_rejections() {
        rejects(&[], "no kernel given; add --kernel PATH (see 'vmm --help')");
        rejects(&["--cpus", "2"], "no kernel given");
        rejects(
            &["--kernel", "k", "--frobnicate"],
            "unknown option '--frobnicate'; run 'vmm --help' for the options",
        );
        rejects(
            &["--kernel", "k", "--memroy", "1G"],
            "unknown option '--memroy'; did you mean '--memory'?",
        );
        rejects(
            &["--kernel"],
            "--kernel needs a value; write --kernel PATH or --kernel=PATH",
        );
        rejects(
            &["--kernel", "k", "stray"],
            "unexpected argument 'stray'; options start with --",
        );
        rejects(&["stray"], "unexpected argument 'stray'");
        rejects(&["--kernel", "k", "--", "x"], "unexpected argument 'x'");
        rejects(
            &["--kernel", "k", "--debug-exit", "0x501"],
            "--debug-exit takes its value after '=': write --debug-exit=0x501",
        );
        rejects(&["--kernel", "k", "--stats", "json"], "write --stats=json");
        rejects(&["--kernel", "k", "--json"], "unknown option '--json'");
    }

    /// The next option is never taken as a value.
    #[test]
    fn values_never_swallow_the_next_option() {
        for opt in [
            "--kernel",
            "--initramfs",
            "--cmdline",
            "--memory",
            "--cpus",
            "--device",
            "--timeout",
            "--seccomp",
        ] {
            let mut args = vec!["--kernel", "k", opt, "--memory", "1G"];
            if opt == "--kernel" {
                args.drain(..2);
            }
            rejects(&args, &format!("{opt} needs a value"));
            rejects(
                &["--kernel", "k", opt, "-v"],
                &format!("{opt} needs a value"),
            );
        }
    }

    #[test]
    fn value_rejections() {
        rejects(
            &["--kernel", "k", "--cpus", "0"],
            "--cpus '0' is not a vCPU count; give a number from 1 to 254",
        );
        rejects(&["--kernel", "k", "--cpus", "255"], "from 1 to 254");
        rejects(&["--kernel", "k", "--cpus", "two"], "--cpus 'two'");
        rejects(&["--kernel", "k", "--cpus="], "--cpus ''");
        rejects(
            &["--kernel", "k", "--memory", "lots"],
            "--memory 'lots' is not a size",
        );
        rejects(&["--kernel", "k", "--memory="], "--memory '' is not a size");
        rejects(
            &["--kernel", "k", "--memory", "0"],
            "not a positive multiple of 4 KiB",
        );
        rejects(
            &["--kernel", "k", "--memory", "1000"],
            "--memory 1000 is not a positive multiple of 4 KiB",
        );
        rejects(
            &["--kernel", "k", "--memory", "16777215T"],
            "--memory 16777215T is more than the 1024 TiB vmm gives a guest at most; give at \
             most 1024T",
        );
        assert_eq!(
            run(&["--kernel", "k", "--memory", "1024T"]).memory.size,
            MAX_MEMORY
        );
        rejects(
            &["--kernel", "k", "--timeout", "0"],
            "--timeout '0' is not a time",
        );
        rejects(
            &["--kernel", "k", "--timeout", "soon"],
            "give a whole number of seconds > 0",
        );
        rejects(
            &["--kernel", "k", "--timeout", "-5"],
            "--timeout needs a value, and '-5' is taken for an option; give a value that \
             starts with '-' after '=': --timeout=-5",
        );
        rejects(
            &["--kernel", "k", "--timeout=-5"],
            "--timeout '-5' is not a time",
        );
        rejects(&["--kernel", "k", "--timeout", "1.5"], "--timeout '1.5'");
        rejects(
            &["--kernel", "k", "--timeout", "9223372036854775808"],
            "--timeout 9223372036854775808 is longer than a timer can run; give at most \
             9223372036854775807 seconds",
        );
        rejects(
            &["--kernel", "k", "--timeout", "99999999999999999999999"],
            "at most 9223372036854775807 seconds",
        );
        assert_eq!(
            run(&["--kernel", "k", "--timeout", "9223372036854775807"]).timeout,
            Some(MAX_TIMEOUT_SECS)
        );
        rejects(
            &["--kernel", "k", "--debug-exit=0x10000"],
            "--debug-exit=0x10000 is not an I/O port; give a port 0-0xffff",
        );
        rejects(
            &["--kernel", "k", "--debug-exit="],
            "--debug-exit= is not an I/O port",
        );
        rejects(
            &["--kernel", "k", "--debug-exit=0x+f4"],
            "is not an I/O port",
        );
        rejects(
            &["--kernel", "k", "--stats=xml"],
            "--stats=xml is not a format; use --stats or --stats=json",
        );
        rejects(&["--kernel="], "--kernel is empty; give the file's path");
        rejects(&["--kernel", "k", "--initramfs="], "--initramfs is empty");
    }

    #[test]
    fn debug_exit_ports_others_hold() {
        for (port, device) in [
            ("0x3f8", "the COM1 serial port (ports 0x3f8-0x3ff)"),
            ("0x3ff", "COM1"),
            ("0x60", "the i8042 controller (ports 0x60-0x64)"),
            ("0x64", "i8042"),
            ("0x61", "i8042"),
            (
                "0x600",
                "the ACPI power management registers (ports 0x600-0x601)",
            ),
            ("0x601", "ACPI"),
            (
                "0xcf8",
                "PCI configuration (mechanism #1) (ports 0xcf8-0xcff)",
            ),
            ("0xcfc", "PCI"),
            ("0x40", "KVM's in-kernel PIT (ports 0x40-0x43)"),
            ("67", "PIT"),
            ("0x20", "KVM's in-kernel PIC (ports 0x20-0x21)"),
            ("0xa1", "KVM's in-kernel PIC (ports 0xa0-0xa1)"),
            ("0x4d0", "KVM's in-kernel ELCR (ports 0x4d0-0x4d1)"),
        ] {
            let e = rejects(&["--kernel", "k", &format!("--debug-exit={port}")], device);
            let line = e.to_string();
            assert!(line.contains(" collides with "), "{line}");
            assert!(line.ends_with("use a free port, e.g. the default --debug-exit=0xf4"));
        }
        for free in [
            "0xf4", "0x80", "0x3f7", "0x400", "0x501", "0x65", "0x44", "0xd00", "0",
        ] {
            let port = parse_port(free).unwrap();
            assert_eq!(
                run(&["--kernel", "k", &format!("--debug-exit={free}")]).debug_exit,
                Some(port)
            );
        }
    }

    #[test]
    fn duplicate_devices() {
        fn dev<'a>(specs: &[&'a str]) -> Vec<&'a str> {
            let mut args = vec!["--kernel", "k"];
            for s in specs {
                args.extend(["--device", s]);
            }
            args
        }
        let e = rejects(
            &dev(&["vfio-pci,host=01:00.0", "vfio-pci,host=01:00.0"]),
            "--device 'vfio-pci,host=01:00.0' and --device 'vfio-pci,host=01:00.0' name the \
             same device 0000:01:00.0; give each device once",
        );
        assert!(matches!(e, Error::SameDevice { .. }));
        rejects(
            &dev(&[
                "vfio-pci,host=0000:01:00.0,id=a",
                "vfio-pci,host=1:0.0,id=b",
            ]),
            "--device 'vfio-pci,host=0000:01:00.0,id=a' and --device 'vfio-pci,host=1:0.0,id=b' \
             name the same device 0000:01:00.0",
        );
        rejects(
            &dev(&[
                "vfio-pci,host=02:00.0",
                "vfio-pci,host=01:00.0",
                "vfio-pci,sysfsdev=/sys/bus/pci/devices/0000:01:00.0",
            ]),
            "--device 'vfio-pci,host=01:00.0' and --device \
             'vfio-pci,sysfsdev=/sys/bus/pci/devices/0000:01:00.0' name the same device",
        );
        rejects(
            &dev(&[
                "vfio-pci,sysfsdev=/sys/bus/mdev/devices/u",
                "vfio-pci,sysfsdev=/sys/bus/mdev/devices/u",
            ]),
            "name the same device /sys/bus/mdev/devices/u",
        );
        rejects(
            &dev(&[
                "vfio-pci,host=01:00.0,id=nic",
                "vfio-pci,host=02:00.0,id=nic",
            ]),
            "--device 'vfio-pci,host=01:00.0,id=nic' and --device 'vfio-pci,host=02:00.0,id=nic' \
             both have id=nic; give each device its own id",
        );
        let cfg = run(&dev(&[
            "vfio-pci,host=01:00.0,id=a",
            "vfio-pci,host=01:00.1,id=b",
            "vfio-pci,sysfsdev=/sys/bus/mdev/devices/u",
        ]));
        assert_eq!(cfg.devices.len(), 3);
        rejects(&dev(&["vfio-pci,host=01:00.0,bogus=1"]), "--device 'vfio-pci,host=01:00.0,bogus=1': unknown key 'bogus'; the keys are host, sysfsdev, id, managed");
    }

    #[test]
    fn not_utf8() {
        // A path keeps its bytes.
        let args = [OsStr::from_bytes(b"--kernel"), OsStr::from_bytes(b"k\xff")];
        let Ok(Command::Run(cfg)) = Command::parse(args) else {
            panic!()
        };
        assert_eq!(cfg.kernel.as_os_str().as_bytes(), b"k\xff");
        let args = [
            OsStr::from_bytes(b"--kernel=k"),
            OsStr::from_bytes(b"--initramfs=\xfe"),
        ];
        let Ok(Command::Run(cfg)) = Command::parse(args) else {
            panic!()
        };
        assert_eq!(cfg.initramfs.unwrap().as_os_str().as_bytes(), b"\xfe");
        // Text is refused, naming the option, the bytes escaped.
        rejects_os(
            &[b"--kernel", b"k", b"--cmdline", b"console=ttyS0 \xff"],
            "--cmdline 'console=ttyS0 \\xff' is not UTF-8 text; write it in UTF-8",
        );
        rejects_os(
            &[b"--kernel", b"k", b"--memory=1\xc3G"],
            "--memory '1\\xc3G' is not UTF-8 text",
        );
        rejects_os(
            &[b"--kernel", b"k", b"--cpus", b"\x80"],
            "--cpus '\\x80' is not UTF-8 text",
        );
        rejects_os(
            &[b"--kernel", b"k", b"--timeout", b"1\xff"],
            "--timeout '1\\xff'",
        );
        rejects_os(
            &[b"--kernel", b"k", b"--debug-exit=\xff"],
            "--debug-exit '\\xff'",
        );
        rejects_os(&[b"--kernel", b"k", b"--stats=\xff"], "--stats '\\xff'");
        rejects_os(
            &[b"--kernel", b"k", b"--seccomp=o\xffn"],
            "--seccomp 'o\\xffn'",
        );
        rejects_os(
            &[b"--kernel", b"k", b"--device", b"vfio-pci,host=\xff"],
            "--device 'vfio-pci,host=\\xff': the value of 'host' is not UTF-8 text",
        );
        rejects_os(
            &[b"--kernel", b"k", b"--device", b"\xffvfio"],
            "unknown device type '\\xffvfio'",
        );
        rejects_os(
            &[b"check", b"--memory", b"\xff"],
            "--memory '\\xff' is not UTF-8 text",
        );
        // Unknown arguments are quoted with their bytes escaped too.
        rejects_os(&[b"--kernel", b"k", b"--\xff"], "unknown option '--\\xff'");
        rejects_os(&[b"--kernel", b"k", b"-\xff"], "unknown option '-\\xff'");
        rejects_os(&[b"--kernel", b"k", b"\xff"], "unexpected argument '\\xff'");
        rejects_os(&[b"\xff"], "unexpected argument '\\xff'");
        rejects_os(
            &[b"check", b"\xff\xfe"],
            "unknown argument '\\xff\\xfe' to check",
        );
        assert_eq!(shown(OsStr::from_bytes(b"a\xffz\xc3\xb6")), "a\\xffzö");
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
        rejects(&["--kernel", "k", "--cpus", "2\r\n"], "--cpus '2\\r\\n'");
        rejects(&["--kernel", "k", "--memory", "1G\n"], "--memory '1G\\n'");
        rejects(
            &["--kernel", "k", "--device", "\n"],
            "unknown device type '\\n'",
        );
        rejects(
            &["--kernel", "k", "--device", "vfio-pci,host=0\u{1b}[2J:00.0"],
            "bad PCI address '0\\u{1b}[2J:00.0'",
        );
        rejects(&["--kernel", "k", "--stats=\u{2028}"], "--stats=\\u{2028}");
        rejects(&["--kernel", "k", "--cpus", "zwölf"], "--cpus 'zwölf'");
    }

    #[test]
    fn problem_and_fix_apart() {
        let e = parse(&["--kernel", "k", "--cpus", "0"]).unwrap_err();
        let advice = e.advice();
        assert_eq!(advice.problem, "--cpus '0' is not a vCPU count");
        assert_eq!(advice.fix, "give a number from 1 to 254");
        assert_eq!(e.to_string(), format!("{}; {}", advice.problem, advice.fix));
        // What clap refuses in a way vmm has no variant for keeps clap's words.
        let other = Error::Usage("the argument cannot be used here".into());
        assert_eq!(
            other.to_string(),
            "the argument cannot be used here; see 'vmm --help'"
        );
    }
}
