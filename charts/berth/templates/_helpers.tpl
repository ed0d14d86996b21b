{{/* Name of the chart, or nameOverride. */}}
{{- define "berth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the objects: RELEASE-berth, or RELEASE when it already contains the name. */}}
{{- define "berth.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "berth.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the operator pods (stable across upgrades). */}}
{{- define "berth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "berth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels of every object of the chart. */}}
{{- define "berth.labels" -}}
helm.sh/chart: {{ include "berth.chart" . }}
{{ include "berth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: berth
{{- end -}}

{{- define "berth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "berth.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "berth.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "berth.peeringName" -}}
{{- default (include "berth.fullname" .) .Values.peering.name -}}
{{- end -}}

{{/* Namespace of the Gateway that Endpoint routes attach to. */}}
{{- define "berth.gatewayNamespace" -}}
{{- default .Release.Namespace .Values.settings.routing.gateway.namespace -}}
{{- end -}}

{{/*
The operator settings file (berth_operator.settings.Settings). Empty image names take the
chart's appVersion, the Gateway namespace defaults to the release namespace, and the watched
namespaces come from watchNamespaces, so nothing is set in two places.
*/}}
{{- define "berth.settings" -}}
{{- $settings := deepCopy .Values.settings -}}
{{- $images := $settings.images -}}
{{- $_ := set $images "cpu" (default (printf "ghcr.io/berth-dev/berth-serving:%s" .Chart.AppVersion) $images.cpu) -}}
{{- $_ := set $images "gpu" (default (printf "ghcr.io/berth-dev/berth-serving-gpu:%s" .Chart.AppVersion) $images.gpu) -}}
{{- $_ := set $settings.routing.gateway "namespace" (include "berth.gatewayNamespace" .) -}}
{{- $_ := set $settings "namespaces" .Values.watchNamespaces -}}
{{- $_ := set $settings.networkPolicy "operatorNamespace" (default .Release.Namespace $settings.networkPolicy.operatorNamespace) -}}
{{- $_ := set $settings.auth "reviewerClusterRole" (default (printf "%s-invoke-reviewer" (include "berth.fullname" .)) $settings.auth.reviewerClusterRole) -}}
{{- $types := dict -}}
{{- range $name, $type := $settings.instanceTypes -}}
{{- if $type -}}
{{- $_ := set $types $name $type -}}
{{- end -}}
{{- end -}}
{{- $_ := set $settings "instanceTypes" $types -}}
{{- $redis := include "berth.asyncRedis" . | fromYaml -}}
{{- if $redis -}}
{{- $_ := set $settings "async" (dict "redis" $redis) -}}
{{- end -}}
{{- toYaml $settings -}}
{{- end -}}

{{/*
The operator settings' async.redis from the chart's async.redis values: the quick-start Valkey,
a URL or a Secret (at most one); nothing when none is given.
*/}}
{{- define "berth.asyncRedis" -}}
{{- $redis := .Values.async.redis -}}
{{- $given := 0 -}}
{{- if $redis.url }}{{ $given = add1 $given }}{{ end -}}
{{- if $redis.secretRef }}{{ $given = add1 $given }}{{ end -}}
{{- if $redis.deploy.enabled }}{{ $given = add1 $given }}{{ end -}}
{{- if gt $given 1 -}}
{{- fail "async.redis: give one of url, secretRef and deploy.enabled" -}}
{{- end -}}
{{- if $redis.deploy.enabled -}}
url: {{ printf "redis://%s.%s.svc:6379" (include "berth.redisName" .) .Release.Namespace }}
{{- else if $redis.url -}}
url: {{ $redis.url | quote }}
{{- else if $redis.secretRef -}}
secretRef:
  {{- toYaml $redis.secretRef | nindent 2 }}
{{- end -}}
{{- end -}}

{{- define "berth.redisName" -}}
{{- printf "%s-redis" (include "berth.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* True when the operator runs without peering (one replica, peering disabled). */}}
{{- define "berth.standalone" -}}
{{- if and (not .Values.peering.enabled) (eq (int .Values.replicas) 1) -}}true{{- end -}}
{{- end -}}
