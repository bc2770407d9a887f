"""The Helm chart in deploy/helm/imgrep, rendered offline by Helm's Go library:
it installs what kustomize installs, every setting of imgrep is reachable through
its values, and bad values are refused before anything reaches a cluster.

kubernetes-validate holds no schemas for CRDs: cert-manager's Issuer and
Certificate and the Prometheus operator's ServiceMonitor and PrometheusRule are
only warned about there (the cert-manager ones are compared with the kustomize
build instead, the rules are run through promtool in test_prometheus.py)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

import imgrep
from imgrep.admission.gates import GATED_LABEL
from imgrep.admission.io import gatekeeper
from imgrep.config import MUTATE_OFF, MUTATE_PIN, MUTATE_TARGET, load_config
from tests.deploy.chart import CHART, NAMESPACE, helm, notes, render, render_objects
from tests.deploy.kube import REPO, find, kustomize
from tests.helpers.binaries import require_module

APP = "image-replicator"
MONITORING = {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
                          "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}}}
# Every value that sets one of imgrep's variables, none at its default.
EVERY_SETTING = {
    "image": {"repository": "registry.example.com/platform/imgrep", "digest": "sha256:" + "ab" * 32},
    "replicas": 3,
    "mode": "audit",
    "admissionBudgetSeconds": 4.5,
    "excludedNamespaces": ["kube-system", "monitoring"],
    "logFormat": "text",
    "shutdownDelaySeconds": 3,
    "ports": {"webhook": 9443, "health": 9090},
    "targetRegistry": "registry.example.com/mirror",
    "targetIncludeRegistry": True,
    "mutate": "true",
    "gatePods": False,
    "registryTimeoutMilliseconds": 600000,
    "registryErrorPolicy": "allow",
    "cacheTTLSeconds": 0,
    "insecureRegistries": ["registry.lab:5000", "10.0.0.5"],
    "allowedRegistries": ["docker.io", "registry.example.com"],
    "requireCredentials": True,
    "maxConnections": 512,
    "copyConcurrency": 8,
    "debug": True,
    "inventory": {"max": 50000, "persist": True, "sizeLimit": "1Gi"},
    "registryCA": {"configMap": "internal-ca", "key": "bundle.pem"},
    "credentials": {"dockerConfigSecretName": "mirror-pull"},
    "kubernetesAPI": "off",
    "pullSecrets": {"enabled": False, "cacheSeconds": 60},
    "clusterInventory": {"intervalSeconds": 600},
    "copyLeases": {"enabled": False, "durationSeconds": 30},
    "env": {"REGISTRY_MIRROR_URL": "registry.example.com", "SKIP_TLS": False},
    "extraEnv": [{"name": "REGISTRY_MIRROR_TOKEN",
                  "valueFrom": {"secretKeyRef": {"name": "mirror-token", "key": "token"}}}],
    "webhook": {"timeoutSeconds": 6, "failurePolicy": "Ignore"},
    "imagePullSecrets": [{"name": "pull"}],
    "priorityClassName": "system-cluster-critical",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "platform", "effect": "NoSchedule"}],
    "podAnnotations": {"example.com/team": "platform"},
    "commonLabels": {"team": "platform"},
}
VALUE_SETS = {
    "default": {},
    "with-namespace": {"namespace": {"create": True}},
    "cert-manager": {"certManager": {"enabled": True}},
    "monitoring": MONITORING,
    "every-setting": EVERY_SETTING,
    "audit-without-webhook": {"mode": "audit", "webhook": {"enabled": False}, "replicas": 1,
                              "podDisruptionBudget": {"enabled": False}},
    "mutating": {"mutate": "true", "targetRegistry": "registry.example.com/mirror"},
    "mutating-without-gates": {"mutate": "true", "targetRegistry": "registry.example.com/mirror", "gatePods": False},
    # deploy/audit: sees kube-system, never blocks.
    "audit": {"mode": "audit", "excludedNamespaces": [], "webhook": {"failurePolicy": "Ignore"}},
    "cluster-features-off": {"kubernetesAPI": "off"},
    # pin needs no target.
    "pin-with-cert-manager": {"mutate": "pin", "certManager": {"enabled": True}},
    # mutate as `--set mutate=true` writes it: a boolean.
    "mutating-without-webhook": {"mutate": True, "targetRegistry": "registry.example.com/mirror",
                                 "webhook": {"enabled": False}},
}
#: what lets imgrep use the Kubernetes API, and the NetworkPolicy, beside the workload itself
CLUSTER_ACCESS = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "NetworkPolicy"}
CRD_KINDS = {("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate"),
             ("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
# The README's minimum, and the newest release kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.25.0", "latest"]


@pytest.fixture(scope="module")
def build(kubectl, env):
    """values -> the rendered objects, as kubectl reads them."""
    def render_with(values: dict, *, namespace: str = NAMESPACE) -> list[dict]:
        return render_objects(kubectl, env, values, namespace=namespace)
    return render_with


@pytest.fixture(scope="module")
def objects(build):
    """A value set's objects by its name in VALUE_SETS, each rendered once."""
    cache: dict[str, list[dict]] = {}

    def get(name: str) -> list[dict]:
        if name not in cache:
            cache[name] = build(VALUE_SETS[name])
        return cache[name]
    return get


