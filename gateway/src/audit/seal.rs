//! Seals: signed checkpoints inside the audit chain, so that `portvagt audit verify` proves the
//! trail is complete, not only that what is left hangs together.
//!
//! A hash chain alone shows that no record in the middle was changed, removed or inserted, but
//! whoever can write the spool can cut records off either end, or rewrite the chain from some
//! point on. A seal is a chain record of its own (`{"seq":N,"prev":H,"seal":"<JWS>"}`) whose
//! ES256 JWS signs its own place in the chain (`seq` and `prev`) with Portvagt's seal key:
//! - `open` when the spool is opened (saying whether the run before it closed cleanly),
//! - `seal` at least every `seal_every` while the gateway runs, busy or idle,
//! - `prune` before the shipper deletes shipped segments (naming the first segment kept),
//! - `close` when the gateway stops cleanly.
//!
//! So the verifier, holding only the public key, knows: every record before the last seal is as
//! written; segments missing at the front were pruned after shipping (a `prune` seal allows it)
//! or were cut; and the chain either ends in a `close`, or its last seal is fresh (the gateway
//! is running), or the trail stops without either (a crash or a cut: reported).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::auth::issuer_key::IssuerKey;
use crate::config::ConfigError;

/// The JWS `typ` of a seal: a seal is never mistaken for a token signed by the same key.
pub const SEAL_TYP: &str = "portvagt-audit-seal+jwt";

/// What a seal marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SealKind {
    /// The spool was opened.
    Open,
    /// The gateway is running; everything up to here is as written.
    Seal,
    /// Records before `first_kept_seq` may be deleted: every one of them was shipped.
    Prune,
    /// The gateway stopped cleanly; nothing follows until the next `open`.
    Close,
}

/// How the run before an `open` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Before {
    /// A new spool.
    New,
    /// The chain ended in a `close`.
    Closed,
    /// The chain ended without a `close`: a crash, a kill, or records cut off.
    Unclosed,
}

/// A seal's signed content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// The seal record's own sequence number.
    pub seq: u64,
    /// The hash of the record before it.
    pub prev: String,
    /// What it marks.
    pub kind: SealKind,
    /// When it was made (seconds since the Unix epoch).
    pub time: u64,
    /// The gateway instance that made it.
    pub observer: String,
    /// The chain's own id, chosen at random when the spool began: the same in every seal of
    /// one spool, whoever wrote it; the key of its anchor in the repository.
    #[serde(default)]
    pub chain: String,
    /// While the gateway runs, the next seal follows within this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_within: Option<u64>,
    /// `prune`: the first record that must still be there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_kept_seq: Option<u64>,
    /// `open`: how the run before ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Before>,
    /// `prune`: every unclean restart (its `open` seal's sequence number) the chain has held,
    /// so that pruning the segment that shows one does not hide it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unclean: Vec<u64>,
}

/// What a seal says beyond its kind and place.
#[derive(Debug, Clone, Default)]
pub(crate) struct Marks {
    pub(crate) first_kept_seq: Option<u64>,
    pub(crate) before: Option<Before>,
    pub(crate) unclean: Vec<u64>,
}

