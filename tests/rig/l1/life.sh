# shellcheck shell=sh
# shellcheck disable=SC2034 # DEVS, L2_ARGS, VMM_EXTRA, L2_QUIET: read by lib.sh run_l2
# Lifecycle scenarios (tests/e2e/rig_life.rs): managed=on binding, the ordered teardown on
# guest poweroff, signals and errors, vmm on a terminal, and a soak of boots with devices
# passed through. Facts: drivers before/during/after, exit statuses, stop times, vmm's own
# lines (texts vmm*), the guests' results, pinned pages and free memory.

# life_scenario NAME: runs NAME if it is a lifecycle scenario, else returns 1.
life_scenario() {
    case "$1" in
        managed-poweroff) life_managed_poweroff ;;
        managed-sigterm) life_managed_sigterm ;;
        managed-error) life_managed_error ;;
        managed-refuse) life_managed_refuse ;;
        signals) life_signals ;;
        tty) life_tty ;;
        soak) life_soak 20 ;;
        soak-*) life_soak "${1#soak-}" ;;
        *) return 1 ;;
    esac
    return 0
}

NVME=0000:00:04.0

# managed=on: the NVMe starts on L1's nvme driver (no override), is moved to vfio-pci for the
# guest, and is back on nvme after the guest powers off.
life_managed_poweroff() {
    bind_host $NVME nvme
    fact before "$(drv_of $NVME)"
    DEVS=host=00:04.0,managed=on
    run_l2 "$SCENARIO" vmm 1 512M nvme
    facts "$RUN"
    nvme_facts
    fact after "$(drv_of $NVME)"
    fact override "$(cat /sys/bus/pci/devices/$NVME/driver_override)"
}

# managed=on and SIGTERM while the guest uses the device: vmm stops in order and the NVMe is
# back on nvme.
life_managed_sigterm() {
    bind_host $NVME nvme
    fact before "$(drv_of $NVME)"
    log=/tmp/$SCENARIO.log
    bg_vmm "$log" --kernel /l2/vmlinuz --initramfs /l2/initrd.cpio.gz \
        --cmdline "console=ttyS0 quiet panic=-1 rig.action=edu-nvme rig.end=hold" \
        --memory 512M --timeout 120 --device vfio-pci,host=00:04.0,managed=on
    fact held "$(held "$log")"
    fact during "$(drv_of $NVME)"
    stop_bg TERM
    fact status "$STOP_RC"
    fact stop_ms "$STOP_MS"
    fact after "$(drv_of $NVME)"
    nvme_facts "$log"
    vmm_lines vmm "$log"
}

# A vmm error after the device was moved (a second device, the e1000e, is on no driver):
# vmm refuses and the NVMe is back on nvme, with no driver_override left. (vmm judges the
# kernel and initramfs before it moves any device.)
life_managed_error() {
    bind_host $NVME nvme
    unbind 0000:00:02.0
    set -- --kernel /l2/vmlinuz --initramfs /l2/initrd.cpio.gz \
        --device vfio-pci,host=00:04.0,managed=on --device vfio-pci,host=00:02.0
    vmm_args "$@"
    capture vmm "$@"
    fact after "$(drv_of $NVME)"
    fact override "$(cat /sys/bus/pci/devices/$NVME/driver_override)"
}

# managed=on for one edu of the bridge group while the other is on a host driver: refused
# before anything is touched. Fact group: the group's number, which the message names.
life_managed_refuse() {
    bind_to 0000:01:01.0 uio_pci_generic
    bind_to 0000:01:02.0 uio_pci_generic
    fact group "$(group_of 0000:01:01.0)"
    set -- --kernel /l2/vmlinuz --device vfio-pci,host=01:01.0,managed=on
    vmm_args "$@"
    capture vmm "$@"
    fact after "$(drv_of 0000:01:01.0)"
    bind_vfio 0000:01:01.0 0000:01:02.0
}

# SIGINT, SIGTERM, SIGHUP to a vmm whose guest drives the edu (MSI enabled), each a row of
# table signal (held, status, stop_ms) with vmm's lines under vmm-SIG and the guest's edu
# lines under edu-SIG; then one more boot with the edu (the run's facts, texts edu).
life_signals() {
    bind_vfio 0000:00:03.0
    for sig in INT TERM HUP; do
        log=/tmp/sig-$sig.log
        bg_vmm "$log" --kernel /l2/vmlinuz --initramfs /l2/initrd.cpio.gz \
            --cmdline "console=ttyS0 quiet panic=-1 rig.action=edu rig.end=hold rig.edu=irq_mode=msi+irqs=100" \
            --memory 512M --timeout 120 --device vfio-pci,host=00:03.0
        held=$(held "$log")
        stop_bg "$sig"
        row signal "sig=$sig held=$held status=$STOP_RC stop_ms=$STOP_MS"
        vmm_lines "vmm-$sig" "$log"
        edu_texts "edu-$sig" "$log"
    done
    DEVS=host=00:03.0
    run_l2 "$SCENARIO" vmm 1 512M edu
    facts "$RUN"
    edu_texts
}

