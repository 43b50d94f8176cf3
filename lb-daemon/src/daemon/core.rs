//! The core: the one owner of the daemon's state. It runs on a thread of its own and takes
//! [`Command`]s from a channel (control requests, health transitions, reloads, ticks, and the
//! results of the slow work it hands out); every change goes through it, one at a time.
//!
//! It never waits: a neighbour look-up (up to seconds) and a scan of the connection table (up to
//! hundreds of milliseconds) are [`Effects`] it asks for, whose results come back as commands
//! carrying what to do next ([`AfterResolve`], [`AfterScan`]). So a status request is answered
//! between any two steps, and nothing the core does shares a thread with the VRRP speaker.
//!
//! Handlers are plain methods: the unit tests drive them against a fake data path and fake
//! effects.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwapOption;
use tokio::sync::oneshot;

use crate::{
    announce,
    config::{Config, ServiceKey},
    control::{Request, Response},
    datapath::{Datapath, DatapathError},
    engine::{ApplyReport, Engine, EngineError, IdMap},
    flows::{FlowListing, FlowQuery},
    health::{HealthEvent, Target},
    model::FlowCounts,
    net::LinkHealth,
    overrides::{Overrides, StateError, StateFile},
    status::StatusView,
};

/// How often every backend MAC is looked up again (a replaced backend host), in ticks.
pub const MAC_REFRESH_TICKS: u32 = 30;
/// How long start-up, reload and `lbctl backend add` wait for backends to answer ARP.
pub const RESOLVE_WAIT: Duration = Duration::from_secs(3);
/// A scan of the connection table is followed by at least this many times its own length
/// without one, so that a table of millions of flows costs at most ~2% of a core.
const SCAN_SPACING: u32 = 50;
/// Most ticks between two scans: flow counts, expiry and the freeing of removed backends are
/// never more than a minute old, however slow a scan was.
const SCAN_SKIP_MAX: u32 = 60;
/// The tick's period (the I/O layer sends [`Command::Tick`] this often).
pub const TICK: Duration = Duration::from_secs(1);
/// Shortest time between two publications of the status that no request waits for.
const PUBLISH_EVERY: Duration = Duration::from_millis(50);

/// Where the core publishes its status (without the live counters) for readers on other tasks.
pub type StatusBoard = Arc<ArcSwapOption<StatusView>>;

/// Where a control request's answer goes.
pub type Reply = oneshot::Sender<Response>;

/// What receives a flow listing: it answers the request itself.
pub type ListDone = Box<dyn FnOnce(FlowListing, Duration) + Send>;

/// What the core is asked to do.
pub enum Command {
    /// A control socket request.
    Control(Request, Reply),
    /// A health check result.
    Health(HealthEvent),
    /// SIGHUP: read the config file again.
    Reload,
    /// The second's tick, with the state of the interfaces VRRP tracks.
    Tick(HashMap<String, LinkHealth>),
    /// Neighbour look-up results.
    Resolved {
        /// MACs found.
        found: HashMap<IpAddr, [u8; 6]>,
        /// What asked for them.
        then: AfterResolve,
    },
    /// A scan of the connection table finished.
    Scanned {
        /// Flows per backend after the scan.
        counts: FlowCounts,
        /// How long it took.
        took: Duration,
        /// What asked for it.
        then: AfterScan,
    },
    /// `lbd --replace`: second descriptors of the data path's listening sockets, for the
    /// successor.
    Listeners(std::sync::mpsc::Sender<Vec<(String, std::os::fd::OwnedFd)>>),
    /// Stop: the core ends and hands the data path back (see [`Core::run`]).
    Stop,
}

/// What to do once MACs are resolved.
pub enum AfterResolve {
    /// The tick's refresh: apply what was learned.
    Refresh,
    /// A reload waited for the new backends' MACs; a later reload supersedes it (the number
    /// says which reload it is).
    Reload(Box<Config>, u64),
    /// `lbctl backend add` waited for the new backend's MAC.
    Add(PendingAdd, Reply),
}

/// A checked `lbctl backend add`, waiting for the backend's MAC.
pub struct PendingAdd {
    /// The overrides with the backend added.
    pub overrides: Overrides,
    /// Service.
    pub key: ServiceKey,
    /// Backend.
    pub ip: IpAddr,
    /// Its weight.
    pub weight: u32,
}

