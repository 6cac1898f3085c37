//! Portvagt's access policy, as a pure library: no I/O, no async, no clock reads.
//!
//! The gateway classifies each HTTP request into a [`FhirRequest`] ([`request`]), parses the
//! caller's SMART scopes once per token ([`scope`]) and asks [`decide`] whether the caller may do
//! it. A denial is a value ([`Decision::Deny`]) with a stable reason code, never an error.
//!
//! This is the first cut: scopes against interaction and resource type, and a deliberately
//! narrow patient-context rule (only what can be proven from the request alone is allowed).

pub mod decision;
pub mod request;
pub mod resource_type;
pub mod scope;

pub use decision::{Decision, DenyReason, Subject, decide};
pub use request::{ClassifyError, FhirRequest, Interaction, classify, parse_form};
pub use resource_type::ResourceType;
pub use scope::{Permissions, Scope, ScopeContext, ScopeSet};
