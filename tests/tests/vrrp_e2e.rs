//! VRRP between lbd nodes, and with keepalived, in network namespaces: a client, two lbd nodes,
//! three backends. The VIP moves on node failure and on a clean stop (priority 0), preemption
//! follows the config, and a TCP stream through the VIP survives a failover because both nodes
//! build the same Maglev tables.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lb_testkit::{require_or_skip, tool_unavailable_reason, try_wait_until};
use lbd_tests::{
    Capture,
    Family::V4,
    Host, Topology, bin_path,
    failover::{
        Keepalived, MASTER_WAIT, connections_recover, exactly_one_holds_vip, fail_node, holds_vip,
        stream_across, tshark_decodes_vrrp3,
    },
    lbd::{self, LbdNode, Mode, Services},
    netns_tests_enabled, test_tag,
};

fn config(topo: &Topology, node: Host, priority: u8, preempt: bool) -> String {
    let all: Vec<_> = topo.backends().into_iter().map(|b| topo.ip(b)).collect();
    let socket = LbdNode::socket_path(topo, node);
    let mut c = lbd::config_text(
        Mode::XdpGeneric,
        &socket,
        &Services {
            tcp: all.clone(),
            udp: all,
        },
    );
    c.push_str(&lbd::vrrp_section(priority, preempt));
    c
}

fn wait_state(node: &LbdNode, state: &str) -> Result<()> {
    node.wait_status(MASTER_WAIT, &format!("VRRP {state}"), |s| {
        s.vrrp.as_ref().is_some_and(|v| v.state == state)
    })
    .map(drop)
}

#[test]
fn node_failure_moves_the_vip_and_keeps_a_stream() -> Result<()> {
    if !netns_tests_enabled("node_failure_moves_the_vip_and_keeps_a_stream") {
        return Ok(());
    }
    let topo = Topology::builder(&test_tag("vrrp_fail"))
        .lbd_nodes(2)
        .backends(3)
        .build()?;
    let _backends = topo.start_backends(&bin_path("lbd-test-backend")?)?;
    let (n1, n2) = (Host::Lbd(1), Host::Lbd(2));
    let mut a = LbdNode::start(&topo, n1, &config(&topo, n1, 150, true))?;
    let b = LbdNode::start(&topo, n2, &config(&topo, n2, 100, true))?;
    wait_state(&a, "MASTER")?;
    wait_state(&b, "BACKUP")?;
    ensure!(
        exactly_one_holds_vip(&topo, &[n1, n2], V4)? == n1,
        "lbd1 should hold the VIP"
    );
    let st = b.status()?;
    let v = st.vrrp.context("vrrp status")?;
    ensure!(
        v.master.as_deref() == Some("198.18.0.2") && v.priority == 100,
        "backup's view: {v:?}"
    );
    connections_recover(&topo, topo.vip_http())?;

    // A long stream through the VIP (direct routing) across the failover: no reset, every byte.
    // The stream is under way through lbd1 (the client has received bytes) before lbd1 fails.
    let result = stream_across(&topo, topo.vip_http(), || {
        fail_node(&topo, n1, &mut a.process)?;
        wait_state(&b, "MASTER")?;
        ensure!(holds_vip(&topo, n2, V4)?, "lbd2 is master without the VIP");
        Ok(())
    })?;
    ensure!(
        result.received == 2_000_000,
        "stream cut at {} bytes",
        result.received
    );
    connections_recover(&topo, topo.vip_http())?;
    let v = b.status()?.vrrp.context("vrrp")?;
    ensure!(
        v.became_master == 1 && v.last_transition_unix.is_some(),
        "after failover: {v:?}"
    );
    Ok(())
}

