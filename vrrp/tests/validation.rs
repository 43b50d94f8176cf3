//! Receive checks (RFC 5798 §7.1): every malformed or foreign advert is dropped with its own
//! reason, counted, and leaves the state machine untouched.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use vrrp::wire::{self, AddressFamily, Addresses, Repr, ipv4};
use vrrp::{AdvertInterval, DropReason, Priority, Router, RouterConfig, State, VrId};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 100);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const SELF: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 3);

fn config(priority: u8) -> RouterConfig {
    RouterConfig::new(
        VrId::new(51).unwrap(),
        Priority::new(priority).unwrap(),
        AdvertInterval::DEFAULT,
        IpAddr::V4(SELF),
        vec![IpAddr::V4(VIP)],
    )
}

fn good_advert() -> Repr {
    Repr {
        vrid: 51,
        priority: 150,
        max_adver_int: 100,
        addresses: Addresses::V4(vec![VIP]),
    }
}

fn datagram_from(src: Ipv4Addr, advert: &Repr) -> Vec<u8> {
    ipv4::emit_advert(&ipv4::Repr::advert(src, wire::MULTICAST_V4, 7), advert).unwrap()
}

fn good_datagram() -> Vec<u8> {
    datagram_from(PEER, &good_advert())
}

/// Applies `f` to the VRRP part of `d`, then recomputes the VRRP checksum so that only the
/// intended fault remains.
fn edit_vrrp(mut d: Vec<u8>, f: impl FnOnce(&mut [u8])) -> Vec<u8> {
    f(&mut d[20..]);
    let len = d.len() - 20;
    let mut p = wire::Packet::new_unchecked(&mut d[20..20 + len], AddressFamily::Ipv4);
    p.fill_checksum(IpAddr::V4(PEER), IpAddr::V4(wire::MULTICAST_V4))
        .unwrap();
    d
}

/// Applies `f` to the IPv4 header view of `d`, then recomputes the header checksum.
fn edit_ip(mut d: Vec<u8>, f: impl FnOnce(&mut ipv4::Packet<&mut [u8]>)) -> Vec<u8> {
    let mut p = ipv4::Packet::new_unchecked(&mut d[..]);
    f(&mut p);
    p.fill_checksum();
    d
}

/// Every fault, with the reason it must be dropped for.
fn faults() -> Vec<(&'static str, DropReason, Vec<u8>)> {
    let good = good_datagram();
    vec![
        ("not ipv4", DropReason::IpHeader, {
            let mut d = good.clone();
            d[0] = 0x65;
            d
        }),
        ("short ip header", DropReason::IpHeader, good[..12].to_vec()),
        ("bad ip checksum", DropReason::IpHeader, {
            let mut d = good.clone();
            d[10] ^= 0xff;
            d
        }),
        ("protocol 6", DropReason::IpHeader, {
            edit_ip(good.clone(), |p| p.set_protocol(6))
        }),
        ("fragment", DropReason::IpHeader, {
            let mut d = good.clone();
            d[6] = 0x20; // more fragments
            edit_ip(d, |_| {})
        }),
        ("total length past the buffer", DropReason::IpHeader, {
            edit_ip(good.clone(), |p| p.set_total_len(200))
        }),
        ("ttl 254", DropReason::Ttl, {
            edit_ip(good.clone(), |p| p.set_ttl(254))
        }),
        (
            "ttl 1",
            DropReason::Ttl,
            edit_ip(good.clone(), |p| p.set_ttl(1)),
        ),
        ("vrrp header cut", DropReason::Truncated, {
            let mut d = good[..24].to_vec();
            let mut p = ipv4::Packet::new_unchecked(&mut d[..]);
            p.set_total_len(24);
            p.fill_checksum();
            d
        }),
        ("version 2", DropReason::Version, {
            edit_vrrp(good.clone(), |v| v[0] = 0x21)
        }),
        ("version 4", DropReason::Version, {
            edit_vrrp(good.clone(), |v| v[0] = 0x41)
        }),
        (
            "type 2",
            DropReason::Type,
            edit_vrrp(good.clone(), |v| v[0] = 0x32),
        ),
        (
            "type 0",
            DropReason::Type,
            edit_vrrp(good.clone(), |v| v[0] = 0x30),
        ),
        ("count 2 for 1 address", DropReason::Length, {
            edit_vrrp(good.clone(), |v| v[3] = 2)
        }),
        ("count 0 for 1 address", DropReason::Length, {
            edit_vrrp(good.clone(), |v| v[3] = 0)
        }),
        ("trailing bytes", DropReason::Length, {
            let mut d = good.clone();
            d.extend_from_slice(&[0; 8]);
            let len = u16::try_from(d.len()).unwrap();
            let d = edit_ip(d, |p| p.set_total_len(len));
            edit_vrrp(d, |_| {})
        }),
        ("bad vrrp checksum", DropReason::Checksum, {
            let mut d = good.clone();
            d[26] ^= 0x01;
            d
        }),
        ("checksum for another destination", DropReason::Checksum, {
            let mut d = good.clone();
            d[16..20].copy_from_slice(&[10, 99, 0, 3]);
            edit_ip(d, |_| {})
        }),
        (
            "vrid 52",
            DropReason::Vrid,
            edit_vrrp(good.clone(), |v| v[1] = 52),
        ),
        ("own address", DropReason::OwnAdvert, {
            datagram_from(SELF, &good_advert())
        }),
        ("max adver int 0", DropReason::ZeroInterval, {
            edit_vrrp(good.clone(), |v| v[4..6].copy_from_slice(&[0, 0]))
        }),
        ("other vip", DropReason::AddressList, {
            let mut a = good_advert();
            a.addresses = Addresses::V4(vec![Ipv4Addr::new(10, 99, 0, 101)]);
            datagram_from(PEER, &a)
        }),
        ("extra vip", DropReason::AddressList, {
            let mut a = good_advert();
            a.addresses = Addresses::V4(vec![VIP, Ipv4Addr::new(10, 99, 0, 101)]);
            datagram_from(PEER, &a)
        }),
        ("no vip", DropReason::AddressList, {
            let mut a = good_advert();
            a.addresses = Addresses::V4(vec![]);
            datagram_from(PEER, &a)
        }),
    ]
}

