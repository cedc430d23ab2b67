# shellcheck shell=sh
# shellcheck disable=SC2034 # DEVS, L2_ARGS: read by lib.sh run_l2
# Hotplug scenarios (tests/e2e/rig_hotplug.rs): vmm runs with --api-socket and no --device,
# its guest (l2-init's hotplug action) starts with no passthrough device, and devices are
# added and removed through the API while it runs; the guest does nothing to get them (its
# acpiphp scans the slots vmm announces) and reports what comes and goes (RIG-HP-* lines)
# and what its drivers saw (edu_test's EDU-RESULT lines, the NVMe checksum).
# Facts: the API's answers (statuses, `vmm remote`'s stdout and stderr, raw HTTP bodies),
# the guest's lines, exit statuses, L1's drivers, vmm's open files and pinned pages; the
# benchmark's timings (hp-bench-N, tests/rig/bench-hotplug.sh) come from rigio's RIG-AT
# lines, all on L1's monotonic clock.

# hotplug_scenario NAME: runs NAME if it is a hotplug scenario, else returns 1.
hotplug_scenario() {
    case "$1" in
        hp-edu) hp_edu ;;
        hp-nvme) hp_nvme ;;
        hp-cycles) hp_cycles 20 ;;
        hp-cycles-*) hp_cycles "${1#hp-cycles-}" ;;
        hp-group) hp_group ;;
        hp-boot) hp_boot ;;
        hp-early) hp_early ;;
        hp-refuse) hp_refuse ;;
        hp-kill) hp_kill ;;
        hp-bench-*) hp_bench "${1#hp-bench-}" ;;
        *) return 1 ;;
    esac
    return 0
}

HP_API=/tmp/hp-api.sock
HP_QMP=/tmp/hp-qmp.sock
HP_EDU=0000:00:03.0
HP_NVME=0000:00:04.0

# hp_start LOG EDU-ARGS [VMM-ARGS...]: vmm with --api-socket and no device in the background,
# its guest the hotplug one with edu_test's parameters EDU-ARGS (a+b); HP_LOG, HP_PID, and
# HELD (1: the guest got to its watcher within 150 s).
hp_start() {
    HP_LOG=$1
    hp_edu_args=$2
    shift 2
    rm -f "$HP_API"
    [ -n "${VMM_LOG:-}" ] && export RUST_LOG="$VMM_LOG"
    bg_vmm "$HP_LOG" --kernel /l2/vmlinuz --initramfs /l2/initrd.cpio.gz \
        --cmdline "console=ttyS0 ${L2_QUIET_DEFAULT:-quiet} panic=-1 rig.action=hotplug rig.edu=$hp_edu_args" \
        --memory 512M --timeout 1200 --api-socket "$HP_API" "$@"
    HP_PID=$BG_PID
    HELD=$(held "$HP_LOG")
}

# hp_qemu_start LOG EDU-ARGS: QEMU (-M pc: ACPI PCI hotplug on its root bus, as vmm) with a
# QMP socket and no device, the same guest; HP_QLOG, HP_QPID, HELD.
hp_qemu_start() {
    HP_QLOG=$1
    rm -f "$HP_QMP"
    qemu-system-x86_64 -enable-kvm -cpu host -M pc -m 512M -smp 1 -nodefaults -nographic \
        -serial stdio -no-reboot -kernel /l2/vmlinuz -initrd /l2/initrd.cpio.gz \
        -append "console=ttyS0 ${L2_QUIET_DEFAULT:-quiet} panic=-1 rig.action=hotplug rig.edu=$2" \
        -qmp "unix:$HP_QMP,server=on,wait=off" </dev/null >"$HP_QLOG" 2>&1 &
    HP_QPID=$!
    HELD=$(held "$HP_QLOG")
}

# hp_mark: what the guest prints from now on is what hp_since and hp_wait look at.
hp_mark() {
    HP_MARK=$(stat -c %s "$HP_LOG")
}

