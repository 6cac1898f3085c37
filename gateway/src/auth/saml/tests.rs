//! Assertion verification: good cards of every kind, the XML signature attack catalogue, and
//! the cross-check with libxmlsec1 (`xmlsec1 --sign` makes a card, we verify it).

use std::sync::OnceLock;

use portvagt_certs::saml::{OiosamlAssertion, SignatureAlgorithm, SosiCard};
use portvagt_certs::{DevPki, IssuedCert};
use time::OffsetDateTime;

use super::*;
use crate::tls::PeerIdentity;

const AUDIENCE: &str = "https://portvagt.test/";
const TOKEN_ENDPOINT: &str = "https://portvagt.test/token";
/// The issuer names the test STS is pinned to: its SOSI cards' and its OIOSAML assertions'.
const ISSUERS: [&str; 2] = ["TEST1-NSP-STS", "http://sts.sundhedsdatastyrelsen.dk/"];

struct Fixture {
    pki: DevPki,
    /// An STS certificate from the same CA that the policy does NOT trust.
    other_sts: IssuedCert,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let pki = DevPki::generate().unwrap();
        let other_sts = pki.ca.issue_sts("Another STS").unwrap();
        Fixture { pki, other_sts }
    })
}

fn policy(allow_sha1: bool) -> AssertionPolicy {
    AssertionPolicy {
        signers: TrustedSigner::load_pem(
            fixture().pki.sts.cert_pem.as_bytes(),
            &ISSUERS.map(str::to_owned),
        )
        .unwrap(),
        allow_sha1,
        audiences: vec![AUDIENCE.to_owned()],
        min_authentication_level: 3,
        leeway: 60,
        max_lifetime: 24 * 3600,
        max_bytes: 64 * 1024,
        token_endpoint: TOKEN_ENDPOINT.into(),
    }
}

fn client() -> PeerIdentity {
    PeerIdentity::from_verified_leaf(&fixture().pki.client.cert_der).unwrap()
}

fn now() -> u64 {
    OffsetDateTime::now_utc().unix_timestamp() as u64
}

fn verify(xml: &str) -> Result<VerifiedAssertion, SamlError> {
    policy(false).verify(xml.as_bytes(), &client(), now())
}

fn user_card() -> String {
    SosiCard::user(&fixture().pki.client.cert_der)
        .sign(&fixture().pki.sts)
        .unwrap()
}

fn oiosaml() -> OiosamlAssertion {
    OiosamlAssertion::physician(&fixture().pki.client.cert_der, AUDIENCE, "1111111118")
}

#[test]
fn user_card_maps_every_attribute() {
    let card = verify(&user_card()).unwrap();
    assert_eq!(card.kind, AssertionKind::SosiCard);
    assert_eq!(card.card_type, CardType::User);
    assert_eq!(card.issuer, "TEST1-NSP-STS");
    assert_eq!(card.subject, "0501792275");
    assert_eq!(card.subject_format.as_deref(), Some("medcom:cprnumber"));
    assert_eq!(card.acr(), "dgws:4");
    assert_eq!(card.cpr.as_deref(), Some("0501792275"));
    assert_eq!(card.given_name.as_deref(), Some("Mette"));
    assert_eq!(card.family_name.as_deref(), Some("Kjær"));
    assert_eq!(card.role.as_deref(), Some("7170"));
    assert_eq!(card.authorization_id.as_deref(), Some("NS363"));
    assert_eq!(card.system_name.as_deref(), Some("Journalsystem Demo"));
    let provider = card.care_provider.unwrap();
    assert_eq!(
        (provider.kind.as_str(), provider.id.as_str()),
        ("medcom:cvrnumber", "12345678")
    );
    assert_eq!(provider.name.as_deref(), Some("Region Demo Sundhed"));
    assert!(card.signer.contains("TEST1-NSP-STS"));
}

