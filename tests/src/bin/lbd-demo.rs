//! `cargo xtask demo`: lbd live, in network namespaces made for the demo and removed after it
//! (also on Ctrl-C or failure). A client, two lbd nodes sharing the VIP through VRRP, three
//! backends on a bridge: real HTTP requests with curl from the client to the VIP and which
//! backend answered each; lbd's counters; a drain under an open connection; then the master node
//! fails and a long transfer through the VIP carries on through the standby.
//!
//! `cargo xtask demo ecmp`: three lbd nodes active at once behind a router that spreads flows
//! over them by ECMP (BGP through BIRD): connections spread over nodes and backends, a node
//! drained and back with its flows kept, a node killed.

use std::{
    process::{Command, ExitCode},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use lbd_tests::{
    Host, Topology, bin_path, client,
    lbd::{self, LbdNode, Mode, Services},
    netns,
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted: cleaning up");
    }
    Ok(())
}

fn step(title: &str) {
    println!("\n=== {title}");
}

fn curl_requests(topo: &Topology, n: usize) -> Result<Vec<String>> {
    curl_requests_to(topo, &lbd_tests::VIP.to_string(), n)
}

/// `n` curls to `http://HOST/` (an IPv6 host in brackets).
fn curl_requests_to(topo: &Topology, host: &str, n: usize) -> Result<Vec<String>> {
    let mut answered = Vec::new();
    let url = format!("http://{host}/");
    for i in 1..=n {
        check_stop()?;
        // -g: the brackets of an IPv6 host are the address, not a glob.
        let out = topo.client().output(
            "curl",
            &["-sS", "-g", "-m", "3", "-D", "-", &url],
            Duration::from_secs(5),
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let header = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| "?".into())
        };
        let backend = header("X-Backend:");
        println!(
            "  curl #{i:<2} {url} -> answered by {backend:<3} (backend saw client {})",
            header("X-Client:")
        );
        answered.push(backend);
    }
    Ok(answered)
}

