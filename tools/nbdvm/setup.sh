#!/usr/bin/env bash
# nbdvm/setup.sh - prepare everything needed to boot a throw-away Linux VM in
# which the kernel NBD client (/dev/nbd*) can be exercised.
#
# Idempotent: safe to run repeatedly.  It
#   1. installs the Debian packages the harness needs (only the missing ones),
#   2. downloads (does NOT install) the Debian kernel package and unpacks it
#      under $NBDVM_DIR/kernel - the host's /boot and /lib/modules are untouched,
#   3. (re)builds the base initramfs $NBDVM_DIR/initramfs.cpio.gz containing
#      busybox, the nbd/9p/virtio/ext4 modules, nbd-client, nbd-server,
#      mke2fs/e2fsck and the shared libraries they need, plus /init.
#
# Large artifacts go to $NBDVM_DIR (default /tmp/nbdvm), never into the repo.
#
# Environment knobs:
#   NBDVM_DIR          artifact directory (default /tmp/nbdvm)
#   NBDVM_KERNEL_PKG   kernel package to use (default: whatever the
#                      linux-image-amd64 meta package depends on)
#   NBDVM_EXTRA_BINS   space separated list of extra host executables to copy
#                      into the initramfs (with their libraries), e.g.
#                      "/usr/bin/qemu-nbd /usr/bin/strace"
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NBDVM_DIR="${NBDVM_DIR:-/tmp/nbdvm}"
mkdir -p "$NBDVM_DIR"

log() { printf 'nbdvm-setup: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, depmod)"

# ---------------------------------------------------------------------------
# 1. Host packages
# ---------------------------------------------------------------------------
PKGS=(busybox-static nbd-client nbd-server e2fsprogs cpio kmod xz-utils zstd gzip)
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
pkgver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null; }

# Run apt-get with a temporary policy-rc.d (if the machine has none) so that
# no daemon (nbd-server!) gets started on the host by maintainer scripts, and
# with --no-remove so that apt can never uninstall anything.
apt_install() {
    local tmp_policy="" rc=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        tmp_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get "$@" install -y -q --no-install-recommends --no-remove \
        "${APT_PKGS[@]}" || rc=$?
    [ -n "$tmp_policy" ] && rm -f /usr/sbin/policy-rc.d
    return "$rc"
}

missing=()
for p in "${PKGS[@]}"; do installed "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    # 'apt-get update' only if the package lists look empty.
    apt-cache show busybox-static >/dev/null 2>&1 || apt-get update -q
    APT_PKGS=("${missing[@]}")
    apt_install || die "apt-get install failed"
fi

# qemu-system-x86.  The project's machines ship qemu-utils (qemu-img,
# qemu-nbd) 10.x from bookworm-backports, and qemu-utils >= 8 Breaks
# bookworm's qemu-system-common 7.2: installing plain "qemu-system-x86" there
# would REMOVE qemu-utils.  So in that case take qemu-system-x86 from
# bookworm-backports too, through a private apt configuration under
# $NBDVM_DIR/apt-bpo (the system's sources.list.d and package lists are left
# untouched).  Without a backports qemu-utils, bookworm's qemu is used.
if ! installed qemu-system-x86; then
    if installed qemu-utils && dpkg --compare-versions "$(pkgver qemu-utils)" ge 1:8; then
        log "installing qemu-system-x86 from bookworm-backports (qemu-utils $(pkgver qemu-utils) is installed)"
        BPO="$NBDVM_DIR/apt-bpo"
        rm -rf "$BPO/srcparts"
        mkdir -p "$BPO/srcparts" "$BPO/lists/partial"
        for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
            [ -e "$f" ] && cp "$f" "$BPO/srcparts/"
        done
        [ -s /etc/apt/sources.list ] && cp /etc/apt/sources.list "$BPO/srcparts/00-sources.list"
        cat > "$BPO/srcparts/zz-bookworm-backports.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        BPO_OPTS=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$BPO/srcparts"
                  -o "Dir::State::Lists=$BPO/lists")
        apt-get "${BPO_OPTS[@]}" update -q
        APT_PKGS=(qemu-system-x86)
        # hexzd: "-t bookworm-backports" (not just "pkg/bookworm-backports") so that its
        # dependencies (qemu-system-common, qemu-system-data, seabios) also come from
        # backports; without it apt cannot resolve them on this machine kind.
        apt_install "${BPO_OPTS[@]}" -t bookworm-backports || die "installing qemu-system-x86 from backports failed"
    else
        log "installing qemu-system-x86"
        apt-cache show qemu-system-x86 >/dev/null 2>&1 || apt-get update -q
        APT_PKGS=(qemu-system-x86)
        apt_install || die "apt-get install qemu-system-x86 failed"
    fi
