//! A restart or a crash of lbd under load, for the `restart_e2e` test and `cargo xtask bench
//! restart`: one kept-alive flow and a loop of new connections from the client through the VIP
//! while lbd goes through an event, on a data path pinned in a bpffs of the test's own.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use lb_daemon::xdp::pins::Pins;

use crate::{
    Host, Topology, client,
    lbd::{self, LbdNode, Mode, Services},
};

/// How long the connection loop waits between two new connections.
const LOOP_PAUSE: Duration = Duration::from_millis(20);
/// Most connections the loop makes (it stops earlier when told).
const LOOP_MAX: usize = 3000;
/// How long lbd stays dead after `kill -9`.
pub const DOWN: Duration = Duration::from_secs(1);

/// A bpffs of this test, mounted outside /sys: `ip netns exec` gives lbd a /sys of its own,
/// where a bpffs would vanish with the process. Its pins are removed and it is unmounted on drop.
pub struct PinDir(PathBuf);

impl PinDir {
    /// Mounts a bpffs for the test tagged `tag`.
    pub fn new(tag: &str) -> Result<PinDir> {
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
    pub fn pins(&self) -> PathBuf {
        self.0.join("eth0")
    }

    /// A pin directory named `name` (one per node sharing the mount).
    pub fn pins_named(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for e in entries.flatten() {
                let _ = Pins::new(&e.path(), String::new()).remove_all();
            }
        }
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The node's config with the data path pinned in `pins` and a connection table of `flows`.
pub fn config(topo: &Topology, pins: &Path, flows: u32) -> String {
    config_for(topo, Mode::XdpNative, Some(pins), flows)
}

/// The node's config for `mode`, pinned in `pins` when given.
pub fn config_for(topo: &Topology, mode: Mode, pins: Option<&Path>, flows: u32) -> String {
    config_for_node(topo, Host::Lbd(1), mode, pins, flows)
}

/// [`config_for`] for any lbd node of the topology.
pub fn config_for_node(
    topo: &Topology,
    node: Host,
    mode: Mode,
    pins: Option<&Path>,
    flows: u32,
) -> String {
    let all: Vec<_> = topo.backends().into_iter().map(|b| topo.ip(b)).collect();
    let text = lbd::config_text(
        mode,
        &LbdNode::socket_path(topo, node),
        &Services {
            tcp: all.clone(),
            udp: all,
        },
    );
    let pin = pins
        .map(|p| format!("pin_dir = \"{}\"\n", p.display()))
        .unwrap_or_default();
    text.replacen(
        "[daemon]\n",
        &format!("[daemon]\n{pin}conntrack_max = {flows}\n"),
        1,
    )
}

/// What the client saw while lbd went through its events.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// New connections made.
    pub connections: usize,
    /// The ones that failed, with why.
    pub failed: Vec<String>,
    /// Of those, the ones cut after lbd had accepted them (closed or reset before the answer),
    /// as opposed to refused or never answered at connect.
    pub cut: usize,
    /// Requests the kept-alive flow had answered.
    pub flow_requests: u64,
    /// How the flow broke, if it did.
    pub flow_error: Option<String>,
}

/// Runs `events` while the client keeps one keep-alive flow busy and opens new connections in
/// a loop; returns what the client saw.
pub fn under_load(topo: &Topology, events: impl FnOnce() -> Result<()>) -> Result<Seen> {
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
            client.enter(|| -> (usize, Vec<String>, usize) {
                let (mut failed, mut cut) = (Vec::new(), 0);
                let mut n = 0;
                while n < LOOP_MAX && !stop.load(Ordering::Relaxed) {
                    n += 1;
                    if let Err(e) = client::http_get(vip) {
                        if matches!(
                            client::classify(&e),
                            client::Failure::Closed | client::Failure::Reset
                        ) {
                            cut += 1;
                        }
                        failed.push(format!("connection {n}: {e:#}"));
                    }
                    std::thread::sleep(LOOP_PAUSE);
                }
                (n, failed, cut)
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
        let (connections, failed, cut) = loop_
            .join()
            .map_err(|_| anyhow::anyhow!("the loop thread panicked"))?
            .context("entering the client")?;
        result?;
        Ok(Seen {
            connections,
            failed,
            cut,
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

/// Prints what the client saw and fails unless no new connection failed, the flow held and the
/// loop really ran.
pub fn check(what: &str, seen: &Seen) -> Result<()> {
    check_new(what, seen)?;
    ensure!(
        seen.flow_error.is_none(),
        "{what}: the open flow broke: {:?}",
        seen.flow_error
    );
    Ok(())
}

/// [`check`] for new connections only: where the open flow cannot survive (a proxied
/// connection dies with its process).
pub fn check_new(what: &str, seen: &Seen) -> Result<()> {
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
        seen.connections > 20,
        "{what}: the loop ran {} connections",
        seen.connections
    );
    Ok(())
}

/// [`check_new`] for a process that dies with its open connections (the proxy stopping or
/// killed): the one connection it had accepted and was answering at that instant, if any, is
/// cut with it, by design; none may be refused.
pub fn check_new_but_the_one_in_flight(what: &str, seen: &Seen) -> Result<()> {
    let refused = seen.failed.len() - seen.cut;
    if seen.cut > 0 {
        eprintln!(
            "restart_e2e: {what}: the connection in flight at the event was cut: {:?}",
            seen.failed
        );
    }
    ensure!(
        refused == 0 && seen.cut <= 1,
        "{what}: {refused} new connections refused and {} cut (at most the one in flight may be): {:?}",
        seen.cut,
        &seen.failed[..seen.failed.len().min(5)]
    );
    check_new(
        what,
        &Seen {
            failed: Vec::new(),
            ..seen.clone()
        },
    )
}

/// The id of the XDP program on eth0 of `node`, if one is attached.
pub fn xdp_prog_id(topo: &Topology, node: Host) -> Result<Option<u32>> {
    let out = topo
        .ns(node)
        .run("ip", &["-d", "link", "show", "dev", "eth0"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split("prog/xdp id ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok()))
}

/// Whether `node` holds the VIP on its eth0.
pub fn holds_vip(topo: &Topology, node: Host) -> Result<bool> {
    let out = topo
        .ns(node)
        .run("ip", &["-4", "addr", "show", "dev", "eth0"])?;
    Ok(String::from_utf8_lossy(&out.stdout).contains(&format!("{}/32", crate::VIP)))
}

/// Whether an XDP program is attached to eth0 of `node`.
pub fn xdp_attached(topo: &Topology, node: Host) -> Result<bool> {
    let out = topo
        .ns(node)
        .run("ip", &["-d", "link", "show", "dev", "eth0"])?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("prog/xdp"))
}

/// Removes the pinned data path of `node` (its program leaves eth0) whatever its config: the
/// pins go, which releases the link.
pub fn detach(topo: &Topology, node: Host, pins: &Path) -> Result<()> {
    Pins::new(pins, String::new())
        .remove_all()
        .with_context(|| format!("removing {}", pins.display()))?;
    ensure!(
        !xdp_attached(topo, node)?,
        "a program is still on eth0 of {node} after its pins went"
    );
    Ok(())
}

/// A VRRP pair of lbd nodes at 1 s adverts (lbd1 priority 150, lbd2 100, generic XDP), each
/// pinned in `bpffs` under its role when given, settled: lbd1 MASTER, lbd2 BACKUP.
pub fn vrrp_pair(topo: &Topology, bpffs: Option<&PinDir>) -> Result<(LbdNode, LbdNode)> {
    let mut nodes = Vec::new();
    for (node, priority, state) in [(Host::Lbd(1), 150, "MASTER"), (Host::Lbd(2), 100, "BACKUP")] {
        let pins = bpffs.map(|b| b.pins_named(&node.role()));
        let mut c = config_for_node(topo, node, Mode::XdpGeneric, pins.as_deref(), 65_536);
        c.push_str(
            &lbd::vrrp_section(priority, true)
                .replace("advert_interval_ms = 100", "advert_interval_ms = 1000"),
        );
        nodes.push((LbdNode::start(topo, node, &c)?, state));
    }
    for (n, state) in &nodes {
        n.wait_status(Duration::from_secs(10), &format!("VRRP {state}"), |s| {
            s.vrrp.as_ref().is_some_and(|v| v.state == *state)
        })?;
    }
    let mut it = nodes.into_iter().map(|(n, _)| n);
    match (it.next(), it.next()) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => bail!("the pair did not start"),
    }
}
