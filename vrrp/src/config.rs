//! Configuration: validated value types ([`VrId`], [`Priority`], [`AdvertInterval`]) and the
//! [`Config`] of one virtual router as the daemon hands it to [`crate::io::Speaker`].
//!
//! Values are checked when they are built, so a [`Config`] holding them is valid field by field;
//! [`Config::validate`] checks what spans fields (VIPs, peers, tracked conditions).

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::wire::AddressFamily;

/// A Virtual Router Identifier, 1–255 (RFC 5798 §5.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VrId(u8);

impl VrId {
    /// Checks that `vrid` is in 1–255.
    ///
    /// # Errors
    /// [`ConfigError::VrId`] for 0.
    pub const fn new(vrid: u8) -> Result<Self, ConfigError> {
        if vrid == 0 {
            Err(ConfigError::VrId(vrid))
        } else {
            Ok(Self(vrid))
        }
    }

    /// The identifier.
    #[must_use]
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for VrId {
    type Error = ConfigError;

    fn try_from(vrid: u8) -> Result<Self, ConfigError> {
        Self::new(vrid)
    }
}

impl fmt::Display for VrId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A configured priority, 1–255 (RFC 5798 §5.2.4): 255 is the address owner, 1–254 a router that
/// may back up; 0 is reserved for the advert a master sends when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Priority(u8);

impl Priority {
    /// The priority of the router that owns the virtual addresses.
    pub const OWNER: Self = Self(255);
    /// The default priority of a backup router (§5.2.4).
    pub const DEFAULT: Self = Self(100);

    /// Checks that `priority` is in 1–255.
    ///
    /// # Errors
    /// [`ConfigError::Priority`] for 0.
    pub const fn new(priority: u8) -> Result<Self, ConfigError> {
        if priority == 0 {
            Err(ConfigError::Priority(priority))
        } else {
            Ok(Self(priority))
        }
    }

    /// The priority.
    #[must_use]
    pub const fn get(self) -> u8 {
        self.0
    }

    /// Whether this is the address owner's priority, 255.
    #[must_use]
    pub const fn is_owner(self) -> bool {
        self.0 == 255
    }
}

impl Default for Priority {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl TryFrom<u8> for Priority {
    type Error = ConfigError;

    fn try_from(priority: u8) -> Result<Self, ConfigError> {
        Self::new(priority)
    }
}

/// The advertisement interval. VRRPv3 carries it in centiseconds in 12 bits (RFC 5798 §5.2.7), so
/// it is 10 ms – 40.95 s in steps of 10 ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdvertInterval(u16);

impl AdvertInterval {
    /// The default interval, 1 s (§5.2.7).
    pub const DEFAULT: Self = Self(100);

    /// Checks that `centis` is in 1–4095.
    ///
    /// # Errors
    /// [`ConfigError::AdvertIntervalCentis`] outside that range.
    pub const fn from_centis(centis: u16) -> Result<Self, ConfigError> {
        if centis == 0 || centis > crate::wire::MAX_ADVER_INT_MAX {
            Err(ConfigError::AdvertIntervalCentis(centis))
        } else {
            Ok(Self(centis))
        }
    }

    /// Converts a configured interval in milliseconds; it must be a multiple of 10 in 10–40950.
    ///
    /// # Errors
    /// [`ConfigError::AdvertIntervalRange`] or [`ConfigError::AdvertIntervalGranularity`].
    pub fn from_millis(millis: u64) -> Result<Self, ConfigError> {
        if !(10..=40_950).contains(&millis) {
            return Err(ConfigError::AdvertIntervalRange(millis));
        }
        if !millis.is_multiple_of(10) {
            return Err(ConfigError::AdvertIntervalGranularity(millis));
        }
        u16::try_from(millis / 10)
            .map_err(|_| ConfigError::AdvertIntervalRange(millis))
            .and_then(Self::from_centis)
    }

    /// The interval in centiseconds, as carried in Max Adver Int.
    #[must_use]
    pub const fn centis(self) -> u16 {
        self.0
    }

    /// The interval in milliseconds.
    #[must_use]
    pub const fn millis(self) -> u64 {
        self.0 as u64 * 10
    }

