{{/*
Names and labels.
*/}}
{{- define "webhook-enricher.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "webhook-enricher.fullname" -}}
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

{{- define "webhook-enricher.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "webhook-enricher.labels" -}}
helm.sh/chart: {{ include "webhook-enricher.chart" . }}
app.kubernetes.io/name: {{ include "webhook-enricher.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector of the long-running consumers (the backfill Job's pods have another component). */}}
{{- define "webhook-enricher.selectorLabels" -}}
app.kubernetes.io/name: {{ include "webhook-enricher.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: enricher
{{- end }}

{{/* Selector of the webhook receiver's pods (`webhook-enricher receive`). */}}
{{- define "webhook-enricher.receiverSelectorLabels" -}}
app.kubernetes.io/name: {{ include "webhook-enricher.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: receiver
{{- end }}

{{- define "webhook-enricher.receiverName" -}}
{{- printf "%s-receiver" (include "webhook-enricher.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "webhook-enricher.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "webhook-enricher.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "webhook-enricher.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{/* The Secret holding the credentials: the chart's own, or existingSecret. */}}
{{- define "webhook-enricher.secretName" -}}
{{- default (include "webhook-enricher.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
The credentials: values key -> key in the Secret, the environment variable the service reads it
from, and which pods get it (`run`: the enricher and the backfill Job; `receive`: the webhook
receiver; `both`). Each pod gets only the credentials of its command. The Unico private key is
mounted as a file instead (unico.private_key_file), in the enricher's pods only.
*/}}
{{- define "webhook-enricher.secretKeys" -}}
clearsalePassword: {key: clearsale-password, env: WEBHOOK_ENRICHER_CLEARSALE__PASSWORD, for: run}
unicoApiKey: {key: unico-api-key, env: WEBHOOK_ENRICHER_UNICO__API_KEY, for: run}
unicoPrivateKey: {key: unico-private-key.pem, for: run}
kafkaSaslUsername: {key: kafka-sasl-username, env: WEBHOOK_ENRICHER_KAFKA__SASL__USERNAME, for: both}
kafkaSaslPassword: {key: kafka-sasl-password, env: WEBHOOK_ENRICHER_KAFKA__SASL__PASSWORD, for: both}
kafkaTlsKeyPassword: {key: kafka-tls-key-password, env: WEBHOOK_ENRICHER_KAFKA__TLS__KEY_PASSWORD, for: both}
registryUsername: {key: registry-username, env: WEBHOOK_ENRICHER_OUTPUT__ENCODING__REGISTRY__USERNAME, for: run}
registryPassword: {key: registry-password, env: WEBHOOK_ENRICHER_OUTPUT__ENCODING__REGISTRY__PASSWORD, for: run}
receiveClearsalePassword: {key: receive-clearsale-password, env: WEBHOOK_ENRICHER_RECEIVE__CLEARSALE__AUTH__PASSWORD, for: receive}
receiveClearsaleToken: {key: receive-clearsale-token, env: WEBHOOK_ENRICHER_RECEIVE__CLEARSALE__AUTH__TOKEN, for: receive}
receiveClearsaleApiKey: {key: receive-clearsale-api-key, env: WEBHOOK_ENRICHER_RECEIVE__CLEARSALE__AUTH__API_KEY, for: receive}
receiveUnicoPassword: {key: receive-unico-password, env: WEBHOOK_ENRICHER_RECEIVE__UNICO__AUTH__PASSWORD, for: receive}
receiveUnicoToken: {key: receive-unico-token, env: WEBHOOK_ENRICHER_RECEIVE__UNICO__AUTH__TOKEN, for: receive}
receiveUnicoApiKey: {key: receive-unico-api-key, env: WEBHOOK_ENRICHER_RECEIVE__UNICO__AUTH__API_KEY, for: receive}
{{- end }}

{{- define "webhook-enricher.unicoKeyDir" -}}/etc/webhook-enricher/secrets{{- end }}
{{- define "webhook-enricher.configDir" -}}/etc/webhook-enricher{{- end }}

{{/*
Duration (humantime, as the service parses it: "30s", "1m 30s", "500ms", "2h") -> whole
seconds, rounded up.
*/}}
{{- define "webhook-enricher.durationSeconds" -}}
{{- $s := toString . | trim | lower }}
{{- if not (regexMatch "^([0-9]+ *[a-z]+ *)+$" $s) }}
{{- fail (printf "cannot parse the duration %q: use e.g. 30s, 1m, 1m 30s, 500ms" $s) }}
{{- end }}
{{- $micros := dict "ns" 0 "nsec" 0 "us" 1 "usec" 1 "ms" 1000 "msec" 1000 "s" 1000000 "sec" 1000000 "secs" 1000000 "second" 1000000 "seconds" 1000000 "m" 60000000 "min" 60000000 "mins" 60000000 "minute" 60000000 "minutes" 60000000 "h" 3600000000 "hr" 3600000000 "hrs" 3600000000 "hour" 3600000000 "hours" 3600000000 "d" 86400000000 "day" 86400000000 "days" 86400000000 }}
{{- $total := 0 }}
{{- range regexFindAll "[0-9]+ *[a-z]+" $s -1 }}
{{- $unit := regexFind "[a-z]+$" . }}
{{- if not (hasKey $micros $unit) }}
{{- fail (printf "cannot parse the duration %q: unknown unit %q" $s $unit) }}
{{- end }}
{{- $n := regexFind "^[0-9]+" . | int64 }}
{{- $total = add $total (mul $n (get $micros $unit)) }}
{{- if and (eq (get $micros $unit) 0) (gt $n 0) }}{{ $total = add $total 1 }}{{ end }}
{{- end }}
{{- div (add $total 999999) 1000000 }}
{{- end }}

{{/* engine.drain_timeout in seconds (the service's default is 30s). */}}
{{- define "webhook-enricher.drainSeconds" -}}
{{- include "webhook-enricher.durationSeconds" (dig "engine" "drain_timeout" "30s" (.Values.config | default dict)) }}
{{- end }}

{{- define "webhook-enricher.flushSeconds" -}}
{{- include "webhook-enricher.durationSeconds" (dig "engine" "flush_timeout" "10s" (.Values.config | default dict)) }}
{{- end }}

{{- define "webhook-enricher.closeSeconds" -}}
{{- include "webhook-enricher.durationSeconds" (dig "engine" "close_timeout" "30s" (.Values.config | default dict)) }}
{{- end }}

{{/* The pod's grace period: the service's whole shutdown budget (drain, then producer flush,
then consumer close with the final commit) plus a margin for the process to exit. */}}
{{- define "webhook-enricher.terminationGracePeriodSeconds" -}}
{{- add (include "webhook-enricher.drainSeconds" . | int64) (include "webhook-enricher.flushSeconds" . | int64) (include "webhook-enricher.closeSeconds" . | int64) .Values.terminationGracePeriodMarginSeconds }}
{{- end }}

{{/* The receiver's shutdown budget: receive.shutdown_delay (still serving, not ready), then
receive.drain_timeout (requests in flight), then the producer flush (receive.write_timeout), plus
a margin (service defaults: 0s, 20s, 5s). */}}
{{- define "webhook-enricher.receiverGracePeriodSeconds" -}}
{{- $r := dig "receive" dict (.Values.config | default dict) }}
{{- $delay := include "webhook-enricher.durationSeconds" (dig "shutdown_delay" "0s" $r) | int64 }}
{{- $drain := include "webhook-enricher.durationSeconds" (dig "drain_timeout" "20s" $r) | int64 }}
{{- $write := include "webhook-enricher.durationSeconds" (dig "write_timeout" "5s" $r) | int64 }}
{{- add $delay $drain $write .Values.receiver.terminationGracePeriodMarginSeconds }}
{{- end }}

{{- define "webhook-enricher.unicoEnabled" -}}
{{- if ne (toString (dig "unico" "enabled" true (.Values.config | default dict))) "false" }}true{{ end }}
{{- end }}

{{- define "webhook-enricher.clearsaleEnabled" -}}
{{- if ne (toString (dig "clearsale" "enabled" true (.Values.config | default dict))) "false" }}true{{ end }}
{{- end }}

{{/* Provider isolation may be on: config.engine.isolation.enabled is `auto` (the service's
default) or true. Whether it is on is decided by the service at start-up. */}}
{{- define "webhook-enricher.isolationEnabled" -}}
{{- $enabled := dig "engine" "isolation" "enabled" "auto" (.Values.config | default dict) }}
{{- if not (has (toString $enabled | trim | lower) (list "false" "off")) }}true{{ end }}
{{- end }}

{{/*
Every Kafka topic the release uses, with the service's defaults, once each:
`topics: [{topic, role}]`, role `input` (config.input.topics), `raw` (config.receive.topic with
receiver.enabled, when it is not an input topic), `output` (the enabled providers' output topics
and ClearSale's module topics), `dead-letter`, `wait` (the enabled providers' wait topics,
unless config.engine.isolation.enabled is false: the service only uses those), and `expectations`
(config.fallback.expectations_topic, with config.fallback.enabled).
*/}}
{{- define "webhook-enricher.topics" -}}
{{- $cfg := .Values.config | default dict }}
{{- $iso := dig "engine" "isolation" dict $cfg }}
{{- $isolated := include "webhook-enricher.isolationEnabled" . }}
{{- $all := list }}
{{- range (dig "input" "topics" (list "webhooks.raw") $cfg) }}
{{- $all = append $all (dict "topic" . "role" "input") }}
{{- end }}
{{- if .Values.receiver.enabled }}
{{- $all = append $all (dict "topic" (dig "receive" "topic" "webhooks.raw" $cfg) "role" "raw") }}
{{- end }}
{{- if include "webhook-enricher.clearsaleEnabled" . }}
{{- $all = append $all (dict "topic" (dig "output" "clearsale_topic" "clearsale.analysis.enriched" $cfg) "role" "output") }}
{{- range $module, $topic := (dig "output" "clearsale_module_topics" dict $cfg) }}
{{- $all = append $all (dict "topic" $topic "role" "output") }}
{{- end }}
{{- end }}
{{- if include "webhook-enricher.unicoEnabled" . }}
{{- $all = append $all (dict "topic" (dig "output" "unico_topic" "unico.process.enriched" $cfg) "role" "output") }}
{{- end }}
{{- $all = append $all (dict "topic" (dig "output" "dead_letter_topic" "webhooks.dead-letter" $cfg) "role" "dead-letter") }}
{{- /* The backfill Job's shadow topics (backfill.replay.outputSuffix or explicit topics). */}}
{{- $b := .Values.backfill }}
{{- if and $b.enabled (not $b.args) }}
{{- $r := $b.replay }}
{{- $sfx := $r.outputSuffix | default "" }}
{{- if include "webhook-enricher.clearsaleEnabled" . }}
{{- $cs := printf "%s%s" (dig "output" "clearsale_topic" "clearsale.analysis.enriched" $cfg) $sfx }}
{{- $all = append $all (dict "topic" ($r.clearsaleTopic | default $cs) "role" "backfill-output") }}
{{- range $module, $topic := (dig "output" "clearsale_module_topics" dict $cfg) }}
{{- $all = append $all (dict "topic" (printf "%s%s" $topic $sfx) "role" "backfill-output") }}
{{- end }}
{{- end }}
{{- if include "webhook-enricher.unicoEnabled" . }}
{{- $un := printf "%s%s" (dig "output" "unico_topic" "unico.process.enriched" $cfg) $sfx }}
{{- $all = append $all (dict "topic" ($r.unicoTopic | default $un) "role" "backfill-output") }}
{{- end }}
{{- with $r.deadLetterTopic }}
{{- $all = append $all (dict "topic" . "role" "backfill-dead-letter") }}
{{- end }}
{{- end }}
{{- if $isolated }}
{{- if include "webhook-enricher.clearsaleEnabled" . }}
{{- $all = append $all (dict "topic" (dig "clearsale_wait_topic" "webhooks.wait.clearsale" $iso) "role" "wait") }}
{{- end }}
{{- if include "webhook-enricher.unicoEnabled" . }}
{{- $all = append $all (dict "topic" (dig "unico_wait_topic" "webhooks.wait.unico" $iso) "role" "wait") }}
{{- end }}
{{- end }}
{{- $fb := dig "fallback" dict $cfg }}
{{- if dig "enabled" false $fb }}
{{- $all = append $all (dict "topic" (dig "expectations_topic" "webhooks.expectations" $fb) "role" "expectations") }}
{{- end }}
{{- $seen := dict }}
topics:
{{- range $all }}
{{- if not (hasKey $seen .topic) }}
{{- $_ := set $seen .topic .role }}
  - {{ toJson . }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The KafkaTopic's metadata.name for a Kafka topic: the topic's own name when it is a DNS-1123
subdomain (lowercase alphanumerics, `-` and `.`); otherwise, as Strimzi does, the name made
valid (lowercased, other characters replaced by `-`) followed by `---` and the SHA-1 of the
exact topic name, so two topics never share a name. spec.topicName always has the exact name.
*/}}
{{- define "webhook-enricher.kafkaTopicResourceName" -}}
{{- if regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$" . }}
{{- . }}
{{- else }}
{{- $s := regexReplaceAll "[^a-z0-9.]+" (lower .) "-" }}
{{- $s = regexReplaceAll "-*\\.[-.]*" $s "." }}
{{- $s = regexReplaceAll "[.-]+$" (regexReplaceAll "^[.-]+" $s "" | trunc 200) "" }}
{{- if $s }}{{ printf "%s---%s" $s (sha1sum .) }}{{ else }}{{ sha1sum . }}{{ end }}
{{- end }}
{{- end }}

{{/*
Checks that the templates cannot express as types; each fails the render with a fix.
*/}}
{{- define "webhook-enricher.validate" -}}
{{- $cfg := .Values.config | default dict }}
{{- if hasKey (dig "admin" dict $cfg) "listen" }}
{{- fail "config.admin.listen is set by the chart from admin.port (the container port and the probes use it too): set admin.port instead" }}
{{- end }}
{{- if eq (toString (dig "admin" "enabled" true $cfg)) "false" }}
{{- fail "config.admin.enabled = false would turn off /healthz, /readyz and /metrics, which the probes and the ServiceMonitor use" }}
{{- end }}
{{- $secretPaths := dict "clearsale.password" "clearsalePassword" "unico.api_key" "unicoApiKey" "unico.private_key_pem" "unicoPrivateKey" "kafka.sasl.password" "kafkaSaslPassword" "kafka.tls.key_password" "kafkaTlsKeyPassword" "output.encoding.registry.password" "registryPassword" }}
{{- range $path, $valuesKey := $secretPaths }}
{{- $parts := splitList "." $path }}
{{- $node := $cfg }}
{{- range $parts }}{{ if kindIs "map" $node }}{{ $node = get $node . }}{{ else }}{{ $node = "" }}{{ end }}{{ end }}
{{- if $node }}
{{- fail (printf "config.%s is a secret and would land in the ConfigMap: set secrets.%s (or a key of secrets.existingSecret) instead" $path $valuesKey) }}
{{- end }}
{{- end }}
{{- range $section := list "consumer" "producer" }}
{{- range $k, $v := (dig "kafka" $section dict $cfg) }}
{{- if regexMatch "(?i)(password|secret|token|jaas|credential|key\\.pem)" $k }}
{{- fail (printf "config.kafka.%s.%s looks like a credential and would land in the ConfigMap: pass it with extraEnv from a Secret instead" $section $k) }}
{{- end }}
{{- end }}
{{- end }}
{{- $receive := dig "receive" dict $cfg }}
{{- if hasKey $receive "listen" }}
{{- fail "config.receive.listen is set by the chart from receiver.port (the container port, the Service and the Ingress use it too): set receiver.port instead" }}
{{- end }}
{{- range $provider := list "clearsale" "unico" }}
{{- $auth := dig $provider "auth" dict $receive }}
{{- range $field, $valuesKey := dict "password" "Password" "token" "Token" "api_key" "ApiKey" }}
{{- if get $auth $field }}
{{- fail (printf "config.receive.%s.auth.%s is a secret and would land in the ConfigMap: set secrets.receive%s%s (or a key of secrets.existingSecret) instead" $provider $field (title $provider) $valuesKey) }}
{{- end }}
{{- end }}
{{- if and $.Values.receiver.enabled (ne (toString (dig $provider "enabled" true $receive)) "false") (not (get $auth "mode")) }}
{{- fail (printf "receiver.enabled: config.receive.%s.auth.mode is required (basic, bearer, api_key, or none to accept unauthenticated webhooks), or set config.receive.%s.enabled: false" $provider $provider) }}
{{- end }}
{{- end }}
{{- $reserved := list "WEBHOOK_ENRICHER_CONFIG" "WEBHOOK_ENRICHER_ADMIN__LISTEN" "WEBHOOK_ENRICHER_ENGINE__DRAIN_TIMEOUT" "WEBHOOK_ENRICHER_RECEIVE__LISTEN" }}
{{- range concat (.Values.extraEnv | default list) (.Values.backfill.extraEnv | default list) }}
{{- if has .name $reserved }}
{{- fail (printf "extraEnv must not set %s: the chart derives the port, the probes and the grace period from values (admin.port, config.engine.drain_timeout)" .name) }}
{{- end }}
{{- end }}
{{- $a := .Values.autoscaling }}
{{- if and $a.keda.enabled $a.hpa.enabled }}
{{- fail "autoscaling.keda.enabled and autoscaling.hpa.enabled are exclusive: choose one" }}
{{- end }}
{{- if or $a.keda.enabled $a.hpa.enabled }}
{{- if not $a.partitions }}
{{- fail "autoscaling.partitions (the input topics' partition count) is required with autoscaling: replicas beyond it sit idle" }}
{{- end }}
{{- if and $a.keda.enabled $a.keda.maxReplicaCount (gt (int64 $a.keda.maxReplicaCount) (int64 $a.partitions)) }}
{{- fail (printf "autoscaling.keda.maxReplicaCount (%v) must be at most autoscaling.partitions (%v)" $a.keda.maxReplicaCount $a.partitions) }}
{{- end }}
{{- if and $a.hpa.enabled $a.hpa.maxReplicas (gt (int64 $a.hpa.maxReplicas) (int64 $a.partitions)) }}
{{- fail (printf "autoscaling.hpa.maxReplicas (%v) must be at most autoscaling.partitions (%v)" $a.hpa.maxReplicas $a.partitions) }}
{{- end }}
{{- end }}
{{- $r := .Values.backfill.replay }}
{{- if and .Values.backfill.enabled (not .Values.backfill.args) (not $r.from) (not $r.partitionOffsets) }}
{{- fail "backfill.replay.from (or backfill.replay.partitionOffsets) is required with backfill.enabled, e.g. from: \"-6h\"; or give backfill.args verbatim" }}
{{- end }}
{{- end }}

{{/*
The backfill Job's arguments, as a JSON list: backfill.args verbatim when set, else
`replay ...` built from backfill.replay.
*/}}
{{- define "webhook-enricher.backfillArgs" -}}
{{- $b := .Values.backfill }}
{{- if $b.args }}
{{- toJson $b.args }}
{{- else }}
{{- $r := $b.replay }}
{{- $args := list "replay" }}
{{- with $r.from }}{{ $args = concat $args (list "--from" (toString .)) }}{{ end }}
{{- with $r.to }}{{ $args = concat $args (list "--to" (toString .)) }}{{ end }}
{{- with $r.partitionOffsets }}{{ $args = concat $args (list "--partition-offsets" (toString .)) }}{{ end }}
{{- with $r.group }}{{ $args = concat $args (list "--group" .) }}{{ end }}
{{- with $r.outputSuffix }}{{ $args = concat $args (list "--output-suffix" .) }}{{ end }}
{{- with $r.clearsaleTopic }}{{ $args = concat $args (list "--clearsale-topic" .) }}{{ end }}
{{- with $r.unicoTopic }}{{ $args = concat $args (list "--unico-topic" .) }}{{ end }}
{{- with $r.deadLetterTopic }}{{ $args = concat $args (list "--dead-letter-topic" .) }}{{ end }}
{{- with $r.maxProviderRps }}{{ $args = concat $args (list "--max-provider-rps" (toString (int64 .))) }}{{ end }}
{{- if not $r.dedupe }}{{ $args = concat $args (list "--dedupe" "off") }}{{ end }}
{{- if $r.renormalize }}{{ $args = append $args "--renormalize" }}{{ end }}
{{- if $r.dryRun }}{{ $args = append $args "--dry-run" }}{{ end }}
{{- $args = concat $args (list "--progress" "log") }}
{{- toJson $args }}
{{- end }}
{{- end }}

{{/*
TOML rendering of the `config` tree. Helm hands numbers to templates as float64, and Helm's own
toToml prints 1024 as 1024.0 and 1000000 as 1e+06, which the service's integer settings reject:
whole numbers are printed as integers here (a float setting accepts an integer).
*/}}
{{- define "webhook-enricher.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "webhook-enricher.toml.value" -}}
{{- $v := . }}
{{- if kindIs "string" $v }}{{ toJson $v }}
{{- else if kindIs "bool" $v }}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) }}{{ if eq (floor $v) (float64 $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) (kindIs "uint64" $v) }}{{ $v }}
{{- else if kindIs "slice" $v }}[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "webhook-enricher.toml.value" $e }}{{ end }}]
{{- else }}{{ fail (printf "config: cannot write %v (%s) as a TOML value" $v (kindOf $v)) }}
{{- end }}
{{- end }}

{{- define "webhook-enricher.toml.table" -}}
{{- $path := .path }}
{{- range $k, $v := .table }}
{{- if not (or (kindIs "map" $v) (kindIs "invalid" $v)) }}
{{ include "webhook-enricher.toml.key" $k }} = {{ include "webhook-enricher.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := .table }}
{{- if kindIs "map" $v }}
{{- $sub := include "webhook-enricher.toml.key" $k }}
{{- if $path }}{{ $sub = printf "%s.%s" $path $sub }}{{ end }}

[{{ $sub }}]
{{- include "webhook-enricher.toml.table" (dict "path" $sub "table" $v) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The service's config file: the `config` values with the keys the chart owns set from values
(admin.listen from admin.port, unico.private_key_file from the mounted Secret key). Its sha256 is
the pods' checksum/config annotation.
*/}}
{{- define "webhook-enricher.configToml" -}}
{{- include "webhook-enricher.validate" . }}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $admin := get $cfg "admin" | default dict }}
{{- $_ := set $admin "listen" (printf "0.0.0.0:%d" (int64 .Values.admin.port)) }}
{{- $_ = set $cfg "admin" $admin }}
{{- if .Values.receiver.enabled }}
{{- $receive := get $cfg "receive" | default dict }}
{{- $_ = set $receive "listen" (printf "0.0.0.0:%d" (int64 .Values.receiver.port)) }}
{{- $_ = set $cfg "receive" $receive }}
{{- end }}
{{- if include "webhook-enricher.unicoEnabled" . }}
{{- $unico := get $cfg "unico" | default dict }}
{{- if not (get $unico "private_key_file") }}
{{- $_ = set $unico "private_key_file" (printf "%s/unico-private-key.pem" (include "webhook-enricher.unicoKeyDir" .)) }}
{{- end }}
{{- $_ = set $cfg "unico" $unico }}
{{- end -}}
# webhook-enricher configuration, rendered by the Helm chart. Credentials are not here: they
# come from the Secret as WEBHOOK_ENRICHER_* environment variables and a mounted key file.
{{- include "webhook-enricher.toml.table" (dict "path" "" "table" $cfg) }}
{{ end }}

{{/*
The pod spec shared by the Deployments and the backfill Job. Takes (dict "root" $ "args" list
"probes" bool "resources" map "extraEnv" list "component" "enricher"|"receiver"|"backfill").
The receiver's pods get its port, its grace period and only the credentials of `receive`; the
others the credentials of `run` and the Unico key file.
*/}}
{{- define "webhook-enricher.podSpec" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $receiver := eq (.component | default "enricher") "receiver" }}
{{- $for := ternary "receive" "run" $receiver }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
serviceAccountName: {{ include "webhook-enricher.serviceAccountName" $root }}
automountServiceAccountToken: {{ $v.serviceAccount.automountToken }}
{{- if $receiver }}
terminationGracePeriodSeconds: {{ include "webhook-enricher.receiverGracePeriodSeconds" $root }}
{{- else }}
terminationGracePeriodSeconds: {{ include "webhook-enricher.terminationGracePeriodSeconds" $root }}
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
securityContext:
  {{- toYaml $v.podSecurityContext | nindent 2 }}
containers:
  - name: webhook-enricher
    image: {{ include "webhook-enricher.image" $root }}
    imagePullPolicy: {{ $v.image.pullPolicy }}
    args:
      {{- toYaml .args | nindent 6 }}
    ports:
      {{- if $receiver }}
      - name: http
        containerPort: {{ $v.receiver.port }}
        protocol: TCP
      {{- end }}
      - name: admin
        containerPort: {{ $v.admin.port }}
        protocol: TCP
    env:
      - name: WEBHOOK_ENRICHER_CONFIG
        value: {{ include "webhook-enricher.configDir" $root }}/config.toml
      - name: WEBHOOK_ENRICHER_LOG_FORMAT
        value: json
      - name: WEBHOOK_ENRICHER_LOG_LEVEL
        value: {{ $v.logLevel | quote }}
      {{- range $valuesKey, $s := fromYaml (include "webhook-enricher.secretKeys" $root) }}
      {{- if and $s.env (or (eq $s.for "both") (eq $s.for $for)) }}
      - name: {{ $s.env }}
        valueFrom:
          secretKeyRef:
            name: {{ include "webhook-enricher.secretName" $root }}
            key: {{ $s.key }}
            optional: true
      {{- end }}
      {{- end }}
      {{- with .extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- with $v.extraEnvFrom }}
    envFrom:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- if .probes }}
    livenessProbe:
      httpGet:
        path: /healthz
        port: admin
      {{- toYaml .livenessProbe | nindent 6 }}
    readinessProbe:
      httpGet:
        path: /readyz
        port: admin
      {{- toYaml .readinessProbe | nindent 6 }}
    {{- end }}
    resources:
      {{- toYaml .resources | nindent 6 }}
    securityContext:
      {{- toYaml $v.securityContext | nindent 6 }}
    volumeMounts:
      - name: config
        mountPath: {{ include "webhook-enricher.configDir" $root }}/config.toml
        subPath: config.toml
        readOnly: true
      {{- if not $receiver }}
      - name: unico-key
        mountPath: {{ include "webhook-enricher.unicoKeyDir" $root }}
        readOnly: true
      {{- end }}
      {{- with $v.extraVolumeMounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
volumes:
  - name: config
    configMap:
      name: {{ include "webhook-enricher.fullname" $root }}
  {{- if not $receiver }}
  - name: unico-key
    secret:
      secretName: {{ include "webhook-enricher.secretName" $root }}
      optional: true
      defaultMode: 0440
      items:
        - key: unico-private-key.pem
          path: unico-private-key.pem
  {{- end }}
  {{- with $v.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
