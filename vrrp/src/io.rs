//! The thin I/O layer: tokio sockets and timers around the sans-IO [`Router`].
//!
//! - IPv4 VIPs: a raw IPv4 socket for protocol 112, bound to the interface (`SO_BINDTODEVICE`),
//!   joined to 224.0.0.18 on it (`IP_ADD_MEMBERSHIP`), multicast loop off, TTL 255, writing its own
//!   IP header (`IP_HDRINCL`, TOS 0xc0, as keepalived) — or sending to unicast peers instead;
//! - IPv6 VIPs (RFC 5798 §5.1.2): a raw IPv6 socket for protocol 112 bound to the interface's
//!   link-local address, joined to ff02::12 (or sending to unicast peers), hop limit 255, traffic
//!   class 0xc0; the kernel writes the IPv6 header and reports hop limit and destination of what it
//!   receives as ancillary data (`IPV6_RECVHOPLIMIT`, `IPV6_RECVPKTINFO`); the VRRP checksum is ours
//!   both ways (`IPV6_CHECKSUM` stays off, so the kernel neither fills nor checks it);
//! - an `AF_PACKET` socket for gratuitous ARPs and unsolicited Neighbour Advertisements;
//! - netlink ([`rtnetlink`]) to read the interface (index, MAC, primary or link-local address) and
//!   to add and remove the VIPs;
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
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, CacheInfo,
};
use rtnetlink::packet_route::link::LinkAttribute;
use socket2::{
    Domain, InterfaceIndexOrAddress, MaybeUninitSlice, MsgHdrMut, Protocol, SockAddr, Socket, Type,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Config, ConfigError};
use crate::fsm::{Action, Router, RouterConfig, State};
use crate::track::{self, Tracker};
use crate::validate::Counters;
use crate::wire::{self, AddressFamily, arp, ipv4, ndisc};

