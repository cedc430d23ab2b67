#!/usr/bin/env bash
# Passthrough benchmark, vmm against QEMU's vfio-pci (and Cloud Hypervisor) in the same L1:
#   [CH_BIN=/path/to/cloud-hypervisor] tests/rig/bench-dev.sh [ROUNDS]
# Runs `run.sh bench-dev-ROUNDS` (progress on stderr) and writes markdown tables to stdout for
# docs/PERFORMANCE.md: edu interrupt round trip (INTx, MSI; 2000 interrupts per run, the
# guest driver's average from raise to handler), edu BAR0 read throughput (200000 reads of
# the ident register per run), and boot-to-init with the NVMe passed through at 2 and 4 GiB
# with the VMM's teardown after the guest's last line. With CH_BIN, Cloud Hypervisor (ch)
# joins every round (its edu INTx gets 50 interrupts: it delivers only the first).
# Exits 1 when run.sh failed or any measured run failed (shown as "fail").
set -euo pipefail

RIG=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROUNDS=${1:-3}
raw=$(mktemp)
trap 'rm -f "$raw"' EXIT

rc=0
"$RIG/run.sh" "bench-dev-$ROUNDS" | tee "$raw" >&2 || rc=$?

awk -v load="$(cut -d' ' -f1-3 /proc/loadavg)" "$(cat "$RIG/bench.awk")"'
function fmt(x) { return x == "n/a" ? x : sprintf("%.2f", x) }
# a/b as text; kept under key k for its median
function ratio(a, b, k) {
    if (!num(a) || !num(b)) return "n/a"
    rr[k, ++nr[k]] = a / b
    return sprintf("%.2f", a / b)
}
function medr(k,    i, arr) { for (i = 1; i <= nr[k]; i++) arr[i] = rr[k, i]; return fmt(median(arr, nr[k])) }
function addtool(t) { if (!(t in seen)) { seen[t] = 1; tools[++nt] = t } }
/^RIG-ATTEMPT/ { delete irq; delete mm; delete dma; delete endms; delete seen; delete dseen; nt = 0; nd = 0; rounds = 0; failed = 0 }
row($0, "irq") {
    r = val($0, "round"); t = val($0, "tool"); m = val($0, "mode"); addtool(t)
    ok = ran($0)
    irq[r, t, m] = ok ? val($0, "avg_ns") : "fail"; lost[r, t, m] = val($0, "lost"); nirq[r, t, m] = val($0, "irqs")
    mm[r, t, m] = ok ? val($0, "reads_per_s") : "fail"
    if (r > rounds) rounds = r
}
row($0, "dma") {
    r = val($0, "round"); t = val($0, "tool"); g = val($0, "mem")
    if (!(t in dseen)) { dseen[t] = 1; dtools[++nd] = t }
    ok = ran($0)
    dma[r, t, g] = ok ? val($0, "init_ms") : "fail"; endms[r, t, g] = ok ? val($0, "end_ms") : "fail"
    if (r > rounds) rounds = r
}
END {
    # Anchors vmm is compared with, when they ran.
    na = 0
    for (t = 1; t <= nt; t++) if (tools[t] != "vmm") anchors[++na] = tools[t]
    split("intx msi", modes, " ")
    print "L0 load average at the end (1/5/15 min): " load "."
    print ""
    print "Interrupt round trip in the guest (ns, average per run; lost/sent interrupts in brackets):"
    print ""
    hdr = "| round"; sep = "|---"
    for (k = 1; k <= 2; k++) {
        for (t = 1; t <= nt; t++) { hdr = hdr " | " tools[t] " " modes[k]; sep = sep "|---" }
        for (a = 1; a <= na; a++) { hdr = hdr " | vmm/" anchors[a] " " modes[k]; sep = sep "|---" }
    }
    print hdr " |"; print sep "|"
    for (r = 1; r <= rounds; r++) {
        line = "| " r
        for (k = 1; k <= 2; k++) {
            m = modes[k]
            for (t = 1; t <= nt; t++)
                line = line sprintf(" | %s (%s/%s)", irq[r, tools[t], m], lost[r, tools[t], m], nirq[r, tools[t], m])
            for (a = 1; a <= na; a++)
                line = line " | " ratio(irq[r, "vmm", m], irq[r, anchors[a], m], "irq" m anchors[a])
        }
        print line " |"
    }
    line = "| median ratio"
    for (k = 1; k <= 2; k++) {
        for (t = 1; t <= nt; t++) line = line " | "
        for (a = 1; a <= na; a++) line = line " | " medr("irq" modes[k] anchors[a])
    }
    print line " |"
    print ""
    print "edu BAR0 reads per second from a guest loop (mmapped BAR):"
    print ""
    hdr = "| round | mode"; sep = "|---|---"
    for (t = 1; t <= nt; t++) { hdr = hdr " | " tools[t]; sep = sep "|---" }
    for (a = 1; a <= na; a++) { hdr = hdr " | vmm/" anchors[a]; sep = sep "|---" }
    print hdr " |"; print sep "|"
    for (r = 1; r <= rounds; r++) for (k = 1; k <= 2; k++) {
        m = modes[k]; line = "| " r " | " m
        for (t = 1; t <= nt; t++) line = line " | " mm[r, tools[t], m]
        for (a = 1; a <= na; a++) line = line " | " ratio(mm[r, "vmm", m], mm[r, anchors[a], m], "mm" anchors[a])
        print line " |"
    }
    print ""
    print "Boot to guest init with the NVMe passed through (ms from fork; all guest RAM pinned and"
    print "DMA-mapped), and teardown (ms from the last words of the guest, reboot: Power down, to the exit of the VMM):"
    print ""
    split("2G 4G", mems, " ")
    # vmm boots the vmlinux here (vmm-pvh), like Cloud Hypervisor.
    base = ("vmm-pvh" in dseen) ? "vmm-pvh" : "vmm"; ndb = 0
    for (t = 1; t <= nd; t++) if (dtools[t] != base) danchors[++ndb] = dtools[t]
    hdr = "| round"; sep = "|---"
    for (g = 1; g <= 2; g++) {
        for (t = 1; t <= nd; t++) { hdr = hdr " | " dtools[t] " " mems[g]; sep = sep "|---" }
        for (a = 1; a <= ndb; a++) { hdr = hdr " | " base "/" danchors[a] " " mems[g]; sep = sep "|---" }
    }
    print hdr " |"; print sep "|"
    for (r = 1; r <= rounds; r++) {
        line = "| " r
        for (g = 1; g <= 2; g++) {
            for (t = 1; t <= nd; t++) line = line " | " dma[r, dtools[t], mems[g]]
            for (a = 1; a <= ndb; a++) line = line " | " ratio(dma[r, base, mems[g]], dma[r, danchors[a], mems[g]], "dma" mems[g] danchors[a])
        }
        print line " |"
    }
    line = "| median ratio"
    for (g = 1; g <= 2; g++) {
        for (t = 1; t <= nd; t++) line = line " | "
        for (a = 1; a <= ndb; a++) line = line " | " medr("dma" mems[g] danchors[a])
    }
    print line " |"
    print ""
    hdr = "| round"; sep = "|---"
    for (g = 1; g <= 2; g++) for (t = 1; t <= nd; t++) { hdr = hdr " | " dtools[t] " " mems[g] " teardown"; sep = sep "|---" }
    print hdr " |"; print sep "|"
    for (r = 1; r <= rounds; r++) {
        line = "| " r
        for (g = 1; g <= 2; g++) for (t = 1; t <= nd; t++) line = line " | " endms[r, dtools[t], mems[g]]
        print line " |"
    }
    if (failed) printf "\n%d run(s) failed: see their RIG-ROW lines (stderr).\n", failed
    exit (failed > 0)
}' "$raw" || rc=1
exit "$rc"
