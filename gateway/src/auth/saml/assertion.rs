//! Reading a signature-checked assertion: SOSI ID card attributes (DGWS 1.0.1 §6: `IDCardData`,
//! `UserLog`, `SystemLog`) or OIOSAML / IDWS XUA attributes, the validity window, audience and
//! holder-of-key confirmation. Everything is read from the assertion element's own children,
//! never by searching the document, so nothing outside the signed element can be picked up.

use std::collections::HashMap;

use base64::Engine as _;
use roxmltree::Node;

use super::dsig::{DSIG_NS, TrustedSigner, base64_content};
use super::{AssertionPolicy, SAML_NS, SamlError};
use crate::tls::PeerIdentity;

const HOLDER_OF_KEY: &str = "urn:oasis:names:tc:SAML:2.0:cm:holder-of-key";

/// SOSI card attribute names (prefixes as DGWS writes them; matched by `Name`).
mod sosi {
    pub(super) const CARD_ID: &str = "sosi:IDCardID";
    pub(super) const CARD_TYPE: &str = "sosi:IDCardType";
    pub(super) const LEVEL: &str = "sosi:AuthenticationLevel";
    pub(super) const CERT_HASH: &str = "sosi:OCESCertHash";
    pub(super) const CPR: &str = "medcom:UserCivilRegistrationNumber";
    pub(super) const GIVEN_NAME: &str = "medcom:UserGivenName";
    pub(super) const SURNAME: &str = "medcom:UserSurName";
    pub(super) const ROLE: &str = "medcom:UserRole";
    pub(super) const AUTHORIZATION: &str = "medcom:UserAuthorizationCode";
    pub(super) const OCCUPATION: &str = "medcom:UserOccupation";
    pub(super) const SYSTEM: &str = "medcom:ITSystemName";
    pub(super) const PROVIDER_ID: &str = "medcom:CareProviderID";
    pub(super) const PROVIDER_NAME: &str = "medcom:CareProviderName";
}

/// OIOSAML / IDWS XUA attribute names.
mod xua {
    pub(super) const ROLE: &str = "urn:oasis:names:tc:xspa:1.0:subject:role";
    pub(super) const PURPOSE: &str = "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse";
    pub(super) const RESOURCE: &str = "urn:oasis:names:tc:xacml:2.0:resource:resource-id";
    pub(super) const PROVIDER: &str = "urn:ihe:iti:xua:2017:subject:provider-identifier";
    pub(super) const CPR: &str = "dk:gov:saml:attribute:CprNumberIdentifier";
    pub(super) const LEVEL: &str = "dk:gov:saml:attribute:AssuranceLevel";
    pub(super) const GIVEN_NAME: &str = "urn:oid:2.5.4.42";
    pub(super) const SURNAME: &str = "urn:oid:2.5.4.4";
    pub(super) const AUTHORIZATION: &str = "dk:healthcare:saml:attribute:UserAuthorizationCode";
    pub(super) const ON_BEHALF_OF: &str = "dk:healthcare:saml:attribute:OnBehalfOf";
    pub(super) const USER_TYPE: &str = "dk:healthcare:saml:attribute:UserType";
    pub(super) const SYSTEM: &str = "dk:healthcare:saml:attribute:SystemName";
}

/// Which kind of assertion it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionKind {
    /// A DGWS SOSI ID card.
    SosiCard,
    /// An OIOSAML / IDWS XUA assertion.
    Oiosaml,
}

/// Who the assertion speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardType {
    /// A person (health professional or citizen).
    User,
    /// A system acting for an organisation.
    System,
}

impl CardType {
    /// `user` or `system`.
    pub fn as_str(self) -> &'static str {
        match self {
            CardType::User => "user",
            CardType::System => "system",
        }
    }
}

/// The care provider (organisation) the caller acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CareProvider {
    /// The identifier kind (`medcom:cvrnumber`, `medcom:sor`, an OID, ...).
    pub kind: String,
    /// The identifier.
    pub id: String,
    /// The organisation's name, if given.
    pub name: Option<String>,
}

/// An assertion that passed every check. Only [`AssertionPolicy::verify`] makes one.
#[derive(Debug, Clone)]
pub struct VerifiedAssertion {
    pub kind: AssertionKind,
    pub card_type: CardType,
    /// What replay protection keys on: the IDCardID of a SOSI card (every card's XML id is
    /// `IDCard`), the assertion `ID` otherwise.
    pub replay_id: String,
    pub issuer: String,
    pub subject: String,
    pub subject_format: Option<String>,
    pub authentication_level: u8,
    pub not_on_or_after: u64,
    /// The trusted STS certificate that signed it (its subject).
    pub signer: String,
    /// SHA-256 of that certificate's public key, hex: replay is keyed on it, not on the
    /// claimed issuer.
    pub signer_fingerprint: String,
    /// `SubjectConfirmationData/@Address`: the network address the assertion may be presented
    /// from, for the caller to compare with the connection's.
    pub confirmation_address: Option<String>,
    pub cpr: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub role: Option<String>,
    pub authorization_id: Option<String>,
    pub occupation: Option<String>,
    pub system_name: Option<String>,
    pub care_provider: Option<CareProvider>,
    pub purpose_of_use: Option<String>,
    pub on_behalf_of: Option<String>,
    /// The patient the access is about (CPR from the XUA resource-id).
    pub patient_cpr: Option<String>,
}

