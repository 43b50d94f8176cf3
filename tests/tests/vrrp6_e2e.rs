//! VRRPv3 over IPv6 (RFC 5798 §5.1.2) between lbd nodes and with keepalived, in network
//! namespaces: a client, two nodes, three backends, dual-stack. The IPv6 VIP moves on node
//! failure (the new master's unsolicited neighbour advertisements turn the client's neighbour
//! entry to it) and a TCP stream through it survives; keepalived is master with lbd as backup
//! and the reverse, over IPv6.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lb_testkit::{require_or_skip, tool_unavailable_reason, try_wait_until};
use lbd_tests::{
    Family::V6,
    Host, Topology, bin_path,
    failover::{
        Keepalived, MASTER_WAIT, connections_recover, exactly_one_holds_vip, fail_node, holds_vip,
        stream_across, tshark_decodes_vrrp3,
    },
    lbd::{LbdNode, Mode},
    netns_tests_enabled, test_tag,
};

/// The master's IPv6 VIP as the kernel holds it: `nodad` (usable at once, not tentative) and
/// deprecated (preferred lifetime 0), so that the node's own connections, health checks and
/// proxied ones, never take it as their source over the node's /64 (RFC 6724 rule 3).
fn vip6_is_nodad_and_deprecated(topo: &Topology, node: Host) -> Result<()> {
    let out = topo
        .try_ns(node)?
        .run("ip", &["-6", "-o", "addr", "show", "dev", "eth0"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let cidr = V6.vip_cidr();
    let line = text
        .lines()
        .find(|l| l.contains(&format!(" {cidr} ")))
        .with_context(|| format!("{node}: no {cidr} in: {text}"))?;
    // e.g. "inet6 2001:db8::100/128 scope global nodad deprecated \ valid_lft forever preferred_lft 0sec"
    let words = format!(
        " {} ",
        line.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    ensure!(
        [" nodad ", " deprecated ", " preferred_lft 0sec "]
            .iter()
            .all(|w| words.contains(w))
            && !words.contains(" tentative "),
        "{node}: the IPv6 VIP should be nodad and deprecated: {line}"
    );
    Ok(())
}

/// A node's config: `web` on the IPv4 VIP and `web6` on the IPv6 one over the three backends,
/// generic XDP, and `[vrrp]` for `vips` (both families: two virtual routers).
fn config(topo: &Topology, node: Host, priority: u8, vips: &[&str]) -> String {
    let socket = LbdNode::socket_path(topo, node);
    let list = |v6: bool| {
        topo.backends()
            .into_iter()
            .map(|b| {
                if v6 {
                    format!("{{ addr = \"{}\" }}", topo.ip6(b))
                } else {
                    format!("{{ addr = \"{}\" }}", topo.ip(b))
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let vips: Vec<String> = vips.iter().map(|v| format!("\"{v}\"")).collect();
    format!(
        "[daemon]\ninterface = \"eth0\"\ndatapath = \"{}\"\ncontrol_socket = \"{}\"\nstate_dir = \"{}\"\n\n\
         [[service]]\nname = \"web\"\nvip = \"{}\"\nbackends = [{}]\n\n\
         [[service]]\nname = \"web6\"\nvip = \"{}\"\nbackends = [{}]\n\n\
         [vrrp]\nvrid = 51\npriority = {priority}\nadvert_interval_ms = 100\npreempt = true\n\
         interface = \"eth0\"\nvips = [{}]\n",
        Mode::XdpGeneric.datapath(),
        socket.display(),
        socket
            .parent()
            .unwrap_or(std::path::Path::new("/tmp"))
            .display(),
        topo.vip_http(),
        list(false),
        topo.vip6_http(),
        list(true),
        vips.join(", "),
    )
}

/// keepalived's IPv6 `vrrp_instance` beside lbd's IPv6 router: VRRPv3 (keepalived 2.2 defaults
/// to 2, which has no IPv6), the same VRID, interval and VIP.
fn keepalived_v6(priority: u8) -> String {
    format!(
        "global_defs {{\n  vrrp_version 3\n  script_user root\n  enable_script_security\n}}\n\
         vrrp_instance VI_6 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  \
         priority {priority}\n  advert_int 0.1\n  virtual_ipaddress {{\n    {}/128 dev eth0\n  }}\n}}\n",
        lbd_tests::VIP6
    )
}

/// Waits until the node's IPv6 virtual router is in `state`.
fn wait_state6(node: &LbdNode, state: &str) -> Result<lb_daemon::status::VrrpStatus> {
    let s = node.wait_status(MASTER_WAIT, &format!("VRRP (IPv6) {state}"), |s| {
        s.vrrp6.as_ref().is_some_and(|v| v.state == state)
    })?;
    s.vrrp6.context("vrrp6 status")
}

#[test]
fn ipv6_node_failure_moves_the_vip_and_keeps_a_stream() -> Result<()> {
    if !netns_tests_enabled("ipv6_node_failure_moves_the_vip_and_keeps_a_stream") {
        return Ok(());
    }
    let topo = Topology::builder(&test_tag("vrrp6_fail"))
        .lbd_nodes(2)
        .backends(3)
        .build()?;
    let _backends = topo.start_backends(&bin_path("lbd-test-backend")?)?;
    let (n1, n2) = (Host::Lbd(1), Host::Lbd(2));
    let vips = [lbd_tests::VIP.to_string(), lbd_tests::VIP6.to_string()];
    let vips: Vec<&str> = vips.iter().map(String::as_str).collect();
    let mut a = LbdNode::start(&topo, n1, &config(&topo, n1, 150, &vips))?;
    let b = LbdNode::start(&topo, n2, &config(&topo, n2, 100, &vips))?;
    wait_state6(&a, "MASTER")?;
    let v = wait_state6(&b, "BACKUP")?;
    // Both families' routers run; the IPv4 one elects the same way.
    let st = b.status()?;
    ensure!(
        st.vrrp.as_ref().is_some_and(|v| v.state == "BACKUP"),
        "lbd2's IPv4 router: {:?}",
        st.vrrp
    );
    ensure!(
        exactly_one_holds_vip(&topo, &[n1, n2], V6)? == n1,
        "lbd1 should hold the IPv6 VIP"
    );
    vip6_is_nodad_and_deprecated(&topo, n1)?;
    // The backup knows the master by its link-local address (the source of IPv6 adverts).
    let seen = b.wait_status(MASTER_WAIT, "lbd1 seen as the IPv6 master", |s| {
        s.vrrp6
            .as_ref()
            .is_some_and(|v| v.master.as_deref().is_some_and(|m| m.starts_with("fe80::")))
    })?;
    ensure!(
        v.priority == 100 && seen.vrrp6.is_some_and(|v| v.adverts_dropped.is_empty()),
        "lbd2's IPv6 router"
    );
    connections_recover(&topo, topo.vip6_http())?;

    // A long stream through the IPv6 VIP across the failover: no reset, every byte.
    let result = stream_across(&topo, topo.vip6_http(), || {
        fail_node(&topo, n1, &mut a.process)?;
        wait_state6(&b, "MASTER")?;
        ensure!(
            holds_vip(&topo, n2, V6)?,
            "lbd2 is master without the IPv6 VIP"
        );
        vip6_is_nodad_and_deprecated(&topo, n2)
    })?;
    ensure!(
        result.received == 2_000_000,
        "IPv6 stream cut at {} bytes",
        result.received
    );
    connections_recover(&topo, topo.vip6_http())?;
    let v = b.status()?.vrrp6.context("vrrp6")?;
    ensure!(v.became_master == 1, "after failover: {v:?}");
    Ok(())
}

#[test]
fn ipv6_interoperates_with_keepalived_both_ways() -> Result<()> {
    let test = "ipv6_interoperates_with_keepalived_both_ways";
    if !netns_tests_enabled(test)
        || !require_or_skip(test, tool_unavailable_reason("keepalived", "--version"))
    {
        return Ok(());
    }
    let vip6 = lbd_tests::VIP6.to_string();
    // keepalived master, lbd backup: lbd takes over when keepalived's node fails.
    let topo = Topology::builder(&test_tag("vrrp6_ka1"))
        .lbd_nodes(2)
        .backends(3)
        .build()?;
    let _backends = topo.start_backends(&bin_path("lbd-test-backend")?)?;
    let (n1, n2) = (Host::Lbd(1), Host::Lbd(2));
    let mut ka = Keepalived::start(&topo, n2, &keepalived_v6(150))?;
    let ours = LbdNode::start(&topo, n1, &config(&topo, n1, 100, &[&vip6]))?;
    try_wait_until("keepalived holding the IPv6 VIP", MASTER_WAIT, || {
        holds_vip(&topo, n2, V6)
    })?;
    wait_state6(&ours, "BACKUP")?;
    ensure!(
        ours.status()?.vrrp.is_none(),
        "IPv6 VIPs only: no IPv4 router"
    );
    ensure!(
        exactly_one_holds_vip(&topo, &[n1, n2], V6)? == n2,
        "keepalived should hold the IPv6 VIP"
    );
    let s = ours.wait_status(MASTER_WAIT, "keepalived seen as the IPv6 master", |s| {
        s.vrrp6
            .as_ref()
            .is_some_and(|v| v.master.as_deref().is_some_and(|m| m.starts_with("fe80::")))
    })?;
    let v = s.vrrp6.context("vrrp6")?;
    ensure!(
        v.adverts_accepted > 0 && v.adverts_dropped.is_empty(),
        "keepalived's IPv6 adverts: {v:?}"
    );
    fail_node(&topo, n2, &mut ka.process)?;
    wait_state6(&ours, "MASTER")?;
    ensure!(
        holds_vip(&topo, n1, V6)?,
        "lbd is master without the IPv6 VIP"
    );
    connections_recover(&topo, topo.vip6_http())?;
    drop(ours);
    drop(ka);
    drop(topo);

    // lbd master, keepalived backup: keepalived stays backup, then takes over when lbd's node
    // fails. lbd's adverts are captured for tshark.
    let topo = Topology::builder(&test_tag("vrrp6_ka2"))
        .lbd_nodes(2)
        .backends(3)
        .build()?;
    let _backends = topo.start_backends(&bin_path("lbd-test-backend")?)?;
    let capture_file = lbd_tests::TempPath::in_temp(&format!("lbdt-{}-vrrp6.pcap", topo.tag()));
    let mut tcpdump = {
        let mut c = topo.client().command("tcpdump");
        c.args(["-i", "eth0", "-U", "-c", "20", "-w"])
            .arg(&*capture_file)
            .arg("ip6 proto 112 and ether src ")
            .arg(topo.mac(n1).to_string());
        topo.client().spawn(c)?
    };
    let mut ours = LbdNode::start(&topo, n1, &config(&topo, n1, 150, &[&vip6]))?;
    wait_state6(&ours, "MASTER")?;
    let _ka = Keepalived::start(&topo, n2, &keepalived_v6(100))?;
    // keepalived hears us for a second (10 adverts) and stays backup: the wait asserts that
    // something does not happen, and keepalived has no counter to wait on.
    std::thread::sleep(Duration::from_millis(1000));
    ensure!(
        exactly_one_holds_vip(&topo, &[n1, n2], V6)? == n1,
        "lbd should hold the IPv6 VIP"
    );
    connections_recover(&topo, topo.vip6_http())?;
    fail_node(&topo, n1, &mut ours.process)?;
    try_wait_until("keepalived taking the IPv6 VIP", MASTER_WAIT, || {
        holds_vip(&topo, n2, V6)
    })?;
    ensure!(
        exactly_one_holds_vip(&topo, &[n2], V6)? == n2,
        "keepalived should hold the IPv6 VIP"
    );

    // tshark decodes lbd's IPv6 adverts as VRRPv3 with a good checksum, hop limit 255, to
    // ff02::12.
    let _ = tcpdump.terminate(Duration::from_secs(3));
    tshark_decodes_vrrp3(
        "ipv6_interoperates_with_keepalived_both_ways",
        &capture_file,
        &["Destination Address: ff02::12", "Hop Limit: 255"],
    )?;
    Ok(())
}
