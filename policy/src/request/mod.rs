//! FHIR R4 RESTful interaction classification (FHIR R4 §3.1.0 "RESTful API").
//!
//! Turns a method, a path relative to the FHIR base and a query string into a [`FhirRequest`]:
//! which interaction, on which resource type and id, with which search parameters. What is
//! ambiguous is refused rather than guessed: dot segments, encoded slashes, empty segments,
//! unknown or mis-cased resource types, malformed ids and invalid percent-encoding.

use std::fmt;

pub mod body;
mod url;

pub use self::body::{BundleKind, PatchFormat, RequestBody, operation_parameters};
pub use self::url::parse_form;
pub(crate) use self::url::percent_decode;
use self::url::{check_params, parse_query, split_path};
use crate::operations::{Kind, Level, Operations};
use crate::resource_type::ResourceType;
pub(crate) use crate::resource_type::is_valid_id;

/// A FHIR RESTful interaction (R4 §3.1.0.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    /// `GET [type]/[id]`
    Read,
    /// `GET [type]/[id]/_history/[vid]`
    Vread,
    /// `PUT [type]/[id]`
    Update,
    /// `PATCH [type]/[id]`
    Patch,
    /// `DELETE [type]/[id]`
    Delete,
    /// `GET [type]/[id]/_history`
    HistoryInstance,
    /// `GET [type]/_history`
    HistoryType,
    /// `GET _history`
    HistorySystem,
    /// `POST [type]`
    Create,
    /// `GET [type]?...` or `POST [type]/_search`
    SearchType,
    /// `GET [compartment type]/[id]/[type]?...` (or `/*`): a search within a compartment
    SearchCompartment,
    /// `PUT [type]?...`: update the one resource the search finds
    ConditionalUpdate,
    /// `PATCH [type]?...`
    ConditionalPatch,
    /// `DELETE [type]?...`: delete what the search finds
    ConditionalDelete,
    /// `GET ?...` or `POST _search` at the base
    SearchSystem,
    /// `GET metadata`
    Capabilities,
    /// `POST` of a Bundle to the base (batch or transaction; the body says which)
    BatchOrTransaction,
    /// `$operation` at system, type or instance level
    Operation,
}

impl Interaction {
    /// The stable name used in logs, metrics and audit subtypes (FHIR `restful-interaction`).
    pub fn as_str(self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::Update => "update",
            Interaction::Patch => "patch",
            Interaction::Delete => "delete",
            Interaction::HistoryInstance => "history-instance",
            Interaction::HistoryType => "history-type",
            Interaction::HistorySystem => "history-system",
            Interaction::Create => "create",
            Interaction::SearchType => "search-type",
            Interaction::SearchCompartment => "search-compartment",
            Interaction::ConditionalUpdate => "conditional-update",
            Interaction::ConditionalPatch => "conditional-patch",
            Interaction::ConditionalDelete => "conditional-delete",
            Interaction::SearchSystem => "search-system",
            Interaction::Capabilities => "capabilities",
            Interaction::BatchOrTransaction => "batch-transaction",
            Interaction::Operation => "operation",
        }
    }

    /// Whether the interaction changes data (creates, updates, patches, deletes, conditional
    /// or not).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Interaction::Create
                | Interaction::Update
                | Interaction::Patch
                | Interaction::Delete
                | Interaction::ConditionalUpdate
                | Interaction::ConditionalPatch
                | Interaction::ConditionalDelete
        )
    }

    /// Whether the backend answers this interaction with a Bundle (searchset, history, ...).
    pub fn returns_bundle(self) -> bool {
        matches!(
            self,
            Interaction::SearchType
                | Interaction::SearchCompartment
                | Interaction::SearchSystem
                | Interaction::HistoryInstance
                | Interaction::HistoryType
                | Interaction::HistorySystem
                | Interaction::BatchOrTransaction
                | Interaction::Operation
        )
    }
}

