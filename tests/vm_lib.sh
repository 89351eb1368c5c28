# Shared by the host sides of the VM tests (tests/kernel_nbd.sh, tests/kernel_proxy.sh,
# tests/systemd_vm.sh); sourced, not run. The caller sets NAME (as it names itself in
# SKIP/PASS lines) and WHAT (what a SKIP line says was skipped) before sourcing.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NBDVM="${NBDVM:-$ROOT/tools/nbdvm}"
NBDVM_DIR="${NBDVM_DIR:-/tmp/nbdvm}"

# skip REASON: says why the test did not run and exits 0, or 1 under HEXZD_REQUIRE_VM=1.
skip() {
    echo "SKIP: $WHAT: $*"
    if [ "${HEXZD_REQUIRE_VM:-0}" = 1 ]; then
        echo "FAIL: HEXZD_REQUIRE_VM=1"
        exit 1
    fi
    exit 0
}

# need_vm: skips unless tools/nbdvm is set up and qemu is installed.
need_vm() {
    [ -x "$NBDVM/run.sh" ] || skip "nbdvm not found at $NBDVM"
    [ -f "$NBDVM_DIR/initramfs.cpio.gz" ] ||
        skip "nbdvm is not set up ($NBDVM_DIR/initramfs.cpio.gz is missing; run $NBDVM/setup.sh as root)"
    command -v qemu-system-x86_64 > /dev/null || skip "qemu-system-x86_64 is not installed (nbdvm setup.sh installs it)"
}

# need_local_nbd: for --local runs: skips unless root with the nbd module (or NBD_DEV).
need_local_nbd() {
    [ "$(id -u)" = 0 ] || skip "--local needs root"
    modprobe nbd 2> /dev/null || [ -e "${NBD_DEV:-/dev/nbd0}" ] || skip "no nbd module on this kernel"
}

# data_dir LOCAL: a fresh directory for the test's files, shared with the VM unless LOCAL is
# 1, removed on exit.
data_dir() {
    if [ "$1" = 1 ]; then
        DATA="$(mktemp -d "${TMPDIR:-/tmp}/hexzd-$NAME.XXXXXX")"
    else
        mkdir -p "$NBDVM_DIR"
        DATA="$(mktemp -d "$NBDVM_DIR/hexzd-$NAME.XXXXXX")"
    fi
    trap 'rm -rf "$DATA"' EXIT
}

# make_tree DIR TEXT_BYTES SUMS: a small file tree with known contents (text, random, zeros)
# and its sha256sum list, for mkfs.ext4 -d.
make_tree() {
    mkdir -p "$1/sub/deep"
    echo "hello from a hexzd snapshot" > "$1/hello.txt"
    head -c 1048576 /dev/urandom > "$1/sub/random.bin"
    head -c 262144 /dev/zero > "$1/sub/deep/zeros.bin"
    head -c "$2" /dev/urandom | base64 > "$1/sub/deep/text.b64"
    (cd "$1" && find . -type f | sort | xargs sha256sum) > "$3"
}

# report RC: the one result line (PASS, or FAIL with what run.sh's status means); exits RC.
report() {
    case "$1" in
        0) echo "$NAME: PASS" ;;
        124) echo "$NAME: FAIL (VM time limit hit)" ;;
        125) echo "$NAME: FAIL (the VM ended without a status: boot failure or panic)" ;;
        *) echo "$NAME: FAIL (status $1)" ;;
    esac
    exit "$1"
}
