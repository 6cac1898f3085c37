"""What the gateway accepts, read from its Rust source, so the chart's tests follow the gateway.

The configuration structs use `#[serde(deny_unknown_fields)]`: a key the chart writes that the
gateway does not know stops it at start. Reading the structs here (instead of keeping a copy of
their field names) makes a rename in the gateway fail the chart's tests, not a deployment.
"""

from __future__ import annotations

import re
from pathlib import Path

# Each table of portvagt.toml and the struct in gateway/src/config/ that reads it.
CONFIG_TABLES = {
    "": "Config",
    "server": "ServerConfig",
    "tls": "TlsConfig",
    "limits": "LimitsConfig",
    "issuer": "IssuerConfig",
    "issuer.claims": "ClaimNames",
    "issuer.introspection": "IntrospectionConfig",
    "route": "RouteConfig",
    "backend": "BackendConfig",
    "backend.identity": "IdentityAssertionConfig",
    "upstream": "UpstreamConfig",
    "upstream.backend": "BackendConfig",
    "upstream.backend.identity": "IdentityAssertionConfig",
    "smart": "SmartConfig",
    "policy": "PolicyConfig",
    "log": "LogConfig",
    "token_exchange": "TokenExchangeConfig",
    # `trusted_sts = [{ certificate, issuers }]`: an untagged enum (TrustedSts) whose only table
    # form is PinnedSts; its bare-path form is refused at start, so the chart never writes it.
    "token_exchange.trusted_sts": "PinnedSts",
    "audit": "AuditConfig",
    "audit.ship": "AuditShipConfig",
    "consent": "ConsentConfig",
    "relationship": "RelationshipConfig",
    "relationship.service": "BackendConfig",
    "relationship.service.identity": "IdentityAssertionConfig",
    "rate_limit": "RateLimitConfig",
    "mass_lookup": "MassLookupConfig",
    # How every redis_url is reached: TLS files, the ACL user, the password's file.
    "redis": "RedisConfig",
    "citizen": "CitizenConfig",
    "paging": "PagingConfig",
    "operation": "OperationConfig",
    "decision_log": "DecisionLogConfig",
    "tracing": "TracingConfig",
}


def struct_field_types(source: str, struct: str) -> dict[str, tuple[str, bool]]:
    """{TOML key: (Rust type, required)} for a serde struct: a field is optional when it has a
    serde default or is an `Option`; `rename` gives the key."""
    body = re.search(r"pub struct " + struct + r" \{(.*?)\n\}", source, re.S)
    if not body:
        raise LookupError(f"struct {struct} not found")
    fields: dict[str, tuple[str, bool]] = {}
    attributes = ""
    for line in body.group(1).splitlines():
        line = line.strip()
        # An attribute, or a line of one spread over several (`#[serde(` ... `)]`, as rustfmt
        # writes a long one).
        if line.startswith("#[") or attributes.count("[") > attributes.count("]"):
            attributes += line
        elif line.startswith("pub "):
            match = re.match(r"pub (\w+): (.+),$", line)
            if match:
                name, rust_type = match.groups()
                rename = re.search(r'rename = "(\w+)"', attributes)
                optional = "default" in attributes or rust_type.startswith("Option<")
                fields[rename.group(1) if rename else name] = (rust_type, not optional)
            attributes = ""
        elif not line.startswith("//"):
            attributes = ""
    return fields


def struct_fields(source: str, struct: str) -> dict[str, bool]:
    """{TOML key: required} for a serde struct (see struct_field_types)."""
    return {key: required for key, (_, required) in struct_field_types(source, struct).items()}


def config_source(repo: Path) -> str:
    """The source of the gateway's configuration structs: every file of gateway/src/config/."""
    folder = repo / "gateway" / "src" / "config"
    return "\n".join(path.read_text() for path in sorted(folder.glob("*.rs")))


def enum_tables(source: str, structs: set[str]) -> dict[str, str]:
    """{enum: struct} for the enums of the configuration with a variant that wraps a struct with
    named fields (`Pinned(PinnedSts)`): a key of such a type is read as that table (an untagged
    enum's other variants are other shapes of the same key)."""
    tables = {}
    for enum, body in re.findall(r"pub enum (\w+) \{(.*?)\n\}", source, re.S):
        wrapped = [v for v in re.findall(r"^\s*\w+\((\w+)\),?\s*$", body, re.M) if v in structs]
        if wrapped:
            tables[enum] = wrapped[0]
    return tables


def unmapped_tables(repo: Path) -> list[str]:
    """Sub-tables of the configuration (fields whose type, inside `Option<...>` or `Vec<...>`,
    is a struct of gateway/src/config/ with named fields, or an enum with a variant wrapping
    one) that CONFIG_TABLES does not map to that struct: a table added to the gateway must be
    added here, or the chart's checks would not look into it."""
    source = config_source(repo)
    structs = set(re.findall(r"pub struct (\w+) \{", source))
    enums = enum_tables(source, structs)
    problems = []
    for path, struct in CONFIG_TABLES.items():
        for key, (rust_type, _) in struct_field_types(source, struct).items():
            inner = re.sub(r"^(?:Option|Vec)<(.+)>$", r"\1", rust_type)
            inner = enums.get(inner, inner)
            if inner in structs:
                child = f"{path}.{key}" if path else key
                if CONFIG_TABLES.get(child) != inner:
                    problems.append(f"[{child}] ({inner}) is not in gateway_source.CONFIG_TABLES")
    return problems


def config_tables(repo: Path) -> dict[str, dict[str, bool]]:
    """Table path -> its fields, for every table of the gateway's configuration file."""
    source = config_source(repo)
    return {path: struct_fields(source, struct) for path, struct in CONFIG_TABLES.items()}


def problems_of(config: dict, tables: dict[str, dict[str, bool]], where: str) -> list[str]:
    """Keys the gateway does not know and required keys that are missing, in a parsed config."""
    problems: list[str] = []

    def walk(table: dict, path: str) -> None:
        fields = tables.get(path)
        if fields is None:
            problems.append(f"[{path}] is not a table of the gateway's configuration")
            return
        for key, value in table.items():
            if key not in fields:
                problems.append(f"{path or '(top)'}.{key} is unknown to the gateway")
                continue
            child = f"{path}.{key}" if path else key
            if isinstance(value, dict):
                walk(value, child)
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                for item in value:
                    walk(item, child)
            elif isinstance(value, list) and child in tables:
                # A table the chart wrote in another shape (a bare path for `trusted_sts`).
                problems.append(f"{child} must hold tables, has {value!r}")
        for key, required in fields.items():
            if required and key not in table:
                problems.append(f"{path or '(top)'}.{key} is required by the gateway")

    walk(config, "")
    return [f"{where}: {p}" for p in problems]


def rule_fields(repo: Path) -> dict[str, bool]:
    """The keys of an operator rule (`[[rule]]` in the rules file)."""
    return struct_fields((repo / "policy" / "src" / "rules.rs").read_text(), "RuleSpec")


def metric_names(repo: Path) -> set[str]:
    """Every metric the gateway registers."""
    source = (repo / "gateway" / "src" / "metrics.rs").read_text()
    return set(re.findall(r'"(portvagt_[a-z0-9_]+)"', source))
