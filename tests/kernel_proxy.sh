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
NAME=kernel_proxy
WHAT="kernel nbd-proxy test"
. "$(dirname "${BASH_SOURCE[0]}")/vm_lib.sh"
LOCAL=0
if [ "${1:-}" = --local ]; then
    LOCAL=1
    shift
fi
if [ "$LOCAL" = 0 ]; then
    need_vm
else
    need_local_nbd
fi
command -v mkfs.ext4 > /dev/null && command -v debugfs > /dev/null || skip "mkfs.ext4 or debugfs is not installed (e2fsprogs)"

cd "$ROOT"
cargo build --quiet --bin hexzd
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/debug"

data_dir "$LOCAL"

tree="$DATA/tree"
make_tree "$tree" 2000000 "$DATA/base.sums"
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
cp "$ROOT/tests/guest/kernel_proxy.sh" "$ROOT/tests/guest/daemon_attach.sh" \
    "$ROOT/tests/guest/nbd_lib.sh" "$DATA/"
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
report "$rc"
