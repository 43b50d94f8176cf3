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
    let args = [
        "-D",
        "-n",
        "-i",
        "0.01",
        "-W",
        "1",
        "-c",
        &PINGS.to_string(),
        &crate::VIP.to_string(),
    ];
    let out = std::thread::scope(|scope| -> Result<String> {
        let ping = scope.spawn(|| topo.client().output("ping", &args, Duration::from_secs(30)));
        std::thread::sleep(FAIL_AFTER);
        fail()?;
        let out = ping
            .join()
            .map_err(|_| anyhow::anyhow!("ping thread panicked"))??;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    })?;
    if std::env::var_os("LBD_BENCH_DEBUG").is_some() {
        eprintln!("{out}");
    }
    let gap = longest_gap_ms(&out).context("no ping replies")?;
    if gap < 50.0 {
        bail!("no gap in the replies: the failure did not take the VIP away ({gap:.0} ms)");
    }
    Ok(gap)
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

fn lbd_failover() -> Result<f64> {
    let topo = Topology::builder(&crate::test_tag("bench_fo_lbd"))
        .lbd_nodes(2)
        .backends(3)
        .build()?;
    let _backends = topo.start_backends(&bin_path("lbd-test-backend")?)?;
    let all: Vec<_> = topo.backends().into_iter().map(|b| topo.ip(b)).collect();
    let mut nodes = Vec::new();
    for (node, prio) in [(Host::Lbd(1), 150), (Host::Lbd(2), 100)] {
        let mut c = lbd::config_text(
            Mode::XdpGeneric,
            &LbdNode::socket_path(&topo, node),
            &Services {
                tcp: all.clone(),
                udp: all.clone(),
            },
        );
        c.push_str(&lbd::vrrp_section(prio, true));
        nodes.push(LbdNode::start(&topo, node, &c)?);
    }
    wait_settled(&topo)?;
    let (first, _) = nodes.split_at_mut(1);
    ping_through_failure(&topo, || fail(&topo, Host::Lbd(1), &mut first[0].process))
}

fn keepalived_failover() -> Result<f64> {
    let topo = Topology::builder(&crate::test_tag("bench_fo_ka"))
        .lbd_nodes(2)
        .backends(1)
        .build()?;
    let dir = std::env::temp_dir().join(format!("lbdt-{}-ka", topo.tag()));
    let mut procs = Vec::new();
    for (node, prio) in [(Host::Lbd(1), 150u8), (Host::Lbd(2), 100)] {
        let d = dir.join(node.role());
        std::fs::create_dir_all(&d)?;
        let conf = d.join("keepalived.conf");
        std::fs::write(&conf, lbd::keepalived_config(prio, true))?;
        let mut cmd = topo.ns(node).command("keepalived");
        cmd.args(["-n", "-l", "-D", "-P", "-f"])
            .arg(&conf)
            .arg("-p")
            .arg(d.join("k.pid"))
            .arg("-r")
            .arg(d.join("v.pid"));
        procs.push(topo.ns(node).spawn(cmd)?);
    }
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
