#!/usr/bin/env bash
# Boot-time benchmark, vmm against QEMU (and Cloud Hypervisor) in the same L1:
#   [CH_BIN=/path/to/cloud-hypervisor] tests/rig/bench-boot.sh [ROUNDS]
# Runs `run.sh bench-ROUNDS` (progress on stderr) and writes markdown tables to stdout, for
# docs/PERFORMANCE.md. init_ms is the wall time inside L1 from just before the VMM process is
# forked until the L2 guest's /init prints its first line (stamp.c); "up" is the guest
# kernel's own uptime at that line; RSS excludes guest RAM. With CH_BIN, Cloud Hypervisor
# (ch, on the ELF vmlinux) joins every round. RIG_L1_APPEND=rig.bench_tools=vmm-pvh+ch picks
# the tools (see tests/rig/README.md).
# Exits 1 when run.sh failed or any measured run failed (shown as "fail"; the tables are still
# printed from whatever rounds completed).
set -euo pipefail

RIG=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROUNDS=${1:-5}
raw=$(mktemp)
trap 'rm -f "$raw"' EXIT

rc=0
"$RIG/run.sh" "bench-$ROUNDS" | tee "$raw" >&2 || rc=$?

# Only the rounds of the last attempt count (run.sh reruns everything after an L1 freeze).
awk -v kver="$(cat "$RIG/out/kver" 2>/dev/null || echo '?')" -v load="$(cut -d' ' -f1-3 /proc/loadavg)" \
    "$(cat "$RIG/bench.awk")"'
# ratio of tools a and b in round i, kept for the median under key a "/" b
function ratio(a, b, i,    k) {
    k = a "/" b
    if (!num(ms[i, a]) || !num(ms[i, b]) || ms[i, b] == 0) return "n/a"
    rr[k, ++nr[k]] = ms[i, a] / ms[i, b]
    return sprintf("%.2f", ms[i, a] / ms[i, b])
}
# the median of column t of v (v[1..n, t]), numbers only
function colmed(v, t,    i, a, m) {
    m = 0
    for (i = 1; i <= n; i++) if (num(v[i, t])) a[++m] = v[i, t]
    return median(a, m)
}
function med(key, n, src,    i, arr, m) {
    for (i = 1; i <= n; i++) arr[i] = src[key, i]
    m = median(arr, n)
    return m
}
/^RIG-ATTEMPT/ { n = 0; nt = 0; delete ms; delete up; delete rss; delete seen; delete tools; failed = 0 }
row($0, "boot") {
    i = val($0, "round"); t = val($0, "tool")
    ok = ran($0)
    ms[i, t] = ok ? val($0, "init_ms") : "fail"
    up[i, t] = ok ? val($0, "up") : "fail"
    rss[i, t] = val($0, "rss_kb")
    if (!(t in seen)) { seen[t] = 1; tools[++nt] = t }
    if (i > n) n = i
}
END {
    # Ratios reported when both tools ran: vmm on the vmlinux against each anchor.
    np = 0
    split("vmm-pvh/ch vmm-pvh/qemu vmm-pvh/qemu-pvh vmm/qemu vmm/ch vmm-pvh/vmm2-pvh vmm2-pvh/ch vmm/vmm2", cand, " ")
    for (c = 1; c in cand; c++) {
        split(cand[c], ab, "/")
        if ((ab[1] in seen) && (ab[2] in seen)) pairs[++np] = cand[c]
    }
    print "Boot to L2 /init (wall ms inside L1, from fork to the first line of /init), Linux " kver
    print "guest, 2 vCPUs, 512 MiB, same initramfs and command line; alternated runs after one warm-up"
    print "per VMM. vmm, qemu: the bzImage; -pvh and ch: the same kernel as ELF vmlinux (PVH entry)."
    print "L0 load average at the end (1/5/15 min): " load "."
    print ""
    hdr = "| round"; sep = "|---"
    for (t = 1; t <= nt; t++) { hdr = hdr " | " tools[t]; sep = sep "|---" }
    for (p = 1; p <= np; p++) { hdr = hdr " | " pairs[p]; sep = sep "|---" }
    print hdr " |"; print sep "|"
    for (i = 1; i <= n; i++) {
        line = "| " i
        for (t = 1; t <= nt; t++) line = line " | " ms[i, tools[t]]
        for (p = 1; p <= np; p++) { split(pairs[p], ab, "/"); line = line " | " ratio(ab[1], ab[2], i) }
        print line " |"
    }
    line = "| median"
    for (t = 1; t <= nt; t++) line = line " | " colmed(ms, tools[t])
    for (p = 1; p <= np; p++) { x = med(pairs[p], nr[pairs[p]], rr); line = line " | " (x == "n/a" ? x : sprintf("%.2f", x)) }
    print line " |"
    print ""
    print "Guest kernel uptime at /init (s) and VMM RSS outside guest RAM at that moment (KiB):"
    print ""
    hdr = "| round"; sep = "|---"
    for (t = 1; t <= nt; t++) { hdr = hdr " | " tools[t] " up"; sep = sep "|---" }
    for (t = 1; t <= nt; t++) { hdr = hdr " | " tools[t] " RSS"; sep = sep "|---" }
    print hdr " |"; print sep "|"
    for (i = 1; i <= n; i++) {
        line = "| " i
        for (t = 1; t <= nt; t++) line = line " | " up[i, tools[t]]
        for (t = 1; t <= nt; t++) line = line " | " rss[i, tools[t]]
        print line " |"
    }
    line = "| median"
    for (t = 1; t <= nt; t++) line = line " | " colmed(up, tools[t])
    for (t = 1; t <= nt; t++) line = line " | " colmed(rss, tools[t])
    print line " |"
    printf "\n%d rounds.\n", n
    if (failed) printf "\n%d run(s) failed: see their RIG-ROW lines (stderr).\n", failed
    exit (failed > 0)
}' "$raw" || rc=1
exit "$rc"
