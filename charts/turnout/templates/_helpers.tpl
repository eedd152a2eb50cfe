{{/*
Names are DNS labels: truncated to 63 characters, no trailing dash (as cert-manager's chart does).
*/}}
{{- define "turnout.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's full name. A release name that already contains the chart name is used as it is.
*/}}
{{- define "turnout.fullname" -}}
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

{{/* "<fullname>-<suffix>", still at most 63 characters. */}}
{{- define "turnout.suffixed" -}}
{{- $suffix := index . 1 -}}
{{- $base := include "turnout.fullname" (index . 0) | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" -}}
{{- printf "%s-%s" $base $suffix -}}
{{- end -}}

{{- define "turnout.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "turnout.selectorLabels" -}}
app.kubernetes.io/name: {{ include "turnout.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels of every object except the CRD (see turnout.crdLabels). */}}
{{- define "turnout.labels" -}}
{{ include "turnout.selectorLabels" . }}
{{ include "turnout.commonLabels" . }}
{{- end -}}

{{/* Labels that do not identify the component: the CRD carries its own name/part-of labels. */}}
{{- define "turnout.commonLabels" -}}
helm.sh/chart: {{ include "turnout.chart" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "turnout.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "turnout.fullname" .) .Values.serviceAccount.name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "turnout.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Where the operator config is mounted. */}}
{{- define "turnout.configPath" -}}/etc/turnout/config.yaml{{- end -}}

{{/* The gateway's labels: its own component, so the operator's selector never matches its pods. */}}
{{- define "turnout.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ include "turnout.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "turnout.gatewayLabels" -}}
{{ include "turnout.gatewaySelectorLabels" . }}
{{ include "turnout.commonLabels" . }}
{{- end -}}
