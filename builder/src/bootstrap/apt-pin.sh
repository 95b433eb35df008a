#!/bin/sh
# kiln setup hook: put an apt preferences file in place before anything is installed.
#   apt-pin.sh ROOT FILE DEST
# FILE is on the host (in the build's work directory); DEST is relative to ROOT.
set -eu
root=$1 file=$2 dest=$3
mkdir -p "$root/etc/apt/preferences.d"
cp "$file" "$root/$dest"
