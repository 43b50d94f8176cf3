//! What the VRRP tests of both families share: who holds a VIP, a node failing as a crashed
//! host does, connections coming back after a failover, and keepalived as the peer.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use lb_testkit::wait_until;

use crate::{Family, Host, Spawned, Topology, client};

/// How long a VIP may take to settle on a node.
pub const MASTER_WAIT: Duration = Duration::from_secs(10);

/// Whether `node` holds the VIP of `family` on its eth0.
pub fn holds_vip(topo: &Topology, node: Host, family: Family) -> Result<bool> {
    let out = topo
        .try_ns(node)?
        .run("ip", &[family.ip_flag(), "addr", "show", "dev", "eth0"])?;
    Ok(String::from_utf8_lossy(&out.stdout).contains(&family.vip_cidr()))
}

/// Exactly one of the live nodes holds the VIP of `family`: waits (bounded) until one does,
/// then samples a few times over 300 ms that it stays so. The samples are the point: they
/// assert that something does not happen (the VIP does not flap between the nodes, or sit on
/// both).
pub fn exactly_one_holds_vip(topo: &Topology, live: &[Host], family: Family) -> Result<Host> {
    let holders = || -> Vec<Host> {
        live.iter()
            .copied()
            .filter(|n| holds_vip(topo, *n, family).unwrap_or(false))
            .collect()
    };
    let mut last = Vec::new();
    wait_until(
        &format!("exactly one node holding the {family} VIP"),
        MASTER_WAIT,
        || {
            last = holders();
            last.len() == 1
        },
    )
    .with_context(|| format!("{family} VIP held by {last:?} among {live:?}"))?;
    let holder = last[0];
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(100));
        let now = holders();
        ensure!(
            now == [holder],
            "{family} VIP moved without a failure: held by {now:?}, was {holder:?}"
        );
    }
    Ok(holder)
}

/// A node fails: its process is killed (SIGKILL) and it drops off the network, as a crashed host
/// does. (A process killed alone would leave the VIP on the host's interface, where the kernel,
/// with no balancer, would answer the VIP's TCP traffic with resets.)
pub fn fail_node(topo: &Topology, node: Host, process: &mut Spawned) -> Result<()> {
    process.signal(libc::SIGKILL)?;
    topo.try_ns(node)?.ip(&["link", "set", "eth0", "down"])?;
    Ok(())
}

/// Connections to `vip` succeed again within a generous bound after a failover, then 20 in a
/// row.
pub fn connections_recover(topo: &Topology, vip: SocketAddr) -> Result<()> {
    topo.client().enter(move || -> Result<()> {
        let mut last = None;
        wait_until(&format!("{vip} answering"), Duration::from_secs(10), || {
            match client::http_get_path(vip, "/", Duration::from_secs(1)) {
                Ok(r) if r.status == 200 => true,
                other => {
                    last = Some(format!("{other:?}"));
                    false
                }
            }
        })
        .with_context(|| format!("after the failover; last answer: {last:?}"))?;
        for i in 0..20 {
            client::http_get(vip).with_context(|| format!("connection {i} after the failover"))?;
        }
        Ok(())
    })?
}

/// A 2 MB stream from the client through `vip`; once bytes flow (the client has received
/// some, so the stream is under way through the current master), `fail` runs. Returns how the
/// stream ended.
pub fn stream_across(
    topo: &Topology,
    vip: SocketAddr,
    fail: impl FnOnce() -> Result<()>,
) -> Result<client::StreamResult> {
    std::thread::scope(|scope| -> Result<client::StreamResult> {
        let stream = scope.spawn(|| {
            topo.client().enter(move || {
                client::http_stream(vip, 2_000_000, 20_000, 30, Duration::from_secs(40))
            })
        });
        let stream_to = vip.to_string();
        lb_testkit::try_wait_until(
            &format!("the stream from {vip} flowing"),
            Duration::from_secs(10),
            || -> Result<bool> {
                let out = topo
                    .client()
                    .run("ss", &["-Htin", "state", "established", "dst", &stream_to])?;
                Ok(String::from_utf8_lossy(&out.stdout).contains("bytes_received:"))
            },
        )?;
        fail()?;
        stream
            .join()
            .map_err(|_| anyhow::anyhow!("stream thread panicked"))??
    })
}

/// tshark, where installed (with `CI=true` it must be), decodes the adverts in `capture` as
/// VRRP version 3 with good checksums, and its text holds each of `expect` (the IP header's
/// fields of the family).
pub fn tshark_decodes_vrrp3(test: &str, capture: &Path, expect: &[&str]) -> Result<()> {
    if !lb_testkit::require_or_skip(
        &format!("{test} (tshark decode)"),
        lb_testkit::tool_unavailable_reason("tshark", "--version"),
    ) {
        return Ok(());
    }
    let out = std::process::Command::new("tshark")
        .arg("-r")
        .arg(capture)
        .args(["-Y", "vrrp", "-V"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&&str> = std::iter::once(&"VRRP protocol version: 3")
        .chain(expect)
        .filter(|e| !text.contains(**e))
        .collect();
    ensure!(
        missing.is_empty(),
        "tshark's decode lacks {missing:?} ({} bytes captured): {text} {}",
        std::fs::metadata(capture).map(|m| m.len()).unwrap_or(0),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        text.contains("[Checksum Status: Good]") && !text.contains("[Checksum Status: Bad]"),
        "tshark checksum: {text}"
    );
    Ok(())
}

/// keepalived from Debian's packages, in a node namespace, with a config file of its own.
pub struct Keepalived {
    /// The running keepalived.
    pub process: Spawned,
    dir: PathBuf,
}

impl Keepalived {
    /// Starts keepalived on `node` with the config text `config`.
    pub fn start(topo: &Topology, node: Host, config: &str) -> Result<Keepalived> {
        let dir = std::env::temp_dir().join(format!("lbdt-{}-keepalived-{node}", topo.tag()));
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("keepalived.conf");
        std::fs::write(&conf, config)?;
        let ns = topo.try_ns(node)?;
        let mut cmd = ns.command("keepalived");
        cmd.args(["-n", "-l", "-D", "-P", "-f"]).arg(&conf);
        cmd.arg("-p")
            .arg(dir.join("k.pid"))
            .arg("-r")
            .arg(dir.join("v.pid"));
        let process = ns.spawn(cmd)?;
        Ok(Keepalived { process, dir })
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
