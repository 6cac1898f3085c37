//! Signed SAML fixtures: SOSI ID cards (DGWS 1.0.1, user and system, any authentication level,
//! RSA-SHA1 or RSA-SHA256) and OIOSAML / IDWS XUA-style assertions, signed by a test STS
//! certificate ([`CertificateAuthority::issue_sts`]).
//!
//! The XML is written directly in exclusive-c14n form (start and end tags, sorted attributes,
//! namespace declarations exactly where exc-c14n puts them), so the bytes that are digested
//! are the bytes in the document and the signer needs no canonicalizer of its own. Whether
//! that is right is not taken on trust: the tests check these cards with `xmlsec1 --verify`.

use std::fmt::Write as _;

use anyhow::Context as _;
use base64::Engine as _;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::IssuedCert;

const SAML: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
const DS: &str = "http://www.w3.org/2000/09/xmldsig#";
const HOLDER_OF_KEY: &str = "urn:oasis:names:tc:SAML:2.0:cm:holder-of-key";

/// The signature algorithm (and matching digest) of a fixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    /// RSA-SHA1 with SHA-1 digests: what the NSP STS still issues for DGWS cards.
    RsaSha1,
    /// RSA-SHA256 with SHA-256 digests.
    RsaSha256,
}

impl SignatureAlgorithm {
    fn uris(self) -> (&'static str, &'static str) {
        match self {
            SignatureAlgorithm::RsaSha1 => (
                "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
                "http://www.w3.org/2000/09/xmldsig#sha1",
            ),
            SignatureAlgorithm::RsaSha256 => (
                "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
                "http://www.w3.org/2001/04/xmlenc#sha256",
            ),
        }
    }

    fn digest(self) -> MessageDigest {
        match self {
            SignatureAlgorithm::RsaSha1 => MessageDigest::sha1(),
            SignatureAlgorithm::RsaSha256 => MessageDigest::sha256(),
        }
    }
}

/// The user part of a user card (`UserLog`).
#[derive(Debug, Clone)]
pub struct CardUser {
    pub cpr: String,
    pub given_name: String,
    pub surname: String,
    pub email: String,
    pub role: String,
    pub authorization_code: Option<String>,
    pub occupation: String,
}

/// A SOSI ID card to sign.
#[derive(Debug, Clone)]
pub struct SosiCard {
    pub issuer: String,
    /// `IDCardID`.
    pub card_id: String,
    /// `None` for a system card.
    pub user: Option<CardUser>,
    pub level: u8,
    pub algorithm: SignatureAlgorithm,
    /// The client certificate (DER) the card is bound to, by `OCESCertHash`.
    pub client_cert_der: Option<Vec<u8>>,
    pub system_name: String,
    pub care_provider_id: String,
    /// `medcom:cvrnumber`, `medcom:sor`, ...
    pub care_provider_format: String,
    pub care_provider_name: String,
    pub not_before: OffsetDateTime,
    pub not_on_or_after: OffsetDateTime,
    /// DGWS 1.0 writes timestamps without a zone (meaning UTC).
    pub timestamps_without_zone: bool,
    /// `id` (DGWS 1.0/1.0.1) or `ID` (the 1.0_2 variant).
    pub id_attribute: &'static str,
}

impl SosiCard {
    /// A level-4 user card for a physician (role 7170), bound to `client_cert_der`, valid from
    /// five minutes ago for 24 hours, RSA-SHA256.
    pub fn user(client_cert_der: &[u8]) -> SosiCard {
        SosiCard {
            user: Some(CardUser {
                cpr: "0501792275".into(),
                given_name: "Mette".into(),
                surname: "Kjær".into(),
                email: "mette.kjaer@example.dk".into(),
                role: "7170".into(),
                authorization_code: Some("NS363".into()),
                occupation: "Overlæge".into(),
            }),
            level: 4,
            ..SosiCard::system(client_cert_der)
        }
    }

    /// A level-3 system card for the demo organisation, bound to `client_cert_der`.
    pub fn system(client_cert_der: &[u8]) -> SosiCard {
        let now = OffsetDateTime::now_utc();
        SosiCard {
            issuer: "TEST1-NSP-STS".into(),
            card_id: uuid::Uuid::new_v4().to_string(),
            user: None,
            level: 3,
            algorithm: SignatureAlgorithm::RsaSha256,
            client_cert_der: Some(client_cert_der.to_vec()),
            system_name: "Journalsystem Demo".into(),
            care_provider_id: crate::DEMO_CVR.into(),
            care_provider_format: "medcom:cvrnumber".into(),
            care_provider_name: "Region Demo Sundhed".into(),
            not_before: now - time::Duration::minutes(5),
            not_on_or_after: now + time::Duration::hours(24),
            timestamps_without_zone: false,
            id_attribute: "id",
        }
    }

