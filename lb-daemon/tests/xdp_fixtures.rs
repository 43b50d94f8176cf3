//! The XDP program through BPF_PROG_TEST_RUN, Katran style: a table of
//! (description, input frame, expected action, expected output frame), then the counters.
//! The maps are filled by the same engine the daemon uses.

mod common;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::Ebpf;
use common::*;
use lb_common::{
    FlowKey, FlowKey6, IPPROTO_TCP, MAGLEV_M, STATS_BACKEND_BASE, STATS_SERVICE_BASE, ipv6_lanes,
    reason,
};
use lb_daemon::{
    config::Config,
    datapath::{Datapath as _, xdp::XdpDatapath},
    engine::Engine,
    overrides::{Admin, Overrides},
    xdp::{self, PROG_LBD, XdpFlows, XdpMaps},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// A dual-stack config: the IPv4 services `web`, `dns` and `empty`, and their IPv6 twins
/// `web6`, `dns6` and `empty6` on 2001:db8::100 with the backends' IPv6 addresses.
fn config(web_backends: &[u8]) -> Config {
    let list: Vec<String> = web_backends
        .iter()
        .map(|b| format!("{{ addr = \"198.18.0.{b}\" }}"))
        .collect();
    let list6: Vec<String> = web_backends
        .iter()
        .map(|b| format!("{{ addr = \"{}\" }}", ip6(*b)))
        .collect();
    Config::parse(&format!(
        r#"
[daemon]
interface = "eth0"
[[service]]
name = "web"
vip = "198.18.0.100:80"
health = {{}}
backends = [{}]
[[service]]
name = "dns"
vip = "198.18.0.100:5353"
proto = "udp"
backends = [ {{ addr = "198.18.0.21" }}, {{ addr = "198.18.0.22" }} ]
[[service]]
name = "empty"
vip = "198.18.0.100:8080"
[[service]]
name = "web6"
vip = "[2001:db8::100]:80"
health = {{}}
backends = [{}]
[[service]]
name = "dns6"
vip = "[2001:db8::100]:5353"
proto = "udp"
backends = [ {{ addr = "2001:db8::21" }}, {{ addr = "[2001:db8::22]:5353" }} ]
[[service]]
name = "empty6"
vip = "[2001:db8::100]:8080"
"#,
        list.join(", "),
        list6.join(", ")
    ))
    .expect("fixture config")
}

fn mac_of(last: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, last]
}

/// 198.18.0.`last`.
fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, last))
}

/// 2001:db8::`last`, the digits of `last` read as hex (backend 21 is 2001:db8::21), as the
/// namespace harness numbers its hosts.
fn ip6(last: u8) -> IpAddr {
    let lane = u16::from_str_radix(&last.to_string(), 16).expect("decimal digits are hex digits");
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, lane))
}

/// Backends .20 to .30 of both families: the IPv6 one has the MAC of its IPv4 twin.
fn macs() -> HashMap<IpAddr, [u8; 6]> {
    (20..=30)
        .flat_map(|i| [(ip(i), mac_of(i)), (ip6(i), mac_of(i))])
        .collect()
}

struct Bed {
    ebpf: Ebpf,
    dp: XdpDatapath,
    flows: XdpFlows,
    engine: Engine,
}

impl Bed {
    fn new(web_backends: &[u8]) -> Bed {
        Bed::with_table(web_backends, 4096)
    }

    fn with_table(web_backends: &[u8], conntrack_max: u32) -> Bed {
        let mut ebpf =
            xdp::load(OWN_MAC, [0; 6], conntrack_max, &[PROG_LBD]).expect("load XDP programs");
        let maps = XdpMaps::new(&mut ebpf).expect("maps");
        assert!(
            maps.rings_mapped(),
            "the Maglev rings could not be mapped (BPF_F_MMAPABLE, Linux 5.5+)"
        );
        let mut dp = XdpDatapath::with_maps(maps);
        let flows = dp.take_flows().expect("the connection table");
        let mut engine = Engine::new();
        engine
            .apply(
                &config(web_backends),
                &Overrides::default(),
                &macs(),
                &mut dp,
            )
            .expect("apply config");
        Bed {
            ebpf,
            dp,
            flows,
            engine,
        }
    }

    /// Applies a config and overrides, as the daemon does.
    fn apply(&mut self, cfg: &Config, o: &Overrides) -> lb_daemon::engine::ApplyReport {
        self.engine
            .apply(cfg, o, &macs(), &mut self.dp)
            .expect("apply")
    }

    /// The counters in the STATS layout, services as the daemon shows them (summed from their
    /// backends, freed ones included).
    fn stats(&self) -> Vec<lb_common::Counter> {
        let mut stats = self.dp.maps().read_stats().expect("stats");
        let counters = self.dp.counters().expect("counters");
        for svc in self.engine.services() {
            stats[(STATS_SERVICE_BASE + svc.id) as usize] =
                self.engine.service_counter(svc, &counters);
        }
        stats
    }

