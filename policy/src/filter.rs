//! Response checking under a compartment obligation: a patient-context answer may carry only the
//! patient's own data and shared reference data.
//!
//! A single resource outside the compartment makes the answer forbidden. In a searchset or
//! history Bundle such entries are removed (and `total` lowered by the removed matches), or the
//! whole answer is forbidden, as configured. The pass is light: the Bundle is split into raw
//! entries, each resource is read on its own, and the bytes are passed through untouched when
//! nothing is removed.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::compartment::{Membership, membership_raw};
use crate::raw::OrderedRaw;

/// What to do with Bundle entries outside the compartment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FilterMode {
    /// Remove them and answer with the rest.
    #[default]
    Remove,
    /// Refuse the whole answer.
    Deny,
}

/// The outcome of checking a response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filtered {
    /// Everything in it may be shown: pass the bytes on as they are.
    Unchanged,
    /// Entries were removed: send these bytes instead.
    Rewritten(Vec<u8>),
    /// It may not be shown at all.
    Forbidden,
}

/// What every resource in an answer must satisfy.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseCheck<'a> {
    /// Be in this patient's compartment (or shared reference data).
    pub compartment: Option<&'a str>,
    /// Satisfy a granular scope's token restriction (`category=laboratory`, `code=sys|c`).
    pub restriction: &'a [(String, String)],
    /// The instance an operation was invoked on was read and checked first (`$meta`): its
    /// answer, a `Parameters` holding no resource and no reference, is about that instance.
    pub instance_verified: bool,
    /// No AuditEvent may be in the answer, at any depth (see
    /// [`crate::Obligations::withhold_audit_events`]).
    pub withhold_audit_events: bool,
}

impl ResponseCheck<'_> {
    fn accepts(&self, resource: &OrderedRaw<'_>) -> bool {
        let in_compartment = self
            .compartment
            .is_none_or(|patient| membership_raw(resource, patient) != Membership::Outside);
        in_compartment
            && self
                .restriction
                .iter()
                .all(|(param, value)| satisfies(resource, param, value))
    }
}

/// Checks a FHIR JSON response body against `patient`'s compartment.
pub fn filter_response(body: &[u8], patient: &str, mode: FilterMode) -> Filtered {
    check_response(
        body,
        &ResponseCheck {
            compartment: Some(patient),
            restriction: &[],
            instance_verified: false,
            withhold_audit_events: false,
        },
        mode,
    )
}

/// Checks a FHIR JSON response body: every resource must pass `check`.
pub fn check_response(body: &[u8], check: &ResponseCheck<'_>, mode: FilterMode) -> Filtered {
    let Some(top) = crate::raw::from_body::<OrderedRaw<'_>>(body) else {
        return Filtered::Forbidden;
    };
    let resource_type = top.get_str("resourceType");
    if check.withhold_audit_events
        && resource_type.as_deref() != Some("Bundle")
        && holds_audit_event(body)
    {
        return Filtered::Forbidden;
    }
    match resource_type.as_deref() {
        Some("Bundle") => filter_bundle(top, check, mode),
        // An OperationOutcome carries no patient data unless something is packed inside it.
        Some("OperationOutcome") if top.get("contained").is_none() => Filtered::Unchanged,
        // Nor does the Parameters an operation on an instance answers with (`$meta`), unless
        // a resource is packed inside it; the instance itself was read and checked first.
        Some("Parameters")
            if check.instance_verified
                && check.restriction.is_empty()
                && !holds_resources(body) =>
        {
            Filtered::Unchanged
        }
        Some(_) if check.accepts(&top) => Filtered::Unchanged,
        _ => Filtered::Forbidden,
    }
}

