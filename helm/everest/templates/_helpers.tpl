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

{{/* No public image exists: an install without image.repository fails here, naming the value. */}}
{{- define "everest.image" -}}
{{- $repo := required "image.repository is not set: build the Everest image (docs/install.md, \"Build the image\"), push it to a registry your nodes can pull from, and set image.repository (and image.tag or image.digest)" .Values.image.repository -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
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

{{/* The mounter supervisor's socket, in the host dir everest-node and everest-mounter share. */}}
{{- define "everest.mounterSocket" -}}/run/everest/mounter/mounter.sock{{- end -}}

{{/* The host dir at /run/everest in everest-node and everest-mounter, when supervised. */}}
{{- define "everest.hostRunDir" -}}
{{- .Values.node.mounterSupervisor.hostRunDir | default (printf "/run/%s" (include "everest.fullname" .)) -}}
{{- end -}}

{{/* The host dir of everest-mounter's state. */}}
{{- define "everest.hostStateDir" -}}
{{- .Values.node.mounterSupervisor.hostStateDir | default (printf "/var/lib/%s-mounter" (include "everest.fullname" .)) -}}
{{- end -}}

{{/* "true" when the mounter supervisor container is rendered: enabled, and an obs backend is. */}}
{{- define "everest.mounterSupervised" -}}
{{- if and .Values.node.mounterSupervisor.enabled (include "everest.hasKind" (dict "ctx" . "kind" "obs")) -}}true{{- end -}}
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

{{/* Fails when two ports of one pod are equal (the schema cannot compare values):
(dict "pod" "controller" "ports" (dict "controller.metricsPort" 9808 …)). */}}
{{- define "everest.uniquePorts" -}}
{{- $seen := dict -}}
{{- range $name, $port := .ports -}}
{{- $k := toString $port -}}
{{- if hasKey $seen $k -}}
{{- fail (printf "%s and %s are both %s: every port of the %s pod must differ" (get $seen $k) $name $k $.pod) -}}
{{- end -}}
{{- $_ := set $seen $k $name -}}
{{- end -}}
{{- end -}}

{{/* The CA bundle volume, when caBundle names a ConfigMap or a Secret. */}}
{{- define "everest.caBundleVolume" -}}
{{- $ca := .Values.caBundle -}}
{{- if and $ca.configMap $ca.secret -}}
{{- fail "caBundle: set configMap or secret, not both" -}}
{{- end -}}
{{- if $ca.configMap }}
- name: ca-bundle
  configMap:
    name: {{ $ca.configMap }}
    items: [{key: {{ $ca.key }}, path: {{ $ca.key }}}]
{{- else if $ca.secret }}
- name: ca-bundle
  secret:
    secretName: {{ $ca.secret }}
    items: [{key: {{ $ca.key }}, path: {{ $ca.key }}}]
{{- end -}}
{{- end -}}

{{/* Its mount and environment in a daemon container: SSL_CERT_DIR lists the system roots
and the bundle, so the bundle adds to the roots instead of replacing them. */}}
{{- define "everest.caBundleMount" -}}
{{- if or .Values.caBundle.configMap .Values.caBundle.secret }}
- name: ca-bundle
  mountPath: /etc/everest/ca
  readOnly: true
{{- end -}}
{{- end -}}
{{- define "everest.caBundleEnv" -}}
{{- if or .Values.caBundle.configMap .Values.caBundle.secret }}
- name: SSL_CERT_DIR
  value: /etc/ssl/certs:/etc/everest/ca
{{- end -}}
{{- end -}}

{{/* Leader election flags of a controller sidecar. */}}
{{- define "everest.leaderElectionArgs" -}}
{{- $le := .Values.controller.leaderElection -}}
{{- $on := and $le.enabled (gt (int .Values.controller.replicas) 1) -}}
- --leader-election={{ $on }}
{{- if $on }}
- --leader-election-namespace=$(NAMESPACE)
- --leader-election-lease-duration={{ $le.leaseDuration }}
- --leader-election-renew-deadline={{ $le.renewDeadline }}
- --leader-election-retry-period={{ $le.retryPeriod }}
{{- end -}}
{{- end -}}

{{/*
One controller sidecar (provisioner, attacher, resizer, snapshotter): the flags they share,
then `args` (its own), then its extraArgs. Call with
(dict "ctx" $ "name" "csi-provisioner" "v" $.Values.sidecars.provisioner "args" (list …)).
*/}}
{{- define "everest.controllerSidecar" -}}
{{- $ctx := .ctx -}}
{{- $sc := $ctx.Values.sidecars -}}
{{- $v := .v -}}
- name: {{ .name }}
  image: {{ include "everest.sidecarImage" $v.image }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args:
    - --csi-address={{ include "everest.socketPath" $ctx }}
    - --v={{ $sc.logLevel }}
    - --timeout={{ $v.timeout }}
    {{- range .args }}
    - {{ . }}
    {{- end }}
    {{- include "everest.leaderElectionArgs" $ctx | nindent 4 }}
    - --kube-api-qps={{ $sc.kubeApi.qps }}
    - --kube-api-burst={{ $sc.kubeApi.burst }}
    {{- if $sc.metrics.enabled }}
    - --http-endpoint=:{{ $v.httpPort }}
    {{- end }}
    {{- range $v.extraArgs }}
    - {{ . }}
    {{- end }}
  env:
    - name: NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if $sc.metrics.enabled }}
  ports:
    - name: {{ .name }}
      containerPort: {{ $v.httpPort }}
      protocol: TCP
  {{- end }}
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    {{- include "everest.restrictedContainer" $ctx | nindent 4 }}
  volumeMounts:
    - name: socket-dir
      mountPath: {{ include "everest.socketDir" $ctx }}
    {{- with $v.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* The controller sidecars that run with these values (container names), as a JSON list. */}}
{{- define "everest.controllerSidecarNames" -}}
{{- $out := list "csi-provisioner" -}}
{{- if eq (include "everest.attachRequired" .) "true" -}}{{- $out = append $out "csi-attacher" -}}{{- end -}}
{{- $out = append $out "csi-resizer" -}}
{{- if .Values.snapshots.enabled -}}{{- $out = append $out "csi-snapshotter" -}}{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* prometheus-operator relabelings shared by the ServiceMonitor and the PodMonitor: the
labels the alerts and the dashboard select on (release, component, container, node). */}}
{{- define "everest.monitorRelabelings" -}}
- targetLabel: everest_release
  replacement: {{ .Release.Name }}
- sourceLabels: [__meta_kubernetes_pod_label_app_kubernetes_io_component]
  targetLabel: everest_component
- sourceLabels: [__meta_kubernetes_pod_container_name]
  targetLabel: container
- sourceLabels: [__meta_kubernetes_pod_node_name]
  targetLabel: node
{{- end -}}
