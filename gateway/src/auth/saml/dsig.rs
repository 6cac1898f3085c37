//! The enveloped XML signature of a SAML assertion ([XML-DSig 1.1], [SAML core §5.4]),
//! checked the strict way: the assertion being read must be THE signed element.
//!
//! - exactly one `ds:Signature`, a direct child of the assertion, and no other signature in
//!   the document;
//! - the signature holds only XML-DSig elements (`SignedInfo`, `SignatureValue`, `KeyInfo`):
//!   no `ds:Object`, nothing foreign a wrapped assertion could hide in;
//! - exactly one `Reference`, whose `URI` is `#` + the assertion's own id;
//! - transforms exactly enveloped-signature then exclusive c14n; canonicalization of
//!   `SignedInfo` exclusive c14n; SHA-256 digests and RSA-SHA256 signatures (SHA-1 only for
//!   legacy DGWS cards, when the operator allows them);
//! - the key is one of the configured trusted STS certificates. A certificate in `KeyInfo` only
//!   selects among them: one that is not trusted is refused, however well it signs.
//!
//! [XML-DSig 1.1]: https://www.w3.org/TR/xmldsig-core1/
//! [SAML core §5.4]: https://docs.oasis-open.org/security/saml/v2.0/saml-core-2.0-os.pdf

use base64::Engine as _;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::sign::Verifier;
use openssl::x509::X509;
use roxmltree::Node;

use super::SamlError;
use super::c14n::canonicalize;

pub(crate) const DSIG_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
const EXC_C14N_NS: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";
const RSA_SHA1: &str = "http://www.w3.org/2000/09/xmldsig#rsa-sha1";
const SHA256: &str = "http://www.w3.org/2001/04/xmlenc#sha256";
const SHA1: &str = "http://www.w3.org/2000/09/xmldsig#sha1";

/// A configured STS certificate whose signatures are trusted.
#[derive(Clone)]
pub struct TrustedSigner {
    subject: String,
    /// SHA-256 of the certificate's public key (SubjectPublicKeyInfo), hex: what replay
    /// protection keys on. The key, not the certificate: `KeyInfo` is not signed, so which of
    /// two certificates with one key "signed" is the presenter's choice.
    fingerprint: String,
    /// The `saml:Issuer` values this certificate may sign for.
    issuers: Vec<String>,
    der: Vec<u8>,
    key: PKey<Public>,
}

impl std::fmt::Debug for TrustedSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedSigner")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl TrustedSigner {
    /// Reads every certificate of a PEM file, each allowed to sign for `issuers` (and no
    /// other `saml:Issuer`). RSA keys of at least 2048 bits only.
    pub fn load_pem(pem: &[u8], issuers: &[String]) -> Result<Vec<TrustedSigner>, String> {
        if issuers.iter().all(|issuer| issuer.trim().is_empty()) {
            return Err("names no issuers it may sign for".into());
        }
        let certs = X509::stack_from_pem(pem).map_err(|e| format!("not PEM certificates: {e}"))?;
        if certs.is_empty() {
            return Err("no certificate in the file".into());
        }
        certs
            .into_iter()
            .map(|cert| {
                let key = cert.public_key().map_err(|e| e.to_string())?;
                let rsa = key
                    .rsa()
                    .map_err(|_| "the STS certificate's key is not RSA".to_owned())?;
                if rsa.size() * 8 < 2048 {
                    return Err("the STS certificate's RSA key is shorter than 2048 bits".into());
                }
                let subject = cert
                    .subject_name()
                    .entries()
                    .filter_map(|entry| entry.data().to_string().ok())
                    .collect::<Vec<_>>()
                    .join(", ");
                let der = cert.to_der().map_err(|e| e.to_string())?;
                let spki = key.public_key_to_der().map_err(|e| e.to_string())?;
                let fingerprint = openssl::hash::hash(MessageDigest::sha256(), &spki)
                    .map_err(|e| e.to_string())?
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                Ok(TrustedSigner {
                    subject,
                    fingerprint,
                    issuers: issuers.to_vec(),
                    der,
                    key,
                })
            })
            .collect()
    }

    /// The certificate's subject, for logs.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// SHA-256 of the certificate's public key (DER SubjectPublicKeyInfo), lower-case hex.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The issuer names it is pinned to.
    pub fn issuers(&self) -> &[String] {
        &self.issuers
    }

    /// Whether this certificate may sign assertions whose `saml:Issuer` is `issuer`.
    pub fn may_sign_for(&self, issuer: &str) -> bool {
        self.issuers.iter().any(|allowed| allowed == issuer)
    }
}

