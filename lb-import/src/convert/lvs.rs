//! `virtual_server ADDR PORT` → `[[service]]`, its `real_server`s → `backends`.
//!
//! Both families convert: an IPv6 `virtual_server` becomes a service `vip = "[ADDR]:PORT"`; its
//! real servers must be IPv6 too (direct routing forwards the client's packet unchanged, so a
//! service's backends are of its VIP's family, in lbd as in IPVS).
//!
//! lbd forwards by direct routing (XDP, IPVS `DR` style), so only `lb_kind DR` services convert;
//! the scheduler keeps direct routing too: lbd's `rr`, `wrr` and `lc` exist only in its userspace
//! proxy, which would replace direct routing for every service, so IPVS schedulers map to the
//! XDP-capable `maglev` (weights honoured) or `sh` (one client, one backend).

use std::net::{IpAddr, SocketAddr};

use super::check::{self, Timing};
use super::{Findings, parse_int, shorten};
use crate::emit::Service;
use crate::include::At;
use crate::parser::Node;

/// Largest backend weight in lbd.
const MAX_WEIGHT: i64 = 1000;

/// A `virtual_server` as converted: its service, or why it has none (a warning message).
pub(crate) struct Draft {
    pub at: At,
    pub service: Result<Service, String>,
    pub findings: Findings,
}

/// How IPVS forwards to a real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Dr,
    Nat,
    Tun,
}

fn method(n: &Node) -> Option<Method> {
    match n.arg(0).map(str::to_ascii_uppercase).as_deref() {
        Some("DR") => Some(Method::Dr),
        Some("NAT") => Some(Method::Nat),
        Some("TUN") => Some(Method::Tun),
        _ => None,
    }
}

fn method_reason(m: Method) -> &'static str {
    match m {
        Method::Nat => {
            "lb_kind NAT rewrites addresses and needs the backends to route their replies through the balancer; \
             lbd forwards by direct routing only (backends on the same L2 segment, holding the VIP on lo: see lbd's README)"
        }
        Method::Tun => {
            "lb_kind TUN encapsulates to backends anywhere; lbd forwards by direct routing only \
             (backends on the same L2 segment, holding the VIP on lo: see lbd's README)"
        }
        Method::Dr => "",
    }
}

