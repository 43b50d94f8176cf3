//! Shared by the XDP program tests: the privilege rule and frame builders.
#![allow(
    dead_code,
    reason = "each test binary that includes this module uses a different part of it"
)]

use etherparse::{IpHeaders, PacketBuilder, PacketBuilderStep};

/// Tests that need root (BPF_PROG_TEST_RUN) call this first: under CI they fail loudly without
/// the privilege; elsewhere they say why they skip (the workspace's one rule, `lb-testkit`).
pub fn have_root(test: &str) -> bool {
    lb_testkit::require_or_skip(test, lb_testkit::root_unavailable_reason())
}

pub const OWN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
pub const VIP: [u8; 4] = [198, 18, 0, 100];
pub const CLIENT: [u8; 4] = [198, 18, 0, 10];
/// 2001:db8::100.
pub const VIP6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00,
];
/// 2001:db8::10.
pub const CLIENT6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// A TCP segment from the client to `dst:dport` with the given flags, addressed to `dst_mac`.
pub fn tcp(
    dst_mac: [u8; 6],
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    syn: bool,
    fin: bool,
) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(CLIENT_MAC, dst_mac).ipv4(src, dst, 64);
    tcp_over(ip, sport, dport, syn, fin)
}

/// The TCP segment of [`tcp`] (or [`tcp6`]) over the IP header `ip`: a SYN, or an ACK with a
/// request; FIN added when asked.
fn tcp_over(
    ip: PacketBuilderStep<IpHeaders>,
    sport: u16,
    dport: u16,
    syn: bool,
    fin: bool,
) -> Vec<u8> {
    let mut b = ip.tcp(sport, dport, 1000, 64240);
    if syn {
        b = b.syn();
    } else {
        b = b.ack(1);
    }
    if fin {
        b = b.fin();
    }
    let payload: &[u8] = if syn { &[] } else { b"GET / HTTP/1.1\r\n\r\n" };
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("write frame");
    out
}

/// A UDP datagram from the client.
pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, OWN_MAC)
        .ipv4(src, dst, 64)
        .udp(sport, dport);
    let mut out = Vec::new();
    b.write(&mut out, b"query").expect("write frame");
    out
}

/// An ICMP echo request to `dst`.
pub fn icmp(dst: [u8; 4]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, OWN_MAC)
        .ipv4(CLIENT, dst, 64)
        .icmpv4_echo_request(1, 1);
    let mut out = Vec::new();
    b.write(&mut out, b"ping").expect("write frame");
    out
}

/// An ARP request "who has VIP" (broadcast).
pub fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&CLIENT);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&VIP);
    f.resize(60, 0);
    f
}

/// An IPv6 frame (TCP to some address).
pub fn ipv6() -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, OWN_MAC)
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .tcp(1, 80, 0, 100);
    let mut out = Vec::new();
    b.write(&mut out, &[]).expect("write frame");
    out
}

/// Recomputes the IPv4 header checksum of an Ethernet frame after a test edited the header.
pub fn fix_ip_checksum(frame: &mut [u8]) {
    let ihl = (frame[14] & 0x0f) as usize * 4;
    frame[24] = 0;
    frame[25] = 0;
    let mut sum = 0u32;
    for c in frame[14..14 + ihl].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let ck = !(sum as u16);
    frame[24..26].copy_from_slice(&ck.to_be_bytes());
}

/// Inserts 4 bytes of IPv4 options (NOPs + end) into a frame, fixing IHL and lengths.
pub fn with_ip_options(mut frame: Vec<u8>) -> Vec<u8> {
    frame.splice(34..34, [1u8, 1, 1, 0]);
    frame[14] = 0x46;
    let tot = u16::from_be_bytes([frame[16], frame[17]]) + 4;
    frame[16..18].copy_from_slice(&tot.to_be_bytes());
    fix_ip_checksum(&mut frame);
    frame
}

