//! Codec tests: the keepalived 2.2.7 captures decode, verify and re-encode byte for byte; properties
//! of the decoder on arbitrary bytes.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use common::{Frame, fixture, vrrp_datagram};
use proptest::prelude::*;
use vrrp::wire::{self, AddressFamily, Addresses, Packet, Repr, arp, ipv4, ipv6, ndisc};
use vrrp::{AdvertInterval, DropReason, Priority, Router, RouterConfig, VrId};

const V3_FIXTURES: [&str; 3] = [
    "keepalived-v3-mcast-handover.pcap",
    "keepalived-v3-unicast.pcap",
    "keepalived-v3-mcast-100ms.pcap",
];
const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 100);
const NODE_A: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const NODE_B: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 3);

fn adverts(frames: &[Frame]) -> Vec<(Duration, &[u8])> {
    frames
        .iter()
        .filter_map(|f| vrrp_datagram(&f.data).map(|d| (f.ts, d)))
        .collect()
}

/// The fuzz target's seeds (`vrrp/fuzz/seeds`, `cargo xtask test` fuzzes from them) are adverts of the
/// captures here: `NAME-HASH.ip` is an IPv4 datagram of `NAME.pcap`, `NAME-HASH.vrrp` its payload.
#[test]
fn fuzz_seeds_are_adverts_of_the_captures() {
    let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut checked = 0;
    for entry in std::fs::read_dir(&seeds).expect("vrrp/fuzz/seeds") {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_owned();
        let (stem, ext) = file.rsplit_once('.').expect("seed NAME-HASH.EXT");
        let (capture, _hash) = stem.rsplit_once('-').expect("seed NAME-HASH.EXT");
        let frames = fixture(&format!("{capture}.pcap"));
        let seed = std::fs::read(&path).unwrap();
        let found = adverts(&frames).into_iter().any(|(_, datagram)| {
            let ihl = usize::from(datagram[0] & 0x0f) * 4;
            match ext {
                "ip" => datagram == seed.as_slice(),
                "vrrp" => &datagram[ihl..] == seed.as_slice(),
                other => panic!("{file}: unknown seed kind {other:?}"),
            }
        });
        assert!(found, "{file} is no advert of {capture}.pcap");
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} seeds in {}", seeds.display());
}

#[test]
fn v3_captures_decode_verify_and_reencode_byte_for_byte() {
    for name in V3_FIXTURES {
        let frames = fixture(name);
        let adverts = adverts(&frames);
        assert!(adverts.len() >= 4, "{name}: only {} adverts", adverts.len());
        for (i, (_, datagram)) in adverts.iter().enumerate() {
            let (ip, advert) =
                ipv4::parse_advert(datagram).unwrap_or_else(|e| panic!("{name} advert {i}: {e}"));
            assert_eq!(ip.ttl, 255, "{name} advert {i}: ttl");
            assert_eq!(ip.tos, 0xc0, "{name} advert {i}: tos");
            assert_eq!(advert.vrid, 51);
            assert_eq!(advert.addresses, Addresses::V4(vec![VIP]));
            // The checksum verifies over the pseudo-header with the destination it was sent to.
            let ip_view = ipv4::Packet::new_checked(*datagram).unwrap();
            assert!(ip_view.verify_checksum());
            let vrrp = Packet::new_checked(ip_view.payload(), AddressFamily::Ipv4).unwrap();
            assert!(vrrp.verify_checksum(IpAddr::V4(ip.src), IpAddr::V4(ip.dst)));
            // Re-encoding gives the captured datagram back, IP header included.
            assert_eq!(
                ipv4::emit_advert(&ip, &advert).unwrap(),
                *datagram,
                "{name} advert {i}: re-encoding differs"
            );
            // And the receive checks pass.
            let (src, checked) = vrrp::validate::parse_ipv4(datagram).unwrap();
            assert_eq!(src, IpAddr::V4(ip.src));
            assert_eq!(checked, advert);
        }
    }
}

