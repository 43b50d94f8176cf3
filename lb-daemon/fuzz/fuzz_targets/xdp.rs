//! Fuzz the XDP program itself: each input is one Ethernet frame, run through
//! `BPF_PROG_TEST_RUN` on the balancer loaded once, its maps filled by the daemon's engine with
//! the services of [`CONFIG`]. The connection table fills as the fuzzer runs (it is small, so
//! its LRU eviction runs too).
//!
//! Invariants, for every frame the kernel takes (14 to [`MAX_FRAME`] bytes):
//! - `XDP_TX` only for a frame to this node's MAC that is IPv4 (no options, not a fragment) or
//!   IPv6 (no extension header), TCP or UDP with a whole header, to a configured VIP, port and protocol with backends; the
//!   output is the input but for the MACs: the destination is the MAC of one of that service's
//!   backends, the source this node's; that backend's counter counts it, and nothing else but
//!   the flood guard's (a new flow it kept out of the connection table; its rate is set low).
//! - Any other action: the output is the input, byte for byte, and exactly one pass or drop
//!   reason counts it: the one a reading of the headers (`expected`) predicts, with the action
//!   that goes with it.
//!
//! The program runs in the kernel, uninstrumented: what guides libFuzzer is `expected`, whose
//! branches follow the program's checks, and the kinds of forward `check` tells apart.
//!
//! Needs root and BPF: without them the target stops before the first input, loudly.

#![no_main]

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd as _,
};

use aya::{
    Ebpf,
    maps::{Map, MapData, PerCpuArray},
};
use lb_common::{Counter, IPPROTO_TCP, IPPROTO_UDP, STATS_BACKEND_BASE, reason};
use lb_daemon::{
    config::Config,
    datapath::{Datapath as _, xdp::XdpDatapath},
    engine::Engine,
    overrides::Overrides,
    xdp::{self, PROG_LBD, XdpFlows, XdpMaps},
};
use libfuzzer_sys::fuzz_target;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// This node's MAC (the seeds' frames are addressed to it).
const OWN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// Shortest frame `BPF_PROG_TEST_RUN` takes (an Ethernet header).
const MIN_FRAME: usize = 14;
/// Longest frame tried: Ethernet's 1514 bytes and a VLAN tag. Longer ones only make the fuzzer
/// slower (the program reads the first 54 bytes).
const MAX_FRAME: usize = 1518;
/// Connection table size: small, so that the fuzzer reaches its evictions.
const CONNTRACK_MAX: u32 = 1024;
/// The flood guard's rate in new flows per second (per CPU and 100 ms slice: a few dozen).
const FLOOD_NEW_FLOWS_PER_SEC: u32 = 1000;

/// The services: TCP with three backends, UDP with two (shared addresses, ids of their own), a
/// client-address-only (`sh`) TCP service, and one without backends (its frames are dropped).
const CONFIG: &str = r#"
[daemon]
interface = "eth0"
[[service]]
name = "web"
vip = "198.18.0.100:80"
backends = [ { addr = "198.18.0.21" }, { addr = "198.18.0.22" }, { addr = "198.18.0.23", weight = 2 } ]
[[service]]
name = "dns"
vip = "198.18.0.100:5353"
proto = "udp"
backends = [ { addr = "198.18.0.21" }, { addr = "198.18.0.22" } ]
[[service]]
name = "sticky"
vip = "198.18.0.101:443"
scheduler = "sh"
backends = [ { addr = "198.18.0.24" }, { addr = "198.18.0.25" } ]
[[service]]
name = "empty"
vip = "198.18.0.100:8080"
[[service]]
name = "web6"
vip = "[2001:db8::100]:80"
backends = [ { addr = "2001:db8::21" }, { addr = "2001:db8::22", weight = 2 } ]
[[service]]
name = "dns6"
vip = "[2001:db8::100]:5353"
proto = "udp"
backends = [ { addr = "2001:db8::21" } ]
[[service]]
name = "empty6"
vip = "[2001:db8::100]:8080"
"#;

