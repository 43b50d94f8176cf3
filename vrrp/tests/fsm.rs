//! State-machine tests under a virtual clock, quinn-proto style: several [`Router`]s in one process,
//! each one's `SendAdvert` actions encoded as real IPv4 datagrams and handed to the others'
//! `handle_packet`. No sockets, no sleeps; every expected instant is computed from RFC 5798 §6.1.

mod common;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use vrrp::wire::{self, ipv4};
use vrrp::{
    Action, AdvertInterval, DropReason, GarpConfig, Priority, Router, RouterConfig, State, VrId,
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

/// Master_Down_Interval at a 1 s interval for each priority used here (3 s + (256 − p)/256 s).
const MDI_100: Duration = Duration::from_micros(3_609_375);
const MDI_120: Duration = Duration::from_micros(3_531_250);
const MDI_150: Duration = Duration::from_nanos(3_414_062_500);
const MDI_200: Duration = Duration::from_micros(3_218_750);
/// Skew_Time at a 1 s interval and priority 100: 156/256 s.
const SKEW_100: Duration = Duration::from_micros(609_375);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn cfg(last_octet: u8, priority: u8) -> RouterConfig {
    RouterConfig::new(
        VrId::new(51).unwrap(),
        Priority::new(priority).unwrap(),
        AdvertInterval::DEFAULT,
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, last_octet)),
        vec![IpAddr::V4(VIP)],
    )
}

struct Node {
    router: Router,
    up: bool,
    /// Every action with the virtual time it was polled at.
    log: Vec<(Duration, Action)>,
    drops: Vec<DropReason>,
}

impl Node {
    fn transitions(&self) -> Vec<(Duration, State, State)> {
        self.log
            .iter()
            .filter_map(|(t, a)| match a {
                Action::StateChanged { from, to } => Some((*t, *from, *to)),
                _ => None,
            })
            .collect()
    }

    fn became_master_at(&self) -> Vec<Duration> {
        self.transitions()
            .into_iter()
            .filter(|(_, _, to)| *to == State::Master)
            .map(|(t, _, _)| t)
            .collect()
    }

    fn adverts_sent(&self) -> Vec<(Duration, u8)> {
        self.log
            .iter()
            .filter_map(|(t, a)| match a {
                Action::SendAdvert { priority, .. } => Some((*t, *priority)),
                _ => None,
            })
            .collect()
    }
}

/// A LAN of routers with a virtual clock.
struct Net {
    base: Instant,
    now: Instant,
    nodes: Vec<Node>,
    latency: Duration,
    /// Pairs of nodes that cannot hear each other.
    cut: HashSet<(usize, usize)>,
    in_flight: Vec<(Instant, usize, Vec<u8>)>,
    ident: u16,
}

impl Net {
    fn new(configs: Vec<RouterConfig>) -> Self {
        let base = Instant::now();
        Self {
            base,
            now: base,
            nodes: configs
                .into_iter()
                .map(|c| Node {
                    router: Router::new(c).unwrap(),
                    up: false,
                    log: Vec::new(),
                    drops: Vec::new(),
                })
                .collect(),
            latency: Duration::ZERO,
            cut: HashSet::new(),
            in_flight: Vec::new(),
            ident: 0,
        }
    }

    fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    fn start(&mut self, i: usize) {
        self.nodes[i].up = true;
        self.nodes[i].router.startup(self.now);
        self.flush(i);
    }

    /// Graceful stop: the router shuts down (a master resigns with priority 0).
    fn stop(&mut self, i: usize) {
        self.nodes[i].router.shutdown(self.now);
        self.flush(i);
        self.nodes[i].up = false;
    }

    /// Stop for a restart whose forwarding goes on: no priority-0 advert, the VIPs stay.
    fn stop_holding(&mut self, i: usize) {
        self.nodes[i].router.shutdown_holding(self.now);
        self.flush(i);
        self.nodes[i].up = false;
    }

    /// A node stopped (or crashed) while master comes back as a fresh process that resumes as
    /// master.
    fn restart_resuming(&mut self, i: usize) {
        let config = self.nodes[i].router.config().clone();
        self.nodes[i].router = Router::new(config).unwrap();
        self.nodes[i].up = true;
        self.nodes[i].router.startup_resuming(self.now);
        self.flush(i);
    }

