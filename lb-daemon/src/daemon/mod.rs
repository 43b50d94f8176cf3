//! The daemon: its core and the thin I/O around it.
//!
//! ```text
//! control socket ─┐                          ┌─► Datapath: XDP maps, or the proxies
//! health checks ──┼─► Command (mpsc) ─► Core ─┤   (engine: services, ids, one Maglev table each)
//! SIGHUP, ticks ──┤    one thread owns   ▲    └─► Status ─► lbctl, /metrics
//! metrics scrape ─┘    all the state     │
//!                    neighbour look-ups (async tasks), flow-table scans (a thread) report back
//! VRRP speaker: a thread and runtime of its own; the core reads its status, sets its tracker
//! ```
//!
//! - [`core`]: the [`Core`](core::Core) and its commands; [`handlers`]: the control requests and
//!   the status; [`start`]: the data path choice.
//! - This file: [`run`] wires them: the runtime's tasks (control socket, metrics, health checks,
//!   ticks, signals, neighbour look-ups), the core thread, the scan thread and the VRRP thread.

pub mod core;
pub mod handlers;
pub mod start;
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError, mpsc as std_mpsc},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::SignalKind,
    sync::{mpsc, oneshot},
};
use tokio_util::sync::CancellationToken;

use self::core::{
    AfterResolve, AfterScan, Command, Core, CoreSetup, Effects, ListDone, Notify, StatusBoard,
    TICK, VrrpHandles,
};
use crate::{
    config::Config,
    control::{self, Request, Response},
    datapath::{CounterSource, Datapath, FlowTable},
    flows::FlowQuery,
    handover::{self, Inherited},
    health::{HealthMonitor, Target},
    limits, metrics, net,
    overrides::StateFile,
    rates::{FLOOD_QUIET, FloodEvent, RateBook},
    status::Status,
};

/// Commands waiting for the core at most; senders wait for room beyond it.
const COMMAND_QUEUE: usize = 1024;
/// How long the VRRP speaker may take to hand over at stop: until its successor speaks (the
/// backup's skew time) and a second more, or Master_Down_Interval (3.6 s at 1 s adverts) and
/// that second when nobody does.
const VRRP_STOP: Duration = Duration::from_secs(10);
/// How long a replaced lbd (`lbd --replace`) lets its open proxied connections go on after
/// handing its listeners over; then it closes what is left and exits.
const HANDOVER_GRACE: Duration = Duration::from_secs(60);

/// What the table thread does: a scan, or a listing for `lbctl flows`.
enum TableJob {
    /// Count flows per backend, cut those of the `dead` backends; then [`Command::Scanned`].
    Scan { dead: HashSet<u32>, then: AfterScan },
    /// List flows; `done` answers the request.
    List { query: FlowQuery, done: ListDone },
}

/// The core's effects, carried out on the runtime and the scan thread.
struct IoEffects {
    runtime: tokio::runtime::Handle,
    commands: mpsc::Sender<Command>,
    netlink: rtnetlink::Handle,
    /// The interface, when backends need MACs (XDP).
    link: Option<(String, net::Link)>,
    scans: std_mpsc::Sender<TableJob>,
    health: HealthMonitor,
    watchdog: Option<(Duration, Instant)>,
    /// The VIP routes wanted in lbd's table, for the announcer task.
    announcer: tokio::sync::watch::Sender<Option<(u32, Vec<IpAddr>)>>,
}