/// A backend's MAC: 02:00:00:00:<6 for IPv6, else 0>:<last octet>.
fn mac_of(addr: IpAddr) -> [u8; 6] {
    match addr {
        IpAddr::V4(a) => [0x02, 0, 0, 0, 0, a.octets()[3]],
        IpAddr::V6(a) => [0x02, 0, 0, 0, 6, a.octets()[15]],
    }
}

/// (VIP, port, IP protocol).
type VipKey = (IpAddr, u16, u8);

/// The loaded program, its maps, and what the engine put in them.
struct Bed {
    ebpf: Ebpf,
    /// The tables; kept so that their descriptors stay open.
    _dp: XdpDatapath,
    _flows: XdpFlows,
    /// A handle of our own on STATS: read entry by entry (the daemon's reader reads all 1069).
    stats: PerCpuArray<MapData, Counter>,
    /// Backend ids of each service (empty: no backend).
    services: HashMap<VipKey, Vec<u32>>,
    /// MAC of each backend id.
    macs: BTreeMap<u32, [u8; 6]>,
}

impl Bed {
    fn load() -> Bed {
        let mut ebpf = xdp::load(OWN_MAC, [0; 6], CONNTRACK_MAX, &[PROG_LBD]).unwrap_or_else(|e| {
            panic!("the xdp target needs root and BPF (BPF_PROG_TEST_RUN): loading failed: {e}")
        });
        let fd = match ebpf.map("STATS") {
            Some(Map::PerCpuArray(data)) => data.fd().as_fd().try_clone_to_owned(),
            _ => panic!("no per-CPU STATS map in the object"),
        }
        .unwrap_or_else(|e| panic!("duplicating the STATS descriptor: {e}"));
        let stats = MapData::from_fd(fd)
            .map_err(|e| e.to_string())
            .and_then(|d| PerCpuArray::try_from(Map::PerCpuArray(d)).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| panic!("opening STATS: {e}"));
        let maps = XdpMaps::new(&mut ebpf).unwrap_or_else(|e| panic!("the maps: {e}"));
        let mut dp = XdpDatapath::with_maps(maps);
        let flows = dp
            .take_flows()
            .expect("the connection table is handed out once");
        let config = Config::parse(CONFIG).unwrap_or_else(|e| panic!("CONFIG: {e}"));
        let addr_macs = config
            .services
            .iter()
            .flat_map(|s| s.backends.iter())
            .map(|b| (b.addr, mac_of(b.addr)))
            .collect();
        let mut engine = Engine::new();
        engine
            .apply(&config, &Overrides::default(), &addr_macs, &mut dp)
            .unwrap_or_else(|e| panic!("filling the maps: {e}"));
        // Low enough that the fuzzer's new flows pass it within a slice, so that both sides of
        // the guard run.
        dp.set_flood_guard(FLOOD_NEW_FLOWS_PER_SEC)
            .unwrap_or_else(|e| panic!("setting the flood guard: {e}"));
        let mut services = HashMap::new();
        let mut macs = BTreeMap::new();
        for svc in engine.services() {
            let key = (
                svc.config.vip.ip(),
                svc.config.vip.port(),
                svc.config.proto.number(),
            );
            let ids: Vec<u32> = svc.backends.values().map(|b| b.id).collect();
            for b in svc.backends.values() {
                macs.insert(b.id, mac_of(b.addr));
            }
            services.insert(key, ids);
        }
        Bed {
            ebpf,
            _dp: dp,
            _flows: flows,
            stats,
            services,
            macs,
        }
    }

    /// Reads one STATS entry, summed over the CPUs.
    fn stat(&self, index: u32) -> Counter {
        let per_cpu = self
            .stats
            .get(&index, 0)
            .unwrap_or_else(|e| panic!("reading STATS[{index}]: {e}"));
        let mut sum = Counter::default();
        for c in per_cpu.iter() {
            sum.add(*c);
        }
        sum
    }

    /// The reason counters, then each backend's, by id.
    fn counters(&self) -> (Vec<Counter>, BTreeMap<u32, Counter>) {
        let reasons = (0..reason::COUNT).map(|r| self.stat(r)).collect();
        let backends = self
            .macs
            .keys()
            .map(|&id| (id, self.stat(STATS_BACKEND_BASE + id)))
            .collect();
        (reasons, backends)
    }
}

