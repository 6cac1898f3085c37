#!/usr/bin/env python3
"""Tests of the portvagt Helm chart, without a cluster and without the helm binary.

`helm lint` and `helm template` come from helm-python-sdk (Helm's Go library behind a C ABI), the
Kubernetes schemas from kubernetes-validate, the security scan from checkov. They are installed
into helm/.venv on first use, from the pinned helm/tests/requirements.txt, and reused after.

The chart is rendered with several sets of values (`VARIANTS`); every rendered manifest is
validated against the Kubernetes API schemas in strict mode, scanned by checkov, and checked for
what matters here: a configuration the gateway accepts, no secret material in a ConfigMap, a
locked-down pod, probes on the admin port. The rendered configuration is compared with the
gateway's own config structs (gateway/src/config/), so the chart cannot drift from what
`deny_unknown_fields` accepts.

Exit status 0 when everything passed, 1 otherwise.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import venv
from pathlib import Path

STARTED = time.monotonic()
TESTS = Path(__file__).resolve().parent
HELM_DIR = TESTS.parent
REPO = HELM_DIR.parent
CHART = HELM_DIR / "portvagt"
VENV = HELM_DIR / ".venv"
REQUIREMENTS = TESTS / "requirements.txt"
STAMP = VENV / "requirements.sha256"


# --- the tools: a virtualenv of pinned packages, made once --------------------------------------

def ensure_tools() -> None:
    """Re-runs this script inside helm/.venv, creating or updating it when requirements.txt
    changed since it was made."""
    python = VENV / "bin" / "python"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if not python.exists() or not STAMP.exists() or STAMP.read_text().strip() != wanted:
        print(f"installing the chart's test tools into {VENV.relative_to(REPO)} (once)", flush=True)
        if not python.exists():
            try:
                venv.EnvBuilder(with_pip=True).create(VENV)
            except subprocess.CalledProcessError:
                # A Python without ensurepip (Debian without python3-venv): an empty environment,
                # and the system pip puts pip into it.
                venv.EnvBuilder(with_pip=False, clear=True).create(VENV)
                subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                                "--quiet", "pip"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--no-input", "-r", str(REQUIREMENTS)], check=True)
        STAMP.write_text(wanted + "\n")
    if Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


if __name__ == "__main__":
    ensure_tools()

# Only inside the virtualenv from here on.
import copy  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import tomllib  # noqa: E402

import helm_python as helm  # noqa: E402
import jsonschema  # noqa: E402
import kubernetes_validate  # noqa: E402
import yaml  # noqa: E402

sys.dont_write_bytecode = True  # no __pycache__ beside the tests
import gateway_source  # noqa: E402

NAMESPACE = "portvagt"
RELEASE = "portvagt"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest with schemas.
KUBE_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]
# Custom resources: no schema in kubernetes-validate, so they are checked by their fields below.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
CONFIG_PATH = "/etc/portvagt/portvagt.toml"
SPOOL_DIR = "/var/lib/portvagt/audit"
# The audit seal key's folder (auditSealKey's Secret) and the files `[audit] seal_key` and
# `seal_jwks` (auditSealKey.trustedJwksKey) name in it.
SEAL_DIR = "/etc/portvagt/audit-seal"
SEAL_KEY = f"{SEAL_DIR}/seal.key"
SEAL_JWKS = f"{SEAL_DIR}/trusted-jwks.json"


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def merge(base: dict, override: dict) -> dict:
    """Values as Helm combines them: maps merge key by key, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# The values each variant adds to the chart's values.yaml.
VARIANTS: dict[str, dict] = {
    "default": {},
    "production": load_yaml(CHART / "values-production.yaml"),
    # A Deployment: emptyDir spool, no ServiceMonitor, no network policy, a plain Redis URL (no
    # [redis] table) and rules; the cheapest installation that still exercises token exchange.
    "emptydir": {
        "replicaCount": 1,
        "auditSpool": {"type": "emptyDir"},
        "serviceMonitor": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "podDisruptionBudget": {"enabled": False},
        "config": {
            "token_exchange": {"enabled": True, "useRedis": True},
            "rate_limit": {"enabled": True, "useRedis": True},
            "audit": {"failure_mode": "open"},
        },
        "redis": {"url": "redis://redis:6379/1"},
        "policyRules": {"enabled": True,
                        "rules": [{"name": "system reads", "effect": "allow", "contexts": ["system"],
                                   "interactions": ["read", "search-type"]}]},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                       "whenUnsatisfiable": "DoNotSchedule"}],
        "image": {"pullPolicy": "Always"},
    },
    # Several backends on a bad day: an https main backend with its CA from a Secret, two
    # upstreams (one over mTLS with a client certificate Secret, one by path and resource types
    # with its CA from a ConfigMap), an mTLS audit repository mixing a Secret and a mounted CA,
    # rate limits per certificate without Redis, the mass-lookup guard (flagging) and token
    # exchange in a Redis over TLS (its CA and a client certificate from Secrets, an ACL user and
    # a password Secret), consent, treatment relationships asked of a relation service
    # over mTLS, and every other table's keys set away from their defaults.
    "upstreams": {
        "replicaCount": 2,
        "config": {
            "server": {"shutdown_grace": "15s", "handshake_timeout": "5s",
                       "audiences": ["https://fhir.example.dk/fhir"]},
            "limits": {"max_header_bytes": 32768, "max_body_bytes": 1048576, "max_response_bytes": 33554432,
                       "request_timeout": "40s", "max_concurrent_requests": 256},
            "backend": {"url": "https://fhir.internal.example.dk/fhir/R4", "max_in_flight": 300,
                        "forward_authorization": True, "tlsSecret": {"existingSecret": "backend-ca", "caKey": "ca.pem"},
                        "identity": {"enabled": True, "lifetime": "30s",
                                     "audience": "https://fhir.internal.example.dk"}},
            "upstreams": [
                {"name": "regionh", "path_prefix": "/fhir/regionh",
                 "backend": {"url": "https://fhir.regionh.example.dk/fhir/R4", "connect_timeout": "3s",
                             "response_timeout": "20s", "retries": 0, "circuit_failures": 3, "circuit_open": "30s",
                             "max_in_flight": 64, "pool_max_idle_per_host": 16, "forward_authorization": False,
                             "tlsSecret": {"existingSecret": "regionh-mtls", "caKey": "ca.crt",
                                           "certKey": "tls.crt", "keyKey": "tls.key"},
                             "identity": {"enabled": True, "key_id": "regionh-identity-1"}}},
                {"name": "sor", "path_prefix": "/fhir/sor", "resource_types": ["Organization", "Location"],
                 "backend": {"url": "https://sor.example.dk/fhir", "ca_file": "/etc/portvagt/sor-ca/ca.crt",
                             "response_timeout": "5s"}},
            ],
            "rate_limit": {"enabled": True, "requests": 50, "window": "10s", "key": "certificate", "useRedis": False},
            "mass_lookup": {"enabled": True, "useRedis": True, "max_patients": 50, "window": "30m", "action": "flag",
                            "roles": ["7170"]},
            "consent": {"enabled": True, "cache_ttl": "1m", "cache_entries": 5000},
            "relationship": {"enabled": True, "roles": ["7170", "5166"], "source": "http", "window": "180d",
                             "ahead": "14d", "cache_ttl": "2m", "negative_cache_ttl": "10s", "cache_entries": 20000,
                             "service": {"url": "https://brs.example.dk/api", "response_timeout": "2s",
                                         "circuit_failures": 3, "max_in_flight": 32,
                                         "tlsSecret": {"existingSecret": "brs-mtls", "certKey": "client.crt",
                                                       "keyKey": "client.key"}}},
            "citizen": {"enabled": True, "resource_types": ["Observation", "Condition"], "page": False, "blocks": True,
                        "client_id": "min-sundhed", "scope": "openid fhirUser launch/patient patient/*.rs",
                        "public_base_url": "https://minlog.example.dk/fhir",
                        "audiences": ["https://minlog.example.dk/fhir", "https://minlog.example.dk"]},
            "decision_log": {"enabled": True, "decisions": "disagreements", "max_bytes": 10485760, "keep": 2},
            "tracing": {"trust_incoming": True, "otlp_endpoint": "http://otel-collector.observability:4318/v1/traces",
                        "service_name": "portvagt-regions", "sample_ratio": 0.25},
            "audit": {"failure_mode": "open", "segment_bytes": 1048576, "seal_every": "30s",
                      "max_patients_per_request": 250, "min_free_bytes": 1073741824,
                      "ship": {"url": "https://audit.example.dk/fhir", "batch_size": 50,
                               "ca_file": "/etc/portvagt/sor-ca/ca.crt",
                               "tlsSecret": {"existingSecret": "audit-mtls", "certKey": "client.crt",
                                             "keyKey": "client.key"}}},
            "token_exchange": {"enabled": True, "useRedis": True, "audience": "https://fhir.example.dk/fhir",
                               "max_assertion_lifetime": "8h", "token_lifetime": "30m", "leeway": "2m",
                               "min_authentication_level": 4, "max_assertion_bytes": 32768,
                               "replay_cache_entries": 1000, "assertion_audiences": ["https://fhir.example.dk"],
                               "token_endpoint": "https://fhir.example.dk/fhir/token",
                               "check_confirmation_address": False, "allow_bearer_assertions": True},
            "smart": {"token_endpoint": "https://auth.example.dk/token", "capabilities": ["permission-v2"]},
            "policy": {"filtered_entries": "deny"},
            "paging": {"link_lifetime": "10m"},
            "operations": [{"name": "match", "resource_types": ["Patient"], "levels": ["type"], "kind": "search"},
                           {"name": "expand", "resource_types": ["ValueSet"], "levels": ["type", "instance"],
                            "kind": "refused"}],
            "log": {"format": "text", "level": "portvagt=debug"},
        },
        "redis": {"url": "rediss://redis.cache.svc:6380/2",
                  "auth": {"username": "portvagt-regions", "existingSecret": "redis-auth", "passwordKey": "redis-password"},
                  "tls": {"ca": {"existingSecret": "redis-tls", "key": "ca.pem"},
                          "clientCert": {"existingSecret": "redis-tls", "certKey": "client.crt", "keyKey": "client.key"}}},
        # Two STS certificates, pinned to issuer names TOML must have quoted and escaped.
        "tokenExchangeKeys": {"trustedSts": {"existingSecret": "region-sts", "keys": [
            {"key": "sts-a.pem", "issuers": ["TEST1-NSP-STS", 'STS "Region" \\ Øst <&>', "x\" ]\n[tls] cert = \"/x"]},
            {"key": "sts-b.pem", "issuers": ["http://sts.sundhedsdatastyrelsen.dk/"]}]}},
        "auditSealKey": {"existingSecret": "audit-seal", "key": "portvagt-seal.pem", "keyId": "upstreams-seal-2",
                         "trustedJwksKey": "seal-1-and-2.jwks.json"},
        "pagingKey": {"existingSecret": "paging-key", "key": "paging-hmac"},
        "backendIdentityKey": {"existingSecret": "backend-identity", "key": "identity.pem"},
        "policyRules": {"enabled": True,
                        "rules": [{"name": "reads", "effect": "allow", "interactions": ["read", "search-type"]}],
                        "shadowRules": [{"name": "reads of patients", "effect": "allow",
                                         "resource_types": ["Patient"], "interactions": ["read"]}]},
        "extraVolumes": [{"name": "sor-ca", "configMap": {"name": "sor-ca"}}],
        "extraVolumeMounts": [{"name": "sor-ca", "mountPath": "/etc/portvagt/sor-ca", "readOnly": True}],
        # The audit alerts with every threshold, window and label set away from the defaults, and
        # the series chosen by a selector of its own (scraped without the ServiceMonitor).
        "prometheusRule": {"enabled": True, "labels": {"prometheus": "regions"},
                           "alertLabels": {"team": "regions", "tier": "1"},
                           "selector": 'namespace="portvagt", app_kubernetes_io_instance="portvagt"',
                           "spoolLow": {"freeRatio": 0.3, "for": "15m"},
                           "spoolCritical": {"freeRatio": 0.1, "minFreeFactor": 1.5, "for": "2m"},
                           "recordsLost": {"window": "10m"}},
        "networkPolicy": {"egress": {"upstreams": {"enabled": True, "to": [], "ports": [{"port": 443, "protocol": "TCP"}]},
                                     "audit": {"enabled": True, "to": [], "ports": [{"port": 443, "protocol": "TCP"}]},
                                     "relationship": {"enabled": True, "to": [{"ipBlock": {"cidr": "10.50.0.0/24"}}],
                                                      "ports": [{"port": 443, "protocol": "TCP"}]}}},
    },
    # One given volume: one replica, replaced (never rolled) so two pods never share the spool.
    "existing-claim": {
        "replicaCount": 1,
        "auditSpool": {"type": "existingClaim", "existingClaim": "portvagt-audit"},
        "config": {"audit": {"observer": "portvagt-main"}},
        "prometheusRule": {"enabled": True},
    },
    # No audit trail: a seal key Secret (and its JWK Set) named all the same is neither mounted nor
    # written, and the audit alerts switched on all the same are not rendered (nothing to watch). The mass-lookup guard with its defaults, counted by each of the two replicas alone:
    # Redis' URL, user, password Secret and CA named all the same are neither mounted nor written.
    "audit-off": {
        "config": {"audit": {"enabled": False}, "mass_lookup": {"enabled": True}},
        "auditSealKey": {"existingSecret": "audit-seal", "trustedJwksKey": "trusted-jwks.json"},
        "prometheusRule": {"enabled": True},
        "redis": {"url": "rediss://redis:6380/0", "auth": {"username": "portvagt", "existingSecret": "redis-auth"},
                  "tls": {"ca": {"existingConfigMap": "redis-ca"}}},
    },
}
# The variants whose audit chain must come out sealed: production has to be able to prove its
# trail complete (`portvagt audit verify --jwks`).
SEALED_VARIANTS = {"production", "upstreams"}
# Where the trusted STS certificates (tokenExchangeKeys.trustedSts) are mounted.
TRUSTED_STS_DIR = "/etc/portvagt/trusted-sts"
# The paging links' key (pagingKey's Secret), as `[paging] key_file`.
PAGING_KEY = "/etc/portvagt/paging/paging.key"
# `[redis]`'s files: the CA (redis.tls.ca, a Secret or ConfigMap), the client certificate
# (redis.tls.clientCert) and the password (redis.auth.existingSecret), each folder its own volume.
REDIS_CA_DIR = "/etc/portvagt/redis-ca"
REDIS_CLIENT_DIR = "/etc/portvagt/redis-client-tls"
REDIS_AUTH_DIR = "/etc/portvagt/redis-auth"


