//! Bounds-checked packet access. Every packet read goes through [`ptr_at`], so the verifier
//! sees a `data + offset + size <= data_end` check before each access.

use aya_ebpf::programs::XdpContext;

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
/// IPv4 header length without options.
pub const IPV4_LEN: usize = 20;
/// EtherType IPv4, network order as read from the frame.
pub const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
/// IPv6 header length (the fixed header; extension headers follow it).
pub const IPV6_LEN: usize = 40;
/// EtherType IPv6, network order as read from the frame.
pub const ETH_P_IPV6_BE: u16 = 0x86ddu16.to_be();
/// EtherType ARP, network order as read from the frame.
pub const ETH_P_ARP_BE: u16 = 0x0806u16.to_be();

/// Ethernet header.
#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype_be: u16,
}

/// IPv4 header without options (RFC 791).
#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len_be: u16,
    pub id_be: u16,
    pub frag_off_be: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check_be: u16,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

/// IPv6 fixed header (RFC 8200). Addresses as 16-bit lanes: the header is 2-aligned in a frame.
#[repr(C)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class (8), flow label (20), as bytes: the header is 2-aligned.
    pub vtc_flow: [u8; 4],
    pub payload_len_be: u16,
    pub next_header: u8,
    pub hop_limit: u8,
    pub saddr: lb_common::Ipv6Lanes,
    pub daddr: lb_common::Ipv6Lanes,
}

/// The start of a TCP header: ports, sequence and acknowledgement numbers, offset and flags.
#[repr(C)]
pub struct TcpHdr {
    pub sport_be: u16,
    pub dport_be: u16,
    pub seq_be: u32,
    pub ack_be: u32,
    pub doff_res: u8,
    pub flags: u8,
    pub window_be: u16,
    pub check_be: u16,
    pub urg_be: u16,
}

/// UDP header.
#[repr(C)]
pub struct UdpHdr {
    pub sport_be: u16,
    pub dport_be: u16,
    pub len_be: u16,
    pub check_be: u16,
}

/// TCP FIN flag.
pub const TCP_FIN: u8 = 0x01;
/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// TCP RST flag.
pub const TCP_RST: u8 = 0x04;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;

/// A pointer to a `T` at `offset` in the packet, or `None` when the packet is too short.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Reads a MAC address set by userspace at load time (`EbpfLoader::set_global`). The volatile
/// read keeps the compiler from folding the zero initialiser into the code.
#[inline(always)]
pub fn global_mac(mac: &'static [u8; 6]) -> [u8; 6] {
    // SAFETY: a valid, aligned reference to a static.
    unsafe { core::ptr::read_volatile(mac) }
}

/// Rewrites the Ethernet addresses for direct routing: destination = `dst`, source = the old
/// destination (this node's own MAC, since only frames addressed to it get here).
#[inline(always)]
pub fn rewrite_macs(ctx: &XdpContext, dst: &[u8; 6]) -> Option<()> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked that the whole header is inside the packet.
    unsafe {
        (*eth).src = (*eth).dst;
        (*eth).dst = *dst;
    }
    Some(())
}
