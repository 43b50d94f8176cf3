//! Active-active behind ECMP, the scenarios shared by `tests/ecmp_e2e.rs` and `cargo xtask
//! bench ecmp`: lbd nodes announce the VIP through BIRD (BGP with BFD) to a router namespace
//! running BIRD with `merge paths`, which spreads the client's connections over the nodes by
//! their 5-tuple (`fib_multipath_hash_policy = 1`, and `clear_hash` on the router's ingress so
//! that the hash of the client's socket does not stand in for it); every node picks the same
//! backend for a flow (Maglev), so a flow survives moving between nodes.
//!
//! A dual-stack bed ([`Bed::build_dual_stack`]) also serves `web6` on `[VIP6]:80`: the nodes
//! announce `VIP6/128` beside `VIP/32` over the same BGP sessions (see [`crate::bird`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    Family, Host, Spawned, Topology, bin_path,
    bird::{self, Bird},
    client,
    lbd::{self, LbdNode, Mode},
};

/// Slow kept-alive flows of the drain and kill scenarios.
pub const FLOWS: usize = 20;
/// How long those flows run (a request every 200 ms).
const FLOW_TIME: Duration = Duration::from_secs(8);

/// lbd nodes announcing the VIP, the router's BIRD and the nodes' BIRDs, all running.
pub struct Bed {
    /// The namespaces (a router in front of the nodes).
    pub topo: Topology,
    _backends: Vec<Spawned>,
    /// The nodes, in order.
    pub nodes: Vec<(Host, LbdNode)>,
    /// The nodes' BIRDs, in the nodes' order.
    pub birds: Vec<Bird>,
    /// The router's BIRD.
    pub router: Bird,
    /// The router's BIRD files (no lbd runs there to remove them), removed after it.
    _router_dir: crate::TempPath,
    /// The router's `clear_hash`, attached while held.
    _clear_hash: aya::Ebpf,
    /// Whether the nodes also serve `web6` on the IPv6 VIP ([`Bed::build_dual_stack`]).
    pub dual_stack: bool,
}

