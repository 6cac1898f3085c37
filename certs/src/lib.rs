//! Portvagt's development PKI.
//!
//! Makes a certificate authority, a server certificate and OCES3-like client certificates
//! (organisation/system and employee subjects as the Danish OCES3 profile shapes them), one
//! revoked client certificate and a CRL listing it, and a test STS certificate (RSA) with
//! signed SOSI ID cards and OIOSAML assertions ([`saml`]). Everything else is ECDSA P-256.
//! All of it is made fresh on every call: fixtures for the demo and the tests, never for
//! production.
//!
//! The same library is used by the `portvagt-certs` CLI, by `portvagt demo` and by the tests, so
//! all of them speak of the same files (see [`DevPki::write_to`]).

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use rcgen::string::PrintableString;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

pub mod saml;

/// X.520 `serialNumber` (2.5.4.5): OCES3 puts `UI:DK-O:G:<uuid>` / `UI:DK-E:G:<uuid>` here.
const OID_SERIAL_NUMBER: &[u64] = &[2, 5, 4, 5];
/// X.520 `organizationIdentifier` (2.5.4.97): OCES3 puts `NTRDK-<CVR>` here.
const OID_ORGANIZATION_IDENTIFIER: &[u64] = &[2, 5, 4, 97];
const OID_GIVEN_NAME: &[u64] = &[2, 5, 4, 42];
const OID_SURNAME: &[u64] = &[2, 5, 4, 4];

/// A certificate with its private key, both PEM, and what a CRL needs to name it.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    serial: SerialNumber,
}

impl IssuedCert {
    /// A certificate and key read back from PEM (e.g. the files [`DevPki::write_to`] wrote).
    /// Such a certificate cannot be put on a CRL by this library.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> anyhow::Result<IssuedCert> {
        let der = pem_contents(cert_pem).context("the certificate is not PEM")?;
        Ok(IssuedCert {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            cert_der: der,
            serial: SerialNumber::from_slice(&[0]),
        })
    }
}

fn pem_contents(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|line| !line.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|line| !line.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// Who a client certificate names, shaped as OCES3 subjects are.
#[derive(Debug, Clone)]
pub enum ClientSubject {
    /// An organisation/system certificate (OCES3 "virksomhedscertifikat"/system certificate).
    Organisation {
        /// Common name: the system's name.
        system_name: String,
        /// Legal name of the organisation.
        organisation: String,
        /// The organisation's CVR number (8 digits).
        cvr: String,
        /// The certificate holder's UUID (`UI:DK-O:G:<uuid>`).
        uuid: uuid::Uuid,
    },
    /// An employee certificate (OCES3 "medarbejdercertifikat").
    Employee {
        /// Given name.
        given_name: String,
        /// Surname.
        surname: String,
        /// Legal name of the employing organisation.
        organisation: String,
        /// The employer's CVR number (8 digits).
        cvr: String,
        /// The employee's UUID (`UI:DK-E:G:<uuid>`).
        uuid: uuid::Uuid,
    },
}

impl ClientSubject {
    fn distinguished_name(&self) -> anyhow::Result<DistinguishedName> {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "DK");
        match self {
            ClientSubject::Organisation {
                system_name,
                organisation,
                cvr,
                uuid,
            } => {
                dn.push(DnType::OrganizationName, organisation.as_str());
                dn.push(
                    DnType::CustomDnType(OID_ORGANIZATION_IDENTIFIER.to_vec()),
                    DnValue::Utf8String(format!("NTRDK-{cvr}")),
                );
                dn.push(
                    DnType::CustomDnType(OID_SERIAL_NUMBER.to_vec()),
                    printable(&format!("UI:DK-O:G:{uuid}"))?,
                );
                dn.push(DnType::CommonName, system_name.as_str());
            }
            ClientSubject::Employee {
                given_name,
                surname,
                organisation,
                cvr,
                uuid,
            } => {
                dn.push(DnType::OrganizationName, organisation.as_str());
                dn.push(
                    DnType::CustomDnType(OID_ORGANIZATION_IDENTIFIER.to_vec()),
                    DnValue::Utf8String(format!("NTRDK-{cvr}")),
                );
                dn.push(
                    DnType::CustomDnType(OID_SERIAL_NUMBER.to_vec()),
                    printable(&format!("UI:DK-E:G:{uuid}"))?,
                );
                dn.push(
                    DnType::CustomDnType(OID_GIVEN_NAME.to_vec()),
                    DnValue::Utf8String(given_name.clone()),
                );
                dn.push(
                    DnType::CustomDnType(OID_SURNAME.to_vec()),
                    DnValue::Utf8String(surname.clone()),
                );
                dn.push(DnType::CommonName, format!("{given_name} {surname}"));
            }
        }
        Ok(dn)
    }
}

