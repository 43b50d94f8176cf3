//! The data path behind one trait: [`Datapath`], implemented by XDP ([`xdp::XdpDatapath`]) and
//! by the userspace proxy ([`proxy::ProxyDatapath`]).
//!
//! Both are fed the same thing by the engine: each backend's entry (address, MAC, state) and
//! each service's one Maglev table in backend ids, built once by the engine. So a flow reaches
//! the same backend on either path by construction. Each keeps its counters per backend id; the
//! engine sums a service from its backends. The flow table ([`FlowTable`]) is taken out once
//! and scanned on a thread of its own: a scan of millions of flows never holds up the daemon.

#[cfg(test)]
pub mod fake;
pub mod proxy;
pub mod xdp;

use std::{collections::HashMap, fmt, net::IpAddr, sync::Arc};

use lb_common::{Counter, reason};

use crate::{
    config::{Scheduler, ServiceKey},
    flows::{FlowListing, FlowQuery},
    maglev::Member,
    model::{BackendState, FlowCounts},
};

/// Which data path forwards packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatapathMode {
    /// XDP in the driver.
    XdpNative,
    /// XDP on the skb (generic mode).
    XdpGeneric,
    /// The userspace TCP/UDP proxy.
    Userspace,
}

impl DatapathMode {
    /// Every mode; `lbd_datapath_mode` has one series each.
    pub const ALL: [DatapathMode; 3] = [
        DatapathMode::XdpNative,
        DatapathMode::XdpGeneric,
        DatapathMode::Userspace,
    ];

    /// The name `lbctl status` and the metrics show.
    pub fn as_str(self) -> &'static str {
        match self {
            DatapathMode::XdpNative => "xdp-native",
            DatapathMode::XdpGeneric => "xdp-generic",
            DatapathMode::Userspace => "userspace",
        }
    }

    /// Whether backends need a resolved MAC (XDP rewrites it; the proxy's kernel resolves it).
    pub fn needs_macs(self) -> bool {
        self != DatapathMode::Userspace
    }
}

impl fmt::Display for DatapathMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend as the data path needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendEntry {
    /// Address.
    pub addr: IpAddr,
    /// MAC (XDP rewrites the destination to it); none while unresolved.
    pub mac: Option<[u8; 6]>,
    /// State: whether its flows go on, and why not new ones.
    pub state: BackendState,
}

/// A service as the data path needs it: identity, scheduler, backends in rotation and the
/// engine's Maglev table over them.
#[derive(Debug, Clone, Copy)]
pub struct ServiceEntry<'a> {
    /// Stable service id.
    pub id: u32,
    /// VIP, port and protocol.
    pub key: ServiceKey,
    /// Name, for logs.
    pub name: &'a str,
    /// Scheduler.
    pub scheduler: Scheduler,
    /// Backends in rotation (take new flows).
    pub members: &'a [Member],
    /// `MAGLEV_M` slots of backend ids over `members` (`NO_BACKEND` everywhere when empty).
    pub table: &'a [u32],
}

/// Counters read from a data path: what it passed or dropped by reason, and what it forwarded
/// per backend id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatapathCounters {
    /// Per `lb_common::reason` index (`reason::COUNT` entries).
    pub reasons: Vec<Counter>,
    /// Per backend id.
    pub backends: HashMap<u32, Counter>,
}

impl DatapathCounters {
    /// All zero.
    pub fn zero() -> DatapathCounters {
        DatapathCounters {
            reasons: vec![Counter::default(); reason::COUNT as usize],
            backends: HashMap::new(),
        }
    }

    /// One backend's counter (zero when unknown).
    pub fn backend(&self, id: u32) -> Counter {
        self.backends.get(&id).copied().unwrap_or_default()
    }

    /// A service's counter: the data path counts a forwarded packet once, for its backend (one
    /// per-CPU counter touched per packet, not two), so a service's figure is what its backends
    /// (`ids`) have now plus what its freed backends had (`retired`).
    pub fn service(&self, retired: Counter, ids: impl IntoIterator<Item = u32>) -> Counter {
        let mut total = retired;
        for id in ids {
            total.add(self.backend(id));
        }
        total
    }
}

/// Errors of a data path.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// An XDP map or program refused an operation.
    #[error(transparent)]
    Xdp(#[from] crate::xdp::XdpError),
    /// The proxy could not serve a service.
    #[error(transparent)]
    Proxy(#[from] crate::proxy::ProxyError),
    /// The flow table was taken already.
    #[error("the flow table was handed out already")]
    FlowTableTaken,
}

/// The data path the engine drives.
pub trait Datapath: Send {
    /// Which data path this is.
    fn mode(&self) -> DatapathMode;
    /// Sets a backend's entry (before any table that points at it).
    fn set_backend(&mut self, id: u32, backend: &BackendEntry) -> Result<(), DatapathError>;
    /// Serves a service with this table and these members (new or changed), switching to the
    /// new table in one step: no flow sees a half-written table.
    fn set_service(&mut self, service: &ServiceEntry<'_>) -> Result<(), DatapathError>;
    /// Stops serving a service (its VIP no longer matches).
    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DatapathError>;
    /// A backend id is freed: returns what it carried and forgets it, so that the next backend
    /// given the id starts from zero.
    fn free_backend(&mut self, id: u32) -> Result<Counter, DatapathError>;
    /// Reads the counters.
    fn counters(&self) -> Result<DatapathCounters, DatapathError>;
    /// Sets the flood guard: above `new_flows_per_sec` (0: off), XDP forwards new flows
    /// without a connection-table entry, the proxy holds back accepts (per service).
    fn set_flood_guard(&mut self, new_flows_per_sec: u32) -> Result<(), DatapathError>;
    /// Starts forwarding with the tables written so far, where that waits for them (XDP taking
    /// over a pinned link: the earlier program serves until its successor's tables are in).
    fn go_live(&mut self) -> Result<(), DatapathError> {
        Ok(())
    }
    /// Hands out the flow table, once, to be scanned on a thread of its own.
    fn flow_table(&mut self) -> Result<Box<dyn FlowTable>, DatapathError>;
    /// A reader of the counters for other threads (status and scrapes do not wait for the
    /// core).
    fn counter_source(&self) -> Result<Arc<dyn CounterSource>, DatapathError>;
    /// Second descriptors of the listening sockets, by [`crate::handover::name`], for a
    /// successor lbd (none for XDP).
    fn listeners(&self) -> Vec<(String, std::os::fd::OwnedFd)> {
        Vec::new()
    }
    /// Stops forwarding: XDP detaches (unless pinned), the proxy closes its listeners and lets
    /// its open connections go on for up to `linger` (a successor took the listeners), then
    /// closes them (within a bound).
    fn stop(self: Box<Self>, linger: std::time::Duration);
}

/// The counters of a data path, readable from any thread.
pub trait CounterSource: Send + Sync {
    /// Reads them.
    fn counters(&self) -> Result<DatapathCounters, DatapathError>;
}

/// The flows a data path holds, per backend.
pub trait FlowTable: Send {
    /// One pass: counts flows per backend and deletes the expired ones and those of backends
    /// `is_dead` names (freed, or down: their clients get a new backend at once).
    fn scan(&mut self, is_dead: &dyn Fn(u32) -> bool) -> FlowCounts;
    /// One pass that lists the flows `query` asks for (`lbctl flows`), changing nothing.
    fn list(&mut self, query: &FlowQuery) -> FlowListing;
}
