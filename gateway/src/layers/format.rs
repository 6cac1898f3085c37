//! FHIR XML for the clients that ask for it. On the way in, the `_format` values the gateway
//! answers itself are taken out of the query, so everything below sees the JSON twin of the
//! request (an XML body is read into JSON by the classifier, before policy). On the way out,
//! a FHIR JSON answer is written as FHIR XML when the client asked for XML ([`negotiate`]).
//! This layer decides nothing and never changes what an answer says, only how it is written;
//! an answer that cannot be written as XML (never one a FHIR server gives) goes out as JSON.
//! It stands above the rescue layer, so every answer passes it once, errors included.

use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use tower::{Layer, Service};

use super::request_id::RequestId;
use super::rescue::rescue;
use super::{BoxFuture, take_ready};

use crate::body::{Body, BoxError, full};
use crate::format::{FHIR_XML, Representation, is_json, negotiate, without_format};

/// Negotiates the representation and writes XML answers.
#[derive(Debug, Clone, Copy)]
pub struct FormatLayer {
    max_response_bytes: u64,
}

impl FormatLayer {
    /// An answer to be written as XML is read whole, up to `max_response_bytes` (502 beyond).
    pub fn new(max_response_bytes: u64) -> Self {
        Self { max_response_bytes }
    }
}

impl<S> Layer<S> for FormatLayer {
    type Service = Format<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Format {
            inner,
            max_response_bytes: self.max_response_bytes,
        }
    }
}

/// See [`FormatLayer`].
#[derive(Debug, Clone)]
pub struct Format<S> {
    inner: S,
    max_response_bytes: u64,
}

impl<S> Service<Request<Body>> for Format<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let representation = negotiate(request.headers(), request.uri().query());
        if let Some(uri) = without_format_uri(request.uri()) {
            *request.uri_mut() = uri;
        }
        // What the client asked for, for the layers below (the `_format` is gone from the URI).
        request.extensions_mut().insert(representation);
        let is_head = request.method() == Method::HEAD;
        let max = self.max_response_bytes;
        let request_id = request.extensions().get::<RequestId>().cloned();
        let mut inner = take_ready(&mut self.inner);
        Box::pin(async move {
            let mut response = inner.call(request).await?;
            let fhir = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(is_json);
            if fhir {
                // The representation depends on `Accept`: caches must not give one client's
                // JSON to another's request for XML.
                response
                    .headers_mut()
                    .append(header::VARY, HeaderValue::from_static("accept"));
            }
            match representation {
                Representation::Json => Ok(response),
                Representation::Xml => match as_xml(response, is_head, max).await {
                    Ok(response) => Ok(response),
                    // The answer could not be read (over the limit): the gateway's own answer,
                    // in XML. This layer is above the rescue layer, so it rescues its own.
                    Err(error) => {
                        let id = request_id.as_ref().map(RequestId::as_str);
                        let outcome = rescue(&*error).outcome.into_response(id);
                        as_xml(outcome, is_head, max).await
                    }
                },
            }
        })
    }
}

/// The request's URI without the `_format` parameters the gateway answers itself.
fn without_format_uri(uri: &Uri) -> Option<Uri> {
    let query = without_format(uri.query()?)?;
    let path_and_query = if query.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{query}", uri.path())
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(path_and_query).ok()?);
    Uri::from_parts(parts).ok()
}