#[test]
fn clean_stop_hands_over_and_preempt_follows_the_config() -> Result<()> {
    if !netns_tests_enabled("clean_stop_hands_over_and_preempt_follows_the_config") {
        return Ok(());
    }
    let topo = Topology::builder(&test_tag("vrrp_stop"))
        .lbd_nodes(2)
        .backends(3)
        .build()?;
    let _backends = topo.start_backends(&bin_path("lbd-test-backend")?)?;
    let (n1, n2) = (Host::Lbd(1), Host::Lbd(2));
    let a = LbdNode::start(&topo, n1, &config(&topo, n1, 150, false))?;
    let b = LbdNode::start(&topo, n2, &config(&topo, n2, 100, false))?;
    wait_state(&a, "MASTER")?;
    wait_state(&b, "BACKUP")?;

    // A clean stop sends a priority-0 advert; the backup takes over and gets the VIP.
    let capture = Capture::open(topo.client(), "eth0")?;
    a.stop()?;
    wait_state(&b, "MASTER")?;
    let frames = capture.recv_frames(Duration::from_millis(500), 2000)?;
    let resign = frames.iter().any(|f| {
        let d = &f.data;
        d.len() >= 14 + 20 + 8
            && d[12..14] == [0x08, 0x00]
            && d[14 + 9] == 112
            && d[26..30] == [198, 18, 0, 2]
            && d[34] == 0x31
            && d[36] == 0
    });
    ensure!(
        resign,
        "no priority-0 VRRPv3 advert from lbd1 among {} frames",
        frames.len()
    );
    ensure!(
        exactly_one_holds_vip(&topo, &[n1, n2], V4)? == n2,
        "lbd2 should hold the VIP"
    );
    connections_recover(&topo, topo.vip_http())?;

    // The old master comes back with preempt off: it stays backup.
    let a = LbdNode::start(&topo, n1, &config(&topo, n1, 150, false))?;
    wait_state(&a, "BACKUP")?;
    // It hears lbd2 for 15 adverts (counted, not timed) and never becomes master.
    try_wait_until(
        "15 adverts of lbd2 accepted by lbd1",
        MASTER_WAIT,
        || -> Result<bool> { Ok(a.status()?.vrrp.context("vrrp")?.adverts_accepted >= 15) },
    )?;
    let v = a.status()?.vrrp.context("vrrp")?;
    ensure!(
        v.state == "BACKUP" && v.became_master == 0,
        "lbd1 preempted with preempt off: {v:?}"
    );
    ensure!(
        exactly_one_holds_vip(&topo, &[n1, n2], V4)? == n2,
        "VIP moved with preempt off"
    );
    a.stop()?;

    // With preempt on it takes the VIP back.
    let a = LbdNode::start(&topo, n1, &config(&topo, n1, 150, true))?;
    wait_state(&a, "MASTER")?;
    wait_state(&b, "BACKUP")?;
    ensure!(
        exactly_one_holds_vip(&topo, &[n1, n2], V4)? == n1,
        "lbd1 should hold the VIP after preempting"
    );
    connections_recover(&topo, topo.vip_http())?;
    Ok(())
}

#[test]
fn interoperates_with_keepalived_both_ways() -> Result<()> {
    let test = "interoperates_with_keepalived_both_ways";
    if !netns_tests_enabled(test)
        || !require_or_skip(test, tool_unavailable_reason("keepalived", "--version"))
    {
        return Ok(());
    }
    // keepalived master, lbd backup: lbd takes over when keepalived's node fails.
    let topo = Topology::builder(&test_tag("vrrp_ka1"))
        .lbd_nodes(2)
        .backends(3)
        .build()?;
    let _backends = topo.start_backends(&bin_path("lbd-test-backend")?)?;
    let (n1, n2) = (Host::Lbd(1), Host::Lbd(2));
    let mut ka = Keepalived::start(&topo, n2, &lbd::keepalived_config(150, true))?;
    let ours = LbdNode::start(&topo, n1, &config(&topo, n1, 100, true))?;
    try_wait_until("keepalived holding the VIP", MASTER_WAIT, || {
        holds_vip(&topo, n2, V4)
    })?;
    wait_state(&ours, "BACKUP")?;
    ensure!(
        exactly_one_holds_vip(&topo, &[n1, n2], V4)? == n2,
        "keepalived should hold the VIP"
    );
    // A backup learns the master from its first accepted advert, which may come after it
    // entered BACKUP.
    let s = ours.wait_status(MASTER_WAIT, "keepalived seen as master", |s| {
        s.vrrp
            .as_ref()
            .is_some_and(|v| v.master.as_deref() == Some("198.18.0.3"))
    })?;
    let v = s.vrrp.context("vrrp")?;
    ensure!(
        v.adverts_accepted > 0 && v.adverts_dropped.is_empty(),
        "keepalived's adverts: {v:?}"
    );
    fail_node(&topo, n2, &mut ka.process)?;
    wait_state(&ours, "MASTER")?;
    ensure!(holds_vip(&topo, n1, V4)?, "lbd is master without the VIP");
    connections_recover(&topo, topo.vip_http())?;
    drop(ours);
    drop(ka);
    drop(topo);

    // lbd master, keepalived backup: keepalived takes over when lbd's node fails.
    let topo = Topology::builder(&test_tag("vrrp_ka2"))
        .lbd_nodes(2)
        .backends(3)
        .build()?;
    let _backends = topo.start_backends(&bin_path("lbd-test-backend")?)?;
    let capture_file = lbd_tests::TempPath::in_temp(&format!("lbdt-{}-vrrp.pcap", topo.tag()));
    let mut tcpdump = {
        let mut c = topo.client().command("tcpdump");
        c.args(["-i", "eth0", "-U", "-c", "20", "-w"])
            .arg(&*capture_file)
            .arg("ip proto 112 and src host 198.18.0.2");
        topo.client().spawn(c)?
    };
    let mut ours = LbdNode::start(&topo, n1, &config(&topo, n1, 150, true))?;
    wait_state(&ours, "MASTER")?;
    let _ka = Keepalived::start(&topo, n2, &lbd::keepalived_config(100, true))?;
    // keepalived hears us for a second (10 adverts) and stays backup. The wait is the point: it asserts
    // that something does not happen, and keepalived's side has no counter to wait on.
    std::thread::sleep(Duration::from_millis(1000));
    ensure!(
        exactly_one_holds_vip(&topo, &[n1, n2], V4)? == n1,
        "lbd should hold the VIP"
    );
    connections_recover(&topo, topo.vip_http())?;
    fail_node(&topo, n1, &mut ours.process)?;
    try_wait_until("keepalived taking the VIP", MASTER_WAIT, || {
        holds_vip(&topo, n2, V4)
    })?;
    ensure!(
        exactly_one_holds_vip(&topo, &[n2], V4)? == n2,
        "keepalived should hold the VIP"
    );

    // tshark, where installed, decodes our adverts as VRRPv3 with a good checksum.
    let _ = tcpdump.terminate(Duration::from_secs(3));
    tshark_decodes_vrrp3(
        "interoperates_with_keepalived_both_ways",
        &capture_file,
        &["Destination Address: 224.0.0.18", "Time to Live: 255"],
    )?;
    Ok(())
}

