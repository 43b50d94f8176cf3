//! The I/O layer on real sockets, in network namespaces: two speakers (and keepalived, when it is
//! installed) on a bridge elect a master, move the VIP with netlink, and fail over; over IPv4 and
//! over IPv6 (RFC 5798 §5.1.2: link-local sources, ff02::12, unsolicited Neighbour
//! Advertisements). tshark, when installed, decodes a capture of our IPv6 adverts.
//!
//! Needs root (namespaces, raw sockets, netlink writes) and `ip`; without them each test says so
//! and passes without running, or fails when `CI` is set. Namespace names carry the process id, so
//! parallel runs never collide, and a guard deletes them whatever happens.

use std::fs::File;
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use lb_testkit::wait_until;
use socket2::{Domain, Protocol, Socket, Type};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vrrp::wire::{arp::MacAddr, ipv6, ndisc};
use vrrp::{AdvertInterval, Config, Priority, Speaker, State, Status, VrId};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// The IPv6 VIP (documentation prefix, never routed).
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 0x100);

/// The workspace's one rule (`lb-testkit`): without root and `ip` a test skips, or fails under CI.
fn can_run(test: &str) -> bool {
    lb_testkit::require_or_skip(test, lb_testkit::netns_unavailable_reason())
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?}");
}

/// The MAC of node `i`'s `eth0`, so its link-local address is known: [`link_local`].
fn mac(i: usize) -> MacAddr {
    [0x02, 0x99, 0, 0, 0, u8::try_from(2 + i).unwrap()]
}

/// The link-local address of node `i` (EUI-64 of [`mac`]): fe80::99:ff:fe00:(2 + i).
fn link_local(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        0x99,
        0xff,
        0xfe00,
        u16::try_from(2 + i).unwrap(),
    )
}

/// Runs `sysctl -qw SETTINGS` inside namespace `ns`.
fn sysctl(ns: &str, settings: &[&str]) {
    let status = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-qw"])
        .args(settings)
        .status()
        .unwrap();
    assert!(status.success(), "sysctl {settings:?} in {ns}");
}

/// A bridge namespace and one namespace per node, each with `eth0` (MAC [`mac`]) on the bridge at
/// 198.18.0.(2 + i)/24 and at its link-local address [`link_local`], usable at once (no duplicate
/// address detection in these namespaces). Deleted on drop.
struct Lan {
    names: Vec<String>,
}

