//! The mass-lookup guard (`[mass_lookup]`, README "Mass-lookup guard"): per professional, the
//! distinct patients whose data she reached in a sliding window. The access that would take her
//! past `max_patients` is refused (403 `too-many-patients`) or only flagged; either way it is
//! counted and logged. With Redis the count is shared by every replica (a sorted set per
//! professional, updated by one script); without it, or while Redis cannot answer, each
//! replica counts on its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::auth::Principal;
use crate::config::{ConfigError, MassLookupAction, MassLookupConfig};
use crate::metrics::Metrics;
use crate::redis::{RedisClient, Reply};

/// The script that counts atomically in Redis: drop what left the window, count the patients
/// with the new ones, and (unless refused) record them. Returns the count, how many were new,
/// and whether it refused.
const SCRIPT: &str = r"
local key = KEYS[1]
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
local refuse = ARGV[4] == '1'
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local new = 0
for i = 5, #ARGV do
  if not redis.call('ZSCORE', key, ARGV[i]) then new = new + 1 end
end
local total = redis.call('ZCARD', key) + new
if total > max and new > 0 and refuse then return {total, new, 1} end
for i = 5, #ARGV do redis.call('ZADD', key, now, ARGV[i]) end
redis.call('PEXPIRE', key, window)
return {total, new, 0}
";

/// One professional's patients and when each was last reached (Unix milliseconds).
type Seen = HashMap<String, u64>;

/// The guard.
#[derive(Debug)]
pub struct MassLookupGuard {
    max_patients: u64,
    window_ms: u64,
    action: MassLookupAction,
    roles: Vec<String>,
    redis: Option<RedisClient>,
    local: Mutex<HashMap<String, Seen>>,
    metrics: Arc<Metrics>,
}

/// What the guard says about one access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Within the threshold.
    Within,
    /// Past it, let through (`action = "flag"`).
    Flagged,
    /// Past it: refused.
    Refused,
}

impl MassLookupGuard {
    /// From `[mass_lookup]`.
    pub fn new(
        config: &MassLookupConfig,
        metrics: Arc<Metrics>,
        redis: &crate::redis::RedisSettings,
    ) -> Result<MassLookupGuard, ConfigError> {
        if config.max_patients == 0 {
            return Err(ConfigError::new(
                "mass_lookup.max_patients",
                "must be at least 1",
            ));
        }
        let window_ms = u64::try_from(config.window.as_millis()).unwrap_or(u64::MAX);
        if window_ms < 1000 {
            return Err(ConfigError::new(
                "mass_lookup.window",
                "must be at least 1s",
            ));
        }
        let redis = config
            .redis_url
            .as_deref()
            .map(|url| RedisClient::from_url(url, Duration::from_millis(500), redis))
            .transpose()
            .map_err(|e| ConfigError::new("mass_lookup.redis_url", e))?;
        Ok(MassLookupGuard {
            max_patients: u64::from(config.max_patients),
            window_ms,
            action: config.action,
            roles: config.roles.clone(),
            redis,
            local: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// The professional `principal` is, if the guard binds her: a token with a role (one of
    /// `roles`, when named) that is not the citizen's own, known by her authorisation id (the same
    /// person whichever token or issuer) or else by issuer and subject.
    pub fn professional(&self, principal: &Principal) -> Option<String> {
        let roles = principal.roles();
        let the_patient = principal.own_patient().is_some();
        let bound = !the_patient
            && !roles.is_empty()
            && (self.roles.is_empty() || roles.iter().any(|role| self.roles.contains(role)));
        if !bound {
            return None;
        }
        let identity = principal.identity();
        let given = |value: &Option<String>| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|value| !value.is_empty())
                .map(str::to_owned)
        };
        Some(
            if let Some(authorization) = given(&identity.authorization_id) {
                format!("authorization\n{}", authorization.to_lowercase())
            } else if let Some(cpr) = given(&identity.cpr) {
                format!("cpr\n{}", cpr.replace('-', ""))
            } else {
                format!("subject\n{}\n{}", principal.issuer(), principal.subject())
            },
        )
    }

    /// Counts `patients` (ids) for `professional`: within the threshold, flagged, or refused
    /// (then nothing of this access is counted). An access that `may_refuse` not (the answer
    /// to a write, which has happened) is counted and at most flagged.
    pub async fn admit(
        &self,
        professional: &str,
        patients: &[String],
        may_refuse: bool,
    ) -> Admission {
        if patients.is_empty() {
            return Admission::Within;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let refuse = self.action == MassLookupAction::Refuse && may_refuse;
        let shared = match &self.redis {
            Some(redis) => {
                self.shared(redis, professional, patients, now, refuse)
                    .await
            }
            None => None,
        };
        let (total, new, refused) =
            shared.unwrap_or_else(|| self.local(professional, patients, now, refuse));
        // Past the threshold by reaching somebody new: a patient already reached is no new
        // lookup (and an access is flagged once, not again when its answer is counted).
        if total <= self.max_patients || new == 0 {
            return Admission::Within;
        }
        let (admission, label) = if refused {
            (Admission::Refused, "refused")
        } else {
            (Admission::Flagged, "flagged")
        };
        self.metrics.mass_lookups.with_label_values(&[label]).inc();
        tracing::warn!(
            professional = professional.replace('\n', " "),
            patients = total,
            threshold = self.max_patients,
            action = label,
            "mass lookup: one professional reached more patients than the threshold in the window"
        );
        admission
    }

    fn local(
        &self,
        professional: &str,
        patients: &[String],
        now: u64,
        refuse: bool,
    ) -> (u64, u64, bool) {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let since = now.saturating_sub(self.window_ms);
        if local.len() > 100_000 {
            local.retain(|_, seen| seen.values().any(|at| *at > since));
        }
        let seen = local.entry(professional.to_owned()).or_default();
        seen.retain(|_, at| *at > since);
        let new = patients
            .iter()
            .filter(|patient| !seen.contains_key(*patient))
            .collect::<std::collections::HashSet<_>>()
            .len();
        let total = (seen.len() + new) as u64;
        let new = new as u64;
        if total > self.max_patients && new > 0 && refuse {
            return (total, new, true);
        }
        for patient in patients {
            seen.insert(patient.clone(), now);
        }
        (total, new, false)
    }

    async fn shared(
        &self,
        redis: &RedisClient,
        professional: &str,
        patients: &[String],
        now: u64,
        refuse: bool,
    ) -> Option<(u64, u64, bool)> {
        let key = format!("portvagt:patients:{}", digest(professional));
        let mut args: Vec<Vec<u8>> = vec![
            b"EVAL".to_vec(),
            SCRIPT.as_bytes().to_vec(),
            b"1".to_vec(),
            key.into_bytes(),
            now.to_string().into_bytes(),
            self.window_ms.to_string().into_bytes(),
            self.max_patients.to_string().into_bytes(),
            if refuse { b"1".to_vec() } else { b"0".to_vec() },
        ];
        let mut unique: Vec<&String> = patients.iter().collect();
        unique.sort_unstable();
        unique.dedup();
        // Patient ids leave the gateway only as digests.
        args.extend(unique.iter().map(|patient| digest(patient).into_bytes()));
        let borrowed: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        match redis.command(&borrowed).await {
            Ok(Reply::Array(Some(reply))) => match reply.as_slice() {
                [
                    Reply::Integer(total),
                    Reply::Integer(new),
                    Reply::Integer(refused),
                ] => Some((total.unsigned_abs(), new.unsigned_abs(), *refused == 1)),
                _ => None,
            },
            _ => {
                tracing::warn!(
                    "mass-lookup guard: Redis unavailable, counting in this replica only"
                );
                None
            }
        }
    }
}

/// The first 16 bytes of SHA-256, hex.
fn digest(text: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes()).as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(max: u32, action: MassLookupAction) -> MassLookupGuard {
        MassLookupGuard::new(
            &MassLookupConfig {
                max_patients: max,
                window: Duration::from_secs(60),
                action,
                roles: Vec::new(),
                redis_url: None,
            },
            Arc::new(Metrics::new()),
            &crate::redis::RedisSettings::default(),
        )
        .unwrap()
    }

    fn ids(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|id| (*id).to_owned()).collect()
    }