#[test]
fn v2_capture_is_rejected_with_the_version_reason() {
    let frames = fixture("keepalived-v2-mcast.pcap");
    let adverts = adverts(&frames);
    assert!(adverts.len() >= 4);
    let mut config = RouterConfig::new(
        VrId::new(51).unwrap(),
        Priority::new(100).unwrap(),
        AdvertInterval::DEFAULT,
        IpAddr::V4(NODE_B),
        vec![IpAddr::V4(VIP)],
    );
    config.preempt = true;
    let mut router = Router::new(config).unwrap();
    router.startup(Instant::now());
    for (_, datagram) in &adverts {
        assert_eq!(ipv4::parse_advert(datagram), Err(wire::Error::Version(2)));
        assert_eq!(
            router.handle_packet(Instant::now(), datagram),
            Err(DropReason::Version)
        );
    }
    let counters = router.counters();
    assert_eq!(counters.version, adverts.len() as u64);
    assert_eq!(counters.total_dropped(), adverts.len() as u64);
    assert_eq!(counters.accepted, 0);
}

#[test]
fn capture_100ms_carries_10_centiseconds() {
    let frames = fixture("keepalived-v3-mcast-100ms.pcap");
    let adverts = adverts(&frames);
    for (_, datagram) in &adverts {
        let (_, advert) = ipv4::parse_advert(datagram).unwrap();
        assert_eq!(advert.max_adver_int, 10);
    }
    // keepalived sends them 100 ms apart.
    for pair in adverts.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap > Duration::from_millis(95) && gap < Duration::from_millis(105),
            "{gap:?}"
        );
    }
}

#[test]
fn handover_capture_has_a_priority_zero_advert_then_b_after_skew_time() {
    let frames = fixture("keepalived-v3-mcast-handover.pcap");
    let parsed: Vec<(Duration, ipv4::Repr, Repr)> = adverts(&frames)
        .into_iter()
        .map(|(ts, d)| {
            let (ip, advert) = ipv4::parse_advert(d).unwrap();
            (ts, ip, advert)
        })
        .collect();
    let zero = parsed
        .iter()
        .position(|(_, ip, a)| a.priority == 0 && ip.src == NODE_A)
        .expect("a priority-0 advert from node A");
    let (t_zero, _, _) = parsed[zero];
    let (t_b, ip_b, advert_b) = &parsed[zero + 1];
    assert_eq!(ip_b.src, NODE_B);
    assert_eq!(advert_b.priority, 100);
    // RFC 5798 §6.4.2: the backup takes over after Skew_Time = (256 − 100) × 1 s / 256.
    let skew = Duration::from_micros(609_375);
    let waited = *t_b - t_zero;
    assert!(
        waited >= skew && waited < skew + Duration::from_millis(5),
        "{waited:?}"
    );
}

#[test]
fn gratuitous_arps_match_the_builder_byte_for_byte() {
    for name in V3_FIXTURES.iter().chain(&["keepalived-v2-mcast.pcap"]) {
        let frames = fixture(name);
        let garps: Vec<&Frame> = frames
            .iter()
            .filter(|f| arp::parse_gratuitous(&f.data).is_some())
            .collect();
        assert!(garps.len() >= 5, "{name}: {} garps", garps.len());
        for f in garps {
            let (mac, addr) = arp::parse_gratuitous(&f.data).unwrap();
            assert_eq!(addr, VIP);
            assert_eq!(f.data, arp::gratuitous_request(mac, addr), "{name}");
        }
    }
    // Handover: 5 from A on becoming master, 5 from B on taking over.
    let frames = fixture("keepalived-v3-mcast-handover.pcap");
    let senders: Vec<arp::MacAddr> = frames
        .iter()
        .filter_map(|f| arp::parse_gratuitous(&f.data).map(|(mac, _)| mac))
        .collect();
    let a = [0x02, 0x99, 0, 0, 0, 0x02];
    let b = [0x02, 0x99, 0, 0, 0, 0x03];
    assert_eq!(senders.iter().filter(|m| **m == a).count(), 5);
    assert_eq!(senders.iter().filter(|m| **m == b).count(), 5);
}

