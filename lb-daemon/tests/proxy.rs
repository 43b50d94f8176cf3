//! The userspace proxy over real sockets, loopback only (127.0.0.0/8).
//!
//! The proxy listens on 127.0.0.1 (port from the OS); each test backend has its own address
//! 127.0.0.x so backends are told apart by address, as on a real network. Every wait has an
//! upper bound ([`BOUND`]); lower bounds appear only where correctness needs them (a connection
//! must not be served before a slot frees, must not idle out early).

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use lb_common::{FlowKey, IPPROTO_TCP, MAGLEV_M, hash::flow_hash};
use lb_daemon::{
    config::{Proto, ProxyConfig, Scheduler as SchedulerKind},
    maglev,
    proxy::{BackendSpec, ServiceHandle, bind_tcp, bind_udp, run_tcp, run_udp},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpSocket, TcpStream, UdpSocket},
    sync::mpsc,
    task::JoinHandle,
    time::timeout,
};
use tokio_util::sync::CancellationToken;

/// Upper bound of any single wait in these tests.
const BOUND: Duration = Duration::from_secs(10);

fn lo(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match timeout(BOUND, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: nothing within {BOUND:?}"),
    }
}

/// Waits (bounded) until `cond` holds.
async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    if let Err(e) = lb_testkit::wait_until_async(what, BOUND, cond).await {
        panic!("{e}");
    }
}

/// Aborts a server task when the test is done with it.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a test backend does with each connection.
#[derive(Clone)]
enum Kind {
    /// Sends its name and a newline, then echoes until end of stream, then closes.
    Echo,
    /// Reads to end of stream, then answers `name:bytes read` and closes.
    ReadAllThenReply,
    /// Sends its name, shuts down its write side at once, reads to end of stream and reports
    /// what it read.
    CloseFirst(mpsc::UnboundedSender<Vec<u8>>),
}

struct TestBackend {
    addr: SocketAddr,
    _task: Task,
}

async fn backend(ip: u8, name: &'static str, kind: Kind) -> TestBackend {
    let listener = TcpListener::bind(SocketAddr::new(lo(ip), 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_backend(stream, name, kind.clone()));
        }
    });
    TestBackend {
        addr,
        _task: Task(task),
    }
}

async fn serve_backend(mut s: TcpStream, name: &str, kind: Kind) {
    match kind {
        Kind::Echo => {
            if s.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                return;
            }
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        }
        Kind::ReadAllThenReply => {
            let mut got = Vec::new();
            if s.read_to_end(&mut got).await.is_ok() {
                let _ = s
                    .write_all(format!("{name}:{}", got.len()).as_bytes())
                    .await;
                let _ = s.shutdown().await;
            }
        }
        Kind::CloseFirst(report) => {
            let _ = s.write_all(name.as_bytes()).await;
            let _ = s.shutdown().await;
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got).await;
            let _ = report.send(got);
        }
    }
}

struct Proxy {
    addr: SocketAddr,
    service: Arc<ServiceHandle>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    async fn tcp(
        config: ProxyConfig,
        scheduler: SchedulerKind,
        backends: &[(u32, SocketAddr, u32)],
    ) -> Proxy {
        Proxy::tcp_on(lo(1), config, scheduler, backends).await
    }

    /// A TCP proxy listening on `ip` (IPv4 or IPv6).
    async fn tcp_on(
        ip: IpAddr,
        config: ProxyConfig,
        scheduler: SchedulerKind,
        backends: &[(u32, SocketAddr, u32)],
    ) -> Proxy {
        let listener = bind_tcp(SocketAddr::new(ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let service = Arc::new(ServiceHandle::new("test", addr, Proto::Tcp, config).unwrap());
        service
            .set_backends(scheduler, &specs(backends), &table(backends))
            .unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_tcp(listener, service.clone(), stop.clone()));
        Proxy {
            addr,
            service,
            stop,
            task: Some(task),
        }
    }

    async fn udp(
        config: ProxyConfig,
        scheduler: SchedulerKind,
        backends: &[(u32, SocketAddr, u32)],
    ) -> Proxy {
        Proxy::udp_on(lo(1), config, scheduler, backends).await
    }

    /// A UDP proxy listening on `ip` (IPv4 or IPv6).
    async fn udp_on(
        ip: IpAddr,
        config: ProxyConfig,
        scheduler: SchedulerKind,
        backends: &[(u32, SocketAddr, u32)],
    ) -> Proxy {
        let socket = bind_udp(SocketAddr::new(ip, 0)).unwrap();
        let addr = socket.local_addr().unwrap();
        let service = Arc::new(ServiceHandle::new("test-udp", addr, Proto::Udp, config).unwrap());
        service
            .set_backends(scheduler, &specs(backends), &table(backends))
            .unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_udp(socket, service.clone(), stop.clone()));
        Proxy {
            addr,
            service,
            stop,
            task: Some(task),
        }
    }

