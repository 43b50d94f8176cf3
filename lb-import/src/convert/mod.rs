//! From the keepalived syntax tree to the lbd config: [`vrrp`] maps `vrrp_instance`, [`lvs`]
//! maps `virtual_server` and `real_server`, [`check`] maps the checkers to a service's `health`;
//! this file holds the driver, `global_defs` and the top-level keywords with no equivalent.
//!
//! Each part records [`Finding`]s: a note says how something was mapped, a warning says what did
//! not carry over and why. Both become `# keepalived FILE:LINE: ...` comments in the section they
//! concern; warnings are also returned to the caller (and are errors with `--strict`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::Warning;
use crate::emit::{LbdConfig, Service, Vrrp};
use crate::include::{At, Source};
use crate::parser::Node;

mod check;
mod lvs;
mod vrrp;

/// lbd's limits (lb-daemon `config`, lb-common): services, configured backends over all services
/// (half the backend ids), interface name length.
pub(crate) const MAX_SERVICES: usize = 512;
pub(crate) const MAX_BACKENDS: usize = 4096;
pub(crate) const MAX_IFNAME: usize = 15;

/// Interface name used when keepalived names none.
const DEFAULT_INTERFACE: &str = "eth0";

/// A note or a warning about one place in the keepalived configuration.
#[derive(Debug, Clone)]
pub(crate) struct Finding {
    pub at: At,
    pub message: String,
    pub warning: bool,
}

/// The findings of one part.
#[derive(Debug, Clone, Default)]
pub(crate) struct Findings(pub Vec<Finding>);

impl Findings {
    /// How something was mapped.
    pub(crate) fn note(&mut self, at: At, message: impl Into<String>) {
        self.0.push(Finding {
            at,
            message: message.into(),
            warning: false,
        });
    }

    /// Something that did not carry over, or carried over with different behaviour.
    pub(crate) fn warn(&mut self, at: At, message: impl Into<String>) {
        self.0.push(Finding {
            at,
            message: message.into(),
            warning: true,
        });
    }

    /// `statement not converted: reason`.
    pub(crate) fn not_converted(&mut self, node: &Node, reason: &str) {
        self.warn(
            node.at(),
            format!("{} not converted: {reason}", shorten(&node.line())),
        );
    }
}

/// A statement as quoted in a message: at most 120 characters.
pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 120;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX).collect();
        t.push_str("...");
        t
    }
}

/// Valid as a Linux interface name in lbd's config: 1 to 15 characters, no '/' or blank.
pub(crate) fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME
        && !name.contains(['/', ' ', '\0'])
        && !name.chars().any(char::is_control)
}

/// A keepalived `<TIMER>` (seconds, fractions allowed) in milliseconds, rounded; none when it is
/// not a non-negative decimal number.
pub(crate) fn parse_timer(text: &str) -> Option<u64> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if int.is_empty() && frac.is_empty()
        || int.len() > 9
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    // Microseconds from the first six fraction digits (keepalived's resolution), then rounded.
    let mut micros = 0u64;
    for i in 0..6 {
        let d = frac.as_bytes().get(i).map_or(0, |b| u64::from(b - b'0'));
        micros = micros * 10 + d;
    }
    Some(secs * 1000 + (micros + 500) / 1000)
}

/// A non-negative integer argument.
pub(crate) fn parse_int(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 18 {
        return None;
    }
    text.parse().ok()
}

/// Defaults from `global_defs` that the other parts need.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Globals {
    /// `vrrp_version` and where it is set.
    pub vrrp_version: Option<(u8, At)>,
}

/// The result of a conversion.
pub(crate) struct Converted {
    pub config: LbdConfig,
    /// Every warning, in the order of the configuration.
    pub warnings: Vec<Warning>,
    /// The warnings that refuse a whole `vrrp_instance` or `virtual_server`.
    pub refusals: Vec<Warning>,
}

