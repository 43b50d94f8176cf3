//! The daemon: load the config, attach the data path, fill it, serve the control socket, and
//! react to signals (SIGHUP reloads, SIGTERM and SIGINT detach and exit).

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use lb_common::{STATS_BACKEND_BASE, STATS_SERVICE_BASE, reason};
use tokio::{signal::unix::SignalKind, sync::Mutex};

use std::collections::{BTreeSet, HashSet};

use crate::{
    config::{
        Config, Datapath, MAX_WEIGHT, ServiceKey, TRACK_DATAPATH, TRACK_INTERFACE_PREFIX,
        TRACK_NO_BACKEND, parse_backend_addr,
    },
    control::{
        self, BackendStatus, ReasonCount, Request, Response, ServiceStatus, Status, VrrpStatus,
    },
    engine::{Admin, ApplyReport, BackendRec, Engine, EngineError, Source},
    health::{HealthEvent, HealthMonitor, Target},
    metrics::{self, MetricsSnapshot, VrrpMetrics, VrrpState},
    net,
    plane::{Plane, ProxyPlane, XdpPlane},
    state::{AdminOverride, Overrides, StateFile},
    xdp::{self, AttachMode, FlowCounts, XdpMaps},
};

/// How often counters and the connection table are read, and unresolved MACs retried.
const TICK: Duration = Duration::from_secs(1);
/// A scan of the connection table is followed by at least this many times its own length
/// without one, so that a table of millions of flows costs at most ~2% of a core.
const SCAN_SPACING: u32 = 50;
/// Most ticks between two scans: flow counts, expiry and the freeing of removed backends are
/// never more than a minute old, however slow a scan was.
const SCAN_SKIP_MAX: u32 = 60;
/// How often every backend MAC is looked up again (a replaced backend host).
const MAC_REFRESH: Duration = Duration::from_secs(30);
/// How long start-up and reload wait for backends to answer ARP.
const RESOLVE_WAIT: Duration = Duration::from_secs(3);

/// Capabilities the XDP data path needs, by number and name.
const NEEDED_CAPS: [(u32, &str); 3] = [(12, "CAP_NET_ADMIN"), (38, "CAP_PERFMON"), (39, "CAP_BPF")];

