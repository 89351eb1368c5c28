#!/usr/bin/env bash
# Checks that archives written by `hexzd pack` open in the reference hexz 0.8.2 CLI: `hexz show`
# accepts them and `hexz extract` reproduces the input byte for byte. LZ4 and Zstd, several
# index pages, --aux, a one-level --base chain, and --encrypt.
#
# Not part of CI (building hexz takes minutes). Build the reference once with:
#   cargo install hexz-cli --version 0.8.2 --no-default-features \
#       --features server,compression-zstd,encryption,signing --root /opt/hexz
# then run:  HEXZ=/opt/hexz/bin/hexz scripts/hexz-compat.sh
set -euo pipefail
cd "$(dirname "$0")/.."
HEXZ=${HEXZ:-$(command -v hexz || echo /opt/hexz/bin/hexz)}
[ -x "$HEXZ" ] || { echo "SKIP: reference hexz CLI not found (set HEXZ=...)"; exit 0; }
cargo build -q --release
B=$PWD/target/release/hexzd
F=$PWD/tests/data/hexz-0.8.2
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
cd "$w"

head -c 3000000 /dev/urandom > rnd.bin
(cat "$F/mixed.img"; head -c 500000 /dev/zero; cat "$F/mixed.img" rnd.bin) > in.img
cp in.img child.img
printf 'CHANGED' | dd of=child.img bs=1 seek=100000 conv=notrunc 2>/dev/null
echo -n "compat-password" > pw

fail=0
check() { # name archive expected [env...]
    local name=$1 archive=$2 expected=$3; shift 3
    rm -f out.img
    if ! env "$@" "$HEXZ" show "$archive" > /dev/null 2>&1; then
        echo "FAIL $name: hexz show refused it"; fail=1; return
    fi
    if env "$@" "$HEXZ" extract "$archive" out.img > /dev/null 2>&1 && cmp -s out.img "$expected"; then
        echo "PASS $name"
    else
        echo "FAIL $name: hexz extract differs"; fail=1
    fi
}
"$B" pack in.img lz4.hxz 2>/dev/null;                           check "lz4" lz4.hxz in.img
"$B" pack in.img zstd.hxz --compression zstd 2>/dev/null;       check "zstd" zstd.hxz in.img
"$B" pack in.img pages.hxz --block-size 512 2>/dev/null;        check "4 index pages (512-byte blocks)" pages.hxz in.img
"$B" pack in.img aux.hxz --aux "$F/vm/memory" 2>/dev/null;      check "main + aux" aux.hxz in.img
"$B" pack child.img thin.hxz --base lz4.hxz 2>/dev/null;        check "thin, one level" thin.hxz child.img
"$B" pack in.img enc.hxz --encrypt --password-file pw 2>/dev/null
check "encrypted lz4" enc.hxz in.img HEXZ_PASSWORD=compat-password
"$B" pack in.img encz.hxz --encrypt --password-file pw --compression zstd 2>/dev/null
check "encrypted zstd" encz.hxz in.img HEXZ_PASSWORD=compat-password
exit "$fail"
