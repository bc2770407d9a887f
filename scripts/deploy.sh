#!/usr/bin/env bash
# Installs or upgrades imgrep with a self-managed certificate: certificates
# (made once, renewed when they near expiry), the TLS Secret, the webhook's
# caBundle and deploy/ are applied in one kustomize build. Safe to run again.
set -euo pipefail

case ${BASH_SOURCE[0]} in */*) script_dir=${BASH_SOURCE[0]%/*} ;; *) script_dir=. ;; esac
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$script_dir/common.sh"

usage="usage: deploy.sh [--dry-run] [--audit | --mutating] [--cert-dir DIR] [--image IMAGE] [-h|--help]

  --dry-run        print the manifests that would be applied (TLS Secret included) and
                   touch no cluster; certificates are still made in the cert directory
  --audit          install deploy/audit (development clusters: MODE=audit, failurePolicy
                   Ignore, only imgrep's own namespace excluded)
  --cert-dir DIR   certificates to use, made there when absent (env CERT_DIR, default ./certs)
  --image IMAGE    the imgrep image to run (env IMAGE, default: the one in deploy/base)
  --mutating       also register the mutating webhook that points Pods at their mirror
                   copies (deploy/mutating; set TARGET_REGISTRY in its deployment.yaml first)"

dry_run=false
audit=false
cert_dir=${CERT_DIR:-./certs}
image=${IMAGE:-}
mutating=false

while (($#)); do
    case $1 in
    -h | --help) show_usage ;;
    --dry-run)
        dry_run=true
        shift
        ;;
    --audit)
        audit=true
        shift
        ;;
    --cert-dir)
        need_value "$@"
        cert_dir=$2
        shift 2
        ;;
    --image)
        need_value "$@"
        image=$2
        shift 2
        ;;
    --mutating)
        mutating=true
        shift
        ;;
    *) unknown_argument "$1" ;;
    esac
done

# Each is a kustomization of deploy/base of its own; a development cluster audits, a
# production one may point Pods at their mirror copies.
if $audit && $mutating; then
    die "--audit and --mutating are separate installs; choose one"$'\n'"$usage"
fi
require kubectl openssl
[[ -z $image ]] || validate_image "$image"
$dry_run || require_cluster

# A serving certificate that expires within 30 days is renewed from the same CA.
renew_within=$((30 * 24 * 3600))
if [[ -s $cert_dir/ca.crt && -s $cert_dir/tls.crt && -s $cert_dir/tls.key ]] &&
    openssl x509 -checkend "$renew_within" -noout -in "$cert_dir/tls.crt" >/dev/null; then
    log "using the certificates in $cert_dir"
else
    "$script_dir/generate-certs.sh" --out "$cert_dir" >/dev/null
fi
ca_bundle=$(openssl base64 -A -in "$cert_dir/ca.crt")

work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT
overlay=$work/full
mkdir "$overlay"
kubectl create secret tls "$APP-tls" --namespace "$NAMESPACE" \
    --cert "$cert_dir/tls.crt" --key "$cert_dir/tls.key" \
    --dry-run=client -o yaml >"$overlay/tls-secret.yaml"
manifests=$script_dir/../deploy
webhooks=(ValidatingWebhookConfiguration)
if $audit; then
    manifests=$script_dir/../deploy/audit
elif $mutating; then
    manifests=$script_dir/../deploy/mutating
    webhooks+=(MutatingWebhookConfiguration)
fi
write_overlay "$overlay" "$manifests" "$image" tls-secret.yaml
for kind in "${webhooks[@]}"; do
    cat >>"$overlay/kustomization.yaml" <<YAML
  - target: {kind: $kind, name: $APP}
    patch: |-
      - {op: add, path: /webhooks/0/clientConfig/caBundle, value: $ca_bundle}
YAML
done

if $dry_run; then
    kubectl kustomize "$overlay"
    exit 0
fi

ensure_credentials_secret "$script_dir/../deploy/base/namespace.yaml"
workload=$(write_workload_overlay "$overlay" "${webhooks[@]}")
kubectl apply -k "$workload"
wait_for_rollout
kubectl apply -k "$overlay"
log "imgrep is installed and its webhook registered: kubectl -n $NAMESPACE get pods"
