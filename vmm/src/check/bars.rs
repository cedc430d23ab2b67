//! The BAR lines of `vmm check --device`: each BAR of each device with its size and whether a
//! run would place it (the 64-bit ones all together below the guest's physical address width,
//! as [`pci::plan_mmio64`] does for a run), and the expansion ROM (none, the device's, hidden
//! by `rombar=off`, or a `romfile=` that must be readable).
//!
//! The BARs come from sysfs (`resource`: one `start end flags` line per BAR, the ROM on the
//! seventh), so nothing is opened.

use super::Check;
use crate::config::{format_size, DeviceConfig};
use crate::passthrough::TooLarge;
use pci::{BarKind, PciResources, PciWindows};
use std::path::Path;

/// Linux `IORESOURCE_IO`.
const IORESOURCE_IO: u64 = 0x100;
/// Linux `IORESOURCE_MEM`.
const IORESOURCE_MEM: u64 = 0x200;
/// Linux `IORESOURCE_PREFETCH`.
const IORESOURCE_PREFETCH: u64 = 0x2000;
/// Linux `IORESOURCE_MEM_64`.
const IORESOURCE_MEM_64: u64 = 0x10_0000;
/// Line of the ROM in `resource`.
const ROM_LINE: usize = 6;

/// One BAR as sysfs shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SysBar {
    /// BAR index, 0-5.
    pub index: u8,
    /// Its type.
    pub kind: BarKind,
    /// Its size, a power of two.
    pub size: u64,
}

/// A device's BARs and ROM size (0: no ROM), from its sysfs `resource` file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct SysBars {
    /// Name for messages (the PCI address).
    pub name: String,
    /// BARs 0-5 that exist.
    pub bars: Vec<SysBar>,
    /// Size of the expansion ROM.
    pub rom: u64,
}

/// Parses a sysfs `resource` file.
pub(super) fn parse_resource(name: &str, text: &str) -> SysBars {
    let mut out = SysBars {
        name: name.to_string(),
        ..Default::default()
    };
    for (i, line) in text.lines().enumerate().take(ROM_LINE + 1) {
        let nums: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16).ok())
            .collect();
        let [start, end, flags] = nums[..] else {
            continue;
        };
        if flags == 0 || end < start {
            continue;
        }
        let size = (end - start + 1).next_power_of_two();
        if i == ROM_LINE {
            out.rom = size;
            continue;
        }
        let prefetchable = flags & IORESOURCE_PREFETCH != 0;
        let kind = match flags {
            f if f & IORESOURCE_IO != 0 => BarKind::Io,
            f if f & IORESOURCE_MEM_64 != 0 => BarKind::Mem64 { prefetchable },
            f if f & IORESOURCE_MEM != 0 => BarKind::Mem32 { prefetchable },
            _ => continue,
        };
        out.bars.push(SysBar {
            index: i as u8,
            kind,
            size,
        });
    }
    out
}

/// The device's BARs from sysfs; `None` when its `resource` file cannot be read.
pub(super) fn read(name: &str, dir: &Path) -> Option<SysBars> {
    let text = std::fs::read_to_string(dir.join("resource")).ok()?;
    Some(parse_resource(name, &text))
}

/// The guest's physical address width and the most KVM allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Width {
    /// What the guest gets (`phys-bits=` or KVM's).
    pub bits: u8,
    /// KVM's.
    pub kvm_bits: u8,
}

/// Where a 64-bit BAR (device index, BAR index) would go, or why it would not.
type Placed = (usize, u8, Result<u64, TooLarge>);

/// Where each 64-bit BAR of `devs` would go, or the refusal of the ones that would not fit
/// (the others placed without them), and the windows.
fn place_64bit(devs: &[SysBars], mem_size: u64, width: Width) -> (Vec<Placed>, PciWindows) {
    let mut wanted: Vec<(usize, SysBar)> = devs
        .iter()
        .enumerate()
        .flat_map(|(i, d)| d.bars.iter().map(move |b| (i, *b)))
        .filter(|(_, b)| matches!(b.kind, BarKind::Mem64 { .. }))
        .collect();
    let mut out = Vec::new();
    loop {
        let sizes: Vec<u64> = wanted.iter().map(|(_, b)| b.size).collect();
        match pci::plan_mmio64(mem_size, &sizes, 1u64 << width.bits) {
            Ok(plan) => {
                for ((i, b), addr) in wanted.iter().zip(plan.addrs) {
                    out.push((*i, b.index, Ok(addr)));
                }
                return (out, PciWindows::with_mmio64(plan.window));
            }
            Err(o) => {
                let (i, b) = wanted.remove(o.index);
                let refusal = TooLarge::new(
                    &devs[i].name,
                    b.index,
                    b.size,
                    o.start,
                    width.bits,
                    width.kvm_bits,
                );
                out.push((i, b.index, Err(refusal)));
            }
        }
    }
}

