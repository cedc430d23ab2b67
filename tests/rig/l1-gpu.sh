# shellcheck shell=sh
# L1 side of the GPU-class scenarios: large 64-bit BARs, the expansion ROM, peer-to-peer DMA,
# hugepage guest RAM, and their refusals. Sourced by l1-init (which provides run_l2, result,
# bind_vfio, expect_fail, wait_line, kv, ...) and dispatched from its fallback case:
# gpu_scenario NAME returns 1 for a name that is not ours. L0 adds the devices (l0-gpu.sh):
#   00:10.0 ivshmem 128 GiB BAR2, 00:11.0 ivshmem 8 GiB BAR2, 00:12.0 edu with a 32 KiB ROM and
#   a DMA engine that reaches any address, 00:13.0 ivshmem 2 MiB BAR2; 00:04.0 is the NVMe.
# The guest side is l2-gpu.sh (rig.action=gpu-*) and tests/guest/gpu_p2p.c.

GPU_BIG=0000:00:10.0
GPU_MID=0000:00:11.0
GPU_EDU=0000:00:12.0
GPU_SMALL=0000:00:13.0
GPU_NVME=0000:00:04.0
HUGE=/sys/kernel/mm/hugepages/hugepages-2048kB

# gpu_pool PAGES: the 2 MiB hugepage pool set to PAGES, compacting memory first (L2 runs leave
# it fragmented); prints RIG-L1-ERROR when the kernel finds fewer.
gpu_pool() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
    echo 1 >/proc/sys/vm/compact_memory
    for _ in 1 2 3; do
        echo "$1" >/proc/sys/vm/nr_hugepages
        [ "$(cat /proc/sys/vm/nr_hugepages)" -ge "$1" ] && return
        sleep 1
        echo 1 >/proc/sys/vm/compact_memory
    done
    echo "RIG-L1-ERROR hugepage pool at $(cat /proc/sys/vm/nr_hugepages) of $1 pages"
}

gpu_rom_sum() {
    for arg in $(cat /proc/cmdline); do
        case "$arg" in rig.gpu_rom_sum=*) echo "${arg#*=}" ;; esac
    done
}

# gpu_bar_check GIB...: reason (empty = fine) from the GPU-BAR lines of the last run: one per
# BAR size, each reading back the markers l0-gpu.sh wrote and the value the guest wrote.
gpu_bar_check() {
    for gib in "$@"; do
        line=$(grep "^GPU-BAR .* gib=$gib " "$log.txt" | tail -n 1)
        [ -n "$line" ] || { echo "no-bar-$gib"; return; }
        want() { printf '0x%08X' $(($1 + gib)); }
        [ "$(kv "$line" start)" = "$(want 0x600d0000)" ] || { echo "start-$gib"; return; }
        [ "$(kv "$line" mid)" = "$(want 0x600d1000)" ] || { echo "mid-$gib"; return; }
        [ "$(kv "$line" end)" = "$(want 0x600d2000)" ] || { echo "end-$gib"; return; }
        [ "$(kv "$line" readback)" = "$(want 0x7e570000)" ] || { echo "readback-$gib"; return; }
    done
}

# gpu_bar NAME DEVICE... : one guest with these ivshmem devices; the BARs read and written.
gpu_bar() {
    name=$1
    shift
    bind_vfio "$@"
    DEVS= gibs=
    for d in "$@"; do DEVS="$DEVS host=${d#0000:}"; done
    L2_ARGS=iomem=relaxed
    run_l2 "$name" vmm 1 512M gpu-bar
    reason=$R_reason
    for d in "$@"; do
        case "$d" in "$GPU_BIG") gibs="$gibs 128" ;; "$GPU_MID") gibs="$gibs 8" ;; esac
    done
    # shellcheck disable=SC2086 # sizes, split on purpose
    [ -n "$reason" ] || reason=$(gpu_bar_check $gibs)
    grep '^GPU-BAR ' "$log.txt" | sed "s/^/RIG-GPU-BAR scenario=$name /"
    result "$name" "$reason"
}

