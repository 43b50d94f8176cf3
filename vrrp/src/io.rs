//! The thin I/O layer: tokio sockets and timers around the sans-IO [`Router`].
//!
//! - a raw IPv4 socket for protocol 112, bound to the interface (`SO_BINDTODEVICE`), joined to
//!   224.0.0.18 on it (`IP_ADD_MEMBERSHIP`), multicast loop off, TTL 255, writing its own IP header
//!   (`IP_HDRINCL`, TOS 0xc0, as keepalived) — or sending to unicast peers instead;
//! - an `AF_PACKET` socket for gratuitous ARPs;
//! - netlink ([`rtnetlink`]) to read the interface (index, MAC, primary address) and to add and
//!   remove the VIPs;
//! - the notify program, run on each state change with the new state as argument, one at a time,
//!   without blocking the protocol;
//! - the [`Tracker`] of tracked conditions, whose changes become [`Router::set_priority`] calls.
//!
//! The daemon builds a [`Speaker`] from a [`Config`], keeps its [`Speaker::status`] receiver and
//! [`Speaker::tracker`] handle, and awaits [`Speaker::run`] until its shutdown token is cancelled:
//!
//! ```no_run
//! # async fn example(config: vrrp::Config) -> Result<(), vrrp::io::Error> {
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let speaker = vrrp::Speaker::new(config)?;
//! let status = speaker.status();
//! let tracker = speaker.tracker();
//! let task = tokio::spawn(speaker.run(shutdown.clone()));
//! // ... later: status.borrow().state, tracker.set_failed("pool", true), shutdown.cancel()
//! # drop((status, tracker)); task.await.ok(); Ok(()) }
//! ```

use std::io::{self as stdio, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Config, ConfigError};
use crate::fsm::{Action, Router, RouterConfig, State};
use crate::track::{self, Tracker};
use crate::validate::Counters;
use crate::wire::{self, arp, ipv4};

/// How long a notify program may run before it is killed.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most datagrams read per wake-up before the timers get a turn.
const READ_BURST: usize = 64;

/// What the daemon reads about the virtual router: a cheap snapshot, published through a
/// [`watch`] channel by [`Speaker::run`].
///
/// Watchers are woken when the state, priority or master change; the counters are refreshed in the
/// same value without waking anyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The current state.
    pub state: State,
    /// The effective priority (configured, lowered by failed tracked conditions).
    pub priority: u8,
    /// The current master: this node while master, the advertising peer while backup.
    pub master: Option<IpAddr>,
    /// This node's primary address once the interface has been read.
    pub address: Option<IpAddr>,
    /// Wall-clock time of the last state change.
    pub last_transition: Option<SystemTime>,
    /// Advert counters.
    pub counters: Counters,
}

impl Status {
    fn initial(priority: u8) -> Self {
        Self {
            state: State::Initialize,
            priority,
            master: None,
            address: None,
            last_transition: None,
            counters: Counters::default(),
        }
    }
}

/// Why the speaker could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid vrrp configuration: {0}")]
    Config(#[from] ConfigError),
    /// The interface does not exist.
    #[error("interface {0:?} not found")]
    NoInterface(String),
    /// The interface has no Ethernet address for gratuitous ARPs.
    #[error("interface {0:?} has no ethernet address")]
    NoMac(String),
    /// No source address configured and none on the interface.
    #[error("interface {0:?} has no ipv4 address to send adverts from; configure source_addr")]
    NoSourceAddress(String),
    /// A socket could not be set up.
    #[error("{what}: {source}")]
    Socket {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: stdio::Error,
    },
    /// A netlink request failed.
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
}

fn sock_err(what: &'static str) -> impl FnOnce(stdio::Error) -> Error {
    move |source| Error::Socket { what, source }
}

/// One VRRP virtual router on one interface: configuration, status channel and tracker, ready to
/// [`run`](Self::run).
#[derive(Debug)]
pub struct Speaker {
    config: Config,
    tracker: Tracker,
    status: watch::Sender<Status>,
    hold: HoldSwitch,
    standby: StandbySwitch,
}

