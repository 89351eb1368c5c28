#!/bin/sh
# Kernel NBD client against hexzd (issue 4): hexzd serves an ext4 snapshot, nbd-client attaches
# it to a /dev/nbdX device without -N (the empty export name), with -N NAME, with two
# connections (-C 2, CAN_MULTI_CONN), and with -N NAME/disk over a Unix socket through the
# ioctl path (-L, what nbd-proxy uses); each time the filesystem is mounted read-only, every
# file's checksum is checked, then umount and nbd-client -d. Then the snapshot's memory
# stream is attached and read raw. Then the same mount over TLS (-enable-tls, issue 13)
# against a server that requires TLS and a client certificate, and a plaintext client refused.
#
# POSIX sh: runs under busybox ash inside nbdvm (tests/kernel_nbd.sh) and, as root, on any
# machine with the nbd module, nbd-client, mount and sha256sum:
#
#   tests/guest/kernel_nbd.sh DIR
#
# DIR holds `hexzd` (the binary), `disk.hxz` (the packed ext4 image, with a memory stream),
# `sums` (sha256sum output for the files, relative to the filesystem root), `memory.sum`
# (the memory stream's size and sha256, one line) and `tls/` (ca-cert.pem, server-cert.pem,
# server-key.pem, client-cert.pem, client-key.pem; the TLS part is skipped without it).
# Environment: NBD_DEV (default /dev/nbd0).

DIR=${1:-/host}
DEV=${NBD_DEV:-/dev/nbd0}
NAME=ext4snap
SYS=/sys/block/$(basename "$DEV")

fails=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

WORK=$(mktemp -d /tmp/hexzd-kernel.XXXXXX)
MNT=$WORK/mnt
mkdir -p "$MNT"
# Serve from RAM rather than the 9p share.
cp "$DIR/disk.hxz" "$WORK/disk.hxz"
cp "$DIR/sums" "$WORK/sums"
cp "$DIR/memory.sum" "$WORK/memory.sum"

[ -e "$DEV" ] || modprobe nbd 2>/dev/null
[ -e "$DEV" ] || { echo "FAIL: $DEV does not exist (is the nbd module loaded?)"; exit 1; }
if [ -e "$SYS/pid" ]; then
    echo "FAIL: $DEV is in use (pid $(cat "$SYS/pid")); set NBD_DEV"
    exit 1
fi

"$DIR/hexzd" serve --http off --nbd 127.0.0.1:0 --nbd-unix "$WORK/nbd.sock" \
    "$WORK/disk.hxz=$NAME" 2> "$WORK/server.log" &
server_pid=$!

# Readiness: wait for both listening lines (a poll of the log, bounded at 60 s), never a
# fixed sleep.
i=0
while [ "$(grep -c 'NBD listening on' "$WORK/server.log")" -lt 2 ] && [ $i -lt 600 ]; do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
    i=$((i + 1))
