#!/bin/sh
# kiln essential hook: openssh-server's postinst makes host keys (RSA: seconds of prime search,
# far more under emulation) unless files are there; cleanup::clean removes every ssh_host_* file
# anyway and each box makes its own at first boot. Empty placeholders skip the work.
#   no-host-keys.sh ROOT
set -eu
root=$1
mkdir -p "$root/etc/ssh"
for t in rsa ecdsa ed25519; do
    : > "$root/etc/ssh/ssh_host_${t}_key"
done
