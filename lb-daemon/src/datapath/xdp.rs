//! The XDP data path: the loaded object (its program stays attached while it lives) and its
//! maps, with each service's two Maglev rings: a new table goes into the idle ring, then the
//! VIPS entry switches to it in one map update.

use std::{collections::HashMap, sync::Arc};

use aya::{Ebpf, programs::xdp::XdpLink};
use lb_common::{Backend, Counter, STATS_BACKEND_BASE, VIP_FLAG_SRC_ONLY, VipInfo, reason};

use super::{
    BackendEntry, CounterSource, Datapath, DatapathCounters, DatapathError, DatapathMode,
    FlowTable, ServiceEntry,
};
use crate::{
    config::{Scheduler, ServiceKey},
    flows::{FlowListing, FlowQuery},
    model::FlowCounts,
    xdp::{self, AnyVipKey, AttachMode, FlowTimeouts, XdpError, XdpFlows, XdpMaps, XdpStats},
};

/// A service's rings: which one is live and the table in it.
struct Rings {
    live: u32,
    table: Vec<u32>,
}

/// XDP, native or generic (or loaded but not attached, for the program tests).
pub struct XdpDatapath {
    maps: XdpMaps,
    /// The object; dropping it detaches the program. None where the caller keeps it.
    _ebpf: Option<Ebpf>,
    mode: DatapathMode,
    rings: HashMap<ServiceKey, Rings>,
    /// A pinned link of an earlier lbd, whose program this one replaces once its first tables
    /// are written ([`Datapath::go_live`]).
    pending: Option<XdpLink>,
}

impl XdpDatapath {
    /// The data path over an attached object.
    /// The data path over an attached object, or one that takes over `pending`'s interface.
    pub fn attached(
        mut ebpf: Ebpf,
        mode: AttachMode,
        pending: Option<XdpLink>,
    ) -> Result<XdpDatapath, DatapathError> {
        let maps = XdpMaps::new(&mut ebpf)?;
        Ok(XdpDatapath {
            maps,
            _ebpf: Some(ebpf),
            mode: match mode {
                AttachMode::Native => DatapathMode::XdpNative,
                AttachMode::Generic => DatapathMode::XdpGeneric,
            },
            rings: HashMap::new(),
            pending,
        })
    }

    /// The data path over maps whose object the caller keeps (program tests, benchmarks).
    pub fn with_maps(maps: XdpMaps) -> XdpDatapath {
        XdpDatapath {
            maps,
            _ebpf: None,
            mode: DatapathMode::XdpNative,
            rings: HashMap::new(),
            pending: None,
        }
    }

    /// The maps (counters and the like, for tests).
    pub fn maps(&self) -> &XdpMaps {
        &self.maps
    }

    /// The connection table itself, once (tests scan it at a chosen time).
    pub fn take_flows(&mut self) -> Option<XdpFlows> {
        self.maps.take_flows()
    }

    /// Takes over the tables of adopted maps: which ring each service serves from, so that the
    /// first table written goes to the other one; returns the backends' MACs by id.
    pub fn adopt(&mut self) -> HashMap<u32, [u8; 6]> {
        for (vip, proto, info) in self.maps.vips() {
            let Some(proto) = crate::config::Proto::from_number(proto) else {
                continue;
            };
            self.rings.insert(
                ServiceKey { vip, proto },
                Rings {
                    live: info.ring,
                    table: Vec::new(),
                },
            );
        }
        (0..lb_common::MAX_BACKENDS)
            .filter_map(|id| {
                let b = self.maps.backend(id)?;
                (b.mac != [0; 6]).then_some((id, b.mac))
            })
            .collect()
    }
}

/// The VIPS (or VIPS6) key of a service.
pub fn vip_key(key: &ServiceKey) -> AnyVipKey {
    AnyVipKey::new(key.vip, key.proto.number())
}

impl Datapath for XdpDatapath {
    fn mode(&self) -> DatapathMode {
        self.mode
    }

    fn set_backend(&mut self, id: u32, b: &BackendEntry) -> Result<(), DatapathError> {
        let value = Backend {
            mac: b.mac.unwrap_or([0; 6]),
            _pad: [0; 2],
            state: b.state.dataplane_code(),
            addr: lb_common::mapped_octets(b.addr),
            _pad2: 0,
        };
        Ok(self.maps.set_backend(id, &value)?)
    }