    fn scan(&mut self, now: u64, is_dead: impl Fn(u32) -> bool) -> lb_daemon::model::FlowCounts {
        self.flows.scan_at(now, Default::default(), is_dead)
    }

    fn run(&self, frame: &[u8]) -> xdp::TestRunOutput {
        xdp::test_run(&self.ebpf, PROG_LBD, frame, 1).expect("test run")
    }

    /// The backend the live Maglev table of the web service gives a TCP flow from the client.
    fn maglev_choice(&self, sport: u16) -> IpAddr {
        let svc = self
            .engine
            .services()
            .find(|s| s.config.name == "web")
            .expect("web service");
        let key = FlowKey::new(
            u32::from_ne_bytes(CLIENT),
            u32::from_ne_bytes(VIP),
            sport.to_be(),
            80u16.to_be(),
            IPPROTO_TCP,
        );
        let slot = lb_common::hash::flow_hash(&key) % MAGLEV_M;
        let id = svc.table()[slot as usize];
        svc.backends
            .values()
            .find(|b| b.id == id)
            .expect("backend of slot")
            .addr
    }

    /// The backend the live Maglev table of `web6` gives a TCP flow from the IPv6 client.
    fn maglev_choice6(&self, sport: u16) -> IpAddr {
        let svc = self
            .engine
            .services()
            .find(|s| s.config.name == "web6")
            .expect("web6 service");
        let key = flow6(sport);
        let slot = lb_common::hash::flow_hash6(&key) % MAGLEV_M;
        let id = svc.table()[slot as usize];
        svc.backends
            .values()
            .find(|b| b.id == id)
            .expect("backend of slot")
            .addr
    }

    fn backend_id(&self, service: &str, addr: u8) -> u32 {
        let svc = self
            .engine
            .services()
            .find(|s| s.config.name == service)
            .expect("service");
        let ip = if service.ends_with('6') {
            ip6(addr)
        } else {
            ip(addr)
        };
        svc.backends[&ip].id
    }

    fn service_id(&self, service: &str) -> u32 {
        self.engine
            .services()
            .find(|s| s.config.name == service)
            .expect("service")
            .id
    }
}

/// The IPv6 TCP flow key from the client's port `sport` to web6.
fn flow6(sport: u16) -> FlowKey6 {
    FlowKey6::new(
        ipv6_lanes(CLIENT6),
        ipv6_lanes(VIP6),
        sport.to_be(),
        80u16.to_be(),
        IPPROTO_TCP,
    )
}

/// The frame a TX verdict must produce: the backend's MAC as destination, ours as source,
/// everything from the EtherType on untouched.
fn forwarded(input: &[u8], backend: IpAddr) -> Vec<u8> {
    let mut out = input.to_vec();
    out[0..6].copy_from_slice(&macs()[&backend]);
    out[6..12].copy_from_slice(&OWN_MAC);
    out
}

fn backend_of(output: &[u8]) -> u8 {
    assert_eq!(
        &output[6..12],
        &OWN_MAC,
        "source MAC must be the node's own"
    );
    output[5]
}

