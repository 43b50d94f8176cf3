//! VRRP failover time, lbd against keepalived, in one run: the client pings the VIP every
//! 10 ms, the master node fails (its process is SIGKILLed and its link goes down, as a crashed
//! host), and the longest gap between replies is the failover time.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{
    Host, Topology, bin_path,
    lbd::{self, LbdNode, Mode, Services},
};

/// Pings sent: 10 ms apart (ping's timer makes it ~17 ms here), 3 to 5 s in all, bounded.
const PINGS: u32 = 300;
/// Runs of each, alternating; the median is reported (the failure lands at a random phase of
/// the advert cycle, so single runs spread over about one advert interval).
const RUNS: usize = 3;
/// When the master fails, after the first ping.
const FAIL_AFTER: Duration = Duration::from_millis(1500);

/// The replies in `ping` output.
pub fn ping_replies(output: &std::process::Output) -> usize {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains("bytes from"))
        .count()
}

/// Longest gap between consecutive ping replies, in ms, from `ping -D` output.
pub fn longest_gap_ms(output: &str) -> Option<f64> {
    let stamps: Vec<f64> = output
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    stamps
        .windows(2)
        .map(|w| (w[1] - w[0]) * 1000.0)
        .fold(None, |m, g| Some(m.map_or(g, |m: f64| m.max(g))))
}

fn ping_through_failure(topo: &Topology, fail: impl FnOnce() -> Result<()>) -> Result<f64> {
    let gap = ping_gap(topo, fail)?;
    if gap < 50.0 {
        bail!("no gap in the replies: the failure did not take the VIP away ({gap:.0} ms)");
    }
    Ok(gap)
}

/// `count` pings from the client to the VIP, 10 ms apart, each line stamped (`ping -D`); bounded
/// in time.
pub fn ping_vip(topo: &Topology, count: u32) -> Result<std::process::Output> {
    let args = [
        "-D",
        "-n",
        "-i",
        "0.01",
        "-W",
        "1",
        "-c",
        &count.to_string(),
        &crate::VIP.to_string(),
    ];
    topo.client().output("ping", &args, Duration::from_secs(30))
}

/// The longest gap between ping replies (10 ms apart) while `event` happens.
fn ping_gap(topo: &Topology, event: impl FnOnce() -> Result<()>) -> Result<f64> {
    let out = std::thread::scope(|scope| -> Result<String> {
        let ping = scope.spawn(|| ping_vip(topo, PINGS));
        std::thread::sleep(FAIL_AFTER);
        event()?;
        let out = ping
            .join()
            .map_err(|_| anyhow::anyhow!("ping thread panicked"))??;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    })?;
    if std::env::var_os("LBD_BENCH_DEBUG").is_some() {
        eprintln!("{out}");
    }
    longest_gap_ms(&out).context("no ping replies")
}

fn fail(topo: &Topology, node: Host, process: &mut crate::Spawned) -> Result<()> {
    process.signal(libc::SIGKILL)?;
    topo.ns(node).ip(&["link", "set", "eth0", "down"])?;
    Ok(())
}

fn holds_vip(topo: &Topology, node: Host) -> Result<bool> {
    let out = topo
        .ns(node)
        .run("ip", &["-4", "addr", "show", "dev", "eth0"])?;
    Ok(String::from_utf8_lossy(&out.stdout).contains(&format!("{}/32", crate::VIP)))
}