    fn set_service(&mut self, svc: &ServiceEntry<'_>) -> Result<(), DatapathError> {
        let flags = match svc.scheduler {
            Scheduler::Sh => VIP_FLAG_SRC_ONLY,
            // rr, wrr and lc never reach XDP (config and the data path choice keep them off).
            Scheduler::Maglev | Scheduler::Rr | Scheduler::Wrr | Scheduler::Lc => 0,
        };
        let key = vip_key(&svc.key);
        // Rings 2*id and 2*id+1 belong to the service.
        let first = 2 * svc.id;
        let live = match self.rings.get(&svc.key) {
            Some(r) if r.table == svc.table => {
                // Same table; the flags may have changed (scheduler maglev <-> sh).
                self.maps.set_vip(
                    &key,
                    &VipInfo {
                        service_id: svc.id,
                        ring: r.live,
                        flags,
                        _pad: 0,
                    },
                )?;
                return Ok(());
            }
            // The other ring of the pair; the first when none of the pair is live yet.
            Some(r) if r.live == first => first + 1,
            Some(_) | None => first,
        };
        self.maps.write_ring(live, svc.table)?;
        self.maps.set_vip(
            &key,
            &VipInfo {
                service_id: svc.id,
                ring: live,
                flags,
                _pad: 0,
            },
        )?;
        self.rings.insert(
            svc.key,
            Rings {
                live,
                table: svc.table.to_vec(),
            },
        );
        Ok(())
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DatapathError> {
        self.maps.remove_vip(&vip_key(key))?;
        self.rings.remove(key);
        Ok(())
    }

    fn free_backend(&mut self, id: u32) -> Result<Counter, DatapathError> {
        self.maps.set_backend(
            id,
            &Backend {
                mac: [0; 6],
                _pad: [0; 2],
                state: lb_common::backend_state::REMOVED,
                addr: [0; 16],
                _pad2: 0,
            },
        )?;
        Ok(self.maps.retire_backend(id)?)
    }

    fn counters(&self) -> Result<DatapathCounters, DatapathError> {
        Ok(split(&self.maps.read_stats()?))
    }

    fn set_flood_guard(&mut self, new_flows_per_sec: u32) -> Result<(), DatapathError> {
        Ok(self.maps.set_flood_guard(new_flows_per_sec)?)
    }

    fn counter_source(&self) -> Result<Arc<dyn CounterSource>, DatapathError> {
        Ok(Arc::new(self.maps.stats_reader()?))
    }

    fn go_live(&mut self) -> Result<(), DatapathError> {
        let (Some(link), Some(ebpf)) = (self.pending.take(), self._ebpf.as_mut()) else {
            return Ok(());
        };
        let prog: &mut aya::programs::Xdp = ebpf
            .program_mut(xdp::PROG_LBD)
            .ok_or_else(|| XdpError::Load("the balancer program is missing".into()))?
            .try_into()
            .map_err(|e| XdpError::Load(format!("{e}")))?;
        // bpf_link_update: the interface never is without a program.
        prog.attach_to_link(link).map_err(|e| {
            XdpError::Load(format!("replacing the program in the pinned link: {e}"))
        })?;
        Ok(())
    }

    fn flow_table(&mut self) -> Result<Box<dyn FlowTable>, DatapathError> {
        let flows = self
            .maps
            .take_flows()
            .ok_or(DatapathError::FlowTableTaken)?;
        Ok(Box::new(flows))
    }

    fn stop(self: Box<Self>, _linger: std::time::Duration) {
        // Dropping the object detaches the program (a pinned link stays).
        drop(self);
    }
}

/// The STATS layout split into reasons and backends (the program counts a forwarded packet for
/// its backend only; the engine sums services).
fn split(stats: &[Counter]) -> DatapathCounters {
    let reasons = stats[..reason::COUNT as usize].to_vec();
    let backends = stats
        .iter()
        .enumerate()
        .skip(STATS_BACKEND_BASE as usize)
        .filter(|(_, c)| **c != Counter::default())
        .map(|(i, c)| (i as u32 - STATS_BACKEND_BASE, *c))
        .collect();
    DatapathCounters { reasons, backends }
}

impl CounterSource for XdpStats {
    fn counters(&self) -> Result<DatapathCounters, DatapathError> {
        Ok(split(&self.read()?))
    }
}

impl FlowTable for XdpFlows {
    fn scan(&mut self, is_dead: &dyn Fn(u32) -> bool) -> FlowCounts {
        self.scan_at(xdp::coarse_now_ns(), FlowTimeouts::default(), is_dead)
    }

    fn list(&mut self, query: &FlowQuery) -> FlowListing {
        self.list_at(xdp::coarse_now_ns(), FlowTimeouts::default(), query)
    }
}