/// Whether `body` is or holds (contained, in a Parameters, in a nested Bundle) an AuditEvent.
/// Unreadable JSON that names the type counts as holding one.
pub fn holds_audit_event(body: &[u8]) -> bool {
    fn holds(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::Object(map) => {
                let kind = map.get("resourceType").and_then(serde_json::Value::as_str);
                kind == Some("AuditEvent")
                    || (kind == Some("Binary") && binary_may_hold(map))
                    || map.values().any(holds)
            }
            serde_json::Value::Array(items) => items.iter().any(holds),
            _ => false,
        }
    }
    // A Binary's content is base64: an export's NDJSON output never leaves but through the
    // export's own links (where it is read as FHIR), and any other content that spells the
    // type, or is JSON that holds one, counts.
    fn binary_may_hold(map: &serde_json::Map<String, serde_json::Value>) -> bool {
        use base64::Engine as _;
        let content_type = map
            .get("contentType")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase();
        if content_type.contains("ndjson") {
            return true;
        }
        let Some(data) = map.get("data").and_then(serde_json::Value::as_str) else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(data.trim()) else {
            return true;
        };
        // Content that is JSON (a resource, NDJSON) is judged whole; other content (a PDF, an
        // image) only by the name written out: its bytes are no JSON to fail to read.
        let content = decoded.trim_ascii_start();
        let content = content.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(content);
        decoded
            .windows(b"AuditEvent".len())
            .any(|w| w.eq_ignore_ascii_case(b"AuditEvent"))
            || (matches!(content.first(), Some(b'{' | b'[')) && holds_audit_event(&decoded))
    }
    // The name written out is needed to be one, or a Binary, whose content is base64 (or a
    // `\u` escape, which may spell any of its letters; escapes in a type name are read below).
    if memchr::memmem::find(body, b"AuditEvent").is_none()
        && !has_unicode_escape(body)
        && memchr::memmem::find(body, b"Binary").is_none()
    {
        return false;
    }
    crate::strict_json::tree_unique(body).map_or(true, |value| holds(&value))
}

/// Whether a Parameters resource holds resources or references (`parameter[].resource`, a
/// `reference` at any depth of `part`, or `contained`): unreadable counts as holding them.
fn holds_resources(body: &[u8]) -> bool {
    fn holds(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::Object(map) => map.iter().any(|(key, item)| {
                key == "resource" || key == "contained" || key == "reference" || holds(item)
            }),
            serde_json::Value::Array(items) => items.iter().any(holds),
            _ => false,
        }
    }
    crate::strict_json::tree_unique(body).map_or(true, |value| holds(&value))
}

/// Whether the resource's element for search parameter `param` matches the token `value`
/// (`code`, `system|code`, `|code`, `system|`; comma-separated alternatives). The element is the
/// parameter's name in camelCase (`category`, `code`, `status`, `clinical-status`), which is
/// how R4 defines the token parameters granular scopes use; an element that is absent or not a
/// code does not match (fail closed).
fn satisfies(resource: &OrderedRaw<'_>, param: &str, value: &str) -> bool {
    let (param, modifier) = param
        .split_once(':')
        .map_or((param, None), |(p, m)| (p, Some(m)));
    if modifier.is_some() {
        return false;
    }
    let mut element = String::with_capacity(param.len());
    let mut upper = false;
    for ch in param.chars() {
        if ch == '-' {
            upper = true;
        } else if upper {
            element.extend(ch.to_uppercase());
            upper = false;
        } else {
            element.push(ch);
        }
    }
    let Some(raw) = resource.get(&element) else {
        return false;
    };
    let Ok(tree) = crate::strict_json::tree_unique_str(raw.get()) else {
        return false;
    };
    value
        .split(',')
        .any(|alternative| token_matches(&tree, alternative))
}

fn token_matches(tree: &serde_json::Value, token: &str) -> bool {
    use serde_json::Value;
    let (system, code) = match token.split_once('|') {
        Some((system, code)) => (Some(system), code),
        None => (None, token),
    };
    let coding_matches = |coding: &Value| {
        let coding_system = coding.get("system").and_then(Value::as_str);
        let coding_code = coding.get("code").and_then(Value::as_str);
        let system_ok = match system {
            None => true,
            Some("") => coding_system.is_none(),
            Some(system) => coding_system == Some(system),
        };
        system_ok && (code.is_empty() || coding_code == Some(code))
    };
    match tree {
        Value::Array(items) => items.iter().any(|item| token_matches(item, token)),
        Value::Object(object) => match object.get("coding").and_then(Value::as_array) {
            Some(codings) => codings.iter().any(coding_matches),
            None => coding_matches(tree),
        },
        Value::String(text) => system.is_none_or(str::is_empty) && text == code,
        _ => false,
    }
}

