{{/*
Names, labels and the small decisions several templates share.
*/}}

{{- define "portvagt.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: `<release>-<chart>`, or the release name alone when it already names the chart.
Kubernetes names are DNS labels, hence 63 characters.
*/}}
{{- define "portvagt.fullname" -}}
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

{{- define "portvagt.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "portvagt.labels" -}}
helm.sh/chart: {{ include "portvagt.chart" . }}
{{ include "portvagt.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portvagt
{{- end }}

{{/*
Selector labels never change after install (a Deployment's selector is immutable), so they hold
only the name and the instance.
*/}}
{{- define "portvagt.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portvagt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "portvagt.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "portvagt.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "portvagt.adminServiceName" -}}
{{- printf "%s-admin" (include "portvagt.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The image: by digest when one is given (what runs is then exactly what was scanned), else by tag.
*/}}
{{- define "portvagt.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
A persistent spool needs one volume per replica, because the spool is locked to one process
(spool.lock): a StatefulSet's volumeClaimTemplates give each replica its own, and give it back
after a restart so its unshipped records are shipped. Every other choice is a Deployment.
*/}}
{{- define "portvagt.workloadKind" -}}
{{- if and .Values.config.audit.enabled (eq .Values.auditSpool.type "persistentVolumeClaim") }}
{{- print "StatefulSet" }}
{{- else }}
{{- print "Deployment" }}
{{- end }}
{{- end }}

{{/* Secret names: the one the operator named, else the documented default. */}}
{{- define "portvagt.serverTlsSecret" -}}
{{- default (printf "%s-tls" (include "portvagt.fullname" .)) .Values.serverTls.existingSecret }}
{{- end }}
{{- define "portvagt.clientCaSecret" -}}
{{- default (printf "%s-client-ca" (include "portvagt.fullname" .)) .Values.clientCa.existingSecret }}
{{- end }}
{{- define "portvagt.signingKeySecret" -}}
{{- default (printf "%s-token-signing" (include "portvagt.fullname" .)) .Values.tokenExchangeKeys.signingKey.existingSecret }}
{{- end }}
{{- define "portvagt.trustedStsSecret" -}}
{{- default (printf "%s-trusted-sts" (include "portvagt.fullname" .)) .Values.tokenExchangeKeys.trustedSts.existingSecret }}
{{- end }}

{{/*
Whether the audit chain is sealed: the audit trail is on and auditSealKey names a Secret (no
default name: without one the chain is not sealed, and NOTES.txt warns).
*/}}
{{- define "portvagt.auditSealed" -}}
{{- if and .Values.config.audit.enabled .Values.auditSealKey.existingSecret }}true{{- end }}
{{- end }}

{{/* Whether any part of the configuration talks to Redis. */}}
{{- define "portvagt.usesRedis" -}}
{{- $exchange := and .Values.config.token_exchange.enabled .Values.config.token_exchange.useRedis }}
{{- $rateLimit := and .Values.config.rate_limit.enabled .Values.config.rate_limit.useRedis }}
{{- $massLookup := and .Values.config.mass_lookup.enabled .Values.config.mass_lookup.useRedis }}
{{- $consent := and .Values.config.consent.enabled .Values.config.consent.useRedis }}
{{- if or $exchange $rateLimit $massLookup $consent }}true{{- end }}
{{- end }}

{{/*
The redis_url every table that uses Redis writes: redis.url as given (the schema keeps
credentials out of it).
*/}}
{{- define "portvagt.redisUrl" -}}
{{- required "redis.url is required when token exchange, rate limits, the mass-lookup guard or consent use Redis" .Values.redis.url | toJson }}
{{- end }}

{{/*
`[redis]` and the volumes behind it, while something uses Redis (portvagt.usesRedis), as YAML:
`table`, the keys to write (the paths of the files mounted from redis.tls and redis.auth, and
the ACL user; empty: no [redis] at all), and `mounts`, each with its volume, folder, Secret
(`secretName`) or ConfigMap (`configMapName`), items and what it holds. The pod template mounts
them and the config template writes their paths from this one list, so the two cannot disagree.
The password is never read here: only the path of its mounted file is written.
*/}}
{{- define "portvagt.redis" -}}
{{- $table := dict }}
{{- $mounts := list }}
{{- if include "portvagt.usesRedis" . }}
{{- $redis := .Values.redis }}
{{- $tls := default (dict) $redis.tls }}
{{- $auth := default (dict) $redis.auth }}
{{- $ca := default (dict) $tls.ca }}
{{- if or $ca.existingSecret $ca.existingConfigMap }}
{{- $mount := dict "volume" "redis-ca" "dir" "/etc/portvagt/redis-ca" "items" (list (dict "key" $ca.key "path" "ca.crt")) "what" "Redis CA bundle" }}
{{- if $ca.existingSecret }}
{{- $_ := set $mount "secretName" $ca.existingSecret }}
{{- else }}
{{- $_ := set $mount "configMapName" $ca.existingConfigMap }}
{{- end }}
{{- $mounts = append $mounts $mount }}
{{- $_ := set $table "ca_file" "/etc/portvagt/redis-ca/ca.crt" }}
{{- end }}
{{- $client := default (dict) $tls.clientCert }}
{{- if $client.existingSecret }}
{{- $mounts = append $mounts (dict "volume" "redis-client-tls" "dir" "/etc/portvagt/redis-client-tls" "secretName" $client.existingSecret "items" (list (dict "key" $client.certKey "path" "tls.crt") (dict "key" $client.keyKey "path" "tls.key")) "what" "Redis client certificate and key") }}
{{- $_ := set $table "client_cert" "/etc/portvagt/redis-client-tls/tls.crt" }}
{{- $_ := set $table "client_key" "/etc/portvagt/redis-client-tls/tls.key" }}
{{- end }}
{{- if $auth.existingSecret }}
{{- $mounts = append $mounts (dict "volume" "redis-password" "dir" "/etc/portvagt/redis-auth" "secretName" $auth.existingSecret "items" (list (dict "key" $auth.passwordKey "path" "password")) "what" "Redis password") }}
{{- $_ := set $table "password_file" "/etc/portvagt/redis-auth/password" }}
{{- end }}
{{- with $auth.username }}
{{- $_ := set $table "username" . }}
{{- end }}
{{- end }}
{{- toYaml (dict "table" $table "mounts" $mounts) }}
{{- end }}

{{/*
`key = value` lines for the scalar and list entries of a dict: the keys named in `first` in that
order, then the rest in key order. Values are written as JSON, which is valid TOML for strings,
numbers, booleans and lists of them. null and "" are left out so the gateway's default applies;
tables (dicts) and the chart's own switches (`skip`) are left to the caller. Each line starts
with a newline, so the caller writes `{{- include ... }}` right after the table header.
Usage: include "portvagt.tomlKeys" (dict "table" $dict "first" (list "url") "skip" (list "enabled"))
*/}}
{{- define "portvagt.tomlKeys" -}}
{{- $table := .table }}
{{- $skip := default (list) .skip }}
{{- $first := default (list) .first }}
{{- $rest := list }}
{{- range $key := keys $table | sortAlpha }}
{{- if not (has $key $first) }}
{{- $rest = append $rest $key }}
{{- end }}
{{- end }}
{{- $keys := concat $first $rest }}
{{- range $key := $keys }}
{{- $value := get $table $key }}
{{- if and (hasKey $table $key) (not (has $key $skip)) (not (kindIs "map" $value)) (not (kindIs "invalid" $value)) (ne (toString $value) "") }}
{{ $key }} = {{ $value | toJson }}
{{- end }}
{{- end }}
{{- end }}

{{/* The seconds in a whole-seconds duration such as `10s`. */}}
{{- define "portvagt.seconds" -}}
{{- trimSuffix "s" . | int }}
{{- end }}

{{/*
Settings that cannot work together are refused at render time, with the value to change.
*/}}
{{- define "portvagt.validate" -}}
{{- $grace := include "portvagt.seconds" .Values.config.server.shutdown_grace | int }}
{{- $needed := add $grace .Values.preStopSleepSeconds }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be longer than preStopSleepSeconds + config.server.shutdown_grace (%d s), or in-flight requests are killed" (int .Values.terminationGracePeriodSeconds) (int $needed)) }}
{{- end }}
{{- if and .Values.config.audit.enabled (eq .Values.auditSpool.type "existingClaim") }}
{{- if not .Values.auditSpool.existingClaim }}
{{- fail "auditSpool.existingClaim must name a PersistentVolumeClaim when auditSpool.type is existingClaim" }}
{{- end }}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}
{{- fail "auditSpool.type existingClaim allows one replica only (the spool is locked to one process): use persistentVolumeClaim for more" }}
{{- end }}
{{- end }}
{{- $identity := .Values.config.backend.identity.enabled }}
{{- range .Values.config.upstreams }}
{{- if and .backend.identity .backend.identity.enabled }}{{- $identity = true }}{{- end }}
{{- end }}
{{- if and $identity (not .Values.backendIdentityKey.existingSecret) }}
{{- fail "an identity assertion is enabled for a backend: set backendIdentityKey.existingSecret (the key it is signed with)" }}
{{- end }}
{{- if and .Values.policyRules.shadowRules (not .Values.config.decision_log.enabled) }}
{{- fail "policyRules.shadowRules write their disagreements to the decision log: enable config.decision_log" }}
{{- end }}
{{- if and .Values.policyRules.shadowRules (not .Values.policyRules.enabled) }}
{{- fail "policyRules.shadowRules are tried beside policyRules.rules: enable policyRules" }}
{{- end }}
{{- $citizen := .Values.config.citizen }}
{{- if and $citizen.enabled $citizen.blocks (not (and .Values.config.consent.enabled .Values.config.audit.enabled)) }}
{{- fail "config.citizen.blocks needs config.consent.enabled (a block nobody enforces blocks nobody) and config.audit.enabled (blocks are taken from her access log)" }}
{{- end }}
{{- if and .Values.policyRules.enabled (not .Values.policyRules.rules) }}
{{- fail "policyRules.enabled with no rules refuses every request: add rules or disable policyRules" }}
{{- end }}
{{- include "portvagt.validateAudiences" . }}
{{- $redis := include "portvagt.redis" . | fromYaml }}
{{- if and (or (hasKey $redis.table "ca_file") (hasKey $redis.table "client_cert")) (hasPrefix "redis://" .Values.redis.url) }}
{{- fail "redis.tls names TLS files (CA, client certificate) but redis.url is redis://: use rediss:// (TLS) or drop them" }}
{{- end }}
{{- $names := list }}
{{- range $i, $upstream := .Values.config.upstreams }}
{{- if has $upstream.name $names }}
{{- fail (printf "config.upstreams[%d].name: %q is used twice; each upstream needs a name of its own (metric label, mount folder)" $i $upstream.name) }}
{{- end }}
{{- $names = append $names $upstream.name }}
{{- end }}
{{- $secretFiles := dict }}
{{- range (include "portvagt.tlsSecretMounts" . | fromYaml).mounts }}
{{- if not .files }}
{{- fail (printf "%s.tlsSecret names Secret %s but none of its keys: set caKey, or certKey and keyKey, or leave existingSecret empty" .field .secretName) }}
{{- end }}
{{- $_ := set $secretFiles .field .files }}
{{- end }}
{{- range (include "portvagt.tlsTables" . | fromYaml).tables }}
{{- $entry := . }}
{{- $fromSecret := default (dict) (get $secretFiles $entry.field) }}
{{- $files := dict }}
{{- range $key := list "ca_file" "client_cert" "client_key" }}
{{- $path := get $entry.table $key }}
{{- if and $path (hasKey $fromSecret $key) }}
{{- fail (printf "%s.%s is set and %s.tlsSecret gives it too: name the file one way" $entry.field $key $entry.field) }}
{{- end }}
{{- if or $path (hasKey $fromSecret $key) }}
{{- $_ := set $files $key true }}
{{- end }}
{{- end }}
{{- if ne (hasKey $files "client_cert") (hasKey $files "client_key") }}
{{- fail (printf "%s: a client certificate needs its key and a key its certificate (client_cert and client_key, or tlsSecret certKey and keyKey)" $entry.field) }}
{{- end }}
{{- if and $files (hasPrefix "http://" $entry.table.url) }}
{{- fail (printf "%s names TLS files (CA, client certificate) but its url is http://: use https:// or drop them" $entry.field) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The citizen listener's audiences (`[citizen] audiences`, else its `public_base_url` without the
trailing slash), as JSON, when config.citizen is enabled; what the gateway reads at start
(ListenerAudiences::from_config).
*/}}
{{- define "portvagt.citizenAudiences" -}}
{{- $citizen := .Values.config.citizen }}
{{- if $citizen.audiences }}
{{- $citizen.audiences | toJson }}
{{- else if $citizen.public_base_url }}
{{- list (regexReplaceAll "/+$" $citizen.public_base_url "") | toJson }}
{{- else }}
{{- list | toJson }}
{{- end }}
{{- end }}

{{/*
Which `aud` each listener serves, refused as the gateway would refuse it at start: the citizen
listener needs an audience of its own (config.citizen.audiences or .public_base_url; the
schema asks for it too), none of them in config.server.audiences, and with server.audiences
empty the mTLS listener must keep at least one audience the issuers (or token exchange) accept.
*/}}
{{- define "portvagt.validateAudiences" -}}
{{- if .Values.config.citizen.enabled }}
{{- $citizen := include "portvagt.citizenAudiences" . | fromJsonArray }}
{{- if not $citizen }}
{{- fail "config.citizen.audiences: name the aud values of tokens for the citizen listener, or set config.citizen.public_base_url (which is then the one); the gateway refuses to start without either" }}
{{- end }}
{{- $server := default (list) .Values.config.server.audiences }}
{{- range $server }}
{{- if has . $citizen }}
{{- fail (printf "config.server.audiences: %q is the citizen listener's audience too (config.citizen.audiences, or its public_base_url); each listener needs audiences of its own" .) }}
{{- end }}
{{- end }}
{{- if not $server }}
{{- $accepted := list }}
{{- range .Values.config.issuers }}
{{- range .audiences }}
{{- if not (has . $citizen) }}{{- $accepted = append $accepted . }}{{- end }}
{{- end }}
{{- end }}
{{- with .Values.config.token_exchange }}
{{- if .enabled }}
{{- $aud := default .issuer .audience }}
{{- if not (has $aud $citizen) }}{{- $accepted = append $accepted $aud }}{{- end }}
{{- end }}
{{- end }}
{{- if not $accepted }}
{{- fail "config.server.audiences is empty and every audience config.issuers (and token exchange) accept is the citizen listener's: no token would be accepted on the mTLS listener; give the issuers the mTLS listener's audience too, or name it in config.server.audiences" }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* `[tls] crls`: one path per CRL key of the client CA Secret. */}}
{{- define "portvagt.crlPaths" -}}
{{- $paths := list }}
{{- range .Values.clientCa.crlKeys }}
{{- $paths = append $paths (printf "/etc/portvagt/client-ca/%s" .) }}
{{- end }}
{{- $paths | toJson }}
{{- end }}

{{/*
The tables that talk TLS to a backend and may take their CA and client certificate from an
existing Secret (`tlsSecret`): `[backend]`, each `[[upstream]]`'s `[upstream.backend]`,
`[audit.ship]` when shipping is on, and `[relationship.service]` when the relationship check is on
with a relation service. Each with its values path, the volume name and the folder its Secret is
mounted at.
*/}}
{{- define "portvagt.tlsTables" -}}
{{- $cfg := .Values.config }}
{{- $tables := list (dict "field" "config.backend" "table" $cfg.backend "volume" "backend-tls" "dir" "/etc/portvagt/backend-tls") }}
{{- range $i, $upstream := $cfg.upstreams }}
{{- $tables = append $tables (dict "field" (printf "config.upstreams[%d].backend" $i) "table" $upstream.backend "volume" (printf "upstream-%d-tls" $i) "dir" (printf "/etc/portvagt/upstreams/%s" $upstream.name)) }}
{{- end }}
{{- if and $cfg.audit.enabled $cfg.audit.ship.url }}
{{- $tables = append $tables (dict "field" "config.audit.ship" "table" $cfg.audit.ship "volume" "audit-ship-tls" "dir" "/etc/portvagt/audit-ship-tls") }}
{{- end }}
{{- if and $cfg.relationship.enabled $cfg.relationship.service.url }}
{{- $tables = append $tables (dict "field" "config.relationship.service" "table" $cfg.relationship.service "volume" "relationship-service-tls" "dir" "/etc/portvagt/relationship-service-tls") }}
{{- end }}
{{- toYaml (dict "tables" $tables) }}
{{- end }}

{{/*
The Secret mounts of portvagt.tlsTables whose `tlsSecret.existingSecret` is set: the Secret's
items (caKey as ca.crt, certKey as tls.crt, keyKey as tls.key; an empty key is not mounted) and
the paths to write (`files`: ca_file, client_cert, client_key). The pod template mounts them, the
config template writes the paths, so the two cannot disagree.
*/}}
{{- define "portvagt.tlsSecretMounts" -}}
{{- $mounts := list }}
{{- range (include "portvagt.tlsTables" . | fromYaml).tables }}
{{- $entry := . }}
{{- $secret := default (dict) $entry.table.tlsSecret }}
{{- if $secret.existingSecret }}
{{- $items := list }}
{{- $files := dict }}
{{- range $file := list (list "ca_file" "caKey" "ca.crt") (list "client_cert" "certKey" "tls.crt") (list "client_key" "keyKey" "tls.key") }}
{{- $key := get $secret (index $file 1) }}
{{- if $key }}
{{- $items = append $items (dict "key" $key "path" (index $file 2)) }}
{{- $_ := set $files (index $file 0) (printf "%s/%s" $entry.dir (index $file 2)) }}
{{- end }}
{{- end }}
{{- $mounts = append $mounts (dict "field" $entry.field "volume" $entry.volume "dir" $entry.dir "secretName" $secret.existingSecret "items" $items "files" $files) }}
{{- end }}
{{- end }}
{{- toYaml (dict "mounts" $mounts) }}
{{- end }}

{{/*
portvagt.tomlKeys for a table that may get ca_file, client_cert and client_key from a tlsSecret:
`files` (from portvagt.tlsSecretMounts) is laid over `table` first.
Usage: include "portvagt.tlsTomlKeys" (dict "table" $cfg.backend "files" $files "first" (list "url"))
*/}}
{{- define "portvagt.tlsTomlKeys" -}}
{{- $table := deepCopy .table }}
{{- range $key, $path := default (dict) .files }}
{{- $_ := set $table $key $path }}
{{- end }}
{{- include "portvagt.tomlKeys" (dict "table" $table "first" .first) }}
{{- end }}

{{/*
`[token_exchange] trusted_sts`: a TOML array of inline tables, one per certificate of the trusted
STS Secret, each pinned to the Issuer names it may sign for:
[{ certificate = "/etc/portvagt/trusted-sts/sts.pem", issuers = ["TEST1-NSP-STS"] }]
(strings written with toJson: JSON's escapes are TOML's).
*/}}
{{- define "portvagt.trustedStsToml" -}}
{{- $entries := list }}
{{- range .Values.tokenExchangeKeys.trustedSts.keys }}
{{- $issuers := list }}
{{- range .issuers }}
{{- $issuers = append $issuers (toString . | toJson) }}
{{- end }}
{{- $entries = append $entries (printf "{ certificate = %s, issuers = [%s] }" (printf "/etc/portvagt/trusted-sts/%s" .key | toJson) (join ", " $issuers)) }}
{{- end }}
{{- printf "[%s]" (join ", " $entries) }}
{{- end }}

{{/*
checkov skips, each with its reason (README "checkov"). Some only apply to the values that make
them necessary.
*/}}
{{- define "portvagt.checkovSkips" -}}
{{- $skips := list }}
{{- if not .Values.image.digest }}
{{- $skips = append $skips "CKV_K8S_43=the image is pinned by tag; set image.digest to pin it by digest" }}
{{- end }}
{{- if ne .Values.image.pullPolicy "Always" }}
{{- $skips = append $skips "CKV_K8S_15=a pinned tag or digest does not change; Always would make every pod start depend on the registry" }}
{{- end }}
{{- range $i, $skip := $skips }}
checkov.io/skip{{ add1 $i }}: {{ $skip | quote }}
{{- end }}
{{- end }}
