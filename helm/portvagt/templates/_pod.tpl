{{/*
The pod, shared by the Deployment and the StatefulSet (see portvagt.workloadKind).
*/}}
{{- define "portvagt.podTemplate" -}}
metadata:
  labels:
    {{- include "portvagt.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    {{- /*
    The gateway reads portvagt.toml once at start, so a change to it rolls the pods. The rules,
    certificates, keys and CRLs are reloaded in place when their mounted files change: no
    checksum for them, so rotating one drops no connection.
    */}}
    checksum/config: {{ include "portvagt.configToml" . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "portvagt.serviceAccountName" . }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  containers:
    - name: portvagt
      image: {{ include "portvagt.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - serve
        - --config
        - /etc/portvagt/portvagt.toml
      ports:
        - name: fhir
          containerPort: {{ .Values.containerPorts.fhir }}
          protocol: TCP
        - name: admin
          containerPort: {{ .Values.containerPorts.admin }}
          protocol: TCP
        {{- if .Values.config.citizen.enabled }}
        - name: citizen
          containerPort: {{ .Values.containerPorts.citizen }}
          protocol: TCP
        {{- end }}
      {{- with .Values.extraEnv }}
      env:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: admin
          scheme: HTTP
        {{- toYaml .Values.probes.liveness | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: admin
          scheme: HTTP
        {{- toYaml .Values.probes.readiness | nindent 8 }}
      {{- if gt (int .Values.preStopSleepSeconds) 0 }}
      lifecycle:
        preStop:
          exec:
            command:
              - sleep
              - {{ .Values.preStopSleepSeconds | quote }}
      {{- end }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/portvagt/portvagt.toml
          subPath: portvagt.toml
          readOnly: true
        - name: server-tls
          mountPath: /etc/portvagt/tls
          readOnly: true
        - name: client-ca
          mountPath: /etc/portvagt/client-ca
          readOnly: true
        {{- if .Values.policyRules.enabled }}
        - name: rules
          mountPath: /etc/portvagt/rules
          readOnly: true
        {{- end }}
        {{- if .Values.config.token_exchange.enabled }}
        - name: token-signing-key
          mountPath: /etc/portvagt/token-exchange
          readOnly: true
        - name: trusted-sts
          mountPath: /etc/portvagt/trusted-sts
          readOnly: true
        {{- end }}
        {{- range (include "portvagt.tlsSecretMounts" . | fromYaml).mounts }}
        - name: {{ .volume }}
          mountPath: {{ .dir }}
          readOnly: true
        {{- end }}
        {{- range (include "portvagt.redis" . | fromYaml).mounts }}
        - name: {{ .volume }}
          mountPath: {{ .dir }}
          readOnly: true
        {{- end }}
        {{- if .Values.config.audit.enabled }}
        - name: audit-spool
          mountPath: /var/lib/portvagt/audit
        {{- end }}
        {{- if include "portvagt.auditSealed" . }}
        - name: audit-seal-key
          mountPath: /etc/portvagt/audit-seal
          readOnly: true
        {{- end }}
        {{- if .Values.pagingKey.existingSecret }}
        - name: paging-key
          mountPath: /etc/portvagt/paging
          readOnly: true
        {{- end }}
        {{- if .Values.backendIdentityKey.existingSecret }}
        - name: backend-identity-key
          mountPath: /etc/portvagt/backend-identity
          readOnly: true
        {{- end }}
        {{- if .Values.config.decision_log.enabled }}
        - name: decisions
          mountPath: /var/lib/portvagt/decisions
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "portvagt.fullname" . }}-config
    - name: server-tls
      secret:
        secretName: {{ include "portvagt.serverTlsSecret" . }}
        defaultMode: 0440
        items:
          - key: {{ .Values.serverTls.certKey }}
            path: tls.crt
          - key: {{ .Values.serverTls.keyKey }}
            path: tls.key
    - name: client-ca
      secret:
        secretName: {{ include "portvagt.clientCaSecret" . }}
        defaultMode: 0440
        items:
          - key: {{ .Values.clientCa.caKey }}
            path: ca.crt
          {{- range .Values.clientCa.crlKeys }}
          - key: {{ . }}
            path: {{ . }}
          {{- end }}
    {{- if .Values.policyRules.enabled }}
    - name: rules
      configMap:
        name: {{ include "portvagt.fullname" . }}-rules
    {{- end }}
    {{- if .Values.config.token_exchange.enabled }}
    - name: token-signing-key
      secret:
        secretName: {{ include "portvagt.signingKeySecret" . }}
        defaultMode: 0440
        items:
          - key: {{ .Values.tokenExchangeKeys.signingKey.key }}
            path: signing-key.pem
    - name: trusted-sts
      secret:
        secretName: {{ include "portvagt.trustedStsSecret" . }}
        defaultMode: 0440
        items:
          {{- range .Values.tokenExchangeKeys.trustedSts.keys }}
          - key: {{ .key }}
            path: {{ .key }}
          {{- end }}
    {{- end }}
    {{- if include "portvagt.auditSealed" . }}
    - name: audit-seal-key
      secret:
        secretName: {{ .Values.auditSealKey.existingSecret }}
        defaultMode: 0440
        items:
          - key: {{ .Values.auditSealKey.key }}
            path: seal.key
          {{- with .Values.auditSealKey.trustedJwksKey }}
          - key: {{ . }}
            path: trusted-jwks.json
          {{- end }}
    {{- end }}
    {{- if .Values.pagingKey.existingSecret }}
    - name: paging-key
      secret:
        secretName: {{ .Values.pagingKey.existingSecret }}
        defaultMode: 0440
        items:
          - key: {{ .Values.pagingKey.key }}
            path: paging.key
    {{- end }}
    {{- if .Values.backendIdentityKey.existingSecret }}
    - name: backend-identity-key
      secret:
        secretName: {{ .Values.backendIdentityKey.existingSecret }}
        defaultMode: 0440
        items:
          - key: {{ .Values.backendIdentityKey.key }}
            path: signing-key.pem
    {{- end }}
    {{- if .Values.config.decision_log.enabled }}
    - name: decisions
      emptyDir:
        sizeLimit: {{ mul (add1 (int .Values.config.decision_log.keep)) (int64 .Values.config.decision_log.max_bytes) }}
    {{- end }}
    {{- /* CA and client certificates of the backends, the audit repository and the relation service (tlsSecret). */}}
    {{- range (include "portvagt.tlsSecretMounts" . | fromYaml).mounts }}
    - name: {{ .volume }}
      secret:
        secretName: {{ .secretName }}
        defaultMode: 0440
        items:
          {{- range .items }}
          - key: {{ .key }}
            path: {{ .path }}
          {{- end }}
    {{- end }}
    {{- /* Redis' CA, client certificate and password ([redis]), while something uses Redis. */}}
    {{- range (include "portvagt.redis" . | fromYaml).mounts }}
    - name: {{ .volume }}
      {{- if .secretName }}
      secret:
        secretName: {{ .secretName }}
      {{- else }}
      configMap:
        name: {{ .configMapName }}
      {{- end }}
        defaultMode: 0440
        items:
          {{- range .items }}
          - key: {{ .key }}
            path: {{ .path }}
          {{- end }}
    {{- end }}
    {{- if .Values.config.audit.enabled }}
    {{- if eq .Values.auditSpool.type "existingClaim" }}
    - name: audit-spool
      persistentVolumeClaim:
        claimName: {{ .Values.auditSpool.existingClaim }}
    {{- else if eq .Values.auditSpool.type "emptyDir" }}
    - name: audit-spool
      emptyDir:
        sizeLimit: {{ .Values.auditSpool.emptyDir.sizeLimit }}
    {{- end }}
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
  topologySpreadConstraints:
    {{- range . }}
    {{- $constraint := deepCopy . }}
    {{- if not $constraint.labelSelector }}
    {{- $_ := set $constraint "labelSelector" (dict "matchLabels" (include "portvagt.selectorLabels" $ | fromYaml)) }}
    {{- end }}
    - {{ toYaml $constraint | indent 6 | trim }}
    {{- end }}
  {{- end }}
{{- end }}
