"""The manifests `kubectl apply -k deploy`, `kubectl apply -k deploy/cert-manager` and
`kubectl apply -k deploy/mutating` would apply, checked against SPEC, against the
official Kubernetes schemas, and against what the server really does."""

from __future__ import annotations

import json

import pytest

from imgrep.admission.io import gatekeeper, tenant_credentials
from imgrep.inventory.io import cluster as cluster_inventory
from imgrep.inventory.io import replicas as replica_inventory
from imgrep.kube.io import copy_leases
from tests.deploy.kube import REPO, find, kustomize, yaml_to_objects
from tests.helpers.kubeapi import validate

NAMESPACE = "image-replicator"
APP = "image-replicator"
# SPEC "Environment": EXCLUDED_NAMESPACES default, also excluded by the webhook.
SPEC_EXCLUDED = {"kube-system", "kube-public", "kube-node-lease", "image-replicator"}
SERVICE_NAMES = [
    "image-replicator",
    "image-replicator.image-replicator",
    "image-replicator.image-replicator.svc",
    "image-replicator.image-replicator.svc.cluster.local",
]
# SPEC "Environment", plus the operational knobs the server reads beyond it.
KNOWN_SETTINGS = {
    "PORT", "HEALTH_PORT", "TLS_CERT_PATH", "TLS_KEY_PATH", "SKIP_TLS", "TARGET_REGISTRY",
    "TARGET_INCLUDE_REGISTRY", "MODE", "ADMISSION_BUDGET_SECONDS", "REGISTRY_TIMEOUT",
    "REGISTRY_ERROR_POLICY", "CACHE_TTL_SECONDS", "EXCLUDED_NAMESPACES", "INSECURE_REGISTRIES",
    "REGISTRY_CA_FILE", "DOCKER_CONFIG_JSON", "DOCKER_CONFIG_PATH", "REQUIRE_CREDENTIALS",
    "ALLOWED_REGISTRIES", "INVENTORY_MAX", "INVENTORY_FILE", "DEBUG", "LOG_FORMAT",
    "SHUTDOWN_DELAY_SECONDS", "MAX_CONNECTIONS", "COPY_CONCURRENCY", "MUTATE", "GATE_PODS",
}


@pytest.fixture(scope="module")
def plain(kubectl, env) -> list[dict]:
    return kustomize(kubectl, REPO / "deploy", env)


@pytest.fixture(scope="module")
def with_cert_manager(kubectl, env) -> list[dict]:
    return kustomize(kubectl, REPO / "deploy" / "cert-manager", env)


@pytest.fixture(scope="module")
def mutating(kubectl, env) -> list[dict]:
    return kustomize(kubectl, REPO / "deploy" / "mutating", env)


@pytest.fixture(scope="module")
def audit(kubectl, env) -> list[dict]:
    return kustomize(kubectl, REPO / "deploy" / "audit", env)


#: every kustomization a cluster may be given
VARIANTS = ["plain", "with_cert_manager", "mutating", "audit"]


@pytest.fixture(params=["plain", "with_cert_manager", "mutating"])
def built(request) -> list[dict]:
    """Checks that hold for both ways of installing."""
    return request.getfixturevalue(request.param)


def container(objects: list[dict]) -> dict:
    (only,) = find(objects, "Deployment", APP)["spec"]["template"]["spec"]["containers"]
    return only


def env_values(objects: list[dict]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(objects)["env"]}


def port_named(objects: list[dict], name: str) -> int:
    (port,) = [p["containerPort"] for p in container(objects)["ports"] if p["name"] == name]
    return port


def webhook(objects: list[dict]) -> dict:
    (only,) = find(objects, "ValidatingWebhookConfiguration", APP)["webhooks"]
    return only


def test_every_namespaced_object_is_in_the_imgrep_namespace(built):
    cluster_scoped = {"Namespace", "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration", "ClusterRole",
                      "ClusterRoleBinding"}
    assert find(built, "Namespace", NAMESPACE)
    for obj in built:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]


def test_no_secret_is_applied_so_upgrades_never_overwrite_credentials_or_certificates(built):
    assert [o["metadata"]["name"] for o in built if o["kind"] == "Secret"] == []


def test_deployment_runs_two_spread_replicas_under_a_disruption_budget(built):
    deployment = find(built, "Deployment", APP)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"]["matchLabels"] == {"app": APP} and labels["app"] == APP
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname"}
    assert all(c["labelSelector"]["matchLabels"] == {"app": APP} for c in spread)
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = find(built, "PodDisruptionBudget", APP)
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"] == {"app": APP}
    assert pdb["spec"]["minAvailable"] == 1


