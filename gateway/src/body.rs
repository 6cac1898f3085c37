//! The body type used inside the stack: boxed, so layers can wrap and replace bodies freely.
//!
//! [`Body`] is a newtype rather than an alias: a bare `UnsyncBoxBody<_, Box<dyn Error>>` in
//! async blocks trips rustc's higher-ranked lifetime inference ("Send is not general enough").

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Empty, Full};

/// Any error the stack carries; [`crate::layers::rescue`] turns it into a response.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Request and response body inside the stack.
#[derive(Debug)]
pub struct Body(UnsyncBoxBody<Bytes, BoxError>);

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Body(
        Full::new(bytes.into())
            .map_err(|never| match never {})
            .boxed_unsync(),
    )
}

/// An empty body.
pub fn empty() -> Body {
    Body(Empty::new().map_err(|never| match never {}).boxed_unsync())
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Body(body.map_err(Into::into).boxed_unsync())
}

/// The declared body is larger than the limit.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("request body too large")]
pub struct BodyTooLargeError;

/// The client's request body could not be read: broken chunked framing, a connection cut
/// mid-body. The client's fault, answered 400, never 500 (and not 502 when the body was being
/// streamed to the backend).
#[derive(Debug, thiserror::Error)]
#[error("the request body could not be read")]
pub struct ClientBodyError(#[source] pub BoxError);
