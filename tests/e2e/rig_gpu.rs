//! End-to-end tests of GPU-class passthrough in the rig (see `rig.rs`; the scenarios are in
//! `tests/rig/l1/gpu.sh`, the devices L0 adds for them in `tests/rig/l0-gpu.sh`): 64-bit BARs
//! of 128 GiB and 8 GiB (QEMU's ivshmem-plain on sparse files), an expansion ROM (QEMU's edu
//! with `romfile=`) read through sysfs, peer-to-peer DMA (edu into an ivshmem BAR, before and
//! after the guest moves it), hugepage guest RAM with the NVMe, the refusals and `vmm check`.
//! All in one L1 boot.

#[path = "rig.rs"]
mod rig;

use rig::{assert_nvme_data, assert_ram, assert_ran, fact, num, parse_facts, Facts};
use vmm::config::{format_size, Command, VmConfig};
use vmm::memory::{pages_needed, HugePageSize};
use vmm::passthrough::{Error as Passthrough, TooLarge};

const SCENARIOS: &str = "gpu-refuse-bar,gpu-refuse-huge,gpu-refuse-romfile,gpu-check,gpu-rom,\
gpu-rom-off,gpu-romfile,gpu-p2p,gpu-bar-8g,gpu-bar-128g,gpu-bar-both,gpu-huge,gpu-huge-kill9";

fn run() -> &'static rig::RigRun {
    rig::rig(SCENARIOS)
}

const GIB: u64 = 1 << 30;
/// The ivshmem-plain with the 128 GiB BAR in L1 (l0-gpu.sh).
const GPU_BIG: &str = "0000:00:10.0";
/// ivshmem-plain's large BAR: BAR2, 64-bit prefetchable.
const IVSHMEM_BAR: u8 = 2;
/// Guest RAM of the hugepage scenarios.
const HUGE_RAM: u64 = 2 * GIB;

/// The one row (or text line, parsed) of `all` whose `key` is `value`.
fn one<'a>(all: &'a [Facts], key: &str, value: &str) -> &'a Facts {
    let found: Vec<_> = all.iter().filter(|f| fact(f, key) == value).collect();
    assert_eq!(found.len(), 1, "one with {key}={value}: {all:#?}");
    found[0]
}

/// The texts under `key` of `scenario`, each a guest line of `k=v` words, parsed.
fn guest_lines(scenario: &str, key: &str) -> Vec<Facts> {
    run()
        .texts(scenario, key)
        .iter()
        .map(|l| parse_facts(l))
        .collect()
}

// --- large BARs ---

/// The markers at the start, middle and end of the BAR of `gib` GiB (l0-gpu.sh wrote them
/// into its backing file), and the value the guest wrote at a quarter, all as the guest read
/// them (busybox devmem: upper-case hex); the BAR naturally aligned.
fn assert_bar(f: &Facts, gib: u64) {
    let want = |base: u64| format!("0x{:08X}", base + gib);
    assert_eq!(fact(f, "start"), want(0x600d_0000), "{f:?}");
    assert_eq!(fact(f, "mid"), want(0x600d_1000), "{f:?}");
    assert_eq!(fact(f, "end"), want(0x600d_2000), "{f:?}");
    assert_eq!(fact(f, "readback"), want(0x7e57_0000), "{f:?}");
    let base = u64::from_str_radix(fact(f, "base").trim_start_matches("0x"), 16).unwrap();
    assert_eq!(base % (gib * GIB), 0, "naturally aligned: {f:?}");
}

/// The guest of `scenario` ran with ivshmem devices whose BARs are of `gibs` GiB, and read
/// and wrote each BAR right. Its GPU-BAR lines.
fn bars_work(scenario: &str, gibs: &[u64]) -> Vec<Facts> {
    assert_ran(run().facts(scenario));
    let bars = guest_lines(scenario, "bar");
    let mut sizes: Vec<u64> = bars.iter().map(|b| num(b, "gib")).collect();
    sizes.sort_unstable();
    let mut want = gibs.to_vec();
    want.sort_unstable();
    assert_eq!(sizes, want, "one line per device: {bars:#?}");
    for b in &bars {
        assert_bar(b, num(b, "gib"));
    }
    bars
}