impl Effects for IoEffects {
    fn resolve(&mut self, ips: Vec<IpAddr>, wait: Duration, then: AfterResolve) {
        let Some((iface, link)) = self.link.clone() else {
            let _ = self.commands.try_send(Command::Resolved {
                found: HashMap::new(),
                then,
            });
            return;
        };
        let (netlink, commands) = (self.netlink.clone(), self.commands.clone());
        self.runtime.spawn(async move {
            let found = match net::resolve(&netlink, &iface, link.index, &ips, wait).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "neighbour look-up failed");
                    HashMap::new()
                }
            };
            let _ = commands.send(Command::Resolved { found, then }).await;
        });
    }

    fn scan(&mut self, dead: HashSet<u32>, then: AfterScan) {
        if let Err(std_mpsc::SendError(TableJob::Scan { then, .. })) =
            self.scans.send(TableJob::Scan { dead, then })
        {
            // The scan thread is gone (stopping): answer with no flows rather than never.
            let _ = self.commands.try_send(Command::Scanned {
                counts: Default::default(),
                took: Duration::ZERO,
                then,
            });
        }
    }

    fn announce(&mut self, table: u32, vips: Vec<IpAddr>) {
        self.announcer.send_replace(Some((table, vips)));
    }

    fn list_flows(&mut self, query: FlowQuery, done: ListDone) {
        if let Err(std_mpsc::SendError(TableJob::List { done, .. })) =
            self.scans.send(TableJob::List { query, done })
        {
            // Stopping: an empty answer rather than none.
            done(Default::default(), Duration::ZERO);
        }
    }

    fn health_targets(&mut self, targets: Vec<Target>) {
        let _entered = self.runtime.enter();
        self.health.set_targets(targets);
    }

    fn notify(&mut self, state: Notify) {
        let states = match state {
            Notify::Reloading => vec![sd_notify::NotifyState::Reloading],
            Notify::Ready => vec![sd_notify::NotifyState::Ready],
            Notify::Alive => match &mut self.watchdog {
                Some((every, last)) if last.elapsed() >= *every => {
                    *last = Instant::now();
                    vec![sd_notify::NotifyState::Watchdog]
                }
                _ => return,
            },
        };
        notify_systemd(&states);
    }
}

/// Answers status requests and scrapes without the core: its last published view, filled with
/// the counters read now.
#[derive(Clone)]
struct StatusReader {
    board: StatusBoard,
    counters: Arc<dyn CounterSource>,
    /// The VRRP speaker, read live: its state changes reach no core command.
    vrrp: Vec<VrrpHandles>,
    /// Rates from the sampler ([`sample_rates`]).
    rates: Arc<Mutex<RateBook>>,
}

impl StatusReader {
    async fn read(&self) -> Result<Status, String> {
        let view = self
            .board
            .load_full()
            .ok_or_else(|| "lbd is starting".to_string())?;
        let counters = self.counters.clone();
        // A thousand map reads: off the async workers.
        let read = tokio::task::spawn_blocking(move || counters.counters())
            .await
            .map_err(|e| format!("reading the counters: {e}"))?;
        let counters = read.map_err(|e| format!("reading the counters: {e}"))?;
        let mut status = view.fill(&counters);
        view.fill_rates(
            &mut status,
            &self.rates.lock().unwrap_or_else(PoisonError::into_inner),
        );
        status.vrrp = handlers::vrrp_status(&self.vrrp, vrrp::wire::AddressFamily::Ipv4);
        status.vrrp6 = handlers::vrrp_status(&self.vrrp, vrrp::wire::AddressFamily::Ipv6);
        Ok(status)
    }
}

/// How often the rates are sampled (what `lbctl top` and the status page refresh at).
const RATE_INTERVAL: Duration = Duration::from_secs(1);

