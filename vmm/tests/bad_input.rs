//! Bad input, as a user types it: the built `vmm` refuses each command line with status 1
//! and exactly one line on stderr (`vmm: <problem>; <fix>`), never panics, and ends within
//! a few seconds. Help and version go to stdout with status 0, and when stdout cannot take
//! them (a full device, a reader that is gone) vmm says so in one line, status 1.
//!
//! [`refuses`] runs one case; the tables below are command-line cases (none needs a kernel,
//! KVM or a device). Add cases to a table, or call [`refuses`] from a test of your own.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");
/// Longest any refusal may take.
const PATIENCE: Duration = Duration::from_secs(5);

/// What one run of vmm did.
pub struct Ran {
    /// Exit status (`None`: killed by a signal).
    pub status: Option<i32>,
    /// Everything on stdout, when it was captured.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

/// `bytes` as an argument (which need not be UTF-8).
pub fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

/// Runs vmm with `args`, stdout to `stdout` (captured when `Stdio::piped()`), stdin from
/// /dev/null; kills it and fails when it has not ended within [`PATIENCE`].
pub fn run(args: &[&OsStr], stdout: Stdio) -> Ran {
    let mut child = Command::new(VMM)
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmm starts");
    let status = wait(&mut child, args);
    let read = |pipe: Option<&mut dyn Read>| {
        let mut bytes = Vec::new();
        if let Some(pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Ran {
        status,
        stdout: read(child.stdout.as_mut().map(|p| p as &mut dyn Read)),
        stderr: read(child.stderr.as_mut().map(|p| p as &mut dyn Read)),
    }
}

fn wait(child: &mut Child, args: &[&OsStr]) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for vmm") {
            return status.code();
        }
        if start.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?}: vmm still running after {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// vmm refuses `args`: status 1, exactly one line on stderr that starts with `vmm: ` and
/// holds `needle`, no panic, within [`PATIENCE`]. Returns that line.
pub fn refuses(args: &[&OsStr], needle: &str) -> String {
    refuses_with(args, Stdio::null(), needle).stderr
}

/// [`refuses`], with stdout going to `stdout`.
pub fn refuses_with(args: &[&OsStr], stdout: Stdio, needle: &str) -> Ran {
    let ran = run(args, stdout);
    let err = &ran.stderr;
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert_eq!(ran.status, Some(1), "{args:?}: status; stderr: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
    assert!(err.starts_with("vmm: "), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: '{err}' lacks '{needle}'");
    ran
}

/// [`refuses`] for each `(args, needle)`, the arguments given as bytes.
fn refuses_all(cases: &[(&[&[u8]], &str)]) {
    for (args, needle) in cases {
        let args: Vec<&OsStr> = args.iter().map(|a| os(a)).collect();
        refuses(&args, needle);
    }
}

/// A pipe whose reading end is closed: writing to it fails with EPIPE (Rust ignores
/// SIGPIPE, so vmm sees the error).
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    writer.into()
}

fn dev_full() -> Stdio {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full")
        .into()
}

#[test]
fn shape_of_the_command_line() {
    refuses_all(&[
        (&[], "no kernel given; add --kernel PATH"),
        (&[b"--cpus", b"2"], "no kernel given"),
        (&[b"--kernel"], "--kernel needs a value"),
        // The next option is never taken for the value.
        (&[b"--kernel", b"--memory", b"1G"], "--kernel needs a value"),
        (&[b"--kernel", b"k", b"--memory"], "--memory needs a value"),
        (
            &[b"--kernel", b"k", b"--device", b"-v"],
            "--device needs a value",
        ),
        (
            &[b"--kernel", b"k", b"--timeout", b"-5"],
            "after '=': --timeout=-5",
        ),
        (
            &[b"--kernel", b"k", b"--frobnicate"],
            "unknown option '--frobnicate'",
        ),
        (
            &[b"--kernel", b"k", b"--memroy=1G"],
            "did you mean '--memory'?",
        ),
        (
            &[b"--kernel", b"k", b"stray"],
            "unexpected argument 'stray'",
        ),
        (
            &[b"--kernel", b"k", b"--debug-exit", b"0x501"],
            "write --debug-exit=0x501",
        ),
        (
            &[b"--kernel", b"k", b"--verbose=2"],
            "--verbose takes no value",
        ),
        (&[b"--kernel", b"k", b"-vx"], "unknown option '-x'"),
        (
            &[b"--kernel", b"k", b"check"],
            "vmm check takes no options of a run",
        ),
        (&[b"--kernel", b"k", b"--json"], "unknown option '--json'"),
        (&[b"--kernel=", b"--memory=1G"], "--kernel is empty"),
        (
            &[b"--bogus\nrm -rf /"],
            "unknown option '--bogus\\nrm -rf /'",
        ),
    ]);
}

#[test]
fn values() {
    refuses_all(&[
        (
            &[b"--kernel", b"k", b"--cpus", b"0"],
            "--cpus '0' is not a vCPU count",
        ),
        (&[b"--kernel", b"k", b"--cpus", b"255"], "from 1 to 254"),
        (
            &[b"--kernel", b"k", b"--memory", b"lots"],
            "--memory 'lots' is not a size",
        ),
        (
            &[b"--kernel", b"k", b"--memory", b"1000"],
            "not a positive multiple of 4 KiB",
        ),
        (
            &[b"--kernel", b"k", b"--memory", b"16777215T"],
            "give at most 1024T",
        ),
        (
            &[b"--kernel", b"k", b"--timeout", b"0"],
            "--timeout '0' is not a time",
        ),
        (
            &[b"--kernel", b"k", b"--timeout", b"9223372036854775808"],
            "--timeout 9223372036854775808 is longer than a timer can run; give at most \
             9223372036854775807 seconds",
        ),
        (
            &[b"--kernel", b"k", b"--debug-exit=0x10000"],
            "is not an I/O port",
        ),
        (
            &[b"--kernel", b"k", b"--stats=xml"],
            "--stats=xml is not a format",
        ),
        (
            &[b"--kernel", b"k", b"--seccomp=no"],
            "use --seccomp=on or --seccomp=off",
        ),
    ]);
}

#[test]
fn debug_exit_on_a_port_in_use() {
    let fix = "use a free port, e.g. the default --debug-exit=0xf4";
    for (port, device) in [
        ("0x3f8", "the COM1 serial port"),
        ("0x60", "the i8042 controller"),
        ("0x64", "the i8042 controller"),
        ("0x600", "the ACPI power management registers"),
        ("0xcf8", "PCI configuration"),
        ("0xcfc", "PCI configuration"),
        ("0x40", "KVM's in-kernel PIT"),
        ("0x21", "KVM's in-kernel PIC"),
        ("0xa0", "KVM's in-kernel PIC"),
        ("0x4d1", "KVM's in-kernel ELCR"),
    ] {
        let arg = format!("--debug-exit={port}");
        let line = refuses(&[os(b"--kernel"), os(b"k"), OsStr::new(&arg)], device);
        assert!(line.contains(&format!("{arg} collides with ")), "{line}");
        assert!(line.trim_end().ends_with(fix), "{line}");
    }
}

#[test]
fn devices() {
    refuses_all(&[
        (
            &[b"--kernel", b"k", b"--device", b"vfio-pci,bdf=01:00.0"],
            "unknown key 'bdf'; the keys are host, sysfsdev, id, managed",
        ),
        (
            &[b"--kernel", b"k", b"--device", b"virtio-net"],
            "unknown device type 'virtio-net'",
        ),
        (
            &[b"--kernel", b"k", b"--device", b"vfio-pci,host=00:1g.0"],
            "bad PCI address '00:1g.0'",
        ),
        (
            &[
                b"--kernel",
                b"k",
                b"--device",
                b"vfio-pci,host=01:00.0",
                b"--device",
                b"vfio-pci,host=0000:01:00.0",
            ],
            "--device 'vfio-pci,host=01:00.0' and --device 'vfio-pci,host=0000:01:00.0' name \
             the same device 0000:01:00.0",
        ),
        (
            &[
                b"--kernel",
                b"k",
                b"--device=vfio-pci,host=01:00.0",
                b"--device=vfio-pci,sysfsdev=/sys/bus/pci/devices/0000:01:00.0",
            ],
            "name the same device 0000:01:00.0",
        ),
        (
            &[
                b"--kernel",
                b"k",
                b"--device=vfio-pci,host=01:00.0,id=nic",
                b"--device=vfio-pci,host=02:00.0,id=nic",
            ],
            "both have id=nic; give each device its own id",
        ),
    ]);
}

#[test]
fn not_utf8() {
    refuses_all(&[
        (
            &[b"--kernel", b"k", b"--cmdline", b"console=ttyS0 \xff"],
            "--cmdline 'console=ttyS0 \\xff' is not UTF-8 text",
        ),
        (
            &[b"--kernel", b"k", b"--memory", b"1\xffG"],
            "--memory '1\\xffG'",
        ),
        (&[b"--kernel", b"k", b"--cpus=\xc3"], "--cpus '\\xc3'"),
        (
            &[b"--kernel", b"k", b"--device", b"vfio-pci,host=\xff"],
            "the value of 'host' is not UTF-8 text",
        ),
        (&[b"--kernel", b"k", b"--\xff"], "unknown option '--\\xff'"),
        (&[b"\xfe\xff"], "unexpected argument '\\xfe\\xff'"),
        (
            &[b"check", b"--memory", b"\xff"],
            "--memory '\\xff' is not UTF-8 text",
        ),
        (&[b"check", b"\xff"], "unknown argument '\\xff' to check"),
    ]);
    // A kernel path is a path: its bytes get as far as opening the file.
    let missing = b"/nonexistent/k\xff";
    refuses(&[os(b"--kernel"), os(missing)], "kernel");
    // And what it quotes stays on one line.
    refuses(&[os(b"--kernel"), os(b"/nonexistent/a\nb")], "a\\nb");
}

#[test]
fn check_arguments() {
    refuses_all(&[
        (
            &[b"check", b"--kernel", b"k"],
            "unknown argument '--kernel' to check",
        ),
        (
            &[b"check", b"--memory", b"1000"],
            "not a positive multiple of 4 KiB",
        ),
        (
            &[b"check", b"--memory", b"0"],
            "not a positive multiple of 4 KiB",
        ),
        (&[b"check", b"--device"], "--device needs a value"),
        (&[b"check", b"--json=yes"], "--json takes no value"),
        (
            &[
                b"check",
                b"--device",
                b"vfio-pci,host=3:0.0",
                b"--device",
                b"vfio-pci,host=03:00.0",
            ],
            "name the same device 0000:03:00.0",
        ),
    ]);
}

/// `vmm check --json` reports a refused argument as JSON on stdout too.
#[test]
fn check_json_refusal_on_stdout() {
    let args = [os(b"check"), os(b"--json"), os(b"--memory"), os(b"lots")];
    let ran = refuses_with(&args, Stdio::piped(), "--memory 'lots' is not a size");
    let line = ran.stderr.trim_end().strip_prefix("vmm: ").unwrap();
    let json = ran.stdout.trim_end();
    assert_eq!(ran.stdout.lines().count(), 1, "{json}");
    assert!(json.starts_with(r#"{"ok":false,"error":"#), "{json}");
    assert!(
        json.contains(&format!(r#""error":"{line}""#)),
        "{json} vs {line}"
    );
    assert!(json.contains(r#""problem":"--memory 'lots' is not a size","fix":"write "#));
    // Without --json, nothing on stdout.
    let ran = refuses_with(
        &args[..1]
            .iter()
            .chain(&args[2..])
            .copied()
            .collect::<Vec<_>>(),
        Stdio::piped(),
        "lots",
    );
    assert!(ran.stdout.is_empty(), "{}", ran.stdout);
}

#[test]
fn help_and_version_on_stdout() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["check", "--help"],
        &["--kernel", "k", "-h"],
    ] {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let ran = run(&args, Stdio::piped());
        assert_eq!(ran.status, Some(0), "{args:?}: {}", ran.stderr);
        assert!(ran.stderr.is_empty(), "{}", ran.stderr);
        assert!(ran.stdout.contains("Usage: vmm "), "{}", ran.stdout);
    }
    let ran = run(&[os(b"--version")], Stdio::piped());
    assert_eq!(ran.status, Some(0));
    assert_eq!(ran.stdout, format!("vmm {}\n", env!("CARGO_PKG_VERSION")));
}

/// Output that cannot be written is one line and status 1, never a panic.
#[test]
fn stdout_that_cannot_take_it() {
    let full = "No space left on device (os error 28)";
    let gone = "Broken pipe (os error 32)";
    for (args, what) in [
        (&["--help"][..], "the help"),
        (&["check", "--help"], "the help"),
        (&["--version"], "the version"),
        (&["check"], "the report"),
        (&["check", "--json"], "the report"),
    ] {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let line = format!("vmm: cannot write {what} to stdout: ");
        refuses_with(&args, dev_full(), &format!("{line}{full}"));
        refuses_with(&args, closed_pipe(), &format!("{line}{gone}"));
    }
}

/// A scratch directory for this test binary, with kernels and files made for the cases.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-bad-input-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A bzImage header like Debian 6.1's: runs at 16 MiB, decompresses into 63.6 MiB, so it
/// needs 80 MiB of RAM; the image itself is tiny (no code: these cases never run it).
fn debian_like_bzimage(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("bzImage");
    let image = arch::kernel::fixtures::bzimage_bytes(0x100_0000, 0x3f9_8000, 8192);
    std::fs::write(&path, image).unwrap();
    path
}

fn path_arg(p: &std::path::Path) -> &OsStr {
    p.as_os_str()
}

/// Files that are not a kernel or an initramfs, and kernels that do not fit what was asked:
/// each refused before KVM or a device is touched, naming the option, the file and the fix.
#[test]
fn kernel_and_initramfs_files() {
    let dir = scratch("files");
    let kernel = debian_like_bzimage(&dir);
    let k = path_arg(&kernel);
    // A FIFO nobody writes: refused at once, not waited on.
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let kernel_arg = OsStr::new("--kernel");
    let initrd_arg = OsStr::new("--initramfs");
    refuses(
        &[kernel_arg, fifo.as_os_str()],
        "is a FIFO, not a file; give the path of a file to --kernel",
    );
    refuses(
        &[kernel_arg, k, initrd_arg, fifo.as_os_str()],
        "--initramfs",
    );
    refuses(
        &[kernel_arg, OsStr::new("/dev/zero")],
        "--kernel /dev/zero is a character device, not a file",
    );
    refuses(&[kernel_arg, dir.as_os_str()], "is a directory, not a file");
    // Cut short, empty, not a kernel.
    let image = std::fs::read(&kernel).unwrap();
    let cut = dir.join("cut");
    std::fs::write(&cut, &image[..image.len() - 4096]).unwrap();
    refuses(
        &[kernel_arg, cut.as_os_str()],
        "is cut short: its header accounts for",
    );
    let empty = dir.join("empty");
    std::fs::write(&empty, b"").unwrap();
    refuses(
        &[kernel_arg, empty.as_os_str()],
        "is empty; give an x86_64 Linux bzImage or ELF vmlinux",
    );
    let script = dir.join("script");
    std::fs::write(&script, b"#!/bin/sh\necho hi\n").unwrap();
    refuses(&[kernel_arg, script.as_os_str()], "is not a Linux kernel");
    // The memory minimum comes from the kernel's header (65M used to triple-fault).
    let mem = OsStr::new("--memory");
    let line = refuses(
        &[kernel_arg, k, mem, OsStr::new("65M")],
        "use --memory 80M or more",
    );
    assert!(
        line.contains("it runs at 16 MiB and decompresses into 63.6 MiB, up to 79.6 MiB"),
        "{line}"
    );
    // An initramfs that cannot fit whatever the memory: no "raise --memory".
    let big = dir.join("big.cpio");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let line = refuses(
        &[
            kernel_arg,
            k,
            initrd_arg,
            big.as_os_str(),
            mem,
            OsStr::new("8G"),
        ],
        "does not fit between the kernel and 0x7fffffff",
    );
    assert!(!line.contains("--memory 8"), "{line}");
    // The command line: up to the kernel's own cmdline_size.
    let long = "x".repeat(2048);
    refuses(
        &[kernel_arg, k, OsStr::new("--cmdline"), OsStr::new(&long)],
        "--cmdline is 2048 bytes but the kernel takes at most 2047 (its header's cmdline_size)",
    );
    // A kernel path that is not UTF-8, shown escaped.
    let odd = dir.join(OsStr::from_bytes(b"k\xff"));
    refuses(&[kernel_arg, odd.as_os_str()], "\\xFF");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Devices named by paths that are not PCI devices or mdevs, and the same device given by
/// its address and its sysfs path.
#[test]
fn device_paths() {
    let dir = scratch("devices");
    let kernel = debian_like_bzimage(&dir);
    let run = |spec: &str, needle: &str| {
        refuses(
            &[
                OsStr::new("--kernel"),
                kernel.as_os_str(),
                OsStr::new("--device"),
                OsStr::new(spec),
            ],
            needle,
        )
    };
    run(
        "vfio-pci,sysfsdev=/sys/kernel/mm",
        "/sys/kernel/mm is not a device directory (it has no subsystem link)",
    );
    run(
        "vfio-pci,sysfsdev=/sys/nonexistent",
        "no device at /sys/nonexistent",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs vmm as the unprivileged user `nobody` (this test binary runs as root in CI).
fn refuses_as_nobody(args: &[&OsStr], needle: &str) -> String {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "these cases need root to become nobody");
    let out = Command::new(VMM)
        .args(args)
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .expect("vmm starts as nobody");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
    assert!(
        err.starts_with("vmm: ") && err.contains(needle),
        "{args:?}: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// What an unprivileged user meets: a kernel they cannot read, /dev/kvm they may not open.
#[test]
fn as_an_unprivileged_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("nobody");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let kernel = debian_like_bzimage(&dir);
    std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o644)).unwrap();
    let secret = dir.join("secret-bzImage");
    std::fs::copy(&kernel, &secret).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let k = OsStr::new("--kernel");
    refuses_as_nobody(
        &[k, secret.as_os_str()],
        "Permission denied (os error 13); check the file's permissions",
    );
    // (std drops root's supplementary groups with the uid.)
    // A readable kernel: then /dev/kvm (root:kvm 0660 on Debian) is what stops nobody.
    let kvm = std::fs::metadata("/dev/kvm").expect("/dev/kvm exists");
    assert_eq!(
        kvm.permissions().mode() & 0o006,
        0,
        "/dev/kvm is not for everyone here"
    );
    refuses_as_nobody(
        &[k, kernel.as_os_str()],
        "cannot open /dev/kvm: Permission denied",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
