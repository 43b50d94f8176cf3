//! The balancer's model: services and backends with stable ids, turned into data path writes.
//!
//! The engine owns the mapping from config to the shared tables (VIPS, RINGS, BACKENDS) and
//! writes them through the [`Dataplane`] trait, so the same logic drives the XDP maps, the
//! fixture tests and (later) the userspace proxy. Its rules:
//! - ids are stable: a service keeps its id and a backend its id across reloads, so connection
//!   table entries (flow → backend id) stay valid when the table changes;
//! - a new Maglev table is written into the service's idle ring, then the VIPS entry is switched
//!   to it in one map update, so no packet sees a half-written table;
//! - a backend that leaves the config is marked REMOVED (no new flows, established ones go on)
//!   and its id is freed only once no flow uses it;
//! - the backends of a service are the config's, changed by the runtime overrides of `lbctl`
//!   ([`Overrides`]) and by health checks (a backend that fails them is DOWN).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use lb_common::{
    Backend, Counter, MAGLEV_M, MAX_BACKENDS, MAX_SERVICES, NO_BACKEND, STATS_BACKEND_BASE,
    STATS_SERVICE_BASE, VIP_FLAG_SRC_ONLY, VipInfo, VipKey, backend_state,
};

use crate::{
    config::{Config, Scheduler, ServiceConfig, ServiceKey},
    maglev,
    state::{AdminOverride, Overrides},
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
    /// The data path refused a write.
    #[error("data path update failed: {0}")]
    Dataplane(String),
}

/// Writes to the shared tables. Implemented by the XDP maps and by test fakes.
pub trait Dataplane {
    /// Sets BACKENDS[id].
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), EngineError>;
    /// Writes a whole Maglev table into ring `ring` (`MAGLEV_M` backend ids).
    fn write_ring(&mut self, ring: u32, table: &[u32]) -> Result<(), EngineError>;
    /// Inserts or replaces a VIPS entry.
    fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<(), EngineError>;
    /// Removes a VIPS entry.
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), EngineError>;
    /// Returns a freed backend's counters and zeroes them, so that the next backend given the
    /// id starts from zero.
    fn retire_backend(&mut self, id: u32) -> Result<Counter, EngineError>;
}

/// Administrative state of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Admin {
    /// In rotation (when its MAC is known and health checks pass).
    Active,
    /// Drained by an operator: no new flows, established ones go on.
    Draining,
    /// In maintenance by an operator: no new flows, established ones go on.
    Maintenance,
    /// Gone from the config or removed by an operator; kept while flows use it.
    Removed,
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

/// A backend as the engine tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendRec {
    /// Stable id: BACKENDS index and STATS index offset.
    pub id: u32,
    /// Address.
    pub addr: Ipv4Addr,
    /// Weight.
    pub weight: u32,
    /// Administrative state.
    pub admin: Admin,
    /// Failed its health checks.
    pub health_down: bool,
    /// Resolved MAC; a backend without one is out of rotation.
    pub mac: Option<[u8; 6]>,
    /// Where it comes from.
    pub source: Source,
    /// The config's weight, when the config lists it (shown when `lbctl` overrides it).
    pub config_weight: Option<u32>,
    /// Whether the data path needs the backend's MAC (XDP does; the proxy's kernel resolves it).
    pub mac_required: bool,
}

impl BackendRec {
    /// The state the data path sees.
    pub fn dataplane_state(&self) -> u32 {
        match self.admin {
            Admin::Removed => backend_state::REMOVED,
            Admin::Maintenance => backend_state::MAINTENANCE,
            Admin::Draining => backend_state::DRAINING,
            Admin::Active if self.health_down => backend_state::DOWN,
            Admin::Active => backend_state::ACTIVE,
        }
    }

    /// Whether the backend takes new flows.
    pub fn in_rotation(&self) -> bool {
        self.admin == Admin::Active
            && !self.health_down
            && (self.mac.is_some() || !self.mac_required)
    }

    /// The state name `lbctl status` and metrics show.
    pub fn state_name(&self) -> &'static str {
        match self.admin {
            Admin::Removed => "removed",
            Admin::Maintenance => "maintenance",
            Admin::Draining => "draining",
            Admin::Active if self.health_down => "down",
            Admin::Active if self.mac.is_none() && self.mac_required => "unresolved",
            Admin::Active => "active",
        }
    }
}

