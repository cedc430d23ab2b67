//! The command line's syntax, declared to clap: the options of a run and of `vmm check`,
//! their help, the version, and what clap's refusals become ([`super::Error`]s, one line
//! each, in vmm's words).
//!
//! Every value is taken as an `OsString` and judged by [`super`], so a path keeps bytes that
//! are not UTF-8 and a refused value is named by vmm, not by clap. This module parses
//! nothing but the shape of the command line.

use super::{shown, Command, Error, DEFAULT_CMDLINE, DEFAULT_MEMORY_TEXT};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, Args, Parser, Subcommand};
use std::ffi::OsString;

/// The usage lines, for the help and the README (a test keeps them equal).
pub const USAGE: &str = "\
vmm --kernel PATH [--initramfs PATH] [--cmdline STR] [--memory SIZE] [--cpus N]
           [--device SPEC]... [--debug-exit[=PORT]] [--timeout SECS] [--stats[=json]]
           [--seccomp=on|off] [--api-socket PATH] [-v...]
       vmm check [--device SPEC]... [--memory SIZE] [--json]
       vmm remote --api-socket PATH VERB [ARG]";

const TEMPLATE: &str = "{about}\n\n{usage-heading} {usage}\n\n{all-args}{after-help}";

const ABOUT: &str = "vmm: a minimal KVM virtual machine monitor for PCI passthrough with VFIO";

const DEVICE_HELP: &str = "\
pass a host device through (repeatable):
  vfio-pci,host=[DOMAIN:]BUS:SLOT.FN[,KEY=VALUE]...
  vfio-pci,sysfsdev=/sys/bus/pci/devices/...[,KEY=VALUE]...
sysfsdev wins when both are given; keys: id=NAME, managed=on
(move the device from its host driver to vfio-pci and back
when vmm ends; root), rombar=off (hide the expansion ROM),
romfile=PATH (serve this ROM image, e.g. a VBIOS dump), p2p=off
(do not map its BARs for other devices' DMA)";

const MEMORY_HELP: &str = "\
guest RAM: bytes or with K, M, G, T suffix; SIZE,hugepages=on
backs it with the host's hugetlb pool (2M pages unless
hugepage-size=1G); SIZE,phys-bits=N narrows the guest's physical
address width below what KVM offers (BARs must fit under it)";

const DEBUG_EXIT_HELP: &str = "\
a guest write of byte V to PORT [default: 0xf4] ends vmm with
status (V << 1) | 1 (QEMU's isa-debug-exit convention); not a port
of vmm's devices or KVM's (COM1, i8042, ACPI PM, PCI, PIT, PIC, ELCR)";

const VERBOSE_HELP: &str = "\
log more on stderr: -v info (one line per passed-through
device), -vv debug (startup profile), -vvv trace; wins over
RUST_LOG [default: warnings, or the level RUST_LOG names]";

const CHECK_ABOUT: &str = "\
vmm check: is this host ready for passthrough? One PASS, WARN or FAIL line per check
(with the fix when not PASS): KVM and its capabilities, the IOMMU, vfio-pci, interrupt
remapping, the locked-memory limit (against --memory SIZE when given), the hugepage pool
(--memory SIZE,hugepages=on), and for each --device SPEC (as for a run) its driver, its
IOMMU group with every member, /dev/vfio/N, each BAR's size and whether it fits the
guest's physical address width, and its expansion ROM.";

const CHECK_JSON: &str = "\
--json prints one object on stdout instead: {\"ok\":BOOL,\"checks\":[{\"name\":..,
\"status\":\"pass\"|\"warn\"|\"fail\",\"detail\":..,\"fix\":..|null},...]}; a refused
argument prints {\"ok\":false,\"error\":LINE,\"problem\":..,\"fix\":..} (and LINE on
stderr). Status 0 when nothing FAILs, else 1.";

const EXIT_STATUS: &str = "\
Exit status: 0 guest powered off or rebooted; 1 vmm error (bad input, host not ready, a
stdout that cannot take this help: one line on stderr, the problem and the fix); 2 guest
crashed (triple fault, KVM internal error; registers on stderr); 124 --timeout expired;
(V << 1) | 1 debug exit; 128+N stopped by signal N (130 SIGINT, 143 SIGTERM, 129 SIGHUP):
on these, like on every other end, vmm stops the vCPUs, quiets and releases the devices
and rebinds managed ones; 159 a vmm thread made a syscall its seccomp filter forbids (a
vmm bug; see --seccomp).";