/// Converts the tree.
pub(crate) fn convert(source: &Source, nodes: &[Node], name: &str) -> Converted {
    let mut global = Findings::default();
    for (at, message) in &source.skipped {
        global.warn(*at, message.clone());
    }
    let mut globals = Globals::default();
    for node in nodes.iter().filter(|n| n.key() == "global_defs") {
        global_defs(node, &mut globals, &mut global);
    }

    let mut instances = Vec::new();
    let mut drafts = Vec::new();
    for node in nodes {
        match node.key() {
            "global_defs" => {}
            "vrrp_instance" => instances.push(vrrp::instance(node, &globals)),
            "virtual_server" => drafts.push(lvs::virtual_server(node)),
            key => global.not_converted(node, top_level_reason(key)),
        }
    }

    let mut config = LbdConfig {
        source: name.to_owned(),
        ..LbdConfig::default()
    };
    let mut out = Output {
        source,
        warnings: Vec::new(),
    };

    // Services first: which VRRP instance to take depends on the VIPs they use.
    let mut refused: BTreeSet<usize> = BTreeSet::new();
    let mut keys = BTreeSet::new();
    let mut total_backends = 0usize;
    let mut services: Vec<(Service, Findings, At)> = Vec::new();
    for draft in drafts {
        match draft.service {
            Ok(service) => {
                let key = (service.vip, service.udp);
                let at = draft.at;
                let mut findings = draft.findings;
                if !keys.insert(key) {
                    global.warn(
                        at,
                        format!(
                            "virtual_server {} {} not converted: the same VIP, port and protocol are converted above already",
                            service.vip.ip(),
                            service.vip.port()
                        ),
                    );
                    continue;
                }
                if services.len() >= MAX_SERVICES {
                    global.warn(
                        at,
                        format!(
                            "virtual_server {} {} not converted: lbd runs at most {MAX_SERVICES} services",
                            service.vip.ip(),
                            service.vip.port()
                        ),
                    );
                    continue;
                }
                if total_backends + service.backends.len() > MAX_BACKENDS {
                    global.warn(
                        at,
                        format!(
                            "virtual_server {} {} not converted: lbd runs at most {MAX_BACKENDS} backends over all services",
                            service.vip.ip(),
                            service.vip.port()
                        ),
                    );
                    continue;
                }
                total_backends += service.backends.len();
                findings.0.sort_by_key(|f| f.at.seq);
                services.push((service, findings, at));
            }
            Err(reason) => {
                refused.insert(draft.at.seq);
                global.warn(draft.at, reason);
            }
        }
    }

    // [vrrp]: the convertible instance that holds the most service VIPs, the first of those on
    // a tie; and, merged in, the instance of the other family that holds the most of the
    // others among those whose settings match it. lbd runs one virtual router per family of
    // [vrrp].vips, with the same settings, so only settings that match can merge.
    let service_vips: BTreeSet<IpAddr> = services.iter().map(|(s, _, _)| s.vip.ip()).collect();
    let best = |take: &dyn Fn(usize, &vrrp::Instance) -> bool| {
        instances
            .iter()
            .enumerate()
            .filter(|(i, inst)| take(*i, inst))
            .filter_map(|(i, inst)| inst.vrrp.as_ref().ok().map(|v| (i, v)))
            .max_by_key(|(i, v)| {
                let held = v.vips.iter().filter(|a| service_vips.contains(a)).count();
                (held, std::cmp::Reverse(*i))
            })
            .map(|(i, _)| i)
    };
    let chosen = best(&|_, _| true);
    // The other family's instances whose settings differ from the chosen one's: what differs.
    let mut differ: BTreeMap<usize, String> = BTreeMap::new();
    if let Some(c) = chosen.and_then(|c| instances.get(c)) {
        for (i, inst) in instances.iter().enumerate() {
            if inst.ipv6 != c.ipv6
                && let Some(d) = differences(c, inst)
            {
                differ.insert(i, d);
            }
        }
    }
    let partner = chosen.and_then(|c| {
        let ipv6 = instances.get(c).is_some_and(|inst| inst.ipv6);
        best(&|i, inst| inst.ipv6 != ipv6 && !differ.contains_key(&i))
    });

    // daemon.interface: the chosen instance's, else any instance's, else a default.
    let interface_from = chosen
        .and_then(|i| instances.get(i))
        .filter(|inst| inst.interface.is_some())
        .or_else(|| instances.iter().find(|inst| inst.interface.is_some()));
    match interface_from.and_then(|inst| inst.interface.clone().map(|i| (i, inst))) {
        Some((interface, inst)) => {
            config.daemon_comments.push(format!(
                "keepalived {}:{}: interface {interface} of vrrp_instance {}",
                out.file(inst.at),
                inst.at.line,
                inst.name
            ));
            config.interface = interface;
        }
        None => {
            config.daemon_comments.push(format!(
                "no vrrp_instance names an interface: {DEFAULT_INTERFACE} is a placeholder; set the interface clients and backends are reached on"
            ));
            config.interface = DEFAULT_INTERFACE.to_owned();
        }
    }

    let name_of = |i: Option<usize>| {
        i.and_then(|i| instances.get(i))
            .map(|inst| inst.name.clone())
            .unwrap_or_default()
    };
    let chosen_name = name_of(chosen);
    let partner_name = name_of(partner);
    // How the instances [vrrp] is converted from are named in messages.
    let source_desc = if partner.is_some() {
        format!("vrrp_instances {chosen_name} and {partner_name}")
    } else {
        format!("vrrp_instance {chosen_name}")
    };
    let mut vrrp_vips: Option<Vec<IpAddr>> = None;
    let mut merged: Option<(Vrrp, Findings, bool)> = None;
    let mut partner_part: Option<(Vrrp, Findings, At)> = None;
    for (i, inst) in instances.into_iter().enumerate() {
        match inst.vrrp {
            Ok(v) if Some(i) == chosen => merged = Some((v, inst.findings, inst.ipv6)),
            Ok(v) if Some(i) == partner => partner_part = Some((v, inst.findings, inst.at)),
            Ok(v) => {
                let vips: Vec<String> = v.vips.iter().map(ToString::to_string).collect();
                let message = match differ.get(&i) {
                    Some(d) => format!(
                        "vrrp_instance {} not converted: [vrrp] is converted from vrrp_instance {chosen_name} and lbd runs both families' \
                         virtual routers with its settings, but this {} instance's differ: {d}; its VIPs ({}) do not fail over \
                         unless the settings match (lb-import then merges the two)",
                        inst.name,
                        if inst.ipv6 { "IPv6" } else { "IPv4" },
                        vips.join(", ")
                    ),
                    None if partner.is_some() => format!(
                        "vrrp_instance {} not converted: lbd runs one VRRP router per address family and [vrrp] is converted from {source_desc}; \
                         its VIPs ({}) do not fail over unless you move them into [vrrp].vips",
                        inst.name,
                        vips.join(", ")
                    ),
                    None => format!(
                        "vrrp_instance {} not converted: lbd runs one VRRP router per node and [vrrp] is converted from vrrp_instance {chosen_name}; \
                         its VIPs ({}) do not fail over unless you move them into [vrrp].vips",
                        inst.name,
                        vips.join(", ")
                    ),
                };
                global.warn(inst.at, message);
            }
            Err(reason) => {
                refused.insert(inst.at.seq);
                global.warn(inst.at, reason);
            }
        }
    }
    if let Some((mut v, mut findings, ipv6)) = merged {
        if let Some((p, p_findings, p_at)) = partner_part {
            merge(
                &mut v,
                &mut findings,
                ipv6,
                p,
                p_findings,
                p_at,
                (&chosen_name, &partner_name),
            );
        }
        if v.interface.as_deref() == Some(config.interface.as_str()) {
            v.interface = None;
        }
        findings.0.sort_by_key(|f| f.at.seq);
        let mut comments = Vec::new();
        out.flush(findings, &mut comments);
        v.comments = comments;
        vrrp_vips = Some(v.vips.clone());
        config.vrrp = Some(v);
    }

    for (mut service, mut findings, at) in services {
        if let Some(vips) = &vrrp_vips
            && !vips.contains(&service.vip.ip())
        {
            findings.warn(
                at,
                format!(
                    "VIP {} is not among the VIPs of {source_desc} ([vrrp].vips): it does not fail over with it; add it there if it should",
                    service.vip.ip()
                ),
            );
        }
        let mut comments = Vec::new();
        out.flush(findings, &mut comments);
        service.comments = comments;
        config.services.push(service);
    }

    global.0.sort_by_key(|f| f.at.seq);
    let mut comments = Vec::new();
    out.flush(global, &mut comments);
    config.global = comments;

    let mut warnings = out.warnings;
    warnings.sort_by_key(|(at, _)| at.seq);
    let refusals = warnings
        .iter()
        .filter(|(at, _)| refused.contains(&at.seq))
        .map(|(_, w)| w.clone())
        .collect();
    Converted {
        config,
        warnings: warnings.into_iter().map(|(_, w)| w).collect(),
        refusals,
    }
}