/// Checks the effective capabilities and names the missing ones.
pub fn check_privileges() -> anyhow::Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .context("no CapEff line in /proc/self/status")?;
    let missing: Vec<&str> = NEEDED_CAPS
        .iter()
        .filter(|(bit, _)| eff & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if !missing.is_empty() {
        bail!(
            "lbd lacks {} needed to load and attach XDP programs; run it as root or grant them \
             (systemd: AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_NET_RAW CAP_PERFMON)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Everything the control socket and the tick read and change.
struct State {
    config_path: PathBuf,
    config: Config,
    engine: Engine,
    plane: Plane,
    /// The interface, when the data path needs backend MACs (XDP).
    link: Option<net::Link>,
    macs: HashMap<Ipv4Addr, [u8; 6]>,
    counts: FlowCounts,
    /// Ticks to let pass before the next scan of the connection table (see [`SCAN_SPACING`]).
    scan_skip: u32,
    mode_reason: String,
    started: Instant,
    loaded_at: SystemTime,
    overrides: Overrides,
    state_file: StateFile,
    down: BTreeSet<(ServiceKey, Ipv4Addr)>,
    netlink: rtnetlink::Handle,
    vrrp: Option<Vrrp>,
    health: HealthMonitor,
    reloads: u64,
    reload_failures: u64,
}

/// The VRRP speaker's handles: its status and its tracked conditions.
struct Vrrp {
    config: vrrp::Config,
    status: tokio::sync::watch::Receiver<vrrp::Status>,
    tracker: vrrp::Tracker,
}

impl State {
    /// Makes the data path match config, overrides, health and MACs, then checks the health of
    /// exactly the backends the services now have.
    fn apply(&mut self) -> Result<ApplyReport, EngineError> {
        let report = self.apply_plane()?;
        let targets = health_targets(&self.engine);
        // Backends no longer checked cannot stay down.
        let checked: BTreeSet<(String, Ipv4Addr)> = targets
            .iter()
            .filter_map(|t| match t.backend.ip() {
                std::net::IpAddr::V4(ip) => Some((t.service.clone(), ip)),
                std::net::IpAddr::V6(_) => None,
            })
            .collect();
        let names: HashMap<ServiceKey, String> = self
            .engine
            .services()
            .map(|s| (s.config.key(), s.config.name.clone()))
            .collect();
        let before = self.down.len();
        self.down.retain(|(k, ip)| {
            names
                .get(k)
                .is_some_and(|n| checked.contains(&(n.clone(), *ip)))
        });
        self.health.set_targets(targets);
        if self.down.len() != before {
            self.apply_plane()?;
        }
        Ok(report)
    }

    fn apply_plane(&mut self) -> Result<ApplyReport, EngineError> {
        self.plane.apply(
            &mut self.engine,
            &self.config,
            &self.overrides,
            &self.down,
            &self.macs,
        )
    }

    /// A service by name, `VIP:port`, or `proto/VIP:port`.
    fn find_service(&self, name: &str) -> Result<ServiceKey, String> {
        let found =
            self.config.services.iter().find(|s| {
                s.name == name || s.vip.to_string() == name || s.key().to_string() == name
            });
        match found {
            Some(s) => Ok(s.key()),
            None => {
                let names: Vec<&str> = self
                    .config
                    .services
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect();
                Err(format!(
                    "unknown service {name:?} (services: {}); name it by name or VIP:port",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ))
            }
        }
    }

    /// A backend of a service as the engine has it.
    fn backend(&self, key: &ServiceKey, addr: Ipv4Addr) -> Option<&BackendRec> {
        self.engine.service(key).and_then(|s| s.backends.get(&addr))
    }

    fn service_name(&self, key: &ServiceKey) -> String {
        self.engine
            .service(key)
            .map(|s| s.config.name.clone())
            .unwrap_or_else(|| key.to_string())
    }
}

/// Health-check targets: every backend (not removed) of every service with a `health` setting,
/// probed on its own address at the service port.
fn health_targets(engine: &Engine) -> Vec<Target> {
    engine
        .services()
        .filter_map(|s| s.config.health.as_ref().map(|h| (s, h)))
        .flat_map(|(s, h)| {
            s.backends
                .values()
                .filter(|b| b.admin != Admin::Removed)
                .map(move |b| Target {
                    service: s.config.name.clone(),
                    backend: std::net::SocketAddr::new(b.addr.into(), s.config.vip.port()),
                    config: h.clone(),
                })
        })
        .collect()
}

/// VRRP tracking: a node that cannot serve well lowers its priority, so a peer that can takes
/// over: a service with no backend in rotation, the XDP program gone from the interface, a
/// tracked interface down.
async fn track(st: &State, handle: &rtnetlink::Handle) {
    let Some(v) = &st.vrrp else { return };
    for cond in &v.config.tracked {
        let failed = if cond.name == TRACK_NO_BACKEND {
            st.engine
                .services()
                .any(|s| !s.backends.values().any(|b| b.in_rotation()))
        } else if cond.name == TRACK_DATAPATH {
            match &st.plane {
                Plane::Xdp(_) => {
                    match net::link_health(handle, &st.config.daemon.interface).await {
                        Ok(h) => !h.xdp_attached,
                        Err(e) => {
                            tracing::warn!(error = %e, "VRRP tracking: interface look-up failed");
                            continue;
                        }
                    }
                }
                // The proxy has nothing to detach; it runs while lbd runs.
                Plane::Proxy(_) => false,
            }
        } else if let Some(ifname) = cond.name.strip_prefix(TRACK_INTERFACE_PREFIX) {
            match net::link_health(handle, ifname).await {
                Ok(h) => !h.up,
                Err(e) => {
                    tracing::warn!(error = %e, "VRRP tracking: interface look-up failed");
                    continue;
                }
            }
        } else {
            continue;
        };
        let was = v
            .tracker
            .conditions()
            .iter()
            .any(|c| c.name == cond.name && c.failed);
        if was != failed {
            tracing::warn!(condition = %cond.name, failed, weight = cond.weight, "VRRP tracked condition changed");
        }
        if let Err(e) = v.tracker.set_failed(&cond.name, failed) {
            tracing::warn!(error = %e, "VRRP tracking");
        }
    }
}

/// A health check changed a backend's state: take it out of rotation (and its flows out of the
/// connection table, so its clients get a new backend at once) or put it back.
async fn on_health(state: &Mutex<State>, ev: HealthEvent) {
    if !ev.transition {
        return;
    }
    let mut st = state.lock().await;
    let Some(key) = st
        .config
        .services
        .iter()
        .find(|s| s.name == ev.service)
        .map(|s| s.key())
    else {
        return; // a service removed while its probe ran
    };
    let std::net::IpAddr::V4(ip) = ev.backend.ip() else {
        return;
    };
    if ev.up {
        st.down.remove(&(key, ip));
        tracing::info!(service = %ev.service, backend = %ip, detail = %ev.detail, "health: backend up, back in rotation");
    } else {
        st.down.insert((key, ip));
        tracing::warn!(service = %ev.service, backend = %ip, detail = %ev.detail, "health: backend down, out of rotation");
    }
    if let Err(e) = st.apply() {
        tracing::error!(error = %e, "applying a health change failed");
        return;
    }
    if !ev.up
        && let Some(id) = st.backend(&key, ip).map(|b| b.id)
    {
        let cut = st.plane.cut(id);
        tracing::info!(backend = %ip, flows = cut, "flows of the down backend re-balanced");
    }
}

/// Backend addresses to resolve: the config's and those added at run time.
fn backend_ips(config: &Config, overrides: &Overrides) -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = config
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.addr))
        .collect();
    ips.extend(overrides.services.values().flat_map(|m| {
        m.iter()
            .filter(|(_, o)| o.added && !o.removed)
            .map(|(a, _)| *a)
    }));
    ips.sort();
    ips.dedup();
    ips
}

