{{/*
The gateway's configuration file (README "Configuration"), from `config` and the fixed mount
paths of the Secrets. TOML wants a table's keys before its sub-tables, hence the order below
(each [[upstream]]'s keys, then its [upstream.backend]; [relationship]'s keys before [relationship.service];
[audit]'s seal key and trusted seal keys before [audit.ship]);
[redis] (paths and the ACL user only, never the password) before the tables whose redis_url it serves;
[token_exchange] comes last.
*/}}
{{- define "portvagt.configToml" -}}
{{- $cfg := .Values.config -}}
{{- $tlsFiles := dict -}}
{{- range (include "portvagt.tlsSecretMounts" . | fromYaml).mounts -}}
{{- $_ := set $tlsFiles .field .files -}}
{{- end -}}
# Rendered by the portvagt Helm chart from its values. Certificates and keys are files
# mounted from Secrets; only their paths are written here.

[server]
listen = "0.0.0.0:{{ .Values.containerPorts.fhir }}"
admin_listen = "0.0.0.0:{{ .Values.containerPorts.admin }}"
replicas = {{ if .Values.autoscaling.enabled }}{{ .Values.autoscaling.maxReplicas | int }}{{ else }}{{ .Values.replicaCount | int }}{{ end }}
{{- include "portvagt.tomlKeys" (dict "table" $cfg.server) }}

[tls]
cert = "/etc/portvagt/tls/tls.crt"
key = "/etc/portvagt/tls/tls.key"
client_ca = "/etc/portvagt/client-ca/ca.crt"
crls = {{ include "portvagt.crlPaths" . }}

[limits]
{{- include "portvagt.tomlKeys" (dict "table" $cfg.limits) }}
{{- range $cfg.issuers }}

[[issuer]]
{{- include "portvagt.tomlKeys" (dict "table" . "first" (list "issuer" "audiences")) }}
{{- with .claims }}

[issuer.claims]
{{- include "portvagt.tomlKeys" (dict "table" .) }}
{{- end }}
{{- with .introspection }}

[issuer.introspection]
{{- include "portvagt.tomlKeys" (dict "table" . "first" (list "url" "client_id")) }}
{{- end }}
{{- end }}
{{- range $cfg.routes }}

[[route]]
{{- include "portvagt.tomlKeys" (dict "table" . "first" (list "path_prefix")) }}
{{- end }}
{{- range $cfg.operations }}

[[operation]]
{{- include "portvagt.tomlKeys" (dict "table" . "first" (list "name")) }}
{{- end }}

[backend]
{{- include "portvagt.tlsTomlKeys" (dict "table" $cfg.backend "files" (get $tlsFiles "config.backend") "first" (list "url")) }}
{{- with $cfg.backend.identity }}
{{- if .enabled }}

[backend.identity]
signing_key = "/etc/portvagt/backend-identity/signing-key.pem"
{{- include "portvagt.tomlKeys" (dict "table" . "skip" (list "enabled")) }}
{{- end }}
{{- end }}
{{- range $i, $upstream := $cfg.upstreams }}

[[upstream]]
{{- include "portvagt.tomlKeys" (dict "table" $upstream "first" (list "name" "path_prefix" "resource_types")) }}

[upstream.backend]
{{- include "portvagt.tlsTomlKeys" (dict "table" $upstream.backend "files" (get $tlsFiles (printf "config.upstreams[%d].backend" $i)) "first" (list "url")) }}
{{- with $upstream.backend.identity }}
{{- if .enabled }}

[upstream.backend.identity]
signing_key = "/etc/portvagt/backend-identity/signing-key.pem"
{{- include "portvagt.tomlKeys" (dict "table" . "skip" (list "enabled")) }}
{{- end }}
{{- end }}
{{- end }}

[smart]
{{- include "portvagt.tomlKeys" (dict "table" $cfg.smart) }}

[policy]
{{- include "portvagt.tomlKeys" (dict "table" $cfg.policy) }}
{{- if .Values.policyRules.enabled }}
rules_file = "/etc/portvagt/rules/rules.toml"
{{- if .Values.policyRules.shadowRules }}
shadow_rules_file = "/etc/portvagt/rules/rules-next.toml"
{{- end }}
{{- end }}

[paging]
{{- include "portvagt.tomlKeys" (dict "table" $cfg.paging) }}
{{- if .Values.pagingKey.existingSecret }}
key_file = "/etc/portvagt/paging/paging.key"
{{- end }}

[tracing]
{{- include "portvagt.tomlKeys" (dict "table" $cfg.tracing) }}
{{- if $cfg.decision_log.enabled }}

[decision_log]
path = "/var/lib/portvagt/decisions/decisions.jsonl"
{{- include "portvagt.tomlKeys" (dict "table" $cfg.decision_log "skip" (list "enabled")) }}
{{- end }}

