//! Shared harness of the end-to-end tests: runs `tests/rig/run.sh` once per test binary
//! with that binary's scenarios (L0 = QEMU/TCG, L1 = Debian 6.1 with KVM, L2 = the guest;
//! see `tests/rig/README.md`) and hands each `#[test]` the `RIG-RESULT` facts of its scenario.
//!
//! Missing prerequisites make the tests FAIL, never skip: `run.sh` installs them itself
//! (setup.sh, needs root and the Debian package mirror).

// Each test binary uses only some of these helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Facts of one scenario: key=value pairs of its RIG-RESULT line.
pub type Facts = HashMap<String, String>;

pub struct RigRun {
    results: HashMap<String, Facts>,
    /// Every line run.sh printed (RIG-* lines), for failure messages and extra facts.
    pub stdout: String,
    report: String,
}

fn run_rig(scenarios: &str) -> Result<RigRun, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("tests/rig/run.sh");
    let out = Command::new(&script)
        .arg(scenarios)
        .env("VMM_BIN", env!("CARGO_BIN_EXE_vmm"))
        .current_dir(&root)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    let mut report = format!(
        "run.sh {scenarios} exited with {}\n--- stdout ---\n{stdout}--- stderr (tail) ---\n{}\n",
        out.status,
        tail.join("\n")
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
        let facts = parse_facts(rest);
        if let Some(name) = facts.get("scenario") {
            results.insert(name.clone(), facts);
        }
    }
    Ok(RigRun {
        results,
        stdout,
        report,
    })
}

/// `k1=v1 k2=v2 ...` into a map.
pub fn parse_facts(line: &str) -> Facts {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The run of `scenarios` (once per test binary).
pub fn rig(scenarios: &str) -> &'static RigRun {
    static RUN: OnceLock<Result<RigRun, String>> = OnceLock::new();
    match RUN.get_or_init(|| run_rig(scenarios)) {
        Ok(run) => run,
        Err(e) => panic!("rig could not run: {e}"),
    }
}

impl RigRun {
    /// The facts of `scenario`, asserting that it reported ok=1.
    pub fn facts(&self, scenario: &str) -> &Facts {
        let Some(f) = self.results.get(scenario) else {
            panic!("no RIG-RESULT for scenario {scenario}\n{}", self.report);
        };
        assert_eq!(
            f.get("ok").map(String::as_str),
            Some("1"),
            "scenario {scenario} failed: {f:?}\n{}",
            self.report
        );
        f
    }

    /// Lines of the run's stdout starting with `prefix`.
    pub fn lines(&self, prefix: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with(prefix))
            .collect()
    }
}

/// A numeric fact.
pub fn num(f: &Facts, key: &str) -> u64 {
    f.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("RIG-RESULT has no numeric {key}: {f:?}"))
}

/// Guest RAM as the guest sees it (top-level "System RAM" of /proc/iomem) must be within
/// 1 MiB below what was asked for.
pub fn assert_ram(f: &Facts, want_kb: u64) {
    let ram = num(f, "ram_kb");
    assert!(
        (want_kb - 1024..=want_kb).contains(&ram),
        "ram_kb={ram} not within 1 MiB below {want_kb}: {f:?}"
    );
}
