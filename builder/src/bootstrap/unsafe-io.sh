#!/bin/sh
# kiln hook: dpkg without a flush of every file it unpacks while a tree is bootstrapped (setup
# hook `on`), and the setting gone again once everything is installed (last customize hook
# `off`). The tree is throwaway until kiln stores it in the cache, which flushes the file system
# once before the rename (host::cache::store); nothing of the setting is left in the tree.
#   unsafe-io.sh ROOT on|off
set -eu
root=$1 action=$2
conf=$root/etc/dpkg/dpkg.cfg.d/kiln-unsafe-io
case $action in
on)
    mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
    echo force-unsafe-io > "$conf"
    ;;
off) rm -f "$conf" ;;
*)
    echo "unsafe-io.sh: unknown action $action" >&2
    exit 2
    ;;
esac
