#!/bin/sh
# The daemon's [[attach]] entries against the real kernel (issue 10): `hexzd serve --config`
# with one entry attaching an ext4 snapshot to NBD_DEV. The readiness line comes only once the
# device has its capacity; the device is read-only and driven by the daemon; mount -o ro
# shows the files; HTTP (wget) and NBD (nbd-client on NBD_DEV2) clients are served as usual
# meanwhile; SIGHUP without the entry detaches it and clears the device; SIGHUP with it again
# attaches it; a `hexzd detach` from outside is logged and not undone until the next SIGHUP;
# SIGTERM detaches, clears the device and exits 0.
#
# POSIX sh: runs under busybox ash inside nbdvm (tests/kernel_proxy.sh) and, as root, on any
# machine with the nbd module, nbd-client, mount, wget and sha256sum:
#
#   tests/guest/daemon_attach.sh DIR
#
# DIR holds `hexzd`, `base.hxz` (an ext4 image) and `base.sums` (sha256sum output for its
# files). Environment: NBD_DEV (default /dev/nbd0) and NBD_DEV2 (default /dev/nbd1), unused.

DIR=${1:-/host}
DEV=${NBD_DEV:-/dev/nbd0}
DEV2=${NBD_DEV2:-/dev/nbd1}
SYS=/sys/block/$(basename "$DEV")
SYS2=/sys/block/$(basename "$DEV2")

fails=0
pass() { echo "PASS: [[attach]] $*"; }
fail() { echo "FAIL: [[attach]] $*"; fails=$((fails + 1)); }

WORK=$(mktemp -d /tmp/hexzd-attach.XXXXXX)
MNT=$WORK/mnt
mkdir -p "$MNT"
for f in hexzd base.hxz base.sums; do
    cp "$DIR/$f" "$WORK/$f"
done
H=$WORK/hexzd
LOG=$WORK/daemon.log

. "$(dirname "$0")/nbd_lib.sh"
# count_at_least N PATTERN: the daemon's log has N lines matching PATTERN.
count_at_least() { [ "$(grep -c -- "$2" "$LOG")" -ge "$1" ]; }
# ' attached DEV' (with the space) is an attach, never a "detached" line.
ATTACHED=" attached $DEV "

check_files() { # check_files DEVICE DESCRIPTION
    if mount -o ro -t ext4 "$1" "$MNT"; then
        if (cd "$MNT" && sha256sum -c "$WORK/base.sums" > "$WORK/check.log" 2>&1); then
            pass "$2: mount -o ro, $(wc -l < "$WORK/base.sums") file checksums match"
        else
            fail "$2: checksum mismatch"
            cat "$WORK/check.log"
        fi
        umount "$MNT" || fail "$2: umount"
    else
        fail "$2: mount -o ro $1"
    fi
}

expect_cleared() { # expect_cleared SYSDIR DESCRIPTION
    if wait_for 10 cleared "$1"; then
        pass "$2: device cleared (size 0, no pid)"
    else
        fail "$2: device still configured (size $(cat "$1/size"))"
    fi
}

write_config() { # write_config with|without
    {
        printf '[http]\nlisten = ["127.0.0.1:0"]\n[nbd]\nlisten = ["127.0.0.1:0"]\n'
        printf '[[snapshot]]\nname = "base"\npath = "%s"\n' "$WORK/base.hxz"
        if [ "$1" = with ]; then
            printf '[[attach]]\nsnapshot = "base"\ndevice = "%s"\n' "$DEV"
        fi
    } > "$WORK/hexzd.toml.new"
    mv "$WORK/hexzd.toml.new" "$WORK/hexzd.toml"
}

write_config with
"$H" serve --config "$WORK/hexzd.toml" 2> "$LOG" &
daemon=$!

# Start-up: the readiness line for the device is the last one, and the capacity is there
# the moment it appears.
if wait_for 60 count_at_least 1 "$ATTACHED"; then
    if size_nonzero "$SYS"; then
        pass "start: '$(grep -- "$ATTACHED" "$LOG")' once $DEV has its capacity ($(cat "$SYS/size") sectors)"
    else
        fail "start: readiness line while $DEV has no capacity"
    fi
else
    fail "start: no readiness line for $DEV"
    cat "$LOG"
    kill "$daemon" 2>/dev/null
    exit 1
fi
listen_at=$(grep -n 'NBD listening on' "$LOG" | cut -d: -f1)
attach_at=$(grep -n -- "$ATTACHED" "$LOG" | cut -d: -f1)
[ "$listen_at" -lt "$attach_at" ] && pass "start: the listeners were up before the device was attached" ||
    fail "start: attached before the listeners were up"
[ "$(cat "$SYS/ro")" = 1 ] && pass "start: read-only device" || fail "start: device not read-only"
# The kernel records the thread that runs NBD_DO_IT: one of the daemon's.
[ -e "/proc/$daemon/task/$(cat "$SYS/pid")" ] && pass "start: $DEV is driven by the daemon (pid $daemon)" ||
    fail "start: $DEV is driven by task $(cat "$SYS/pid"), not a thread of the daemon ($daemon)"
