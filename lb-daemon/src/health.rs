//! Backend health checks: config, a sans-IO state machine, probes, and a runner.
//!
//! - [`RawHealth`] is the TOML table (`health = { kind = "http", path = "/healthz", .. }`);
//!   [`RawHealth::validate`] turns it into a [`HealthConfig`], with errors that name the key,
//!   the value and what is allowed, in the shape of [`ConfigError`].
//! - [`Tracker`] turns probe results into up/down [`Transition`]s with rise/fall thresholds
//!   (consecutive results, as HAProxy and keepalived count them). It does no I/O and reads no
//!   clock, so it is tested with plain calls.
//! - [`probe`] runs one check: a TCP connect, or an HTTP/1.1 `GET` whose status line is compared
//!   with the expected status. The whole probe is bounded by the timeout, every read is bounded
//!   in size, and nothing a backend sends can make it panic.
//! - [`HealthMonitor`] runs one tokio task per (service, backend) target and reports each probe
//!   and each transition as a [`HealthEvent`] on an mpsc channel. [`HealthMonitor::set_targets`]
//!   adds, removes and reconfigures targets on reload; unchanged targets keep running, and their
//!   up/down state survives.
//!
//! # Initial state
//! A new target starts **Up** by default ([`DEFAULT_INITIAL_STATE`]): a freshly started (or
//! reloaded) daemon keeps forwarding to its backends instead of black-holing every service until
//! `rise` checks have passed. A dead backend is taken out after `fall` failed checks, i.e. at
//! most `fall × interval + timeout` after start. This is what HAProxy (servers start up, with
//! `fall` failures needed to go down) and keepalived (real servers start up unless `alpha` is
//! set) do. [`HealthMonitor::with_initial_state`] chooses Down instead, for operators who prefer
//! no traffic until a backend has proven itself.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use serde::Deserialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::config::ConfigError;

/// Default time between two probes of one target, in milliseconds.
pub const DEFAULT_INTERVAL_MS: u64 = 1000;
/// Longest default probe timeout, in milliseconds (capped at half the interval).
pub const DEFAULT_TIMEOUT_MS: u64 = 500;
/// Default number of consecutive passed probes that bring a Down target Up.
pub const DEFAULT_RISE: u32 = 2;
/// Default number of consecutive failed probes that take an Up target Down.
pub const DEFAULT_FALL: u32 = 3;
/// Default HTTP request path.
pub const DEFAULT_HTTP_PATH: &str = "/";
/// Default expected HTTP status.
pub const DEFAULT_EXPECT_STATUS: u16 = 200;
/// Allowed probe intervals, in milliseconds.
pub const INTERVAL_MS_RANGE: std::ops::RangeInclusive<u64> = 50..=3_600_000;
/// Shortest allowed probe timeout, in milliseconds (the longest is `interval_ms - 1`).
pub const MIN_TIMEOUT_MS: u64 = 10;
/// Allowed rise and fall thresholds.
pub const THRESHOLD_RANGE: std::ops::RangeInclusive<u32> = 1..=100;
/// Allowed expected HTTP statuses.
pub const STATUS_RANGE: std::ops::RangeInclusive<u16> = 100..=599;
/// Longest HTTP request path, in bytes.
pub const MAX_PATH_LEN: usize = 1024;
/// Most bytes read while looking for the HTTP status line: a status line is short, and a
/// backend that sends more without a line break is not speaking HTTP.
pub const MAX_STATUS_LINE: usize = 1024;
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

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// Connect over TCP within the timeout.
    Tcp,
    /// Connect, send `GET path HTTP/1.1`, and read a status line equal to `expect_status`
    /// within the timeout.
    Http {
        /// Request path: starts with '/', visible ASCII only.
        path: String,
        /// Status that counts as healthy.
        expect_status: u16,
    },
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckKind::Tcp => f.write_str("tcp"),
            CheckKind::Http {
                path,
                expect_status,
            } => write!(f, "http GET {path} expecting {expect_status}"),
        }
    }
}

/// A validated health check config.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthConfig {
    /// Kind of probe.
    pub kind: CheckKind,
    /// Time between probes (each probe starts `interval ± 10 %` after the previous one).
    pub interval: Duration,
    /// Limit on a whole probe: connect, request and status line; always below `interval`.
    pub timeout: Duration,
    /// Consecutive passed probes that bring a Down target Up.
    pub rise: u32,
    /// Consecutive failed probes that take an Up target Down.
    pub fall: u32,
}

