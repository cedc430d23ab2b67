//! End-to-end tests of `vmm check`, the host readiness report, in the rig (see `rig.rs`):
//! L1 is a host that is ready (q35 with an intel-iommu doing interrupt remapping, vfio-pci
//! loaded), and `tests/rig/l1/check.sh` puts devices in the states to report on. Each
//! scenario gives every text line of the report (texts `line`), the `--json` form (text
//! `json`), both exit statuses, the device's IOMMU group and what L1's kernel shows of
//! interrupt remapping (`ecap`, `ir_domains`). The `check_*` and `json_*` tests need no rig:
//! they run vmm check on this machine.

#[path = "rig.rs"]
mod rig;

use rig::{fact, num};

const SCENARIOS: &str = "check-ready,check-not-viable,check-unbound";

fn run() -> &'static rig::RigRun {
    rig::rig(SCENARIOS)
}

/// The report lines vmm check must print for failures, built from the errors whose advice
/// they carry (never from copied text), in `vmm::check`'s layout: the status, two spaces per
/// level of nesting, what was checked and found, "; " and the fix.
mod expect {
    use diag::Explain;
    use vfio::sysfs::Error;

    /// The line of a check that failed with `e`, whose problem names what was checked,
    /// `depth` levels deep: the error's message as a run prints it.
    pub fn failed(depth: usize, e: &Error) -> String {
        format!("FAIL  {:indent$}{e}", "", indent = 2 * depth)
    }

    /// The line of group member `device`, on host driver `driver`, under a group that is not
    /// viable: what binds it to vfio-pci.
    pub fn blocking_member(device: &str, driver: &str) -> String {
        let e = Error::NotVfioBound {
            device: device.into(),
            driver: Some(driver.into()),
        };
        format!(
            "FAIL      member {device}: bound to {driver}; {}",
            e.advice().fix
        )
    }
}

/// The report's text lines for `scenario`.
fn lines(scenario: &str) -> Vec<&'static str> {
    run().texts(scenario, "line")
}

/// The one line starting with `start`.
fn line(scenario: &str, start: &str) -> &'static str {
    let all = lines(scenario);
    let found: Vec<_> = all.iter().filter(|l| l.starts_with(start)).collect();
    assert_eq!(found.len(), 1, "one line '{start}...' in {all:#?}");
    found[0]
}

/// The `--json` output of `scenario`, parsed, with its exit status; the text report's
/// exit status is the same.
fn json(scenario: &str) -> (Json, u64) {
    let f = run().facts(scenario);
    let found = run().texts(scenario, "json");
    assert_eq!(found.len(), 1, "one line: {found:?}");
    let value = Json::parse(found[0]).unwrap_or_else(|e| panic!("{e}: {}", found[0]));
    let status = num(f, "json_status");
    assert_eq!(status, num(f, "status"), "text and JSON: {f:?}");
    (value, status)
}

#[test]
fn ready_host_and_device_pass() {
    let f = run().facts("check-ready");
    assert_eq!(num(f, "status"), 0, "{f:?}");
    let all = lines("check-ready");
    for l in &all {
        assert!(
            l.starts_with("PASS  ") || l.starts_with("WARN  "),
            "{all:#?}"
        );
    }
    assert_eq!(
        line("check-ready", "PASS  kvm: "),
        "PASS  kvm: /dev/kvm, API 12"
    );
    assert_eq!(
        line("check-ready", "PASS  kvm capabilities: "),
        "PASS  kvm capabilities: irqchip, user-memory, irq-routing, irqfd, irqfd-resample, \
         ioeventfd"
    );
    assert!(line("check-ready", "PASS  iommu: ").contains("dmar0"));
    assert_eq!(
        line("check-ready", "PASS  vfio: "),
        "PASS  vfio: vfio-pci loaded, /dev/vfio/vfio opens"
    );
    // L1 runs as root.
    assert_eq!(
        line("check-ready", "PASS  memlock: "),
        "PASS  memlock: not limited (CAP_IPC_LOCK)"
    );
    let group = fact(f, "group");
    assert_eq!(
        line("check-ready", "PASS  device 0000:00:03.0: "),
        format!("PASS  device 0000:00:03.0: bound to vfio-pci, IOMMU group {group}")
    );
    let members = line("check-ready", "PASS    IOMMU group ");
    assert_eq!(
        members,
        format!("PASS    IOMMU group {group}: viable, 1 device")
    );
    assert_eq!(
        line("check-ready", "PASS      member "),
        "PASS      member 0000:00:03.0: bound to vfio-pci"
    );
    // devtmpfs makes the node root's, 0600; L1 may have no /etc/passwd to name uid 0.
    let node = line("check-ready", &format!("PASS    /dev/vfio/{group}: "));
    let owner = node.split_once(": owner ").map(|(_, o)| o);
    assert!(
        matches!(
            owner,
            Some("root:root, mode 0600, opens read-write" | "0:0, mode 0600, opens read-write")
        ),
        "{node}"
    );
}