/// The settings lbd's one `[vrrp]` gives both families' virtual routers in which instance `b`
/// differs from `a` (`a`'s value after `b`'s name), none when they match.
fn differences(a: &vrrp::Instance, b: &vrrp::Instance) -> Option<String> {
    let (Ok(av), Ok(bv)) = (&a.vrrp, &b.vrrp) else {
        return None;
    };
    let mut d: Vec<String> = Vec::new();
    let mut differ = |setting: &str, theirs: String, ours: String| {
        if theirs != ours {
            d.push(format!("{setting} {theirs} ({}: {ours})", a.name));
        }
    };
    differ(
        "virtual_router_id",
        bv.vrid.to_string(),
        av.vrid.to_string(),
    );
    differ("priority", bv.priority.to_string(), av.priority.to_string());
    let advert = |v: &Vrrp| format!("{} ms", v.advert_interval_ms.unwrap_or(1000));
    differ("advert_int", advert(bv), advert(av));
    let interface = |i: &vrrp::Instance| i.interface.clone().unwrap_or_else(|| "(none)".into());
    differ("interface", interface(b), interface(a));
    let preempt = |v: &Vrrp| {
        if v.preempt.unwrap_or(true) {
            "preempt".to_owned()
        } else {
            "nopreempt".to_owned()
        }
    };
    differ("preemption", preempt(bv), preempt(av));
    let delay = |v: &Vrrp| format!("{} ms", v.preempt_delay_ms.unwrap_or(0));
    differ("preempt_delay", delay(bv), delay(av));
    let tracks = |v: &Vrrp| {
        let mut t: Vec<String> = v
            .track_interfaces
            .iter()
            .map(|(n, w)| format!("{n} weight -{w}"))
            .collect();
        t.sort();
        if t.is_empty() {
            "(none)".to_owned()
        } else {
            t.join(", ")
        }
    };
    differ("track_interface", tracks(bv), tracks(av));
    // lbd unicasts both families' adverts or neither's.
    let unicast = |v: &Vrrp| {
        if v.unicast_peers.is_empty() {
            "none (multicast)".to_owned()
        } else {
            "some (unicast)".to_owned()
        }
    };
    differ("unicast_peer", unicast(bv), unicast(av));
    if d.is_empty() {
        None
    } else {
        Some(d.join(", "))
    }
}