# hp_since PATTERN: the parts of the console lines since hp_mark that match PATTERN, from
# PATTERN on (the kernel's copies of edu_test's lines are timestamped).
hp_since() {
    tail -c +$((HP_MARK + 1)) "$HP_LOG" | tr -d '\r' | grep -o "$1.*"
}

# hp_wait PATTERN SECS: 1 when a console line since hp_mark matched PATTERN within SECS, else 0.
hp_wait() {
    if rigio mark "$HP_LOG" "$HP_MARK" wait "$HP_LOG" "$1" "$2" >/dev/null; then
        echo 1
    else
        echo 0
    fi
}

# hp_wait_n PATTERN N SECS: 1 when N console lines since hp_mark matched PATTERN within SECS,
# else 0.
hp_wait_n() {
    i=0
    while [ "$(hp_since "$1" | wc -l)" -lt "$2" ]; do
        if [ "$i" -ge $(($3 * 2)) ]; then
            echo 0
            return
        fi
        usleep 500000
        i=$((i + 1))
    done
    echo 1
}

# hp_remote VERB [ARG]: `vmm remote` on the API socket (bounded by 120 s); R_RC, R_OUT, and
# its stderr in /tmp/hp-r.err.
hp_remote() {
    timeout 120 vmm remote --api-socket "$HP_API" "$@" </dev/null >/tmp/hp-r.out 2>/tmp/hp-r.err
    R_RC=$?
    R_OUT=$(cat /tmp/hp-r.out)
}

# hp_remote_texts KEY: the last hp_remote's stdout and stderr as texts KEY and KEY-err.
hp_remote_texts() {
    texts "$1" </tmp/hp-r.out
    texts "$1-err" </tmp/hp-r.err
}

# hp_request NAME METHOD PATH BODY: one raw HTTP request (rigio http; BODY "-" none, "@FILE" a
# file's bytes): a row of table request (name, status: none when no answer came,
# write_failed), the body sent as text sent-NAME (unless a file) and the answer's as body-NAME.
hp_request() {
    case "$4" in @*) ;; *) text "sent-$1" "$4" ;; esac
    rigio connect "$HP_API" http "$2" "$3" "$4" readall 60 >/tmp/hp-http.out 2>/dev/null
    hp_answer "$1" /tmp/hp-http.out
}

# hp_answer NAME FILE: the HTTP answer in FILE as hp_request reports it (write_failed=1: the
# VMM closed the connection while the request was still being sent).
hp_answer() {
    st=$(tr -d '\r' <"$2" | sed -n 's/^HTTP\/1\.1 \([0-9]*\).*/\1/p' | head -n 1)
    wf=0
    grep -q '^RIG-AT name=write-failed' "$2" && wf=1
    row request "name=$1 status=${st:-none} write_failed=$wf"
    tr -d '\r' <"$2" | sed '1,/^$/d' | grep -v '^RIG-AT ' | texts "body-$1"
}

# hp_wait_exit SECS: waits up to SECS for vmm to end (then kill -9, HP_KILLED=1); STATUS.
hp_wait_exit() {
    i=0 HP_KILLED=0
    while kill -0 "$HP_PID" 2>/dev/null && [ "$i" -lt $(($1 * 5)) ]; do
        usleep 200000
        i=$((i + 1))
    done
    if kill -0 "$HP_PID" 2>/dev/null; then
        kill -9 "$HP_PID"
        HP_KILLED=1
    fi
    wait "$HP_PID"
    STATUS=$?
    hp_dump "$HP_LOG"
}

# hp_dump LOG: with rig.vmm_log or rig.l2_debug, a background VMM's whole output into the
# console log (prefixed, so that no line of it reads as a fact).
hp_dump() {
    if [ -n "${VMM_LOG:-}" ] || [ -n "$L2_QUIET_DEFAULT" ]; then
        tr -d '\r' <"$1" | sed "s|^|hp-log $1: |"
    fi
}

# hp_fds: how many files the vmm has open.
hp_fds() {
    find "/proc/$HP_PID/fd" -mindepth 1 2>/dev/null | wc -l
}

