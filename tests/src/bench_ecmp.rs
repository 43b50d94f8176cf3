//! Active-active behind ECMP (`cargo xtask bench ecmp`), in namespaces with BIRD (see
//! [`crate::ecmp`]): `ecmp_node_share_min` (the smallest node's share of 300 connections),
//! `ecmp_drain_flows_broken` and `ecmp_kill_flows_broken` (of 20 slow flows each),
//! `ecmp_kill_reroute_ms` (from the kill to the router having dropped the next hop) and
//! `ecmp_conn_rate_3nodes_vs_1node` (new connections per second through three nodes against
//! one, same run). Goals: no flow broken, reroute within 400 ms with BFD.
//!
//! The limit, computed from the Maglev tables themselves: a flow that moves between two nodes
//! whose backend sets differ (a backend added, drained or down on one but not yet on the other)
//! lands on another backend with the share of slots the two tables disagree on:
//! `ecmp_moved_flow_other_backend_one_added` and `..._one_removed` (3 backends).

use std::time::Duration;

use anyhow::Result;

use crate::ecmp::{self, Bed};

/// Client threads and time of the connection-rate figures.
const RATE_CLIENTS: usize = 4;
const RATE_TIME: Duration = Duration::from_secs(5);

/// The share of slots two Maglev tables (over backend names) disagree on.
fn disagreement(a: &[&str], b: &[&str]) -> f64 {
    let table = |names: &[&str]| -> Vec<String> {
        let entries: Vec<lb_daemon::maglev::Entry<'_>> = names
            .iter()
            .map(|name| lb_daemon::maglev::Entry { name, weight: 1 })
            .collect();
        lb_daemon::maglev::build(&entries, lb_common::MAGLEV_M)
            .into_iter()
            .map(|i| names[i as usize].to_string())
            .collect()
    };
    let (ta, tb) = (table(a), table(b));
    let differ = ta.iter().zip(&tb).filter(|(x, y)| x != y).count();
    differ as f64 / ta.len().max(1) as f64
}

/// Measures and returns the figures.
pub fn run() -> Result<Vec<(String, f64)>> {
    let three = ["198.18.0.21", "198.18.0.22", "198.18.0.23"];
    let mut figures = vec![
        (
            "ecmp_moved_flow_other_backend_one_added".to_string(),
            disagreement(
                &three,
                &["198.18.0.21", "198.18.0.22", "198.18.0.23", "198.18.0.24"],
            ),
        ),
        (
            "ecmp_moved_flow_other_backend_one_removed".to_string(),
            disagreement(&three, &three[..2]),
        ),
    ];
    let rate_1 = {
        let bed = Bed::build("bench_ecmp_1", 1)?;
        ecmp::conn_rate(&bed, RATE_CLIENTS, RATE_TIME)?
    };
    let mut bed = Bed::build("bench_ecmp_3", 3)?;
    let rate_3 = ecmp::conn_rate(&bed, RATE_CLIENTS, RATE_TIME)?;
    let (shares, _) = ecmp::share(&bed, 300)?;
    let min = shares.values().copied().min().unwrap_or(0) as f64 / 300.0;
    figures.push(("ecmp_node_share_min".to_string(), min));
    let drain = ecmp::drain_and_rejoin(&bed)?;
    figures.push((
        "ecmp_drain_flows_broken".to_string(),
        drain.broken.len() as f64,
    ));
    figures.push((
        "ecmp_drain_reroute_ms".to_string(),
        drain.reroute.as_secs_f64() * 1e3,
    ));
    let kill = ecmp::kill(&mut bed)?;
    figures.push((
        "ecmp_kill_flows_broken".to_string(),
        kill.broken.len() as f64,
    ));
    figures.push((
        "ecmp_kill_reroute_ms".to_string(),
        kill.reroute.as_secs_f64() * 1e3,
    ));
    figures.push(("ecmp_conn_rate_1node".to_string(), rate_1));
    figures.push(("ecmp_conn_rate_3nodes".to_string(), rate_3));
    figures.push((
        "ecmp_conn_rate_3nodes_vs_1node".to_string(),
        rate_3 / rate_1.max(1e-9),
    ));
    Ok(figures)
}