/// Which digests and signature methods are acceptable.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Algorithms {
    pub(crate) allow_sha1: bool,
}

/// Verifies the enveloped signature of `assertion`, whose id is `id`, and returns the trusted
/// signer that made it.
pub(crate) fn verify_enveloped<'t>(
    assertion: Node<'_, '_>,
    id: &str,
    trusted: &'t [TrustedSigner],
    algorithms: Algorithms,
) -> Result<&'t TrustedSigner, SamlError> {
    let mut signatures = assertion
        .children()
        .filter(|n| n.has_tag_name((DSIG_NS, "Signature")));
    let signature = signatures.next().ok_or(SamlError::SignatureMissing)?;
    let everywhere = assertion
        .document()
        .descendants()
        .filter(|n| n.has_tag_name((DSIG_NS, "Signature")))
        .count();
    if signatures.next().is_some() || everywhere != 1 {
        return Err(SamlError::MultipleSignatures);
    }
    if signature
        .descendants()
        .filter(|n| n.is_element())
        .any(|n| !matches!(n.tag_name().namespace(), Some(DSIG_NS | EXC_C14N_NS)))
    {
        return Err(SamlError::UnexpectedSignatureContent);
    }

    let mut parts = signature.children().filter(|n| n.is_element());
    let signed_info = parts
        .next()
        .filter(|n| n.has_tag_name((DSIG_NS, "SignedInfo")))
        .ok_or(SamlError::UnexpectedSignatureContent)?;
    let signature_value = parts
        .next()
        .filter(|n| n.has_tag_name((DSIG_NS, "SignatureValue")))
        .ok_or(SamlError::UnexpectedSignatureContent)?;
    let key_info = match parts.next() {
        None => None,
        Some(n) if n.has_tag_name((DSIG_NS, "KeyInfo")) => Some(n),
        Some(_) => return Err(SamlError::UnexpectedSignatureContent),
    };
    if parts.next().is_some() {
        return Err(SamlError::UnexpectedSignatureContent);
    }

    // SignedInfo: CanonicalizationMethod, SignatureMethod, one Reference.
    let mut info = signed_info.children().filter(|n| n.is_element());
    let c14n_method = info
        .next()
        .filter(|n| n.has_tag_name((DSIG_NS, "CanonicalizationMethod")))
        .ok_or(SamlError::UnexpectedSignatureContent)?;
    if c14n_method.attribute("Algorithm") != Some(EXC_C14N) {
        return Err(SamlError::UnsupportedAlgorithm);
    }
    let signed_info_prefixes = inclusive_prefixes(c14n_method)?;
    let method = info
        .next()
        .filter(|n| n.has_tag_name((DSIG_NS, "SignatureMethod")) && childless(*n))
        .ok_or(SamlError::UnexpectedSignatureContent)?;
    let signature_digest = match method.attribute("Algorithm") {
        Some(RSA_SHA256) => MessageDigest::sha256(),
        Some(RSA_SHA1) if algorithms.allow_sha1 => MessageDigest::sha1(),
        _ => return Err(SamlError::UnsupportedAlgorithm),
    };
    let reference = info
        .next()
        .filter(|n| n.has_tag_name((DSIG_NS, "Reference")))
        .ok_or(SamlError::UnexpectedSignatureContent)?;
    if info.next().is_some() {
        return Err(SamlError::ReferenceMismatch);
    }
    if reference.attribute("URI").and_then(|u| u.strip_prefix('#')) != Some(id) {
        return Err(SamlError::ReferenceMismatch);
    }

    // Reference: Transforms (enveloped, exc-c14n), DigestMethod, DigestValue.
    let mut reference_parts = reference.children().filter(|n| n.is_element());
    let transforms = reference_parts
        .next()
        .filter(|n| n.has_tag_name((DSIG_NS, "Transforms")))
        .ok_or(SamlError::UnsupportedTransform)?;
    let transforms: Vec<_> = transforms.children().filter(|n| n.is_element()).collect();
    let [enveloped, exclusive] = transforms.as_slice() else {
        return Err(SamlError::UnsupportedTransform);
    };
    if !enveloped.has_tag_name((DSIG_NS, "Transform"))
        || enveloped.attribute("Algorithm") != Some(ENVELOPED)
        || !childless(*enveloped)
        || !exclusive.has_tag_name((DSIG_NS, "Transform"))
        || exclusive.attribute("Algorithm") != Some(EXC_C14N)
    {
        return Err(SamlError::UnsupportedTransform);
    }
    let reference_prefixes = inclusive_prefixes(*exclusive)?;
    let digest_method = reference_parts
        .next()
        .filter(|n| n.has_tag_name((DSIG_NS, "DigestMethod")) && childless(*n))
        .ok_or(SamlError::UnexpectedSignatureContent)?;
    let digest = match digest_method.attribute("Algorithm") {
        Some(SHA256) => MessageDigest::sha256(),
        Some(SHA1) if algorithms.allow_sha1 => MessageDigest::sha1(),
        _ => return Err(SamlError::UnsupportedAlgorithm),
    };
    let digest_value = reference_parts
        .next()
        .filter(|n| n.has_tag_name((DSIG_NS, "DigestValue")))
        .ok_or(SamlError::UnexpectedSignatureContent)?;
    if reference_parts.next().is_some() {
        return Err(SamlError::UnexpectedSignatureContent);
    }

    // The signature over SignedInfo first, by a trusted key: SignedInfo is small and fully
    // checked above, so nothing an attacker controls costs work before a trusted key vouches
    // for it.
    let canonical_info = canonicalize(signed_info, None, &signed_info_prefixes);
    let signature_bytes = base64_content(signature_value)?;
    let candidates: Vec<&TrustedSigner> = match key_info.and_then(embedded_certificate) {
        Some(der) => {
            let der = der?;
            vec![
                trusted
                    .iter()
                    .find(|signer| signer.der == der)
                    .ok_or(SamlError::UntrustedSigner)?,
            ]
        }
        None => trusted.iter().collect(),
    };
    let signer = candidates
        .into_iter()
        .find(|signer| verifies(signer, signature_digest, &canonical_info, &signature_bytes))
        .ok_or(SamlError::BadSignature)?;

    // Then the digest of the assertion without its signature.
    let canonical = canonicalize(assertion, Some(signature.id()), &reference_prefixes);
    let computed = openssl::hash::hash(digest, &canonical).map_err(|_| SamlError::Malformed)?;
    let expected = base64_content(digest_value)?;
    if computed.as_ref() != expected.as_slice() {
        return Err(SamlError::DigestMismatch);
    }
    Ok(signer)
}

