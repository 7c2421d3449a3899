//! Exponential backoff with full jitter: the n-th retry waits a random time between zero
//! and `min * 2^n`, capped at `max`, so that a fleet of sidecars that lost the same
//! upstream does not come back in lockstep.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backoff minimum {min:?} is above its maximum {max:?}")]
pub struct BackoffError {
    pub min: Duration,
    pub max: Duration,
}

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    /// xorshift state; jitter needs spread, not cryptographic quality.
    rng: u64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Result<Backoff, BackoffError> {
        if min > max {
            return Err(BackoffError { min, max });
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Ok(Backoff { min, max, attempt: 0, rng: seed | 1 })
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.min.saturating_mul(1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let fraction = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        ceiling.mul_f64(fraction)
    }

    /// After a success, the next failure starts from the minimum again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_above_max_is_refused() {
        let error = Backoff::new(Duration::from_secs(2), Duration::from_secs(1)).expect_err("refused");
        assert_eq!(error.to_string(), "backoff minimum 2s is above its maximum 1s");
    }

    #[test]
    fn delays_grow_to_the_cap_and_reset() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut backoff = Backoff::new(min, max).expect("valid");
        let mut ceilings_seen = Vec::new();
        for attempt in 0..12u32 {
            let ceiling = (min * 2u32.pow(attempt.min(10))).min(max);
            let delay = backoff.next_delay();
            assert!(delay <= ceiling, "attempt {attempt}: {delay:?} over {ceiling:?}");
            ceilings_seen.push(ceiling);
        }
        assert_eq!(ceilings_seen.last(), Some(&max));
        // Jitter spreads the waits: a hundred draws at the cap are not all alike.
        let draws: std::collections::BTreeSet<Duration> = (0..100).map(|_| backoff.next_delay()).collect();
        assert!(draws.len() > 50);
        backoff.reset();
        assert!(backoff.next_delay() <= min);
    }
}
