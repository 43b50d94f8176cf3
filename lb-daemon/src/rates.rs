//! Per-second rates of the data path's counters (what `ipvsadm -L --rate` shows), and a short
//! history of them for the status page's sparklines.
//!
//! The counters are absolute totals per backend id, read from the data path; a sampler in the
//! daemon feeds them here once a second ([`RateBook::observe`]) and the status reader takes the
//! rates from here. Sans-IO: the caller passes the time.
//!
//! Memory is bounded: one entry per backend id the data path counts, each with
//! [`HISTORY_POINTS`] `u32`s; ids that stop being counted (freed backends) are forgotten.

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use lb_common::Counter;
use serde::{Deserialize, Serialize};

/// Seconds of samples averaged into one history point.
pub const HISTORY_STEP: Duration = Duration::from_secs(5);
/// History points kept per backend: five minutes at [`HISTORY_STEP`].
pub const HISTORY_POINTS: usize = 60;

/// Rates over the last sampling interval.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Rates {
    /// Flows started per second (connections per second).
    pub new_flows_per_s: f64,
    /// Packets per second.
    pub packets_per_s: f64,
    /// Bytes per second.
    pub bytes_per_s: f64,
}

impl Rates {
    /// Adds `other` (a service's rates are its backends').
    pub fn add(&mut self, other: Rates) {
        self.new_flows_per_s += other.new_flows_per_s;
        self.packets_per_s += other.packets_per_s;
        self.bytes_per_s += other.bytes_per_s;
    }
}

#[derive(Debug, Default)]
struct Entry {
    last: Counter,
    rates: Rates,
    /// Packets per second, one point per [`HISTORY_STEP`], oldest first.
    history: VecDeque<u32>,
    /// Packets and seconds summed towards the next history point.
    pending_packets: f64,
    pending_secs: f64,
}

/// Rates per backend id, from successive counter readings, and the flood guard's episodes.
#[derive(Debug, Default)]
pub struct RateBook {
    last_at: Option<Duration>,
    entries: HashMap<u32, Entry>,
    /// The flood guard's episodes.
    pub flood: FloodWatch,
}

impl RateBook {
    /// An empty book.
    pub fn new() -> RateBook {
        RateBook::default()
    }

    /// Takes a reading of every backend's counters at `now` (any monotonic origin). The first
    /// reading only sets the base; a counter that went backwards (an id freed and reused) gives
    /// a zero rate once and counts on from its new value.
    pub fn observe(&mut self, now: Duration, backends: &HashMap<u32, Counter>) {
        let secs = self
            .last_at
            .and_then(|t| now.checked_sub(t))
            .map(|d| d.as_secs_f64())
            .filter(|s| *s > 0.0);
        self.last_at = Some(now);
        self.entries.retain(|id, _| backends.contains_key(id));
        for (id, c) in backends {
            let entry = self.entries.entry(*id).or_insert_with(|| Entry {
                last: *c,
                ..Entry::default()
            });
            let Some(secs) = secs else {
                entry.last = *c;
                continue;
            };
            let delta = |now: u64, before: u64| now.saturating_sub(before) as f64;
            let packets = delta(c.packets, entry.last.packets);
            entry.rates = Rates {
                new_flows_per_s: delta(c.new_flows, entry.last.new_flows) / secs,
                packets_per_s: packets / secs,
                bytes_per_s: delta(c.bytes, entry.last.bytes) / secs,
            };
            entry.last = *c;
            entry.pending_packets += packets;
            entry.pending_secs += secs;
            if entry.pending_secs >= HISTORY_STEP.as_secs_f64() {
                let point = entry.pending_packets / entry.pending_secs;
                entry
                    .history
                    .push_back(point.round().min(f64::from(u32::MAX)) as u32);
                if entry.history.len() > HISTORY_POINTS {
                    entry.history.pop_front();
                }
                (entry.pending_packets, entry.pending_secs) = (0.0, 0.0);
            }
        }
    }

    /// A backend's rates (zero when it has none yet).
    pub fn rates(&self, id: u32) -> Rates {
        self.entries.get(&id).map(|e| e.rates).unwrap_or_default()
    }

    /// A backend's packets-per-second history, oldest first.
    pub fn history(&self, id: u32) -> Vec<u32> {
        self.entries
            .get(&id)
            .map(|e| e.history.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// How long the flood guard must stay quiet before an episode counts as over.
pub const FLOOD_QUIET: Duration = Duration::from_secs(10);

/// What the flood guard did, as the status shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FloodGuardStatus {
    /// The configured rate (`daemon.flood_new_flows_per_sec`); 0: off.
    pub new_flows_per_sec: u32,
    /// Holding new flows back now (within the last [`FLOOD_QUIET`]).
    pub active: bool,
    /// Episodes since start.
    pub episodes: u64,
    /// Packets (XDP) or connections (proxy) it held back since start.
    pub held: u64,
}

/// A change of the flood guard's episode, to log once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FloodEvent {
    /// It began holding new flows back.
    Started,
    /// It held none back for [`FLOOD_QUIET`]: the episode held `held` over `secs` seconds.
    Ended {
        /// Held back in the episode.
        held: u64,
        /// From its first to its last held flow.
        secs: f64,
    },
}

/// Episodes of the flood guard, from its counter.
#[derive(Debug, Default)]
pub struct FloodWatch {
    last: Option<u64>,
    /// (start, count at start, last growth) of the episode under way.
    episode: Option<(Duration, u64, Duration)>,
    episodes: u64,
}

impl FloodWatch {
    /// Takes a reading of the counter at `now`; returns an episode's start or end.
    pub fn observe(&mut self, now: Duration, total: u64) -> Option<FloodEvent> {
        let before = self.last.replace(total);
        let grew = before.is_some_and(|b| total > b);
        match (&mut self.episode, grew) {
            (None, true) => {
                self.episode = Some((now, before.unwrap_or(0), now));
                self.episodes += 1;
                Some(FloodEvent::Started)
            }
            (Some((_, _, last)), true) => {
                *last = now;
                None
            }
            (Some((start, at_start, last)), false) if now.saturating_sub(*last) >= FLOOD_QUIET => {
                let ended = FloodEvent::Ended {
                    held: total.saturating_sub(*at_start),
                    secs: last.saturating_sub(*start).as_secs_f64(),
                };
                self.episode = None;
                Some(ended)
            }
            _ => None,
        }
    }

