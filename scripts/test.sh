#!/usr/bin/env bash
# Runs every test: installs the clients the interop tests use (scripts/deps.sh), then
# `cargo test` (unit, integration and interop tests against curl, wget, aria2c, nbdinfo,
# nbdcopy, nbdsh, qemu-img, qemu-io), then the kernel NBD and nbd-proxy tests in the nbdvm VM,
# then the Debian package under systemd in the nbdvm VM (tests/systemd_vm.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
cargo test "$@"
if [ -x tests/kernel_nbd.sh ]; then
    tests/kernel_nbd.sh
fi
if [ -x tests/kernel_proxy.sh ]; then
    tests/kernel_proxy.sh
fi
if [ -x tests/systemd_vm.sh ]; then
    tests/systemd_vm.sh
fi
