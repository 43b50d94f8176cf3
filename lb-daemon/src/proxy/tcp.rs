//! The TCP proxy of one service.
//!
//! [`run_tcp`] accepts clients on the service's listener while the connection bound allows,
//! and serves each in its own task: pick a backend, connect (with a timeout; one retry on the
//! scheduler's next choice when the first connect fails), then pump bytes both ways with
//! half-close and an idle timeout. [`bind_tcp`] makes the listener, also before the VIP is on
//! the node.
//!
//! At the connection bound the proxy stops accepting (it does not refuse): new clients wait in
//! the kernel's listen backlog, and once that is full the kernel drops their SYNs so they
//! retry, exactly as with a slow server. A warning says so, at most every 10 seconds.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _},
    sync::Arc,
    time::Duration,
};

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{
    ProxyError, ServiceHandle,
    backends::Backend,
    finish,
    pump::{End, PumpParams, pump, read_first},
};
use crate::config::Proto;

/// Listen backlog of [`bind_tcp`]: where clients wait while the connection bound is reached.
pub const LISTEN_BACKLOG: i32 = 1024;
/// First pause after a failed accept (e.g. out of file descriptors); doubles up to the max.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between failed accepts.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A listening TCP socket for a service, usable before `addr` is on this node: `IP_FREEBIND`
/// (a VRRP backup binds its VIP before it owns it) and `SO_REUSEADDR` (a restart rebinds at
/// once). Must be called inside a tokio runtime.
pub fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    let bind_err = |source: io::Error| ProxyError::Bind {
        addr,
        proto: Proto::Tcp,
        source,
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(bind_err)?;
    socket.set_reuse_address(true).map_err(bind_err)?;
    set_freebind(&socket, addr).map_err(bind_err)?;
    // Small writes (requests, interactive protocols) must not wait for Nagle. Accepted sockets
    // inherit TCP_NODELAY from the listener (Linux), which saves a call per connection.
    socket.set_tcp_nodelay(true).map_err(bind_err)?;
    socket.set_nonblocking(true).map_err(bind_err)?;
    socket.bind(&addr.into()).map_err(bind_err)?;
    socket.listen(LISTEN_BACKLOG).map_err(bind_err)?;
    TcpListener::from_std(socket.into()).map_err(bind_err)
}

/// A listener handed over by an earlier lbd or systemd (see [`crate::handover`]).
pub fn tcp_listener_from(
    fd: std::os::fd::OwnedFd,
    addr: SocketAddr,
) -> Result<TcpListener, ProxyError> {
    let bind_err = |source: io::Error| ProxyError::Bind {
        addr,
        proto: Proto::Tcp,
        source,
    };
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(true).map_err(bind_err)?;
    TcpListener::from_std(listener).map_err(bind_err)
}

