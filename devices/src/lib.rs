//! Emulated platform devices and the buses that route guest accesses to them.
//!
//! Devices here never talk to KVM: an interrupt is an `EventFd` (wired to a KVM irqfd by the
//! `vmm` crate) and a request to end the guest goes through [`GuestExit`].

pub mod acpi_pm;
pub mod bus;
pub mod debug_exit;
pub mod exit;
pub mod ged;
pub mod i8042;
pub mod serial;

pub use bus::{Bus, BusDevice};
pub use exit::{ExitReason, GuestExit};
