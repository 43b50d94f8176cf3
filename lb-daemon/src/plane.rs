//! The data path in use, behind one face: XDP (maps the engine writes) or the userspace proxy
//! (one TCP or UDP proxy per service, fed the backends in rotation). The daemon drives either the
//! same way: apply the engine, count flows, read counters.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};

use aya::Ebpf;
use lb_common::{
    Backend, Counter, STATS_BACKEND_BASE, STATS_LEN, STATS_SERVICE_BASE, VipInfo, VipKey,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Config, Proto, ServiceKey},
    engine::{ApplyReport, Dataplane, Engine, EngineError},
    proxy::{self, BackendSpec, ProxyConfig, ServiceHandle},
    state::Overrides,
    xdp::{self, AttachMode, FlowCounts, XdpMaps},
};

/// The XDP data path: the loaded object (its programs and links) and its maps.
pub struct XdpPlane {
    /// The object; dropping it detaches the program.
    pub ebpf: Ebpf,
    /// The maps.
    pub maps: XdpMaps,
    /// Native or generic.
    pub mode: AttachMode,
}

/// One proxied service.
struct Proxied {
    handle: Arc<ServiceHandle>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The userspace data path: a proxy per service.
pub struct ProxyPlane {
    config: ProxyConfig,
    services: BTreeMap<ServiceKey, Proxied>,
}

/// The data path in use.
pub enum Plane {
    /// XDP, native or generic.
    Xdp(Box<XdpPlane>),
    /// The userspace proxy.
    Proxy(ProxyPlane),
}

/// The engine's writes land nowhere: the proxy reads the engine's model directly.
struct NoMaps;

impl Dataplane for NoMaps {
    fn set_backend(&mut self, _: u32, _: &Backend) -> Result<(), EngineError> {
        Ok(())
    }
    fn write_ring(&mut self, _: u32, _: &[u32]) -> Result<(), EngineError> {
        Ok(())
    }
    fn set_vip(&mut self, _: &VipKey, _: &VipInfo) -> Result<(), EngineError> {
        Ok(())
    }
    fn remove_vip(&mut self, _: &VipKey) -> Result<(), EngineError> {
        Ok(())
    }
    fn retire_backend(&mut self, _: u32) -> Result<Counter, EngineError> {
        // The proxy keeps its own counters per service (`ServiceHandle`).
        Ok(Counter::default())
    }
}

impl ProxyPlane {
    /// A proxy plane with no services yet.
    pub fn new(config: ProxyConfig) -> ProxyPlane {
        ProxyPlane {
            config,
            services: BTreeMap::new(),
        }
    }

    /// Starts, updates and stops proxies so they match the engine's services.
    fn sync(&mut self, engine: &Engine) -> Result<(), EngineError> {
        let wanted: BTreeSet<ServiceKey> = engine.services().map(|s| s.config.key()).collect();
        let gone: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        for key in gone {
            if let Some(p) = self.services.remove(&key) {
                p.stop.cancel();
                tracing::info!(service = %key, "proxy stopped");
            }
        }
        for svc in engine.services() {
            let key = svc.config.key();
            let vip = SocketAddr::V4(svc.config.vip);
            if !self.services.contains_key(&key) {
                let handle = Arc::new(
                    ServiceHandle::new(
                        &svc.config.name,
                        vip,
                        svc.config.proto,
                        self.config.clone(),
                    )
                    .map_err(|e| EngineError::Dataplane(e.to_string()))?,
                );
                let stop = CancellationToken::new();
                // Bindable before the VIP is on the interface (IP_FREEBIND): a VRRP backup is ready.
                let task = match svc.config.proto {
                    Proto::Tcp => {
                        let l = proxy::bind_tcp(vip)
                            .map_err(|e| EngineError::Dataplane(e.to_string()))?;
                        tokio::spawn(proxy::run_tcp(l, handle.clone(), stop.clone()))
                    }
                    Proto::Udp => {
                        let s = proxy::bind_udp(vip)
                            .map_err(|e| EngineError::Dataplane(e.to_string()))?;
                        tokio::spawn(proxy::run_udp(s, handle.clone(), stop.clone()))
                    }
                };
                tracing::info!(service = %key, "proxy listening");
                self.services.insert(key, Proxied { handle, stop, task });
            }
            let Some(p) = self.services.get(&key) else {
                continue;
            };
            let port = svc.config.vip.port();
            let specs: Vec<BackendSpec> = svc
                .backends
                .values()
                .filter(|b| b.in_rotation())
                .map(|b| BackendSpec {
                    id: b.id,
                    addr: SocketAddr::new(b.addr.into(), port),
                    weight: b.weight,
                })
                .collect();
            p.handle
                .set_backends(svc.config.scheduler.into(), &specs)
                .map_err(|e| EngineError::Dataplane(e.to_string()))?;
        }
        Ok(())
    }

