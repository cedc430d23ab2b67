//! End-to-end hotplug tests in the rig (see `rig.rs`; the scenarios are in
//! `tests/rig/l1/hotplug.sh`): vmm runs with `--api-socket` and no `--device`, and devices of
//! the emulated host are added to and removed from its running, unmodified Debian guest
//! through the API (the guest's acpiphp does the rest), against the real kernel VFIO of L1.
//! One L1 boot for all of them.

#[path = "rig.rs"]
mod rig;

use diag::Explain;
use rig::{assert_all_delivered, assert_edu_works, assert_ran, fact, num, signed, Facts};
use serde_json::Value;

const SCENARIOS: &str = "hp-edu,hp-nvme,hp-cycles,hp-group,hp-boot,hp-early,hp-refuse,hp-kill";

fn run() -> &'static rig::RigRun {
    rig::rig(SCENARIOS)
}

/// The one text under `key` of `scenario`.
fn one_text(scenario: &str, key: &str) -> &'static str {
    let texts = run().texts(scenario, key);
    assert_eq!(texts.len(), 1, "{scenario} {key}: {texts:?}");
    texts[0]
}

/// The one text under `key` of `scenario`, as JSON.
fn json(scenario: &str, key: &str) -> Value {
    let text = one_text(scenario, key);
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{scenario} {key}: {e}: {text}"))
}

/// The facts with `prefix` before their keys (such as a second run's), without it.
fn prefixed(f: &Facts, prefix: &str) -> Facts {
    f.iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone())))
        .collect()
}

/// The guest address of BAR0 the edu driver reports (`bar0=[mem 0xSTART-0xEND]`).
fn guest_bar0(edu: &[&str]) -> u64 {
    let line = edu
        .iter()
        .find(|l| l.contains("bar0=[mem "))
        .unwrap_or_else(|| panic!("no bar0 in {edu:?}"));
    let start = line.split("bar0=[mem 0x").nth(1).unwrap();
    u64::from_str_radix(start.split('-').next().unwrap(), 16).unwrap()
}

/// `vm.info`'s one device: its id, host address, guest address and interrupt mechanism, and
/// its BARs (kind, size, address).
fn info_device(info: &Value, id: &str, host: &str, bdf: &str) -> Value {
    assert_eq!(info["state"], "Running", "{info}");
    let devices = info["devices"].as_array().expect("devices");
    assert_eq!(devices.len(), 1, "{info}");
    let d = devices[0].clone();
    assert_eq!(d["id"], id, "{info}");
    assert_eq!(d["host"], host, "{info}");
    assert_eq!(d["bdf"], bdf, "{info}");
    assert!(d["iommu_group"].is_u64(), "{info}");
    let modes = ["none", "intx", "msi", "msix"];
    assert!(
        modes.contains(&d["interrupts"].as_str().unwrap_or("")),
        "{info}"
    );
    d
}

/// `vm.add-device`'s answer: the id asked for and a guest address on bus 0.
fn added(answer: &Value, id: &str) -> String {
    assert_eq!(answer["id"], id, "{answer}");
    let bdf = answer["bdf"].as_str().expect("bdf").to_string();
    assert!(
        bdf.starts_with("0000:00:") && bdf.ends_with(".0"),
        "{answer}"
    );
    bdf
}

/// The edu added to a running guest binds its driver by itself and works: ident, liveness,
/// DMA and 1000 MSIs.
#[test]
fn hot_added_edu_binds_and_works() {
    let s = "hp-edu";
    let f = run().facts(s);
    assert_eq!(num(f, "held"), 1, "the guest never got going: {f:?}");
    assert_eq!(num(f, "add_status"), 0, "{:?}", run().texts(s, "add-err"));
    let bdf = added(&json(s, "add"), "edu0");
    assert_eq!(num(f, "probed"), 1, "{f:?}");
    let bound = rig::parse_facts(one_text(s, "bound"));
    assert_eq!(fact(&bound, "dev"), bdf);
    assert_eq!(fact(&bound, "driver"), "edu_test");
    let edu = run().texts(s, "edu");
    assert_edu_works(&edu, 1);
    assert_all_delivered(&edu, "msi", 1000);
    let dev = rig::parse_facts(edu[0]);
    assert_eq!(fact(&dev, "dev"), bdf, "{edu:?}");
}