#[test]
fn system_card_signed_rsa_sha1_needs_the_legacy_switch() {
    let mut card = SosiCard::system(&fixture().pki.client.cert_der);
    card.algorithm = SignatureAlgorithm::RsaSha1;
    let xml = card.sign(&fixture().pki.sts).unwrap();
    assert_eq!(verify(&xml).unwrap_err(), SamlError::UnsupportedAlgorithm);
    let verified = policy(true)
        .verify(xml.as_bytes(), &client(), now())
        .unwrap();
    assert_eq!(verified.card_type, CardType::System);
    assert_eq!(verified.acr(), "dgws:3");
    assert_eq!(verified.replay_id, card.card_id);
    assert_eq!(verified.cpr, None);
}

#[test]
fn dgws_1_0_timestamps_without_zone_and_the_upper_case_id_are_read() {
    let mut card = SosiCard::user(&fixture().pki.client.cert_der);
    card.timestamps_without_zone = true;
    card.id_attribute = "ID";
    let xml = card.sign(&fixture().pki.sts).unwrap();
    assert!(xml.contains(" ID=\"IDCard\""));
    let not_after = xml.split("NotOnOrAfter=\"").nth(1).unwrap();
    assert!(!not_after.split('"').next().unwrap().ends_with('Z'));
    let verified = verify(&xml).unwrap();
    assert_eq!(
        verified.not_on_or_after,
        card.not_on_or_after.unix_timestamp() as u64
    );
}

#[test]
fn oiosaml_assertion_maps_xua_attributes() {
    let assertion = oiosaml();
    let verified = verify(&assertion.sign(&fixture().pki.sts).unwrap()).unwrap();
    assert_eq!(verified.kind, AssertionKind::Oiosaml);
    assert_eq!(verified.replay_id, assertion.id);
    assert_eq!(verified.acr(), "idws:3");
    assert_eq!(verified.role.as_deref(), Some("7170"));
    assert_eq!(verified.purpose_of_use.as_deref(), Some("TREATMENT"));
    assert_eq!(verified.patient_cpr.as_deref(), Some("1111111118"));
    assert_eq!(verified.cpr.as_deref(), Some("0501792275"));
    let provider = verified.care_provider.unwrap();
    assert_eq!(provider.kind, "urn:oid:1.2.208.176.1.1");
    assert_eq!(provider.id, "123456789012345");
}

/// The signature element of a signed fixture.
fn signature_of(xml: &str) -> &str {
    let start = xml.find("<ds:Signature ").unwrap();
    let end = xml.find("</ds:Signature>").unwrap() + "</ds:Signature>".len();
    &xml[start..end]
}