#[test]
fn fixtures_table() {
    if !have_root("fixtures_table") {
        return;
    }
    let bed = Bed::new(&[21, 22, 23]);
    let syn = tcp(OWN_MAC, CLIENT, 40000, VIP, 80, true, false);
    let chosen = bed.maglev_choice(40000);

    struct Case {
        what: &'static str,
        input: Vec<u8>,
        action: u32,
        output: Vec<u8>,
    }
    let pass = |what, input: Vec<u8>| Case {
        what,
        output: input.clone(),
        input,
        action: XDP_PASS,
    };
    let mut short_tcp = tcp(OWN_MAC, CLIENT, 40001, VIP, 80, true, false);
    short_tcp.truncate(14 + 20 + 10);
    let mut short_ip = tcp(OWN_MAC, CLIENT, 40001, VIP, 80, true, false);
    short_ip.truncate(14 + 12);
    let cases = vec![
        Case {
            what: "TCP SYN to the VIP goes to the Maglev backend",
            input: syn.clone(),
            action: XDP_TX,
            output: forwarded(&syn, chosen),
        },
        Case {
            what: "the same flow again (ACK with data) goes to the same backend",
            input: tcp(OWN_MAC, CLIENT, 40000, VIP, 80, false, false),
            action: XDP_TX,
            output: forwarded(&tcp(OWN_MAC, CLIENT, 40000, VIP, 80, false, false), chosen),
        },
        pass(
            "a non-VIP address passes",
            tcp(OWN_MAC, CLIENT, 40000, [198, 18, 0, 99], 80, true, false),
        ),
        pass(
            "the VIP on an unconfigured port passes",
            tcp(OWN_MAC, CLIENT, 40000, VIP, 81, true, false),
        ),
        pass("UDP to a TCP-only port passes", udp(CLIENT, 5000, VIP, 80)),
        pass(
            "a frame for another MAC passes (flooded, not ours)",
            tcp(mac_of(0x03), CLIENT, 40000, VIP, 80, true, false),
        ),
        pass("ARP passes", arp_request()),
        pass("ICMP to the VIP passes", icmp(VIP)),
        pass("IPv6 to another address passes", ipv6()),
        pass(
            "another EtherType (VLAN) passes",
            with_ethertype(ipv6(), 0x8100),
        ),
        pass(
            "GRE to the VIP passes",
            with_proto(tcp(OWN_MAC, CLIENT, 40000, VIP, 80, true, false), 47),
        ),
        pass(
            "a first fragment (MF) passes",
            with_frag(tcp(OWN_MAC, CLIENT, 40000, VIP, 80, false, false), true, 0),
        ),
        pass(
            "a later fragment (offset) passes",
            with_frag(tcp(OWN_MAC, CLIENT, 40000, VIP, 80, false, false), false, 8),
        ),
        pass(
            "IPv4 options pass",
            with_ip_options(tcp(OWN_MAC, CLIENT, 40000, VIP, 80, true, false)),
        ),
        pass("a truncated TCP header passes", short_tcp),
        pass("a truncated IPv4 header passes", short_ip),
        Case {
            what: "a VIP with no backend drops",
            input: tcp(OWN_MAC, CLIENT, 40000, VIP, 8080, true, false),
            action: XDP_DROP,
            output: tcp(OWN_MAC, CLIENT, 40000, VIP, 8080, true, false),
        },
    ];
    for c in &cases {
        let got = bed.run(&c.input);
        assert_eq!(got.action, c.action, "{}: action", c.what);
        assert_eq!(got.packet, c.output, "{}: output frame", c.what);
    }

    // UDP service: forwarded, and the same datagram flow sticks.
    let q = udp(CLIENT, 5000, VIP, 5353);
    let first = bed.run(&q);
    assert_eq!(first.action, XDP_TX, "UDP to the VIP");
    let b = backend_of(&first.packet);
    assert!(
        [21, 22].contains(&b),
        "UDP backend {b} not in the dns service"
    );
    assert_eq!(first.packet, forwarded(&q, ip(b)));
    assert_eq!(backend_of(&bed.run(&q).packet), b, "UDP flow sticks");

    // Counters: one per reason per case above, plus the services and backends.
    // The program counts backends only; the engine adds them up per service.
    let stats = bed.stats();
    let want = [
        (reason::PASS_NOT_VIP, 4),
        (reason::PASS_OTHER_MAC, 1),
        (reason::PASS_ARP, 1),
        (reason::PASS_ICMP, 1),
        (reason::PASS_NOT_IP, 1),
        (reason::PASS_OTHER_PROTO, 1),
        (reason::PASS_FRAGMENT, 2),
        (reason::PASS_IP_OPTIONS, 1),
        (reason::PASS_TRUNCATED, 2),
        (reason::DROP_NO_BACKEND, 1),
        (reason::DROP_BAD_BACKEND, 0),
        (reason::PASS_BAD_IP_HEADER, 0),
    ];
    for (r, n) in want {
        assert_eq!(
            stats[r as usize].packets,
            n,
            "counter {}",
            reason::NAMES[r as usize]
        );
    }
    let web = STATS_SERVICE_BASE + bed.service_id("web");
    assert_eq!(stats[web as usize].packets, 2, "web service packets");
    assert_eq!(
        stats[web as usize].bytes,
        (syn.len() + cases[1].input.len()) as u64,
        "web service bytes"
    );
    let dns = STATS_SERVICE_BASE + bed.service_id("dns");
    assert_eq!(stats[dns as usize].packets, 2, "dns service packets");
    let chosen_id = STATS_BACKEND_BASE + bed.backend_id("web", macs()[&chosen][5]);
    assert_eq!(
        stats[chosen_id as usize].packets, 2,
        "packets of the chosen web backend"
    );
    // New flows: the SYN inserted one, the packet that followed found it; likewise for UDP.
    assert_eq!(stats[chosen_id as usize].new_flows, 1, "web flows started");
    assert_eq!(stats[dns as usize].new_flows, 1, "dns flows started");
    assert!(
        stats[..reason::COUNT as usize]
            .iter()
            .all(|c| c.new_flows == 0),
        "a passed or dropped frame starts no flow"
    );
}

