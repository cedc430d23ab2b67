# shellcheck shell=sh
# shellcheck disable=SC2034 # DEVS, L2_ARGS, VMM_EXTRA, L2_QUIET: read by lib.sh run_l2
# VFIO passthrough scenarios (tests/e2e/rig_vfio.rs): the L2 guest drives devices of L1
# through vmm (edu by every way of naming it, the two-edu bridge group, NVMe), a vmm killed
# with SIGKILL leaves the device usable, and vmm refuses what it cannot pass through.
# Facts: the run's (RUN), the edu driver's result lines (texts edu), the NVMe checksums; for
# a refusal, vmm's arguments, status, stdout and stderr (lib.sh refusal).

# vfio_scenario NAME: runs NAME if it is a VFIO scenario, else returns 1.
vfio_scenario() {
    case "$1" in
        vfio-edu) vfio_edu vmm host=00:03.0 ;;
        vfio-edu-long) vfio_edu vmm host=0000:00:03.0 ;;
        vfio-edu-sysfs) vfio_edu vmm sysfsdev=/sys/bus/pci/devices/0000:00:03.0 ;;
        vfio-edu-devices) vfio_edu vmm sysfsdev=/sys/devices/pci0000:00/0000:00:03.0 ;;
        qemu-vfio-edu) vfio_edu qemu host=00:03.0 ;;
        demo) vfio_demo ;;
        vfio-group) vfio_group ;;
        vfio-nvme) vfio_nvme ;;
        vfio-kill9) vfio_kill9 ;;
        vfio-not-viable) vfio_not_viable ;;
        vfio-bad-bdf) refusal --device vfio-pci,host=00:3 ;;
        vfio-no-device) refusal --device vfio-pci,host=00:09.0 ;;
        vfio-not-bound)
            # e1000e (00:02.0) has no driver in L1; undo any earlier binding.
            unbind 0000:00:02.0
            refusal --device vfio-pci,host=00:02.0
            ;;
        vfio-memlock) vfio_memlock ;;
        *) return 1 ;;
    esac
    return 0
}

# vfio_edu TOOL SPEC: the edu (00:03.0) passed through as SPEC, one vCPU.
vfio_edu() {
    bind_vfio 0000:00:03.0
    DEVS=$2
    run_l2 "$SCENARIO" "$1" 1 512M edu
    facts "$RUN"
    edu_texts
}

# The README's main job: a Linux guest under vmm driving a passed-through device, its
# console shown (tests/rig/demo).
vfio_demo() {
    bind_vfio 0000:00:03.0
    DEVS=host=00:03.0 L2_QUIET=ignore_loglevel
    L2_ARGS="rig.edu=irq_mode=msi+irqs=1000"
    run_l2 "$SCENARIO" vmm 2 512M edu
    facts "$RUN"
    edu_texts
}

# The bridge group: both edus behind 00:05.0 passed together.
vfio_group() {
    bind_vfio 0000:01:01.0 0000:01:02.0
    DEVS="host=01:01.0 host=01:02.0"
    run_l2 "$SCENARIO" vmm 1 512M edu
    facts "$RUN"
    edu_texts
}

# The NVMe: what the guest reads against the image, and its MSI-X vectors' counts (texts
# irq, the guest's RIG-IRQ lines, for rig_irq.rs).
vfio_nvme() {
    bind_vfio 0000:00:04.0
    DEVS=host=00:04.0
    run_l2 "$SCENARIO" vmm 2 512M nvme
    facts "$RUN"
    nvme_facts
    guest_texts irq '^RIG-IRQ '
}

# A vmm killed with SIGKILL while its guest runs, then the next vmm gets the device. Facts:
# held (the first guest ran), a row per thread of the running vmm with its seccomp mode.
vfio_kill9() {
    bind_vfio 0000:00:03.0
    bg_vmm /tmp/hold.log --kernel /l2/vmlinuz --initramfs /l2/initrd.cpio.gz \
        --cmdline "console=ttyS0 quiet panic=-1 rig.action=hold" --memory 512M \
        --device vfio-pci,host=00:03.0 --timeout 120
    fact held "$(held /tmp/hold.log)"
    for t in /proc/"$BG_PID"/task/*; do
        row thread "$(awk '/^Name:/ { n = $2 } /^Seccomp:/ { m = $2 } END { print "name=" n " seccomp=" m }' "$t/status")"
    done
    kill -9 "$BG_PID"
    wait "$BG_PID"
    sleep 1
    DEVS=host=00:03.0
    run_l2 "$SCENARIO" vmm 1 512M edu
    facts "$RUN"
    edu_texts
}

# One edu of the bridge group on vfio-pci, the other on a host driver: the group is not
# viable. Fact group: its number, which the message names.
vfio_not_viable() {
    bind_vfio 0000:01:01.0
    bind_to 0000:01:02.0 uio_pci_generic
    fact group "$(group_of 0000:01:01.0)"
    refusal --device vfio-pci,host=01:01.0
    bind_vfio 0000:01:02.0
}

# Not root (no CAP_IPC_LOCK), RLIMIT_MEMLOCK 64 KiB: vmm must refuse before pinning. Fact
# memlock_kib: the limit vmm ran under, as `ulimit -l` shows it.
vfio_memlock() {
    mkdir -p /etc
    grep -q '^nobody:' /etc/passwd 2>/dev/null ||
        printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >>/etc/passwd
    chmod 666 /dev/kvm
    bind_vfio 0000:00:03.0
    set -- --kernel /l2/vmlinuz --memory 512M --device vfio-pci,host=00:03.0
    vmm_args "$@"
    rm -f /tmp/memlock_kib
    capture su -s /bin/sh nobody -c "ulimit -l 64 && ulimit -l >/tmp/memlock_kib && exec vmm $*"
    fact memlock_kib "$(cat /tmp/memlock_kib)"
    chmod 600 /dev/kvm
}