/// The IPv6 service of a dual-stack bed: `web6` on `[VIP6]:80` over the backends' IPv6
/// addresses, appended to a node's config.
fn web6_section(topo: &Topology) -> String {
    let backends = topo
        .backends()
        .into_iter()
        .map(|b| format!("{{ addr = \"{}\" }}", topo.ip6(b)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "\n[[service]]\nname = \"web6\"\nvip = \"{}\"\nbackends = [{backends}]\n",
        topo.vip6_http()
    )
}

impl Bed {
    /// `n` nodes on generic XDP over three backends, each announcing the VIP; returns once the
    /// router has a next hop per node.
    pub fn build(name: &str, n: u8) -> Result<Bed> {
        Self::build_with(name, n, false)
    }

    /// [`Bed::build`] with the nodes dual-stack: each also serves `web6` on `[VIP6]:80` over the
    /// backends' IPv6 addresses and announces `VIP6/128`; returns once the router has a next hop
    /// per node for both VIPs.
    pub fn build_dual_stack(name: &str, n: u8) -> Result<Bed> {
        Self::build_with(name, n, true)
    }

    fn build_with(name: &str, n: u8, dual_stack: bool) -> Result<Bed> {
        let topo = Topology::builder(&crate::test_tag(name))
            .lbd_nodes(n)
            .backends(3)
            .router(true)
            .build()?;
        let backends = topo.start_backends(&bin_path("lbd-test-backend")?)?;
        let clear_hash = lbd::attach_clear_hash(&topo, Host::Router)?;
        let node_hosts = topo.lbd_nodes();
        let router_dir = crate::TempPath(LbdNode::dir(&topo, Host::Router));
        let router = Bird::start(
            &topo,
            Host::Router,
            &router_dir,
            &bird::router_config(&node_hosts),
        )?;
        let mut nodes = Vec::new();
        let mut birds = Vec::new();
        for h in node_hosts {
            let mut config = lbd::all_backends_config(&topo, h, Mode::XdpGeneric);
            if dual_stack {
                config += &web6_section(&topo);
            }
            config += &format!("\n[announce]\ntable = {}\n", bird::TABLE);
            nodes.push((h, LbdNode::start(&topo, h, &config)?));
            birds.push(Bird::start(
                &topo,
                h,
                &LbdNode::dir(&topo, h),
                &bird::node_config(h),
            )?);
        }
        let bed = Bed {
            topo,
            _backends: backends,
            nodes,
            birds,
            router,
            _router_dir: router_dir,
            _clear_hash: clear_hash,
            dual_stack,
        };
        // BIRD 2.0.12 may announce a few seconds after its session is up.
        bird::wait_next_hops(&bed.topo, &bed.node_ips(), Duration::from_secs(30))?;
        if dual_stack {
            // The same sessions carry the IPv6 routes: no second wait for BGP to come up.
            bed.wait_next_hops(Family::V6, &bed.nodes, Duration::from_secs(10))?;
        }
        Ok(bed)
    }

    /// The nodes' addresses (the router's next hops).
    pub fn node_ips(&self) -> Vec<Ipv4Addr> {
        self.nodes.iter().map(|(h, _)| self.topo.ip(*h)).collect()
    }

    /// The nodes' addresses of `family` (the router's next hops to that family's VIP).
    pub fn node_ips_of(&self, family: Family) -> Vec<IpAddr> {
        self.nodes.iter().map(|(h, _)| h.ip_of(family)).collect()
    }

    /// Waits until the router's route to the VIP of `family` has exactly the next hops of
    /// `nodes` (see [`bird::wait_next_hops_of`]).
    pub fn wait_next_hops(
        &self,
        family: Family,
        nodes: &[(Host, LbdNode)],
        timeout: Duration,
    ) -> Result<()> {
        let want: Vec<IpAddr> = nodes.iter().map(|(h, _)| h.ip_of(family)).collect();
        bird::wait_next_hops_of(&self.topo, family, &want, timeout)
    }

    /// Each node's count of flows started for web.
    pub fn new_flows(&self) -> Result<BTreeMap<Host, u64>> {
        self.new_flows_of("web")
    }

    /// Each node's count of flows started for `service`.
    pub fn new_flows_of(&self, service: &str) -> Result<BTreeMap<Host, u64>> {
        self.nodes
            .iter()
            .map(|(h, n)| {
                let s = n.status()?;
                let svc = s
                    .services
                    .iter()
                    .find(|s| s.name == service)
                    .with_context(|| format!("{h}: no service {service}"))?;
                Ok((*h, svc.new_flows))
            })
            .collect()
    }

    /// The web service of `family`: `web` on `VIP:80`, or `web6` on `[VIP6]:80` (a dual-stack
    /// bed), and the remote client's address of that family.
    pub fn web_of(&self, family: Family) -> Result<(&'static str, SocketAddr, IpAddr)> {
        Ok(match family {
            Family::V4 => (
                "web",
                self.topo.vip_http(),
                IpAddr::V4(crate::topology::REMOTE_CLIENT),
            ),
            Family::V6 => {
                ensure!(
                    self.dual_stack,
                    "the bed serves no IPv6 VIP (build_dual_stack)"
                );
                (
                    "web6",
                    self.topo.vip6_http(),
                    IpAddr::V6(crate::topology::REMOTE_CLIENT6),
                )
            }
        })
    }

    /// The client ports of the flows a node holds for the web service of `family`: open ones
    /// only, or closing ones too.
    pub fn flow_ports(
        &self,
        node: &LbdNode,
        family: Family,
        open_only: bool,
    ) -> Result<BTreeSet<u16>> {
        let (service, _, _) = self.web_of(family)?;
        let (code, out, err) =
            node.lbctl(&["flows", "--json", "--service", service, "--limit", "1000"])?;
        ensure!(code == 0, "lbctl flows: {err}");
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v["flows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| !open_only || f["state"] == "open")
            .filter_map(|f| f["client"].as_str()?.rsplit(':').next()?.parse().ok())
            .collect())
    }
}

/// `n` new connections through the VIP: new flows per node, and the backends that answered.
/// Every backend must have seen the client's remote address (its answer went back through the
/// router).
pub fn share(bed: &Bed, n: usize) -> Result<(BTreeMap<Host, u64>, BTreeSet<String>)> {
    share_of(bed, Family::V4, n)
}

/// [`share`] through the VIP of `family`: `web` on `VIP:80`, or `web6` on `[VIP6]:80` (a
/// dual-stack bed), from the remote client's address of that family.
pub fn share_of(
    bed: &Bed,
    family: Family,
    n: usize,
) -> Result<(BTreeMap<Host, u64>, BTreeSet<String>)> {
    let (service, vip, client_ip) = bed.web_of(family)?;
    let before = bed.new_flows_of(service)?;
    let backends = bed
        .topo
        .client()
        .enter(move || -> Result<BTreeSet<String>> {
            let mut seen = BTreeSet::new();
            for i in 0..n {
                let r = client::http_get(vip).with_context(|| format!("connection {i}"))?;
                ensure!(
                    r.client_addr.ip() == client_ip,
                    "connection {i}: {} saw the client as {}",
                    r.backend,
                    r.client_addr
                );
                seen.insert(r.backend);
            }
            Ok(seen)
        })??;
    let after = bed.new_flows_of(service)?;
    let shares = after
        .iter()
        .map(|(h, c)| (*h, c - before.get(h).copied().unwrap_or(0)))
        .collect();
    Ok((shares, backends))
}

/// What happened to the slow flows of a scenario.
#[derive(Debug, Default)]
pub struct FlowsOutcome {
    /// Flows through the node the scenario took away, just before.
    pub on_node: usize,
    /// Of those, flows the other nodes held afterwards (picked up mid-flow).
    pub picked_up: usize,
    /// Flows that failed, with why.
    pub broken: Vec<String>,
    /// Requests answered in all.
    pub requests: u64,
    /// From the event to the router having dropped the node's next hop.
    pub reroute: Duration,
}

type FlowThreads = Vec<std::thread::JoinHandle<Result<u64>>>;

/// Starts [`FLOWS`] slow kept-alive flows through the VIP of `family`, each checking its backend
/// stays.
fn start_flows(bed: &Bed, family: Family, started: Instant) -> Result<FlowThreads> {
    let (_, vip, _) = bed.web_of(family)?;
    bed.topo.client().enter(move || {
        (0..FLOWS)
            .map(|i| {
                std::thread::spawn(move || -> Result<u64> {
                    let mut c = client::KeepAlive::connect(vip, Duration::from_secs(5))?;
                    let first = c
                        .get("/")
                        .with_context(|| format!("flow {i}: first request"))?;
                    while started.elapsed() < FLOW_TIME {
                        std::thread::sleep(Duration::from_millis(200));
                        let r = c
                            .get("/")
                            .with_context(|| format!("flow {i} after {:?}", started.elapsed()))?;
                        ensure!(r.backend == first.backend, "flow {i} changed backend");
                    }
                    let n = c.requests();
                    c.close()?;
                    Ok(n)
                })
            })
            .collect()
    })
}

fn finish_flows(threads: FlowThreads, outcome: &mut FlowsOutcome) -> Result<()> {
    for t in threads {
        match t
            .join()
            .map_err(|_| anyhow::anyhow!("a flow thread panicked"))?
        {
            Ok(n) => outcome.requests += n,
            Err(e) => outcome.broken.push(format!("{e:#}")),
        }
    }
    Ok(())
}

/// The first node drained under the slow flows, then undrained while they go on.
pub fn drain_and_rejoin(bed: &Bed) -> Result<FlowsOutcome> {
    drain_and_rejoin_of(bed, Family::V4)
}

/// [`drain_and_rejoin`] with the flows through the VIP of `family` (IPv6: a dual-stack bed).
pub fn drain_and_rejoin_of(bed: &Bed, family: Family) -> Result<FlowsOutcome> {
    let started = Instant::now();
    let flows = start_flows(bed, family, started)?;
    std::thread::sleep(Duration::from_secs(2));
    let (_, node) = &bed.nodes[0];
    let moving = bed.flow_ports(node, family, true)?;
    let (code, _, err) = node.lbctl(&["node", "drain"])?;
    ensure!(code == 0, "lbctl node drain: {err}");
    let withdrawn = Instant::now();
    bed.wait_next_hops(family, &bed.nodes[1..], Duration::from_secs(10))?;
    let mut outcome = FlowsOutcome {
        on_node: moving.len(),
        reroute: withdrawn.elapsed(),
        ..FlowsOutcome::default()
    };
    // It joins again while the flows go on: those ECMP moves back to it must not break.
    std::thread::sleep(Duration::from_millis(1500));
    let (code, _, err) = node.lbctl(&["node", "undrain"])?;
    ensure!(code == 0, "lbctl node undrain: {err}");
    bed.wait_next_hops(family, &bed.nodes, Duration::from_secs(10))?;
    finish_flows(flows, &mut outcome)?;
    let mut picked = BTreeSet::new();
    for (_, n) in &bed.nodes[1..] {
        picked.extend(bed.flow_ports(n, family, false)?);
    }
    outcome.picked_up = moving.intersection(&picked).count();
    Ok(outcome)
}

/// The first node dies under the slow flows: its link down first, then lbd and BIRD killed, so
/// that no withdrawal and no FIN of the BGP session gets out (as when a host dies); BFD must
/// notice.
pub fn kill(bed: &mut Bed) -> Result<FlowsOutcome> {
    kill_of(bed, Family::V4)
}

/// [`kill`] with the flows through the VIP of `family` (IPv6: a dual-stack bed); `reroute` is
/// until the router dropped the node from that family's route.
pub fn kill_of(bed: &mut Bed, family: Family) -> Result<FlowsOutcome> {
    let started = Instant::now();
    let flows = start_flows(bed, family, started)?;
    std::thread::sleep(Duration::from_secs(2));
    let dead = bed.nodes[0].0;
    let on_node = bed.flow_ports(&bed.nodes[0].1, family, true)?.len();
    let killed = Instant::now();
    bed.topo.ns(dead).ip(&["link", "set", "eth0", "down"])?;
    bed.birds[0].process.signal(libc::SIGKILL)?;
    bed.nodes[0].1.process.signal(libc::SIGKILL)?;
    bed.wait_next_hops(family, &bed.nodes[1..], Duration::from_secs(15))?;
    let mut outcome = FlowsOutcome {
        on_node,
        reroute: killed.elapsed(),
        ..FlowsOutcome::default()
    };
    finish_flows(flows, &mut outcome)?;
    Ok(outcome)
}

/// New connections per second through the VIP: `clients` threads opening connections for
/// `time`.
pub fn conn_rate(bed: &Bed, clients: usize, time: Duration) -> Result<f64> {
    let vip = bed.topo.vip_http();
    let started = Instant::now();
    let threads = bed.topo.client().enter(move || {
        (0..clients)
            .map(|_| {
                std::thread::spawn(move || -> Result<u64> {
                    let mut n = 0;
                    while started.elapsed() < time {
                        client::http_get(vip)?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect::<Vec<_>>()
    })?;
    let mut total = 0;
    for t in threads {
        total += t
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}
