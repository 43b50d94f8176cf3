//! The core's handlers against a fake data path and fake effects: no sockets, no threads, no
//! clock. Each slow step the core asks for (a neighbour look-up, a scan) is carried out by the
//! test, which then feeds the result back, as the I/O layer would.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use lb_common::Counter;
use tokio::sync::oneshot;

use super::core::{
    AfterResolve, AfterScan, Command, Core, CoreSetup, Effects, ListDone, Notify, StatusBoard,
};
use crate::{
    config::Config,
    control::{Request, Response},
    datapath::{DatapathCounters, DatapathMode, FlowTable, fake::FakeDatapath},
    flows::{FlowQuery, FlowRecord, FlowStateName},
    health::{HealthEvent, Target},
    model::{BackendState, FlowCounts},
    overrides::{Admin, StateFile},
};

/// What the core asked for.
#[derive(Default)]
struct Asked {
    resolves: Vec<(Vec<IpAddr>, Duration, AfterResolve)>,
    scans: Vec<(HashSet<u32>, AfterScan)>,
    announced: Vec<(u32, Vec<IpAddr>)>,
    lists: Vec<(FlowQuery, ListDone)>,
    targets: Vec<Target>,
    notified: Vec<Notify>,
}

#[derive(Clone, Default)]
struct FakeEffects(Arc<Mutex<Asked>>);

impl FakeEffects {
    fn asked(&self) -> std::sync::MutexGuard<'_, Asked> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Effects for FakeEffects {
    fn resolve(&mut self, ips: Vec<IpAddr>, wait: Duration, then: AfterResolve) {
        self.asked().resolves.push((ips, wait, then));
    }
    fn scan(&mut self, dead: HashSet<u32>, then: AfterScan) {
        self.asked().scans.push((dead, then));
    }
    fn list_flows(&mut self, query: FlowQuery, done: ListDone) {
        self.asked().lists.push((query, done));
    }
    fn announce(&mut self, table: u32, vips: Vec<IpAddr>) {
        self.asked().announced.push((table, vips));
    }
    fn health_targets(&mut self, targets: Vec<Target>) {
        self.asked().targets = targets;
    }
    fn notify(&mut self, state: Notify) {
        self.asked().notified.push(state);
    }
}

const CONFIG: &str = r#"
[daemon]
interface = "eth0"
datapath = "xdp-generic"
[[service]]
name = "web"
vip = "198.18.0.100:80"
health = { kind = "tcp", interval_ms = 1000 }
backends = [ { addr = "198.18.0.21" }, { addr = "198.18.0.22" }, { addr = "198.18.0.23", weight = 2 } ]
"#;

fn ip(n: u8) -> IpAddr {
    IpAddr::from([198, 18, 0, n])
}

fn macs() -> HashMap<IpAddr, [u8; 6]> {
    (20..=30).map(|i| (ip(i), [2, 0, 0, 0, 0, i])).collect()
}

/// A core over the fake, with its config file and state file in a fresh directory.
struct Bed {
    core: Core,
    dp: FakeDatapath,
    effects: FakeEffects,
    board: StatusBoard,
    dir: PathBuf,
}

impl Bed {
    fn new(name: &str, mode: DatapathMode) -> Bed {
        Bed::with_config(name, mode, CONFIG)
    }

