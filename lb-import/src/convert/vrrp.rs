//! `vrrp_instance` → `[vrrp]`: identity, timers, VIPs, unicast peers, tracked interfaces and the
//! notify program; what lbd's VRRPv3 speaker has no setting for is reported.
//!
//! An instance is IPv4 or IPv6, as in keepalived: the family of its first address (VIP, unicast
//! peer or source address) is the instance's, and addresses of the other family are not taken
//! (keepalived ignores them). lbd runs one virtual router per family of `[vrrp].vips`; the
//! driver merges an IPv4 and an IPv6 instance into one `[vrrp]` when their settings match.

use std::net::IpAddr;

use super::{Findings, Globals, parse_int, parse_timer, shorten, valid_ifname};
use crate::emit::Vrrp;
use crate::include::At;
use crate::parser::Node;

/// Most VIPs one VRRPv3 advert carries.
const MAX_VIPS: usize = 255;
/// Longest preempt delay lbd accepts, in milliseconds.
const MAX_PREEMPT_DELAY_MS: u64 = 3_600_000;
/// Most unicast peers and tracked interfaces taken (more would be a mistake; it also bounds the
/// duplicate checks).
const MAX_PEERS: usize = 255;
const MAX_TRACKS: usize = 255;
/// Largest weight of a tracked condition.
const MAX_TRACK_WEIGHT: i64 = 254;

/// A `vrrp_instance` as converted: its `[vrrp]` or why it has none.
pub(crate) struct Instance {
    pub name: String,
    pub at: At,
    pub vrrp: Result<Vrrp, String>,
    pub findings: Findings,
    /// Its interface, when valid.
    pub interface: Option<String>,
    /// Its family (keepalived's: that of its first address): IPv6 when true.
    pub ipv6: bool,
}

/// The family of an instance as keepalived decides it: that of the first VIP, unicast peer or
/// source address in the block (`virtual_ipaddress_excluded` may mix families and does not
/// count); IPv4 when it has none.
fn instance_family(node: &Node) -> bool {
    let parse = |text: &str| {
        let addr = text.split_once('/').map_or(text, |(a, _)| a);
        addr.parse::<IpAddr>().ok()
    };
    for n in node.children() {
        let found = match n.key() {
            "virtual_ipaddress" | "unicast_peer" => {
                n.children().iter().find_map(|line| parse(line.key()))
            }
            "unicast_src_ip" | "mcast_src_ip" => n.arg(0).and_then(parse),
            _ => None,
        };
        if let Some(addr) = found {
            return addr.is_ipv6();
        }
    }
    false
}

