//! Schedulers: how a new connection (or UDP session) picks a backend from a set.
//!
//! - `maglev`: the Maglev table of the set, indexed by the flow hash of the 5-tuple;
//! - `sh` (source hash): the same with the client port zeroed, so one client address always
//!   reaches one backend (persistence);
//! - `rr`: round robin;
//! - `wrr`: smooth weighted round robin as in nginx (weights 5,1,1 give a a b a c a a, not
//!   a a a a a b c);
//! - `lc`: weighted least connections: the lowest open connections / weight, ties rotated.
//!
//! `maglev` and `sh` use the service's table as the engine built it for either data path (one
//! build, backend ids in its slots) and hash a [`lb_common::FlowKey`] filled exactly as the XDP
//! program fills it, so a flow picks the same backend on either path and on either VRRP node.
//!
//! The state of `rr`, `wrr` and `lc` belongs to one set and starts afresh with each new set.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

use lb_common::{
    FlowKey, FlowKey6,
    hash::{flow_hash, flow_hash6},
    ipv6_lanes, mapped_octets,
};

use crate::config::{Proto, Scheduler};

/// What a scheduler reads of a backend.
pub trait Candidate {
    /// Its stable id (what the service's table holds).
    fn id(&self) -> u32;
    /// Its weight.
    fn weight(&self) -> u32;
    /// Its open connections (`lc`).
    fn active(&self) -> u64;
}

/// A new flow as the schedulers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// The client's address and port.
    pub client: SocketAddr,
    /// The service's VIP and port.
    pub vip: SocketAddr,
    /// The service's protocol.
    pub proto: Proto,
}

impl Flow {
    /// The flow hash the XDP program would compute for this flow (`src_only`: the client port
    /// is zeroed, as for a `sh` service), so that the proxy picks the backend XDP picks.
    pub fn hash(&self, src_only: bool) -> u32 {
        let sport = if src_only {
            0
        } else {
            self.client.port().to_be()
        };
        let (dport, proto) = (self.vip.port().to_be(), self.proto.number());
        match (self.client.ip(), self.vip.ip()) {
            (IpAddr::V4(c), IpAddr::V4(v)) => flow_hash(&FlowKey::new(
                u32::from_ne_bytes(c.octets()),
                u32::from_ne_bytes(v.octets()),
                sport,
                dport,
                proto,
            )),
            (c, v) => flow_hash6(&FlowKey6::new(
                // The proxy keeps one family per service: a mixed pair (IPv4 mapped) is one
                // no listener produces.
                ipv6_lanes(mapped_octets(c)),
                ipv6_lanes(mapped_octets(v)),
                sport,
                dport,
                proto,
            )),
        }
    }
}

/// A scheduler's state built for one backend list; [`Picker::pick`] must be given that same
/// list.
#[derive(Debug)]
pub struct Picker {
    kind: Scheduler,
    state: State,
}

#[derive(Debug)]
enum State {
    /// `maglev` and `sh`: slot → index into the backend list (empty for an empty list).
    Table(Vec<u32>),
    /// `rr`: the next turn.
    Rr(AtomicUsize),
    /// `wrr`: nginx's current weights. A short lock per pick; the pick is O(backends).
    Wrr(Mutex<Vec<i64>>),
    /// `lc`: where the next scan starts, so ties are spread instead of all going to the first.
    Lc(AtomicUsize),
}

impl Picker {
    /// Builds the scheduler's state for `backends`. `table` is the service's Maglev table in
    /// backend ids, as the engine built it (see [`crate::maglev::id_table`]); only `maglev` and
    /// `sh` read it.
    pub fn new<B: Candidate>(kind: Scheduler, backends: &[B], table: &[u32]) -> Picker {
        let state = match kind {
            Scheduler::Maglev | Scheduler::Sh => State::Table(index_table(backends, table)),
            Scheduler::Rr => State::Rr(AtomicUsize::new(0)),
            Scheduler::Wrr => State::Wrr(Mutex::new(vec![0; backends.len()])),
            Scheduler::Lc => State::Lc(AtomicUsize::new(0)),
        };
        Picker { kind, state }
    }

