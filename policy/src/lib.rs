//! Portvagt's access policy, as a pure library: no I/O, no async, no clock reads.
//!
//! The gateway classifies each HTTP request into a [`FhirRequest`] ([`request`]), parses the
//! caller's SMART scopes once per token ([`scope`]) and asks [`decide`] whether the caller may do
//! it. A denial is a value ([`Decision::Deny`]) with a stable reason code, never an error; an
//! allow carries [`Obligations`]: searches to narrow, answers to check against the Patient
//! compartment ([`compartment`], [`filter`]), per-entry answers for batches. Which patients a
//! request touches, in every spelling, is answered once, by [`reach`]; citizens' blocks
//! (negative consent, R4 Consent provisions) and break-the-glass are decided by [`consent`],
//! before a request from its reach and after it from the answer.

pub mod compartment;
mod compartment_table;
pub mod consent;
pub mod decision;
pub mod elements;
pub mod filter;
pub mod operations;
pub mod patch;
mod patient_rules;
pub mod raw;
pub mod reach;
pub mod relationship;
pub mod request;
pub mod resource_type;
pub mod rules;
pub mod scope;
mod shape;
pub mod strict_json;
pub mod verdict;

pub use decision::{
    Channel, Decision, DenyReason, Obligations, Subject, decide, decide_with_rules,
};
pub use filter::{FilterMode, Filtered, ResponseCheck, check_response, filter_response};
pub use patient_rules::stays_hers;
pub use reach::Reach;
pub use request::{ClassifyError, FhirRequest, Interaction, classify, parse_form};
pub use resource_type::ResourceType;
pub use rules::{Caller, RuleSet, RulesFile};
pub use scope::{Permissions, Scope, ScopeContext, ScopeSet};