    /// Planned stop, make-before-break: the master resigns but holds the VIPs until its successor
    /// is heard.
    fn resign(&mut self, i: usize) {
        self.nodes[i].router.resign(self.now);
        self.flush(i);
    }

    /// Crash: the node goes silent.
    fn crash(&mut self, i: usize) {
        self.nodes[i].up = false;
    }

    /// A crashed node comes back as a fresh process with the same settings.
    fn restart(&mut self, i: usize) {
        let config = self.nodes[i].router.config().clone();
        self.nodes[i].router = Router::new(config).unwrap();
        self.start(i);
    }

    fn partition(&mut self, a: usize, b: usize) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    fn flush(&mut self, i: usize) {
        let t = self.elapsed();
        while let Some(action) = self.nodes[i].router.poll_action() {
            if let Action::SendAdvert { repr, .. } = &action {
                let IpAddr::V4(src) = self.nodes[i].router.config().address else {
                    unreachable!()
                };
                self.ident = self.ident.wrapping_add(1);
                let ip = ipv4::Repr::advert(src, wire::MULTICAST_V4, self.ident);
                let datagram = ipv4::emit_advert(&ip, repr).unwrap();
                for j in 0..self.nodes.len() {
                    if j != i && !self.cut.contains(&(i, j)) {
                        self.in_flight
                            .push((self.now + self.latency, j, datagram.clone()));
                    }
                }
            }
            self.nodes[i].log.push((t, action));
        }
    }

    fn run_until_elapsed(&mut self, t: Duration) {
        let end = self.base + t;
        self.run_until(end);
    }

    fn run_until(&mut self, end: Instant) {
        for _ in 0..1_000_000 {
            let next_timer = self
                .nodes
                .iter()
                .filter(|n| n.up)
                .filter_map(|n| n.router.poll_timeout())
                .min();
            let next_packet = self.in_flight.iter().map(|(t, _, _)| *t).min();
            let next = [next_timer, next_packet].into_iter().flatten().min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.step();
                }
                _ => {
                    self.now = end;
                    return;
                }
            }
        }
        panic!("simulation does not converge");
    }

    fn step(&mut self) {
        for i in 0..self.nodes.len() {
            let due = self.nodes[i].up
                && self.nodes[i]
                    .router
                    .poll_timeout()
                    .is_some_and(|t| t <= self.now);
            if due {
                self.nodes[i].router.handle_timeout(self.now);
                self.flush(i);
            }
        }
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) =
            self.in_flight.drain(..).partition(|(t, _, _)| *t <= now);
        self.in_flight = later;
        for (_, j, datagram) in due {
            if self.nodes[j].up {
                if let Err(reason) = self.nodes[j].router.handle_packet(now, &datagram) {
                    self.nodes[j].drops.push(reason);
                }
                self.flush(j);
            }
        }
    }

    fn state(&self, i: usize) -> State {
        self.nodes[i].router.state()
    }

    fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].up && self.state(*i) == State::Master)
            .collect()
    }
}

#[test]
fn master_down_interval_values() {
    // Sanity of the constants against the router's own arithmetic (RFC 5798 §6.1).
    for (p, mdi) in [
        (100, MDI_100),
        (120, MDI_120),
        (150, MDI_150),
        (200, MDI_200),
    ] {
        let r = Router::new(cfg(1, p)).unwrap();
        assert_eq!(r.master_down_interval(), mdi, "priority {p}");
    }
    assert_eq!(Router::new(cfg(1, 100)).unwrap().skew_time(), SKEW_100);
}

