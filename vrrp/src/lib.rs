//! VRRPv3 (RFC 5798) for lbd: the virtual-IP failover between two load-balancer nodes.
//!
//! Modules, from the bytes up:
//! - [`wire`]: the VRRPv3 codec (checked [`wire::Packet`] views, [`wire::Repr`]) for IPv4 and
//!   IPv6, with the IP headers around it ([`wire::ipv4`], [`wire::ipv6`]), gratuitous ARP frames
//!   ([`wire::arp`]) and unsolicited Neighbour Advertisements ([`wire::ndisc`]);
//! - [`validate`]: the receive checks of RFC 5798 §7.1, each drop reason counted in
//!   [`validate::Counters`];
//! - [`fsm`]: the sans-IO state machine ([`fsm::Router`]) under a clock the caller supplies;
//! - [`config`]: validated settings ([`Config`], [`VrId`], [`Priority`], [`AdvertInterval`]);
//! - [`track`]: tracked conditions that lower the priority ([`track::Tracker`]);
//! - [`io`]: the thin tokio layer (raw IPv4 or IPv6 socket, multicast, GARP / Neighbour
//!   Advertisements, VIPs via netlink, notify program) and its driver ([`io::Speaker`]).
//!
//! One [`Config`] is one virtual router of one address family, that of its VIPs
//! ([`Config::family`]): RFC 5798 runs an IPv4 and an IPv6 virtual router as separate instances.
//!
//! The daemon builds a [`Config`], makes a [`Speaker`], reads [`Status`] snapshots from
//! [`Speaker::status`], flips tracked conditions through [`Speaker::tracker`], and awaits
//! [`Speaker::run`] until its shutdown token is cancelled.

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod config;
pub mod fsm;
pub mod io;
pub mod track;
pub mod validate;
pub mod wire;

pub use config::{
    AdvertInterval, Config, ConfigError, GarpConfig, Priority, TrackedCondition, VrId,
};
pub use fsm::{Action, LINGER, Router, RouterConfig, State};
pub use io::{HoldSwitch, Speaker, StandbySwitch, Status};
pub use track::Tracker;
pub use validate::{Counters, DropReason};