impl Default for HealthConfig {
    /// A TCP check every second, 500 ms timeout, rise 2, fall 3.
    fn default() -> Self {
        HealthConfig {
            kind: CheckKind::Tcp,
            interval: Duration::from_millis(DEFAULT_INTERVAL_MS),
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
        }
    }
}

/// The `health` table of a service as written in TOML, before validation. Embed it in the
/// service's raw struct (`health: Option<RawHealth>`) and call [`RawHealth::validate`]. All keys
/// are optional: `health = {}` is a TCP check with the defaults. Unknown keys are errors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// `tcp` (default) or `http`.
    pub kind: Option<String>,
    /// HTTP request path (http only), default `/`.
    pub path: Option<String>,
    /// Expected HTTP status (http only), default 200.
    pub expect_status: Option<i64>,
    /// Milliseconds between probes, default 1000.
    pub interval_ms: Option<i64>,
    /// Probe timeout in milliseconds, default `min(500, interval_ms / 2)`.
    pub timeout_ms: Option<i64>,
    /// Consecutive passes to come up, default 2.
    pub rise: Option<i64>,
    /// Consecutive failures to go down, default 3.
    pub fall: Option<i64>,
}

impl RawHealth {
    /// Validates the table. `key` is its key path, e.g. `service[0].health`; errors name the
    /// field under it, e.g. `service[0].health.interval_ms: 10 is out of range (allowed: 50 to
    /// 3600000 ms)`.
    pub fn validate(&self, key: &str) -> Result<HealthConfig, ConfigError> {
        let field_err = |field: &str, message: String| ConfigError {
            path: format!("{key}.{field}"),
            message,
        };
        let is_http = match self.kind.as_deref().unwrap_or("tcp") {
            "tcp" => false,
            "http" => true,
            other => {
                return Err(field_err(
                    "kind",
                    format!("{other:?} is not a health check kind (allowed: tcp, http)"),
                ));
            }
        };
        let interval_ms = match self.interval_ms {
            None => DEFAULT_INTERVAL_MS,
            Some(n) => in_range(n, INTERVAL_MS_RANGE).ok_or_else(|| {
                field_err(
                    "interval_ms",
                    format!(
                        "{n} is out of range (allowed: {} to {} ms)",
                        INTERVAL_MS_RANGE.start(),
                        INTERVAL_MS_RANGE.end()
                    ),
                )
            })?,
        };
        let max_timeout = interval_ms - 1;
        let timeout_ms = match self.timeout_ms {
            // Half the interval leaves room for the jitter and keeps a slow probe from running
            // into the next one.
            None => DEFAULT_TIMEOUT_MS.min(interval_ms / 2),
            Some(n) => in_range(n, MIN_TIMEOUT_MS..=max_timeout).ok_or_else(|| {
                field_err(
                    "timeout_ms",
                    format!(
                        "{n} is out of range (allowed: {MIN_TIMEOUT_MS} to {max_timeout} ms: \
                         less than interval_ms = {interval_ms})"
                    ),
                )
            })?,
        };
        let threshold = |field: &str, value: Option<i64>, default: u32| match value {
            None => Ok(default),
            Some(n) => in_range(n, THRESHOLD_RANGE).ok_or_else(|| {
                field_err(
                    field,
                    format!(
                        "{n} is out of range (allowed: {} to {} consecutive probes)",
                        THRESHOLD_RANGE.start(),
                        THRESHOLD_RANGE.end()
                    ),
                )
            }),
        };
        let rise = threshold("rise", self.rise, DEFAULT_RISE)?;
        let fall = threshold("fall", self.fall, DEFAULT_FALL)?;
        let kind = if is_http {
            let path = self.path.as_deref().unwrap_or(DEFAULT_HTTP_PATH);
            // Only visible ASCII: a space or a line break would let the path rewrite the request.
            if !path.starts_with('/')
                || path.len() > MAX_PATH_LEN
                || !path.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(field_err(
                    "path",
                    format!(
                        "{path:?} is not a request path (starts with '/', at most \
                         {MAX_PATH_LEN} visible ASCII characters, no spaces)"
                    ),
                ));
            }
            let expect_status = match self.expect_status {
                None => DEFAULT_EXPECT_STATUS,
                Some(n) => in_range(n, STATUS_RANGE).ok_or_else(|| {
                    field_err(
                        "expect_status",
                        format!(
                            "{n} is out of range (allowed: HTTP statuses {} to {})",
                            STATUS_RANGE.start(),
                            STATUS_RANGE.end()
                        ),
                    )
                })?,
            };
            CheckKind::Http {
                path: path.to_owned(),
                expect_status,
            }
        } else {
            for (field, given) in [
                ("path", self.path.is_some()),
                ("expect_status", self.expect_status.is_some()),
            ] {
                if given {
                    return Err(field_err(
                        field,
                        "only applies to kind = \"http\" (this check is kind = \"tcp\")".into(),
                    ));
                }
            }
            CheckKind::Tcp
        };
        Ok(HealthConfig {
            kind,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
            rise,
            fall,
        })
    }
}

