//! The balancer's model: services and backends with stable ids, turned into data path calls.
//!
//! The engine owns the mapping from config, runtime overrides, health and MACs to what the data
//! path serves, and drives it through the [`Datapath`] trait, so the same logic feeds XDP, the
//! proxy, the program tests and the unit tests' fake. Its rules:
//! - ids are stable: a service keeps its id and a backend its id across reloads, so connection
//!   table entries (flow → backend id) stay valid when the table changes;
//! - each service has one Maglev table over its backends in rotation, built here once per change
//!   of that set ([`maglev::id_table`]) and handed to whichever data path runs;
//! - a backend that leaves the config is REMOVED (no new flows, established ones go on) and its
//!   id is freed only once no flow uses it;
//! - the backends of a service are the config's, changed by the runtime overrides of `lbctl`
//!   ([`Overrides`]), by health checks (a backend that fails them is DOWN; the engine holds the
//!   one copy of that verdict) and, on XDP, by whether its MAC is known.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
};

use lb_common::{Counter, MAX_BACKENDS, MAX_SERVICES};

use crate::{
    config::{Config, Proto, Scheduler, ServiceConfig, ServiceKey},
    datapath::{BackendEntry, Datapath, DatapathCounters, DatapathError, ServiceEntry},
    maglev::{self, Member},
    model::BackendState,
    overrides::{Admin, Overrides},
};

/// Errors from the engine or the data path under it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// All ids of a kind are in use.
    #[error(
        "no free {kind} id: {max} are in use (backends that left keep their id until their flows end)"
    )]
    NoFreeId {
        /// "service" or "backend".
        kind: &'static str,
        /// The limit.
        max: u32,
    },
    /// The data path refused a change.
    #[error("data path update failed: {0}")]
    Datapath(#[from] DatapathError),
}

/// Where a backend comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Listed in the config file.
    Config,
    /// Added with `lbctl backend add` (kept in the state file).
    Lbctl,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Config => "config",
            Source::Lbctl => "lbctl",
        })
    }
}

/// A backend as the engine tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendRec {
    /// Stable id: BACKENDS index and counter key.
    pub id: u32,
    /// Address.
    pub addr: IpAddr,
    /// Weight.
    pub weight: u32,
    /// Taken out of rotation by an operator.
    pub admin: Option<Admin>,
    /// Gone from the config or removed by an operator; kept while flows use it.
    pub removed: bool,
    /// Failed its health checks.
    pub health_down: bool,
    /// Resolved MAC; on XDP a backend without one is out of rotation.
    pub mac: Option<[u8; 6]>,
    /// Where it comes from.
    pub source: Source,
    /// The config's weight, when the config lists it (shown when `lbctl` overrides it).
    pub config_weight: Option<u32>,
    /// Whether the data path needs the backend's MAC (XDP does; the proxy's kernel resolves it).
    pub mac_required: bool,
    /// What the data path was last given, so that an unchanged backend is not written again.
    written: Option<BackendEntry>,
}

impl BackendRec {
    /// Its state; the reasons for being out of rotation rank removed, maintenance, draining,
    /// down, unresolved.
    pub fn state(&self) -> BackendState {
        match self.admin {
            _ if self.removed => BackendState::Removed,
            Some(Admin::Maintenance) => BackendState::Maintenance,
            Some(Admin::Draining) => BackendState::Draining,
            None if self.health_down => BackendState::Down,
            None if self.mac.is_none() && self.mac_required => BackendState::Unresolved,
            None => BackendState::Active,
        }
    }

    /// Whether the backend takes new flows.
    pub fn in_rotation(&self) -> bool {
        self.state().in_rotation()
    }

    fn entry(&self) -> BackendEntry {
        BackendEntry {
            addr: self.addr,
            mac: self.mac,
            state: self.state(),
        }
    }
}

/// One backend as config and overrides together want it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wanted {
    weight: u32,
    admin: Option<Admin>,
    removed: bool,
    source: Source,
    config_weight: Option<u32>,
}

