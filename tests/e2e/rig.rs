//! Shared harness of the end-to-end tests: runs `tests/rig/run.sh` once per test binary
//! with that binary's scenarios (L0 = QEMU/TCG, L1 = Debian 6.1 with KVM, L2 = the guest;
//! see `tests/rig/README.md`) and hands each `#[test]` the facts of its scenario.
//!
//! The scenarios (`tests/rig/l1/*.sh`) print facts and never judge them; the tests hold every
//! verdict. A scenario's facts, as `tests/rig/l1/lib.sh` prints them:
//! - `RIG-RESULT scenario=S ok=1 k=v ...`: single-valued facts ([`RigRun::facts`]); `ok=1`
//!   only says that the scenario ran to its end, `ok=0 reason=R` that it could not;
//! - `RIG-ROW scenario=S table=T k=v ...`: rows of a table ([`RigRun::rows`]);
//! - `RIG-TEXT scenario=S key=K TEXT`: lines of text, verbatim but for `\\` and `\r`
//!   ([`RigRun::texts`]).
//!
//! `RIG-SCENARIO name=S` starts a scenario: rows and texts printed for S before (by an
//! attempt in which L1 froze; run.sh reruns it) are dropped.
//!
//! Missing prerequisites make the tests FAIL, never skip: `run.sh` installs them itself
//! (setup.sh, needs root and the Debian package mirror).

// Each test binary uses only some of these helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Facts of one scenario: key=value pairs of its RIG-RESULT line, or of one RIG-ROW line.
pub type Facts = HashMap<String, String>;

/// What one scenario printed.
#[derive(Debug, Default)]
struct Scenario {
    /// Its RIG-RESULT line, once it ended.
    result: Option<Facts>,
    /// (table, row), in order.
    rows: Vec<(String, Facts)>,
    /// (key, text), in order.
    texts: Vec<(String, String)>,
}

pub struct RigRun {
    scenarios: HashMap<String, Scenario>,
    /// Every line run.sh printed (RIG-* lines), for failure messages.
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
    Ok(RigRun {
        scenarios: parse_output(&stdout),
        stdout,
        report,
    })
}

/// The scenarios' facts in run.sh's output.
fn parse_output(stdout: &str) -> HashMap<String, Scenario> {
    let mut scenarios: HashMap<String, Scenario> = HashMap::new();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("RIG-SCENARIO name=") {
            let name = rest.split(' ').next().unwrap_or_default();
            scenarios.insert(name.to_string(), Scenario::default());
        } else if let Some(rest) = line.strip_prefix("RIG-RESULT scenario=") {
            let (name, facts) = rest.split_once(' ').unwrap_or((rest, ""));
            scenarios.entry(name.to_string()).or_default().result = Some(parse_facts(facts));
        } else if let Some((name, table, facts)) = labelled(line, "RIG-ROW", "table") {
            let row = (table.to_string(), parse_facts(facts));
            scenarios
                .entry(name.to_string())
                .or_default()
                .rows
                .push(row);
        } else if let Some((name, key, text)) = labelled(line, "RIG-TEXT", "key") {
            let text = (key.to_string(), unescape(text));
            scenarios
                .entry(name.to_string())
                .or_default()
                .texts
                .push(text);
        }
    }
    scenarios
}

/// `PREFIX scenario=S LABEL=L REST` as (S, L, REST); REST is empty when nothing follows L.
fn labelled<'a>(line: &'a str, prefix: &str, label: &str) -> Option<(&'a str, &'a str, &'a str)> {
    let rest = line.strip_prefix(prefix)?.strip_prefix(" scenario=")?;
    let (name, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix(label)?.strip_prefix('=')?;
    let (value, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    Some((name, value, rest))
}

/// A RIG-TEXT's text as it was: `\\` is a backslash, `\r` a carriage return.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some('\\')) => {
                out.push('\\');
                chars.next();
            }
            ('\\', Some('r')) => {
                out.push('\r');
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
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
    fn scenario(&self, name: &str) -> &Scenario {
        self.scenarios
            .get(name)
            .unwrap_or_else(|| panic!("scenario {name} never started\n{}", self.report))
    }

    /// The facts of `scenario`'s RIG-RESULT line, asserting that it ran to its end (ok=1).
    pub fn facts(&self, scenario: &str) -> &Facts {
        let Some(f) = &self.scenario(scenario).result else {
            panic!("no RIG-RESULT for scenario {scenario}\n{}", self.report);
        };
        assert_eq!(
            f.get("ok").map(String::as_str),
            Some("1"),
            "scenario {scenario} could not run: {f:?}\n{}",
            self.report
        );
        f
    }

    /// The rows of `table` of `scenario`, in order.
    pub fn rows(&self, scenario: &str, table: &str) -> Vec<&Facts> {
        let s = self.scenario(scenario);
        s.rows
            .iter()
            .filter(|r| r.0 == table)
            .map(|r| &r.1)
            .collect()
    }

    /// The texts under `key` of `scenario`, in order.
    pub fn texts(&self, scenario: &str, key: &str) -> Vec<&str> {
        let s = self.scenario(scenario);
        s.texts
            .iter()
            .filter(|t| t.0 == key)
            .map(|t| t.1.as_str())
            .collect()
    }
}

/// A fact, which must be there.
pub fn fact<'a>(f: &'a Facts, key: &str) -> &'a str {
    f.get(key)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no {key} in {f:?}"))
}