/// `n` converted to `T` when it lies in `range`.
fn in_range<T>(n: i64, range: std::ops::RangeInclusive<T>) -> Option<T>
where
    T: TryFrom<i64> + PartialOrd,
{
    T::try_from(n).ok().filter(|v| range.contains(v))
}

/// Whether a backend passes its health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Passing: takes new flows.
    Up,
    /// Failing: out of rotation.
    Down,
}

impl HealthState {
    /// Whether this is [`HealthState::Up`].
    pub fn is_up(self) -> bool {
        self == HealthState::Up
    }

    /// `up` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Up => "up",
            HealthState::Down => "down",
        }
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of [`HealthState`] reported by [`Tracker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    /// Down → Up: `rise` consecutive probes passed.
    WentUp,
    /// Up → Down: `fall` consecutive probes failed.
    WentDown,
}

impl Transition {
    /// The state after the transition.
    pub fn state(self) -> HealthState {
        match self {
            Transition::WentUp => HealthState::Up,
            Transition::WentDown => HealthState::Down,
        }
    }
}

/// The up/down state machine of one target: counts consecutive results against the rise and
/// fall thresholds. Sans-IO: the caller feeds it results, it keeps no time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    state: HealthState,
    ok_streak: u32,
    fail_streak: u32,
}

impl Tracker {
    /// A tracker in state `initial` with no results yet. Thresholds below 1 count as 1.
    pub fn new(rise: u32, fall: u32, initial: HealthState) -> Tracker {
        Tracker {
            rise: rise.max(1),
            fall: fall.max(1),
            state: initial,
            ok_streak: 0,
            fail_streak: 0,
        }
    }

    /// Records one probe result; returns the transition it caused, if any. An Up target goes
    /// Down on the `fall`-th consecutive failure, a Down target comes Up on the `rise`-th
    /// consecutive pass; any opposite result restarts the count.
    pub fn record(&mut self, ok: bool) -> Option<Transition> {
        if ok {
            self.fail_streak = 0;
            self.ok_streak = self.ok_streak.saturating_add(1);
            if self.state == HealthState::Down && self.ok_streak >= self.rise {
                self.state = HealthState::Up;
                return Some(Transition::WentUp);
            }
        } else {
            self.ok_streak = 0;
            self.fail_streak = self.fail_streak.saturating_add(1);
            if self.state == HealthState::Up && self.fail_streak >= self.fall {
                self.state = HealthState::Down;
                return Some(Transition::WentDown);
            }
        }
        None
    }

    /// The current state.
    pub fn state(&self) -> HealthState {
        self.state
    }

    /// Consecutive passed probes up to now (0 after a failure).
    pub fn consecutive_ok(&self) -> u32 {
        self.ok_streak
    }

    /// Consecutive failed probes up to now (0 after a pass).
    pub fn consecutive_fail(&self) -> u32 {
        self.fail_streak
    }

    /// The rise threshold.
    pub fn rise(&self) -> u32 {
        self.rise
    }

    /// The fall threshold.
    pub fn fall(&self) -> u32 {
        self.fall
    }

    /// Changes the thresholds (a reload), keeping the state and the streaks: a streak that
    /// already meets a lowered threshold makes the transition at the next result.
    pub fn set_thresholds(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// Forgets the streaks but keeps the state (the check itself changed, so earlier results
    /// say nothing about the new one).
    pub fn reset_streaks(&mut self) {
        self.ok_streak = 0;
        self.fail_streak = 0;
    }
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// Whether the check passed.
    pub ok: bool,
    /// From the start of the connect to the result (the timeout when it timed out).
    pub latency: Duration,
    /// What happened, for logs and status: e.g. `connected`, `HTTP 503, expected 200`,
    /// `connect failed: Connection refused (os error 111)`, `no answer within 500 ms
    /// (waiting for the status line)`.
    pub detail: String,
}