/// Whether the router stands out (`lbctl vrrp resign`): a master hands over make-before-break
/// ([`Router::resign`]) and the router stays in Initialize, neither advertising nor taking over,
/// until the switch is cleared ([`Router::startup`] again). Watched by the running speaker.
#[derive(Debug, Clone)]
pub struct StandbySwitch(Arc<watch::Sender<bool>>);

impl Default for StandbySwitch {
    fn default() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }
}

impl StandbySwitch {
    /// Stands out (`true`) or takes part again (`false`).
    pub fn set(&self, standby: bool) {
        self.0
            .send_if_modified(|s| std::mem::replace(s, standby) != standby);
    }

    /// Whether the router stands out.
    #[must_use]
    pub fn get(&self) -> bool {
        *self.0.borrow()
    }
}

/// Whether a stopping speaker keeps the VIPs for its successor ([`Speaker::hold_across_restarts`]),
/// switchable while it runs: a daemon that hands its forwarding to a successor decides at stop.
#[derive(Debug, Clone, Default)]
pub struct HoldSwitch(Arc<AtomicBool>);

impl HoldSwitch {
    /// Sets whether a stop keeps the VIPs.
    pub fn set(&self, hold: bool) {
        self.0.store(hold, Ordering::SeqCst);
    }

    /// Whether a stop keeps the VIPs.
    #[must_use]
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl Speaker {
    /// Checks `config` and prepares the speaker; nothing is opened yet.
    ///
    /// # Errors
    /// [`ConfigError`] from [`Config::validate`].
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let tracker = Tracker::new(&config.tracked);
        let (status, _) = watch::channel(Status::initial(config.priority.get()));
        Ok(Self {
            config,
            tracker,
            status,
            hold: HoldSwitch::default(),
            standby: StandbySwitch::default(),
        })
    }

    /// For a daemon whose forwarding outlives it: a stop keeps the VIPs and sends no
    /// priority-0 advert ([`Router::shutdown_holding`]), and a start that finds the VIPs still
    /// on the interface takes up as master at once ([`Router::startup_resuming`]), so a restart
    /// within Master_Down_Interval does not move them.
    #[must_use]
    pub fn hold_across_restarts(self, hold: bool) -> Self {
        self.hold.set(hold);
        self
    }

    /// The switch that takes the router out of the election and back
    /// ([`StandbySwitch`]); set before [`run`](Self::run), the router starts out.
    #[must_use]
    pub fn standby_switch(&self) -> StandbySwitch {
        self.standby.clone()
    }

    /// The switch of [`hold_across_restarts`](Self::hold_across_restarts), to flip it while
    /// the speaker runs (read at start and at stop).
    #[must_use]
    pub fn hold_switch(&self) -> HoldSwitch {
        self.hold.clone()
    }

    /// The configuration.
    #[must_use]
    pub const fn config(&self) -> &Config {
        &self.config
    }

    /// A receiver of the status snapshot (valid before, during and after [`run`](Self::run)).
    #[must_use]
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// The handle to flip tracked conditions with.
    #[must_use]
    pub fn tracker(&self) -> Tracker {
        self.tracker.clone()
    }

    /// Runs the virtual router until `shutdown` is cancelled, then resigns (a priority-0 advert if
    /// master), removes the VIPs and returns.
    ///
    /// # Errors
    /// [`Error`] when the interface or the sockets cannot be set up; errors while running (a send
    /// that fails, a VIP that cannot be added, a notify program that fails) are logged, not fatal.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let switches = Switches {
            hold: self.hold,
            standby: self.standby,
        };
        config_run(self.config, self.tracker, self.status, shutdown, switches).await
    }
}

/// The driver: opens the sockets, then ties socket → [`Router`] → actions until `shutdown` is
/// cancelled. [`Speaker::run`] calls it; it is public for callers that manage the channels
/// themselves.
///
/// # Errors
/// As [`Speaker::run`].
pub async fn run(
    config: Config,
    tracker: Tracker,
    status: watch::Sender<Status>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    config_run(config, tracker, status, shutdown, Switches::default()).await
}