# --- reporting ------------------------------------------------------------------------------------

class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"  ok    {name}")
        else:
            self.failed.append(name)
            print(f"  FAIL  {name}" + (f"\n        {detail}" if detail else ""))
        return ok

    def section(self, title: str) -> None:
        print(f"\n{title}", flush=True)


REPORT = Report()


# --- rendering ------------------------------------------------------------------------------------

def render(chart: helm.Chart, values: dict) -> tuple[list[dict], str]:
    """The manifests Helm would apply (NOTES.txt apart), parsed, and NOTES.txt."""
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict] = []
    notes = ""
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["_template"] = template
                docs.append(doc)
    return docs, notes


def manifest(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "_template"}


def find(docs: list[dict], kind: str, suffix: str = "") -> list[dict]:
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]


def workload(docs: list[dict]) -> dict:
    found = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert len(found) == 1, f"expected one workload, found {[d['kind'] for d in found]}"
    return found[0]


# --- the checks -----------------------------------------------------------------------------------

def check_lint(values_files: dict[str, dict]) -> None:
    REPORT.section("helm lint --strict")
    for name, values in values_files.items():
        result = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version="v1.29.0")
        # Severity 1 is information ("icon is recommended"); strict mode fails on the rest.
        problems = [f"{m['path']}: {m['error'].strip()}" for m in result["messages"] if m["severity"] >= 2]
        problems += [e.strip() for e in result.get("errors", []) if e.strip() not in " ".join(problems)]
        REPORT.check(f"lint with {name} values", not problems, "; ".join(problems))


