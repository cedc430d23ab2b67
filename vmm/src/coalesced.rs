//! Guest writes KVM queues instead of exiting for (coalesced PIO): the UART's transmit
//! register while the guest's driver polls the UART ([`devices::serial::ThrBatch`]). Each
//! character a guest prints to its console then costs one exit (the status read before it)
//! instead of two.
//!
//! KVM appends such writes to a ring in a page it shares with the VMM and never exits for
//! them; the VMM applies them, in order, before it handles any exit ([`Ring::drain`] on every
//! vCPU thread), on a timer (the main loop, for a guest that writes and then falls silent) and
//! at the end. A full ring makes KVM exit as usual, after the queued writes, so nothing is
//! lost or reordered. This module owns the ring page and the zone registration; it must not
//! decide which writes may wait (the device does).

use devices::serial::ThrBatch;
use devices::Bus;
use kvm_bindings::{kvm_coalesced_mmio, kvm_coalesced_mmio_ring, KVM_COALESCED_MMIO_PAGE_OFFSET};
use kvm_ioctls::{IoEventAddress, VcpuFd, VmFd};
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// The ring KVM fills with coalesced writes (one page per VM, mapped through a vCPU fd).
pub struct Ring {
    page: NonNull<kvm_coalesced_mmio_ring>,
    len: usize,
    /// Entries the page holds (KVM_COALESCED_MMIO_MAX).
    slots: u32,
    /// One consumer at a time: vCPU threads and the main loop all drain.
    drain: Mutex<()>,
}

// SAFETY: the page is shared memory that KVM and every thread reach only through `first` and
// `last` as atomics and entries below `last` that KVM has published; consumers are serialized
// by `drain`.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Ring {
    /// Maps the VM's ring through `vcpu` (any vCPU of the VM; the page is the VM's).
    pub fn map(vcpu: &VcpuFd) -> std::io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let len = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| std::io::Error::last_os_error())?;
        let offset = libc::off_t::from(KVM_COALESCED_MMIO_PAGE_OFFSET) * len as libc::off_t;
        // SAFETY: a new shared mapping of one page of the vCPU fd at the offset KVM documents
        // for the coalesced MMIO ring; nothing else is placed there.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let page = NonNull::new(addr.cast()).ok_or_else(std::io::Error::last_os_error)?;
        Ok(Self {
            page,
            len,
            slots: slots(len),
            drain: Mutex::new(()),
        })
    }

    /// KVM's `first` (the oldest queued write; advanced by us).
    fn first(&self) -> &AtomicU32 {
        // SAFETY: the field lies in the mapped page, is 4-byte aligned and lives as long as
        // `self`; KVM and the other threads access it only atomically.
        unsafe { AtomicU32::from_ptr(std::ptr::addr_of_mut!((*self.page.as_ptr()).first)) }
    }

    /// KVM's `last` (one past the newest queued write; advanced by KVM).
    fn last(&self) -> &AtomicU32 {
        // SAFETY: as for `first`.
        unsafe { AtomicU32::from_ptr(std::ptr::addr_of_mut!((*self.page.as_ptr()).last)) }
    }

    /// Applies every queued write to `pio` (or `mmio`), oldest first; returns how many.
    pub fn drain(&self, pio: &Bus, mmio: &Bus) -> usize {
        let (first, last) = (self.first(), self.last());
        // Cheap check first: almost every exit finds the ring empty.
        if first.load(Ordering::Relaxed) == last.load(Ordering::Acquire) {
            return 0;
        }
        let _one_consumer = self.drain.lock().unwrap_or_else(|e| e.into_inner());
        let mut done = 0;
        loop {
            let at = first.load(Ordering::Relaxed);
            // Acquire: the entry KVM wrote before publishing `last` is visible.
            if at == last.load(Ordering::Acquire) || at >= self.slots {
                return done;
            }
            // SAFETY: `at` < slots, so the entry lies in the page; KVM published it (it is
            // before `last`) and does not touch it again until `first` moves past it.
            let entry: kvm_coalesced_mmio = unsafe {
                let entries = std::ptr::addr_of!((*self.page.as_ptr()).coalesced_mmio)
                    .cast::<kvm_coalesced_mmio>();
                entries.add(at as usize).read_volatile()
            };
            apply(&entry, pio, mmio);
            // Release: the entry was read before KVM may reuse its slot.
            first.store((at + 1) % self.slots, Ordering::Release);
            done += 1;
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the page was mapped by `map` with this length and nothing refers to it once
        // the ring is dropped.
        unsafe { libc::munmap(self.page.as_ptr().cast(), self.len) };
    }
}

/// KVM_COALESCED_MMIO_MAX for a page of `len` bytes.
fn slots(len: usize) -> u32 {
    let header = std::mem::size_of::<kvm_coalesced_mmio_ring>();
    ((len - header) / std::mem::size_of::<kvm_coalesced_mmio>()) as u32
}

/// One queued write, to the bus it was meant for.
fn apply(entry: &kvm_coalesced_mmio, pio: &Bus, mmio: &Bus) {
    let len = (entry.len as usize).min(entry.data.len());
    // SAFETY: both union fields are plain u32s.
    let is_pio = unsafe { entry.__bindgen_anon_1.pio } != 0;
    let bus = if is_pio { pio } else { mmio };
    bus.write(entry.phys_addr, &entry.data[..len]);
}

