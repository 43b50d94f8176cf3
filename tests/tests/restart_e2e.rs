//! A restart or a crash of lbd with a pinned XDP data path (`daemon.pin_dir`): under one open
//! keep-alive flow and a loop of new connections through the VIP, `kill -9` and a start a second
//! later, then SIGTERM and a start, fail no connection and keep the flow on its backend; a change
//! of the maps' layout builds fresh maps; `lbd --detach` leaves nothing behind.

use anyhow::{Context, Result, ensure};
use std::time::Duration;

use lbd_tests::{
    Host, Topology,
    bench_failover::{ping_replies, ping_vip},
    bin_path, client,
    lbd::{LbdNode, Mode, SingleNode},
    netns_tests_enabled,
    restart::{
        DOWN, PinDir, check, check_new_but_the_one_in_flight, config, config_for, detach,
        holds_vip, under_load, vrrp_pair, xdp_attached, xdp_prog_id,
    },
    test_tag,
};

#[test]
fn a_crash_or_restart_loses_no_flow_and_refuses_no_connection() -> Result<()> {
    let name = "a_crash_or_restart_loses_no_flow_and_refuses_no_connection";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    let SingleNode {
        topo,
        backends: _backends,
        peer: _peer,
    } = SingleNode::build(name, Mode::XdpNative)?;
    let bpffs = PinDir::new(&test_tag("restart"))?;
    let pins = bpffs.pins();
    let node = Host::Lbd(1);
    let mut lbd = LbdNode::start(&topo, node, &config(&topo, &pins, 65_536))?;
    let status = lbd.status()?;
    ensure!(
        status.datapath_reason.contains("pinned in") && status.datapath_reason.contains("(new)"),
        "first start: {}",
        status.datapath_reason
    );

    // kill -9, a second with no lbd, then a start: the pinned program forwarded meanwhile.
    let seen = under_load(&topo, || lbd.crash_and_restart(&topo, node, DOWN))?;
    check("kill -9 and a start 1 s later", &seen)?;
    let status = lbd.status()?;
    ensure!(
        status.datapath_reason.contains("adopted"),
        "after the crash: {}",
        status.datapath_reason
    );

    // SIGTERM and a start, as systemctl restart does (and an upgrade: the new process's program
    // replaces the running one in the same link).
    let before = xdp_prog_id(&topo, node)?;
    let seen = under_load(&topo, || lbd.restart(&topo, node))?;
    check("SIGTERM and a start", &seen)?;
    let after = xdp_prog_id(&topo, node)?;
    ensure!(
        before.is_some() && after.is_some() && before != after,
        "the new lbd's program did not replace the old one: {before:?} then {after:?}"
    );

    // A new map layout (a bigger connection table): fresh maps, logged, balancing again.
    // The open flow has no entry in the fresh table: Maglev sends it to the same backend.
    std::fs::write(lbd.config_path(), config(&topo, &pins, 131_072))
        .context("writing the config")?;
    let seen = under_load(&topo, || lbd.restart(&topo, node))?;
    check("a new map layout", &seen)?;
    let status = lbd.status()?;
    ensure!(
        status.datapath_reason.contains("new map layout"),
        "after the layout change: {}",
        status.datapath_reason
    );
    let maps: Vec<_> = std::fs::read_dir(&pins)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("maps-"))
        .collect();
    ensure!(maps.len() == 1, "maps of the old layout left: {maps:?}");
    let r = topo
        .client()
        .enter(|| client::http_get(topo.vip_http()))??;
    ensure!(r.status == 200, "a connection after the layout change");

    // A plain stop leaves the data path; `lbd --detach` removes it.
    // The node's directory goes with it: detach with a copy of its config.
    let config_path = std::env::temp_dir().join(format!("{}-detach.toml", test_tag("restart")));
    std::fs::copy(lbd.config_path(), &config_path).context("copying the config")?;
    lbd.stop()?;
    ensure!(
        xdp_attached(&topo, node)?,
        "a plain stop detached the program"
    );
    let r = topo
        .client()
        .enter(|| client::http_get(topo.vip_http()))??;
    ensure!(r.status == 200, "a connection with lbd stopped");
    let out = topo.ns(node).run(
        &bin_path("lbd")?.display().to_string(),
        &["--detach", "--config", &config_path.display().to_string()],
    )?;
    ensure!(
        out.status.success(),
        "lbd --detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !xdp_attached(&topo, node)?,
        "lbd --detach left a program on eth0"
    );
    ensure!(!pins.exists(), "lbd --detach left {}", pins.display());
    let _ = std::fs::remove_file(&config_path);
    Ok(())
}