# hp_fd_texts KEY: what the vmm's open files are (their links, sorted), as texts KEY.
hp_fd_texts() {
    for f in "/proc/$HP_PID/fd"/*; do readlink "$f"; done | sed 's/[0-9][0-9]*\]$/N]/' | sort | texts "$1"
}

# hp_prefixed PREFIX "K=V ...": the facts with PREFIX before each key.
hp_prefixed() {
    for kv in $2; do fact "$1${kv%%=*}" "${kv#*=}"; done
}

# The edu added to a running guest: its driver binds by itself and finds it working (ident,
# liveness, DMA, 1000 MSIs); vm.info lists it; removed, the guest's device is gone and a
# second vmm takes it at once (while the first runs on); then the power button ends the
# first guest. Facts: held, add_status, remove_status, probed, gone, second_* (the second
# vmm's run), power_status, status (the first vmm's exit), power_ms, killed; texts add,
# add-err, info, remove, remove-err, bound, gone, edu, edu-second, power.
hp_edu() {
    bind_vfio $HP_EDU
    hp_start /tmp/hp-edu.log irq_mode=msi+irqs=1000
    fact held "$HELD"
    hp_mark
    hp_remote add-device host=00:03.0,id=edu0
    fact add_status "$R_RC"
    hp_remote_texts add
    fact probed "$(hp_wait 'EDU-RESULT irq_mode=' 180)"
    hp_since 'RIG-HP-BOUND ' | texts bound
    hp_since 'EDU-RESULT ' | texts edu
    hp_remote info
    fact info_status "$R_RC"
    hp_remote_texts info
    hp_mark
    hp_remote remove-device edu0
    fact remove_status "$R_RC"
    hp_remote_texts remove
    fact gone "$(hp_wait 'RIG-HP-GONE ' 30)"
    hp_since 'RIG-HP-GONE ' | texts gone
    fact driver_after "$(drv_of $HP_EDU)"
    # A second vmm takes the device at once, the first one still running.
    DEVS=host=00:03.0
    run_l2 "$SCENARIO-second" vmm 1 512M edu
    hp_prefixed second_ "$RUN"
    edu_texts edu-second
    fact first_alive "$(kill -0 "$HP_PID" 2>/dev/null && echo 1 || echo 0)"
    # The power button: the guest powers off by itself.
    t0=$(ms_now)
    hp_remote power-button
    fact power_status "$R_RC"
    hp_wait_exit 60
    fact status "$STATUS"
    fact power_ms $(($(ms_now) - t0))
    fact killed "$HP_KILLED"
    guest_texts power '^RIG-L2-POWER-BUTTON' "$HP_LOG"
}

# The NVMe (MSI-X) added, its disk read, removed, twice; then managed=on: the NVMe starts on
# L1's nvme driver, moves to vfio-pci for the add and is back on nvme after the remove. Each
# round a row of table round (round, add, during: L1's driver while in the guest, nvme_sum,
# remove, gone, after); texts add-R, info-R. Facts: held, nvme_want, before (managed round),
# after, override; then managed=on once more and vm.shutdown with the NVMe in: last_add,
# last_during, last_sum, shutdown_status, status, last_after, last_override.
hp_nvme() {
    bind_vfio $HP_NVME
    fact nvme_want "$NVME_SUM"
    hp_start /tmp/hp-nvme.log irq_mode=none
    fact held "$HELD"
    hp_nvme_round 1 host=00:04.0,id=nvme0
    hp_nvme_round 2 host=00:04.0,id=nvme0
    bind_host $HP_NVME nvme
    fact before "$(drv_of $HP_NVME)"
    hp_nvme_round managed host=00:04.0,id=nvme0,managed=on
    fact after "$(drv_of $HP_NVME)"
    fact override "$(cat /sys/bus/pci/devices/$HP_NVME/driver_override)"
    # managed=on again, and vm.shutdown with the NVMe still in the guest: it is back on nvme
    # once vmm has ended.
    hp_mark
    hp_remote add-device host=00:04.0,id=nvme0,managed=on
    fact last_add "$R_RC"
    fact last_during "$(drv_of $HP_NVME)"
    hp_wait 'RIG-NVME sum=' 120 >/dev/null
    fact last_sum "$(hp_since 'RIG-NVME sum=' | head -n 1 | sed 's/RIG-NVME sum=\([0-9a-f]*\).*/\1/')"
    hp_remote shutdown
    fact shutdown_status "$R_RC"
    hp_wait_exit 60
    fact status "$STATUS"
    fact last_after "$(drv_of $HP_NVME)"
    fact last_override "$(cat /sys/bus/pci/devices/$HP_NVME/driver_override)"
    bind_vfio $HP_NVME
}

