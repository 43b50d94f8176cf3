//! The VRRPv3 state machine of RFC 5798 §6.4, sans I/O (quinn-proto style).
//!
//! [`Router`] holds no socket and reads no clock: every input carries the `now` the caller supplies
//! (a [`std::time::Instant`]; tests use a virtual one), and every effect comes out as an [`Action`]
//! to carry out. The caller's loop is:
//!
//! 1. feed inputs: [`Router::startup`], [`Router::handle_packet`] (a raw IPv4 datagram),
//!    [`Router::handle_ipv6`] (a VRRP message from a raw IPv6 socket with its addresses and hop
//!    limit) or [`Router::handle_advert`] (an already parsed advert), [`Router::set_priority`],
//!    [`Router::shutdown`];
//! 2. when the instant returned by [`Router::poll_timeout`] passes, call [`Router::handle_timeout`];
//! 3. after each input, drain [`Router::poll_action`] and perform the actions in order.
//!
//! Timers (RFC 5798 §6.2): Adver_Timer while Master, Master_Down_Timer while Backup, and the second
//! gratuitous ARP burst (keepalived's `garp_master_delay`) while Master. Extensions to the RFC, each
//! marked where it happens: a preempt delay (keepalived `preempt_delay`), and a master that hears a
//! lower priority answers at once (keepalived) instead of only discarding the advert.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::config::{AdvertInterval, ConfigError, GarpConfig, Priority, VrId, check_vips};
use crate::validate::{self, Counters, DropReason, Expect};
use crate::wire::{Addresses, Repr as AdvertRepr};

/// The state of a virtual router (RFC 5798 §6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not running: before [`Router::startup`] and after [`Router::shutdown`] (§6.4.1).
    Initialize,
    /// Monitoring the master (§6.4.2).
    Backup,
    /// Forwarding for the VIPs and advertising (§6.4.3).
    Master,
}

impl State {
    /// Every state, in the order of the RFC's state diagram.
    pub const ALL: [Self; 3] = [Self::Initialize, Self::Backup, Self::Master];

    /// The name keepalived gives the state (`INIT`, `BACKUP`, `MASTER`), as passed to notify programs.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Initialize => "INIT",
            Self::Backup => "BACKUP",
            Self::Master => "MASTER",
        }
    }
}

/// Compares with the keepalived name, as `lbctl status --json` and notify programs spell it.
impl PartialEq<&str> for State {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An effect the caller must carry out, in the order they are polled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send an advertisement to the multicast group (or to each unicast peer).
    SendAdvert {
        /// Priority it carries (0 when the master resigns); the same as `repr.priority`.
        priority: u8,
        /// The whole advert, ready for [`crate::wire::ipv4::emit_advert`] (IPv4) or
        /// [`crate::wire::Repr::to_bytes`] (IPv6).
        repr: AdvertRepr,
    },
    /// Broadcast `count` gratuitous ARPs for each IPv4 VIP, or send `count` unsolicited Neighbour
    /// Advertisements for each IPv6 VIP (RFC 5798 §6.4.1, §6.4.2).
    SendGratuitousArp {
        /// The VIPs to announce.
        vips: Vec<IpAddr>,
        /// Frames per VIP.
        count: u32,
    },
    /// Add the VIPs to the interface (becoming master).
    AddVips(Vec<IpAddr>),
    /// Remove the VIPs from the interface (leaving master).
    RemoveVips(Vec<IpAddr>),
    /// The state changed; the driver runs the notify program and updates the status.
    StateChanged {
        /// Previous state.
        from: State,
        /// New state.
        to: State,
    },
}

/// Settings of one virtual router as the state machine sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// Virtual router ID.
    pub vrid: VrId,
    /// Configured priority (255: address owner).
    pub priority: Priority,
    /// Advertisement_Interval: what this router advertises while master.
    pub advert_interval: AdvertInterval,
    /// Preempt_Mode.
    pub preempt: bool,
    /// With preemption, how long a lower-priority master is tolerated after it is first heard.
    pub preempt_delay: Duration,
    /// Accept_Mode (reported; enforcing it is the data path's job).
    pub accept_mode: bool,
    /// This router's primary address: source of its adverts and tie-breaker (§6.4.3).
    pub address: IpAddr,
    /// The virtual addresses, of the family of `address`.
    pub vips: Vec<IpAddr>,
    /// If not empty, adverts are accepted from these senders only.
    pub unicast_peers: Vec<IpAddr>,
    /// Gratuitous ARP schedule.
    pub garp: GarpConfig,
}

