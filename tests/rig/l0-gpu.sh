# shellcheck shell=bash
# shellcheck disable=SC2034 # GPU_L0_ARGS, GPU_L1_APPEND: read by run.sh
# L0 side of the GPU-class scenarios (gpu-*, l1/gpu.sh), sourced by run.sh and build.sh. Only
# when a gpu-* scenario is requested does L0 get these devices (the PCI layout the other
# scenarios see is unchanged):
#   00:10.0 ivshmem-plain, BAR2 128 GiB (memory-backend-file on a sparse file)
#   00:11.0 ivshmem-plain, BAR2 8 GiB
#   00:12.0 edu with a 32 KiB expansion ROM (romfile=) and dma_mask=all ones (its DMA reaches
#           any address: the peer-to-peer engine)
#   00:13.0 ivshmem-plain, BAR2 2 MiB (the peer-to-peer target)
# and q35's 64-bit PCI hole is raised to 512 GiB so L1's firmware can place them (RIG.md).
#
# gpu_l0_prepare SCENARIOS: sets GPU_L0_ARGS (QEMU arguments) and GPU_L1_APPEND (L1 kernel
# arguments: the ROM checksum) when SCENARIOS has a gpu-* one; writes known values into the
# backing files at the start, middle and end of each BAR.
# gpu_l0_report SCENARIOS: after L0 ended, what the guests wrote into the backing files (at a
# quarter of each BAR) as rows of table gpu-file of the harness's own pseudo-scenario l0:
#   RIG-ROW scenario=l0 table=gpu-file gib=G quarter=0x... start=0x...

GPU_L0_ARGS=()
GPU_L1_APPEND=

# The marker at offset OFF of the BAR of N GiB: 0x600dK0NN for K = 0 (start), 1 (middle),
# 2 (end); the guest writes 0x7e5700NN at a quarter. Little-endian, 4 bytes.
gpu_put32() { # FILE OFFSET VALUE
    local v=$3
    # shellcheck disable=SC2059 # the bytes as octal escapes, made on purpose
    printf "\\$(printf %03o $((v & 255)))\\$(printf %03o $((v >> 8 & 255)))\\$(printf %03o $((v >> 16 & 255)))\\$(printf %03o $((v >> 24 & 255)))" |
        dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

gpu_get32() { # FILE OFFSET
    od -An -v -tx4 -j "$2" -N4 "$1" | tr -d ' \n'
}

# gpu_bar_file FILE GIB: a fresh sparse file of GIB GiB (or 2 MiB for 0) with the markers.
gpu_bar_file() {
    local f=$1 gib=$2 size
    size=$((gib << 30))
    [ "$gib" = 0 ] && size=$((2 << 20))
    rm -f "$f"
    truncate -s "$size" "$f"
    gpu_put32 "$f" 0 $((0x600d0000 + gib))
    gpu_put32 "$f" $((size / 2)) $((0x600d1000 + gib))
    gpu_put32 "$f" $((size - 4)) $((0x600d2000 + gib))
}

gpu_l0_prepare() {
    case ",$1," in *,gpu-*) ;; *) return 0 ;; esac
    local out=$OUT
    gpu_bar_file "$out/gpu-128g.img" 128
    gpu_bar_file "$out/gpu-8g.img" 8
    gpu_bar_file "$out/gpu-p2p.img" 0
    GPU_L0_ARGS=(
        -global q35-pcihost.pci-hole64-size=512G
        -object "memory-backend-file,id=gpu128,size=128G,mem-path=$out/gpu-128g.img,share=on"
        -device "ivshmem-plain,memdev=gpu128,addr=0x10"
        -object "memory-backend-file,id=gpu8,size=8G,mem-path=$out/gpu-8g.img,share=on"
        -device "ivshmem-plain,memdev=gpu8,addr=0x11"
        -device "edu,addr=0x12,dma_mask=0xffffffffffffffff,romfile=$out/gpu-rom-dev.bin"
        -object "memory-backend-file,id=gpup2p,size=2M,mem-path=$out/gpu-p2p.img,share=on"
        -device "ivshmem-plain,memdev=gpup2p,addr=0x13"
    )
    GPU_L1_APPEND="rig.gpu_rom_sum=$(sha256sum "$out/gpu-rom-dev.bin" | cut -d' ' -f1)"
}

gpu_l0_report() {
    case ",$1," in *,gpu-*) ;; *) return 0 ;; esac
    local gib f
    for gib in 128 8; do
        f=$OUT/gpu-${gib}g.img
        echo "RIG-ROW scenario=l0 table=gpu-file gib=$gib quarter=0x$(gpu_get32 "$f" $(((gib << 30) / 4))) start=0x$(gpu_get32 "$f" 0)"
    done
}

# gpu_make_rom FILE KIB: a PCI expansion ROM image of KIB KiB that Linux reads whole through
# sysfs (RIG.md): 55 AA, the length in 512-byte units, a retf at the init entry (firmware that
# runs it returns at once), a PCIR structure (vendor 1af4 device ffff: no firmware takes it for
# the device's own) whose image length covers it and whose indicator marks the last image,
# random bytes elsewhere, and a checksum byte making the sum 0. (The printf formats hold
# octal escapes made from the numbers on purpose.)
# shellcheck disable=SC2059
gpu_make_rom() {
    local f=$1 kib=$2 units tmp=$1.tmp sum
    units=$((kib * 2))
    head -c $((kib << 10)) /dev/urandom >"$tmp"
    printf "\\x55\\xaa\\$(printf %03o "$units")\\xcb" | dd of="$tmp" bs=1 conv=notrunc status=none
    printf '\x20\x00' | dd of="$tmp" bs=1 seek=$((0x18)) conv=notrunc status=none
    printf "PCIR\\xf4\\x1a\\xff\\xff\\x00\\x00\\x18\\x00\\x03\\x00\\x00\\xff\\$(printf %03o "$units")\\x00\\x00\\x00\\x00\\x80\\x00\\x00" |
        dd of="$tmp" bs=1 seek=$((0x20)) conv=notrunc status=none
    printf '\x00' | dd of="$tmp" bs=1 seek=$(((kib << 10) - 1)) conv=notrunc status=none
    sum=$(od -An -v -tu1 "$tmp" | awk '{ for (i = 1; i <= NF; i++) s += $i } END { print (256 - s % 256) % 256 }')
    printf "\\$(printf %03o "$sum")" | dd of="$tmp" bs=1 seek=$(((kib << 10) - 1)) conv=notrunc status=none
    mv "$tmp" "$f"
}

# gpu_l2_tree TREE GUESTBUILD (build.sh): the guest script and the peer-to-peer module.
gpu_l2_tree() {
    install -m 0644 "$RIG/l2-gpu.sh" "$1/l2-gpu.sh"
    install -m 0644 "$2/gpu_p2p.ko" "$1/lib/modules/rig/"
}

# gpu_l1_tree TREE (build.sh): the ROM images (made once: L0's edu gets gpu-rom-dev.bin, vmm's
# romfile= test serves gpu-rom-file.bin, in L1 at /gpu/rom-file.bin). The scenarios are in
# l1/gpu.sh, which build.sh installs with the others.
gpu_l1_tree() {
    [ -s "$OUT/gpu-rom-dev.bin" ] || gpu_make_rom "$OUT/gpu-rom-dev.bin" 32
    [ -s "$OUT/gpu-rom-file.bin" ] || gpu_make_rom "$OUT/gpu-rom-file.bin" 48
    install -D -m 0644 "$OUT/gpu-rom-file.bin" "$1/gpu/rom-file.bin"
}
