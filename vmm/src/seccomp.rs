//! Seccomp filters, one per kind of thread, installed by each thread on itself once the VM is
//! built (`--seccomp=off` to debug): a vCPU thread's from its first instruction, the main
//! thread's just before its event loop. A syscall not on the list raises SIGSYS; the handler
//! restores the terminal, prints one line naming the thread and the syscall number and ends
//! vmm with [`STATUS_SECCOMP`].
//!
//! The lists are what the code paths after start issue, with ioctls narrowed to the request
//! numbers used and `mmap`/`mprotect` to non-executable memory:
//!
//! - vCPU threads: `KVM_RUN` and the exits it returns. A guest's PCI config or trapped BAR
//!   access is served on the vCPU thread (`passthrough`): `pread64`/`pwrite64` on the VFIO
//!   device, BAR moves (`KVM_SET_USER_MEMORY_REGION`, and `VFIO_IOMMU_MAP_DMA`/`UNMAP_DMA`
//!   for the BAR's peer-to-peer DMA mapping), interrupt rewiring (`eventfd2`,
//!   `close`, `KVM_IRQFD`, `KVM_SET_GSI_ROUTING`, `VFIO_DEVICE_SET_IRQS`, `poll` for the
//!   MSI-X PBA). Also the serial console (`write`, and turning the coalescing of its transmit
//!   register on and off: `KVM_(UN)REGISTER_COALESCED_MMIO`), locks (`futex`), logging, the kick signal
//!   (`rt_sigreturn`), a crash report (`KVM_GET_REGS`/`KVM_GET_SREGS`), an abort on panic
//!   (`tgkill` of SIGABRT to ourselves) and thread exit.
//! - The background mapper of large BARs (`p2p`, only when a BAR of 1 GiB or more is passed
//!   through): `VFIO_IOMMU_MAP_DMA`/`UNMAP_DMA`, sleeping before it tries a chunk again,
//!   locks, logging, thread exit.
//! - The main thread: the event loop (`epoll_wait`, `read` of eventfds, timerfd, signalfd and
//!   stdin), kicking vCPU threads (`tgkill` of a real-time signal to ourselves), joining them,
//!   and teardown: interrupts off and device reset (`VFIO_DEVICE_SET_IRQS`,
//!   `VFIO_DEVICE_RESET`, `KVM_IRQFD`, `KVM_SET_GSI_ROUTING`), VFIO group release
//!   (`KVM_SET_DEVICE_ATTR`, `VFIO_GROUP_UNSET_CONTAINER`, `readlink` of the group), sysfs
//!   reads and writes to give devices back to their drivers (`openat`, `getdents64`, `statx`,
//!   ...), the terminal restored (`TCSETS`), `munmap`, `close`, the API socket removed
//!   (`unlink`), `exit_group`.
//! - The API thread (`--api-socket`): `accept4`, `recvfrom`/`sendto` and `setsockopt` (read
//!   and write timeouts) on its connections, `shutdown` (the end of a refusal), the eventfd
//!   that wakes the main loop, locks for its channel; it installs its filter before it
//!   accepts anything.
//!
//! A thread started after its creator installed a filter inherits it (the kernel copies it):
//! so the main thread installs its own only once the vCPU threads exist, and must not start
//! threads afterwards (`clone` is not on its list).
//!
//! This module must not decide *when* filters are installed: the VM's run owns that.

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use vfio_bindings::bindings::vfio::{VFIO_BASE, VFIO_TYPE};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

/// Exit status after a forbidden syscall: 128 + SIGSYS, as a shell reports a SIGSYS death.
pub const STATUS_SECCOMP: i32 = 128 + libc::SIGSYS;

/// A kind of thread, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Thread {
    /// The main thread once the VM runs: event loop and teardown.
    Vmm,
    /// A vCPU thread.
    Vcpu,
    /// The API thread (`--api-socket`): accepts, reads and writes its socket, hands actions
    /// to the main thread.
    Api,
    /// The background mapper of large BARs for peer-to-peer DMA (`passthrough::p2p`).
    P2p,
}

