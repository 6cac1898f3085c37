//! `--demo DIR`: the whole suite against a running `portvagt demo`, with every input made from
//! the demo's own files: its `demo.env` (URLs), its dev PKI (client certificates, the STS that
//! signs SOSI cards) and its token issuer key. A certificate from a CA the demo does not trust
//! is made fresh. Nothing here is for a real deployment: the demo issuer's key is the demo's.
//!
//! The demo's sample data is what the cases are aimed at: Carla (`pat-carla`) has blocked
//! Dr. Kjær (authorization id NS363); Bo (`pat-bo`) is the patient Carla's token must not reach.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use portvagt_certs::IssuedCert;
use serde_json::{Value, json};

use crate::client::Identity;
use crate::{Settings, Tokens};

/// The patient the patient token is for: she has blocked Dr. Kjær in the demo's data.
const OWN_PATIENT: &str = "pat-carla";
/// A patient the patient token must not reach.
const OTHER_PATIENT: &str = "pat-bo";
/// The patient Dr. Kjær treats (her practice's list); Bo she does not.
const RELATED_PATIENT: &str = "pat-anne";
/// The authorization id Carla's block names.
const BLOCKED_AUTHORIZATION_ID: &str = "NS363";
/// How long the tokens live: the suite takes about a minute.
const TOKEN_LIFETIME_SECONDS: u64 = 30 * 60;

/// The demo's files, read once.
#[derive(Debug)]
struct DemoFiles {
    dir: PathBuf,
    env: Vec<(String, String)>,
}

impl DemoFiles {
    fn read(dir: &Path) -> anyhow::Result<DemoFiles> {
        let path = dir.join("demo.env");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is `make demo` running with --dir {}?)",
                path.display(),
                dir.display()
            )
        })?;
        let env = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
            .collect();
        Ok(DemoFiles {
            dir: dir.to_owned(),
            env,
        })
    }

    fn value(&self, name: &str) -> anyhow::Result<&str> {
        self.env
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .with_context(|| {
                format!(
                    "{name} is missing from {}: the demo is older than this suite, start it again",
                    self.dir.join("demo.env").display()
                )
            })
    }

    fn file(&self, path: impl AsRef<Path>) -> anyhow::Result<String> {
        let path = self.dir.join(path);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }
}

/// Everything the suite needs, made from the demo in `dir`.
pub fn settings(dir: &Path) -> anyhow::Result<Settings> {
    let demo = DemoFiles::read(dir)?;
    let base_url = demo.value("PORTVAGT_URL")?.trim_end_matches('/').to_owned();
    let citizen_base_url = demo
        .value("PORTVAGT_CITIZEN_URL")?
        .trim_end_matches('/')
        .to_owned();
    let issuer = demo.value("PORTVAGT_DEMO_ISSUER")?.to_owned();
    let client =
        IssuedCert::from_pem(&demo.file("pki/client.crt")?, &demo.file("pki/client.key")?)?;
    let employee = identity(&demo, "employee")?;
    let sts = IssuedCert::from_pem(&demo.file("pki/sts.crt")?, &demo.file("pki/sts.key")?)?;
    let minter = Minter {
        key: jsonwebtoken::EncodingKey::from_ec_pem(demo.file("issuer/issuer.key")?.as_bytes())
            .context("the demo issuer key is not an EC key")?,
        kid: demo
            .file("issuer/issuer.kid")
            .map_or_else(|_| "demo-1".to_owned(), |kid| kid.trim().to_owned()),
        issuer,
        audience: base_url.clone(),
    };
    let thumbprint = thumbprint(&client.cert_der);
    let now = now();
    // The block names the professional by authorisation id only, as the suite's own CI does.
    let professional = |purpose: &str| {
        json!({
            "scope": "user/*.rs", "authorization_id": BLOCKED_AUTHORIZATION_ID,
            "purpose_of_use": purpose,
        })
    };
    // Dr. Kjær as the relationship check sees her: a physician (7170) with her Practitioner.
    let physician = |purpose: &str| {
        json!({
            "scope": "user/*.rs user/Observation.c", "authorization_id": BLOCKED_AUTHORIZATION_ID,
            "role": "7170", "fhirUser": "Practitioner/prac-ns363", "purpose_of_use": purpose,
        })
    };
    let tokens = Tokens {
        user: Some(minter.mint(json!({
            "scope": "user/*.rs", "cnf": { "x5t#S256": thumbprint },
        }))?),
        patient: Some(minter.mint(json!({
            "scope": "patient/*.rs", "patient": OWN_PATIENT,
            "fhirUser": format!("Patient/{OWN_PATIENT}"),
        }))?),
        narrow: Some(minter.mint(json!({ "scope": "user/Observation.rs" }))?),
        expired: Some(minter.mint(json!({
            "scope": "user/*.rs", "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600,
        }))?),
        wrong_audience: Some(minter.mint(json!({
            "scope": "user/*.rs", "aud": "https://another-service.invalid",
        }))?),
        granular: Some(minter.mint(json!({
            "scope": "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
        }))?),
        v1: Some(minter.mint(json!({ "scope": "user/Observation.read" }))?),
        blocked: Some(minter.mint(professional("TREATMENT"))?),
        emergency: Some(minter.mint(professional("EMERGENCY"))?),
        bound: Some(minter.mint(physician("TREATMENT"))?),
        bound_emergency: Some(minter.mint(physician("EMERGENCY"))?),
        citizen: Some(minter.mint(json!({
            "scope": "patient/*.rs patient/Consent.cu", "patient": OWN_PATIENT,
            "fhirUser": format!("Patient/{OWN_PATIENT}"), "aud": citizen_base_url,
        }))?),
        // A colleague nothing binds or blocks: the one the citizen blocks from her log.
        colleague: Some(minter.mint(json!({
            "scope": "user/*.rs", "authorization_id": "XY123", "name": "Jens Holm",
            "purpose_of_use": "TREATMENT", "cnf": { "x5t#S256": thumbprint },
        }))?),
        duplicate_member: None,
        critical_header: None,
    };
    let (duplicate, critical) = crate::strict_tokens(
        &minter.header()?,
        &minter.claims(json!({ "scope": "user/*.rs", "cnf": { "x5t#S256": thumbprint } })),
        |header, claims| minter.sign(header, claims),
    )?;
    let tokens = Tokens {
        duplicate_member: Some(duplicate),
        critical_header: Some(critical),
        ..tokens
    };
    let foreign = portvagt_certs::DevPki::generate()?;
    Ok(Settings {
        base_url,
        ca_pem: demo.file("pki/ca.crt")?,
        sosi_card: Some(portvagt_certs::saml::SosiCard::system(&client.cert_der).sign(&sts)?),
        identity: Identity {
            cert_pem: client.cert_pem,
            key_pem: client.key_pem,
        },
        other_identity: Some(employee),
        foreign_identity: Some(Identity {
            cert_pem: foreign.client.cert_pem,
            key_pem: foreign.client.key_pem,
        }),
        tokens,
        own_patient: Some(OWN_PATIENT.into()),
        other_patient: Some(OTHER_PATIENT.into()),
        blocked_patient: Some(OWN_PATIENT.into()),
        citizen_base_url: Some(citizen_base_url),
        related_patient: Some(RELATED_PATIENT.into()),
        unrelated_patient: Some(OTHER_PATIENT.into()),
    })
}