/// `vm.info` lists the added edu: id, host and guest address, its 1 MiB BAR0 where the guest
/// has it, its interrupt mechanism.
#[test]
fn info_lists_the_added_device() {
    let s = "hp-edu";
    let f = run().facts(s);
    assert_eq!(num(f, "info_status"), 0, "{f:?}");
    let bdf = added(&json(s, "add"), "edu0");
    let d = info_device(&json(s, "info"), "edu0", "0000:00:03.0", &bdf);
    let bars = d["bars"].as_array().expect("bars");
    assert_eq!(bars.len(), 1, "{d}");
    assert_eq!(bars[0]["index"], 0, "{d}");
    assert_eq!(bars[0]["kind"], "mem32", "{d}");
    assert_eq!(bars[0]["size"], 1 << 20, "{d}");
    let guest = guest_bar0(&run().texts(s, "edu"));
    assert_eq!(bars[0]["address"], guest, "{d}");
}

/// Removed: answered once the guest let go, the guest's device is gone, the host device is
/// on vfio-pci, and a second vmm takes it at once (the first still running) and works with
/// it.
#[test]
fn hot_removed_edu_is_gone_and_a_second_vmm_takes_it() {
    let s = "hp-edu";
    let f = run().facts(s);
    assert_eq!(
        num(f, "remove_status"),
        0,
        "{:?}",
        run().texts(s, "remove-err")
    );
    assert_eq!(run().texts(s, "remove"), [""; 0], "204: nothing on stdout");
    assert_eq!(num(f, "gone"), 1, "{f:?}");
    let bdf = added(&json(s, "add"), "edu0");
    let gone = rig::parse_facts(one_text(s, "gone"));
    assert_eq!(fact(&gone, "dev"), bdf);
    assert_eq!(fact(f, "driver_after"), "vfio-pci");
    assert_eq!(num(f, "first_alive"), 1, "the first vmm ran on: {f:?}");
    assert_ran(&prefixed(f, "second_"));
    assert_edu_works(&run().texts(s, "edu-second"), 1);
}

/// `vm.power-button`: the guest powers itself off and vmm ends with status 0.
#[test]
fn power_button_ends_the_guest_cleanly() {
    let s = "hp-edu";
    let f = run().facts(s);
    assert_eq!(num(f, "power_status"), 0, "{f:?}");
    assert_eq!(num(f, "killed"), 0, "the guest did not power off: {f:?}");
    assert_eq!(num(f, "status"), 0, "{f:?}");
    let pressed = run().texts(s, "power");
    assert_eq!(pressed.len(), 1, "the guest saw one press: {pressed:?}");
}

/// The NVMe (MSI-X) added, read, removed, added again and read again; then with
/// managed=on, moved from L1's nvme driver to vfio-pci for the add and back after the
/// remove.
#[test]
fn hot_added_nvme_reads_its_disk_twice_and_managed_moves_back() {
    let s = "hp-nvme";
    let f = run().facts(s);
    assert_eq!(num(f, "held"), 1, "the guest never got going: {f:?}");
    let want = fact(f, "nvme_want");
    assert_eq!(want.len(), 64, "the image's sha256: {f:?}");
    let rounds = run().rows(s, "round");
    let names: Vec<&str> = rounds.iter().map(|r| fact(r, "round")).collect();
    assert_eq!(names, ["1", "2", "managed"]);
    for r in &rounds {
        let round = fact(r, "round");
        assert_eq!(
            num(r, "add"),
            0,
            "{r:?} {:?}",
            run().texts(s, &format!("add-{round}-err"))
        );
        assert_eq!(fact(r, "during"), "vfio-pci", "{r:?}");
        assert_eq!(fact(r, "nvme_sum"), want, "{r:?}");
        assert_eq!(num(r, "remove"), 0, "{r:?}");
        assert_eq!(num(r, "gone"), 1, "{r:?}");
        let after = if round == "managed" {
            "nvme"
        } else {
            "vfio-pci"
        };
        assert_eq!(fact(r, "after"), after, "{r:?}");
        let bdf = added(&json(s, &format!("add-{round}")), "nvme0");
        let d = info_device(
            &json(s, &format!("info-{round}")),
            "nvme0",
            "0000:00:04.0",
            &bdf,
        );
        assert_eq!(
            d["interrupts"], "msix",
            "the guest's nvme driver uses MSI-X: {d}"
        );
        let bars = d["bars"].as_array().expect("bars");
        assert!(
            bars.iter()
                .any(|b| b["kind"] == "mem64" && b["size"] == 16 << 10),
            "{d}"
        );
    }
    assert_eq!(fact(f, "before"), "nvme");
    assert_eq!(fact(f, "after"), "nvme");
    assert_eq!(fact(f, "override"), "(null)", "driver_override restored");
}

