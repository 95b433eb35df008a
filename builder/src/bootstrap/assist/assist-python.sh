#!/.kiln-assist/libexec/dash
# shellcheck shell=sh
# kiln assist: mounted over /usr/bin/python3.X while packages are configured (assist.sh stub).
# The postinsts of python3.X-minimal and python3.X byte-compile the standard library, calling
# py_compile.py by absolute path; kiln removes that byte code again (customize/cleanup.rs), and
# under emulation it took a seventh of the bootstrap, so exactly that call does nothing. Anything
# else runs the real interpreter under its own name.
n=${0##*/}
case "${1-} ${2-} ${3-}" in
"-E -S /usr/lib/$n/py_compile.py") exit 0 ;;
esac
real=/.kiln-assist/real/$n
if [ ! -s "$real" ]; then echo "kiln assist: $real is not mounted" >&2; exit 1; fi
if [ -x /.kiln-assist/bin/env ]; then exec /.kiln-assist/bin/env -a "$0" "$real" "$@"; fi
exec "$real" "$@"
