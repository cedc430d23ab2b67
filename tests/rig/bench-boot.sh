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
awk -v kver="$(cat "$RIG/out/kver" 2>/dev/null || echo '?')" '
function val(line, key,    n, i, a, kv) {
    n = split(line, a, " ")
    for (i = 1; i <= n; i++) { split(a[i], kv, "="); if (kv[1] == key) return kv[2] }
    return ""
}
function median(arr, n,    i, j, t) {
    for (i = 2; i <= n; i++) for (j = i; j > 1 && arr[j-1] > arr[j]; j--) { t = arr[j]; arr[j] = arr[j-1]; arr[j-1] = t }
    if (n == 0) return "n/a"
    return (n % 2) ? arr[(n+1)/2] : (arr[n/2] + arr[n/2+1]) / 2
}
/^RIG-ATTEMPT/ { n = 0; nr = 0; ns = 0; delete rows }
/^RIG-BENCH/ {
    n++
    v = val($0, "vmm"); q = val($0, "qemu"); vr = val($0, "vmm_rss_kb"); qr = val($0, "qemu_rss_kb")
    ratio = "n/a"
    if (v ~ /^[0-9]+$/ && q ~ /^[0-9]+$/ && q > 0) { ratio = sprintf("%.2f", v / q); ratios[++nr] = v / q }
    if (vr ~ /^[0-9]+$/) rss[++ns] = vr
    rows[n] = sprintf("| %d | %s | %s | %s | %s | %s |", val($0, "round"), v, q, ratio, vr, qr)
}
END {
    print "Boot to L2 /init (wall ms inside L1), Linux " kver " guest, 2 vCPUs, 512 MiB, alternated runs after one warm-up of each:"
    print ""
    print "| round | vmm init_ms | qemu init_ms | vmm/qemu | vmm RSS KiB | qemu RSS KiB |"
    print "|---|---|---|---|---|---|"
    for (i = 1; i <= n; i++) print rows[i]
    print ""
    m = median(ratios, nr)
    printf "Median vmm/qemu ratio: %s over %d rounds. Median vmm RSS (outside guest RAM): %s KiB.\n", (m == "n/a" ? m : sprintf("%.2f", m)), nr, median(rss, ns)
}' "$raw"
exit "$rc"
