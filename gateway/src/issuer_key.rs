//! An ES256 token-signing key with its JWKS: Portvagt's own issuer key for tokens made by SAML
//! token exchange ([`crate::exchange`]), and the development issuer of `portvagt demo`,
//! `portvagt token` and the tests.

use std::path::Path;

use anyhow::Context as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use serde_json::json;

/// An ES256 signing key with a `kid`, parsed once (a signature costs the signature, not the
/// reading of the key again: the identity assertion signs one per forwarded request).
pub struct IssuerKey {
    kid: String,
    pem: String,
    public_point: Vec<u8>,
    signing: EcdsaKeyPair,
    random: SystemRandom,
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
        let signing =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pair.serialize_der())
                .map_err(|e| anyhow::anyhow!("the issuer key is not a P-256 key: {e}"))?;
        Ok(IssuerKey {
            kid: kid.to_owned(),
            pem: pem.to_owned(),
            public_point: pair.public_key_raw().to_vec(),
            signing,
            random: SystemRandom::new(),
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

    /// Signs `claims` as an ES256 JWT (RFC 7515 compact form, RFC 7518 §3.4: the signature is
    /// R and S, 32 bytes each) of type `typ` with this key's `kid`.
    pub fn sign_typed(&self, claims: &serde_json::Value, typ: &str) -> anyhow::Result<String> {
        let header = json!({ "typ": typ, "alg": "ES256", "kid": self.kid });
        self.sign_parts(&serde_json::to_vec(&header)?, &serde_json::to_vec(claims)?)
    }

    /// Signs a JOSE header and claims given as their exact bytes (ES256): for tests and
    /// conformance cases that need what a JSON serializer would not write (a member twice).
    pub fn sign_parts(&self, header: &[u8], claims: &[u8]) -> anyhow::Result<String> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut token = b64.encode(header);
        token.push('.');
        token.push_str(&b64.encode(claims));
        let signature = self
            .signing
            .sign(&self.random, token.as_bytes())
            .map_err(|_| anyhow::anyhow!("signing failed"))?;
        token.push('.');
        token.push_str(&b64.encode(signature.as_ref()));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_token_verifies_with_the_published_key_and_says_its_type() {
        let key = IssuerKey::generate("k-1").unwrap();
        let token = key
            .sign_typed(&json!({ "sub": "x", "exp": u64::MAX / 2 }), "at+jwt")
            .unwrap();
        let jwk = key.jwk();
        let decoding = jsonwebtoken::DecodingKey::from_ec_components(
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap(),
        )
        .unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.validate_aud = false;
        let decoded =
            jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).unwrap();
        assert_eq!(decoded.claims["sub"], "x");
        assert_eq!(decoded.header.kid.as_deref(), Some("k-1"));
        assert_eq!(decoded.header.typ.as_deref(), Some("at+jwt"));
        // Another key's token does not verify with this key.
        let other = IssuerKey::generate("k-1").unwrap();
        let forged = other.sign_typed(&json!({ "sub": "x" }), "at+jwt").unwrap();
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(&forged, &decoding, &validation).is_err()
        );
    }
}