#[test]
fn unicast_capture_checksums_bind_the_peer_destination() {
    let frames = fixture("keepalived-v3-unicast.pcap");
    for (_, datagram) in adverts(&frames) {
        let ip = ipv4::Packet::new_checked(datagram).unwrap();
        assert_eq!(ip.dst_addr(), NODE_B);
        assert_eq!(ip.ttl(), 255);
        let vrrp = Packet::new_checked(ip.payload(), AddressFamily::Ipv4).unwrap();
        assert!(vrrp.verify_checksum(IpAddr::V4(NODE_A), IpAddr::V4(NODE_B)));
        assert!(!vrrp.verify_checksum(IpAddr::V4(NODE_A), IpAddr::V4(wire::MULTICAST_V4)));
    }
}

/// The IPv6 captures: a keepalived pair over IPv6 (RFC 5798 §5.1.2), see fixtures/README.md.
const V6_FIXTURES: [&str; 2] = [
    "keepalived-v3-ipv6-mcast.pcap",
    "keepalived-v3-ipv6-unicast.pcap",
];
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 0x100);
const LL_A: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x99, 0xff, 0xfe00, 2);
const LL_B: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x99, 0xff, 0xfe00, 3);

/// The IPv6 packets of the frames that carry VRRP directly (not quoted in an ICMPv6 error).
fn ipv6_adverts(frames: &[Frame]) -> Vec<(Duration, ipv6::Packet<&[u8]>)> {
    frames
        .iter()
        .filter(|f| f.data.get(12..14) == Some(&[0x86, 0xdd][..]))
        .filter_map(|f| Some((f.ts, ipv6::Packet::new_checked(f.data.get(14..)?).ok()?)))
        .filter(|(_, ip)| ip.next_header() == wire::IP_PROTOCOL)
        .collect()
}

#[test]
fn ipv6_captures_decode_verify_and_reencode_byte_for_byte() {
    for name in V6_FIXTURES {
        let frames = fixture(name);
        let adverts = ipv6_adverts(&frames);
        assert!(adverts.len() >= 8, "{name}: only {} adverts", adverts.len());
        for (i, (_, ip)) in adverts.iter().enumerate() {
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            // §5.1.2.1: sent from the link-local address of the interface.
            assert!(src == LL_A || src == LL_B, "{name} advert {i}: {src}");
            assert_eq!(ip.traffic_class(), 0xc0, "{name} advert {i}");
            let vrrp = Packet::new_checked(ip.payload(), AddressFamily::Ipv6).unwrap();
            // §5.2.8: the checksum covers the IPv6 pseudo-header with the actual destination.
            assert!(vrrp.verify_checksum(IpAddr::V6(src), IpAddr::V6(dst)));
            let (_, advert) =
                vrrp::validate::parse_ipv6(ip.payload(), src, dst, Some(ip.hop_limit()))
                    .unwrap_or_else(|e| panic!("{name} advert {i}: {e}"));
            assert_eq!(advert.vrid, 51);
            assert_eq!(advert.max_adver_int, 100);
            // keepalived lists the configured VIPs, global ones too (it only logs that the first
            // "should be" link-local, RFC 5798 §5.2.9).
            assert_eq!(advert.addresses, Addresses::V6(vec![VIP6]));
            assert_eq!(
                advert.to_bytes(IpAddr::V6(src), IpAddr::V6(dst)).unwrap(),
                ip.payload(),
                "{name} advert {i}: re-encoding differs"
            );
            if name.contains("mcast") {
                assert_eq!(dst, wire::MULTICAST_V6);
                assert_eq!(ip.hop_limit(), 255, "{name} advert {i}");
                // A lower hop limit to the group is dropped (§7.1).
                assert_eq!(
                    vrrp::validate::parse_ipv6(ip.payload(), src, dst, Some(254)),
                    Err(DropReason::Ttl)
                );
                assert_eq!(
                    vrrp::validate::parse_ipv6(ip.payload(), src, dst, None),
                    Err(DropReason::Ttl)
                );
            } else {
                // keepalived 2.2.7 sends unicast IPv6 adverts with the default hop limit.
                assert!(dst == LL_A || dst == LL_B);
                assert_eq!(ip.hop_limit(), 64, "{name} advert {i}");
                // The checksum binds the destination.
                assert!(!vrrp.verify_checksum(IpAddr::V6(src), IpAddr::V6(wire::MULTICAST_V6)));
            }
            // Another source does not verify.
            let other = if src == LL_A { LL_B } else { LL_A };
            assert_eq!(
                vrrp::validate::parse_ipv6(ip.payload(), other, dst, Some(255)),
                Err(DropReason::Checksum)
            );
        }
    }
}

