//! Receive checks of RFC 5798 §7.1 (and keepalived's stricter ones): every advert that fails one is
//! dropped with a distinct [`DropReason`] and counted in [`Counters`]; nothing here panics.
//!
//! The checks run in this order; the first failure is the reason:
//! 1. the IPv4 header is sound and carries protocol 112, unfragmented ([`DropReason::IpHeader`]);
//!    over IPv6 the kernel has checked the header and [`parse_ipv6`] starts at 2;
//! 2. TTL / hop limit is 255 ([`DropReason::Ttl`]);
//! 3. the VRRP header is whole ([`DropReason::Truncated`]), version 3 ([`DropReason::Version`]),
//!    type 1 ([`DropReason::Type`]), its length is 8 + 4 × count (8 + 16 × count over IPv6,
//!    [`DropReason::Length`]) and the checksum over the pseudo-header verifies
//!    ([`DropReason::Checksum`]);
//! 4. the advert is of the router's address family ([`DropReason::AddressFamily`]) and the VRID is
//!    ours ([`DropReason::Vrid`]);
//! 5. the sender is not this router ([`DropReason::OwnAdvert`]) and, with unicast peers, is one of
//!    them ([`DropReason::UnknownSource`]);
//! 6. Max Adver Int is not 0 ([`DropReason::ZeroInterval`]);
//! 7. the address list equals the configured VIP set ([`DropReason::AddressList`]);
//! 8. this router is not the address owner, priority 255 ([`DropReason::LocalOwner`]).

use std::net::{IpAddr, Ipv6Addr};

use crate::wire::{self, AddressFamily, Addresses, Repr as AdvertRepr, ipv4};

/// Why a received advert was dropped. Each has its counter in [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Malformed IPv4 header, bad header checksum, another protocol, or a fragment.
    IpHeader,
    /// IPv4 TTL or IPv6 Hop Limit other than 255 (§7.1): the advert crossed a router. Over IPv6
    /// also an advert whose hop limit the kernel did not report.
    Ttl,
    /// Shorter than the VRRP header.
    Truncated,
    /// VRRP version other than 3 (§7.1), e.g. a VRRPv2 speaker.
    Version,
    /// VRRP type other than 1, ADVERTISEMENT (§5.2.2).
    Type,
    /// Length not consistent with the address count (§7.1 "valid length"; keepalived: exactly
    /// 8 + 4 × count).
    Length,
    /// Bad VRRP checksum (§7.1).
    Checksum,
    /// Addresses of another family than the router's.
    AddressFamily,
    /// Another virtual router ID (§7.1).
    Vrid,
    /// Sent from this router's own address (looped back).
    OwnAdvert,
    /// Unicast mode and the sender is not a configured peer.
    UnknownSource,
    /// Max Adver Int of 0.
    ZeroInterval,
    /// Address list different from the configured VIP set (§7.1; keepalived requires equality).
    AddressList,
    /// This router is the address owner (priority 255) and so ignores adverts (§7.1).
    LocalOwner,
}

impl DropReason {
    /// Every reason, in check order.
    pub const ALL: [Self; 14] = [
        Self::IpHeader,
        Self::Ttl,
        Self::Truncated,
        Self::Version,
        Self::Type,
        Self::Length,
        Self::Checksum,
        Self::AddressFamily,
        Self::Vrid,
        Self::OwnAdvert,
        Self::UnknownSource,
        Self::ZeroInterval,
        Self::AddressList,
        Self::LocalOwner,
    ];