    /// The interval as a [`Duration`].
    #[must_use]
    pub const fn as_duration(self) -> Duration {
        Duration::from_millis(self.millis())
    }
}

impl Default for AdvertInterval {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// When to send gratuitous ARPs (IPv4 VIPs) or unsolicited Neighbour Advertisements (IPv6 VIPs) on
/// becoming master (keepalived's `garp_master_*` settings, which it applies to both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GarpConfig {
    /// Frames per VIP in each burst (keepalived `garp_master_repeat`, default 5). 0 sends none.
    pub count: u32,
    /// Gap between two frames of a burst (keepalived `garp_interval`, default 0: back to back).
    pub interval: Duration,
    /// Delay of the second burst after becoming master (keepalived `garp_master_delay`, default
    /// 5 s); `None` sends one burst only.
    pub repeat_delay: Option<Duration>,
}

impl Default for GarpConfig {
    fn default() -> Self {
        Self {
            count: 5,
            interval: Duration::ZERO,
            repeat_delay: Some(Duration::from_secs(5)),
        }
    }
}

/// A named condition the daemon tracks (a backend pool, a link): while it is failed, its weight is
/// taken off the priority (see [`crate::track`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrackedCondition {
    /// Name, unique within the router.
    pub name: String,
    /// Priority taken off while the condition is failed, 1–254.
    pub weight: u8,
}

/// Everything one VRRP speaker needs: the protocol settings, the interface, and the daemon's hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Virtual router ID.
    pub vrid: VrId,
    /// Configured priority (255: address owner).
    pub priority: Priority,
    /// Advertisement_Interval of this router.
    pub advert_interval: AdvertInterval,
    /// Whether a higher-priority backup preempts a lower-priority master (RFC 5798 Preempt_Mode).
    pub preempt: bool,
    /// With preemption, how long a lower-priority master is tolerated after it is first heard
    /// (keepalived `preempt_delay`); zero preempts at once.
    pub preempt_delay: Duration,
    /// RFC 5798 Accept_Mode: whether a non-owner master accepts packets addressed to the VIPs.
    /// Reported only; the data path (XDP or the proxy) decides what it serves.
    pub accept_mode: bool,
    /// Interface the adverts are sent and received on, where the VIPs are added.
    pub interface: String,
    /// The virtual addresses, all IPv4 or all IPv6: an IPv4 and an IPv6 virtual router are
    /// separate instances (RFC 5798 §5.1). The family of the VIPs is the router's
    /// ([`Config::family`]): VRRP over IPv4 to 224.0.0.18 or over IPv6 to ff02::12.
    pub vips: Vec<IpAddr>,
    /// Source address of the adverts (the primary address), of the VIPs' family; `None` takes the
    /// interface's first IPv4 address that is not a VIP, or for IPv6 its link-local address
    /// (RFC 5798 §5.1.2.1).
    pub source_addr: Option<IpAddr>,
    /// Send adverts to these peers instead of the multicast group, and accept adverts from them
    /// only; of the VIPs' family (IPv6 link-local peers are reached on the interface).
    pub unicast_peers: Vec<IpAddr>,
    /// Program run on every state change with the new state (`MASTER`, `BACKUP`, `INIT`) as its
    /// argument.
    pub notify: Option<PathBuf>,
    /// Conditions that lower the priority while failed.
    pub tracked: Vec<TrackedCondition>,
    /// Gratuitous ARP / unsolicited Neighbour Advertisement schedule.
    pub garp: GarpConfig,
}

impl Config {
    /// A configuration with the given identity and the defaults elsewhere: preemption on without
    /// delay, accept mode off, multicast, source address from the interface, no notify program,
    /// nothing tracked, keepalived's GARP schedule.
    #[must_use]
    pub fn new(
        vrid: VrId,
        priority: Priority,
        advert_interval: AdvertInterval,
        interface: impl Into<String>,
        vips: Vec<IpAddr>,
    ) -> Self {
        Self {
            vrid,
            priority,
            advert_interval,
            preempt: true,
            preempt_delay: Duration::ZERO,
            accept_mode: false,
            interface: interface.into(),
            vips,
            source_addr: None,
            unicast_peers: Vec::new(),
            notify: None,
            tracked: Vec::new(),
            garp: GarpConfig::default(),
        }
    }

    /// The address family of the router: that of its VIPs (IPv4 when there are none, which
    /// [`validate`](Self::validate) rejects).
    #[must_use]
    pub fn family(&self) -> AddressFamily {
        self.vips
            .first()
            .map_or(AddressFamily::Ipv4, AddressFamily::of)
    }

