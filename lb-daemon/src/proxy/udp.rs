//! The UDP proxy of one service.
//!
//! A session per client address: the first datagram from a client picks a backend and opens an
//! upstream socket connected to it; later datagrams from that client reuse the session.
//! Each session's task relays the backend's replies to the client from the service's own
//! socket, so the client sees them come from VIP:port. A session with no datagram in either
//! direction for `udp_session_timeout` closes. At `max_udp_sessions`, datagrams from new
//! clients are dropped (counted, warned at most every 10 seconds); existing sessions go on.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    net::UdpSocket,
    sync::OwnedSemaphorePermit,
    time::{Instant, sleep, sleep_until},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{
    ProxyError, ServiceHandle,
    backends::{ActiveGuard, Backend},
    finish,
    open::{Activity, OpenGuard},
    tcp::set_freebind,
};
use crate::config::Proto;

/// Largest UDP payload over IPv4 plus slack: one datagram always fits.
const DATAGRAM_MAX: usize = 65_536;
/// Replies relayed per wake-up of a session before it yields to other tasks.
const RELAY_BATCH: usize = 64;
/// First pause after a failed receive on the service socket; doubles up to the max.
const RECV_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between failed receives.
const RECV_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A UDP socket for a service, usable before `addr` is on this node (`IP_FREEBIND`, for a VRRP
/// backup) and rebindable at once (`SO_REUSEADDR`). Must be called inside a tokio runtime.
///
/// Bind it to the VIP itself, not to the wildcard address: replies then leave from VIP:port.
pub fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, ProxyError> {
    let bind_err = |source: io::Error| ProxyError::Bind {
        addr,
        proto: Proto::Udp,
        source,
    };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_err)?;
    socket.set_reuse_address(true).map_err(bind_err)?;
    set_freebind(&socket, addr).map_err(bind_err)?;
    socket.set_nonblocking(true).map_err(bind_err)?;
    socket.bind(&addr.into()).map_err(bind_err)?;
    UdpSocket::from_std(socket.into()).map_err(bind_err)
}

/// A socket handed over by an earlier lbd or systemd (see [`crate::handover`]).
pub fn udp_socket_from(
    fd: std::os::fd::OwnedFd,
    addr: SocketAddr,
) -> Result<UdpSocket, ProxyError> {
    let bind_err = |source: io::Error| ProxyError::Bind {
        addr,
        proto: Proto::Udp,
        source,
    };
    let socket = std::net::UdpSocket::from(fd);
    socket.set_nonblocking(true).map_err(bind_err)?;
    UdpSocket::from_std(socket).map_err(bind_err)
}

/// One client's session.
struct Session {
    upstream: UdpSocket,
    backend: Backend,
    /// The last datagram either way.
    activity: Arc<Activity>,
}

impl Session {
    fn touch(&self) {
        self.activity.touch();
    }

    fn deadline(&self, timeout: Duration) -> Instant {
        self.activity.last() + timeout
    }
}

/// Sessions by client address. The receive loop touches a session and the session's task
/// decides it has expired under this one lock, so a datagram never goes to a session that is
/// being closed. Held only for map look-ups, never across an await.
type Table = Mutex<HashMap<SocketAddr, Arc<Session>>>;

fn lock(table: &Table) -> MutexGuard<'_, HashMap<SocketAddr, Arc<Session>>> {
    // Inserts and removes are single operations: a poisoned map is still consistent.
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serves one UDP service on `socket` until `shutdown` is cancelled; then closes every session
/// and returns once their tasks have ended. Never fails: errors are logged and counted.
/// Run one `run_udp` per [`ServiceHandle`].
pub async fn run_udp(socket: UdpSocket, service: Arc<ServiceHandle>, shutdown: CancellationToken) {
    if service.proto != Proto::Udp {
        tracing::error!(service = %service.name, proto = %service.proto, "run_udp needs a UDP service handle; not serving");
        return;
    }
    let socket = Arc::new(socket);
    tracing::info!(service = %service.name, listen = ?socket.local_addr().ok(), max_sessions = service.config.max_udp_sessions, "UDP proxy serving");
    let sessions: Arc<Table> = Arc::default();
    // The sessions' own token: a stop cancels it at once, a hand-over after its grace.
    let cancel = CancellationToken::new();
    let mut buf = vec![0u8; DATAGRAM_MAX];
    let mut backoff = RECV_BACKOFF_MIN;
    loop {
        let (n, client) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => {
                    backoff = RECV_BACKOFF_MIN;
                    x
                }
                Err(e) => {
                    if let Some(held) = service.failure_log.check() {
                        tracing::warn!(service = %service.name, error = %e, suppressed = held, "receive on the service socket failed; pausing");
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RECV_BACKOFF_MAX);
                    continue;
                }
            },
        };
        let existing = lock(&sessions).get(&client).map(|s| {
            s.touch();
            s.clone()
        });
        let session = match existing {
            Some(s) => s,
            None => match open(&service, &socket, &sessions, client, &cancel).await {
                Some(s) => s,
                None => {
                    service.counters.add_dropped();
                    continue;
                }
            },
        };
        // `send` waits for the socket to be writable: a new session's socket is not known to
        // be writable until the reactor has seen it once, and `try_send` would drop its first
        // datagram. A UDP send buffer drains without waiting for the peer, so this wait is
        // short and cannot be prolonged by a slow backend.
        match session.upstream.send(&buf[..n]).await {
            Ok(_) => {
                service.counters.add_in(n as u64);
                session.backend.counters().add_in(n as u64);
            }
            // An ICMP error left by an earlier datagram (the backend's port is closed): UDP
            // may drop, and the client will retry or give up.
            Err(e) => {
                service.counters.add_dropped();
                tracing::debug!(client = %client, backend = %session.backend.addr(), error = %e, "datagram to backend dropped");
            }
        }
    }
    finish(&service, &cancel).await;
    tracing::info!(service = %service.name, "UDP proxy stopped");
}