impl std::fmt::Display for Thread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Thread::Vmm => "vmm",
            Thread::Vcpu => "vCPU",
            Thread::Api => "API",
            Thread::P2p => "p2p",
        })
    }
}

/// Why a filter could not be installed.
#[derive(Debug)]
pub enum Error {
    /// The rules do not compile to BPF (a bug).
    Build {
        /// Which filter.
        thread: Thread,
        /// Why.
        source: BackendError,
    },
    /// sigaction(SIGSYS) failed.
    Handler(std::io::Error),
    /// The kernel refused the filter.
    Install {
        /// Which filter.
        thread: Thread,
        /// Why.
        source: seccompiler::Error,
    },
}

impl diag::Explain for Error {
    fn advice(&self) -> diag::Advice {
        use diag::Advice;
        match self {
            Error::Build { thread, source } => Advice::bug(format!(
                "cannot build the seccomp filter of the {thread} thread: {source}"
            )),
            Error::Handler(e) => Advice::bug(format!(
                "cannot install the SIGSYS handler for seccomp: {e}"
            )),
            Error::Install { thread, source } => Advice::new(
                format!("cannot install the seccomp filter of the {thread} thread: {source}"),
                "a kernel without seccomp filters needs --seccomp=off",
            ),
        }
    }
}
diag::explained!(Error);

// KVM ioctls (include/uapi/linux/kvm.h).
const KVMIO: u32 = kvm_bindings::KVMIO;
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_bindings::kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_bindings::kvm_sregs);
ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    0x46,
    kvm_bindings::kvm_userspace_memory_region
);
ioctl_iow_nr!(
    KVM_SET_GSI_ROUTING,
    KVMIO,
    0x6a,
    kvm_bindings::kvm_irq_routing
);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_bindings::kvm_irqfd);
ioctl_iowr_nr!(
    KVM_CREATE_DEVICE,
    KVMIO,
    0xe0,
    kvm_bindings::kvm_create_device
);
ioctl_iow_nr!(
    KVM_REGISTER_COALESCED_MMIO,
    KVMIO,
    0x67,
    kvm_bindings::kvm_coalesced_mmio_zone
);
ioctl_iow_nr!(
    KVM_UNREGISTER_COALESCED_MMIO,
    KVMIO,
    0x68,
    kvm_bindings::kvm_coalesced_mmio_zone
);
ioctl_iow_nr!(
    KVM_SET_DEVICE_ATTR,
    KVMIO,
    0xe1,
    kvm_bindings::kvm_device_attr
);

// VFIO ioctls (include/uapi/linux/vfio.h).
const VFIO: u32 = VFIO_TYPE as u32;
ioctl_io_nr!(VFIO_GET_API_VERSION, VFIO, VFIO_BASE);
ioctl_io_nr!(VFIO_CHECK_EXTENSION, VFIO, VFIO_BASE + 1);
ioctl_io_nr!(VFIO_SET_IOMMU, VFIO, VFIO_BASE + 2);
ioctl_io_nr!(VFIO_GROUP_GET_STATUS, VFIO, VFIO_BASE + 3);
ioctl_io_nr!(VFIO_GROUP_SET_CONTAINER, VFIO, VFIO_BASE + 4);
ioctl_io_nr!(VFIO_GROUP_UNSET_CONTAINER, VFIO, VFIO_BASE + 5);
ioctl_io_nr!(VFIO_GROUP_GET_DEVICE_FD, VFIO, VFIO_BASE + 6);
ioctl_io_nr!(VFIO_DEVICE_GET_INFO, VFIO, VFIO_BASE + 7);
ioctl_io_nr!(VFIO_DEVICE_GET_REGION_INFO, VFIO, VFIO_BASE + 8);
ioctl_io_nr!(VFIO_DEVICE_GET_IRQ_INFO, VFIO, VFIO_BASE + 9);
ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO, VFIO_BASE + 10);
ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO, VFIO_BASE + 11);
ioctl_io_nr!(VFIO_IOMMU_MAP_DMA, VFIO, VFIO_BASE + 13);
ioctl_io_nr!(VFIO_IOMMU_UNMAP_DMA, VFIO, VFIO_BASE + 14);

