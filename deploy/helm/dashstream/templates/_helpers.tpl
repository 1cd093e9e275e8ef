{{/* Names, labels and the pieces every workload shares. */}}

{{- define "dashstream.name" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "dashstream.labels" -}}
app.kubernetes.io/name: dashstream-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: dashstream
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{- define "dashstream.selectorLabels" -}}
app.kubernetes.io/name: dashstream-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "dashstream.image" -}}
{{- $i := .Values.image -}}
{{- if $i.digest -}}
{{ $i.repository }}@{{ $i.digest }}
{{- else -}}
{{ $i.repository }}:{{ $i.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/*
Secret files of one workload, as a YAML list of {env, secret, key, volume, path}: the input is
a list of [ENV, ref] pairs. An env given several refs (GATEWAY_JWT_PUBLIC_KEY_FILES) gets one
volume each; its value is their paths, comma-separated ("dashstream.fileEnv").
*/}}
{{- define "dashstream.files" -}}
{{- $root := .root -}}
{{- $out := list -}}
{{- range $pair := .pairs -}}
{{- $env := index $pair 0 -}}
{{- $ref := index $pair 1 -}}
{{- if and $ref $ref.secret -}}
{{- $vol := printf "%s-%d" ($env | lower | replace "_" "-") (len $out) | trunc 63 -}}
{{- $path := printf "%s/%s/%s" $root.Values.secretsMountRoot $vol $ref.key -}}
{{- $out = append $out (dict "env" $env "secret" $ref.secret "key" $ref.key "volume" $vol "path" $path) -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* env entries for a list from "dashstream.files". */}}
{{- define "dashstream.fileEnv" -}}
{{- $byEnv := dict -}}
{{- $order := list -}}
{{- range . -}}
{{- if not (hasKey $byEnv .env) -}}{{- $order = append $order .env -}}{{- end -}}
{{- $_ := set $byEnv .env (append (get $byEnv .env | default list) .path) -}}
{{- end -}}
{{- range $order }}
- name: {{ . }}
  value: {{ get $byEnv . | join "," | quote }}
{{- end -}}
{{- end -}}

{{- define "dashstream.fileMounts" -}}
{{- range . }}
- name: {{ .volume }}
  mountPath: {{ dir .path }}
  readOnly: true
{{- end -}}
{{- end -}}

{{- define "dashstream.fileVolumes" -}}
{{- range . }}
- name: {{ .volume }}
  secret:
    secretName: {{ .secret }}
    defaultMode: 0440
    items:
      - key: {{ .key }}
        path: {{ base .path }}
{{- end -}}
{{- end -}}

{{/* The Kafka connection settings (no group: only the ingest has one). */}}
{{- define "dashstream.kafkaEnv" -}}
- name: KAFKA_BROKERS
  value: {{ required "kafka.brokers is required" .Values.kafka.brokers | quote }}
- name: KAFKA_TOPIC
  value: {{ .Values.kafka.topic | quote }}
{{- with .Values.kafka.dlqTopic }}
- name: KAFKA_DLQ_TOPIC
  value: {{ . | quote }}
{{- end }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- with .Values.kafka.sasl.mechanism }}
- name: KAFKA_SASL_MECHANISM
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* The Redis settings of one tier (.tier: the tier's values). */}}
{{- define "dashstream.redisEnv" -}}
- name: REDIS_URL
  value: {{ .tier.redis.url | default .root.Values.redis.url | quote }}
- name: REDIS_KEY_PREFIX
  value: {{ .root.Values.redis.keyPrefix | quote }}
- name: REDIS_COMMAND_TIMEOUT_MS
  value: {{ .root.Values.redis.commandTimeoutMs | quote }}
{{- end -}}

{{/* Extra settings of a tier, from its `env` map. */}}
{{- define "dashstream.extraEnv" -}}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end -}}
{{- end -}}

