//! What the device wiring asks of the VM: memory slots for device memory (BARs, ROMs),
//! irqfds (an eventfd that injects a GSI), and the GSI routing table. [`VmOps`] is the seam:
//! the KVM VM fd implements it, and [`FakeVm`] records every call so that attaching,
//! detaching, the BAR mapper and interrupt wiring are tested without KVM.
//!
//! It owns nothing of the VM: it only forwards calls.

use kvm_bindings::{kvm_irq_routing_entry, kvm_userspace_memory_region, KvmIrqRouting};
use kvm_bindings::{KVM_IRQ_ROUTING_MSI, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use std::io;
use std::sync::Mutex;
use vmm_sys_util::eventfd::EventFd;

/// A KVM memory slot over host memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// KVM slot number.
    pub id: u32,
    /// Guest physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Host address of the memory behind it.
    pub host: u64,
    /// Guest writes exit instead of landing (a ROM).
    pub readonly: bool,
}

/// Memory slots, irqfds and GSI routes of one VM.
pub trait VmOps: Send + Sync {
    /// Creates KVM memory slot `slot`.
    ///
    /// # Safety
    /// `[slot.host, slot.host + slot.len)` must stay mapped in this process until the slot is
    /// removed or the VM is gone; the guest reads (and unless `readonly` writes) it at will.
    unsafe fn add_slot(&self, slot: Slot) -> io::Result<()>;
    /// Deletes KVM memory slot `id` (whose memory was at `host`).
    fn remove_slot(&self, id: u32, host: u64) -> io::Result<()>;
    /// Injects GSI `gsi` whenever `fd` is signalled.
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()>;
    /// As [`VmOps::register_irqfd`], for a level-triggered GSI: `resample` is signalled when
    /// the guest ends the interrupt (EOI).
    fn register_irqfd_with_resample(
        &self,
        fd: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> io::Result<()>;
    /// Stops injecting `gsi` for `fd`.
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()>;
    /// Replaces the whole GSI routing table.
    fn set_gsi_routing(&self, entries: &[kvm_irq_routing_entry]) -> io::Result<()>;
}

fn io_err(e: kvm_ioctls::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

impl VmOps for VmFd {
    unsafe fn add_slot(&self, slot: Slot) -> io::Result<()> {
        let region = kvm_userspace_memory_region {
            slot: slot.id,
            flags: if slot.readonly { KVM_MEM_READONLY } else { 0 },
            guest_phys_addr: slot.gpa,
            memory_size: slot.len,
            userspace_addr: slot.host,
        };
        // SAFETY: the caller keeps the memory mapped for as long as the slot exists.
        unsafe { self.set_user_memory_region(region) }.map_err(io_err)
    }

    fn remove_slot(&self, id: u32, host: u64) -> io::Result<()> {
        let region = kvm_userspace_memory_region {
            slot: id,
            memory_size: 0,
            userspace_addr: host,
            ..Default::default()
        };
        // SAFETY: size 0 deletes the slot; no memory is handed to KVM.
        unsafe { self.set_user_memory_region(region) }.map_err(io_err)
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()> {
        VmFd::register_irqfd(self, fd, gsi).map_err(io_err)
    }

    fn register_irqfd_with_resample(
        &self,
        fd: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> io::Result<()> {
        VmFd::register_irqfd_with_resample(self, fd, resample, gsi).map_err(io_err)
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()> {
        VmFd::unregister_irqfd(self, fd, gsi).map_err(io_err)
    }

    fn set_gsi_routing(&self, entries: &[kvm_irq_routing_entry]) -> io::Result<()> {
        let routing = KvmIrqRouting::from_entries(entries)
            .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
        VmFd::set_gsi_routing(self, &routing).map_err(io_err)
    }
}

/// What a [`FakeVm`] was asked, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmCall {
    /// A slot was added.
    AddSlot(Slot),
    /// Slot `id` was removed.
    RemoveSlot(u32),
    /// An irqfd for this GSI (with a resample eventfd when true).
    Irqfd(u32, bool),
    /// The irqfd of this GSI was removed.
    RemoveIrqfd(u32),
    /// The routing table now routes these GSIs to MSI messages.
    MsiRoutes(Vec<u32>),
}

/// A VM that records every call and holds the irqfds it was given, for tests.
#[derive(Default)]
pub struct FakeVm {
    calls: Mutex<Vec<VmCall>>,
}

impl FakeVm {
    /// Every call so far, oldest first; clears the record.
    pub fn take(&self) -> Vec<VmCall> {
        std::mem::take(&mut self.calls.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn push(&self, c: VmCall) {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push(c);
    }
}

impl VmOps for FakeVm {
    unsafe fn add_slot(&self, slot: Slot) -> io::Result<()> {
        self.push(VmCall::AddSlot(slot));
        Ok(())
    }

    fn remove_slot(&self, id: u32, _host: u64) -> io::Result<()> {
        self.push(VmCall::RemoveSlot(id));
        Ok(())
    }

    fn register_irqfd(&self, _fd: &EventFd, gsi: u32) -> io::Result<()> {
        self.push(VmCall::Irqfd(gsi, false));
        Ok(())
    }

    fn register_irqfd_with_resample(
        &self,
        _fd: &EventFd,
        _resample: &EventFd,
        gsi: u32,
    ) -> io::Result<()> {
        self.push(VmCall::Irqfd(gsi, true));
        Ok(())
    }

    fn unregister_irqfd(&self, _fd: &EventFd, gsi: u32) -> io::Result<()> {
        self.push(VmCall::RemoveIrqfd(gsi));
        Ok(())
    }

    fn set_gsi_routing(&self, entries: &[kvm_irq_routing_entry]) -> io::Result<()> {
        let msi = entries
            .iter()
            .filter(|e| e.type_ == KVM_IRQ_ROUTING_MSI)
            .map(|e| e.gsi)
            .collect();
        self.push(VmCall::MsiRoutes(msi));
        Ok(())
    }
}
