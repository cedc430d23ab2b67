# Helpers shared by the bench-*.sh table makers (prepended to their awk programs).
# val(line, key): the value of key=value in a RIG-* line, "" when absent.
function val(line, key,    n, i, a, kv) {
    n = split(line, a, " ")
    for (i = 1; i <= n; i++) { split(a[i], kv, "="); if (kv[1] == key) return kv[2] }
    return ""
}
# median(arr, n): the median of arr[1..n] (sorts arr), "n/a" when empty.
function median(arr, n,    i, j, t) {
    for (i = 2; i <= n; i++) for (j = i; j > 1 && arr[j-1] > arr[j]; j--) { t = arr[j]; arr[j] = arr[j-1]; arr[j-1] = t }
    if (n == 0) return "n/a"
    return (n % 2) ? arr[(n+1)/2] : (arr[n/2] + arr[n/2+1]) / 2
}