/// Reads the counters once a second into the rate book, until `stop`.
async fn sample_rates(
    counters: Arc<dyn CounterSource>,
    book: Arc<Mutex<RateBook>>,
    stop: CancellationToken,
) {
    let origin = Instant::now();
    let mut tick = tokio::time::interval(RATE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let source = counters.clone();
        let read = tokio::task::spawn_blocking(move || source.counters()).await;
        match read {
            Ok(Ok(c)) => {
                let now = origin.elapsed();
                let mut book = book.lock().unwrap_or_else(PoisonError::into_inner);
                book.observe(now, &c.backends);
                let held = c
                    .reasons
                    .get(lb_common::reason::FLOOD_GUARD as usize)
                    .map_or(0, |r| r.packets);
                match book.flood.observe(now, held) {
                    Some(FloodEvent::Started) => tracing::warn!(
                        "new-flow flood: above daemon.flood_new_flows_per_sec, new flows go by \
                         Maglev without a connection-table entry (XDP) or wait at accept (proxy); \
                         established flows keep theirs"
                    ),
                    Some(FloodEvent::Ended { held, secs }) => tracing::info!(
                        held,
                        seconds = secs,
                        "new-flow flood over: the guard held nothing back for {}s",
                        FLOOD_QUIET.as_secs()
                    ),
                    None => {}
                }
            }
            // Logged at debug: the status reader reports the same failure to whoever asks.
            Ok(Err(e)) => tracing::debug!(error = %e, "rates: reading the counters failed"),
            Err(e) => tracing::debug!(error = %e, "rates: the reader task failed"),
        }
    }
}

/// The table thread: one scan or listing at a time; a scan's result goes back to the core, a
/// listing answers its request.
fn scan_thread(
    mut table: Box<dyn FlowTable>,
    jobs: std_mpsc::Receiver<TableJob>,
    commands: mpsc::Sender<Command>,
) {
    while let Ok(job) = jobs.recv() {
        let started = Instant::now();
        match job {
            TableJob::Scan { dead, then } => {
                let counts = table.scan(&|id| dead.contains(&id));
                let took = started.elapsed();
                if commands
                    .blocking_send(Command::Scanned { counts, took, then })
                    .is_err()
                {
                    return;
                }
            }
            TableJob::List { query, done } => {
                let listing = table.list(&query);
                done(listing, started.elapsed());
            }
        }
    }
}

/// Runs the VRRP speaker on a thread and runtime of its own, where nothing the daemon does can
/// delay an advert. Returns the thread's end signal.
fn spawn_vrrp(
    speaker: vrrp::Speaker,
    stop: CancellationToken,
) -> anyhow::Result<std_mpsc::Receiver<Result<(), String>>> {
    let (done_tx, done_rx) = std_mpsc::channel();
    std::thread::Builder::new()
        .name("lbd-vrrp".into())
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(speaker.run(stop)).map_err(|e| format!("{e:#}")),
                Err(e) => Err(format!("starting the VRRP runtime: {e}")),
            };
            let _ = done_tx.send(result);
        })
        .context("starting the VRRP thread")?;
    Ok(done_rx)
}

/// How long a stopping node forwards after withdrawing its VIPs, for the routers to move the
/// traffic (BIRD passes a withdrawal on within milliseconds).
const WITHDRAW_GRACE: Duration = Duration::from_millis(500);

