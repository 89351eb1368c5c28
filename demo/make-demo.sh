#!/bin/sh
# Rebuilds demo/demo.hxz: an 8 MiB ext4 image (main stream) holding a README and a few files,
# plus a 1 MiB "memory" image (aux stream). Needs mkfs.ext4 (e2fsprogs) and a built hexzd.
# The committed archive was made by this script; rebuilding changes only timestamps and UUIDs.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
hexzd=${HEXZD:-"$here/../target/debug/hexzd"}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/root/etc" "$work/root/data"
cat > "$work/root/README" <<'TXT'
This is the hexzd demo disk.

It is an ext4 file system packed into a Hexz archive (demo/demo.hxz) by `hexzd pack`.
If you can read this file, the bytes travelled from the archive to you intact:
through `hexzd cat`, HTTP range requests, NBD, or the kernel's /dev/nbdX.

Try:  sha256sum /mnt/data/*    and compare with /mnt/SHA256SUMS
TXT
echo "demo-vm" > "$work/root/etc/hostname"
# Some compressible text and some incompressible bytes.
i=0; while [ $i -lt 2000 ]; do echo "line $i: the quick brown fox jumps over the lazy dog"; i=$((i+1)); done > "$work/root/data/text.txt"
head -c 262144 /dev/urandom > "$work/root/data/random.bin"
(cd "$work/root" && sha256sum data/* > SHA256SUMS)

E2FSPROGS_FAKE_TIME=1800000000 mkfs.ext4 -q -F -b 1024 -L hexzd-demo \
    -U 6f1c2a3e-8d4b-4c5a-9e7f-0a1b2c3d4e5f -E root_owner=0:0 \
    -d "$work/root" "$work/disk.img" 8M
# A fake "memory" stream: repeating pages with a header, 1 MiB.
i=0; while [ $i -lt 256 ]; do printf 'PAGE %08d hexzd demo memory image\n' $i; head -c 4056 /dev/zero; i=$((i+1)); done > "$work/memory.img"

"$hexzd" pack "$work/disk.img" "$here/demo.hxz" --aux "$work/memory.img" --force
cp "$work/disk.img" "$work/memory.img" "$here/" 2>/dev/null || true
sha256sum "$work/disk.img" "$work/memory.img" | sed "s|$work/||" > "$here/demo.sha256"
rm -f "$here/disk.img" "$here/memory.img"