const EXAMPLES: &str = "\
Examples:
  vmm --kernel bzImage --initramfs initrd.cpio.gz --memory 1G --cpus 2
  vmm --kernel bzImage --initramfs initrd.cpio.gz --cmdline \"console=ttyS0 quiet\" \\
      --memory 1G --cpus 2 --device vfio-pci,host=0000:01:00.0
  vmm --kernel test-kernel.elf --debug-exit --timeout 60
  vmm check --device vfio-pci,host=0000:01:00.0 --memory 1G";

/// `vmm` and `vmm check`.
#[derive(Debug, Parser)]
#[command(
    name = "vmm",
    bin_name = "vmm",
    version,
    about = ABOUT,
    override_usage = USAGE,
    help_template = TEMPLATE,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    args_override_self = true,
    disable_help_subcommand = true,
    disable_help_flag = true,
    disable_version_flag = true
)]
pub struct Cli {
    /// `vmm check`, when given.
    #[command(subcommand)]
    pub command: Option<Sub>,
    /// The options of a run.
    #[command(flatten)]
    pub run: RunArgs,
}

const REMOTE_ABOUT: &str = "\
vmm remote: one request to the control API of a vmm started with --api-socket PATH (like
Cloud Hypervisor's ch-remote). VERB is ping, info, add-device SPEC (a --device spec, or
path=/sys/bus/pci/devices/...), remove-device ID, power-button, shutdown, pause or resume.
The answer's JSON goes to stdout; a refusal is one line on stderr, status 1.";

/// The commands besides a run.
#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Send one request to a running vmm's API socket (see below)
    #[command(
        before_help = REMOTE_ABOUT,
        override_usage = "vmm remote --api-socket PATH VERB [ARG]",
        help_template = "{before-help}\n\n{usage-heading} {usage}\n\n{all-args}",
        disable_help_flag = true
    )]
    Remote(RemoteArgs),
    /// Is this host ready for passthrough? (see below)
    #[command(
        before_help = CHECK_ABOUT,
        override_usage = "vmm check [--device SPEC]... [--memory SIZE] [--json]",
        help_template = "{before-help}{usage-heading} {usage}\n\n{all-args}{after-help}",
        after_help = CHECK_JSON,
        disable_help_flag = true
    )]
    Check(CheckArgs),
}

/// The options of a run.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Linux bzImage, or ELF vmlinux (PVH entry used when present)
    #[arg(long, value_name = "PATH", required = true)]
    pub kernel: Option<OsString>,
    /// initramfs (cpio, optionally compressed) loaded for the kernel
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<OsString>,
    /// kernel command line
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
    pub cmdline: OsString,
    #[arg(long, value_name = "SIZE", default_value = DEFAULT_MEMORY_TEXT, help = MEMORY_HELP)]
    pub memory: OsString,
    /// number of vCPUs, 1-254
    #[arg(long, value_name = "N", default_value = "1")]
    pub cpus: OsString,
    #[arg(long, value_name = "SPEC", help = DEVICE_HELP)]
    pub device: Vec<OsString>,
    #[arg(
        long,
        value_name = "PORT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "0xf4",
        help = DEBUG_EXIT_HELP
    )]
    pub debug_exit: Option<OsString>,
    /// stop a guest still running after SECS seconds (status 124)
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<OsString>,
    #[arg(
        long,
        value_name = "json",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "text",
        help = "on exit, print on stderr what vmm's userspace handled: vCPU exits\n\
                by kind, trapped accesses per device, interrupts it injected"
    )]
    pub stats: Option<OsString>,
    #[arg(
        long,
        value_name = "on|off",
        default_value = "on",
        help = "seccomp filters on vmm's threads; off only to debug a syscall\n\
                they refuse (status 159)"
    )]
    pub seccomp: OsString,
    /// serve the control API (HTTP with JSON, docs/API.md) on a Unix socket at PATH
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<OsString>,
    #[arg(short, long, action = ArgAction::Count, help = VERBOSE_HELP)]
    pub verbose: u8,
    /// print this help
    #[arg(short, long, action = ArgAction::Help)]
    help: Option<bool>,
    /// print the version
    #[arg(short = 'V', long, action = ArgAction::Version)]
    version: Option<bool>,
}

/// The arguments of `vmm remote`.
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// the API socket of the vmm to ask
    #[arg(long, value_name = "PATH", required = true)]
    pub api_socket: Option<OsString>,
    /// what to ask: ping, info, add-device, remove-device, power-button, shutdown, pause,
    /// resume
    #[arg(value_name = "VERB", required = true)]
    pub verb: Option<OsString>,
    /// add-device's SPEC, remove-device's ID
    #[arg(value_name = "ARG")]
    pub arg: Option<OsString>,
    /// print this help
    #[arg(short, long, action = ArgAction::Help)]
    help: Option<bool>,
}

