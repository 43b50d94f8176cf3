//! Backend health checks: config, a sans-IO state machine, probes, and a runner.
//!//! - [`tracker`]: [`Tracker`] turns probe results into up/down [`Transition`]s with rise/fall
//!   thresholds (consecutive results, as HAProxy and keepalived count them). It does no I/O and
//!   reads no clock, so it is tested with plain calls.
//! - [`probe`](mod@probe): one check, bounded in time and size.
//! - this module: [`HealthMonitor`] runs one tokio task per (service, backend) target and reports
//!   each probe and each transition as a [`HealthEvent`] on an mpsc channel.
//!   [`HealthMonitor::set_targets`] adds, removes and reconfigures targets on reload; unchanged
//!   targets keep running, and their up/down state survives.
//!
//! The check's settings ([`HealthConfig`]) belong to the config (`crate::config::health`).
//!
//! # Initial state
//! A new target starts **Up** by default ([`DEFAULT_INITIAL_STATE`]): a freshly started (or
//! reloaded) daemon keeps forwarding to its backends instead of black-holing every service until
//! `rise` checks have passed. A dead backend is taken out after `fall` failed checks, i.e. at
//! most `fall × interval + timeout` after start. This is what HAProxy (servers start up, with
//! `fall` failures needed to go down) and keepalived (real servers start up unless `alpha` is
//! set) do. [`HealthMonitor::with_initial_state`] chooses Down instead, for operators who prefer
//! no traffic until a backend has proven itself.

pub mod probe;
pub mod tracker;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

pub use probe::{ProbeResult, probe};
pub use tracker::{HealthState, Tracker, Transition};

use crate::config::health::HealthConfig;

/// State of a target when it is added (see the module docs for why Up).
pub const DEFAULT_INITIAL_STATE: HealthState = HealthState::Up;
/// Capacity of the event channel [`HealthMonitor::channel`] makes. When the channel is full,
/// probe events are dropped and transitions wait for room.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;
/// The spread of the first probe of a new target: a random delay below `min(interval, this)`,
/// so that targets added together (at start or reload) do not probe in lockstep, and a long
/// interval does not leave a new target unchecked for that long.
const FIRST_PROBE_SPREAD: Duration = Duration::from_secs(1);
/// Each later probe comes `interval × (1 ± JITTER)` after the previous one started: enough to
/// keep targets from synchronising, small enough that `fall × interval` stays meaningful.
const JITTER: f64 = 0.1;

/// One target to check: a backend of a service. Targets are identified by `(service, backend)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Service name.
    pub service: String,
    /// Address probed: in direct routing, the backend's own address and the service port.
    pub backend: SocketAddr,
    /// How to check it.
    pub config: HealthConfig,
}

/// A probe result of one target, sent by [`HealthMonitor`] after every probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    /// Service name.
    pub service: String,
    /// Backend address probed.
    pub backend: SocketAddr,
    /// The target's state after this probe.
    pub up: bool,
    /// Whether this probe changed the state (`up` is then the new state).
    pub transition: bool,
    /// Whether this probe itself passed (a failed probe below `fall` leaves `up` true).
    pub probe_ok: bool,
    /// The probe's latency.
    pub latency: Duration,
    /// The probe's detail (see [`ProbeResult::detail`]).
    pub detail: String,
}

/// What [`HealthMonitor::status`] says about one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetStatus {
    /// Service name.
    pub service: String,
    /// Backend address probed.
    pub backend: SocketAddr,
    /// Current state.
    pub state: HealthState,
    /// Probes run so far.
    pub probes: u64,
    /// The last probe, once there is one.
    pub last: Option<ProbeResult>,
}

/// What [`HealthMonitor::set_targets`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetChanges {
    /// Targets started.
    pub added: usize,
    /// Targets stopped.
    pub removed: usize,
    /// Targets whose config changed: they keep their task and state, and probe with the new
    /// config from their next probe on.
    pub reconfigured: usize,
    /// Targets left as they were.
    pub unchanged: usize,
}

type TargetKey = (String, SocketAddr);

/// The part of a target's state that [`HealthMonitor::status`] reads while its task runs.
#[derive(Debug)]
struct Shared {
    state: HealthState,
    probes: u64,
    last: Option<ProbeResult>,
}