/// A managed=on NVMe still in the guest at vm.shutdown goes back to L1's nvme driver once
/// vmm has ended (status 0).
#[test]
fn managed_device_in_the_guest_at_shutdown_goes_back_to_its_driver() {
    let f = run().facts("hp-nvme");
    assert_eq!(num(f, "last_add"), 0, "{f:?}");
    assert_eq!(fact(f, "last_during"), "vfio-pci", "{f:?}");
    assert_eq!(fact(f, "last_sum"), fact(f, "nvme_want"), "{f:?}");
    assert_eq!(num(f, "shutdown_status"), 0, "{f:?}");
    assert_eq!(num(f, "status"), 0, "{f:?}");
    assert_eq!(fact(f, "last_after"), "nvme", "{f:?}");
    assert_eq!(fact(f, "last_override"), "(null)", "{f:?}");
}

/// 20 add/remove cycles of the edu in one guest: each works, and vmm's open files and the
/// kernel's pinned pages end where they started. The first add opens the VM's VFIO container
/// and its KVM-VFIO device, which stay for the VM's life (KVM allows one KVM-VFIO device per
/// VM): those two files, and nothing else, are open after the cycles that were not before.
#[test]
fn twenty_add_remove_cycles_leak_no_files_and_no_pins() {
    let s = "hp-cycles";
    let f = run().facts(s);
    assert_eq!(num(f, "held"), 1, "the guest never got going: {f:?}");
    let cycles = run().rows(s, "cycle");
    assert_eq!(num(f, "cycles"), 20, "{f:?}");
    assert_eq!(cycles.len(), 20, "{cycles:?}");
    let fds = num(cycles[0], "fds");
    for c in &cycles {
        let i = fact(c, "i");
        for k in ["add", "remove"] {
            assert_eq!(num(c, k), 0, "{c:?}");
        }
        assert_eq!(num(c, "probed"), 1, "{c:?}");
        assert_eq!(num(c, "gone"), 1, "{c:?}");
        let edu = run().texts(s, &format!("edu-{i}"));
        assert_edu_works(&edu, 1);
        assert_all_delivered(&edu, "msi", 100);
        // 512 MiB of guest RAM pinned while the edu is in (the difference of two
        // system-wide counters: a few pages either way), none after.
        assert!(num(c, "pinned") > 130_000, "{c:?}");
        assert!(signed(c, "pins_after").abs() <= 64, "{c:?}");
        assert_eq!(num(c, "fds"), fds, "open files grow: {cycles:?}");
    }
    assert_eq!(num(f, "fds_end"), fds, "{f:?}");
    assert!(
        (signed(f, "pins_end") - signed(f, "pins0")).abs() <= 64,
        "{f:?}"
    );
    let mut more: Vec<&str> = run().texts(s, "fds_end");
    for before in run().texts(s, "fds0") {
        if let Some(i) = more.iter().position(|l| *l == before) {
            more.remove(i);
        }
    }
    more.sort();
    assert_eq!(more, ["/dev/vfio/vfio", "anon_inode:kvm-vfio"], "{f:?}");
    assert_eq!(num(f, "fds0") + 2, fds, "{f:?}");
    assert_eq!(num(f, "status"), 0, "{f:?}");
}

