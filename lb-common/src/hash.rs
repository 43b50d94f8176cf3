//! Pure hash functions shared by the XDP program and userspace.
//!
//! The flow hash must give the same value in the kernel and in userspace (the tests and the
//! userspace fallback predict the data path's choice) and on every node (both VRRP nodes pick
//! the same backend for a flow). It is a 64-bit multiply-xorshift mix (the MurmurHash3
//! finalizer): a few instructions, no loops, no tables, so the verifier accepts it as is.

use crate::{FlowKey, FlowKey6, Ipv6Lanes, MAGLEV_M};

const SEED: u64 = 0x6c62_645f_666c_6f77; // "lbd_flow"

/// MurmurHash3's 64-bit finalizer: a bijective mix with full avalanche.
#[inline(always)]
pub const fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// Hash of a flow key (all fields, as stored: a client-address-only key has its ports zeroed).
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let a = ((key.src_be as u64) << 32) | key.dst_be as u64;
    let b = ((key.sport_be as u64) << 32) | ((key.dport_be as u64) << 16) | key.proto as u64;
    let h = mix64(mix64(a ^ SEED) ^ b);
    (h >> 32) as u32
}

/// Four lanes of an IPv6 address as one 64-bit word.
#[inline(always)]
const fn word(lanes: &Ipv6Lanes, at: usize) -> u64 {
    lanes[at] as u64
        | (lanes[at + 1] as u64) << 16
        | (lanes[at + 2] as u64) << 32
        | (lanes[at + 3] as u64) << 48
}

/// Hash of an IPv6 flow key: the client address in two mixing rounds (its host half is what
/// varies), the VIP folded into one, then ports and protocol as for IPv4.
#[inline(always)]
pub fn flow_hash6(key: &FlowKey6) -> u32 {
    let b = ((key.sport_be as u64) << 32) | ((key.dport_be as u64) << 16) | key.proto as u64;
    let vip = word(&key.dst_be, 0) ^ word(&key.dst_be, 4).rotate_left(32);
    let h = mix64(mix64(word(&key.src_be, 0) ^ SEED) ^ word(&key.src_be, 4));
    let h = mix64(mix64(h ^ vip) ^ b);
    (h >> 32) as u32
}

/// Maglev slot of a flow hash within one table.
#[inline(always)]
pub fn maglev_slot(hash: u32) -> u32 {
    hash % MAGLEV_M
}

