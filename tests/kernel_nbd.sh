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
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NBDVM="${NBDVM:-$ROOT/tools/nbdvm}"
NBDVM_DIR="${NBDVM_DIR:-/tmp/nbdvm}"
LOCAL=0
if [ "${1:-}" = --local ]; then
    LOCAL=1
    shift
fi

skip() {
    echo "SKIP: kernel NBD test: $*"
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
    command -v nbd-client > /dev/null || skip "nbd-client is not installed"
    modprobe nbd 2> /dev/null || [ -e "${NBD_DEV:-/dev/nbd0}" ] || skip "no nbd module on this kernel"
fi
command -v mkfs.ext4 > /dev/null || skip "mkfs.ext4 is not installed (e2fsprogs)"

cd "$ROOT"
cargo build --quiet --bin hexzd
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/debug"

if [ "$LOCAL" = 1 ]; then
    DATA="$(mktemp -d "${TMPDIR:-/tmp}/hexzd-kernel.XXXXXX")"
else
    mkdir -p "$NBDVM_DIR"
    DATA="$(mktemp -d "$NBDVM_DIR/hexzd-kernel.XXXXXX")"
fi
trap 'rm -rf "$DATA"' EXIT
tree="$DATA/tree"
mkdir -p "$tree/sub/deep"
echo "hello from a hexzd snapshot" > "$tree/hello.txt"
head -c 1048576 /dev/urandom > "$tree/sub/random.bin"
head -c 262144 /dev/zero > "$tree/sub/deep/zeros.bin"
head -c 3000000 /dev/urandom | base64 > "$tree/sub/deep/text.b64"
(cd "$tree" && find . -type f | sort | xargs sha256sum) > "$DATA/sums"
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
case "$rc" in
    0) echo "kernel_nbd: PASS" ;;
    124) echo "kernel_nbd: FAIL (VM time limit hit)" ;;
    125) echo "kernel_nbd: FAIL (the VM ended without a status: boot failure or panic)" ;;
    *) echo "kernel_nbd: FAIL (status $rc)" ;;
esac
exit "$rc"