#[test]
fn signature_wrapping_and_tampering_are_refused_each_for_its_reason() {
    let card = user_card();
    let signature = signature_of(&card).to_owned();
    let unsigned = card.replace(&signature, "");
    let forged = unsigned.replace(">7170<", ">5166<");
    let root_end = "</saml:Assertion>";
    let cases: Vec<(&str, String, SamlError)> = vec![
        ("stripped signature", unsigned.clone(), SamlError::SignatureMissing),
        ("altered attribute", card.replace(">7170<", ">5166<"), SamlError::DigestMismatch),
        (
            "signed assertion moved into Advice under a forged one with the same id",
            forged.replace(
                root_end,
                &format!("<saml:Advice>{card}</saml:Advice>{root_end}"),
            ),
            SamlError::IdCollision,
        ),
        (
            "signed assertion copied into ds:Object of the forged one's signature",
            forged.replace("id=\"IDCard\"", "id=\"Forged\"").replace(
                root_end,
                &signature.replace(
                    "</ds:Signature>",
                    &format!("<ds:Object>{unsigned}</ds:Object></ds:Signature>{root_end}"),
                ),
            ),
            SamlError::UnexpectedSignatureContent,
        ),
        (
            "second assertion beside the signed one",
            format!("<Envelope>{card}{forged}</Envelope>"),
            SamlError::NotAnAssertion,
        ),
        (
            "id collision with an element inside the assertion",
            card.replace(root_end, &format!("<saml:Advice ID=\"IDCard\"></saml:Advice>{root_end}")),
            SamlError::IdCollision,
        ),
        (
            "reference pointing elsewhere than the assertion read",
            card.replace("id=\"IDCard\"", "id=\"Other\""),
            SamlError::ReferenceMismatch,
        ),
        (
            "comment injected into NameID",
            card.replace(">0501792275</saml:NameID>", ">05017<!---->92275</saml:NameID>"),
            SamlError::CommentOrInstruction,
        ),
        (
            "saml prefix rebound to another namespace",
            card.replacen(
                "xmlns:saml=\"urn:oasis:names:tc:SAML:2.0:assertion\"",
                "xmlns:saml=\"urn:evil\"",
                1,
            ),
            SamlError::NotAnAssertion,
        ),
        (
            "attribute hidden in a statement of a foreign namespace",
            card.replace(
                root_end,
                &format!(
                    "<x:AttributeStatement xmlns:x=\"urn:x\"><x:Role>7170</x:Role>\
                     </x:AttributeStatement>{root_end}"
                ),
            ),
            SamlError::DigestMismatch,
        ),
        (
            "DTD with an entity",
            format!("<!DOCTYPE a [<!ENTITY e \"7170\">]>{card}"),
            SamlError::DtdRefused,
        ),
        (
            "billion laughs",
            format!(
                "<!DOCTYPE a [<!ENTITY a \"aaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;\">]>{}",
                card.replace(">Mette<", ">&b;<")
            ),
            SamlError::DtdRefused,
        ),
        (
            "HMAC signature method",
            card.replace(
                "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
                "http://www.w3.org/2000/09/xmldsig#hmac-sha1",
            ),
            SamlError::UnsupportedAlgorithm,
        ),
        (
            "extra transform (XPath)",
            card.replace(
                "<ds:Transforms>",
                "<ds:Transforms><ds:Transform Algorithm=\"http://www.w3.org/TR/1999/REC-xpath-19991116\"></ds:Transform>",
            ),
            SamlError::UnsupportedTransform,
        ),
        (
            "not XML",
            "<saml:Assertion".to_owned(),
            SamlError::Malformed,
        ),
        (
            "too large",
            card.replace(">Mette<", &format!(">{}<", "M".repeat(70_000))),
            SamlError::TooLarge,
        ),
    ];
    for (attack, xml, expected) in cases {
        assert_eq!(verify(&xml).unwrap_err(), expected, "{attack}");
    }
}

#[test]
fn untrusted_signers_are_refused_even_when_the_signature_is_good() {
    let pki = &fixture().pki;
    let by_other_sts = SosiCard::user(&pki.client.cert_der)
        .sign(&fixture().other_sts)
        .unwrap();
    assert_eq!(
        verify(&by_other_sts).unwrap_err(),
        SamlError::UntrustedSigner
    );

    // Without a certificate in KeyInfo, only the trusted keys are tried.
    let key_info_start = by_other_sts.rfind("<ds:KeyInfo>").unwrap();
    let key_info_end = by_other_sts.rfind("</ds:KeyInfo>").unwrap() + "</ds:KeyInfo>".len();
    let stripped = format!(
        "{}{}",
        &by_other_sts[..key_info_start],
        &by_other_sts[key_info_end..]
    );
    assert_eq!(verify(&stripped).unwrap_err(), SamlError::BadSignature);

    // The client signing its own card with its own certificate.
    let self_signed = SosiCard::user(&pki.client.cert_der)
        .sign(&pki.client)
        .unwrap();
    assert_eq!(
        verify(&self_signed).unwrap_err(),
        SamlError::UntrustedSigner
    );
}

