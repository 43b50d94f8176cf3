//! Raw frame capture (and injection) on one interface of a namespace, with an `AF_PACKET` socket.
//!
//! Tests use it to prove where replies come from: with direct routing a SYN-ACK reaches the client with the
//! backend's source MAC, not the lbd node's ([`Capture::wait_syn_ack`], [`find_syn_ack_src_mac`]). It can also
//! send frames, e.g. a gratuitous ARP ([`garp_frame`]) or its IPv6 counterpart ([`unsolicited_na_frame`]), and
//! neighbour solicitations ([`neighbor_solicitation_frame`]) to see who answers them ([`find_na_src_mac`]).

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etherparse::icmpv6::NeighborAdvertisementHeader;
use etherparse::{
    ArpEthIpv4Packet, ArpOperation, EtherType, Ethernet2Header, Icmpv6Type, LinkSlice, NetSlice,
    PacketBuilder, SlicedPacket, TransportSlice,
};

use crate::{Mac, Netns};

/// Largest frame read; longer ones (GRO/TSO super-frames) are truncated.
const MAX_FRAME: usize = 65_536;

/// A captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The bytes from the Ethernet header on.
    pub data: Vec<u8>,
    /// Sent by this host (`PACKET_OUTGOING`) rather than received.
    pub outgoing: bool,
}

impl Frame {
    /// The source MAC, if the frame is long enough to have one.
    pub fn src_mac(&self) -> Option<Mac> {
        let src: [u8; 6] = self.data.get(6..12)?.try_into().ok()?;
        Some(Mac(src))
    }

    /// The destination MAC, if the frame is long enough to have one.
    pub fn dst_mac(&self) -> Option<Mac> {
        let dst: [u8; 6] = self.data.get(0..6)?.try_into().ok()?;
        Some(Mac(dst))
    }
}

/// An `AF_PACKET` socket bound to one interface of a namespace, receiving every protocol (`ETH_P_ALL`).
#[derive(Debug)]
pub struct Capture {
    fd: OwnedFd,
    ifindex: i32,
    label: String,
}

/// `ETH_P_ALL` in network byte order, as `socket(2)`/`sockaddr_ll` want it.
fn eth_p_all_be() -> u16 {
    (libc::ETH_P_ALL as u16).to_be()
}

impl Capture {
    /// Opens a capture on `ifname` inside `ns`. Frames are queued from this moment until read.
    pub fn open(ns: &Netns, ifname: &str) -> Result<Capture> {
        let label = format!("{ifname} in {}", ns.name());
        let c_ifname =
            CString::new(ifname).with_context(|| format!("interface name {ifname:?}"))?;
        let (fd, ifindex) = ns
            .enter(move || -> std::io::Result<(OwnedFd, i32)> {
                // Protocol 0 receives nothing until bind sets ETH_P_ALL and the interface, so no frame of
                // another interface slips in between.
                // SAFETY: plain socket(2); the descriptor is owned right away.
                let raw = unsafe {
                    libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0)
                };
                if raw < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: `raw` is a fresh descriptor nobody else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                // SAFETY: `c_ifname` is a valid NUL-terminated string.
                let ifindex = unsafe { libc::if_nametoindex(c_ifname.as_ptr()) };
                if ifindex == 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ifindex = i32::try_from(ifindex)
                    .map_err(|_| std::io::Error::other("ifindex out of range"))?;
                // SAFETY: sockaddr_ll is plain data; all-zero is a valid value before the fields are set.
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = eth_p_all_be();
                sll.sll_ifindex = ifindex;
                // SAFETY: `sll` is a valid sockaddr_ll and the length matches it.
                let rc = unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        (&raw const sll).cast::<libc::sockaddr>(),
                        std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                    )
                };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok((fd, ifindex))
            })?
            .with_context(|| format!("opening an AF_PACKET capture on {label}"))?;
        Ok(Capture { fd, ifindex, label })
    }

    /// The interface index the capture is bound to (in its namespace).
    pub fn ifindex(&self) -> i32 {
        self.ifindex
    }

    /// Receives one frame through `buf` (at least [`MAX_FRAME`] long), waiting at most `timeout`;
    /// `Ok(None)` on timeout.
    fn recv_one(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<Frame>> {
        let ms = i32::try_from(timeout.as_millis().max(1)).unwrap_or(i32::MAX);
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(e).with_context(|| format!("polling the capture on {}", self.label));
        }
        if rc == 0 {
            return Ok(None);
        }
        // SAFETY: sockaddr_ll is plain data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` and `sll` are valid for the lengths passed; MSG_DONTWAIT keeps this from blocking.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&raw mut sll).cast::<libc::sockaddr>(),
                &mut len,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ) {
                return Ok(None);
            }
            return Err(e).with_context(|| format!("reading the capture on {}", self.label));
        }
        Ok(Some(Frame {
            data: buf[..n as usize].to_vec(),
            outgoing: sll.sll_pkttype == libc::PACKET_OUTGOING,
        }))
    }

    /// Returns the frames that arrive within `timeout`, stopping early once `max` have been read.
    pub fn recv_frames(&self, timeout: Duration, max: usize) -> Result<Vec<Frame>> {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        let mut buf = vec![0u8; MAX_FRAME];
        while frames.len() < max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Some(frame) = self.recv_one(&mut buf, left)? {
                frames.push(frame);
            }
        }
        Ok(frames)
    }

    /// Waits up to `timeout` for a received TCP SYN-ACK from `from` and returns its source MAC. At most 100,000
    /// frames are examined.
    pub fn wait_syn_ack(&self, from: SocketAddrV4, timeout: Duration) -> Result<Mac> {
        self.wait_syn_ack_from(from.into(), timeout)
    }

    /// [`wait_syn_ack`](Self::wait_syn_ack) for either family: `from` may be an IPv6 address.
    pub fn wait_syn_ack_from(&self, from: SocketAddr, timeout: Duration) -> Result<Mac> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; MAX_FRAME];
        for _ in 0..100_000 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Some(frame) = self.recv_one(&mut buf, left)?
                && let Some(mac) = find_syn_ack_src_mac_from(std::slice::from_ref(&frame), from)
            {
                return Ok(mac);
            }
        }
        bail!(
            "no SYN-ACK from {from} seen on {} within {timeout:?}",
            self.label
        )
    }

    /// Sends one raw frame out of the interface.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: `frame` is valid for its length; the socket is bound to the interface.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("sending a frame on {}", self.label));
        }
        if n as usize != frame.len() {
            bail!("short send on {}: {n} of {} bytes", self.label, frame.len());
        }
        Ok(())
    }
}

