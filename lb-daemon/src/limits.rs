//! Open files: what the configured bounds need, and raising lbd's own soft limit to it.
//!
//! The proxy holds up to six descriptors per TCP connection (the client's and the backend's
//! sockets, and two pipes of two ends when a direction splices) and one per UDP session, for
//! each service up to its bound; the health checks one per probe under way. systemd gives a
//! service a soft limit of 1024 by default, which the proxy's default bound of 10,000
//! connections passes at the 170th. As HAProxy derives its limit from `maxconn`, lbd raises its
//! soft limit to what its bounds need, up to the hard limit, and says so when the hard limit is
//! lower (the unit sets `LimitNOFILE`).

use std::fmt;

use crate::config::{Config, Datapath, Proto};

/// Descriptors of one proxied TCP connection at most.
pub const FDS_PER_TCP_CONNECTION: u64 = 6;
/// Descriptors of the daemon besides the bounds: control and metrics connections, netlink,
/// BPF maps and programs, logs, the listeners' second copies.
pub const FDS_BASE: u64 = 256;

/// What the configured bounds need, part by part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdBudget {
    /// (what, descriptors).
    pub parts: Vec<(String, u64)>,
}

impl FdBudget {
    /// The descriptors the bounds of `config` need.
    pub fn of(config: &Config) -> FdBudget {
        let mut parts = vec![("the daemon itself".to_string(), FDS_BASE)];
        // The proxy's bounds count where the proxy may run (userspace, or auto's fallback).
        if matches!(config.daemon.datapath, Datapath::Auto | Datapath::Userspace) {
            let p = &config.proxy;
            let (mut tcp, mut udp) = (0u64, 0u64);
            for s in &config.services {
                match s.proto {
                    Proto::Tcp => tcp += 1,
                    Proto::Udp => udp += 1,
                }
            }
            if tcp > 0 {
                parts.push((
                    format!(
                        "{tcp} TCP services x {} connections x {FDS_PER_TCP_CONNECTION}",
                        p.max_connections
                    ),
                    tcp * (p.max_connections as u64 * FDS_PER_TCP_CONNECTION + 1),
                ));
            }
            if udp > 0 {
                parts.push((
                    format!("{udp} UDP services x {} sessions", p.max_udp_sessions),
                    udp * (p.max_udp_sessions as u64 + 1),
                ));
            }
        }
        let probes: u64 = config
            .services
            .iter()
            .filter(|s| s.health.is_some())
            .map(|s| s.backends.len() as u64)
            .sum();
        if probes > 0 {
            parts.push((format!("{probes} health checks"), probes));
        }
        FdBudget { parts }
    }

    /// The total.
    pub fn need(&self) -> u64 {
        self.parts.iter().map(|(_, n)| n).sum()
    }
}

impl fmt::Display for FdBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|(what, n)| format!("{what}: {n}"))
            .collect();
        write!(f, "{} ({})", self.need(), parts.join(", "))
    }
}

/// The process's open-files limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nofile {
    /// Soft limit (what applies).
    pub soft: u64,
    /// Hard limit (what the soft one may be raised to).
    pub hard: u64,
}

/// Reads RLIMIT_NOFILE.
pub fn nofile() -> std::io::Result<Nofile> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `r`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Nofile {
        soft: r.rlim_cur,
        hard: r.rlim_max,
    })
}

/// What [`raise`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    /// The limits before.
    pub before: Nofile,
    /// The soft limit now.
    pub soft: u64,
    /// Descriptors the bounds need.
    pub need: u64,
}

impl Raised {
    /// Whether the bounds need more than the hard limit allows.
    pub fn short(&self) -> bool {
        self.need > self.soft
    }
}

/// The soft limit to set for `need` under `limits`: `need`, capped at the hard limit, and
/// never lower than the soft limit already is.
pub fn target(need: u64, limits: Nofile) -> u64 {
    need.min(limits.hard).max(limits.soft)
}

