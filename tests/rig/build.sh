#!/usr/bin/env bash
# Builds the rig's artifacts in tests/rig/out/ (gitignored):
#   stamp               static timing/output tool (stamp.c), runs in L1
#   rigio               static socket/timing tool of the hotplug scenarios (rigio.c), in L1
#   l2-initrd.cpio.gz   L2 guest initramfs: static busybox + l2-init as /init
#   l1-initrd.cpio      L1 (emulated host) initramfs: busybox, kvm/vfio modules, vmm,
#                       qemu-system-x86_64 (+ libs, firmware), stamp, L2 kernel+initramfs,
#                       l1-init as /init and the scenarios it sources (l1/*.sh) in /rig
#   kver                the 6.1 kernel version used for L1 and L2
# Env: VMM_BIN (default <repo>/target/release/vmm). A missing VMM_BIN is a warning only, so
# the QEMU scenarios can be developed without it; vmm scenarios then report reason=no-vmm.
# CH_BIN (optional): a cloud-hypervisor binary, copied into L1 with its libraries as a second
# anchor for the benchmarks (built outside the project: tests/rig/README.md says how).
# VMM2_BIN (optional): a second vmm build (e.g. the one before a change), /usr/bin/vmm2 in L1,
# run by the vmm2 and vmm2-pvh tools: before/after in one L1 boot.
set -euo pipefail

RIG=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$RIG/../.." && pwd)
OUT=$RIG/out
VMM_BIN=${VMM_BIN:-$ROOT/target/release/vmm}
mkdir -p "$OUT"

# The 6.1 kernel (its patch level moves with security updates); newest if several.
vmlinuz=$(find /boot -maxdepth 1 -name 'vmlinuz-6.1.*' | sort -V | tail -n 1)
if [ -z "$vmlinuz" ]; then
    echo "build.sh: no /boot/vmlinuz-6.1.* (run tests/rig/setup.sh)" >&2
    exit 1
fi
KVER=${vmlinuz#/boot/vmlinuz-}

# --- stamp and rigio (static so they need nothing in L1) ---
for tool in stamp rigio; do
    if [ ! -x "$OUT/$tool" ] || [ "$RIG/$tool.c" -nt "$OUT/$tool" ]; then
        gcc -static -O2 -Wall -Wextra -o "$OUT/$tool" "$RIG/$tool.c"
    fi
done

# Copies executable $1 to $2/$1 (or $3 inside the tree) plus every library ldd lists, at the
# paths ldd names (the loader's default search finds them there).
copy_with_libs() {
    local bin=$1 tree=$2 dest=${3:-$1} lib
    install -D -m 0755 "$bin" "$tree$dest"
    if ! ldd "$bin" >/dev/null 2>&1; then
        return 0 # static
    fi
    if ldd "$bin" | grep 'not found'; then
        echo "build.sh: $bin has missing libraries" >&2
        return 1
    fi
    for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
        [ -e "$tree$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$tree$lib"
    done
}

# Writes a newc cpio of directory $1 to $2, owned by root, in a stable file order.
make_cpio() {
    (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$2"
}

# Adds the dirs and /dev/console an initramfs needs: the kernel opens /dev/console for
# init's stdio before init runs, and devtmpfs is not mounted yet at that point.
base_tree() {
    local tree=$1
    rm -rf "$tree"
    mkdir -p "$tree"/{bin,sbin,dev,proc,sys,tmp,usr/bin,usr/sbin}
    mknod -m 600 "$tree/dev/console" c 5 1
    mknod -m 666 "$tree/dev/null" c 1 3
    install -m 0755 /bin/busybox "$tree/bin/busybox"
    if ldd /bin/busybox >/dev/null 2>&1; then
        echo "build.sh: /bin/busybox is dynamic; install busybox-static" >&2
        exit 1
    fi
}

# install_modules TREE MODULE...: the modules and their dependencies, in load order (one
# modprobe per module: with several names modprobe takes the rest as parameters), into
# TREE/lib/modules/rig with an `order` file that the init scripts insmod from.
install_modules() {
    local tree=$1 moddir=$1/lib/modules/rig m ko name n=0
    shift
    mkdir -p "$moddir"
    : >"$moddir/order"
    for ko in $(for m in "$@"; do modprobe -S "$KVER" --show-depends "$m"; done |
        awk '$1 == "insmod" {print $2}' | awk '!seen[$0]++'); do
        n=$((n + 1))
        name=$(basename "$ko")
        case "$name" in
            *.ko.xz) name=${name%.xz}; xz -dc "$ko" >"$moddir/$name" ;;
            *.ko.zst) name=${name%.zst}; zstd -qdc "$ko" >"$moddir/$name" ;;
            *) cp "$ko" "$moddir/$name" ;;
        esac
        echo "$name" >>"$moddir/order"
    done
    if [ "$n" -eq 0 ]; then
        echo "build.sh: modprobe found no modules for $KVER ($*)" >&2
        exit 1
    fi
}

# The GPU-class scenarios' files (l0-gpu.sh: ROM images, l2-gpu.sh, gpu_p2p.ko; their L1 side,
# l1/gpu.sh, goes in with the other families).
# shellcheck source=tests/rig/l0-gpu.sh
. "$RIG/l0-gpu.sh"

