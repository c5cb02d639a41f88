{{- define "rolebridge.name" -}}{{ .Release.Name }}-rolebridge{{- end -}}
{{- define "rolebridge.labels" -}}
app.kubernetes.io/name: rolebridge
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
The mapping files, as JSON {"catalogs/x.yaml": text, "tenants/y.yaml": text}:
the chart's shipped catalogs (files/catalogs/, unless
mappings.shippedCatalogs is false), then values.mappings.catalogs and
values.mappings.tenants over them. `serve` reads only NAME.yaml files in
catalogs/ and tenants/, so any other name is an error here rather than a file
silently ignored in the pod.
*/}}
{{- define "rolebridge.mappingFiles" -}}
{{- $files := dict -}}
{{- if .Values.mappings.shippedCatalogs -}}
{{- range $path, $_ := .Files.Glob "files/catalogs/*.yaml" -}}
{{- $_ := set $files (printf "catalogs/%s" (base $path)) ($.Files.Get $path) -}}
{{- end -}}
{{- end -}}
{{- range $dir := list "catalogs" "tenants" -}}
{{- range $name, $text := index $.Values.mappings $dir -}}
{{- if not (regexMatch "^[A-Za-z0-9][-_.A-Za-z0-9]*\\.yaml$" $name) -}}
{{- fail (printf "mappings.%s: file name %q must be NAME.yaml (letters, digits, '-', '_', '.')" $dir $name) -}}
{{- end -}}
{{- if not (kindIs "string" $text) -}}
{{- fail (printf "mappings.%s.%s must be the file's YAML text (a string, e.g. with `|`), not a %s" $dir $name (kindOf $text)) -}}
{{- end -}}
{{- $_ := set $files (printf "%s/%s" $dir $name) $text -}}
{{- end -}}
{{- end -}}
{{- toJson $files -}}
{{- end -}}

{{/* ConfigMap keys cannot hold '/': catalogs/x.yaml is stored as catalogs__x.yaml. */}}
{{- define "rolebridge.mappingKey" -}}{{ replace "/" "__" . }}{{- end -}}

{{/* "sleep", "exec" or "" (no preStop hook). */}}
{{- define "rolebridge.preStopAction" -}}
{{- $s := .Values.shutdown -}}
{{- if gt (int $s.preStopSleepSeconds) 0 -}}
{{- if eq $s.preStopAction "auto" -}}
{{- if semverCompare ">=1.30-0" .Capabilities.KubeVersion.Version -}}sleep{{- else -}}exec{{- end -}}
{{- else if has $s.preStopAction (list "sleep" "exec") -}}
{{- $s.preStopAction -}}
{{- else -}}
{{- fail (printf "shutdown.preStopAction must be auto, sleep or exec, not %q" $s.preStopAction) -}}
{{- end -}}
{{- end -}}
{{- end -}}