    async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            within("proxy shutdown", task).await.unwrap();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn specs(backends: &[(u32, SocketAddr, u32)]) -> Vec<BackendSpec> {
    backends
        .iter()
        .map(|&(id, addr, weight)| BackendSpec { id, addr, weight })
        .collect()
}

/// The engine's Maglev table for these backends (what the daemon hands the proxy).
fn table(backends: &[(u32, SocketAddr, u32)]) -> Vec<u32> {
    let members: Vec<maglev::Member> = backends
        .iter()
        .map(|&(id, addr, weight)| maglev::Member {
            id,
            addr: addr.ip(),
            weight,
        })
        .collect();
    maglev::id_table(&members)
}

fn config() -> ProxyConfig {
    ProxyConfig {
        connect_timeout: Duration::from_secs(2),
        ..ProxyConfig::default()
    }
}

/// Connects through the proxy and reads the backend's name line.
async fn connect_named(proxy: SocketAddr) -> (BufReader<TcpStream>, String) {
    let s = within("connect", TcpStream::connect(proxy)).await.unwrap();
    let mut r = BufReader::new(s);
    let mut name = String::new();
    within("name line", r.read_line(&mut name)).await.unwrap();
    (r, name.trim_end().to_string())
}

#[tokio::test]
async fn request_reaches_a_backend_and_the_reply_comes_back() {
    let b = backend(11, "b1", Kind::Echo).await;
    for splice in [true, false] {
        let p = Proxy::tcp(
            ProxyConfig { splice, ..config() },
            SchedulerKind::Rr,
            &[(1, b.addr, 1)],
        )
        .await;
        let (mut c, name) = connect_named(p.addr).await;
        assert_eq!(name, "b1");
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        within("echo", c.read_exact(&mut buf)).await.unwrap();
        assert_eq!(&buf, b"ping");
        c.get_mut().shutdown().await.unwrap();
        let mut rest = Vec::new();
        within("end of stream", c.read_to_end(&mut rest))
            .await
            .unwrap();
        assert!(rest.is_empty());
        eventually("connection closed", || p.service.active_connections(1) == 0).await;
        let s = p.service.counters();
        assert_eq!(
            (s.connections, s.active, s.bytes_in, s.bytes_out),
            (1, 0, 4, 7),
            "splice {splice}: {s:?}"
        );
        assert_eq!(p.service.backend_counters(1).unwrap().bytes_out, 7);
        p.shutdown().await;
    }
}

#[tokio::test]
async fn large_transfer_arrives_intact() {
    const LEN: usize = 8 << 20;
    let b = backend(12, "b", Kind::Echo).await;
    for splice in [true, false] {
        let p = Proxy::tcp(
            ProxyConfig { splice, ..config() },
            SchedulerKind::Rr,
            &[(1, b.addr, 1)],
        )
        .await;
        let (c, _) = connect_named(p.addr).await;
        let (mut r, mut w) = c.into_inner().into_split();
        let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::with_capacity(LEN);
        within("echo of 8 MiB", r.read_to_end(&mut got))
            .await
            .unwrap();
        within("writer", writer).await.unwrap();
        assert!(
            got == data,
            "splice {splice}: {} bytes back, content differs or short",
            got.len()
        );
        eventually("connection closed", || p.service.counters().active == 0).await;
        assert_eq!(p.service.counters().bytes_in, LEN as u64);
        p.shutdown().await;
    }
}

async fn names_of(proxy: SocketAddr, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..n {
        names.push(connect_named(proxy).await.1);
    }
    names
}

fn count(names: &[String], name: &str) -> usize {
    names.iter().filter(|n| *n == name).count()
}

#[tokio::test]
async fn rr_and_wrr_spread_over_three_backends() {
    let bs = [
        backend(21, "a", Kind::Echo).await,
        backend(22, "b", Kind::Echo).await,
        backend(23, "c", Kind::Echo).await,
    ];
    let set: Vec<(u32, SocketAddr, u32)> = bs
        .iter()
        .enumerate()
        .map(|(i, b)| (i as u32, b.addr, i as u32 + 1))
        .collect();
    let p = Proxy::tcp(config(), SchedulerKind::Rr, &set).await;
    let names = names_of(p.addr, 30).await;
    assert_eq!(
        [count(&names, "a"), count(&names, "b"), count(&names, "c")],
        [10, 10, 10]
    );
    p.shutdown().await;

    let p = Proxy::tcp(config(), SchedulerKind::Wrr, &set).await;
    let names = names_of(p.addr, 60).await;
    assert_eq!(
        [count(&names, "a"), count(&names, "b"), count(&names, "c")],
        [10, 20, 30]
    );
    // Smooth: the heaviest backend never takes more than two turns in a row with weights 1:2:3.
    assert!(
        !names.windows(3).any(|w| w.iter().all(|n| n == "c")),
        "{names:?}"
    );
    p.shutdown().await;
}

/// The backend the XDP path would pick: the engine's Maglev recipe (names are IP addresses)
/// and the flow key the XDP program builds.
fn xdp_pick(
    backends: &[(SocketAddr, &str)],
    client: SocketAddr,
    vip: SocketAddr,
    src_only: bool,
) -> String {
    let ips: Vec<String> = backends.iter().map(|(a, _)| a.ip().to_string()).collect();
    let entries: Vec<maglev::Entry<'_>> = ips
        .iter()
        .map(|n| maglev::Entry { name: n, weight: 1 })
        .collect();
    let table = maglev::build(&entries, MAGLEV_M);
    let v4 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => u32::from_ne_bytes(ip.octets()),
        IpAddr::V6(_) => unreachable!("loopback IPv4 only"),
    };
    let key = FlowKey::new(
        v4(client),
        v4(vip),
        if src_only { 0 } else { client.port().to_be() },
        vip.port().to_be(),
        IPPROTO_TCP,
    );
    backends[table[(flow_hash(&key) % MAGLEV_M) as usize] as usize]
        .1
        .to_string()
}