/// The IPv6 table: the same verdicts as for IPv4, through VIPS6 and CONNTRACK6, and the IPv6
/// cases the IPv4 path has no counterpart for (extension headers, neighbour discovery).
#[test]
fn fixtures_table_v6() {
    if !have_root("fixtures_table_v6") {
        return;
    }
    let bed = Bed::new(&[21, 22, 23]);
    let syn = tcp6(OWN_MAC, CLIENT6, 40000, VIP6, 80, true, false);
    let chosen = bed.maglev_choice6(40000);
    let data = tcp6(OWN_MAC, CLIENT6, 40000, VIP6, 80, false, false);
    let mut other_addr = VIP6;
    other_addr[15] = 0x99;
    let mut short_tcp = tcp6(OWN_MAC, CLIENT6, 40001, VIP6, 80, true, false);
    short_tcp.truncate(14 + 40 + 10);
    let mut short_ip = tcp6(OWN_MAC, CLIENT6, 40001, VIP6, 80, true, false);
    short_ip.truncate(14 + 30);
    let tx = |what: &'static str, input: Vec<u8>, backend: IpAddr| {
        let output = forwarded(&input, backend);
        (what, input, XDP_TX, output)
    };
    let pass = |what: &'static str, input: Vec<u8>| (what, input.clone(), XDP_PASS, input);
    let cases = vec![
        tx(
            "TCP SYN to the IPv6 VIP goes to the Maglev backend",
            syn.clone(),
            chosen,
        ),
        tx(
            "the same flow again goes to the same backend",
            data.clone(),
            chosen,
        ),
        pass(
            "another IPv6 address passes",
            tcp6(OWN_MAC, CLIENT6, 40000, other_addr, 80, true, false),
        ),
        pass(
            "the VIP on an unconfigured port passes",
            tcp6(OWN_MAC, CLIENT6, 40000, VIP6, 81, true, false),
        ),
        pass(
            "UDP to a TCP-only port passes",
            udp6(CLIENT6, 5000, VIP6, 80),
        ),
        pass(
            "a frame for another MAC passes",
            tcp6(mac_of(0x03), CLIENT6, 40000, VIP6, 80, true, false),
        ),
        pass("ICMPv6 echo to the VIP passes", icmp6(VIP6)),
        pass(
            "a neighbour solicitation for the VIP passes (multicast MAC)",
            neighbour_solicitation(VIP6),
        ),
        pass(
            "a hop-by-hop options header passes",
            with_ext_header(syn.clone(), 0),
        ),
        pass("a routing header passes", with_ext_header(syn.clone(), 43)),
        pass(
            "a destination options header passes",
            with_ext_header(syn.clone(), 60),
        ),
        pass("an AH header passes", with_next_header(syn.clone(), 51)),
        pass(
            "a fragment header passes",
            with_ext_header(data.clone(), 44),
        ),
        pass("GRE to the VIP passes", with_next_header(syn.clone(), 47)),
        pass(
            "version 4 in an IPv6 frame passes",
            with_ip6_version(syn.clone(), 4),
        ),
        pass("a truncated TCP header passes", short_tcp),
        pass("a truncated IPv6 header passes", short_ip),
        (
            "a VIP with no backend drops",
            tcp6(OWN_MAC, CLIENT6, 40000, VIP6, 8080, true, false),
            XDP_DROP,
            tcp6(OWN_MAC, CLIENT6, 40000, VIP6, 8080, true, false),
        ),
    ];
    for (what, input, action, output) in &cases {
        let got = bed.run(input);
        assert_eq!(got.action, *action, "{what}: action");
        assert_eq!(&got.packet, output, "{what}: output frame");
    }
    assert!(
        bed.flows.flow6(&flow6(40000)).is_some(),
        "the flow has its CONNTRACK6 entry"
    );

    // UDP: forwarded to a dns6 backend, and the datagram flow sticks.
    let q = udp6(CLIENT6, 5000, VIP6, 5353);
    let first = bed.run(&q);
    assert_eq!(first.action, XDP_TX, "UDP to the IPv6 VIP");
    let b = backend_of(&first.packet);
    assert!([21, 22].contains(&b), "UDP backend {b} not in dns6");
    assert_eq!(first.packet, forwarded(&q, ip6(b)));
    assert_eq!(backend_of(&bed.run(&q).packet), b, "UDP flow sticks");

    let stats = bed.stats();
    let want = [
        (reason::PASS_NOT_VIP, 3),
        (reason::PASS_OTHER_MAC, 1),
        (reason::PASS_ICMP, 2),
        (reason::PASS_IPV6_EXT_HEADER, 4),
        (reason::PASS_FRAGMENT, 1),
        (reason::PASS_OTHER_PROTO, 1),
        (reason::PASS_BAD_IP_HEADER, 1),
        (reason::PASS_TRUNCATED, 2),
        (reason::DROP_NO_BACKEND, 1),
        (reason::PASS_NOT_IP, 0),
        (reason::PASS_ARP, 0),
    ];
    for (r, n) in want {
        assert_eq!(
            stats[r as usize].packets,
            n,
            "counter {}",
            reason::NAMES[r as usize]
        );
    }
    let web6 = STATS_SERVICE_BASE + bed.service_id("web6");
    assert_eq!(stats[web6 as usize].packets, 2, "web6 packets");
    assert_eq!(
        stats[web6 as usize].bytes,
        (syn.len() + data.len()) as u64,
        "web6 bytes"
    );
    assert_eq!(stats[web6 as usize].new_flows, 1, "web6 flows started");
    let web = STATS_SERVICE_BASE + bed.service_id("web");
    assert_eq!(
        stats[web as usize].packets, 0,
        "nothing counted for IPv4 web"
    );
}

