//! VRRPv3 wire format (RFC 5798 §5), in the style of smoltcp's `wire` module.
//!
//! [`Packet`] is a checked view over a byte buffer: build it with [`Packet::new_checked`] (or call
//! [`Packet::check_len`] after [`Packet::new_unchecked`]) and no accessor panics afterwards, whatever
//! the bytes are. [`Repr`] is the parsed, owned form: [`Repr::parse`] validates the fields that make a
//! well-formed advertisement (version, type, length, checksum) and [`Repr::emit`] writes one back.
//!
//! The VRRP message does not say which address family it carries; the IP layer does. A [`Packet`]
//! therefore carries an [`AddressFamily`], and the checksum covers the IP pseudo-header built from the
//! source and destination addresses (§5.2.8). The submodules hold the layers around it:
//! [`ipv4`] (the full IPv4 datagram a raw socket reads and writes), [`ipv6`] (the IPv6 header, which
//! a raw IPv6 socket neither reads nor writes), [`arp`] (gratuitous ARP) and [`ndisc`] (unsolicited
//! Neighbour Advertisements, its IPv6 counterpart).

pub mod arp;
pub mod ipv4;
pub mod ipv6;
pub mod ndisc;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of VRRP (RFC 5798 §5.1.1.3, §5.1.2.3).
pub const IP_PROTOCOL: u8 = 112;
/// The only VRRP version this codec accepts (§5.2.1).
pub const VERSION: u8 = 3;
/// The only VRRP message type defined: ADVERTISEMENT (§5.2.2).
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// The IPv4 multicast group of VRRP (§5.1.1.2).
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The IPv6 multicast group of VRRP (§5.1.2.2).
pub const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// The IPv4 TTL / IPv6 hop limit every advert is sent with and must arrive with (§5.1.1.3, §7.1).
pub const TTL: u8 = 255;
/// Largest value of the 12-bit Max Adver Int field, in centiseconds (§5.2.7).
pub const MAX_ADVER_INT_MAX: u16 = 0x0fff;
/// Length of the fixed VRRP header, before the address list.
pub const HEADER_LEN: usize = field::ADDRESSES;
/// Most addresses one advertisement can list (the count field is 8 bits).
pub const MAX_ADDRESSES: usize = u8::MAX as usize;

/// Byte ranges and offsets of the fixed VRRP header.
mod field {
    /// A byte range inside the packet.
    pub type Field = core::ops::Range<usize>;

    /// Version (high nibble) and Type (low nibble).
    pub const VER_TYPE: usize = 0;
    /// Virtual Rtr ID.
    pub const VRID: usize = 1;
    /// Priority.
    pub const PRIORITY: usize = 2;
    /// Count IPvX Addr.
    pub const COUNT: usize = 3;
    /// 4 reserved bits, then the 12-bit Max Adver Int.
    pub const MAX_ADVER_INT: Field = 4..6;
    /// Checksum.
    pub const CHECKSUM: Field = 6..8;
    /// Start of the address list.
    pub const ADDRESSES: usize = 8;
}

/// Address family of a VRRP message: which IP version carries it and so how long each listed address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// VRRP over IPv4: 4-byte addresses.
    Ipv4,
    /// VRRP over IPv6: 16-byte addresses.
    Ipv6,
}

impl AddressFamily {
    /// Length in bytes of one address of this family.
    #[must_use]
    pub const fn addr_len(self) -> usize {
        match self {
            Self::Ipv4 => 4,
            Self::Ipv6 => 16,
        }
    }

    /// The family of `addr`.
    #[must_use]
    pub const fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::Ipv4,
            IpAddr::V6(_) => Self::Ipv6,
        }
    }

    /// The VRRP multicast group of this family (RFC 5798 §5.1.1.2, §5.1.2.2).
    #[must_use]
    pub const fn multicast_group(self) -> IpAddr {
        match self {
            Self::Ipv4 => IpAddr::V4(MULTICAST_V4),
            Self::Ipv6 => IpAddr::V6(MULTICAST_V6),
        }
    }
}

impl core::fmt::Display for AddressFamily {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Ipv4 => "IPv4",
            Self::Ipv6 => "IPv6",
        })
    }
}