/// The switches a daemon flips while the speaker runs.
#[derive(Debug, Default)]
struct Switches {
    hold: HoldSwitch,
    standby: StandbySwitch,
}

async fn config_run(
    config: Config,
    tracker: Tracker,
    status: watch::Sender<Status>,
    shutdown: CancellationToken,
    switches: Switches,
) -> Result<(), Error> {
    config.validate()?;
    let (connection, netlink, _) =
        rtnetlink::new_connection().map_err(sock_err("open netlink socket"))?;
    let connection = tokio::spawn(connection);
    let result = drive(&config, &tracker, &status, &shutdown, &netlink, &switches).await;
    connection.abort();
    result
}

/// What the driver learnt about the interface.
struct Link {
    index: u32,
    mac: arp::MacAddr,
    address: Ipv4Addr,
}

async fn drive(
    config: &Config,
    tracker: &Tracker,
    status: &watch::Sender<Status>,
    shutdown: &CancellationToken,
    netlink: &rtnetlink::Handle,
    switches: &Switches,
) -> Result<(), Error> {
    let hold = &switches.hold;
    let mut standby_rx = switches.standby.0.subscribe();
    let mut standby = *standby_rx.borrow_and_update();
    let link = read_link(netlink, config).await?;
    let mut router_config = RouterConfig::new(
        config.vrid,
        config.priority,
        config.advert_interval,
        IpAddr::V4(link.address),
        config.vips.iter().copied().map(IpAddr::V4).collect(),
    );
    router_config.preempt = config.preempt;
    router_config.preempt_delay = config.preempt_delay;
    router_config.accept_mode = config.accept_mode;
    router_config.unicast_peers = config
        .unicast_peers
        .iter()
        .copied()
        .map(IpAddr::V4)
        .collect();
    router_config.garp = config.garp;
    let mut router = Router::new(router_config)?;

    let vrrp = open_vrrp_socket(config, link.index)?;
    let garp = Arc::new(open_packet_socket()?);
    let notifier = config.notify.clone().map(Notifier::spawn);
    let mut io = Io {
        config,
        link: &link,
        netlink,
        vrrp: &vrrp,
        garp,
        notifier,
        ident: 0,
        last_transition: None,
    };
    info!(
        interface = %config.interface, vrid = %config.vrid, priority = config.priority.get(),
        address = %link.address, "vrrp speaker starting"
    );

    // VIPs still on the interface: this node was master when its daemon stopped. Held across a
    // restart, it goes on as master; otherwise they are leftovers a backup must not hold.
    let resuming = hold.get() && io.holds_vips(&router.config().vips).await;
    if !resuming {
        io.remove_vips(&router.config().vips).await;
    }
    let mut track_rx = tracker.subscribe();
    router.set_priority(
        now(),
        track::penalty_priority(config.priority, &track_rx.borrow_and_update()),
    );
    if resuming {
        info!("the VIPs are still here: resuming as master");
        router.startup_resuming(now());
        if standby {
            // Resigned before the restart: hand over make-before-break now.
            router.resign(now());
        }
    } else if standby {
        info!(
            "resigned (`lbctl vrrp resign`): staying out of the election until `lbctl vrrp resume`"
        );
    } else {
        router.startup(now());
    }
    io.perform(&mut router).await;
    publish(status, &router, &io);

    let mut buf = vec![0u8; 4096];
    let mut tracker_open = true;
    let result = loop {
        let deadline = router.poll_timeout();
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break Ok(()),
            readable = vrrp.readable() => {
                if let Err(e) = receive(readable, &mut buf, &mut router, &mut io).await {
                    break Err(e);
                }
            }
            () = sleep_until(deadline) => router.handle_timeout(now()),
            changed = standby_rx.changed() => {
                if changed.is_ok() {
                    let now_standby = *standby_rx.borrow_and_update();
                    if now_standby != standby {
                        standby = now_standby;
                        if standby {
                            // Maintenance: make-before-break, then out of the election.
                            info!("resigning: handing the VIPs over, then staying out until `lbctl vrrp resume`");
                            router.resign(now());
                        } else {
                            info!("resuming: taking part in the election again");
                            router.startup(now());
                        }
                    }
                }
            }
            changed = track_rx.changed(), if tracker_open => {
                if changed.is_ok() {
                    let p = track::penalty_priority(config.priority, &track_rx.borrow_and_update());
                    info!(priority = p, "tracked conditions changed");
                    router.set_priority(now(), p);
                } else {
                    tracker_open = false;
                }
            }
        }
        io.perform(&mut router).await;
        publish(status, &router, &io);
    };

    // Cancelled, or the socket failed: resign so no VIP is left behind, unless the forwarding
    // goes on across a restart (then the VIPs stay for the next start).
    if hold.get() && result.is_ok() {
        info!("vrrp speaker stopping; the VIPs stay for the next start");
        router.shutdown_holding(now());
    } else if result.is_ok() {
        // A planned stop: hand over make-before-break, reading adverts until the successor
        // speaks (bounded by Master_Down_Interval and LINGER).
        info!("vrrp speaker stopping: handing the VIPs over");
        router.resign(now());
        io.perform(&mut router).await;
        publish(status, &router, &io);
        while !router.is_stopped() {
            let deadline = router.poll_timeout();
            tokio::select! {
                biased;
                readable = vrrp.readable() => {
                    if receive(readable, &mut buf, &mut router, &mut io).await.is_err() {
                        router.shutdown(now());
                    }
                }
                () = sleep_until(deadline) => router.handle_timeout(now()),
            }
            io.perform(&mut router).await;
            publish(status, &router, &io);
        }
    } else {
        // The socket failed: resign at once so no VIP is left behind.
        info!("vrrp speaker stopping");
        router.shutdown(now());
    }
    io.perform(&mut router).await;
    publish(status, &router, &io);
    if let Some(notifier) = io.notifier.take() {
        // Let the notify program hear the last change (to INIT) before the daemon exits.
        notifier.finish().await;
    }
    result
}

