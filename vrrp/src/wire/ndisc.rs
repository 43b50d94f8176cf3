//! Unsolicited Neighbour Advertisements: the IPv6 counterpart of gratuitous ARP (RFC 5798 §6.4.1,
//! §6.4.2: "for each IPv6 address associated with the virtual router, send an unsolicited ND
//! Neighbor Advertisement with the Router Flag (R) set" — see below on R).
//!
//! Built as keepalived 2.2.7 sends it (whole Ethernet frame on an `AF_PACKET` socket): Ethernet to
//! 33:33:00:00:00:01 from the real MAC; IPv6 from the VIP to ff02::1, hop limit 255 (RFC 4861
//! §7.1.2), traffic class 0; ICMPv6 type 136 code 0 with the Override flag (RFC 4861 §7.2.6), target
//! the VIP, option Target Link-Layer Address = the MAC. The Router flag stays clear: the VIPs of a
//! load balancer are service addresses, not a default gateway (keepalived sets R only when the
//! interface forwards IPv6).

use std::net::Ipv6Addr;

use super::arp::MacAddr;
use super::ipv6::{self, Packet as Ipv6Packet, Repr as Ipv6Repr};

/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// IP protocol number (Next Header) of ICMPv6.
pub const NEXT_HEADER_ICMPV6: u8 = 58;
/// ICMPv6 type of a Neighbour Advertisement (RFC 4861 §4.4).
pub const TYPE_NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// The all-nodes multicast group, destination of unsolicited advertisements (RFC 4861 §7.2.6).
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// The Ethernet address of ff02::1 (RFC 2464 §7: 33:33 and the last 32 bits).
pub const ALL_NODES_MAC: MacAddr = [0x33, 0x33, 0, 0, 0, 1];
/// Router flag (R) of the NA flags word.
pub const FLAG_ROUTER: u32 = 0x8000_0000;
/// Solicited flag (S).
pub const FLAG_SOLICITED: u32 = 0x4000_0000;
/// Override flag (O).
pub const FLAG_OVERRIDE: u32 = 0x2000_0000;
/// Length of the whole frame: Ethernet, IPv6 header, NA with one 8-byte option.
pub const FRAME_LEN: usize = ETHERNET_HEADER_LEN + ipv6::HEADER_LEN + NA_LEN;

const ETHERNET_HEADER_LEN: usize = 14;
/// ICMPv6 header (4) + flags (4) + target (16) + Target Link-Layer Address option (8).
const NA_LEN: usize = 32;
/// Option type Target Link-Layer Address (RFC 4861 §4.6.1).
const OPT_TARGET_LL_ADDR: u8 = 2;

/// Byte ranges of the ICMPv6 message, from its start.
mod field {
    /// A byte range inside the message.
    pub type Field = core::ops::Range<usize>;

    /// Type.
    pub const TYPE: usize = 0;
    /// Code.
    pub const CODE: usize = 1;
    /// Checksum.
    pub const CHECKSUM: Field = 2..4;
    /// R, S, O flags and reserved bits.
    pub const FLAGS: Field = 4..8;
    /// Target Address.
    pub const TARGET: Field = 8..24;
    /// Option type.
    pub const OPT_TYPE: usize = 24;
    /// Option length in units of 8 bytes.
    pub const OPT_LEN: usize = 25;
    /// Link-layer address of the option.
    pub const OPT_LLADDR: Field = 26..32;
}

/// Builds the unsolicited Neighbour Advertisement frame announcing that `vip` is at `mac`.
///
/// ```text
/// Ethernet: dst 33:33:00:00:00:01  src MAC  type 0x86dd
/// IPv6:     src VIP  dst ff02::1  next header 58  hop limit 255
/// ICMPv6 (RFC 4861 §4.4): type 136, code 0, checksum, flags O, target VIP,
///                         option 2 (Target Link-Layer Address), length 1, MAC
/// ```
#[must_use]
pub fn unsolicited_na(mac: MacAddr, vip: Ipv6Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&ALL_NODES_MAC);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    let (_, ip) = f.split_at_mut(ETHERNET_HEADER_LEN);
    let header = Ipv6Repr {
        src: vip,
        dst: ALL_NODES,
        next_header: NEXT_HEADER_ICMPV6,
        // RFC 4861 §7.1.2: a receiver drops an NA whose hop limit is not 255.
        hop_limit: 255,
        traffic_class: 0,
    };
    // The buffer is FRAME_LEN long, so the header and the 32-byte payload always fit.
    if Ipv6Packet::new_unchecked(&mut *ip)
        .emit_header(&header, NA_LEN)
        .is_err()
    {
        return f;
    }
    let na = &mut ip[ipv6::HEADER_LEN..];
    na[field::TYPE] = TYPE_NEIGHBOR_ADVERTISEMENT;
    na[field::CODE] = 0;
    // RFC 4861 §7.2.6: unsolicited, so S is clear; O set so neighbours update their cache.
    na[field::FLAGS].copy_from_slice(&FLAG_OVERRIDE.to_be_bytes());
    na[field::TARGET].copy_from_slice(&vip.octets());
    na[field::OPT_TYPE] = OPT_TARGET_LL_ADDR;
    na[field::OPT_LEN] = 1;
    na[field::OPT_LLADDR].copy_from_slice(&mac);
    let sum = icmpv6_sum(vip, ALL_NODES, na);
    na[field::CHECKSUM].copy_from_slice(&(!sum).to_be_bytes());
    f
}

