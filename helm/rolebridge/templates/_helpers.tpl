{{- define "rolebridge.name" -}}{{ .Release.Name }}-rolebridge{{- end -}}
{{- define "rolebridge.labels" -}}
app.kubernetes.io/name: rolebridge
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