/// The two edus of one IOMMU group and the edu of another, added, then removed one at a
/// time: after each removal the edus left still work (DMA through the container, MSIs), so a
/// group stays in the container while one of its devices is in and other groups are not
/// disturbed; guest RAM stays pinned until the last device leaves; a device of the group is
/// added again once the container is empty; vm.shutdown with it in ends cleanly, the device
/// stays on vfio-pci and nothing stays pinned.
#[test]
fn devices_of_one_group_and_of_another_come_and_go_one_at_a_time() {
    let s = "hp-group";
    let f = run().facts(s);
    assert_eq!(num(f, "held"), 1, "the guest never got going: {f:?}");
    let steps = run().rows(s, "step");
    let names: Vec<&str> = steps.iter().map(|r| fact(r, "step")).collect();
    assert_eq!(
        names,
        [
            "add-a",
            "add-b",
            "add-c",
            "remove-a",
            "remove-b",
            "remove-c",
            "add-again"
        ]
    );
    let mut bdfs = Vec::new();
    for id in ["a", "b", "c"] {
        bdfs.push(added(&json(s, &format!("add-{id}")), id));
    }
    assert_eq!(num(f, "probed"), 1, "{f:?}");
    for step in &steps {
        assert_eq!(num(step, "status"), 0, "{step:?}");
        let name = fact(step, "step");
        if name.starts_with("remove") {
            assert_eq!(num(step, "gone"), 1, "{step:?}");
        }
        if name.starts_with("remove") || name == "add-again" {
            assert_eq!(num(step, "reprobed"), 1, "{step:?}");
        }
        // Guest RAM stays pinned while any device is in, and only then.
        let pinned = signed(step, "pinned");
        match name {
            "remove-c" => assert!(pinned.abs() <= 64, "{step:?}"),
            _ => assert!(pinned > 130_000, "{step:?}"),
        }
    }
    // The edus left after each removal, probed again by the guest, in order.
    let left = |key: &str| -> Vec<String> {
        let lines = run().texts(s, key);
        assert_edu_works(&lines, lines.iter().filter(|l| l.contains(" dev=")).count());
        lines
            .iter()
            .map(|l| rig::parse_facts(l))
            .filter_map(|f| f.get("dev").cloned())
            .collect()
    };
    assert_eq!(left("edu-added"), bdfs);
    assert_eq!(left("edu-remove-a"), bdfs[1..]);
    assert_eq!(left("edu-remove-b"), bdfs[2..]);
    for (key, n) in [("edu-added", 3), ("edu-remove-a", 2), ("edu-remove-b", 1)] {
        let irqs = rig::edu_irq_lines(&run().texts(s, key));
        assert_eq!(irqs.len(), n, "{key}: {irqs:?}");
        for irq in irqs {
            let counts = (
                num(&irq, "handled"),
                num(&irq, "lost"),
                num(&irq, "spurious"),
            );
            assert_eq!(counts, (100, 0, 0), "{key}: {irq:?}");
        }
    }
    assert_eq!(added(&json(s, "add-again"), "a"), bdfs[0]);
    let again = run().texts(s, "edu-add-again");
    assert_edu_works(&again, 1);
    assert_all_delivered(&again, "msi", 100);
    assert_eq!(num(f, "status"), 0, "{f:?}");
    assert_eq!(fact(f, "driver_after"), "vfio-pci", "{f:?}");
    assert!(
        (signed(f, "pins_end") - signed(f, "pins0")).abs() <= 64,
        "{f:?}"
    );
}

