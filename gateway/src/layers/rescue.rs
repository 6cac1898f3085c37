//! The ONE place where errors become responses: every layer's error enum is mapped here to an
//! HTTP status and a FHIR `OperationOutcome` with a stable detail code (as linkerd2-proxy's
//! `ServerRescue` does). Unknown errors become a bare 500 that says nothing about internals.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, StatusCode, header};
use portvagt_policy::ClassifyError;
use tower::{Layer, Service};

use crate::auth::AuthnError;
use crate::backend::ProxyError;
use crate::body::{Body, BodyTooLargeError, BoxError, ClientBodyError};
use crate::context::RequestRecord;
use crate::layers::authorize::AccessDeniedError;
use crate::layers::classify::SearchBodyNotFormError;
use crate::layers::framing::FramingError;
use crate::layers::request_id::RequestId;
use crate::layers::{BoxFuture, take_ready};
use crate::metrics::Metrics;
use crate::outcome::Outcome;
use crate::paging::PageLinkError;
use crate::proxy::CitizenBlockError;
use portvagt_policy::consent::citizen::BlockRefusal;

/// The realm in `WWW-Authenticate` challenges.
const REALM: &str = "portvagt";

/// Turns errors from inner layers into OperationOutcome responses.
#[derive(Debug, Clone)]
pub struct RescueLayer {
    metrics: Arc<Metrics>,
}

impl RescueLayer {
    /// A rescue layer counting authentication failures into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rescue {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`RescueLayer`].
#[derive(Debug, Clone)]
pub struct Rescue<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Service<Request<Body>> for Rescue<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Overload is not signalled here: the load-shed layer inside answers it per request.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(|id| id.as_str().to_owned());
        let record = request.extensions().get::<RequestRecord>().cloned();
        let metrics = self.metrics.clone();
        let mut inner = take_ready(&mut self.inner);
        Box::pin(async move {
            match inner.call(request).await {
                Ok(response) => Ok(response),
                Err(error) => {
                    let rescued = rescue(&*error);
                    if let Some(record) = &record {
                        let mut fields = record.fields();
                        fields.reason.get_or_insert(rescued.outcome.code);
                        if rescued.outcome.status == StatusCode::UNAUTHORIZED {
                            fields.decision.get_or_insert("deny");
                        }
                    }
                    if rescued.outcome.status == StatusCode::UNAUTHORIZED {
                        metrics
                            .auth_failures
                            .with_label_values(&[rescued.outcome.code])
                            .inc();
                    }
                    if rescued.outcome.status == StatusCode::INTERNAL_SERVER_ERROR {
                        tracing::error!(error = %error, request_id = request_id.as_deref().unwrap_or(""), "internal error");
                    }
                    let close = crate::layers::framing::CLOSE_AFTER.contains(&rescued.outcome.code);
                    let mut response = rescued.outcome.into_response(request_id.as_deref());
                    if close {
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    if let Some(challenge) = rescued.challenge {
                        response
                            .headers_mut()
                            .insert(header::WWW_AUTHENTICATE, challenge);
                    }
                    if let Some(retry_after) = rescued.retry_after {
                        response
                            .headers_mut()
                            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                    }
                    Ok(response)
                }
            }
        })
    }
}

/// An error's answer.
#[derive(Debug)]
pub struct Rescued {
    /// Status and OperationOutcome.
    pub outcome: Outcome,
    /// `WWW-Authenticate` (RFC 6750 §3) for 401 and 403.
    pub challenge: Option<HeaderValue>,
    /// `Retry-After` seconds, for shed load.
    pub retry_after: Option<u64>,
}

/// Maps any error from the stack to its answer. Walks the source chain, so an error wrapped by
/// hyper or tower is still recognised.
pub fn rescue(error: &(dyn std::error::Error + 'static)) -> Rescued {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(rescued) = rescue_one(error) {
            return rescued;
        }
        current = error.source();
    }
    plain(Outcome::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "exception",
        "internal-error",
        "the gateway failed to process the request",
    ))
}

