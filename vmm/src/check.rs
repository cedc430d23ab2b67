//! `vmm check`: is this host ready to pass devices through? One verdict per check (pass, warn,
//! fail), each not-pass with a one-line fix, as text lines or one JSON object; like libvirt's
//! `virt-host-validate`.
//!
//! Checks KVM (API version, the capabilities vmm uses), the IOMMU and its groups, vfio-pci,
//! interrupt remapping, the locked-memory limit, and for each `--device`: its driver, its
//! IOMMU group with every member, and the group's `/dev/vfio/N`. The device checks reuse
//! [`vfio::sysfs`] and [`vfio::host`] and their messages, so `check` and `run` never disagree.
//!
//! It only reads: sysfs, `/proc/interrupts`, and ioctls that ask. `/dev/kvm`, `/dev/vfio/vfio`
//! and `/dev/vfio/N` are opened and closed again. It never binds drivers or writes sysfs.
//! The roots it reads below ([`Host`]) are injectable so tests run against a fake tree.

mod bars;

use crate::config::{self, DeviceConfig};
use diag::Explain as _;
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use vfio::host::MemlockLimit;
use vfio::{GroupMember, Sysfs};

/// The KVM API version vmm is written against (`KVM_API_VERSION`).
const KVM_API_VERSION: i32 = 12;
/// Below this locked-memory limit, `check` without `--memory` warns.
const MEMLOCK_WARN_BELOW: u64 = 1 << 30;
/// Where vfio_iommu_type1 says whether it accepts groups without interrupt remapping.
const ALLOW_UNSAFE_INTERRUPTS: &str = "module/vfio_iommu_type1/parameters/allow_unsafe_interrupts";
/// Bit of the VT-d Extended Capability register: Interrupt Remapping support (Linux
/// `ecap_ir_support`).
const ECAP_IR: u64 = 1 << 3;

/// What `vmm check` was asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckConfig {
    /// Devices to check, as `--device` of a run takes them.
    pub devices: Vec<DeviceConfig>,
    /// Guest RAM to check the locked-memory limit, the hugepage pool and the BAR layout
    /// against.
    pub memory: Option<crate::memory::MemoryConfig>,
    /// One JSON object instead of text lines.
    pub json: bool,
}

/// A check's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Ready.
    Pass,
    /// Works, but something is off (unsafe, or too small for big guests).
    Warn,
    /// A run would fail.
    Fail,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One line of the report; in JSON `{"name":..,"status":..,"detail":..,"fix":..|null}`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    /// What was checked: `kvm`, `device 0000:00:03.0`, `IOMMU group 3`, ...
    pub name: String,
    /// The verdict.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do, when not a pass.
    pub fix: Option<String>,
    /// Nesting under the line above (group under device, member under group).
    #[serde(skip)]
    depth: usize,
}

impl Check {
    fn new(name: impl Into<String>, status: Status, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status,
            detail: detail.into(),
            fix: None,
            depth: 0,
        }
    }

    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Pass, detail)
    }

    fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(name, Status::Warn, detail).with_fix(fix)
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(name, Status::Fail, detail).with_fix(fix)
    }

    /// A failure whose detail and fix are an error's problem and fix.
    fn failed(name: impl Into<String>, e: &impl diag::Explain) -> Self {
        let diag::Advice { problem, fix } = e.advice();
        Self::fail(name, problem, fix)
    }

    fn with_fix(mut self, fix: impl Into<String>) -> Self {
        let fix = fix.into();
        self.fix = (!fix.is_empty()).then_some(fix);
        self
    }

    fn nested(mut self, depth: usize) -> Self {
        self.depth = depth;
        self
    }

    /// `STATUS  [indent]name: detail[; fix]` (a run prints the same problem and fix as
    /// `problem; fix`); a detail that starts with the name and a space
    /// (a vfio message such as "device X is bound to ...") stands for both.
    fn line(&self) -> String {
        let mut out = format!(
            "{:<4}  {:indent$}",
            self.status.word().to_ascii_uppercase(),
            "",
            indent = 2 * self.depth
        );
        if !self.detail.starts_with(&format!("{} ", self.name)) {
            let _ = write!(out, "{}: ", self.name);
        }
        out.push_str(&self.detail);
        if let Some(fix) = &self.fix {
            let _ = write!(out, "; {fix}");
        }
        out
    }
}

/// Every check of one `vmm check`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// In the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    /// True when nothing failed (warnings allowed).
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// One line per check.
    pub fn text(&self) -> String {
        self.checks.iter().map(|c| c.line() + "\n").collect()
    }

    /// `{"ok":bool,"checks":[{"name":..,"status":..,"detail":..,"fix":..|null},...]}`.
    pub fn json(&self) -> String {
        #[derive(serde::Serialize)]
        struct Json<'a> {
            ok: bool,
            checks: &'a [Check],
        }
        let json = Json {
            ok: self.ok(),
            checks: &self.checks,
        };
        serde_json::to_string(&json).expect("strings and bools always serialize")
    }
}

/// A refused `vmm check --json` command line, as JSON:
/// `{"ok":false,"error":LINE,"problem":..,"fix":..|null}`, LINE being what stderr shows.
pub fn json_refusal(advice: &diag::Advice) -> String {
    #[derive(serde::Serialize)]
    struct Json<'a> {
        ok: bool,
        error: String,
        problem: &'a str,
        fix: Option<&'a str>,
    }
    let json = Json {
        ok: false,
        error: advice.to_string(),
        problem: &advice.problem,
        fix: (!advice.fix.is_empty()).then_some(advice.fix.as_str()),
    };
    serde_json::to_string(&json).expect("strings and bools always serialize")
}

