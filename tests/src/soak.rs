//! The soak (`cargo xtask soak [--minutes N]`, and a short one in CI): lbd in the namespace
//! topology under mixed load for a bounded time, while it is reconfigured under that load.
//!
//! Load, every loop bounded by the deadline: short HTTP connections (one every 20 ms), long
//! kept-alive flows (a request every 500 ms each, for the whole soak), UDP queries (every
//! 100 ms). Meanwhile: a SIGHUP every [`SoakOptions::reload_every`] (two config variants whose
//! weights differ, so every reload rewrites a table), an `lbctl` step every
//! [`SoakOptions::admin_every`] (drain b1, back in rotation, add b4, drain b4, remove b4), and
//! backend b3's health check flapping every [`SoakOptions::flap_every`] (its `/health` answers
//! 503 then 200 again; its server goes on).
//!
//! Afterwards ([`SoakReport::failed_checks`]):
//! - no connection failed that should not have: a long flow may break only if its backend is
//!   b3 (a backend that goes down loses its flows, by design) and a short connection only
//!   within a few seconds of one of b3's transitions; UDP never;
//! - lbd's resident memory did not grow by more than [`RSS_GROWTH_MIB`];
//! - no descriptor leaked (at most [`FD_SLACK`] more once the load is gone);
//! - the connection table holds only live flows: every open TCP entry of the client belongs to
//!   a long flow still open (or to one that broke on b3, whose entry waits for its timeout: the
//!   backend's reset goes straight to the client, past the balancer), and no entry points at a
//!   backend id that was freed.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    Host, Topology, bin_path, client,
    lbd::{self, LbdNode, Mode, Services},
};

/// Largest growth of lbd's RSS over the soak.
pub const RSS_GROWTH_MIB: f64 = 16.0;
/// Descriptors lbd may hold beyond its count at the start, once the load is gone.
pub const FD_SLACK: usize = 16;
/// A short connection failing this close to one of b3's health transitions is expected.
const FLAP_WINDOW: Duration = Duration::from_secs(4);

/// How long and how hard.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// How long the load runs.
    pub duration: Duration,
    /// The data path.
    pub mode: Mode,
    /// SIGHUP period.
    pub reload_every: Duration,
    /// `lbctl` step period.
    pub admin_every: Duration,
    /// Period of b3's health flips.
    pub flap_every: Duration,
    /// Long kept-alive flows.
    pub long_flows: usize,
}

impl SoakOptions {
    /// A soak of `duration` on `mode` with the default rhythm.
    pub fn new(duration: Duration, mode: Mode) -> SoakOptions {
        SoakOptions {
            duration,
            mode,
            reload_every: Duration::from_secs(3),
            admin_every: Duration::from_secs(4),
            flap_every: Duration::from_secs(6),
            long_flows: 8,
        }
    }
}

/// What the soak saw.
#[derive(Debug, Default, Clone)]
pub struct SoakReport {
    /// Seconds of load.
    pub seconds: f64,
    /// Short connections made, and how many failed.
    pub short_total: u64,
    /// Failures of short connections near a transition of b3 (expected).
    pub short_failed_expected: u64,
    /// Failures elsewhere, with what happened.
    pub short_failed_unexpected: Vec<String>,
    /// Requests on long flows.
    pub long_requests: u64,
    /// Long flows broken on b3 (expected).
    pub long_broken_expected: u64,
    /// Long flows broken elsewhere.
    pub long_broken_unexpected: Vec<String>,
    /// UDP queries, and failures.
    pub udp_total: u64,
    /// UDP queries that failed.
    pub udp_failed: Vec<String>,
    /// SIGHUPs sent, lbctl steps done, b3 transitions.
    pub reloads: u64,
    /// lbctl steps run (a refusal, e.g. removing a backend with flows, counts as run).
    pub admin_steps: u64,
    /// lbctl steps that failed otherwise.
    pub admin_failed: Vec<String>,
    /// b3 health flips.
    pub flaps: u64,
    /// lbd's RSS at the start (after warm-up) and the end, MiB.
    pub rss_start_mib: f64,
    /// See `rss_start_mib`.
    pub rss_end_mib: f64,
    /// lbd's open descriptors at the start and after the load.
    pub fds_start: usize,
    /// See `fds_start`.
    pub fds_end: usize,
    /// Connection-table entries that are not live flows.
    pub stale_entries: Vec<String>,
    /// Entries of long flows broken on b3, waiting for their timeout (expected).
    pub broken_entries: u64,
}

