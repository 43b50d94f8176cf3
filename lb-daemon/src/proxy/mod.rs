//! The userspace fallback data path: each service served as a TCP or UDP proxy on its VIP:port.
//!
//! Where XDP cannot run, lbd accepts the clients' connections itself and opens its own
//! connection to a backend, with the same backends, schedulers and drain semantics as the XDP
//! path: a backend out of rotation takes no new connections, while the connections it already
//! has go on (each holds its own backend socket).
//!
//! Parts:
//! - [`ServiceHandle`]: one service as the proxy serves it — its identity, its limits
//!   ([`ProxyConfig`]), its current backend set and its counters. The daemon creates one per
//!   service, swaps its backend set with [`ServiceHandle::set_backends`] and reads its counters.
//! - [`backends`]: [`BackendSet`], the immutable snapshot a connection picks from (swapped
//!   lock-free with `arc-swap`), [`Backend`], and the per-service and per-backend [`Counters`].
//! - [`scheduler`]: how a new connection picks a backend — `maglev` and `sh` (the engine's one
//!   Maglev table and the XDP program's flow hash, so a flow picks the same backend on either path),
//!   `rr`, `wrr` (smooth weighted round robin) and `lc` (weighted least connections).
//! - [`tcp`]: the TCP proxy ([`run_tcp`], [`bind_tcp`]): a bounded number of connections, a
//!   connect timeout with one retry on another backend, an idle timeout.
//! - `pump` (private): the byte pump between two sockets — `splice(2)` through a pipe, or a
//!   copy loop where splice is unavailable — with half-close in both directions.
//! - [`udp`]: the UDP proxy ([`run_udp`], [`bind_udp`]): a session per client address.
//!
//! Driving it (the shape of tokio's mini-redis): bind the listening socket with [`bind_tcp`]
//! (or [`bind_udp`]), which works before the VIP is on the node (a VRRP backup), then spawn
//! `run_tcp(listener, handle, token)`; cancelling the token stops accepting, closes the open
//! connections and returns once they are gone.

#![warn(missing_docs)]

pub mod backends;
pub mod open;
mod pump;
mod ratelimit;
pub mod scheduler;
pub mod tcp;
pub mod udp;

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

pub use backends::{ActiveGuard, Backend, BackendSet, BackendSpec, CounterSnapshot, Counters};
pub use open::{Activity, OpenFlow, OpenFlows, OpenGuard};
pub use scheduler::Flow;
pub use tcp::{bind_tcp, run_tcp, tcp_listener_from};
pub use udp::{bind_udp, run_udp, udp_socket_from};

use crate::config::{ConfigError, Proto, Scheduler, proxy::ProxyConfig};
use ratelimit::{AcceptRate, RateLimit};

/// Errors of the proxy's set-up. Errors of single connections are logged and counted instead.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A [`ProxyConfig`] value is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Creating, configuring or binding the service's socket failed.
    #[error("cannot bind {proto} {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Protocol of the socket.
        proto: Proto,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// Two backends of one set share an id.
    #[error("backend id {id} appears twice in one backend set")]
    DuplicateBackend {
        /// The id.
        id: u32,
    },
}

/// One service as the proxy serves it: identity, limits, the current backend set and counters.
///
/// Shared (`Arc`) between the daemon, which swaps the backend set and reads the counters, and
/// the service's proxy task with its connections, which read the set on every new connection.
#[derive(Debug)]
pub struct ServiceHandle {
    name: String,
    vip: SocketAddr,
    proto: Proto,
    config: ProxyConfig,
    set: ArcSwap<BackendSet>,
    counters: Arc<Counters>,
    /// Counters of every backend the service has had, by id. They outlive the sets (a
    /// connection to a backend that left keeps counting) and are dropped by `forget_backend`.
    backend_counters: Mutex<HashMap<u32, Arc<Counters>>>,
    /// One permit per open TCP connection or UDP session.
    limit: Arc<Semaphore>,
    /// Permits `limit` was made with (`max_connections` or `max_udp_sessions`, by protocol).
    limit_total: usize,
    /// Warnings that could come once per connection are rate-limited per service.
    limit_log: RateLimit,
    failure_log: RateLimit,
    flood_log: RateLimit,
    /// How long open connections may go on after the listener stops (milliseconds): zero for a
    /// plain stop, the hand-over's grace when a successor took the listener.
    linger_ms: AtomicU64,
    /// Open connections or sessions, for `lbctl flows`.
    open: Arc<OpenFlows>,
    /// The flood guard: new connections (sessions) per second.
    accept_rate: AcceptRate,
}

