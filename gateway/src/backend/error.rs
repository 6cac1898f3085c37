//! Why a backend could not give a usable answer, and the gateway's words for it.

use http::StatusCode;

use super::circuit::CircuitOpen;
use crate::body::BoxError;

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
    /// A write's `If-Match` names another version than the one the gateway read and checked:
    /// the server would change a version nobody checked.
    #[error("If-Match names another version than the current one")]
    PreconditionFailed,
    /// `max_in_flight` requests are already under way to the backend.
    #[error("the backend has as many requests in flight as it may")]
    Saturated,
    /// A Bulk Data export file held a line that is not a FHIR resource: it cannot be checked.
    #[error("an export file held a line that is not a FHIR resource")]
    UnreadableExport,
    /// A successful JSON answer that cannot be read (a lone surrogate, nesting past the
    /// parser's depth): whose data it holds, and its links, cannot be known, so it does not
    /// leave.
    #[error("the backend's answer could not be read as JSON")]
    UnreadableAnswer,
    /// A Bulk Data export file is larger than `limits.max_response_bytes`.
    #[error("the export file is larger than the gateway reads and checks")]
    ExportFileTooLarge,
    /// An answer that is no success (3xx, 4xx) whose body is not an OperationOutcome: what it
    /// holds was never checked, so the client gets the status in the gateway's words.
    #[error("the backend answered {0} with something other than an OperationOutcome")]
    NotAnOutcome(StatusCode),
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