/// The options of `vmm check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// a device to check, as --device of a run takes it (repeatable)
    #[arg(long, value_name = "SPEC")]
    pub device: Vec<OsString>,
    /// guest RAM (as a run takes it) to check the locked-memory limit, the hugepage pool
    /// and where BARs go against
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<OsString>,
    /// one JSON object on stdout instead of text lines
    #[arg(long)]
    pub json: bool,
    /// print this help
    #[arg(short, long, action = ArgAction::Help)]
    help: Option<bool>,
}

/// The clap command, built once (clap checks a definition when it builds it, every time
/// with debug assertions on) and cloned for each use.
pub fn command() -> clap::Command {
    static BUILT: std::sync::OnceLock<clap::Command> = std::sync::OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let mut cmd = definition();
        cmd.build();
        cmd
    });
    built.clone()
}

fn definition() -> clap::Command {
    use clap::CommandFactory;
    Cli::command().after_help(format!(
        "{CHECK_ABOUT}\n\n{CHECK_JSON}\n\n{EXIT_STATUS}\n\n{EXAMPLES}"
    ))
}

/// Parses `args` (after the program name) into their shape.
pub fn parse(args: &[OsString]) -> Result<Cli, clap::Error> {
    use clap::FromArgMatches;
    let argv = std::iter::once(OsString::from("vmm")).chain(args.iter().cloned());
    let matches = command().try_get_matches_from(argv)?;
    Cli::from_arg_matches(&matches)
}

/// What a clap error means: the help or version to print, or a refusal.
pub fn early_exit(e: &clap::Error, args: &[OsString]) -> Result<Command, Error> {
    let text = || format!("{}\n", e.render().to_string().trim_end());
    match e.kind() {
        ErrorKind::DisplayHelp => Ok(Command::Help(text())),
        ErrorKind::DisplayVersion => Ok(Command::Version(text())),
        _ => Err(refusal(e, args)),
    }
}

/// A clap refusal in vmm's words.
fn refusal(e: &clap::Error, args: &[OsString]) -> Error {
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => v.first().cloned(),
        _ => None,
    };
    let in_check = args.first().is_some_and(|a| a == "check");
    let in_remote = args.first().is_some_and(|a| a == "remote");
    let invalid_arg = context(ContextKind::InvalidArg).unwrap_or_default();
    match e.kind() {
        ErrorKind::MissingRequiredArgument if in_remote => Error::RemoteUsage {
            missing: invalid_arg,
        },
        ErrorKind::MissingRequiredArgument => Error::NoKernel,
        ErrorKind::InvalidValue if context(ContextKind::InvalidValue).as_deref() == Some("") => {
            let (option, value_name) = option_and_value_name(&invalid_arg);
            Error::MissingValue { option, value_name }
        }
        ErrorKind::UnknownArgument if option_before(&invalid_arg, args, false).is_some() => {
            Error::DashValue {
                option: option_before(&invalid_arg, args, false).unwrap_or_default(),
                next: as_given(&invalid_arg, args),
            }
        }
        ErrorKind::UnknownArgument | ErrorKind::ArgumentConflict if in_remote => {
            Error::RemoteUsage {
                missing: String::new(),
            }
        }
        ErrorKind::UnknownArgument if in_check => Error::UnknownCheckArgument {
            arg: as_given(&invalid_arg, args),
        },
        ErrorKind::UnknownArgument if invalid_arg.starts_with('-') => Error::UnknownOption {
            arg: as_given(&invalid_arg, args),
            suggestion: context(ContextKind::SuggestedArg),
        },
        ErrorKind::InvalidSubcommand | ErrorKind::ArgumentConflict | ErrorKind::UnknownArgument
            if context(ContextKind::InvalidSubcommand).is_some() || !invalid_arg.is_empty() =>
        {
            let arg = context(ContextKind::InvalidSubcommand).unwrap_or(invalid_arg);
            unexpected(&arg, args)
        }
        ErrorKind::TooManyValues => Error::UnexpectedValue {
            option: option_and_value_name(&invalid_arg).0,
        },
        _ => Error::Usage(first_line(e)),
    }
}

/// `--kernel <PATH>` as clap shows an option: its name and its value's name.
fn option_and_value_name(shown_arg: &str) -> (String, String) {
    let end = shown_arg.find([' ', '[', '.']).unwrap_or(shown_arg.len());
    let value = shown_arg[end..].trim_matches([' ', '[', ']', '=', '<', '>', '.']);
    (shown_arg[..end].to_string(), value.to_string())
}

/// An argument clap quoted (lossily, when not UTF-8) as the user gave it, bytes that are
/// not UTF-8 shown as `\xNN`.
fn as_given(lossy: &str, args: &[OsString]) -> String {
    args.iter()
        .find(|a| a.to_string_lossy() == lossy)
        .map_or_else(|| lossy.to_string(), |a| shown(a))
}

