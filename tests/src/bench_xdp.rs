//! Per-packet cost of the XDP programs through BPF_PROG_TEST_RUN (lbd vs the bare MAC rewrite).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, bail};
use etherparse::PacketBuilder;
use lb_daemon::{
    config::Config,
    datapath::{Datapath as _, xdp::XdpDatapath},
    engine::Engine,
    overrides::Overrides,
    xdp::{self, PROG_BARE, PROG_LBD, XdpMaps},
};

const XDP_TX: u32 = 3;
const OWN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];

/// Repeats for the per-packet figures: at least a million, as the issue asks.
pub const REPEAT: u32 = 1_000_000;

fn frame(src: [u8; 4], sport: u16) -> anyhow::Result<Vec<u8>> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, OWN_MAC)
        .ipv4(src, [198, 18, 0, 100], 64)
        .tcp(sport, 80, 1, 64240)
        .ack(1);
    let payload = b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n";
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload)
        .context("building the benchmark frame")?;
    Ok(out)
}

/// 2001:db8::`last` (the digits as hex, as the harness numbers hosts).
fn v6(last: u16) -> [u8; 16] {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last).octets()
}

/// The IPv6 twin of [`frame`]: the same TCP segment from `src` to [2001:db8::100]:80.
fn frame6(src: [u8; 16], sport: u16) -> anyhow::Result<Vec<u8>> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, OWN_MAC)
        .ipv6(src, v6(0x100), 64)
        .tcp(sport, 80, 1, 64240)
        .ack(1);
    let payload = b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n";
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload)
        .context("building the IPv6 benchmark frame")?;
    Ok(out)
}