/// `128 GiB 64-bit prefetchable`, `256 bytes I/O`.
fn describe(bar: &SysBar) -> String {
    let size = format_size(bar.size);
    match bar.kind {
        BarKind::Io => format!("{size} I/O"),
        BarKind::Mem32 { prefetchable } => {
            format!(
                "{size} 32-bit{}",
                if prefetchable { " prefetchable" } else { "" }
            )
        }
        BarKind::Mem64 { prefetchable } => {
            format!(
                "{size} 64-bit{}",
                if prefetchable { " prefetchable" } else { "" }
            )
        }
        BarKind::Rom => format!("{size} ROM"),
    }
}

/// The BAR and ROM lines of each device of `devs` (in order; `cfgs` are their `--device`
/// options), for a guest of `mem_size` bytes of RAM and `width` (`None`: KVM could not be asked).
pub(super) fn checks(
    devs: &[SysBars],
    cfgs: &[&DeviceConfig],
    mem_size: u64,
    width: Option<Width>,
) -> Vec<Vec<Check>> {
    let (placed, windows) = match width {
        Some(w) => place_64bit(devs, mem_size, w),
        None => (Vec::new(), PciWindows::new(mem_size, 0)),
    };
    let mut others = PciResources::new(windows).ok();
    let mut out = Vec::new();
    for (i, dev) in devs.iter().enumerate() {
        let mut lines = Vec::new();
        for bar in &dev.bars {
            let name = format!("BAR {}", bar.index);
            let what = describe(bar);
            let is64 = matches!(bar.kind, BarKind::Mem64 { .. });
            let verdict = placed.iter().find(|p| p.0 == i && p.1 == bar.index);
            lines.push(match (width, verdict) {
                (None, _) => Check::warn(
                    name,
                    format!("{what}; whether it fits is unknown: KVM could not be asked"),
                    "fix the kvm check above",
                ),
                (Some(w), Some((_, _, Ok(addr)))) => Check::pass(
                    name,
                    format!(
                        "{what}, fits the guest's {}-bit physical addresses (at {addr:#x})",
                        w.bits
                    ),
                ),
                (Some(_), Some((_, _, Err(refusal)))) => {
                    Check::fail(name, refusal.problem.clone(), refusal.fix.clone())
                }
                (Some(_), None) if is64 => Check::pass(name, what),
                (Some(_), None) => match others.as_mut().map(|r| r.allocate(bar.kind, bar.size)) {
                    Some(Ok(addr)) => Check::pass(name, format!("{what}, fits (at {addr:#x})")),
                    _ => Check::fail(
                        name,
                        format!(
                            "{what}: no room in the guest's {} window",
                            window_name(bar.kind)
                        ),
                        "pass fewer devices with BARs of this kind",
                    ),
                },
            });
        }
        lines.push(rom_check(dev, cfgs.get(i).copied()));
        out.push(lines.into_iter().map(|c| c.nested(1)).collect());
    }
    out
}

fn window_name(kind: BarKind) -> &'static str {
    match kind {
        BarKind::Io => "I/O port",
        _ => "32-bit MMIO",
    }
}

