//! Prometheus metrics, served over HTTP at `/metrics` on the metrics address, beside the
//! status page (`/`) and the status as JSON (`/status.json`).
//!
//! The daemon's counters are absolute totals read from per-CPU BPF maps, not events lbd sees
//! one by one, so nothing here increments anything: on each scrape the server asks the daemon
//! for its [`Status`] (the one `lbctl status` gets) and builds the metric families from it
//! ([`families`], [`render`]).
//! A scrape therefore shows exactly what `lbctl status` would show at that moment, and a
//! backend or service that leaves the config leaves the metrics with it.
//!
//! [`serve`] (or [`bind`] then [`serve_listener`]) runs the HTTP server: `GET` or `HEAD` of
//! `/metrics` answers the text exposition format, `/status.json` the [`Status`] as JSON, `/` the
//! read-only HTML page ([`STATUS_PAGE`]) that polls it; any other path 404, any other method 405.
//! Connections are capped and slow clients time out, so a scraper cannot tie up the daemon.
//!
//! Metric names follow Prometheus conventions: the `lbd_` prefix, `_total` for counters, base
//! units (bytes, seconds), and state sets as one series per possible state with 1 for the
//! current one (`lbd_backend_state`, `lbd_vrrp_state`, `lbd_datapath_mode`), so that a query
//! never has to guess which states exist.

use std::{convert::Infallible, io, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{
    Encoder as _, TextEncoder,
    proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType},
};
use tokio::{net::TcpListener, sync::Semaphore, time::Duration};
use tokio_util::sync::CancellationToken;

use crate::{datapath::DatapathMode, model::BackendState, status::Status};

/// The path metrics are served on.
pub const METRICS_PATH: &str = "/metrics";
/// The path the status is served on as JSON (the status page polls it).
pub const STATUS_JSON_PATH: &str = "/status.json";
/// The status page (at `/`): one self-contained HTML file, embedded so that no asset is fetched
/// from anywhere else.
pub const STATUS_PAGE: &str = include_str!("page/status.html");
/// Connections served at once; more are closed at accept. Scrapers need one or two.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long open connections may finish their request after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Errors of the metrics server.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The metrics address could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}{hint}")]
    Bind {
        /// Address from `[daemon] metrics_addr`.
        addr: SocketAddr,
        /// What to do about it (empty when there is nothing specific to say).
        hint: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The metric families could not be encoded (a bug: the families are built here).
    #[error("encoding the metrics failed: {0}")]
    Encode(#[source] prometheus::Error),
}

fn bind_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::AddrInUse => {
            " (another process listens there; set [daemon] metrics_addr to a free address)"
        }
        io::ErrorKind::AddrNotAvailable => {
            " (no interface of this host has that address; set [daemon] metrics_addr)"
        }
        io::ErrorKind::PermissionDenied => {
            " (ports below 1024 need CAP_NET_BIND_SERVICE; use a higher port)"
        }
        _ => "",
    }
}