async fn connect_from(src: IpAddr, proxy: SocketAddr) -> (SocketAddr, String) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(src, 0)).unwrap();
    let s = within("connect", sock.connect(proxy)).await.unwrap();
    let local = s.local_addr().unwrap();
    let mut r = BufReader::new(s);
    let mut name = String::new();
    within("name line", r.read_line(&mut name)).await.unwrap();
    (local, name.trim_end().to_string())
}

#[tokio::test]
async fn maglev_and_sh_pick_what_the_xdp_path_would() {
    let bs = [
        backend(31, "a", Kind::Echo).await,
        backend(32, "b", Kind::Echo).await,
        backend(33, "c", Kind::Echo).await,
    ];
    let named: Vec<(SocketAddr, &str)> = bs
        .iter()
        .zip(["a", "b", "c"])
        .map(|(b, n)| (b.addr, n))
        .collect();
    let set: Vec<(u32, SocketAddr, u32)> = bs
        .iter()
        .enumerate()
        .map(|(i, b)| (i as u32, b.addr, 1))
        .collect();

    let p = Proxy::tcp(config(), SchedulerKind::Maglev, &set).await;
    let mut names = Vec::new();
    for _ in 0..60 {
        let (client, name) = connect_from(lo(1), p.addr).await;
        assert_eq!(
            name,
            xdp_pick(&named, client, p.addr, false),
            "client {client}"
        );
        names.push(name);
    }
    // 60 flows over 3 equal backends: each gets some (all on two has odds below 1e-10).
    for n in ["a", "b", "c"] {
        assert!(count(&names, n) > 0, "{names:?}");
    }
    p.shutdown().await;

    let p = Proxy::tcp(config(), SchedulerKind::Sh, &set).await;
    for host in 40..52u8 {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let (client, name) = connect_from(lo(host), p.addr).await;
            assert_eq!(
                name,
                xdp_pick(&named, client, p.addr, true),
                "client {client}"
            );
            seen.push(name);
        }
        assert!(
            seen.iter().all(|n| *n == seen[0]),
            "sh moved a client between backends: {seen:?}"
        );
    }
    p.shutdown().await;
}

