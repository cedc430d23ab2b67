#!/usr/bin/env bash
# Boot-time benchmark, vmm against QEMU in the same L1: tests/rig/bench-boot.sh [ROUNDS]
# Runs `run.sh bench-ROUNDS` (progress on stderr) and writes a markdown table to stdout, for
# docs/PERFORMANCE.md. init_ms is the wall time inside L1 from just before the VMM process is
# forked until the L2 guest's /init prints its first line (stamp.c); RSS excludes guest RAM.
# Exits with run.sh's status (the table is still printed from whatever rounds completed).
set -euo pipefail

RIG=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROUNDS=${1:-5}
raw=$(mktemp)
trap 'rm -f "$raw"' EXIT

rc=0
"$RIG/run.sh" "bench-$ROUNDS" | tee "$raw" >&2 || rc=$?

# Only the rounds of the last attempt count (run.sh reruns everything after an L1 freeze).
awk -v kver="$(cat "$RIG/out/kver" 2>/dev/null || echo '?')" "$(cat "$RIG/bench.awk")"'
function ratio(a, b, k) {
    if (a ~ /^[0-9]+$/ && b ~ /^[0-9]+$/ && b > 0) { r[k, ++nr[k]] = a / b; return sprintf("%.2f", a / b) }
    return "n/a"
}
function med(k,    i, arr) { for (i = 1; i <= nr[k]; i++) arr[i] = r[k, i]; m = median(arr, nr[k]); return m == "n/a" ? m : sprintf("%.2f", m) }
/^RIG-ATTEMPT/ { n = 0; delete nr; delete r; ns = 0 }
/^RIG-BENCH/ {
    n++
    v = val($0, "vmm"); q = val($0, "qemu"); vp = val($0, "vmm-pvh"); qp = val($0, "qemu-pvh")
    vr = val($0, "vmm-pvh_rss_kb")
    if (vr ~ /^[0-9]+$/) rss[++ns] = vr
    rows[n] = sprintf("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |", val($0, "round"), v, q, vp, qp,
        ratio(v, q, "bz"), ratio(vp, q, "best"), ratio(vp, qp, "pvh"), vr, val($0, "qemu_rss_kb"))
}
END {
    print "Boot to L2 /init (wall ms inside L1, from fork to the first line of /init), Linux " kver
    print "guest, 2 vCPUs, 512 MiB, same initramfs and command line; alternated runs after one warm-up."
    print "bz = the bzImage; pvh = the same kernel as ELF vmlinux through its PVH entry."
    print ""
    print "| round | vmm bz | qemu bz | vmm pvh | qemu pvh | vmm bz / qemu bz | vmm pvh / qemu bz | vmm pvh / qemu pvh | vmm RSS KiB | qemu RSS KiB |"
    print "|---|---|---|---|---|---|---|---|---|---|"
    for (i = 1; i <= n; i++) print rows[i]
    print ""
    printf "Medians: vmm bz / qemu bz %s; vmm pvh / qemu bz %s; vmm pvh / qemu pvh %s (%d rounds).\n", med("bz"), med("best"), med("pvh"), n
    printf "Median vmm RSS outside guest RAM at guest init: %s KiB.\n", median(rss, ns)
}' "$raw"
exit "$rc"
