//! The daemon core under stress, in network namespaces (see `lbd_tests::stress`): a VRRP pair at
//! 100 ms adverts whose master, for 25 s, reloads its largest config (32 services × 16
//! backends) every 200 ms, holds and scans a million flows, waits on backends that never answer
//! ARP (config and `lbctl backend add`), and answers `lbctl status` in a loop. The backup must
//! never take over, and the master's adverts on the wire must never be more than 150 ms apart.

use lbd_tests::{
    netns_tests_enabled,
    stress::{self, StressOptions},
};

#[test]
fn master_keeps_advertising_under_reloads_scans_and_unresolved_backends() {
    if !netns_tests_enabled("master_keeps_advertising_under_reloads_scans_and_unresolved_backends")
    {
        return;
    }
    let opts = StressOptions::default();
    let figures = stress::run("core_stress", &opts).expect("setting up the core stress");
    for (name, value) in figures.lines() {
        eprintln!("core_stress: {name}: {value:.2}");
    }
    let failed = figures.failed_checks(opts.flows);
    assert!(
        failed.is_empty(),
        "the core under stress missed {} check(s):\n- {}\nfigures:\n{}",
        failed.len(),
        failed.join("\n- "),
        figures.report()
    );
}