/// Merges the other family's matching instance `p` into the chosen one's `[vrrp]`: its VIPs and
/// unicast peers (IPv4 first), its findings, and its notify program when the chosen instance
/// has none.
fn merge(
    v: &mut Vrrp,
    findings: &mut Findings,
    ipv6: bool,
    p: Vrrp,
    p_findings: Findings,
    p_at: At,
    (name, p_name): (&str, &str),
) {
    let (ours, theirs) = if ipv6 {
        ("IPv6", "IPv4")
    } else {
        ("IPv4", "IPv6")
    };
    let mut f = p_findings;
    f.note(
        p_at,
        format!(
            "vrrp_instance {p_name} ({theirs}) merged into [vrrp] with vrrp_instance {name} ({ours}): their settings match, \
             and lbd runs one virtual router per family with them"
        ),
    );
    match (&v.notify, p.notify) {
        (_, None) => {}
        (None, Some(n)) => {
            f.note(
                p_at,
                format!(
                    "notify {n} of vrrp_instance {p_name}: lbd runs [vrrp].notify on the state changes of both families' routers"
                ),
            );
            v.notify = Some(n);
        }
        (Some(program), Some(n)) if *program == n => {}
        (Some(program), Some(n)) => f.warn(
            p_at,
            format!(
                "notify {n} of vrrp_instance {p_name} not converted: lbd runs one notify program, {program} of vrrp_instance {name}, \
                 for both families' routers"
            ),
        ),
    }
    let (vips, peers) = if ipv6 {
        (
            [p.vips, std::mem::take(&mut v.vips)].concat(),
            [p.unicast_peers, std::mem::take(&mut v.unicast_peers)].concat(),
        )
    } else {
        (
            [std::mem::take(&mut v.vips), p.vips].concat(),
            [std::mem::take(&mut v.unicast_peers), p.unicast_peers].concat(),
        )
    };
    v.vips = vips;
    v.unicast_peers = peers;
    findings.0.extend(f.0);
}

/// Turns findings into comments (and warnings).
struct Output<'a> {
    source: &'a Source,
    warnings: Vec<(At, Warning)>,
}

impl Output<'_> {
    fn file(&self, at: At) -> String {
        self.source
            .files
            .get(at.file)
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    fn flush(&mut self, findings: Findings, comments: &mut Vec<String>) {
        for f in findings.0 {
            let w = self.source.warning(f.at, f.message);
            comments.push(format!("keepalived {w}"));
            if f.warning {
                self.warnings.push((f.at, w));
            }
        }
    }
}

