//! VRRPv3 (RFC 5798) for lbd: the virtual-IP failover between two load-balancer nodes.
//!
//! Modules, from the bytes up:
//! - [`wire`]: the VRRPv3 codec (checked [`wire::Packet`] views, [`wire::Repr`]), with the IPv4
//!   datagram around it ([`wire::ipv4`]) and gratuitous ARP frames ([`wire::arp`]);
//! - [`validate`]: the receive checks of RFC 5798 §7.1, each drop reason counted in
//!   [`validate::Counters`];
//! - [`fsm`]: the sans-IO state machine ([`fsm::Router`]) under a clock the caller supplies;
//! - [`config`]: validated settings ([`Config`], [`VrId`], [`Priority`], [`AdvertInterval`]);
//! - [`track`]: tracked conditions that lower the priority ([`track::Tracker`]);
//! - [`io`]: the thin tokio layer (raw socket, multicast, GARP, VIPs via netlink, notify program)
//!   and its driver ([`io::Speaker`]).
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
