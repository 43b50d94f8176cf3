//! Active-active behind ECMP, end to end in namespaces (see `lbd_tests::ecmp`): three lbd nodes
//! announce the VIP through BIRD to a router namespace that spreads the client's connections
//! over them; a flow keeps its backend whichever node it reaches. A dual-stack bed does the same
//! for the IPv6 VIP (`/128` routes, the `ipv6` channel of the same BGP sessions).

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use lbd_tests::{
    Family, VIP, VIP6, bird,
    ecmp::{self, Bed, FLOWS, FlowsOutcome},
    netns_tests_enabled,
};

#[test]
fn three_announced_nodes_share_new_connections() -> Result<()> {
    let name = "ecmp_share";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    let bed = Bed::build(name, 3)?;
    let routes = bed
        .router
        .birdc(&["show", "route", "for", &VIP.to_string()])?;
    eprintln!("router's BIRD:\n{routes}");
    let (shares, backends) = ecmp::share(&bed, 300)?;
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

/// Dual-stack nodes: the router gets a multipath `/128` to the IPv6 VIP with a next hop per node,
/// connections from the remote client's IPv6 address are spread over every node and reach every
/// backend, and `lbctl node drain` withdraws the IPv6 route with the IPv4 one.
#[test]
fn dual_stack_nodes_share_ipv6_connections_and_a_drain_withdraws_both_routes() -> Result<()> {
    let name = "ecmp_ipv6";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    let bed = Bed::build_dual_stack(name, 3)?;
    let routes = bed
        .router
        .birdc(&["show", "route", "for", &VIP6.to_string()])?;
    eprintln!("router's BIRD:\n{routes}");
    // Built: one next hop per node, their IPv6 addresses, in one multipath kernel route.
    let mut hops = bird::vip_next_hops_of(&bed.topo, Family::V6)?;
    hops.sort();
    let mut want = bed.node_ips_of(Family::V6);
    want.sort();
    ensure!(
        hops == want,
        "the router's IPv6 next hops are {hops:?}, wanted {want:?}"
    );

    let (shares, backends) = ecmp::share_of(&bed, Family::V6, 300)?;
    eprintln!("new IPv6 connections per node: {shares:?}; backends: {backends:?}");
    let total: u64 = shares.values().sum();
    ensure!(
        total == 300,
        "the nodes counted {total} of 300 IPv6 connections: {shares:?}"
    );
    for (h, n) in &shares {
        ensure!(*n >= 45, "{h} took {n} of 300 (less than 15%): {shares:?}");
    }
    ensure!(backends.len() == 3, "backends reached: {backends:?}");

    // A drain withdraws both VIPs of the node; an undrain announces both again.
    let (_, node) = &bed.nodes[0];
    let (code, _, err) = node.lbctl(&["node", "drain"])?;
    ensure!(code == 0, "lbctl node drain: {err}");
    for family in Family::BOTH {
        bed.wait_next_hops(family, &bed.nodes[1..], Duration::from_secs(10))
            .with_context(|| format!("{family} route after the drain"))?;
    }
    let (code, _, err) = node.lbctl(&["node", "undrain"])?;
    ensure!(code == 0, "lbctl node undrain: {err}");
    for family in Family::BOTH {
        bed.wait_next_hops(family, &bed.nodes, Duration::from_secs(10))
            .with_context(|| format!("{family} route after the undrain"))?;
    }
    Ok(())
}

#[test]
fn a_drained_node_hands_its_flows_over_and_rejoins_without_a_reset() -> Result<()> {
    let name = "ecmp_drain";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    let bed = Bed::build(name, 3)?;
    drained_well(&ecmp::drain_and_rejoin(&bed)?, Family::V4)
}

/// The drain scenario's verdict: no flow broke, on the way out or back, and every flow the
/// drained node had (some did) was picked up by the others.
fn drained_well(o: &FlowsOutcome, family: Family) -> Result<()> {
    eprintln!(
        "{family} drain: the router dropped the node after {:?}; {} flows were on it, {} picked up by the others; {} requests",
        o.reroute, o.on_node, o.picked_up, o.requests
    );
    ensure!(
        o.broken.is_empty(),
        "{} of {FLOWS} {family} flows broke: {:#?}",
        o.broken.len(),
        o.broken
    );
    ensure!(
        o.on_node > 0,
        "none of the {FLOWS} {family} flows went through the drained node"
    );
    ensure!(
        o.picked_up == o.on_node,
        "{} of the drained node's {} {family} flows were not picked up by the others",
        o.on_node - o.picked_up,
        o.on_node
    );
    Ok(())
}

#[test]
fn a_node_without_backends_in_rotation_withdraws_and_comes_back() -> Result<()> {
    let name = "ecmp_nobackend";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    let bed = Bed::build(name, 3)?;
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
    let reason = node
        .status()?
        .announce
        .as_ref()
        .and_then(|a| a.vips.first())
        .map(|v| v.reason);
    ensure!(
        reason == Some(lb_daemon::announce::Reason::NoBackend),
        "{node_host}: {reason:?}"
    );
    set("off")?;
    bird::wait_next_hops(&bed.topo, &bed.node_ips(), Duration::from_secs(10))?;

    // `lbctl node drain --wait` under traffic: returns once none reaches the node any more.
    let vip = bed.topo.vip_http();
    let load = bed.topo.client().enter(move || {
        std::thread::spawn(move || -> Result<()> {
            for i in 0..100 {
                lbd_tests::client::http_get(vip).with_context(|| format!("connection {i}"))?;
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        })
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let (code, out, err) = node.lbctl(&["node", "drain", "--wait", "--timeout", "30s"])?;
    ensure!(
        code == 0 && out.contains("no traffic reaches this node any more"),
        "lbctl node drain --wait: {out}{err}"
    );
    load.join()
        .map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
    let (code, _, err) = node.lbctl(&["node", "undrain"])?;
    ensure!(code == 0, "{err}");
    bird::wait_next_hops(&bed.topo, &bed.node_ips(), Duration::from_secs(10))
}

#[test]
fn a_killed_node_is_routed_around_and_its_flows_go_on() -> Result<()> {
    let name = "ecmp_kill";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    let mut bed = Bed::build(name, 3)?;
    killed_well(&ecmp::kill(&mut bed)?, Family::V4)
}

/// The kill scenario's verdict: no flow broke, and the router dropped the node in time.
fn killed_well(o: &FlowsOutcome, family: Family) -> Result<()> {
    eprintln!(
        "{family} kill: the router dropped the node after {:.0} ms; {} of {FLOWS} flows were on it",
        o.reroute.as_secs_f64() * 1e3,
        o.on_node
    );
    ensure!(
        o.broken.is_empty(),
        "{} of {FLOWS} {family} flows broke: {:#?}",
        o.broken.len(),
        o.broken
    );
    // BFD at 100 ms x 3 (the bound, 400 ms, is the benchmark's figure); the test allows
    // slack for a busy machine.
    ensure!(
        o.reroute < Duration::from_secs(3),
        "{family} reroute took {:?}",
        o.reroute
    );
    Ok(())
}

/// The drain and the kill scenarios with the flows through the IPv6 VIP of a dual-stack bed: a
/// drained node's IPv6 flows are picked up by the others and none breaks, on the way out or
/// back; a killed node (no withdrawal, no FIN: BFD notices) leaves both routes and its IPv6
/// flows go on through the others.
#[test]
fn a_dual_stack_node_drained_then_killed_keeps_its_ipv6_flows() -> Result<()> {
    let name = "ecmp_ipv6_flows";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    let mut bed = Bed::build_dual_stack(name, 3)?;
    drained_well(&ecmp::drain_and_rejoin_of(&bed, Family::V6)?, Family::V6)?;
    killed_well(&ecmp::kill_of(&mut bed, Family::V6)?, Family::V6)?;
    // One BGP session carries both families: BFD's verdict takes the IPv4 route with it.
    bed.wait_next_hops(Family::V4, &bed.nodes[1..], Duration::from_secs(5))
        .context("the IPv4 route after the kill")
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