impl RouterConfig {
    /// Settings with preemption on, no preempt delay, accept mode off, multicast, default GARPs.
    #[must_use]
    pub fn new(
        vrid: VrId,
        priority: Priority,
        advert_interval: AdvertInterval,
        address: IpAddr,
        vips: Vec<IpAddr>,
    ) -> Self {
        Self {
            vrid,
            priority,
            advert_interval,
            preempt: true,
            preempt_delay: Duration::ZERO,
            accept_mode: false,
            address,
            vips,
            unicast_peers: Vec::new(),
            garp: GarpConfig::default(),
        }
    }
}

/// How long a resigning master keeps the VIPs after its successor's first advert: the neighbours'
/// ARP entries move to the successor on its gratuitous ARPs, which Linux takes once a second at
/// most per entry (`locktime`).
pub const LINGER: Duration = Duration::from_secs(1);

/// One VRRPv3 virtual router: the state machine of RFC 5798 §6.4 with its timers and counters.
#[derive(Debug, Clone)]
pub struct Router {
    config: RouterConfig,
    vips: Addresses,
    state: State,
    /// Effective priority: configured, lowered by tracking.
    priority: u8,
    master_adver_interval: Duration,
    adver_timer: Option<Instant>,
    master_down_timer: Option<Instant>,
    garp_timer: Option<Instant>,
    /// When a lower-priority master stops being tolerated (preempt delay running).
    preempt_deadline: Option<Instant>,
    /// A resigning master (make-before-break): when it lets go even if no successor spoke.
    leaving: Option<Instant>,
    /// A resigning master that heard its successor: when it lets go of the VIPs.
    letting_go: Option<Instant>,
    master: Option<IpAddr>,
    last_transition: Option<Instant>,
    actions: VecDeque<Action>,
    counters: Counters,
}

impl Router {
    /// A router in state Initialize.
    ///
    /// # Errors
    /// [`ConfigError`] for an empty, oversized or duplicated VIP list, or VIPs or peers of another
    /// family than `config.address`.
    pub fn new(config: RouterConfig) -> Result<Self, ConfigError> {
        check_vips(&config.vips)?;
        let family_ok = |a: &IpAddr| a.is_ipv4() == config.address.is_ipv4();
        if let Some(bad) = config
            .vips
            .iter()
            .chain(&config.unicast_peers)
            .find(|a| !family_ok(a))
        {
            return Err(ConfigError::AddressFamily(*bad));
        }
        let vips = Addresses::from_ips(&config.vips)
            .map_err(|_| ConfigError::AddressFamily(config.address))?;
        Ok(Self {
            vips,
            state: State::Initialize,
            priority: config.priority.get(),
            master_adver_interval: config.advert_interval.as_duration(),
            adver_timer: None,
            master_down_timer: None,
            garp_timer: None,
            preempt_deadline: None,
            leaving: None,
            letting_go: None,
            master: None,
            last_transition: None,
            actions: VecDeque::new(),
            counters: Counters::default(),
            config,
        })
    }

    /// The settings.
    #[must_use]
    pub const fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// The current state.
    #[must_use]
    pub const fn state(&self) -> State {
        self.state
    }

    /// The effective priority (configured, lowered by tracking); what the next advert carries.
    #[must_use]
    pub const fn priority(&self) -> u8 {
        self.priority
    }

    /// The address of the current master: this router's own while Master, the sender of the last
    /// advert heard while Backup (`None` before one, and after the master resigned), `None` in
    /// Initialize.
    #[must_use]
    pub const fn master_address(&self) -> Option<IpAddr> {
        self.master
    }

    /// When the state last changed, `None` before the first change.
    #[must_use]
    pub const fn last_transition(&self) -> Option<Instant> {
        self.last_transition
    }

    /// The advert counters.
    #[must_use]
    pub const fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Whether Accept_Mode is on.
    #[must_use]
    pub const fn accept_mode(&self) -> bool {
        self.config.accept_mode
    }

    /// Master_Adver_Interval: the interval of the master heard last (§6.1), our own before any.
    #[must_use]
    pub const fn master_adver_interval(&self) -> Duration {
        self.master_adver_interval
    }

    /// Skew_Time = ((256 − Priority) × Master_Adver_Interval) / 256 (§6.1), exact to the nanosecond.
    #[must_use]
    pub fn skew_time(&self) -> Duration {
        self.master_adver_interval * (256 - u32::from(self.priority)) / 256
    }

    /// Master_Down_Interval = 3 × Master_Adver_Interval + Skew_Time (§6.1).
    #[must_use]
    pub fn master_down_interval(&self) -> Duration {
        self.master_adver_interval * 3 + self.skew_time()
    }

