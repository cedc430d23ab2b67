//! The seccomp filters refuse what they must and allow what vmm does. Each case runs in a
//! child process (this test binary again, one test selected by name, told what to do by an
//! environment variable), because a refused syscall ends the process.

use std::process::{Command, Output};
use vmm::seccomp::{apply, Thread, STATUS_SECCOMP};

/// Set in a child: which case to run.
const CHILD: &str = "VMM_SECCOMP_TEST_CHILD";
/// Printed by a child once the allowed syscalls worked under its filter.
const ALLOWED_OK: &str = "allowed syscalls work under the filter";

/// Runs `case` in a child process through the test `child`.
fn run_child(case: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, case)
        .output()
        .expect("re-run the test binary")
}

/// The child side: applies a filter on a thread named like vmm's, makes allowed syscalls,
/// then the forbidden one. Does nothing in a normal test run.
#[test]
fn child() {
    let Ok(case) = std::env::var(CHILD) else {
        return;
    };
    let (name, thread) = match case.as_str() {
        "vcpu-socket" | "vcpu-open" => ("vcpu0", Thread::Vcpu),
        "vmm-execve" | "vmm-socket" => ("vmm-main", Thread::Vmm),
        other => panic!("unknown case {other}"),
    };
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            apply(thread).expect("install the filter");
            allowed_syscalls(thread);
            println!("{ALLOWED_OK}");
            forbidden_syscall(&case);
        })
        .unwrap();
    handle.join().unwrap();
    // Only reached when the forbidden syscall went through.
    std::process::exit(0);
}

/// What the VMM's threads do all the time: allocate, lock, read the clock, eventfds, write.
fn allowed_syscalls(thread: Thread) {
    let big = vec![1u8; 8 << 20]; // mmap and munmap
    assert_eq!(big.iter().map(|&b| u64::from(b)).sum::<u64>(), 8 << 20);
    let lock = std::sync::Mutex::new(0);
    *lock.lock().unwrap() += 1;
    let start = std::time::Instant::now();
    assert!(start.elapsed().as_secs() < 60);
    let mut map = std::collections::HashMap::new(); // getrandom for its keys
    map.insert(1, 2);
    if thread == Thread::Vcpu {
        let efd = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        efd.write(3).unwrap();
        assert_eq!(efd.read().unwrap(), 3);
    } else {
        let dir = std::fs::read_dir("/proc/self/fd").unwrap();
        assert!(dir.count() > 2);
        assert!(std::fs::read_to_string("/proc/thread-self/status")
            .unwrap()
            .contains("Seccomp:\t2"));
    }
    eprintln!("stderr works");
}

fn forbidden_syscall(case: &str) {
    // SAFETY: plain syscalls on owned arguments; each is expected to be refused.
    unsafe {
        match case {
            "vcpu-socket" | "vmm-socket" => {
                libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            }
            "vcpu-open" => {
                libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY);
            }
            "vmm-execve" => {
                let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null()];
                libc::execve(argv[0], argv.as_ptr(), envp.as_ptr());
            }
            _ => unreachable!(),
        }
    }
}

/// Asserts the child was stopped by the filter for `syscall`, after the allowed ones worked.
fn assert_refused(case: &str, thread: &str, syscall: i64) {
    let out = run_child(case);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains(ALLOWED_OK), "{case}: {stdout}\n{stderr}");
    assert_eq!(
        out.status.code(),
        Some(STATUS_SECCOMP),
        "{case}: {:?}\n{stderr}",
        out.status
    );
    let line = format!(
        "vmm: seccomp: thread {thread} made forbidden syscall {syscall} \
         (run with --seccomp=off to debug, and report it)\n"
    );
    assert!(stderr.contains(&line), "{case}: {stderr}");
    assert!(stderr.contains("stderr works"), "{case}: {stderr}");
}

#[test]
fn vcpu_filter_refuses_socket() {
    assert_refused("vcpu-socket", "vcpu0", libc::SYS_socket);
}

#[test]
fn vcpu_filter_refuses_opening_files() {
    // open(2) is libc's openat.
    assert_refused("vcpu-open", "vcpu0", libc::SYS_openat);
}

#[test]
fn vmm_filter_refuses_execve() {
    assert_refused("vmm-execve", "vmm-main", libc::SYS_execve);
}

#[test]
fn vmm_filter_refuses_socket() {
    assert_refused("vmm-socket", "vmm-main", libc::SYS_socket);
}

#[test]
fn the_status_is_128_plus_sigsys() {
    assert_eq!(STATUS_SECCOMP, 159);
}
