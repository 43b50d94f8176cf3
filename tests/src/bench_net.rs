//! Through the namespace topology, in one run: new TCP connections per second with p50/p99
//! latency (`wrk`, one new connection per request) and iperf3 throughput (1 and 4 streams), for
//! each path a client can take to the one backend `b1`:
//!
//! | path | what carries client → backend |
//! | --- | --- |
//! | `direct_offload_off`, `direct_offload_on` | nothing: the client talks to `b1`'s own address |
//! | `bare` | `bare_tx` natively on lbd2's `eth0`: dst MAC := `b1`, src MAC := old dst, `XDP_TX` |
//! | `xdp` | lbd, `datapath = "xdp"` (native), direct routing to `b1` |
//! | `bare_v6`, `xdp_v6` | the same two over IPv6: the client to [`VIP6`], lbd to `b1`'s IPv6 address |
//! | `xdp_3backends` | the same over `b1`–`b3` (connection rate only) |
//! | `userspace` | lbd, `datapath = "userspace"`: the TCP proxy to `b1`'s own address |
//! | `haproxy` | HAProxy (`mode tcp`, splice on, as lbd's proxy) to `b1`'s own address, on VIP ports 8080 and 5202 |
//!
//! The XDP paths run with the client's TX checksum offload off (native XDP on veth loses partial
//! checksums) and the proxies with it on, each group against its own `direct` baseline. lbd1 holds
//! the VIP throughout. The client has a permanent neighbour entry for the VIP (`bare_tx` would
//! forward the client's ARP probes to the backend, which never answers ARP for the VIP), and
//! that entry picks the node: lbd2, which runs `bare_tx`, for `bare`, lbd1 for the rest. So
//! `bare` and `xdp` are two identical nodes that run at the same time, and switching between
//! them is one neighbour update instead of a restart. The IPv6 twins run on the same two
//! balancers (one XDP program per node): `bare_tx` forwards IPv6 frames as is, and lbd1's lbd
//! then serves [`VIP6`] (on lbd1 too, deprecated) beside the IPv4 VIP; the client's permanent
//! neighbour entry for [`VIP6`] picks the node.
//!
//! The paths are measured in rounds, every other round in reverse order. Within a round, the
//! paths that can run side by side do so and take turns (A B C C B A for each measurement), so
//! that all see the same moments of the machine: `direct_offload_off`, `bare`, `xdp`, `bare_v6`
//! and `xdp_v6` (so that the `xdp_v6_*_vs_xdp` ratios, IPv6 over IPv4, pair turns); then
//! `direct_offload_on` and the two proxies (HAProxy on its own ports); `xdp_3backends` alone.
//! iperf3 runs with the first second (slow start) left out, and for the XDP group with the
//! client pinned to CPU 0 and the server to CPU 1 (see `NetPath::pin_iperf3`).
//! Each path's figure is its median over the rounds; each ratio is the median over the rounds
//! of the ratio of the two paths within the round. On these shared 2-core machines one path's
//! rate moves by ±15% from one minute to the next, so a ratio of two best-of figures compares
//! two lucky moments; paired within a round, and in turns, most of that drift cancels.
//! `xdp_throughput_vs_bare`, `userspace_throughput_vs_haproxy`, `xdp_v6_throughput_vs_xdp` and
//! `xdp_v6_throughput_vs_bare_v6`, the throughput goals, are the lower of the 1- and 4-stream
//! ratios.
//!
//! For the two proxies the bench also reads the CPU time (user + system) of the forwarding
//! process from `/proc`: `cpu_us_per_conn_*` (per wrk request, each a new connection) and
//! `cpu_ms_per_gb_4stream_*`: the proxy's own cost, where a rate also carries the client's and
//! the backends' share of the two cores (it still grows when the machine is slow). For lbd's
//! XDP path the same reading gives `daemon_cpu_us_per_conn_xdp` (and `_xdp_v6`, the same
//! process during the IPv6 turns): its control plane's cost (counters, the connection table's
//! scans) while the kernel forwards.
//!
//! `LBD_BENCH_NET_SECS` (default 3) sets each measurement's length and `LBD_BENCH_NET_ROUNDS`
//! (default 5) the rounds. `LBD_BENCH_NET_PATHS` (a comma-separated list of the path names
//! above; default all) measures only those paths, for quick comparisons while tuning one of
//! them; ratios whose paths were not measured are left out.
//!
//! wrk's latency runs from the request's first write to the end of its response, so it leaves
//! out the client's own connect (SYN, SYN-ACK); the backend's accept is in it, and for the
//! proxies their connect to the backend.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use lb_daemon::xdp;

use crate::{
    Family, HTTP_PORT, Host, Spawned, Topology, VIP, VIP6, bin_path, client,
    lbd::{self, LbdNode, Mode, Services},
};

/// The port of the iperf3 server on the backends (and of the iperf3 service on the VIP).
pub const IPERF_PORT: u16 = 5201;
/// HAProxy's web service on the VIP (to the backends' port 80).
const HAPROXY_HTTP_PORT: u16 = 8080;
/// HAProxy's iperf3 service on the VIP (to the backends' iperf3 port).
const HAPROXY_IPERF_PORT: u16 = 5202;
/// wrk threads.
const WRK_THREADS: u32 = 2;
/// wrk connections open at once.
const WRK_CONNECTIONS: u32 = 32;
/// Default length of each measurement, in seconds.
const DEFAULT_SECS: u32 = 3;
/// Seconds of wrk load each path gets before its measurements (not counted).
const WARM_UP_SECS: u32 = 1;
/// Default number of rounds.
const DEFAULT_ROUNDS: u32 = 5;
/// How long a balancer may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// The share of wrk's requests that must have been new connections at the backends.
const MIN_NEW_CONNECTIONS_PER_REQUEST: f64 = 0.95;

/// The paths, in the order they run within a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NetPath {
    DirectOffloadOff,
    Bare,
    Xdp,
    DirectOffloadOff6,
    Bare6,
    Xdp6,
    Xdp3,
    DirectOffloadOn,
    Userspace,
    Haproxy,
}

impl NetPath {
    const ALL: [NetPath; 10] = [
        NetPath::DirectOffloadOff,
        NetPath::Bare,
        NetPath::Xdp,
        NetPath::DirectOffloadOff6,
        NetPath::Bare6,
        NetPath::Xdp6,
        NetPath::Xdp3,
        NetPath::DirectOffloadOn,
        NetPath::Userspace,
        NetPath::Haproxy,
    ];

    /// The path's index in a round's samples: its place in [`NetPath::ALL`].
    fn slot(self) -> usize {
        NetPath::ALL
            .iter()
            .position(|&q| q == self)
            .expect("every path is in ALL")
    }

