//! The access decision: SMART scopes (App Launch 2.2 §3) against the classified request, with
//! the Patient compartment for patient-context scopes.
//!
//! [`decide`] cannot fail. It answers [`Decision::Allow`] naming the scope that granted the
//! access and the [`Obligations`] the gateway must carry out (narrow the search, check the
//! response against the compartment, per-entry answers of a batch), or [`Decision::Deny`] with
//! a stable reason. Deny is the default: a request is allowed only when some scope provably
//! covers it.
//!
//! Who may read the audit log, and what the citizen listener serves, are decided here too: the
//! [`Subject`] says who the user is (`fhirUser`) and which listener they came through
//! ([`Channel`]), and an allowed read of a citizen's own log carries the obligation to answer in
//! the citizen's view ([`Obligations::citizen_view`]).

use crate::operations::Kind;
use crate::patient_rules;
use crate::request::{BundleKind, FhirRequest, Interaction, RequestBody};
use crate::resource_type::ResourceType;
use crate::rules::{Caller, RuleSet, RuleVerdict};
use crate::scope::{Permissions, Scope, ScopeContext, ScopeSet};
use crate::shape::{granular, is_everything, reaches_other_types};
pub use crate::verdict::{Decision, DenyReason, Obligations};

/// What policy needs to know about the caller, borrowed from the verified principal.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The caller's resource scopes.
    pub scopes: &'a ScopeSet,
    /// The `patient` launch context of the token, if any.
    pub patient: Option<&'a str>,
    /// The token's `fhirUser`: who the user is (a relative or absolute reference), if known.
    pub fhir_user: Option<&'a str>,
    /// The listener the request came through.
    pub channel: Channel<'a>,
}

/// The listener a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel<'a> {
    /// The mTLS listener: professionals' and systems' clients with a client certificate.
    Professional,
    /// The citizen listener (no client certificate): it serves a citizen about themselves only,
    /// reading or searching their own audit log or one of the resource types the operator
    /// `opened` there, and nothing else.
    Citizen {
        /// The resource types besides `AuditEvent` the operator opened to citizens.
        opened: &'a [String],
        /// Citizens make and lift their own blocks here (`[citizen] blocks`): `Consent` is
        /// theirs to read and search, to create, and to patch (the gateway writes what they
        /// ask for, [`Obligations::citizen_block`]).
        blocks: bool,
    },
}

impl<'a> Subject<'a> {
    /// A caller on the mTLS listener with these scopes and launch context, and no `fhirUser`.
    pub fn new(scopes: &'a ScopeSet, patient: Option<&'a str>) -> Self {
        Subject {
            scopes,
            patient,
            fhir_user: None,
            channel: Channel::Professional,
        }
    }

    /// Whether the user is the patient of their own launch context: `fhirUser` names that
    /// Patient (relative, or absolute ending in `/Patient/<id>`).
    pub fn is_the_patient(&self) -> bool {
        let (Some(user), Some(patient)) = (self.fhir_user, self.patient) else {
            return false;
        };
        let own = format!("Patient/{patient}");
        user == own
            || user
                .strip_suffix(&own)
                .is_some_and(|base| base.ends_with('/'))
    }
}

/// Whether the citizen listener serves this: a citizen about themselves, reading or searching
/// `AuditEvent` or a type the operator opened; with `blocks`, also making a block (a `Consent`
/// create) or lifting one (a `Consent` patch).
fn citizen_may(
    subject: &Subject<'_>,
    request: &FhirRequest,
    opened: &[String],
    blocks: bool,
) -> bool {
    let reads = matches!(
        request.interaction(),
        Interaction::Read | Interaction::Vread | Interaction::SearchType
    );
    let resource_type = request.resource_type().map(|t| t.as_str());
    let type_open = resource_type.is_some_and(|t| {
        t == "AuditEvent" || opened.iter().any(|o| o == t) || (blocks && t == "Consent")
    });
    let block_change = blocks && is_block_change(request);
    // Only what she asked for: no other resources brought along (a Consent's Practitioners, an
    // AuditEvent's agents, with identifiers she has no business reading).
    let brings_others = request.params().iter().any(|(name, _)| {
        matches!(
            name.split(':').next(),
            Some("_include" | "_revinclude" | "_contained" | "_containedType")
        )
    });
    (reads && type_open && !brings_others || block_change) && subject.is_the_patient()
}

