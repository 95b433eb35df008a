#!/bin/sh
# kiln customize hook: drop the bootstrap's pin file and apt sources. The bootstrap's sources
# name its own mirrors (a local repository offline); the image's deb822 sources are written by
# kiln after the bootstrap.
#   apt-sources.sh ROOT PIN_FILE
# PIN_FILE is relative to ROOT.
set -eu
root=$1 pins=$2
rm -f "$root/$pins" "$root/etc/apt/sources.list" "$root/etc/apt/sources.list.d/debian.sources"