impl Lan {
    fn new(tag: &str, nodes: usize) -> Self {
        let prefix = format!("vt{}{tag}", std::process::id());
        let bridge = format!("{prefix}br");
        let mut lan = Self {
            names: vec![bridge.clone()],
        };
        // No duplicate address detection, set before any link exists, so link-local addresses
        // are usable at once; nothing leaves these namespaces.
        let no_dad = [
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ];
        ip(&["netns", "add", &bridge]);
        sysctl(&bridge, &no_dad);
        // No multicast snooping: the bridge floods ff02::12 like a plain switch would.
        ip(&[
            "-n",
            &bridge,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &bridge, "link", "set", "br0", "up"]);
        for i in 0..nodes {
            let ns = format!("{prefix}n{i}");
            lan.names.push(ns.clone());
            let port = format!("p{i}");
            ip(&["netns", "add", &ns]);
            sysctl(&ns, &no_dad);
            let mac = mac(i)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            ip(&[
                "-n", &ns, "link", "add", "eth0", "address", &mac, "type", "veth", "peer", "name",
                &port, "netns", &bridge,
            ]);
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0", "up"]);
            let addr = format!("198.18.0.{}/24", 2 + i);
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        lan
    }

    fn node(&self, i: usize) -> &str {
        &self.names[i + 1]
    }

    fn has_vip(&self, i: usize) -> bool {
        self.has(i, IpAddr::V4(VIP))
    }

    /// Whether node `i` holds `vip` (as a /32 or /128).
    fn has(&self, i: usize, vip: IpAddr) -> bool {
        let out = Command::new("ip")
            .args(["-n", self.node(i), "addr", "show", "dev", "eth0"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        match vip {
            IpAddr::V4(v4) => text.contains(&format!("inet {v4}/32")),
            IpAddr::V6(v6) => text.contains(&format!("inet6 {v6}/128")),
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Moves the calling thread into network namespace `ns` (its other threads stay where they are).
fn enter(ns: &str) -> std::io::Result<()> {
    let file = File::open(format!("/var/run/netns/{ns}"))?;
    // SAFETY: setns on a namespace file we hold open; it switches this thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The adverts on the LAN as a bystander sees them, in order: an `AF_PACKET` socket in a namespace
/// of the LAN that runs no speaker (its only interfaces are `lo` and `eth0`). Frames queue in the
/// socket from the moment it opens until [`Wire::adverts`] reads them.
struct Wire {
    socket: Socket,
    seen: Vec<(IpAddr, u8)>,
    /// Every IPv6 advert, with the hop limit it came with.
    seen_v6: Vec<(Ipv6Addr, u8, u8)>,
    /// Every Neighbour Advertisement whose checksum verifies.
    neighbour_adverts: Vec<ndisc::NeighborAdvert>,
    /// Every frame, for a pcap.
    frames: Vec<Vec<u8>>,
}

impl Wire {
    fn open(ns: &str) -> Self {
        let ns = ns.to_owned();
        let socket = std::thread::spawn(move || -> std::io::Result<Socket> {
            enter(&ns)?;
            let eth_p_all = i32::from((libc::ETH_P_ALL as u16).to_be());
            let socket = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(eth_p_all)))?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })
        .join()
        .unwrap()
        .expect("AF_PACKET socket in the observer namespace");
        Self {
            socket,
            seen: Vec::new(),
            seen_v6: Vec::new(),
            neighbour_adverts: Vec::new(),
            frames: Vec::new(),
        }
    }

    /// Every VRRP advert seen so far, as (source address, priority), oldest first.
    fn adverts(&mut self) -> &[(IpAddr, u8)] {
        let mut buf = [0u8; 2048];
        loop {
            match (&self.socket).read(&mut buf) {
                Ok(n) => {
                    self.frames.push(buf[..n].to_vec());
                    if let Some(na) = ndisc::parse_na(&buf[..n]) {
                        self.neighbour_adverts.push(na);
                    }
                    if let Some((ip, src, advert)) = vrrp_v6(&buf[..n]) {
                        self.seen.push((IpAddr::V6(src), advert.priority));
                        self.seen_v6.push((src, advert.priority, ip));
                    }
                    // An IPv4 datagram, cut to its total length (frames may carry padding).
                    let datagram = (n > 18 && buf[12..14] == [0x08, 0x00])
                        .then(|| usize::from(u16::from_be_bytes([buf[16], buf[17]])))
                        .and_then(|len| buf.get(14..(14 + len).min(n)));
                    if let Some(Ok((src, advert))) = datagram.map(vrrp::validate::parse_ipv4) {
                        self.seen.push((src, advert.priority));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return &self.seen,
                Err(e) => panic!("reading the observer's capture: {e}"),
            }
        }
    }
}

/// The hop limit, source and advert of an Ethernet frame holding a VRRP advert over IPv6 whose
/// checksum verifies (hop limit not judged).
fn vrrp_v6(frame: &[u8]) -> Option<(u8, Ipv6Addr, vrrp::wire::Repr)> {
    if frame.get(12..14)? != [0x86, 0xdd] {
        return None;
    }
    let ip = ipv6::Packet::new_checked(frame.get(14..)?).ok()?;
    if ip.next_header() != vrrp::wire::IP_PROTOCOL {
        return None;
    }
    let (_, advert) = vrrp::validate::parse_ipv6(
        ip.payload(),
        ip.src_addr(),
        ip.dst_addr(),
        Some(vrrp::wire::TTL),
    )
    .ok()?;
    Some((ip.hop_limit(), ip.src_addr(), advert))
}

/// A speaker running on its own thread inside namespace `ns`.
struct Node {
    status: watch::Receiver<Status>,
    stop: CancellationToken,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Node {
    fn start(ns: &str, priority: u8) -> Self {
        Self::start_with(ns, priority, IpAddr::V4(VIP), 100)
    }

    fn start_with(ns: &str, priority: u8, vip: IpAddr, interval_ms: u64) -> Self {
        let mut config = Config::new(
            VrId::new(51).unwrap(),
            Priority::new(priority).unwrap(),
            AdvertInterval::from_millis(interval_ms).unwrap(),
            "eth0",
            vec![vip],
        );
        config.garp.repeat_delay = None;
        let speaker = Speaker::new(config).unwrap();
        let status = speaker.status();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let ns = ns.to_owned();
        let thread = std::thread::spawn(move || {
            enter(&ns).map_err(|e| e.to_string())?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(speaker.run(token)).map_err(|e| e.to_string())
        });
        Self {
            status,
            stop,
            thread: Some(thread),
        }
    }

    fn state(&self) -> State {
        self.status.borrow().state
    }

    /// Whether it reaches `state` within `within`.
    fn reached(&self, state: State, within: Duration) -> bool {
        wait_until(&format!("{state}"), within, || self.state() == state).is_ok()
    }

    fn wait_for(&self, state: State, within: Duration) {
        if let Err(e) = wait_until(&format!("{state}"), within, || self.state() == state) {
            panic!("{e}: {:?}", self.status.borrow().clone());
        }
    }

    fn stop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn two_speakers_elect_move_the_vip_and_fail_over() {
    if !can_run("two_speakers_elect_move_the_vip_and_fail_over") {
        return;
    }
    // Nodes 0 and 1 speak; node 2 only listens.
    let lan = Lan::new("a", 3);
    let (addr_a, addr_b): (IpAddr, IpAddr) =
        ("198.18.0.2".parse().unwrap(), "198.18.0.3".parse().unwrap());
    let mut wire = Wire::open(lan.node(2));
    let mut a = Node::start(lan.node(0), 150);
    let b = Node::start(lan.node(1), 100);
    // 100 ms adverts: A's Master_Down_Interval is 341 ms.
    a.wait_for(State::Master, Duration::from_secs(3));
    b.wait_for(State::Backup, Duration::from_secs(1));
    // B hears A's adverts, accepts them and stays backup; A alone holds the VIP.
    wait_until(
        "4 adverts of A accepted by B",
        Duration::from_secs(3),
        || b.status.borrow().counters.accepted >= 4,
    )
    .unwrap();
    assert_eq!(a.state(), State::Master);
    assert_eq!(b.state(), State::Backup);
    wait_until("the VIP on A only", Duration::from_secs(3), || {
        lan.has_vip(0) && !lan.has_vip(1)
    })
    .unwrap();
    let seen_by_b = b.status.borrow().clone();
    assert_eq!(seen_by_b.master, Some(addr_a));
    assert_eq!(seen_by_b.counters.total_dropped(), 0);

    // A resigns with a priority-0 advert; B takes over. The order on the wire shows it: A's
    // adverts, A's priority-0 advert, then B's adverts only. (How soon B takes over, Skew_Time
    // rather than Master_Down_Interval, is the state machine's: tests/fsm.rs checks it under a
    // virtual clock. The failover time is measured by `cargo xtask bench`, not asserted here.)
    a.stop();
    b.wait_for(State::Master, Duration::from_secs(3));
    wait_until(
        "an advert from B on the wire",
        Duration::from_secs(3),
        || wire.adverts().iter().any(|&(src, _)| src == addr_b),
    )
    .unwrap();
    let adverts = wire.adverts().to_vec();
    let resign = adverts
        .iter()
        .position(|&advert| advert == (addr_a, 0))
        .unwrap_or_else(|| panic!("no priority-0 advert from A: {adverts:?}"));
    let (before, after) = (&adverts[..resign], &adverts[resign + 1..]);
    assert_eq!(
        before.last(),
        Some(&(addr_a, 150)),
        "A, the master, advertised until it resigned: {adverts:?}"
    );
    assert!(
        !after.is_empty() && after.iter().all(|&advert| advert == (addr_b, 100)),
        "after A resigned, B alone advertised: {adverts:?}"
    );
    let b_now = b.status.borrow().clone();
    assert_eq!(
        b_now.counters.became_master,
        seen_by_b.counters.became_master + 1,
        "one takeover: {b_now:?}"
    );
    assert_eq!(b_now.master, Some(addr_b));
    wait_until("the VIP moved to B", Duration::from_secs(3), || {
        lan.has_vip(1) && !lan.has_vip(0)
    })
    .unwrap();
    assert_eq!(a.state(), State::Initialize);
}

#[test]
fn interoperates_with_keepalived() {
    let test = "interoperates_with_keepalived";
    if !can_run(test)
        || !lb_testkit::require_or_skip(
            test,
            lb_testkit::tool_unavailable_reason("keepalived", "--version"),
        )
    {
        return;
    }
    let lan = Lan::new("k", 2);
    let ours = Node::start(lan.node(0), 150);
    ours.wait_for(State::Master, Duration::from_secs(3));

    let dir = std::env::temp_dir().join(format!("vrrp-keepalived-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("keepalived.conf");
    std::fs::write(
        &conf,
        "global_defs {\n  vrrp_version 3\n}\nvrrp_instance VI_1 {\n  state BACKUP\n  \
         interface eth0\n  virtual_router_id 51\n  priority 200\n  advert_int 0.1\n  \
         virtual_ipaddress {\n    198.18.0.100/32\n  }\n}\n",
    )
    .unwrap();
    let mut keepalived = Command::new("ip")
        .args([
            "netns",
            "exec",
            lan.node(1),
            "keepalived",
            "-n",
            "-l",
            "-D",
            "-f",
        ])
        .arg(&conf)
        .arg("-p")
        .arg(dir.join("k.pid"))
        .arg("-r")
        .arg(dir.join("v.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // keepalived (200) preempts: it discards our lower adverts and takes over; we step down on
    // its first advert.
    let stepped_down = ours.reached(State::Backup, Duration::from_secs(5));
    let status = ours.status.borrow().clone();
    // Stop keepalived (SIGTERM: it sends a priority-0 advert) and take the VIP back.
    let _ = Command::new("kill")
        .arg(keepalived.id().to_string())
        .status();
    let _ = keepalived.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(stepped_down, "did not step down for keepalived: {status:?}");
    assert_eq!(status.master, Some("198.18.0.3".parse().unwrap()));
    assert_eq!(status.counters.total_dropped(), 0, "{status:?}");
    ours.wait_for(State::Master, Duration::from_secs(3));
    wait_until("the VIP back on our node", Duration::from_secs(3), || {
        lan.has_vip(0)
    })
    .unwrap();
}

/// keepalived running in namespace `ns` with configuration `conf`, its log kept in a scratch
/// directory; stopped (SIGTERM: a master sends its priority-0 advert) and cleaned up on drop.
struct Keepalived {
    child: Option<Child>,
    dir: PathBuf,
}

impl Keepalived {
    fn start(ns: &str, tag: &str, conf: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("vrrp-keepalived-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keepalived.conf");
        std::fs::write(&path, conf).unwrap();
        let log = File::create(dir.join("log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "keepalived", "-n", "-l", "-D", "-f"])
            .arg(&path)
            .arg("-p")
            .arg(dir.join("k.pid"))
            .arg("-r")
            .arg(dir.join("v.pid"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            dir,
        }
    }

    /// What keepalived logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A keepalived VRRPv3 instance over IPv6: VRID 51, 100 ms adverts, VIP [`VIP6`] (RFC 5798 allows
/// a VIP that is not link-local; keepalived then logs that the first one "should be").
fn keepalived_v6_conf(priority: u8) -> String {
    format!(
        "global_defs {{\n  vrrp_version 3\n}}\nvrrp_instance VI_6 {{\n  state BACKUP\n  \
         interface eth0\n  virtual_router_id 51\n  priority {priority}\n  advert_int 0.1\n  \
         virtual_ipaddress {{\n    {VIP6}/128\n  }}\n}}\n"
    )
}

fn can_run_with_keepalived(test: &str) -> bool {
    can_run(test)
        && lb_testkit::require_or_skip(
            test,
            lb_testkit::tool_unavailable_reason("keepalived", "--version"),
        )
}

/// The Neighbour Advertisements on the wire for [`VIP6`] from node `i`: each must be unsolicited,
/// with Override, from the VIP to ff02::1, hop limit 255, with node `i`'s MAC.
fn neighbour_adverts_from(wire: &mut Wire, i: usize) -> usize {
    wire.adverts();
    let from_i: Vec<_> = wire
        .neighbour_adverts
        .iter()
        .filter(|na| na.target == VIP6 && na.mac == Some(mac(i)))
        .collect();
    for na in &from_i {
        assert_eq!(na.src, VIP6, "{na:?}");
        assert_eq!(na.dst, ndisc::ALL_NODES, "{na:?}");
        assert_eq!(na.hop_limit, 255, "{na:?}");
        assert_eq!(na.flags, ndisc::FLAG_OVERRIDE, "{na:?}");
    }
    from_i.len()
}

#[test]
fn two_speakers_over_ipv6_elect_move_the_vip_and_fail_over() {
    if !can_run("two_speakers_over_ipv6_elect_move_the_vip_and_fail_over") {
        return;
    }
    let lan = Lan::new("s", 3);
    let vip = IpAddr::V6(VIP6);
    let (addr_a, addr_b) = (link_local(0), link_local(1));
    let mut wire = Wire::open(lan.node(2));
    let mut a = Node::start_with(lan.node(0), 150, vip, 100);
    let b = Node::start_with(lan.node(1), 100, vip, 100);
    a.wait_for(State::Master, Duration::from_secs(3));
    b.wait_for(State::Backup, Duration::from_secs(1));
    wait_until(
        "4 adverts of A accepted by B",
        Duration::from_secs(3),
        || b.status.borrow().counters.accepted >= 4,
    )
    .unwrap();
    wait_until("the IPv6 VIP on A only", Duration::from_secs(3), || {
        lan.has(0, vip) && !lan.has(1, vip)
    })
    .unwrap();
    let seen_by_b = b.status.borrow().clone();
    // §5.1.2.1: the source, and so the master's identity, is A's link-local address.
    assert_eq!(seen_by_b.master, Some(IpAddr::V6(addr_a)));
    assert_eq!(a.status.borrow().address, Some(IpAddr::V6(addr_a)));
    assert_eq!(seen_by_b.counters.total_dropped(), 0, "{seen_by_b:?}");
    // §6.4.1 / keepalived: GarpConfig::count (5) Neighbour Advertisements on becoming master.
    wait_until("A's 5 neighbour adverts", Duration::from_secs(2), || {
        neighbour_adverts_from(&mut wire, 0) >= 5
    })
    .unwrap();

    a.stop();
    b.wait_for(State::Master, Duration::from_secs(3));
    wait_until(
        "an advert from B on the wire",
        Duration::from_secs(3),
        || {
            wire.adverts()
                .iter()
                .any(|&(src, _)| src == IpAddr::V6(addr_b))
        },
    )
    .unwrap();
    let adverts = wire.seen_v6.clone();
    assert!(
        adverts.iter().all(|&(_, _, hop_limit)| hop_limit == 255),
        "§5.1.2.3: hop limit 255: {adverts:?}"
    );
    let resign = adverts
        .iter()
        .position(|&(src, priority, _)| (src, priority) == (addr_a, 0))
        .unwrap_or_else(|| panic!("no priority-0 advert from A: {adverts:?}"));
    assert!(
        adverts[resign + 1..]
            .iter()
            .all(|&(src, priority, _)| (src, priority) == (addr_b, 100)),
        "after A resigned, B alone advertised: {adverts:?}"
    );
    wait_until("the IPv6 VIP moved to B", Duration::from_secs(3), || {
        lan.has(1, vip) && !lan.has(0, vip)
    })
    .unwrap();
    wait_until("B's neighbour adverts", Duration::from_secs(2), || {
        neighbour_adverts_from(&mut wire, 1) >= 5
    })
    .unwrap();
    assert_eq!(b.status.borrow().counters.total_dropped(), 0);
}

#[test]
fn keepalived_master_over_ipv6_with_our_backup() {
    let test = "keepalived_master_over_ipv6_with_our_backup";
    if !can_run_with_keepalived(test) {
        return;
    }
    let lan = Lan::new("m", 3);
    let vip = IpAddr::V6(VIP6);
    let mut wire = Wire::open(lan.node(2));
    let mut keepalived = Keepalived::start(lan.node(1), "m6", &keepalived_v6_conf(200));
    wait_until("keepalived holds the VIP", Duration::from_secs(10), || {
        lan.has(1, vip)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", keepalived.log()));
    let ours = Node::start_with(lan.node(0), 150, vip, 100);
    ours.wait_for(State::Backup, Duration::from_secs(3));
    wait_until(
        "10 keepalived adverts accepted",
        Duration::from_secs(3),
        || ours.status.borrow().counters.accepted >= 10,
    )
    .unwrap();
    let status = ours.status.borrow().clone();
    assert_eq!(status.state, State::Backup, "{status:?}");
    assert_eq!(status.master, Some(IpAddr::V6(link_local(1))), "{status:?}");
    assert_eq!(status.counters.total_dropped(), 0, "{status:?}");
    assert_eq!(status.counters.became_master, 0, "{status:?}");
    assert!(!lan.has(0, vip));

    // keepalived resigns (SIGTERM: priority 0); we take over within Skew_Time.
    keepalived.stop();
    ours.wait_for(State::Master, Duration::from_secs(3));
    wait_until("the VIP on our node", Duration::from_secs(3), || {
        lan.has(0, vip) && !lan.has(1, vip)
    })
    .unwrap();
    wait_until("our neighbour adverts", Duration::from_secs(2), || {
        neighbour_adverts_from(&mut wire, 0) >= 5
    })
    .unwrap();
}

#[test]
fn our_master_over_ipv6_keeps_keepalived_backup_until_it_stops() {
    let test = "our_master_over_ipv6_keeps_keepalived_backup_until_it_stops";
    if !can_run_with_keepalived(test) {
        return;
    }
    let lan = Lan::new("b", 3);
    let vip = IpAddr::V6(VIP6);
    let mut wire = Wire::open(lan.node(2));
    let mut ours = Node::start_with(lan.node(0), 200, vip, 100);
    ours.wait_for(State::Master, Duration::from_secs(3));
    let keepalived = Keepalived::start(lan.node(1), "b6", &keepalived_v6_conf(100));
    wait_until("keepalived in backup", Duration::from_secs(10), || {
        keepalived.log().contains("Entering BACKUP STATE")
    })
    .unwrap_or_else(|e| panic!("{e}: {}", keepalived.log()));
    // keepalived's Master_Down_Interval is ~0.7 s: 2 s of our adverts keep it backup.
    std::thread::sleep(Duration::from_secs(2));
    let log = keepalived.log();
    assert!(
        !log.contains("Entering MASTER STATE"),
        "keepalived took over:\n{log}"
    );
    for complaint in ["Invalid", "checksum", "expected", "not present"] {
        assert!(
            !log.contains(complaint),
            "keepalived complained ({complaint}):\n{log}"
        );
    }
    assert!(!lan.has(1, vip), "keepalived holds the VIP:\n{log}");
    assert!(lan.has(0, vip));
    let from_keepalived = wire
        .adverts()
        .iter()
        .filter(|&&(src, _)| src == IpAddr::V6(link_local(1)))
        .count();
    assert_eq!(from_keepalived, 0, "keepalived advertised as backup");
    assert_eq!(ours.state(), State::Master);

    // We resign; keepalived takes over and advertises from its link-local address.
    ours.stop();
    wait_until("keepalived takes the VIP", Duration::from_secs(3), || {
        lan.has(1, vip) && !lan.has(0, vip)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", keepalived.log()));
    wait_until("keepalived's adverts", Duration::from_secs(3), || {
        wire.adverts()
            .iter()
            .any(|&(src, priority)| (src, priority) == (IpAddr::V6(link_local(1)), 100))
    })
    .unwrap();
    assert!(keepalived.log().contains("Entering MASTER STATE"));
}

/// Writes `frames` as a classic pcap (Ethernet, microsecond timestamps all zero).
fn write_pcap(path: &std::path::Path, frames: &[Vec<u8>]) {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&65_535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for frame in frames {
        let len = u32::try_from(frame.len()).unwrap();
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(frame);
    }
    std::fs::write(path, out).unwrap();
}

/// `tshark -r PCAP -Y FILTER -T fields -e FIELD...`, one line per packet.
fn tshark_fields(pcap: &std::path::Path, filter: &str, fields: &[&str]) -> Vec<String> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(pcap).args(["-Y", filter, "-T", "fields"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.stderr(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "tshark {filter}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn tshark_decodes_our_ipv6_adverts_and_neighbour_adverts() {
    let test = "tshark_decodes_our_ipv6_adverts_and_neighbour_adverts";
    if !can_run(test)
        || !lb_testkit::require_or_skip(
            test,
            lb_testkit::tool_unavailable_reason("tshark", "--version"),
        )
    {
        return;
    }
    let lan = Lan::new("t", 2);
    let mut wire = Wire::open(lan.node(1));
    let mut ours = Node::start_with(lan.node(0), 150, IpAddr::V6(VIP6), 100);
    ours.wait_for(State::Master, Duration::from_secs(3));
    wait_until("5 of our adverts", Duration::from_secs(3), || {
        wire.adverts().len() >= 5
    })
    .unwrap();
    ours.stop();
    wire.adverts();
    let pcap = std::env::temp_dir().join(format!("vrrp-ours-ipv6-{}.pcap", std::process::id()));
    write_pcap(&pcap, &wire.frames);
    // tshark checks the VRRP checksum by default (its only VRRP preference is
    // vrrp.v3_checksum_as_in_v2, off): status 1 is "Good".
    let adverts = tshark_fields(
        &pcap,
        "vrrp",
        &[
            "vrrp.version",
            "vrrp.checksum.status",
            "ipv6.hlim",
            "ipv6.src",
            "ipv6.dst",
        ],
    );
    let nas = tshark_fields(
        &pcap,
        "icmpv6.type == 136",
        &[
            "icmpv6.checksum.status",
            "icmpv6.nd.na.flag.r",
            "icmpv6.nd.na.flag.s",
            "icmpv6.nd.na.flag.o",
            "icmpv6.nd.na.target_address",
            "ipv6.hlim",
        ],
    );
    let _ = std::fs::remove_file(&pcap);
    assert!(adverts.len() >= 6, "{adverts:?}");
    let expected_advert = format!("3\t1\t255\t{}\tff02::12", link_local(0));
    for line in &adverts {
        assert_eq!(line, &expected_advert, "{adverts:?}");
    }
    assert!(nas.len() >= 5, "{nas:?}");
    for line in &nas {
        assert_eq!(line, &format!("1\t0\t0\t1\t{VIP6}\t255"), "{nas:?}");
    }
}