/// Reads what the VRRP socket has (a bounded burst) into the router, performing its actions.
async fn receive(
    readable: std::io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, socket2::Socket>>,
    buf: &mut [u8],
    router: &mut Router,
    io: &mut Io<'_>,
) -> Result<(), Error> {
    let mut guard = readable.map_err(sock_err("wait for vrrp socket"))?;
    for _ in 0..READ_BURST {
        match guard.try_io(|fd| fd.get_ref().read(buf)) {
            Ok(Ok(n)) => {
                let datagram = buf.get(..n).unwrap_or_default();
                if let Err(reason) = router.handle_packet(now(), datagram) {
                    debug!(%reason, "advert dropped");
                }
                io.perform(router).await;
            }
            Ok(Err(e)) => {
                warn!(error = %e, "vrrp socket read failed");
                break;
            }
            Err(_would_block) => break,
        }
    }
    Ok(())
}

/// The instant of the protocol clock; tokio's, so paused-time tests drive it too.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

fn publish(status: &watch::Sender<Status>, router: &Router, io: &Io<'_>) {
    let next = Status {
        state: router.state(),
        priority: router.priority(),
        master: router.master_address(),
        address: Some(router.config().address),
        last_transition: io.last_transition,
        counters: *router.counters(),
    };
    status.send_if_modified(|current| {
        let wake = current.state != next.state
            || current.priority != next.priority
            || current.master != next.master
            || current.address != next.address;
        *current = next;
        wake
    });
}

/// The sockets and handles the actions are carried out with.
struct Io<'a> {
    config: &'a Config,
    link: &'a Link,
    netlink: &'a rtnetlink::Handle,
    vrrp: &'a AsyncFd<Socket>,
    garp: Arc<Socket>,
    notifier: Option<Notifier>,
    ident: u16,
    last_transition: Option<SystemTime>,
}

