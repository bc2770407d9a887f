#!/usr/bin/env bash
# Installs or upgrades imgrep with cert-manager issuing and renewing its
# certificate: installs cert-manager when its CRDs are absent, applies
# deploy/cert-manager, and waits for the certificate and the rollout. Safe to run again.
set -euo pipefail

case ${BASH_SOURCE[0]} in */*) script_dir=${BASH_SOURCE[0]%/*} ;; *) script_dir=. ;; esac
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$script_dir/common.sh"

usage="usage: deploy-cert-manager.sh [--dry-run] [--image IMAGE] [--cert-manager-version VERSION] [-h|--help]

  --dry-run                 print the manifests that would be applied and touch no cluster
  --image IMAGE             the imgrep image to run (env IMAGE, default: the one in deploy/base)
  --cert-manager-version V  release installed when cert-manager is absent
                            (env CERT_MANAGER_VERSION, default v1.16.2)"

dry_run=false
image=${IMAGE:-}
cert_manager_version=${CERT_MANAGER_VERSION:-v1.16.2}

while (($#)); do
    case $1 in
    -h | --help) show_usage ;;
    --dry-run)
        dry_run=true
        shift
        ;;
    --image)
        need_value "$@"
        image=$2
        shift 2
        ;;
    --cert-manager-version)
        need_value "$@"
        cert_manager_version=$2
        shift 2
        ;;
    *) unknown_argument "$1" ;;
    esac
done

require kubectl
[[ -z $image ]] || validate_image "$image"
[[ $cert_manager_version =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
    die "--cert-manager-version must look like v1.16.2, not '$cert_manager_version'"

work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT
overlay=$work/full
mkdir "$overlay"
write_overlay "$overlay" "$script_dir/../deploy/cert-manager" "$image"

if $dry_run; then
    kubectl kustomize "$overlay"
    exit 0
fi
require_cluster

if kubectl get crd certificates.cert-manager.io >/dev/null 2>&1; then
    log "cert-manager is installed"
else
    log "installing cert-manager $cert_manager_version"
    kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/$cert_manager_version/cert-manager.yaml"
    kubectl wait --for=condition=Established --timeout=60s \
        crd/certificates.cert-manager.io crd/issuers.cert-manager.io
fi
for component in cert-manager cert-manager-cainjector cert-manager-webhook; do
    kubectl -n cert-manager rollout status "deployment/$component" --timeout="${ROLLOUT_TIMEOUT:-300s}"
done

ensure_credentials_secret "$script_dir/../deploy/base/namespace.yaml"
workload=$(write_workload_overlay "$overlay")
# cert-manager's webhook validates Issuers and Certificates and may refuse
# connections for a few seconds after its rollout.
retry kubectl apply -k "$workload"
log "waiting for certificate/$APP-cert"
kubectl -n "$NAMESPACE" wait --for=condition=Ready "certificate/$APP-cert" --timeout=120s
wait_for_rollout
kubectl apply -k "$overlay"
log "imgrep is installed and its webhook registered: kubectl -n $NAMESPACE get pods"