/// Converts one `virtual_server`.
pub(crate) fn virtual_server(node: &Node) -> Draft {
    let at = node.at();
    let mut f = Findings::default();
    let head = shorten(&node.line());
    let refuse = |reason: String| Draft {
        at,
        service: Err(format!("{head} not converted: {reason}")),
        findings: Findings::default(),
    };
    let (ip, port) = match (node.arg(0), node.arg(1)) {
        (Some("fwmark"), _) => {
            return refuse(
                "lbd matches services by VIP, port and protocol, not by firewall mark: write a virtual_server per address and port the mark covers"
                    .into(),
            );
        }
        (Some("group"), _) => {
            return refuse(
                "lbd services are one VIP and port each: write a virtual_server per address and port of the virtual_server_group"
                    .into(),
            );
        }
        (Some(ip), port) => (ip, port),
        (None, _) => return refuse("no address given".into()),
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return refuse("not an IP address".into());
    };
    if let Some(reason) = unusable_vip(ip) {
        return refuse(reason.into());
    }
    let port = match port {
        None | Some("0") => {
            return refuse(
                "a service on all ports (persistent, port omitted or 0) has no lbd equivalent: lbd services have one port"
                    .into(),
            );
        }
        Some(p) => match parse_int(p) {
            Some(p @ 1..=65535) => u16::try_from(p).unwrap_or(1),
            _ => return refuse("the port is not 1 to 65535".into()),
        },
    };
    let vip = SocketAddr::new(ip, port);
    f.note(at, format!("virtual_server {ip} {port}"));

    let mut udp = false;
    let mut kind: Option<(Method, At)> = None;
    let mut algo: Option<(String, At)> = None;
    let mut persistence: Option<(String, At)> = None;
    let mut port_hash: Option<At> = None;
    let mut timing = Timing::default();
    let mut real_servers = Vec::new();

    for n in node.children() {
        if check::timing_keyword(n, &mut timing, &mut f) {
            continue;
        }
        match n.key() {
            "protocol" => match n.arg(0).map(str::to_ascii_uppercase).as_deref() {
                Some("TCP") => udp = false,
                Some("UDP") => udp = true,
                Some("SCTP") => return refuse("lbd balances TCP and UDP only".into()),
                _ => f.not_converted(n, "expected TCP or UDP; TCP is used"),
            },
            "lb_kind" | "lvs_method" => match method(n) {
                Some(m) => kind = Some((m, n.at())),
                None => return refuse(format!("{} is not DR, NAT or TUN", shorten(&n.line()))),
            },
            "lb_algo" | "lvs_sched" => {
                algo = Some((n.arg(0).unwrap_or_default().to_owned(), n.at()));
            }
            "persistence_timeout" => {
                persistence = Some((n.arg(0).unwrap_or("360").to_owned(), n.at()));
            }
            "sh-port" | "mh-port" => port_hash = Some(n.at()),
            "sh-fallback" | "mh-fallback" => f.note(
                n.at(),
                format!("{}: lbd's hash tables leave out backends that are down, so a flow always finds a live one", n.key()),
            ),
            "ip_family" if n.arg(0) == Some(if ip.is_ipv4() { "inet" } else { "inet6" }) => {}
            "ip_family" if matches!(n.arg(0), Some("inet" | "inet6")) => f.not_converted(
                n,
                &format!("the service's family is its VIP's ({})", family(ip)),
            ),
            "real_server" => real_servers.push(n),
            "persistence_granularity" => f.not_converted(
                n,
                "lbd's client affinity (scheduler sh) is per client address, not per network",
            ),
            "persistence_engine" => f.not_converted(n, "lbd has no persistence engines"),
            "sorry_server" | "sorry_server_inhibit" | "sorry_server_lvs_method" => f.not_converted(
                n,
                "lbd has no sorry server: a service with no backend up drops new flows (track_no_backend in [vrrp] can hand the VIP to the peer)",
            ),
            "quorum" | "hysteresis" | "quorum_up" | "quorum_down" | "omega" => f.not_converted(
                n,
                "lbd has no quorum: alert on lbd_service_backends_in_rotation, or use track_no_backend in [vrrp]",
            ),
            "ha_suspend" => f.not_converted(n, "lbd checks backends whether or not this node holds the VIP"),
            "smtp_alert" => f.not_converted(n, "lbd sends no mail: alert on its Prometheus metrics"),
            "ops" => f.not_converted(n, "lbd schedules UDP per flow (client address and port), not per packet"),
            "hashed" | "flag-1" | "flag-2" | "flag-3" => {
                f.not_converted(n, "IPVS scheduler flags have no lbd equivalent");
            }
            "snmp_name" => f.not_converted(n, "lbd has no SNMP: services are named in its metrics by VIP, port and protocol"),
            _ => f.not_converted(n, "no lbd equivalent (or not a keepalived virtual_server keyword)"),
        }
    }

    // keepalived's default forwarding is NAT.
    let vs_method = kind.map_or(Method::Nat, |(m, _)| m);
    let mut backends: Vec<(IpAddr, i64, At)> = Vec::new();
    let mut checks: Vec<check::RsCheck> = Vec::new();
    let mut other_method = Vec::new();
    let mut dr_servers = 0usize;
    for rs in &real_servers {
        let rs_method = rs
            .children()
            .iter()
            .find(|c| matches!(c.key(), "lvs_method" | "lb_kind"))
            .map_or(Some(vs_method), method);
        if backends.len() >= super::MAX_BACKENDS {
            f.not_converted(
                rs,
                &format!(
                    "lbd runs at most {} backends over all services",
                    super::MAX_BACKENDS
                ),
            );
            continue;
        }
        match rs_method {
            Some(Method::Dr) => dr_servers += 1,
            Some(m) => {
                other_method.push((*rs, method_reason(m)));
                continue;
            }
            None => {
                other_method.push((*rs, "its lvs_method is not DR, NAT or TUN"));
                continue;
            }
        }
        if let Some((addr, weight, check)) = real_server(rs, vip, udp, &timing, &backends, &mut f) {
            backends.push((addr, weight, rs.at()));
            checks.push(check);
        }
    }
    if dr_servers == 0 && vs_method != Method::Dr {
        let reason = method_reason(vs_method);
        return refuse(match kind {
            None => format!("no lb_kind, and keepalived's default is NAT: {reason}"),
            Some(_) => reason.to_owned(),
        });
    }
    for (rs, reason) in other_method {
        f.not_converted(rs, reason);
    }

    let scheduler = scheduler(algo, persistence, port_hash, at, &mut f);
    let health = check::service_health(&checks, udp, &mut f);
    let weights = scale_weights(&backends, &mut f);
    Draft {
        at,
        service: Ok(Service {
            comments: Vec::new(),
            vip,
            udp,
            scheduler,
            backends: backends
                .iter()
                .zip(weights)
                .map(|((addr, _, _), w)| (*addr, w))
                .collect(),
            health,
        }),
        findings: f,
    }
}