    /// The signed card, as XML.
    pub fn sign(&self, sts: &IssuedCert) -> anyhow::Result<String> {
        let stamp = |t: OffsetDateTime| instant(t, self.timestamps_without_zone);
        let mut root = Element::new("saml:Assertion")
            .attr("IssueInstant", &stamp(self.not_before))
            .attr("Version", "2.0")
            .attr(self.id_attribute, "IDCard");
        root.push(Element::new("saml:Issuer").text(&self.issuer));

        let (name_format, name) = match &self.user {
            Some(user) => ("medcom:cprnumber", user.cpr.as_str()),
            None => ("medcom:cvrnumber", self.care_provider_id.as_str()),
        };
        root.push(
            Element::new("saml:Subject")
                .child(
                    Element::new("saml:NameID")
                        .attr("Format", name_format)
                        .text(name),
                )
                .child(
                    Element::new("saml:SubjectConfirmation")
                        .child(Element::new("saml:ConfirmationMethod").text(HOLDER_OF_KEY))
                        .child(
                            Element::new("saml:SubjectConfirmationData").child(
                                Element::new("ds:KeyInfo")
                                    .child(Element::new("ds:KeyName").text("OCESSignature")),
                            ),
                        ),
                ),
        );
        root.push(
            Element::new("saml:Conditions")
                .attr("NotBefore", &stamp(self.not_before))
                .attr("NotOnOrAfter", &stamp(self.not_on_or_after)),
        );

        let card_type = if self.user.is_some() {
            "user"
        } else {
            "system"
        };
        let mut card_data = Element::new("saml:AttributeStatement")
            .attr("id", "IDCardData")
            .child(attribute("sosi:IDCardID", None, &self.card_id))
            .child(attribute("sosi:IDCardVersion", None, "1.0.1"))
            .child(attribute("sosi:IDCardType", None, card_type))
            .child(attribute(
                "sosi:AuthenticationLevel",
                None,
                &self.level.to_string(),
            ));
        if let Some(der) = &self.client_cert_der {
            let hash = openssl::hash::hash(MessageDigest::sha1(), der)?;
            card_data.push(attribute(
                "sosi:OCESCertHash",
                None,
                &base64::engine::general_purpose::STANDARD.encode(hash),
            ));
        }
        root.push(card_data);
        if let Some(user) = &self.user {
            let mut log = Element::new("saml:AttributeStatement")
                .attr("id", "UserLog")
                .child(attribute(
                    "medcom:UserCivilRegistrationNumber",
                    None,
                    &user.cpr,
                ))
                .child(attribute("medcom:UserGivenName", None, &user.given_name))
                .child(attribute("medcom:UserSurName", None, &user.surname))
                .child(attribute("medcom:UserEmailAddress", None, &user.email))
                .child(attribute("medcom:UserRole", None, &user.role))
                .child(attribute("medcom:UserOccupation", None, &user.occupation));
            if let Some(code) = &user.authorization_code {
                log.push(attribute("medcom:UserAuthorizationCode", None, code));
            }
            root.push(log);
        }
        root.push(
            Element::new("saml:AttributeStatement")
                .attr("id", "SystemLog")
                .child(attribute("medcom:ITSystemName", None, &self.system_name))
                .child(attribute(
                    "medcom:CareProviderID",
                    Some(&self.care_provider_format),
                    &self.care_provider_id,
                ))
                .child(attribute(
                    "medcom:CareProviderName",
                    None,
                    &self.care_provider_name,
                )),
        );
        sign(root, "IDCard", Placement::Last, self.algorithm, sts)
    }
}