def test_pod_is_locked_down(built):
    pod = find(built, "Deployment", APP)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # imgrep's own pod gets the token (pull secrets); other pods naming the account do not
    assert pod["automountServiceAccountToken"] is True
    assert find(built, "ServiceAccount", pod["serviceAccountName"])["automountServiceAccountToken"] is False
    context = container(built)["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    resources = container(built)["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"cpu", "memory"}


def test_container_serves_the_webhook_and_health_ports_it_is_configured_for(built):
    settings = env_values(built)
    assert container(built)["args"] == ["serve"]
    assert port_named(built, "webhook") == int(settings["PORT"]) == 8443
    assert port_named(built, "health") == int(settings["HEALTH_PORT"]) == 8080
    assert set(settings) <= KNOWN_SETTINGS
    assert set(settings["EXCLUDED_NAMESPACES"].split(",")) == SPEC_EXCLUDED


def test_probes_use_healthz_and_readyz_on_the_health_port(built):
    live = container(built)["livenessProbe"]["httpGet"]
    ready = container(built)["readinessProbe"]["httpGet"]
    assert (live["path"], live["port"]) == ("/healthz", "health")
    assert (ready["path"], ready["port"]) == ("/readyz", "health")


def test_tls_secret_is_mounted_where_the_server_reads_it(built):
    pod = find(built, "Deployment", APP)["spec"]["template"]["spec"]
    settings = env_values(built)
    (mount,) = [m for m in container(built)["volumeMounts"] if m["mountPath"] == "/certs"]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == f"{APP}-tls"
    assert (settings["TLS_CERT_PATH"], settings["TLS_KEY_PATH"]) == ("/certs/tls.crt", "/certs/tls.key")