/// The expansion ROM line: what the guest will see.
fn rom_check(dev: &SysBars, cfg: Option<&DeviceConfig>) -> Check {
    const NAME: &str = "expansion ROM";
    let own = match dev.rom {
        0 => "the device has none".to_string(),
        n => format!("the device has one of {}", format_size(n)),
    };
    match cfg {
        Some(c) if !c.rombar => Check::pass(NAME, format!("{own}; hidden (rombar=off)")),
        Some(
            c @ DeviceConfig {
                romfile: Some(path),
                ..
            },
        ) => match crate::passthrough::read_romfile(path) {
            Ok(bytes) => Check::pass(
                NAME,
                format!(
                    "{own}; the guest reads romfile {} ({})",
                    path.display(),
                    format_size(bytes.len() as u64)
                ),
            ),
            Err(reason) => {
                let e = crate::passthrough::Error::RomFile {
                    device: c.spec(),
                    path: path.display().to_string(),
                    reason,
                };
                let diag::Advice { problem, fix } = diag::Explain::advice(&e);
                Check::fail(NAME, problem, fix)
            }
        },
        _ => Check::pass(NAME, own),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// resource of an ivshmem-plain with a 128 GiB BAR2 as L1 shows it, plus a 32 KiB ROM.
    const IVSHMEM: &str = "\
0x00000000fea00000 0x00000000fea000ff 0x0000000000040200
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x000000a000000000 0x000000bfffffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000fea40000 0x00000000fea47fff 0x0000000000046200
";

    #[test]
    fn parses_sysfs_resources() {
        let d = parse_resource("0000:00:10.0", IVSHMEM);
        assert_eq!(
            d.bars,
            vec![
                SysBar {
                    index: 0,
                    kind: BarKind::Mem32 {
                        prefetchable: false
                    },
                    size: 256
                },
                SysBar {
                    index: 2,
                    kind: BarKind::Mem64 { prefetchable: true },
                    size: 128 * GIB
                },
            ]
        );
        assert_eq!(d.rom, 32 << 10);
        let io = parse_resource("x", "0x1000 0x101f 0x40101\n");
        assert_eq!(io.bars[0].kind, BarKind::Io);
        assert_eq!(
            parse_resource("x", "garbage\n\n"),
            SysBars {
                name: "x".into(),
                ..Default::default()
            }
        );
    }

    fn lines(devs: &[SysBars], width: Option<Width>) -> Vec<String> {
        checks(devs, &[], 512 << 20, width)
            .into_iter()
            .flatten()
            .map(|c| c.line())
            .collect()
    }

    #[test]
    fn bars_that_fit_and_one_that_does_not() {
        let big = parse_resource("0000:00:10.0", IVSHMEM);
        let w40 = Width {
            bits: 40,
            kvm_bits: 40,
        };
        assert_eq!(
            lines(std::slice::from_ref(&big), Some(w40)),
            vec![
                "PASS    BAR 0: 256 bytes 32-bit, fits (at 0xc0000000)",
                "PASS    BAR 2: 128 GiB 64-bit prefetchable, fits the guest's 40-bit physical \
                 addresses (at 0x2000000000)",
                "PASS    expansion ROM: the device has one of 32 KiB",
            ]
        );
        let w37 = Width {
            bits: 37,
            kvm_bits: 40,
        };
        let got = lines(&[big], Some(w37));
        assert_eq!(
            got[1],
            "FAIL    BAR 2: 0000:00:10.0: BAR 2 (128 GiB, 64-bit) does not fit below the guest's \
             37-bit physical address limit (128 GiB): the 64-bit BARs start above guest RAM at \
             0x100000000 and this one would end past 0x2000000000; raise phys-bits= in --memory \
             (this host's KVM allows up to 40 bits) or pass fewer or smaller BARs"
        );
        assert!(lines(&[SysBars::default()], None)[0].starts_with("PASS    expansion ROM: "));
    }

    #[test]
    fn the_others_still_fit_when_one_does_not() {
        let mk = |name: &str, gib: u64| SysBars {
            name: name.into(),
            bars: vec![SysBar {
                index: 2,
                kind: BarKind::Mem64 { prefetchable: true },
                size: gib * GIB,
            }],
            rom: 0,
        };
        let w = Width {
            bits: 38,
            kvm_bits: 38,
        };
        let got = lines(&[mk("a", 128), mk("b", 128), mk("c", 8)], Some(w));
        assert!(
            got[0].starts_with("PASS    BAR 2: 128 GiB") && got[0].ends_with("(at 0x2000000000)")
        );
        assert!(
            got[2].starts_with("FAIL    BAR 2: b: BAR 2 (128 GiB, 64-bit)"),
            "{}",
            got[2]
        );
        assert!(
            got[2].ends_with(
                "this host's KVM gives guests at most 38 bits: pass fewer or \
                 smaller BARs (shrink a resizable BAR on the host first) or use a host whose CPU \
                 has more physical address bits"
            ),
            "{}",
            got[2]
        );
        assert!(got[4].starts_with("PASS    BAR 2: 8 GiB") && got[4].ends_with("(at 0x200000000)"));
    }

    #[test]
    fn rom_lines_follow_the_options() {
        let dev = parse_resource("0000:00:12.0", IVSHMEM);
        let off: DeviceConfig = "vfio-pci,host=00:12.0,rombar=off".parse().unwrap();
        assert_eq!(
            rom_check(&dev, Some(&off)).line(),
            "PASS  expansion ROM: the device has one of 32 KiB; hidden (rombar=off)"
        );
        let missing: DeviceConfig = "vfio-pci,host=00:12.0,romfile=/nonexistent/vbios.rom"
            .parse()
            .unwrap();
        let line = rom_check(&dev, Some(&missing)).line();
        assert!(
            line.starts_with(
                "FAIL  expansion ROM: romfile '/nonexistent/vbios.rom' of --device 0000:00:12.0: \
                 cannot read it: "
            ),
            "{line}"
        );
        let file = std::env::temp_dir().join(format!("vmm-check-rom-{}", std::process::id()));
        std::fs::write(&file, [0x55, 0xaa]).unwrap();
        let given: DeviceConfig = format!("vfio-pci,host=00:12.0,romfile={}", file.display())
            .parse()
            .unwrap();
        let line = rom_check(&dev, Some(&given)).line();
        let _ = std::fs::remove_file(&file);
        assert!(line.ends_with("(2 bytes)"), "{line}");
    }
}
