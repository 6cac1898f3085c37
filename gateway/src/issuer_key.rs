//! An ES256 token-signing key with its JWKS: Portvagt's own issuer key for tokens made by SAML
//! token exchange ([`crate::exchange`]), and the development issuer of `portvagt demo`,
//! `portvagt token` and the tests.

use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use serde_json::json;

/// An ES256 signing key with a `kid`.
pub struct IssuerKey {
    kid: String,
    pem: String,
    public_point: Vec<u8>,
    encoding: EncodingKey,
}

impl std::fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl IssuerKey {
    /// A fresh P-256 key.
    pub fn generate(kid: &str) -> anyhow::Result<IssuerKey> {
        let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        Self::from_pem(kid, &pair.serialize_pem())
    }

    /// A key from its PKCS#8 PEM.
    pub fn from_pem(kid: &str, pem: &str) -> anyhow::Result<IssuerKey> {
        let pair = KeyPair::from_pem(pem).context("reading the issuer key")?;
        Ok(IssuerKey {
            kid: kid.to_owned(),
            pem: pem.to_owned(),
            public_point: pair.public_key_raw().to_vec(),
            encoding: EncodingKey::from_ec_pem(pem.as_bytes())?,
        })
    }

    /// Reads `issuer.key` (and its `kid` from `issuer.kid`) from `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<IssuerKey> {
        let pem = std::fs::read_to_string(dir.join("issuer.key"))
            .with_context(|| format!("reading {}", dir.join("issuer.key").display()))?;
        let kid =
            std::fs::read_to_string(dir.join("issuer.kid")).unwrap_or_else(|_| "demo-1".into());
        Self::from_pem(kid.trim(), &pem)
    }

    /// Writes `issuer.key`, `issuer.kid` and `jwks.json` to `dir`.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("issuer.key"), &self.pem)?;
        std::fs::write(dir.join("issuer.kid"), &self.kid)?;
        std::fs::write(dir.join("jwks.json"), self.jwks())?;
        Ok(())
    }

    /// The private key as PKCS#8 PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The public key as a JWK Set.
    pub fn jwks(&self) -> String {
        json!({ "keys": [self.jwk()] }).to_string()
    }

    /// The public key as one JWK.
    pub fn jwk(&self) -> serde_json::Value {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        // Uncompressed point: 0x04 || X || Y.
        let point = self.public_point.get(1..).unwrap_or_default();
        let (x, y) = point.split_at(point.len() / 2);
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256",
            "kid": self.kid, "x": b64(x), "y": b64(y),
        })
    }

    /// The RFC 7638 thumbprint of the public key: base64url SHA-256 of its required members
    /// in lexicographic order. A `kid` that changes whenever the key does.
    pub fn thumbprint(&self) -> String {
        let jwk = self.jwk();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().unwrap_or_default(),
            jwk["y"].as_str().unwrap_or_default()
        );
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
    }

    /// Signs `claims` as an ES256 access token (`typ` `at+jwt`, RFC 9068) with this key's `kid`.
    pub fn sign(&self, claims: &serde_json::Value) -> anyhow::Result<String> {
        self.sign_typed(claims, "at+jwt")
    }

    /// Signs `claims` as an ES256 JWT of type `typ` with this key's `kid`.
    pub fn sign_typed(&self, claims: &serde_json::Value, typ: &str) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some(typ.into());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }
}
