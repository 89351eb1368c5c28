#!/usr/bin/env bash
# Installs what the tests drive: real HTTP and NBD clients, and the nbdvm kernel-test VM.
# Idempotent; needs root and Debian 12 (bookworm). Without root it only reports what is
# missing, and the tests that need a missing tool say that they skip.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(curl wget aria2 python3 libnbd-bin python3-libnbd nbd-client qemu-utils e2fsprogs nginx python3-pip openssl)

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "deps: not root; missing packages: ${missing[*]} (tests needing them will skip)" >&2
        exit 0
    fi
    echo "deps: installing ${missing[*]}"
    apt-cache show libnbd-bin >/dev/null 2>&1 || apt-get update -q
    # --no-remove: never let apt uninstall anything (qemu-utils comes from backports here).
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --no-remove "${missing[@]}"
fi

# Remote archives (tests/remote_s3.rs): moto's standalone S3 server checks request signatures.
if ! command -v moto_server >/dev/null 2>&1; then
    if command -v pip3 >/dev/null 2>&1 || python3 -m pip --version >/dev/null 2>&1; then
        echo "deps: installing moto[server] (pip)"
        python3 -m pip install -q 'moto[server]' 2>/dev/null \
            || python3 -m pip install -q --break-system-packages 'moto[server]' \
            || echo "deps: pip install 'moto[server]' failed (the S3 test will skip)" >&2
    else
        echo "deps: no pip; the S3 test will skip (install python3-pip)" >&2
    fi
fi

# The kernel NBD tests run in a small QEMU VM (tools/nbdvm). Its setup is idempotent and takes
# a few seconds once done; the first run downloads a kernel (~1 min).
if [ "$(id -u)" = 0 ] && [ "${HEXZD_SKIP_VM:-0}" != 1 ]; then
    if ! tools/nbdvm/setup.sh > /tmp/hexzd-nbdvm-setup.log 2>&1; then
        echo "deps: nbdvm setup failed (kernel tests will skip); see /tmp/hexzd-nbdvm-setup.log" >&2
        tail -n 5 /tmp/hexzd-nbdvm-setup.log >&2
    fi
fi