/// Why a buffer is not a well-formed VRRPv3 advertisement, or cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Shorter than the fixed header or than the address list its count announces.
    #[error("buffer too short")]
    Truncated,
    /// Version field other than 3.
    #[error("unsupported vrrp version {0}")]
    Version(u8),
    /// Type field other than 1 (ADVERTISEMENT).
    #[error("unknown vrrp message type {0}")]
    Type(u8),
    /// The message length is not the header plus `count` addresses.
    #[error("length {len} does not match an address count of {count}")]
    Length {
        /// The Count IPvX Addr field.
        count: u8,
        /// The message length in bytes.
        len: usize,
    },
    /// The checksum does not verify.
    #[error("bad checksum")]
    Checksum,
    /// Addresses of mixed families (listed addresses, pseudo-header source and destination).
    #[error("address family mismatch")]
    AddressFamily,
    /// More than 255 addresses to emit.
    #[error("more than 255 addresses")]
    TooManyAddresses,
    /// A Max Adver Int above 4095 centiseconds to emit.
    #[error("max adver int above 4095 centiseconds")]
    AdverInt,
    /// The IP header around the message is malformed (version, header length, total length).
    #[error("malformed ip header")]
    IpHeader,
    /// The IP header checksum does not verify.
    #[error("bad ip header checksum")]
    IpChecksum,
    /// The IP datagram does not carry protocol 112.
    #[error("ip protocol {0} is not vrrp")]
    Protocol(u8),
    /// The IP datagram is a fragment.
    #[error("fragmented ip datagram")]
    Fragment,
}