#[test]
fn master_down_timer_fires_exactly_on_the_tick() {
    let mut r = Router::new(cfg(2, 100)).unwrap();
    let t0 = Instant::now();
    r.startup(t0);
    assert_eq!(r.state(), State::Backup);
    assert_eq!(
        r.poll_action(),
        Some(Action::StateChanged {
            from: State::Initialize,
            to: State::Backup
        })
    );
    assert_eq!(r.poll_action(), None);
    assert_eq!(r.poll_timeout(), Some(t0 + MDI_100));
    // One nanosecond early: nothing.
    r.handle_timeout(t0 + MDI_100 - Duration::from_nanos(1));
    assert_eq!(r.state(), State::Backup);
    assert_eq!(r.poll_action(), None);
    // On the tick: Master, with its VIPs, advert and GARPs (RFC 5798 §6.4.2).
    r.handle_timeout(t0 + MDI_100);
    assert_eq!(r.state(), State::Master);
    let actions: Vec<Action> = std::iter::from_fn(|| r.poll_action()).collect();
    assert_eq!(
        actions,
        vec![
            Action::AddVips(vec![IpAddr::V4(VIP)]),
            Action::SendAdvert {
                priority: 100,
                repr: r.advert(100)
            },
            Action::SendGratuitousArp {
                vips: vec![IpAddr::V4(VIP)],
                count: 5
            },
            Action::StateChanged {
                from: State::Backup,
                to: State::Master
            },
        ]
    );
    assert_eq!(r.last_transition(), Some(t0 + MDI_100));
    assert_eq!(
        r.master_address(),
        Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)))
    );
    // Next advert one Advertisement_Interval later.
    assert_eq!(r.poll_timeout(), Some(t0 + MDI_100 + secs(1)));
}

#[test]
fn an_accepted_advert_restarts_master_down_timer() {
    let mut net = Net::new(vec![cfg(1, 150), cfg(2, 100)]);
    net.start(0);
    net.start(1);
    net.run_until_elapsed(secs(5));
    // A became master at MDI_150; its last advert before 5 s went at MDI_150 + 1 s.
    let last_advert = MDI_150 + secs(1);
    assert_eq!(
        net.nodes[1].router.poll_timeout(),
        Some(net.base + last_advert + MDI_100)
    );
}

#[test]
fn election_by_priority() {
    let mut net = Net::new(vec![cfg(1, 150), cfg(2, 100)]);
    net.start(0);
    net.start(1);
    net.run_until_elapsed(secs(30));
    assert_eq!(net.masters(), vec![0]);
    assert_eq!(net.nodes[0].became_master_at(), vec![MDI_150]);
    assert!(net.nodes[1].became_master_at().is_empty());
    assert_eq!(
        net.nodes[1].router.master_address(),
        Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)))
    );
    // One advert per second after taking over, none dropped.
    let sent = net.nodes[0].adverts_sent();
    assert_eq!(sent.len(), 27);
    assert!(sent.iter().all(|(_, p)| *p == 150));
    assert!(net.nodes[1].drops.is_empty());
    assert_eq!(net.nodes[1].router.counters().accepted, 27);
}

#[test]
fn equal_priorities_go_to_the_higher_address() {
    for latency in [Duration::ZERO, ms(1)] {
        for order in [[1u8, 2u8], [2, 1]] {
            let mut net = Net::new(vec![cfg(order[0], 100), cfg(order[1], 100)]);
            net.latency = latency;
            net.start(0);
            net.start(1);
            net.run_until_elapsed(secs(20));
            let masters = net.masters();
            assert_eq!(masters.len(), 1, "latency {latency:?} order {order:?}");
            // RFC 5798 §6.4.3: equal priority → the higher primary address stays master.
            assert_eq!(
                net.nodes[masters[0]].router.config().address,
                IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2))
            );
        }
    }
}

#[test]
fn preempt_on_higher_priority_takes_over_after_its_master_down_interval() {
    let mut net = Net::new(vec![cfg(1, 150), cfg(2, 100)]);
    net.start(1);
    net.run_until_elapsed(secs(10));
    assert_eq!(net.masters(), vec![1]);
    assert_eq!(net.nodes[1].became_master_at(), vec![MDI_100]);
    net.start(0);
    net.run_until_elapsed(secs(30));
    // A discards B's lower-priority adverts (§6.4.2) and its Master_Down_Timer fires.
    assert_eq!(net.nodes[0].became_master_at(), vec![secs(10) + MDI_150]);
    assert_eq!(net.masters(), vec![0]);
    // B steps down on A's first advert and drops its VIPs.
    let b = net.nodes[1].transitions();
    assert_eq!(
        b.last(),
        Some(&(secs(10) + MDI_150, State::Master, State::Backup))
    );
    assert!(
        net.nodes[1]
            .log
            .iter()
            .any(|(t, a)| *t == secs(10) + MDI_150
                && *a == Action::RemoveVips(vec![IpAddr::V4(VIP)]))
    );
}

