//! Gratuitous ARP (RFC 5798 §6.4.1, §6.4.2: "broadcast a gratuitous ARP request containing the
//! virtual router MAC address for each IP address associated with the virtual router").
//!
//! Built as keepalived sends it: an Ethernet broadcast ARP request "who-has VIP tell VIP" with the
//! sender's real MAC (no VRRP virtual MAC) and a broadcast target hardware address.

use std::net::Ipv4Addr;

/// An Ethernet (EUI-48) hardware address.
pub type MacAddr = [u8; 6];

/// The Ethernet broadcast address.
pub const BROADCAST: MacAddr = [0xff; 6];
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// Length of an ARP request for IPv4 over Ethernet, Ethernet header included (no padding: the
/// driver pads to the 60-byte minimum).
pub const FRAME_LEN: usize = ETHERNET_HEADER_LEN + ARP_LEN;

const ETHERNET_HEADER_LEN: usize = 14;
const ARP_LEN: usize = 28;

/// Byte ranges of the Ethernet + ARP frame.
mod field {
    /// A byte range inside the frame.
    pub type Field = core::ops::Range<usize>;

    /// Ethernet destination.
    pub const ETH_DST: Field = 0..6;
    /// Ethernet source.
    pub const ETH_SRC: Field = 6..12;
    /// EtherType.
    pub const ETHERTYPE: Field = 12..14;
    /// ARP hardware type (1 = Ethernet).
    pub const HTYPE: Field = 14..16;
    /// ARP protocol type (0x0800 = IPv4).
    pub const PTYPE: Field = 16..18;
    /// Hardware address length.
    pub const HLEN: usize = 18;
    /// Protocol address length.
    pub const PLEN: usize = 19;
    /// Operation (1 = request).
    pub const OPER: Field = 20..22;
    /// Sender hardware address.
    pub const SHA: Field = 22..28;
    /// Sender protocol address.
    pub const SPA: Field = 28..32;
    /// Target hardware address.
    pub const THA: Field = 32..38;
    /// Target protocol address.
    pub const TPA: Field = 38..42;
}

/// Builds the gratuitous ARP frame announcing that `vip` is at `mac`.
///
/// ```text
/// Ethernet: dst ff:ff:ff:ff:ff:ff  src MAC  type 0x0806
/// ARP (RFC 826): htype 1, ptype 0x0800, hlen 6, plen 4, oper 1 (request)
///                sha MAC, spa VIP, tha ff:ff:ff:ff:ff:ff, tpa VIP
/// ```
#[must_use]
pub fn gratuitous_request(mac: MacAddr, vip: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[field::ETH_DST].copy_from_slice(&BROADCAST);
    f[field::ETH_SRC].copy_from_slice(&mac);
    f[field::ETHERTYPE].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f[field::HTYPE].copy_from_slice(&1u16.to_be_bytes());
    f[field::PTYPE].copy_from_slice(&0x0800u16.to_be_bytes());
    f[field::HLEN] = 6;
    f[field::PLEN] = 4;
    f[field::OPER].copy_from_slice(&1u16.to_be_bytes());
    f[field::SHA].copy_from_slice(&mac);
    f[field::SPA].copy_from_slice(&vip.octets());
    f[field::THA].copy_from_slice(&BROADCAST);
    f[field::TPA].copy_from_slice(&vip.octets());
    f
}

/// If `frame` is a gratuitous ARP request (Ethernet, IPv4, request, sender address = target
/// address), returns its sender MAC and announced address.
#[must_use]
pub fn parse_gratuitous(frame: &[u8]) -> Option<(MacAddr, Ipv4Addr)> {
    let f = frame.get(..FRAME_LEN)?;
    let well_formed = f[field::ETHERTYPE] == ETHERTYPE_ARP.to_be_bytes()
        && f[field::HTYPE] == 1u16.to_be_bytes()
        && f[field::PTYPE] == 0x0800u16.to_be_bytes()
        && f[field::HLEN] == 6
        && f[field::PLEN] == 4
        && f[field::OPER] == 1u16.to_be_bytes();
    if !well_formed || f[field::SPA] != f[field::TPA] {
        return None;
    }
    let mac = MacAddr::try_from(&f[field::SHA]).ok()?;
    let spa = <[u8; 4]>::try_from(&f[field::SPA]).ok()?;
    Some((mac, Ipv4Addr::from(spa)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_keepalived_capture() {
        // Frame 2 of keepalived-v3-mcast-handover.pcap.
        let expected = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x99, 0x00, 0x00, 0x00, 0x02, 0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x99, 0x00, 0x00, 0x00, 0x02,
            0x0a, 0x63, 0x00, 0x64, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0a, 0x63, 0x00, 0x64,
        ];
        let mac = [0x02, 0x99, 0, 0, 0, 0x02];
        let vip = Ipv4Addr::new(10, 99, 0, 100);
        assert_eq!(gratuitous_request(mac, vip), expected);
        assert_eq!(parse_gratuitous(&expected), Some((mac, vip)));
    }
}