    /// The advert this router sends with `priority`.
    #[must_use]
    pub fn advert(&self, priority: u8) -> AdvertRepr {
        AdvertRepr {
            vrid: self.config.vrid.get(),
            priority,
            max_adver_int: self.config.advert_interval.centis(),
            addresses: self.vips.clone(),
        }
    }

    /// Starts the router (the Startup event of §6.4.1). Does nothing unless in Initialize.
    pub fn startup(&mut self, now: Instant) {
        if self.state != State::Initialize {
            return;
        }
        if self.config.priority.is_owner() {
            // §6.4.1: the address owner sends an advert and GARPs, starts Adver_Timer, → Master.
            self.become_master(now);
        } else {
            // §6.4.1: others set Master_Adver_Interval to Advertisement_Interval, start
            // Master_Down_Timer with Master_Down_Interval, → Backup.
            self.master_adver_interval = self.config.advert_interval.as_duration();
            self.become_backup(now, None);
        }
    }

    /// Starts a router that was master until a moment ago and whose forwarding never stopped (a
    /// restart of its daemon over a data path that outlived it): it takes up as master at once,
    /// as the address owner does (§6.4.1), instead of waiting out Master_Down_Interval as backup
    /// while its peer takes the VIPs. A peer that took over meanwhile meets it by the ordinary
    /// rules (§6.4.3: the lower priority steps back). Does nothing unless in Initialize.
    pub fn startup_resuming(&mut self, now: Instant) {
        if self.state == State::Initialize {
            self.become_master(now);
        }
    }

    /// Stops the router for a restart of its daemon while its forwarding goes on: no priority-0
    /// advert and the VIPs stay (the peer takes over only if no advert comes for
    /// Master_Down_Interval, i.e. the daemon is not back in time), → Initialize.
    pub fn shutdown_holding(&mut self, now: Instant) {
        self.master_down_timer = None;
        self.adver_timer = None;
        self.garp_timer = None;
        if self.state != State::Initialize {
            self.transition(now, State::Initialize);
        }
        self.master = None;
        self.preempt_deadline = None;
    }

    /// Hands over make-before-break (a planned stop): a master sends its priority-0 advert (§6.4.3
    /// Shutdown) but keeps the VIPs, and so keeps answering for them, until its successor's
    /// first advert (with its gratuitous ARPs) is heard and [`LINGER`] has passed, or
    /// Master_Down_Interval without one; then it removes them, → Initialize. The VIPs are never
    /// without a holder for the backup's skew time. Other states stop as
    /// [`shutdown`](Self::shutdown) does; [`is_stopped`](Self::is_stopped) says when it is done.
    pub fn resign(&mut self, now: Instant) {
        if self.state != State::Master {
            self.shutdown(now);
            return;
        }
        self.adver_timer = None;
        self.garp_timer = None;
        self.send_advert(0);
        self.leaving = Some(now + self.master_down_interval());
    }

    /// Whether the router has stopped (Initialize): after a [`resign`](Self::resign), once the
    /// VIPs are handed over.
    #[must_use]
    pub fn is_stopped(&self) -> bool {
        self.state == State::Initialize
    }

    /// A resigning master lets go of the VIPs, → Initialize.
    fn let_go(&mut self, now: Instant) {
        self.leaving = None;
        self.letting_go = None;
        self.actions
            .push_back(Action::RemoveVips(self.config.vips.clone()));
        self.transition(now, State::Initialize);
        self.master = None;
        self.preempt_deadline = None;
    }

    /// Stops the router (the Shutdown event); a master resigns with a priority-0 advert.
    pub fn shutdown(&mut self, now: Instant) {
        match self.state {
            State::Initialize => {}
            State::Backup => {
                // §6.4.2 Shutdown: cancel Master_Down_Timer, → Initialize.
                self.master_down_timer = None;
                self.transition(now, State::Initialize);
            }
            State::Master => {
                // §6.4.3 Shutdown: cancel Adver_Timer, send an advert with priority 0, → Initialize.
                self.adver_timer = None;
                self.garp_timer = None;
                self.send_advert(0);
                self.actions
                    .push_back(Action::RemoveVips(self.config.vips.clone()));
                self.transition(now, State::Initialize);
            }
        }
        self.master = None;
        self.preempt_deadline = None;
        self.leaving = None;
        self.letting_go = None;
    }