impl Io<'_> {
    async fn perform(&mut self, router: &mut Router) {
        while let Some(action) = router.poll_action() {
            match action {
                Action::SendAdvert { priority, repr } => {
                    debug!(priority, "sending advert");
                    self.send_advert(&repr);
                }
                Action::SendGratuitousArp { vips, count } => self.send_garps(&vips, count),
                Action::AddVips(vips) => self.add_vips(&vips).await,
                Action::RemoveVips(vips) => self.remove_vips(&vips).await,
                Action::StateChanged { from, to } => {
                    info!(%from, %to, priority = router.priority(), "vrrp state changed");
                    self.last_transition = Some(SystemTime::now());
                    if let Some(n) = &self.notifier {
                        n.notify(from, to);
                    }
                }
            }
        }
    }

    fn send_advert(&mut self, repr: &wire::Repr) {
        let destinations: Vec<Ipv4Addr> = if self.config.unicast_peers.is_empty() {
            vec![wire::MULTICAST_V4]
        } else {
            self.config.unicast_peers.clone()
        };
        for dst in destinations {
            self.ident = self.ident.wrapping_add(1);
            let header = ipv4::Repr::advert(self.link.address, dst, self.ident);
            let datagram = match ipv4::emit_advert(&header, repr) {
                Ok(d) => d,
                Err(e) => {
                    warn!(error = %e, "cannot build advert");
                    continue;
                }
            };
            let to = SockAddr::from(SocketAddrV4::new(dst, 0));
            if let Err(e) = self.vrrp.get_ref().send_to(&datagram, &to) {
                warn!(%dst, error = %e, "sending advert failed");
            }
        }
    }

    fn send_garps(&self, vips: &[IpAddr], count: u32) {
        let frames: Vec<[u8; arp::FRAME_LEN]> = vips
            .iter()
            .filter_map(|v| match v {
                IpAddr::V4(v4) => Some(arp::gratuitous_request(self.link.mac, *v4)),
                IpAddr::V6(_) => None,
            })
            .collect();
        let to = match packet_addr(self.link.index) {
            Ok(to) => to,
            Err(e) => {
                warn!(error = %e, "cannot address gratuitous arp");
                return;
            }
        };
        let socket = Arc::clone(&self.garp);
        let interval = self.config.garp.interval;
        let send = move |socket: &Socket| {
            for frame in &frames {
                if let Err(e) = socket.send_to(frame, &to) {
                    warn!(error = %e, "sending gratuitous arp failed");
                }
            }
        };
        if interval.is_zero() {
            for _ in 0..count {
                send(&socket);
            }
        } else {
            tokio::spawn(async move {
                for i in 0..count {
                    if i > 0 {
                        tokio::time::sleep(interval).await;
                    }
                    send(&socket);
                }
            });
        }
    }

    async fn add_vips(&self, vips: &[IpAddr]) {
        for vip in vips {
            let prefix = if vip.is_ipv4() { 32 } else { 128 };
            match self
                .netlink
                .address()
                .add(self.link.index, *vip, prefix)
                .execute()
                .await
            {
                Ok(()) => info!(%vip, "vip added"),
                Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => debug!(%vip, "vip present"),
                Err(e) => warn!(%vip, error = %e, "adding vip failed"),
            }
        }
    }

    /// Whether every VIP is on the interface.
    async fn holds_vips(&self, vips: &[IpAddr]) -> bool {
        for vip in vips {
            if !self.vip_addresses(*vip).await.is_ok_and(|m| !m.is_empty()) {
                return false;
            }
        }
        !vips.is_empty()
    }

    /// The interface's address entries for `vip`.
    async fn vip_addresses(
        &self,
        vip: IpAddr,
    ) -> Result<Vec<rtnetlink::packet_route::address::AddressMessage>, rtnetlink::Error> {
        self.netlink
            .address()
            .get()
            .set_link_index_filter(self.link.index)
            .set_address_filter(vip)
            .execute()
            .try_collect()
            .await
    }

    async fn remove_vips(&self, vips: &[IpAddr]) {
        for vip in vips {
            match self.vip_addresses(*vip).await {
                Ok(messages) => {
                    for msg in messages {
                        match self.netlink.address().del(msg).execute().await {
                            Ok(()) => info!(%vip, "vip removed"),
                            Err(e) if netlink_errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
                            Err(e) => warn!(%vip, error = %e, "removing vip failed"),
                        }
                    }
                }
                Err(e) => warn!(%vip, error = %e, "listing addresses failed"),
            }
        }
    }
}

