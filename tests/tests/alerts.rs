//! The shipped Prometheus alert rules (`packaging/prometheus/lbd-alerts.yml`): promtool accepts
//! them, and their unit tests (`lbd-alerts.test.yml`) pass: each alert fires on the series
//! that should fire it, with its summary, description and runbook line, and not otherwise.

use std::process::Command;

use anyhow::{Context, Result, ensure};

fn promtool(args: &[&str]) -> Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .context("running promtool (cargo xtask setup installs the prometheus package)")?;
    ensure!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() -> Result<()> {
    promtool(&["check", "rules", "lbd-alerts.yml"])?;
    promtool(&["test", "rules", "lbd-alerts.test.yml"])
}
