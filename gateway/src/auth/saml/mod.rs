//! SAML assertions from the SOAP world: SOSI ID cards (DGWS 1.0/1.0.1) and OIOSAML / IDWS XUA
//! assertions, verified so that they can be exchanged for a Portvagt token
//! ([`crate::exchange`]).
//!
//! Order of checks, each refusing with its own [`SamlError`]: size; XML parsing with DTDs (so
//! entities) refused and a node limit; no comments or processing instructions anywhere (they
//! are what comment-injection attacks on `NameID` hide behind); the document element is a SAML
//! 2.0 `Assertion` with exactly one id (`ID`, or DGWS 1.0's `id`) that no other element in the
//! document shares; its enveloped signature ([`dsig`]) is by a trusted STS certificate and
//! references that id; only then is anything read, and only from the assertion's own children
//! ([`assertion`]): the `Issuer` (one the signing certificate is pinned to), validity window,
//! audience, subject confirmation (`Recipient` this token endpoint, no `InResponseTo`), card
//! type, authentication level, holder-of-key. Replay and the confirmation's `Address` are
//! checked by the caller, which owns the (possibly shared) cache and knows the connection.

mod assertion;
mod c14n;
mod dsig;
pub mod replay;

use roxmltree::{Document, ParsingOptions};

pub use assertion::{AssertionKind, CardType, CareProvider, VerifiedAssertion};
pub use dsig::TrustedSigner;

use crate::tls::PeerIdentity;

pub(crate) const SAML_NS: &str = "urn:oasis:names:tc:SAML:2.0:assertion";

/// Why an assertion was refused. The code ([`SamlError::code`]) is stable: it is the
/// `error_description` prefix of the token endpoint's answer and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SamlError {
    #[error("the assertion is larger or nested deeper than allowed")]
    TooLarge,
    #[error("the assertion is not well-formed XML or not valid base64")]
    Malformed,
    #[error("the assertion contains a document type declaration; DTDs and entities are refused")]
    DtdRefused,
    #[error("the assertion contains a comment or processing instruction")]
    CommentOrInstruction,
    #[error("a prefix as written is not bound to the namespace the element or attribute is in")]
    NamespaceConfusion,
    #[error("the document is not a SAML 2.0 Assertion")]
    NotAnAssertion,
    #[error("the assertion has no id, or both ID and id")]
    MissingId,
    #[error("another element in the document carries the assertion's id")]
    IdCollision,
    #[error("the assertion is not signed")]
    SignatureMissing,
    #[error("the document holds more than one signature")]
    MultipleSignatures,
    #[error("the signature holds elements XML-DSig does not define there")]
    UnexpectedSignatureContent,
    #[error("the signature's reference does not point to the assertion")]
    ReferenceMismatch,
    #[error("the signature's transforms are not enveloped-signature then exclusive c14n")]
    UnsupportedTransform,
    #[error("the signature or digest algorithm is not allowed")]
    UnsupportedAlgorithm,
    #[error("the assertion's content does not match its signed digest")]
    DigestMismatch,
    #[error("the signature is not by a trusted STS certificate")]
    UntrustedSigner,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the signing STS certificate may not sign for the assertion's Issuer")]
    IssuerNotAllowed,
    #[error("the subject confirmation names another Recipient than this token endpoint")]
    WrongRecipient,
    #[error("the subject confirmation answers a request (InResponseTo) this gateway never sent")]
    UnsolicitedResponseExpected,
    #[error("the subject confirmation names another Address than the connection's")]
    WrongAddress,
    #[error("the assertion has expired")]
    Expired,
    #[error("the assertion is not valid yet")]
    NotYetValid,
    #[error("the assertion has no validity window (Conditions NotOnOrAfter)")]
    MissingConditions,
    #[error("the assertion is valid for longer than accepted")]
    LifetimeTooLong,
    #[error("the assertion is not meant for this audience")]
    WrongAudience,
    #[error("the assertion is not holder-of-key")]
    NotHolderOfKey,
    #[error("the assertion names another client certificate")]
    HolderOfKeyMismatch,
    #[error("the authentication level is below the required minimum")]
    LevelTooLow,
    #[error("the ID card type is not user or system")]
    InvalidCardType,
    #[error("a required element or attribute is missing")]
    MissingAttribute,
    #[error("an element or attribute has an invalid or ambiguous value")]
    InvalidAttribute,
    #[error("the assertion was already exchanged")]
    Replayed,
}