/// What the program must do with a frame, from its headers alone.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    /// Forward to one of this service's backends.
    Tx(VipKey),
    /// Not forwarded: this action, counted under this reason.
    Skip(u32, u32),
}

/// The balancer's decision, read from the frame as the program reads it (its checks in its
/// order; addresses and ports as they are on the wire).
fn expected(frame: &[u8], services: &HashMap<VipKey, Vec<u32>>) -> Expected {
    let pass = |r| Expected::Skip(XDP_PASS, r);
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    if ethertype == 0x86dd {
        return expected6(frame, services);
    }
    if ethertype != 0x0800 {
        return pass(if ethertype == 0x0806 {
            reason::PASS_ARP
        } else {
            reason::PASS_NOT_IP
        });
    }
    if frame[0..6] != OWN_MAC {
        return pass(reason::PASS_OTHER_MAC);
    }
    let ip = &frame[14..];
    if ip.len() < 20 {
        return pass(reason::PASS_TRUNCATED);
    }
    if ip[0] != 0x45 {
        return pass(if ip[0] >> 4 == 4 && ip[0] & 0x0f > 5 {
            reason::PASS_IP_OPTIONS
        } else {
            reason::PASS_BAD_IP_HEADER
        });
    }
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return pass(reason::PASS_FRAGMENT);
    }
    let proto = ip[9];
    let l4 = &ip[20..];
    let header = match proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP => 8,
        1 => return pass(reason::PASS_ICMP),
        _ => return pass(reason::PASS_OTHER_PROTO),
    };
    if l4.len() < header {
        return pass(reason::PASS_TRUNCATED);
    }
    let key = (
        IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19])),
        u16::from_be_bytes([l4[2], l4[3]]),
        proto,
    );
    vip_decision(key, services)
}

/// [`expected`] for an IPv6 frame: ICMPv6 before the MAC check (neighbour discovery goes to
/// multicast MACs), then the version, then no extension header before TCP or UDP.
fn expected6(frame: &[u8], services: &HashMap<VipKey, Vec<u32>>) -> Expected {
    let pass = |r| Expected::Skip(XDP_PASS, r);
    let ip = &frame[14..];
    if ip.len() < 40 {
        return pass(reason::PASS_TRUNCATED);
    }
    let proto = ip[6];
    if proto == 58 {
        return pass(reason::PASS_ICMP);
    }
    if frame[0..6] != OWN_MAC {
        return pass(reason::PASS_OTHER_MAC);
    }
    if ip[0] >> 4 != 6 {
        return pass(reason::PASS_BAD_IP_HEADER);
    }
    let header = match proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP => 8,
        44 => return pass(reason::PASS_FRAGMENT),
        0 | 43 | 60 | 50 | 51 | 135 | 139 | 140 | 253 | 254 => {
            return pass(reason::PASS_IPV6_EXT_HEADER);
        }
        _ => return pass(reason::PASS_OTHER_PROTO),
    };
    let l4 = &ip[40..];
    if l4.len() < header {
        return pass(reason::PASS_TRUNCATED);
    }
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&ip[24..40]);
    let key = (
        IpAddr::V6(Ipv6Addr::from(dst)),
        u16::from_be_bytes([l4[2], l4[3]]),
        proto,
    );
    vip_decision(key, services)
}

/// The end of both families' checks: a configured VIP forwards, or drops for want of backends.
fn vip_decision(key: VipKey, services: &HashMap<VipKey, Vec<u32>>) -> Expected {
    match services.get(&key) {
        None => Expected::Skip(XDP_PASS, reason::PASS_NOT_VIP),
        Some(ids) if ids.is_empty() => Expected::Skip(XDP_DROP, reason::DROP_NO_BACKEND),
        Some(_) => Expected::Tx(key),
    }
}

/// `after - before` in packets and bytes.
fn grew(before: Counter, after: Counter) -> (u64, u64) {
    (
        after.packets.wrapping_sub(before.packets),
        after.bytes.wrapping_sub(before.bytes),
    )
}