/// `IP_FREEBIND` (or its IPv6 twin) where the system has it.
pub(crate) fn set_freebind(socket: &Socket, addr: SocketAddr) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    {
        if addr.is_ipv4() {
            socket.set_freebind_v4(true)
        } else {
            socket.set_freebind_v6(true)
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
    {
        let _ = (socket, addr);
        Ok(())
    }
}

/// Serves one TCP service on `listener` until `shutdown` is cancelled; then stops accepting,
/// closes the open connections and returns once their tasks have ended.
///
/// Never fails: accept errors are logged and retried after a growing pause (10 ms to 1 s),
/// connection errors are logged and counted.
///
/// Run one `run_tcp` per [`ServiceHandle`]: the connection bound and the shutdown's wait for
/// open connections are the handle's.
pub async fn run_tcp(
    listener: TcpListener,
    service: Arc<ServiceHandle>,
    shutdown: CancellationToken,
) {
    if service.proto != Proto::Tcp {
        tracing::error!(service = %service.name, proto = %service.proto, "run_tcp needs a TCP service handle; not serving");
        return;
    }
    let local = listener.local_addr().ok();
    // Accepted sockets are registered with tokio only after their first read (see `serve`), so
    // the listener is polled directly rather than through tokio's `accept`.
    let registered = listener.into_std().and_then(|l| {
        // SAFETY: the std listener owns its descriptor for as long as the AsyncFd owns it.
        unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))
    });
    let listener = match registered {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(service = %service.name, listen = ?local, error = %e, "TCP listener cannot be polled; not serving");
            return;
        }
    };
    tracing::info!(service = %service.name, listen = ?local, max_connections = service.config.max_connections, "TCP proxy serving");
    // The connections' own token: a stop cancels it at once, a hand-over after its grace.
    let conns = CancellationToken::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let permit = match service.limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                service.counters.add_limit_hit();
                if let Some(held) = service.limit_log.check() {
                    tracing::warn!(
                        service = %service.name,
                        max_connections = service.config.max_connections,
                        times_since_last_warning = held,
                        "connection bound reached: not accepting until a connection closes (clients wait in the listen backlog)"
                    );
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    p = service.limit.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        // Never closed; if it were, no connection could be served.
                        Err(_) => break,
                    },
                }
            }
        };
        // The flood guard: above the rate, the next accept waits for its token.
        let mut held = false;
        while let Some(wait) = service
            .accept_rate
            .take(tokio::time::Instant::now().into_std())
        {
            if !held {
                held = true;
                service.counters.add_flood_held();
                if let Some(n) = service.flood_log.check() {
                    tracing::warn!(service = %service.name, held_since_last_warning = n, "new-connection flood: accepts held to the flood guard's rate (daemon.flood_new_flows_per_sec); clients wait in the backlog");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        if shutdown.is_cancelled() {
            break;
        }
        let (stream, peer) = tokio::select! {
            // A stop wins over a waiting client: one accepted now would be cut at once, while
            // in the backlog it waits for the successor (systemd's fd store, `lbd --replace`).
            biased;
            () = shutdown.cancelled() => break,
            r = listener.async_io(Interest::READABLE, accept) => match r {
                Ok(c) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    c
                }
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM would fail again at once: pause instead
                    // of spinning; the pending clients stay in the backlog meanwhile.
                    if let Some(held) = service.failure_log.check() {
                        tracing::warn!(service = %service.name, error = %e, pause_ms = backoff.as_millis() as u64, suppressed = held, "accept failed; pausing");
                    }
                    drop(permit);
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
        };
        let svc = service.clone();
        let cancel = conns.clone();
        let span = tracing::debug_span!("conn", service = %service.name, client = %peer);
        tokio::spawn(
            async move {
                serve(stream, peer, &svc, &cancel).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    // A successor holding the same listener goes on accepting from its backlog.
    drop(listener);
    finish(&service, &conns).await;
    tracing::info!(service = %service.name, "TCP proxy stopped");
}

/// `accept4` on the listener: a non-blocking socket that tokio does not know yet.
fn accept(listener: &std::net::TcpListener) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    let fd = listener.as_raw_fd();
    // SAFETY: accept4 writes at most `len` bytes of address into the storage socket2 hands us.
    let (accepted, addr) = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            let r = libc::accept4(
                fd,
                storage.cast(),
                len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            );
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(r)
            }
        })?
    };
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(accepted) };
    let peer = addr
        .as_socket()
        .ok_or_else(|| io::Error::other("accepted a connection without an IP peer address"))?;
    Ok((stream, peer))
}

/// One client connection, from backend choice to close.
async fn serve(
    client: std::net::TcpStream,
    peer: SocketAddr,
    service: &ServiceHandle,
    cancel: &CancellationToken,
) {
    // The client's TCP_NODELAY comes from the listener (`bind_tcp`).
    let first = match read_first(&client) {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(error = %e, "client gone before its first read");
            return;
        }
    };
    let mut client = match TcpStream::from_std(client) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(service = %service.name, error = %e, "registering a client socket with the runtime failed: connection closed");
            return;
        }
    };
    let flow = service.flow(peer);
    // Counted from here, like the backend's count: a connection being connected is open.
    let _service_active = service.counters.open();
    let connected = tokio::select! {
        r = connect_with_retry(service, &flow, first.is_some()) => r,
        () = cancel.cancelled() => return,
    };
    let Some((backend, mut stream, _active)) = connected else {
        service.counters.add_no_backend();
        // Reset rather than close: a clean FIN after accept would look like an empty answer.
        reset(&client);
        return;
    };
    service.counters.add_connection();
    backend.counters().add_connection();
    tracing::debug!(backend = %backend.addr(), backend_id = backend.id(), "connected");
    let (_listed, activity) = service.open.open(peer, backend.id());
    let (end, totals) = pump(
        &mut client,
        &mut stream,
        first,
        PumpParams {
            splice: service.config.splice,
            idle: service.config.idle_timeout,
            counters: [&service.counters, backend.counters()],
            activity: &activity,
            cancel,
        },
    )
    .await;
    match end {
        End::Done | End::Idle | End::Shutdown => {}
        End::Error(ref e) => {
            tracing::debug!(error = %e, "connection failed: resetting both sides");
            // Pass a failure on as a reset, so that neither peer takes a cut-off stream for a
            // complete one.
            reset(&client);
            reset(&stream);
        }
    }
    tracing::debug!(end = ?end, bytes_in = totals.bytes_in, bytes_out = totals.bytes_out, copy_loops = totals.copy_loops, "closed");
}

