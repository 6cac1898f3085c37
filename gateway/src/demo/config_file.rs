//! The `portvagt.toml` the demo writes: the dev PKI's files, with token exchange, the sealed and
//! shipped audit trail, consent and the citizen listener on. It only makes the text; the
//! gateway reads it like any operator's file.

use super::{DEMO_ISSUER, DEMO_SEAL_KEY_ID};

pub(super) fn demo_config(
    addr: std::net::SocketAddr,
    public_url: &str,
    citizen_addr: std::net::SocketAddr,
    auth_issuer: &str,
    backend_url: &str,
    audit_url: &str,
) -> String {
    format!(
        r#"# Written by `portvagt demo`. Paths are relative to this file.
[server]
listen = "{addr}"
public_base_url = "{public_url}"
shutdown_grace = "5s"

[tls]
cert = "pki/server.crt"
key = "pki/server.key"
client_ca = "pki/ca.crt"
crls = ["pki/crl.pem"]

[[issuer]]
issuer = "{DEMO_ISSUER}"
audiences = ["{public_url}", "https://{citizen_addr}/fhir"]
jwks_file = "issuer/jwks.json"
require_typ = true

# The testbed authorization server: citizens signing in to the page /minlog/ (PKCE).
[[issuer]]
issuer = "{auth_issuer}"
audiences = ["https://{citizen_addr}/fhir"]
jwks_url = "{auth_issuer}/jwks"
ca_file = "pki/ca.crt"
require_typ = true

[smart]
issuer = "{auth_issuer}"
jwks_uri = "{auth_issuer}/jwks"
authorization_endpoint = "{auth_issuer}/auth"
token_endpoint = "{auth_issuer}/token"

[backend]
url = "{backend_url}"

# SOSI ID cards and OIOSAML assertions signed by the dev STS, exchanged for Portvagt tokens.
[token_exchange]
issuer = "https://{addr}"
signing_key = "portvagt-key/issuer.key"
key_id = "portvagt-1"
# Each STS certificate may sign only for the Issuer names it is pinned to.
trusted_sts = [{{ certificate = "pki/sts.crt", issuers = ["TEST1-NSP-STS", "http://sts.sundhedsdatastyrelsen.dk/"] }}]
assertion_audiences = ["https://{addr}"]

# Every access becomes IHE BALP AuditEvents: durable in audit/ before the answer leaves,
# shipped to the audit repository, where citizens read their own.
[audit]
spool_dir = "audit"
# Signed checkpoints in the chain: `audit verify --jwks` proves nothing was cut off.
seal_key = "audit-seal/seal.key"
seal_key_id = "{DEMO_SEAL_KEY_ID}"

# The repository takes writes only from the gateway's own certificate.
[audit.ship]
url = "{audit_url}"
ca_file = "pki/ca.crt"
client_cert = "pki/gateway.crt"
client_key = "pki/gateway.key"

# Citizens' blocks (Consent resources in the backend) are enforced.
[consent]

# Physicians and nurses read a patient's data only with a treatment relationship found in the
# backend (Dr. Kjær's practice has Anne on its list, not Bo), or by værdispring.
[relationship]
roles = ["7170", "5166"]
source = "fhir"

# Citizens' browsers (no client certificate) read their own access log here, and the
# page /minlog/ shows it.
[citizen]
listen = "{citizen_addr}"
# Tokens for the page name this audience; the mTLS listener refuses them (and this listener
# refuses tokens for the API).
audiences = ["https://{citizen_addr}/fhir"]
# From an access in her log she blocks a professional or a unit, and lifts the block again.
blocks = true

[log]
format = "text"
"#
    )
}
