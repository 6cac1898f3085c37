//! Negative consent: a citizen's block against a named health professional or organisation,
//! as a FHIR R4 `Consent` (status `active`, `provision.type` = `deny`, `provision.actor` naming
//! a Practitioner by authorisation id or CPR, or an Organization by SOR or CVR), and the one
//! override: break-the-glass (purpose of use EMERGENCY with a stated reason), which lifts a
//! block but never a scope or a rule.

use serde_json::Value;

/// Identifier systems (Danish FHIR core IG).
pub const AUTHORIZATION_SYSTEM: &str = "https://autregweb.sst.dk";
pub const CPR_SYSTEM: &str = "urn:oid:1.2.208.176.1.2";
pub const SOR_SYSTEM: &str = "urn:oid:1.2.208.176.1.1";
pub const CVR_SYSTEM: &str = "http://cvr.dk";

/// Who a block is against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// By identifier: `(system, value)`.
    Identifier(String, String),
    /// By literal reference, e.g. `Practitioner/prac-ns363`.
    Reference(String),
}

/// One patient's block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The Consent's id, for the audit record.
    pub consent: String,
    /// Whom it blocks.
    pub actors: Vec<Actor>,
}

/// Reads the blocks in a Consent resource: active, a `deny` provision (at the top or nested)
/// with actors. Anything else (permits, drafts, provisions without actors) blocks nobody.
pub fn blocks_in(consent: &Value) -> Option<Block> {
    if consent.get("resourceType")?.as_str()? != "Consent"
        || consent.get("status")?.as_str()? != "active"
    {
        return None;
    }
    // Deny provisions may nest inside a permit (R4 `provision.provision`): any deny with actors
    // counts.
    let mut actors = Vec::new();
    collect_deny_actors(consent.get("provision")?, &mut actors);
    if actors.is_empty() {
        return None;
    }
    Some(Block {
        consent: consent
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        actors,
    })
}