fn lbctl(node: &LbdNode, args: &[&str]) -> Result<String> {
    let out = Command::new(bin_path("lbctl")?)
        .arg("--socket")
        .arg(&node.socket)
        .args(args)
        .output()
        .context("running lbctl")?;
    if !out.status.success() {
        bail!(
            "lbctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn vrrp_line(name: &str, node: &LbdNode) -> Result<()> {
    let s = node.status()?;
    let v = s.vrrp.context("no VRRP status")?;
    let v6 = s.vrrp6.context("no IPv6 VRRP status")?;
    println!(
        "  {name}: VRRP {} (priority {}, master {}); IPv6 router {} (master {})",
        v.state,
        v.priority,
        v.master.as_deref().unwrap_or("-"),
        v6.state,
        v6.master.as_deref().unwrap_or("-")
    );
    Ok(())
}

fn config(topo: &Topology, node: Host, priority: u8) -> String {
    let all: Vec<_> = topo.backends().into_iter().map(|b| topo.ip(b)).collect();
    let socket = LbdNode::socket_path(topo, node);
    let mut c = lbd::config_text(
        Mode::XdpNative,
        &socket,
        &Services {
            tcp: all.clone(),
            udp: all,
        },
    );
    // Dual-stack: an IPv6 twin of the web service, and one VRRP router per family.
    let all6: Vec<String> = topo
        .backends()
        .into_iter()
        .map(|b| format!("{{ addr = \"{}\" }}", topo.ip6(b)))
        .collect();
    c.push_str(&format!(
        "\n[[service]]\nname = \"web6\"\nvip = \"{}\"\nbackends = [{}]\n",
        topo.vip6_http(),
        all6.join(", ")
    ));
    c.push_str(&lbd::vrrp_section(priority, true).replace(
        &format!("vips = [\"{}\"]", lbd_tests::VIP),
        &format!("vips = [\"{}\", \"{}\"]", lbd_tests::VIP, lbd_tests::VIP6),
    ));
    c
}

fn demo() -> Result<()> {
    let tag = format!("demo-{}", std::process::id());
    step(
        "building the network: a bridge, a client, two lbd nodes and three backends, each in its own namespace",
    );
    let topo = Topology::builder(&tag).lbd_nodes(2).backends(3).build()?;
    for h in topo.hosts() {
        println!(
            "  {:<8} {:<14} {:<14} {}",
            h.role(),
            topo.ip(h).to_string(),
            topo.ip6(h).to_string(),
            topo.mac(h)
        );
    }
    let _backends = topo.start_backends(&bin_path("lbd-test-backend")?)?;
    println!(
        "  backends serve HTTP on :80 and hold the VIPs {} and {} on lo (arp_ignore=1, arp_announce=2)",
        lbd_tests::VIP,
        lbd_tests::VIP6
    );
    let (n1, n2) = (Host::Lbd(1), Host::Lbd(2));
    let _peers = (
        lbd::attach_peer_pass(&topo, n1)?,
        lbd::attach_peer_pass(&topo, n2)?,
    );
    check_stop()?;

    step(
        "starting lbd on both nodes (native XDP, VRRP vrid 51: lbd1 priority 150, lbd2 priority 100)",
    );
    let c1 = config(&topo, n1, 150);
    for line in c1.lines() {
        println!("  | {line}");
    }
    let mut a = LbdNode::start(&topo, n1, &c1)?;
    let b = LbdNode::start(&topo, n2, &config(&topo, n2, 100))?;
    a.wait_status(Duration::from_secs(10), "master", |s| {
        s.vrrp.as_ref().is_some_and(|v| v.state == "MASTER")
            && s.vrrp6.as_ref().is_some_and(|v| v.state == "MASTER")
    })?;
    b.wait_status(Duration::from_secs(10), "backup", |s| {
        s.vrrp.as_ref().is_some_and(|v| v.state == "BACKUP")
            && s.vrrp6.as_ref().is_some_and(|v| v.state == "BACKUP")
    })?;
    vrrp_line("lbd1", &a)?;
    vrrp_line("lbd2", &b)?;

    step("12 HTTP requests from the client to the VIP, each a new TCP connection (curl)");
    let answered = curl_requests(&topo, 12)?;
    for bk in topo.backends() {
        println!(
            "  {}: {} of 12",
            bk.role(),
            answered.iter().filter(|x| **x == bk.role()).count()
        );
    }

    step("6 HTTP requests to the IPv6 VIP: the same XDP program, its IPv6 connection table");
    let host6 = format!("[{}]", lbd_tests::VIP6);
    curl_requests_to(&topo, &host6, 6)?;

    step("lbctl status on lbd1: packets per service and backend, as counted by the XDP program");
    std::thread::sleep(Duration::from_millis(1100)); // one refresh tick for the flow counts
    print!("{}", lbctl(&a, &["status"])?);

    step("draining a backend with lbctl while a keep-alive connection to it is open");
    let vip = topo.vip_http();
    let mut conn = topo
        .client()
        .enter(move || client::KeepAlive::connect(vip, Duration::from_secs(5)))??;
    let pinned = topo.client().enter(|| conn.get("/"))??.backend;
    let pinned_host = topo
        .backends()
        .into_iter()
        .find(|x| x.role() == pinned)
        .context("pinned backend")?;
    let pinned_ip = topo.ip(pinned_host).to_string();
    println!("  the open connection is served by {pinned}");
    print!(
        "  $ lbctl backend drain web {pinned_ip}\n  {}",
        lbctl(&a, &["backend", "drain", "web", &pinned_ip])?
    );
    let answered = curl_requests(&topo, 6)?;
    println!(
        "  new connections avoid {pinned}: {}",
        !answered.contains(&pinned)
    );
    let again = topo.client().enter(|| conn.get("/"))??.backend;
    println!("  the open connection still works, served by {again}; closing it");
    topo.client().enter(move || conn.close())??;
    print!(
        "  $ lbctl backend drain web {pinned_ip} --wait\n{}",
        lbctl(
            &a,
            &[
                "backend",
                "drain",
                "web",
                &pinned_ip,
                "--wait",
                "--timeout",
                "30s"
            ]
        )?
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect::<String>()
    );
    print!(
        "  $ lbctl backend maintenance web {pinned_ip} off\n  {}",
        lbctl(&a, &["backend", "maintenance", "web", &pinned_ip, "off"])?
    );
    // The standby learns the same change, as an operator (or config management) would do.
    lbctl(&b, &["backend", "drain", "web", &pinned_ip])?;
    lbctl(&b, &["backend", "maintenance", "web", &pinned_ip, "off"])?;

    step("the master node fails (lbd killed, link down) during a 3 MB transfer through the VIP");
    let result = std::thread::scope(|scope| -> Result<client::StreamResult> {
        let stream = scope.spawn(|| {
            topo.client().enter(move || {
                client::http_stream(vip, 3_000_000, 20_000, 20, Duration::from_secs(40))
            })
        });
        std::thread::sleep(Duration::from_millis(800));
        check_stop()?;
        let failed_at = Instant::now();
        a.process.signal(libc::SIGKILL)?;
        topo.ns(n1).ip(&["link", "set", "eth0", "down"])?;
        println!("  lbd1 killed and off the network");
        b.wait_status(Duration::from_secs(10), "master", |s| {
            s.vrrp.as_ref().is_some_and(|v| v.state == "MASTER")
        })?;
        println!(
            "  lbd2 became MASTER {:.0} ms later and holds the VIP",
            failed_at.elapsed().as_secs_f64() * 1000.0
        );
        stream
            .join()
            .map_err(|_| anyhow::anyhow!("stream thread panicked"))??
    })?;
    println!(
        "  the transfer from {} finished: {} bytes, no reset (lbd2 picked the same backend: same Maglev table)",
        result.backend, result.received
    );
    vrrp_line("lbd2", &b)?;
    let answered = curl_requests(&topo, 6)?;
    let answered6 = curl_requests_to(&topo, &host6, 3)?;
    println!(
        "  {} requests answered through lbd2 (IPv6: {}; its neighbour advertisements moved the IPv6 VIP)",
        answered.len(),
        answered6.len()
    );

    step("stopping lbd (SIGTERM: VRRP resigns, XDP detaches) and removing the namespaces");
    b.stop()?;
    drop(a);
    drop(topo);
    println!("  done: nothing left behind");
    Ok(())
}

/// Three nodes behind ECMP (see `lbd_tests::ecmp`).
fn demo_ecmp() -> Result<()> {
    use lbd_tests::ecmp;
    step("building: a client, a router (BIRD, ECMP), three lbd nodes (XDP, BIRD), three backends");
    let mut bed = ecmp::Bed::build("demo_ecmp", 3)?;
    let route = bed
        .topo
        .ns(Host::Router)
        .run("ip", &["route", "show", &format!("{}/32", lbd_tests::VIP)])?;
    println!(
        "  the router's route to the VIP, learned by BGP from each node:\n{}",
        String::from_utf8_lossy(&route.stdout)
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    check_stop()?;
    step(
        "300 new connections from the client: spread over the nodes by the router, over the backends by Maglev",
    );
    let (shares, backends) = ecmp::share(&bed, 300)?;
    for (node, n) in &shares {
        println!("  {node}: {n} connections");
    }
    println!("  answered by {backends:?}");
    check_stop()?;
    step("20 slow flows; lbctl node drain on lbd1 (its route withdrawn), then undrain");
    let o = ecmp::drain_and_rejoin(&bed)?;
    println!(
        "  the router dropped lbd1 {:.0} ms after the drain; {} flows were on lbd1 and went on through the others (same backend, picked up mid-flow); {} of 20 broke",
        o.reroute.as_secs_f64() * 1e3,
        o.on_node,
        o.broken.len()
    );
    check_stop()?;
    step("20 slow flows; lbd1 dies (link down, lbd and BIRD killed)");
    let o = ecmp::kill(&mut bed)?;
    println!(
        "  BFD: the router routed around lbd1 after {:.0} ms; {} flows were on it; {} of 20 broke",
        o.reroute.as_secs_f64() * 1e3,
        o.on_node,
        o.broken.len()
    );
    step("removing the namespaces");
    drop(bed);
    println!("  done: nothing left behind");
    Ok(())
}

fn main() -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("lbd-demo: needs root (network namespaces, XDP); run `sudo cargo xtask demo`");
        return ExitCode::FAILURE;
    }
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let result = match std::env::args().nth(1).as_deref() {
        None => demo(),
        Some("ecmp") => demo_ecmp(),
        Some(other) => Err(anyhow::anyhow!(
            "unknown demo {other:?}: `cargo xtask demo` (VRRP pair) or `cargo xtask demo ecmp`"
        )),
    };
    // Whatever happened, no demo namespace stays behind.
    let _ = netns::sweep_orphans();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbd-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