#[test]
fn preempt_off_leaves_the_lower_master_in_place() {
    let mut a = cfg(1, 150);
    a.preempt = false;
    let mut net = Net::new(vec![a, cfg(2, 100)]);
    net.start(1);
    net.run_until_elapsed(secs(10));
    net.start(0);
    net.run_until_elapsed(secs(60));
    assert_eq!(net.masters(), vec![1]);
    assert!(net.nodes[0].became_master_at().is_empty());
    assert_eq!(
        net.nodes[0].router.master_address(),
        Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)))
    );
}

#[test]
fn preempt_delay_tolerates_a_lower_master_for_a_while() {
    let mut a = cfg(1, 150);
    a.preempt_delay = secs(5);
    let mut net = Net::new(vec![a, cfg(2, 100)]);
    net.start(1);
    net.run_until_elapsed(secs(10));
    net.start(0);
    net.run_until_elapsed(secs(40));
    // B adverts at MDI_100 + k s. A first hears one at 10 s + SKEW_100 (= 10.609375 s); the delay
    // ends 5 s later, so the last advert A accepts is at 14.609375 s and its Master_Down_Timer
    // fires MDI_150 after that.
    let first_heard = secs(10) + SKEW_100;
    let last_accepted = first_heard + secs(4);
    assert_eq!(
        net.nodes[0].became_master_at(),
        vec![last_accepted + MDI_150]
    );
    assert_eq!(net.masters(), vec![0]);
}

#[test]
fn priority_zero_hands_over_after_skew_time_only() {
    let mut net = Net::new(vec![cfg(1, 150), cfg(2, 100)]);
    net.start(0);
    net.start(1);
    net.run_until_elapsed(secs(20));
    net.stop(0);
    // A resigns: priority-0 advert, VIPs removed, Initialize (§6.4.3).
    let tail: Vec<&Action> = net.nodes[0]
        .log
        .iter()
        .filter(|(t, _)| *t == secs(20))
        .map(|(_, a)| a)
        .collect();
    assert!(matches!(tail[0], Action::SendAdvert { priority: 0, .. }));
    assert_eq!(*tail[1], Action::RemoveVips(vec![IpAddr::V4(VIP)]));
    assert_eq!(
        *tail[2],
        Action::StateChanged {
            from: State::Master,
            to: State::Initialize
        }
    );
    net.run_until_elapsed(secs(30));
    // B takes over Skew_Time after the priority-0 advert, not Master_Down_Interval (§6.4.2).
    assert_eq!(net.nodes[1].became_master_at(), vec![secs(20) + SKEW_100]);
    assert_eq!(net.masters(), vec![1]);
}

#[test]
fn crash_is_detected_after_master_down_interval() {
    let mut net = Net::new(vec![cfg(1, 150), cfg(2, 100)]);
    net.start(0);
    net.start(1);
    net.run_until_elapsed(secs(10));
    net.crash(0);
    net.run_until_elapsed(secs(20));
    // A's last advert went at MDI_150 + 6 s.
    assert_eq!(
        net.nodes[1].became_master_at(),
        vec![MDI_150 + secs(6) + MDI_100]
    );
}

