//! What the daemon reports: one [`Status`] type, built by the core from its state and the data
//! path's counters, answered to `lbctl status` (JSON over the control socket) and rendered as
//! Prometheus metrics ([`crate::metrics`]).

use std::time::Instant;

use lb_common::{Counter, reason};
use serde::{Deserialize, Serialize};

use crate::{
    config::{Proto, Scheduler},
    datapath::{DatapathCounters, DatapathMode},
    engine::Source,
    model::BackendState,
    rates::{FloodGuardStatus, RateBook, Rates},
};

/// What `lbctl status` shows and `/metrics` renders.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// lbd version.
    pub version: String,
    /// Config file in use.
    pub config_path: String,
    /// State file holding the runtime changes.
    pub state_file: String,
    /// Interface.
    pub interface: String,
    /// Data path in use.
    pub datapath: DatapathMode,
    /// Why this data path (the configured mode and any fallback).
    pub datapath_reason: String,
    /// The configured `daemon.datapath` (`auto`, `xdp`, `xdp-generic`, `userspace`).
    #[serde(default)]
    pub datapath_setting: String,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// Unix time of the last config load.
    pub config_loaded_unix: u64,
    /// Config reloads (SIGHUP) applied since start.
    pub config_reloads: u64,
    /// Config reloads rejected since start (the running config was kept).
    pub config_reload_failures: u64,
    /// Connection table entries (as of the last scan).
    pub conntrack_entries: u64,
    /// Connection table capacity.
    pub conntrack_max: u32,
    /// Packets the data path passed to the kernel or dropped, by reason.
    pub reasons: Vec<ReasonCount>,
    /// The new-flow flood guard.
    #[serde(default)]
    pub flood_guard: FloodGuardStatus,
    /// Services.
    pub services: Vec<ServiceStatus>,
    /// VRRP, when configured: the IPv4 virtual router (or the only one).
    pub vrrp: Option<VrrpStatus>,
    /// The IPv6 virtual router, when `[vrrp]` has IPv6 VIPs (RFC 5798 runs one per family).
    #[serde(default)]
    pub vrrp6: Option<VrrpStatus>,
    /// The VIPs' announcement to the routers, with `[announce]`.
    #[serde(default)]
    pub announce: Option<crate::announce::AnnounceStatus>,
}

/// The VRRP speaker in the status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VrrpStatus {
    /// Virtual router id.
    pub vrid: u8,
    /// `INIT`, `BACKUP` or `MASTER`.
    #[serde(with = "vrrp_state")]
    pub state: vrrp::State,
    /// Priority in effect (configured, less failed tracked conditions).
    pub priority: u8,
    /// Configured priority.
    pub configured_priority: u8,
    /// The current master's address, when known.
    pub master: Option<String>,
    /// Unix time (seconds, fractional) of the last state change.
    pub last_transition_unix: Option<f64>,
    /// Times this node became master.
    pub became_master: u64,
    /// State changes since start.
    pub transitions: u64,
    /// Adverts received and accepted.
    pub adverts_accepted: u64,
    /// Adverts dropped, by reason.
    pub adverts_dropped: Vec<ReasonCount>,
    /// Tracked conditions that are failing.
    pub failed_conditions: Vec<String>,
    /// Out of the election by `lbctl vrrp resign` (until `lbctl vrrp resume`).
    #[serde(default)]
    pub resigned: bool,
}

/// A pass/drop reason and its packet count.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReasonCount {
    /// Reason name, e.g. `pass_not_vip`.
    pub reason: String,
    /// Packets.
    pub packets: u64,
}

/// One service in the status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    /// Name.
    pub name: String,
    /// VIP:port.
    pub vip: String,
    /// Protocol.
    pub proto: Proto,
    /// Scheduler.
    pub scheduler: Scheduler,
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// Flows started (connections or UDP sessions).
    #[serde(default)]
    pub new_flows: u64,
    /// Rates over the last second (its backends' summed).
    #[serde(default)]
    pub rates: Rates,
    /// Backends, including removed ones that still carry flows.
    pub backends: Vec<BackendStatus>,
}

