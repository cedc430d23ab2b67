# shellcheck shell=sh
# shellcheck disable=SC2034 # DEVS, L2_ARGS, QEMU_EXTRA: read by lib.sh run_l2
# GPU-class scenarios (tests/e2e/rig_gpu.rs): large 64-bit BARs, the expansion ROM,
# peer-to-peer DMA, hugepage guest RAM, their refusals and what vmm check says of them. L0
# adds the devices only when a gpu-* scenario runs (tests/rig/l0-gpu.sh):
#   00:10.0 ivshmem-plain, BAR2 128 GiB     00:11.0 ivshmem-plain, BAR2 8 GiB
#   00:12.0 edu with a 32 KiB ROM and a DMA engine that reaches any address
#   00:13.0 ivshmem-plain, BAR2 2 MiB (the peer-to-peer target); 00:04.0 is the NVMe.
# The guest side is l2-gpu.sh (rig.action=gpu-*) and tests/guest/gpu_p2p.c; what the guests
# wrote into the BARs' backing files run.sh reports after L0 ends (l0-gpu.sh gpu_l0_report).
# Facts: the run's (RUN), the guest's result lines (texts bar, p2p; ROM facts), the hugepage
# pool's counts, L1's physical address width; for a refusal, vmm's arguments, status, stdout
# and stderr (lib.sh refusal); for vmm check, its status and report lines.

# gpu_scenario NAME: runs NAME if it is a GPU scenario, else returns 1.
gpu_scenario() {
    case "$1" in
        gpu-bar-128g) gpu_bar "$GPU_BIG" ;;
        gpu-bar-8g) gpu_bar "$GPU_MID" ;;
        gpu-bar-both) gpu_bar "$GPU_BIG" "$GPU_MID" ;;
        gpu-rom) gpu_rom ;;
        gpu-rom-off) gpu_rom_once host=00:12.0,rombar=off ;;
        gpu-romfile)
            gpu_rom_once host=00:12.0,romfile=/gpu/rom-file.bin
            fact file_sum "$(sha256sum </gpu/rom-file.bin | cut -d' ' -f1)"
            fact file_bytes "$(wc -c </gpu/rom-file.bin)"
            ;;
        gpu-p2p) gpu_p2p ;;
        gpu-huge) gpu_huge ;;
        gpu-huge-kill9) gpu_huge_kill9 ;;
        gpu-refuse-bar)
            bind_vfio "$GPU_BIG"
            gpu_width_facts
            refusal --memory 512M,phys-bits=37 --device vfio-pci,host=00:10.0
            ;;
        gpu-refuse-huge)
            gpu_pool 16
            gpu_pool_facts
            refusal --memory 2G,hugepages=on
            echo 0 >/proc/sys/vm/nr_hugepages
            ;;
        gpu-refuse-romfile)
            bind_vfio "$GPU_EDU"
            refusal --device vfio-pci,host=00:12.0,romfile=/gpu/missing.rom
            ;;
        gpu-check) gpu_check ;;
        gpu-bench-*) gpu_bench "${1#gpu-bench-}" ;;
        *) return 1 ;;
    esac
    return 0
}

GPU_BIG=0000:00:10.0
GPU_MID=0000:00:11.0
GPU_EDU=0000:00:12.0
GPU_SMALL=0000:00:13.0
GPU_NVME=0000:00:04.0
HUGE=/sys/kernel/mm/hugepages/hugepages-2048kB

# gpu_bar DEVICE...: one guest with these ivshmem devices (iomem=relaxed: the guest reads
# their BARs through /dev/mem). Texts bar: the guest's GPU-BAR lines, one per device (the
# markers at the start, middle and end of BAR2, the value written at a quarter read back).
gpu_bar() {
    bind_vfio "$@"
    for d in "$@"; do DEVS="$DEVS host=${d#0000:}"; done
    L2_ARGS=iomem=relaxed
    run_l2 "$SCENARIO" vmm 1 512M gpu-bar
    facts "$RUN"
    guest_texts bar '^GPU-BAR '
}