/// Merges a service's config backends with the runtime overrides.
fn wanted_backends(sc: &ServiceConfig, overrides: &Overrides) -> BTreeMap<IpAddr, Wanted> {
    let key = sc.key().to_string();
    let mut out: BTreeMap<IpAddr, Wanted> = sc
        .backends
        .iter()
        .map(|b| {
            let w = Wanted {
                weight: b.weight,
                admin: None,
                removed: false,
                source: Source::Config,
                config_weight: Some(b.weight),
            };
            (b.addr, w)
        })
        .collect();
    if let Some(list) = overrides.services.get(&key) {
        for (addr, o) in list {
            let entry = match out.get_mut(addr) {
                Some(w) => w,
                // An override of a backend the config no longer lists: only runtime additions count.
                None if o.added => out.entry(*addr).or_insert(Wanted {
                    weight: 1,
                    admin: None,
                    removed: false,
                    source: Source::Lbctl,
                    config_weight: None,
                }),
                None => continue,
            };
            if let Some(w) = o.weight {
                entry.weight = w;
            }
            entry.admin = o.admin;
            entry.removed = o.removed;
        }
    }
    out
}

/// A service as the engine tracks it.
#[derive(Debug, Clone)]
pub struct Service {
    /// Stable id.
    pub id: u32,
    /// Its config.
    pub config: ServiceConfig,
    /// Backends, including removed ones that still carry flows, by address.
    pub backends: BTreeMap<IpAddr, BackendRec>,
    /// Packets and bytes of its backends freed so far: the data paths count per backend only
    /// (see [`DatapathCounters::service`]).
    pub retired: Counter,
    /// The scheduler and members the data path serves now; None before the first write.
    served: Option<(Scheduler, Vec<Member>)>,
}

impl Service {
    /// The backends in rotation, as the table is built over them (sorted by address).
    pub fn members(&self) -> Vec<Member> {
        self.backends
            .values()
            .filter(|b| b.in_rotation())
            .map(|b| Member {
                id: b.id,
                addr: b.addr,
                weight: b.weight,
            })
            .collect()
    }

    /// The Maglev table over [`Service::members`], in backend ids.
    pub fn table(&self) -> Vec<u32> {
        maglev::id_table(&self.members())
    }
}

/// The ids the engine gave out, kept beside a pinned data path: the connection table holds
/// backend ids, so a restart that adopts it must give every backend the id it had.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdMap {
    /// Services, with their backends.
    pub services: Vec<ServiceIds>,
}

/// One service's ids.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceIds {
    /// Protocol.
    pub proto: Proto,
    /// VIP and port.
    pub vip: SocketAddr,
    /// Service id.
    pub id: u32,
    /// Backend address → id, removed ones included.
    pub backends: BTreeMap<IpAddr, u32>,
}

/// The engine.
#[derive(Debug, Default)]
pub struct Engine {
    mac_required: bool,
    services: BTreeMap<ServiceKey, Service>,
    free_service_ids: BTreeSet<u32>,
    free_backend_ids: BTreeSet<u32>,
}

/// What one [`Engine::apply`] changed, for the log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// Services added.
    pub services_added: usize,
    /// Services removed.
    pub services_removed: usize,
    /// Backends added.
    pub backends_added: usize,
    /// Backends marked removed.
    pub backends_removed: usize,
    /// Maglev tables rebuilt and handed to the data path.
    pub tables_written: usize,
}

impl Engine {
    /// An empty engine for the XDP data path (backends need a resolved MAC): all ids free.
    pub fn new() -> Engine {
        Engine::with_mac_required(true)
    }

    /// An empty engine; `mac_required` is false for the userspace proxy.
    pub fn with_mac_required(mac_required: bool) -> Engine {
        Engine {
            mac_required,
            services: BTreeMap::new(),
            free_service_ids: (0..MAX_SERVICES).collect(),
            free_backend_ids: (0..MAX_BACKENDS).collect(),
        }
    }