/// One backend in the status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendStatus {
    /// Address.
    pub addr: String,
    /// Weight.
    pub weight: u32,
    /// State.
    pub state: BackendState,
    /// Where the backend comes from: the config file or `lbctl` (state file).
    pub source: Source,
    /// Runtime changes that differ from the config file, e.g. `weight 3 by lbctl (config: 1)`.
    pub overrides: Vec<String>,
    /// MAC, when resolved.
    pub mac: Option<String>,
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// Flows started (connections or UDP sessions).
    #[serde(default)]
    pub new_flows: u64,
    /// Rates over the last second.
    #[serde(default)]
    pub rates: Rates,
    /// Packets per second, one point per 5 s, oldest first: the last minutes, for sparklines.
    #[serde(default)]
    pub history_pps: Vec<u32>,
    /// Open flows pinned to it.
    pub flows: u64,
    /// Flows that saw a FIN or RST and are ending.
    pub closing_flows: u64,
    /// Its health check, when the service has one.
    pub health: Option<HealthStatus>,
}

/// A backend's health check in the status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HealthStatus {
    /// Whether it passes (rise/fall applied).
    pub up: bool,
    /// Duration of the last probe in seconds (the timeout when it timed out); none before the
    /// first.
    pub last_seconds: Option<f64>,
    /// What the last probe saw.
    pub detail: Option<String>,
    /// The probe's timeout in seconds.
    #[serde(default)]
    pub timeout_seconds: f64,
}

/// The status as the core last published it, without the live counters: a reader fills them in
/// from the data path's [`crate::datapath::CounterSource`], so that `lbctl status` and scrapes
/// never wait for the core.
#[derive(Debug, Clone)]
pub struct StatusView {
    status: Status,
    started: Instant,
    /// Per service (in status order): its backends' ids (in status order) and what its freed
    /// backends carried.
    ids: Vec<(Vec<u32>, Counter)>,
}

impl StatusView {
    /// A view of `status` (its counters are ignored), with the backend ids behind it.
    pub fn new(status: Status, started: Instant, ids: Vec<(Vec<u32>, Counter)>) -> StatusView {
        StatusView {
            status,
            started,
            ids,
        }
    }

    /// The status with these counters: backends' own, services summed from their backends
    /// (freed ones included), the pass/drop reasons, and the uptime now.
    pub fn fill(&self, counters: &DatapathCounters) -> Status {
        let mut s = self.status.clone();
        s.uptime_s = self.started.elapsed().as_secs();
        s.reasons = (0..reason::COUNT)
            .map(|r| ReasonCount {
                reason: reason::NAMES[r as usize].into(),
                packets: counters.reasons.get(r as usize).map_or(0, |c| c.packets),
            })
            .collect();
        s.flood_guard.held = counters
            .reasons
            .get(reason::FLOOD_GUARD as usize)
            .map_or(0, |c| c.packets);
        for (svc, (ids, retired)) in s.services.iter_mut().zip(&self.ids) {
            for (b, id) in svc.backends.iter_mut().zip(ids) {
                let c = counters.backend(*id);
                (b.packets, b.bytes, b.new_flows) = (c.packets, c.bytes, c.new_flows);
            }
            let total = counters.service(*retired, ids.iter().copied());
            (svc.packets, svc.bytes, svc.new_flows) = (total.packets, total.bytes, total.new_flows);
        }
        s
    }

    /// Puts the rates and histories of `book` into `status` (one [`StatusView::fill`] made),
    /// and the flood guard's state.
    pub fn fill_rates(&self, status: &mut Status, book: &RateBook) {
        (status.flood_guard.active, status.flood_guard.episodes) = book.flood.state();
        for (svc, (ids, _)) in status.services.iter_mut().zip(&self.ids) {
            svc.rates = Rates::default();
            for (b, id) in svc.backends.iter_mut().zip(ids) {
                b.rates = book.rates(*id);
                b.history_pps = book.history(*id);
                svc.rates.add(b.rates);
            }
        }
    }
}

/// Compares with the name `lbctl status` shows (scripts and tests read the JSON so).
impl PartialEq<&str> for BackendState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Compares with the name `lbctl status` shows.
impl PartialEq<&str> for DatapathMode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// `vrrp::State` as its keepalived name (`INIT`, `BACKUP`, `MASTER`).
mod vrrp_state {
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(state: &vrrp::State, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(state.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<vrrp::State, D::Error> {
        let name = String::deserialize(d)?;
        vrrp::State::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| D::Error::custom(format!("{name:?} is not a VRRP state")))
    }
}