#[derive(Debug)]
struct Running {
    config: watch::Sender<HealthConfig>,
    cancel: CancellationToken,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

/// Runs the health checks: one tokio task per target, each probing at its interval and
/// reporting on the event channel.
///
/// Events: every probe sends a [`HealthEvent`]. Transitions are always delivered (the task
/// waits for room in the channel); a plain probe event is dropped when the channel is full, so
/// a slow reader delays nothing but its latency figures. Each target's events arrive in order.
/// A target removed by [`set_targets`](Self::set_targets) may still deliver the event of a probe
/// that was under way: ignore events for targets you no longer have.
///
/// Stopping: dropping the monitor, cancelling the token given to [`new`](Self::new), or
/// [`shutdown`](Self::shutdown) stops every task. Tasks are spawned on the current tokio
/// runtime, so [`set_targets`](Self::set_targets) must be called from within one.
#[derive(Debug)]
pub struct HealthMonitor {
    targets: BTreeMap<TargetKey, Running>,
    events: mpsc::Sender<HealthEvent>,
    cancel: CancellationToken,
    initial: HealthState,
}

impl HealthMonitor {
    /// An event channel of the default capacity, for [`new`](Self::new).
    pub fn channel() -> (mpsc::Sender<HealthEvent>, mpsc::Receiver<HealthEvent>) {
        mpsc::channel(DEFAULT_EVENT_CAPACITY)
    }

    /// A monitor with no targets, sending events to `events`. It stops when `shutdown` is
    /// cancelled (it uses a child token, so dropping the monitor does not cancel `shutdown`).
    pub fn new(events: mpsc::Sender<HealthEvent>, shutdown: &CancellationToken) -> HealthMonitor {
        HealthMonitor {
            targets: BTreeMap::new(),
            events,
            cancel: shutdown.child_token(),
            initial: DEFAULT_INITIAL_STATE,
        }
    }

    /// Sets the state new targets start in (default Up: see the module docs).
    #[must_use]
    pub fn with_initial_state(mut self, initial: HealthState) -> HealthMonitor {
        self.initial = initial;
        self
    }

    /// The state new targets start in.
    pub fn initial_state(&self) -> HealthState {
        self.initial
    }

    /// Makes the running targets exactly `targets` (a duplicate `(service, backend)` pair: the
    /// last one wins). New targets start in the initial state; removed ones stop; a target whose
    /// config changed keeps its task and state (and its streaks, unless the kind of check
    /// changed) and uses the new config from its next probe on; the others are untouched.
    pub fn set_targets(&mut self, targets: impl IntoIterator<Item = Target>) -> TargetChanges {
        let wanted: BTreeMap<TargetKey, HealthConfig> = targets
            .into_iter()
            .map(|t| ((t.service, t.backend), t.config))
            .collect();
        let mut changes = TargetChanges::default();
        self.targets.retain(|key, running| {
            let keep = wanted.contains_key(key);
            if !keep {
                running.cancel.cancel();
                tracing::debug!(service = %key.0, backend = %key.1, "health check stopped");
                changes.removed += 1;
            }
            keep
        });
        for (key, config) in wanted {
            match self.targets.get(&key) {
                Some(running) => {
                    // send_if_modified: an unchanged config must not wake the task.
                    let changed = running.config.send_if_modified(|current| {
                        let differs = *current != config;
                        if differs {
                            *current = config.clone();
                        }
                        differs
                    });
                    if changed {
                        changes.reconfigured += 1;
                    } else {
                        changes.unchanged += 1;
                    }
                }
                None => {
                    let running = self.spawn(key.clone(), config);
                    self.targets.insert(key, running);
                    changes.added += 1;
                }
            }
        }
        changes
    }

    fn spawn(&self, key: TargetKey, config: HealthConfig) -> Running {
        let (config_tx, config_rx) = watch::channel(config.clone());
        let cancel = self.cancel.child_token();
        let shared = Arc::new(Mutex::new(Shared {
            state: self.initial,
            probes: 0,
            last: None,
        }));
        tracing::debug!(service = %key.0, backend = %key.1, check = %config.kind, "health check started");
        let task = tokio::spawn(run_target(TargetTask {
            service: key.0,
            backend: key.1,
            config: config_rx,
            tracker: Tracker::new(config.rise, config.fall, self.initial),
            shared: shared.clone(),
            events: self.events.clone(),
            cancel: cancel.clone(),
        }));
        Running {
            config: config_tx,
            cancel,
            shared,
            task,
        }
    }