/// What to do once a scan is done.
pub enum AfterScan {
    /// The tick's scan: free removed backends without flows.
    Tick,
    /// A drain or maintenance answer reports the open flows.
    Report {
        /// Backend id.
        id: u32,
        /// The message; `{flows}` is replaced by the count.
        message: String,
        /// The answer.
        reply: Reply,
    },
    /// `lbctl backend remove` decides on fresh counts.
    Remove {
        /// Service.
        key: ServiceKey,
        /// Backend.
        ip: IpAddr,
        /// Cut its flows.
        force: bool,
        /// The answer.
        reply: Reply,
    },
    /// Flows of a freed or down backend were cut; answer with how many.
    Cut {
        /// The answer, when a request waits for it; its message gets `; cut N flows`.
        reply: Option<(Reply, String)>,
    },
}

/// The slow work the core hands out; each result comes back as a [`Command`].
pub trait Effects: Send {
    /// Resolves the MACs of `ips`, waiting up to `wait` for answers; then
    /// [`Command::Resolved`].
    fn resolve(&mut self, ips: Vec<IpAddr>, wait: Duration, then: AfterResolve);
    /// Scans the connection table, cutting the flows of the backends in `dead`; then
    /// [`Command::Scanned`].
    fn scan(&mut self, dead: HashSet<u32>, then: AfterScan);
    /// Lists the flows `query` asks for, off the core (the table may hold millions); then
    /// calls `done` with them and how long the pass took.
    fn list_flows(&mut self, query: FlowQuery, done: ListDone);
    /// Makes lbd's route table `table` hold exactly these VIP routes (what BIRD announces).
    fn announce(&mut self, _table: u32, _vips: Vec<IpAddr>) {}
    /// Makes the health checks probe exactly these targets.
    fn health_targets(&mut self, targets: Vec<Target>);
    /// Tells systemd (or whoever supervises) how the daemon is doing.
    fn notify(&mut self, _state: Notify) {}
}

/// What the core tells its supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    /// A reload started.
    Reloading,
    /// Ready again.
    Ready,
    /// Alive: the core's loop turns (sent each tick, feeding systemd's watchdog).
    Alive,
}

