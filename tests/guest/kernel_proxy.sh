#!/bin/sh
# hexzd driving /dev/nbdX itself (issue 10): nbd-proxy relay mode, the same through a link
# named nbd-proxy with the original's default paths, local attach of a full, a thin and an
# encrypted snapshot, a config.json configuration with a snapshot, and bad input (missing
# device, non-block device, device in use, a server sending garbage or hanging up during the
# handshake). Every case checks messages, exit statuses, hook calls, the mounted files, and
# that no device is left configured.
#
# POSIX sh: runs under busybox ash inside nbdvm (tests/kernel_proxy.sh) and, as root, on any
# machine with the nbd module, mount, mkfifo and sha256sum:
#
#   tests/guest/kernel_proxy.sh DIR
#
# DIR holds `hexzd`, `base.hxz` (an ext4 image), `thin.hxz` (a thin child of base.hxz),
# `enc.hxz` (base encrypted with the password in `password`), and `base.sums`/`child.sums`
# (sha256sum output for the files). Environment: NBD_DEV (default /dev/nbd0) and NBD_DEV2
# (default /dev/nbd1), both unused. The test installs /usr/bin/nbd-proxy and /etc/nbd-proxy/
# when they do not exist, and removes them at the end.

DIR=${1:-/host}
DEV=${NBD_DEV:-/dev/nbd0}
DEV2=${NBD_DEV2:-/dev/nbd1}
SYS=/sys/block/$(basename "$DEV")
SYS2=/sys/block/$(basename "$DEV2")

fails=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

WORK=$(mktemp -d /tmp/hexzd-proxy.XXXXXX)
MNT=$WORK/mnt
mkdir -p "$MNT"
for f in hexzd base.hxz thin.hxz enc.hxz base.sums child.sums password; do
    cp "$DIR/$f" "$WORK/$f"
done
H=$WORK/hexzd

. "$(dirname "$0")/nbd_lib.sh"
has_line() { [ -f "$1" ] && grep -q "$2" "$1"; }

# check_files DEVICE SUMS DESCRIPTION: mount -o ro, compare checksums, umount.
check_files() {
    if mount -o ro -t ext4 "$1" "$MNT"; then
        if (cd "$MNT" && sha256sum -c "$2" > "$WORK/check.log" 2>&1); then
            pass "$3: mount -o ro, $(wc -l < "$2") file checksums match"
        else
            fail "$3: checksum mismatch"
            cat "$WORK/check.log"
        fi
        umount "$MNT" || fail "$3: umount"
    else
        fail "$3: mount -o ro $1"
    fi
}

# expect_cleared SYSDIR DESCRIPTION
expect_cleared() {
    if wait_for 10 cleared "$1"; then
        pass "$2: device cleared (size 0, no pid)"
    else
        fail "$2: device still configured (size $(cat "$1/size"))"
    fi
}

# A hook that logs "ACTION NAME SIZE" ($0 is the path for a #! script, as with the original).
HOOK=$WORK/state
cat > "$HOOK" <<HOOK_EOF
#!/bin/sh
echo "\$1 \$2 \$(cat $SYS/size)" >> $WORK/hook.log
HOOK_EOF
chmod +x "$HOOK"
FAILHOOK=$WORK/state-fails
cat > "$FAILHOOK" <<HOOK_EOF
#!/bin/sh
echo "\$1 \$2" >> $WORK/hook.log
[ "\$1" = start ] && exit 1
exit 0
HOOK_EOF
chmod +x "$FAILHOOK"

cat > "$WORK/config.json" <<JSON_EOF
{
    "timeout": 30,
    "configurations": {
        "vm": { "nbd-device": "$DEV", "metadata": { "description": "Virtual media device" } },
        "dump": { "nbd-device": "$DEV2", "metadata": { "description": "Dump Offload" } },
        "local": { "nbd-device": "$DEV2", "snapshot": "$WORK/thin.hxz" },
        "missing": { "nbd-device": "/dev/nbd99" },
        "chardev": { "nbd-device": "/dev/null" }
    }
}
JSON_EOF

mkfifo "$WORK/to_proxy" "$WORK/from_proxy"

