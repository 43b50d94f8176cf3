//! The IPv4 datagram around a VRRP advertisement, as a raw socket with `IP_HDRINCL` writes it and as
//! a raw IPv4 socket reads it (the kernel hands the IP header over too).
//!
//! Adverts go out like keepalived's: TOS 0xc0 (network control), no DF, TTL 255, protocol 112, an
//! identification the caller increments (RFC 5798 §5.1.1).

use std::net::{IpAddr, Ipv4Addr};

use super::{AddressFamily, Error, IP_PROTOCOL, Packet as VrrpPacket, Repr as VrrpRepr, TTL};

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = 20;
/// The TOS byte of an advertisement: precedence 6, network control (as keepalived and most routers
/// send it).
pub const TOS: u8 = 0xc0;

/// Byte ranges and offsets of the IPv4 header.
mod field {
    /// A byte range inside the header.
    pub type Field = core::ops::Range<usize>;

    /// Version (high nibble) and IHL (low nibble, in 32-bit words).
    pub const VER_IHL: usize = 0;
    /// Type of service / DSCP+ECN.
    pub const TOS: usize = 1;
    /// Total length.
    pub const LENGTH: Field = 2..4;
    /// Identification.
    pub const IDENT: Field = 4..6;
    /// Flags (3 bits) and fragment offset (13 bits).
    pub const FLG_OFF: Field = 6..8;
    /// Time to live.
    pub const TTL: usize = 8;
    /// Protocol.
    pub const PROTOCOL: usize = 9;
    /// Header checksum.
    pub const CHECKSUM: Field = 10..12;
    /// Source address.
    pub const SRC: Field = 12..16;
    /// Destination address.
    pub const DST: Field = 16..20;
}

/// An IPv4 datagram: a read/write view over a buffer (RFC 791 §3.1).
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |Version|  IHL  |Type of Service|          Total Length         |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |         Identification        |Flags|      Fragment Offset    |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |  Time to Live |    Protocol   |         Header Checksum       |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                       Source Address                          |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                    Destination Address                        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                    Options                    |    Padding    |
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

    /// Checks that the buffer holds a whole IPv4 header and the total length it announces: version 4,
    /// IHL ≥ 5, header ≤ total length ≤ buffer length. After this succeeds no accessor panics.
    ///
    /// # Errors
    /// [`Error::Truncated`] for a buffer shorter than 20 bytes or than its total length,
    /// [`Error::IpHeader`] for an inconsistent header.
    pub fn check_len(&self) -> Result<(), Error> {
        let buf = self.buffer.as_ref();
        if buf.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 4 || self.header_len() < HEADER_LEN {
            return Err(Error::IpHeader);
        }
        let total = usize::from(self.total_len());
        if total < self.header_len() {
            return Err(Error::IpHeader);
        }
        if total > buf.len() {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Consumes the view and returns the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The Version field.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// The header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// The Type of Service byte.
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }

    /// The Total Length field.
    pub fn total_len(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::LENGTH];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The Identification field.
    pub fn ident(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::IDENT];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Whether the More Fragments flag is set.
    pub fn more_frags(&self) -> bool {
        self.buffer.as_ref()[field::FLG_OFF.start] & 0x20 != 0
    }

    /// Whether the Don't Fragment flag is set.
    pub fn dont_frag(&self) -> bool {
        self.buffer.as_ref()[field::FLG_OFF.start] & 0x40 != 0
    }

    /// The fragment offset, in 8-byte units.
    pub fn frag_offset(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::FLG_OFF];
        u16::from_be_bytes([b[0], b[1]]) & 0x1fff
    }

    /// The Time to Live field.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// The Protocol field.
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// The Header Checksum field.
    pub fn checksum(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::CHECKSUM];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The Source Address field.
    pub fn src_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SRC];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// The Destination Address field.
    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DST];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// Whether the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        let header = self
            .buffer
            .as_ref()
            .get(..self.header_len())
            .unwrap_or_default();
        super::fold(super::sum_words(header)) == 0xffff
    }

    /// The payload: from the end of the header (options included) to the total length. Bytes past
    /// the total length (Ethernet padding) are not part of it. Empty if the lengths are inconsistent.
    pub fn payload(&self) -> &[u8] {
        let total = usize::from(self.total_len());
        self.buffer
            .as_ref()
            .get(self.header_len()..total)
            .unwrap_or_default()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the Time to Live field (the header checksum must be filled again).
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Sets the Protocol field (the header checksum must be filled again).
    pub fn set_protocol(&mut self, protocol: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol;
    }

    /// Sets the Total Length field (the header checksum must be filled again).
    pub fn set_total_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }

    /// Sets the Source Address field (the header and VRRP checksums must be filled again).
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&addr.octets());
    }

    /// Computes the header checksum over the header (options included) and stores it. Does nothing
    /// if the buffer is shorter than the header length.
    pub fn fill_checksum(&mut self) {
        let header_len = self.header_len();
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&[0, 0]);
        if let Some(header) = self.buffer.as_mut().get_mut(..header_len) {
            let sum = !super::fold(super::sum_words(header));
            header[field::CHECKSUM].copy_from_slice(&sum.to_be_bytes());
        }
    }

    /// The payload, writable: as [`payload`](Self::payload).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len()..usize::from(self.total_len());
        self.buffer.as_mut().get_mut(range).unwrap_or_default()
    }

    /// Writes a 20-byte header (no options) described by `repr` for a payload of `payload_len` bytes,
    /// with its checksum. The buffer must hold at least 20 bytes.
    ///
    /// # Errors
    /// [`Error::Truncated`] for a buffer shorter than the header, [`Error::IpHeader`] when the total
    /// length does not fit 16 bits.
    pub fn emit_header(&mut self, repr: &Repr, payload_len: usize) -> Result<(), Error> {
        let total = u16::try_from(HEADER_LEN + payload_len).map_err(|_| Error::IpHeader)?;
        let header = self
            .buffer
            .as_mut()
            .get_mut(..HEADER_LEN)
            .ok_or(Error::Truncated)?;
        header[field::VER_IHL] = 0x45;
        header[field::TOS] = repr.tos;
        header[field::LENGTH].copy_from_slice(&total.to_be_bytes());
        header[field::IDENT].copy_from_slice(&repr.ident.to_be_bytes());
        header[field::FLG_OFF].copy_from_slice(&0u16.to_be_bytes());
        header[field::TTL] = repr.ttl;
        header[field::PROTOCOL] = IP_PROTOCOL;
        header[field::CHECKSUM].copy_from_slice(&0u16.to_be_bytes());
        header[field::SRC].copy_from_slice(&repr.src.octets());
        header[field::DST].copy_from_slice(&repr.dst.octets());
        let sum = !super::fold(super::sum_words(header));
        header[field::CHECKSUM].copy_from_slice(&sum.to_be_bytes());
        Ok(())
    }
}