/// Loads the XDP programs and attaches them in one mode.
fn xdp_plane(config: &Config, link: &net::Link, mode: AttachMode) -> anyhow::Result<XdpPlane> {
    let mut ebpf = xdp::load(
        link.mac,
        [0; 6],
        config.daemon.conntrack_max,
        &[xdp::PROG_LBD],
    )?;
    let maps = XdpMaps::new(&mut ebpf)?;
    let iface = &config.daemon.interface;
    xdp::attach(&mut ebpf, xdp::PROG_LBD, iface, link.index, mode)?;
    Ok(XdpPlane { ebpf, maps, mode })
}

/// Picks the data path by `[daemon] datapath`; returns it and why. `auto` steps down native XDP
/// → generic XDP → userspace, logging each step's reason; the explicit modes fail instead.
///
/// The program is attached before its maps are filled: until the first apply (moments later) the
/// VIPS map is empty and every packet passes to the kernel, as before lbd started.
async fn choose_plane(
    config: &Config,
    handle: &rtnetlink::Handle,
) -> anyhow::Result<(Plane, Option<net::Link>, String)> {
    let iface = config.daemon.interface.clone();
    let userspace = || Plane::Proxy(ProxyPlane::new(config.proxy.clone()));
    let link = || async {
        net::link(handle, &iface)
            .await
            .with_context(|| format!("daemon.interface = {iface:?}"))
    };
    match config.daemon.datapath {
        Datapath::Userspace => Ok((userspace(), None, "datapath = \"userspace\"".into())),
        Datapath::Xdp => {
            check_privileges()?;
            let link = link().await?;
            let plane = xdp_plane(config, &link, AttachMode::Native).context(
                "datapath = \"xdp\" requires native XDP; use datapath = \"auto\" to allow generic mode",
            )?;
            Ok((
                Plane::Xdp(Box::new(plane)),
                Some(link),
                "datapath = \"xdp\"".into(),
            ))
        }
        Datapath::XdpGeneric => {
            check_privileges()?;
            let link = link().await?;
            let plane = xdp_plane(config, &link, AttachMode::Generic)?;
            Ok((
                Plane::Xdp(Box::new(plane)),
                Some(link),
                "datapath = \"xdp-generic\"".into(),
            ))
        }
        Datapath::Auto => {
            if let Some(s) = config.services.iter().find(|s| !s.scheduler.xdp_capable()) {
                let why = format!(
                    "datapath = \"auto\": service {} uses scheduler {}, which only the userspace data path has; userspace in use",
                    s.name, s.scheduler
                );
                tracing::warn!("{why}");
                return Ok((userspace(), None, why));
            }
            if let Err(e) = check_privileges() {
                let why = format!("datapath = \"auto\": {e:#}; userspace in use");
                tracing::warn!("{why}");
                return Ok((userspace(), None, why));
            }
            let link = link().await?;
            let native = match xdp_plane(config, &link, AttachMode::Native) {
                Ok(p) => {
                    return Ok((
                        Plane::Xdp(Box::new(p)),
                        Some(link),
                        "datapath = \"auto\": native XDP attached".into(),
                    ));
                }
                Err(e) => format!("{e:#}"),
            };
            tracing::warn!(error = %native, "native XDP failed; trying generic XDP");
            let generic = match xdp_plane(config, &link, AttachMode::Generic) {
                Ok(p) => {
                    let why =
                        format!("datapath = \"auto\": native failed ({native}); generic in use");
                    return Ok((Plane::Xdp(Box::new(p)), Some(link), why));
                }
                Err(e) => format!("{e:#}"),
            };
            let why = format!(
                "datapath = \"auto\": native XDP failed ({native}); generic XDP failed ({generic}); userspace in use"
            );
            tracing::warn!("{why}");
            Ok((userspace(), None, why))
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config_path: PathBuf, config: Config) -> anyhow::Result<()> {
    let handle = net::connect().context("opening a netlink socket")?;
    let (mut plane, link, mode_reason) = choose_plane(&config, &handle).await?;

    // Runtime changes from lbctl, replayed over the config.
    let state_file = StateFile::in_dir(&config.daemon.state_dir);
    let overrides = state_file.load()?;
    let ips = backend_ips(&config, &overrides);

    let macs = match &link {
        Some(l) => {
            let m = net::resolve(
                &handle,
                &config.daemon.interface,
                l.index,
                &ips,
                RESOLVE_WAIT,
            )
            .await?;
            log_unresolved(&ips, &m);
            m
        }
        None => HashMap::new(),
    };
    let mut engine = Engine::with_mac_required(plane.needs_macs());
    let down = BTreeSet::new();
    let report = plane
        .apply(&mut engine, &config, &overrides, &down, &macs)
        .context("setting up the data path")?;
    tracing::info!(interface = %config.daemon.interface, datapath = plane.name(), reason = %mode_reason, services = report.services_added, backends = report.backends_added, "data path ready");

    let socket_path = config.daemon.control_socket.clone();
    let listener = control::bind(&socket_path).await?;
    let metrics_listener = metrics::bind(config.daemon.metrics_addr)
        .await
        .context("daemon.metrics_addr")?;
    let stop = tokio_util::sync::CancellationToken::new();
    let (health_tx, mut health_rx) = HealthMonitor::channel();
    let mut health = HealthMonitor::new(health_tx, &stop);
    health.set_targets(health_targets(&engine));

    // VRRP last: this node claims the VIP only once it can forward for it. As backup it keeps
    // its XDP program and maps filled, so taking over needs no set-up.
    let vrrp_stop = tokio_util::sync::CancellationToken::new();
    let (vrrp, vrrp_task) = match &config.vrrp {
        Some(vc) => {
            let speaker = vrrp::Speaker::new(vc.clone()).context("[vrrp]")?;
            let handles = Vrrp {
                config: vc.clone(),
                status: speaker.status(),
                tracker: speaker.tracker(),
            };
            tracing::info!(vrid = vc.vrid.get(), priority = vc.priority.get(), interface = %vc.interface, "VRRP starting");
            let token = vrrp_stop.clone();
            let task = tokio::spawn(async move { speaker.run(token).await });
            (Some(handles), Some(task))
        }
        None => (None, None),
    };
    let state = Arc::new(Mutex::new(State {
        config_path,
        config,
        engine,
        plane,
        link,
        macs,
        counts: FlowCounts::default(),
        scan_skip: 0,
        mode_reason,
        started: Instant::now(),
        loaded_at: SystemTime::now(),
        overrides,
        state_file,
        down,
        netlink: handle.clone(),
        vrrp,
        health,
        reloads: 0,
        reload_failures: 0,
    }));
    let metrics_state = state.clone();
    let metrics_task = tokio::spawn(metrics::serve_listener(
        metrics_listener,
        move || {
            let st = metrics_state.clone();
            async move {
                let st = st.lock().await;
                metrics_snapshot(&st).map_err(|e| format!("{e:#}"))
            }
        },
        stop.clone(),
    ));
    let handler_state = state.clone();
    let server = tokio::spawn(control::serve(
        listener,
        Arc::new(move |req: Request| {
            let st = handler_state.clone();
            async move { handle_request(&st, req).await }
        }),
    ));
    tracing::info!(socket = %socket_path.display(), "control socket ready");
    notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("balancing"),
    ]);
    let watchdog = watchdog_interval();
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));

    let mut hup = tokio::signal::unix::signal(SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    let mut tick = tokio::time::interval(TICK);
    let mut last_mac_refresh = Instant::now();
    loop {
        tokio::select! {
            _ = hup.recv() => {
                notify_systemd(&[sd_notify::NotifyState::Reloading]);
                reload(&state, &handle).await;
                notify_systemd(&[sd_notify::NotifyState::Ready]);
            }
            Some(ev) = health_rx.recv() => on_health(&state, ev).await,
            // The watchdog is fed from the loop that does the work, so a stuck loop is noticed.
            _ = watchdog_tick.tick(), if watchdog.is_some() => notify_systemd(&[sd_notify::NotifyState::Watchdog]),
            _ = term.recv() => { tracing::info!("SIGTERM: detaching"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: detaching"); break; }
            _ = tick.tick() => {
                let all = last_mac_refresh.elapsed() >= MAC_REFRESH;
                if all {
                    last_mac_refresh = Instant::now();
                }
                refresh(&state, &handle, all).await;
            }
        }
    }
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    server.abort();
    stop.cancel();
    let _ = metrics_task.await;
    // Resign first (a priority-0 advert hands over within the skew time, and the VIP leaves this
    // node), then stop forwarding.
    if let Some(task) = vrrp_task {
        vrrp_stop.cancel();
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Ok(()))) => tracing::info!("VRRP stopped: resigned and removed the VIP"),
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "VRRP ended with an error"),
            Ok(Err(e)) => tracing::error!(error = %e, "VRRP task failed"),
            Err(_) => tracing::error!("VRRP did not stop within 5 s"),
        }
    }
    // Stop forwarding: XDP detaches when its object is dropped; the proxies close their
    // listeners and connections (bounded: a stuck peer cannot hold the stop).
    let plane = {
        let mut st = state.lock().await;
        std::mem::replace(
            &mut st.plane,
            Plane::Proxy(ProxyPlane::new(Default::default())),
        )
    };
    match plane {
        Plane::Xdp(x) => drop(x),
        Plane::Proxy(mut p) => {
            if tokio::time::timeout(Duration::from_secs(5), p.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("proxied connections still open after 5 s; closing them");
            }
        }
    }
    if let Err(e) = std::fs::remove_file(&socket_path) {
        tracing::warn!(socket = %socket_path.display(), error = %e, "cannot remove the control socket");
    }
    tracing::info!("data path stopped; lbd stopped");
    Ok(())
}

