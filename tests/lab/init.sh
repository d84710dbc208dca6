#!/bin/busybox sh
# The lab VM's /init (copied into the initramfs by setup.sh). Mounts the host's / (9p,
# read-only) under a tmpfs overlay, the unpacked kernel's modules, and the run's writable
# share at its host path, then switch_root's into it and runs the share's run.sh.
# switch_root, not chroot: request_module() must find the host's modprobe, not busybox's.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m >/dev/null 2>&1; done
SHARE=
for arg in $(cat /proc/cmdline); do
    case $arg in lab.share=*) SHARE=${arg#lab.share=} ;; esac
done
O=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o $O,ro,cache=loose hostroot /lower || { echo "LAB_INIT_FAILED: 9p root"; poweroff -f; }
mount -t tmpfs -o size=1G tmpfs /upper
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot
mkdir -p /newroot/lib/modules/$(uname -r)
mount -t 9p -o $O,ro,cache=loose kmods /newroot/lib/modules/$(uname -r)
if [ -n "$SHARE" ]; then
    mkdir -p /newroot$SHARE
    mount -t 9p -o $O share /newroot$SHARE || { echo "LAB_INIT_FAILED: share"; poweroff -f; }
fi
umount /proc /sys /dev
# No tmpfs on /tmp: the overlay root is writable already, and a checkout (with its run
# shares) may live under the host's /tmp, which a fresh tmpfs would hide.
for f in proc:proc sysfs:sys devtmpfs:dev tmpfs:run; do
    mount -t ${f%%:*} ${f%%:*} /newroot/${f#*:}
done
# Power off however run.sh ends (sysrq: no init system to ask).
[ -n "$SHARE" ] && exec switch_root /newroot /bin/sh -c \
    "/bin/sh $SHARE/run.sh; sync; echo o > /proc/sysrq-trigger; sleep 60"
exec switch_root /newroot /bin/bash -i
