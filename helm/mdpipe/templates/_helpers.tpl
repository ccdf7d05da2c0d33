{{/* ---------------------------------------------------------------- names and labels */}}

{{- define "mdpipe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mdpipe.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's resource name: (dict "ctx" $ "component" "wds") */}}
{{- define "mdpipe.componentName" -}}
{{- printf "%s-%s" (include "mdpipe.fullname" .ctx) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mdpipe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mdpipe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mdpipe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mdpipe.labels" -}}
helm.sh/chart: {{ include "mdpipe.chart" . }}
{{ include "mdpipe.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mdpipe
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* (dict "ctx" $ "component" "wds") */}}
{{- define "mdpipe.componentSelectorLabels" -}}
{{ include "mdpipe.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "mdpipe.componentLabels" -}}
{{ include "mdpipe.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "mdpipe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mdpipe.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mdpipe.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- what is deployed */}}

{{/* "true" when the emulator replaces the vendor: no Massive key was given. */}}
{{- define "mdpipe.emulator.enabled" -}}
{{- if not (or .Values.massive.existingSecret .Values.massive.apiKey) -}}true{{- end -}}
{{- end -}}

{{- define "mdpipe.secretName" -}}
{{- include "mdpipe.fullname" . -}}
{{- end -}}

{{/*
The Secret and key holding one secret: the user's existingSecret, else the release's generated Secret.
(dict "ctx" $ "existing" <name or ""> "key" <key in existing> "generated" <key in the release Secret>)
*/}}
{{- define "mdpipe.secretKeyRef" -}}
{{- if .existing -}}
name: {{ .existing }}
key: {{ .key }}
{{- else -}}
name: {{ include "mdpipe.secretName" .ctx }}
key: {{ .generated }}
{{- end -}}
{{- end -}}

{{- define "mdpipe.massiveKeyRef" -}}
{{- if .Values.massive.existingSecret -}}
name: {{ .Values.massive.existingSecret }}
key: {{ .Values.massive.existingSecretKey }}
{{- else if .Values.massive.apiKey -}}
name: {{ include "mdpipe.componentName" (dict "ctx" . "component" "massive") }}
key: api-key
{{- else -}}
{{ include "mdpipe.secretKeyRef" (dict "ctx" . "existing" .Values.emulator.existingSecret "key" .Values.emulator.existingSecretKey "generated" "sim-api-key") }}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- signal services */}}

{{/*
The Redis ACL rules (without `on` and the password) of the service publishing signals.NAME: the same
string as mdc.acl.rules(NAME, prefix), which a test compares. (dict "name" <NAME> "prefix" <MDC prefix>)
*/}}
{{- define "mdpipe.signals.rules" -}}
{{- $p := .prefix -}}
{{- $own := printf "signals.%s" .name -}}
{{- $g := printf "%s:{%s}" $p $p -}}
{{- $read := "+@read -@dangerous +subscribe +psubscribe +unsubscribe +punsubscribe +ping +echo +hello +auth +client|setname +client|id +client|info +select +multi +exec +discard +info +evalsha +eval +script|load +script|exists +ssubscribe +sunsubscribe +cluster|slots +cluster|shards +cluster|nodes +cluster|info +cluster|myid +readonly +asking" -}}
{{- $write := "+evalsha +eval +incr +lpush +ltrim +expire +set +del +publish +spublish" -}}
{{- $keys := list -}}
{{- range $channel := list $own (printf "%s.*" $own) -}}
{{- $keys = append $keys (printf "~%s:sigseq:%s" $g $channel) -}}
{{- $keys = append $keys (printf "~%s:sigs:%s" $g $channel) -}}
{{- end -}}
resetkeys resetchannels -@all {{ $read }} %R~{{ $p }}:* &* ({{ $write }} {{ join " " $keys }} ~{{ $p }}:hb:{{ $own }}:* &{{ $g }}:{{ $own }} &{{ $g }}:{{ $own }}.*)
{{- end -}}

{{/* The Redis user of a signal service: mdc.acl.user(NAME). */}}
{{- define "mdpipe.signals.user" -}}
{{- printf "mdpipe-%s" . -}}
{{- end -}}

{{/* The Secret the chart generates for a signal service: (dict "ctx" $ "name" <NAME>) */}}
{{- define "mdpipe.signals.secretName" -}}
{{- printf "%s-signals-%s" (include "mdpipe.fullname" .ctx) (replace "_" "-" .name) -}}
{{- end -}}

{{/* The environment variable of the Redis pod holding a signal service's password. */}}
{{- define "mdpipe.signals.passwordEnv" -}}
{{- printf "REDIS_SIGNALS_PASSWORD_%s" (upper .) -}}
{{- end -}}

{{/* Where a signal service's password is: (dict "ctx" $ "service" <an entry of signalServices>) */}}
{{- define "mdpipe.signals.passwordRef" -}}
{{- if .service.existingSecret -}}
name: {{ .service.existingSecret }}
{{- else -}}
name: {{ include "mdpipe.signals.secretName" (dict "ctx" .ctx "name" .service.name) }}
{{- end }}
key: redis-password
{{- end -}}

{{/* Checks of values the schema cannot express. */}}
{{- define "mdpipe.validate" -}}
{{- if and (not .Values.rabbitmq.enabled) (not .Values.rabbitmq.external.existingSecret) -}}
{{- fail "rabbitmq.enabled=false needs rabbitmq.external.existingSecret (a Secret with the AMQP URL)" -}}
{{- end -}}
{{- if and (not .Values.redis.enabled) (not .Values.redis.external.existingSecret) -}}
{{- fail "redis.enabled=false needs redis.external.existingSecret (a Secret with the Redis URL)" -}}
{{- end -}}
{{- if and .Values.redis.enabled .Values.redis.external.clusterNodes -}}
{{- fail "redis.external.clusterNodes needs redis.enabled=false: the built-in Redis is one server, not a cluster (give the cluster's URL in redis.external.existingSecret, docs/kubernetes.md)" -}}
{{- end -}}
{{- $scp := .Values.scp -}}
{{- if $scp.sqlite -}}
{{- $wrong := list -}}
{{- if .Values.postgresql.enabled -}}{{- $wrong = append $wrong "postgresql.enabled=false" -}}{{- end -}}
{{- if .Values.postgresql.external.existingSecret -}}{{- $wrong = append $wrong "no postgresql.external.existingSecret" -}}{{- end -}}
{{- if not $scp.persistence.enabled -}}{{- $wrong = append $wrong "scp.persistence.enabled=true" -}}{{- end -}}
{{- if include "mdpipe.scp.several" . -}}{{- $wrong = append $wrong "scp.replicas=1 and scp.autoscaling.enabled=false" -}}{{- end -}}
{{- if $wrong -}}
{{- fail (printf "scp.sqlite needs %s: the SQLite file lives on SCP's volume and cannot be shared by several replicas (docs/kubernetes.md)" (join ", " $wrong)) -}}
{{- end -}}
{{- else if and (not .Values.postgresql.enabled) (not .Values.postgresql.external.existingSecret) -}}
{{- fail "postgresql.enabled=false needs postgresql.external.existingSecret (a Secret with the pyDAL URI) or scp.sqlite=true" -}}
{{- end -}}
{{- if and $scp.persistence.enabled (not (has "ReadWriteMany" $scp.persistence.accessModes)) (include "mdpipe.scp.several" .) -}}
{{- fail "several SCP replicas (scp.replicas > 1 or scp.autoscaling) cannot share a ReadWriteOnce scp.persistence volume: with a database server SCP needs none, turn it off (docs/kubernetes.md)" -}}
{{- end -}}
{{- if and .Values.scp.ingress.enabled (not .Values.scp.ingress.host) -}}
{{- fail "scp.ingress.enabled needs scp.ingress.host" -}}
{{- end -}}
{{- $signalNames := list -}}
{{- range $i, $s := .Values.signalServices -}}
{{- /* the name is part of a Secret's name and a label value: no "_" at either end */ -}}
{{- if not (regexMatch "^[a-z0-9]([a-z0-9_]*[a-z0-9])?$" $s.name) -}}
{{- fail (printf "signalServices[%d].name %s must start and end with a letter or a digit (it is part of Kubernetes names)" $i $s.name) -}}
{{- end -}}
{{- if has $s.name $signalNames -}}
{{- fail (printf "signalServices[%d]: %s is listed twice" $i $s.name) -}}
{{- end -}}
{{- $signalNames = append $signalNames $s.name -}}
{{- end -}}
{{- range $i, $g := .Values.mdp.groups -}}
{{- if not (and $g.name $g.classes) -}}
{{- fail (printf "mdp.groups[%d] needs a name and classes" $i) -}}
{{- end -}}
{{- /* trades and aggregates both feed a symbol's day stats, which one replica owns (docs/mdp.md) */ -}}
{{- $classes := splitList "," (toString $g.classes) -}}
{{- range $c := $classes -}}
{{- $partner := ternary (replace "trades" "aggregates" $c) (replace "aggregates" "trades" $c) (hasPrefix "trades" $c) -}}
{{- if and (or (hasPrefix "trades" $c) (hasPrefix "aggregates" $c)) (not (has $partner $classes)) -}}
{{- fail (printf "mdp.groups[%d] names %s without %s: trades and aggregates feed the same day stats and go together (docs/mdp.md)" $i $c $partner) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The TCP ports of an external Redis the network policies open, as a JSON list: redis.external.ports (else
redis.external.port), plus the port of every seed in redis.external.clusterNodes.
*/}}
{{- define "mdpipe.redis.externalPorts" -}}
{{- $x := .Values.redis.external -}}
{{- $ports := list -}}
{{- range (default (list $x.port) $x.ports) -}}{{- $ports = append $ports (int .) -}}{{- end -}}
{{- range $x.clusterNodes -}}{{- $ports = append $ports (int (regexFind "[0-9]+$" .)) -}}{{- end -}}
{{- $ports | uniq | toJson -}}
{{- end -}}

{{/* "true" when SCP may run more than one pod (several replicas, or an autoscaler). */}}
{{- define "mdpipe.scp.several" -}}
{{- if .Values.scp.autoscaling.enabled -}}
{{- if gt (int .Values.scp.autoscaling.maxReplicas) 1 -}}true{{- end -}}
{{- else if gt (int .Values.scp.replicas) 1 -}}true{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- public URLs */}}

{{- define "mdpipe.scp.scheme" -}}
{{- if .Values.scp.ingress.tls.enabled -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{- define "mdpipe.wds.host" -}}
{{- default .Values.scp.ingress.host .Values.wds.ingress.host -}}
{{- end -}}

{{- define "mdpipe.scp.tlsSecret" -}}
{{- default (printf "%s-tls" (include "mdpipe.fullname" .)) .Values.scp.ingress.tls.secretName -}}
{{- end -}}

{{- define "mdpipe.wds.tlsSecret" -}}
{{- if .Values.wds.ingress.tls.secretName -}}
{{- .Values.wds.ingress.tls.secretName -}}
{{- else if or (not .Values.wds.ingress.host) (eq .Values.wds.ingress.host .Values.scp.ingress.host) -}}
{{- include "mdpipe.scp.tlsSecret" . -}}
{{- else -}}
{{- printf "%s-wds-tls" (include "mdpipe.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* SCP's public URL (no trailing slash), or "" when unknown. */}}
{{- define "mdpipe.scp.publicUrl" -}}
{{- if .Values.scp.publicUrl -}}
{{- trimSuffix "/" .Values.scp.publicUrl -}}
{{- else if .Values.scp.ingress.enabled -}}
{{- printf "%s://%s" (include "mdpipe.scp.scheme" .) .Values.scp.ingress.host -}}
{{- end -}}
{{- end -}}

{{/* The origin (scheme://host[:port]) of SCP's public URL. */}}
{{- define "mdpipe.scp.origin" -}}
{{- $url := include "mdpipe.scp.publicUrl" . -}}
{{- if $url -}}
{{- $u := urlParse $url -}}
{{- printf "%s://%s" $u.scheme $u.host -}}
{{- end -}}
{{- end -}}

{{/* The browser-facing WDS URL, or "" (SCP then uses ws://<its host>:8780/ws). */}}
{{- define "mdpipe.wds.publicUrl" -}}
{{- if .Values.scp.wdsUrl -}}
{{- .Values.scp.wdsUrl -}}
{{- else if .Values.wds.ingress.enabled -}}
{{- printf "%s://%s%s" (ternary "wss" "ws" .Values.wds.ingress.tls.enabled) (include "mdpipe.wds.host" .) .Values.wds.ingress.path -}}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- environment */}}

{{/* Settings the chart owns and that hold secrets: never from `config` or `env`. */}}
{{- define "mdpipe.secretSettings" -}}
RABBITMQ_URL REDIS_URL PYDAL_URI MASSIVE_API_KEY SIM_API_KEY WDS_TOKEN_SECRET WDS_TOKEN_PRIVATE_KEY SCP_SESSION_SECRET SCP_ADMIN_PASSWORD
{{- end -}}

{{/*
The environment of an mdpipe container: the secret settings it needs (from Secrets), then its plain
settings (chart defaults < .Values.config < the component's env).
(dict "ctx" $ "component" "wds" "needs" (list "rabbitmq" "redis" ...) "settings" (dict ...) "env" <component env>)
*/}}
{{- define "mdpipe.env" -}}
{{- $ctx := .ctx -}}
{{- $v := $ctx.Values -}}
{{- $secretNames := splitList " " (include "mdpipe.secretSettings" $ctx) -}}
{{- $plain := dict "MDPIPE_ENV" $v.environment "LOG_LEVEL" $v.logLevel "LOG_FORMAT" $v.logFormat -}}
{{- $plain = merge (deepCopy (default dict .env)) (deepCopy $v.config) .settings $plain -}}
{{- range $name, $_ := $plain -}}
{{- if has $name $secretNames -}}
{{- fail (printf "%s holds a secret: it cannot be set in config or env (see docs/kubernetes.md, Secrets)" $name) -}}
{{- end -}}
{{- if eq $name "REDIS_CLUSTER_NODES" -}}
{{- fail "REDIS_CLUSTER_NODES cannot be set in config or env: set redis.external.clusterNodes (the network policies follow it)" -}}
{{- end -}}
{{- end -}}
{{- if has "rabbitmq" .needs }}
{{- if $v.rabbitmq.enabled }}
- name: MDPIPE_K8S_RABBITMQ_PASSWORD
  valueFrom:
    secretKeyRef:
      {{- include "mdpipe.secretKeyRef" (dict "ctx" $ctx "existing" $v.rabbitmq.existingSecret "key" $v.rabbitmq.existingSecretKey "generated" "rabbitmq-password") | nindent 6 }}
- name: RABBITMQ_URL
  value: {{ printf "amqp://%s:$(MDPIPE_K8S_RABBITMQ_PASSWORD)@%s:5672/" $v.rabbitmq.username (include "mdpipe.componentName" (dict "ctx" $ctx "component" "rabbitmq")) | quote }}
{{- else }}
- name: RABBITMQ_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.rabbitmq.external.existingSecret }}
      key: {{ $v.rabbitmq.external.existingSecretKey }}
{{- end }}
{{- end }}
{{- if has "redis" .needs }}
{{- if $v.redis.enabled }}
- name: MDPIPE_K8S_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      {{- include "mdpipe.secretKeyRef" (dict "ctx" $ctx "existing" $v.redis.existingSecret "key" $v.redis.existingSecretKey "generated" "redis-password") | nindent 6 }}
- name: REDIS_URL
  value: {{ printf "redis://:$(MDPIPE_K8S_REDIS_PASSWORD)@%s:6379/0" (include "mdpipe.componentName" (dict "ctx" $ctx "component" "redis")) | quote }}
{{- else }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.redis.external.existingSecret }}
      key: {{ $v.redis.external.existingSecretKey }}
{{- with $v.redis.external.clusterNodes }}
- name: REDIS_CLUSTER_NODES
  value: {{ join "," . | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- if has "database" .needs }}
{{- if $v.scp.sqlite }}
- name: PYDAL_URI
  value: "sqlite://scp.sqlite"
{{- else if $v.postgresql.enabled }}
- name: MDPIPE_K8S_POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef:
      {{- include "mdpipe.secretKeyRef" (dict "ctx" $ctx "existing" $v.postgresql.existingSecret "key" $v.postgresql.existingSecretKey "generated" "postgres-password") | nindent 6 }}
- name: PYDAL_URI
  value: {{ printf "postgres://%s:$(MDPIPE_K8S_POSTGRES_PASSWORD)@%s:5432/%s" $v.postgresql.username (include "mdpipe.componentName" (dict "ctx" $ctx "component" "postgresql")) $v.postgresql.database | quote }}
{{- else }}
- name: PYDAL_URI
  valueFrom:
    secretKeyRef:
      name: {{ $v.postgresql.external.existingSecret }}
      key: {{ $v.postgresql.external.existingSecretKey }}
{{- end }}
{{- end }}
{{- if has "massive" .needs }}
- name: MASSIVE_API_KEY
  valueFrom:
    secretKeyRef:
      {{- include "mdpipe.massiveKeyRef" $ctx | nindent 6 }}
{{- end }}
{{- if has "sim" .needs }}
- name: SIM_API_KEY
  valueFrom:
    secretKeyRef:
      {{- include "mdpipe.secretKeyRef" (dict "ctx" $ctx "existing" $v.emulator.existingSecret "key" $v.emulator.existingSecretKey "generated" "sim-api-key") | nindent 6 }}
{{- end }}
{{- if has "wdsToken" .needs }}
- name: WDS_TOKEN_SECRET
  valueFrom:
    secretKeyRef:
      {{- include "mdpipe.secretKeyRef" (dict "ctx" $ctx "existing" $v.wds.token.existingSecret "key" $v.wds.token.existingSecretKey "generated" "wds-token-secret") | nindent 6 }}
{{- end }}
{{- if has "scp" .needs }}
- name: SCP_SESSION_SECRET
  valueFrom:
    secretKeyRef:
      {{- include "mdpipe.secretKeyRef" (dict "ctx" $ctx "existing" $v.scp.session.existingSecret "key" $v.scp.session.existingSecretKey "generated" "scp-session-secret") | nindent 6 }}
{{- if $v.scp.admin.email }}
- name: SCP_ADMIN_PASSWORD
  valueFrom:
    secretKeyRef:
      {{- include "mdpipe.secretKeyRef" (dict "ctx" $ctx "existing" $v.scp.admin.existingSecret "key" $v.scp.admin.existingSecretKey "generated" "scp-admin-password") | nindent 6 }}
{{- end }}
{{- end }}
{{- range $name := keys $plain | sortAlpha }}
- name: {{ $name }}
  value: {{ include "mdpipe.envValue" (index $plain $name) | quote }}
{{- end }}
{{- end -}}

{{/* A value as an environment variable: integral numbers without an exponent (67108864, not 6.7e+07). */}}
{{- define "mdpipe.envValue" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- pods */}}

{{- define "mdpipe.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The hardened container securityContext; (dict "uid" 10001 "gid" 10001) */}}
{{- define "mdpipe.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .gid }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Scheduling and pod metadata of a component block: (dict "values" .Values.wds) */}}
{{- define "mdpipe.podScheduling" -}}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* Pod-spec lines every pod of the chart shares. */}}
{{- define "mdpipe.podCommon" -}}
serviceAccountName: {{ include "mdpipe.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* HTTP probes of an mdpipe component on its port named $port. */}}
{{- define "mdpipe.httpProbes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: {{ . }}
  periodSeconds: 2
  timeoutSeconds: 3
  failureThreshold: 60
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ . }}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ . }}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end -}}

{{/* A sized emptyDir at /tmp (the root filesystem is read-only). */}}
{{- define "mdpipe.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ default "64Mi" . }}
{{- end -}}

{{/*
PodDisruptionBudget: (dict "ctx" $ "name" <name> "component" <c> "pdb" <pdb values> "extraSelector" (dict));
the pdb values give minAvailable or maxUnavailable.
*/}}
{{- define "mdpipe.pdb" -}}
{{- if .pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .name }}
  labels:
    {{- include "mdpipe.componentLabels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
spec:
  {{- if hasKey .pdb "minAvailable" }}
  minAvailable: {{ .pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ .pdb.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "mdpipe.componentSelectorLabels" (dict "ctx" .ctx "component" .component) | nindent 6 }}
      {{- with .extraSelector }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
{{- end }}
{{- end -}}

{{/* HorizontalPodAutoscaler: (dict "ctx" $ "name" <deployment> "component" <c> "autoscaling" <values>) */}}
{{- define "mdpipe.hpa" -}}
{{- if .autoscaling.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ .name }}
  labels:
    {{- include "mdpipe.componentLabels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ .name }}
  minReplicas: {{ .autoscaling.minReplicas }}
  maxReplicas: {{ .autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ .autoscaling.targetCPUUtilizationPercentage }}
    {{- if .autoscaling.targetMemoryUtilizationPercentage }}
    - type: Resource
      resource:
        name: memory
        target:
          type: Utilization
          averageUtilization: {{ .autoscaling.targetMemoryUtilizationPercentage }}
    {{- end }}
{{- end }}
{{- end -}}
