//! Active-active behind ECMP: which VIPs this node asks the routers for, and why.
//!
//! lbd does not speak BGP. It puts a `/32` route for each VIP it can serve into a routing table
//! of its own (`[announce] table`, protocol [`ROUTE_PROTOCOL`]), which nothing routes by; BIRD's
//! `protocol kernel` learns that table and exports the routes over BGP (see
//! `packaging/bird/`). So a route is there exactly while lbd wants traffic for the VIP: a
//! withdrawal is one netlink message, BIRD sends it on within milliseconds, and the VIP stays on
//! the node (on `lo`) so that what still arrives during a drain is served.
//!
//! [`decide`] is the rule, sans-IO: a VIP is announced when the node is not drained, its data path is the one configured (an XDP node that fell back to the proxy
//! cannot take flows that start on another node), and at least one of the VIP's services has a
//! backend in rotation.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

/// The route protocol number of lbd's routes (`ip route ... proto 201`), so that lbd finds its
/// own routes again after a crash and BIRD can tell them apart.
pub const ROUTE_PROTOCOL: u8 = 201;

/// Why a VIP is or is not announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Announced: it has a backend in rotation and the node serves.
    Serving,
    /// Withdrawn: `lbctl node drain`.
    NodeDrained,
    /// Withdrawn: no service on the VIP has a backend in rotation.
    NoBackend,
    /// Withdrawn: XDP is configured but not attached (the proxy cannot take mid-flow packets).
    DatapathDown,
}

impl Reason {
    /// For logs and `lbctl status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Serving => "serving",
            Reason::NodeDrained => "node drained (lbctl node drain)",
            Reason::NoBackend => "no backend in rotation",
            Reason::DatapathDown => {
                "XDP not attached (the proxy cannot take flows from other nodes)"
            }
        }
    }
}

/// What the rule looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// `lbctl node drain` is in effect.
    pub drained: bool,
    /// The data path is the one configured.
    pub datapath_ok: bool,
    /// Each VIP, and whether any of its services has a backend in rotation.
    pub vips: BTreeMap<IpAddr, bool>,
}

/// Whether each VIP is announced, and why.
pub fn decide(inputs: &Inputs) -> BTreeMap<IpAddr, Reason> {
    inputs
        .vips
        .iter()
        .map(|(vip, in_rotation)| {
            let reason = if inputs.drained {
                Reason::NodeDrained
            } else if !inputs.datapath_ok {
                Reason::DatapathDown
            } else if !in_rotation {
                Reason::NoBackend
            } else {
                Reason::Serving
            };
            (*vip, reason)
        })
        .collect()
}

/// The VIPs to announce of a decision.
pub fn announced(decision: &BTreeMap<IpAddr, Reason>) -> Vec<IpAddr> {
    decision
        .iter()
        .filter(|(_, r)| **r == Reason::Serving)
        .map(|(vip, _)| *vip)
        .collect()
}

/// The announcement in the status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AnnounceStatus {
    /// The routing table lbd's routes are in.
    pub table: u32,
    /// `lbctl node drain` in effect.
    pub drained: bool,
    /// Each VIP.
    pub vips: Vec<VipAnnounce>,
}

/// One VIP's announcement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VipAnnounce {
    /// The VIP.
    pub vip: String,
    /// Its route is in the table.
    pub announced: bool,
    /// Why (or why not).
    pub reason: Reason,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([198, 18, 0, n])
    }

    #[test]
    fn a_vip_is_announced_only_while_it_can_be_served() {
        let mut inputs = Inputs {
            drained: false,
            datapath_ok: true,
            vips: BTreeMap::from([(ip(100), true), (ip(101), false)]),
        };
        let d = decide(&inputs);
        assert_eq!(d[&ip(100)], Reason::Serving);
        assert_eq!(d[&ip(101)], Reason::NoBackend);
        assert_eq!(announced(&d), vec![ip(100)]);

        inputs.datapath_ok = false;
        assert_eq!(decide(&inputs)[&ip(100)], Reason::DatapathDown);
        inputs.drained = true;
        assert_eq!(
            decide(&inputs)[&ip(100)],
            Reason::NodeDrained,
            "drain says it first"
        );
    }

    #[test]
    fn reasons_serialize_as_words() {
        assert_eq!(
            serde_json::to_string(&Reason::NoBackend).expect("json"),
            "\"no_backend\""
        );
    }
}
