//! The host's IOMMU group model, read from sysfs.
//!
//! Devices the IOMMU cannot isolate from each other form one IOMMU group: its members are
//! listed in `/sys/kernel/iommu_groups/N/devices/`, a device's `iommu_group` link points at
//! its group, and its `driver` link at the driver bound to it. VFIO hands out a group
//! (`/dev/vfio/N`) only when it is viable: every member is bound to vfio-pci (or pci-stub),
//! unbound, or a PCI bridge.
//!
//! This module owns resolving a user-given device to its sysfs directory, finding its group
//! and judging the group's viability. It only reads sysfs below the root it is given (`/sys`
//! in production, a fake tree in tests); it never writes sysfs, binds drivers or opens
//! `/dev/vfio`.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

/// The driver a passed-through PCI device must be bound to.
pub const VFIO_PCI_DRIVER: &str = "vfio-pci";

/// Where sysfs is mounted on a real host.
pub const SYSFS_ROOT: &str = "/sys";

/// PCI class code (base class and subclass, `class >> 8`) of a PCI-to-PCI bridge.
const PCI_BRIDGE_CLASS: u32 = 0x0604;

/// How to bind a device to vfio-pci, with `DEV` and `DRIVER` standing for the device and its
/// current driver.
const BIND_HINT: &str = "echo vfio-pci > /sys/bus/pci/devices/DEV/driver_override; \
                         echo DEV > /sys/bus/pci/drivers/DRIVER/unbind; \
                         echo DEV > /sys/bus/pci/drivers_probe";

/// Errors reading the IOMMU group model from sysfs.
#[derive(Debug)]
pub enum Error {
    /// A PCI address with no device under `<root>/bus/pci/devices`.
    NoSuchDevice {
        /// The address as given.
        address: String,
        /// The directory it was looked up in.
        dir: PathBuf,
    },
    /// A path that is not a directory under the sysfs root.
    NoSuchPath {
        /// The path as given.
        path: PathBuf,
        /// The sysfs root.
        root: PathBuf,
    },
    /// A directory under the sysfs root that is neither a PCI device nor an mdev.
    NotADevice {
        /// The path as given.
        path: PathBuf,
        /// The bus it belongs to (its `subsystem` link), if any.
        subsystem: Option<String>,
        /// The sysfs root.
        root: PathBuf,
    },
    /// The device has no `iommu_group` link.
    NoIommuGroup {
        /// The device's name.
        device: String,
    },
    /// No `<root>/kernel/iommu_groups/N/devices` directory.
    NoSuchGroup {
        /// The group number.
        group: u32,
        /// The directory that should list its members.
        dir: PathBuf,
    },
    /// Some member of the group is bound to a host driver.
    NotViable {
        /// The group number.
        group: u32,
        /// Each member in the way, with the driver it is bound to.
        blockers: Vec<(String, String)>,
    },
    /// The device itself is not bound to vfio-pci.
    NotVfioBound {
        /// The device's name.
        device: String,
        /// Its current driver, `None` when unbound.
        driver: Option<String>,
    },
    /// A sysfs file or link holds something the kernel would not write.
    Malformed {
        /// The file or link.
        path: PathBuf,
        /// What it holds.
        content: String,
    },
    /// Reading sysfs failed.
    Io {
        /// The file, link or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl diag::Explain for Error {
    fn advice(&self) -> diag::Advice {
        use diag::Advice;
        match self {
            Error::NoSuchDevice { address, dir } => Advice::new(
                format!("no device {address} in {}", dir.display()),
                "check the address with lspci -D",
            ),
            Error::NoSuchPath { path, root } => Advice::new(
                format!("no device at {}", path.display()),
                device_path_fix(root),
            ),
            Error::NotADevice {
                path,
                subsystem,
                root,
            } => Advice::new(
                match subsystem {
                    Some(bus) => format!(
                        "{} is a {bus} device, not a PCI device or an mdev",
                        path.display()
                    ),
                    None => format!(
                        "{} is not a device directory (it has no subsystem link)",
                        path.display()
                    ),
                },
                device_path_fix(root),
            ),
            Error::NoIommuGroup { device } => Advice::new(
                format!("device {device} has no IOMMU group"),
                "enable the IOMMU (intel_iommu=on or amd_iommu=on on the host kernel command \
                 line) and load vfio-pci (modprobe vfio-pci)",
            ),
            Error::NoSuchGroup { group, dir } => Advice::new(
                format!(
                    "IOMMU group {group} does not exist ({} is missing)",
                    dir.display()
                ),
                "list the groups with ls /sys/kernel/iommu_groups",
            ),
            Error::NotViable { group, blockers } => Advice::new(
                format!(
                    "IOMMU group {group} is not viable: {}",
                    describe_blockers(blockers)
                ),
                format!(
                    "bind every device of the group to vfio-pci ({BIND_HINT}) or pass them all \
                     through"
                ),
            ),
            Error::NotVfioBound { device, driver } => not_vfio(device, driver.as_deref()),
            Error::Malformed { path, content } => Advice::new(
                format!("unexpected contents in {}: {content:?}", path.display()),
                "this is not a kernel sysfs tree; check what is mounted at /sys",
            ),
            Error::Io { path, source } => Advice::new(
                format!("cannot read {}: {source}", path.display()),
                "check that sysfs is mounted and readable (run as root)",
            ),
        }
    }
}
diag::explained!(Error);

fn device_path_fix(root: &Path) -> String {
    format!(
        "give a PCI address (lspci -D) or a device path under {0} \
         (ls {0}/bus/pci/devices or ls {0}/bus/mdev/devices)",
        root.display()
    )
}

fn describe_blockers(blockers: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (dev, driver)) in blockers.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(out, "{sep}{dev} is bound to {driver}");
    }
    out
}