/// Terminal ioctls of tcgetattr/tcsetattr (glibc up to 2.41, and the termios2 ones after).
const TERMINAL: [libc::Ioctl; 8] = [
    libc::TCGETS,
    libc::TCSETS,
    libc::TCSETSW,
    libc::TCSETSF,
    libc::TCGETS2,
    libc::TCSETS2,
    libc::TCSETSW2,
    libc::TCSETSF2,
];

/// ioctl requests a vCPU thread issues, `KVM_RUN` first (the filter tries them in order).
fn vcpu_ioctls() -> Vec<u64> {
    let mut v = vec![
        KVM_RUN(),
        KVM_SET_USER_MEMORY_REGION(),
        KVM_IRQFD(),
        KVM_SET_GSI_ROUTING(),
        VFIO_DEVICE_SET_IRQS(),
        VFIO_IOMMU_MAP_DMA(),
        VFIO_IOMMU_UNMAP_DMA(),
        KVM_REGISTER_COALESCED_MMIO(),
        KVM_UNREGISTER_COALESCED_MMIO(),
        KVM_GET_REGS(),
        KVM_GET_SREGS(),
    ];
    v.extend(TERMINAL);
    v
}

/// ioctl requests the main thread issues from its event loop on: teardown, and hot-add and
/// hot-remove (opening the container and devices, mapping RAM and BARs, wiring interrupts).
fn vmm_ioctls() -> Vec<u64> {
    let mut v = vec![
        KVM_CREATE_DEVICE(),
        VFIO_SET_IOMMU(),
        VFIO_GROUP_SET_CONTAINER(),
        VFIO_GROUP_GET_DEVICE_FD(),
        VFIO_IOMMU_MAP_DMA(),
        KVM_IRQFD(),
        KVM_SET_GSI_ROUTING(),
        KVM_SET_USER_MEMORY_REGION(),
        KVM_SET_DEVICE_ATTR(),
        VFIO_DEVICE_SET_IRQS(),
        VFIO_DEVICE_RESET(),
        VFIO_DEVICE_GET_INFO(),
        VFIO_DEVICE_GET_REGION_INFO(),
        VFIO_DEVICE_GET_IRQ_INFO(),
        VFIO_GROUP_GET_STATUS(),
        VFIO_GROUP_UNSET_CONTAINER(),
        VFIO_IOMMU_UNMAP_DMA(),
        VFIO_GET_API_VERSION(),
        VFIO_CHECK_EXTENSION(),
        libc::FIONBIO,
    ];
    v.extend(TERMINAL);
    v
}

/// ioctl requests of the background mapper of large BARs.
fn p2p_ioctls() -> Vec<u64> {
    vec![VFIO_IOMMU_MAP_DMA(), VFIO_IOMMU_UNMAP_DMA()]
}

/// Syscalls both kinds of thread make without argument checks: memory, locks, time, signal
/// returns, writes to stdout/stderr and eventfds, thread and process exit.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_brk,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Only on the background mapper of large BARs: the pause before it tries a refused chunk
/// again.
const P2P_ONLY: &[i64] = &[libc::SYS_nanosleep, libc::SYS_clock_nanosleep];

/// Only on vCPU threads: VFIO device region access and interrupt eventfds.
const VCPU_ONLY: &[i64] = &[libc::SYS_pread64, libc::SYS_pwrite64, libc::SYS_eventfd2];