fn log_unresolved(ips: &[Ipv4Addr], macs: &HashMap<Ipv4Addr, [u8; 6]>) {
    for ip in ips {
        if !macs.contains_key(ip) {
            tracing::warn!(backend = %ip, "no ARP answer from backend: out of rotation until it answers");
        }
    }
}

async fn reload(state: &Mutex<State>, handle: &rtnetlink::Handle) {
    let mut st = state.lock().await;
    let new = match Config::load(&st.config_path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: config rejected; keeping the running config");
            st.reload_failures += 1;
            return;
        }
    };
    if new.vrrp != st.config.vrrp {
        tracing::warn!(
            "SIGHUP: [vrrp] settings changed; they take effect at the next restart (a reload never moves the VIP)"
        );
    }
    let old = &st.config.daemon;
    if new.daemon != *old {
        tracing::warn!(
            "SIGHUP: [daemon] settings changed; they take effect at the next restart (services are applied now)"
        );
    }
    let ips = backend_ips(&new, &st.overrides);
    if let Some(link) = st.link {
        let iface = st.config.daemon.interface.clone();
        match net::resolve(handle, &iface, link.index, &ips, RESOLVE_WAIT).await {
            Ok(found) => st.macs.extend(found),
            Err(e) => tracing::warn!(error = %e, "SIGHUP: neighbour look-up failed"),
        }
    }
    let old_services = std::mem::replace(&mut st.config.services, new.services);
    match st.apply() {
        Ok(r) => {
            tracing::info!(
                services_added = r.services_added,
                services_removed = r.services_removed,
                backends_added = r.backends_added,
                backends_removed = r.backends_removed,
                tables_written = r.tables_written,
                "SIGHUP: config applied"
            );
            log_unresolved(&ips, &st.macs);
            st.loaded_at = SystemTime::now();
            st.reloads += 1;
        }
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: applying the config failed; going back to the running config");
            st.config.services = old_services;
            st.reload_failures += 1;
            if let Err(e) = st.apply() {
                tracing::error!(error = %e, "restoring the running config failed; the data path may be partly updated");
            }
        }
    }
}

