#!/usr/bin/env bash
# Offline checks of the systemd units (systemd.md §8): `systemd-analyze verify` must exit 0
# and print nothing, and the hardening score must stay at or below 2.0. ExecStart= is pointed
# at the freshly built binary, because verify fails on a missing one.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null || { echo "check-units: systemd-analyze not installed; skipped"; exit 0; }
cargo build -q
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for u in systemd/*.service systemd/*.socket; do
    [ -e "$u" ] || continue
    sed "s|/usr/bin/hexzd|$PWD/target/debug/hexzd|g" "$u" > "$tmp/$(basename "$u")"
done
# A template (NAME@.service) is verified through an instance (NAME@nbd0.service); the
# template file must sit beside it.
units=()
for u in "$tmp"/*; do
    b=$(basename "$u")
    case "$b" in
        *@.service) units+=("./${b%@.service}@nbd0.service") ;;
        *) units+=("./$b") ;;
    esac
done
out=$(cd "$tmp" && systemd-analyze verify --man=no "${units[@]}" 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then echo "systemd-analyze verify printed warnings:"; echo "$out"; exit 1; fi
score=$(systemd-analyze security --offline=true "$tmp/hexzd.service" 2>&1 | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
echo "check-units: verify clean; hexzd.service exposure $score"
awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.0) }' || { echo "exposure $score above 2.0"; exit 1; }