impl Seal {
    /// The seal's content as written, without checking its signature (the writer reading its
    /// own spool back; the verifier uses [`SealKeys::check`]).
    pub fn peek(jws: &str) -> Option<Seal> {
        let payload = jws.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Makes seals: the private seal key, this instance's name, and how often to seal.
pub struct Sealer {
    key: EncodingKey,
    /// Its public half, for the shipper's checks.
    public: SealKeys,
    kid: String,
    observer: String,
    every: Duration,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("kid", &self.kid)
            .field("observer", &self.observer)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer from a P-256 PKCS#8 PEM key; errors name `audit.seal_key`.
    pub fn load(
        path: &Path,
        kid: &str,
        observer: &str,
        every: Duration,
    ) -> Result<Sealer, ConfigError> {
        let field = "audit.seal_key";
        let pem = std::fs::read(path)
            .map_err(|e| ConfigError::new(field, format!("{}: {e}", path.display())))?;
        let key = EncodingKey::from_ec_pem(&pem)
            .map_err(|e| ConfigError::new(field, format!("not a P-256 PKCS#8 key: {e}")))?;
        let public = std::str::from_utf8(&pem)
            .ok()
            .and_then(|pem| IssuerKey::from_pem(kid, pem).ok())
            .and_then(|key| serde_json::from_str(&key.jwks()).ok())
            .map(|keys| SealKeys { keys })
            .ok_or_else(|| ConfigError::new(field, "not a P-256 PKCS#8 key"))?;
        if every < Duration::from_secs(1) {
            return Err(ConfigError::new("audit.seal_every", "must be at least 1s"));
        }
        let sealer = Sealer {
            key,
            public,
            kid: kid.to_owned(),
            observer: observer.to_owned(),
            every,
        };
        // A key that cannot sign is found now, not at the first seal.
        sealer
            .sign("", SealKind::Seal, 0, "", &Marks::default())
            .map_err(|e| ConfigError::new(field, e))?;
        Ok(sealer)
    }

    /// The public key, as a verifier holds it.
    pub fn keys(&self) -> &SealKeys {
        &self.public
    }

    /// How often the writer seals.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// The JWS of a seal at `seq` after `prev`.
    pub(crate) fn sign(
        &self,
        chain: &str,
        kind: SealKind,
        seq: u64,
        prev: &str,
        marks: &Marks,
    ) -> Result<String, String> {
        let seal = Seal {
            seq,
            prev: prev.to_owned(),
            kind,
            time: unix_now(),
            observer: self.observer.clone(),
            chain: chain.to_owned(),
            next_within: (kind != SealKind::Close).then_some(self.every.as_secs()),
            first_kept_seq: marks.first_kept_seq,
            before: marks.before,
            unclean: marks.unclean.clone(),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some(SEAL_TYP.to_owned());
        jsonwebtoken::encode(&header, &seal, &self.key).map_err(|e| e.to_string())
    }
}

/// The public seal keys a verifier trusts (a JWK Set: several during a key rotation).
#[derive(Debug, Clone)]
pub struct SealKeys {
    keys: JwkSet,
}

impl SealKeys {
    /// Reads a JWK Set file.
    pub fn load(path: &Path) -> Result<SealKeys, String> {
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let keys: JwkSet = serde_json::from_slice(&text)
            .map_err(|e| format!("{}: not a JWK Set: {e}", path.display()))?;
        if keys.keys.is_empty() {
            return Err(format!("{}: the JWK Set holds no key", path.display()));
        }
        Ok(SealKeys { keys })
    }

    /// These keys and `other`'s; a `kid` in both must name the same key.
    pub fn with(&self, other: &SealKeys) -> Result<SealKeys, String> {
        let mut keys = self.keys.clone();
        for key in &other.keys.keys {
            let kid = key.common.key_id.as_deref().unwrap_or_default();
            match keys.find(kid) {
                None => keys.keys.push(key.clone()),
                Some(known) if known.algorithm == key.algorithm => {}
                Some(_) => return Err(format!("two different keys have the kid {kid:?}")),
            }
        }
        Ok(SealKeys { keys })
    }

    /// The seal a JWS carries, if it is one and a trusted key signed it.
    pub fn check(&self, jws: &str) -> Result<Seal, String> {
        let header = jsonwebtoken::decode_header(jws).map_err(|e| format!("not a JWS: {e}"))?;
        if header.alg != Algorithm::ES256 || header.typ.as_deref() != Some(SEAL_TYP) {
            return Err("not an ES256 seal".into());
        }
        let kid = header.kid.as_deref().unwrap_or_default();
        let jwk = self
            .keys
            .find(kid)
            .ok_or_else(|| format!("signed with key {kid:?}, which is not trusted"))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid:?}: {e}"))?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        jsonwebtoken::decode::<Seal>(jws, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| format!("the signature does not hold: {e}"))
    }
}