/// What the guests wrote into the BAR of `gib` GiB reached its backing file in L0 (run.sh's
/// rows after L0 ended; od: lower-case hex), and the marker at its start is still there.
fn assert_file(gib: u64) {
    let files: Vec<Facts> = run().rows("l0", "gpu-file").into_iter().cloned().collect();
    let f = one(&files, "gib", &gib.to_string());
    assert_eq!(
        fact(f, "quarter"),
        format!("0x{:08x}", 0x7e57_0000 + gib),
        "{f:?}"
    );
    assert_eq!(
        fact(f, "start"),
        format!("0x{:08x}", 0x600d_0000 + gib),
        "{f:?}"
    );
}

#[test]
fn bar_of_128_gib() {
    bars_work("gpu-bar-128g", &[128]);
    assert_file(128);
}

#[test]
fn bar_of_8_gib() {
    bars_work("gpu-bar-8g", &[8]);
    assert_file(8);
}

#[test]
fn both_bars_in_one_guest() {
    bars_work("gpu-bar-both", &[128, 8]);
}

/// Placing a 128 GiB BAR costs seconds, not minutes: the guest reaches init within twice the
/// time it takes with the 8 GiB one (mapping the BAR for DMA on the vCPU took 63 s here, the
/// guest reaching init after 89 s instead of about 20), and turning its decoding on is quick.
#[test]
fn placing_a_128_gib_bar_takes_seconds() {
    let big = run().facts("gpu-bar-128g");
    let mid = run().facts("gpu-bar-8g");
    let (b, m) = (num(big, "init_ms"), num(mid, "init_ms"));
    assert!(b < 2 * m, "128 GiB: {b} ms to init, 8 GiB: {m} ms");
    let bars = bars_work("gpu-bar-128g", &[128]);
    let enable = num(&bars[0], "enable_ms");
    assert!(enable < 15_000, "{enable} ms to enable decoding");
}

// --- expansion ROM ---

/// The device's own ROM reads the same under vmm and QEMU, as the file L0 gave the edu, and
/// vmm reads it within 1.5 times QEMU's time.
#[test]
fn rom_reads_as_the_file_and_as_fast_as_qemu() {
    let f = run().facts("gpu-rom");
    let want = fact(f, "want_sum");
    assert_eq!(want.len(), 64, "the file's sha256: {f:?}");
    let rows: Vec<Facts> = run().rows("gpu-rom", "rom").into_iter().cloned().collect();
    let (vmm, qemu) = (one(&rows, "tool", "vmm"), one(&rows, "tool", "qemu"));
    for r in [vmm, qemu] {
        assert_ran(r);
        assert_eq!(fact(r, "present"), "1", "{r:?}");
        assert_eq!(fact(r, "sum"), want, "{r:?}");
        assert_eq!(num(r, "bytes"), 32 << 10, "{r:?}");
    }
    let (v, q) = (num(vmm, "read_us"), num(qemu, "read_us"));
    assert!(v > 0 && q > 0, "timed: {rows:#?}");
    assert!(v * 2 <= q * 3, "vmm {v} us per read, QEMU {q} us");
}

#[test]
fn rombar_off_hides_the_rom() {
    let f = run().facts("gpu-rom-off");
    assert_ran(f);
    assert_eq!(fact(f, "present"), "0", "{f:?}");
}

/// romfile= replaces the device's ROM (32 KiB) with the file (48 KiB, in a BAR of 64).
#[test]
fn romfile_serves_the_file() {
    let f = run().facts("gpu-romfile");
    assert_ran(f);
    assert_eq!(fact(f, "present"), "1", "{f:?}");
    assert_eq!(fact(f, "file_sum").len(), 64, "{f:?}");
    assert_eq!(fact(f, "sum"), fact(f, "file_sum"), "{f:?}");
    assert_eq!(num(f, "bytes"), num(f, "file_bytes"), "{f:?}");
    assert_eq!(num(f, "bytes"), 48 << 10, "{f:?}");
}

