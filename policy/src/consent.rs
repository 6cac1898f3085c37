//! Negative consent: a citizen's blocks, read from FHIR R4 `Consent` resources (R4 §Consent,
//! "Consent.provision": a rule with exceptions, nested without limit), and the one override:
//! break-the-glass (purpose of use EMERGENCY with a stated reason), which lifts a block but
//! never a scope or a rule.
//!
//! A Consent is decided for one caller and one access (which resource type, which resource,
//! when, for which purpose): the root provision is its base rule; a nested provision whose
//! conditions all hold is an exception to its parent, and the deepest one that applies
//! decides (a deny among exceptions wins over a permit). Conditions: `actor` (matched by every
//! identity of the caller, [`CallerIds`]), `period` (the provision's, and the Consent's own
//! `period` where a server carries one), `class` (resource types), `data` (specific resources),
//! `purpose` and `action`. What cannot be read (an unparseable period, a class from another
//! code system, `code`, `securityLabel`, `dataPeriod`) counts as holding for a deny and as not
//! holding for a permit: a block is never made narrower by what the gateway cannot judge.

use serde_json::Value;
use time::OffsetDateTime;

mod answer;
pub mod citizen;

pub use self::answer::{
    Checked, Duties, PatientBlocks, Refusals, answers_not_found, check_patients, count_only,
    count_refused, hides_references, names_actors, not_found_alike, resource_withheld,
    shape_refusal, tests_unwithheld, withhold, write_unverifiable,
};

/// Identifier systems (Danish FHIR core IG).
pub const AUTHORIZATION_SYSTEM: &str = "https://autregweb.sst.dk";
pub const CPR_SYSTEM: &str = "urn:oid:1.2.208.176.1.2";
pub const SOR_SYSTEM: &str = "urn:oid:1.2.208.176.1.1";
pub const CVR_SYSTEM: &str = "http://cvr.dk";
/// R4 `resource-types`, the code system of `provision.class` naming resource types.
const RESOURCE_TYPES_SYSTEM: &str = "http://hl7.org/fhir/resource-types";

/// The actor types a caller's identities can be matched against.
const MATCHABLE_ACTOR_TYPES: &[&str] = &[
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Patient",
];

/// Who a provision names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// By identifier: `(system, value)`.
    Identifier(String, String),
    /// By literal reference, e.g. `Practitioner/prac-ns363`.
    Reference(String),
}

/// Deny or permit (R4 `consent-provision-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The rule refuses.
    Deny,
    /// The rule allows.
    Permit,
}

/// One provision and its exceptions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Provision {
    kind: Option<Kind>,
    actors: Vec<Actor>,
    /// An actor given in a form this reader cannot match (no literal reference, no system and
    /// value): whom it names cannot be told.
    unreadable_actor: bool,
    period: Condition<Period>,
    classes: Condition<Vec<String>>,
    data: Condition<Vec<String>>,
    purposes: Condition<Vec<String>>,
    actions: Condition<Vec<String>>,
    /// `code`, `securityLabel`, `dataPeriod`: conditions the gateway cannot judge.
    unjudgeable: bool,
    nested: Vec<Provision>,
}

/// A condition of a provision: absent, readable, or present but unreadable.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Condition<T> {
    Absent,
    Read(T),
    Unreadable,
}

/// `[start, end)` in Unix seconds; either side open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Period {
    start: Option<i64>,
    end: Option<i64>,
}

/// One patient's Consent that can deny someone something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The Consent's id, for the audit record.
    pub consent: String,
    period: Condition<Period>,
    /// The base rule where the root provision has no `type`: deny for an opt-out policy.
    base: Kind,
    root: Provision,
}

impl Block {
    /// Whom the Consent names anywhere, for the gateway's identity look-ups.
    pub fn actors(&self) -> Vec<&Actor> {
        let mut actors = Vec::new();
        collect_actors(&self.root, &mut actors);
        actors
    }
}

fn collect_actors<'a>(provision: &'a Provision, actors: &mut Vec<&'a Actor>) {
    actors.extend(provision.actors.iter());
    for nested in &provision.nested {
        collect_actors(nested, actors);
    }
}