impl SamlError {
    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            SamlError::TooLarge => "assertion-too-large",
            SamlError::Malformed => "malformed-assertion",
            SamlError::DtdRefused => "dtd-refused",
            SamlError::CommentOrInstruction => "comment-or-instruction",
            SamlError::NamespaceConfusion => "namespace-confusion",
            SamlError::NotAnAssertion => "not-an-assertion",
            SamlError::MissingId => "missing-id",
            SamlError::IdCollision => "id-collision",
            SamlError::SignatureMissing => "signature-missing",
            SamlError::MultipleSignatures => "multiple-signatures",
            SamlError::UnexpectedSignatureContent => "unexpected-signature-content",
            SamlError::ReferenceMismatch => "reference-mismatch",
            SamlError::UnsupportedTransform => "unsupported-transform",
            SamlError::UnsupportedAlgorithm => "unsupported-algorithm",
            SamlError::DigestMismatch => "digest-mismatch",
            SamlError::UntrustedSigner => "untrusted-signer",
            SamlError::BadSignature => "bad-signature",
            SamlError::IssuerNotAllowed => "issuer-not-allowed",
            SamlError::WrongRecipient => "wrong-recipient",
            SamlError::UnsolicitedResponseExpected => "in-response-to-refused",
            SamlError::WrongAddress => "wrong-address",
            SamlError::Expired => "assertion-expired",
            SamlError::NotYetValid => "assertion-not-yet-valid",
            SamlError::MissingConditions => "missing-conditions",
            SamlError::LifetimeTooLong => "assertion-lifetime-too-long",
            SamlError::WrongAudience => "wrong-audience",
            SamlError::NotHolderOfKey => "not-holder-of-key",
            SamlError::HolderOfKeyMismatch => "holder-of-key-mismatch",
            SamlError::LevelTooLow => "authentication-level-too-low",
            SamlError::InvalidCardType => "invalid-card-type",
            SamlError::MissingAttribute => "missing-attribute",
            SamlError::InvalidAttribute => "invalid-attribute",
            SamlError::Replayed => "assertion-replayed",
        }
    }
}

/// What an assertion must satisfy, from `[token_exchange]`.
#[derive(Debug)]
pub struct AssertionPolicy {
    /// The STS certificates whose signatures are trusted.
    pub signers: Vec<TrustedSigner>,
    /// Accept SHA-1 digests and RSA-SHA1 signatures (legacy DGWS cards from the NSP STS).
    pub allow_sha1: bool,
    /// Accepted `AudienceRestriction/Audience` values (required for OIOSAML assertions).
    pub audiences: Vec<String>,
    /// The lowest acceptable authentication level (DGWS: 1-4).
    pub min_authentication_level: u8,
    /// Clock leeway for the validity window, seconds.
    pub leeway: u64,
    /// The longest validity an assertion may have left, seconds (DGWS cards live 24 h).
    pub max_lifetime: u64,
    /// The largest assertion accepted, bytes.
    pub max_bytes: usize,
    /// This gateway's token endpoint URL: the only `Recipient` a subject confirmation may name.
    pub token_endpoint: String,
}

/// The most XML nodes an assertion may have (a SOSI card has about 150).
const NODES_LIMIT: u32 = 4096;
/// The deepest element nesting accepted (a SOSI card nests 6 deep); canonicalization recurses.
const DEPTH_LIMIT: usize = 32;

impl AssertionPolicy {
    /// Verifies the assertion `xml`, presented on a connection with client certificate `peer`,
    /// at `now` (seconds since the epoch).
    pub fn verify(
        &self,
        xml: &[u8],
        peer: &PeerIdentity,
        now: u64,
    ) -> Result<VerifiedAssertion, SamlError> {
        if xml.len() > self.max_bytes {
            return Err(SamlError::TooLarge);
        }
        let text = std::str::from_utf8(xml).map_err(|_| SamlError::Malformed)?;
        let options = ParsingOptions {
            allow_dtd: false,
            nodes_limit: NODES_LIMIT,
        };
        let document = Document::parse_with_options(text, options).map_err(|e| match e {
            roxmltree::Error::DtdDetected => SamlError::DtdRefused,
            roxmltree::Error::NodesLimitReached => SamlError::TooLarge,
            _ => SamlError::Malformed,
        })?;
        if document.descendants().any(|n| n.is_comment() || n.is_pi()) {
            return Err(SamlError::CommentOrInstruction);
        }
        // Depth in one pass: nodes come in document order, parents before children.
        let mut depth = vec![0usize; document.descendants().count()];
        for node in document.descendants().skip(1) {
            let parent = node
                .parent()
                .and_then(|p| depth.get(p.id().get_usize()).copied())
                .unwrap_or(0);
            if parent + 1 > DEPTH_LIMIT {
                return Err(SamlError::TooLarge);
            }
            if let Some(slot) = depth.get_mut(node.id().get_usize()) {
                *slot = parent + 1;
            }
        }
        if !c14n::prefixes_consistent(&document) {
            return Err(SamlError::NamespaceConfusion);
        }
        let root = document.root_element();
        if !root.has_tag_name((SAML_NS, "Assertion")) || root.attribute("Version") != Some("2.0") {
            return Err(SamlError::NotAnAssertion);
        }
        let id = match (root.attribute("ID"), root.attribute("id")) {
            (Some(id), None) | (None, Some(id)) if !id.is_empty() => id,
            _ => return Err(SamlError::MissingId),
        };
        let carriers = document
            .descendants()
            .filter(|n| {
                n.attributes()
                    .any(|a| matches!(a.name(), "ID" | "id" | "Id") && a.value() == id)
            })
            .count();
        if carriers != 1 {
            return Err(SamlError::IdCollision);
        }
        let algorithms = dsig::Algorithms {
            allow_sha1: self.allow_sha1,
        };
        let signer = dsig::verify_enveloped(root, id, &self.signers, algorithms)?;
        assertion::read(root, self, peer, now, signer)
    }
}

#[cfg(test)]
mod tests;
