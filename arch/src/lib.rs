//! x86_64 platform setup: boot protocols (Linux zero page, PVH start info), the e820 map,
//! initial vCPU state (registers, page tables, CPUID, MSRs, local APIC) and ACPI tables.
//!
//! With `vmm`, the only crate that talks to KVM; it knows nothing of devices.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod kernel;
pub mod regs;

/// Guest memory as every crate sees it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