impl fmt::Display for Interaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified FHIR request. Only [`classify`] makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct FhirRequest {
    interaction: Interaction,
    resource_type: Option<ResourceType>,
    id: Option<String>,
    version: Option<String>,
    operation: Option<String>,
    operation_kind: Option<Kind>,
    /// An operation invoked with `POST` (its parameters may be in the body).
    posted: bool,
    params: Vec<(String, String)>,
    path: String,
    if_none_exist: Option<Vec<(String, String)>>,
    compartment: Option<(ResourceType, String)>,
    body: Option<RequestBody>,
}

impl FhirRequest {
    /// The canonical path below the FHIR base: the decoded segments, joined by `/`. Every
    /// accepted segment is from a character set that needs no escaping, so this is what the
    /// gateway forwards: the backend sees exactly what policy saw, never a different reading
    /// of the same bytes.
    pub fn path(&self) -> &str {
        &self.path
    }
    /// The interaction.
    pub fn interaction(&self) -> Interaction {
        self.interaction
    }
    /// The resource type the request addresses, if any.
    pub fn resource_type(&self) -> Option<ResourceType> {
        self.resource_type
    }
    /// The logical id, for instance-level interactions.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }
    /// The version id, for vread.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }
    /// The operation name without `$`, for operations.
    pub fn operation(&self) -> Option<&str> {
        self.operation.as_deref()
    }
    /// What the operation is, if it is a declared one ([`crate::operations`]; the built-in
    /// table unless [`FhirRequest::apply_operations`] gave another).
    pub fn operation_kind(&self) -> Option<Kind> {
        self.operation_kind
    }
    /// Whether this is an operation invoked with `POST`, whose parameters a body may carry.
    pub fn posted(&self) -> bool {
        self.posted
    }
    /// The operations declared in `table` (the operator's rows ahead of the built-in ones)
    /// decide what this request's operation is, and each batch entry's.
    pub fn apply_operations(&mut self, table: &Operations) {
        self.operation_kind = self.kind_in(table);
        if let Some(RequestBody::Bundle { entries, .. }) = &mut self.body {
            for entry in entries {
                entry.apply_operations(table);
            }
        }
    }
    /// What this request's operation is in `table`, if it invokes a declared one (at its
    /// level, on its type).
    fn kind_in(&self, table: &Operations) -> Option<Kind> {
        if self.interaction != Interaction::Operation {
            return None;
        }
        let level = match (self.resource_type, &self.id) {
            (None, _) => Level::System,
            (Some(_), None) => Level::Type,
            (Some(_), Some(_)) => Level::Instance,
        };
        table.kind(self.operation.as_deref()?, self.resource_type, level)
    }
    /// The interaction this request is decided as: its own, or for a declared operation that
    /// is a search of its type or a read of its instance, that.
    pub fn acts_as(&self) -> Interaction {
        match (self.interaction, self.operation_kind) {
            (Interaction::Operation, Some(Kind::Search)) => Interaction::SearchType,
            (Interaction::Operation, Some(Kind::Instance)) => Interaction::Read,
            (interaction, _) => interaction,
        }
    }
    /// The decoded query parameters, in order (names keep their modifiers, e.g. `code:text`).
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }
    /// Adds the parameters of a `POST [type]/_search` form body (FHIR R4 §3.1.0.8.1): they
    /// count exactly like query parameters.
    pub fn add_form_params(&mut self, params: Vec<(String, String)>) -> Result<(), ClassifyError> {
        self.params.extend(params);
        check_conflicts(&self.params)
    }

    /// Marks a create as conditional (`If-None-Exist`, FHIR R4 §3.1.0.8.1): the server answers
    /// with an existing resource when the search matches, so this is also a search.
    pub fn set_if_none_exist(&mut self, query: &str) -> Result<(), ClassifyError> {
        self.if_none_exist = Some(parse_form(query)?);
        Ok(())
    }

    /// The `If-None-Exist` search of a conditional create.
    pub fn if_none_exist(&self) -> Option<&[(String, String)]> {
        self.if_none_exist.as_deref()
    }

    /// For a compartment search, the compartment (`Patient`, `pat-1`).
    pub fn compartment(&self) -> Option<(ResourceType, &str)> {
        self.compartment.as_ref().map(|(t, id)| (*t, id.as_str()))
    }

    /// The body, once [`FhirRequest::attach_body`] has read it.
    pub fn body(&self) -> Option<&RequestBody> {
        self.body.as_ref()
    }

    /// `_summary`, if given.
    pub fn summary(&self) -> Option<&str> {
        self.param_values("_summary").next()
    }

    /// `_elements`, split on commas, if given.
    pub fn elements(&self) -> impl Iterator<Item = &str> {
        self.param_values("_elements").flat_map(|v| v.split(','))
    }

    /// Whether the interaction needs its body read before it can be decided.
    pub fn needs_body(&self) -> bool {
        matches!(
            self.interaction,
            Interaction::Create
                | Interaction::Update
                | Interaction::ConditionalUpdate
                | Interaction::Patch
                | Interaction::ConditionalPatch
                | Interaction::BatchOrTransaction
        )
    }

    /// Reads the body of a write, patch, batch or transaction (see [`body`]). The resource's
    /// `resourceType` and `id` must agree with the URL; batch and transaction entries are each
    /// classified as requests of their own.
    pub fn attach_body(
        &mut self,
        content_type: Option<&str>,
        bytes: &[u8],
    ) -> Result<(), ClassifyError> {
        let body = body::parse(self, content_type, bytes)?;
        self.body = Some(body);
        Ok(())
    }

    /// Values of every parameter whose name (modifiers included) is exactly `name`.
    pub fn param_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.params
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request could not be classified. Each variant has a stable code for integrators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// A path segment is `.` or `..`.
    #[error("the path contains a dot segment")]
    DotSegment,
    /// A path segment contains an encoded `/` or `\`.
    #[error("the path contains an encoded slash")]
    EncodedSlash,
    /// Two slashes in a row, or a trailing slash.
    #[error("the path contains an empty segment")]
    EmptySegment,
    /// Percent-encoding that is malformed or does not decode to UTF-8.
    #[error("the path or query is not valid percent-encoded UTF-8")]
    BadEncoding,
    /// The first segment is not an R4 resource type (names are case-sensitive).
    #[error("unknown resource type")]
    UnknownResourceType,
    /// An id or version id that is not `[A-Za-z0-9\-\.]{1,64}`.
    #[error("malformed resource id")]
    MalformedId,
    /// A method this path does not support.
    #[error("method not allowed for this path")]
    MethodNotAllowed,
    /// A path shape FHIR REST does not define.
    #[error("not a FHIR RESTful path")]
    UnknownPath,
    /// A parameter name outside `[A-Za-z0-9_.:-]`.
    #[error("malformed search parameter name")]
    BadParameterName,
    /// `_method`: asks the server to run another method than the one sent.
    #[error("method override parameters are not accepted")]
    MethodOverride,
    /// `_format` asks for something other than JSON.
    #[error("only JSON (application/fhir+json) is served")]
    UnsupportedFormat,
    /// The same `_id`, `patient` or `subject` parameter given twice with different values.
    #[error("a parameter is given twice with different values")]
    ConflictingParameter,
    /// A body that is not JSON, not an object, or not of the content type it must be.
    #[error("the request body is not a FHIR JSON resource of the expected kind")]
    MalformedBody,
    /// A JSON body in which an object gives a member name twice: the gateway's checks would
    /// read one of the two, the backend perhaps the other.
    #[error("the request body gives a member name twice in one object")]
    DuplicateMember,
    /// The body's `resourceType` or `id` disagrees with the URL.
    #[error("the body's resourceType or id disagrees with the URL")]
    BodyMismatch,
    /// A batch or transaction entry that cannot be classified on its own.
    #[error("a batch or transaction entry is malformed")]
    MalformedEntry,
}

