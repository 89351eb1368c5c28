#!/usr/bin/env bash
# By-hand comparison of `nbd-proxy` -> hexzd with the original nbd-proxy of openbmc/jsnbd
# (nbd-proxy.md §12): command line, config.json errors, selection, device check and
# --metadata, compared byte for byte (stdout, stderr, exit status) case by case. No kernel
# device is needed: cases stop before the proxy phase (any block device passes the check, and
# a device hexzd refuses as "not an NBD device" is reported as a difference, by design).
#
#   scripts/nbd-proxy-compat.sh ORIGINAL SYSCONFDIR
#
# ORIGINAL is the original binary built with meson (`meson setup build
# -Dsysconfdir=SYSCONFDIR`), so it reads SYSCONFDIR/nbd-proxy/config.json; this script writes
# that file for each case. hexzd runs as a link named nbd-proxy with `--config` pointing at
# the same file (given first, so POSIXLY_CORRECT cases parse the same). Both are found through
# PATH, so argv[0] is `nbd-proxy` for both.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ORIG=${1:?usage: $0 ORIGINAL SYSCONFDIR}
ETC=${2:?usage: $0 ORIGINAL SYSCONFDIR}
cd "$ROOT"
cargo build --quiet --bin hexzd
HEXZD="${CARGO_TARGET_DIR:-$ROOT/target}/debug/hexzd"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/orig" "$T/hexzd" "$ETC/nbd-proxy"
ln -s "$(realpath "$ORIG")" "$T/orig/nbd-proxy"
ln -s "$HEXZD" "$T/hexzd/nbd-proxy"
CONF="$ETC/nbd-proxy/config.json"
BLK=$(for d in /dev/loop0 /dev/sda /dev/vda; do [ -b "$d" ] && echo "$d" && break; done)
BLK=${BLK:-/dev/loop0}

pass=0
fail=0
# check NAME ENV CONFIG ARGS...   (ENV: "-" or VAR=VALUE; CONFIG: file content or "-" for none)
check() {
    local name=$1 env=$2 config=$3
    shift 3
    rm -f "$CONF"
    [ "$config" = - ] || printf '%s' "$config" > "$CONF"
    local e=()
    [ "$env" = - ] || e=("$env")
    env "${e[@]}" PATH="$T/orig:/usr/bin:/bin" nbd-proxy "$@" > "$T/o.out" 2> "$T/o.err" < /dev/null
    local orc=$?
    env "${e[@]}" PATH="$T/hexzd:/usr/bin:/bin" nbd-proxy --config "$CONF" "$@" > "$T/h.out" 2> "$T/h.err" < /dev/null
    local hrc=$?
    if [ "$orc" = "$hrc" ] && cmp -s "$T/o.out" "$T/h.out" && cmp -s "$T/o.err" "$T/h.err"; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
        echo "DIFF: $name: status $orc vs $hrc"
        diff <(cat "$T/o.out"; echo "--- stderr"; cat "$T/o.err") \
            <(cat "$T/h.out"; echo "--- stderr"; cat "$T/h.err") | sed 's/^/    /'
    fi
}

SAMPLE='{ "timeout": 30, "configurations": { "0": { "nbd-device": "/dev/nbd0", "metadata": { "description": "Virtual media device" } }, "1": { "nbd-device": "/dev/nbd1", "metadata": { "description": "Dump Offload" } } } }'
ONE="{\"configurations\":{\"only\":{\"nbd-device\":\"/nonexistent\",\"default\":false}}}"

