//! What the fuzz targets of lbd share: a data path that accepts every change and holds nothing
//! ([`NullDatapath`]), and the daemon's core over it with its slow work carried out in line
//! ([`CoreBed`]), so that a control request or a state file goes through the same handlers as
//! in the daemon, without sockets, threads or a clock.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use lb_common::Counter;
use lb_daemon::{
    config::{Config, Proto, ServiceKey},
    control::{Request, Response},
    daemon::core::{
        AfterResolve, AfterScan, Command, Core, CoreSetup, Effects, ListDone, StatusBoard,
        VrrpHandles,
    },
    datapath::{
        BackendEntry, CounterSource, Datapath, DatapathCounters, DatapathError, DatapathMode,
        FlowTable, ServiceEntry,
    },
    flows::{Collector, FlowListing, FlowQuery, FlowRecord},
    health::Target,
    model::FlowCounts,
    overrides::{Overrides, StateFile},
};

/// The config the core runs with: a TCP service with an HTTP check, a UDP service, a service
/// without backends, an IPv6 service, and VRRP for both families (so that `vrrp_resign` and
/// `vrrp_resume` reach their handlers).
/// Backend addresses are those of the fuzz seeds.
pub const CONFIG: &str = r#"
[daemon]
interface = "eth0"
datapath = "xdp-generic"

[vrrp]
vrid = 51
priority = 150

[[service]]
name = "web"
vip = "198.18.0.100:80"
health = { kind = "http", path = "/healthz" }
backends = [ { addr = "198.18.0.21" }, { addr = "198.18.0.22", weight = 2 }, { addr = "198.18.0.23" } ]

[[service]]
name = "dns"
vip = "198.18.0.100:53"
proto = "udp"
scheduler = "sh"
backends = [ { addr = "198.18.0.21" }, { addr = "198.18.0.22" } ]

[[service]]
name = "web6"
vip = "[2001:db8::100]:80"
backends = [ { addr = "2001:db8::21" }, { addr = "2001:db8::254" } ]

[[service]]
name = "empty"
vip = "198.18.0.101:8080"
"#;

/// An address the neighbour look-up never finds (so that the "no MAC" answers are reachable):
/// any address ending in .254 (IPv6: in ::254).
pub fn resolves(ip: IpAddr) -> Option<[u8; 6]> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            (d != 254).then_some([0x02, a, b, c, d, 0x01])
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            (v6.segments()[7] != 0x254).then_some([0x02, 0x06, o[12], o[13], o[14], o[15]])
        }
    }
}

/// A data path that takes every change and forwards nothing: no counters, an empty flow table
/// but for [`NullDatapath::LISTED`].
#[derive(Debug, Clone, Copy)]
pub struct NullDatapath(pub DatapathMode);

impl NullDatapath {
    /// Flows a listing offers to the filter: pinned to the first backend ids, one closing.
    pub const LISTED: [(u32, [u8; 4], u16, bool); 3] = [
        (0, [198, 51, 100, 7], 40000, false),
        (1, [198, 51, 100, 8], 40001, true),
        (3, [198, 51, 100, 7], 0, false),
    ];
}

impl Datapath for NullDatapath {
    fn mode(&self) -> DatapathMode {
        self.0
    }
    fn set_backend(&mut self, _: u32, _: &BackendEntry) -> Result<(), DatapathError> {
        Ok(())
    }
    fn set_service(&mut self, _: &ServiceEntry<'_>) -> Result<(), DatapathError> {
        Ok(())
    }
    fn remove_service(&mut self, _: &ServiceKey) -> Result<(), DatapathError> {
        Ok(())
    }
    fn free_backend(&mut self, _: u32) -> Result<Counter, DatapathError> {
        Ok(Counter::default())
    }
    fn counters(&self) -> Result<DatapathCounters, DatapathError> {
        Ok(DatapathCounters::zero())
    }
    fn set_flood_guard(&mut self, _: u32) -> Result<(), DatapathError> {
        Ok(())
    }
    fn flow_table(&mut self) -> Result<Box<dyn FlowTable>, DatapathError> {
        Ok(Box::new(*self))
    }
    fn counter_source(&self) -> Result<Arc<dyn CounterSource>, DatapathError> {
        Ok(Arc::new(*self))
    }
    fn stop(self: Box<Self>, _: Duration) {}
}

impl CounterSource for NullDatapath {
    fn counters(&self) -> Result<DatapathCounters, DatapathError> {
        Ok(DatapathCounters::zero())
    }
}

impl FlowTable for NullDatapath {
    fn scan(&mut self, _: &dyn Fn(u32) -> bool) -> FlowCounts {
        FlowCounts::default()
    }
    fn list(&mut self, query: &FlowQuery) -> FlowListing {
        let mut c = Collector::new(query);
        for (i, (backend_id, client, port, closing)) in Self::LISTED.into_iter().enumerate() {
            c.offer(FlowRecord {
                proto: Proto::Tcp,
                client: SocketAddr::new(IpAddr::V4(client.into()), port),
                vip: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 100)), 80),
                backend_id,
                closing,
                idle: Duration::from_secs(i as u64),
                expires: Some(Duration::from_secs(60)),
            });
        }
        c.finish()
    }
}

/// The slow work the core asked for, waiting to be carried out.
#[derive(Default)]
struct Asked {
    resolves: Vec<(Vec<IpAddr>, AfterResolve)>,
    scans: Vec<AfterScan>,
    lists: Vec<(FlowQuery, ListDone)>,
}

/// The core's effects: recorded, then carried out by [`CoreBed::settle`].
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Asked>>);

