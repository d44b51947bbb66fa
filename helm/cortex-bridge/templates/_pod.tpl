{{/* The pod template, shared by the StatefulSet (queue.backend sqlite) and the Deployment
(postgres). It starts at column 0: include it with `nindent` under `template:`. */}}
{{- define "cortex-bridge.podTemplate" -}}
{{- $secretName := include "cortex-bridge.secretName" . }}
{{- $postgres := eq (include "cortex-bridge.backend" .) "postgres" -}}
metadata:
  labels:
    {{- include "cortex-bridge.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # The bridge reads its config once at start: a changed config rolls the pods.
    checksum/config: {{ include "cortex-bridge.config" . | sha256sum }}
    {{- if and (not .Values.secrets.existingSecret) .Values.secrets.data }}
    checksum/secret: {{ toJson .Values.secrets.data | sha256sum }}
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "cortex-bridge.serviceAccountName" . }}
  automountServiceAccountToken: {{ include "cortex-bridge.automountToken" . }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  # Longer than the preStop sleep plus the drain deadline, so the kubelet never kills the
  # bridge while it finishes in-flight Cortex requests and checkpoints the queue.
  terminationGracePeriodSeconds: {{ include "cortex-bridge.terminationGracePeriod" . }}
  securityContext:
    runAsNonRoot: true
    {{- with .Values.podSecurityContext.runAsUser }}
    runAsUser: {{ . }}
    {{- end }}
    {{- with .Values.podSecurityContext.runAsGroup }}
    runAsGroup: {{ . }}
    {{- end }}
    {{- with .Values.podSecurityContext.fsGroup }}
    fsGroup: {{ . }}
    # Re-own the volume only when needed: a large queue volume otherwise slows every start.
    fsGroupChangePolicy: OnRootMismatch
    {{- end }}
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: cortex-bridge
      image: {{ include "cortex-bridge.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      # The image's entrypoint: `cortex-bridge run`, reading BRIDGE_CONFIG.
      env:
        - name: BRIDGE_CONFIG
          value: {{ include "cortex-bridge.configDir" . }}/config.yaml
        - name: TMPDIR
          value: /tmp
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: http
          containerPort: {{ .Values.ports.ingest }}
          protocol: TCP
        - name: metrics
          containerPort: {{ .Values.ports.metrics }}
          protocol: TCP
      startupProbe:
        httpGet:
          path: /healthz
          port: http
        periodSeconds: {{ .Values.probes.startup.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.startup.failureThreshold }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: http
        periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
      # 503 while starting, draining, unable to write the queue, or while Cortex rejects the token.
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
      {{- if gt (int .Values.preStopSleepSeconds) 0 }}
      lifecycle:
        preStop:
          sleep:
            seconds: {{ .Values.preStopSleepSeconds }}
      {{- end }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        allowPrivilegeEscalation: false
        privileged: false
        readOnlyRootFilesystem: true
        runAsNonRoot: true
        capabilities:
          drop:
            - ALL
        seccompProfile:
          type: RuntimeDefault
      volumeMounts:
        {{- if not $postgres }}
        - name: queue
          mountPath: {{ include "cortex-bridge.dataDir" . }}
        {{- end }}
        - name: config
          mountPath: {{ include "cortex-bridge.configDir" . }}
          readOnly: true
        {{- if $secretName }}
        - name: secrets
          mountPath: {{ include "cortex-bridge.secretsDir" . }}
          readOnly: true
        {{- end }}
        {{- if $postgres }}
        - name: postgres
          mountPath: {{ include "cortex-bridge.postgresDir" . }}
          readOnly: true
        {{- end }}
        - name: tmp
          mountPath: /tmp
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "cortex-bridge.fullname" . }}
    {{- if $secretName }}
    # Mounted as files (never environment variables), readable by the pod's group only;
    # the kubelet refreshes them in place, so a rotated Cortex token is read on the next 401.
    - name: secrets
      secret:
        secretName: {{ $secretName }}
        defaultMode: 0440
    {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: {{ .Values.tmpSizeLimit }}
    {{- if $postgres }}
    # The DSN holds the database password: only the one key, as the file queue.postgres.dsn_file
    # reads (never an environment variable, never the ConfigMap). Not a subPath mount, so the
    # kubelet updates it in place when the Secret is rotated.
    - name: postgres
      secret:
        secretName: {{ .Values.queue.postgres.existingSecret | quote }}
        defaultMode: 0440
        items:
          - key: {{ .Values.queue.postgres.key | quote }}
            path: dsn
    {{- else if not .Values.persistence.enabled }}
    - name: queue
      emptyDir: {}
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  {{- $constraints := list }}
  {{- range . }}
  {{- $constraint := deepCopy . }}
  {{- if not (hasKey $constraint "labelSelector") }}
  {{- $_ := set $constraint "labelSelector" (dict "matchLabels" (include "cortex-bridge.selectorLabels" $ | fromYaml)) }}
  {{- end }}
  {{- $constraints = append $constraints $constraint }}
  {{- end }}
  topologySpreadConstraints:
    {{- toYaml $constraints | nindent 4 }}
  {{- end }}
{{- end }}
