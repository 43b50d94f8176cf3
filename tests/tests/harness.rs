//! Proves the namespace harness itself, without lbd: topology, test backend, clients, capture and cleanup.
//!
//! Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_NET_RAW). Without it these tests skip with a printed reason,
//! or fail when `CI` is set.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lbd_tests::capture::{find_na_src_mac, neighbor_solicitation_frame};
use lbd_tests::client::{self, KeepAlive};
use lbd_tests::netns::{self, Netns};
use lbd_tests::topology::{HOST_IF, REMOTE_CLIENT6, VIP, VIP6};
use lbd_tests::{Capture, Host, NS_PREFIX, Topology, bin_path, netns_tests_enabled, test_tag};

fn backend_bin() -> PathBuf {
    bin_path("lbd-test-backend").expect("lbd-test-backend is built with the tests")
}

fn prefix_of(topo_tag: &str) -> String {
    format!("{NS_PREFIX}{topo_tag}-")
}

#[test]
fn bin_path_finds_workspace_binaries() {
    let found = bin_path("lbd-test-backend").unwrap();
    if std::env::var_os("LBD_TEST_BACKEND").is_none()
        && std::env::var_os("LBD_BIN_LBD_TEST_BACKEND").is_none()
    {
        assert_eq!(found, PathBuf::from(env!("CARGO_BIN_EXE_lbd-test-backend")));
    }
    let err = bin_path("lbd-no-such-binary").unwrap_err().to_string();
    assert!(
        err.contains("cargo build") && err.contains("LBD_BIN_LBD_NO_SUCH_BINARY"),
        "{err}"
    );
}

/// Direct requests from the client reach each backend; replies come from the backend's own MAC; curl works.
#[test]
fn client_reaches_backends_directly() -> Result<()> {
    if !netns_tests_enabled("client_reaches_backends_directly") {
        return Ok(());
    }
    let topo = Topology::builder(&test_tag("client_reaches_backends_directly"))
        .lbd_nodes(1)
        .backends(3)
        .build()?;
    let _backends = topo.start_backends(&backend_bin())?;
    let capture = Capture::open(topo.client(), HOST_IF)?;

    let b1 = topo.http_addr(Host::Backend(1));
    let reply = topo.client().enter(move || client::http_get(b1))??;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.backend, "b1");
    assert_eq!(reply.body, "b1\n");
    assert_eq!(
        reply.client_addr, reply.local_addr,
        "the backend sees the client's own address"
    );
    assert_eq!(reply.client_addr.ip(), Host::Client.ip());

    let b1_v4 = SocketAddrV4::new(Host::Backend(1).ip(), 80);
    let mac = capture.wait_syn_ack(b1_v4, Duration::from_secs(2))?;
    assert_eq!(
        mac,
        topo.mac(Host::Backend(1)),
        "SYN-ACK must come from b1's MAC"
    );

    let b2 = topo.udp_addr(Host::Backend(2));
    let answer = topo
        .client()
        .enter(move || client::udp_query(b2, b"hello", Duration::from_secs(2)))??;
    assert_eq!(answer.text, "b2 hello");
    assert_eq!(answer.from, b2);

    let echo = topo.client().enter(move || {
        client::http_get_path(
            SocketAddr::from((Host::Backend(3).ip(), 80)),
            "/echo-peer",
            Duration::from_secs(5),
        )
    })??;
    assert_eq!(echo.backend, "b3");
    assert_eq!(echo.body, format!("{}\n", echo.local_addr));

    // Dual-stack: the IPv6 address beside the IPv4 one, usable at once (no DAD, so never tentative).
    let v6 = topo.client().ip(&["-6", "addr", "show", "dev", HOST_IF])?;
    let v6 = String::from_utf8_lossy(&v6.stdout);
    assert!(v6.contains("inet6 2001:db8::10/64"), "{v6}");
    assert!(v6.contains("inet6 fe80::"), "a link-local address: {v6}");
    assert!(!v6.contains("tentative"), "{v6}");

    let out = topo.client().run(
        "curl",
        &["-sS", "--max-time", "5", "-i", "http://198.18.0.22/"],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("X-Backend: b2"), "{text}");
    assert!(text.ends_with("\r\n\r\nb2\n"), "{text}");
    Ok(())
}