#[test]
fn validity_window_audience_level_and_holder_of_key_are_enforced() {
    let pki = &fixture().pki;
    let sign = |card: SosiCard| card.sign(&pki.sts).unwrap();
    let now = OffsetDateTime::now_utc();

    let mut expired = SosiCard::user(&pki.client.cert_der);
    expired.not_before = now - time::Duration::hours(25);
    expired.not_on_or_after = now - time::Duration::hours(1);
    assert_eq!(verify(&sign(expired)).unwrap_err(), SamlError::Expired);

    let mut early = SosiCard::user(&pki.client.cert_der);
    early.not_before = now + time::Duration::hours(1);
    assert_eq!(verify(&sign(early)).unwrap_err(), SamlError::NotYetValid);

    let mut within_leeway = SosiCard::user(&pki.client.cert_der);
    within_leeway.not_before = now + time::Duration::seconds(30);
    assert!(verify(&sign(within_leeway)).is_ok());

    let mut level_2 = SosiCard::user(&pki.client.cert_der);
    level_2.level = 2;
    assert_eq!(verify(&sign(level_2)).unwrap_err(), SamlError::LevelTooLow);

    let for_employee = SosiCard::user(&pki.employee.cert_der);
    assert_eq!(
        verify(&sign(for_employee)).unwrap_err(),
        SamlError::HolderOfKeyMismatch
    );

    let mut unbound = SosiCard::system(&pki.client.cert_der);
    unbound.client_cert_der = None;
    assert_eq!(
        verify(&sign(unbound)).unwrap_err(),
        SamlError::NotHolderOfKey
    );

    let mut elsewhere = oiosaml();
    elsewhere.audience = "https://another-service.example/".into();
    assert_eq!(
        verify(&elsewhere.sign(&pki.sts).unwrap()).unwrap_err(),
        SamlError::WrongAudience
    );

    let mut other_holder = oiosaml();
    other_holder.client_cert_der = pki.employee.cert_der.clone();
    assert_eq!(
        verify(&other_holder.sign(&pki.sts).unwrap()).unwrap_err(),
        SamlError::HolderOfKeyMismatch
    );

    let bearer = oiosaml()
        .sign(&pki.sts)
        .unwrap()
        .replace("cm:holder-of-key", "cm:bearer");
    // The method is inside the signed assertion: changing it breaks the digest first.
    assert_eq!(verify(&bearer).unwrap_err(), SamlError::DigestMismatch);
}