#[test]
fn partition_makes_two_masters_that_heal_to_one() {
    let mut net = Net::new(vec![cfg(1, 150), cfg(2, 100)]);
    net.start(0);
    net.start(1);
    net.run_until_elapsed(secs(10));
    net.partition(0, 1);
    net.run_until_elapsed(secs(30));
    assert_eq!(net.masters(), vec![0, 1]);
    let b_master = MDI_150 + secs(6) + MDI_100;
    assert_eq!(net.nodes[1].became_master_at(), vec![b_master]);
    // B adverts at b_master + k s (…, 30.0234375 s), A at MDI_150 + k s (…, 30.4140625 s): heal
    // in between so that A speaks first.
    net.run_until_elapsed(ms(30_100));
    assert_eq!(net.masters(), vec![0, 1]);
    net.heal();
    net.run_until_elapsed(secs(35));
    assert_eq!(net.masters(), vec![0]);
    // A's next advert after the heal (at MDI_150 + 27 s) sends B back to Backup (§6.4.3).
    assert_eq!(
        net.nodes[1].transitions().last(),
        Some(&(MDI_150 + secs(27), State::Master, State::Backup))
    );
    assert!(net.nodes[0].became_master_at() == vec![MDI_150]);
}

#[test]
fn partition_heals_at_once_when_the_lower_master_speaks_first() {
    let mut net = Net::new(vec![cfg(1, 150), cfg(2, 100)]);
    net.start(0);
    net.start(1);
    net.run_until_elapsed(secs(10));
    net.partition(0, 1);
    net.run_until_elapsed(secs(30));
    let b_master = MDI_150 + secs(6) + MDI_100; // 13.0234375 s; B adverts at b_master + k s.
    // Heal just before B's advert at b_master + 17 s (30.0234375 s), which A hears first: A
    // answers at once and B steps down at that same instant.
    net.heal();
    net.run_until_elapsed(secs(35));
    assert_eq!(net.masters(), vec![0]);
    assert_eq!(
        net.nodes[1].transitions().last(),
        Some(&(b_master + secs(17), State::Master, State::Backup))
    );
}

#[test]
fn backup_learns_the_masters_advert_interval() {
    let mut a = cfg(1, 150);
    a.advert_interval = AdvertInterval::from_millis(2000).unwrap();
    let mut net = Net::new(vec![a, cfg(2, 100)]);
    net.start(0);
    net.run_until_elapsed(secs(10));
    // A alone: Master_Down_Interval with its own 2 s interval: 6 s + 106/256 × 2 s.
    let a_master = Duration::from_micros(6_828_125);
    assert_eq!(net.nodes[0].became_master_at(), vec![a_master]);
    net.start(1);
    assert_eq!(net.nodes[1].router.master_adver_interval(), secs(1));
    net.run_until_elapsed(secs(12));
    // §6.4.2: B learnt Master_Adver_Interval = 2 s from A's adverts.
    assert_eq!(net.nodes[1].router.master_adver_interval(), secs(2));
    let b_mdi = Duration::from_micros(7_218_750); // 6 s + 156/256 × 2 s
    assert_eq!(net.nodes[1].router.master_down_interval(), b_mdi);
    net.run_until_elapsed(secs(20));
    net.crash(0);
    net.run_until_elapsed(secs(40));
    // A's last advert: a_master + 12 s (= 18.828125 s).
    assert_eq!(
        net.nodes[1].became_master_at(),
        vec![a_master + secs(12) + b_mdi]
    );
    // As master, B advertises its own interval again.
    let sent = net.nodes[1].log.iter().find_map(|(_, a)| match a {
        Action::SendAdvert { repr, .. } => Some(repr.max_adver_int),
        _ => None,
    });
    assert_eq!(sent, Some(100));
}

#[test]
fn three_routers_fail_over_in_priority_order_and_preempt_back() {
    let mut net = Net::new(vec![cfg(1, 200), cfg(2, 150), cfg(3, 100)]);
    for i in 0..3 {
        net.start(i);
    }
    net.run_until_elapsed(secs(10));
    assert_eq!(net.masters(), vec![0]);
    assert_eq!(net.nodes[0].became_master_at(), vec![MDI_200]);
    net.crash(0);
    net.run_until_elapsed(secs(20));
    // A's last advert at MDI_200 + 6 s; B's shorter skew beats C's.
    assert_eq!(
        net.nodes[1].became_master_at(),
        vec![MDI_200 + secs(6) + MDI_150]
    );
    assert!(net.nodes[2].became_master_at().is_empty());
    assert_eq!(
        net.nodes[2].router.master_address(),
        Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)))
    );
    net.restart(0);
    net.run_until_elapsed(secs(40));
    assert_eq!(net.masters(), vec![0]);
    assert_eq!(
        net.nodes[0].became_master_at(),
        vec![MDI_200, secs(20) + MDI_200]
    );
    assert!(net.nodes[2].became_master_at().is_empty());
}