/// Keeps lbd's route table as the core last wanted it: adds the missing VIP routes and
/// deletes the others (also those a crashed lbd left). Retries a failure after a second.
async fn announce_routes(
    netlink: rtnetlink::Handle,
    mut wanted: tokio::sync::watch::Receiver<Option<(u32, Vec<IpAddr>)>>,
) {
    let lo = match net::link(&netlink, "lo").await {
        Ok(l) => l.index,
        Err(e) => {
            tracing::error!(error = %e, "announce: no loopback interface: the VIPs cannot be announced");
            return;
        }
    };
    loop {
        let want = wanted.borrow_and_update().clone();
        if let Some((table, vips)) = want {
            let result = async {
                let have = net::vip_routes(&netlink, table).await?;
                for vip in vips.iter().filter(|v| !have.contains(v)) {
                    net::add_vip_route(&netlink, table, lo, *vip).await?;
                }
                for vip in have.iter().filter(|v| !vips.contains(v)) {
                    net::del_vip_route(&netlink, table, lo, *vip).await?;
                }
                Ok::<(), net::NetError>(())
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, table, "announce: updating the VIP routes failed; retrying in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        if wanted.changed().await.is_err() {
            return;
        }
    }
}

/// Deletes every VIP route of lbd from `table`.
async fn withdraw_all(netlink: &rtnetlink::Handle, table: u32) {
    let result = async {
        let lo = net::link(netlink, "lo").await?.index;
        for vip in net::vip_routes(netlink, table).await? {
            net::del_vip_route(netlink, table, lo, vip).await?;
        }
        Ok::<(), net::NetError>(())
    }
    .await;
    match result {
        Ok(()) => tracing::info!(table, "stopping: the VIPs are withdrawn"),
        Err(e) => tracing::error!(error = %e, table, "stopping: withdrawing the VIPs failed"),
    }
}

/// Raises the open-files soft limit to what the configured bounds need (up to the hard
/// limit), and says when the hard limit is too low for them.
fn raise_nofile(config: &Config) {
    let budget = limits::FdBudget::of(config);
    match limits::raise(budget.need()) {
        Ok(r) => {
            if r.soft != r.before.soft {
                tracing::info!(from = r.before.soft, to = r.soft, need = %budget, "open files: soft limit raised for the configured bounds");
            }
            if let Some(short) = limits::shortfall(&budget, r.before.hard) {
                tracing::warn!("{short}");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, need = %budget, "open files: the soft limit could not be raised");
        }
    }
}

/// Hands the data path's listening sockets to a successor (`lbd --replace`) on its control
/// connection; the connection comes back for the `released` frame.
async fn hand_listeners(
    stream: tokio::net::UnixStream,
    commands: &mpsc::Sender<Command>,
) -> anyhow::Result<std::os::unix::net::UnixStream> {
    let (tx, rx) = std_mpsc::channel();
    commands
        .send(Command::Listeners(tx))
        .await
        .map_err(|_| anyhow::anyhow!("the core is gone"))?;
    let stream = stream.into_std().context("the successor's connection")?;
    stream
        .set_nonblocking(false)
        .context("the successor's connection")?;
    tokio::task::spawn_blocking(move || {
        let listeners = rx
            .recv_timeout(Duration::from_secs(5))
            .context("the core did not hand out the listeners")?;
        handover::send_sockets(&stream, &listeners).context("sending the listeners")?;
        tracing::info!(
            listeners = listeners.len(),
            "listeners handed to a successor lbd"
        );
        Ok(stream)
    })
    .await
    .context("the hand-over task")?
}

/// Runs the daemon until SIGTERM or SIGINT, or until a successor takes over (`lbd --replace`).
/// `inherited`: listening sockets from systemd or the lbd this one replaces.
pub async fn run(config_path: PathBuf, config: Config, inherited: Inherited) -> anyhow::Result<()> {
    raise_nofile(&config);
    let runtime = tokio::runtime::Handle::current();
    let netlink = net::connect().context("opening a netlink socket")?;
    let replacing = inherited.replaced;
    let handed = inherited
        .source
        .clone()
        .map(|from| format!("; listeners from {from}"));
    let chosen = start::choose(&config, &netlink, runtime.clone(), inherited).await?;
    let mut datapath = chosen.datapath;
    let state_file = StateFile::in_dir(&config.daemon.state_dir);
    let overrides = state_file.load()?;

    // Backend MACs before the first apply, so that backends enter rotation at once.
    // What an adopted data path knows already needs no look-up.
    let mut macs = chosen
        .adoption
        .as_ref()
        .map(start::Adoption::macs_by_addr)
        .unwrap_or_default();
    if let Some(l) = &chosen.link {
        let ips: Vec<IpAddr> = core::backend_ips(&config, &overrides)
            .into_iter()
            .filter(|ip| !macs.contains_key(ip))
            .collect();
        let found = net::resolve(
            &netlink,
            &config.daemon.interface,
            l.index,
            &ips,
            core::RESOLVE_WAIT,
        )
        .await?;
        macs.extend(found);
    }

    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
    let (scan_tx, scan_rx) = std_mpsc::channel();
    let table = datapath.flow_table()?;
    let counters = datapath.counter_source()?;
    let board = StatusBoard::default();
    let scan_commands = commands_tx.clone();
    let scanner = std::thread::Builder::new()
        .name("lbd-scan".into())
        .spawn(move || scan_thread(table, scan_rx, scan_commands))
        .context("starting the scan thread")?;

    let stop = CancellationToken::new();
    let (health_tx, mut health_rx) = HealthMonitor::channel();
    let announce_config = config.announce;
    let (announcer, announce_rx) = tokio::sync::watch::channel(None);
    let announce_task = tokio::spawn(announce_routes(netlink.clone(), announce_rx));
    let effects = IoEffects {
        announcer,
        runtime: runtime.clone(),
        commands: commands_tx.clone(),
        netlink: netlink.clone(),
        link: chosen.link.map(|l| (config.daemon.interface.clone(), l)),
        scans: scan_tx,
        health: HealthMonitor::new(health_tx, &stop),
        watchdog: watchdog_interval().map(|d| (d, Instant::now())),
    };

    // VRRP last: this node claims the VIP only once it can forward for it. As backup it keeps
    // its data path filled, so taking over needs no set-up.
    let vrrp_stop = CancellationToken::new();
    let mut vrrp_done = Vec::new();
    let mut vrrp = Vec::new();
    for vc in &config.vrrp {
        // A pinned data path forwards across a restart, and a replaced lbd held the VIPs for
        // this one: the VIPs stay, and a start that finds them resumes as master (no failover
        // for a restart).
        let speaker = vrrp::Speaker::new(vc.clone())
            .with_context(|| format!("[vrrp] ({})", vc.family()))?
            .hold_across_restarts(chosen.adoption.is_some() || replacing.is_some());
        // Resigned by lbctl before this start: it stays out.
        speaker.standby_switch().set(overrides.vrrp_resigned);
        let handles = VrrpHandles {
            config: vc.clone(),
            status: speaker.status(),
            tracker: speaker.tracker(),
            standby: speaker.standby_switch(),
        };
        vrrp.push((speaker, handles));
    }
    let socket_path = config.daemon.control_socket.clone();
    let tracked = Core::tracked_interfaces(&config);
    let metrics_addr = config.daemon.metrics_addr;
    let pinned = chosen.adoption.as_ref().map(|a| a.pins.dir().to_path_buf());
    let interface = config.daemon.interface.clone();
    let (core, report) = Core::start(CoreSetup {
        config_path,
        config,
        datapath,
        mode_reason: match &chosen.adoption {
            Some(a) => format!(
                "{}; pinned in {} ({})",
                chosen.reason,
                a.pins.dir().display(),
                match a.found {
                    start::Found::Fresh => "new",
                    start::Found::Adopted => "adopted: flows kept",
                    start::Found::LayoutChanged { .. } => "new map layout: fresh maps",
                }
            ),
            None => chosen.reason.clone(),
        } + handed.as_deref().unwrap_or_default(),
        effects: Box::new(effects),
        state_file,
        overrides,
        macs,
        vrrp: vrrp.iter().map(|(_, h)| h.clone()).collect(),
        board: board.clone(),
        adoption: chosen.adoption,
    })
    .context("setting up the data path")?;
    core.log_unresolved();
    tracing::info!(interface = %interface, datapath = %core.datapath.mode(), reason = %chosen.reason, services = report.services_added, backends = report.backends_added, "data path ready");
    // The core hands the data path back when it stops; it is stopped last (below).
    let core_thread = std::thread::Builder::new()
        .name("lbd-core".into())
        .spawn(move || core.run(commands_rx))
        .context("starting the core thread")?;

    let vrrp_handles: Vec<VrrpHandles> = vrrp.iter().map(|(_, h)| h.clone()).collect();
    let vrrp_hold: Vec<vrrp::HoldSwitch> = vrrp.iter().map(|(s, _)| s.hold_switch()).collect();
    for (speaker, _) in vrrp {
        tracing::info!(vrid = speaker.config().vrid.get(), family = %speaker.config().family(), priority = speaker.config().priority.get(), interface = %speaker.config().interface, "VRRP starting");
        vrrp_done.push(spawn_vrrp(speaker, vrrp_stop.clone())?);
    }

    let listener = control::bind(&socket_path).await?;
    let metrics_listener = metrics::bind(metrics_addr)
        .await
        .context("daemon.metrics_addr")?;
    let rates = Arc::new(Mutex::new(RateBook::new()));
    let rates_task = tokio::spawn(sample_rates(counters.clone(), rates.clone(), stop.clone()));
    let reader = StatusReader {
        board,
        counters,
        vrrp: vrrp_handles,
        rates,
    };
    let metrics_reader = reader.clone();
    let metrics_task = tokio::spawn(metrics::serve_listener(
        metrics_listener,
        move || {
            let reader = metrics_reader.clone();
            async move { reader.read().await }
        },
        stop.clone(),
    ));
    let control_commands = commands_tx.clone();
    let (handover_tx, mut handover_rx) = mpsc::channel(1);
    let server = tokio::spawn(control::serve_with_handover(
        listener,
        Arc::new(move |req: Request| {
            let commands = control_commands.clone();
            let reader = reader.clone();
            async move {
                if let Request::Status {} = req {
                    return match reader.read().await {
                        Ok(s) => Response::Status(Box::new(s)),
                        Err(message) => Response::Error { message },
                    };
                }
                let stopping = || Response::Error {
                    message: "lbd is stopping".into(),
                };
                let (tx, rx) = oneshot::channel();
                if commands.send(Command::Control(req, tx)).await.is_err() {
                    return stopping();
                }
                rx.await.unwrap_or_else(|_| stopping())
            }
        }),
        Some(handover_tx),
    ));
    tracing::info!(socket = %socket_path.display(), "control socket ready");
    notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("balancing"),
    ]);

    // Health results and ticks go to the core as commands.
    let health_commands = commands_tx.clone();
    let health_task = tokio::spawn(async move {
        while let Some(ev) = health_rx.recv().await {
            if health_commands.send(Command::Health(ev)).await.is_err() {
                return;
            }
        }
    });
    let tick_commands = commands_tx.clone();
    let tick_netlink = netlink.clone();
    let tick_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            let mut links = HashMap::new();
            for name in &tracked {
                match net::link_health(&tick_netlink, name).await {
                    Ok(h) => {
                        links.insert(name.clone(), h);
                    }
                    Err(e) => {
                        tracing::warn!(interface = %name, error = %e, "VRRP tracking: interface look-up failed");
                    }
                }
            }
            if tick_commands.send(Command::Tick(links)).await.is_err() {
                return;
            }
        }
    });

    let mut hup = tokio::signal::unix::signal(SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    let mut successor = None;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                if commands_tx.send(Command::Reload).await.is_err() {
                    break;
                }
            }
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
            Some(stream) = handover_rx.recv() => match hand_listeners(stream, &commands_tx).await {
                Ok(s) => {
                    tracing::info!("a successor lbd takes over: stopping, the VIPs and any pinned data path stay for it");
                    successor = Some(s);
                    break;
                }
                Err(e) => tracing::error!(error = %format!("{e:#}"), "hand-over to a successor failed; serving on"),
            },
        }
    }
    // The successor serves the VIPs from where this one leaves them.
    if successor.is_some() {
        for hold in &vrrp_hold {
            hold.set(true);
        }
    }
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    // Withdraw first: the routers send new flows to the other nodes while this one still
    // forwards what arrives.
    announce_task.abort();
    if let Some(a) = announce_config {
        withdraw_all(&netlink, a.table).await;
        tokio::time::sleep(WITHDRAW_GRACE).await;
    }
    server.abort();
    tick_task.abort();
    stop.cancel();
    let _ = metrics_task.await;
    let _ = rates_task.await;
    // Resign first (a priority-0 advert hands over within the skew time, and the VIP leaves this
    // node), then stop forwarding.
    vrrp_stop.cancel();
    for done in vrrp_done {
        let waited = tokio::task::spawn_blocking(move || done.recv_timeout(VRRP_STOP)).await;
        match waited {
            Ok(Ok(Ok(()))) => tracing::info!("VRRP stopped: resigned and removed the VIP"),
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "VRRP ended with an error"),
            Ok(Err(_)) => tracing::error!("VRRP did not stop within {VRRP_STOP:?}"),
            Err(e) => tracing::error!(error = %e, "waiting for VRRP failed"),
        }
    }
    let _ = commands_tx.send(Command::Stop).await;
    drop(commands_tx);
    health_task.abort();
    let joined = tokio::task::spawn_blocking(move || {
        let core = core_thread.join();
        let scan = scanner.join();
        (core, scan)
    })
    .await;
    let datapath: Option<Box<dyn Datapath>> = match joined {
        Ok((Ok(datapath), Ok(()))) => Some(datapath),
        Ok((Ok(datapath), Err(_))) => {
            tracing::error!("the scan thread ended with a panic");
            Some(datapath)
        }
        _ => {
            tracing::error!("the core thread ended with a panic");
            None
        }
    };
    if let Err(e) = std::fs::remove_file(&socket_path) {
        tracing::warn!(socket = %socket_path.display(), error = %e, "cannot remove the control socket");
    }
    // Everything the two cannot share is let go: the successor goes on; the open proxied
    // connections here may finish meanwhile.
    let mut linger = Duration::ZERO;
    if let Some(stream) = successor {
        let frame = handover::Frame::Released {
            pid: std::process::id(),
        };
        match handover::send_frame(&stream, &frame, &[]) {
            Ok(()) => linger = HANDOVER_GRACE,
            Err(e) => tracing::error!(error = %e, "telling the successor failed"),
        }
    }
    // Stop forwarding: XDP detaches unless pinned; the proxies close their listeners and
    // connections (bounded).
    if let Some(datapath) = datapath {
        let stopped = tokio::task::spawn_blocking(move || datapath.stop(linger)).await;
        if stopped.is_err() {
            tracing::error!("stopping the data path ended with a panic");
        }
    }
    match pinned {
        Some(dir) => {
            tracing::info!(pins = %dir.display(), "lbd stopped; the XDP data path goes on forwarding with the last tables for the next start (`lbd --detach` removes it)");
        }
        None => tracing::info!("data path stopped; lbd stopped"),
    }
    Ok(())
}

/// `lbd --detach`: removes the pinned XDP data path of the config's interface (the program
/// leaves the interface, the maps are freed). Refused while an lbd answers on the control
/// socket: it would lose its data path under it.
pub fn detach(config: &Config) -> anyhow::Result<String> {
    let Some(dir) = &config.daemon.pin_dir else {
        anyhow::bail!("daemon.pin_dir is not set: nothing is pinned, lbd detaches when it stops");
    };
    let socket = &config.daemon.control_socket;
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        anyhow::bail!(
            "lbd is running (it answers on {}): stop it first, then detach",
            socket.display()
        );
    }
    let pins = crate::xdp::pins::Pins::new(dir, String::new());
    let removed = pins
        .remove_all()
        .with_context(|| format!("removing the pins under {}", dir.display()))?;
    let _ = std::fs::remove_file(start::ids_file(&config.daemon.state_dir));
    Ok(if removed {
        format!(
            "detached: the XDP program left {} and the pins under {} are gone",
            config.daemon.interface,
            dir.display()
        )
    } else {
        format!("nothing pinned under {}", dir.display())
    })
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