/// Sets SO_LINGER 0, so that the coming close sends RST instead of FIN.
fn reset(stream: &TcpStream) {
    if let Err(e) = SockRef::from(stream).set_linger(Some(Duration::ZERO)) {
        tracing::debug!(error = %e, "SO_LINGER 0 failed");
    }
}

/// Why a connect to a backend failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Picks and connects; on failure, once more on the scheduler's next choice without the failed
/// backend. The backend's active count (which `lc` reads) covers the connect itself, so that
/// simultaneous new clients spread instead of all seeing the same least-loaded backend.
async fn connect_with_retry(
    service: &ServiceHandle,
    flow: &super::Flow,
    has_data: bool,
) -> Option<(Backend, TcpStream, super::backends::ActiveGuard)> {
    let set = service.backend_set();
    let Some(first) = set.pick(flow, None).cloned() else {
        if let Some(held) = service.failure_log.check() {
            tracing::warn!(service = %service.name, suppressed = held, "no backend in rotation: connection reset");
        }
        return None;
    };
    let active = first.counters().open();
    let first_err = match connect(&first, service.config.connect_timeout, has_data).await {
        Ok(s) => return Some((first, s, active)),
        Err(e) => e,
    };
    drop(active);
    first.counters().add_connect_failure();
    service.counters.add_connect_failure();
    // Both outcomes of a retry are logged, but only for the connections the rate limit lets
    // through: a dead backend under load would otherwise log twice per connection until the
    // health checks take it out.
    let loud = service.failure_log.check();
    // A fresh snapshot: the set may have changed (health checks) while we waited.
    let set = service.backend_set();
    let Some(second) = set.pick(flow, Some(first.id())).cloned() else {
        if let Some(held) = loud {
            tracing::warn!(service = %service.name, backend = %first.addr(), error = %first_err, suppressed = held, "connect to backend failed and no other backend is in rotation: connection reset");
        }
        return None;
    };
    if let Some(held) = loud {
        tracing::warn!(service = %service.name, backend = %first.addr(), error = %first_err, retry = %second.addr(), suppressed = held, "connect to backend failed; retrying once on another backend");
    }
    let active = second.counters().open();
    match connect(&second, service.config.connect_timeout, has_data).await {
        Ok(s) => {
            if loud.is_some() {
                tracing::warn!(service = %service.name, backend = %second.addr(), "retry connected");
            }
            Some((second, s, active))
        }
        Err(e) => {
            second.counters().add_connect_failure();
            service.counters.add_connect_failure();
            if loud.is_some() {
                tracing::warn!(service = %service.name, backend = %second.addr(), error = %e, "retry failed too: connection reset");
            }
            None
        }
    }
}

/// Connects to a backend, without a turn of the event loop where the network allows.
///
/// A non-blocking `connect` answers EINPROGRESS even when the handshake completed within the
/// call (a backend on the same host or bridge: the SYN-ACK is processed before the call
/// returns). A second `connect` then says 0 (connected), EALREADY (still going: wait for
/// writability, as tokio's own connect does) or the failure itself, so the common local case
/// needs neither a wake-up nor the `SO_ERROR` query.
///
/// With `has_data` (the client's first bytes are in hand), the handshake's last ACK waits for
/// them (TCP_QUICKACK off, as HAProxy does when it connects with data): the request then
/// carries the ACK, one packet less per connection. Without data it must not wait, or a
/// server that speaks first would not see the connection for up to 200 ms.
async fn connect(
    backend: &Backend,
    timeout: Duration,
    has_data: bool,
) -> Result<TcpStream, ConnectError> {
    let addr = backend.addr();
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    // No Nagle on this hop either (see `bind_tcp`).
    if let Err(e) = socket.set_tcp_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY on the backend socket failed");
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if has_data && let Err(e) = socket.set_tcp_quickack(false) {
        tracing::debug!(error = %e, "TCP_QUICKACK off on the backend socket failed");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = has_data;
    let target = addr.into();
    let connected = match socket.connect(&target) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => match socket.connect(&target) {
            Ok(()) => true,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EALREADY | libc::EINPROGRESS)) => false,
            Err(e) if e.raw_os_error() == Some(libc::EISCONN) => true,
            Err(e) => return Err(e.into()),
        },
        Err(e) => return Err(e.into()),
    };
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    if connected {
        return Ok(stream);
    }
    tokio::time::timeout(timeout, stream.writable())
        .await
        .map_err(|_| ConnectError::Timeout(timeout))??;
    if let Some(e) = stream.take_error()? {
        return Err(e.into());
    }
    Ok(stream)
}
