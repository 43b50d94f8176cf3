//! The daemon core under stress, seen only from outside (config file, SIGHUP, `lbctl`, metrics,
//! VRRP adverts on the wire). Shared by the `core_stress` test and `cargo xtask bench core`.
//!
//! [`run`] builds a VRRP pair of lbd nodes (100 ms adverts, lbd1 master at priority 150, lbd2
//! backup at 100), both on the largest config lbd takes: 32 services × 16 backends
//! ([`big_config`]), of which [`UNANSWERED`] are addresses in the test subnet that no host answers
//! ARP for. After the pair settles, the test fills the master's connection table (the CONNTRACK
//! map, found through the XDP program attached to its `eth0`) with a million flows of live
//! backends ([`fill_conntrack`]), and then, for a bounded time, the master at once:
//! - reloads its config every [`StressOptions::reload_every`] (SIGHUP), alternating two variants
//!   whose weights differ, so every reload rewrites every Maglev table;
//! - scans its connection table (its own tick, and every `lbctl backend remove`);
//! - waits on unresolved backends: every reload, and `lbctl backend add` of [`ADDED_UNANSWERED`]
//!   (then `lbctl backend remove`), in a loop;
//! - answers `lbctl status --json`, sequentially, each call timed.
//!
//! Meanwhile `tcpdump` in the backup's namespace records every VRRP advert with kernel
//! timestamps, and the backup's status is polled. [`StressFigures`] holds what was seen;
//! [`StressFigures::failed_checks`] says which of the issue's goals were missed.
//!
//! [`time_reloads`] measures one SIGHUP reload from outside: from the signal until
//! `lbd_config_reloads_total` on the metrics address counts it.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail, ensure};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, MapInfo};
use etherparse::{NetSlice, SlicedPacket};
use lb_common::{Backend, FlowKey, FlowState, IPPROTO_TCP, backend_state};
use lb_daemon::control::Status;

use crate::{
    Host, Netns, Spawned, Topology, VIP, bin_path,
    lbd::{self, LbdNode, Mode},
};

/// Services in the stress's big config (the largest is 512 × 8: `cargo xtask bench scale`).
pub const SERVICES: usize = 32;
/// Backends per service in the largest config: 32 × 16 = 512, the limit on backends in a config.
pub const BACKENDS_PER_SERVICE: usize = 16;
/// Port of service `i` on the VIP is `SERVICE_PORT_BASE + i`.
pub const SERVICE_PORT_BASE: u16 = 10_000;
/// Backend addresses of every service that no host answers ARP for: lbd waits up to 3 s for them
/// on every start and reload.
pub const UNANSWERED: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 18, 0, 201),
    Ipv4Addr::new(198, 18, 0, 202),
];
/// The unanswered address the stress adds (`lbctl backend add`) and removes again, in a loop.
pub const ADDED_UNANSWERED: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 240);
/// Last octet of the first extra address put on the backends' `eth0` (see [`answered_backends`]).
const EXTRA_FIRST_OCTET: u8 = 31;
/// The master's `conntrack_max` under stress. The connection table is an LRU hash with a free
/// list per CPU (`BPF_F_NO_COMMON_LRU`): each CPU's list holds `max_entries / possible CPUs`, and
/// an insert takes from the list of the CPU it runs on, evicting when that list is empty. Twice
/// the flows inserted leaves room however the inserts land on CPUs.
pub const STRESS_CONNTRACK_MAX: u32 = 2_097_152;
/// VRRP priority of the master (lbd1) and of the backup (lbd2).
pub const PRIORITIES: (u8, u8) = (150, 100);
/// The issue's goal: the largest gap between two adverts of the master (100 ms adverts), in ms.
pub const ADVERT_GAP_GOAL_MS: f64 = 150.0;
/// The issue's goal: the 99th percentile of `lbctl status` under stress, in ms.
pub const STATUS_P99_GOAL_MS: f64 = 50.0;
/// Where lbd serves metrics (its default, inside each node's namespace).
const METRICS_ADDR: SocketAddr =
    SocketAddr::V4(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9300));
/// Longest a single `lbctl` call may take before it is killed and counted as failed.
const LBCTL_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest the test waits for one reload to be counted.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How hard and how long [`run`] stresses the master.
#[derive(Debug, Clone)]
pub struct StressOptions {
    /// Length of the stress window.
    pub duration: Duration,
    /// Flows put into the master's connection table before the window.
    pub flows: u32,
    /// Time between two SIGHUPs.
    pub reload_every: Duration,
    /// Most `lbctl status` calls in the window.
    pub status_max_calls: usize,
    /// Pause after each `lbctl status` call.
    pub status_pause: Duration,
    /// Most `lbctl backend add` calls in the window.
    pub backend_add_max: usize,
    /// Data path of both nodes.
    pub mode: Mode,
}

impl Default for StressOptions {
    fn default() -> Self {
        StressOptions {
            duration: Duration::from_secs(25),
            flows: 1_000_000,
            reload_every: Duration::from_millis(200),
            status_max_calls: 5_000,
            status_pause: Duration::from_millis(10),
            backend_add_max: 100,
            mode: Mode::XdpGeneric,
        }
    }
}

