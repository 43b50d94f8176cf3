//! The vocabulary the engine, both data paths and the status share: a backend's state and the
//! flows pinned to each backend.

use std::{collections::HashMap, fmt};

use lb_common::backend_state;

/// The state of a backend: what `lbctl status`, the metrics and the data path see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// In rotation: takes new flows.
    Active,
    /// Drained by an operator: no new flows, established ones go on.
    Draining,
    /// Failing its health checks: out of rotation.
    Down,
    /// In maintenance by an operator: no new flows, established ones go on.
    Maintenance,
    /// Gone from the config or removed by an operator; kept while flows use it.
    Removed,
    /// No MAC address known yet (XDP): out of rotation until it answers ARP.
    Unresolved,
}

impl BackendState {
    /// Every state, in the order the metric series are written.
    pub const ALL: [BackendState; 6] = [
        BackendState::Active,
        BackendState::Draining,
        BackendState::Down,
        BackendState::Maintenance,
        BackendState::Removed,
        BackendState::Unresolved,
    ];

    /// The name `lbctl status` and the metrics show.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Active => "active",
            BackendState::Draining => "draining",
            BackendState::Down => "down",
            BackendState::Maintenance => "maintenance",
            BackendState::Removed => "removed",
            BackendState::Unresolved => "unresolved",
        }
    }

    /// Whether a backend in this state takes new flows.
    pub fn in_rotation(self) -> bool {
        self == BackendState::Active
    }

    /// The state as the XDP program reads it from BACKENDS (`lb_common::backend_state`). An
    /// unresolved backend is never in a table; the program sees it as down.
    pub fn dataplane_code(self) -> u32 {
        match self {
            BackendState::Active => backend_state::ACTIVE,
            BackendState::Draining => backend_state::DRAINING,
            BackendState::Down | BackendState::Unresolved => backend_state::DOWN,
            BackendState::Maintenance => backend_state::MAINTENANCE,
            BackendState::Removed => backend_state::REMOVED,
        }
    }
}

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Flows per backend id, from one pass over the connection table (XDP) or the open
/// connections (proxy).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FlowCounts {
    /// Open flows (no FIN or RST seen yet, not idle past their timeout), by backend id.
    pub active: HashMap<u32, u64>,
    /// Closing flows (FIN or RST seen), by backend id.
    pub closing: HashMap<u32, u64>,
    /// Entries in the table after the pass.
    pub entries: u64,
    /// Entries deleted by this pass (idle past their timeout, or of a freed backend).
    pub expired: u64,
}

impl FlowCounts {
    /// Open flows of one backend.
    pub fn active_of(&self, id: u32) -> u64 {
        self.active.get(&id).copied().unwrap_or(0)
    }

    /// Closing flows of one backend.
    pub fn closing_of(&self, id: u32) -> u64 {
        self.closing.get(&id).copied().unwrap_or(0)
    }
}
