# shellcheck shell=bash
# Shared by the scripts in this directory; sourced, not run.

readonly NAMESPACE=image-replicator
readonly APP=image-replicator

log() { printf '%s\n' "$*" >&2; }

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Option parsing helpers; each script defines $usage before its option loop.
# shellcheck disable=SC2154
show_usage() {
    printf '%s\n' "$usage"
    exit 0
}

# need_value FLAG ARGS...: the flag must be followed by a value.
# shellcheck disable=SC2154
need_value() {
    (($# >= 2)) || die "$1 needs a value"$'\n'"$usage"
}

# shellcheck disable=SC2154
unknown_argument() {
    printf 'error: unknown argument: %s\n%s\n' "$1" "$usage" >&2
    exit 2
}

# require CMD...: stop before doing anything when a tool is missing, rather than
# half-way through an install.
require() {
    local cmd
    for cmd in "$@"; do
        command -v "$cmd" >/dev/null 2>&1 ||
            die "$cmd is required but was not found on PATH; install it and try again"
    done
}

require_cluster() {
    kubectl version >/dev/null 2>&1 ||
        die "cannot reach a cluster with the current kubeconfig ('kubectl version' failed); check 'kubectl config current-context'"
}

# relative_path FROM TO: TO as seen from directory FROM. kustomize refuses an
# absolute path to another kustomization, so an overlay in a temporary directory
# reaches deploy/ through ../ steps from the filesystem root.
relative_path() {
    local from to up="" part
    local -a parts
    from=$(cd -P -- "$1" && pwd)
    to=$(cd -P -- "$2" && pwd)
    IFS=/ read -ra parts <<<"${from#/}"
    for part in "${parts[@]}"; do
        [[ -n $part ]] && up+="../"
    done
    printf '%s%s\n' "$up" "${to#/}"
}

# validate_image IMAGE: only characters an image reference can hold, so the value
# can be written into YAML as it is.
validate_image() {
    [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9._/:@-]*$ ]] || die "not an image reference: $1"
}

# write_overlay DIR BASE IMAGE [RESOURCE...]: a kustomization in DIR that builds the
# kustomization BASE plus RESOURCEs (files in DIR), with the Deployment's image
# replaced when IMAGE is not empty. More patches may be appended to the file.
write_overlay() {
    local dir=$1 base=$2 image=$3 resource
    shift 3
    {
        printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n'
        printf '  - %s\n' "$(relative_path "$dir" "$base")"
        for resource in "$@"; do
            printf '  - %s\n' "$resource"
        done
        printf 'patches:\n'
        if [[ -n $image ]]; then
            printf '  - target: {kind: Deployment, name: %s}\n' "$APP"
            printf '    patch: |-\n'
            printf '      - {op: replace, path: /spec/template/spec/containers/0/image, value: "%s"}\n' "$image"
        fi
    } >"$dir/kustomization.yaml"
}

# write_workload_overlay DIR [KIND...]: prints the path of a sibling overlay that builds
# DIR without its webhook configurations (the KINDs named $APP, by default the
# ValidatingWebhookConfiguration). Applied first and waited for, it lets imgrep become
# ready before the API server starts calling it: registered earlier, a webhook with
# failurePolicy Fail rejects every checked pod until imgrep answers.
write_workload_overlay() {
    local dir=$1 workload kind
    shift
    (($#)) || set -- ValidatingWebhookConfiguration
    workload=$(mktemp -d "${dir%/*}/workload.XXXXXX")
    {
        printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n'
        printf '  - ../%s\npatches:\n' "${dir##*/}"
        for kind in "$@"; do
            cat <<YAML
  - patch: |-
      apiVersion: admissionregistration.k8s.io/v1
      kind: $kind
      metadata:
        name: $APP
      \$patch: delete
YAML
        done
    } >"$workload/kustomization.yaml"
    printf '%s\n' "$workload"
}

# ensure_credentials_secret NAMESPACE_YAML: the namespace, and an empty registry-dockerconfig Secret
# when there is none yet. The Deployment mounts it as imgrep's registry credentials
# file; one applied by hand (deploy/secret-credentials.yaml) is never overwritten.
ensure_credentials_secret() {
    kubectl apply -f "$1" >/dev/null
    kubectl -n "$NAMESPACE" get secret registry-dockerconfig >/dev/null 2>&1 ||
        kubectl -n "$NAMESPACE" create secret generic registry-dockerconfig \
            --type=kubernetes.io/dockerconfigjson --from-literal=.dockerconfigjson='{"auths":{}}' >/dev/null
}

wait_for_rollout() {
    log "waiting for deployment/$APP to become ready"
    kubectl -n "$NAMESPACE" rollout status "deployment/$APP" --timeout="${ROLLOUT_TIMEOUT:-300s}"
}

# retry CMD...: a few attempts for what fails while a cluster component is still
# starting (cert-manager's own webhook answers a little after its rollout).
retry() {
    local attempt
    for attempt in 1 2 3 4 5 6; do
        "$@" && return 0
        log "attempt $attempt failed; retrying in 10s"
        sleep 10
    done
    "$@"
}
