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
use aya::Ebpf;
use lb_common::{STATS_BACKEND_BASE, STATS_SERVICE_BASE, reason};
use tokio::{signal::unix::SignalKind, sync::Mutex};

use crate::{
    config::{Config, Datapath},
    control::{self, BackendStatus, ReasonCount, Request, Response, ServiceStatus, Status},
    engine::{Admin, Engine},
    net,
    xdp::{self, AttachMode, FlowCounts, XdpMaps},
};

/// How often counters and the connection table are read, and unresolved MACs retried.
const TICK: Duration = Duration::from_secs(1);
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
    maps: XdpMaps,
    link: net::Link,
    macs: HashMap<Ipv4Addr, [u8; 6]>,
    counts: FlowCounts,
    mode: AttachMode,
    mode_reason: String,
    started: Instant,
    loaded_at: SystemTime,
}

fn backend_ips(config: &Config) -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = config
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.addr))
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Attaches by the configured policy; returns the mode and why.
fn attach(
    ebpf: &mut Ebpf,
    datapath: Datapath,
    interface: &str,
    ifindex: u32,
) -> anyhow::Result<(AttachMode, String)> {
    match datapath {
        Datapath::Xdp => {
            xdp::attach(ebpf, xdp::PROG_LBD, interface, ifindex, AttachMode::Native)
                .context("datapath = \"xdp\" requires native XDP; use datapath = \"auto\" to allow generic mode")?;
            Ok((AttachMode::Native, "datapath = \"xdp\"".into()))
        }
        Datapath::XdpGeneric => {
            xdp::attach(ebpf, xdp::PROG_LBD, interface, ifindex, AttachMode::Generic)?;
            Ok((AttachMode::Generic, "datapath = \"xdp-generic\"".into()))
        }
        Datapath::Auto => {
            match xdp::attach(ebpf, xdp::PROG_LBD, interface, ifindex, AttachMode::Native) {
                Ok(()) => Ok((
                    AttachMode::Native,
                    "datapath = \"auto\": native XDP attached".into(),
                )),
                Err(native) => {
                    tracing::warn!(error = %native, "native XDP failed; falling back to generic XDP");
                    xdp::attach(ebpf, xdp::PROG_LBD, interface, ifindex, AttachMode::Generic)
                        .with_context(|| {
                            format!("generic XDP failed too, after native: {native}")
                        })?;
                    Ok((
                        AttachMode::Generic,
                        format!("datapath = \"auto\": native failed ({native}); generic in use"),
                    ))
                }
            }
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config_path: PathBuf, config: Config) -> anyhow::Result<()> {
    check_privileges()?;
    let handle = net::connect().context("opening a netlink socket")?;
    let iface = config.daemon.interface.clone();
    let link = net::link(&handle, &iface)
        .await
        .with_context(|| format!("daemon.interface = {iface:?}"))?;
    let mut ebpf = xdp::load(
        link.mac,
        [0; 6],
        config.daemon.conntrack_max,
        &[xdp::PROG_LBD],
    )?;
    let mut maps = XdpMaps::new(&mut ebpf)?;

    // Fill the maps before attaching, so the first packet already finds its service.
    let macs = net::resolve(
        &handle,
        &iface,
        link.index,
        &backend_ips(&config),
        RESOLVE_WAIT,
    )
    .await?;
    let mut engine = Engine::new();
    let report = engine
        .apply(&config, &macs, &mut maps)
        .context("filling the XDP maps")?;
    log_unresolved(&config, &macs);
    let (mode, mode_reason) = attach(&mut ebpf, config.daemon.datapath, &iface, link.index)?;
    tracing::info!(interface = %iface, mode = mode.as_str(), reason = %mode_reason, services = report.services_added, backends = report.backends_added, "XDP attached");

    let socket_path = config.daemon.control_socket.clone();
    let listener = control::bind(&socket_path).await?;
    let state = Arc::new(Mutex::new(State {
        config_path,
        config,
        engine,
        maps,
        link,
        macs,
        counts: FlowCounts::default(),
        mode,
        mode_reason,
        started: Instant::now(),
        loaded_at: SystemTime::now(),
    }));
    let handler_state = state.clone();
    let server = tokio::spawn(control::serve(
        listener,
        Arc::new(move |req: Request| {
            let st = handler_state.clone();
            async move { handle_request(&st, req).await }
        }),
    ));
    tracing::info!(socket = %socket_path.display(), "control socket ready");

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
            _ = hup.recv() => reload(&state, &handle).await,
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
    server.abort();
    drop(ebpf); // detaches the program (its link closes)
    if let Err(e) = std::fs::remove_file(&socket_path) {
        tracing::warn!(socket = %socket_path.display(), error = %e, "cannot remove the control socket");
    }
    tracing::info!("XDP detached; lbd stopped");
    Ok(())
}

fn log_unresolved(config: &Config, macs: &HashMap<Ipv4Addr, [u8; 6]>) {
    for ip in backend_ips(config) {
        if !macs.contains_key(&ip) {
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
            return;
        }
    };
    let old = &st.config.daemon;
    if new.daemon != *old {
        tracing::warn!(
            "SIGHUP: [daemon] settings changed; they take effect at the next restart (services are applied now)"
        );
    }
    let ips = backend_ips(&new);
    let (iface, index) = (st.config.daemon.interface.clone(), st.link.index);
    match net::resolve(handle, &iface, index, &ips, RESOLVE_WAIT).await {
        Ok(found) => st.macs.extend(found),
        Err(e) => tracing::warn!(error = %e, "SIGHUP: neighbour look-up failed"),
    }
    let State {
        engine, maps, macs, ..
    } = &mut *st;
    match engine.apply(&new, macs, maps) {
        Ok(r) => {
            tracing::info!(
                services_added = r.services_added,
                services_removed = r.services_removed,
                backends_added = r.backends_added,
                backends_removed = r.backends_removed,
                tables_written = r.tables_written,
                "SIGHUP: config applied"
            );
            log_unresolved(&new, &st.macs);
            st.config.services = new.services;
            st.loaded_at = SystemTime::now();
        }
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: applying the config failed; the data path may be partly updated")
        }
    }
}

/// The tick: flows per backend (and expiry), freeing removed backends, MAC look-ups.
async fn refresh(state: &Mutex<State>, handle: &rtnetlink::Handle, all_macs: bool) {
    let mut st = state.lock().await;
    let live: std::collections::HashSet<u32> = st
        .engine
        .services()
        .flat_map(|s| s.backends.values().map(|b| b.id))
        .collect();
    let counts = st
        .maps
        .scan_flows(xdp::coarse_now_ns(), Default::default(), |_, id| {
            !live.contains(&id)
        });
    let State { engine, maps, .. } = &mut *st;
    match engine.reap_removed(
        |id| {
            counts.active.get(&id).copied().unwrap_or(0)
                + counts.closing.get(&id).copied().unwrap_or(0)
        },
        maps,
    ) {
        Ok(freed) if !freed.is_empty() => {
            tracing::info!(ids = ?freed, "removed backends have no flows left: freed")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "freeing removed backends failed"),
    }
    st.counts = counts;

    let ips = backend_ips(&st.config);
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
    let (iface, index) = (st.config.daemon.interface.clone(), st.link.index);
    let found = match net::resolve(handle, &iface, index, &wanted, Duration::ZERO).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "neighbour look-up failed");
            return;
        }
    };
    let changed = found.iter().any(|(ip, mac)| st.macs.get(ip) != Some(mac));
    if changed {
        for (ip, mac) in &found {
            if st.macs.get(ip) != Some(mac) {
                tracing::info!(backend = %ip, mac = %net::mac_string(mac), "backend MAC learned");
            }
        }
        st.macs.extend(found);
        let State {
            engine,
            maps,
            macs,
            config,
            ..
        } = &mut *st;
        if let Err(e) = engine.apply(config, macs, maps) {
            tracing::error!(error = %e, "applying learned backend MACs failed");
        }
    }
}

async fn handle_request(state: &Mutex<State>, req: Request) -> Response {
    match req {
        Request::Status {} => {
            let st = state.lock().await;
            match status(&st) {
                Ok(s) => Response::Status(Box::new(s)),
                Err(e) => Response::Error {
                    message: format!("{e:#}"),
                },
            }
        }
    }
}

fn status(st: &State) -> anyhow::Result<Status> {
    let stats = st.maps.read_stats().context("reading the counters")?;
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
                            state: match (b.admin, b.mac) {
                                (Admin::Removed, _) => "removed",
                                (Admin::Active, None) => "unresolved",
                                (Admin::Active, Some(_)) => "active",
                            }
                            .into(),
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
        interface: st.config.daemon.interface.clone(),
        datapath: format!("xdp-{}", st.mode.as_str()),
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
    })
}
