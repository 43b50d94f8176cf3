//! `[vrrp]`: the VRRP speaker's settings, validated into one [`vrrp::Config`] per address
//! family, and the names of the conditions lbd tracks for it.
//!
//! RFC 5798 keeps IPv4 and IPv6 apart: a virtual router has addresses of one family, and its
//! adverts go over that family (224.0.0.18 or ff02::12). So `[vrrp]` with VIPs of both families
//! runs two virtual routers with the same VRID, priority and timers, one per family, as a
//! keepalived config would with two `vrrp_instance` blocks. Each elects on its own.

use std::{net::IpAddr, path::PathBuf};

use serde::Deserialize;

use super::{ConfigError, DaemonConfig, ServiceConfig, err};

/// Name of the VRRP tracked condition "a service has no backend in rotation".
pub const TRACK_NO_BACKEND: &str = "no_backend";
/// Name of the VRRP tracked condition "the XDP program is not attached to the interface".
pub const TRACK_DATAPATH: &str = "datapath";
/// Prefix of the VRRP tracked conditions "interface X is down".
pub const TRACK_INTERFACE_PREFIX: &str = "interface:";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVrrp {
    vrid: i64,
    priority: i64,
    advert_interval_ms: Option<i64>,
    preempt: Option<bool>,
    preempt_delay_ms: Option<i64>,
    interface: Option<String>,
    vips: Option<Vec<String>>,
    #[serde(default)]
    unicast_peers: Vec<String>,
    notify: Option<PathBuf>,
    track_no_backend: Option<i64>,
    track_datapath: Option<i64>,
    #[serde(default)]
    track_interfaces: std::collections::BTreeMap<String, i64>,
}

impl RawVrrp {
    pub(super) fn validate(
        self,
        daemon: &DaemonConfig,
        services: &[ServiceConfig],
    ) -> Result<Vec<vrrp::Config>, ConfigError> {
        let vrid = vrrp::VrId::new(byte("vrid", self.vrid, 1, 255)?)
            .map_err(|e| err("vrrp.vrid", e.to_string()))?;
        let priority = vrrp::Priority::new(byte("priority", self.priority, 1, 255)?)
            .map_err(|e| err("vrrp.priority", e.to_string()))?;
        let ms = self.advert_interval_ms.unwrap_or(1000);
        let interval = u64::try_from(ms)
            .map_err(|_| vrrp::ConfigError::AdvertIntervalRange(0))
            .and_then(vrrp::AdvertInterval::from_millis)
            .map_err(|e| err("vrrp.advert_interval_ms", format!("{ms}: {e}")))?;
        let delay = self.preempt_delay_ms.unwrap_or(0);
        if !(0..=3_600_000).contains(&delay) {
            return Err(err(
                "vrrp.preempt_delay_ms",
                format!("{delay} is out of range (allowed: 0 to 3600000)"),
            ));
        }
        let ip_list = |key: &str, list: &[String]| -> Result<Vec<IpAddr>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(i, t)| {
                    t.parse::<IpAddr>().map_err(|_| {
                        err(
                            format!("vrrp.{key}[{i}]"),
                            format!(
                                "{t:?} is not an IP address (e.g. 198.18.0.100 or 2001:db8::100)"
                            ),
                        )
                    })
                })
                .collect()
        };
        let vips = match &self.vips {
            Some(list) => ip_list("vips", list)?,
            None => {
                // Default: the VIPs of the services, each once.
                let mut v: Vec<IpAddr> = services.iter().map(|s| s.vip.ip()).collect();
                v.sort();
                v.dedup();
                v
            }
        };
        let peers = ip_list("unicast_peers", &self.unicast_peers)?;
        let (vips4, vips6): (Vec<IpAddr>, Vec<IpAddr>) = vips.iter().partition(|ip| ip.is_ipv4());
        let (peers4, peers6): (Vec<IpAddr>, Vec<IpAddr>) =
            peers.iter().partition(|ip| ip.is_ipv4());
        // One virtual router per family with VIPs; none at all is the speaker's own error below.
        let mut families: Vec<(Vec<IpAddr>, Vec<IpAddr>)> = [(vips4, peers4), (vips6, peers6)]
            .into_iter()
            .filter(|(v, _)| !v.is_empty())
            .collect();
        if families.is_empty() {
            families.push((Vec::new(), peers.clone()));
        }
        // Unicast per family: each router needs peers of its family, and a peer needs a router.
        if !peers.is_empty() {
            for (v, p) in &families {
                if let (Some(vip), true) = (v.first(), p.is_empty()) {
                    return Err(err(
                        "vrrp.unicast_peers",
                        format!(
                            "no {} peer for the {} VIPs (such as {vip}): unicast VRRP runs one virtual router per family, so give peers of each family the VIPs have",
                            super::family(*vip),
                            super::family(*vip)
                        ),
                    ));
                }
            }
            if let Some(stray) = peers
                .iter()
                .find(|p| !vips.iter().any(|v| v.is_ipv4() == p.is_ipv4()))
            {
                return Err(err(
                    "vrrp.unicast_peers",
                    format!("{stray} is {}, but no VIP is", super::family(*stray)),
                ));
            }
        }
        // The settings both families' routers share; each then gets its VIPs and peers.
        let mut base = vrrp::Config::new(
            vrid,
            priority,
            interval,
            self.interface
                .clone()
                .unwrap_or_else(|| daemon.interface.clone()),
            Vec::new(),
        );
        base.preempt = self.preempt.unwrap_or(true);
        base.preempt_delay = std::time::Duration::from_millis(delay as u64);
        base.notify = self.notify;
        base.tracked = tracked(
            self.track_no_backend,
            self.track_datapath,
            &self.track_interfaces,
        )?;
        families
            .into_iter()
            .map(|(vips, peers)| {
                let mut c = base.clone();
                c.vips = vips;
                c.unicast_peers = peers;
                checked(c)
            })
            .collect()
    }
}