impl Recorder {
    fn asked(&self) -> std::sync::MutexGuard<'_, Asked> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Effects for Recorder {
    fn resolve(&mut self, ips: Vec<IpAddr>, _: Duration, then: AfterResolve) {
        self.asked().resolves.push((ips, then));
    }
    fn scan(&mut self, _: HashSet<u32>, then: AfterScan) {
        self.asked().scans.push(then);
    }
    fn list_flows(&mut self, query: FlowQuery, done: ListDone) {
        self.asked().lists.push((query, done));
    }
    fn health_targets(&mut self, _: Vec<Target>) {}
}

/// The daemon's core over a [`NullDatapath`] in XDP mode (backends need MACs), with [`CONFIG`],
/// VRRP handles and its state file in a directory of its own (on tmpfs where there is one: the
/// core fsyncs every change).
pub struct CoreBed {
    core: Core,
    effects: Recorder,
    dir: PathBuf,
    /// Keeps the VRRP status channel open for the core's readers.
    _vrrp_status: Vec<tokio::sync::watch::Sender<vrrp::Status>>,
}

impl CoreBed {
    /// The state directory of this process's beds.
    pub fn dir() -> PathBuf {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        base.join(format!("lbd-fuzz-{}", std::process::id()))
    }

    /// A core started with `overrides` (what the state file holds), or the error the daemon
    /// would stop with.
    pub fn start(overrides: Overrides) -> anyhow::Result<CoreBed> {
        let config = Config::parse(CONFIG)?;
        let dir = CoreBed::dir();
        std::fs::create_dir_all(&dir)?;
        let state_file = StateFile::in_dir(&dir);
        // Each input starts from the state it brings, not from what an earlier one saved.
        match std::fs::remove_file(state_file.path()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let config_path = dir.join("lbd.toml");
        std::fs::write(&config_path, CONFIG)?;
        // One speaker per family of the VIPs; their status senders stay with the bed.
        let mut vrrp_status = Vec::new();
        let mut vrrp = Vec::new();
        for vrrp_config in config.vrrp.clone() {
            let (tx, status_rx) = tokio::sync::watch::channel(vrrp::Status {
                state: vrrp::State::Initialize,
                priority: vrrp_config.priority.get(),
                master: None,
                address: None,
                last_transition: None,
                counters: vrrp::Counters::default(),
            });
            vrrp_status.push(tx);
            vrrp.push(VrrpHandles {
                tracker: vrrp::Tracker::new(&vrrp_config.tracked),
                config: vrrp_config,
                status: status_rx,
                standby: vrrp::StandbySwitch::default(),
            });
        }
        anyhow::ensure!(
            vrrp.len() == 2,
            "CONFIG has VIPs of both families under [vrrp]"
        );
        let macs = lb_daemon::daemon::core::backend_ips(&config, &overrides)
            .into_iter()
            .filter_map(|ip| resolves(ip).map(|mac| (ip, mac)))
            .collect();
        let effects = Recorder::default();
        let (core, _) = Core::start(CoreSetup {
            config_path,
            config,
            datapath: Box::new(NullDatapath(DatapathMode::XdpGeneric)),
            mode_reason: "fuzz".into(),
            effects: Box::new(effects.clone()),
            state_file,
            overrides,
            macs,
            vrrp,
            board: StatusBoard::default(),
            adoption: None,
        })?;
        let mut bed = CoreBed {
            core,
            effects,
            dir,
            _vrrp_status: vrrp_status,
        };
        bed.settle();
        Ok(bed)
    }

    /// One control request, as the control server hands it to the core; returns the answer.
    /// Panics when the core gives none, or more than one: every request gets exactly one.
    pub fn request(&mut self, req: Request) -> Response {
        let what = format!("{req:?}");
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        self.core.handle(Command::Control(req, tx));
        self.settle();
        match rx.try_recv() {
            Ok(answer) => answer,
            Err(e) => panic!("no answer to {what} once its look-ups and scans are done: {e}"),
        }
    }

    /// The status, as `lbctl status` asks for it.
    pub fn status(&mut self) -> Response {
        self.request(Request::Status {})
    }

    /// Carries out what the core asked for (neighbour look-ups, scans, listings) and feeds the
    /// results back, until it asks for nothing more.
    fn settle(&mut self) {
        loop {
            let asked = std::mem::take(&mut *self.effects.asked());
            if asked.resolves.is_empty() && asked.scans.is_empty() && asked.lists.is_empty() {
                return;
            }
            for (ips, then) in asked.resolves {
                let found: HashMap<IpAddr, [u8; 6]> = ips
                    .into_iter()
                    .filter_map(|ip| resolves(ip).map(|mac| (ip, mac)))
                    .collect();
                self.core.handle(Command::Resolved { found, then });
            }
            for then in asked.scans {
                self.core.handle(Command::Scanned {
                    counts: FlowCounts::default(),
                    took: Duration::from_millis(1),
                    then,
                });
            }
            for (query, done) in asked.lists {
                done(
                    NullDatapath(DatapathMode::XdpGeneric).list(&query),
                    Duration::from_millis(1),
                );
            }
        }
    }
}

impl Drop for CoreBed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Encodes an answer as the control server does and decodes it as `lbctl` does. Panics when
/// either fails: `lbctl` would report "bad answer from lbd".
pub fn answer_round_trip(answer: &Response) {
    let line = match serde_json::to_vec(answer) {
        Ok(l) => l,
        Err(e) => panic!("the answer {answer:?} does not encode: {e}"),
    };
    if let Err(e) = serde_json::from_slice::<Response>(&line) {
        panic!(
            "lbctl cannot read the answer {}: {e}",
            String::from_utf8_lossy(&line)
        );
    }
}