#[test]
fn every_malformed_advert_is_rejected_with_its_reason_and_counted() {
    let mut seen = HashSet::new();
    for (what, reason, datagram) in faults() {
        let mut r = Router::new(config(100)).unwrap();
        let t0 = Instant::now();
        r.startup(t0);
        while r.poll_action().is_some() {}
        let timer = r.poll_timeout();
        assert_eq!(
            r.handle_packet(t0 + Duration::from_secs(1), &datagram),
            Err(reason),
            "{what}"
        );
        let c = r.counters();
        assert_eq!(c.dropped(reason), 1, "{what}");
        assert_eq!(c.total_dropped(), 1, "{what}");
        assert_eq!((c.received, c.accepted), (1, 0), "{what}");
        // Dropped means no effect: the Master_Down_Timer was not restarted.
        assert_eq!(r.poll_timeout(), timer, "{what}");
        assert_eq!(r.poll_action(), None, "{what}");
        assert_eq!(r.state(), State::Backup);
        seen.insert(reason);
    }
    // The good datagram itself is accepted and restarts the timer.
    let mut r = Router::new(config(100)).unwrap();
    let t0 = Instant::now();
    r.startup(t0);
    let t1 = t0 + Duration::from_secs(1);
    r.handle_packet(t1, &good_datagram()).unwrap();
    assert_eq!(r.poll_timeout(), Some(t1 + r.master_down_interval()));
    assert_eq!(r.counters().accepted, 1);

    // The reasons that need another router or input.
    let mut unicast = config(100);
    unicast.unicast_peers = vec![IpAddr::V4(Ipv4Addr::new(10, 99, 0, 9))];
    let mut r = Router::new(unicast).unwrap();
    assert_eq!(
        r.handle_packet(t0, &good_datagram()),
        Err(DropReason::UnknownSource)
    );
    assert_eq!(r.counters().unknown_source, 1);
    seen.insert(DropReason::UnknownSource);

    let mut owner = Router::new(config(255)).unwrap();
    owner.startup(t0);
    assert_eq!(
        owner.handle_packet(t0, &good_datagram()),
        Err(DropReason::LocalOwner)
    );
    assert_eq!(owner.counters().local_owner, 1);
    assert_eq!(owner.state(), State::Master);
    seen.insert(DropReason::LocalOwner);

    let v6 = Repr {
        addresses: Addresses::V6(vec![Ipv6Addr::LOCALHOST]),
        ..good_advert()
    };
    let mut r = Router::new(config(100)).unwrap();
    assert_eq!(
        r.handle_advert(t0, "fe80::1".parse().unwrap(), &v6),
        Err(DropReason::AddressFamily)
    );
    assert_eq!(r.counters().address_family, 1);
    seen.insert(DropReason::AddressFamily);

    let all: HashSet<DropReason> = DropReason::ALL.into_iter().collect();
    assert_eq!(seen, all, "every drop reason is exercised");
}