    /// A short snake_case name, for logs and metric labels.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::IpHeader => "ip_header",
            Self::Ttl => "ttl",
            Self::Truncated => "truncated",
            Self::Version => "version",
            Self::Type => "type",
            Self::Length => "length",
            Self::Checksum => "checksum",
            Self::AddressFamily => "address_family",
            Self::Vrid => "vrid",
            Self::OwnAdvert => "own_advert",
            Self::UnknownSource => "unknown_source",
            Self::ZeroInterval => "zero_interval",
            Self::AddressList => "address_list",
            Self::LocalOwner => "local_owner",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<wire::Error> for DropReason {
    fn from(err: wire::Error) -> Self {
        match err {
            wire::Error::Truncated => Self::Truncated,
            wire::Error::Version(_) => Self::Version,
            wire::Error::Type(_) => Self::Type,
            wire::Error::Length { .. } => Self::Length,
            wire::Error::Checksum => Self::Checksum,
            wire::Error::AddressFamily => Self::AddressFamily,
            // The rest concern the IP header (or only emit, which receive never meets).
            wire::Error::IpHeader
            | wire::Error::IpChecksum
            | wire::Error::Protocol(_)
            | wire::Error::Fragment
            | wire::Error::TooManyAddresses
            | wire::Error::AdverInt => Self::IpHeader,
        }
    }
}

/// Advert counters of one virtual router: what came in, what was accepted, what was dropped and
/// why, what went out. Read them through [`crate::fsm::Router::counters`] or the status snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Counters {
    /// Adverts handed to the router.
    pub received: u64,
    /// Adverts that passed every check.
    pub accepted: u64,
    /// Adverts this router sent (priority-0 ones included).
    pub sent: u64,
    /// Transitions to Master.
    pub became_master: u64,
    /// Transitions to Backup.
    pub became_backup: u64,
    /// Dropped: [`DropReason::IpHeader`].
    pub ip_header: u64,
    /// Dropped: [`DropReason::Ttl`].
    pub ttl: u64,
    /// Dropped: [`DropReason::Truncated`].
    pub truncated: u64,
    /// Dropped: [`DropReason::Version`].
    pub version: u64,
    /// Dropped: [`DropReason::Type`].
    pub msg_type: u64,
    /// Dropped: [`DropReason::Length`].
    pub length: u64,
    /// Dropped: [`DropReason::Checksum`].
    pub checksum: u64,
    /// Dropped: [`DropReason::AddressFamily`].
    pub address_family: u64,
    /// Dropped: [`DropReason::Vrid`].
    pub vrid: u64,
    /// Dropped: [`DropReason::OwnAdvert`].
    pub own_advert: u64,
    /// Dropped: [`DropReason::UnknownSource`].
    pub unknown_source: u64,
    /// Dropped: [`DropReason::ZeroInterval`].
    pub zero_interval: u64,
    /// Dropped: [`DropReason::AddressList`].
    pub address_list: u64,
    /// Dropped: [`DropReason::LocalOwner`].
    pub local_owner: u64,
}

impl Counters {
    /// The counter of `reason`.
    #[must_use]
    pub const fn dropped(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::IpHeader => self.ip_header,
            DropReason::Ttl => self.ttl,
            DropReason::Truncated => self.truncated,
            DropReason::Version => self.version,
            DropReason::Type => self.msg_type,
            DropReason::Length => self.length,
            DropReason::Checksum => self.checksum,
            DropReason::AddressFamily => self.address_family,
            DropReason::Vrid => self.vrid,
            DropReason::OwnAdvert => self.own_advert,
            DropReason::UnknownSource => self.unknown_source,
            DropReason::ZeroInterval => self.zero_interval,
            DropReason::AddressList => self.address_list,
            DropReason::LocalOwner => self.local_owner,
        }
    }

    /// Dropped adverts, all reasons together.
    #[must_use]
    pub fn total_dropped(&self) -> u64 {
        DropReason::ALL.iter().map(|r| self.dropped(*r)).sum()
    }

    /// Counts one drop for `reason`.
    pub(crate) const fn count_drop(&mut self, reason: DropReason) {
        let c = match reason {
            DropReason::IpHeader => &mut self.ip_header,
            DropReason::Ttl => &mut self.ttl,
            DropReason::Truncated => &mut self.truncated,
            DropReason::Version => &mut self.version,
            DropReason::Type => &mut self.msg_type,
            DropReason::Length => &mut self.length,
            DropReason::Checksum => &mut self.checksum,
            DropReason::AddressFamily => &mut self.address_family,
            DropReason::Vrid => &mut self.vrid,
            DropReason::OwnAdvert => &mut self.own_advert,
            DropReason::UnknownSource => &mut self.unknown_source,
            DropReason::ZeroInterval => &mut self.zero_interval,
            DropReason::AddressList => &mut self.address_list,
            DropReason::LocalOwner => &mut self.local_owner,
        };
        *c = c.saturating_add(1);
    }
}