/// Where a probe was when it ran out of time.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Connecting,
    Sending,
    Reading,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Connecting => "connecting",
            Stage::Sending => "sending the request",
            Stage::Reading => "waiting for the status line",
        }
    }
}

/// Runs one check of `target` as `cfg` says, bounded by `cfg.timeout`. Never panics and never
/// fails: every problem is a failed [`ProbeResult`] with its reason in `detail`.
pub async fn probe(target: SocketAddr, cfg: &HealthConfig) -> ProbeResult {
    let start = Instant::now();
    let mut stage = Stage::Connecting;
    let outcome = tokio::time::timeout(cfg.timeout, check(target, &cfg.kind, &mut stage)).await;
    let latency = start.elapsed();
    let (ok, detail) = match outcome {
        Ok(Ok(detail)) => (true, detail),
        Ok(Err(detail)) => (false, detail),
        Err(_) => (
            false,
            format!(
                "no answer within {} ms ({})",
                cfg.timeout.as_millis(),
                stage.as_str()
            ),
        ),
    };
    ProbeResult {
        ok,
        latency,
        detail,
    }
}

/// The check itself, unbounded in time (the caller bounds it). `Ok` and `Err` both carry the
/// detail.
async fn check(target: SocketAddr, kind: &CheckKind, stage: &mut Stage) -> Result<String, String> {
    let mut stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect failed: {e}"))?;
    let (path, expect_status) = match kind {
        CheckKind::Tcp => return Ok("connected".into()),
        CheckKind::Http {
            path,
            expect_status,
        } => (path, *expect_status),
    };
    *stage = Stage::Sending;
    // SocketAddr's Display brackets IPv6 addresses, as the Host header wants them.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: lbd-health-check/{}\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the request failed: {e}"))?;
    *stage = Stage::Reading;
    let line = read_status_line(&mut stream).await?;
    let status = parse_status_line(&line)?;
    if status == expect_status {
        Ok(format!("HTTP {status}"))
    } else {
        Err(format!("HTTP {status}, expected {expect_status}"))
    }
}

/// Reads up to the first line break, at most [`MAX_STATUS_LINE`] bytes. Returns the line
/// without its line break (or all that came before the peer closed).
async fn read_status_line(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; MAX_STATUS_LINE];
    let mut len = 0;
    loop {
        if let Some(end) = buf[..len].iter().position(|&b| b == b'\n') {
            buf.truncate(end);
            return Ok(buf);
        }
        if len == buf.len() {
            return Err(format!(
                "not HTTP: no line break in the first {MAX_STATUS_LINE} bytes of the answer"
            ));
        }
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(|e| format!("reading the answer failed: {e}"))?;
        if n == 0 {
            if len == 0 {
                return Err("connection closed without an answer".into());
            }
            buf.truncate(len);
            return Ok(buf);
        }
        len += n;
    }
}