/// The source MAC of the first received (not outgoing) TCP SYN-ACK from `from` in `frames`.
pub fn find_syn_ack_src_mac(frames: &[Frame], from: SocketAddrV4) -> Option<Mac> {
    find_syn_ack_src_mac_from(frames, from.into())
}

/// [`find_syn_ack_src_mac`] for either family.
pub fn find_syn_ack_src_mac_from(frames: &[Frame], from: SocketAddr) -> Option<Mac> {
    frames.iter().filter(|f| !f.outgoing).find_map(|f| {
        let packet = SlicedPacket::from_ethernet(&f.data).ok()?;
        let Some(LinkSlice::Ethernet2(eth)) = &packet.link else {
            return None;
        };
        let src: IpAddr = match &packet.net {
            Some(NetSlice::Ipv4(ip)) => ip.header().source_addr().into(),
            Some(NetSlice::Ipv6(ip)) => ip.header().source_addr().into(),
            _ => return None,
        };
        let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
            return None;
        };
        let matches =
            src == from.ip() && tcp.source_port() == from.port() && tcp.syn() && tcp.ack();
        matches.then(|| Mac(eth.source()))
    })
}

/// The IPv6 all-nodes multicast group `ff02::1`.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// NDP option types: source and target link-layer address.
const NDP_SLLAO: u8 = 1;
const NDP_TLLAO: u8 = 2;

