//! End to end through each data path, in network namespaces: a client, one lbd node, three
//! backends on a bridge. The same scenario runs with native XDP, generic XDP and the userspace
//! proxy; only what differs by design differs (direct routing vs proxying).

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use lbd_tests::{
    Capture, Host, Topology, bin_path, client,
    lbd::{self, LbdNode, Mode, Services, SingleNode},
    netns_tests_enabled, test_tag,
};

const CONNECTIONS: usize = 300;

fn backend_ips(topo: &Topology) -> Vec<Ipv4Addr> {
    topo.backends().into_iter().map(|b| topo.ip(b)).collect()
}

fn name_of(topo: &Topology, backend: &str) -> Host {
    topo.backends()
        .into_iter()
        .find(|b| b.role() == backend)
        .unwrap_or_else(|| panic!("unknown backend {backend}"))
}

/// `n` new TCP connections from the client to VIP:80; the backend that answered each.
fn connections(topo: &Topology, n: usize) -> Result<HashMap<String, usize>> {
    let vip = topo.vip_http();
    topo.client().enter(move || client::answered_by(vip, n))?
}

fn scenario(mode: Mode, name: &str) -> Result<()> {
    let SingleNode {
        topo,
        backends: _backends,
        peer: _peer,
    } = SingleNode::build(name, mode)?;
    let node = Host::Lbd(1);
    let all = backend_ips(&topo);
    let socket = LbdNode::socket_path(&topo, node);
    let services = Services {
        tcp: all.clone(),
        udp: all.clone(),
    };
    let mut lbd = LbdNode::start(&topo, node, &lbd::config_text(mode, &socket, &services))?;
    let status = lbd.status()?;
    ensure!(
        status.datapath == mode.status_name(),
        "data path {} ({}), want {}",
        status.datapath,
        status.datapath_reason,
        mode.status_name()
    );

    // 1. Distribution: every backend answers, each with 20-47% of the connections.
    let by = connections(&topo, CONNECTIONS)?;
    for b in topo.backends() {
        let n = by.get(&b.role()).copied().unwrap_or(0);
        let share = n as f64 / CONNECTIONS as f64;
        ensure!(
            (0.20..=0.47).contains(&share),
            "{b} answered {n} of {CONNECTIONS} ({:.0}%): {by:?}",
            share * 100.0
        );
    }
    // XDP counts wire packets (at least 3 per connection from the client); the proxy counts
    // its reads and writes (at least one per connection).
    let per_connection = if mode == Mode::Userspace { 1 } else { 3 };
    let st = lbd.status()?;
    let web = st
        .services
        .iter()
        .find(|s| s.name == "web")
        .context("web service in status")?;
    ensure!(
        web.packets >= CONNECTIONS as u64 * per_connection,
        "web service counted {} packets for {CONNECTIONS} connections",
        web.packets
    );
    for b in &web.backends {
        ensure!(b.packets > 0, "backend {} counted no packets", b.addr);
    }

    // 2. XDP: replies come straight from the backends: the SYN-ACK's source MAC is a backend's,
    //    never the lbd node's, and the backend saw the client's own address (no proxy between).
    //    Userspace: the proxy answers, and the backend sees the lbd node as its client.
    let capture = Capture::open(topo.client(), "eth0")?;
    let vip = topo.vip_http();
    let reply = topo.client().enter(move || client::http_get(vip))??;
    let vip_v4 = SocketAddrV4::new(lbd_tests::VIP, lbd_tests::HTTP_PORT);
    let mac = capture.wait_syn_ack(vip_v4, Duration::from_secs(3))?;
    let answered = name_of(&topo, &reply.backend);
    if mode == Mode::Userspace {
        ensure!(
            mac == topo.mac(node),
            "proxied SYN-ACK from {mac}, want the lbd node's MAC"
        );
        ensure!(
            reply.client_addr.ip() == std::net::IpAddr::V4(topo.ip(node)),
            "backend saw {} as the client, want the lbd node",
            reply.client_addr
        );
    } else {
        ensure!(
            mac == topo.mac(answered),
            "SYN-ACK from {mac}, want {answered}'s MAC {}",
            topo.mac(answered)
        );
        ensure!(mac != topo.mac(node), "the reply went through the lbd node");
        ensure!(
            reply.client_addr == reply.local_addr,
            "backend saw {} but the client is {}",
            reply.client_addr,
            reply.local_addr
        );
    }

    // 3. UDP works the same way, and the replies come from the VIP.
    let udp = topo.vip_udp();
    let udp_by = topo
        .client()
        .enter(move || -> Result<HashMap<String, usize>> {
            let mut by = HashMap::new();
            for i in 0..60 {
                let r = client::udp_query(udp, format!("q{i}").as_bytes(), Duration::from_secs(2))?;
                ensure!(
                    r.from == udp,
                    "UDP reply from {}, want the VIP {udp}",
                    r.from
                );
                let name = r
                    .text
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                *by.entry(name).or_insert(0) += 1;
            }
            Ok(by)
        })??;
    ensure!(
        udp_by.len() == 3,
        "60 UDP flows reached {} backends: {udp_by:?}",
        udp_by.len()
    );

    // 4. A backend removed by SIGHUP takes no new connections; a connection open to it goes on.
    let mut conn = topo
        .client()
        .enter(move || client::KeepAlive::connect(vip, Duration::from_secs(5)))??;
    let pinned = topo.client().enter(|| conn.get("/"))??.backend;
    let pinned_ip = topo.ip(name_of(&topo, &pinned));
    let rest: Vec<Ipv4Addr> = all.iter().copied().filter(|ip| *ip != pinned_ip).collect();
    lbd.reload(&lbd::config_text(
        mode,
        &socket,
        &Services {
            tcp: rest,
            udp: all.clone(),
        },
    ))?;
    lbd.wait_backend_state("web", &pinned_ip.to_string(), "removed")?;
    let after = connections(&topo, 60)?;
    ensure!(
        !after.contains_key(&pinned),
        "removed backend {pinned} got new connections: {after:?}"
    );
    for i in 0..5 {
        let r = topo.client().enter(|| conn.get("/"))??;
        ensure!(
            r.backend == pinned,
            "request {i} on the open connection answered by {}, want {pinned}",
            r.backend
        );
    }
    topo.client().enter(move || conn.close())??;

    // 5. A bad config on SIGHUP is rejected; the running config stays.
    lbd.reload("[daemon]\ninterface = \"eth0\"\ndatapath = \"warp\"\n")?;
    lb_testkit::try_wait_until(
        "the bad config rejected (lbd_config_reload_failures_total 1)",
        Duration::from_secs(10),
        // A dead lbd fails the scrape at once.
        || -> Result<bool> {
            Ok(lbd::sample(
                &lbd::scrape(&topo, node)?,
                "lbd_config_reload_failures_total",
                &[],
            )? >= 1.0)
        },
    )?;
    ensure!(
        lbd.process.is_running(),
        "lbd died on a bad config: {}",
        lbd.process.stderr_tail()
    );
    let st = lbd.status()?;
    ensure!(
        st.services.len() == 2,
        "services after a rejected reload: {:?}",
        st.services
    );
    let after_bad = connections(&topo, 10)?;
    ensure!(
        after_bad.values().sum::<usize>() == 10,
        "balancing after a rejected reload: {after_bad:?}"
    );

    // 6. A clean stop detaches the program.
    lbd.stop()?;
    let link = topo.ns(node).run("ip", &["link", "show", "dev", "eth0"])?;
    let text = String::from_utf8_lossy(&link.stdout);
    ensure!(
        !text.contains("xdp"),
        "XDP still attached after SIGTERM: {text}"
    );
    let _: SocketAddr = vip;
    Ok(())
}