impl VerifiedAssertion {
    /// The `acr` value: `dgws:<level>` for SOSI cards, `idws:<level>` otherwise.
    pub fn acr(&self) -> String {
        match self.kind {
            AssertionKind::SosiCard => format!("dgws:{}", self.authentication_level),
            AssertionKind::Oiosaml => format!("idws:{}", self.authentication_level),
        }
    }
}

/// One `saml:Attribute`: its `NameFormat` and its values.
struct Attribute<'a, 'i> {
    name_format: Option<&'a str>,
    values: Vec<Node<'a, 'i>>,
}

pub(super) fn read(
    root: Node<'_, '_>,
    policy: &AssertionPolicy,
    peer: &PeerIdentity,
    now: u64,
    signer: &TrustedSigner,
) -> Result<VerifiedAssertion, SamlError> {
    let issuer = text(only_child(root, "Issuer")?)?;
    // A trusted STS speaks only for the issuer names it is pinned to: another's cards (and
    // their replay ids) are not its to make.
    if !signer.may_sign_for(&issuer) {
        return Err(SamlError::IssuerNotAllowed);
    }
    let subject = only_child(root, "Subject")?;
    let name_id = only_child(subject, "NameID")?;
    let subject_value = text(name_id)?;
    let conditions = only_child(root, "Conditions").map_err(|e| match e {
        SamlError::MissingAttribute => SamlError::MissingConditions,
        other => other,
    })?;
    let not_on_or_after = conditions
        .attribute("NotOnOrAfter")
        .ok_or(SamlError::MissingConditions)
        .and_then(parse_instant)?;
    if now >= not_on_or_after.saturating_add(policy.leeway) {
        return Err(SamlError::Expired);
    }
    if not_on_or_after
        > now
            .saturating_add(policy.max_lifetime)
            .saturating_add(policy.leeway)
    {
        return Err(SamlError::LifetimeTooLong);
    }
    if let Some(not_before) = conditions.attribute("NotBefore")
        && parse_instant(not_before)? > now.saturating_add(policy.leeway)
    {
        return Err(SamlError::NotYetValid);
    }
    let restrictions: Vec<_> = saml_children(conditions, "AudienceRestriction").collect();
    for restriction in &restrictions {
        let mut audiences = saml_children(*restriction, "Audience");
        if !audiences.any(|a| text(a).is_ok_and(|a| policy.audiences.contains(&a))) {
            return Err(SamlError::WrongAudience);
        }
    }

    let attributes = attributes(root)?;
    let value = |name: &str| -> Result<Option<String>, SamlError> {
        match attributes.get(name) {
            None => Ok(None),
            Some(attribute) => match attribute.values.as_slice() {
                [one] => coded_value(*one).map(Some),
                _ => Err(SamlError::InvalidAttribute),
            },
        }
    };

    let confirmation = only_child(subject, "SubjectConfirmation")?;
    let data = match only_child(confirmation, "SubjectConfirmationData") {
        Ok(data) => Some(data),
        Err(SamlError::MissingAttribute) => None,
        Err(other) => return Err(other),
    };
    if let Some(data) = data {
        if let Some(until) = data.attribute("NotOnOrAfter")
            && now >= parse_instant(until)?.saturating_add(policy.leeway)
        {
            return Err(SamlError::Expired);
        }
        if let Some(recipient) = data.attribute("Recipient")
            && recipient != policy.token_endpoint
        {
            return Err(SamlError::WrongRecipient);
        }
        // Portvagt sends no SAML requests: an assertion answering one was made for someone else.
        if data.attribute("InResponseTo").is_some() {
            return Err(SamlError::UnsolicitedResponseExpected);
        }
    }
    let confirmation_address = data
        .and_then(|data| data.attribute("Address"))
        .map(str::to_owned);
    let method = match confirmation.attribute("Method") {
        Some(method) => method.to_owned(),
        // DGWS 1.0 writes the method as a child element.
        None => text(only_child(confirmation, "ConfirmationMethod")?)?,
    };

    let (kind, card_type, replay_id, level) = if let Some(card_type) = value(sosi::CARD_TYPE)? {
        let card_type = match card_type.as_str() {
            "user" => CardType::User,
            "system" => CardType::System,
            _ => return Err(SamlError::InvalidCardType),
        };
        let level = value(sosi::LEVEL)?
            .ok_or(SamlError::MissingAttribute)?
            .parse::<u8>()
            .ok()
            .filter(|level| (1..=4).contains(level))
            .ok_or(SamlError::InvalidAttribute)?;
        if level < policy.min_authentication_level {
            return Err(SamlError::LevelTooLow);
        }
        // Levels 3 and 4 are certificate-based: the card names the certificate's SHA-1.
        if level >= 3 {
            if method != HOLDER_OF_KEY {
                return Err(SamlError::NotHolderOfKey);
            }
            let hash = value(sosi::CERT_HASH)?.ok_or(SamlError::NotHolderOfKey)?;
            let hash = base64::engine::general_purpose::STANDARD
                .decode(hash.trim())
                .map_err(|_| SamlError::InvalidAttribute)?;
            if !peer.has_certificate() || hash != peer.thumbprint_sha1() {
                return Err(SamlError::HolderOfKeyMismatch);
            }
        }
        let card_id = value(sosi::CARD_ID)?.ok_or(SamlError::MissingAttribute)?;
        (AssertionKind::SosiCard, card_type, card_id, level)
    } else {
        if restrictions.is_empty() {
            return Err(SamlError::WrongAudience);
        }
        if method != HOLDER_OF_KEY {
            return Err(SamlError::NotHolderOfKey);
        }
        let certificate = data
            .and_then(|data| {
                data.descendants()
                    .find(|n| n.has_tag_name((DSIG_NS, "X509Certificate")))
            })
            .ok_or(SamlError::NotHolderOfKey)?;
        let der = base64_content(certificate)?;
        if !peer.is_certificate(&der) {
            return Err(SamlError::HolderOfKeyMismatch);
        }
        let level = match value(xua::LEVEL)? {
            Some(level) => level
                .parse::<u8>()
                .ok()
                .filter(|level| (1..=4).contains(level))
                .ok_or(SamlError::InvalidAttribute)?,
            // Holder-of-key with a system certificate: what DGWS calls level 3.
            None => 3,
        };
        if level < policy.min_authentication_level {
            return Err(SamlError::LevelTooLow);
        }
        let card_type = match value(xua::USER_TYPE)?.as_deref() {
            Some("System") => CardType::System,
            _ => CardType::User,
        };
        let id = root.attribute("ID").ok_or(SamlError::MissingId)?.to_owned();
        (AssertionKind::Oiosaml, card_type, id, level)
    };

    let (first, second) = match kind {
        AssertionKind::SosiCard => (sosi::CPR, xua::CPR),
        AssertionKind::Oiosaml => (xua::CPR, sosi::CPR),
    };
    let either =
        |a: &str, b: &str| -> Result<Option<String>, SamlError> { Ok(value(a)?.or(value(b)?)) };
    let care_provider = match (kind, attributes.get(sosi::PROVIDER_ID)) {
        (AssertionKind::SosiCard, Some(attribute)) => Some(CareProvider {
            kind: attribute.name_format.unwrap_or("medcom:other").to_owned(),
            id: value(sosi::PROVIDER_ID)?.ok_or(SamlError::InvalidAttribute)?,
            name: value(sosi::PROVIDER_NAME)?,
        }),
        _ => match attributes.get(xua::PROVIDER) {
            Some(attribute) => Some(provider_identifier(attribute)?),
            None => None,
        },
    };
    let patient_cpr = value(xua::RESOURCE)?
        .map(|id| id.split('^').next().unwrap_or_default().to_owned())
        .filter(|cpr| !cpr.is_empty());
    Ok(VerifiedAssertion {
        kind,
        card_type,
        replay_id,
        issuer,
        subject: subject_value,
        subject_format: name_id.attribute("Format").map(str::to_owned),
        authentication_level: level,
        not_on_or_after,
        signer: signer.subject().to_owned(),
        signer_fingerprint: signer.fingerprint().to_owned(),
        confirmation_address,
        cpr: either(first, second)?,
        given_name: either(sosi::GIVEN_NAME, xua::GIVEN_NAME)?,
        family_name: either(sosi::SURNAME, xua::SURNAME)?,
        role: either(sosi::ROLE, xua::ROLE)?,
        authorization_id: either(sosi::AUTHORIZATION, xua::AUTHORIZATION)?,
        occupation: value(sosi::OCCUPATION)?,
        system_name: either(sosi::SYSTEM, xua::SYSTEM)?,
        care_provider,
        purpose_of_use: value(xua::PURPOSE)?,
        on_behalf_of: value(xua::ON_BEHALF_OF)?,
        patient_cpr,
    })
}

