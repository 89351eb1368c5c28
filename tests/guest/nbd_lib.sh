# Shared by the guest scripts that drive /dev/nbdX themselves (kernel_proxy.sh,
# daemon_attach.sh); sourced from beside them, after they set DEV and DEV2.

# Both devices exist and are free (a device in use has a pid file).
[ -e "$DEV" ] || modprobe nbd 2>/dev/null
for d in "$DEV" "$DEV2"; do
    [ -b "$d" ] || { echo "FAIL: $d does not exist (is the nbd module loaded?)"; exit 1; }
    if [ -e "/sys/block/$(basename "$d")/pid" ]; then
        echo "FAIL: $d is in use; set NBD_DEV/NBD_DEV2"
        exit 1
    fi
done

# Bounded polls of state the kernel or a background process sets (never a fixed sleep).
wait_for() { # wait_for SECONDS COMMAND...
    limit=$(($1 * 10))
    shift
    j=0
    while ! "$@"; do
        j=$((j + 1))
        [ $j -ge $limit ] && return 1
        sleep 0.1
    done
}
# size_nonzero SYSDIR / cleared SYSDIR: the device (/sys/block/nbdX) has its capacity; has
# none and no session.
size_nonzero() { [ "$(cat "$1/size")" != 0 ]; }
cleared() { [ "$(cat "$1/size")" = 0 ] && [ ! -e "$1/pid" ]; }
