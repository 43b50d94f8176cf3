//! Backend sets and counters.
//!
//! A [`BackendSet`] is an immutable snapshot: the backends in rotation and the scheduler state
//! built for them (for `maglev` and `sh`, the Maglev table). The daemon builds a new set and
//! swaps it in whole (`arc-swap`), so a new connection reads one consistent set without a lock,
//! and a connection already open is never affected by a swap.
//!
//! [`Counters`] are plain atomics, one block per service and one per backend. A backend's block
//! is shared by every set the backend is in and by its open connections, so it keeps counting
//! after the backend leaves the rotation (draining) until its last connection closes.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use super::{
    ProxyError,
    scheduler::{Candidate, Flow, Picker},
};
use crate::config::Scheduler;

/// A backend as the daemon hands it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendSpec {
    /// Stable id (the engine's backend id): keys the counters across set swaps.
    pub id: u32,
    /// Where the proxy connects (TCP) or sends (UDP).
    pub addr: SocketAddr,
    /// Relative weight for `maglev`, `sh`, `wrr` and `lc`; 0 counts as 1 (as in Maglev).
    pub weight: u32,
}

/// A backend in a set.
#[derive(Debug, Clone)]
pub struct Backend {
    spec: BackendSpec,
    counters: Arc<Counters>,
}

impl Backend {
    /// A backend counting into `counters` (shared with its other sets and its connections).
    pub fn new(spec: BackendSpec, counters: Arc<Counters>) -> Backend {
        Backend {
            spec: BackendSpec {
                weight: spec.weight.max(1),
                ..spec
            },
            counters,
        }
    }

    /// Stable id.
    pub fn id(&self) -> u32 {
        self.spec.id
    }

    /// Address.
    pub fn addr(&self) -> SocketAddr {
        self.spec.addr
    }

    /// Weight, at least 1.
    pub fn weight(&self) -> u32 {
        self.spec.weight
    }

    /// Its counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Open connections or sessions, counting those still connecting.
    pub fn active(&self) -> u64 {
        self.counters.active()
    }
}

impl Candidate for Backend {
    fn id(&self) -> u32 {
        Backend::id(self)
    }
    fn weight(&self) -> u32 {
        Backend::weight(self)
    }
    fn active(&self) -> u64 {
        Backend::active(self)
    }
}

/// The backends in rotation for one service and the scheduler built for them.
#[derive(Debug)]
pub struct BackendSet {
    backends: Vec<Backend>,
    picker: Picker,
}

impl BackendSet {
    /// A set of `backends` (ids must be distinct) picked from by `kind`; `table` is the
    /// service's Maglev table in backend ids, as the engine built it (read by `maglev`, `sh`).
    pub fn new(
        kind: Scheduler,
        backends: Vec<Backend>,
        table: &[u32],
    ) -> Result<BackendSet, ProxyError> {
        let mut seen = HashSet::with_capacity(backends.len());
        for b in &backends {
            if !seen.insert(b.id()) {
                return Err(ProxyError::DuplicateBackend { id: b.id() });
            }
        }
        let picker = Picker::new(kind, &backends, table);
        Ok(BackendSet { backends, picker })
    }

    /// A set with no backend: every pick gives none.
    pub fn empty(kind: Scheduler) -> BackendSet {
        BackendSet {
            backends: Vec::new(),
            picker: Picker::new::<Backend>(kind, &[], &[]),
        }
    }

    /// The backends, in the order given.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Number of backends.
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Whether no backend is in rotation.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// The scheduler.
    pub fn scheduler(&self) -> Scheduler {
        self.picker.kind()
    }

    /// The backend with this id, if it is in the set.
    pub fn get(&self, id: u32) -> Option<&Backend> {
        self.backends.iter().find(|b| b.id() == id)
    }

    /// Picks a backend for a new flow; `exclude` names a backend id that just failed (the
    /// retry takes the scheduler's next choice without it). None when no backend is left.
    pub fn pick(&self, flow: &Flow, exclude: Option<u32>) -> Option<&Backend> {
        let exclude = exclude.and_then(|id| self.backends.iter().position(|b| b.id() == id));
        self.picker
            .pick(&self.backends, flow, exclude)
            .and_then(|i| self.backends.get(i))
    }
}

/// Counters of a service or a backend: u64 atomics, read with [`Counters::snapshot`].
///
/// "In" is client → backend, "out" is backend → client. A proxy does not see wire packets:
/// for TCP, `packets_*` count the transfers (one `splice` or `read` each, one or more
/// segments); for UDP they count datagrams.
#[derive(Debug, Default)]
pub struct Counters {
    connections: AtomicU64,
    active: AtomicU64,
    packets_in: AtomicU64,
    bytes_in: AtomicU64,
    packets_out: AtomicU64,
    bytes_out: AtomicU64,
    connect_failures: AtomicU64,
    no_backend: AtomicU64,
    limit_hits: AtomicU64,
    dropped: AtomicU64,
    flood_held: AtomicU64,
}

/// A copy of [`Counters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CounterSnapshot {
    /// TCP connections established to a backend, or UDP sessions opened, since the start.
    pub connections: u64,
    /// Open now: TCP connections (from the backend pick, so also those still connecting) or
    /// UDP sessions.
    pub active: u64,
    /// Transfers (TCP) or datagrams (UDP) client → backend.
    pub packets_in: u64,
    /// Bytes client → backend (payload).
    pub bytes_in: u64,
    /// Transfers (TCP) or datagrams (UDP) backend → client.
    pub packets_out: u64,
    /// Bytes backend → client (payload).
    pub bytes_out: u64,
    /// TCP connects to a backend that were refused, failed or timed out.
    pub connect_failures: u64,
    /// Service only: new clients turned away because no backend was in rotation (or both
    /// tries failed to connect).
    pub no_backend: u64,
    /// Service only: times the connection (TCP) or session (UDP) bound was reached.
    pub limit_hits: u64,
    /// Service only: UDP datagrams dropped (session bound, full socket buffer, send error).
    pub dropped: u64,
    /// Service only: new connections held back at accept (TCP) or new sessions refused (UDP)
    /// by the flood guard.
    pub flood_held: u64,
}

impl Counters {
    /// Reads every counter (each one atomically; the set is not one atomic snapshot).
    pub fn snapshot(&self) -> CounterSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            connections: r(&self.connections),
            active: r(&self.active),
            packets_in: r(&self.packets_in),
            bytes_in: r(&self.bytes_in),
            packets_out: r(&self.packets_out),
            bytes_out: r(&self.bytes_out),
            connect_failures: r(&self.connect_failures),
            no_backend: r(&self.no_backend),
            limit_hits: r(&self.limit_hits),
            dropped: r(&self.dropped),
            flood_held: r(&self.flood_held),
        }
    }

    /// Open connections or sessions now.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts one open connection or session until the guard drops.
    pub fn open(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    pub(crate) fn add_connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_in(&self, bytes: u64) {
        self.packets_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_out(&self, bytes: u64) {
        self.packets_out.fetch_add(1, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_connect_failure(&self) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_no_backend(&self) {
        self.no_backend.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_limit_hit(&self) {
        self.limit_hits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_flood_held(&self) {
        self.flood_held.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// One open connection or session, counted in [`Counters::active`] until dropped.
#[derive(Debug)]
pub struct ActiveGuard(Arc<Counters>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}