fn saml_children<'a, 'i>(
    node: Node<'a, 'i>,
    name: &'static str,
) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children()
        .filter(move |n| n.has_tag_name((SAML_NS, name)))
}

/// The one SAML child `name` of `node`: missing and repeated are both refused.
fn only_child<'a, 'i>(node: Node<'a, 'i>, name: &'static str) -> Result<Node<'a, 'i>, SamlError> {
    let mut found = saml_children(node, name);
    let first = found.next().ok_or(SamlError::MissingAttribute)?;
    if found.next().is_some() {
        return Err(SamlError::InvalidAttribute);
    }
    Ok(first)
}

/// The text of an element that holds only text.
fn text(node: Node<'_, '_>) -> Result<String, SamlError> {
    if node.children().any(|n| !n.is_text()) {
        return Err(SamlError::InvalidAttribute);
    }
    let value: String = node.children().filter_map(|n| n.text()).collect();
    let value = value.trim();
    if value.is_empty() {
        return Err(SamlError::InvalidAttribute);
    }
    Ok(value.to_owned())
}

/// An `AttributeValue`: text, or (XUA) one coded element whose `code` is the value.
fn coded_value(node: Node<'_, '_>) -> Result<String, SamlError> {
    let elements: Vec<_> = node.children().filter(|n| n.is_element()).collect();
    match elements.as_slice() {
        [] => text(node),
        [coded] => coded
            .attribute("code")
            .map(str::to_owned)
            .ok_or(SamlError::InvalidAttribute),
        _ => Err(SamlError::InvalidAttribute),
    }
}