/// Ticks to skip after a scan of the connection table that took `took`.
fn scan_skip(took: Duration) -> u32 {
    let quiet = took.saturating_mul(SCAN_SPACING);
    u32::try_from(quiet.as_nanos() / TICK.as_nanos())
        .unwrap_or(u32::MAX)
        .min(SCAN_SKIP_MAX)
}

/// Flows per backend (and expiry) from one pass over the connection table, then freeing the
/// removed backends no flow uses any more.
fn scan(st: &mut State) {
    let live: HashSet<u32> = st
        .engine
        .services()
        .flat_map(|s| s.backends.values().map(|b| b.id))
        .collect();
    // Flows of freed backends, and of backends down by health checks, leave the table, so
    // their clients get a new backend at once.
    let down: HashSet<u32> = st
        .engine
        .services()
        .flat_map(|s| s.backends.values().filter(|b| b.health_down).map(|b| b.id))
        .collect();
    let started = Instant::now();
    let counts = st
        .plane
        .flows(|id| !live.contains(&id) || down.contains(&id));
    st.scan_skip = scan_skip(started.elapsed());
    let State { engine, plane, .. } = st;
    let flows_of = |id| {
        counts.active.get(&id).copied().unwrap_or(0) + counts.closing.get(&id).copied().unwrap_or(0)
    };
    match plane.reap(engine, flows_of) {
        Ok(freed) if !freed.is_empty() => {
            tracing::info!(ids = ?freed, "removed backends have no flows left: freed")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "freeing removed backends failed"),
    }
    st.counts = counts;
}

/// The tick: the connection table's scan when due ([`SCAN_SPACING`]), tracked conditions,
/// MAC look-ups.
async fn refresh(state: &Mutex<State>, handle: &rtnetlink::Handle, all_macs: bool) {
    let mut st = state.lock().await;
    if st.scan_skip > 0 {
        st.scan_skip -= 1;
    } else {
        scan(&mut st);
    }
    track(&st, handle).await;

    let Some(link) = st.link else {
        return; // the proxy needs no MACs: the kernel resolves them when it connects
    };
    let ips = backend_ips(&st.config, &st.overrides);
    let wanted: Vec<Ipv4Addr> = if all_macs {
        ips
    } else {
        ips.into_iter()
            .filter(|ip| !st.macs.contains_key(ip))
            .collect()
    };
    if wanted.is_empty() {
        return;
    }
    let iface = st.config.daemon.interface.clone();
    let found = match net::resolve(handle, &iface, link.index, &wanted, Duration::ZERO).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "neighbour look-up failed");
            return;
        }
    };
    let learned: Vec<(Ipv4Addr, [u8; 6])> = found
        .into_iter()
        .filter(|(ip, mac)| st.macs.get(ip) != Some(mac))
        .collect();
    if learned.is_empty() {
        return;
    }
    for (ip, mac) in &learned {
        tracing::info!(backend = %ip, mac = %net::mac_string(mac), "backend MAC learned");
    }
    st.macs.extend(learned);
    if let Err(e) = st.apply() {
        tracing::error!(error = %e, "applying learned backend MACs failed");
    }
}