/// Why a top-level keyword other than `global_defs`, `vrrp_instance` and `virtual_server` is not
/// converted.
fn top_level_reason(key: &str) -> &'static str {
    match key {
        "vrrp_sync_group" => {
            "lbd runs one VRRP router per node, so there is no group to keep in sync (and the group's notify scripts are not run)"
        }
        "vrrp_script" | "vrrp_track_process" | "vrrp_track_file" | "track_file"
        | "track_process" => {
            "lbd tracks no scripts, processes or files: its tracked conditions are track_no_backend, track_datapath and track_interfaces in [vrrp]"
        }
        "virtual_server_group" => {
            "lbd services are one VIP and port each: write a virtual_server per address and port of the group"
        }
        "static_ipaddress" | "static_routes" | "static_rules" => {
            "lbd manages no static addresses, routes or rules: configure them in the system's network setup"
        }
        "garp_group" => {
            "lbd's gratuitous ARP schedule is fixed: 5 on becoming master, 5 more 5 s later"
        }
        "bfd_instance" => "lbd has no BFD",
        "SSL" => "lbd's health checks speak no TLS",
        "linkbeat_interfaces" | "static_track_group" | "track_group" => {
            "lbd has no equivalent (it watches the carrier of the interfaces named in [vrrp].track_interfaces)"
        }
        "net_namespace" | "net_namespace_ipvs" | "instance" | "use_pid_dir" | "child_wait_time" => {
            "lbd runs in the network namespace it is started in; start it there"
        }
        "global_defs" | "vrrp_instance" | "virtual_server" => "",
        _ => "not a keepalived top-level keyword lb-import knows",
    }
}

/// `global_defs`: `vrrp_version` is the default of the instances; everything else is reported.
fn global_defs(node: &Node, globals: &mut Globals, findings: &mut Findings) {
    for n in node.children() {
        let key = n.key();
        let reason = match key {
            "vrrp_version" => match n.arg(0) {
                Some("2") => {
                    globals.vrrp_version = Some((2, n.at()));
                    continue;
                }
                Some("3") => {
                    globals.vrrp_version = Some((3, n.at()));
                    continue;
                }
                _ => "expected 2 or 3",
            },
            "router_id" => {
                "lbd has no router id: its logs and metrics name the node by the instance Prometheus scrapes"
            }
            k if k.starts_with("notification_email")
                || k.starts_with("smtp_")
                || k == "email_faults"
                || k == "no_email_faults" =>
            {
                "lbd sends no mail: alert on its Prometheus metrics (packaging/prometheus/lbd-alerts.yml)"
            }
            "script_user" | "enable_script_security" => {
                "lbd runs no checker or tracking scripts; its one VRRP notify program runs as the user lbd runs as"
            }
            "vrrp_strict" => {
                "lbd follows RFC 5798 without keepalived's strict mode: it sends no authentication and accepts traffic to the VIPs (no_accept is not applied)"
            }
            k if k.starts_with("vrrp_garp") || k.starts_with("vrrp_gna") => {
                "lbd's gratuitous ARP schedule is fixed: 5 on becoming master, 5 more 5 s later"
            }
            "vrrp_mcast_group4" | "vrrp_mcast_group6" => {
                "lbd sends its adverts to 224.0.0.18, or to [vrrp].unicast_peers"
            }
            "vrrp_skip_check_adv_addr" | "vrrp_check_unicast_src" => {
                "lbd always checks an advert's VRRP fields; it has no switch for this"
            }
            k if k.starts_with("lvs_sync_daemon") => {
                "lbd has no connection sync: both nodes build the same Maglev tables, so flows find the same backend after a failover"
            }
            "enable_traps"
            | "enable_snmp_vrrp"
            | "enable_snmp_checker"
            | "enable_snmp_rfc"
            | "enable_snmp_rfcv2"
            | "enable_snmp_rfcv3"
            | "snmp_socket" => "lbd has no SNMP: it exports Prometheus metrics",
            k if k.starts_with("dynamic_interfaces") => "lbd needs its interface at start-up",
            _ => "a global setting with no lbd equivalent",
        };
        findings.not_converted(n, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers() {
        let cases = [
            ("1", Some(1000)),
            ("0.1", Some(100)),
            ("1.5", Some(1500)),
            (".25", Some(250)),
            ("2.71828", Some(2718)),
            ("0.0005", Some(1)),
            ("3.", Some(3000)),
            ("", None),
            (".", None),
            ("-1", None),
            ("1e3", None),
            ("1234567890", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_timer(text), want, "{text:?}");
        }
    }

    #[test]
    fn interface_names() {
        assert!(valid_ifname("eth0.1"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a-name-far-too-long"));
        assert!(!valid_ifname("a/b"));
    }
}
