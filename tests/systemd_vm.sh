#!/usr/bin/env bash
# `systemctl start hexzd` for real (issue 9 §4): builds the Debian package (`cargo deb`), boots
# a debootstrapped Debian 12 with systemd as PID 1 in the nbdvm VM (tools/nbdvm, `run.sh -R`),
# and runs tests/guest/systemd_vm.sh there: dpkg -i, systemctl start/reload/stop, curl, the
# kernel NBD client and a mount, the journal's priorities, the watchdog, and activation
# through hexzd-http.socket and hexzd-nbd.socket.
#
# The rootfs is debootstrapped once into $NBDVM_DIR/hexzd-sysd/base (~100 s and ~300 MB the
# first time; minbase plus systemd, udev, kmod, nbd-client, e2fsprogs, curl, procps) and
# copied for each run, because the guest writes to its root and every run must start clean.
# The guest's console (with `systemctl status hexzd` as it printed it) is kept in
# $NBDVM_DIR/hexzd-sysd/last-run.log.
#
# Exit status: 0 = passed or skipped (a "SKIP:" line says why), otherwise failed.
# HEXZD_REQUIRE_VM=1 turns a skip into a failure.
#
#   tests/systemd_vm.sh [run.sh options...]      e.g. -v, -t 1200
set -euo pipefail
NAME=systemd_vm
WHAT="systemd VM test"
. "$(dirname "${BASH_SOURCE[0]}")/vm_lib.sh"
SYSD="$NBDVM_DIR/hexzd-sysd"
BASE="$SYSD/base"
CARGO_DEB_VERSION=3.8.0
INCLUDE=systemd-sysv,udev,kmod,nbd-client,e2fsprogs,curl,procps,ca-certificates

[ "$(id -u)" = 0 ] || skip "needs root (debootstrap, and the rootfs keeps real ownership)"
need_vm

cd "$ROOT"

# The package.
if ! cargo deb --version 2> /dev/null | grep -q "$CARGO_DEB_VERSION"; then
    echo "systemd_vm: installing cargo-deb $CARGO_DEB_VERSION"
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --quiet
fi
cargo deb > /dev/null
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
DEB="$TARGET/debian/hexzd_${version}-1_amd64.deb"
[ -f "$DEB" ] || { echo "systemd_vm: FAIL: cargo deb made no $DEB"; exit 1; }

# The rootfs, once; a stamp marks a complete one (an interrupted debootstrap is redone).
if [ ! -f "$BASE.done" ] || [ "$(cat "$BASE.done")" != "$INCLUDE" ]; then
    if ! command -v debootstrap > /dev/null; then
        apt-cache show debootstrap > /dev/null 2>&1 || apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
    fi
    rm -rf "$BASE" "$BASE.done"
    mkdir -p "$SYSD"
    echo "systemd_vm: debootstrapping Debian 12 into $BASE (once; ~100 s)"
    debootstrap --variant=minbase --include="$INCLUDE" bookworm "$BASE" \
        http://deb.debian.org/debian > "$SYSD/debootstrap.log" 2>&1 ||
        { tail -n 20 "$SYSD/debootstrap.log"; echo "systemd_vm: FAIL: debootstrap failed"; exit 1; }
    # First-boot work that would otherwise run on every boot of a fresh copy (and take minutes
    # under TCG): the hwdb, ld.so.cache and journal catalog are current as installed.
    touch -r "$BASE/usr" "$BASE/etc/.updated" "$BASE/var/.updated"
    echo "$INCLUDE" > "$BASE.done"
fi

RUN="$(mktemp -d "$SYSD/run.XXXXXX")"
trap 'rm -rf "$RUN"' EXIT
cp -a "$BASE" "$RUN/rootfs"
mkdir -p "$RUN/data"
cp "$DEB" "$RUN/data/hexzd.deb"
cp demo/demo.hxz demo/demo.sha256 "$RUN/data/"

rc=0
"$NBDVM/run.sh" -t 900 -l "$RUN/console.log" "$@" -R "$RUN/rootfs" "$RUN/data" \
    "$ROOT/tests/guest/systemd_vm.sh" || rc=$?
cp "$RUN/console.log" "$SYSD/last-run.log" 2> /dev/null || true
case "$rc" in
    0) echo "systemd_vm: PASS (console: $SYSD/last-run.log)" ;;
    124) echo "systemd_vm: FAIL (VM time limit hit; console: $SYSD/last-run.log)" ;;
    125) echo "systemd_vm: FAIL (the VM ended without a status: boot failure or panic)" ;;
    *) echo "systemd_vm: FAIL (status $rc; console: $SYSD/last-run.log)" ;;
esac
exit "$rc"