/// `vrrp.KEY` as a byte in `lo..=hi`.
fn byte(key: &str, v: i64, lo: i64, hi: i64) -> Result<u8, ConfigError> {
    if (lo..=hi).contains(&v) {
        Ok(v as u8)
    } else {
        Err(err(
            format!("vrrp.{key}"),
            format!("{v} is out of range (allowed: {lo} to {hi})"),
        ))
    }
}

/// The tracked conditions and their weights.
fn tracked(
    no_backend: Option<i64>,
    datapath: Option<i64>,
    interfaces: &std::collections::BTreeMap<String, i64>,
) -> Result<Vec<vrrp::TrackedCondition>, ConfigError> {
    let mut out = Vec::new();
    if let Some(w) = no_backend {
        out.push(vrrp::TrackedCondition {
            name: TRACK_NO_BACKEND.into(),
            weight: byte("track_no_backend", w, 1, 254)?,
        });
    }
    if let Some(w) = datapath {
        out.push(vrrp::TrackedCondition {
            name: TRACK_DATAPATH.into(),
            weight: byte("track_datapath", w, 1, 254)?,
        });
    }
    for (ifname, w) in interfaces {
        if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ']) {
            return Err(err(
                "vrrp.track_interfaces",
                format!(
                    "{ifname:?} is not an interface name (1 to 15 characters, no '/' or space)"
                ),
            ));
        }
        out.push(vrrp::TrackedCondition {
            name: format!("{TRACK_INTERFACE_PREFIX}{ifname}"),
            weight: byte(&format!("track_interfaces.{ifname}"), *w, 1, 254)?,
        });
    }
    Ok(out)
}

/// One family's router, checked by the speaker's own rules, its errors under their keys.
fn checked(c: vrrp::Config) -> Result<vrrp::Config, ConfigError> {
    c.validate().map_err(|e| {
        let key = match e {
            vrrp::ConfigError::NoVips
            | vrrp::ConfigError::DuplicateVip(_)
            | vrrp::ConfigError::TooManyVips(_) => "vrrp.vips",
            vrrp::ConfigError::Peer(_) | vrrp::ConfigError::PeerFamily { .. } => {
                "vrrp.unicast_peers"
            }
            vrrp::ConfigError::MixedVips { .. } => "vrrp.vips",
            vrrp::ConfigError::Interface(_) => "vrrp.interface",
            _ => "vrrp",
        };
        err(key, e.to_string())
    })?;
    Ok(c)
}