#[test]
fn counters_accumulate_per_reason() {
    let mut r = Router::new(config(100)).unwrap();
    let t0 = Instant::now();
    r.startup(t0);
    let faults = faults();
    for (_, _, d) in &faults {
        let _ = r.handle_packet(t0, d);
    }
    r.handle_packet(t0, &good_datagram()).unwrap();
    let c = *r.counters();
    assert_eq!(c.received, faults.len() as u64 + 1);
    assert_eq!(c.accepted, 1);
    assert_eq!(c.total_dropped(), faults.len() as u64);
    for reason in DropReason::ALL {
        let expected = faults.iter().filter(|(_, r, _)| *r == reason).count() as u64;
        assert_eq!(c.dropped(reason), expected, "{reason}");
    }
}

#[test]
fn address_list_order_does_not_matter() {
    let second = Ipv4Addr::new(10, 99, 0, 101);
    let mut c = config(100);
    c.vips = vec![IpAddr::V4(VIP), IpAddr::V4(second)];
    let mut r = Router::new(c).unwrap();
    let t0 = Instant::now();
    r.startup(t0);
    let a = Repr {
        addresses: Addresses::V4(vec![second, VIP]),
        ..good_advert()
    };
    assert_eq!(r.handle_packet(t0, &datagram_from(PEER, &a)), Ok(()));
}

#[test]
fn unicast_adverts_from_a_configured_peer_pass() {
    let mut c = config(100);
    c.unicast_peers = vec![IpAddr::V4(PEER)];
    let mut r = Router::new(c).unwrap();
    let t0 = Instant::now();
    r.startup(t0);
    let d = ipv4::emit_advert(&ipv4::Repr::advert(PEER, SELF, 1), &good_advert()).unwrap();
    assert_eq!(r.handle_packet(t0, &d), Ok(()));
    assert_eq!(r.master_address(), Some(IpAddr::V4(PEER)));
}

#[test]
fn ipv6_adverts_are_checked_and_counted() {
    let vip6: Ipv6Addr = "2001:db8:99::100".parse().unwrap();
    let (me, peer): (Ipv6Addr, Ipv6Addr) = ("fe80::3".parse().unwrap(), "fe80::2".parse().unwrap());
    let group = wire::MULTICAST_V6;
    let mut r = Router::new(RouterConfig::new(
        VrId::new(51).unwrap(),
        Priority::new(100).unwrap(),
        AdvertInterval::DEFAULT,
        IpAddr::V6(me),
        vec![IpAddr::V6(vip6)],
    ))
    .unwrap();
    let t0 = Instant::now();
    r.startup(t0);
    let advert = Repr {
        addresses: Addresses::V6(vec![vip6]),
        ..good_advert()
    };
    let message = advert
        .to_bytes(IpAddr::V6(peer), IpAddr::V6(group))
        .unwrap();
    // §7.1: hop limit 255 to the group; missing ancillary data counts as a wrong hop limit.
    assert_eq!(
        r.handle_ipv6(t0, &message, peer, group, Some(64)),
        Err(DropReason::Ttl)
    );
    assert_eq!(
        r.handle_ipv6(t0, &message, peer, group, None),
        Err(DropReason::Ttl)
    );
    // §5.2.8: the checksum binds the pseudo-header, so another destination fails it.
    assert_eq!(
        r.handle_ipv6(t0, &message, peer, me, Some(255)),
        Err(DropReason::Checksum)
    );
    let mut bad = message.clone();
    bad[2] ^= 1;
    assert_eq!(
        r.handle_ipv6(t0, &bad, peer, group, Some(255)),
        Err(DropReason::Checksum)
    );
    // An IPv4 advert in an IPv6 router's socket cannot verify either.
    assert_eq!(
        r.handle_ipv6(t0, &good_datagram()[20..], peer, group, Some(255)),
        Err(DropReason::Length)
    );
    assert_eq!(r.handle_ipv6(t0, &message, peer, group, Some(255)), Ok(()));
    assert_eq!(r.master_address(), Some(IpAddr::V6(peer)));
    let c = *r.counters();
    assert_eq!((c.ttl, c.checksum, c.length, c.accepted), (2, 2, 1, 1));

    // Unicast (keepalived 2.2.7 sends hop limit 64 there): accepted from a configured peer only.
    let mut config = r.config().clone();
    config.unicast_peers = vec![IpAddr::V6(peer)];
    let mut u = Router::new(config).unwrap();
    u.startup(t0);
    let to_me = advert.to_bytes(IpAddr::V6(peer), IpAddr::V6(me)).unwrap();
    assert_eq!(u.handle_ipv6(t0, &to_me, peer, me, Some(64)), Ok(()));
    let stranger: Ipv6Addr = "fe80::9".parse().unwrap();
    let from_stranger = advert
        .to_bytes(IpAddr::V6(stranger), IpAddr::V6(me))
        .unwrap();
    assert_eq!(
        u.handle_ipv6(t0, &from_stranger, stranger, me, Some(255)),
        Err(DropReason::UnknownSource)
    );
}