/// Waits until lbd1 alone holds the VIP (the pair has settled), then a little longer.
fn wait_settled(topo: &Topology) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if holds_vip(topo, Host::Lbd(1))? && !holds_vip(topo, Host::Lbd(2))? {
            std::thread::sleep(Duration::from_millis(500));
            if holds_vip(topo, Host::Lbd(1))? && !holds_vip(topo, Host::Lbd(2))? {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the pair did not settle with lbd1 alone holding the VIP")
}

/// The two lbd nodes of a failover run (lbd1 priority 150, lbd2 100) at `advert_ms`, settled.
fn lbd_pair(topo: &Topology, advert_ms: u32) -> Result<Vec<LbdNode>> {
    let all: Vec<_> = topo.backends().into_iter().map(|b| topo.ip(b)).collect();
    let mut nodes = Vec::new();
    for (node, prio) in [(Host::Lbd(1), 150), (Host::Lbd(2), 100)] {
        let mut c = lbd::config_text(
            Mode::XdpGeneric,
            &LbdNode::socket_path(topo, node),
            &Services {
                tcp: all.clone(),
                udp: all.clone(),
            },
        );
        c.push_str(&lbd::vrrp_section(prio, true).replace(
            "advert_interval_ms = 100",
            &format!("advert_interval_ms = {advert_ms}"),
        ));
        nodes.push(LbdNode::start(topo, node, &c)?);
    }
    wait_settled(topo)?;
    Ok(nodes)
}

/// A planned handover of lbd: the master is stopped (SIGTERM; it resigns make-before-break),
/// under a ping every 10 ms. Returns the longest gap.
fn lbd_planned(advert_ms: u32) -> Result<f64> {
    let topo = Topology::builder(&crate::test_tag("bench_ho_lbd"))
        .lbd_nodes(2)
        .backends(1)
        .build()?;
    let _backends = topo.start_backends(&bin_path("lbd-test-backend")?)?;
    let mut nodes = lbd_pair(&topo, advert_ms)?;
    let first = nodes.remove(0);
    ping_gap(&topo, || first.stop())
}

/// The same for keepalived: its master gets SIGTERM (it resigns with priority 0).
fn keepalived_planned(advert_ms: u32) -> Result<f64> {
    let topo = Topology::builder(&crate::test_tag("bench_ho_ka"))
        .lbd_nodes(2)
        .backends(1)
        .build()?;
    let dir = std::env::temp_dir().join(format!("lbdt-{}-ka", topo.tag()));
    let procs = start_keepalived_pair(&topo, &dir, advert_ms)?;
    wait_settled(&topo)?;
    let result = ping_gap(&topo, || {
        for pid in topo.ns(Host::Lbd(1)).pids()? {
            // SAFETY: kill(2) on a process of a namespace this run created.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        Ok(())
    });
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn start_keepalived_pair(
    topo: &Topology,
    dir: &std::path::Path,
    advert_ms: u32,
) -> Result<Vec<crate::Spawned>> {
    let mut procs = Vec::new();
    for (node, prio) in [(Host::Lbd(1), 150u8), (Host::Lbd(2), 100)] {
        let d = dir.join(node.role());
        std::fs::create_dir_all(&d)?;
        let conf = d.join("keepalived.conf");
        let text = lbd::keepalived_config(prio, true).replace(
            "advert_int 0.1",
            &format!("advert_int {}", f64::from(advert_ms) / 1000.0),
        );
        std::fs::write(&conf, text)?;
        let mut cmd = topo.ns(node).command("keepalived");
        cmd.args(["-n", "-l", "-D", "-P", "-f"])
            .arg(&conf)
            .arg("-p")
            .arg(d.join("k.pid"))
            .arg("-r")
            .arg(d.join("v.pid"));
        procs.push(topo.ns(node).spawn(cmd)?);
    }
    Ok(procs)
}

/// Planned handovers (make-before-break in lbd; keepalived resigns and lets go at once), at 1 s
/// and 100 ms adverts, the median of [`RUNS`] each: the longest gap in replies to a ping every
/// 10 ms (the ping interval itself is the floor).
pub fn planned_handover() -> Result<Vec<(String, f64)>> {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut out = Vec::new();
    for (advert_ms, label) in [(1000, "1s"), (100, "100ms")] {
        let (mut lbd, mut ka) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            lbd.push(lbd_planned(advert_ms).context("lbd planned handover")?);
            ka.push(keepalived_planned(advert_ms).context("keepalived planned handover")?);
        }
        out.push((format!("vrrp_planned_handover_gap_ms_{label}"), median(lbd)));
        out.push((
            format!("vrrp_planned_handover_gap_ms_{label}_keepalived"),
            median(ka),
        ));
    }
    Ok(out)
}

fn lbd_failover() -> Result<f64> {
    let topo = Topology::builder(&crate::test_tag("bench_fo_lbd"))
        .lbd_nodes(2)
        .backends(3)
        .build()?;
    let _backends = topo.start_backends(&bin_path("lbd-test-backend")?)?;
    let mut nodes = lbd_pair(&topo, 100)?;
    let (first, _) = nodes.split_at_mut(1);
    ping_through_failure(&topo, || fail(&topo, Host::Lbd(1), &mut first[0].process))
}

fn keepalived_failover() -> Result<f64> {
    let topo = Topology::builder(&crate::test_tag("bench_fo_ka"))
        .lbd_nodes(2)
        .backends(1)
        .build()?;
    let dir = std::env::temp_dir().join(format!("lbdt-{}-ka", topo.tag()));
    let procs = start_keepalived_pair(&topo, &dir, 100)?;
    wait_settled(&topo)?;
    let result = ping_through_failure(&topo, || {
        // keepalived runs a parent and a VRRP child: kill every process of the node.
        for pid in topo.ns(Host::Lbd(1)).pids()? {
            // SAFETY: kill(2) on a process of a namespace this run created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        topo.ns(Host::Lbd(1)).ip(&["link", "set", "eth0", "down"])?;
        Ok(())
    });
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Measures both and returns the figures.
pub fn run() -> Result<Vec<(String, f64)>> {
    let (mut lbd, mut ka) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        lbd.push(lbd_failover().context("lbd failover")?);
        ka.push(keepalived_failover().context("keepalived failover")?);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (lbd, ka) = (median(&mut lbd), median(&mut ka));
    Ok(vec![
        ("failover_ms_lbd".into(), lbd),
        ("failover_ms_keepalived".into(), ka),
        ("failover_ratio".into(), lbd / ka),
    ])
}

#[cfg(test)]
mod tests {
    use super::longest_gap_ms;

    #[test]
    fn gap_from_ping_output() {
        let out = "PING x\n[100.000] 64 bytes from 198.18.0.100: icmp_seq=1\n[100.010] 64 bytes from 198.18.0.100: icmp_seq=2\n\
                   [100.400] 64 bytes from 198.18.0.100: icmp_seq=40\nno answer yet for icmp_seq=3\n";
        let g = longest_gap_ms(out).unwrap();
        assert!((g - 390.0).abs() < 0.01, "{g}");
        assert_eq!(longest_gap_ms("nothing"), None);
    }
}
