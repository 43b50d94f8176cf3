//! A short soak in CI (`cargo xtask soak --minutes N` runs longer ones): lbd on generic XDP
//! under mixed load while it is reloaded, reconfigured with `lbctl` and a backend's health
//! flaps; no connection fails that should not, memory and descriptors stay bounded, and the
//! connection table holds only live flows (see `lbd_tests::soak`).

use std::time::Duration;

use anyhow::{Result, ensure};
use lbd_tests::{
    lbd::Mode,
    netns_tests_enabled,
    soak::{self, SoakOptions},
};

#[test]
fn a_short_soak_under_mixed_load_and_changes() -> Result<()> {
    let name = "soak_short";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    let report = soak::run(
        name,
        &SoakOptions::new(Duration::from_secs(40), Mode::XdpGeneric),
    )?;
    eprint!("{}", report.report());
    let failed = report.failed_checks();
    ensure!(failed.is_empty(), "the soak missed: {failed:#?}");
    Ok(())
}