/// Only on the main thread: the event loop, sleeping, sysfs files and links at teardown.
const VMM_ONLY: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_openat,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_getdents64,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    // Removing the API socket on the way out.
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    // Hot-add: config space and BAR reads of the new device, its interrupt eventfds.
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_eventfd2,
];

/// Only on the API thread: accepting connections and their timeouts.
const API_ONLY: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_setsockopt,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    // Ending the response to a refused request whose rest it then drops (api::http::linger).
    libc::SYS_shutdown,
];

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

/// One rule per allowed value of argument `arg`.
fn any_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, BackendError> {
    values
        .iter()
        .map(|&v| SeccompRule::new(vec![condition(arg, SeccompCmpOp::Eq, v)?]))
        .collect()
}

/// `tgkill` to a thread of this process only, with SIGABRT (abort on panic) or, for the main
/// thread, a real-time signal (the vCPU kick).
fn tgkill_rules(thread: Thread) -> Result<Vec<SeccompRule>, BackendError> {
    let pid = u64::from(std::process::id());
    let own = || condition(0, SeccompCmpOp::Eq, pid);
    let mut rules = vec![SeccompRule::new(vec![
        own()?,
        condition(2, SeccompCmpOp::Eq, libc::SIGABRT as u64)?,
    ])?];
    if thread == Thread::Vmm {
        rules.push(SeccompRule::new(vec![
            own()?,
            condition(2, SeccompCmpOp::Ge, libc::SIGRTMIN() as u64)?,
            condition(2, SeccompCmpOp::Le, libc::SIGRTMAX() as u64)?,
        ])?);
    }
    Ok(rules)
}

/// `mmap`/`mprotect` of anything but executable memory (argument 2 is `prot`).
fn not_exec() -> Result<Vec<SeccompRule>, BackendError> {
    let no_exec = SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64);
    Ok(vec![SeccompRule::new(vec![condition(2, no_exec, 0)?])?])
}

/// The allowed syscalls of `thread`, each with its argument rules (none: always allowed).
pub fn rules(thread: Thread) -> Result<Rules, BackendError> {
    let only = match thread {
        Thread::Vmm => VMM_ONLY,
        Thread::Vcpu => VCPU_ONLY,
        Thread::Api => API_ONLY,
        Thread::P2p => P2P_ONLY,
    };
    let mut rules: Rules = COMMON.iter().chain(only).map(|&nr| (nr, vec![])).collect();
    let ioctls = match thread {
        Thread::Vmm => vmm_ioctls(),
        Thread::Vcpu => vcpu_ioctls(),
        Thread::Api => vec![libc::FIONBIO],
        Thread::P2p => p2p_ioctls(),
    };
    rules.insert(libc::SYS_ioctl, any_of(1, &ioctls)?);
    rules.insert(libc::SYS_tgkill, tgkill_rules(thread)?);
    rules.insert(libc::SYS_mmap, not_exec()?);
    rules.insert(libc::SYS_mprotect, not_exec()?);
    // Debug builds of std check that a descriptor is open before closing it.
    rules.insert(libc::SYS_fcntl, any_of(1, &[libc::F_GETFD as u64])?);
    Ok(rules)
}