/// An argument where an option belongs; when it follows an option whose value must be
/// given with `=`, that option is named.
fn unexpected(lossy: &str, args: &[OsString]) -> Error {
    Error::UnexpectedArgument {
        arg: as_given(lossy, args),
        after: option_before(lossy, args, true),
    }
}

/// The option right before the argument clap quoted as `lossy`, when it is an option that
/// takes a value with `=` only (`with_equals`) or also as the next argument (then clap did
/// not take `lossy` for its value because it starts with `-`).
fn option_before(lossy: &str, args: &[OsString], with_equals: bool) -> Option<String> {
    let at = args.iter().position(|a| a.to_string_lossy() == lossy)?;
    let prev = args.get(at.checked_sub(1)?)?.to_str()?;
    let name = prev.strip_prefix("--")?;
    let cmd = command();
    let cmd = match args.first().is_some_and(|a| a == "check") {
        true => cmd.find_subcommand("check")?.clone(),
        false => cmd,
    };
    let arg = cmd.get_arguments().find(|a| a.get_long() == Some(name))?;
    let fits = arg.get_action().takes_values() && arg.is_require_equals_set() == with_equals;
    fits.then(|| prev.to_string())
}

/// The first line of clap's own message, without its `error: ` prefix.
fn first_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The long names of every option of `cmd` (help and version aside).
    fn longs(cmd: &clap::Command) -> Vec<String> {
        cmd.get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| !matches!(*l, "help" | "version"))
            .map(|l| format!("--{l}"))
            .collect()
    }

    /// The README's section "## Usage".
    fn readme_usage() -> &'static str {
        let readme = include_str!("../../../README.md");
        let usage = readme
            .split("\n## Usage\n")
            .nth(1)
            .expect("README has ## Usage");
        usage.split("\n## ").next().unwrap_or_default()
    }

    /// Options `--name` (and `-x`, mapped to its long name) in the first column of the
    /// README's options table.
    fn readme_options(cmd: &clap::Command) -> Vec<String> {
        let mut found = Vec::new();
        for row in readme_usage().lines().filter(|l| l.starts_with("| `")) {
            let first = row.split(" | ").next().unwrap_or_default();
            for word in first.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
                if let Some(short) = word.strip_prefix('-').filter(|w| !w.starts_with('-')) {
                    let short = short.chars().next().unwrap_or(' ');
                    let arg = cmd.get_arguments().find(|a| a.get_short() == Some(short));
                    found.extend(arg.and_then(|a| a.get_long()).map(|l| format!("--{l}")));
                } else if word.starts_with("--") {
                    found.push(word.to_string());
                }
            }
        }
        found.sort();
        found.dedup();
        found
    }

    #[test]
    fn readme_options_table_matches_clap() {
        let cmd = command();
        let check = cmd.find_subcommand("check").unwrap().clone();
        let remote = cmd.find_subcommand("remote").unwrap().clone();
        let mut want = longs(&cmd);
        want.extend(longs(&check));
        want.extend(longs(&remote));
        want.sort();
        want.dedup();
        assert_eq!(readme_options(&cmd), want, "README's options table vs clap");
    }

    #[test]
    fn readme_usage_matches_the_help() {
        let block: Vec<&str> = readme_usage()
            .lines()
            .skip_while(|l| !l.starts_with("    vmm "))
            .take_while(|l| l.starts_with("    "))
            .flat_map(str::split_whitespace)
            .collect();
        let ours: Vec<&str> = USAGE.split_whitespace().collect();
        assert_eq!(block, ours, "README usage vs the help's");
        // Every option in the usage lines is one clap knows.
        let cmd = command();
        let check = cmd.find_subcommand("check").unwrap().clone();
        let remote = cmd.find_subcommand("remote").unwrap().clone();
        let mut known = longs(&cmd);
        known.extend(longs(&check));
        known.extend(longs(&remote));
        for word in ours.iter().filter(|w| w.contains("--")) {
            let name: String = word
                .trim_start_matches('[')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            assert!(known.contains(&name), "usage names {name}, clap does not");
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        definition().debug_assert();
    }

    #[test]
    fn option_names_as_clap_shows_them() {
        let on = |s| option_and_value_name(s);
        assert_eq!(on("--kernel <PATH>"), ("--kernel".into(), "PATH".into()));
        assert_eq!(
            on("--debug-exit[=<PORT>]"),
            ("--debug-exit".into(), "PORT".into())
        );
        assert_eq!(on("--verbose..."), ("--verbose".into(), "".into()));
        assert_eq!(on("--json"), ("--json".into(), "".into()));
    }
}
