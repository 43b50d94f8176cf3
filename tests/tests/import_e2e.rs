//! From keepalived to lbd in one command, end to end: a keepalived.conf of the kind lbd replaces
//! (a VRRPv3 instance holding the VIP, a direct-routing virtual server whose real servers have
//! a TCP_CHECK) goes through `lbctl import keepalived`; lbd runs the result in a namespace,
//! takes the VIP as VRRP master and balances over every backend.

use std::{collections::BTreeSet, process::Command, time::Duration};

use anyhow::{Context as _, Result, ensure};
use lbd_tests::{
    Host, VIP, bin_path, client,
    lbd::{LbdNode, Mode, SingleNode},
    netns_tests_enabled,
};

#[test]
fn an_imported_keepalived_config_balances() -> Result<()> {
    let name = "import_keepalived";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    let SingleNode {
        topo,
        backends: _backends,
        peer: _peer,
    } = SingleNode::build(name, Mode::XdpGeneric)?;
    let node = Host::Lbd(1);
    let dir = LbdNode::dir(&topo, node);
    std::fs::create_dir_all(&dir)?;
    let reals: String = topo
        .backends()
        .into_iter()
        .map(|b| {
            format!(
                "    real_server {} 80 {{\n        weight 1\n        TCP_CHECK {{\n            connect_timeout 1\n        }}\n    }}\n",
                topo.ip(b)
            )
        })
        .collect();
    let keepalived = format!(
        "! keepalived.conf as an LVS-DR site has it\n\
         global_defs {{\n    router_id LB1\n    vrrp_version 3\n}}\n\
         vrrp_instance VI_1 {{\n    state MASTER\n    interface eth0\n    virtual_router_id 51\n    \
         priority 150\n    advert_int 0.1\n    virtual_ipaddress {{\n        {VIP}/32 dev eth0\n    }}\n}}\n\
         virtual_server {VIP} 80 {{\n    delay_loop 1\n    lb_algo rr\n    lb_kind DR\n    protocol TCP\n\n{reals}}}\n"
    );
    let source = dir.join("keepalived.conf");
    std::fs::write(&source, keepalived)?;
    let converted = dir.join("lbd-imported.toml");
    let out = Command::new(bin_path("lbctl")?)
        .args(["import", "keepalived"])
        .arg(&source)
        .arg("-o")
        .arg(&converted)
        .output()
        .context("running lbctl import")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "lbctl import: {stderr}");
    // router_id has no lbd equivalent: said, with its line.
    ensure!(
        stderr.contains("keepalived.conf:3: router_id LB1 not converted"),
        "warnings: {stderr}"
    );
    let check = Command::new(bin_path("lbd")?)
        .arg("--check-config")
        .arg(&converted)
        .output()?;
    ensure!(
        check.status.success(),
        "lbd --check-config: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    // The harness's own settings (control socket and state in the test's directory, generic
    // XDP on the veth), and nothing else, added to the imported config.
    let imported = std::fs::read_to_string(&converted)?;
    ensure!(imported.contains("[daemon]\n"), "{imported}");
    let config = imported.replacen(
        "[daemon]\n",
        &format!(
            "[daemon]\ndatapath = \"xdp-generic\"\ncontrol_socket = \"{}\"\nstate_dir = \"{}\"\n",
            LbdNode::socket_path(&topo, node).display(),
            dir.display()
        ),
        1,
    );
    let lbd = LbdNode::start(&topo, node, &config)?;
    let status = lbd.wait_status(Duration::from_secs(10), "VRRP master", |s| {
        s.vrrp
            .as_ref()
            .is_some_and(|v| v.state.as_str() == "MASTER")
    })?;
    let web = status.services.first().context("a service")?;
    ensure!(
        web.vip == format!("{VIP}:80") && web.backends.iter().all(|b| b.health.is_some()),
        "the imported service: {web:?}"
    );

    let vip = topo.vip_http();
    let answered = topo.client().enter(move || -> Result<BTreeSet<String>> {
        let mut seen = BTreeSet::new();
        for i in 0..60 {
            seen.insert(
                client::http_get(vip)
                    .with_context(|| format!("connection {i}"))?
                    .backend,
            );
        }
        Ok(seen)
    })??;
    ensure!(
        answered.len() == 3,
        "60 connections reached only {answered:?}"
    );
    lbd.stop()
}
