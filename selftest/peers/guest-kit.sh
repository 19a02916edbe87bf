#!/bin/bash
# Prepare, once, what a test guest boots: Debian's kernel (bzImage, and the
# uncompressed vmlinux for a PVH boot, which skips the decompressor and the
# BIOS's real-mode path: about twice as fast under TCG) and an initramfs
# with busybox, iperf3, ethtool, the virtio modules and guest-init.sh as /init.
#
#   guest-kit.sh [--cache DIR] [--update] [--rebuild]
#
# The kernel package is downloaded and unpacked, never installed (no hooks,
# nothing in /boot). Results are cached in DIR (default $SNABB_RS_GUEST_CACHE
# or /var/cache/snabb-rs/guest); the initramfs is rebuilt when guest-init.sh
# changes. --update looks for a newer kernel package, --rebuild redoes all.
# Prints one line for scripts:
#   GUEST_KIT kernel_version=V bzimage=PATH vmlinux=PATH|none initrd=PATH cache=DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh"

CACHE=${SNABB_RS_GUEST_CACHE:-/var/cache/snabb-rs/guest}
UPDATE=0 REBUILD=0
while [ $# -gt 0 ]; do
    case $1 in
    --cache) CACHE=$2; shift 2;;
    --update) UPDATE=1; shift;;
    --rebuild) REBUILD=1; shift;;
    -h|--help) usage_of "$0";;
    *) die "guest-kit.sh: unknown argument $1";;
    esac
done

# Modules the guest loads, in load order (see guest-init.sh).
MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net virtio_blk
    llc stp garp mrp 8021q"
# Bump when the layout of the kit changes.
KIT_VERSION=1

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -w 600 9 || die "guest kit: another build holds $CACHE/.lock"
[ "$REBUILD" = 1 ] && rm -rf "$CACHE/kernel" "$CACHE"/initrd-*.gz "$CACHE/current-kernel"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/guest-kit.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# --- kernel -------------------------------------------------------------------
kernel_package() { # the versioned package linux-image-amd64 points at
    local pkg
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    if [ -z "$pkg" ]; then
        say "apt lists have no linux-image-amd64: apt-get update"
        apt-get update -qq >&2 || true
        pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    fi
    [ -n "$pkg" ] || die "cannot find the kernel package linux-image-amd64 depends on"
    echo "$pkg"
}

