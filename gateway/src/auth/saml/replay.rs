//! Replay protection for exchanged assertions: an assertion (by issuer and id) is accepted
//! once during its lifetime ([SAML profiles §4.1.4.5]). One replica keeps the ids in memory;
//! several share them through Redis (`SET key NX PXAT`), so a card exchanged at one replica is
//! refused at all others.
//!
//! [SAML profiles §4.1.4.5]: https://docs.oasis-open.org/security/saml/v2.0/saml-profiles-2.0-os.pdf

use std::collections::HashMap;
use std::sync::Mutex;

use crate::redis::{RedisClient, Reply};

/// Why an assertion could not be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// It was seen before.
    #[error("the assertion was already used")]
    Replayed,
    /// The record of used assertions could not be consulted (full, or Redis unreachable):
    /// refusing is the only safe answer, and the caller may try again later.
    #[error("the replay cache is unavailable")]
    Unavailable,
}

/// Where used assertion ids are kept.
#[derive(Debug)]
pub enum ReplayStore {
    /// In this process (one replica).
    Memory(MemoryReplayCache),
    /// In Redis, shared by every replica.
    Redis(RedisClient),
}

impl ReplayStore {
    /// Records `key` as used until `until` (seconds since the epoch); refuses it if it was
    /// used before.
    pub async fn first_use(&self, key: &str, until: u64, now: u64) -> Result<(), ReplayError> {
        match self {
            ReplayStore::Memory(cache) => cache.first_use(key, until, now),
            ReplayStore::Redis(redis) => {
                // Fixed-length keys whatever the assertion's id looks like.
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
                let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
                let name = format!("portvagt:assertion:{hex}");
                let until_ms = until.max(now + 1).saturating_mul(1000).to_string();
                let reply = redis
                    .command(&[
                        b"SET",
                        name.as_bytes(),
                        b"1",
                        b"NX",
                        b"PXAT",
                        until_ms.as_bytes(),
                    ])
                    .await;
                match reply {
                    Ok(Reply::Simple(ok)) if ok == "OK" => Ok(()),
                    Ok(Reply::Bulk(None)) => Err(ReplayError::Replayed),
                    Ok(_) => Err(ReplayError::Unavailable),
                    Err(error) => {
                        tracing::warn!(%error, "replay cache: Redis unavailable");
                        Err(ReplayError::Unavailable)
                    }
                }
            }
        }
    }
}

/// Used assertion ids, in memory, each until its assertion expires.
#[derive(Debug)]
pub struct MemoryReplayCache {
    seen: Mutex<HashMap<String, u64>>,
    capacity: usize,
}

impl MemoryReplayCache {
    /// Holds at most `capacity` live ids. When full of unexpired ids it refuses new ones
    /// rather than forget one (forgetting would let that assertion be replayed).
    pub fn new(capacity: usize) -> MemoryReplayCache {
        MemoryReplayCache {
            seen: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// Records `key` as used until `until` (seconds since the epoch); refuses it if it was
    /// recorded before and has not expired at `now`.
    pub fn first_use(&self, key: &str, until: u64, now: u64) -> Result<(), ReplayError> {
        let mut seen = self.seen.lock().map_err(|_| ReplayError::Unavailable)?;
        if let Some(&expiry) = seen.get(key)
            && expiry > now
        {
            return Err(ReplayError::Replayed);
        }
        if seen.len() >= self.capacity {
            seen.retain(|_, expiry| *expiry > now);
            if seen.len() >= self.capacity {
                return Err(ReplayError::Unavailable);
            }
        }
        seen.insert(key.to_owned(), until);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_accepted_once_until_it_expires() {
        let cache = MemoryReplayCache::new(10);
        assert_eq!(cache.first_use("sts\nA", 200, 100), Ok(()));
        assert_eq!(
            cache.first_use("sts\nA", 200, 150),
            Err(ReplayError::Replayed)
        );
        assert_eq!(cache.first_use("sts\nB", 200, 150), Ok(()));
        // After the assertion's end it could not be accepted anyway; the slot is reusable.
        assert_eq!(cache.first_use("sts\nA", 400, 200), Ok(()));
    }

    #[test]
    fn a_full_cache_refuses_instead_of_forgetting() {
        let cache = MemoryReplayCache::new(2);
        cache.first_use("a", 200, 100).unwrap();
        cache.first_use("b", 200, 100).unwrap();
        assert_eq!(
            cache.first_use("c", 200, 100),
            Err(ReplayError::Unavailable)
        );
        // Expired entries make room.
        assert_eq!(cache.first_use("c", 300, 200), Ok(()));
        assert_eq!(cache.first_use("a", 300, 200), Ok(()));
    }
}