fn printable(value: &str) -> anyhow::Result<DnValue> {
    let value = PrintableString::try_from(value)
        .with_context(|| format!("{value:?} is not a PrintableString"))?;
    Ok(DnValue::PrintableString(value))
}

/// A certificate authority that issues the dev certificates and signs their CRL.
#[derive(Debug)]
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert: IssuedCert,
}

impl CertificateAuthority {
    /// A new self-signed CA with the given common name.
    pub fn new(common_name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "DK");
        dn.push(DnType::OrganizationName, "Portvagt Dev PKI");
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.key_identifier_method = KeyIdMethod::Sha256;
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key)?;
        let issued = IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            serial,
        };
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert: issued,
        })
    }

    /// The CA's own certificate (and key).
    pub fn certificate(&self) -> &IssuedCert {
        &self.cert
    }

    /// A TLS server certificate for the given DNS names and IP addresses.
    pub fn issue_server(&self, names: &[&str]) -> anyhow::Result<IssuedCert> {
        let mut params = leaf_params(365)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "DK");
        dn.push(DnType::OrganizationName, "Portvagt Dev PKI");
        dn.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("localhost"),
        );
        params.distinguished_name = dn;
        for name in names {
            params.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into()?),
            });
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A TLS client certificate with an OCES3-shaped subject.
    pub fn issue_client(&self, subject: &ClientSubject) -> anyhow::Result<IssuedCert> {
        let mut params = leaf_params(365)?;
        params.distinguished_name = subject.distinguished_name()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// A CRL, signed by this CA, that lists the given certificates as revoked.
    pub fn crl(&self, revoked: &[&IssuedCert]) -> anyhow::Result<String> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::hours(1),
            next_update: now + Duration::days(30),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|cert| RevokedCertParams {
                    serial_number: cert.serial.clone(),
                    revocation_time: now - Duration::minutes(30),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// An STS signing certificate (RSA 2048, as national STS certificates are) whose key signs
    /// SOSI ID cards and OIOSAML assertions ([`saml`]).
    pub fn issue_sts(&self, common_name: &str) -> anyhow::Result<IssuedCert> {
        let params = sts_params(common_name)?;
        let rsa = openssl::rsa::Rsa::generate(2048)?;
        let pem = openssl::pkey::PKey::from_rsa(rsa)?.private_key_to_pem_pkcs8()?;
        let key = KeyPair::from_pem(std::str::from_utf8(&pem)?)?;
        self.sign_with(params, key)
    }

    /// The STS certificate `previous` renewed: a new certificate (serial, validity) for the same
    /// key, as an STS rollover often is.
    pub fn renew_sts(
        &self,
        previous: &IssuedCert,
        common_name: &str,
    ) -> anyhow::Result<IssuedCert> {
        self.sign_with(
            sts_params(common_name)?,
            KeyPair::from_pem(&previous.key_pem)?,
        )
    }

    fn sign(&self, params: CertificateParams) -> anyhow::Result<IssuedCert> {
        self.sign_with(params, KeyPair::generate()?)
    }

    fn sign_with(&self, mut params: CertificateParams, key: KeyPair) -> anyhow::Result<IssuedCert> {
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            serial,
        })
    }
}

