//! A restart or a crash of lbd with a pinned XDP data path (`daemon.pin_dir`): under one open
//! keep-alive flow and a loop of new connections through the VIP, `kill -9` and a start a second
//! later, then SIGTERM and a start, fail no connection and keep the flow on its backend; a change
//! of the maps' layout builds fresh maps; `lbd --detach` leaves nothing behind.

use anyhow::{Context, Result, ensure};
use lbd_tests::{
    Host, bin_path, client,
    lbd::{LbdNode, Mode, SingleNode},
    netns_tests_enabled,
    restart::{DOWN, PinDir, check, config, under_load, xdp_attached, xdp_prog_id},
    test_tag,
};

#[test]
fn a_crash_or_restart_loses_no_flow_and_refuses_no_connection() -> Result<()> {
    let name = "a_crash_or_restart_loses_no_flow_and_refuses_no_connection";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    let SingleNode {
        topo,
        backends: _backends,
        peer: _peer,
    } = SingleNode::build(name, Mode::XdpNative)?;
    let bpffs = PinDir::new(&test_tag("restart"))?;
    let pins = bpffs.pins();
    let node = Host::Lbd(1);
    let mut lbd = LbdNode::start(&topo, node, &config(&topo, &pins, 65_536))?;
    let status = lbd.status()?;
    ensure!(
        status.datapath_reason.contains("pinned in") && status.datapath_reason.contains("(new)"),
        "first start: {}",
        status.datapath_reason
    );

    // kill -9, a second with no lbd, then a start: the pinned program forwarded meanwhile.
    let seen = under_load(&topo, || lbd.crash_and_restart(&topo, node, DOWN))?;
    check("kill -9 and a start 1 s later", &seen)?;
    let status = lbd.status()?;
    ensure!(
        status.datapath_reason.contains("adopted"),
        "after the crash: {}",
        status.datapath_reason
    );

    // SIGTERM and a start, as systemctl restart does (and an upgrade: the new process's program
    // replaces the running one in the same link).
    let before = xdp_prog_id(&topo, node)?;
    let seen = under_load(&topo, || lbd.restart(&topo, node))?;
    check("SIGTERM and a start", &seen)?;
    let after = xdp_prog_id(&topo, node)?;
    ensure!(
        before.is_some() && after.is_some() && before != after,
        "the new lbd's program did not replace the old one: {before:?} then {after:?}"
    );

    // A new map layout (a bigger connection table): fresh maps, logged, balancing again.
    std::fs::write(lbd.config_path(), config(&topo, &pins, 131_072))
        .context("writing the config")?;
    lbd.restart(&topo, node)?;
    let status = lbd.status()?;
    ensure!(
        status.datapath_reason.contains("new map layout"),
        "after the layout change: {}",
        status.datapath_reason
    );
    let maps: Vec<_> = std::fs::read_dir(&pins)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("maps-"))
        .collect();
    ensure!(maps.len() == 1, "maps of the old layout left: {maps:?}");
    let r = topo
        .client()
        .enter(|| client::http_get(topo.vip_http()))??;
    ensure!(r.status == 200, "a connection after the layout change");

    // A plain stop leaves the data path; `lbd --detach` removes it.
    // The node's directory goes with it: detach with a copy of its config.
    let config_path = std::env::temp_dir().join(format!("{}-detach.toml", test_tag("restart")));
    std::fs::copy(lbd.config_path(), &config_path).context("copying the config")?;
    lbd.stop()?;
    ensure!(
        xdp_attached(&topo, node)?,
        "a plain stop detached the program"
    );
    let r = topo
        .client()
        .enter(|| client::http_get(topo.vip_http()))??;
    ensure!(r.status == 200, "a connection with lbd stopped");
    let out = topo.ns(node).run(
        &bin_path("lbd")?.display().to_string(),
        &["--detach", "--config", &config_path.display().to_string()],
    )?;
    ensure!(
        out.status.success(),
        "lbd --detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !xdp_attached(&topo, node)?,
        "lbd --detach left a program on eth0"
    );
    ensure!(!pins.exists(), "lbd --detach left {}", pins.display());
    let _ = std::fs::remove_file(&config_path);
    Ok(())
}