{{- define "dashstream.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "dashstream.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "dashstream.topologySpread" -}}
{{- if .root.Values.topologySpread.enabled -}}
topologySpreadConstraints:
  {{- range list "topology.kubernetes.io/zone" "kubernetes.io/hostname" }}
  - maxSkew: {{ $.root.Values.topologySpread.maxSkew }}
    topologyKey: {{ . }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "dashstream.selectorLabels" $ | nindent 8 }}
  {{- end }}
{{- end }}
{{- end -}}

{{- define "dashstream.kafkaFilePairs" -}}
{{- $k := .Values.kafka -}}
{{- toYaml (list
  (list "KAFKA_SASL_PASSWORD_FILE" $k.sasl.password)
  (list "KAFKA_SSL_CA_LOCATION" $k.tls.ca)
  (list "KAFKA_SSL_CERTIFICATE_LOCATION" $k.tls.cert)
  (list "KAFKA_SSL_KEY_LOCATION" $k.tls.key)
  (list "KAFKA_SSL_KEY_PASSWORD_FILE" $k.tls.keyPassword)) -}}
{{- end -}}

{{- define "dashstream.redisFilePairs" -}}
{{- $r := .root.Values.redis -}}
{{- toYaml (list
  (list "REDIS_PASSWORD_FILE" .tier.redis.password)
  (list "REDIS_TLS_CA_FILE" $r.tls.ca)
  (list "REDIS_TLS_CERT_FILE" $r.tls.cert)
  (list "REDIS_TLS_KEY_FILE" $r.tls.key)) -}}
{{- end -}}

{{/* The ingest's secret files: Kafka and Redis. */}}
{{- define "dashstream.ingestFiles" -}}
{{- $pairs := concat (include "dashstream.kafkaFilePairs" . | fromYamlArray) (include "dashstream.redisFilePairs" (dict "root" . "tier" .Values.ingest) | fromYamlArray) -}}
{{- include "dashstream.files" (dict "root" . "pairs" $pairs) -}}
{{- end -}}

{{/* The gateway's secret files: Redis and the JWT keys (no Kafka at all). */}}
{{- define "dashstream.gatewayFiles" -}}
{{- $a := .Values.gateway.auth -}}
{{- $pairs := include "dashstream.redisFilePairs" (dict "root" . "tier" .Values.gateway) | fromYamlArray -}}
{{- if eq $a.mode "jwt" -}}
{{- range $a.publicKeys -}}
{{- $pairs = append $pairs (list "GATEWAY_JWT_PUBLIC_KEY_FILES" .) -}}
{{- end -}}
{{- $pairs = append $pairs (list "GATEWAY_JWT_HS256_SECRET_FILE" $a.hs256Secret) -}}
{{- $pairs = append $pairs (list "GATEWAY_JWT_JWKS_FILE" $a.jwksFile) -}}
{{- if $a.jwksUrl -}}
{{- $pairs = append $pairs (list "GATEWAY_JWT_JWKS_CA_FILE" $a.jwksCa) -}}
{{- end -}}
{{- end -}}
{{- include "dashstream.files" (dict "root" . "pairs" $pairs) -}}
{{- end -}}

{{/* The provisioning Job's secret files: Kafka, with its own user if given. */}}
{{- define "dashstream.provisionFiles" -}}
{{- $k := .Values.kafka -}}
{{- $p := .Values.provision -}}
{{- $pairs := list
  (list "KAFKA_SASL_PASSWORD_FILE" (ternary $p.sasl.password $k.sasl.password (not (empty $p.sasl.password.secret))))
  (list "KAFKA_SSL_CA_LOCATION" $k.tls.ca)
  (list "KAFKA_SSL_CERTIFICATE_LOCATION" (ternary $p.tls.cert $k.tls.cert (not (empty $p.tls.cert.secret))))
  (list "KAFKA_SSL_KEY_LOCATION" (ternary $p.tls.key $k.tls.key (not (empty $p.tls.key.secret))))
  (list "KAFKA_SSL_KEY_PASSWORD_FILE" (ternary (dict "secret" "") $k.tls.keyPassword (not (empty $p.tls.key.secret)))) -}}
{{- include "dashstream.files" (dict "root" . "pairs" $pairs) -}}
{{- end -}}