/// A device given with --device at boot is removed through the API by its id (its host
/// address) and can be added again.
#[test]
fn a_boot_device_is_removed_and_added_again() {
    let s = "hp-boot";
    let f = run().facts(s);
    assert_eq!(num(f, "held"), 1, "the guest never got going: {f:?}");
    let boot = run().texts(s, "edu-boot");
    assert_edu_works(&boot, 1);
    assert_all_delivered(&boot, "msi", 100);
    assert_eq!(num(f, "info_status"), 0, "{f:?}");
    let bdf = fact(&rig::parse_facts(boot[0]), "dev").to_string();
    info_device(&json(s, "info"), "0000:00:03.0", "0000:00:03.0", &bdf);
    assert_eq!(
        num(f, "remove_status"),
        0,
        "{:?}",
        run().texts(s, "remove-err")
    );
    assert_eq!(num(f, "gone"), 1, "{f:?}");
    assert_eq!(fact(&rig::parse_facts(one_text(s, "gone")), "dev"), bdf);
    assert_eq!(num(f, "add_status"), 0, "{:?}", run().texts(s, "add-err"));
    let again = run().texts(s, "edu-again");
    assert_edu_works(&again, 1);
    assert_all_delivered(&again, "msi", 100);
}

/// Paused, the guest cannot let go of a device: the remove is answered 504 after
/// REMOVE_PATIENCE and the device stays; resumed, the guest ejects it late and vmm releases
/// it then. A second pause or resume is 409.
#[test]
fn a_remove_the_guest_does_not_answer_times_out_and_the_device_stays() {
    let s = "hp-boot";
    let f = run().facts(s);
    assert_eq!(answer(s, "pause"), (204, Value::Null));
    assert_eq!(answer(s, "pause-again").0, 409);
    let (status, body) = answer(s, "remove-paused");
    assert_eq!(status, 504, "{body}");
    let problem = body["problem"].as_str().unwrap_or_default();
    let patience = vmm::hotplug::REMOVE_PATIENCE.as_secs();
    assert!(problem.contains("edu0"), "{body}");
    assert!(problem.contains(&format!("{patience} s")), "{body}");
    let paused = json(s, "info-paused");
    assert_eq!(paused["state"], "Paused", "{paused}");
    assert_eq!(
        paused["devices"][0]["id"], "edu0",
        "the device stays: {paused}"
    );
    assert_eq!(answer(s, "resume"), (204, Value::Null));
    assert_eq!(answer(s, "resume-again").0, 409);
    assert_eq!(
        num(f, "gone_late"),
        1,
        "the guest let go once resumed: {f:?}"
    );
    let resumed = json(s, "info-resumed");
    assert_eq!(resumed["state"], "Running", "{resumed}");
    assert_eq!(
        resumed["devices"],
        serde_json::json!([]),
        "released: {resumed}"
    );
    assert_eq!(num(f, "status"), 0, "{f:?}");
}

/// The edu added while the guest boots, at its first line and between its PCI scan and its
/// GED driver: the guest survives both and its driver finds the edu working.
#[test]
fn a_device_added_while_the_guest_boots_reaches_it() {
    let rows = run().rows("hp-early", "early");
    let at: Vec<&str> = rows.iter().map(|r| fact(r, "at")).collect();
    assert_eq!(at, ["Linux_version", "PF_INET_protocol_family"]);
    for r in &rows {
        assert_eq!(num(r, "seen"), 1, "the moment never came: {r:?}");
        assert_eq!(num(r, "add"), 0, "{r:?}");
        assert_eq!(
            num(r, "held"),
            1,
            "the guest did not get to its init: {r:?}"
        );
        assert_eq!(num(r, "probed"), 1, "the guest never found the edu: {r:?}");
        assert_eq!(num(r, "status"), 0, "{r:?}");
    }
}

/// The HTTP status and JSON body of request `name` of `scenario`.
fn answer(scenario: &str, name: &str) -> (u64, Value) {
    let s = scenario;
    let rows = run().rows(s, "request");
    let row = rows
        .iter()
        .find(|r| fact(r, "name") == name)
        .unwrap_or_else(|| panic!("no request {name}: {rows:?}"));
    assert_eq!(
        num(row, "write_failed"),
        0,
        "vmm closed while it was sent: {row:?}"
    );
    let status = num(row, "status");
    let body = run().texts(s, &format!("body-{name}")).join("\n");
    let body = match body.is_empty() {
        true => Value::Null,
        false => serde_json::from_str(&body).unwrap_or_else(|e| panic!("{name}: {e}: {body}")),
    };
    (status, body)
}

