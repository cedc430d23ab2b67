# shellcheck shell=sh
# `vmm check` scenarios (tests/e2e/rig_check.rs): the host readiness report on a host that is
# ready (q35 with an intel-iommu doing interrupt remapping, vfio-pci loaded), for a device
# that is ready, one whose group is not viable and one bound to no driver. Facts: status and
# every report line (texts line), the --json form (json_status, texts json), the device's
# group, and what L1's kernel shows of interrupt remapping (ecap, ir_domains).

# check_scenario NAME: runs NAME if it is a check scenario, else returns 1.
check_scenario() {
    case "$1" in
        check-ready)
            bind_vfio 0000:00:03.0
            check_report 0000:00:03.0
            ;;
        check-not-viable)
            # As vfio-not-viable: one edu of the bridge group on a host driver.
            bind_vfio 0000:01:01.0
            bind_to 0000:01:02.0 uio_pci_generic
            check_report 0000:01:01.0
            bind_vfio 0000:01:02.0
            ;;
        check-unbound)
            # e1000e (00:02.0) has no driver in L1; undo any earlier binding.
            unbind 0000:00:02.0
            check_report 0000:00:02.0
            ;;
        *) return 1 ;;
    esac
    return 0
}

# check_report DEV: vmm check for DEV, as text and as JSON.
check_report() {
    fact group "$(group_of "$1")"
    vmm_check status line --memory 512M --device "vfio-pci,host=$1"
    vmm_check json_status json --json --memory 512M --device "vfio-pci,host=$1"
    fact ecap "$(cat /sys/class/iommu/*/intel-iommu/ecap 2>/dev/null | tr '\n' ',')"
    fact ir_domains "$(grep -o 'IR-[A-Za-z-]*' /proc/interrupts | sort -u | tr '\n' ',')"
}