async fn handle_request(state: &Mutex<State>, req: Request) -> Response {
    let mut st = state.lock().await;
    let result = match req {
        Request::Status {} => {
            return match status(&st) {
                Ok(s) => Response::Status(Box::new(s)),
                Err(e) => Response::Error {
                    message: format!("{e:#}"),
                },
            };
        }
        Request::BackendAdd {
            service,
            addr,
            weight,
        } => backend_add(&mut st, &service, &addr, weight).await,
        Request::BackendWeight {
            service,
            addr,
            weight,
        } => backend_weight(&mut st, &service, &addr, weight),
        Request::BackendDrain { service, addr } => {
            backend_admin(&mut st, &service, &addr, Some(AdminOverride::Draining))
        }
        Request::BackendMaintenance { service, addr, on } => backend_admin(
            &mut st,
            &service,
            &addr,
            on.then_some(AdminOverride::Maintenance),
        ),
        Request::BackendRemove {
            service,
            addr,
            force,
        } => backend_remove(&mut st, &service, &addr, force),
    };
    match result {
        Ok(message) => {
            tracing::info!(change = %message, "lbctl");
            Response::Done { message }
        }
        Err(message) => Response::Error { message },
    }
}

fn check_weight(weight: u32) -> Result<u32, String> {
    if (1..=MAX_WEIGHT).contains(&weight) {
        Ok(weight)
    } else {
        Err(format!(
            "weight {weight} is out of range (allowed: 1 to {MAX_WEIGHT})"
        ))
    }
}

/// The service and backend address of a request, checked.
fn target(st: &State, service: &str, addr: &str) -> Result<(ServiceKey, Ipv4Addr), String> {
    let key = st.find_service(service)?;
    let ip = parse_backend_addr(addr, key.vip.port()).map_err(|e| format!("address: {e}"))?;
    Ok((key, ip))
}

/// Checks that a backend exists and is not removed; the error lists the service's backends.
fn existing(st: &State, key: &ServiceKey, ip: Ipv4Addr) -> Result<u32, String> {
    match st.backend(key, ip) {
        Some(b) if b.admin != Admin::Removed => Ok(b.id),
        _ => {
            let list: Vec<String> = st
                .engine
                .service(key)
                .map(|s| {
                    s.backends
                        .values()
                        .filter(|b| b.admin != Admin::Removed)
                        .map(|b| b.addr.to_string())
                        .collect()
                })
                .unwrap_or_default();
            Err(format!(
                "{ip} is not a backend of {} (backends: {}); add it with `lbctl backend add`",
                st.service_name(key),
                if list.is_empty() {
                    "none".into()
                } else {
                    list.join(", ")
                }
            ))
        }
    }
}

/// Saves `new` overrides, then applies them; if applying fails the old ones come back.
fn commit(st: &mut State, new: Overrides) -> Result<(), String> {
    st.state_file
        .save(&new)
        .map_err(|e| format!("{e}; nothing was changed"))?;
    let old = std::mem::replace(&mut st.overrides, new);
    if let Err(e) = st.apply() {
        st.overrides = old;
        let restore = st.state_file.save(&st.overrides).err();
        if let Err(again) = st.apply() {
            tracing::error!(error = %again, "restoring the previous backends failed");
        }
        return Err(match restore {
            None => format!("{e}; the change was undone"),
            Some(r) => format!("{e}; undoing it in the state file failed too: {r}"),
        });
    }
    Ok(())
}

async fn backend_add(
    st: &mut State,
    service: &str,
    addr: &str,
    weight: Option<u32>,
) -> Result<String, String> {
    let (key, ip) = target(st, service, addr)?;
    let weight = check_weight(weight.unwrap_or(1))?;
    if matches!(st.backend(&key, ip), Some(b) if b.admin != Admin::Removed) {
        return Err(format!(
            "{ip} is already a backend of {}; change its weight with `lbctl backend weight`",
            st.service_name(&key)
        ));
    }
    let in_config = st
        .config
        .services
        .iter()
        .find(|s| s.key() == key)
        .and_then(|s| s.backends.iter().find(|b| b.addr == ip))
        .map(|b| b.weight);
    let mut new = st.overrides.clone();
    new.update(&key.to_string(), ip, |o| {
        *o = Default::default();
        o.added = in_config.is_none();
        o.weight = (in_config != Some(weight)).then_some(weight);
    });
    // Learn its MAC first (XDP), so that it enters rotation with the change.
    if let Some(link) = st.link {
        let iface = st.config.daemon.interface.clone();
        match net::resolve(&st.netlink, &iface, link.index, &[ip], RESOLVE_WAIT).await {
            Ok(found) => st.macs.extend(found),
            Err(e) => tracing::warn!(backend = %ip, error = %e, "neighbour look-up failed"),
        }
    }
    commit(st, new)?;
    let note = if st.macs.contains_key(&ip) || !st.plane.needs_macs() {
        ""
    } else {
        "; no ARP answer yet: out of rotation until it answers"
    };
    Ok(format!(
        "added {ip} to {} with weight {weight}{note}",
        st.service_name(&key)
    ))
}