/// Raises the soft open-files limit to what `need` asks (up to the hard limit).
pub fn raise(need: u64) -> std::io::Result<Raised> {
    let before = nofile()?;
    let soft = target(need, before);
    if soft != before.soft {
        let r = libc::rlimit {
            rlim_cur: soft,
            rlim_max: before.hard,
        };
        // SAFETY: setrlimit reads one rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(Raised { before, soft, need })
}

/// The sentence for the start log and `--check-config` when the bounds need more than the
/// host allows, naming what to change.
pub fn shortfall(budget: &FdBudget, hard: u64) -> Option<String> {
    let need = budget.need();
    (need > hard).then(|| {
        format!(
            "the configured bounds need {budget} open files, but the hard limit is {hard}: \
             beyond it connections fail with \"Too many open files\". Raise LimitNOFILE in the \
             unit (or ulimit -Hn), or lower [proxy] max_connections / max_udp_sessions"
        )
    })
}

/// Kernel memory of the XDP maps, MiB per Maglev-ring service (two tables of 65,537 slots of
/// 8 bytes) and per million connection-table entries (measured: `cargo xtask bench scale`,
/// `bytes_memlock` of the maps).
pub const MIB_PER_SERVICE: f64 = 1.0;
/// See [`MIB_PER_SERVICE`].
pub const MIB_PER_MILLION_FLOWS: f64 = 92.0;
/// The same for the IPv6 table, whose keys are 40 bytes, not 16 (`bpftool map create` of an
/// LRU hash of 1M entries: 115 MiB against 92).
pub const MIB_PER_MILLION_FLOWS6: f64 = 115.0;

/// What the XDP maps of `config` cost in kernel memory, MiB: (rings, connection tables).
pub fn map_memory_mib(config: &Config) -> (f64, f64) {
    (
        f64::from(config.daemon.max_services) * MIB_PER_SERVICE,
        f64::from(config.daemon.conntrack_max) / 1e6 * MIB_PER_MILLION_FLOWS
            + f64::from(config.daemon.conntrack6_max) / 1e6 * MIB_PER_MILLION_FLOWS6,
    )
}

/// `MemAvailable` of `/proc/meminfo`, MiB.
pub fn mem_available_mib() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: f64 = text
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// The sentence on the maps' kernel memory against what the host has available; a warning
/// (`true`) when they would take more than half of it.
pub fn map_memory_note(config: &Config, available_mib: Option<f64>) -> (bool, String) {
    let (rings, flows) = map_memory_mib(config);
    let total = rings + flows;
    let head = format!(
        "XDP maps: {total:.0} MiB of kernel memory ({rings:.0} MiB of Maglev rings for \
         daemon.max_services = {}, {flows:.0} MiB for daemon.conntrack_max = {} and \
         daemon.conntrack6_max = {})",
        config.daemon.max_services, config.daemon.conntrack_max, config.daemon.conntrack6_max
    );
    match available_mib {
        Some(avail) if total > avail / 2.0 => (
            true,
            format!(
                "{head}: more than half of the {avail:.0} MiB this host has available; lower \
                 daemon.conntrack_max, daemon.conntrack6_max or daemon.max_services"
            ),
        ),
        Some(avail) => (false, format!("{head}; {avail:.0} MiB available")),
        None => (false, head),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[daemon]
interface = "eth0"
datapath = "userspace"
[proxy]
max_connections = 1000
max_udp_sessions = 500
[[service]]
name = "web"
vip = "198.18.0.100:80"
health = { kind = "tcp" }
backends = [ { addr = "198.18.0.21" }, { addr = "198.18.0.22" } ]
[[service]]
name = "dns"
vip = "198.18.0.100:53"
proto = "udp"
backends = [ { addr = "198.18.0.21" } ]
"#;

    #[test]
    fn the_budget_adds_up_the_bounds() {
        let c = Config::parse(CONFIG).expect("config");
        let b = FdBudget::of(&c);
        assert_eq!(b.need(), 256 + 6001 + 501 + 2);
        assert_eq!(
            b.to_string(),
            "6760 (the daemon itself: 256, 1 TCP services x 1000 connections x 6: 6001, \
             1 UDP services x 500 sessions: 501, 2 health checks: 2)"
        );
        // XDP only: the proxy's bounds do not apply.
        let xdp = Config::parse(&CONFIG.replace("userspace", "xdp")).expect("config");
        assert_eq!(FdBudget::of(&xdp).need(), 258);
    }

    #[test]
    fn the_target_is_the_need_within_the_limits() {
        let l = Nofile {
            soft: 1024,
            hard: 524_288,
        };
        assert_eq!(target(60_000, l), 60_000);
        assert_eq!(target(600_000, l), 524_288, "capped at the hard limit");
        assert_eq!(target(100, l), 1024, "never lowered");
    }

    #[test]
    fn a_shortfall_names_the_fix() {
        let c = Config::parse(CONFIG).expect("config");
        let b = FdBudget::of(&c);
        assert_eq!(shortfall(&b, 100_000), None);
        let s = shortfall(&b, 4096).expect("short");
        assert!(
            s.contains("need 6760") && s.contains("hard limit is 4096"),
            "{s}"
        );
        assert!(s.contains("LimitNOFILE"), "{s}");
    }

    #[test]
    fn map_memory_is_stated_and_checked() {
        let c = Config::parse(&CONFIG.replace("userspace", "xdp")).expect("config");
        let (warn, text) = map_memory_note(&c, Some(100_000.0));
        assert!(!warn, "{text}");
        assert!(
            text.starts_with("XDP maps: 118 MiB of kernel memory (64 MiB of Maglev rings"),
            "{text}"
        );
        let (warn, text) = map_memory_note(&c, Some(100.0));
        assert!(
            warn && text.contains("lower daemon.conntrack_max"),
            "{text}"
        );
    }

    #[test]
    fn raising_within_the_hard_limit_works() {
        let before = nofile().expect("getrlimit");
        let r = raise(before.soft).expect("raise");
        assert_eq!(r.soft, before.soft);
        assert!(!r.short());
    }
}