def check_values_schema(chart: helm.Chart, defaults: dict) -> None:
    REPORT.section("values.schema.json")
    schema = json.loads((CHART / "values.schema.json").read_text())
    try:
        jsonschema.Draft7Validator.check_schema(schema)
        REPORT.check("is a valid draft-07 schema", True)
    except jsonschema.SchemaError as e:
        REPORT.check("is a valid draft-07 schema", False, e.message)
    validator = jsonschema.Draft7Validator(schema)
    for name, extra in VARIANTS.items():
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(merge(defaults, extra))]
        REPORT.check(f"accepts the {name} values", not errors, "; ".join(errors[:5]))

    # Wrong values must be refused by Helm itself (install, upgrade, template), not only here.
    wrong = {
        "an unknown top-level value": {"replicas": 3},
        "a wrong type": {"replicaCount": "three"},
        "a misspelt gateway key": {"config": {"backend": {"urll": "http://x"}}},
        "a password in redis.url": {"redis": {"url": "redis://:secret@redis:6379/0"}},
        "a user and password in a rediss:// redis.url": {"redis": {"url": "rediss://portvagt:secret@redis:6380/0"}},
        "an http:// redis.url": {"redis": {"url": "http://redis:6379/0"}},
        "a redis.url with a path that is no database": {"redis": {"url": "rediss://redis:6380/cache"}},
        "a Redis CA from a Secret and a ConfigMap at once": {
            "redis": {"tls": {"ca": {"existingSecret": "redis-ca", "existingConfigMap": "redis-ca"}}}},
        "an unknown key in redis.tls": {"redis": {"tls": {"caFile": "/etc/redis/ca.crt"}}},
        "a Redis password written into the values": {"redis": {"auth": {"password": "secret"}}},
        "a Redis user with a space": {"redis": {"auth": {"username": "port vagt"}}},
        "an HMAC algorithm": {"config": {"issuers": [{"issuer": "https://a", "audiences": ["b"],
                                                      "discovery": True, "algorithms": ["HS256"]}]}},
        "two key sources for one issuer": {"config": {"issuers": [{"issuer": "https://a", "audiences": ["b"],
                                                                   "discovery": True, "jwks_url": "https://a/jwks"}]}},
        "rules switched on without rules": {"policyRules": {"enabled": True, "rules": []}},
        "an identity assertion without its key": {"config": {"backend": {"identity": {"enabled": True}}}},
        "shadow rules without a decision log": {"policyRules": {
            "enabled": True, "rules": [{"name": "r", "effect": "allow"}],
            "shadowRules": [{"name": "s", "effect": "allow"}]}},
        "Redis switched on without a URL": {"config": {"token_exchange": {"enabled": True, "useRedis": True}}},
        "consent's announcements in Redis without a URL": {"config": {"consent": {"enabled": True, "useRedis": True}}},
        "token exchange on two replicas without Redis (an assertion could be used once per replica)": {
            "replicaCount": 2, "config": {"token_exchange": {"enabled": True}}},
        "token exchange autoscaled without Redis": {
            "replicaCount": 1, "autoscaling": {"enabled": True}, "config": {"token_exchange": {"enabled": True}}},
        "a trusted STS certificate without issuers": {"tokenExchangeKeys": {"trustedSts": {"keys": [{"key": "sts.pem"}]}}},
        "a trusted STS certificate with no issuer": {
            "tokenExchangeKeys": {"trustedSts": {"keys": [{"key": "sts.pem", "issuers": []}]}}},
        "a trusted STS certificate as a bare Secret key (not pinned to issuers)": {
            "tokenExchangeKeys": {"trustedSts": {"keys": ["sts.pem"]}}},
        "an unknown key in a trusted STS certificate": {
            "tokenExchangeKeys": {"trustedSts": {"keys": [{"key": "sts.pem", "issuers": ["A"], "certificate": "/x"}]}}},
        "a trusted STS issuer that is not a string": {
            "tokenExchangeKeys": {"trustedSts": {"keys": [{"key": "sts.pem", "issuers": [3]}]}}},
        "a token endpoint that is not https://": {"config": {"token_exchange": {"token_endpoint": "http://gw/token"}}},
        "authentication level 2 without allow_bearer_assertions": {
            "config": {"token_exchange": {"enabled": True, "min_authentication_level": 2}}},
        "rate limits in Redis without a URL": {"config": {"rate_limit": {"enabled": True, "useRedis": True}}},
        "the mass-lookup guard in Redis without a URL": {
            "config": {"mass_lookup": {"enabled": True, "useRedis": True}}},
        "a mass-lookup action that is neither refuse nor flag": {"config": {"mass_lookup": {"action": "block"}}},
        "a mass-lookup threshold of 0 patients": {"config": {"mass_lookup": {"max_patients": 0}}},
        "an empty mass-lookup role": {"config": {"mass_lookup": {"roles": [""]}}},
        "a misspelt mass-lookup key": {"config": {"mass_lookup": {"max_patient": 10}}},
        "a rate limit key that is neither subject nor certificate": {"config": {"rate_limit": {"key": "address"}}},
        "a backend that is neither http:// nor https://": {"config": {"backend": {"url": "ftp://fhir/R4"}}},
        "an upstream with neither path_prefix nor resource_types": {
            "config": {"upstreams": [{"name": "x", "backend": {"url": "https://x/fhir"}}]}},
        "a misspelt key in an upstream's backend": {
            "config": {"upstreams": [{"name": "x", "path_prefix": "/fhir/x",
                                      "backend": {"url": "https://x/fhir", "retry": 2}}]}},
        "an upstream name that cannot be a folder": {
            "config": {"upstreams": [{"name": "../x", "path_prefix": "/fhir/x", "backend": {"url": "https://x/fhir"}}]}},
        "a backend client certificate Secret key without the private key's": {
            "config": {"backend": {"url": "https://x/fhir", "tlsSecret": {"existingSecret": "s", "certKey": "tls.crt"}}}},
        "an unknown key in auditSealKey": {"auditSealKey": {"existingSecret": "s", "kid": "audit-seal-2"}},
        "an empty seal key id": {"auditSealKey": {"existingSecret": "s", "keyId": ""}},
        "a seal key path in config.audit (it comes from auditSealKey)": {
            "config": {"audit": {"seal_key": "/etc/portvagt/seal.key"}}},
        "a seal key id in config.audit (it is auditSealKey.keyId)": {"config": {"audit": {"seal_key_id": "x"}}},
        "a trusted seal keys path in config.audit (it comes from auditSealKey.trustedJwksKey)": {
            "config": {"audit": {"seal_jwks": "/etc/portvagt/jwks.json"}}},
        "a trusted seal keys Secret key that cannot be a file name": {
            "auditSealKey": {"existingSecret": "s", "trustedJwksKey": "../jwks.json"}},
        "a seal interval that is not a duration": {"config": {"audit": {"seal_every": 10}}},
        "at most 0 patients per request": {"config": {"audit": {"max_patients_per_request": 0}}},
        "a spool headroom of 0 bytes": {"config": {"audit": {"min_free_bytes": 0}}},
        "a spool headroom given as a size string": {"config": {"audit": {"min_free_bytes": "256Mi"}}},
        "a spool alert share above 1": {"prometheusRule": {"spoolLow": {"freeRatio": 20}}},
        "a spool alert share of 0": {"prometheusRule": {"spoolCritical": {"freeRatio": 0}}},
        "a headroom factor below 1 (the alert after /readyz fails)": {
            "prometheusRule": {"spoolCritical": {"minFreeFactor": 0.5}}},
        "an alert duration Prometheus cannot read": {"prometheusRule": {"spoolLow": {"for": "5 m"}}},
        "an alert duration with its units out of order": {"prometheusRule": {"spoolCritical": {"for": "30s1m"}}},
        "an alert label that overrides the severity": {"prometheusRule": {"alertLabels": {"severity": "info"}}},
        "an alert selector with braces": {"prometheusRule": {"selector": '{job="portvagt"}'}},
        "a misspelt alert setting": {"prometheusRule": {"recordsLost": {"windows": "5m"}}},
        "the relationship check switched on without roles": {"config": {"relationship": {"enabled": True}}},
        "an empty role": {"config": {"relationship": {"enabled": True, "roles": ["7170", ""]}}},
        "a relationship source that is neither fhir nor http": {
            "config": {"relationship": {"enabled": True, "roles": ["7170"], "source": "sor"}}},
        "the http relationship source without a relation service": {
            "config": {"relationship": {"enabled": True, "roles": ["7170"], "source": "http"}}},
        "a relation service for the fhir relationship source": {
            "config": {"relationship": {"enabled": True, "roles": ["7170"], "source": "fhir",
                                        "service": {"url": "https://brs.example.dk/api"}}}},
        "a relation service that is neither http:// nor https://": {
            "config": {"relationship": {"enabled": True, "roles": ["7170"], "source": "http",
                                        "service": {"url": "brs.example.dk/api"}}}},
        "the citizen listener without audiences or a public_base_url (its audience)": {
            "config": {"citizen": {"enabled": True}}},
        "the citizen listener with an empty audience list and an empty public_base_url": {
            "config": {"citizen": {"enabled": True, "audiences": [], "public_base_url": ""}}},
        "an empty citizen audience": {"config": {"citizen": {"audiences": [""]}}},
        "a citizen audience given twice": {"config": {"citizen": {"audiences": ["https://m/fhir", "https://m/fhir"]}}},
        "a citizen audience list given as a string": {"config": {"citizen": {"audiences": "https://m/fhir"}}},
        "an empty server audience": {"config": {"server": {"audiences": [" "]}}},
        "a server audience given twice": {"config": {"server": {"audiences": ["https://f/fhir", "https://f/fhir"]}}},
        "a server audience that is not a string": {"config": {"server": {"audiences": [3]}}},
        "an identity assertion for the relation service (it is asked on the gateway's own behalf)": {
            "config": {"relationship": {"enabled": True, "roles": ["7170"], "source": "http",
                                        "service": {"url": "https://brs.example.dk/api",
                                                    "identity": {"enabled": True}}}}},
    }
    for what, values in wrong.items():
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE)
            refused_by_helm = False
        except helm.HelmValuesError:
            refused_by_helm = True
        refused_here = not validator.is_valid(merge(defaults, values))
        REPORT.check(f"refuses {what}", refused_by_helm and refused_here,
                     f"helm refused: {refused_by_helm}, jsonschema refused: {refused_here}")

    # The citizen listener's audience from either of its keys: accepted by the schema, rendered as
    # given, and taken by the gateway.
    accepted = {
        "the citizen listener with audiences only": {"config": {"citizen": {
            "enabled": True, "audiences": ["https://minlog.example.dk/fhir"]}}},
        "the citizen listener with a public_base_url only (its audience)": {"config": {"citizen": {
            "enabled": True, "public_base_url": "https://minlog.example.dk/fhir"}}},
        "both listeners' audiences named": {"config": {
            "server": {"audiences": ["https://fhir.example.dk/fhir"]},
            "citizen": {"enabled": True, "audiences": ["https://minlog.example.dk/fhir"]}}},
    }
    for what, values in accepted.items():
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(merge(defaults, values))]
        try:
            docs, _ = render(chart, values)
            text = find(docs, "ConfigMap", "-config")[0]["data"]["portvagt.toml"]
            config = tomllib.loads(text)
            cfg = merge(defaults, values)["config"]
            rendered = (config["server"].get("audiences"), config.get("citizen", {}).get("audiences"),
                        config.get("citizen", {}).get("public_base_url"))
            wanted = (cfg["server"]["audiences"], cfg["citizen"]["audiences"], cfg["citizen"]["public_base_url"] or None)
            _, _, refusal = listener_audiences(config)
            detail = "; ".join(errors) or ("" if rendered == wanted else f"rendered {rendered}, wants {wanted}") or refusal
        except helm.HelmError as e:
            detail = f"refused: {e}"
        REPORT.check(f"accepts {what}, renders it as given, and the gateway takes it", not detail, detail)

    # Redis over TLS: a rediss:// URL (with or without the ACL user in it) passes the schema and is
    # written as given into every redis_url; a plain redis:// one too.
    uses = {"config": {"rate_limit": {"enabled": True, "useRedis": True}}}
    for url in ("rediss://redis.cache.svc:6380/0", "rediss://portvagt@redis.cache.svc:6380",
                "rediss://[fd00::6]:6380/3", "redis://redis:6379"):
        values = {**uses, "redis": {"url": url}}
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(merge(defaults, values))]
        try:
            docs, _ = render(chart, values)
            config = tomllib.loads(find(docs, "ConfigMap", "-config")[0]["data"]["portvagt.toml"])
            written = config["rate_limit"].get("redis_url")
            detail = "; ".join(errors) or ("" if written == url else f"written as {written!r}")
        except helm.HelmError as e:
            detail = f"refused: {e}"
        REPORT.check(f"accepts redis.url {url} and writes it as given", not detail, detail)

    # Combinations the schema cannot express are refused while rendering, naming the value.
    impossible = {
        "a grace period shorter than the drain": ({"terminationGracePeriodSeconds": 12}, "terminationGracePeriodSeconds"),
        "two replicas on one existing claim": ({"auditSpool": {"type": "existingClaim", "existingClaim": "x"}},
                                               "existingClaim allows one replica"),
        "two upstreams with one name": ({"config": {"upstreams": [
            {"name": "a", "path_prefix": "/fhir/a", "backend": {"url": "http://a/fhir"}},
            {"name": "a", "resource_types": ["Organization"], "backend": {"url": "http://b/fhir"}}]}},
            "config.upstreams[1].name"),
        "backend TLS files for an http:// backend": ({"config": {"backend": {"tlsSecret": {
            "existingSecret": "s", "caKey": "ca.crt"}}}}, "config.backend names TLS files"),
        "a CA from a Secret and a path at once": ({"config": {"upstreams": [{"name": "a", "path_prefix": "/fhir/a",
            "backend": {"url": "https://a/fhir", "ca_file": "/etc/ca/ca.crt",
                        "tlsSecret": {"existingSecret": "s", "caKey": "ca.crt"}}}]}},
            "config.upstreams[0].backend.ca_file"),
        "a backend TLS Secret with no key named": ({"config": {"backend": {"url": "https://x/fhir", "tlsSecret": {
            "existingSecret": "s"}}}}, "config.backend.tlsSecret names Secret s"),
        "a client certificate path without its key": ({"config": {"audit": {"ship": {
            "url": "https://audit/fhir", "client_cert": "/etc/x/tls.crt"}}}}, "config.audit.ship: a client certificate"),
        "a Redis CA for a redis:// URL": ({"config": {"mass_lookup": {"enabled": True, "useRedis": True}},
                                           "redis": {"url": "redis://redis:6379/0",
                                                     "tls": {"ca": {"existingConfigMap": "redis-ca"}}}},
                                          "redis.tls names TLS files"),
        "a Redis client certificate for a redis:// URL": ({"config": {"rate_limit": {"enabled": True, "useRedis": True}},
                                                           "redis": {"url": "redis://redis:6379/0",
                                                                     "tls": {"clientCert": {"existingSecret": "r"}}}},
                                                          "redis.tls names TLS files"),
        "relation service TLS files for an http:// URL": ({"config": {"relationship": {
            "enabled": True, "roles": ["7170"], "source": "http", "service": {
                "url": "http://brs/api", "tlsSecret": {"existingSecret": "s", "caKey": "ca.crt"}}}}},
            "config.relationship.service names TLS files"),
    }
    citizen = {"enabled": True, "public_base_url": "https://minlog.example.dk/fhir"}
    impossible.update({
        "an audience in server.audiences and citizen.audiences": ({"config": {
            "server": {"audiences": ["https://fhir.example.dk/fhir", "https://minlog.example.dk/fhir"]},
            "citizen": {**citizen, "audiences": ["https://minlog.example.dk/fhir"]}}},
            'config.server.audiences: "https://minlog.example.dk/fhir" is the citizen listener\'s audience too'),
        "the citizen listener's public_base_url (its audience, without the trailing slash) in server.audiences": ({
            "config": {"server": {"audiences": ["https://minlog.example.dk/fhir"]},
                       "citizen": {**citizen, "public_base_url": "https://minlog.example.dk/fhir/"}}},
            'config.server.audiences: "https://minlog.example.dk/fhir" is the citizen listener\'s audience too'),
        "every issuer audience the citizen listener's, server.audiences empty": ({"config": {
            "citizen": {**citizen, "audiences": ["https://fhir.example.dk/fhir"]}}},
            "no token would be accepted on the mTLS listener"),
        "citizens' blocks without consent": ({"config": {"citizen": {**citizen, "blocks": True}}},
                                             "config.citizen.blocks needs config.consent.enabled"),
        "citizens' blocks without an audit trail": ({"config": {
            "citizen": {**citizen, "blocks": True}, "consent": {"enabled": True}, "audit": {"enabled": False}}},
            "config.citizen.blocks needs config.consent.enabled"),
    })
    for what, (values, message) in impossible.items():
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE)
            detail = "rendered anyway"
        except helm.HelmError as e:
            detail = "" if message in str(e) else f"refused, but without naming {message!r}: {e}"
        REPORT.check(f"refuses {what}", not detail, detail)


# Where values.schema.json describes each table of portvagt.toml (JSON pointers; $refs followed).
SCHEMA_OF = {
    "server": "/properties/config/properties/server",
    "limits": "/properties/config/properties/limits",
    "issuer": "/properties/config/properties/issuers/items",
    "issuer.claims": "/properties/config/properties/issuers/items/properties/claims",
    "issuer.introspection": "/properties/config/properties/issuers/items/properties/introspection",
    "route": "/properties/config/properties/routes/items",
    "backend": "/properties/config/properties/backend",
    "upstream": "/properties/config/properties/upstreams/items",
    "upstream.backend": "/properties/config/properties/upstreams/items/properties/backend",
    "smart": "/properties/config/properties/smart",
    "policy": "/properties/config/properties/policy",
    "log": "/properties/config/properties/log",
    "token_exchange": "/properties/config/properties/token_exchange",
    # `issuers` of each trusted_sts entry; its `certificate` is the chart's (from `key`).
    "token_exchange.trusted_sts": "/properties/tokenExchangeKeys/properties/trustedSts/properties/keys/items",
    "audit": "/properties/config/properties/audit",
    "audit.ship": "/properties/config/properties/audit/properties/ship",
    "consent": "/properties/config/properties/consent",
    "relationship": "/properties/config/properties/relationship",
    "relationship.service": "/properties/config/properties/relationship/properties/service",
    "rate_limit": "/properties/config/properties/rate_limit",
    "mass_lookup": "/properties/config/properties/mass_lookup",
    # `username`; the files are the chart's (redis.tls, redis.auth.existingSecret).
    "redis": "/properties/redis/properties/auth",
    "citizen": "/properties/config/properties/citizen",
    "paging": "/properties/config/properties/paging",
    "operation": "/properties/config/properties/operations/items",
    "backend.identity": "/properties/config/properties/backend/properties/identity",
    "upstream.backend.identity": "/properties/config/properties/upstreams/items/properties/backend/properties/identity",
    "decision_log": "/properties/config/properties/decision_log",
    "tracing": "/properties/config/properties/tracing",
}


# Tables of portvagt.toml the chart deliberately does not offer, each with the reason (the schema
# refuses them, so they cannot be set by mistake either).
NOT_OFFERED = {
    "relationship.service.identity": "the relation service is asked on the gateway's own behalf "
                                     "(Backend::fetch_json), which carries no identity assertion",
}


def schema_node(schema: dict, pointer: str) -> dict:
    """The schema at a JSON pointer, following $refs on the way; {} where there is none."""
    node = schema
    for part in [*pointer.strip("/").split("/"), None]:
        while "$ref" in node:
            node = schema_node(schema, node["$ref"].removeprefix("#"))
        if part is not None:
            node = node.get(part, {})
    return node


