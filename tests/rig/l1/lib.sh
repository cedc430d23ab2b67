# shellcheck shell=sh
# shellcheck disable=SC2034 # STOP_RC, STOP_MS, RUN, LOG, RAW: read by the scenarios
# Helpers of the L1 scenarios, sourced by l1-init (/init of L1) from /rig/lib.sh.
#
# A scenario prints facts and never judges them: the verdicts live in tests/e2e/rig_*.rs
# (the bench tables judge the bench runs). What a scenario prints, on L1's console:
#   RIG-SCENARIO name=S uptime=U        it starts; facts of S printed before (an attempt that
#                                       froze) no longer count
#   RIG-ROW scenario=S table=T k=v ...  one row of table T (one per boot, signal, thread...)
#   RIG-TEXT scenario=S key=K TEXT      one line of text under K (an argument, a stderr line,
#                                       a guest result line), verbatim to the end of the line
#                                       except that \ is written \\ and CR is written \r
#   RIG-RESULT scenario=S ok=1 k=v ...  it ran to its end; its single-valued facts
#   RIG-RESULT scenario=S ok=0 reason=R ...  it could not run as designed (no-kvm, no-vmm,
#                                       setup, unknown-scenario); run.sh adds l1-frozen and
#                                       l1-ended-early for scenarios that printed no result
# Values in k=v are single words; "none" stands for a fact that could not be read.
#
# Globals a scenario may set before run_l2 (begin resets them): DEVS (device specs such as
# host=00:03.0), L2_ARGS (more L2 kernel words), VMM_EXTRA (more vmm arguments), L2_QUIET.

# --- facts ---

# begin NAME: a scenario starts.
begin() {
    SCENARIO=$1 FACTS='' BROKEN=''
    DEVS='' L2_ARGS='' VMM_EXTRA='' L2_QUIET=$L2_QUIET_DEFAULT
    echo "RIG-SCENARIO name=$1 uptime=$(cut -d' ' -f1 /proc/uptime)"
}

# fact KEY VALUE: a fact of the RIG-RESULT line ("none" when VALUE is empty).
fact() {
    FACTS="$FACTS $1=${2:-none}"
}

# facts "K=V ...": several facts at once (e.g. $RUN, the facts of the last run_l2).
facts() {
    FACTS="$FACTS $*"
}

# row TABLE "K=V ...": one RIG-ROW line.
row() {
    echo "RIG-ROW scenario=$SCENARIO table=$1 $2"
}

# texts KEY: every line of stdin as a RIG-TEXT line under KEY (awk ends the last line).
texts() {
    sed -e 's/\\/\\\\/g' -e "s/$CR/\\\\r/g" |
        awk -v p="RIG-TEXT scenario=$SCENARIO key=$1 " '{ print p $0 }'
}
CR=$(printf '\r')

# text KEY LINE: one RIG-TEXT line.
text() {
    printf '%s\n' "$2" | texts "$1"
}

# broken REASON: the scenario could not run as designed; its RIG-RESULT says ok=0.
broken() {
    BROKEN=${BROKEN:-$1}
}

# finish: the scenario's RIG-RESULT line.
finish() {
    if [ -n "$BROKEN" ]; then
        echo "RIG-RESULT scenario=$SCENARIO ok=0 reason=$BROKEN$FACTS"
    else
        echo "RIG-RESULT scenario=$SCENARIO ok=1$FACTS"
    fi
}

# kv "k1=v1 k2=v2" k2 -> v2
kv() {
    for t in $1; do
        case "$t" in "$2="*) echo "${t#*=}"; return ;; esac
    done
}

# --- L2 runs ---