impl ServiceHandle {
    /// A service with no backend yet (every connection is refused until [`Self::set_backends`]).
    ///
    /// `name` is for logs; `vip` and `proto` are the service's identity and enter the flow
    /// hash of `maglev` and `sh` exactly as the XDP program hashes them.
    pub fn new(
        name: impl Into<String>,
        vip: SocketAddr,
        proto: Proto,
        config: ProxyConfig,
    ) -> Result<ServiceHandle, ProxyError> {
        config.validate()?;
        let permits = match proto {
            Proto::Tcp => config.max_connections,
            Proto::Udp => config.max_udp_sessions,
        };
        Ok(ServiceHandle {
            name: name.into(),
            vip,
            proto,
            config,
            set: ArcSwap::from_pointee(BackendSet::empty(Scheduler::Maglev)),
            counters: Arc::default(),
            backend_counters: Mutex::default(),
            limit: Arc::new(Semaphore::new(permits)),
            limit_total: permits,
            limit_log: RateLimit::new(Duration::from_secs(10)),
            failure_log: RateLimit::new(Duration::from_secs(1)),
            flood_log: RateLimit::new(Duration::from_secs(10)),
            linger_ms: AtomicU64::new(0),
            open: Arc::default(),
            accept_rate: AcceptRate::new(0),
        })
    }

    /// Sets the flood guard: new connections (TCP) or sessions (UDP) per second the service
    /// takes; beyond them accepts wait (clients queue in the backlog, where SYN cookies protect
    /// the listener) and new UDP clients' datagrams are dropped. Zero: no bound.
    pub fn set_flood_guard(&self, per_sec: u32) {
        self.accept_rate.set(per_sec);
    }

    /// Its open connections or sessions (`lbctl flows`).
    pub fn open_flows(&self) -> Vec<OpenFlow> {
        self.open.snapshot()
    }

    /// Name, for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The VIP and port.
    pub fn vip(&self) -> SocketAddr {
        self.vip
    }

    /// Protocol.
    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// Limits and timeouts.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Replaces the backends in rotation (and the scheduler): builds a new [`BackendSet`] and
    /// swaps it in. Connections accepted from now on pick from it; open connections keep
    /// their backend, whether or not it is still in the set.
    ///
    /// Pass only the backends that take new connections: drained, maintenance, down and
    /// removed backends are left out. `table` is the service's Maglev table in backend ids, as
    /// the engine built it for both data paths (`maglev` and `sh` read it; the others ignore it).
    pub fn set_backends(
        &self,
        scheduler: Scheduler,
        backends: &[BackendSpec],
        table: &[u32],
    ) -> Result<(), ProxyError> {
        let members = {
            let mut registry = self
                .backend_counters
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            backends
                .iter()
                .map(|spec| {
                    let counters = registry.entry(spec.id).or_default().clone();
                    Backend::new(*spec, counters)
                })
                .collect()
        };
        let set = BackendSet::new(scheduler, members, table)?;
        tracing::debug!(service = %self.name, scheduler = %scheduler, backends = set.len(), "proxy backend set swapped");
        self.set.store(Arc::new(set));
        Ok(())
    }

    /// The backend set in use now.
    pub fn backend_set(&self) -> Arc<BackendSet> {
        self.set.load_full()
    }

    /// The service's counters (all backends together, plus refusals and drops).
    pub fn counters(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }

    /// Counters of one backend, in the set or not, while the service remembers it.
    pub fn backend_counters(&self, id: u32) -> Option<CounterSnapshot> {
        self.registry().get(&id).map(|c| c.snapshot())
    }