impl SoakReport {
    /// The figures, one `name: value` each.
    pub fn lines(&self) -> Vec<(String, f64)> {
        [
            ("soak_seconds", self.seconds),
            ("soak_short_connections", self.short_total as f64),
            (
                "soak_short_failed_near_flap",
                self.short_failed_expected as f64,
            ),
            (
                "soak_short_failed_unexpected",
                self.short_failed_unexpected.len() as f64,
            ),
            ("soak_long_requests", self.long_requests as f64),
            ("soak_long_broken_on_flap", self.long_broken_expected as f64),
            (
                "soak_long_broken_unexpected",
                self.long_broken_unexpected.len() as f64,
            ),
            ("soak_udp_queries", self.udp_total as f64),
            ("soak_udp_failed", self.udp_failed.len() as f64),
            ("soak_reloads", self.reloads as f64),
            ("soak_admin_steps", self.admin_steps as f64),
            ("soak_health_flaps", self.flaps as f64),
            ("soak_rss_start_mib", self.rss_start_mib),
            ("soak_rss_end_mib", self.rss_end_mib),
            ("soak_fds_start", self.fds_start as f64),
            ("soak_fds_end", self.fds_end as f64),
            ("soak_stale_entries", self.stale_entries.len() as f64),
            (
                "soak_broken_flow_entries_expiring",
                self.broken_entries as f64,
            ),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v))
        .collect()
    }

    /// The checks that failed, each a sentence with its evidence; empty when all hold.
    pub fn failed_checks(&self) -> Vec<String> {
        let mut failed = Vec::new();
        let mut list = |what: &str, items: &[String]| {
            if !items.is_empty() {
                let shown: Vec<&String> = items.iter().take(5).collect();
                failed.push(format!("{} {what}: {shown:?}", items.len()));
            }
        };
        list(
            "short connections failed away from any health flap",
            &self.short_failed_unexpected,
        );
        list(
            "long flows broke on backends that stayed up",
            &self.long_broken_unexpected,
        );
        list("UDP queries failed", &self.udp_failed);
        list("lbctl steps failed", &self.admin_failed);
        list(
            "connection-table entries are not live flows",
            &self.stale_entries,
        );
        if self.rss_end_mib - self.rss_start_mib > RSS_GROWTH_MIB {
            failed.push(format!(
                "lbd's RSS grew from {:.1} to {:.1} MiB",
                self.rss_start_mib, self.rss_end_mib
            ));
        }
        if self.fds_end > self.fds_start + FD_SLACK {
            failed.push(format!(
                "lbd holds {} descriptors after the load, {} at the start",
                self.fds_end, self.fds_start
            ));
        }
        if self.short_total == 0 || self.long_requests == 0 || self.udp_total == 0 {
            failed.push("a load loop did nothing".into());
        }
        if self.reloads == 0 || self.admin_steps == 0 || self.flaps == 0 {
            failed.push("a reconfiguration loop did nothing".into());
        }
        failed
    }

    /// The figures as text, one `name: value` per line.
    pub fn report(&self) -> String {
        let mut s = String::new();
        for (n, v) in self.lines() {
            let _ = writeln!(s, "{n}: {v:.2}");
        }
        s
    }
}

/// The soak's config: web (HTTP health checks on `/health`) and dns over b1..b3; `variant`
/// 1 weighs b1 at 2, so that each reload changes web's table.
fn config(topo: &Topology, mode: Mode, variant: u32) -> String {
    let ips: Vec<_> = (1..=3).map(|n| topo.ip(Host::Backend(n))).collect();
    let socket = LbdNode::socket_path(topo, Host::Lbd(1));
    let mut c = lbd::config_text(
        mode,
        &socket,
        &Services {
            tcp: ips.clone(),
            udp: ips.clone(),
        },
    )
    .replacen(
        "name = \"web\"\n",
        "name = \"web\"\nhealth = { kind = \"http\", path = \"/health\", interval_ms = 200, timeout_ms = 150, rise = 2, fall = 2 }\n",
        1,
    );
    if variant % 2 == 1 {
        c = c.replacen(
            &format!("{{ addr = \"{}\" }}", ips[0]),
            &format!("{{ addr = \"{}\", weight = 2 }}", ips[0]),
            1,
        );
    }
    c
}