def by_key(objects: list[dict]) -> dict[tuple[str, str], dict]:
    keyed = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    assert len(keyed) == len(objects), "two objects share a kind and name"
    return keyed


def pod_spec(objects: list[dict]) -> dict:
    return find(objects, "Deployment", APP)["spec"]["template"]["spec"]


def container(objects: list[dict]) -> dict:
    (only,) = pod_spec(objects)["containers"]
    return only


def env_values(objects: list[dict]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container(objects)["env"]}


def refusal(values: dict) -> str:
    """The message rendering these values fails with."""
    sdk = helm()
    with pytest.raises(sdk.HelmError) as raised:
        render(values)
    return str(raised.value)


def test_chart_is_a_helm_v2_chart_of_this_imgrep_release():
    sdk = helm()
    with sdk.Chart.load(CHART) as chart:
        metadata = chart.metadata
        assert chart.schema is not None
    assert (metadata["apiVersion"], metadata["name"]) == ("v2", "imgrep")
    assert metadata["appVersion"] == imgrep.__version__
    assert metadata["kubeVersion"] == ">=1.25.0-0"


@pytest.mark.parametrize("value_set", VALUE_SETS)
@pytest.mark.parametrize("kube_version", ["v1.25.0", "v1.37.0"])
def test_lint_is_clean(value_set, kube_version):
    report = helm().lint(CHART, VALUE_SETS[value_set], strict=True, namespace=NAMESPACE, kube_version=kube_version)
    findings = [(m["path"], m["error"]) for m in report["messages"]]
    # Helm suggests an icon URL; imgrep publishes none.
    assert findings == [("Chart.yaml", "icon is recommended")]
    assert report["errors"] == []


def assert_same_objects(rendered: list[dict], built: list[dict]) -> None:
    """Object by object, so a failure names the object that differs."""
    rendered_by_key, built_by_key = by_key(rendered), by_key(built)
    assert sorted(rendered_by_key) == sorted(built_by_key)
    for key, obj in rendered_by_key.items():
        assert obj == built_by_key[key], key


def assert_renders_the_build_but_the_namespace(build, values: dict, built: list[dict]) -> None:
    """Helm keeps its release record in the namespace, so `helm install` needs it to exist
    first: the chart renders it only with namespace.create (README, Installing with Helm)."""
    namespace = find(built, "Namespace", APP)
    assert_same_objects(build(values), [o for o in built if o is not namespace])
    assert_same_objects(build({**values, "namespace": {"create": True}}), built)


def test_default_render_is_the_plain_kustomize_install_but_the_namespace(build, kubectl, env):
    built = kustomize(kubectl, REPO / "deploy", env)
    assert_renders_the_build_but_the_namespace(build, VALUE_SETS["default"], built)


def test_cert_manager_render_is_the_cert_manager_kustomize_install(build, kubectl, env):
    built = kustomize(kubectl, REPO / "deploy" / "cert-manager", env)
    assert_renders_the_build_but_the_namespace(build, VALUE_SETS["cert-manager"], built)


def test_mutating_render_is_the_mutating_kustomize_install(build, kubectl, env):
    """mutate=true with the placeholder TARGET_REGISTRY deploy/mutating ships."""
    built = kustomize(kubectl, REPO / "deploy" / "mutating", env)
    assert VALUE_SETS["mutating"] == {"mutate": "true", "targetRegistry": env_values(built)["TARGET_REGISTRY"]}
    assert_renders_the_build_but_the_namespace(build, VALUE_SETS["mutating"], built)


def test_audit_render_is_the_audit_kustomize_install(build, kubectl, env):
    """MODE=audit, failurePolicy Ignore and only the release namespace excluded, as deploy/audit."""
    built = kustomize(kubectl, REPO / "deploy" / "audit", env)
    assert env_values(built)["EXCLUDED_NAMESPACES"] == NAMESPACE
    assert_renders_the_build_but_the_namespace(build, VALUE_SETS["audit"], built)


