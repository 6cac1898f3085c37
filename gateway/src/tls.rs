//! The client-facing TLS configuration (rustls) and the client certificate identity.
//!
//! Client certificates are REQUIRED and verified by webpki against the configured CA bundle,
//! with every configured CRL checked for every certificate in the chain (RFC 5280 §6.3). The
//! verified leaf becomes a [`PeerIdentity`]: subject, OCES3 `serialNumber` (UUID) and
//! `organizationIdentifier` (CVR), and the SHA-256 thumbprint that RFC 8705 binds tokens to.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use rustls::RootCertStore;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoClientAuth, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::config::{ConfigError, TlsConfig};

/// Builds the rustls server config: TLS 1.2 and 1.3 only, aws-lc-rs, ALPN h2 and http/1.1.
pub fn server_config(config: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let (chain, key) = certificate_and_key(config)?;
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&config.client_ca, "tls.client_ca")? {
        roots.add(cert).map_err(|e| {
            ConfigError::new("tls.client_ca", format!("not a usable CA certificate: {e}"))
        })?;
    }
    let mut crls = Vec::new();
    for (index, path) in config.crls.iter().enumerate() {
        crls.extend(
            read_crls(path)
                .map_err(|message| ConfigError::new(format!("tls.crls[{index}]"), message))?,
        );
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        // A CRL past its nextUpdate no longer proves anything: refuse rather than trust it.
        .enforce_revocation_expiration()
        .build()
        .map_err(|e| {
            ConfigError::new("tls.crls", format!("cannot build the client verifier: {e}"))
        })?;
    with_server_certificate(chain, key, provider, verifier)
}

/// The citizen listener's rustls config: the same certificate, protocols and ALPN, and no
/// client certificate requested (citizens' browsers have none; their token is the credential).
pub fn citizen_server_config(config: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let (chain, key) = certificate_and_key(config)?;
    with_server_certificate(chain, key, provider, Arc::new(NoClientAuth))
}

/// `[tls]`'s certificate chain and key.
fn certificate_and_key(
    config: &TlsConfig,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ConfigError> {
    let chain = read_certs(&config.cert, "tls.cert")?;
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|e| ConfigError::new("tls.key", format!("{}: {e}", config.key.display())))?;
    Ok((chain, key))
}

/// The server config with `chain` and `key`, `client_verifier`, the safe protocol versions and
/// ALPN h2 and http/1.1.
fn with_server_certificate(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    client_verifier: Arc<dyn ClientCertVerifier>,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new("tls", e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain, key)
        .map_err(|e| ConfigError::new("tls.key", format!("does not match tls.cert: {e}")))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

fn read_certs(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConfigError::new(field, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            field,
            format!("{}: no certificate in the file", path.display()),
        ));
    }
    Ok(certs)
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.starts_with(b"-----BEGIN") {
        let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if crls.is_empty() {
            return Err(format!("{}: no CRL in the file", path.display()));
        }
        Ok(crls)
    } else {
        Ok(vec![CertificateRevocationListDer::from(bytes)])
    }
}

/// What kind of OCES3 certificate the client presented, by its `serialNumber` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateKind {
    /// `UI:DK-O:G:<uuid>`: an organisation or system certificate.
    Organisation,
    /// `UI:DK-E:G:<uuid>`: an employee certificate.
    Employee,
    /// Anything else (OCES2, foreign, test).
    Other,
}

/// The verified client certificate, as later layers need it. Made only from a certificate that
/// rustls has already verified.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    /// False on the citizen listener, where no certificate is asked for: nothing can be bound
    /// to such a connection.
    certificate: bool,
    subject: String,
    serial_number: Option<String>,
    kind: CertificateKind,
    uuid: Option<String>,
    cvr: Option<String>,
    /// `O=`: the organisation's name.
    organisation_name: Option<String>,
    thumbprint: String,
    sha256: [u8; 32],
    /// SHA-1 of the DER, for DGWS `OCESCertHash` only.
    sha1: [u8; 20],
}

