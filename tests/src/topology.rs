//! The test network: one switch, a client, lbd nodes and backends, each host in its own namespace.
//!
//! ```text
//!                       namespace lbdt-<tag>-br: bridge br0
//!        vc        vl1        vl2        vb1        vb2        vb3      (bridge-side veth ends)
//!        |          |          |          |          |          |
//!      eth0       eth0       eth0       eth0       eth0       eth0      (one namespace each)
//!     client      lbd1       lbd2        b1         b2         b3
//!   198.18.0.10  .0.2       .0.3       .0.21      .0.22      .0.23     /24;  VIP 198.18.0.100
//!  2001:db8::10   ::2        ::3        ::21       ::22       ::23      /64;  VIP 2001:db8::100
//! ```
//! - Every host is dual-stack on the same link: beside `198.18.0.N` it has `2001:db8::N`, the IPv6 host part
//!   written with the same digits as the IPv4 last octet ([`Host::ip6`], [`ip6_mirror`]); the subnet behind
//!   the router mirrors the same way (`198.18.1.x` → `2001:db8:1::x`).
//! - MACs are deterministic and locally administered: a host's `eth0` is `02:00:00:00:00:<last octet>`
//!   ([`Host::mac`]); its bridge-side end is `02:00:00:00:01:<last octet>`; `br0` is `02:00:00:00:ff:01`.
//! - Backends are set up for direct routing: the VIP as /32 and [`VIP6`] as /128 on `lo`, `arp_ignore=1` and
//!   `arp_announce=2` (`all` and `eth0`), so they accept VIP traffic but never answer ARP (or neighbour
//!   solicitations) for it; see `Topology::configure` for why IPv6 needs no counterpart of those sysctls.
//! - The client's `eth0` has TX checksum offload off (native XDP on veth loses partial checksums); see
//!   [`Topology::set_tx_offload`].
//! - The VIP on an lbd node is added and removed by the test ([`Topology::add_vip`], [`Topology::add_vip6`]),
//!   later by VRRP.
//! - IPv6 is on in every host namespace (off in the bridge namespace: `br0` has no address), with duplicate
//!   address detection off (`accept_dad=0`, addresses added `nodad`), so every address, link-local ones too,
//!   is usable at once; router advertisements, autoconfiguration, router solicitations and redirects are
//!   off, so nothing but the test configures a host. Captures therefore also see the kernel's own IPv6
//!   chatter (MLD reports, neighbour discovery): filter by what you look for.
//! - For native-mode XDP on an lbd node's `eth0`, its bridge-side peer ([`Topology::bridge_port_of`] in
//!   [`Topology::bridge_ns`]) needs an XDP program too (a plain `XDP_PASS` one); the harness user attaches it.
//!
//! Dropping the [`Topology`] deletes every namespace (killing what runs inside); building first sweeps
//! leftovers with the same tag and those of dead test processes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::capture::{Capture, garp_frame, unsolicited_na_frame};
use crate::netns::{self, Netns, Spawned};
use crate::{Mac, NS_PREFIX};

/// The virtual IP the lbd nodes serve.
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// The IPv6 virtual IP the lbd nodes serve, `2001:db8::100` ([`VIP`] mirrored by [`ip6_mirror`]).
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
/// The test subnet (`/24`).
pub const SUBNET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// Prefix length of [`SUBNET`].
pub const PREFIX_LEN: u8 = 24;
/// The IPv6 test subnet (`2001:db8::/64`), on the same link as [`SUBNET`].
pub const SUBNET6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0);
/// Prefix length of [`SUBNET6`].
pub const PREFIX_LEN6: u8 = 64;
/// TCP port `lbd-test-backend` serves HTTP on in a topology.
pub const HTTP_PORT: u16 = 80;
/// UDP port `lbd-test-backend` answers on in a topology (on the VIP and on the backend's own address).
pub const UDP_PORT: u16 = 5353;
/// The bridge in the bridge namespace.
pub const BRIDGE: &str = "br0";
/// The interface name of every host.
pub const HOST_IF: &str = "eth0";
/// Most lbd nodes a topology can have (addresses .2 to .9).
pub const MAX_LBD_NODES: u8 = 8;
/// Most backends a topology can have (addresses .21 to .29).
pub const MAX_BACKENDS: u8 = 9;
/// How long [`Topology::start_backend`] waits for `ready`.
pub const BACKEND_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// With a router: the subnet the client talks to the VIP from, behind the router.
pub const REMOTE_SUBNET: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 0);
/// The client's address in [`REMOTE_SUBNET`].
pub const REMOTE_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
/// The router's address in [`REMOTE_SUBNET`].
pub const REMOTE_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// With a router: the IPv6 subnet behind it (`2001:db8:1::/64`, [`REMOTE_SUBNET`] mirrored).
pub const REMOTE_SUBNET6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0);
/// The client's address in [`REMOTE_SUBNET6`], `2001:db8:1::10`.
pub const REMOTE_CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
/// The router's address in [`REMOTE_SUBNET6`], `2001:db8:1::1`.
pub const REMOTE_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);

