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

/// The flood guard of one service: new connections per second it accepts, a token bucket
/// with one second of burst. Zero: no bound.
#[derive(Debug)]
pub(crate) struct AcceptRate {
    /// Per second, and the bucket (tokens, when last filled); one lock, taken once per new
    /// connection.
    state: Mutex<(u32, f64, Option<Instant>)>,
}

impl AcceptRate {
    pub(crate) fn new(per_sec: u32) -> AcceptRate {
        AcceptRate {
            state: Mutex::new((per_sec, f64::from(per_sec), None)),
        }
    }

    /// Changes the rate (a reload); the bucket starts full.
    pub(crate) fn set(&self, per_sec: u32) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        *st = (per_sec, f64::from(per_sec), None);
    }

    /// Takes a token at `now`: None when there was one, else how long until there is.
    pub(crate) fn take(&self, now: Instant) -> Option<Duration> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (rate, tokens, last) = &mut *st;
        if *rate == 0 {
            return None;
        }
        let rate = f64::from(*rate);
        if let Some(last) = *last {
            *tokens =
                (*tokens + now.saturating_duration_since(last).as_secs_f64() * rate).min(rate);
        }
        *last = Some(now);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_rate_allows_a_second_of_burst_then_the_rate() {
        let r = AcceptRate::new(10);
        let t0 = Instant::now();
        for i in 0..10 {
            assert_eq!(r.take(t0), None, "burst token {i}");
        }
        let wait = r.take(t0).expect("empty bucket");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // 0.25 s later: two tokens and a half.
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(r.take(t1), None);
        assert_eq!(r.take(t1), None);
        assert!(r.take(t1).is_some());
        // Off: always.
        r.set(0);
        assert!((0..1000).all(|_| r.take(t1).is_none()));
    }

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