/// A FHIR JSON answer written as FHIR XML; any other answer as it is.
async fn as_xml(
    response: Response<Body>,
    is_head: bool,
    max_bytes: u64,
) -> Result<Response<Body>, BoxError> {
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json);
    let no_body = is_head
        || response.status() == StatusCode::NO_CONTENT
        || response.status() == StatusCode::NOT_MODIFIED;
    if !json {
        return Ok(response);
    }
    let (mut parts, body) = response.into_parts();
    if no_body {
        // The GET behind a HEAD would be XML of another length.
        parts.headers.remove(header::CONTENT_LENGTH);
        parts
            .headers
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_XML));
        return Ok(Response::from_parts(parts, body));
    }
    let limit = usize::try_from(max_bytes).unwrap_or(usize::MAX);
    let bytes = crate::backend::read_limited(body, limit).await?;
    // JSON that names no resource type (an OAuth answer) has no XML form: not even tried.
    let resource = memchr::memmem::find(&bytes, b"\"resourceType\"").is_some();
    let converted = if resource {
        let json = bytes.clone();
        crate::format::convert(move || portvagt_fhir::json_to_xml(&json)).await?
    } else {
        Err(portvagt_fhir::XmlError::NotFhirJson(
            "no resourceType".to_owned(),
        ))
    };
    let body: bytes::Bytes = match converted {
        Ok(xml) => {
            parts
                .headers
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_XML));
            xml.into()
        }
        Err(_) => {
            // Not the error's text: it may quote the answer's data.
            if resource {
                tracing::warn!("an answer could not be written as XML; it goes out as JSON");
            }
            bytes
        }
    };
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Ok(Response::from_parts(parts, full(body)))
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;
    use crate::backend::ProxyError;

    #[test]
    fn the_formats_the_gateway_answers_leave_the_uri_and_nothing_else_does() {
        let uri: Uri = "/fhir/Observation?code=x&_format=xml".parse().unwrap();
        assert_eq!(
            without_format_uri(&uri).unwrap(),
            "/fhir/Observation?code=x"
        );
        let uri: Uri = "/fhir/Patient/p1?_format=application/fhir%2Bxml"
            .parse()
            .unwrap();
        assert_eq!(without_format_uri(&uri).unwrap(), "/fhir/Patient/p1");
        let uri: Uri = "/fhir/Patient/p1?_format=turtle".parse().unwrap();
        assert_eq!(without_format_uri(&uri), None);
        let uri: Uri = "/fhir/Patient/p1".parse().unwrap();
        assert_eq!(without_format_uri(&uri), None);
    }

    fn answer(content_type: &'static str, body: &'static str) -> Response<Body> {
        let mut response = Response::new(full(body));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }

    async fn text(response: Response<Body>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_json_answer_is_written_as_xml_and_anything_else_is_left_alone() {
        let patient = r#"{"resourceType":"Patient","id":"pat-anne","active":true}"#;
        let xml = as_xml(answer("application/fhir+json", patient), false, 1 << 20)
            .await
            .unwrap();
        assert_eq!(xml.headers()[header::CONTENT_TYPE], FHIR_XML);
        let length: usize = xml.headers()[header::CONTENT_LENGTH]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body = text(xml).await;
        assert_eq!(length, body.len());
        assert!(
            body.contains(r#"<Patient xmlns="http://hl7.org/fhir">"#),
            "{body}"
        );
        assert!(body.contains(r#"<active value="true"/>"#), "{body}");

        // Not FHIR JSON (a page, a token answer): untouched.
        let html = as_xml(answer("text/html", "<p>hej</p>"), false, 1 << 20)
            .await
            .unwrap();
        assert_eq!(html.headers()[header::CONTENT_TYPE], "text/html");
        assert_eq!(text(html).await, "<p>hej</p>");
        // JSON that is no FHIR resource: as it is, JSON.
        let odd = as_xml(answer("application/json", r#"{"a":1}"#), false, 1 << 20)
            .await
            .unwrap();
        assert_eq!(odd.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(text(odd).await, r#"{"a":1}"#);
        // A HEAD: the type it would have, no length of another representation.
        let head = as_xml(answer("application/fhir+json", ""), true, 1 << 20)
            .await
            .unwrap();
        assert_eq!(head.headers()[header::CONTENT_TYPE], FHIR_XML);
        assert!(!head.headers().contains_key(header::CONTENT_LENGTH));
        // Beyond the limit: the gateway's 502, not a cut answer.
        let error = as_xml(answer("application/fhir+json", patient), false, 10)
            .await
            .unwrap_err();
        assert!(matches!(
            error.downcast_ref::<ProxyError>(),
            Some(ProxyError::ResponseTooLarge)
        ));
    }
}