fn not_vfio(device: &str, driver: Option<&str>) -> diag::Advice {
    let override_ = format!("echo vfio-pci > /sys/bus/pci/devices/{device}/driver_override");
    let probe = format!("echo {device} > /sys/bus/pci/drivers_probe");
    match driver {
        Some(d) => diag::Advice::new(
            format!("device {device} is bound to {d}, not vfio-pci"),
            format!(
                "modprobe vfio-pci; {override_}; echo {device} > /sys/bus/pci/drivers/{d}/unbind; \
                 {probe}"
            ),
        ),
        None => diag::Advice::new(
            format!("device {device} is bound to no driver, not vfio-pci"),
            format!("modprobe vfio-pci; {override_}; {probe}"),
        ),
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A device resolved to its sysfs directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysfsDevice {
    /// Its name: a PCI address such as `0000:00:03.0`, or an mdev UUID.
    pub name: String,
    /// Its canonical directory, e.g. `/sys/devices/pci0000:00/0000:00:03.0`.
    pub path: PathBuf,
}

/// One device of an IOMMU group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMember {
    /// Its name, e.g. `0000:01:01.0`.
    pub name: String,
    /// The driver bound to it, `None` when unbound.
    pub driver: Option<String>,
    /// Whether it is a PCI-to-PCI bridge (class 0x0604xx).
    pub is_bridge: bool,
}

impl GroupMember {
    /// Whether this member lets VFIO hand out its group: unbound, bound to vfio-pci (or
    /// pci-stub, which only keeps other drivers off), or a bridge.
    pub fn is_viable(&self) -> bool {
        self.is_bridge
            || match self.driver.as_deref() {
                None => true,
                Some(d) => d == VFIO_PCI_DRIVER || d == "pci-stub",
            }
    }
}

/// The sysfs tree below a root: `/sys` on a host, a fake tree in tests.
#[derive(Clone, Debug)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Self::new(SYSFS_ROOT)
    }
}

impl Sysfs {
    /// Sysfs mounted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root this reads below.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves a user-given device: a PCI address (`0000:00:03.0`, or `00:03.0` in domain
    /// 0) or a path under the root (`/sys/bus/pci/devices/..`, `/sys/devices/pci0000:00/..`,
    /// `/sys/bus/mdev/devices/UUID`). Paths starting with `/sys` are re-rooted onto the root.
    pub fn device(&self, spec: impl AsRef<Path>) -> Result<SysfsDevice, Error> {
        let spec = spec.as_ref();
        match spec.to_str().filter(|s| !s.contains('/')) {
            Some(address) => self.pci_device(address),
            None => self.path_device(spec),
        }
    }

    fn pci_device(&self, address: &str) -> Result<SysfsDevice, Error> {
        let dir = self.root.join("bus/pci/devices");
        let full = match address.matches(':').count() {
            1 => format!("0000:{address}"),
            _ => address.to_string(),
        };
        self.resolve(&dir.join(full)).ok_or(Error::NoSuchDevice {
            address: address.to_string(),
            dir,
        })
    }

