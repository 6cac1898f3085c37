//! JSON Web Key Sets (RFC 7517) loaded into ready-to-use verification keys.
//!
//! Symmetric (`oct`) keys are refused at load: a gateway that verifies with a shared secret can
//! be fooled by anyone who knows the "public" key (the HMAC-with-public-key confusion).

use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// The key families a JWT `alg` can need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    /// RSA (RS*, PS*).
    Rsa,
    /// NIST curves (ES*).
    Ec,
    /// Ed25519 (EdDSA).
    Okp,
}

impl KeyFamily {
    /// The family an algorithm needs; `None` for HMAC, which no issuer may use here.
    pub fn of(alg: Algorithm) -> Option<KeyFamily> {
        match alg {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => Some(KeyFamily::Rsa),
            Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => Some(KeyFamily::Rsa),
            Algorithm::ES256 | Algorithm::ES384 => Some(KeyFamily::Ec),
            Algorithm::EdDSA => Some(KeyFamily::Okp),
            _ => None,
        }
    }
}

/// One public key of an issuer.
#[derive(Clone)]
pub struct VerificationKey {
    /// `kid`.
    pub kid: Option<String>,
    /// `alg`, when the JWK pins one.
    pub alg: Option<Algorithm>,
    /// The key's family.
    pub family: KeyFamily,
    /// The key, ready for jsonwebtoken.
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

/// Reads a JWKS file.
pub fn load_file(path: &Path) -> Result<Vec<VerificationKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses a JWKS document. Encryption keys (`use: enc`) are skipped; symmetric keys refused.
pub fn parse(text: &str) -> Result<Vec<VerificationKey>, String> {
    // A key given a member twice (`x`, `kty`) is what its reader makes of it: refused.
    let set: JwkSet = crate::strict_json::from_slice_unique(text.as_bytes())
        .map_err(|e| format!("not a JWK Set: {e}"))?;
    let mut keys = Vec::new();
    for (index, jwk) in set.keys.iter().enumerate() {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
            AlgorithmParameters::EllipticCurve(_) => KeyFamily::Ec,
            AlgorithmParameters::OctetKeyPair(_) => KeyFamily::Okp,
            AlgorithmParameters::OctetKey(_) => {
                return Err(format!(
                    "keys[{index}]: symmetric (oct) keys are not accepted"
                ));
            }
            _ => return Err(format!("keys[{index}]: unsupported key type")),
        };
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(key_alg) => Some(signing_algorithm(key_alg).ok_or_else(|| {
                format!("keys[{index}]: alg {key_alg:?} is not a signing algorithm")
            })?),
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("keys[{index}]: {e}"))?;
        keys.push(VerificationKey {
            kid: jwk.common.key_id.clone(),
            alg,
            family,
            key,
        });
    }
    if keys.is_empty() {
        return Err("no signing keys".to_owned());
    }
    Ok(keys)
}

fn signing_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_keys_are_refused() {
        let jwks = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#;
        assert!(parse(jwks).unwrap_err().contains("symmetric"));
    }

    #[test]
    fn ec_key_loads_with_kid_and_alg() {
        let jwks = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","use":"sig",
            "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        let keys = parse(jwks).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("k1"));
        assert_eq!(keys[0].alg, Some(Algorithm::ES256));
        assert_eq!(keys[0].family, KeyFamily::Ec);
    }

    #[test]
    fn a_key_that_gives_a_member_twice_is_refused() {
        let x = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
        let y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
        let key = |extra: &str| {
            format!(
                r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"k1","x":"{x}","y":"{y}"{extra}}}]}}"#
            )
        };
        assert!(parse(&key("")).is_ok());
        let twice = parse(&key(r#","x":"AAAA""#)).unwrap_err();
        assert!(twice.contains("\"x\" is given twice"), "{twice}");
        assert!(
            parse(&format!(
                r#"{{"keys":[],"keys":{}}}"#,
                &key("")[8..key("").len() - 1]
            ))
            .is_err()
        );
    }

    #[test]
    fn empty_set_is_an_error() {
        assert!(parse(r#"{"keys":[]}"#).is_err());
    }
}