    fn name(self) -> &'static str {
        match self {
            NetPath::DirectOffloadOff => "direct_offload_off",
            NetPath::Bare => "bare",
            NetPath::Xdp => "xdp",
            NetPath::DirectOffloadOff6 => "direct_offload_off_v6",
            NetPath::Bare6 => "bare_v6",
            NetPath::Xdp6 => "xdp_v6",
            NetPath::Xdp3 => "xdp_3backends",
            NetPath::DirectOffloadOn => "direct_offload_on",
            NetPath::Userspace => "userspace",
            NetPath::Haproxy => "haproxy",
        }
    }

    /// Whether iperf3 runs on this path (one backend only: iperf3's control and data connections
    /// must meet on one server).
    fn throughput(self) -> bool {
        self != NetPath::Xdp3
    }

    /// The client's TX checksum offload on this path.
    fn client_tx_offload(self) -> bool {
        matches!(
            self,
            NetPath::DirectOffloadOn | NetPath::Userspace | NetPath::Haproxy
        )
    }

    /// Whether a userspace proxy forwards on this path (whose process CPU is then measured).
    fn proxy(self) -> bool {
        matches!(self, NetPath::Userspace | NetPath::Haproxy)
    }

    /// Whether the path needs `xdp_pass` on the lbd nodes' bridge-side peers (native XDP_TX on
    /// veth).
    fn native_xdp(self) -> bool {
        matches!(
            self,
            NetPath::Bare | NetPath::Xdp | NetPath::Bare6 | NetPath::Xdp6 | NetPath::Xdp3
        )
    }

    /// The paths of one group run side by side and take turns: the XDP paths of both families
    /// with their baseline, the proxies with theirs. `xdp_3backends` needs lbd1's web service
    /// with three backends, so it runs alone.
    fn group(self) -> u8 {
        match self {
            NetPath::DirectOffloadOff
            | NetPath::Bare
            | NetPath::Xdp
            | NetPath::DirectOffloadOff6
            | NetPath::Bare6
            | NetPath::Xdp6 => 0,
            NetPath::Xdp3 => 1,
            NetPath::DirectOffloadOn | NetPath::Userspace | NetPath::Haproxy => 2,
        }
    }

    /// Whether iperf3's client and server are pinned to CPUs 0 and 1 on this path: on the XDP
    /// group's paths the forwarding runs in softirq on the sender's CPU, so pinning gives each
    /// path the same layout. A proxy is a third process that needs a CPU of its own, and pinned
    /// endpoints would measure how the scheduler squeezes it in, so its group is not pinned.
    fn pin_iperf3(self) -> bool {
        self.group() == 0
    }

    /// The lbd node the client's frames for the VIP go to.
    fn node(self) -> Host {
        match self {
            NetPath::Bare | NetPath::Bare6 => Host::Lbd(2),
            _ => Host::Lbd(1),
        }
    }

    /// The address family the client speaks on this path.
    fn family(self) -> Family {
        match self {
            NetPath::DirectOffloadOff6 | NetPath::Bare6 | NetPath::Xdp6 => Family::V6,
            _ => Family::V4,
        }
    }

    /// The path whose balancer also carries this one: an IPv6 twin shares its IPv4 path's
    /// (`bare_tx` forwards either family as is, and lbd serves both VIPs from one config), as
    /// one node holds one XDP program.
    fn carrier(self) -> NetPath {
        match self {
            NetPath::DirectOffloadOff6 => NetPath::DirectOffloadOff,
            NetPath::Bare6 => NetPath::Bare,
            NetPath::Xdp6 => NetPath::Xdp,
            p => p,
        }
    }

    /// The ports of the web and the iperf3 service on this path. HAProxy listens on its own
    /// ports, so that it can run beside lbd's proxy and the two be measured in turns.
    fn ports(self) -> (u16, u16) {
        match self {
            NetPath::Haproxy => (HAPROXY_HTTP_PORT, HAPROXY_IPERF_PORT),
            _ => (HTTP_PORT, IPERF_PORT),
        }
    }

    /// Where the client connects.
    fn target(self) -> IpAddr {
        match self {
            NetPath::DirectOffloadOff | NetPath::DirectOffloadOn => Host::Backend(1).ip().into(),
            NetPath::DirectOffloadOff6 => Host::Backend(1).ip6().into(),
            p => p.family().vip(),
        }
    }

    /// The backends that may answer.
    fn backends(self) -> Vec<Host> {
        match self {
            NetPath::Xdp3 => (1..=3).map(Host::Backend).collect(),
            _ => vec![Host::Backend(1)],
        }
    }
}

/// Lengths and counts of one run.
#[derive(Debug)]
struct Settings {
    secs: u32,
    rounds: u32,
    paths: Vec<NetPath>,
}

/// The paths named in `LBD_BENCH_NET_PATHS`, or all.
fn env_paths() -> Result<Vec<NetPath>> {
    let Ok(list) = std::env::var("LBD_BENCH_NET_PATHS") else {
        return Ok(NetPath::ALL.to_vec());
    };
    let mut paths = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let path = NetPath::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .with_context(|| {
                let all: Vec<&str> = NetPath::ALL.iter().map(|p| p.name()).collect();
                format!(
                    "LBD_BENCH_NET_PATHS: unknown path {name:?} (allowed: {})",
                    all.join(", ")
                )
            })?;
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    ensure!(!paths.is_empty(), "LBD_BENCH_NET_PATHS names no path");
    Ok(paths)
}

fn env_u32(name: &str, default: u32, range: std::ops::RangeInclusive<u32>) -> Result<u32> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => {
            let n: u32 = v
                .trim()
                .parse()
                .with_context(|| format!("{name}={v:?} is not a whole number"))?;
            ensure!(
                range.contains(&n),
                "{name}={n} is out of range (allowed: {} to {})",
                range.start(),
                range.end()
            );
            Ok(n)
        }
    }
}

/// What wrk measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WrkFigures {
    /// Completed requests.
    pub requests: u64,
    /// Requests per second.
    pub rate: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx responses.
    pub errors: u64,
}

/// A wrk duration (`512.00us`, `1.10ms`, `2.00s`, `1.00m`) in milliseconds.
fn wrk_duration_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let scale = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(num * scale)
}

/// Parses the output of `wrk --latency`.
pub fn parse_wrk(out: &str) -> Result<WrkFigures> {
    let mut requests = None;
    let mut rate = None;
    let (mut p50, mut p99) = (None, None);
    let mut errors = 0u64;
    let mut in_distribution = false;
    for line in out.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            let mut parts = t.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(pct), Some(value), None) if pct.ends_with('%') => {
                    let ms = wrk_duration_ms(value)
                        .with_context(|| format!("wrk: bad latency {value:?} in {t:?}"))?;
                    match pct {
                        "50%" | "50.000%" => p50 = Some(ms),
                        "99%" | "99.000%" => p99 = Some(ms),
                        _ => {}
                    }
                    continue;
                }
                _ => in_distribution = false,
            }
        }
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            rate = Some(
                v.trim()
                    .parse::<f64>()
                    .with_context(|| format!("wrk: bad rate in {t:?}"))?,
            );
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // `connect 0, read 0, write 0, timeout 0`
            for item in v.split(',') {
                let n = item
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok())
                    .with_context(|| format!("wrk: bad socket errors in {t:?}"))?;
                errors += n;
            }
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v
                .trim()
                .parse::<u64>()
                .with_context(|| format!("wrk: bad non-2xx count in {t:?}"))?;
        } else if t.contains(" requests in ") {
            requests = t.split_whitespace().next().and_then(|n| n.parse().ok());
        }
    }
    let missing = |what: &str| format!("wrk printed no {what}; its output: {out}");
    Ok(WrkFigures {
        requests: requests.with_context(|| missing("request count"))?,
        rate: rate.with_context(|| missing("Requests/sec"))?,
        p50_ms: p50.with_context(|| missing("50% latency (was --latency given?)"))?,
        p99_ms: p99.with_context(|| missing("99% latency (was --latency given?)"))?,
        errors,
    })
}

