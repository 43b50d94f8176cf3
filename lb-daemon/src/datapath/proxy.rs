//! The userspace data path: one TCP or UDP proxy per service (see [`crate::proxy`]), fed the
//! engine's backends in rotation and its Maglev table.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use lb_common::Counter;
use tokio_util::sync::CancellationToken;

use super::{
    BackendEntry, CounterSource, Datapath, DatapathCounters, DatapathError, DatapathMode,
    FlowTable, ServiceEntry,
};
use crate::{
    config::{Proto, ServiceKey, proxy::ProxyConfig},
    model::FlowCounts,
    proxy::{self, BackendSpec, CounterSnapshot, ServiceHandle},
};

/// How long a stop waits for open connections to end.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// One proxied service.
struct Proxied {
    handle: Arc<ServiceHandle>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The services' handles, shared with the flow table (read on the scan thread).
type Handles = Arc<Mutex<BTreeMap<ServiceKey, Arc<ServiceHandle>>>>;

/// The userspace proxy, a listener per service. Its tasks run on the tokio runtime it is given,
/// whichever thread drives it.
pub struct ProxyDatapath {
    config: ProxyConfig,
    runtime: tokio::runtime::Handle,
    services: BTreeMap<ServiceKey, Proxied>,
    handles: Handles,
}

impl ProxyDatapath {
    /// A proxy with no services yet; its listeners and connections run on `runtime`.
    pub fn new(config: ProxyConfig, runtime: tokio::runtime::Handle) -> ProxyDatapath {
        ProxyDatapath {
            config,
            runtime,
            services: BTreeMap::new(),
            handles: Arc::default(),
        }
    }

    fn start(&mut self, svc: &ServiceEntry<'_>) -> Result<Arc<ServiceHandle>, DatapathError> {
        let vip = SocketAddr::V4(svc.key.vip);
        let handle = Arc::new(ServiceHandle::new(
            svc.name,
            vip,
            svc.key.proto,
            self.config.clone(),
        )?);
        let stop = CancellationToken::new();
        let _guard = self.runtime.enter();
        // Bindable before the VIP is on the interface (IP_FREEBIND): a VRRP backup is ready.
        let task = match svc.key.proto {
            Proto::Tcp => {
                let l = proxy::bind_tcp(vip)?;
                self.runtime
                    .spawn(proxy::run_tcp(l, handle.clone(), stop.clone()))
            }
            Proto::Udp => {
                let s = proxy::bind_udp(vip)?;
                self.runtime
                    .spawn(proxy::run_udp(s, handle.clone(), stop.clone()))
            }
        };
        tracing::info!(service = %svc.key, "proxy listening");
        self.services.insert(
            svc.key,
            Proxied {
                handle: handle.clone(),
                stop,
                task,
            },
        );
        self.handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(svc.key, handle.clone());
        Ok(handle)
    }
}

/// Packets and bytes both ways, as the XDP counters count frames through the balancer.
fn both(c: &CounterSnapshot) -> Counter {
    Counter {
        packets: c.packets_in + c.packets_out,
        bytes: c.bytes_in + c.bytes_out,
    }
}

impl Datapath for ProxyDatapath {
    fn mode(&self) -> DatapathMode {
        DatapathMode::Userspace
    }

    fn set_backend(&mut self, _: u32, _: &BackendEntry) -> Result<(), DatapathError> {
        // A connection holds its backend socket: a backend's state matters only through the
        // service's set of backends in rotation.
        Ok(())
    }

    fn set_service(&mut self, svc: &ServiceEntry<'_>) -> Result<(), DatapathError> {
        let handle = match self.services.get(&svc.key) {
            Some(p) => p.handle.clone(),
            None => self.start(svc)?,
        };
        let port = svc.key.vip.port();
        let specs: Vec<BackendSpec> = svc
            .members
            .iter()
            .map(|m| BackendSpec {
                id: m.id,
                addr: SocketAddr::new(m.addr, port),
                weight: m.weight,
            })
            .collect();
        handle.set_backends(svc.scheduler, &specs, svc.table)?;
        Ok(())
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DatapathError> {
        if let Some(p) = self.services.remove(key) {
            p.stop.cancel();
            tracing::info!(service = %key, "proxy stopped");
        }
        self.handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        Ok(())
    }

    fn free_backend(&mut self, id: u32) -> Result<Counter, DatapathError> {
        let mut last = Counter::default();
        for p in self.services.values() {
            if let Some(c) = p.handle.backend_counters(id) {
                last.add(both(&c));
            }
            p.handle.forget_backend(id);
        }
        Ok(last)
    }

    fn counters(&self) -> Result<DatapathCounters, DatapathError> {
        ProxyFlows(self.handles.clone()).counters()
    }

    fn counter_source(&self) -> Result<Arc<dyn CounterSource>, DatapathError> {
        Ok(Arc::new(ProxyFlows(self.handles.clone())))
    }

    fn flow_table(&mut self) -> Result<Box<dyn FlowTable>, DatapathError> {
        Ok(Box::new(ProxyFlows(self.handles.clone())))
    }

    /// Blocks on the runtime until the proxies are gone: call it from outside the runtime.
    fn stop(self: Box<Self>) {
        let ProxyDatapath {
            runtime, services, ..
        } = *self;
        for p in services.values() {
            p.stop.cancel();
        }
        // The proxies close their listeners and connections; a stuck peer cannot hold the stop.
        let all = futures::future::join_all(services.into_values().map(|p| p.task));
        if runtime
            .block_on(tokio::time::timeout(STOP_GRACE, all))
            .is_err()
        {
            tracing::warn!(
                "proxied connections still open after {}s; closing them",
                STOP_GRACE.as_secs()
            );
        }
    }
}

/// The proxy's flows (its open connections and sessions) and counters, per backend, read from
/// its services' handles.
struct ProxyFlows(Handles);

impl ProxyFlows {
    fn handles(&self) -> Vec<Arc<ServiceHandle>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

impl CounterSource for ProxyFlows {
    fn counters(&self) -> Result<DatapathCounters, DatapathError> {
        let mut out = DatapathCounters::zero();
        for h in self.handles() {
            for (id, c) in h.all_backend_counters() {
                out.backends.entry(id).or_default().add(both(&c));
            }
        }
        Ok(out)
    }
}

impl FlowTable for ProxyFlows {
    fn scan(&mut self, _is_dead: &dyn Fn(u32) -> bool) -> FlowCounts {
        // A connection cannot be cut from here: it ends on its own. Counting is all there is.
        let handles = self.handles();
        let mut counts = FlowCounts::default();
        for h in handles {
            for (id, _) in h.all_backend_counters() {
                let n = h.active_connections(id);
                if n > 0 {
                    *counts.active.entry(id).or_default() += n;
                    counts.entries += n;
                }
            }
        }
        counts
    }
}