# hp_nvme_round ROUND SPEC: add SPEC as nvme0, the guest reads the disk, vm.info, remove.
hp_nvme_round() {
    hp_mark
    hp_remote add-device "$2"
    add=$R_RC
    hp_remote_texts "add-$1"
    during=$(drv_of $HP_NVME)
    hp_wait 'RIG-NVME sum=' 120 >/dev/null
    sum=$(hp_since 'RIG-NVME sum=' | head -n 1 | sed 's/RIG-NVME sum=\([0-9a-f]*\).*/\1/')
    hp_remote info
    hp_remote_texts "info-$1"
    hp_mark
    hp_remote remove-device nvme0
    remove=$R_RC
    hp_remote_texts "remove-$1"
    gone=$(hp_wait 'RIG-HP-GONE ' 30)
    row round "round=$1 add=$add during=$during nvme_sum=${sum:-none} remove=$remove gone=$gone after=$(drv_of $HP_NVME)"
}

# hp_cycles N: N add/remove cycles of the edu (100 MSIs each) in one guest. Each cycle a row
# of table cycle (i, add, probed, remove, gone, add_ms, remove_ms, fds: vmm's open files after
# the remove, pinned: pages pinned while the edu was in, pins_after: after the remove, both
# against pins0); texts edu-I, fds0 and fds_end (the files' links, inode numbers as N).
# Facts: cycles, held, fds0 and pins0 (before the first add), fds_end, pins_end, status
# (vm.shutdown).
hp_cycles() {
    bind_vfio $HP_EDU
    fact cycles "$1"
    hp_start /tmp/hp-cycles.log irq_mode=msi+irqs=100
    fact held "$HELD"
    fds0=$(hp_fds)
    pins0=$(pins)
    fact fds0 "$fds0"
    fact pins0 "$pins0"
    hp_fd_texts fds0
    k=1
    while [ "$k" -le "$1" ]; do
        hp_mark
        t0=$(ms_now)
        hp_remote add-device host=00:03.0,id=edu0
        add=$R_RC
        probed=$(hp_wait 'EDU-RESULT irq_mode=' 60)
        add_ms=$(($(ms_now) - t0))
        pinned=$(($(pins) - pins0))
        hp_since 'EDU-RESULT ' | texts "edu-$k"
        hp_mark
        t0=$(ms_now)
        hp_remote remove-device edu0
        remove=$R_RC
        gone=$(hp_wait 'RIG-HP-GONE ' 30)
        remove_ms=$(($(ms_now) - t0))
        row cycle "i=$k add=$add probed=$probed remove=$remove gone=$gone add_ms=$add_ms remove_ms=$remove_ms fds=$(hp_fds) pinned=$pinned pins_after=$(($(pins) - pins0))"
        k=$((k + 1))
    done
    fact fds_end "$(hp_fds)"
    fact pins_end "$(pins)"
    hp_fd_texts fds_end
    hp_remote shutdown
    hp_wait_exit 60
    fact status "$STATUS"
}

