#!/usr/bin/env bash
# Offline checks of every systemd unit in systemd/ (systemd.md §8):
#   - `systemd-analyze verify --man=no` on all of them together must exit 0 and print nothing;
#     a template (`NAME@.service`) is verified through an instance, `NAME@nbd0.service`;
#   - `systemd-analyze security --offline=true` exposure of every service must be at or below
#     2.0, or below the unit's own `# check-units: max-exposure N` line (a root service such as
#     nbd-proxy@.service states its own bound and why);
#   - each example drop-in, `systemd/UNIT.d/NAME.conf.example`, passes both checks applied to
#     its unit.
# ExecStart= and friends are pointed at the freshly built binary, because verify fails on a
# missing one; the build honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null || { echo "check-units: systemd-analyze not installed; skipped"; exit 0; }
cargo build -q
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
bin="$target/debug/hexzd"
[ -x "$bin" ] || { echo "check-units: $bin was not built"; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
args=()
for u in systemd/*.service systemd/*.socket; do
    [ -e "$u" ] || continue
    name=$(basename "$u")
    sed "s|/usr/bin/hexzd|$bin|g" "$u" > "$tmp/$name"
    case "$name" in
        *@.*) args+=("./${name/@./@nbd0.}") ;; # verify a template through an instance
        *) args+=("./$name") ;;
    esac
done
out=$(cd "$tmp" && systemd-analyze verify --man=no "${args[@]}" 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then echo "systemd-analyze verify printed warnings:"; echo "$out"; exit 1; fi
echo "check-units: verify clean: ${args[*]}"

failed=0
for a in "${args[@]}"; do
    case "$a" in *.service) ;; *) continue ;; esac
    file="$tmp/${a#./}"
    [ -e "$file" ] || file="$tmp/$(basename "${a/@nbd0./@.}")"
    max=$(sed -n 's/^# check-units: max-exposure \([0-9.]*\).*/\1/p' "$file" | head -n 1)
    max=${max:-2.0}
    score=$(cd "$tmp" && systemd-analyze security --offline=true "$a" 2>&1 |
        sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
    if awk -v s="$score" -v m="$max" 'BEGIN { exit !(s != "" && s <= m) }'; then
        echo "check-units: ${a#./} exposure $score (at most $max)"
    else
        echo "check-units: ${a#./} exposure ${score:-unknown} is above $max"
        failed=1
    fi
done

# Example drop-ins, systemd/UNIT.d/NAME.conf.example: each is verified and scored applied to
# its unit (installed as NAME.conf), against the same bound or its own max-exposure line.
for d in systemd/*.d/*.conf.example; do
    [ -e "$d" ] || continue
    unit=$(basename "$(dirname "$d")")
    unit=${unit%.d}
    with="$tmp/with-$(basename "$d" .conf.example)"
    mkdir -p "$with/$unit.d"
    cp "$tmp"/*.service "$tmp"/*.socket "$with/"
    cp "$d" "$with/$unit.d/$(basename "$d" .example)"
    out=$(cd "$with" && systemd-analyze verify --man=no "./$unit" 2>&1) || { echo "$out"; exit 1; }
    if [ -n "$out" ]; then echo "systemd-analyze verify printed warnings for $d:"; echo "$out"; exit 1; fi
    max=$(sed -n 's/^# check-units: max-exposure \([0-9.]*\).*/\1/p' "$d" | head -n 1)
    max=${max:-2.0}
    score=$(cd "$with" && systemd-analyze security --offline=true "./$unit" 2>&1 |
        sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
    if awk -v s="$score" -v m="$max" 'BEGIN { exit !(s != "" && s <= m) }'; then
        echo "check-units: $unit with $d: verify clean, exposure $score (at most $max)"
    else
        echo "check-units: $unit with $d: exposure ${score:-unknown} is above $max"
        failed=1
    fi
done
exit "$failed"
