//! The userspace data path: one TCP or UDP proxy per service (see [`crate::proxy`]), fed the
//! engine's backends in rotation and its Maglev table.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::fd::{AsFd as _, OwnedFd},
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
    flows::{Collector, FlowListing, FlowQuery, FlowRecord},
    handover::{self, Inherited},
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
    /// A second descriptor of its listening socket, for a successor lbd (`lbd --replace`).
    listener: Option<OwnedFd>,
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
    /// Listeners an earlier lbd or systemd handed over, taken by the services they belong to.
    inherited: Inherited,
    /// The flood guard's rate, for each service (new ones too).
    flood_per_sec: u32,
}

impl ProxyDatapath {
    /// A proxy with no services yet; its listeners and connections run on `runtime`. A service
    /// whose listener is in `inherited` serves on it instead of binding its own.
    pub fn new(
        config: ProxyConfig,
        runtime: tokio::runtime::Handle,
        inherited: Inherited,
    ) -> ProxyDatapath {
        ProxyDatapath {
            config,
            runtime,
            services: BTreeMap::new(),
            handles: Arc::default(),
            inherited,
            flood_per_sec: 0,
        }
    }

    /// Starts serving `svc` with its backends set first: an inherited listener may hold
    /// clients already, and none of them must meet an empty backend set.
    fn start(
        &mut self,
        svc: &ServiceEntry<'_>,
        specs: &[BackendSpec],
    ) -> Result<(), DatapathError> {
        let vip = svc.key.vip;
        let handle = Arc::new(ServiceHandle::new(
            svc.name,
            vip,
            svc.key.proto,
            self.config.clone(),
        )?);
        handle.set_backends(svc.scheduler, specs, svc.table)?;
        handle.set_flood_guard(self.flood_per_sec);
        let stop = CancellationToken::new();
        let _guard = self.runtime.enter();
        let proto = svc.key.proto;
        let name = handover::name(proto, vip);
        let inherited = self.inherited.take(proto, vip);
        let from = if inherited.is_some() {
            self.inherited.source.as_deref().unwrap_or("an earlier lbd")
        } else {
            "bound here"
        };
        // Bindable before the VIP is on the interface (IP_FREEBIND): a VRRP backup is ready.
        let (task, fd) = match proto {
            Proto::Tcp => {
                let l = match inherited {
                    Some(fd) => proxy::tcp_listener_from(fd, vip)?,
                    None => proxy::bind_tcp(vip)?,
                };
                let fd = l.as_fd().try_clone_to_owned();
                let task = self
                    .runtime
                    .spawn(proxy::run_tcp(l, handle.clone(), stop.clone()));
                (task, fd)
            }
            Proto::Udp => {
                let s = match inherited {
                    Some(fd) => proxy::udp_socket_from(fd, vip)?,
                    None => proxy::bind_udp(vip)?,
                };
                let fd = s.as_fd().try_clone_to_owned();
                let task = self
                    .runtime
                    .spawn(proxy::run_udp(s, handle.clone(), stop.clone()));
                (task, fd)
            }
        };
        let listener = match fd {
            Ok(fd) => {
                // systemd keeps it across a restart (with FileDescriptorStoreMax=).
                handover::store(&name, fd.as_fd());
                Some(fd)
            }
            Err(e) => {
                tracing::warn!(service = %svc.key, error = %e, "cannot keep a second descriptor of the listener: a hand-over will bind it anew");
                None
            }
        };
        tracing::info!(service = %svc.key, socket = from, "proxy listening");
        self.services.insert(
            svc.key,
            Proxied {
                handle: handle.clone(),
                stop,
                task,
                listener,
            },
        );
        self.handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(svc.key, handle);
        Ok(())
    }
}

/// Packets and bytes both ways, as the XDP counters count frames through the balancer.
fn both(c: &CounterSnapshot) -> Counter {
    Counter {
        packets: c.packets_in + c.packets_out,
        bytes: c.bytes_in + c.bytes_out,
        new_flows: c.connections,
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
        match self.services.get(&svc.key) {
            Some(p) => p.handle.set_backends(svc.scheduler, &specs, svc.table)?,
            None => self.start(svc, &specs)?,
        }
        Ok(())
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DatapathError> {
        if let Some(p) = self.services.remove(key) {
            p.stop.cancel();
            handover::unstore(&handover::name(key.proto, key.vip));
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

    fn set_flood_guard(&mut self, new_flows_per_sec: u32) -> Result<(), DatapathError> {
        self.flood_per_sec = new_flows_per_sec;
        for h in self
            .handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            h.set_flood_guard(new_flows_per_sec);
        }
        Ok(())
    }

    fn counter_source(&self) -> Result<Arc<dyn CounterSource>, DatapathError> {
        Ok(Arc::new(ProxyFlows(self.handles.clone())))
    }

    fn go_live(&mut self) -> Result<(), DatapathError> {
        // Every service of the config has taken its listener by now.
        self.inherited.close_rest();
        Ok(())
    }

    fn listeners(&self) -> Vec<(String, OwnedFd)> {
        self.services
            .iter()
            .filter_map(|(key, p)| {
                let fd = p.listener.as_ref()?.try_clone().ok()?;
                Some((handover::name(key.proto, key.vip), fd))
            })
            .collect()
    }

    fn flow_table(&mut self) -> Result<Box<dyn FlowTable>, DatapathError> {
        Ok(Box::new(ProxyFlows(self.handles.clone())))
    }

    /// Blocks on the runtime until the proxies are gone: call it from outside the runtime.
    fn stop(self: Box<Self>, linger: Duration) {
        let ProxyDatapath {
            runtime, services, ..
        } = *self;
        for p in services.values() {
            p.handle.set_linger(linger);
            p.stop.cancel();
        }
        // The proxies close their listeners and connections; a stuck peer cannot hold the stop.
        let all = futures::future::join_all(services.into_values().map(|p| p.task));
        if runtime
            .block_on(tokio::time::timeout(linger + STOP_GRACE, all))
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
            // What the flood guard held back, as XDP counts what it kept out of its table.
            if let Some(r) = out.reasons.get_mut(lb_common::reason::FLOOD_GUARD as usize) {
                r.packets += h.counters().flood_held;
            }
        }
        Ok(out)
    }
}

impl FlowTable for ProxyFlows {
    fn list(&mut self, query: &FlowQuery) -> FlowListing {
        let mut collector = Collector::new(query);
        for h in self.handles() {
            let vip = h.vip();
            // An idle connection or session ends at this timeout.
            let timeout = match h.proto() {
                Proto::Tcp => h.config().idle_timeout,
                Proto::Udp => h.config().udp_session_timeout,
            };
            for open in h.open_flows() {
                collector.offer(FlowRecord {
                    proto: h.proto(),
                    client: open.client,
                    vip,
                    backend_id: open.backend_id,
                    // The proxy sees a close as the end of the connection: no closing state.
                    closing: false,
                    idle: open.activity.idle(),
                    expires: Some(timeout.saturating_sub(open.activity.idle())),
                });
            }
        }
        collector.finish()
    }

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
