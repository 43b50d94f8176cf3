//! `cargo xtask demo`: lbd live, in network namespaces made for the demo and removed after it
//! (also on Ctrl-C or failure). A client, one lbd node, three backends on a bridge; real HTTP
//! requests with curl from the client to the VIP; which backend answered each; lbd's counters;
//! then a backend removed by a config reload while a connection to it stays open.

use std::{
    process::{Command, ExitCode},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
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
    let mut answered = Vec::new();
    for i in 1..=n {
        check_stop()?;
        let out = topo.client().output(
            "curl",
            &[
                "-sS",
                "-m",
                "3",
                "-D",
                "-",
                &format!("http://{}/", lbd_tests::VIP),
            ],
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
            "  curl #{i:<2} http://{}/ -> answered by {backend:<3} (backend saw client {})",
            lbd_tests::VIP,
            header("X-Client:")
        );
        answered.push(backend);
    }
    Ok(answered)
}

fn lbctl_status(node: &LbdNode) -> Result<()> {
    let out = Command::new(bin_path("lbctl")?)
        .arg("--socket")
        .arg(&node.socket)
        .arg("status")
        .output()
        .context("running lbctl")?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "lbctl status: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn demo() -> Result<()> {
    let tag = format!("demo-{}", std::process::id());
    step(
        "building the network: a bridge, a client, an lbd node and three backends, each in its own namespace",
    );
    let topo = Topology::builder(&tag).lbd_nodes(1).backends(3).build()?;
    for h in topo.hosts() {
        println!(
            "  {:<8} {:<14} {}",
            h.role(),
            topo.ip(h).to_string(),
            topo.mac(h)
        );
    }
    let _backends = topo.start_backends(&bin_path("lbd-test-backend")?)?;
    println!(
        "  backends serve HTTP on :80 and hold the VIP {} on lo (arp_ignore=1, arp_announce=2)",
        lbd_tests::VIP
    );
    let node = Host::Lbd(1);
    topo.add_vip(node)?;
    let _peer = lbd::attach_peer_pass(&topo, node)?;
    check_stop()?;

    step("starting lbd on lbd1 (native XDP) with the embedded config");
    let socket = LbdNode::socket_path(&topo, node);
    let all: Vec<_> = topo.backends().into_iter().map(|b| topo.ip(b)).collect();
    let config = lbd::config_text(
        Mode::XdpNative,
        &socket,
        &Services {
            tcp: all.clone(),
            udp: all.clone(),
        },
    );
    for line in config.lines() {
        println!("  | {line}");
    }
    let mut lbd = LbdNode::start(&topo, node, &config)?;

    step("12 HTTP requests from the client to the VIP, each a new TCP connection (curl)");
    let answered = curl_requests(&topo, 12)?;
    for b in topo.backends() {
        println!(
            "  {}: {} of 12",
            b.role(),
            answered.iter().filter(|a| **a == b.role()).count()
        );
    }

    step("lbctl status: packets per service and backend, as counted by the XDP program");
    std::thread::sleep(Duration::from_millis(1100)); // one refresh tick for the flow counts
    lbctl_status(&lbd)?;

    step("a backend leaves the config (SIGHUP) while a keep-alive connection to it is open");
    let vip = topo.vip_http();
    let mut conn = topo
        .client()
        .enter(move || client::KeepAlive::connect(vip, Duration::from_secs(5)))??;
    let pinned = topo.client().enter(|| conn.get("/"))??.backend;
    let pinned_host = topo
        .backends()
        .into_iter()
        .find(|b| b.role() == pinned)
        .context("pinned backend")?;
    println!(
        "  the open connection is served by {pinned}; removing {} from the config",
        topo.ip(pinned_host)
    );
    let rest: Vec<_> = all
        .iter()
        .copied()
        .filter(|ip| *ip != topo.ip(pinned_host))
        .collect();
    lbd.reload(&lbd::config_text(
        Mode::XdpNative,
        &socket,
        &Services {
            tcp: rest,
            udp: all.clone(),
        },
    ))?;
    let pinned_ip = topo.ip(pinned_host).to_string();
    lbd.wait_status(Duration::from_secs(10), "reloaded", |s| {
        s.services.iter().any(|svc| {
            svc.backends
                .iter()
                .any(|b| b.addr == pinned_ip && b.state == "removed")
        })
    })?;
    let answered = curl_requests(&topo, 6)?;
    println!(
        "  new connections avoid {pinned}: {}",
        !answered.contains(&pinned)
    );
    let again = topo.client().enter(|| conn.get("/"))??.backend;
    println!("  the open connection still works, served by {again}");
    topo.client().enter(move || conn.close())??;
    std::thread::sleep(Duration::from_millis(1100));
    lbctl_status(&lbd)?;

    step("stopping lbd (SIGTERM detaches XDP) and removing the namespaces");
    lbd.stop()?;
    drop(topo);
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
    let result = demo();
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