/// Parses `HTTP/1.1 200 OK` (with or without the reason phrase and the trailing CR) into its
/// status code. Anything else is an error quoting the start of the line.
pub fn parse_status_line(line: &[u8]) -> Result<u16, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let bad = || {
        let shown = &line[..line.len().min(64)];
        format!(
            "not an HTTP status line: {:?}",
            String::from_utf8_lossy(shown)
        )
    };
    // `HTTP/` DIGIT `.` DIGIT SP 3DIGIT [SP reason] (RFC 9112 §4).
    let rest = line.strip_prefix(b"HTTP/").ok_or_else(bad)?;
    let (version, rest) = rest.split_at_checked(3).ok_or_else(bad)?;
    let rest = rest.strip_prefix(b" ").ok_or_else(bad)?;
    let (code, rest) = rest.split_at_checked(3).ok_or_else(bad)?;
    let version_ok =
        version[0].is_ascii_digit() && version[1] == b'.' && version[2].is_ascii_digit();
    if !version_ok || !code.iter().all(u8::is_ascii_digit) || !(rest.is_empty() || rest[0] == b' ')
    {
        return Err(bad());
    }
    Ok(code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0')))
}

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
        net::{Ipv4Addr, SocketAddr},
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

    // ---- config ----

    fn parse(table: &str) -> Result<HealthConfig, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Svc {
            health: RawHealth,
        }
        let svc: Svc = toml::from_str(&format!("health = {table}")).map_err(|e| e.to_string())?;
        svc.health
            .validate("service[0].health")
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        assert_eq!(parse("{}").unwrap(), HealthConfig::default());
        let http = parse(r#"{ kind = "http" }"#).unwrap();
        assert_eq!(
            http.kind,
            CheckKind::Http {
                path: "/".into(),
                expect_status: 200
            }
        );
        // The default timeout stays below a short interval.
        let short = parse("{ interval_ms = 100 }").unwrap();
        assert_eq!(short.timeout, Duration::from_millis(50));
        let full = parse(
            r#"{ kind = "http", path = "/healthz?x=1", expect_status = 204, interval_ms = 2000,
                 timeout_ms = 1999, rise = 1, fall = 100 }"#,
        )
        .unwrap();
        assert_eq!(
            full,
            HealthConfig {
                kind: CheckKind::Http {
                    path: "/healthz?x=1".into(),
                    expect_status: 204
                },
                interval: Duration::from_millis(2000),
                timeout: Duration::from_millis(1999),
                rise: 1,
                fall: 100,
            }
        );
    }

    #[test]
    fn config_errors_name_field_value_and_range() {
        let cases = [
            (
                r#"{ kind = "udp" }"#,
                r#"service[0].health.kind: "udp" is not a health check kind (allowed: tcp, http)"#,
            ),
            (
                "{ interval_ms = 49 }",
                "service[0].health.interval_ms: 49 is out of range (allowed: 50 to 3600000 ms)",
            ),
            (
                "{ interval_ms = 3600001 }",
                "service[0].health.interval_ms: 3600001 is out of range",
            ),
            (
                "{ interval_ms = -1 }",
                "service[0].health.interval_ms: -1 is out of range",
            ),
            (
                "{ interval_ms = 1000, timeout_ms = 1000 }",
                "service[0].health.timeout_ms: 1000 is out of range (allowed: 10 to 999 ms: less than interval_ms = 1000)",
            ),
            (
                "{ timeout_ms = 5 }",
                "service[0].health.timeout_ms: 5 is out of range (allowed: 10 to 999 ms",
            ),
            (
                "{ rise = 0 }",
                "service[0].health.rise: 0 is out of range (allowed: 1 to 100 consecutive probes)",
            ),
            (
                "{ fall = 101 }",
                "service[0].health.fall: 101 is out of range",
            ),
            (
                r#"{ kind = "http", path = "healthz" }"#,
                r#"service[0].health.path: "healthz" is not a request path (starts with '/'"#,
            ),
            (
                r#"{ kind = "http", path = "/a b" }"#,
                r#"service[0].health.path: "/a b" is not a request path"#,
            ),
            (
                r#"{ kind = "http", path = "/a\r\nX: y" }"#,
                r#"service[0].health.path: "/a\r\nX: y" is not a request path"#,
            ),
            (
                r#"{ kind = "http", expect_status = 99 }"#,
                "service[0].health.expect_status: 99 is out of range (allowed: HTTP statuses 100 to 599)",
            ),
            (
                r#"{ kind = "http", expect_status = 600 }"#,
                "service[0].health.expect_status: 600 is out of range",
            ),
            (
                r#"{ path = "/healthz" }"#,
                r#"service[0].health.path: only applies to kind = "http" (this check is kind = "tcp")"#,
            ),
            (
                "{ expect_status = 200 }",
                r#"service[0].health.expect_status: only applies to kind = "http""#,
            ),
            ("{ intervall_ms = 100 }", "unknown field `intervall_ms`"),
        ];
        for (table, want) in cases {
            let got = parse(table).expect_err(table);
            assert!(got.contains(want), "{table}\nwant: {want}\ngot:  {got}");
        }
        let long = format!(
            r#"{{ kind = "http", path = "/{}" }}"#,
            "a".repeat(MAX_PATH_LEN)
        );
        assert!(parse(&long).unwrap_err().contains("at most 1024"));
    }

    // ---- tracker ----

    #[test]
    fn exactly_fall_failures_take_it_down() {
        for fall in [1, 2, 3, 7] {
            let mut t = Tracker::new(2, fall, HealthState::Up);
            for i in 1..fall {
                assert_eq!(t.record(false), None, "failure {i} of fall {fall}");
                assert_eq!(t.state(), HealthState::Up);
            }
            assert_eq!(t.record(false), Some(Transition::WentDown), "fall {fall}");
            assert_eq!(t.state(), HealthState::Down);
            // More failures: no second transition.
            assert_eq!(t.record(false), None);
            assert_eq!(t.consecutive_fail(), fall + 1);
        }
    }

    #[test]
    fn exactly_rise_passes_bring_it_up() {
        for rise in [1, 2, 5] {
            let mut t = Tracker::new(rise, 3, HealthState::Down);
            for i in 1..rise {
                assert_eq!(t.record(true), None, "pass {i} of rise {rise}");
                assert_eq!(t.state(), HealthState::Down);
            }
            assert_eq!(t.record(true), Some(Transition::WentUp), "rise {rise}");
            assert_eq!(t.state(), HealthState::Up);
            assert_eq!(t.record(true), None);
        }
    }

    #[test]
    fn flapping_below_thresholds_never_transitions() {
        let mut up = Tracker::new(3, 3, HealthState::Up);
        let mut down = Tracker::new(3, 3, HealthState::Down);
        // Two failures, one pass, repeated: never three in a row of either.
        let pattern = [false, false, true, true, false, false, true];
        for _ in 0..50 {
            for ok in pattern {
                assert_eq!(up.record(ok), None);
                assert_eq!(down.record(ok), None);
            }
        }
        assert_eq!(up.state(), HealthState::Up);
        assert_eq!(down.state(), HealthState::Down);
    }

    #[test]
    fn a_full_cycle_and_threshold_changes() {
        let mut t = Tracker::new(2, 3, HealthState::Up);
        let results: Vec<Option<Transition>> = [
            true, false, false, true, false, false, false, true, false, true, true,
        ]
        .into_iter()
        .map(|ok| t.record(ok))
        .collect();
        use Transition::*;
        assert_eq!(
            results,
            [
                None,
                None,
                None,
                None,
                None,
                None,
                Some(WentDown),
                None,
                None,
                None,
                Some(WentUp)
            ]
        );
        // Lowering fall under the current streak: the next failure takes it down.
        t.record(false);
        t.record(false);
        t.set_thresholds(2, 1);
        assert_eq!(t.state(), HealthState::Up);
        assert_eq!(t.record(false), Some(WentDown));
        // Zero thresholds act as one.
        let mut z = Tracker::new(0, 0, HealthState::Up);
        assert_eq!((z.rise(), z.fall()), (1, 1));
        assert_eq!(z.record(false), Some(WentDown));
        assert_eq!(z.record(true), Some(WentUp));
    }

    // ---- status line ----

    #[test]
    fn status_lines() {
        let good: [(&[u8], u16); 5] = [
            (b"HTTP/1.1 200 OK\r", 200),
            (b"HTTP/1.0 503 Service Unavailable", 503),
            (b"HTTP/1.1 204", 204),
            (b"HTTP/1.1 404 \r", 404),
            (b"HTTP/2.0 999 odd but well-formed", 999),
        ];
        for (line, code) in good {
            assert_eq!(parse_status_line(line), Ok(code), "{line:?}");
        }
        let bad: [&[u8]; 11] = [
            b"",
            b"\r",
            b"HTTP/1.1",
            b"HTTP/1.1 20",
            b"HTTP/1.1 2000",
            b"HTTP/1.1 20x OK",
            b"HTTP/1.1  200 OK",
            b"HTTP/x.1 200 OK",
            b"http/1.1 200 OK",
            b"SSH-2.0-OpenSSH_9.2",
            &[0xff, 0xfe, 0x00, 0x80, b' ', b'2'],
        ];
        for line in bad {
            let e = parse_status_line(line).expect_err("bad line accepted");
            assert!(e.starts_with("not an HTTP status line: "), "{e}");
        }
    }

    // ---- probes on loopback ----

    const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

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
