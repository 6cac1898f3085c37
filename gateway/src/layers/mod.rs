//! The tower layers of the request path, one per file. [`crate::stack::build`] puts them in
//! order; read that function first.

pub mod access_log;
pub mod audit;
pub mod authenticate;
pub mod authorize;
pub mod body_limit;
pub mod classify;
pub mod format;
pub mod framing;
pub mod local;
pub mod rate_limit;
pub mod request_id;
pub mod rescue;
pub mod token_endpoint;
pub mod trace;

use std::future::Future;
use std::pin::Pin;

/// The future every layer returns: boxed, so layers compose without naming each other's types.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Takes the ready inner service out of `slot`, leaving a fresh clone behind (the tower idiom
/// for calling a cloned service from a `'static` future after `poll_ready`).
pub(crate) fn take_ready<S: Clone>(slot: &mut S) -> S {
    let clone = slot.clone();
    std::mem::replace(slot, clone)
}
