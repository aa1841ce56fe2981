{{/* Names, labels, images, and the routemesh configuration files. */}}

{{- define "routemesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "routemesh.fullname" -}}
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

{{- define "routemesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "routemesh.labels" -}}
helm.sh/chart: {{ include "routemesh.chart" . }}
app.kubernetes.io/name: {{ include "routemesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: routemesh
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The release's pods (NetworkPolicy peers, selectors). */}}
{{- define "routemesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "routemesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of one component: call with (dict "root" $ "component" "gateway"). */}}
{{- define "routemesh.componentSelectorLabels" -}}
{{ include "routemesh.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* An image reference from {repository, tag, digest}: call with (dict "image" .x "root" $). */}}
{{- define "routemesh.image" -}}
{{- if .image.digest -}}
{{ .image.repository }}@{{ .image.digest }}
{{- else -}}
{{ .image.repository }}:{{ .image.tag | default .root.Chart.AppVersion }}
{{- end -}}
{{- end }}

{{- define "routemesh.gatewayName" -}}
{{ include "routemesh.fullname" . | trunc 55 | trimSuffix "-" }}-gateway
{{- end }}

{{- define "routemesh.redisName" -}}
{{ include "routemesh.fullname" . | trunc 57 | trimSuffix "-" }}-redis
{{- end }}

{{/* Object name of a worker pool: call with (dict "root" $ "pool" $pool). */}}
{{- define "routemesh.poolName" -}}
{{- printf "%s-worker-%s" (include "routemesh.fullname" .root | trunc 24 | trimSuffix "-") .pool.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The Redis URL written into configuration files. With a Secret, a placeholder
that the render-config init container replaces at pod start (so the password
never sits in a ConfigMap).
*/}}
{{- define "routemesh.redisUrl" -}}
{{- $r := .Values.redis -}}
{{- $external := or $r.external.url $r.external.existingSecret.name -}}
{{- if and $external $r.trial.enabled -}}
{{- fail "redis: choose one registry: set redis.trial.enabled=false when redis.external is set" -}}
{{- end -}}
{{- if $r.external.existingSecret.name -}}
@@REDIS_URL@@
{{- else if $r.external.url -}}
{{- if not (or (hasPrefix "redis://" $r.external.url) (hasPrefix "rediss://" $r.external.url)) -}}
{{- fail (printf "redis.external.url: %q is not a redis:// or rediss:// URL" $r.external.url) -}}
{{- end -}}
{{ $r.external.url }}
{{- else if $r.trial.enabled -}}
redis://{{ include "routemesh.redisName" . }}:{{ $r.trial.port }}/0
{{- else -}}
{{- fail "redis: no registry: set redis.external.url, redis.external.existingSecret.name, or redis.trial.enabled=true" -}}
{{- end -}}
{{- end }}

{{/*
The `registry.redis` section of a routemesh configuration: the URL, the mesh,
and with redis.external.tls the paths where its Secret is mounted.
*/}}
{{- define "routemesh.registryRedis" -}}
{{- $r := .Values.redis -}}
{{- $redis := dict "mesh" .Values.mesh -}}
{{- if $r.external.urls -}}
{{- if or $r.external.url $r.external.existingSecret.name $r.trial.enabled -}}
{{- fail "redis.external.urls: give the seeds either in urls or as one URL (url or existingSecret), not both, and set redis.trial.enabled=false" -}}
{{- end -}}
{{- if not $r.external.cluster -}}
{{- fail "redis.external.urls: several seed nodes need redis.external.cluster=true" -}}
{{- end -}}
{{- $_ := set $redis "urls" $r.external.urls -}}
{{- else -}}
{{- $_ := set $redis "url" (include "routemesh.redisUrl" .) -}}
{{- end -}}
{{- if $r.external.cluster -}}
{{- if $r.trial.enabled -}}
{{- fail "redis.external.cluster: the trial Redis is a single node; set redis.trial.enabled=false" -}}
{{- end -}}
{{- $_ := set $redis "cluster" true -}}
{{- end -}}
{{- $tls := .Values.redis.external.tls -}}
{{- if $tls.existingSecret -}}
{{- if .Values.redis.trial.enabled -}}
{{- fail "redis.external.tls.existingSecret: the trial Redis speaks no TLS; set redis.external.url (rediss://...) or existingSecret" -}}
{{- end -}}
{{- with .Values.redis.external.url -}}
{{- if not (hasPrefix "rediss://" .) -}}
{{- fail (printf "redis.external.tls.existingSecret needs a rediss:// URL, not %q" .) -}}
{{- end -}}
{{- end -}}
{{- if ne (empty $tls.cert) (empty $tls.key) -}}
{{- fail "redis.external.tls: a client certificate needs both cert and key (the Secret's keys)" -}}
{{- end -}}
{{- $files := dict -}}
{{- range $field := list "ca" "cert" "key" -}}
{{- with get $tls $field -}}
{{- $_ := set $files $field (printf "/etc/routemesh/redis-tls/%s" .) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $redis "tls" $files -}}
{{- end -}}
{{- toYaml $redis -}}
{{- end }}

{{/* The Redis TLS Secret's mount and volume (with redis.external.tls.existingSecret): call with the root context. */}}
{{- define "routemesh.redisTLSMount" -}}
- name: redis-tls
  mountPath: /etc/routemesh/redis-tls
  readOnly: true
{{- end }}

{{- define "routemesh.redisTLSVolume" -}}
{{- $tls := .Values.redis.external.tls -}}
- name: redis-tls
  secret:
    secretName: {{ $tls.existingSecret }}
    items:
      {{- range $field := list "ca" "cert" "key" }}
      {{- with get $tls $field }}
      - {key: {{ . | quote }}, path: {{ . | quote }}}
      {{- end }}
      {{- end }}
{{- end }}

{{/* The ServiceAccount the pods run as; empty: the namespace's default. */}}
{{- define "routemesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ .Values.serviceAccount.name | default (include "routemesh.fullname" .) }}
{{- else -}}
{{ .Values.serviceAccount.name }}
{{- end -}}
{{- end }}

{{/* A pod spec's service account fields: call with the root context. */}}
{{- define "routemesh.podServiceAccount" -}}
{{- with include "routemesh.serviceAccountName" . -}}
serviceAccountName: {{ . }}
{{ end -}}
automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
{{- end }}

{{/* The env of the render-config init container that the placeholders read. */}}
{{- define "routemesh.renderEnv" -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- if .Values.auth.existingSecret }}
- name: AUTH_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.auth.existingSecret }}
      key: {{ .Values.auth.secretKey }}
{{- end }}
{{- with .Values.redis.external.existingSecret }}
{{- if .name }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The resource attributes of the process's traces, from the downward API (read
by routemesh's tracing setup): call with (dict "container" $c "deployment" $d).
*/}}
{{- define "routemesh.resourceEnv" -}}
- name: K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: K8S_POD_UID
  valueFrom:
    fieldRef:
      fieldPath: metadata.uid
- name: K8S_NAMESPACE_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: K8S_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: K8S_CONTAINER_NAME
  value: {{ .container | quote }}
- name: K8S_DEPLOYMENT_NAME
  value: {{ .deployment | quote }}
{{- end }}

{{/* The `tracing` section of a routemesh configuration, set on $cfg when a collector is named: call with (dict "root" $ "cfg" $cfg). */}}
{{- define "routemesh.setTracing" -}}
{{- $t := .root.Values.tracing -}}
{{- if $t.otlpEndpoint -}}
{{- $_ := set .cfg "tracing" (dict "otlp_endpoint" $t.otlpEndpoint "sample_ratio" $t.sampleRatio) -}}
{{- end -}}
{{- end }}

{{/* Restricted-profile security contexts. */}}
{{- define "routemesh.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "routemesh.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: [ALL]
{{- end }}

{{/*
The gateway's routemesh configuration (ConfigMap data; may hold @@REDIS_URL@@).
*/}}
{{- define "routemesh.gatewayConfig" -}}
{{- $g := .Values.gateway -}}
{{- $gw := deepCopy $g.config -}}
{{- /* Keys the chart sets from its own values: giving them twice is an error. */ -}}
{{- $owned := dict "listen" "gateway.ports.grpc" "http_listen" "gateway.ports.http" "admin_listen" "gateway.ports.metrics" "drain_grace" "gateway.drainGraceSeconds" -}}
{{- range $key := keys $owned | sortAlpha -}}
{{- if hasKey $gw $key -}}
{{- fail (printf "gateway.config.%s is set by the chart from %s: give that instead" $key (get $owned $key)) -}}
{{- end -}}
{{- end -}}
{{- if and $gw.auth (hasKey $gw.auth "keys") -}}
{{- fail "gateway.config.auth.keys is set by the chart from auth.keys or auth.existingSecret: give those instead" -}}
{{- end -}}
{{- if and $gw.router (hasKey $gw.router "artifact") -}}
{{- fail "gateway.config.router.artifact is set by the chart from gateway.router.path (and gateway.router.source): give those instead" -}}
{{- end -}}
{{- if and .Values.meshTLS.secretName (hasKey $gw "worker_tls") -}}
{{- fail "gateway.config.worker_tls is set by the chart from meshTLS: leave it out, or leave meshTLS.secretName empty" -}}
{{- end -}}
{{- $_ := set $gw "listen" (printf "0.0.0.0:%d" (int $g.ports.grpc)) -}}
{{- $_ := set $gw "drain_grace" (printf "%ds" (int $g.drainGraceSeconds)) -}}
{{- if $g.ports.http.enabled -}}
{{- $_ := set $gw "http_listen" (printf "0.0.0.0:%d" (int $g.ports.http.port)) -}}
{{- else -}}
{{- $_ := set $gw "http_listen" nil -}}
{{- end -}}
{{- if $g.ports.metrics.enabled -}}
{{- $_ := set $gw "admin_listen" (printf "0.0.0.0:%d" (int $g.ports.metrics.port)) -}}
{{- else -}}
{{- $_ := set $gw "admin_listen" nil -}}
{{- end -}}
{{- $router := merge (dict "artifact" $g.router.path) (default dict $gw.router) (dict "assets" "/usr/share/routemesh/assets") -}}
{{- $_ := set $gw "router" $router -}}
{{- $a := .Values.auth -}}
{{- if and $a.keys $a.existingSecret -}}
{{- fail "auth: give auth.keys or auth.existingSecret, not both" -}}
{{- end -}}
{{- $auth := deepCopy (default dict $gw.auth) -}}
{{- if $a.existingSecret -}}
{{- $_ := set $auth "keys" "@@AUTH_KEYS@@" -}}
{{- else if $a.keys -}}
{{- $_ := set $auth "keys" $a.keys -}}
{{- end -}}
{{- if $auth -}}
{{- $_ := set $gw "auth" $auth -}}
{{- end -}}
{{- with .Values.meshTLS.secretName -}}
{{- $_ := set $gw "worker_tls" (dict "cert" "/etc/routemesh/mesh-tls/tls.crt" "key" "/etc/routemesh/mesh-tls/tls.key" "ca" "/etc/routemesh/mesh-tls/ca.crt" "server_name" $.Values.meshTLS.serverName) -}}
{{- end -}}
{{- $cfg := dict "registry" (dict "redis" (include "routemesh.registryRedis" . | fromYaml)) "gateway" $gw -}}
{{- include "routemesh.setTracing" (dict "root" . "cfg" $cfg) -}}
# routemesh gateway configuration, rendered by the Helm chart.
# Placeholders between @@ marks are filled in at pod start by render-config.sh.
{{- /* AUTH_KEYS is a JSON list (YAML flow): unquoted, it becomes the list itself. */}}
{{ toYaml $cfg | replace "'@@AUTH_KEYS@@'" "@@AUTH_KEYS@@" }}
{{- end }}

{{/* A pool's keys over workerDefaults: call with (dict "root" $ "pool" $pool); returns YAML. */}}
{{- define "routemesh.poolValues" -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.workerDefaults) (deepCopy .pool)) }}
{{- end }}

{{/*
A worker pool's routemesh configuration: call with (dict "root" $ "pool" $p)
where $p is the merged pool. One worker per pod; its id is the pod name and it
advertises the pod IP, both filled in at pod start.
*/}}
{{- define "routemesh.workerConfig" -}}
{{- $p := .pool -}}
{{- $w := dict "id" "@@POD_NAME@@" "model" $p.model "tier" $p.tier -}}
{{- range $k := list "input_usd_per_mtok" "output_usd_per_mtok" "quality_prior" "capacity" "max_queue" "registration_ttl" "expected_ttft_ms" "expected_tokens_per_second" "router_model" "params_b" "capabilities" "connections" -}}
{{- if hasKey $p $k }}{{ if not (kindIs "invalid" (get $p $k)) }}{{ $_ := set $w $k (get $p $k) }}{{ end }}{{ end -}}
{{- end -}}
{{- $_ := set $w "listen" (printf "0.0.0.0:%d" (int $p.agentPort)) -}}
{{- if .root.Values.meshTLS.secretName -}}
{{- $_ := set $w "advertise" (printf "https://@@POD_HOST@@:%d" (int $p.agentPort)) -}}
{{- $_ := set $w "tls" (dict "cert" "/etc/routemesh/mesh-tls/tls.crt" "key" "/etc/routemesh/mesh-tls/tls.key" "ca" "/etc/routemesh/mesh-tls/ca.crt") -}}
{{- else -}}
{{- $_ := set $w "advertise" (printf "http://@@POD_HOST@@:%d" (int $p.agentPort)) -}}
{{- end -}}
{{- $_ := set $w "drain_grace" (printf "%ds" (int $p.drainGraceSeconds)) -}}
{{- if hasKey $p "sim" -}}
{{- $_ := set $w "backend" (dict "sim" (default dict $p.sim)) -}}
{{- else if hasKey $p "local" -}}
{{- $_ := set $w "backend" (dict "local" $p.local) -}}
{{- else -}}
{{- $o := deepCopy (default dict $p.openai) -}}
{{- $secret := get $o "apiKeySecret" -}}
{{- $o = omit $o "apiKeySecret" -}}
{{- if $secret }}{{ $_ := set $o "api_key_env" "ENGINE_API_KEY" }}{{ end -}}
{{- $_ := set $o "base_url" (printf "http://127.0.0.1:%d/v1" (int ($p.engine.port | default 8000))) -}}
{{- $_ := set $w "backend" (dict "openai" $o) -}}
{{- end -}}
{{- $cfg := dict "registry" (dict "redis" (include "routemesh.registryRedis" .root | fromYaml)) "workers" (list $w) -}}
{{- include "routemesh.setTracing" (dict "root" .root "cfg" $cfg) -}}
# routemesh worker configuration for pool {{ $p.name }}, rendered by the Helm chart.
# Placeholders between @@ marks are filled in at pod start by render-config.sh.
{{ toYaml $cfg }}
{{- end }}

{{/* The render-config init container: call with (dict "root" $ "image" $image "pullPolicy" $pp "configMap" $name). */}}
{{- define "routemesh.renderInitContainer" -}}
- name: render-config
  image: {{ .image }}
  imagePullPolicy: {{ .pullPolicy }}
  command: ["/bin/sh", "/etc/routemesh/scripts/render-config.sh"]
  env:
    {{- include "routemesh.renderEnv" .root | nindent 4 }}
    - name: TEMPLATE
      value: /etc/routemesh/template/config.yaml
    - name: OUT
      value: /run/routemesh/config.yaml
  securityContext:
    {{- include "routemesh.containerSecurityContext" .root | nindent 4 }}
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {memory: 64Mi}
  volumeMounts:
    - name: config-template
      mountPath: /etc/routemesh/template
      readOnly: true
    - name: scripts
      mountPath: /etc/routemesh/scripts
      readOnly: true
    - name: config
      mountPath: /run/routemesh
{{- end }}

{{/* Volumes of the render step: call with (dict "root" $ "configMap" $name). */}}
{{- define "routemesh.renderVolumes" -}}
- name: config-template
  configMap:
    name: {{ .configMap }}
- name: scripts
  configMap:
    name: {{ include "routemesh.fullname" .root }}-scripts
    defaultMode: 0555
- name: config
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- end }}

{{/* The mesh TLS Secret's mount and volume (with meshTLS.secretName): call with the root context. */}}
{{- define "routemesh.meshTLSMount" -}}
- name: mesh-tls
  mountPath: /etc/routemesh/mesh-tls
  readOnly: true
{{- end }}

{{- define "routemesh.meshTLSVolume" -}}
- name: mesh-tls
  secret:
    secretName: {{ .Values.meshTLS.secretName }}
{{- end }}