/// Both families at once: established IPv6 flows keep their backend across a table change,
/// the scan counts both tables, and the listing shows IPv6 flows as such.
#[test]
fn dual_stack_flows_share_backends_scans_and_listings() {
    if !have_root("dual_stack_flows_share_backends_scans_and_listings") {
        return;
    }
    let mut bed = Bed::new(&[21, 22, 23]);
    let mut before = HashMap::new();
    for p in 41000..41100u16 {
        let out = bed.run(&tcp6(OWN_MAC, CLIENT6, p, VIP6, 80, true, false));
        assert_eq!(out.action, XDP_TX);
        assert_eq!(
            ip6(backend_of(&out.packet)),
            bed.maglev_choice6(p),
            "port {p}"
        );
        before.insert(p, backend_of(&out.packet));
        assert_eq!(
            bed.run(&tcp(OWN_MAC, CLIENT, p, VIP, 80, true, false))
                .action,
            XDP_TX
        );
    }
    for b in [21, 22, 23] {
        assert!(
            before.values().any(|&x| x == b),
            "backend {b} got no IPv6 flow"
        );
    }
    bed.apply(&config(&[21, 22, 24]), &Overrides::default());
    for (p, b) in &before {
        let out = bed.run(&tcp6(OWN_MAC, CLIENT6, *p, VIP6, 80, false, false));
        assert_eq!(
            backend_of(&out.packet),
            *b,
            "port {p}: an established IPv6 flow stays"
        );
    }
    let counts = bed.scan(xdp::coarse_now_ns(), |_| false);
    assert_eq!(counts.entries, 200, "100 flows of each family");
    let id = bed.backend_id("web6", 21);
    let on_21 = before.values().filter(|&&b| b == 21).count() as u64;
    assert_eq!(
        counts.active.get(&id).copied().unwrap_or(0),
        on_21,
        "web6's .21 flows"
    );

    let query = lb_daemon::flows::FlowQuery {
        limit: 1000,
        ..Default::default()
    };
    let listing = bed
        .flows
        .list_at(xdp::coarse_now_ns(), Default::default(), &query);
    let v6: Vec<_> = listing.flows.iter().filter(|f| f.vip.is_ipv6()).collect();
    assert_eq!(v6.len(), 100, "IPv6 flows listed");
    assert!(v6.iter().all(|f| f.vip.to_string() == "[2001:db8::100]:80"
        && f.client.ip().to_string() == "2001:db8::10"));

    // Past the timeout both tables empty.
    let later = xdp::coarse_now_ns() + xdp::FlowTimeouts::default().tcp_ns + 1_000_000_000;
    assert_eq!(bed.scan(later, |_| false).expired, 200);
}