/// [`ThrBatch`] through KVM: registers `port` as a coalesced PIO zone while batching is on.
pub struct KvmThrBatch {
    vm: Arc<VmFd>,
    port: u16,
}

impl KvmThrBatch {
    /// Batching for the one-byte register at `port`.
    pub fn new(vm: Arc<VmFd>, port: u16) -> Self {
        Self { vm, port }
    }
}

impl ThrBatch for KvmThrBatch {
    fn set(&mut self, on: bool) {
        let zone = IoEventAddress::Pio(u64::from(self.port));
        let result = if on {
            self.vm.register_coalesced_mmio(zone, 1)
        } else {
            self.vm.unregister_coalesced_mmio(zone, 1)
        };
        // Without the zone every write simply exits, as before: slower, never wrong.
        if let Err(e) = result {
            log::debug!("coalesced PIO at {:#x} (on={on}): {e}", self.port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::BusDevice;

    #[test]
    fn slots_match_the_kernel() {
        // KVM_COALESCED_MMIO_MAX for 4 KiB pages: (4096 - 8) / 24.
        assert_eq!(slots(4096), 170);
    }

    /// Writes a device saw: (offset, data).
    type Writes = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

    struct Log(Writes);

    impl BusDevice for Log {
        fn read(&mut self, _offset: u64, _data: &mut [u8]) {}
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data.to_vec()));
        }
    }

    fn entry(addr: u64, data: &[u8], pio: bool) -> kvm_coalesced_mmio {
        let mut e = kvm_coalesced_mmio {
            phys_addr: addr,
            len: data.len() as u32,
            ..Default::default()
        };
        e.__bindgen_anon_1.pio = u32::from(pio);
        e.data[..data.len()].copy_from_slice(data);
        e
    }

    /// A ring on an anonymous page, filled the way KVM fills it.
    fn fake_ring() -> Ring {
        // SAFETY: a fresh anonymous shared page.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        Ring {
            page: NonNull::new(addr.cast()).unwrap(),
            len: 4096,
            slots: slots(4096),
            drain: Mutex::new(()),
        }
    }

    /// What KVM does for one coalesced write: the entry at `last`, then `last` moves on.
    fn kvm_push(ring: &Ring, e: kvm_coalesced_mmio) {
        let page = ring.page.as_ptr();
        // SAFETY: test-only access to the fake page, one thread.
        unsafe {
            let last = (*page).last;
            let entries =
                std::ptr::addr_of_mut!((*page).coalesced_mmio).cast::<kvm_coalesced_mmio>();
            entries.add(last as usize).write(e);
            (*page).last = (last + 1) % ring.slots;
        }
    }

    #[test]
    fn drain_applies_queued_writes_in_order_across_the_wrap() {
        let ring = fake_ring();
        let (pio, mmio) = (Bus::new(), Bus::new());
        let seen = Arc::new(Mutex::new(Vec::new()));
        pio.insert(Arc::new(Mutex::new(Log(seen.clone()))), 0x3f8, 8)
            .unwrap();
        assert_eq!(ring.drain(&pio, &mmio), 0, "empty ring");
        // Start near the end so the writes wrap around.
        // SAFETY: test-only access to the fake page, one thread.
        unsafe {
            (*ring.page.as_ptr()).first = ring.slots - 2;
            (*ring.page.as_ptr()).last = ring.slots - 2;
        }
        for b in b"abcd" {
            kvm_push(&ring, entry(0x3f8, &[*b], true));
        }
        assert_eq!(ring.drain(&pio, &mmio), 4);
        let bytes: Vec<u8> = seen.lock().unwrap().iter().map(|(_, d)| d[0]).collect();
        assert_eq!(bytes, b"abcd");
        // SAFETY: as above.
        let (first, last) = unsafe { ((*ring.page.as_ptr()).first, (*ring.page.as_ptr()).last) };
        assert_eq!((first, last), (2, 2), "consumed up to KVM's last");
        assert_eq!(ring.drain(&pio, &mmio), 0);
    }

    #[test]
    fn entries_go_to_their_bus_at_their_length() {
        let (pio, mmio) = (Bus::new(), Bus::new());
        let seen = Arc::new(Mutex::new(Vec::new()));
        pio.insert(Arc::new(Mutex::new(Log(seen.clone()))), 0x3f8, 8)
            .unwrap();
        mmio.insert(Arc::new(Mutex::new(Log(seen.clone()))), 0x1000, 8)
            .unwrap();
        apply(&entry(0x3f8, b"h", true), &pio, &mmio);
        apply(&entry(0x1004, b"ab", false), &pio, &mmio);
        let e = entry(0x3f9, b"i", true);
        apply(&kvm_coalesced_mmio { len: 99, ..e }, &pio, &mmio);
        let got = seen.lock().unwrap().clone();
        let want = [
            (0, b"h".to_vec()),
            (4, b"ab".to_vec()),
            (1, {
                let mut d = vec![0u8; 8];
                d[0] = b'i';
                d
            }),
        ];
        assert_eq!(got, want, "a bad length is cut to the 8 data bytes");
    }
}
