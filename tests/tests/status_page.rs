//! The status page (`http://metrics_addr/`) in a real browser: headless Chromium loads it from an
//! lbd in a namespace; the DOM its script renders shows every service and backend with its
//! state; a drain made with `lbctl` shows after the page's own refresh; it fits a phone's width,
//! fetches nothing from elsewhere and offers no action; a screenshot is not blank. And the page
//! and `/status.json` answer within 50 ms with 32 services × 16 backends.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use lbd_tests::{
    Host, Topology, VIP,
    browser::{Browser, png_summary},
    client,
    lbd::{self, LbdNode, Mode, SingleNode},
    netns_tests_enabled, test_tag,
};
use serde_json::Value;

const PAGE: &str = "http://127.0.0.1:9300/";

#[test]
fn the_status_page_shows_every_backend_and_follows_a_drain() -> Result<()> {
    let name = "status_page";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    let SingleNode {
        topo,
        backends: _backends,
        peer: _peer,
    } = SingleNode::build(name, Mode::XdpGeneric)?;
    let node = Host::Lbd(1);
    let all: Vec<Ipv4Addr> = topo.backends().into_iter().map(|b| topo.ip(b)).collect();
    let config = lbd::all_backends_config(&topo, node, Mode::XdpGeneric).replacen(
        "name = \"web\"\n",
        "name = \"web\"\nhealth = { kind = \"http\", path = \"/\", interval_ms = 200, timeout_ms = 150 }\n",
        1,
    );
    let lbd = LbdNode::start(&topo, node, &config)?;
    let b2 = topo.ip(Host::Backend(2)).to_string();
    for ip in &all {
        lbd.wait_backend_state("web", &ip.to_string(), "active")?;
    }
    // Some traffic, so that rates and flows have something to show.
    let vip = topo.vip_http();
    topo.client().enter(move || -> Result<()> {
        for i in 0..30 {
            client::http_get(vip).with_context(|| format!("connection {i}"))?;
        }
        Ok(())
    })??;

    let mut browser = Browser::open(topo.ns(node), PAGE, 1200, 900, &LbdNode::dir(&topo, node))?;
    // The viewport exactly (a headless window's size includes what a window would draw around it).
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        serde_json::json!({ "width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": false }),
    )?;
    wait_for(&mut browser, "the page's first render", |b| {
        Ok(b.eval("document.body.dataset.loaded")? == "1")
    })?;

    // Every service and backend of `lbctl status`, each with its state, in the rendered DOM.
    let status = lbd.status()?;
    let dom = browser.dom()?;
    ensure!(status.services.len() == 2, "{status:?}");
    for svc in &status.services {
        ensure!(
            dom.contains(&format!("data-service=\"{}\"", svc.name)),
            "service {} not on the page",
            svc.name
        );
        for b in &svc.backends {
            let shown = browser.eval(&format!(
                "document.querySelector('[data-service=\"{}\"] [data-backend=\"{}\"]')?.dataset.state",
                svc.name, b.addr
            ))?;
            ensure!(
                shown == b.state.as_str(),
                "{} {}: the page shows {shown}, lbctl {}",
                svc.name,
                b.addr,
                b.state.as_str()
            );
        }
    }
    for text in [
        "xdp-generic",
        "198.18.0.100:80",
        "198.18.0.100:5353",
        "maglev",
        "conn table",
    ] {
        ensure!(dom.contains(text), "{text:?} not on the page");
    }
    // The health column: web's backends are checked (up, with a latency), dns has none.
    let health = browser.eval(
        "document.querySelector('[data-service=\"web\"] [data-backend]').children[3].textContent",
    )?;
    ensure!(
        health
            .as_str()
            .is_some_and(|h| h.starts_with("up ") && h.contains(" ms")),
        "web's health cell: {health}"
    );

    // Read-only, and self-contained.
    let actions = browser.eval(
        "document.querySelectorAll('form, button, input, select, textarea, a[href]').length",
    )?;
    ensure!(actions == 0, "{actions} controls on a read-only page");
    let foreign = browser.eval(&format!(
        "performance.getEntriesByType('resource').map(r => r.name).filter(n => !n.startsWith('{PAGE}'))"
    ))?;
    ensure!(
        foreign.as_array().is_some_and(Vec::is_empty),
        "fetched from elsewhere: {foreign}"
    );

    // Rates move under traffic: connections spaced over 3 s, while the page refreshes.
    let load = topo.client().enter(move || {
        std::thread::spawn(move || -> Result<()> {
            for i in 0..30 {
                client::http_get(vip).with_context(|| format!("connection {i}"))?;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        })
    })?;
    wait_for(&mut browser, "web's conn/s above zero", |b| {
        let rates =
            b.eval("document.querySelector('[data-service=\"web\"] [data-rates]').textContent")?;
        Ok(rates
            .as_str()
            .is_some_and(|r| r.contains("conn/s") && !r.starts_with("0 conn/s")))
    })?;
    load.join()
        .map_err(|_| anyhow::anyhow!("the load thread panicked"))??;

    // A drain through lbctl shows after the page's own refresh (no reload).
    let (code, _, err) = lbd.lbctl(&["backend", "drain", "web", &b2])?;
    ensure!(code == 0, "lbctl drain: {err}");
    let selector = format!("[data-service=\"web\"] [data-backend=\"{b2}\"]");
    wait_for(&mut browser, "b2 shown as draining", |b| {
        Ok(b.eval(&format!(
            "document.querySelector('{selector}')?.dataset.state"
        ))? == "draining")
    })?;
    let class = browser.eval(&format!(
        "document.querySelector('{selector} .state').className"
    ))?;
    ensure!(class == "state draining", "badge class {class}");

    // A screenshot: the window's size, and not blank (a page of text, badges and lines has many
    // colours; a blank one has one).
    let png = browser.screenshot()?;
    let shot = std::env::temp_dir().join("lbd-status-page.png");
    std::fs::write(&shot, &png).context("saving the screenshot")?;
    let (w, h, colours) = png_summary(&png)?;
    ensure!((w, h) == (1200, 900), "screenshot is {w}x{h}");
    ensure!(colours >= 16, "screenshot has {colours} colours: blank?");

    // A phone: the page fits its width; wide tables scroll inside their cards.
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        serde_json::json!({ "width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true }),
    )?;
    browser.reload()?;
    wait_for(&mut browser, "the page rendered on a phone", |b| {
        Ok(b.eval("document.body.dataset.loaded")? == "1")
    })?;
    let widths = browser.eval("[document.documentElement.scrollWidth, window.innerWidth]")?;
    ensure!(
        widths[0].as_u64() <= widths[1].as_u64(),
        "the page is wider than a phone: [scrollWidth, innerWidth] = {widths}"
    );
    drop(browser);
    lbd.stop()
}

/// Polls `check` until it holds, up to 15 s (the page refreshes every 2 s).
fn wait_for(
    browser: &mut Browser,
    what: &str,
    mut check: impl FnMut(&mut Browser) -> Result<bool>,
) -> Result<()> {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < Duration::from_secs(15) {
        match check(browser) {
            Ok(true) => return Ok(()),
            Ok(false) => last = None,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let timed_out = format!("timed out waiting for {what}");
    Err(match last {
        Some(e) => e.context(timed_out),
        None => anyhow::anyhow!(timed_out),
    })
}

/// One GET from inside the node; returns the status and the body length, and how long it took.
fn timed_get(topo: &Topology, node: Host, path: &str) -> Result<(u16, usize, Duration)> {
    let path = path.to_owned();
    topo.ns(node)
        .enter(move || -> Result<(u16, usize, Duration)> {
            let started = Instant::now();
            let mut s = TcpStream::connect(("127.0.0.1", 9300))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: lbd\r\nConnection: close\r\n\r\n"
            )?;
            let mut out = Vec::new();
            s.read_to_end(&mut out)?;
            let took = started.elapsed();
            let text = String::from_utf8_lossy(&out);
            let code = text
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .context("status code")?;
            let body = text.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len());
            Ok((code, body, took))
        })?
}

#[test]
fn the_page_and_its_json_answer_quickly_with_32_services_of_16_backends() -> Result<()> {
    let name = "status_page_big";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    let topo = Topology::builder(&test_tag(name))
        .lbd_nodes(1)
        .backends(1)
        .build()?;
    let node = Host::Lbd(1);
    let socket = LbdNode::socket_path(&topo, node);
    // The userspace proxy (no MAC to resolve); 16 backends per service, none answering: the
    // page's cost is the status, not the traffic.
    let mut config = format!(
        "[daemon]\ninterface = \"eth0\"\ndatapath = \"userspace\"\ncontrol_socket = \"{}\"\nstate_dir = \"{}\"\n",
        socket.display(),
        LbdNode::dir(&topo, node).display()
    );
    for s in 0..32u16 {
        let backends: Vec<String> = (0..16)
            .map(|b| {
                format!(
                    "{{ addr = \"198.18.{}.{}\" }}",
                    1 + s / 8,
                    1 + (s % 8) * 16 + b
                )
            })
            .collect();
        config += &format!(
            "\n[[service]]\nname = \"svc{s}\"\nvip = \"{VIP}:{}\"\nbackends = [{}]\n",
            8000 + s,
            backends.join(", ")
        );
    }
    let lbd = LbdNode::start(&topo, node, &config)?;
    let status = lbd.status()?;
    let backends: usize = status.services.iter().map(|s| s.backends.len()).sum();
    ensure!(
        (status.services.len(), backends) == (32, 512),
        "{} services, {backends} backends",
        status.services.len()
    );
    // The median of 15 answers each (a single answer can meet a busy CI core).
    for path in ["/", "/status.json"] {
        let mut times = Vec::new();
        for _ in 0..15 {
            let (code, len, took) = timed_get(&topo, node, path)?;
            ensure!(code == 200 && len > 1000, "{path}: {code}, {len} bytes");
            times.push(took);
        }
        times.sort();
        let median = times[times.len() / 2];
        eprintln!("{path}: median {median:?} over 15 (32 services x 16 backends)");
        ensure!(
            median <= Duration::from_millis(50),
            "{path} took {median:?} (median), more than 50 ms"
        );
    }
    let body = topo.ns(node).enter(|| -> Result<Value> {
        let mut s = TcpStream::connect(("127.0.0.1", 9300))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /status.json HTTP/1.1\r\nHost: lbd\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let (_, body) = out.split_once("\r\n\r\n").context("no body")?;
        Ok(serde_json::from_str(body)?)
    })??;
    ensure!(
        body["services"].as_array().map(Vec::len) == Some(32),
        "/status.json has not the 32 services"
    );
    lbd.stop()
}