#[derive(Deserialize)]
struct EntryProbe<'a> {
    #[serde(borrow, default)]
    resource: Option<&'a RawValue>,
    #[serde(borrow, default)]
    search: Option<SearchProbe<'a>>,
    #[serde(borrow, default, rename = "fullUrl")]
    full_url: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    request: Option<RequestProbe<'a>>,
}

#[derive(Deserialize)]
struct RequestProbe<'a> {
    #[serde(borrow, default)]
    url: Option<Cow<'a, str>>,
}

impl EntryProbe<'_> {
    /// Whether an entry without a resource (a deleted version) is of an AuditEvent, by its
    /// `fullUrl` or `request.url`.
    fn names_an_audit_event(&self) -> bool {
        let names = |url: &str| {
            url.split(['?', '#'])
                .next()
                .unwrap_or_default()
                .split('/')
                .any(|segment| segment.eq_ignore_ascii_case("AuditEvent"))
        };
        self.full_url.as_deref().is_some_and(names)
            || self
                .request
                .as_ref()
                .and_then(|request| request.url.as_deref())
                .is_some_and(names)
    }
}

#[derive(Deserialize)]
struct SearchProbe<'a> {
    #[serde(borrow, default)]
    mode: Option<Cow<'a, str>>,
}

fn filter_bundle(mut top: OrderedRaw<'_>, check: &ResponseCheck<'_>, mode: FilterMode) -> Filtered {
    let Some(entries) = top.get("entry") else {
        return Filtered::Unchanged;
    };
    let Ok(entries) = serde_json::from_str::<Vec<&RawValue>>(entries.get()) else {
        return Filtered::Forbidden;
    };
    let mut kept = Vec::with_capacity(entries.len());
    let mut removed_matches = 0u64;
    for entry in &entries {
        let Ok(probe) = serde_json::from_str::<EntryProbe<'_>>(entry.get()) else {
            return Filtered::Forbidden;
        };
        let search_mode = probe.search.as_ref().and_then(|s| s.mode.as_deref());
        let allowed = match probe.resource {
            // Under a patient's compartment an entry without a resource (a deleted version in
            // a history) cannot be shown to be hers: its id alone would tell.
            None => {
                check.compartment.is_none()
                    && !(check.withhold_audit_events && probe.names_an_audit_event())
            }
            Some(resource_text) => {
                match serde_json::from_str::<OrderedRaw<'_>>(resource_text.get()) {
                    Ok(resource) => {
                        // The server's own remarks about the search pass; an OperationOutcome posing
                        // as a match, or carrying contained resources, does not.
                        let is_remark = resource.get_str("resourceType").as_deref()
                            == Some("OperationOutcome")
                            && search_mode == Some("outcome")
                            && resource.get("contained").is_none();
                        let audit_event = check.withhold_audit_events
                            && holds_audit_event(resource_text.get().as_bytes());
                        !audit_event && (is_remark || check.accepts(&resource))
                    }
                    Err(_) => false,
                }
            }
        };
        if allowed {
            kept.push(*entry);
        } else {
            if mode == FilterMode::Deny {
                return Filtered::Forbidden;
            }
            let is_match = search_mode.is_none_or(|m| m == "match");
            removed_matches += u64::from(is_match);
        }
    }
    if kept.len() == entries.len() {
        return Filtered::Unchanged;
    }
    let entry_json = serde_json::to_string(&kept).unwrap_or_else(|_| "[]".to_owned());
    let Ok(entry_raw) = RawValue::from_string(entry_json) else {
        return Filtered::Forbidden;
    };
    let total = top
        .get("total")
        .and_then(|raw| raw.get().parse::<u64>().ok())
        .map(|total| total.saturating_sub(removed_matches).to_string())
        .and_then(|text| RawValue::from_string(text).ok());
    top.replace("entry", entry_raw);
    if let Some(total) = total {
        top.replace("total", total);
    }
    Filtered::Rewritten(top.to_json())
}