/// The decimal digits of `n` read as hex: `21` → `0x21`, so `198.18.0.21` and `2001:db8::21` read alike.
const fn digits_as_hex(n: u8) -> u16 {
    (n / 100) as u16 * 0x100 + (n / 10 % 10) as u16 * 0x10 + (n % 10) as u16
}

/// The IPv6 address mirroring a test IPv4 address `198.18.X.Y`: `2001:db8:X::Y`, with `X` and `Y` written
/// as the same digits (`198.18.0.21` → `2001:db8::21`, `198.18.1.10` → `2001:db8:1::10`,
/// [`VIP`] → [`VIP6`]). Other addresses map the same way from their last two octets.
pub const fn ip6_mirror(ip: Ipv4Addr) -> Ipv6Addr {
    let [_, _, c, d] = ip.octets();
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        digits_as_hex(c),
        0,
        0,
        0,
        0,
        digits_as_hex(d),
    )
}

/// The IP family of an address or a VIP, for the helpers that take one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// The `ip` option selecting the family: `-4` or `-6`.
    pub fn ip_flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    /// The VIP of this family ([`VIP`] or [`VIP6`]).
    pub fn vip(self) -> IpAddr {
        match self {
            Family::V4 => VIP.into(),
            Family::V6 => VIP6.into(),
        }
    }

    /// How messages name the VIP of this family: `the VIP` (as before IPv6), `the IPv6 VIP`.
    fn vip_label(self) -> &'static str {
        match self {
            Family::V4 => "the VIP",
            Family::V6 => "the IPv6 VIP",
        }
    }

    /// The VIP with its host prefix length, as `ip addr` takes it: `198.18.0.100/32`, `2001:db8::100/128`.
    pub fn vip_cidr(self) -> String {
        match self {
            Family::V4 => format!("{VIP}/32"),
            Family::V6 => format!("{VIP6}/128"),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}
/// The MAC of `br0`.
pub const BRIDGE_MAC: Mac = Mac([0x02, 0, 0, 0, 0xff, 0x01]);

/// A host of the topology. Indices start at 1: `Lbd(1)` is `lbd1`, `Backend(1)` is `b1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// The client, 198.18.0.10.
    Client,
    /// lbd node `n`, 198.18.0.(1+n).
    Lbd(u8),
    /// Backend `n`, 198.18.0.(20+n).
    Backend(u8),
    /// The router in front of the lbd nodes (ECMP over them through BGP), 198.18.0.1.
    Router,
}

impl Host {
    /// The role name, used in namespace names and as the backend's name: `client`, `lbd1`, `b1`.
    pub fn role(self) -> String {
        match self {
            Host::Client => "client".to_owned(),
            Host::Lbd(n) => format!("lbd{n}"),
            Host::Backend(n) => format!("b{n}"),
            Host::Router => "router".to_owned(),
        }
    }

    /// Last octet of the host's address.
    fn octet(self) -> u8 {
        match self {
            Host::Client => 10,
            Host::Lbd(n) => n.saturating_add(1),
            Host::Backend(n) => n.saturating_add(20),
            Host::Router => 1,
        }
    }

    /// The host's address on `eth0`.
    pub fn ip(self) -> Ipv4Addr {
        let [a, b, c, _] = SUBNET.octets();
        Ipv4Addr::new(a, b, c, self.octet())
    }

    /// The host's IPv6 address on `eth0`: [`ip`](Self::ip) mirrored into [`SUBNET6`] ([`ip6_mirror`]),
    /// `198.18.0.21` → `2001:db8::21`.
    pub fn ip6(self) -> Ipv6Addr {
        ip6_mirror(self.ip())
    }

    /// The host's address of `family` on `eth0`.
    pub fn ip_of(self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.ip().into(),
            Family::V6 => self.ip6().into(),
        }
    }

    /// The MAC of the host's `eth0`: `02:00:00:00:00:<last octet of ip>`.
    pub fn mac(self) -> Mac {
        Mac([0x02, 0, 0, 0, 0, self.octet()])
    }

    /// The MAC of the bridge-side end of the host's veth: `02:00:00:00:01:<last octet of ip>`.
    pub fn bridge_port_mac(self) -> Mac {
        Mac([0x02, 0, 0, 0, 0x01, self.octet()])
    }

    /// The name of the bridge-side end of the host's veth: `vc`, `vl1`, `vb1`.
    pub fn bridge_port(self) -> String {
        match self {
            Host::Client => "vc".to_owned(),
            Host::Lbd(n) => format!("vl{n}"),
            Host::Backend(n) => format!("vb{n}"),
            Host::Router => "vr".to_owned(),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.role())
    }
}