    /// Whether an episode is under way, and how many there were.
    pub fn state(&self) -> (bool, u64) {
        (self.episode.is_some(), self.episodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(entries: &[(u32, u64, u64, u64)]) -> HashMap<u32, Counter> {
        entries
            .iter()
            .map(|&(id, packets, bytes, new_flows)| {
                (
                    id,
                    Counter {
                        packets,
                        bytes,
                        new_flows,
                    },
                )
            })
            .collect()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn rates_are_deltas_over_the_interval() {
        let mut book = RateBook::new();
        book.observe(secs(10), &reading(&[(1, 100, 10_000, 5)]));
        assert_eq!(
            book.rates(1),
            Rates::default(),
            "one reading is only a base"
        );
        book.observe(secs(12), &reading(&[(1, 300, 30_000, 9)]));
        assert_eq!(
            book.rates(1),
            Rates {
                new_flows_per_s: 2.0,
                packets_per_s: 100.0,
                bytes_per_s: 10_000.0,
            }
        );
        assert_eq!(book.rates(7), Rates::default(), "unknown id");
    }

    #[test]
    fn a_reused_id_restarts_from_its_new_value() {
        let mut book = RateBook::new();
        book.observe(secs(0), &reading(&[(1, 1000, 1000, 10)]));
        book.observe(secs(1), &reading(&[(1, 5, 50, 1)]));
        assert_eq!(book.rates(1), Rates::default());
        book.observe(secs(2), &reading(&[(1, 15, 150, 2)]));
        assert_eq!(book.rates(1).packets_per_s, 10.0);
        assert_eq!(book.rates(1).new_flows_per_s, 1.0);
    }

    #[test]
    fn forgotten_ids_go_and_new_ones_start_from_a_base() {
        let mut book = RateBook::new();
        book.observe(secs(0), &reading(&[(1, 0, 0, 0)]));
        book.observe(secs(1), &reading(&[(2, 500, 0, 0)]));
        assert_eq!(
            book.rates(2),
            Rates::default(),
            "a new id's first value is a base"
        );
        assert!(!book.entries.contains_key(&1), "freed id forgotten");
        book.observe(secs(2), &reading(&[(2, 600, 0, 0)]));
        assert_eq!(book.rates(2).packets_per_s, 100.0);
    }

    #[test]
    fn history_averages_steps_and_stays_bounded() {
        let mut book = RateBook::new();
        let mut packets = 0;
        book.observe(secs(0), &reading(&[(1, packets, 0, 0)]));
        // 10 packets/s for the first 5 s, then 20/s, for far longer than the history holds.
        for t in 1..=(HISTORY_POINTS as u64 * 5 + 50) {
            packets += if t <= 5 { 10 } else { 20 };
            book.observe(secs(t), &reading(&[(1, packets, 0, 0)]));
            if t == 10 {
                assert_eq!(book.history(1), vec![10, 20]);
            }
        }
        let h = book.history(1);
        assert_eq!(h.len(), HISTORY_POINTS);
        assert!(h.iter().all(|p| *p == 20), "{h:?}");
    }

    #[test]
    fn a_clock_that_does_not_advance_changes_nothing() {
        let mut book = RateBook::new();
        book.observe(secs(5), &reading(&[(1, 0, 0, 0)]));
        book.observe(secs(6), &reading(&[(1, 10, 0, 0)]));
        book.observe(secs(6), &reading(&[(1, 99, 0, 0)]));
        // No interval: the rate and base stay; the next interval counts from the last value.
        assert_eq!(book.rates(1).packets_per_s, 10.0);
    }
}

#[cfg(test)]
mod flood_tests {
    use super::*;

    #[test]
    fn one_episode_per_flood_ended_after_the_quiet_time() {
        let s = Duration::from_secs;
        let mut w = FloodWatch::default();
        assert_eq!(w.observe(s(0), 5), None, "the first reading is a base");
        assert_eq!(w.observe(s(1), 5), None);
        assert_eq!(w.observe(s(2), 100), Some(FloodEvent::Started));
        assert_eq!(w.state(), (true, 1));
        assert_eq!(w.observe(s(3), 500), None, "logged once per episode");
        assert_eq!(w.observe(s(4), 500), None);
        assert_eq!(w.observe(s(12), 500), None, "quiet for 9 s only");
        assert_eq!(
            w.observe(s(13), 500),
            Some(FloodEvent::Ended {
                held: 495,
                secs: 1.0
            })
        );
        assert_eq!(w.state(), (false, 1));
        assert_eq!(w.observe(s(14), 501), Some(FloodEvent::Started));
        assert_eq!(w.state(), (true, 2));
    }
}