/// A Bundle answer without its `total` (R4 `Bundle.total`, and the totals of the searchsets in
/// a batch answer); every other byte as it was. `None` when there is none to remove or the
/// answer is not a Bundle; an error when it cannot be read as JSON at all (so that nothing
/// shows its total gone).
pub fn without_total(body: &[u8]) -> Result<Option<Vec<u8>>, CountsUnreadable> {
    let Some(top) = crate::raw::from_body::<OrderedRaw<'_>>(body) else {
        // Not readable field by field (a key given twice, say): the tree decides.
        return without_total_in_tree(body);
    };
    if top.get_str("resourceType").as_deref() != Some("Bundle") {
        return Ok(None);
    }
    if matches!(
        top.get_str("type").as_deref(),
        Some("batch-response" | "transaction-response")
    ) {
        return without_total_in_tree(body);
    }
    let Some(total) = top.get("total") else {
        return Ok(None);
    };
    // The member is cut out of the bytes: a 1,000-entry searchset is not written again.
    match cut_member(body, total) {
        Some(cut) => Ok(Some(cut)),
        None => without_total_in_tree(body),
    }
}

/// An answer whose counts (`total`, `last` links) were to be taken out and that could not be
/// read as JSON to find them: it may not leave as it is (fail closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountsUnreadable;

/// The resources of a Bundle's entries.
pub fn bundle_resources(bundle: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    bundle
        .get("entry")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.get("resource"))
}

/// Whether a Bundle link's `relation` may be `name` to some client: in any case (RFC 8288
/// §2.1.1: relation types compare case-insensitively), without the white space or control
/// characters a server may put around it, and any relation that is not ASCII (clients fold case
/// beyond ASCII: Java's `equalsIgnoreCase` reads `laſt` as `last`; no registered relation type
/// is other than ASCII). Every reader of a backend's links matches relations so, so that no two
/// of them read one link as two different relations, and each errs the safe way: a possible
/// `next` is read, a possible `last` goes.
pub fn may_be_relation(relation: &str, name: &str) -> bool {
    names_relation(relation, name) || !trimmed_relation(relation).is_ascii()
}

/// Whether a Bundle link may be its `last` link to some client: its relation [may be
/// `last`](may_be_relation), or is no string (JavaScript reads `["last"]` as `last`). Such a
/// link's offset counts what matched, withheld entries included.
pub fn may_be_last_link(link: &serde_json::Value) -> bool {
    match link.get("relation") {
        Some(serde_json::Value::String(relation)) => may_be_relation(relation, "last"),
        None => false,
        Some(_) => true,
    }
}

/// Whether a Bundle link's `relation` is `name` and nothing else to any client: in ASCII, in
/// any case, with what clients trim around it taken off. What lets a link keep a backend URL
/// (`self` on a first page) is decided by this, so that a relation beyond ASCII, which some
/// client may read as another relation, is signed or dropped as every other link is.
pub fn names_relation(relation: &str, name: &str) -> bool {
    trimmed_relation(relation).eq_ignore_ascii_case(name)
}

/// `relation` without what any client's trim takes off around it: Rust's and JavaScript's white
/// space, Java's `String.trim` every control character, JavaScript's a byte order mark too.
fn trimmed_relation(relation: &str) -> &str {
    relation.trim_matches(|c: char| c.is_whitespace() || c.is_control() || c == '\u{feff}')
}

/// Whether a search Bundle may have a `next` page: what is on it was not read. The relation is
/// matched in any case (RFC 8288 §2.1.1), as `last` is, and without white space around it: a
/// `Next` read as no next page would be a page of blocks or matches not read. Links that cannot
/// be read (`link` not a list, a link not an object, a relation not a string) may be one.
pub fn has_next_page(bundle: &serde_json::Value) -> bool {
    let Some(links) = bundle.get("link") else {
        return false;
    };
    let Some(links) = links.as_array() else {
        return true;
    };
    links.iter().any(|link| match link.get("relation") {
        Some(serde_json::Value::String(relation)) => may_be_relation(relation, "next"),
        None => !link.is_object(),
        Some(_) => true,
    })
}