/// Configures and builds a [`Topology`]; see [`Topology::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct TopologyBuilder {
    tag: String,
    lbd_nodes: u8,
    backends: u8,
    router: bool,
    fail_at: Option<Host>,
}

impl TopologyBuilder {
    /// Number of lbd nodes (0 to [`MAX_LBD_NODES`], default 1).
    pub fn lbd_nodes(mut self, n: u8) -> Self {
        self.lbd_nodes = n;
        self
    }

    /// Number of backends (0 to [`MAX_BACKENDS`], default 3).
    pub fn backends(mut self, n: u8) -> Self {
        self.backends = n;
        self
    }

    /// Adds a router ([`Host::Router`]) through which the client reaches the VIP: it forwards
    /// with ECMP over the next hops its BGP sessions learn (see [`crate::bird`]).
    pub fn router(mut self, on: bool) -> Self {
        self.router = on;
        self
    }

    /// Makes [`build`](Self::build) fail right after `host`'s namespace and link exist, to test that a
    /// half-built topology cleans up after itself.
    pub fn inject_failure_at(mut self, host: Host) -> Self {
        self.fail_at = Some(host);
        self
    }

    /// The hosts the topology will have, client first, then lbd nodes, then backends.
    pub fn hosts(&self) -> Vec<Host> {
        let mut hosts = vec![Host::Client];
        hosts.extend((1..=self.lbd_nodes).map(Host::Lbd));
        hosts.extend((1..=self.backends).map(Host::Backend));
        if self.router {
            hosts.push(Host::Router);
        }
        hosts
    }

    /// Creates the namespaces, the bridge, the links and the addresses. On error everything made so far is
    /// removed again; the error names the command that failed.
    pub fn build(self) -> Result<Topology> {
        let tag = &self.tag;
        ensure!(
            !tag.is_empty()
                && tag.len() <= 24
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !tag.starts_with('-')
                && !tag.ends_with('-'),
            "invalid topology tag {tag:?}: use 1-24 characters from [a-z0-9-], not starting or ending with '-'"
        );
        ensure!(
            self.lbd_nodes <= MAX_LBD_NODES,
            "at most {MAX_LBD_NODES} lbd nodes, not {}",
            self.lbd_nodes
        );
        ensure!(
            self.backends <= MAX_BACKENDS,
            "at most {MAX_BACKENDS} backends, not {}",
            self.backends
        );

        netns::sweep(&format!("{NS_PREFIX}{tag}-"))
            .with_context(|| format!("removing leftovers of tag {tag}"))?;
        if let Err(e) = netns::sweep_orphans() {
            eprintln!("lbd-tests: could not remove namespaces of dead test processes: {e:#}");
        }

        let bridge = Netns::new(tag, "br")?;
        let mut topo = Topology {
            tag: tag.clone(),
            hosts: Vec::new(),
            bridge,
        };
        let br = &topo.bridge;
        disable_ipv6(br)?;
        // Bridged frames must not pass through the bridge namespace's netfilter (if br_netfilter is loaded).
        for key in [
            "net/bridge/bridge-nf-call-iptables",
            "net/bridge/bridge-nf-call-arptables",
        ] {
            if Path::new("/proc/sys").join(key).exists() {
                br.set_sysctl(key, "0")?;
            }
        }
        br.ip(&["link", "set", "lo", "up"])?;
        let bridge_mac = BRIDGE_MAC.to_string();
        br.ip(&[
            "link",
            "add",
            BRIDGE,
            "address",
            &bridge_mac,
            "type",
            "bridge",
            "stp_state",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        br.ip(&["link", "set", BRIDGE, "up"])?;

        for host in self.hosts() {
            let ns = Netns::new(tag, &host.role())?;
            let node = topo.add_host(host, ns)?;
            if self.fail_at == Some(host) {
                bail!("injected failure after creating {node} (topology {tag})");
            }
            topo.configure(host)
                .with_context(|| format!("configuring {host} of topology {tag}"))?;
        }
        if self.router {
            // The client talks to the VIP from a subnet of its own behind the router
            // ([`REMOTE_CLIENT`]), as a client out on the network does: its packets reach the
            // nodes through the router (ECMP) and the backends' answers go back through it.
            let client = topo.ns(Host::Client);
            let router = topo.ns(Host::Router);
            let via = Host::Router.ip().to_string();
            let remote = REMOTE_CLIENT.to_string();
            client.ip(&["addr", "add", &format!("{remote}/32"), "dev", HOST_IF])?;
            client.ip(&[
                "route",
                "add",
                &format!("{VIP}/32"),
                "via",
                &via,
                "src",
                &remote,
            ])?;
            router.ip(&[
                "addr",
                "add",
                &format!("{REMOTE_GATEWAY}/24"),
                "dev",
                HOST_IF,
            ])?;
            for b in topo.backends() {
                topo.ns(b)
                    .ip(&["route", "add", &format!("{REMOTE_SUBNET}/24"), "via", &via])?;
            }
            // Neither may take a redirect past the router, and the router sends none.
            for scope in ["all", HOST_IF] {
                client.set_sysctl(&format!("net/ipv4/conf/{scope}/accept_redirects"), "0")?;
            }

            // The same in IPv6, mirrored: 2001:db8:1::10 on the client, 2001:db8:1::1 on the router,
            // 2001:db8:1::/64 via the router on the backends. IPv6 has no send_redirects switch: the
            // router may send redirects, and every host ignores them (accept_redirects=0, set in
            // `enable_ipv6`).
            let via6 = Host::Router.ip6().to_string();
            let remote6 = REMOTE_CLIENT6.to_string();
            client.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{remote6}/128"),
                "dev",
                HOST_IF,
                "nodad",
            ])?;
            client.ip(&[
                "-6",
                "route",
                "add",
                &format!("{VIP6}/128"),
                "via",
                &via6,
                "src",
                &remote6,
            ])?;
            router.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{REMOTE_GATEWAY6}/{PREFIX_LEN6}"),
                "dev",
                HOST_IF,
                "nodad",
            ])?;
            for b in topo.backends() {
                topo.ns(b).ip(&[
                    "-6",
                    "route",
                    "add",
                    &format!("{REMOTE_SUBNET6}/{PREFIX_LEN6}"),
                    "via",
                    &via6,
                ])?;
            }
        }
        Ok(topo)
    }
}