/// Reads a Consent resource: active, with a provision that denies somebody something (at the
/// top or nested). Anything else (drafts, rejected or inactive Consents, permits only) blocks
/// nobody.
pub fn blocks_in(consent: &Value) -> Option<Block> {
    if consent.get("resourceType")?.as_str()? != "Consent"
        || consent.get("status")?.as_str()? != "active"
    {
        return None;
    }
    // The base policy: an opt-out (`policyRule` OPTOUT) denies what its provisions do not
    // permit, and without provisions denies everything.
    let opt_out = consent
        .pointer("/policyRule/coding")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|coding| coding.get("code").and_then(Value::as_str) == Some("OPTOUT"));
    let base = if opt_out { Kind::Deny } else { Kind::Permit };
    let root = match consent.get("provision") {
        Some(provision) => read_provision(provision, 0),
        None if opt_out => read_provision(&Value::Object(Default::default()), 0),
        None => return None,
    };
    if !denies_anywhere(&root, base) {
        return None;
    }
    Some(Block {
        consent: consent
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        period: consent.get("period").map_or(Condition::Absent, read_period),
        base,
        root,
    })
}

/// Provisions nested deeper than this are read as one unjudgeable deny: a Consent is written
/// by people, and a tree this deep is an attack on the reader, not a policy.
const MAX_DEPTH: usize = 16;

fn read_provision(value: &Value, depth: usize) -> Provision {
    let kind = match value.get("type").and_then(Value::as_str) {
        Some("deny") => Some(Kind::Deny),
        Some("permit") => Some(Kind::Permit),
        None => None,
        // An unknown type: the strictest reading.
        Some(_) => Some(Kind::Deny),
    };
    let codes = |key: &str, read: fn(&Value) -> Option<Vec<String>>| match value.get(key) {
        None => Condition::Absent,
        Some(item) => read(item).map_or(Condition::Unreadable, Condition::Read),
    };
    let nested: Vec<Provision> = if depth >= MAX_DEPTH {
        Vec::new()
    } else {
        value
            .get("provision")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|nested| read_provision(nested, depth + 1))
            .collect()
    };
    let too_deep = depth >= MAX_DEPTH && value.get("provision").is_some();
    Provision {
        kind: if too_deep { Some(Kind::Deny) } else { kind },
        actors: provision_actors(value),
        unreadable_actor: value
            .get("actor")
            .and_then(Value::as_array)
            .map_or(value.get("actor").is_some(), |actors| {
                actors.len() != provision_actors(value).len()
            }),
        period: value.get("period").map_or(Condition::Absent, read_period),
        classes: codes("class", read_classes),
        data: codes("data", read_data),
        purposes: codes("purpose", read_codings),
        actions: codes("action", read_concepts),
        unjudgeable: too_deep
            || ["code", "securityLabel", "dataPeriod"]
                .iter()
                .any(|key| value.get(*key).is_some()),
        nested,
    }
}

fn denies_anywhere(provision: &Provision, inherited: Kind) -> bool {
    let kind = provision.kind.unwrap_or(inherited);
    kind == Kind::Deny
        || provision
            .nested
            .iter()
            .any(|nested| denies_anywhere(nested, kind))
}

fn provision_actors(provision: &Value) -> Vec<Actor> {
    provision
        .get("actor")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|actor| {
            let reference = actor.get("reference")?;
            if let Some(literal) = reference.get("reference").and_then(Value::as_str) {
                // Only who a caller can be is matchable; a CareTeam, Group or RelatedPerson is
                // not resolved to its members here, so it counts as unreadable.
                let kind = relative(literal).split('/').next().unwrap_or_default();
                return MATCHABLE_ACTOR_TYPES
                    .contains(&kind)
                    .then(|| Actor::Reference(literal.to_owned()));
            }
            let identifier = reference.get("identifier")?;
            Some(Actor::Identifier(
                identifier.get("system")?.as_str()?.to_owned(),
                identifier.get("value")?.as_str()?.to_owned(),
            ))
        })
        .collect()
}

fn read_period(value: &Value) -> Condition<Period> {
    let side = |key: &str, end: bool| match value.get(key) {
        None => Some(None),
        Some(item) => item.as_str().and_then(|s| instant(s, end)).map(Some),
    };
    match (side("start", false), side("end", true)) {
        (Some(start), Some(end)) => Condition::Read(Period { start, end }),
        _ => Condition::Unreadable,
    }
}