# gpu_rom_run TAG TOOL DEVSPEC: a guest reading the edu's ROM through sysfs; sets GR_line.
gpu_rom_run() {
    DEVS=$3 L2_ARGS=
    run_l2 "$1" "$2" 1 512M gpu-rom
    GR_line=$(grep '^GPU-ROM ' "$log.txt" | tail -n 1)
    echo "RIG-GPU-ROM scenario=$1 tool=$2 $GR_line"
}

gpu_scenario() {
    case "$1" in
        gpu-bar-128g) gpu_bar "$1" "$GPU_BIG" ;;
        gpu-bar-8g) gpu_bar "$1" "$GPU_MID" ;;
        gpu-bar-both) gpu_bar "$1" "$GPU_BIG" "$GPU_MID" ;;
        gpu-rom)
            # The device's own ROM, under vmm and then QEMU in the same L1: the same bytes
            # as the file L0 gave the edu, and the read time against QEMU's.
            bind_vfio "$GPU_EDU"
            want=$(gpu_rom_sum)
            gpu_rom_run gpu-rom-vmm vmm host=00:12.0
            reason=$R_reason vmm_line=$GR_line
            gpu_rom_run gpu-rom-qemu qemu host=00:12.0
            reason=${reason:-$R_reason}
            v=$(kv "$vmm_line" read_us) q=$(kv "$GR_line" read_us)
            [ "$(kv "$vmm_line" sum)" = "$want" ] || reason=${reason:-vmm-sum}
            [ "$(kv "$GR_line" sum)" = "$want" ] || reason=${reason:-qemu-sum}
            # Within 1.5x of QEMU: v * 2 <= q * 3.
            [ "${v:-0}" -gt 0 ] && [ "${q:-0}" -gt 0 ] && [ $((v * 2)) -le $((q * 3)) ] ||
                reason=${reason:-slower-than-1.5x}
            echo "RIG-RESULT scenario=$1 ok=$([ -z "$reason" ] && echo 1 || echo 0) bytes=$(kv "$vmm_line" bytes) vmm_read_us=${v:-none} qemu_read_us=${q:-none}${reason:+ reason=$reason}"
            ;;
        gpu-rom-off)
            bind_vfio "$GPU_EDU"
            gpu_rom_run "$1" vmm host=00:12.0,rombar=off
            reason=$R_reason
            [ "$(kv "$GR_line" present)" = 0 ] || reason=${reason:-rom-visible}
            result "$1" "$reason"
            ;;
        gpu-romfile)
            # romfile= replaces the device's ROM: the guest reads the file (48 KiB, BAR of 64).
            bind_vfio "$GPU_EDU"
            gpu_rom_run "$1" vmm host=00:12.0,romfile=/gpu/rom-file.bin
            reason=$R_reason
            [ "$(kv "$GR_line" sum)" = "$(sha256sum </gpu/rom-file.bin | cut -d' ' -f1)" ] ||
                reason=${reason:-sum}
            [ "$(kv "$GR_line" bytes)" = "$(wc -c </gpu/rom-file.bin)" ] || reason=${reason:-bytes}
            result "$1" "$reason"
            ;;
        gpu-p2p)
            # The edu DMAs into and out of the small ivshmem's BAR2, before and after the guest
            # moves that BAR.
            bind_vfio "$GPU_EDU" "$GPU_SMALL"
            DEVS="host=00:12.0 host=00:13.0" L2_ARGS=
            run_l2 "$1" vmm 1 512M gpu-p2p
            grep '^P2P-RESULT' "$log.txt" | sed "s/^/RIG-GPU-P2P /"
            reason=$R_reason
            for phase in first moved; do
                grep -q "^P2P-RESULT phase=$phase .* to_bar=ok from_bar=ok .* err=0" "$log.txt" ||
                    reason=${reason:-p2p-$phase}
            done
            result "$1" "$reason"
            ;;
        gpu-huge | gpu-huge-kill9)
            # 2 GiB of guest RAM on 2 MiB hugepages, the NVMe passed through: the disk reads
            # right, and the pool is back to its size after poweroff and after kill -9.
            bind_vfio "$GPU_NVME"
            gpu_pool 1100
            free0=$(cat $HUGE/free_hugepages)
            reason=
            if [ "$1" = gpu-huge ]; then
                DEVS=host=00:04.0 L2_ARGS=
                run_l2 "$1" vmm 2 2G,hugepages=on nvme
                reason=$R_reason used=na
            else
                bg_vmm /tmp/$1.log --kernel /l2/vmlinuz --initramfs /l2/initrd.cpio.gz \
                    --cmdline "console=ttyS0 quiet panic=-1 rig.action=gpu-nvme-hold" \
                    --memory 2G,hugepages=on --timeout 120 --device vfio-pci,host=00:04.0
                wait_line /tmp/$1.log RIG-L2-HOLD 150 || reason=no-hold
                used=$((free0 - $(cat $HUGE/free_hugepages)))
                kill -9 "$BG_PID"
                wait "$BG_PID"
                tr -d '\r' </tmp/$1.log >"/tmp/$1.log.txt"
                log=/tmp/$1.log
            fi
            sleep 1
            free1=$(cat $HUGE/free_hugepages)
            sum=$(grep -o 'RIG-NVME sum=[0-9a-f]*' "$log.txt" | tail -n 1)
            [ "${sum#*=}" = "$NVME_SUM" ] || reason=${reason:-nvme-sum}
            [ "$free1" = "$free0" ] || reason=${reason:-pool-$free0-$free1}
            [ "$used" = na ] || [ "$used" -ge 1024 ] || reason=${reason:-not-huge-$used}
            echo 0 >/proc/sys/vm/nr_hugepages
            echo "RIG-RESULT scenario=$1 ok=$([ -z "$reason" ] && echo 1 || echo 0) status=${R_status:-none} pool_free_before=$free0 pool_free_after=$free1 used_while_running=$used${reason:+ reason=$reason}"
            ;;
        gpu-refuse-bar)
            # 37 bits (128 GiB) of guest physical addresses cannot hold a 128 GiB BAR above RAM.
            bind_vfio "$GPU_BIG"
            kvm_bits=$(sed -n 's/^address sizes.* \([0-9]*\) bits physical.*/\1/p' /proc/cpuinfo | head -n 1)
            expect_fail "$1" "0000:00:10.0: BAR 2 (128 GiB, 64-bit) does not fit below the guest's 37-bit physical address limit (128 GiB): the 64-bit BARs start above guest RAM at 0x100000000 and this one would end past 0x2000000000; raise phys-bits= in --memory (this host's KVM allows up to $kvm_bits bits) or pass fewer or smaller BARs" \
                --memory 512M,phys-bits=37 --device vfio-pci,host=00:10.0
            ;;
        gpu-refuse-huge)
            gpu_pool 16
            expect_fail "$1" "--memory 2G,hugepages=on,hugepage-size=2M: the guest needs 1024 huge pages of 2 MiB but the pool has 16 free; raise the pool to 1024 pages (echo 1024 > /proc/sys/vm/nr_hugepages) or drop hugepages=on" \
                --memory 2G,hugepages=on
            echo 0 >/proc/sys/vm/nr_hugepages
            ;;
        gpu-refuse-romfile)
            bind_vfio "$GPU_EDU"
            expect_fail "$1" "romfile '/gpu/missing.rom' of --device 0000:00:12.0: cannot read it: No such file or directory (os error 2); give a readable ROM image of 1 byte to 2 GiB (e.g. a VBIOS dump, see the README's GPU section) or drop romfile=" \
                --device vfio-pci,host=00:12.0,romfile=/gpu/missing.rom
            ;;
        gpu-check)
            # vmm check on the devices: each BAR's size and whether it fits, and the ROM.
            bind_vfio "$GPU_BIG" "$GPU_EDU"
            out=$(vmm check --memory 512M --device vfio-pci,host=00:10.0 --device vfio-pci,host=00:12.0 2>&1 </dev/null)
            rc=$?
            printf '%s\n' "$out" | sed "s/^/RIG-CHECK scenario=$1 line=/"
            narrow=$(vmm check --memory 512M,phys-bits=37 --device vfio-pci,host=00:10.0 2>&1 </dev/null)
            nrc=$?
            printf '%s\n' "$narrow" | sed "s/^/RIG-CHECK scenario=$1-narrow line=/"
            reason=
            [ "$rc" = 0 ] || reason=status
            [ "$nrc" = 1 ] || reason=${reason:-narrow-status}
            echo "RIG-RESULT scenario=$1 ok=$([ -z "$reason" ] && echo 1 || echo 0) status=$rc narrow_status=$nrc${reason:+ reason=$reason}"
            ;;
        gpu-bench-*) gpu_bench "${1#gpu-bench-}" ;;
        *) return 1 ;;
    esac
    return 0
}