/// One backend as config and overrides together want it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wanted {
    weight: u32,
    admin: Admin,
    source: Source,
    config_weight: Option<u32>,
}

/// Merges a service's config backends with the runtime overrides.
fn wanted_backends(sc: &ServiceConfig, overrides: &Overrides) -> BTreeMap<Ipv4Addr, Wanted> {
    let key = sc.key().to_string();
    let mut out: BTreeMap<Ipv4Addr, Wanted> = sc
        .backends
        .iter()
        .map(|b| {
            let w = Wanted {
                weight: b.weight,
                admin: Admin::Active,
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
                    admin: Admin::Active,
                    source: Source::Lbctl,
                    config_weight: None,
                }),
                None => continue,
            };
            if let Some(w) = o.weight {
                entry.weight = w;
            }
            entry.admin = match o.admin {
                Some(AdminOverride::Draining) => Admin::Draining,
                Some(AdminOverride::Maintenance) => Admin::Maintenance,
                None => Admin::Active,
            };
            if o.removed {
                entry.admin = Admin::Removed;
            }
        }
    }
    out
}

/// A service as the engine tracks it.
#[derive(Debug, Clone)]
pub struct Service {
    /// Stable id (STATS index offset; rings `2*id` and `2*id+1`).
    pub id: u32,
    /// Its config.
    pub config: ServiceConfig,
    /// The ring in use now.
    pub ring: u32,
    /// The table in the ring in use (backend ids), empty before the first write.
    pub table: Vec<u32>,
    /// Backends, including removed ones that still carry flows, by address.
    pub backends: BTreeMap<Ipv4Addr, BackendRec>,
    /// Packets and bytes of its backends freed so far: the data path counts per backend only
    /// (see [`Engine::fill_service_stats`]).
    pub retired: Counter,
}

impl Service {
    /// The VIPS key of this service.
    pub fn vip_key(&self) -> VipKey {
        vip_key(&self.config.key())
    }
}

