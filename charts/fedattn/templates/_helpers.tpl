{{/* Chart name, overridable. */}}
{{- define "fedattn.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every resource name: "<release>-fedattn", or the release name if it has "fedattn". */}}
{{- define "fedattn.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels on every resource (app.kubernetes.io/* recommended labels). Pass a dict with "ctx" and
"component". */}}
{{- define "fedattn.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{ include "fedattn.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: fedattn
{{- end }}

{{/* Labels that select one component's pods; stable across upgrades. */}}
{{- define "fedattn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fedattn.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "fedattn.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fedattn.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference of one component. Pass a dict with "ctx" and "component". */}}
{{- define "fedattn.image" -}}
{{- $img := .ctx.Values.image }}
{{- $repo := get $img.repositories .component }}
{{- $tag := default .ctx.Chart.AppVersion $img.tag }}
{{- if $img.registry }}
{{- printf "%s/%s:%s" (trimSuffix "/" $img.registry) $repo $tag }}
{{- else }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}
{{- end }}

{{/* Namespaces the operator watches when not cluster-wide (default: the release namespace). */}}
{{- define "fedattn.watchNamespaces" -}}
{{- if .Values.watch.namespaces }}
{{- join "," .Values.watch.namespaces }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/* Name and key of the Secret holding the default PostgreSQL DSN, "" when there is none. */}}
{{- define "fedattn.databaseSecretName" -}}
{{- if .Values.postgresql.enabled }}
{{- printf "%s-postgresql" (include "fedattn.fullname" .) }}
{{- else }}
{{- .Values.externalDatabase.secretName }}
{{- end }}
{{- end }}

{{- define "fedattn.databaseSecretKey" -}}
{{- if .Values.postgresql.enabled }}dsn{{ else }}{{ .Values.externalDatabase.secretKey }}{{ end }}
{{- end }}
