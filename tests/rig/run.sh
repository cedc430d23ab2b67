#!/usr/bin/env bash
# The rig's L0 harness: tests/rig/run.sh [SCENARIOS]   (default boot,reboot,mem4g,qemu-boot)
#
# Installs prerequisites (setup.sh), builds the initramfs (build.sh; VMM_BIN defaults to
# <repo>/target/release/vmm), then boots L0 = QEMU/TCG with the emulated host L1, which runs
# the scenarios (l1-init) with KVM nested inside it. Prints the RIG-* lines to stdout as they
# come (all other output goes to stderr or tests/rig/out/console-<n>.log).
# Scenarios print facts, not verdicts (tests/rig/l1/lib.sh; the Rust tests in tests/e2e judge
# them): exit 0 only if every requested scenario ran to its end (RIG-RESULT ... ok=1).
#
# L1 itself can freeze under TCG nesting (shared/RIG.md): a console silence watchdog and an
# outer time budget catch it, the L0 monitor's `info registers` shows where L1 was, and the
# scenarios without a result are rerun once in a fresh L0. A vmm that hangs is NOT that: L1
# stays alive (it prints RIG-L1-ALIVE every 20 s) and its own timeout stops the vmm, which
# the run's facts report (l1_timeout=1).
#
# Env knobs: VMM_BIN, VMM2_BIN and CH_BIN (a second vmm build and a cloud-hypervisor binary to
# put in L1, optional), RIG_SILENCE_S (180), RIG_L1_APPEND (extra L1 kernel args, e.g.
# rig.qemu_machine=pc), RIG_L0_MEM (6G).
set -euo pipefail

RIG=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$RIG/../.." && pwd)
OUT=$RIG/out
SCENARIOS=${1:-boot,reboot,mem4g,qemu-boot}
export VMM_BIN=${VMM_BIN:-$ROOT/target/release/vmm}
SILENCE_S=${RIG_SILENCE_S:-180}
# 6G: the mem4g scenario gives a 4 GiB guest to vmm inside L1, and L1 keeps the ~75 MiB
# initramfs in RAM; L0 memory is only backed when touched, so this costs nothing up front.
L0_MEM=${RIG_L0_MEM:-6G}

mkdir -p "$OUT"
# One rig at a time: runs share out/ (cargo test and a manual run must not interleave).
exec 9>"$OUT/.lock"
flock 9

"$RIG/setup.sh" >&2
"$RIG/build.sh" >&2
KVER=$(cat "$OUT/kver")
rm -f "$OUT"/console-*.log

# The NVMe disk behind L1's 00:04.0 (content irrelevant; later VFIO scenarios use the device).
# Random content, so the vfio-nvme scenario can check what L2 reads against this checksum.
if [ ! -s "$OUT/nvme.img" ] || [ "$(head -c 4096 "$OUT/nvme.img" | tr -d '\0' | wc -c)" = 0 ]; then
    head -c 16M /dev/urandom >"$OUT/nvme.img"
fi
NVME_SUM=$(sha256sum "$OUT/nvme.img" | cut -d' ' -f1)
# GPU-class scenarios (gpu-*): their L0 devices, only when one of them runs (l0-gpu.sh).
# shellcheck source=tests/rig/l0-gpu.sh
. "$RIG/l0-gpu.sh"
gpu_l0_prepare "$SCENARIOS"

now() { date +%s; }

# Monitor sockets live in a short /tmp dir: a unix socket path must fit in 108 bytes, and a
# checkout path may not. L0 must not outlive us (e.g. cargo test interrupted).
SOCKDIR=$(mktemp -d /tmp/rig-mon.XXXXXX)
L0_PID=
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
    if [ -n "$L0_PID" ]; then kill "$L0_PID" 2>/dev/null || true; fi
    rm -rf "$SOCKDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Time budget for one L0 run, in seconds: L1 boot plus, per L2 boot, the L1-side bound of one
