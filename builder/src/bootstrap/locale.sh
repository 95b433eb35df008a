#!/bin/sh
# kiln customize hook: generate a non-C locale inside the root (needs the locales package).
#   locale.sh ROOT 'LOCALE CHARSET'
set -eu
root=$1 line=$2
echo "$line" > "$root/etc/locale.gen"
chroot "$root" locale-gen
