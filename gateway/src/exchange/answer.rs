//! The token endpoint's answers: an access token response (RFC 6749 §5.1, never cached) and an
//! error response (RFC 6749 §5.2, a stable Portvagt code first in `error_description`). It only
//! shapes answers: which request is refused, and why, is decided in [`super`].

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::auth::saml::SamlError;
use crate::body::{Body, full};

/// An RFC 6749 error answer.
#[derive(Debug)]
pub(super) struct TokenError {
    status: StatusCode,
    error: &'static str,
    pub(super) code: &'static str,
    description: String,
}

impl TokenError {
    pub(super) fn new(
        error: &'static str,
        code: &'static str,
        description: impl Into<String>,
    ) -> Self {
        TokenError {
            status: StatusCode::BAD_REQUEST,
            error,
            code,
            description: description.into(),
        }
    }

    pub(super) fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

impl From<SamlError> for TokenError {
    fn from(error: SamlError) -> Self {
        TokenError::new("invalid_grant", error.code(), error.to_string())
    }
}

pub(super) fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // RFC 6749 §5.1: token responses must not be cached.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

pub(super) fn error_response(error: &TokenError) -> Response<Body> {
    let mut response = json_response(
        error.status,
        &json!({
            "error": error.error,
            "error_description": format!("{}: {}", error.code, error.description),
        }),
    );
    if error.status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    if error.status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_client\""),
        );
    }
    response
}