/// A FHIR `dateTime` as Unix seconds: the first instant it covers, or with `end` the first
/// instant after it (`2026` ends at the start of 2027). Partial dates are read in UTC.
pub(crate) fn instant(value: &str, end: bool) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    use time::{Date, Month};
    if value.contains('T') {
        return OffsetDateTime::parse(value, &Rfc3339)
            .ok()
            .map(OffsetDateTime::unix_timestamp);
    }
    let mut parts = value.split('-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: Option<u8> = parts.next().map(str::parse).transpose().ok()?;
    let day: Option<u8> = parts.next().map(str::parse).transpose().ok()?;
    if parts.next().is_some() || value.len() > 10 {
        return None;
    }
    let first = Date::from_calendar_date(
        year,
        Month::try_from(month.unwrap_or(1)).ok()?,
        day.unwrap_or(1),
    )
    .ok()?;
    let after = match (end, month, day) {
        (false, _, _) => first,
        (true, _, Some(_)) => first.next_day()?,
        (true, Some(12), None) | (true, None, None) => {
            Date::from_calendar_date(year + 1, Month::January, 1).ok()?
        }
        (true, Some(m), None) => {
            Date::from_calendar_date(year, Month::try_from(m + 1).ok()?, 1).ok()?
        }
    };
    Some(after.midnight().assume_utc().unix_timestamp())
}

/// `class`: Codings of R4 resource types (others are unreadable here).
fn read_classes(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|coding| {
            let system = coding.get("system").and_then(Value::as_str);
            let code = coding.get("code")?.as_str()?;
            matches!(system, None | Some(RESOURCE_TYPES_SYSTEM)).then(|| code.to_owned())
        })
        .collect()
}

/// `data`: the referenced resources, as `Type/id`. Only `meaning` `instance` names exactly
/// those; `related`, `dependents` and `authoredby` reach further than this reader can follow,
/// so they are unreadable (which holds for a deny).
fn read_data(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|item| {
            let meaning = item.get("meaning").and_then(Value::as_str);
            if meaning.is_some_and(|m| m != "instance") {
                return None;
            }
            let reference = item.pointer("/reference/reference")?.as_str()?;
            Some(relative(reference).to_owned())
        })
        .collect()
}

/// A list of Codings: their codes.
fn read_codings(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|coding| coding.get("code")?.as_str().map(str::to_owned))
        .collect()
}

/// A list of CodeableConcepts: the codes of their Codings.
fn read_concepts(value: &Value) -> Option<Vec<String>> {
    let mut codes = Vec::new();
    for concept in value.as_array()? {
        codes.extend(read_codings(concept.get("coding")?)?);
    }
    Some(codes)
}

/// Everything that identifies the caller, as identifiers and references.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerIds {
    /// `(system, value)` pairs: authorisation id, CPR, SOR, CVR.
    pub identifiers: Vec<(String, String)>,
    /// Literal references: the caller's `fhirUser`, and what the gateway found to be the same
    /// person or organisation (`Practitioner/…`, `PractitionerRole/…`, `Organization/…`).
    pub references: Vec<String>,
}

impl CallerIds {
    /// Whether `actor` names this caller. Identifiers compare as the Danish registers write
    /// them (a CPR with or without its hyphen, an authorisation id in any case, a system with
    /// or without a trailing slash); references by their last `Type/id` (absolute or relative,
    /// any version).
    pub fn is(&self, actor: &Actor) -> bool {
        match actor {
            Actor::Identifier(system, value) => self.identifiers.iter().any(|(s, v)| {
                let system = system.trim_end_matches('/');
                s.trim_end_matches('/') == system && same_value(system, v, value)
            }),
            Actor::Reference(reference) => {
                let wanted = relative(reference);
                self.references.iter().any(|r| relative(r) == wanted)
            }
        }
    }
}

fn same_value(system: &str, a: &str, b: &str) -> bool {
    let digits = |v: &str| v.chars().filter(|c| *c != '-').collect::<String>();
    match system {
        CPR_SYSTEM => digits(a.trim()) == digits(b.trim()),
        _ => a.trim().eq_ignore_ascii_case(b.trim()),
    }
}

