//! The kernel and initramfs files, opened and judged before anything else is set up: opened
//! without blocking (a FIFO, a device node or a directory is refused, not waited on), the
//! kernel read against its own header ([`arch::kernel`]), and both against the guest:
//! `--memory` must hold the kernel's decompression area and the initramfs, the initramfs must
//! fit below the kernel's `initrd_addr_max`, and `--cmdline` within its `cmdline_size`.
//!
//! It only opens and reads the two files; loading them into guest memory is the builder's.

use crate::config::{format_size, VmConfig};
use arch::kernel::{Defect, Image};
use diag::Advice;
use resources::layout::{ram_ranges, CMDLINE_MAX_SIZE, MEM_32BIT_GAP_START};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why the kernel or initramfs cannot be used.
#[derive(Debug)]
pub enum Error {
    /// The path names something that is not a regular file.
    NotAFile {
        /// `--kernel` or `--initramfs`.
        option: &'static str,
        /// The path given.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// The file cannot be opened or read.
    Read {
        /// `--kernel` or `--initramfs`.
        option: &'static str,
        /// The path given.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The kernel image is not usable.
    Kernel {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        defect: Defect,
    },
    /// The initramfs file is empty.
    EmptyInitramfs {
        /// The path given.
        path: PathBuf,
    },
    /// `--memory` cannot hold the kernel and initramfs.
    TooSmall {
        /// `--memory`, bytes.
        memory: u64,
        /// The least that works, MiB.
        need_mib: u64,
        /// The kernel's path.
        kernel: PathBuf,
        /// What the kernel needs.
        image: Image,
        /// The initramfs's path and size, if there is one.
        initrd: Option<(PathBuf, u64)>,
    },
    /// The initramfs does not fit below `initrd_addr_max` (or the 32-bit hole) above the
    /// kernel, whatever `--memory` is.
    InitrdTooLarge {
        /// The path given.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The most that fits.
        room: u64,
        /// The highest address it may reach.
        limit: u64,
    },
    /// `--cmdline` is longer than the kernel takes.
    CmdlineTooLong {
        /// Its length, bytes.
        len: usize,
        /// The kernel's limit, bytes without the NUL.
        max: usize,
        /// Where the limit comes from.
        source: &'static str,
    },
}

impl diag::Explain for Error {
    fn advice(&self) -> Advice {
        match self {
            Error::NotAFile { option, path, kind } => Advice::new(
                format!("{option} {} is {kind}, not a file", diag::path(path)),
                format!("give the path of a file to {option}"),
            ),
            Error::Read {
                option,
                path,
                source,
            } => Advice::new(
                format!("cannot read {option} {}: {source}", diag::path(path)),
                match source.kind() {
                    io::ErrorKind::PermissionDenied => "check the file's permissions",
                    _ => "check the path",
                },
            ),
            Error::Kernel { path, defect } => defect
                .advice()
                .about(format!("--kernel {}", diag::path(path))),
            Error::EmptyInitramfs { path } => Advice::new(
                format!("--initramfs {} is empty", diag::path(path)),
                "give a cpio archive (optionally compressed), or leave --initramfs out",
            ),
            Error::TooSmall {
                memory,
                need_mib,
                kernel,
                image,
                initrd,
            } => {
                let mut problem = format!(
                    "--memory {} is too small for --kernel {}: it {}",
                    format_size(*memory),
                    diag::path(kernel),
                    kernel_span(image)
                );
                if let Some((path, size)) = initrd {
                    problem.push_str(&format!(
                        ", and --initramfs {} ({}) goes above it",
                        diag::path(path),
                        format_size(*size)
                    ));
                }
                Advice::new(problem, format!("use --memory {need_mib}M or more"))
            }
            Error::InitrdTooLarge {
                path,
                size,
                room,
                limit,
            } => Advice::new(
                format!(
                    "--initramfs {} ({}) does not fit between the kernel and {limit:#x}, the \
                     highest address the kernel takes an initramfs at, whatever --memory is: \
                     {} fit",
                    diag::path(path),
                    format_size(*size),
                    format_size(*room)
                ),
                "make the initramfs smaller (compress it with xz or gzip, or leave files out)",
            ),
            Error::CmdlineTooLong { len, max, source } => Advice::new(
                format!("--cmdline is {len} bytes but the kernel takes at most {max} ({source})"),
                "shorten --cmdline",
            ),
        }
    }
}
diag::explained!(Error);

/// Where the kernel lives in guest RAM, as a phrase: "runs at 16 MiB and decompresses into
/// 63.6 MiB, up to 79.6 MiB".
fn kernel_span(image: &Image) -> String {
    let size = |bytes: u64| format_size(bytes);
    match image.format {
        arch::kernel::Format::BzImage => format!(
            "runs at {} and decompresses into {}, up to {}",
            size(image.run_at),
            size(image.ram_end - image.run_at),
            size(image.ram_end)
        ),
        _ => format!(
            "loads at {}, up to {}",
            size(image.run_at),
            size(image.ram_end)
        ),
    }
}

/// The kernel and initramfs, open and judged.
#[derive(Debug)]
pub struct BootImages {
    /// The kernel file.
    pub kernel: File,
    /// What its header says.
    pub image: Image,
    /// The initramfs, if any, and where it goes.
    pub initrd: Option<Initrd>,
}

/// An initramfs and its place in guest RAM.
#[derive(Debug)]
pub struct Initrd {
    /// The file.
    pub file: File,
    /// Its size.
    pub size: u64,
    /// Guest physical address of its first byte.
    pub addr: u64,
}

/// Opens and judges `--kernel` and `--initramfs` against `--memory` and `--cmdline`.
pub fn open(cfg: &VmConfig) -> Result<BootImages, Error> {
    let (mut kernel, len) = open_file("--kernel", &cfg.kernel)?;
    let image = Image::parse(&mut kernel, len).map_err(|defect| Error::Kernel {
        path: cfg.kernel.clone(),
        defect,
    })?;
    let initrd = match &cfg.initramfs {
        Some(path) => Some(open_initrd(path)?),
        None => None,
    };
    check_cmdline(&image, cfg.cmdline.len())?;
    let addr = check_room(&image, cfg, initrd.as_ref().map(|(_, size)| *size))?;
    let initrd = initrd
        .zip(addr)
        .map(|((file, size), addr)| Initrd { file, size, addr });
    Ok(BootImages {
        kernel,
        image,
        initrd,
    })
}

fn open_initrd(path: &Path) -> Result<(File, u64), Error> {
    let (file, size) = open_file("--initramfs", path)?;
    if size == 0 {
        return Err(Error::EmptyInitramfs {
            path: path.to_path_buf(),
        });
    }
    Ok((file, size))
}

/// Opens `path` for reading if it is a regular file, without ever blocking: its type is
/// checked before opening (opening a FIFO would wait for a writer) and again on the open file
/// (it may have been swapped in between; O_NONBLOCK keeps that open from waiting).
fn open_file(option: &'static str, path: &Path) -> Result<(File, u64), Error> {
    let read_err = |source| Error::Read {
        option,
        path: path.to_path_buf(),
        source,
    };
    let check = |meta: std::fs::Metadata| match file_kind(&meta.file_type()) {
        None => Ok(meta.len()),
        Some(kind) => Err(Error::NotAFile {
            option,
            path: path.to_path_buf(),
            kind,
        }),
    };
    check(std::fs::metadata(path).map_err(read_err)?)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(read_err)?;
    let len = check(file.metadata().map_err(read_err)?)?;
    Ok((file, len))
}

/// What a file type is when it is not a regular file.
fn file_kind(t: &std::fs::FileType) -> Option<&'static str> {
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    }
}

