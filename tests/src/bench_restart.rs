//! `cargo xtask bench restart`: what clients see while lbd restarts, per data path. Under one
//! kept-alive flow and a new connection every 20 ms through the VIP (the `restart_e2e`
//! scenario): `kill -9` and a start 1 s later, SIGTERM and a start (`systemctl restart`), and an
//! upgrade (SIGTERM and a start of the installed binary: the program is loaded anew and replaces
//! the running one in the pinned link, as a new build's would). XDP runs with `daemon.pin_dir`;
//! the userspace proxy runs as under systemd with `FileDescriptorStoreMax=` (a stand-in store:
//! its listeners outlive the process), and is also measured with `lbd --replace` (a hand-over of
//! the listeners, the open connections finishing on the old process) and with neither (a plain
//! restart, what a restart costs without systemd).

use std::time::Instant;

use anyhow::Result;

use crate::{
    Host,
    lbd::{LbdNode, Mode, SingleNode},
    restart::{DOWN, PinDir, Seen, config_for, under_load},
    test_tag,
};

/// The figures of one data path, prefixed `restart_` (XDP) or `restart_userspace_`.
fn path(mode: Mode, prefix: &str) -> Result<Vec<(String, f64)>> {
    let SingleNode {
        topo,
        backends: _backends,
        peer: _peer,
    } = SingleNode::build(&format!("bench_restart_{prefix}"), mode)?;
    let bpffs = PinDir::new(&test_tag("bench_restart"))?;
    let pins = (mode != Mode::Userspace).then(|| bpffs.pins());
    let node = Host::Lbd(1);
    let config = config_for(&topo, mode, pins.as_deref(), 65_536);
    let mut lbd = if mode == Mode::Userspace {
        LbdNode::start_with_fdstore(&topo, node, &config)?
    } else {
        LbdNode::start(&topo, node, &config)?
    };
    let mut out = Vec::new();
    let seen = under_load(&topo, || lbd.crash_and_restart(&topo, node, DOWN))?;
    push(&mut out, prefix, "kill", &seen);
    let seen = under_load(&topo, || lbd.restart(&topo, node))?;
    push(&mut out, prefix, "term", &seen);
    let mut took = None;
    let seen = under_load(&topo, || {
        let start = Instant::now();
        let r = lbd.restart(&topo, node);
        took = Some(start.elapsed());
        r
    })?;
    push(&mut out, prefix, "upgrade", &seen);
    if let Some(t) = took {
        // From SIGTERM to the new lbd answering with its tables live.
        out.push((format!("{prefix}adopt_ms"), t.as_secs_f64() * 1e3));
    }
    if mode == Mode::Userspace {
        // `lbd --replace`: the listeners handed over, the open flow finishing on the old lbd.
        let mut old = None;
        let seen = under_load(&topo, || {
            old = Some(lbd.replace(&topo, node)?);
            Ok(())
        })?;
        push(&mut out, prefix, "replace", &seen);
        lbd.stop()?;
        drop(old);
        // Neither the store nor a hand-over: the listeners close with the process.
        let mut plain = LbdNode::start(&topo, node, &config)?;
        let seen = under_load(&topo, || plain.restart(&topo, node))?;
        push(&mut out, prefix, "plain_term", &seen);
        plain.stop()?;
        return Ok(out);
    }
    lbd.stop()?;
    if let Some(p) = &pins {
        crate::restart::detach(&topo, node, p)?;
    }
    Ok(out)
}

/// The figures of one event: failed and total new connections, and whether the flow held.
fn push(out: &mut Vec<(String, f64)>, prefix: &str, event: &str, seen: &Seen) {
    out.push((
        format!("{prefix}{event}_conn_failed"),
        seen.failed.len() as f64,
    ));
    out.push((
        format!("{prefix}{event}_conn_total"),
        seen.connections as f64,
    ));
    out.push((
        format!("{prefix}{event}_flow_kept"),
        f64::from(u8::from(seen.flow_error.is_none())),
    ));
}

/// Runs the XDP and the userspace groups, then the planned VRRP handovers.
pub fn run() -> Result<Vec<(String, f64)>> {
    let mut out = path(Mode::XdpNative, "restart_")?;
    out.extend(path(Mode::Userspace, "restart_userspace_")?);
    out.extend(crate::bench_failover::planned_handover()?);
    Ok(out)
}