    /// Which scheduler this is.
    pub fn kind(&self) -> Scheduler {
        self.kind
    }

    /// Index of the backend for a new flow, skipping the index `exclude` (a backend that just
    /// failed); None when no backend is left.
    pub fn pick<B: Candidate>(
        &self,
        backends: &[B],
        flow: &Flow,
        exclude: Option<usize>,
    ) -> Option<usize> {
        let n = backends.len();
        let allowed = |i: usize| Some(i) != exclude;
        if n == 0 || (n == 1 && !allowed(0)) {
            return None;
        }
        match &self.state {
            State::Table(table) => {
                let len = table.len();
                if len == 0 {
                    return None;
                }
                let hash = flow.hash(self.kind == Scheduler::Sh);
                let slot = lb_common::hash::maglev_slot(hash) as usize % len;
                // The first choice is the XDP path's; a retry walks on to the next slot that
                // holds another backend (slot order is a permutation mix, so the retries of
                // the failed backend's flows spread over the others by weight).
                (0..len)
                    .map(|step| table[(slot + step) % len] as usize)
                    .find(|&i| i < n && allowed(i))
            }
            State::Rr(next) => {
                let i = next.fetch_add(1, Ordering::Relaxed) % n;
                if allowed(i) {
                    Some(i)
                } else {
                    Some((i + 1) % n)
                }
            }
            State::Wrr(current) => {
                let mut current = current.lock().unwrap_or_else(PoisonError::into_inner);
                if current.len() != n {
                    // Not the list this state was built for: start afresh rather than panic.
                    *current = vec![0; n];
                }
                let mut total = 0i64;
                let mut best: Option<usize> = None;
                for (i, b) in backends.iter().enumerate() {
                    if !allowed(i) {
                        continue;
                    }
                    let w = i64::from(b.weight());
                    current[i] += w;
                    total += w;
                    if best.is_none_or(|j| current[i] > current[j]) {
                        best = Some(i);
                    }
                }
                if let Some(j) = best {
                    current[j] -= total;
                }
                best
            }
            State::Lc(start) => {
                let start = start.fetch_add(1, Ordering::Relaxed) % n;
                let mut best: Option<(usize, u128, u128)> = None;
                for k in 0..n {
                    let i = (start + k) % n;
                    if !allowed(i) {
                        continue;
                    }
                    let (active, weight) = (
                        u128::from(backends[i].active()),
                        u128::from(backends[i].weight()),
                    );
                    // active/weight < best_active/best_weight, without division.
                    if best.is_none_or(|(_, ba, bw)| active * bw < ba * weight) {
                        best = Some((i, active, weight));
                    }
                }
                best.map(|(i, _, _)| i)
            }
        }
    }
}

