//! Netlink look-ups: the interface (index, MAC) and backends' MACs from the neighbour table.
//!
//! A backend's MAC is read from the kernel's neighbour table, never guessed. A backend missing
//! from it is made resolvable by sending it one empty UDP datagram (port 9, discard): the kernel
//! then ARPs for it. The data path never lets the kernel send to backends, so entries only go
//! STALE, which still holds the address; a backend that changes its MAC announces it by
//! gratuitous ARP, which updates the entry, and the periodic refresh picks that up.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
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

/// lbd's VIP routes in `table` (protocol [`crate::announce::ROUTE_PROTOCOL`], `/32`).
pub async fn vip_routes(
    handle: &Handle,
    table: u32,
) -> Result<std::collections::BTreeSet<Ipv4Addr>, NetError> {
    use rtnetlink::{
        RouteMessageBuilder,
        packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol},
    };
    let filter = RouteMessageBuilder::<Ipv4Addr>::new()
        .table_id(table)
        .build();
    let mut routes = handle.route().get(filter).execute();
    let mut out = std::collections::BTreeSet::new();
    while let Some(r) = routes.try_next().await? {
        let in_table = r
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Table(t) if *t == table))
            || u32::from(r.header.table) == table;
        if !in_table
            || r.header.protocol != RouteProtocol::Other(crate::announce::ROUTE_PROTOCOL)
            || r.header.destination_prefix_length != 32
        {
            continue;
        }
        for a in &r.attributes {
            if let RouteAttribute::Destination(RouteAddress::Inet(ip)) = a {
                out.insert(*ip);
            }
        }
    }
    Ok(out)
}

fn vip_route(table: u32, lo: u32, vip: Ipv4Addr) -> rtnetlink::packet_route::route::RouteMessage {
    use rtnetlink::{RouteMessageBuilder, packet_route::route::RouteProtocol};
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(vip, 32)
        .output_interface(lo)
        .table_id(table)
        .protocol(RouteProtocol::Other(crate::announce::ROUTE_PROTOCOL))
        .build()
}

/// Puts `vip/32 dev lo proto 201` into `table` (a route already there is replaced).
pub async fn add_vip_route(
    handle: &Handle,
    table: u32,
    lo: u32,
    vip: Ipv4Addr,
) -> Result<(), NetError> {
    handle
        .route()
        .add(vip_route(table, lo, vip))
        .replace()
        .execute()
        .await?;
    Ok(())
}

/// Takes `vip/32` out of `table` (one that is not there is fine).
pub async fn del_vip_route(
    handle: &Handle,
    table: u32,
    lo: u32,
    vip: Ipv4Addr,
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

/// IPv4 neighbours with a usable MAC on one interface.
pub async fn neighbours(
    handle: &Handle,
    ifindex: u32,
) -> Result<HashMap<Ipv4Addr, [u8; 6]>, NetError> {
    let mut out = HashMap::new();
    let mut stream = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
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
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = Some(*v4),
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
    Ok(out)
}

/// Makes the kernel ARP for `ip` by sending it one empty datagram to the discard port, out of
/// `interface`.
fn provoke_arp(interface: &str, ip: Ipv4Addr) -> std::io::Result<()> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    sock.bind_device(Some(interface.as_bytes()))?;
    sock.set_nonblocking(true)?;
    sock.send_to(&[], &SocketAddrV4::new(ip, 9).into())?;
    Ok(())
}

/// Resolves the MACs of `ips` on the interface, waiting up to `wait` for ARP answers.
/// Returns what it found; the caller keeps unresolved backends out of rotation and retries.
pub async fn resolve(
    handle: &Handle,
    interface: &str,
    ifindex: u32,
    ips: &[Ipv4Addr],
    wait: Duration,
) -> Result<HashMap<Ipv4Addr, [u8; 6]>, NetError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut provoked = false;
    loop {
        let known = neighbours(handle, ifindex).await?;
        let missing: Vec<Ipv4Addr> = ips
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
                if let Err(e) = provoke_arp(interface, *ip) {
                    tracing::warn!(backend = %ip, error = %e, "cannot send the datagram that makes the kernel ARP for a backend");
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