/// A searchset without its `last` link (and the searchsets in a batch answer without theirs):
/// a server's last page offset tells how many matched, withheld entries included. A relation
/// is matched in any case (RFC 8288 §2.1.1: relation types compare case-insensitively), and in
/// any spelling (an escape may write any of its letters). `None` when there is none; an error
/// when one may be there and the answer cannot be read as a tree to take it out (a lone
/// surrogate, a depth past serde_json's limit, which the raw readers before let through).
pub fn without_last_link(body: &[u8]) -> Result<Option<Vec<u8>>, CountsUnreadable> {
    if !may_spell_last(body) {
        return Ok(None);
    }
    let mut tree = answer_tree(body)?;
    let drop_last = |bundle: &mut serde_json::Value| {
        if bundle
            .get("resourceType")
            .and_then(serde_json::Value::as_str)
            != Some("Bundle")
        {
            return false;
        }
        let Some(links) = bundle
            .get_mut("link")
            .and_then(serde_json::Value::as_array_mut)
        else {
            return false;
        };
        let before = links.len();
        links.retain(|link| !may_be_last_link(link));
        links.len() != before
    };
    let mut removed = drop_last(&mut tree);
    for entry in tree
        .get_mut("entry")
        .and_then(serde_json::Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(resource) = entry.get_mut("resource") {
            removed |= drop_last(resource);
        }
    }
    written_if(removed, &tree)
}

/// An answer read as a tree to be written again, as strictly as every check reads it: a member
/// given twice, or one named as serde_json's raw value token (which a plain tree would expand
/// into the JSON text it holds: `{"$serde_json::private::RawValue": "\"Patient\""}` becomes
/// `"Patient"`), would make the answer that leaves say other than what was read in it.
fn answer_tree(body: &[u8]) -> Result<serde_json::Value, CountsUnreadable> {
    crate::strict_json::tree_unique(body).map_err(|_| CountsUnreadable)
}

/// `tree` written, when something was `removed` from it.
fn written_if(
    removed: bool,
    tree: &serde_json::Value,
) -> Result<Option<Vec<u8>>, CountsUnreadable> {
    if !removed {
        return Ok(None);
    }
    serde_json::to_vec(tree)
        .map(Some)
        .map_err(|_| CountsUnreadable)
}

/// Whether `body` may hold a string that [`may_be_relation`] `last`: `"last"` in any case with
/// anything that may be trimmed between it and its quotes (spaces, DEL, the escapes `\t`,
/// `\n`, `\r`, `\f`, `\b`, any byte of a non-ASCII character), or a `\u` escape anywhere
/// (`"l\u0061st"`). Nearly every answer holds neither, and is not parsed to find out; what is
/// taken for one only costs a parse.
fn may_spell_last(body: &[u8]) -> bool {
    has_unicode_escape(body)
        || has_relation_beyond_ascii(body)
        || memchr::memchr2_iter(b'l', b'L', body).any(|at| {
            body.get(at + 1..at + 4)
                .is_some_and(|rest| rest.eq_ignore_ascii_case(b"ast"))
                && quoted_around(body, at, at + 4)
        })
}

/// Whether a member named `"relation"` in `body` holds a string with a byte beyond ASCII
/// ([`may_be_relation`] takes any such for `last`), or anything but a string (which
/// [`without_last_link`] takes for `last` too). A name spelled with an escape is caught by
/// [`has_unicode_escape`].
fn has_relation_beyond_ascii(body: &[u8]) -> bool {
    memchr::memmem::find_iter(body, b"\"relation\"").any(|at| {
        let mut rest = body[at + 10..]
            .iter()
            .skip_while(|b| b.is_ascii_whitespace());
        if rest.next() != Some(&b':') {
            return false;
        }
        let mut rest = rest.skip_while(|b| b.is_ascii_whitespace());
        if rest.next() != Some(&b'"') {
            return true;
        }
        let mut escaped = false;
        for &byte in rest {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => return false,
                byte if byte >= 0x80 => return true,
                _ => {}
            }
        }
        false
    })
}

