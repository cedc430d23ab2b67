# shellcheck shell=sh
# shellcheck disable=SC2034 # DEVS, L2_ARGS, VMM_EXTRA, L2_QUIET: read by lib.sh run_l2
# Interrupt scenarios (tests/e2e/rig_irq.rs): edu raises interrupts that the guest's driver
# counts, through INTx (irqfd + resample) and MSI; virtio-rng and the e1000e use MSI-X, the
# latter with per-vector masking; vmm's exit count must not grow with the interrupt count.
# Facts: the run's (RUN) and the guest's result lines (texts edu, msix, irq). vfio-nvme
# (vfio.sh) gives the NVMe's MSI-X counts.

# irq_scenario NAME: runs NAME if it is an interrupt scenario, else returns 1.
irq_scenario() {
    case "$1" in
        vfio-edu-intx) irq_edu vmm intx ;;
        vfio-edu-msi) irq_edu vmm msi ;;
        qemu-edu-intx) irq_edu qemu intx ;;
        qemu-edu-msi) irq_edu qemu msi ;;
        vfio-edu-modes) irq_edu_modes ;;
        vfio-irq-stats) irq_stats ;;
        vfio-virtio) irq_virtio ;;
        vfio-msix-mask) irq_msix_mask vmm ;;
        qemu-msix-mask) irq_msix_mask qemu ;;
        *) return 1 ;;
    esac
    return 0
}

# irq_edu TOOL MODE: 1000 edu interrupts in MODE (intx or msi).
irq_edu() {
    bind_vfio 0000:00:03.0
    DEVS=host=00:03.0 L2_ARGS="rig.edu=irq_mode=$2+irqs=1000"
    run_l2 "$SCENARIO" "$1" 1 512M edu
    facts "$RUN"
    edu_texts
}

# One guest boot: INTx, then MSI, then INTx again (the driver unloaded in between).
irq_edu_modes() {
    bind_vfio 0000:00:03.0
    DEVS=host=00:03.0
    run_l2 "$SCENARIO" vmm 1 512M edu-modes
    facts "$RUN"
    edu_texts
}

# vmm's userspace must not run per interrupt: for MSI and INTx, a boot with 100 and one with
# 2100 interrupts, each a row of table run with vmm's total exits and its accesses to the
# ACPI sleep registers (--stats=json) and the run's facts, and its edu lines under
# edu-MODE-COUNT.
irq_stats() {
    bind_vfio 0000:00:03.0
    DEVS=host=00:03.0 VMM_EXTRA=--stats=json
    for mode in msi intx; do
        for n in 100 2100; do
            L2_ARGS="rig.edu=irq_mode=$mode+irqs=$n"
            run_l2 "$SCENARIO-$mode-$n" vmm 1 512M edu
            row run "mode=$mode irqs=$n exits=$(exits_of "$LOG") acpi_pm=$(trapped_of "$LOG" pio:acpi-pm) $RUN"
            edu_texts "edu-$mode-$n"
        done
    done
}

# virtio-rng (modern, MSI-X, 64-bit prefetchable BAR) with the stock drivers. Facts:
# rng_bytes (read from /dev/hwrng), the guest's RIG-IRQ lines of the virtio vectors.
irq_virtio() {
    bind_vfio 0000:00:06.0
    DEVS=host=00:06.0
    run_l2 "$SCENARIO" vmm 1 512M virtio-rng
    facts "$RUN"
    bytes=$(grep -o 'RIG-RNG bytes=[0-9]*' "$LOG" | tail -n 1)
    fact rng_bytes "${bytes#*=}"
    guest_texts irq '^RIG-IRQ '
}

# irq_msix_mask TOOL: per-vector masking on the e1000e (masked vector raised, unmasked,
# another vector meanwhile): the guest's MSIX-RESULT line.
irq_msix_mask() {
    bind_vfio 0000:00:02.0
    DEVS=host=00:02.0
    run_l2 "$SCENARIO" "$1" 1 512M msix-mask
    facts "$RUN"
    guest_texts msix '^MSIX-RESULT '
}
