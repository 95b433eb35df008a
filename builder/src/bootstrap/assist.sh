#!/bin/sh
# kiln: native help for a foreign-architecture bootstrap (see assist/mod.rs for the why).
# mmdebstrap runs this on the host, in kiln's private mount namespace, and the dpkg wrapper
# runs its copy inside the root (ROOT empty, DIR /.kiln-assist):
#   assist.sh ROOT setup|bind|stub|teardown DIR TREE ARCH
# DIR (made by kiln) holds bin/ (native programs whose ELF interpreter is /.kiln-assist/ld.so),
# libexec/ (dpkg, and the dash and mount the wrapper runs), python (assist-python.sh), a copy
# of this script, ld.so (finding libraries in tree/), list (`program path kind package
# source-version`) and the mount points tree/, root/ and real/. Nothing of it lands in the root:
# setup    (extract hook) wait until kiln has filled DIR (`ready`; `failed`: stop), drop
#          programs whose package apt would install in another source version than the tools
#          tree's, mount DIR at /.kiln-assist with the tools tree (its libraries) and the root
#          itself (for dpkg --root), and put /.kiln-assist/bin first in dpkg's PATH
# bind     (the dpkg wrapper between unpacking and configuring the essential packages, the
#          essential hook, and the first customize hook) mount the native programs of kind
#          `bind` over the root's own copies once those are installed (nothing unpacks them
#          again in this bootstrap): `#!/bin/sh` and perl maintainer scripts then run natively,
#          and mkinitramfs, which sets its own PATH, finds native tools
# stub     (the dpkg wrapper, before each configure run) mount assist-python.sh over python3.X
# teardown (last customize hook) undo all of it
set -eu
root=$1 action=$2 dir=$3 tree=$4 arch=$5
m=/.kiln-assist
a=$root$m

say() { echo "kiln assist: $*" >&2; }

# `package source-version` of the candidates apt installs for the packages named on stdin (a
# binNMU's source version is in its Source field), with mmdebstrap's apt configuration.
candidates() {
    # shellcheck disable=SC2046
    APT_CONFIG=${MMDEBSTRAP_APT_CONFIG:?not run by mmdebstrap} apt-cache show --no-all-versions $(sort -u) 2>/dev/null | awk '
        /^Package: / { p = $2; v = ""; s = "" }
        /^Version: / { v = $2 }
        /^Source: .*\(/ { s = $0; sub(/.*\(/, "", s); sub(/\).*/, "", s) }
        /^$/ { if (p != "") print p, (s != "" ? s : v); p = "" }
        END { if (p != "") print p, (s != "" ? s : v) }'
}

case $action in
setup)
    # kiln may still be making the tools tree beside this bootstrap (Assist::pending): wait for it.
    while [ ! -e "$dir/ready" ]; do
        if [ -e "$dir/failed" ]; then
            say "the tools tree was not made; stopping"
            exit 1
        fi
        sleep 0.1
    done
    for p in "$a" "$root/etc/apt/apt.conf.d/00kiln-assist"; do
        if [ -e "$p" ] || [ -L "$p" ]; then
            say "$p exists; everything runs under emulation"
            exit 0
        fi
    done
    native='' emulated=''
    cut -d' ' -f4 "$dir/list" | candidates > "$dir/candidates"
    while read -r prog path kind pkg version; do
        if grep -qxF "$pkg $version" "$dir/candidates"; then
            native="$native $prog"
        else
            emulated="$emulated $prog"
            rm -f "$dir/bin/$prog"
        fi
    done < "$dir/list"
    # dpkg outside a chroot takes the root's architecture from this file (the root's dpkg
    # writes the same content later).
    [ -e "$root/var/lib/dpkg/arch-native" ] || printf '%s\n' "$arch" > "$root/var/lib/dpkg/arch-native"
    mkdir "$a"
    mount --bind "$dir" "$a"
    mount --bind "$tree" "$a/tree"
    mount -o remount,bind,ro "$a/tree"
    printf 'DPkg::Path "%s/bin:/usr/sbin:/usr/bin:/sbin:/bin";\n' "$m" > "$root/etc/apt/apt.conf.d/00kiln-assist"
    mount --rbind "$root" "$a/root"
    : > "$dir/bound"
    : > "$dir/stubbed"
    echo on > "$dir/state"
    printf 'native:%s\nemulated:%s\n' "$native" "$emulated" > "$dir/summary"
    say "native:$native"
    [ -z "$emulated" ] || say "emulated (apt installs another version than the tools tree has):$emulated"
    ;;
bind)
    [ -f "$dir/state" ] || exit 0
    while read -r prog path kind pkg version; do
        if [ "$kind" != bind ] || [ ! -f "$dir/bin/$prog" ]; then continue; fi
        grep -qxF "$path" "$dir/bound" && continue
        if [ -f "$root/$path" ] && [ ! -L "$root/$path" ]; then
            mount --bind "$dir/bin/$prog" "$root/$path"
            echo "$path" >> "$dir/bound"
            mount --bind "$dir/bin/$prog" "$a/root/$path"
        fi
    done < "$dir/list"
    ;;
stub)
    # (dpkg wrapper, before it configures packages) python3.X's postinsts byte-compile the
    # standard library, which cleanup removes again. Once a python3.X is unpacked, mount
    # assist-python.sh over it and the real one at $m/real/python3.X, where maintainer scripts
    # see them (dpkg runs them chrooted into $m/root; umount -R at teardown undoes both).
    # Nothing unpacks python3.X again in this bootstrap.
    [ -f "$dir/state" ] || exit 0
    for p in "$root"/usr/bin/python3.*; do
        n=${p##*/}
        case $n in python3.[0-9] | python3.[0-9][0-9]) ;; *) continue ;; esac
        if [ ! -f "$p" ] || [ -L "$p" ] || grep -qxF "$n" "$dir/stubbed"; then continue; fi
        mkdir -p "$a/real"
        : > "$a/real/$n"
        mount --bind "$p" "$a/root$m/real/$n"
        mount --bind "$a/python" "$a/root/usr/bin/$n"
        echo "$n" >> "$dir/stubbed"
    done
    ;;
teardown)
    [ -f "$dir/state" ] || exit 0
    while read -r path; do
        umount "$a/root/$path" 2>/dev/null || true
        umount "$root/$path"
    done < "$dir/bound"
    umount -R "$a/root"
    umount "$a/tree"
    umount "$a"
    rmdir "$a"
    rm "$root/etc/apt/apt.conf.d/00kiln-assist" "$dir/state"
    ;;
*)
    say "unknown action $action"
    exit 2
    ;;
esac