/// One's-complement sum of an ICMPv6 message and its pseudo-header (RFC 4443 §2.3).
fn icmpv6_sum(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> u16 {
    let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
    super::fold(
        ipv6::pseudo_header_sum(src, dst, len, NEXT_HEADER_ICMPV6) + super::sum_words(message),
    )
}

/// What a received Neighbour Advertisement says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NeighborAdvert {
    /// IPv6 source address.
    pub src: Ipv6Addr,
    /// IPv6 destination address.
    pub dst: Ipv6Addr,
    /// Hop limit it arrived with.
    pub hop_limit: u8,
    /// The R, S, O flags word (reserved bits included).
    pub flags: u32,
    /// Target Address.
    pub target: Ipv6Addr,
    /// Target Link-Layer Address option, if it is the first option.
    pub mac: Option<MacAddr>,
}

/// If `frame` is an Ethernet frame holding an ICMPv6 Neighbour Advertisement whose checksum
/// verifies, returns what it says.
#[must_use]
pub fn parse_na(frame: &[u8]) -> Option<NeighborAdvert> {
    if frame.get(12..14)? != ETHERTYPE_IPV6.to_be_bytes() {
        return None;
    }
    let ip = Ipv6Packet::new_checked(frame.get(ETHERNET_HEADER_LEN..)?).ok()?;
    let na = ip.payload();
    if ip.next_header() != NEXT_HEADER_ICMPV6
        || na.len() < field::TARGET.end
        || na[field::TYPE] != TYPE_NEIGHBOR_ADVERTISEMENT
        || na[field::CODE] != 0
        || icmpv6_sum(ip.src_addr(), ip.dst_addr(), na) != 0xffff
    {
        return None;
    }
    let flags = u32::from_be_bytes(na[field::FLAGS].try_into().ok()?);
    let target = Ipv6Addr::from(<[u8; 16]>::try_from(&na[field::TARGET]).ok()?);
    let mac = na
        .get(field::OPT_TYPE..field::OPT_LLADDR.end)
        .filter(|o| o[0] == OPT_TARGET_LL_ADDR && o[1] == 1)
        .and_then(|o| MacAddr::try_from(&o[2..]).ok());
    Some(NeighborAdvert {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        hop_limit: ip.hop_limit(),
        flags,
        target,
        mac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frame 5 of keepalived-v3-ipv6-mcast.pcap: keepalived's NA for 2001:db8:99::100.
    const KEEPALIVED_NA: [u8; FRAME_LEN] = [
        0x33, 0x33, 0x00, 0x00, 0x00, 0x01, 0x02, 0x99, 0x00, 0x00, 0x00, 0x02, 0x86, 0xdd, 0x60,
        0x00, 0x00, 0x00, 0x00, 0x20, 0x3a, 0xff, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x99, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x88, 0x00, 0xf5, 0x60, 0x20, 0x00,
        0x00, 0x00, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x99, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x01, 0x00, 0x02, 0x01, 0x02, 0x99, 0x00, 0x00, 0x00, 0x02,
    ];

    #[test]
    fn matches_keepalived_capture_and_checksum_verifies() {
        let mac = [0x02, 0x99, 0, 0, 0, 0x02];
        let vip: Ipv6Addr = "2001:db8:99::100".parse().unwrap();
        let frame = unsolicited_na(mac, vip);
        assert_eq!(frame, KEEPALIVED_NA);
        let na = parse_na(&frame).unwrap();
        assert_eq!(na.src, vip);
        assert_eq!(na.dst, ALL_NODES);
        assert_eq!(na.hop_limit, 255);
        assert_eq!(na.flags, FLAG_OVERRIDE);
        assert_eq!(na.flags & (FLAG_ROUTER | FLAG_SOLICITED), 0);
        assert_eq!(na.target, vip);
        assert_eq!(na.mac, Some(mac));
        // The checksum field holds the complement of the sum over the rest (0xf560 here).
        assert_eq!(&frame[56..58], &[0xf5, 0x60]);
    }

    #[test]
    fn a_bit_flip_breaks_the_checksum() {
        let frame = unsolicited_na([2, 0, 0, 0, 0, 1], "2001:db8::1".parse().unwrap());
        for i in 22..FRAME_LEN {
            let mut bad = frame;
            bad[i] ^= 0x01;
            assert_eq!(parse_na(&bad), None, "flip at byte {i} not caught");
        }
    }
}
