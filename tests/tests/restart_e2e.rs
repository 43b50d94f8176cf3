//! A restart or a crash of lbd with a pinned XDP data path (`daemon.pin_dir`): under one open
//! keep-alive flow and a loop of new connections through the VIP, `kill -9` and a start a second
//! later, then SIGTERM and a start, fail no connection and keep the flow on its backend; a change
//! of the maps' layout builds fresh maps; `lbd --detach` leaves nothing behind.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use lbd_tests::{
    Host, Topology, bin_path, client,
    lbd::{self, LbdNode, Mode, Services, SingleNode},
    netns_tests_enabled, test_tag,
};

/// How long the connection loop waits between two new connections.
const LOOP_PAUSE: Duration = Duration::from_millis(20);
/// Most connections the loop makes (it stops earlier when told).
const LOOP_MAX: usize = 3000;
/// How long lbd stays dead after `kill -9`.
const DOWN: Duration = Duration::from_secs(1);

/// A bpffs of this test, mounted outside /sys: `ip netns exec` gives lbd a /sys of its own,
/// where a bpffs would vanish with the process. Its pins are removed and it is unmounted on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new(tag: &str) -> Result<PinDir> {
        let mount = PathBuf::from(format!("/run/lbdt-bpffs-{tag}"));
        std::fs::create_dir_all(&mount).with_context(|| format!("creating {}", mount.display()))?;
        let out = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&mount)
            .output()
            .context("running mount")?;
        ensure!(
            out.status.success(),
            "mount -t bpf bpf {}: {}",
            mount.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(PinDir(mount))
    }

    /// The pin directory lbd gets.
    fn pins(&self) -> PathBuf {
        self.0.join("eth0")
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        fn remove(dir: &Path) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    remove(&p);
                } else {
                    let _ = std::fs::remove_file(&p);
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        remove(&self.pins());
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The node's config with the data path pinned in `pins` and a connection table of `flows`.
fn config(topo: &Topology, pins: &Path, flows: u32) -> String {
    let node = Host::Lbd(1);
    let all: Vec<_> = topo.backends().into_iter().map(|b| topo.ip(b)).collect();
    let text = lbd::config_text(
        Mode::XdpNative,
        &LbdNode::socket_path(topo, node),
        &Services {
            tcp: all.clone(),
            udp: all,
        },
    );
    text.replacen(
        "[daemon]\n",
        &format!(
            "[daemon]\npin_dir = \"{}\"\nconntrack_max = {flows}\n",
            pins.display()
        ),
        1,
    )
}

/// What the client saw while lbd went through its events.
#[derive(Debug, Default)]
struct Seen {
    connections: usize,
    failed: Vec<String>,
    flow_requests: u64,
    flow_error: Option<String>,
}

/// Runs `events` while the client keeps one keep-alive flow busy and opens new connections in
/// a loop; returns what the client saw.
fn under_load(topo: &Topology, events: impl FnOnce() -> Result<()>) -> Result<Seen> {
    let vip = topo.vip_http();
    let stop = AtomicBool::new(false);
    let client = topo.client();
    std::thread::scope(|s| -> Result<Seen> {
        let flow = s.spawn(|| {
            client.enter(|| -> (u64, Option<String>) {
                keep_flow(vip, &stop).map_or_else(|e| (0, Some(format!("{e:#}"))), |n| (n, None))
            })
        });
        let loop_ = s.spawn(|| {
            client.enter(|| -> (usize, Vec<String>) {
                let mut failed = Vec::new();
                let mut n = 0;
                while n < LOOP_MAX && !stop.load(Ordering::Relaxed) {
                    n += 1;
                    if let Err(e) = client::http_get(vip) {
                        failed.push(format!("connection {n}: {e:#}"));
                    }
                    std::thread::sleep(LOOP_PAUSE);
                }
                (n, failed)
            })
        });
        // Let both run before the events, and after them.
        std::thread::sleep(Duration::from_millis(500));
        let result = events();
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let (flow_requests, flow_error) = flow
            .join()
            .map_err(|_| anyhow::anyhow!("the flow thread panicked"))?
            .context("entering the client")?;
        let (connections, failed) = loop_
            .join()
            .map_err(|_| anyhow::anyhow!("the loop thread panicked"))?
            .context("entering the client")?;
        result?;
        Ok(Seen {
            connections,
            failed,
            flow_requests,
            flow_error,
        })
    })
}

/// One keep-alive connection, a request every 100 ms until `stop`: every answer must come from
/// the first backend. Returns the requests answered.
fn keep_flow(vip: SocketAddr, stop: &AtomicBool) -> Result<u64> {
    let mut ka = client::KeepAlive::connect(vip, Duration::from_secs(3))?;
    let first = ka.get("/")?.backend;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let r = ka.get("/")?;
        if r.backend != first {
            bail!("the flow moved from {first} to {}", r.backend);
        }
    }
    let n = ka.requests();
    ka.close()?;
    Ok(n)
}

fn check(what: &str, seen: &Seen) -> Result<()> {
    eprintln!(
        "restart_e2e: {what}: {} connections, {} failed; the flow answered {} requests{}",
        seen.connections,
        seen.failed.len(),
        seen.flow_requests,
        seen.flow_error
            .as_ref()
            .map(|e| format!(", then failed: {e}"))
            .unwrap_or_default()
    );
    ensure!(
        seen.failed.is_empty(),
        "{what}: {} of {} new connections failed: {:?}",
        seen.failed.len(),
        seen.connections,
        &seen.failed[..seen.failed.len().min(5)]
    );
    ensure!(
        seen.flow_error.is_none(),
        "{what}: the open flow broke: {:?}",
        seen.flow_error
    );
    ensure!(
        seen.connections > 20,
        "{what}: the loop ran {} connections",
        seen.connections
    );
    Ok(())
}

/// Whether an XDP program is attached to eth0 of `node`.
fn xdp_attached(topo: &Topology, node: Host) -> Result<bool> {
    let out = topo
        .ns(node)
        .run("ip", &["-d", "link", "show", "dev", "eth0"])?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("prog/xdp"))
}

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

    // SIGTERM and a start, as systemctl restart does.
    let seen = under_load(&topo, || lbd.restart(&topo, node))?;
    check("SIGTERM and a start", &seen)?;

    // A new map layout (a bigger connection table): fresh maps, logged, balancing again.
    std::fs::write(lbd.config_path(), config(&topo, &pins, 131_072))
        .context("writing the config")?;
    lbd.restart(&topo, node)?;
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