/// What [`run`] measured.
#[derive(Debug, Clone, Default)]
pub struct StressFigures {
    /// Length of the stress window, in seconds.
    pub window_s: f64,
    /// Adverts from the master captured during the window.
    pub adverts_master: usize,
    /// Adverts from the backup captured during the window (any means it took over).
    pub adverts_backup: usize,
    /// Largest gap between consecutive adverts of the master on the wire, in ms (the capture's
    /// start and end count as adverts, so a master silent at either end shows too).
    pub advert_gap_max_ms: f64,
    /// Median gap between consecutive adverts of the master, in ms (100 when all is well).
    pub advert_gap_p50_ms: f64,
    /// Gaps of [`ADVERT_GAP_GOAL_MS`] or more (the capture's ends counted as adverts).
    pub advert_gaps_over_goal: usize,
    /// When the largest gap ended, in seconds from the start of the capture.
    pub advert_gap_max_at_s: f64,
    /// `lbctl status` calls made.
    pub status_calls: usize,
    /// Calls that failed or timed out.
    pub status_failures: usize,
    /// Median latency of `lbctl status` (the whole command, as an operator sees it), in ms.
    pub status_p50_ms: f64,
    /// 99th percentile, in ms.
    pub status_p99_ms: f64,
    /// Slowest call, in ms.
    pub status_max_ms: f64,
    /// Status answers of the master that did not say MASTER.
    pub master_not_master: usize,
    /// The master's `became_master` at the end (1: it became master once, at start).
    pub master_became_master: u64,
    /// The backup's `became_master` at the end (must be 0).
    pub backup_became_master: u64,
    /// The backup's `became_master` when the window began: transitions while the flows were
    /// put into the table and counted.
    pub backup_became_master_before_window: u64,
    /// VRRP states the backup reported during the window.
    pub backup_states: BTreeSet<String>,
    /// SIGHUPs sent.
    pub reloads_sent: usize,
    /// Reloads the master applied during the window (`lbd_config_reloads_total`).
    pub reloads_done: u64,
    /// Reloads it rejected (`lbd_config_reload_failures_total`).
    pub reload_failures: u64,
    /// `lbctl backend add` calls made.
    pub backend_adds: usize,
    /// `lbctl backend add` or `remove` calls that failed or timed out.
    pub backend_add_failures: usize,
    /// Slowest `lbctl backend add`, in ms.
    pub backend_add_max_ms: f64,
    /// Flows inserted into the master's connection table.
    pub flows_inserted: u64,
    /// How long the insert took, in ms.
    pub fill_ms: f64,
    /// `conntrack_entries` the master reported before the window (after a scan).
    pub conntrack_entries_before: u64,
    /// `conntrack_entries` at the end of the window.
    pub conntrack_entries_after: u64,
    /// `lbctl flows --limit 100` on the full table, in ms (the command, end to end).
    pub flows_list_ms: f64,
    /// The flows that listing saw in the table.
    pub flows_listed_total: u64,
    /// `lbctl flows` with a client filter nothing matches, in ms.
    pub flows_filter_ms: f64,
}

impl StressFigures {
    /// The figures as `(name, value)`, for logs and the benchmark.
    pub fn lines(&self) -> Vec<(String, f64)> {
        let f = |n: usize| n as f64;
        [
            ("window_s", self.window_s),
            ("vrrp_advert_gap_max_ms", self.advert_gap_max_ms),
            ("vrrp_advert_gap_p50_ms", self.advert_gap_p50_ms),
            ("vrrp_advert_gaps_over_goal", f(self.advert_gaps_over_goal)),
            ("vrrp_advert_gap_max_at_s", self.advert_gap_max_at_s),
            ("vrrp_adverts_master", f(self.adverts_master)),
            ("vrrp_adverts_backup", f(self.adverts_backup)),
            ("master_became_master", self.master_became_master as f64),
            ("backup_became_master", self.backup_became_master as f64),
            (
                "backup_became_master_before_window",
                self.backup_became_master_before_window as f64,
            ),
            ("master_status_not_master", f(self.master_not_master)),
            ("lbctl_status_calls", f(self.status_calls)),
            ("lbctl_status_failures", f(self.status_failures)),
            ("lbctl_status_p50_ms", self.status_p50_ms),
            ("lbctl_status_p99_ms", self.status_p99_ms),
            ("lbctl_status_max_ms", self.status_max_ms),
            ("reloads_sent", f(self.reloads_sent)),
            ("reloads_done", self.reloads_done as f64),
            ("reload_failures", self.reload_failures as f64),
            ("backend_adds", f(self.backend_adds)),
            ("backend_add_failures", f(self.backend_add_failures)),
            ("backend_add_max_ms", self.backend_add_max_ms),
            ("flows_inserted", self.flows_inserted as f64),
            ("flows_fill_ms", self.fill_ms),
            (
                "conntrack_entries_before",
                self.conntrack_entries_before as f64,
            ),
            (
                "conntrack_entries_after",
                self.conntrack_entries_after as f64,
            ),
            ("lbctl_flows_full_table_ms", self.flows_list_ms),
            (
                "lbctl_flows_full_table_seen",
                self.flows_listed_total as f64,
            ),
            ("lbctl_flows_filtered_ms", self.flows_filter_ms),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v))
        .collect()
    }

    /// The figures, one `name: value` per line.
    pub fn report(&self) -> String {
        let mut s = String::new();
        for (name, value) in self.lines() {
            let _ = writeln!(s, "{name}: {value:.2}");
        }
        s
    }

    /// The test's checks that failed, each a sentence with its figures; empty when all hold:
    /// the table held `flows` flows, no VRRP transition (status and wire), and the master's
    /// largest advert gap under [`ADVERT_GAP_GOAL_MS`].
    pub fn failed_checks(&self, flows: u32) -> Vec<String> {
        let mut failed = Vec::new();
        if self.conntrack_entries_before < u64::from(flows) {
            failed.push(format!(
                "the master's connection table held {} flows after a scan, not the {flows} wanted",
                self.conntrack_entries_before
            ));
        }
        if self.flows_listed_total < u64::from(flows) {
            failed.push(format!(
                "lbctl flows saw {} flows in the table, not the {flows} there",
                self.flows_listed_total
            ));
        }
        if self.backup_became_master > 0
            || self.adverts_backup > 0
            || self.backup_states.iter().any(|s| s != "BACKUP")
        {
            failed.push(format!(
                "VRRP transition: the backup became master {} times ({} before the window, while the \
                 flows were put in and counted), sent {} adverts in the window, reported states {:?}",
                self.backup_became_master,
                self.backup_became_master_before_window,
                self.adverts_backup,
                self.backup_states
            ));
        }
        if self.master_not_master > 0 || self.master_became_master != 1 {
            failed.push(format!(
                "VRRP transition: the master reported another state {} times, became master {} times",
                self.master_not_master, self.master_became_master
            ));
        }
        if self.adverts_master == 0 {
            failed.push("no advert of the master was captured".to_owned());
        }
        if self.advert_gap_max_ms >= ADVERT_GAP_GOAL_MS {
            failed.push(format!(
                "the master's largest advert gap on the wire was {:.1} ms (goal < {ADVERT_GAP_GOAL_MS} ms, adverts every 100 ms)",
                self.advert_gap_max_ms
            ));
        }
        failed
    }
}