/// Sets the fragment field (flags + offset in 8-byte units) of a frame.
pub fn with_frag(mut frame: Vec<u8>, more_fragments: bool, offset: u16) -> Vec<u8> {
    let v = if more_fragments { 0x2000 } else { 0 } | (offset & 0x1fff);
    frame[20..22].copy_from_slice(&v.to_be_bytes());
    fix_ip_checksum(&mut frame);
    frame
}

/// Sets the IP protocol field of a frame.
pub fn with_proto(mut frame: Vec<u8>, proto: u8) -> Vec<u8> {
    frame[23] = proto;
    fix_ip_checksum(&mut frame);
    frame
}

/// Sets the EtherType of a frame.
pub fn with_ethertype(mut frame: Vec<u8>, ethertype: u16) -> Vec<u8> {
    frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
    frame
}

/// An IPv6 TCP segment from `src` to `dst:dport` with the given flags, addressed to `dst_mac`.
pub fn tcp6(
    dst_mac: [u8; 6],
    src: [u8; 16],
    sport: u16,
    dst: [u8; 16],
    dport: u16,
    syn: bool,
    fin: bool,
) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(CLIENT_MAC, dst_mac).ipv6(src, dst, 64);
    tcp_over(ip, sport, dport, syn, fin)
}

/// An IPv6 UDP datagram from the client.
pub fn udp6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, OWN_MAC)
        .ipv6(src, dst, 64)
        .udp(sport, dport);
    let mut out = Vec::new();
    b.write(&mut out, b"query").expect("write frame");
    out
}

/// An ICMPv6 echo request to `dst`.
pub fn icmp6(dst: [u8; 16]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, OWN_MAC)
        .ipv6(CLIENT6, dst, 64)
        .icmpv6_echo_request(1, 1);
    let mut out = Vec::new();
    b.write(&mut out, b"ping").expect("write frame");
    out
}

/// A neighbour solicitation for `target` (RFC 4861 §4.3), to its solicited-node multicast
/// group and MAC, hop limit 255, with the source link-layer address option.
pub fn neighbour_solicitation(target: [u8; 16]) -> Vec<u8> {
    let mut group = [0xffu8, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0];
    group[13..].copy_from_slice(&target[13..]);
    let mac = [0x33, 0x33, 0xff, target[13], target[14], target[15]];
    let mut body = target.to_vec();
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&CLIENT_MAC);
    let b = PacketBuilder::ethernet2(CLIENT_MAC, mac)
        .ipv6(CLIENT6, group, 255)
        .icmpv6(etherparse::Icmpv6Type::Unknown {
            type_u8: 135,
            code_u8: 0,
            bytes5to8: [0; 4],
        });
    let mut out = Vec::new();
    b.write(&mut out, &body).expect("write frame");
    out
}

/// Puts an 8-byte IPv6 extension header of type `kind` between the IPv6 header and the
/// transport header (a PadN option for hop-by-hop and destination options, zeros otherwise).
pub fn with_ext_header(mut frame: Vec<u8>, kind: u8) -> Vec<u8> {
    let next = frame[20];
    frame[20] = kind;
    let plen = u16::from_be_bytes([frame[18], frame[19]]) + 8;
    frame[18..20].copy_from_slice(&plen.to_be_bytes());
    let ext = match kind {
        // Hop-by-hop and destination options: one PadN option of 4 bytes.
        0 | 60 => [next, 0, 1, 4, 0, 0, 0, 0],
        // Fragment: offset 0, more fragments, identification 1.
        44 => [next, 0, 0, 1, 0, 0, 0, 1],
        _ => [next, 0, 0, 0, 0, 0, 0, 0],
    };
    frame.splice(54..54, ext);
    frame
}

/// Sets the version nibble of an IPv6 frame.
pub fn with_ip6_version(mut frame: Vec<u8>, version: u8) -> Vec<u8> {
    frame[14] = (version << 4) | (frame[14] & 0x0f);
    frame
}

/// Sets the next-header field of an IPv6 frame.
pub fn with_next_header(mut frame: Vec<u8>, next: u8) -> Vec<u8> {
    frame[20] = next;
    frame
}