[log]
{{- include "portvagt.tomlKeys" (dict "table" $cfg.log) }}
{{- if $cfg.consent.enabled }}

[consent]
{{- include "portvagt.tomlKeys" (dict "table" $cfg.consent "skip" (list "enabled" "useRedis")) }}
{{- if $cfg.consent.useRedis }}
redis_url = {{ include "portvagt.redisUrl" . }}
{{- end }}
{{- end }}
{{- if $cfg.relationship.enabled }}

[relationship]
{{- include "portvagt.tomlKeys" (dict "table" $cfg.relationship "first" (list "roles" "source") "skip" (list "enabled")) }}
{{- if $cfg.relationship.service.url }}

[relationship.service]
{{- include "portvagt.tlsTomlKeys" (dict "table" $cfg.relationship.service "files" (get $tlsFiles "config.relationship.service") "first" (list "url")) }}
{{- end }}
{{- end }}
{{- with (include "portvagt.redis" . | fromYaml).table }}

[redis]
{{- include "portvagt.tomlKeys" (dict "table" . "first" (list "ca_file" "client_cert" "client_key" "username" "password_file")) }}
{{- end }}
{{- if $cfg.rate_limit.enabled }}

[rate_limit]
{{- include "portvagt.tomlKeys" (dict "table" $cfg.rate_limit "first" (list "requests" "window") "skip" (list "enabled" "useRedis")) }}
{{- if $cfg.rate_limit.useRedis }}
redis_url = {{ include "portvagt.redisUrl" . }}
{{- end }}
{{- end }}
{{- if $cfg.mass_lookup.enabled }}

[mass_lookup]
{{- include "portvagt.tomlKeys" (dict "table" $cfg.mass_lookup "first" (list "max_patients" "window") "skip" (list "enabled" "useRedis")) }}
{{- if $cfg.mass_lookup.useRedis }}
redis_url = {{ include "portvagt.redisUrl" . }}
{{- end }}
{{- end }}
{{- if $cfg.audit.enabled }}

[audit]
spool_dir = "/var/lib/portvagt/audit"
{{- include "portvagt.tomlKeys" (dict "table" $cfg.audit "skip" (list "enabled" "seal_key" "seal_key_id" "seal_jwks")) }}
{{- if include "portvagt.auditSealed" . }}
seal_key = "/etc/portvagt/audit-seal/seal.key"
seal_key_id = {{ .Values.auditSealKey.keyId | toJson }}
{{- if .Values.auditSealKey.trustedJwksKey }}
seal_jwks = "/etc/portvagt/audit-seal/trusted-jwks.json"
{{- end }}
{{- end }}
{{- if $cfg.audit.ship.url }}

[audit.ship]
{{- include "portvagt.tlsTomlKeys" (dict "table" $cfg.audit.ship "files" (get $tlsFiles "config.audit.ship") "first" (list "url")) }}
{{- end }}
{{- end }}
{{- if $cfg.citizen.enabled }}

[citizen]
listen = "0.0.0.0:{{ .Values.containerPorts.citizen }}"
{{- include "portvagt.tomlKeys" (dict "table" $cfg.citizen "skip" (list "enabled")) }}
{{- end }}
{{- if $cfg.token_exchange.enabled }}

[token_exchange]
{{- include "portvagt.tomlKeys" (dict "table" $cfg.token_exchange "first" (list "issuer" "audience") "skip" (list "enabled" "useRedis")) }}
signing_key = "/etc/portvagt/token-exchange/signing-key.pem"
trusted_sts = {{ include "portvagt.trustedStsToml" . }}
{{- if $cfg.token_exchange.useRedis }}
redis_url = {{ include "portvagt.redisUrl" . }}
{{- end }}
{{- end }}
{{- end }}

{{/* The shadow rules file, from policyRules.shadowRules. */}}
{{- define "portvagt.shadowRulesToml" -}}
# Rendered by the portvagt Helm chart from policyRules.shadowRules: decided beside the rules on every
# request and never enforced; disagreements go to the decision log.
{{- range .Values.policyRules.shadowRules }}

[[rule]]
{{- include "portvagt.tomlKeys" (dict "table" . "first" (list "name" "effect")) }}
{{- end }}
{{- end }}

{{/* The operator rules file (README "Operator rules"), from policyRules.rules. */}}
{{- define "portvagt.rulesToml" -}}
# Rendered by the portvagt Helm chart from policyRules.rules: a request that scopes allow must
# also be allowed by a rule, and a matching deny rule wins.
{{- range .Values.policyRules.rules }}

[[rule]]
{{- include "portvagt.tomlKeys" (dict "table" . "first" (list "name" "effect")) }}
{{- end }}
{{- end }}