fn check_cmdline(image: &Image, len: usize) -> Result<(), Error> {
    let (max, source) = match image.format {
        arch::kernel::Format::BzImage => (image.cmdline_max, "its header's cmdline_size"),
        _ => (image.cmdline_max, "x86's COMMAND_LINE_SIZE"),
    };
    let (max, source) = match max > CMDLINE_MAX_SIZE - 1 {
        true => (CMDLINE_MAX_SIZE - 1, "vmm's command line area"),
        false => (max, source),
    };
    match len > max {
        true => Err(Error::CmdlineTooLong { len, max, source }),
        false => Ok(()),
    }
}

/// `--memory` must hold the kernel and the initramfs above it; returns where the initramfs
/// goes. When the initramfs cannot fit whatever the memory, that is what the message says.
fn check_room(image: &Image, cfg: &VmConfig, initrd: Option<u64>) -> Result<Option<u64>, Error> {
    let hole = MEM_32BIT_GAP_START;
    let low_end = ram_ranges(cfg.memory.size)[0].len;
    match initrd {
        Some(size) => {
            if let Some(addr) = image.initrd_address(low_end, size) {
                return Ok(Some(addr));
            }
        }
        None if image.ram_end <= low_end => return Ok(None),
        None => {}
    }
    match image.min_low_ram_mib(initrd, hole) {
        Some(need_mib) => Err(Error::TooSmall {
            memory: cfg.memory.size,
            need_mib,
            kernel: cfg.kernel.clone(),
            image: *image,
            initrd: cfg.initramfs.clone().zip(initrd),
        }),
        None if initrd.is_none() => Err(Error::Kernel {
            path: cfg.kernel.clone(),
            defect: Defect::Malformed {
                what: format!(
                    "it needs RAM up to {:#x}, beyond the {} below the PCI hole",
                    image.ram_end,
                    format_size(hole)
                ),
            },
        }),
        None => {
            let size = initrd.unwrap_or_default();
            let limit = image.initrd_addr_max.min(hole - 1);
            let room = (limit + 1).saturating_sub(image.ram_end.next_multiple_of(0x1000));
            Err(Error::InitrdTooLarge {
                path: cfg.initramfs.clone().unwrap_or_default(),
                size,
                room,
                limit,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_CMDLINE;

    /// A scratch directory of this test process, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("vmm-images-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn cfg(kernel: &Path, initramfs: Option<&Path>, memory_mib: u64) -> VmConfig {
        VmConfig {
            kernel: kernel.to_path_buf(),
            initramfs: initramfs.map(Path::to_path_buf),
            cmdline: DEFAULT_CMDLINE.to_string(),
            memory: crate::memory::MemoryConfig::new(memory_mib << 20),
            cpus: 1,
            devices: Vec::new(),
            debug_exit: None,
            timeout: None,
            stats: None,
            seccomp: true,
            verbose: 0,
            api_socket: None,
        }
    }

    /// Debian 6.1's bzImage header: runs at 16 MiB, decompresses into 63.6 MiB.
    fn debian_like() -> Vec<u8> {
        arch::kernel::fixtures::bzimage_bytes(0x100_0000, 0x3f9_8000, 4096)
    }

    fn refusal(cfg: &VmConfig) -> String {
        let e = open(cfg).expect_err("should be refused").to_string();
        assert!(!e.contains('\n'), "{e}");
        e
    }

    #[test]
    fn memory_minimum_comes_from_the_kernel() {
        let dir = Scratch::new("min");
        let k = dir.file("bz", &debian_like());
        assert!(open(&cfg(&k, None, 80)).is_ok());
        assert_eq!(
            refusal(&cfg(&k, None, 79)),
            format!(
                "--memory 79 MiB is too small for --kernel {}: it runs at 16 MiB and \
                 decompresses into 63.6 MiB, up to 79.6 MiB; use --memory 80M or more",
                k.display()
            )
        );
        // 65M passed the old check (load address + init_size) and then triple-faulted.
        assert!(refusal(&cfg(&k, None, 65)).ends_with("use --memory 80M or more"));
        let rd = dir.file("rd", &vec![7u8; 20 << 20]);
        let images = open(&cfg(&k, Some(&rd), 100)).unwrap();
        let initrd = images.initrd.unwrap();
        assert_eq!((initrd.size, initrd.addr), (20 << 20, 80 << 20));
        let e = refusal(&cfg(&k, Some(&rd), 99));
        assert!(
            e.contains(&format!(
                ", and --initramfs {} (20 MiB) goes above it",
                rd.display()
            )),
            "{e}"
        );
        assert!(e.ends_with("use --memory 100M or more"), "{e}");
    }

    #[test]
    fn an_initramfs_too_large_for_any_memory_says_so() {
        let dir = Scratch::new("big");
        let k = dir.file("bz", &debian_like());
        // Sparse: 2 GiB cannot fit below initrd_addr_max (0x7fffffff) above the kernel.
        let rd = dir.0.join("rd");
        std::fs::File::create(&rd)
            .unwrap()
            .set_len(2 << 30)
            .unwrap();
        let e = refusal(&cfg(&k, Some(&rd), 8 << 10));
        assert!(
            e.contains("does not fit between the kernel and 0x7fffffff"),
            "{e}"
        );
        assert!(e.contains("whatever --memory is"), "{e}");
        assert!(
            e.ends_with(
                "make the initramfs smaller (compress it with xz or gzip, or leave files out)"
            ),
            "{e}"
        );
        assert!(
            !e.contains("raise --memory") && !e.contains("use --memory"),
            "{e}"
        );
    }

    #[test]
    fn cmdline_limit_is_the_kernels() {
        let dir = Scratch::new("cmdline");
        let k = dir.file("bz", &debian_like());
        let mut c = cfg(&k, None, 128);
        c.cmdline = "x".repeat(2047);
        assert!(open(&c).is_ok());
        c.cmdline.push('x');
        assert_eq!(
            refusal(&c),
            "--cmdline is 2048 bytes but the kernel takes at most 2047 (its header's \
             cmdline_size); shorten --cmdline"
        );
        let elf = arch::kernel::fixtures::elf_bytes(0x100_0000, 0x100_0000, 0x100_0000, None);
        let mut c = cfg(&dir.file("elf", &elf), None, 128);
        c.cmdline = "y".repeat(2048);
        assert!(refusal(&c).contains("(x86's COMMAND_LINE_SIZE)"));
    }

    #[test]
    fn files_that_are_not_regular_are_refused_without_blocking() {
        let dir = Scratch::new("kinds");
        let fifo = dir.0.join("fifo");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let cases = [
            (fifo.clone(), "a FIFO"),
            (dir.0.clone(), "a directory"),
            (PathBuf::from("/dev/null"), "a character device"),
        ];
        for (path, kind) in cases {
            let e = refusal(&cfg(&path, None, 128));
            assert_eq!(
                e,
                format!(
                    "--kernel {} is {kind}, not a file; give the path of a file to --kernel",
                    path.display()
                )
            );
        }
        let k = dir.file("bz", &debian_like());
        let e = refusal(&cfg(&k, Some(&fifo), 128));
        assert!(e.starts_with("--initramfs "), "{e}");
        assert!(e.contains("is a FIFO"), "{e}");
        let e = refusal(&cfg(&dir.0.join("missing"), None, 128));
        assert!(e.starts_with("cannot read --kernel "), "{e}");
        assert!(
            e.ends_with("No such file or directory (os error 2); check the path"),
            "{e}"
        );
    }

    #[test]
    fn kernel_defects_name_the_file() {
        let dir = Scratch::new("defects");
        let good = debian_like();
        let cut = dir.file("cut", &good[..good.len() - 1000]);
        let e = refusal(&cfg(&cut, None, 128));
        assert_eq!(
            e,
            format!(
                "--kernel {} is cut short: its header accounts for {} bytes but the file has \
                 {}; copy the whole kernel image again",
                cut.display(),
                good.len(),
                good.len() - 1000
            )
        );
        let empty = dir.file("empty", b"");
        assert!(refusal(&cfg(&empty, None, 128))
            .ends_with(" is empty; give an x86_64 Linux bzImage or ELF vmlinux"));
        let text = dir.file("text", b"#!/bin/sh\n");
        assert!(refusal(&cfg(&text, None, 128)).contains("is not a Linux kernel"));
        let k = dir.file("bz", &good);
        let rd = dir.file("rd", b"");
        assert!(refusal(&cfg(&k, Some(&rd), 128)).contains("is empty; give a cpio archive"));
    }
}