/// Errors of the core's handlers, answered to `lbctl` as one line.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// No service by that name.
    #[error("unknown service {name:?} (services: {known}); name it by name or VIP:port")]
    UnknownService {
        /// What was asked for.
        name: String,
        /// The services there are.
        known: String,
    },
    /// A bad backend address.
    #[error("address: {0}")]
    Address(String),
    /// A bad `lbctl flows` filter.
    #[error("{0}")]
    Filter(String),
    /// A weight out of range.
    #[error("weight {0} is out of range (allowed: 1 to {max})", max = crate::config::MAX_WEIGHT)]
    Weight(u32),
    /// The address is not a backend of the service.
    #[error(
        "{ip} is not a backend of {service} (backends: {known}); add it with `lbctl backend add`"
    )]
    NotABackend {
        /// Address.
        ip: IpAddr,
        /// Service name.
        service: String,
        /// Its backends.
        known: String,
    },
    /// The address is a backend already.
    #[error(
        "{ip} is already a backend of {service}; change its weight with `lbctl backend weight`"
    )]
    AlreadyBackend {
        /// Address.
        ip: IpAddr,
        /// Service name.
        service: String,
    },
    /// Removing would cut open flows.
    #[error(
        "{ip} has {flows} open flows in {service}; removing it would cut them. Drain it first \
         (`lbctl backend drain {service} {ip} --wait`) or pass --force"
    )]
    OpenFlows {
        /// Address.
        ip: IpAddr,
        /// Service name.
        service: String,
        /// Open flows.
        flows: u64,
    },
    /// The state file could not be written: nothing changed.
    #[error("{0}; nothing was changed")]
    Save(#[source] StateError),
    /// The data path refused the change; it was undone.
    #[error("{0}; the change was undone")]
    Undone(#[source] EngineError),
    /// The data path refused the change, and undoing it in the state file failed too.
    #[error("{apply}; undoing it in the state file failed too: {restore}")]
    UndoFailed {
        /// Why applying failed.
        apply: EngineError,
        /// Why the state file could not be restored.
        restore: StateError,
    },
    /// Reading the data path's counters failed.
    #[error("reading the counters: {0}")]
    Counters(#[source] DatapathError),
    /// A request the core does not answer.
    #[error("{0}")]
    NotHere(&'static str),
}

/// The VRRP speaker's handles: its settings, status and tracked conditions.
#[derive(Clone)]
pub struct VrrpHandles {
    /// Its settings (one address family's virtual router).
    pub config: vrrp::Config,
    /// Its status.
    pub status: tokio::sync::watch::Receiver<vrrp::Status>,
    /// Its tracked conditions.
    pub tracker: vrrp::Tracker,
    /// Out of the election (`lbctl vrrp resign`) or in.
    pub standby: vrrp::StandbySwitch,
}

/// The daemon's state, owned by the core thread.
pub struct Core {
    pub(super) config_path: PathBuf,
    pub(super) config: Config,
    pub(super) engine: Engine,
    pub(super) datapath: Box<dyn Datapath>,
    pub(super) effects: Box<dyn Effects>,
    /// Why this data path.
    pub(super) mode_reason: String,
    /// Backend MACs known (XDP).
    pub(super) macs: HashMap<IpAddr, [u8; 6]>,
    /// Flows per backend as of the last scan.
    pub(super) counts: FlowCounts,
    /// Ticks to let pass before the next scan (see [`SCAN_SPACING`]); None while one runs.
    scan_skip: Option<u32>,
    /// Ticks since all MACs were looked up.
    mac_age: u32,
    /// The last health result of each checked backend: (service name, backend) → event.
    pub(super) health: HashMap<(String, IpAddr), HealthEvent>,
    pub(super) overrides: Overrides,
    pub(super) state_file: StateFile,
    /// One speaker per address family of the VIPs.
    pub(super) vrrp: Vec<VrrpHandles>,
    pub(super) started: Instant,
    pub(super) loaded_at: SystemTime,
    pub(super) reloads: u64,
    pub(super) reload_failures: u64,
    /// Reloads asked for so far: a reload still waiting for MACs when a newer one comes is
    /// dropped, so a burst of SIGHUPs applies the last config once.
    reload_gen: u64,
    /// A change is in the engine but not yet in the data path (an apply failed): retried at
    /// the next tick.
    dirty: bool,
    /// Where the status is published.
    board: StatusBoard,
    /// Answers of this command, sent once the status that shows its change is published (a
    /// client that reads the status right after an answer sees what it changed).
    outbox: Vec<(Reply, Response)>,
    /// When the status was last published.
    published_at: Instant,
    /// The ids file of a pinned data path, its maps' layout, and the ids written last.
    ids_file: Option<(PathBuf, String, IdMap)>,
    /// Each VIP's announcement as last decided (`[announce]` only).
    pub(super) announced: BTreeMap<IpAddr, announce::Reason>,
}

/// What a new core starts from.
pub struct CoreSetup {
    /// The config file.
    pub config_path: PathBuf,
    /// The config read from it.
    pub config: Config,
    /// The data path (its flow table already handed to the scanner).
    pub datapath: Box<dyn Datapath>,
    /// Why this data path.
    pub mode_reason: String,
    /// The slow work.
    pub effects: Box<dyn Effects>,
    /// Runtime changes from lbctl.
    pub state_file: StateFile,
    /// What the state file holds (read by the caller, which needed it first).
    pub overrides: Overrides,
    /// Backend MACs at start: adopted ones and those resolved then.
    pub macs: HashMap<IpAddr, [u8; 6]>,
    /// The VRRP speaker, when configured.
    pub vrrp: Vec<VrrpHandles>,
    /// Where to publish the status.
    pub board: StatusBoard,
    /// The pinned data path taken over (XDP with `daemon.pin_dir`).
    pub adoption: Option<super::start::Adoption>,
}

impl Core {
    /// Builds the core and fills the data path.
    pub fn start(setup: CoreSetup) -> Result<(Core, ApplyReport), anyhow::Error> {
        let overrides = setup.overrides;
        let mut engine = Engine::with_mac_required(setup.datapath.mode().needs_macs());
        let ids_file = setup.adoption.as_ref().map(|a| {
            (
                super::start::ids_file(&setup.config.daemon.state_dir),
                a.pins.layout().to_string(),
                IdMap::default(),
            )
        });
        if let Some(a) = &setup.adoption
            && let Some(ids) = &a.ids
        {
            // The connection table holds these ids: every backend gets its own back, and the
            // MAC the data path had for it.
            engine.seed(ids, &a.macs);
        }
        let mut core = Core {
            config_path: setup.config_path,
            config: setup.config,
            engine,
            datapath: setup.datapath,
            effects: setup.effects,
            mode_reason: setup.mode_reason,
            macs: setup.macs,
            counts: FlowCounts::default(),
            scan_skip: Some(0),
            mac_age: 0,
            health: HashMap::new(),
            overrides,
            state_file: setup.state_file,
            vrrp: setup.vrrp,
            started: Instant::now(),
            loaded_at: SystemTime::now(),
            reloads: 0,
            reload_failures: 0,
            reload_gen: 0,
            dirty: false,
            board: setup.board,
            outbox: Vec::new(),
            published_at: Instant::now(),
            ids_file,
            announced: BTreeMap::new(),
        };
        let report = core.apply()?;
        core.datapath
            .set_flood_guard(core.config.daemon.flood_new_flows_per_sec)?;
        // The tables are current: the program takes over (an adopted link's, atomically).
        core.datapath.go_live()?;
        if let Some(a) = &setup.adoption
            && matches!(a.found, super::start::Found::LayoutChanged { .. })
        {
            match a.pins.remove_other_layouts() {
                Ok(old) => {
                    tracing::info!(removed = ?old, "the maps of the earlier layout are gone");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "removing the maps of the earlier layout failed");
                }
            }
        }
        core.update_announcement();
        core.publish();
        Ok((core, report))
    }

    /// Runs until [`Command::Stop`] or until every sender is gone; returns the data path
    /// (the caller stops it after VRRP resigned).
    pub fn run(mut self, mut commands: tokio::sync::mpsc::Receiver<Command>) -> Box<dyn Datapath> {
        while let Some(cmd) = commands.blocking_recv() {
            if matches!(cmd, Command::Stop) {
                break;
            }
            self.handle(cmd);
            // Once per burst of commands, and not more often than PUBLISH_EVERY (a health
            // result a millisecond does not rebuild the view each time; the tick publishes
            // what is left). Answers to requests are published at once (see `handle`).
            if commands.is_empty() && self.published_at.elapsed() >= PUBLISH_EVERY {
                self.publish();
            }
        }
        self.datapath
    }

    /// Publishes the status (without counters) for `lbctl status` and scrapes.
    pub fn publish(&mut self) {
        self.board.store(Some(Arc::new(self.view())));
        self.published_at = Instant::now();
    }

    /// What the announcement rule sees now.
    pub(super) fn announce_inputs(&self) -> announce::Inputs {
        let mut vips = BTreeMap::new();
        for s in self.engine.services() {
            let serving = s
                .backends
                .values()
                .any(|b| b.state() == crate::model::BackendState::Active);
            *vips.entry(s.config.vip.ip()).or_insert(false) |= serving;
        }
        announce::Inputs {
            drained: self.overrides.node_drained,
            // [announce] needs XDP (config checks it): the proxy means XDP fell away.
            datapath_ok: self.datapath.mode().needs_macs(),
            vips,
        }
    }

    /// Decides the announcement afresh; a change goes to the routes and the log, with why.
    /// Returns whether it changed.
    fn update_announcement(&mut self) -> bool {
        let Some(a) = self.config.announce else {
            return false;
        };
        let decision = announce::decide(&self.announce_inputs());
        if decision == self.announced {
            return false;
        }
        for (vip, reason) in &decision {
            if self.announced.get(vip) != Some(reason) {
                if *reason == announce::Reason::Serving {
                    tracing::info!(%vip, "announcing the VIP");
                } else {
                    tracing::warn!(%vip, reason = reason.as_str(), "withdrawing the VIP");
                }
            }
        }
        self.effects
            .announce(a.table, announce::announced(&decision));
        self.announced = decision;
        true
    }

    /// Queues an answer (see `outbox`).
    pub(super) fn answer(&mut self, reply: Reply, response: Response) {
        self.outbox.push((reply, response));
    }

    /// One command; its answers go out after the status showing its effect is published.
    pub fn handle(&mut self, cmd: Command) {
        self.step(cmd);
        // A new announcement is published at once: the status must not show the old one while
        // the routes already follow the new.
        if self.update_announcement() && self.outbox.is_empty() {
            self.publish();
        }
        if !self.outbox.is_empty() {
            self.publish();
            for (reply, response) in self.outbox.drain(..) {
                let _ = reply.send(response);
            }
        }
    }

    fn step(&mut self, cmd: Command) {
        match cmd {
            Command::Control(req, reply) => self.control(req, reply),
            Command::Health(ev) => self.on_health(ev),
            Command::Reload => self.reload(),
            Command::Tick(links) => self.tick(&links),
            Command::Resolved { found, then } => self.on_resolved(found, then),
            Command::Scanned { counts, took, then } => self.on_scanned(counts, took, then),
            Command::Listeners(reply) => {
                let _ = reply.send(self.datapath.listeners());
            }
            Command::Stop => {}
        }
    }

    /// Makes the data path match config, overrides, health and MACs, and points the health
    /// checks at exactly the backends the services now have.
    pub(super) fn apply(&mut self) -> Result<ApplyReport, EngineError> {
        let result = self.engine.apply(
            &self.config,
            &self.overrides,
            &self.macs,
            self.datapath.as_mut(),
        );
        self.dirty = result.is_err();
        self.save_ids();
        let targets = health_targets(&self.engine);
        // The last results of backends no longer checked go with them.
        let checked: HashSet<(&str, std::net::IpAddr)> = targets
            .iter()
            .map(|t| (t.service.as_str(), t.backend.ip()))
            .collect();
        self.health
            .retain(|(service, ip), _| checked.contains(&(service.as_str(), *ip)));
        self.effects.health_targets(targets);
        result
    }

    /// Keeps the engine's ids beside a pinned data path when they changed (a restart adopting
    /// the connection table must give every backend its id back).
    fn save_ids(&mut self) {
        let Some((path, layout, saved)) = &mut self.ids_file else {
            return;
        };
        let ids = self.engine.ids();
        if ids == *saved {
            return;
        }
        let file = super::start::SavedIds {
            layout: layout.clone(),
            ids: ids.clone(),
        };
        match crate::overrides::save_json(path, &file) {
            Ok(()) => *saved = ids,
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "saving the backend ids failed; a restart would not adopt the connection table");
            }
        }
    }

    /// Saves `new` overrides, then applies them; if applying fails the old ones come back,
    /// in the data path and in the file.
    pub(super) fn commit(&mut self, new: Overrides) -> Result<(), CoreError> {
        self.state_file.save(&new).map_err(CoreError::Save)?;
        let old = std::mem::replace(&mut self.overrides, new);
        let Err(apply) = self.apply() else {
            return Ok(());
        };
        self.overrides = old;
        let restore = self.state_file.save(&self.overrides).err();
        if let Err(again) = self.apply() {
            tracing::error!(error = %again, "restoring the previous backends failed; retried at the next tick");
        }
        Err(match restore {
            None => CoreError::Undone(apply),
            Some(restore) => CoreError::UndoFailed { apply, restore },
        })
    }

    /// A health check result: its transitions take a backend out of rotation (and its flows out
    /// of the connection table, so its clients get a new backend at once) or put it back.
    fn on_health(&mut self, ev: HealthEvent) {
        let ip = ev.backend.ip();
        let Some(key) = self
            .config
            .services
            .iter()
            .find(|s| s.name == ev.service)
            .map(|s| s.key())
        else {
            return; // a service removed while its probe ran
        };
        let (up, transition, service, detail) =
            (ev.up, ev.transition, ev.service.clone(), ev.detail.clone());
        self.health.insert((ev.service.clone(), ip), ev);
        if !transition || !self.engine.set_health_down(&key, ip, !up) {
            return;
        }
        if let Err(e) = self.apply() {
            tracing::error!(service = %service, backend = %ip, up, error = %e, "a health change could not be applied; retried at the next tick");
            return;
        }
        if up {
            tracing::info!(service = %service, backend = %ip, detail = %detail, "health: backend up, back in rotation");
        } else {
            tracing::warn!(service = %service, backend = %ip, detail = %detail, "health: backend down, out of rotation");
            if let Some(b) = self.engine.backend(&key, ip) {
                self.effects
                    .scan(HashSet::from([b.id]), AfterScan::Cut { reply: None });
            }
        }
    }

    /// SIGHUP: reads the config file; a bad one is rejected and the running one kept. The MACs
    /// of backends new to the config are looked up first (without holding anything up
    /// meanwhile); backends that were unresolved before are left to the tick's look-ups, so a
    /// dead backend does not slow every reload down.
    fn reload(&mut self) {
        self.effects.notify(Notify::Reloading);
        self.reload_gen += 1;
        let new = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: config rejected; keeping the running config");
                self.reload_failures += 1;
                self.effects.notify(Notify::Ready);
                return;
            }
        };
        if new.vrrp != self.config.vrrp {
            tracing::warn!(
                "SIGHUP: [vrrp] settings changed; they take effect at the next restart (a reload never moves the VIP)"
            );
        }
        // The rings were sized at start: more services than they hold need a restart.
        let room = self.config.daemon.max_services as usize;
        if new.services.len() > room {
            tracing::error!(
                services = new.services.len(),
                max_services = room,
                "SIGHUP: config rejected: more services than this data path was started with \
                 (daemon.max_services); restart lbd to apply it; keeping the running config"
            );
            self.reload_failures += 1;
            self.effects.notify(Notify::Ready);
            return;
        }
        // What a reload applies of [daemon] (the flood guard) is no restart matter.
        let mut unapplied = new.daemon.clone();
        unapplied.flood_new_flows_per_sec = self.config.daemon.flood_new_flows_per_sec;
        unapplied.max_services = self.config.daemon.max_services;
        if unapplied != self.config.daemon {
            tracing::warn!(
                "SIGHUP: [daemon] settings changed; they take effect at the next restart (services are applied now)"
            );
        }
        let known: BTreeSet<IpAddr> = backend_ips(&self.config, &self.overrides)
            .into_iter()
            .collect();
        let missing: Vec<IpAddr> = backend_ips(&new, &self.overrides)
            .into_iter()
            .filter(|ip| !self.macs.contains_key(ip) && !known.contains(ip))
            .collect();
        if self.datapath.mode().needs_macs() && !missing.is_empty() {
            let then = AfterResolve::Reload(Box::new(new), self.reload_gen);
            self.effects.resolve(missing, RESOLVE_WAIT, then);
        } else {
            self.reload_apply(new);
        }
    }

    fn reload_apply(&mut self, new: Config) {
        // The flood guard's rate is a knob of the running program: a reload changes it.
        let flood = new.daemon.flood_new_flows_per_sec;
        if flood != self.config.daemon.flood_new_flows_per_sec {
            match self.datapath.set_flood_guard(flood) {
                Ok(()) => {
                    tracing::info!(new_flows_per_sec = flood, "SIGHUP: flood guard set");
                    self.config.daemon.flood_new_flows_per_sec = flood;
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: setting the flood guard failed; keeping the running one");
                }
            }
        }
        let old_services = std::mem::replace(&mut self.config.services, new.services);
        match self.apply() {
            Ok(r) => {
                tracing::info!(
                    services_added = r.services_added,
                    services_removed = r.services_removed,
                    backends_added = r.backends_added,
                    backends_removed = r.backends_removed,
                    tables_written = r.tables_written,
                    "SIGHUP: config applied"
                );
                self.log_unresolved();
                self.loaded_at = SystemTime::now();
                self.reloads += 1;
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: applying the config failed; going back to the running config");
                self.config.services = old_services;
                self.reload_failures += 1;
                if let Err(e) = self.apply() {
                    tracing::error!(error = %e, "restoring the running config failed; retried at the next tick");
                }
            }
        }
        self.effects.notify(Notify::Ready);
    }

    /// Warns about each backend without a MAC (XDP).
    pub(super) fn log_unresolved(&self) {
        if !self.datapath.mode().needs_macs() {
            return;
        }
        for ip in backend_ips(&self.config, &self.overrides) {
            if !self.macs.contains_key(&ip) {
                tracing::warn!(backend = %ip, "no ARP answer from backend: out of rotation until it answers");
            }
        }
    }

    /// The tick: a scan of the connection table when due, tracked conditions, MAC look-ups, a
    /// retry of a failed apply.
    fn tick(&mut self, links: &HashMap<String, LinkHealth>) {
        // Fed from the loop that does the work, so a stuck core is noticed.
        self.effects.notify(Notify::Alive);
        if self.dirty
            && let Err(e) = self.apply()
        {
            tracing::error!(error = %e, "applying to the data path failed again");
        }
        match self.scan_skip {
            Some(0) => {
                self.scan_skip = None;
                let dead = self.dead_ids();
                self.effects.scan(dead, AfterScan::Tick);
            }
            Some(n) => self.scan_skip = Some(n - 1),
            None => {} // a scan is under way
        }
        self.track(links);
        if !self.datapath.mode().needs_macs() {
            return; // the proxy needs no MACs: the kernel resolves them when it connects
        }
        self.mac_age += 1;
        let all = self.mac_age >= MAC_REFRESH_TICKS;
        if all {
            self.mac_age = 0;
        }
        let wanted: Vec<IpAddr> = backend_ips(&self.config, &self.overrides)
            .into_iter()
            .filter(|ip| all || !self.macs.contains_key(ip))
            .collect();
        if !wanted.is_empty() {
            self.effects
                .resolve(wanted, Duration::ZERO, AfterResolve::Refresh);
        }
    }

    /// Backend ids whose flows leave the table: freed ones, and those down by health checks
    /// (their clients get a new backend at once).
    fn dead_ids(&self) -> HashSet<u32> {
        let live: HashSet<u32> = self
            .engine
            .services()
            .flat_map(|s| s.backends.values())
            .filter(|b| !b.health_down)
            .map(|b| b.id)
            .collect();
        (0..lb_common::MAX_BACKENDS)
            .filter(|id| !live.contains(id))
            .collect()
    }

    /// VRRP tracking: a node that cannot serve well lowers its priority, so a peer that can
    /// takes over: a service with no backend in rotation, the XDP program gone from the
    /// interface, a tracked interface down.
    fn track(&self, links: &HashMap<String, LinkHealth>) {
        for v in &self.vrrp {
            self.track_one(v, links);
        }
    }

    fn track_one(&self, v: &VrrpHandles, links: &HashMap<String, LinkHealth>) {
        for cond in &v.config.tracked {
            let failed = if cond.name == crate::config::TRACK_NO_BACKEND {
                self.engine
                    .services()
                    .any(|s| !s.backends.values().any(|b| b.in_rotation()))
            } else if cond.name == crate::config::TRACK_DATAPATH {
                // The proxy has nothing to detach; it runs while lbd runs.
                self.datapath.mode().needs_macs()
                    && !links
                        .get(&self.config.daemon.interface)
                        .is_some_and(|h| h.xdp_attached)
            } else if let Some(ifname) = cond
                .name
                .strip_prefix(crate::config::TRACK_INTERFACE_PREFIX)
            {
                match links.get(ifname) {
                    Some(h) => !h.up,
                    None => continue, // not looked up this tick
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

    /// The interfaces the tick must look up: the data path's (XDP) and the tracked ones.
    pub fn tracked_interfaces(config: &Config) -> Vec<String> {
        // The families' routers track the same conditions.
        let Some(v) = config.vrrp.first() else {
            return Vec::new();
        };
        let mut out: Vec<String> = v
            .tracked
            .iter()
            .filter_map(|c| {
                if c.name == crate::config::TRACK_DATAPATH {
                    Some(config.daemon.interface.clone())
                } else {
                    c.name
                        .strip_prefix(crate::config::TRACK_INTERFACE_PREFIX)
                        .map(str::to_string)
                }
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    fn on_resolved(&mut self, found: HashMap<IpAddr, [u8; 6]>, then: AfterResolve) {
        let learned: Vec<(IpAddr, [u8; 6])> = found
            .into_iter()
            .filter(|(ip, mac)| self.macs.get(ip) != Some(mac))
            .collect();
        for (ip, mac) in &learned {
            tracing::info!(backend = %ip, mac = %crate::net::mac_string(mac), "backend MAC learned");
        }
        self.macs.extend(learned.iter().copied());
        match then {
            AfterResolve::Refresh => {
                if !learned.is_empty()
                    && let Err(e) = self.apply()
                {
                    tracing::error!(error = %e, "applying learned backend MACs failed; retried at the next tick");
                }
            }
            AfterResolve::Reload(config, generation) if generation == self.reload_gen => {
                self.reload_apply(*config);
            }
            AfterResolve::Reload(..) => {
                tracing::debug!("SIGHUP: a newer reload supersedes this one");
                if !learned.is_empty()
                    && let Err(e) = self.apply()
                {
                    tracing::error!(error = %e, "applying learned backend MACs failed; retried at the next tick");
                }
            }
            AfterResolve::Add(add, reply) => {
                let answer = respond(self.add_resolved(add));
                self.answer(reply, answer);
            }
        }
    }

    fn on_scanned(&mut self, counts: FlowCounts, took: Duration, then: AfterScan) {
        match then {
            AfterScan::Tick => {
                self.scan_skip = Some(scan_skip(took));
                let flows_of = |id| counts.active_of(id) + counts.closing_of(id);
                match self.engine.reap_removed(flows_of, self.datapath.as_mut()) {
                    Ok(freed) if !freed.is_empty() => {
                        tracing::info!(ids = ?freed, "removed backends have no flows left: freed");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "freeing removed backends failed"),
                }
                self.counts = counts;
            }
            AfterScan::Report { id, message, reply } => {
                let flows = counts.active_of(id);
                self.counts = counts;
                self.answer(
                    reply,
                    respond(Ok(message.replace("{flows}", &flows.to_string()))),
                );
            }
            AfterScan::Remove {
                key,
                ip,
                force,
                reply,
            } => {
                self.counts = counts;
                self.remove_counted(&key, ip, force, reply);
            }
            AfterScan::Cut { reply } => {
                let cut = counts.expired;
                self.counts = counts;
                if let Some((reply, message)) = reply {
                    let message = if cut > 0 {
                        format!("{message}; cut {cut} flows")
                    } else {
                        message
                    };
                    self.answer(reply, respond(Ok(message)));
                } else if cut > 0 {
                    tracing::info!(flows = cut, "flows of a down backend re-balanced");
                }
            }
        }
    }
}

/// A handler's result as the control socket answers it (and logs a change).
pub fn respond(result: Result<String, CoreError>) -> Response {
    match result {
        Ok(message) => {
            tracing::info!(change = %message, "lbctl");
            Response::Done { message }
        }
        Err(e) => Response::Error {
            message: e.to_string(),
        },
    }
}

/// Ticks to skip after a scan of the connection table that took `took`.
fn scan_skip(took: Duration) -> u32 {
    let quiet = took.saturating_mul(SCAN_SPACING);
    u32::try_from(quiet.as_nanos() / TICK.as_nanos())
        .unwrap_or(u32::MAX)
        .min(SCAN_SKIP_MAX)
}

/// Health-check targets: every backend (not removed) of every service with a `health` setting,
/// probed on its own address at the service port.
pub fn health_targets(engine: &Engine) -> Vec<Target> {
    engine
        .services()
        .filter_map(|s| s.config.health.as_ref().map(|h| (s, h)))
        .flat_map(|(s, h)| {
            s.backends
                .values()
                .filter(|b| !b.removed)
                .map(move |b| Target {
                    service: s.config.name.clone(),
                    backend: std::net::SocketAddr::new(b.addr, s.config.vip.port()),
                    config: h.clone(),
                })
        })
        .collect()
}

/// Backend addresses to resolve: the config's and those added at run time.
pub fn backend_ips(config: &Config, overrides: &Overrides) -> Vec<IpAddr> {
    let ips: BTreeSet<IpAddr> = config
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.addr))
        .chain(overrides.services.values().flat_map(|m| {
            m.iter()
                .filter(|(_, o)| o.added && !o.removed)
                .map(|(a, _)| *a)
        }))
        .collect();
    ips.into_iter().collect()
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
