//! The default of every optional field, one function each, as serde's `default = "..."` asks.
//! Values only: nothing here reads a file or the environment.

use std::time::Duration;

use super::LogFormat;

pub(super) fn max_patients_per_request() -> usize {
    1000
}
pub(super) fn min_free_bytes() -> u64 {
    256 * 1024 * 1024
}
pub(super) fn yes() -> bool {
    true
}
pub(super) fn citizen_client_id() -> String {
    "minlog".into()
}
pub(super) fn citizen_scope() -> String {
    "openid fhirUser launch/patient patient/AuditEvent.rs".into()
}
pub(super) fn shutdown_grace() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn max_header_bytes() -> usize {
    16 * 1024
}
pub(super) fn max_body_bytes() -> u64 {
    10 * 1024 * 1024
}
pub(super) fn max_response_bytes() -> u64 {
    64 * 1024 * 1024
}
pub(super) fn request_timeout() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn max_concurrent_requests() -> usize {
    1024
}
pub(super) fn algorithms() -> Vec<String> {
    ["RS256", "PS256", "ES256", "EdDSA"]
        .map(String::from)
        .to_vec()
}
pub(super) fn leeway() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn jwks_refresh() -> Duration {
    Duration::from_secs(300)
}
pub(super) fn jwks_min_refresh() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn claim_scope() -> String {
    "scope".to_owned()
}
pub(super) fn claim_patient() -> String {
    "patient".to_owned()
}
pub(super) fn claim_fhir_user() -> String {
    "fhirUser".to_owned()
}
pub(super) fn claim_roles() -> String {
    "role".to_owned()
}
pub(super) fn claim_purpose_of_use() -> String {
    "purpose_of_use".to_owned()
}
pub(super) fn claim_client_id() -> String {
    "client_id".to_owned()
}
pub(super) fn introspection_cache_ceiling() -> Duration {
    Duration::from_secs(300)
}
pub(super) fn introspection_negative_cache() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn introspection_cache_entries() -> usize {
    100_000
}
pub(super) fn max_in_flight() -> usize {
    512
}
pub(super) fn rate_window() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn response_timeout() -> Duration {
    Duration::from_secs(25)
}
pub(super) fn retries() -> u32 {
    1
}
pub(super) fn circuit_failures() -> u32 {
    5
}
pub(super) fn circuit_open() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn consent_cache_ttl() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn mass_lookup_window() -> Duration {
    Duration::from_secs(3600)
}
pub(super) fn relationship_window() -> Duration {
    Duration::from_secs(90 * 86_400)
}
pub(super) fn relationship_ahead() -> Duration {
    Duration::from_secs(30 * 86_400)
}
pub(super) fn relationship_cache_ttl() -> Duration {
    Duration::from_secs(300)
}
pub(super) fn relationship_negative_ttl() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn consent_cache_entries() -> usize {
    100_000
}
pub(super) fn ship_batch_size() -> usize {
    100
}
pub(super) fn segment_bytes() -> u64 {
    64 * 1024 * 1024
}
pub(super) fn seal_key_id() -> String {
    "audit-seal-1".into()
}
pub(super) fn seal_every() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn signing_key_id() -> String {
    "portvagt-1".to_owned()
}
pub(super) fn min_authentication_level() -> u8 {
    3
}
pub(super) fn exchange_token_lifetime() -> Duration {
    Duration::from_secs(3600)
}
pub(super) fn exchange_leeway() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn max_assertion_lifetime() -> Duration {
    Duration::from_secs(24 * 3600)
}
pub(super) fn max_assertion_bytes() -> usize {
    64 * 1024
}
pub(super) fn user_scope() -> String {
    "user/*.rs".to_owned()
}
pub(super) fn system_scope() -> String {
    "system/*.rs".to_owned()
}
pub(super) fn patient_scope() -> String {
    "patient/*.rs".to_owned()
}
pub(super) fn replay_cache_entries() -> usize {
    100_000
}
pub(super) fn connect_timeout() -> Duration {
    Duration::from_secs(2)
}
pub(super) fn pool_max_idle() -> usize {
    64
}
pub(super) fn log_format() -> LogFormat {
    LogFormat::Json
}
pub(super) fn log_level() -> String {
    "info".to_owned()
}

pub(super) fn link_lifetime() -> Duration {
    Duration::from_secs(30 * 60)
}

pub(super) fn export_link_lifetime() -> Duration {
    Duration::from_secs(6 * 3600)
}
pub(super) fn decision_log_max_bytes() -> u64 {
    100 * 1024 * 1024
}
pub(super) fn decision_log_keep() -> u32 {
    5
}
pub(super) fn identity_lifetime() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn service_name() -> String {
    "portvagt".into()
}
pub(super) fn sample_ratio() -> f64 {
    1.0
}
pub(super) fn break_glass_min_reason() -> usize {
    4
}

pub(super) fn replicas() -> u32 {
    1
}
