//! A cache of JWTs whose signature and claims were verified, so that a client reusing its
//! access token (every request of a session) costs a hash and a lookup instead of an ECDSA or
//! RSA verification.
//!
//! What is cached is the verified claim set, never a decision about a connection: the
//! certificate binding (`cnf`), the claim mapping and everything after it run again for every
//! request. An entry is keyed by the SHA-256 of the whole token (the token itself is not held),
//! is good until the token's `exp` plus the issuer's leeway, and only while the issuer's key set
//! is the one that verified it: a JWKS reload or refresh that swaps the keys empties the cache
//! for that issuer in effect (the entries no longer match and are replaced as they are met).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use super::jwks::VerificationKey;

/// Entries per shard; the cache holds at most `SHARDS * SHARD_CAPACITY` tokens per issuer.
const SHARD_CAPACITY: usize = 1024;
const SHARDS: usize = 16;

/// The SHA-256 of a token.
pub(super) type TokenDigest = [u8; 32];

pub(super) fn digest(token: &str) -> TokenDigest {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// A verified token's claims.
#[derive(Debug, Clone)]
pub(super) struct Verified {
    pub claims: Arc<Map<String, Value>>,
    pub subject: Arc<str>,
    pub issuer: Arc<str>,
    pub expires_at: u64,
}

#[derive(Debug)]
struct Entry {
    verified: Verified,
    /// Last second (inclusive) the token is accepted: `exp` + leeway.
    good_until: u64,
    /// The key set that verified the signature; the entry counts only while it is current.
    /// Held (not compared by address) so a freed set's address reused by a new one cannot
    /// make a stale entry match.
    keys: Arc<Vec<VerificationKey>>,
}

#[derive(Debug)]
pub(super) struct VerifiedCache {
    shards: Vec<Mutex<HashMap<TokenDigest, Entry>>>,
}

impl Default for VerifiedCache {
    fn default() -> Self {
        VerifiedCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl VerifiedCache {
    fn shard(&self, digest: &TokenDigest) -> &Mutex<HashMap<TokenDigest, Entry>> {
        &self.shards[usize::from(digest[0]) % SHARDS]
    }

    /// The claims of the token with `digest`, if it was verified with `keys` and has not
    /// expired at `now`. An entry that no longer counts is dropped.
    pub(super) fn get(
        &self,
        digest: &TokenDigest,
        keys: &Arc<Vec<VerificationKey>>,
        now: u64,
    ) -> Option<Verified> {
        let mut shard = self.shard(digest).lock().unwrap_or_else(|p| p.into_inner());
        let entry = shard.get(digest)?;
        if Arc::ptr_eq(&entry.keys, keys) && now <= entry.good_until {
            return Some(entry.verified.clone());
        }
        shard.remove(digest);
        None
    }

    /// Remembers a token verified with `keys`, good until `good_until` (inclusive). A full
    /// shard first drops what has expired or was verified with another key set, and if that
    /// frees nothing, everything: a burst of distinct tokens costs verifications, never memory.
    pub(super) fn insert(
        &self,
        digest: TokenDigest,
        verified: Verified,
        keys: &Arc<Vec<VerificationKey>>,
        good_until: u64,
        now: u64,
    ) {
        let mut shard = self
            .shard(&digest)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if shard.len() >= SHARD_CAPACITY {
            shard.retain(|_, entry| Arc::ptr_eq(&entry.keys, keys) && now <= entry.good_until);
            if shard.len() >= SHARD_CAPACITY {
                shard.clear();
            }
        }
        shard.insert(
            digest,
            Entry {
                verified,
                good_until,
                keys: Arc::clone(keys),
            },
        );
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().map(|s| s.len()).unwrap_or(0))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(subject: &str) -> Verified {
        Verified {
            claims: Arc::new(Map::new()),
            subject: subject.into(),
            issuer: "https://issuer.test".into(),
            expires_at: 1_000,
        }
    }

    #[test]
    fn an_entry_counts_until_its_end_and_only_with_its_key_set() {
        let cache = VerifiedCache::default();
        let keys = Arc::new(Vec::new());
        let other_keys = Arc::new(Vec::new());
        let token = digest("a.b.c");
        cache.insert(token, verified("anne"), &keys, 1_030, 900);
        assert_eq!(
            cache.get(&token, &keys, 1_030).map(|v| v.subject),
            Some("anne".into())
        );
        assert!(cache.get(&token, &keys, 1_031).is_none(), "past its end");
        assert!(
            cache.get(&token, &keys, 900).is_none(),
            "an expired entry is dropped"
        );

        cache.insert(token, verified("anne"), &keys, 1_030, 900);
        assert!(
            cache.get(&token, &other_keys, 900).is_none(),
            "verified with a key set that is no longer held"
        );
        assert!(cache.get(&token, &keys, 900).is_none(), "and dropped");
        assert!(cache.get(&digest("a.b.d"), &keys, 900).is_none());
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = VerifiedCache::default();
        let keys = Arc::new(Vec::new());
        for i in 0..(SHARDS * SHARD_CAPACITY * 3) {
            cache.insert(digest(&format!("t{i}")), verified("x"), &keys, 2_000, 1_000);
        }
        assert!(cache.len() <= SHARDS * SHARD_CAPACITY);
        assert!(cache.len() > 0);
    }
}
