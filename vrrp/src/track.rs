//! Tracked conditions: named conditions with a weight that lower the priority while they are failed
//! (keepalived's `track_script` / `track_interface` with a weight).
//!
//! The daemon flips conditions through a [`Tracker`] handle (cheap to clone, usable from any task);
//! the driver in [`crate::io`] watches it and feeds the new [`effective_priority`] to the state
//! machine with [`crate::fsm::Router::set_priority`].

use tokio::sync::watch;

use crate::config::{Priority, TrackedCondition};

/// The priority to advertise: `configured` minus the weights of the failed conditions, clamped to
/// 1–254; the address owner (255) is never lowered.
#[must_use]
pub fn effective_priority(configured: Priority, penalty: u32) -> u8 {
    if configured.is_owner() {
        return Priority::OWNER.get();
    }
    let p = i64::from(configured.get()) - i64::from(penalty);
    u8::try_from(p.clamp(1, 254)).unwrap_or(1)
}

/// One tracked condition and whether it is failed now.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConditionState {
    /// Name.
    pub name: String,
    /// Priority taken off while failed.
    pub weight: u8,
    /// Whether the condition is failed.
    pub failed: bool,
}

/// No tracked condition has this name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no tracked condition named {0:?}")]
pub struct UnknownCondition(pub String);

/// A handle on the tracked conditions of one virtual router. Clones share the same conditions.
#[derive(Debug, Clone)]
pub struct Tracker {
    tx: watch::Sender<Vec<ConditionState>>,
}

impl Tracker {
    /// Tracks `conditions`, all healthy at first (a condition's first failure lowers the priority;
    /// nothing is lowered before the daemon has checked). A repeated name is tracked once.
    #[must_use]
    pub fn new(conditions: &[TrackedCondition]) -> Self {
        let mut states: Vec<ConditionState> = Vec::with_capacity(conditions.len());
        for cond in conditions {
            if states.iter().all(|s| s.name != cond.name) {
                states.push(ConditionState {
                    name: cond.name.clone(),
                    weight: cond.weight,
                    failed: false,
                });
            }
        }
        let (tx, _) = watch::channel(states);
        Self { tx }
    }

    /// Marks condition `name` failed or healthy. Watchers are woken only when this changes it.
    ///
    /// # Errors
    /// [`UnknownCondition`] if no condition has that name.
    pub fn set_failed(&self, name: &str, failed: bool) -> Result<(), UnknownCondition> {
        let mut known = false;
        self.tx
            .send_if_modified(|states| match states.iter_mut().find(|s| s.name == name) {
                Some(s) => {
                    known = true;
                    let changed = s.failed != failed;
                    s.failed = failed;
                    changed
                }
                None => false,
            });
        if known {
            Ok(())
        } else {
            Err(UnknownCondition(name.to_owned()))
        }
    }

    /// Sum of the weights of the failed conditions.
    #[must_use]
    pub fn penalty(&self) -> u32 {
        penalty(&self.tx.borrow())
    }

    /// The priority to advertise for a router configured with `configured`.
    #[must_use]
    pub fn effective_priority(&self, configured: Priority) -> u8 {
        effective_priority(configured, self.penalty())
    }

    /// The conditions and their state now.
    #[must_use]
    pub fn conditions(&self) -> Vec<ConditionState> {
        self.tx.borrow().clone()
    }

    /// A receiver woken on every change, for the driver.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Vec<ConditionState>> {
        self.tx.subscribe()
    }
}

/// The effective priority of a router configured with `configured` given `states`.
pub(crate) fn penalty_priority(configured: Priority, states: &[ConditionState]) -> u8 {
    effective_priority(configured, penalty(states))
}

/// Sum of the weights of the failed conditions in `states`.
pub(crate) fn penalty(states: &[ConditionState]) -> u32 {
    states
        .iter()
        .filter(|s| s.failed)
        .map(|s| u32::from(s.weight))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(name: &str, weight: u8) -> TrackedCondition {
        TrackedCondition {
            name: name.into(),
            weight,
        }
    }

    #[test]
    fn failed_conditions_lower_priority() {
        let t = Tracker::new(&[cond("pool", 30), cond("uplink", 100)]);
        let p150 = Priority::new(150).unwrap();
        assert_eq!(t.effective_priority(p150), 150);
        t.set_failed("pool", true).unwrap();
        assert_eq!(t.effective_priority(p150), 120);
        t.set_failed("uplink", true).unwrap();
        // 150 - 130 = 20
        assert_eq!(t.effective_priority(p150), 20);
        assert_eq!(t.effective_priority(Priority::new(100).unwrap()), 1);
        assert_eq!(t.effective_priority(Priority::OWNER), 255);
        assert_eq!(
            t.set_failed("nope", true),
            Err(UnknownCondition("nope".into()))
        );
        t.set_failed("pool", false).unwrap();
        assert_eq!(t.penalty(), 100);
        assert_eq!(effective_priority(Priority::new(254).unwrap(), 0), 254);
    }

    #[test]
    fn watchers_see_changes_only() {
        let t = Tracker::new(&[cond("pool", 30)]);
        let mut rx = t.subscribe();
        t.set_failed("pool", false).unwrap();
        assert!(!rx.has_changed().unwrap());
        t.clone().set_failed("pool", true).unwrap();
        assert!(rx.has_changed().unwrap());
        assert_eq!(penalty(&rx.borrow_and_update()), 30);
    }
}