/// An OIOSAML / IDWS XUA-style assertion to sign.
#[derive(Debug, Clone)]
pub struct OiosamlAssertion {
    pub id: String,
    pub issuer: String,
    /// `NameID`, with `Format` unspecified.
    pub subject: String,
    pub audience: String,
    /// The holder-of-key certificate (DER) in `SubjectConfirmationData`.
    pub client_cert_der: Vec<u8>,
    /// `Attribute Name` and value, in order.
    pub attributes: Vec<(String, String)>,
    pub algorithm: SignatureAlgorithm,
    pub not_before: OffsetDateTime,
    pub not_on_or_after: OffsetDateTime,
    /// Attributes of `SubjectConfirmationData` (`Recipient`, `InResponseTo`, `Address`), in
    /// order; none by default.
    pub confirmation: Vec<(&'static str, String)>,
}

impl OiosamlAssertion {
    /// A physician (role 7170) treating patient `patient_cpr` for organisation SOR
    /// `123456789012345`, valid from five minutes ago for 8 hours, for `audience`.
    pub fn physician(client_cert_der: &[u8], audience: &str, patient_cpr: &str) -> Self {
        let now = OffsetDateTime::now_utc();
        let attribute = |name: &str, value: &str| (name.to_owned(), value.to_owned());
        OiosamlAssertion {
            id: format!("_{}", uuid::Uuid::new_v4()),
            issuer: "http://sts.sundhedsdatastyrelsen.dk/".into(),
            subject: "C=DK,O=Region Demo Sundhed,CN=Mette Kjær".into(),
            audience: audience.into(),
            client_cert_der: client_cert_der.to_vec(),
            attributes: vec![
                attribute("dk:gov:saml:attribute:CprNumberIdentifier", "0501792275"),
                attribute("urn:oid:2.5.4.42", "Mette"),
                attribute("urn:oid:2.5.4.4", "Kjær"),
                attribute("dk:gov:saml:attribute:AssuranceLevel", "3"),
                attribute("urn:oasis:names:tc:xspa:1.0:subject:role", "7170"),
                attribute(
                    "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse",
                    "TREATMENT",
                ),
                attribute(
                    "urn:oasis:names:tc:xacml:2.0:resource:resource-id",
                    &format!("{patient_cpr}^^^&1.2.208.176.1.2&ISO"),
                ),
                attribute(
                    "urn:ihe:iti:xua:2017:subject:provider-identifier",
                    "123456789012345^^^&1.2.208.176.1.1&ISO",
                ),
                attribute(
                    "dk:healthcare:saml:attribute:UserAuthorizationCode",
                    "NS363",
                ),
                attribute("dk:healthcare:saml:attribute:UserType", "Employee"),
                attribute(
                    "dk:healthcare:saml:attribute:SystemName",
                    "Journalsystem Demo",
                ),
            ],
            algorithm: SignatureAlgorithm::RsaSha256,
            not_before: now - time::Duration::minutes(5),
            not_on_or_after: now + time::Duration::hours(8),
            confirmation: Vec::new(),
        }
    }

    /// The signed assertion, as XML.
    pub fn sign(&self, sts: &IssuedCert) -> anyhow::Result<String> {
        let certificate = base64::engine::general_purpose::STANDARD.encode(&self.client_cert_der);
        let mut root = Element::new("saml:Assertion")
            .attr("ID", &self.id)
            .attr("IssueInstant", &instant(self.not_before, false))
            .attr("Version", "2.0");
        root.push(Element::new("saml:Issuer").text(&self.issuer));
        root.push(
            Element::new("saml:Subject")
                .child(Element::new("saml:NameID").text(&self.subject))
                .child(
                    Element::new("saml:SubjectConfirmation")
                        .attr("Method", HOLDER_OF_KEY)
                        .child(
                            self.confirmation
                                .iter()
                                .fold(
                                    Element::new("saml:SubjectConfirmationData"),
                                    |data, (name, value)| data.attr(name, value),
                                )
                                .child(Element::new("ds:KeyInfo").child(
                                    Element::new("ds:X509Data").child(
                                        Element::new("ds:X509Certificate").text(&certificate),
                                    ),
                                )),
                        ),
                ),
        );
        root.push(
            Element::new("saml:Conditions")
                .attr("NotBefore", &instant(self.not_before, false))
                .attr("NotOnOrAfter", &instant(self.not_on_or_after, false))
                .child(
                    Element::new("saml:AudienceRestriction")
                        .child(Element::new("saml:Audience").text(&self.audience)),
                ),
        );
        let mut statement = Element::new("saml:AttributeStatement");
        for (name, value) in &self.attributes {
            statement.push(attribute(name, None, value));
        }
        root.push(statement);
        sign(root, &self.id, Placement::AfterIssuer, self.algorithm, sts)
    }
}

fn instant(t: OffsetDateTime, without_zone: bool) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    let text = t.format(&Rfc3339).unwrap_or_default();
    if without_zone {
        text.trim_end_matches('Z').to_owned()
    } else {
        text
    }
}

fn attribute(name: &str, name_format: Option<&str>, value: &str) -> Element {
    let mut element = Element::new("saml:Attribute").attr("Name", name);
    if let Some(format) = name_format {
        element = element.attr("NameFormat", format);
    }
    element.child(Element::new("saml:AttributeValue").text(value))
}

/// Where the `ds:Signature` goes among the assertion's children.
enum Placement {
    /// Last (DGWS).
    Last,
    /// Right after `saml:Issuer` (SAML core's schema order).
    AfterIssuer,
}

