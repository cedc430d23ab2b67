//! End-to-end boot tests: real Linux guests under `vmm` in the rig (see `rig.rs`; the
//! scenarios are in `tests/rig/l1/boot.sh`).

#[path = "rig.rs"]
mod rig;

use rig::{assert_ram, assert_ran, num};

const SCENARIOS: &str = "boot,boot-pvh,reboot,reboot-1cpu,mem4g,qemu-boot,qemu-pvh";

fn run() -> &'static rig::RigRun {
    rig::rig(SCENARIOS)
}

#[test]
fn bzimage_2cpu_512m_poweroff() {
    let f = run().facts("boot");
    assert_ran(f);
    assert_eq!(num(f, "cpus"), 2, "{f:?}");
    assert_ram(f, 512 * 1024);
}

#[test]
fn elf_vmlinux_through_pvh() {
    let f = run().facts("boot-pvh");
    assert_ran(f);
    assert_eq!(num(f, "cpus"), 2, "{f:?}");
    assert_ram(f, 512 * 1024);
}

#[test]
fn reboot_ends_vmm_with_status_0() {
    let f = run().facts("reboot");
    assert_ran(f);
    assert_eq!(num(f, "cpus"), 2, "{f:?}");
}

/// With one vCPU too (tells an SMP reboot problem from any other).
#[test]
fn reboot_with_1_cpu_ends_vmm_with_status_0() {
    let f = run().facts("reboot-1cpu");
    assert_ran(f);
    assert_eq!(num(f, "cpus"), 1, "{f:?}");
}

#[test]
fn four_gib_guest_sees_all_its_ram() {
    let f = run().facts("mem4g");
    assert_ran(f);
    assert_eq!(num(f, "cpus"), 1, "{f:?}");
    assert_ram(f, 4 * 1024 * 1024);
}

#[test]
fn vmm_uses_under_8_mib_outside_guest_ram() {
    let f = run().facts("boot");
    assert!(num(f, "rss_kb") < 8 * 1024, "{f:?}");
}

#[test]
fn qemu_boot_anchor() {
    let f = run().facts("qemu-boot");
    assert_ran(f);
    assert_eq!(num(f, "cpus"), 2, "{f:?}");
}

#[test]
fn qemu_pvh_anchor() {
    let f = run().facts("qemu-pvh");
    assert_ran(f);
    assert_eq!(num(f, "cpus"), 2, "{f:?}");
}