/// A metric family under construction.
struct Family(MetricFamily);

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut mf = MetricFamily::default();
        mf.set_name(name.into());
        mf.set_help(help.into());
        mf.set_field_type(kind);
        Family(mf)
    }

    fn counter(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::COUNTER)
    }

    fn gauge(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::GAUGE)
    }

    fn add(&mut self, labels: &[(&str, &str)], value: f64) {
        let pairs = labels
            .iter()
            .map(|(k, v)| {
                let mut p = LabelPair::default();
                p.set_name((*k).into());
                p.set_value((*v).into());
                p
            })
            .collect();
        let mut m = Metric::from_label(pairs);
        if self.0.get_field_type() == MetricType::COUNTER {
            let mut c = Counter::default();
            c.set_value(value);
            m.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
        self.0.mut_metric().push(m);
    }
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// Builds the metric families of a snapshot. Families without a series are left out (the text
/// format cannot carry an empty family).
pub fn families(s: &Status) -> Vec<MetricFamily> {
    let mut build_info = Family::gauge(
        "lbd_build_info",
        "Always 1; the label carries the lbd version.",
    );
    build_info.add(&[("version", &s.version)], 1.0);

    let mut mode = Family::gauge(
        "lbd_datapath_mode",
        "Data path in use: 1 for the current mode, 0 for the others.",
    );
    for m in DatapathMode::ALL {
        mode.add(&[("mode", m.as_str())], flag(m == s.datapath));
    }
    let mut setting = Family::gauge(
        "lbd_datapath_configured",
        "The configured daemon.datapath: 1 for it, 0 for the others (an XDP setting with \
         lbd_datapath_mode{mode=\"userspace\"} is a fallback).",
    );
    if !s.datapath_setting.is_empty() {
        for name in ["auto", "xdp", "xdp-generic", "userspace"] {
            setting.add(&[("setting", name)], flag(name == s.datapath_setting));
        }
    }

    let mut reasons = Family::counter(
        "lbd_datapath_packets_total",
        "Packets the data path passed to the kernel (pass_*) or dropped (drop_*) instead of \
         forwarding, by reason.",
    );
    for r in &s.reasons {
        reasons.add(&[("reason", &r.reason)], r.packets as f64);
    }

    let mut ct_entries = Family::gauge("lbd_conntrack_entries", "Flows in the connection table.");
    ct_entries.add(&[], s.conntrack_entries as f64);
    let mut ct_capacity = Family::gauge(
        "lbd_conntrack_capacity",
        "Capacity of the connection table, in flows (daemon.conntrack_max).",
    );
    ct_capacity.add(&[], f64::from(s.conntrack_max));
    let mut flood_active = Family::gauge(
        "lbd_flood_guard_active",
        "Whether the new-flow flood guard is holding new flows back now (1) or not (0).",
    );
    flood_active.add(&[], flag(s.flood_guard.active));
    let mut flood_limit = Family::gauge(
        "lbd_flood_guard_new_flows_per_second",
        "The flood guard's rate (daemon.flood_new_flows_per_sec); 0: off.",
    );
    flood_limit.add(&[], f64::from(s.flood_guard.new_flows_per_sec));
    let mut announced = Family::gauge(
        "lbd_vip_announced",
        "Whether the VIP's route is announced to the routers (1) or withdrawn (0), with [announce].",
    );
    for v in s.announce.iter().flat_map(|a| &a.vips) {
        announced.add(&[("vip", v.vip.as_str())], flag(v.announced));
    }

    let mut svc_packets = Family::counter(
        "lbd_service_packets_total",
        "Packets forwarded for the service.",
    );
    let mut svc_bytes = Family::counter(
        "lbd_service_bytes_total",
        "Bytes forwarded for the service (whole frames).",
    );
    let mut be_packets = Family::counter(
        "lbd_backend_packets_total",
        "Packets forwarded to the backend.",
    );
    let mut be_bytes = Family::counter(
        "lbd_backend_bytes_total",
        "Bytes forwarded to the backend (whole frames).",
    );
    let mut svc_new = Family::counter(
        "lbd_service_new_flows_total",
        "Flows started for the service (connection-table inserts in XDP, connections or UDP \
         sessions in the proxy).",
    );
    let mut be_new = Family::counter(
        "lbd_backend_new_flows_total",
        "Flows started to the backend (connection-table inserts in XDP, connections or UDP \
         sessions in the proxy).",
    );
    let mut be_active = Family::gauge(
        "lbd_backend_active_flows",
        "Open flows pinned to the backend in the connection table.",
    );
    let mut be_closing = Family::gauge(
        "lbd_backend_closing_flows",
        "Flows pinned to the backend that saw a FIN or RST and are ending.",
    );
    let mut be_state = Family::gauge(
        "lbd_backend_state",
        "Backend state: 1 for the current state, 0 for the others (active, draining, down, \
         maintenance, removed, unresolved).",
    );
    let mut be_up = Family::gauge(
        "lbd_backend_up",
        "Whether the backend passes its health checks (1) or not (0); absent without a \
         health check.",
    );
    let mut hc_duration = Family::gauge(
        "lbd_health_check_duration_seconds",
        "Duration of the backend's last health check (the timeout when it timed out).",
    );
    let mut hc_timeout = Family::gauge(
        "lbd_health_check_timeout_seconds",
        "The backend's health check timeout.",
    );
    let mut svc_rotation = Family::gauge(
        "lbd_service_backends_in_rotation",
        "Backends of the service that take new flows (state active).",
    );
    for svc in &s.services {
        let proto = svc.proto.to_string();
        let labels = [
            ("service", svc.name.as_str()),
            ("vip", svc.vip.as_str()),
            ("proto", proto.as_str()),
        ];
        svc_packets.add(&labels, svc.packets as f64);
        svc_bytes.add(&labels, svc.bytes as f64);
        svc_new.add(&labels, svc.new_flows as f64);
        let in_rotation = svc
            .backends
            .iter()
            .filter(|b| b.state == BackendState::Active)
            .count();
        svc_rotation.add(&labels, in_rotation as f64);
        for b in &svc.backends {
            let labels = [("service", svc.name.as_str()), ("backend", b.addr.as_str())];
            be_packets.add(&labels, b.packets as f64);
            be_bytes.add(&labels, b.bytes as f64);
            be_new.add(&labels, b.new_flows as f64);
            be_active.add(&labels, b.flows as f64);
            be_closing.add(&labels, b.closing_flows as f64);
            for st in BackendState::ALL {
                be_state.add(
                    &[labels[0], labels[1], ("state", st.as_str())],
                    flag(st == b.state),
                );
            }
            if let Some(h) = &b.health {
                be_up.add(&labels, flag(h.up));
                hc_timeout.add(&labels, h.timeout_seconds);
                if let Some(seconds) = h.last_seconds {
                    hc_duration.add(&labels, seconds);
                }
            }
        }
    }

    let mut vrrp_state = Family::gauge(
        "lbd_vrrp_state",
        "VRRP state: 1 for the current state, 0 for the others; absent without [vrrp].",
    );
    let mut vrrp_transitions = Family::counter(
        "lbd_vrrp_transitions_total",
        "VRRP state changes since lbd started.",
    );
    let mut vrrp_resigned = Family::gauge(
        "lbd_vrrp_resigned",
        "1 while this node is out of the VRRP election by `lbctl vrrp resign`.",
    );
    // One virtual router per address family (RFC 5798), told apart by `family`.
    for (family, v) in [("ipv4", &s.vrrp), ("ipv6", &s.vrrp6)] {
        let Some(v) = v else { continue };
        for st in vrrp::State::ALL {
            let name = st.as_str().to_ascii_lowercase();
            vrrp_state.add(&[("family", family), ("state", &name)], flag(st == v.state));
        }
        vrrp_transitions.add(&[("family", family)], v.transitions as f64);
        vrrp_resigned.add(&[("family", family)], flag(v.resigned));
    }

    let mut reloads = Family::counter(
        "lbd_config_reloads_total",
        "Config reloads (SIGHUP) applied since lbd started.",
    );
    reloads.add(&[], s.config_reloads as f64);
    let mut reload_failures = Family::counter(
        "lbd_config_reload_failures_total",
        "Config reloads rejected since lbd started (the running config was kept).",
    );
    reload_failures.add(&[], s.config_reload_failures as f64);
    let mut loaded = Family::gauge(
        "lbd_config_last_load_timestamp_seconds",
        "Unix time at which the running config was loaded.",
    );
    if s.config_loaded_unix != 0 {
        loaded.add(&[], s.config_loaded_unix as f64);
    }

    [
        build_info,
        mode,
        setting,
        reasons,
        ct_entries,
        ct_capacity,
        flood_active,
        flood_limit,
        announced,
        svc_packets,
        svc_bytes,
        svc_new,
        svc_rotation,
        be_packets,
        be_bytes,
        be_new,
        be_active,
        be_closing,
        be_state,
        be_up,
        hc_duration,
        hc_timeout,
        vrrp_state,
        vrrp_transitions,
        vrrp_resigned,
        reloads,
        reload_failures,
        loaded,
    ]
    .into_iter()
    .map(|f| f.0)
    .filter(|mf| !mf.get_metric().is_empty())
    .collect()
}

/// The text exposition of a snapshot (what `/metrics` answers).
pub fn render(snapshot: &Status) -> Result<String, MetricsError> {
    let mut out = Vec::with_capacity(4096);
    TextEncoder::new()
        .encode(&families(snapshot), &mut out)
        .map_err(MetricsError::Encode)?;
    // The encoder writes only the UTF-8 strings it was given.
    String::from_utf8(out).map_err(|e| MetricsError::Encode(prometheus::Error::Msg(e.to_string())))
}

/// Binds the metrics address. The error names the address, the cause and what to do.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind {
            addr,
            hint: bind_hint(&source),
            source,
        })
}