#[test]
fn established_flows_keep_their_backend_when_the_table_changes() {
    if !have_root("established_flows_keep_their_backend_when_the_table_changes") {
        return;
    }
    let mut bed = Bed::new(&[21, 22, 23]);
    let ports: Vec<u16> = (41000..41300).collect();
    let mut before = HashMap::new();
    for &p in &ports {
        let out = bed.run(&tcp(OWN_MAC, CLIENT, p, VIP, 80, true, false));
        assert_eq!(out.action, XDP_TX);
        let b = backend_of(&out.packet);
        assert_eq!(ip(b), bed.maglev_choice(p), "port {p}: SYN follows Maglev");
        before.insert(p, b);
    }
    for b in [21, 22, 23] {
        assert!(
            before.values().any(|&x| x == b),
            "backend {b} got none of 300 flows"
        );
    }

    // Backend .23 leaves, .24 joins: the table changes under established flows (in web and
    // in its IPv6 twin web6).
    let report = bed.apply(&config(&[21, 22, 24]), &Overrides::default());
    assert_eq!(
        (
            report.backends_added,
            report.backends_removed,
            report.tables_written
        ),
        (2, 2, 2)
    );

    for &p in &ports {
        let out = bed.run(&tcp(OWN_MAC, CLIENT, p, VIP, 80, false, false));
        assert_eq!(out.action, XDP_TX);
        assert_eq!(
            backend_of(&out.packet),
            before[&p],
            "port {p}: an established flow keeps its backend"
        );
    }
    let mut new_on = HashMap::<u8, u32>::new();
    for p in 42000..42300u16 {
        let out = bed.run(&tcp(OWN_MAC, CLIENT, p, VIP, 80, true, false));
        let b = backend_of(&out.packet);
        assert_eq!(
            ip(b),
            bed.maglev_choice(p),
            "port {p}: a new flow follows the new table"
        );
        *new_on.entry(b).or_default() += 1;
    }
    assert!(
        !new_on.contains_key(&23),
        "the removed backend got new flows: {new_on:?}"
    );
    assert!(
        new_on.contains_key(&24),
        "the added backend got no new flow: {new_on:?}"
    );

    // A FIN marks the flow closing in the connection table; the scan counts it so.
    let p = ports[0];
    bed.run(&tcp(OWN_MAC, CLIENT, p, VIP, 80, false, true));
    let counts = bed.scan(xdp::coarse_now_ns(), |_| false);
    let id = bed.backend_id("web", before[&p]);
    assert_eq!(
        counts.closing.get(&id).copied().unwrap_or(0),
        1,
        "one closing flow on backend {}",
        before[&p]
    );
    assert_eq!(
        counts.entries, 600,
        "flows in the table: 300 before the change, 300 after"
    );
    assert_eq!(
        counts.active.values().sum::<u64>(),
        599,
        "open flows: all but the closing one"
    );

    // The removed backend's counters move to its service when its id is freed, and its slot
    // starts from zero for the next backend that gets the id.
    let gone = bed.backend_id("web", 23);
    let stats = bed.stats();
    let web = (STATS_SERVICE_BASE + bed.service_id("web")) as usize;
    let before_free = stats[web];
    assert!(stats[(STATS_BACKEND_BASE + gone) as usize].packets > 0);
    let Bed { dp, engine, .. } = &mut bed;
    let gone6 = engine
        .services()
        .find(|s| s.config.name == "web6")
        .and_then(|s| s.backends.get(&ip6(23)))
        .map(|b| b.id)
        .expect("web6's removed backend");
    let mut reaped = engine.reap_removed(|_| 0, dp).expect("reap");
    reaped.sort_unstable();
    let mut want = vec![gone, gone6];
    want.sort_unstable();
    assert_eq!(reaped, want, "web's and web6's removed backends");
    let stats = bed.stats();
    assert_eq!(stats[(STATS_BACKEND_BASE + gone) as usize].packets, 0);
    assert_eq!(
        stats[web], before_free,
        "the service's counters keep the freed backend's"
    );
}

/// A SYN that reuses the tuple of a connection that ended (FIN seen) is a new connection and is
/// scheduled afresh, so it does not follow the old one to a drained backend; a SYN on a flow
/// still open (a retransmit) keeps its backend.
#[test]
fn a_new_connection_on_a_closed_flows_port_is_rescheduled() {
    if !have_root("a_new_connection_on_a_closed_flows_port_is_rescheduled") {
        return;
    }
    let mut bed = Bed::new(&[21, 22, 23]);
    // Two flows pinned to .21: one ends (FIN), one stays open.
    let on_21: Vec<u16> = (45000..46000u16)
        .filter(|&p| bed.maglev_choice(p) == ip(21))
        .take(2)
        .collect();
    let (ended, open) = (on_21[0], on_21[1]);
    for p in [ended, open] {
        let out = bed.run(&tcp(OWN_MAC, CLIENT, p, VIP, 80, true, false));
        assert_eq!(backend_of(&out.packet), 21);
    }
    bed.run(&tcp(OWN_MAC, CLIENT, ended, VIP, 80, false, true));

    let cfg = config(&[21, 22, 23]);
    let mut o = Overrides::default();
    o.update(&cfg.services[0].key().to_string(), ip(21), |b| {
        b.admin = Some(Admin::Draining);
    });
    bed.apply(&cfg, &o);

    let out = bed.run(&tcp(OWN_MAC, CLIENT, ended, VIP, 80, true, false));
    let now = backend_of(&out.packet);
    assert_ne!(
        now, 21,
        "a new connection on a closed flow's port went to the drained backend"
    );
    assert_eq!(ip(now), bed.maglev_choice(ended));
    let out = bed.run(&tcp(OWN_MAC, CLIENT, ended, VIP, 80, false, false));
    assert_eq!(
        backend_of(&out.packet),
        now,
        "the new connection keeps its new backend"
    );
    let out = bed.run(&tcp(OWN_MAC, CLIENT, open, VIP, 80, true, false));
    assert_eq!(
        backend_of(&out.packet),
        21,
        "a retransmitted SYN of an open flow stays"
    );
}