#[test]
fn ipv6_capture_hands_over_after_skew_time_and_a_router_follows() {
    let frames = fixture("keepalived-v3-ipv6-mcast.pcap");
    let adverts = ipv6_adverts(&frames);
    let parsed: Vec<(Duration, Ipv6Addr, Repr)> = adverts
        .iter()
        .map(|(ts, ip)| {
            let (_, a) = vrrp::validate::parse_ipv6(
                ip.payload(),
                ip.src_addr(),
                ip.dst_addr(),
                Some(ip.hop_limit()),
            )
            .unwrap();
            (*ts, ip.src_addr(), a)
        })
        .collect();
    let zero = parsed
        .iter()
        .position(|(_, src, a)| a.priority == 0 && *src == LL_A)
        .expect("a priority-0 advert from node A");
    let (t_b, src_b, advert_b) = &parsed[zero + 1];
    assert_eq!((*src_b, advert_b.priority), (LL_B, 100));
    // RFC 5798 §6.4.2: Skew_Time = (256 − 100) × 1 s / 256.
    let waited = *t_b - parsed[zero].0;
    let skew = Duration::from_micros(609_375);
    assert!(
        waited >= skew && waited < skew + Duration::from_millis(5),
        "{waited:?}"
    );

    // Our router as a third backup (priority 50) accepts every advert of the capture.
    let mut router = Router::new(RouterConfig::new(
        VrId::new(51).unwrap(),
        Priority::new(50).unwrap(),
        AdvertInterval::DEFAULT,
        IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 9)),
        vec![IpAddr::V6(VIP6)],
    ))
    .unwrap();
    let t0 = Instant::now();
    router.startup(t0);
    let start = adverts[0].0;
    for (ts, ip) in &adverts {
        router
            .handle_ipv6(
                t0 + (*ts - start),
                ip.payload(),
                ip.src_addr(),
                ip.dst_addr(),
                Some(ip.hop_limit()),
            )
            .unwrap();
    }
    assert_eq!(router.counters().accepted, adverts.len() as u64);
    // The capture ends with B stopping: its priority-0 advert leaves no master (§6.4.2).
    let (_, last_src, last) = parsed.last().unwrap();
    assert_eq!((*last_src, last.priority), (LL_B, 0));
    assert_eq!(router.master_address(), None);
}

#[test]
fn neighbour_adverts_match_the_builder_byte_for_byte() {
    for name in V6_FIXTURES {
        let frames = fixture(name);
        let nas: Vec<(&Frame, ndisc::NeighborAdvert)> = frames
            .iter()
            .filter_map(|f| ndisc::parse_na(&f.data).map(|na| (f, na)))
            .filter(|(_, na)| na.target == VIP6)
            .collect();
        // 5 from A on becoming master, 5 from B on taking over (keepalived garp_master_repeat).
        assert_eq!(nas.len(), 10, "{name}");
        for (f, na) in nas {
            let mac = na.mac.unwrap();
            assert_eq!(f.data, ndisc::unsolicited_na(mac, VIP6), "{name}");
            assert_eq!(na.flags, ndisc::FLAG_OVERRIDE);
        }
    }
}

fn arb_v4_addresses() -> impl Strategy<Value = Addresses> {
    prop::collection::vec(any::<[u8; 4]>().prop_map(Ipv4Addr::from), 0..=40).prop_map(Addresses::V4)
}

fn arb_repr() -> impl Strategy<Value = Repr> {
    let v6 = prop::collection::vec(any::<[u8; 16]>().prop_map(Ipv6Addr::from), 0..=10)
        .prop_map(Addresses::V6);
    arb_repr_with(prop_oneof![arb_v4_addresses(), v6])
}

fn arb_repr_with(addresses: impl Strategy<Value = Addresses>) -> impl Strategy<Value = Repr> {
    (
        any::<u8>(),
        any::<u8>(),
        0..=wire::MAX_ADVER_INT_MAX,
        addresses,
    )
        .prop_map(|(vrid, priority, max_adver_int, addresses)| Repr {
            vrid,
            priority,
            max_adver_int,
            addresses,
        })
}