@pytest.mark.parametrize("value_set", VALUE_SETS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_is_valid_for_kubernetes(objects, value_set, version):
    """Strict: an unknown field anywhere is an error, as the API server's field validation makes it."""
    kubernetes_validate = require_module("kubernetes_validate", "kubernetes-validate")
    if version == "latest":
        version = kubernetes_validate.latest_version()
    unchecked = set()
    for obj in objects(value_set):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError as missing:
            unchecked.add((obj["apiVersion"], obj["kind"]))
            warnings.warn(f"not validated (a CRD, no schema in kubernetes-validate): {missing.message}")
        except kubernetes_validate.ValidationError as invalid:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {list(invalid.path)}: {invalid.message}")
    # Only the CRDs go unchecked, never a core object with a mistyped apiVersion.
    assert unchecked <= CRD_KINDS


def _program_variables() -> set[str]:
    """Every variable name imgrep's configuration reads (config.py is the only reader)."""
    source = (REPO / "imgrep" / "config.py").read_text()
    return set(re.findall(r'\(\s*"([A-Z][A-Z0-9_]+)"', source))


def _chart_set(objects: list[dict]) -> set[str]:
    """The variables rendered from values of their own, not from env or extraEnv."""
    return set(env_values(objects)) - set(EVERY_SETTING["env"]) - {e["name"] for e in EVERY_SETTING["extraEnv"]}


#: variables imgrep reads that no value sets, each for a reason; env takes every one
THROUGH_ENV = {
    "SKIP_TLS",  # the API server calls webhooks over HTTPS only
    "DOCKER_CONFIG_JSON",  # credentials are the mounted file of credentials.dockerConfigSecretName
    # the kubelet sets the first two in every pod; a kubeconfig is for running outside a cluster; the
    # pod's host name and its service account's namespace stand in for POD_NAME and POD_NAMESPACE
    "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG", "POD_NAME", "POD_NAMESPACE",
}
#: the cloud registries' variables (README "Cloud registries"): the identities are what EKS, GKE and
#: AKS inject into the pod under their SDKs' names, and the rest go through env beside them
CLOUD_PREFIXES = ("AWS_", "AZURE_", "ECR_", "GCE_")


def test_every_variable_imgrep_reads_has_a_value_or_goes_through_env(objects, build):
    chart_set = _chart_set(objects("every-setting"))
    cloud = {v for v in _program_variables() if v.startswith(CLOUD_PREFIXES)} | {"REGISTRY_PROVIDERS"}
    assert _program_variables() - chart_set == THROUGH_ENV | cloud
    through_env = {variable: f"value-{index}" for index, variable in enumerate(sorted(THROUGH_ENV | cloud))}
    rendered = env_values(build({"env": {**through_env, "SKIP_TLS": False, "REGISTRY_A_URL": "a.example"}}))
    assert {variable: rendered[variable] for variable in through_env} == {**through_env, "SKIP_TLS": "false"}
    assert rendered["REGISTRY_A_URL"] == "a.example"


def test_env_never_sets_a_variable_twice(objects):
    """A variable with a value of its own is refused in env, naming that value."""
    sdk = helm()
    with sdk.Chart.load(CHART) as chart:
        defaults = chart.values
    for variable in sorted(_chart_set(objects("every-setting"))):
        message = refusal({"env": {variable: "1"}})
        named = re.search(rf"env\.{variable}: the chart sets {variable} from the value ([\w.]+)", message)
        assert named, message
        node = defaults
        for part in named.group(1).split("."):
            node = node[part]  # the value it names exists


def test_the_rendered_environment_configures_imgrep_as_the_values_say(objects):
    settings = env_values(objects("every-setting"))
    # At run time the Secret behind extraEnv adds the token; the mounted files are read.
    settings["REGISTRY_MIRROR_TOKEN"] = "token"
    config = load_config(settings, read_text=lambda path: '{"auths": {}}')
    assert (config.port, config.health_port) == (9443, 9090)
    assert (config.tls_cert_path, config.tls_key_path, config.skip_tls) == ("/certs/tls.crt", "/certs/tls.key", False)
    assert (config.mode, config.admission_budget_seconds, config.log_format) == ("audit", 4.5, "text")
    assert config.excluded_namespaces == {"kube-system", "monitoring", NAMESPACE}
    assert config.shutdown_delay_seconds == 3
    assert (str(config.target), config.target_include_registry) == ("registry.example.com/mirror", True)
    assert (config.mutate, config.gate_pods) == (MUTATE_TARGET, False)
    assert (config.registry_timeout_seconds, config.registry_error_policy) == (600, "allow")
    assert config.cache_ttl_seconds == 0
    assert config.insecure_registries == {"registry.lab:5000", "10.0.0.5"}
    assert config.allowed_registries == {"docker.io", "registry.example.com"}
    assert config.require_credentials is True and config.debug is True
    assert (config.max_connections, config.copy_concurrency, config.inventory_max) == (512, 8, 50000)
    assert config.inventory_file == "/var/lib/imgrep/inventory.jsonl"
    assert config.registry_ca_file == "/etc/imgrep/registry-ca/bundle.pem"
    kube = config.kube
    assert (kube.mode, kube.pull_secrets, kube.pull_secret_cache_seconds) == ("off", False, 60)
    assert (kube.cluster_inventory_seconds, kube.copy_leases, kube.copy_lease_seconds) == (600, False, 30)


def test_files_the_settings_name_are_mounted_from_the_named_objects(objects):
    rendered = objects("every-setting")
    settings = env_values(rendered)
    mounts = {m["name"]: m for m in container(rendered)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(rendered)["volumes"]}

    def mounted(path: str) -> tuple[dict, dict]:
        (name,) = [n for n, m in mounts.items() if Path(path).is_relative_to(m["mountPath"])]
        return mounts[name], volumes[name]

    mount, volume = mounted(settings["REGISTRY_CA_FILE"])
    assert volume["configMap"]["name"] == "internal-ca" and mount["readOnly"] is True
    mount, volume = mounted(settings["DOCKER_CONFIG_PATH"])
    assert volume["secret"] == {"secretName": "mirror-pull", "defaultMode": 0o440} and mount["readOnly"] is True
    mount, volume = mounted(settings["INVENTORY_FILE"])
    assert volume["emptyDir"] == {"sizeLimit": "1Gi"} and not mount.get("readOnly")
    mount, volume = mounted(settings["TLS_CERT_PATH"])
    assert volume["secret"]["secretName"] == f"{APP}-tls"
    # credentials never travel as environment variables, and nothing else is read from a Secret's keys
    assert "envFrom" not in container(rendered)


def test_pod_values_reach_the_pod_and_labels_never_reach_selectors(objects):
    rendered = objects("every-setting")
    pod = pod_spec(rendered)
    deployment = find(rendered, "Deployment", APP)
    assert container(rendered)["image"] == "registry.example.com/platform/imgrep@sha256:" + "ab" * 32
    assert deployment["spec"]["replicas"] == 3
    assert pod["imagePullSecrets"] == [{"name": "pull"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == EVERY_SETTING["tolerations"]
    # The readiness delay (3) plus one request at its longest (6) fits, with time to exit.
    assert pod["terminationGracePeriodSeconds"] == 13
    assert deployment["spec"]["template"]["metadata"]["annotations"]["example.com/team"] == "platform"
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    assert {p["name"]: p["containerPort"] for p in container(rendered)["ports"]} == {"webhook": 9443, "health": 9090}
    service = find(rendered, "Service", APP)
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"https": 443, "health": 9090}
    for obj in rendered:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["labels"] == {"app": APP, "team": "platform"}, obj["kind"]
    assert deployment["spec"]["selector"]["matchLabels"] == {"app": APP}
    assert service["spec"]["selector"] == {"app": APP}
    assert find(rendered, "PodDisruptionBudget", APP)["spec"]["selector"]["matchLabels"] == {"app": APP}


def webhooks(objects: list[dict], kind: str) -> dict:
    (only,) = find(objects, kind, APP)["webhooks"]
    return only


def test_webhook_values_reach_the_webhook(objects):
    hook = webhooks(objects("every-setting"), "ValidatingWebhookConfiguration")
    assert (hook["timeoutSeconds"], hook["failurePolicy"]) == (6, "Ignore")
    (namespaces,) = hook["namespaceSelector"]["matchExpressions"]
    assert namespaces["values"] == ["kube-system", "monitoring", NAMESPACE]
    assert env_values(objects("every-setting"))["EXCLUDED_NAMESPACES"] == ",".join(namespaces["values"])


def test_mutating_webhook_follows_the_validating_one(objects):
    """Both call the same replicas: one timeout, one failure policy, the same namespaces and skip label."""
    rendered = objects("every-setting")
    hook = webhooks(rendered, "MutatingWebhookConfiguration")
    validating = webhooks(rendered, "ValidatingWebhookConfiguration")
    assert (hook["timeoutSeconds"], hook["failurePolicy"]) == (6, "Ignore")
    assert hook["namespaceSelector"] == validating["namespaceSelector"]
    assert hook["objectSelector"] == validating["objectSelector"]
    assert hook["clientConfig"]["service"] == {**validating["clientConfig"]["service"], "path": "/mutate"}
    assert (hook["reinvocationPolicy"], hook["sideEffects"]) == ("IfNeeded", "NoneOnDryRun")
    assert hook["name"] != validating["name"]


def test_mutation_is_off_unless_asked_for(build):
    for off in (False, "false"):
        rendered = build({"mutate": off, "targetRegistry": "registry.example.com/mirror"})
        assert "MUTATE" not in env_values(rendered)
        assert not [o for o in rendered if o["kind"] == "MutatingWebhookConfiguration"]


@pytest.mark.parametrize("value_set, mutate, gates", [
    ("mutating", MUTATE_TARGET, True), ("mutating-without-gates", MUTATE_TARGET, False),
    ("pin-with-cert-manager", MUTATE_PIN, False), ("mutating-without-webhook", MUTATE_TARGET, True),
    ("default", MUTATE_OFF, False), ("every-setting", MUTATE_TARGET, False),
])
def test_imgrep_starts_with_the_mutation_the_values_ask_for(objects, value_set, mutate, gates):
    """load_config is what exits 2 at start: the rendered environment passes it (with the
    credentials file the pod always mounts)."""
    settings = {**env_values(objects(value_set)), "REGISTRY_MIRROR_TOKEN": "token"}
    config = load_config(settings, read_text=lambda path: '{"auths": {}}')
    assert (config.mutate, config.gate_pods) == (mutate, gates)


def test_release_namespace_and_name_reach_every_reference(build):
    rendered = build({"name": "imgrep-staging", "certManager": {"enabled": True}, "mutate": "true",
                      "targetRegistry": "registry.example.com/mirror"}, namespace="platform")
    cluster_scoped = ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration", "ClusterRole",
                      "ClusterRoleBinding")
    for obj in rendered:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"]["namespace"] == "platform", obj["kind"]
    for binding in (o for o in rendered if o["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "imgrep-staging", "namespace": "platform"}]
        assert binding["roleRef"]["name"].startswith("imgrep-staging-")
        assert find(rendered, binding["roleRef"]["kind"], binding["roleRef"]["name"])
    assert find(rendered, "ClusterRoleBinding", "imgrep-staging-gates")
    assert find(rendered, "NetworkPolicy", "imgrep-staging")["spec"]["podSelector"] == {
        "matchLabels": {"app": "imgrep-staging"}}
    for kind, prefix, path in [("ValidatingWebhookConfiguration", "", "/validate"),
                               ("MutatingWebhookConfiguration", "mutate.", "/mutate")]:
        (hook,) = find(rendered, kind, "imgrep-staging")["webhooks"]
        assert hook["name"] == f"{prefix}imgrep-staging.platform.svc"
        assert hook["clientConfig"]["service"] == {"name": "imgrep-staging", "namespace": "platform",
                                                   "path": path, "port": 443}
        assert "platform" in hook["namespaceSelector"]["matchExpressions"][0]["values"]
        annotations = find(rendered, kind, "imgrep-staging")["metadata"]["annotations"]
        assert annotations == {"cert-manager.io/inject-ca-from": "platform/imgrep-staging-cert"}, kind
    serving = find(rendered, "Certificate", "imgrep-staging-cert")["spec"]
    assert serving["dnsNames"] == ["imgrep-staging", "imgrep-staging.platform", "imgrep-staging.platform.svc",
                                   "imgrep-staging.platform.svc.cluster.local"]
    assert serving["secretName"] == "imgrep-staging-tls"
    deployment = find(rendered, "Deployment", "imgrep-staging")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "imgrep-staging"
    assert find(rendered, "ServiceAccount", "imgrep-staging")


def test_plain_install_writes_the_given_ca_bundle_and_mounts_the_given_secret(build):
    rendered = build({"tls": {"caBundle": "QUJDRA==", "secretName": "webhook-serving"}, "mutate": "pin"})
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        assert webhooks(rendered, kind)["clientConfig"]["caBundle"] == "QUJDRA==", kind
        assert "annotations" not in find(rendered, kind, APP)["metadata"], kind
    (tls,) = [v for v in pod_spec(rendered)["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["secretName"] == "webhook-serving"


def test_webhook_can_be_registered_after_the_rollout(objects):
    """webhook.enabled=false first, like scripts/deploy.sh: nothing is judged before imgrep is ready."""
    kinds = {o["kind"] for o in objects("audit-without-webhook")}
    assert kinds == {"ServiceAccount", "Service", "Deployment"} | CLUSTER_ACCESS
    assert "--set webhook.enabled=true" in notes(VALUE_SETS["audit-without-webhook"])
    # The mutating webhook waits for the same upgrade; imgrep already runs with MUTATE.
    kinds = {o["kind"] for o in objects("mutating-without-webhook")}
    assert kinds == {"ServiceAccount", "Service", "Deployment", "PodDisruptionBudget"} | CLUSTER_ACCESS
    assert env_values(objects("mutating-without-webhook"))["MUTATE"] == "true"
    assert "register it and the mutating one" in notes(VALUE_SETS["mutating-without-webhook"])


def rbac_rules(objects: list[dict]) -> set[tuple[str, str, str]]:
    """(verb, group, resource) of every rendered Role and ClusterRole."""
    return {(verb, group, resource) for o in objects if o["kind"] in ("Role", "ClusterRole") for rule in o["rules"]
            for verb in rule["verbs"] for group in rule["apiGroups"] for resource in rule["resources"]}


def test_without_the_kubernetes_api_the_pod_has_no_token_and_no_rights(objects):
    rendered = objects("cluster-features-off")
    assert pod_spec(rendered)["automountServiceAccountToken"] is False
    assert env_values(rendered)["KUBERNETES_API"] == "off"
    assert {o["kind"] for o in rendered} & CLUSTER_ACCESS == {"NetworkPolicy"}
    assert pod_spec(objects("default"))["automountServiceAccountToken"] is True


@pytest.mark.parametrize("values, revoked", [
    ({"pullSecrets": {"enabled": False}}, {("get", "", "secrets"), ("get", "", "serviceaccounts")}),
    ({"clusterInventory": {"intervalSeconds": 0}}, {("list", "", "pods")}),
    ({"copyLeases": {"enabled": False}}, {(verb, "coordination.k8s.io", "leases")
                                          for verb in ("get", "create", "update", "delete")}),
])
def test_a_cluster_feature_turned_off_takes_its_rights_with_it(build, objects, values, revoked):
    everything = rbac_rules(objects("default"))
    assert revoked <= everything
    assert rbac_rules(build(values)) == everything - revoked
    assert not rbac_rules(build({"rbac": {"create": False}}))


GATES_OFF = [
    pytest.param({"mutate": "true", "targetRegistry": "registry.example.com/mirror", "gatePods": False}, "false",
                 id="gatePods-false"),
    # imgrep refuses GATE_PODS=true with KUBERNETES_API=off: gatePods needs the API, like every cluster feature
    pytest.param({"mutate": True, "targetRegistry": "registry.example.com/mirror", "kubernetesAPI": "off"}, "false",
                 id="kubernetesAPI-off"),
    # gates need MUTATE=true: a Pod is released pointed at its copies in the target
    pytest.param({"mutate": "pin", "targetRegistry": "registry.example.com/mirror"}, None, id="mutate-pin"),
    pytest.param({"mutate": False, "targetRegistry": "registry.example.com/mirror"}, None, id="mutate-false"),
    pytest.param({"gatePods": True}, None, id="default"),
]


def test_mutating_to_the_target_gates_pods_and_grants_the_gatekeeper_its_rights(objects):
    rendered = objects("mutating")
    assert env_values(rendered)["GATE_PODS"] == "true"
    assert rbac_rules(rendered) == rbac_rules(objects("default")) | gatekeeper.PERMISSIONS
    role = find(rendered, "ClusterRole", f"{APP}-gates")
    assert rbac_rules([role]) == gatekeeper.PERMISSIONS
    assert find(rendered, "ClusterRoleBinding", f"{APP}-gates")["roleRef"]["name"] == role["metadata"]["name"]


@pytest.mark.parametrize("values, gate_pods", GATES_OFF)
def test_without_gates_neither_gate_pods_nor_the_gatekeeper_s_rights_are_rendered(build, objects, values,
                                                                                   gate_pods):
    rendered = build(values)
    assert env_values(rendered).get("GATE_PODS") == gate_pods
    assert not [o for o in rendered if o["metadata"]["name"] == f"{APP}-gates"]
    assert not rbac_rules(rendered) & (gatekeeper.PERMISSIONS - rbac_rules(objects("default")))


def test_rbac_create_false_leaves_the_gatekeeper_without_rights_too(build):
    rendered = build({**VALUE_SETS["mutating"], "rbac": {"create": False}})
    assert env_values(rendered)["GATE_PODS"] == "true" and not rbac_rules(rendered)


def test_network_policy_takes_more_egress_and_can_be_left_out(build, objects):
    rule = {"to": [{"ipBlock": {"cidr": "169.254.169.254/32"}}], "ports": [{"port": 80, "protocol": "TCP"}]}
    policy = find(build({"networkPolicy": {"extraEgress": [rule]}}), "NetworkPolicy", APP)["spec"]
    assert policy["egress"] == [*find(objects("default"), "NetworkPolicy", APP)["spec"]["egress"], rule]
    assert not [o for o in build({"networkPolicy": {"enabled": False}}) if o["kind"] == "NetworkPolicy"]


def test_service_monitor_scrapes_the_health_port_of_the_service(objects):
    rendered = objects("monitoring")
    monitor = find(rendered, "ServiceMonitor", APP)
    service = find(rendered, "Service", APP)
    assert monitor["metadata"]["labels"] == {"app": APP, "release": "kube-prometheus-stack"}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    (health,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert health["targetPort"] == "health" and endpoint["path"] == "/metrics"
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("30s", "10s")


def test_monitoring_objects_are_off_by_default(objects):
    assert not [o for o in objects("default") if o["apiVersion"].startswith("monitoring.coreos.com/")]


BAD_VALUES = [
    ({"mode": "warn"}, "at '/mode': value must be one of 'enforce', 'audit'"),
    ({"replicas": 0}, "at '/replicas': minimum: got 0, want 1"),
    ({"replicas": 1.5}, "at '/replicas': got number, want integer"),
    ({"image": {"repository": "imgrep:1.0"}}, "at '/image/repository': 'imgrep:1.0' does not match pattern"),
    ({"image": {"repository": "Registry.example.com/imgrep"}}, "at '/image/repository'"),
    ({"image": {"tag": "v1 beta"}}, "at '/image/tag': 'v1 beta' does not match pattern"),
    ({"image": {"digest": "sha256:abc"}}, "at '/image/digest'"),
    ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy': value must be one of"),
    ({"webhook": {"timeoutSeconds": 31}}, "at '/webhook/timeoutSeconds': maximum: got 31, want 30"),
    ({"webhook": {"failurePolicy": "Deny"}}, "at '/webhook/failurePolicy': value must be one of 'Fail', 'Ignore'"),
    ({"admissionBudgetSeconds": 0}, "at '/admissionBudgetSeconds': minimum: got 0, want 0.1"),
    ({"registryErrorPolicy": "ignore"}, "at '/registryErrorPolicy': value must be one of '', 'deny', 'allow'"),
    ({"targetRegistry": "https://registry.example.com"}, "at '/targetRegistry'"),
    ({"cacheTTLSeconds": -1}, "at '/cacheTTLSeconds': minimum: got -1, want 0"),
    ({"registryTimeoutMilliseconds": 500}, "at '/registryTimeoutMilliseconds': minimum: got 500, want 1,000"),
    ({"ports": {"webhook": 70000, "health": 8080}}, "at '/ports/webhook': maximum"),
    ({"logFormat": "yaml"}, "at '/logFormat': value must be one of 'text', 'json'"),
    ({"excludedNamespaces": ["Kube System"]}, "at '/excludedNamespaces/0'"),
    ({"env": {"lower_case": "x"}}, "invalid propertyName 'lower_case'"),
    ({"commonLabels": {"app": "other"}}, "invalid propertyName 'app'"),
    ({"tls": {"caBundle": "-----BEGIN CERTIFICATE-----"}}, "at '/tls/caBundle'"),
    ({"replica": 3}, "additional properties 'replica' not allowed"),
    ({"mutate": "yes"}, "at '/mutate': value must be one of false, true, 'false', 'true', 'pin'"),
    ({"gatePods": "yes"}, "at '/gatePods': got string, want boolean"),
    ({"kubernetesAPI": "on"}, "at '/kubernetesAPI': value must be one of 'auto', 'off'"),
    ({"clusterInventory": {"intervalSeconds": 5}}, "at '/clusterInventory/intervalSeconds'"),
    ({"copyLeases": {"durationSeconds": 1}}, "at '/copyLeases/durationSeconds'"),
    ({"credentials": {"secretName": "registry-credentials"}}, "additional properties 'secretName' not allowed"),
]


@pytest.mark.parametrize("values, message", BAD_VALUES, ids=[next(iter(v)) + "-" + str(i) for i, (v, _) in
                                                              enumerate(BAD_VALUES)])
def test_schema_refuses_bad_values_on_render_and_lint(values, message):
    sdk = helm()
    with pytest.raises(sdk.HelmValuesError) as raised:
        render(values)
    assert "values don't meet the specifications of the schema" in str(raised.value)
    assert message in str(raised.value)
    report = sdk.lint(CHART, values, strict=True, namespace=NAMESPACE)
    assert any(m["severity"] == 3 and message in m["error"] for m in report["messages"]), report


RELATIONS = [
    ({"admissionBudgetSeconds": 10}, "at '/admissionBudgetSeconds': exclusiveMaximum: got 10, want 10"),
    ({"webhook": {"timeoutSeconds": 5}}, "at '/admissionBudgetSeconds': exclusiveMaximum: got 8, want 5"),
    ({"webhook": {"timeoutSeconds": 30}, "admissionBudgetSeconds": 30},
     "at '/admissionBudgetSeconds': exclusiveMaximum: got 30, want 30"),
    ({"certManager": {"enabled": True}, "tls": {"caBundle": "QUJD"}}, "at '/tls/caBundle': value must be ''"),
    # imgrep exits 2 on MUTATE=true without TARGET_REGISTRY; pin needs none (a value set renders it).
    ({"mutate": "true"}, "at '/targetRegistry': minLength: got 0, want 1"),
    ({"mutate": True}, "at '/targetRegistry': minLength: got 0, want 1"),
]


@pytest.mark.parametrize("values, message", RELATIONS, ids=[str(v) for v, _ in RELATIONS])
def test_schema_refuses_values_that_contradict_each_other(values, message):
    test_schema_refuses_bad_values_on_render_and_lint(values, message)


def test_a_budget_below_the_timeout_passes():
    assert render({"webhook": {"timeoutSeconds": 30}, "admissionBudgetSeconds": 29.5})
    assert render({"webhook": {"timeoutSeconds": 3}, "admissionBudgetSeconds": 2})


TEMPLATE_CHECKS = [
    ({"ports": {"webhook": 8080, "health": 8080}}, "ports.health (8080) must differ from ports.webhook"),
    ({"env": {"MODE": "audit"}}, "env.MODE: the chart sets MODE from the value mode; set that instead"),
]


@pytest.mark.parametrize("values, message", TEMPLATE_CHECKS, ids=[next(iter(v)) for v, _ in TEMPLATE_CHECKS])
def test_what_the_schema_cannot_state_stops_the_render_naming_the_value(values, message):
    """`helm install` and `helm template` stop with this message; `helm lint` only logs
    a template's `fail`, so these two are not lint errors."""
    sdk = helm()
    with pytest.raises(sdk.HelmRenderError) as raised:
        render(values)
    assert message in str(raised.value)


def test_notes_say_how_to_check_the_install():
    plain = notes()
    assert f"kubectl -n {NAMESPACE} rollout status deployment/{APP}" in plain
    assert "kubectl run imgrep-denied --image=nginx-that-does-not-exist:v999 --dry-run=server" in plain
    assert "denied: not found" in plain
    # the pods wait for the credentials Secret they mount: the notes say how to make an empty one
    assert f"-n {NAMESPACE} create secret generic registry-dockerconfig --type=kubernetes.io/dockerconfigjson" in plain
    # Without cert-manager and a CA the API server cannot reach imgrep: the notes say what is missing.
    assert "tls.caBundle is empty" in plain and f"create secret tls {APP}-tls" in plain
    managed = notes({"certManager": {"enabled": True}})
    assert f"get certificate {APP}-cert" in managed and "tls.caBundle is empty" not in managed
    assert "allowed with a warning" in notes({"mode": "audit"})
    assert "kubectl run imgrep-mutated" not in plain
    mutating = notes(VALUE_SETS["mutating"])
    assert "pointing Pods at the copies there, pinned by digest (MUTATE=true)" in mutating
    assert "wait at a scheduling gate until they are done (GATE_PODS=true)" in mutating
    assert f"kubectl get pods -A -l {GATED_LABEL}=true" in mutating
    assert "GATE_PODS" not in notes(VALUE_SETS["mutating-without-gates"]) and "GATE_PODS" not in plain
    assert "# registry.example.com/mirror/library/nginx:1.27@sha256:... once the target holds it" in mutating
    assert "# nginx:1.27@sha256:..." in notes({"mutate": "pin"})