/// Whether the text from `start` to `end` in `body` has a quote before and after it, with
/// nothing between but what may be white space in a JSON string.
fn quoted_around(body: &[u8], start: usize, end: usize) -> bool {
    let may_be_space = |byte: u8| byte == b' ' || byte == 0x7f || byte >= 0x80;
    let is_space_escape = |byte: u8| matches!(byte, b't' | b'n' | b'r' | b'f' | b'b');
    let mut before = start;
    loop {
        match before.checked_sub(1).map(|at| body[at]) {
            Some(b'"') => break,
            Some(byte) if may_be_space(byte) => before -= 1,
            Some(byte) if is_space_escape(byte) && before >= 2 && body[before - 2] == b'\\' => {
                before -= 2;
            }
            _ => return false,
        }
    }
    let mut after = end;
    loop {
        match body.get(after) {
            Some(b'"') => return true,
            Some(&byte) if may_be_space(byte) => after += 1,
            Some(b'\\')
                if body
                    .get(after + 1)
                    .is_some_and(|&next| is_space_escape(next)) =>
            {
                after += 2;
            }
            _ => return false,
        }
    }
}

/// Whether `bytes` hold a `\u` escape: the only way JSON spells a letter otherwise than as
/// itself (a narrative's `\"` does not make every answer worth parsing).
fn has_unicode_escape(bytes: &[u8]) -> bool {
    memchr::memmem::find(bytes, b"\\u").is_some()
}

/// [`without_total`] on a parsed tree: the top level and each entry's resource.
fn without_total_in_tree(body: &[u8]) -> Result<Option<Vec<u8>>, CountsUnreadable> {
    let mut tree = answer_tree(body)?;
    let Some(top) = tree.as_object_mut() else {
        return Ok(None);
    };
    if top.get("resourceType").and_then(serde_json::Value::as_str) != Some("Bundle") {
        return Ok(None);
    }
    let mut removed = top.remove("total").is_some();
    for entry in top
        .get_mut("entry")
        .and_then(serde_json::Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(resource) = entry.get_mut("resource").and_then(|r| r.as_object_mut()) {
            removed |= resource.remove("total").is_some();
        }
    }
    written_if(removed, &tree)
}

/// `body` without the object member whose value is `value` (a slice of `body`): from the key's
/// opening quote to the value's end, with the comma after it (or, for the last member, before
/// it). `None` if `value` is not where a member's value can be.
fn cut_member(body: &[u8], value: &RawValue) -> Option<Vec<u8>> {
    let start = (value.get().as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start.checked_add(value.get().len())?;
    if end > body.len() {
        return None;
    }
    let skip_back = |mut at: usize| {
        while at > 0 && body[at - 1].is_ascii_whitespace() {
            at -= 1;
        }
        at
    };
    // Back over `"key" :` to the key's opening quote.
    let colon = skip_back(start).checked_sub(1)?;
    if body[colon] != b':' {
        return None;
    }
    let closing = skip_back(colon).checked_sub(1)?;
    if body[closing] != b'"' {
        return None;
    }
    let mut opening = closing;
    loop {
        opening = opening.checked_sub(1)?;
        if body[opening] == b'"' {
            let escapes = body[..opening]
                .iter()
                .rev()
                .take_while(|b| **b == b'\\')
                .count();
            if escapes % 2 == 0 {
                break;
            }
        }
    }
    let mut after = end;
    while after < body.len() && body[after].is_ascii_whitespace() {
        after += 1;
    }
    let (cut_start, cut_end) = if body.get(after) == Some(&b',') {
        (opening, after + 1)
    } else {
        let before = skip_back(opening);
        match before.checked_sub(1) {
            Some(comma) if body[comma] == b',' => (comma, end),
            _ => (opening, end),
        }
    };
    let mut out = Vec::with_capacity(body.len());
    out.extend_from_slice(&body[..cut_start]);
    out.extend_from_slice(&body[cut_end..]);
    Some(out)
}

#[cfg(test)]
mod tests;