fn addr_pair(family: AddressFamily, a: [u8; 16], b: [u8; 16]) -> (IpAddr, IpAddr) {
    match family {
        AddressFamily::Ipv4 => (
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
        ),
        AddressFamily::Ipv6 => (IpAddr::V6(a.into()), IpAddr::V6(b.into())),
    }
}

/// Calls every accessor of a checked VRRP view.
fn touch(p: &Packet<&[u8]>) {
    let _ = (
        p.version(),
        p.msg_type(),
        p.vrid(),
        p.priority(),
        p.addr_count(),
        p.reserved(),
        p.max_adver_int(),
        p.checksum(),
        p.message_len(),
    );
    let n = p.addresses().count();
    assert_eq!(n, usize::from(p.addr_count()));
    assert!(p.address(n).is_none());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn decoders_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        a in any::<[u8; 16]>(),
        b in any::<[u8; 16]>(),
    ) {
        let _ = ipv4::parse_advert(&bytes);
        let _ = vrrp::validate::parse_ipv4(&bytes);
        let _ = arp::parse_gratuitous(&bytes);
        if let Ok(ip) = ipv4::Packet::new_checked(&bytes[..]) {
            let _ = (ip.tos(), ip.ident(), ip.ttl(), ip.protocol(), ip.checksum(), ip.src_addr(),
                     ip.dst_addr(), ip.dont_frag(), ip.more_frags(), ip.frag_offset(),
                     ip.verify_checksum(), ip.payload().len());
        }
        for family in [AddressFamily::Ipv4, AddressFamily::Ipv6] {
            let (src, dst) = addr_pair(family, a, b);
            let unchecked = Packet::new_unchecked(&bytes[..], family);
            let _ = unchecked.addresses_bytes();
            let _ = Repr::parse(&unchecked, src, dst);
            if let Ok(p) = Packet::new_checked(&bytes[..], family) {
                touch(&p);
                let _ = p.verify_checksum(src, dst);
            }
        }
    }

    #[test]
    fn router_never_panics_on_arbitrary_datagrams(
        bytes in prop::collection::vec(any::<u8>(), 0..120),
    ) {
        let mut router = Router::new(RouterConfig::new(
            VrId::new(51).unwrap(), Priority::new(100).unwrap(), AdvertInterval::DEFAULT,
            IpAddr::V4(NODE_B), vec![IpAddr::V4(VIP)],
        )).unwrap();
        let now = Instant::now();
        router.startup(now);
        let _ = router.handle_packet(now, &bytes);
        prop_assert_eq!(router.counters().received, 1);
    }

    #[test]
    fn emit_then_parse_round_trips(repr in arb_repr(), a in any::<[u8; 16]>(), b in any::<[u8; 16]>()) {
        let family = repr.addresses.family();
        let (src, dst) = addr_pair(family, a, b);
        let bytes = repr.to_bytes(src, dst).unwrap();
        prop_assert_eq!(bytes.len(), repr.buffer_len());
        let packet = Packet::new_checked(&bytes[..], family).unwrap();
        prop_assert!(packet.verify_checksum(src, dst));
        prop_assert_eq!(Repr::parse(&packet, src, dst).unwrap(), repr.clone());
        if let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) {
            let ip = ipv4::Repr::advert(s, d, u16::from(a[4]) << 8 | u16::from(a[5]));
            let datagram = ipv4::emit_advert(&ip, &repr).unwrap();
            prop_assert_eq!(ipv4::parse_advert(&datagram).unwrap(), (ip, repr));
        }
    }

    #[test]
    fn any_single_bit_flip_is_caught(
        repr in arb_repr_with(arb_v4_addresses()),
        bit in any::<prop::sample::Index>(),
    ) {
        let ip = ipv4::Repr::advert(NODE_A, wire::MULTICAST_V4, 1);
        let mut datagram = ipv4::emit_advert(&ip, &repr).unwrap();
        let bit = bit.index(datagram.len() * 8);
        datagram[bit / 8] ^= 1 << (bit % 8);
        // Every bit is covered by the IP header checksum or the VRRP checksum (or breaks a length),
        // and one's-complement sums catch every single-bit error.
        prop_assert!(ipv4::parse_advert(&datagram).is_err());
    }
}
