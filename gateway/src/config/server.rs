//! How the gateway serves: `[server]` (the client listener), `[tls]`, `[limits]`,
//! `[rate_limit]`, `[citizen]` (the citizens' listener) and `[log]`. Only what the operator
//! wrote, with its defaults: nothing here opens a file or a socket (that is
//! [`crate::runtime`]'s, at start).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::defaults;

/// `[citizen]`: a second listener for citizens' browsers, which have no client certificate.
/// TLS with the `[tls]` certificate but no client certificate requested; only tokens that are
/// not certificate-bound, from issuers that do not require binding, in a patient context about
/// the citizen themselves (`fhirUser` = `Patient/<patient>`); only reads and searches of their
/// own audit log and of the resource types listed here; the `/minlog/` page.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CitizenConfig {
    /// Address to listen on, e.g. `0.0.0.0:8444`.
    pub listen: SocketAddr,
    /// More resource types citizens may read and search here (their own, as scopes and the
    /// patient compartment allow), besides `AuditEvent`. Default: none.
    #[serde(default)]
    pub resource_types: Vec<String>,
    /// Serve the access-log page at `/minlog/`.
    #[serde(default = "defaults::yes")]
    pub page: bool,
    /// The page's OAuth client id at the issuer (authorization code flow with PKCE, the
    /// endpoints from `[smart]`).
    #[serde(default = "defaults::citizen_client_id")]
    pub client_id: String,
    /// The scopes the page asks for.
    #[serde(default = "defaults::citizen_scope")]
    pub scope: String,
    /// This listener's FHIR base URL as browsers reach it, e.g.
    /// `https://minlog.example.dk/fhir` (its path the same as `server.public_base_url`'s): the
    /// links in its answers name it. Default: `https://<the address it listens on><that path>`.
    #[serde(default)]
    pub public_base_url: Option<String>,
    /// The `aud` values a token used here must name (one of them), and which the mTLS
    /// listener then refuses: a browser's token for the access-log page is no key to the API.
    /// Default: `public_base_url`; one of the two is required.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Answer `GET <base>/metadata` without a token on this listener too (off by default:
    /// it is reachable without a client certificate).
    #[serde(default)]
    pub metadata_without_token: bool,
    /// Citizens make and lift their own blocks here ("spær for denne sundhedsperson"): a
    /// `Consent` of one shape, against a professional or organisation of their own access log,
    /// written by the gateway; their Consents are theirs to read. Needs `[consent]`.
    #[serde(default)]
    pub blocks: bool,
}

/// `[redis]`: how Portvagt reaches the Redis that replicas share (every `redis_url`): TLS for
/// `rediss://` URLs and credentials kept out of the URLs.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// CA certificates (PEM) the Redis server's certificate must chain to (`rediss://`);
    /// default: the public web PKI.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM) for a Redis that asks for one, with `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The key of `client_cert` (PEM).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// The ACL user (`AUTH <user> <password>`); default: the URL's user, else Redis' default.
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the password; it takes the place of one written in a URL.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// `[paging]`: the next and previous links of searchsets and histories are handed to clients
/// as links the gateway signs and checks (`<base>/_page/<token>`), so a patient-context token
/// can page through any backend's links (offsets, cursors, `_getpages`) and a link is good only
/// for the client it was given to, unaltered, until it expires.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagingConfig {
    /// A file holding the key the links are signed with (at least 32 bytes; `base64` text or
    /// raw). Replicas behind one address need the same key, or a link made by one is refused
    /// by the others. Without it each process makes its own key at start.
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
    /// How long a link is good for after the answer that carried it (1 s to 7 days).
    #[serde(default = "defaults::link_lifetime", with = "humantime_serde")]
    pub link_lifetime: Duration,
    /// How long a Bulk Data export's status and file links are good for (exports take long).
    #[serde(default = "defaults::export_link_lifetime", with = "humantime_serde")]
    pub export_link_lifetime: Duration,
}

impl Default for PagingConfig {
    fn default() -> Self {
        Self {
            key_file: None,
            link_lifetime: defaults::link_lifetime(),
            export_link_lifetime: defaults::export_link_lifetime(),
        }
    }
}