/// Resident memory and open descriptors of a process.
fn rss_and_fds(pid: u32) -> Result<(f64, usize)> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok((crate::vm_rss_mib(pid)?, fds))
}

/// b3 is put back up when the soak ends, however it ends.
struct HealthGuard<'a>(&'a Topology);

impl Drop for HealthGuard<'_> {
    fn drop(&mut self) {
        let _ = self.0.set_backend_health(Host::Backend(3), true);
    }
}

/// A record of when b3's health flipped (seconds since the start of the load).
type Flips = Arc<Mutex<Vec<f64>>>;

/// Runs a soak; `name` tags its namespaces.
pub fn run(name: &str, opts: &SoakOptions) -> Result<SoakReport> {
    let topo = Topology::builder(&crate::test_tag(name))
        .lbd_nodes(1)
        .backends(4)
        .build()?;
    let node = Host::Lbd(1);
    let _backends = topo.start_backends(&bin_path("lbd-test-backend")?)?;
    let _peer = opts.mode.prepare(&topo, node)?;
    let _health = HealthGuard(&topo);
    let variants = [config(&topo, opts.mode, 0), config(&topo, opts.mode, 1)];
    let mut lbd = LbdNode::start(&topo, node, &variants[0])?;
    let pid = lbd.process.pid();
    let b4 = topo.ip(Host::Backend(4)).to_string();
    let b1 = topo.ip(Host::Backend(1)).to_string();
    let mut report = SoakReport::default();

    let started = Instant::now();
    let deadline = started + opts.duration;
    let flips: Flips = Arc::default();
    let vip = topo.vip_http();
    let vip_udp = topo.vip_udp();

    // The load, on threads inside the client's namespace.
    type Shorts = (u64, Vec<(f64, String)>);
    let (short, long, udp) = topo.client().enter(|| {
        let short = std::thread::spawn(move || -> Shorts {
            let (mut n, mut failed) = (0, Vec::new());
            while Instant::now() < deadline {
                n += 1;
                if let Err(e) = client::http_get(vip) {
                    failed.push((started.elapsed().as_secs_f64(), format!("{e:#}")));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (n, failed)
        });
        let long: Vec<_> = (0..opts.long_flows)
            .map(|_| {
                // Broken flows: (backend, our port, error).
                type Broken = Vec<(String, Option<u16>, String)>;
                std::thread::spawn(move || -> (u64, Broken, Option<client::KeepAlive>) {
                    let (mut requests, mut broken) = (0, Vec::new());
                    let mut conn: Option<(client::KeepAlive, String)> = None;
                    while Instant::now() < deadline {
                        let result = if let Some((c, _)) = conn.as_mut() {
                            c.get("/").map(drop)
                        } else {
                            client::KeepAlive::connect(vip, Duration::from_secs(5))
                                .and_then(|mut c| {
                                    let r = c.get("/")?;
                                    Ok((c, r.backend))
                                })
                                .map(|opened| conn = Some(opened))
                        };
                        requests += 1;
                        if let Err(e) = result {
                            let (port, backend) = match conn.take() {
                                Some((c, b)) => (c.local_addr().ok().map(|a| a.port()), b),
                                None => (None, String::new()),
                            };
                            broken.push((backend, port, format!("{e:#}")));
                        }
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    (requests, broken, conn.map(|(c, _)| c))
                })
            })
            .collect();
        let udp = std::thread::spawn(move || -> (u64, Vec<String>) {
            let (mut n, mut failed) = (0, Vec::new());
            while Instant::now() < deadline {
                n += 1;
                if let Err(e) = client::udp_query(vip_udp, b"soak", Duration::from_secs(2)) {
                    failed.push(format!("{e:#}"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (n, failed)
        });
        (short, long, udp)
    })?;

    // Warm-up, then the baseline.
    std::thread::sleep(Duration::from_secs(3).min(opts.duration / 4));
    (report.rss_start_mib, report.fds_start) = rss_and_fds(pid)?;

    // The reconfiguration, on this thread.
    let steps: Vec<Vec<String>> = [
        vec!["backend", "drain", "web", b1.as_str()],
        vec!["backend", "maintenance", "web", b1.as_str(), "off"],
        vec!["backend", "add", "web", b4.as_str()],
        vec!["backend", "drain", "web", b4.as_str()],
        vec!["backend", "remove", "web", b4.as_str()],
    ]
    .into_iter()
    .map(|s| s.into_iter().map(str::to_owned).collect())
    .collect();
    let (mut next_reload, mut next_admin, mut next_flap) = (
        Instant::now() + opts.reload_every,
        Instant::now() + opts.admin_every,
        Instant::now() + opts.flap_every,
    );
    let mut b3_up = true;
    while Instant::now() < deadline {
        let now = Instant::now();
        if now >= next_reload {
            lbd.reload(&variants[(report.reloads as usize + 1) % 2])?;
            report.reloads += 1;
            next_reload = now + opts.reload_every;
        }
        if now >= next_admin {
            let step = &steps[report.admin_steps as usize % steps.len()];
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            let (code, _, err) = lbd.lbctl(&args)?;
            // Removing a backend that still has flows is refused, by design; then the next
            // round's add finds it still there.
            if code != 0 && !err.contains("open flows") && !err.contains("is already a backend") {
                report
                    .admin_failed
                    .push(format!("lbctl {args:?}: {}", err.trim()));
            }
            report.admin_steps += 1;
            next_admin = now + opts.admin_every;
        }
        if now >= next_flap {
            b3_up = !b3_up;
            topo.set_backend_health(Host::Backend(3), b3_up)?;
            flips
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(started.elapsed().as_secs_f64());
            report.flaps += 1;
            next_flap = now + opts.flap_every;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    report.seconds = started.elapsed().as_secs_f64();

    // The load ends by itself at the deadline.
    let (n, short_failed) = short
        .join()
        .map_err(|_| anyhow::anyhow!("the short-connection thread panicked"))?;
    report.short_total = n;
    let flips = flips.lock().unwrap_or_else(PoisonError::into_inner).clone();
    for (at, e) in short_failed {
        if flips
            .iter()
            .any(|f| (at - f).abs() <= FLAP_WINDOW.as_secs_f64())
        {
            report.short_failed_expected += 1;
        } else {
            report
                .short_failed_unexpected
                .push(format!("at {at:.1}s: {e}"));
        }
    }
    let mut open_ports = BTreeSet::new();
    let mut dead_ports = BTreeSet::new();
    let mut held = Vec::new();
    for t in long {
        let (requests, broken, conn) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a long-flow thread panicked"))?;
        report.long_requests += requests;
        for (backend, port, e) in broken {
            if backend == "b3" {
                report.long_broken_expected += 1;
                // Its entry stays until it expires: the backend's RST goes straight to the
                // client (direct routing), so the balancer never sees the flow end.
                dead_ports.extend(port);
            } else {
                report
                    .long_broken_unexpected
                    .push(format!("on {backend:?}: {e}"));
            }
        }
        if let Some(c) = conn {
            if let Ok(SocketAddr::V4(a)) = c.local_addr() {
                open_ports.insert(a.port());
            }
            held.push(c);
        }
    }
    let (n, udp_failed) = udp
        .join()
        .map_err(|_| anyhow::anyhow!("the UDP thread panicked"))?;
    report.udp_total = n;
    report.udp_failed = udp_failed;

    // The table holds only live flows: open TCP entries are the long flows still open.
    let (code, out, err) = lbd.lbctl(&["flows", "--json", "--limit", "100000"])?;
    if code != 0 {
        bail!("lbctl flows: {err}");
    }
    let flows: serde_json::Value = serde_json::from_str(&out).context("lbctl flows --json")?;
    for f in flows["flows"].as_array().into_iter().flatten() {
        let backend = f["backend"].as_str().unwrap_or_default();
        if backend.starts_with("id ") {
            report
                .stale_entries
                .push(format!("{f}: a freed backend id"));
            continue;
        }
        if f["proto"] != "tcp" || f["state"] != "open" {
            continue;
        }
        let port = f["client"]
            .as_str()
            .and_then(|c| c.rsplit(':').next())
            .and_then(|p| p.parse::<u16>().ok());
        if port.is_some_and(|p| dead_ports.contains(&p)) {
            report.broken_entries += 1;
        } else if !port.is_some_and(|p| open_ports.contains(&p)) {
            report
                .stale_entries
                .push(format!("{f}: open, but no such live flow"));
        }
    }

    // The load gone: the descriptors come back, the memory stays bounded.
    for c in held {
        let _ = c.close();
    }
    topo.set_backend_health(Host::Backend(3), true)?;
    std::thread::sleep(Duration::from_secs(2));
    (report.rss_end_mib, report.fds_end) = rss_and_fds(pid)?;
    lbd.stop()?;
    Ok(report)
}
