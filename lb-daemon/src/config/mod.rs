//! The TOML config: a raw serde layer (`deny_unknown_fields`) converted into validated types.
//! The sections have their own files: [`health`] (a service's `health = {..}`), [`proxy`]
//! (`[proxy]`), [`vrrp`] (`[vrrp]`); this file holds `[daemon]`, `[[service]]` and the whole.
//! Every error names the key path, the value and what is allowed, e.g.
//! `service[0].backends[2].addr: "10.0.0.x" is not an address (expected e.g. 198.18.0.21, ...)`.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::Deserialize;

pub mod health;
pub mod proxy;
pub mod vrrp;

pub use health::HealthConfig;
pub use proxy::ProxyConfig;
pub use vrrp::{TRACK_DATAPATH, TRACK_INTERFACE_PREFIX, TRACK_NO_BACKEND};

use health::RawHealth;
use proxy::RawProxy;
use vrrp::RawVrrp;

/// Default control socket path.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/lbd/lbd.sock";
/// Default directory for runtime state.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/lbd";
/// Default metrics address.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9300";
/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 1000;

/// A config error: the key path and what is wrong with its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Key path, e.g. `service[0].backends[1].weight`.
    pub path: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

/// Which data path forwards packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Datapath {
    /// XDP in native (driver) mode, falling back to generic mode with the reason logged.
    Auto,
    /// XDP in native mode only: an error when the driver cannot run it.
    Xdp,
    /// XDP in generic (skb) mode only: for drivers without native XDP, and for tests.
    XdpGeneric,
    /// The userspace TCP/UDP proxy (no BPF needed).
    Userspace,
}

impl fmt::Display for Datapath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Datapath::Auto => "auto",
            Datapath::Xdp => "xdp",
            Datapath::XdpGeneric => "xdp-generic",
            Datapath::Userspace => "userspace",
        })
    }
}

/// Transport protocol of a service.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => lb_common::IPPROTO_TCP,
            Proto::Udp => lb_common::IPPROTO_UDP,
        }
    }

    /// The protocol of an IP protocol number (none for others).
    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            lb_common::IPPROTO_TCP => Some(Proto::Tcp),
            lb_common::IPPROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// How a service picks a backend for a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    /// Maglev consistent hashing on the 5-tuple.
    Maglev,
    /// Maglev on the client address only: one client, one backend (IPVS `sh`).
    Sh,
    /// Round robin (userspace data path only).
    Rr,
    /// Smooth weighted round robin (userspace data path only).
    Wrr,
    /// Least connections, weighted (userspace data path only).
    Lc,
}

impl Scheduler {
    /// Every scheduler, in the order of the docs.
    pub const ALL: [Scheduler; 5] = [
        Scheduler::Maglev,
        Scheduler::Sh,
        Scheduler::Rr,
        Scheduler::Wrr,
        Scheduler::Lc,
    ];