/// Health and drain in the data path: flows pinned to a DOWN backend are re-balanced at their
/// next packet; flows pinned to a DRAINING backend stay with it.
#[test]
fn down_backends_lose_flows_draining_keep_them() {
    if !have_root("down_backends_lose_flows_draining_keep_them") {
        return;
    }
    let mut bed = Bed::new(&[21, 22, 23]);
    let mut pinned = HashMap::new();
    for p in 43000..43150u16 {
        let out = bed.run(&tcp(OWN_MAC, CLIENT, p, VIP, 80, true, false));
        pinned.insert(p, backend_of(&out.packet));
    }
    let cfg = config(&[21, 22, 23]);
    let key = cfg.services[0].key();
    let mut o = Overrides::default();
    o.update(&key.to_string(), ip(21), |b| {
        b.admin = Some(Admin::Draining);
    });
    assert!(bed.engine.set_health_down(&key, ip(22), true));
    bed.apply(&cfg, &o);
    for (p, b) in &pinned {
        let out = bed.run(&tcp(OWN_MAC, CLIENT, *p, VIP, 80, false, false));
        let now = backend_of(&out.packet);
        match b {
            21 => assert_eq!(now, 21, "port {p}: a draining backend keeps its flow"),
            22 => assert_eq!(
                now, 23,
                "port {p}: the flow of a down backend goes to the only one in rotation"
            ),
            _ => assert_eq!(now, *b, "port {p}: untouched flow moved"),
        }
    }
    for p in 44000..44050u16 {
        let out = bed.run(&tcp(OWN_MAC, CLIENT, p, VIP, 80, true, false));
        assert_eq!(
            backend_of(&out.packet),
            23,
            "port {p}: new flows only to the backend in rotation"
        );
    }
}

/// The scan of the connection table over many batches: the same counts as the entry-by-entry
/// walk, dead backends' flows and idle flows deleted in batches, nothing left behind.
#[test]
fn scans_read_and_delete_in_batches() {
    if !have_root("scans_read_and_delete_in_batches") {
        return;
    }
    const FLOWS: u16 = 10_000;
    // Room for every flow on any one CPU: the table keeps an LRU list per CPU.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let mut bed = Bed::with_table(&[21, 22, 23], 16_384 * cpus);
    let mut on = HashMap::<u8, u64>::new();
    for p in 0..FLOWS {
        let out = bed.run(&tcp(OWN_MAC, CLIENT, 20_000 + p, VIP, 80, true, false));
        assert_eq!(out.action, XDP_TX, "flow {p}");
        *on.entry(backend_of(&out.packet)).or_default() += 1;
    }
    let now = xdp::coarse_now_ns();
    let batched = bed.scan(now, |_| false);
    assert!(
        bed.flows.batch_ops(),
        "the kernel refused BPF_MAP_LOOKUP_BATCH on the connection table (Linux 5.6+ has it)"
    );
    bed.flows.set_batch_ops(false);
    let walked = bed.scan(now, |_| false);
    bed.flows.set_batch_ops(true);
    assert_eq!(batched.entries, u64::from(FLOWS), "flows seen in batches");
    assert_eq!(batched.active, walked.active, "batches and the walk agree");
    assert_eq!(batched.expired + walked.expired, 0);
    for b in [21, 22, 23] {
        let id = bed.backend_id("web", b);
        assert_eq!(
            batched.active.get(&id).copied().unwrap_or(0),
            on.get(&b).copied().unwrap_or(0),
            "flows on backend {b}"
        );
    }

    // The flows of a dead backend go, in batches.
    let dead = bed.backend_id("web", 22);
    let cut = bed.scan(now, |id| id == dead);
    assert_eq!(cut.expired, on[&22], "flows of the dead backend deleted");
    let after = bed.scan(now, |_| false);
    assert_eq!(after.entries, u64::from(FLOWS) - on[&22]);
    assert!(!after.active.contains_key(&dead));

    // Past the open-flow timeout every flow is idle: all deleted, none left.
    let later = now + xdp::FlowTimeouts::default().tcp_ns + 1_000_000_000;
    let idle = bed.scan(later, |_| false);
    assert_eq!(idle.expired, after.entries, "idle flows deleted");
    assert_eq!(idle.entries, 0);
    let empty = bed.scan(now, |_| false);
    assert_eq!(empty.entries, 0, "nothing left in the table");
}