/// The IPv4 header fields of an advertisement that matter to VRRP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source address: the sender's primary address.
    pub src: Ipv4Addr,
    /// Destination: 224.0.0.18 or a unicast peer.
    pub dst: Ipv4Addr,
    /// Time to live; 255 when sent, must be 255 when received (§7.1).
    pub ttl: u8,
    /// Type of service byte.
    pub tos: u8,
    /// Identification.
    pub ident: u16,
}

impl Repr {
    /// The header of an advertisement sent from `src` to `dst`: TTL 255, TOS 0xc0.
    #[must_use]
    pub const fn advert(src: Ipv4Addr, dst: Ipv4Addr, ident: u16) -> Self {
        Self {
            src,
            dst,
            ttl: TTL,
            tos: TOS,
            ident,
        }
    }
}

/// Builds the whole IPv4 datagram of `advert` (header as [`Repr::advert`], then the VRRP message).
///
/// # Errors
/// As [`VrrpRepr::emit`]; [`Error::AddressFamily`] if `advert` lists IPv6 addresses.
pub fn emit_advert(ip: &Repr, advert: &VrrpRepr) -> Result<Vec<u8>, Error> {
    if advert.addresses.family() != AddressFamily::Ipv4 {
        return Err(Error::AddressFamily);
    }
    let vrrp_len = advert.buffer_len();
    let mut buf = vec![0u8; HEADER_LEN + vrrp_len];
    Packet::new_unchecked(&mut buf[..]).emit_header(ip, vrrp_len)?;
    let vrrp = buf.get_mut(HEADER_LEN..).ok_or(Error::Truncated)?;
    advert.emit(
        &mut VrrpPacket::new_unchecked(vrrp, AddressFamily::Ipv4),
        IpAddr::V4(ip.src),
        IpAddr::V4(ip.dst),
    )?;
    Ok(buf)
}

/// Parses a whole IPv4 datagram holding a VRRP advertisement: the IP header (version, lengths,
/// header checksum, protocol 112, not a fragment) then the VRRP message as [`VrrpRepr::parse`],
/// whose checksum covers the pseudo-header of this datagram. The TTL is returned, not judged.
///
/// # Errors
/// The first check that fails, as an [`Error`].
pub fn parse_advert(datagram: &[u8]) -> Result<(Repr, VrrpRepr), Error> {
    let ip = Packet::new_checked(datagram)?;
    if !ip.verify_checksum() {
        return Err(Error::IpChecksum);
    }
    if ip.protocol() != IP_PROTOCOL {
        return Err(Error::Protocol(ip.protocol()));
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Err(Error::Fragment);
    }
    let repr = Repr {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        ttl: ip.ttl(),
        tos: ip.tos(),
        ident: ip.ident(),
    };
    let vrrp = VrrpPacket::new_unchecked(ip.payload(), AddressFamily::Ipv4);
    let advert = VrrpRepr::parse(&vrrp, IpAddr::V4(repr.src), IpAddr::V4(repr.dst))?;
    Ok((repr, advert))
}

#[cfg(test)]
mod tests {
    use super::super::{Addresses, MULTICAST_V4};
    use super::*;

    #[test]
    fn advert_matches_keepalived_capture() {
        // Frame 16 of keepalived-v3-mcast-handover.pcap: the priority-0 advert, IP part.
        let expected = [
            0x45, 0xc0, 0x00, 0x20, 0x00, 0x05, 0x00, 0x00, 0xff, 0x70, 0xd0, 0x31, 0x0a, 0x63,
            0x00, 0x02, 0xe0, 0x00, 0x00, 0x12, 0x31, 0x33, 0x00, 0x01, 0x00, 0x64, 0xd8, 0xac,
            0x0a, 0x63, 0x00, 0x64,
        ];
        let ip = Repr::advert(Ipv4Addr::new(10, 99, 0, 2), MULTICAST_V4, 5);
        let advert = VrrpRepr {
            vrid: 51,
            priority: 0,
            max_adver_int: 100,
            addresses: Addresses::V4(vec![Ipv4Addr::new(10, 99, 0, 100)]),
        };
        assert_eq!(emit_advert(&ip, &advert).unwrap(), expected);
        assert_eq!(parse_advert(&expected).unwrap(), (ip, advert));
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(parse_advert(&[0x45; 10]), Err(Error::Truncated));
        let mut d = [0u8; 32];
        d[0] = 0x65;
        assert_eq!(parse_advert(&d), Err(Error::IpHeader));
        d[0] = 0x4f; // IHL 60 bytes > total length 0
        assert_eq!(parse_advert(&d), Err(Error::IpHeader));
    }
}