# vmm on a terminal (stamp's pty): a 3 GiB guest with the edu shows the DMA pinning progress
# and the terminal it put in raw mode is restored. Facts: the run's, the terminal's flags
# before and after (stamp's RIG-PTY), vmm's lines as they came (texts vmm: CR kept, escaped,
# as the progress updates are CR-separated).
life_tty() {
    bind_vfio 0000:00:03.0
    DEVS=host=00:03.0
    export STAMP_PTY=1
    run_l2 "$SCENARIO" vmm 1 3G edu
    unset STAMP_PTY
    facts "$RUN"
    edu_texts
    pty=$(grep -o 'RIG-PTY .*' "$LOG" | tail -n 1)
    facts "${pty#RIG-PTY }"
    grep 'vmm: ' "$RAW" | texts vmm
}

# life_soak N: N boots with edu and NVMe passed through, the DMA, interrupt and read tests
# each time, ended in turn by guest poweroff, SIGTERM and kill -9; a warm-up boot before
# (the first VM in a fresh L1 grows kernel caches once) and a final one after (the devices
# still work). Each boot is a row of table boot (lib.sh soak_boot). Facts: boots, free
# memory (cold, after the warm-up, at the end), pinned pages after the warm-up and at the
# end (both before the final boot), nvme_want.
life_soak() {
    fact boots "$1"
    fact nvme_want "$NVME_SUM"
    bind_vfio 0000:00:03.0 $NVME
    fact memfree_cold_kb "$(memfree_kb)"
    PINS0=''
    soak_boot warmup poweroff msi
    fact memfree0_kb "$(memfree_kb)"
    PINS0=$(pins)
    fact pins0 "$PINS0"
    k=1
    while [ "$k" -le "$1" ]; do
        case $((k % 3)) in 1) end='poweroff' ;; 2) end='term' ;; *) end='kill' ;; esac
        case $((k % 2)) in 1) mode=msi ;; *) mode=intx ;; esac
        soak_boot "$k" "$end" "$mode"
        k=$((k + 1))
    done
    fact memfree_end_kb "$(memfree_kb)"
    fact pins_end "$(pins)"
    soak_boot final poweroff msi
    row meminfo "$(awk '/^(MemFree|Slab|PageTables|Percpu|Mlocked|Unevictable|AnonPages|AnonHugePages):/ { printf "%s=%s ", $1, $2 }' /proc/meminfo | tr -d ':')"
}

# soak_boot ID END(poweroff|term|kill) MODE(msi|intx): one soak boot, a row of table boot:
# i=ID end irq status ms (from start to end) held (term/kill: the guest reached its hold
# point) memfree_kb pinned_while_running (pages, term/kill) pinned_after (against pins0)
# nvme_sum; texts edu-ID (the guest's edu lines) and vmm-ID (vmm's lines).
soak_boot() {
    hold=''
    [ "$2" = poweroff ] || hold=" rig.end=hold"
    log=/tmp/soak-$1.log
    t0=$(ms_now)
    bg_vmm "$log" --kernel /l2/vmlinuz --initramfs /l2/initrd.cpio.gz \
        --cmdline "console=ttyS0 quiet panic=-1 rig.action=edu-nvme rig.edu=irq_mode=$3+irqs=200$hold" \
        --memory 512M --timeout 120 --device vfio-pci,host=00:03.0 --device vfio-pci,host=00:04.0
    held=none pinned=none
    if [ "$2" != poweroff ]; then
        sig=KILL
        [ "$2" = term ] && sig=TERM
        held=$(held "$log")
        if [ "$held" = 1 ]; then
            [ -n "$PINS0" ] && pinned=$(($(pins) - PINS0))
        else
            sig=KILL # a guest that never got there: no orderly stop to wait for
        fi
        kill -"$sig" "$BG_PID"
    fi
    wait "$BG_PID"
    rc=$?
    ms=$(($(ms_now) - t0))
    after=none
    [ -n "$PINS0" ] && after=$(($(pins) - PINS0))
    row boot "i=$1 end=$2 irq=$3 status=$rc ms=$ms held=$held memfree_kb=$(memfree_kb) pinned_while_running=$pinned pinned_after=$after nvme_sum=$(nvme_sum "$log")"
    edu_texts "edu-$1" "$log"
    vmm_lines "vmm-$1" "$log"
}
