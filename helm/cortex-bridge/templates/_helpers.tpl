{{/* Names --------------------------------------------------------------------------------- */}}

{{- define "cortex-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cortex-bridge.fullname" -}}
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

{{- define "cortex-bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cortex-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cortex-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cortex-bridge.labels" -}}
helm.sh/chart: {{ include "cortex-bridge.chart" . }}
{{ include "cortex-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cortex-bridge
{{- end }}

{{- define "cortex-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cortex-bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference. values.schema.json already requires image.repository; this message is
for installs that skip the schema (--skip-schema-validation). */}}
{{- define "cortex-bridge.image" -}}
{{- $repository := required "image.repository is required: no public image exists. Build one from the repository's Dockerfile and push it (docker build -t REGISTRY/cortex-bridge:TAG . && docker push REGISTRY/cortex-bridge:TAG), then --set image.repository=REGISTRY/cortex-bridge" .Values.image.repository }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Queue backend ------------------------------------------------------------------------- */}}

{{/* "sqlite" (a StatefulSet, a volume per pod) or "postgres" (a Deployment sharing one database). */}}
{{- define "cortex-bridge.backend" -}}
{{- default "sqlite" .Values.queue.backend }}
{{- end }}

{{/* replicaCount, or when it is null: 1 on SQLite (one queue file, one disk), 2 on PostgreSQL
(the smallest number that survives the loss of a pod). */}}
{{- define "cortex-bridge.replicas" -}}
{{- if kindIs "invalid" .Values.replicaCount }}
{{- ternary 2 1 (eq (include "cortex-bridge.backend" .) "postgres") }}
{{- else }}
{{- int .Values.replicaCount }}
{{- end }}
{{- end }}

{{/* Paths the image and the daemon agree on (Dockerfile VOLUME, queue.path default). ---------- */}}

{{- define "cortex-bridge.dataDir" -}}/var/lib/cortex-bridge{{- end }}
{{- define "cortex-bridge.configDir" -}}/etc/cortex-bridge/config{{- end }}
{{- define "cortex-bridge.secretsDir" -}}/etc/cortex-bridge/secrets{{- end }}
{{/* The DSN Secret's key is mounted here as the file `dsn` (queue.postgres.dsn_file). */}}
{{- define "cortex-bridge.postgresDir" -}}/etc/cortex-bridge/postgres{{- end }}

{{/* Secrets ------------------------------------------------------------------------------- */}}

{{/* Name of the Secret to mount, or "" when there is none. */}}
{{- define "cortex-bridge.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else if .Values.secrets.data }}
{{- include "cortex-bridge.fullname" . }}
{{- end }}
{{- end }}

{{/* "true" when the Secret holds the Cortex token (always assumed for an existing Secret). */}}
{{- define "cortex-bridge.hasCortexToken" -}}
{{- if or .Values.secrets.existingSecret (hasKey .Values.secrets.data .Values.secrets.cortexTokenKey) }}true{{- end }}
{{- end }}

{{/* RBAC ---------------------------------------------------------------------------------- */}}

{{/* "true" when the kubernetes source's RBAC is to be created (explicit, or a source needs it). */}}
{{- define "cortex-bridge.rbacEnabled" -}}
{{- if kindIs "bool" .Values.rbac.create }}
{{- if .Values.rbac.create }}true{{- end }}
{{- else }}
{{- range .Values.config.sources }}
{{- if eq (toString .type) "kubernetes" }}true{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "cortex-bridge.automountToken" -}}
{{- if kindIs "bool" .Values.serviceAccount.automountToken }}
{{- .Values.serviceAccount.automountToken }}
{{- else }}
{{- ternary "true" "false" (ne (include "cortex-bridge.rbacEnabled" .) "") }}
{{- end }}
{{- end }}

{{/* Configuration ------------------------------------------------------------------------- */}}

{{/* The config file: the user's `config` plus what the chart owns (ports, queue path, secret files). */}}
{{- define "cortex-bridge.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $http := deepCopy (default (dict) $cfg.http) }}
{{- $_ := set $http "host" "0.0.0.0" }}
{{- $_ = set $http "port" (int .Values.ports.ingest) }}
{{- $_ = set $cfg "http" $http }}
{{- $metrics := deepCopy (default (dict) $cfg.metrics) }}
{{- $_ = set $metrics "host" "0.0.0.0" }}
{{- $_ = set $metrics "port" (int .Values.ports.metrics) }}
{{- $_ = set $cfg "metrics" $metrics }}
{{- $queue := deepCopy (default (dict) $cfg.queue) }}
{{- if eq (include "cortex-bridge.backend" .) "postgres" }}
{{- $_ = set $queue "backend" "postgres" }}
{{- $postgres := deepCopy (default (dict) $queue.postgres) }}
{{- $_ = set $postgres "dsn_file" (printf "%s/dsn" (include "cortex-bridge.postgresDir" .)) }}
{{- $_ = set $queue "postgres" $postgres }}
{{- else }}
{{- $_ = set $queue "path" (printf "%s/queue.db" (include "cortex-bridge.dataDir" .)) }}
{{- end }}
{{- $_ = set $cfg "queue" $queue }}
{{- $secretsDir := include "cortex-bridge.secretsDir" . }}
{{- if include "cortex-bridge.hasCortexToken" . }}
{{- $cortex := deepCopy (default (dict) $cfg.cortex) }}
{{- $_ = set $cortex "token_file" (printf "%s/%s" $secretsDir .Values.secrets.cortexTokenKey) }}
{{- $_ = set $cfg "cortex" $cortex }}
{{- end }}
{{- if .Values.secrets.ingestTokenKey }}
{{- $ingest := deepCopy (default (dict) $cfg.ingest) }}
{{- $_ = set $ingest "token_file" (printf "%s/%s" $secretsDir .Values.secrets.ingestTokenKey) }}
{{- $_ = unset $ingest "allow_unauthenticated" }}
{{- $_ = set $cfg "ingest" $ingest }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* terminationGracePeriodSeconds: preStop sleep + drain deadline + margin, or a checked explicit value. */}}
{{- define "cortex-bridge.terminationGracePeriod" -}}
{{- $deadline := 25.0 }}
{{- if and .Values.config.drain (hasKey .Values.config.drain "deadline_seconds") }}
{{- $deadline = float64 .Values.config.drain.deadline_seconds }}
{{- end }}
{{- $minimum := add (int .Values.preStopSleepSeconds) (int (ceil $deadline)) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $minimum 10 }}
{{- else if le (int .Values.terminationGracePeriodSeconds) $minimum }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + config.drain.deadline_seconds (%d), or the kubelet kills the bridge mid-drain" (int .Values.terminationGracePeriodSeconds) $minimum) }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* "true" when an Ingress path prefix reaches POST /v1/records. */}}
{{- define "cortex-bridge.ingressRoutesRecords" -}}
{{- range .Values.ingress.paths }}
{{- if has (trimSuffix "/" (toString .)) (list "" "/v1" "/v1/records") }}true{{- end }}
{{- end }}
{{- end }}

{{/* Checks that JSON Schema cannot express. */}}
{{- define "cortex-bridge.validate" -}}
{{- if and (eq (include "cortex-bridge.backend" .) "postgres") (not .Values.queue.postgres.existingSecret) }}
{{- fail (printf "queue.backend postgres needs queue.postgres.existingSecret: the name of a Secret in namespace %s whose key %q holds the PostgreSQL DSN, e.g. kubectl -n %s create secret generic cortex-bridge-postgres --from-literal=%s='postgresql://USER:PASSWORD@HOST:5432/DBNAME?sslmode=verify-full' (the chart never takes the DSN itself: it would end up in the release history)" .Release.Namespace .Values.queue.postgres.key .Release.Namespace .Values.queue.postgres.key) }}
{{- end }}
{{- if and (not .Values.secrets.ingestTokenKey) (not (and .Values.config.ingest .Values.config.ingest.allow_unauthenticated)) }}
{{- fail "POST /v1/records has no credentials: set secrets.ingestTokenKey (a key of the Secret holding its bearer token) or config.ingest.allow_unauthenticated: true" }}
{{- end }}
{{- if and .Values.ingress.enabled (not .Values.secrets.ingestTokenKey) (include "cortex-bridge.ingressRoutesRecords" .) }}
{{- fail "ingress.paths routes POST /v1/records, which takes no token: set secrets.ingestTokenKey, or remove /v1/records from ingress.paths (e.g. --set 'ingress.paths={/webhooks}')" }}
{{- end }}
{{- if and (not .Values.secrets.existingSecret) .Values.secrets.ingestTokenKey (not (hasKey .Values.secrets.data .Values.secrets.ingestTokenKey)) }}
{{- fail (printf "secrets.ingestTokenKey is %q but secrets.data has no such key (and no secrets.existingSecret is set)" .Values.secrets.ingestTokenKey) }}
{{- end }}
{{- if eq (int .Values.ports.ingest) (int .Values.ports.metrics) }}
{{- fail (printf "ports.ingest and ports.metrics are both %d; the bridge listens on two different ports" (int .Values.ports.ingest)) }}
{{- end }}
{{- $names := list }}
{{- range .Values.config.sources }}
{{- if has .name $names }}
{{- fail (printf "config.sources: the name %q is used twice; each source needs its own (it is its URL /webhooks/<name>)" .name) }}
{{- end }}
{{- $names = append $names .name }}
{{- end }}
{{- end }}