# gpu_boot TAG TOOL MEM HUGE ROUND: one boot to init with the NVMe passed through, on hugepages
# when HUGE is 1 (vmm: hugepages=on; QEMU: -mem-path on a hugetlbfs mount, the pool sized just
# before); prints RIG-GPU-BENCH. (Variables gb_*: run_l2 sets tag, tool, mem, ... globally.)
gpu_boot() {
    gb_tag=$1 gb_tool=$2 gb_mem=$3 gb_huge=$4 gb_round=$5
    DEVS=host=00:04.0 L2_ARGS= QEMU_EXTRA=
    gb_vmem=$gb_mem
    if [ "$gb_huge" = 1 ]; then
        gpu_pool $((${gb_mem%G} * 512 + 16))
        case "$gb_tool" in
            vmm*) gb_vmem=$gb_mem,hugepages=on ;;
            qemu*) QEMU_EXTRA="-mem-path /dev/hugepages" ;;
        esac
    fi
    run_l2 "$gb_tag" "$gb_tool" 1 "$gb_vmem" poweroff
    QEMU_EXTRA=
    [ "$gb_huge" = 1 ] && echo 0 >/proc/sys/vm/nr_hugepages
    [ -n "$R_reason" ] && GB_bad="$gb_tag-$R_reason"
    echo "RIG-GPU-BENCH round=$gb_round tool=$gb_tool mem=$gb_mem huge=$gb_huge init_ms=${R_init_ms:-fail}"
}