    /// Sets the effective priority (tracking), clamped to 1–254; ignored for the address owner,
    /// whose priority stays 255. A master advertises the new priority at once.
    pub fn set_priority(&mut self, now: Instant, priority: u8) {
        if self.config.priority.is_owner() {
            return;
        }
        let priority = priority.clamp(1, 254);
        if priority == self.priority {
            return;
        }
        self.priority = priority;
        if self.state == State::Master && self.leaving.is_none() && self.letting_go.is_none() {
            // Not in RFC 5798: tell the backups now rather than at the next Adver_Timer, so a
            // preempting backup starts its Master_Down_Timer race without waiting an interval.
            self.send_advert(priority);
            self.adver_timer = Some(now + self.config.advert_interval.as_duration());
        }
    }

    /// Handles a whole IPv4 datagram read from the raw socket: checks it (RFC 5798 §7.1, see
    /// [`crate::validate`]) and, if it passes, runs the state machine on it.
    ///
    /// # Errors
    /// The [`DropReason`] of a dropped advert, already counted.
    pub fn handle_packet(&mut self, now: Instant, datagram: &[u8]) -> Result<(), DropReason> {
        self.counters.received += 1;
        match validate::parse_ipv4(datagram) {
            Ok((src, advert)) => self.process_advert(now, src, &advert),
            Err(reason) => {
                self.counters.count_drop(reason);
                Err(reason)
            }
        }
    }

    /// Handles a VRRP message read from a raw IPv6 socket, with what `recvmsg` said about it:
    /// checks it (RFC 5798 §7.1, see [`validate::parse_ipv6`]) and, if it passes, runs the state
    /// machine on it.
    ///
    /// # Errors
    /// The [`DropReason`] of a dropped advert, already counted.
    pub fn handle_ipv6(
        &mut self,
        now: Instant,
        message: &[u8],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: Option<u8>,
    ) -> Result<(), DropReason> {
        self.counters.received += 1;
        match validate::parse_ipv6(message, src, dst, hop_limit) {
            Ok((src, advert)) => self.process_advert(now, src, &advert),
            Err(reason) => {
                self.counters.count_drop(reason);
                Err(reason)
            }
        }
    }

    /// Handles an advert already parsed (checksum verified, TTL checked by the caller) from `src`:
    /// the remaining checks of §7.1, then the state machine.
    ///
    /// # Errors
    /// The [`DropReason`] of a dropped advert, already counted.
    pub fn handle_advert(
        &mut self,
        now: Instant,
        src: IpAddr,
        advert: &AdvertRepr,
    ) -> Result<(), DropReason> {
        self.counters.received += 1;
        self.process_advert(now, src, advert)
    }