/// A VRRP pair at 1 s adverts, both nodes pinned: the master's lbd restarting (SIGTERM and a
/// start, or kill -9 and a start a second later) is back within the backup's Master_Down_Interval
/// (3 s and the skew), resumes as master, and the VIP never moves: the backup never becomes
/// master, no connection fails, the open flow stays.
#[test]
fn a_vrrp_master_restarting_in_time_keeps_the_vip() -> Result<()> {
    let name = "a_vrrp_master_restarting_in_time_keeps_the_vip";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    let topo = Topology::builder(&test_tag(name))
        .lbd_nodes(2)
        .backends(3)
        .build()?;
    let _backends = topo.start_backends(&bin_path("lbd-test-backend")?)?;
    let bpffs = PinDir::new(&test_tag("restart_vrrp"))?;
    let (n1, n2) = (Host::Lbd(1), Host::Lbd(2));
    let (mut a, b) = vrrp_pair(&topo, Some(&bpffs))?;
    let master = |node: &LbdNode| {
        node.wait_status(Duration::from_secs(10), "VRRP MASTER", |s| {
            s.vrrp.as_ref().is_some_and(|v| v.state == "MASTER")
        })
    };

    for (what, crash) in [
        ("SIGTERM and a start", false),
        ("kill -9 and a start 1 s later", true),
    ] {
        let seen = under_load(&topo, || {
            if crash {
                a.crash_and_restart(&topo, n1, DOWN)
            } else {
                a.restart(&topo, n1)
            }
        })?;
        check(&format!("VRRP master, {what}"), &seen)?;
        let v = master(&a)?.vrrp.context("vrrp")?;
        ensure!(v.became_master == 1, "{what}: lbd1 {v:?}");
        let vb = b.status()?.vrrp.context("vrrp")?;
        ensure!(
            vb.became_master == 0 && vb.state == "BACKUP",
            "{what}: the backup took over: {vb:?}"
        );
        ensure!(
            holds_vip(&topo, n1)? && !holds_vip(&topo, n2)?,
            "{what}: the VIP moved"
        );
    }

    // Maintenance of the pinned master: `lbctl vrrp resign` hands over make-before-break (no
    // ping of the VIP goes unanswered), and the node stays out across a restart until
    // `lbctl vrrp resume`, when it takes the VIP back (it has the higher priority, preempt on).
    const PINGS: u32 = 250;
    let ping = std::thread::scope(|s| -> Result<_> {
        let ping = s.spawn(|| ping_vip(&topo, PINGS));
        std::thread::sleep(Duration::from_millis(500));
        let (code, out, err) = a.lbctl(&["vrrp", "resign"])?;
        ensure!(
            code == 0 && out.contains("resigned"),
            "lbctl vrrp resign: {out}{err}"
        );
        ping.join()
            .map_err(|_| anyhow::anyhow!("the ping thread panicked"))?
    })?;
    let replies = ping_replies(&ping);
    eprintln!("restart_e2e: lbctl vrrp resign: {replies} of {PINGS} pings answered");
    ensure!(
        replies == PINGS as usize,
        "{} of {PINGS} pings went unanswered while the master resigned",
        PINGS as usize - replies
    );
    let out = |node: &LbdNode, what: &str| {
        node.wait_status(Duration::from_secs(10), what, |s| {
            s.vrrp
                .as_ref()
                .is_some_and(|v| v.resigned && v.state == "INIT")
        })
    };
    out(&a, "lbd1 resigned")?;
    ensure!(
        holds_vip(&topo, n2)? && !holds_vip(&topo, n1)?,
        "after resign lbd2 should hold the VIP alone"
    );
    a.restart(&topo, n1)?;
    std::thread::sleep(Duration::from_millis(1500));
    out(&a, "lbd1 still resigned after a restart")?;
    ensure!(
        b.status()?.vrrp.context("vrrp")?.state == "MASTER" && !holds_vip(&topo, n1)?,
        "a resigned node took the VIP back after its restart"
    );
    let (code, out_, err) = a.lbctl(&["vrrp", "resume"])?;
    ensure!(code == 0, "lbctl vrrp resume: {out_}{err}");
    master(&a)?;
    ensure!(
        !a.status()?.vrrp.context("vrrp")?.resigned,
        "still resigned"
    );
    // The VRRP metrics the shipped alert rules and dashboard use are in a live scrape.
    let checked =
        lbd_tests::lbd::check_shipped_metrics(&lbd_tests::lbd::scrape(&topo, n1)?, |n| {
            n.starts_with("lbd_vrrp_")
        })?;
    ensure!(checked >= 2, "{checked} VRRP metrics checked");

    a.stop()?;
    b.stop()?;
    detach(&topo, n1, &bpffs.pins_named("lbd1"))?;
    detach(&topo, n2, &bpffs.pins_named("lbd2"))?;
    Ok(())
}

