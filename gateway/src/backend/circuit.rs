//! A circuit breaker per backend: after `failures` consecutive failures (no connection, a
//! broken connection, a 5xx, no answer in time) the backend gets no requests for `open_for`;
//! they are answered 503 with `Retry-After` at once instead of piling up on a sick server.
//! Then one trial request is let through (half-open): its success closes the circuit, its
//! failure opens it again. The pattern of Envoy's outlier detection and HAProxy's `observe`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The circuit's state, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Requests flow.
    Closed,
    /// Requests are refused until the pause is over.
    Open,
    /// One trial request is under way.
    HalfOpen,
}

#[derive(Debug)]
struct State {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
}

/// One backend's breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    failures: u32,
    open_for: Duration,
    state: Mutex<State>,
}

/// The circuit is open: retry after this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitOpen {
    /// Seconds until a trial request may go through.
    pub retry_after: u64,
}

impl CircuitBreaker {
    /// Opens after `failures` consecutive failures (0: never) for `open_for`.
    pub fn new(failures: u32, open_for: Duration) -> CircuitBreaker {
        CircuitBreaker {
            failures,
            open_for,
            state: Mutex::new(State {
                consecutive_failures: 0,
                open_until: None,
                trial_in_flight: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a request go to the backend now?
    pub fn admit(&self, now: Instant) -> Result<(), CircuitOpen> {
        let mut state = self.lock();
        match state.open_until {
            None => Ok(()),
            Some(until) if now < until => Err(CircuitOpen {
                retry_after: (until - now).as_secs().max(1),
            }),
            // The pause is over: one trial at a time.
            Some(_) if state.trial_in_flight => Err(CircuitOpen { retry_after: 1 }),
            Some(_) => {
                state.trial_in_flight = true;
                Ok(())
            }
        }
    }

    /// A request got a usable answer.
    pub fn success(&self) {
        let mut state = self.lock();
        state.consecutive_failures = 0;
        state.open_until = None;
        state.trial_in_flight = false;
    }

    /// A request failed; returns whether this opened the circuit.
    pub fn failure(&self, now: Instant) -> bool {
        let mut state = self.lock();
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        let trial_failed = state.trial_in_flight;
        state.trial_in_flight = false;
        if self.failures > 0 && (trial_failed || state.consecutive_failures >= self.failures) {
            let newly = state.open_until.is_none_or(|until| until <= now);
            state.open_until = Some(now + self.open_for);
            return newly;
        }
        false
    }

    /// The state now.
    pub fn state(&self, now: Instant) -> CircuitState {
        let state = self.lock();
        match state.open_until {
            None => CircuitState::Closed,
            Some(until) if now < until => CircuitState::Open,
            Some(_) => CircuitState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_a_good_trial() {
        let breaker = CircuitBreaker::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(!breaker.failure(t0));
        breaker.success();
        assert!(!breaker.failure(t0));
        assert!(!breaker.failure(t0));
        assert_eq!(
            breaker.admit(t0),
            Ok(()),
            "two failures in a row: still closed"
        );
        assert!(breaker.failure(t0), "the third opens it");
        assert_eq!(breaker.state(t0), CircuitState::Open);
        assert_eq!(
            breaker.admit(t0 + Duration::from_secs(4)),
            Err(CircuitOpen { retry_after: 6 })
        );
        let later = t0 + Duration::from_secs(11);
        assert_eq!(breaker.admit(later), Ok(()), "one trial");
        assert_eq!(
            breaker.admit(later),
            Err(CircuitOpen { retry_after: 1 }),
            "only one"
        );
        breaker.success();
        assert_eq!(breaker.state(later), CircuitState::Closed);
        assert_eq!(breaker.admit(later), Ok(()));
    }

    #[test]
    fn a_failed_trial_opens_it_again_at_once() {
        let breaker = CircuitBreaker::new(1, Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(breaker.failure(t0));
        let later = t0 + Duration::from_secs(6);
        assert_eq!(breaker.admit(later), Ok(()));
        assert!(breaker.failure(later));
        assert!(breaker.admit(later + Duration::from_secs(1)).is_err());
    }
}
