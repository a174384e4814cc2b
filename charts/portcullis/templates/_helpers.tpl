{{/* Names, labels and the image, shared by every template. */}}

{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "portcullis.fullname" -}}
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

{{- define "portcullis.controller.fullname" -}}
{{- printf "%s-controller" (include "portcullis.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The ConfigMap the leader checkpoints its quota ledger to (--quota-configmap): the
     Role grants get/update/patch on this name only. With a release named portcullis it
     is the binary's default, portcullis-quota-ledger. */}}
{{- define "portcullis.quotaConfigMapName" -}}
{{- default (printf "%s-quota-ledger" (include "portcullis.fullname" .)) .Values.controller.quota.configMapName }}
{{- end }}

{{- define "portcullis.proxy.fullname" -}}
{{- printf "%s-proxy" (include "portcullis.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "portcullis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portcullis
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: include with (dict "ctx" $ "component" "proxy"). */}}
{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "portcullis.componentLabels" -}}
{{ include "portcullis.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "portcullis.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "portcullis.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (include "portcullis.controller.fullname" .) .Values.controller.serviceAccount.name }}
{{- else }}
{{- required "controller.serviceAccount.name is required when controller.serviceAccount.create is false" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "portcullis.proxy.serviceAccountName" -}}
{{- if .Values.proxy.serviceAccount.create }}
{{- default (include "portcullis.proxy.fullname" .) .Values.proxy.serviceAccount.name }}
{{- else }}
{{- required "proxy.serviceAccount.name is required when proxy.serviceAccount.create is false" .Values.proxy.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The container security context every Portcullis container runs with. */}}
{{- define "portcullis.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "portcullis.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The controller Service's DNS name in the cluster: what its certificate names. */}}
{{- define "portcullis.controller.dnsName" -}}
{{ include "portcullis.controller.fullname" . }}.{{ .Release.Namespace }}.svc
{{- end }}

{{/* The Secret with the controller's serving certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "portcullis.controller.tlsSecretName" -}}
{{- .Values.controller.tls.secretName | default (printf "%s-tls" (include "portcullis.controller.fullname" .)) }}
{{- end }}

{{/* The Secret with the CA that verifies the controller (ca.crt) and, for mutual TLS, the
proxies' client certificate (tls.crt, tls.key). */}}
{{- define "portcullis.proxy.tlsSecretName" -}}
{{- if .Values.controller.tls.secretName }}
{{- required "controller.tls.proxySecretName: with controller.tls.secretName, name the Secret holding ca.crt (and, with mutual, the proxies' tls.crt and tls.key)" .Values.controller.tls.proxySecretName }}
{{- else }}
{{- printf "%s-controller-tls" (include "portcullis.proxy.fullname" .) }}
{{- end }}
{{- end }}
