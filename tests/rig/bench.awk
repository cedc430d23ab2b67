# Helpers shared by the bench-*.sh table makers (prepended to their awk programs).
# val(line, key): the value of key=value in a RIG-* line, "" when absent.
function val(line, key,    n, i, a, kv) {
    n = split(line, a, " ")
    for (i = 1; i <= n; i++) { split(a[i], kv, "="); if (kv[1] == key) return kv[2] }
    return ""
}
# row(line, table): whether line is a RIG-ROW of that table.
function row(line, table) {
    return line ~ /^RIG-ROW / && val(line, "table") == table
}
# ran(line): the verdict on one measured run (a RIG-ROW with the run's facts, l1/lib.sh
# run_l2): the VMM exited 0 by itself and the guest reached its init. Counts failures in
# `failed` (the table makers exit 1 when there are any).
function ran(line) {
    if (val(line, "status") == "0" && val(line, "l1_timeout") == "0" && val(line, "cpus") ~ /^[0-9]+$/) return 1
    failed++
    return 0
}
# median(arr, n): the median of arr[1..n] (sorts arr), "n/a" when empty.
function median(arr, n,    i, j, t) {
    for (i = 2; i <= n; i++) for (j = i; j > 1 && arr[j-1] > arr[j]; j--) { t = arr[j]; arr[j] = arr[j-1]; arr[j-1] = t }
    if (n == 0) return "n/a"
    return (n % 2) ? arr[(n+1)/2] : (arr[n/2] + arr[n/2+1]) / 2
}
# num(v): whether v is a positive number (not "fail", "none" or empty).
function num(v) {
    return v ~ /^[0-9]+(\.[0-9]+)?$/ && v + 0 > 0
}