/// The receiver's throughput in Gbit/s from `iperf3 -J` output.
pub fn parse_iperf3_gbps(json: &str) -> Result<f64> {
    let v: serde_json::Value = serde_json::from_str(json).with_context(|| {
        format!(
            "iperf3 printed no JSON: {}",
            json.chars().take(500).collect::<String>()
        )
    })?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {e}");
    }
    let bps = v
        .pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .context("iperf3 JSON has no end.sum_received.bits_per_second")?;
    Ok(bps / 1e9)
}

/// TCP passive opens of a namespace (`PassiveOpens` of `/proc/net/snmp`), from a thread in it.
/// The kernel keeps one TCP MIB for both families, so IPv6 connections count here too.
fn passive_opens(topo: &Topology, host: Host) -> Result<u64> {
    let snmp = topo
        .try_ns(host)?
        .enter(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))?
        .with_context(|| format!("reading /proc/net/snmp of {host}"))?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        bail!("no Tcp lines in /proc/net/snmp of {host}");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "PassiveOpens")
        .and_then(|(_, v)| v.parse().ok())
        .with_context(|| format!("no PassiveOpens in /proc/net/snmp of {host}"))
}

/// The absolute path of `tool`, or an error saying that `cargo xtask setup` installs it.
fn find_tool(tool: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "`{tool}` is not installed; `cargo xtask setup` installs it (Debian package {tool})"
            )
        })
}

/// The external tools this part runs.
struct Tools {
    wrk: PathBuf,
    iperf3: PathBuf,
    haproxy: PathBuf,
}