// --- peer-to-peer DMA ---

/// The edu copies RAM -> BAR and BAR -> RAM right, before and after the guest moves the BAR.
#[test]
fn peer_to_peer_dma_before_and_after_a_move() {
    assert_ran(run().facts("gpu-p2p"));
    let lines = guest_lines("gpu-p2p", "p2p");
    let first = one(&lines, "phase", "first");
    let moved = one(&lines, "phase", "moved");
    for p in [first, moved] {
        assert_eq!(
            (fact(p, "to_bar"), fact(p, "from_bar"), fact(p, "err")),
            ("ok", "ok", "0"),
            "{p:?}"
        );
    }
    assert_ne!(fact(first, "bar"), fact(moved, "bar"), "the BAR moved");
    assert_eq!(lines.len(), 2, "no failed phase: {lines:#?}");
}

// --- hugepage RAM ---

/// The pool of 2 MiB pages the guest takes.
fn huge_pages() -> u64 {
    pages_needed(HUGE_RAM, HugePageSize::Size2M)
}

#[test]
fn hugepage_ram_with_nvme_and_the_pool_back() {
    let f = run().facts("gpu-huge");
    assert_ran(f);
    assert_eq!(num(f, "cpus"), 2, "{f:?}");
    assert_ram(f, HUGE_RAM >> 10);
    assert_nvme_data(f);
    assert!(num(f, "pool_free_before") >= huge_pages(), "{f:?}");
    assert_eq!(
        num(f, "pool_free_before"),
        num(f, "pool_free_after"),
        "{f:?}"
    );
}

#[test]
fn hugepage_pool_back_after_kill_9() {
    let f = run().facts("gpu-huge-kill9");
    assert_eq!(num(f, "held"), 1, "the guest never read the disk: {f:?}");
    assert_eq!(num(f, "status"), 128 + libc::SIGKILL as u64, "{f:?}");
    assert_nvme_data(f);
    assert!(num(f, "used_while_running") >= huge_pages(), "{f:?}");
    assert_eq!(
        num(f, "pool_free_before"),
        num(f, "pool_free_after"),
        "{f:?}"
    );
}

// --- refusals ---

/// The configuration vmm got in `scenario` (its `arg` texts).
fn vm_config(scenario: &str) -> VmConfig {
    let args = run().texts(scenario, "arg");
    match Command::parse(&args) {
        Ok(Command::Run(cfg)) => cfg,
        other => panic!("{args:?} parse: {other:?}"),
    }
}

/// vmm refused `scenario` before any guest ran: status 1, nothing on stdout, one line on
/// stderr: `want` as vmm's main prints an error.
fn refused(scenario: &str, want: impl std::fmt::Display) {
    let f = run().facts(scenario);
    assert_eq!(num(f, "status"), 1, "{f:?}");
    assert_eq!(run().texts(scenario, "stderr"), [format!("vmm: {want}")]);
    assert_eq!(run().texts(scenario, "stdout"), [""; 0], "{f:?}");
}

/// The refusal of the 128 GiB BAR for a guest of `mem` bytes with a `bits`-bit physical
/// address width, on a host whose KVM allows `kvm_bits` (the facts give the BAR's size).
fn bar_too_large(f: &Facts, mem: u64, bits: u8) -> Passthrough {
    let size = num(f, "bar2_bytes");
    let kvm_bits = num(f, "phys_bits") as u8;
    let overflow = pci::plan_mmio64(mem, &[size], 1 << bits).expect_err("it must not fit");
    Passthrough::BarTooLarge(TooLarge::new(
        GPU_BIG,
        IVSHMEM_BAR,
        size,
        overflow.start,
        bits,
        kvm_bits,
    ))
}