/// Runs `vmm check`: the report on stdout, text or JSON; `Ok(true)` when nothing failed.
/// A report that cannot be written is an error: nobody saw the verdict.
pub fn run(cfg: &CheckConfig, out: &mut impl std::io::Write) -> std::io::Result<bool> {
    let report = Host::default().report(cfg);
    match cfg.json {
        true => writeln!(out, "{}", report.json())?,
        false => write!(out, "{}", report.text())?,
    }
    out.flush()?;
    Ok(report.ok())
}

/// Where the host's kernel interfaces are: `/sys`, `/proc` and `/dev` on a host, a fake tree
/// in tests.
#[derive(Clone, Debug)]
pub struct Host {
    sys: PathBuf,
    proc: PathBuf,
    dev: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Self::new("/sys", "/proc", "/dev")
    }
}

impl Host {
    /// A host with sysfs, procfs and devices at these roots.
    pub fn new(sys: impl Into<PathBuf>, proc: impl Into<PathBuf>, dev: impl Into<PathBuf>) -> Self {
        Self {
            sys: sys.into(),
            proc: proc.into(),
            dev: dev.into(),
        }
    }

    /// Runs every check `cfg` asks for.
    pub fn report(&self, cfg: &CheckConfig) -> Report {
        let mut checks = self.kvm();
        checks.push(self.iommu());
        checks.push(self.vfio());
        checks.push(ir_verdict(&self.ir_facts()));
        let mem_size = cfg.memory.map(|m| m.size);
        checks.push(memlock_verdict(MemlockLimit::current(), mem_size));
        let sysfs = Sysfs::new(&self.sys);
        // managed=on devices are moved to vfio-pci by the run: not in the way of their group.
        let managed: Vec<String> = cfg
            .devices
            .iter()
            .filter(|d| d.managed)
            .filter_map(|d| Some(sysfs.device(d.spec()).ok()?.name))
            .collect();
        if let Some(mem) = &cfg.memory {
            checks.extend(hugepage_check(mem, &self.sys.join("kernel/mm/hugepages")));
        }
        let (width, width_check) = self.width(cfg.memory.and_then(|m| m.phys_bits));
        checks.extend(width_check);
        let mut bar_lines = self.bar_lines(cfg, width).into_iter();
        for dev in &cfg.devices {
            checks.extend(self.device(dev, &managed));
            checks.extend(bar_lines.next().unwrap_or_default());
        }
        Report { checks }
    }