/// A card as an independent implementation writes it: namespaces declared once at the top,
/// self-closing tags, indentation, attributes in another order, an InclusiveNamespaces list.
/// libxmlsec1 signs it; our canonicalizer must arrive at the same bytes to verify it.
fn xmlsec_template(client_cert_der: &[u8]) -> String {
    use base64::Engine as _;
    let hash = openssl::hash::hash(openssl::hash::MessageDigest::sha1(), client_cert_der).unwrap();
    let hash = base64::engine::general_purpose::STANDARD.encode(hash);
    let now = OffsetDateTime::now_utc();
    let format = |t: OffsetDateTime| {
        t.replace_nanosecond(0)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let (from, to) = (
        format(now - time::Duration::minutes(1)),
        format(now + time::Duration::hours(1)),
    );
    format!(
        r##"<?xml version="1.0" encoding="UTF-8"?>
<saml:Assertion xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" xmlns:ds="http://www.w3.org/2000/09/xmldsig#" xmlns:medcom="http://www.medcom.dk/dgws/2006/04/dgws-1.0.xsd" xmlns:sosi="http://www.sosi.dk/sosi/2006/04/sosi-1.0.xsd" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" Version="2.0" id="IDCard" IssueInstant="{from}">
    <saml:Issuer>TEST1-NSP-STS</saml:Issuer>
    <saml:Subject>
        <saml:NameID Format="medcom:cprnumber">0501792275</saml:NameID>
        <saml:SubjectConfirmation>
            <saml:ConfirmationMethod>urn:oasis:names:tc:SAML:2.0:cm:holder-of-key</saml:ConfirmationMethod>
            <saml:SubjectConfirmationData><ds:KeyInfo><ds:KeyName>OCESSignature</ds:KeyName></ds:KeyInfo></saml:SubjectConfirmationData>
        </saml:SubjectConfirmation>
    </saml:Subject>
    <saml:Conditions NotOnOrAfter="{to}" NotBefore="{from}"/>
    <saml:AttributeStatement id="IDCardData">
        <saml:Attribute Name="sosi:IDCardID"><saml:AttributeValue xsi:type="xs:string">card-&amp;-1</saml:AttributeValue></saml:Attribute>
        <saml:Attribute Name="sosi:IDCardVersion"><saml:AttributeValue>1.0.1</saml:AttributeValue></saml:Attribute>
        <saml:Attribute Name="sosi:IDCardType"><saml:AttributeValue>user</saml:AttributeValue></saml:Attribute>
        <saml:Attribute Name="sosi:AuthenticationLevel"><saml:AttributeValue>4</saml:AttributeValue></saml:Attribute>
        <saml:Attribute Name="sosi:OCESCertHash"><saml:AttributeValue>{hash}</saml:AttributeValue></saml:Attribute>
    </saml:AttributeStatement>
    <saml:AttributeStatement id="UserLog">
        <saml:Attribute Name="medcom:UserRole"><saml:AttributeValue>7170</saml:AttributeValue></saml:Attribute>
    </saml:AttributeStatement>
    <ds:Signature Id="OCESSignature">
        <ds:SignedInfo>
            <ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>
            <ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"/>
            <ds:Reference URI="#IDCard">
                <ds:Transforms>
                    <ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>
                    <ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"><ec:InclusiveNamespaces xmlns:ec="http://www.w3.org/2001/10/xml-exc-c14n#" PrefixList="xsi"/></ds:Transform>
                </ds:Transforms>
                <ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/>
                <ds:DigestValue/>
            </ds:Reference>
        </ds:SignedInfo>
        <ds:SignatureValue/>
        <ds:KeyInfo><ds:X509Data/></ds:KeyInfo>
    </ds:Signature>
</saml:Assertion>
"##
    )
}

/// Signs `template` with `xmlsec1 --sign` and the test STS key; `id` names the id attribute.
fn xmlsec_sign(template: &str, id: &str) -> String {
    let pki = &fixture().pki;
    let dir = tempfile::tempdir().unwrap();
    let template_path = dir.path().join("template.xml");
    let signed = dir.path().join("signed.xml");
    let key = dir.path().join("sts.key");
    let cert = dir.path().join("sts.crt");
    std::fs::write(&template_path, template).unwrap();
    std::fs::write(&key, &pki.sts.key_pem).unwrap();
    std::fs::write(&cert, &pki.sts.cert_pem).unwrap();
    let output = std::process::Command::new("xmlsec1")
        .arg("--sign")
        .arg("--privkey-pem")
        .arg(format!("{},{}", key.display(), cert.display()))
        .arg(format!("--id-attr:{id}"))
        .arg("urn:oasis:names:tc:SAML:2.0:assertion:Assertion")
        .arg("--output")
        .arg(&signed)
        .arg(&template_path)
        .output()
        .expect("xmlsec1 (Debian package xmlsec1) must be installed; `make test` installs it");
    assert!(
        output.status.success(),
        "xmlsec1 --sign failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read_to_string(&signed).unwrap()
}

#[test]
fn a_card_signed_by_libxmlsec1_verifies() {
    let xml = xmlsec_sign(&xmlsec_template(&fixture().pki.client.cert_der), "id");
    assert!(xml.contains("<ds:X509Certificate>"), "{xml}");
    let verified = verify(&xml).unwrap();
    assert_eq!(verified.replay_id, "card-&-1");
    assert_eq!(verified.role.as_deref(), Some("7170"));

    // And a change libxmlsec1 did not sign is caught.
    let tampered = xml.replace(">7170<", ">5166<");
    assert_eq!(verify(&tampered).unwrap_err(), SamlError::DigestMismatch);
}

/// An OIOSAML assertion in the default namespace (as ADFS-style issuers write them), for
/// libxmlsec1 to sign.
fn default_namespace_template() -> String {
    use base64::Engine as _;
    let certificate =
        base64::engine::general_purpose::STANDARD.encode(&fixture().pki.client.cert_der);
    let now = OffsetDateTime::now_utc();
    let format = |t: OffsetDateTime| {
        t.replace_nanosecond(0)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let (from, to) = (
        format(now - time::Duration::minutes(1)),
        format(now + time::Duration::hours(1)),
    );
    format!(
        r##"<Assertion xmlns="urn:oasis:names:tc:SAML:2.0:assertion" ID="_a1" IssueInstant="{from}" Version="2.0">
  <Issuer>http://sts.sundhedsdatastyrelsen.dk/</Issuer>
  <Signature xmlns="http://www.w3.org/2000/09/xmldsig#">
    <SignedInfo>
      <CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>
      <SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"/>
      <Reference URI="#_a1">
        <Transforms>
          <Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>
          <Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>
        </Transforms>
        <DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/>
        <DigestValue/>
      </Reference>
    </SignedInfo>
    <SignatureValue/>
  </Signature>
  <Subject>
    <NameID>C=DK,CN=Mette Kjær</NameID>
    <SubjectConfirmation Method="urn:oasis:names:tc:SAML:2.0:cm:holder-of-key">
      <SubjectConfirmationData><KeyInfo xmlns="http://www.w3.org/2000/09/xmldsig#"><X509Data><X509Certificate>{certificate}</X509Certificate></X509Data></KeyInfo></SubjectConfirmationData>
    </SubjectConfirmation>
  </Subject>
  <Conditions NotBefore="{from}" NotOnOrAfter="{to}">
    <AudienceRestriction><Audience>{AUDIENCE}</Audience></AudienceRestriction>
  </Conditions>
  <AttributeStatement>
    <Attribute Name="urn:oasis:names:tc:xspa:1.0:subject:role"><AttributeValue>7170</AttributeValue></Attribute>
    <Attribute Name="urn:oasis:names:tc:xacml:2.0:resource:resource-id"><AttributeValue>1111111118^^^&amp;1.2.208.176.1.2&amp;ISO</AttributeValue></Attribute>
  </AttributeStatement>
</Assertion>
"##
    )
}

#[test]
fn a_default_namespace_assertion_verifies_and_a_prefix_hidden_behind_unicode_space_does_not() {
    let xml = xmlsec_sign(&default_namespace_template(), "ID");
    let verified = verify(&xml).unwrap();
    assert_eq!(verified.patient_cpr.as_deref(), Some("1111111118"));

    // U+1680 is whitespace to Rust but a name character to XML: moving the patient attribute
    // into another namespace behind such a prefix must not leave the digest intact.
    let hidden = xml
        .replace(
            "<Attribute Name=\"urn:oasis:names:tc:xacml:2.0:resource:resource-id\">",
            "<p\u{1680}:Attribute xmlns:p\u{1680}=\"urn:x\" Name=\"urn:oasis:names:tc:xacml:2.0:resource:resource-id\">",
        )
        .replace(
            "&amp;ISO</AttributeValue></Attribute>",
            "&amp;ISO</AttributeValue></p\u{1680}:Attribute>",
        );
    assert_ne!(hidden, xml);
    assert_eq!(verify(&hidden).unwrap_err(), SamlError::DigestMismatch);
}

#[test]
fn costly_inputs_are_refused_before_any_canonicalization() {
    let card = user_card();
    let root_end = "</saml:Assertion>";
    let deep = format!(
        "{}{}{}",
        "<saml:Advice>".repeat(40),
        "",
        "</saml:Advice>".repeat(40)
    );
    assert_eq!(
        verify(&card.replace(root_end, &format!("{deep}{root_end}"))).unwrap_err(),
        SamlError::TooLarge
    );
    let prefixes: Vec<String> = (0..17).map(|i| format!("p{i}")).collect();
    let many = card.replace(
        "<ds:Transform Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\"></ds:Transform>",
        &format!(
            "<ds:Transform Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\">\
             <ec:InclusiveNamespaces xmlns:ec=\"http://www.w3.org/2001/10/xml-exc-c14n#\" \
             PrefixList=\"{}\"></ec:InclusiveNamespaces></ds:Transform>",
            prefixes.join(" ")
        ),
    );
    assert_ne!(many, card);
    assert_eq!(verify(&many).unwrap_err(), SamlError::UnsupportedTransform);

    let mut long_lived = SosiCard::user(&fixture().pki.client.cert_der);
    long_lived.not_on_or_after = OffsetDateTime::now_utc() + time::Duration::days(30);
    assert_eq!(
        verify(&long_lived.sign(&fixture().pki.sts).unwrap()).unwrap_err(),
        SamlError::LifetimeTooLong
    );
}

#[test]
fn a_trusted_sts_signs_only_for_the_issuers_it_is_pinned_to() {
    // A good signature by the trusted STS, on a card claiming another STS's name.
    let mut card = SosiCard::user(&fixture().pki.client.cert_der);
    card.issuer = "OTHER-REGION-STS".into();
    let xml = card.sign(&fixture().pki.sts).unwrap();
    assert_eq!(verify(&xml).unwrap_err(), SamlError::IssuerNotAllowed);
    let mut assertion = oiosaml();
    assertion.issuer = "https://sts.other.example/".into();
    let xml = assertion.sign(&fixture().pki.sts).unwrap();
    assert_eq!(verify(&xml).unwrap_err(), SamlError::IssuerNotAllowed);
    // Pinned to the SOSI name only, the same STS's OIOSAML assertions are refused.
    let mut narrow = policy(false);
    narrow.signers =
        TrustedSigner::load_pem(fixture().pki.sts.cert_pem.as_bytes(), &[ISSUERS[0].into()])
            .unwrap();
    let xml = oiosaml().sign(&fixture().pki.sts).unwrap();
    assert_eq!(
        narrow.verify(xml.as_bytes(), &client(), now()).unwrap_err(),
        SamlError::IssuerNotAllowed
    );
    assert!(
        narrow
            .verify(user_card().as_bytes(), &client(), now())
            .is_ok()
    );
    // No issuer at all is no pinning.
    assert!(TrustedSigner::load_pem(fixture().pki.sts.cert_pem.as_bytes(), &[]).is_err());
    // The replay key's signer is the certificate, whatever the card claims.
    let card = verify(&user_card()).unwrap();
    assert_eq!(card.signer_fingerprint.len(), 64);
    assert_eq!(
        card.signer_fingerprint,
        policy(false).signers[0].fingerprint()
    );
}

#[test]
fn the_subject_confirmation_must_be_for_this_token_endpoint_and_unsolicited() {
    let with = |confirmation: &[(&'static str, &str)]| {
        let mut assertion = oiosaml();
        assertion.confirmation = confirmation
            .iter()
            .map(|(name, value)| (*name, (*value).to_owned()))
            .collect();
        verify(&assertion.sign(&fixture().pki.sts).unwrap())
    };
    let good = with(&[("Recipient", TOKEN_ENDPOINT), ("Address", "192.0.2.7")]).unwrap();
    assert_eq!(good.confirmation_address.as_deref(), Some("192.0.2.7"));
    assert_eq!(with(&[]).unwrap().confirmation_address, None);
    for recipient in [
        "https://other-gateway.test/token",
        "https://portvagt.test/token/",
        "https://portvagt.test/",
        "",
    ] {
        assert_eq!(
            with(&[("Recipient", recipient)]).unwrap_err(),
            SamlError::WrongRecipient,
            "{recipient}"
        );
    }
    assert_eq!(
        with(&[("InResponseTo", "_request-1")]).unwrap_err(),
        SamlError::UnsolicitedResponseExpected
    );
    assert_eq!(
        with(&[("Recipient", TOKEN_ENDPOINT), ("InResponseTo", "")]).unwrap_err(),
        SamlError::UnsolicitedResponseExpected
    );
}
