#!/usr/bin/env bash
# Kernel test of nbd-proxy mode and local attach (issue 10): builds hexzd, makes ext4 images
# with known files (mkfs.ext4 -d: no loop device or mount on the host), packs a full, a thin
# (--base) and an encrypted snapshot, and runs tests/guest/kernel_proxy.sh, then
# tests/guest/daemon_attach.sh (the daemon's [[attach]] entries), inside one boot of the
# nbdvm VM (tools/nbdvm), where hexzd drives /dev/nbdX itself. Exit status: 0 = passed or skipped (a
# "SKIP:" line says why), otherwise failed. HEXZD_REQUIRE_VM=1 turns a skip into a failure.
#
#   tests/kernel_proxy.sh [run.sh options...]     e.g. -v, -t 900
#   tests/kernel_proxy.sh --local                  no VM: run the guest script on this machine
#                                                  (root, nbd module; uses NBD_DEV, NBD_DEV2)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NBDVM="${NBDVM:-$ROOT/tools/nbdvm}"
NBDVM_DIR="${NBDVM_DIR:-/tmp/nbdvm}"
LOCAL=0
if [ "${1:-}" = --local ]; then
    LOCAL=1
    shift
fi

skip() {
    echo "SKIP: kernel nbd-proxy test: $*"
    if [ "${HEXZD_REQUIRE_VM:-0}" = 1 ]; then
        echo "FAIL: HEXZD_REQUIRE_VM=1"
        exit 1
    fi
    exit 0
}
if [ "$LOCAL" = 0 ]; then
    [ -x "$NBDVM/run.sh" ] || skip "nbdvm not found at $NBDVM"
    [ -f "$NBDVM_DIR/initramfs.cpio.gz" ] ||
        skip "nbdvm is not set up ($NBDVM_DIR/initramfs.cpio.gz is missing; run $NBDVM/setup.sh as root)"
    command -v qemu-system-x86_64 > /dev/null || skip "qemu-system-x86_64 is not installed (nbdvm setup.sh installs it)"
else
    [ "$(id -u)" = 0 ] || skip "--local needs root"
    modprobe nbd 2> /dev/null || [ -e "${NBD_DEV:-/dev/nbd0}" ] || skip "no nbd module on this kernel"
fi
command -v mkfs.ext4 > /dev/null && command -v debugfs > /dev/null || skip "mkfs.ext4 or debugfs is not installed (e2fsprogs)"

cd "$ROOT"
cargo build --quiet --bin hexzd
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/debug"

if [ "$LOCAL" = 1 ]; then
    DATA="$(mktemp -d "${TMPDIR:-/tmp}/hexzd-proxy.XXXXXX")"
else
    mkdir -p "$NBDVM_DIR"
    DATA="$(mktemp -d "$NBDVM_DIR/hexzd-proxy.XXXXXX")"
fi
trap 'rm -rf "$DATA"' EXIT

tree="$DATA/tree"
mkdir -p "$tree/sub/deep"
echo "hello from a hexzd snapshot" > "$tree/hello.txt"
head -c 1048576 /dev/urandom > "$tree/sub/random.bin"
head -c 262144 /dev/zero > "$tree/sub/deep/zeros.bin"
head -c 2000000 /dev/urandom | base64 > "$tree/sub/deep/text.b64"
(cd "$tree" && find . -type f | sort | xargs sha256sum) > "$DATA/base.sums"
mkfs.ext4 -q -F -L hexzd -d "$tree" "$DATA/base.img" 16M
rm -rf "$tree"
# The child differs from the base by one file written in place (debugfs), so most of its
# blocks are references to the parent.
cp "$DATA/base.img" "$DATA/child.img"
echo "only in the child snapshot" > "$DATA/child.txt"
debugfs -w -R "write $DATA/child.txt child.txt" "$DATA/child.img" > /dev/null 2>&1
{ cat "$DATA/base.sums"; (cd "$DATA" && sha256sum child.txt | sed 's|  child.txt$|  ./child.txt|'); } > "$DATA/child.sums"
rm "$DATA/child.txt"
echo "proxy-test-password" > "$DATA/password"
"$TARGET/hexzd" pack "$DATA/base.img" "$DATA/base.hxz" > /dev/null
"$TARGET/hexzd" pack "$DATA/child.img" "$DATA/thin.hxz" --base "$DATA/base.hxz" > /dev/null
"$TARGET/hexzd" pack "$DATA/base.img" "$DATA/enc.hxz" --encrypt --password-file "$DATA/password" > /dev/null
rm "$DATA/base.img" "$DATA/child.img"
cp "$TARGET/hexzd" "$DATA/hexzd"

# Both guest scripts in one boot: run.sh copies one script into the VM, which runs the two
# from the shared directory.
cp "$ROOT/tests/guest/kernel_proxy.sh" "$ROOT/tests/guest/daemon_attach.sh" "$DATA/"
cat > "$DATA/all.sh" << 'ALL_EOF'
dir=$1
st=0
sh "$dir/kernel_proxy.sh" "$dir" || st=1
sh "$dir/daemon_attach.sh" "$dir" || st=1
exit $st
ALL_EOF

rc=0
if [ "$LOCAL" = 1 ]; then
    sh "$DATA/all.sh" "$DATA" || rc=$?
else
    "$NBDVM/run.sh" -t 900 "$@" "$DATA" "$DATA/all.sh" /host || rc=$?
fi
case "$rc" in
    0) echo "kernel_proxy: PASS" ;;
    124) echo "kernel_proxy: FAIL (VM time limit hit)" ;;
    125) echo "kernel_proxy: FAIL (the VM ended without a status: boot failure or panic)" ;;
    *) echo "kernel_proxy: FAIL (status $rc)" ;;
esac
exit "$rc"
