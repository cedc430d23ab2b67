#!/usr/bin/env bash
# Hotplug benchmark, vmm against QEMU in the same L1:
#   tests/rig/bench-hotplug.sh [ROUNDS]
# Runs `run.sh hp-bench-ROUNDS` (progress on stderr) and writes a markdown table to stdout for
# docs/PERFORMANCE.md. Both guests (the same kernel and initramfs, edu_test loaded, no device)
# run side by side in L1 and take the edu in turn, vmm first in each round: hot-add latency
# from the request (vmm: PUT vm.add-device; QEMU: QMP device_add driver=vfio-pci on -M pc, ACPI
# PCI hotplug as vmm) to the guest driver's first line from its probe on the console, and
# hot-remove latency from the request to its completion (vmm: the 204 answer, sent once the
# guest ejected and vmm released the device; QEMU: its DEVICE_DELETED event). All times on
# L1's monotonic clock (tests/rig/rigio.c). Round 0 is the warm-up: the first add faults in
# the guest RAM it pins, which later adds find resident; it is shown but not in the medians.
# Exits 1 when run.sh failed or any measured request failed (shown as "fail").
set -euo pipefail

RIG=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROUNDS=${1:-5}
raw=$(mktemp)
trap 'rm -f "$raw"' EXIT

rc=0
"$RIG/run.sh" "hp-bench-$ROUNDS" | tee "$raw" >&2 || rc=$?

awk "$(cat "$RIG/bench.awk")"'
/^RIG-ATTEMPT/ { delete ms; delete ans; rounds = 0; failed = 0 }
row($0, "bench") {
    r = val($0, "round"); t = val($0, "tool"); o = val($0, "op")
    ok = val($0, "ok") == "1" && num(val($0, "ms"))
    if (!ok) failed++
    ms[r, t, o] = ok ? val($0, "ms") : "fail"; ans[r, t, o] = ok ? val($0, "answer_ms") : "fail"
    if (r > rounds) rounds = r
}
function ratio(a, b) { return (num(a) && num(b)) ? sprintf("%.2f", a / b) : "n/a" }
END {
    print "Hot-add: request to the guest driver'"'"'s probe (ms; in brackets: to the answer, vmm'"'"'s 200 or QMP'"'"'s return).";
    print "Hot-remove: request to done (ms; vmm'"'"'s 204, QEMU'"'"'s DEVICE_DELETED)."
    print ""
    print "| round | vmm add | qemu add | vmm/qemu add | vmm remove | qemu remove | vmm/qemu remove |"
    print "|---|---|---|---|---|---|---|"
    for (r = 0; r <= rounds; r++) {
        va = ms[r, "vmm", "add"]; qa = ms[r, "qemu", "add"]; vr = ms[r, "vmm", "remove"]; qr = ms[r, "qemu", "remove"]
        printf "| %s | %s (%s) | %s (%s) | %s | %s | %s | %s |\n", (r == 0 ? "0 (warm-up)" : r), va, ans[r, "vmm", "add"], qa, ans[r, "qemu", "add"], ratio(va, qa), vr, qr, ratio(vr, qr)
        if (r > 0) {
            if (num(va)) a1[++n1] = va; if (num(qa)) a2[++n2] = qa
            if (num(vr)) a3[++n3] = vr; if (num(qr)) a4[++n4] = qr
        }
    }
    m1 = median(a1, n1); m2 = median(a2, n2); m3 = median(a3, n3); m4 = median(a4, n4)
    printf "\nMedians of rounds 1-%d: add vmm %s ms, QEMU %s ms (vmm/QEMU %s); remove vmm %s ms, QEMU %s ms (vmm/QEMU %s).\n", rounds, m1, m2, ratio(m1, m2), m3, m4, ratio(m3, m4)
    if (failed) printf "\n%d request(s) failed: see their RIG-ROW lines (stderr).\n", failed
    exit (failed > 0)
}' "$raw" || rc=1
exit "$rc"