/// Disables IPv6 in `ns` (existing and future interfaces), if the kernel has IPv6 at all: the bridge
/// namespace, whose `br0` only switches frames and must not add MLD or router solicitations of its own.
fn disable_ipv6(ns: &Netns) -> Result<()> {
    if !Path::new("/proc/sys/net/ipv6").exists() {
        return Ok(());
    }
    ns.set_sysctl("net/ipv6/conf/default/disable_ipv6", "1")?;
    ns.set_sysctl("net/ipv6/conf/all/disable_ipv6", "1")?;
    Ok(())
}

/// Turns IPv6 on in a host namespace, set up so that only the test configures it. Called before the host's
/// `eth0` exists, so the `default` values apply to it; `all` covers `lo` and is what some switches (DAD)
/// also consult.
///
/// - `disable_ipv6=0`: on, whatever the namespace inherited.
/// - `accept_dad=0`: no duplicate address detection, so addresses (link-local ones too) are usable the
///   moment they are added, not `tentative` for a second or more (addresses are also added `nodad`).
/// - `accept_ra=0`, `autoconf=0`, `router_solicitations=0`: no router discovery, no SLAAC addresses, no
///   router solicitations on the wire.
/// - `accept_redirects=0`: no redirect may reroute a host past the router (see the router setup).
fn enable_ipv6(ns: &Netns) -> Result<()> {
    ensure!(
        Path::new("/proc/sys/net/ipv6").exists(),
        "the kernel has no IPv6 (/proc/sys/net/ipv6 is missing); the dual-stack topology needs it"
    );
    for scope in ["all", "default"] {
        for (key, value) in [
            ("accept_dad", "0"),
            ("accept_ra", "0"),
            ("autoconf", "0"),
            ("router_solicitations", "0"),
            ("accept_redirects", "0"),
            ("disable_ipv6", "0"),
        ] {
            ns.set_sysctl(&format!("net/ipv6/conf/{scope}/{key}"), value)?;
        }
    }
    Ok(())
}

/// One host: its role and namespace.
#[derive(Debug)]
struct Node {
    host: Host,
    ns: Netns,
}

/// A built test network; dropping it deletes every namespace it made. See the [module docs](self).
#[derive(Debug)]
pub struct Topology {
    tag: String,
    /// Dropped before `bridge` (field order).
    hosts: Vec<Node>,
    bridge: Netns,
}

impl Topology {
    /// A builder for the topology tagged `tag` (namespaces `lbdt-<tag>-*`; use [`crate::test_tag`]), with one
    /// lbd node and three backends unless told otherwise.
    pub fn builder(tag: &str) -> TopologyBuilder {
        TopologyBuilder {
            tag: tag.to_owned(),
            lbd_nodes: 1,
            backends: 3,
            router: false,
            fail_at: None,
        }
    }

