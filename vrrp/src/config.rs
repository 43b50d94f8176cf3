//! Configuration: validated value types ([`VrId`], [`Priority`], [`AdvertInterval`]) and the
//! [`Config`] of one virtual router as the daemon hands it to [`crate::io::Speaker`].
//!
//! Values are checked when they are built, so a [`Config`] holding them is valid field by field;
//! [`Config::validate`] checks what spans fields (VIPs, peers, tracked conditions).

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

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

/// When to send gratuitous ARPs on becoming master (keepalived's `garp_master_*` settings).
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
    /// The virtual addresses.
    pub vips: Vec<Ipv4Addr>,
    /// Source address of the adverts (the primary address); `None` takes the interface's first
    /// IPv4 address that is not a VIP.
    pub source_addr: Option<Ipv4Addr>,
    /// Send adverts to these peers instead of the multicast group, and accept adverts from them only.
    pub unicast_peers: Vec<Ipv4Addr>,
    /// Program run on every state change with the new state (`MASTER`, `BACKUP`, `INIT`) as its
    /// argument.
    pub notify: Option<PathBuf>,
    /// Conditions that lower the priority while failed.
    pub tracked: Vec<TrackedCondition>,
    /// Gratuitous ARP schedule.
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
        vips: Vec<Ipv4Addr>,
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

    /// Checks what spans fields: an interface name the kernel accepts, 1–255 distinct VIPs,
    /// distinct unicast peers none of which is the source address, distinct tracked conditions with
    /// weights in 1–254.
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
        let vips: Vec<IpAddr> = self.vips.iter().copied().map(IpAddr::V4).collect();
        check_vips(&vips)?;
        let mut peers = HashSet::new();
        for peer in &self.unicast_peers {
            if !peers.insert(peer) || Some(*peer) == self.source_addr {
                return Err(ConfigError::Peer(IpAddr::V4(*peer)));
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

/// Checks a VIP list: 1–255 addresses, no duplicates, one family.
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
        if vip.is_ipv4() != vips[0].is_ipv4() {
            return Err(ConfigError::AddressFamily(*vip));
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
        let vip = Ipv4Addr::new(198, 18, 0, 100);
        let mut c = Config::new(
            VrId::new(51).unwrap(),
            Priority::new(150).unwrap(),
            AdvertInterval::DEFAULT,
            "eth0",
            vec![vip],
        );
        assert_eq!(c.validate(), Ok(()));
        c.vips.push(vip);
        assert_eq!(
            c.validate(),
            Err(ConfigError::DuplicateVip(IpAddr::V4(vip)))
        );
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
}
