//! lbd's XDP programs. Entry points only; the work is in the modules:
//! [`parse`] (bounds-checked header access), [`maps`] (every map, one comment each) and
//! [`balancer`] (VIP match, flow lookup, Maglev selection, MAC rewrite, counters).
#![no_std]
#![no_main]
#![expect(
    missing_docs,
    reason = "aya's #[xdp] emits each exported entry point without the docs of the function it wraps"
)]

mod balancer;
mod maps;
mod parse;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    helpers::generated::bpf_set_hash_invalid,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// The balancer: VIP traffic goes to a backend (LVS direct routing), the rest to the kernel.
#[xdp]
pub fn lbd_xdp(ctx: XdpContext) -> u32 {
    balancer::run(&ctx)
}

/// The floor for benchmarks: set the destination MAC to `BARE_DST_MAC`, the source MAC to the
/// old destination, and send the frame back out. What any direct-routing balancer must do at least.
#[xdp]
pub fn bare_tx(ctx: XdpContext) -> u32 {
    match parse::rewrite_macs(&ctx, &parse::global_mac(&balancer::BARE_DST_MAC)) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_PASS,
    }
}

/// Accepts everything. Attached to the peer of a veth that runs `lbd_xdp` in native mode:
/// veth delivers native `XDP_TX` frames only when its peer has an XDP program.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Test harness only: on a test router's ingress, forgets the flow hash a packet carries from
/// the sender's socket across veth, so that the router's ECMP hashes the 5-tuple as a real
/// router does (a socket's hash is re-rolled after a timeout, which no real network follows).
#[classifier]
pub fn clear_hash(ctx: TcContext) -> i32 {
    // SAFETY: the helper takes the program's own skb and only clears its hash fields.
    unsafe { bpf_set_hash_invalid(ctx.skb.skb) };
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
