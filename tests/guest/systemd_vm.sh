#!/bin/sh
# Guest half of tests/systemd_vm.sh: runs under systemd as PID 1 (nbdvm `run.sh -R`, the shell
# is dash) in a debootstrapped Debian 12. /host holds hexzd.deb, demo.hxz and demo.sha256.
#
# What a new user does with the package, step by step: dpkg -i, put a snapshot in the config,
# systemctl start hexzd (Type=notify: returns once READY=1 came), curl a range, attach the NBD
# export with nbd-client and mount it, systemctl reload while readers run (a good config, one
# that `systemctl reload` refuses, and a bad one sent as a bare SIGHUP), the watchdog,
# systemctl stop, the journal's priority-tagged lines (err for a failed reload, info for
# requests), then the same daemon started on demand through hexzd-http.socket and
# hexzd-nbd.socket. Then nbd-proxy as packaged (`/usr/bin/nbd-proxy --metadata`, and
# nbd-proxy@nbd0.service attaching a local snapshot with the shipped state hook), and the
# daemon's [[attach]] entry: refused by the packaged unit with one clear line, working with
# the shipped drop-in (READY=1 after the capacity, reload removes and re-adds the entry, stop
# clears the device). Prints
# `systemctl status hexzd` as it stood while serving.

DIR=${1:-/host}
# Plain text in the console: no terminal hyperlinks, no pager.
export SYSTEMD_URLIFY=0 SYSTEMD_PAGER=
fails=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
check() { # check DESCRIPTION COMMAND...
    what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
# Waits up to $1 seconds for the command to succeed (a state to be reached, not a delay).
wait_until() {
    limit=$1
    shift
    i=0
    while ! "$@"; do
        i=$((i + 1))
        [ "$i" -gt $((limit * 10)) ] && return 1
        sleep 0.1
    done
}
status_text() { systemctl show -p StatusText --value hexzd; }

echo "guest: $(cat /proc/1/comm) is PID 1; systemd $(systemctl --version | head -n 1 | cut -d' ' -f2); uptime $(cut -d' ' -f1 /proc/uptime) s"
# Boot is done when no job but this script's is left (the system stays "starting" until the
# script, part of multi-user.target, ends).
wait_until 120 sh -c '[ "$(systemctl list-jobs --no-legend | grep -vc nbdvm-run)" = 0 ]'

stamp() { echo "guest: $* at uptime $(cut -d' ' -f1 /proc/uptime) s"; }
# Install.
check "dpkg -i hexzd.deb" dpkg -i "$DIR/hexzd.deb"
check "units installed and known to systemd" sh -c 'systemctl cat hexzd.service hexzd-http.socket hexzd-nbd.socket > /dev/null' 
check "the sample config is a conffile" grep -q /etc/hexzd/hexzd.toml /var/lib/dpkg/info/hexzd.conffiles

# A snapshot, readable by the dynamic user.
mkdir -p /srv/snapshots
cp "$DIR/demo.hxz" /srv/snapshots/demo.hxz
cp "$DIR/demo.hxz" /srv/snapshots/demo2.hxz
chmod 755 /srv/snapshots
chmod 644 /srv/snapshots/*.hxz
cat >> /etc/hexzd/hexzd.toml << 'EOF'

[[snapshot]]
name = "demo"
path = "/srv/snapshots/demo.hxz"
EOF
cp /etc/hexzd/hexzd.toml /tmp/good.toml

check "hexzd serve --check-config (as the README does)" hexzd serve --check-config --config /etc/hexzd/hexzd.toml
check "systemctl enable --now hexzd" systemctl enable --now hexzd
check "hexzd is enabled" systemctl is-enabled --quiet hexzd
check "hexzd is active" systemctl is-active --quiet hexzd
check "both sockets are active" systemctl is-active --quiet hexzd-http.socket hexzd-nbd.socket
echo "----- systemctl status hexzd (serving) -----"
systemctl status hexzd --no-pager --full --lines=8
echo "----- end of status -----"
check "STATUS= names the snapshot" sh -c 'systemctl show -p StatusText --value hexzd | grep -q "serving 1 snapshot(s): demo"'

stamp "started"
# HTTP: the ext4 superblock magic 0xEF53 at 1024 + 0x38, and the whole disk's checksum.
magic=$(curl -sf -r 1024-2047 http://127.0.0.1:8080/disk | od -A n -t x1 -j 56 -N 2 | tr -d ' ')
check "curl -r 1024-2047 shows the ext4 superblock magic (got '$magic')" [ "$magic" = 53ef ]
want=$(grep disk.img "$DIR/demo.sha256" | cut -d' ' -f1)
got=$(curl -sf http://127.0.0.1:8080/disk | sha256sum | cut -d' ' -f1)
check "curl /disk matches demo.sha256" [ "$got" = "$want" ]

# NBD through the kernel client, mounted.
[ -e /dev/nbd0 ] || modprobe nbd
check "nbd-client attaches the default export" nbd-client 127.0.0.1 10809 /dev/nbd0
wait_until 30 sh -c '[ "$(cat /sys/block/nbd0/size)" != 0 ]'
mkdir -p /mnt/snap
check "mount -o ro /dev/nbd0" mount -o ro /dev/nbd0 /mnt/snap
check "the README inside the snapshot reads back" grep -q . /mnt/snap/README

# Readers that keep going through the reloads: direct reads of the NBD device, and curl.
rm -f /tmp/stop /tmp/errors /tmp/reads
(
    while [ ! -e /tmp/stop ]; do
        dd if=/dev/nbd0 of=/dev/null bs=1M count=8 iflag=direct 2> /dev/null || echo "nbd read failed" >> /tmp/errors
        curl -sf -o /dev/null http://127.0.0.1:8080/disk || echo "curl failed" >> /tmp/errors
        echo . >> /tmp/reads
    done
) &
reader=$!
wait_until 60 test -s /tmp/reads

stamp "readers running"
# A good reload: a second snapshot appears.
cat >> /etc/hexzd/hexzd.toml << 'EOF'

[[snapshot]]
name = "demo2"
path = "/srv/snapshots/demo2.hxz"
EOF
check "systemctl reload hexzd (good config)" systemctl reload hexzd
check "the reload finished: STATUS= says so" wait_until 60 sh -c 'systemctl show -p StatusText --value hexzd | grep -q "serving 2 snapshot(s).*last reload: ok"'
check "the new snapshot answers" curl -sf -o /dev/null http://127.0.0.1:8080/snapshots/demo2/disk

# A bad config: `systemctl reload` refuses it (ExecReload= checks first) and nothing changes.
printf '[http]\nlisten_on = []\n' > /etc/hexzd/hexzd.toml
if systemctl reload hexzd 2> /dev/null; then fail "systemctl reload accepted a bad config"; else pass "systemctl reload refuses a bad config"; fi
check "hexzd still active after the refused reload" systemctl is-active --quiet hexzd
# The same config as a bare SIGHUP: the daemon's own reload fails, logged at err, READY=1 again.
systemctl kill -s HUP --kill-whom=main hexzd
check "a failed reload is in STATUS=" wait_until 60 sh -c 'systemctl show -p StatusText --value hexzd | grep -q "last reload: FAILED"'
check "hexzd still active after the failed reload" systemctl is-active --quiet hexzd
check "still serving both snapshots" curl -sf -o /dev/null http://127.0.0.1:8080/snapshots/demo2/disk
cp /tmp/good.toml /etc/hexzd/hexzd.toml
check "systemctl reload hexzd (back to one snapshot)" systemctl reload hexzd
check "the reload finished" wait_until 60 sh -c 'systemctl show -p StatusText --value hexzd | grep -q "serving 1 snapshot(s).*last reload: ok"'

stamp "reloads done"
touch /tmp/stop
wait "$reader"
check "the readers ran through the reloads ($(wc -l < /tmp/reads) rounds)" test -s /tmp/reads
if [ -s /tmp/errors ]; then fail "reads failed during reloads: $(sort /tmp/errors | uniq -c)"; else pass "no read failed during the reloads"; fi
check "the mounted file system still reads" grep -q . /mnt/snap/README

# The watchdog: WatchdogSec=30s, and pings have arrived.
check "WatchdogUSec is 30s" sh -c '[ "$(systemctl show -p WatchdogUSec --value hexzd)" = 30s ]'
check "watchdog pings arrived" sh -c '[ "$(systemctl show -p WatchdogTimestampMonotonic --value hexzd)" != 0 ]'

umount /mnt/snap
check "nbd-client -d" nbd-client -d /dev/nbd0

echo "----- systemctl status hexzd (before stop) -----"
systemctl status hexzd --no-pager --full --lines=5
echo "----- end of status -----"
check "systemctl stop hexzd" systemctl stop hexzd
check "stopped cleanly (Result=success)" sh -c '[ "$(systemctl show -p Result --value hexzd)" = success ]'

# The journal: one line per request at info, the failed reload at err.
check "journal: request lines at info" sh -c 'journalctl -u hexzd -p info..info --no-pager | grep -q "GET /disk"'
check "journal: the failed reload at err" sh -c 'journalctl -u hexzd -p err..err --no-pager | grep -q "reload failed"'
check "journal: the refused reload (check-config) at err" sh -c 'journalctl -u hexzd -p err..err --no-pager | grep -q "listen_on"'
check "journal: shutdown logged" sh -c 'journalctl -u hexzd --no-pager | grep -q "shutting down"'
echo "----- journalctl -u hexzd -p err -----"
journalctl -u hexzd -p err --no-pager | tail -n 5

stamp "stopped"
# On demand through the socket units.
systemctl stop hexzd-http.socket hexzd-nbd.socket
check "sockets started alone" systemctl start hexzd-http.socket hexzd-nbd.socket
check "hexzd not running before a connection" sh -c '! systemctl is-active --quiet hexzd'
got=$(curl -sf --max-time 120 http://127.0.0.1:8080/disk | sha256sum | cut -d' ' -f1)
check "a connection to hexzd-http.socket starts hexzd and is answered" [ "$got" = "$want" ]
check "hexzd active after socket activation" wait_until 60 systemctl is-active --quiet hexzd
check "the daemon serves the sockets it was given" sh -c 'journalctl -u hexzd --no-pager | grep -q "NBD listening on 127.0.0.1:10809"'
check "NBD through hexzd-nbd.socket" nbd-client 127.0.0.1 10809 /dev/nbd0
wait_until 30 sh -c '[ "$(cat /sys/block/nbd0/size)" != 0 ]'
check "mount through the socket-activated daemon" mount -o ro /dev/nbd0 /mnt/snap
umount /mnt/snap
nbd-client -d /dev/nbd0 > /dev/null
check "systemctl stop hexzd hexzd-http.socket hexzd-nbd.socket" systemctl stop hexzd hexzd-http.socket hexzd-nbd.socket

nbd0_size() { cat /sys/block/nbd0/size; }
nbd0_cleared() { [ "$(nbd0_size)" = 0 ] && [ ! -e /sys/block/nbd0/pid ]; }

stamp "nbd-proxy@.service"
# nbd-proxy as packaged: the link, the shipped config's metadata, then one configuration that
# names a local snapshot, run by nbd-proxy@nbd0.service with the shipped state hook (which
# logs "ACTION NAME" with logger -t nbd-proxy-state).
want_meta='{ "0": { "description": "Virtual media device" }, "1": { "description": "Dump Offload" } }'
got_meta=$(/usr/bin/nbd-proxy --metadata)
check "/usr/bin/nbd-proxy --metadata prints the shipped config's metadata" [ "$got_meta" = "$want_meta" ]
cat > /etc/nbd-proxy/config.json << 'JSON_EOF'
{
    "timeout": 30,
    "configurations": {
        "nbd0": {
            "nbd-device": "/dev/nbd0",
            "snapshot": "/srv/snapshots/demo.hxz",
            "metadata": { "description": "demo snapshot on /dev/nbd0" }
        }
    }
}
JSON_EOF
check "systemctl start nbd-proxy@nbd0" systemctl start nbd-proxy@nbd0
# Type=notify: start returned after READY=1, which the session sends once the device has its
# capacity.
size=$(nbd0_size)
check "READY=1 came once /dev/nbd0 had its capacity ($size sectors)" [ "$size" != 0 ]
check "nbd-proxy@nbd0 is active" systemctl is-active --quiet nbd-proxy@nbd0
check "mount -o ro the proxy's device" mount -o ro /dev/nbd0 /mnt/snap
check "the README inside the snapshot reads back through nbd-proxy" grep -q . /mnt/snap/README
umount /mnt/snap
check "the state hook ran with 'start nbd0'" wait_until 30 sh -c 'journalctl -t nbd-proxy-state --no-pager | grep -q "start nbd0"'
echo "----- systemctl status nbd-proxy@nbd0 -----"
systemctl status nbd-proxy@nbd0 --no-pager --full --lines=4
echo "----- end of status -----"
check "systemctl stop nbd-proxy@nbd0" systemctl stop nbd-proxy@nbd0
check "the state hook ran with 'stop nbd0'" wait_until 30 sh -c 'journalctl -t nbd-proxy-state --no-pager | grep -q "stop nbd0"'
check "nbd-proxy@nbd0: device cleared" wait_until 10 nbd0_cleared
check "nbd-proxy@nbd0 stopped cleanly (Result=success)" sh -c '[ "$(systemctl show -p Result --value nbd-proxy@nbd0)" = success ]'

stamp "[[attach]] under hexzd.service"
# The daemon's [[attach]] entry. The packaged unit (dynamic user, no capabilities, private
# /dev) cannot attach: start-up fails with one line that names the device and the drop-in.
cp /tmp/good.toml /etc/hexzd/hexzd.toml
printf '\n[[attach]]\nsnapshot = "demo"\ndevice = "/dev/nbd0"\n' >> /etc/hexzd/hexzd.toml
cp /etc/hexzd/hexzd.toml /tmp/attach.toml
check "check-config lists the entry" sh -c 'hexzd serve --check-config --config /etc/hexzd/hexzd.toml 2>&1 | grep -q "attaching demo on /dev/nbd0"'
# refused_start WHY NEEDLE: hexzd does not start, and its journal's err line has NEEDLE.
# (`systemctl start` itself would wait through Restart=on-failure's five tries, ~10 s: the
# job is queued without waiting, the first try's line is awaited, then the retries stopped.)
refused_lines() { journalctl -u hexzd -p err --no-pager -o cat | grep "cannot attach"; }
refused_more() { [ "$(refused_lines | wc -l)" -gt "$before" ]; }
refused_start() {
    before=$(refused_lines | wc -l)
    systemctl start --no-block hexzd
    if wait_until 30 refused_more; then
        check "$1: hexzd is not active" sh -c '! systemctl is-active --quiet hexzd'
    else
        fail "$1: no err line from hexzd"
    fi
    systemctl stop hexzd hexzd-http.socket hexzd-nbd.socket
    systemctl reset-failed hexzd
    line=$(refused_lines | tail -n 1)
    echo "guest: $1: $line"
    case "$line" in
        *"cannot attach snapshot \"demo\" to /dev/nbd0: "*"$2"*"install the [[attach]] drop-in"*) pass "$1: the err line names the device, the reason and the drop-in" ;;
        *) fail "$1: err line: '$line'" ;;
    esac
    check "$1: /dev/nbd0 untouched" nbd0_cleared
}
refused_start "no drop-in" "can't open nbd device /dev/nbd0: No such file or directory"
# (Without CAP_SYS_ADMIN the ioctls' EPERM is checked in tests/guest/daemon_attach.sh, where
# it costs no daemon-reload.)

stamp "refusal checked"
# The drop-in as shipped.
mkdir -p /etc/systemd/system/hexzd.service.d
cp /usr/share/doc/hexzd/examples/attach.conf /etc/systemd/system/hexzd.service.d/attach.conf
systemctl daemon-reload
check "with the drop-in, systemctl start hexzd" systemctl start hexzd
size=$(nbd0_size)
check "READY=1 came once /dev/nbd0 had its capacity ($size sectors)" [ "$size" != 0 ]
check "STATUS= shows the attachment" sh -c 'systemctl show -p StatusText --value hexzd | grep -q "attached: /dev/nbd0 (snapshot demo)"'
echo "----- systemctl status hexzd (with [[attach]]) -----"
systemctl status hexzd --no-pager --full --lines=4
echo "----- end of status -----"
check "mount -o ro the attached device" mount -o ro /dev/nbd0 /mnt/snap
check "the README inside the snapshot reads back through [[attach]]" grep -q . /mnt/snap/README
umount /mnt/snap
curl -sf -r 1024-2047 -o /tmp/range.http http://127.0.0.1:8080/disk
dd if=/dev/nbd0 of=/tmp/range.dev bs=1024 skip=1 count=1 2> /dev/null
check "HTTP is served beside the attachment (the superblock, as the device reads it)" cmp -s /tmp/range.http /tmp/range.dev
cp /tmp/good.toml /etc/hexzd/hexzd.toml
check "systemctl reload hexzd (entry removed)" systemctl reload hexzd
check "the entry is detached and the device cleared" wait_until 30 nbd0_cleared
check "STATUS= no longer shows it" wait_until 30 sh -c '! systemctl show -p StatusText --value hexzd | grep -q "attached:"'
cp /tmp/attach.toml /etc/hexzd/hexzd.toml
check "systemctl reload hexzd (entry added)" systemctl reload hexzd
check "attached again" wait_until 30 sh -c '[ "$(cat /sys/block/nbd0/size)" != 0 ]'
check "STATUS= shows it again" wait_until 30 sh -c 'systemctl show -p StatusText --value hexzd | grep -q "attached: /dev/nbd0"'
check "systemctl stop hexzd (attached)" systemctl stop hexzd
check "stop: device cleared" wait_until 10 nbd0_cleared
check "stopped cleanly with [[attach]] (Result=success)" sh -c '[ "$(systemctl show -p Result --value hexzd)" = success ]'
# Left as it is (the drop-in, the config): the guest ends here.
stamp "[[attach]] checked"

echo "guest: done at uptime $(cut -d' ' -f1 /proc/uptime) s"
echo "RESULT: $fails failure(s)"
[ "$fails" = 0 ]