/// A citizen making or lifting a block: a `Consent` create (`POST Consent`, not conditional)
/// or patch of one instance.
fn is_block_change(request: &FhirRequest) -> bool {
    request
        .resource_type()
        .is_some_and(|t| t.as_str() == "Consent")
        && match request.interaction() {
            Interaction::Create => request.if_none_exist().is_none(),
            Interaction::Patch => request.id().is_some(),
            _ => false,
        }
        && request.version().is_none()
        && request.operation().is_none()
}

/// Decides whether `subject` may perform `request`, on scopes alone.
pub fn decide(subject: Subject<'_>, request: &FhirRequest) -> Decision {
    decide_inner(subject, None, request)
}

/// Decides on scopes, then on the operator `rules` for `caller` (see [`crate::rules`]).
pub fn decide_with_rules(
    subject: Subject<'_>,
    caller: &Caller<'_>,
    rules: &RuleSet,
    request: &FhirRequest,
) -> Decision {
    decide_inner(subject, Some((caller, rules)), request)
}

fn decide_inner(
    subject: Subject<'_>,
    rules: Option<(&Caller<'_>, &RuleSet)>,
    request: &FhirRequest,
) -> Decision {
    if matches!(subject.channel, Channel::Citizen { blocks: true, .. })
        && is_block_change(request)
        && subject.is_the_patient()
    {
        return decide_block_change(subject, rules, request);
    }
    if subject.channel == Channel::Professional && writes_citizen_tag(request) {
        return Decision::Deny {
            reason: DenyReason::CitizenBlockReserved,
        };
    }
    let mut decision = decide_request(subject, rules, request);
    if let Decision::Allow { obligations, .. } = &mut decision
        && request.interaction() != Interaction::BatchOrTransaction
    {
        // A search that filters by what AuditEvents say (`_has:AuditEvent:…`, a chain into
        // one) reads the audit log as surely as a search of it: decided the same way.
        if searches_the_audit_log(request) {
            return Decision::Deny {
                reason: DenyReason::AuditLogRestricted,
            };
        }
        obligations.withhold_audit_events = may_answer_audit_events(request);
        // Where AuditEvents may be among the matches themselves (a system or compartment
        // search, system history, an operation), a total would count them on every page.
        obligations.hide_total |= obligations.withhold_audit_events
            && matches!(
                request.interaction(),
                Interaction::SearchSystem
                    | Interaction::SearchCompartment
                    | Interaction::HistorySystem
                    | Interaction::Operation
            );
    }
    decision
}

/// Whether parameters of a request that is not for `AuditEvent` test AuditEvents:
/// `_has:AuditEvent:…` (nested in another `_has` too), a chain with the `AuditEvent` type
/// modifier, `_type` naming it, or an export's `_typeFilter` naming it anywhere (its value is
/// a search of its own); in the query or in a conditional create's criteria.
fn searches_the_audit_log(request: &FhirRequest) -> bool {
    if request
        .resource_type()
        .is_some_and(|t| t.as_str() == "AuditEvent")
    {
        return false;
    }
    // Compared in place, whatever the case: nothing allocated per parameter.
    let has = |name: &str, needle: &str| {
        name.as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
    };
    // A conditional create's `If-None-Exist` is a search too: whether it matched shows.
    let conditional = request.if_none_exist().unwrap_or_default();
    request
        .params()
        .iter()
        .chain(conditional)
        .any(|(name, value)| {
            has(name, "_has:auditevent:")
                || has(name, ":auditevent.")
                || (name.eq_ignore_ascii_case("_typeFilter")
                    && crate::request::percent_decode(value, false)
                        .map_or(true, |filter| has(&filter, "auditevent")))
                || (name.eq_ignore_ascii_case("_type")
                    && value
                        .split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("AuditEvent")))
        })
}

/// Whether the answer to `request` may hold AuditEvents although it does not ask for them:
/// the audit-log rules decided a request FOR `AuditEvent`; these reach them sideways.
pub fn may_answer_audit_events(request: &FhirRequest) -> bool {
    if request
        .resource_type()
        .is_some_and(|t| t.as_str() == "AuditEvent")
    {
        return false;
    }
    let includes = request.params().iter().any(|(name, _)| {
        matches!(
            name.split(':').next(),
            Some("_include" | "_revinclude" | "_contained" | "_containedType")
        )
    });
    // A Binary may hold anything, an export's output file among them (read as FHIR there).
    let binary = request
        .resource_type()
        .is_some_and(|t| t.as_str() == "Binary");
    match request.interaction() {
        Interaction::SearchSystem | Interaction::SearchCompartment | Interaction::HistorySystem => {
            true
        }
        // Bulk export leaves AuditEvents out of its files itself (and its files are NDJSON).
        Interaction::Operation => request.operation_kind() != Some(Kind::Export),
        Interaction::Read | Interaction::Vread => binary,
        Interaction::SearchType | Interaction::HistoryType | Interaction::HistoryInstance => {
            includes || binary
        }
        _ => false,
    }
}