/// A VRRPv3 message: a read/write view over a buffer.
///
/// RFC 5798 §5.1, the VRRP part after the IPv4 or IPv6 header:
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                    IPv4 Fields or IPv6 Fields                 |
/// ...                                                             ...
/// |                                                               |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |(rsvd) |     Max Adver Int     |          Checksum             |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                                                               |
/// +                                                               +
/// |                       IPvX Address(es)                        |
/// +                                                               +
/// +                                                               +
/// +                                                               +
/// +                                                               +
/// |                                                               |
/// +                                                               +
/// |                                                               |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
    family: AddressFamily,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without any check; call [`check_len`](Self::check_len) before the accessors.
    pub const fn new_unchecked(buffer: T, family: AddressFamily) -> Self {
        Self { buffer, family }
    }

    /// Wraps `buffer` and checks that it holds the fixed header and the address list its count announces.
    ///
    /// # Errors
    /// [`Error::Truncated`] when it does not.
    pub fn new_checked(buffer: T, family: AddressFamily) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer, family);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer is long enough for every accessor: the fixed header and `count`
    /// addresses. Trailing bytes are allowed here ([`Repr::parse`] rejects them). After this succeeds
    /// no accessor panics.
    ///
    /// # Errors
    /// [`Error::Truncated`] when the buffer is shorter than that.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || len < self.message_len() {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// Consumes the view and returns the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The address family the view was made for.
    pub const fn family(&self) -> AddressFamily {
        self.family
    }

    /// The length of the message the header announces: the fixed header plus `count` addresses.
    /// Reads the count byte only if present (0 otherwise), so it never panics.
    pub fn message_len(&self) -> usize {
        let count = self.buffer.as_ref().get(field::COUNT).copied().unwrap_or(0);
        HEADER_LEN + usize::from(count) * self.family.addr_len()
    }

    /// The Version field (high nibble of the first byte).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TYPE] >> 4
    }

    /// The Type field (low nibble of the first byte).
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TYPE] & 0x0f
    }

    /// The Virtual Rtr ID field.
    pub fn vrid(&self) -> u8 {
        self.buffer.as_ref()[field::VRID]
    }

    /// The Priority field.
    pub fn priority(&self) -> u8 {
        self.buffer.as_ref()[field::PRIORITY]
    }

    /// The Count IPvX Addr field.
    pub fn addr_count(&self) -> u8 {
        self.buffer.as_ref()[field::COUNT]
    }

    /// The 4 reserved bits before Max Adver Int (sent as zero, ignored on receipt).
    pub fn reserved(&self) -> u8 {
        self.buffer.as_ref()[field::MAX_ADVER_INT.start] >> 4
    }

    /// The Max Adver Int field, in centiseconds (12 bits).
    pub fn max_adver_int(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::MAX_ADVER_INT];
        u16::from_be_bytes([b[0], b[1]]) & MAX_ADVER_INT_MAX
    }

    /// The Checksum field.
    pub fn checksum(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::CHECKSUM];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The raw bytes of the address list (`count` addresses). Empty if the buffer is too short, so it
    /// never panics even without [`check_len`](Self::check_len).
    pub fn addresses_bytes(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(HEADER_LEN..self.message_len())
            .unwrap_or_default()
    }

    /// The `index`th listed address, or `None` past the end.
    pub fn address(&self, index: usize) -> Option<IpAddr> {
        let n = self.family.addr_len();
        let bytes = self.addresses_bytes().get(index * n..(index + 1) * n)?;
        addr_from_bytes(self.family, bytes)
    }

    /// The listed addresses, in order.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let n = self.family.addr_len();
        self.addresses_bytes()
            .chunks_exact(n)
            .filter_map(|chunk| addr_from_bytes(self.family, chunk))
    }

    /// Whether the checksum verifies over the whole buffer and the pseudo-header for `src` → `dst`.
    /// A buffer and addresses of different families never verify.
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        match pseudo_header_sum(self.family, src, dst, self.buffer.as_ref().len()) {
            Some(pseudo) => fold(pseudo + sum_words(self.buffer.as_ref())) == 0xffff,
            None => false,
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the Version and Type fields.
    pub fn set_version_type(&mut self, version: u8, msg_type: u8) {
        self.buffer.as_mut()[field::VER_TYPE] = (version << 4) | (msg_type & 0x0f);
    }

    /// Sets the Virtual Rtr ID field.
    pub fn set_vrid(&mut self, vrid: u8) {
        self.buffer.as_mut()[field::VRID] = vrid;
    }

    /// Sets the Priority field.
    pub fn set_priority(&mut self, priority: u8) {
        self.buffer.as_mut()[field::PRIORITY] = priority;
    }

    /// Sets the Count IPvX Addr field.
    pub fn set_addr_count(&mut self, count: u8) {
        self.buffer.as_mut()[field::COUNT] = count;
    }

    /// Sets Max Adver Int (masked to 12 bits) and clears the reserved bits.
    pub fn set_max_adver_int(&mut self, centis: u16) {
        let value = centis & MAX_ADVER_INT_MAX;
        self.buffer.as_mut()[field::MAX_ADVER_INT].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the Checksum field.
    pub fn set_checksum(&mut self, checksum: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&checksum.to_be_bytes());
    }

    /// The address list, writable. Empty if the buffer is too short for `count` addresses.
    pub fn addresses_mut(&mut self) -> &mut [u8] {
        let end = self.message_len();
        self.buffer
            .as_mut()
            .get_mut(HEADER_LEN..end)
            .unwrap_or_default()
    }

    /// Computes the checksum over the whole buffer and the pseudo-header for `src` → `dst` and
    /// stores it.
    ///
    /// # Errors
    /// [`Error::AddressFamily`] when `src`, `dst` and the view's family differ.
    pub fn fill_checksum(&mut self, src: IpAddr, dst: IpAddr) -> Result<(), Error> {
        self.set_checksum(0);
        let pseudo = pseudo_header_sum(self.family, src, dst, self.buffer.as_ref().len())
            .ok_or(Error::AddressFamily)?;
        let sum = fold(pseudo + sum_words(self.buffer.as_ref()));
        self.set_checksum(!sum);
        Ok(())
    }
}

/// The address list of an advertisement: all of one family.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addresses {
    /// IPv4 addresses (VRRP over IPv4).
    V4(Vec<Ipv4Addr>),
    /// IPv6 addresses (VRRP over IPv6).
    V6(Vec<Ipv6Addr>),
}

impl Addresses {
    /// The family of the list.
    #[must_use]
    pub const fn family(&self) -> AddressFamily {
        match self {
            Self::V4(_) => AddressFamily::Ipv4,
            Self::V6(_) => AddressFamily::Ipv6,
        }
    }

    /// Number of addresses.
    #[must_use]
    pub fn len(&self) -> usize {
        match self {
            Self::V4(v) => v.len(),
            Self::V6(v) => v.len(),
        }
    }