HPORT=$(sed -n 's/.*HTTP listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$LOG")
NPORT=$(sed -n 's/.*NBD listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$LOG")

check_files "$DEV" "attached"

# The front ends serve as usual while the device is attached.
want=$(sha256sum < "$DEV" | cut -d' ' -f1)
got=$(wget -q -O - "http://127.0.0.1:$HPORT/disk" | sha256sum | cut -d' ' -f1)
[ -n "$got" ] && [ "$got" = "$want" ] && pass "HTTP: wget /disk gives the bytes of $DEV" ||
    fail "HTTP: wget /disk: $got, $DEV: $want"
if nbd-client 127.0.0.1 "$NPORT" "$DEV2" -N base > /dev/null 2>&1 && wait_for 30 size_nonzero "$SYS2"; then
    pass "NBD: nbd-client attached export base to $DEV2"
    check_files "$DEV2" "NBD client beside the attachment"
    nbd-client -d "$DEV2" > /dev/null 2>&1 || fail "NBD: nbd-client -d"
    expect_cleared "$SYS2" "NBD client"
else
    fail "NBD: nbd-client 127.0.0.1 $NPORT $DEV2 -N base"
fi

# SIGHUP without the entry: detached, device cleared, the daemon serves on.
write_config without
kill -HUP "$daemon"
expect_cleared "$SYS" "SIGHUP without the entry"
wait_for 30 count_at_least 1 "detached $DEV (snapshot base): no longer in the config" &&
    pass "SIGHUP without the entry: logged" || fail "SIGHUP without the entry: no log line"
wget -q -O /dev/null "http://127.0.0.1:$HPORT/snapshots/base/disk" && pass "SIGHUP without the entry: HTTP still served" ||
    fail "SIGHUP without the entry: HTTP failed"

# SIGHUP with the entry again: attached again.
write_config with
kill -HUP "$daemon"
if wait_for 60 count_at_least 2 "$ATTACHED" && wait_for 10 size_nonzero "$SYS"; then
    pass "SIGHUP with the entry: attached again"
    check_files "$DEV" "re-attached"
else
    fail "SIGHUP with the entry: not attached"
    cat "$LOG"
fi

# A detach from outside: logged, the device stays cleared, the daemon runs on; the next
# SIGHUP attaches it again (nothing restarts it before).
"$H" detach "$DEV" || fail "hexzd detach $DEV"
expect_cleared "$SYS" "hexzd detach from outside"
wait_for 30 count_at_least 1 "$DEV (snapshot base) is detached" &&
    pass "hexzd detach from outside: logged: $(grep -- "$DEV (snapshot base) is detached" "$LOG")" ||
    fail "hexzd detach from outside: not logged"
kill -0 "$daemon" 2>/dev/null && pass "hexzd detach from outside: the daemon runs on" ||
    fail "hexzd detach from outside: the daemon exited"
kill -HUP "$daemon"
if wait_for 60 count_at_least 3 "$ATTACHED" && wait_for 10 size_nonzero "$SYS"; then
    pass "SIGHUP after the outside detach: attached again"
else
    fail "SIGHUP after the outside detach: not attached"
fi

# SIGTERM: detached, device cleared, exit 0.
kill -TERM "$daemon"
wait "$daemon"
st=$?
[ "$st" = 0 ] && pass "SIGTERM: exit 0" || fail "SIGTERM: exit $st"
expect_cleared "$SYS" "SIGTERM"
grep -q -- "detached $DEV (snapshot base)$" "$LOG" && pass "SIGTERM: detach logged" ||
    fail "SIGTERM: no detach line"
if grep -q -e '^ERROR' -e '^WARN' "$LOG"; then
    # The only warning expected is the outside detach.
    if grep -e '^ERROR' -e '^WARN' "$LOG" | grep -v -q "is detached: the kernel ended the session"; then
        fail "unexpected warnings or errors:"
        grep -e '^ERROR' -e '^WARN' "$LOG"
    fi
fi

# Without the rights: a daemon that is not root (su to nobody: no capabilities)
# stops at start-up with one line naming the device and what it lacks, and touches nothing.
# A node of the same device, world-writable, gets it past open() to the ioctls' EPERM.
NOPERM=/dev/hexzd-test-noperm-nbd
mknod -m 666 "$NOPERM" b "$(cut -d: -f1 "$SYS/dev")" "$(cut -d: -f2 "$SYS/dev")"
chmod 755 "$WORK"
no_rights() { # no_rights DEVICE DESCRIPTION EXPECTED-REASON
    {
        printf '[http]\nlisten = []\n[nbd]\nlisten = []\n'
        printf '[[snapshot]]\nname = "base"\npath = "%s"\n' "$WORK/base.hxz"
        printf '[[attach]]\nsnapshot = "base"\ndevice = "%s"\n' "$1"
    } > "$WORK/noperm.toml"
    chmod 644 "$WORK/noperm.toml"
    su -s /bin/sh nobody -c "exec '$H' serve --config '$WORK/noperm.toml'" \
        > /dev/null 2> "$WORK/noperm.log" < /dev/null
    st=$?
    last=$(tail -n 1 "$WORK/noperm.log")
    want="hexzd: cannot attach snapshot \"base\" to $1: $3"
    if [ "$st" = 1 ] && [ "$last" = "$want" ]; then
        pass "$2: exit 1, '$last'"
    else
        fail "$2: exit $st, '$last' (want '$want')"
    fi
    cleared "$SYS" && pass "$2: $DEV untouched" || fail "$2: $DEV was configured"
}
if grep -q '^nobody:' /etc/passwd && command -v su > /dev/null; then
    no_rights "$DEV" "not root, no access to the node" \
        "can't open nbd device $DEV: Permission denied (needs root or CAP_SYS_ADMIN)"
    no_rights "$NOPERM" "not root, no CAP_SYS_ADMIN" \
        "nbd device $NOPERM: NBD_CLEAR_QUE failed: Operation not permitted (needs root or CAP_SYS_ADMIN)"
else
    echo "SKIP: [[attach]] without rights: no user nobody or no su here"
fi
rm -f "$NOPERM"

rm -rf "$WORK"
echo "RESULT: [[attach]] $fails failure(s)"
[ "$fails" = 0 ]
