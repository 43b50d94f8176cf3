//! Types shared by the lbd XDP program (`lb-ebpf`) and userspace (`lb-daemon`).
//!
//! Everything here crosses the kernel boundary through BPF maps, so every type is `#[repr(C)]`,
//! made of fixed-width fields with explicit padding, and carries a size assertion. Fields that hold
//! bytes in network order say so with a `_be` suffix: such a field holds the wire bytes in memory
//! order (userspace builds it with `u32::from_ne_bytes(ip.octets())` and `port.to_be()`).
//!
//! Modules: [`hash`] (the flow hash and the Maglev permutation hash, pure functions used on both
//! sides so both VRRP nodes and the tests pick the same backend as the data path).
#![no_std]

pub mod hash;

/// Maglev lookup table size per service: a prime well above 100 × the largest backend count.
pub const MAGLEV_M: u32 = 65537;
/// Most services (VIP, port, protocol) one lbd node balances (Katran's default VIP count).
pub const MAX_SERVICES: u32 = 512;
/// Services the Maglev rings are sized for unless the config asks for more
/// (`daemon.max_services`): the rings cost 1 MiB of kernel memory per service.
pub const DEFAULT_MAX_SERVICES: u32 = 64;
/// Maglev tables at most: two per service, so a new table is written aside and switched in
/// atomically. The RINGS map holds `2 * max_services` of them, sized at load.
pub const MAX_RINGS: u32 = 2 * MAX_SERVICES;
/// Most backends across all services (backend ids are `0..MAX_BACKENDS`): twice the configured
/// limit, so that backends leaving with open flows keep their ids while new ones come.
pub const MAX_BACKENDS: u32 = 8192;
/// Default capacity of the connection table (flows); `[daemon] conntrack_max` overrides it.
pub const CONNTRACK_DEFAULT_MAX: u32 = 262_144;
/// Maglev slot value meaning "no backend" (a service whose backends are all out of rotation).
pub const NO_BACKEND: u32 = u32::MAX;

/// IP protocol numbers the data path balances.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;

/// Key of the VIPS map: an IPv4 virtual service (VIP, port, protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VipKey {
    /// Virtual IPv4 address, network order.
    pub addr_be: u32,
    /// Virtual port, network order.
    pub port_be: u16,
    /// IP protocol ([`IPPROTO_TCP`] or [`IPPROTO_UDP`]).
    pub proto: u8,
    /// Explicit padding, always zero.
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<VipKey>() == 8);

/// An IPv6 address as it sits in a packet and in the IPv6 map keys: eight 16-bit lanes in
/// network order, read as native integers. Lanes rather than bytes: the IPv6 header sits at
/// offset 14 of a frame, 2-aligned, so the data path copies an address in 8 loads, not 16.
pub type Ipv6Lanes = [u16; 8];

/// [`Ipv6Lanes`] of an address's 16 octets (userspace builds map keys with it).
pub const fn ipv6_lanes(octets: [u8; 16]) -> Ipv6Lanes {
    let mut lanes = [0u16; 8];
    let mut i = 0;
    while i < 8 {
        lanes[i] = u16::from_ne_bytes([octets[2 * i], octets[2 * i + 1]]);
        i += 1;
    }
    lanes
}

/// The 16 octets of an address held as [`Ipv6Lanes`].
pub const fn ipv6_octets(lanes: Ipv6Lanes) -> [u8; 16] {
    let mut octets = [0u8; 16];
    let mut i = 0;
    while i < 8 {
        let b = lanes[i].to_ne_bytes();
        octets[2 * i] = b[0];
        octets[2 * i + 1] = b[1];
        i += 1;
    }
    octets
}

/// The 16 octets of an address as IPv6 holds it: an IPv4 address mapped (`::ffff:a.b.c.d`).
pub const fn mapped_octets(ip: core::net::IpAddr) -> [u8; 16] {
    match ip {
        core::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        core::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// Key of the VIPS6 map: an IPv6 virtual service (VIP, port, protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VipKey6 {
    /// Virtual IPv6 address, network order.
    pub addr_be: Ipv6Lanes,
    /// Virtual port, network order.
    pub port_be: u16,
    /// IP protocol ([`IPPROTO_TCP`] or [`IPPROTO_UDP`]).
    pub proto: u8,
    /// Explicit padding, always zero.
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<VipKey6>() == 20);

/// [`VipInfo::flags`]: the flow key is the client address only (persistence; IPVS `sh`).
pub const VIP_FLAG_SRC_ONLY: u32 = 1;

/// Value of the VIPS map: which service a VIP is and which Maglev table it uses now.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipInfo {
    /// Service id (`0..MAX_SERVICES`), for diagnostics: the service counters are userspace's.
    pub service_id: u32,
    /// Maglev table in use (`0..MAX_RINGS`); the slot of a hash is `ring * MAGLEV_M + hash % MAGLEV_M`.
    pub ring: u32,
    /// `VIP_FLAG_*` bits.
    pub flags: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<VipInfo>() == 16);

