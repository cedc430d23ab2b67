//! `managed=on` devices: moved to vfio-pci before the VM is built and back to their own
//! driver after it is gone ([`vfio::bind`]).

use crate::config::DeviceConfig;
use vfio::bind::Binding;
use vfio::Sysfs;

/// Moves every `managed=on` device to vfio-pci. On failure the ones already moved go back.
pub fn bind(devices: &[DeviceConfig]) -> Result<Vec<Binding>, vfio::bind::Error> {
    let managed: Vec<&DeviceConfig> = devices.iter().filter(|d| d.managed).collect();
    if managed.is_empty() {
        return Ok(Vec::new());
    }
    let sysfs = Sysfs::default();
    // Devices of this VM may share a group: together they do not block each other.
    let mut found = Vec::new();
    for cfg in &managed {
        found.push(sysfs.device(cfg.spec())?);
    }
    let names: Vec<String> = found.iter().map(|d| d.name.clone()).collect();
    let mut bound = Vec::new();
    for dev in &found {
        match vfio::bind::bind_to_vfio(&sysfs, dev, &names) {
            Ok(b) => {
                log::info!(
                    "{}: moved from {} to vfio-pci (managed)",
                    b.device(),
                    b.original_driver().unwrap_or("no driver")
                );
                bound.push(b);
            }
            Err(e) => {
                restore(bound);
                return Err(e);
            }
        }
    }
    Ok(bound)
}

/// Puts managed devices back on their drivers, last bound first. Call only when every VFIO
/// file is closed. Problems are reported on stderr; they do not change the exit status.
pub fn restore(bindings: Vec<Binding>) {
    for b in bindings.into_iter().rev() {
        let name = b.device().to_string();
        match b.restore() {
            Ok(driver) => log::info!(
                "{name}: back on {} (managed)",
                driver.as_deref().unwrap_or("no driver")
            ),
            Err(msg) => log::warn!("{msg}"),
        }
    }
}

/// The `managed=on` devices of a run, shared by the run (which binds the boot devices and
/// puts back what is left at the end) and hotplug (which binds a device it adds and puts it
/// back when it is removed).
#[derive(Default)]
pub struct Bindings(std::sync::Mutex<Vec<Binding>>);

impl Bindings {
    /// Bindings made before the VM was built.
    pub fn new(bindings: Vec<Binding>) -> Self {
        Self(std::sync::Mutex::new(bindings))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Binding>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `b` until its device leaves.
    pub fn add(&self, b: Binding) {
        self.lock().push(b);
    }

    /// Puts device `name` back on its driver, if it was bound here (its VFIO files must be
    /// closed).
    pub fn restore(&self, name: &str) {
        let mut all = self.lock();
        if let Some(i) = all.iter().position(|b| b.device() == name) {
            let b = all.remove(i);
            drop(all);
            restore(vec![b]);
        }
    }

    /// Every binding left, for the end of the run.
    pub fn take(&self) -> Vec<Binding> {
        std::mem::take(&mut self.lock())
    }
}