# run_l2 TAG TOOL(vmm|vmm-pvh|vmm2|vmm2-pvh|qemu|qemu-pvh|ch) CPUS MEM ACTION: boots L2 once
# under `timeout` (a hung VMM is reported, never retried). The -pvh tools boot the same kernel
# as an ELF vmlinux through its PVH entry (no decompression); the others boot the bzImage. ch
# is Cloud Hypervisor (in L1 only when build.sh had CH_BIN), always on the vmlinux; vmm2 a
# second vmm build (VMM2_BIN). rig.vmm_extra= and rig.ch_extra= add arguments to every run.
# Sets RUN to the run's facts:
#   status       the VMM's exit status (none: it never reported one)
#   l1_timeout   1 when L1's timeout had to stop the VMM (stamp_terminated)
#   cpus ram_kb memtotal_kb   what the guest saw (its RIG-L2 line; none: it never got there)
#   init_ms rss_kb            stamp's timing and VMM footprint at the guest's first line
#   up           the guest kernel's own uptime (s) at that line
#   end_ms       from the guest's last words (reboot: Power down) to the VMM's exit
# and LOG (its output, CR and rig.l2_times stamps removed) and RAW (as it came, for the tty
# scenario).
run_l2() {
    tag=$1 tool=$2 cpus=$3 mem=$4 action=$5
    # Same minimal L2 command line for vmm and QEMU; panic=-1 so a panicking L2 ends.
    l2cmd="console=ttyS0 $L2_QUIET panic=-1$L2_EXTRA rig.action=$action${L2_ARGS:+ $L2_ARGS}"
    devargs=''
    for d in $DEVS; do
        case "$tool" in
            vmm*) devargs="$devargs --device vfio-pci,$d" ;;
            qemu*) devargs="$devargs -device vfio-pci,$d" ;;
            ch) devargs="$devargs --device path=/sys/bus/pci/devices/0000:${d#host=}/" ;;
        esac
    done
    kernel=/l2/vmlinuz
    case "$tool" in *-pvh | ch) kernel=/l2/vmlinux ;; esac
    case "$tool" in
        vmm*)
            bin=${tool%-pvh}
            [ -x "/usr/bin/$bin" ] || broken "no-$bin"
            # rig.vmm_log=debug: vmm's startup profile on its stderr (in the console log).
            [ -n "${VMM_LOG:-}" ] && export RUST_LOG="$VMM_LOG"
            # shellcheck disable=SC2086 # device arguments, split on purpose
            set -- "$bin" --kernel $kernel --initramfs /l2/initrd.cpio.gz --cmdline "$l2cmd" \
                --memory "$mem" --cpus "$cpus" --timeout "$VMM_TIMEOUT" $devargs $VMM_EXTRA \
                $VMM_EXTRA_ALL
            ;;
        ch)
            [ -x /usr/bin/cloud-hypervisor ] || broken no-ch
            # shellcheck disable=SC2086 # device arguments, split on purpose
            set -- cloud-hypervisor --kernel $kernel --initramfs /l2/initrd.cpio.gz \
                --cmdline "$l2cmd" --memory "size=$mem" --cpus "boot=$cpus" --serial tty \
                --console off $devargs $CH_EXTRA_ALL
            ;;
        qemu*)
            # shellcheck disable=SC2086 # device arguments, split on purpose
            set -- qemu-system-x86_64 -enable-kvm -cpu host -M "$QEMU_MACHINE" -m "$mem" \
                -smp "$cpus" -nodefaults -nographic -serial stdio -no-reboot \
                -kernel $kernel -initrd /l2/initrd.cpio.gz -append "$l2cmd" $devargs ${QEMU_EXTRA:-}
            ;;
    esac
    RAW=/tmp/$tag.log
    LOG=$RAW.txt
    echo "RIG-RUN tag=$tag $*"
    # stdin from /dev/null: a VMM must not put L1's console into raw mode or read from it.
    # stamp exits 124 (and says stamp_terminated=1) when timeout stops it.
    (
        timeout -s TERM "$L2_TIMEOUT" stamp RIG-L2-INIT -- "$@" </dev/null 2>&1
        echo "RIG-RC rc=$?"
    ) | tee "$RAW"
    # Without the wall times rig.l2_times=1 puts in front (the facts are read at line start).
    tr -d '\r' <"$RAW" | sed 's/^ *[0-9]* | //' >"$LOG"
    l2=$(grep -o 'RIG-L2 cpus=.*' "$LOG" | tail -n 1)
    st=$(grep -o 'RIG-STAMP .*' "$LOG" | tail -n 1)
    ex=$(grep -o 'RIG-EXIT .*' "$LOG" | tail -n 1)
    rc=$(kv "$(grep -o 'RIG-RC .*' "$LOG" | tail -n 1)" rc)
    # stamp reports an outer timeout itself; without its RIG-EXIT line only timeout's 124
    # tells (a VMM's own --timeout ends with 124 too, but stamp reports that normally).
    killed=0
    if [ "$(kv "$ex" stamp_terminated)" = 1 ] || { [ -z "$ex" ] && [ "$rc" = 124 ]; }; then
        killed=1
    fi
    RUN="status=$(or_none "$(kv "$ex" status)") l1_timeout=$killed"
    for k in cpus ram_kb memtotal_kb; do RUN="$RUN $k=$(or_none "$(kv "$l2" $k)")"; done
    for k in init_ms rss_kb; do RUN="$RUN $k=$(or_none "$(kv "$st" $k)")"; done
    up=$(grep -o 'RIG-L2-INIT uptime=[0-9.]*' "$LOG" | head -n 1)
    RUN="$RUN up=$(or_none "${up#*=}") end_ms=$(or_none "$(kv "$ex" tail_ms)")"
}