    /// Creates `host`'s veth pair (bridge end enslaved to br0, other end `eth0` in `ns`) and records the host.
    fn add_host(&mut self, host: Host, ns: Netns) -> Result<String> {
        let port = host.bridge_port();
        let port_mac = host.bridge_port_mac().to_string();
        let mac = host.mac().to_string();
        let name = ns.name().to_owned();
        self.hosts.push(Node { host, ns });
        let br = &self.bridge;
        enable_ipv6(&self.hosts[self.hosts.len() - 1].ns)?;
        br.ip(&[
            "link", "add", &port, "address", &port_mac, "type", "veth", "peer", "name", HOST_IF,
            "address", &mac, "netns", &name,
        ])?;
        br.ip(&["link", "set", &port, "master", BRIDGE])?;
        br.ip(&["link", "set", &port, "up"])?;
        Ok(name)
    }

    /// Addresses, links up and the role's settings for `host`.
    fn configure(&self, host: Host) -> Result<()> {
        let ns = self.ns(host);
        let cidr = format!("{}/{PREFIX_LEN}", host.ip());
        let cidr6 = format!("{}/{PREFIX_LEN6}", host.ip6());
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.ip(&["addr", "add", &cidr, "dev", HOST_IF])?;
        ns.ip(&["-6", "addr", "add", &cidr6, "dev", HOST_IF, "nodad"])?;
        ns.ip(&["link", "set", HOST_IF, "up"])?;
        match host {
            Host::Client => self.set_tx_offload(Host::Client, false)?,
            Host::Router => {
                ns.set_sysctl("net/ipv4/ip_forward", "1")?;
                // ECMP on the 5-tuple, as a real router hashes.
                ns.set_sysctl("net/ipv4/fib_multipath_hash_policy", "1")?;
                for scope in ["all", "default", HOST_IF] {
                    ns.set_sysctl(&format!("net/ipv4/conf/{scope}/send_redirects"), "0")?;
                }
                // The same for IPv6 (forwarding on `all` turns it on for every interface).
                ns.set_sysctl("net/ipv6/conf/all/forwarding", "1")?;
                if Path::new("/proc/sys/net/ipv6/fib_multipath_hash_policy").exists() {
                    ns.set_sysctl("net/ipv6/fib_multipath_hash_policy", "1")?;
                }
            }
            Host::Lbd(_) => {}
            Host::Backend(_) => {
                ns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
                for scope in ["all", HOST_IF] {
                    ns.set_sysctl(&format!("net/ipv4/conf/{scope}/arp_ignore"), "1")?;
                    ns.set_sysctl(&format!("net/ipv4/conf/{scope}/arp_announce"), "2")?;
                }
                // IPv6 direct routing needs only the VIP on `lo`; there is no arp_ignore/arp_announce for
                // IPv6 because Linux's neighbour discovery already behaves as those settings make ARP:
                // - it answers a neighbour solicitation only for an address on the interface the
                //   solicitation came in on (ndisc_recv_ns looks the target up on that device only; no
                //   proxy_ndp, no forwarding here), so the VIP on `lo` is never announced on `eth0`
                //   (arp_ignore=1);
                // - its own solicitations take a source address of the outgoing interface, never the VIP
                //   on `lo` (arp_announce=2);
                // - a packet to any local address is accepted on any interface (IPv6 has no rp_filter
                //   sysctl either), and the reply's source is the address the client used: the VIP.
                // Nothing announces the VIP unasked: no DAD (off; `nodad`), and `lo` never does.
                ns.ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("{VIP6}/128"),
                    "dev",
                    "lo",
                    "nodad",
                ])?;
            }
        }
        Ok(())
    }

    /// The tag the namespaces are named with.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Every host, client first, then lbd nodes, then backends.
    pub fn hosts(&self) -> Vec<Host> {
        self.hosts.iter().map(|n| n.host).collect()
    }

    /// The lbd nodes.
    pub fn lbd_nodes(&self) -> Vec<Host> {
        self.hosts()
            .into_iter()
            .filter(|h| matches!(h, Host::Lbd(_)))
            .collect()
    }

    /// The backends.
    pub fn backends(&self) -> Vec<Host> {
        self.hosts()
            .into_iter()
            .filter(|h| matches!(h, Host::Backend(_)))
            .collect()
    }

    /// The namespace of `host`, or an error if the topology has no such host.
    pub fn try_ns(&self, host: Host) -> Result<&Netns> {
        self.hosts
            .iter()
            .find(|n| n.host == host)
            .map(|n| &n.ns)
            .with_context(|| format!("topology {} has no host {host}", self.tag))
    }

    /// The namespace of `host`.
    ///
    /// # Panics
    /// If the topology has no such host (a bug in the test); use [`try_ns`](Self::try_ns) to check.
    pub fn ns(&self, host: Host) -> &Netns {
        match self.try_ns(host) {
            Ok(ns) => ns,
            Err(e) => panic!("{e}"),
        }
    }

    /// The client's namespace.
    pub fn client(&self) -> &Netns {
        self.ns(Host::Client)
    }

    /// The namespace holding the bridge and the bridge-side veth ends.
    pub fn bridge_ns(&self) -> &Netns {
        &self.bridge
    }

    /// The bridge-side veth end of `host` in [`bridge_ns`](Self::bridge_ns) (`vc`, `vl1`, `vb1`); attach an
    /// `XDP_PASS` program here for native XDP on the host's `eth0`.
    pub fn bridge_port_of(&self, host: Host) -> String {
        host.bridge_port()
    }

    /// The address of `host` ([`Host::ip`]).
    pub fn ip(&self, host: Host) -> Ipv4Addr {
        host.ip()
    }

    /// The IPv6 address of `host` ([`Host::ip6`]).
    pub fn ip6(&self, host: Host) -> Ipv6Addr {
        host.ip6()
    }

    /// The MAC of `host`'s `eth0` ([`Host::mac`]).
    pub fn mac(&self, host: Host) -> Mac {
        host.mac()
    }

    /// `host`'s address with [`HTTP_PORT`].
    pub fn http_addr(&self, host: Host) -> SocketAddr {
        SocketAddrV4::new(host.ip(), HTTP_PORT).into()
    }

    /// `host`'s address with [`UDP_PORT`].
    pub fn udp_addr(&self, host: Host) -> SocketAddr {
        SocketAddrV4::new(host.ip(), UDP_PORT).into()
    }

    /// The VIP with [`HTTP_PORT`].
    pub fn vip_http(&self) -> SocketAddr {
        SocketAddrV4::new(VIP, HTTP_PORT).into()
    }

    /// The VIP with [`UDP_PORT`].
    pub fn vip_udp(&self) -> SocketAddr {
        SocketAddrV4::new(VIP, UDP_PORT).into()
    }

    /// `host`'s IPv6 address with [`HTTP_PORT`].
    pub fn http_addr6(&self, host: Host) -> SocketAddr {
        SocketAddrV6::new(host.ip6(), HTTP_PORT, 0, 0).into()
    }

    /// `host`'s IPv6 address with [`UDP_PORT`].
    pub fn udp_addr6(&self, host: Host) -> SocketAddr {
        SocketAddrV6::new(host.ip6(), UDP_PORT, 0, 0).into()
    }

    /// [`VIP6`] with [`HTTP_PORT`].
    pub fn vip6_http(&self) -> SocketAddr {
        SocketAddrV6::new(VIP6, HTTP_PORT, 0, 0).into()
    }

    /// [`VIP6`] with [`UDP_PORT`].
    pub fn vip6_udp(&self) -> SocketAddr {
        SocketAddrV6::new(VIP6, UDP_PORT, 0, 0).into()
    }

    /// Adds the VIP (/32) to lbd node `node`'s `eth0` and sends one gratuitous ARP for it.
    pub fn add_vip(&self, node: Host) -> Result<()> {
        self.add_vip_family(node, Family::V4)
    }

    /// Removes the VIP from lbd node `node`.
    pub fn remove_vip(&self, node: Host) -> Result<()> {
        self.remove_vip_family(node, Family::V4)
    }

    /// Adds [`VIP6`] (/128, `nodad`) to lbd node `node`'s `eth0` and sends one unsolicited neighbour
    /// advertisement for it ([`send_unsolicited_na`](Self::send_unsolicited_na)).
    pub fn add_vip6(&self, node: Host) -> Result<()> {
        self.add_vip_family(node, Family::V6)
    }

    /// Removes [`VIP6`] from lbd node `node`.
    pub fn remove_vip6(&self, node: Host) -> Result<()> {
        self.remove_vip_family(node, Family::V6)
    }

    /// [`add_vip`](Self::add_vip) or [`add_vip6`](Self::add_vip6), by `family`.
    pub fn add_vip_family(&self, node: Host, family: Family) -> Result<()> {
        ensure!(
            matches!(node, Host::Lbd(_)),
            "the VIP belongs on an lbd node, not on {node}"
        );
        let ns = self.try_ns(node)?;
        let cidr = family.vip_cidr();
        let mut args = vec![family.ip_flag(), "addr", "add", &cidr, "dev", HOST_IF];
        if family == Family::V6 {
            // Deprecated (preferred lifetime 0), as keepalived and lbd's VRRP add it: the node
            // still answers for it, but never picks it as the source of its own connections.
            // A /128 otherwise wins source selection over the node's /64 by longest prefix
            // (RFC 6724 rule 8), and the proxy's connections to a backend would come from the
            // VIP, which the backend holds on lo: its answers would never leave it.
            args.extend(["nodad", "preferred_lft", "0"]);
        }
        ns.ip(&args)
            .with_context(|| format!("adding {} to {node}", family.vip_label()))?;
        match family {
            Family::V4 => self.send_garp(node),
            Family::V6 => self.send_unsolicited_na(node),
        }
    }

    /// [`remove_vip`](Self::remove_vip) or [`remove_vip6`](Self::remove_vip6), by `family`.
    pub fn remove_vip_family(&self, node: Host, family: Family) -> Result<()> {
        ensure!(
            matches!(node, Host::Lbd(_)),
            "the VIP belongs on an lbd node, not on {node}"
        );
        let cidr = family.vip_cidr();
        self.try_ns(node)?
            .ip(&[family.ip_flag(), "addr", "del", &cidr, "dev", HOST_IF])
            .with_context(|| format!("removing {} from {node}", family.vip_label()))?;
        Ok(())
    }

    /// Sends one gratuitous ARP from `node`'s `eth0` announcing the VIP at its MAC. Neighbours ignore a change
    /// within 1 s of the previous one (locktime); send again after that if it must stick.
    pub fn send_garp(&self, node: Host) -> Result<()> {
        let capture = Capture::open(self.try_ns(node)?, HOST_IF)?;
        capture
            .send(&garp_frame(node.mac(), VIP))
            .with_context(|| format!("announcing the VIP from {node}"))
    }

    /// Sends one unsolicited neighbour advertisement (override flag set, to all nodes) from `node`'s `eth0`
    /// announcing [`VIP6`] at its MAC: IPv6's gratuitous ARP. Neighbours update an entry they already have
    /// (to `STALE`, so they confirm it before long); by default they create none from it.
    pub fn send_unsolicited_na(&self, node: Host) -> Result<()> {
        let capture = Capture::open(self.try_ns(node)?, HOST_IF)?;
        capture
            .send(&unsolicited_na_frame(node.mac(), VIP6))
            .with_context(|| format!("announcing the IPv6 VIP from {node}"))
    }

    /// Turns TX checksum offload on `host`'s `eth0` on or off (`ethtool -K eth0 tx on|off`). It is off on the
    /// client after build.
    pub fn set_tx_offload(&self, host: Host, on: bool) -> Result<()> {
        let state = if on { "on" } else { "off" };
        self.try_ns(host)?
            .run("ethtool", &["-K", HOST_IF, "tx", state])?;
        Ok(())
    }

    /// Forgets `host`'s neighbour entries on `eth0`, both families (ARP and neighbour discovery); permanent
    /// entries stay.
    pub fn flush_neigh(&self, host: Host) -> Result<()> {
        let ns = self.try_ns(host)?;
        for family in Family::BOTH {
            ns.ip(&[family.ip_flag(), "neigh", "flush", "dev", HOST_IF])?;
        }
        Ok(())
    }

    /// Starts `lbd-test-backend` (at `bin`, see [`crate::bin_path`]) on backend `host`: HTTP on
    /// `0.0.0.0:`[`HTTP_PORT`] and `[::]:`[`HTTP_PORT`] (IPv6 only), UDP on the VIP, [`VIP6`] and on the
    /// backend's own IPv4 and IPv6 addresses, port [`UDP_PORT`]; waits for `ready`.
    pub fn start_backend(&self, host: Host, bin: &Path) -> Result<Spawned> {
        ensure!(matches!(host, Host::Backend(_)), "{host} is not a backend");
        let ns = self.try_ns(host)?;
        let mut cmd = Command::new(bin);
        cmd.arg("--name")
            .arg(host.role())
            .arg("--http")
            .arg(format!("0.0.0.0:{HTTP_PORT}"))
            .arg("--udp")
            .arg(format!("{VIP}:{UDP_PORT}"))
            .arg("--udp")
            .arg(format!("{}:{UDP_PORT}", host.ip()))
            .arg("--http")
            .arg(format!("[::]:{HTTP_PORT}"))
            .arg("--udp")
            .arg(format!("[{VIP6}]:{UDP_PORT}"))
            .arg("--udp")
            .arg(format!("[{}]:{UDP_PORT}", host.ip6()))
            .arg("--health-file")
            .arg(self.health_file(host));
        let mut child = ns.spawn(cmd)?;
        child
            .wait_ready(BACKEND_READY_TIMEOUT)
            .with_context(|| format!("starting the backend on {host}"))?;
        Ok(child)
    }

    /// The file whose presence makes backend `host` answer `GET /health` with 503.
    pub fn health_file(&self, host: Host) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("lbdt-{}-{}.down", self.tag, host.role()))
    }

    /// Makes backend `host`'s `GET /health` answer 200 (`up`) or 503; its server goes on.
    pub fn set_backend_health(&self, host: Host, up: bool) -> Result<()> {
        let file = self.health_file(host);
        if up {
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("removing {}", file.display()))
                }
                _ => Ok(()),
            }
        } else {
            std::fs::write(&file, b"down").with_context(|| format!("writing {}", file.display()))
        }
    }

    /// [`start_backend`](Self::start_backend) on every backend, in order.
    pub fn start_backends(&self, bin: &Path) -> Result<Vec<Spawned>> {
        self.backends()
            .into_iter()
            .map(|b| self.start_backend(b, bin))
            .collect()
    }

    /// Deletes every namespace now and reports failures (dropping only prints them).
    pub fn teardown(self) -> Result<()> {
        let Topology { tag, hosts, bridge } = self;
        let mut errors = Vec::new();
        for node in hosts {
            if let Err(e) = node.ns.delete() {
                errors.push(format!("{e:#}"));
            }
        }
        if let Err(e) = bridge.delete() {
            errors.push(format!("{e:#}"));
        }
        if !errors.is_empty() {
            bail!("tearing down topology {tag}: {}", errors.join("; "));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names_are_deterministic() {
        assert_eq!(Host::Client.ip(), Ipv4Addr::new(198, 18, 0, 10));
        assert_eq!(Host::Lbd(1).ip(), Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(Host::Lbd(2).ip(), Ipv4Addr::new(198, 18, 0, 3));
        assert_eq!(Host::Backend(3).ip(), Ipv4Addr::new(198, 18, 0, 23));
        assert_eq!(Host::Backend(1).mac().to_string(), "02:00:00:00:00:15");
        assert_eq!(Host::Client.mac().to_string(), "02:00:00:00:00:0a");
        assert_eq!(
            Host::Lbd(2).bridge_port_mac().to_string(),
            "02:00:00:00:01:03"
        );
        assert_eq!(Host::Backend(2).role(), "b2");
        assert_eq!(Host::Lbd(1).bridge_port(), "vl1");
        assert!(Host::Backend(MAX_BACKENDS).bridge_port().len() <= 15);
    }

    #[test]
    fn ipv6_addresses_mirror_the_ipv4_ones() {
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert_eq!(Host::Client.ip6(), v6("2001:db8::10"));
        assert_eq!(Host::Lbd(1).ip6(), v6("2001:db8::2"));
        assert_eq!(Host::Lbd(MAX_LBD_NODES).ip6(), v6("2001:db8::9"));
        assert_eq!(Host::Backend(1).ip6(), v6("2001:db8::21"));
        assert_eq!(Host::Backend(MAX_BACKENDS).ip6(), v6("2001:db8::29"));
        assert_eq!(Host::Router.ip6(), v6("2001:db8::1"));
        assert_eq!(VIP6, v6("2001:db8::100"));
        assert_eq!(ip6_mirror(VIP), VIP6);
        assert_eq!(ip6_mirror(SUBNET), SUBNET6);
        assert_eq!(ip6_mirror(REMOTE_SUBNET), REMOTE_SUBNET6);
        assert_eq!(ip6_mirror(REMOTE_CLIENT), REMOTE_CLIENT6);
        assert_eq!(ip6_mirror(REMOTE_GATEWAY), REMOTE_GATEWAY6);
        assert_eq!(REMOTE_CLIENT6, v6("2001:db8:1::10"));
        assert_eq!(
            ip6_mirror(Ipv4Addr::new(198, 18, 0, 255)),
            v6("2001:db8::255")
        );
        assert_eq!(
            Host::Backend(2).ip_of(Family::V6),
            IpAddr::from(v6("2001:db8::22"))
        );
        assert_eq!(Family::V6.vip_cidr(), "2001:db8::100/128");
        let topo_addr: SocketAddr = "[2001:db8::100]:80".parse().unwrap();
        assert_eq!(
            SocketAddr::from(SocketAddrV6::new(VIP6, HTTP_PORT, 0, 0)),
            topo_addr
        );
    }

    #[test]
    fn builder_lists_hosts_in_order() {
        let b = Topology::builder("x").lbd_nodes(2).backends(2);
        assert_eq!(
            b.hosts(),
            vec![
                Host::Client,
                Host::Lbd(1),
                Host::Lbd(2),
                Host::Backend(1),
                Host::Backend(2)
            ]
        );
    }

    #[test]
    fn builder_rejects_bad_input_before_touching_anything() {
        for tag in [
            "",
            "UPPER",
            "a b",
            "-x",
            "x-",
            "this-tag-is-far-too-long-for-us",
        ] {
            let err = Topology::builder(tag).build().unwrap_err().to_string();
            assert!(err.contains("invalid topology tag"), "{tag}: {err}");
        }
        assert!(Topology::builder("x").lbd_nodes(9).build().is_err());
        assert!(Topology::builder("x").backends(10).build().is_err());
    }
}