impl ClassifyError {
    /// The stable detail code given to integrators in the OperationOutcome.
    pub fn code(&self) -> &'static str {
        match self {
            ClassifyError::DotSegment => "path-dot-segment",
            ClassifyError::EncodedSlash => "path-encoded-slash",
            ClassifyError::EmptySegment => "path-empty-segment",
            ClassifyError::BadEncoding => "bad-encoding",
            ClassifyError::UnknownResourceType => "unknown-resource-type",
            ClassifyError::MalformedId => "malformed-id",
            ClassifyError::MethodNotAllowed => "method-not-allowed",
            ClassifyError::UnknownPath => "unknown-path",
            ClassifyError::BadParameterName => "bad-parameter-name",
            ClassifyError::MethodOverride => "method-override",
            ClassifyError::UnsupportedFormat => "unsupported-format",
            ClassifyError::ConflictingParameter => "conflicting-parameter",
            ClassifyError::MalformedBody => "malformed-body",
            ClassifyError::DuplicateMember => "duplicate-member",
            ClassifyError::BodyMismatch => "body-mismatch",
            ClassifyError::MalformedEntry => "malformed-entry",
        }
    }
}

/// The canonical form of a raw path (below the FHIR base or the whole URL path, without its
/// leading slash): the decoded segments joined by `/`, as [`classify`] reads them. Rules that
/// match paths match this, so `P%61tient` is `Patient` to them too.
pub fn canonical_path(path: &str) -> Result<String, ClassifyError> {
    Ok(split_path(path)?.join("/"))
}

