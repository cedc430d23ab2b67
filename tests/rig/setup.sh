#!/usr/bin/env bash
# Installs what the end-to-end rig needs (see shared/RIG.md for why each piece):
#  - qemu-system-x86 from bookworm-backports (QEMU 10): L0 emulator and the in-L1 reference VMM.
#    bookworm's 7.2 froze L1 for good under nesting; 10.x is much better.
#  - linux-image-amd64 / linux-headers-amd64 from plain bookworm (6.1): L1 and L2 kernel.
#    6.12 from backports boots L2 ~3x slower under this nesting.
#  - busybox-static, cpio, xz-utils: the initramfs builds; gcc + libc6-dev: the static stamp tool.
#  - socat: run.sh talks to L0's monitor socket (`info registers` when L1 freezes).
# Idempotent: exits quickly when everything is present. Works unattended (CI=true, no stdin).
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

have_all() {
    command -v qemu-system-x86_64 >/dev/null 2>&1 || return 1
    # Must be the backports QEMU (major >= 8), not bookworm's 7.2.
    local major
    major=$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p')
    [ "${major:-0}" -ge 8 ] || return 1
    compgen -G '/boot/vmlinuz-6.1.*' >/dev/null || return 1
    compgen -G '/lib/modules/6.1.*/kernel/arch/x86/kvm/kvm-amd.ko*' >/dev/null || return 1
    # Headers: later scenarios build out-of-tree test modules for the L2 kernel.
    compgen -G '/usr/src/linux-headers-6.1.*-amd64' >/dev/null || return 1
    [ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -x insmod >/dev/null || return 1
    # (grep without -q: an early exit would SIGPIPE the writer and fail under pipefail.)
    # busybox-static is the statically linked one; the dynamic "busybox" package would not run in L1.
    dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep "ok installed" >/dev/null || return 1
    local t
    for t in cpio xz gcc modprobe socat; do command -v "$t" >/dev/null 2>&1 || return 1; done
    [ -e /usr/lib/x86_64-linux-gnu/libc.a ] || return 1
    return 0
}

if have_all; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: rig prerequisites missing and not root; run as root (apt-get needed)" >&2
    exit 1
fi

# Add bookworm-backports using the mirror URI the machine already uses (no other network).
src=/etc/apt/sources.list.d/debian.sources
bp=/etc/apt/sources.list.d/rig-bookworm-backports.sources
# Only active source files count (*.list, *.sources; not e.g. *.disabled copies).
if ! cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
    2>/dev/null | grep -v '^ *#' | grep bookworm-backports >/dev/null; then
    uri=""
    if [ -f "$src" ]; then
        uri=$(awk '/^URIs:/ {print $2; exit}' "$src")
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list)
    fi
    uri=${uri:-http://deb.debian.org/debian}
    cat >"$bp" <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

apt-get update -q
apt-get install -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    -t bookworm-backports qemu-system-x86
apt-get install -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    linux-image-amd64 linux-headers-amd64 busybox-static cpio xz-utils gcc libc6-dev kmod socat

if ! have_all; then
    echo "setup.sh: prerequisites still missing after install" >&2
    exit 1
fi
