//! The up/down state machine of one health-check target (sans-IO: no clock, no sockets).

use std::fmt;

/// Whether a backend passes its health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Passing: takes new flows.
    Up,
    /// Failing: out of rotation.
    Down,
}

impl HealthState {
    /// Whether this is [`HealthState::Up`].
    pub fn is_up(self) -> bool {
        self == HealthState::Up
    }

    /// `up` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Up => "up",
            HealthState::Down => "down",
        }
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of [`HealthState`] reported by [`Tracker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    /// Down → Up: `rise` consecutive probes passed.
    WentUp,
    /// Up → Down: `fall` consecutive probes failed.
    WentDown,
}

impl Transition {
    /// The state after the transition.
    pub fn state(self) -> HealthState {
        match self {
            Transition::WentUp => HealthState::Up,
            Transition::WentDown => HealthState::Down,
        }
    }
}

/// The up/down state machine of one target: counts consecutive results against the rise and
/// fall thresholds. Sans-IO: the caller feeds it results, it keeps no time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    state: HealthState,
    ok_streak: u32,
    fail_streak: u32,
}

impl Tracker {
    /// A tracker in state `initial` with no results yet. Thresholds below 1 count as 1.
    pub fn new(rise: u32, fall: u32, initial: HealthState) -> Tracker {
        Tracker {
            rise: rise.max(1),
            fall: fall.max(1),
            state: initial,
            ok_streak: 0,
            fail_streak: 0,
        }
    }

    /// Records one probe result; returns the transition it caused, if any. An Up target goes
    /// Down on the `fall`-th consecutive failure, a Down target comes Up on the `rise`-th
    /// consecutive pass; any opposite result restarts the count.
    pub fn record(&mut self, ok: bool) -> Option<Transition> {
        if ok {
            self.fail_streak = 0;
            self.ok_streak = self.ok_streak.saturating_add(1);
            if self.state == HealthState::Down && self.ok_streak >= self.rise {
                self.state = HealthState::Up;
                return Some(Transition::WentUp);
            }
        } else {
            self.ok_streak = 0;
            self.fail_streak = self.fail_streak.saturating_add(1);
            if self.state == HealthState::Up && self.fail_streak >= self.fall {
                self.state = HealthState::Down;
                return Some(Transition::WentDown);
            }
        }
        None
    }

    /// The current state.
    pub fn state(&self) -> HealthState {
        self.state
    }

    /// Consecutive passed probes up to now (0 after a failure).
    pub fn consecutive_ok(&self) -> u32 {
        self.ok_streak
    }

    /// Consecutive failed probes up to now (0 after a pass).
    pub fn consecutive_fail(&self) -> u32 {
        self.fail_streak
    }

    /// The rise threshold.
    pub fn rise(&self) -> u32 {
        self.rise
    }

    /// The fall threshold.
    pub fn fall(&self) -> u32 {
        self.fall
    }

    /// Changes the thresholds (a reload), keeping the state and the streaks: a streak that
    /// already meets a lowered threshold makes the transition at the next result.
    pub fn set_thresholds(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// Forgets the streaks but keeps the state (the check itself changed, so earlier results
    /// say nothing about the new one).
    pub fn reset_streaks(&mut self) {
        self.ok_streak = 0;
        self.fail_streak = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_fall_failures_take_it_down() {
        for fall in [1, 2, 3, 7] {
            let mut t = Tracker::new(2, fall, HealthState::Up);
            for i in 1..fall {
                assert_eq!(t.record(false), None, "failure {i} of fall {fall}");
                assert_eq!(t.state(), HealthState::Up);
            }
            assert_eq!(t.record(false), Some(Transition::WentDown), "fall {fall}");
            assert_eq!(t.state(), HealthState::Down);
            // More failures: no second transition.
            assert_eq!(t.record(false), None);
            assert_eq!(t.consecutive_fail(), fall + 1);
        }
    }

    #[test]
    fn exactly_rise_passes_bring_it_up() {
        for rise in [1, 2, 5] {
            let mut t = Tracker::new(rise, 3, HealthState::Down);
            for i in 1..rise {
                assert_eq!(t.record(true), None, "pass {i} of rise {rise}");
                assert_eq!(t.state(), HealthState::Down);
            }
            assert_eq!(t.record(true), Some(Transition::WentUp), "rise {rise}");
            assert_eq!(t.state(), HealthState::Up);
            assert_eq!(t.record(true), None);
        }
    }

    #[test]
    fn flapping_below_thresholds_never_transitions() {
        let mut up = Tracker::new(3, 3, HealthState::Up);
        let mut down = Tracker::new(3, 3, HealthState::Down);
        // Two failures, one pass, repeated: never three in a row of either.
        let pattern = [false, false, true, true, false, false, true];
        for _ in 0..50 {
            for ok in pattern {
                assert_eq!(up.record(ok), None);
                assert_eq!(down.record(ok), None);
            }
        }
        assert_eq!(up.state(), HealthState::Up);
        assert_eq!(down.state(), HealthState::Down);
    }

    #[test]
    fn a_full_cycle_and_threshold_changes() {
        let mut t = Tracker::new(2, 3, HealthState::Up);
        let results: Vec<Option<Transition>> = [
            true, false, false, true, false, false, false, true, false, true, true,
        ]
        .into_iter()
        .map(|ok| t.record(ok))
        .collect();
        use Transition::*;
        assert_eq!(
            results,
            [
                None,
                None,
                None,
                None,
                None,
                None,
                Some(WentDown),
                None,
                None,
                None,
                Some(WentUp)
            ]
        );
        // Lowering fall under the current streak: the next failure takes it down.
        t.record(false);
        t.record(false);
        t.set_thresholds(2, 1);
        assert_eq!(t.state(), HealthState::Up);
        assert_eq!(t.record(false), Some(WentDown));
        // Zero thresholds act as one.
        let mut z = Tracker::new(0, 0, HealthState::Up);
        assert_eq!((z.rise(), z.fall()), (1, 1));
        assert_eq!(z.record(false), Some(WentDown));
        assert_eq!(z.record(true), Some(WentUp));
    }
}