/// Measures and prints the XDP figures; returns them as (name, value) pairs.
pub fn run() -> anyhow::Result<Vec<(String, f64)>> {
    let new_flows = REPEAT;
    // The default connection table size: a million new flows also exercise LRU eviction, as a
    // SYN flood or a busy VIP would.
    let mut ebpf = xdp::load(
        OWN_MAC,
        OWN_MAC,
        lb_common::CONNTRACK_DEFAULT_MAX,
        &[PROG_LBD, PROG_BARE],
    )?;
    let mut dp = XdpDatapath::with_maps(XdpMaps::new(&mut ebpf)?);
    let mut flows = dp
        .take_flows()
        .context("the connection table was taken already")?;
    let config = Config::parse(
        "[daemon]\ninterface = \"eth0\"\n[[service]]\nvip = \"198.18.0.100:80\"\n\
         backends = [ { addr = \"198.18.0.21\" }, { addr = \"198.18.0.22\" }, { addr = \"198.18.0.23\" } ]\n\
         [[service]]\nvip = \"[2001:db8::100]:80\"\n\
         backends = [ { addr = \"2001:db8::21\" }, { addr = \"2001:db8::22\" }, { addr = \"2001:db8::23\" } ]\n",
    )?;
    // BPF_PROG_TEST_RUN repeats run on the same buffer, so the rewritten frame is the next
    // run's input. With the backends' MAC equal to the node's own, the rewritten frame is still
    // addressed to the node and every repeat takes the whole path (the same writes as any MAC).
    let macs: HashMap<IpAddr, [u8; 6]> = (21..=23)
        .flat_map(|i| {
            [
                (IpAddr::V4(Ipv4Addr::new(198, 18, 0, i)), OWN_MAC),
                (IpAddr::from(v6(0x21 + u16::from(i) - 21)), OWN_MAC),
            ]
        })
        .collect();
    Engine::new().apply(&config, &Overrides::default(), &macs, &mut dp)?;

    let pkt = frame([198, 18, 0, 10], 40000)?;
    let bare = xdp::test_run(&ebpf, PROG_BARE, &pkt, REPEAT)?;
    // The first run creates the flow; the measured runs find it in the connection table.
    let first = xdp::test_run(&ebpf, PROG_LBD, &pkt, 1)?;
    if first.action != XDP_TX || bare.action != XDP_TX {
        bail!(
            "benchmark frame not forwarded (lbd action {}, bare action {})",
            first.action,
            bare.action
        );
    }
    let established = xdp::test_run(&ebpf, PROG_LBD, &pkt, REPEAT)?;
    if established.action != XDP_TX {
        bail!(
            "repeated runs of the established flow were not forwarded (action {})",
            established.action
        );
    }
    // The same for IPv6, in the same run: one flow hot, and a bare MAC rewrite of the IPv6
    // frame as its floor.
    let pkt6 = frame6(v6(0x10), 40000)?;
    let first6 = xdp::test_run(&ebpf, PROG_LBD, &pkt6, 1)?;
    if first6.action != XDP_TX {
        bail!(
            "IPv6 benchmark frame not forwarded (action {})",
            first6.action
        );
    }
    let established6 = xdp::test_run(&ebpf, PROG_LBD, &pkt6, REPEAT)?;
    let bare6 = xdp::test_run(&ebpf, PROG_BARE, &pkt6, REPEAT)?;
    if established6.action != XDP_TX {
        bail!(
            "repeated runs of the IPv6 flow were not forwarded (action {})",
            established6.action
        );
    }
    let forwarded: u64 = dp.maps().read_stats()?[lb_common::STATS_BACKEND_BASE as usize..]
        .iter()
        .map(|c| c.packets)
        .sum();
    if forwarded < 2 * u64::from(REPEAT) {
        bail!("only {forwarded} of {REPEAT} repeats took the forwarding path");
    }

    // New flows: each run a flow the table has not seen, so each takes the Maglev path and an
    // insert. BPF_PROG_TEST_RUN repeats one packet, so these are single runs; the same single
    // runs of the established flow give the overhead of one run alone, for a fair comparison.
    let mut new_total = 0u64;
    let mut est_single_total = 0u64;
    for i in 0..new_flows {
        let src = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let f = frame(src, 1024 + (i % 60000) as u16)?;
        let r = xdp::test_run(&ebpf, PROG_LBD, &f, 1)?;
        if r.action != XDP_TX {
            bail!("new flow {i} not forwarded (action {})", r.action);
        }
        new_total += r.ns_per_run;
        est_single_total += xdp::test_run(&ebpf, PROG_LBD, &pkt, 1)?.ns_per_run;
    }
    let new_flow = new_total as f64 / new_flows as f64;
    let est_single = est_single_total as f64 / new_flows as f64;

    // The daemon's periodic scan of the now full connection table: in batches, as it runs,
    // against the walk of two syscalls per entry it replaced.
    let mut scan_ms = |batch: bool| -> anyhow::Result<(f64, u64)> {
        flows.set_batch_ops(batch);
        let start = std::time::Instant::now();
        let counts = flows.scan_at(xdp::coarse_now_ns(), Default::default(), |_| false);
        let ms = start.elapsed().as_secs_f64() * 1e3;
        if batch && !flows.batch_ops() {
            bail!("the kernel refused batch reads of the connection table");
        }
        Ok((ms, counts.entries))
    };
    // The counters, as the rates sampler reads them each second: one batch against the walk.
    let read_ms = |batched: bool| -> anyhow::Result<f64> {
        let mut times = Vec::new();
        for _ in 0..20 {
            let start = std::time::Instant::now();
            if batched {
                dp.maps().read_stats_batched()?;
            } else {
                dp.maps().read_stats_walked()?;
            }
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    };
    let stats_batched_ms = read_ms(true)?;
    let stats_walked_ms = read_ms(false)?;
    let (batched_ms, entries) = scan_ms(true)?;
    let (walked_ms, walked_entries) = scan_ms(false)?;
    // The test runs insert on one CPU, which owns max / CPUs of the table's LRU lists.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let full = (u64::from(lb_common::CONNTRACK_DEFAULT_MAX) / cpus).min(u64::from(new_flows));
    if entries < full * 9 / 10 || walked_entries != entries {
        bail!("the scans saw {entries} and {walked_entries} flows in a table of about {full}");
    }
    // The flood guard. Established flows first, with the guard off; then 10^6 new flows of a
    // spoofed-source flood with the guard at its lowest (one insert per slice per CPU), so that
    // nearly every flood packet takes the guarded path.
    const ESTABLISHED: u32 = 10_000;
    const FLOOD: u32 = 1_000_000;
    dp.set_flood_guard(0)?;
    let est_key = |i: u32| {
        let src = [192, 168, (i >> 8) as u8, i as u8];
        (
            src,
            lb_common::FlowKey::new(
                u32::from_ne_bytes(src),
                u32::from_ne_bytes([198, 18, 0, 100]),
                2000u16.to_be(),
                80u16.to_be(),
                lb_common::IPPROTO_TCP,
            ),
        )
    };
    for i in 0..ESTABLISHED {
        let (src, _) = est_key(i);
        if xdp::test_run(&ebpf, PROG_LBD, &frame(src, 2000)?, 1)?.action != XDP_TX {
            bail!("established flow {i} not forwarded");
        }
    }
    // The same established flows again, one run each, ten rounds: the established cost when
    // each packet is another flow (as under real traffic), not the same one hot in the cache.
    let mut est_many_total = 0u64;
    let frames: Vec<Vec<u8>> = (0..ESTABLISHED)
        .map(|i| frame(est_key(i).0, 2000))
        .collect::<anyhow::Result<_>>()?;
    for _ in 0..10 {
        for f in &frames {
            est_many_total += xdp::test_run(&ebpf, PROG_LBD, f, 1)?.ns_per_run;
        }
    }
    let est_many = est_many_total as f64 / f64::from(10 * ESTABLISHED);
    // And 10,000 established IPv6 flows the same way.
    let frames6: Vec<Vec<u8>> = (0..ESTABLISHED)
        .map(|i| {
            let mut src = v6(0);
            src[8..12].copy_from_slice(&i.to_be_bytes());
            frame6(src, 2000)
        })
        .collect::<anyhow::Result<_>>()?;
    for (i, f) in frames6.iter().enumerate() {
        if xdp::test_run(&ebpf, PROG_LBD, f, 1)?.action != XDP_TX {
            bail!("established IPv6 flow {i} not forwarded");
        }
    }
    let mut est_many6_total = 0u64;
    for _ in 0..10 {
        for f in &frames6 {
            est_many6_total += xdp::test_run(&ebpf, PROG_LBD, f, 1)?.ns_per_run;
        }
    }
    let est_many6 = est_many6_total as f64 / f64::from(10 * ESTABLISHED);
    dp.set_flood_guard(1)?;
    let mut flood_total = 0u64;
    for i in 0..FLOOD {
        let src = [172, 16 + (i >> 16) as u8 % 16, (i >> 8) as u8, i as u8];
        let r = xdp::test_run(&ebpf, PROG_LBD, &frame(src, 3000 + (i % 50000) as u16)?, 1)?;
        if r.action != XDP_TX {
            bail!("flood packet {i} not forwarded (action {})", r.action);
        }
        flood_total += r.ns_per_run;
    }
    let flood = flood_total as f64 / f64::from(FLOOD);
    let kept = (0..ESTABLISHED)
        .filter(|&i| flows.flow(&est_key(i).1).is_some())
        .count();
    let held = dp.maps().read_stats()?[lb_common::reason::FLOOD_GUARD as usize].packets;
    if held < u64::from(FLOOD) * 9 / 10 {
        bail!("the flood guard held back only {held} of {FLOOD} new flows");
    }
    dp.set_flood_guard(0)?;

    Ok(vec![
        ("xdp_ns_per_pkt_new_flow_flood".into(), flood),
        (
            "xdp_cost_ratio_new_flow_flood".into(),
            flood / est_single.max(1.0),
        ),
        ("xdp_ns_per_pkt_established_many_flows".into(), est_many),
        ("xdp_ns_per_pkt_established_many_flows_v6".into(), est_many6),
        (
            "xdp_cost_ratio_v6_vs_v4_many_flows".into(),
            est_many6 / est_many.max(1.0),
        ),
        (
            "xdp_cost_ratio_new_flow_flood_vs_many".into(),
            flood / est_many.max(1.0),
        ),
        (
            "xdp_flood_established_kept".into(),
            kept as f64 / f64::from(ESTABLISHED),
        ),
        (
            "xdp_ns_per_pkt_established".into(),
            established.ns_per_run as f64,
        ),
        (
            "xdp_ns_per_pkt_established_v6".into(),
            established6.ns_per_run as f64,
        ),
        (
            "xdp_cost_ratio_v6_vs_v4_established".into(),
            established6.ns_per_run as f64 / established.ns_per_run.max(1) as f64,
        ),
        ("xdp_ns_per_pkt_bare_tx_v6".into(), bare6.ns_per_run as f64),
        ("xdp_ns_per_pkt_new_flow".into(), new_flow),
        ("xdp_ns_per_pkt_established_single_run".into(), est_single),
        ("xdp_ns_per_pkt_bare_tx".into(), bare.ns_per_run as f64),
        (
            "xdp_cost_ratio_established".into(),
            established.ns_per_run as f64 / bare.ns_per_run.max(1) as f64,
        ),
        (
            "xdp_cost_ratio_new_flow".into(),
            new_flow / est_single.max(1.0),
        ),
        ("stats_read_ms_batched".into(), stats_batched_ms),
        ("stats_read_ms_walked".into(), stats_walked_ms),
        ("conntrack_scan_flows".into(), entries as f64),
        ("conntrack_scan_ms_batched".into(), batched_ms),
        ("conntrack_scan_ms_walked".into(), walked_ms),
        (
            "conntrack_scan_walked_vs_batched".into(),
            walked_ms / batched_ms.max(1e-3),
        ),
    ])
}
