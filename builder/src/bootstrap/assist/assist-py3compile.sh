#!/bin/sh
# kiln: py3compile while a foreign-architecture root is bootstrapped with native help (assist/mod.rs).
# Byte-compiling Python modules under emulation took a fifth of such a bootstrap, and kiln removes
# the compiled files again (customize/cleanup.rs); Python compiles on the box as needed.
exit 0
