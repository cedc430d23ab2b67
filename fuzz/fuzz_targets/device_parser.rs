//! The command line parser (`vmm::config::Command::parse`), the `--device` spec parser and
//! its PCI address and size parsers, on arbitrary argument vectors.
//!
//! Input: the arguments, separated by NUL bytes (invalid UTF-8 is replaced, as a lossy
//! `std::env::args` would). The first argument is also parsed alone as a device spec, a PCI
//! address and a size.
//!
//! Invariants: no panic; every error is one non-empty line; what parses is valid (memory a
//! positive multiple of 4 KiB, 1-254 vCPUs, a timeout > 0, PCI addresses in range that print
//! and parse back to themselves).

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::config::{parse_size, Command, DeviceConfig, DeviceSource, PciBdf, MAX_CPUS};

fn one_line(e: &impl std::fmt::Display, what: &str, input: &[String]) {
    let text = e.to_string();
    assert!(!text.is_empty(), "{what}: empty error for {input:?}");
    assert!(
        !text.contains('\n'),
        "{what}: error of several lines for {input:?}: {text}"
    );
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

fuzz_target!(|data: &[u8]| {
    let args: Vec<String> = data
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let first = &args[..1];
    match args[0].parse::<DeviceConfig>() {
        Ok(dev) => check_device(&dev),
        Err(e) => one_line(&e, "--device", first),
    }
    match args[0].parse::<PciBdf>() {
        Ok(bdf) => check_bdf(&bdf),
        Err(e) => one_line(&e, "PCI address", first),
    }
    match parse_size(&args[0]) {
        Ok(size) => assert!(args[0].starts_with(|c: char| c.is_ascii_digit()), "{size}"),
        Err(e) => one_line(&e, "size", first),
    }
    match Command::parse(args.clone()) {
        Ok(Command::Run(cfg)) => {
            assert!(cfg.memory.size > 0 && cfg.memory.size % 4096 == 0, "{cfg:?}");
            assert!((1..=MAX_CPUS).contains(&cfg.cpus), "{cfg:?}");
            assert_ne!(cfg.timeout, Some(0));
            cfg.devices.iter().for_each(check_device);
        }
        // Help, version, and whatever else the command line grows (`vmm check`).
        Ok(_) => {}
        Err(e) => one_line(&e, "command line", &args),
    }
});