# Command line (getopt_long semantics).
check help - "$SAMPLE" --help
check h - "$SAMPLE" -h
check h-prefix - "$SAMPLE" --h
check hx - "$SAMPLE" -hx
check unknown-long - "$SAMPLE" --x
check unknown-long-arg - "$SAMPLE" --x=1
check unknown-short - "$SAMPLE" -m
check metadata-arg - "$SAMPLE" --metadata=x
check help-arg - "$SAMPLE" --he=1
check ambiguous - "$SAMPLE" --=x
check empty-long - "$SAMPLE" --=
check bad-after-metadata - "$SAMPLE" --metadata --x --help
check metadata - "$SAMPLE" --metadata
check meta-prefix - "$SAMPLE" --meta
check m-prefix - "$SAMPLE" --m
check metadata-after-operand - "$SAMPLE" zz --metadata
check double-dash - "$SAMPLE" -- --metadata
check posix-operand-first POSIXLY_CORRECT=1 "$SAMPLE" zz --metadata
check posix-empty POSIXLY_CORRECT= "$SAMPLE" zz --metadata --x
check posix-metadata-first POSIXLY_CORRECT=1 "$SAMPLE" --metadata zz
check dash-operand - "$SAMPLE" -
check config-not-abbreviated - "$SAMPLE" --conf x
# Config errors (fatal even for --metadata).
check missing-file - - --metadata
check empty-file - "" --metadata
check null-file - "null" --metadata
check bom - $'\xef\xbb\xbf{}' --metadata
check not-json - "{" --metadata
check top-array - "[]" --metadata
check top-number - "5" --metadata
check top-number-newline - $'5\n' --metadata
check top-true - "true" --metadata
check top-string - '"x"' --metadata
check no-configurations - '{"timeout":3}' --metadata
check configurations-array - '{"configurations":[]}' --metadata
check configurations-string - '{"configurations":"x"}' --metadata
check entry-empty - '{"configurations":{"a":{}}}' --metadata
check entry-string - '{"configurations":{"a":"x"}}' --metadata
check device-number - '{"configurations":{"a":{"nbd-device":5}}}' --metadata
check device-null - '{"configurations":{"a":{"nbd-device":null}}}' a
check first-error-wins - '{"configurations":{"a":{"nbd-device":null},"b":{}}}' --metadata
check two-defaults - '{"configurations":{"a":{"nbd-device":"/d","default":1},"b":{"nbd-device":"/d","default":"0"}}}' --metadata
check two-defaults-proxy - '{"configurations":{"a":{"nbd-device":"/d","default":true},"b":{"nbd-device":"/d","default":0.5}}}'
# --metadata formatting.
check metadata-empty - '{"configurations":{}}' --metadata
check metadata-null - '{"configurations":{"a":{"nbd-device":"/d","metadata":[1]},"b":{"nbd-device":"/d"},"c":{"nbd-device":"/d","metadata":{}}}}' --metadata
check metadata-strings - '{"configurations":{"x/y":{"nbd-device":"/d","metadata":{"p":"/a/b","e":"caf\u00e9","c":"\u0001\u001f\n\t\r\b\f\"\\","del":"\u007f","raw":"ü"}}}}' --metadata
check metadata-numbers - '{"configurations":{"a":{"nbd-device":"/d","metadata":{"d":12.50,"e":1e3,"E":1E-2,"o":1.0,"z":-0,"nz":-0.0,"big":99999999999999999999999,"nbig":-99999999999999999999999,"u":9223372036854775808,"inf":1e400}}}}' --metadata
check metadata-nested - '{"configurations":{"a":{"nbd-device":"/d","metadata":{"l":[[],{},[1,[2,{"k":null}]],true,false]}}}}' --metadata
check metadata-duplicates - '{"configurations":{"a":{"nbd-device":"/d","metadata":{"k":1,"j":2,"k":3}},"b":{"nbd-device":"/d"},"a":{"nbd-device":"/e","metadata":{"v":1}}}}' --metadata
check metadata-depth-ok - '{"configurations":{"a":{"nbd-device":"/d","metadata":{"x":[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}}}' --metadata
check metadata-depth-too-deep - '{"configurations":{"a":{"nbd-device":"/d","metadata":{"x":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}}}' --metadata
check metadata-scalar-too-deep - '{"configurations":{"a":{"nbd-device":"/d","metadata":{"x":[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}}}' --metadata
check metadata-name-ignored - "$SAMPLE" --metadata nosuch
# Timeouts (only visible as "the config loads").
for t in 45 -5 12.7 '"45x"' '"  7"' '"abc"' '""' null '{}' '[]' false true 99999999999 1e30 -1e30; do
    check "timeout-$t" - "{\"timeout\":$t,\"configurations\":{}}" --metadata
done
# Selection and the device check.
check no-default - "$SAMPLE"
check no-such - "$SAMPLE" A
check single-is-default - "$ONE"
check single-by-name - "$ONE" only
check default-truthy-string - '{"configurations":{"a":{"nbd-device":"/nonexistent/a","default":"false"},"b":{"nbd-device":"/dev/null"}}}'
for d in true 1 0.5 '"0"'; do
    check "default-$d" - "{\"configurations\":{\"a\":{\"nbd-device\":\"/nonexistent/a\",\"default\":$d},\"b\":{\"nbd-device\":\"/dev/null\"}}}"
done
for d in false 0 0.0 '""' '{}' '[]' null; do
    check "not-default-$d" - "{\"configurations\":{\"a\":{\"nbd-device\":\"/nonexistent/a\",\"default\":$d},\"b\":{\"nbd-device\":\"/dev/null\"}}}"
done
check stat-fails - '{"configurations":{"a":{"nbd-device":"/nonexistent/nbd0"}}}' a
check not-block - '{"configurations":{"a":{"nbd-device":"/dev/null"}}}' a
check not-block-dir - '{"configurations":{"a":{"nbd-device":"/tmp"}}}' a
check case-sensitive - '{"configurations":{"a":{"nbd-device":"/dev/null"},"b":{"nbd-device":"/dev/null"}}}' A

echo "nbd-proxy-compat: $pass passed, $fail failed"
[ "$fail" = 0 ]
