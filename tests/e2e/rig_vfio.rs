//! End-to-end VFIO passthrough tests in the rig (see `rig.rs`; the scenarios are in
//! `tests/rig/l1/vfio.sh`): the L2 guest drives devices of the emulated host through vmm,
//! against the real kernel VFIO of L1, and vmm refuses what it cannot pass through.

#[path = "rig.rs"]
mod rig;

use rig::{assert_all_delivered, assert_edu_works, assert_nvme_data, assert_ran, fact, num};

const SCENARIOS: &str = "vfio-edu,vfio-edu-long,vfio-edu-sysfs,vfio-edu-devices,vfio-group,\
vfio-nvme,vfio-not-viable,vfio-bad-bdf,vfio-no-device,vfio-not-bound,vfio-memlock,vfio-kill9,\
demo,qemu-vfio-edu";

fn run() -> &'static rig::RigRun {
    rig::rig(SCENARIOS)
}

/// The line vmm must refuse `scenario` with, built from the error it must return (never from
/// copied text): "vmm: " and the error's message. Numbers only L1 knows (a group, a limit)
/// are the scenario's facts; the arguments vmm got are its `arg` texts.
fn expected_refusal(scenario: &str) -> String {
    use vfio::sysfs::Error as Sysfs;
    let f = run().facts(scenario);
    let args: Vec<String> = run()
        .texts(scenario, "arg")
        .iter()
        .map(|a| a.to_string())
        .collect();
    let message = match scenario {
        // The second edu of the bridge group is on uio_pci_generic (the bridge is no blocker).
        "vfio-not-viable" => Sysfs::NotViable {
            group: num(f, "group") as u32,
            blockers: vec![("0000:01:02.0".into(), "uio_pci_generic".into())],
        }
        .to_string(),
        "vfio-bad-bdf" => match vmm::config::Command::parse(args.clone()) {
            Err(e) => e.to_string(),
            Ok(cmd) => panic!("{args:?} parse: {cmd:?}"),
        },
        "vfio-no-device" => Sysfs::NoSuchDevice {
            address: "0000:00:09.0".into(),
            dir: std::path::Path::new(vfio::sysfs::SYSFS_ROOT).join("bus/pci/devices"),
        }
        .to_string(),
        "vfio-not-bound" => Sysfs::NotVfioBound {
            device: "0000:00:02.0".into(),
            driver: None,
        }
        .to_string(),
        "vfio-memlock" => {
            let at = args.iter().position(|a| a == "--memory").expect("--memory");
            let memory = vmm::config::parse_size(&args[at + 1]).unwrap();
            let limit = vfio::host::MemlockLimit::Bytes(num(f, "memlock_kib") << 10);
            limit.check(memory).unwrap_err().to_string()
        }
        _ => unreachable!("{scenario} is no refusal"),
    };
    format!("vmm: {message}")
}

/// vmm refused `scenario` before any guest ran: status 1, nothing on stdout, one line on
/// stderr, the expected one.
fn refused(scenario: &str) {
    let f = run().facts(scenario);
    assert_eq!(num(f, "status"), 1, "{f:?}");
    assert_eq!(
        run().texts(scenario, "stderr"),
        [expected_refusal(scenario)],
        "{f:?}"
    );
    assert_eq!(run().texts(scenario, "stdout"), [""; 0], "{f:?}");
}

/// The guest ran and its edu driver found `devices` edus working: ident, liveness, DMA
/// RAM -> edu -> RAM with matching bytes.
fn edu_ok(scenario: &str, devices: usize) {
    let f = run().facts(scenario);
    assert_ran(f);
    assert_edu_works(&run().texts(scenario, "edu"), devices);
}

#[test]
fn edu_by_short_bdf() {
    edu_ok("vfio-edu", 1);
}

#[test]
fn edu_by_full_bdf() {
    edu_ok("vfio-edu-long", 1);
}

#[test]
fn edu_by_sysfs_bus_path() {
    edu_ok("vfio-edu-sysfs", 1);
}

#[test]
fn edu_by_sysfs_devices_path() {
    edu_ok("vfio-edu-devices", 1);
}

/// tests/rig/demo: the guest (2 vCPUs, its console shown) drives the edu, MSI included.
#[test]
fn demo_guest_drives_the_edu() {
    edu_ok("demo", 1);
    assert_all_delivered(&run().texts("demo", "edu"), "msi", 1000);
}

/// The anchor: the same guest under QEMU's vfio-pci.
#[test]
fn qemu_edu_anchor() {
    edu_ok("qemu-vfio-edu", 1);
}

#[test]
fn bridge_group_passed_together() {
    edu_ok("vfio-group", 2);
}

#[test]
fn nvme_data_matches_the_image() {
    let f = run().facts("vfio-nvme");
    assert_ran(f);
    assert_nvme_data(f);
}

#[test]
fn device_usable_again_after_kill_9() {
    let f = run().facts("vfio-kill9");
    assert_eq!(num(f, "held"), 1, "the first vmm's guest never ran: {f:?}");
    edu_ok("vfio-kill9", 1);
}

/// Each vmm thread of a running VM is under its seccomp filter; KVM's own kernel workers in
/// its thread group (kvm-*) are not vmm's.
#[test]
fn every_vmm_thread_runs_under_seccomp() {
    let mut threads: Vec<(&str, u64)> = run()
        .rows("vfio-kill9", "thread")
        .into_iter()
        .map(|t| (fact(t, "name"), num(t, "seccomp")))
        .filter(|t| !t.0.starts_with("kvm-"))
        .collect();
    threads.sort();
    let filter = u64::from(libc::SECCOMP_MODE_FILTER);
    assert_eq!(threads, [("vcpu0", filter), ("vmm", filter)]);
}

#[test]
fn group_not_viable_names_the_device_and_driver() {
    refused("vfio-not-viable");
}

#[test]
fn malformed_bdf_is_rejected() {
    refused("vfio-bad-bdf");
}

#[test]
fn missing_device_is_rejected() {
    refused("vfio-no-device");
}

#[test]
fn memlock_too_low_says_how_much_is_needed() {
    refused("vfio-memlock");
}

#[test]
fn device_not_bound_to_vfio_pci_is_rejected() {
    refused("vfio-not-bound");
}