fi

# ---------------------------------------------------------------------------
# 2. Kernel: download the .deb and unpack it privately
# ---------------------------------------------------------------------------
KPKG="${NBDVM_KERNEL_PKG:-}"
if [ -z "$KPKG" ]; then
    KPKG="$(apt-cache depends linux-image-amd64 2>/dev/null \
            | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
    # Reuse an already unpacked kernel if the package index is unavailable.
    if [ -z "$KPKG" ] && [ -f "$NBDVM_DIR/kernel/.pkg" ]; then
        KPKG="$(cat "$NBDVM_DIR/kernel/.pkg")"
    fi
fi
[ -n "$KPKG" ] || die "cannot determine the kernel package (apt-get update?)"

KDIR="$NBDVM_DIR/kernel"
if [ "$(cat "$KDIR/.pkg" 2>/dev/null)" != "$KPKG" ]; then
    log "fetching kernel package $KPKG"
    mkdir -p "$NBDVM_DIR/debs"
    # _apt must be able to write here, or apt warns and downloads unsandboxed.
    chmod 0777 "$NBDVM_DIR/debs"
    (cd "$NBDVM_DIR/debs" && apt-get download -q "$KPKG")
    deb="$(ls -t "$NBDVM_DIR/debs/${KPKG}"_*.deb | head -n1)"
    rm -rf "$KDIR"
    mkdir -p "$KDIR"
    dpkg-deb -x "$deb" "$KDIR"
    echo "$KPKG" > "$KDIR/.pkg"
fi
KVER="$(ls "$KDIR/lib/modules" | head -n1)"
[ -n "$KVER" ] || die "no modules directory in $KDIR"
[ -f "$KDIR/lib/modules/$KVER/modules.dep" ] || depmod -b "$KDIR" "$KVER"
ln -sfn "kernel/boot/vmlinuz-$KVER" "$NBDVM_DIR/vmlinuz"
echo "$KVER" > "$NBDVM_DIR/kver"