fn backend_weight(
    st: &mut State,
    service: &str,
    addr: &str,
    weight: u32,
) -> Result<String, String> {
    let (key, ip) = target(st, service, addr)?;
    let weight = check_weight(weight)?;
    existing(st, &key, ip)?;
    let config_weight = st.backend(&key, ip).and_then(|b| b.config_weight);
    let mut new = st.overrides.clone();
    new.update(&key.to_string(), ip, |o| {
        o.weight = (config_weight != Some(weight)).then_some(weight)
    });
    commit(st, new)?;
    Ok(format!(
        "{ip} in {} now has weight {weight}",
        st.service_name(&key)
    ))
}

fn backend_admin(
    st: &mut State,
    service: &str,
    addr: &str,
    admin: Option<AdminOverride>,
) -> Result<String, String> {
    let (key, ip) = target(st, service, addr)?;
    let id = existing(st, &key, ip)?;
    let mut new = st.overrides.clone();
    new.update(&key.to_string(), ip, |o| o.admin = admin);
    commit(st, new)?;
    // Count now, not from the last tick: the operator reads this number.
    st.counts = st.plane.flows(|_| false);
    let flows = st.counts.active.get(&id).copied().unwrap_or(0);
    let name = st.service_name(&key);
    Ok(match admin {
        Some(AdminOverride::Draining) => {
            format!("draining {ip} in {name}: no new flows; {flows} open flows go on")
        }
        Some(AdminOverride::Maintenance) => {
            format!("{ip} in {name} is in maintenance: no new flows; {flows} open flows go on")
        }
        None => format!("{ip} in {name} is back in rotation"),
    })
}

fn backend_remove(
    st: &mut State,
    service: &str,
    addr: &str,
    force: bool,
) -> Result<String, String> {
    let (key, ip) = target(st, service, addr)?;
    let id = existing(st, &key, ip)?;
    // Count now, not from the last tick: the answer decides whether flows get cut.
    let counts = st.plane.flows(|_| false);
    // Open flows decide, as IPVS's ActiveConn does; closing ones (FIN or RST seen) are ending.
    let flows = counts.active.get(&id).copied().unwrap_or(0);
    let closing = counts.closing.get(&id).copied().unwrap_or(0);
    st.counts = counts;
    let name = st.service_name(&key);
    if flows > 0 && !force {
        return Err(format!(
            "{ip} has {flows} open flows in {name}; removing it would cut them. Drain it first \
             (`lbctl backend drain {name} {ip} --wait`) or pass --force"
        ));
    }
    let added_at_runtime = st
        .backend(&key, ip)
        .is_some_and(|b| b.source == Source::Lbctl);
    let mut new = st.overrides.clone();
    new.update(&key.to_string(), ip, |o| {
        // A config backend stays removed through the state file; a runtime one just goes.
        *o = Default::default();
        o.removed = !added_at_runtime;
    });
    commit(st, new)?;
    let mut cut = 0;
    // Without --force a removed backend keeps its closing flows until they end (the tick frees it).
    if force && flows + closing > 0 {
        let State { engine, plane, .. } = &mut *st;
        if let Ok(Some(freed)) = plane.free_now(engine, &key, ip) {
            cut = plane.cut(freed);
        }
    }
    Ok(if cut > 0 {
        format!("removed {ip} from {name}; cut {cut} flows")
    } else if force && flows > 0 && !st.plane.needs_macs() {
        format!("removed {ip} from {name}; its {flows} proxied connections run to their end")
    } else {
        format!("removed {ip} from {name}")
    })
}

/// How a backend differs from the config file, for `lbctl status`.
fn override_notes(b: &BackendRec, o: Option<&crate::state::BackendOverride>) -> Vec<String> {
    let mut notes = Vec::new();
    let Some(o) = o else { return notes };
    if o.added {
        notes.push("added by lbctl (not in the config file)".into());
    }
    if let Some(w) = o.weight {
        match b.config_weight {
            Some(c) => notes.push(format!("weight {w} by lbctl (config file: {c})")),
            None => notes.push(format!("weight {w} by lbctl")),
        }
    }
    match o.admin {
        Some(AdminOverride::Draining) => notes.push("drained by lbctl".into()),
        Some(AdminOverride::Maintenance) => notes.push("maintenance by lbctl".into()),
        None => {}
    }
    if o.removed {
        notes.push("removed by lbctl (the config file lists it)".into());
    }
    notes
}

