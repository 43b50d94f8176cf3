//! Rate limit for warnings that could otherwise come once per connection or datagram.

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// Lets one event through per period and counts the ones it holds back.
#[derive(Debug)]
pub(crate) struct RateLimit {
    period: Duration,
    /// When the last event went through, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimit {
    /// One event per `period`.
    pub(crate) fn new(period: Duration) -> RateLimit {
        RateLimit {
            period,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(held back since the last one)` when this event may be logged, else None.
    pub(crate) fn check(&self) -> Option<u64> {
        // Only warnings pass here (never the byte path), so a plain lock is cheap enough; a
        // poisoned lock still holds two valid numbers.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.period => {
                state.1 += 1;
                None
            }
            _ => {
                let held = state.1;
                *state = (Some(now), 0);
                Some(held)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_period_and_counts_the_rest() {
        let r = RateLimit::new(Duration::from_secs(3600));
        assert_eq!(r.check(), Some(0));
        assert_eq!(r.check(), None);
        assert_eq!(r.check(), None);
        let r = RateLimit::new(Duration::ZERO);
        assert_eq!(r.check(), Some(0));
        assert_eq!(r.check(), Some(0));
    }
}
