#!/.kiln-assist/libexec/dash
# shellcheck shell=sh
# kiln assist: dpkg on the root from outside it (--root; maintainer scripts are still chrooted).
# Inside that chroot (maintainer scripts), where the root is not mounted again, dpkg on the root
# it runs in: --root=/ makes it take the root's architecture from arch-native.
m=/.kiln-assist
[ -d $m/root/var/lib/dpkg ] || exec $m/libexec/dpkg --root=/ "$@"

# mmdebstrap installs the essential packages with one `dpkg --install`, which unpacks them all
# and then configures them, running their maintainer scripts with the root's (emulated) shell and
# perl. Split it: unpack, mount the native programs over the root's copies (assist.sh bind, as
# the essential hook would), then configure the same packages in the same order (dpkg --install
# queues them as it unpacks them; a .deb in apt's archives is PACKAGE_VERSION_ARCH.deb).
if [ "${1-}" = --install ] && [ -x $m/libexec/mount ] && [ ! -s $m/bound ]; then
    shift
    opts='' pkgs=''
    for a in "$@"; do
        case $a in
        -*) opts="$opts $a" ;;
        *.deb) f=${a##*/} && pkgs="$pkgs ${f%%_*}" ;;
        *) exec $m/libexec/dpkg --root=$m/root --install "$@" ;;
        esac
    done
    $m/libexec/dpkg --root=$m/root --unpack "$@" || exit
    PATH=$m/libexec:$m/bin:$PATH $m/libexec/dash $m/assist.sh '' bind $m $m/tree '' || exit
    : > $m/essential-native
    # shellcheck disable=SC2086 # options and package names, split on purpose
    exec $m/libexec/dpkg --root=$m/root $opts --configure $pkgs
fi
# Before packages are configured: python3.X's standard library is not byte-compiled (assist.sh stub).
case " $* " in
*" --configure "*) [ ! -x $m/libexec/mount ] || PATH=$m/libexec:$m/bin:$PATH $m/libexec/dash $m/assist.sh '' stub $m $m/tree '' || exit ;;
esac
exec $m/libexec/dpkg --root=$m/root "$@"
