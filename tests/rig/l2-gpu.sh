# shellcheck shell=sh
# L2 side of the GPU-class scenarios (l1/gpu.sh), sourced by l2-init for rig.action=gpu-*.
# Prints its findings as lines l1/gpu.sh picks up, then powers off (or holds).

# ns: CLOCK_MONOTONIC in nanoseconds (the "now at" line of /proc/timer_list).
gpu_ns() {
    awk '/^now at/ { print $3; exit }' /proc/timer_list
}

# gpu_devices VENDOR DEVICE: the sysfs directories of the PCI devices with these IDs.
gpu_devices() {
    for d in /sys/bus/pci/devices/*; do
        [ "$(cat "$d/vendor")" = "$1" ] && [ "$(cat "$d/device")" = "$2" ] && echo "$d"
    done
}

# gpu_bars: for each ivshmem-plain device, decoding turned on (timed: that is when the VMM maps
# the BAR), then the markers L0 wrote at the start, middle and end of BAR2 read through
# /dev/mem, and a value written at a quarter and read back. One GPU-BAR line per device.
gpu_bars() {
    for d in $(gpu_devices 0x1af4 0x1110); do
        # shellcheck disable=SC2046 # start, end and flags of BAR2, split on purpose
        set -- $(sed -n 3p "$d/resource")
        base=$(($1)) size=$(($2 - $1 + 1))
        gib=$((size >> 30))
        t0=$(gpu_ns)
        echo 1 >"$d/enable"
        t1=$(gpu_ns)
        start=$(devmem $((base)) 32)
        mid=$(devmem $((base + size / 2)) 32)
        end=$(devmem $((base + size - 4)) 32)
        devmem $((base + size / 4)) 32 $((0x7e570000 + gib))
        back=$(devmem $((base + size / 4)) 32)
        t2=$(gpu_ns)
        printf 'GPU-BAR dev=%s gib=%d base=0x%x enable_ms=%d access_ms=%d start=%s mid=%s end=%s readback=%s\n' \
            "${d##*/}" "$gib" "$base" $(((t1 - t0) / 1000000)) $(((t2 - t1) / 1000000)) \
            "$start" "$mid" "$end" "$back"
    done
}

# gpu_rom: the expansion ROM of the edu (1234:11e8) through sysfs: its checksum and size, then
# GPU_ROM_READS more reads of all of it, timed.
gpu_rom() {
    d=$(gpu_devices 0x1234 0x11e8 | head -n 1)
    if [ ! -e "$d/rom" ]; then
        echo "GPU-ROM present=0"
        return
    fi
    echo 1 >"$d/rom"
    sum=$(sha256sum <"$d/rom" | cut -d' ' -f1)
    bytes=$(wc -c <"$d/rom")
    n=10 i=0
    t0=$(gpu_ns)
    while [ "$i" -lt "$n" ]; do
        cat "$d/rom" >/dev/null
        i=$((i + 1))
    done
    t1=$(gpu_ns)
    echo 0 >"$d/rom"
    echo "GPU-ROM present=1 sum=$sum bytes=$bytes reads=$n read_us=$(((t1 - t0) / 1000 / n))"
}

gpu_action() {
    case "$1" in
        gpu-bar) gpu_bars ;;
        gpu-rom) gpu_rom ;;
        gpu-p2p)
            insmod /lib/modules/rig/gpu_p2p.ko 2>/dev/null
            dmesg | grep -o 'P2P-RESULT.*'
            ;;
        gpu-nvme-hold)
            load_modules
            i=0
            while [ ! -b /dev/nvme0n1 ] && [ "$i" -lt 60 ]; do sleep 1; i=$((i + 1)); done
            echo "RIG-NVME sum=$(dd if=/dev/nvme0n1 bs=1M count=16 2>/dev/null | sha256sum | cut -d' ' -f1)"
            echo RIG-L2-HOLD
            while :; do sleep 1; done
            ;;
    esac
    off
}