def test_registry_credentials_are_a_mounted_file_never_environment_variables(built):
    assert "envFrom" not in container(built)
    assert not [e for e in container(built)["env"] if "valueFrom" in e]
    pod = find(built, "Deployment", APP)["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "registry-dockerconfig"]
    assert "optional" not in volume["secret"]  # the install scripts create it empty when it is missing
    (mount,) = [m for m in container(built)["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    assert env_values(built)["DOCKER_CONFIG_PATH"] == f"{mount['mountPath']}/.dockerconfigjson"


def test_only_the_inventory_directory_is_writable(built):
    pod = find(built, "Deployment", APP)["spec"]["template"]["spec"]
    writable = [m for m in container(built)["volumeMounts"] if not m.get("readOnly")]
    assert [m["mountPath"] for m in writable] == ["/var/lib/imgrep"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == writable[0]["name"]]
    assert "emptyDir" in volume


def test_service_sends_443_to_the_webhook_port(built):
    service = find(built, "Service", APP)
    assert service["spec"]["selector"] == {"app": APP}
    (https,) = [p for p in service["spec"]["ports"] if p["port"] == 443]
    assert port_named(built, https["targetPort"]) == 8443


def test_webhook_rules_cover_every_kind_spec_lists(built):
    hook = webhook(built)
    covered = set()
    for rule in hook["rules"]:
        assert rule["operations"] == ["CREATE", "UPDATE"]
        assert rule["apiVersions"] == ["v1"]
        covered |= {(group, resource) for group in rule["apiGroups"] for resource in rule["resources"]}
    assert covered == {
        ("", "pods"), ("", "pods/ephemeralcontainers"), ("", "replicationcontrollers"), ("", "podtemplates"),
        ("apps", "deployments"), ("apps", "statefulsets"), ("apps", "daemonsets"), ("apps", "replicasets"),
        ("batch", "jobs"), ("batch", "cronjobs"),
    }


def test_webhook_calls_the_service_within_the_admission_budget(built):
    hook = webhook(built)
    settings = env_values(built)
    pod = find(built, "Deployment", APP)["spec"]["template"]["spec"]
    assert hook["name"] == "image-replicator.image-replicator.svc"
    assert hook["clientConfig"]["service"] == {"name": APP, "namespace": NAMESPACE, "path": "/validate", "port": 443}
    assert hook["admissionReviewVersions"] == ["v1", "v1beta1"]
    assert hook["sideEffects"] == "NoneOnDryRun"
    assert hook["matchPolicy"] == "Equivalent"
    assert hook["timeoutSeconds"] == 10
    assert float(settings["ADMISSION_BUDGET_SECONDS"]) < hook["timeoutSeconds"]
    # Shutdown: the readiness delay plus one request at its longest fits in the grace period.
    assert pod["terminationGracePeriodSeconds"] > float(settings["SHUTDOWN_DELAY_SECONDS"]) + hook["timeoutSeconds"]
    assert hook["failurePolicy"] in {"Fail", "Ignore"}


def test_webhook_skips_the_spec_namespaces_and_the_skip_label(built):
    hook = webhook(built)
    (namespaces,) = hook["namespaceSelector"]["matchExpressions"]
    assert (namespaces["key"], namespaces["operator"]) == ("kubernetes.io/metadata.name", "NotIn")
    assert set(namespaces["values"]) == SPEC_EXCLUDED
    assert hook["objectSelector"]["matchExpressions"] == [
        {"key": "image-replicator.io/skip", "operator": "NotIn", "values": ["true"]}
    ]


def test_failure_policy_trade_off_is_explained_next_to_it():
    text = (REPO / "deploy" / "base" / "webhook-config.yaml").read_text()
    comment = text[: text.index("failurePolicy:")].rsplit("timeoutSeconds", 1)[1]
    assert "Fail" in comment and "Ignore" in comment and "air-gapped" in comment


def test_plain_install_leaves_the_ca_bundle_to_deploy_script(plain):
    hook_config = find(plain, "ValidatingWebhookConfiguration", APP)
    assert "caBundle" not in webhook(plain)["clientConfig"]
    assert "annotations" not in hook_config["metadata"]
    assert not [o for o in plain if o["apiVersion"].startswith("cert-manager.io/")]


def test_cert_manager_install_adds_only_issuers_and_certificates(plain, with_cert_manager):
    def key(o):
        return o["kind"], o["metadata"]["name"]

    extra = {key(o) for o in with_cert_manager} - {key(o) for o in plain}
    assert extra == {
        ("Issuer", "image-replicator-selfsigned"), ("Certificate", "image-replicator-ca"),
        ("Issuer", "image-replicator-ca-issuer"), ("Certificate", "image-replicator-cert"),
    }
    assert find(with_cert_manager, "Deployment", APP) == find(plain, "Deployment", APP)


def test_cert_manager_chain_issues_the_mounted_serving_certificate(with_cert_manager):
    objects = with_cert_manager
    assert "selfSigned" in find(objects, "Issuer", "image-replicator-selfsigned")["spec"]
    ca = find(objects, "Certificate", "image-replicator-ca")["spec"]
    assert ca["isCA"] is True
    assert ca["issuerRef"] == {"kind": "Issuer", "name": "image-replicator-selfsigned"}
    ca_issuer = find(objects, "Issuer", "image-replicator-ca-issuer")["spec"]
    assert ca_issuer["ca"]["secretName"] == ca["secretName"]
    serving = find(objects, "Certificate", "image-replicator-cert")["spec"]
    assert serving["issuerRef"] == {"kind": "Issuer", "name": "image-replicator-ca-issuer"}
    assert serving["dnsNames"] == SERVICE_NAMES
    assert "server auth" in serving["usages"]
    pod = find(objects, "Deployment", APP)["spec"]["template"]["spec"]
    assert serving["secretName"] in {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}


def test_cert_manager_injects_the_ca_of_the_serving_certificate(with_cert_manager):
    metadata = find(with_cert_manager, "ValidatingWebhookConfiguration", APP)["metadata"]
    namespace, name = metadata["annotations"]["cert-manager.io/inject-ca-from"].split("/")
    assert find(with_cert_manager, "Certificate", name)["metadata"]["namespace"] == namespace
    assert name == "image-replicator-cert"


def test_example_credentials_secret_is_the_mounted_dockerconfigjson(kubectl, env, plain):
    (secret,) = yaml_to_objects(kubectl, (REPO / "deploy" / "secret-credentials.yaml").read_text(), env)
    assert (secret["kind"], secret["type"]) == ("Secret", "kubernetes.io/dockerconfigjson")
    assert (secret["metadata"]["name"], secret["metadata"]["namespace"]) == ("registry-dockerconfig", NAMESPACE)
    auths = json.loads(secret["stringData"][".dockerconfigjson"])["auths"]
    assert auths and all({"username", "password"} <= set(entry) for entry in auths.values())
    pod = find(plain, "Deployment", APP)["spec"]["template"]["spec"]
    assert secret["metadata"]["name"] in {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}


def test_dockerfile_builds_with_the_runtime_python_and_runs_the_zipapp_as_non_root(plain):
    lines = [line.split() for line in (REPO / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    stages = [words[1] for words in lines if words[0] == "FROM"]
    # distroless python3-debian12 carries Debian bookworm's Python 3.11.
    assert stages == ["python:3.11-slim-bookworm", "gcr.io/distroless/python3-debian12:nonroot"]
    final = lines[[w[0] for w in lines].index("FROM", 1):]
    instructions = {words[0]: " ".join(words[1:]) for words in final}
    assert instructions["COPY"] == "--from=build /src/dist/imgrep.pyz /app/imgrep.pyz"
    assert json.loads(instructions["ENTRYPOINT"]) == ["python3", "/app/imgrep.pyz"]
    assert json.loads(instructions["CMD"]) == ["serve"]
    # Numeric, so the kubelet can check runAsNonRoot, and the user the pod asks for.
    user = instructions["USER"].split(":")[0]
    pod = find(plain, "Deployment", APP)["spec"]["template"]["spec"]
    assert user.isdigit() and int(user) == pod["securityContext"]["runAsUser"] != 0


# --- every variant against the official schemas ------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_passes_the_official_schema_with_unknown_fields_refused(request, variant):
    """Strict: an unknown or misplaced field fails. cert-manager's kinds are CRDs with no schema there."""
    objects = request.getfixturevalue(variant)
    unchecked, checked = [], set()
    for obj in objects:
        if obj["apiVersion"].startswith("cert-manager.io/"):
            unchecked.append(obj["kind"])
            continue
        validate(obj)
        checked.add(obj["kind"])
    assert {"Deployment", "Service", "ValidatingWebhookConfiguration", "NetworkPolicy", "ClusterRole"} <= checked
    assert set(unchecked) <= {"Issuer", "Certificate"}
    assert bool(unchecked) == (variant == "with_cert_manager")


# --- what imgrep may do with the API -----------------------------------------------------


#: what every variant grants: the cluster features of deploy/base/rbac.yaml
BASE_PERMISSIONS = (tenant_credentials.PERMISSIONS | cluster_inventory.PERMISSIONS | copy_leases.PERMISSIONS
                    | replica_inventory.PERMISSIONS)
#: the only writes granted cluster-wide: the gatekeeper releases gated Pods wherever they are
CLUSTER_WIDE_WRITES = {(verb, group, resource) for verb, group, resource in gatekeeper.PERMISSIONS
                       if verb not in ("get", "list")}


def rules_of(objects: list[dict]) -> set[tuple[str, str, str]]:
    """(verb, group, resource) granted to imgrep's service account through any binding."""
    roles = {(o["kind"], o["metadata"]["name"]): o for o in objects if o["kind"] in ("Role", "ClusterRole")}
    granted = set()
    for binding in (o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        if binding["kind"] == "RoleBinding":  # a Role grants in imgrep's own namespace only
            assert binding["metadata"]["namespace"] == NAMESPACE and binding["roleRef"]["kind"] == "Role"
        assert {"kind": "ServiceAccount", "name": APP, "namespace": NAMESPACE} in binding["subjects"]
        role = roles[(binding["roleRef"]["kind"], binding["roleRef"]["name"])]
        for rule in role["rules"]:
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule
            rights = {(verb, group, resource) for verb in rule["verbs"] for group in rule["apiGroups"]
                      for resource in rule["resources"]}
            if role["kind"] == "ClusterRole":  # cluster-wide reads, and the gatekeeper's writes only
                assert {right for right in rights if right[0] not in ("get", "list")} <= CLUSTER_WIDE_WRITES
            granted |= rights
    return granted


@pytest.mark.parametrize("variant", VARIANTS)
def test_rbac_grants_exactly_what_the_cluster_features_use(request, variant):
    """No wildcard, no list or watch of Secrets: what each feature declares it needs, no more (the
    features' integration tests hold each to its declaration). The gatekeeper's rights come with
    GATE_PODS=true, which only deploy/mutating sets."""
    objects = request.getfixturevalue(variant)
    granted = rules_of(objects)
    gates = env_values(objects).get("GATE_PODS") == "true"
    assert gates == (variant == "mutating")
    assert granted == (BASE_PERMISSIONS | gatekeeper.PERMISSIONS if gates else BASE_PERMISSIONS)
    assert not any("*" in part for rule in granted for part in rule)


def test_network_policy_lets_the_api_server_in_and_keeps_metadata_services_out(built):
    policy = find(built, "NetworkPolicy", APP)["spec"]
    assert policy["podSelector"] == {"matchLabels": {"app": APP}}
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    webhook_rule, health_rule = policy["ingress"]
    assert "from" not in webhook_rule and [p["port"] for p in webhook_rule["ports"]] == ["webhook"]
    assert health_rule["from"] == [{"namespaceSelector": {}}] and [p["port"] for p in health_rule["ports"]] == ["health"]
    blocks = {peer["ipBlock"]["cidr"]: set(peer["ipBlock"]["except"]) for peer in policy["egress"][0]["to"]}
    assert blocks == {"0.0.0.0/0": {"169.254.0.0/16"}, "::/0": {"fe80::/10", "fd00:ec2::254/128"}}


# --- the development-cluster variant -----------------------------------------------------


def test_audit_variant_sees_kube_system_and_never_blocks(audit, plain):
    settings = env_values(audit)
    assert settings["MODE"] == "audit"
    hook = webhook(audit)
    assert hook["failurePolicy"] == "Ignore"
    (namespaces,) = hook["namespaceSelector"]["matchExpressions"]
    # only imgrep's own namespace, so that it can always restart itself; kube-system's images are seen
    assert namespaces["values"] == [NAMESPACE]
    assert settings["EXCLUDED_NAMESPACES"].split(",") == namespaces["values"]
    assert webhook(plain)["failurePolicy"] == "Fail" and env_values(plain)["MODE"] == "enforce"
    unchanged = {k: v for k, v in settings.items() if k not in ("MODE", "EXCLUDED_NAMESPACES")}
    assert unchanged == {k: v for k, v in env_values(plain).items() if k not in ("MODE", "EXCLUDED_NAMESPACES")}


# --- the mutating variant ------------------------------------------------------------------------


def mutating_webhook(objects: list[dict]) -> dict:
    (only,) = find(objects, "MutatingWebhookConfiguration", APP)["webhooks"]
    return only


def test_mutating_install_adds_the_mutating_webhook_and_turns_mutation_and_gates_on(plain, mutating):
    def key(o):
        return o["kind"], o["metadata"]["name"]

    assert {key(o) for o in mutating} - {key(o) for o in plain} == {
        ("MutatingWebhookConfiguration", APP), ("ClusterRole", f"{APP}-gates"), ("ClusterRoleBinding", f"{APP}-gates")}
    assert find(mutating, "ValidatingWebhookConfiguration", APP) == find(plain, "ValidatingWebhookConfiguration", APP)
    settings, plain_settings = env_values(mutating), env_values(plain)
    assert settings["MUTATE"] == "true"
    assert settings["TARGET_REGISTRY"]  # MUTATE=true without it stops imgrep at start
    assert settings["GATE_PODS"] == "true"  # needs MUTATE=true, and the API: imgrep's pod mounts its token
    assert {k: v for k, v in settings.items() if k not in ("MUTATE", "TARGET_REGISTRY", "GATE_PODS")} == plain_settings
    assert "MUTATE" not in plain_settings and "GATE_PODS" not in plain_settings  # off unless asked for


def test_gates_rbac_is_the_gatekeeper_s_own_cluster_role(mutating):
    role, binding = find(mutating, "ClusterRole", f"{APP}-gates"), find(mutating, "ClusterRoleBinding", f"{APP}-gates")
    assert rules_of([role, binding]) == gatekeeper.PERMISSIONS
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": APP, "namespace": NAMESPACE}]


def test_each_gates_right_says_why_it_is_needed():
    text = (REPO / "deploy" / "mutating" / "rbac-gates.yaml").read_text()
    comment = text[: text.index("apiVersion:")]
    for right in ("list pods", "update pods", "create events"):
        assert f"# - {right}: " in comment, right


def test_mutating_webhook_is_for_pods_only_and_reinvoked_when_a_later_webhook_changes_them(mutating):
    hook = mutating_webhook(mutating)
    assert hook["clientConfig"]["service"] == {"name": APP, "namespace": NAMESPACE, "path": "/mutate", "port": 443}
    assert "caBundle" not in hook["clientConfig"]  # scripts/deploy.sh --mutating fills it in
    assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                              "resources": ["pods"], "scope": "Namespaced"}]
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["sideEffects"] == "NoneOnDryRun"
    assert hook["admissionReviewVersions"] == ["v1", "v1beta1"]
    assert hook["matchPolicy"] == "Equivalent"
    assert hook["failurePolicy"] == "Fail"
    assert float(env_values(mutating)["ADMISSION_BUDGET_SECONDS"]) < hook["timeoutSeconds"] <= 10
    assert hook["name"] != webhook(mutating)["name"]


def test_mutating_webhook_skips_what_the_validating_one_skips(mutating):
    hook, validating = mutating_webhook(mutating), webhook(mutating)
    assert hook["namespaceSelector"] == validating["namespaceSelector"]
    assert hook["objectSelector"] == validating["objectSelector"]