/// `Type/id` of a reference, without base URL or `_history`.
pub fn relative(reference: &str) -> &str {
    let reference = reference
        .split("/_history/")
        .next()
        .unwrap_or(reference)
        .trim_end_matches('/');
    let mut cut = reference.len();
    for _ in 0..2 {
        match reference[..cut].rfind('/') {
            Some(index) => cut = index,
            None => return reference,
        }
    }
    &reference[cut + 1..]
}

/// One access to a patient's data, as consent sees it.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    /// The resource type, when known (`None`: a system search, `Patient/x/*`, a batch).
    pub resource_type: Option<&'a str>,
    /// The resource, `Type/id`, when known.
    pub resource: Option<&'a str>,
    /// The caller's purpose of use (`TREATMENT`, `EMERGENCY`, ...), if stated.
    pub purpose: Option<&'a str>,
    /// Now, in Unix seconds.
    pub now: i64,
    /// What is not known yet (which type, which resource) counts as matching a deny: for
    /// writes, which cannot be undone once the answer shows what they changed. For reads the
    /// answer is checked resource by resource, so it counts as not matching.
    pub unknown_denies: bool,
}

/// What the consent check says about one patient's data for one caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsentVerdict {
    /// No Consent denies the caller this access.
    Open,
    /// A Consent denies it, and stands.
    Blocked {
        /// The blocking Consent.
        consent: String,
    },
    /// A Consent denies it, and break-the-glass lifts it.
    BrokenGlass {
        /// The Consent set aside.
        consent: String,
    },
}

/// A claim of emergency access: purpose of use EMERGENCY, with or without a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emergency<'a> {
    /// Not claimed.
    None,
    /// EMERGENCY claimed without a reason: lifts nothing.
    WithoutReason,
    /// EMERGENCY with a stated reason: lifts blocks.
    WithReason(&'a str),
}

impl<'a> Emergency<'a> {
    /// From the token's purpose of use and the reason given (header or claim).
    pub fn new(purpose_of_use: Option<&str>, reason: Option<&'a str>) -> Emergency<'a> {
        if purpose_of_use != Some("EMERGENCY") {
            return Emergency::None;
        }
        match reason.map(str::trim).filter(|r| !r.is_empty()) {
            Some(reason) => Emergency::WithReason(reason),
            None => Emergency::WithoutReason,
        }
    }
}

/// Whether `reason` is a reason someone can read: at least `min_chars` letters or digits. Spaces,
/// punctuation, control and format characters (zero-width spaces and joiners, a byte order
/// mark, a soft hyphen) and the letters Unicode defines to be shown as nothing (the Hangul
/// fillers) are not counted, so that a reason made of them alone is no reason.
pub fn is_readable_reason(reason: &str, min_chars: usize) -> bool {
    // Default_Ignorable_Code_Point letters: they take no space and show nothing.
    const INVISIBLE_LETTERS: [char; 4] = ['\u{115F}', '\u{1160}', '\u{3164}', '\u{FFA0}'];
    let readable = reason
        .chars()
        .filter(|c| c.is_alphanumeric() && !INVISIBLE_LETTERS.contains(c))
        .take(min_chars.max(1))
        .count();
    readable >= min_chars.max(1)
}

/// A break-the-glass reason as it is recorded and passed on, if it is one: cut to what is kept
/// ([`recordable_reason`]), then readable ([`is_readable_reason`], at least `min_chars` letters
/// or digits).
pub fn break_glass_reason(reason: &str, min_chars: usize) -> Option<String> {
    let kept = recordable_reason(reason);
    is_readable_reason(&kept, min_chars).then_some(kept)
}

/// A reason as it is recorded and passed on: at most 500 characters, without control and
/// format characters (bidirectional overrides, zero-width characters), which would reorder or
/// hide what a reviewer reads.
pub fn recordable_reason(reason: &str) -> String {
    let format = |c: char| {
        matches!(c,
            '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{E0000}'..='\u{E007F}')
    };
    reason
        .chars()
        .filter(|c| !c.is_control() && !format(*c))
        .take(500)
        .collect()
}

/// Decides one patient's Consents for one caller and one access.
pub fn check(
    blocks: &[Block],
    caller: &CallerIds,
    access: &Access<'_>,
    emergency: Emergency<'_>,
) -> ConsentVerdict {
    let Some(block) = blocks.iter().find(|block| denies(block, caller, access)) else {
        return ConsentVerdict::Open;
    };
    match emergency {
        Emergency::WithReason(_) => ConsentVerdict::BrokenGlass {
            consent: block.consent.clone(),
        },
        Emergency::None | Emergency::WithoutReason => ConsentVerdict::Blocked {
            consent: block.consent.clone(),
        },
    }
}

/// Whether `block` denies `caller` this access.
pub fn denies(block: &Block, caller: &CallerIds, access: &Access<'_>) -> bool {
    let in_force = match &block.period {
        Condition::Absent => true,
        Condition::Read(period) => period.contains(access.now),
        Condition::Unreadable => true,
    };
    in_force && evaluate(&block.root, block.base, caller, access) == Some(Kind::Deny)
}

/// The kind of the deepest applying provision under `provision`, or `None` if it does not
/// apply.
fn evaluate(
    provision: &Provision,
    inherited: Kind,
    caller: &CallerIds,
    access: &Access<'_>,
) -> Option<Kind> {
    let kind = provision.kind.unwrap_or(inherited);
    if !applies(provision, kind, caller, access) {
        return None;
    }
    let mut decided = kind;
    for nested in &provision.nested {
        match evaluate(nested, kind, caller, access) {
            Some(Kind::Deny) => return Some(Kind::Deny),
            Some(Kind::Permit) => decided = Kind::Permit,
            None => {}
        }
    }
    Some(decided)
}

/// Three-valued: a condition holds, does not, or cannot be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holds {
    Yes,
    No,
    Unknown,
}

