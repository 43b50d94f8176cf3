//! Fuzz the advert decoders: the whole IPv4 datagram path a raw socket feeds, the bare VRRP
//! message of either family, and the state machine on top. Nothing may panic; whatever decodes must
//! re-encode to the same bytes.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use vrrp::wire::{AddressFamily, Packet, Repr, ipv4};
use vrrp::{AdvertInterval, Priority, Router, RouterConfig, VrId};

fuzz_target!(|data: &[u8]| {
    // IPv4 datagram, as read from the raw socket.
    if let Ok((ip, advert)) = ipv4::parse_advert(data) {
        let again = ipv4::emit_advert(&ip, &advert).expect("a parsed advert re-encodes");
        let (_, again_advert) = ipv4::parse_advert(&again).expect("and parses again");
        assert_eq!(again_advert, advert);
    }

    // Bare VRRP message, both families.
    let pairs = [
        (
            AddressFamily::Ipv4,
            IpAddr::V4(Ipv4Addr::new(10, 99, 0, 2)),
            IpAddr::V4(vrrp::wire::MULTICAST_V4),
        ),
        (
            AddressFamily::Ipv6,
            IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2)),
            IpAddr::V6(vrrp::wire::MULTICAST_V6),
        ),
    ];
    for (family, src, dst) in pairs {
        if let Ok(packet) = Packet::new_checked(data, family) {
            let _ = (
                packet.max_adver_int(),
                packet.addresses().count(),
                packet.checksum(),
            );
        }
        let packet = Packet::new_unchecked(data, family);
        if let Ok(repr) = Repr::parse(&packet, src, dst) {
            let again = repr.to_bytes(src, dst).expect("re-encodes");
            // Reserved bits are ignored on receipt and sent as zero (RFC 5798 §5.2.6).
            if packet.reserved() == 0 {
                assert_eq!(again, data);
            }
        }
    }

    // The state machine behind the receive checks.
    let config = RouterConfig::new(
        VrId::new(51).expect("valid"),
        Priority::new(100).expect("valid"),
        AdvertInterval::DEFAULT,
        IpAddr::V4(Ipv4Addr::new(10, 99, 0, 3)),
        vec![IpAddr::V4(Ipv4Addr::new(10, 99, 0, 100))],
    );
    let mut router = Router::new(config).expect("valid");
    let now = Instant::now();
    router.startup(now);
    let _ = router.handle_packet(now, data);
    while router.poll_action().is_some() {}
});
