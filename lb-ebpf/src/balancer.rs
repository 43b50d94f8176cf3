//! The balancer: parse, match a VIP, find the flow's backend (connection table first, Maglev
//! for a new flow), rewrite the MACs and send the frame back out (LVS direct routing).
//!
//! Anything that is not a well-formed, unfragmented IPv4 or IPv6 TCP/UDP packet for a VIP
//! addressed to this node's MAC goes to the kernel untouched (`XDP_PASS`) and is counted with its
//! reason. Both families share the backends, the Maglev rings and the counters; each has its own
//! VIP map and connection table.

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_coarse_ns, maps::LruHashMap, programs::XdpContext,
};
use lb_common::{
    FLOOD_SLICE_NS, FLOW_FLAG_CLOSING, FlowKey, FlowKey6, FlowState, IPPROTO_TCP, IPPROTO_UDP,
    Ipv6Lanes, MAGLEV_M, NO_BACKEND, STATS_BACKEND_BASE, VIP_FLAG_SRC_ONLY, VipInfo, VipKey,
    VipKey6, backend_state,
    hash::{flow_hash, flow_hash6, maglev_slot},
    reason,
};

use crate::{
    maps::{BACKENDS, CONNTRACK, CONNTRACK6, FLOOD, RINGS, SETTINGS, STATS, VIPS, VIPS6},
    parse::{
        ETH_LEN, ETH_P_ARP_BE, ETH_P_IP_BE, ETH_P_IPV6_BE, EthHdr, IPV4_LEN, IPV6_LEN, Ipv4Hdr,
        Ipv6Hdr, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpHdr, UdpHdr, global_mac, ptr_at,
        rewrite_macs,
    },
};

/// ICMP.
const IPPROTO_ICMP: u8 = 1;
/// ICMPv6 (neighbour discovery, path MTU).
const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 Fragment extension header.
const IPV6_FRAGMENT: u8 = 44;

/// This node's MAC on the attached interface, set by userspace at load time.
#[unsafe(no_mangle)]
pub static OWN_MAC: [u8; 6] = [0; 6];

/// Destination MAC of the `bare_tx` benchmark program, set by userspace at load time.
#[unsafe(no_mangle)]
pub static BARE_DST_MAC: [u8; 6] = [0; 6];

/// How often a flow's last-seen time is refreshed: once a second keeps the write (and its
/// cache-line traffic between CPUs) off most packets.
const LAST_SEEN_GRANULARITY_NS: u64 = 1_000_000_000;

/// The frame goes to a backend: which backend to count it for.
struct Forward {
    backend_id: u32,
    /// 1 when this frame started a flow (a connection-table insert), else 0.
    new_flow: u64,
    /// A new flow the flood guard kept out of the connection table.
    untracked: bool,
}

/// The frame does not go to a backend: the action and the reason counter.
struct Skip {
    action: u32,
    reason: u32,
}

const fn pass(reason: u32) -> Skip {
    Skip {
        action: xdp_action::XDP_PASS,
        reason,
    }
}

const fn drop(reason: u32) -> Skip {
    Skip {
        action: xdp_action::XDP_DROP,
        reason,
    }
}

/// Entry point body: balance, then count once with the outcome. A forwarded frame counts for
/// its backend only; userspace sums a service's backends. Each counter costs its own cache
/// lines (the per-CPU pointer and the value), which showed as a tenth of a single stream's
/// rate through the real path.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    match balance(ctx) {
        Ok(fwd) => {
            count(STATS_BACKEND_BASE + fwd.backend_id, len, fwd.new_flow);
            if fwd.untracked {
                count(reason::FLOOD_GUARD, len, 0);
            }
            xdp_action::XDP_TX
        }
        Err(skip) => {
            count(skip.reason, len, 0);
            skip.action
        }
    }
}

#[inline(always)]
fn count(index: u32, len: u64, new_flow: u64) {
    if let Some(c) = STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU value: no other CPU writes it, and XDP does not preempt itself.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
            // Same cache line: no branch, no extra miss.
            (*c).new_flows += new_flow;
        }
    }
}

#[inline(always)]
fn balance(ctx: &XdpContext) -> Result<Forward, Skip> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(pass(reason::PASS_TRUNCATED))?;
    // SAFETY (all header reads below): ptr_at checked that the whole header is in the packet.
    let ethertype = unsafe { (*eth).ethertype_be };
    if ethertype == ETH_P_IP_BE {
        if unsafe { (*eth).dst } != global_mac(&OWN_MAC) {
            return Err(pass(reason::PASS_OTHER_MAC));
        }
        balance_v4(ctx)
    } else if ethertype == ETH_P_IPV6_BE {
        balance_v6(ctx, eth)
    } else if ethertype == ETH_P_ARP_BE {
        Err(pass(reason::PASS_ARP))
    } else {
        Err(pass(reason::PASS_NOT_IP))
    }
}