    /// The guest's physical address width from KVM's CPUID (narrowed by `phys-bits=`), and a
    /// failure line when `phys-bits=` asks for more than KVM allows.
    fn width(&self, asked: Option<u8>) -> (Option<bars::Width>, Option<Check>) {
        use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
        let path = self.dev.join("kvm");
        let kvm = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .ok()
            .and_then(|c| kvm_ioctls::Kvm::new_with_path(c).ok());
        let Some(cpuid) = kvm.and_then(|k| k.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).ok())
        else {
            return (None, None);
        };
        let kvm_bits = arch::cpuid::phys_bits(&cpuid);
        match asked {
            Some(bits) if bits > kvm_bits => {
                let fail = Check::fail(
                    "phys-bits",
                    format!("--memory phys-bits={bits} is more than this host's KVM allows ({kvm_bits})"),
                    format!("give phys-bits={kvm_bits} or less, or leave it out"),
                );
                let width = bars::Width {
                    bits: kvm_bits,
                    kvm_bits,
                };
                (Some(width), Some(fail))
            }
            _ => {
                let bits = asked.unwrap_or(kvm_bits);
                (Some(bars::Width { bits, kvm_bits }), None)
            }
        }
    }

    /// The BAR and ROM lines of every `--device` whose sysfs `resource` can be read (none for
    /// the others: their device line says why), each BAR placed as a run would place it.
    fn bar_lines(&self, cfg: &CheckConfig, width: Option<bars::Width>) -> Vec<Vec<Check>> {
        let sysfs = Sysfs::new(&self.sys);
        let found: Vec<Option<bars::SysBars>> = cfg
            .devices
            .iter()
            .map(|d| {
                let dev = sysfs.device(d.spec()).ok()?;
                bars::read(&dev.name, &dev.path)
            })
            .collect();
        let readable: Vec<bars::SysBars> = found.iter().flatten().cloned().collect();
        let cfgs: Vec<&DeviceConfig> = cfg
            .devices
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_some())
            .map(|(c, _)| c)
            .collect();
        let mem_size = cfg.memory.map_or(config::DEFAULT_MEMORY, |m| m.size);
        let mut lines = bars::checks(&readable, &cfgs, mem_size, width).into_iter();
        found
            .iter()
            .map(|f| match f {
                Some(_) => lines.next().unwrap_or_default(),
                None => Vec::new(),
            })
            .collect()
    }

    fn kvm(&self) -> Vec<Check> {
        use kvm_ioctls::{Cap, Kvm};
        let path = self.dev.join("kvm");
        let opened = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| libc::EINVAL)
            .and_then(|c| Kvm::new_with_path(c).map_err(|e| e.errno()));
        let kvm = match opened {
            Ok(kvm) => kvm,
            Err(errno) => return vec![kvm_open_failure(&path, errno)],
        };
        let caps = [
            ("irqchip", Cap::Irqchip),
            ("user-memory", Cap::UserMemory),
            ("irq-routing", Cap::IrqRouting),
            ("irqfd", Cap::Irqfd),
            ("irqfd-resample", Cap::IrqfdResample),
            ("ioeventfd", Cap::Ioeventfd),
        ]
        .map(|(name, cap)| (name, kvm.check_extension(cap)));
        kvm_verdict(&path, kvm.get_api_version(), &caps)
    }

    fn iommu(&self) -> Check {
        let groups = count_entries(&self.sys.join("kernel/iommu_groups"));
        let units = list_names(&self.sys.join("class/iommu"));
        let fix = "enable the IOMMU: intel_iommu=on (Intel) or amd_iommu=on (AMD) on the host \
                   kernel command line, iommu=pt to keep host DMA fast, and VT-d/AMD-Vi on in \
                   the firmware";
        match groups {
            0 => Check::fail("iommu", "no IOMMU groups in /sys/kernel/iommu_groups", fix),
            n => Check::pass(
                "iommu",
                format!(
                    "{}, units: {}",
                    plural(n, "IOMMU group"),
                    or_none(&units.join(", "))
                ),
            ),
        }
    }

    fn vfio(&self) -> Check {
        let driver = self.sys.join("bus/pci/drivers/vfio-pci").is_dir();
        let container = self.dev.join("vfio/vfio");
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&container);
        match (driver, opened) {
            (true, Ok(_)) => Check::pass("vfio", "vfio-pci loaded, /dev/vfio/vfio opens"),
            (false, _) => Check::fail(
                "vfio",
                "vfio-pci is not loaded",
                "modprobe vfio-pci (and add vfio-pci to /etc/modules-load.d/ to keep it)",
            ),
            (true, Err(e)) => Check::fail(
                "vfio",
                format!("cannot open /dev/vfio/vfio: {e}"),
                "modprobe vfio-pci; run as root or make /dev/vfio/vfio readable and writable",
            ),
        }
    }

    fn ir_facts(&self) -> IrFacts {
        let domains = std::fs::read_to_string(self.proc.join("interrupts"))
            .ok()
            .map(|text| ir_domains(&text));
        let units_dir = self.sys.join("class/iommu");
        let units = list_names(&units_dir)
            .into_iter()
            .map(|name| {
                let capable = unit_ir_capable(&units_dir.join(&name));
                (name, capable)
            })
            .collect();
        let unsafe_allowed = std::fs::read_to_string(self.sys.join(ALLOW_UNSAFE_INTERRUPTS))
            .is_ok_and(|v| matches!(v.trim(), "Y" | "1"));
        IrFacts {
            domains,
            units,
            unsafe_allowed,
        }
    }

    /// The checks of one `--device`: the device (exists, has a group, bound to vfio-pci or
    /// managed=on), its group's viability with every member, and the group's node.
    /// `managed` names the managed=on devices of this check, which a run binds itself.
    fn device(&self, cfg: &DeviceConfig, managed: &[String]) -> Vec<Check> {
        let sysfs = Sysfs::new(&self.sys);
        let spec = cfg.spec();
        let dev = match sysfs.device(&spec) {
            Ok(dev) => dev,
            Err(e) => return vec![Check::failed(format!("device {spec}"), &e)],
        };
        let name = format!("device {}", dev.name);
        let group = match sysfs.require_group(&dev) {
            Ok(group) => group,
            Err(e) => return vec![Check::failed(name, &e)],
        };
        let bound = sysfs.require_vfio_pci(&dev);
        let mut checks = vec![match &bound {
            Ok(()) => Check::pass(name, format!("bound to vfio-pci, IOMMU group {group}")),
            Err(vfio::sysfs::Error::NotVfioBound { driver, .. }) if cfg.managed => Check::pass(
                name,
                format!(
                    "{}, IOMMU group {group}; managed=on moves it to vfio-pci for the run",
                    driver_text(driver.as_deref())
                ),
            ),
            Err(e) => Check::failed(name, &e),
        }];
        checks.extend(group_checks(&sysfs, group, managed));
        if bound.is_ok() {
            checks.push(self.group_node(group, &dev.name).nested(1));
        }
        checks
    }

    /// `/dev/vfio/N`: exists, its owner and mode, and whether this process can open it.
    fn group_node(&self, group: u32, device: &str) -> Check {
        use vfio::host::Error;
        let path = self.dev.join(format!("vfio/{group}"));
        let name = format!("/dev/vfio/{group}");
        let device = device.to_string();
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(_) => return Check::failed(name, &Error::NoGroupNode { group, device }),
        };
        let owner = format!(
            "owner {}:{}, mode {:04o}",
            user_name(meta.uid()),
            group_name(meta.gid()),
            meta.mode() & 0o7777
        );
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path);
        match opened.map_err(|e| e.raw_os_error()) {
            Ok(_) => Check::pass(name, format!("{owner}, opens read-write")),
            Err(Some(libc::EBUSY)) => {
                let diag::Advice { problem, fix } = Error::Busy { group, device }.advice();
                Check::warn(name, format!("{owner}; {problem}"), fix)
            }
            Err(Some(libc::EACCES | libc::EPERM)) => {
                let diag::Advice { problem, fix } = Error::Permission { group, device }.advice();
                Check::fail(name, format!("{owner}; {problem}"), fix)
            }
            Err(errno) => Check::fail(
                name,
                format!("{owner}; cannot open it (errno {})", errno.unwrap_or(0)),
                "check that VFIO works on this host (dmesg | grep -i vfio)",
            ),
        }
    }
}

/// The group's viability (from [`Sysfs::check_viable`], the `managed` devices not counted
/// as in the way) and each member under it.
fn group_checks(sysfs: &Sysfs, group: u32, managed: &[String]) -> Vec<Check> {
    use vfio::sysfs::Error::NotViable;
    let name = format!("IOMMU group {group}");
    let members = match sysfs.group_devices(group) {
        Ok(members) => members,
        Err(e) => return vec![Check::failed(name, &e).nested(1)],
    };
    let viable = Check::pass(
        &name,
        format!("viable, {}", plural(members.len(), "device")),
    );
    let verdict = match sysfs.check_viable(group) {
        Ok(()) => viable,
        Err(NotViable { group, blockers }) => {
            let blockers: Vec<_> = blockers
                .into_iter()
                .filter(|(dev, _)| !managed.contains(dev))
                .collect();
            match blockers.is_empty() {
                true => viable,
                false => Check::failed(&name, &NotViable { group, blockers }),
            }
        }
        Err(e) => Check::failed(&name, &e),
    };
    let mut checks = vec![verdict.nested(1)];
    checks.extend(
        members
            .iter()
            .map(|m| member_check(m, managed.contains(&m.name)).nested(2)),
    );
    checks
}