#[tokio::test]
async fn lc_sends_the_next_connection_to_the_idle_backend() {
    let bs = [
        backend(24, "a", Kind::Echo).await,
        backend(25, "b", Kind::Echo).await,
    ];
    let p = Proxy::tcp(
        config(),
        SchedulerKind::Lc,
        &[(1, bs[0].addr, 1), (2, bs[1].addr, 1)],
    )
    .await;
    // Connections that stay open: each new one goes to the backend with fewer.
    let mut held = Vec::new();
    let mut names = Vec::new();
    for _ in 0..10 {
        let (c, name) = connect_named(p.addr).await;
        held.push(c);
        names.push(name);
    }
    for pair in names.chunks(2) {
        assert_ne!(pair[0], pair[1], "lc chose the busier backend: {names:?}");
    }
    assert_eq!(
        (
            p.service.active_connections(1),
            p.service.active_connections(2)
        ),
        (5, 5)
    );
    p.shutdown().await;
}

#[tokio::test]
async fn half_close_from_the_client() {
    let b = backend(13, "b1", Kind::ReadAllThenReply).await;
    for splice in [true, false] {
        let p = Proxy::tcp(
            ProxyConfig { splice, ..config() },
            SchedulerKind::Rr,
            &[(1, b.addr, 1)],
        )
        .await;
        let mut c = within("connect", TcpStream::connect(p.addr)).await.unwrap();
        c.write_all(b"hello world").await.unwrap();
        c.shutdown().await.unwrap();
        let mut reply = String::new();
        within("reply after FIN", c.read_to_string(&mut reply))
            .await
            .unwrap();
        assert_eq!(reply, "b1:11", "splice {splice}");
        p.shutdown().await;
    }
}

#[tokio::test]
async fn half_close_from_the_backend() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let b = backend(14, "bye", Kind::CloseFirst(tx)).await;
    for splice in [true, false] {
        let p = Proxy::tcp(
            ProxyConfig { splice, ..config() },
            SchedulerKind::Rr,
            &[(1, b.addr, 1)],
        )
        .await;
        let mut c = within("connect", TcpStream::connect(p.addr)).await.unwrap();
        let mut got = String::new();
        // The backend's FIN reaches the client...
        within("backend's FIN", c.read_to_string(&mut got))
            .await
            .unwrap();
        assert_eq!(got, "bye");
        // ...while the client can still send, and the backend reads it.
        c.write_all(b"after your fin").await.unwrap();
        c.shutdown().await.unwrap();
        let seen = within("backend report", rx.recv()).await.unwrap();
        assert_eq!(seen, b"after your fin", "splice {splice}");
        p.shutdown().await;
    }
}

/// An address on loopback where nothing listens: bind a port, then let it go. The address
/// 127.0.0.x is used by this test only, so nothing takes the port meanwhile.
async fn refusing(ip: u8) -> SocketAddr {
    let l = TcpListener::bind(SocketAddr::new(lo(ip), 0)).await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn a_refusing_backend_costs_one_retry() {
    let bad = refusing(41).await;
    let good = backend(42, "good", Kind::Echo).await;
    let p = Proxy::tcp(
        config(),
        SchedulerKind::Rr,
        &[(1, bad, 1), (2, good.addr, 1)],
    )
    .await;
    for _ in 0..4 {
        assert_eq!(connect_named(p.addr).await.1, "good");
    }
    let failures = p.service.backend_counters(1).unwrap().connect_failures;
    assert!(failures >= 1, "the refusing backend was never tried");
    assert_eq!(p.service.counters().connect_failures, failures);
    assert_eq!(p.service.backend_counters(2).unwrap().connect_failures, 0);
    p.shutdown().await;

    // Nothing but refusals: the client is turned away after one retry, not left hanging.
    let bad2 = refusing(43).await;
    let p = Proxy::tcp(config(), SchedulerKind::Rr, &[(1, bad, 1), (2, bad2, 1)]).await;
    let mut c = within("connect", TcpStream::connect(p.addr)).await.unwrap();
    let mut buf = Vec::new();
    let r = within("client turned away", c.read_to_end(&mut buf)).await;
    assert!(buf.is_empty() && (r.is_err() || r.is_ok_and(|n| n == 0)));
    let s = p.service.counters();
    assert_eq!((s.connect_failures, s.no_backend, s.connections), (2, 1, 0));
    p.shutdown().await;
}

/// A listener on `ip` that never accepts, its accept queue full: the kernel drops further SYNs,
/// so a connect hangs. Returns the address and the connections that fill the queue.
async fn blackhole(ip: u8) -> (SocketAddr, socket2::Socket, Vec<TcpStream>) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(lo(ip), 0).into()).unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let mut fill = Vec::new();
    for _ in 0..8 {
        match timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(c)) => fill.push(c),
            Ok(Err(e)) => panic!("connect to the blackhole failed: {e}"),
            // The queue is full: SYNs are dropped from now on.
            Err(_) => return (addr, s, fill),
        }
    }
    panic!("the accept queue of a backlog-0 listener never filled");
}