done
PORT=$(sed -n 's/.*NBD listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$WORK/server.log")
if [ -z "$PORT" ] || [ ! -S "$WORK/nbd.sock" ]; then
    echo "FAIL: the server did not become ready:"
    cat "$WORK/server.log"
    kill "$server_pid" 2>/dev/null
    exit 1
fi
pass "server ready on 127.0.0.1:$PORT and unix $WORK/nbd.sock"

wait_size() { # wait_size zero|nonzero
    j=0
    while [ $j -lt 100 ]; do
        s=$(cat "$SYS/size")
        if [ "$1" = zero ] && [ "$s" = 0 ]; then return 0; fi
        if [ "$1" = nonzero ] && [ "$s" != 0 ]; then return 0; fi
        sleep 0.1
        j=$((j + 1))
    done
    return 1
}

# check_mount DESCRIPTION NBD-CLIENT-ARGS...
check_mount() {
    desc=$1
    shift
    if ! nbd-client "$@"; then
        fail "$desc: nbd-client $*"
        return
    fi
    # With -L nbd-client's child sets the size inside NBD_DO_IT: wait for it.
    if wait_size nonzero; then
        pass "$desc: $DEV attached ($(cat "$SYS/size") sectors)"
    else
        fail "$desc: $DEV size stayed 0"
    fi
    [ "$(cat "$SYS/ro")" = 1 ] && pass "$desc: $DEV is read-only" || fail "$desc: $DEV is not read-only"
    if mount -o ro -t ext4 "$DEV" "$MNT"; then
        pass "$desc: mount -o ro"
        if (cd "$MNT" && sha256sum -c "$WORK/sums" > "$WORK/check.log" 2>&1); then
            pass "$desc: $(wc -l < "$WORK/sums") file checksums match"
        else
            fail "$desc: checksum mismatch"
            cat "$WORK/check.log"
        fi
        umount "$MNT" && pass "$desc: umount" || fail "$desc: umount"
    else
        fail "$desc: mount"
    fi
    nbd-client -d "$DEV" > /dev/null 2>&1 && pass "$desc: nbd-client -d" || fail "$desc: nbd-client -d"
    wait_size zero || fail "$desc: size did not drop to 0 after disconnect"
    j=0
    while [ -e "$SYS/pid" ] && [ $j -lt 100 ]; do sleep 0.1; j=$((j + 1)); done
}

check_mount "no -N (export \"\")" 127.0.0.1 "$PORT" "$DEV"
check_mount "-N $NAME" 127.0.0.1 "$PORT" "$DEV" -N "$NAME"
check_mount "-N $NAME, 2 connections (-C 2)" 127.0.0.1 "$PORT" "$DEV" -N "$NAME" -C 2
check_mount "unix, -N $NAME/disk, ioctl (-L)" -u "$WORK/nbd.sock" "$DEV" -N "$NAME/disk" -L

# The memory stream, read raw through the kernel.
if nbd-client 127.0.0.1 "$PORT" "$DEV" -N "$NAME/memory" > /dev/null 2>&1 && wait_size nonzero; then
    read -r size want < "$WORK/memory.sum"
    got=$(head -c "$size" "$DEV" | sha256sum | cut -d' ' -f1)
    [ "$got" = "$want" ] && pass "-N $NAME/memory: $size bytes read raw match" ||
        fail "-N $NAME/memory: sha256 $got, expected $want"
    nbd-client -d "$DEV" > /dev/null 2>&1 || fail "-N $NAME/memory: nbd-client -d"
    wait_size zero || fail "-N $NAME/memory: size did not drop to 0"
else
    fail "-N $NAME/memory: nbd-client"
fi

kill "$server_pid" 2>/dev/null
wait "$server_pid" 2>/dev/null

# NBD over TLS (issue 13): nbd-client 3.24 negotiates NBD_OPT_STARTTLS with -enable-tls and
# relays the kernel's socket through its own TLS session. The server requires TLS and a
# client certificate of the test CA (made on the host by tests/kernel_nbd.sh in DIR/tls).
if [ ! -f "$DIR/tls/server-cert.pem" ]; then
    echo "SKIP: NBD over TLS: no certificates in $DIR/tls"
elif ! nbd-client -h 2>&1 | grep -q -- '-enable-tls'; then
    echo "SKIP: NBD over TLS: this nbd-client has no TLS support (-enable-tls)"
else
    cp -r "$DIR/tls" "$WORK/tls"
    chmod 600 "$WORK/tls/server-key.pem" "$WORK/tls/client-key.pem"
    "$DIR/hexzd" serve --http off --nbd 127.0.0.1:0 --nbd-tls require --tls-verify-peer \
        --tls-certificates "$WORK/tls" "$WORK/disk.hxz=$NAME" 2> "$WORK/tls.log" &
    tls_pid=$!
    i=0
    while ! grep -q 'NBD listening on' "$WORK/tls.log" && [ $i -lt 600 ]; do
        kill -0 "$tls_pid" 2>/dev/null || break
        sleep 0.1
        i=$((i + 1))
    done
    TLS_PORT=$(sed -n 's/.*NBD listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$WORK/tls.log")
    if [ -z "$TLS_PORT" ]; then
        fail "TLS server did not become ready"
        cat "$WORK/tls.log"
    else
        pass "TLS server ready on 127.0.0.1:$TLS_PORT (tls require, verify-peer)"
        check_mount "TLS: -enable-tls, client certificate, -N $NAME" 127.0.0.1 "$TLS_PORT" "$DEV" \
            -N "$NAME" -enable-tls -tlshostname localhost -cacertfile "$WORK/tls/ca-cert.pem" \
            -certfile "$WORK/tls/client-cert.pem" -keyfile "$WORK/tls/client-key.pem"
        # Without TLS the required server refuses the export: nbd-client fails, nothing attaches.
        if nbd-client 127.0.0.1 "$TLS_PORT" "$DEV" -N "$NAME" > "$WORK/plain.log" 2>&1; then
            fail "TLS required: a plaintext nbd-client attached"
            nbd-client -d "$DEV" > /dev/null 2>&1
        else
            pass "TLS required: a plaintext nbd-client is refused ($(tail -n 1 "$WORK/plain.log"))"
        fi
    fi
    kill "$tls_pid" 2>/dev/null
    wait "$tls_pid" 2>/dev/null
    cat "$WORK/tls.log" >> "$WORK/server.log"
fi

if grep -E '^(WARN|ERROR)|^<[0-4]>' "$WORK/server.log"; then
    fail "the server logged warnings or errors (above)"
else
    pass "no warnings or errors in the server log"
fi
echo "INFO: server log:"
sed 's/^/  /' "$WORK/server.log"
rm -rf "$WORK"
echo "RESULT: $fails failure(s)"
[ "$fails" = 0 ]