/// Binds `addr` and serves `/metrics` until `shutdown` is cancelled. `snapshot` is called once
/// per scrape; its error becomes a 500 answer with the message (e.g. the BPF maps could not be
/// read). Returns only the bind error; serving itself does not fail.
///
/// ```no_run
/// # async fn f(shutdown: tokio_util::sync::CancellationToken) -> Result<(), Box<dyn std::error::Error>> {
/// use lb_daemon::{metrics::serve, status::Status};
/// let addr = "127.0.0.1:9300".parse()?;
/// // The daemon's closure asks its core for the status; an Err becomes a 500.
/// serve(addr, || async { Err::<Status, _>("no core here".to_string()) }, shutdown).await?;
/// # Ok(())
/// # }
/// ```
pub async fn serve<F, Fut>(
    addr: SocketAddr,
    snapshot: F,
    shutdown: CancellationToken,
) -> Result<(), MetricsError>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Status, String>> + Send + 'static,
{
    let listener = bind(addr).await?;
    serve_listener(listener, snapshot, shutdown).await;
    Ok(())
}

/// Serves `/metrics` on a bound listener until `shutdown` is cancelled (see [`serve`]). Open
/// connections get a short grace period to finish their request.
pub async fn serve_listener<F, Fut>(listener: TcpListener, snapshot: F, shutdown: CancellationToken)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Status, String>> + Send + 'static,
{
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics served at http://{addr}{METRICS_PATH}");
    }
    let snapshot = Arc::new(snapshot);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics: {MAX_CONNECTIONS} connections open; closing a new one");
            continue;
        };
        let snapshot = snapshot.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let snapshot = snapshot.clone();
                async move { Ok::<_, Infallible>(respond(&req, &*snapshot).await) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                        Ok(r) => r,
                        Err(_) => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
            }
        });
    }
    tracing::debug!("metrics server stopped");
}

fn text_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// What the server answers at a path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Page {
    /// The Prometheus text exposition.
    Metrics,
    /// The status as JSON (what `lbctl status --json` prints).
    StatusJson,
    /// The HTML status page, which polls [`Page::StatusJson`].
    Html,
}