/// An STS signing certificate's parameters: the dev PKI's organisation, `common_name`.
fn sts_params(common_name: &str) -> anyhow::Result<CertificateParams> {
    let mut params = leaf_params(365)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "DK");
    dn.push(DnType::OrganizationName, "Portvagt Dev PKI");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    Ok(params)
}

fn leaf_params(days: i64) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn random_serial() -> SerialNumber {
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte to strip
    SerialNumber::from_slice(&bytes)
}

/// The demo organisation's CVR number (a made-up 8-digit number).
pub const DEMO_CVR: &str = "12345678";

/// The full development PKI that `portvagt demo` and the tests use.
#[derive(Debug)]
pub struct DevPki {
    /// The CA that issued everything below.
    pub ca: CertificateAuthority,
    /// Server certificate for `localhost` and `127.0.0.1`.
    pub server: IssuedCert,
    /// Organisation/system client certificate (`UI:DK-O:G:<uuid>`).
    pub client: IssuedCert,
    /// Employee client certificate (`UI:DK-E:G:<uuid>`).
    pub employee: IssuedCert,
    /// A client certificate that [`DevPki::crl_pem`] revokes.
    pub revoked: IssuedCert,
    /// The CA's CRL, listing `revoked`.
    pub crl_pem: String,
    /// The test STS certificate that signs SOSI ID cards and OIOSAML assertions.
    pub sts: IssuedCert,
    /// The gateway's own client certificate, for the audit repository (which takes writes
    /// from it alone) and backends that want to know the gateway.
    pub gateway: IssuedCert,
}

impl DevPki {
    /// Makes a fresh PKI.
    pub fn generate() -> anyhow::Result<Self> {
        let ca = CertificateAuthority::new("Portvagt Dev OCES udstedende-CA 1")?;
        let server = ca.issue_server(&["localhost", "127.0.0.1", "::1"])?;
        let client = ca.issue_client(&ClientSubject::Organisation {
            system_name: "Journalsystem Demo".into(),
            organisation: "Region Demo Sundhed".into(),
            cvr: DEMO_CVR.into(),
            uuid: uuid::Uuid::new_v4(),
        })?;
        let employee = ca.issue_client(&ClientSubject::Employee {
            given_name: "Mette".into(),
            surname: "Kjær".into(),
            organisation: "Region Demo Sundhed".into(),
            cvr: DEMO_CVR.into(),
            uuid: uuid::Uuid::new_v4(),
        })?;
        let revoked = ca.issue_client(&ClientSubject::Organisation {
            system_name: "Udfaset System".into(),
            organisation: "Region Demo Sundhed".into(),
            cvr: DEMO_CVR.into(),
            uuid: uuid::Uuid::new_v4(),
        })?;
        let crl_pem = ca.crl(&[&revoked])?;
        let sts = ca.issue_sts("TEST1-NSP-STS Portvagt Dev")?;
        let gateway = ca.issue_client(&ClientSubject::Organisation {
            system_name: "Portvagt".into(),
            organisation: "Region Demo Sundhed".into(),
            cvr: DEMO_CVR.into(),
            uuid: uuid::Uuid::new_v4(),
        })?;
        Ok(Self {
            gateway,
            ca,
            server,
            client,
            employee,
            revoked,
            crl_pem,
            sts,
        })
    }

    /// Writes the PKI as PEM files with stable names: `ca.crt`, `server.crt`, `server.key`,
    /// `client.crt`, `client.key`, `employee.crt`, `employee.key`, `revoked.crt`, `revoked.key`,
    /// `sts.crt`, `sts.key`, `gateway.crt`, `gateway.key`, `crl.pem`. Private keys are written readable by the owner only.
    pub fn write_to(&self, dir: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_file(&dir.join("ca.crt"), &self.ca.certificate().cert_pem, false)?;
        for (name, cert) in [
            ("server", &self.server),
            ("client", &self.client),
            ("employee", &self.employee),
            ("revoked", &self.revoked),
            ("sts", &self.sts),
            ("gateway", &self.gateway),
        ] {
            write_file(&dir.join(format!("{name}.crt")), &cert.cert_pem, false)?;
            write_file(&dir.join(format!("{name}.key")), &cert.key_pem, true)?;
        }
        write_file(&dir.join("crl.pem"), &self.crl_pem, false)?;
        Ok(())
    }
}