# L2 run (150 s) and some slack. bench-N boots L2 up to 5N+3 times (with Cloud Hypervisor).
budget_for() {
    local total=120 s
    for s in $(echo "$1" | tr ',' ' '); do
        case "$s" in
            bench-dev-*) total=$((total + 170 * (12 * ${s#bench-dev-} + 3))) ;;
            hp-bench-*) total=$((total + 400 + 120 * (${s#hp-bench-} + 1))) ;;
            hp-cycles-*) total=$((total + 200 + 40 * ${s#hp-cycles-})) ;;
            hp-cycles) total=$((total + 200 + 40 * 20)) ;;
            hp-edu | hp-nvme | hp-refuse | hp-group | hp-boot | hp-early) total=$((total + 400)) ;;
            hp-kill) total=$((total + 170 * 5)) ;;
            bench-*) total=$((total + 170 * (5 * ${s#bench-} + 3))) ;;
            soak-*) total=$((total + 60 * (${s#soak-} + 1))) ;;
            soak) total=$((total + 60 * 21)) ;;
            signals) total=$((total + 170 * 4)) ;;
            gpu-bench-*) total=$((total + 240 * (12 * ${s#gpu-bench-} + 2))) ;;
            gpu-rom | gpu-huge*) total=$((total + 340)) ;;
            *) total=$((total + 170)) ;;
        esac
    done
    echo "$total"
}

# RIG lines worth showing on stdout (L2 console and kernel noise stay in the log).
SHOW='^RIG-(L1-INIT|L1-INFO|L1-ERROR|SCENARIO|ROW|TEXT|RESULT|DONE)'
# RIG_SHOW_ALL=1 (tests/rig/demo): the whole console, L2 guest included.
[ "${RIG_SHOW_ALL:-0}" = 1 ] && SHOW=.

# boot_l0 N SCENARIOS: one L0 run; console in console-N.log. Sets L0_END to
# done (RIG-DONE seen), frozen (watchdog/budget fired) or exited (L0 ended without RIG-DONE).
boot_l0() {
    local n=$1 scen=$2 log=$OUT/console-$1.log sock=$SOCKDIR/monitor-$1.sock
    local budget start last_out size last_size=-1 shown=0 lines pid t booted=0
    budget=$(budget_for "$scen")
    rm -f "$sock" "$log"
    : >"$log"
    echo "RIG-L0-START run=$n scenarios=$scen budget_s=$budget"
    start=$(now)
    # Device list as in shared/RIG.md (PCI layout of L1), kept for the VFIO scenarios.
    qemu-system-x86_64 -accel tcg -cpu max -smp 1 -m "$L0_MEM" -M q35 \
        -device intel-iommu,intremap=on \
        -device edu \
        -drive if=none,id=nv0,file="$OUT/nvme.img",format=raw -device nvme,drive=nv0,serial=x \
        -device pci-bridge,id=br1,chassis_nr=1 -device edu,bus=br1,addr=1 -device edu,bus=br1,addr=2 \
        -device virtio-rng-pci,iommu_platform=on,disable-legacy=on "${GPU_L0_ARGS[@]}" \
        -kernel "/boot/vmlinuz-$KVER" -initrd "$OUT/l1-initrd.cpio" \
        -append "console=ttyS0 panic=-1 quiet intel_iommu=on rig.scenarios=$scen rig.nvme_sum=$NVME_SUM $GPU_L1_APPEND ${RIG_L1_APPEND:-}" \
        -nographic -no-reboot -monitor "unix:$sock,server,nowait" \
        </dev/null >"$log" 2>&1 &
    pid=$!
    L0_PID=$pid
    last_out=$start
    L0_END=exited
    while :; do
        sleep 1
        t=$(now)
        # Print complete new lines that match; wc -l counts only newline-terminated lines.
        lines=$(wc -l <"$log")
        if [ "$lines" -gt "$shown" ]; then
            sed -n "$((shown + 1)),${lines}p" "$log" | tr -d '\r' | grep -E "$SHOW" || true
            if [ "$booted" = 0 ] && sed -n "$((shown + 1)),${lines}p" "$log" | grep RIG-L1-INIT >/dev/null; then
                booted=1
                echo "RIG-L0-L1-BOOTED run=$n wall_s=$((t - start))"
            fi
            shown=$lines
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            break
        fi
        size=$(stat -c %s "$log")
        if [ "$size" != "$last_size" ]; then
            last_size=$size
            last_out=$t
        fi
        if [ $((t - last_out)) -ge "$SILENCE_S" ] || [ $((t - start)) -ge "$budget" ]; then
            local why=silence
            [ $((t - last_out)) -ge "$SILENCE_S" ] || why=budget
            local regs
            regs=$(echo "info registers" | socat -T 3 - "UNIX-CONNECT:$sock" 2>&1 | tr -d '\r' || true)
            local rip
            rip=$(echo "$regs" | grep -o 'RIP=[0-9a-f]*' | head -n 1 || true)
            echo "RIG-L1-FROZEN run=$n reason=$why after_s=$((t - start)) silent_s=$((t - last_out)) ${rip:-RIP=?}"
            {
                echo "=== RIG-L1-FROZEN: info registers ==="
                echo "$regs"
            } | tee -a "$log" >&2
            echo quit | socat -T 2 - "UNIX-CONNECT:$sock" >/dev/null 2>&1 || true
            sleep 2
            kill "$pid" 2>/dev/null || true
            L0_END=frozen
            break
        fi
    done
    wait "$pid" 2>/dev/null || true
    L0_PID=
    if [ "$L0_END" != frozen ] && tr -d '\r' <"$log" | grep "^RIG-DONE" >/dev/null; then
        L0_END="done"
    fi
    if [ "$L0_END" = exited ]; then
        # L1 panicked/rebooted or L0 itself died: show how it ended.
        echo "=== L0 ended without RIG-DONE; last console lines ($log) ===" >&2
        tail -n 30 "$log" | tr -d '\r' >&2
    fi
    echo "RIG-L0-END run=$n status=$L0_END wall_s=$(($(now) - start))"
}

# Scenarios of $1 (comma list) that have no RIG-RESULT line in console log $2.
missing_in() {
    local s out=
    for s in $(echo "$1" | tr ',' ' '); do
        if ! tr -d '\r' <"$2" | grep "^RIG-RESULT scenario=$s " >/dev/null; then
            out=${out:+$out,}$s
        fi
    done
    echo "$out"
}

declare -A RESULT
collect() {
    local line s
    while IFS= read -r line; do
        s=${line#RIG-RESULT scenario=}
        s=${s%% *}
        RESULT[$s]=$line
    done < <(tr -d '\r' <"$1" | grep '^RIG-RESULT scenario=' || true)
}

boot_l0 1 "$SCENARIOS"
collect "$OUT/console-1.log"
missing=$(missing_in "$SCENARIOS" "$OUT/console-1.log")
why=$L0_END
if [ -n "$missing" ] && [ "$L0_END" = frozen ]; then
    # Once, in a fresh L0: L1 freezing is the emulated host's fault, not the scenario's.
    echo "RIG-ATTEMPT n=2 scenarios=$missing"
    boot_l0 2 "$missing"
    collect "$OUT/console-2.log"
    missing=$(missing_in "$missing" "$OUT/console-2.log")
    why=$L0_END
fi

gpu_l0_report "$SCENARIOS"
rc=0
for s in $(echo "$SCENARIOS" | tr ',' ' '); do
    if [ -z "${RESULT[$s]:-}" ]; then
        case "$why" in
            frozen) r=l1-frozen ;;
            *) r=l1-ended-early ;;
        esac
        RESULT[$s]="RIG-RESULT scenario=$s ok=0 reason=$r"
        echo "${RESULT[$s]}"
    fi
    case "${RESULT[$s]}" in
        *" ok=1"*) ;;
        *) rc=1 ;;
    esac
done
echo "RIG-SUMMARY ok=$((1 - rc)) scenarios=$SCENARIOS"
exit "$rc"