    /// The ids given out now.
    pub fn ids(&self) -> IdMap {
        IdMap {
            services: self
                .services
                .values()
                .map(|s| ServiceIds {
                    proto: s.config.proto,
                    vip: s.config.vip,
                    id: s.id,
                    backends: s.backends.values().map(|b| (b.addr, b.id)).collect(),
                })
                .collect(),
        }
    }

    /// Takes back the ids of an adopted data path before the first apply: its services and
    /// backends come back with their ids, as removed (the apply puts the configured ones back
    /// in, and the others leave once their flows end). `macs` are the backends' MACs by id, as
    /// the data path holds them. Ids out of range or given twice are skipped.
    pub fn seed(&mut self, ids: &IdMap, macs: &HashMap<u32, [u8; 6]>) {
        for s in &ids.services {
            let key = ServiceKey {
                vip: s.vip,
                proto: s.proto,
            };
            if self.services.contains_key(&key) || !self.free_service_ids.remove(&s.id) {
                continue;
            }
            let mut backends = BTreeMap::new();
            for (&addr, &id) in &s.backends {
                if !self.free_backend_ids.remove(&id) {
                    continue;
                }
                backends.insert(
                    addr,
                    BackendRec {
                        id,
                        addr,
                        weight: 1,
                        admin: None,
                        removed: true,
                        health_down: false,
                        mac: macs.get(&id).copied(),
                        source: Source::Config,
                        config_weight: None,
                        mac_required: self.mac_required,
                        written: None,
                    },
                );
            }
            let config = ServiceConfig {
                name: key.to_string(),
                vip: s.vip,
                proto: s.proto,
                scheduler: Scheduler::Maglev,
                backends: Vec::new(),
                health: None,
            };
            self.services.insert(
                key,
                Service {
                    id: s.id,
                    config,
                    backends,
                    retired: Counter::default(),
                    served: None,
                },
            );
        }
    }

    /// Services, by key.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    /// The service with this key.
    pub fn service(&self, key: &ServiceKey) -> Option<&Service> {
        self.services.get(key)
    }

    /// A backend of a service.
    pub fn backend(&self, key: &ServiceKey, addr: IpAddr) -> Option<&BackendRec> {
        self.services.get(key).and_then(|s| s.backends.get(&addr))
    }

    /// Records a health verdict; true when it changed the backend (apply to take effect).
    pub fn set_health_down(&mut self, key: &ServiceKey, addr: IpAddr, down: bool) -> bool {
        match self
            .services
            .get_mut(key)
            .and_then(|s| s.backends.get_mut(&addr))
        {
            Some(b) if b.health_down != down => {
                b.health_down = down;
                true
            }
            _ => false,
        }
    }