    /// The config name: `maglev`, `sh`, `rr`, `wrr`, `lc`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheduler::Maglev => "maglev",
            Scheduler::Sh => "sh",
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Lc => "lc",
        }
    }

    /// Whether the XDP data path can run it (it hashes; it keeps no per-backend state).
    pub fn xdp_capable(self) -> bool {
        matches!(self, Scheduler::Maglev | Scheduler::Sh)
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The whole validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[daemon]`.
    pub daemon: DaemonConfig,
    /// `[vrrp]`, when this node shares its VIPs with another through VRRP: one virtual router
    /// per address family of the VIPs (IPv4 first), none without the section.
    pub vrrp: Vec<::vrrp::Config>,
    /// `[proxy]`: the userspace data path's limits and timeouts.
    pub proxy: ProxyConfig,
    /// `[announce]`, when this node is one of several active ones behind ECMP (BIRD announces
    /// the VIP routes lbd puts in a table of its own).
    pub announce: Option<AnnounceConfig>,
    /// `[[service]]`, in file order.
    pub services: Vec<ServiceConfig>,
}

/// `[announce]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnounceConfig {
    /// The routing table lbd puts its VIP routes in, for BIRD's `protocol kernel` to learn.
    pub table: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnnounce {
    table: Option<i64>,
}

/// Default `[announce] table`.
pub const DEFAULT_ANNOUNCE_TABLE: u32 = 100;

impl RawAnnounce {
    fn validate(
        self,
        daemon: &DaemonConfig,
        services: &[ServiceConfig],
        vrrp: bool,
    ) -> Result<AnnounceConfig, ConfigError> {
        let table = match self.table {
            None => DEFAULT_ANNOUNCE_TABLE,
            // 0 is unspecified, 253-255 are default, main and local.
            Some(t) if (1..=252).contains(&t) || (256..=i64::from(u32::MAX)).contains(&t) => {
                t as u32
            }
            Some(t) => {
                return Err(err(
                    "announce.table",
                    format!(
                        "{t} is not a table of lbd's own (allowed: 1 to 252, or 256 and up; 253 to 255 are the kernel's default, main and local)"
                    ),
                ));
            }
        };
        // A flow that ECMP moves to this node arrives mid-connection: only XDP forwards it on.
        if daemon.datapath == Datapath::Userspace {
            return Err(err(
                "announce",
                "needs an XDP data path (daemon.datapath = \"auto\", \"xdp\" or \"xdp-generic\"): the userspace proxy cannot take a TCP flow that began on another node",
            ));
        }
        if let Some(s) = services.iter().find(|s| !s.scheduler.xdp_capable()) {
            return Err(err(
                "announce",
                format!(
                    "service {:?} uses {}, which only the userspace proxy runs; behind ECMP every node must pick the same backend for a flow: use maglev or sh",
                    s.name, s.scheduler
                ),
            ));
        }
        if vrrp {
            return Err(err(
                "announce",
                "and [vrrp] both decide where the VIPs go: use one (ECMP through BIRD for active-active, VRRP for active-standby)",
            ));
        }
        Ok(AnnounceConfig { table })
    }
}

/// `[daemon]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// Interface the XDP program attaches to (clients and backends are reached through it).
    pub interface: String,
    /// Data path.
    pub datapath: Datapath,
    /// Control socket path (root-only).
    pub control_socket: PathBuf,
    /// Directory for runtime state.
    pub state_dir: PathBuf,
    /// Metrics HTTP address.
    pub metrics_addr: SocketAddr,
    /// Connection table capacity in flows.
    pub conntrack_max: u32,
    /// IPv6 connection table capacity in flows (default: `conntrack_max`).
    pub conntrack6_max: u32,
    /// Where the XDP data path is pinned in bpffs so that it outlives the process (a restart or
    /// a crash adopts it); none: it stops with lbd.
    pub pin_dir: Option<PathBuf>,
    /// Services the XDP Maglev rings are sized for (1 MiB of kernel memory each); a reload may
    /// add services up to it, more need a restart.
    pub max_services: u32,
    /// The flood guard: new flows per second above which XDP stops inserting new flows into
    /// the connection table (they go by Maglev alone), and the proxy stops accepting (per
    /// service). Zero: off.
    pub flood_new_flows_per_sec: u32,
}

/// Default of `daemon.flood_new_flows_per_sec`: well above what a node's clients open in normal
/// use, well below the rate at which inserts cost a core (a new flow costs about 1 µs).
pub const DEFAULT_FLOOD_NEW_FLOWS_PER_SEC: u32 = 200_000;

/// `[[service]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Name (given, or `proto/vip:port`).
    pub name: String,
    /// Virtual IP and port.
    pub vip: SocketAddr,
    /// Protocol.
    pub proto: Proto,
    /// Scheduler.
    pub scheduler: Scheduler,
    /// Backends, in file order.
    pub backends: Vec<BackendConfig>,
    /// Health checks of its backends, when configured.
    pub health: Option<HealthConfig>,
}

impl ServiceConfig {
    /// The identity of a service: what the data path matches on.
    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            vip: self.vip,
            proto: self.proto,
        }
    }
}

/// A service's identity: VIP, port and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// VIP and port.
    pub vip: SocketAddr,
    /// Protocol.
    pub proto: Proto,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.proto, self.vip)
    }
}