/// Opens a session for `client`: a permit, a backend, a connected upstream socket, a task.
async fn open(
    service: &Arc<ServiceHandle>,
    socket: &Arc<UdpSocket>,
    sessions: &Arc<Table>,
    client: SocketAddr,
    cancel: &CancellationToken,
) -> Option<Arc<Session>> {
    let Ok(permit) = service.limit.clone().try_acquire_owned() else {
        service.counters.add_limit_hit();
        if let Some(held) = service.limit_log.check() {
            tracing::warn!(service = %service.name, max_sessions = service.config.max_udp_sessions, times_since_last_warning = held, "UDP session bound reached: datagrams from new clients are dropped until a session expires");
        }
        return None;
    };
    // The flood guard: new sessions above its rate are refused (existing ones go on).
    if service
        .accept_rate
        .take(tokio::time::Instant::now().into_std())
        .is_some()
    {
        service.counters.add_flood_held();
        service.counters.add_dropped();
        if let Some(n) = service.flood_log.check() {
            tracing::warn!(service = %service.name, held_since_last_warning = n, "new-session flood: datagrams from new clients dropped above the flood guard's rate (daemon.flood_new_flows_per_sec)");
        }
        return None;
    }
    let set = service.backend_set();
    let Some(backend) = set.pick(&service.flow(client), None).cloned() else {
        service.counters.add_no_backend();
        if let Some(held) = service.failure_log.check() {
            tracing::warn!(service = %service.name, suppressed = held, "no backend in rotation: datagram dropped");
        }
        return None;
    };
    let upstream = match upstream_socket(backend.addr()).await {
        Ok(u) => u,
        Err(e) => {
            if let Some(held) = service.failure_log.check() {
                tracing::warn!(service = %service.name, backend = %backend.addr(), error = %e, suppressed = held, "cannot open a socket to the backend: datagram dropped");
            }
            return None;
        }
    };
    let guards = [service.counters.open(), backend.counters().open()];
    service.counters.add_connection();
    backend.counters().add_connection();
    let (listed, activity) = service.open.open(client, backend.id());
    let session = Arc::new(Session {
        upstream,
        backend,
        activity,
    });
    lock(sessions).insert(client, session.clone());
    let span = tracing::debug_span!("udp", service = %service.name, client = %client, backend = %session.backend.addr());
    tracing::debug!(parent: &span, "session opened");
    tokio::spawn(
        relay_replies(
            session.clone(),
            client,
            socket.clone(),
            sessions.clone(),
            service.clone(),
            cancel.clone(),
            (permit, guards, listed),
        )
        .instrument(span),
    );
    Some(session)
}

/// A socket connected to the backend, bound to an ephemeral port of the same family.
async fn upstream_socket(backend: SocketAddr) -> io::Result<UdpSocket> {
    let any = match backend.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let s = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
    s.connect(backend).await?;
    Ok(s)
}

/// The session's task: relays replies until the session idles out or the service stops.
/// `_held` (the session's permit, active counts and `lbctl flows` entry) is released when the
/// task ends.
async fn relay_replies(
    session: Arc<Session>,
    client: SocketAddr,
    socket: Arc<UdpSocket>,
    sessions: Arc<Table>,
    service: Arc<ServiceHandle>,
    cancel: CancellationToken,
    _held: (OwnedSemaphorePermit, [ActiveGuard; 2], OpenGuard),
) {
    let timeout = service.config.udp_session_timeout;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            r = session.upstream.readable() => {
                if let Err(e) = r.and_then(|()| relay_batch(&session, &socket, client, &service)) {
                    tracing::warn!(error = %e, "receive from backend failed: session closed");
                    lock(&sessions).retain(|_, s| !Arc::ptr_eq(s, &session));
                    break;
                }
            }
            () = sleep_until(session.deadline(timeout)) => {
                let mut table = lock(&sessions);
                // Decided under the lock the receive loop touches sessions under: either it
                // touched this session first (and we go on), or it finds it gone and opens one.
                if Instant::now() >= session.deadline(timeout) {
                    if table.get(&client).is_some_and(|s| Arc::ptr_eq(s, &session)) {
                        table.remove(&client);
                    }
                    break;
                }
            }
        }
    }
    tracing::debug!("session closed");
}

/// Relays the replies waiting on the upstream socket (up to a batch) to the client.
/// Synchronous, so the datagram buffer lives on the stack, not in every session's future.
fn relay_batch(
    session: &Session,
    socket: &UdpSocket,
    client: SocketAddr,
    service: &ServiceHandle,
) -> io::Result<()> {
    let mut buf = [0u8; DATAGRAM_MAX];
    for _ in 0..RELAY_BATCH {
        let n = match session.upstream.try_recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            // ICMP port unreachable from the backend, reported on the connected socket: the
            // session stays (the backend may come back, or the session idles out).
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::debug!(error = %e, "backend port unreachable");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        session.touch();
        match socket.try_send_to(&buf[..n], client) {
            Ok(_) => {
                service.counters.add_out(n as u64);
                session.backend.counters().add_out(n as u64);
            }
            Err(e) => {
                service.counters.add_dropped();
                tracing::debug!(error = %e, "reply to client dropped");
            }
        }
    }
    Ok(())
}
