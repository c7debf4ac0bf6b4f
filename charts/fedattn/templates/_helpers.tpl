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

{{/* Image reference of one component: "<registry>/<repository>:<tag>", or "...@<digest>" when
image.digests names one (a digest pins exactly what runs; the tag is then only a label). Pass a dict with
"ctx" and "component". */}}
{{- define "fedattn.image" -}}
{{- $img := .ctx.Values.image }}
{{- $repo := get $img.repositories .component }}
{{- if $img.registry }}
{{- $repo = printf "%s/%s" (trimSuffix "/" $img.registry) $repo }}
{{- end }}
{{- $digest := get ($img.digests | default dict) .component }}
{{- if $digest }}
{{- printf "%s@%s" $repo $digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .ctx.Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/* imagePullSecrets of a pod spec (every pod of the chart and, through the operator, of every session),
"" when there are none. Indent with nindent. */}}
{{- define "fedattn.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
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
{{- default (printf "%s-postgresql" (include "fedattn.fullname" .)) .Values.postgresql.existingSecret }}
{{- else }}
{{- .Values.externalDatabase.secretName }}
{{- end }}
{{- end }}

{{- define "fedattn.databaseSecretKey" -}}
{{- if .Values.postgresql.enabled }}dsn{{ else }}{{ .Values.externalDatabase.secretKey }}{{ end }}
{{- end }}

{{/* Names of the imagePullSecrets, comma-separated (the operator's FEDATTN_IMAGE_PULL_SECRETS). */}}
{{- define "fedattn.pullSecretNames" -}}
{{- $names := list }}
{{- range .Values.imagePullSecrets }}
{{- $names = append $names .name }}
{{- end }}
{{- join "," $names }}
{{- end }}