thread_local! {
    // libFuzzer calls the target from one thread; the program is loaded once per process.
    static BED: Bed = Bed::load();
}

fuzz_target!(
    init: {
        // Load now: without root or BPF the run stops here, before any input is blamed.
        BED.with(|_| ());
    },
    |frame: &[u8]| {
        if !(MIN_FRAME..=MAX_FRAME).contains(&frame.len()) {
            return;
        }
        BED.with(|bed| check(bed, frame));
    }
);

fn check(bed: &Bed, frame: &[u8]) {
    let want = expected(frame, &bed.services);
    let (reasons_before, backends_before) = bed.counters();
    let out = xdp::test_run(&bed.ebpf, PROG_LBD, frame, 1).unwrap_or_else(|e| {
        panic!(
            "BPF_PROG_TEST_RUN refused a {}-byte frame: {e}",
            frame.len()
        )
    });
    let (reasons_after, backends_after) = bed.counters();
    let len = frame.len() as u64;
    let reasons: Vec<(u32, (u64, u64))> = (0..reason::COUNT)
        .map(|r| {
            (
                r,
                grew(reasons_before[r as usize], reasons_after[r as usize]),
            )
        })
        .filter(|(_, d)| *d != (0, 0))
        .collect();
    let backends: Vec<(u32, (u64, u64))> = backends_before
        .iter()
        .map(|(&id, &before)| (id, grew(before, backends_after[&id])))
        .filter(|(_, d)| *d != (0, 0))
        .collect();

    if out.action == XDP_TX {
        let Expected::Tx(key) = want else {
            panic!("XDP_TX for a frame that must not be forwarded ({want:?})");
        };
        assert_eq!(frame[0..6], OWN_MAC, "XDP_TX for a frame to another MAC");
        assert_eq!(out.packet.len(), frame.len(), "XDP_TX changed the length");
        assert_eq!(
            out.packet[12..],
            frame[12..],
            "XDP_TX changed bytes past the MACs"
        );
        assert_eq!(out.packet[6..12], OWN_MAC, "source MAC is not the node's");
        let [(id, counted)] = backends[..] else {
            panic!("a forwarded frame must count for one backend: {backends:?}");
        };
        assert_eq!(counted, (1, len), "backend {id} counted it wrong");
        let new_flow = backends_after[&id]
            .new_flows
            .wrapping_sub(backends_before[&id].new_flows);
        assert!(
            bed.services[&key].contains(&id),
            "backend {id} is not one of {key:?}'s"
        );
        assert_eq!(
            out.packet[0..6],
            bed.macs[&id],
            "destination MAC is not that of backend {id}"
        );
        // No reason counts a forwarded frame, but for a new flow the flood guard kept out of
        // the connection table.
        let untracked = match reasons[..] {
            [] => false,
            [(reason::FLOOD_GUARD, (1, n))] if n == len => true,
            _ => panic!("a forwarded frame counted as {reasons:?}"),
        };
        // The kernel's branches give libFuzzer no coverage: one edge per kind of forward (a new
        // flow inserted, one the flood guard kept out, an established one) stands in for them.
        match (new_flow, untracked) {
            (1, false) => std::hint::black_box("new flow"),
            (0, true) => std::hint::black_box("new flow, untracked"),
            (0, false) => std::hint::black_box("established flow"),
            _ => panic!("a forwarded frame counted {new_flow} new flows, untracked: {untracked}"),
        };
    } else {
        assert_eq!(out.packet, frame, "action {} changed the frame", out.action);
        let [(r, counted)] = reasons[..] else {
            panic!(
                "action {} must count exactly one reason: {reasons:?}",
                out.action
            );
        };
        assert_eq!(
            counted,
            (1, len),
            "reason {} counted it wrong",
            reason::NAMES[r as usize]
        );
        assert_eq!(
            Expected::Skip(out.action, r),
            want,
            "action {} for reason {}",
            out.action,
            reason::NAMES[r as usize]
        );
        assert!(
            backends.is_empty(),
            "a frame not forwarded counted for backends {backends:?}"
        );
    }
}