/// The answer for a backend failure: the gateway's words, never the backend's.
fn backend_outcome(error: &ProxyError) -> Outcome {
    match error {
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
        ProxyError::ExportFileTooLarge => Outcome::new(
            StatusCode::BAD_GATEWAY,
            "too-costly",
            "export-file-too-large",
            "the export file is larger than limits.max_response_bytes: have the backend split \
             its export files below it (most servers have a maximum file size), or raise the limit",
        ),
        ProxyError::PreconditionFailed => Outcome::new(
            StatusCode::PRECONDITION_FAILED,
            "conflict",
            "precondition-failed",
            "If-Match names another version than the resource's current one; read it again",
        ),
        ProxyError::NotAnOutcome(status) => Outcome::new(
            if status.is_redirection() || status.is_client_error() {
                *status
            } else {
                StatusCode::BAD_GATEWAY
            },
            "exception",
            "backend-answer-withheld",
            format!(
                "the backend answered {} with something other than an OperationOutcome; it is not passed on",
                status.as_u16()
            ),
        ),
        ProxyError::UnreadableAnswer => Outcome::new(
            StatusCode::BAD_GATEWAY,
            "exception",
            "backend-answer-unreadable",
            "the backend's answer could not be read as FHIR JSON, so it could not be checked",
        ),
        ProxyError::UnreadableExport => Outcome::new(
            StatusCode::BAD_GATEWAY,
            "exception",
            "export-unreadable",
            "the backend's export file could not be read as FHIR resources",
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
            "a request may name at most 20 patients by identifier, and its answer 200; split or narrow it",
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

fn plain(outcome: Outcome) -> Rescued {
    Rescued {
        outcome,
        challenge: None,
        retry_after: None,
    }
}

fn rescue_one(error: &(dyn std::error::Error + 'static)) -> Option<Rescued> {
    if let Some(CitizenBlockError(refusal)) = error.downcast_ref::<CitizenBlockError>() {
        return Some(plain(match *refusal {
            BlockRefusal::Refused(message) => Outcome::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "citizen-block-refused",
                message,
            ),
            BlockRefusal::Shape(message) => Outcome::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "processing",
                "citizen-block-invalid",
                message,
            ),
        }));
    }
    if let Some(error @ AuthnError::IntrospectionUnavailable) = error.downcast_ref::<AuthnError>() {
        return Some(Rescued {
            outcome: Outcome::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                error.code(),
                error.to_string(),
            ),
            challenge: None,
            retry_after: Some(5),
        });
    }
    if let Some(error) = error.downcast_ref::<AuthnError>() {
        let challenge = match error {
            // RFC 6750 §3.1: no error code when the request had no authentication at all.
            AuthnError::MissingToken => format!("Bearer realm=\"{REALM}\""),
            AuthnError::UnsupportedScheme => format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_request\", error_description=\"{error}\""
            ),
            other => format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{other}\""
            ),
        };
        return Some(Rescued {
            outcome: Outcome::new(
                StatusCode::UNAUTHORIZED,
                "login",
                error.code(),
                error.to_string(),
            ),
            challenge: HeaderValue::try_from(challenge).ok(),
            retry_after: None,
        });
    }
    if let Some(denied) = error.downcast_ref::<AccessDeniedError>() {
        let code = denied.reason.code();
        let challenge = HeaderValue::try_from(format!(
            "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"{code}\""
        ))
        .ok();
        return Some(Rescued {
            outcome: crate::outcome::denied_outcome(denied.reason),
            challenge,
            retry_after: None,
        });
    }
    if let Some(error) = error.downcast_ref::<PageLinkError>() {
        let (status, issue_type) = match error {
            PageLinkError::Invalid | PageLinkError::NotYours => {
                (StatusCode::FORBIDDEN, "forbidden")
            }
            PageLinkError::Expired => (StatusCode::GONE, "expired"),
            PageLinkError::Method => (StatusCode::METHOD_NOT_ALLOWED, "not-supported"),
            PageLinkError::Parameters => (StatusCode::BAD_REQUEST, "invalid"),
        };
        return Some(plain(Outcome::new(
            status,
            issue_type,
            error.code(),
            error.to_string(),
        )));
    }
    if let Some(error) = error.downcast_ref::<portvagt_fhir::XmlError>() {
        return Some(plain(Outcome::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "malformed-xml",
            error.to_string(),
        )));
    }
    if let Some(error) = error.downcast_ref::<ClassifyError>() {
        let (status, issue_type) = match error {
            ClassifyError::UnknownResourceType | ClassifyError::UnknownPath => {
                (StatusCode::NOT_FOUND, "not-supported")
            }
            ClassifyError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "not-supported"),
            ClassifyError::UnsupportedFormat => (StatusCode::NOT_ACCEPTABLE, "not-supported"),
            _ => (StatusCode::BAD_REQUEST, "invalid"),
        };
        return Some(plain(Outcome::new(
            status,
            issue_type,
            error.code(),
            error.to_string(),
        )));
    }
    if error.is::<ClientBodyError>() {
        return Some(plain(Outcome::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "malformed-request-body",
            "the request body could not be read (broken chunked encoding, or cut short)",
        )));
    }
    if let Some(refused) = error.downcast_ref::<FramingError>() {
        let kind = if refused.status == StatusCode::METHOD_NOT_ALLOWED {
            "not-supported"
        } else {
            "invalid"
        };
        return Some(plain(Outcome::new(
            refused.status,
            kind,
            refused.code,
            refused.message,
        )));
    }
    if error.is::<SearchBodyNotFormError>() {
        return Some(plain(Outcome::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "search-body-not-form",
            error.to_string(),
        )));
    }
    if error.is::<BodyTooLargeError>() || error.is::<http_body_util::LengthLimitError>() {
        return Some(plain(Outcome::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-costly",
            "body-too-large",
            "the request body is larger than the gateway accepts",
        )));
    }
    if error.is::<tower::load_shed::error::Overloaded>() {
        return Some(Rescued {
            outcome: Outcome::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "overloaded",
                "the gateway is at capacity; retry shortly",
            ),
            challenge: None,
            retry_after: Some(1),
        });
    }
    if error.is::<tower::timeout::error::Elapsed>() {
        return Some(plain(Outcome::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "request-timeout",
            "the request took longer than the gateway allows",
        )));
    }
    if let Some(error) = error.downcast_ref::<ProxyError>() {
        let retry_after = match error {
            ProxyError::CircuitOpen(open) => Some(open.retry_after),
            _ => None,
        };
        return Some(Rescued {
            outcome: backend_outcome(error),
            challenge: None,
            retry_after,
        });
    }
    if let Some(limited) = error.downcast_ref::<crate::layers::rate_limit::RateLimitedError>() {
        return Some(Rescued {
            outcome: Outcome::new(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                "rate-limited",
                "this client has sent more requests than it may in this period",
            ),
            challenge: None,
            retry_after: Some(limited.retry_after),
        });
    }
    if error.is::<crate::consent::NotFoundError>() {
        return Some(plain(crate::outcome::not_found()));
    }
    if error.is::<crate::consent::ConsentUnavailableError>() {
        return Some(Rescued {
            outcome: Outcome::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "consent-unavailable",
                "the patients' consents could not be checked, so the access was not made",
            ),
            challenge: None,
            retry_after: Some(5),
        });
    }
    if error.is::<crate::relationship::RelationshipUnavailableError>() {
        return Some(Rescued {
            outcome: Outcome::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "relationship-unavailable",
                "the treatment relationship could not be checked, so the access was not made",
            ),
            challenge: None,
            retry_after: Some(5),
        });
    }
    if error.is::<crate::audit::AuditUnavailableError>() {
        return Some(Rescued {
            outcome: Outcome::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "audit-unavailable",
                "the access could not be recorded in the audit trail, so it was not made",
            ),
            challenge: None,
            retry_after: Some(5),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_citizens_block_is_refused_as_not_hers_or_as_another_shape() {
        let refused = rescue(&CitizenBlockError(BlockRefusal::Refused("not hers")));
        assert_eq!(
            (refused.outcome.status, refused.outcome.code),
            (StatusCode::FORBIDDEN, "citizen-block-refused")
        );
        let shape = rescue(&CitizenBlockError(BlockRefusal::Shape("one actor")));
        assert_eq!(
            (shape.outcome.status, shape.outcome.code),
            (StatusCode::UNPROCESSABLE_ENTITY, "citizen-block-invalid")
        );
        assert!(shape.challenge.is_none());
    }

    #[test]
    fn missing_token_gets_a_bare_challenge() {
        let rescued = rescue(&AuthnError::MissingToken);
        assert_eq!(rescued.outcome.status, StatusCode::UNAUTHORIZED);
        assert_eq!(rescued.challenge.unwrap(), "Bearer realm=\"portvagt\"");
    }

    #[test]
    fn invalid_token_gets_rfc6750_error() {
        let rescued = rescue(&AuthnError::Expired);
        let challenge = rescued.challenge.unwrap();
        assert!(
            challenge
                .to_str()
                .unwrap()
                .contains("error=\"invalid_token\""),
            "{challenge:?}"
        );
        assert_eq!(rescued.outcome.code, "token-expired");
    }

    #[test]
    fn wrapped_errors_are_found_through_the_source_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] BodyTooLargeError);
        assert_eq!(
            rescue(&Outer(BodyTooLargeError)).outcome.status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn unknown_errors_say_nothing_about_internals() {
        let error = std::io::Error::other("database password is hunter2");
        let rescued = rescue(&error);
        assert_eq!(rescued.outcome.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!rescued.outcome.text.contains("hunter2"));
    }
}