fn collect_deny_actors(provision: &Value, actors: &mut Vec<Actor>) {
    if provision.get("type").and_then(Value::as_str) == Some("deny") {
        actors.extend(provision_actors(provision));
    }
    for nested in provision
        .get("provision")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        collect_deny_actors(nested, actors);
    }
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
                return Some(Actor::Reference(literal.to_owned()));
            }
            let identifier = reference.get("identifier")?;
            Some(Actor::Identifier(
                identifier.get("system")?.as_str()?.to_owned(),
                identifier.get("value")?.as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Everything that identifies the caller, as identifiers and references.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerIds {
    /// `(system, value)` pairs: authorisation id, CPR, SOR, CVR.
    pub identifiers: Vec<(String, String)>,
    /// Literal references: the caller's `fhirUser`, e.g. `Practitioner/prac-ns363`.
    pub references: Vec<String>,
}

impl CallerIds {
    /// Whether `block` names this caller. Identifiers compare as the Danish registers write
    /// them (a CPR with or without its hyphen, an authorisation id in any case, a system with
    /// or without a trailing slash); references by their last `Type/id` (absolute or relative,
    /// any version).
    pub fn blocked_by(&self, block: &Block) -> bool {
        block.actors.iter().any(|actor| match actor {
            Actor::Identifier(system, value) => self.identifiers.iter().any(|(s, v)| {
                let system = system.trim_end_matches('/');
                s.trim_end_matches('/') == system && same_value(system, v, value)
            }),
            Actor::Reference(reference) => {
                let wanted = relative(reference);
                self.references.iter().any(|r| relative(r) == wanted)
            }
        })
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
fn relative(reference: &str) -> &str {
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

/// What the consent check says about one patient's data for one caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsentVerdict {
    /// No block names the caller.
    Open,
    /// A block names the caller, and stands.
    Blocked {
        /// The blocking Consent.
        consent: String,
    },
    /// A block names the caller, and break-the-glass lifts it.
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

/// Decides one patient's blocks for a caller.
pub fn check(blocks: &[Block], caller: &CallerIds, emergency: Emergency<'_>) -> ConsentVerdict {
    let Some(block) = blocks.iter().find(|block| caller.blocked_by(block)) else {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn consent(status: &str, kind: &str, actors: Value) -> Value {
        json!({
            "resourceType": "Consent", "id": "c1", "status": status,
            "patient": { "reference": "Patient/pat-anne" },
            "provision": { "type": kind, "actor": actors }
        })
    }

    fn physician() -> CallerIds {
        CallerIds {
            identifiers: vec![
                (AUTHORIZATION_SYSTEM.into(), "NS363".into()),
                (CVR_SYSTEM.into(), "12345678".into()),
            ],
            references: vec!["Practitioner/prac-ns363".into()],
        }
    }

    #[test]
    fn only_active_deny_provisions_with_actors_block() {
        let actor = json!([{ "role": {}, "reference": { "identifier": { "system": AUTHORIZATION_SYSTEM, "value": "NS363" } } }]);
        assert!(blocks_in(&consent("active", "deny", actor.clone())).is_some());
        assert!(blocks_in(&consent("inactive", "deny", actor.clone())).is_none());
        assert!(blocks_in(&consent("active", "permit", actor)).is_none());
        assert!(blocks_in(&consent("active", "deny", json!([]))).is_none());
        assert!(blocks_in(&json!({ "resourceType": "Patient" })).is_none());
    }

    #[test]
    fn actors_match_however_the_registers_are_written() {
        let block = |reference: Value| {
            blocks_in(&consent(
                "active",
                "deny",
                json!([{ "reference": reference }]),
            ))
            .unwrap()
        };
        let caller = CallerIds {
            identifiers: vec![
                (AUTHORIZATION_SYSTEM.into(), "ns363".into()),
                (CPR_SYSTEM.into(), "0501792275".into()),
            ],
            references: vec!["https://fhir.example/fhir/Practitioner/prac-ns363".into()],
        };
        for reference in [
            json!({ "identifier": { "system": "https://autregweb.sst.dk/", "value": "NS363" } }),
            json!({ "identifier": { "system": CPR_SYSTEM, "value": "050179-2275" } }),
            json!({ "reference": "Practitioner/prac-ns363/_history/3" }),
            json!({ "reference": "http://other.example/Practitioner/prac-ns363" }),
        ] {
            assert!(caller.blocked_by(&block(reference.clone())), "{reference}");
        }
        assert!(!caller.blocked_by(&block(json!({ "reference": "Practitioner/prac-ns3630" }))));
        let nested = json!({
            "resourceType": "Consent", "id": "c2", "status": "active",
            "provision": { "type": "permit", "provision": [
                { "type": "deny", "actor": [{ "reference": { "reference": "Practitioner/prac-ns363" } }] }
            ]}
        });
        assert!(caller.blocked_by(&blocks_in(&nested).unwrap()));
    }

    #[test]
    fn blocks_name_professionals_and_organisations_and_glass_breaks_only_with_a_reason() {
        let table = [
            (
                json!({ "identifier": { "system": AUTHORIZATION_SYSTEM, "value": "NS363" } }),
                true,
            ),
            (
                json!({ "identifier": { "system": AUTHORIZATION_SYSTEM, "value": "XY999" } }),
                false,
            ),
            (
                json!({ "identifier": { "system": CVR_SYSTEM, "value": "12345678" } }),
                true,
            ),
            (
                json!({ "identifier": { "system": SOR_SYSTEM, "value": "12345678" } }),
                false,
            ),
            (json!({ "reference": "Practitioner/prac-ns363" }), true),
            (json!({ "reference": "Practitioner/other" }), false),
        ];
        for (reference, blocked) in table {
            let block = blocks_in(&consent(
                "active",
                "deny",
                json!([{ "reference": reference }]),
            ))
            .unwrap();
            let verdict = check(std::slice::from_ref(&block), &physician(), Emergency::None);
            assert_eq!(
                verdict != ConsentVerdict::Open,
                blocked,
                "{reference}: {verdict:?}"
            );
            if blocked {
                assert_eq!(
                    check(
                        std::slice::from_ref(&block),
                        &physician(),
                        Emergency::new(Some("EMERGENCY"), Some("  "))
                    ),
                    ConsentVerdict::Blocked {
                        consent: "c1".into()
                    }
                );
                assert_eq!(
                    check(
                        std::slice::from_ref(&block),
                        &physician(),
                        Emergency::new(Some("EMERGENCY"), Some("unconscious, no relatives"))
                    ),
                    ConsentVerdict::BrokenGlass {
                        consent: "c1".into()
                    }
                );
                assert_eq!(
                    check(
                        &[block],
                        &physician(),
                        Emergency::new(Some("TREATMENT"), Some("reason"))
                    ),
                    ConsentVerdict::Blocked {
                        consent: "c1".into()
                    }
                );
            }
        }
    }
}