/// The flood guard on both sides of its threshold: within the slice's allowance new flows are
/// inserted; beyond it they still reach their Maglev backend but get no entry, and are counted;
/// established flows keep their entries and backends throughout. Off, every new flow is inserted.
#[test]
fn the_flood_guard_forwards_new_flows_beyond_its_rate_without_entries() {
    if !have_root("the_flood_guard_forwards_new_flows_beyond_its_rate_without_entries") {
        return;
    }
    // One CPU, so that one per-CPU count sees every frame of the test.
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning the test to CPU 0"
        );
    }
    let mut bed = Bed::new(&[21, 22, 23]);
    let key = |sport: u16| {
        FlowKey::new(
            u32::from_ne_bytes(CLIENT),
            u32::from_ne_bytes(VIP),
            sport.to_be(),
            80u16.to_be(),
            IPPROTO_TCP,
        )
    };
    // Three new flows per slice on each CPU.
    let cpus = aya::util::nr_cpus().expect("CPUs") as u32;
    let per_sec = 3 * cpus * lb_common::FLOOD_SLICES_PER_SEC as u32;
    bed.dp.set_flood_guard(per_sec).expect("flood guard");
    assert_eq!(xdp::flood_per_slice(per_sec, u64::from(cpus)), 3);

    // A fresh slice starts with the first new flow after a slice's length of quiet.
    std::thread::sleep(std::time::Duration::from_nanos(
        lb_common::FLOOD_SLICE_NS + 10_000_000,
    ));
    for p in 43000..43005u16 {
        let out = bed.run(&tcp(OWN_MAC, CLIENT, p, VIP, 80, true, false));
        assert_eq!(out.action, XDP_TX, "port {p}: forwarded");
        assert_eq!(
            ip(backend_of(&out.packet)),
            bed.maglev_choice(p),
            "port {p}: its Maglev backend"
        );
        let tracked = bed.flows.flow(&key(p)).is_some();
        assert_eq!(tracked, p < 43003, "port {p}: entry {tracked}");
    }
    let stats = bed.stats();
    assert_eq!(stats[reason::FLOOD_GUARD as usize].packets, 2, "held back");
    let started: u64 = stats[STATS_BACKEND_BASE as usize..]
        .iter()
        .map(|c| c.new_flows)
        .sum();
    assert_eq!(started, 3, "flows started with an entry");
    // Established flows go on through their entries, whatever the guard does.
    for p in 43000..43003u16 {
        let out = bed.run(&tcp(OWN_MAC, CLIENT, p, VIP, 80, false, false));
        assert_eq!(out.action, XDP_TX);
        assert!(bed.flows.flow(&key(p)).is_some(), "port {p} kept its entry");
    }
    assert_eq!(bed.stats()[reason::FLOOD_GUARD as usize].packets, 2);

    // Off: every new flow gets its entry.
    bed.dp.set_flood_guard(0).expect("guard off");
    for p in 44000..44010u16 {
        assert_eq!(
            bed.run(&tcp(OWN_MAC, CLIENT, p, VIP, 80, true, false))
                .action,
            XDP_TX
        );
        assert!(
            bed.flows.flow(&key(p)).is_some(),
            "port {p}: entry with the guard off"
        );
    }
    assert_eq!(bed.stats()[reason::FLOOD_GUARD as usize].packets, 2);
}

/// Behind ECMP a flow can move to a node that never saw its SYN: its next packet (a plain ACK
/// with data) must go to the backend Maglev gives it, as the first node's did, and get an
/// entry there; nothing in the path waits for a SYN.
#[test]
fn a_mid_flow_packet_without_an_entry_follows_maglev() {
    if !have_root("a_mid_flow_packet_without_an_entry_follows_maglev") {
        return;
    }
    let bed = Bed::new(&[21, 22, 23]);
    for p in 45000..45050u16 {
        // An ACK (no SYN) of a flow this node has no entry for.
        let out = bed.run(&tcp(OWN_MAC, CLIENT, p, VIP, 80, false, false));
        assert_eq!(out.action, XDP_TX, "port {p}: forwarded");
        assert_eq!(
            ip(backend_of(&out.packet)),
            bed.maglev_choice(p),
            "port {p}: the backend every node's Maglev table gives it"
        );
        let key = FlowKey::new(
            u32::from_ne_bytes(CLIENT),
            u32::from_ne_bytes(VIP),
            p.to_be(),
            80u16.to_be(),
            IPPROTO_TCP,
        );
        assert!(
            bed.flows.flow(&key).is_some(),
            "port {p}: an entry from now on"
        );
    }
}

/// The counters read in one batch (what the daemon does each second) equal the entry-by-entry
/// walk, on every entry.
#[test]
fn the_counters_read_in_batches_equal_the_walk() {
    if !have_root("the_counters_read_in_batches_equal_the_walk") {
        return;
    }
    let bed = Bed::new(&[21, 22, 23]);
    for p in 46000..46100u16 {
        bed.run(&tcp(OWN_MAC, CLIENT, p, VIP, 80, true, false));
        bed.run(&tcp6(OWN_MAC, CLIENT6, p, VIP6, 80, true, false));
    }
    bed.run(&arp_request());
    let batched = bed
        .dp
        .maps()
        .read_stats_batched()
        .expect("a batch read of the per-CPU STATS array (Linux 5.7+)");
    let walked = bed.dp.maps().read_stats_walked().expect("walk");
    assert_eq!(batched.len(), lb_common::STATS_LEN as usize);
    assert_eq!(batched, walked);
    let forwarded: u64 = batched[STATS_BACKEND_BASE as usize..]
        .iter()
        .map(|c| c.packets)
        .sum();
    assert_eq!(forwarded, 200, "both families' packets counted");
    assert_eq!(batched[reason::PASS_ARP as usize].packets, 1);
}