    /// Fires the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Master
            && (self.leaving.is_some_and(|t| t <= now) || self.letting_go.is_some_and(|t| t <= now))
        {
            self.let_go(now);
            return;
        }
        if self.state == State::Backup && self.master_down_timer.is_some_and(|t| t <= now) {
            // §6.4.2: Master_Down_Timer fired → send an advert, GARPs, start Adver_Timer, → Master.
            self.become_master(now);
        }
        if self.state == State::Master {
            if let Some(due) = self.adver_timer.filter(|t| *t <= now) {
                // §6.4.3: Adver_Timer fired → send an advert, reset Adver_Timer.
                self.send_advert(self.priority);
                // Counted from when it was due, so a late wake-up does not make the adverts drift;
                // from `now` if a whole interval was missed.
                let interval = self.config.advert_interval.as_duration();
                let next = due + interval;
                self.adver_timer = Some(if next > now { next } else { now + interval });
            }
            if self.garp_timer.is_some_and(|t| t <= now) {
                // keepalived's garp_master_delay: the second gratuitous ARP burst.
                self.garp_timer = None;
                self.push_garp();
            }
        }
    }

    /// The next instant [`handle_timeout`](Self::handle_timeout) must be called at, if any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.adver_timer,
            self.master_down_timer,
            self.garp_timer,
            self.leaving,
            self.letting_go,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next action to perform, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn process_advert(
        &mut self,
        now: Instant,
        src: IpAddr,
        advert: &AdvertRepr,
    ) -> Result<(), DropReason> {
        let expect = Expect {
            vrid: self.config.vrid.get(),
            own_address: self.config.address,
            unicast_peers: &self.config.unicast_peers,
            vips: &self.vips,
            owner: self.config.priority.is_owner(),
        };
        if let Err(reason) = validate::check_advert(&expect, src, advert) {
            self.counters.count_drop(reason);
            return Err(reason);
        }
        self.counters.accepted += 1;
        if self.leaving.is_some() || self.letting_go.is_some() {
            // Resigning: the first advert of a successor starts the last moments with the VIPs.
            if advert.priority > 0 && self.letting_go.is_none() {
                self.leaving = None;
                self.letting_go = Some(now + LINGER);
            }
            return Ok(());
        }
        match self.state {
            // Not running: adverts have no effect.
            State::Initialize => {}
            State::Backup => self.backup_rx(now, src, advert),
            State::Master => self.master_rx(now, src, advert),
        }
        Ok(())
    }

    fn backup_rx(&mut self, now: Instant, src: IpAddr, advert: &AdvertRepr) {
        if advert.priority == 0 {
            // §6.4.2: priority 0 → set Master_Down_Timer to Skew_Time.
            self.master_down_timer = Some(now + self.skew_time());
            self.master = None;
            return;
        }
        self.master = Some(src);
        if self.config.preempt && advert.priority < self.priority {
            if !self.preempt_delay_running(now) {
                // §6.4.2: Preempt_Mode and a lower priority → discard the advert; the
                // Master_Down_Timer keeps running and makes us master.
                return;
            }
            // keepalived's preempt_delay: until it runs out, accept the lower-priority master.
        } else {
            self.preempt_deadline = None;
        }
        // §6.4.2: set Master_Adver_Interval from the advert, recompute Master_Down_Interval, reset
        // Master_Down_Timer.
        self.master_adver_interval = centis(advert.max_adver_int);
        self.master_down_timer = Some(now + self.master_down_interval());
    }

    fn master_rx(&mut self, now: Instant, src: IpAddr, advert: &AdvertRepr) {
        if advert.priority == 0 {
            // §6.4.3: priority 0 → send an advert, reset Adver_Timer.
            self.send_advert(self.priority);
            self.adver_timer = Some(now + self.config.advert_interval.as_duration());
        } else if advert.priority > self.priority
            || (advert.priority == self.priority && src > self.config.address)
        {
            // §6.4.3: a higher priority, or an equal one from a higher primary address → cancel
            // Adver_Timer, learn Master_Adver_Interval, start Master_Down_Timer, → Backup.
            self.master_adver_interval = centis(advert.max_adver_int);
            self.become_backup(now, Some(src));
        } else {
            // §6.4.3 discards a lower-priority advert; like keepalived we also answer at once so
            // the other master (after a partition heals) steps down within one round trip.
            self.send_advert(self.priority);
            self.adver_timer = Some(now + self.config.advert_interval.as_duration());
        }
    }

    /// Whether the preempt delay still tolerates a lower-priority master; starts it on first use.
    fn preempt_delay_running(&mut self, now: Instant) -> bool {
        if self.config.preempt_delay.is_zero() {
            return false;
        }
        let deadline = *self
            .preempt_deadline
            .get_or_insert(now + self.config.preempt_delay);
        now < deadline
    }

    fn become_master(&mut self, now: Instant) {
        self.master_down_timer = None;
        self.preempt_deadline = None;
        self.master = Some(self.config.address);
        self.actions
            .push_back(Action::AddVips(self.config.vips.clone()));
        self.send_advert(self.priority);
        self.adver_timer = Some(now + self.config.advert_interval.as_duration());
        self.push_garp();
        self.garp_timer = self.config.garp.repeat_delay.map(|d| now + d);
        self.counters.became_master += 1;
        self.transition(now, State::Master);
    }

    fn become_backup(&mut self, now: Instant, master: Option<IpAddr>) {
        if self.state == State::Master {
            self.adver_timer = None;
            self.garp_timer = None;
            self.actions
                .push_back(Action::RemoveVips(self.config.vips.clone()));
        }
        self.master = master;
        self.master_down_timer = Some(now + self.master_down_interval());
        self.counters.became_backup += 1;
        self.transition(now, State::Backup);
    }

    fn transition(&mut self, now: Instant, to: State) {
        let from = self.state;
        self.state = to;
        self.last_transition = Some(now);
        self.actions.push_back(Action::StateChanged { from, to });
    }

    fn send_advert(&mut self, priority: u8) {
        self.counters.sent += 1;
        self.actions.push_back(Action::SendAdvert {
            priority,
            repr: self.advert(priority),
        });
    }

    fn push_garp(&mut self) {
        if self.config.garp.count > 0 {
            self.actions.push_back(Action::SendGratuitousArp {
                vips: self.config.vips.clone(),
                count: self.config.garp.count,
            });
        }
    }
}

/// A Max Adver Int in centiseconds as a [`Duration`].
const fn centis(cs: u16) -> Duration {
    Duration::from_millis(cs as u64 * 10)
}
