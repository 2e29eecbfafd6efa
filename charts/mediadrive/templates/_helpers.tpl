{{- define "mediadrive.labels" -}}
app.kubernetes.io/name: mediadrive
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "mediadrive.operatorName" -}}
{{ printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "mediadrive.image" -}}
{{ printf "%s:%s" .repository .tag }}
{{- end -}}