    /// The targets and their current state, ordered by service then backend.
    pub fn status(&self) -> Vec<TargetStatus> {
        self.targets
            .iter()
            .map(|((service, backend), running)| {
                let shared = running
                    .shared
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                TargetStatus {
                    service: service.clone(),
                    backend: *backend,
                    state: shared.state,
                    probes: shared.probes,
                    last: shared.last.clone(),
                }
            })
            .collect()
    }

    /// The current state of one target.
    pub fn state(&self, service: &str, backend: SocketAddr) -> Option<HealthState> {
        self.targets.get(&(service.to_owned(), backend)).map(|r| {
            r.shared
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .state
        })
    }

    /// Number of targets.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether there are no targets.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Stops every task and waits until they have ended.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        let targets = std::mem::take(&mut self.targets);
        for (_, running) in targets {
            // A task ends at its next await point once cancelled; a panic in it was already
            // reported by the runtime.
            let _ = running.task.await;
        }
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Everything one target's task owns.
struct TargetTask {
    service: String,
    backend: SocketAddr,
    config: watch::Receiver<HealthConfig>,
    tracker: Tracker,
    shared: Arc<Mutex<Shared>>,
    events: mpsc::Sender<HealthEvent>,
    cancel: CancellationToken,
}

/// `interval × (1 ± JITTER)`, uniformly.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(1.0 + JITTER * (2.0 * fastrand::f64() - 1.0))
}

async fn run_target(mut t: TargetTask) {
    let mut cfg = t.config.borrow_and_update().clone();
    let mut next = Instant::now() + interval_spread(cfg.interval);
    let mut last_start: Option<Instant> = None;
    loop {
        tokio::select! {
            biased;
            _ = t.cancel.cancelled() => return,
            Ok(()) = t.config.changed() => {
                let new = t.config.borrow_and_update().clone();
                apply_config(&mut t.tracker, &cfg, &new);
                // A shorter interval takes effect now, not after the old, longer wait.
                if let Some(start) = last_start {
                    next = next.min(start + jittered(new.interval));
                }
                cfg = new;
                continue;
            }
            () = tokio::time::sleep_until(next) => {}
        }
        let start = Instant::now();
        last_start = Some(start);
        let result = tokio::select! {
            biased;
            _ = t.cancel.cancelled() => return,
            r = probe(t.backend, &cfg) => r,
        };
        let transition = t.tracker.record(result.ok);
        let state = t.tracker.state();
        {
            let mut shared = t.shared.lock().unwrap_or_else(PoisonError::into_inner);
            shared.state = state;
            shared.probes += 1;
            shared.last = Some(result.clone());
        }
        match transition {
            Some(Transition::WentUp) => tracing::info!(
                service = %t.service, backend = %t.backend, detail = %result.detail,
                rise = t.tracker.rise(), "backend is up: health checks pass"
            ),
            Some(Transition::WentDown) => tracing::warn!(
                service = %t.service, backend = %t.backend, detail = %result.detail,
                fall = t.tracker.fall(), "backend is down: health checks fail"
            ),
            None if !result.ok => tracing::debug!(
                service = %t.service, backend = %t.backend, detail = %result.detail,
                failures = t.tracker.consecutive_fail(), "health check failed"
            ),
            None => {}
        }
        let event = HealthEvent {
            service: t.service.clone(),
            backend: t.backend,
            up: state.is_up(),
            transition: transition.is_some(),
            probe_ok: result.ok,
            latency: result.latency,
            detail: result.detail,
        };
        if transition.is_some() {
            // A transition must reach the daemon: wait for room.
            tokio::select! {
                biased;
                _ = t.cancel.cancelled() => return,
                sent = t.events.send(event) => if sent.is_err() { return },
            }
        } else {
            match t.events.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::debug!(service = %t.service, backend = %t.backend, "health event channel full: probe event dropped");
                }
                // Nobody listens any more: the daemon is going away.
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        next = (start + jittered(cfg.interval)).max(Instant::now());
    }
}

/// The delay before a new target's first probe: random below `min(interval, 1 s)`.
fn interval_spread(interval: Duration) -> Duration {
    interval.min(FIRST_PROBE_SPREAD).mul_f64(fastrand::f64())
}

/// Carries a target's tracker over to a new config: thresholds change in place; a different
/// kind of check starts its streaks afresh (the state stays, so a reload never flaps it).
fn apply_config(tracker: &mut Tracker, old: &HealthConfig, new: &HealthConfig) {
    if old.kind != new.kind {
        tracker.reset_streaks();
    }
    tracker.set_thresholds(new.rise, new.fall);
}

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, SocketAddr},
        time::Duration,
    };

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{TcpListener, TcpSocket},
        sync::mpsc,
        task::JoinHandle,
    };
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::config::health::CheckKind;

    // ---- probes on loopback ----

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn tcp_cfg() -> HealthConfig {
        HealthConfig {
            kind: CheckKind::Tcp,
            // A timeout close to the interval: a loaded test machine must not fail a connect
            // to a live listener (refused connects fail at once anyway).
            interval: Duration::from_millis(150),
            timeout: Duration::from_millis(140),
            rise: 2,
            fall: 3,
        }
    }

    fn http_cfg(timeout_ms: u64) -> HealthConfig {
        HealthConfig {
            kind: CheckKind::Http {
                path: "/healthz".into(),
                expect_status: 200,
            },
            interval: Duration::from_millis(timeout_ms * 2),
            timeout: Duration::from_millis(timeout_ms),
            rise: 2,
            fall: 3,
        }
    }

    /// A listener that may be closed and reopened on the same port.
    fn listen(addr: SocketAddr) -> TcpListener {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(addr).expect("bind");
        socket.listen(64).expect("listen")
    }

    /// Accepts and closes connections until aborted.
    fn accept_and_close(listener: TcpListener) -> JoinHandle<()> {
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        })
    }

    /// A port with nothing listening on it.
    async fn closed_port() -> SocketAddr {
        let l = TcpListener::bind((LOCAL, 0)).await.expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        addr
    }

    /// A one-answer-per-connection HTTP server: reads the request head (bounded) and writes
    /// `answer`, then closes. Requests are sent back on the channel.
    async fn http_server(answer: &'static [u8]) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
        let l = TcpListener::bind((LOCAL, 0)).await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 512];
                    while !req.ends_with(b"\r\n\r\n") && req.len() < 8192 {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tx.send(String::from_utf8_lossy(&req).into_owned());
                    let _ = s.write_all(answer).await;
                });
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn tcp_probe_up_and_refused() {
        let l = TcpListener::bind((LOCAL, 0)).await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let r = probe(addr, &tcp_cfg()).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.detail, "connected");
        assert!(r.latency < tcp_cfg().timeout);
        drop(l);
        let r = probe(addr, &tcp_cfg()).await;
        assert!(!r.ok);
        assert!(r.detail.starts_with("connect failed: "), "{}", r.detail);
    }

    #[tokio::test]
    async fn http_probe_answers() {
        let cases: [(&'static [u8], bool, &str); 6] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                true,
                "HTTP 200",
            ),
            (
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                false,
                "HTTP 503, expected 200",
            ),
            (
                b"\x00\x01garbage garbage\r\n",
                false,
                "not an HTTP status line: ",
            ),
            (b"", false, "connection closed without an answer"),
            (b"HTTP/1.1 200 OK", true, "HTTP 200"),
            (
                &[b'x'; 4096],
                false,
                "not HTTP: no line break in the first 1024 bytes",
            ),
        ];
        for (answer, ok, detail) in cases {
            let (addr, mut requests) = http_server(answer).await;
            let r = probe(addr, &http_cfg(500)).await;
            assert_eq!(r.ok, ok, "{r:?}");
            assert!(r.detail.starts_with(detail), "want {detail:?}, got {r:?}");
            let req = requests.recv().await.expect("request");
            assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
            assert!(req.contains(&format!("\r\nHost: {addr}\r\n")), "{req}");
            assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
        }
    }

    /// Both kinds of check over IPv6: a connect, and an HTTP request whose Host header carries
    /// the address in brackets (RFC 7230 §5.4, RFC 3986 §3.2.2).
    #[tokio::test]
    async fn probes_over_ipv6() {
        let lo6 = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
        let l = TcpListener::bind((lo6, 0)).await.expect("bind [::1]");
        let addr = l.local_addr().expect("addr");
        let r = probe(addr, &tcp_cfg()).await;
        assert!(r.ok && r.detail == "connected", "{r:?}");
        drop(l);
        let r = probe(addr, &tcp_cfg()).await;
        assert!(!r.ok, "{r:?}");

        let l = TcpListener::bind((lo6, 0)).await.expect("bind [::1]");
        let addr = l.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut req = Vec::new();
            let mut buf = [0u8; 512];
            while !req.ends_with(b"\r\n\r\n") && req.len() < 8192 {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
            String::from_utf8_lossy(&req).into_owned()
        });
        let r = probe(addr, &http_cfg(500)).await;
        assert!(r.ok && r.detail.starts_with("HTTP 200"), "{r:?}");
        let req = server.await.expect("server");
        assert!(
            req.contains(&format!("\r\nHost: [::1]:{}\r\n", addr.port())),
            "{req}"
        );
    }

    #[tokio::test]
    async fn http_probe_times_out_on_silence() {
        // Listening, never accepting: the connect succeeds (backlog) and no answer ever comes.
        let l = TcpListener::bind((LOCAL, 0)).await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let r = probe(addr, &http_cfg(100)).await;
        assert!(!r.ok);
        assert_eq!(
            r.detail,
            "no answer within 100 ms (waiting for the status line)"
        );
        assert!(r.latency >= Duration::from_millis(100), "{r:?}");
        assert!(r.latency < Duration::from_secs(2), "{r:?}");
        drop(l);
    }

    // ---- monitor on loopback ----

    /// Waits for the next event of `backend`, at most 5 s.
    async fn next_event(rx: &mut mpsc::Receiver<HealthEvent>, backend: SocketAddr) -> HealthEvent {
        let wait = async {
            loop {
                match rx.recv().await {
                    Some(e) if e.backend == backend => return e,
                    Some(_) => {}
                    None => panic!("event channel closed"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("no health event within 5 s")
    }

    fn target(service: &str, backend: SocketAddr, config: HealthConfig) -> Target {
        Target {
            service: service.into(),
            backend,
            config,
        }
    }

    #[tokio::test]
    async fn monitor_goes_down_after_fall_and_up_after_rise() {
        let addr = closed_port().await;
        let server = accept_and_close(listen(addr));
        let (tx, mut rx) = mpsc::channel(256);
        let shutdown = CancellationToken::new();
        let mut mon = HealthMonitor::new(tx, &shutdown);
        let cfg = tcp_cfg();
        let changes = mon.set_targets([target("web", addr, cfg.clone())]);
        assert_eq!(changes.added, 1);
        assert_eq!(mon.state("web", addr), Some(HealthState::Up));

        // Listening: probes pass, no transition (it started up).
        for _ in 0..2 {
            let e = next_event(&mut rx, addr).await;
            assert!(e.up && e.probe_ok && !e.transition, "{e:?}");
            assert_eq!(e.service, "web");
        }

        // Closed: down on exactly the `fall`-th failed probe.
        server.abort();
        let _ = server.await;
        let mut e = next_event(&mut rx, addr).await;
        while e.probe_ok {
            e = next_event(&mut rx, addr).await;
        }
        for i in 1..cfg.fall {
            assert!(
                !e.probe_ok && e.up && !e.transition,
                "failure {i}: still up: {e:?}"
            );
            e = next_event(&mut rx, addr).await;
        }
        assert!(
            !e.probe_ok && !e.up && e.transition,
            "failure {}: {e:?}",
            cfg.fall
        );
        assert!(e.detail.starts_with("connect failed"), "{e:?}");
        assert_eq!(mon.state("web", addr), Some(HealthState::Down));

        // Listening again: up on exactly the `rise`-th passed probe.
        let server = accept_and_close(listen(addr));
        let mut e = next_event(&mut rx, addr).await;
        while !e.probe_ok {
            assert!(!e.up && !e.transition, "{e:?}");
            e = next_event(&mut rx, addr).await;
        }
        for i in 1..cfg.rise {
            assert!(e.probe_ok && !e.up && !e.transition, "pass {i}: {e:?}");
            e = next_event(&mut rx, addr).await;
        }
        assert!(
            e.probe_ok && e.up && e.transition,
            "pass {}: {e:?}",
            cfg.rise
        );
        let status = mon.status();
        assert_eq!(status.len(), 1);
        assert_eq!(status[0].state, HealthState::Up);
        assert!(status[0].probes >= 2 + 3 + 2);
        assert!(status[0].last.as_ref().is_some_and(|p| p.ok));

        // Cancelling the token stops the task: the channel closes once the monitor is gone.
        shutdown.cancel();
        drop(mon);
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while rx.recv().await.is_some() {}
        })
        .await;
        assert!(closed.is_ok(), "tasks still running after cancel");
        server.abort();
    }

    #[tokio::test]
    async fn set_targets_keeps_unchanged_targets_and_their_state() {
        let dead = closed_port().await;
        let live_listener = TcpListener::bind((LOCAL, 0)).await.expect("bind");
        let live = live_listener.local_addr().expect("addr");
        let server = accept_and_close(live_listener);
        let (tx, mut rx) = mpsc::channel(256);
        let shutdown = CancellationToken::new();
        let mut mon = HealthMonitor::new(tx, &shutdown);
        let cfg = tcp_cfg();
        mon.set_targets([target("web", dead, cfg.clone())]);
        loop {
            let e = next_event(&mut rx, dead).await;
            if e.transition {
                assert!(!e.up);
                break;
            }
        }

        // Reload: the dead target unchanged, a new one added (and a duplicate, last one wins).
        let changes = mon.set_targets([
            target("web", dead, cfg.clone()),
            target("web", live, tcp_cfg()),
            target("web", live, cfg.clone()),
        ]);
        assert_eq!(
            changes,
            TargetChanges {
                added: 1,
                removed: 0,
                reconfigured: 0,
                unchanged: 1
            }
        );
        assert_eq!(mon.state("web", dead), Some(HealthState::Down));
        assert_eq!(mon.state("web", live), Some(HealthState::Up));
        let e = next_event(&mut rx, dead).await;
        assert!(!e.up && !e.transition, "state kept across reload: {e:?}");
        let e = next_event(&mut rx, live).await;
        assert!(e.up && e.probe_ok && !e.transition, "{e:?}");

        // Reconfigured (rise 1): same task, state kept, the next pass would bring it up at once.
        let mut rise1 = cfg.clone();
        rise1.rise = 1;
        let changes = mon.set_targets([
            target("web", dead, rise1.clone()),
            target("web", live, cfg.clone()),
        ]);
        assert_eq!((changes.reconfigured, changes.unchanged), (1, 1));
        assert_eq!(mon.state("web", dead), Some(HealthState::Down));

        // Removed: no more events for it.
        let changes = mon.set_targets([target("web", live, cfg.clone())]);
        assert_eq!((changes.removed, changes.unchanged), (1, 1));
        assert_eq!(mon.status().len(), 1);
        assert_eq!(mon.state("web", dead), None);
        // Let an event of a probe under way drain, then expect none for 3 intervals.
        tokio::time::sleep(Duration::from_millis(200)).await;
        while rx.try_recv().is_ok() {}
        let quiet = tokio::time::timeout(Duration::from_millis(450), async {
            loop {
                match rx.recv().await {
                    Some(e) if e.backend == dead => return e,
                    Some(_) => {}
                    None => std::future::pending::<()>().await,
                }
            }
        })
        .await;
        assert!(quiet.is_err(), "event after removal: {quiet:?}");

        mon.shutdown().await;
        server.abort();
    }

    #[tokio::test]
    async fn monitor_runs_http_checks() {
        let (ok_addr, _r1) = http_server(b"HTTP/1.1 200 OK\r\n\r\n").await;
        let (bad_addr, _r2) = http_server(b"HTTP/1.1 503 Unavailable\r\n\r\n").await;
        let (tx, mut rx) = mpsc::channel(256);
        let shutdown = CancellationToken::new();
        let mut mon = HealthMonitor::new(tx, &shutdown).with_initial_state(HealthState::Down);
        let cfg = http_cfg(200);
        mon.set_targets([
            target("api", ok_addr, cfg.clone()),
            target("api", bad_addr, cfg.clone()),
        ]);
        let e = next_event(&mut rx, ok_addr).await;
        assert!(e.probe_ok && !e.up && !e.transition, "{e:?}");
        let e = next_event(&mut rx, ok_addr).await;
        assert!(e.up && e.transition && e.detail == "HTTP 200", "{e:?}");
        let e = next_event(&mut rx, bad_addr).await;
        assert!(!e.probe_ok && !e.up && !e.transition, "{e:?}");
        assert_eq!(e.detail, "HTTP 503, expected 200");
        drop(mon);
    }
}