/// How long a notify program may run before it is killed.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most datagrams read per wake-up before the timers get a turn.
const READ_BURST: usize = 64;
/// How long to wait for the interface's IPv6 link-local address to become usable (duplicate
/// address detection takes about a second by default; a link may also still be coming up).
const LINK_LOCAL_WAIT: Duration = Duration::from_secs(10);
/// How often to look again while waiting for it.
const LINK_LOCAL_POLL: Duration = Duration::from_millis(100);

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
    /// This node's primary address once the interface has been read (for an IPv6 router, the
    /// link-local address its adverts come from).
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
    /// No source address configured and none on the interface (IPv4).
    #[error("interface {0:?} has no ipv4 address to send adverts from; configure source_addr")]
    NoSourceAddress(String),
    /// No usable IPv6 link-local address on the interface to send adverts from (RFC 5798
    /// §5.1.2.1), within the wait.
    #[error(
        "interface {interface:?} has no usable ipv6 link-local address after {waited:?} ({why}); \
         check that ipv6 is enabled on it and that duplicate address detection succeeded, or \
         configure source_addr"
    )]
    NoLinkLocal {
        /// The interface.
        interface: String,
        /// How long the speaker waited.
        waited: Duration,
        /// What was found: none at all, or only tentative / failed ones.
        why: &'static str,
    },
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
    /// The source of the adverts: the primary IPv4 address, or the IPv6 link-local one.
    address: IpAddr,
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
        link.address,
        config.vips.clone(),
    );
    router_config.preempt = config.preempt;
    router_config.preempt_delay = config.preempt_delay;
    router_config.accept_mode = config.accept_mode;
    router_config
        .unicast_peers
        .clone_from(&config.unicast_peers);
    router_config.garp = config.garp;
    let mut router = Router::new(router_config)?;

    let vrrp = match link.address {
        IpAddr::V4(_) => open_vrrp_socket(config, link.index)?,
        IpAddr::V6(source) => open_vrrp_socket_v6(config, link.index, source)?,
    };
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
        address = %link.address, family = %config.family(), "vrrp speaker starting"
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
    let v6 = io.link.address.is_ipv6();
    for _ in 0..READ_BURST {
        let read = if v6 {
            guard.try_io(|fd| recv_v6(fd.get_ref(), buf).map(Received::V6))
        } else {
            guard.try_io(|fd| fd.get_ref().read(buf).map(Received::V4))
        };
        match read {
            Ok(Ok(received)) => {
                let handled = match received {
                    Received::V4(n) => {
                        router.handle_packet(now(), buf.get(..n).unwrap_or_default())
                    }
                    Received::V6(m) => router.handle_ipv6(
                        now(),
                        buf.get(..m.len).unwrap_or_default(),
                        m.src,
                        m.dst,
                        m.hop_limit,
                    ),
                };
                if let Err(reason) = handled {
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

/// What one read of the VRRP socket gave.
enum Received {
    /// A whole IPv4 datagram of this length.
    V4(usize),
    /// A VRRP message from a raw IPv6 socket.
    V6(RecvV6),
}

/// A VRRP message read from the raw IPv6 socket, and what `recvmsg` said about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecvV6 {
    /// Length of the message (the kernel has stripped the IPv6 header).
    len: usize,
    /// The sender.
    src: Ipv6Addr,
    /// The destination: ff02::12 or this node's address (`IPV6_PKTINFO`).
    dst: Ipv6Addr,
    /// The hop limit it arrived with (`IPV6_HOPLIMIT`).
    hop_limit: Option<u8>,
}

/// Room for the two control messages asked for (`IPV6_HOPLIMIT`, `IPV6_PKTINFO`) with margin.
const CONTROL_LEN: usize = 128;

/// Reads one message from the raw IPv6 socket into `buf`, with its ancillary data.
fn recv_v6(socket: &Socket, buf: &mut [u8]) -> stdio::Result<RecvV6> {
    let mut control = [0u8; CONTROL_LEN];
    let mut from = SockAddr::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0));
    let (len, control_len) = {
        // Straight into the caller's buffers: no second buffer, no copy.
        let mut bufs = [MaybeUninitSlice::new(as_uninit(buf))];
        let mut msg = MsgHdrMut::new()
            .with_addr(&mut from)
            .with_buffers(&mut bufs)
            .with_control(as_uninit(&mut control));
        let len = socket.recvmsg(&mut msg, 0)?;
        (len, msg.control_len())
    };
    // A raw socket truncates to the buffer (no MSG_TRUNC asked), so this is already in bounds.
    let len = len.min(buf.len());
    let src = from
        .as_socket_ipv6()
        .map(|a| *a.ip())
        .ok_or_else(|| stdio::Error::other("recvmsg gave no ipv6 source address"))?;
    let (hop_limit, dst) = parse_control(&control[..control_len.min(CONTROL_LEN)]);
    // Without IPV6_PKTINFO the checksum cannot be checked; the kernel always sends it once asked.
    let dst = dst.ok_or_else(|| stdio::Error::other("recvmsg gave no IPV6_PKTINFO"))?;
    Ok(RecvV6 {
        len,
        src,
        dst,
        hop_limit,
    })
}

/// `buf` as socket2's `recvmsg` takes its data and control buffers.
#[expect(
    unsafe_code,
    reason = "socket2's recvmsg takes MaybeUninit buffers; an initialised one is one of them"
)]
fn as_uninit(buf: &mut [u8]) -> &mut [MaybeUninit<u8>] {
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and the only writer, the kernel's
    // recvmsg, writes whole bytes: the slice stays initialised for the caller.
    unsafe { &mut *(std::ptr::from_mut::<[u8]>(buf) as *mut [MaybeUninit<u8>]) }
}