/// A planned handover (the master's lbd stopped, no pins: make-before-break) at 1 s adverts,
/// under a ping every 10 ms and a TCP stream through the VIP: no ping goes unanswered (the VIP is
/// never without a holder for the backup's skew time, about 0.6 s here) and the stream survives.
#[test]
fn a_planned_handover_loses_no_ping_and_keeps_a_stream() -> Result<()> {
    let name = "a_planned_handover_loses_no_ping_and_keeps_a_stream";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    let topo = Topology::builder(&test_tag(name))
        .lbd_nodes(2)
        .backends(3)
        .build()?;
    let _backends = topo.start_backends(&bin_path("lbd-test-backend")?)?;
    let (n1, n2) = (Host::Lbd(1), Host::Lbd(2));
    let (a, b) = vrrp_pair(&topo, None)?;
    const PINGS: u32 = 300;
    let vip = topo.vip_http();
    let (ping, stream) = std::thread::scope(|s| -> Result<_> {
        let ping = s.spawn(|| ping_vip(&topo, PINGS));
        let stream = s.spawn(|| {
            topo.client().enter(move || {
                client::http_stream(vip, 2_000_000, 20_000, 30, Duration::from_secs(40))
            })
        });
        std::thread::sleep(Duration::from_millis(1000));
        a.stop()?;
        let ping = ping
            .join()
            .map_err(|_| anyhow::anyhow!("the ping thread panicked"))??;
        let stream = stream
            .join()
            .map_err(|_| anyhow::anyhow!("the stream thread panicked"))??;
        Ok((ping, stream))
    })?;
    let replies = ping_replies(&ping);
    eprintln!(
        "restart_e2e: planned handover: {replies} of {PINGS} pings answered; the stream got {} bytes",
        stream.as_ref().map_or(0, |r| r.received)
    );
    ensure!(
        replies == PINGS as usize,
        "{} of {PINGS} pings went unanswered during the handover",
        PINGS as usize - replies
    );
    let stream = stream.context("the stream through the VIP")?;
    ensure!(stream.received == 2_000_000, "the stream was cut");
    let vb = b.status()?.vrrp.context("vrrp")?;
    ensure!(
        vb.state == "MASTER" && holds_vip(&topo, n2)? && !holds_vip(&topo, n1)?,
        "lbd2 should hold the VIP alone: {vb:?}"
    );
    Ok(())
}

