//! The control requests (`lbctl`) and the status, as methods of the [`Core`]. A change is
//! checked, saved to the state file, then applied; what needs fresh flow counts or a MAC waits
//! for them without holding up the core (see [`AfterScan`], [`AfterResolve`]).

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::{Duration, SystemTime},
};
use vrrp::wire::AddressFamily;

use super::core::{
    AfterResolve, AfterScan, Core, CoreError, PendingAdd, RESOLVE_WAIT, Reply, VrrpHandles, respond,
};
use crate::{
    config::{MAX_WEIGHT, ServiceKey, parse_backend_addr},
    control::{Request, Response},
    datapath::DatapathMode,
    engine::{BackendRec, Source},
    flows::{ClientFilter, DEFAULT_LIMIT, FlowQuery, FlowsReport, MAX_LIMIT},
    net,
    overrides::{Admin, BackendOverride},
    rates::FloodGuardStatus,
    status::{
        BackendStatus, HealthStatus, ReasonCount, ServiceStatus, Status, StatusView, VrrpStatus,
    },
};

fn check_weight(weight: u32) -> Result<u32, CoreError> {
    if (1..=MAX_WEIGHT).contains(&weight) {
        Ok(weight)
    } else {
        Err(CoreError::Weight(weight))
    }
}

impl Core {
    /// One control request. Most answer at once; add (XDP), drain, maintenance and remove
    /// answer once their MAC look-up or flow count is back.
    pub fn control(&mut self, req: Request, reply: Reply) {
        let now = match req {
            Request::Status {} => {
                let answer = match self.status() {
                    Ok(s) => Response::Status(Box::new(s)),
                    Err(e) => Response::Error {
                        message: e.to_string(),
                    },
                };
                self.answer(reply, answer);
                return;
            }
            Request::BackendAdd {
                service,
                addr,
                weight,
            } => match self.backend_add(&service, &addr, weight) {
                // Learn its MAC first (XDP), so that it enters rotation with the change.
                Ok(add) if self.datapath.mode().needs_macs() => {
                    let ip = add.ip;
                    self.effects
                        .resolve(vec![ip], RESOLVE_WAIT, AfterResolve::Add(add, reply));
                    return;
                }
                Ok(add) => self.add_resolved(add),
                Err(e) => Err(e),
            },
            Request::BackendWeight {
                service,
                addr,
                weight,
            } => self.backend_weight(&service, &addr, weight),
            Request::Flows {
                service,
                backend,
                client,
                limit,
            } => match self.flow_query(service, backend, client, limit) {
                Ok(query) => {
                    self.list_flows(query, reply);
                    return;
                }
                Err(e) => Err(e),
            },
            Request::NodeDrain {} => self.node_drain(true),
            Request::NodeUndrain {} => self.node_drain(false),
            Request::VrrpResign {} => self.vrrp_standby(true),
            Request::VrrpResume {} => self.vrrp_standby(false),
            // The control server hands these to the daemon's I/O layer, never to the core.
            Request::Handover {} => Err(CoreError::NotHere(
                "a hand-over is answered by the control server",
            )),
            Request::BackendDrain { service, addr } => {
                return self.backend_admin(&service, &addr, Some(Admin::Draining), reply);
            }
            Request::BackendMaintenance { service, addr, on } => {
                return self.backend_admin(
                    &service,
                    &addr,
                    on.then_some(Admin::Maintenance),
                    reply,
                );
            }
            Request::BackendRemove {
                service,
                addr,
                force,
            } => match self.target(&service, &addr) {
                Ok((key, ip)) => match self.existing(&key, ip) {
                    // Count now, not from the last tick: the answer decides whether flows get cut.
                    Ok(_) => {
                        self.effects.scan(
                            HashSet::new(),
                            AfterScan::Remove {
                                key,
                                ip,
                                force,
                                reply,
                            },
                        );
                        return;
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
        };
        self.answer(reply, respond(now));
    }

    /// A service by name, `VIP:port`, or `proto/VIP:port`.
    fn find_service(&self, name: &str) -> Result<ServiceKey, CoreError> {
        self.config
            .services
            .iter()
            // By name, `VIP:port` or `proto/VIP:port`; an address parsed, so that any spelling of
            // an IPv6 VIP (`[2001:DB8:0::100]:80`) finds it.
            .find(|s| {
                s.name == name
                    || s.vip.to_string() == name
                    || s.key().to_string() == name
                    || name.parse::<std::net::SocketAddr>() == Ok(s.vip)
            })
            .map(|s| s.key())
            .ok_or_else(|| {
                let names: Vec<&str> = self
                    .config
                    .services
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect();
                CoreError::UnknownService {
                    name: name.to_string(),
                    known: list_or_none(&names),
                }
            })
    }

    /// Checks the filters of `lbctl flows`; each error names the filter and what is allowed.
    fn flow_query(
        &self,
        service: Option<String>,
        backend: Option<String>,
        client: Option<String>,
        limit: Option<usize>,
    ) -> Result<FlowQuery, CoreError> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if limit > MAX_LIMIT {
            return Err(CoreError::Filter(format!(
                "limit: {limit} is too many rows (allowed: 0 to {MAX_LIMIT}; 0 counts only)"
            )));
        }
        let service = service.map(|s| self.find_service(&s)).transpose()?;
        let backends = match backend {
            None => None,
            Some(addr) => {
                let ip: IpAddr = addr.parse().map_err(|_| {
                    CoreError::Filter(format!(
                        "backend: {addr:?} is not an address (e.g. 198.18.0.21 or 2001:db8::21)"
                    ))
                })?;
                let ids: HashSet<u32> = self
                    .engine
                    .services()
                    .filter(|s| service.is_none_or(|k| s.config.key() == k))
                    .filter_map(|s| s.backends.get(&ip).map(|b| b.id))
                    .collect();
                if ids.is_empty() {
                    return Err(match service {
                        Some(key) => self.existing(&key, ip).err().unwrap_or_else(|| {
                            CoreError::Filter(format!("backend: {ip} has no id"))
                        }),
                        None => CoreError::Filter(format!(
                            "backend: {ip} is not a backend of any service (see `lbctl status`)"
                        )),
                    });
                }
                Some(ids)
            }
        };
        let client = client
            .map(|c| ClientFilter::parse(&c))
            .transpose()
            .map_err(CoreError::Filter)?;
        Ok(FlowQuery {
            service,
            backends,
            client,
            limit,
        })
    }

    /// Hands the listing to the table thread, with what names the ids; it answers itself.
    fn list_flows(&mut self, query: FlowQuery, reply: Reply) {
        let mut backends: HashMap<u32, String> = HashMap::new();
        let mut services: HashMap<ServiceKey, String> = HashMap::new();
        for s in self.engine.services() {
            services.insert(s.config.key(), s.config.name.clone());
            for b in s.backends.values() {
                backends.insert(b.id, b.addr.to_string());
            }
        }
        self.effects.list_flows(
            query,
            Box::new(move |listing, took| {
                let report = FlowsReport::new(
                    listing,
                    took,
                    |f| {
                        let key = ServiceKey {
                            vip: f.vip,
                            proto: f.proto,
                        };
                        services
                            .get(&key)
                            .cloned()
                            .unwrap_or_else(|| key.to_string())
                    },
                    |id| backends.get(&id).cloned(),
                );
                let _ = reply.send(Response::Flows(Box::new(report)));
            }),
        );
    }

    fn service_name(&self, key: &ServiceKey) -> String {
        self.engine
            .service(key)
            .map(|s| s.config.name.clone())
            .unwrap_or_else(|| key.to_string())
    }

    /// The service and backend address of a request, checked.
    fn target(&self, service: &str, addr: &str) -> Result<(ServiceKey, IpAddr), CoreError> {
        let key = self.find_service(service)?;
        let ip = parse_backend_addr(addr, key.vip.port()).map_err(CoreError::Address)?;
        Ok((key, ip))
    }

    /// Checks that a backend exists and is not removed; the error lists the service's backends.
    fn existing(&self, key: &ServiceKey, ip: IpAddr) -> Result<&BackendRec, CoreError> {
        match self.engine.backend(key, ip) {
            Some(b) if !b.removed => Ok(b),
            _ => {
                let list: Vec<String> = self
                    .engine
                    .service(key)
                    .map(|s| {
                        s.backends
                            .values()
                            .filter(|b| !b.removed)
                            .map(|b| b.addr.to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                Err(CoreError::NotABackend {
                    ip,
                    service: self.service_name(key),
                    known: list_or_none(&list),
                })
            }
        }
    }

    /// Checks an add; returns the overrides with the backend in, for after its MAC look-up.
    fn backend_add(
        &self,
        service: &str,
        addr: &str,
        weight: Option<u32>,
    ) -> Result<PendingAdd, CoreError> {
        let (key, ip) = self.target(service, addr)?;
        let weight = check_weight(weight.unwrap_or(1))?;
        if self.engine.backend(&key, ip).is_some_and(|b| !b.removed) {
            return Err(CoreError::AlreadyBackend {
                ip,
                service: self.service_name(&key),
            });
        }
        let in_config = self
            .config
            .services
            .iter()
            .find(|s| s.key() == key)
            .and_then(|s| s.backends.iter().find(|b| b.addr == ip))
            .map(|b| b.weight);
        let mut new = self.overrides.clone();
        new.update(&key.to_string(), ip, |o| {
            *o = BackendOverride::default();
            o.added = in_config.is_none();
            o.weight = (in_config != Some(weight)).then_some(weight);
        });
        Ok(PendingAdd {
            overrides: new,
            key,
            ip,
            weight,
        })
    }

    /// The add, once the backend's MAC was looked up (XDP: so that it enters rotation with the
    /// change). The checks run again: the state may have moved meanwhile.
    pub(super) fn add_resolved(&mut self, add: PendingAdd) -> Result<String, CoreError> {
        let PendingAdd {
            overrides,
            key,
            ip,
            weight,
        } = add;
        let key = &key;
        if self.engine.backend(key, ip).is_some_and(|b| !b.removed) {
            return Err(CoreError::AlreadyBackend {
                ip,
                service: self.service_name(key),
            });
        }
        // Keep other changes made while the look-up ran.
        let mut new = self.overrides.clone();
        if let Some(o) = overrides.get(&key.to_string(), ip).cloned() {
            new.update(&key.to_string(), ip, |b| *b = o);
        }
        self.commit(new)?;
        let note = if self.macs.contains_key(&ip) || !self.datapath.mode().needs_macs() {
            ""
        } else {
            "; no ARP answer yet: out of rotation until it answers"
        };
        Ok(format!(
            "added {ip} to {} with weight {weight}{note}",
            self.service_name(key)
        ))
    }

    fn backend_weight(
        &mut self,
        service: &str,
        addr: &str,
        weight: u32,
    ) -> Result<String, CoreError> {
        let (key, ip) = self.target(service, addr)?;
        let weight = check_weight(weight)?;
        let config_weight = self.existing(&key, ip)?.config_weight;
        let mut new = self.overrides.clone();
        new.update(&key.to_string(), ip, |o| {
            o.weight = (config_weight != Some(weight)).then_some(weight);
        });
        self.commit(new)?;
        Ok(format!(
            "{ip} in {} now has weight {weight}",
            self.service_name(&key)
        ))
    }

    /// `lbctl vrrp resign` / `resume`: saved first (a restart keeps it), then the speaker told.
    /// `lbctl node drain` / `undrain`: saved, then the announcement follows (after the step).
    fn node_drain(&mut self, drain: bool) -> Result<String, CoreError> {
        let Some(a) = self.config.announce else {
            return Err(CoreError::NotHere(
                "this node announces no VIP ([announce] is not in the config)",
            ));
        };
        let mut new = self.overrides.clone();
        new.node_drained = drain;
        self.commit(new)?;
        let vips = self.announce_inputs().vips.len();
        Ok(if drain {
            format!(
                "draining the node: its {vips} VIP routes leave table {}, so the routers send new \
                 traffic to the other nodes; what still arrives is forwarded (kept across \
                 restarts; `lbctl node undrain` announces them again)",
                a.table
            )
        } else {
            format!(
                "undrained: the VIPs with a backend in rotation are announced again (table {})",
                a.table
            )
        })
    }

    fn vrrp_standby(&mut self, standby: bool) -> Result<String, CoreError> {
        if self.vrrp.is_empty() {
            return Err(CoreError::NotHere(
                "this node runs no VRRP ([vrrp] is not in the config)",
            ));
        }
        let mut new = self.overrides.clone();
        new.vrrp_resigned = standby;
        self.commit(new)?;
        // Both families' routers: the node resigns as a whole.
        for v in &self.vrrp {
            v.standby.set(standby);
        }
        Ok(if standby {
            "resigned: a master keeps the VIPs until the backup's first advert (and a second more), then stays out of the election until `lbctl vrrp resume` (kept across restarts)"
                .into()
        } else {
            "resumed: taking part in the VRRP election again".into()
        })
    }

    /// Drain, maintenance on or off. The answer counts the open flows afresh.
    fn backend_admin(&mut self, service: &str, addr: &str, admin: Option<Admin>, reply: Reply) {
        let result = (|| {
            let (key, ip) = self.target(service, addr)?;
            let id = self.existing(&key, ip)?.id;
            let mut new = self.overrides.clone();
            new.update(&key.to_string(), ip, |o| o.admin = admin);
            self.commit(new)?;
            Ok((id, ip, self.service_name(&key)))
        })();
        let (id, ip, name) = match result {
            Ok(r) => r,
            Err(e) => {
                self.answer(reply, respond(Err(e)));
                return;
            }
        };
        let message = match admin {
            Some(Admin::Draining) => {
                format!("draining {ip} in {name}: no new flows; {{flows}} open flows go on")
            }
            Some(Admin::Maintenance) => {
                format!(
                    "{ip} in {name} is in maintenance: no new flows; {{flows}} open flows go on"
                )
            }
            None => {
                self.answer(
                    reply,
                    respond(Ok(format!("{ip} in {name} is back in rotation"))),
                );
                return;
            }
        };
        // Count now, not from the last tick: the operator reads this number.
        self.effects
            .scan(HashSet::new(), AfterScan::Report { id, message, reply });
    }

    /// The removal, with the flow counts of a fresh scan.
    pub(super) fn remove_counted(
        &mut self,
        key: &ServiceKey,
        ip: IpAddr,
        force: bool,
        reply: Reply,
    ) {
        let result = (|| {
            let b = self.existing(key, ip)?;
            let (id, source) = (b.id, b.source);
            // Open flows decide, as IPVS's ActiveConn does; closing ones are ending.
            let flows = self.counts.active_of(id);
            let closing = self.counts.closing_of(id);
            let name = self.service_name(key);
            if flows > 0 && !force {
                return Err(CoreError::OpenFlows {
                    ip,
                    service: name,
                    flows,
                });
            }
            let mut new = self.overrides.clone();
            new.update(&key.to_string(), ip, |o| {
                // A config backend stays removed through the state file; a runtime one just goes.
                *o = BackendOverride::default();
                o.removed = source != Source::Lbctl;
            });
            self.commit(new)?;
            Ok((flows, closing, name))
        })();
        let (flows, closing, name) = match result {
            Ok(r) => r,
            Err(e) => {
                self.answer(reply, respond(Err(e)));
                return;
            }
        };
        let message = format!("removed {ip} from {name}");
        // Without --force a removed backend keeps its closing flows until they end (the tick
        // frees it).
        if !force || flows + closing == 0 {
            self.answer(reply, respond(Ok(message)));
            return;
        }
        if self.datapath.mode() == DatapathMode::Userspace {
            self.answer(
                reply,
                respond(Ok(format!(
                    "{message}; its {flows} proxied connections run to their end"
                ))),
            );
            return;
        }
        match self.engine.free_now(key, ip, self.datapath.as_mut()) {
            Ok(Some(freed)) => self.effects.scan(
                HashSet::from([freed]),
                AfterScan::Cut {
                    reply: Some((reply, message)),
                },
            ),
            Ok(None) => {
                self.answer(reply, respond(Ok(message)));
            }
            Err(e) => {
                tracing::error!(backend = %ip, error = %e, "freeing the removed backend failed; its flows end on their own");
                self.answer(
                    reply,
                    respond(Ok(format!(
                        "{message}; its flows could not be cut ({e}): they end on their own"
                    ))),
                );
            }
        }
    }

    /// How a backend differs from the config file, for `lbctl status`.
    fn override_notes(&self, key: &ServiceKey, b: &BackendRec) -> Vec<String> {
        let mut notes = Vec::new();
        let Some(o) = self.overrides.get(&key.to_string(), b.addr) else {
            return notes;
        };
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
            Some(Admin::Draining) => notes.push("drained by lbctl".into()),
            Some(Admin::Maintenance) => notes.push("maintenance by lbctl".into()),
            None => {}
        }
        if o.removed {
            notes.push("removed by lbctl (the config file lists it)".into());
        }
        notes
    }

    /// The status: the engine's model, the data path's counters, the last flow counts, health
    /// and VRRP.
    pub fn status(&self) -> Result<Status, CoreError> {
        let counters = self.datapath.counters().map_err(CoreError::Counters)?;
        Ok(self.view().fill(&counters))
    }

    /// The status without the live counters, published after each batch of commands so that
    /// `lbctl status` and scrapes are answered without the core.
    pub fn view(&self) -> StatusView {
        let ids = self
            .engine
            .services()
            .map(|s| (s.backends.values().map(|b| b.id).collect(), s.retired))
            .collect();
        let services = self
            .engine
            .services()
            .map(|s| {
                let key = s.config.key();
                ServiceStatus {
                    name: s.config.name.clone(),
                    vip: s.config.vip.to_string(),
                    proto: s.config.proto,
                    scheduler: s.config.scheduler,
                    packets: 0,
                    bytes: 0,
                    new_flows: 0,
                    rates: Default::default(),
                    backends: s
                        .backends
                        .values()
                        .map(|b| BackendStatus {
                            addr: b.addr.to_string(),
                            weight: b.weight,
                            state: b.state(),
                            source: b.source,
                            overrides: self.override_notes(&key, b),
                            mac: b.mac.as_ref().map(net::mac_string),
                            packets: 0,
                            bytes: 0,
                            new_flows: 0,
                            rates: Default::default(),
                            history_pps: Vec::new(),
                            flows: self.counts.active_of(b.id),
                            closing_flows: self.counts.closing_of(b.id),
                            health: s.config.health.as_ref().map(|hc| {
                                let last = self.health.get(&(s.config.name.clone(), b.addr));
                                HealthStatus {
                                    up: !b.health_down,
                                    last_seconds: last.map(|e| e.latency.as_secs_f64()),
                                    detail: last.map(|e| e.detail.clone()),
                                    timeout_seconds: hc.timeout.as_secs_f64(),
                                }
                            }),
                        })
                        .collect(),
                }
            })
            .collect();
        let status = Status {
            version: env!("CARGO_PKG_VERSION").into(),
            config_path: self.config_path.display().to_string(),
            state_file: self.state_file.path().display().to_string(),
            interface: self.config.daemon.interface.clone(),
            datapath: self.datapath.mode(),
            datapath_reason: self.mode_reason.clone(),
            datapath_setting: self.config.daemon.datapath.to_string(),
            uptime_s: 0,
            config_loaded_unix: unix_seconds(self.loaded_at),
            config_reloads: self.reloads,
            config_reload_failures: self.reload_failures,
            conntrack_entries: self.counts.entries,
            conntrack_max: self.config.daemon.conntrack_max,
            reasons: Vec::new(),
            announce: self
                .config
                .announce
                .map(|a| crate::announce::AnnounceStatus {
                    table: a.table,
                    drained: self.overrides.node_drained,
                    vips: self
                        .announced
                        .iter()
                        .map(|(vip, reason)| crate::announce::VipAnnounce {
                            vip: vip.to_string(),
                            announced: *reason == crate::announce::Reason::Serving,
                            reason: *reason,
                        })
                        .collect(),
                }),
            flood_guard: FloodGuardStatus {
                new_flows_per_sec: self.config.daemon.flood_new_flows_per_sec,
                ..FloodGuardStatus::default()
            },
            services,
            vrrp: vrrp_status(&self.vrrp, AddressFamily::Ipv4),
            vrrp6: vrrp_status(&self.vrrp, AddressFamily::Ipv6),
        };
        StatusView::new(status, self.started, ids)
    }
}

/// The status of the speaker of `family`, when there is one.
pub(super) fn vrrp_status(speakers: &[VrrpHandles], family: AddressFamily) -> Option<VrrpStatus> {
    speakers
        .iter()
        .find(|v| v.config.family() == family)
        .map(VrrpHandles::status)
}

impl VrrpHandles {
    /// The speaker's status now (read live: a status shows the VRRP state of the moment, not of
    /// the core's last publication).
    pub fn status(&self) -> VrrpStatus {
        let s = self.status.borrow().clone();
        VrrpStatus {
            vrid: self.config.vrid.get(),
            state: s.state,
            priority: s.priority,
            configured_priority: self.config.priority.get(),
            master: s.master.map(|a| a.to_string()),
            last_transition_unix: s
                .last_transition
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64()),
            became_master: s.counters.became_master,
            transitions: s.counters.became_master + s.counters.became_backup,
            adverts_accepted: s.counters.accepted,
            adverts_dropped: vrrp::DropReason::ALL
                .iter()
                .map(|r| ReasonCount {
                    reason: r.as_str().into(),
                    packets: s.counters.dropped(*r),
                })
                .filter(|r| r.packets > 0)
                .collect(),
            failed_conditions: self
                .tracker
                .conditions()
                .into_iter()
                .filter(|c| c.failed)
                .map(|c| c.name)
                .collect(),
            resigned: self.standby.get(),
        }
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d: Duration| d.as_secs())
}

fn list_or_none<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(", ")
    }
}