# Uncompressed ELF kernel.  qemu boots it directly through its PVH entry point,
# which skips the in-guest decompression of the bzImage - about 3 s per boot
# under TCG.  Same approach as the kernel's scripts/extract-vmlinux: find each
# compressed-stream magic in the bzImage and try to decompress from there.
extract_vmlinux() {
    local img="$1" out="$2" magic marker cmd pos
    while read -r magic marker cmd; do
        for pos in $(tr "$magic\n$marker" "\n$marker=" < "$img" \
                     | grep -abo "^$marker" | cut -d: -f1); do
            tail -c+"$pos" "$img" | $cmd > "$out.tmp" 2>/dev/null
            if [ "$(head -c 4 "$out.tmp" | od -An -c | tr -d ' ')" = '177ELF' ]; then
                mv "$out.tmp" "$out"
                return 0
            fi
        done
    done <<'EOF'
\3757zXZ\000 abcde xz -dc
(\265/\375 xxx zstd -dc
\037\213\010 xy gzip -dc
EOF
    rm -f "$out.tmp"
    return 1
}
if [ ! -s "$KDIR/vmlinux-$KVER" ]; then
    if extract_vmlinux "$KDIR/boot/vmlinuz-$KVER" "$KDIR/vmlinux-$KVER"; then
        log "extracted uncompressed kernel vmlinux-$KVER"
    else
        log "WARNING: could not extract vmlinux; run.sh will boot the bzImage (slower)"
    fi
fi
if [ -s "$KDIR/vmlinux-$KVER" ]; then
    ln -sfn "kernel/vmlinux-$KVER" "$NBDVM_DIR/vmlinux"
else
    rm -f "$NBDVM_DIR/vmlinux"
fi
MODROOT="$KDIR/lib/modules/$KVER"

# ---------------------------------------------------------------------------
# 3. Base initramfs
# ---------------------------------------------------------------------------
ROOT="$NBDVM_DIR/initramfs.d"
rm -rf "$ROOT"
mkdir -p "$ROOT"/{usr/bin,usr/lib/x86_64-linux-gnu,usr/lib64,etc/nbdvm,proc,sys,dev,run,tmp,mnt,host,out,nbdvm,root,var}
# Merged-/usr layout, like the host (Debian 12).
ln -s usr/bin "$ROOT/bin"
ln -s usr/bin "$ROOT/sbin"
ln -s bin "$ROOT/usr/sbin"
ln -s usr/lib "$ROOT/lib"
ln -s usr/lib64 "$ROOT/lib64"
chmod 1777 "$ROOT/tmp"
mkdir -p "$ROOT/var/lock" "$ROOT/var/tmp" "$ROOT/var/lib"   # qemu-nbd -c wants /var/lock
chmod 1777 "$ROOT/var/tmp"
ln -s ../run "$ROOT/var/run"

# busybox + one symlink per applet
cp /bin/busybox "$ROOT/usr/bin/busybox"
for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -sf busybox "$ROOT/usr/bin/$a"
done

# Copy a host file into the initramfs at the same path, folded into the
# merged-/usr layout (/bin, /sbin, /usr/sbin -> /usr/bin; /lib -> /usr/lib).
put_file() {   # put_file SRC [DST]
    local src="$1" dst="${2:-$1}"
    case "$dst" in
        /bin/*)      dst="/usr/bin/${dst#/bin/}";;
        /sbin/*)     dst="/usr/bin/${dst#/sbin/}";;
        /usr/sbin/*) dst="/usr/bin/${dst#/usr/sbin/}";;
        /lib/*)      dst="/usr/lib/${dst#/lib/}";;
        /lib64/*)    dst="/usr/lib64/${dst#/lib64/}";;
    esac
    mkdir -p "$ROOT$(dirname "$dst")"
    rm -f "$ROOT$dst"
    cp -L "$src" "$ROOT$dst"
}

# Copy an executable plus every shared library ldd reports for it.
put_exe() {   # put_exe SRC [DST]
    local exe="$1" lib
    [ -x "$exe" ] || die "missing executable $exe"
    put_file "$exe" "${2:-$1}"
    # ldd output lines: "libfoo.so.1 => /path (0x...)" or "/lib64/ld-linux... (0x...)"
    for lib in $(ldd "$exe" 2>/dev/null | awk '/=> \// {print $3} /^\t\// {print $1}'); do
        put_file "$lib"
    done
}

put_exe /usr/sbin/nbd-client
put_exe /usr/bin/nbd-server
put_exe /usr/sbin/mke2fs
put_exe /usr/sbin/e2fsck
ln -sf mke2fs "$ROOT/usr/bin/mkfs.ext4"
ln -sf e2fsck "$ROOT/usr/bin/fsck.ext4"
# Libraries a typical Rust/C test binary built on this host needs.
for l in libc.so.6 libm.so.6 libgcc_s.so.1 libpthread.so.0 libdl.so.2 librt.so.1 libutil.so.1; do
    [ -e "/lib/x86_64-linux-gnu/$l" ] && put_file "/lib/x86_64-linux-gnu/$l"
done
put_file /lib64/ld-linux-x86-64.so.2
for b in ${NBDVM_EXTRA_BINS:-}; do put_exe "$b"; done

# systemd-udevd + udevadm (one multi-call binary) and udev's rules, unpacked
# from Debian's "udev" package (not installed on the host).  The guest only
# starts udevd when run.sh is given -u; it is needed by programs that listen
# on libudev's "udev" monitor source (events re-broadcast by udevd after rule
# processing) rather than on the raw "kernel" source.
UDEVDIR="$NBDVM_DIR/udev"
if [ ! -x "$UDEVDIR/root/bin/udevadm" ]; then
    log "fetching the udev package (for the optional in-guest systemd-udevd)"
    rm -rf "$UDEVDIR"; mkdir -p "$UDEVDIR"; chmod 0777 "$UDEVDIR"
    (cd "$UDEVDIR" && apt-get download -q udev) \
        && dpkg-deb -x "$(ls "$UDEVDIR"/udev_*.deb | head -n1)" "$UDEVDIR/root" \
        || log "WARNING: could not fetch udev; run.sh -u will not work"
fi
if [ -x "$UDEVDIR/root/bin/udevadm" ]; then
    put_exe "$UDEVDIR/root/bin/udevadm" /usr/bin/udevadm
    ln -sf udevadm "$ROOT/usr/bin/systemd-udevd"
    mkdir -p "$ROOT/usr/lib/udev" "$ROOT/etc/udev/rules.d"
    cp -a "$UDEVDIR/root/lib/udev/rules.d" "$ROOT/usr/lib/udev/"
    for h in "$UDEVDIR"/root/lib/udev/*_id; do [ -f "$h" ] && put_exe "$h" "/usr/lib/udev/$(basename "$h")"; done
    cp "$UDEVDIR/root/etc/udev/udev.conf" "$ROOT/etc/udev/" 2>/dev/null || true
fi

# Minimal /etc so that getpwnam/getaddrinfo("localhost") work.
cat > "$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat > "$ROOT/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
printf '127.0.0.1 localhost\n::1 localhost\n' > "$ROOT/etc/hosts"
printf 'passwd: files\ngroup: files\nhosts: files\n' > "$ROOT/etc/nsswitch.conf"
: > "$ROOT/etc/fstab"
ln -s /proc/self/mounts "$ROOT/etc/mtab"
# nbd-server refuses to start without a config file; an empty generic section
# lets "nbd-server -C /etc/nbd-server/config PORT FILE" style use work.
mkdir -p "$ROOT/etc/nbd-server"
printf '[generic]\n' > "$ROOT/etc/nbd-server/config"

# Kernel modules needed before the 9p shares are mounted (the whole module
# tree is shared read-only later, so "modprobe anything" works afterwards).
: > "$ROOT/etc/nbdvm/modules"
for m in virtio_pci virtio_mmio 9pnet_virtio 9p nbd ext4 virtio_blk; do
    modprobe -C /dev/null -d "$KDIR" -S "$KVER" --show-depends "$m" \
        | awk '$1 == "insmod" {print $2}' | while read -r ko; do
            rel="${ko#"$MODROOT"/}"
            grep -qxF "$rel" "$ROOT/etc/nbdvm/modules" && continue
            mkdir -p "$ROOT/lib/modules/$KVER/$(dirname "$rel")"
            cp "$ko" "$ROOT/lib/modules/$KVER/$rel"
            echo "$rel" >> "$ROOT/etc/nbdvm/modules"
        done
done
echo "$KVER" > "$ROOT/etc/nbdvm/kver"

cp "$HERE/guest-init.sh" "$ROOT/init"
chmod 0755 "$ROOT/init"

# Record what went into the image (printed by run.sh -v and useful in reports).
{
    echo "kernel_pkg=$KPKG"
    echo "kernel=$KVER"
    echo "qemu=$(qemu-system-x86_64 --version | head -n1)"
    for p in qemu-system-x86 qemu-utils busybox-static nbd-client nbd-server e2fsprogs; do
        echo "$p=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null)"
    done
} > "$ROOT/etc/nbdvm/versions"
cp "$ROOT/etc/nbdvm/versions" "$NBDVM_DIR/versions"

# Library names present in the image; run.sh only adds libraries not listed.
find "$ROOT/usr/lib" "$ROOT/usr/lib64" -name '*.so*' -printf '%f\n' | sort -u \
    > "$NBDVM_DIR/initramfs.libs"

(cd "$ROOT" && find . -print0 | LC_ALL=C sort -z \
    | cpio --null -o -H newc --quiet -R 0:0) | gzip -1 > "$NBDVM_DIR/initramfs.cpio.gz.tmp"
mv "$NBDVM_DIR/initramfs.cpio.gz.tmp" "$NBDVM_DIR/initramfs.cpio.gz"

log "kernel:    $NBDVM_DIR/vmlinuz -> vmlinuz-$KVER"
log "initramfs: $NBDVM_DIR/initramfs.cpio.gz ($(du -h "$NBDVM_DIR/initramfs.cpio.gz" | cut -f1))"
log "done"