/// Checks 1–3: parses a whole IPv4 datagram as read from a raw socket into its source address and
/// advert.
///
/// # Errors
/// The reason of the first failed check.
pub fn parse_ipv4(datagram: &[u8]) -> Result<(IpAddr, AdvertRepr), DropReason> {
    let ip = ipv4::Packet::new_checked(datagram).map_err(|_| DropReason::IpHeader)?;
    if !ip.verify_checksum()
        || ip.protocol() != wire::IP_PROTOCOL
        || ip.more_frags()
        || ip.frag_offset() != 0
    {
        return Err(DropReason::IpHeader);
    }
    // §7.1: MUST verify that the IPv4 TTL is 255.
    if ip.ttl() != wire::TTL {
        return Err(DropReason::Ttl);
    }
    let (src, dst) = (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()));
    let packet = wire::Packet::new_unchecked(ip.payload(), AddressFamily::Ipv4);
    let advert = AdvertRepr::parse(&packet, src, dst)?;
    Ok((src, advert))
}

/// Checks 2–3 for VRRP over IPv6. A raw IPv6 socket hands over the VRRP message only; the
/// source, destination and hop limit come from `recvmsg` (the hop limit from `IPV6_HOPLIMIT`
/// ancillary data, `None` when it was missing).
///
/// The hop limit must be 255 when the advert was sent to a multicast group (§7.1). To a unicast
/// address it is not checked, as keepalived does not check it there: keepalived 2.2.7 sends
/// unicast IPv6 adverts with the default hop limit (64, see `keepalived-v3-ipv6-unicast.pcap`);
/// the sender must then be a configured peer (check 5).
///
/// # Errors
/// The reason of the first failed check.
pub fn parse_ipv6(
    message: &[u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: Option<u8>,
) -> Result<(IpAddr, AdvertRepr), DropReason> {
    // §7.1: MUST verify that the IPv6 Hop Limit is 255 (multicast; see above for unicast).
    if dst.is_multicast() && hop_limit != Some(wire::TTL) {
        return Err(DropReason::Ttl);
    }
    let (src, dst) = (IpAddr::V6(src), IpAddr::V6(dst));
    let packet = wire::Packet::new_unchecked(message, AddressFamily::Ipv6);
    // §5.2.8: the checksum covers the IPv6 pseudo-header; §7.1: MUST verify it.
    let advert = AdvertRepr::parse(&packet, src, dst)?;
    Ok((src, advert))
}

/// What the checks 4–8 compare against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expect<'a> {
    pub vrid: u8,
    pub own_address: IpAddr,
    pub unicast_peers: &'a [IpAddr],
    pub vips: &'a Addresses,
    pub owner: bool,
}

/// Checks 4–8 on an advert that is well-formed.
pub(crate) fn check_advert(
    expect: &Expect<'_>,
    src: IpAddr,
    advert: &AdvertRepr,
) -> Result<(), DropReason> {
    if advert.addresses.family() != expect.vips.family()
        || AddressFamily::of(&src) != expect.vips.family()
    {
        return Err(DropReason::AddressFamily);
    }
    // §7.1: MUST verify that the VRID is configured on the receiving interface.
    if advert.vrid != expect.vrid {
        return Err(DropReason::Vrid);
    }
    if src == expect.own_address {
        return Err(DropReason::OwnAdvert);
    }
    if !expect.unicast_peers.is_empty() && !expect.unicast_peers.contains(&src) {
        return Err(DropReason::UnknownSource);
    }
    if advert.max_adver_int == 0 {
        return Err(DropReason::ZeroInterval);
    }
    // §7.1: MAY verify that the address list is the configured one; keepalived requires it.
    if !advert.addresses.same_set(expect.vips) {
        return Err(DropReason::AddressList);
    }
    // §7.1: MUST verify that the local router is not the address owner.
    if expect.owner {
        return Err(DropReason::LocalOwner);
    }
    Ok(())
}