    /// Whether the list is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The addresses as [`IpAddr`]s, in order.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let (v4, v6) = match self {
            Self::V4(v) => (Some(v), None),
            Self::V6(v) => (None, Some(v)),
        };
        let v4 = v4.into_iter().flatten().map(|a| IpAddr::V4(*a));
        let v6 = v6.into_iter().flatten().map(|a| IpAddr::V6(*a));
        v4.chain(v6)
    }

    /// Builds a list from `addrs`, all of which must be of one family (an empty input gives an empty
    /// IPv4 list).
    ///
    /// # Errors
    /// [`Error::AddressFamily`] for mixed families.
    pub fn from_ips(addrs: &[IpAddr]) -> Result<Self, Error> {
        match addrs.first() {
            None | Some(IpAddr::V4(_)) => addrs
                .iter()
                .map(|a| match a {
                    IpAddr::V4(a) => Ok(*a),
                    IpAddr::V6(_) => Err(Error::AddressFamily),
                })
                .collect::<Result<_, _>>()
                .map(Self::V4),
            Some(IpAddr::V6(_)) => addrs
                .iter()
                .map(|a| match a {
                    IpAddr::V6(a) => Ok(*a),
                    IpAddr::V4(_) => Err(Error::AddressFamily),
                })
                .collect::<Result<_, _>>()
                .map(Self::V6),
        }
    }

    /// Whether both lists hold the same set of addresses, in any order (keepalived's receive check).
    #[must_use]
    pub fn same_set(&self, other: &Self) -> bool {
        fn sorted<A: Ord + Copy>(v: &[A]) -> Vec<A> {
            let mut v = v.to_vec();
            v.sort_unstable();
            v.dedup();
            v
        }
        match (self, other) {
            (Self::V4(a), Self::V4(b)) => sorted(a) == sorted(b),
            (Self::V6(a), Self::V6(b)) => sorted(a) == sorted(b),
            _ => false,
        }
    }
}

/// A parsed VRRPv3 advertisement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Virtual Rtr ID.
    pub vrid: u8,
    /// Priority of the sender: 255 for the address owner, 0 when it stops being master.
    pub priority: u8,
    /// Max Adver Int, in centiseconds (12 bits; 0 is well-formed but invalid, see `validate`).
    pub max_adver_int: u16,
    /// The virtual addresses.
    pub addresses: Addresses,
}

impl Repr {
    /// Parses and checks an advertisement received from `src` for `dst` (the checksum covers both).
    ///
    /// Checks, in order: the fixed header is there, version 3, type 1, the length is exactly the
    /// header plus `count` addresses, `src`/`dst` are of the packet's family, the checksum verifies.
    /// A Max Adver Int of 0 and the reserved bits are left to the caller.
    ///
    /// # Errors
    /// The first check that fails, as an [`Error`].
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &Packet<&T>,
        src: IpAddr,
        dst: IpAddr,
    ) -> Result<Self, Error> {
        let len = packet.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if packet.version() != VERSION {
            return Err(Error::Version(packet.version()));
        }
        if packet.msg_type() != TYPE_ADVERTISEMENT {
            return Err(Error::Type(packet.msg_type()));
        }
        if len != packet.message_len() {
            return Err(Error::Length {
                count: packet.addr_count(),
                len,
            });
        }
        let family = packet.family();
        if AddressFamily::of(&src) != family || AddressFamily::of(&dst) != family {
            return Err(Error::AddressFamily);
        }
        if !packet.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        let addresses = match family {
            AddressFamily::Ipv4 => Addresses::V4(
                packet
                    .addresses_bytes()
                    .chunks_exact(4)
                    .filter_map(|c| <[u8; 4]>::try_from(c).ok())
                    .map(Ipv4Addr::from)
                    .collect(),
            ),
            AddressFamily::Ipv6 => Addresses::V6(
                packet
                    .addresses_bytes()
                    .chunks_exact(16)
                    .filter_map(|c| <[u8; 16]>::try_from(c).ok())
                    .map(Ipv6Addr::from)
                    .collect(),
            ),
        };
        Ok(Self {
            vrid: packet.vrid(),
            priority: packet.priority(),
            max_adver_int: packet.max_adver_int(),
            addresses,
        })
    }

    /// Length of the emitted message in bytes.
    #[must_use]
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.addresses.len() * self.addresses.family().addr_len()
    }

    /// Writes the advertisement into `packet` (whose buffer must be exactly
    /// [`buffer_len`](Self::buffer_len) bytes, or longer if the caller wants the checksum to cover
    /// trailing bytes too) with the checksum for `src` → `dst`.
    ///
    /// # Errors
    /// [`Error::TooManyAddresses`], [`Error::AdverInt`], [`Error::AddressFamily`] when the packet,
    /// the list and `src`/`dst` disagree, [`Error::Truncated`] when the buffer is too short.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(
        &self,
        packet: &mut Packet<&mut T>,
        src: IpAddr,
        dst: IpAddr,
    ) -> Result<(), Error> {
        let count = u8::try_from(self.addresses.len()).map_err(|_| Error::TooManyAddresses)?;
        if self.max_adver_int > MAX_ADVER_INT_MAX {
            return Err(Error::AdverInt);
        }
        let family = self.addresses.family();
        if packet.family() != family
            || AddressFamily::of(&src) != family
            || AddressFamily::of(&dst) != family
        {
            return Err(Error::AddressFamily);
        }
        if packet.buffer.as_ref().len() < self.buffer_len() {
            return Err(Error::Truncated);
        }
        packet.set_version_type(VERSION, TYPE_ADVERTISEMENT);
        packet.set_vrid(self.vrid);
        packet.set_priority(self.priority);
        packet.set_addr_count(count);
        packet.set_max_adver_int(self.max_adver_int);
        let out = packet.addresses_mut();
        match &self.addresses {
            Addresses::V4(list) => {
                for (chunk, addr) in out.chunks_exact_mut(4).zip(list) {
                    chunk.copy_from_slice(&addr.octets());
                }
            }
            Addresses::V6(list) => {
                for (chunk, addr) in out.chunks_exact_mut(16).zip(list) {
                    chunk.copy_from_slice(&addr.octets());
                }
            }
        }
        packet.fill_checksum(src, dst)
    }

    /// Emits into a new buffer of exactly [`buffer_len`](Self::buffer_len) bytes.
    ///
    /// # Errors
    /// As [`emit`](Self::emit).
    pub fn to_bytes(&self, src: IpAddr, dst: IpAddr) -> Result<Vec<u8>, Error> {
        let mut buf = vec![0u8; self.buffer_len()];
        self.emit(
            &mut Packet::new_unchecked(&mut buf[..], self.addresses.family()),
            src,
            dst,
        )?;
        Ok(buf)
    }
}