fn write_file(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

/// The loopback address the dev server certificate names.
pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[cfg(test)]
mod tests {
    use x509_parser::prelude::*;

    use super::*;

    fn attribute(cert: &X509Certificate<'_>, oid: &str) -> Option<String> {
        cert.subject()
            .iter_attributes()
            .find(|attr| attr.attr_type().to_id_string() == oid)
            .and_then(|attr| attr.as_str().ok().map(str::to_owned))
    }

    #[test]
    fn organisation_certificate_has_oces3_subject() {
        let pki = DevPki::generate().unwrap();
        let (_, cert) = parse_x509_certificate(&pki.client.cert_der).unwrap();
        let serial = attribute(&cert, "2.5.4.5").unwrap();
        assert!(serial.starts_with("UI:DK-O:G:"), "{serial}");
        uuid::Uuid::parse_str(&serial["UI:DK-O:G:".len()..]).unwrap();
        assert_eq!(
            attribute(&cert, "2.5.4.97").as_deref(),
            Some("NTRDK-12345678")
        );
        let (_, ca) = parse_x509_certificate(&pki.ca.certificate().cert_der).unwrap();
        assert_eq!(cert.issuer().to_string(), ca.subject().to_string());
    }

    #[test]
    fn employee_certificate_has_oces3_subject() {
        let pki = DevPki::generate().unwrap();
        let (_, cert) = parse_x509_certificate(&pki.employee.cert_der).unwrap();
        assert!(
            attribute(&cert, "2.5.4.5")
                .unwrap()
                .starts_with("UI:DK-E:G:")
        );
        assert_eq!(attribute(&cert, "2.5.4.42").as_deref(), Some("Mette"));
        assert_eq!(attribute(&cert, "2.5.4.4").as_deref(), Some("Kjær"));
    }

    #[test]
    fn crl_lists_the_revoked_certificate_only() {
        let pki = DevPki::generate().unwrap();
        let pem = x509_parser::pem::parse_x509_pem(pki.crl_pem.as_bytes())
            .unwrap()
            .1;
        let (_, crl) = parse_x509_crl(&pem.contents).unwrap();
        let serials: Vec<_> = crl
            .iter_revoked_certificates()
            .map(|r| r.raw_serial().to_vec())
            .collect();
        let serial_of = |der: &[u8]| parse_x509_certificate(der).unwrap().1.raw_serial().to_vec();
        assert_eq!(serials, vec![serial_of(&pki.revoked.cert_der)]);
        assert!(!serials.contains(&serial_of(&pki.client.cert_der)));
    }

    #[test]
    fn server_certificate_names_localhost_and_loopback() {
        let pki = DevPki::generate().unwrap();
        let (_, cert) = parse_x509_certificate(&pki.server.cert_der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| format!("{n}"))
            .collect();
        assert!(names.iter().any(|n| n.contains("localhost")), "{names:?}");
        assert!(names.iter().any(|n| n.contains("7f:00:00:01")), "{names:?}");
    }

    #[test]
    fn writes_stable_file_names() {
        let dir = tempfile::tempdir().unwrap();
        DevPki::generate().unwrap().write_to(dir.path()).unwrap();
        for name in [
            "ca.crt",
            "server.crt",
            "server.key",
            "client.crt",
            "client.key",
            "employee.crt",
            "employee.key",
            "revoked.crt",
            "revoked.key",
            "crl.pem",
        ] {
            let text = fs::read_to_string(dir.path().join(name)).unwrap();
            assert!(text.starts_with("-----BEGIN "), "{name}");
        }
    }
}
