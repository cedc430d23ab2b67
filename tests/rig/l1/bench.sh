# shellcheck shell=sh
# shellcheck disable=SC2034 # DEVS, L2_ARGS, VMM_EXTRA, L2_QUIET: read by lib.sh run_l2
# Benchmark scenarios, vmm against QEMU and Cloud Hypervisor in the same L1 (no Rust test:
# tests/rig/bench-boot.sh and bench-dev.sh turn the rows into tables and judge the runs).
# Every measured run is a row with the run's facts (RUN), so a failed run shows as one.

# bench_scenario NAME: runs NAME if it is a bench scenario, else returns 1.
bench_scenario() {
    case "$1" in
        bench-dev-*) bench_dev "${1#bench-dev-}" ;;
        bench-*) bench_boot "${1#bench-}" ;;
        *) return 1 ;;
    esac
    return 0
}

# bench_boot N: after one throw-away warm-up per VMM (the first L2 boot in a fresh L1 is
# slower), N rounds of one boot per tool, alternated: table boot, a row per round and tool.
# The tools: rig.bench_tools=a+b, by default vmm and QEMU on the bzImage and on the vmlinux,
# and Cloud Hypervisor (ch) when it is in L1.
bench_boot() {
    fact rounds "$1"
    tools=${BENCH_TOOLS:-vmm qemu vmm-pvh qemu-pvh}
    [ -z "$BENCH_TOOLS" ] && [ -x /usr/bin/cloud-hypervisor ] && tools="$tools ch"
    warmed=''
    for tool in $tools; do
        case " $warmed " in *" ${tool%-pvh} "*) continue ;; esac
        warmed="$warmed ${tool%-pvh}"
        run_l2 "warm-$tool" "$tool" 2 512M poweroff
    done
    i=1
    while [ "$i" -le "$1" ]; do
        for tool in $tools; do
            run_l2 "bench-$tool-$i" "$tool" 2 512M poweroff
            row boot "round=$i tool=$tool $RUN"
        done
        i=$((i + 1))
    done
}

# bench_dev N: passthrough figures, vmm against QEMU (and Cloud Hypervisor when it is in L1),
# alternated per round: the edu interrupt round trip (INTx, MSI) with BAR read throughput in
# the same boots (table irq: irqs avg_ns handled lost of the guest's interrupt line,
# reads_per_s wrong of its read line), and boot time with the NVMe passed through at 2 GiB
# and 4 GiB, all RAM pinned and DMA-mapped (table dma; vmm on the vmlinux like Cloud
# Hypervisor, QEMU on the bzImage, its fastest). Cloud Hypervisor's edu INTx delivers only the
# first interrupt and the guest waits 1 s for each lost one, so it gets 50.
bench_dev() {
    fact rounds "$1"
    tools="vmm qemu"
    [ -x /usr/bin/cloud-hypervisor ] && tools="$tools ch"
    bind_vfio 0000:00:03.0 0000:00:04.0
    DEVS=host=00:03.0
    L2_ARGS="rig.edu=irq_mode=msi+irqs=100"
    for tool in $tools; do
        run_l2 "warm-$tool" "$tool" 1 512M edu
    done
    i=1
    while [ "$i" -le "$1" ]; do
        for mode in intx msi; do
            for tool in $tools; do
                irqs=2000
                [ "$tool-$mode" = ch-intx ] && irqs=50
                DEVS=host=00:03.0
                L2_ARGS="rig.edu=irq_mode=$mode+irqs=$irqs+mmio_reads=200000"
                run_l2 "bench-$tool-$mode-$i" "$tool" 1 512M edu
                irq=$(grep "^EDU-RESULT irq_mode=$mode " "$LOG" | tail -n 1)
                mmio=$(grep "^EDU-RESULT mmio_reads=" "$LOG" | tail -n 1)
                r="round=$i tool=$tool mode=$mode irqs=$irqs"
                for k in avg_ns handled lost; do r="$r $k=$(or_none "$(kv "$irq" $k)")"; done
                for k in reads_per_s wrong; do r="$r $k=$(or_none "$(kv "$mmio" $k)")"; done
                row irq "$r $RUN"
            done
        done
        for mem in 2G 4G; do
            for tool in $(echo "$tools" | sed 's/^vmm /vmm-pvh /'); do
                DEVS=host=00:04.0 L2_ARGS=''
                run_l2 "bench-$tool-nvme-$mem-$i" "$tool" 1 "$mem" poweroff
                row dma "round=$i tool=$tool mem=$mem $RUN"
            done
        done
        i=$((i + 1))
    done
}