# gpu_bench N: N alternated rounds of boots to init with the NVMe passed through, at 2 and
# 4 GiB: vmm (bzImage, and the same kernel through PVH) with and without hugepages, QEMU with
# and without -mem-path hugepages; then the ROM read time of vmm and QEMU. After one warm-up
# of each VMM.
gpu_bench() {
    gb_n=$1
    bind_vfio "$GPU_NVME" "$GPU_EDU"
    mkdir -p /dev/hugepages
    mount -t hugetlbfs hugetlbfs /dev/hugepages
    GB_bad=
    gpu_boot warm-vmm vmm 2G 0 0
    gpu_boot warm-qemu qemu 2G 0 0
    gb_i=1
    while [ "$gb_i" -le "$gb_n" ]; do
        for gb_m in 2G 4G; do
            gpu_boot "gb-vmm-$gb_m-$gb_i" vmm "$gb_m" 0 "$gb_i"
            gpu_boot "gb-qemu-$gb_m-$gb_i" qemu "$gb_m" 0 "$gb_i"
            gpu_boot "gb-vmmh-$gb_m-$gb_i" vmm "$gb_m" 1 "$gb_i"
            gpu_boot "gb-qemuh-$gb_m-$gb_i" qemu "$gb_m" 1 "$gb_i"
            gpu_boot "gb-pvhh-$gb_m-$gb_i" vmm-pvh "$gb_m" 1 "$gb_i"
        done
        for gb_t in vmm qemu; do
            gpu_rom_run "gb-rom-$gb_t-$gb_i" "$gb_t" host=00:12.0
            [ -n "$R_reason" ] && GB_bad="rom-$gb_t-$R_reason"
            echo "RIG-GPU-BENCH-ROM round=$gb_i tool=$gb_t read_us=$(kv "$GR_line" read_us) bytes=$(kv "$GR_line" bytes)"
        done
        gb_i=$((gb_i + 1))
    done
    umount /dev/hugepages
    echo "RIG-RESULT scenario=gpu-bench-$gb_n ok=$([ -z "$GB_bad" ] && echo 1 || echo 0) rounds=$gb_n${GB_bad:+ reason=$GB_bad}"
}