lbd_tests::test_each_mode!(scenario:
    xdp_native_end_to_end => Mode::XdpNative,
    xdp_generic_end_to_end => Mode::XdpGeneric,
    userspace_end_to_end => Mode::Userspace,
);

/// On an interface without native XDP (a bridge device), `datapath = "xdp"` is an error that says
/// so, and `datapath = "auto"` falls back to generic XDP with the reason in the status.
#[test]
fn datapath_policy_without_native_xdp() -> Result<()> {
    if !netns_tests_enabled("datapath_policy_without_native_xdp") {
        return Ok(());
    }
    let tag = test_tag("dp_policy");
    let ns = lbd_tests::Netns::new(&tag, "node")?;
    ns.ip(&["link", "add", "nonative0", "type", "bridge"])?;
    ns.ip(&["link", "set", "nonative0", "up"])?;
    let dir = std::env::temp_dir().join(format!("lbdt-{tag}"));
    std::fs::create_dir_all(&dir)?;
    let cfg = |datapath: &str| -> Result<std::path::PathBuf> {
        let p = dir.join(format!("{datapath}.toml"));
        std::fs::write(
            &p,
            format!(
                "[daemon]\ninterface = \"nonative0\"\ndatapath = \"{datapath}\"\ncontrol_socket = \"{}\"\n",
                dir.join(format!("{datapath}.sock")).display()
            ),
        )?;
        Ok(p)
    };
    let lbd_bin = bin_path("lbd")?;
    let out = ns.output(
        &lbd_bin.display().to_string(),
        &["--config", &cfg("xdp")?.display().to_string()],
        Duration::from_secs(20),
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1),
        "datapath = xdp on nonative0: exit {:?}: {err}",
        out.status.code()
    );
    ensure!(
        err.contains("datapath = \"xdp\" requires native XDP")
            && err.contains("native mode to nonative0 failed"),
        "stderr: {err}"
    );

    let mut cmd = ns.command(&lbd_bin.display().to_string());
    cmd.arg("--config").arg(cfg("auto")?);
    let proc = ns.spawn(cmd)?;
    let node = LbdNode {
        process: proc,
        config_path: cfg("auto")?,
        socket: dir.join("auto.sock"),
        dir: dir.clone(),
        fdstore: None,
    };
    let st = node.wait_status(Duration::from_secs(20), "attached", |_| true)?;
    ensure!(
        st.datapath == "xdp-generic",
        "auto on nonative0 gave {}",
        st.datapath
    );
    ensure!(
        st.datapath_reason.contains("native failed")
            && st.datapath_reason.contains("generic in use"),
        "reason: {}",
        st.datapath_reason
    );
    node.stop()
}