/// `thread`'s filter as BPF: allowed syscalls pass, anything else traps (SIGSYS).
pub fn program(thread: Thread) -> Result<BpfProgram, Error> {
    let build = |source| Error::Build { thread, source };
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(build)?;
    let filter = SeccompFilter::new(
        rules(thread).map_err(build)?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        arch,
    )
    .map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

/// Installs `thread`'s filter on the calling thread only (threads it starts later inherit
/// it), after the process-wide SIGSYS handler.
pub fn apply(thread: Thread) -> Result<(), Error> {
    let program = program(thread)?;
    install_handler()?;
    remember_thread_name();
    seccompiler::apply_filter(&program).map_err(|source| Error::Install { thread, source })
}

/// [`apply`] when `enabled` (`--seccomp=on`), nothing otherwise.
pub fn apply_if(enabled: bool, thread: Thread) -> Result<(), Error> {
    if enabled {
        apply(thread)
    } else {
        Ok(())
    }
}

thread_local! {
    /// The calling thread's name (as in /proc/self/task/TID/comm), for the SIGSYS message.
    /// Const-initialized and without destructor: plain TLS, safe to read in a signal handler.
    static THREAD_NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

fn remember_thread_name() {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, into the 16-byte buffer.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    THREAD_NAME.with(|n| n.set(name));
}

/// Installs [`on_sigsys`] for SIGSYS, once per process. [`crate::signals`] installs it at
/// the start too, so a SIGSYS another process sends is ignored with or without filters.
pub fn install_handler() -> Result<(), Error> {
    static RESULT: OnceLock<Result<(), i32>> = OnceLock::new();
    let result = RESULT.get_or_init(|| {
        // SAFETY: sigaction is plain data; zeroed is a valid empty mask and no flags.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigsys as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO;
        // SAFETY: a valid action whose handler only makes async-signal-safe calls.
        match unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)),
        }
    });
    result.map_err(|errno| Error::Handler(std::io::Error::from_raw_os_error(errno)))
}

/// `siginfo_t` as the kernel fills it for SIGSYS (`struct { void *_call_addr; int _syscall;
/// unsigned int _arch; } _sigsys` after the three leading ints and padding).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// `si_code` of a SIGSYS raised by a seccomp filter.
const SYS_SECCOMP: libc::c_int = 1;

/// A line assembled on the stack: no allocation in a signal handler.
struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, n: libc::c_int) {
        if n < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 10];
        let mut at = digits.len();
        let mut n = n.unsigned_abs();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }
}

/// The message for a trapped `syscall` in thread `name`.
fn message(name: &[u8], syscall: libc::c_int) -> Line {
    let mut line = Line {
        buf: [0; 160],
        len: 0,
    };
    let name = name.split(|&b| b == 0).next().unwrap_or_default();
    line.push(b"vmm: seccomp: thread ");
    line.push(if name.is_empty() { b"?" } else { name });
    line.push(b" made forbidden syscall ");
    line.push_number(syscall);
    line.push(b" (run with --seccomp=off to debug, and report it)\n");
    line
}

