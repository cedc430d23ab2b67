//! End-to-end tests of the `vmm` binary on this host's /dev/kvm with tiny guest programs
//! assembled here: 64-bit code in a minimal ELF, entered in long mode like a vmlinux.
//!
//! These need /dev/kvm. They fail (never skip) when it is missing.

mod common;

use common::*;
use std::process::{Command, Output, Stdio};

#[test]
fn serial_output_reaches_stdout_and_debug_exit_sets_status() {
    let code = [
        print(b"hello from the guest\n"),
        out_imm(0xf4, 0x10),
        HLT_LOOP.to_vec(),
    ]
    .concat();
    let out = Guest::new("hello", &code).run(&["--debug-exit", "--timeout", "20"]);
    assert_eq!(text(&out.stdout), "hello from the guest\n");
    assert_eq!(
        out.status.code(),
        Some((0x10 << 1) | 1),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn stdin_reaches_the_guest_uart() {
    let code = [
        mov_dx(0x3fd),
        vec![0xec, 0xa8, 0x01, 0x74, 0xfb], // poll LSR until data ready
        mov_dx(0x3f8),
        vec![0xec, 0xe6, 0xf4], // read the byte, write it to the debug-exit port
        HLT_LOOP.to_vec(),
    ]
    .concat();
    let guest = Guest::new("stdin", &code);
    let mut child = Command::new(VMM)
        .arg("--kernel")
        .arg(&guest.path)
        .args(["--memory", "16M", "--debug-exit", "--timeout", "20"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"A").unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some((i32::from(b'A') << 1) | 1));
}

#[test]
fn stats_count_what_userspace_handled() {
    let code = [print(b"abc"), out_imm(0xf4, 0), HLT_LOOP.to_vec()].concat();
    let guest = Guest::new("stats", &code);
    let out = guest.run(&["--debug-exit", "--stats", "--timeout", "20"]);
    let err = text(&out.stderr);
    assert!(err.contains("vmm stats exits: io_in=0 io_out=4 "), "{err}");
    assert!(err.contains("pio:com1=3 pio:debug-exit=1"), "{err}");
    let out = guest.run(&["--debug-exit", "--stats=json", "--timeout", "20"]);
    let err = text(&out.stderr);
    assert!(
        err.starts_with("{\"exits\":{\"io_in\":0,\"io_out\":4,"),
        "{err}"
    );
    assert!(err.contains("\"pio:com1\":3"), "{err}");
}

#[test]
fn debug_exit_on_another_port_and_zero_value() {
    let code = [mov_dx(0x501), out_bytes(&[0]), HLT_LOOP.to_vec()].concat();
    let out = Guest::new("port501", &code).run(&["--debug-exit=0x501", "--timeout", "20"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn debug_exit_port_is_off_unless_asked() {
    // Without --debug-exit the write to 0xf4 goes nowhere and the guest runs on.
    let code = [out_imm(0xf4, 0x10), SPIN.to_vec()].concat();
    let out = Guest::new("noexit", &code).run(&["--timeout", "1"]);
    assert_eq!(out.status.code(), Some(124));
}

#[test]
fn acpi_poweroff_and_reset_registers_end_with_status_0() {
    for (name, value) in [("s5", 0x34u8), ("reset", 1)] {
        let code = [mov_dx(0x600), out_bytes(&[value]), SPIN.to_vec()].concat();
        let out = Guest::new(name, &code).run(&["--timeout", "20"]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
    }
}

/// The guest finds both 8259 PICs with every line masked, as firmware leaves them (KVM's
/// reset state has them unmasked, vectors from 0: an early legacy interrupt was an exception).
#[test]
fn the_pics_start_masked() {
    let code = [
        vec![0xe4, 0x21], // in al, 0x21: the master's mask
        vec![0x88, 0xc3], // mov bl, al
        vec![0xe4, 0xa1], // in al, 0xa1: the slave's mask
        vec![0x20, 0xd8], // and al, bl
        vec![0xd0, 0xe8], // shr al, 1: the exit status is (value << 1) | 1, 8 bits
        vec![0xe6, 0xf4], // out 0xf4, al
        HLT_LOOP.to_vec(),
    ]
    .concat();
    let out = Guest::new("pics", &code).run(&["--debug-exit", "--timeout", "20"]);
    assert_eq!(out.status.code(), Some(0xff), "{}", text(&out.stderr));
}

#[test]
fn i8042_reset_ends_with_status_0() {
    let code = [out_imm(0x64, 0xfe), SPIN.to_vec()].concat();
    let out = Guest::new("kbdreset", &code).run(&["--timeout", "20"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn pvh_entry_runs_in_32_bit_mode_with_start_info_in_ebx() {
    let code = [
        vec![0x81, 0x3b, 0x78, 0xc5, 0x6e, 0x33], // cmp dword [ebx], 0x336ec578 (PVH magic)
        vec![0x75, 0x04],                         // jne +4
        out_imm(0xf4, 0x11),                      // magic found
        out_imm(0xf4, 0x22),                      // magic missing
        HLT_LOOP.to_vec(),
    ]
    .concat();
    let out =
        Guest::from_image("pvh", &elf_with(&code, true)).run(&["--debug-exit", "--timeout", "20"]);
    assert_eq!(
        out.status.code(),
        Some((0x11 << 1) | 1),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn triple_fault_is_a_crash_with_registers() {
    // An empty IDT turns #UD into a triple fault.
    let code = [print(b"about to fault\n"), UD2.to_vec()].concat();
    let out = Guest::new("ud2", &code).run(&["--timeout", "20"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("triple fault"), "{err}");
    let entry = LOAD_ADDR + 120 + print(b"about to fault\n").len() as u64;
    assert!(err.contains(&format!("rip={entry:#018x}")), "{err}");
    assert!(err.contains("cr0="), "{err}");
}

#[test]
fn timeout_stops_a_spinning_guest() {
    let start = std::time::Instant::now();
    let out = Guest::new("spin", &SPIN).run(&["--timeout", "1"]);
    assert_eq!(out.status.code(), Some(124));
    assert!(
        text(&out.stderr).contains("still running after 1 s"),
        "{}",
        text(&out.stderr)
    );
    assert!(start.elapsed().as_secs() < 10);
}

#[test]
fn two_vcpus_boot_and_exit() {
    // The BSP runs the program; the AP waits for a SIPI that never comes.
    let code = [print(b"smp\n"), out_imm(0xf4, 2), HLT_LOOP.to_vec()].concat();
    let out = Guest::new("smp", &code).run(&["--cpus", "2", "--debug-exit", "--timeout", "20"]);
    assert_eq!(text(&out.stdout), "smp\n");
    assert_eq!(out.status.code(), Some(5));
}

#[test]
fn memory_above_4g_is_accepted() {
    let code = [out_imm(0xf4, 3), HLT_LOOP.to_vec()].concat();
    let guest = Guest::new("big", &code);
    let out = Command::new(VMM)
        .arg("--kernel")
        .arg(&guest.path)
        .args(["--memory", "5G", "--debug-exit", "--timeout", "20"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
}

/// The longest `--timeout` vmm accepts is one the timer takes.
#[test]
fn longest_timeout_is_accepted_by_the_timer() {
    let code = [out_imm(0xf4, 4), HLT_LOOP.to_vec()].concat();
    let guest = Guest::new("long-timeout", &code);
    let longest = vmm::config::MAX_TIMEOUT_SECS.to_string();
    let out = Command::new(VMM)
        .arg("--kernel")
        .arg(&guest.path)
        .args(["--memory", "16M", "--debug-exit", "--timeout", &longest])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(9), "{}", text(&out.stderr));
}

/// Bad input: exactly one line on stderr, status 1, no panic.
fn rejects(args: &[&str], needle: &str) {
    let out = Command::new(VMM).args(args).output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
    assert!(err.starts_with("vmm: "), "{err}");
    assert!(err.contains(needle), "{args:?}: '{err}' lacks '{needle}'");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_is_one_clear_line() {
    let tiny = Guest::new("tiny", &HLT_LOOP);
    let tiny = tiny.path.to_str().unwrap();
    let not_a_kernel =
        std::env::temp_dir().join(format!("vmm-not-a-kernel-{}", std::process::id()));
    std::fs::write(&not_a_kernel, b"#!/bin/sh\necho hi\n").unwrap();
    let not_a_kernel = not_a_kernel.to_str().unwrap();
    rejects(
        &["--kernel", "/nonexistent/bzImage"],
        "cannot read --kernel /nonexistent/bzImage: No such file or directory",
    );
    rejects(&["--kernel", "/"], "--kernel / is a directory, not a file");
    rejects(&["--kernel", not_a_kernel], "is not a Linux kernel");
    rejects(
        &["--kernel", tiny, "--initramfs", "/nonexistent/rd"],
        "cannot read --initramfs /nonexistent/rd",
    );
    rejects(
        &["--kernel", tiny, "--memory", "1M"],
        "--memory 1 MiB is too small for --kernel ",
    );
    rejects(
        &["--kernel", tiny, "--memory", "1000T"],
        "more than this host's",
    );
    rejects(&["--kernel", tiny, "--cpus", "0"], "--cpus '0'");
    rejects(&["--kernel", tiny, "--bogus"], "unknown option '--bogus'");
    rejects(&[], "no kernel given");
}

#[test]
fn help_documents_every_option() {
    let out = Command::new(VMM).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for opt in [
        "--kernel",
        "--initramfs",
        "--cmdline",
        "--memory",
        "--cpus",
        "--device",
        "--debug-exit",
        "--timeout",
        "Examples:",
    ] {
        assert!(help.contains(opt), "{opt}");
    }
}

/// Starts vmm on a 2-vCPU guest that prints "ready" and then spins (the AP sits in KVM
/// waiting for a SIPI), sends `sig` once the guest runs, and returns the result and how long
/// the VMM took to stop.
fn stop_with_signal(name: &str, sig: i32) -> (Output, std::time::Duration) {
    let child = start_spinning_guest(name, &["--cpus", "2"], Stdio::null());
    let start = std::time::Instant::now();
    // SAFETY: signals our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
    let out = child.wait_with_output().unwrap();
    (out, start.elapsed())
}

#[test]
fn every_terminating_signal_stops_the_guest_in_order() {
    let mut signals = vec![
        (libc::SIGINT, "SIGINT".to_string()),
        (libc::SIGTERM, "SIGTERM".into()),
        (libc::SIGHUP, "SIGHUP".into()),
        (libc::SIGQUIT, "SIGQUIT".into()),
        (libc::SIGUSR1, "SIGUSR1".into()),
        (libc::SIGUSR2, "SIGUSR2".into()),
        (libc::SIGALRM, "SIGALRM".into()),
        (libc::SIGVTALRM, "SIGVTALRM".into()),
        (libc::SIGPROF, "SIGPROF".into()),
        (libc::SIGIO, "SIGIO".into()),
        (libc::SIGPWR, "SIGPWR".into()),
        (libc::SIGSTKFLT, "SIGSTKFLT".into()),
        (libc::SIGXCPU, "SIGXCPU".into()),
        (libc::SIGXFSZ, "SIGXFSZ".into()),
        // Fault signals sent by another process (a real fault still kills at once).
        (libc::SIGSEGV, "SIGSEGV".into()),
        (libc::SIGBUS, "SIGBUS".into()),
        (libc::SIGILL, "SIGILL".into()),
        (libc::SIGFPE, "SIGFPE".into()),
        (libc::SIGTRAP, "SIGTRAP".into()),
        (libc::SIGABRT, "SIGABRT".into()),
    ];
    // The first real-time signal kicks vCPUs; every other one is an exit signal.
    signals.push((libc::SIGRTMIN() + 1, "SIGRTMIN+1".into()));
    let max = libc::SIGRTMAX();
    signals.push((max, format!("SIGRTMIN+{}", max - libc::SIGRTMIN())));
    for (sig, name) in signals {
        let (out, took) = stop_with_signal(&name.to_lowercase().replace('+', "-"), sig);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(128 + sig), "{name}: {err}");
        assert_eq!(err, format!("vmm: stopped by {name}\n"), "{name}");
        assert!(took.as_secs() < 5, "{name}: took {took:?}");
    }
}

/// SIGPIPE (writes fail with EPIPE instead) and a SIGSYS another process sends (SIGSYS
/// belongs to the seccomp filters) are ignored: the guest keeps running.
#[test]
fn sigpipe_and_a_sent_sigsys_are_ignored() {
    let mut child = start_spinning_guest("ignored", &[], Stdio::null());
    for sig in [libc::SIGPIPE, libc::SIGSYS, libc::SIGCHLD, libc::SIGWINCH] {
        // SAFETY: signals our own child process.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "still running");
    // SAFETY: signals our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "vmm: stopped by SIGTERM\n");
}

#[test]
fn sigterm_and_sigquit_restore_the_terminal_the_guest_had_in_raw_mode() {
    for sig in [libc::SIGTERM, libc::SIGQUIT] {
        signal_restores_the_terminal(sig);
    }
}

fn signal_restores_the_terminal(sig: i32) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors into the given ints; the other pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned here.
    let (_master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let termios = |fd: &OwnedFd| {
        use std::os::fd::AsRawFd;
        // SAFETY: termios is plain data filled by tcgetattr on a valid descriptor.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor and pointer.
        assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) }, 0);
        t
    };
    let before = termios(&slave);
    assert_ne!(before.c_lflag & libc::ICANON, 0, "a fresh pty is cooked");

    let child = start_spinning_guest("pty", &[], slave.try_clone().unwrap().into());
    let during = termios(&slave);
    assert_eq!(
        during.c_lflag & (libc::ICANON | libc::ECHO),
        0,
        "raw while the guest runs"
    );
    // SAFETY: signals our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + sig), "{}", text(&out.stderr));
    let after = termios(&slave);
    assert_eq!(after.c_lflag, before.c_lflag, "terminal restored");
    assert_eq!(after.c_iflag, before.c_iflag, "terminal restored");
}

/// Name and `Seccomp:` mode (0 none, 2 filter) of every thread of process `pid`, sorted,
/// leaving out KVM's kernel workers that live in the VMM's thread group
/// (`kvm-nx-lpage-recovery`).
fn seccomp_modes(pid: u32) -> Vec<(String, String)> {
    let mut modes = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path().join("status");
        let status = std::fs::read_to_string(path).unwrap_or_default();
        let field = |key: &str| {
            let line = status.lines().find_map(|l| l.strip_prefix(key));
            line.unwrap_or("").trim().to_string()
        };
        modes.push((field("Name:"), field("Seccomp:")));
    }
    modes.retain(|(name, _)| !name.starts_with("kvm-"));
    modes.sort();
    modes
}

#[test]
fn every_thread_runs_under_its_seccomp_filter_unless_off() {
    for (flag, mode) in [("--seccomp=on", "2"), ("--seccomp=off", "0")] {
        let child = start_spinning_guest("seccomp", &["--cpus", "2", flag], Stdio::null());
        // The main thread installs its filter just before its event loop: give it a moment.
        let want: Vec<(String, String)> = ["vcpu0", "vcpu1", "vmm"]
            .iter()
            .map(|name| (name.to_string(), mode.to_string()))
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut modes = seccomp_modes(child.id());
        while modes != want && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            modes = seccomp_modes(child.id());
        }
        // Teardown runs under the filters too: it must end cleanly, without SIGSYS.
        // SAFETY: signals our own child process.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let out = child.wait_with_output().unwrap();
        assert_eq!(modes, want, "{flag}");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(143), "{flag}: {err}");
        assert_eq!(err, "vmm: stopped by SIGTERM\n", "{flag}");
    }
}

/// A bzImage whose 64-bit entry writes the last quadword of its decompression area
/// (`pref_address + init_size`), reads it back, and reports through debug-exit: 0x21 when
/// the memory is RAM, 0x13 when not.
fn bzimage_probing_its_end(pref: u64, init_size: u32) -> Vec<u8> {
    let probe = pref + u64::from(init_size) - 8;
    let mut code = vec![0x48, 0xb8]; // mov rax, probe
    code.extend_from_slice(&probe.to_le_bytes());
    code.extend_from_slice(&[0x48, 0xc7, 0x00, 0x5a, 0x5a, 0x5a, 0x5a]); // mov qword [rax], imm
    code.extend_from_slice(&[0x48, 0x8b, 0x18]); // mov rbx, [rax]
    code.extend_from_slice(&[0x48, 0x81, 0xfb, 0x5a, 0x5a, 0x5a, 0x5a]); // cmp rbx, imm
    code.extend_from_slice(&[0x75, 0x07]); // jne bad
    code.extend_from_slice(&out_imm(0xf4, 0x21));
    code.extend_from_slice(&HLT_LOOP);
    code.extend_from_slice(&out_imm(0xf4, 0x13)); // bad:
    code.extend_from_slice(&HLT_LOOP);
    let mut image = arch::kernel::fixtures::bzimage_bytes(pref, init_size, 0x200 + code.len());
    // Protected-mode code starts after the setup sectors; the 64-bit entry is 0x200 in.
    let entry = (usize::from(image[0x1f1]) + 1) * 512 + 0x200;
    image[entry..entry + code.len()].copy_from_slice(&code);
    image
}

/// The smallest `--memory` vmm accepts for a kernel comes from the kernel's header: at that
/// size the kernel's entry runs and its whole decompression area is RAM; one MiB less is
/// refused before the guest starts.
#[test]
fn memory_minimum_comes_from_the_kernel_header() {
    // Runs at 2 MiB and decompresses into 31 MiB: needs RAM up to 33 MiB.
    let guest = Guest::from_image("minimum", &bzimage_probing_its_end(0x20_0000, 0x1f0_0000));
    let run = |mem: &str| {
        Command::new(VMM)
            .arg("--kernel")
            .arg(&guest.path)
            .args(["--memory", mem, "--debug-exit", "--timeout", "20"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run("33M");
    assert_eq!(
        out.status.code(),
        Some((0x21 << 1) | 1),
        "the kernel's entry ran and found RAM at its end: {}",
        text(&out.stderr)
    );
    let out = run("32M");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err,
        format!(
            "vmm: --memory 32 MiB is too small for --kernel {}: it runs at 2 MiB and \
             decompresses into 31 MiB, up to 33 MiB; use --memory 33M or more\n",
            guest.path.display()
        )
    );
}