    /// Checks what spans fields: an interface name the kernel accepts, 1–255 distinct VIPs of one
    /// family, a source address and distinct unicast peers of that family, none of the peers the
    /// source address, distinct tracked conditions with weights in 1–254.
    ///
    /// # Errors
    /// The first problem found, as a [`ConfigError`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interface.is_empty()
            || self.interface.len() >= libc::IFNAMSIZ
            || self.interface.contains(['/', ' ', '\0'])
        {
            return Err(ConfigError::Interface(self.interface.clone()));
        }
        check_vips(&self.vips)?;
        let family = self.family();
        if let Some(addr) = self.source_addr.filter(|a| AddressFamily::of(a) != family) {
            return Err(ConfigError::SourceFamily { addr, family });
        }
        let mut peers = HashSet::new();
        for peer in &self.unicast_peers {
            if AddressFamily::of(peer) != family {
                return Err(ConfigError::PeerFamily {
                    peer: *peer,
                    family,
                });
            }
            if !peers.insert(peer) || Some(*peer) == self.source_addr {
                return Err(ConfigError::Peer(*peer));
            }
        }
        let mut names = HashSet::new();
        for cond in &self.tracked {
            if !names.insert(cond.name.as_str()) {
                return Err(ConfigError::DuplicateCondition(cond.name.clone()));
            }
            if cond.weight == 0 || cond.weight == 255 {
                return Err(ConfigError::ConditionWeight {
                    name: cond.name.clone(),
                    weight: cond.weight,
                });
            }
        }
        Ok(())
    }
}

/// Checks a VIP list: 1–255 addresses, no duplicates, one family (RFC 5798 §5.1: an IPv4 and an
/// IPv6 virtual router are separate instances).
pub(crate) fn check_vips(vips: &[IpAddr]) -> Result<(), ConfigError> {
    if vips.is_empty() {
        return Err(ConfigError::NoVips);
    }
    if vips.len() > crate::wire::MAX_ADDRESSES {
        return Err(ConfigError::TooManyVips(vips.len()));
    }
    let mut seen = HashSet::new();
    for vip in vips {
        if !seen.insert(vip) {
            return Err(ConfigError::DuplicateVip(*vip));
        }
        let family = AddressFamily::of(&vips[0]);
        if AddressFamily::of(vip) != family {
            return Err(ConfigError::MixedVips { vip: *vip, family });
        }
    }
    Ok(())
}