/// SIGSYS from a filter: terminal back, one line on stderr, exit. A SIGSYS another process
/// sent (kill, sigqueue) is ignored: SIGSYS is the filters' signal and cannot be blocked for
/// the main loop (the kernel would force a filter's SIGSYS past the block to the default
/// action). Async-signal-safe: no allocation, no locks; tcsetattr, write and _exit only (all
/// allowed by every filter).
extern "C" fn on_sigsys(_signo: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t with SA_SIGINFO; SigsysInfo is its layout
    // for SIGSYS and no larger.
    let info = unsafe { &*info.cast::<SigsysInfo>() };
    if info.code != SYS_SECCOMP {
        return;
    }
    let name = THREAD_NAME.with(Cell::get);
    let line = message(&name, info.syscall);
    crate::console::restore_terminal();
    // SAFETY: writes `len` initialized bytes of a live stack buffer, then ends the process.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.buf.as_ptr().cast(), line.len);
        libc::_exit(STATUS_SECCOMP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_filters_compile() {
        for thread in [Thread::Vmm, Thread::Vcpu, Thread::Api, Thread::P2p] {
            let bpf = program(thread).unwrap();
            assert!(
                bpf.len() > 50 && bpf.len() < 1024,
                "{thread}: {}",
                bpf.len()
            );
        }
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // Values from include/uapi/linux/kvm.h and vfio.h as the kernel computes them.
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS(), 0x8138_ae83);
        assert_eq!(KVM_SET_USER_MEMORY_REGION(), 0x4020_ae46);
        assert_eq!(KVM_SET_GSI_ROUTING(), 0x4008_ae6a);
        assert_eq!(KVM_IRQFD(), 0x4020_ae76);
        assert_eq!(KVM_SET_DEVICE_ATTR(), 0x4018_aee1);
        assert_eq!(VFIO_GET_API_VERSION(), 0x3b64);
        assert_eq!(VFIO_DEVICE_SET_IRQS(), 0x3b6e);
        assert_eq!(VFIO_DEVICE_RESET(), 0x3b6f);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA(), 0x3b72);
        assert_eq!(VFIO_IOMMU_MAP_DMA(), 0x3b71);
        assert_eq!(KVM_CREATE_DEVICE(), 0xc00c_aee0);
        assert_eq!(VFIO_SET_IOMMU(), 0x3b66);
        assert_eq!(VFIO_GROUP_SET_CONTAINER(), 0x3b68);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD(), 0x3b6a);
    }

    #[test]
    fn lists_are_per_thread() {
        let vcpu = rules(Thread::Vcpu).unwrap();
        let vmm = rules(Thread::Vmm).unwrap();
        for nr in [libc::SYS_pread64, libc::SYS_pwrite64, libc::SYS_eventfd2] {
            assert!(
                vcpu.contains_key(&nr) && vmm.contains_key(&nr),
                "{nr}: both (hot-add)"
            );
        }
        for nr in [libc::SYS_clone, libc::SYS_clone3, libc::SYS_execve] {
            assert!(!vcpu.contains_key(&nr) && !vmm.contains_key(&nr), "{nr}");
        }
        for nr in [libc::SYS_epoll_wait, libc::SYS_openat, libc::SYS_getdents64] {
            assert!(vmm.contains_key(&nr) && !vcpu.contains_key(&nr), "{nr}");
        }
        for nr in [
            libc::SYS_socket,
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_fork,
            libc::SYS_ptrace,
            libc::SYS_kill,
        ] {
            assert!(!vcpu.contains_key(&nr) && !vmm.contains_key(&nr), "{nr}");
        }
        let p2p = rules(Thread::P2p).unwrap();
        assert_eq!(
            p2p[&libc::SYS_ioctl].len(),
            2,
            "VFIO_IOMMU_MAP_DMA and UNMAP_DMA"
        );
        assert!(p2p.contains_key(&libc::SYS_clock_nanosleep));
        for nr in [libc::SYS_openat, libc::SYS_clone, libc::SYS_pwrite64] {
            assert!(!p2p.contains_key(&nr), "{nr}");
        }
        assert_eq!(vcpu[&libc::SYS_ioctl].len(), vcpu_ioctls().len());
        assert!(!vcpu_ioctls().contains(&VFIO_DEVICE_RESET()));
        assert!(!vmm_ioctls().contains(&KVM_RUN()));
    }

    fn text(line: &Line) -> &str {
        std::str::from_utf8(&line.buf[..line.len]).unwrap()
    }

    #[test]
    fn message_names_thread_and_syscall() {
        let mut name = [0u8; 16];
        name[..5].copy_from_slice(b"vcpu0");
        assert_eq!(
            text(&message(&name, 41)),
            "vmm: seccomp: thread vcpu0 made forbidden syscall 41 \
             (run with --seccomp=off to debug, and report it)\n"
        );
        assert_eq!(
            text(&message(b"vmm", 0)),
            "vmm: seccomp: thread vmm made forbidden syscall 0 \
             (run with --seccomp=off to debug, and report it)\n"
        );
        assert!(text(&message(&[0; 16], -7))
            .starts_with("vmm: seccomp: thread ? made forbidden syscall -7 "));
        let max = message(&[b'n'; 16], i32::MIN);
        assert!(text(&max).contains(" -2147483648 ") && text(&max).ends_with('\n'));
    }
}