fn netlink_errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
        _ => None,
    }
}

/// Reads the interface's index and MAC, and the source address (configured, or the interface's
/// first IPv4 address that is not a VIP).
async fn read_link(netlink: &rtnetlink::Handle, config: &Config) -> Result<Link, Error> {
    let links: Vec<_> = netlink
        .link()
        .get()
        .match_name(config.interface.clone())
        .execute()
        .try_collect()
        .await
        .map_err(|e| match netlink_errno(&e) {
            Some(libc::ENODEV) => Error::NoInterface(config.interface.clone()),
            _ => Error::Netlink(e),
        })?;
    let link = links
        .first()
        .ok_or_else(|| Error::NoInterface(config.interface.clone()))?;
    let index = link.header.index;
    let mac = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(bytes) => arp::MacAddr::try_from(bytes.as_slice()).ok(),
            _ => None,
        })
        .ok_or_else(|| Error::NoMac(config.interface.clone()))?;
    let address = match config.source_addr {
        Some(a) => a,
        None => {
            let addrs: Vec<_> = netlink
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
                .try_collect()
                .await?;
            addrs
                .iter()
                .flat_map(|m| &m.attributes)
                .find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(v4)) if !config.vips.contains(v4) => {
                        Some(*v4)
                    }
                    _ => None,
                })
                .ok_or_else(|| Error::NoSourceAddress(config.interface.clone()))?
        }
    };
    Ok(Link {
        index,
        mac,
        address,
    })
}

/// The raw IPv4 socket for protocol 112 on the interface.
#[expect(
    unsafe_code,
    reason = "tokio's AsyncFd::register is unsafe: the fd must stay open while registered"
)]
fn open_vrrp_socket(config: &Config, ifindex: u32) -> Result<AsyncFd<Socket>, Error> {
    let socket = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(i32::from(wire::IP_PROTOCOL))),
    )
    .map_err(sock_err(
        "open raw socket for ip protocol 112 (needs CAP_NET_RAW)",
    ))?;
    socket
        .bind_device(Some(config.interface.as_bytes()))
        .map_err(sock_err(
            "bind vrrp socket to the interface (SO_BINDTODEVICE)",
        ))?;
    socket
        .set_header_included_v4(true)
        .map_err(sock_err("set IP_HDRINCL"))?;
    socket
        .set_ttl_v4(u32::from(wire::TTL))
        .map_err(sock_err("set IP_TTL"))?;
    socket
        .set_tos_v4(u32::from(ipv4::TOS))
        .map_err(sock_err("set IP_TOS"))?;
    socket
        .set_multicast_ttl_v4(u32::from(wire::TTL))
        .map_err(sock_err("set IP_MULTICAST_TTL"))?;
    socket
        .set_multicast_loop_v4(false)
        .map_err(sock_err("set IP_MULTICAST_LOOP"))?;
    if config.unicast_peers.is_empty() {
        socket
            .join_multicast_v4_n(
                &wire::MULTICAST_V4,
                &InterfaceIndexOrAddress::Index(ifindex),
            )
            .map_err(sock_err("join 224.0.0.18 (IP_ADD_MEMBERSHIP)"))?;
    }
    socket
        .set_nonblocking(true)
        .map_err(sock_err("set vrrp socket non-blocking"))?;
    // SAFETY: `socket` owns a valid fd, and moving it into the AsyncFd keeps it open (and never
    // replaced) for as long as it is registered.
    unsafe { AsyncFd::register(socket) }
        .map_err(|e| sock_err("register vrrp socket with tokio")(e.into()))
}

