#!/usr/bin/env bash
# Boot-time benchmark, vmm against QEMU in the same L1: tests/rig/bench-boot.sh [ROUNDS]
# Runs `run.sh bench-ROUNDS` (progress on stderr) and writes a markdown table to stdout, for
# docs/PERFORMANCE.md. init_ms is the wall time inside L1 from just before the VMM process is
# forked until the L2 guest's /init prints its first line (stamp.c); RSS excludes guest RAM.
# Exits 1 when run.sh failed or any measured run failed (the table is still printed from
# whatever rounds completed).
set -euo pipefail

RIG=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROUNDS=${1:-5}
raw=$(mktemp)
trap 'rm -f "$raw"' EXIT

rc=0
"$RIG/run.sh" "bench-$ROUNDS" | tee "$raw" >&2 || rc=$?

# Only the rounds of the last attempt count (run.sh reruns everything after an L1 freeze).
# A run that failed shows as "fail" and makes the status 1.
awk -v kver="$(cat "$RIG/out/kver" 2>/dev/null || echo '?')" "$(cat "$RIG/bench.awk")"'
function ratio(a, b, k) {
    if (a ~ /^[0-9]+$/ && b ~ /^[0-9]+$/ && b > 0) { r[k, ++nr[k]] = a / b; return sprintf("%.2f", a / b) }
    return "n/a"
}
function med(k,    i, arr) { for (i = 1; i <= nr[k]; i++) arr[i] = r[k, i]; m = median(arr, nr[k]); return m == "n/a" ? m : sprintf("%.2f", m) }
/^RIG-ATTEMPT/ { n = 0; delete nr; delete r; delete ms; delete rss; failed = 0 }
row($0, "boot") {
    i = val($0, "round"); t = val($0, "tool")
    ms[i, t] = ran($0) ? val($0, "init_ms") : "fail"
    rss[i, t] = val($0, "rss_kb")
    if (i > n) n = i
}
END {
    print "Boot to L2 /init (wall ms inside L1, from fork to the first line of /init), Linux " kver
    print "guest, 2 vCPUs, 512 MiB, same initramfs and command line; alternated runs after one warm-up."
    print "bz = the bzImage; pvh = the same kernel as ELF vmlinux through its PVH entry."
    print ""
    print "| round | vmm bz | qemu bz | vmm pvh | qemu pvh | vmm bz / qemu bz | vmm pvh / qemu bz | vmm pvh / qemu pvh | vmm RSS KiB | qemu RSS KiB |"
    print "|---|---|---|---|---|---|---|---|---|---|"
    ns = 0
    for (i = 1; i <= n; i++) {
        v = ms[i, "vmm"]; q = ms[i, "qemu"]; vp = ms[i, "vmm-pvh"]; qp = ms[i, "qemu-pvh"]
        vr = rss[i, "vmm-pvh"]
        if (vr ~ /^[0-9]+$/) rs[++ns] = vr
        printf "| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", i, v, q, vp, qp,
            ratio(v, q, "bz"), ratio(vp, q, "best"), ratio(vp, qp, "pvh"), vr, rss[i, "qemu"]
    }
    print ""
    printf "Medians: vmm bz / qemu bz %s; vmm pvh / qemu bz %s; vmm pvh / qemu pvh %s (%d rounds).\n", med("bz"), med("best"), med("pvh"), n
    printf "Median vmm RSS outside guest RAM at guest init: %s KiB.\n", median(rs, ns)
    if (failed) printf "\n%d run(s) failed: see their RIG-ROW lines (stderr).\n", failed
    exit (failed > 0)
}' "$raw" || rc=1
exit "$rc"