# The two edus of the bridge group (one IOMMU group, 01:01.0 and 01:02.0) and the edu of group
# 3 added one after the other (100 MSIs each in the probe), then removed one at a time: after
# each removal the guest probes the edus left again (their DMA and interrupts must still
# work: the group of a removed device stays in the container while another of its devices is
# in, and other groups are not disturbed); then 01:01.0 added again once the container is
# empty. Each step a row of table step (step, status, gone, reprobed: the edus left were
# probed again, pinned: pages pinned against pins0); texts add-ID (the answers), edu-STEP
# (the guest's edu lines since the step). Facts: held, pins0, status (vm.shutdown with
# 01:01.0 in), driver_after (L1's driver of 01:01.0 then), pins_end.
hp_group() {
    bind_vfio 0000:01:01.0 0000:01:02.0 $HP_EDU
    hp_start /tmp/hp-group.log irq_mode=msi+irqs=100
    fact held "$HELD"
    pins0=$(pins)
    fact pins0 "$pins0"
    hp_mark
    for dev in a=01:01.0 b=01:02.0 c=00:03.0; do
        hp_remote add-device "host=${dev#*=},id=${dev%%=*}"
        texts "add-${dev%%=*}" </tmp/hp-r.out
        row step "step=add-${dev%%=*} status=$R_RC gone=none reprobed=none pinned=$(($(pins) - pins0))"
    done
    fact probed "$(hp_wait_n 'EDU-RESULT irq_mode=' 3 240)"
    hp_since 'EDU-RESULT ' | texts edu-added
    left=2
    for id in a b c; do
        hp_mark
        hp_remote remove-device "$id"
        st=$R_RC
        gone=$(hp_wait 'RIG-HP-GONE ' 30)
        reprobed=$(hp_wait_n 'EDU-RESULT irq_mode=' "$left" 120)
        row step "step=remove-$id status=$st gone=$gone reprobed=$reprobed pinned=$(($(pins) - pins0))"
        hp_since 'EDU-RESULT ' | texts "edu-remove-$id"
        left=$((left - 1))
    done
    hp_mark
    hp_remote add-device host=01:01.0,id=a
    texts add-again </tmp/hp-r.out
    st=$R_RC
    probed=$(hp_wait 'EDU-RESULT irq_mode=' 120)
    row step "step=add-again status=$st gone=none reprobed=$probed pinned=$(($(pins) - pins0))"
    hp_since 'EDU-RESULT ' | texts edu-add-again
    # vm.shutdown with 01:01.0 still in the guest.
    hp_remote shutdown
    hp_wait_exit 60
    fact status "$STATUS"
    fact driver_after "$(drv_of 0000:01:01.0)"
    fact pins_end "$(pins)"
}

# A device given with --device at boot removed through the API (its id is its host address),
# then added again; then, the guest paused, removed (504: the guest cannot let go; the edu
# stays) and let go of late once resumed. Facts: held, info_status, remove_status, gone,
# add_status, probed, gone_late, status (vm.shutdown); rows of table request (pause,
# pause-again, remove-paused, resume, resume-again); texts edu-boot (the guest's edu lines at
# boot), info, gone, edu-again, info-paused, info-resumed, body-NAME.
hp_boot() {
    bind_vfio $HP_EDU
    hp_start /tmp/hp-boot.log irq_mode=msi+irqs=100 --device vfio-pci,host=00:03.0
    fact held "$HELD"
    tr -d '\r' <"$HP_LOG" | grep -o 'EDU-RESULT .*' | texts edu-boot
    hp_remote info
    fact info_status "$R_RC"
    hp_remote_texts info
    hp_mark
    hp_remote remove-device 0000:00:03.0
    fact remove_status "$R_RC"
    hp_remote_texts remove
    fact gone "$(hp_wait 'RIG-HP-GONE ' 30)"
    hp_since 'RIG-HP-GONE ' | texts gone
    hp_mark
    hp_remote add-device host=00:03.0,id=edu0
    fact add_status "$R_RC"
    hp_remote_texts add
    fact probed "$(hp_wait 'EDU-RESULT irq_mode=' 120)"
    hp_since 'EDU-RESULT ' | texts edu-again
    # Paused, the guest cannot let go: the remove is answered 504 and the edu stays; resumed,
    # the guest ejects it late and vmm releases it then.
    pause=/api/v1/vm.pause resume=/api/v1/vm.resume
    hp_request pause PUT $pause -
    hp_request pause-again PUT $pause -
    hp_mark
    hp_request remove-paused PUT /api/v1/vm.remove-device '{"id": "edu0"}'
    hp_remote info
    hp_remote_texts info-paused
    hp_request resume PUT $resume -
    hp_request resume-again PUT $resume -
    fact gone_late "$(hp_wait 'RIG-HP-GONE ' 30)"
    usleep 500000
    hp_remote info
    hp_remote_texts info-resumed
    hp_remote shutdown
    hp_wait_exit 60
    fact status "$STATUS"
}