/// The paths served, for the 404 answer.
const PATHS: &str = "/ (status page), /status.json, /metrics";

fn response(content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Every answer is a live reading: nothing to cache.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn respond<F, Fut>(req: &Request<Incoming>, snapshot: &F) -> Response<Full<Bytes>>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Status, String>>,
{
    let page = match req.uri().path() {
        METRICS_PATH => Page::Metrics,
        STATUS_JSON_PATH => Page::StatusJson,
        "/" | "/index.html" => Page::Html,
        _ => {
            return text_response(
                StatusCode::NOT_FOUND,
                format!("not found: lbd serves {PATHS}\n"),
            );
        }
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET (the status page is read-only)\n".into(),
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    if page == Page::Html {
        // The page itself holds no data: it is the same bytes every time.
        return response("text/html; charset=utf-8", STATUS_PAGE);
    }
    let rendered = match snapshot().await {
        Ok(snap) => match page {
            Page::StatusJson => serde_json::to_vec(&snap)
                .map(|body| response("application/json", body))
                .map_err(|e| e.to_string()),
            _ => render(&snap)
                .map(|body| response(prometheus::TEXT_FORMAT, body))
                .map_err(|e| e.to_string()),
        },
        Err(e) => Err(e),
    };
    rendered.unwrap_or_else(|e| {
        tracing::warn!(error = %e, path = req.uri().path(), "status read for an HTTP client failed");
        text_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the status: {e}\n"),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        net::SocketAddr,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{TcpListener, TcpStream},
    };
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{
        config::{Proto, Scheduler},
        engine::Source,
        status::{BackendStatus, HealthStatus, ReasonCount, ServiceStatus, VrrpStatus},
    };

    /// A parsed text exposition: HELP and TYPE by family, and the samples.
    #[derive(Debug, Default)]
    struct Exposition {
        help: BTreeMap<String, String>,
        types: BTreeMap<String, String>,
        samples: Vec<(String, BTreeMap<String, String>, f64)>,
    }

    impl Exposition {
        /// Parses the text format (the subset the encoder writes: no timestamps). Panics on
        /// anything else: a malformed exposition is a test failure.
        fn parse(text: &str) -> Exposition {
            let mut e = Exposition::default();
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("# HELP ") {
                    let (name, help) = rest.split_once(' ').expect("HELP without text");
                    assert!(
                        e.help.insert(name.into(), help.into()).is_none(),
                        "two HELP: {name}"
                    );
                } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                    let (name, ty) = rest.split_once(' ').expect("TYPE without type");
                    assert!(
                        e.types.insert(name.into(), ty.into()).is_none(),
                        "two TYPE: {name}"
                    );
                } else if line.starts_with('#') || line.is_empty() {
                    panic!("unexpected line {line:?}");
                } else {
                    e.samples.push(parse_sample(line));
                }
            }
            e
        }

        fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
            let want: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect();
            let found: Vec<f64> = self
                .samples
                .iter()
                .filter(|(n, l, _)| n == name && *l == want)
                .map(|(_, _, v)| *v)
                .collect();
            assert!(
                found.len() <= 1,
                "{name}{labels:?} appears {} times",
                found.len()
            );
            found.first().copied()
        }

        fn series(&self, name: &str) -> usize {
            self.samples.iter().filter(|(n, _, _)| n == name).count()
        }
    }

    /// `name{k="v",...} value`, with `\\`, `\"` and `\n` escapes in label values.
    fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
        let name_end = line.find(['{', ' ']).expect("sample without value");
        let name = line[..name_end].to_string();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name {name:?}"
        );
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(mut r) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = r.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (key, after) = r.split_once("=\"").expect("label without =\"");
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next().expect("unterminated label value") {
                        (i, '"') => break i,
                        (_, '\\') => match chars.next().expect("dangling escape").1 {
                            'n' => value.push('\n'),
                            c => value.push(c),
                        },
                        (_, c) => value.push(c),
                    }
                };
                labels.insert(key.to_string(), value);
                r = &after[end + 1..];
                r = r.strip_prefix(',').unwrap_or(r);
            }
        }
        let value = rest.trim_start().parse().expect("sample value");
        (name, labels, value)
    }

    fn backend(addr: &str, state: BackendState) -> BackendStatus {
        BackendStatus {
            addr: addr.into(),
            weight: 1,
            state,
            source: Source::Config,
            overrides: Vec::new(),
            mac: None,
            packets: 0,
            bytes: 0,
            new_flows: 0,
            rates: Default::default(),
            history_pps: Vec::new(),
            flows: 0,
            closing_flows: 0,
            health: None,
        }
    }

    fn empty() -> Status {
        Status {
            version: "0.1.0".into(),
            config_path: "/etc/lbd/lbd.toml".into(),
            state_file: "/var/lib/lbd/state.json".into(),
            interface: "eth0".into(),
            datapath: DatapathMode::XdpNative,
            datapath_reason: String::new(),
            datapath_setting: "auto".into(),
            uptime_s: 0,
            config_loaded_unix: 0,
            config_reloads: 0,
            config_reload_failures: 0,
            conntrack_entries: 0,
            conntrack_max: 262144,
            reasons: Vec::new(),
            flood_guard: Default::default(),
            services: Vec::new(),
            vrrp: None,
            vrrp6: None,
            announce: None,
        }
    }

    fn sample() -> Status {
        Status {
            announce: Some(crate::announce::AnnounceStatus {
                table: 100,
                drained: false,
                vips: vec![crate::announce::VipAnnounce {
                    vip: "198.18.0.100".into(),
                    announced: true,
                    reason: crate::announce::Reason::Serving,
                }],
            }),
            conntrack_entries: 17,
            config_reloads: 4,
            config_reload_failures: 1,
            config_loaded_unix: 1_700_000_000,
            reasons: vec![
                ReasonCount {
                    reason: "pass_arp".into(),
                    packets: 5,
                },
                ReasonCount {
                    reason: "drop_no_backend".into(),
                    packets: 2,
                },
            ],
            services: vec![ServiceStatus {
                name: "web".into(),
                vip: "198.18.0.100:80".into(),
                proto: Proto::Tcp,
                scheduler: Scheduler::Maglev,
                packets: 1000,
                bytes: 64000,
                new_flows: 30,
                rates: Default::default(),
                backends: vec![
                    BackendStatus {
                        packets: 600,
                        bytes: 38400,
                        new_flows: 18,
                        flows: 3,
                        closing_flows: 1,
                        health: Some(HealthStatus {
                            up: true,
                            last_seconds: Some(0.0015),
                            timeout_seconds: 0.5,
                            detail: Some("connected".into()),
                        }),
                        ..backend("198.18.0.21", BackendState::Active)
                    },
                    BackendStatus {
                        packets: 400,
                        bytes: 25600,
                        new_flows: 12,
                        health: Some(HealthStatus {
                            up: false,
                            last_seconds: Some(0.5),
                            timeout_seconds: 0.5,
                            detail: Some("no answer within 500 ms (connecting)".into()),
                        }),
                        ..backend("198.18.0.22", BackendState::Down)
                    },
                ],
            }],
            vrrp: Some(VrrpStatus {
                vrid: 51,
                state: vrrp::State::Master,
                priority: 150,
                configured_priority: 150,
                master: None,
                last_transition_unix: None,
                became_master: 1,
                transitions: 2,
                adverts_accepted: 0,
                adverts_dropped: Vec::new(),
                failed_conditions: Vec::new(),
                resigned: false,
            }),
            // The IPv6 router elects on its own: here it is backup.
            vrrp6: Some(VrrpStatus {
                vrid: 51,
                state: vrrp::State::Backup,
                priority: 150,
                configured_priority: 150,
                master: Some("fe80::3".into()),
                last_transition_unix: None,
                became_master: 0,
                transitions: 1,
                adverts_accepted: 7,
                adverts_dropped: vec![ReasonCount {
                    reason: "ttl".into(),
                    packets: 1,
                }],
                failed_conditions: Vec::new(),
                resigned: false,
            }),
            ..empty()
        }
    }

    fn exposition(s: &Status) -> Exposition {
        Exposition::parse(&render(s).expect("render"))
    }

    #[test]
    fn names_labels_values() {
        let e = exposition(&sample());
        let web = [
            ("service", "web"),
            ("vip", "198.18.0.100:80"),
            ("proto", "tcp"),
        ];
        let b1 = [("service", "web"), ("backend", "198.18.0.21")];
        let b2 = [("service", "web"), ("backend", "198.18.0.22")];
        // (family, labels, value)
        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);
        let cases: Vec<Case<'_>> = vec![
            ("lbd_build_info", vec![("version", "0.1.0")], 1.0),
            ("lbd_datapath_mode", vec![("mode", "xdp-native")], 1.0),
            ("lbd_datapath_mode", vec![("mode", "xdp-generic")], 0.0),
            ("lbd_datapath_mode", vec![("mode", "userspace")], 0.0),
            (
                "lbd_datapath_packets_total",
                vec![("reason", "pass_arp")],
                5.0,
            ),
            (
                "lbd_datapath_packets_total",
                vec![("reason", "drop_no_backend")],
                2.0,
            ),
            ("lbd_conntrack_entries", vec![], 17.0),
            ("lbd_conntrack_capacity", vec![], 262144.0),
            ("lbd_flood_guard_active", vec![], 0.0),
            ("lbd_vip_announced", vec![("vip", "198.18.0.100")], 1.0),
            ("lbd_flood_guard_new_flows_per_second", vec![], 0.0),
            ("lbd_service_packets_total", web.to_vec(), 1000.0),
            ("lbd_service_bytes_total", web.to_vec(), 64000.0),
            ("lbd_backend_packets_total", b1.to_vec(), 600.0),
            ("lbd_backend_bytes_total", b2.to_vec(), 25600.0),
            ("lbd_service_new_flows_total", web.to_vec(), 30.0),
            ("lbd_backend_new_flows_total", b1.to_vec(), 18.0),
            ("lbd_backend_new_flows_total", b2.to_vec(), 12.0),
            ("lbd_backend_active_flows", b1.to_vec(), 3.0),
            ("lbd_backend_closing_flows", b1.to_vec(), 1.0),
            ("lbd_backend_up", b1.to_vec(), 1.0),
            ("lbd_backend_up", b2.to_vec(), 0.0),
            ("lbd_health_check_duration_seconds", b1.to_vec(), 0.0015),
            ("lbd_health_check_duration_seconds", b2.to_vec(), 0.5),
            (
                "lbd_vrrp_state",
                vec![("family", "ipv4"), ("state", "master")],
                1.0,
            ),
            (
                "lbd_vrrp_state",
                vec![("family", "ipv4"), ("state", "backup")],
                0.0,
            ),
            (
                "lbd_vrrp_state",
                vec![("family", "ipv4"), ("state", "init")],
                0.0,
            ),
            (
                "lbd_vrrp_state",
                vec![("family", "ipv6"), ("state", "backup")],
                1.0,
            ),
            (
                "lbd_vrrp_state",
                vec![("family", "ipv6"), ("state", "master")],
                0.0,
            ),
            ("lbd_vrrp_transitions_total", vec![("family", "ipv4")], 2.0),
            ("lbd_vrrp_transitions_total", vec![("family", "ipv6")], 1.0),
            ("lbd_vrrp_resigned", vec![("family", "ipv4")], 0.0),
            ("lbd_datapath_configured", vec![("setting", "auto")], 1.0),
            (
                "lbd_datapath_configured",
                vec![("setting", "userspace")],
                0.0,
            ),
            (
                "lbd_service_backends_in_rotation",
                vec![
                    ("service", "web"),
                    ("vip", "198.18.0.100:80"),
                    ("proto", "tcp"),
                ],
                1.0,
            ),
            (
                "lbd_health_check_timeout_seconds",
                vec![("service", "web"), ("backend", "198.18.0.22")],
                0.5,
            ),
            ("lbd_config_reloads_total", vec![], 4.0),
            ("lbd_config_reload_failures_total", vec![], 1.0),
            (
                "lbd_config_last_load_timestamp_seconds",
                vec![],
                1_700_000_000.0,
            ),
        ];
        for (name, labels, want) in cases {
            assert_eq!(e.value(name, &labels), Some(want), "{name}{labels:?}");
        }
        // The state set: one series per state, 1 for the current one.
        for (b, current) in [("198.18.0.21", "active"), ("198.18.0.22", "down")] {
            for st in BackendState::ALL {
                let labels = [("service", "web"), ("backend", b), ("state", st.as_str())];
                let want = if st.as_str() == current { 1.0 } else { 0.0 };
                assert_eq!(
                    e.value("lbd_backend_state", &labels),
                    Some(want),
                    "{labels:?}"
                );
            }
        }
        assert_eq!(e.series("lbd_backend_state"), 12);
    }

    /// Every `lbd_*` name in `text` is a family lbd exports; returns how many names there were.
    fn assert_exported(text: &str, what: &str) -> usize {
        let names: std::collections::BTreeSet<String> = families(&sample())
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        let mut used = 0;
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("lbd_") {
                used += 1;
                assert!(
                    names.contains(word),
                    "{what}: {word} is not exported: {names:?}"
                );
            }
        }
        used
    }

    /// Every lbd metric the shipped alert rules use is one lbd exports.
    #[test]
    fn the_alert_rules_use_exported_metrics() {
        let rules = include_str!("../../packaging/prometheus/lbd-alerts.yml");
        let used = assert_exported(rules, "lbd-alerts.yml");
        assert!(used > 10, "only {used} lbd metrics in the rules");
    }

    /// The shipped Grafana dashboard: valid JSON, the instance and service variables, every
    /// panel query on exported metrics and filtered by instance.
    #[test]
    fn the_dashboard_queries_exported_metrics() {
        let text = include_str!("../../packaging/grafana/lbd.json");
        let dash: serde_json::Value = serde_json::from_str(text).expect("lbd.json is JSON");
        let vars: Vec<&str> = dash["templating"]["list"]
            .as_array()
            .expect("variables")
            .iter()
            .filter_map(|v| v["name"].as_str())
            .collect();
        for want in ["datasource", "instance", "service"] {
            assert!(vars.contains(&want), "no ${want} variable: {vars:?}");
        }
        let mut exprs = 0;
        for panel in dash["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("a target's expr");
                assert!(expr.contains("$instance"), "{}: {expr}", panel["title"]);
                assert!(assert_exported(expr, "lbd.json") > 0, "{expr}");
                exprs += 1;
            }
        }
        assert!(exprs >= 15, "{exprs} queries");
    }

    #[test]
    fn every_family_has_help_type_and_conventional_name() {
        let e = exposition(&sample());
        assert_eq!(e.help.len(), 28, "{:?}", e.help.keys());
        for (name, _, _) in &e.samples {
            assert!(name.starts_with("lbd_"), "{name}");
            let ty = e
                .types
                .get(name)
                .unwrap_or_else(|| panic!("no TYPE for {name}"));
            let help = e
                .help
                .get(name)
                .unwrap_or_else(|| panic!("no HELP for {name}"));
            assert!(!help.is_empty());
            assert_eq!(
                ty == "counter",
                name.ends_with("_total"),
                "{name} is a {ty}"
            );
            assert!(ty == "counter" || ty == "gauge", "{name}: {ty}");
        }
        assert_eq!(e.types["lbd_service_packets_total"], "counter");
        assert_eq!(e.types["lbd_backend_state"], "gauge");
        assert_eq!(
            e.help["lbd_backend_up"],
            "Whether the backend passes its health checks (1) or not (0); absent without a health check."
        );
    }

    #[test]
    fn optional_parts_are_absent_and_odd_values_escaped() {
        let mut s = sample();
        s.vrrp = None;
        s.vrrp6 = None;
        s.config_loaded_unix = 0;
        s.services[0].name = "we\"b\\".into();
        for b in &mut s.services[0].backends {
            b.health = None;
        }
        let e = exposition(&s);
        for name in [
            "lbd_vrrp_state",
            "lbd_vrrp_transitions_total",
            "lbd_vrrp_resigned",
            "lbd_backend_up",
            "lbd_health_check_duration_seconds",
            "lbd_config_last_load_timestamp_seconds",
        ] {
            assert_eq!(e.series(name), 0, "{name}");
            assert!(!e.help.contains_key(name), "{name}");
        }
        assert_eq!(e.series("lbd_backend_state"), 12);
        assert_eq!(e.series("lbd_datapath_mode"), 3);
        assert_eq!(
            e.value(
                "lbd_backend_active_flows",
                &[("service", "we\"b\\"), ("backend", "198.18.0.21")]
            ),
            Some(3.0)
        );

        // No services at all: the families still render (without the per-service ones).
        let e = exposition(&empty());
        assert_eq!(e.series("lbd_service_packets_total"), 0);
        assert_eq!(e.value("lbd_conntrack_entries", &[]), Some(0.0));
    }

    #[test]
    fn status_json_round_trips_with_its_types() {
        let s = sample();
        let json = serde_json::to_string(&s).expect("encode");
        for part in [
            "\"datapath\":\"xdp-native\"",
            "\"state\":\"active\"",
            "\"state\":\"MASTER\"",
            "\"proto\":\"tcp\"",
            "\"scheduler\":\"maglev\"",
            "\"source\":\"config\"",
        ] {
            assert!(json.contains(part), "{part} in {json}");
        }
        let back: Status = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, s);
    }

    /// Every key path of a JSON value (`a.b[].c`), arrays by their first element.
    fn key_paths(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    out.push(path.clone());
                    key_paths(v, &path, out);
                }
            }
            serde_json::Value::Array(a) => {
                if let Some(first) = a.first() {
                    key_paths(first, &format!("{prefix}[]"), out);
                }
            }
            _ => {}
        }
    }

    /// `/status.json` and `lbctl status --json` are read by scripts and the status page: this
    /// pins their shape, so that a change to it is a decision (add keys; never rename or drop).
    #[test]
    fn status_json_schema_is_stable() {
        let mut s = sample();
        s.services[0].backends[0].history_pps = vec![1, 2];
        s.services[0].backends[0].overrides = vec!["weight 3 by lbctl (config: 1)".into()];
        s.services[0].backends[0].mac = Some("02:00:00:00:00:01".into());
        s.vrrp.as_mut().expect("vrrp").adverts_dropped = vec![ReasonCount::default()];
        let mut paths = Vec::new();
        key_paths(&serde_json::to_value(&s).expect("json"), "", &mut paths);
        paths.sort();
        let expected = "\
announce announce.drained announce.table announce.vips announce.vips[].announced \
announce.vips[].reason announce.vips[].vip config_loaded_unix config_path config_reload_failures config_reloads conntrack_entries \
conntrack_max datapath datapath_reason datapath_setting flood_guard flood_guard.active \
flood_guard.episodes flood_guard.held flood_guard.new_flows_per_sec interface reasons reasons[].packets \
reasons[].reason services services[].backends services[].backends[].addr \
services[].backends[].bytes services[].backends[].closing_flows services[].backends[].flows \
services[].backends[].health services[].backends[].health.detail \
services[].backends[].health.last_seconds services[].backends[].health.timeout_seconds \
services[].backends[].health.up services[].backends[].history_pps services[].backends[].mac \
services[].backends[].new_flows services[].backends[].overrides services[].backends[].packets \
services[].backends[].rates services[].backends[].rates.bytes_per_s \
services[].backends[].rates.new_flows_per_s services[].backends[].rates.packets_per_s \
services[].backends[].source services[].backends[].state services[].backends[].weight \
services[].bytes services[].name services[].new_flows services[].packets services[].proto \
services[].rates services[].rates.bytes_per_s services[].rates.new_flows_per_s \
services[].rates.packets_per_s services[].scheduler services[].vip state_file uptime_s version \
vrrp vrrp.adverts_accepted vrrp.adverts_dropped vrrp.adverts_dropped[].packets \
vrrp.adverts_dropped[].reason vrrp.became_master vrrp.configured_priority \
vrrp.failed_conditions vrrp.last_transition_unix vrrp.master vrrp.priority vrrp.resigned \
vrrp.state vrrp.transitions vrrp.vrid vrrp6 vrrp6.adverts_accepted vrrp6.adverts_dropped \
vrrp6.adverts_dropped[].packets vrrp6.adverts_dropped[].reason vrrp6.became_master \
vrrp6.configured_priority vrrp6.failed_conditions vrrp6.last_transition_unix vrrp6.master \
vrrp6.priority vrrp6.resigned vrrp6.state vrrp6.transitions vrrp6.vrid";
        let expected: Vec<&str> = expected.split_whitespace().collect();
        assert_eq!(paths, expected);
    }

    // ---- the server on loopback ----

    /// One HTTP/1.1 request; returns the status, the head and the body.
    async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let exchange = async {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let req =
                format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.expect("send");
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.expect("read");
            out
        };
        let out = tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .expect("no answer within 5 s");
        let text = String::from_utf8(out).expect("utf-8 answer");
        let (head, body) = text.split_once("\r\n\r\n").expect("no end of head");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status code");
        (status, head.to_string(), body.to_string())
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let current = Arc::new(Mutex::new(sample()));
        let source = current.clone();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve_listener(
            listener,
            move || {
                let snap = source.lock().map(|s| s.clone()).map_err(|e| e.to_string());
                async move { snap }
            },
            shutdown.clone(),
        ));

        let (status, head, body) = http(addr, "GET", "/metrics").await;
        assert_eq!(status, 200, "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        let e = Exposition::parse(&body);
        let b1 = [("service", "web"), ("backend", "198.18.0.21")];
        assert_eq!(e.value("lbd_backend_packets_total", &b1), Some(600.0));
        assert_eq!(e.types["lbd_backend_packets_total"], "counter");

        // The counters move with the snapshot.
        {
            let mut s = current.lock().expect("lock");
            s.services[0].backends[0].packets += 25;
            s.services[0].packets += 25;
            s.config_reloads += 1;
        }
        let (_, _, body) = http(addr, "GET", "/metrics?x=1").await;
        let e = Exposition::parse(&body);
        assert_eq!(e.value("lbd_backend_packets_total", &b1), Some(625.0));
        assert_eq!(e.value("lbd_config_reloads_total", &[]), Some(5.0));

        let (status, _, body) = http(addr, "GET", "/other").await;
        assert_eq!(status, 404);
        assert_eq!(
            body,
            "not found: lbd serves / (status page), /status.json, /metrics\n"
        );
        // The page and the JSON it polls.
        let (status, head, body) = http(addr, "GET", "/").await;
        assert_eq!(status, 200, "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/html"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("cache-control: no-store"),
            "{head}"
        );
        assert_eq!(body, STATUS_PAGE);
        let (status, head, body) = http(addr, "GET", STATUS_JSON_PATH).await;
        assert_eq!(status, 200, "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{head}"
        );
        let read: Status = serde_json::from_str(&body).expect("status JSON");
        assert_eq!(read, *current.lock().expect("lock"));
        let (status, head, _) = http(addr, "POST", "/").await;
        assert_eq!(status, 405, "the page is read-only: {head}");
        let (status, head, _) = http(addr, "POST", "/metrics").await;
        assert_eq!(status, 405);
        assert!(
            head.to_ascii_lowercase().contains("allow: get, head"),
            "{head}"
        );
        let (status, _, body) = http(addr, "HEAD", "/metrics").await;
        assert_eq!((status, body.as_str()), (200, ""));

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server did not stop")
            .expect("server task");
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    }

    #[tokio::test]
    async fn snapshot_errors_are_500() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve_listener(
            listener,
            || async { Err("reading the counters: map STATS: EPERM".to_string()) },
            shutdown.clone(),
        ));
        let (status, _, body) = http(addr, "GET", "/metrics").await;
        assert_eq!(status, 500);
        assert_eq!(
            body,
            "cannot read the status: reading the counters: map STATS: EPERM\n"
        );
        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }

    #[tokio::test]
    async fn bind_errors_name_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr");
        let e = serve(addr, || async { Ok(empty()) }, CancellationToken::new())
            .await
            .expect_err("bound twice");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("cannot listen for metrics on {addr}: ")),
            "{msg}"
        );
        assert!(
            msg.ends_with("set [daemon] metrics_addr to a free address)"),
            "{msg}"
        );
    }
}
