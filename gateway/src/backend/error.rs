//! Why a backend could not give a usable answer, and the gateway's words for it.

use http::StatusCode;

use super::circuit::CircuitOpen;
use crate::body::BoxError;
use crate::outcome::Outcome;

/// Why the backend could not give a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No connection to the backend could be made.
    #[error("the backend is unreachable")]
    Unreachable(#[source] hyper_util::client::legacy::Error),
    /// The connection failed while the request or response was under way.
    #[error("the backend connection failed")]
    Failed(#[source] hyper_util::client::legacy::Error),
    /// The backend answered 5xx.
    #[error("the backend answered {0}")]
    BackendStatus(StatusCode),
    /// A response to be rewritten was larger than `limits.max_response_bytes`.
    #[error("the backend response is too large to process")]
    ResponseTooLarge,
    /// A batch or transaction Bundle (request or backend answer) that cannot be mapped entry by
    /// entry.
    #[error("a batch or transaction Bundle could not be processed")]
    MalformedBundle,
    /// A response body could not be read.
    #[error("the backend response body failed")]
    ResponseBody(#[source] BoxError),
    /// The backend did not answer within `backend.response_timeout`.
    #[error("the backend did not answer in time")]
    Timeout,
    /// The backend's circuit is open after repeated failures.
    #[error("the backend is failing; requests are paused")]
    CircuitOpen(CircuitOpen),
    /// A read the gateway made on its own behalf before forwarding (what a write changes,
    /// patients by identifier) was answered with something else than 2xx, 404 or 410.
    #[error("the backend answered {0} to the gateway's own lookup")]
    LookupFailed(StatusCode),
    /// A request names more patients by identifier than the gateway looks up for one request.
    #[error("the request names too many patients by identifier")]
    TooManyLookups,
    /// `max_in_flight` requests are already under way to the backend.
    #[error("the backend has as many requests in flight as it may")]
    Saturated,
}

impl ProxyError {
    /// The answer for the client: the gateway's words, never the backend's.
    pub fn outcome(&self) -> Outcome {
        match self {
            ProxyError::Unreachable(_) => Outcome::new(
                StatusCode::BAD_GATEWAY,
                "transient",
                "backend-unreachable",
                "the backend FHIR server cannot be reached",
            ),
            ProxyError::Failed(_) | ProxyError::ResponseBody(_) => Outcome::new(
                StatusCode::BAD_GATEWAY,
                "transient",
                "backend-failed",
                "the backend FHIR server connection failed",
            ),
            ProxyError::BackendStatus(StatusCode::SERVICE_UNAVAILABLE) => Outcome::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "backend-unavailable",
                "the backend FHIR server is unavailable",
            ),
            ProxyError::BackendStatus(_) => Outcome::new(
                StatusCode::BAD_GATEWAY,
                "exception",
                "backend-error",
                "the backend FHIR server failed to process the request",
            ),
            ProxyError::MalformedBundle => Outcome::new(
                StatusCode::BAD_GATEWAY,
                "exception",
                "bundle-mismatch",
                "the backend's batch answer does not match the request",
            ),
            ProxyError::Timeout => Outcome::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "backend-timeout",
                "the backend FHIR server did not answer in time",
            ),
            ProxyError::LookupFailed(_) => Outcome::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "lookup-failed",
                "the gateway could not read what the request touches from the backend FHIR server; retry shortly",
            ),
            ProxyError::TooManyLookups => Outcome::new(
                StatusCode::BAD_REQUEST,
                "too-costly",
                "too-many-lookups",
                "a request may name at most 20 patients by identifier; split it",
            ),
            ProxyError::Saturated => Outcome::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "backend-saturated",
                "the backend FHIR server has as many requests as the gateway sends it; retry shortly",
            ),
            ProxyError::CircuitOpen(_) => Outcome::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "backend-circuit-open",
                "the backend FHIR server is failing; requests to it are paused, retry shortly",
            ),
            ProxyError::ResponseTooLarge => Outcome::new(
                StatusCode::BAD_GATEWAY,
                "too-costly",
                "response-too-large",
                "the backend response is larger than the gateway processes; narrow the search or page it",
            ),
        }
    }
}

/// Whether `error` (or a cause of it) is a body over its limit.
pub(crate) fn caused_by_body_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = error.source();
    }
    false
}