/// The solicited-node multicast group of `ip`: `ff02::1:ffXX:XXXX` with its last 24 bits.
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet multicast address of IPv6 multicast group `group`: `33:33` and its last 32 bits.
pub fn ipv6_multicast_mac(group: Ipv6Addr) -> Mac {
    let o = group.octets();
    Mac([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// An ICMPv6 neighbour discovery message (hop limit 255) with `target` and one link-layer address option.
fn ndp_frame(
    src_mac: Mac,
    dst_mac: Mac,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    kind: Icmpv6Type,
    target: Ipv6Addr,
    option: u8,
) -> Vec<u8> {
    let mut payload = Vec::with_capacity(16 + 8);
    payload.extend_from_slice(&target.octets());
    payload.extend_from_slice(&[option, 1]);
    payload.extend_from_slice(&src_mac.0);
    let builder = PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv6(src.octets(), dst.octets(), 255)
        .icmpv6(kind);
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut frame, &payload)
        .expect("an NDP message fits any buffer");
    frame
}

/// An unsolicited neighbour advertisement that `ip` is at `mac`: to all nodes (`ff02::1`), from `ip`,
/// override flag set, with a target link-layer address option. IPv6's gratuitous ARP.
pub fn unsolicited_na_frame(mac: Mac, ip: Ipv6Addr) -> Vec<u8> {
    let flags = NeighborAdvertisementHeader {
        router: false,
        solicited: false,
        r#override: true,
    };
    ndp_frame(
        mac,
        ipv6_multicast_mac(ALL_NODES),
        ip,
        ALL_NODES,
        Icmpv6Type::NeighborAdvertisement(flags),
        ip,
        NDP_TLLAO,
    )
}

/// A neighbour solicitation for `target` from `src` (at `src_mac`, given as source link-layer address
/// option) to `dst` at `dst_mac`. For the usual multicast one pass [`solicited_node`] of the target and its
/// [`ipv6_multicast_mac`]; a unicast one (to one host's MAC and `dst` = `target`) asks that host alone.
pub fn neighbor_solicitation_frame(
    src_mac: Mac,
    dst_mac: Mac,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    target: Ipv6Addr,
) -> Vec<u8> {
    ndp_frame(
        src_mac,
        dst_mac,
        src,
        dst,
        Icmpv6Type::NeighborSolicitation,
        target,
        NDP_SLLAO,
    )
}

/// The source MAC of the first received (not outgoing) neighbour advertisement for `target` in `frames`:
/// who claimed the address.
pub fn find_na_src_mac(frames: &[Frame], target: Ipv6Addr) -> Option<Mac> {
    frames.iter().filter(|f| !f.outgoing).find_map(|f| {
        let packet = SlicedPacket::from_ethernet(&f.data).ok()?;
        let Some(LinkSlice::Ethernet2(eth)) = &packet.link else {
            return None;
        };
        let Some(TransportSlice::Icmpv6(icmp)) = &packet.transport else {
            return None;
        };
        let Icmpv6Type::NeighborAdvertisement(_) = icmp.icmp_type() else {
            return None;
        };
        let advertised: [u8; 16] = icmp.payload().get(..16)?.try_into().ok()?;
        (Ipv6Addr::from(advertised) == target).then(|| Mac(eth.source()))
    })
}

/// A gratuitous ARP request announcing that `ip` is at `mac` (broadcast, sender and target IP both `ip`).
pub fn garp_frame(mac: Mac, ip: Ipv4Addr) -> Vec<u8> {
    let eth = Ethernet2Header {
        source: mac.0,
        destination: Mac::BROADCAST.0,
        ether_type: EtherType::ARP,
    };
    let arp = ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: mac.0,
        sender_ipv4: ip.octets(),
        target_mac: [0; 6],
        target_ipv4: ip.octets(),
    };
    let mut frame = Vec::with_capacity(Ethernet2Header::LEN + ArpEthIpv4Packet::LEN);
    frame.extend_from_slice(&eth.to_bytes());
    frame.extend_from_slice(&arp.to_bytes());
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syn_ack(src_mac: [u8; 6], src: SocketAddrV4, syn: bool, ack: bool) -> Vec<u8> {
        let mut tcp = PacketBuilder::ethernet2(src_mac, [2, 0, 0, 0, 0, 10])
            .ipv4(src.ip().octets(), [198, 18, 0, 10], 64)
            .tcp(src.port(), 40000, 1, 65535);
        if syn {
            tcp = tcp.syn();
        }
        if ack {
            tcp = tcp.ack(1);
        }
        let mut out = Vec::new();
        tcp.write(&mut out, &[]).unwrap();
        out
    }

    #[test]
    fn finds_the_syn_ack_from_the_right_peer() {
        let b1: SocketAddrV4 = "198.18.0.21:80".parse().unwrap();
        let b2: SocketAddrV4 = "198.18.0.22:80".parse().unwrap();
        let frames = vec![
            Frame {
                data: vec![1, 2, 3],
                outgoing: false,
            },
            Frame {
                data: syn_ack([2, 0, 0, 0, 0, 0x16], b2, true, true),
                outgoing: false,
            },
            Frame {
                data: syn_ack([2, 0, 0, 0, 0, 0x15], b1, true, false),
                outgoing: false,
            },
            Frame {
                data: syn_ack([2, 0, 0, 0, 0, 0x99], b1, true, true),
                outgoing: true,
            },
            Frame {
                data: syn_ack([2, 0, 0, 0, 0, 0x15], b1, true, true),
                outgoing: false,
            },
        ];
        assert_eq!(
            find_syn_ack_src_mac(&frames, b1),
            Some(Mac([2, 0, 0, 0, 0, 0x15]))
        );
        assert_eq!(find_syn_ack_src_mac(&frames[..4], b1), None);
        assert_eq!(frames[1].src_mac(), Some(Mac([2, 0, 0, 0, 0, 0x16])));
    }

    #[test]
    fn garp_parses_back() {
        let mac = Mac([2, 0, 0, 0, 0, 2]);
        let vip = Ipv4Addr::new(198, 18, 0, 100);
        let frame = garp_frame(mac, vip);
        let packet = SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(NetSlice::Arp(arp)) = packet.net else {
            panic!("not ARP: {packet:?}")
        };
        let arp = arp.to_packet().try_eth_ipv4().unwrap();
        assert_eq!(arp.sender_ipv4_addr(), vip);
        assert_eq!(arp.target_ipv4_addr(), vip);
        assert_eq!(arp.sender_mac, mac.0);
        assert_eq!(
            Frame {
                data: frame.clone(),
                outgoing: true
            }
            .dst_mac(),
            Some(Mac::BROADCAST)
        );
    }

    #[test]
    fn ndp_frames_parse_back_with_valid_checksums() {
        let mac = Mac([2, 0, 0, 0, 0, 2]);
        let vip6: Ipv6Addr = "2001:db8::100".parse().unwrap();
        assert_eq!(
            solicited_node(vip6),
            "ff02::1:ff00:100".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            ipv6_multicast_mac(solicited_node(vip6)),
            Mac([0x33, 0x33, 0xff, 0, 0x01, 0])
        );

        let na = unsolicited_na_frame(mac, vip6);
        let packet = SlicedPacket::from_ethernet(&na).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &packet.net else {
            panic!("not IPv6: {packet:?}")
        };
        assert_eq!(ip.header().hop_limit(), 255);
        assert_eq!(ip.header().source_addr(), vip6);
        assert_eq!(ip.header().destination_addr(), ALL_NODES);
        let Some(TransportSlice::Icmpv6(icmp)) = &packet.transport else {
            panic!("not ICMPv6: {packet:?}")
        };
        let Icmpv6Type::NeighborAdvertisement(flags) = icmp.icmp_type() else {
            panic!("not an NA: {:?}", icmp.icmp_type())
        };
        assert!(flags.r#override && !flags.solicited && !flags.router);
        assert!(icmp.is_checksum_valid(ip.header().source(), ip.header().destination()));
        assert_eq!(&icmp.payload()[16..], &[NDP_TLLAO, 1, 2, 0, 0, 0, 0, 2]);
        let frames = [
            Frame {
                data: na.clone(),
                outgoing: true,
            },
            Frame {
                data: na.clone(),
                outgoing: false,
            },
        ];
        assert_eq!(find_na_src_mac(&frames, vip6), Some(mac));
        assert_eq!(find_na_src_mac(&frames[..1], vip6), None);
        assert_eq!(
            find_na_src_mac(&frames, "2001:db8::21".parse().unwrap()),
            None
        );

        let client: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let ns = neighbor_solicitation_frame(
            Mac([2, 0, 0, 0, 0, 0x10]),
            Mac([2, 0, 0, 0, 0, 0x21]),
            client,
            vip6,
            vip6,
        );
        let packet = SlicedPacket::from_ethernet(&ns).unwrap();
        let Some(TransportSlice::Icmpv6(icmp)) = &packet.transport else {
            panic!("not ICMPv6: {packet:?}")
        };
        assert_eq!(icmp.icmp_type(), Icmpv6Type::NeighborSolicitation);
        assert_eq!(&icmp.payload()[..16], &vip6.octets());
        assert_eq!(&icmp.payload()[16..18], &[NDP_SLLAO, 1]);
        assert_eq!(
            find_na_src_mac(
                &[Frame {
                    data: ns.clone(),
                    outgoing: false
                }],
                vip6
            ),
            None
        );
    }

    #[test]
    fn finds_an_ipv6_syn_ack() {
        let from: SocketAddr = "[2001:db8::100]:80".parse().unwrap();
        let mut data = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x21], [2, 0, 0, 0, 0, 0x10])
            .ipv6(
                "2001:db8::100".parse::<Ipv6Addr>().unwrap().octets(),
                "2001:db8::10".parse::<Ipv6Addr>().unwrap().octets(),
                64,
            )
            .tcp(80, 40000, 1, 65535)
            .syn()
            .ack(1)
            .write(&mut data, &[])
            .unwrap();
        let frames = [Frame {
            data,
            outgoing: false,
        }];
        assert_eq!(
            find_syn_ack_src_mac_from(&frames, from),
            Some(Mac([2, 0, 0, 0, 0, 0x21]))
        );
        assert_eq!(
            find_syn_ack_src_mac_from(&frames, "[2001:db8::100]:81".parse().unwrap()),
            None
        );
    }
}
