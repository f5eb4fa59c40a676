{{- define "loupe.name" -}}{{ .Chart.Name }}{{- end -}}

{{- define "loupe.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "loupe.labels" -}}
app.kubernetes.io/name: {{ include "loupe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one stage: (dict "root" $ "stage" "encoder") */}}
{{- define "loupe.selector" -}}
app.kubernetes.io/name: {{ include "loupe.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .stage }}
{{- end -}}

{{- define "loupe.stageName" -}}{{ include "loupe.fullname" .root }}-{{ .stage }}{{- end -}}

{{- define "loupe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "loupe.fullname" .) .Values.serviceAccount.name }}{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{- define "loupe.apiKeySecret" -}}
{{- default (printf "%s-api-keys" (include "loupe.fullname" .)) .Values.apiKeys.existingSecret -}}
{{- end -}}

{{/* Fails with a readable message when values contradict each other. */}}
{{- define "loupe.validateValues" -}}
{{- $stages := list "gateway" "preprocessor" "encoder" "decoder" -}}
{{- if hasPrefix "hf://" .Values.model.source -}}
{{- if not (regexMatch "^hf://[A-Za-z0-9_][A-Za-z0-9_.-]*/[A-Za-z0-9_][A-Za-z0-9_.-]*@[A-Za-z0-9_][A-Za-z0-9_.+/-]*$" .Values.model.source) -}}
{{- fail (printf "model.source %q must be hf://ORG/NAME@REVISION with the revision pinned (a commit, tag or branch): pods that fetch at different times must get the same files" .Values.model.source) -}}
{{- end -}}
{{- $convert := .Values.model.fetch.convert -}}
{{- if and $convert.enabled (not $convert.bits) (not $convert.dtype) -}}
{{- fail "model.fetch.convert.enabled needs bits (4 or 8) or dtype (float32 or float16)" -}}
{{- end -}}
{{- if not (has .Values.model.fetch.mode (list "pod" "job")) -}}
{{- fail (printf "model.fetch.mode must be pod or job, got %q" .Values.model.fetch.mode) -}}
{{- end -}}
{{- else if not (has .Values.model.source (list "pvc" "hostPath" "tiny")) -}}
{{- fail (printf "model.source must be pvc, hostPath, tiny or hf://ORG/NAME@REVISION, got %q" .Values.model.source) -}}
{{- end -}}
{{- if and .Values.gateway.enabled (not .Values.apiKeys.keys) (not .Values.apiKeys.existingSecret) (not .Values.apiKeys.generate) -}}
{{- fail "the gateway listens on 0.0.0.0 and exits at start without API keys: set apiKeys.keys, apiKeys.existingSecret, or apiKeys.generate=true" -}}
{{- end -}}
{{- if lt (int (include "loupe.shutdownGraceSeconds" .)) 5 -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds (%v) + 10 s by at least 5 s, which are left to drain in-flight work" .Values.terminationGracePeriodSeconds .Values.preStopSleepSeconds) -}}
{{- end -}}
{{- if and .Values.gateway.enabled (not (or .Values.preprocessor.enabled .Values.encoder.enabled .Values.decoder.enabled)) -}}
{{- fail "gateway.enabled needs the preprocessor, encoder and decoder enabled (it calls all three)" -}}
{{- end -}}
{{- if and .Values.gateway.enabled (not (and .Values.preprocessor.enabled .Values.encoder.enabled .Values.decoder.enabled)) -}}
{{- fail "gateway.enabled needs preprocessor.enabled, encoder.enabled and decoder.enabled" -}}
{{- end -}}
{{- range $stage := $stages -}}
{{- $v := index $.Values $stage -}}
{{- if and $v.autoscaling.enabled (lt (int $v.autoscaling.maxReplicas) (int $v.autoscaling.minReplicas)) -}}
{{- fail (printf "%s.autoscaling.maxReplicas (%v) must be >= minReplicas (%v)" $stage $v.autoscaling.maxReplicas $v.autoscaling.minReplicas) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.grpc.tls.enabled (not .Values.grpc.tls.secretName) -}}
{{- fail "grpc.tls.enabled needs grpc.tls.secretName: a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt (e.g. from cert-manager)" -}}
{{- end -}}
{{- if .Values.grpc.tls.enabled -}}
{{- range $stage := list "preprocessor" "encoder" "decoder" -}}
{{- $v := index $.Values $stage -}}
{{- if has (int $.Values.grpc.tls.healthPort) (list (int $v.port) (int $v.metricsPort)) -}}
{{- fail (printf "grpc.tls.healthPort (%v) must differ from %s.port and %s.metricsPort" $.Values.grpc.tls.healthPort $stage $stage) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not (has .Values.autoscalingProvider (list "keda" "hpa")) -}}
{{- fail (printf "autoscalingProvider must be keda or hpa, got %q" .Values.autoscalingProvider) -}}
{{- end -}}
{{- end -}}

{{/* Where the internal gRPC TLS Secret is mounted. */}}
{{- define "loupe.grpcTlsDir" -}}/etc/loupe/grpc-tls{{- end -}}

{{/* The name the gateway checks the stages' certificate against (grpc.tls.serverName). */}}
{{- define "loupe.grpcTlsServerName" -}}
{{- default (printf "%s.%s.svc" (include "loupe.stageName" (dict "root" . "stage" "preprocessor")) .Release.Namespace) .Values.grpc.tls.serverName -}}
{{- end -}}

{{/* Seconds a stage drains in-flight work after SIGTERM (LOUPE_SHUTDOWN_GRACE_MS / 1000). */}}
{{- define "loupe.shutdownGraceSeconds" -}}
{{- sub (sub (int .Values.terminationGracePeriodSeconds) (int .Values.preStopSleepSeconds)) 10 -}}
{{- end -}}

{{/* Whether the model comes from the Hub (model.source hf://...). */}}
{{- define "loupe.hf" -}}{{ if hasPrefix "hf://" .Values.model.source }}true{{ end }}{{- end -}}

{{/*
The fetched checkpoint's folder on the model volume: named after the source and the convert
settings, so a changed revision or quantization is fetched anew next to the old one instead of
mixing with it.
*/}}
{{- define "loupe.fetchDir" -}}
{{- $c := .Values.model.fetch.convert -}}
{{- $key := printf "%s|%v|%v|%v|%v" .Values.model.source $c.enabled $c.bits $c.groupSize $c.dtype -}}
{{- printf "%s/hf-%s" .Values.model.mountPath (sha256sum $key | trunc 12) -}}
{{- end -}}

{{/* The checkpoint directory inside the pods. */}}
{{- define "loupe.modelDir" -}}
{{- if eq .Values.model.source "tiny" -}}{{ .Values.model.mountPath }}/tiny
{{- else if include "loupe.hf" . -}}{{ include "loupe.fetchDir" . }}/model
{{- else -}}{{ .Values.model.mountPath }}{{- end -}}
{{- end -}}

{{/* The claim an hf:// source is fetched into with model.fetch.mode=job. */}}
{{- define "loupe.fetchClaim" -}}
{{- default (printf "%s-model" (include "loupe.fullname" .)) .Values.model.fetch.pvc.existingClaim -}}
{{- end -}}

{{/*
The shell script that fetches an hf:// source into loupe.fetchDir: `loupe download` (resumable:
a retry continues from the partial files), then `loupe convert` when asked; the `complete`
marker is written last, so a fetch cut short is never taken for a checkpoint. Run by an init
container (mode=pod) or the Job (mode=job); a second run over a complete folder does nothing.
*/}}
{{- define "loupe.fetchScript" -}}
{{- $dir := include "loupe.fetchDir" . -}}
{{- $c := .Values.model.fetch.convert -}}
{{- $spec := trimPrefix "hf://" .Values.model.source -}}
set -eu
dir={{ $dir | squote }}
if [ ! -f "$dir/complete" ]; then
  echo "loupe: fetching {{ $spec }} into $dir"
  mkdir -p "$dir"
  {{- if $c.enabled }}
  node bin/loupe.js download {{ $spec | squote }} --out "$dir/download"
  rm -rf "$dir"/.model.partial-*
  node bin/loupe.js convert --model "$dir/download" --out "$dir/model" --force
  {{- with $c.bits }} --bits {{ . }} --group-size {{ $c.groupSize }}{{ end }}
  {{- with $c.dtype }} --dtype {{ . }}{{ end }}
  {{- else }}
  node bin/loupe.js download {{ $spec | squote }} --out "$dir/model"
  {{- end }}
  echo {{ .Values.model.source | squote }} > "$dir/complete"
fi
{{- if $c.enabled }}
rm -rf "$dir/download"
{{- end }}
echo "loupe: {{ $spec }} is complete in $dir/model"
{{- end -}}

{{/* The init container's script that waits for the Job to complete the fetch (mode=job). */}}
{{- define "loupe.waitScript" -}}
dir={{ include "loupe.fetchDir" . | squote }}
until [ -f "$dir/complete" ]; do echo "loupe: waiting for the model fetch Job to fill $dir"; sleep 10; done
{{- end -}}

{{/*
Egress rules every pod of the chart needs: DNS, and the OTLP collector's port when otel.endpoint
is set.
*/}}
{{- define "loupe.baseEgress" -}}
- ports:
    - { protocol: UDP, port: 53 }
    - { protocol: TCP, port: 53 }
  {{- with .Values.networkPolicy.egress.dns.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- with .Values.otel.endpoint }}
{{- $url := urlParse . }}
{{- $hostPort := splitList ":" $url.host }}
{{- $port := ternary (last $hostPort) (ternary "443" "80" (eq $url.scheme "https")) (gt (len $hostPort) 1) }}
- ports:
    - { protocol: TCP, port: {{ $port }} }
  {{- with $.Values.networkPolicy.egress.otlp.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- range .Values.networkPolicy.egress.extra }}
- {{ toYaml . | nindent 2 | trim }}
{{- end }}
{{- end -}}

{{/* Egress to the Hub for a fetch: model.fetch.egress. */}}
{{- define "loupe.fetchEgress" -}}
- to:
    {{- range .Values.model.fetch.egress.cidrs }}
    - ipBlock: { cidr: {{ . | quote }} }
    {{- end }}
  ports:
    {{- range .Values.model.fetch.egress.ports }}
    - { protocol: TCP, port: {{ . }} }
    {{- end }}
{{- end -}}

{{/* The fetch's environment: HOME on the writable /tmp, the Hub mirror and token if set. */}}
{{- define "loupe.fetchEnv" -}}
- { name: HOME, value: /tmp }
{{- with .Values.model.fetch.endpoint }}
- { name: HF_ENDPOINT, value: {{ . | quote }} }
{{- end }}
{{- with .Values.model.fetch.tokenSecret.name }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef: { name: {{ . }}, key: {{ $.Values.model.fetch.tokenSecret.key }} }
{{- end }}
{{- end -}}

{{/*
The gateway's API keys, comma-separated, for the Secret the chart makes: apiKeys.keys, or one
generated key (apiKeys.generate). A generated key is read back from the release's Secret with
`lookup`, so an upgrade keeps it; it is made once per render and shared by every template that
asks (the Secret and the gateway's checksum annotation).
*/}}
{{- define "loupe.apiKeys" -}}
{{- if .Values.apiKeys.keys -}}
{{- join "," .Values.apiKeys.keys -}}
{{- else -}}
{{- if not (hasKey .Values.apiKeys "_generatedKey") -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "loupe.apiKeySecret" .) | default dict -}}
{{- $old := dig "data" .Values.apiKeys.secretKey "" $existing | b64dec -}}
{{- $wasGenerated := eq (dig "metadata" "annotations" "loupe.dev/api-key" "" $existing) "generated" -}}
{{- $key := ternary $old (printf "sk-loupe-%s" (randAlphaNum 40)) (and $wasGenerated (ne $old "")) -}}
{{- $_ := set .Values.apiKeys "_generatedKey" $key -}}
{{- end -}}
{{- .Values.apiKeys._generatedKey -}}
{{- end -}}
{{- end -}}

{{/*
The label matchers that select one stage's series in Prometheus: (dict "root" $ "stage" "encoder").
The ServiceMonitors' targets carry `namespace` and `service` = the Kubernetes Service's name (the
application's own `service` label is renamed `exported_service`): docs/operations.md, "Metrics
and their labels".
*/}}
{{- define "loupe.promSelector" -}}
namespace="{{ .root.Release.Namespace }}", service="{{ include "loupe.stageName" . }}"
{{- end -}}
