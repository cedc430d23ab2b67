//! The command line parser (`vmm::config::Command::parse`, clap underneath), the `--device`
//! spec parser and its PCI address and size parsers, on arbitrary argument vectors of
//! arbitrary bytes.
//!
//! Input: the arguments, separated by NUL bytes (the one byte an argument cannot hold),
//! each taken as raw bytes (`OsStr::from_bytes`), UTF-8 or not, as `std::env::args_os`
//! hands them over. The first argument is also parsed alone as a device spec, a PCI address
//! and a size.
//!
//! Invariants: no panic; every error is one non-empty line with a problem, and its JSON
//! form (`vmm check --json`) is valid JSON carrying the same line; what parses is valid
//! (memory a positive multiple of 4 KiB up to the maximum, 1-254 vCPUs, a timeout within
//! what a timer takes, a debug-exit port no device holds, no device or id twice, PCI
//! addresses in range that print and parse back to themselves).

#![no_main]

use diag::Explain;
use libfuzzer_sys::fuzz_target;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use vmm::config::{
    parse_size, Command, DeviceConfig, DeviceSource, PciBdf, MAX_CPUS, MAX_MEMORY,
    MAX_TIMEOUT_SECS, TAKEN_PORTS,
};

fn one_line(e: &(impl std::fmt::Display + Explain), what: &str, input: &[&OsStr]) {
    let text = e.to_string();
    assert!(!text.is_empty(), "{what}: empty error for {input:?}");
    assert!(
        !text.contains('\n') && !text.contains('\r'),
        "{what}: error of several lines for {input:?}: {text}"
    );
    assert!(!e.advice().problem.is_empty(), "{what}: no problem: {text}");
    let json: serde_json::Value = serde_json::from_str(&vmm::check::json_refusal(&e.advice()))
        .unwrap_or_else(|j| panic!("{what}: JSON of {text}: {j}"));
    assert_eq!(json["error"].as_str(), Some(text.as_str()), "{json}");
}

fn check_bdf(bdf: &PciBdf) {
    assert!(bdf.slot <= 0x1f && bdf.function <= 7, "{bdf:?}");
    let text = bdf.to_string();
    assert_eq!(text.parse::<PciBdf>().as_ref(), Ok(bdf), "{text}");
}

fn check_device(dev: &DeviceConfig) {
    if let DeviceSource::Host(bdf) = &dev.source {
        check_bdf(bdf);
    }
    assert!(dev.id.as_ref().is_none_or(|id| !id.is_empty()));
}

fn check_devices(devices: &[DeviceConfig]) {
    devices.iter().for_each(check_device);
    for (j, b) in devices.iter().enumerate() {
        for a in &devices[..j] {
            assert!(
                a.address().is_none() || a.address() != b.address(),
                "{a:?} {b:?}"
            );
            assert!(a.id.is_none() || a.id != b.id, "{a:?} {b:?}");
        }
    }
}

fn check_run(cfg: &vmm::config::VmConfig) {
    assert!(cfg.memory.size > 0 && cfg.memory.size % 4096 == 0, "{cfg:?}");
    assert!(cfg.memory.size <= MAX_MEMORY, "{cfg:?}");
    assert!((1..=MAX_CPUS).contains(&cfg.cpus), "{cfg:?}");
    assert!(cfg
        .timeout
        .is_none_or(|t| (1..=MAX_TIMEOUT_SECS).contains(&t)));
    if let Some(port) = cfg.debug_exit {
        let taken = |&(_, first, count): &(&str, u16, u16)| (first..first + count).contains(&port);
        assert!(!TAKEN_PORTS.iter().any(taken), "{port:#x}");
    }
    assert!(!cfg.kernel.as_os_str().is_empty());
    check_devices(&cfg.devices);
}

fuzz_target!(|data: &[u8]| {
    let args: Vec<&OsStr> = data.split(|&b| b == 0).map(OsStr::from_bytes).collect();
    let first = &args[..1];
    match DeviceConfig::parse(args[0]) {
        Ok(dev) => check_device(&dev),
        Err(e) => one_line(&e, "--device", first),
    }
    let text = args[0].to_string_lossy();
    match text.parse::<PciBdf>() {
        Ok(bdf) => check_bdf(&bdf),
        Err(e) => one_line(&e, "PCI address", first),
    }
    match parse_size(&text) {
        Ok(size) => assert!(text.starts_with(|c: char| c.is_ascii_digit()), "{size}"),
        Err(e) => one_line(&e, "size", first),
    }
    match Command::parse(args.iter().copied()) {
        Ok(Command::Run(cfg)) => check_run(&cfg),
        Ok(Command::Check(cfg)) => {
            assert!(cfg
                .memory
                .is_none_or(|m| m.size > 0 && m.size % 4096 == 0 && m.size <= MAX_MEMORY));
            check_devices(&cfg.devices);
        }
        Ok(Command::Help(text) | Command::Version(text)) => assert!(text.ends_with('\n')),
        Ok(Command::Remote { socket, .. }) => assert!(!socket.as_os_str().is_empty()),
        Err(e) => one_line(&e, "command line", &args),
    }
});
