//! End-to-end lifecycle tests in the rig (see `rig.rs`; the scenarios are in
//! `tests/rig/l1/life.sh`): managed binding, ordered teardown on signals and errors, vmm on a
//! terminal, and a soak of 20 boots with devices passed through, against the real kernel
//! VFIO of L1.

#[path = "rig.rs"]
mod rig;

use rig::{assert_all_delivered, assert_edu_works, assert_nvme_data, assert_ran, fact, num};
use rig::{signed, Facts};

const SCENARIOS: &str =
    "managed-poweroff,managed-sigterm,managed-error,managed-refuse,signals,tty,soak";

fn run() -> &'static rig::RigRun {
    rig::rig(SCENARIOS)
}

/// The lines vmm must print, built from its own types (never from copied text): "vmm: " and
/// the message, as vmm's main prints them.
mod expect {
    /// How vmm says that `signal` stopped it.
    pub fn stopped_by(signal: i32) -> String {
        let (_, message) = vmm::exit_status(&devices::ExitReason::Signal(signal));
        format!("vmm: {}", message.expect("a signal has a message"))
    }

    /// The refusal of a device that is bound to no driver (not to vfio-pci).
    pub fn not_bound(device: &str) -> String {
        let e = vfio::sysfs::Error::NotVfioBound {
            device: device.into(),
            driver: None,
        };
        format!("vmm: {e}")
    }

    /// The refusal of managed=on for 0000:01:01.0, whose group `group` also holds
    /// 0000:01:02.0 on uio_pci_generic.
    pub fn group_in_use(group: u32) -> String {
        let e = vfio::bind::Error::GroupInUse {
            device: "0000:01:01.0".into(),
            group,
            others: vec![("0000:01:02.0".into(), "uio_pci_generic".into())],
        };
        format!("vmm: {e}")
    }

    /// The DMA pinning progress update on a terminal.
    pub fn progress(done: u64, total: u64) -> String {
        vmm::passthrough::progress_text(done, total)
    }
}

/// vmm refused `scenario` with `want`: status 1, nothing on stdout, that one stderr line.
fn refused(scenario: &str, want: String) -> &'static Facts {
    let f = run().facts(scenario);
    assert_eq!(num(f, "status"), 1, "{f:?}");
    assert_eq!(run().texts(scenario, "stderr"), [want], "{f:?}");
    assert_eq!(run().texts(scenario, "stdout"), [""; 0], "{f:?}");
    f
}

/// The last of vmm's own lines under `key` of `scenario`.
fn last_vmm_line(scenario: &str, key: &str) -> &'static str {
    let lines = run().texts(scenario, key);
    lines
        .last()
        .copied()
        .unwrap_or_else(|| panic!("no vmm line"))
}

#[test]
fn managed_device_returns_to_its_driver_after_poweroff() {
    let f = run().facts("managed-poweroff");
    assert_ran(f);
    assert_nvme_data(f);
    assert_eq!(fact(f, "before"), "nvme");
    assert_eq!(fact(f, "after"), "nvme");
    assert_eq!(fact(f, "override"), "(null)", "driver_override restored");
}

#[test]
fn managed_device_returns_to_its_driver_after_sigterm() {
    let f = run().facts("managed-sigterm");
    assert_eq!(num(f, "held"), 1, "the guest never got going: {f:?}");
    assert_eq!(num(f, "status"), 128 + libc::SIGTERM as u64, "{f:?}");
    assert_eq!(
        last_vmm_line("managed-sigterm", "vmm"),
        expect::stopped_by(libc::SIGTERM)
    );
    assert_nvme_data(f);
    assert_eq!(fact(f, "before"), "nvme");
    assert_eq!(fact(f, "during"), "vfio-pci");
    assert_eq!(fact(f, "after"), "nvme");
}

/// The second device (the e1000e, on no driver) fails after the NVMe was moved.
#[test]
fn managed_device_returns_to_its_driver_after_a_vmm_error() {
    let f = refused("managed-error", expect::not_bound("0000:00:02.0"));
    assert_eq!(fact(f, "after"), "nvme");
    assert_eq!(fact(f, "override"), "(null)", "driver_override restored");
}

#[test]
fn managed_refuses_a_group_with_host_drivers_and_touches_nothing() {
    let group = num(run().facts("managed-refuse"), "group") as u32;
    let f = refused("managed-refuse", expect::group_in_use(group));
    assert_eq!(fact(f, "after"), "uio_pci_generic");
}

#[test]
fn sigint_sigterm_sighup_tear_down_and_the_device_works_after() {
    let s = "signals";
    let f = run().facts(s);
    let rows = run().rows(s, "signal");
    let names: Vec<&str> = rows.iter().map(|r| fact(r, "sig")).collect();
    assert_eq!(names, ["INT", "TERM", "HUP"]);
    for (r, sig) in rows.iter().zip([libc::SIGINT, libc::SIGTERM, libc::SIGHUP]) {
        let name = fact(r, "sig");
        assert_eq!(num(r, "held"), 1, "the guest never got going: {r:?}");
        assert_eq!(num(r, "status"), 128 + sig as u64, "{r:?}");
        let ms = num(r, "stop_ms");
        assert!(ms < 10_000, "{name} took {ms} ms to stop: {r:?}");
        let vmm = format!("vmm-{name}");
        assert_eq!(last_vmm_line(s, &vmm), expect::stopped_by(sig));
        assert_all_delivered(&run().texts(s, &format!("edu-{name}")), "msi", 100);
    }
    // The edu works for the next vmm.
    assert_ran(f);
    assert_edu_works(&run().texts(s, "edu"), 1);
}

