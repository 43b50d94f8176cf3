//! IPv6 end to end through each data path, in network namespaces: the client, one lbd node
//! and three backends on a bridge, dual-stack (2001:db8::/64 beside 198.18.0.0/24). The node
//! serves one config with IPv4 and IPv6 services at once; the same scenario runs with native
//! XDP, generic XDP and the userspace proxy.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use anyhow::{Context, Result, ensure};
use lbd_tests::{
    Capture, Host, Topology, client,
    lbd::{LbdNode, Mode, SingleNode},
};

const CONNECTIONS: usize = 300;

fn name_of(topo: &Topology, backend: &str) -> Host {
    topo.backends()
        .into_iter()
        .find(|b| b.role() == backend)
        .unwrap_or_else(|| panic!("unknown backend {backend}"))
}

/// A dual-stack config: `web` on the IPv4 VIP, `web6` and `dns6` on the IPv6 VIP, each over
/// the three backends' addresses of its family (`web6` over `tcp6`).
fn config(topo: &Topology, mode: Mode, tcp6: &[Host]) -> String {
    let socket = LbdNode::socket_path(topo, Host::Lbd(1));
    let list = |hosts: &[Host], v6: bool| {
        hosts
            .iter()
            .map(|h| {
                if v6 {
                    format!("{{ addr = \"{}\" }}", topo.ip6(*h))
                } else {
                    format!("{{ addr = \"{}\" }}", topo.ip(*h))
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let all = topo.backends();
    format!(
        "[daemon]\ninterface = \"eth0\"\ndatapath = \"{}\"\ncontrol_socket = \"{}\"\nstate_dir = \"{}\"\n\n\
         [[service]]\nname = \"web\"\nvip = \"{}\"\nbackends = [{}]\n\n\
         [[service]]\nname = \"web6\"\nvip = \"{}\"\nbackends = [{}]\n\n\
         [[service]]\nname = \"dns6\"\nvip = \"{}\"\nproto = \"udp\"\nbackends = [{}]\n",
        mode.datapath(),
        socket.display(),
        socket
            .parent()
            .unwrap_or(std::path::Path::new("/tmp"))
            .display(),
        topo.vip_http(),
        list(&all, false),
        topo.vip6_http(),
        list(tcp6, true),
        topo.vip6_udp(),
        list(&all, true),
    )
}

/// `n` new TCP connections from the client to `vip`; the backend that answered each.
fn connections(topo: &Topology, vip: SocketAddr, n: usize) -> Result<HashMap<String, usize>> {
    topo.client().enter(move || client::answered_by(vip, n))?
}

fn scenario(mode: Mode, name: &str) -> Result<()> {
    let SingleNode {
        topo,
        backends: _backends,
        peer: _peer,
    } = SingleNode::build(name, mode)?;
    let node = Host::Lbd(1);
    // The node answers neighbour solicitations for the IPv6 VIP, as it answers ARP for the
    // IPv4 one.
    topo.add_vip6(node)?;
    let lbd = LbdNode::start(&topo, node, &config(&topo, mode, &topo.backends()))?;
    let st = lbd.status()?;
    ensure!(
        st.datapath == mode.status_name(),
        "data path {} ({}), want {}",
        st.datapath,
        st.datapath_reason,
        mode.status_name()
    );
    let web6 = st
        .services
        .iter()
        .find(|s| s.name == "web6")
        .context("web6 in the status")?;
    ensure!(
        web6.vip == "[2001:db8::100]:80",
        "web6 VIP shown as {}",
        web6.vip
    );
    let mut addrs: Vec<&str> = web6.backends.iter().map(|b| b.addr.as_str()).collect();
    addrs.sort_unstable();
    ensure!(
        addrs == ["2001:db8::21", "2001:db8::22", "2001:db8::23"],
        "web6 backends shown as {addrs:?}"
    );

    // 1. Distribution: every backend answers, each with 20-47% of the connections.
    let vip6 = topo.vip6_http();
    let by = connections(&topo, vip6, CONNECTIONS)?;
    for b in topo.backends() {
        let n = by.get(&b.role()).copied().unwrap_or(0);
        let share = n as f64 / CONNECTIONS as f64;
        ensure!(
            (0.20..=0.47).contains(&share),
            "{b} answered {n} of {CONNECTIONS} IPv6 connections ({:.0}%): {by:?}",
            share * 100.0
        );
    }
    let per_connection = if mode == Mode::Userspace { 1 } else { 3 };
    let st = lbd.status()?;
    let web6 = st
        .services
        .iter()
        .find(|s| s.name == "web6")
        .context("web6 in the status")?;
    ensure!(
        web6.packets >= CONNECTIONS as u64 * per_connection,
        "web6 counted {} packets for {CONNECTIONS} connections",
        web6.packets
    );

    // 2. XDP: the replies come straight from the backends (the SYN-ACK's source MAC is the
    //    answering backend's) and the backend saw the client's own address. The proxy answers
    //    itself, and the backend sees the node's address.
    let capture = Capture::open(topo.client(), "eth0")?;
    let reply = topo.client().enter(move || client::http_get(vip6))??;
    let mac = capture.wait_syn_ack_from(vip6, Duration::from_secs(3))?;
    let answered = name_of(&topo, &reply.backend);
    if mode == Mode::Userspace {
        ensure!(
            mac == topo.mac(node),
            "proxied SYN-ACK from {mac}, want the node's"
        );
        ensure!(
            reply.client_addr.ip() == std::net::IpAddr::V6(topo.ip6(node)),
            "backend saw {} as the client, want the node",
            reply.client_addr
        );
    } else {
        ensure!(
            mac == topo.mac(answered),
            "SYN-ACK from {mac}, want {answered}'s MAC {}",
            topo.mac(answered)
        );
        ensure!(
            reply.client_addr == reply.local_addr && reply.client_addr.is_ipv6(),
            "backend saw {} but the client is {}",
            reply.client_addr,
            reply.local_addr
        );
    }

    // 3. UDP over IPv6: all three backends, replies from the VIP.
    let udp6 = topo.vip6_udp();
    let udp_by = topo
        .client()
        .enter(move || -> Result<HashMap<String, usize>> {
            let mut by = HashMap::new();
            for i in 0..60 {
                let r =
                    client::udp_query(udp6, format!("q{i}").as_bytes(), Duration::from_secs(2))?;
                ensure!(r.from == udp6, "UDP reply from {}, want {udp6}", r.from);
                let name = r.text.split_whitespace().next().unwrap_or_default();
                *by.entry(name.to_string()).or_insert(0) += 1;
            }
            Ok(by)
        })??;
    ensure!(
        udp_by.len() == 3,
        "60 IPv6 UDP flows reached {} backends: {udp_by:?}",
        udp_by.len()
    );

    // 4. Both families at once, interleaved.
    let vip4 = topo.vip_http();
    topo.client().enter(move || -> Result<()> {
        for i in 0..40 {
            let vip = if i % 2 == 0 { vip4 } else { vip6 };
            let r = client::http_get(vip).with_context(|| format!("dual-stack {i} to {vip}"))?;
            ensure!(r.status == 200, "dual-stack {i} to {vip}: {}", r.status);
            ensure!(
                r.client_addr.is_ipv6() == vip.is_ipv6() || mode == Mode::Userspace,
                "{vip}: the backend saw {}",
                r.client_addr
            );
        }
        Ok(())
    })??;
    let st = lbd.status()?;
    for name in ["web", "web6", "dns6"] {
        let s = st
            .services
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("{name} in the status"))?;
        ensure!(s.packets > 0, "{name} counted nothing");
    }

    // 5. Drain with an open flow: the drained backend takes no new IPv6 connection, the open
    //    one goes on with it.
    let mut conn = topo
        .client()
        .enter(move || client::KeepAlive::connect(vip6, Duration::from_secs(5)))??;
    let pinned = topo.client().enter(|| conn.get("/"))??.backend;
    let pinned_ip = topo.ip6(name_of(&topo, &pinned)).to_string();
    let (code, out, err) = lbd.lbctl(&["backend", "drain", "web6", &pinned_ip])?;
    ensure!(
        code == 0,
        "lbctl backend drain web6 {pinned_ip}: {out}{err}"
    );
    lbd.wait_backend_state("web6", &pinned_ip, "draining")?;
    let after = connections(&topo, vip6, 60)?;
    ensure!(
        !after.contains_key(&pinned),
        "drained {pinned} got new IPv6 connections: {after:?}"
    );
    for i in 0..5 {
        let r = topo.client().enter(|| conn.get("/"))??;
        ensure!(
            r.backend == pinned,
            "request {i} on the open IPv6 connection answered by {}, want {pinned}",
            r.backend
        );
    }
    topo.client().enter(move || conn.close())??;
    // The open flow shows under the client's IPv6 address (XDP: the connection table; the
    // proxy lists only what is still open, so it is checked before the close there).
    if mode != Mode::Userspace {
        let (code, out, err) =
            lbd.lbctl(&["flows", "--client", "2001:db8::10", "--service", "web6"])?;
        ensure!(code == 0, "lbctl flows: {out}{err}");
        ensure!(
            out.contains("[2001:db8::100]:80") && out.contains("[2001:db8::10]:"),
            "lbctl flows shows no IPv6 flow: {out}"
        );
    }

    lbd.stop()?;
    Ok(())
}

lbd_tests::test_each_mode!(scenario:
    ipv6_xdp_native_end_to_end => Mode::XdpNative,
    ipv6_xdp_generic_end_to_end => Mode::XdpGeneric,
    ipv6_userspace_end_to_end => Mode::Userspace,
);