/// Backend state (Cilium's ACTIVE / TERMINATING / QUARANTINED / MAINTENANCE, plus removed).
///
/// Only `ACTIVE` backends are in a Maglev table, so only they get new flows. Established flows
/// stay with a draining, maintenance or removed backend until they end; a `DOWN` backend (failed
/// health checks) loses its flows at once, so its clients are re-balanced instead of timing out.
pub mod backend_state {
    /// In rotation.
    pub const ACTIVE: u32 = 0;
    /// Out of rotation by an operator's drain; established flows go on.
    pub const DRAINING: u32 = 1;
    /// Failed health checks: out of rotation, its flows are re-balanced.
    pub const DOWN: u32 = 2;
    /// Out of rotation by an operator; established flows go on.
    pub const MAINTENANCE: u32 = 3;
    /// Removed from the config; kept until its established flows end.
    pub const REMOVED: u32 = 4;
}

/// Value of the BACKENDS map (index = backend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Backend MAC address: the new destination MAC of forwarded frames.
    pub mac: [u8; 6],
    /// Explicit padding, always zero.
    pub _pad: [u8; 2],
    /// One of [`backend_state`].
    pub state: u32,
    /// Backend address, for diagnostics (`bpftool map dump`): the 16 octets of an IPv6
    /// address, or of an IPv4 one mapped (`::ffff:a.b.c.d`). The data path never reads it.
    pub addr: [u8; 16],
    /// Explicit padding, always zero.
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 32);

/// Key of the CONNTRACK map: a flow as the client sends it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Client address, network order.
    pub src_be: u32,
    /// VIP, network order.
    pub dst_be: u32,
    /// Client port, network order (zero for client-address-only services).
    pub sport_be: u16,
    /// VIP port, network order.
    pub dport_be: u16,
    /// IP protocol.
    pub proto: u8,
    /// Explicit padding, always zero. Two scalars rather than `[u8; 3]`: zeroing three bytes
    /// compiles to a call of the eBPF `memset` subprogram on every packet, one store each does not.
    pub _pad8: u8,
    /// Explicit padding, always zero.
    pub _pad16: u16,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);

impl FlowKey {
    /// A flow key with its padding zeroed (ports and addresses in network order, as stored).
    #[inline(always)]
    pub const fn new(src_be: u32, dst_be: u32, sport_be: u16, dport_be: u16, proto: u8) -> FlowKey {
        FlowKey {
            src_be,
            dst_be,
            sport_be,
            dport_be,
            proto,
            _pad8: 0,
            _pad16: 0,
        }
    }
}

/// Key of the CONNTRACK6 map: an IPv6 flow as the client sends it (the same fields as
/// [`FlowKey`], with 128-bit addresses).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey6 {
    /// Client address, network order.
    pub src_be: Ipv6Lanes,
    /// VIP, network order.
    pub dst_be: Ipv6Lanes,
    /// Client port, network order (zero for client-address-only services).
    pub sport_be: u16,
    /// VIP port, network order.
    pub dport_be: u16,
    /// IP protocol.
    pub proto: u8,
    /// Explicit padding, always zero (two scalars, as in [`FlowKey`]).
    pub _pad8: u8,
    /// Explicit padding, always zero.
    pub _pad16: u16,
}
const _: () = assert!(core::mem::size_of::<FlowKey6>() == 40);

impl FlowKey6 {
    /// A flow key with its padding zeroed (ports and addresses in network order, as stored).
    #[inline(always)]
    pub const fn new(
        src_be: Ipv6Lanes,
        dst_be: Ipv6Lanes,
        sport_be: u16,
        dport_be: u16,
        proto: u8,
    ) -> FlowKey6 {
        FlowKey6 {
            src_be,
            dst_be,
            sport_be,
            dport_be,
            proto,
            _pad8: 0,
            _pad16: 0,
        }
    }
}

/// [`FlowState::flags`]: a FIN or RST was seen from the client; the flow is ending.
pub const FLOW_FLAG_CLOSING: u32 = 1;

/// Value of the CONNTRACK map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowState {
    /// Backend id the flow is pinned to.
    pub backend_id: u32,
    /// `FLOW_FLAG_*` bits.
    pub flags: u32,
    /// Last packet seen, `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE), refreshed at most once a second.
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FlowState>() == 16);

/// Length of the flood guard's time slice: new flows are counted per CPU per slice.
pub const FLOOD_SLICE_NS: u64 = 100_000_000;
/// Slices per second.
pub const FLOOD_SLICES_PER_SEC: u64 = 1_000_000_000 / FLOOD_SLICE_NS;