/// The backends' direct-routing setup works: frames for the VIP sent to a backend's MAC (what lbd's XDP
/// program does) are accepted, answered from the VIP, and straight from the backend.
#[test]
fn backend_answers_vip_traffic_directly() -> Result<()> {
    if !netns_tests_enabled("backend_answers_vip_traffic_directly") {
        return Ok(());
    }
    let topo = Topology::builder(&test_tag("backend_answers_vip_traffic_directly"))
        .lbd_nodes(0)
        .backends(2)
        .build()?;
    let _backends = topo.start_backends(&backend_bin())?;
    // Play the load balancer's part statically: the VIP resolves to b2's MAC on the client.
    let b2_mac = topo.mac(Host::Backend(2)).to_string();
    topo.client().ip(&[
        "neigh",
        "replace",
        &VIP.to_string(),
        "lladdr",
        &b2_mac,
        "dev",
        HOST_IF,
        "nud",
        "permanent",
    ])?;
    let capture = Capture::open(topo.client(), HOST_IF)?;

    let vip_http = topo.vip_http();
    let reply = topo.client().enter(move || client::http_get(vip_http))??;
    assert_eq!(reply.backend, "b2");
    assert_eq!(reply.client_addr.ip(), Host::Client.ip());
    let mac = capture.wait_syn_ack(SocketAddrV4::new(VIP, 80), Duration::from_secs(2))?;
    assert_eq!(mac, topo.mac(Host::Backend(2)));

    let vip_udp = topo.vip_udp();
    let answer = topo
        .client()
        .enter(move || client::udp_query(vip_udp, b"q", Duration::from_secs(2)))??;
    assert_eq!(answer.text, "b2 q");
    assert_eq!(
        answer.from, vip_udp,
        "the UDP reply must leave from the VIP (DSR)"
    );
    Ok(())
}

