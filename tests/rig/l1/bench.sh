# shellcheck shell=sh
# shellcheck disable=SC2034 # DEVS, L2_ARGS, VMM_EXTRA, L2_QUIET: read by lib.sh run_l2
# Benchmark scenarios, vmm against QEMU in the same L1 (no Rust test: tests/rig/bench-boot.sh
# and bench-dev.sh turn the rows into tables and judge the runs). Every measured run is a
# row with the run's facts (RUN), so a failed run shows as one.

# bench_scenario NAME: runs NAME if it is a bench scenario, else returns 1.
bench_scenario() {
    case "$1" in
        bench-dev-*) bench_dev "${1#bench-dev-}" ;;
        bench-*) bench_boot "${1#bench-}" ;;
        *) return 1 ;;
    esac
    return 0
}

# bench_boot N: after a throw-away warm-up (the first L2 boot in a fresh L1 is slower), N
# rounds of one boot per tool (bzImage and PVH, vmm and QEMU), alternated: table boot, a row
# per round and tool.
bench_boot() {
    fact rounds "$1"
    run_l2 warm-vmm vmm 2 512M poweroff
    run_l2 warm-qemu qemu 2 512M poweroff
    i=1
    while [ "$i" -le "$1" ]; do
        for tool in vmm qemu vmm-pvh qemu-pvh; do
            run_l2 "bench-$tool-$i" "$tool" 2 512M poweroff
            row boot "round=$i tool=$tool $RUN"
        done
        i=$((i + 1))
    done
}

# bench_dev N: passthrough figures, alternated per round: the edu interrupt round trip (INTx,
# MSI) with BAR read throughput in the same boots (table irq: avg_ns handled lost of the
# guest's interrupt line, reads_per_s wrong of its read line), and boot time with the NVMe
# passed through at 1 GiB and 3 GiB, all RAM pinned and DMA-mapped (table dma).
bench_dev() {
    fact rounds "$1"
    bind_vfio 0000:00:03.0 0000:00:04.0
    DEVS=host=00:03.0
    L2_ARGS="rig.edu=irq_mode=msi+irqs=100"
    run_l2 warm-vmm vmm 1 512M edu
    run_l2 warm-qemu qemu 1 512M edu
    i=1
    while [ "$i" -le "$1" ]; do
        for mode in intx msi; do
            for tool in vmm qemu; do
                DEVS=host=00:03.0
                L2_ARGS="rig.edu=irq_mode=$mode+irqs=2000+mmio_reads=200000"
                run_l2 "bench-$tool-$mode-$i" $tool 1 512M edu
                irq=$(grep "^EDU-RESULT irq_mode=$mode " "$LOG" | tail -n 1)
                mmio=$(grep "^EDU-RESULT mmio_reads=" "$LOG" | tail -n 1)
                r="round=$i tool=$tool mode=$mode"
                for k in avg_ns handled lost; do r="$r $k=$(or_none "$(kv "$irq" $k)")"; done
                for k in reads_per_s wrong; do r="$r $k=$(or_none "$(kv "$mmio" $k)")"; done
                row irq "$r $RUN"
            done
        done
        for mem in 1G 3G; do
            for tool in vmm qemu; do
                DEVS=host=00:04.0 L2_ARGS=''
                run_l2 "bench-$tool-nvme-$mem-$i" $tool 1 "$mem" poweroff
                row dma "round=$i tool=$tool mem=$mem $RUN"
            done
        done
        i=$((i + 1))
    done
}
