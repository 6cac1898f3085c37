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
  {{- if include "portvagt.renderedConfig" . }}
  initContainers:
    - name: render-config
      image: {{ include "portvagt.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command:
        - /bin/sh
        - -c
        - |
          # Puts the Redis password in place of the placeholder. Plain shell string operations:
          # no character of the password is special to them.
          set -eu
          umask 077
          placeholder='{{ include "portvagt.redisPasswordPlaceholder" . }}'
          password=$(cat /etc/portvagt/redis/password)
          case "$password" in
            *\'*) echo "redis password: a ' cannot be written in a TOML literal string" >&2; exit 1 ;;
          esac
          if [ "$(printf '%s' "$password" | wc -l)" -ne 0 ]; then
            echo "redis password: a line break cannot be written in a TOML literal string" >&2
            exit 1
          fi
          while IFS= read -r line || [ -n "$line" ]; do
            case "$line" in
              *"$placeholder"*) printf '%s%s%s\n' "${line%%"$placeholder"*}" "$password" "${line#*"$placeholder"}" ;;
              *) printf '%s\n' "$line" ;;
            esac
          done < /etc/portvagt/template/portvagt.toml > /etc/portvagt/rendered/portvagt.toml
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      resources:
        requests:
          cpu: 10m
          memory: 16Mi
        limits:
          cpu: 100m
          memory: 32Mi
      volumeMounts:
        - name: config-template
          mountPath: /etc/portvagt/template
          readOnly: true
        - name: redis-password
          mountPath: /etc/portvagt/redis
          readOnly: true
        - name: config
          mountPath: /etc/portvagt/rendered
  {{- end }}
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
    {{- if include "portvagt.renderedConfig" . }}
    - name: config-template
      configMap:
        name: {{ include "portvagt.fullname" . }}-config
    - name: redis-password
      secret:
        secretName: {{ .Values.redis.auth.existingSecret }}
        defaultMode: 0440
        items:
          - key: {{ .Values.redis.auth.passwordKey }}
            path: password
    - name: config
      emptyDir:
        medium: Memory
        sizeLimit: 1Mi
    {{- else }}
    - name: config
      configMap:
        name: {{ include "portvagt.fullname" . }}-config
    {{- end }}
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