# or_none VALUE: VALUE, or none when it is empty.
or_none() {
    echo "${1:-none}"
}

# guest_texts KEY PATTERN [FILE]: the lines of FILE (default: the last run's log), CR
# removed, that match PATTERN, as texts under KEY. Anchor result lines (^EDU-RESULT): the
# guest's init prints them at line start, the kernel's own console copies are timestamped.
guest_texts() {
    tr -d '\r' <"${3:-$LOG}" | grep "$2" | texts "$1"
}

# edu_texts [KEY [FILE]]: the edu driver's result lines (ident, liveness, DMA, interrupts),
# under KEY (default edu).
edu_texts() {
    guest_texts "${1:-edu}" '^EDU-RESULT ' "${2:-$LOG}"
}

# vmm_lines KEY FILE: vmm's own lines ("vmm: ...") in FILE, CR removed, under KEY.
vmm_lines() {
    guest_texts "$1" '^vmm: ' "$2"
}

# nvme_sum [FILE]: the checksum the guest read from the NVMe disk (none: it never did).
nvme_sum() {
    s=$(tr -d '\r' <"${1:-$LOG}" | grep -o 'RIG-NVME sum=[0-9a-f]*' | tail -n 1)
    or_none "${s#*=}"
}

# nvme_facts [FILE]: nvme_sum (what the guest read) and nvme_want (the image's checksum,
# from run.sh via rig.nvme_sum).
nvme_facts() {
    fact nvme_sum "$(nvme_sum "${1:-$LOG}")"
    fact nvme_want "$NVME_SUM"
}

# exits_of LOG: total vCPU exits vmm's userspace handled, from its --stats=json line.
exits_of() {
    grep -o '"exits":{[^}]*}' "$1" | tail -n 1 | grep -o ':[0-9]*' | tr -d ':' |
        awk '{ s += $1 } END { print s + 0 }'
}

# trapped_of LOG NAME: the accesses vmm's --stats=json line counts for device NAME (such as
# pio:acpi-pm), none when it names no such device.
trapped_of() {
    n=$(grep -o "\"$2\":[0-9]*" "$1" | tail -n 1)
    or_none "${n##*:}"
}

# --- vmm runs that are not run_l2 ---

# vmm_args ARGS...: the arguments vmm is about to get, one text each under arg (the tests
# parse them to build the message they expect).
vmm_args() {
    for a in "$@"; do text arg "$a"; done
}

# capture CMD...: runs CMD (stdin /dev/null); fact status; its stdout and stderr lines as
# texts under stdout and stderr.
capture() {
    "$@" </dev/null >/tmp/capture.out 2>/tmp/capture.err
    fact status $?
    texts stdout </tmp/capture.out
    texts stderr </tmp/capture.err
}

# refusal VMM-ARGS...: vmm with the L2 kernel and these arguments, which it must refuse
# before any guest runs: vmm_args and capture.
refusal() {
    set -- --kernel /l2/vmlinuz --initramfs /l2/initrd.cpio.gz --timeout 60 "$@"
    vmm_args "$@"
    capture vmm "$@"
}

# bg_vmm LOG VMM-ARGS...: vmm in the background (stdin /dev/null), output in LOG; BG_PID.
bg_vmm() {
    bg_log=$1
    shift
    rm -f "$bg_log"
    vmm "$@" </dev/null >"$bg_log" 2>&1 &
    BG_PID=$!
}

