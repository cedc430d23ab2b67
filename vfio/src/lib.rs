//! VFIO passthrough of host PCI devices.
//!
//! This crate owns everything the VMM learns from and asks of the host's VFIO stack. It does
//! not touch guest memory layout, the guest PCI bus or KVM setup; those belong to other crates.
//!
//! Layers, bottom up: [`sysfs`] finds a device's IOMMU group; [`backend`] is the thin seam over
//! the kernel's VFIO device (regions, interrupt counts); [`caps`], [`bars`], [`msi`] and
//! [`msix`] model config space, BARs and interrupt capabilities; [`device`] puts them together
//! as [`VfioPciDevice`], a [`pci::PciDevice`].

pub mod backend;
pub mod bars;
pub mod bind;
pub mod caps;
pub mod device;
pub mod host;
pub mod msi;
pub mod msix;
pub mod sysfs;

pub use backend::{
    DeviceOps, FakeBackend, FakeCall, HostMemory, RegionInfo, VfioBackend, CONFIG_REGION,
    ROM_REGION,
};
pub use bars::{Segment, SegmentKind, PAGE_SIZE};
pub use device::{Error, InterruptChange, RomSource, VfioPciDevice, MAX_ROM};
pub use msi::MsiState;
pub use msix::{MsixEntry, MsixState};
pub use sysfs::{GroupMember, Sysfs, SysfsDevice};
