//! End-to-end boot tests: real Linux guests under `vmm`, nested inside the emulated host of
//! `tests/rig` (L0 = QEMU/TCG, L1 = Debian 6.1 with KVM, L2 = the guest). See
//! `tests/rig/run.sh` for how it works.
//!
//! The rig runs ONCE for this file (the boots share one L1); each `#[test]` then checks the
//! `RIG-RESULT` line of its scenario. Missing prerequisites make the tests FAIL, never skip:
//! `run.sh` installs them itself (setup.sh, needs root and the Debian package mirror).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

const SCENARIOS: &str = "boot,reboot,mem4g,qemu-boot";

struct RigRun {
    /// RIG-RESULT facts per scenario (last line wins).
    results: HashMap<String, HashMap<String, String>>,
    /// What the run printed, for failure messages.
    report: String,
}

fn run_rig() -> Result<RigRun, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("tests/rig/run.sh");
    let out = Command::new(&script)
        .arg(SCENARIOS)
        .env("VMM_BIN", env!("CARGO_BIN_EXE_vmm"))
        .current_dir(&root)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr_tail: Vec<&str> = stderr.lines().rev().take(40).collect();
    let stderr_tail: Vec<&str> = stderr_tail.into_iter().rev().collect();
    let mut report = format!(
        "run.sh {SCENARIOS} exited with {}\n--- stdout ---\n{stdout}--- stderr (tail) ---\n{}\n",
        out.status,
        stderr_tail.join("\n")
    );
    if std::env::var_os("CI").is_none() {
        report.push_str(
            "hint: the rig needs root (apt-get via tests/rig/setup.sh); full L0 console logs are \
             in tests/rig/out/console-*.log\n",
        );
    }
    let mut results = HashMap::new();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("RIG-RESULT ") else {
            continue;
        };
        let facts: HashMap<String, String> = rest
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Some(name) = facts.get("scenario") {
            results.insert(name.clone(), facts);
        }
    }
    Ok(RigRun { results, report })
}

fn rig() -> &'static RigRun {
    static RUN: OnceLock<Result<RigRun, String>> = OnceLock::new();
    match RUN.get_or_init(run_rig) {
        Ok(run) => run,
        Err(e) => panic!("rig could not run: {e}"),
    }
}

/// The facts of `scenario`, asserting that it reported ok=1.
fn facts(scenario: &str) -> &'static HashMap<String, String> {
    let run = rig();
    let Some(f) = run.results.get(scenario) else {
        panic!("no RIG-RESULT for scenario {scenario}\n{}", run.report);
    };
    assert_eq!(
        f.get("ok").map(String::as_str),
        Some("1"),
        "scenario {scenario} failed: {f:?}\n{}",
        run.report
    );
    f
}

fn num(f: &HashMap<String, String>, key: &str) -> u64 {
    f.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("RIG-RESULT has no numeric {key}: {f:?}"))
}

/// Guest RAM as the guest sees it (top-level "System RAM" of /proc/iomem) must be within
/// 1 MiB below what was asked for.
fn assert_ram(f: &HashMap<String, String>, want_kb: u64) {
    let ram = num(f, "ram_kb");
    assert!(
        (want_kb - 1024..=want_kb).contains(&ram),
        "ram_kb={ram} not within 1 MiB below {want_kb}: {f:?}"
    );
}

#[test]
fn boot_2cpu_512m_poweroff() {
    let f = facts("boot");
    assert_eq!(num(f, "status"), 0, "{f:?}");
    assert_eq!(num(f, "cpus"), 2, "{f:?}");
    assert_ram(f, 512 * 1024);
}

#[test]
fn reboot_ends_vmm() {
    let f = facts("reboot");
    assert_eq!(num(f, "status"), 0, "{f:?}");
    assert_eq!(num(f, "cpus"), 2, "{f:?}");
}

#[test]
fn mem4g() {
    let f = facts("mem4g");
    assert_eq!(num(f, "status"), 0, "{f:?}");
    assert_eq!(num(f, "cpus"), 1, "{f:?}");
    assert_ram(f, 4 * 1024 * 1024);
}

#[test]
fn qemu_boot_anchor() {
    let f = facts("qemu-boot");
    assert_eq!(num(f, "status"), 0, "{f:?}");
    assert_eq!(num(f, "cpus"), 2, "{f:?}");
}