/// An error body as vmm builds it from the error `e`: the line the command line would print,
/// its problem and its fix.
fn error_body(e: &impl Explain) -> Value {
    let advice = e.advice();
    serde_json::json!({
        "error": advice.to_string(),
        "problem": advice.problem,
        "fix": advice.fix,
    })
}

/// What `vm.add-device` (or any endpoint) answers a body the API refuses before it reaches
/// the VM: [`vmm::api::route`]'s reply to the bytes the scenario sent.
fn routed(name: &str, path: &str) -> (u64, Value) {
    let sent = one_text("hp-refuse", &format!("sent-{name}"));
    let reply = vmm::api::route("PUT", path, sent.as_bytes()).expect_err("a refusal");
    (u64::from(reply.status), reply.body.unwrap_or_default())
}

/// A device whose group is not viable, or that is on no driver: 400 and the error of the
/// refusal, with its problem and fix; the guest runs on.
#[test]
fn hot_add_refusals_name_the_problem_and_the_fix() {
    use vfio::sysfs::Error as Sysfs;
    let f = run().facts("hp-refuse");
    let not_viable = Sysfs::NotViable {
        group: num(f, "group") as u32,
        blockers: vec![("0000:01:02.0".into(), "uio_pci_generic".into())],
    };
    assert_eq!(
        answer("hp-refuse", "not-viable"),
        (400, error_body(&not_viable))
    );
    let not_bound = Sysfs::NotVfioBound {
        device: "0000:00:02.0".into(),
        driver: None,
    };
    assert_eq!(
        answer("hp-refuse", "not-bound"),
        (400, error_body(&not_bound))
    );
    assert_eq!(num(f, "alive"), 1, "{f:?}");
}

/// Malformed JSON (400), an oversized body (413, answered while the client still sends it),
/// an unknown id (404), a client that hangs up mid-body (nothing happens; the next request is
/// answered), a second remove of the same id (404): vmm and its guest run on, and the edu
/// is added, works and is removed after them.
#[test]
fn bad_requests_get_their_status_and_the_guest_runs_on() {
    let s = "hp-refuse";
    let f = run().facts(s);
    assert_eq!(num(f, "held"), 1, "the guest never got going: {f:?}");
    assert_eq!(
        answer("hp-refuse", "bad-json"),
        routed("bad-json", "/api/v1/vm.add-device")
    );
    assert_eq!(answer("hp-refuse", "bad-json").0, 400);
    // The server's own refusal of that head.
    let head = format!(
        "PUT /api/v1/vm.add-device HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        num(f, "oversize_bytes")
    );
    let (mut client, mut server) = std::os::unix::net::UnixStream::pair().unwrap();
    std::io::Write::write_all(&mut client, head.as_bytes()).unwrap();
    let Err(vmm::api::http::ReadError::Refused(want)) = vmm::api::http::read_request(&mut server)
    else {
        panic!("the head is accepted")
    };
    assert_eq!(
        answer("hp-refuse", "oversize"),
        (u64::from(want.status), want.body.unwrap())
    );
    assert_eq!(answer("hp-refuse", "oversize").0, 413);
    for (name, id) in [("unknown-id", "nope"), ("remove-again", "edu0")] {
        let (status, body) = answer("hp-refuse", name);
        assert_eq!(status, 404, "{name}: {body}");
        let problem = body["problem"].as_str().unwrap_or_default();
        assert!(problem.contains(&format!("{id:?}")), "{name}: {body}");
        assert!(
            !body["fix"].as_str().unwrap_or_default().is_empty(),
            "{body}"
        );
    }
    let (status, ping) = answer("hp-refuse", "after-hangup");
    assert_eq!(status, 200, "{ping}");
    assert_eq!(ping["version"], env!("CARGO_PKG_VERSION"), "{ping}");
    assert_eq!(num(f, "alive"), 1, "{f:?}");
    let (status, add) = answer("hp-refuse", "add");
    assert_eq!(status, 200, "{add}");
    let bdf = added(&add, "edu0");
    assert_eq!(num(f, "probed"), 1, "{f:?}");
    let edu = run().texts(s, "edu");
    assert_edu_works(&edu, 1);
    assert_eq!(fact(&rig::parse_facts(edu[0]), "dev"), bdf);
    // The same device again, and another device under its id.
    let already = vmm::passthrough::Error::AlreadyAttached {
        device: "0000:00:03.0".into(),
        id: "edu0".into(),
    };
    assert_eq!(
        answer("hp-refuse", "already-in"),
        (400, error_body(&already))
    );
    let same_id = vmm::passthrough::Error::SameId { id: "edu0".into() };
    assert_eq!(answer("hp-refuse", "same-id"), (400, error_body(&same_id)));
    assert_eq!(answer("hp-refuse", "remove"), (204, Value::Null));
    assert_eq!(num(f, "gone"), 1, "{f:?}");
    assert_eq!(answer("hp-refuse", "shutdown"), (204, Value::Null));
    assert_eq!(num(f, "status"), 0, "{f:?}");
}