def check_gateway_coverage(gateway: dict) -> None:
    """Every table and key of the gateway's configuration can be set through the chart's values
    (values.schema.json accepts it under `config`) or is written by the chart itself: a field
    added to gateway/src/config/ fails here until the chart offers it."""
    REPORT.section("the gateway's configuration (gateway/src/config/)")
    unmapped = gateway_source.unmapped_tables(REPO)
    REPORT.check(f"the tests know all {len(gateway) - 1} tables of portvagt.toml, [upstream.backend] included",
                 not unmapped, "; ".join(unmapped))
    schema = json.loads((CHART / "values.schema.json").read_text())
    missing = []
    keys = 0
    for path, fields in gateway.items():
        if not path:
            missing += [f"[{key}]" for key in fields if key not in SCHEMA_OF and key not in CHART_WRITTEN]
            continue
        if path in NOT_OFFERED:
            print(f"  skip  [{path}] is not offered: {NOT_OFFERED[path]}")
            continue
        offered = set(schema_node(schema, SCHEMA_OF[path]).get("properties", {})) if path in SCHEMA_OF else set()
        for key in fields:
            if f"{path}.{key}" in gateway:
                continue  # a sub-table, checked as its own path
            keys += 1
            if key not in offered and key not in CHART_WRITTEN.get(path, set()):
                missing.append(f"{path}.{key}")
    REPORT.check(f"each of the gateway's {keys} keys can be set through `config` or is written by the chart",
                 not missing, "not offered: " + ", ".join(missing))


# Maps whose keys are data passed through to Kubernetes (or free-form names), not chart settings:
# the comment on the map itself documents them.
FREE_FORM = {"annotations", "labels", "alertLabels", "podAnnotations", "podLabels", "nodeSelector", "matchLabels",
             "affinity", "behavior", "resources"}


def check_values_documented() -> None:
    """Every key of values.yaml and values-production.yaml has a comment, on its line or the line
    above. Keys inside list items (example data) and inside FREE_FORM maps are covered by the
    comment on their list or map."""
    REPORT.section("values files are documented")
    key_line = re.compile(r"^(\s*)(- )?([A-Za-z0-9_.\-/\"]+):(\s|$)")
    for path in (CHART / "values.yaml", CHART / "values-production.yaml"):
        undocumented = []
        ancestors: list[tuple[int, str]] = []  # (indentation, key) of the enclosing keys
        previous = ""
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                previous = line if stripped else previous
                continue
            indent = len(line) - len(line.lstrip())
            while ancestors and ancestors[-1][0] >= indent:
                ancestors.pop()
            match = key_line.match(line)
            in_list = stripped.startswith("- ") or any(key == "-" for _, key in ancestors)
            free_form = any(key in FREE_FORM for _, key in ancestors)
            if match and not in_list and not free_form:
                if "#" not in line.split(":", 1)[1] and not previous.lstrip().startswith("#"):
                    undocumented.append(f"line {number}: {stripped}")
            if stripped.startswith("- "):
                ancestors.append((indent, "-"))
            elif match:
                ancestors.append((indent, match.group(3)))
            previous = line
        REPORT.check(f"every key in {path.name} has a comment", not undocumented, "; ".join(undocumented[:80]))