/// Fails with what to do when nothing listens at the demo's address.
pub fn check_running(base_url: &str) -> anyhow::Result<()> {
    let authority = base_url
        .strip_prefix("https://")
        .and_then(|rest| rest.split('/').next())
        .with_context(|| format!("{base_url} is not an https URL"))?;
    let address = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} has no address"))?;
    std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(3))
        .map(drop)
        .with_context(|| {
            format!("no demo answers at {base_url}: start `make demo` in another shell first")
        })
}

/// Where `--demo DIR` writes its reports unless told otherwise.
pub fn report_dir(dir: &Path) -> PathBuf {
    dir.join("conformance")
}

fn identity(demo: &DemoFiles, name: &str) -> anyhow::Result<Identity> {
    Ok(Identity {
        cert_pem: demo.file(format!("pki/{name}.crt"))?,
        key_pem: demo.file(format!("pki/{name}.key"))?,
    })
}

/// Signs the suite's tokens with the demo issuer key.
struct Minter {
    key: jsonwebtoken::EncodingKey,
    kid: String,
    issuer: String,
    audience: String,
}

impl Minter {
    /// A token with the usual claims, then `claims` over them.
    fn mint(&self, claims: Value) -> anyhow::Result<String> {
        Ok(jsonwebtoken::encode(
            &self.jose_header(),
            &self.claims(claims),
            &self.key,
        )?)
    }

    /// The usual claims, then `claims` over them.
    fn claims(&self, claims: Value) -> Value {
        let now = now();
        let mut token = json!({
            "iss": self.issuer, "aud": self.audience, "sub": "portvagt-conformance",
            "client_id": "portvagt-conformance", "iat": now, "nbf": now,
            "exp": now + TOKEN_LIFETIME_SECONDS, "jti": uuid::Uuid::new_v4().to_string(),
        });
        if let (Some(token), Some(claims)) = (token.as_object_mut(), claims.as_object()) {
            for (name, value) in claims {
                token.insert(name.clone(), value.clone());
            }
        }
        token
    }

    /// An RFC 9068 access token's header (the demo's issuers require `typ` `at+jwt`).
    fn jose_header(&self) -> jsonwebtoken::Header {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.typ = Some("at+jwt".into());
        header.kid = Some(self.kid.clone());
        header
    }

    /// The JOSE header [`Minter::mint`] writes, as JSON.
    fn header(&self) -> anyhow::Result<Value> {
        Ok(serde_json::to_value(self.jose_header())?)
    }

    /// A token of `header` and `claims` exactly as given (ES256).
    fn sign(&self, header: &[u8], claims: &[u8]) -> anyhow::Result<String> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let message = format!("{}.{}", b64.encode(header), b64.encode(claims));
        let signature = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &self.key,
            jsonwebtoken::Algorithm::ES256,
        )?;
        Ok(format!("{message}.{signature}"))
    }
}

/// RFC 8705 `x5t#S256`: base64url of the certificate's SHA-256.
fn thumbprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_demo_names_the_command_that_makes_one() {
        let dir = tempfile::tempdir().unwrap();
        let error = settings(dir.path()).unwrap_err().to_string();
        assert!(error.contains("make demo"), "{error}");
    }

    #[test]
    fn an_older_demo_env_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("demo.env"),
            "PORTVAGT_URL=https://127.0.0.1:8443/fhir\n",
        )
        .unwrap();
        let error = settings(dir.path()).unwrap_err().to_string();
        assert!(error.contains("PORTVAGT_CITIZEN_URL"), "{error}");
    }

    #[test]
    fn a_demo_that_is_not_running_is_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        check_running(&format!("https://127.0.0.1:{port}/fhir")).unwrap();
        drop(listener);
        let error = check_running(&format!("https://127.0.0.1:{port}/fhir")).unwrap_err();
        assert!(format!("{error:#}").contains("make demo"), "{error:#}");
    }

    #[test]
    fn the_thumbprint_is_rfc_8705s() {
        // SHA-256 of the empty string, base64url without padding.
        assert_eq!(
            thumbprint(b""),
            "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
        );
    }
}