    /// A core over `config` (which must hold the web service of [`CONFIG`]).
    fn with_config(name: &str, mode: DatapathMode, config: &str) -> Bed {
        let dir = std::env::temp_dir().join(format!("lbd-core-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let config_path = dir.join("lbd.toml");
        std::fs::write(&config_path, config).expect("config file");
        let dp = FakeDatapath::new(mode);
        let effects = FakeEffects::default();
        let board = StatusBoard::default();
        let (core, report) = Core::start(CoreSetup {
            config_path,
            config: Config::parse(config).expect("config"),
            datapath: Box::new(dp.clone()),
            mode_reason: "test".into(),
            effects: Box::new(effects.clone()),
            state_file: StateFile::in_dir(&dir),
            overrides: StateFile::in_dir(&dir).load().expect("state file"),
            macs: macs(),
            vrrp: Vec::new(),
            board: board.clone(),
            adoption: None,
        })
        .expect("core starts");
        assert_eq!((report.services_added, report.backends_added), (1, 3));
        Bed {
            core,
            dp,
            effects,
            board,
            dir,
        }
    }

    /// Sends a request; returns the answer if it came at once.
    fn request(&mut self, req: Request) -> oneshot::Receiver<Response> {
        let (tx, rx) = oneshot::channel();
        self.core.handle(Command::Control(req, tx));
        rx
    }

    /// Carries out the scans the core asked for, on the fake's flow table, and feeds the results
    /// back; returns how many there were.
    fn run_scans(&mut self) -> usize {
        let scans = std::mem::take(&mut self.effects.asked().scans);
        let n = scans.len();
        for (dead, then) in scans {
            let counts = self.dp.clone().scan(&|id| dead.contains(&id));
            self.core.handle(Command::Scanned {
                counts,
                took: Duration::from_millis(1),
                then,
            });
        }
        n
    }

    /// Carries out the flow listings on the fake's table; returns how many there were.
    fn run_lists(&mut self) -> usize {
        let lists = std::mem::take(&mut self.effects.asked().lists);
        let n = lists.len();
        for (query, done) in lists {
            done(self.dp.clone().list(&query), Duration::from_millis(2));
        }
        n
    }

    /// Carries out the neighbour look-ups, answering for the addresses in `known`.
    fn run_resolves(&mut self, known: &HashMap<IpAddr, [u8; 6]>) -> usize {
        let resolves = std::mem::take(&mut self.effects.asked().resolves);
        let n = resolves.len();
        for (ips, _, then) in resolves {
            let found = ips
                .iter()
                .filter_map(|i| known.get(i).map(|m| (*i, *m)))
                .collect();
            self.core.handle(Command::Resolved { found, then });
        }
        n
    }

    fn id(&self, n: u8) -> u32 {
        let key = self.core.config.services[0].key();
        self.core.engine.backend(&key, ip(n)).expect("backend").id
    }

    fn state(&self, n: u8) -> Option<BackendState> {
        let key = self.core.config.services[0].key();
        self.core.engine.backend(&key, ip(n)).map(|b| b.state())
    }

    /// Backend ids in the table the data path serves.
    fn served(&self) -> HashSet<u32> {
        self.dp
            .state()
            .services
            .values()
            .flat_map(|s| s.table.iter().copied())
            .collect()
    }

    fn flows(&self, per_backend: &[(u8, u64, u64)]) {
        let mut counts = FlowCounts::default();
        for &(n, active, closing) in per_backend {
            counts.active.insert(self.id(n), active);
            counts.closing.insert(self.id(n), closing);
            counts.entries += active + closing;
        }
        self.dp.state().flows = counts;
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn done(mut rx: oneshot::Receiver<Response>) -> String {
    match rx.try_recv() {
        Ok(Response::Done { message }) => message,
        other => panic!("expected a done answer, got {other:?}"),
    }
}

fn error(mut rx: oneshot::Receiver<Response>) -> String {
    match rx.try_recv() {
        Ok(Response::Error { message }) => message,
        other => panic!("expected an error answer, got {other:?}"),
    }
}

fn pending(rx: &mut oneshot::Receiver<Response>) -> bool {
    matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
}

#[test]
fn add_waits_for_the_mac_then_enters_rotation_and_persists() {
    let mut bed = Bed::new("add", DatapathMode::XdpGeneric);
    let mut rx = bed.request(Request::BackendAdd {
        service: "web".into(),
        addr: "198.18.0.24".into(),
        weight: Some(3),
    });
    assert!(pending(&mut rx), "answered before the MAC look-up");
    // Meanwhile the core answers other requests.
    let mut status = bed.request(Request::Status {});
    assert!(matches!(status.try_recv(), Ok(Response::Status(_))));
    assert_eq!(bed.run_resolves(&macs()), 1);
    let message = done(rx);
    assert_eq!(message, "added 198.18.0.24 to web with weight 3");
    assert_eq!(bed.state(24), Some(BackendState::Active));
    assert!(bed.served().contains(&bed.id(24)));
    // Saved before it was acknowledged: a new daemon replays it.
    let saved = StateFile::in_dir(&bed.dir).load().expect("state file");
    let o = saved
        .get("tcp/198.18.0.100:80", ip(24))
        .expect("override saved");
    assert!(o.added);
    assert_eq!(o.weight, Some(3));

    // Without an ARP answer it is added, out of rotation, and says so.
    let rx = bed.request(Request::BackendAdd {
        service: "198.18.0.100:80".into(),
        addr: "198.18.0.31".into(),
        weight: None,
    });
    bed.run_resolves(&HashMap::new());
    assert!(done(rx).ends_with("no ARP answer yet: out of rotation until it answers"));
    assert_eq!(bed.state(31), Some(BackendState::Unresolved));

    // Bad input: a clear error, nothing changed.
    for (req, want) in [
        (
            Request::BackendAdd {
                service: "nope".into(),
                addr: "198.18.0.25".into(),
                weight: None,
            },
            "unknown service \"nope\" (services: web)",
        ),
        (
            Request::BackendAdd {
                service: "web".into(),
                addr: "198.18.0.x".into(),
                weight: None,
            },
            "address: \"198.18.0.x\" is not an address (expected e.g. 198.18.0.21",
        ),
        (
            Request::BackendAdd {
                service: "web".into(),
                addr: "198.18.0.25".into(),
                weight: Some(0),
            },
            "weight 0 is out of range (allowed: 1 to 1000)",
        ),
        (
            Request::BackendAdd {
                service: "web".into(),
                addr: "198.18.0.21".into(),
                weight: None,
            },
            "198.18.0.21 is already a backend of web",
        ),
        (
            Request::BackendWeight {
                service: "web".into(),
                addr: "198.18.0.99".into(),
                weight: 2,
            },
            "198.18.0.99 is not a backend of web (backends: 198.18.0.21, 198.18.0.22, 198.18.0.23, 198.18.0.24, 198.18.0.31)",
        ),
    ] {
        let got = error(bed.request(req));
        assert!(got.starts_with(want), "want {want:?}, got {got:?}");
    }
}

#[test]
fn drain_answers_with_fresh_flow_counts_and_keeps_them_pinned() {
    let mut bed = Bed::new("drain", DatapathMode::XdpGeneric);
    bed.flows(&[(21, 4, 1)]);
    let mut rx = bed.request(Request::BackendDrain {
        service: "web".into(),
        addr: "198.18.0.21".into(),
    });
    assert!(
        pending(&mut rx),
        "the count must be fresh, not the last tick's"
    );
    assert_eq!(bed.state(21), Some(BackendState::Draining));
    assert!(!bed.served().contains(&bed.id(21)), "no new flows");
    assert_eq!(bed.run_scans(), 1);
    assert_eq!(
        done(rx),
        "draining 198.18.0.21 in web: no new flows; 4 open flows go on"
    );
    // The status readers see the change by the time the answer is out.
    let published = bed
        .board
        .load_full()
        .expect("published")
        .fill(&DatapathCounters::zero());
    assert_eq!(
        published.services[0].backends[0].state,
        BackendState::Draining
    );
    assert_eq!(published.services[0].backends[0].flows, 4);
    assert_eq!(
        bed.dp.state().backends[&bed.id(21)].state,
        BackendState::Draining,
        "its flows still forward"
    );
    // Maintenance off ends the drain.
    let rx = bed.request(Request::BackendMaintenance {
        service: "web".into(),
        addr: "198.18.0.21".into(),
        on: false,
    });
    assert_eq!(done(rx), "198.18.0.21 in web is back in rotation");
    assert!(bed.served().contains(&bed.id(21)));
    let saved = StateFile::in_dir(&bed.dir).load().expect("state file");
    assert!(saved.services.is_empty(), "nothing left to override");

    // Maintenance on is saved as such.
    let rx = bed.request(Request::BackendMaintenance {
        service: "web".into(),
        addr: "198.18.0.22".into(),
        on: true,
    });
    bed.run_scans();
    assert!(done(rx).contains("is in maintenance"));
    let saved = StateFile::in_dir(&bed.dir).load().expect("state file");
    assert_eq!(
        saved
            .get("tcp/198.18.0.100:80", ip(22))
            .and_then(|o| o.admin),
        Some(Admin::Maintenance)
    );
}

#[test]
fn remove_refuses_open_flows_and_force_cuts_them() {
    let mut bed = Bed::new("remove", DatapathMode::XdpGeneric);
    bed.flows(&[(22, 3, 2)]);
    let rx = bed.request(Request::BackendRemove {
        service: "web".into(),
        addr: "198.18.0.22".into(),
        force: false,
    });
    bed.run_scans();
    assert_eq!(
        error(rx),
        "198.18.0.22 has 3 open flows in web; removing it would cut them. Drain it first \
         (`lbctl backend drain web 198.18.0.22 --wait`) or pass --force"
    );
    assert_eq!(bed.state(22), Some(BackendState::Active), "nothing changed");

    let id = bed.id(22);
    let rx = bed.request(Request::BackendRemove {
        service: "web".into(),
        addr: "198.18.0.22".into(),
        force: true,
    });
    // One scan counts, the next cuts the freed backend's flows.
    assert_eq!(bed.run_scans(), 1);
    assert_eq!(bed.run_scans(), 1);
    assert_eq!(done(rx), "removed 198.18.0.22 from web; cut 5 flows");
    assert_eq!(bed.state(22), None, "freed at once");
    assert!(bed.dp.state().freed.contains(&id));
    assert!(bed.dp.state().cut.contains(&id));
    let saved = StateFile::in_dir(&bed.dir).load().expect("state file");
    assert!(
        saved
            .get("tcp/198.18.0.100:80", ip(22))
            .is_some_and(|o| o.removed),
        "a config backend stays removed through the state file"
    );

    // Without flows, a plain remove; the tick frees it once its closing flows are gone.
    bed.flows(&[(23, 0, 1)]);
    let rx = bed.request(Request::BackendRemove {
        service: "web".into(),
        addr: "198.18.0.23".into(),
        force: false,
    });
    bed.run_scans();
    assert_eq!(done(rx), "removed 198.18.0.23 from web");
    assert_eq!(bed.state(23), Some(BackendState::Removed));
    bed.flows(&[]);
    bed.core.handle(Command::Tick(HashMap::new()));
    bed.run_scans();
    assert_eq!(bed.state(23), None, "freed by the tick's scan");
}

#[test]
fn health_transitions_change_rotation_and_cut_flows() {
    let mut bed = Bed::new("health", DatapathMode::XdpGeneric);
    assert_eq!(
        bed.effects.asked().targets.len(),
        3,
        "every backend checked"
    );
    let event = |up: bool, transition: bool| HealthEvent {
        service: "web".into(),
        backend: "198.18.0.23:80".parse().expect("addr"),
        up,
        transition,
        probe_ok: up,
        latency: Duration::from_millis(2),
        detail: if up { "connected" } else { "connect failed" }.into(),
    };
    // A failed probe below `fall` changes nothing.
    bed.core.handle(Command::Health(event(true, false)));
    assert_eq!(bed.state(23), Some(BackendState::Active));
    bed.flows(&[(23, 6, 0)]);
    bed.core.handle(Command::Health(event(false, true)));
    assert_eq!(bed.state(23), Some(BackendState::Down));
    assert!(!bed.served().contains(&bed.id(23)));
    bed.run_scans();
    assert!(
        bed.dp.state().cut.contains(&bed.id(23)),
        "its flows re-balanced"
    );
    let status = bed.core.status().expect("status");
    let b = &status.services[0].backends[2];
    assert_eq!(b.state, BackendState::Down);
    let h = b.health.as_ref().expect("health shown");
    assert!(!h.up);
    assert_eq!(h.detail.as_deref(), Some("connect failed"));

    bed.core.handle(Command::Health(event(true, true)));
    assert_eq!(bed.state(23), Some(BackendState::Active));
    assert!(bed.served().contains(&bed.id(23)));

    // A transition whose apply fails is not reported as done: retried at the next tick.
    bed.dp.state().fail_after = Some(0);
    bed.core.handle(Command::Health(event(false, true)));
    assert!(bed.served().contains(&bed.id(23)), "the data path refused");
    bed.dp.state().fail_after = None;
    bed.core.handle(Command::Tick(HashMap::new()));
    assert!(!bed.served().contains(&bed.id(23)), "applied at the tick");
}

#[test]
fn reload_applies_a_good_config_and_keeps_the_running_one_on_a_bad_one() {
    let mut bed = Bed::new("reload", DatapathMode::XdpGeneric);
    let path = bed.dir.join("lbd.toml");
    std::fs::write(&path, CONFIG.replace("weight = 2", "weight = 5 ")).expect("write");
    bed.core.handle(Command::Reload);
    let key = bed.core.config.services[0].key();
    assert_eq!(
        bed.core.engine.backend(&key, ip(23)).map(|b| b.weight),
        Some(5)
    );
    assert_eq!(bed.core.reloads, 1);

    // A bad file: rejected, counted, the running config kept.
    std::fs::write(
        &path,
        "[daemon]\ninterface = \"eth0\"\ndatapath = \"warp\"\n",
    )
    .expect("write");
    bed.core.handle(Command::Reload);
    assert_eq!(bed.core.reload_failures, 1);
    assert_eq!(bed.core.engine.services().count(), 1);
    assert_eq!(
        bed.effects.asked().notified,
        vec![
            Notify::Reloading,
            Notify::Ready,
            Notify::Reloading,
            Notify::Ready
        ]
    );

    // A new backend without a known MAC: the reload waits for the look-up, not the core.
    std::fs::write(
        &path,
        CONFIG.replace(
            "{ addr = \"198.18.0.21\" }",
            "{ addr = \"198.18.0.21\" }, { addr = \"198.18.0.99\" }",
        ),
    )
    .expect("write");
    bed.core.handle(Command::Reload);
    assert_eq!(bed.core.engine.backend(&key, ip(99)), None, "not yet");
    assert_eq!(bed.run_resolves(&HashMap::new()), 1);
    assert_eq!(
        bed.state(99),
        Some(BackendState::Unresolved),
        "applied, out of rotation"
    );
    assert_eq!(bed.core.reloads, 2);

    // A backend that was unresolved before does not make a reload wait again.
    std::fs::write(
        &path,
        CONFIG.replace(
            "{ addr = \"198.18.0.21\" }",
            "{ addr = \"198.18.0.21\", weight = 3 }, { addr = \"198.18.0.99\" }",
        ),
    )
    .expect("write");
    bed.core.handle(Command::Reload);
    assert!(bed.effects.asked().resolves.is_empty());
    assert_eq!(bed.core.reloads, 3);

    // A burst of reloads that wait: only the last one is applied.
    for weight in [7, 8] {
        std::fs::write(
            &path,
            CONFIG.replace(
                "{ addr = \"198.18.0.21\" }",
                &format!(
                    "{{ addr = \"198.18.0.21\", weight = {weight} }}, {{ addr = \"198.18.0.98\" }}"
                ),
            ),
        )
        .expect("write");
        bed.core.handle(Command::Reload);
    }
    assert_eq!(bed.run_resolves(&HashMap::new()), 2);
    assert_eq!(bed.core.reloads, 4, "the superseded reload is dropped");
    assert_eq!(
        bed.core.engine.backend(&key, ip(21)).map(|b| b.weight),
        Some(8)
    );
}

#[test]
fn a_failed_apply_is_rolled_back_and_reported() {
    let mut bed = Bed::new("rollback", DatapathMode::XdpGeneric);
    let before = bed.served();
    bed.dp.state().fail_after = Some(0);
    let rx = bed.request(Request::BackendWeight {
        service: "web".into(),
        addr: "198.18.0.21".into(),
        weight: 9,
    });
    let message = error(rx);
    assert!(
        message.starts_with("data path update failed: map FAKE: refused (test)"),
        "{message}"
    );
    assert!(message.ends_with("; the change was undone"), "{message}");
    bed.dp.state().fail_after = None;
    let saved = StateFile::in_dir(&bed.dir).load().expect("state file");
    assert!(saved.services.is_empty(), "the state file was restored");
    assert!(bed.core.overrides.services.is_empty());
    bed.core.handle(Command::Tick(HashMap::new()));
    assert_eq!(bed.served(), before);
    let key = bed.core.config.services[0].key();
    assert_eq!(
        bed.core.engine.backend(&key, ip(21)).map(|b| b.weight),
        Some(1)
    );

    // A state file that cannot be written: refused before anything changes.
    std::fs::remove_dir_all(&bed.dir).expect("remove dir");
    std::fs::write(&bed.dir, "a file where the state directory should be").expect("write");
    let message = error(bed.request(Request::BackendWeight {
        service: "web".into(),
        addr: "198.18.0.21".into(),
        weight: 9,
    }));
    assert!(message.ends_with("; nothing was changed"), "{message}");
    assert_eq!(
        bed.core.engine.backend(&key, ip(21)).map(|b| b.weight),
        Some(1)
    );
    let _ = std::fs::remove_file(&bed.dir);
}

#[test]
fn status_sums_services_from_backends_and_the_proxy_needs_no_macs() {
    let mut bed = Bed::new("status", DatapathMode::Userspace);
    // The proxy enters backends without MACs.
    bed.core.macs.clear();
    bed.core.handle(Command::Tick(HashMap::new()));
    assert!(
        bed.effects.asked().resolves.is_empty(),
        "no look-ups for the proxy"
    );
    for n in [21, 22] {
        let id = bed.id(n);
        bed.dp.state().counters.insert(
            id,
            Counter {
                packets: 10,
                bytes: 1000,
                new_flows: 1,
            },
        );
    }
    bed.run_scans();
    let s = bed.core.status().expect("status");
    assert_eq!(s.datapath, DatapathMode::Userspace);
    assert_eq!((s.services[0].packets, s.services[0].bytes), (20, 2000));
    assert!(
        s.services[0]
            .backends
            .iter()
            .all(|b| b.state == BackendState::Active)
    );
    // Adding on the proxy needs no look-up: answered at once.
    let rx = bed.request(Request::BackendAdd {
        service: "web".into(),
        addr: "198.18.0.24".into(),
        weight: None,
    });
    assert_eq!(done(rx), "added 198.18.0.24 to web with weight 1");
}

#[test]
fn flows_are_listed_named_and_filtered() {
    let mut bed = Bed::new("flows", DatapathMode::XdpGeneric);
    let vip = std::net::SocketAddr::new(ip(100), 80);
    let flow = |port: u16, backend: u8, idle_s: u64| FlowRecord {
        proto: crate::config::Proto::Tcp,
        client: std::net::SocketAddr::new(ip(10), port),
        vip,
        backend_id: bed.id(backend),
        closing: port == 3,
        idle: Duration::from_secs(idle_s),
        expires: Some(Duration::from_secs(900 - idle_s)),
    };
    let listed = vec![flow(1, 21, 5), flow(2, 22, 1), flow(3, 21, 9)];
    bed.dp.state().listed = listed;

    let flows = |bed: &mut Bed, req: Request| -> Result<crate::flows::FlowsReport, String> {
        let mut rx = bed.request(req);
        bed.run_lists();
        match rx.try_recv().expect("an answer") {
            Response::Flows(r) => Ok(*r),
            Response::Error { message } => Err(message),
            _ => Err("another answer".into()),
        }
    };
    let all = flows(
        &mut bed,
        Request::Flows {
            service: None,
            backend: None,
            client: None,
            limit: None,
        },
    )
    .expect("flows");
    assert_eq!((all.matched, all.total, all.flows.len()), (3, 3, 3));
    assert_eq!(all.flows[0].client, "198.18.0.10:2", "most recent first");
    assert_eq!(all.flows[0].backend, "198.18.0.22");
    assert_eq!(all.flows[0].service, "web");
    assert_eq!(all.flows[2].state, FlowStateName::Closing);

    let b1 = flows(
        &mut bed,
        Request::Flows {
            service: Some("web".into()),
            backend: Some("198.18.0.21".into()),
            client: None,
            limit: Some(1),
        },
    )
    .expect("flows");
    assert_eq!((b1.matched, b1.flows.len()), (2, 1));
    assert_eq!(b1.flows[0].idle_s, 5);

    // Bad filters: each says which and what is allowed; nothing is listed.
    for (req, want) in [
        (
            Request::Flows {
                service: Some("nosuch".into()),
                backend: None,
                client: None,
                limit: None,
            },
            "unknown service \"nosuch\"",
        ),
        (
            Request::Flows {
                service: None,
                backend: Some("198.18.0.99".into()),
                client: None,
                limit: None,
            },
            "backend: 198.18.0.99 is not a backend of any service",
        ),
        (
            Request::Flows {
                service: Some("web".into()),
                backend: Some("198.18.0.99".into()),
                client: None,
                limit: None,
            },
            "198.18.0.99 is not a backend of web",
        ),
        (
            Request::Flows {
                service: None,
                backend: Some("x".into()),
                client: None,
                limit: None,
            },
            "backend: \"x\" is not an address (e.g. 198.18.0.21 or 2001:db8::21)",
        ),
        (
            Request::Flows {
                service: None,
                backend: None,
                client: Some("1.2.3".into()),
                limit: None,
            },
            "client: \"1.2.3\" is not an address or address:port",
        ),
        (
            Request::Flows {
                service: None,
                backend: None,
                client: None,
                limit: Some(10_000_000),
            },
            "limit: 10000000 is too many rows",
        ),
    ] {
        let e = flows(&mut bed, req).expect_err("refused");
        assert!(e.contains(want), "{e:?} should contain {want:?}");
    }
    assert!(bed.effects.asked().lists.is_empty());
}

#[test]
fn the_flood_guard_is_set_at_start_and_by_a_reload() {
    let mut bed = Bed::new("flood", DatapathMode::XdpGeneric);
    assert_eq!(
        bed.dp.state().flood_guard,
        Some(crate::config::DEFAULT_FLOOD_NEW_FLOWS_PER_SEC)
    );
    let path = bed.dir.join("lbd.toml");
    std::fs::write(
        &path,
        CONFIG.replace("[daemon]\n", "[daemon]\nflood_new_flows_per_sec = 5000\n"),
    )
    .expect("write");
    bed.core.handle(Command::Reload);
    assert_eq!(bed.dp.state().flood_guard, Some(5000));
    let s = bed.core.status().expect("status");
    assert_eq!(s.flood_guard.new_flows_per_sec, 5000);
}

#[test]
fn a_reload_beyond_the_rings_it_started_with_is_refused() {
    let mut bed = Bed::new("max-services", DatapathMode::XdpGeneric);
    assert_eq!(bed.core.config.daemon.max_services, 64);
    let mut text = String::from("[daemon]\ninterface = \"eth0\"\ndatapath = \"xdp-generic\"\n");
    for i in 0..65 {
        text += &format!(
            "[[service]]\nvip = \"198.18.0.100:{}\"\nbackends = [ {{ addr = \"198.18.0.21\" }} ]\n",
            1000 + i
        );
    }
    std::fs::write(bed.dir.join("lbd.toml"), text).expect("write");
    bed.core.handle(Command::Reload);
    assert_eq!(bed.core.reload_failures, 1, "refused");
    assert_eq!(
        bed.core.engine.services().count(),
        1,
        "the running config kept"
    );
}

#[test]
fn vips_are_announced_while_they_can_be_served_and_withdrawn_with_the_reason() {
    let config = CONFIG.replace("[daemon]\n", "[announce]\ntable = 100\n[daemon]\n");
    let mut bed = Bed::with_config("announce", DatapathMode::XdpGeneric, &config);
    let last = |bed: &Bed| bed.effects.asked().announced.last().cloned();
    assert_eq!(last(&bed), Some((100, vec![ip(100)])), "announced at start");
    let status = bed.core.status().expect("status");
    let a = status.announce.expect("announce status");
    assert!(a.vips[0].announced && !a.drained);

    // Every backend down: withdrawn, and said why.
    for n in [21, 22, 23] {
        bed.core.handle(Command::Health(HealthEvent {
            service: "web".into(),
            backend: format!("198.18.0.{n}:80").parse().expect("addr"),
            up: false,
            transition: true,
            probe_ok: false,
            latency: Duration::from_millis(2),
            detail: "connect failed".into(),
        }));
    }
    assert_eq!(last(&bed), Some((100, vec![])));
    let a = bed
        .core
        .status()
        .expect("status")
        .announce
        .expect("announce");
    assert_eq!(a.vips[0].reason, crate::announce::Reason::NoBackend);

    // One back: announced again.
    bed.core.handle(Command::Health(HealthEvent {
        service: "web".into(),
        backend: "198.18.0.22:80".parse().expect("addr"),
        up: true,
        transition: true,
        probe_ok: true,
        latency: Duration::from_millis(2),
        detail: "connected".into(),
    }));
    assert_eq!(last(&bed), Some((100, vec![ip(100)])));

    // Node drain: withdrawn, saved in the state file; undrain announces again.
    let mut rx = bed.request(Request::NodeDrain {});
    assert!(matches!(rx.try_recv(), Ok(Response::Done { .. })));
    assert_eq!(last(&bed), Some((100, vec![])));
    assert!(
        StateFile::in_dir(&bed.dir)
            .load()
            .expect("state")
            .node_drained
    );
    let a = bed
        .core
        .status()
        .expect("status")
        .announce
        .expect("announce");
    assert!(a.drained && a.vips[0].reason == crate::announce::Reason::NodeDrained);
    let mut rx = bed.request(Request::NodeUndrain {});
    assert!(matches!(rx.try_recv(), Ok(Response::Done { .. })));
    assert_eq!(last(&bed), Some((100, vec![ip(100)])));
    let sent = bed.effects.asked().announced.len();
    bed.core.handle(Command::Tick(HashMap::new()));
    assert_eq!(
        bed.effects.asked().announced.len(),
        sent,
        "no change, no netlink"
    );
}

#[test]
fn node_drain_without_announce_says_so() {
    let mut bed = Bed::new("no-announce", DatapathMode::XdpGeneric);
    let mut rx = bed.request(Request::NodeDrain {});
    match rx.try_recv() {
        Ok(Response::Error { message }) => {
            assert!(
                message.contains("[announce] is not in the config"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
}
