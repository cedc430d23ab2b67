//! Peer-to-peer DMA mappings of large BAR parts, made by a background thread.
//!
//! Mapping a BAR for DMA makes the kernel walk it page by page (vfio type1 in Linux 6.1 looks
//! each 4 KiB page of a PFNMAP up on its own, after vfio-pci filled the page tables of every
//! mapping it touches): for a 128 GiB BAR that is 32 Mi page lookups, a minute in the rig's
//! emulated host (measured: 63 s) and seconds on hardware. Done on the vCPU thread that
//! turned decoding on, it would stall the guest in the middle of its PCI scan. So parts of
//! [`ASYNC_FROM`] or more are handed to this worker: it maps them [`CHUNK`] by chunk, at the
//! lowest CPU priority (`SCHED_IDLE`: the vCPUs go first), in the order asked. Until a part is
//! mapped, DMA from other devices to it faults in the IOMMU, as it would with `p2p=off`.
//!
//! Each part has a generation counter: asking for something new about a part (another map, or
//! an unmap) bumps it, and a map whose generation is stale stops at the next chunk, so a guest
//! that moves a BAR does not wait for the map of the old address to finish. An unmap covers the
//! whole range and so also whatever part of an aborted map was done.
//!
//! The thread is started only when some part needs it (edu- or NVMe-sized BARs map in
//! microseconds on the vCPU thread), installs its own seccomp filter, and is stopped and joined
//! before the BARs' memory goes (its [`Drop`]).

use super::bars::DmaMaps;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Times a failing chunk is tried again, [`RETRY_AFTER`] apart.
const RETRIES: u32 = 20;
/// Pause before a chunk is tried again.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// Parts of this size or more are mapped in the background.
pub(super) const ASYNC_FROM: u64 = 1 << 30;
/// Bytes per VFIO_IOMMU_MAP_DMA of a background map (a stop or a newer request is noticed
/// between chunks; the emulated host does one in about 0.1 s): one BAR mmap piece
/// ([`vfio::host::MMAP_CHUNK`]).
pub(super) const CHUNK: u64 = vfio::host::MMAP_CHUNK;

/// One request.
pub(super) enum Job {
    /// Map `[host, host + len)` at `iova` unless `gen` moves on from `want`.
    Map {
        /// For messages: "DEVICE BARn".
        name: String,
        /// IO virtual address.
        iova: u64,
        /// Bytes.
        len: u64,
        /// Host address.
        host: u64,
        /// The part's generation counter.
        gen: Arc<AtomicU64>,
        /// The generation this map was asked in.
        want: u64,
    },
    /// Unmap `[iova, iova + len)` (all of it that is mapped).
    Unmap {
        /// IO virtual address.
        iova: u64,
        /// Bytes.
        len: u64,
    },
}