/// Every `Attribute` of the assertion's own `AttributeStatement`s, by `Name`. A name given
/// twice is ambiguous and refused.
fn attributes<'a, 'i>(
    root: Node<'a, 'i>,
) -> Result<HashMap<&'a str, Attribute<'a, 'i>>, SamlError> {
    let mut map = HashMap::new();
    for statement in saml_children(root, "AttributeStatement") {
        for attribute in saml_children(statement, "Attribute") {
            let name = attribute
                .attribute("Name")
                .ok_or(SamlError::InvalidAttribute)?;
            let entry = Attribute {
                name_format: attribute.attribute("NameFormat"),
                values: saml_children(attribute, "AttributeValue").collect(),
            };
            if map.insert(name, entry).is_some() {
                return Err(SamlError::InvalidAttribute);
            }
        }
    }
    Ok(map)
}

/// XUA `provider-identifier`: `id^^^&<oid>&ISO`, or a bare id.
fn provider_identifier(attribute: &Attribute<'_, '_>) -> Result<CareProvider, SamlError> {
    let [value] = attribute.values.as_slice() else {
        return Err(SamlError::InvalidAttribute);
    };
    let value = coded_value(*value)?;
    let mut parts = value.split('^');
    let id = parts.next().unwrap_or_default().to_owned();
    let kind = parts
        .nth(2)
        .and_then(|authority| authority.split('&').nth(1))
        .map(|oid| format!("urn:oid:{oid}"))
        .unwrap_or_else(|| attribute.name_format.unwrap_or("other").to_owned());
    Ok(CareProvider {
        kind,
        id,
        name: None,
    })
}

/// An `xs:dateTime` as seconds since the epoch. DGWS 1.0 writes no zone: that is UTC.
pub(crate) fn parse_instant(value: &str) -> Result<u64, SamlError> {
    use time::format_description::well_known::Rfc3339;
    let value = value.trim();
    let has_zone = value.ends_with('Z')
        || value
            .get(value.len().saturating_sub(6)..)
            .is_some_and(|tail| {
                tail.len() == 6
                    && tail.starts_with(['+', '-'])
                    && tail.as_bytes().get(3) == Some(&b':')
            });
    let parsed = if has_zone {
        time::OffsetDateTime::parse(value, &Rfc3339)
    } else {
        time::OffsetDateTime::parse(&format!("{value}Z"), &Rfc3339)
    }
    .map_err(|_| SamlError::InvalidAttribute)?;
    u64::try_from(parsed.unix_timestamp()).map_err(|_| SamlError::InvalidAttribute)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_with_and_without_zone_are_utc() {
        assert_eq!(
            parse_instant("2026-11-30T07:00:00Z").unwrap(),
            1_796_022_000
        );
        assert_eq!(parse_instant("2026-11-30T07:00:00").unwrap(), 1_796_022_000);
        assert_eq!(
            parse_instant("2026-11-30T07:00:00.250Z").unwrap(),
            1_796_022_000
        );
        assert_eq!(
            parse_instant("2026-11-30T08:00:00+01:00").unwrap(),
            1_796_022_000
        );
        assert!(parse_instant("30-11-2026").is_err());
        assert!(parse_instant("2026-11-30T07:00:00+0100").is_err());
        for short in ["+1", "-", "+12", "Z", ""] {
            assert!(parse_instant(short).is_err(), "{short:?}");
        }
    }
}
