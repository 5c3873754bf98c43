{{/* Names, labels and the pieces every workload shares. */}}

{{- define "gpuledger.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 38 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 38 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "gpuledger.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "gpuledger.labels" -}}
{{ include "gpuledger.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of one component: (dict "ctx" $ "component" "agent") */}}
{{- define "gpuledger.componentLabels" -}}
{{ include "gpuledger.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}
{{- define "gpuledger.componentSelector" -}}
{{ include "gpuledger.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "gpuledger.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "gpuledger.agentServiceAccount" -}}
{{- .Values.agent.serviceAccount.name | default (printf "%s-agent" (include "gpuledger.fullname" .)) -}}
{{- end -}}

{{- define "gpuledger.dbPath" -}}/data/gpuledger.duckdb{{- end -}}

{{/* Values a shape cannot run with: refused at render time with what to set. */}}
{{- define "gpuledger.checkMode" -}}
{{- if and (eq .Values.mode "agent") (not .Values.agent.enabled) -}}
{{- fail "mode=agent renders only the agent: set agent.enabled=true" -}}
{{- end -}}
{{- if eq .Values.mode "lake" -}}
{{- if not (or .Values.lake.existingSecret .Values.lake.catalogUri) -}}
{{- fail "mode=lake needs the catalog: lake.existingSecret (a Secret with GPULEDGER_LAKE_CATALOG_URI and the AWS_* keys) or lake.catalogUri" -}}
{{- end -}}
{{- if not .Values.lake.warehouse -}}
{{- fail "mode=lake needs lake.warehouse: where the tables' files go, e.g. s3://gpuledger-lake/raw" -}}
{{- end -}}
{{- if lt (int .Values.api.replicas) 2 -}}
{{- fail "mode=lake serves from stateless replicas: set api.replicas to 2 or more" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Container security context of every non-agent container. */}}
{{- define "gpuledger.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Env of the non-agent stages: the shared settings, the SASL password, the DB path. */}}
{{- define "gpuledger.stageEnv" -}}
envFrom:
  - configMapRef:
      name: {{ include "gpuledger.fullname" . }}-config
{{- if eq .Values.mode "lake" }}
  - secretRef:
      name: {{ .Values.lake.existingSecret | default (printf "%s-lake" (include "gpuledger.fullname" .)) }}
{{- end }}
env:
  - name: GPULEDGER_DB_PATH
    value: {{ include "gpuledger.dbPath" . }}
  # numba caches the compiled ledger kernel beside its source or in $HOME: both read-only here
  - name: NUMBA_CACHE_DIR
    value: /tmp/numba-cache
{{- if .Values.kafka.saslPasswordSecret.name }}
  - name: GPULEDGER_KAFKA_SASL_PASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ .Values.kafka.saslPasswordSecret.name }}
        key: {{ .Values.kafka.saslPasswordSecret.key }}
{{- end }}
{{- end -}}

{{/* The configuration files values can carry (TOML text), as "valueKey: fileName:SETTING_ENV" lines: each
non-empty one is a key of the ConfigMap <fullname>-files, mounted at /etc/gpuledger/config in every stage but
the agent, and its path setting is in <fullname>-config (so `kubectl exec ... gpuledger report ...` reads it too). */}}
{{- define "gpuledger.configFiles" -}}
prices: prices.toml:GPULEDGER_PRICES_PATH
tenancy: tenancy.toml:GPULEDGER_TENANCY_PATH
cloudRates: cloud_rates.toml:GPULEDGER_CLOUD_RATES_PATH
nodePools: node_pools.toml:GPULEDGER_NODE_POOLS_PATH
budgets: budgets.toml:GPULEDGER_BUDGETS_PATH
workUnits: work_units.toml:GPULEDGER_WORK_UNITS_PATH
queues: queues.toml:GPULEDGER_QUEUES_PATH
{{- end -}}

{{/* "true" when values carry at least one configuration file. */}}
{{- define "gpuledger.hasFiles" -}}
{{- range $key, $_ := include "gpuledger.configFiles" . | fromYaml -}}
{{- if index $.Values.config $key }}true{{ end -}}
{{- end -}}
{{- end -}}

{{/* Volume mounts every non-agent stage shares (the DuckDB volume is added by the caller). */}}
{{- define "gpuledger.stageMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if include "gpuledger.hasFiles" . }}
- name: files
  mountPath: /etc/gpuledger/config
  readOnly: true
{{- end }}
{{- if .Values.kafka.caConfigMap.name }}
- name: kafka-ca
  mountPath: /etc/gpuledger/kafka-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "gpuledger.stageVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
{{- if include "gpuledger.hasFiles" . }}
- name: files
  configMap:
    name: {{ include "gpuledger.fullname" . }}-files
{{- end }}
{{- if .Values.kafka.caConfigMap.name }}
- name: kafka-ca
  configMap:
    name: {{ .Values.kafka.caConfigMap.name }}
{{- end }}
{{- end -}}

{{/* Affinity of a CronJob pod that must mount the embedded pod's ReadWriteOnce volume: the same node. */}}
{{- define "gpuledger.sameNodeAsEmbedded" -}}
affinity:
  podAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "gpuledger.componentSelector" (dict "ctx" . "component" "embedded") | nindent 12 }}
{{- end -}}

{{/* The data volume of a CronJob pod in the embedded shape. */}}
{{- define "gpuledger.dataClaim" -}}
{{- .Values.embedded.persistence.existingClaim | default (printf "data-%s-0" (include "gpuledger.fullname" .)) -}}
{{- end -}}

{{/* "true" unless mode=agent (a remote GPU cluster whose agents send to a central Kafka): ingest, attribution,
the API, the CronJobs, dashboards, the KafkaTopic and their monitors, alerts and policies are rendered. */}}
{{- define "gpuledger.pipeline" -}}
{{- if ne .Values.mode "agent" -}}true{{- end -}}
{{- end -}}