    /// Makes the data path match `config` changed by `overrides`. `macs` holds the resolved MAC
    /// of each backend address known so far (backends without one stay out of rotation until a
    /// later apply). Only what changed reaches the data path.
    pub fn apply(
        &mut self,
        config: &Config,
        overrides: &Overrides,
        macs: &HashMap<IpAddr, [u8; 6]>,
        dp: &mut dyn Datapath,
    ) -> Result<ApplyReport, EngineError> {
        let mut report = ApplyReport::default();
        let wanted: BTreeSet<ServiceKey> = config.services.iter().map(|s| s.key()).collect();

        // Services gone from the config: unmatch the VIP first, then free their ids. Their flows
        // can no longer match (VIPS is looked up before the connection table).
        let gone: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        for key in gone {
            dp.remove_service(&key)?;
            if let Some(svc) = self.services.remove(&key) {
                for b in svc.backends.values() {
                    dp.free_backend(b.id)?;
                    self.free_backend_ids.insert(b.id);
                }
                self.free_service_ids.insert(svc.id);
                report.services_removed += 1;
            }
        }

        for sc in &config.services {
            let key = sc.key();
            if !self.services.contains_key(&key) {
                let id = take_id(&mut self.free_service_ids, "service", MAX_SERVICES)?;
                self.services.insert(
                    key,
                    Service {
                        id,
                        config: sc.clone(),
                        backends: BTreeMap::new(),
                        retired: Counter::default(),
                        served: None,
                    },
                );
                report.services_added += 1;
            }
            let Some(svc) = self.services.get_mut(&key) else {
                continue;
            };
            svc.config = sc.clone();
            // Backends: update or add those wanted, mark the others removed.
            let wanted = wanted_backends(sc, overrides);
            for (addr, w) in &wanted {
                let rec = match svc.backends.get_mut(addr) {
                    Some(rec) => rec,
                    None if w.removed => continue,
                    None => {
                        let id = take_id(&mut self.free_backend_ids, "backend", MAX_BACKENDS)?;
                        report.backends_added += 1;
                        svc.backends.entry(*addr).or_insert(BackendRec {
                            id,
                            addr: *addr,
                            weight: w.weight,
                            admin: None,
                            removed: false,
                            health_down: false,
                            mac: None,
                            source: w.source,
                            config_weight: w.config_weight,
                            mac_required: self.mac_required,
                            written: None,
                        })
                    }
                };
                if w.removed && !rec.removed {
                    report.backends_removed += 1;
                }
                rec.weight = w.weight;
                rec.admin = w.admin;
                rec.removed = w.removed;
                rec.source = w.source;
                rec.config_weight = w.config_weight;
                if let Some(mac) = macs.get(addr) {
                    rec.mac = Some(*mac);
                }
            }
            for rec in svc.backends.values_mut() {
                if !wanted.contains_key(&rec.addr) && !rec.removed {
                    rec.removed = true;
                    report.backends_removed += 1;
                }
                // A backend no longer checked cannot stay down.
                rec.health_down &= sc.health.is_some();
            }
            // Backend entries before the table that points at them.
            for rec in svc.backends.values_mut() {
                let entry = rec.entry();
                if rec.written != Some(entry) {
                    dp.set_backend(rec.id, &entry)?;
                    rec.written = Some(entry);
                }
            }
            if serve(svc, dp)? {
                report.tables_written += 1;
            }
        }
        Ok(report)
    }

    /// Frees one removed backend now, whatever its flows (`lbctl backend remove --force`); the
    /// caller deletes its connection table entries. Returns its id.
    pub fn free_now(
        &mut self,
        key: &ServiceKey,
        addr: IpAddr,
        dp: &mut dyn Datapath,
    ) -> Result<Option<u32>, EngineError> {
        let Some(svc) = self.services.get_mut(key) else {
            return Ok(None);
        };
        if !svc.backends.get(&addr).is_some_and(|b| b.removed) {
            return Ok(None);
        }
        let Some(b) = svc.backends.remove(&addr) else {
            return Ok(None);
        };
        let last = dp.free_backend(b.id)?;
        svc.retired.add(last);
        self.free_backend_ids.insert(b.id);
        Ok(Some(b.id))
    }

    /// Frees removed backends that no flow uses any more. `flows_of(id)` counts the flows in
    /// the connection table pinned to a backend id (the caller deletes them on free).
    pub fn reap_removed(
        &mut self,
        flows_of: impl Fn(u32) -> u64,
        dp: &mut dyn Datapath,
    ) -> Result<Vec<u32>, EngineError> {
        let mut freed = Vec::new();
        for svc in self.services.values_mut() {
            let idle: Vec<IpAddr> = svc
                .backends
                .values()
                .filter(|b| b.removed && flows_of(b.id) == 0)
                .map(|b| b.addr)
                .collect();
            for addr in idle {
                let Some(id) = svc.backends.get(&addr).map(|b| b.id) else {
                    continue;
                };
                // Forget it only once the data path has: a failed free is tried again.
                let last = dp.free_backend(id)?;
                svc.backends.remove(&addr);
                svc.retired.add(last);
                self.free_backend_ids.insert(id);
                freed.push(id);
            }
        }
        Ok(freed)
    }