# The edu added while the guest boots: at its first line (its interrupt controllers not set
# up yet) and once it has scanned its PCI bus but before its GED driver listens (the GED's
# interrupt then goes unheard). The guest shows its kernel log at the default level (the
# moments are found by its lines), and the NVMe is passed at boot so that guest RAM is pinned
# and the add is quick.
# Each a row of table early (at: the line waited for, seen, add: vmm remote's status, held:
# the guest reached its init, probed: its edu driver found the edu working, status:
# vm.shutdown's end).
hp_early() {
    bind_vfio $HP_EDU $HP_NVME
    for at in 'Linux version' 'PF_INET protocol family'; do
        HP_LOG=/tmp/hp-early.log
        rm -f "$HP_API"
        bg_vmm "$HP_LOG" --kernel /l2/vmlinuz --initramfs /l2/initrd.cpio.gz \
            --cmdline "console=ttyS0 panic=-1 rig.action=hotplug rig.edu=irq_mode=none" \
            --memory 512M --timeout 600 --api-socket "$HP_API" --device vfio-pci,host=00:04.0
        HP_PID=$BG_PID HP_MARK=0
        seen=$(hp_wait "$at" 120)
        hp_remote add-device host=00:03.0,id=edu0
        add=$R_RC
        held=$(held "$HP_LOG")
        probed=$(hp_wait 'EDU-RESULT dma=' 60)
        hp_remote shutdown
        hp_wait_exit 60
        row early "at=$(echo "$at" | tr ' ' '_') seen=$seen add=$add held=$held probed=$probed status=$STATUS"
    done
}

# Refused adds and bad requests, each answered with its status while the guest runs on; then
# the edu added (and added again, and another device under its id: refused) and removed (and
# removed again) to show that vmm and the guest still work.
# Rows of table request (name, status, write_failed); texts sent-NAME, body-NAME, edu. Facts:
# held, group (the bridge group's number, which the not-viable message names),
# oversize_bytes, alive (vmm still runs after the bad requests), probed, gone, status
# (vm.shutdown).
hp_refuse() {
    bind_vfio $HP_NVME 0000:01:01.0
    bind_to 0000:01:02.0 uio_pci_generic
    unbind 0000:00:02.0
    bind_vfio $HP_EDU
    fact group "$(group_of 0000:01:01.0)"
    hp_start /tmp/hp-refuse.log irq_mode=none
    fact held "$HELD"
    add=/api/v1/vm.add-device remove=/api/v1/vm.remove-device
    hp_request not-viable PUT $add '{"host": "01:01.0"}'
    hp_request not-bound PUT $add '{"host": "00:02.0"}'
    hp_request bad-json PUT $add '{"host": "00:03.0"'
    fact oversize_bytes 70000
    head -c 70000 /dev/zero | tr '\0' 'a' >/tmp/hp-big
    hp_request oversize PUT $add @/tmp/hp-big
    hp_request unknown-id PUT $remove '{"id": "nope"}'
    # A client that hangs up in the middle of its body; the next one is answered.
    rigio connect "$HP_API" send 'PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: 40\r\n\r\n{"host": ' \
        hangup >/dev/null 2>&1
    hp_request after-hangup GET /api/v1/vmm.ping -
    fact alive "$(kill -0 "$HP_PID" 2>/dev/null && echo 1 || echo 0)"
    hp_mark
    hp_request add PUT $add '{"host": "00:03.0", "id": "edu0"}'
    fact probed "$(hp_wait 'EDU-RESULT dma=' 120)"
    hp_since 'EDU-RESULT ' | texts edu
    hp_request already-in PUT $add '{"host": "00:03.0", "id": "edu1"}'
    hp_request same-id PUT $add '{"host": "00:04.0", "id": "edu0"}'
    hp_mark
    hp_request remove PUT $remove '{"id": "edu0"}'
    fact gone "$(hp_wait 'RIG-HP-GONE ' 30)"
    hp_request remove-again PUT $remove '{"id": "edu0"}'
    hp_request shutdown PUT /api/v1/vm.shutdown -
    hp_wait_exit 60
    fact status "$STATUS"
    bind_vfio 0000:01:02.0
}