def check_kubernetes_schemas(name: str, docs: list[dict]) -> None:
    for version in KUBE_VERSIONS:
        errors = []
        for doc in docs:
            if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
                continue
            try:
                kubernetes_validate.validate(manifest(doc), version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(e.message)
        kinds = sorted({d["kind"] for d in docs if (d["apiVersion"], d["kind"]) not in CUSTOM_KINDS})
        REPORT.check(f"{name}: {len(kinds)} kinds valid against Kubernetes {version} (strict)", not errors,
                     "; ".join(errors[:5]))
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            print(f"  skip  {name}: {doc['kind']} has no Kubernetes schema (a Prometheus Operator CRD); "
                  "its fields are checked below")


def check_config(name: str, docs: list[dict], values: dict, gateway: dict) -> None:
    config_maps = find(docs, "ConfigMap", "-config")
    if not REPORT.check(f"{name}: one ConfigMap holds portvagt.toml", len(config_maps) == 1):
        return
    text = config_maps[0]["data"]["portvagt.toml"]
    try:
        config = tomllib.loads(text)
        REPORT.check(f"{name}: portvagt.toml is valid TOML", True)
    except tomllib.TOMLDecodeError as e:
        REPORT.check(f"{name}: portvagt.toml is valid TOML", False, str(e))
        return
    problems = gateway_source.problems_of(config, gateway, "portvagt.toml")
    REPORT.check(f"{name}: every key is one the gateway knows, every required key is there", not problems,
                 "; ".join(problems))
    # Secret material: PEM blocks, or a password in a URL.
    secrets = [m for m in re.findall(r"-----BEGIN [A-Z ]+-----", text)]
    secrets += re.findall(r"rediss?://[^@/'\"\s]*:[^@/'\"\s]*@", text)
    REPORT.check(f"{name}: no secret material in the ConfigMap", not secrets, str(secrets))
    check_redis_password(name, docs, text, config, values)

    server = config["server"]
    REPORT.check(f"{name}: listens on 8443 (mTLS) and 9090 (admin)",
                 server["listen"] == "0.0.0.0:8443" and server.get("admin_listen") == "0.0.0.0:9090",
                 f"{server.get('listen')} / {server.get('admin_listen')}")
    # The gateway names what replicas should share and do not (check-config, /readyz) from it.
    autoscaled = values["autoscaling"]["enabled"]
    replicas = values["autoscaling"]["maxReplicas"] if autoscaled else values["replicaCount"]
    REPORT.check(f"{name}: [server] replicas is {'autoscaling.maxReplicas' if autoscaled else 'replicaCount'} "
                 f"({replicas})", server.get("replicas") == replicas, str(server.get("replicas")))
    citizen_on = values["config"]["citizen"]["enabled"]
    REPORT.check(f"{name}: the citizen listener is {'on 8444' if citizen_on else 'off'}",
                 config.get("citizen", {}).get("listen") == ("0.0.0.0:8444" if citizen_on else None))
    audit_on = values["config"]["audit"]["enabled"]
    REPORT.check(f"{name}: the audit spool is the mounted volume",
                 (config.get("audit", {}).get("spool_dir") == SPOOL_DIR) == audit_on)
    seal_key = values["auditSealKey"]
    sealed = audit_on and bool(seal_key["existingSecret"])
    REPORT.check(f"{name}: the audit chain is {'sealed' if name in SEALED_VARIANTS else 'not sealed'} by these values",
                 sealed == (name in SEALED_VARIANTS))
    seal = {k: v for k, v in config.get("audit", {}).items() if k in ("seal_key", "seal_key_id", "seal_jwks")}
    wanted = {"seal_key": SEAL_KEY, "seal_key_id": seal_key["keyId"]} if sealed else {}
    trusted = sealed and bool(seal_key["trustedJwksKey"])
    if trusted:
        wanted["seal_jwks"] = SEAL_JWKS
    REPORT.check(f"{name}: [audit] " + (f"seal_key is {SEAL_KEY}, seal_key_id {seal_key['keyId']!r}" if sealed
                                        else "has no seal_key and no seal_key_id")
                 + (f", seal_jwks {SEAL_JWKS}" if trusted else ", no seal_jwks"), seal == wanted, str(seal))

    paging_key = values["pagingKey"]["existingSecret"]
    REPORT.check(f"{name}: [paging] key_file is " + (f"{PAGING_KEY} (from {paging_key})" if paging_key else "not set"),
                 config.get("paging", {}).get("key_file") == (PAGING_KEY if paging_key else None),
                 str(config.get("paging")))

    if values["config"]["token_exchange"]["enabled"]:
        keys = values["tokenExchangeKeys"]["trustedSts"]["keys"]
        wanted = [{"certificate": f"{TRUSTED_STS_DIR}/{k['key']}", "issuers": k["issuers"]} for k in keys]
        trusted = config.get("token_exchange", {}).get("trusted_sts")
        REPORT.check(f"{name}: [token_exchange] trusted_sts pins each of the {len(keys)} STS certificates to the "
                     "issuers given in tokenExchangeKeys.trustedSts.keys", trusted == wanted,
                     f"wants {wanted}, has {trusted}")

    # [server] audiences and [citizen] audiences, as given, and what the gateway makes of them.
    server_aud = config["server"].get("audiences", [])
    REPORT.check(f"{name}: [server] audiences is config.server.audiences ({server_aud})",
                 server_aud == values["config"]["server"].get("audiences", []), str(server_aud))
    if citizen_on:
        citizen_aud = config["citizen"].get("audiences", [])
        REPORT.check(f"{name}: [citizen] audiences is config.citizen.audiences ({citizen_aud})",
                     citizen_aud == values["config"]["citizen"].get("audiences", []), str(citizen_aud))
    client, citizen, refusal = listener_audiences(config)
    REPORT.check(f"{name}: the gateway takes the listeners' audiences (mTLS: "
                 f"{client if client is not None else 'whatever the issuers accept'}; citizen: "
                 f"{citizen if citizen is not None else 'no listener'})", not refusal, refusal)

    check_config_values(name, config, values)
    check_config_files(name, docs, config, values)

    rules = find(docs, "ConfigMap", "-rules")
    if values["policyRules"]["enabled"]:
        try:
            rules_toml = tomllib.loads(rules[0]["data"]["rules.toml"])
            known = gateway_source.rule_fields(REPO)
            bad = [f"rule {r.get('name')!r}: {k}" for r in rules_toml["rule"] for k in r if k not in known]
            bad += [f"rule {r.get('name')!r} lacks {k}" for r in rules_toml["rule"] for k, req in known.items()
                    if req and k not in r]
            REPORT.check(f"{name}: rules.toml is valid TOML, its {len(rules_toml['rule'])} rule(s) all ones the gateway accepts",
                         not bad, "; ".join(bad))
        except (IndexError, KeyError, tomllib.TOMLDecodeError) as e:
            REPORT.check(f"{name}: rules.toml is valid TOML", False, repr(e))


def listener_audiences(config: dict) -> tuple[list[str] | None, list[str] | None, str]:
    """What ListenerAudiences::from_config (gateway/src/layers/authenticate.rs) makes of a rendered
    portvagt.toml: (the mTLS listener's audiences, None for whatever the issuers accept; the
    citizen listener's, None without one; why the gateway would refuse to start, or "").
    Audiences compare without a trailing slash and in ASCII lower case, as there."""
    def normal(aud: str) -> str:
        return aud.rstrip("/").lower()

    table = config.get("citizen")
    citizen = None
    if table is not None:
        if table.get("audiences"):
            citizen = sorted({normal(aud) for aud in table["audiences"]})
        elif table.get("public_base_url") is not None:
            citizen = [normal(table["public_base_url"])]
        else:
            return None, None, "citizen.audiences: neither audiences nor public_base_url in [citizen]"
    named = sorted({normal(aud) for aud in config["server"].get("audiences", [])})
    if citizen is not None:
        shared = [aud for aud in named if aud in citizen]
        if shared:
            return None, citizen, f"server.audiences: {shared[0]!r} is the citizen listener's audience too"
    exchange_audience = None
    if "token_exchange" in config:
        exchange = config["token_exchange"]
        exchange_audience = exchange.get("audience") or exchange["issuer"]
    if named and exchange_audience is not None and normal(exchange_audience) not in named:
        return None, citizen, "server.audiences: lacks token exchange's audience"
    if named:
        return named, citizen, ""
    if citizen is None:
        return None, None, ""
    accepted = [aud for issuer in config.get("issuer", []) for aud in issuer.get("audiences", [])]
    if exchange_audience is not None:
        accepted.append(exchange_audience)
    accepted = sorted({normal(aud) for aud in accepted if normal(aud) not in citizen})
    if not accepted:
        return None, citizen, "server.audiences: every audience the issuers accept is the citizen listener's"
    return accepted, citizen, ""


# Keys the chart writes itself (fixed ports, mount paths, Redis) in each table of portvagt.toml;
# every other key comes from `config` as given.
CHART_WRITTEN = {
    "server": {"listen", "admin_listen", "replicas"},
    "tls": {"cert", "key", "client_ca", "crls"},
    "policy": {"rules_file", "shadow_rules_file"},
    "backend.identity": {"signing_key"},
    "upstream.backend.identity": {"signing_key"},
    "decision_log": {"path"},
    "audit": {"spool_dir", "seal_key", "seal_key_id", "seal_jwks"},
    "token_exchange": {"signing_key", "trusted_sts", "redis_url"},
    "token_exchange.trusted_sts": {"certificate"},
    "rate_limit": {"redis_url"},
    "mass_lookup": {"redis_url"},
    "consent": {"redis_url"},
    "redis": {"ca_file", "client_cert", "client_key", "password_file"},
    "citizen": {"listen"},
    "paging": {"key_file"},
}
# The chart's own switches inside `config`: never written to portvagt.toml.
CHART_SWITCHES = {"enabled", "useRedis", "tlsSecret"}
# tlsSecret: the TOML key each Secret key becomes, and its file name in the mounted folder.
TLS_FILES = {"ca_file": ("caKey", "ca.crt"), "client_cert": ("certKey", "tls.crt"), "client_key": ("keyKey", "tls.key")}


def given(table: dict) -> dict:
    """What portvagt.toml should hold for a table of `config`: its scalars and lists, without null
    or "" (the gateway's default applies), the chart's switches and the sub-tables."""
    return {k: v for k, v in table.items()
            if k not in CHART_SWITCHES and not isinstance(v, dict) and v is not None and v != ""}


def tls_tables(values: dict) -> list[tuple[str, str, dict, str]]:
    """(values path, TOML table, values table, folder its tlsSecret is mounted at) for every table
    that may take its CA and client certificate from a Secret: the backend, each upstream's
    backend, the audit repository (while shipping is on), the relation service (while the
    relationship check is on with one)."""
    cfg = values["config"]
    tables = [("config.backend", "backend", cfg["backend"], "/etc/portvagt/backend-tls")]
    tables += [(f"config.upstreams[{i}].backend", f"upstream[{i}].backend", u["backend"],
                f"/etc/portvagt/upstreams/{u['name']}") for i, u in enumerate(cfg.get("upstreams") or [])]
    if cfg["audit"]["enabled"] and cfg["audit"]["ship"].get("url"):
        tables.append(("config.audit.ship", "audit.ship", cfg["audit"]["ship"], "/etc/portvagt/audit-ship-tls"))
    if cfg["relationship"]["enabled"] and cfg["relationship"]["service"].get("url"):
        tables.append(("config.relationship.service", "relationship.service", cfg["relationship"]["service"],
                       "/etc/portvagt/relationship-service-tls"))
    return tables


def secret_files(table: dict, folder: str) -> dict[str, tuple[str, str]]:
    """{TOML key: (path, Secret key)} of the files a table's tlsSecret provides."""
    secret = table.get("tlsSecret") or {}
    if not secret.get("existingSecret"):
        return {}
    return {file: (f"{folder}/{name}", secret[key]) for file, (key, name) in TLS_FILES.items() if secret.get(key)}


def uses_redis(values: dict) -> bool:
    cfg = values["config"]
    return any(cfg[t]["enabled"] and cfg[t]["useRedis"]
               for t in ("token_exchange", "rate_limit", "mass_lookup", "consent"))


def redis_expected(values: dict) -> tuple[dict, list[dict], list[dict]]:
    """What redis.auth and redis.tls should make of the pod, while something uses Redis: the
    `[redis]` table (empty: none), the volumes (mode 0440, only the keys named) and the gateway's
    read-only folder mounts of them."""
    if not uses_redis(values):
        return {}, [], []
    redis = values["redis"]
    table: dict = {}
    volumes: list[dict] = []
    ca, client, auth = redis["tls"]["ca"], redis["tls"]["clientCert"], redis["auth"]
    if ca["existingSecret"] or ca["existingConfigMap"]:
        source = ({"secret": {"secretName": ca["existingSecret"]}} if ca["existingSecret"]
                  else {"configMap": {"name": ca["existingConfigMap"]}})
        next(iter(source.values())).update({"defaultMode": 0o440, "items": [{"key": ca["key"], "path": "ca.crt"}]})
        volumes.append({"name": "redis-ca", **source})
        table["ca_file"] = f"{REDIS_CA_DIR}/ca.crt"
    if client["existingSecret"]:
        volumes.append({"name": "redis-client-tls", "secret": {
            "secretName": client["existingSecret"], "defaultMode": 0o440,
            "items": [{"key": client["certKey"], "path": "tls.crt"}, {"key": client["keyKey"], "path": "tls.key"}]}})
        table.update({"client_cert": f"{REDIS_CLIENT_DIR}/tls.crt", "client_key": f"{REDIS_CLIENT_DIR}/tls.key"})
    if auth["existingSecret"]:
        volumes.append({"name": "redis-password", "secret": {
            "secretName": auth["existingSecret"], "defaultMode": 0o440,
            "items": [{"key": auth["passwordKey"], "path": "password"}]}})
        table["password_file"] = f"{REDIS_AUTH_DIR}/password"
    if auth["username"]:
        table["username"] = auth["username"]
    folders = {"redis-ca": REDIS_CA_DIR, "redis-client-tls": REDIS_CLIENT_DIR, "redis-password": REDIS_AUTH_DIR}
    mounts = [{"name": v["name"], "mountPath": folders[v["name"]], "readOnly": True} for v in volumes]
    return table, volumes, mounts


def check_redis_password(name: str, docs: list[dict], text: str, config: dict, values: dict) -> None:
    """The Redis password is only ever a mounted file: [redis] names its path, no key of the
    configuration holds it, no URL carries it, no container has it in its environment, and no
    init container writes it anywhere."""
    secret = values["redis"]["auth"]["existingSecret"]
    table, _, _ = redis_expected(values)
    pod = workload(docs)["spec"]["template"]["spec"]
    containers = pod["containers"] + pod.get("initContainers", [])
    in_env = [f"{c['name']}: {e['name']}" for c in containers for e in c.get("env", [])
              if ((e.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name") == secret]
    in_env += [f"{c['name']}: envFrom" for c in containers for e in c.get("envFrom", [])
               if (e.get("secretRef") or {}).get("name") == secret]
    keys = [k for k in config.get("redis", {}) if "password" in k and k != "password_file"]
    problems = in_env + keys + [f"init container {c['name']}" for c in pod.get("initContainers", [])]
    problems += [f"URL with credentials: {u}" for u in re.findall(r"rediss?://[^@/'\"\s]*:[^@/'\"\s]*@", text)]
    if "password_file" in table:
        where = f"only as [redis] password_file = {table['password_file']} (Secret {secret})"
        problems += [] if config.get("redis", {}).get("password_file") == table["password_file"] \
            else ["no [redis] password_file"]
    else:
        where = "nowhere (no password Secret in use)"
    REPORT.check(f"{name}: the Redis password appears in no ConfigMap, URL, environment variable or init "
                 f"container; {where}", not problems, "; ".join(problems))


def check_config_values(name: str, config: dict, values: dict) -> None:
    """portvagt.toml holds exactly the tables that are switched on, each with the keys `config`
    gives it (and the paths of its tlsSecret), nothing else but what the chart writes itself."""
    cfg = values["config"]
    switched = [t for t in ("consent", "relationship", "rate_limit", "mass_lookup", "audit", "token_exchange",
                                 "citizen")
                if cfg[t]["enabled"]]
    listed = [toml for toml, key in (("issuer", "issuers"), ("route", "routes"), ("upstream", "upstreams"),
                                     ("operation", "operations"))
              if cfg.get(key)]
    if cfg["decision_log"]["enabled"]:
        switched.append("decision_log")
    redis_table, _, _ = redis_expected(values)
    tables = {"server", "tls", "limits", "backend", "smart", "policy", "paging", "tracing", "log", *switched,
              *listed, *(["redis"] if redis_table else [])}
    REPORT.check(f"{name}: portvagt.toml has the tables {', '.join(sorted(tables))}", set(config) == tables,
                 f"has {sorted(config)}")

    # (where, the rendered table, what it should hold)
    expected: list[tuple[str, dict, dict]] = []
    for table in ("server", "limits", "smart", "policy", "tracing", "log", *switched):
        expected.append((table, config.get(table, {}), given(cfg[table])))
    if "audit" in switched and cfg["audit"]["ship"].get("url"):
        expected.append(("audit.ship", config["audit"].get("ship", {}), given(cfg["audit"]["ship"])))
    if "relationship" in switched and cfg["relationship"]["service"].get("url"):
        expected.append(("relationship.service", config["relationship"].get("service", {}),
                         given(cfg["relationship"]["service"])))
    for i, issuer in enumerate(cfg["issuers"]):
        rendered = config["issuer"][i] if i < len(config.get("issuer", [])) else {}
        expected.append((f"issuer[{i}]", rendered, given(issuer)))
        for sub in ("claims", "introspection"):
            if issuer.get(sub):
                expected.append((f"issuer[{i}].{sub}", rendered.get(sub, {}), given(issuer[sub])))
    for i, route in enumerate(cfg.get("routes") or []):
        expected.append((f"route[{i}]", (config.get("route") or [{}] * (i + 1))[i], given(route)))
    for i, operation in enumerate(cfg.get("operations") or []):
        expected.append((f"operation[{i}]", (config.get("operation") or [{}] * (i + 1))[i], given(operation)))
    expected.append(("backend", config["backend"], given(cfg["backend"])))
    if (cfg["backend"].get("identity") or {}).get("enabled"):
        expected.append(("backend.identity", config["backend"].get("identity", {}),
                         given(cfg["backend"]["identity"])))
    for i, upstream in enumerate(cfg.get("upstreams") or []):
        rendered = config["upstream"][i] if i < len(config.get("upstream", [])) else {}
        expected.append((f"upstream[{i}]", rendered, given(upstream)))
        expected.append((f"upstream[{i}].backend", rendered.get("backend", {}), given(upstream["backend"])))
        if (upstream["backend"].get("identity") or {}).get("enabled"):
            expected.append((f"upstream[{i}].backend.identity",
                             rendered.get("backend", {}).get("identity", {}),
                             given(upstream["backend"]["identity"])))
    # The tlsSecret files, by their paths.
    wanted_of = {where: wanted for where, _, wanted in expected}
    for _, where, table, folder in tls_tables(values):
        wanted_of[where].update({file: path for file, (path, _) in secret_files(table, folder).items()})

    def sub_table(value) -> bool:
        return isinstance(value, dict) or (isinstance(value, list) and bool(value)
                                           and all(isinstance(v, dict) for v in value))

    wrong = []
    for where, rendered, wanted in expected:
        written = CHART_WRITTEN.get(re.sub(r"\[\d+\]", "", where), set())
        actual = {k: v for k, v in rendered.items() if k not in written and not sub_table(v)}
        if actual != wanted:
            missing = {k: v for k, v in wanted.items() if actual.get(k) != v}
            extra = {k: v for k, v in actual.items() if k not in wanted}
            wrong.append(f"[{where}] wants {missing}, has besides {extra}")
    REPORT.check(f"{name}: {len(expected)} tables of portvagt.toml hold exactly the values given "
                 f"({sum(len(w) for _, _, w in expected)} keys)", not wrong, "; ".join(wrong))

    # Redis: the same URL, as given, for everything that shares it; [redis] with the mounted
    # files' paths and the ACL user exactly when something uses Redis and one of them is set.
    for table in ("token_exchange", "rate_limit", "mass_lookup", "consent"):
        if table in config:
            uses = cfg[table]["useRedis"]
            ok = config[table].get("redis_url") == (values["redis"]["url"] if uses else None)
            REPORT.check(f"{name}: [{table}] redis_url {'is redis.url' if uses else 'is left out'}", ok,
                         str(config[table].get("redis_url")))
    REPORT.check(f"{name}: [redis] " + (f"is {redis_table}" if redis_table else "is absent"),
                 config.get("redis", {}) == redis_table and ("redis" in config) == bool(redis_table),
                 str(config.get("redis")))


def check_config_files(name: str, docs: list[dict], config: dict, values: dict) -> None:
    """Every file portvagt.toml names is on a read-only mount, and is one the mounted Secret or
    ConfigMap holds; the tlsSecret files come from the Secret named for them."""
    pod = workload(docs)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mounts = {m["mountPath"].rstrip("/"): m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    files = [config["tls"][k] for k in ("cert", "key", "client_ca")] + config["tls"].get("crls", [])
    if "token_exchange" in config:
        files += [config["token_exchange"]["signing_key"],
                  *[sts.get("certificate") for sts in config["token_exchange"]["trusted_sts"] if isinstance(sts, dict)]]
    files += [config["policy"][k] for k in ("rules_file", "shadow_rules_file") if k in config.get("policy", {})]
    files += [b["identity"]["signing_key"] for b in [config["backend"], *[u["backend"] for u in config.get("upstream", [])]]
              if "identity" in b]
    files += [config.get("audit", {})[k] for k in ("seal_key", "seal_jwks") if k in config.get("audit", {})]
    files += [config["paging"]["key_file"]] if "key_file" in config.get("paging", {}) else []
    for issuer in config.get("issuer", []):
        files += [issuer[k] for k in ("ca_file", "jwks_file") if k in issuer]
        files += [issuer.get("introspection", {})[k] for k in ("client_secret_file", "client_cert", "client_key")
                  if k in issuer.get("introspection", {})]
    backends = [config["backend"], *[u["backend"] for u in config.get("upstream", [])],
                config.get("audit", {}).get("ship", {}), config.get("relationship", {}).get("service", {})]
    files += [b[k] for b in backends for k in TLS_FILES if k in b]
    files += [v for k, v in config.get("redis", {}).items() if k != "username"]

    def mount_of(path: str) -> str | None:
        folders = [m for m in mounts if path.startswith(m + "/")]
        return max(folders, key=len) if folders else None

    problems = []
    for path in files:
        folder = mount_of(path)
        if folder is None or not mounts[folder].get("readOnly"):
            problems.append(f"{path}: on no read-only mount")
            continue
        source = volumes[mounts[folder]["name"]]
        items = (source.get("secret") or source.get("configMap") or {}).get("items")
        if items is not None and path[len(folder) + 1:] not in [i["path"] for i in items]:
            problems.append(f"{path}: {mounts[folder]['name']} has no item of that name")
    REPORT.check(f"{name}: {len(files)} files named in portvagt.toml are on read-only mounts that hold them",
                 not problems, "; ".join(problems))

    count, problems = 0, []
    for field, _, table, folder in tls_tables(values):
        for file, (path, key) in secret_files(table, folder).items():
            count += 1
            mount = mounts.get(folder)
            secret = volumes[mount["name"]].get("secret", {}) if mount else {}
            if not mount or not mount.get("readOnly") or mount.get("subPath"):
                problems.append(f"{field}: {folder} is not a read-only folder mount")
            elif secret.get("secretName") != table["tlsSecret"]["existingSecret"]:
                problems.append(f"{field}: {folder} is {secret.get('secretName')}, not {table['tlsSecret']['existingSecret']}")
            elif {"key": key, "path": path.rsplit("/", 1)[1]} not in secret.get("items", []):
                problems.append(f"{field}: {key} is not mounted as {path}")
    tls_volumes = [v for v in volumes if v in ("backend-tls", "audit-ship-tls", "relationship-service-tls")
                   or re.fullmatch(r"upstream-\d+-tls", v)]
    if count:
        REPORT.check(f"{name}: {count} backend TLS files come from their Secrets, read-only, where portvagt.toml "
                     f"points ({len(tls_volumes)} volumes)", not problems, "; ".join(problems))
    else:
        REPORT.check(f"{name}: no backend TLS Secret is mounted", not tls_volumes, str(tls_volumes))


def check_pod(name: str, docs: list[dict], values: dict) -> None:
    work = workload(docs)
    expected_kind = "StatefulSet" if (values["config"]["audit"]["enabled"]
                                      and values["auditSpool"]["type"] == "persistentVolumeClaim") else "Deployment"
    REPORT.check(f"{name}: runs as a {expected_kind}", work["kind"] == expected_kind, work["kind"])
    pod = work["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    REPORT.check(f"{name}: pod runs as non-root user 10001 with fsGroup and RuntimeDefault seccomp",
                 psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 10001 and psc.get("fsGroup") == 10001
                 and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", str(psc))
    REPORT.check(f"{name}: no service account token", pod.get("automountServiceAccountToken") is False)
    for container in pod["containers"] + pod.get("initContainers", []):
        sc = container.get("securityContext", {})
        REPORT.check(f"{name}: {container['name']}: read-only root, no escalation, all capabilities dropped",
                     sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
                     and sc.get("capabilities", {}).get("drop") == ["ALL"] and sc.get("runAsNonRoot") is True
                     and sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", str(sc))
        resources = container.get("resources", {})
        REPORT.check(f"{name}: {container['name']}: cpu and memory requests and limits",
                     all(k in resources.get(s, {}) for s in ("requests", "limits") for k in ("cpu", "memory")),
                     str(resources))
    gateway = pod["containers"][0]
    REPORT.check(f"{name}: container args are serve --config {CONFIG_PATH}",
                 gateway.get("args") == ["serve", "--config", CONFIG_PATH], str(gateway.get("args")))
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    wanted = {"fhir": 8443, "admin": 9090}
    if values["config"]["citizen"]["enabled"]:
        wanted["citizen"] = 8444
    REPORT.check(f"{name}: ports {', '.join(f'{k} {v}' for k, v in wanted.items())}", ports == wanted, str(ports))
    services = {s["metadata"]["name"]: s for s in find(docs, "Service")}
    citizen = [s for n, s in services.items() if n.endswith("-citizen")]
    REPORT.check(f"{name}: a citizen Service {'to the citizen port' if 'citizen' in wanted else 'only with the listener'}",
                 [p["targetPort"] for s in citizen for p in s["spec"]["ports"]] == (["citizen"] if "citizen" in wanted else []))

    live, ready = gateway.get("livenessProbe", {}), gateway.get("readinessProbe", {})
    REPORT.check(f"{name}: liveness GET /healthz and readiness GET /readyz on the admin port",
                 live.get("httpGet", {}).get("path") == "/healthz" and ready.get("httpGet", {}).get("path") == "/readyz"
                 and live["httpGet"].get("port") in ("admin", 9090) and ready["httpGet"].get("port") in ("admin", 9090),
                 f"{live} / {ready}")
    grace = int(values["config"]["server"]["shutdown_grace"].rstrip("s"))
    REPORT.check(f"{name}: terminationGracePeriodSeconds above preStop + shutdown_grace",
                 pod["terminationGracePeriodSeconds"] > grace + values["preStopSleepSeconds"])
    image = gateway["image"]
    digest = values["image"]["digest"]
    REPORT.check(f"{name}: image pinned by tag{' and digest' if digest else ''}",
                 re.search(r":[\w.\-]+(@sha256:[0-9a-f]{64})?$", image) is not None and not image.endswith(":latest")
                 and (not digest or image.endswith("@" + digest)), image)
    secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
    writable = [m["mountPath"] for c in pod["containers"] + pod.get("initContainers", [])
                for m in c["volumeMounts"] if m["name"] in secret_volumes and not m.get("readOnly")]
    REPORT.check(f"{name}: {len(secret_volumes)} Secrets mounted read-only", not writable, str(writable))
    annotations = work["spec"]["template"]["metadata"].get("annotations", {})
    REPORT.check(f"{name}: pods roll when portvagt.toml changes", "checksum/config" in annotations)

    # The seal key: its own Secret, only in the gateway container, read-only, mode 0440, as a
    # folder (no subPath, like every Secret here), never on the spool's volume.
    seal_key = values["auditSealKey"]
    seal_volumes = [v for v in pod["volumes"] if v["name"] == "audit-seal-key"]
    seal_mounts = [(c["name"], m) for c in pod["containers"] + pod.get("initContainers", [])
                   for m in c["volumeMounts"] if m["name"] == "audit-seal-key"]
    if values["config"]["audit"]["enabled"] and seal_key["existingSecret"]:
        items = [{"key": seal_key["key"], "path": "seal.key"}]
        if seal_key["trustedJwksKey"]:
            items.append({"key": seal_key["trustedJwksKey"], "path": "trusted-jwks.json"})
        wanted_volume = {"name": "audit-seal-key",
                         "secret": {"secretName": seal_key["existingSecret"], "defaultMode": 0o440,
                                    "items": items}}
        wanted_mount = ("portvagt", {"name": "audit-seal-key", "mountPath": SEAL_DIR, "readOnly": True})
        jwks = f" and key {seal_key['trustedJwksKey']} as {SEAL_JWKS}" if seal_key["trustedJwksKey"] else ""
        REPORT.check(f"{name}: Secret {seal_key['existingSecret']} key {seal_key['key']} is mounted read-only, "
                     f"mode 0440, as {SEAL_KEY}{jwks}", seal_volumes == [wanted_volume] and seal_mounts == [wanted_mount],
                     str(seal_volumes + seal_mounts))
    else:
        REPORT.check(f"{name}: no seal key is mounted", not seal_volumes and not seal_mounts,
                     str(seal_volumes + seal_mounts))

    # Redis' CA, client certificate and password: each its own volume, only in the gateway
    # container, read-only folders (no subPath), mode 0440, exactly while [redis] names them.
    _, wanted_volumes, wanted_mounts = redis_expected(values)
    redis_names = {"redis-ca", "redis-client-tls", "redis-password"}
    redis_volumes = [v for v in pod["volumes"] if v["name"] in redis_names]
    redis_mounts = [(c["name"], m) for c in pod["containers"] + pod.get("initContainers", [])
                    for m in c["volumeMounts"] if m["name"] in redis_names]
    if wanted_volumes:
        sources = ", ".join(f"{'ConfigMap ' + v['configMap']['name'] if 'configMap' in v else v['secret']['secretName']}"
                            f" as {m['mountPath']}" for v, m in zip(wanted_volumes, wanted_mounts))
        REPORT.check(f"{name}: Redis' files are mounted read-only, mode 0440, in the gateway only: {sources}",
                     redis_volumes == wanted_volumes and redis_mounts == [("portvagt", m) for m in wanted_mounts],
                     str(redis_volumes + redis_mounts))
    else:
        REPORT.check(f"{name}: no Redis Secret or ConfigMap is mounted", not redis_volumes and not redis_mounts,
                     str(redis_volumes + redis_mounts))

    spool = [v for v in pod["volumes"] if v["name"] == "audit-spool"]
    claims = [t["metadata"]["name"] for t in work["spec"].get("volumeClaimTemplates", [])]
    spool_type = values["auditSpool"]["type"]
    if not values["config"]["audit"]["enabled"]:
        ok = not spool and not claims
    elif spool_type == "persistentVolumeClaim":
        ok = claims == ["audit-spool"] and not spool
    elif spool_type == "existingClaim":
        ok = spool and spool[0]["persistentVolumeClaim"]["claimName"] == values["auditSpool"]["existingClaim"]
        ok = ok and work["spec"]["strategy"]["type"] == "Recreate"
    else:
        ok = bool(spool) and "emptyDir" in spool[0]
    REPORT.check(f"{name}: audit spool volume: {spool_type}", bool(ok), str(spool or claims))


def check_resources(name: str, docs: list[dict], values: dict) -> None:
    services = find(docs, "Service")
    ports = sorted(p["port"] for s in services for p in s["spec"]["ports"])
    citizen_on = values["config"]["citizen"]["enabled"]
    wanted = sorted([8443, 9090] + ([values["citizenService"]["port"]] if citizen_on else []))
    REPORT.check(f"{name}: Services expose {', '.join(map(str, wanted))}", ports == wanted, str(ports))
    admin = [s for s in services if s["spec"]["ports"][0]["name"] == "admin"]
    REPORT.check(f"{name}: the admin port is on its own cluster-internal Service",
                 len(admin) == 1 and admin[0]["spec"]["type"] == "ClusterIP" and len(admin[0]["spec"]["ports"]) == 1)
    everything_namespaced = all(d["metadata"].get("namespace") == NAMESPACE for d in docs)
    REPORT.check(f"{name}: every resource names its namespace", everything_namespaced)
    labelled = all(d["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "portvagt"
                   and d["metadata"]["labels"].get("app.kubernetes.io/instance") == RELEASE for d in docs)
    REPORT.check(f"{name}: every resource carries the app.kubernetes.io labels", labelled)

    hpa = find(docs, "HorizontalPodAutoscaler")
    if values["autoscaling"]["enabled"]:
        work = workload(docs)
        REPORT.check(f"{name}: the HPA scales the {work['kind']}, which leaves replicas to it",
                     len(hpa) == 1 and hpa[0]["spec"]["scaleTargetRef"]["kind"] == work["kind"]
                     and hpa[0]["spec"]["scaleTargetRef"]["name"] == work["metadata"]["name"]
                     and "replicas" not in work["spec"])
    else:
        REPORT.check(f"{name}: no HPA", not hpa)
    REPORT.check(f"{name}: PodDisruptionBudget {'on' if values['podDisruptionBudget']['enabled'] else 'off'}",
                 len(find(docs, "PodDisruptionBudget")) == int(values["podDisruptionBudget"]["enabled"]))

    policies = find(docs, "NetworkPolicy")
    if values["networkPolicy"]["enabled"]:
        wanted_ingress = ["admin", "citizen", "fhir"] if citizen_on else ["admin", "fhir"]
        ok = len(policies) == 1
        if ok:
            spec = policies[0]["spec"]
            ingress_ports = sorted(p["port"] for rule in spec["ingress"] for p in rule["ports"])
            dns = any(p["port"] == 53 for rule in spec["egress"] for p in rule["ports"])
            ok = set(spec["policyTypes"]) == {"Ingress", "Egress"} and ingress_ports == wanted_ingress and dns
        REPORT.check(f"{name}: NetworkPolicy limits ingress to {', '.join(wanted_ingress)} and allows DNS out", ok,
                     str(policies[0]["spec"] if policies else None))
        egress = values["networkPolicy"]["egress"]
        relationship = values["config"]["relationship"]
        targets = ["backend", "issuers", "audit", "redis"] + (["upstreams"] if values["config"].get("upstreams") else [])
        targets += ["relationship"] if relationship["enabled"] and relationship["service"]["url"] else []
        wanted = [{"ports": egress[t]["ports"], **({"to": egress[t]["to"]} if egress[t]["to"] else {})}
                  for t in targets if egress[t]["enabled"]]
        rules = policies[0]["spec"]["egress"] if policies else []
        REPORT.check(f"{name}: NetworkPolicy lets out exactly DNS and {', '.join(t for t in targets if egress[t]['enabled'])}"
                     f"{' and the extra rules' if egress['extra'] else ''}",
                     rules[int(egress["dns"]["enabled"]):] == wanted + egress["extra"], str(rules))
    else:
        REPORT.check(f"{name}: no NetworkPolicy", not policies)

    monitors = find(docs, "ServiceMonitor")
    if values["serviceMonitor"]["enabled"]:
        ok = len(monitors) == 1 and monitors[0]["spec"]["endpoints"][0]["port"] == "admin" \
            and monitors[0]["spec"]["endpoints"][0]["path"] == "/metrics" \
            and monitors[0]["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") == "admin"
        REPORT.check(f"{name}: ServiceMonitor scrapes /metrics on the admin Service", ok)
    else:
        REPORT.check(f"{name}: no ServiceMonitor", not monitors)
    check_prometheus_rule(name, docs, values)
    dashboards = find(docs, "ConfigMap", "-dashboard")
    if values["dashboards"]["enabled"]:
        ok = len(dashboards) == 1 and json.loads(dashboards[0]["data"]["portvagt.json"])["uid"] == "portvagt-gateway"
        REPORT.check(f"{name}: the Grafana dashboard ConfigMap carries the dashboard", ok)
    else:
        REPORT.check(f"{name}: no dashboard ConfigMap", not dashboards)


# The fields of a PrometheusRule (monitoring.coreos.com/v1) the chart uses, as the Prometheus
# Operator's CRD describes them, strict: kubernetes-validate has no schema for it.
PROMETHEUS_DURATION = "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object", "required": ["name", "namespace"],
                     "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                                    "labels": STRING_MAP, "annotations": STRING_MAP},
                     "additionalProperties": False},
        "spec": {"type": "object", "additionalProperties": False, "properties": {"groups": {
            "type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": {"type": "string", "pattern": PROMETHEUS_DURATION},
                    "rules": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["expr"], "additionalProperties": False,
                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                        "properties": {
                            "alert": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
                            "record": {"type": "string"},
                            "expr": {"type": ["string", "integer"]},
                            "for": {"type": "string", "pattern": PROMETHEUS_DURATION},
                            "keep_firing_for": {"type": "string", "pattern": PROMETHEUS_DURATION},
                            "labels": STRING_MAP,
                            "annotations": STRING_MAP}}}}}}}},
    },
}
# The alerts the chart must ship: (severity, the `prometheusRule` table with its `for`).
AUDIT_ALERTS = {"PortvagtAuditSpoolLow": ("warning", "spoolLow"),
                "PortvagtAuditSpoolCritical": ("critical", "spoolCritical"),
                "PortvagtAuditRecordsLost": ("critical", None)}


def metrics_in(texts: list[str]) -> set[str]:
    """The gateway metrics PromQL expressions (or prose) name, histogram series folded into their
    histogram."""
    return {re.sub(r"_(bucket|sum|count)$", "", m) for t in texts for m in re.findall(r"portvagt_[a-z0-9_]+", t)}


def check_prometheus_rule(name: str, docs: list[dict], values: dict) -> None:
    """The audit alerts: rendered exactly when switched on with the audit trail; the CRD's fields;
    every expression naming only the gateway's metrics, each scoped by the selector, with the
    thresholds and windows from the values; the annotations saying what to do."""
    rule = values["prometheusRule"]
    found = find(docs, "PrometheusRule")
    if not (rule["enabled"] and values["config"]["audit"]["enabled"]):
        why = "switched off" if not rule["enabled"] else "switched on, but the audit trail is off"
        REPORT.check(f"{name}: no PrometheusRule ({why})", not found, str([d["metadata"]["name"] for d in found]))
        return
    if not REPORT.check(f"{name}: one PrometheusRule", len(found) == 1, str(len(found))):
        return
    doc = manifest(found[0])
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}"
              for e in jsonschema.Draft7Validator(PROMETHEUS_RULE_SCHEMA).iter_errors(doc)]
    REPORT.check(f"{name}: the PrometheusRule has only the CRD's fields, durations as Prometheus reads them",
                 not errors, "; ".join(errors[:5]))
    if errors:
        return
    labels = doc["metadata"].get("labels", {})
    REPORT.check(f"{name}: the PrometheusRule carries prometheusRule.labels {rule['labels']}",
                 all(labels.get(k) == v for k, v in rule["labels"].items()), str(labels))
    alerts = {r["alert"]: r for g in doc["spec"]["groups"] for r in g["rules"] if "alert" in r}
    REPORT.check(f"{name}: the PrometheusRule has the alerts {', '.join(AUDIT_ALERTS)}",
                 set(AUDIT_ALERTS) <= set(alerts), str(sorted(alerts)))

    exprs = [str(r["expr"]) for g in doc["spec"]["groups"] for r in g["rules"]]
    used, known = metrics_in(exprs), gateway_source.metric_names(REPO)
    REPORT.check(f"{name}: the PrometheusRule's {len(exprs)} expressions use {len(used)} metrics, all of them the gateway's",
                 bool(exprs) and used <= known, str(sorted(used - known)))
    prose = [a for r in alerts.values() for a in r.get("annotations", {}).values()]
    named = metrics_in(prose)
    REPORT.check(f"{name}: the alerts' annotations name {len(named)} metrics, all of them the gateway's",
                 named <= known, str(sorted(named - known)))
    selector = rule["selector"] or f'namespace="{NAMESPACE}", job="{RELEASE}-admin"'
    unscoped = [m.group(0) for e in exprs for m in re.finditer(r"portvagt_[a-z0-9_]+(\{[^}]*\})?", e)
                if m.group(1) != "{" + selector + "}"]
    REPORT.check(f"{name}: every series in the alerts is chosen by {{{selector}}}", not unscoped, str(unscoped))

    def thresholds(expr: str) -> list[float]:
        return sorted(float(n) for n in re.findall(r"[<>]=?\s*(-?[0-9][0-9.e+\-]*)", expr))

    min_free = values["config"]["audit"]["min_free_bytes"]
    low, critical = rule["spoolLow"], rule["spoolCritical"]
    wanted = {
        "PortvagtAuditSpoolLow": ({"portvagt_audit_spool_free_bytes", "portvagt_audit_spool_capacity_bytes"},
                                  [low["freeRatio"]]),
        "PortvagtAuditSpoolCritical": ({"portvagt_audit_spool_free_bytes", "portvagt_audit_spool_capacity_bytes"},
                                       sorted([0, critical["freeRatio"], int(round(min_free * critical["minFreeFactor"]))])),
        "PortvagtAuditRecordsLost": ({"portvagt_audit_records_lost_total"}, [0]),
    }
    for alert, (severity, table) in AUDIT_ALERTS.items():
        r = alerts.get(alert)
        if r is None:
            continue
        expr = str(r["expr"])
        metrics, numbers = wanted[alert]
        for_ = rule[table]["for"] if table else None
        problems = []
        if metrics_in([expr]) != metrics:
            problems.append(f"metrics {sorted(metrics_in([expr]))}, wants {sorted(metrics)}")
        if thresholds(expr) != [float(n) for n in numbers]:
            problems.append(f"thresholds {thresholds(expr)}, wants {numbers}")
        if r.get("for") != for_:
            problems.append(f"for {r.get('for')}, wants {for_}")
        if alert == "PortvagtAuditRecordsLost" and \
                f"increase(portvagt_audit_records_lost_total{{{selector}}}[{rule['recordsLost']['window']}])" not in expr:
            problems.append(f"not an increase over recordsLost.window {rule['recordsLost']['window']}")
        if r.get("labels") != {"severity": severity, **rule["alertLabels"]}:
            problems.append(f"labels {r.get('labels')}")
        REPORT.check(f"{name}: {alert} ({severity}"
                     + (f", for {for_}" if for_ else "") + f") over {', '.join(sorted(metrics))} at "
                     f"{', '.join(str(n) for n in numbers)}, from the values", not problems, "; ".join(problems))

        annotations = r.get("annotations", {})
        description = annotations.get("description", "")
        claim = {"persistentVolumeClaim": "PersistentVolumeClaim audit-spool-{{ $labels.pod }}",
                 "existingClaim": f"PersistentVolumeClaim {values['auditSpool']['existingClaim']}",
                 "emptyDir": "auditSpool.type to persistentVolumeClaim"}[values["auditSpool"]["type"]]
        problems = [f"no {k}" for k in ("summary", "description") if len(annotations.get(k, "")) < 20]
        problems += [] if "{{ $labels.pod }}" in annotations.get("summary", "") else ["the summary names no pod"]
        problems += [] if any(m.startswith("portvagt_audit_ship_") for m in metrics_in([description])) \
            else ["the description names no portvagt_audit_ship_* metric to check"]
        problems += [] if claim in description else [f"the description does not say how to grow the volume ({claim})"]
        REPORT.check(f"{name}: {alert} says what to do: check the shipper's metrics, grow the volume ({claim})",
                     not problems, "; ".join(problems))