#[tokio::test]
async fn a_hanging_backend_times_out_and_the_retry_goes_elsewhere() {
    let (hole, _listener, _fill) = blackhole(44).await;
    let good = backend(45, "good", Kind::Echo).await;
    let connect_timeout = Duration::from_millis(300);
    let p = Proxy::tcp(
        ProxyConfig {
            connect_timeout,
            ..config()
        },
        SchedulerKind::Rr,
        &[(1, hole, 1), (2, good.addr, 1)],
    )
    .await;
    // rr: the first connection tries the blackhole first.
    let start = Instant::now();
    assert_eq!(connect_named(p.addr).await.1, "good");
    let took = start.elapsed();
    assert!(
        took >= connect_timeout,
        "served in {took:?}: the connect did not wait for its timeout"
    );
    assert!(took < connect_timeout + BOUND);
    assert_eq!(p.service.backend_counters(1).unwrap().connect_failures, 1);
    assert_eq!(
        p.service.active_connections(1),
        0,
        "a timed-out connect still counts as active"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn the_connection_bound_makes_new_clients_wait() {
    let b = backend(15, "b", Kind::Echo).await;
    let p = Proxy::tcp(
        ProxyConfig {
            max_connections: 2,
            ..config()
        },
        SchedulerKind::Rr,
        &[(1, b.addr, 1)],
    )
    .await;
    let (c1, _) = connect_named(p.addr).await;
    let (_c2, _) = connect_named(p.addr).await;
    // The third completes the handshake with the kernel but is not accepted yet.
    let c3 = within("connect", TcpStream::connect(p.addr)).await.unwrap();
    let mut c3 = BufReader::new(c3);
    let mut line = String::new();
    assert!(
        timeout(Duration::from_millis(300), c3.read_line(&mut line))
            .await
            .is_err(),
        "served beyond the bound: {line:?}"
    );
    eventually("limit counted", || p.service.counters().limit_hits >= 1).await;
    assert_eq!(p.service.counters().active, 2);
    drop(c1);
    within("served once a slot frees", c3.read_line(&mut line))
        .await
        .unwrap();
    assert_eq!(line, "b\n");
    p.shutdown().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let b = backend(16, "b", Kind::Echo).await;
    let idle = Duration::from_millis(300);
    for splice in [true, false] {
        let p = Proxy::tcp(
            ProxyConfig {
                idle_timeout: idle,
                splice,
                ..config()
            },
            SchedulerKind::Rr,
            &[(1, b.addr, 1)],
        )
        .await;
        let (mut c, _) = connect_named(p.addr).await;
        let quiet_since = Instant::now();
        let mut rest = Vec::new();
        within("idle close", c.read_to_end(&mut rest))
            .await
            .unwrap();
        // Timers never fire early; a millisecond of slack covers the rounding of "last byte".
        assert!(
            quiet_since.elapsed() + Duration::from_millis(5) >= idle,
            "closed after {:?}",
            quiet_since.elapsed()
        );
        eventually("connection gone", || p.service.active_connections(1) == 0).await;
        p.shutdown().await;
    }
}

#[tokio::test]
async fn a_removed_backend_keeps_its_open_connection() {
    let a = backend(17, "a", Kind::Echo).await;
    let b = backend(18, "b", Kind::Echo).await;
    let p = Proxy::tcp(config(), SchedulerKind::Rr, &[(1, a.addr, 1)]).await;
    let (mut old, name) = connect_named(p.addr).await;
    assert_eq!(name, "a");
    // Backend 1 leaves the rotation (drain): a new set without it.
    p.service
        .set_backends(
            SchedulerKind::Rr,
            &[BackendSpec {
                id: 2,
                addr: b.addr,
                weight: 1,
            }],
            &[],
        )
        .unwrap();
    for _ in 0..5 {
        assert_eq!(connect_named(p.addr).await.1, "b");
    }
    assert_eq!(p.service.active_connections(1), 1);
    old.write_all(b"still there?").await.unwrap();
    let mut buf = [0u8; 12];
    within("old connection echo", old.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"still there?");
    drop(old);
    eventually("drained", || p.service.active_connections(1) == 0).await;
    assert_eq!(p.service.backend_counters(1).unwrap().connections, 1);
    p.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_connections_and_returns() {
    let b = backend(19, "b", Kind::Echo).await;
    let p = Proxy::tcp(config(), SchedulerKind::Rr, &[(1, b.addr, 1)]).await;
    let (mut c, _) = connect_named(p.addr).await;
    let service = p.service.clone();
    p.shutdown().await;
    assert_eq!(service.counters().active, 0);
    let mut rest = Vec::new();
    let r = within("closed by shutdown", c.read_to_end(&mut rest)).await;
    assert!(rest.is_empty() && (r.is_err() || r.is_ok_and(|n| n == 0)));
}

#[tokio::test]
async fn listeners_are_freebind_and_reuseaddr() {
    let l = bind_tcp(SocketAddr::new(lo(1), 0)).unwrap();
    let s = socket2::SockRef::from(&l);
    assert!(s.freebind_v4().unwrap() && s.reuse_address().unwrap());
    // The proxy sets no TCP_NODELAY per connection: its accepted sockets inherit it.
    let _client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (accepted, _) = l.accept().await.unwrap();
    assert!(
        accepted.nodelay().unwrap(),
        "accepted sockets have TCP_NODELAY"
    );
    let u = bind_udp(SocketAddr::new(lo(1), 0)).unwrap();
    let s = socket2::SockRef::from(&u);
    assert!(s.freebind_v4().unwrap() && s.reuse_address().unwrap());
}

/// A UDP backend answering `name:payload`, reporting each datagram's source.
async fn udp_backend(
    ip: u8,
    name: &'static str,
) -> (SocketAddr, mpsc::UnboundedReceiver<SocketAddr>, Task) {
    let s = UdpSocket::bind(SocketAddr::new(lo(ip), 0)).await.unwrap();
    let addr = s.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = tx.send(from);
            let mut reply = format!("{name}:").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&reply, from).await;
        }
    });
    (addr, rx, Task(task))
}

