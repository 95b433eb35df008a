#!/bin/sh
# kiln customize hook: drop the bootstrap's pin file and write the image's sources.list.
#   apt-sources.sh ROOT PIN_FILE LINE
# PIN_FILE is relative to ROOT; LINE is the one line of /etc/apt/sources.list.
set -eu
root=$1 pins=$2 line=$3
rm -f "$root/$pins"
printf '%s\n' "$line" > "$root/etc/apt/sources.list"
