{{- define "veil-kms.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "veil-kms.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "veil-kms.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "veil-kms.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "veil-kms.selectorLabels" -}}
app.kubernetes.io/name: {{ include "veil-kms.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "veil-kms.labels" -}}
{{ include "veil-kms.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: key-service
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "veil-kms.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "veil-kms.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "veil-kms.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "veil-kms.tlsSecret" -}}
{{- if .Values.tls.certManager.enabled -}}
{{- printf "%s-tls" (include "veil-kms.fullname" .) -}}
{{- else -}}
{{- required "tls.existingSecret is required unless tls.certManager.enabled (a kubernetes.io/tls Secret for the server)" .Values.tls.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "veil-kms.headless" -}}
{{- printf "%s-pods" (include "veil-kms.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The pod template shared by the StatefulSet and the Deployment. */}}
{{- define "veil-kms.podTemplate" -}}
metadata:
  labels:
    {{- include "veil-kms.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    {{- if .Values.metrics.scrapeAnnotations }}
    prometheus.io/scrape: "true"
    prometheus.io/scheme: https
    prometheus.io/port: {{ .Values.port | quote }}
    prometheus.io/path: /metrics
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "veil-kms.serviceAccountName" . }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- with .Values.runtimeClassName }}
  runtimeClassName: {{ . }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    fsGroup: 65532
    fsGroupChangePolicy: OnRootMismatch
    seccompProfile:
      type: RuntimeDefault
  terminationGracePeriodSeconds: 30
  containers:
    - name: kms
      image: {{ include "veil-kms.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command: ["/usr/local/bin/veil"]
      args:
        - kms
        - serve
        {{- if eq .Values.store.type "postgres" }}
        - --store
        - $(VEIL_KMS_STORE)
        {{- else }}
        - --data
        - /var/lib/veil-kms
        {{- end }}
        - --listen
        - 0.0.0.0:{{ .Values.port }}
        - --tls-cert
        - /etc/veil-kms/tls/tls.crt
        - --tls-key
        - /etc/veil-kms/tls/tls.key
        - --log-level
        - {{ .Values.logLevel }}
        {{- if .Values.adminClientCA.existingSecret }}
        - --admin-client-ca
        - /etc/veil-kms/admin-ca/{{ .Values.adminClientCA.key }}
        {{- end }}
        {{- if .Values.attestation.simCA.existingSecret }}
        - --sim-ca
        - /etc/veil-kms/sim-ca/{{ .Values.attestation.simCA.key }}
        {{- end }}
        {{- if .Values.attestation.collateralConfigMap }}
        - --collateral
        - /etc/veil-kms/collateral
        {{- end }}
        {{- if .Values.attestation.attest }}
        - --attest
        {{- end }}
      env:
        # kubectl exec'd veil commands (unseal) write nothing else.
        - name: HOME
          value: /tmp
      {{- if eq .Values.store.type "postgres" }}
        - name: VEIL_KMS_STORE
          valueFrom:
            secretKeyRef:
              name: {{ required "store.postgres.existingSecret is required with store.type=postgres" .Values.store.postgres.existingSecret }}
              key: {{ .Values.store.postgres.key }}
      {{- end }}
      ports:
        - name: https
          containerPort: {{ .Values.port }}
          protocol: TCP
      # A sealed service is alive but not ready: it leaves the Service's
      # endpoints until operators unseal it (docs/deploy.md).
      readinessProbe:
        httpGet:
          path: /readyz
          port: https
          scheme: HTTPS
        periodSeconds: 5
        failureThreshold: 2
      livenessProbe:
        httpGet:
          path: /healthz
          port: https
          scheme: HTTPS
        initialDelaySeconds: 5
        periodSeconds: 10
        failureThreshold: 6
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        privileged: false
        capabilities:
          drop: ["ALL"]
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      volumeMounts:
        - name: tls
          mountPath: /etc/veil-kms/tls
          readOnly: true
        - name: tmp
          mountPath: /tmp
        {{- if ne .Values.store.type "postgres" }}
        - name: data
          mountPath: /var/lib/veil-kms
        {{- end }}
        {{- if .Values.adminClientCA.existingSecret }}
        - name: admin-ca
          mountPath: /etc/veil-kms/admin-ca
          readOnly: true
        {{- end }}
        {{- if .Values.attestation.simCA.existingSecret }}
        - name: sim-ca
          mountPath: /etc/veil-kms/sim-ca
          readOnly: true
        {{- end }}
        {{- if .Values.attestation.collateralConfigMap }}
        - name: collateral
          mountPath: /etc/veil-kms/collateral
          readOnly: true
        {{- end }}
  volumes:
    - name: tls
      secret:
        secretName: {{ include "veil-kms.tlsSecret" . }}
        defaultMode: 0440
    - name: tmp
      emptyDir:
        medium: Memory
        sizeLimit: 16Mi
    {{- if .Values.adminClientCA.existingSecret }}
    - name: admin-ca
      secret:
        secretName: {{ .Values.adminClientCA.existingSecret }}
    {{- end }}
    {{- if .Values.attestation.simCA.existingSecret }}
    - name: sim-ca
      secret:
        secretName: {{ .Values.attestation.simCA.existingSecret }}
    {{- end }}
    {{- if .Values.attestation.collateralConfigMap }}
    - name: collateral
      configMap:
        name: {{ .Values.attestation.collateralConfigMap }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
