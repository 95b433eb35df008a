#!/.kiln-assist/libexec/dash
# shellcheck shell=sh
# kiln assist: dpkg on the root from outside it (--root; maintainer scripts are still chrooted
# and emulated). Inside that chroot the root is not mounted again: there, the root's dpkg.
if [ -d /.kiln-assist/root/var/lib/dpkg ]; then exec /.kiln-assist/libexec/dpkg --root=/.kiln-assist/root "$@"; fi
exec /usr/bin/dpkg "$@"