/// SIGTERM and kill -9 while a hot-add pins guest RAM and while a hot-remove waits for the
/// guest: vmm stops as the signal says, no page stays pinned, the edu stays on vfio-pci and
/// the next vmm takes it (each case's vmm adds it; a last one boots with it).
#[test]
fn sigterm_and_kill_9_during_hotplug_leave_the_device_usable() {
    let s = "hp-kill";
    let f = run().facts(s);
    let cases = run().rows(s, "case");
    let names: Vec<&str> = cases.iter().map(|c| fact(c, "case")).collect();
    assert_eq!(
        names,
        ["term-add", "kill-add", "term-remove", "kill-remove"]
    );
    for c in &cases {
        let name = fact(c, "case");
        let (sig, signal) = match fact(c, "sig") {
            "TERM" => (libc::SIGTERM, "SIGTERM"),
            _ => (libc::SIGKILL, "SIGKILL"),
        };
        assert_eq!(num(c, "killed"), 0, "{c:?}");
        assert_eq!(num(c, "status"), 128 + sig as u64, "{signal}: {c:?}");
        // The signal came while the request was in flight: the client had no answer yet.
        let kill_ms: f64 = fact(c, "kill_ms").parse().unwrap();
        let sent_ms: f64 = fact(c, "sent_ms").parse().unwrap();
        assert!(sent_ms <= kill_ms, "{c:?}");
        match (fact(c, "reply"), name) {
            // SIGTERM is served after the add it interrupted; a removal that waits for the
            // guest is answered that vmm is going away.
            ("200", "term-add") | ("503", "term-remove") | ("none", _) => {}
            (reply, _) => panic!("{name}: answer {reply}: {c:?}"),
        }
        if let Ok(answered) = fact(c, "answered_ms").parse::<f64>() {
            assert!(answered >= kill_ms, "answered before the signal: {c:?}");
        }
        if name.ends_with("-add") {
            assert!(
                num(c, "pinning") >= 4096,
                "not yet pinning guest RAM: {c:?}"
            );
        }
        assert!(signed(c, "pins_after").abs() <= 64, "{c:?}");
        assert_eq!(fact(c, "driver"), "vfio-pci", "{c:?}");
        if sig == libc::SIGTERM {
            let (_, message) = vmm::exit_status(&devices::ExitReason::Signal(sig));
            let want = format!("vmm: {}", message.expect("a signal has a message"));
            let lines = run().texts(s, &format!("vmm-{name}"));
            assert!(lines.contains(&want.as_str()), "{lines:?}");
        }
    }
    assert_ran(f);
    assert_edu_works(&run().texts(s, "edu"), 1);
    assert!(
        (signed(f, "pins_end") - signed(f, "pins0")).abs() <= 64,
        "{f:?}"
    );
}