impl PeerIdentity {
    /// Reads the identity of a verified leaf certificate (DER).
    pub fn from_verified_leaf(der: &[u8]) -> Option<PeerIdentity> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let attribute = |oid: &str| {
            cert.subject()
                .iter_attributes()
                .find(|attr| attr.attr_type().to_id_string() == oid)
                .and_then(|attr| attr.as_str().ok().map(str::to_owned))
        };
        let serial_number = attribute("2.5.4.5");
        let (kind, uuid) = match serial_number.as_deref() {
            Some(s) if s.starts_with("UI:DK-O:G:") => {
                (CertificateKind::Organisation, Some(s[10..].to_owned()))
            }
            Some(s) if s.starts_with("UI:DK-E:G:") => {
                (CertificateKind::Employee, Some(s[10..].to_owned()))
            }
            _ => (CertificateKind::Other, None),
        };
        let cvr = attribute("2.5.4.97").and_then(|v| v.strip_prefix("NTRDK-").map(str::to_owned));
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
        Some(PeerIdentity {
            certificate: true,
            subject: cert.subject().to_string(),
            serial_number,
            kind,
            uuid,
            cvr,
            organisation_name: attribute("2.5.4.10"),
            thumbprint: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref()),
            sha256: digest.as_ref().try_into().ok()?,
            sha1: sha1.as_ref().try_into().ok()?,
        })
    }

    /// A connection without a client certificate (the citizen listener). It matches no
    /// certificate binding: [`PeerIdentity::has_certificate`] is false, and its thumbprints
    /// are empty.
    pub fn without_certificate() -> PeerIdentity {
        PeerIdentity {
            certificate: false,
            subject: String::new(),
            serial_number: None,
            kind: CertificateKind::Other,
            uuid: None,
            cvr: None,
            organisation_name: None,
            thumbprint: String::new(),
            sha256: [0; 32],
            sha1: [0; 20],
        }
    }

    /// Whether the connection presented a (verified) client certificate.
    pub fn has_certificate(&self) -> bool {
        self.certificate
    }

    /// The subject distinguished name, RFC 4514 style.
    pub fn subject(&self) -> &str {
        &self.subject
    }
    /// The X.520 `serialNumber` subject attribute (not the certificate serial).
    pub fn serial_number(&self) -> Option<&str> {
        self.serial_number.as_deref()
    }
    /// The OCES3 certificate kind.
    pub fn kind(&self) -> CertificateKind {
        self.kind
    }
    /// The OCES3 UUID from `serialNumber`.
    pub fn uuid(&self) -> Option<&str> {
        self.uuid.as_deref()
    }
    /// The CVR number from `organizationIdentifier=NTRDK-<CVR>`.
    pub fn cvr(&self) -> Option<&str> {
        self.cvr.as_deref()
    }
    /// The organisation's name (`O=`).
    pub fn organisation_name(&self) -> Option<&str> {
        self.organisation_name.as_deref()
    }
    /// Base64url (unpadded) SHA-256 of the certificate DER: RFC 8705 `x5t#S256`.
    pub fn thumbprint_sha256(&self) -> &str {
        &self.thumbprint
    }
    /// SHA-1 of the certificate DER: what a SOSI ID card's `OCESCertHash` names.
    pub fn thumbprint_sha1(&self) -> &[u8] {
        &self.sha1
    }
    /// Whether `der` is this very certificate.
    pub fn is_certificate(&self, der: &[u8]) -> bool {
        self.certificate
            && aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref() == self.sha256
    }
}

/// A bounded label for a failed handshake, for metrics and logs.
pub fn handshake_failure_reason(error: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    let Some(inner) = error.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return match error.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::TimedOut => "timeout",
            _ => "io",
        };
    };
    match inner {
        Error::NoCertificatesPresented => "no-client-certificate",
        Error::InvalidCertificate(CertificateError::Revoked) => "revoked",
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown-issuer",
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "expired",
        Error::InvalidCertificate(CertificateError::UnknownRevocationStatus) => {
            "unknown-revocation-status"
        }
        Error::InvalidCertificate(_) => "invalid-certificate",
        Error::PeerIncompatible(_) | Error::NoApplicationProtocol => "incompatible",
        Error::AlertReceived(_) => "alert-received",
        _ => "protocol",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oces3_organisation_identity_is_read() {
        let pki = portvagt_certs::DevPki::generate().unwrap();
        let identity = PeerIdentity::from_verified_leaf(&pki.client.cert_der).unwrap();
        assert_eq!(identity.kind(), CertificateKind::Organisation);
        assert_eq!(identity.cvr(), Some(portvagt_certs::DEMO_CVR));
        assert_eq!(identity.organisation_name(), Some("Region Demo Sundhed"));
        assert_eq!(identity.uuid().map(str::len), Some(36));
        assert!(
            identity.subject().contains("Journalsystem Demo"),
            "{}",
            identity.subject()
        );
        assert_eq!(identity.thumbprint_sha256().len(), 43);
    }

    #[test]
    fn employee_identity_is_read() {
        let pki = portvagt_certs::DevPki::generate().unwrap();
        let identity = PeerIdentity::from_verified_leaf(&pki.employee.cert_der).unwrap();
        assert_eq!(identity.kind(), CertificateKind::Employee);
    }
}