/// Hash of a byte string (Maglev permutation: a backend's offset and skip), seeded.
///
/// Userspace only in practice; kept here so the hashing of the whole design lives in one place.
pub fn bytes_hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = mix64(seed ^ (bytes.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = mix64(h ^ w);
    }
    let mut last = [0u8; 8];
    let rest = chunks.remainder();
    last[..rest.len()].copy_from_slice(rest);
    mix64(h ^ u64::from_le_bytes(last) ^ 0x80)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: [u8; 4], sport: u16) -> FlowKey {
        FlowKey::new(
            u32::from_ne_bytes(src),
            u32::from_ne_bytes([198, 18, 0, 100]),
            sport.to_be(),
            80u16.to_be(),
            crate::IPPROTO_TCP,
        )
    }

    #[test]
    fn flow_hash_is_stable_and_spreads() {
        // Deterministic; `hashes_are_pinned` pins the literal values.
        let k = key([198, 18, 0, 10], 40000);
        assert_eq!(flow_hash(&k), flow_hash(&k));
        let mut seen = [0u32; 16];
        for port in 0..16_000u16 {
            seen[(flow_hash(&key([198, 18, 0, 10], port)) >> 28) as usize] += 1;
        }
        for n in seen {
            assert!((800..1200).contains(&n), "uneven spread: {seen:?}");
        }
    }

    #[test]
    fn bytes_hash_depends_on_seed_and_content() {
        assert_ne!(
            bytes_hash(1, b"198.18.0.21:80"),
            bytes_hash(2, b"198.18.0.21:80")
        );
        assert_ne!(
            bytes_hash(1, b"198.18.0.21:80"),
            bytes_hash(1, b"198.18.0.22:80")
        );
        assert_ne!(bytes_hash(1, b""), bytes_hash(1, b"\0"));
    }

    /// Literal values pin the hashes. A change to `flow_hash` moves established flows to other
    /// backends when lbd is upgraded, and between two nodes running different versions (a failover
    /// then breaks every stream); a change to `bytes_hash` reshuffles every Maglev table. If this
    /// test fails, the change must be deliberate, and released as such. Computed once with the
    /// implementation of lbd 0.1 on a little-endian host (x86_64, and the eBPF target bpfel): the
    /// key fields are network-order values read as native integers, so a big-endian host
    /// (bpfeb) gets other, self-consistent values.
    #[test]
    #[cfg(target_endian = "little")]
    fn hashes_are_pinned() {
        let ip = u32::from_ne_bytes;
        let tcp = crate::IPPROTO_TCP;
        let udp = crate::IPPROTO_UDP;
        let vip = ip([198, 18, 0, 100]);
        #[rustfmt::skip]
        let cases: [(FlowKey, u32, u32); 6] = [
            (FlowKey::new(ip([198, 18, 0, 10]), vip, 40000u16.to_be(), 80u16.to_be(), tcp), 0xca62_c3b2, 63825),
            (FlowKey::new(ip([198, 18, 0, 10]), vip, 40001u16.to_be(), 80u16.to_be(), tcp), 0xcd57_b8ce, 60280),
            (FlowKey::new(ip([203, 0, 113, 7]), vip, 53000u16.to_be(), 5353u16.to_be(), udp), 0x14f3_7458, 24421),
            // A client-address-only key: the client port is zeroed.
            (FlowKey::new(ip([198, 18, 0, 10]), vip, 0, 80u16.to_be(), tcp), 0xe996_643e, 31401),
            (FlowKey::new(0, 0, 0, 0, 0), 0xa90f_465a, 40268),
            (FlowKey::new(u32::MAX, u32::MAX, u16::MAX, u16::MAX, u8::MAX), 0xcfc5_f149, 8580),
        ];
        for (key, hash, slot) in cases {
            assert_eq!(flow_hash(&key), hash, "flow_hash({key:?})");
            assert_eq!(maglev_slot(hash), slot, "maglev_slot({hash:#x})");
        }
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0xb456_bcfc_34c2_cb2c);
        assert_eq!(bytes_hash(0, b""), 0x717f_5c0e_8b9c_9ae6);
        assert_eq!(
            bytes_hash(0x6c62_645f_6d61_676c, b"198.18.0.21:80"),
            0xe6af_38e5_ffac_549f
        );
        assert_eq!(bytes_hash(1, b"198.18.0.22:80"), 0x0528_8552_3cbe_cd04);
    }

    fn key6(src: [u8; 16], sport: u16, proto: u8) -> FlowKey6 {
        let vip = "2001:db8::100".parse::<core::net::Ipv6Addr>().unwrap();
        FlowKey6::new(
            crate::ipv6_lanes(src),
            crate::ipv6_lanes(vip.octets()),
            sport.to_be(),
            80u16.to_be(),
            proto,
        )
    }

    #[test]
    fn flow_hash6_spreads_over_ports_and_hosts() {
        let client = "2001:db8::10".parse::<core::net::Ipv6Addr>().unwrap();
        let mut by_port = [0u32; 16];
        for port in 0..16_000u16 {
            by_port
                [(flow_hash6(&key6(client.octets(), port, crate::IPPROTO_TCP)) >> 28) as usize] +=
                1;
        }
        let mut by_host = [0u32; 16];
        for host in 0..16_000u16 {
            let mut o = client.octets();
            o[14..].copy_from_slice(&host.to_be_bytes());
            by_host[(flow_hash6(&key6(o, 40000, crate::IPPROTO_TCP)) >> 28) as usize] += 1;
        }
        for n in by_port.iter().chain(&by_host) {
            assert!(
                (800..1200).contains(n),
                "uneven spread: {by_port:?} {by_host:?}"
            );
        }
        // Protocol and the address halves all count.
        let k = key6(client.octets(), 40000, crate::IPPROTO_TCP);
        assert_ne!(
            flow_hash6(&k),
            flow_hash6(&key6(client.octets(), 40000, crate::IPPROTO_UDP))
        );
        let mut prefix = client.octets();
        prefix[3] ^= 1;
        assert_ne!(
            flow_hash6(&k),
            flow_hash6(&key6(prefix, 40000, crate::IPPROTO_TCP))
        );
    }

    /// As `hashes_are_pinned`, for IPv6 keys (lbd 0.2).
    #[test]
    #[cfg(target_endian = "little")]
    fn hashes6_are_pinned() {
        let client = "2001:db8::10"
            .parse::<core::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let cases = [
            (key6(client, 40000, crate::IPPROTO_TCP), 0xa756_6588),
            // A client-address-only key: the client port is zeroed.
            (key6(client, 0, crate::IPPROTO_TCP), 0x89fc_c8fe),
            (FlowKey6::new([0; 8], [0; 8], 0, 0, 0), 0x9e48_0aa1),
        ];
        for (key, hash) in cases {
            assert_eq!(flow_hash6(&key), hash, "flow_hash6({key:?})");
        }
    }
}
