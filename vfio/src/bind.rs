//! Managed binding (`--device ...,managed=on`, libvirt's `managed='yes'`): a PCI device is
//! moved from its host driver to vfio-pci for the VM's lifetime and put back afterwards.
//!
//! Binding uses `driver_override`, so only vfio-pci can claim the device while it is ours:
//! save the driver and the override, write `vfio-pci` to `driver_override`, unbind from the
//! host driver, `drivers_probe`. Restoring reverses it: unbind from vfio-pci, put the saved
//! override back, `drivers_probe`, and if that did not find the old driver, bind it
//! explicitly. Restoring must happen only after every VFIO file of the device is closed:
//! vfio-pci's unbind waits for its user to let go.
//!
//! All paths are below a [`Sysfs`] root so the write sequence is unit-tested on a fake tree.

use crate::sysfs::{Sysfs, SysfsDevice, VFIO_PCI_DRIVER};
use std::io;
use std::path::{Path, PathBuf};

/// Errors moving a device between drivers.
#[derive(Debug)]
pub enum Error {
    /// sysfs lookups failed.
    Sysfs(crate::sysfs::Error),
    /// The device has no `driver_override` (not a PCI device, e.g. an mdev).
    NotPci {
        /// Device name.
        device: String,
    },
    /// vfio-pci is not loaded.
    NoVfioPci,
    /// Another member of the group is on a host driver.
    GroupInUse {
        /// Device name.
        device: String,
        /// Its group.
        group: u32,
        /// Other members on host drivers: (name, driver).
        others: Vec<(String, String)>,
    },
    /// A sysfs write failed.
    Write {
        /// File written.
        path: PathBuf,
        /// What was written.
        value: String,
        /// Why.
        source: io::Error,
    },
    /// The device did not end up on vfio-pci.
    NotBound {
        /// Device name.
        device: String,
        /// The driver found instead.
        found: Option<String>,
    },
}

diag::wrap!(Error: Sysfs(crate::sysfs::Error));

impl diag::Explain for Error {
    fn advice(&self) -> diag::Advice {
        use diag::Advice;
        match self {
            Error::Sysfs(e) => e.advice(),
            Error::NotPci { device } => Advice::new(
                format!("managed=on works for PCI devices only; {device} has no driver_override"),
                "bind it yourself and drop managed=on",
            ),
            Error::NoVfioPci => Advice::new(
                "managed=on needs the vfio-pci driver, which is not loaded",
                "modprobe vfio-pci",
            ),
            Error::GroupInUse {
                device,
                group,
                others,
            } => Advice::new(
                format!(
                    "managed=on cannot take {device}: IOMMU group {group} also holds {}",
                    describe(others)
                ),
                "pass those through too, or unbind them",
            ),
            Error::Write {
                path,
                value,
                source,
            } => Advice::new(
                format!(
                    "managed=on: cannot write '{value}' to {}: {source}",
                    path.display()
                ),
                match source.kind() {
                    io::ErrorKind::PermissionDenied => {
                        "managed=on needs root (or bind the device to vfio-pci yourself)"
                    }
                    _ => "check dmesg for what the driver reported",
                },
            ),
            Error::NotBound { device, found } => Advice::new(
                format!(
                    "managed=on: {device} is on {} after binding, not vfio-pci",
                    found.as_deref().unwrap_or("no driver")
                ),
                "check dmesg",
            ),
        }
    }
}
diag::explained!(Error);