#[inline(always)]
fn balance_v4(ctx: &XdpContext) -> Result<Forward, Skip> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_LEN).ok_or(pass(reason::PASS_TRUNCATED))?;
    let version_ihl = unsafe { (*ip).version_ihl };
    if version_ihl != 0x45 {
        return Err(pass(if version_ihl >> 4 == 4 && version_ihl & 0x0f > 5 {
            reason::PASS_IP_OPTIONS
        } else {
            reason::PASS_BAD_IP_HEADER
        }));
    }
    // More-fragments bit or a fragment offset: only the first fragment has ports.
    if unsafe { (*ip).frag_off_be } & 0x3fffu16.to_be() != 0 {
        return Err(pass(reason::PASS_FRAGMENT));
    }
    let proto = unsafe { (*ip).proto };
    if proto == IPPROTO_ICMP {
        return Err(pass(reason::PASS_ICMP));
    }
    let (sport_be, dport_be, tcp_flags) = ports(ctx, ETH_LEN + IPV4_LEN, proto)?;
    let daddr = u32::from_ne_bytes(unsafe { (*ip).daddr });
    let vip_key = VipKey {
        addr_be: daddr,
        port_be: dport_be,
        proto,
        _pad: 0,
    };
    // SAFETY: VIPS values are plain integers; a concurrent update yields old or new values.
    let vip = unsafe { VIPS.get(vip_key) }.ok_or(pass(reason::PASS_NOT_VIP))?;
    let src_only = vip.flags & VIP_FLAG_SRC_ONLY != 0;
    let flow = FlowKey::new(
        u32::from_ne_bytes(unsafe { (*ip).saddr }),
        daddr,
        if src_only { 0 } else { sport_be },
        dport_be,
        proto,
    );
    select(ctx, &CONNTRACK, flow, vip, tcp_flags, flow_hash)
}

/// IPv6: the fixed header, then TCP or UDP directly. Anything else between them (extension
/// headers, fragments) is the kernel's; ICMPv6 carries neighbour discovery, so it always is.
#[inline(always)]
fn balance_v6(ctx: &XdpContext, eth: *const EthHdr) -> Result<Forward, Skip> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, ETH_LEN).ok_or(pass(reason::PASS_TRUNCATED))?;
    let proto = unsafe { (*ip).next_header };
    if proto == IPPROTO_ICMPV6 {
        return Err(pass(reason::PASS_ICMP));
    }
    if unsafe { (*eth).dst } != global_mac(&OWN_MAC) {
        return Err(pass(reason::PASS_OTHER_MAC));
    }
    if unsafe { (*ip).vtc_flow[0] } >> 4 != 6 {
        return Err(pass(reason::PASS_BAD_IP_HEADER));
    }
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(pass(match proto {
            IPV6_FRAGMENT => reason::PASS_FRAGMENT,
            // Hop-by-hop, routing, destination options, ESP, AH, mobility, HIP, shim6 and the
            // two experimental values (RFC 8200 §4, the IANA extension header registry).
            0 | 43 | 60 | 50 | 51 | 135 | 139 | 140 | 253 | 254 => reason::PASS_IPV6_EXT_HEADER,
            _ => reason::PASS_OTHER_PROTO,
        }));
    }
    let (sport_be, dport_be, tcp_flags) = ports(ctx, ETH_LEN + IPV6_LEN, proto)?;
    let daddr = lanes(unsafe { &raw const (*ip).daddr });
    let vip_key = VipKey6 {
        addr_be: daddr,
        port_be: dport_be,
        proto,
        _pad: 0,
    };
    // SAFETY: as for VIPS.
    let vip = unsafe { VIPS6.get(vip_key) }.ok_or(pass(reason::PASS_NOT_VIP))?;
    let src_only = vip.flags & VIP_FLAG_SRC_ONLY != 0;
    let flow = FlowKey6::new(
        lanes(unsafe { &raw const (*ip).saddr }),
        daddr,
        if src_only { 0 } else { sport_be },
        dport_be,
        proto,
    );
    select(ctx, &CONNTRACK6, flow, vip, tcp_flags, flow_hash6)
}

/// An IPv6 address read from the packet lane by lane: eight 16-bit loads. A copy of the array
/// compiles to a call of the object's `memmove` (a BPF subprogram) on every packet.
#[inline(always)]
fn lanes(p: *const Ipv6Lanes) -> Ipv6Lanes {
    let p = p.cast::<u16>();
    // SAFETY: `p` points into a header ptr_at checked to be inside the packet; the header is
    // 2-aligned, as each lane.
    unsafe {
        [
            p.read(),
            p.add(1).read(),
            p.add(2).read(),
            p.add(3).read(),
            p.add(4).read(),
            p.add(5).read(),
            p.add(6).read(),
            p.add(7).read(),
        ]
    }
}