/// 37 bits (128 GiB) of guest physical addresses cannot hold a 128 GiB BAR above RAM.
#[test]
fn bar_too_large_for_the_address_width_is_refused() {
    let s = "gpu-refuse-bar";
    let cfg = vm_config(s);
    assert_eq!(cfg.devices[0].spec(), GPU_BIG);
    let bits = cfg.memory.phys_bits.expect("phys-bits=");
    refused(s, bar_too_large(run().facts(s), cfg.memory.size, bits));
}

/// The pool vmm read in L1 (the facts) as a sysfs tree of its own, which
/// `vmm::memory::check_pool` judges as vmm did.
#[test]
fn short_hugepage_pool_is_refused() {
    let s = "gpu-refuse-huge";
    let f = run().facts(s);
    let cfg = vm_config(s);
    let page = cfg.memory.hugepages.expect("hugepages=on");
    let root = std::env::temp_dir().join(format!("rig-gpu-pool-{}", std::process::id()));
    let dir = root.join(format!("hugepages-{}kB", page.bytes() >> 10));
    std::fs::create_dir_all(&dir).unwrap();
    for (file, key) in [
        ("nr_hugepages", "pool_total"),
        ("free_hugepages", "pool_free"),
        ("resv_hugepages", "pool_reserved"),
    ] {
        std::fs::write(dir.join(file), format!("{}\n", num(f, key))).unwrap();
    }
    let default = match num(f, "hugepagesize_kb") << 10 {
        n if n == HugePageSize::Size2M.bytes() => Some(HugePageSize::Size2M),
        n if n == HugePageSize::Size1G.bytes() => Some(HugePageSize::Size1G),
        _ => None,
    };
    let verdict = vmm::memory::check_pool(&cfg.memory, &root, default);
    let _ = std::fs::remove_dir_all(&root);
    refused(s, verdict.expect_err("the pool is short"));
}

/// A romfile= that L1 does not have: the reason is the one vmm gives for any missing file.
#[test]
fn unreadable_romfile_is_refused() {
    let s = "gpu-refuse-romfile";
    let cfg = vm_config(s);
    let dev = &cfg.devices[0];
    let path = dev.romfile.as_ref().expect("romfile=");
    let missing = std::env::temp_dir().join(format!("rig-gpu-{}-missing.rom", std::process::id()));
    let reason = vmm::passthrough::read_romfile(&missing).expect_err("no such file");
    let e = Passthrough::RomFile {
        device: dev.spec(),
        path: path.display().to_string(),
        reason,
    };
    refused(s, e);
}

// --- vmm check ---

/// vmm check reports each BAR with its size and where it would go, and the ROM of each
/// device; with a 37-bit guest the 128 GiB BAR fails with the run's refusal.
#[test]
fn check_reports_bars_and_rom() {
    let s = "gpu-check";
    let f = run().facts(s);
    assert_eq!(num(f, "status"), 0, "{f:?}");
    let lines = run().texts(s, "line");
    let size = num(f, "bar2_bytes");
    let bits = num(f, "phys_bits") as u8;
    let plan = pci::plan_mmio64(512 << 20, &[size], 1 << bits).expect("it fits");
    let bar = format!(
        "PASS    BAR {IVSHMEM_BAR}: {} 64-bit prefetchable, fits the guest's {bits}-bit \
         physical addresses (at {:#x})",
        format_size(size),
        plan.addrs[0]
    );
    for want in [
        bar.as_str(),
        // The edu's.
        "PASS    expansion ROM: the device has one of 32 KiB",
        // The ivshmem's.
        "PASS    expansion ROM: the device has none",
    ] {
        assert!(lines.contains(&want), "no '{want}' in {lines:#?}");
    }
    assert_eq!(num(f, "narrow_status"), 1, "{f:?}");
    let narrow = run().texts(s, "narrow");
    let fails: Vec<_> = narrow.iter().filter(|l| l.starts_with("FAIL")).collect();
    let refusal = bar_too_large(f, 512 << 20, 37);
    assert_eq!(
        fails,
        [&format!("FAIL    BAR {IVSHMEM_BAR}: {refusal}")],
        "{narrow:#?}"
    );
}
