//! VFIO passthrough of host PCI devices.
//!
//! This crate owns everything the VMM learns from and asks of the host's VFIO stack. It does
//! not touch guest memory layout, the guest PCI bus or KVM setup; those belong to other crates.

pub mod host;
pub mod sysfs;

pub use sysfs::{GroupMember, Sysfs, SysfsDevice};
