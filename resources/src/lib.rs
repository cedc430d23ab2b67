//! Guest physical address layout and the allocators that hand out guest resources.
//!
//! This crate owns the numbers every other crate must agree on: where RAM, the 32-bit PCI
//! hole, ECAM, the interrupt controllers and the boot structures live. It talks to nothing.

pub mod layout;
