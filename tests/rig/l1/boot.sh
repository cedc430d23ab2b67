# shellcheck shell=sh
# Boot scenarios (tests/e2e/rig_boot.rs): a Linux guest boots under vmm, from the bzImage or
# through the PVH entry of the ELF vmlinux, and powers off or reboots; the same guest under
# QEMU is the anchor. Facts: the run's (RUN of lib.sh's run_l2).

# boot_scenario NAME: runs NAME if it is a boot scenario, else returns 1.
boot_scenario() {
    case "$1" in
        boot) boot_once vmm 2 512M poweroff ;;
        boot-pvh) boot_once vmm-pvh 2 512M poweroff ;;
        reboot) boot_once vmm 2 512M reboot ;;
        # Diagnostic, in no test: tells an SMP reboot problem from any other.
        reboot-1cpu) boot_once vmm 1 512M reboot ;;
        mem4g) boot_once vmm 1 4G poweroff ;;
        qemu-boot) boot_once qemu 2 512M poweroff ;;
        qemu-pvh) boot_once qemu-pvh 2 512M poweroff ;;
        *) return 1 ;;
    esac
    return 0
}

# boot_once TOOL CPUS MEM ACTION: one boot, its facts.
boot_once() {
    run_l2 "$SCENARIO" "$@"
    facts "$RUN"
}