#[test]
fn on_a_terminal_dma_pinning_shows_progress_and_the_terminal_is_restored() {
    let s = "tty";
    let f = run().facts(s);
    assert_ran(f);
    assert_edu_works(&run().texts(s, "edu"), 1);
    // vmm's lines as they came: the updates overwrite each other with CR, a newline ends them.
    let total = 3u64 << 30;
    let lines: Vec<Vec<&str>> = run()
        .texts(s, "vmm")
        .iter()
        .map(|l| l.split('\r').filter(|u| !u.is_empty()).collect())
        .collect();
    let any: std::collections::HashSet<String> = (0..=total >> 20)
        .map(|mib| expect::progress(mib << 20, total))
        .collect();
    // 3 GiB in 256 MiB chunks: the 0.0 update and one per chunk, the last at 3.0/3.0, which
    // ends its line.
    let updates = lines.iter().flatten().filter(|u| any.contains(**u)).count();
    assert!(updates >= 13, "{updates} updates: {lines:#?}");
    let last = expect::progress(total, total);
    let ended = lines.iter().filter(|l| l.last() == Some(&last.as_str()));
    assert_eq!(ended.count(), 1, "{lines:#?}");
    assert_eq!(fact(f, "lflag_before"), fact(f, "lflag_after"), "{f:?}");
    assert_eq!(fact(f, "iflag_before"), fact(f, "iflag_after"), "{f:?}");
}

/// One soak boot (a row of table boot, and its texts) went as its ending says: guest
/// poweroff (status 0), SIGTERM (ordered stop) or kill -9; its guest found the edu working
/// with all 200 interrupts and read the NVMe image.
fn soak_boot_ok(boot: &Facts, nvme_want: &str) {
    let (i, end) = (fact(boot, "i"), fact(boot, "end"));
    let status = match end {
        "poweroff" => 0,
        "term" => 128 + libc::SIGTERM,
        "kill" => 128 + libc::SIGKILL,
        _ => panic!("{boot:?}"),
    };
    assert_eq!(num(boot, "status"), status as u64, "{boot:?}");
    if end != "poweroff" {
        assert_eq!(num(boot, "held"), 1, "the guest never got going: {boot:?}");
    }
    let edu = run().texts("soak", &format!("edu-{i}"));
    assert_edu_works(&edu, 1);
    assert_all_delivered(&edu, fact(boot, "irq"), 200);
    assert_eq!(fact(boot, "nvme_sum"), nvme_want, "{boot:?}");
    if end == "term" {
        let vmm = run().texts("soak", &format!("vmm-{i}"));
        assert!(
            vmm.contains(&expect::stopped_by(libc::SIGTERM).as_str()),
            "{vmm:?}"
        );
    }
}

#[test]
fn soak_20_boots_poweroff_sigterm_kill9_no_leak() {
    let f = run().facts("soak");
    let want = fact(f, "nvme_want");
    assert_eq!(want.len(), 64, "the image's sha256: {f:?}");
    let rows = run().rows("soak", "boot");
    for boot in &rows {
        soak_boot_ok(boot, want);
    }
    let by_id = |id: &str| rows.iter().filter(|b| fact(b, "i") == id).count();
    assert_eq!(by_id("warmup"), 1, "{rows:?}");
    assert_eq!(by_id("final"), 1, "devices usable after the soak");
    let boots: Vec<_> = rows
        .iter()
        .filter(|b| fact(b, "i").parse::<u64>().is_ok())
        .collect();
    assert_eq!(num(f, "boots"), 20, "{f:?}");
    assert_eq!(boots.len(), 20, "{boots:?}");
    for end in ["poweroff", "term", "kill"] {
        assert!(boots.iter().any(|b| fact(b, "end") == end), "no {end} boot");
    }
    // No page stays pinned: the kernel's FOLL_PIN counters are back where they were, give or
    // take the few pages another L1 user pins on and off (0 or 6 seen); one leaked pin of
    // guest RAM would be 131072 pages.
    assert!(
        (signed(f, "pins_end") - signed(f, "pins0")).abs() <= 64,
        "{f:?}"
    );
    // Baseline after one warm-up boot. A leaked pin is the guest's 512 MiB; MemFree flips
    // between two levels ~50 MiB apart from boot to boot in L1, with no trend.
    let before = signed(f, "memfree0_kb");
    let after = signed(f, "memfree_end_kb");
    assert!(
        before - after < 128 * 1024,
        "MemFree {before} -> {after} kB: {f:?}"
    );
    // The counter sees VFIO's pins: the guest's 512 MiB (131072 pages; the difference of
    // two system-wide counters, so a few pages either way) while a guest runs, none after
    // any of the three endings.
    for boot in &boots {
        if fact(boot, "end") != "poweroff" {
            assert!(num(boot, "pinned_while_running") > 130_000, "{boot:?}");
        }
        assert!(signed(boot, "pinned_after").abs() <= 64, "{boot:?}");
    }
}