    /// Stops every proxy and waits for their connections to end (bounded by the caller).
    pub async fn shutdown(&mut self) {
        for p in self.services.values() {
            p.stop.cancel();
        }
        for (_, p) in std::mem::take(&mut self.services) {
            let _ = p.task.await;
        }
    }
}

impl Plane {
    /// The name `lbctl status` and metrics show: `xdp-native`, `xdp-generic` or `userspace`.
    pub fn name(&self) -> &'static str {
        match self {
            Plane::Xdp(x) => match x.mode {
                AttachMode::Native => "xdp-native",
                AttachMode::Generic => "xdp-generic",
            },
            Plane::Proxy(_) => "userspace",
        }
    }

    /// Whether backends need a resolved MAC.
    pub fn needs_macs(&self) -> bool {
        matches!(self, Plane::Xdp(_))
    }

    /// Applies config, overrides, health and MACs through the engine to this data path.
    pub fn apply(
        &mut self,
        engine: &mut Engine,
        config: &Config,
        overrides: &Overrides,
        down: &BTreeSet<(ServiceKey, Ipv4Addr)>,
        macs: &HashMap<Ipv4Addr, [u8; 6]>,
    ) -> Result<ApplyReport, EngineError> {
        match self {
            Plane::Xdp(x) => engine.apply(config, overrides, down, macs, &mut x.maps),
            Plane::Proxy(p) => {
                let report = engine.apply(config, overrides, down, macs, &mut NoMaps)?;
                p.sync(engine)?;
                Ok(report)
            }
        }
    }

    /// Flows per backend. XDP: one pass over the connection table, deleting entries idle past
    /// their timeout and those `is_dead` says to cut. Proxy: its open connections (UDP sessions).
    pub fn flows(&mut self, is_dead: impl Fn(u32) -> bool) -> FlowCounts {
        match self {
            Plane::Xdp(x) => x
                .maps
                .scan_flows(xdp::coarse_now_ns(), Default::default(), is_dead),
            Plane::Proxy(p) => {
                let mut counts = FlowCounts::default();
                for s in p.services.values() {
                    for (id, _) in s.handle.all_backend_counters() {
                        let n = s.handle.active_connections(id);
                        if n > 0 {
                            *counts.active.entry(id).or_default() += n;
                            counts.entries += n;
                        }
                    }
                }
                counts
            }
        }
    }

    /// Cuts the flows of one backend now; returns how many. The proxy cannot cut its
    /// connections (they end on their own), so it reports none.
    pub fn cut(&mut self, backend_id: u32) -> u64 {
        match self {
            Plane::Xdp(x) => {
                x.maps
                    .scan_flows(xdp::coarse_now_ns(), Default::default(), |b| {
                        b == backend_id
                    })
                    .expired
            }
            Plane::Proxy(_) => 0,
        }
    }

    /// Frees removed backends no flow uses any more (see [`Engine::reap_removed`]).
    pub fn reap(
        &mut self,
        engine: &mut Engine,
        flows_of: impl Fn(u32) -> u64,
    ) -> Result<Vec<u32>, EngineError> {
        let freed = match self {
            Plane::Xdp(x) => engine.reap_removed(flows_of, &mut x.maps)?,
            Plane::Proxy(_) => engine.reap_removed(flows_of, &mut NoMaps)?,
        };
        for id in &freed {
            self.forget(*id);
        }
        Ok(freed)
    }

    /// Frees one removed backend now (see [`Engine::free_now`]).
    pub fn free_now(
        &mut self,
        engine: &mut Engine,
        key: &ServiceKey,
        addr: Ipv4Addr,
    ) -> Result<Option<u32>, EngineError> {
        let freed = match self {
            Plane::Xdp(x) => engine.free_now(key, addr, &mut x.maps)?,
            Plane::Proxy(_) => engine.free_now(key, addr, &mut NoMaps)?,
        };
        if let Some(id) = freed {
            self.forget(id);
        }
        Ok(freed)
    }

    /// Forgets a freed backend id (the proxy keeps counters per id).
    fn forget(&mut self, backend_id: u32) {
        if let Plane::Proxy(p) = self {
            for s in p.services.values() {
                s.handle.forget_backend(backend_id);
            }
        }
    }

    /// Counters in the STATS layout (reasons, then services, then backends): the XDP program's
    /// per-CPU counters summed (services from their backends), or the proxy's (packets and
    /// bytes both ways).
    pub fn stats(&self, engine: &Engine) -> Result<Vec<Counter>, xdp::XdpError> {
        match self {
            Plane::Xdp(x) => {
                let mut stats = x.maps.read_stats()?;
                engine.fill_service_stats(&mut stats);
                Ok(stats)
            }
            Plane::Proxy(p) => {
                let mut out = vec![Counter::default(); STATS_LEN as usize];
                let both = |c: &proxy::CounterSnapshot| Counter {
                    packets: c.packets_in + c.packets_out,
                    bytes: c.bytes_in + c.bytes_out,
                };
                for svc in engine.services() {
                    let Some(px) = p.services.get(&svc.config.key()) else {
                        continue;
                    };
                    if let Some(slot) = out.get_mut((STATS_SERVICE_BASE + svc.id) as usize) {
                        *slot = both(&px.handle.counters());
                    }
                    for (id, c) in px.handle.all_backend_counters() {
                        if let Some(slot) = out.get_mut((STATS_BACKEND_BASE + id) as usize) {
                            *slot = both(&c);
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}
