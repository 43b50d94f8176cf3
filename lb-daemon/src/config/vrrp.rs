//! `[vrrp]`: the VRRP speaker's settings, validated into a [`vrrp::Config`], and the names of
//! the conditions lbd tracks for it.

use std::{net::Ipv4Addr, path::PathBuf};

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
    ) -> Result<vrrp::Config, ConfigError> {
        let byte = |key: &str, v: i64, lo: i64, hi: i64| -> Result<u8, ConfigError> {
            if (lo..=hi).contains(&v) {
                Ok(v as u8)
            } else {
                Err(err(
                    format!("vrrp.{key}"),
                    format!("{v} is out of range (allowed: {lo} to {hi})"),
                ))
            }
        };
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
        let ip_list = |key: &str, list: &[String]| -> Result<Vec<Ipv4Addr>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(i, t)| {
                    t.parse::<Ipv4Addr>().map_err(|_| {
                        err(
                            format!("vrrp.{key}[{i}]"),
                            format!("{t:?} is not an IPv4 address"),
                        )
                    })
                })
                .collect()
        };
        let vips = match &self.vips {
            Some(list) => ip_list("vips", list)?,
            None => {
                // Default: the VIPs of the services, each once.
                let mut v: Vec<Ipv4Addr> = services.iter().map(|s| *s.vip.ip()).collect();
                v.sort();
                v.dedup();
                v
            }
        };
        let mut c = vrrp::Config::new(
            vrid,
            priority,
            interval,
            self.interface
                .clone()
                .unwrap_or_else(|| daemon.interface.clone()),
            vips,
        );
        c.preempt = self.preempt.unwrap_or(true);
        c.preempt_delay = std::time::Duration::from_millis(delay as u64);
        c.unicast_peers = ip_list("unicast_peers", &self.unicast_peers)?;
        c.notify = self.notify;
        if let Some(w) = self.track_no_backend {
            c.tracked.push(vrrp::TrackedCondition {
                name: TRACK_NO_BACKEND.into(),
                weight: byte("track_no_backend", w, 1, 254)?,
            });
        }
        if let Some(w) = self.track_datapath {
            c.tracked.push(vrrp::TrackedCondition {
                name: TRACK_DATAPATH.into(),
                weight: byte("track_datapath", w, 1, 254)?,
            });
        }
        for (ifname, w) in &self.track_interfaces {
            if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ']) {
                return Err(err(
                    "vrrp.track_interfaces",
                    format!(
                        "{ifname:?} is not an interface name (1 to 15 characters, no '/' or space)"
                    ),
                ));
            }
            c.tracked.push(vrrp::TrackedCondition {
                name: format!("{TRACK_INTERFACE_PREFIX}{ifname}"),
                weight: byte(&format!("track_interfaces.{ifname}"), *w, 1, 254)?,
            });
        }
        c.validate().map_err(|e| {
            let key = match e {
                vrrp::ConfigError::NoVips
                | vrrp::ConfigError::DuplicateVip(_)
                | vrrp::ConfigError::TooManyVips(_) => "vrrp.vips",
                vrrp::ConfigError::Peer(_) => "vrrp.unicast_peers",
                vrrp::ConfigError::Interface(_) => "vrrp.interface",
                _ => "vrrp",
            };
            err(key, e.to_string())
        })?;
        Ok(c)
    }
}