fn driver_text(driver: Option<&str>) -> String {
    match driver {
        Some(d) => format!("bound to {d}"),
        None => "no driver".to_string(),
    }
}

/// One member of a group: its driver, whether it lets VFIO use the group (or is `managed`
/// by the run), and if not the commands that bind it to vfio-pci.
fn member_check(m: &GroupMember, managed: bool) -> Check {
    let name = format!("member {}", m.name);
    let mut detail = driver_text(m.driver.as_deref());
    if m.is_bridge {
        detail.push_str(", PCI bridge");
    }
    if m.is_viable() {
        return Check::pass(name, detail);
    }
    if managed {
        return Check::pass(name, detail + "; managed=on moves it to vfio-pci");
    }
    let diag::Advice { fix, .. } = vfio::sysfs::Error::NotVfioBound {
        device: m.name.clone(),
        driver: m.driver.clone(),
    }
    .advice();
    Check::fail(name, detail, fix)
}

fn kvm_open_failure(path: &Path, errno: i32) -> Check {
    let what = format!("cannot open {}", path.display());
    match errno {
        libc::ENOENT => Check::fail(
            "kvm",
            format!("{what}: no such device"),
            "load KVM (modprobe kvm_intel or kvm_amd) and enable VT-x/AMD-V in the firmware",
        ),
        libc::EACCES | libc::EPERM => Check::fail(
            "kvm",
            format!("{what}: permission denied"),
            "add your user to the kvm group (usermod -aG kvm $USER, then log in again) or run \
             as root",
        ),
        e => Check::fail(
            "kvm",
            format!("{what}: {}", std::io::Error::from_raw_os_error(e)),
            "check that KVM works on this host (dmesg | grep -i kvm)",
        ),
    }
}

/// The KVM lines from the API version and which of the capabilities vmm needs are there.
fn kvm_verdict(path: &Path, api: i32, caps: &[(&str, bool)]) -> Vec<Check> {
    let kvm = match api {
        KVM_API_VERSION => Check::pass("kvm", format!("{}, API {api}", path.display())),
        _ => Check::fail(
            "kvm",
            format!(
                "{}: API version {api}, not {KVM_API_VERSION}",
                path.display()
            ),
            "use a mainline Linux KVM",
        ),
    };
    let missing: Vec<&str> = caps.iter().filter(|c| !c.1).map(|c| c.0).collect();
    let names: Vec<&str> = caps.iter().map(|c| c.0).collect();
    let caps = match missing.is_empty() {
        true => Check::pass("kvm capabilities", names.join(", ")),
        false => Check::fail(
            "kvm capabilities",
            format!("missing {}", missing.join(", ")),
            "use a host kernel whose KVM has them (any Linux 4.x or later on x86 does)",
        ),
    };
    vec![kvm, caps]
}

/// What the host shows about interrupt remapping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct IrFacts {
    /// IR interrupt domains (chip names starting `IR-`) in `/proc/interrupts`; `None` when it
    /// cannot be read.
    domains: Option<Vec<String>>,
    /// Each IOMMU unit of `/sys/class/iommu` and whether it can remap interrupts (`None`:
    /// unknown kind).
    units: Vec<(String, Option<bool>)>,
    /// vfio_iommu_type1's allow_unsafe_interrupts is set.
    unsafe_allowed: bool,
}

/// Interrupt remapping keeps a passed-through device from sending arbitrary MSIs; without it
/// vfio_iommu_type1 refuses groups unless allow_unsafe_interrupts is set. Enabled is judged
/// by the IR interrupt domains the kernel set up (Intel and AMD both name them `IR-...`);
/// only when `/proc/interrupts` cannot be read does the units' capability stand in.
fn ir_verdict(f: &IrFacts) -> Check {
    const NAME: &str = "interrupt remapping";
    let capable: Vec<&str> = f
        .units
        .iter()
        .filter(|u| u.1 == Some(true))
        .map(|u| u.0.as_str())
        .collect();
    match &f.domains {
        Some(d) if !d.is_empty() => {
            let mut detail = format!("enabled ({} in /proc/interrupts)", d.join(", "));
            if f.unsafe_allowed {
                detail.push_str("; allow_unsafe_interrupts=Y has no effect");
            }
            return Check::pass(NAME, detail);
        }
        None if !capable.is_empty() => {
            return Check::pass(
                NAME,
                format!(
                    "supported by {} (/proc/interrupts unreadable)",
                    capable.join(", ")
                ),
            )
        }
        _ => {}
    }
    let enable = match capable.is_empty() {
        true => {
            "use a host whose IOMMU remaps interrupts (VT-d with IR, AMD-Vi) with x2APIC/IR \
                 on in the firmware"
        }
        false => {
            "the IOMMU can: remove intremap=off (or amd_iommu_intr=legacy) from the host \
                  kernel command line"
        }
    };
    if f.unsafe_allowed {
        return Check::warn(
            NAME,
            "off; unsafe interrupts allowed (vfio_iommu_type1 allow_unsafe_interrupts=Y): a \
             passed-through device can send arbitrary interrupts",
            enable,
        );
    }
    Check::fail(
        NAME,
        "off, so VFIO refuses to attach IOMMU groups",
        format!("{enable}; or, trusting the device, echo Y > /sys/{ALLOW_UNSAFE_INTERRUPTS}"),
    )
}

/// The IR interrupt domains in `/proc/interrupts` text, each once, per-device suffixes cut
/// (`IR-PCI-MSIX-0000:00:02.0` is `IR-PCI-MSIX`).
fn ir_domains(interrupts: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in interrupts
        .split_whitespace()
        .filter(|w| w.starts_with("IR-"))
    {
        let word = match word.find(':') {
            Some(colon) => word[..colon]
                .rsplit_once('-')
                .map_or(word, |(head, _)| head),
            None => word,
        };
        if !out.iter().any(|w| w == word) {
            out.push(word.to_string());
        }
    }
    out
}