/// Digests `root` (which has no signature yet), signs, and inserts the signature.
fn sign(
    mut root: Element,
    id: &str,
    placement: Placement,
    algorithm: SignatureAlgorithm,
    sts: &IssuedCert,
) -> anyhow::Result<String> {
    let (signature_method, digest_method) = algorithm.uris();
    let digest = openssl::hash::hash(algorithm.digest(), root.canonical().as_bytes())?;
    let signed_info = Element::new("ds:SignedInfo")
        .child(
            Element::new("ds:CanonicalizationMethod")
                .attr("Algorithm", "http://www.w3.org/2001/10/xml-exc-c14n#"),
        )
        .child(Element::new("ds:SignatureMethod").attr("Algorithm", signature_method))
        .child(
            Element::new("ds:Reference")
                .attr("URI", &format!("#{id}"))
                .child(
                    Element::new("ds:Transforms")
                        .child(Element::new("ds:Transform").attr(
                            "Algorithm",
                            "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
                        ))
                        .child(
                            Element::new("ds:Transform")
                                .attr("Algorithm", "http://www.w3.org/2001/10/xml-exc-c14n#"),
                        ),
                )
                .child(Element::new("ds:DigestMethod").attr("Algorithm", digest_method))
                .child(
                    Element::new("ds:DigestValue")
                        .text(&base64::engine::general_purpose::STANDARD.encode(digest)),
                ),
        );
    let key = PKey::private_key_from_pem(sts.key_pem.as_bytes()).context("reading the STS key")?;
    let mut signer = Signer::new(algorithm.digest(), &key)?;
    let signature = signer.sign_oneshot_to_vec(signed_info.canonical().as_bytes())?;
    let signature = Element::new("ds:Signature")
        .attr("Id", "OCESSignature")
        .child(signed_info)
        .child(
            Element::new("ds:SignatureValue")
                .text(&base64::engine::general_purpose::STANDARD.encode(signature)),
        )
        .child(
            Element::new("ds:KeyInfo").child(
                Element::new("ds:X509Data").child(
                    Element::new("ds:X509Certificate")
                        .text(&base64::engine::general_purpose::STANDARD.encode(&sts.cert_der)),
                ),
            ),
        );
    match placement {
        Placement::Last => root.children.push(Content::Element(signature)),
        Placement::AfterIssuer => root.children.insert(1, Content::Element(signature)),
    }
    Ok(root.canonical())
}

/// A minimal XML tree whose serialization IS its exclusive canonical form, for elements whose
/// attributes are unprefixed and whose prefixes are `saml` and `ds`.
#[derive(Debug, Clone)]
struct Element {
    name: &'static str,
    attributes: Vec<(&'static str, String)>,
    children: Vec<Content>,
}

#[derive(Debug, Clone)]
enum Content {
    Element(Element),
    Text(String),
}

impl Element {
    fn new(name: &'static str) -> Element {
        Element {
            name,
            attributes: Vec::new(),
            children: Vec::new(),
        }
    }
    fn attr(mut self, name: &'static str, value: &str) -> Element {
        self.attributes.push((name, value.to_owned()));
        self
    }
    fn child(mut self, child: Element) -> Element {
        self.push(child);
        self
    }
    fn push(&mut self, child: Element) {
        self.children.push(Content::Element(child));
    }
    fn text(mut self, text: &str) -> Element {
        self.children.push(Content::Text(text.to_owned()));
        self
    }

    fn canonical(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, &mut Vec::new());
        out
    }

    /// Writes the element; `declared` holds the prefixes output ancestors declared (each
    /// prefix here always names the same namespace, so the prefix alone tells).
    fn write(&self, out: &mut String, declared: &mut Vec<&'static str>) {
        let prefix = self.name.split_once(':').map_or("", |(prefix, _)| prefix);
        out.push('<');
        out.push_str(self.name);
        let declares = !declared.contains(&prefix);
        if declares {
            let uri = if prefix == "ds" { DS } else { SAML };
            let _ = write!(out, " xmlns:{prefix}=\"{uri}\"");
            declared.push(prefix);
        }
        let mut attributes = self.attributes.clone();
        attributes.sort_by(|a, b| a.0.cmp(b.0));
        for (name, value) in attributes {
            let _ = write!(out, " {name}=\"{}\"", escape(&value, true));
        }
        out.push('>');
        for child in &self.children {
            match child {
                Content::Element(element) => element.write(out, declared),
                Content::Text(text) => out.push_str(&escape(text, false)),
            }
        }
        if declares {
            declared.pop();
        }
        let _ = write!(out, "</{}>", self.name);
    }
}

fn escape(text: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' if !attribute => out.push_str("&gt;"),
            '"' if attribute => out.push_str("&quot;"),
            '\r' => out.push_str("&#xD;"),
            '\n' if attribute => out.push_str("&#xA;"),
            '\t' if attribute => out.push_str("&#x9;"),
            other => out.push(other),
        }
    }
    out
}