# gpu_rom_run TAG TOOL DEVSPEC: a guest reading the edu's ROM through sysfs; GPU_ROM is the
# guest's ROM facts (present, and when it is: sum bytes reads read_us).
gpu_rom_run() {
    DEVS=$3
    run_l2 "$1" "$2" 1 512M gpu-rom
    r=$(grep '^GPU-ROM ' "$LOG" | tail -n 1)
    GPU_ROM=''
    for k in present sum bytes reads read_us; do GPU_ROM="$GPU_ROM $k=$(or_none "$(kv "$r" $k)")"; done
}

# The device's own ROM under vmm and then QEMU in the same L1: a row of table rom per tool
# (the run's facts and the guest's ROM facts). Fact want_sum: the sha256 of the file L0 gave
# the edu (run.sh, rig.gpu_rom_sum).
gpu_rom() {
    bind_vfio "$GPU_EDU"
    fact want_sum "$GPU_ROM_SUM"
    for gr_tool in vmm qemu; do
        gpu_rom_run "$SCENARIO-$gr_tool" $gr_tool host=00:12.0
        row rom "tool=$gr_tool$GPU_ROM $RUN"
    done
}

# gpu_rom_once DEVSPEC: one vmm guest reading the ROM of the edu passed as DEVSPEC.
gpu_rom_once() {
    bind_vfio "$GPU_EDU"
    gpu_rom_run "$SCENARIO" vmm "$1"
    facts "$RUN$GPU_ROM"
}

# The edu DMAs into and out of the small ivshmem's BAR2, before and after the guest moves
# that BAR. Texts p2p: the guest module's P2P-RESULT lines.
gpu_p2p() {
    bind_vfio "$GPU_EDU" "$GPU_SMALL"
    DEVS="host=00:12.0 host=00:13.0"
    run_l2 "$SCENARIO" vmm 1 512M gpu-p2p
    facts "$RUN"
    guest_texts p2p '^P2P-RESULT '
}

# 2 GiB of guest RAM on 2 MiB hugepages with the NVMe passed through, the guest powers off.
# Facts: the run's, the NVMe checksums, the pool's free pages before and after.
gpu_huge() {
    bind_vfio "$GPU_NVME"
    gpu_pool 1100
    fact pool_free_before "$(cat $HUGE/free_hugepages)"
    DEVS=host=00:04.0
    run_l2 "$SCENARIO" vmm 2 2G,hugepages=on nvme
    facts "$RUN"
    nvme_facts
    sleep 1
    fact pool_free_after "$(cat $HUGE/free_hugepages)"
    echo 0 >/proc/sys/vm/nr_hugepages
}

# The same guest killed with SIGKILL once it read the disk. Facts: held (it got there),
# used_while_running (pool pages it held), status (of the killed vmm), the NVMe checksums,
# the pool's free pages before and after.
gpu_huge_kill9() {
    bind_vfio "$GPU_NVME"
    gpu_pool 1100
    free0=$(cat $HUGE/free_hugepages)
    fact pool_free_before "$free0"
    log=/tmp/$SCENARIO.log
    bg_vmm "$log" --kernel /l2/vmlinuz --initramfs /l2/initrd.cpio.gz \
        --cmdline "console=ttyS0 quiet panic=-1 rig.action=gpu-nvme-hold" \
        --memory 2G,hugepages=on --timeout 120 --device vfio-pci,host=00:04.0
    fact held "$(held "$log")"
    fact used_while_running $((free0 - $(cat $HUGE/free_hugepages)))
    stop_bg KILL
    fact status "$STOP_RC"
    nvme_facts "$log"
    sleep 1
    fact pool_free_after "$(cat $HUGE/free_hugepages)"
    echo 0 >/proc/sys/vm/nr_hugepages
}

# vmm check on the 128 GiB ivshmem and the edu (each BAR's size and whether it fits, the ROM):
# status and texts line; the same ivshmem with a 37-bit guest: narrow_status and texts
# narrow. Facts of L1's address width (gpu_width_facts).
gpu_check() {
    bind_vfio "$GPU_BIG" "$GPU_EDU"
    gpu_width_facts
    vmm_check status line --memory 512M --device vfio-pci,host=00:10.0 \
        --device vfio-pci,host=00:12.0
    vmm_check narrow_status narrow --memory 512M,phys-bits=37 --device vfio-pci,host=00:10.0
}