/// Classifies a request. `path` is relative to the FHIR base, without a leading slash (
/// `Patient/1`, `metadata`, `` for the base itself); `query` is the raw query string.
pub fn classify(
    method: &str,
    path: &str,
    query: Option<&str>,
) -> Result<FhirRequest, ClassifyError> {
    // HEAD is GET without the body (RFC 9110 §9.3.2): classified, and decided, as GET.
    let method = if method == "HEAD" { "GET" } else { method };
    let segments = split_path(path)?;
    let params = match query {
        Some(query) => parse_query(query)?,
        None => Vec::new(),
    };
    check_params(&params)?;
    check_conflicts(&params)?;
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let has_query = !params.is_empty();
    let mut compartment = None;
    let (interaction, type_name, id, version, operation) = match (method, seg.as_slice()) {
        // System level.
        ("GET", []) => (Interaction::SearchSystem, None, None, None, None),
        ("POST", []) => (Interaction::BatchOrTransaction, None, None, None, None),
        ("POST", ["_search"]) => (Interaction::SearchSystem, None, None, None, None),
        ("GET", ["metadata"]) => (Interaction::Capabilities, None, None, None, None),
        ("GET", ["_history"]) => (Interaction::HistorySystem, None, None, None, None),
        ("GET" | "POST", [op]) if op.starts_with('$') => (
            Interaction::Operation,
            None,
            None,
            None,
            Some(operation_name(op)?),
        ),
        // Type level.
        ("GET", [t]) => (Interaction::SearchType, Some(*t), None, None, None),
        ("POST", [t]) => (Interaction::Create, Some(*t), None, None, None),
        ("PUT", [t]) if has_query => (Interaction::ConditionalUpdate, Some(*t), None, None, None),
        ("PATCH", [t]) if has_query => (Interaction::ConditionalPatch, Some(*t), None, None, None),
        ("DELETE", [t]) if has_query => {
            (Interaction::ConditionalDelete, Some(*t), None, None, None)
        }
        ("POST", [t, "_search"]) => (Interaction::SearchType, Some(*t), None, None, None),
        ("GET", [t, "_history"]) => (Interaction::HistoryType, Some(*t), None, None, None),
        ("GET" | "POST", [t, op]) if op.starts_with('$') => (
            Interaction::Operation,
            Some(*t),
            None,
            None,
            Some(operation_name(op)?),
        ),
        // Instance level.
        ("GET", [t, id]) => (Interaction::Read, Some(*t), Some(*id), None, None),
        ("PUT", [t, id]) => (Interaction::Update, Some(*t), Some(*id), None, None),
        ("PATCH", [t, id]) => (Interaction::Patch, Some(*t), Some(*id), None, None),
        ("DELETE", [t, id]) => (Interaction::Delete, Some(*t), Some(*id), None, None),
        ("GET", [t, id, "_history"]) => (
            Interaction::HistoryInstance,
            Some(*t),
            Some(*id),
            None,
            None,
        ),
        ("GET", [t, id, "_history", vid]) => {
            (Interaction::Vread, Some(*t), Some(*id), Some(*vid), None)
        }
        ("GET" | "POST", [t, id, op]) if op.starts_with('$') => (
            Interaction::Operation,
            Some(*t),
            Some(*id),
            None,
            Some(operation_name(op)?),
        ),
        // Compartment search (R4 §3.1.0.8.2): [compartment type]/[id]/[type or *].
        ("GET", [c, id, target]) if COMPARTMENT_TYPES.contains(c) => {
            let compartment_type =
                ResourceType::parse(c).ok_or(ClassifyError::UnknownResourceType)?;
            if !is_valid_id(id) {
                return Err(ClassifyError::MalformedId);
            }
            compartment = Some((compartment_type, (*id).to_owned()));
            let target = if *target == "*" { None } else { Some(*target) };
            (Interaction::SearchCompartment, target, None, None, None)
        }
        (_, [] | [_] | [_, _] | [_, _, "_history"] | [_, _, "_history", _]) => {
            return Err(ClassifyError::MethodNotAllowed);
        }
        _ => return Err(ClassifyError::UnknownPath),
    };
    let resource_type = match type_name {
        Some(name) => Some(ResourceType::parse(name).ok_or(ClassifyError::UnknownResourceType)?),
        None => None,
    };
    for part in [id, version].into_iter().flatten() {
        if !is_valid_id(part) {
            return Err(ClassifyError::MalformedId);
        }
    }
    let mut request = FhirRequest {
        interaction,
        resource_type,
        id: id.map(str::to_owned),
        version: version.map(str::to_owned),
        operation,
        operation_kind: None,
        posted: method == "POST" && interaction == Interaction::Operation,
        params,
        path: segments.join("/"),
        if_none_exist: None,
        compartment,
        body: None,
    };
    request.operation_kind = request.kind_in(Operations::builtin());
    Ok(request)
}

/// The compartments R4 defines (CompartmentDefinition resources).
const COMPARTMENT_TYPES: &[&str] = &[
    "Patient",
    "Encounter",
    "RelatedPerson",
    "Practitioner",
    "Device",
];

/// Parameters whose repetition with different values means different things to different
/// servers (AND, first wins, last wins): refused.
const SINGLE_VALUED: &[&str] = &["_id", "patient", "subject", "_summary", "_count"];

pub(crate) fn check_conflicts(params: &[(String, String)]) -> Result<(), ClassifyError> {
    for name in SINGLE_VALUED {
        let mut values = params.iter().filter(|(n, _)| n == name).map(|(_, v)| v);
        if let Some(first) = values.next()
            && values.any(|v| v != first)
        {
            return Err(ClassifyError::ConflictingParameter);
        }
    }
    Ok(())
}

fn operation_name(segment: &str) -> Result<String, ClassifyError> {
    let name = &segment[1..];
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(ClassifyError::UnknownPath)
    }
}

#[cfg(test)]
mod tests;