fn status(st: &State) -> anyhow::Result<Status> {
    let stats = st.plane.stats(&st.engine).context("reading the counters")?;
    let at = |i: u32| stats.get(i as usize).copied().unwrap_or_default();
    let services = st
        .engine
        .services()
        .map(|s| {
            let c = at(STATS_SERVICE_BASE + s.id);
            ServiceStatus {
                name: s.config.name.clone(),
                vip: s.config.vip.to_string(),
                proto: s.config.proto.to_string(),
                scheduler: s.config.scheduler.to_string(),
                packets: c.packets,
                bytes: c.bytes,
                backends: s
                    .backends
                    .values()
                    .map(|b| {
                        let c = at(STATS_BACKEND_BASE + b.id);
                        BackendStatus {
                            addr: b.addr.to_string(),
                            weight: b.weight,
                            state: b.state_name().into(),
                            source: match b.source {
                                Source::Config => "config",
                                Source::Lbctl => "lbctl",
                            }
                            .into(),
                            overrides: override_notes(
                                b,
                                st.overrides.get(&s.config.key().to_string(), b.addr),
                            ),
                            mac: b.mac.as_ref().map(net::mac_string),
                            packets: c.packets,
                            bytes: c.bytes,
                            flows: st.counts.active.get(&b.id).copied().unwrap_or(0),
                            closing_flows: st.counts.closing.get(&b.id).copied().unwrap_or(0),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(Status {
        version: env!("CARGO_PKG_VERSION").into(),
        config_path: st.config_path.display().to_string(),
        state_file: st.state_file.path().display().to_string(),
        interface: st.config.daemon.interface.clone(),
        datapath: st.plane.name().into(),
        datapath_reason: st.mode_reason.clone(),
        uptime_s: st.started.elapsed().as_secs(),
        config_loaded_unix: st
            .loaded_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        conntrack_entries: st.counts.entries,
        conntrack_max: st.config.daemon.conntrack_max,
        reasons: (0..reason::COUNT)
            .map(|r| ReasonCount {
                reason: reason::NAMES[r as usize].into(),
                packets: at(r).packets,
            })
            .collect(),
        services,
        vrrp: st.vrrp.as_ref().map(vrrp_status),
    })
}

/// What a Prometheus scrape shows: the status, plus health, VRRP and reload counters.
fn metrics_snapshot(st: &State) -> anyhow::Result<MetricsSnapshot> {
    let status = status(st)?;
    let mut snap = MetricsSnapshot::from_status(&status);
    snap.fill_health(&st.health.status());
    snap.config_reloads = st.reloads;
    snap.config_reload_failures = st.reload_failures;
    if let Some(v) = &st.vrrp {
        let s = v.status.borrow();
        snap.vrrp = Some(VrrpMetrics {
            state: match s.state {
                vrrp::State::Initialize => VrrpState::Init,
                vrrp::State::Backup => VrrpState::Backup,
                vrrp::State::Master => VrrpState::Master,
            },
            transitions: s.counters.became_master + s.counters.became_backup,
        });
    }
    Ok(snap)
}

/// Tells systemd (Type=notify) about readiness, reloads and the watchdog; nothing without it.
fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// Half the systemd watchdog interval, when the unit sets WatchdogSec.
fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .map(|d| d / 2)
        .filter(|d| !d.is_zero())
}

fn vrrp_status(v: &Vrrp) -> VrrpStatus {
    let s = v.status.borrow().clone();
    VrrpStatus {
        vrid: v.config.vrid.get(),
        state: s.state.as_str().into(),
        priority: s.priority,
        configured_priority: v.config.priority.get(),
        master: s.master.map(|a| a.to_string()),
        last_transition_unix: s
            .last_transition
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64()),
        became_master: s.counters.became_master,
        adverts_accepted: s.counters.accepted,
        adverts_dropped: vrrp::DropReason::ALL
            .iter()
            .map(|r| ReasonCount {
                reason: r.as_str().into(),
                packets: s.counters.dropped(*r),
            })
            .filter(|r| r.packets > 0)
            .collect(),
        failed_conditions: v
            .tracker
            .conditions()
            .into_iter()
            .filter(|c| c.failed)
            .map(|c| c.name)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_are_spaced_by_their_length() {
        // A quick scan (a small table, or the proxy's counters) runs every tick.
        assert_eq!(scan_skip(Duration::ZERO), 0);
        assert_eq!(scan_skip(Duration::from_millis(19)), 0);
        // 20 ms × 50 is one tick of quiet: every other tick.
        assert_eq!(scan_skip(Duration::from_millis(20)), 1);
        // A table of millions of flows: 300 ms, then 15 s without a scan.
        assert_eq!(scan_skip(Duration::from_millis(300)), 15);
        // However slow, a minute at most.
        assert_eq!(scan_skip(Duration::from_secs(5)), SCAN_SKIP_MAX);
        assert_eq!(scan_skip(Duration::MAX), SCAN_SKIP_MAX);
    }
}
