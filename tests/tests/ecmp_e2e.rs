//! Active-active behind ECMP, end to end in namespaces: three lbd nodes announce the VIP through
//! BIRD (BGP with BFD) to a router namespace running BIRD with `merge paths`, which spreads the
//! client's connections over the nodes by a 5-tuple hash; every node picks the same backend for
//! a flow (Maglev), so a flow survives moving between nodes.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use lbd_tests::{
    Host, Topology, bin_path,
    bird::{self, Bird},
    client,
    lbd::{self, LbdNode, Mode},
    netns_tests_enabled, test_tag,
};

/// Three nodes announcing the VIP, the router's BIRD and the nodes' BIRDs, all running.
struct Bed {
    topo: Topology,
    _backends: Vec<lbd_tests::Spawned>,
    nodes: Vec<(Host, LbdNode)>,
    _birds: Vec<Bird>,
    router: Bird,
}

impl Bed {
    fn build(name: &str) -> Result<Bed> {
        let topo = Topology::builder(&test_tag(name))
            .lbd_nodes(3)
            .backends(3)
            .router(true)
            .build()?;
        let backends = topo.start_backends(&bin_path("lbd-test-backend")?)?;
        let dir: PathBuf = LbdNode::dir(&topo, Host::Router);
        let node_hosts = topo.lbd_nodes();
        let router = Bird::start(&topo, Host::Router, &dir, &bird::router_config(&node_hosts))?;
        let mut nodes = Vec::new();
        let mut birds = Vec::new();
        for n in node_hosts {
            let config = lbd::all_backends_config(&topo, n, Mode::XdpGeneric)
                + &format!("\n[announce]\ntable = {}\n", bird::TABLE);
            nodes.push((n, LbdNode::start(&topo, n, &config)?));
            birds.push(Bird::start(
                &topo,
                n,
                &LbdNode::dir(&topo, n),
                &bird::node_config(n),
            )?);
        }
        let bed = Bed {
            topo,
            _backends: backends,
            nodes,
            _birds: birds,
            router,
        };
        // BIRD 2.0.12 may announce a few seconds after its session is up.
        bird::wait_next_hops(&bed.topo, &bed.node_ips(), Duration::from_secs(30))?;
        Ok(bed)
    }

    fn node_ips(&self) -> Vec<std::net::Ipv4Addr> {
        self.nodes.iter().map(|(h, _)| self.topo.ip(*h)).collect()
    }

    /// Each node's count of flows started for web.
    fn new_flows(&self) -> Result<BTreeMap<Host, u64>> {
        self.nodes
            .iter()
            .map(|(h, n)| {
                let s = n.status()?;
                let web = s.services.iter().find(|s| s.name == "web").context("web")?;
                Ok((*h, web.new_flows))
            })
            .collect()
    }

    /// The client ports of the web flows a node holds (open or closing).
    fn flow_ports(&self, node: &LbdNode) -> Result<BTreeSet<u16>> {
        let (code, out, err) =
            node.lbctl(&["flows", "--json", "--service", "web", "--limit", "1000"])?;
        ensure!(code == 0, "lbctl flows: {err}");
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v["flows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["client"].as_str()?.rsplit(':').next()?.parse().ok())
            .collect())
    }
}

#[test]
fn three_announced_nodes_share_new_connections() -> Result<()> {
    let name = "ecmp_share";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    let bed = Bed::build(name)?;
    let routes = bed
        .router
        .birdc(&["show", "route", "for", &lbd_tests::VIP.to_string(), "all"])?;
    eprintln!("router's BIRD:\n{routes}");
    let before = bed.new_flows()?;
    let vip = bed.topo.vip_http();
    let backends = bed
        .topo
        .client()
        .enter(move || -> Result<BTreeSet<String>> {
            let mut seen = BTreeSet::new();
            for i in 0..300 {
                seen.insert(
                    client::http_get(vip)
                        .with_context(|| format!("connection {i}"))?
                        .backend,
                );
            }
            Ok(seen)
        })??;
    let after = bed.new_flows()?;
    let shares: BTreeMap<Host, u64> = after
        .iter()
        .map(|(h, n)| (*h, n - before.get(h).copied().unwrap_or(0)))
        .collect();
    eprintln!("new connections per node: {shares:?}; backends: {backends:?}");
    let total: u64 = shares.values().sum();
    ensure!(
        total == 300,
        "the nodes counted {total} of 300 connections: {shares:?}"
    );
    for (h, n) in &shares {
        ensure!(*n >= 45, "{h} took {n} of 300 (less than 15%): {shares:?}");
    }
    ensure!(backends.len() == 3, "backends reached: {backends:?}");
    Ok(())
}

