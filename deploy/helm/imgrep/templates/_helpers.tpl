{{/*
Names and labels shared by the templates. Labels stay those of deploy/base
(app only), so the default render equals what `kubectl kustomize deploy` builds.
*/}}

{{- define "imgrep.name" -}}
{{- .Values.name -}}
{{- end }}

{{/* metadata.labels of an object that carries the app label in deploy/base. */}}
{{- define "imgrep.labels" -}}
app: {{ include "imgrep.name" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The namespaces never judged: the configured ones and the release's own. */}}
{{- define "imgrep.excludedNamespaces" -}}
{{- toJson (uniq (append .Values.excludedNamespaces .Release.Namespace)) -}}
{{- end }}

{{/*
MUTATE as imgrep reads it: "true" or "pin", or empty when mutation is off (the
variable is then left unset and no MutatingWebhookConfiguration is rendered).
mutate may be a boolean, as `--set mutate=true` writes it, or a string.
*/}}
{{- define "imgrep.mutate" -}}
{{- $mutate := toString .Values.mutate -}}
{{- if ne $mutate "false" -}}
{{- $mutate -}}
{{- end -}}
{{- end }}

{{/*
What both webhook configurations share, so they stay alike: their metadata (the
CA injection included), the clientConfig for a path, and the selectors (the same
namespaces as EXCLUDED_NAMESPACES, the release's own included, and the skip label).
*/}}
{{- define "imgrep.webhookMetadata" -}}
name: {{ include "imgrep.name" . }}
labels:
  {{- include "imgrep.labels" . | nindent 2 }}
{{- if .Values.certManager.enabled }}
annotations:
  # cert-manager's CA injector fills in caBundle from the serving certificate's Secret.
  cert-manager.io/inject-ca-from: {{ .Release.Namespace }}/{{ include "imgrep.name" . }}-cert
{{- end }}
{{- end }}

{{/* Called with (dict "root" $ "path" "/validate"). */}}
{{- define "imgrep.webhookClientConfig" -}}
{{- with .root.Values.tls.caBundle -}}
caBundle: {{ . }}
{{ end -}}
service:
  name: {{ include "imgrep.name" .root }}
  namespace: {{ .root.Release.Namespace }}
  path: {{ .path }}
  port: 443
{{- end }}

{{- define "imgrep.webhookSelectors" -}}
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values: {{ include "imgrep.excludedNamespaces" . }}
# Objects labelled image-replicator.io/skip: "true" are never sent.
objectSelector:
  matchExpressions:
    - key: image-replicator.io/skip
      operator: NotIn
      values: ["true"]
{{- end }}

{{/*
GATE_PODS as the chart sets it: "true" or "false" with mutate true (gatePods, and the
Kubernetes API the gatekeeper updates Pods through: imgrep refuses GATE_PODS=true with
KUBERNETES_API=off), empty otherwise (unset: gates need MUTATE=true).
*/}}
{{- define "imgrep.gatePods" -}}
{{- if eq (include "imgrep.mutate" .) "true" -}}
{{- and .Values.gatePods (include "imgrep.kubernetesAPI" .) | empty | not -}}
{{- end -}}
{{- end }}

{{/* "true" when imgrep may use the Kubernetes API (its pod gets a token), empty with kubernetesAPI=off. */}}
{{- define "imgrep.kubernetesAPI" -}}
{{- if ne .Values.kubernetesAPI "off" -}}
true
{{- end -}}
{{- end }}

{{/* A binding of imgrep's service account; called with (dict "root" $ "kind" "Role" "role" NAME). */}}
{{- define "imgrep.binding" -}}
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ .kind }}Binding
metadata:
  name: {{ .role }}
  {{- if eq .kind "Role" }}
  namespace: {{ .root.Release.Namespace }}
  {{- end }}
  labels:
    {{- include "imgrep.labels" .root | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: {{ .kind }}
  name: {{ .role }}
subjects:
  - kind: ServiceAccount
    name: {{ include "imgrep.name" .root }}
    namespace: {{ .root.Release.Namespace }}
{{- end }}

{{- define "imgrep.tlsSecretName" -}}
{{- .Values.tls.secretName | default (printf "%s-tls" (include "imgrep.name" .)) -}}
{{- end }}

{{/*
Shutdown: the readiness delay (SHUTDOWN_DELAY_SECONDS), one request at its
longest (the webhook's timeoutSeconds) and a few seconds to exit; 20 as shipped.
*/}}
{{- define "imgrep.terminationGracePeriodSeconds" -}}
{{- add (ceil .Values.shutdownDelaySeconds) .Values.webhook.timeoutSeconds 4 -}}
{{- end }}

{{- define "imgrep.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}
{{- end }}

{{/*
What values.schema.json cannot check: env naming a variable the chart sets from
a value of its own, and two equal ports (JSON Schema compares a value with
constants, not with another value). Each failure names the value to use or both
values, like imgrep's own configuration errors. `helm install` and `helm template`
stop here; `helm lint` only logs a failing `fail`.
*/}}
{{- define "imgrep.validate" -}}
{{- if eq (int .Values.ports.webhook) (int .Values.ports.health) -}}
{{- fail (printf "ports.health (%v) must differ from ports.webhook: imgrep serves the webhook and its health port on separate listeners" .Values.ports.health) -}}
{{- end -}}
{{- $own := include "imgrep.settingValues" . | fromJson -}}
{{- range $variable, $_ := .Values.env -}}
{{- if hasKey $own $variable -}}
{{- fail (printf "env.%s: the chart sets %s from the value %s; set that instead" $variable $variable (get $own $variable)) -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
imgrep's variables the chart sets itself, each with the value that sets it
(README, "Installing with Helm"). env may name any other variable.
*/}}
{{- define "imgrep.settingValues" -}}
{{- toJson (dict
  "PORT" "ports.webhook"
  "HEALTH_PORT" "ports.health"
  "TLS_CERT_PATH" "tls.secretName (mounted at /certs)"
  "TLS_KEY_PATH" "tls.secretName (mounted at /certs)"
  "MODE" "mode"
  "ADMISSION_BUDGET_SECONDS" "admissionBudgetSeconds"
  "EXCLUDED_NAMESPACES" "excludedNamespaces"
  "LOG_FORMAT" "logFormat"
  "SHUTDOWN_DELAY_SECONDS" "shutdownDelaySeconds"
  "MUTATE" "mutate"
  "TARGET_REGISTRY" "targetRegistry"
  "TARGET_INCLUDE_REGISTRY" "targetIncludeRegistry"
  "GATE_PODS" "gatePods"
  "REGISTRY_TIMEOUT" "registryTimeoutMilliseconds"
  "REGISTRY_ERROR_POLICY" "registryErrorPolicy"
  "CACHE_TTL_SECONDS" "cacheTTLSeconds"
  "INSECURE_REGISTRIES" "insecureRegistries"
  "REGISTRY_CA_FILE" "registryCA.configMap"
  "DOCKER_CONFIG_PATH" "credentials.dockerConfigSecretName (mounted at /etc/imgrep/docker)"
  "REQUIRE_CREDENTIALS" "requireCredentials"
  "ALLOWED_REGISTRIES" "allowedRegistries"
  "INVENTORY_MAX" "inventory.max"
  "INVENTORY_FILE" "inventory.persist"
  "DEBUG" "debug"
  "MAX_CONNECTIONS" "maxConnections"
  "COPY_CONCURRENCY" "copyConcurrency"
  "KUBERNETES_API" "kubernetesAPI"
  "PULL_SECRETS" "pullSecrets.enabled"
  "PULL_SECRET_CACHE_SECONDS" "pullSecrets.cacheSeconds"
  "CLUSTER_INVENTORY_SECONDS" "clusterInventory.intervalSeconds"
  "COPY_LEASES" "copyLeases.enabled"
  "COPY_LEASE_SECONDS" "copyLeases.durationSeconds"
) -}}
{{- end }}