/// A backend of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendConfig {
    /// Backend address; in direct routing the port is the VIP's.
    pub addr: IpAddr,
    /// Relative weight, 1..=MAX_WEIGHT.
    pub weight: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    daemon: RawDaemon,
    vrrp: Option<RawVrrp>,
    announce: Option<RawAnnounce>,
    proxy: Option<RawProxy>,
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    interface: String,
    datapath: Option<String>,
    control_socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    metrics_addr: Option<String>,
    conntrack_max: Option<i64>,
    conntrack6_max: Option<i64>,
    pin_dir: Option<PathBuf>,
    flood_new_flows_per_sec: Option<i64>,
    max_services: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Option<String>,
    vip: String,
    proto: Option<String>,
    scheduler: Option<String>,
    #[serde(default)]
    backends: Vec<RawBackend>,
    health: Option<RawHealth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    addr: String,
    weight: Option<i64>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(path.display().to_string(), format!("cannot read: {e}")))?;
        Config::parse(&text)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // toml's message already names the key and shows the line; keep it on one line.
            let msg = e.message().to_string();
            let at = e
                .span()
                .map(|s| {
                    let line = text.as_bytes()[..s.start.min(text.len())]
                        .iter()
                        .filter(|&&b| b == b'\n')
                        .count()
                        + 1;
                    format!("line {line}")
                })
                .unwrap_or_else(|| "config".into());
            err(at, msg)
        })?;
        raw.validate()
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let d = self.daemon;
        if d.interface.is_empty() || d.interface.len() > 15 || d.interface.contains(['/', ' ']) {
            return Err(err(
                "daemon.interface",
                format!(
                    "{:?} is not an interface name (1 to 15 characters, no '/' or space)",
                    d.interface
                ),
            ));
        }
        let datapath = match d.datapath.as_deref().unwrap_or("auto") {
            "auto" => Datapath::Auto,
            "xdp" => Datapath::Xdp,
            "xdp-generic" => Datapath::XdpGeneric,
            "userspace" => Datapath::Userspace,
            other => {
                return Err(err(
                    "daemon.datapath",
                    format!(
                        "{other:?} is not a data path (allowed: auto, xdp, xdp-generic, userspace)"
                    ),
                ));
            }
        };
        let metrics = d.metrics_addr.as_deref().unwrap_or(DEFAULT_METRICS_ADDR);
        let metrics_addr = metrics.parse().map_err(|_| {
            err(
                "daemon.metrics_addr",
                format!("{metrics:?} is not an IP:port (e.g. 127.0.0.1:9300)"),
            )
        })?;
        let conntrack_max = match d.conntrack_max {
            None => lb_common::CONNTRACK_DEFAULT_MAX,
            Some(n) if (1024..=16_777_216).contains(&n) => n as u32,
            Some(n) => {
                return Err(err(
                    "daemon.conntrack_max",
                    format!("{n} is out of range (allowed: 1024 to 16777216 flows)"),
                ));
            }
        };
        // A table of its own per family (keys of 16 and 40 bytes); an IPv4-only node may
        // shrink the IPv6 one to its floor and save its kernel memory.
        let conntrack6_max = match d.conntrack6_max {
            None => conntrack_max,
            Some(n) if (1024..=16_777_216).contains(&n) => n as u32,
            Some(n) => {
                return Err(err(
                    "daemon.conntrack6_max",
                    format!("{n} is out of range (allowed: 1024 to 16777216 flows)"),
                ));
            }
        };
        let flood_new_flows_per_sec = match d.flood_new_flows_per_sec {
            None => DEFAULT_FLOOD_NEW_FLOWS_PER_SEC,
            Some(n) if n == 0 || (100..=100_000_000).contains(&n) => n as u32,
            Some(n) => {
                return Err(err(
                    "daemon.flood_new_flows_per_sec",
                    format!(
                        "{n} is out of range (allowed: 0 for no guard, or 100 to 100000000 new flows per second)"
                    ),
                ));
            }
        };
        // Default: room for the configured services and 64 more, in steps of 64.
        let configured = self.service.len() as i64;
        let max_services = match d.max_services {
            None => ((configured / 64 + 1) * 64).min(i64::from(lb_common::MAX_SERVICES)),
            Some(n) => n,
        };
        if !(1..=i64::from(lb_common::MAX_SERVICES)).contains(&max_services) {
            return Err(err(
                "daemon.max_services",
                format!(
                    "{max_services} is out of range (allowed: 1 to {})",
                    lb_common::MAX_SERVICES
                ),
            ));
        }
        let max_services = max_services as u32;
        let daemon = DaemonConfig {
            max_services,
            flood_new_flows_per_sec,
            interface: d.interface,
            datapath,
            control_socket: d
                .control_socket
                .unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into()),
            state_dir: d.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            metrics_addr,
            conntrack_max,
            conntrack6_max,
            pin_dir: match d.pin_dir {
                Some(p) if !p.is_absolute() || p.parent().is_none() => {
                    return Err(err(
                        "daemon.pin_dir",
                        format!(
                            "{:?} is not an absolute directory below a bpffs mount (e.g. /sys/fs/bpf/lbd/eth0)",
                            p.display().to_string()
                        ),
                    ));
                }
                p => p,
            },
        };

        if self.service.len() > daemon.max_services as usize {
            return Err(err(
                "service",
                format!(
                    "{} services configured; daemon.max_services is {} (allowed up to {})",
                    self.service.len(),
                    daemon.max_services,
                    lb_common::MAX_SERVICES
                ),
            ));
        }
        let mut services = Vec::with_capacity(self.service.len());
        let mut keys = BTreeSet::new();
        let mut names = BTreeSet::new();
        let mut total_backends = 0usize;
        for (i, s) in self.service.into_iter().enumerate() {
            let svc = s.validate(&format!("service[{i}]"))?;
            if !keys.insert(svc.key()) {
                return Err(err(
                    format!("service[{i}].vip"),
                    format!("{} is configured twice", svc.key()),
                ));
            }
            if !names.insert(svc.name.clone()) {
                return Err(err(
                    format!("service[{i}].name"),
                    format!("{:?} is used by another service", svc.name),
                ));
            }
            total_backends += svc.backends.len();
            services.push(svc);
        }
        // Half of the backend ids stay free for backends that leave with flows still open.
        let limit = lb_common::MAX_BACKENDS as usize / 2;
        if total_backends > limit {
            return Err(err(
                "service",
                format!(
                    "{total_backends} backends configured in all; at most {limit} are supported"
                ),
            ));
        }
        // rr, wrr and lc keep per-backend state (a cursor, connection counts): only the proxy has them.
        if matches!(daemon.datapath, Datapath::Xdp | Datapath::XdpGeneric)
            && let Some((i, s)) = services
                .iter()
                .enumerate()
                .find(|(_, s)| !s.scheduler.xdp_capable())
        {
            return Err(err(
                format!("service[{i}].scheduler"),
                format!(
                    "{} needs the userspace data path, but daemon.datapath = \"{}\" (use maglev or sh, or datapath = \"userspace\" or \"auto\")",
                    s.scheduler, daemon.datapath
                ),
            ));
        }
        let vrrp = match self.vrrp {
            Some(v) => v.validate(&daemon, &services)?,
            None => Vec::new(),
        };
        let proxy = match self.proxy {
            Some(p) => p.validate()?,
            None => ProxyConfig::default(),
        };
        let announce = match self.announce {
            Some(a) => Some(a.validate(&daemon, &services, !vrrp.is_empty())?),
            None => None,
        };
        Ok(Config {
            daemon,
            vrrp,
            announce,
            proxy,
            services,
        })
    }
}