#[test]
fn address_owner_starts_master_and_takes_over_at_once() {
    let mut net = Net::new(vec![cfg(1, 255), cfg(2, 100)]);
    net.start(1);
    net.run_until_elapsed(secs(10));
    assert_eq!(net.masters(), vec![1]);
    net.start(0);
    // §6.4.1: the owner goes straight to Master; B steps down on its advert (§6.4.3).
    assert_eq!(net.nodes[0].became_master_at(), vec![secs(10)]);
    net.run_until_elapsed(secs(20));
    assert_eq!(net.masters(), vec![0]);
    assert_eq!(
        net.nodes[1].transitions().last(),
        Some(&(secs(10), State::Master, State::Backup))
    );
    // Tracking never lowers the owner.
    net.nodes[0].router.set_priority(net.now, 10);
    assert_eq!(net.nodes[0].router.priority(), 255);
}

#[test]
fn tracking_lowers_priority_and_the_backup_preempts() {
    let mut net = Net::new(vec![cfg(1, 150), cfg(2, 120)]);
    net.start(0);
    net.start(1);
    net.run_until_elapsed(secs(10));
    let n = net.now;
    net.nodes[0].router.set_priority(n, 100);
    net.flush(0);
    // The master advertises its new priority at once.
    assert_eq!(net.nodes[0].adverts_sent().last(), Some(&(secs(10), 100)));
    net.run_until_elapsed(secs(20));
    // B (120, preempt) discards the 100 adverts; its timer runs from A's last 150 advert.
    let last_150 = MDI_150 + secs(6);
    assert_eq!(net.nodes[1].became_master_at(), vec![last_150 + MDI_120]);
    assert_eq!(net.masters(), vec![1]);
    // A back to 150 at 20 s: its Master_Down_Timer was set (at priority 100) on B's advert at
    // last_150 + MDI_120 + 7 s; it discards B's adverts from now on and takes over then.
    let n = net.now;
    net.nodes[0].router.set_priority(n, 150);
    net.run_until_elapsed(secs(40));
    let b_last_accepted = last_150 + MDI_120 + secs(7);
    assert_eq!(
        net.nodes[0].became_master_at(),
        vec![MDI_150, b_last_accepted + MDI_100]
    );
    assert_eq!(net.masters(), vec![0]);
}

#[test]
fn set_priority_clamps_to_1_254() {
    let mut r = Router::new(cfg(1, 100)).unwrap();
    let t = Instant::now();
    r.set_priority(t, 0);
    assert_eq!(r.priority(), 1);
    r.set_priority(t, 255);
    assert_eq!(r.priority(), 254);
    // Not running: no advert.
    assert_eq!(r.poll_action(), None);
}

#[test]
fn gratuitous_arps_twice_five_seconds_apart() {
    let mut net = Net::new(vec![cfg(1, 150)]);
    net.start(0);
    net.run_until_elapsed(secs(60));
    let garps: Vec<(Duration, u32)> = net.nodes[0]
        .log
        .iter()
        .filter_map(|(t, a)| match a {
            Action::SendGratuitousArp { count, .. } => Some((*t, *count)),
            _ => None,
        })
        .collect();
    assert_eq!(garps, vec![(MDI_150, 5), (MDI_150 + secs(5), 5)]);

    // Configurable, and no second burst once no longer master.
    let mut a = cfg(1, 150);
    a.garp = GarpConfig {
        count: 3,
        interval: ms(10),
        repeat_delay: Some(secs(2)),
    };
    let mut net = Net::new(vec![a, cfg(2, 200)]);
    net.start(0);
    net.run_until_elapsed(secs(4));
    net.start(1);
    net.run_until_elapsed(secs(30));
    let garps: Vec<u32> = net.nodes[0]
        .log
        .iter()
        .filter_map(|(_, a)| match a {
            Action::SendGratuitousArp { count, .. } => Some(*count),
            _ => None,
        })
        .collect();
    // Master at MDI_150 (3.41 s), B (200) starts at 4 s and preempts at 4 s + MDI_200 (7.2 s):
    // the second burst at 5.41 s happened; a third never comes.
    assert_eq!(garps, vec![3, 3]);
    assert_eq!(net.masters(), vec![1]);
}