    /// Counters of every backend the service remembers, by id, sorted.
    pub fn all_backend_counters(&self) -> Vec<(u32, CounterSnapshot)> {
        let mut all: Vec<(u32, CounterSnapshot)> = self
            .registry()
            .iter()
            .map(|(&id, c)| (id, c.snapshot()))
            .collect();
        all.sort_by_key(|&(id, _)| id);
        all
    }

    /// Open connections (TCP) or sessions (UDP) to a backend, counting those still connecting:
    /// what `lbctl backend drain --wait` waits to reach zero. Zero for an unknown id.
    pub fn active_connections(&self, id: u32) -> u64 {
        self.registry().get(&id).map_or(0, |c| c.active())
    }

    /// Forgets a backend's counters: for the daemon when it frees the backend's id (a removed
    /// backend whose connections have ended). Open connections, if any, keep counting into
    /// their own copy; a backend that comes back under this id starts from zero.
    pub fn forget_backend(&self, id: u32) {
        self.registry().remove(&id);
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Counters>>> {
        // A panic while holding this lock cannot leave the map half-updated (single inserts and
        // removes), so a poisoned lock is still good.
        self.backend_counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets open connections go on for up to `grace` once the service stops accepting (a
    /// successor lbd took its listener), instead of closing them at once.
    pub fn set_linger(&self, grace: Duration) {
        let ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        self.linger_ms.store(ms, Ordering::Relaxed);
    }

    /// The flow of a client of this service, as the schedulers hash it.
    pub fn flow(&self, client: SocketAddr) -> Flow {
        Flow {
            client,
            vip: self.vip,
            proto: self.proto,
        }
    }
}

/// After a service stopped accepting: lets its connections go on for its linger (see
/// [`ServiceHandle::set_linger`]), then cancels what is left with `conns` and waits for the end.
async fn finish(service: &ServiceHandle, conns: &tokio_util::sync::CancellationToken) {
    let linger = Duration::from_millis(service.linger_ms.load(Ordering::Relaxed));
    if !linger.is_zero() {
        let open = service.limit_total - service.limit.available_permits();
        if open > 0 {
            tracing::info!(service = %service.name, open, grace_s = linger.as_secs(), "listener handed over; letting open connections finish");
        }
        if tokio::time::timeout(linger, wait_all_released(service))
            .await
            .is_err()
        {
            tracing::warn!(service = %service.name, grace_s = linger.as_secs(), "connections still open after the hand-over's grace; closing them");
        }
    }
    conns.cancel();
    wait_all_released(service).await;
}

/// Waits until every permit of the service's bound is back: every connection or session task
/// has ended.
async fn wait_all_released(service: &ServiceHandle) {
    // At most MAX_LIMIT (validated), so it fits u32.
    let n = u32::try_from(service.limit_total).unwrap_or(u32::MAX);
    // The semaphore is never closed, so this only returns once all permits are free; the
    // permits go straight back when the guard drops.
    if let Ok(all) = service.limit.acquire_many(n).await {
        drop(all);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_outlive_sets_until_forgotten() {
        let svc = ServiceHandle::new(
            "t",
            "127.0.0.1:80".parse().unwrap(),
            Proto::Tcp,
            ProxyConfig::default(),
        )
        .unwrap();
        let spec = BackendSpec {
            id: 7,
            addr: "127.0.0.2:80".parse().unwrap(),
            weight: 1,
        };
        svc.set_backends(Scheduler::Rr, &[spec], &[]).unwrap();
        let set = svc.backend_set();
        let b = set.pick(&svc.flow("127.0.0.9:1000".parse().unwrap()), None);
        let guard = b.map(|b| b.counters().clone());
        let guard = guard.as_ref().map(|c| c.open());
        assert_eq!(svc.active_connections(7), 1);
        // The backend leaves the set: its open connection still counts.
        svc.set_backends(Scheduler::Rr, &[], &[]).unwrap();
        assert!(svc.backend_set().is_empty());
        assert_eq!(svc.active_connections(7), 1);
        drop(guard);
        assert_eq!(svc.active_connections(7), 0);
        svc.forget_backend(7);
        assert!(svc.backend_counters(7).is_none());
        assert!(matches!(
            svc.set_backends(Scheduler::Rr, &[spec, spec], &[]),
            Err(ProxyError::DuplicateBackend { id: 7 })
        ));
    }
}