impl RawService {
    fn validate(self, path: &str) -> Result<ServiceConfig, ConfigError> {
        let proto = match self.proto.as_deref().unwrap_or("tcp") {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            other => {
                return Err(err(
                    format!("{path}.proto"),
                    format!("{other:?} is not a protocol (allowed: tcp, udp)"),
                ));
            }
        };
        let vip: SocketAddr = self.vip.parse().map_err(|_| {
            err(
                format!("{path}.vip"),
                format!(
                    "{:?} is not an address and port (e.g. 198.18.0.100:80 or [2001:db8::100]:80)",
                    self.vip
                ),
            )
        })?;
        // Loopback is fine for a VIP (the proxy serves it), not for a backend.
        if vip.port() == 0 || !(routable_unicast(vip.ip()) || vip.ip().is_loopback()) {
            return Err(err(
                format!("{path}.vip"),
                format!(
                    "{vip} cannot be a VIP (needs a non-zero port and a unicast address, not link-local or IPv4-mapped)"
                ),
            ));
        }
        let name = self.scheduler.as_deref().unwrap_or("maglev");
        let scheduler = Scheduler::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| {
                err(
                    format!("{path}.scheduler"),
                    format!("{name:?} is not a scheduler (allowed: maglev, sh, rr, wrr, lc)"),
                )
            })?;
        let name = match self.name {
            Some(n)
                if n.is_empty()
                    || n.len() > 64
                    || !n
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
            {
                return Err(err(
                    format!("{path}.name"),
                    format!("{n:?} is not a service name (1 to 64 of A-Z a-z 0-9 - _ .)"),
                ));
            }
            Some(n) => n,
            None => format!("{proto}/{vip}"),
        };
        let mut backends: Vec<BackendConfig> = Vec::with_capacity(self.backends.len());
        for (j, b) in self.backends.into_iter().enumerate() {
            let bpath = format!("{path}.backends[{j}]");
            let addr = parse_backend_addr(&b.addr, vip.port())
                .map_err(|m| err(format!("{bpath}.addr"), m))?;
            // Direct routing forwards the client's packet as it is: a backend must take the
            // VIP's family (and the proxy keeps one family per service, as IPVS does).
            if addr.is_ipv4() != vip.is_ipv4() {
                return Err(err(
                    format!("{bpath}.addr"),
                    format!(
                        "{addr} is {}, the VIP {} is {}: a service's backends are of its VIP's family",
                        family(addr),
                        vip.ip(),
                        family(vip.ip())
                    ),
                ));
            }
            if backends.iter().any(|o| o.addr == addr) {
                return Err(err(
                    format!("{bpath}.addr"),
                    format!("{addr} is listed twice in this service"),
                ));
            }
            let weight = match b.weight {
                None => 1,
                Some(w) if (1..=MAX_WEIGHT as i64).contains(&w) => w as u32,
                Some(w) => {
                    return Err(err(
                        format!("{bpath}.weight"),
                        format!("{w} is out of range (allowed: 1 to {MAX_WEIGHT})"),
                    ));
                }
            };
            backends.push(BackendConfig { addr, weight });
        }
        let health = match &self.health {
            Some(_) if proto == Proto::Udp => {
                return Err(err(
                    format!("{path}.health"),
                    "health checks are TCP connects or HTTP requests; a UDP service cannot have one",
                ));
            }
            Some(h) => Some(h.validate(&format!("{path}.health"))?),
            None => None,
        };
        Ok(ServiceConfig {
            name,
            vip,
            proto,
            scheduler,
            backends,
            health,
        })
    }
}