#[test]
fn a_drained_node_hands_its_flows_over_and_rejoins_without_a_reset() -> Result<()> {
    let name = "ecmp_drain";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    let bed = Bed::build(name)?;
    let vip = bed.topo.vip_http();
    const FLOWS: usize = 20;
    let duration = Duration::from_secs(8);
    let started = Instant::now();
    // 20 slow kept-alive flows, a request every 200 ms for the whole time.
    let flows = bed.topo.client().enter(move || {
        (0..FLOWS)
            .map(|i| {
                std::thread::spawn(move || -> Result<(u16, String, u64)> {
                    let mut c = client::KeepAlive::connect(vip, Duration::from_secs(5))?;
                    let port = c.local_addr()?.port();
                    let first = c
                        .get("/")
                        .with_context(|| format!("flow {i}: first request"))?;
                    while started.elapsed() < duration {
                        std::thread::sleep(Duration::from_millis(200));
                        let r = c.get("/").with_context(|| {
                            format!("flow {i} (port {port}) after {:?}", started.elapsed())
                        })?;
                        ensure!(r.backend == first.backend, "flow {i} changed backend");
                    }
                    let n = c.requests();
                    c.close()?;
                    Ok((port, first.backend, n))
                })
            })
            .collect::<Vec<_>>()
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let (drained, node) = &bed.nodes[0];
    let moving = bed.flow_ports(node)?;
    ensure!(
        !moving.is_empty(),
        "none of the {FLOWS} flows went through {drained}"
    );
    let (code, out, err) = node.lbctl(&["node", "drain"])?;
    ensure!(code == 0, "lbctl node drain: {err}");
    eprintln!("{out}");
    let withdrawn = Instant::now();
    bird::wait_next_hops(&bed.topo, &bed.node_ips()[1..], Duration::from_secs(10))?;
    eprintln!(
        "the router dropped {drained} {:?} after the drain",
        withdrawn.elapsed()
    );
    // It joins again while the flows go on: the flows ECMP now moves back to it must not break.
    std::thread::sleep(Duration::from_millis(1500));
    let (code, _, err) = node.lbctl(&["node", "undrain"])?;
    ensure!(code == 0, "lbctl node undrain: {err}");
    bird::wait_next_hops(&bed.topo, &bed.node_ips(), Duration::from_secs(10))?;

    let mut broken = Vec::new();
    let mut requests = 0;
    for f in flows {
        match f
            .join()
            .map_err(|_| anyhow::anyhow!("a flow thread panicked"))?
        {
            Ok((_, _, n)) => requests += n,
            Err(e) => broken.push(format!("{e:#}")),
        }
    }
    ensure!(
        broken.is_empty(),
        "{} of {FLOWS} flows broke: {broken:#?}",
        broken.len()
    );
    // The drained node's flows went on through the others, which picked up mid-flow.
    let picked: BTreeSet<u16> = bed.nodes[1..]
        .iter()
        .map(|(_, n)| bed.flow_ports(n))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    let moved = moving.intersection(&picked).count();
    eprintln!(
        "{} flows through {drained} before the drain, {moved} of them seen by the other nodes after; {requests} requests, none failed",
        moving.len()
    );
    ensure!(
        moved == moving.len(),
        "flows of {drained} not picked up: {moving:?} vs {picked:?}"
    );
    Ok(())
}

#[test]
fn a_node_without_backends_in_rotation_withdraws_and_comes_back() -> Result<()> {
    let name = "ecmp_nobackend";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    let bed = Bed::build(name)?;
    let (node_host, node) = &bed.nodes[0];
    let backends: Vec<String> = bed
        .topo
        .backends()
        .into_iter()
        .map(|b| bed.topo.ip(b).to_string())
        .collect();
    let set = |on: &str| -> Result<()> {
        for svc in ["web", "dns"] {
            for b in &backends {
                let (code, _, err) = node.lbctl(&["backend", "maintenance", svc, b, on])?;
                ensure!(code == 0, "maintenance {on} {svc} {b}: {err}");
            }
        }
        Ok(())
    };
    set("on")?;
    bird::wait_next_hops(&bed.topo, &bed.node_ips()[1..], Duration::from_secs(10))?;
    let status = node.status()?;
    let reason = status
        .announce
        .as_ref()
        .and_then(|a| a.vips.first())
        .map(|v| v.reason);
    ensure!(
        reason == Some(lb_daemon::announce::Reason::NoBackend),
        "{node_host}: {reason:?}"
    );
    set("off")?;
    bird::wait_next_hops(&bed.topo, &bed.node_ips(), Duration::from_secs(10))
}

#[test]
fn a_killed_node_is_routed_around_and_its_flows_go_on() -> Result<()> {
    let name = "ecmp_kill";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    let mut bed = Bed::build(name)?;
    let vip = bed.topo.vip_http();
    const FLOWS: usize = 20;
    let duration = Duration::from_secs(8);
    let started = Instant::now();
    let flows = bed.topo.client().enter(move || {
        (0..FLOWS)
            .map(|i| {
                std::thread::spawn(move || -> Result<u64> {
                    let mut c = client::KeepAlive::connect(vip, Duration::from_secs(5))?;
                    let first = c
                        .get("/")
                        .with_context(|| format!("flow {i}: first request"))?;
                    while started.elapsed() < duration {
                        std::thread::sleep(Duration::from_millis(200));
                        let r = c
                            .get("/")
                            .with_context(|| format!("flow {i} after {:?}", started.elapsed()))?;
                        ensure!(r.backend == first.backend, "flow {i} changed backend");
                    }
                    Ok(c.requests())
                })
            })
            .collect::<Vec<_>>()
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let (dead, _) = bed.nodes[0];
    let on_dead = bed.flow_ports(&bed.nodes[0].1)?;
    // The link down first, then lbd and BIRD killed: no FIN of the BGP session, no withdrawal
    // gets out (as when a host dies); BFD must notice.
    let killed = Instant::now();
    bed.topo.ns(dead).ip(&["link", "set", "eth0", "down"])?;
    bed._birds[0].process.signal(libc::SIGKILL)?;
    bed.nodes[0].1.process.signal(libc::SIGKILL)?;
    bird::wait_next_hops(&bed.topo, &bed.node_ips()[1..], Duration::from_secs(5))?;
    let reroute = killed.elapsed();
    eprintln!(
        "the router dropped the killed {dead} after {:.0} ms; {} of {FLOWS} flows were on it",
        reroute.as_secs_f64() * 1e3,
        on_dead.len()
    );
    let mut broken = Vec::new();
    for f in flows {
        if let Err(e) = f
            .join()
            .map_err(|_| anyhow::anyhow!("a flow thread panicked"))?
        {
            broken.push(format!("{e:#}"));
        }
    }
    ensure!(
        broken.is_empty(),
        "{} of {FLOWS} flows broke: {broken:#?}",
        broken.len()
    );
    // BFD at 100 ms x 3: the bound is 400 ms; the test allows scheduling slack on a busy
    // machine and reports the figure (the benchmark measures it).
    ensure!(reroute < Duration::from_secs(2), "reroute took {reroute:?}");
    Ok(())
}

/// The shipped BIRD snippets (`packaging/bird/`) are valid BIRD 2 configs.
#[test]
fn the_shipped_bird_snippets_parse() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    for file in ["node.conf", "router.conf"] {
        let path = root.join("packaging/bird").join(file);
        let out = std::process::Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&path)
            .output()
            .context("running bird -p (cargo xtask setup installs bird2)")?;
        ensure!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