fn describe(others: &[(String, String)]) -> String {
    others
        .iter()
        .map(|(name, driver)| format!("{name} bound to {driver}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A device moved to vfio-pci, and what to put back.
#[derive(Debug)]
pub struct Binding {
    sysfs: Sysfs,
    dev: SysfsDevice,
    /// Its driver before, `None` when it had none.
    original: Option<String>,
    /// Its `driver_override` before (empty when none).
    original_override: String,
    restored: bool,
}

impl Binding {
    /// The device.
    pub fn device(&self) -> &str {
        &self.dev.name
    }

    /// The driver it had before, and will get back.
    pub fn original_driver(&self) -> Option<&str> {
        self.original.as_deref()
    }

    /// Puts the device back on its original driver (does nothing if it was on vfio-pci
    /// already). Call only when no VFIO file of the device is open anymore. Returns the
    /// driver it ended on, or a message for the user.
    pub fn restore(mut self) -> Result<Option<String>, String> {
        self.restored = true;
        if self.original.as_deref() == Some(VFIO_PCI_DRIVER) {
            return Ok(self.original.clone());
        }
        let name = self.dev.name.clone();
        let drivers = self.sysfs.root().join("bus/pci/drivers");
        let current = self.sysfs.driver_of(&self.dev).map_err(|e| e.to_string())?;
        let step = |path: PathBuf, value: &str| write(&path, value).map_err(|e| e.to_string());
        if current.as_deref() == Some(VFIO_PCI_DRIVER) {
            step(drivers.join(VFIO_PCI_DRIVER).join("unbind"), &name)?;
        }
        // A lone newline clears the override (sysfs ignores empty writes).
        let saved = match self.original_override.as_str() {
            "" => "\n",
            s => s,
        };
        step(self.dev.path.join("driver_override"), saved)?;
        let Some(original) = self.original.clone() else {
            return Ok(None);
        };
        step(self.sysfs.root().join("bus/pci/drivers_probe"), &name)?;
        if self.sysfs.driver_of(&self.dev).map_err(|e| e.to_string())? != Some(original.clone()) {
            step(drivers.join(&original).join("bind"), &name)?;
        }
        match self.sysfs.driver_of(&self.dev).map_err(|e| e.to_string())? {
            Some(d) if d == original => Ok(Some(d)),
            other => Err(format!(
                "{name} is on {} after restoring, not {original}: echo {name} > /sys/bus/pci/drivers/{original}/bind",
                other.as_deref().unwrap_or("no driver")
            )),
        }
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        if !self.restored && self.original.as_deref() != Some(VFIO_PCI_DRIVER) {
            log::warn!(
                "{} stays on vfio-pci (vmm could not restore it): echo > /sys/bus/pci/devices/{0}/driver_override; echo {0} > /sys/bus/pci/drivers/vfio-pci/unbind; echo {0} > /sys/bus/pci/drivers_probe",
                self.dev.name
            );
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), Error> {
    std::fs::write(path, value).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

/// Moves `dev` to vfio-pci. `together` names the devices of this VM (they may share the
/// group); any other group member on a host driver makes it refuse before touching anything.
pub fn bind_to_vfio(
    sysfs: &Sysfs,
    dev: &SysfsDevice,
    together: &[String],
) -> Result<Binding, Error> {
    let override_path = dev.path.join("driver_override");
    let original_override = match std::fs::read_to_string(&override_path) {
        Ok(s) => s.trim().to_string(),
        Err(_) => {
            return Err(Error::NotPci {
                device: dev.name.clone(),
            })
        }
    };
    // The kernel shows an unset override as "(null)".
    let original_override = match original_override.as_str() {
        "(null)" => String::new(),
        _ => original_override,
    };
    let drivers = sysfs.root().join("bus/pci/drivers");
    if !drivers.join(VFIO_PCI_DRIVER).is_dir() {
        return Err(Error::NoVfioPci);
    }
    let group = sysfs.require_group(dev)?;
    let others: Vec<(String, String)> = sysfs
        .group_devices(group)?
        .into_iter()
        .filter(|m| m.name != dev.name && !together.contains(&m.name) && !m.is_viable())
        .map(|m| (m.name, m.driver.unwrap_or_default()))
        .collect();
    if !others.is_empty() {
        return Err(Error::GroupInUse {
            device: dev.name.clone(),
            group,
            others,
        });
    }
    let original = sysfs.driver_of(dev)?;
    let binding = Binding {
        sysfs: sysfs.clone(),
        dev: dev.clone(),
        original: original.clone(),
        original_override,
        restored: false,
    };
    if original.as_deref() == Some(VFIO_PCI_DRIVER) {
        return Ok(binding);
    }
    let moved = (|| {
        write(&override_path, VFIO_PCI_DRIVER)?;
        if let Some(driver) = &original {
            write(&drivers.join(driver).join("unbind"), &dev.name)?;
        }
        write(&sysfs.root().join("bus/pci/drivers_probe"), &dev.name)?;
        match sysfs.driver_of(dev)? {
            Some(d) if d == VFIO_PCI_DRIVER => Ok(()),
            found => Err(Error::NotBound {
                device: dev.name.clone(),
                found,
            }),
        }
    })();
    match moved {
        Ok(()) => Ok(binding),
        Err(e) => {
            // Put back what was changed; the first error is the one to report.
            if let Err(msg) = binding.restore() {
                log::warn!("{msg}");
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake sysfs with devices in groups; writes land in plain files, so the test can see
    /// the sequence but drivers do not move by themselves.
    struct Fake {
        root: PathBuf,
    }

    impl Fake {
        fn new(tag: &str) -> Self {
            let root = std::env::temp_dir().join(format!("vfio-bind-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            for d in [
                "bus/pci/devices",
                "bus/pci/drivers/vfio-pci",
                "bus/pci/drivers/nvme",
                "devices",
            ] {
                std::fs::create_dir_all(root.join(d)).unwrap();
            }
            std::fs::write(root.join("bus/pci/drivers_probe"), "").unwrap();
            Self { root }
        }

        fn device(&self, name: &str, group: u32, driver: Option<&str>) {
            let dir = self.root.join("devices").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("driver_override"), "(null)\n").unwrap();
            std::fs::write(dir.join("class"), "0x010802\n").unwrap();
            symlink(&dir, self.root.join("bus/pci/devices").join(name)).unwrap();
            let gdir = self
                .root
                .join(format!("kernel/iommu_groups/{group}/devices"));
            std::fs::create_dir_all(&gdir).unwrap();
            symlink(&dir, gdir.join(name)).unwrap();
            symlink(
                self.root.join(format!("kernel/iommu_groups/{group}")),
                dir.join("iommu_group"),
            )
            .unwrap();
            if let Some(d) = driver {
                self.set_driver(name, Some(d));
            }
        }

        fn set_driver(&self, name: &str, driver: Option<&str>) {
            let link = self.root.join("devices").join(name).join("driver");
            let _ = std::fs::remove_file(&link);
            if let Some(d) = driver {
                let ddir = self.root.join("bus/pci/drivers").join(d);
                std::fs::create_dir_all(&ddir).unwrap();
                symlink(ddir, link).unwrap();
            }
        }

        fn read(&self, rel: &str) -> String {
            std::fs::read_to_string(self.root.join(rel)).unwrap()
        }
    }

    #[test]
    fn refuses_a_group_with_a_host_driver() {
        let f = Fake::new("group");
        f.device("0000:01:01.0", 5, Some("nvme"));
        f.device("0000:01:02.0", 5, Some("uio_pci_generic"));
        let sysfs = Sysfs::new(&f.root);
        let dev = sysfs.device("0000:01:01.0").unwrap();
        let e = bind_to_vfio(&sysfs, &dev, &["0000:01:01.0".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "managed=on cannot take 0000:01:01.0: IOMMU group 5 also holds 0000:01:02.0 bound to uio_pci_generic; pass those through too, or unbind them"
        );
        assert_eq!(
            f.read("devices/0000:01:01.0/driver_override"),
            "(null)\n",
            "untouched"
        );
        // Passed through together, the other member does not block.
        f.set_driver("0000:01:02.0", None);
        let e = bind_to_vfio(&sysfs, &dev, &[]).unwrap_err();
        assert!(matches!(e, Error::NotBound { .. }), "{e}");
    }

    #[test]
    fn bind_writes_override_unbind_probe_and_undoes_on_failure() {
        let f = Fake::new("seq");
        f.device("0000:00:04.0", 3, Some("nvme"));
        let sysfs = Sysfs::new(&f.root);
        let dev = sysfs.device("0000:00:04.0").unwrap();
        // The fake kernel does not move the driver: binding fails and is undone.
        let e = bind_to_vfio(&sysfs, &dev, &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "managed=on: 0000:00:04.0 is on nvme after binding, not vfio-pci; check dmesg"
        );
        assert_eq!(f.read("bus/pci/drivers/nvme/unbind"), "0000:00:04.0");
        assert_eq!(f.read("bus/pci/drivers_probe"), "0000:00:04.0");
        assert_eq!(
            f.read("devices/0000:00:04.0/driver_override"),
            "\n",
            "override cleared again"
        );
    }

    #[test]
    fn restore_puts_the_original_driver_back() {
        let f = Fake::new("restore");
        f.device("0000:00:04.0", 3, Some("vfio-pci"));
        let sysfs = Sysfs::new(&f.root);
        let dev = sysfs.device("0000:00:04.0").unwrap();
        let binding = Binding {
            sysfs: sysfs.clone(),
            dev,
            original: Some("nvme".into()),
            original_override: String::new(),
            restored: false,
        };
        // The fake kernel never binds: restoring reports what to do.
        let e = binding.restore().unwrap_err();
        assert_eq!(
            e,
            "0000:00:04.0 is on vfio-pci after restoring, not nvme: echo 0000:00:04.0 > /sys/bus/pci/drivers/nvme/bind"
        );
        assert_eq!(f.read("bus/pci/drivers/vfio-pci/unbind"), "0000:00:04.0");
        assert_eq!(f.read("bus/pci/drivers/nvme/bind"), "0000:00:04.0");
        assert_eq!(f.read("devices/0000:00:04.0/driver_override"), "\n");
    }

    #[test]
    fn already_on_vfio_pci_is_left_alone() {
        let f = Fake::new("noop");
        f.device("0000:00:03.0", 2, Some("vfio-pci"));
        let sysfs = Sysfs::new(&f.root);
        let dev = sysfs.device("0000:00:03.0").unwrap();
        let b = bind_to_vfio(&sysfs, &dev, &[]).unwrap();
        assert_eq!(b.original_driver(), Some("vfio-pci"));
        assert_eq!(b.restore(), Ok(Some("vfio-pci".into())));
        assert_eq!(f.read("devices/0000:00:03.0/driver_override"), "(null)\n");
    }

    #[test]
    fn mdev_and_missing_vfio_pci() {
        let f = Fake::new("mdev");
        f.device("0000:00:05.0", 4, None);
        std::fs::remove_file(f.root.join("devices/0000:00:05.0/driver_override")).unwrap();
        let sysfs = Sysfs::new(&f.root);
        let dev = sysfs.device("0000:00:05.0").unwrap();
        assert!(matches!(
            bind_to_vfio(&sysfs, &dev, &[]),
            Err(Error::NotPci { .. })
        ));
        std::fs::write(
            f.root.join("devices/0000:00:05.0/driver_override"),
            "(null)\n",
        )
        .unwrap();
        std::fs::remove_dir_all(f.root.join("bus/pci/drivers/vfio-pci")).unwrap();
        assert_eq!(
            bind_to_vfio(&sysfs, &dev, &[]).unwrap_err().to_string(),
            "managed=on needs the vfio-pci driver, which is not loaded; modprobe vfio-pci"
        );
    }
}