# start_server ARCHIVE: `hexzd serve --stdio` on the FIFOs (write end first, so the two
# processes' opens pair up instead of both waiting for a writer).
start_server() {
    "$H" serve --stdio "$1" > "$WORK/to_proxy" < "$WORK/from_proxy" 2> "$WORK/server.log" &
    server_pid=$!
}

# relay DESCRIPTION PROXY-COMMAND...: relays base.hxz through the proxy, checks the hook
# calls, the files, SIGTERM's clean end.
relay() {
    desc=$1
    shift
    rm -f "$WORK/hook.log"
    start_server "$WORK/base.hxz"
    "$@" < "$WORK/to_proxy" > "$WORK/from_proxy" 2> "$WORK/proxy.log" &
    proxy_pid=$!
    if wait_for 60 has_line "$WORK/hook.log" "^start "; then
        read -r action name size < "$WORK/hook.log"
        if [ "$name" = vm ] && [ "$size" != 0 ]; then
            pass "$desc: start hook ran with 'start vm' after the capacity was set ($size sectors)"
        else
            fail "$desc: start hook saw '$action $name $size'"
        fi
    else
        fail "$desc: the start hook did not run"
        cat "$WORK/proxy.log"
    fi
    [ "$(cat "$SYS/ro")" = 1 ] && pass "$desc: read-only device" || fail "$desc: device not read-only"
    check_files "$DEV" "$WORK/base.sums" "$desc"
    kill -TERM "$proxy_pid"
    wait "$proxy_pid"
    st=$?
    [ "$st" = 0 ] && pass "$desc: SIGTERM: exit 0" || fail "$desc: SIGTERM: exit $st"
    if grep -q "^stop vm" "$WORK/hook.log"; then
        pass "$desc: stop hook ran with 'stop vm'"
    else
        fail "$desc: no stop hook call"
    fi
    [ -s "$WORK/proxy.log" ] && { fail "$desc: unexpected messages:"; cat "$WORK/proxy.log"; }
    expect_cleared "$SYS" "$desc"
    wait "$server_pid"
}

relay "hexzd nbd-proxy" "$H" nbd-proxy --config "$WORK/config.json" --state-hook "$HOOK" vm

# The same through a link named nbd-proxy with the original's paths: /etc/nbd-proxy/
# config.json and state, called as bmcweb does (`/usr/bin/nbd-proxy NAME`).
installed=""
if [ ! -e /usr/bin/nbd-proxy ] && [ ! -e /etc/nbd-proxy ]; then
    mkdir -p /etc/nbd-proxy
    cp "$WORK/config.json" /etc/nbd-proxy/config.json
    cp "$HOOK" /etc/nbd-proxy/state
    ln -s "$H" /usr/bin/nbd-proxy
    installed=yes
    relay "/usr/bin/nbd-proxy" /usr/bin/nbd-proxy vm
    out=$(/usr/bin/nbd-proxy --metadata)
    want='{ "vm": { "description": "Virtual media device" }, "dump": { "description": "Dump Offload" }, "local": null, "missing": null, "chardev": null }'
    [ "$out" = "$want" ] && pass "nbd-proxy --metadata" || fail "nbd-proxy --metadata printed: $out"

    # A failing start hook ends the session: message, stop hook, exit 0, device cleared.
    cp "$FAILHOOK" /etc/nbd-proxy/state
    rm -f "$WORK/hook.log"
    start_server "$WORK/base.hxz"
    /usr/bin/nbd-proxy vm < "$WORK/to_proxy" > "$WORK/from_proxy" 2> "$WORK/proxy.log" &
    proxy_pid=$!
    wait "$proxy_pid"
    st=$?
    wait "$server_pid"
    msg=$(cat "$WORK/proxy.log")
    if [ "$st" = 0 ] && [ "$msg" = "nbd-proxy: state hook failed (rc: 1); exiting" ]; then
        pass "failing start hook: '$msg', exit 0"
    else
        fail "failing start hook: exit $st, messages: $msg"
    fi
    [ "$(cat "$WORK/hook.log" | tr '\n' ' ')" = "start vm stop vm " ] &&
        pass "failing start hook: stop hook ran" || fail "failing start hook: hook calls: $(cat "$WORK/hook.log")"
    expect_cleared "$SYS" "failing start hook"
