//! The control API end to end on this host's /dev/kvm: vmm with `--api-socket` runs a tiny
//! guest, `vmm remote` (and raw requests on the socket) drive it. Seccomp stays on, so the
//! API thread works under its own filter.
//!
//! These need /dev/kvm. They fail (never skip) when it is missing.

mod common;

use common::*;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn socket(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vmm-api-test-{}-{name}.sock", std::process::id()))
}

/// Starts vmm on `code` with the API at `sock`; returns once the socket answers.
fn start(name: &str, code: &[u8], sock: &Path, extra: &[&str]) -> Child {
    let guest = Guest::new(name, code);
    let child = Command::new(VMM)
        .arg("--kernel")
        .arg(&guest.path)
        .args(["--memory", "16M", "--cpus", "2", "--timeout", "60"])
        .arg("--api-socket")
        .arg(sock)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while UnixStream::connect(sock).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "no API socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// `vmm remote --api-socket SOCK ARGS...`: status, stdout, stderr.
fn remote(sock: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(VMM)
        .arg("remote")
        .arg("--api-socket")
        .arg(sock)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// A raw request; the status line's code and the body.
fn raw(sock: &Path, request: &[u8]) -> (u16, String) {
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(request).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let code = answer[9..12].parse().unwrap();
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (code, body)
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// Spins, printing "ready" first.
fn spinner() -> Vec<u8> {
    [print(b"ready\n"), SPIN.to_vec()].concat()
}

#[test]
fn ping_info_pause_resume_shutdown() {
    let sock = socket("life");
    let child = start("life", &spinner(), &sock, &[]);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the socket is the user's only");

    let (status, out, err) = remote(&sock, &["ping"]);
    assert_eq!(status, 0, "{err}");
    assert_eq!(json(&out)["pid"], child.id());

    let (_, out, _) = remote(&sock, &["info"]);
    let info = json(&out);
    assert_eq!(info["state"], "Running");
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], 2);
    assert_eq!(info["config"]["memory"]["size"], 16 << 20);

    assert_eq!(remote(&sock, &["pause"]).0, 0);
    assert_eq!(json(&remote(&sock, &["info"]).1)["state"], "Paused");
    let (status, _, err) = remote(&sock, &["pause"]);
    assert_eq!(status, 1);
    assert_eq!(
        err,
        "vmm: the guest is paused already; resume it with vm.resume\n"
    );
    assert_eq!(remote(&sock, &["resume"]).0, 0);
    let (status, _, err) = remote(&sock, &["resume"]);
    assert_eq!((status, err.lines().count()), (1, 1), "{err}");
    assert_eq!(json(&remote(&sock, &["info"]).1)["state"], "Running");

    let (status, out, err) = remote(&sock, &["shutdown"]);
    assert_eq!((status, out.as_str()), (0, ""), "{err}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    assert!(!sock.exists(), "the socket is gone with vmm");
    let (status, _, err) = remote(&sock, &["ping"]);
    assert_eq!(status, 1);
    assert!(
        err.starts_with("vmm: cannot connect to --api-socket "),
        "{err}"
    );
}

/// A paused guest does not run: it spins incrementing a counter it prints as dots; no dot
/// comes while paused.
#[test]
fn a_paused_guest_does_not_run() {
    // Print '.' forever (the UART never fills).
    let code = [mov_dx(0x3f8), vec![0xb0, b'.', 0xee, 0xeb, 0xfd]].concat();
    let sock = socket("dots");
    let mut child = start("dots", &code, &sock, &[]);
    let stdout = child.stdout.take().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let count = count.clone();
        std::thread::spawn(move || {
            let mut stdout = stdout;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                count.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let dots = || count.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    assert!(dots() > 0, "the guest prints");
    assert_eq!(remote(&sock, &["pause"]).0, 0);
    std::thread::sleep(Duration::from_millis(100));
    let paused_at = dots();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(dots(), paused_at, "nothing runs while paused");
    assert_eq!(remote(&sock, &["resume"]).0, 0);
    std::thread::sleep(Duration::from_millis(300));
    assert!(dots() > paused_at, "runs again");
    // SIGTERM while running: the ordered teardown removes the socket too.
    // SAFETY: signals our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    reader.join().unwrap();
    assert!(!sock.exists());
}

/// The power button reaches the guest: it polls the GED's event register and writes what it
/// reads to the debug-exit port.
#[test]
fn power_button_reaches_the_guest() {
    // mov ebx, 0xfeb00000; back: mov eax, [rbx]; test eax, eax; jz back; out 0xf4, al
    let mut code = print(b"ready\n");
    code.extend_from_slice(&[0xbb, 0x00, 0x00, 0xb0, 0xfe, 0x8b, 0x03]);
    code.extend_from_slice(&[0x85, 0xc0, 0x74, 0xfa, 0xe6, 0xf4]);
    code.extend_from_slice(&HLT_LOOP);
    let sock = socket("button");
    let child = start("button", &code, &sock, &["--debug-exit"]);
    std::thread::sleep(Duration::from_millis(200));
    let (status, _, err) = remote(&sock, &["power-button"]);
    assert_eq!(status, 0, "{err}");
    let out = child.wait_with_output().unwrap();
    // Event bit 0 (the power button) read back: debug-exit status (1 << 1) | 1.
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
}

/// Bad requests get the right status and one-line error bodies, and the guest keeps
/// running.
#[test]
fn bad_requests_change_nothing() {
    let sock = socket("bad");
    let child = start("bad", &spinner(), &sock, &[]);
    let (code, body) = raw(
        &sock,
        b"PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: 5\r\n\r\n{id:}",
    );
    assert_eq!(code, 400);
    assert!(json(&body)["error"]
        .as_str()
        .unwrap()
        .starts_with("the body is not valid JSON"));
    let (code, body) = raw(&sock, b"GET /api/v1/vm.reboot HTTP/1.1\r\n\r\n");
    assert_eq!(code, 404);
    assert!(json(&body)["error"]
        .as_str()
        .unwrap()
        .starts_with("no endpoint /api/v1/vm.reboot"));
    let (code, _) = raw(&sock, b"GET /api/v1/vm.shutdown HTTP/1.1\r\n\r\n");
    assert_eq!(code, 405);
    let big = format!(
        "PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        1 << 20
    );
    assert_eq!(raw(&sock, big.as_bytes()).0, 413);
    let (code, body) = raw(
        &sock,
        b"PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: 13\r\n\r\n{\"id\":\"nope\"}",
    );
    assert_eq!(code, 404);
    assert!(
        json(&body)["error"].as_str().unwrap().contains("nope"),
        "{body}"
    );
    // A client that hangs up in the middle of its body.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(b"PUT /api/v1/vm.shutdown HTTP/1.1\r\nContent-Length: 40\r\n\r\n{")
        .unwrap();
    drop(s);
    // vmm remote's own refusals: one line, status 1.
    let (status, _, err) = remote(&sock, &["reboot"]);
    assert_eq!(status, 1);
    assert!(
        err.starts_with("vmm: unknown verb 'reboot'; use one of: ping"),
        "{err}"
    );
    let (status, _, err) = remote(&sock, &["add-device", "vfio-pci,host=00:03"]);
    assert_eq!(status, 1);
    assert!(
        err.starts_with("vmm: --device 'vfio-pci,host=00:03'"),
        "{err}"
    );
    // Still running, still answering.
    assert_eq!(json(&remote(&sock, &["info"]).1)["state"], "Running");
    assert_eq!(remote(&sock, &["shutdown"]).0, 0);
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(0));
}

#[test]
fn socket_paths_that_cannot_be_used() {
    let file = socket("file");
    std::fs::write(&file, b"not a socket").unwrap();
    let guest = Guest::new("nosock", &spinner());
    let out = Command::new(VMM)
        .arg("--kernel")
        .arg(&guest.path)
        .args(["--memory", "16M", "--api-socket"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("exists and is not a socket"), "{err}");
    assert_eq!(err.lines().count(), 1);
    assert_eq!(std::fs::read(&file).unwrap(), b"not a socket");
    std::fs::remove_file(&file).unwrap();
}