/// `wrk` from the client to `target`:80, every request on a new connection; checks at the
/// backends that the connections really were new.
fn run_wrk(topo: &Topology, tools: &Tools, path: NetPath, secs: u32) -> Result<WrkFigures> {
    let backends = path.backends();
    let opens =
        |topo: &Topology| -> Result<u64> { backends.iter().map(|&b| passive_opens(topo, b)).sum() };
    let before = opens(topo)?;
    let url = format!("http://{}/", SocketAddr::new(path.target(), path.ports().0));
    let args = [
        format!("-t{WRK_THREADS}"),
        format!("-c{WRK_CONNECTIONS}"),
        format!("-d{secs}s"),
        "--latency".to_owned(),
        "-H".to_owned(),
        "Connection: close".to_owned(),
        url,
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = topo.client().output(
        &tools.wrk.display().to_string(),
        &args,
        Duration::from_secs(u64::from(secs) + 21),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {} {}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let figures = parse_wrk(&stdout)?;
    if figures.errors > 0 {
        // Counted in conn_errors_*; what kind they were is only in wrk's own lines.
        let kinds: Vec<&str> = stdout
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("Socket errors:") || l.starts_with("Non-2xx"))
            .collect();
        eprintln!(
            "lbd-bench: {}: wrk errors: {}",
            path.name(),
            kinds.join("; ")
        );
    }
    let new_connections = opens(topo)?.saturating_sub(before);
    if figures.requests == 0 {
        bail!("wrk completed no request through {}: {stdout}", path.name());
    }
    if (new_connections as f64) < MIN_NEW_CONNECTIONS_PER_REQUEST * figures.requests as f64 {
        bail!(
            "wrk reused connections on {}: {} requests but {new_connections} new connections at the backends",
            path.name(),
            figures.requests
        );
    }
    Ok(figures)
}

/// `iperf3` from the client to `target`:5201 with `streams` parallel streams; Gbit/s received.
fn run_iperf3(
    topo: &Topology,
    tools: &Tools,
    (target, port): (IpAddr, u16),
    streams: u32,
    secs: u32,
    pinned: bool,
) -> Result<f64> {
    let mut args = vec![
        "-c".to_owned(),
        target.to_string(),
        "-p".to_owned(),
        port.to_string(),
        "-t".to_owned(),
        secs.to_string(),
        "-P".to_owned(),
        streams.to_string(),
        // Leave out the first second (slow start), which would count the ramp, not the path.
        "--omit".to_owned(),
        "1".to_owned(),
        "-J".to_owned(),
        "--connect-timeout".to_owned(),
        "3000".to_owned(),
    ];
    // With `pinned`, the client on CPU 0 and the server on CPU 1 in every run: where the
    // scheduler puts the two (together on one core, or apart) moves a stream's rate by more
    // than the XDP paths differ.
    if pinned && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2) {
        args.extend(["--affinity".to_owned(), "0,1".to_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut last = None;
    // The server takes a moment to reset after a test: a second try if it says it is busy.
    for attempt in 0..2 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_secs(1));
        }
        let out = topo.client().output(
            &tools.iperf3.display().to_string(),
            &args,
            Duration::from_secs(u64::from(secs) + 21),
        )?;
        match parse_iperf3_gbps(&String::from_utf8_lossy(&out.stdout)) {
            Ok(gbps) if out.status.success() => return Ok(gbps),
            Ok(_) => {
                last = Some(anyhow::anyhow!(
                    "iperf3 exited with {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Err(e) => {
                let busy = format!("{e:#}").contains("busy");
                last = Some(e);
                if !busy {
                    break;
                }
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("iperf3 did not run")))
        .with_context(|| format!("iperf3 -P {streams} to {}", SocketAddr::new(target, port)))
}

/// Waits until something in `node` listens on VIP:`port` (or the wildcard) for every port.
fn wait_listening(topo: &Topology, node: Host, ports: &[u16], process: &mut Spawned) -> Result<()> {
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    loop {
        let out = topo.try_ns(node)?.run("ss", &["-Hltn"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let listening = |port: u16| {
            text.lines().any(|l| {
                l.split_whitespace().nth(3).is_some_and(|local| {
                    [
                        format!("{VIP}:{port}"),
                        format!("0.0.0.0:{port}"),
                        format!("*:{port}"),
                    ]
                    .contains(&local.to_owned())
                })
            })
        };
        if ports.iter().all(|&p| listening(p)) {
            return Ok(());
        }
        if !process.is_running() {
            bail!(
                "{} exited before listening on {VIP} ports {ports:?}; stderr: {}",
                process.label(),
                process.stderr_tail()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "{} does not listen on {VIP} ports {ports:?} after {LISTEN_TIMEOUT:?}; stderr: {}",
                process.label(),
                process.stderr_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A directory removed on drop.
/// What carries the path while it is measured; dropping it stops it.
enum Balancer {
    None,
    /// `bare_tx` attached to lbd1's eth0 (detached when the object is dropped).
    Bare(aya::Ebpf),
    Lbd(LbdNode),
    Haproxy(Spawned, crate::TempPath),
}

impl Balancer {
    /// The process of the balancer, if it has one. For the proxies its CPU time is the path's
    /// own cost; the XDP paths forward in softirq context, which no process owns.
    fn pid(&self) -> Option<u32> {
        match self {
            Balancer::None | Balancer::Bare(_) => None,
            Balancer::Lbd(node) => Some(node.process.pid()),
            Balancer::Haproxy(process, _) => Some(process.pid()),
        }
    }

    /// Stops it, reporting an unclean exit.
    fn stop(self) -> Result<()> {
        match self {
            Balancer::None => Ok(()),
            Balancer::Bare(ebpf) => {
                // Dropping the object detaches the program.
                drop(ebpf);
                Ok(())
            }
            Balancer::Lbd(node) => node.stop(),
            Balancer::Haproxy(mut process, _dir) => {
                let status = process.terminate(Duration::from_secs(5))?;
                // In the foreground (`-db`) HAProxy leaves SIGTERM to its default action.
                use std::os::unix::process::ExitStatusExt as _;
                if !status.success() && status.signal() != Some(libc::SIGTERM) {
                    bail!(
                        "haproxy exited with {status}; stderr: {}",
                        process.stderr_tail()
                    );
                }
                Ok(())
            }
        }
    }
}

/// The lbd config of a path: the web service on VIP:80 (and the test config's UDP service), and
/// for one backend an iperf3 service on VIP:5201. With `v6`, the same two TCP services on
/// [`VIP6`] over the backends' IPv6 addresses, for the IPv6 twin served by the same lbd.
fn lbd_config(topo: &Topology, mode: Mode, backends: &[Host], v6: bool) -> String {
    let ips: Vec<Ipv4Addr> = backends.iter().map(|&b| b.ip()).collect();
    let node = Host::Lbd(1);
    let mut config = lbd::config_text(
        mode,
        &LbdNode::socket_path(topo, node),
        &Services {
            tcp: ips.clone(),
            udp: ips[..1].to_vec(),
        },
    );
    let _ = write!(
        config,
        "\n[[service]]\nname = \"iperf3\"\nvip = \"{VIP}:{IPERF_PORT}\"\nbackends = [{{ addr = \"{}\" }}]\n",
        ips[0]
    );
    if v6 {
        let list: Vec<String> = backends
            .iter()
            .map(|&b| format!("{{ addr = \"{}\" }}", b.ip6()))
            .collect();
        let _ = write!(
            config,
            "\n[[service]]\nname = \"web6\"\nvip = \"[{VIP6}]:{HTTP_PORT}\"\nbackends = [{}]\n\n\
             [[service]]\nname = \"iperf3_6\"\nvip = \"[{VIP6}]:{IPERF_PORT}\"\nbackends = [{}]\n",
            list.join(", "),
            list[0]
        );
    }
    config
}

fn haproxy_config(backend: Ipv4Addr) -> String {
    format!(
        "global\n    maxconn 4096\n\n\
         defaults\n    mode tcp\n    option splice-auto\n    timeout connect 3s\n    timeout client 300s\n    timeout server 300s\n\n\
         listen web\n    bind {VIP}:{HAPROXY_HTTP_PORT}\n    server b1 {backend}:{HTTP_PORT}\n\n\
         listen iperf3\n    bind {VIP}:{HAPROXY_IPERF_PORT}\n    server b1 {backend}:{IPERF_PORT}\n"
    )
}

/// Starts what carries `path` on lbd1 (a carrier: see [`NetPath::carrier`]); with `v6`, lbd also
/// serves [`VIP6`].
fn start(topo: &Topology, tools: &Tools, path: NetPath, v6: bool) -> Result<Balancer> {
    let node = Host::Lbd(1);
    match path {
        NetPath::DirectOffloadOff6 | NetPath::Bare6 | NetPath::Xdp6 => {
            bail!("{} runs on its IPv4 twin's balancer", path.name())
        }
        NetPath::DirectOffloadOff | NetPath::DirectOffloadOn => Ok(Balancer::None),
        NetPath::Bare => {
            let node = path.node();
            let own = node.mac().0;
            let backend = Host::Backend(1).mac().0;
            let ebpf = topo.try_ns(node)?.enter(move || -> Result<aya::Ebpf> {
                let mut ebpf = xdp::load(own, backend, 1024, &[xdp::PROG_BARE])?;
                let name = std::ffi::CString::new(crate::topology::HOST_IF)?;
                // SAFETY: if_nametoindex reads a NUL-terminated string.
                let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
                ensure!(index != 0, "eth0 not found on {node}");
                xdp::attach(
                    &mut ebpf,
                    xdp::PROG_BARE,
                    crate::topology::HOST_IF,
                    index,
                    xdp::AttachMode::Native,
                )?;
                Ok(ebpf)
            })??;
            Ok(Balancer::Bare(ebpf))
        }
        NetPath::Xdp | NetPath::Xdp3 => {
            let lbd = LbdNode::start(
                topo,
                node,
                &lbd_config(topo, Mode::XdpNative, &path.backends(), v6),
            )?;
            let status = lbd.status()?;
            ensure!(
                status.datapath == Mode::XdpNative.status_name(),
                "lbd runs {} ({}), not native XDP",
                status.datapath,
                status.datapath_reason
            );
            Ok(Balancer::Lbd(lbd))
        }
        NetPath::Userspace => {
            let mut lbd = LbdNode::start(
                topo,
                node,
                &lbd_config(topo, Mode::Userspace, &path.backends(), false),
            )?;
            wait_listening(topo, node, &[HTTP_PORT, IPERF_PORT], &mut lbd.process)?;
            Ok(Balancer::Lbd(lbd))
        }
        NetPath::Haproxy => {
            let dir =
                crate::TempPath(std::env::temp_dir().join(format!("lbdt-{}-haproxy", topo.tag())));
            std::fs::create_dir_all(&dir.0)
                .with_context(|| format!("creating {}", dir.0.display()))?;
            let cfg = dir.0.join("haproxy.cfg");
            std::fs::write(&cfg, haproxy_config(Host::Backend(1).ip()))
                .with_context(|| format!("writing {}", cfg.display()))?;
            let ns = topo.try_ns(node)?;
            let mut cmd = ns.command(&tools.haproxy.display().to_string());
            cmd.arg("-f").arg(&cfg).arg("-db");
            let mut process = ns.spawn(cmd)?;
            wait_listening(
                topo,
                node,
                &[HAPROXY_HTTP_PORT, HAPROXY_IPERF_PORT],
                &mut process,
            )?;
            Ok(Balancer::Haproxy(process, dir))
        }
    }
}

/// One path's figures from one round.
#[derive(Debug, Clone, Copy)]
struct Sample {
    wrk: WrkFigures,
    gbps: Option<(f64, f64)>,
    /// The forwarding process's CPU (user + system): microseconds per wrk request (each a new
    /// connection) and milliseconds per GB of the 4-stream iperf3 run. Paths with a process.
    cpu: Option<(f64, f64)>,
}

/// CPU time (user + system) a process has used so far, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .map(|t| t as f64)
            .with_context(|| format!("{path}: field {} is not a number", i + 3))
    };
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(hz > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok((ticks(11)? + ticks(12)?) / hz as f64)
}

/// Checks a path with one request: 200 from one of its backends.
fn check_path(topo: &Topology, path: NetPath) -> Result<()> {
    let addr = SocketAddr::new(path.target(), path.ports().0);
    let reply = topo
        .client()
        .enter(move || client::http_get(addr))?
        .with_context(|| format!("a request to {addr} through {}", path.name()))?;
    let expected: Vec<String> = path.backends().iter().map(|b| b.role()).collect();
    ensure!(
        reply.status == 200 && expected.contains(&reply.backend),
        "{}: {addr} answered {} from {:?}, expected 200 from one of {expected:?}",
        path.name(),
        reply.status,
        reply.backend
    );
    Ok(())
}

/// What one path of a group gathered over its turns.
#[derive(Default)]
struct Tally {
    requests: u64,
    rates: Vec<f64>,
    p50s: Vec<f64>,
    p99s: Vec<f64>,
    errors: u64,
    wrk_cpu: f64,
    gbps_1: Vec<f64>,
    gbps_4: Vec<f64>,
    four_cpu: f64,
    four_gigabytes: f64,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Measures a group of paths whose balancers all run now: one request to check each and a
/// second of load to warm it up, then wrk, iperf3 with 1 and with 4 streams. With more than one
/// path, each measurement is taken in turns A B … B A, so that the paths see the same moments of
/// a noisy machine; each figure is the mean of a path's turns. Paths with a pid also get the CPU
/// that process spent.
fn measure_group(
    topo: &Topology,
    tools: &Tools,
    group: &[(NetPath, Option<u32>)],
    secs: u32,
) -> Result<Vec<Sample>> {
    for &(path, _) in group {
        select(topo, path)?;
        check_path(topo, path)?;
        // A second of load first, not counted: a balancer started a moment ago still grows
        // its memory and pools during its first thousands of connections.
        run_wrk(topo, tools, path, WARM_UP_SECS)
            .with_context(|| format!("warming up {}", path.name()))?;
    }
    let turns: Vec<usize> = if group.len() == 1 {
        vec![0]
    } else {
        (0..group.len()).chain((0..group.len()).rev()).collect()
    };
    let cpu = |pid: Option<u32>| pid.map(cpu_seconds).transpose();
    let mut tally: Vec<Tally> = group.iter().map(|_| Tally::default()).collect();
    for &i in &turns {
        let (path, pid) = group[i];
        select(topo, path)?;
        let before = cpu(pid)?;
        let wrk = run_wrk(topo, tools, path, secs)?;
        if debug() {
            eprintln!("{} turn: {:.0} conn/s", path.name(), wrk.rate);
        }
        let t = &mut tally[i];
        if let Some((a, b)) = before.zip(cpu(pid)?) {
            t.wrk_cpu += b - a;
        }
        t.requests += wrk.requests;
        t.rates.push(wrk.rate);
        t.p50s.push(wrk.p50_ms);
        t.p99s.push(wrk.p99_ms);
        t.errors += wrk.errors;
    }
    for streams in [1, 4] {
        for &i in &turns {
            let (path, pid) = group[i];
            if !path.throughput() {
                continue;
            }
            select(topo, path)?;
            let target = (path.target(), path.ports().1);
            let before = cpu(pid)?;
            let gbps = run_iperf3(topo, tools, target, streams, secs, path.pin_iperf3())?;
            if debug() {
                eprintln!("{} turn: {gbps:.2} Gbit/s with {streams}", path.name());
            }
            let t = &mut tally[i];
            if streams == 1 {
                t.gbps_1.push(gbps);
            } else {
                t.gbps_4.push(gbps);
                if let Some((a, b)) = before.zip(cpu(pid)?) {
                    t.four_cpu += b - a;
                    t.four_gigabytes += gbps * f64::from(secs) / 8.0;
                }
            }
        }
    }
    Ok(group
        .iter()
        .zip(tally)
        .map(|(&(path, pid), t)| Sample {
            wrk: WrkFigures {
                requests: t.requests,
                rate: mean(&t.rates),
                p50_ms: mean(&t.p50s),
                p99_ms: mean(&t.p99s),
                errors: t.errors,
            },
            gbps: path
                .throughput()
                .then(|| (mean(&t.gbps_1), mean(&t.gbps_4))),
            cpu: (pid.is_some() && t.requests > 0 && t.four_gigabytes > 0.0).then(|| {
                (
                    t.wrk_cpu * 1e6 / t.requests as f64,
                    t.four_cpu * 1e3 / t.four_gigabytes,
                )
            }),
        })
        .collect())
}

/// Points the client's neighbour entry for the VIP of the path's family at the node of `path`.
/// The entry is permanent: `bare_tx` would forward the client's ARP probes (neighbour
/// solicitations) to the backend, which never answers them for the VIP.
fn select(topo: &Topology, path: NetPath) -> Result<()> {
    topo.client().ip(&[
        path.family().ip_flag(),
        "neigh",
        "replace",
        &path.family().vip().to_string(),
        "lladdr",
        &path.node().mac().to_string(),
        "dev",
        crate::topology::HOST_IF,
        "nud",
        "permanent",
    ])?;
    Ok(())
}

/// Whether `LBD_BENCH_DEBUG` asks for each turn's figures and lbd's log tails on stderr.
fn debug() -> bool {
    std::env::var_os("LBD_BENCH_DEBUG").is_some()
}

/// The median of `values` (NaN when empty).
fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Sets the per-namespace TCP settings that let short connections reuse ports quickly (the
/// client and the proxies open far more connections in a measurement than the default
/// ephemeral range holds while they sit in TIME-WAIT).
fn tune(topo: &Topology) -> Result<()> {
    for host in [Host::Client, Host::Lbd(1)] {
        let ns = topo.try_ns(host)?;
        ns.set_sysctl("net/ipv4/tcp_tw_reuse", "1")?;
        ns.set_sysctl("net/ipv4/ip_local_port_range", "10000 65000")?;
    }
    Ok(())
}

/// Measures every path and returns the figures.
pub fn run() -> Result<Vec<(String, f64)>> {
    let settings = Settings {
        secs: env_u32("LBD_BENCH_NET_SECS", DEFAULT_SECS, 1..=60)?,
        rounds: env_u32("LBD_BENCH_NET_ROUNDS", DEFAULT_ROUNDS, 1..=10)?,
        paths: env_paths()?,
    };
    let tools = Tools {
        wrk: find_tool("wrk")?,
        iperf3: find_tool("iperf3")?,
        haproxy: find_tool("haproxy")?,
    };
    find_tool("ethtool")?;
    find_tool("ss").context("`ss` comes with iproute2")?;
    let backend_bin = bin_path("lbd-test-backend")?;
    bin_path("lbd")?;
    bin_path("lbctl")?;

    let topo = Topology::builder(&crate::test_tag("bench_net"))
        .lbd_nodes(2)
        .backends(3)
        .build()?;
    let _backends = topo.start_backends(&backend_bin)?;
    let mut iperf_server = {
        let ns = topo.try_ns(Host::Backend(1))?;
        let mut cmd = ns.command(&tools.iperf3.display().to_string());
        cmd.args(["-s", "-p", &IPERF_PORT.to_string(), "--forceflush"]);
        ns.spawn(cmd)?
    };
    iperf_server
        .wait_for_line(|l| l.contains("Server listening"), LISTEN_TIMEOUT)
        .context("starting the iperf3 server on b1")?;
    tune(&topo)?;
    let node = Host::Lbd(1);
    topo.add_vip(node)?;
    if settings.paths.iter().any(|p| p.family() == Family::V6) {
        topo.add_vip6(node)?;
    }

    // rounds[r][i]: path NetPath::ALL[i] in round r.
    let mut rounds: Vec<Vec<Option<Sample>>> = Vec::new();
    for round in 0..settings.rounds {
        let mut samples: Vec<Option<Sample>> = vec![None; NetPath::ALL.len()];
        let mut peer_pass: Vec<aya::Ebpf> = Vec::new();
        // Every other round runs the paths in reverse, so that neither of two compared paths
        // always goes first (after a restart, or into the machine's slow moments).
        let mut order: Vec<(usize, NetPath)> = NetPath::ALL.into_iter().enumerate().collect();
        if round % 2 == 1 {
            order.reverse();
        }
        let order: Vec<(usize, NetPath)> = order
            .into_iter()
            .filter(|(_, p)| settings.paths.contains(p))
            .collect();
        let mut done = vec![false; NetPath::ALL.len()];
        for &(i, path) in &order {
            if done[i] {
                continue;
            }
            let group: Vec<(usize, NetPath)> = order
                .iter()
                .copied()
                .filter(|(_, p)| p.group() == path.group())
                .collect();
            // The proxies run without XDP on lbd1's veth peer: veth turns TCP segmentation
            // offload off on the peer of a device with an XDP program, here lbd1's eth0.
            let native_xdp = group.iter().any(|(_, p)| p.native_xdp());
            if native_xdp && peer_pass.is_empty() {
                for n in [Host::Lbd(1), Host::Lbd(2)] {
                    peer_pass.push(lbd::attach_peer_pass(&topo, n)?);
                }
            } else if !native_xdp {
                peer_pass.clear();
            }
            // One setting per group: its paths share the client.
            topo.set_tx_offload(Host::Client, path.client_tx_offload())?;
            // One balancer per carrier: an IPv6 twin runs on its IPv4 path's, started with
            // IPv6 services when a twin is in the group.
            let v6 = group.iter().any(|(_, p)| p.family() == Family::V6);
            let mut balancers: Vec<(NetPath, Balancer)> = Vec::new();
            for &(_, p) in &group {
                let carrier = p.carrier();
                if balancers.iter().any(|(c, _)| *c == carrier) {
                    continue;
                }
                let b = start(&topo, &tools, carrier, v6)
                    .with_context(|| format!("starting {}", carrier.name()))?;
                balancers.push((carrier, b));
            }
            let names: Vec<&str> = group.iter().map(|(_, p)| p.name()).collect();
            let members: Vec<(NetPath, Option<u32>)> = group
                .iter()
                .map(|&(_, p)| {
                    let pid = balancers
                        .iter()
                        .find(|(c, _)| *c == p.carrier())
                        .and_then(|(_, b)| b.pid());
                    (p, pid)
                })
                .collect();
            let group_samples = measure_group(&topo, &tools, &members, settings.secs)
                .with_context(|| format!("measuring {}", names.join(" and ")))?;
            for (p, b) in balancers {
                if let (true, Balancer::Lbd(node)) = (debug(), &b) {
                    eprintln!("{} log tail: {}", p.name(), node.process.stderr_tail());
                }
                b.stop().with_context(|| format!("stopping {}", p.name()))?;
            }
            for (&(j, p), sample) in group.iter().zip(group_samples) {
                if debug() {
                    eprintln!("{}: {sample:?}", p.name());
                }
                samples[j] = Some(sample);
                done[j] = true;
            }
        }
        drop(peer_pass);
        rounds.push(samples);
    }
    if !iperf_server.is_running() {
        bail!(
            "the iperf3 server on b1 exited; stderr: {}",
            iperf_server.stderr_tail()
        );
    }
    drop(iperf_server);
    topo.teardown()?;
    Ok(figures(&rounds, &settings.paths))
}

/// One figure of a sample, where the sample has it.
type Figure = fn(&Sample) -> Option<f64>;

const RATE: Figure = |s| Some(s.wrk.rate);
const P50: Figure = |s| Some(s.wrk.p50_ms);
const P99: Figure = |s| Some(s.wrk.p99_ms);
const GBPS_1: Figure = |s| s.gbps.map(|g| g.0);
const GBPS_4: Figure = |s| s.gbps.map(|g| g.1);
const CPU_PER_CONN: Figure = |s| s.cpu.map(|c| c.0);
const CPU_PER_GB: Figure = |s| s.cpu.map(|c| c.1);

/// The figures: per path the median over the rounds, then the ratios, each the median over
/// the rounds of the ratio within one round (the two paths measured minutes apart at most, so
/// that the machine's slow drifts cancel out).
fn figures(rounds: &[Vec<Option<Sample>>], measured: &[NetPath]) -> Vec<(String, f64)> {
    let per_path = |p: NetPath, f: Figure| -> Vec<f64> {
        rounds
            .iter()
            .filter_map(|r| r[p.slot()].as_ref().and_then(f))
            .collect()
    };
    let mut out = Vec::new();
    for path in NetPath::ALL {
        if !measured.contains(&path) {
            continue;
        }
        let n = path.name();
        let errors: f64 = per_path(path, |s| Some(s.wrk.errors as f64)).iter().sum();
        out.push((format!("conn_rate_{n}"), median(per_path(path, RATE))));
        out.push((format!("conn_p50_ms_{n}"), median(per_path(path, P50))));
        out.push((format!("conn_p99_ms_{n}"), median(per_path(path, P99))));
        out.push((format!("conn_errors_{n}"), errors));
        if path.throughput() {
            for (name, f) in [("1stream", GBPS_1), ("4stream", GBPS_4)] {
                out.push((
                    format!("throughput_gbps_{name}_{n}"),
                    median(per_path(path, f)),
                ));
            }
        }
        let cpu_conn = per_path(path, CPU_PER_CONN);
        if !cpu_conn.is_empty() {
            // For lbd's XDP path the process is only the control plane; the forwarding runs
            // in softirq context, which no process owns.
            let who = if path.proxy() { "" } else { "daemon_" };
            out.push((format!("{who}cpu_us_per_conn_{n}"), median(cpu_conn)));
            out.push((
                format!("{who}cpu_ms_per_gb_4stream_{n}"),
                median(per_path(path, CPU_PER_GB)),
            ));
        }
    }
    let ratio = |a: NetPath, b: NetPath, f: Figure| -> f64 {
        median(
            rounds
                .iter()
                .filter_map(|r| {
                    let x = r[a.slot()].as_ref().and_then(f)?;
                    let y = r[b.slot()].as_ref().and_then(f)?;
                    (x > 0.0 && y > 0.0).then(|| x / y)
                })
                .collect(),
        )
    };
    // The goals' throughput ratios (`xdp_throughput_vs_bare`, `userspace_throughput_vs_haproxy`)
    // hold for one and four streams alike: each is the lower of the two, NaN if either is.
    let lower = |a: f64, b: f64| {
        if a.is_nan() || b.is_nan() {
            f64::NAN
        } else {
            a.min(b)
        }
    };
    let xdp_gbps = [GBPS_1, GBPS_4].map(|f| ratio(NetPath::Xdp, NetPath::Bare, f));
    // IPv6 against IPv4 (the goal: within 10%), and against its own bare forwarder.
    let xdp_v6_gbps = [GBPS_1, GBPS_4].map(|f| ratio(NetPath::Xdp6, NetPath::Xdp, f));
    let xdp_v6_bare_gbps = [GBPS_1, GBPS_4].map(|f| ratio(NetPath::Xdp6, NetPath::Bare6, f));
    let proxy_gbps = [GBPS_1, GBPS_4].map(|f| ratio(NetPath::Userspace, NetPath::Haproxy, f));
    let all_measured = measured.len() == NetPath::ALL.len();
    for (name, value) in [
        (
            "xdp_conn_rate_vs_bare",
            ratio(NetPath::Xdp, NetPath::Bare, RATE),
        ),
        ("xdp_throughput_1stream_vs_bare", xdp_gbps[0]),
        ("xdp_throughput_4stream_vs_bare", xdp_gbps[1]),
        ("xdp_throughput_vs_bare", lower(xdp_gbps[0], xdp_gbps[1])),
        (
            "xdp_conn_rate_vs_direct",
            ratio(NetPath::Xdp, NetPath::DirectOffloadOff, RATE),
        ),
        (
            "bare_conn_rate_vs_direct",
            ratio(NetPath::Bare, NetPath::DirectOffloadOff, RATE),
        ),
        (
            "xdp_throughput_1stream_vs_direct",
            ratio(NetPath::Xdp, NetPath::DirectOffloadOff, GBPS_1),
        ),
        (
            "xdp_v6_conn_rate_vs_xdp",
            ratio(NetPath::Xdp6, NetPath::Xdp, RATE),
        ),
        ("xdp_v6_throughput_1stream_vs_xdp", xdp_v6_gbps[0]),
        ("xdp_v6_throughput_4stream_vs_xdp", xdp_v6_gbps[1]),
        (
            "xdp_v6_throughput_vs_xdp",
            lower(xdp_v6_gbps[0], xdp_v6_gbps[1]),
        ),
        (
            "xdp_v6_conn_rate_vs_bare_v6",
            ratio(NetPath::Xdp6, NetPath::Bare6, RATE),
        ),
        ("xdp_v6_throughput_1stream_vs_bare_v6", xdp_v6_bare_gbps[0]),
        ("xdp_v6_throughput_4stream_vs_bare_v6", xdp_v6_bare_gbps[1]),
        (
            "xdp_v6_throughput_vs_bare_v6",
            lower(xdp_v6_bare_gbps[0], xdp_v6_bare_gbps[1]),
        ),
        (
            "bare_v6_conn_rate_vs_bare",
            ratio(NetPath::Bare6, NetPath::Bare, RATE),
        ),
        (
            "bare_v6_throughput_1stream_vs_bare",
            ratio(NetPath::Bare6, NetPath::Bare, GBPS_1),
        ),
        // The kernel's own IPv6 path, client straight to the backend: what the IPv6 paths
        // through a balancer cannot beat.
        (
            "direct_v6_conn_rate_vs_direct",
            ratio(NetPath::DirectOffloadOff6, NetPath::DirectOffloadOff, RATE),
        ),
        (
            "direct_v6_throughput_1stream_vs_direct",
            ratio(
                NetPath::DirectOffloadOff6,
                NetPath::DirectOffloadOff,
                GBPS_1,
            ),
        ),
        (
            "xdp_v6_throughput_1stream_vs_direct_v6",
            ratio(NetPath::Xdp6, NetPath::DirectOffloadOff6, GBPS_1),
        ),
        (
            "xdp_3backends_conn_rate_vs_xdp",
            ratio(NetPath::Xdp3, NetPath::Xdp, RATE),
        ),
        ("userspace_throughput_1stream_vs_haproxy", proxy_gbps[0]),
        ("userspace_throughput_4stream_vs_haproxy", proxy_gbps[1]),
        (
            "userspace_throughput_vs_haproxy",
            lower(proxy_gbps[0], proxy_gbps[1]),
        ),
        (
            "userspace_conn_rate_vs_haproxy",
            ratio(NetPath::Userspace, NetPath::Haproxy, RATE),
        ),
        (
            "userspace_conn_rate_vs_direct",
            ratio(NetPath::Userspace, NetPath::DirectOffloadOn, RATE),
        ),
        (
            "haproxy_conn_rate_vs_direct",
            ratio(NetPath::Haproxy, NetPath::DirectOffloadOn, RATE),
        ),
        (
            "userspace_throughput_1stream_vs_direct",
            ratio(NetPath::Userspace, NetPath::DirectOffloadOn, GBPS_1),
        ),
        (
            "userspace_conn_cpu_vs_haproxy",
            ratio(NetPath::Userspace, NetPath::Haproxy, CPU_PER_CONN),
        ),
        (
            "userspace_throughput_cpu_vs_haproxy",
            ratio(NetPath::Userspace, NetPath::Haproxy, CPU_PER_GB),
        ),
    ] {
        // A partial run (LBD_BENCH_NET_PATHS) leaves out the ratios of paths it skipped; a
        // full run prints every ratio, NaN included, so that a broken path shows.
        if all_measured || !value.is_nan() {
            out.push((name.to_owned(), value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 5s test @ http://198.18.0.100:80/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.23ms  456.00us  10.00ms   80.00%
    Req/Sec     5.00k   100.00     6.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    1.50ms
     90%    2.00ms
     99%    1.02s
  50000 requests in 5.00s, 6.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 10
Requests/sec:   9998.50
Transfer/sec:      1.20MB
";

    #[test]
    fn wrk_output_is_parsed() {
        let f = parse_wrk(WRK).unwrap();
        assert_eq!(f.requests, 50000);
        assert!((f.rate - 9998.5).abs() < 1e-9);
        assert!((f.p50_ms - 0.812).abs() < 1e-9);
        assert!((f.p99_ms - 1020.0).abs() < 1e-9);
        assert_eq!(f.errors, 15);
    }

    #[test]
    fn wrk_output_without_latency_is_an_error() {
        let no_latency: String = WRK
            .lines()
            .filter(|l| {
                !l.trim_start().starts_with(|c: char| c.is_ascii_digit())
                    || l.contains("requests in")
            })
            .collect::<Vec<_>>()
            .join("\n");
        let err = parse_wrk(&no_latency).unwrap_err().to_string();
        assert!(err.contains("50% latency"), "{err}");
        assert!(parse_wrk("").is_err());
    }

    #[test]
    fn wrk_durations() {
        assert_eq!(wrk_duration_ms("500.00us"), Some(0.5));
        assert_eq!(wrk_duration_ms("1.5ms"), Some(1.5));
        assert_eq!(wrk_duration_ms("2.00s"), Some(2000.0));
        assert_eq!(wrk_duration_ms("1.00m"), Some(60_000.0));
        assert_eq!(wrk_duration_ms("12"), None);
        assert_eq!(wrk_duration_ms("1.0xs"), None);
    }

    #[test]
    fn paths_of_a_group_share_the_client_settings() {
        for a in NetPath::ALL {
            for b in NetPath::ALL.into_iter().filter(|b| b.group() == a.group()) {
                assert_eq!(a.client_tx_offload(), b.client_tx_offload(), "{a:?} {b:?}");
                assert_eq!(a.pin_iperf3(), b.pin_iperf3(), "{a:?} {b:?}");
                // Side by side on one node they would need distinct ports.
                if a != b && a.node() == b.node() && a.target() == b.target() {
                    assert_ne!(a.ports(), b.ports(), "{a:?} {b:?}");
                }
            }
        }
    }

    /// Ratios are medians of per-round ratios; the goals' throughput ratios take the lower of
    /// one and four streams; a partial run leaves out what it did not measure.
    #[test]
    fn ratios_pair_paths_within_rounds() {
        let sample = |rate: f64, gbps: (f64, f64)| {
            Some(Sample {
                wrk: WrkFigures {
                    requests: 1000,
                    rate,
                    p50_ms: 1.0,
                    p99_ms: 2.0,
                    errors: 0,
                },
                gbps: Some(gbps),
                cpu: None,
            })
        };
        let round = |xdp: Option<Sample>, bare: Option<Sample>| {
            let mut r: Vec<Option<Sample>> = NetPath::ALL.iter().map(|_| None).collect();
            r[NetPath::Bare.slot()] = bare;
            r[NetPath::Xdp.slot()] = xdp;
            r
        };
        // The machine slows down between rounds: per-round pairs cancel that out.
        let rounds = vec![
            round(sample(990.0, (1.9, 1.8)), sample(1000.0, (2.0, 2.0))),
            round(sample(495.0, (0.95, 0.9)), sample(500.0, (1.0, 1.0))),
            round(sample(2000.0, (4.0, 3.6)), sample(2000.0, (4.0, 4.0))),
        ];
        let figures: std::collections::HashMap<String, f64> =
            figures(&rounds, &[NetPath::Bare, NetPath::Xdp])
                .into_iter()
                .collect();
        let close = |name: &str, want: f64| {
            let got = figures.get(name).copied().unwrap_or(f64::NAN);
            assert!((got - want).abs() < 1e-9, "{name}: {got}, want {want}");
        };
        close("conn_rate_xdp", 990.0);
        close("xdp_conn_rate_vs_bare", 0.99);
        close("xdp_throughput_1stream_vs_bare", 0.95);
        close("xdp_throughput_4stream_vs_bare", 0.9);
        close("xdp_throughput_vs_bare", 0.9);
        assert!(
            !figures.contains_key("userspace_conn_rate_vs_haproxy"),
            "unmeasured paths give no ratio"
        );
    }

    /// The IPv6 twins run on their IPv4 paths' balancers, in their group, and pair with them
    /// in the `xdp_v6_*` ratios.
    #[test]
    fn ipv6_twins_share_their_ipv4_balancers() {
        for p in NetPath::ALL {
            let c = p.carrier();
            assert_eq!(c.carrier(), c, "{p:?}");
            assert_eq!(p.group(), c.group(), "{p:?}");
            assert_eq!(p.node(), c.node(), "{p:?}");
            assert_eq!(p.ports(), c.ports(), "{p:?}");
            assert_eq!(p.family() == Family::V6, c != p, "{p:?}");
        }
        assert_eq!(NetPath::Xdp6.target(), IpAddr::from(VIP6));
        assert_eq!(NetPath::Bare6.target(), IpAddr::from(VIP6));
        assert_eq!(NetPath::Xdp.target(), IpAddr::from(VIP));
        let sample = |rate: f64, gbps: (f64, f64)| Sample {
            wrk: WrkFigures {
                requests: 1000,
                rate,
                p50_ms: 1.0,
                p99_ms: 2.0,
                errors: 0,
            },
            gbps: Some(gbps),
            cpu: None,
        };
        let mut r: Vec<Option<Sample>> = NetPath::ALL.iter().map(|_| None).collect();
        r[NetPath::Bare.slot()] = Some(sample(1000.0, (2.0, 4.0)));
        r[NetPath::Xdp.slot()] = Some(sample(900.0, (2.0, 4.0)));
        r[NetPath::Bare6.slot()] = Some(sample(800.0, (1.6, 4.0)));
        r[NetPath::Xdp6.slot()] = Some(sample(720.0, (1.8, 3.0)));
        let measured = [NetPath::Bare, NetPath::Xdp, NetPath::Bare6, NetPath::Xdp6];
        let figures: std::collections::HashMap<String, f64> =
            figures(&[r], &measured).into_iter().collect();
        let close = |name: &str, want: f64| {
            let got = figures.get(name).copied().unwrap_or(f64::NAN);
            assert!((got - want).abs() < 1e-9, "{name}: {got}, want {want}");
        };
        close("conn_rate_xdp_v6", 720.0);
        close("throughput_gbps_1stream_bare_v6", 1.6);
        close("xdp_conn_rate_vs_bare", 0.9);
        close("xdp_v6_conn_rate_vs_xdp", 0.8);
        close("xdp_v6_throughput_1stream_vs_xdp", 0.9);
        close("xdp_v6_throughput_4stream_vs_xdp", 0.75);
        close("xdp_v6_throughput_vs_xdp", 0.75);
        close("xdp_v6_conn_rate_vs_bare_v6", 0.9);
        close("xdp_v6_throughput_1stream_vs_bare_v6", 1.125);
        close("xdp_v6_throughput_vs_bare_v6", 0.75);
        close("bare_v6_conn_rate_vs_bare", 0.8);
        close("bare_v6_throughput_1stream_vs_bare", 0.8);
    }

    #[test]
    fn iperf3_json_is_parsed() {
        let ok = r#"{"start":{},"end":{"sum_sent":{"bits_per_second":2.1e10},"sum_received":{"bits_per_second":2.0e10}}}"#;
        assert!((parse_iperf3_gbps(ok).unwrap() - 20.0).abs() < 1e-9);
        let err = parse_iperf3_gbps(
            r#"{"start":{},"end":{},"error":"the server is busy running a test. try again later"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("busy"), "{err}");
        assert!(parse_iperf3_gbps("not json").is_err());
    }
}