# gpu_width_facts: phys_bits (L1's physical address width, which KVM gives its guests) and
# bar2_bytes (the size of the 128 GiB ivshmem's BAR2, from sysfs).
gpu_width_facts() {
    fact phys_bits "$(sed -n 's/^address sizes.* \([0-9]*\) bits physical.*/\1/p' /proc/cpuinfo | head -n 1)"
    # shellcheck disable=SC2046 # start, end and flags of BAR2, split on purpose
    set -- $(sed -n 3p /sys/bus/pci/devices/$GPU_BIG/resource)
    fact bar2_bytes $(($2 - $1 + 1))
}

# gpu_pool_facts: the 2 MiB pool as vmm will see it (pool_total, pool_free, pool_reserved)
# and L1's default huge page size (hugepagesize_kb), which decides the file vmm names.
gpu_pool_facts() {
    fact pool_total "$(cat $HUGE/nr_hugepages)"
    fact pool_free "$(cat $HUGE/free_hugepages)"
    fact pool_reserved "$(cat $HUGE/resv_hugepages)"
    fact hugepagesize_kb "$(sed -n 's/^Hugepagesize: *\([0-9]*\).*/\1/p' /proc/meminfo)"
}

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

# gpu_boot TAG TOOL MEM HUGE ROUND: one boot to init with the NVMe passed through, on hugepages
# when HUGE is 1 (vmm: hugepages=on; QEMU: -mem-path on a hugetlbfs mount, the pool sized just
# before); a row of table boot (round tool mem huge and the run's facts) unless ROUND is 0
# (warm-up). (Variables gb_*: run_l2 sets tag, tool, mem, ... globally.)
gpu_boot() {
    gb_tag=$1 gb_tool=$2 gb_mem=$3 gb_huge=$4 gb_round=$5
    DEVS=host=00:04.0 QEMU_EXTRA=''
    gb_vmem=$gb_mem
    if [ "$gb_huge" = 1 ]; then
        gpu_pool $((${gb_mem%G} * 512 + 16))
        case "$gb_tool" in
            vmm*) gb_vmem=$gb_mem,hugepages=on ;;
            qemu*) QEMU_EXTRA="-mem-path /dev/hugepages" ;;
        esac
    fi
    run_l2 "$gb_tag" "$gb_tool" 1 "$gb_vmem" poweroff
    QEMU_EXTRA=''
    [ "$gb_huge" = 1 ] && echo 0 >/proc/sys/vm/nr_hugepages
    [ "$gb_round" = 0 ] || row boot "round=$gb_round tool=$gb_tool mem=$gb_mem huge=$gb_huge $RUN"
}

# gpu_bench N (tests/rig/bench-gpu.sh turns the rows into tables and judges the runs): after
# one warm-up of each VMM, N alternated rounds of boots to init with the NVMe passed through
# at 2 and 4 GiB: vmm (bzImage, and the same kernel through PVH) with and without hugepages,
# QEMU with and without -mem-path hugepages (table boot); then the ROM read time of vmm and
# QEMU (table rom: round tool, the guest's ROM facts and the run's).
gpu_bench() {
    fact rounds "$1"
    bind_vfio "$GPU_NVME" "$GPU_EDU"
    mkdir -p /dev/hugepages
    mount -t hugetlbfs hugetlbfs /dev/hugepages
    gpu_boot warm-vmm vmm 2G 0 0
    gpu_boot warm-qemu qemu 2G 0 0
    gb_i=1
    while [ "$gb_i" -le "$1" ]; do
        for gb_m in 2G 4G; do
            gpu_boot "gb-vmm-$gb_m-$gb_i" vmm "$gb_m" 0 "$gb_i"
            gpu_boot "gb-qemu-$gb_m-$gb_i" qemu "$gb_m" 0 "$gb_i"
            gpu_boot "gb-vmmh-$gb_m-$gb_i" vmm "$gb_m" 1 "$gb_i"
            gpu_boot "gb-qemuh-$gb_m-$gb_i" qemu "$gb_m" 1 "$gb_i"
            gpu_boot "gb-pvhh-$gb_m-$gb_i" vmm-pvh "$gb_m" 1 "$gb_i"
        done
        for gb_t in vmm qemu; do
            gpu_rom_run "gb-rom-$gb_t-$gb_i" "$gb_t" host=00:12.0
            row rom "round=$gb_i tool=$gb_t$GPU_ROM $RUN"
        done
        gb_i=$((gb_i + 1))
    done
    umount /dev/hugepages
}
