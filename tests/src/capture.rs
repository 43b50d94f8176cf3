//! Raw frame capture (and injection) on one interface of a namespace, with an `AF_PACKET` socket.
//!
//! Tests use it to prove where replies come from: with direct routing a SYN-ACK reaches the client with the
//! backend's source MAC, not the lbd node's ([`Capture::wait_syn_ack`], [`find_syn_ack_src_mac`]). It can also
//! send frames, e.g. a gratuitous ARP ([`garp_frame`]).

use std::ffi::CString;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etherparse::{
    ArpEthIpv4Packet, ArpOperation, EtherType, Ethernet2Header, LinkSlice, NetSlice, SlicedPacket,
    TransportSlice,
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
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; MAX_FRAME];
        for _ in 0..100_000 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Some(frame) = self.recv_one(&mut buf, left)?
                && let Some(mac) = find_syn_ack_src_mac(std::slice::from_ref(&frame), from)
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
    frames.iter().filter(|f| !f.outgoing).find_map(|f| {
        let packet = SlicedPacket::from_ethernet(&f.data).ok()?;
        let Some(LinkSlice::Ethernet2(eth)) = &packet.link else {
            return None;
        };
        let Some(NetSlice::Ipv4(ip)) = &packet.net else {
            return None;
        };
        let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
            return None;
        };
        let matches = ip.header().source_addr() == *from.ip()
            && tcp.source_port() == from.port()
            && tcp.syn()
            && tcp.ack();
        matches.then(|| Mac(eth.source()))
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
    use etherparse::PacketBuilder;

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
}
