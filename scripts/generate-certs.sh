#!/usr/bin/env bash
# Makes a private CA and imgrep's serving certificate for the webhook Service.
# An existing CA in the output directory is reused, so running this again renews
# the serving certificate while the webhook's caBundle stays valid.
# The base64 CA bundle (for the webhook's caBundle) is the only thing on stdout.
set -euo pipefail

case ${BASH_SOURCE[0]} in */*) script_dir=${BASH_SOURCE[0]%/*} ;; *) script_dir=. ;; esac
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$script_dir/common.sh"

usage="usage: generate-certs.sh [-o|--out DIR] [--san NAME_OR_IP]... [--days N] [-h|--help]

  -o, --out DIR    where ca.crt, ca.key, tls.crt and tls.key go (env CERT_DIR, default ./certs)
  --san VALUE      one more DNS name or IP address for the serving certificate (repeatable;
                   env EXTRA_SANS, comma separated), e.g. --san localhost --san 127.0.0.1
  --days N         validity of the serving certificate in days (env CERT_DAYS, default 365)"

out=${CERT_DIR:-./certs}
days=${CERT_DAYS:-365}
extra_sans=()
if [[ -n ${EXTRA_SANS:-} ]]; then
    IFS=, read -ra extra_sans <<<"$EXTRA_SANS"
fi

while (($#)); do
    case $1 in
    -h | --help) show_usage ;;
    -o | --out)
        need_value "$@"
        out=$2
        shift 2
        ;;
    --san)
        need_value "$@"
        extra_sans+=("$2")
        shift 2
        ;;
    --days)
        need_value "$@"
        days=$2
        shift 2
        ;;
    *) unknown_argument "$1" ;;
    esac
done

[[ $days =~ ^[1-9][0-9]*$ ]] || die "--days must be a positive number of days, not '$days'"
require openssl

service_names=(
    "$APP"
    "$APP.$NAMESPACE"
    "$APP.$NAMESPACE.svc"
    "$APP.$NAMESPACE.svc.cluster.local"
)

umask 077
mkdir -p -- "$out"
work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT

{
    printf '[req]\ndistinguished_name = dn\n[dn]\n'
    printf '[ca_ext]\nbasicConstraints = critical,CA:TRUE,pathlen:0\n'
    printf 'keyUsage = critical,keyCertSign,cRLSign\n'
    printf 'subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n'
    printf '[server_ext]\nbasicConstraints = critical,CA:FALSE\n'
    printf 'keyUsage = critical,digitalSignature\nextendedKeyUsage = serverAuth\n'
    printf 'subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid,issuer\n'
    printf 'subjectAltName = @alt_names\n[alt_names]\n'
    dns=0 ip=0
    # ${a[@]+...}: bash before 4.4 treats an empty array as unbound under set -u.
    for name in "${service_names[@]}" ${extra_sans[@]+"${extra_sans[@]}"}; do
        [[ -n $name ]] || continue
        if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then
            printf 'IP.%d = %s\n' $((++ip)) "$name"
        else
            printf 'DNS.%d = %s\n' $((++dns)) "$name"
        fi
    done
} >"$work/openssl.cnf"

new_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"
}

if [[ -s $out/ca.crt && -s $out/ca.key ]]; then
    log "reusing the CA in $out (delete ca.crt and ca.key for a new one)"
else
    new_key "$work/ca.key"
    openssl req -x509 -new -sha256 -days 3650 -key "$work/ca.key" -subj "/CN=$APP-ca" \
        -config "$work/openssl.cnf" -extensions ca_ext -out "$work/ca.crt"
    mv -f -- "$work/ca.key" "$out/ca.key"
    mv -f -- "$work/ca.crt" "$out/ca.crt"
    log "wrote a new CA: $out/ca.crt, $out/ca.key"
fi

new_key "$work/tls.key"
openssl req -new -key "$work/tls.key" -subj "/CN=$APP.$NAMESPACE.svc" \
    -config "$work/openssl.cnf" -out "$work/tls.csr"
openssl x509 -req -sha256 -days "$days" -in "$work/tls.csr" \
    -CA "$out/ca.crt" -CAkey "$out/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
    -extfile "$work/openssl.cnf" -extensions server_ext -out "$work/tls.crt"
# Key first, then certificate, each replaced in one rename: a server reloading the
# pair never reads a half-written file.
mv -f -- "$work/tls.key" "$out/tls.key"
mv -f -- "$work/tls.crt" "$out/tls.crt"
log "wrote the serving certificate: $out/tls.crt, $out/tls.key (valid $days days)"
log "base64 CA bundle for the webhook's caBundle:"
openssl base64 -A -in "$out/ca.crt"
printf '\n'
