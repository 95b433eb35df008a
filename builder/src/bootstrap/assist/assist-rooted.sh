#!/.kiln-assist/libexec/dash
# shellcheck shell=sh
# kiln assist: dpkg-query, dpkg-divert or dpkg-trigger (named by this file's name), natively on
# the root it runs in. With --root, dpkg takes the architecture from the root's arch-native file
# (arm64); without it, it would be the host's and name packages relative to amd64.
exec "/.kiln-assist/libexec/${0##*/}" --root=/ "$@"
