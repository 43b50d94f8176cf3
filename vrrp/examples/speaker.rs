//! A stand-alone VRRP speaker, for trying the crate on a real interface (needs CAP_NET_RAW and
//! CAP_NET_ADMIN) and for interop runs against keepalived in network namespaces.
//!
//! ```text
//! speaker IFACE VRID PRIORITY INTERVAL_MS VIP[,VIP...] [--peer IP]... [--source IP]
//!         [--no-preempt] [--preempt-delay-ms N] [--notify PROGRAM] [--track NAME:WEIGHT]...
//! ```
//! The VIPs, peers and source are all IPv4 or all IPv6 (VRRP over IPv6 to ff02::12, from the
//! interface's link-local address). Stops (resigning with a priority-0 advert if master) on
//! SIGINT or SIGTERM. Log level from `RUST_LOG`-style `VRRP_LOG` (`info` by default).

use std::net::IpAddr;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use vrrp::{AdvertInterval, Config, Priority, Speaker, TrackedCondition, VrId};

fn usage() -> ! {
    eprintln!(
        "usage: speaker IFACE VRID PRIORITY INTERVAL_MS VIP[,VIP...] [--peer IP]... \
         [--source IP] [--no-preempt] [--preempt-delay-ms N] [--notify PROGRAM] \
         [--track NAME:WEIGHT]..."
    );
    std::process::exit(2)
}

fn parse<T: std::str::FromStr>(s: Option<String>) -> T {
    s.and_then(|s| s.parse().ok()).unwrap_or_else(|| usage())
}

fn or_exit<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| {
        eprintln!("speaker: {e}");
        std::process::exit(2)
    })
}

fn config_from_args() -> Config {
    let mut args = std::env::args().skip(1);
    let iface: String = parse(args.next());
    let vrid = or_exit(VrId::new(parse(args.next())));
    let priority = or_exit(Priority::new(parse(args.next())));
    let interval = or_exit(AdvertInterval::from_millis(parse(args.next())));
    let vips: Vec<IpAddr> = parse::<String>(args.next())
        .split(',')
        .map(|v| v.parse().unwrap_or_else(|_| usage()))
        .collect();
    let mut config = Config::new(vrid, priority, interval, iface, vips);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--peer" => config.unicast_peers.push(parse(args.next())),
            "--source" => config.source_addr = Some(parse(args.next())),
            "--no-preempt" => config.preempt = false,
            "--preempt-delay-ms" => {
                config.preempt_delay = Duration::from_millis(parse(args.next()));
            }
            "--notify" => config.notify = Some(parse::<String>(args.next()).into()),
            "--track" => {
                let spec: String = parse(args.next());
                let (name, weight) = spec.split_once(':').unwrap_or_else(|| usage());
                config.tracked.push(TrackedCondition {
                    name: name.into(),
                    weight: weight.parse().unwrap_or_else(|_| usage()),
                });
            }
            _ => usage(),
        }
    }
    config
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let level = std::env::var("VRRP_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_max_level(level.parse().unwrap_or(tracing::Level::INFO))
        .init();
    let speaker = or_exit(Speaker::new(config_from_args()));
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let mut term = or_exit(signal(SignalKind::terminate()));
    let mut int = or_exit(signal(SignalKind::interrupt()));
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        token.cancel();
    });
    if let Err(e) = speaker.run(shutdown).await {
        eprintln!("speaker: {e}");
        std::process::exit(1);
    }
}
