//! Tiny guest programs for the tests that run the built `vmm` on this host's /dev/kvm:
//! 64-bit code in a minimal ELF, entered in long mode like a vmlinux, and the helpers that
//! start vmm on them. Each test binary uses some of these.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

pub const VMM: &str = env!("CARGO_BIN_EXE_vmm");
pub const LOAD_ADDR: u64 = 0x10_0000;

/// A minimal ELF64 executable: one PT_LOAD segment at 1 MiB holding the headers and `code`,
/// entry right after the headers; with `pvh`, also a PT_NOTE with the Xen PVH entry note
/// pointing at the same code (which must then be 32-bit code).
pub fn elf_with(code: &[u8], pvh: bool) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    const NOTE: usize = 20;
    let phnum = if pvh { 2 } else { 1 };
    let note_off = EHDR + PHDR * phnum;
    let code_off = note_off + if pvh { NOTE } else { 0 };
    let entry = LOAD_ADDR + code_off as u64;
    let total = (code_off + code.len()) as u64;
    let mut f = Vec::new();
    let put = |f: &mut Vec<u8>, bytes: &[u8]| f.extend_from_slice(bytes);
    put(&mut f, b"\x7fELF\x02\x01\x01");
    f.resize(16, 0);
    put(&mut f, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut f, &0x3eu16.to_le_bytes()); // x86_64
    put(&mut f, &1u32.to_le_bytes());
    put(&mut f, &entry.to_le_bytes());
    put(&mut f, &(EHDR as u64).to_le_bytes()); // phoff
    put(&mut f, &0u64.to_le_bytes()); // shoff
    put(&mut f, &0u32.to_le_bytes()); // flags
    for v in [EHDR as u16, PHDR as u16, phnum as u16, 0, 0, 0] {
        put(&mut f, &v.to_le_bytes());
    }
    put(&mut f, &1u32.to_le_bytes()); // PT_LOAD
    put(&mut f, &7u32.to_le_bytes()); // RWX
    for v in [0, LOAD_ADDR, LOAD_ADDR, total, total, 0x1000] {
        put(&mut f, &v.to_le_bytes());
    }
    if pvh {
        put(&mut f, &4u32.to_le_bytes()); // PT_NOTE
        put(&mut f, &4u32.to_le_bytes());
        for v in [note_off as u64, 0, 0, NOTE as u64, NOTE as u64, 4] {
            put(&mut f, &v.to_le_bytes());
        }
        // namesz 4, descsz 4, type 18 (XEN_ELFNOTE_PHYS32_ENTRY), "Xen\0", entry.
        for v in [4u32, 4, 18] {
            put(&mut f, &v.to_le_bytes());
        }
        put(&mut f, b"Xen\0");
        put(&mut f, &(entry as u32).to_le_bytes());
    }
    put(&mut f, code);
    f
}

pub fn elf(code: &[u8]) -> Vec<u8> {
    elf_with(code, false)
}

/// `mov dx, port`
pub fn mov_dx(port: u16) -> Vec<u8> {
    let mut v = vec![0x66, 0xba];
    v.extend_from_slice(&port.to_le_bytes());
    v
}

/// `mov al, byte; out dx, al` for each byte.
pub fn out_bytes(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().flat_map(|&b| [0xb0, b, 0xee]).collect()
}

/// Writes `msg` to COM1 without waiting for THRE (the emulated UART never fills).
pub fn print(msg: &[u8]) -> Vec<u8> {
    [mov_dx(0x3f8), out_bytes(msg)].concat()
}

/// `mov al, value; out imm8, al`
pub fn out_imm(port: u8, value: u8) -> Vec<u8> {
    vec![0xb0, value, 0xe6, port]
}

pub const HLT_LOOP: [u8; 3] = [0xf4, 0xeb, 0xfd];
pub const SPIN: [u8; 2] = [0xeb, 0xfe];
pub const UD2: [u8; 2] = [0x0f, 0x0b];

pub struct Guest {
    pub path: PathBuf,
}

impl Guest {
    pub fn new(name: &str, code: &[u8]) -> Guest {
        Self::from_image(name, &elf(code))
    }

    pub fn from_image(name: &str, image: &[u8]) -> Guest {
        let dir = std::env::temp_dir().join(format!("vmm-kvm-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.elf"));
        std::fs::write(&path, image).unwrap();
        Guest { path }
    }

    pub fn run(&self, extra: &[&str]) -> Output {
        assert!(
            std::path::Path::new("/dev/kvm").exists(),
            "these tests need /dev/kvm on the host running them"
        );
        Command::new(VMM)
            .arg("--kernel")
            .arg(&self.path)
            .args(["--memory", "16M"])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("run vmm")
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Starts vmm (with `args`, stdin from `stdin`) on a guest that prints "ready" and then
/// spins, and returns once the guest has printed it: the VM runs.
pub fn start_spinning_guest(name: &str, args: &[&str], stdin: std::process::Stdio) -> Child {
    use std::io::Read;
    let code = [print(b"ready\n"), SPIN.to_vec()].concat();
    let guest = Guest::new(name, &code);
    let mut child = Command::new(VMM)
        .arg("--kernel")
        .arg(&guest.path)
        .args(["--memory", "16M", "--timeout", "60"])
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.as_mut().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"ready\n") {
        let n = stdout.read(&mut byte).unwrap();
        assert_eq!(n, 1, "guest output ended early");
        seen.push(byte[0]);
    }
    child
}
