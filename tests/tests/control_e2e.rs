//! The control plane end to end, in network namespaces: lbctl changes backends at run time,
//! drains one under a long transfer, refuses bad input, and the changes survive a restart.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context, Result, ensure};
use lbd_tests::{
    Host, Topology, bin_path, client,
    lbd::{self, LbdNode, Mode, Services, SingleNode, sample, scrape},
};

fn backends_answering(topo: &Topology, n: usize) -> Result<Vec<String>> {
    let vip = topo.vip_http();
    topo.client().enter(move || -> Result<Vec<String>> {
        (0..n)
            .map(|i| {
                client::http_get(vip)
                    .map(|r| r.backend)
                    .with_context(|| format!("connection {i}"))
            })
            .collect()
    })?
}

fn run(mode: Mode, name: &str) -> Result<()> {
    let SingleNode {
        topo,
        backends: _backends,
        peer: _peer,
    } = SingleNode::build(name, mode)?;
    let node = Host::Lbd(1);
    let ip = |n: u8| topo.ip(Host::Backend(n));
    let socket = LbdNode::socket_path(&topo, node);
    // b3 is not in the config: lbctl adds it.
    let services = Services {
        tcp: vec![ip(1), ip(2)],
        udp: vec![ip(1)],
    };
    let mut lbd = LbdNode::start(&topo, node, &lbd::config_text(mode, &socket, &services))?;

    // 1. Bad input: one line that says what to do, exit code 1, nothing changed.
    let b1 = ip(1).to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["backend", "add", "nosuch", "198.18.0.23"],
            "unknown service \"nosuch\" (services: web, dns)",
        ),
        (
            vec!["backend", "add", "web", "198.18.0.x"],
            "address: \"198.18.0.x\" is not an address (expected e.g. 198.18.0.21",
        ),
        (
            vec!["backend", "add", "web", "198.18.0.23:8080"],
            "port 8080 differs from the VIP port 80",
        ),
        (
            vec!["backend", "add", "web", "198.18.0.23", "--weight", "0"],
            "weight 0 is out of range (allowed: 1 to 1000)",
        ),
        (
            vec!["backend", "weight", "web", &b1, "5000"],
            "weight 5000 is out of range (allowed: 1 to 1000)",
        ),
        (
            vec!["backend", "add", "web", &b1],
            "is already a backend of web",
        ),
        (
            vec!["backend", "drain", "web", "198.18.0.99"],
            "198.18.0.99 is not a backend of web (backends: 198.18.0.21, 198.18.0.22)",
        ),
        (
            vec!["backend", "remove", "198.18.0.100:81", &b1],
            "unknown service \"198.18.0.100:81\"",
        ),
    ];
    for (args, want) in &cases {
        let (code, _, err) = lbd.lbctl(args)?;
        ensure!(code == 1, "lbctl {args:?}: exit {code}, stderr {err}");
        ensure!(
            err.contains(want),
            "lbctl {args:?}: want {want:?} in {err:?}"
        );
        ensure!(
            err.trim().lines().count() == 1,
            "lbctl {args:?}: not one line: {err:?}"
        );
    }
    let (code, _, err) = lbd.lbctl(&["backend", "maintenance", "web", &b1, "sideways"])?;
    ensure!(
        code == 2 && err.contains("invalid value 'sideways'"),
        "bad on/off: {code} {err}"
    );

    // 2. Add b3 at run time: it takes connections, and it is still there after a restart.
    let (code, out, err) =
        lbd.lbctl(&["backend", "add", "web", &ip(3).to_string(), "--weight", "2"])?;
    ensure!(
        code == 0 && out.contains("added 198.18.0.23 to web with weight 2"),
        "add: {code} {out} {err}"
    );
    let answered = backends_answering(&topo, 60)?;
    ensure!(
        answered.iter().any(|b| b == "b3"),
        "b3 added but never answered: {answered:?}"
    );
    lbd.restart(&topo, node)?;
    let st = lbd.status()?;
    let web = st
        .services
        .iter()
        .find(|s| s.name == "web")
        .context("web")?;
    let b3 = web
        .backends
        .iter()
        .find(|b| b.addr == ip(3).to_string())
        .context("b3 lost in the restart")?;
    ensure!(
        b3.source.to_string() == "lbctl" && b3.weight == 2,
        "b3 after restart: {b3:?}"
    );
    ensure!(
        b3.overrides.iter().any(|o| o.contains("added by lbctl")),
        "b3 overrides: {:?}",
        b3.overrides
    );
    let answered = backends_answering(&topo, 60)?;
    ensure!(
        answered.iter().any(|b| b == "b3"),
        "b3 does not answer after the restart: {answered:?}"
    );

    // 3. Drain under a long transfer: it completes with no reset, new connections avoid the
    //    backend, and `drain --wait` returns once the transfer has ended.
    let vip = topo.vip_http();
    let transfer = std::thread::scope(|scope| -> Result<()> {
        let stream = scope.spawn(|| {
            topo.client().enter(move || {
                client::http_stream(vip, 600_000, 10_000, 50, Duration::from_secs(30))
            })
        });
        // The transfer is the only open flow: find its backend.
        let st = lbd.wait_status(
            Duration::from_secs(10),
            "showing the transfer's flow",
            |s| {
                s.services
                    .iter()
                    .any(|svc| svc.name == "web" && svc.backends.iter().any(|b| b.flows == 1))
            },
        )?;
        let busy: Ipv4Addr = st
            .services
            .iter()
            .find(|s| s.name == "web")
            .and_then(|s| s.backends.iter().find(|b| b.flows == 1))
            .context("busy backend")?
            .addr
            .parse()?;
        let busy_name = topo
            .backends()
            .into_iter()
            .find(|b| topo.ip(*b) == busy)
            .context("name")?
            .role();
        // Removing a backend with a flow is refused without --force, with the count.
        let (code, _, err) = lbd.lbctl(&["backend", "remove", "web", &busy.to_string()])?;
        ensure!(
            code == 1 && err.contains("has 1 open flows in web") && err.contains("--force"),
            "remove with flows: {code} {err}"
        );
        let wait = std::process::Command::new(bin_path("lbctl")?)
            .arg("--socket")
            .arg(&lbd.socket)
            .args([
                "backend",
                "drain",
                "web",
                &busy.to_string(),
                "--wait",
                "--timeout",
                "60s",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        lbd.wait_backend_state("web", &busy.to_string(), "draining")?;
        let after = backends_answering(&topo, 30)?;
        ensure!(
            !after.contains(&busy_name),
            "drained {busy_name} got new connections: {after:?}"
        );
        let result = stream
            .join()
            .map_err(|_| anyhow::anyhow!("stream thread panicked"))???;
        ensure!(
            result.received == 600_000 && result.backend == busy_name,
            "transfer: {result:?}"
        );
        let waited = wait.wait_with_output()?;
        let out = String::from_utf8_lossy(&waited.stdout);
        ensure!(waited.status.success(), "drain --wait failed: {out}");
        ensure!(
            out.contains("1 open flows") && out.contains("is drained"),
            "drain --wait output: {out}"
        );
        // Drained and idle: now removal goes through, and survives a restart.
        let (code, out, err) = lbd.lbctl(&["backend", "remove", "web", &busy.to_string()])?;
        ensure!(
            code == 0 && out.contains("removed"),
            "remove after drain: {code} {out} {err}"
        );
        Ok(())
    });
    transfer?;
    lbd.stop()?;
    Ok(())
}

lbd_tests::test_each_mode!(run:
    lbctl_changes_backends_xdp_native => Mode::XdpNative,
    lbctl_changes_backends_xdp_generic => Mode::XdpGeneric,
    lbctl_changes_backends_userspace => Mode::Userspace,
);

lbd_tests::test_each_mode!(health_and_metrics:
    health_and_metrics_xdp_native => Mode::XdpNative,
    health_and_metrics_xdp_generic => Mode::XdpGeneric,
    health_and_metrics_userspace => Mode::Userspace,
);

fn health_and_metrics(mode: Mode, name: &str) -> Result<()> {
    let SingleNode {
        topo,
        mut backends,
        peer: _peer,
    } = SingleNode::build(name, mode)?;
    let backend_bin = bin_path("lbd-test-backend")?;
    let node = Host::Lbd(1);
    let all: Vec<Ipv4Addr> = topo.backends().into_iter().map(|b| topo.ip(b)).collect();
    let socket = LbdNode::socket_path(&topo, node);
    let config = lbd::config_text(mode, &socket, &Services { tcp: all.clone(), udp: all.clone() }).replacen(
        "name = \"web\"\n",
        "name = \"web\"\nhealth = { kind = \"http\", path = \"/\", interval_ms = 200, timeout_ms = 150, rise = 2, fall = 2 }\n",
        1,
    );
    let lbd = LbdNode::start(&topo, node, &config)?;
    let b2 = topo.ip(Host::Backend(2)).to_string();

    // Metrics: scraped over HTTP, and the counters move with traffic.
    let before = scrape(&topo, node)?;
    ensure!(
        sample(
            &before,
            "lbd_datapath_mode",
            &[&format!("mode=\"{}\"", mode.status_name())]
        )? == 1.0,
        "datapath mode metric"
    );
    // XDP counts wire packets (at least 3 per connection from the client); the proxy counts its
    // reads and writes (at least one per connection).
    let per_connection = if mode == Mode::Userspace { 1.0 } else { 3.0 };
    let web_before = sample(&before, "lbd_service_packets_total", &["service=\"web\""])?;
    let new_before = sample(&before, "lbd_service_new_flows_total", &["service=\"web\""])?;
    backends_answering(&topo, 30)?;
    let after = scrape(&topo, node)?;
    let web_after = sample(&after, "lbd_service_packets_total", &["service=\"web\""])?;
    ensure!(
        web_after >= web_before + per_connection * 30.0,
        "web packets {web_before} -> {web_after} for 30 connections"
    );
    // Each connection is one new flow (a table insert in XDP, a connection in the proxy).
    let new_after = sample(&after, "lbd_service_new_flows_total", &["service=\"web\""])?;
    ensure!(
        new_after - new_before == 30.0,
        "web new flows {new_before} -> {new_after} for 30 connections"
    );
    ensure!(
        sample(&after, "lbd_backend_up", &["backend=\"198.18.0.22\""])? == 1.0,
        "b2 up metric"
    );
    // The first probe runs within one interval of the start.
    lb_testkit::try_wait_until(
        "a health check latency sample for b2",
        Duration::from_secs(5),
        || -> Result<bool> {
            let s = scrape(&topo, node)?;
            Ok(sample(
                &s,
                "lbd_health_check_duration_seconds",
                &["backend=\"198.18.0.22\""],
            )
            .is_ok_and(|v| v > 0.0))
        },
    )?;

    // What the shipped alert rules and dashboard use is in a live scrape (VRRP's series need
    // [vrrp]: restart_e2e checks those).
    let checked =
        lbd::check_shipped_metrics(&scrape(&topo, node)?, |n| !n.starts_with("lbd_vrrp_"))?;
    ensure!(checked > 10, "{checked} shipped metrics checked");

    // b2's server stops: out of rotation after `fall` failed checks; no connection reaches it.
    let mut stopped = backends.remove(1);
    stopped.terminate(Duration::from_secs(5))?;
    lbd.wait_backend_state("web", &b2, "down")?;
    let answered = backends_answering(&topo, 40)?;
    ensure!(
        !answered.iter().any(|b| b == "b2"),
        "down backend answered: {answered:?}"
    );
    ensure!(
        sample(
            &scrape(&topo, node)?,
            "lbd_backend_up",
            &["backend=\"198.18.0.22\""]
        )? == 0.0,
        "b2 down metric"
    );

    // It comes back: in rotation again after `rise` good checks.
    backends.push(topo.start_backend(Host::Backend(2), &backend_bin)?);
    lbd.wait_backend_state("web", &b2, "active")?;
    let answered = backends_answering(&topo, 60)?;
    ensure!(
        answered.iter().any(|b| b == "b2"),
        "b2 back but never answered: {answered:?}"
    );
    lbd.stop()
}

lbd_tests::test_each_mode!(flows_listing:
    flows_listing_xdp_native => Mode::XdpNative,
    flows_listing_xdp_generic => Mode::XdpGeneric,
    flows_listing_userspace => Mode::Userspace,
);

/// Runs `lbctl flows --json ARGS` and returns the report.
fn flows(lbd: &LbdNode, args: &[&str]) -> Result<serde_json::Value> {
    let mut all = vec!["flows", "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = lbd.lbctl(&all)?;
    ensure!(code == 0, "lbctl {all:?}: {err}");
    serde_json::from_str(&out).with_context(|| format!("lbctl {all:?} printed {out}"))
}

fn matched(report: &serde_json::Value) -> u64 {
    report["matched"].as_u64().unwrap_or(u64::MAX)
}

/// `lbctl flows` against known flows: 12 kept-alive TCP connections and 3 UDP flows, listed with
/// their clients and backends, counted right under every filter, bounded by --limit; closed
/// connections show as closing (XDP) or leave the list (proxy).
fn flows_listing(mode: Mode, name: &str) -> Result<()> {
    let SingleNode {
        topo,
        backends: _backends,
        peer: _peer,
    } = SingleNode::build(name, mode)?;
    let node = Host::Lbd(1);
    let config = lbd::all_backends_config(&topo, node, mode);
    let lbd = LbdNode::start(&topo, node, &config)?;
    let (vip, vip_udp) = (topo.vip_http(), topo.vip_udp());
    let client_ip = topo.ip(Host::Client);
    // The connections stay open while the listing runs: (our port, backend address).
    let (conns, held) = topo.client().enter(move || -> Result<_> {
        let mut held = Vec::new();
        let mut conns = Vec::new();
        for i in 0..12 {
            let mut c = client::KeepAlive::connect(vip, Duration::from_secs(5))?;
            let reply = c.get("/").with_context(|| format!("connection {i}"))?;
            conns.push((c.local_addr()?.port(), reply.backend));
            held.push(c);
        }
        for i in 0..3 {
            client::udp_query(vip_udp, b"hello", Duration::from_secs(5))
                .with_context(|| format!("datagram {i}"))?;
        }
        Ok((conns, held))
    })??;
    let backend_ip = |name: &str| -> Result<String> {
        let n: u8 = name
            .trim_start_matches('b')
            .parse()
            .context("backend name")?;
        Ok(topo.ip(Host::Backend(n)).to_string())
    };

    // Everything, then per service: the rows carry our client, the VIP and the right backend.
    let everything = flows(&lbd, &[])?;
    ensure!(matched(&everything) == 15, "all flows: {everything}");
    let web = flows(&lbd, &["--service", "web"])?;
    ensure!(matched(&web) == 12, "web flows: {web}");
    ensure!(
        matched(&flows(&lbd, &["--service", "dns"])?) == 3,
        "dns flows"
    );
    for row in web["flows"].as_array().context("rows")? {
        let client = row["client"].as_str().context("client")?;
        let (ip, port) = client.split_once(':').context("client ip:port")?;
        ensure!(ip == client_ip.to_string(), "client {client}");
        let port: u16 = port.parse()?;
        let (_, backend) = conns
            .iter()
            .find(|(p, _)| *p == port)
            .with_context(|| format!("a flow from port {port} we did not open"))?;
        ensure!(
            row["backend"] == backend_ip(backend)?.as_str(),
            "{client}: listed at {}, answered by {backend}",
            row["backend"]
        );
        ensure!(
            row["vip"] == vip.to_string().as_str() && row["proto"] == "tcp",
            "{row}"
        );
        ensure!(row["state"] == "open", "{row}");
    }
    // Per backend, per client and client:port.
    for n in 1..=3u8 {
        let ip = topo.ip(Host::Backend(n)).to_string();
        let want = conns.iter().filter(|(_, b)| *b == format!("b{n}")).count() as u64;
        let got = matched(&flows(&lbd, &["--service", "web", "--backend", &ip])?);
        ensure!(got == want, "b{n}: {got} flows listed, {want} connections");
    }
    let (port, backend) = &conns[5];
    let one = flows(&lbd, &["--client", &format!("{client_ip}:{port}")])?;
    ensure!(
        matched(&one) == 1 && one["flows"][0]["backend"] == backend_ip(backend)?.as_str(),
        "client port {port}: {one}"
    );
    ensure!(
        matched(&flows(&lbd, &["--client", &client_ip.to_string()])?) == 15,
        "by client address"
    );
    // Bounded: two rows, the rest counted, in the table and in JSON.
    let two = flows(&lbd, &["--limit", "2"])?;
    ensure!(
        two["flows"].as_array().map(Vec::len) == Some(2) && matched(&two) == 15,
        "--limit 2: {two}"
    );
    let (code, text, err) = lbd.lbctl(&["flows", "--limit", "2"])?;
    ensure!(code == 0, "{err}");
    ensure!(
        text.lines().count() == 4 && text.contains("13 more not shown"),
        "table:\n{text}"
    );
    // Bad filters are refused with the reason.
    let (code, _, err) = lbd.lbctl(&["flows", "--backend", "198.18.0.99"])?;
    ensure!(
        code == 1 && err.contains("198.18.0.99 is not a backend of any service"),
        "{err}"
    );

    // Closed: XDP saw the FINs (closing until the entries expire); the proxy forgets them.
    for c in held {
        c.close()?;
    }
    lb_testkit::try_wait_until(
        "the closed connections to show as closed",
        Duration::from_secs(10),
        || -> Result<bool> {
            let web = flows(&lbd, &["--service", "web"])?;
            Ok(if mode == Mode::Userspace {
                matched(&web) == 0
            } else {
                matched(&web) == 12
                    && web["flows"]
                        .as_array()
                        .is_some_and(|r| r.iter().all(|f| f["state"] == "closing"))
            })
        },
    )?;
    lbd.stop()
}

/// The proxy's flood guard: at 100 new connections per second a burst of 300 connections is
/// spread over time instead of refused: every one answered, the holds counted, the episode
/// shown in `lbctl status`, in the status JSON and in metrics.
#[test]
fn the_proxy_flood_guard_delays_accepts_and_refuses_none() -> Result<()> {
    let name = "proxy_flood_guard";
    if !lbd_tests::netns_tests_enabled(name) {
        return Ok(());
    }
    let SingleNode {
        topo,
        backends: _backends,
        peer: _peer,
    } = SingleNode::build(name, Mode::Userspace)?;
    let node = Host::Lbd(1);
    let config = lbd::all_backends_config(&topo, node, Mode::Userspace).replacen(
        "[daemon]\n",
        "[daemon]\nflood_new_flows_per_sec = 100\n",
        1,
    );
    let lbd = LbdNode::start(&topo, node, &config)?;
    let started = std::time::Instant::now();
    let answered = backends_answering(&topo, 300)?;
    let took = started.elapsed();
    ensure!(answered.len() == 300, "{} of 300 answered", answered.len());
    // A second of burst, then 100 a second: the last 200 wait their turn (a lower bound only).
    ensure!(
        took >= Duration::from_secs(1),
        "300 connections in {took:?}: the guard held nothing back"
    );
    let status = lbd.wait_status(Duration::from_secs(5), "the flood guard active", |s| {
        s.flood_guard.active && s.flood_guard.held > 0
    })?;
    ensure!(
        status.flood_guard.new_flows_per_sec == 100 && status.flood_guard.episodes == 1,
        "{:?}",
        status.flood_guard
    );
    let (code, text, err) = lbd.lbctl(&["status"])?;
    ensure!(code == 0, "{err}");
    ensure!(
        text.contains("flood guard 100 new flows/s: HOLDING NEW FLOWS BACK"),
        "{text}"
    );
    let metrics = scrape(&topo, node)?;
    ensure!(
        sample(&metrics, "lbd_flood_guard_active", &[])? == 1.0,
        "active metric"
    );
    ensure!(
        sample(
            &metrics,
            "lbd_datapath_packets_total",
            &["reason=\"flood_guard\""]
        )? > 0.0,
        "held back, counted"
    );
    lbd.stop()
}