/// The userspace proxy, restarted the planned way (`lbd --replace`): the new lbd takes the
/// running one's listening sockets, so under a loop of new connections none is refused, and the
/// open flow finishes on the old process, which then exits by itself.
#[test]
fn a_planned_restart_of_the_proxy_refuses_no_connection() -> Result<()> {
    let name = "a_planned_restart_of_the_proxy_refuses_no_connection";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    let SingleNode {
        topo,
        backends: _backends,
        peer: _peer,
    } = SingleNode::build(name, Mode::Userspace)?;
    let node = Host::Lbd(1);
    let mut lbd = LbdNode::start(&topo, node, &config_for(&topo, Mode::Userspace, None, 1024))?;
    for round in 1..=2 {
        let mut old = None;
        let seen = under_load(&topo, || {
            old = Some(lbd.replace(&topo, node)?);
            Ok(())
        })?;
        let mut old = old.context("the replaced lbd")?;
        check(&format!("lbd --replace, round {round}"), &seen)
            .with_context(|| format!("the replaced lbd said: {}", old.stderr_tail()))?;
        // Its last connection (the flow) closed with the load: it exits on its own.
        lb_testkit::wait_until("the replaced lbd to exit", Duration::from_secs(15), || {
            old.try_status().is_some()
        })?;
        let status = old.try_status().context("exit status")?;
        ensure!(
            status.success(),
            "the replaced lbd exited with {status}: {}",
            old.stderr_tail()
        );
        let reason = lbd.status()?.datapath_reason;
        ensure!(
            reason.contains(&format!("listeners from lbd pid {}", old.pid())),
            "round {round}: {reason}"
        );
    }
    lbd.stop()?;
    Ok(())
}

/// The userspace proxy under systemd with `FileDescriptorStoreMax=` (a stand-in store here):
/// lbd pushes its listeners to the store, and a start gets them back, so across SIGTERM and a
/// start, and across kill -9 and a start a second later, no new connection is refused (clients
/// wait in the backlog the store keeps open). The open flow dies with the process: it is
/// proxied there; so does a new connection it had accepted and was answering at that instant. A service removed by a reload leaves the store.
#[test]
fn the_proxy_under_systemd_keeps_its_listeners_across_restarts() -> Result<()> {
    let name = "the_proxy_under_systemd_keeps_its_listeners_across_restarts";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    let SingleNode {
        topo,
        backends: _backends,
        peer: _peer,
    } = SingleNode::build(name, Mode::Userspace)?;
    let node = Host::Lbd(1);
    let config = config_for(&topo, Mode::Userspace, None, 1024);
    let mut lbd = LbdNode::start_with_fdstore(&topo, node, &config)?;
    let store = |lbd: &LbdNode| lbd.fdstore.as_ref().context("the store")?.names();
    let vip = topo.vip_http();
    let tcp = format!("tcp-{}-{}", vip.ip(), vip.port());
    ensure!(
        store(&lbd)?.contains(&tcp),
        "lbd did not store its listener: {:?}",
        store(&lbd)?
    );
    let seen = under_load(&topo, || lbd.restart(&topo, node))?;
    check_new_but_the_one_in_flight("SIGTERM and a start, listeners in the fd store", &seen)?;
    let seen = under_load(&topo, || lbd.crash_and_restart(&topo, node, DOWN))?;
    check_new_but_the_one_in_flight(
        "kill -9 and a start 1 s later, listeners in the fd store",
        &seen,
    )?;
    let reason = lbd.status()?.datapath_reason;
    ensure!(reason.contains("listeners from systemd"), "{reason}");

    // The UDP service leaves the config: its socket leaves the store.
    let before = store(&lbd)?;
    let udp: Vec<&String> = before.iter().filter(|n| n.starts_with("udp-")).collect();
    ensure!(!udp.is_empty(), "no UDP listener stored: {before:?}");
    let without_udp: String = config
        .split("\n[[service]]")
        .enumerate()
        .filter(|(i, part)| *i == 0 || !part.contains("proto = \"udp\""))
        .map(|(i, part)| {
            if i == 0 {
                part.to_string()
            } else {
                format!("\n[[service]]{part}")
            }
        })
        .collect();
    ensure!(
        without_udp != config,
        "the config has no UDP service to remove"
    );
    lbd.reload(&without_udp)?;
    lb_testkit::wait_until(
        "the UDP listener to leave the store",
        Duration::from_secs(10),
        || store(&lbd).is_ok_and(|names| names.iter().all(|n| !n.starts_with("udp-"))),
    )?;
    ensure!(
        store(&lbd)?.contains(&tcp),
        "the TCP listener left the store"
    );
    let _old = lbd.replace(&topo, node)?;
    lbd.stop()?;
    Ok(())
}