/// Converts one `vrrp_instance NAME { ... }`.
pub(crate) fn instance(node: &Node, globals: &Globals) -> Instance {
    let name = node.arg(0).unwrap_or("(unnamed)").to_owned();
    let at = node.at();
    let mut f = Findings::default();
    f.note(at, format!("vrrp_instance {name}"));
    let mut v = Vrrp {
        priority: 100,
        ..Vrrp::default()
    };
    let mut vrid: Option<u8> = None;
    let mut priority_given = false;
    let mut version: Option<(u8, At)> = None;
    let ipv6 = instance_family(node);
    // Addresses of the other family, not taken.
    let mut other_family = 0usize;
    let mut tracks: Vec<(String, i64, At)> = Vec::new();
    let mut interface: Option<String> = None;

    for n in node.children() {
        let key = n.key();
        match key {
            "state" => match n.arg(0) {
                Some("MASTER") => f.note(
                    n.at(),
                    "state MASTER: keepalived takes the master role at start; lbd starts as backup and takes it when it hears \
                     no higher priority for Master_Down_Interval (about 3 advert intervals), so the priority decides",
                ),
                Some("BACKUP") => f.note(n.at(), "state BACKUP: how lbd starts every router"),
                _ => f.not_converted(n, "expected MASTER or BACKUP"),
            },
            "interface" => match n.arg(0) {
                Some(i) if valid_ifname(i) => {
                    interface = Some(i.to_owned());
                    v.interface = Some(i.to_owned());
                }
                _ => f.not_converted(n, "not an interface name (1 to 15 characters, no '/' or space)"),
            },
            "virtual_router_id" => match n.arg(0).and_then(parse_int) {
                Some(id @ 1..=255) => vrid = u8::try_from(id).ok(),
                _ => f.not_converted(n, "expected 1 to 255"),
            },
            "priority" => match n.arg(0).and_then(parse_int) {
                Some(p @ 1..=255) => {
                    v.priority = u8::try_from(p).unwrap_or(100);
                    priority_given = true;
                }
                _ => f.not_converted(n, "expected 1 to 255; keepalived's default 100 is used"),
            },
            "advert_int" => match n.arg(0).and_then(parse_timer) {
                Some(ms) => {
                    // VRRPv3 carries centiseconds.
                    let rounded = (ms + 5) / 10 * 10;
                    if !(10..=40_950).contains(&rounded) {
                        f.not_converted(n, "VRRPv3 advert intervals are 0.01 to 40.95 s; lbd's default 1 s is used");
                    } else {
                        if rounded != ms {
                            f.note(n.at(), format!("advert_int {ms} ms rounded to {rounded} ms (VRRPv3 carries centiseconds)"));
                        }
                        v.advert_interval_ms = Some(rounded);
                    }
                }
                None => f.not_converted(n, "expected seconds, e.g. 1 or 0.5"),
            },
            "nopreempt" | "no_preempt" => v.preempt = Some(false),
            "preempt" => v.preempt = Some(true),
            "preempt_delay" => match n.arg(0).and_then(parse_timer) {
                Some(ms) if ms <= MAX_PREEMPT_DELAY_MS => v.preempt_delay_ms = Some(ms),
                _ => f.not_converted(n, "expected seconds up to 3600"),
            },
            "virtual_ipaddress" | "virtual_ipaddress_excluded" => {
                if key == "virtual_ipaddress_excluded" {
                    f.note(
                        n.at(),
                        "virtual_ipaddress_excluded: lbd holds these as VIPs like the others and lists them in its adverts",
                    );
                }
                let excluded = key == "virtual_ipaddress_excluded";
                for line in n.children() {
                    let family = Family { ipv6, excluded };
                    if !vip(line, &mut v, interface.as_deref(), family, &mut f) {
                        other_family += 1;
                    }
                }
            }
            "unicast_peer" => {
                for line in n.children() {
                    match line.key().parse::<IpAddr>() {
                        Ok(a) if a.is_ipv6() != ipv6 => f.not_converted(
                            line,
                            &format!(
                                "an {} peer of an {} instance (keepalived takes an instance's family from its first address and skips \
                                 peers of the other): put it in an {} vrrp_instance",
                                family_name(a.is_ipv6()),
                                family_name(ipv6),
                                family_name(a.is_ipv6())
                            ),
                        ),
                        Ok(a) if v.unicast_peers.contains(&a) => {
                            f.not_converted(line, "listed twice");
                        }
                        Ok(_) if v.unicast_peers.len() >= MAX_PEERS => {
                            f.not_converted(line, "lb-import takes at most 255 unicast peers");
                        }
                        Ok(a) => {
                            v.unicast_peers.push(a);
                            if !line.args.is_empty() {
                                f.warn(
                                    line.at(),
                                    format!(
                                        "unicast_peer {a}: options {} not converted: lbd accepts adverts from its peers with TTL 255 only",
                                        shorten(&line.args.iter().map(|w| w.text.as_str()).collect::<Vec<_>>().join(" "))
                                    ),
                                );
                            }
                        }
                        Err(_) => f.not_converted(line, "not an IP address"),
                    }
                }
            }
            "unicast_src_ip" | "mcast_src_ip" => f.not_converted(
                n,
                if ipv6 {
                    "lbd sends IPv6 adverts from the interface's link-local address (RFC 5798)"
                } else {
                    "lbd sends adverts from the interface's first IPv4 address that is not a VIP"
                },
            ),
            "track_interface" => {
                for line in n.children() {
                    track_interface(line, &mut tracks, &mut f);
                }
            }
            "notify" => notify(n, &mut v, &mut f),
            "notify_master" | "notify_backup" | "notify_fault" | "notify_stop" | "notify_deleted"
            | "notify_master_rx_lower_pri" => f.not_converted(
                n,
                "lbd runs one notify program, with the new state (MASTER, BACKUP or INIT) as its argument: \
                 write one that dispatches on it and set it as [vrrp].notify",
            ),
            "version" => match n.arg(0) {
                Some("2") => version = Some((2, n.at())),
                Some("3") => version = Some((3, n.at())),
                _ => f.not_converted(n, "expected 2 or 3"),
            },
            "authentication" | "auth_hmac" => f.not_converted(
                n,
                "VRRPv3 (RFC 5798) has no authentication: lbd sends and expects none, as keepalived does for version 3",
            ),
            "accept" => f.note(n.at(), "accept: lbd's data path serves the VIPs on the master"),
            "no_accept" => f.not_converted(n, "lbd's data path serves the VIPs on the master; it has no no_accept mode"),
            "track_script" | "track_file" | "track_process" | "track_bfd" => f.not_converted(
                n,
                "lbd tracks no scripts, files, processes or BFD sessions: its tracked conditions are \
                 track_no_backend, track_datapath and track_interfaces",
            ),
            k if k.starts_with("garp_") => f.not_converted(
                n,
                "lbd's gratuitous ARP schedule is fixed: 5 on becoming master, 5 more 5 s later",
            ),
            "smtp_alert" => f.not_converted(n, "lbd sends no mail: alert on its Prometheus metrics"),
            "use_vmac" | "vmac_xmit_base" | "use_vmac_addr" | "use_ipvlan" => f.not_converted(
                n,
                "lbd holds the VIPs on the interface itself, with the interface's MAC address",
            ),
            "virtual_routes" | "virtual_rules" => f.not_converted(
                n,
                "lbd adds and removes only the VIPs on a state change; routes and rules are not managed",
            ),
            "lvs_sync_daemon_interface" => f.not_converted(
                n,
                "lbd has no connection sync: both nodes build the same Maglev tables, so flows find the same backend after a failover",
            ),
            "dont_track_primary" => f.not_converted(
                n,
                "lbd does not track its own interface unless it is listed in [vrrp].track_interfaces",
            ),
            "strict_mode" => f.not_converted(
                n,
                "lbd follows RFC 5798 without keepalived's strict mode (no_accept is not applied)",
            ),
            _ => f.not_converted(n, "no lbd equivalent (or not a keepalived vrrp_instance keyword)"),
        }
    }

    // Positive weights add to the priority while the interface is up; lbd only subtracts while
    // it is down, so the same effective priorities need the weights in the base priority.
    let added: i64 = tracks.iter().map(|(_, w, _)| *w).filter(|w| *w > 0).sum();
    if added > 0 && v.priority != 255 {
        let raised = (i64::from(v.priority) + added).min(254);
        if let Some((_, _, at)) = tracks.iter().find(|(_, w, _)| *w > 0) {
            if i64::from(v.priority) + added > 254 {
                f.warn(
                    *at,
                    format!(
                        "track_interface positive weights: priority {} plus {added} is capped at 254 in lbd \
                         (keepalived caps the effective priority the same way, but the weights below are taken off 254)",
                        v.priority
                    ),
                );
            } else {
                f.note(
                    *at,
                    format!(
                        "track_interface positive weights: keepalived adds them while an interface is up; \
                         lbd takes them off while it is down, so the priority is {} + {added} = {raised}",
                        v.priority
                    ),
                );
            }
        }
        v.priority = u8::try_from(raised).unwrap_or(254);
    }
    for (name, w, at) in tracks {
        if v.track_interfaces.len() >= MAX_TRACKS {
            f.warn(
                at,
                format!("track_interface {name} not converted: lb-import takes at most {MAX_TRACKS} tracked interfaces"),
            );
            continue;
        }
        if v.track_interfaces.iter().any(|(n, _)| *n == name) {
            f.warn(
                at,
                format!("track_interface {name} not converted: listed twice"),
            );
            continue;
        }
        v.track_interfaces.push((
            name,
            u8::try_from(w.abs().clamp(1, MAX_TRACK_WEIGHT)).unwrap_or(1),
        ));
    }
    if !priority_given {
        f.note(at, "no priority: keepalived's default 100");
    }

    match (ipv6, version) {
        // keepalived runs IPv6 instances as VRRPv3 whatever the version says.
        (true, Some((2, vat))) => f.note(
            vat,
            "version 2: keepalived runs IPv6 instances as VRRPv3 anyway, as lbd does",
        ),
        (true, _) => {}
        (false, version) => match version.or(globals.vrrp_version) {
            Some((3, _)) => {}
            Some((_, vat)) => f.warn(
                vat,
                "VRRP version 2 not converted: lbd speaks VRRPv3 (RFC 5798) only; keepalived peers of this router need version 3",
            ),
            None => f.warn(
                at,
                "VRRP version 2 (keepalived's default) not converted: lbd speaks VRRPv3 (RFC 5798) only; \
                 keepalived peers of this router need `vrrp_version 3`",
            ),
        },
    }

    let vrrp = match vrid {
        None => Err(format!(
            "vrrp_instance {name} not converted: it has no valid virtual_router_id (1 to 255)"
        )),
        Some(_) if v.vips.is_empty() && other_family > 0 => Err(format!(
            "vrrp_instance {name} not converted: it has no {fam} virtual_ipaddress, and it is {fam} \
             (keepalived takes an instance's family from its first address and ignores the other family's)",
            fam = family_name(ipv6)
        )),
        Some(_) if v.vips.is_empty() => Err(format!(
            "vrrp_instance {name} not converted: it has no virtual_ipaddress (lbd's VRRP router needs at least one VIP)"
        )),
        Some(id) => {
            v.vrid = id;
            Ok(v)
        }
    };
    Instance {
        name,
        at,
        vrrp,
        findings: f,
        interface,
        ipv6,
    }
}