async fn udp_ask(c: &UdpSocket, proxy: SocketAddr, msg: &str) -> (String, SocketAddr) {
    c.send_to(msg.as_bytes(), proxy).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = within("udp reply", c.recv_from(&mut buf)).await.unwrap();
    (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
}

#[tokio::test]
async fn udp_round_trip_session_reuse_and_expiry() {
    let (b, mut seen, _t) = udp_backend(51, "u1").await;
    let session_timeout = Duration::from_millis(300);
    let p = Proxy::udp(
        ProxyConfig {
            udp_session_timeout: session_timeout,
            ..config()
        },
        SchedulerKind::Rr,
        &[(1, b, 1)],
    )
    .await;
    let c = UdpSocket::bind(SocketAddr::new(lo(1), 0)).await.unwrap();
    let (reply, from) = udp_ask(&c, p.addr, "one").await;
    assert_eq!(
        (reply.as_str(), from),
        ("u1:one", p.addr),
        "the reply must come from the VIP"
    );
    let (reply, _) = udp_ask(&c, p.addr, "two").await;
    assert_eq!(reply, "u1:two");
    let (s1, s2) = (seen.recv().await.unwrap(), seen.recv().await.unwrap());
    assert_eq!(s1, s2, "the second datagram took another session");
    // Counted just after the send: the client may see the reply a moment before.
    eventually("counters", || {
        let s = p.service.counters();
        (s.connections, s.active, s.packets_in, s.packets_out) == (1, 1, 2, 2)
    })
    .await;
    assert_eq!(p.service.active_connections(1), 1);

    eventually("session expired", || p.service.active_connections(1) == 0).await;
    let (reply, _) = udp_ask(&c, p.addr, "three").await;
    assert_eq!(reply, "u1:three");
    assert_eq!(
        p.service.counters().connections,
        2,
        "no new session after expiry"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn udp_clients_get_their_own_sessions() {
    let (a, _sa, _ta) = udp_backend(52, "a").await;
    let (b, _sb, _tb) = udp_backend(53, "b").await;
    let p = Proxy::udp(config(), SchedulerKind::Rr, &[(1, a, 1), (2, b, 1)]).await;
    let c1 = UdpSocket::bind(SocketAddr::new(lo(1), 0)).await.unwrap();
    let c2 = UdpSocket::bind(SocketAddr::new(lo(1), 0)).await.unwrap();
    let r1 = udp_ask(&c1, p.addr, "x").await.0;
    let r2 = udp_ask(&c2, p.addr, "x").await.0;
    assert_ne!(r1, r2, "rr put two clients on one backend");
    // Each client stays on its backend.
    for _ in 0..3 {
        assert_eq!(udp_ask(&c1, p.addr, "x").await.0, r1);
        assert_eq!(udp_ask(&c2, p.addr, "x").await.0, r2);
    }
    assert_eq!(p.service.counters().connections, 2);
    p.shutdown().await;
}

#[tokio::test]
async fn udp_session_bound_drops_new_clients_until_one_expires() {
    let (b, _seen, _t) = udp_backend(54, "u").await;
    let p = Proxy::udp(
        ProxyConfig {
            max_udp_sessions: 1,
            udp_session_timeout: Duration::from_millis(300),
            ..config()
        },
        SchedulerKind::Rr,
        &[(1, b, 1)],
    )
    .await;
    let c1 = UdpSocket::bind(SocketAddr::new(lo(1), 0)).await.unwrap();
    let c2 = UdpSocket::bind(SocketAddr::new(lo(1), 0)).await.unwrap();
    assert_eq!(udp_ask(&c1, p.addr, "a").await.0, "u:a");
    c2.send_to(b"b", p.addr).await.unwrap();
    let mut buf = [0u8; 64];
    assert!(
        timeout(Duration::from_millis(200), c2.recv_from(&mut buf))
            .await
            .is_err(),
        "served beyond the bound"
    );
    let s = p.service.counters();
    assert!(s.dropped >= 1 && s.limit_hits >= 1, "{s:?}");
    eventually("first session expired", || p.service.counters().active == 0).await;
    assert_eq!(udp_ask(&c2, p.addr, "b").await.0, "u:b");
    p.shutdown().await;
}

/// IPv6 loopback: the one address there is, so backends differ by port.
const LO6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);

/// The proxy on an IPv6 address to IPv6 backends: TCP both ways (spliced and copied), the
/// connection counted, and a UDP session answered from the VIP.
#[tokio::test]
async fn ipv6_tcp_and_udp_through_the_proxy() {
    let listener = TcpListener::bind(SocketAddr::new(LO6, 0)).await.unwrap();
    let b6 = listener.local_addr().unwrap();
    let _server = Task(tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve_backend(s, "v6", Kind::Echo));
        }
    }));
    for splice in [true, false] {
        let p = Proxy::tcp_on(
            LO6,
            ProxyConfig { splice, ..config() },
            SchedulerKind::Maglev,
            &[(1, b6, 1)],
        )
        .await;
        assert!(p.addr.is_ipv6());
        let (mut c, name) = connect_named(p.addr).await;
        assert_eq!(name, "v6");
        c.write_all(b"ping6").await.unwrap();
        let mut buf = [0u8; 5];
        within("echo", c.read_exact(&mut buf)).await.unwrap();
        assert_eq!(&buf, b"ping6");
        drop(c);
        eventually("connection closed", || p.service.active_connections(1) == 0).await;
        assert_eq!(p.service.counters().connections, 1, "splice {splice}");
        p.shutdown().await;
    }

    let u = UdpSocket::bind(SocketAddr::new(LO6, 0)).await.unwrap();
    let ub = u.local_addr().unwrap();
    let _udp = Task(tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = u.recv_from(&mut buf).await {
            let mut reply = b"u6:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = u.send_to(&reply, from).await;
        }
    }));
    let p = Proxy::udp_on(LO6, config(), SchedulerKind::Maglev, &[(1, ub, 1)]).await;
    let c = UdpSocket::bind(SocketAddr::new(LO6, 0)).await.unwrap();
    let (reply, from) = udp_ask(&c, p.addr, "q").await;
    assert_eq!(
        (reply.as_str(), from),
        ("u6:q", p.addr),
        "answered from the VIP"
    );
    p.shutdown().await;
}
