//! Proves the namespace harness itself, without lbd: topology, test backend, clients, capture and cleanup.
//!
//! Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_NET_RAW). Without it these tests skip with a printed reason,
//! or fail when `CI` is set.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lbd_tests::client::{self, KeepAlive};
use lbd_tests::netns::{self, Netns};
use lbd_tests::topology::{HOST_IF, VIP};
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

    let v6 = topo.client().ip(&["-6", "addr", "show"])?;
    assert!(
        v6.stdout.is_empty(),
        "IPv6 must be off: {}",
        String::from_utf8_lossy(&v6.stdout)
    );

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
    // Backends hold the VIP on lo: binding it works there.
    topo.ns(Host::Backend(1))
        .enter(|| UdpSocket::bind((VIP, 0)))??;
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