/// The background thread and its queue.
pub(super) struct DmaWorker {
    tx: Option<Sender<Job>>,
    stop: Arc<AtomicBool>,
    /// Held by the thread while it maps one chunk (see [`DmaWorker::hold`]).
    chunk: Arc<std::sync::Mutex<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DmaWorker {
    /// Starts the thread (named `p2p`), which maps through `dma`, `chunk` bytes per call,
    /// under its seccomp filter when `seccomp`.
    pub fn start(dma: Box<dyn DmaMaps>, chunk: u64, seccomp: bool) -> std::io::Result<Self> {
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let chunk_lock = Arc::new(std::sync::Mutex::new(()));
        let held = chunk_lock.clone();
        let thread = std::thread::Builder::new()
            .name("p2p".into())
            .spawn(move || {
                lower_priority();
                if let Err(e) = crate::seccomp::apply_if(seccomp, crate::seccomp::Thread::P2p) {
                    log::error!("{e}; peer-to-peer DMA mappings of large BARs are not made");
                    return;
                }
                run(dma, rx, &flag, &held, chunk);
            })?;
        Ok(Self {
            tx: Some(tx),
            stop,
            chunk: chunk_lock,
            thread: Some(thread),
        })
    }

    /// Queues `job`.
    pub fn send(&self, job: Job) {
        if let Some(tx) = &self.tx {
            // A worker that is gone (it failed to start its filter) has said so already.
            let _ = tx.send(job);
        }
    }

    /// Waits until no chunk is being mapped and keeps it so while the guard lives: a part
    /// whose generation was bumped before is then never mapped again, so it can be unmapped
    /// for good (a device leaving the guest).
    pub fn hold(&self) -> std::sync::MutexGuard<'_, ()> {
        self.chunk.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for DmaWorker {
    /// Stops at the next chunk and waits for the thread.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `SCHED_IDLE`: the thread runs only when no vCPU (or anything else) wants the CPU.
fn lower_priority() {
    // SAFETY: sched_param is plain data; 0 is the only valid priority for SCHED_IDLE, and the
    // call changes only the calling thread.
    let param = unsafe { std::mem::zeroed::<libc::sched_param>() };
    // SAFETY: see above.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        log::debug!(
            "p2p: cannot lower its priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The thread's loop: jobs in order until the queue closes or `stop` is set.
fn run(
    mut dma: Box<dyn DmaMaps>,
    rx: Receiver<Job>,
    stop: &AtomicBool,
    held: &std::sync::Mutex<()>,
    chunk: u64,
) {
    while let Ok(job) = rx.recv() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match job {
            Job::Map {
                name,
                iova,
                len,
                host,
                gen,
                want,
            } => map(
                dma.as_mut(),
                &name,
                (iova, len, host),
                (&gen, want),
                (stop, held),
                chunk,
            ),
            Job::Unmap { iova, len } => {
                // Also after an aborted map: what was not mapped is not an error.
                if let Err(e) = dma.unmap_dma(iova, len) {
                    log::debug!("p2p: unmap of {len:#x} bytes at {iova:#x}: {e}");
                }
            }
        }
    }
}

/// Maps `(iova, len, host)` chunk by chunk while `gen` stays at `want` and nothing stops it.
/// Each chunk is looked at and mapped under `held`, so that whoever bumps `gen` and then takes
/// `held` knows no chunk of the part gets mapped afterwards.
fn map(
    dma: &mut dyn DmaMaps,
    name: &str,
    (iova, len, host): (u64, u64, u64),
    (gen, want): (&AtomicU64, u64),
    (stop, held): (&AtomicBool, &std::sync::Mutex<()>),
    chunk: u64,
) {
    let started = std::time::Instant::now();
    let (mut done, mut tries) = (0, 0);
    while done < len {
        let guard = held.lock().unwrap_or_else(|e| e.into_inner());
        if stop.load(Ordering::Relaxed) || gen.load(Ordering::Relaxed) != want {
            log::debug!(
                "{name}: peer-to-peer DMA map at {iova:#x} superseded after {done:#x} bytes"
            );
            return;
        }
        let n = (len - done).min(chunk);
        let mapped = dma.map_dma(iova + done, n, host + done);
        drop(guard);
        match mapped {
            Ok(()) => {
                done += n;
                tries = 0;
            }
            // vfio-pci refuses to fault BAR pages in while the guest has memory decoding off,
            // which a guest does for a moment around BAR updates: try the chunk again.
            Err(_) if tries < RETRIES => {
                tries += 1;
                std::thread::sleep(RETRY_AFTER);
            }
            Err(e) => {
                log::warn!(
                    "{name}: cannot map {len:#x} bytes at {iova:#x} for peer-to-peer DMA ({e} at \
                     offset {done:#x}); other devices cannot reach it"
                );
                return;
            }
        }
    }
    log::debug!(
        "{name}: {len:#x} bytes at {iova:#x} mapped for peer-to-peer DMA in {:.2} s (in the \
         background)",
        started.elapsed().as_secs_f64()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Records calls; each map call can be held up until `gate` opens.
    #[derive(Clone, Default)]
    struct Slow {
        calls: Arc<Mutex<Vec<(bool, u64, u64)>>>,
        gate: Arc<AtomicBool>,
    }

    impl DmaMaps for Slow {
        fn map_dma(&mut self, iova: u64, len: u64, _host: u64) -> Result<(), String> {
            while !self.gate.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.calls.lock().unwrap().push((true, iova, len));
            Ok(())
        }
        fn unmap_dma(&mut self, iova: u64, len: u64) -> Result<(), String> {
            self.calls.lock().unwrap().push((false, iova, len));
            Ok(())
        }
    }

    fn job(iova: u64, len: u64, gen: &Arc<AtomicU64>) -> Job {
        Job::Map {
            name: "d BAR2".into(),
            iova,
            len,
            host: 0x7f00_0000_0000,
            gen: gen.clone(),
            want: gen.load(Ordering::Relaxed),
        }
    }

    /// Waits until `n` calls were made.
    fn wait_for(fake: &Slow, n: usize) -> Vec<(bool, u64, u64)> {
        for _ in 0..5000 {
            let calls = fake.calls.lock().unwrap().clone();
            if calls.len() >= n {
                return calls;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("only {:?}", fake.calls.lock().unwrap());
    }

    #[test]
    fn maps_chunk_by_chunk_in_order() {
        let fake = Slow::default();
        fake.gate.store(true, Ordering::Relaxed);
        let w = DmaWorker::start(Box::new(fake.clone()), 0x1000, false).unwrap();
        let gen = Arc::new(AtomicU64::new(1));
        w.send(job(0x10_0000, 0x2800, &gen));
        w.send(Job::Unmap {
            iova: 0x10_0000,
            len: 0x2800,
        });
        let calls = wait_for(&fake, 4);
        assert_eq!(
            calls,
            vec![
                (true, 0x10_0000, 0x1000),
                (true, 0x10_1000, 0x1000),
                (true, 0x10_2000, 0x800),
                (false, 0x10_0000, 0x2800),
            ]
        );
    }

    #[test]
    fn a_newer_request_stops_an_old_map() {
        let fake = Slow::default();
        let w = DmaWorker::start(Box::new(fake.clone()), 0x1000, false).unwrap();
        let gen = Arc::new(AtomicU64::new(1));
        w.send(job(0x10_0000, 0x10_0000, &gen));
        std::thread::sleep(Duration::from_millis(20));
        // The guest moved the BAR: a new generation, then unmap and map elsewhere.
        gen.fetch_add(1, Ordering::Relaxed);
        w.send(Job::Unmap {
            iova: 0x10_0000,
            len: 0x10_0000,
        });
        w.send(job(0x40_0000, 0x1000, &gen));
        fake.gate.store(true, Ordering::Relaxed);
        let calls = wait_for(&fake, 3);
        assert_eq!(calls[0], (true, 0x10_0000, 0x1000), "the chunk in flight");
        assert_eq!(calls[1], (false, 0x10_0000, 0x10_0000), "not the other 255");
        assert_eq!(calls[2], (true, 0x40_0000, 0x1000));
        drop(w);
        assert_eq!(fake.calls.lock().unwrap().len(), 3);
    }

    /// Fails the first `fail` map calls, as vfio-pci does while decoding is off for a moment.
    #[derive(Clone, Default)]
    struct Flaky {
        fail: Arc<AtomicU64>,
        maps: Arc<Mutex<Vec<u64>>>,
    }

    impl DmaMaps for Flaky {
        fn map_dma(&mut self, iova: u64, _len: u64, _host: u64) -> Result<(), String> {
            if self.fail.load(Ordering::Relaxed) > 0 {
                self.fail.fetch_sub(1, Ordering::Relaxed);
                return Err("Bad address".into());
            }
            self.maps.lock().unwrap().push(iova);
            Ok(())
        }
        fn unmap_dma(&mut self, _iova: u64, _len: u64) -> Result<(), String> {
            Ok(())
        }
    }

    #[test]
    fn a_chunk_refused_for_a_moment_is_tried_again() {
        let fake = Flaky::default();
        fake.fail.store(2, Ordering::Relaxed);
        let w = DmaWorker::start(Box::new(fake.clone()), 0x1000, false).unwrap();
        let gen = Arc::new(AtomicU64::new(1));
        w.send(job(0, 0x2000, &gen));
        for _ in 0..100 {
            if fake.maps.lock().unwrap().len() == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(*fake.maps.lock().unwrap(), vec![0, 0x1000]);
    }

    /// Its seccomp filter allows what it does: queue, map, log, sleep before a retry, exit.
    #[test]
    fn the_worker_runs_under_its_seccomp_filter() {
        let fake = Flaky::default();
        fake.fail.store(1, Ordering::Relaxed);
        let w = DmaWorker::start(Box::new(fake.clone()), 0x1000, true).unwrap();
        let gen = Arc::new(AtomicU64::new(1));
        w.send(job(0, 0x2000, &gen));
        w.send(Job::Unmap {
            iova: 0,
            len: 0x2000,
        });
        for _ in 0..100 {
            if fake.maps.lock().unwrap().len() == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(w);
        assert_eq!(*fake.maps.lock().unwrap(), vec![0, 0x1000]);
    }

    #[test]
    fn dropping_stops_and_joins() {
        let fake = Slow::default();
        let w = DmaWorker::start(Box::new(fake.clone()), 0x1000, false).unwrap();
        let gen = Arc::new(AtomicU64::new(1));
        w.send(job(0, 1 << 30, &gen));
        std::thread::sleep(Duration::from_millis(10));
        fake.gate.store(true, Ordering::Relaxed);
        drop(w);
        let n = fake.calls.lock().unwrap().len();
        assert!(n < 10, "stopped at the next chunk, not after 262144: {n}");
    }

    /// Maps that take a moment each, counted.
    #[derive(Clone, Default)]
    struct Counting(Arc<std::sync::atomic::AtomicU64>);

    impl DmaMaps for Counting {
        fn map_dma(&mut self, _iova: u64, _len: u64, _host: u64) -> Result<(), String> {
            std::thread::sleep(Duration::from_millis(2));
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        fn unmap_dma(&mut self, _iova: u64, _len: u64) -> Result<(), String> {
            Ok(())
        }
    }

    #[test]
    fn a_part_whose_generation_moved_is_not_mapped_once_the_worker_is_held() {
        let maps = Counting::default();
        let count = maps.0.clone();
        let worker = DmaWorker::start(Box::new(maps), 0x1000, false).unwrap();
        let gen = Arc::new(AtomicU64::new(1));
        worker.send(Job::Map {
            name: "big".into(),
            iova: 0,
            len: 0x1000 * 1000,
            host: 0,
            gen: gen.clone(),
            want: 1,
        });
        while count.load(Ordering::Relaxed) < 3 {
            std::thread::sleep(Duration::from_millis(1));
        }
        gen.fetch_add(1, Ordering::Relaxed);
        let held = worker.hold();
        let at_hold = count.load(Ordering::Relaxed);
        drop(held);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            count.load(Ordering::Relaxed),
            at_hold,
            "no chunk after the hold"
        );
        assert!(at_hold < 1000);
    }
}