# SIGTERM and kill -9 while a hot-add is pinning guest RAM and while a hot-remove waits for
# the guest; each case a row of table case (case, sig, status, reply: the HTTP status the
# client got, none when the connection closed first, pinning: pages pinned since the
# request when the signal went, sent_ms/kill_ms/answered_ms on L1's clock (answered: the
# client read its answer or the connection's end), pins_after against pins0, driver: L1's
# driver of the edu after); texts vmm-CASE; then a vmm boots with the edu (the run's facts,
# texts edu). Facts: pins0, pins_end (after that boot).
hp_kill() {
    bind_vfio $HP_EDU
    pins0=$(pins)
    fact pins0 "$pins0"
    for c in term-add kill-add term-remove kill-remove; do
        hp_kill_case "$c" "$pins0"
    done
    DEVS=host=00:03.0
    run_l2 "$SCENARIO" vmm 1 512M edu
    facts "$RUN"
    edu_texts
    fact pins_end "$(pins)"
}

# hp_kill_case CASE PINS0
hp_kill_case() {
    sig=TERM
    case "$1" in kill-*) sig=KILL ;; esac
    hp_start "/tmp/hp-$1.log" irq_mode=none
    case "$1" in
        *-add) path=/api/v1/vm.add-device body='{"host": "00:03.0", "id": "edu0"}' ;;
        *)
            hp_mark
            hp_remote add-device host=00:03.0,id=edu0
            hp_wait 'EDU-RESULT dma=' 120 >/dev/null
            path=/api/v1/vm.remove-device body='{"id": "edu0"}'
            ;;
    esac
    pins_before=$(pins)
    rigio connect "$HP_API" http PUT "$path" "$body" now sent readall 120 now answered \
        >/tmp/hp-kill.out 2>/dev/null &
    client=$!
    rigio wait /tmp/hp-kill.out 'name=sent' 30 >/dev/null
    case "$1" in
        *-add)
            # Into the add: guest RAM is being pinned for DMA.
            i=0
            while [ $(($(pins) - pins_before)) -lt 4096 ] && [ "$i" -lt 500 ]; do
                i=$((i + 1))
            done
            ;;
    esac
    pinning=$(($(pins) - pins_before))
    kill_ms=$(rigio now kill | sed 's/.*ms=//')
    kill -"$sig" "$HP_PID"
    hp_wait_exit 60
    wait "$client"
    sent_ms=$(sed -n 's/^RIG-AT name=sent ms=//p' /tmp/hp-kill.out)
    answered_ms=$(sed -n 's/^RIG-AT name=answered ms=//p' /tmp/hp-kill.out)
    st=$(tr -d '\r' </tmp/hp-kill.out | sed -n 's/^HTTP\/1\.1 \([0-9]*\).*/\1/p' | head -n 1)
    usleep 500000
    row case "case=$1 sig=$sig status=$STATUS killed=$HP_KILLED reply=${st:-none} pinning=$pinning sent_ms=${sent_ms:-none} kill_ms=${kill_ms:-none} answered_ms=${answered_ms:-none} pins_after=$(($(pins) - $2)) driver=$(drv_of $HP_EDU)"
    vmm_lines "vmm-$1" "$HP_LOG"
}