# --- the guest test module (tests/guest), built against the L2 kernel's headers ---
guestbuild=$OUT/guest-build
stale=0
for src in "$ROOT"/tests/guest/*.c "$ROOT/tests/guest/Kbuild"; do
    [ "$src" -nt "$guestbuild/.built" ] && stale=1
done
if [ ! -f "$guestbuild/.built" ] || [ "$stale" = 1 ]; then
    rm -rf "$guestbuild"
    mkdir -p "$guestbuild"
    cp "$ROOT"/tests/guest/*.c "$ROOT/tests/guest/Kbuild" "$guestbuild/"
    make -s -C "/usr/src/linux-headers-$KVER" M="$guestbuild" modules >&2
    touch "$guestbuild/.built"
fi

# --- L2 initramfs ---
l2tree=$OUT/l2-tree
base_tree "$l2tree"
install -m 0755 "$RIG/l2-init" "$l2tree/init"
# Drivers the passthrough scenarios use in L2 (not loaded unless a scenario asks); button and
# evdev make an ACPI power button press an input event (the hotplug guest powers off on it).
install_modules "$l2tree" nvme virtio_pci virtio_rng button evdev
install -m 0644 "$guestbuild/edu_test.ko" "$guestbuild/msix_mask_test.ko" "$l2tree/lib/modules/rig/"
gpu_l2_tree "$l2tree" "$guestbuild"
make_cpio "$l2tree" "$OUT/l2-initrd.cpio"
gzip -9 -n -f "$OUT/l2-initrd.cpio"
rm -rf "$l2tree"

# --- L1 initramfs ---
l1tree=$OUT/l1-tree
base_tree "$l1tree"
install -m 0755 "$RIG/l1-init" "$l1tree/init"
# The scenarios l1-init sources: lib.sh and one file per family.
install -D -m 0644 -t "$l1tree/rig" "$RIG"/l1/*.sh
install -m 0755 "$OUT/stamp" "$l1tree/usr/bin/stamp"
install -m 0755 "$OUT/rigio" "$l1tree/usr/bin/rigio"
gpu_l1_tree "$l1tree"

install_modules "$l1tree" kvm_amd vfio_pci vfio_iommu_type1 uio_pci_generic nvme

# QEMU and the firmware it opens for -M pc/q35/microvm with -kernel and -nodefaults (found with
# strace: bios-256k.bin, linuxboot_dma.bin, kvmvapic.bin; microvm adds bios-microvm.bin).
qemu=$(command -v qemu-system-x86_64)
copy_with_libs "$qemu" "$l1tree" /usr/bin/qemu-system-x86_64
for fw in /usr/share/seabios/bios-256k.bin /usr/share/qemu/linuxboot_dma.bin \
    /usr/share/qemu/kvmvapic.bin /usr/share/qemu/pvh.bin /usr/share/seabios/bios-microvm.bin \
    /usr/share/qemu/qboot.rom; do
    if [ -e "$fw" ]; then
        install -D -m 0644 "$(readlink -f "$fw")" "$l1tree$fw"
    fi
done

if [ -x "$VMM_BIN" ]; then
    copy_with_libs "$VMM_BIN" "$l1tree" /usr/bin/vmm
    # A debug build (cargo test) carries tens of MB of DWARF; L1 keeps its initramfs in RAM
    # and L0 copies it in on every boot. Symbols stay, so backtraces still name functions.
    strip --strip-debug "$l1tree/usr/bin/vmm" 2>/dev/null || true # (a script stand-in is fine)
else
    echo "build.sh: WARNING: VMM_BIN=$VMM_BIN not found; vmm scenarios will fail (no-vmm)" >&2
fi
if [ -n "${VMM2_BIN:-}" ]; then
    copy_with_libs "$VMM2_BIN" "$l1tree" /usr/bin/vmm2
    strip --strip-debug "$l1tree/usr/bin/vmm2" 2>/dev/null || true
fi
if [ -n "${CH_BIN:-}" ]; then
    if [ ! -x "$CH_BIN" ]; then
        echo "build.sh: CH_BIN=$CH_BIN is not an executable" >&2
        exit 1
    fi
    copy_with_libs "$CH_BIN" "$l1tree" /usr/bin/cloud-hypervisor
    strip --strip-debug "$l1tree/usr/bin/cloud-hypervisor" 2>/dev/null || true
fi

# L2: the same Debian kernel as L1, and the L2 initramfs.
install -D -m 0644 "$vmlinuz" "$l1tree/l2/vmlinuz"
# The same kernel as an ELF vmlinux, for PVH boot: Debian's bzImage carries it as one xz
# stream starting at the first FD 37 7A 58 5A 00 (shared/RIG.md). Cached: it is 66 MB.
if [ ! -s "$OUT/vmlinux" ] || [ "$vmlinuz" -nt "$OUT/vmlinux" ]; then
    off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | head -n 1 | cut -d: -f1)
    # xz stops reading after the stream, so tail may die of SIGPIPE: that is expected.
    { tail -c +$((off + 1)) "$vmlinuz" || true; } | xz -dc --single-stream >"$OUT/vmlinux.tmp"
    mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"
fi
install -D -m 0644 "$OUT/vmlinux" "$l1tree/l2/vmlinux"
install -D -m 0644 "$OUT/l2-initrd.cpio.gz" "$l1tree/l2/initrd.cpio.gz"

# Uncompressed on purpose: L1 runs under TCG, where inflating ~70 MB costs seconds, while
# L0 loads the initrd with a host-side copy.
make_cpio "$l1tree" "$OUT/l1-initrd.cpio.tmp"
mv "$OUT/l1-initrd.cpio.tmp" "$OUT/l1-initrd.cpio"
rm -rf "$l1tree"
echo "$KVER" >"$OUT/kver"
echo "build.sh: $OUT/l1-initrd.cpio ($(du -m "$OUT/l1-initrd.cpio" | cut -f1) MiB), kernel $KVER" >&2