fn decide_request(
    subject: Subject<'_>,
    rules: Option<(&Caller<'_>, &RuleSet)>,
    request: &FhirRequest,
) -> Decision {
    if let Channel::Citizen { opened, blocks } = subject.channel
        && !citizen_may(&subject, request, opened, blocks)
    {
        return Decision::Deny {
            reason: DenyReason::CitizenListener,
        };
    }
    let (resource_type, needed, system_only) = match requirement(request) {
        Requirement::Open => {
            return Decision::Allow {
                granted_by: String::new(),
                obligations: Obligations::default(),
            };
        }
        Requirement::Bundle => return decide_bundle(subject, rules, request),
        Requirement::Refused(reason) => return Decision::Deny { reason },
        Requirement::Scope(resource_type, needed) => (resource_type, needed, false),
        Requirement::SystemScope(resource_type, needed) => (resource_type, needed, true),
    };
    let mut best = DenyReason::InsufficientScope;
    // User and system scopes first: when one grants the request, a patient-context scope beside
    // it must not narrow what it grants. On the citizen listener only patient-context scopes
    // grant anything: it serves a citizen about herself, whatever else the token carries.
    let citizen = matches!(subject.channel, Channel::Citizen { .. });
    let by_breadth = subject
        .scopes
        .iter()
        .filter(|scope| scope.context() != ScopeContext::Patient && !citizen)
        .chain(
            subject
                .scopes
                .iter()
                .filter(|scope| scope.context() == ScopeContext::Patient),
        );
    for scope in by_breadth {
        if !scope.covers(resource_type, needed)
            || (system_only && scope.context() != ScopeContext::System)
        {
            continue;
        }
        let audit_log = resource_type.is_some_and(|t| t.as_str() == "AuditEvent");
        if audit_log
            && !Permissions::READ
                .union(Permissions::SEARCH)
                .contains(needed)
        {
            return Decision::Deny {
                reason: DenyReason::AuditLogRestricted,
            };
        }
        let verdict = match scope.context() {
            // Other people's access logs are not a user's or a system's to read, whatever the
            // scope, unless the operator named the audit log in a rule.
            ScopeContext::User | ScopeContext::System
                if audit_log
                    && !rules.is_some_and(|(caller, rules)| {
                        rules.names_type(caller, scope.context(), request)
                    }) =>
            {
                Err(DenyReason::AuditLogRestricted)
            }
            ScopeContext::User | ScopeContext::System => user_rules(request, scope),
            ScopeContext::Patient => match subject.patient {
                None => Err(DenyReason::NoPatientContext),
                // A patient-context scope opens the audit log only to the citizen it is about:
                // the user must BE that patient, not a practitioner launched in their context.
                Some(_) if audit_log && !subject.is_the_patient() => {
                    Err(DenyReason::AuditLogRestricted)
                }
                Some(patient) => {
                    patient_rules::check(request, scope, patient).map(|obligations| Obligations {
                        citizen_view: audit_log,
                        ..obligations
                    })
                }
            },
        };
        let verdict = verdict.and_then(|obligations| {
            rules_allow(rules, scope.context(), request).map(|()| obligations)
        });
        match verdict {
            // A POST operation's parameters are in its body, where a narrowing appended to the
            // URL might not be read: an operation that must be narrowed is sent with GET only.
            Ok(obligations) if request.posted() && !obligations.add_params.is_empty() => {
                best = DenyReason::OutsideCompartment;
            }
            Ok(obligations) => {
                let obligations = Obligations {
                    add_elements: crate::elements::widening(request),
                    ..obligations
                };
                return Decision::allow(scope, obligations);
            }
            Err(reason) => best = reason,
        }
    }
    Decision::Deny { reason: best }
}

/// Whether a write of a Consent could give it the tag of a citizen's own block: its body (a
/// resource, a JSON Patch, a FHIRPath Patch) holds the tag's system anywhere, as any string
/// (a Coding's `system`, a patch value that will become one, or text a later `copy` could move
/// there). Only the gateway writes that tag, for her.
fn writes_citizen_tag(request: &FhirRequest) -> bool {
    let body = match request.body() {
        Some(RequestBody::Resource(resource)) => resource,
        Some(RequestBody::Patch { document, .. }) => document,
        _ => return false,
    };
    request.interaction().is_write()
        && request
            .resource_type()
            .is_some_and(|t| t.as_str() == "Consent")
        && holds_block_tag(body)
}

/// Whether `value` holds the citizen-block tag's system as a string, at any depth.
fn holds_block_tag(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(text) => text == crate::consent::citizen::BLOCK_TAG_SYSTEM,
        Value::Object(fields) => fields.values().any(holds_block_tag),
        Value::Array(items) => items.iter().any(holds_block_tag),
        _ => false,
    }
}

