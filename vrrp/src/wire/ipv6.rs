//! The IPv6 header around a VRRP advertisement or a Neighbour Advertisement (RFC 8200 §3).
//!
//! A raw IPv6 socket neither hands the header over on receive nor takes one on send: the kernel
//! writes it from the socket options (hop limit, traffic class) and reports the hop limit and
//! destination as ancillary data. This view serves what sees whole frames: the unsolicited
//! Neighbour Advertisements sent on an `AF_PACKET` socket ([`super::ndisc`]), captures and tests.

use std::net::Ipv6Addr;

use super::Error;

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = 40;
/// The traffic class of an advertisement: CS6, network control (as keepalived sends it).
pub const TRAFFIC_CLASS: u8 = 0xc0;

/// Byte ranges and offsets of the IPv6 header.
mod field {
    /// A byte range inside the header.
    pub type Field = core::ops::Range<usize>;

    /// Version (4 bits), Traffic Class (8 bits), Flow Label (20 bits).
    pub const VER_TC_FLOW: Field = 0..4;
    /// Payload Length.
    pub const LENGTH: Field = 4..6;
    /// Next Header.
    pub const NEXT_HEADER: usize = 6;
    /// Hop Limit.
    pub const HOP_LIMIT: usize = 7;
    /// Source Address.
    pub const SRC: Field = 8..24;
    /// Destination Address.
    pub const DST: Field = 24..40;
}

/// An IPv6 packet: a read/write view over a buffer.
///
/// ```text
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |Version| Traffic Class |           Flow Label                  |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |         Payload Length        |  Next Header  |   Hop Limit   |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                                                               |
/// +                         Source Address                        +
/// |                                                               |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                                                               |
/// +                      Destination Address                      +
/// |                                                               |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without any check; call [`check_len`](Self::check_len) before the accessors.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` and checks it with [`check_len`](Self::check_len).
    ///
    /// # Errors
    /// As [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds the header and the payload it announces, version 6. After this
    /// succeeds no accessor panics.
    ///
    /// # Errors
    /// [`Error::Truncated`] for a short buffer, [`Error::IpHeader`] for another version.
    pub fn check_len(&self) -> Result<(), Error> {
        let buf = self.buffer.as_ref();
        if buf.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 6 {
            return Err(Error::IpHeader);
        }
        if HEADER_LEN + usize::from(self.payload_len()) > buf.len() {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The Version field.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TC_FLOW.start] >> 4
    }

    /// The Traffic Class field.
    pub fn traffic_class(&self) -> u8 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        (b[0] << 4) | (b[1] >> 4)
    }

    /// The Payload Length field.
    pub fn payload_len(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::LENGTH];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The Next Header field.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    /// The Hop Limit field.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// The Source Address field.
    pub fn src_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::SRC])
    }

    /// The Destination Address field.
    pub fn dst_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::DST])
    }

    /// The payload, cut to the Payload Length (Ethernet padding is not part of it).
    pub fn payload(&self) -> &[u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        self.buffer
            .as_ref()
            .get(HEADER_LEN..end)
            .unwrap_or_default()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes the 40-byte header described by `repr` (flow label 0) for a payload of `payload_len`
    /// bytes.
    ///
    /// # Errors
    /// [`Error::Truncated`] for a buffer shorter than the header, [`Error::IpHeader`] when the
    /// payload length does not fit 16 bits.
    pub fn emit_header(&mut self, repr: &Repr, payload_len: usize) -> Result<(), Error> {
        let len = u16::try_from(payload_len).map_err(|_| Error::IpHeader)?;
        let header = self
            .buffer
            .as_mut()
            .get_mut(..HEADER_LEN)
            .ok_or(Error::Truncated)?;
        header[field::VER_TC_FLOW].copy_from_slice(&[
            0x60 | (repr.traffic_class >> 4),
            repr.traffic_class << 4,
            0,
            0,
        ]);
        header[field::LENGTH].copy_from_slice(&len.to_be_bytes());
        header[field::NEXT_HEADER] = repr.next_header;
        header[field::HOP_LIMIT] = repr.hop_limit;
        header[field::SRC].copy_from_slice(&repr.src.octets());
        header[field::DST].copy_from_slice(&repr.dst.octets());
        Ok(())
    }
}

fn addr(bytes: &[u8]) -> Ipv6Addr {
    <[u8; 16]>::try_from(bytes).map_or(Ipv6Addr::UNSPECIFIED, Ipv6Addr::from)
}

/// The fields of an IPv6 header that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Next Header (112 for VRRP, 58 for ICMPv6).
    pub next_header: u8,
    /// Hop limit; 255 for VRRP (RFC 5798 §5.1.2.3) and Neighbour Discovery (RFC 4861 §7.1.2).
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
}

/// Sum of the IPv6 pseudo-header (RFC 8200 §8.1): source, destination, upper-layer length, next
/// header; folded by the caller.
pub(crate) fn pseudo_header_sum(src: Ipv6Addr, dst: Ipv6Addr, len: u32, next_header: u8) -> u32 {
    super::sum_words(&src.octets())
        + super::sum_words(&dst.octets())
        + (len >> 16)
        + (len & 0xffff)
        + u32::from(next_header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let repr = Repr {
            src: "fe80::1".parse().unwrap(),
            dst: super::super::MULTICAST_V6,
            next_header: super::super::IP_PROTOCOL,
            hop_limit: 255,
            traffic_class: TRAFFIC_CLASS,
        };
        let mut buf = [0u8; HEADER_LEN + 4];
        Packet::new_unchecked(&mut buf[..])
            .emit_header(&repr, 4)
            .unwrap();
        assert_eq!(&buf[..4], &[0x6c, 0x00, 0, 0]);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.traffic_class(), TRAFFIC_CLASS);
        assert_eq!(p.src_addr(), repr.src);
        assert_eq!(p.dst_addr(), repr.dst);
        assert_eq!(p.hop_limit(), 255);
        assert_eq!(p.next_header(), 112);
        assert_eq!(p.payload().len(), 4);
        assert_eq!(
            Packet::new_checked(&buf[..HEADER_LEN + 3]),
            Err(Error::Truncated)
        );
    }
}