/// The service's table of backend ids as indices into `backends` (`u32::MAX` in a slot whose id
/// is not in the list, which [`Picker::pick`] walks past); empty when there is no backend.
fn index_table<B: Candidate>(backends: &[B], table: &[u32]) -> Vec<u32> {
    if backends.is_empty() {
        return Vec::new();
    }
    let index: HashMap<u32, u32> = (0u32..).zip(backends).map(|(i, b)| (b.id(), i)).collect();
    table
        .iter()
        .map(|id| index.get(id).copied().unwrap_or(u32::MAX))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, sync::Arc};

    use lb_common::MAGLEV_M;

    use super::*;
    use crate::{
        maglev,
        proxy::backends::{Backend, BackendSpec, Counters},
    };

    fn backends(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                Backend::new(
                    BackendSpec {
                        id: 100 + i as u32,
                        addr: SocketAddr::from((IpAddr::from([198, 18, 0, 21 + i as u8]), 80)),
                        weight: w,
                    },
                    Arc::new(Counters::default()),
                )
            })
            .collect()
    }

    fn flow(client: [u8; 4], port: u16) -> Flow {
        Flow {
            client: SocketAddr::from((client, port)),
            vip: SocketAddr::from(([198, 18, 0, 100], 80)),
            proto: Proto::Tcp,
        }
    }

    /// The engine's table for these backends.
    fn table(b: &[Backend]) -> Vec<u32> {
        let members: Vec<maglev::Member> = b
            .iter()
            .map(|x| maglev::Member {
                id: x.id(),
                addr: x.addr().ip(),
                weight: x.weight(),
            })
            .collect();
        maglev::id_table(&members)
    }

    fn picker(kind: Scheduler, b: &[Backend]) -> Picker {
        Picker::new(kind, b, &table(b))
    }

    fn counts(s: &Picker, b: &[Backend], picks: usize) -> Vec<usize> {
        let mut c = vec![0; b.len()];
        for p in 0..picks {
            let i = s
                .pick(b, &flow([198, 18, 0, 10], 1024 + p as u16), None)
                .unwrap();
            c[i] += 1;
        }
        c
    }

    #[test]
    fn empty_set_gives_no_backend() {
        for kind in Scheduler::ALL {
            let s = Picker::new::<Backend>(kind, &[], &[]);
            assert_eq!(
                s.pick::<Backend>(&[], &flow([198, 18, 0, 10], 1), None),
                None,
                "{kind}"
            );
        }
    }

    #[test]
    fn excluding_the_only_backend_gives_none_and_otherwise_another() {
        for kind in Scheduler::ALL {
            let one = backends(&[1]);
            let s = picker(kind, &one);
            assert_eq!(s.pick(&one, &flow([198, 18, 0, 10], 1), Some(0)), None);
            let three = backends(&[1, 2, 3]);
            let s = picker(kind, &three);
            for port in 1..200 {
                let f = flow([198, 18, 0, 10], port);
                let first = s.pick(&three, &f, None).unwrap();
                let retry = s.pick(&three, &f, Some(first)).unwrap();
                assert_ne!(first, retry, "{kind}: the retry went to the failed backend");
            }
        }
    }

    #[test]
    fn rr_takes_turns() {
        let b = backends(&[5, 1, 1]);
        let s = picker(Scheduler::Rr, &b);
        assert_eq!(counts(&s, &b, 300), vec![100, 100, 100]);
    }

    #[test]
    fn wrr_is_smooth_and_follows_weights() {
        let b = backends(&[5, 1, 1]);
        let s = picker(Scheduler::Wrr, &b);
        let seq: Vec<usize> = (0..7)
            .map(|_| s.pick(&b, &flow([198, 18, 0, 10], 1), None).unwrap())
            .collect();
        // nginx's example: weights 5, 1, 1 give a a b a c a a.
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        let b = backends(&[1, 2, 3, 4]);
        let s = picker(Scheduler::Wrr, &b);
        assert_eq!(counts(&s, &b, 1000), vec![100, 200, 300, 400]);
    }

    #[test]
    fn lc_picks_the_least_loaded_by_weight() {
        let b = backends(&[1, 1, 2]);
        let s = picker(Scheduler::Lc, &b);
        let f = flow([198, 18, 0, 10], 1);
        let guards: Vec<_> = [3, 1, 4]
            .iter()
            .enumerate()
            .flat_map(|(i, &n)| (0..n).map(move |_| i))
            .map(|i| b[i].counters().open())
            .collect();
        // Loads: 3/1, 1/1, 4/2 = 2: backend 1 is the least loaded.
        for _ in 0..10 {
            assert_eq!(s.pick(&b, &f, None), Some(1));
        }
        // Excluding it, backend 2 (4/2) beats backend 0 (3/1).
        assert_eq!(s.pick(&b, &f, Some(1)), Some(2));
        drop(guards);
        // All idle: ties are spread over every backend, not all on the first.
        let mut seen = [false; 3];
        for _ in 0..3 {
            seen[s.pick(&b, &f, None).unwrap()] = true;
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn lc_fills_backends_by_weight() {
        // Connections that stay open: each new one goes to the lowest conns/weight.
        let b = backends(&[1, 3]);
        let s = picker(Scheduler::Lc, &b);
        let mut open = Vec::new();
        for port in 0..40 {
            let i = s.pick(&b, &flow([198, 18, 0, 10], port), None).unwrap();
            open.push(b[i].counters().open());
        }
        assert_eq!((b[0].active(), b[1].active()), (10, 30));
    }

    /// The XDP program's choice, computed from the engine's recipe: a Maglev table over
    /// (IP address string, weight) and the flow hash of the key the program builds.
    fn xdp_choice(b: &[Backend], client: [u8; 4], sport: u16, src_only: bool) -> usize {
        let names: Vec<String> = b.iter().map(|x| x.addr().ip().to_string()).collect();
        let entries: Vec<maglev::Entry<'_>> = b
            .iter()
            .zip(&names)
            .map(|(x, n)| maglev::Entry {
                name: n,
                weight: x.weight(),
            })
            .collect();
        let table = maglev::build(&entries, MAGLEV_M);
        let key = FlowKey::new(
            u32::from_ne_bytes(client),
            u32::from_ne_bytes([198, 18, 0, 100]),
            if src_only { 0 } else { sport.to_be() },
            80u16.to_be(),
            lb_common::IPPROTO_TCP,
        );
        table[(flow_hash(&key) % MAGLEV_M) as usize] as usize
    }

    /// An IPv6 flow hashes as the XDP program hashes its CONNTRACK6 key, so the proxy and XDP
    /// give an IPv6 client the same backend too.
    #[test]
    fn ipv6_flows_hash_as_the_xdp_path_does() {
        let client: SocketAddr = "[2001:db8::10]:40000".parse().unwrap();
        let vip: SocketAddr = "[2001:db8::100]:80".parse().unwrap();
        let flow = Flow {
            client,
            vip,
            proto: Proto::Tcp,
        };
        let lanes = |a: SocketAddr| match a.ip() {
            IpAddr::V6(v6) => ipv6_lanes(v6.octets()),
            IpAddr::V4(_) => unreachable!("IPv6 addresses"),
        };
        for src_only in [false, true] {
            let key = FlowKey6::new(
                lanes(client),
                lanes(vip),
                if src_only { 0 } else { 40000u16.to_be() },
                80u16.to_be(),
                lb_common::IPPROTO_TCP,
            );
            assert_eq!(flow.hash(src_only), flow_hash6(&key), "src_only {src_only}");
        }
    }

    #[test]
    fn maglev_and_sh_pick_what_the_xdp_path_picks() {
        let b = backends(&[1, 2, 1, 1]);
        let mg = picker(Scheduler::Maglev, &b);
        let sh = picker(Scheduler::Sh, &b);
        let mut per_backend = [0usize; 4];
        for host in 1..20u8 {
            for port in [1, 80, 1024, 40_000, 65_535] {
                let client = [198, 18, 1, host];
                let i = mg.pick(&b, &flow(client, port), None).unwrap();
                assert_eq!(i, xdp_choice(&b, client, port, false));
                per_backend[i] += 1;
                let j = sh.pick(&b, &flow(client, port), None).unwrap();
                assert_eq!(j, xdp_choice(&b, client, port, true));
                // sh ignores the client port.
                assert_eq!(j, sh.pick(&b, &flow(client, 7), None).unwrap());
            }
        }
        assert!(per_backend.iter().all(|&c| c > 0), "{per_backend:?}");
    }

    #[test]
    fn maglev_spreads_by_weight() {
        let b = backends(&[1, 1, 2]);
        let s = picker(Scheduler::Maglev, &b);
        let mut c = [0u32; 3];
        for host in 0..40u8 {
            for port in 0..100u16 {
                c[s.pick(&b, &flow([10, 0, 0, host], 10_000 + port), None)
                    .unwrap()] += 1;
            }
        }
        // 4000 flows: expected 1000, 1000, 2000; a tenth of slack covers hashing noise.
        for (i, want) in [1000.0, 1000.0, 2000.0].iter().enumerate() {
            let got = f64::from(c[i]);
            assert!((got - want).abs() < want / 10.0, "{c:?}");
        }
    }
}