fn applies(provision: &Provision, kind: Kind, caller: &CallerIds, access: &Access<'_>) -> bool {
    let actor = if provision.actors.iter().any(|a| caller.is(a)) {
        Holds::Yes
    } else if provision.unreadable_actor {
        Holds::Unknown
    } else if provision.actors.is_empty() {
        Holds::Yes
    } else {
        Holds::No
    };
    let listed = |condition: &Condition<Vec<String>>, value: Option<&str>| match condition {
        Condition::Absent => Holds::Yes,
        Condition::Unreadable => Holds::Unknown,
        Condition::Read(items) => match value {
            Some(value) if items.iter().any(|item| item == value) => Holds::Yes,
            Some(_) => Holds::No,
            None => Holds::Unknown,
        },
    };
    let period = match &provision.period {
        Condition::Absent => Holds::Yes,
        Condition::Read(period) if period.contains(access.now) => Holds::Yes,
        Condition::Read(_) => Holds::No,
        Condition::Unreadable => Holds::Unknown,
    };
    let action = match &provision.actions {
        Condition::Read(codes)
            if !codes
                .iter()
                .any(|c| matches!(c.as_str(), "access" | "use" | "disclose" | "correct")) =>
        {
            Holds::No
        }
        Condition::Unreadable => Holds::Unknown,
        _ => Holds::Yes,
    };
    let conditions = [
        actor,
        period,
        action,
        listed(&provision.classes, access.resource_type),
        listed(&provision.data, access.resource.map(relative)),
        listed(&provision.purposes, access.purpose),
        if provision.unjudgeable {
            Holds::Unknown
        } else {
            Holds::Yes
        },
    ];
    if conditions.contains(&Holds::No) {
        return false;
    }
    if !conditions.contains(&Holds::Unknown) {
        return true;
    }
    // What cannot be told never narrows a block: it holds for a deny (for reads, only where
    // the access itself is known: the answer is checked resource by resource), and never for a
    // permit.
    let unknown_from_access = (provision.classes != Condition::Absent
        && access.resource_type.is_none())
        || (provision.data != Condition::Absent && access.resource.is_none());
    kind == Kind::Deny && (access.unknown_denies || !unknown_from_access)
}

impl Period {
    fn contains(&self, now: i64) -> bool {
        self.start.is_none_or(|start| start <= now) && self.end.is_none_or(|end| now < end)
    }
}

#[cfg(test)]
mod tests;