/// Whether IOMMU unit `dir` (`/sys/class/iommu/NAME`) can remap interrupts: an Intel unit by
/// the IR bit of its Extended Capability register; every AMD IOMMU can.
fn unit_ir_capable(dir: &Path) -> Option<bool> {
    if let Ok(ecap) = std::fs::read_to_string(dir.join("intel-iommu/ecap")) {
        let ecap = ecap.trim();
        let digits = ecap.strip_prefix("0x").unwrap_or(ecap);
        return u64::from_str_radix(digits, 16)
            .ok()
            .map(|e| e & ECAP_IR != 0);
    }
    dir.join("amd-iommu").is_dir().then_some(true)
}

/// The memlock line: the limit, and whether it covers `memory` when given.
fn memlock_verdict(limit: MemlockLimit, memory: Option<u64>) -> Check {
    const NAME: &str = "memlock";
    let bytes = match limit {
        MemlockLimit::IpcLock => return Check::pass(NAME, "not limited (CAP_IPC_LOCK)"),
        MemlockLimit::Unlimited => return Check::pass(NAME, "RLIMIT_MEMLOCK unlimited"),
        MemlockLimit::Bytes(bytes) => bytes,
    };
    let limit_text = format!("RLIMIT_MEMLOCK {}", config::format_size(bytes));
    match memory {
        Some(mem) => match limit.check(mem) {
            Ok(()) => Check::pass(
                NAME,
                format!(
                    "{limit_text}, enough for --memory {}",
                    config::format_size(mem)
                ),
            ),
            Err(e) => Check::failed(NAME, &e),
        },
        None if bytes < MEMLOCK_WARN_BELOW => Check::warn(
            NAME,
            format!("{limit_text}: guests with more RAM cannot pass devices through"),
            "raise it to at least the guest's RAM (ulimit -l KIB, LimitMEMLOCK= for a systemd \
             unit, or memlock in /etc/security/limits.conf) or run as root; vmm check --memory \
             SIZE checks a size",
        ),
        None => Check::pass(NAME, limit_text),
    }
}

/// With `hugepages=on`: whether the pool under `root` has the pages the guest needs.
fn hugepage_check(mem: &crate::memory::MemoryConfig, root: &Path) -> Option<Check> {
    use crate::memory;
    let page = mem.hugepages?;
    const NAME: &str = "hugepages";
    Some(
        match memory::check_pool(mem, root, memory::default_huge_page()) {
            Ok(()) => {
                let pool = memory::HugePool::read(root, page).unwrap_or_default();
                Check::pass(
                    NAME,
                    format!(
                        "--memory {mem} needs {} pages, {} free",
                        memory::pages_needed(mem.size, page),
                        pool.available()
                    ),
                )
            }
            Err(e) => Check::failed(NAME, &e),
        },
    )
}

fn count_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// Names in `dir`, sorted; none when it cannot be read.
fn list_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `1 device`, `3 devices`.
fn plural(n: usize, what: &str) -> String {
    match n {
        1 => format!("1 {what}"),
        _ => format!("{n} {what}s"),
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "none listed"
    } else {
        s
    }
}

fn user_name(uid: u32) -> String {
    id_name(
        &std::fs::read_to_string("/etc/passwd").unwrap_or_default(),
        uid,
    )
}

fn group_name(gid: u32) -> String {
    id_name(
        &std::fs::read_to_string("/etc/group").unwrap_or_default(),
        gid,
    )
}

