//! The I/O layer on real sockets, in network namespaces: two speakers (and keepalived, when it is
//! installed) on a bridge elect a master, move the VIP with netlink, and fail over.
//!
//! Needs root (namespaces, raw sockets, netlink writes) and `ip`; without them each test says so
//! and passes without running, or fails when `CI` is set. Namespace names carry the process id, so
//! parallel runs never collide, and a guard deletes them whatever happens.

use std::fs::File;
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use lb_testkit::wait_until;
use socket2::{Domain, Protocol, Socket, Type};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vrrp::{AdvertInterval, Config, Priority, Speaker, State, Status, VrId};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

/// The workspace's one rule (`lb-testkit`): without root and `ip` a test skips, or fails under CI.
fn can_run(test: &str) -> bool {
    lb_testkit::require_or_skip(test, lb_testkit::netns_unavailable_reason())
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?}");
}

/// A bridge namespace and one namespace per node, each with `eth0` on the bridge at
/// 198.18.0.(2 + i)/24. Deleted on drop.
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
        ip(&["netns", "add", &bridge]);
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &bridge, "link", "set", "br0", "up"]);
        for i in 0..nodes {
            let ns = format!("{prefix}n{i}");
            lan.names.push(ns.clone());
            let port = format!("p{i}");
            ip(&["netns", "add", &ns]);
            ip(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &bridge,
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
        let out = Command::new("ip")
            .args(["-n", self.node(i), "-4", "addr", "show", "dev", "eth0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&format!("inet {VIP}/32"))
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
        }
    }

    /// Every VRRP advert seen so far, as (source address, priority), oldest first.
    fn adverts(&mut self) -> &[(IpAddr, u8)] {
        let mut buf = [0u8; 2048];
        loop {
            match (&self.socket).read(&mut buf) {
                Ok(n) => {
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

/// A speaker running on its own thread inside namespace `ns`.
struct Node {
    status: watch::Receiver<Status>,
    stop: CancellationToken,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Node {
    fn start(ns: &str, priority: u8) -> Self {
        let mut config = Config::new(
            VrId::new(51).unwrap(),
            Priority::new(priority).unwrap(),
            AdvertInterval::from_millis(100).unwrap(),
            "eth0",
            vec![VIP],
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