# hp_bench N: hot-add and hot-remove latency of the edu, vmm against QEMU (device_add and
# device_del over QMP), both guests running in this L1 and taking the device in turn: a
# warm-up round (0), then N rounds, vmm first. Each add or remove a row of table bench
# (round, tool, op, ok, ms: from the request to the guest driver's probe line (add) or to
# the answer (vmm's 204) / QEMU's DEVICE_DELETED event (remove), answer_ms: to the answer).
# Facts: held, qemu_held, status, qemu_status.
hp_bench() {
    bind_vfio $HP_EDU
    hp_start /tmp/hp-bench-vmm.log irq_mode=none
    fact held "$HELD"
    hp_qemu_start /tmp/hp-bench-qemu.log irq_mode=none
    fact qemu_held "$HELD"
    r=0
    while [ "$r" -le "$1" ]; do
        hp_bench_vmm "$r"
        hp_bench_qemu "$r"
        r=$((r + 1))
    done
    hp_remote shutdown
    hp_wait_exit 60
    fact status "$STATUS"
    rigio connect "$HP_QMP" expect '"QMP"' send '{"execute":"qmp_capabilities"}\n' \
        expect '"return"' send '{"execute":"quit"}\n' readall 30 >/dev/null 2>&1
    wait "$HP_QPID"
    fact qemu_status $?
    hp_dump "$HP_QLOG"
}

# hp_ms FILE FROM TO: milliseconds between two RIG-AT lines of FILE (none when one is missing).
hp_ms() {
    awk -v a="$2" -v b="$3" '$1 == "RIG-AT" && $2 == "name=" a { split($3, x, "="); s = x[2] }
        $1 == "RIG-AT" && $2 == "name=" b { split($3, x, "="); e = x[2] }
        END { if (s != "" && e != "") printf "%.1f\n", e - s; else print "none" }' "$1"
}

# hp_bench_row ROUND TOOL OP FILE RC: the row of one timed request.
hp_bench_row() {
    ok=0
    [ "$5" = 0 ] && ok=1
    row bench "round=$1 tool=$2 op=$3 ok=$ok ms=$(hp_ms "$4" req end) answer_ms=$(hp_ms "$4" req answered)"
}

hp_bench_vmm() {
    out=/tmp/hp-bench.out
    hp_mark
    rigio mark "$HP_LOG" connect "$HP_API" now req \
        http PUT /api/v1/vm.add-device '{"host": "00:03.0", "id": "edu0"}' readall 120 \
        now answered wait "$HP_LOG" 'EDU-RESULT dev=' 120 now end >$out 2>&1
    rc=$?
    grep -q '^HTTP/1.1 200' $out || rc=1
    hp_bench_row "$1" vmm add $out $rc
    hp_wait 'EDU-RESULT dma=' 60 >/dev/null
    sleep 1
    hp_mark
    rigio connect "$HP_API" now req http PUT /api/v1/vm.remove-device '{"id": "edu0"}' \
        readall 120 now answered now end >$out 2>&1
    rc=$?
    grep -q '^HTTP/1.1 204' $out || rc=1
    hp_bench_row "$1" vmm remove $out $rc
    hp_wait 'RIG-HP-GONE ' 30 >/dev/null
    sleep 1
}

hp_bench_qemu() {
    out=/tmp/hp-bench.out
    hello='{"execute":"qmp_capabilities"}\n'
    rigio mark "$HP_QLOG" connect "$HP_QMP" expect '"QMP"' send "$hello" expect '"return"' now req \
        send '{"execute":"device_add","arguments":{"driver":"vfio-pci","host":"0000:00:03.0","id":"edu0"}}\n' \
        expect '"return"|"error"' now answered wait "$HP_QLOG" 'EDU-RESULT dev=' 120 now end \
        >$out 2>&1
    rc=$?
    grep -q '"error"' $out && rc=1
    hp_bench_row "$1" qemu add $out $rc
    sleep 1
    rigio mark "$HP_QLOG" connect "$HP_QMP" expect '"QMP"' send "$hello" expect '"return"' now req \
        send '{"execute":"device_del","arguments":{"id":"edu0"}}\n' expect '"return"|"error"' \
        now answered expect DEVICE_DELETED 120 now end wait "$HP_QLOG" 'RIG-HP-GONE ' 30 \
        >$out 2>&1
    rc=$?
    grep -q '"error"' $out && rc=1
    hp_bench_row "$1" qemu remove $out $rc
    sleep 1
}