/// The `AF_PACKET` socket gratuitous ARPs are sent on (protocol 0: it receives nothing).
fn open_packet_socket() -> Result<Socket, Error> {
    let socket = Socket::new(Domain::PACKET, Type::RAW, None)
        .map_err(sock_err("open AF_PACKET socket (needs CAP_NET_RAW)"))?;
    socket
        .set_nonblocking(true)
        .map_err(sock_err("set packet socket non-blocking"))?;
    Ok(socket)
}

/// The link-layer destination of a broadcast ARP frame on interface `ifindex`.
#[expect(
    unsafe_code,
    reason = "socket2 has no safe constructor for sockaddr_ll; the storage is zeroed and filled \
              as a sockaddr_ll of its own length"
)]
fn packet_addr(ifindex: u32) -> Result<SockAddr, stdio::Error> {
    let ifindex = i32::try_from(ifindex).map_err(|_| stdio::ErrorKind::InvalidInput)?;
    let family = u16::try_from(libc::AF_PACKET).map_err(|_| stdio::ErrorKind::InvalidInput)?;
    let len = u32::try_from(size_of::<libc::sockaddr_ll>())
        .map_err(|_| stdio::ErrorKind::InvalidInput)?;
    let mut storage = socket2::SockAddrStorage::zeroed();
    // SAFETY: sockaddr_ll is one of the sockaddr types of this platform and fits in the storage.
    let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    ll.sll_family = family;
    ll.sll_protocol = arp::ETHERTYPE_ARP.to_be();
    ll.sll_ifindex = ifindex;
    ll.sll_halen = 6;
    ll.sll_addr[..6].copy_from_slice(&arp::BROADCAST);
    // SAFETY: the family is AF_PACKET and the storage holds an initialised sockaddr_ll of `len`.
    Ok(unsafe { SockAddr::new(storage, len) })
}

/// Runs the notify program on state changes, one run at a time and in order, off the protocol's
/// path. Failures are logged.
#[derive(Debug)]
pub struct Notifier {
    tx: mpsc::UnboundedSender<(State, State)>,
    task: tokio::task::JoinHandle<()>,
}

impl Notifier {
    /// Starts the task that runs `program` (must be called inside a tokio runtime). Dropping the
    /// notifier lets the task finish the queued runs in the background; [`finish`](Self::finish)
    /// waits for them.
    #[must_use]
    pub fn spawn(program: PathBuf) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(State, State)>();
        let task = tokio::spawn(async move {
            while let Some((from, to)) = rx.recv().await {
                run_notify(&program, from, to).await;
            }
        });
        Self { tx, task }
    }

    /// Waits until the queued runs are done (each bounded by a 30 s timeout), then stops the task.
    pub async fn finish(self) {
        drop(self.tx);
        if let Err(e) = self.task.await {
            warn!(error = %e, "notify task failed");
        }
    }

    /// Queues a run for the change `from` → `to`: `program NEW_STATE`, with `VRRP_PREVIOUS_STATE`
    /// in the environment.
    pub fn notify(&self, from: State, to: State) {
        if self.tx.send((from, to)).is_err() {
            warn!("notify task is gone");
        }
    }
}

async fn run_notify(program: &Path, from: State, to: State) {
    let child = tokio::process::Command::new(program)
        .arg(to.as_str())
        .env("VRRP_PREVIOUS_STATE", from.as_str())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            warn!(program = %program.display(), error = %e, "cannot run notify program");
            return;
        }
    };
    match tokio::time::timeout(NOTIFY_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => {
            debug!(program = %program.display(), state = %to, "notify program done");
        }
        Ok(Ok(status)) => {
            warn!(program = %program.display(), state = %to, %status, "notify program failed");
        }
        Ok(Err(e)) => warn!(program = %program.display(), error = %e, "notify program wait failed"),
        Err(_) => {
            warn!(program = %program.display(), "notify program timed out; killing it");
            if let Err(e) = child.kill().await {
                warn!(error = %e, "killing notify program failed");
            }
        }
    }
}