/// Walks the control messages of a `recvmsg` (`cmsghdr` after `cmsghdr`, each padded to the
/// alignment of `size_t`) for the hop limit (`IPV6_HOPLIMIT`, an int) and the destination address
/// (`IPV6_PKTINFO`, `in6_pktinfo`). Reads bytes only, so nothing here can go out of bounds.
fn parse_control(control: &[u8]) -> (Option<u8>, Option<Ipv6Addr>) {
    const ALIGN: usize = size_of::<usize>();
    let header = size_of::<libc::cmsghdr>();
    let align = |n: usize| n.div_ceil(ALIGN) * ALIGN;
    let int = |b: &[u8]| b.try_into().ok().map(i32::from_ne_bytes);
    let (mut hop_limit, mut dst) = (None, None);
    let mut at = 0;
    while let Some(h) = control.get(at..at + header) {
        // cmsg_len is a size_t (glibc; on 64-bit musl a socklen_t and zero padding, the same
        // word on little-endian), then the level and type ints.
        let len = h
            .get(..ALIGN)
            .and_then(|b| b.try_into().ok())
            .map_or(0, usize::from_ne_bytes);
        let level = h.get(ALIGN..ALIGN + 4).and_then(int);
        let kind = h.get(ALIGN + 4..ALIGN + 8).and_then(int);
        if len < header {
            break;
        }
        let data = control
            .get(at + align(header)..at + len)
            .unwrap_or_default();
        match (level, kind) {
            (Some(libc::IPPROTO_IPV6), Some(libc::IPV6_HOPLIMIT)) => {
                hop_limit = data
                    .get(..4)
                    .and_then(int)
                    .and_then(|h| u8::try_from(h).ok());
            }
            (Some(libc::IPPROTO_IPV6), Some(libc::IPV6_PKTINFO)) => {
                dst = data
                    .get(..16)
                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
                    .map(Ipv6Addr::from);
            }
            _ => {}
        }
        at += align(len);
    }
    (hop_limit, dst)
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
        let destinations: Vec<IpAddr> = if self.config.unicast_peers.is_empty() {
            vec![self.config.family().multicast_group()]
        } else {
            self.config.unicast_peers.clone()
        };
        for dst in destinations {
            let sent = match (self.link.address, dst) {
                (IpAddr::V4(src), IpAddr::V4(dst)) => self.send_advert_v4(repr, src, dst),
                (IpAddr::V6(src), IpAddr::V6(dst)) => self.send_advert_v6(repr, src, dst),
                // Config::validate keeps one family; nothing to send across families.
                _ => Err(stdio::Error::other("address family mismatch")),
            };
            if let Err(e) = sent {
                warn!(%dst, error = %e, "sending advert failed");
            }
        }
    }

    fn send_advert_v4(
        &mut self,
        repr: &wire::Repr,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> stdio::Result<()> {
        self.ident = self.ident.wrapping_add(1);
        let header = ipv4::Repr::advert(src, dst, self.ident);
        let datagram = ipv4::emit_advert(&header, repr).map_err(stdio::Error::other)?;
        let to = SockAddr::from(SocketAddrV4::new(dst, 0));
        self.vrrp.get_ref().send_to(&datagram, &to).map(drop)
    }

    /// The kernel writes the IPv6 header (hop limit 255 from the socket options); the VRRP
    /// checksum over the pseudo-header is ours (RFC 5798 §5.2.8).
    fn send_advert_v6(&self, repr: &wire::Repr, src: Ipv6Addr, dst: Ipv6Addr) -> stdio::Result<()> {
        let message = repr
            .to_bytes(IpAddr::V6(src), IpAddr::V6(dst))
            .map_err(stdio::Error::other)?;
        let to = SockAddr::from(SocketAddrV6::new(dst, 0, 0, scope_id(dst, self.link.index)));
        self.vrrp.get_ref().send_to(&message, &to).map(drop)
    }

    /// Gratuitous ARPs for the IPv4 VIPs, unsolicited Neighbour Advertisements for the IPv6 ones
    /// (RFC 5798 §6.4.1, §6.4.2), `count` of each per VIP on keepalived's schedule.
    fn send_garps(&self, vips: &[IpAddr], count: u32) {
        let mut frames: Vec<(Vec<u8>, SockAddr)> = Vec::new();
        for vip in vips {
            let frame = match vip {
                IpAddr::V4(v4) => packet_addr(self.link.index, arp::ETHERTYPE_ARP, arp::BROADCAST)
                    .map(|to| (arp::gratuitous_request(self.link.mac, *v4).to_vec(), to)),
                IpAddr::V6(v6) => {
                    packet_addr(self.link.index, ndisc::ETHERTYPE_IPV6, ndisc::ALL_NODES_MAC)
                        .map(|to| (ndisc::unsolicited_na(self.link.mac, *v6).to_vec(), to))
                }
            };
            match frame {
                Ok(f) => frames.push(f),
                Err(e) => {
                    warn!(%vip, error = %e, "cannot address gratuitous arp / neighbour advert");
                }
            }
        }
        let socket = Arc::clone(&self.garp);
        let interval = self.config.garp.interval;
        let send = move |socket: &Socket| {
            for (frame, to) in &frames {
                if let Err(e) = socket.send_to(frame, to) {
                    warn!(error = %e, "sending gratuitous arp / neighbour advert failed");
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
            let mut request = self.netlink.address().add(self.link.index, *vip, prefix);
            if vip.is_ipv6() {
                ipv6_vip_message(request.message_mut());
            }
            match request.execute().await {
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

/// An IPv6 VIP is added as keepalived adds it: `nodad`, so it is usable at once (a master must
/// answer for it now, and its peer just gave it up), and deprecated (preferred lifetime 0, valid
/// forever), so the node does not pick it as the source of its own connections (RFC 6724 rule 3)
/// while it still receives and answers on it.
fn ipv6_vip_message(message: &mut AddressMessage) {
    message.header.flags |= AddressHeaderFlags::Nodad;
    message
        .attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    let mut lifetimes = CacheInfo::default();
    lifetimes.ifa_preferred = 0;
    lifetimes.ifa_valid = u32::MAX;
    message
        .attributes
        .push(AddressAttribute::CacheInfo(lifetimes));
}

/// The scope id to send to `dst` with: the interface for link-local and multicast destinations,
/// which are ambiguous without one, 0 otherwise.
fn scope_id(dst: Ipv6Addr, ifindex: u32) -> u32 {
    if dst.is_unicast_link_local() || dst.is_multicast() {
        ifindex
    } else {
        0
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
    let address = match (config.source_addr, config.family()) {
        (Some(a), _) => a,
        (None, AddressFamily::Ipv4) => {
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
                    AddressAttribute::Local(ip @ IpAddr::V4(_)) if !config.vips.contains(ip) => {
                        Some(*ip)
                    }
                    _ => None,
                })
                .ok_or_else(|| Error::NoSourceAddress(config.interface.clone()))?
        }
        (None, AddressFamily::Ipv6) => IpAddr::V6(wait_link_local(netlink, config, index).await?),
    };
    Ok(Link {
        index,
        mac,
        address,
    })
}

/// The interface's IPv6 link-local address, the source of IPv6 adverts (RFC 5798 §5.1.2.1: "the
/// IPv6 link-local address of the interface over which the packet is transmitted"). An address
/// still tentative (duplicate address detection running) cannot be bound yet: wait for it, up to
/// [`LINK_LOCAL_WAIT`].
async fn wait_link_local(
    netlink: &rtnetlink::Handle,
    config: &Config,
    index: u32,
) -> Result<Ipv6Addr, Error> {
    let started = tokio::time::Instant::now();
    let mut logged = false;
    loop {
        let addrs: Vec<AddressMessage> = netlink
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await?;
        let found = link_local(&addrs, &config.vips);
        if let Ok(addr) = found {
            return Ok(addr);
        }
        let waited = started.elapsed();
        if waited >= LINK_LOCAL_WAIT {
            return Err(Error::NoLinkLocal {
                interface: config.interface.clone(),
                waited,
                why: found.err().unwrap_or("none"),
            });
        }
        if !logged {
            info!(interface = %config.interface, "waiting for a usable ipv6 link-local address");
            logged = true;
        }
        tokio::time::sleep(LINK_LOCAL_POLL).await;
    }
}

/// The first usable link-local address among `addrs` that is not a VIP, or why there is none.
fn link_local(addrs: &[AddressMessage], vips: &[IpAddr]) -> Result<Ipv6Addr, &'static str> {
    let mut why = "none on the interface";
    for message in addrs {
        let Some(addr) = message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(IpAddr::V6(v6)) if v6.is_unicast_link_local() => Some(*v6),
            _ => None,
        }) else {
            continue;
        };
        if vips.contains(&IpAddr::V6(addr)) {
            continue;
        }
        // The full flags are in IFA_FLAGS; the header holds their low byte.
        let flags = message
            .attributes
            .iter()
            .find_map(|a| match a {
                AddressAttribute::Flags(f) => Some(*f),
                _ => None,
            })
            .unwrap_or_else(|| {
                AddressFlags::from_bits_retain(u32::from(message.header.flags.bits()))
            });
        if flags.contains(AddressFlags::Dadfailed) {
            why = "duplicate address detection failed";
        } else if flags.contains(AddressFlags::Tentative) {
            why = "still tentative";
        } else {
            return Ok(addr);
        }
    }
    Err(why)
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

/// The raw IPv6 socket for protocol 112 on the interface (RFC 5798 §5.1.2), sending from `source`.
#[expect(
    unsafe_code,
    reason = "tokio's AsyncFd::register is unsafe (the fd must stay open while registered); \
              socket2 has no setter for IPV6_RECVPKTINFO"
)]
fn open_vrrp_socket_v6(
    config: &Config,
    ifindex: u32,
    source: Ipv6Addr,
) -> Result<AsyncFd<Socket>, Error> {
    let socket = Socket::new(
        Domain::IPV6,
        Type::RAW,
        Some(Protocol::from(i32::from(wire::IP_PROTOCOL))),
    )
    .map_err(sock_err(
        "open raw ipv6 socket for protocol 112 (needs CAP_NET_RAW)",
    ))?;
    socket
        .bind_device(Some(config.interface.as_bytes()))
        .map_err(sock_err(
            "bind vrrp socket to the interface (SO_BINDTODEVICE)",
        ))?;
    // §5.1.2.1: the source is the interface's link-local address (or the configured one).
    socket
        .bind(&SockAddr::from(SocketAddrV6::new(
            source,
            0,
            0,
            scope_id(source, ifindex),
        )))
        .map_err(sock_err("bind vrrp socket to the source address"))?;
    // §5.1.2.3: hop limit 255, multicast or unicast.
    socket
        .set_multicast_hops_v6(u32::from(wire::TTL))
        .map_err(sock_err("set IPV6_MULTICAST_HOPS"))?;
    socket
        .set_unicast_hops_v6(u32::from(wire::TTL))
        .map_err(sock_err("set IPV6_UNICAST_HOPS"))?;
    socket
        .set_tclass_v6(u32::from(wire::ipv6::TRAFFIC_CLASS))
        .map_err(sock_err("set IPV6_TCLASS"))?;
    socket
        .set_multicast_if_v6(ifindex)
        .map_err(sock_err("set IPV6_MULTICAST_IF"))?;
    socket
        .set_multicast_loop_v6(false)
        .map_err(sock_err("set IPV6_MULTICAST_LOOP"))?;
    // §7.1: the hop limit must be checked, and the checksum needs the destination: the kernel
    // reports both as ancillary data.
    socket
        .set_recv_hoplimit_v6(true)
        .map_err(sock_err("set IPV6_RECVHOPLIMIT"))?;
    let on: libc::c_int = 1;
    let len = libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: a valid fd, and a pointer to an int of the given length that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::IPPROTO_IPV6,
            libc::IPV6_RECVPKTINFO,
            std::ptr::from_ref(&on).cast(),
            len,
        )
    };
    if rc != 0 {
        return Err(sock_err("set IPV6_RECVPKTINFO")(
            stdio::Error::last_os_error(),
        ));
    }
    if config.unicast_peers.is_empty() {
        socket
            .join_multicast_v6(&wire::MULTICAST_V6, ifindex)
            .map_err(sock_err("join ff02::12 (IPV6_JOIN_GROUP)"))?;
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

/// The link-layer destination `mac` of a frame of EtherType `protocol` on interface `ifindex`.
#[expect(
    unsafe_code,
    reason = "socket2 has no safe constructor for sockaddr_ll; the storage is zeroed and filled \
              as a sockaddr_ll of its own length"
)]
fn packet_addr(ifindex: u32, protocol: u16, mac: arp::MacAddr) -> Result<SockAddr, stdio::Error> {
    let ifindex = i32::try_from(ifindex).map_err(|_| stdio::ErrorKind::InvalidInput)?;
    let family = u16::try_from(libc::AF_PACKET).map_err(|_| stdio::ErrorKind::InvalidInput)?;
    let len = u32::try_from(size_of::<libc::sockaddr_ll>())
        .map_err(|_| stdio::ErrorKind::InvalidInput)?;
    let mut storage = socket2::SockAddrStorage::zeroed();
    // SAFETY: sockaddr_ll is one of the sockaddr types of this platform and fits in the storage.
    let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    ll.sll_family = family;
    ll.sll_protocol = protocol.to_be();
    ll.sll_ifindex = ifindex;
    ll.sll_halen = 6;
    ll.sll_addr[..6].copy_from_slice(&mac);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One control message as the kernel lays it out: `cmsghdr`, then the data, padded.
    fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let align = size_of::<usize>();
        let header = size_of::<libc::cmsghdr>();
        let len = header + data.len();
        let mut out = len.to_ne_bytes().to_vec();
        out.extend_from_slice(&level.to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(data);
        out.resize(len.div_ceil(align) * align, 0);
        out
    }

    #[test]
    fn control_messages_give_hop_limit_and_destination() {
        let dst = wire::MULTICAST_V6;
        let mut pktinfo = dst.octets().to_vec();
        pktinfo.extend_from_slice(&7u32.to_ne_bytes());
        let mut control = cmsg(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &pktinfo);
        control.extend(cmsg(
            libc::IPPROTO_IPV6,
            libc::IPV6_HOPLIMIT,
            &255i32.to_ne_bytes(),
        ));
        assert_eq!(parse_control(&control), (Some(255), Some(dst)));
        // Truncated or empty: nothing, and no panic.
        for cut in 0..control.len() {
            let _ = parse_control(&control[..cut]);
        }
        assert_eq!(parse_control(&[]), (None, None));
        let odd = cmsg(
            libc::IPPROTO_IPV6,
            libc::IPV6_HOPLIMIT,
            &300i32.to_ne_bytes(),
        );
        assert_eq!(parse_control(&odd), (None, None));
    }

    fn address(addr: Ipv6Addr, flags: AddressFlags) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.attributes
            .push(AddressAttribute::Address(IpAddr::V6(addr)));
        m.attributes.push(AddressAttribute::Flags(flags));
        m
    }

    #[test]
    fn link_local_skips_tentative_failed_and_global_addresses() {
        let ll: Ipv6Addr = "fe80::1".parse().unwrap();
        let global: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(link_local(&[], &[]), Err("none on the interface"));
        assert_eq!(
            link_local(&[address(global, AddressFlags::empty())], &[]),
            Err("none on the interface")
        );
        assert_eq!(
            link_local(&[address(ll, AddressFlags::Tentative)], &[]),
            Err("still tentative")
        );
        assert_eq!(
            link_local(
                &[address(
                    ll,
                    AddressFlags::Tentative | AddressFlags::Dadfailed
                )],
                &[]
            ),
            Err("duplicate address detection failed")
        );
        assert_eq!(
            link_local(
                &[
                    address(global, AddressFlags::empty()),
                    address(ll, AddressFlags::Permanent)
                ],
                &[]
            ),
            Ok(ll)
        );
        // A link-local VIP is not the source.
        assert_eq!(
            link_local(&[address(ll, AddressFlags::empty())], &[IpAddr::V6(ll)]),
            Err("none on the interface")
        );
    }

    #[test]
    fn ipv6_vips_are_added_nodad_and_deprecated() {
        let mut m = AddressMessage::default();
        ipv6_vip_message(&mut m);
        assert!(m.header.flags.contains(AddressHeaderFlags::Nodad));
        assert!(
            m.attributes
                .contains(&AddressAttribute::Flags(AddressFlags::Nodad))
        );
        assert!(m.attributes.iter().any(|a| matches!(
            a,
            AddressAttribute::CacheInfo(c) if c.ifa_preferred == 0 && c.ifa_valid == u32::MAX
        )));
        assert_eq!(scope_id("fe80::1".parse().unwrap(), 3), 3);
        assert_eq!(scope_id(wire::MULTICAST_V6, 3), 3);
        assert_eq!(scope_id("2001:db8::1".parse().unwrap(), 3), 0);
    }
}