/// One DR `real_server ADDR [PORT] { ... }`: the backend and its checks, or none (reported).
fn real_server(
    rs: &Node,
    vip: SocketAddr,
    udp: bool,
    vs_timing: &Timing,
    seen: &[(IpAddr, i64, At)],
    f: &mut Findings,
) -> Option<(IpAddr, i64, check::RsCheck)> {
    let Some(Ok(addr)) = rs.arg(0).map(str::parse::<IpAddr>) else {
        f.not_converted(rs, "not an IP address");
        return None;
    };
    if addr.is_ipv4() != vip.is_ipv4() {
        f.not_converted(
            rs,
            &format!(
                "an {} real server of an {} virtual_server: direct routing forwards the client's packet unchanged, \
                 so a service's backends are of its VIP's family",
                family(addr),
                family(vip.ip())
            ),
        );
        return None;
    }
    if let Some(reason) = unusable_backend(addr) {
        f.not_converted(rs, reason);
        return None;
    }
    if seen.iter().any(|(a, _, _)| *a == addr) {
        f.not_converted(
            rs,
            "the address is a backend of this service already (direct routing keeps the VIP port, so a second port is the same backend)",
        );
        return None;
    }
    let rs_port = match rs.arg(1) {
        None => vip.port(),
        Some(p) => match parse_int(p) {
            Some(p @ 1..=65535) => u16::try_from(p).unwrap_or(vip.port()),
            _ => {
                f.not_converted(rs, "the port is not 1 to 65535");
                return None;
            }
        },
    };
    if rs_port != vip.port() {
        f.note(
            rs.at(),
            format!(
                "real_server {addr} port {rs_port}: direct routing keeps the VIP port {} (as IPVS DR does)",
                vip.port()
            ),
        );
    }
    let mut weight = 1i64;
    let mut timing = vs_timing.clone();
    let mut checkers = Vec::new();
    for n in rs.children() {
        if check::timing_keyword(n, &mut timing, f) {
            continue;
        }
        match n.key() {
            "weight" => match n.arg(0).and_then(parse_int) {
                Some(0) => {
                    f.not_converted(
                        rs,
                        "weight 0 (quiesced: no new connections) has no lbd equivalent; add the backend and `lbctl drain` it",
                    );
                    return None;
                }
                Some(w @ 1..) => weight = w,
                _ => f.not_converted(n, "expected a positive integer; weight 1 is used"),
            },
            "lvs_method" | "lb_kind" => {}
            k if check::is_checker(k) => checkers.push(n),
            "notify_up" | "notify_down" => f.not_converted(
                n,
                "lbd runs no script on a backend state change: watch lbd_backend_up in its metrics",
            ),
            "uthreshold" | "lthreshold" => {
                f.not_converted(n, "lbd has no per-backend connection limits");
            }
            "smtp_alert" => {
                f.not_converted(n, "lbd sends no mail: alert on its Prometheus metrics");
            }
            "snmp_name" => f.not_converted(n, "lbd has no SNMP"),
            _ => f.not_converted(
                n,
                "no lbd equivalent (or not a keepalived real_server keyword)",
            ),
        }
    }
    let check =
        check::real_server_checks(rs, addr, rs_port, vip.port(), udp, &timing, &checkers, f);
    Some((addr, weight, check))
}