/// q35's intel-iommu with intremap=on: the kernel set up IR interrupt domains, the unit's
/// ecap has the IR bit (3), and check says so.
#[test]
fn interrupt_remapping_is_seen() {
    let h = run().facts("check-ready");
    let domains = fact(h, "ir_domains");
    assert!(domains.contains("IR-IO-APIC"), "{h:?}");
    let ecap = u64::from_str_radix(fact(h, "ecap").trim_end_matches(','), 16).unwrap();
    assert_ne!(ecap & (1 << 3), 0, "ecap IR bit: {h:?}");
    let ir = line("check-ready", "PASS  interrupt remapping: ");
    assert!(
        ir.starts_with("PASS  interrupt remapping: enabled (IR-IO-APIC"),
        "{ir}"
    );
}

#[test]
fn ready_json_matches_the_text() {
    let (value, status) = json("check-ready");
    assert_eq!(status, 0);
    assert_eq!(value.get("ok"), Some(&Json::Bool(true)), "{value:?}");
    let Some(Json::Arr(checks)) = value.get("checks") else {
        panic!("{value:?}")
    };
    let text = lines("check-ready");
    assert_eq!(checks.len(), text.len(), "{checks:?}\n{text:#?}");
    for (c, l) in checks.iter().zip(&text) {
        let Some(Json::Str(status)) = c.get("status") else {
            panic!("{c:?}")
        };
        assert!(l.starts_with(&status.to_uppercase()), "{c:?} vs {l}");
        let Some(Json::Str(name)) = c.get("name") else {
            panic!("{c:?}")
        };
        assert!(l.contains(name.as_str()), "{c:?} vs {l}");
        assert!(matches!(c.get("detail"), Some(Json::Str(_))), "{c:?}");
        let fix = c.get("fix");
        assert!(matches!(fix, Some(Json::Null | Json::Str(_))), "{c:?}");
    }
    let device = checks
        .iter()
        .find(|c| c.get("name") == Some(&Json::Str("device 0000:00:03.0".into())))
        .expect("device check");
    assert_eq!(device.get("status"), Some(&Json::Str("pass".into())));
}

#[test]
fn not_viable_group_names_the_member_and_its_driver() {
    let f = run().facts("check-not-viable");
    assert_eq!(num(f, "status"), 1, "{f:?}");
    let group = num(f, "group") as u32;
    let not_viable = vfio::sysfs::Error::NotViable {
        group,
        blockers: vec![("0000:01:02.0".into(), "uio_pci_generic".into())],
    };
    assert_eq!(
        line("check-not-viable", "FAIL    IOMMU group "),
        expect::failed(1, &not_viable)
    );
    assert_eq!(
        line("check-not-viable", "FAIL      member "),
        expect::blocking_member("0000:01:02.0", "uio_pci_generic")
    );
    // The bridge and the device asked about do not block the group.
    assert!(line("check-not-viable", "PASS      member 0000:00:05.0: ").ends_with("PCI bridge"));
    line(
        "check-not-viable",
        "PASS      member 0000:01:01.0: bound to vfio-pci",
    );
    line(
        "check-not-viable",
        "PASS  device 0000:01:01.0: bound to vfio-pci",
    );
    let (value, status) = json("check-not-viable");
    assert_eq!((value.get("ok"), status), (Some(&Json::Bool(false)), 1));
}

#[test]
fn unbound_device_fails_with_the_commands_to_bind_it() {
    let f = run().facts("check-unbound");
    assert_eq!(num(f, "status"), 1, "{f:?}");
    let unbound = vfio::sysfs::Error::NotVfioBound {
        device: "0000:00:02.0".into(),
        driver: None,
    };
    assert_eq!(
        line("check-unbound", "FAIL  device 0000:00:02.0"),
        expect::failed(0, &unbound)
    );
    let all = lines("check-unbound");
    assert_eq!(
        all.iter().filter(|l| l.starts_with("FAIL")).count(),
        1,
        "only the device fails: {all:#?}"
    );
    // No group node to report on before the device is bound to vfio-pci.
    let node = format!("/dev/vfio/{}", fact(f, "group"));
    assert!(!all.iter().any(|l| l.contains(&node)), "{all:#?}");
    let (value, status) = json("check-unbound");
    assert_eq!((value.get("ok"), status), (Some(&Json::Bool(false)), 1));
}

/// On the machine running the tests (no rig): whatever this host is, the text and JSON
/// reports agree and the exit status follows them.
#[test]
fn check_on_this_host_is_consistent() {
    let vmm = env!("CARGO_BIN_EXE_vmm");
    let text = std::process::Command::new(vmm)
        .arg("check")
        .output()
        .unwrap();
    let json = std::process::Command::new(vmm)
        .args(["check", "--json"])
        .output()
        .unwrap();
    let out = String::from_utf8(text.stdout).unwrap();
    let value = Json::parse(std::str::from_utf8(&json.stdout).unwrap().trim()).unwrap();
    let Some(Json::Arr(checks)) = value.get("checks") else {
        panic!("{value:?}")
    };
    assert_eq!(checks.len(), out.lines().count(), "{out}");
    let failed = out.lines().any(|l| l.starts_with("FAIL  "));
    assert_eq!(value.get("ok"), Some(&Json::Bool(!failed)), "{out}");
    let want = if failed { 1 } else { 0 };
    assert_eq!(text.status.code(), Some(want), "{out}");
    assert_eq!(json.status.code(), Some(want));
}

