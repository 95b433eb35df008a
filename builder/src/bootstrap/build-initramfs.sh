#!/bin/sh
# kiln customize hook: undo defer-initramfs.sh and build the initrd once, for every kernel.
#   build-initramfs.sh ROOT
set -eu
root=$1
rm "$root/usr/sbin/update-initramfs"
chroot "$root" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
chroot "$root" update-initramfs -c -k all
