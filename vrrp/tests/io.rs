//! Tests of the I/O layer that need no privileges: the notify program runner, the speaker's
//! configuration checks and status channel, a clean error for a missing interface, and the tracker
//! handle.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vrrp::io::{Error, Notifier};
use vrrp::{AdvertInterval, Config, ConfigError, Priority, Speaker, State, TrackedCondition, VrId};

fn config() -> Config {
    Config::new(
        VrId::new(51).unwrap(),
        Priority::new(150).unwrap(),
        AdvertInterval::from_millis(100).unwrap(),
        "lbdtest-none0",
        vec![IpAddr::V4(Ipv4Addr::new(198, 18, 0, 100))],
    )
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vrrp-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn notify_program_runs_in_order_with_the_new_state() {
    let dir = scratch_dir("notify");
    let out = dir.join("out");
    let script = dir.join("notify.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nsleep 0.05\necho \"$1 from $VRRP_PREVIOUS_STATE\" >> {}\n",
            out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let notifier = Notifier::spawn(script);
    notifier.notify(State::Initialize, State::Backup);
    notifier.notify(State::Backup, State::Master);
    notifier.notify(State::Master, State::Initialize);
    // Queued, not run inline: nothing is there yet (each run sleeps 50 ms first).
    assert!(!out.exists());
    notifier.finish().await;
    let got = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        got,
        "BACKUP from INIT\nMASTER from BACKUP\nINIT from MASTER\n"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_missing_or_failing_notify_program_is_not_fatal() {
    let missing = Notifier::spawn(PathBuf::from("/nonexistent/lbd-notify"));
    missing.notify(State::Backup, State::Master);
    let failing = Notifier::spawn(PathBuf::from("/bin/false"));
    failing.notify(State::Backup, State::Master);
    // Both keep working and finish cleanly.
    missing.notify(State::Master, State::Backup);
    tokio::time::timeout(Duration::from_secs(10), async {
        missing.finish().await;
        failing.finish().await;
    })
    .await
    .unwrap();
}

#[test]
fn speaker_checks_its_configuration() {
    let mut c = config();
    c.vips.clear();
    assert_eq!(Speaker::new(c).unwrap_err(), ConfigError::NoVips);
    let mut c = config();
    let peer = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3));
    c.unicast_peers = vec![peer, peer];
    assert!(matches!(Speaker::new(c), Err(ConfigError::Peer(_))));
    // One family per router (RFC 5798 §5.1): an IPv6 peer of an IPv4 router is refused.
    let mut c = config();
    c.unicast_peers = vec!["fe80::2".parse().unwrap()];
    assert!(matches!(
        Speaker::new(c),
        Err(ConfigError::PeerFamily { .. })
    ));
}

#[test]
fn speaker_status_starts_in_initialize_and_tracker_is_shared() {
    let mut c = config();
    c.tracked = vec![TrackedCondition {
        name: "pool".into(),
        weight: 60,
    }];
    let speaker = Speaker::new(c).unwrap();
    let status = speaker.status();
    let s = status.borrow().clone();
    assert_eq!(s.state, State::Initialize);
    assert_eq!(s.priority, 150);
    assert_eq!(s.master, None);
    assert_eq!(s.last_transition, None);
    let tracker = speaker.tracker();
    tracker.set_failed("pool", true).unwrap();
    assert_eq!(
        speaker
            .tracker()
            .effective_priority(speaker.config().priority),
        90
    );
}

#[tokio::test]
async fn run_on_a_missing_interface_fails_cleanly() {
    let speaker = Speaker::new(config()).unwrap();
    let status = speaker.status();
    let result = speaker.run(CancellationToken::new()).await;
    match result {
        Err(Error::NoInterface(name)) => assert_eq!(name, "lbdtest-none0"),
        // A sandbox without netlink access fails earlier; that is clean too.
        Err(Error::Socket { .. } | Error::Netlink(_)) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(status.borrow().state, State::Initialize);
}