#[test]
fn shutdown_of_a_backup_sends_nothing() {
    let mut r = Router::new(cfg(1, 100)).unwrap();
    let t = Instant::now();
    r.startup(t);
    while r.poll_action().is_some() {}
    r.shutdown(t + secs(1));
    assert_eq!(
        std::iter::from_fn(|| r.poll_action()).collect::<Vec<_>>(),
        vec![Action::StateChanged {
            from: State::Backup,
            to: State::Initialize
        }]
    );
    assert_eq!(r.poll_timeout(), None);
    assert_eq!(r.master_address(), None);
}

/// Transcript of keepalived-v3-mcast-handover.pcap replayed into a router configured as node B
/// (10.99.0.3, priority 100): it stays backup while A adverts, schedules its takeover Skew_Time
/// after A's priority-0 advert, and the advert it then sends is byte for byte keepalived's.
#[test]
fn replays_the_keepalived_handover_as_node_b() {
    let frames = common::fixture("keepalived-v3-mcast-handover.pcap");
    let adverts: Vec<(Duration, &[u8])> = frames
        .iter()
        .filter_map(|f| common::vrrp_datagram(&f.data).map(|d| (f.ts, d)))
        .collect();
    let node_b = Ipv4Addr::new(10, 99, 0, 3);
    let config = RouterConfig::new(
        VrId::new(51).unwrap(),
        Priority::new(100).unwrap(),
        AdvertInterval::DEFAULT,
        IpAddr::V4(node_b),
        vec![IpAddr::V4(Ipv4Addr::new(10, 99, 0, 100))],
    );
    let mut b = Router::new(config).unwrap();
    let base = Instant::now();
    let t0 = adverts[0].0;
    b.startup(base);
    while b.poll_action().is_some() {}
    let mut zero_at = None;
    for (ts, datagram) in &adverts {
        let (ip, advert) = ipv4::parse_advert(datagram).unwrap();
        let at = base + (*ts - t0);
        if ip.src == node_b {
            // keepalived's B took over here; we must have done so by then, at the exact instant.
            let zero_at = zero_at.expect("priority-0 advert first");
            let due = zero_at + SKEW_100;
            assert_eq!(b.poll_timeout(), Some(due));
            assert!(due <= at && at - due < ms(5));
            b.handle_timeout(due);
            assert_eq!(b.state(), State::Master);
            let sent = std::iter::from_fn(|| b.poll_action())
                .find_map(|a| match a {
                    Action::SendAdvert { repr, .. } => Some(repr),
                    _ => None,
                })
                .unwrap();
            let ours = ipv4::emit_advert(&ipv4::Repr::advert(node_b, ip.dst, ip.ident), &sent);
            assert_eq!(ours.unwrap(), *datagram);
            return;
        }
        assert!(
            b.poll_timeout().unwrap() > at,
            "B would have taken over early"
        );
        b.handle_packet(at, datagram).unwrap();
        assert_eq!(b.state(), State::Backup);
        if advert.priority == 0 {
            zero_at = Some(at);
        }
    }
    panic!("node B never adverted in the capture");
}

#[test]
fn adverts_keep_their_cadence_when_the_caller_wakes_late() {
    let mut c = cfg(1, 255);
    c.garp.repeat_delay = None;
    let mut r = Router::new(c).unwrap();
    let t0 = Instant::now();
    r.startup(t0);
    assert_eq!(r.poll_timeout(), Some(t0 + secs(1)));
    // Woken 300 ms late: the advert goes now, the next one stays on the 1 s grid.
    r.handle_timeout(t0 + ms(1300));
    assert_eq!(r.poll_timeout(), Some(t0 + secs(2)));
    // A whole interval missed: restart the grid from now.
    r.handle_timeout(t0 + ms(4500));
    assert_eq!(r.poll_timeout(), Some(t0 + ms(5500)));
}