/// Tracked conditions lower the priority and move the VIP to the peer, and back when they
/// recover: a service with no backend in rotation (all drained), a tracked interface down.
#[test]
fn tracked_conditions_move_the_vip() -> Result<()> {
    if !netns_tests_enabled("tracked_conditions_move_the_vip") {
        return Ok(());
    }
    let topo = Topology::builder(&test_tag("vrrp_track"))
        .lbd_nodes(2)
        .backends(3)
        .build()?;
    let _backends = topo.start_backends(&bin_path("lbd-test-backend")?)?;
    let (n1, n2) = (Host::Lbd(1), Host::Lbd(2));
    // A link to track on lbd1: t0, whose carrier follows its peer t1.
    topo.ns(n1)
        .ip(&["link", "add", "t0", "type", "veth", "peer", "name", "t1"])?;
    topo.ns(n1).ip(&["link", "set", "t0", "up"])?;
    topo.ns(n1).ip(&["link", "set", "t1", "up"])?;
    let mut c1 = config(&topo, n1, 150, true);
    c1.push_str("track_no_backend = 60\ntrack_interfaces = { t0 = 60 }\n");
    let a = LbdNode::start(&topo, n1, &c1)?;
    let b = LbdNode::start(&topo, n2, &config(&topo, n2, 100, true))?;
    wait_state(&a, "MASTER")?;
    wait_state(&b, "BACKUP")?;

    let backends: Vec<String> = topo
        .backends()
        .into_iter()
        .map(|h| topo.ip(h).to_string())
        .collect();
    for ip in &backends {
        let (code, _, err) = a.lbctl(&["backend", "drain", "web", ip])?;
        ensure!(code == 0, "drain {ip}: {err}");
    }
    wait_state(&b, "MASTER")?;
    let v = a.status()?.vrrp.context("vrrp")?;
    ensure!(
        v.priority == 90 && v.failed_conditions == ["no_backend"],
        "lbd1 with no backend: {v:?}"
    );
    ensure!(
        exactly_one_holds_vip(&topo, &[n1, n2], V4)? == n2,
        "lbd2 should hold the VIP"
    );
    for ip in &backends {
        a.lbctl(&["backend", "maintenance", "web", ip, "off"])?;
    }
    wait_state(&a, "MASTER")?;
    // Both sides settled before the next condition: lbd2 still reporting MASTER from the round
    // before would otherwise pass the wait below at once.
    wait_state(&b, "BACKUP")?;

    topo.ns(n1).ip(&["link", "set", "t1", "down"])?;
    wait_state(&b, "MASTER")?;
    let v = a.status()?.vrrp.context("vrrp")?;
    ensure!(
        v.priority == 90 && v.failed_conditions == ["interface:t0"],
        "lbd1 with t0 down: {v:?}"
    );
    topo.ns(n1).ip(&["link", "set", "t1", "up"])?;
    wait_state(&a, "MASTER")?;
    wait_state(&b, "BACKUP")?;
    ensure!(
        exactly_one_holds_vip(&topo, &[n1, n2], V4)? == n1,
        "lbd1 should hold the VIP again"
    );
    Ok(())
}
