//! Hot-add and hot-remove of passed-through devices through the control API (ACPI PCI
//! hotplug: [`pci::hotplug`] and the GED). Runs on the main thread, which owns the VM.

use crate::api::Reply;
use crate::builder::Vm;
use crate::config::DeviceConfig;
use diag::Advice;

impl Vm {
    /// `vm.add-device`.
    pub fn hot_add(&mut self, _cfg: &DeviceConfig) -> Reply {
        Reply::error(
            500,
            &Advice::new("hot-add is not built yet", "pass the device with --device"),
        )
    }

    /// `vm.remove-device`.
    pub fn hot_remove(&mut self, id: &str) -> Reply {
        Reply::error(
            404,
            &Advice::new(
                format!("no device with id {id:?}"),
                "list them with vm.info",
            ),
        )
    }
}