    #[tokio::test]
    async fn distinct_patients_are_counted_and_the_one_past_the_threshold_refused() {
        let guard = guard(3, MassLookupAction::Refuse);
        assert_eq!(
            guard.admit("a", &ids(&["p1", "p2"]), true).await,
            Admission::Within
        );
        // The same patients again count once.
        assert_eq!(
            guard.admit("a", &ids(&["p1", "p2", "p2"]), true).await,
            Admission::Within
        );
        assert_eq!(
            guard.admit("a", &ids(&["p3"]), true).await,
            Admission::Within
        );
        assert_eq!(
            guard.admit("a", &ids(&["p4"]), true).await,
            Admission::Refused
        );
        // Refused: not counted, so a patient already reached still is.
        assert_eq!(
            guard.admit("a", &ids(&["p1"]), true).await,
            Admission::Within
        );
        // A search reaching several at once is judged whole.
        assert_eq!(
            guard
                .admit("b", &ids(&["p1", "p2", "p3", "p4"]), true)
                .await,
            Admission::Refused
        );
        assert_eq!(
            guard.admit("b", &ids(&["p1"]), true).await,
            Admission::Within
        );
    }

    #[tokio::test]
    async fn the_answer_to_a_write_is_counted_never_refused() {
        let guard = guard(1, MassLookupAction::Refuse);
        assert_eq!(
            guard.admit("a", &ids(&["p1"]), true).await,
            Admission::Within
        );
        assert_eq!(
            guard.admit("a", &ids(&["p2"]), false).await,
            Admission::Flagged
        );
        // Counted: a look-up of a third patient is past the threshold, and refused.
        assert_eq!(
            guard.admit("a", &ids(&["p3"]), true).await,
            Admission::Refused
        );
    }

    #[tokio::test]
    async fn flagging_lets_it_through_and_counts() {
        let guard = guard(1, MassLookupAction::Flag);
        assert_eq!(
            guard.admit("a", &ids(&["p1"]), true).await,
            Admission::Within
        );
        assert_eq!(
            guard.admit("a", &ids(&["p2"]), true).await,
            Admission::Flagged
        );
        assert_eq!(
            guard.admit("a", &ids(&["p3"]), true).await,
            Admission::Flagged
        );
        let flagged = guard
            .metrics
            .mass_lookups
            .with_label_values(&["flagged"])
            .get();
        assert_eq!(flagged, 2);
    }
}
