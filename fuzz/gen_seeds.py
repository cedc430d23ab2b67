#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/: a few meaningful inputs per target,
in the input formats the targets document (fuzz_targets/*.rs, src/lib.rs). Run it again
after changing a format; the fuzzers grow their working corpus elsewhere (see README.md).
"""

import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def u8(v):
    return struct.pack("<B", v & 0xFF)


def u16(v):
    return struct.pack("<H", v & 0xFFFF)


def u32(v):
    return struct.pack("<I", v & 0xFFFFFFFF)


def u64(v):
    return struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF)


def length(n):
    """An access length byte (Reader::access_len)."""
    assert 0 <= n <= 16, n
    return u8({1: 0x00, 2: 0x01, 4: 0x02, 8: 0x03, 16: 0xDF}.get(n, 0xC0 | n))


def data(bs):
    return length(len(bs)) + bytes(bs)


# --- pci_config --------------------------------------------------------------------------


def shape(conventional=False, regions=(0,) * 7, patches=()):
    """Device shape (vmm_fuzz::shaped_backend): flags, 7 region bytes, config patches."""
    out = u8(1 if conventional else 0) + bytes(regions) + u8(len(patches))
    for offset, value in patches:
        out += u16(offset) + u8(value)
    return out


def ecam_dword(reg, value):
    return u8(2) + u8(reg) + u32(value)


def probe(index):
    return u8(3) + u8(index)


def command(value):
    return u8(4) + u16(value)


def io_addr(value):
    return u8(5) + data(u32(value))


def io_read(reg, port, n):
    return u8(7) + u8(0x80 | reg) + u8(port) + length(n)


def io_write(reg, port, bs):
    return u8(6) + u8(0x80 | reg) + u8(port) + data(bs)


def ecam_read(offset, n):
    return u8(9) + u16(offset) + u8(0) + length(n)


def ecam_read_raw(offset, n):
    return u8(9) + u16(0) + u8(1) + u32(offset) + length(n)


def direct_write(reg, offset, bs):
    return u8(1) + u16(reg) + u8(offset) + data(bs)


def direct_read(reg):
    return u8(0) + u16(reg)


def cap_write(msix, at, bs):
    return u8(12) + u8(1 if msix else 0) + u8(at) + data(bs)


def bar_write_msix(area, delta, bs, bar=0):
    """A BAR write at (MSI-X table or PBA start) + delta."""
    return u8(11) + u8(bar) + u8(area << 2) + u16(delta + 8) + data(bs)


def bar_read_msix(area, delta, n, bar=0):
    return u8(10) + u8(bar) + u8(area << 2) + u16(delta + 8) + length(n)


def bar_read_in(bar, offset, n):
    return u8(10) + u8(bar) + u8(1) + u64(offset) + length(n)


def sub_write(reg, at, bs):
    return u8(15) + u16(reg) + u8(at) + data(bs)


PCI_CONFIG = {
    "probe_every_bar": shape() + b"".join(probe(i) for i in range(7)),
    "place_bars_enable_decode_move": shape()
    + ecam_dword(4, 0xC000_0000)
    + ecam_dword(5, 0x1)
    + ecam_dword(6, 0xD000_0000)
    + ecam_dword(7, 0x1000)
    + ecam_dword(12, 0xE000_0001)
    + command(0x0007)
    + ecam_dword(4, 0xC010_0000)
    + sub_write(6, 3, [0xD8])
    + command(0x0000)
    + command(0x0003),
    "msi_program_and_enable": shape()
    + cap_write(False, 4, u32(0xFEE0_1000))
    + cap_write(False, 8, u32(0))
    + cap_write(False, 12, u32(0x4041))
    + cap_write(False, 16, u32(0x2))
    + cap_write(False, 2, [0x45, 0x01])
    + cap_write(False, 2, [0x00]),
    "msix_enable_program_table": shape()
    + cap_write(True, 3, [0xC0])
    + bar_write_msix(0, 0x30, u64(0xFEE0_2000))
    + bar_write_msix(0, 0x38, u32(0x51))
    + bar_write_msix(0, 0x3C, u32(0))
    + cap_write(True, 3, [0x80])
    + u8(13) + u16(3) + u8(1)
    + bar_read_msix(1, 0, 8)
    + bar_read_msix(0, 0x30, 16)
    + bar_read_msix(0, 0x7E, 4),
    "mechanism1_every_width": shape()
    + io_addr(0x8000_0800)
    + io_read(0, 4, 4)
    + io_read(0, 6, 2)
    + io_read(0, 7, 1)
    + io_read(0, 7, 2)
    + io_read(4, 4, 4)
    + io_write(4, 4, u32(0xFFFF_FFFF))
    + io_read(4, 4, 4)
    + io_write(1, 4, [0x07, 0x00])
    + io_addr(0x8000_0000)
    + io_read(0, 0, 4)
    + u8(7) + u8(0) + u8(0) + length(4)
    + u8(5) + data([0x01]),
    "conventional_past_256": shape(conventional=True)
    + ecam_read(0x0, 4)
    + ecam_read(0xFC, 4)
    + ecam_read(0x100, 4)
    + ecam_read(0xFFE, 2)
    + ecam_read_raw(0x10_0000, 4)
    + direct_read(64)
    + direct_read(0xFFFF)
    + direct_write(64, 0, u32(0x1234_5678))
    + direct_write(1023, 3, [0xFF]),
    "odd_sizes_and_offsets": shape()
    + direct_write(1, 3, [0xFF, 0xFF])
    + direct_write(1, 1, [0x01, 0x02, 0x03])
    + direct_write(4, 0, [])
    + direct_write(4, 2, u64(0xFFFF_FFFF_FFFF_FFFF))
    + direct_write(15, 0, [0x0A])
    + direct_write(15, 1, [0x02])
    + sub_write(20, 1, [0x55, 0x66, 0x77])
    + u8(8) + u32(0x8000 + 0x13) + data([0xFF, 0xFF])
    + bar_read_in(3, 0xFE, 4)
    + bar_read_in(6, 0x7FFC, 8),
    "msix_2048_vectors_other_bar": shape(
        regions=(0, 0, 0, 0, 0x50, 0, 0),
        patches=[(0x72, 0xFF), (0x73, 0x07), (0x74, 0x04), (0x78, 0x04), (0x79, 0xC0), (0x20, 0x0C)],
    )
    + cap_write(True, 3, [0x80])
    + bar_write_msix(0, 0x7FF0, u32(0xFEE0_0000), bar=4)
    + bar_read_msix(1, 0xF8, 8, bar=4)
    + u8(14) + u8(4),
    "capability_loop_and_no_bars": shape(
        regions=(0xFF,) * 7, patches=[(0x51, 0x50)]
    )
    + direct_read(20)
    + command(0x0003),
    "odd_region_sizes": shape(regions=(0x8C, 0xD0, 0x8D, 0x03, 0x1F, 0x00, 0x8B))
    + b"".join(probe(i) for i in range(7))
    + u8(14) + u8(0)
    + u8(14) + u8(2),
}

# --- msix_table ----------------------------------------------------------------------------


def cap(size, table, pba):
    return u32((size - 1) << 16) + u32(table) + u32(pba)


def target(area, offset_fields, bar=None):
    mode = offset_fields[0]
    b = area | (0 if bar is None else 2) | mode << 2
    return u8(b) + (u8(bar) if bar is not None else b"") + offset_fields[1]


def t_at(delta):
    return (0, u16(delta))


def t_raw(offset):
    return (3, u64(offset))


def mx_write(area, where, bs, bar=None):
    return u8(0) + target(area, where, bar) + data(bs)


def mx_read(area, where, n, bar=None):
    return u8(2) + target(area, where, bar) + length(n)


def mx_control(reg, offset, bs):
    return u8(3) + u8(reg) + u8(offset) + data(bs)


def mx_pending(vector, on):
    return u8(4) + u16(vector) + u8(1 if on else 0)


def mx_entry(vector):
    return u8(5) + u16(vector)


ENTRY = u64(0xFEE0_3000) + u32(0x61) + u32(0)

MSIX_TABLE = {
    "nvme_like_program_entry": cap(8, 0x2000, 0x3000)
    + mx_write(0, t_at(0x30), ENTRY)
    + mx_read(0, t_at(0x30), 4)
    + mx_read(0, t_at(0x34), 4)
    + mx_read(0, t_at(0x38), 4)
    + mx_read(0, t_at(0x3C), 4)
    + mx_control(0, 3, [0xC0])
    + mx_control(0, 3, [0x80])
    + mx_pending(3, True)
    + mx_read(1, t_at(0), 8)
    + mx_pending(3, False)
    + mx_read(1, t_at(0), 4)
    + mx_entry(3)
    + mx_entry(8),
    "straddles_and_odd_sizes": cap(4, 0x1000, 0x1040)
    + mx_read(0, t_raw(0xFFE), 4)
    + mx_write(0, t_raw(0x103E), [1, 2, 3, 4])
    + mx_read(0, t_at(0x3D), 3)
    + mx_write(0, t_at(0x0B), [0xAA, 0xBB, 0xCC])
    + mx_write(1, t_at(0), u64(0xFFFF_FFFF_FFFF_FFFF))
    + mx_read(1, t_at(7), 2)
    + mx_write(0, t_at(0), [])
    + mx_control(1, 0, u32(0xFFFF_FFFF))
    + mx_control(0, 2, [0xFF, 0xFF, 0xFF]),
    "table_and_pba_in_other_bars": cap(2048, 0x2 | 0x0, 0x4 | 0x8000)
    + mx_write(0, t_at(2047 * 16), ENTRY)
    + mx_read(0, t_at(2047 * 16 + 12), 4)
    + mx_pending(2047, True)
    + mx_pending(2048, True)
    + mx_read(1, t_at(0xF8), 8)
    + mx_read(0, t_at(0), 4, bar=4)
    + mx_write(1, t_at(0), [0xFF], bar=2),
    "pba_inside_table": cap(64, 0x0, 0x100)
    + mx_write(0, t_at(0x100), u64(0x1234))
    + mx_read(1, t_at(0), 8)
    + mx_pending(0, True)
    + mx_read(0, t_at(0), 16)
    + mx_read(0, t_raw(0xFFFF_FFFF_FFFF_FFFC), 8),
}

# --- bus -------------------------------------------------------------------------------------

RECORDER, RAM, SERIAL, I8042, ACPI_PM, DEBUG_EXIT = 0, 2, 3, 4, 5, 6


def addr_raw(a):
    return u8(3) + u8(0) + u64(a)


def len_raw(n):
    return u8(3) + u64(n)


def insert(kind, name, a, n):
    return u8(0) + u8(kind) + u8(name) + addr_raw(a) + len_raw(n)


def b_read(a, n):
    return u8(2) + addr_raw(a) + length(n)


def b_write(a, bs):
    return u8(3) + addr_raw(a) + data(bs)


def b_remove(a):
    return u8(1) + addr_raw(a)


COUNTS = u8(4)

BUS = {
    "pc_ports": insert(SERIAL, 0, 0x3F8, 8)
    + insert(I8042, 1, 0x60, 5)
    + insert(ACPI_PM, 2, 0x600, 2)
    + insert(DEBUG_EXIT, 2, 0xF4, 1)
    + insert(RECORDER, 3, 0xCF8, 8)
    + b_write(0x3F9, [0x02])
    + b_write(0x3F8, b"hi")
    + b_read(0x3FD, 1)
    + b_read(0x64, 1)
    + b_write(0xCF8, u32(0x8000_0000))
    + b_read(0xCFC, 4)
    + b_read(0xCFE, 2)
    + b_write(0x601, [0x00])
    + b_read(0x400, 1)
    + COUNTS,
    "edges_of_the_address_space": insert(RECORDER, 0, 0xFFFF_FFFF_FFFF_FFF0, 0x10)
    + insert(RECORDER, 0, 0xFFFF_FFFF_FFFF_FFF0, 0x11)
    + insert(RECORDER, 1, 0x0, 0)
    + insert(RECORDER, 1, 0xFFFF_FFFF_FFFF_FFFF, 1)
    + insert(RECORDER, 1, 0x0, 1)
    + b_read(0xFFFF_FFFF_FFFF_FFFF, 8)
    + b_write(0xFFFF_FFFF_FFFF_FFFC, u64(1))
    + b_read(0, 4)
    + b_remove(0xFFFF_FFFF_FFFF_FFF0)
    + b_read(0xFFFF_FFFF_FFFF_FFF8, 1)
    + insert(RECORDER, 2, 0xFFFF_FFFF_FFFF_FF00, 0xFF)
    + COUNTS,
    "overlaps_and_moves": insert(RAM | 0xF8, 0, 0x1000, 0x100)
    + insert(RECORDER, 1, 0x10FF, 0x10)
    + insert(RECORDER, 1, 0xFF8, 0x10)
    + insert(RECORDER, 1, 0x1100, 0x10)
    + insert(RECORDER, 1, 0xFF0, 0x10)
    + b_write(0x10FE, u32(0xDDCC_BBAA))
    + b_read(0x10FC, 8)
    + b_remove(0x1000)
    + insert(RAM | 0xF8 | 4, 0, 0x2000, 0x100)
    + b_read(0x2000, 16)
    + COUNTS,
}

# --- device_parser ---------------------------------------------------------------------------


def argv(*args):
    return b"\0".join(a.encode() if isinstance(a, str) else a for a in args)


DEVICE_PARSER = {
    "full_run": argv(
        "--kernel", "bzImage", "--initramfs", "initrd.cpio.gz", "--cmdline", "console=ttyS0 quiet",
        "--memory", "1G", "--cpus", "2", "--device", "vfio-pci,host=0000:01:00.0,id=nvme,managed=on",
        "--device", "vfio-pci,sysfsdev=/sys/bus/pci/devices/0000:00:04.0",
    ),
    "inline_values": argv(
        "--kernel=k", "--memory=512MiB", "--cpus=254", "--debug-exit=0xf4", "--timeout", "60",
        "--stats=json", "--seccomp=off", "-vv",
    ),
    "device_spec_alone": argv("vfio-pci,host=ffff:ff:1f.7,id=x"),
    "check_subcommand": argv("check", "--device", "vfio-pci,host=01:00.0", "--memory", "2G", "--json"),
    "size_alone": argv("64MB"),
    "rejected": argv("--kernel", "k", "--cpus", "255", "--device", "vfio-pci,host=00:1g.0,managed=yes"),
    "help_version": argv("-V", "--help"),
    "not_utf8": argv("--kernel", b"k\xff", "--cmdline", b"console=ttyS0 \xfe", "--device", b"vfio-pci,sysfsdev=/sys/\xc3"),
    "dash_value": argv("--kernel", "--memory", "1G", "--timeout", "-5"),
    "duplicates": argv(
        "--kernel", "k", "--device", "vfio-pci,host=01:00.0,id=a", "--device",
        "vfio-pci,sysfsdev=/sys/bus/pci/devices/0000:01:00.0,id=a",
    ),
    "ports_and_bounds": argv("--kernel=k", "--debug-exit=0x3f8", "--timeout", "9223372036854775808", "--memory", "1025T"),
    "check_json_refused": argv("check", "--json", "--memory", "1000", "--device", b"vfio-pci,host=\xff"),
}

CORPORA = {
    "pci_config": PCI_CONFIG,
    "msix_table": MSIX_TABLE,
    "bus": BUS,
    "device_parser": DEVICE_PARSER,
}


def main():
    root = os.path.join(HERE, "corpus")
    for target, seeds in CORPORA.items():
        d = os.path.join(root, target)
        os.makedirs(d, exist_ok=True)
        for name in os.listdir(d):
            os.remove(os.path.join(d, name))
        for name, content in seeds.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(content)
        print(f"{target}: {len(seeds)} seeds", file=sys.stderr)


if __name__ == "__main__":
    main()