/// The ports and TCP flags of a TCP or UDP header at `l4`; other protocols are the kernel's.
#[inline(always)]
fn ports(ctx: &XdpContext, l4: usize, proto: u8) -> Result<(u16, u16, u8), Skip> {
    match proto {
        IPPROTO_TCP => {
            let tcp: *const TcpHdr = ptr_at(ctx, l4).ok_or(pass(reason::PASS_TRUNCATED))?;
            Ok(unsafe { ((*tcp).sport_be, (*tcp).dport_be, (*tcp).flags) })
        }
        IPPROTO_UDP => {
            let udp: *const UdpHdr = ptr_at(ctx, l4).ok_or(pass(reason::PASS_TRUNCATED))?;
            Ok(unsafe { ((*udp).sport_be, (*udp).dport_be, 0) })
        }
        _ => Err(pass(reason::PASS_OTHER_PROTO)),
    }
}

/// The family-independent part: the connection table first, Maglev for a new flow, then the
/// MAC rewrite. `K` is the family's flow key, `conntrack` its table.
#[inline(always)]
fn select<K>(
    ctx: &XdpContext,
    conntrack: &LruHashMap<K, FlowState>,
    flow: K,
    vip: &VipInfo,
    tcp_flags: u8,
    hash: fn(&K) -> u32,
) -> Result<Forward, Skip> {
    let closing = if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        FLOW_FLAG_CLOSING
    } else {
        0
    };
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };

    // A SYN (without ACK) on a flow that already ended is a new connection that reuses the
    // client's port: it is scheduled afresh, as IPVS does (`conn_reuse_mode`), so that it does
    // not follow the old connection to a backend that has since been drained or removed. Not
    // for source-only services, whose one entry per client also carries its other connections.
    let reuse = tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && vip.flags & VIP_FLAG_SRC_ONLY == 0;
    // An established flow keeps its backend, unless health checks took that backend down.
    if let Some(state) = conntrack.get_ptr_mut(&flow)
        && !(reuse && unsafe { (*state).flags } & FLOW_FLAG_CLOSING != 0)
    {
        let id = unsafe { (*state).backend_id };
        if let Some(backend) = BACKENDS.get(id)
            && backend.state != backend_state::DOWN
        {
            unsafe {
                if now.wrapping_sub((*state).last_seen_ns) > LAST_SEEN_GRANULARITY_NS
                    || (*state).flags | closing != (*state).flags
                {
                    (*state).last_seen_ns = now;
                    (*state).flags |= closing;
                }
            }
            rewrite_macs(ctx, &backend.mac).ok_or(pass(reason::PASS_TRUNCATED))?;
            return Ok(Forward {
                backend_id: id,
                new_flow: 0,
                untracked: false,
            });
        }
    }

    // A new flow (or one whose backend is down): Maglev picks, the connection table remembers.
    let slot = vip.ring * MAGLEV_M + maglev_slot(hash(&flow));
    let id = *RINGS.get(slot).ok_or(drop(reason::DROP_NO_BACKEND))?;
    if id == NO_BACKEND {
        return Err(drop(reason::DROP_NO_BACKEND));
    }
    let backend = BACKENDS.get(id).ok_or(drop(reason::DROP_BAD_BACKEND))?;
    let state = FlowState {
        backend_id: id,
        flags: closing,
        last_seen_ns: now,
    };
    // Above the flood guard's rate no entry is made: the flow still reaches its Maglev backend,
    // and the established flows keep their entries instead of being evicted by a flood.
    let tracked = flood_allows(now);
    if tracked {
        // A full table evicts its least recently used flow; an error here only costs the flow
        // its pinning, so the packet still goes out.
        let _ = conntrack.insert(&flow, state, 0);
    }
    rewrite_macs(ctx, &backend.mac).ok_or(pass(reason::PASS_TRUNCATED))?;
    Ok(Forward {
        backend_id: id,
        new_flow: u64::from(tracked),
        untracked: !tracked,
    })
}

/// The flood guard: whether this CPU may insert one more new flow in the current slice.
#[inline(always)]
fn flood_allows(now: u64) -> bool {
    let limit = match SETTINGS.get(0) {
        Some(s) if s.flood_new_flows_per_slice != 0 => s.flood_new_flows_per_slice,
        _ => return true,
    };
    let Some(slot) = FLOOD.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: a per-CPU value: no other CPU writes it, and XDP does not preempt itself.
    unsafe {
        if now.wrapping_sub((*slot).slice_start_ns) >= FLOOD_SLICE_NS {
            (*slot).slice_start_ns = now;
            (*slot).new_flows = 0;
        }
        (*slot).new_flows += 1;
        (*slot).new_flows <= limit
    }
}
