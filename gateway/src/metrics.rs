//! Prometheus metrics, `portvagt_*`, units in the names, labels of bounded cardinality only.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The gateway's metrics and the registry that serves them on `/metrics`.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// `portvagt_requests_total{interaction, resource_type, status_class}`
    pub requests: IntCounterVec,
    /// `portvagt_request_duration_seconds{interaction, status_class}` (no resource type: a
    /// histogram per type would be ~200k series)
    pub request_duration: HistogramVec,
    /// `portvagt_upstream_duration_seconds{backend, status_class}`
    pub upstream_duration: HistogramVec,
    /// `portvagt_auth_failures_total{reason}`
    pub auth_failures: IntCounterVec,
    /// `portvagt_access_denied_total{reason}`
    pub access_denied: IntCounterVec,
    /// `portvagt_tls_handshake_failures_total{reason}`
    pub tls_handshake_failures: IntCounterVec,
    /// `portvagt_jwks_fetches_total{outcome}` (`ok`, `error`, `rate-limited`)
    pub jwks_fetches: IntCounterVec,
    /// `portvagt_introspection_calls_total{outcome}`: calls to introspection endpoints
    /// (`active`, `inactive`, `error`).
    pub introspection_calls: IntCounterVec,
    /// `portvagt_introspection_cache_total{result}`: cache `hit`s, `miss`es, and misses `coalesced`
    /// into another request's call.
    pub introspection_cache: IntCounterVec,
    /// `portvagt_jwt_cache_total{result}`: verified-JWT cache `hit`s and `miss`es.
    pub jwt_cache: IntCounterVec,
    /// `portvagt_token_exchanges_total{outcome}`: SAML token exchanges, `issued` or the
    /// refusal's code.
    pub token_exchanges: IntCounterVec,
    /// `portvagt_audit_records_total`: AuditEvents made durable in the spool.
    pub audit_records: IntCounter,
    /// `portvagt_audit_write_failures_total`: spool writes that failed.
    pub audit_write_failures: IntCounter,
    /// `portvagt_audit_records_lost_total`: requests let through without a record
    /// (`failure_mode = "open"` only).
    pub audit_records_lost: IntCounter,
    /// `portvagt_audit_write_duration_seconds`: waiting for the group commit.
    pub audit_write_duration: Histogram,
    /// `portvagt_audit_shipped_total`: AuditEvents the repository acknowledged.
    pub audit_shipped: IntCounter,
    /// `portvagt_audit_ship_failures_total`: batches the repository did not take.
    pub audit_ship_failures: IntCounter,
    /// `portvagt_audit_ship_lag_records`: durable records not yet acknowledged.
    pub audit_ship_lag: IntGauge,
    /// `portvagt_audit_segments_deleted_total`: shipped segments deleted (`keep_shipped`).
    pub audit_segments_deleted: IntCounter,
    /// `portvagt_audit_chain_broken`: 1 while the shipper finds that the spool does not
    /// continue what it shipped (altered or cut behind the gateway's back).
    pub audit_chain_broken: IntGauge,
    /// `portvagt_break_glass_total`: accesses that set a consent block aside.
    pub break_glass: IntCounter,
    /// `portvagt_consent_withheld_entries_total`: answer entries withheld by consent blocks.
    pub consent_withheld: IntCounter,
    /// `portvagt_relationship_checks_total{outcome}`: patients checked for a treatment
    /// relationship: `related`, `refused`, `vaerdispring` (to be followed up), `unavailable`.
    pub relationship_checks: IntCounterVec,
    /// `portvagt_mass_lookups_total{action}`: accesses that took a professional past the
    /// mass-lookup threshold, `refused` or `flagged`.
    pub mass_lookups: IntCounterVec,
    /// `portvagt_identifier_lookups_total{source}`: patient identifiers placed, `searched` at
    /// the backend or answered from the gateway's `cache`.
    pub identifier_lookups: IntCounterVec,
    /// `portvagt_citizen_blocks_total{change}`: citizens' own blocks `made` and `lifted` on the
    /// citizen listener.
    pub citizen_blocks: IntCounterVec,
    /// `portvagt_consent_bus_subscribed`: 1 while this replica hears blocks announced by the
    /// others (`[consent] redis_url`), else 0 (Consents are then read for every access).
    pub consent_bus_subscribed: IntGauge,
    /// `portvagt_consent_bus_failures_total`: blocks made here that could not be announced.
    pub consent_bus_failures: IntCounter,
    /// `portvagt_backend_circuit_opened_total`: times a backend's circuit opened.
    pub circuit_opened: IntCounter,
    /// `portvagt_upstream_retries_total`: GET/HEAD requests sent again after a failed
    /// connection.
    pub upstream_retries: IntCounter,
    /// `portvagt_rate_limited_total`: requests refused 429 by the per-client rate limit.
    pub rate_limited: IntCounter,
    /// `portvagt_config_reloads_total{component, outcome}`: reloads of `tls`, `jwks`, `rules`.
    pub config_reloads: IntCounterVec,
    /// `portvagt_certificate_expiry_seconds{certificate}`: until `server` or `client_ca` expire.
    pub certificate_expiry: IntGaugeVec,
    /// `portvagt_crl_next_update_seconds`: until the earliest CRL's next update.
    pub crl_next_update: IntGauge,
    /// `portvagt_backend_in_flight{backend}`: requests under way to each backend.
    pub backend_in_flight: IntGaugeVec,
    /// `portvagt_backend_circuit_open{backend}`: 1 while a backend's circuit is open.
    pub backend_circuit_open: IntGaugeVec,
    /// `portvagt_audit_ship_batch_size`: the most events the shipper now sends in one
    /// transaction (lowered while the repository refuses larger ones).
    pub audit_ship_batch_size: IntGauge,
    /// `portvagt_audit_spool_free_bytes`: free space (for the gateway) on the audit spool's
    /// file system, as of the last scrape or readiness probe.
    pub audit_spool_free_bytes: IntGauge,
    /// `portvagt_audit_spool_capacity_bytes`: the size of that file system.
    pub audit_spool_capacity_bytes: IntGauge,
    /// `portvagt_trace_spans_exported_total`: spans the OTLP endpoint took.
    pub trace_spans_exported: IntCounter,
    /// `portvagt_trace_spans_dropped_total`: spans not exported (queue full, export failed).
    pub trace_spans_dropped: IntCounter,
    /// `portvagt_shadow_decisions_total`: requests the shadow rules decided too.
    pub shadow_decisions: IntCounter,
    /// `portvagt_shadow_disagreements_total{enforced, shadow}`: requests on which the shadow
    /// rules reached another verdict (`allow` or a deny reason's code, each).
    pub shadow_disagreements: IntCounterVec,
    /// `portvagt_decision_log_dropped_total`: decision log records not written (the writer
    /// fell behind, or the file could not be written).
    pub decision_log_dropped: IntCounter,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let request_labels = &["interaction", "resource_type", "status_class"];
        let requests = IntCounterVec::new(
            Opts::new(
                "portvagt_requests_total",
                "Requests answered, by interaction, resource type and status class",
            ),
            request_labels,
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "portvagt_request_duration_seconds",
                "Time from request to the end of the response body",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["interaction", "status_class"],
        )
        .expect("valid metric");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "portvagt_upstream_duration_seconds",
                "Time until the backend's response headers",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["backend", "status_class"],
        )
        .expect("valid metric");
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "portvagt_auth_failures_total",
                "Requests refused by authentication, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let access_denied = IntCounterVec::new(
            Opts::new(
                "portvagt_access_denied_total",
                "Requests refused by policy, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "portvagt_tls_handshake_failures_total",
                "TLS handshakes that failed, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let jwks_fetches = IntCounterVec::new(
            Opts::new(
                "portvagt_jwks_fetches_total",
                "Issuer key set fetches, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let introspection_calls = IntCounterVec::new(
            Opts::new(
                "portvagt_introspection_calls_total",
                "Token introspection calls, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let introspection_cache = IntCounterVec::new(
            Opts::new(
                "portvagt_introspection_cache_total",
                "Token introspection cache lookups, by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let jwt_cache = IntCounterVec::new(
            Opts::new(
                "portvagt_jwt_cache_total",
                "Verified-JWT cache lookups, by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let token_exchanges = IntCounterVec::new(
            Opts::new(
                "portvagt_token_exchanges_total",
                "SAML assertions exchanged for tokens (issued) or refused (by code)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let audit_records = IntCounter::new(
            "portvagt_audit_records_total",
            "AuditEvents written durably to the spool",
        )
        .expect("valid metric");
        let audit_write_failures = IntCounter::new(
            "portvagt_audit_write_failures_total",
            "Audit spool writes that failed",
        )
        .expect("valid metric");
        let audit_records_lost = IntCounter::new(
            "portvagt_audit_records_lost_total",
            "Requests let through without an audit record (failure_mode = open)",
        )
        .expect("valid metric");
        let audit_write_duration = Histogram::with_opts(
            HistogramOpts::new(
                "portvagt_audit_write_duration_seconds",
                "Time a request waits for its audit record to be durable",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let audit_shipped = IntCounter::new(
            "portvagt_audit_shipped_total",
            "AuditEvents the audit repository acknowledged",
        )
        .expect("valid metric");
        let audit_ship_failures = IntCounter::new(
            "portvagt_audit_ship_failures_total",
            "Batches of AuditEvents the audit repository did not take",
        )
        .expect("valid metric");
        let audit_segments_deleted = IntCounter::new(
            "portvagt_audit_segments_deleted_total",
            "Spool segments deleted after the audit repository acknowledged all their records",
        )
        .expect("valid metric");
        let audit_ship_lag = IntGauge::new(
            "portvagt_audit_ship_lag_records",
            "Durable AuditEvents not yet acknowledged by the audit repository",
        )
        .expect("valid metric");
        let audit_chain_broken = IntGauge::new(
            "portvagt_audit_chain_broken",
            "1 while the audit spool does not continue the chain already shipped (shipping stops)",
        )
        .expect("valid metric");
        let break_glass = IntCounter::new(
            "portvagt_break_glass_total",
            "Accesses that set a citizen's consent block aside (purpose EMERGENCY with a reason)",
        )
        .expect("valid metric");
        let relationship_checks = IntCounterVec::new(
            Opts::new(
                "portvagt_relationship_checks_total",
                "Patients checked for a treatment relationship, by outcome (related, refused, vaerdispring: to be followed up, unavailable)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        for outcome in ["related", "refused", "vaerdispring", "unavailable"] {
            relationship_checks.with_label_values(&[outcome]);
        }
        let mass_lookups = IntCounterVec::new(
            Opts::new(
                "portvagt_mass_lookups_total",
                "Accesses that took one professional past the mass-lookup threshold of distinct patients, by action (refused, flagged)",
            ),
            &["action"],
        )
        .expect("valid metric");
        for action in ["refused", "flagged"] {
            mass_lookups.with_label_values(&[action]);
        }
        let identifier_lookups = IntCounterVec::new(
            Opts::new(
                "portvagt_identifier_lookups_total",
                "Patient identifiers placed for references by identifier only, by source (searched at the backend, cache)",
            ),
            &["source"],
        )
        .expect("valid metric");
        for source in ["searched", "cache"] {
            identifier_lookups.with_label_values(&[source]);
        }
        let citizen_blocks = IntCounterVec::new(
            Opts::new(
                "portvagt_citizen_blocks_total",
                "Citizens' own blocks made and lifted on the citizen listener, by change",
            ),
            &["change"],
        )
        .expect("valid metric");
        for change in ["made", "lifted"] {
            citizen_blocks.with_label_values(&[change]);
        }
        let consent_bus_subscribed = IntGauge::new(
            "portvagt_consent_bus_subscribed",
            "1 while this replica hears citizens' blocks announced by the others, else 0",
        )
        .expect("valid metric");
        let consent_bus_failures = IntCounter::new(
            "portvagt_consent_bus_failures_total",
            "Citizens' blocks made here that could not be announced to the other replicas",
        )
        .expect("valid metric");
        let consent_withheld = IntCounter::new(
            "portvagt_consent_withheld_entries_total",
            "Search, history and batch entries withheld because of a consent block",
        )
        .expect("valid metric");
        let circuit_opened = IntCounter::new(
            "portvagt_backend_circuit_opened_total",
            "Times a backend's circuit breaker opened after consecutive failures",
        )
        .expect("valid metric");
        let upstream_retries = IntCounter::new(
            "portvagt_upstream_retries_total",
            "GET and HEAD requests sent to the backend again after a failed connection",
        )
        .expect("valid metric");
        let rate_limited = IntCounter::new(
            "portvagt_rate_limited_total",
            "Requests refused with 429 by the per-client rate limit",
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "portvagt_config_reloads_total",
                "Reloads of certificates, keys and policy, by component and outcome",
            ),
            &["component", "outcome"],
        )
        .expect("valid metric");
        let certificate_expiry = IntGaugeVec::new(
            Opts::new(
                "portvagt_certificate_expiry_seconds",
                "Seconds until the server certificate or the client CA expires",
            ),
            &["certificate"],
        )
        .expect("valid metric");
        let crl_next_update = IntGauge::new(
            "portvagt_crl_next_update_seconds",
            "Seconds until the earliest CRL's next update (negative: overdue)",
        )
        .expect("valid metric");
        let backend_in_flight = IntGaugeVec::new(
            Opts::new(
                "portvagt_backend_in_flight",
                "Requests under way to each backend (its pool in use)",
            ),
            &["backend"],
        )
        .expect("valid metric");
        let backend_circuit_open = IntGaugeVec::new(
            Opts::new(
                "portvagt_backend_circuit_open",
                "1 while a backend's circuit breaker is open",
            ),
            &["backend"],
        )
        .expect("valid metric");
        let audit_ship_batch_size = IntGauge::new(
            "portvagt_audit_ship_batch_size",
            "The most events the audit shipper sends in one transaction now",
        )
        .expect("valid metric");
        let audit_spool_free_bytes = IntGauge::new(
            "portvagt_audit_spool_free_bytes",
            "Free space on the audit spool's file system, bytes",
        )
        .expect("valid metric");
        let audit_spool_capacity_bytes = IntGauge::new(
            "portvagt_audit_spool_capacity_bytes",
            "Size of the audit spool's file system, bytes",
        )
        .expect("valid metric");
        let trace_spans_exported = IntCounter::new(
            "portvagt_trace_spans_exported_total",
            "Spans the OTLP endpoint took",
        )
        .expect("valid metric");
        let trace_spans_dropped = IntCounter::new(
            "portvagt_trace_spans_dropped_total",
            "Spans not exported: the queue was full or the export failed",
        )
        .expect("valid metric");
        let shadow_decisions = IntCounter::new(
            "portvagt_shadow_decisions_total",
            "Requests decided by the shadow rules beside the enforced ones",
        )
        .expect("valid metric");
        let shadow_disagreements = IntCounterVec::new(
            Opts::new(
                "portvagt_shadow_disagreements_total",
                "Requests on which the shadow rules reached another verdict than the enforced ones",
            ),
            &["enforced", "shadow"],
        )
        .expect("valid metric");
        let decision_log_dropped = IntCounter::new(
            "portvagt_decision_log_dropped_total",
            "Decision log records not written: the writer fell behind or the file failed",
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(audit_ship_batch_size.clone()),
            Box::new(audit_spool_free_bytes.clone()),
            Box::new(audit_spool_capacity_bytes.clone()),
            Box::new(trace_spans_exported.clone()),
            Box::new(trace_spans_dropped.clone()),
            Box::new(shadow_decisions.clone()),
            Box::new(shadow_disagreements.clone()),
            Box::new(decision_log_dropped.clone()),
            Box::new(request_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(auth_failures.clone()),
            Box::new(access_denied.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(jwks_fetches.clone()),
            Box::new(introspection_calls.clone()),
            Box::new(introspection_cache.clone()),
            Box::new(jwt_cache.clone()),
            Box::new(token_exchanges.clone()),
            Box::new(audit_records.clone()),
            Box::new(audit_write_failures.clone()),
            Box::new(audit_records_lost.clone()),
            Box::new(audit_write_duration.clone()),
            Box::new(audit_shipped.clone()),
            Box::new(audit_ship_failures.clone()),
            Box::new(audit_ship_lag.clone()),
            Box::new(audit_segments_deleted.clone()),
            Box::new(audit_chain_broken.clone()),
            Box::new(break_glass.clone()),
            Box::new(consent_withheld.clone()),
            Box::new(relationship_checks.clone()),
            Box::new(mass_lookups.clone()),
            Box::new(identifier_lookups.clone()),
            Box::new(citizen_blocks.clone()),
            Box::new(consent_bus_subscribed.clone()),
            Box::new(consent_bus_failures.clone()),
            Box::new(circuit_opened.clone()),
            Box::new(upstream_retries.clone()),
            Box::new(rate_limited.clone()),
            Box::new(config_reloads.clone()),
            Box::new(certificate_expiry.clone()),
            Box::new(crl_next_update.clone()),
            Box::new(backend_in_flight.clone()),
            Box::new(backend_circuit_open.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            request_duration,
            upstream_duration,
            auth_failures,
            access_denied,
            tls_handshake_failures,
            jwks_fetches,
            introspection_calls,
            introspection_cache,
            jwt_cache,
            token_exchanges,
            audit_records,
            audit_write_failures,
            audit_records_lost,
            audit_write_duration,
            audit_shipped,
            audit_ship_failures,
            audit_ship_lag,
            audit_segments_deleted,
            audit_chain_broken,
            break_glass,
            consent_withheld,
            relationship_checks,
            mass_lookups,
            identifier_lookups,
            citizen_blocks,
            consent_bus_subscribed,
            consent_bus_failures,
            circuit_opened,
            upstream_retries,
            rate_limited,
            config_reloads,
            certificate_expiry,
            crl_next_update,
            backend_in_flight,
            backend_circuit_open,
            audit_ship_batch_size,
            audit_spool_free_bytes,
            audit_spool_capacity_bytes,
            trace_spans_exported,
            trace_spans_dropped,
            shadow_decisions,
            shadow_disagreements,
            decision_log_dropped,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `2xx`, `4xx`, ...: the bounded label for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