/// What a config of [`SERVICES`] services is made of; see [`big_config`].
#[derive(Debug, Clone)]
pub struct BigConfig<'a> {
    /// Data path.
    pub mode: Mode,
    /// The node's control socket ([`LbdNode::socket_path`]); the state directory is its parent.
    pub socket: &'a Path,
    /// Backends of every service, in this order.
    pub backends: &'a [Ipv4Addr],
    /// `[daemon] conntrack_max`, when not the default.
    pub conntrack_max: Option<u32>,
    /// A `[vrrp]` section ([`lbd::vrrp_section`], preempt on) with this priority.
    pub vrrp_priority: Option<u8>,
}

/// A config of [`SERVICES`] TCP services `s00`..`s31` on the VIP, ports from
/// [`SERVICE_PORT_BASE`], each with every backend of `c.backends`. Variant 0 gives every backend
/// weight 1; variant 1 weights from 1 to 4, different in every service, so that going from one
/// variant to the other changes every Maglev table.
pub fn big_config(c: &BigConfig<'_>, variant: u32) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "[daemon]\ninterface = \"eth0\"\ndatapath = \"{}\"\ncontrol_socket = \"{}\"\nstate_dir = \"{}\"\n",
        c.mode.datapath(),
        c.socket.display(),
        c.socket.parent().unwrap_or(Path::new("/tmp")).display(),
    );
    if let Some(max) = c.conntrack_max {
        let _ = writeln!(s, "conntrack_max = {max}");
    }
    for i in 0..SERVICES {
        let backends: Vec<String> = c
            .backends
            .iter()
            .enumerate()
            .map(|(j, ip)| {
                let weight = if variant.is_multiple_of(2) {
                    1
                } else {
                    1 + (i + j) % 4
                };
                format!("{{ addr = \"{ip}\", weight = {weight} }}")
            })
            .collect();
        let _ = write!(
            s,
            "\n[[service]]\nname = \"s{i:02}\"\nvip = \"{VIP}:{}\"\nbackends = [{}]\n",
            usize::from(SERVICE_PORT_BASE) + i,
            backends.join(", ")
        );
    }
    if let Some(priority) = c.vrrp_priority {
        s.push_str(&lbd::vrrp_section(priority, true));
    }
    s
}

/// `n` backend addresses that answer ARP: the backends' own, then extra /32 addresses from
/// 198.18.0.31 up, added to the backends' `eth0` in turn (with `arp_ignore=1` a backend answers
/// ARP for addresses on that interface).
pub fn answered_backends(topo: &Topology, n: usize) -> Result<Vec<Ipv4Addr>> {
    let hosts = topo.backends();
    ensure!(!hosts.is_empty(), "the topology has no backend host");
    let mut out: Vec<Ipv4Addr> = hosts.iter().map(|h| topo.ip(*h)).take(n).collect();
    for (k, octet) in (EXTRA_FIRST_OCTET..)
        .take(n.saturating_sub(out.len()))
        .enumerate()
    {
        let host = hosts[k % hosts.len()];
        let ip = Ipv4Addr::new(198, 18, 0, octet);
        topo.try_ns(host)?
            .ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])
            .with_context(|| format!("adding {ip} to {host}"))?;
        out.push(ip);
    }
    Ok(out)
}

/// Writes `text` to `path` through a file beside it and a rename, so a daemon reading it on
/// SIGHUP never sees half a file.
pub fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))
}

