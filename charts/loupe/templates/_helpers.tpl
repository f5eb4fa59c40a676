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
{{- if not (has .Values.model.source (list "pvc" "hostPath" "tiny")) -}}
{{- fail (printf "model.source must be pvc, hostPath or tiny, got %q" .Values.model.source) -}}
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

{{/* The checkpoint directory inside the pods. */}}
{{- define "loupe.modelDir" -}}
{{- if eq .Values.model.source "tiny" -}}{{ .Values.model.mountPath }}/tiny{{- else -}}{{ .Values.model.mountPath }}{{- end -}}
{{- end -}}
