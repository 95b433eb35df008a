# kiln office test fixture (sourced): the test people's passwords (this layer is for tests only)
# and clients pointed at this box by its domain, trusting its own certificate.
# shellcheck shell=bash
set -euo pipefail
domain=$(cat /etc/office/domain)
ca=/etc/ssl/certs/ssl-cert-snakeoil.pem
# shellcheck disable=SC2034 # used by the scripts that source this
declare -A pw=([alice]=alice-office-pw-1 [bob]=bob-office-pw-2)
state=/run/office-test
mkdir -p "$state"
# curl against this box: name resolved to 127.0.0.1 for every port, certificate checked.
ocurl() {
    curl -sS --cacert "$ca" --resolve "$domain:443:127.0.0.1" --resolve "$domain:587:127.0.0.1" \
        --resolve "$domain:993:127.0.0.1" --max-time 60 "$@"
}
# The exit status of curl for a login that is refused (67: login denied).
refused() {
    local rc=0
    ocurl "$@" >/dev/null 2>&1 || rc=$?
    [ "$rc" = 67 ] || { echo "expected a refused login (curl exit 67), got exit $rc: $*"; return 1; }
}
http_code() { ocurl -o /dev/null -w '%{http_code}' "$@" || true; }