#[test]
fn check_bad_arguments_are_one_line() {
    let vmm = env!("CARGO_BIN_EXE_vmm");
    for (args, needle) in [
        (
            &["check", "--kernel", "k"][..],
            "unknown argument '--kernel' to check",
        ),
        (
            &["check", "--device", "vfio-pci,host=0:3"],
            "bad PCI address",
        ),
        (&["check", "--memory"], "--memory needs a value"),
    ] {
        let out = std::process::Command::new(vmm).args(args).output().unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("vmm: ") && err.contains(needle), "{err}");
        assert!(out.stdout.is_empty());
    }
}

/// Just enough JSON to check what `vmm check --json` prints (no serde in this workspace).
#[derive(Clone, Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn parse(text: &str) -> Result<Json, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            at: 0,
        };
        let v = p.value()?;
        p.ws();
        match p.at == p.s.len() {
            true => Ok(v),
            false => Err(format!("trailing text at {}", p.at)),
        }
    }

    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(fields) => fields.iter().find(|f| f.0 == key).map(|f| &f.1),
            _ => None,
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Result<(), String> {
        self.ws();
        match self.s.get(self.at) == Some(&b) {
            true => {
                self.at += 1;
                Ok(())
            }
            false => Err(format!("expected '{}' at {}", b as char, self.at)),
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        let rest = &self.s[self.at..];
        for (word, v) in [
            ("null", Json::Null),
            ("true", Json::Bool(true)),
            ("false", Json::Bool(false)),
        ] {
            if rest.starts_with(word.as_bytes()) {
                self.at += word.len();
                return Ok(v);
            }
        }
        match rest.first() {
            Some(b'"') => self.string().map(Json::Str),
            Some(b'[') => self.list(b']', Self::value).map(Json::Arr),
            Some(b'{') => self.list(b'}', Self::field).map(Json::Obj),
            Some(b'-' | b'0'..=b'9') => {
                let len = rest
                    .iter()
                    .take_while(|b| b"+-.eE0123456789".contains(b))
                    .count();
                self.at += len;
                let n = std::str::from_utf8(&rest[..len]).unwrap();
                n.parse().map(Json::Num).map_err(|e| format!("{n}: {e}"))
            }
            _ => Err(format!("no value at {}", self.at)),
        }
    }

    fn field(&mut self) -> Result<(String, Json), String> {
        self.ws();
        let key = self.string()?;
        self.eat(b':')?;
        Ok((key, self.value()?))
    }

    /// `[a, b]` or `{a, b}` (the opening byte not yet eaten).
    fn list<T>(
        &mut self,
        close: u8,
        item: fn(&mut Self) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        self.at += 1;
        let mut out = Vec::new();
        self.ws();
        if self.s.get(self.at) == Some(&close) {
            self.at += 1;
            return Ok(out);
        }
        loop {
            out.push(item(self)?);
            self.ws();
            match self.s.get(self.at) {
                Some(b',') => self.at += 1,
                Some(&b) if b == close => {
                    self.at += 1;
                    return Ok(out);
                }
                _ => {
                    return Err(format!(
                        "expected ',' or '{}' at {}",
                        close as char, self.at
                    ))
                }
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            let Some(&b) = self.s.get(self.at) else {
                return Err("unterminated string".into());
            };
            self.at += 1;
            match b {
                b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
                b if b < 0x20 => return Err(format!("raw control byte at {}", self.at - 1)),
                b'\\' => {
                    let esc = self.s.get(self.at).copied();
                    self.at += 1;
                    let c = match esc {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'n') => '\n',
                        Some(b't') => '\t',
                        Some(b'r') => '\r',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'u') => {
                            let hex = self.s.get(self.at..self.at + 4).ok_or("short \\u")?;
                            self.at += 4;
                            let code = u32::from_str_radix(std::str::from_utf8(hex).unwrap(), 16)
                                .map_err(|e| e.to_string())?;
                            char::from_u32(code).ok_or("bad \\u")?
                        }
                        _ => return Err(format!("bad escape at {}", self.at - 1)),
                    };
                    out.extend_from_slice(c.to_string().as_bytes());
                }
                b => out.push(b),
            }
        }
    }
}

#[test]
fn json_parser_itself() {
    let v = Json::parse(r#" {"a":[1,-2.5e1,"x\u0041\n\"",true,null],"b":{}} "#).unwrap();
    assert_eq!(
        v.get("a"),
        Some(&Json::Arr(vec![
            Json::Num(1.0),
            Json::Num(-25.0),
            Json::Str("xA\n\"".into()),
            Json::Bool(true),
            Json::Null
        ]))
    );
    assert_eq!(v.get("b"), Some(&Json::Obj(vec![])));
    for bad in ["", "{", "[1,]", "{\"a\" 1}", "\"a\nb\"", "[1] 2", "\"\\q\""] {
        assert!(Json::parse(bad).is_err(), "{bad}");
    }
}