#[test]
fn a_held_restart_within_master_down_interval_keeps_the_master() {
    let mut net = Net::new(vec![cfg(1, 150), cfg(2, 100)]);
    net.start(0);
    net.start(1);
    net.run_until_elapsed(secs(10));
    assert_eq!(net.masters(), vec![0]);
    let adverts_before = net.nodes[0].adverts_sent().len();
    net.stop_holding(0);
    // No priority-0 advert and no VIP removal on a held stop.
    assert_eq!(net.nodes[0].adverts_sent().len(), adverts_before);
    assert!(
        !net.nodes[0]
            .log
            .iter()
            .any(|(_, a)| matches!(a, Action::RemoveVips(_))),
        "the VIPs left on a held stop"
    );
    // Back within B's Master_Down_Interval (3 × 1 s + skew): B never takes over.
    net.run_until_elapsed(secs(11));
    net.restart_resuming(0);
    net.run_until_elapsed(secs(20));
    assert_eq!(net.masters(), vec![0]);
    assert!(net.nodes[1].became_master_at().is_empty());
}

#[test]
fn a_held_restart_after_the_peer_took_over_settles_by_priority() {
    let mut net = Net::new(vec![cfg(1, 150), cfg(2, 100)]);
    net.start(0);
    net.start(1);
    net.run_until_elapsed(secs(10));
    net.stop_holding(0);
    // Too late: B has taken over by then.
    net.run_until_elapsed(secs(15));
    assert_eq!(net.masters(), vec![1]);
    net.restart_resuming(0);
    net.run_until_elapsed(secs(20));
    // One master again: the lower priority stepped back at A's first advert.
    assert_eq!(net.masters(), vec![0]);
    assert_eq!(net.nodes[1].became_master_at().len(), 1);
}

/// When node `i` added (true) and removed (false) its VIPs.
fn vip_changes(node: &Node) -> Vec<(Duration, bool)> {
    node.log
        .iter()
        .filter_map(|(t, a)| match a {
            Action::AddVips(_) => Some((*t, true)),
            Action::RemoveVips(_) => Some((*t, false)),
            _ => None,
        })
        .collect()
}

fn removals(node: &Node) -> Vec<Duration> {
    vip_changes(node)
        .into_iter()
        .filter(|c| !c.1)
        .map(|c| c.0)
        .collect()
}

#[test]
fn a_resigning_master_holds_the_vips_until_its_successor_speaks() {
    let mut net = Net::new(vec![cfg(1, 150), cfg(2, 100)]);
    net.start(0);
    net.start(1);
    net.run_until_elapsed(secs(10));
    net.resign(0);
    let resigned = net.elapsed();
    // The priority-0 advert went out at once; the VIPs stay.
    assert_eq!(net.nodes[0].adverts_sent().last().map(|a| a.1), Some(0));
    assert!(removals(&net.nodes[0]).is_empty());
    net.run_until_elapsed(secs(15));
    // B took over after its skew time; A let go LINGER after B's first advert, not before.
    let b_master = net.nodes[1].became_master_at();
    assert_eq!(b_master.len(), 1);
    assert!(b_master[0] > resigned && b_master[0] <= resigned + secs(1));
    assert_eq!(removals(&net.nodes[0]), vec![b_master[0] + vrrp::LINGER]);
    assert!(net.nodes[0].router.is_stopped());
    assert_eq!(net.masters(), vec![1]);
    assert_eq!(
        net.nodes[0].adverts_sent().last().map(|a| a.1),
        Some(0),
        "A advertised again while leaving"
    );
}

#[test]
fn a_resigning_master_alone_lets_go_after_master_down_interval() {
    let mut net = Net::new(vec![cfg(1, 150)]);
    net.start(0);
    net.run_until_elapsed(secs(10));
    net.resign(0);
    let resigned = net.elapsed();
    net.run_until_elapsed(secs(20));
    assert_eq!(
        removals(&net.nodes[0]),
        vec![resigned + net.nodes[0].router.master_down_interval()]
    );
    assert!(net.nodes[0].router.is_stopped());
}