def check_notes(name: str, notes: str, values: dict) -> None:
    warned = "LOST" in notes
    lossy = values["config"]["audit"]["enabled"] and values["auditSpool"]["type"] == "emptyDir"
    REPORT.check(f"{name}: NOTES.txt warns about an emptyDir spool exactly when there is one", warned == lossy)
    rate_limit = values["config"]["rate_limit"]
    alone = rate_limit["enabled"] and not rate_limit["useRedis"] and (values["autoscaling"]["enabled"]
                                                                     or values["replicaCount"] > 1)
    REPORT.check(f"{name}: NOTES.txt says rate limits are counted per replica exactly when they are",
                 ("counted by each replica alone" in notes) == alone)
    mass_lookup = values["config"]["mass_lookup"]
    alone = mass_lookup["enabled"] and not mass_lookup["useRedis"] and (values["autoscaling"]["enabled"]
                                                                       or values["replicaCount"] > 1)
    REPORT.check(f"{name}: NOTES.txt says the mass-lookup guard counts per replica exactly when it does",
                 ("counts patients on each replica alone" in notes) == alone)
    cfg = values["config"]
    alone = (cfg["citizen"]["enabled"] and cfg["citizen"]["blocks"] and cfg["consent"]["enabled"]
             and not cfg["consent"]["useRedis"] and (values["autoscaling"]["enabled"] or values["replicaCount"] > 1))
    REPORT.check(f"{name}: NOTES.txt says citizens' blocks reach other replicas by cache_ttl exactly when they do",
                 ("on the others only" in notes) == alone)
    secrets = [table["tlsSecret"]["existingSecret"] for _, _, table, folder in tls_tables(values)
               if secret_files(table, folder)]
    REPORT.check(f"{name}: NOTES.txt lists the {len(secrets)} backend TLS Secrets the pods need",
                 all(f"  - {s}: keys " in notes for s in secrets), str(secrets))
    audit_on = values["config"]["audit"]["enabled"]
    seal_secret = values["auditSealKey"]["existingSecret"]
    REPORT.check(f"{name}: NOTES.txt warns of an unsealed audit chain exactly when audit is on without a seal key",
                 ("audit chain is not sealed" in notes) == (audit_on and not seal_secret))
    REPORT.check(f"{name}: NOTES.txt lists the seal key Secret exactly when it is mounted",
                 bool(seal_secret and f"  - {seal_secret}: key " in notes) == bool(audit_on and seal_secret))
    jwks_key = values["auditSealKey"]["trustedJwksKey"]
    REPORT.check(f"{name}: NOTES.txt lists the trusted seal keys' JWK Set exactly when it is mounted",
                 bool(jwks_key and f", key {jwks_key} (JWK Set" in notes) == bool(audit_on and seal_secret and jwks_key))
    exchange_on = values["config"]["token_exchange"]["enabled"]
    sts_keys = [k["key"] for k in values["tokenExchangeKeys"]["trustedSts"]["keys"]]
    listed = [k for k in sts_keys if f"{k} (STS certificate for " in notes]
    REPORT.check(f"{name}: NOTES.txt lists the {len(sts_keys)} trusted STS certificate keys exactly when they are mounted",
                 listed == (sts_keys if exchange_on else []), str(listed))
    _, redis_volumes, _ = redis_expected(values)
    redis_sources = [f"ConfigMap {v['configMap']['name']}: key " if "configMap" in v else f"{v['secret']['secretName']}: key"
                     for v in redis_volumes]
    listed = [line for line in notes.splitlines() if "(Redis " in line]
    REPORT.check(f"{name}: NOTES.txt lists the {len(redis_sources)} Redis Secrets and ConfigMaps exactly when they "
                 "are mounted", len(listed) == len(redis_sources)
                 and all(line.startswith(f"  - {s}") for line, s in zip(listed, redis_sources)), str(listed))
    paging_key = values["pagingKey"]["existingSecret"]
    replicas = values["autoscaling"]["enabled"] or values["replicaCount"] > 1
    REPORT.check(f"{name}: NOTES.txt warns that paging links work on one pod only exactly when they do",
                 ("no paging key" in notes) == (replicas and not paging_key))
    REPORT.check(f"{name}: NOTES.txt lists the paging key Secret exactly when it is mounted",
                 bool(paging_key and f"  - {paging_key}: key " in notes) == bool(paging_key))


