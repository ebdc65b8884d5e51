{{/* The release's name for resources, at most 63 characters. */}}
{{- define "slo-probe.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "slo-probe.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "slo-probe.labels" -}}
{{ include "slo-probe.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "slo-probe.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The agent file of one site: the `agent` values with that site and the container port. */}}
{{- define "slo-probe.agentFile" -}}
{{- $agent := deepCopy .root.Values.agent -}}
{{- $_ := set $agent "site" .site.name -}}
{{- $_ := set $agent "listen" (printf "0.0.0.0:%d" (int .root.Values.port)) -}}
{{- toYaml $agent -}}
{{- end -}}

{{/*
The pod spec shared by every site's Deployment and the `helm test` Pod: args after the command,
the site, and the restart policy differ.
*/}}
{{- define "slo-probe.podSpec" -}}
{{- $root := .root -}}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
containers:
  - name: slo-probe
    image: {{ include "slo-probe.image" $root | quote }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    args:
      {{- toYaml .args | nindent 6 }}
      - --config
      - /etc/slo-probe/agent/slo-probe.yaml
      - --probes
      - /etc/slo-probe/probes
      - --log-format
      - {{ $root.Values.logFormat }}
      {{- with $root.Values.logLevel }}
      - --log-level
      - {{ . | quote }}
      {{- end }}
      {{- with $root.Values.extraArgs }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- with $root.Values.env }}
    env:
      {{- range . }}
      - name: {{ .name }}
        valueFrom:
          secretKeyRef:
            name: {{ .secretName }}
            key: {{ .key }}
      {{- end }}
    {{- end }}
    {{- if .serve }}
    ports:
      - name: http
        containerPort: {{ $root.Values.port }}
        protocol: TCP
    livenessProbe:
      httpGet: { path: /healthz, port: http }
      periodSeconds: 10
      failureThreshold: 3
    readinessProbe:
      httpGet: { path: /readyz, port: http }
      periodSeconds: 10
      failureThreshold: 3
    {{- end }}
    resources:
      {{- toYaml $root.Values.resources | nindent 6 }}
    securityContext:
      {{- toYaml $root.Values.securityContext | nindent 6 }}
    volumeMounts:
      - { name: agent, mountPath: /etc/slo-probe/agent, readOnly: true }
      - { name: probes, mountPath: /etc/slo-probe/probes, readOnly: true }
      - { name: tmp, mountPath: /tmp }
      {{- range $i, $m := $root.Values.secretMounts }}
      - { name: secret-{{ $i }}, mountPath: {{ $m.mountPath }}, readOnly: true }
      {{- end }}
volumes:
  - name: agent
    configMap:
      name: {{ include "slo-probe.fullname" $root }}-{{ .site.name }}
  - name: probes
    configMap:
      name: {{ include "slo-probe.fullname" $root }}-probes
  - name: tmp
    emptyDir: { sizeLimit: 16Mi }
  {{- range $i, $m := $root.Values.secretMounts }}
  - name: secret-{{ $i }}
    secret:
      secretName: {{ $m.secretName }}
  {{- end }}
{{- end -}}