/// A numeric fact.
pub fn num(f: &Facts, key: &str) -> u64 {
    f.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key} in {f:?}"))
}

/// A numeric fact that may be negative (a difference of counters).
pub fn signed(f: &Facts, key: &str) -> i64 {
    f.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key} in {f:?}"))
}

/// The run's facts (`run_l2` in tests/rig/l1/lib.sh) say the VMM exited with status 0 by
/// itself (L1's timeout did not have to stop it) and the guest reached its init and reported
/// what it saw.
pub fn assert_ran(f: &Facts) {
    assert_eq!(fact(f, "l1_timeout"), "0", "the VMM hung: {f:?}");
    assert_eq!(fact(f, "status"), "0", "{f:?}");
    num(f, "cpus");
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

/// The edu driver's result lines of one boot (texts such as `EDU-RESULT dev=... ident=...`)
/// say that each of `devices` edus has the right ident, inverted the liveness value, and did
/// a DMA round trip whose bytes matched.
pub fn assert_edu_works(lines: &[&str], devices: usize) {
    // edu's ident register and the inverse of the 0x12345678 the driver writes to liveness
    // (QEMU's docs/specs/edu.rst; tests/guest/edu_test.c).
    let ident = lines
        .iter()
        .map(|l| parse_facts(l))
        .filter(|f| f.contains_key("dev"))
        .filter(|f| fact(f, "ident") == "0x10000ed" && fact(f, "live") == "0xedcba987")
        .count();
    assert_eq!(ident, devices, "ident and liveness: {lines:#?}");
    let dma = lines
        .iter()
        .filter(|l| parse_facts(l).get("dma").map(String::as_str) == Some("ok"))
        .count();
    assert_eq!(dma, devices, "DMA round trips: {lines:#?}");
}

/// The edu driver's interrupt lines of one boot (`EDU-RESULT irq_mode=...`), in order.
pub fn edu_irq_lines(lines: &[&str]) -> Vec<Facts> {
    lines
        .iter()
        .map(|l| parse_facts(l))
        .filter(|f| f.contains_key("irq_mode"))
        .collect()
}

/// The one interrupt line of a boot says `mode`: `irqs` raised, all handled, none lost or
/// spurious.
pub fn assert_all_delivered(lines: &[&str], mode: &str, irqs: u64) {
    let found = edu_irq_lines(lines);
    assert_eq!(found.len(), 1, "one interrupt line: {lines:#?}");
    let f = &found[0];
    assert_eq!(fact(f, "irq_mode"), mode, "{f:?}");
    assert_eq!(num(f, "irqs"), irqs, "{f:?}");
    assert_eq!(num(f, "handled"), irqs, "{f:?}");
    assert_eq!(num(f, "lost"), 0, "{f:?}");
    assert_eq!(num(f, "spurious"), 0, "{f:?}");
}

/// The NVMe checksum the guest read is the image's (run.sh's sha256 of it).
pub fn assert_nvme_data(f: &Facts) {
    let want = fact(f, "nvme_want");
    assert_eq!(want.len(), 64, "a sha256: {f:?}");
    assert_eq!(fact(f, "nvme_sum"), want, "{f:?}");
}

#[test]
fn output_parsing() {
    let out = "RIG-SCENARIO name=a uptime=1\n\
               RIG-ROW scenario=a table=t x=1\n\
               RIG-TEXT scenario=a key=k stale\n\
               RIG-SCENARIO name=a uptime=2\n\
               RIG-TEXT scenario=a key=k vmm: a\\\\b c\\rd \n\
               RIG-TEXT scenario=a key=k\n\
               RIG-ROW scenario=a table=t x=2 y=3\n\
               RIG-RESULT scenario=a ok=1 s=0\n\
               RIG-RESULT scenario=b ok=0 reason=l1-frozen\n";
    let s = parse_output(out);
    let a = &s["a"];
    let texts: Vec<_> = a.texts.iter().map(|t| t.1.as_str()).collect();
    assert_eq!(texts, ["vmm: a\\b c\rd ", ""]);
    assert_eq!(a.rows.len(), 1);
    assert_eq!(a.rows[0].1["y"], "3");
    assert_eq!(a.result.as_ref().unwrap()["s"], "0");
    assert_eq!(s["b"].result.as_ref().unwrap()["reason"], "l1-frozen");
    assert_eq!(unescape("\\q\\"), "\\q\\");
}
