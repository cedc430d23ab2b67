//! End-to-end VFIO passthrough tests in the rig (see `rig.rs`): the L2 guest drives
//! devices of the emulated host through vmm, against the real kernel VFIO of L1.

#[path = "rig.rs"]
mod rig;

use rig::num;

const SCENARIOS: &str = "vfio-edu,vfio-edu-long,vfio-edu-sysfs,vfio-edu-devices,vfio-group,\
vfio-nvme,vfio-not-viable,vfio-bad-bdf,vfio-no-device,vfio-not-bound,vfio-memlock,vfio-kill9";

fn run() -> &'static rig::RigRun {
    rig::rig(SCENARIOS)
}

/// The edu checks (ident 0x010000ed, liveness inversion, DMA RAM -> edu -> RAM with matching
/// bytes) are made inside L1 by l1-init's edu_check; ok=1 means they all held.
fn edu_ok(scenario: &str) {
    let f = run().facts(scenario);
    assert_eq!(num(f, "status"), 0, "{f:?}");
}

#[test]
fn edu_by_short_bdf() {
    edu_ok("vfio-edu");
}

#[test]
fn edu_by_full_bdf() {
    edu_ok("vfio-edu-long");
}

#[test]
fn edu_by_sysfs_bus_path() {
    edu_ok("vfio-edu-sysfs");
}

#[test]
fn edu_by_sysfs_devices_path() {
    edu_ok("vfio-edu-devices");
}

#[test]
fn bridge_group_passed_together() {
    edu_ok("vfio-group");
}

#[test]
fn nvme_data_matches_the_image() {
    let f = run().facts("vfio-nvme");
    assert_eq!(num(f, "status"), 0, "{f:?}");
    let check = run().lines("RIG-NVME-CHECK");
    assert_eq!(check.len(), 1, "{check:?}");
    let facts = rig::parse_facts(check[0]);
    assert_eq!(facts.get("got"), facts.get("want"), "{check:?}");
    assert_eq!(facts["want"].len(), 64, "{check:?}");
}

#[test]
fn device_usable_again_after_kill_9() {
    edu_ok("vfio-kill9");
}

/// The expected messages are compared exactly inside L1 (l1-init's expect_fail): one line on
/// stderr, status 1.
#[test]
fn group_not_viable_names_the_device_and_driver() {
    assert_eq!(num(run().facts("vfio-not-viable"), "status"), 1);
}

#[test]
fn malformed_bdf_is_rejected() {
    assert_eq!(num(run().facts("vfio-bad-bdf"), "status"), 1);
}

#[test]
fn missing_device_is_rejected() {
    assert_eq!(num(run().facts("vfio-no-device"), "status"), 1);
}

#[test]
fn memlock_too_low_says_how_much_is_needed() {
    assert_eq!(num(run().facts("vfio-memlock"), "status"), 1);
}

#[test]
fn device_not_bound_to_vfio_pci_is_rejected() {
    assert_eq!(num(run().facts("vfio-not-bound"), "status"), 1);
}
