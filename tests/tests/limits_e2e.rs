//! The open-files limit as a new user meets it: lbd started with the soft limit systemd gives a
//! service by default (1024) raises its own to what its bounds need, and holds 5,000 concurrent
//! proxied connections with none refused and no "Too many open files".

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use lbd_tests::{
    Host, client,
    lbd::{self, LbdNode, Mode, SingleNode},
    netns_tests_enabled,
};

const CONNECTIONS: usize = 5000;

/// Raises this test process's own soft limit (its clients hold 5,000 sockets, and the backends
/// it starts inherit the limit).
fn raise_own_nofile() -> Result<()> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write one rlimit.
    unsafe {
        ensure!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0,
            "getrlimit"
        );
        r.rlim_cur = r.rlim_max;
        ensure!(libc::setrlimit(libc::RLIMIT_NOFILE, &r) == 0, "setrlimit");
    }
    ensure!(
        r.rlim_max >= 4 * CONNECTIONS as u64,
        "the hard open-files limit {} is too low for this test",
        r.rlim_max
    );
    Ok(())
}

#[test]
fn the_proxy_under_a_soft_limit_of_1024_holds_5000_connections() -> Result<()> {
    let name = "nofile_5000";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    raise_own_nofile()?;
    let SingleNode {
        topo,
        backends: _backends,
        peer: _peer,
    } = SingleNode::build(name, Mode::Userspace)?;
    let node = Host::Lbd(1);
    let config = lbd::all_backends_config(&topo, node, Mode::Userspace);
    // The soft limit of a systemd service by default; the hard one stays.
    let lbd = LbdNode::start_wrapped(
        &topo,
        node,
        &config,
        &["prlimit", "--nofile=1024:"],
        "every backend active",
        |s| {
            s.services
                .iter()
                .all(|svc| svc.backends.iter().all(|b| b.state == "active"))
        },
    )?;
    let log = lbd.process.stderr_tail();
    ensure!(
        log.contains("open files: soft limit raised"),
        "no raise in the start log: {log}"
    );
    // What the kernel says lbd may hold now (`ip netns exec` and `prlimit` exec lbd in place).
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", lbd.process.pid()))?;
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .context("Max open files in /proc/PID/limits")?;
    ensure!(
        soft >= 4 * CONNECTIONS as u64,
        "lbd's soft limit is {soft} after the raise"
    );

    let vip = topo.vip_http();
    let started = Instant::now();
    let held = topo
        .client()
        .enter(move || -> Result<Vec<client::KeepAlive>> {
            let mut held = Vec::with_capacity(CONNECTIONS);
            for i in 0..CONNECTIONS {
                let mut c = client::KeepAlive::connect(vip, Duration::from_secs(10))
                    .with_context(|| format!("connection {i} of {CONNECTIONS}"))?;
                c.get("/")
                    .with_context(|| format!("request on connection {i} of {CONNECTIONS}"))?;
                held.push(c);
            }
            Ok(held)
        })??;
    eprintln!("{CONNECTIONS} connections open in {:?}", started.elapsed());

    // All of them open at once, through the proxy.
    let (code, out, err) = lbd.lbctl(&["flows", "--json", "--service", "web", "--limit", "0"])?;
    ensure!(code == 0, "lbctl flows: {err}");
    let report: serde_json::Value = serde_json::from_str(&out)?;
    ensure!(
        report["matched"].as_u64() == Some(CONNECTIONS as u64),
        "open proxied connections: {}",
        report["matched"]
    );
    let log = lbd.process.stderr_tail();
    // The failure seen before: accepts failing with EMFILE ("accept failed; pausing").
    ensure!(
        !log.contains("accept failed"),
        "lbd ran out of descriptors: {log}"
    );
    drop(held);
    lbd.stop()
}