fn verifies(signer: &TrustedSigner, digest: MessageDigest, data: &[u8], signature: &[u8]) -> bool {
    Verifier::new(digest, &signer.key)
        .and_then(|mut verifier| verifier.verify_oneshot(signature, data))
        .unwrap_or(false)
}

/// The most prefixes an `InclusiveNamespaces PrefixList` may name (real ones name one or two;
/// each costs work on every element).
const MAX_INCLUSIVE_PREFIXES: usize = 16;

/// The `PrefixList` of the one optional `ec:InclusiveNamespaces` child of a canonicalization
/// method or transform, which may have no other child.
fn inclusive_prefixes<'a>(method: Node<'a, '_>) -> Result<Vec<&'a str>, SamlError> {
    let mut children = method.children().filter(|n| n.is_element());
    let list = match children.next() {
        None => return Ok(Vec::new()),
        Some(n) if n.has_tag_name((EXC_C14N_NS, "InclusiveNamespaces")) && childless(n) => {
            n.attribute("PrefixList").unwrap_or("")
        }
        Some(_) => return Err(SamlError::UnexpectedSignatureContent),
    };
    if children.next().is_some() {
        return Err(SamlError::UnexpectedSignatureContent);
    }
    let mut prefixes: Vec<&str> = list
        .split([' ', '\t', '\r', '\n'])
        .filter(|p| !p.is_empty())
        .collect();
    prefixes.sort_unstable();
    prefixes.dedup();
    if prefixes.len() > MAX_INCLUSIVE_PREFIXES {
        return Err(SamlError::UnsupportedTransform);
    }
    Ok(prefixes)
}

/// Whether `node` has no element children.
fn childless(node: Node<'_, '_>) -> bool {
    !node.children().any(|n| n.is_element())
}

/// The DER of the first `ds:X509Certificate` in `KeyInfo`, if there is one.
fn embedded_certificate(key_info: Node<'_, '_>) -> Option<Result<Vec<u8>, SamlError>> {
    key_info
        .descendants()
        .find(|n| n.has_tag_name((DSIG_NS, "X509Certificate")))
        .map(base64_content)
}

/// The base64 text of `node` (whitespace, as XML-DSig writers wrap it, ignored).
pub(crate) fn base64_content(node: Node<'_, '_>) -> Result<Vec<u8>, SamlError> {
    if node.children().any(|n| !n.is_text()) {
        return Err(SamlError::Malformed);
    }
    let text: String = node
        .children()
        .filter_map(|n| n.text())
        .flat_map(str::chars)
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| SamlError::Malformed)
}
