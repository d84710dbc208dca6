#!/usr/bin/env bash
# Set up the kernel lab (run as root on Debian 12): qemu and the RDMA userspace from Debian,
# the bookworm-backports 6.12 kernel unpacked under tests/lab/build/ (never installed on the
# host), a busybox initramfs that boots it over the host's / , and Debian's pyverbs made
# importable from .venv. Idempotent: a second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")"
LAB=$PWD
B=$LAB/build

# SMC-R over rxe is kernel-version sensitive (6.1 hangs), so the kernel is pinned.
KERNEL_PKG=linux-image-6.12.95+deb12-amd64
APT_PACKAGES=(qemu-system-x86 busybox-static cpio xz-utils kmod rdma-core ibverbs-providers
    ibverbs-utils python3-pyverbs iproute2)
# Modules the initramfs needs to reach the root (plus what modprobe says they depend on).
INITRD_MODULES=(virtio_pci virtio_net 9pnet_virtio 9p overlay)

log() { echo "lab setup: $*"; }
die() { echo "lab setup: $*" >&2; exit 1; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "run as root (apt-get installs ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    log "installing ${missing[*]}"
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/smctop-lab-apt.log 2>&1; then
        apt-get update -q >>/tmp/smctop-lab-apt.log 2>&1
        apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/smctop-lab-apt.log 2>&1 ||
            { cat /tmp/smctop-lab-apt.log >&2; exit 1; }
    fi
fi

# pyenv's venv cannot see Debian's dist-packages even with --system-site-packages; the
# cpython-311 ABI matches, so a symlink is enough (reference/pyverbs.md section 1b).
VENV_SITE=$(cd "$LAB/../.." && pwd)/.venv/lib/python3.11/site-packages
if [ -d "$VENV_SITE" ] && [ ! -e "$VENV_SITE/pyverbs" ]; then
    ln -s /usr/lib/python3/dist-packages/pyverbs "$VENV_SITE/pyverbs"
    log "linked Debian's pyverbs into .venv"
elif [ ! -d "$VENV_SITE" ]; then
    log "no .venv with Python 3.11 (Debian's pyverbs is built for it): pyverbs not linked"
fi

# The stamp holds the pinned name it was built for (line 1) and the package it got (line 2).
stamp=$B/stamp
built() {
    [ -f "$stamp" ] && [ "$(head -n1 "$stamp")" = "$KERNEL_PKG" ] &&
        [ "$stamp" -nt "$LAB/setup.sh" ] && [ "$stamp" -nt "$LAB/init.sh" ] &&
        [ -f "$B/initrd.img" ] && [ -f "$B/kroot/boot/vmlinuz-$(cat "$B/kver")" ]
}
if built; then
    [ "$(sed -n 2p "$stamp")" = "$KERNEL_PKG" ] ||
        echo "lab setup: WARNING: running $(sed -n 2p "$stamp"), not the pinned $KERNEL_PKG" >&2
    exit 0
fi
mkdir -p "$B/apt/lists/partial" "$B/apt/cache/archives/partial" "$B/debs"

# A private apt configuration for bookworm-backports on the mirror the host already uses:
# the host's sources and state stay untouched and nothing gets installed. The mirror comes
# from the apt configuration only (sources.list, sources.list.d/*.list and *.sources); with
# none there the set-up stops and says so, it never picks a mirror of its own.
URI=$(python3 "$LAB/aptmirror.py") || exit 1
echo "deb $URI bookworm-backports main" >"$B/apt/sources.list"
APT=(-o "Dir::Etc::SourceList=$B/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$B/apt/lists" -o "Dir::Cache=$B/apt/cache")

PKG=$KERNEL_PKG
if ! ls "$B/debs/${PKG}_"*.deb >/dev/null 2>&1; then
    log "fetching $PKG from $URI bookworm-backports"
    apt-get "${APT[@]}" update -q >/tmp/smctop-lab-apt.log 2>&1 || { cat /tmp/smctop-lab-apt.log >&2; exit 1; }
    if ! apt-cache "${APT[@]}" show "$PKG" >/dev/null 2>&1; then
        # Backports keeps only its newest kernel: rather than break CI, take the newest 6.12.
        PKG=$(apt-cache "${APT[@]}" pkgnames linux-image-6.12. | grep -E '^linux-image-6\.12\.[0-9]+\+deb12-amd64$' |
            sort -V | tail -n1)
        [ -n "$PKG" ] || die "bookworm-backports on $URI offers neither $KERNEL_PKG nor any other 6.12 kernel"
        echo "lab setup: WARNING: $KERNEL_PKG is no longer in bookworm-backports; using $PKG instead." \
            "Update KERNEL_PKG in tests/lab/setup.sh once the lab passes with it." >&2
    fi
    if ! ls "$B/debs/${PKG}_"*.deb >/dev/null 2>&1; then
        (cd "$B/debs" && apt-get "${APT[@]}" download -q "$PKG" >/tmp/smctop-lab-apt.log 2>&1) ||
            { cat /tmp/smctop-lab-apt.log >&2; exit 1; }
    fi
fi
DEB=$(ls "$B/debs/${PKG}_"*.deb | tail -n1)
KVER=${PKG#linux-image-}
log "unpacking $(basename "$DEB")"
rm -rf "$B/kroot"
dpkg -x "$DEB" "$B/kroot"
depmod -b "$B/kroot" "$KVER"
[ -f "$B/kroot/boot/vmlinuz-$KVER" ] || die "$DEB holds no boot/vmlinuz-$KVER"

# initramfs: busybox, the modules to mount 9p and overlay, and an init that mounts the host's
# / read-only under a tmpfs overlay, then runs the harness's script from its writable share.
D=$B/initrd
rm -rf "$D"
mkdir -p "$D"/{bin,mods,proc,sys,dev,lower,upper,newroot}
cp /bin/busybox "$D/bin/"
: >"$D/mods/order"
for m in "${INITRD_MODULES[@]}"; do
    for f in $(modprobe -d "$B/kroot" -S "$KVER" --show-depends "$m" | awk '$1 == "insmod" {print $2}'); do
        b=$(basename "$f" .xz)
        [ -e "$D/mods/$b" ] && continue
        case $f in *.xz) xz -dc "$f" >"$D/mods/$b" ;; *) cp "$f" "$D/mods/$b" ;; esac
        echo "$b" >>"$D/mods/order"
    done
done
cp "$LAB/init.sh" "$D/init"
chmod +x "$D/init"
(cd "$D" && find . | cpio -o -H newc 2>/dev/null | gzip -1) >"$B/initrd.img"
echo "$KVER" >"$B/kver"
printf '%s\n%s\n' "$KERNEL_PKG" "$PKG" >"$stamp"
log "kernel $KVER ready in $B"