    /// A directory under the root that is a PCI device or an mdev (its `subsystem` link
    /// says which bus it is on).
    fn path_device(&self, path: &Path) -> Result<SysfsDevice, Error> {
        let dev = self
            .resolve(&self.reroot(path))
            .ok_or_else(|| Error::NoSuchPath {
                path: path.to_path_buf(),
                root: self.root.clone(),
            })?;
        match read_link_name(&dev.path.join("subsystem"))? {
            Some(bus) if bus == "pci" || bus == "mdev" => Ok(dev),
            subsystem => Err(Error::NotADevice {
                path: path.to_path_buf(),
                subsystem,
                root: self.root.clone(),
            }),
        }
    }

    /// Maps `/sys/...` onto the root; paths already under the root are kept.
    fn reroot(&self, path: &Path) -> PathBuf {
        if path.starts_with(&self.root) {
            return path.to_path_buf();
        }
        match path.strip_prefix(SYSFS_ROOT) {
            Ok(rest) => self.root.join(rest),
            Err(_) => path.to_path_buf(),
        }
    }

    /// The canonical device directory at `path`, if it is a directory under the root.
    fn resolve(&self, path: &Path) -> Option<SysfsDevice> {
        let root = self
            .root
            .canonicalize()
            .unwrap_or_else(|_| self.root.clone());
        let path = path.canonicalize().ok().filter(|p| p.is_dir())?;
        if path == root || !path.starts_with(&root) {
            return None;
        }
        let name = path.file_name()?.to_str()?.to_string();
        Some(SysfsDevice { name, path })
    }

    /// The device's IOMMU group number; `None` when it has no `iommu_group` link (IOMMU
    /// off, or the device is not behind one).
    pub fn group_of(&self, dev: &SysfsDevice) -> Result<Option<u32>, Error> {
        let link = dev.path.join("iommu_group");
        let Some(target) = read_link_name(&link)? else {
            return Ok(None);
        };
        let group = target.parse().map_err(|_| Error::Malformed {
            path: link,
            content: target,
        })?;
        Ok(Some(group))
    }

    /// The device's IOMMU group number, or [`Error::NoIommuGroup`] saying how to get one.
    pub fn require_group(&self, dev: &SysfsDevice) -> Result<u32, Error> {
        self.group_of(dev)?.ok_or_else(|| Error::NoIommuGroup {
            device: dev.name.clone(),
        })
    }

    /// The driver bound to the device (basename of its `driver` link), `None` when unbound.
    pub fn driver_of(&self, dev: &SysfsDevice) -> Result<Option<String>, Error> {
        read_link_name(&dev.path.join("driver"))
    }

    /// Fails with [`Error::NotVfioBound`] unless the PCI device is bound to vfio-pci.
    pub fn require_vfio_pci(&self, dev: &SysfsDevice) -> Result<(), Error> {
        match self.driver_of(dev)? {
            Some(d) if d == VFIO_PCI_DRIVER => Ok(()),
            driver => Err(Error::NotVfioBound {
                device: dev.name.clone(),
                driver,
            }),
        }
    }

    /// Every device of IOMMU group `group`, sorted by name.
    pub fn group_devices(&self, group: u32) -> Result<Vec<GroupMember>, Error> {
        let dir = self.group_dir(group);
        let entries = match std::fs::read_dir(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NoSuchGroup { group, dir })
            }
            r => r.map_err(io_err(&dir))?,
        };
        let mut members = Vec::new();
        for entry in entries {
            members.push(member(&entry.map_err(io_err(&dir))?.path())?);
        }
        members.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(members)
    }

    /// Succeeds when VFIO can hand out group `group`; otherwise [`Error::NotViable`] lists
    /// every member in the way with its driver.
    pub fn check_viable(&self, group: u32) -> Result<(), Error> {
        let blockers: Vec<_> = self
            .group_devices(group)?
            .into_iter()
            .filter(|m| !m.is_viable())
            .map(|m| (m.name, m.driver.unwrap_or_default()))
            .collect();
        match blockers.is_empty() {
            true => Ok(()),
            false => Err(Error::NotViable { group, blockers }),
        }
    }

    fn group_dir(&self, group: u32) -> PathBuf {
        self.root
            .join(format!("kernel/iommu_groups/{group}/devices"))
    }
}

