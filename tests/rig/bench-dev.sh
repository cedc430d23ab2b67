#!/usr/bin/env bash
# Passthrough benchmark, vmm against QEMU's vfio-pci in the same L1:
#   tests/rig/bench-dev.sh [ROUNDS]
# Runs `run.sh bench-dev-ROUNDS` (progress on stderr) and writes markdown tables to stdout for
# docs/PERFORMANCE.md: edu interrupt round trip (INTx, MSI; 2000 interrupts per run, the
# guest driver's average from raise to handler), edu BAR0 read throughput (200000 reads of
# the ident register per run), and boot-to-init with the NVMe passed through at 1 and 3 GiB.
# Exits 1 when run.sh failed or any measured run failed (shown as "fail").
set -euo pipefail

RIG=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROUNDS=${1:-3}
raw=$(mktemp)
trap 'rm -f "$raw"' EXIT

rc=0
"$RIG/run.sh" "bench-dev-$ROUNDS" | tee "$raw" >&2 || rc=$?

awk "$(cat "$RIG/bench.awk")"'
/^RIG-ATTEMPT/ { delete irq; delete mm; delete dma; rounds = 0; failed = 0 }
row($0, "irq") {
    r = val($0, "round"); t = val($0, "tool"); m = val($0, "mode")
    ok = ran($0)
    irq[r, t, m] = ok ? val($0, "avg_ns") : "fail"; lost[r, t, m] = val($0, "lost")
    mm[r, t, m] = ok ? val($0, "reads_per_s") : "fail"
    if (r > rounds) rounds = r
}
row($0, "dma") { dma[val($0, "round"), val($0, "tool"), val($0, "mem")] = ran($0) ? val($0, "init_ms") : "fail" }
END {
    print "Interrupt round trip in the guest (ns, average of 2000 per run; lost interrupts in brackets):"
    print ""
    print "| round | vmm INTx | qemu INTx | vmm/qemu INTx | vmm MSI | qemu MSI | vmm/qemu MSI |"
    print "|---|---|---|---|---|---|---|"
    for (r = 1; r <= rounds; r++) {
        split("intx msi", modes, " ")
        line = "| " r
        for (k = 1; k <= 2; k++) {
            m = modes[k]; v = irq[r, "vmm", m]; q = irq[r, "qemu", m]
            ratio = (num(v) && num(q)) ? sprintf("%.2f", v / q) : "n/a"
            if (num(v) && num(q)) { ri[m, ++nri[m]] = v / q }
            line = line sprintf(" | %s (%s) | %s (%s) | %s", v, lost[r, "vmm", m], q, lost[r, "qemu", m], ratio)
        }
        print line " |"
    }
    for (k = 1; k <= 2; k++) { m = modes[k]; delete a; for (i = 1; i <= nri[m]; i++) a[i] = ri[m, i]; med[m] = median(a, nri[m]) }
    printf "\nMedian vmm/qemu: INTx %s, MSI %s.\n\n", (med["intx"] == "n/a" ? "n/a" : sprintf("%.2f", med["intx"])), (med["msi"] == "n/a" ? "n/a" : sprintf("%.2f", med["msi"]))
    print "edu BAR0 reads per second from a guest loop (mmapped BAR, both VMMs):"
    print ""
    print "| round | mode | vmm reads/s | qemu reads/s | vmm/qemu |"
    print "|---|---|---|---|---|"
    for (r = 1; r <= rounds; r++) for (k = 1; k <= 2; k++) {
        m = modes[k]; v = mm[r, "vmm", m]; q = mm[r, "qemu", m]
        printf "| %d | %s | %s | %s | %s |\n", r, m, v, q, (num(v) && num(q)) ? sprintf("%.2f", v / q) : "n/a"
    }
    print ""
    print "Boot to guest init with the NVMe passed through (ms; all guest RAM pinned and DMA-mapped):"
    print ""
    print "| round | vmm 1G | qemu 1G | vmm/qemu 1G | vmm 3G | qemu 3G | vmm/qemu 3G |"
    print "|---|---|---|---|---|---|---|"
    for (r = 1; r <= rounds; r++) {
        a1 = dma[r, "vmm", "1G"]; b1 = dma[r, "qemu", "1G"]; a3 = dma[r, "vmm", "3G"]; b3 = dma[r, "qemu", "3G"]
        printf "| %d | %s | %s | %s | %s | %s | %s |\n", r, a1, b1, (num(a1) && num(b1)) ? sprintf("%.2f", a1 / b1) : "n/a", a3, b3, (num(a3) && num(b3)) ? sprintf("%.2f", a3 / b3) : "n/a"
    }
    if (failed) printf "\n%d run(s) failed: see their RIG-ROW lines (stderr).\n", failed
    exit (failed > 0)
}' "$raw" || rc=1
exit "$rc"
