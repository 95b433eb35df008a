#!/bin/sh
# kiln essential hook: mkinitramfs would run once when the kernel is installed and again for
# every trigger; under emulation each run costs minutes. update-initramfs is diverted to a no-op
# while packages install (the kernel hook then skips, triggers do nothing); build-initramfs.sh
# builds the initrd exactly once, when everything is installed.
#   defer-initramfs.sh ROOT
set -eu
root=$1
chroot "$root" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs
ln -s /bin/true "$root/usr/sbin/update-initramfs"
