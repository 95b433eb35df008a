#!/bin/sh
# kiln setup hook: which drivers mkinitramfs puts into the initrd, before anything is installed.
#   initramfs-modules.sh ROOT POLICY [MODULE...]
# POLICY is dep, netboot or list; with list, the MODULEs are the initrd's drivers.
set -eu
root=$1 policy=$2
shift 2
mkdir -p "$root/etc/initramfs-tools/conf.d" "$root/usr/share/initramfs-tools/modules.d"
echo "MODULES=$policy" > "$root/etc/initramfs-tools/conf.d/kiln"
if [ "$policy" = list ]; then
    printf '%s\n' "$@" > "$root/usr/share/initramfs-tools/modules.d/kiln"
fi