/// Runs `cmd` with stdout and stderr captured, killing it after `timeout`; returns its output and
/// how long it ran. Unlike [`crate::exec::output`] it waits for the exit without polling, so the
/// time is exact.
pub fn run_timed(cmd: &mut Command, timeout: Duration) -> Result<(Output, Duration)> {
    let what = crate::exec::describe(cmd);
    let started = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{what}`"))?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(timeout) {
            // SAFETY: kill(2) on our child, which is not reaped before this thread is joined,
            // so the pid cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return true;
        }
        false
    });
    // Reads both pipes to their end (the child exited or was killed), then reaps it.
    let waited = child.wait_with_output();
    let took = started.elapsed();
    let _ = done_tx.send(());
    let killed = watchdog.join().unwrap_or(false);
    let out = waited.with_context(|| format!("waiting for `{what}`"))?;
    if killed {
        bail!("`{what}` did not finish within {timeout:?}; killed it");
    }
    Ok((out, took))
}

/// `lbctl --socket SOCKET ARGS...`, timed; an error when it fails or times out.
fn lbctl_timed(socket: &Path, args: &[&str]) -> Result<(String, Duration)> {
    let mut cmd = Command::new(bin_path("lbctl")?);
    cmd.arg("--socket").arg(socket).args(args);
    let (out, took) = run_timed(&mut cmd, LBCTL_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "lbctl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), took))
}

/// `lbctl status --json`, parsed, and how long the command took.
pub fn status_timed(socket: &Path) -> Result<(Status, Duration)> {
    let (text, took) = lbctl_timed(socket, &["status", "--json"])?;
    let status = serde_json::from_str(&text).context("parsing lbctl status --json")?;
    Ok((status, took))
}

/// The body of `GET /metrics` from lbd's metrics address in `ns`.
pub fn metrics_text(ns: &Netns, timeout: Duration) -> Result<String> {
    ns.enter(move || fetch_metrics(timeout))?
}

/// `GET /metrics` on [`METRICS_ADDR`] from the calling thread's namespace.
fn fetch_metrics(timeout: Duration) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&METRICS_ADDR, timeout)
        .with_context(|| format!("connecting to lbd's metrics on {METRICS_ADDR}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: lbd\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .context("reading lbd's metrics")?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("lbd's metrics answer has no header end");
    };
    ensure!(
        head.starts_with("HTTP/1.1 200"),
        "lbd's metrics answered {:?}",
        head.lines().next().unwrap_or("")
    );
    Ok(body.to_owned())
}

/// The value of an unlabelled metric `name` in Prometheus text, e.g. `lbd_config_reloads_total`.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let rest = match rest.strip_prefix('{') {
            Some(labels) => labels.split_once('}')?.1,
            None => rest,
        };
        if !rest.starts_with(' ') {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// `(reloads applied, reloads rejected)` from the metrics text.
fn reload_counts(text: &str) -> Result<(u64, u64)> {
    let get = |name| {
        metric_value(text, name)
            .map(|v| v as u64)
            .with_context(|| format!("no {name} in lbd's metrics"))
    };
    Ok((
        get("lbd_config_reloads_total")?,
        get("lbd_config_reload_failures_total")?,
    ))
}

/// Reloads lbd `n` times, with `variants[i % len]` written before reload `i`, and returns how
/// long each took in ms: from SIGHUP until `lbd_config_reloads_total` counts it. A rejected
/// reload is an error.
pub fn time_reloads(
    topo: &Topology,
    host: Host,
    node: &LbdNode,
    variants: &[String],
    n: usize,
) -> Result<Vec<f64>> {
    ensure!(!variants.is_empty(), "no config to reload");
    let pid = i32::try_from(node.process.pid()).context("pid out of range")?;
    let config_path = node.config_path.clone();
    topo.try_ns(host)?.enter(move || -> Result<Vec<f64>> {
        let mut times = Vec::with_capacity(n);
        for i in 0..n {
            write_atomically(&config_path, &variants[i % variants.len()])?;
            let (done, failed) = reload_counts(&fetch_metrics(RELOAD_TIMEOUT)?)?;
            let started = Instant::now();
            // SAFETY: kill(2) on the lbd child the caller holds (and so has not reaped).
            if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
                return Err(std::io::Error::last_os_error()).context("sending SIGHUP to lbd");
            }
            loop {
                // The metrics handler waits for the reload to finish, so this answers just after.
                let (now_done, now_failed) = reload_counts(&fetch_metrics(RELOAD_TIMEOUT)?)?;
                ensure!(now_failed == failed, "lbd rejected reload {i}");
                if now_done > done {
                    break;
                }
                ensure!(
                    started.elapsed() < RELOAD_TIMEOUT,
                    "reload {i} not counted within {RELOAD_TIMEOUT:?}"
                );
                std::thread::sleep(Duration::from_micros(500));
            }
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(times)
    })?
}

/// The median of `values` (0 when empty).
pub fn median(values: &[f64]) -> f64 {
    percentile(values, 0.5)
}

/// The `p` quantile (0..=1) of `values` by the nearest-rank method (0 when empty).
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Ids of the XDP programs attached to `eth0`, from `ip -j -d link show` output.
pub fn xdp_prog_ids(ip_json: &str) -> Result<Vec<u32>> {
    let links: serde_json::Value = serde_json::from_str(ip_json).context("parsing ip -j output")?;
    let mut ids = Vec::new();
    for link in links.as_array().into_iter().flatten() {
        let Some(xdp) = link.get("xdp") else { continue };
        let progs = std::iter::once(xdp).chain(
            xdp.get("attached")
                .and_then(|a| a.as_array())
                .into_iter()
                .flatten(),
        );
        for p in progs {
            if let Some(id) = p
                .get("prog")
                .and_then(|p| p.get("id"))
                .and_then(|i| i.as_u64())
                .and_then(|i| u32::try_from(i).ok())
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}

/// The ids of lbd's CONNTRACK and BACKENDS maps on `host`: the maps of the XDP program on its
/// `eth0` (map names are global; the program attached in the node's namespace is lbd's own).
pub fn find_lbd_maps(topo: &Topology, host: Host) -> Result<(u32, u32)> {
    let out = topo
        .try_ns(host)?
        .ip(&["-j", "-d", "link", "show", "dev", "eth0"])?;
    let prog_ids = xdp_prog_ids(&String::from_utf8_lossy(&out.stdout))?;
    ensure!(!prog_ids.is_empty(), "no XDP program on {host}'s eth0");
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing loaded BPF programs")?;
        if !prog_ids.contains(&info.id()) {
            continue;
        }
        let map_ids = info
            .map_ids()
            .context("reading the program's map ids")?
            .context("this kernel does not list a program's maps")?;
        let (mut conntrack, mut backends) = (None, None);
        for id in map_ids {
            let map = MapInfo::from_id(id).with_context(|| format!("map {id}"))?;
            match map.name_as_str() {
                Some("CONNTRACK") => conntrack = Some(id),
                Some("BACKENDS") => backends = Some(id),
                _ => {}
            }
        }
        if let (Some(c), Some(b)) = (conntrack, backends) {
            return Ok((c, b));
        }
    }
    bail!("no program on {host}'s eth0 (ids {prog_ids:?}) uses maps CONNTRACK and BACKENDS")
}

/// Backend ids in rotation in the BACKENDS map `map_id`: state active, MAC resolved.
pub fn live_backend_ids(map_id: u32) -> Result<Vec<u32>> {
    let map = Map::from_map_data(MapData::from_id(map_id).context("opening BACKENDS")?)?;
    let backends: Array<MapData, Backend> = Array::try_from(map).context("BACKENDS")?;
    let mut ids = Vec::new();
    for id in 0..backends.len() {
        let b = backends
            .get(&id, 0)
            .with_context(|| format!("BACKENDS[{id}]"))?;
        if b.addr != [0; 16] && b.mac != [0; 6] && b.state == backend_state::ACTIVE {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Flow `i` of the fill: a distinct client address in 10.0.0.0/8 to service 0's port.
fn fill_key(i: u32) -> FlowKey {
    let src = Ipv4Addr::from(0x0a00_0000 | (i & 0x00ff_ffff));
    FlowKey::new(
        u32::from_ne_bytes(src.octets()),
        u32::from_ne_bytes(VIP.octets()),
        (40_000 + (i >> 24) as u16).to_be(),
        SERVICE_PORT_BASE.to_be(),
        IPPROTO_TCP,
    )
}

/// Pins the calling thread to `cpu` and gives it the lowest CPU priority (nice 19), so that the
/// fill does not starve lbd (best effort: a failure leaves the thread as it was).
fn pin_to_cpu_niced(cpu: usize) {
    // SAFETY: gettid has no preconditions; setpriority on a thread id changes that thread only.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
    }
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write within it; sched_setaffinity
    // reads it for the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Inserts `flows` flows into the CONNTRACK map `map_id`, spread over the backend ids `live`,
/// last seen now (lbd's coarse monotonic clock) so none is idle. One thread per CPU, each pinned,
/// since an LRU map with per-CPU lists takes an insert from the list of the CPU it runs on; at
/// nice 19, so that lbd's own threads (its VRRP speaker) keep the CPUs they need.
pub fn fill_conntrack(map_id: u32, live: &[u32], flows: u32) -> Result<u64> {
    ensure!(!live.is_empty(), "no live backend id to pin flows to");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let now = lb_daemon::xdp::coarse_now_ns();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..cpus)
            .map(|cpu| {
                scope.spawn(move || -> Result<u64> {
                    pin_to_cpu_niced(cpu);
                    let map =
                        Map::from_map_data(MapData::from_id(map_id).context("opening CONNTRACK")?)?;
                    let mut table: BpfHashMap<MapData, FlowKey, FlowState> =
                        BpfHashMap::try_from(map).context("CONNTRACK")?;
                    let mut done = 0u64;
                    let mut i = cpu as u32;
                    while i < flows {
                        let state = FlowState {
                            backend_id: live[i as usize % live.len()],
                            flags: 0,
                            last_seen_ns: now,
                        };
                        table
                            .insert(fill_key(i), state, 0)
                            .with_context(|| format!("inserting flow {i}"))?;
                        done += 1;
                        i += cpus as u32;
                    }
                    Ok(done)
                })
            })
            .collect();
        let mut total = 0;
        for w in workers {
            total += w
                .join()
                .map_err(|_| anyhow::anyhow!("a fill thread panicked"))??;
        }
        Ok(total)
    })
}

/// One VRRP advert seen on the wire: when (Unix time, s) and from which address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Advert {
    /// Kernel timestamp of the capture, Unix seconds.
    pub at: f64,
    /// Source address.
    pub from: Ipv4Addr,
}

/// The VRRP (IP protocol 112) packets of a pcap file of Ethernet frames.
pub fn pcap_adverts(pcap: &[u8]) -> Result<Vec<Advert>> {
    ensure!(pcap.len() >= 24, "pcap file shorter than its header");
    let magic = [pcap[0], pcap[1], pcap[2], pcap[3]];
    let (little, frac) = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (true, 1e-6),
        [0xa1, 0xb2, 0xc3, 0xd4] => (false, 1e-6),
        [0x4d, 0x3c, 0xb2, 0xa1] => (true, 1e-9),
        [0xa1, 0xb2, 0x3c, 0x4d] => (false, 1e-9),
        _ => bail!("not a pcap file (magic {magic:02x?})"),
    };
    let word = |at: usize| -> Option<u32> {
        let b: [u8; 4] = pcap.get(at..at + 4)?.try_into().ok()?;
        Some(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let linktype = word(20).context("pcap header")?;
    ensure!(linktype == 1, "pcap link type {linktype}, not Ethernet");
    let mut adverts = Vec::new();
    let mut at = 24;
    while at < pcap.len() {
        let (Some(sec), Some(sub), Some(len)) = (word(at), word(at + 4), word(at + 8)) else {
            break; // a record cut short by the capture's end
        };
        let start = at + 16;
        let Some(frame) = pcap.get(start..start + len as usize) else {
            break;
        };
        at = start + len as usize;
        let Ok(packet) = SlicedPacket::from_ethernet(frame) else {
            continue;
        };
        let Some(NetSlice::Ipv4(ip)) = &packet.net else {
            continue;
        };
        if ip.header().protocol().0 != 112 {
            continue;
        }
        adverts.push(Advert {
            at: f64::from(sec) + f64::from(sub) * frac,
            from: ip.header().source_addr(),
        });
    }
    Ok(adverts)
}

/// The gaps, in ms, between consecutive times of `times` (sorted here).
pub fn gaps_ms(times: &[f64]) -> Vec<f64> {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.windows(2).map(|w| (w[1] - w[0]) * 1000.0).collect()
}

/// The largest gap, in ms, between consecutive times of `times`, counting `start` and `end` as
/// times too.
pub fn largest_gap_ms(times: &[f64], start: f64, end: f64) -> f64 {
    let mut all: Vec<f64> = times.to_vec();
    all.push(start);
    all.push(end);
    gaps_ms(&all).into_iter().fold(0.0, f64::max)
}

/// `tcpdump` writing every VRRP packet seen on a node's `eth0` to a pcap file.
struct AdvertCapture {
    process: Spawned,
    file: PathBuf,
    started: f64,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl AdvertCapture {
    fn start(topo: &Topology, host: Host) -> Result<AdvertCapture> {
        let file = std::env::temp_dir().join(format!("lbdt-{}-adverts.pcap", topo.tag()));
        let ns = topo.try_ns(host)?;
        let mut cmd = ns.command("tcpdump");
        // Immediate mode: libpcap otherwise hands packets over a block at a time (up to a
        // second late), and stopping it would lose the last ones.
        cmd.args([
            "-i",
            "eth0",
            "-n",
            "-U",
            "--immediate-mode",
            "-c",
            "100000",
            "-w",
        ])
        .arg(&file)
        .arg("ip proto 112");
        let process = ns.spawn(cmd)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !process.stderr_tail().contains("listening on") {
            ensure!(
                Instant::now() < deadline,
                "tcpdump did not start listening: {}",
                process.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(AdvertCapture {
            process,
            file,
            started: unix_now(),
        })
    }

    /// Stops the capture; returns the adverts and the capture's start and end (Unix seconds).
    fn finish(mut self) -> Result<(Vec<Advert>, f64, f64)> {
        let ended = unix_now();
        // tcpdump writes (-U) each packet as it gets it; give the last ones time to arrive,
        // longer than libpcap's block timeout should immediate mode be missing, then stop it.
        std::thread::sleep(Duration::from_millis(1200));
        let _ = self.process.terminate(Duration::from_secs(5));
        let bytes = std::fs::read(&self.file)
            .with_context(|| format!("reading {}", self.file.display()))?;
        let adverts = pcap_adverts(&bytes)?
            .into_iter()
            .filter(|a| a.at <= ended)
            .collect();
        Ok((adverts, self.started, ended))
    }
}

impl Drop for AdvertCapture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Whether a status shows every backend settled: active, or unresolved for [`UNANSWERED`].
fn settled(s: &Status) -> bool {
    s.services.iter().all(|svc| {
        svc.backends.iter().all(|b| {
            b.state == "active"
                || (b.state == "unresolved" && UNANSWERED.iter().any(|u| u.to_string() == b.addr))
        })
    })
}

fn vrrp_state(s: &Status) -> &str {
    s.vrrp.as_ref().map_or("none", |v| v.state.as_str())
}

/// Results of the `lbctl status` loop.
#[derive(Default)]
struct StatusLoop {
    latencies_ms: Vec<f64>,
    failures: usize,
    not_master: usize,
}

fn status_loop(socket: &Path, until: Instant, opts: &StressOptions) -> StatusLoop {
    let mut out = StatusLoop::default();
    while Instant::now() < until && out.latencies_ms.len() < opts.status_max_calls {
        let started = Instant::now();
        match status_timed(socket) {
            Ok((s, took)) => {
                out.latencies_ms.push(took.as_secs_f64() * 1000.0);
                if vrrp_state(&s) != "MASTER" {
                    out.not_master += 1;
                }
            }
            Err(e) => {
                out.latencies_ms
                    .push(started.elapsed().as_secs_f64() * 1000.0);
                out.failures += 1;
                eprintln!("core stress: lbctl status: {e:#}");
            }
        }
        std::thread::sleep(opts.status_pause);
    }
    out
}

/// SIGHUPs `pid` every `every` until `until`, alternating the two configs; returns how many.
fn reload_loop(
    config_path: &Path,
    pid: i32,
    variants: &[String; 2],
    every: Duration,
    until: Instant,
) -> Result<usize> {
    let max = (until.saturating_duration_since(Instant::now()).as_millis()
        / every.as_millis().max(1)) as usize
        + 1;
    let mut sent = 0;
    let mut next = Instant::now();
    while Instant::now() < until && sent < max {
        write_atomically(config_path, &variants[(sent + 1) % 2])?;
        // SAFETY: kill(2) on the lbd child the caller holds (and so has not reaped).
        if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
            return Err(std::io::Error::last_os_error()).context("sending SIGHUP to lbd");
        }
        sent += 1;
        next += every;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(sent)
}

/// Results of the `lbctl backend add`/`remove` loop.
#[derive(Default)]
struct AddLoop {
    adds: usize,
    failures: usize,
    max_ms: f64,
}

fn add_loop(socket: &Path, until: Instant, max: usize) -> AddLoop {
    let mut out = AddLoop::default();
    let addr = ADDED_UNANSWERED.to_string();
    while Instant::now() < until && out.adds < max {
        out.adds += 1;
        match lbctl_timed(socket, &["backend", "add", "s00", &addr]) {
            Ok((_, took)) => out.max_ms = out.max_ms.max(took.as_secs_f64() * 1000.0),
            Err(e) => {
                out.failures += 1;
                eprintln!("core stress: lbctl backend add: {e:#}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if let Err(e) = lbctl_timed(socket, &["backend", "remove", "s00", &addr]) {
            out.failures += 1;
            eprintln!("core stress: lbctl backend remove: {e:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    out
}

/// Polls the backup's status until `until`: the VRRP states it reported and its last
/// `became_master`.
fn watch_backup(socket: &Path, until: Instant) -> (BTreeSet<String>, u64) {
    let mut states = BTreeSet::new();
    let mut became = 0;
    while Instant::now() < until {
        if let Ok((s, _)) = status_timed(socket)
            && let Some(v) = &s.vrrp
        {
            states.insert(v.state.to_string());
            became = became.max(v.became_master);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    (states, became)
}

/// Runs the stress scenario (see the [module docs](self)) in a topology tagged after `name`.
///
/// Errors are set-up failures (namespaces, lbd not starting, the maps not found); what the
/// daemon did under stress is in the figures, judged by [`StressFigures::failed_checks`].
pub fn run(name: &str, opts: &StressOptions) -> Result<StressFigures> {
    let topo = Topology::builder(&crate::test_tag(name))
        .lbd_nodes(2)
        .backends(3)
        .build()?;
    let mut backends = answered_backends(&topo, BACKENDS_PER_SERVICE - UNANSWERED.len())?;
    backends.extend(UNANSWERED);
    let (n1, n2) = (Host::Lbd(1), Host::Lbd(2));
    let (socket1, socket2) = (
        LbdNode::socket_path(&topo, n1),
        LbdNode::socket_path(&topo, n2),
    );
    let master_config = BigConfig {
        mode: opts.mode,
        socket: &socket1,
        backends: &backends,
        conntrack_max: Some(STRESS_CONNTRACK_MAX),
        vrrp_priority: Some(PRIORITIES.0),
    };
    let variants = [big_config(&master_config, 0), big_config(&master_config, 1)];
    let backup_config = big_config(
        &BigConfig {
            socket: &socket2,
            conntrack_max: None,
            vrrp_priority: Some(PRIORITIES.1),
            ..master_config.clone()
        },
        0,
    );
    let master = LbdNode::start_until(&topo, n1, &variants[0], "settled and MASTER", |s| {
        settled(s) && vrrp_state(s) == "MASTER"
    })?;
    let backup = LbdNode::start_until(&topo, n2, &backup_config, "settled and BACKUP", |s| {
        settled(s) && vrrp_state(s) == "BACKUP"
    })?;

    let mut figures = StressFigures::default();
    let backup_became = || {
        status_timed(&backup.socket)
            .ok()
            .and_then(|(s, _)| s.vrrp.map(|v| v.became_master))
    };
    let became_at_start = backup_became();
    let (conntrack, backends_map) = find_lbd_maps(&topo, n1)?;
    let live = live_backend_ids(backends_map)?;
    let started = Instant::now();
    figures.flows_inserted = fill_conntrack(conntrack, &live, opts.flows)?;
    figures.fill_ms = started.elapsed().as_secs_f64() * 1000.0;
    let became_after_fill = backup_became();
    // The daemon counts flows at its scans, spaced by 50 times their length: one that ran
    // during the fill may hold the count low for up to a minute. Putting a backend in rotation
    // (where it already is) counts them now.
    let in_rotation = backends[0].to_string();
    // A drain answers with a fresh count of the table (maintenance off then undoes it).
    for args in [
        ["backend", "drain", "s00", &in_rotation].as_slice(),
        ["backend", "maintenance", "s00", &in_rotation, "off"].as_slice(),
    ] {
        if let Err(e) = lbctl_timed(&master.socket, args) {
            eprintln!("core stress: lbctl {args:?} (to count the flows): {e:#}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let entries = master.status()?.conntrack_entries;
        figures.conntrack_entries_before = entries;
        if entries >= u64::from(opts.flows) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "core stress: {} flows inserted in {:.0} ms over {} live backend ids; the master counts {}; \
         the backup's became_master: {became_at_start:?} after start, {became_after_fill:?} after \
         the fill, {:?} after the count",
        figures.flows_inserted,
        figures.fill_ms,
        live.len(),
        figures.conntrack_entries_before,
        backup_became(),
    );
    // `lbctl flows` on the full table: the 100 most recent of all, then a filter nothing
    // matches (the whole pass, no row); each must list or count every flow.
    for (args, field) in [
        (["flows", "--json", "--limit", "100"].as_slice(), 0),
        (
            ["flows", "--json", "--client", "203.0.113.1", "--limit", "0"].as_slice(),
            1,
        ),
    ] {
        let (text, took) = lbctl_timed(&master.socket, args)?;
        let report: serde_json::Value =
            serde_json::from_str(&text).context("lbctl flows --json")?;
        let total = report["total"].as_u64().unwrap_or(0);
        if field == 0 {
            figures.flows_list_ms = took.as_secs_f64() * 1000.0;
            figures.flows_listed_total = total;
        } else {
            figures.flows_filter_ms = took.as_secs_f64() * 1000.0;
        }
    }

    let ns1 = topo.try_ns(n1)?;
    let (reloads_before, failures_before) = reload_counts(&metrics_text(ns1, RELOAD_TIMEOUT)?)?;
    let pid = i32::try_from(master.process.pid()).context("pid out of range")?;
    let (b, _) = status_timed(&backup.socket)?;
    figures.backup_became_master_before_window = b.vrrp.as_ref().map_or(0, |v| v.became_master);
    figures.backup_states.insert(vrrp_state(&b).to_owned());
    let capture = AdvertCapture::start(&topo, n2)?;
    let window = Instant::now();
    let until = window + opts.duration;
    let (status, reloads, adds, (states, became)) = std::thread::scope(|scope| {
        let reloads = scope.spawn(|| {
            reload_loop(
                &master.config_path,
                pid,
                &variants,
                opts.reload_every,
                until,
            )
        });
        let adds = scope.spawn(|| add_loop(&master.socket, until, opts.backend_add_max));
        let watch = scope.spawn(|| watch_backup(&backup.socket, until));
        let status = status_loop(&master.socket, until, opts);
        let join = |what| anyhow::anyhow!("the {what} thread panicked");
        Ok::<_, anyhow::Error>((
            status,
            reloads.join().map_err(|_| join("reload"))?,
            adds.join().map_err(|_| join("backend add"))?,
            watch.join().map_err(|_| join("backup watch"))?,
        ))
    })?;
    figures.window_s = window.elapsed().as_secs_f64();
    let (adverts, cap_start, cap_end) = capture.finish()?;

    let master_ip = topo.ip(n1);
    let from_master: Vec<f64> = adverts
        .iter()
        .filter(|a| a.from == master_ip)
        .map(|a| a.at)
        .collect();
    figures.adverts_master = from_master.len();
    figures.adverts_backup = adverts.iter().filter(|a| a.from == topo.ip(n2)).count();
    figures.advert_gap_max_ms = largest_gap_ms(&from_master, cap_start, cap_end);
    figures.advert_gap_p50_ms = median(&gaps_ms(&from_master));
    let mut edges = from_master.clone();
    edges.extend([cap_start, cap_end]);
    edges.sort_by(f64::total_cmp);
    figures.advert_gaps_over_goal = gaps_ms(&edges)
        .iter()
        .filter(|g| **g >= ADVERT_GAP_GOAL_MS)
        .count();
    if let Some(w) = edges
        .windows(2)
        .max_by(|a, b| (a[1] - a[0]).total_cmp(&(b[1] - b[0])))
    {
        figures.advert_gap_max_at_s = w[1] - cap_start;
    }

    figures.status_calls = status.latencies_ms.len();
    figures.status_failures = status.failures;
    figures.status_p50_ms = percentile(&status.latencies_ms, 0.5);
    figures.status_p99_ms = percentile(&status.latencies_ms, 0.99);
    figures.status_max_ms = percentile(&status.latencies_ms, 1.0);
    figures.master_not_master = status.not_master;
    figures.reloads_sent = reloads?;
    figures.backend_adds = adds.adds;
    figures.backend_add_failures = adds.failures;
    figures.backend_add_max_ms = adds.max_ms;
    figures.backup_states.extend(states);

    // After the window: the counters, and both nodes' final word on VRRP.
    let (reloads_after, failures_after) = reload_counts(&metrics_text(ns1, RELOAD_TIMEOUT)?)?;
    figures.reloads_done = reloads_after.saturating_sub(reloads_before);
    figures.reload_failures = failures_after.saturating_sub(failures_before);
    let (m, _) = status_timed(&master.socket)?;
    let (b, _) = status_timed(&backup.socket)?;
    figures.conntrack_entries_after = m.conntrack_entries;
    figures.master_became_master = m.vrrp.as_ref().map_or(0, |v| v.became_master);
    if vrrp_state(&m) != "MASTER" {
        figures.master_not_master += 1;
    }
    figures.backup_became_master = b.vrrp.as_ref().map_or(0, |v| v.became_master).max(became);
    figures.backup_states.insert(vrrp_state(&b).to_owned());
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn gaps_count_the_window_ends() {
        let g = largest_gap_ms(&[10.1, 10.2, 10.3], 10.0, 10.35);
        assert!((g - 100.0).abs() < 1e-6, "{g}");
        let g = largest_gap_ms(&[10.1, 10.2], 10.0, 11.0);
        assert!((g - 800.0).abs() < 1e-6, "{g}");
        let g = largest_gap_ms(&[], 10.0, 10.5);
        assert!((g - 500.0).abs() < 1e-6, "{g}");
    }

    #[test]
    fn metric_values_with_and_without_labels() {
        let text = "# HELP lbd_config_reloads_total x\nlbd_config_reloads_total 4\n\
                    lbd_config_reloads_total_more 9\nlbd_x{a=\"b\"} 2.5\n";
        assert_eq!(metric_value(text, "lbd_config_reloads_total"), Some(4.0));
        assert_eq!(metric_value(text, "lbd_x"), Some(2.5));
        assert_eq!(metric_value(text, "lbd_y"), None);
    }

    #[test]
    fn xdp_prog_ids_from_ip_json() {
        let single = r#"[{"ifname":"eth0","xdp":{"mode":2,"prog":{"id":42,"name":"lbd_xdp"}}}]"#;
        assert_eq!(xdp_prog_ids(single).unwrap(), vec![42]);
        let multi = r#"[{"xdp":{"mode":4,"attached":[{"mode":1,"prog":{"id":7}},{"mode":2,"prog":{"id":8}}]}}]"#;
        assert_eq!(xdp_prog_ids(multi).unwrap(), vec![7, 8]);
        assert!(xdp_prog_ids(r#"[{"ifname":"eth0"}]"#).unwrap().is_empty());
    }

    #[test]
    fn big_config_is_valid_and_variants_differ() {
        let socket = Path::new("/tmp/lbdt-x/lbd.sock");
        let backends: Vec<Ipv4Addr> = (0..16).map(|i| Ipv4Addr::new(198, 18, 0, 31 + i)).collect();
        let c = BigConfig {
            mode: Mode::XdpGeneric,
            socket,
            backends: &backends,
            conntrack_max: Some(STRESS_CONNTRACK_MAX),
            vrrp_priority: Some(150),
        };
        let (a, b) = (big_config(&c, 0), big_config(&c, 1));
        assert_ne!(a, b);
        for text in [&a, &b] {
            let dir = std::env::temp_dir().join(format!("lbdt-bigcfg-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("lbd.toml");
            std::fs::write(&path, text).unwrap();
            let config = lb_daemon::config::Config::load(&path);
            let _ = std::fs::remove_dir_all(&dir);
            let config = config.expect("the big config loads");
            assert_eq!(config.services.len(), SERVICES);
            assert!(config.services.iter().all(|s| s.backends.len() == 16));
            assert_eq!(config.daemon.conntrack_max, STRESS_CONNTRACK_MAX);
        }
    }

    /// A pcap file (µs, little-endian, Ethernet) with one VRRP frame and one ARP frame.
    #[test]
    fn adverts_from_a_pcap_file() {
        let mut pcap = Vec::new();
        pcap.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        pcap.extend_from_slice(&2u16.to_le_bytes());
        pcap.extend_from_slice(&4u16.to_le_bytes());
        for w in [0u32, 0, 65535, 1] {
            pcap.extend_from_slice(&w.to_le_bytes());
        }
        let vrrp = {
            let builder =
                etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [1, 0, 0x5e, 0, 0, 18])
                    .ipv4([198, 18, 0, 2], [224, 0, 0, 18], 255);
            let payload = [0x31u8, 51, 150, 1, 0, 10, 0, 0, 198, 18, 0, 100];
            let mut out = Vec::new();
            builder
                .write(&mut out, etherparse::IpNumber(112), &payload)
                .unwrap();
            out
        };
        let arp = crate::capture::garp_frame(crate::Mac([2, 0, 0, 0, 0, 2]), VIP);
        for (sec, usec, frame) in [(100u32, 250_000u32, &vrrp), (101, 0, &arp)] {
            for w in [sec, usec, frame.len() as u32, frame.len() as u32] {
                pcap.extend_from_slice(&w.to_le_bytes());
            }
            pcap.extend_from_slice(frame);
        }
        let adverts = pcap_adverts(&pcap).unwrap();
        assert_eq!(
            adverts,
            vec![Advert {
                at: 100.25,
                from: Ipv4Addr::new(198, 18, 0, 2)
            }]
        );
        assert!(pcap_adverts(&pcap[..10]).is_err());
    }
}
