//! Portvagt: a FHIR REST security gateway.
//!
//! Every FHIR call passes one tower stack ([`stack::build`]): mutual TLS identifies the calling
//! system, an OAuth token the user or service, SMART scopes decide what it may do, and the
//! request goes on to the backend FHIR server only when all of that holds. Errors become FHIR
//! `OperationOutcome`s in one place ([`rescue`]).

pub mod admin;
pub mod audit;
pub mod auth;
pub mod backend;
pub mod body;
pub mod config;
pub mod consent;
pub mod context;
pub mod decisions;
pub mod demo;
mod encoding;
pub mod exchange;
pub mod format;
pub mod https;
pub mod issuer_key;
pub mod layers;
pub mod mass_lookup;
pub mod metrics;
pub mod minlog;
pub mod otlp;
pub mod outcome;
pub mod paging;
pub mod proxy;
pub mod redis;
pub mod relationship;
pub mod reload;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod smart;
pub mod stack;
pub use portvagt_policy::strict_json;
pub mod tls;
pub mod trace;
pub mod watched;