/// Reads one member of a group from its entry in the group's `devices` directory.
fn member(entry: &Path) -> Result<GroupMember, Error> {
    let name = entry
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    Ok(GroupMember {
        name,
        driver: read_link_name(&entry.join("driver"))?,
        is_bridge: read_class(&entry.join("class"))?.is_some_and(|c| c >> 8 == PCI_BRIDGE_CLASS),
    })
}

/// The basename of the symlink `link`'s target; `None` when there is no such link.
fn read_link_name(link: &Path) -> Result<Option<String>, Error> {
    let target = match std::fs::read_link(link) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        r => r.map_err(io_err(link))?,
    };
    match target.file_name().and_then(|n| n.to_str()) {
        Some(name) => Ok(Some(name.to_string())),
        None => Err(Error::Malformed {
            path: link.to_path_buf(),
            content: target.display().to_string(),
        }),
    }
}

/// The 24-bit PCI class code in a `class` file (`0x060400`); `None` when there is none
/// (an mdev, or a non-PCI device).
fn read_class(path: &Path) -> Result<Option<u32>, Error> {
    let text = match std::fs::read_to_string(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        r => r.map_err(io_err(path))?,
    };
    let digits = text.trim().trim_start_matches("0x");
    match u32::from_str_radix(digits, 16) {
        Ok(class) => Ok(Some(class)),
        Err(_) => Err(Error::Malformed {
            path: path.to_path_buf(),
            content: text,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicU32, Ordering};

    const MDEV: &str = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";

    /// A fake sysfs tree in a unique temp dir, removed on drop. Links have the kernel's
    /// relative shapes.
    struct FakeSysfs {
        root: PathBuf,
    }

    impl Drop for FakeSysfs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    impl FakeSysfs {
        fn new() -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("vfio-sysfs-test-{}-{n}", std::process::id());
            let root = std::env::temp_dir().join(name);
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).unwrap();
            Self { root }
        }

        fn sysfs(&self) -> Sysfs {
            Sysfs::new(&self.root)
        }

        /// A relative symlink at root-relative `link` pointing at root-relative `target`.
        fn link(&self, link: &str, target: &str) {
            let depth = Path::new(link).parent().unwrap().components().count();
            let at = self.root.join(link);
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            symlink(format!("{}{target}", "../".repeat(depth)), at).unwrap();
        }

        /// Device dir `devices/<parent>/<name>` with its bus link, group and driver.
        fn device(&self, bus: &str, parent: &str, name: &str, group: Option<u32>) -> String {
            let dev = format!("devices/{parent}/{name}");
            std::fs::create_dir_all(self.root.join(&dev)).unwrap();
            self.link(&format!("bus/{bus}/devices/{name}"), &dev);
            self.link(&format!("{dev}/subsystem"), &format!("bus/{bus}"));
            if let Some(g) = group {
                let gdir = format!("kernel/iommu_groups/{g}");
                self.link(&format!("{gdir}/devices/{name}"), &dev);
                self.link(&format!("{dev}/iommu_group"), &gdir);
            }
            dev
        }

        fn pci(&self, parent: &str, bdf: &str, class: u32, group: Option<u32>, driver: &str) {
            let dev = self.device("pci", parent, bdf, group);
            std::fs::write(
                self.root.join(&dev).join("class"),
                format!("{class:#08x}\n"),
            )
            .unwrap();
            self.bind(&dev, "pci", driver);
        }

        fn mdev(&self, parent: &str, group: u32) {
            let dev = self.device("mdev", parent, MDEV, Some(group));
            self.bind(&dev, "mdev", "vfio_mdev");
        }

        /// Binds `dev` to `driver` on `bus`; an empty driver leaves it unbound.
        fn bind(&self, dev: &str, bus: &str, driver: &str) {
            if driver.is_empty() {
                return;
            }
            let drv = format!("bus/{bus}/drivers/{driver}");
            std::fs::create_dir_all(self.root.join(&drv)).unwrap();
            self.link(&format!("{dev}/driver"), &drv);
        }
    }

    const ENDPOINT: u32 = 0x00ff00;
    const BRIDGE: u32 = 0x060400;

    /// The rig's bridge group: bridge 00:05.0 with two endpoints behind it.
    fn bridge_group(bridge_driver: &str, drivers: [&str; 2]) -> FakeSysfs {
        let fake = FakeSysfs::new();
        fake.pci("pci0000:00", "0000:00:05.0", BRIDGE, Some(5), bridge_driver);
        let behind = "pci0000:00/0000:00:05.0";
        fake.pci(behind, "0000:01:02.0", ENDPOINT, Some(5), drivers[1]);
        fake.pci(behind, "0000:01:01.0", ENDPOINT, Some(5), drivers[0]);
        fake
    }

    fn single(group: Option<u32>, driver: &str) -> FakeSysfs {
        let fake = FakeSysfs::new();
        fake.pci("pci0000:00", "0000:00:03.0", ENDPOINT, group, driver);
        fake
    }

    #[test]
    fn group_number_from_link() {
        let fake = single(Some(3), "vfio-pci");
        let sysfs = fake.sysfs();
        let dev = sysfs.device("0000:00:03.0").unwrap();
        assert_eq!(sysfs.group_of(&dev).unwrap(), Some(3));
        assert_eq!(sysfs.require_group(&dev).unwrap(), 3);
    }

    #[test]
    fn groupless_device() {
        let fake = single(None, "e1000e");
        let sysfs = fake.sysfs();
        let dev = sysfs.device("0000:00:03.0").unwrap();
        assert_eq!(sysfs.group_of(&dev).unwrap(), None);
        let msg = sysfs.require_group(&dev).unwrap_err().to_string();
        assert_eq!(
            msg,
            "device 0000:00:03.0 has no IOMMU group; enable the IOMMU (intel_iommu=on or \
             amd_iommu=on on the host kernel command line) and load vfio-pci (modprobe vfio-pci)"
        );
    }

    #[test]
    fn members_of_bridge_group_sorted() {
        let fake = bridge_group("", ["vfio-pci", ""]);
        let members = fake.sysfs().group_devices(5).unwrap();
        let member = |name: &str, driver: Option<&str>, is_bridge| GroupMember {
            name: name.to_string(),
            driver: driver.map(str::to_string),
            is_bridge,
        };
        let want = vec![
            member("0000:00:05.0", None, true),
            member("0000:01:01.0", Some("vfio-pci"), false),
            member("0000:01:02.0", None, false),
        ];
        assert_eq!(members, want);
    }

    #[test]
    fn device_behind_bridge_resolves_with_group() {
        let fake = bridge_group("", ["vfio-pci", "vfio-pci"]);
        let sysfs = fake.sysfs();
        let dev = sysfs.device("0000:01:02.0").unwrap();
        assert!(dev
            .path
            .ends_with("devices/pci0000:00/0000:00:05.0/0000:01:02.0"));
        assert_eq!(sysfs.group_of(&dev).unwrap(), Some(5));
    }

    #[test]
    fn viable_all_vfio_pci() {
        let fake = FakeSysfs::new();
        fake.pci("pci0000:00", "0000:00:03.0", ENDPOINT, Some(3), "vfio-pci");
        fake.pci("pci0000:00", "0000:00:03.1", ENDPOINT, Some(3), "vfio-pci");
        fake.sysfs().check_viable(3).unwrap();
    }

    #[test]
    fn viable_with_unbound_member() {
        let fake = bridge_group("", ["vfio-pci", ""]);
        fake.sysfs().check_viable(5).unwrap();
    }

    #[test]
    fn viable_with_bridge_on_pcieport() {
        let fake = bridge_group("pcieport", ["vfio-pci", "vfio-pci"]);
        fake.sysfs().check_viable(5).unwrap();
    }

    #[test]
    fn viable_with_pci_stub_member() {
        let fake = bridge_group("", ["vfio-pci", "pci-stub"]);
        fake.sysfs().check_viable(5).unwrap();
    }

    #[test]
    fn not_viable_lists_every_host_driver() {
        let fake = bridge_group("pcieport", ["edu-host-driver", "e1000e"]);
        let err = fake.sysfs().check_viable(5).unwrap_err();
        let want = "IOMMU group 5 is not viable: 0000:01:01.0 is bound to edu-host-driver, \
             0000:01:02.0 is bound to e1000e; bind every device of the group to vfio-pci \
             (echo vfio-pci > /sys/bus/pci/devices/DEV/driver_override; \
             echo DEV > /sys/bus/pci/drivers/DRIVER/unbind; \
             echo DEV > /sys/bus/pci/drivers_probe) or pass them all through";
        assert_eq!(err.to_string(), want);
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn missing_group() {
        let fake = single(Some(3), "vfio-pci");
        let err = fake.sysfs().group_devices(7).unwrap_err();
        assert!(matches!(err, Error::NoSuchGroup { group: 7, .. }), "{err}");
        assert!(fake.sysfs().check_viable(7).is_err());
    }

    #[test]
    fn every_path_form_resolves_to_same_device() {
        let fake = single(Some(3), "vfio-pci");
        let sysfs = fake.sysfs();
        let want = sysfs.device("0000:00:03.0").unwrap();
        assert_eq!(want.name, "0000:00:03.0");
        assert!(want.path.ends_with("devices/pci0000:00/0000:00:03.0"));
        let rooted = fake.root.join("bus/pci/devices/0000:00:03.0");
        let forms = [
            PathBuf::from("00:03.0"),
            PathBuf::from("/sys/bus/pci/devices/0000:00:03.0"),
            PathBuf::from("/sys/bus/pci/devices/0000:00:03.0/"),
            PathBuf::from("/sys/devices/pci0000:00/0000:00:03.0"),
            rooted,
        ];
        for form in forms {
            assert_eq!(sysfs.device(&form).unwrap(), want, "{}", form.display());
        }
    }

    #[test]
    fn mdev_path_forms_resolve() {
        let fake = FakeSysfs::new();
        fake.pci("pci0000:00", "0000:00:02.0", 0x030000, Some(1), "i915");
        fake.mdev("pci0000:00/0000:00:02.0", 9);
        let sysfs = fake.sysfs();
        let by_bus = sysfs
            .device(format!("/sys/bus/mdev/devices/{MDEV}"))
            .unwrap();
        let by_parent = format!("/sys/devices/pci0000:00/0000:00:02.0/{MDEV}");
        assert_eq!(sysfs.device(by_parent).unwrap(), by_bus);
        assert_eq!(by_bus.name, MDEV);
        assert_eq!(sysfs.group_of(&by_bus).unwrap(), Some(9));
        assert_eq!(
            sysfs.driver_of(&by_bus).unwrap().as_deref(),
            Some("vfio_mdev")
        );
        let members = sysfs.group_devices(9).unwrap();
        assert_eq!(members.len(), 1);
        assert!(!members[0].is_bridge);
    }

    #[test]
    fn missing_device_by_address() {
        let fake = single(Some(3), "vfio-pci");
        let err = fake.sysfs().device("0000:00:09.0").unwrap_err();
        let dir = fake.root.join("bus/pci/devices");
        let want = format!(
            "no device 0000:00:09.0 in {}; check the address with lspci -D",
            dir.display()
        );
        assert_eq!(err.to_string(), want);
        let prod = Error::NoSuchDevice {
            address: "0000:00:09.0".into(),
            dir: PathBuf::from("/sys/bus/pci/devices"),
        };
        let want =
            "no device 0000:00:09.0 in /sys/bus/pci/devices; check the address with lspci -D";
        assert_eq!(prod.to_string(), want);
    }

    #[test]
    fn missing_or_foreign_paths() {
        let fake = single(Some(3), "vfio-pci");
        let sysfs = fake.sysfs();
        for bad in [
            "/sys/bus/pci/devices/0000:00:09.0",
            "/etc",
            "/sys/../etc",
            "/sys",
        ] {
            let err = sysfs.device(bad).unwrap_err();
            assert!(matches!(err, Error::NoSuchPath { .. }), "{bad}: {err}");
            assert!(err
                .to_string()
                .starts_with(&format!("no device at {bad}; ")));
        }
        let prod = Error::NoSuchPath {
            path: PathBuf::from("/sys/bus/mdev/devices/x"),
            root: PathBuf::from(SYSFS_ROOT),
        };
        let want = "no device at /sys/bus/mdev/devices/x; give a PCI address (lspci -D) or a \
             device path under /sys (ls /sys/bus/pci/devices or ls /sys/bus/mdev/devices)";
        assert_eq!(prod.to_string(), want);
        // A regular file under the root is not a device directory either.
        let class = fake.root.join("devices/pci0000:00/0000:00:03.0/class");
        assert!(sysfs.device(class).is_err());
    }

    #[test]
    fn driver_of_device() {
        let fake = FakeSysfs::new();
        fake.pci("pci0000:00", "0000:00:03.0", ENDPOINT, Some(3), "vfio-pci");
        fake.pci("pci0000:00", "0000:00:04.0", ENDPOINT, Some(4), "e1000e");
        fake.pci("pci0000:00", "0000:00:06.0", ENDPOINT, Some(6), "");
        let sysfs = fake.sysfs();
        let dev = |bdf: &str| sysfs.device(bdf).unwrap();
        let vfio = dev("0000:00:03.0");
        assert_eq!(sysfs.driver_of(&vfio).unwrap().as_deref(), Some("vfio-pci"));
        sysfs.require_vfio_pci(&vfio).unwrap();
        assert_eq!(sysfs.driver_of(&dev("0000:00:06.0")).unwrap(), None);
        let msg = sysfs.require_vfio_pci(&dev("0000:00:04.0")).unwrap_err();
        let want = "device 0000:00:04.0 is bound to e1000e, not vfio-pci; modprobe vfio-pci; \
             echo vfio-pci > /sys/bus/pci/devices/0000:00:04.0/driver_override; \
             echo 0000:00:04.0 > /sys/bus/pci/drivers/e1000e/unbind; \
             echo 0000:00:04.0 > /sys/bus/pci/drivers_probe";
        assert_eq!(msg.to_string(), want);
        let unbound = sysfs.require_vfio_pci(&dev("0000:00:06.0")).unwrap_err();
        assert!(unbound
            .to_string()
            .starts_with("device 0000:00:06.0 is bound to no driver"));
    }

    #[test]
    fn malformed_class_is_reported() {
        let fake = single(Some(3), "vfio-pci");
        let class = fake.root.join("devices/pci0000:00/0000:00:03.0/class");
        std::fs::write(&class, "bridge\n").unwrap();
        let err = fake.sysfs().group_devices(3).unwrap_err();
        assert!(matches!(err, Error::Malformed { .. }), "{err}");
    }

    #[test]
    fn problem_and_fix_apart() {
        use diag::Explain;
        let fake = bridge_group("pcieport", ["vfio-pci", "uio_pci_generic"]);
        let sysfs = fake.sysfs();
        let err = sysfs.check_viable(5).unwrap_err();
        let advice = err.advice();
        assert_eq!(
            advice.problem,
            "IOMMU group 5 is not viable: 0000:01:02.0 is bound to uio_pci_generic"
        );
        assert!(
            advice
                .fix
                .starts_with("bind every device of the group to vfio-pci ("),
            "{advice:?}"
        );
        assert_eq!(
            format!("{}; {}", advice.problem, advice.fix),
            err.to_string()
        );
        let err = sysfs
            .require_vfio_pci(&sysfs.device("0000:00:05.0").unwrap())
            .unwrap_err();
        let advice = err.advice();
        assert_eq!(
            advice.problem,
            "device 0000:00:05.0 is bound to pcieport, not vfio-pci"
        );
        assert!(advice.fix.starts_with("modprobe vfio-pci; "), "{advice:?}");
        let io = Error::Io {
            path: "/sys/x".into(),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        let advice = io.advice();
        assert!(
            advice
                .problem
                .starts_with("cannot read /sys/x: Permission denied"),
            "{advice:?}"
        );
        assert!(
            advice.fix.starts_with("check that sysfs is mounted"),
            "{advice:?}"
        );
    }

    #[test]
    fn directories_that_are_not_devices() {
        let fake = single(Some(3), "vfio-pci");
        std::fs::create_dir_all(fake.root.join("kernel/mm")).unwrap();
        let sysfs = fake.sysfs();
        let err = sysfs.device("/sys/kernel/mm").unwrap_err();
        assert!(
            matches!(
                err,
                Error::NotADevice {
                    subsystem: None,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("/sys/kernel/mm is not a device directory (it has no subsystem link); give a PCI address"),
            "{err}"
        );
        fake.device("usb", "pci0000:00/0000:00:03.0", "usb1", None);
        let err = sysfs.device("/sys/bus/usb/devices/usb1").unwrap_err();
        assert!(
            err.to_string().starts_with(
                "/sys/bus/usb/devices/usb1 is a usb device, not a PCI device or an mdev; "
            ),
            "{err}"
        );
    }

    #[test]
    fn fake_tree_is_removed() {
        let root = FakeSysfs::new().root.clone();
        assert!(!root.exists());
    }
}