/// "IPv4" or "IPv6".
pub fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// An address a VIP or a backend can have: unicast, not loopback, not link-local (which needs
/// an interface to mean anything), and IPv6 not IPv4-mapped (write those as IPv4).
pub fn routable_unicast(ip: IpAddr) -> bool {
    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => !v4.is_broadcast(),
        IpAddr::V6(v6) => !v6.is_unicast_link_local() && v6.to_ipv4_mapped().is_none(),
    }
}

/// Parses a backend address: an IPv4 or IPv6 address, or address:port (`[v6]:port`) where the
/// port must be the VIP's (direct routing forwards frames unchanged, so it cannot change ports).
pub fn parse_backend_addr(text: &str, vip_port: u16) -> Result<IpAddr, String> {
    let (ip, port) = match text.parse::<SocketAddr>() {
        Ok(sa) => (sa.ip(), Some(sa.port())),
        Err(_) => match text.parse::<IpAddr>() {
            Ok(ip) => (ip, None),
            Err(_) => {
                return Err(format!(
                    "{text:?} is not an address (expected e.g. 198.18.0.21, 198.18.0.21:{vip_port}, 2001:db8::21 or [2001:db8::21]:{vip_port})"
                ));
            }
        },
    };
    if let Some(p) = port
        && p != vip_port
    {
        return Err(format!(
            "port {p} differs from the VIP port {vip_port}; direct routing cannot change ports (omit the port or use {vip_port})"
        ));
    }
    if !routable_unicast(ip) {
        return Err(format!(
            "{ip} cannot be a backend (needs a unicast address on the network, not loopback, link-local or IPv4-mapped)"
        ));
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[daemon]
interface = "eth0"
datapath = "xdp-generic"
control_socket = "/tmp/x.sock"

[[service]]
name = "web"
vip = "198.18.0.100:80"
backends = [ { addr = "198.18.0.21:80", weight = 2 }, { addr = "198.18.0.22" } ]

[[service]]
vip = "198.18.0.100:5353"
proto = "udp"
scheduler = "sh"
backends = [ { addr = "198.18.0.21" } ]
"#;

    #[test]
    fn good_config_parses() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.daemon.interface, "eth0");
        assert_eq!(c.daemon.datapath, Datapath::XdpGeneric);
        assert_eq!(c.daemon.conntrack_max, lb_common::CONNTRACK_DEFAULT_MAX);
        assert_eq!(c.daemon.conntrack6_max, c.daemon.conntrack_max);
        assert_eq!(
            c.daemon.max_services, 64,
            "two services and room for 62 more"
        );
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.services[0].name, "web");
        assert_eq!(c.services[0].backends[0].weight, 2);
        assert_eq!(c.services[0].backends[1].weight, 1);
        assert_eq!(c.services[1].name, "udp/198.18.0.100:5353");
        assert_eq!(c.services[1].scheduler, Scheduler::Sh);
    }

    /// IPv6 VIPs and backends, with and without the port, beside IPv4 services.
    #[test]
    fn dual_stack_config_parses() {
        let c = Config::parse(&format!(
            "{GOOD}\n[[service]]\nvip = \"[2001:DB8::100]:80\"\nbackends = [ {{ addr = \"2001:db8::21\" }}, {{ addr = \"[2001:db8::22]:80\", weight = 3 }} ]\n"
        ))
        .unwrap();
        let v6 = &c.services[2];
        assert_eq!(v6.vip, "[2001:db8::100]:80".parse().unwrap());
        assert_eq!(
            v6.name, "tcp/[2001:db8::100]:80",
            "the default name, canonical"
        );
        let addrs: Vec<String> = v6.backends.iter().map(|b| b.addr.to_string()).collect();
        assert_eq!(addrs, ["2001:db8::21", "2001:db8::22"]);
        assert_eq!(v6.backends[1].weight, 3);
        assert_eq!(v6.key().to_string(), "tcp/[2001:db8::100]:80");
    }

    /// Each bad config and the message it must give: the key path, the value, what is allowed.
    #[test]
    fn bad_configs_name_key_and_value() {
        let svc = |extra: &str| {
            format!(
                "[daemon]\ninterface = \"eth0\"\n[[service]]\nvip = \"198.18.0.100:80\"\n{extra}\n"
            )
        };
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "missing field `daemon`"),
            ("[daemon]\n".into(), "missing field `interface`"),
            (
                "[daemon]\ninterface = \"eth0\"\nbogus = 1\n".into(),
                "unknown field `bogus`",
            ),
            (
                "[daemon]\ninterface = \"\"\n".into(),
                "daemon.interface: \"\" is not an interface name",
            ),
            (
                "[daemon]\ninterface = \"eth0\"\ndatapath = \"dpdk\"\n".into(),
                "daemon.datapath: \"dpdk\" is not a data path (allowed: auto, xdp, xdp-generic, userspace)",
            ),
            (
                "[daemon]\ninterface = \"eth0\"\nmetrics_addr = \"localhost\"\n".into(),
                "daemon.metrics_addr: \"localhost\" is not an IP:port",
            ),
            (
                "[daemon]\ninterface = \"eth0\"\n[announce]\ntable = 254\n".into(),
                "announce.table: 254 is not a table of lbd's own (allowed: 1 to 252, or 256 and up; 253 to 255 are the kernel's default, main and local)",
            ),
            (
                "[daemon]\ninterface = \"eth0\"\ndatapath = \"userspace\"\n[announce]\n".into(),
                "announce: needs an XDP data path",
            ),
            (
                "[daemon]\ninterface = \"eth0\"\n[announce]\n[[service]]\nname = \"w\"\nvip = \"198.18.0.100:80\"\nscheduler = \"rr\"\n".into(),
                "announce: service \"w\" uses rr, which only the userspace proxy runs",
            ),
            (
                "[daemon]\ninterface = \"eth0\"\nmax_services = 0\n".into(),
                "daemon.max_services: 0 is out of range (allowed: 1 to 512)",
            ),
            (
                "[daemon]\ninterface = \"eth0\"\nmax_services = 1\n[[service]]\nvip = \"198.18.0.100:80\"\n[[service]]\nvip = \"198.18.0.100:81\"\n".into(),
                "service: 2 services configured; daemon.max_services is 1 (allowed up to 512)",
            ),
            (
                "[daemon]\ninterface = \"eth0\"\nflood_new_flows_per_sec = 5\n".into(),
                "daemon.flood_new_flows_per_sec: 5 is out of range (allowed: 0 for no guard, or 100 to 100000000 new flows per second)",
            ),
            (
                "[daemon]\ninterface = \"eth0\"\nconntrack_max = 5\n".into(),
                "daemon.conntrack_max: 5 is out of range (allowed: 1024 to 16777216 flows)",
            ),
            (
                "[daemon]\ninterface = \"eth0\"\nconntrack6_max = 100\n".into(),
                "daemon.conntrack6_max: 100 is out of range (allowed: 1024 to 16777216 flows)",
            ),
            (
                "[daemon]\ninterface = \"eth0\"\npin_dir = \"lbd/eth0\"\n".into(),
                "daemon.pin_dir: \"lbd/eth0\" is not an absolute directory below a bpffs mount",
            ),
            (
                "[daemon]\ninterface = \"eth0\"\n[[service]]\nvip = \"198.18.0.100\"\n".into(),
                "service[0].vip: \"198.18.0.100\" is not an address and port",
            ),
            (
                "[daemon]\ninterface = \"eth0\"\n[[service]]\nvip = \"0.0.0.0:80\"\n".into(),
                "service[0].vip: 0.0.0.0:80 cannot be a VIP",
            ),
            (
                svc("proto = \"sctp\""),
                "service[0].proto: \"sctp\" is not a protocol (allowed: tcp, udp)",
            ),
            (
                svc("scheduler = \"random\""),
                "service[0].scheduler: \"random\" is not a scheduler (allowed: maglev, sh, rr, wrr, lc)",
            ),
            (
                svc("name = \"a b\""),
                "service[0].name: \"a b\" is not a service name",
            ),
            (
                svc("backends = [ { addr = \"10.0.0.x\" } ]"),
                "service[0].backends[0].addr: \"10.0.0.x\" is not an address",
            ),
            (
                svc("backends = [ { addr = \"2001:db8::21\" } ]"),
                "service[0].backends[0].addr: 2001:db8::21 is IPv6, the VIP 198.18.0.100 is IPv4: a service's backends are of its VIP's family",
            ),
            (
                "[daemon]\ninterface = \"eth0\"\n[[service]]\nvip = \"[2001:db8::100]:80\"\nbackends = [ { addr = \"198.18.0.21\" } ]\n".into(),
                "service[0].backends[0].addr: 198.18.0.21 is IPv4, the VIP 2001:db8::100 is IPv6",
            ),
            (
                "[daemon]\ninterface = \"eth0\"\n[[service]]\nvip = \"[2001:db8::100]:80\"\nbackends = [ { addr = \"[2001:db8::21]:81\" } ]\n".into(),
                "service[0].backends[0].addr: port 81 differs from the VIP port 80",
            ),
            (
                "[daemon]\ninterface = \"eth0\"\n[[service]]\nvip = \"[fe80::1]:80\"\n".into(),
                "service[0].vip: [fe80::1]:80 cannot be a VIP",
            ),
            (
                "[daemon]\ninterface = \"eth0\"\n[[service]]\nvip = \"[::ffff:198.18.0.100]:80\"\n".into(),
                "service[0].vip: [::ffff:198.18.0.100]:80 cannot be a VIP",
            ),
            (
                "[daemon]\ninterface = \"eth0\"\n[[service]]\nvip = \"2001:db8::100:80\"\n".into(),
                "service[0].vip: \"2001:db8::100:80\" is not an address and port (e.g. 198.18.0.100:80 or [2001:db8::100]:80)",
            ),
            (
                "[daemon]\ninterface = \"eth0\"\n[[service]]\nvip = \"[2001:db8::100]:80\"\nbackends = [ { addr = \"::1\" } ]\n".into(),
                "service[0].backends[0].addr: ::1 cannot be a backend",
            ),
            (
                svc("backends = [ { addr = \"198.18.0.21:8080\" } ]"),
                "service[0].backends[0].addr: port 8080 differs from the VIP port 80",
            ),
            (
                svc("backends = [ { addr = \"127.0.0.1\" } ]"),
                "service[0].backends[0].addr: 127.0.0.1 cannot be a backend",
            ),
            (
                svc("backends = [ { addr = \"198.18.0.21\", weight = 0 } ]"),
                "service[0].backends[0].weight: 0 is out of range (allowed: 1 to 1000)",
            ),
            (
                svc("backends = [ { addr = \"198.18.0.21\", weight = 1001 } ]"),
                "service[0].backends[0].weight: 1001 is out of range",
            ),
            (
                svc("backends = [ { addr = \"198.18.0.21\" }, { addr = \"198.18.0.21:80\" } ]"),
                "service[0].backends[1].addr: 198.18.0.21 is listed twice",
            ),
            (
                svc("backends = [ { adr = \"198.18.0.21\" } ]"),
                "unknown field `adr`",
            ),
            (
                format!("{}[[service]]\nvip = \"198.18.0.100:80\"\n", svc("")),
                "service[1].vip: tcp/198.18.0.100:80 is configured twice",
            ),
            (
                format!(
                    "{}[[service]]\nname = \"x\"\nvip = \"198.18.0.100:81\"\n",
                    svc("name = \"x\"")
                ),
                "service[1].name: \"x\" is used by another service",
            ),
        ];
        for (text, want) in cases {
            let got = Config::parse(&text).expect_err(&text).to_string();
            assert!(
                got.contains(want),
                "config:\n{text}\nwant: {want}\ngot:  {got}"
            );
        }
    }

    #[test]
    fn vrrp_section_defaults_to_the_service_vips() {
        let c = Config::parse(&format!(
            "{GOOD}\n[vrrp]\nvrid = 51\npriority = 150\nadvert_interval_ms = 100\n"
        ))
        .unwrap();
        assert_eq!(c.vrrp.len(), 1, "one family, one virtual router");
        let v = &c.vrrp[0];
        assert_eq!(v.vrid.get(), 51);
        assert_eq!(v.priority.get(), 150);
        assert_eq!(v.advert_interval.centis(), 10);
        assert_eq!(v.vips, vec![std::net::IpAddr::from([198, 18, 0, 100])]);
        assert_eq!(v.interface, "eth0");
        assert!(v.preempt);
    }

    /// VIPs of both families: two virtual routers (RFC 5798 keeps the families apart) with the
    /// same VRID, priority and timers; unicast peers go to their family's router.
    #[test]
    fn vrrp_with_both_families_runs_one_router_per_family() {
        let dual = format!(
            "{GOOD}\n[[service]]\nvip = \"[2001:db8::100]:80\"\n[vrrp]\nvrid = 51\npriority = 150\n"
        );
        let c = Config::parse(&dual).unwrap();
        assert_eq!(c.vrrp.len(), 2);
        assert_eq!(
            c.vrrp[0].vips,
            vec![std::net::IpAddr::from([198, 18, 0, 100])]
        );
        assert_eq!(
            c.vrrp[1].vips,
            vec!["2001:db8::100".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(
            c.vrrp
                .iter()
                .all(|v| v.vrid.get() == 51 && v.priority.get() == 150)
        );

        let unicast = format!("{dual}unicast_peers = [\"198.18.0.3\", \"2001:db8::3\"]\n");
        let c = Config::parse(&unicast).unwrap();
        assert_eq!(
            c.vrrp[0].unicast_peers,
            vec![std::net::IpAddr::from([198, 18, 0, 3])]
        );
        assert_eq!(
            c.vrrp[1].unicast_peers,
            vec!["2001:db8::3".parse::<std::net::IpAddr>().unwrap()]
        );
        let e = Config::parse(&format!("{dual}unicast_peers = [\"198.18.0.3\"]\n")).unwrap_err();
        assert!(
            e.to_string()
                .contains("vrrp.unicast_peers: no IPv6 peer for the IPv6 VIPs"),
            "{e}"
        );
        let e = Config::parse(&format!(
            "{GOOD}\n[vrrp]\nvrid = 51\npriority = 150\nunicast_peers = [\"2001:db8::3\"]\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("vrrp.unicast_peers:"), "{e}");
    }

    #[test]
    fn toml_errors_carry_the_line() {
        let e = Config::parse("[daemon]\ninterface = \"eth0\"\nbogus = 1\n").unwrap_err();
        assert_eq!(e.path, "line 3");
    }
}