/// Only the lbd node holding the VIP answers ARP for it (backends have arp_ignore); the VIP moves with
/// add_vip/remove_vip and a gratuitous ARP.
#[test]
fn vip_is_answered_only_by_its_lbd_node() -> Result<()> {
    if !netns_tests_enabled("vip_is_answered_only_by_its_lbd_node") {
        return Ok(());
    }
    let topo = Topology::builder(&test_tag("vip_is_answered_only_by_its_lbd_node"))
        .lbd_nodes(2)
        .backends(2)
        .build()?;
    let vip = VIP.to_string();
    let ping = |expect_ok: bool| -> Result<()> {
        let out = topo.client().output(
            "ping",
            &["-n", "-c", "1", "-W", "1", &vip],
            Duration::from_secs(5),
        )?;
        ensure!(
            out.status.success() == expect_ok,
            "ping {vip}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(())
    };
    let neigh_mac = || -> Result<String> {
        let out = topo.client().ip(&["neigh", "show", &vip, "dev", HOST_IF])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };

    // Nobody holds the VIP: backends must not answer ARP for it.
    ping(false)?;
    topo.add_vip(Host::Lbd(1))?;
    ping(true)?;
    let lbd1 = topo.mac(Host::Lbd(1)).to_string();
    assert!(
        neigh_mac()?.contains(&lbd1),
        "VIP should resolve to lbd1 {lbd1}: {}",
        neigh_mac()?
    );

    // Move it: the client learns lbd2's MAC from the gratuitous ARP. The client's ARP locktime goes to 0
    // (in its own namespace): the kernel ignores a new MAC for an entry updated less than locktime (1 s)
    // ago, which the test would otherwise have to sleep out.
    topo.client().run(
        "sysctl",
        &["-q", "-w", &format!("net.ipv4.neigh.{HOST_IF}.locktime=0")],
    )?;
    topo.remove_vip(Host::Lbd(1))?;
    topo.add_vip(Host::Lbd(2))?;
    let lbd2 = topo.mac(Host::Lbd(2)).to_string();
    lb_testkit::try_wait_until(
        &format!("the VIP resolving to lbd2 {lbd2}"),
        Duration::from_secs(3),
        || Ok::<_, anyhow::Error>(neigh_mac()?.contains(&lbd2)),
    )
    .with_context(|| format!("neighbour entry: {}", neigh_mac().unwrap_or_default()))?;
    ping(true)?;
    Ok(())
}

/// The backend stays up under 300 short connections, keeps connections alive, streams, resets on request,
/// and exits with status 0 on SIGTERM.
#[test]
fn backend_serves_many_connections_and_stops_on_sigterm() -> Result<()> {
    if !netns_tests_enabled("backend_serves_many_connections_and_stops_on_sigterm") {
        return Ok(());
    }
    let topo = Topology::builder(&test_tag("backend_serves_many_connections"))
        .lbd_nodes(0)
        .backends(1)
        .build()?;
    let mut backend = topo.start_backend(Host::Backend(1), &backend_bin())?;
    let addr = topo.http_addr(Host::Backend(1));

    // 300 short connections: 10 threads (they inherit the namespace) with 30 each, concurrently.
    let served = topo.client().enter(move || -> Result<usize> {
        thread::scope(|scope| {
            let workers: Vec<_> = (0..10)
                .map(|w| {
                    scope.spawn(move || -> Result<usize> {
                        for i in 0..30 {
                            let reply = client::http_get(addr)
                                .with_context(|| format!("worker {w}, short connection {i}"))?;
                            ensure!(reply.backend == "b1", "answered by {}", reply.backend);
                        }
                        Ok(30)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("worker panicked"))
                .sum()
        })
    })??;
    assert_eq!(served, 300);

    topo.client().enter(move || -> Result<()> {
        let mut conn = KeepAlive::connect(addr, Duration::from_secs(5))?;
        let first = conn.get("/")?;
        for _ in 0..49 {
            let reply = conn.get("/")?;
            ensure!(
                reply.client_addr == first.client_addr,
                "keep-alive must reuse one connection"
            );
        }
        ensure!(conn.requests() == 50);
        let err = conn.get("/reset").expect_err("/reset must not answer");
        ensure!(
            client::was_reset(&err),
            "expected a reset, got {:?}: {err:#}",
            client::classify(&err)
        );
        ensure!(conn.get("/").is_err(), "a reset connection stays dead");

        let stream = client::http_stream(addr, 200_000, 20_000, 10, Duration::from_secs(10))?;
        ensure!(stream.backend == "b1" && stream.received == 200_000);
        ensure!(
            stream.elapsed >= Duration::from_millis(90),
            "chunks must be paced: {:?}",
            stream.elapsed
        );
        Ok(())
    })??;

    assert!(
        backend.is_running(),
        "backend died: {}",
        backend.stderr_tail()
    );
    let status = backend.terminate(Duration::from_secs(3))?;
    assert!(status.success(), "backend exit status on SIGTERM: {status}");
    Ok(())
}

/// `Netns::enter` runs code inside the namespace: its sockets see that namespace's addresses only.
#[test]
fn enter_puts_sockets_in_the_namespace() -> Result<()> {
    if !netns_tests_enabled("enter_puts_sockets_in_the_namespace") {
        return Ok(());
    }
    let topo = Topology::builder(&test_tag("enter_puts_sockets_in_the_namespace"))
        .lbd_nodes(0)
        .backends(1)
        .build()?;
    let client_ip = Host::Client.ip();
    let socket = topo
        .client()
        .enter(move || UdpSocket::bind((client_ip, 0)))??;
    assert_eq!(socket.local_addr()?.ip(), client_ip);
    let elsewhere = topo
        .ns(Host::Backend(1))
        .enter(move || UdpSocket::bind((client_ip, 0)))?;
    assert!(
        elsewhere.is_err(),
        "the client's address must not exist in b1's namespace"
    );
    // Backends hold the VIP on lo: binding it works there, in both families.
    topo.ns(Host::Backend(1))
        .enter(|| UdpSocket::bind((VIP, 0)))??;
    topo.ns(Host::Backend(1))
        .enter(|| UdpSocket::bind((VIP6, 0)))??;
    let client_ip6 = Host::Client.ip6();
    assert!(
        topo.ns(Host::Backend(1))
            .enter(move || UdpSocket::bind((client_ip6, 0)))?
            .is_err(),
        "the client's IPv6 address must not exist in b1's namespace"
    );
    Ok(())
}

/// Dropping a topology removes all its namespaces and kills what runs in them; so does a failed build; sweep
/// functions remove leftovers.
#[test]
fn cleanup_leaves_no_namespaces_behind() -> Result<()> {
    if !netns_tests_enabled("cleanup_leaves_no_namespaces_behind") {
        return Ok(());
    }
    // A complete topology with a process inside.
    let tag = test_tag("cleanup_complete");
    let topo = Topology::builder(&tag).lbd_nodes(2).backends(3).build()?;
    assert_eq!(
        netns::list(&prefix_of(&tag))?.len(),
        7,
        "br + client + 2 lbd + 3 backends"
    );
    let mut sleeper = topo.ns(Host::Backend(2)).spawn({
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        cmd
    })?;
    drop(topo);
    assert_eq!(netns::list(&prefix_of(&tag))?, Vec::<String>::new());
    lb_testkit::wait_until(
        "a process in a dropped topology killed",
        Duration::from_secs(2),
        || !sleeper.is_running(),
    )?;

    // A build that fails midway cleans up what it made, and says why it failed.
    let tag = test_tag("cleanup_failed_build");
    let err = Topology::builder(&tag)
        .backends(3)
        .inject_failure_at(Host::Backend(2))
        .build()
        .unwrap_err();
    assert!(format!("{err:#}").contains("injected failure"), "{err:#}");
    assert_eq!(netns::list(&prefix_of(&tag))?, Vec::<String>::new());

    // Errors name the command that failed.
    let tag = test_tag("cleanup_errors");
    let ns = Netns::new(&tag, "dup")?;
    let err = Netns::new(&tag, "dup").unwrap_err();
    assert!(format!("{err:#}").contains("ip netns add"), "{err:#}");

    // A leaked namespace (as after a crash) is removed by the next build with its tag, or by sweep.
    std::mem::forget(ns);
    assert_eq!(netns::list(&prefix_of(&tag))?.len(), 1);
    let topo = Topology::builder(&tag).lbd_nodes(0).backends(0).build()?;
    assert_eq!(
        netns::list(&prefix_of(&tag))?.len(),
        2,
        "the leaked namespace is gone; br and client remain"
    );
    std::mem::forget(topo);
    assert_eq!(netns::sweep(&prefix_of(&tag))?.len(), 2);
    assert_eq!(netns::list(&prefix_of(&tag))?, Vec::<String>::new());

    // Namespaces of a dead test process are orphans.
    let mut dead = Command::new("true").spawn()?;
    let dead_pid = dead.id();
    dead.wait()?;
    let orphan = format!("{NS_PREFIX}0badc0-{dead_pid}-client");
    std::mem::forget(Netns::create(&orphan)?);
    // Builds in parallel tests sweep orphans too, so it may already be gone; it must be gone after this.
    netns::sweep_orphans()?;
    assert!(netns::list(&orphan)?.is_empty());
    Ok(())
}

/// Whether `host`'s IPv6 addresses on `eth0` are all usable (none tentative or failed DAD); returns the
/// `ip -6 addr` text for messages.
fn ipv6_addrs(topo: &Topology, host: Host) -> Result<String> {
    let out = topo.ns(host).ip(&["-6", "addr", "show", "dev", HOST_IF])?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        !text.contains("tentative") && !text.contains("dadfailed"),
        "{host}: addresses not usable yet: {text}"
    );
    Ok(text)
}

/// `ping -6` once from the client; whether it was answered.
fn ping6(topo: &Topology, dst: &str) -> Result<bool> {
    let out = topo.client().output(
        "ping",
        &["-6", "-n", "-c", "1", "-W", "1", dst],
        Duration::from_secs(5),
    )?;
    Ok(out.status.success())
}

/// The dual-stack topology: every host has its mirrored IPv6 address (and a link-local one) usable at once;
/// the client reaches each backend over IPv6 by HTTP and UDP and the backend sees the client's IPv6 address;
/// IPv4 peers still show as plain IPv4; from behind the router the client's IPv6 address is
/// 2001:db8:1::10 and the backends answer it through the router.
#[test]
fn client_reaches_backends_over_ipv6() -> Result<()> {
    if !netns_tests_enabled("client_reaches_backends_over_ipv6") {
        return Ok(());
    }
    let topo = Topology::builder(&test_tag("client_reaches_backends_over_ipv6"))
        .lbd_nodes(1)
        .backends(3)
        .router(true)
        .build()?;
    let _backends = topo.start_backends(&backend_bin())?;

    for host in topo.hosts() {
        let text = ipv6_addrs(&topo, host)?;
        let want = format!("inet6 {}/64", host.ip6());
        ensure!(text.contains(&want), "{host} lacks {want}: {text}");
        ensure!(
            text.contains("inet6 fe80::"),
            "{host} has no link-local address: {text}"
        );
    }
    for host in [Host::Lbd(1), Host::Router] {
        ensure!(
            ping6(&topo, &host.ip6().to_string())?,
            "{host} at {} does not answer ping",
            host.ip6()
        );
    }
    // Link-local addresses work at once too: b1's.
    let out = topo
        .ns(Host::Backend(1))
        .ip(&["-6", "-o", "addr", "show", "dev", HOST_IF, "scope", "link"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let link_local = text
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .with_context(|| format!("b1 has no link-local address: {text}"))?;
    ensure!(
        ping6(&topo, &format!("{link_local}%{HOST_IF}"))?,
        "b1's link-local address {link_local} does not answer"
    );

    let client_ip6 = IpAddr::from(Host::Client.ip6());
    for b in topo.backends() {
        let http = topo.http_addr6(b);
        assert_eq!(http.to_string(), format!("[{}]:80", b.ip6()));
        let reply = topo.client().enter(move || client::http_get(http))??;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.backend, b.role());
        assert_eq!(reply.body, format!("{b}\n"));
        assert_eq!(
            reply.client_addr.ip(),
            client_ip6,
            "{b} sees the client's IPv6 address"
        );
        assert_eq!(reply.client_addr, reply.local_addr);

        let udp = topo.udp_addr6(b);
        let answer = topo
            .client()
            .enter(move || client::udp_query(udp, b"hi6", Duration::from_secs(2)))??;
        assert_eq!(answer.text, format!("{b} hi6"));
        assert_eq!(answer.from, udp);

        // The IPv4 side is unchanged: the peer is plain IPv4, never ::ffff:198.18.0.10.
        let http4 = topo.http_addr(b);
        let reply = topo.client().enter(move || client::http_get(http4))??;
        assert_eq!(reply.client_addr.ip(), IpAddr::from(Host::Client.ip()));
        let udp4 = topo.udp_addr(b);
        let answer = topo
            .client()
            .enter(move || client::udp_query(udp4, b"hi4", Duration::from_secs(2)))??;
        assert_eq!((answer.text, answer.from), (format!("{b} hi4"), udp4));
    }

    let echo = topo.client().enter(|| {
        client::http_get_path(
            SocketAddr::from((Host::Backend(3).ip6(), 80)),
            "/echo-peer",
            Duration::from_secs(5),
        )
    })??;
    assert_eq!(echo.body, format!("{}\n", echo.local_addr));
    assert!(echo.body.starts_with("[2001:db8::10]:"), "{}", echo.body);

    // From the remote subnet behind the router: out directly (on-link), back through the router.
    let url = format!("http://[{}]/", Host::Backend(2).ip6());
    let out = topo.client().run(
        "curl",
        &[
            "-sS",
            "-g",
            "--max-time",
            "5",
            "-i",
            "--interface",
            &REMOTE_CLIENT6.to_string(),
            &url,
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("X-Backend: b2"), "{text}");
    assert!(
        text.contains(&format!("X-Client: [{REMOTE_CLIENT6}]:")),
        "b2 must see 2001:db8:1::10: {text}"
    );
    Ok(())
}

/// IPv6 direct routing on the backends: packets for [2001:db8::100] sent to backend 1's MAC (what lbd's
/// XDP program will do) are accepted and answered from the VIP, straight from b1.
#[test]
fn backend_answers_ipv6_vip_traffic_directly() -> Result<()> {
    if !netns_tests_enabled("backend_answers_ipv6_vip_traffic_directly") {
        return Ok(());
    }
    let topo = Topology::builder(&test_tag("backend_answers_ipv6_vip_traffic_directly"))
        .lbd_nodes(0)
        .backends(2)
        .build()?;
    let _backends = topo.start_backends(&backend_bin())?;
    // Play the load balancer's part statically: the IPv6 VIP resolves to b1's MAC on the client.
    let b1_mac = topo.mac(Host::Backend(1)).to_string();
    topo.client().ip(&[
        "-6",
        "neigh",
        "replace",
        &VIP6.to_string(),
        "lladdr",
        &b1_mac,
        "dev",
        HOST_IF,
        "nud",
        "permanent",
    ])?;
    let capture = Capture::open(topo.client(), HOST_IF)?;

    let vip_http = topo.vip6_http();
    assert_eq!(vip_http.to_string(), "[2001:db8::100]:80");
    let reply = topo.client().enter(move || client::http_get(vip_http))??;
    assert_eq!(reply.backend, "b1");
    assert_eq!(reply.client_addr.ip(), IpAddr::from(Host::Client.ip6()));
    let mac = capture.wait_syn_ack_from(vip_http, Duration::from_secs(2))?;
    assert_eq!(
        mac,
        topo.mac(Host::Backend(1)),
        "the SYN-ACK from the VIP comes from b1"
    );

    let vip_udp = topo.vip6_udp();
    let answer = topo
        .client()
        .enter(move || client::udp_query(vip_udp, b"q6", Duration::from_secs(2)))??;
    assert_eq!(answer.text, "b1 q6");
    assert_eq!(
        answer.from, vip_udp,
        "the UDP reply must leave from the IPv6 VIP (DSR)"
    );
    Ok(())
}

/// No backend answers neighbour solicitations for the IPv6 VIP (it is on their `lo`, and Linux answers an
/// NS only for addresses of the receiving interface), not even one sent to its own MAC; only the lbd
/// node holding the VIP does, and the VIP moves with add_vip6/remove_vip6 and an unsolicited NA.
#[test]
fn ipv6_vip_is_answered_only_by_its_lbd_node() -> Result<()> {
    if !netns_tests_enabled("ipv6_vip_is_answered_only_by_its_lbd_node") {
        return Ok(());
    }
    let topo = Topology::builder(&test_tag("ipv6_vip_is_answered_only_by_its_lbd_node"))
        .lbd_nodes(2)
        .backends(2)
        .build()?;
    let _backends = topo.start_backends(&backend_bin())?;
    let vip = VIP6.to_string();
    let neigh = || -> Result<String> {
        let out = topo
            .client()
            .ip(&["-6", "neigh", "show", &vip, "dev", HOST_IF])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };

    // Nobody holds the VIP: the client's multicast solicitations go unanswered and the entry fails.
    let capture = Capture::open(topo.client(), HOST_IF)?;
    ensure!(
        !ping6(&topo, &vip)?,
        "ping {vip} answered with no lbd node holding it"
    );
    lb_testkit::try_wait_until(
        "the IPv6 VIP's neighbour entry FAILED",
        Duration::from_secs(6),
        || Ok::<_, anyhow::Error>(neigh()?.contains("FAILED")),
    )
    .with_context(|| format!("neighbour entry: {}", neigh().unwrap_or_default()))?;
    ensure!(!neigh()?.contains("lladdr"), "VIP resolved: {}", neigh()?);
    let frames = capture.recv_frames(Duration::from_millis(200), 10_000)?;
    ensure!(
        find_na_src_mac(&frames, VIP6).is_none(),
        "someone advertised {vip}: {:?}",
        find_na_src_mac(&frames, VIP6)
    );

    // Ask each backend directly, unicast to its MAC and to the VIP, which it does hold (on lo): no answer.
    // The same solicitation for the backend's own address is answered, so the frame itself is sound.
    let client_mac = topo.mac(Host::Client);
    let client_ip6 = Host::Client.ip6();
    let solicit = |b: Host, target: Ipv6Addr| -> Result<Option<lbd_tests::Mac>> {
        let capture = Capture::open(topo.client(), HOST_IF)?;
        capture.send(&neighbor_solicitation_frame(
            client_mac,
            b.mac(),
            client_ip6,
            target,
            target,
        ))?;
        let frames = capture.recv_frames(Duration::from_millis(500), 10_000)?;
        Ok(find_na_src_mac(&frames, target))
    };
    for b in topo.backends() {
        assert_eq!(
            solicit(b, b.ip6())?,
            Some(b.mac()),
            "{b} answers NS for its own address"
        );
        assert_eq!(
            solicit(b, VIP6)?,
            None,
            "{b} must not answer NS for the VIP"
        );
    }

    // An lbd node holds it: resolved to that node.
    topo.add_vip6(Host::Lbd(1))?;
    ensure!(ping6(&topo, &vip)?, "ping {vip} with lbd1 holding it");
    let lbd1 = topo.mac(Host::Lbd(1)).to_string();
    ensure!(
        neigh()?.contains(&lbd1),
        "VIP should resolve to lbd1 {lbd1}: {}",
        neigh()?
    );

    // Move it: the unsolicited NA (override) repoints the client's entry at lbd2.
    topo.remove_vip6(Host::Lbd(1))?;
    topo.add_vip6(Host::Lbd(2))?;
    let lbd2 = topo.mac(Host::Lbd(2)).to_string();
    lb_testkit::try_wait_until(
        &format!("the IPv6 VIP resolving to lbd2 {lbd2}"),
        Duration::from_secs(3),
        || Ok::<_, anyhow::Error>(neigh()?.contains(&lbd2)),
    )
    .with_context(|| format!("neighbour entry: {}", neigh().unwrap_or_default()))?;
    ensure!(ping6(&topo, &vip)?, "ping {vip} with lbd2 holding it");

    // flush_neigh forgets both families.
    ensure!(
        ping6(&topo, &Host::Backend(1).ip6().to_string())?,
        "b1 over IPv6"
    );
    topo.flush_neigh(Host::Client)?;
    for family in ["-4", "-6"] {
        let out =
            topo.client()
                .ip(&[family, "neigh", "show", "dev", HOST_IF, "nud", "reachable"])?;
        ensure!(
            out.stdout.is_empty(),
            "{family} entries left after flush_neigh: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(())
}