    /// A service's counter, from the data path's per-backend ones.
    pub fn service_counter(&self, svc: &Service, counters: &DatapathCounters) -> Counter {
        counters.service(svc.retired, svc.backends.values().map(|b| b.id))
    }
}

fn take_id(free: &mut BTreeSet<u32>, kind: &'static str, max: u32) -> Result<u32, EngineError> {
    free.pop_first().ok_or(EngineError::NoFreeId { kind, max })
}

/// Hands the service to the data path when its scheduler or its members changed: the one Maglev
/// build per change. Returns whether a table was built.
fn serve(svc: &mut Service, dp: &mut dyn Datapath) -> Result<bool, EngineError> {
    let members = svc.members();
    let scheduler = svc.config.scheduler;
    let table_changed = svc.served.as_ref().is_none_or(|(_, m)| *m != members);
    if !table_changed && svc.served.as_ref().is_some_and(|(s, _)| *s == scheduler) {
        return Ok(false);
    }
    let table = maglev::id_table(&members);
    dp.set_service(&ServiceEntry {
        id: svc.id,
        key: svc.config.key(),
        name: &svc.config.name,
        scheduler,
        members: &members,
        table: &table,
    })?;
    svc.served = Some((scheduler, members));
    Ok(table_changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::{
        DatapathMode,
        fake::{FakeDatapath, FakeService},
    };

    fn config(backends: &[&str]) -> Config {
        let list: Vec<String> = backends
            .iter()
            .map(|b| format!("{{ addr = \"{b}\" }}"))
            .collect();
        Config::parse(&format!(
            "[daemon]\ninterface = \"eth0\"\n[[service]]\nvip = \"198.18.0.100:80\"\nhealth = {{}}\nbackends = [{}]\n",
            list.join(", ")
        ))
        .expect("test config")
    }

    fn macs() -> HashMap<IpAddr, [u8; 6]> {
        (1..=30)
            .map(|i| (IpAddr::from([198, 18, 0, i]), [2, 0, 0, 0, 0, i]))
            .collect()
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([198, 18, 0, n])
    }

    fn fake() -> FakeDatapath {
        FakeDatapath::new(DatapathMode::XdpNative)
    }

    fn served(dp: &FakeDatapath) -> FakeService {
        dp.state()
            .services
            .values()
            .next()
            .cloned()
            .expect("one service")
    }

    fn ids(table: &[u32]) -> BTreeSet<u32> {
        table.iter().copied().collect()
    }

    #[test]
    fn ids_are_stable_and_tables_are_built_once_per_change() {
        let mut e = Engine::new();
        let mut dp = fake();
        let three = config(&["198.18.0.21", "198.18.0.22", "198.18.0.23"]);
        e.apply(&three, &Overrides::default(), &macs(), &mut dp)
            .expect("apply");
        let ids1 = ids(&served(&dp).table);
        assert_eq!(ids1.len(), 3);

        // Same config again: nothing rebuilt, nothing written.
        let r = e
            .apply(&three, &Overrides::default(), &macs(), &mut dp)
            .expect("apply");
        assert_eq!(r.tables_written, 0);
        assert_eq!(dp.state().tables_written, 1);

        // One backend leaves: a new table; the others keep their ids.
        let r = e
            .apply(
                &config(&["198.18.0.21", "198.18.0.22"]),
                &Overrides::default(),
                &macs(),
                &mut dp,
            )
            .expect("apply");
        assert_eq!((r.backends_removed, r.tables_written), (1, 1));
        let ids2 = ids(&served(&dp).table);
        assert!(ids2.is_subset(&ids1) && ids2.len() == 2);
        let gone = *ids1.difference(&ids2).next().expect("one id left");
        let entry = dp.state().backends[&gone];
        assert_eq!(entry.state, BackendState::Removed);
        assert_eq!(
            entry.mac,
            Some([2, 0, 0, 0, 0, 23]),
            "a removed backend still forwards its flows"
        );

        // Its id is kept while it has flows, freed when they end; the service keeps what it
        // carried.
        dp.state().counters.insert(
            gone,
            Counter {
                packets: 7,
                bytes: 700,
                new_flows: 3,
            },
        );
        let kept = e
            .reap_removed(|id| u64::from(id == gone), &mut dp)
            .expect("reap");
        assert!(kept.is_empty());
        assert_eq!(e.reap_removed(|_| 0, &mut dp).expect("reap"), vec![gone]);
        for &id in &ids2 {
            dp.state().counters.insert(
                id,
                Counter {
                    packets: 10,
                    bytes: 1000,
                    new_flows: 2,
                },
            );
        }
        let counters = dp.counters().expect("counters");
        let svc = e.services().next().expect("service");
        assert_eq!(
            e.service_counter(svc, &counters),
            Counter {
                packets: 27,
                bytes: 2700,
                new_flows: 7,
            }
        );
    }

    #[test]
    fn backend_without_mac_stays_out_of_rotation() {
        let mut e = Engine::new();
        let mut dp = fake();
        let cfg = config(&["198.18.0.21", "198.18.0.22"]);
        let mut m = macs();
        m.remove(&ip(22));
        e.apply(&cfg, &Overrides::default(), &m, &mut dp)
            .expect("apply");
        assert_eq!(ids(&served(&dp).table).len(), 1);
        let key = cfg.services[0].key();
        assert_eq!(
            e.backend(&key, ip(22)).map(BackendRec::state),
            Some(BackendState::Unresolved)
        );
        e.apply(&cfg, &Overrides::default(), &macs(), &mut dp)
            .expect("apply");
        assert_eq!(ids(&served(&dp).table).len(), 2);
        // The proxy needs no MAC.
        let mut p = Engine::with_mac_required(false);
        let mut pdp = FakeDatapath::new(DatapathMode::Userspace);
        p.apply(&cfg, &Overrides::default(), &HashMap::new(), &mut pdp)
            .expect("apply");
        assert_eq!(ids(&served(&pdp).table).len(), 2);
    }

    #[test]
    fn empty_service_has_no_backend_and_removed_service_unmatches() {
        let mut e = Engine::new();
        let mut dp = fake();
        e.apply(&config(&[]), &Overrides::default(), &macs(), &mut dp)
            .expect("apply");
        assert!(
            served(&dp)
                .table
                .iter()
                .all(|&x| x == lb_common::NO_BACKEND)
        );
        let none = Config::parse("[daemon]\ninterface = \"eth0\"\n").expect("config");
        let r = e
            .apply(&none, &Overrides::default(), &macs(), &mut dp)
            .expect("apply");
        assert_eq!(r.services_removed, 1);
        assert!(dp.state().services.is_empty());
    }

    #[test]
    fn two_nodes_build_identical_tables() {
        let (mut a, mut b) = (Engine::new(), Engine::new());
        let (mut da, mut db) = (fake(), fake());
        a.apply(
            &config(&["198.18.0.21", "198.18.0.22", "198.18.0.23"]),
            &Overrides::default(),
            &macs(),
            &mut da,
        )
        .expect("apply");
        b.apply(
            &config(&["198.18.0.23", "198.18.0.21", "198.18.0.22"]),
            &Overrides::default(),
            &macs(),
            &mut db,
        )
        .expect("apply");
        let addr = |e: &Engine, id: u32| {
            e.services()
                .next()
                .and_then(|s| s.backends.values().find(|r| r.id == id))
                .map(|r| r.addr)
        };
        let (ta, tb) = (served(&da).table, served(&db).table);
        for (x, y) in ta.iter().zip(&tb) {
            assert_eq!(addr(&a, *x), addr(&b, *y));
        }
    }

    #[test]
    fn overrides_and_health_shape_rotation() {
        let cfg = config(&["198.18.0.21", "198.18.0.22", "198.18.0.23"]);
        let key = cfg.services[0].key();
        let mut o = Overrides::default();
        o.update(&key.to_string(), ip(21), |b| {
            b.admin = Some(Admin::Draining);
        });
        o.update(&key.to_string(), ip(22), |b| {
            b.admin = Some(Admin::Maintenance);
        });
        o.update(&key.to_string(), ip(24), |b| {
            b.added = true;
            b.weight = Some(5);
        });
        o.update(&key.to_string(), ip(25), |b| b.removed = true); // not in config: ignored
        let mut e = Engine::new();
        let mut dp = fake();
        e.apply(&cfg, &o, &macs(), &mut dp).expect("apply");
        assert!(e.set_health_down(&key, ip(23), true));
        assert!(!e.set_health_down(&key, ip(23), true), "no change twice");
        e.apply(&cfg, &o, &macs(), &mut dp).expect("apply");
        let svc = e.service(&key).expect("service");
        let state = |n| dp.state().backends[&svc.backends[&ip(n)].id].state;
        assert_eq!(state(21), BackendState::Draining);
        assert_eq!(state(22), BackendState::Maintenance);
        assert_eq!(state(23), BackendState::Down);
        assert_eq!(state(24), BackendState::Active);
        assert_eq!(svc.backends[&ip(24)].source, Source::Lbctl);
        assert_eq!(svc.backends[&ip(24)].weight, 5);
        assert!(!svc.backends.contains_key(&ip(25)));
        // Only the added backend takes new flows.
        assert_eq!(
            ids(&served(&dp).table),
            BTreeSet::from([svc.backends[&ip(24)].id])
        );

        // Health back up and maintenance off: both return to the table.
        let mut o2 = o.clone();
        o2.update(&key.to_string(), ip(22), |b| b.admin = None);
        e.set_health_down(&key, ip(23), false);
        e.apply(&cfg, &o2, &macs(), &mut dp).expect("apply");
        let svc = e.service(&key).expect("service");
        let want: BTreeSet<u32> = [22, 23, 24]
            .iter()
            .map(|n| svc.backends[&ip(*n)].id)
            .collect();
        assert_eq!(ids(&served(&dp).table), want);

        // A config backend removed by lbctl is REMOVED, kept while it has flows.
        let mut o3 = o2.clone();
        o3.update(&key.to_string(), ip(23), |b| b.removed = true);
        let r = e.apply(&cfg, &o3, &macs(), &mut dp).expect("apply");
        assert_eq!(r.backends_removed, 1);
        assert_eq!(
            e.backend(&key, ip(23)).map(BackendRec::state),
            Some(BackendState::Removed)
        );
        assert!(e.free_now(&key, ip(23), &mut dp).expect("free").is_some());

        // Health checks switched off: nothing can stay down.
        e.set_health_down(&key, ip(24), true);
        let mut unchecked = cfg.clone();
        unchecked.services[0].health = None;
        e.apply(&unchecked, &o3, &macs(), &mut dp).expect("apply");
        assert!(!e.backend(&key, ip(24)).expect("backend").health_down);
    }

    #[test]
    fn a_failed_write_is_retried_by_the_next_apply() {
        let cfg = config(&["198.18.0.21", "198.18.0.22"]);
        let mut e = Engine::new();
        let mut dp = fake();
        dp.state().fail_after = Some(1);
        assert!(
            e.apply(&cfg, &Overrides::default(), &macs(), &mut dp)
                .is_err()
        );
        dp.state().fail_after = None;
        let r = e
            .apply(&cfg, &Overrides::default(), &macs(), &mut dp)
            .expect("apply");
        assert_eq!(r.tables_written, 1);
        assert_eq!(dp.state().backends.len(), 2);
        assert_eq!(ids(&served(&dp).table).len(), 2);
    }
}