/// A citizen making or lifting her own block: a patient-context scope that covers it (and the
/// operator's rules, as for any request of hers). What she sent is never forwarded: the gateway
/// checks it and writes the block itself ([`Obligations::citizen_block`]).
fn decide_block_change(
    subject: Subject<'_>,
    rules: Option<(&Caller<'_>, &RuleSet)>,
    request: &FhirRequest,
) -> Decision {
    let Requirement::Scope(resource_type, needed) = requirement(request) else {
        return Decision::Deny {
            reason: DenyReason::CitizenListener,
        };
    };
    let Some(scope) = subject.scopes.iter().find(|scope| {
        scope.context() == ScopeContext::Patient && scope.covers(resource_type, needed)
    }) else {
        return Decision::Deny {
            reason: DenyReason::InsufficientScope,
        };
    };
    if let Err(reason) = rules_allow(rules, ScopeContext::Patient, request) {
        return Decision::Deny { reason };
    }
    Decision::allow(
        scope,
        Obligations {
            citizen_block: true,
            compartment: subject.patient.map(str::to_owned),
            ..Obligations::default()
        },
    )
}

/// The operator's rules on a request a scope of `context` grants (none: allowed).
fn rules_allow(
    rules: Option<(&Caller<'_>, &RuleSet)>,
    context: ScopeContext,
    request: &FhirRequest,
) -> Result<(), DenyReason> {
    match rules.map(|(caller, rules)| rules.evaluate(caller, context, request)) {
        None | Some(RuleVerdict::Allowed) => Ok(()),
        Some(RuleVerdict::Denied) => Err(DenyReason::DeniedByRule),
        Some(RuleVerdict::NotAllowed) => Err(DenyReason::NoRuleAllows),
    }
}

enum Requirement {
    /// Anyone authenticated (capabilities).
    Open,
    /// Decided entry by entry.
    Bundle,
    /// Never, whatever the scopes.
    Refused(DenyReason),
    /// A scope covering this type (`None`: only `*` scopes) with these permissions.
    Scope(Option<ResourceType>, Permissions),
    /// The same, and only a `system/` scope (a backend service, not a user or a patient app).
    SystemScope(Option<ResourceType>, Permissions),
}

/// What a scope must grant for the interaction. SMART v2: `c` create, `r` read/vread,
/// `u` update/patch, `d` delete, `s` search and history; conditional writes search first.
fn requirement(request: &FhirRequest) -> Requirement {
    use Permissions as P;
    let t = request.resource_type();
    let needed = match request.interaction() {
        Interaction::Capabilities => return Requirement::Open,
        Interaction::BatchOrTransaction => return Requirement::Bundle,
        Interaction::Read | Interaction::Vread | Interaction::HistoryInstance => P::READ,
        Interaction::SearchType | Interaction::SearchCompartment | Interaction::SearchSystem => {
            P::SEARCH
        }
        Interaction::HistoryType | Interaction::HistorySystem => P::READ.union(P::SEARCH),
        // A conditional create answers with the existing match: it is a search too.
        Interaction::Create if request.if_none_exist().is_some() => {
            P::CREATE.union(P::READ).union(P::SEARCH)
        }
        Interaction::Create => P::CREATE,
        Interaction::Update | Interaction::Patch => P::UPDATE,
        // No match: a conditional update creates.
        Interaction::ConditionalUpdate => P::CREATE.union(P::UPDATE).union(P::SEARCH),
        Interaction::ConditionalPatch => P::UPDATE.union(P::SEARCH),
        Interaction::Delete => P::DELETE,
        Interaction::ConditionalDelete => P::DELETE.union(P::SEARCH),
        // A declared operation ([`crate::operations`]); any other is refused.
        Interaction::Operation => match request.operation_kind() {
            // Declared as reading, asked to write: refused.
            Some(_) if crate::operations::writes(request.operation(), request.params()) => {
                return Requirement::Refused(DenyReason::UnsupportedInteraction);
            }
            // $everything reads the whole compartment: only a scope on every type covers it.
            Some(Kind::Everything) if is_everything(request) => {
                return Requirement::Scope(None, P::READ.union(P::SEARCH));
            }
            // Reference data reads its type and reaches nothing else, whatever the scope: its
            // answer is never checked against a compartment.
            Some(Kind::Reference) if reaches_other_types(request) => {
                return Requirement::Refused(DenyReason::SearchReachesOtherTypes);
            }
            Some(Kind::Reference | Kind::Instance) => P::READ,
            // A search by another name, granted as one.
            Some(Kind::Search) => P::SEARCH,
            // Bulk Data: every patient's data of the types exported, for backend services. An
            // export that hides references could not be audited patient by patient.
            // A Bulk Data kick-off is a GET: a POST's parameters (in its body) could not be
            // carried into the links that poll and download it.
            Some(Kind::Export) if request.posted() => {
                return Requirement::Refused(DenyReason::UnsupportedInteraction);
            }
            Some(Kind::Export) if crate::consent::hides_references(request) => {
                return Requirement::Refused(DenyReason::ReferencesHidden);
            }
            // Only the kick-off parameters the IG defines, as spelled: one a server does not
            // know might be ignored, and more exported than was decided on.
            Some(Kind::Export) if !crate::operations::export_parameters_known(request.params()) => {
                return Requirement::Refused(DenyReason::UnsupportedInteraction);
            }
            Some(Kind::Export) => {
                return Requirement::SystemScope(
                    crate::operations::export_type(request.params()),
                    P::READ.union(P::SEARCH),
                );
            }
            Some(Kind::Everything | Kind::Refused) | None => {
                return Requirement::Refused(DenyReason::UnsupportedInteraction);
            }
        },
    };
    Requirement::Scope(t, needed)
}

/// `user/` and `system/` scopes: type and permission suffice, but a search reaching other types
/// needs `*`, and a granular scope can only narrow searches.
fn user_rules(request: &FhirRequest, scope: &Scope) -> Result<Obligations, DenyReason> {
    if reaches_other_types(request) && !scope.covers_every_type() {
        return Err(DenyReason::SearchReachesOtherTypes);
    }
    let granular = granular(request, scope)?;
    Ok(Obligations {
        add_params: granular.add_params,
        restriction: granular.restriction,
        ..Obligations::default()
    })
}

/// Batch and transaction (R4 §3.1.0.11): each entry is decided as a request of its own. A
/// transaction with any denied entry is denied as a whole; a batch is allowed with per-entry
/// decisions, and the gateway answers denied entries itself.
fn decide_bundle(
    subject: Subject<'_>,
    rules: Option<(&Caller<'_>, &RuleSet)>,
    request: &FhirRequest,
) -> Decision {
    let Some(RequestBody::Bundle { kind, entries }) = request.body() else {
        return Decision::Deny {
            reason: DenyReason::UnsupportedInteraction,
        };
    };
    if let Some((caller, rules)) = rules
        && rules.denies_bundle(caller, request)
    {
        return Decision::Deny {
            reason: DenyReason::DeniedByRule,
        };
    }
    let decisions: Vec<Decision> = entries
        .iter()
        .map(|entry| match decide_inner(subject, rules, entry) {
            // The gateway reads write targets first only for single requests, not inside Bundles.
            Decision::Allow { obligations, .. } if obligations.verify_target => Decision::Deny {
                reason: DenyReason::WriteNotVerifiable,
            },
            // Nor widens `_elements` inside them.
            Decision::Allow { obligations, .. } if !obligations.add_elements.is_empty() => {
                Decision::Deny {
                    reason: DenyReason::ReferencesHidden,
                }
            }
            decision => decision,
        })
        .collect();
    if *kind == BundleKind::Transaction
        && let Some(reason) = decisions.iter().find_map(Decision::deny_reason)
    {
        return Decision::Deny { reason };
    }
    // A transaction fails whole on an entry's 404 or 410, where a batch answers each entry:
    // under a patient's scope a read by id in a transaction would tell another patient's
    // resource (refused by the gateway, the rest committed) from a missing one. Refused
    // whatever the id; a batch reads by id as a single request does.
    if *kind == BundleKind::Transaction
        && entries.iter().zip(&decisions).any(|(entry, decision)| {
            matches!(decision, Decision::Allow { obligations, .. } if obligations.compartment.is_some())
                && crate::consent::answers_not_found(entry.acts_as())
                && !entry.interaction().is_write()
        })
    {
        return Decision::Deny {
            reason: DenyReason::OutsideCompartment,
        };
    }
    Decision::Allow {
        granted_by: String::new(),
        obligations: Obligations {
            entries: decisions,
            ..Obligations::default()
        },
    }
}