/// Picks lbd's scheduler for an IPVS scheduler and persistence, keeping direct routing.
fn scheduler(
    algo: Option<(String, At)>,
    persistence: Option<(String, At)>,
    port_hash: Option<At>,
    vs_at: At,
    f: &mut Findings,
) -> &'static str {
    const PROXY_ONLY: &str = "lbd's rr, wrr and lc run only in its userspace proxy, which would replace direct routing for every service";
    if let Some((timeout, at)) = persistence {
        f.note(
            at,
            format!(
                "persistence_timeout {timeout} → scheduler sh: lbd keeps each client address on one backend for as long as the backends \
                 are unchanged, with no timeout{}",
                algo.as_ref()
                    .map(|(a, _)| format!(" (lb_algo {a} then only matters for new clients in IPVS)"))
                    .unwrap_or_default()
            ),
        );
        return "sh";
    }
    let (name, at) = algo.unwrap_or_else(|| ("wlc".to_owned(), vs_at));
    let (scheduler, message, warning) = match name.as_str() {
        "rr" | "wrr" => (
            "maglev",
            format!(
                "lb_algo {name} → maglev: flows spread evenly over the backends by consistent hashing{}, not in strict turn; {PROXY_ONLY}",
                if name == "wrr" { " in proportion to their weights" } else { "" }
            ),
            false,
        ),
        "lc" | "wlc" | "sed" | "nq" => (
            "maglev",
            format!(
                "lb_algo {name} → maglev: new flows spread by weight, not by open connections (the XDP path keeps no connection counts); {PROXY_ONLY}"
            ),
            false,
        ),
        "twos" => (
            "maglev",
            "lb_algo twos → maglev: new flows spread by weight by consistent hashing instead of weighted random choice".to_owned(),
            false,
        ),
        "sh" | "mh" if port_hash.is_some() => (
            "maglev",
            format!("lb_algo {name} with the port in the hash → maglev: consistent hashing on the whole connection (addresses and ports)"),
            false,
        ),
        "sh" => (
            "sh",
            "lb_algo sh → sh: one client address, one backend; lbd hashes with Maglev, so fewer clients move when a backend changes".to_owned(),
            false,
        ),
        "mh" => (
            "sh",
            "lb_algo mh → sh: Maglev hashing on the client address, as IPVS mh does by default".to_owned(),
            false,
        ),
        "dh" | "lblc" | "lblcr" => (
            "maglev",
            format!(
                "lb_algo {name} converted as maglev: it picks backends by destination address (for cache clusters); \
                 an lbd service has one destination, so flows spread by consistent hashing instead"
            ),
            true,
        ),
        "fo" | "ovf" => (
            "maglev",
            format!(
                "lb_algo {name} converted as maglev: lbd has no failover or overflow order; flows spread over all backends up, by weight"
            ),
            true,
        ),
        "" => (
            "maglev",
            "lb_algo without a name converted as maglev (keepalived's default is wlc)".to_owned(),
            true,
        ),
        other => (
            "maglev",
            format!("lb_algo {} converted as maglev: not an IPVS scheduler lb-import knows", shorten(other)),
            true,
        ),
    };
    let message = if at == vs_at && !warning {
        format!("no lb_algo, keepalived's default is wlc: {message}")
    } else {
        message
    };
    if warning {
        f.warn(at, message);
    } else {
        f.note(at, message);
    }
    scheduler
}

/// lbd weights are 1 to 1000: larger IPVS weights are scaled down together, keeping their ratios.
fn scale_weights(backends: &[(IpAddr, i64, At)], f: &mut Findings) -> Vec<u32> {
    let max = backends.iter().map(|(_, w, _)| *w).max().unwrap_or(1);
    let divisor = if max > MAX_WEIGHT {
        let d = (max + MAX_WEIGHT - 1) / MAX_WEIGHT;
        if let Some((_, _, at)) = backends.iter().find(|(_, w, _)| *w == max) {
            f.warn(
                *at,
                format!("weights scaled down by {d} (rounded, at least 1): lbd's weights are 1 to {MAX_WEIGHT}"),
            );
        }
        d
    } else {
        1
    };
    backends
        .iter()
        .map(|(_, w, _)| {
            let scaled = ((w + divisor / 2) / divisor).clamp(1, MAX_WEIGHT);
            u32::try_from(scaled).unwrap_or(1)
        })
        .collect()
}

/// "IPv4" or "IPv6".
fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Why lbd cannot serve `ip` as a VIP (as lbd's config loader checks it), if it cannot.
fn unusable_vip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) if a.is_unspecified() || a.is_multicast() || a.is_broadcast() => {
            Some("not a unicast address")
        }
        IpAddr::V4(_) => None,
        IpAddr::V6(a) if a.is_unspecified() || a.is_multicast() => Some("not a unicast address"),
        IpAddr::V6(a) if a.is_unicast_link_local() => Some(
            "a link-local address cannot be an lbd VIP: it means something on one link only; use a global or unique local address",
        ),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            Some("an IPv4-mapped IPv6 address: write the virtual_server with the IPv4 address")
        }
        IpAddr::V6(_) => None,
    }
}

/// Why `ip` cannot be an lbd backend (as lbd's config loader checks it), if it cannot.
fn unusable_backend(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a)
            if a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback() =>
        {
            Some("lbd needs a unicast address on the network for a backend")
        }
        IpAddr::V4(_) => None,
        IpAddr::V6(a)
            if a.is_unspecified()
                || a.is_multicast()
                || a.is_loopback()
                || a.is_unicast_link_local()
                || a.to_ipv4_mapped().is_some() =>
        {
            Some(
                "lbd needs a unicast address on the network for a backend (not loopback, link-local or IPv4-mapped)",
            )
        }
        IpAddr::V6(_) => None,
    }
}