fn family_name(ipv6: bool) -> &'static str {
    if ipv6 { "IPv6" } else { "IPv4" }
}

/// The family of the instance a VIP line is in, and whether it is `virtual_ipaddress_excluded`.
#[derive(Debug, Clone, Copy)]
struct Family {
    ipv6: bool,
    excluded: bool,
}

/// One `virtual_ipaddress` line: `ADDR[/PREFIX] [dev IF] [label L] [scope S] [brd B] ...`;
/// false when the address is of the other family than the instance's (reported).
fn vip(
    line: &Node,
    v: &mut Vrrp,
    interface: Option<&str>,
    family: Family,
    f: &mut Findings,
) -> bool {
    let text = line.key();
    let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
    let Ok(addr) = addr.parse::<IpAddr>() else {
        f.not_converted(line, "not an IP address");
        return true;
    };
    if addr.is_ipv6() != family.ipv6 {
        let (ours, theirs) = (family_name(family.ipv6), family_name(addr.is_ipv6()));
        let how = if family.excluded {
            "keepalived holds it on the master without advertising it; lbd holds each VIP in the virtual router of its family"
        } else {
            "keepalived takes an instance's family from its first address and ignores addresses of the other"
        };
        f.not_converted(
            line,
            &format!(
                "an {theirs} address in an {ours} vrrp_instance: {how}; put it in an {theirs} vrrp_instance \
                 (lb-import merges it into [vrrp] when its settings match this one's)"
            ),
        );
        return false;
    }
    let unusable = match addr {
        IpAddr::V4(a) => a.is_unspecified() || a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_unspecified() || a.is_multicast(),
    };
    if unusable {
        f.not_converted(line, "not a unicast address");
        return true;
    }
    if let IpAddr::V6(a) = addr
        && a.to_ipv4_mapped().is_some()
    {
        f.not_converted(
            line,
            "an IPv4-mapped IPv6 address: write it as IPv4, in an IPv4 vrrp_instance",
        );
        return true;
    }
    if v.vips.contains(&addr) {
        f.not_converted(line, "listed twice");
        return true;
    }
    if v.vips.len() >= MAX_VIPS {
        f.not_converted(line, "a VRRPv3 advert carries at most 255 addresses");
        return true;
    }
    let host = if addr.is_ipv4() { "32" } else { "128" };
    if !prefix.is_empty() && prefix != host {
        f.note(
            line.at(),
            format!("{addr}/{prefix}: lbd adds VIPs as /{host}; the subnet route comes from the interface's own address"),
        );
    }
    let mut args = line.args.iter();
    while let Some(opt) = args.next() {
        match opt.text.as_str() {
            "dev" => {
                let dev = args.next().map(|w| w.text.as_str()).unwrap_or_default();
                if Some(dev) != interface {
                    f.warn(
                        opt.at,
                        format!(
                            "{addr} dev {dev} not converted: lbd adds every VIP on [vrrp].interface ({})",
                            interface.unwrap_or("daemon.interface")
                        ),
                    );
                }
            }
            "label" => {
                let label = args.next().map(|w| w.text.as_str()).unwrap_or_default();
                f.note(
                    opt.at,
                    format!("{addr} label {label}: lbd adds VIPs without a label (labels only name ifconfig aliases)"),
                );
            }
            "scope" if args.as_slice().first().is_some_and(|w| w.text == "global") => {
                args.next();
            }
            other => {
                // Options with a value: take the value with them.
                let value = if matches!(
                    other,
                    "brd" | "scope" | "peer" | "preferred_lft" | "track_group"
                ) {
                    args.next()
                        .map(|w| format!(" {}", w.text))
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                f.warn(
                    opt.at,
                    format!(
                        "{addr}: option {}{value} not converted: lbd adds VIPs as plain /{host} addresses",
                        shorten(other)
                    ),
                );
            }
        }
    }
    v.vips.push(addr);
    true
}

/// One `track_interface` line: `IF [weight W [reverse]]`.
fn track_interface(line: &Node, tracks: &mut Vec<(String, i64, At)>, f: &mut Findings) {
    let name = line.key();
    if !valid_ifname(name) {
        f.not_converted(
            line,
            "not an interface name (1 to 15 characters, no '/' or space)",
        );
        return;
    }
    let weight = match (line.arg(0), line.arg(1)) {
        (None, _) => None,
        (Some("weight"), Some(w)) => match w.parse::<i64>() {
            Ok(w) if (-254..=254).contains(&w) => Some(w),
            _ => {
                f.not_converted(line, "weight must be -254 to 254");
                return;
            }
        },
        _ => {
            f.not_converted(line, "expected `IF` or `IF weight W`");
            return;
        }
    };
    if line.args.len() > 2 {
        f.not_converted(
            line,
            "reverse has no lbd equivalent: a tracked interface lowers the priority while it is down",
        );
        return;
    }
    match weight {
        None | Some(0) => {
            f.warn(
                line.at(),
                format!(
                    "track_interface {name} without a weight converted with weight {MAX_TRACK_WEIGHT}: keepalived puts the instance in FAULT \
                     (it gives up the VIPs) while {name} is down; lbd lowers the priority to 1, so any running peer takes over, \
                     but a node alone keeps the VIPs"
                ),
            );
            // A penalty while down, like a negative weight.
            tracks.push((name.to_owned(), -MAX_TRACK_WEIGHT, line.at()));
        }
        Some(w) => tracks.push((name.to_owned(), w, line.at())),
    }
}

/// `notify PROGRAM [user [group]]`.
fn notify(n: &Node, v: &mut Vrrp, f: &mut Findings) {
    let Some(program) = n.arg(0) else {
        f.not_converted(n, "no program given");
        return;
    };
    if program.split_whitespace().count() != 1 || !program.starts_with('/') {
        f.not_converted(
            n,
            "lbd runs its notify program by absolute path without arguments: wrap the command in a script",
        );
        return;
    }
    if n.args.len() > 1 {
        f.warn(
            n.at(),
            "notify user/group not converted: lbd runs its notify program as the user lbd runs as",
        );
    }
    f.warn(
        n.at(),
        format!(
            "notify {program} converted with other arguments: keepalived runs it as `{program} INSTANCE NAME STATE PRIORITY`, \
             lbd as `{program} STATE` (MASTER, BACKUP or INIT; the previous state in VRRP_PREVIOUS_STATE): adapt the script"
        ),
    );
    v.notify = Some(program.to_owned());
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use std::net::Ipv4Addr;

    use super::*;
    use crate::include::{MemFs, load};
    use crate::parser::parse;

    fn convert(text: &str) -> Instance {
        let files = Default::default();
        let source = load(text, Path::new("k.conf"), &MemFs::new(&files)).unwrap();
        let nodes = parse(&source).unwrap();
        instance(&nodes[0], &Globals::default())
    }

    fn messages(i: &Instance) -> Vec<String> {
        i.findings.0.iter().map(|f| f.message.clone()).collect()
    }

    #[test]
    fn full_instance() {
        let i = convert(
            "vrrp_instance VI_1 {\n state BACKUP\n interface eth1\n virtual_router_id 7\n priority 150\n advert_int 0.5\n \
             nopreempt\n preempt_delay 2.5\n version 3\n virtual_ipaddress {\n 10.0.0.1/24 dev eth1 label eth1:1\n 10.0.0.2\n }\n \
             unicast_peer {\n 10.0.0.3\n }\n track_interface {\n eth2 weight -30\n }\n notify /usr/local/bin/n\n}\n",
        );
        let v = i.vrrp.unwrap();
        assert_eq!((v.vrid, v.priority), (7, 150));
        assert_eq!(v.advert_interval_ms, Some(500));
        assert_eq!(v.preempt, Some(false));
        assert_eq!(v.preempt_delay_ms, Some(2500));
        assert_eq!(v.interface.as_deref(), Some("eth1"));
        assert_eq!(
            v.vips,
            [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]
        );
        assert_eq!(v.unicast_peers, [Ipv4Addr::new(10, 0, 0, 3)]);
        assert_eq!(v.track_interfaces, [("eth2".to_owned(), 30)]);
        assert_eq!(v.notify.as_deref(), Some("/usr/local/bin/n"));
        let warnings: Vec<&str> = i
            .findings
            .0
            .iter()
            .filter(|f| f.warning)
            .map(|f| f.message.as_str())
            .collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("adapt the script"));
    }

    #[test]
    fn positive_track_weights_raise_the_priority() {
        let i = convert(
            "vrrp_instance V {\n virtual_router_id 1\n priority 100\n version 3\n virtual_ipaddress {\n 10.0.0.1\n }\n \
             track_interface {\n eth1 weight 2\n eth2 weight -2\n eth3\n }\n}\n",
        );
        let msgs = messages(&i);
        let v = i.vrrp.unwrap();
        assert_eq!(v.priority, 102);
        assert_eq!(
            v.track_interfaces,
            [
                ("eth1".to_owned(), 2),
                ("eth2".to_owned(), 2),
                ("eth3".to_owned(), 254)
            ]
        );
        assert!(msgs.iter().any(|m| m.contains("100 + 2 = 102")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("FAULT")), "{msgs:?}");
    }

    #[test]
    fn refusals_say_why() {
        let cases = [
            (
                "vrrp_instance V {\n virtual_ipaddress {\n 10.0.0.1\n }\n}\n",
                "no valid virtual_router_id",
            ),
            (
                "vrrp_instance V {\n virtual_router_id 300\n virtual_ipaddress {\n 10.0.0.1\n }\n}\n",
                "no valid virtual_router_id",
            ),
            (
                "vrrp_instance V {\n virtual_router_id 3\n}\n",
                "no virtual_ipaddress",
            ),
            (
                "vrrp_instance V {\n virtual_router_id 3\n unicast_peer {\n 10.0.0.2\n }\n virtual_ipaddress {\n 2001:db8::1\n }\n}\n",
                "it has no IPv4 virtual_ipaddress, and it is IPv4",
            ),
        ];
        for (text, want) in cases {
            let e = convert(text).vrrp.unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn version_2_is_reported_where_it_is_set() {
        let i = convert(
            "vrrp_instance V {\n virtual_router_id 3\n version 2\n virtual_ipaddress {\n 10.0.0.1\n }\n}\n",
        );
        let w: Vec<&Finding> = i.findings.0.iter().filter(|f| f.warning).collect();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].at.line, 3);
        assert!(w[0].message.contains("VRRPv3"));
    }

    /// An IPv6 instance: VIPs (link-local ones too) and peers of its family; the other
    /// family's addresses are reported as keepalived ignores them; no VRRPv2 warning.
    #[test]
    fn ipv6_instance() {
        let i = convert(
            "vrrp_instance V6 {\n interface eth1\n virtual_router_id 7\n priority 150\n unicast_src_ip fe80::1\n \
             virtual_ipaddress {\n fe80::100/64\n 2001:db8::100/64 dev eth1\n 198.18.0.100\n ::ffff:198.18.0.101\n ff02::1\n }\n \
             virtual_ipaddress_excluded {\n 198.18.0.102\n }\n unicast_peer {\n fe80::2\n 198.18.0.3\n }\n}\n",
        );
        assert!(i.ipv6);
        let msgs = messages(&i);
        let v = i.vrrp.unwrap();
        let addrs = |list: &[IpAddr]| list.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(addrs(&v.vips), ["fe80::100", "2001:db8::100"]);
        assert_eq!(addrs(&v.unicast_peers), ["fe80::2"]);
        let has = |s: &str| msgs.iter().any(|m| m.contains(s));
        assert!(
            has(
                "unicast_src_ip fe80::1 not converted: lbd sends IPv6 adverts from the interface's link-local address"
            ),
            "{msgs:?}"
        );
        assert!(has("fe80::100/64: lbd adds VIPs as /128"), "{msgs:?}");
        assert!(
            has(
                "198.18.0.100 not converted: an IPv4 address in an IPv6 vrrp_instance: keepalived takes an instance's family"
            ),
            "{msgs:?}"
        );
        assert!(
            has(
                "198.18.0.102 not converted: an IPv4 address in an IPv6 vrrp_instance: keepalived holds it on the master"
            ),
            "{msgs:?}"
        );
        assert!(
            has("::ffff:198.18.0.101 not converted: an IPv4-mapped IPv6 address"),
            "{msgs:?}"
        );
        assert!(
            has("ff02::1 not converted: not a unicast address"),
            "{msgs:?}"
        );
        assert!(
            has("198.18.0.3 not converted: an IPv4 peer of an IPv6 instance"),
            "{msgs:?}"
        );
        assert!(
            !has("VRRP version 2"),
            "IPv6 instances are VRRPv3 in keepalived: {msgs:?}"
        );
    }

    /// keepalived takes the family from the first address, whichever block it is in.
    #[test]
    fn family_of_the_first_address() {
        let i = convert(
            "vrrp_instance V {\n virtual_router_id 7\n virtual_ipaddress_excluded {\n 2001:db8::1\n }\n \
             virtual_ipaddress {\n 198.18.0.100\n 2001:db8::100\n }\n}\n",
        );
        assert!(!i.ipv6, "excluded addresses do not set the family");
        let v = i.vrrp.unwrap();
        assert_eq!(v.vips, [Ipv4Addr::new(198, 18, 0, 100)]);
        let i = convert(
            "vrrp_instance V {\n virtual_router_id 7\n unicast_peer {\n 2001:db8::2\n }\n virtual_ipaddress {\n 198.18.0.100\n 2001:db8::100\n }\n}\n",
        );
        assert!(i.ipv6, "the first peer sets it");
        assert_eq!(
            i.vrrp.unwrap().vips,
            ["2001:db8::100".parse::<IpAddr>().unwrap()]
        );
    }

    use super::super::Finding;
}