/// Value of SETTINGS[0]: what userspace sets at run time without reloading the program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// New flows one CPU may insert into the connection table per [`FLOOD_SLICE_NS`]; beyond
    /// them new flows go by Maglev alone until the slice ends. Zero: no guard.
    pub flood_new_flows_per_slice: u64,
}
const _: () = assert!(core::mem::size_of::<Settings>() == 8);

/// Value of the per-CPU FLOOD map: the flood guard's count in the current slice.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodSlot {
    /// When the slice began (`bpf_ktime_get_coarse_ns`).
    pub slice_start_ns: u64,
    /// New flows seen in it.
    pub new_flows: u64,
}
const _: () = assert!(core::mem::size_of::<FloodSlot>() == 16);

/// Value of the per-CPU STATS map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes (whole frames).
    pub bytes: u64,
    /// Flows started: connection-table inserts in XDP, connections or UDP sessions opened by the
    /// proxy (what `ipvsadm --rate` calls CPS). Zero for pass/drop reasons.
    pub new_flows: u64,
}
const _: () = assert!(core::mem::size_of::<Counter>() == 24);

impl Counter {
    /// Adds `other` (wrapping, as the per-CPU counters themselves do).
    pub fn add(&mut self, other: Counter) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.new_flows = self.new_flows.wrapping_add(other.new_flows);
    }
}

/// Why the data path let a packet go to the kernel (`XDP_PASS`) or dropped it. Index into STATS.
pub mod reason {
    /// ARP: the kernel answers for the VIP.
    pub const PASS_ARP: u32 = 0;
    /// An ethertype other than IPv4, IPv6 and ARP (VLAN, LLDP...).
    pub const PASS_NOT_IP: u32 = 1;
    /// A header shorter than it must be (Ethernet, IPv4, IPv6, TCP or UDP).
    pub const PASS_TRUNCATED: u32 = 2;
    /// IPv4 version or header length field invalid, or an IPv6 header of another version.
    pub const PASS_BAD_IP_HEADER: u32 = 3;
    /// IPv4 header with options (IHL > 5).
    pub const PASS_IP_OPTIONS: u32 = 4;
    /// An IPv4 fragment (MF set or a non-zero offset), or an IPv6 Fragment header.
    pub const PASS_FRAGMENT: u32 = 5;
    /// ICMP and ICMPv6 (neighbour discovery among it): always the kernel's.
    pub const PASS_ICMP: u32 = 6;
    /// An IP protocol other than TCP, UDP and ICMP.
    pub const PASS_OTHER_PROTO: u32 = 7;
    /// A frame not addressed to this node's MAC (flooded by a switch; another node's to forward).
    pub const PASS_OTHER_MAC: u32 = 8;
    /// Not a configured VIP, port and protocol.
    pub const PASS_NOT_VIP: u32 = 9;
    /// A VIP whose service has no backend in rotation: dropped.
    pub const DROP_NO_BACKEND: u32 = 10;
    /// A backend id the BACKENDS map does not hold (a table update in flight): dropped.
    pub const DROP_BAD_BACKEND: u32 = 11;
    /// New flows above the flood guard's rate: forwarded by the Maglev table without a
    /// connection-table entry (XDP), or held back at accept (proxy). Counted beside the
    /// backend's own counter.
    pub const FLOOD_GUARD: u32 = 12;
    /// An IPv6 extension header before the transport header (hop-by-hop, routing, destination
    /// options, AH, ESP, mobility...): the program does not walk them.
    pub const PASS_IPV6_EXT_HEADER: u32 = 13;
    /// Number of reasons.
    pub const COUNT: u32 = 14;
    /// Names for userspace (metrics, `lbctl status`), indexed by reason.
    pub const NAMES: [&str; COUNT as usize] = [
        "pass_arp",
        "pass_not_ip",
        "pass_truncated",
        "pass_bad_ip_header",
        "pass_ip_options",
        "pass_fragment",
        "pass_icmp",
        "pass_other_proto",
        "pass_other_mac",
        "pass_not_vip",
        "drop_no_backend",
        "drop_bad_backend",
        "flood_guard",
        "pass_ipv6_ext_header",
    ];
}

/// STATS index of the first service counter (service `s` is at `STATS_SERVICE_BASE + s`). The
/// XDP program leaves these at zero: userspace fills them from the backend counters.
pub const STATS_SERVICE_BASE: u32 = reason::COUNT;
/// STATS index of the first backend counter (backend `b` is at `STATS_BACKEND_BASE + b`).
pub const STATS_BACKEND_BASE: u32 = STATS_SERVICE_BASE + MAX_SERVICES;
/// Entries in the STATS map.
pub const STATS_LEN: u32 = STATS_BACKEND_BASE + MAX_BACKENDS;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is repr(C), made of integers and byte arrays, with explicit padding: any
    // bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::VipKey {}
    unsafe impl aya::Pod for super::VipInfo {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::VipKey6 {}
    unsafe impl aya::Pod for super::FlowKey6 {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::FloodSlot {}
    unsafe impl aya::Pod for super::Counter {}
}