fn addr_from_bytes(family: AddressFamily, bytes: &[u8]) -> Option<IpAddr> {
    match family {
        AddressFamily::Ipv4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| IpAddr::V4(b.into())),
        AddressFamily::Ipv6 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| IpAddr::V6(b.into())),
    }
}

/// One's-complement sum of `data` as big-endian 16-bit words (an odd byte padded with zero),
/// folded to at most 0xffff so that callers can add a few of them without overflow.
pub(crate) fn sum_words(data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    let mut sum: u64 = chunks
        .by_ref()
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    u32::try_from(sum).unwrap_or(0xffff)
}

/// Folds a 32-bit one's-complement sum to 16 bits (RFC 1071).
pub(crate) fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    u16::try_from(sum).unwrap_or(u16::MAX)
}

/// Sum of the pseudo-header (RFC 5798 §5.2.8: the IPv4 one of RFC 768/793 — source, destination,
/// zero, protocol 112, VRRP length — or the IPv6 one of RFC 8200 §8.1), or `None` when `src`, `dst`
/// and `family` disagree.
fn pseudo_header_sum(family: AddressFamily, src: IpAddr, dst: IpAddr, len: usize) -> Option<u32> {
    let len = u32::try_from(len).ok()?;
    match (family, src, dst) {
        (AddressFamily::Ipv4, IpAddr::V4(s), IpAddr::V4(d)) => {
            // The 16-bit length field of the IPv4 pseudo-header; a longer message cannot be in IPv4.
            let len16 = u16::try_from(len).ok()?;
            Some(
                sum_words(&s.octets())
                    + sum_words(&d.octets())
                    + u32::from(IP_PROTOCOL)
                    + u32::from(len16),
            )
        }
        (AddressFamily::Ipv6, IpAddr::V6(s), IpAddr::V6(d)) => {
            Some(ipv6::pseudo_header_sum(s, d, len, IP_PROTOCOL))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> IpAddr {
        IpAddr::V4(a.into())
    }

    #[test]
    fn emit_matches_keepalived_capture() {
        // Frame 1 of keepalived-v3-mcast-handover.pcap, VRRP part.
        let expected = [
            0x31, 0x33, 0x96, 0x01, 0x00, 0x64, 0x42, 0xac, 0x0a, 0x63, 0x00, 0x64,
        ];
        let repr = Repr {
            vrid: 51,
            priority: 150,
            max_adver_int: 100,
            addresses: Addresses::V4(vec![Ipv4Addr::new(10, 99, 0, 100)]),
        };
        let src = v4([10, 99, 0, 2]);
        let dst = IpAddr::V4(MULTICAST_V4);
        let bytes = repr.to_bytes(src, dst).unwrap();
        assert_eq!(bytes, expected);
        let packet = Packet::new_checked(&expected[..], AddressFamily::Ipv4).unwrap();
        assert_eq!(Repr::parse(&packet, src, dst).unwrap(), repr);
        // The checksum binds the destination: another one does not verify.
        assert_eq!(
            Repr::parse(&packet, src, v4([10, 99, 0, 3])),
            Err(Error::Checksum)
        );
    }

    #[test]
    fn emit_matches_keepalived_ipv6_capture() {
        // Frame 4 of keepalived-v3-ipv6-mcast.pcap, VRRP part: the checksum covers the IPv6
        // pseudo-header (RFC 5798 §5.2.8) from the link-local source to ff02::12.
        let mut expected = vec![0x31, 0x33, 0x96, 0x01, 0x00, 0x64, 0x0b, 0x5c];
        expected.extend_from_slice(&"2001:db8:99::100".parse::<Ipv6Addr>().unwrap().octets());
        let repr = Repr {
            vrid: 51,
            priority: 150,
            max_adver_int: 100,
            addresses: Addresses::V6(vec!["2001:db8:99::100".parse().unwrap()]),
        };
        let src: IpAddr = "fe80::99:ff:fe00:2".parse().unwrap();
        let dst = IpAddr::V6(MULTICAST_V6);
        assert_eq!(repr.to_bytes(src, dst).unwrap(), expected);
        let packet = Packet::new_checked(&expected[..], AddressFamily::Ipv6).unwrap();
        assert_eq!(Repr::parse(&packet, src, dst).unwrap(), repr);
        let other: IpAddr = "fe80::99:ff:fe00:3".parse().unwrap();
        assert_eq!(Repr::parse(&packet, other, dst), Err(Error::Checksum));
    }

    #[test]
    fn truncated_and_length() {
        let short = [0x31, 0x33, 0x96];
        assert_eq!(
            Packet::new_checked(&short[..], AddressFamily::Ipv4),
            Err(Error::Truncated)
        );
        let count_too_big = [0x31, 0x33, 0x96, 0x02, 0x00, 0x64, 0, 0, 10, 99, 0, 100];
        assert_eq!(
            Packet::new_checked(&count_too_big[..], AddressFamily::Ipv4),
            Err(Error::Truncated)
        );
        let p = Packet::new_unchecked(&count_too_big[..], AddressFamily::Ipv4);
        assert_eq!(
            Repr::parse(&p, v4([1, 1, 1, 1]), v4([2, 2, 2, 2])),
            Err(Error::Length { count: 2, len: 12 })
        );
    }

    #[test]
    fn checksum_of_huge_buffers_does_not_overflow() {
        let big = vec![0xffu8; 300_000];
        let p = Packet::new_unchecked(&big[..], AddressFamily::Ipv6);
        let v6: IpAddr = "ffff::ffff".parse().unwrap();
        let _ = p.verify_checksum(v6, v6);
        // Too long for the 16-bit IPv4 pseudo-header length: never verifies.
        let p = Packet::new_unchecked(&big[..], AddressFamily::Ipv4);
        assert!(!p.verify_checksum(v4([255; 4]), v4([255; 4])));
    }

    #[test]
    fn ipv6_round_trip() {
        let repr = Repr {
            vrid: 7,
            priority: 100,
            max_adver_int: 4095,
            addresses: Addresses::V6(vec![Ipv6Addr::LOCALHOST, "fe80::1".parse().unwrap()]),
        };
        let src: IpAddr = "fe80::2".parse().unwrap();
        let dst = IpAddr::V6(MULTICAST_V6);
        let bytes = repr.to_bytes(src, dst).unwrap();
        assert_eq!(bytes.len(), 8 + 32);
        let p = Packet::new_checked(&bytes[..], AddressFamily::Ipv6).unwrap();
        assert_eq!(Repr::parse(&p, src, dst).unwrap(), repr);
        assert_eq!(
            repr.to_bytes(v4([1, 1, 1, 1]), dst),
            Err(Error::AddressFamily)
        );
    }
}