else
    fail "/usr/bin/nbd-proxy or /etc/nbd-proxy exists; the link test was not run"
fi

# attach DESCRIPTION SUMS ARCHIVE [OPTIONS...]: hexzd attach, mount and verify, hexzd detach.
attach() {
    desc=$1
    sums=$2
    shift 2
    # The background job truncates attach.out only once it runs: remove the last run's
    # readiness line first, or the wait below can see it and go on before the attach.
    rm -f "$WORK/attach.out"
    "$H" attach "$@" "$DEV" > "$WORK/attach.out" 2> "$WORK/attach.log" &
    attach_pid=$!
    if wait_for 120 has_line "$WORK/attach.out" "attached"; then
        pass "$desc: readiness line: $(cat "$WORK/attach.out")"
    else
        fail "$desc: no readiness line"
        cat "$WORK/attach.log"
    fi
    size_nonzero "$SYS" || fail "$desc: size 0 after the readiness line"
    check_files "$DEV" "$sums" "$desc"
    "$H" detach "$DEV" && pass "$desc: hexzd detach" || fail "$desc: hexzd detach"
    wait "$attach_pid"
    st=$?
    [ "$st" = 0 ] && pass "$desc: attach exited 0 after detach" || fail "$desc: attach exited $st"
    [ -s "$WORK/attach.log" ] && { fail "$desc: unexpected messages:"; cat "$WORK/attach.log"; }
    expect_cleared "$SYS" "$desc"
}

attach "attach full" "$WORK/base.sums" "$WORK/base.hxz"
attach "attach thin" "$WORK/child.sums" "$WORK/thin.hxz"
attach "attach encrypted" "$WORK/base.sums" --password-file "$WORK/password" "$WORK/enc.hxz"

# A configuration with a snapshot: same hooks, same moments.
rm -f "$WORK/hook.log"
"$H" nbd-proxy --config "$WORK/config.json" --state-hook "$HOOK" local < /dev/null > "$WORK/local.out" 2> "$WORK/proxy.log" &
proxy_pid=$!
if wait_for 120 has_line "$WORK/hook.log" "^start local"; then
    pass "config snapshot: start hook ran"
    check_files "$DEV2" "$WORK/child.sums" "config snapshot"
else
    fail "config snapshot: no start hook"
    cat "$WORK/proxy.log"
fi
# SIGHUP ends a session like SIGTERM (the original died without cleanup).
kill -HUP "$proxy_pid"
wait "$proxy_pid"
st=$?
[ "$st" = 0 ] && pass "config snapshot: SIGHUP: exit 0" || fail "config snapshot: exit $st"
grep -q "^stop local" "$WORK/hook.log" && pass "config snapshot: stop hook ran" || fail "config snapshot: no stop hook"
[ -s "$WORK/local.out" ] && fail "config snapshot: something was written to stdout"
expect_cleared "$SYS2" "config snapshot"

# expect_exit DESCRIPTION STATUS MESSAGE COMMAND...: exit status and exact stderr.
expect_exit() {
    desc=$1
    want_st=$2
    want_msg=$3
    shift 3
    "$@" > /dev/null 2> "$WORK/err.log" < /dev/null
    st=$?
    msg=$(cat "$WORK/err.log")
    if [ "$st" = "$want_st" ] && [ "$msg" = "$want_msg" ]; then
        pass "$desc: exit $st, '$msg'"
    else
        fail "$desc: exit $st (want $want_st), messages: '$msg' (want '$want_msg')"
    fi
}

P="$H nbd-proxy --config $WORK/config.json --state-hook $HOOK"
rm -f "$WORK/hook.log"
expect_exit "missing device" 1 \
    "hexzd: can't stat nbd device /dev/nbd99: No such file or directory" $P missing
expect_exit "non-block device" 1 \
    "hexzd: specified nbd path /dev/null isn't a block device: Success" $P chardev

