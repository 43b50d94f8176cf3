//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted.
//!
//! Each backend walks its own permutation of the `M` slots (offset and skip from two seeded
//! hashes of its name) and claims the next free slot when its turn comes. Weights decide how
//! often a backend's turn comes: each round a backend earns its weight in credit and claims one
//! slot per `max weight` of credit, so slot shares follow weights. The table depends only on the
//! set of (name, weight) pairs — names are sorted first — so every node builds the same table.

use std::net::IpAddr;

use lb_common::{MAGLEV_M, NO_BACKEND, hash::bytes_hash};

const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
const SKIP_SEED: u64 = 0x6d61_676c_6576_736b; // "maglevsk"

/// A backend as Maglev sees it: a stable name (its address) and a weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Stable identity; the same string on every node.
    pub name: &'a str,
    /// Relative weight, at least 1.
    pub weight: u32,
}

/// Builds a table of `m` slots (m prime). Each slot holds an index into `entries`;
/// an empty `entries` gives an empty table.
pub fn build(entries: &[Entry<'_>], m: u32) -> Vec<u32> {
    if entries.is_empty() || m == 0 {
        return Vec::new();
    }
    let m64 = m as u64;
    // Sort by name so that the order of the config or of lbctl changes does not matter.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&a, &b| entries[a].name.cmp(entries[b].name));
    let perms: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let name = entries[i].name.as_bytes();
            let offset = bytes_hash(OFFSET_SEED, name) % m64;
            let skip = bytes_hash(SKIP_SEED, name) % (m64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let max_weight = entries.iter().map(|e| e.weight.max(1)).max().unwrap_or(1) as u64;
    let mut next = vec![0u64; order.len()];
    let mut credit = vec![0u64; order.len()];
    let mut table = vec![u32::MAX; m as usize];
    let mut filled = 0u64;
    while filled < m64 {
        for (k, &i) in order.iter().enumerate() {
            credit[k] += entries[i].weight.max(1) as u64;
            while credit[k] >= max_weight {
                credit[k] -= max_weight;
                let (offset, skip) = perms[k];
                // Walk this backend's permutation to its next free slot.
                let mut slot = (offset + next[k] * skip) % m64;
                while table[slot as usize] != u32::MAX {
                    next[k] += 1;
                    slot = (offset + next[k] * skip) % m64;
                }
                table[slot as usize] = i as u32;
                next[k] += 1;
                filled += 1;
                if filled == m64 {
                    return table;
                }
            }
        }
    }
    table
}

/// A backend in rotation, as a service's table holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Backend id (what the table's slots hold).
    pub id: u32,
    /// Its address: the Maglev name, so that every node builds the same table.
    pub addr: IpAddr,
    /// Relative weight, at least 1.
    pub weight: u32,
}

/// The service table both data paths use: `MAGLEV_M` slots of backend ids, built over the
/// members named by their address; every slot is `NO_BACKEND` when there is no member.
pub fn id_table(members: &[Member]) -> Vec<u32> {
    if members.is_empty() {
        return vec![NO_BACKEND; MAGLEV_M as usize];
    }
    let names: Vec<String> = members.iter().map(|m| m.addr.to_string()).collect();
    let entries: Vec<Entry<'_>> = members
        .iter()
        .zip(&names)
        .map(|(m, name)| Entry {
            name,
            weight: m.weight,
        })
        .collect();
    build(&entries, MAGLEV_M)
        .into_iter()
        .map(|i| members[i as usize].id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:80", i / 200, i % 200 + 1))
            .collect()
    }

    fn entries<'a>(names: &'a [String], weights: &[u32]) -> Vec<Entry<'a>> {
        names
            .iter()
            .zip(weights)
            .map(|(n, &w)| Entry { name: n, weight: w })
            .collect()
    }

    fn shares(table: &[u32], n: usize) -> Vec<f64> {
        let mut c = vec![0u64; n];
        for &s in table {
            c[s as usize] += 1;
        }
        c.iter().map(|&x| x as f64 / table.len() as f64).collect()
    }

    #[test]
    fn empty_set_gives_empty_table() {
        assert!(build(&[], MAGLEV_M).is_empty());
    }

    #[test]
    fn deterministic_and_order_independent() {
        let n = names(7);
        let e = entries(&n, &[1; 7]);
        let a = build(&e, MAGLEV_M);
        assert_eq!(a, build(&e, MAGLEV_M));
        // The same set in another order: same backend in every slot.
        let mut rev = e.clone();
        rev.reverse();
        let b = build(&rev, MAGLEV_M);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(e[*x as usize].name, rev[*y as usize].name);
        }
    }

    #[test]
    fn every_slot_filled() {
        for count in [1, 2, 3, 10, 100] {
            let n = names(count);
            let t = build(&entries(&n, &vec![1; count]), MAGLEV_M);
            assert_eq!(t.len(), MAGLEV_M as usize);
            assert!(
                t.iter().all(|&s| (s as usize) < count),
                "hole with {count} backends"
            );
        }
    }

    #[test]
    fn shares_follow_weights_within_5_percent() {
        for weights in [
            vec![1, 1, 1],
            vec![1, 2, 3, 4],
            vec![5, 1, 1, 1, 1, 1],
            vec![100, 1, 50, 7],
        ] {
            let n = names(weights.len());
            let t = build(&entries(&n, &weights), MAGLEV_M);
            let total: u32 = weights.iter().sum();
            for (i, s) in shares(&t, weights.len()).iter().enumerate() {
                let want = weights[i] as f64 / total as f64;
                assert!(
                    (s - want).abs() <= 0.05 * want,
                    "weights {weights:?}: backend {i} has {s:.4}, want {want:.4}"
                );
            }
        }
    }

    #[test]
    fn removing_one_of_ten_moves_at_most_a_tenth_plus_one_percent() {
        let n = names(10);
        let all = entries(&n, &[1; 10]);
        let before = build(&all, MAGLEV_M);
        for gone in 0..10 {
            let rest: Vec<Entry<'_>> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != gone)
                .map(|(_, e)| e.clone())
                .collect();
            let after = build(&rest, MAGLEV_M);
            let moved = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| all[**b as usize].name != rest[**a as usize].name)
                .count();
            let limit = (0.1 + 0.01) * MAGLEV_M as f64;
            assert!(
                moved as f64 <= limit,
                "removing {gone}: {moved} slots moved, limit {limit:.0}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_set_fills_every_slot(weights in proptest::collection::vec(1u32..=20, 1..12)) {
            let n = names(weights.len());
            let t = build(&entries(&n, &weights), 251);
            proptest::prop_assert_eq!(t.len(), 251);
            proptest::prop_assert!(t.iter().all(|&s| (s as usize) < weights.len()));
        }
    }
}
