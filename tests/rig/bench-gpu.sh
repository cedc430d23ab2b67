#!/usr/bin/env bash
# GPU-class benchmark, vmm against QEMU's vfio-pci in the same L1 (l1/gpu.sh gpu-bench-N):
#   tests/rig/bench-gpu.sh [ROUNDS]
# Runs `run.sh gpu-bench-ROUNDS` (progress on stderr; L0 gets 8 GiB unless RIG_L0_MEM says
# otherwise, so that L1 can hold a 4 GiB hugepage pool) and writes markdown tables to stdout
# for docs/PERFORMANCE.md: boot to guest init with the NVMe passed through at 2 and 4 GiB
# (all RAM pinned and DMA-mapped), vmm with and without hugepages (bzImage, and PVH with
# hugepages) against QEMU with and without -mem-path hugepages; and the time to read the edu's
# 32 KiB expansion ROM through sysfs in the guest, vmm against QEMU.
# Every run is kept: the raw RIG lines go to tests/rig/out/bench-gpu-<date>.log. Exits 1 when
# run.sh failed or any measured run failed (shown as "fail"; its RIG-ROW line says why).
set -euo pipefail

RIG=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROUNDS=${1:-3}
mkdir -p "$RIG/out"
raw=$RIG/out/bench-gpu-$(date -u +%Y%m%dT%H%M%SZ).log

rc=0
RIG_L0_MEM=${RIG_L0_MEM:-8G} "$RIG/run.sh" "gpu-bench-$ROUNDS" | tee "$raw" >&2 || rc=$?

awk -v raw="$raw" "$(cat "$RIG/bench.awk")"'
function r(a, b) { return (a ~ /^[0-9]+$/ && b ~ /^[0-9]+$/ && b > 0) ? sprintf("%.2f", a / b) : "n/a" }
function keep(k, a, b) { if (a ~ /^[0-9]+$/ && b ~ /^[0-9]+$/ && b > 0) { q[k, ++nq[k]] = a / b } }
function med(k,    i, arr, m) { for (i = 1; i <= nq[k]; i++) arr[i] = q[k, i]; m = median(arr, nq[k]); return m == "n/a" ? m : sprintf("%.2f", m) }
/^RIG-ATTEMPT/ { delete t; delete rom; delete nq; delete q; rounds = 0; failed = 0 }
row($0, "boot") {
    rd = val($0, "round")
    t[rd, val($0, "tool"), val($0, "mem"), val($0, "huge")] = ran($0) ? val($0, "init_ms") : "fail"
    if (rd > rounds) rounds = rd
}
row($0, "rom") {
    ok = ran($0)
    if (ok && val($0, "present") != "1") { ok = 0; failed++ }
    rom[val($0, "round"), val($0, "tool")] = ok ? val($0, "read_us") : "fail"
}
END {
    print "Boot to guest init with the NVMe passed through (ms; all guest RAM pinned and DMA-mapped; huge = 2 MiB"
    print "hugepages: vmm `--memory SIZE,hugepages=on`, QEMU `-mem-path` on hugetlbfs; pvh = vmm on the same kernel"
    print "as ELF vmlinux through its PVH entry):"
    print ""
    print "| round | mem | vmm | vmm huge | vmm pvh huge | qemu | qemu huge | vmm huge / qemu | vmm pvh huge / qemu | vmm / qemu | qemu huge / qemu |"
    print "|---|---|---|---|---|---|---|---|---|---|---|"
    for (rd = 1; rd <= rounds; rd++) for (k = 1; k <= 2; k++) {
        m = (k == 1) ? "2G" : "4G"
        v = t[rd, "vmm", m, 0]; vh = t[rd, "vmm", m, 1]; ph = t[rd, "vmm-pvh", m, 1]
        qq = t[rd, "qemu", m, 0]; qh = t[rd, "qemu", m, 1]
        keep("vh" m, vh, qq); keep("ph" m, ph, qq); keep("v" m, v, qq); keep("qh" m, qh, qq)
        printf "| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", rd, m, v, vh, ph, qq, qh, r(vh, qq), r(ph, qq), r(v, qq), r(qh, qq)
    }
    print ""
    for (k = 1; k <= 2; k++) {
        m = (k == 1) ? "2G" : "4G"
        printf "Medians at %s: vmm huge / qemu %s; vmm pvh huge / qemu %s; vmm / qemu %s; qemu huge / qemu %s.\n", m, med("vh" m), med("ph" m), med("v" m), med("qh" m)
    }
    print ""
    print "Expansion ROM (32 KiB) read through sysfs in the guest, microseconds per read (10 reads):"
    print ""
    print "| round | vmm | qemu | vmm / qemu |"
    print "|---|---|---|---|"
    for (rd = 1; rd <= rounds; rd++) {
        keep("rom", rom[rd, "vmm"], rom[rd, "qemu"])
        printf "| %d | %s | %s | %s |\n", rd, rom[rd, "vmm"], rom[rd, "qemu"], r(rom[rd, "vmm"], rom[rd, "qemu"])
    }
    printf "\nMedian vmm / qemu: %s.\n", med("rom")
    if (failed) printf "\n%d run(s) failed: see their RIG-ROW lines (%s).\n", failed, raw
    exit (failed > 0)
}' "$raw" || rc=1
echo "raw: $raw" >&2
exit "$rc"
