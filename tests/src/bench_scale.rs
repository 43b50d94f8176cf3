//! lbd at Katran-sized limits (`cargo xtask bench scale`):
//! - `config_load_ms_512x8`: the largest config (512 services of 8 backends, 4096 backends):
//!   parse and validate it, build every Maglev table and write the maps (the XDP object loaded
//!   with rings for 512 services beforehand; its load is `xdp_load_ms_512_services`).
//! - `maglev_rebuild_ms_4096`: one Maglev table over 4096 backends (the median of 5).
//! - `kernel_mib_rings_per_service` and `kernel_mib_conntrack_per_1m_flows`: what the maps cost
//!   in kernel memory, from the kernel's own account (`bpftool map show`, `bytes_memlock`).
//! - `daemon_rss_mib_16m_flows`: lbd's resident memory, idle, with a 16M-entry connection table
//!   filled to the brim and scanned (in a namespace, generic XDP).
//!
//! Goals (issue #17): the config load at most 2 s, the rebuild at most 20 ms, RSS at most
//! 30 MiB.

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use lb_daemon::{
    config::Config,
    datapath::xdp::XdpDatapath,
    engine::Engine,
    maglev,
    overrides::Overrides,
    xdp::{self, PROG_LBD, XdpMaps},
};

use crate::{
    Host, Topology,
    lbd::{self, LbdNode, Mode},
    stress,
};

const SERVICES: u32 = 512;
const BACKENDS_PER_SERVICE: u32 = 8;
const OWN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// Flows in the table of the RSS figure: the largest `daemon.conntrack_max`.
const RSS_FLOWS: u32 = 16_777_216;

/// The config of 512 services × 8 backends (every backend address distinct).
fn config_512x8() -> String {
    let mut s = String::from("[daemon]\ninterface = \"eth0\"\nmax_services = 512\n");
    for i in 0..SERVICES {
        let backends: Vec<String> = (0..BACKENDS_PER_SERVICE)
            .map(|b| {
                let n = i * BACKENDS_PER_SERVICE + b;
                format!(
                    "{{ addr = \"10.{}.{}.{}\" }}",
                    n >> 16,
                    (n >> 8) & 255,
                    n & 255
                )
            })
            .collect();
        let _ = write!(
            s,
            "[[service]]\nname = \"s{i}\"\nvip = \"198.18.{}.{}:80\"\nbackends = [{}]\n",
            1 + i / 250,
            1 + i % 250,
            backends.join(", ")
        );
    }
    s
}

/// `bytes_memlock` of the map named `name` of this process's newest object, from bpftool.
fn map_memlock(name: &str) -> Result<u64> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "show"])
        .output()
        .context("running bpftool")?;
    let maps: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).context("bpftool map show -j")?;
    maps.iter()
        .rev()
        .find(|m| m["name"] == name)
        .and_then(|m| m["bytes_memlock"].as_u64())
        .with_context(|| format!("no map {name} in bpftool's list"))
}

/// Measures and prints the figures.
pub fn run() -> Result<Vec<(String, f64)>> {
    let mut figures = Vec::new();

    // One table of 4096 backends.
    let names: Vec<String> = (0..4096u32)
        .map(|n| Ipv4Addr::from(0x0a00_0000 + n).to_string())
        .collect();
    let entries: Vec<maglev::Entry<'_>> = names
        .iter()
        .map(|name| maglev::Entry { name, weight: 1 })
        .collect();
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let table = maglev::build(&entries, lb_common::MAGLEV_M);
            std::hint::black_box(&table);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    figures.push(("maglev_rebuild_ms_4096".to_string(), times[2]));

    // The largest config into a freshly loaded object.
    let text = config_512x8();
    let t = Instant::now();
    let mut ebpf = xdp::load_with(
        OWN_MAC,
        OWN_MAC,
        lb_common::CONNTRACK_DEFAULT_MAX,
        lb_common::CONNTRACK_DEFAULT_MAX,
        SERVICES,
        &[PROG_LBD],
        None,
    )?;
    let mut dp = XdpDatapath::with_maps(XdpMaps::new(&mut ebpf)?);
    figures.push((
        "xdp_load_ms_512_services".to_string(),
        t.elapsed().as_secs_f64() * 1e3,
    ));
    let t = Instant::now();
    let config = Config::parse(&text).context("the 512x8 config")?;
    let macs: HashMap<std::net::IpAddr, [u8; 6]> = config
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| (b.addr, OWN_MAC)))
        .collect();
    let report = Engine::new().apply(&config, &Overrides::default(), &macs, &mut dp)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    ensure!(
        (
            report.services_added,
            report.backends_added,
            report.tables_written
        ) == (512, 4096, 512),
        "applied {report:?}"
    );
    figures.push(("config_load_ms_512x8".to_string(), load_ms));
    let rings = map_memlock("RINGS")? as f64;
    figures.push((
        "kernel_mib_rings_per_service".to_string(),
        rings / f64::from(SERVICES) / (1 << 20) as f64,
    ));
    let conntrack = map_memlock("CONNTRACK")? as f64;
    figures.push((
        "kernel_mib_conntrack_per_1m_flows".to_string(),
        conntrack / f64::from(lb_common::CONNTRACK_DEFAULT_MAX) * 1e6 / (1 << 20) as f64,
    ));
    drop(dp);
    drop(ebpf);

    figures.push(("daemon_rss_mib_16m_flows".to_string(), rss_16m()?));
    Ok(figures)
}

/// lbd's VmRSS in MiB, idle after a scan of a full 16M-entry table.
fn rss_16m() -> Result<f64> {
    let topo = Topology::builder(&crate::test_tag("bench_rss"))
        .lbd_nodes(1)
        .backends(3)
        .build()?;
    let node = Host::Lbd(1);
    let _backends = topo.start_backends(&crate::bin_path("lbd-test-backend")?)?;
    let all: Vec<_> = topo.backends().into_iter().map(|b| topo.ip(b)).collect();
    let config = lbd::all_backends_config(&topo, node, Mode::XdpGeneric).replacen(
        "[daemon]\n",
        &format!("[daemon]\nconntrack_max = {RSS_FLOWS}\n"),
        1,
    );
    let lbd = LbdNode::start(&topo, node, &config)?;
    std::thread::sleep(Duration::from_secs(2));
    let before = crate::vm_rss_mib(lbd.process.pid())?;
    let (conntrack, backends_map) = stress::find_lbd_maps(&topo, node)?;
    let live = stress::live_backend_ids(backends_map)?;
    let inserted = stress::fill_conntrack(conntrack, &live, RSS_FLOWS)?;
    // A drain answers after a fresh scan of the whole table; maintenance off undoes it.
    let b1 = all[0].to_string();
    for args in [
        ["backend", "drain", "web", b1.as_str()].as_slice(),
        ["backend", "maintenance", "web", b1.as_str(), "off"].as_slice(),
    ] {
        let (code, _, err) = lbd.lbctl(args)?;
        if code != 0 {
            bail!("lbctl {args:?}: {err}");
        }
    }
    let counted = lbd.status()?.conntrack_entries;
    // Idle: a few seconds for the rates sampler and the tick to settle.
    std::thread::sleep(Duration::from_secs(3));
    let after = crate::vm_rss_mib(lbd.process.pid())?;
    eprintln!(
        "scale: {inserted} flows inserted, {counted} counted by lbd; RSS {before:.1} MiB before, {after:.1} MiB after"
    );
    lbd.stop()?;
    Ok(after)
}