/// The VIPS key of a service.
pub fn vip_key(key: &ServiceKey) -> VipKey {
    VipKey {
        addr_be: u32::from_ne_bytes(key.vip.ip().octets()),
        port_be: key.vip.port().to_be(),
        proto: key.proto.number(),
        _pad: 0,
    }
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
    /// Maglev tables rewritten.
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

    /// Services, by key.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    /// The service with this key.
    pub fn service(&self, key: &ServiceKey) -> Option<&Service> {
        self.services.get(key)
    }

    /// Makes the data path match `config` changed by `overrides`. `macs` holds the resolved MAC
    /// of each backend address known so far (backends without one stay out of rotation until a
    /// later apply); `down` holds the (service, backend) pairs failing their health checks.
    pub fn apply(
        &mut self,
        config: &Config,
        overrides: &Overrides,
        down: &BTreeSet<(ServiceKey, Ipv4Addr)>,
        macs: &HashMap<Ipv4Addr, [u8; 6]>,
        dp: &mut dyn Dataplane,
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
            if let Some(svc) = self.services.remove(&key) {
                dp.remove_vip(&svc.vip_key())?;
                for b in svc.backends.values() {
                    self.free_backend(b.id, dp)?;
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
                        ring: 2 * id,
                        table: Vec::new(),
                        backends: BTreeMap::new(),
                        retired: Counter::default(),
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
                    None if w.admin == Admin::Removed => continue,
                    None => {
                        let id = take_id(&mut self.free_backend_ids, "backend", MAX_BACKENDS)?;
                        report.backends_added += 1;
                        svc.backends.entry(*addr).or_insert(BackendRec {
                            id,
                            addr: *addr,
                            weight: w.weight,
                            admin: Admin::Active,
                            health_down: false,
                            mac: None,
                            source: w.source,
                            config_weight: w.config_weight,
                            mac_required: self.mac_required,
                        })
                    }
                };
                if w.admin == Admin::Removed && rec.admin != Admin::Removed {
                    report.backends_removed += 1;
                }
                rec.weight = w.weight;
                rec.admin = w.admin;
                rec.source = w.source;
                rec.config_weight = w.config_weight;
                rec.health_down = down.contains(&(key, *addr));
                if let Some(mac) = macs.get(addr) {
                    rec.mac = Some(*mac);
                }
            }
            for rec in svc.backends.values_mut() {
                if !wanted.contains_key(&rec.addr) && rec.admin != Admin::Removed {
                    rec.admin = Admin::Removed;
                    report.backends_removed += 1;
                }
            }
            // BACKENDS entries before the table that points at them.
            for rec in svc.backends.values() {
                dp.set_backend(rec.id, &backend_value(rec))?;
            }
            if write_table(svc, dp)? {
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
        addr: Ipv4Addr,
        dp: &mut dyn Dataplane,
    ) -> Result<Option<u32>, EngineError> {
        let Some(svc) = self.services.get_mut(key) else {
            return Ok(None);
        };
        match svc.backends.get(&addr) {
            Some(b) if b.admin == Admin::Removed => {}
            _ => return Ok(None),
        }
        let Some(b) = svc.backends.remove(&addr) else {
            return Ok(None);
        };
        let last = self.free_backend(b.id, dp)?;
        if let Some(svc) = self.services.get_mut(key) {
            svc.retired.add(last);
        }
        Ok(Some(b.id))
    }

    /// Frees removed backends that no flow uses any more. `flows_of(id)` counts the flows in
    /// the connection table pinned to a backend id (the caller deletes them on free).
    pub fn reap_removed(
        &mut self,
        flows_of: impl Fn(u32) -> u64,
        dp: &mut dyn Dataplane,
    ) -> Result<Vec<u32>, EngineError> {
        let mut freed = Vec::new();
        for (key, svc) in self.services.iter_mut() {
            let idle: Vec<Ipv4Addr> = svc
                .backends
                .values()
                .filter(|b| b.admin == Admin::Removed && flows_of(b.id) == 0)
                .map(|b| b.addr)
                .collect();
            for addr in idle {
                if let Some(b) = svc.backends.remove(&addr) {
                    freed.push((*key, b.id));
                }
            }
        }
        for &(key, id) in &freed {
            let last = self.free_backend(id, dp)?;
            if let Some(svc) = self.services.get_mut(&key) {
                svc.retired.add(last);
            }
        }
        Ok(freed.into_iter().map(|(_, id)| id).collect())
    }

    /// Takes a backend out of the data path and frees its id; returns its last counters.
    fn free_backend(&mut self, id: u32, dp: &mut dyn Dataplane) -> Result<Counter, EngineError> {
        dp.set_backend(
            id,
            &Backend {
                mac: [0; 6],
                _pad: [0; 2],
                addr_be: 0,
                state: backend_state::REMOVED,
            },
        )?;
        let last = dp.retire_backend(id)?;
        self.free_backend_ids.insert(id);
        Ok(last)
    }

    /// Fills the service slots of counters in the STATS layout from the backend slots: the data
    /// path counts a forwarded packet once, for its backend (one per-CPU counter touched per
    /// packet, not two), so a service's figure is what its backends have now plus what its
    /// freed backends had.
    pub fn fill_service_stats(&self, stats: &mut [Counter]) {
        for svc in self.services.values() {
            let mut total = svc.retired;
            for b in svc.backends.values() {
                if let Some(c) = stats.get((STATS_BACKEND_BASE + b.id) as usize) {
                    total.add(*c);
                }
            }
            if let Some(slot) = stats.get_mut((STATS_SERVICE_BASE + svc.id) as usize) {
                *slot = total;
            }
        }
    }
}

fn take_id(free: &mut BTreeSet<u32>, kind: &'static str, max: u32) -> Result<u32, EngineError> {
    free.pop_first().ok_or(EngineError::NoFreeId { kind, max })
}

fn backend_value(rec: &BackendRec) -> Backend {
    Backend {
        mac: rec.mac.unwrap_or([0; 6]),
        _pad: [0; 2],
        addr_be: u32::from_ne_bytes(rec.addr.octets()),
        state: rec.dataplane_state(),
    }
}

/// Rebuilds the service's Maglev table; when it differs, writes it to the idle ring and switches
/// VIPS to it. Returns whether a table was written.
fn write_table(svc: &mut Service, dp: &mut dyn Dataplane) -> Result<bool, EngineError> {
    let members: Vec<&BackendRec> = svc.backends.values().filter(|b| b.in_rotation()).collect();
    let names: Vec<String> = members.iter().map(|b| b.addr.to_string()).collect();
    let entries: Vec<maglev::Entry> = members
        .iter()
        .zip(&names)
        .map(|(b, n)| maglev::Entry {
            name: n,
            weight: b.weight,
        })
        .collect();
    let table: Vec<u32> = if entries.is_empty() {
        vec![NO_BACKEND; MAGLEV_M as usize]
    } else {
        maglev::build(&entries, MAGLEV_M)
            .into_iter()
            .map(|i| members[i as usize].id)
            .collect()
    };
    let flags = match svc.config.scheduler {
        Scheduler::Sh => VIP_FLAG_SRC_ONLY,
        // rr, wrr and lc exist only in the userspace proxy, which does not read VIPS flags.
        Scheduler::Maglev | Scheduler::Rr | Scheduler::Wrr | Scheduler::Lc => 0,
    };
    let info_now = VipInfo {
        service_id: svc.id,
        ring: svc.ring,
        flags,
        _pad: 0,
    };
    if table == svc.table {
        // Same table; the flags may still have changed (scheduler maglev <-> sh).
        dp.set_vip(&svc.vip_key(), &info_now)?;
        return Ok(false);
    }
    let idle = if svc.table.is_empty() {
        svc.ring
    } else {
        svc.ring ^ 1
    };
    dp.write_ring(idle, &table)?;
    dp.set_vip(
        &svc.vip_key(),
        &VipInfo {
            ring: idle,
            ..info_now
        },
    )?;
    svc.ring = idle;
    svc.table = table;
    Ok(true)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Config;

    /// An in-memory data path: what the maps would hold.
    #[derive(Default)]
    pub struct FakeDataplane {
        pub backends: HashMap<u32, Backend>,
        pub rings: HashMap<u32, Vec<u32>>,
        pub vips: HashMap<VipKey, VipInfo>,
        pub ring_writes: usize,
    }

    impl Dataplane for FakeDataplane {
        fn set_backend(&mut self, id: u32, b: &Backend) -> Result<(), EngineError> {
            self.backends.insert(id, *b);
            Ok(())
        }
        fn write_ring(&mut self, ring: u32, table: &[u32]) -> Result<(), EngineError> {
            self.rings.insert(ring, table.to_vec());
            self.ring_writes += 1;
            Ok(())
        }
        fn set_vip(&mut self, k: &VipKey, v: &VipInfo) -> Result<(), EngineError> {
            self.vips.insert(*k, *v);
            Ok(())
        }
        fn remove_vip(&mut self, k: &VipKey) -> Result<(), EngineError> {
            self.vips.remove(k);
            Ok(())
        }
        fn retire_backend(&mut self, id: u32) -> Result<Counter, EngineError> {
            // As if each backend had carried id + 1 packets of 100 bytes.
            let packets = u64::from(id) + 1;
            Ok(Counter {
                packets,
                bytes: packets * 100,
            })
        }
    }

    fn config(backends: &[&str]) -> Config {
        let list: Vec<String> = backends
            .iter()
            .map(|b| format!("{{ addr = \"{b}\" }}"))
            .collect();
        Config::parse(&format!(
            "[daemon]\ninterface = \"eth0\"\n[[service]]\nvip = \"198.18.0.100:80\"\nbackends = [{}]\n",
            list.join(", ")
        ))
        .unwrap()
    }

    fn macs() -> HashMap<Ipv4Addr, [u8; 6]> {
        (1..=30)
            .map(|i| (Ipv4Addr::new(198, 18, 0, i), [2, 0, 0, 0, 0, i]))
            .collect()
    }

    fn live_table(dp: &FakeDataplane) -> (VipInfo, Vec<u32>) {
        let info = *dp.vips.values().next().unwrap();
        (info, dp.rings[&info.ring].clone())
    }

    #[test]
    fn ids_are_stable_and_tables_switch_rings() {
        let mut e = Engine::new();
        let mut dp = FakeDataplane::default();
        e.apply(
            &config(&["198.18.0.21", "198.18.0.22", "198.18.0.23"]),
            &Default::default(),
            &Default::default(),
            &macs(),
            &mut dp,
        )
        .unwrap();
        let (info1, t1) = live_table(&dp);
        let ids1: BTreeSet<u32> = t1.iter().copied().collect();
        assert_eq!(ids1.len(), 3);

        // Same config again: nothing rewritten.
        let r = e
            .apply(
                &config(&["198.18.0.21", "198.18.0.22", "198.18.0.23"]),
                &Default::default(),
                &Default::default(),
                &macs(),
                &mut dp,
            )
            .unwrap();
        assert_eq!(r.tables_written, 0);

        // One backend leaves: the new table goes to the other ring; the others keep their ids.
        let r = e
            .apply(
                &config(&["198.18.0.21", "198.18.0.22"]),
                &Default::default(),
                &Default::default(),
                &macs(),
                &mut dp,
            )
            .unwrap();
        assert_eq!(r.backends_removed, 1);
        let (info2, t2) = live_table(&dp);
        assert_eq!(info2.ring, info1.ring ^ 1);
        let ids2: BTreeSet<u32> = t2.iter().copied().collect();
        assert!(ids2.is_subset(&ids1) && ids2.len() == 2);
        let gone = *ids1.difference(&ids2).next().unwrap();
        assert_eq!(dp.backends[&gone].state, backend_state::REMOVED);
        assert_eq!(
            dp.backends[&gone].mac,
            [2, 0, 0, 0, 0, 23],
            "a removed backend still forwards its flows"
        );

        // Its id is kept while it has flows, freed when they end.
        assert!(
            e.reap_removed(|id| u64::from(id == gone), &mut dp)
                .unwrap()
                .is_empty()
        );
        assert_eq!(e.reap_removed(|_| 0, &mut dp).unwrap(), vec![gone]);

        // The service's counters keep the freed backend's packets (the fake retires id + 1
        // packets of 100 bytes); the live backends' come from the STATS slots.
        let mut stats = vec![Counter::default(); lb_common::STATS_LEN as usize];
        for &id in &ids2 {
            stats[(STATS_BACKEND_BASE + id) as usize] = Counter {
                packets: 10,
                bytes: 1000,
            };
        }
        e.fill_service_stats(&mut stats);
        let svc = e.services().next().unwrap();
        let retired = u64::from(gone) + 1;
        assert_eq!(
            stats[(STATS_SERVICE_BASE + svc.id) as usize],
            Counter {
                packets: 20 + retired,
                bytes: 2000 + retired * 100,
            }
        );
    }

    #[test]
    fn backend_without_mac_stays_out_of_rotation() {
        let mut e = Engine::new();
        let mut dp = FakeDataplane::default();
        let mut m = macs();
        m.remove(&Ipv4Addr::new(198, 18, 0, 22));
        e.apply(
            &config(&["198.18.0.21", "198.18.0.22"]),
            &Default::default(),
            &Default::default(),
            &m,
            &mut dp,
        )
        .unwrap();
        let (_, t) = live_table(&dp);
        assert_eq!(t.iter().copied().collect::<BTreeSet<_>>().len(), 1);
        e.apply(
            &config(&["198.18.0.21", "198.18.0.22"]),
            &Default::default(),
            &Default::default(),
            &macs(),
            &mut dp,
        )
        .unwrap();
        let (_, t) = live_table(&dp);
        assert_eq!(t.iter().copied().collect::<BTreeSet<_>>().len(), 2);
    }

    #[test]
    fn empty_service_has_no_backend_and_removed_service_unmatches() {
        let mut e = Engine::new();
        let mut dp = FakeDataplane::default();
        e.apply(
            &config(&[]),
            &Default::default(),
            &Default::default(),
            &macs(),
            &mut dp,
        )
        .unwrap();
        let (_, t) = live_table(&dp);
        assert!(t.iter().all(|&x| x == NO_BACKEND));
        let none = Config::parse("[daemon]\ninterface = \"eth0\"\n").unwrap();
        let r = e
            .apply(
                &none,
                &Default::default(),
                &Default::default(),
                &macs(),
                &mut dp,
            )
            .unwrap();
        assert_eq!(r.services_removed, 1);
        assert!(dp.vips.is_empty());
    }

    #[test]
    fn two_nodes_build_identical_tables() {
        let (mut a, mut b) = (Engine::new(), Engine::new());
        let (mut da, mut db) = (FakeDataplane::default(), FakeDataplane::default());
        a.apply(
            &config(&["198.18.0.21", "198.18.0.22", "198.18.0.23"]),
            &Default::default(),
            &Default::default(),
            &macs(),
            &mut da,
        )
        .unwrap();
        b.apply(
            &config(&["198.18.0.23", "198.18.0.21", "198.18.0.22"]),
            &Default::default(),
            &Default::default(),
            &macs(),
            &mut db,
        )
        .unwrap();
        let addr = |e: &Engine, id: u32| {
            e.services()
                .next()
                .unwrap()
                .backends
                .values()
                .find(|r| r.id == id)
                .unwrap()
                .addr
        };
        let (_, ta) = live_table(&da);
        let (_, tb) = live_table(&db);
        for (x, y) in ta.iter().zip(&tb) {
            assert_eq!(addr(&a, *x), addr(&b, *y));
        }
    }

    #[test]
    fn overrides_and_health_shape_rotation() {
        use crate::state::{AdminOverride, Overrides};
        let cfg = config(&["198.18.0.21", "198.18.0.22", "198.18.0.23"]);
        let key = cfg.services[0].key();
        let mut o = Overrides::default();
        let ip = |n| Ipv4Addr::new(198, 18, 0, n);
        o.update(&key.to_string(), ip(21), |b| {
            b.admin = Some(AdminOverride::Draining)
        });
        o.update(&key.to_string(), ip(22), |b| {
            b.admin = Some(AdminOverride::Maintenance)
        });
        o.update(&key.to_string(), ip(24), |b| {
            b.added = true;
            b.weight = Some(5);
        });
        o.update(&key.to_string(), ip(25), |b| b.removed = true); // not in config: ignored
        let down: BTreeSet<_> = [(key, ip(23))].into_iter().collect();
        let mut e = Engine::new();
        let mut dp = FakeDataplane::default();
        e.apply(&cfg, &o, &down, &macs(), &mut dp).unwrap();
        let svc = e.service(&key).unwrap();
        let state = |n| dp.backends[&svc.backends[&ip(n)].id].state;
        assert_eq!(state(21), backend_state::DRAINING);
        assert_eq!(state(22), backend_state::MAINTENANCE);
        assert_eq!(state(23), backend_state::DOWN);
        assert_eq!(state(24), backend_state::ACTIVE);
        assert_eq!(svc.backends[&ip(24)].source, Source::Lbctl);
        assert_eq!(svc.backends[&ip(24)].weight, 5);
        assert!(!svc.backends.contains_key(&ip(25)));
        // Only the added backend takes new flows.
        let (_, t) = live_table(&dp);
        assert!(t.iter().all(|&id| id == svc.backends[&ip(24)].id));

        // Health back up and maintenance off: both return to the table.
        let mut o2 = o.clone();
        o2.update(&key.to_string(), ip(22), |b| b.admin = None);
        e.apply(&cfg, &o2, &BTreeSet::new(), &macs(), &mut dp)
            .unwrap();
        let (_, t) = live_table(&dp);
        let ids: BTreeSet<u32> = t.iter().copied().collect();
        let svc = e.service(&key).unwrap();
        let want: BTreeSet<u32> = [22, 23, 24]
            .iter()
            .map(|n| svc.backends[&ip(*n)].id)
            .collect();
        assert_eq!(ids, want);

        // A config backend removed by lbctl is REMOVED, kept while it has flows.
        let mut o3 = o2.clone();
        o3.update(&key.to_string(), ip(23), |b| b.removed = true);
        let r = e
            .apply(&cfg, &o3, &BTreeSet::new(), &macs(), &mut dp)
            .unwrap();
        assert_eq!(r.backends_removed, 1);
        let svc = e.service(&key).unwrap();
        assert_eq!(svc.backends[&ip(23)].admin, Admin::Removed);
        let freed = e.free_now(&key, ip(23), &mut dp).unwrap();
        assert!(freed.is_some());
    }
}