# wait_line FILE PATTERN SECS: waits until FILE has a line matching PATTERN; 1 on timeout.
wait_line() {
    wl_i=0
    while ! grep -q "$2" "$1" 2>/dev/null; do
        [ "$wl_i" -ge "$3" ] && return 1
        sleep 1
        wl_i=$((wl_i + 1))
    done
}

# held LOG: 1 when the guest of the background vmm reached its hold point (RIG-L2-HOLD)
# within 150 s, else 0.
held() {
    if wait_line "$1" RIG-L2-HOLD 150; then echo 1; else echo 0; fi
}

# stop_bg SIG: sends SIG to the background vmm and waits for it; sets STOP_RC and STOP_MS
# (from the signal to its end).
stop_bg() {
    stop_t0=$(ms_now)
    kill -"$1" "$BG_PID"
    wait "$BG_PID"
    STOP_RC=$?
    STOP_MS=$(($(ms_now) - stop_t0))
}

# vmm_check STATUS_KEY TEXTS_KEY ARGS...: `vmm check ARGS` (stdin /dev/null): its exit status
# as fact STATUS_KEY, every line it printed (the report, or a refusal) as texts TEXTS_KEY.
vmm_check() {
    vc_status=$1 vc_key=$2
    shift 2
    vmm check "$@" </dev/null >/tmp/check.txt 2>&1
    fact "$vc_status" $?
    texts "$vc_key" </tmp/check.txt
}

# --- L1 state ---

# bind_vfio DEV...: binds each device (full address) to vfio-pci, from whatever it had.
bind_vfio() {
    for d in "$@"; do
        bind_to "$d" vfio-pci
    done
}

# bind_to DEV DRIVER: driver_override + unbind + drivers_probe; a failure breaks the
# scenario (reason=setup).
bind_to() {
    dev=/sys/bus/pci/devices/$1
    [ -e "$dev/driver" ] && echo "$1" >"$dev/driver/unbind"
    echo "$2" >"$dev/driver_override"
    echo "$1" >/sys/bus/pci/drivers_probe
    bound "$1" "$2"
}

# bind_host DEV DRIVER: DEV back on its own driver as a host has it: no driver_override,
# probed by ID (checks that DRIVER took it).
bind_host() {
    dev=/sys/bus/pci/devices/$1
    echo >"$dev/driver_override"
    [ -e "$dev/driver" ] && echo "$1" >"$dev/driver/unbind"
    echo "$1" >/sys/bus/pci/drivers_probe
    bound "$1" "$2"
}

# unbind DEV: DEV on no driver, and no driver_override left (e1000e has no driver in L1).
unbind() {
    dev=/sys/bus/pci/devices/$1
    [ -e "$dev/driver" ] && echo "$1" >"$dev/driver/unbind"
    echo >"$dev/driver_override"
    bound "$1" none
}

# bound DEV DRIVER: breaks the scenario (reason=setup) unless DEV is on DRIVER (or none).
bound() {
    if [ "$(drv_of "$1")" != "$2" ]; then
        echo "RIG-L1-ERROR cannot bind $1 to $2"
        broken setup
    fi
}

# drv_of DEV: the driver bound to DEV, or none.
drv_of() {
    l=$(readlink "/sys/bus/pci/devices/$1/driver" 2>/dev/null) && basename "$l" || echo none
}

# group_of DEV: DEV's IOMMU group number.
group_of() {
    basename "$(readlink "/sys/bus/pci/devices/$1/iommu_group")"
}

# ms_now: L1 uptime in milliseconds.
ms_now() {
    awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime
}

# memfree_kb: MemFree after dropping the page cache (a leaked pinned page never comes back).
memfree_kb() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
    sed -n 's/^MemFree: *\([0-9]*\).*/\1/p' /proc/meminfo
}

# pins: pages pinned for DMA and not released (FOLL_PIN counters of /proc/vmstat; VFIO pins
# guest RAM this way). System-wide: other kernel users count too.
pins() {
    awk '/^nr_foll_pin_acquired / { a = $2 } /^nr_foll_pin_released / { r = $2 } END { print a - r }' /proc/vmstat
}
