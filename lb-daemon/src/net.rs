//! Netlink look-ups: the interface (index, MAC) and backends' MACs from the neighbour table.
//!
//! A backend's MAC is read from the kernel's neighbour table, never guessed. A backend missing
//! from it is made resolvable by sending it one empty UDP datagram (port 9, discard): the kernel
//! then ARPs for it (IPv4) or sends a neighbour solicitation (IPv6). The data path never lets the kernel send to backends, so entries only go
//! STALE, which still holds the address; a backend that changes its MAC announces it by
//! gratuitous ARP, which updates the entry, and the periodic refresh picks that up.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use futures::TryStreamExt as _;
use rtnetlink::{
    Handle,
    packet_route::{
        AddressFamily,
        link::LinkAttribute,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
    },
};

/// Errors of the netlink look-ups.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Opening the netlink socket failed.
    #[error("netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    /// The interface does not exist.
    #[error("interface {0:?} not found (see `ip link`)")]
    NoInterface(String),
    /// The interface has no Ethernet address.
    #[error(
        "interface {0:?} has no Ethernet MAC address; direct routing needs an Ethernet interface"
    )]
    NoMac(String),
    /// A netlink request failed.
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
}

/// An interface: index and MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// ifindex.
    pub index: u32,
    /// MAC address.
    pub mac: [u8; 6],
}

/// lbd's VIP routes in `table` (protocol [`crate::announce::ROUTE_PROTOCOL`], `/32` or `/128`).
pub async fn vip_routes(
    handle: &Handle,
    table: u32,
) -> Result<std::collections::BTreeSet<IpAddr>, NetError> {
    use rtnetlink::RouteMessageBuilder;
    let mut out = std::collections::BTreeSet::new();
    let v4 = RouteMessageBuilder::<Ipv4Addr>::new()
        .table_id(table)
        .build();
    host_routes(handle, v4, table, 32, &mut out).await?;
    let v6 = RouteMessageBuilder::<Ipv6Addr>::new()
        .table_id(table)
        .build();
    host_routes(handle, v6, table, 128, &mut out).await?;
    Ok(out)
}

/// The destinations of lbd's host routes in `table` that `filter` (one family) lists.
async fn host_routes(
    handle: &Handle,
    filter: rtnetlink::packet_route::route::RouteMessage,
    table: u32,
    prefix_len: u8,
    out: &mut std::collections::BTreeSet<IpAddr>,
) -> Result<(), NetError> {
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};
    let mut routes = handle.route().get(filter).execute();
    while let Some(r) = routes.try_next().await? {
        let in_table = r
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Table(t) if *t == table))
            || u32::from(r.header.table) == table;
        if !in_table
            || r.header.protocol != RouteProtocol::Other(crate::announce::ROUTE_PROTOCOL)
            || r.header.destination_prefix_length != prefix_len
        {
            continue;
        }
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                    out.insert(IpAddr::V4(*ip));
                }
                RouteAttribute::Destination(RouteAddress::Inet6(ip)) => {
                    out.insert(IpAddr::V6(*ip));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn vip_route(table: u32, lo: u32, vip: IpAddr) -> rtnetlink::packet_route::route::RouteMessage {
    use rtnetlink::{RouteMessageBuilder, packet_route::route::RouteProtocol};
    let protocol = RouteProtocol::Other(crate::announce::ROUTE_PROTOCOL);
    match vip {
        IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(v4, 32)
            .output_interface(lo)
            .table_id(table)
            .protocol(protocol)
            .build(),
        IpAddr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(v6, 128)
            .output_interface(lo)
            .table_id(table)
            .protocol(protocol)
            .build(),
    }
}

/// Puts `vip/32` (or `/128`) `dev lo proto 201` into `table` (a route already there is replaced).
pub async fn add_vip_route(
    handle: &Handle,
    table: u32,
    lo: u32,
    vip: IpAddr,
) -> Result<(), NetError> {
    handle
        .route()
        .add(vip_route(table, lo, vip))
        .replace()
        .execute()
        .await?;
    Ok(())
}

/// Takes `vip/32` (or `/128`) out of `table` (one that is not there is fine).
pub async fn del_vip_route(
    handle: &Handle,
    table: u32,
    lo: u32,
    vip: IpAddr,
) -> Result<(), NetError> {
    match handle
        .route()
        .del(vip_route(table, lo, vip))
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        // ESRCH: no such route.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Opens a netlink connection and spawns its driver on the current tokio runtime.
pub fn connect() -> Result<Handle, NetError> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Looks up an interface by name.
pub async fn link(handle: &Handle, name: &str) -> Result<Link, NetError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    let msg = match links.try_next().await {
        Ok(Some(m)) => m,
        Ok(None) | Err(rtnetlink::Error::NetlinkError(_)) => {
            return Err(NetError::NoInterface(name.into()));
        }
        Err(e) => return Err(e.into()),
    };
    let mac = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(b) if b.len() == 6 => Some([b[0], b[1], b[2], b[3], b[4], b[5]]),
            _ => None,
        })
        .ok_or_else(|| NetError::NoMac(name.into()))?;
    Ok(Link {
        index: msg.header.index,
        mac,
    })
}