/// `datapath = "auto"` without the privileges XDP needs falls back to the userspace proxy, and
/// says why in the status.
#[test]
fn auto_without_privileges_falls_back_to_userspace() -> Result<()> {
    if !netns_tests_enabled("auto_without_privileges_falls_back_to_userspace") {
        return Ok(());
    }
    let tag = test_tag("dp_unpriv");
    let ns = lbd_tests::Netns::new(&tag, "node")?;
    ns.ip(&["link", "set", "lo", "up"])?;
    let dir = std::env::temp_dir().join(format!("lbdt-{tag}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    let cfg = dir.join("auto.toml");
    std::fs::write(
        &cfg,
        format!(
            "[daemon]\ninterface = \"lo\"\ndatapath = \"auto\"\ncontrol_socket = \"{}\"\nstate_dir = \"{}\"\n\
             [[service]]\nvip = \"127.0.0.1:18080\"\n",
            dir.join("auto.sock").display(),
            dir.display()
        ),
    )?;
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    // setpriv drops to nobody after `ip netns exec` has entered the namespace as root.
    let mut cmd = ns.command("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ])
    .arg(bin_path("lbd")?)
    .arg("--config")
    .arg(&cfg);
    let proc = ns.spawn(cmd)?;
    let node = LbdNode {
        process: proc,
        config_path: cfg,
        socket: dir.join("auto.sock"),
        dir: dir.clone(),
        fdstore: None,
    };
    let st = node.wait_status(Duration::from_secs(20), "serving", |_| true)?;
    ensure!(
        st.datapath == "userspace",
        "auto without privileges gave {}",
        st.datapath
    );
    ensure!(
        st.datapath_reason
            .contains("lbd lacks CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF")
            && st.datapath_reason.contains("userspace in use"),
        "reason: {}",
        st.datapath_reason
    );
    node.stop()
}