/// `[rate_limit]`: at most `requests` per `window` per client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests allowed per window and client.
    pub requests: u64,
    /// The window (fixed, aligned to the clock).
    #[serde(default = "defaults::rate_window", with = "humantime_serde")]
    pub window: Duration,
    /// What a client is: `subject` (the token's issuer and `sub`) or `certificate`.
    #[serde(default)]
    pub key: RateLimitKey,
    /// Count across replicas in Redis (`redis://host:port/db`).
    #[serde(default)]
    pub redis_url: Option<String>,
}

/// How clients are told apart for rate limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitKey {
    /// The token's issuer and subject.
    #[default]
    Subject,
    /// The client certificate.
    Certificate,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on, e.g. `0.0.0.0:8443`; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The FHIR base URL clients see, e.g. `https://fhir.example.dk/fhir`. Backend URLs in
    /// responses are rewritten to it. Default: `https://<listen address>/fhir`.
    #[serde(default)]
    pub public_base_url: Option<String>,
    /// How long in-flight requests may run after SIGTERM/SIGINT before the gateway exits.
    #[serde(default = "defaults::shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How long a client has to complete the TLS handshake.
    #[serde(default = "defaults::handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// How long an HTTP/1.1 client has to send a request's whole header block once it has
    /// begun (slowloris); past it the connection is closed.
    #[serde(default = "defaults::header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Plain-HTTP listener for `/healthz`, `/readyz` and `/metrics` only (for probes and
    /// scrapers that have no client certificate). Keep it on a private address.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// The `aud` values a token used on this (mTLS) listener must name, one of them. Default:
    /// every audience the issuers accept (and token exchange's), except the citizen
    /// listener's.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Answer `GET <base>/metadata` without a token here (the client certificate is still
    /// required), as FHIR servers do: client libraries read the CapabilityStatement before
    /// they have one. With a token, the request goes the usual way.
    #[serde(default = "defaults::yes")]
    pub metadata_without_token: bool,
    /// How many replicas serve this configuration at most (the Helm chart writes its
    /// `replicaCount`, or autoscaling's `maxReplicas`). With more than one, what a replica
    /// keeps in its own memory and should share through Redis is named by `check-config` and
    /// `/readyz` ([`super::Config::unshared_state`]).
    #[serde(default = "defaults::replicas")]
    pub replicas: u32,
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM, PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// CA certificates that client certificates must chain to (PEM bundle).
    pub client_ca: PathBuf,
    /// CRLs (PEM or DER) checked for every client certificate in the chain.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request header block (HTTP/1.1 read buffer, HTTP/2 header list), bytes.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    /// Largest request body, bytes (413 beyond it).
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: u64,
    /// Largest backend response the gateway buffers to rewrite (Bundles), bytes.
    #[serde(default = "defaults::max_response_bytes")]
    pub max_response_bytes: u64,
    /// Longest a request may take end to end (504 beyond it).
    #[serde(default = "defaults::request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests processed at once; more are shed with 503.
    #[serde(default = "defaults::max_concurrent_requests")]
    pub max_concurrent_requests: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: defaults::max_header_bytes(),
            max_body_bytes: defaults::max_body_bytes(),
            max_response_bytes: defaults::max_response_bytes(),
            request_timeout: defaults::request_timeout(),
            max_concurrent_requests: defaults::max_concurrent_requests(),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `json` (one object per line) or `text`.
    #[serde(default = "defaults::log_format")]
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `portvagt=debug`. `RUST_LOG` overrides it.
    #[serde(default = "defaults::log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: defaults::log_format(),
            level: defaults::log_level(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// `[tracing]`: W3C Trace Context and span export (README "Traces").
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Continue the trace a client's `traceparent` names (its flag decides sampling); off: every
    /// request starts a trace of its own, and what a client sends is not passed on.
    #[serde(default)]
    pub trust_incoming: bool,
    /// Export spans with OTLP/HTTP (JSON) to this URL, e.g.
    /// `http://otel-collector:4318/v1/traces`.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// CA certificates for an https endpoint (default: the public web PKI roots).
    #[serde(default)]
    pub otlp_ca_file: Option<PathBuf>,
    /// `service.name` of the exported spans.
    #[serde(default = "defaults::service_name")]
    pub service_name: String,
    /// The share of new traces sampled (0.0 to 1.0); a trusted client's flag decides for its own.
    #[serde(default = "defaults::sample_ratio")]
    pub sample_ratio: f64,
}
