{{/* Names, labels and the derived facts every template shares. */}}

{{- define "everest.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "everest.fullname" -}}
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

{{- define "everest.labels" -}}
app.kubernetes.io/name: {{ include "everest.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "everest.extraLabels" . }}
{{- end -}}

{{/* The labels that are not selector labels. */}}
{{- define "everest.extraLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: everest
{{- end -}}

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "controller"). */}}
{{- define "everest.selectorLabels" -}}
app.kubernetes.io/name: {{ include "everest.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "everest.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "everest.sidecarImage" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* The enabled backend instances. */}}
{{- define "everest.enabledBackends" -}}
{{- $out := list -}}
{{- range .Values.backends -}}
{{- if .enabled -}}{{- $out = append $out . -}}{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* "true" when an enabled backend has this kind: (dict "ctx" $ "kind" "evs"). */}}
{{- define "everest.hasKind" -}}
{{- $found := false -}}
{{- range (include "everest.enabledBackends" .ctx | fromJsonArray) -}}
{{- if eq .kind $.kind -}}{{- $found = true -}}{{- end -}}
{{- end -}}
{{- if $found -}}true{{- end -}}
{{- end -}}

{{/* Whether volumes of this driver are attached by the controller: block kinds need it. */}}
{{- define "everest.attachRequired" -}}
{{- if kindIs "bool" .Values.csiDriver.attachRequired -}}
{{- .Values.csiDriver.attachRequired -}}
{{- else if include "everest.hasKind" (dict "ctx" . "kind" "evs") -}}
true
{{- else -}}
false
{{- end -}}
{{- end -}}

{{/*
fsGroupPolicy: block only → File (kubelet applies fsGroup, the disk is ours alone);
file/object only → None (shared data: recursive chown would rewrite other pods' files);
mixed → ReadWriteOnceWithFSType (chown only RWO volumes with an fstype, i.e. the disks).
*/}}
{{- define "everest.fsGroupPolicy" -}}
{{- if .Values.csiDriver.fsGroupPolicy -}}
{{- .Values.csiDriver.fsGroupPolicy -}}
{{- else -}}
{{- $block := include "everest.hasKind" (dict "ctx" . "kind" "evs") -}}
{{- $shared := or (include "everest.hasKind" (dict "ctx" . "kind" "sfs")) (include "everest.hasKind" (dict "ctx" . "kind" "obs")) -}}
{{- if and $block (not $shared) -}}File
{{- else if and $shared (not $block) -}}None
{{- else -}}ReadWriteOnceWithFSType
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Where the controller finds a backend's credentials file. */}}
{{- define "everest.credentialsPath" -}}
{{- printf "/etc/everest/credentials/%s/%s" .name (default "credentials.json" .credentials.key) -}}
{{- end -}}

{{/* The Secret holding a backend's credentials (existing or chart-made); empty when none. */}}
{{- define "everest.credentialsSecret" -}}
{{- $b := .backend -}}
{{- if and $b.credentials $b.credentials.existingSecret -}}
{{- $b.credentials.existingSecret -}}
{{- else if and $b.credentials $b.credentials.create -}}
{{- printf "%s-%s-credentials" (include "everest.fullname" .ctx) $b.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* A TOML value: strings JSON-quoted (a valid TOML basic string), numbers and booleans bare. */}}
{{- define "everest.tomlValue" -}}
{{- if kindIs "string" . -}}{{ toJson . }}
{{- else if kindIs "bool" . -}}{{ . }}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) -}}
{{- if eq (float64 .) (float64 (int64 .)) -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else -}}{{ fail (printf "backend settings must be strings, numbers or booleans, not %s" (kindOf .)) }}
{{- end -}}
{{- end -}}

{{/* Socket path inside the pods (an emptyDir in the controller, the plugin dir on nodes). */}}
{{- define "everest.socketDir" -}}/csi{{- end -}}
{{- define "everest.socketPath" -}}/csi/csi.sock{{- end -}}
{{/* The node socket as the kubelet sees it on the host. */}}
{{- define "everest.pluginDir" -}}
{{- printf "%s/plugins/%s" (trimSuffix "/" .Values.node.kubeletDir) .Values.driverName -}}
{{- end -}}

{{/* The security context of every unprivileged container. */}}
{{- define "everest.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}