/// Why a configuration value is not acceptable. Messages name the value; the daemon prefixes the
/// key path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Virtual router ID 0.
    #[error("virtual router id {0} is out of range 1..=255")]
    VrId(u8),
    /// Priority 0.
    #[error("priority {0} is out of range 1..=255 (0 is reserved for a master that resigns)")]
    Priority(u8),
    /// Interval outside 10–40950 ms.
    #[error("advert interval {0} ms is out of range 10..=40950 ms")]
    AdvertIntervalRange(u64),
    /// Interval not a multiple of 10 ms.
    #[error("advert interval {0} ms is not a multiple of 10 ms (VRRPv3 carries centiseconds)")]
    AdvertIntervalGranularity(u64),
    /// Interval outside 1–4095 cs.
    #[error("advert interval {0} cs is out of range 1..=4095 cs")]
    AdvertIntervalCentis(u16),
    /// No virtual address.
    #[error("no virtual address configured")]
    NoVips,
    /// More than 255 virtual addresses.
    #[error("{0} virtual addresses, at most 255 fit in an advert")]
    TooManyVips(usize),
    /// A virtual address listed twice.
    #[error("virtual address {0} is listed twice")]
    DuplicateVip(IpAddr),
    /// An address of another family than the router's.
    #[error("address {0} is not of the router's address family")]
    AddressFamily(IpAddr),
    /// VIPs of both families in one router.
    #[error(
        "virtual address {vip} is not {family} like the first one; an IPv4 and an IPv6 virtual \
         router are separate vrrp instances (RFC 5798 §5.1)"
    )]
    MixedVips {
        /// The first VIP of the other family.
        vip: IpAddr,
        /// The family of the first VIP, the router's.
        family: AddressFamily,
    },
    /// A source address of the other family than the VIPs.
    #[error("source address {addr} is not {family} like the virtual addresses")]
    SourceFamily {
        /// The configured source address.
        addr: IpAddr,
        /// The family of the VIPs.
        family: AddressFamily,
    },
    /// A unicast peer of the other family than the VIPs.
    #[error("unicast peer {peer} is not {family} like the virtual addresses")]
    PeerFamily {
        /// The peer.
        peer: IpAddr,
        /// The family of the VIPs.
        family: AddressFamily,
    },
    /// A bad interface name.
    #[error("interface name {0:?} is not a valid linux interface name")]
    Interface(String),
    /// A unicast peer listed twice or equal to the source address.
    #[error("unicast peer {0} is listed twice or is the source address")]
    Peer(IpAddr),
    /// A tracked condition listed twice.
    #[error("tracked condition {0:?} is listed twice")]
    DuplicateCondition(String),
    /// A tracked condition weight outside 1–254.
    #[error("tracked condition {name:?} has weight {weight}, expected 1..=254")]
    ConditionWeight {
        /// The condition.
        name: String,
        /// Its weight.
        weight: u8,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_from_millis() {
        assert_eq!(AdvertInterval::from_millis(100).unwrap().centis(), 10);
        assert_eq!(AdvertInterval::from_millis(1000).unwrap().centis(), 100);
        assert_eq!(AdvertInterval::from_millis(40_950).unwrap().centis(), 4095);
        assert_eq!(
            AdvertInterval::from_millis(105),
            Err(ConfigError::AdvertIntervalGranularity(105))
        );
        assert_eq!(
            AdvertInterval::from_millis(0),
            Err(ConfigError::AdvertIntervalRange(0))
        );
        assert_eq!(
            AdvertInterval::from_millis(40_960),
            Err(ConfigError::AdvertIntervalRange(40_960))
        );
        assert_eq!(
            AdvertInterval::from_millis(250).unwrap().as_duration(),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn validate_config() {
        let vip = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 100));
        let mut c = Config::new(
            VrId::new(51).unwrap(),
            Priority::new(150).unwrap(),
            AdvertInterval::DEFAULT,
            "eth0",
            vec![vip],
        );
        assert_eq!(c.validate(), Ok(()));
        c.vips.push(vip);
        assert_eq!(c.validate(), Err(ConfigError::DuplicateVip(vip)));
        c.vips.pop();
        c.tracked.push(TrackedCondition {
            name: "pool".into(),
            weight: 0,
        });
        assert!(matches!(
            c.validate(),
            Err(ConfigError::ConditionWeight { .. })
        ));
        c.tracked.clear();
        c.interface = "a-name-far-too-long".into();
        assert!(matches!(c.validate(), Err(ConfigError::Interface(_))));
        c.interface = "eth0".into();
        c.vips.clear();
        assert_eq!(c.validate(), Err(ConfigError::NoVips));
        assert_eq!(VrId::new(0), Err(ConfigError::VrId(0)));
        assert_eq!(Priority::new(0), Err(ConfigError::Priority(0)));
    }

    #[test]
    fn one_family_per_router() {
        let v6: IpAddr = "2001:db8::100".parse().unwrap();
        let v4: IpAddr = "198.18.0.100".parse().unwrap();
        let mut c = Config::new(
            VrId::new(51).unwrap(),
            Priority::DEFAULT,
            AdvertInterval::DEFAULT,
            "eth0",
            vec![v6],
        );
        assert_eq!(c.family(), AddressFamily::Ipv6);
        assert_eq!(c.validate(), Ok(()));
        c.unicast_peers = vec!["fe80::2".parse().unwrap()];
        c.source_addr = Some("fe80::1".parse().unwrap());
        assert_eq!(c.validate(), Ok(()));
        c.vips.push(v4);
        let err = c.validate().unwrap_err();
        assert_eq!(
            err,
            ConfigError::MixedVips {
                vip: v4,
                family: AddressFamily::Ipv6
            }
        );
        assert!(err.to_string().contains("separate vrrp instances"), "{err}");
        c.vips.pop();
        c.unicast_peers.push("198.18.0.3".parse().unwrap());
        assert!(matches!(
            c.validate(),
            Err(ConfigError::PeerFamily {
                family: AddressFamily::Ipv6,
                ..
            })
        ));
        c.unicast_peers.pop();
        c.source_addr = Some(v4);
        assert_eq!(
            c.validate(),
            Err(ConfigError::SourceFamily {
                addr: v4,
                family: AddressFamily::Ipv6
            })
        );
    }
}