/// The name of numeric id `id` in a passwd or group file (`name:x:id:...`), else the number.
fn id_name(file: &str, id: u32) -> String {
    file.lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            (fields.nth(1)?.parse() == Ok(id)).then(|| name.to_string())
        })
        .unwrap_or_else(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn report(statuses: &[Status]) -> Report {
        Report {
            checks: statuses
                .iter()
                .map(|&s| Check::new("x", s, "d").with_fix("f"))
                .collect(),
        }
    }

    #[test]
    fn ok_unless_something_failed() {
        assert!(report(&[]).ok());
        assert!(report(&[Status::Pass, Status::Warn]).ok());
        assert!(!report(&[Status::Pass, Status::Fail, Status::Warn]).ok());
    }

    #[test]
    fn text_lines() {
        let checks = vec![
            Check::pass("kvm", "/dev/kvm, API 12"),
            Check::failed(
                "device 0000:00:02.0",
                &diag::Advice::new(
                    "device 0000:00:02.0 is bound to no driver, not vfio-pci",
                    "modprobe vfio-pci",
                ),
            ),
            Check::pass("IOMMU group 2", "viable, 1 device").nested(1),
            Check::warn("member 0000:00:02.0", "no driver", "").nested(2),
        ];
        let want = "\
PASS  kvm: /dev/kvm, API 12
FAIL  device 0000:00:02.0 is bound to no driver, not vfio-pci; modprobe vfio-pci
PASS    IOMMU group 2: viable, 1 device
WARN      member 0000:00:02.0: no driver
";
        assert_eq!(Report { checks }.text(), want);
    }

    #[test]
    fn json_object_escaped() {
        let checks = vec![
            Check::pass("kvm", "/dev/kvm, API 12"),
            Check::fail("a \"b\"", "back\\slash\ttab\nnewline", "echo \u{1} > x"),
        ];
        let want = concat!(
            r#"{"ok":false,"checks":["#,
            r#"{"name":"kvm","status":"pass","detail":"/dev/kvm, API 12","fix":null},"#,
            r#"{"name":"a \"b\"","status":"fail","detail":"back\\slash\ttab\nnewline","#,
            r#""fix":"echo \u0001 > x"}]}"#
        );
        assert_eq!(Report { checks }.json(), want);
        assert_eq!(Report::default().json(), r#"{"ok":true,"checks":[]}"#);
    }

    #[test]
    fn refusals_as_json() {
        let advice = diag::Advice::new("--memory 'x' is not a size", "write \"512M\"");
        assert_eq!(
            json_refusal(&advice),
            concat!(
                r#"{"ok":false,"error":"--memory 'x' is not a size; write \"512M\"","#,
                r#""problem":"--memory 'x' is not a size","fix":"write \"512M\""}"#
            )
        );
        let bare = diag::Advice::bare("odd\nline");
        assert_eq!(
            json_refusal(&bare),
            r#"{"ok":false,"error":"odd\\nline","problem":"odd\nline","fix":null}"#
        );
    }

    #[test]
    fn report_goes_out_and_a_failed_write_is_an_error() {
        let cfg = CheckConfig {
            json: true,
            ..Default::default()
        };
        let mut out = Vec::new();
        let ok = run(&cfg, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["ok"], serde_json::Value::Bool(ok));
        let mut full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let e = run(&CheckConfig::default(), &mut full).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    }

    #[test]
    fn kvm_lines() {
        let path = Path::new("/dev/kvm");
        let all = [("irqfd", true), ("ioeventfd", true)];
        let lines = kvm_verdict(path, 12, &all);
        assert_eq!(lines[0].line(), "PASS  kvm: /dev/kvm, API 12");
        assert_eq!(lines[1].line(), "PASS  kvm capabilities: irqfd, ioeventfd");
        let lines = kvm_verdict(path, 11, &[("irqfd", false), ("ioeventfd", true)]);
        assert_eq!(lines[0].status, Status::Fail);
        assert!(lines[1]
            .line()
            .starts_with("FAIL  kvm capabilities: missing irqfd; "));
        let denied = kvm_open_failure(path, libc::EACCES);
        assert!(denied
            .line()
            .contains("permission denied; add your user to the kvm group"));
        assert!(kvm_open_failure(path, libc::ENOENT)
            .line()
            .contains("modprobe kvm_intel"));
    }

    #[test]
    fn memlock_lines() {
        let pass = |l, m| memlock_verdict(l, m).status == Status::Pass;
        assert!(pass(MemlockLimit::IpcLock, Some(1 << 40)));
        assert!(pass(MemlockLimit::Unlimited, None));
        assert!(pass(MemlockLimit::Bytes(2 << 30), None));
        let small = MemlockLimit::Bytes(64 << 10);
        let warn = memlock_verdict(small, None);
        assert_eq!(warn.status, Status::Warn);
        assert!(
            warn.line()
                .starts_with("WARN  memlock: RLIMIT_MEMLOCK 64 KiB: "),
            "{}",
            warn.line()
        );
        let fail = memlock_verdict(small, Some(512 << 20));
        assert_eq!(fail.status, Status::Fail);
        assert_eq!(
            fail.fix
                .as_deref()
                .map(|f| f.starts_with("raise it to 524288 KiB")),
            Some(true)
        );
        let enough = memlock_verdict(MemlockLimit::Bytes(1 << 30), Some(512 << 20));
        assert_eq!(
            enough.line(),
            "PASS  memlock: RLIMIT_MEMLOCK 1 GiB, enough for --memory 512 MiB"
        );
    }

    #[test]
    fn hugepage_lines() {
        let fake = FakeHost::new();
        let pool = |free: u64| {
            for (name, v) in [("nr_hugepages", 1100), ("free_hugepages", free)] {
                fake.write(
                    &format!("sys/kernel/mm/hugepages/hugepages-2048kB/{name}"),
                    &format!("{v}\n"),
                );
            }
            fake.root.join("sys/kernel/mm/hugepages")
        };
        let mem: crate::memory::MemoryConfig = "2G,hugepages=on".parse().unwrap();
        let line = hugepage_check(&mem, &pool(1100)).unwrap().line();
        assert_eq!(
            line,
            "PASS  hugepages: --memory 2G,hugepages=on,hugepage-size=2M needs 1024 pages, 1100 free"
        );
        let line = hugepage_check(&mem, &pool(100)).unwrap().line();
        assert!(
            line.starts_with(
                "FAIL  hugepages: --memory 2G,hugepages=on,hugepage-size=2M: the guest needs 1024 \
                 huge pages of 2 MiB but the pool has 100 free; raise the pool to 2024 pages"
            ),
            "{line}"
        );
        assert!(hugepage_check(&crate::memory::MemoryConfig::new(1 << 30), &pool(0)).is_none());
    }

    #[test]
    fn ir_domain_names() {
        let text = "           CPU0\n  0:  1  IR-IO-APIC    2-edge      timer\n\
                    24:  0  IR-PCI-MSI-0000:00:03.0  0-edge  edu\n\
                    25:  0  IR-PCI-MSIX-0000:00:04.0  1-edge  nvme0q1\n\
                    26:  0  IR-PCI-MSI  512000-edge  ahci\n\
                    27:  0  IO-APIC  4-edge  ttyS0\n";
        assert_eq!(
            ir_domains(text),
            ["IR-IO-APIC", "IR-PCI-MSI", "IR-PCI-MSIX"]
        );
        assert!(ir_domains("  0: 1 IO-APIC 2-edge timer\n").is_empty());
    }

    fn facts(domains: Option<&[&str]>, units: &[Option<bool>], unsafe_allowed: bool) -> IrFacts {
        IrFacts {
            domains: domains.map(|d| d.iter().map(|s| s.to_string()).collect()),
            units: units
                .iter()
                .enumerate()
                .map(|(i, &c)| (format!("dmar{i}"), c))
                .collect(),
            unsafe_allowed,
        }
    }

    #[test]
    fn ir_verdicts() {
        let on = ir_verdict(&facts(Some(&["IR-IO-APIC"]), &[Some(true)], false));
        assert_eq!(
            on.line(),
            "PASS  interrupt remapping: enabled (IR-IO-APIC in /proc/interrupts)"
        );
        let by_cap = ir_verdict(&facts(None, &[Some(true)], false));
        assert_eq!(by_cap.status, Status::Pass);
        let unsafe_ = ir_verdict(&facts(Some(&[]), &[Some(false)], true));
        assert_eq!(unsafe_.status, Status::Warn);
        assert!(unsafe_.detail.contains("unsafe interrupts allowed"));
        let off = ir_verdict(&facts(Some(&[]), &[Some(true)], false));
        assert_eq!(off.status, Status::Fail);
        assert!(off
            .fix
            .as_deref()
            .unwrap()
            .starts_with("the IOMMU can: remove intremap=off"));
        let none = ir_verdict(&facts(None, &[], false));
        assert_eq!(none.status, Status::Fail);
        assert!(none
            .fix
            .as_deref()
            .unwrap()
            .contains("allow_unsafe_interrupts"));
    }

    #[test]
    fn passwd_names() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nkvm:x:104:\n";
        assert_eq!(id_name(passwd, 0), "root");
        assert_eq!(id_name(passwd, 104), "kvm");
        assert_eq!(id_name(passwd, 7), "7");
        assert_eq!(id_name("", 0), "0");
    }

    /// A fake host: `sys/`, `proc/` and `dev/` in a temp dir, removed on drop.
    struct FakeHost {
        root: PathBuf,
    }

    impl Drop for FakeHost {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    impl FakeHost {
        fn new() -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let root =
                std::env::temp_dir().join(format!("vmm-check-test-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            for d in ["sys/class/iommu", "proc", "dev/vfio"] {
                std::fs::create_dir_all(root.join(d)).unwrap();
            }
            Self { root }
        }

        fn host(&self) -> Host {
            let at = |d| self.root.join(d);
            Host::new(at("sys"), at("proc"), at("dev"))
        }

        fn write(&self, path: &str, text: &str) {
            let path = self.root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }

        /// A relative symlink at root-relative `link` pointing at root-relative `target`.
        fn link(&self, link: &str, target: &str) {
            let depth = Path::new(link).parent().unwrap().components().count();
            let at = self.root.join(link);
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            symlink(format!("{}{target}", "../".repeat(depth)), at).unwrap();
        }

        /// PCI device `bdf` in `group`, class `class`, bound to `driver` ("" for none).
        fn pci(&self, bdf: &str, group: u32, class: u32, driver: &str) {
            let dev = format!("sys/devices/pci0000:00/{bdf}");
            self.write(&format!("{dev}/class"), &format!("{class:#08x}\n"));
            self.link(&format!("sys/bus/pci/devices/{bdf}"), &dev);
            self.link(&format!("{dev}/subsystem"), "sys/bus/pci");
            let gdir = format!("sys/kernel/iommu_groups/{group}");
            self.link(&format!("{gdir}/devices/{bdf}"), &dev);
            self.link(&format!("{dev}/iommu_group"), &gdir);
            if !driver.is_empty() {
                let drv = format!("sys/bus/pci/drivers/{driver}");
                std::fs::create_dir_all(self.root.join(&drv)).unwrap();
                self.link(&format!("{dev}/driver"), &drv);
            }
        }

        fn check(&self, spec: &str) -> Vec<String> {
            let cfg = CheckConfig {
                devices: vec![spec.parse().unwrap()],
                ..Default::default()
            };
            let report = self.host().report(&cfg);
            // The host-wide checks come first.
            let device = |c: &&Check| c.name.starts_with("device ");
            report
                .checks
                .iter()
                .skip_while(|c| !device(c))
                .map(Check::line)
                .collect()
        }
    }

    #[test]
    fn ir_from_fake_sysfs() {
        let fake = FakeHost::new();
        // VT-d ecap as QEMU's intel-iommu with intremap=on reports it: IR (bit 3) set.
        fake.write("sys/class/iommu/dmar0/intel-iommu/ecap", "f0205e\n");
        fake.write("sys/class/iommu/dmar1/intel-iommu/ecap", "0x10\n");
        fake.write("sys/class/iommu/ivhd0/amd-iommu/cap", "0x0\n");
        fake.write("sys/class/iommu/virtio/name", "x\n");
        let f = fake.host().ir_facts();
        let want = [
            ("dmar0", Some(true)),
            ("dmar1", Some(false)),
            ("ivhd0", Some(true)),
            ("virtio", None),
        ];
        let want: Vec<_> = want.iter().map(|(n, c)| (n.to_string(), *c)).collect();
        assert_eq!(f.units, want);
        assert_eq!((f.domains, f.unsafe_allowed), (None, false));
        fake.write("proc/interrupts", "  0: 1 IR-IO-APIC 2-edge timer\n");
        fake.write(&format!("sys/{ALLOW_UNSAFE_INTERRUPTS}"), "Y\n");
        let f = fake.host().ir_facts();
        assert_eq!(f.domains, Some(vec!["IR-IO-APIC".to_string()]));
        assert!(f.unsafe_allowed);
        assert_eq!(ir_verdict(&f).status, Status::Pass);
    }

    #[test]
    fn iommu_and_vfio_from_fake_tree() {
        let fake = FakeHost::new();
        let host = fake.host();
        assert_eq!(host.iommu().status, Status::Fail);
        assert!(host
            .vfio()
            .line()
            .starts_with("FAIL  vfio: vfio-pci is not loaded; modprobe"));
        fake.pci("0000:00:03.0", 3, 0x00ff00, "vfio-pci");
        std::fs::create_dir_all(fake.root.join("sys/class/iommu/dmar0")).unwrap();
        assert_eq!(
            host.iommu().line(),
            "PASS  iommu: 1 IOMMU group, units: dmar0"
        );
        assert!(host
            .vfio()
            .line()
            .starts_with("FAIL  vfio: cannot open /dev/vfio/vfio: "));
        fake.write("dev/vfio/vfio", "");
        assert_eq!(
            host.vfio().line(),
            "PASS  vfio: vfio-pci loaded, /dev/vfio/vfio opens"
        );
    }

    #[test]
    fn ready_device() {
        let fake = FakeHost::new();
        fake.pci("0000:00:03.0", 3, 0x00ff00, "vfio-pci");
        fake.write("dev/vfio/3", "");
        let lines = fake.check("vfio-pci,host=00:03.0");
        assert_eq!(
            lines[0],
            "PASS  device 0000:00:03.0: bound to vfio-pci, IOMMU group 3"
        );
        assert_eq!(lines[1], "PASS    IOMMU group 3: viable, 1 device");
        assert_eq!(lines[2], "PASS      member 0000:00:03.0: bound to vfio-pci");
        assert!(
            lines[3].starts_with("PASS    /dev/vfio/3: owner "),
            "{}",
            lines[3]
        );
        assert!(lines[3].ends_with(", opens read-write"), "{}", lines[3]);
        assert_eq!(lines.len(), 4);
        let by_path = fake.check("vfio-pci,sysfsdev=/sys/bus/pci/devices/0000:00:03.0");
        assert_eq!(by_path, lines);
    }

    #[test]
    fn group_not_viable() {
        let fake = FakeHost::new();
        fake.pci("0000:00:05.0", 5, 0x060400, "pcieport");
        fake.pci("0000:01:01.0", 5, 0x00ff00, "vfio-pci");
        fake.pci("0000:01:02.0", 5, 0x00ff00, "uio_pci_generic");
        fake.write("dev/vfio/5", "");
        let lines = fake.check("vfio-pci,host=01:01.0");
        assert_eq!(
            lines[0],
            "PASS  device 0000:01:01.0: bound to vfio-pci, IOMMU group 5"
        );
        assert!(
            lines[1].starts_with(
                "FAIL    IOMMU group 5 is not viable: 0000:01:02.0 is bound to uio_pci_generic; \
                 bind every device of the group to vfio-pci ("
            ),
            "{}",
            lines[1]
        );
        assert_eq!(
            lines[2],
            "PASS      member 0000:00:05.0: bound to pcieport, PCI bridge"
        );
        assert_eq!(lines[3], "PASS      member 0000:01:01.0: bound to vfio-pci");
        assert!(
            lines[4].starts_with(
                "FAIL      member 0000:01:02.0: bound to uio_pci_generic; modprobe vfio-pci; \
                 echo vfio-pci > /sys/bus/pci/devices/0000:01:02.0/driver_override; \
                 echo 0000:01:02.0 > /sys/bus/pci/drivers/uio_pci_generic/unbind"
            ),
            "{}",
            lines[4]
        );
        assert!(
            lines[5].starts_with("PASS    /dev/vfio/5: "),
            "{}",
            lines[5]
        );
    }

    #[test]
    fn unbound_missing_and_groupless_devices() {
        let fake = FakeHost::new();
        fake.pci("0000:00:02.0", 2, 0x020000, "");
        let lines = fake.check("vfio-pci,host=00:02.0");
        assert!(
            lines[0].starts_with(
                "FAIL  device 0000:00:02.0 is bound to no driver, not vfio-pci; modprobe vfio-pci; "
            ),
            "{}",
            lines[0]
        );
        assert_eq!(lines[1], "PASS    IOMMU group 2: viable, 1 device");
        assert_eq!(lines[2], "PASS      member 0000:00:02.0: no driver");
        assert_eq!(lines.len(), 3, "no /dev/vfio line for an unbound device");
        let missing = fake.check("vfio-pci,host=00:09.0");
        assert_eq!(missing.len(), 1);
        assert!(missing[0].starts_with("FAIL  device 0000:00:09.0: no device 0000:00:09.0 in "));
        assert!(
            missing[0].ends_with("; check the address with lspci -D"),
            "{}",
            missing[0]
        );
        std::fs::remove_file(
            fake.root
                .join("sys/devices/pci0000:00/0000:00:02.0/iommu_group"),
        )
        .unwrap();
        let groupless = fake.check("vfio-pci,host=00:02.0");
        assert_eq!(groupless.len(), 1);
        assert!(groupless[0].starts_with("FAIL  device 0000:00:02.0 has no IOMMU group; enable"));
    }

    #[test]
    fn managed_devices_are_not_in_the_way() {
        let fake = FakeHost::new();
        fake.pci("0000:00:05.0", 5, 0x060400, "");
        fake.pci("0000:01:01.0", 5, 0x00ff00, "edu");
        fake.pci("0000:01:02.0", 5, 0x00ff00, "edu");
        let lines = fake.check("vfio-pci,host=01:01.0,managed=on");
        assert_eq!(
            lines[0],
            "PASS  device 0000:01:01.0: bound to edu, IOMMU group 5; managed=on moves it to \
             vfio-pci for the run"
        );
        assert!(
            lines[1].starts_with(
                "FAIL    IOMMU group 5 is not viable: 0000:01:02.0 is bound to edu; bind every"
            ),
            "{}",
            lines[1]
        );
        assert_eq!(
            lines[3],
            "PASS      member 0000:01:01.0: bound to edu; managed=on moves it to vfio-pci"
        );
        assert!(lines[4].starts_with("FAIL      member 0000:01:02.0: bound to edu; "));
        assert_eq!(
            lines.len(),
            5,
            "no /dev/vfio/5 line before the run binds it"
        );
    }

    #[test]
    fn missing_group_node() {
        let fake = FakeHost::new();
        fake.pci("0000:00:03.0", 3, 0x00ff00, "vfio-pci");
        let lines = fake.check("vfio-pci,host=00:03.0");
        assert!(
            lines[3].starts_with(
                "FAIL    /dev/vfio/3: no /dev/vfio/3 for 0000:00:03.0; bind it to vfio-pci (echo "
            ),
            "{}",
            lines[3]
        );
    }
}