# A device in use: refused before any hook or ioctl; the session using it is unharmed.
rm -f "$WORK/attach.out"
"$H" attach "$WORK/base.hxz" "$DEV" > "$WORK/attach.out" 2> "$WORK/attach.log" &
attach_pid=$!
if wait_for 120 has_line "$WORK/attach.out" "attached"; then
    user=$(cat "$SYS/pid")
    start_server "$WORK/base.hxz"
    "$H" nbd-proxy --config "$WORK/config.json" --state-hook "$HOOK" vm \
        < "$WORK/to_proxy" > "$WORK/from_proxy" 2> "$WORK/err.log"
    st=$?
    wait "$server_pid"
    msg=$(cat "$WORK/err.log")
    [ "$st" = 1 ] && [ "$msg" = "hexzd: nbd device $DEV is in use (by pid $user)" ] &&
        pass "device in use: exit 1, '$msg'" || fail "device in use: exit $st, '$msg'"
    [ -f "$WORK/hook.log" ] && fail "device in use: a hook ran"
    check_files "$DEV" "$WORK/base.sums" "device in use: the attached session"
    kill -TERM "$attach_pid"
    wait "$attach_pid"
    st=$?
    [ "$st" = 0 ] && pass "attach: SIGTERM: exit 0" || fail "attach: SIGTERM: exit $st"
    expect_cleared "$SYS" "attach stopped by SIGTERM"
else
    fail "device in use: attach did not come up"
    kill "$attach_pid" 2>/dev/null
fi

# A server that sends garbage, or hangs up, during the handshake.
handshake_error() { # DESCRIPTION WANT-FIRST-LINE FEEDER...
    desc=$1
    want=$2
    shift 2
    rm -f "$WORK/hook.log"
    "$@" > "$WORK/to_proxy" &
    feeder=$!
    "$H" nbd-proxy --config "$WORK/config.json" --state-hook "$HOOK" vm \
        < "$WORK/to_proxy" > /dev/null 2> "$WORK/err.log"
    st=$?
    wait "$feeder"
    msg=$(head -n 1 "$WORK/err.log")
    last=$(tail -n 1 "$WORK/err.log")
    if [ "$st" = 0 ] && [ "$msg" = "$want" ] && [ "$last" = "hexzd: nbd client stopped (rc: 1); exiting" ]; then
        pass "$desc: '$msg', 'nbd client stopped (rc: 1)', exit 0"
    else
        fail "$desc: exit $st, messages: $(cat "$WORK/err.log")"
    fi
    [ "$(cat "$WORK/hook.log" 2>/dev/null)" = "stop vm 0" ] &&
        pass "$desc: stop hook ran, device never configured" ||
        fail "$desc: hook calls: $(cat "$WORK/hook.log" 2>/dev/null)"
    expect_cleared "$SYS" "$desc"
}
handshake_error "garbage server" \
    "hexzd: nbd device $DEV: NBD handshake failed: not an NBD newstyle server: bad magic 0x485454502f312e31 (expected 0x4e42444d41474943)" \
    printf 'HTTP/1.1 200 OK\r\n\r\nhello'
handshake_error "server hangs up" \
    "hexzd: nbd device $DEV: the NBD server closed the connection during the handshake" \
    true

# No nbd driver: the node exists, the module does not (VM only: unloading the module on a
# real machine could hurt other users).
if [ "${NBDVM:-0}" = 1 ] && rmmod nbd 2>/dev/null; then
    mknod "$WORK/nbd-nodriver" b 43 0
    echo "{\"configurations\":{\"x\":{\"nbd-device\":\"$WORK/nbd-nodriver\"}}}" > "$WORK/nomod.json"
    expect_exit "no nbd module" 1 \
        "hexzd: can't open nbd device $WORK/nbd-nodriver: No such device or address (is the nbd module loaded?)" \
        "$H" nbd-proxy --config "$WORK/nomod.json" --state-hook "$HOOK" x
    modprobe nbd || fail "modprobe nbd"
fi

if [ "$installed" = yes ]; then
    rm -rf /etc/nbd-proxy /usr/bin/nbd-proxy
fi
rm -rf "$WORK"
echo "RESULT: $fails failure(s)"
[ "$fails" = 0 ]