def checkov_skips(docs: list[dict]) -> dict[str, str]:
    skips = {}
    for doc in docs:
        for key, value in doc["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                check_id, _, reason = value.partition("=")
                skips[check_id] = reason
    return skips


def check_checkov(rendered: dict[str, list[dict]], workdir: Path) -> None:
    REPORT.section("checkov (framework kubernetes)")
    scan = workdir / "checkov"
    for name, docs in rendered.items():
        (scan / name).mkdir(parents=True)
        (scan / name / "manifests.yaml").write_text(yaml.safe_dump_all([manifest(d) for d in docs], sort_keys=False))
    checkov = Path(sys.executable).parent / "checkov"
    # --skip-download: nothing is fetched from the vendor's platform; the checks ship in the package.
    result = subprocess.run([str(checkov), "--directory", str(scan), "--framework", "kubernetes",
                             "--skip-download", "--output", "json"],
                            capture_output=True, text=True, env={**os.environ, "LOG_LEVEL": "ERROR"})
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        REPORT.check("checkov ran", False, (result.stderr or result.stdout)[-2000:])
        return
    reports = report if isinstance(report, list) else [report]
    results = [r["results"] for r in reports if "results" in r]
    summary = [r.get("summary", {}) for r in reports]
    passed = sum(s.get("passed", 0) for s in summary)
    failed = [c for r in results for c in r.get("failed_checks", [])]
    skipped = sum(s.get("skipped", 0) for s in summary)
    REPORT.check(f"checkov: {passed} passed, {len(failed)} failed, {skipped} skipped by the chart's annotations",
                 not failed and passed > 0,
                 "; ".join(f"{c['check_id']} {c['check_name']} ({c['resource']}, {c['file_path']})" for c in failed))
    readme = (CHART / "README.md").read_text()
    for check_id, reason in sorted({k: v for d in rendered.values() for k, v in checkov_skips(d).items()}.items()):
        REPORT.check(f"checkov skip {check_id} has a reason and is listed in the chart README",
                     len(reason.strip()) > 20 and check_id in readme, reason)


def check_image(defaults: dict) -> None:
    """The Dockerfile cannot be built without a container runtime; what the chart relies on is
    read from it instead, and checkov scans it."""
    REPORT.section("Dockerfile")
    dockerfile = (REPO / "Dockerfile").read_text()
    instructions = [line for line in dockerfile.splitlines() if line and not line.startswith("#")]
    text = "\n".join(instructions)
    expected = {
        "builds in rust:1-bookworm with libssl-dev and pkg-config":
            "FROM rust:1-bookworm AS build" in text and "libssl-dev pkg-config" in text,
        "builds with cargo build --release --locked -p portvagt":
            "cargo build --release --locked -p portvagt" in text,
        "runs on debian:bookworm-slim with only ca-certificates and libssl3":
            "FROM debian:bookworm-slim" in text and "--no-install-recommends ca-certificates libssl3" in text,
        "runs as user 10001, the chart's runAsUser":
            "USER 10001:10001" in text and defaults["securityContext"]["runAsUser"] == 10001,
        "puts the binary at /usr/local/bin/portvagt with ENTRYPOINT [\"portvagt\"]":
            "/usr/local/bin/portvagt" in text and 'ENTRYPOINT ["portvagt"]' in text,
        "exposes 8443 and 9090": "EXPOSE 8443 9090" in text,
    }
    for what, ok in expected.items():
        REPORT.check(f"Dockerfile {what}", ok)
    ignored = (REPO / ".dockerignore").read_text().split()
    REPORT.check(".dockerignore keeps target/, node_modules, demo/, .git and helm/.venv out of the context",
                 all(p in ignored for p in ("target/", "**/node_modules", "demo/", ".git", "helm/.venv")))
    chart = load_yaml(CHART / "Chart.yaml")
    REPORT.check(f"the chart's default image is {defaults['image']['repository']}:{chart['appVersion']}",
                 defaults["image"]["tag"] in ("", chart["appVersion"]) and defaults["image"]["repository"].endswith("/portvagt"))
    checkov = Path(sys.executable).parent / "checkov"
    result = subprocess.run([str(checkov), "--file", str(REPO / "Dockerfile"), "--framework", "dockerfile",
                             "--skip-download", "--output", "json"], capture_output=True, text=True)
    try:
        report = json.loads(result.stdout)
        failed = report["results"]["failed_checks"]
        summary = report["summary"]
        REPORT.check(f"checkov: {summary['passed']} passed, {len(failed)} failed, {summary['skipped']} skipped "
                     "in the Dockerfile", not failed and summary["passed"] > 0,
                     "; ".join(f"{c['check_id']} {c['check_name']}" for c in failed))
        readme = (CHART / "README.md").read_text()
        for check_id in re.findall(r"checkov:skip=(\w+)", dockerfile):
            REPORT.check(f"checkov skip {check_id} in the Dockerfile is listed in the chart README", check_id in readme)
    except (json.JSONDecodeError, KeyError):
        REPORT.check("checkov ran on the Dockerfile", False, (result.stderr or result.stdout)[-2000:])


def check_dashboard() -> None:
    REPORT.section("Grafana dashboard")
    dashboard = json.loads((CHART / "dashboards" / "portvagt.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = metrics_in(exprs)
    known = gateway_source.metric_names(REPO)
    REPORT.check(f"the dashboard's {len(exprs)} queries use {len(used)} metrics, all of them the gateway's",
                 bool(exprs) and used <= known, str(sorted(used - known)))
    positions = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in dashboard["panels"]]
    REPORT.check("no two panels share a place", len(positions) == len(set(positions)))
    boxes = [(p.get("title"), p["gridPos"]) for p in dashboard["panels"]]
    overlapping = [f"{a} / {b}" for i, (a, g) in enumerate(boxes) for b, h in boxes[i + 1:]
                   if g["x"] < h["x"] + h["w"] and h["x"] < g["x"] + g["w"]
                   and g["y"] < h["y"] + h["h"] and h["y"] < g["y"] + g["h"]]
    REPORT.check("no two panels overlap, none is wider than the 24 columns",
                 not overlapping and all(g["x"] + g["w"] <= 24 for _, g in boxes), "; ".join(overlapping))
    ids = [p.get("id") for p in dashboard["panels"]]
    REPORT.check("every panel has an id of its own", None not in ids and len(ids) == len(set(ids)))
    spool = [p["title"] for p in dashboard["panels"]
             if any("portvagt_audit_spool_free_bytes" in t["expr"] for t in p.get("targets", []))]
    REPORT.check(f"the dashboard shows the audit spool's free space ({', '.join(spool)})", bool(spool))


def main() -> int:
    print(f"portvagt chart tests (helm SDK {helm.helm_sdk_version()}, kubernetes-validate "
          f"{kubernetes_validate.version.__version__}, Kubernetes {' and '.join(KUBE_VERSIONS)})")
    defaults = load_yaml(CHART / "values.yaml")
    gateway = gateway_source.config_tables(REPO)
    check_lint({"default": {}, "production": VARIANTS["production"], "upstreams": VARIANTS["upstreams"]})
    check_values_documented()
    check_gateway_coverage(gateway)
    with helm.Chart.load(CHART) as chart:
        check_values_schema(chart, defaults)
        rendered: dict[str, list[dict]] = {}
        for name, extra in VARIANTS.items():
            REPORT.section(f"helm template with {name} values")
            values = merge(defaults, extra)
            try:
                docs, notes = render(chart, extra)
            except helm.HelmError as e:
                REPORT.check(f"{name}: renders", False, str(e))
                continue
            REPORT.check(f"{name}: renders {len(docs)} manifests: "
                         + ", ".join(sorted(d["kind"] for d in docs)), True)
            rendered[name] = docs
            check_kubernetes_schemas(name, docs)
            check_config(name, docs, values, gateway)
            check_pod(name, docs, values)
            check_resources(name, docs, values)
            check_notes(name, notes, values)
    workdir = Path(tempfile.mkdtemp(prefix="portvagt-chart-"))
    try:
        check_checkov(rendered, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    check_image(defaults)
    check_dashboard()

    print(f"\n{time.monotonic() - STARTED:.0f} s")
    for name in REPORT.failed:
        print(f"  failed: {name}")
    print(f"chart: {REPORT.passed} passed, {len(REPORT.failed)} failed")
    return 1 if REPORT.failed else 0


if __name__ == "__main__":
    sys.exit(main())
