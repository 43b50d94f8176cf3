//! The announcement on one node, through the kernel: with `[announce]`, lbd keeps a `/32` route
//! per servable VIP in its own table (what BIRD learns and exports), withdraws it when no
//! backend is in rotation, on `lbctl node drain` (kept across a restart) and at stop, and puts
//! it back when it can serve again.

use std::time::Duration;

use anyhow::{Result, ensure};
use lbd_tests::{
    Host, VIP,
    lbd::{self, LbdNode, Mode, SingleNode},
    netns_tests_enabled,
};

/// The VIP routes of lbd (protocol 201) in table 100 of the node.
fn routes(topo: &lbd_tests::Topology, node: Host) -> Result<String> {
    let out = topo.ns(node).run(
        "ip",
        &["-4", "route", "show", "table", "100", "proto", "201"],
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn wait_routes(topo: &lbd_tests::Topology, node: Host, want_vip: bool) -> Result<()> {
    lb_testkit::try_wait_until(
        if want_vip {
            "the VIP route in table 100"
        } else {
            "no VIP route in table 100"
        },
        Duration::from_secs(5),
        || -> Result<bool> { Ok(routes(topo, node)?.contains(&VIP.to_string()) == want_vip) },
    )
}

#[test]
fn the_vip_route_follows_what_the_node_can_serve() -> Result<()> {
    let name = "announce_routes";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    let SingleNode {
        topo,
        mut backends,
        peer: _peer,
    } = SingleNode::build(name, Mode::XdpGeneric)?;
    let node = Host::Lbd(1);
    // web over every backend (checked), dns with none: only web can keep the VIP announced.
    let all = topo.backends().into_iter().map(|b| topo.ip(b)).collect();
    let config = lbd::config_text(
        Mode::XdpGeneric,
        &LbdNode::socket_path(&topo, node),
        &lbd::Services {
            tcp: all,
            udp: Vec::new(),
        },
    )
    .replacen(
        "name = \"web\"\n",
        "name = \"web\"\nhealth = { kind = \"tcp\", interval_ms = 200, timeout_ms = 150, rise = 1, fall = 1 }\n",
        1,
    ) + "\n[announce]\ntable = 100\n";
    let mut lbd = LbdNode::start(&topo, node, &config)?;
    wait_routes(&topo, node, true)?;
    let route = routes(&topo, node)?;
    ensure!(route.contains("dev lo"), "{route}");

    // Every web backend's server stops: no backend in rotation, withdrawn, and said why.
    for b in &mut backends {
        b.terminate(Duration::from_secs(5))?;
    }
    wait_routes(&topo, node, false)?;
    let status = lbd.status()?;
    let a = status
        .announce
        .as_ref()
        .map(|a| a.vips.clone())
        .unwrap_or_default();
    ensure!(
        a.len() == 1 && !a[0].announced && a[0].reason == lb_daemon::announce::Reason::NoBackend,
        "{a:?}"
    );
    let metrics = lbd::scrape(&topo, node)?;
    ensure!(
        lbd::sample(&metrics, "lbd_vip_announced", &[&format!("vip=\"{VIP}\"")])? == 0.0,
        "lbd_vip_announced"
    );

    // Back: announced again.
    let bin = lbd_tests::bin_path("lbd-test-backend")?;
    backends = topo.start_backends(&bin)?;
    wait_routes(&topo, node, true)?;

    // Drained: withdrawn, and still after a restart; undrained: back.
    let (code, out, err) = lbd.lbctl(&["node", "drain"])?;
    ensure!(code == 0 && out.contains("draining the node"), "{out}{err}");
    wait_routes(&topo, node, false)?;
    lbd.restart(&topo, node)?;
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        !routes(&topo, node)?.contains(&VIP.to_string()),
        "a restart announced a drained node"
    );
    let (code, text, _) = lbd.lbctl(&["status"])?;
    ensure!(code == 0 && text.contains("NODE DRAINED"), "{text}");
    let (code, _, err) = lbd.lbctl(&["node", "undrain"])?;
    ensure!(code == 0, "{err}");
    wait_routes(&topo, node, true)?;

    // A stop withdraws.
    lbd.stop()?;
    ensure!(
        routes(&topo, node)?.is_empty(),
        "routes left after a stop: {}",
        routes(&topo, node)?
    );
    drop(backends);
    Ok(())
}
