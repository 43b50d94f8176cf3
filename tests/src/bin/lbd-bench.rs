//! `cargo xtask bench`: lbd's benchmarks. Each figure is printed as one `name: value` line, and
//! every comparison is made within one run (ratios), since small shared machines are noisy.

use std::process::ExitCode;

/// A benchmark: its figures as (name, value).
type Bench = fn() -> anyhow::Result<Vec<(String, f64)>>;

fn main() -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "lbd-bench: needs root (BPF_PROG_TEST_RUN needs CAP_BPF); run `sudo cargo xtask bench`"
        );
        return ExitCode::FAILURE;
    }
    let only: Vec<String> = std::env::args().skip(1).collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let parts: [(&str, Bench); 7] = [
        ("xdp", lbd_tests::bench_xdp::run),
        ("failover", lbd_tests::bench_failover::run),
        ("net", lbd_tests::bench_net::run),
        ("core", lbd_tests::bench_core::run),
        ("restart", lbd_tests::bench_restart::run),
        ("scale", lbd_tests::bench_scale::run),
        ("ecmp", lbd_tests::bench_ecmp::run),
    ];
    let mut failed = false;
    for (name, run) in parts {
        if !wanted(name) {
            continue;
        }
        match run() {
            Ok(figures) => {
                for (name, value) in figures {
                    println!("{name}: {value:.2}");
                }
            }
            Err(e) => {
                eprintln!("lbd-bench: {name}: {e:#}");
                failed = true;
            }
        }
    }
    let _ = lbd_tests::netns::sweep_orphans();
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