/// What VRRP tracking needs to know about an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkHealth {
    /// Administratively up with carrier (IFF_UP and IFF_LOWER_UP).
    pub up: bool,
    /// An XDP program is attached to it.
    pub xdp_attached: bool,
    /// How it is attached: native (driver) or generic (skb), when one is.
    pub xdp_mode: Option<crate::xdp::AttachMode>,
}

/// Looks up an interface's state; a missing interface is down.
pub async fn link_health(handle: &Handle, name: &str) -> Result<LinkHealth, NetError> {
    use rtnetlink::packet_route::link::{LinkFlags, LinkXdp, XdpAttached};
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    let msg = match links.try_next().await {
        Ok(Some(m)) => m,
        Ok(None) | Err(rtnetlink::Error::NetlinkError(_)) => {
            return Ok(LinkHealth {
                up: false,
                xdp_attached: false,
                xdp_mode: None,
            });
        }
        Err(e) => return Err(e.into()),
    };
    let flags = msg.header.flags;
    let xdp_attached = msg.attributes.iter().any(|a| match a {
        LinkAttribute::Xdp(x) => x
            .iter()
            .any(|n| matches!(n, LinkXdp::ProgId(id) if *id != 0)),
        _ => false,
    });
    let xdp_mode = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Xdp(x) => x.iter().find_map(|n| match n {
            LinkXdp::Attached(XdpAttached::Driver) => Some(crate::xdp::AttachMode::Native),
            LinkXdp::Attached(XdpAttached::SocketBuffer) => Some(crate::xdp::AttachMode::Generic),
            _ => None,
        }),
        _ => None,
    });
    Ok(LinkHealth {
        up: flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp),
        xdp_attached,
        xdp_mode,
    })
}

/// IPv4 and IPv6 neighbours with a usable MAC on one interface.
pub async fn neighbours(
    handle: &Handle,
    ifindex: u32,
) -> Result<HashMap<IpAddr, [u8; 6]>, NetError> {
    let mut out = HashMap::new();
    neighbours_of(handle, ifindex, AddressFamily::Inet, &mut out).await?;
    neighbours_of(handle, ifindex, AddressFamily::Inet6, &mut out).await?;
    Ok(out)
}

/// The neighbours of one family (the ARP or the neighbour discovery table).
async fn neighbours_of(
    handle: &Handle,
    ifindex: u32,
    family: AddressFamily,
    out: &mut HashMap<IpAddr, [u8; 6]>,
) -> Result<(), NetError> {
    let mut stream = handle
        .neighbours()
        .get()
        .set_address_family(family)
        .execute();
    while let Some(msg) = stream.try_next().await? {
        if msg.header.ifindex != ifindex
            || matches!(
                msg.header.state,
                NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
            )
        {
            continue;
        }
        let mut ip = None;
        let mut mac = None;
        for a in &msg.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                    ip = Some(IpAddr::V4(*v4));
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                    ip = Some(IpAddr::V6(*v6));
                }
                NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                    mac = Some([b[0], b[1], b[2], b[3], b[4], b[5]]);
                }
                _ => {}
            }
        }
        if let (Some(ip), Some(mac)) = (ip, mac)
            && mac != [0; 6]
        {
            out.insert(ip, mac);
        }
    }
    Ok(())
}

/// Makes the kernel ARP for `ip` (or solicit it, IPv6) by sending it one empty datagram to the
/// discard port, out of `interface`.
fn provoke_resolution(interface: &str, ip: IpAddr) -> std::io::Result<()> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(SocketAddr::new(ip, 9)),
        socket2::Type::DGRAM,
        None,
    )?;
    sock.bind_device(Some(interface.as_bytes()))?;
    sock.set_nonblocking(true)?;
    sock.send_to(&[], &SocketAddr::new(ip, 9).into())?;
    Ok(())
}

/// Resolves the MACs of `ips` on the interface, waiting up to `wait` for ARP and neighbour
/// discovery answers.
/// Returns what it found; the caller keeps unresolved backends out of rotation and retries.
pub async fn resolve(
    handle: &Handle,
    interface: &str,
    ifindex: u32,
    ips: &[IpAddr],
    wait: Duration,
) -> Result<HashMap<IpAddr, [u8; 6]>, NetError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut provoked = false;
    loop {
        let known = neighbours(handle, ifindex).await?;
        let missing: Vec<IpAddr> = ips
            .iter()
            .filter(|ip| !known.contains_key(ip))
            .copied()
            .collect();
        if missing.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(known
                .into_iter()
                .filter(|(ip, _)| ips.contains(ip))
                .collect());
        }
        if !provoked {
            for ip in &missing {
                if let Err(e) = provoke_resolution(interface, *ip) {
                    tracing::warn!(backend = %ip, error = %e, "cannot send the datagram that makes the kernel resolve a backend's MAC");
                }
            }
            provoked = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Formats a MAC address.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