fetch_kernel() { # PACKAGE: unpack it and keep the kernel, the modules we need, and vmlinux
    local pkg=$1 deb root kv kdir m f
    say "downloading $pkg"
    # As root: the _apt user may not write to our temp dir.
    (cd "$TMP" && apt-get -o APT::Sandbox::User=root download -qq "$pkg" >&2) || die "apt-get download $pkg failed"
    deb=$(ls "$TMP"/*.deb)
    root=$TMP/root
    dpkg-deb -x "$deb" "$root"
    kv=$(ls "$root/lib/modules" | head -1)
    [ -n "$kv" ] && [ -f "$root/boot/vmlinuz-$kv" ] || die "$pkg has no kernel image"
    kdir=$CACHE/kernel/$kv
    rm -rf "$kdir.new"; mkdir -p "$kdir.new/modules"
    cp "$root/boot/vmlinuz-$kv" "$kdir.new/bzImage"
    for m in $MODULES; do
        f=$(find "$root/lib/modules/$kv/kernel" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -1)
        [ -n "$f" ] || die "$pkg lacks module $m"
        case $f in
        *.ko) cp "$f" "$kdir.new/modules/$m.ko";;
        *.xz) "$PYTHON" -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' "$f" "$kdir.new/modules/$m.ko";;
        *.zst) zstd -dq "$f" -o "$kdir.new/modules/$m.ko" || die "cannot decompress $f (zstd missing?)";;
        esac
    done
    # The bzImage carries the kernel as an XZ stream after its decompressor.
    if ! "$PYTHON" - "$kdir.new/bzImage" "$kdir.new/vmlinux" <<'EOF'
import lzma, sys
data = open(sys.argv[1], "rb").read()
at = data.find(b"\xfd7zXZ\x00")
if at < 0:
    sys.exit("no XZ stream in the bzImage")
elf = lzma.LZMADecompressor().decompress(data[at:])
if elf[:4] != b"\x7fELF":
    sys.exit("the XZ stream is not an ELF kernel")
open(sys.argv[2], "wb").write(elf)
EOF
    then
        say "no vmlinux for PVH boot: guests will boot the bzImage (slower)"
        rm -f "$kdir.new/vmlinux"
    fi
    echo "$pkg" > "$kdir.new/package"
    rm -rf "$kdir"; mv "$kdir.new" "$kdir"
    echo "$kv" > "$CACHE/current-kernel"
}

kernel_complete() { # KV: the cached kernel has everything this version of the kit needs
    local m
    [ -n "$1" ] && [ -f "$CACHE/kernel/$1/bzImage" ] || return 1
    for m in $MODULES; do [ -f "$CACHE/kernel/$1/modules/$m.ko" ] || return 1; done
}

KV=$(cat "$CACHE/current-kernel" 2>/dev/null || true)
if ! kernel_complete "$KV"; then
    fetch_kernel "$(kernel_package)"
elif [ "$UPDATE" = 1 ]; then
    PKG=$(kernel_package)
    [ "$PKG" = "$(cat "$CACHE/kernel/$KV/package")" ] || fetch_kernel "$PKG"
fi
KV=$(cat "$CACHE/current-kernel")
KDIR=$CACHE/kernel/$KV

# --- initramfs --------------------------------------------------------------------
need_bin() { command -v "$1" >/dev/null || die "$1 is missing (selftest/peers/install.sh installs it)"; }
need_bin busybox; need_bin iperf3; need_bin ethtool
BUSYBOX=$(command -v busybox)
ldd "$BUSYBOX" >/dev/null 2>&1 && die "$BUSYBOX is dynamic: install busybox-static"
STAMP=$( { echo "$KIT_VERSION $KV"; cat "$PEERS_DIR/guest-init.sh"; sha256sum "$BUSYBOX" "$(command -v iperf3)" "$(command -v ethtool)"; } |
    sha256sum | cut -c1-16)
INITRD=$CACHE/initrd-$STAMP.gz

add_binary() { # PATH: the program and the shared libraries it loads
    local bin=$1 lib
    mkdir -p "$TMP/ird/bin"
    cp "$bin" "$TMP/ird/bin/"
    for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
        mkdir -p "$TMP/ird$(dirname "$lib")"
        cp -L "$lib" "$TMP/ird$lib"
    done
}

if [ ! -f "$INITRD" ]; then
    say "building the guest initramfs ($INITRD)"
    mkdir -p "$TMP/ird"/{bin,dev,proc,sys,tmp,lib/modules,etc}
    cp "$BUSYBOX" "$TMP/ird/bin/busybox"
    add_binary "$(command -v iperf3)"
    add_binary "$(command -v ethtool)"
    cp "$KDIR"/modules/*.ko "$TMP/ird/lib/modules/"
    cp "$PEERS_DIR/guest-init.sh" "$TMP/ird/init"
    chmod 755 "$TMP/ird/init"
    echo "root:x:0:0:root:/:/bin/sh" > "$TMP/ird/etc/passwd"
    # No cpio package needed: busybox has one.
    (cd "$TMP/ird" && find . | "$BUSYBOX" cpio -o -H newc 2>/dev/null | gzip -1) > "$INITRD.tmp"
    mv "$INITRD.tmp" "$INITRD"
fi
# Other checkouts (another branch's guest-init.sh) may use other initramfs
# files at the same time: only those unused for a day go.
touch "$INITRD"
find "$CACHE" -maxdepth 1 -name 'initrd-*.gz' -mtime +1 -delete

VMLINUX=$KDIR/vmlinux
[ -f "$VMLINUX" ] || VMLINUX=none
echo "GUEST_KIT kernel_version=$KV bzimage=$KDIR/bzImage vmlinux=$VMLINUX initrd=$INITRD cache=$CACHE"
