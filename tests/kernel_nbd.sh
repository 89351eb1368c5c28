#!/usr/bin/env bash
# Kernel NBD test (issue 4): builds hexzd, makes an ext4 image with known files
# (mkfs.ext4 -d: no loop device or mount on the host), packs it with `hexzd pack`, and runs
# tests/guest/kernel_nbd.sh inside the nbdvm VM (tools/nbdvm), where the real kernel NBD client
# attaches, mounts and checks it. Exit status: 0 = passed or skipped (a "SKIP:" line says why),
# otherwise failed. HEXZD_REQUIRE_VM=1 turns a skip into a failure.
#
#   tests/kernel_nbd.sh [run.sh options...]      e.g. -v, -t 900
#   tests/kernel_nbd.sh --local                   no VM: run the guest script on this machine
#                                                 (root, nbd module, nbd-client; uses NBD_DEV)
set -euo pipefail
NAME=kernel_nbd
WHAT="kernel NBD test"
. "$(dirname "${BASH_SOURCE[0]}")/vm_lib.sh"
LOCAL=0
if [ "${1:-}" = --local ]; then
    LOCAL=1
    shift
fi
if [ "$LOCAL" = 0 ]; then
    need_vm
else
    command -v nbd-client > /dev/null || skip "nbd-client is not installed"
    need_local_nbd
fi
command -v mkfs.ext4 > /dev/null || skip "mkfs.ext4 is not installed (e2fsprogs)"

cd "$ROOT"
cargo build --quiet --bin hexzd
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/debug"

data_dir "$LOCAL"
tree="$DATA/tree"
make_tree "$tree" 3000000 "$DATA/sums"
mkfs.ext4 -q -F -L hexzd -d "$tree" "$DATA/fs.img" 16M
rm -rf "$tree"
# A memory stream of whole sectors: the kernel keeps sizes in 512-byte sectors.
head -c 3145728 /dev/urandom > "$DATA/memory"
echo "3145728 $(sha256sum < "$DATA/memory" | cut -d' ' -f1)" > "$DATA/memory.sum"
"$TARGET/hexzd" pack "$DATA/fs.img" "$DATA/disk.hxz" --aux "$DATA/memory" > /dev/null
rm "$DATA/fs.img" "$DATA/memory"

cp "$TARGET/hexzd" "$DATA/hexzd"

# A test CA, a server certificate for localhost and a client certificate, for the TLS part
# (made here, never committed; the guest has no openssl).
if command -v openssl > /dev/null; then
    tls="$DATA/tls"
    mkdir -p "$tls"
    (
        cd "$tls"
        ec="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
        openssl req -x509 $ec -keyout ca-key.pem -out ca-cert.pem -days 2 -subj /CN=hexzd-test-ca 2> /dev/null
        openssl req $ec -keyout server-key.pem -out server.csr -subj /CN=localhost 2> /dev/null
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
        openssl x509 -req -in server.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial \
            -out server-cert.pem -days 2 -extfile server.ext 2> /dev/null
        openssl req $ec -keyout client-key.pem -out client.csr -subj /CN=hexzd-test-client 2> /dev/null
        printf 'extendedKeyUsage=clientAuth\n' > client.ext
        openssl x509 -req -in client.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial \
            -out client-cert.pem -days 2 -extfile client.ext 2> /dev/null
        rm -f ca-key.pem ./*.csr ./*.ext ca-cert.srl
    )
else
    echo "kernel_nbd: openssl is not installed: the TLS part will be skipped"
fi

rc=0
if [ "$LOCAL" = 1 ]; then
    sh "$ROOT/tests/guest/kernel_nbd.sh" "$DATA" || rc=$?
else
    "$NBDVM/run.sh" -t 600 "$@" "$DATA" "$ROOT/tests/guest/kernel_nbd.sh" /host || rc=$?
fi
report "$rc"
