//! `cargo xtask bench`: lbd's benchmarks. Each figure is printed as one `name: value` line, and
//! every comparison is made within one run (ratios), since small shared machines are noisy.

use std::process::ExitCode;

fn main() -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "lbd-bench: needs root (BPF_PROG_TEST_RUN needs CAP_BPF); run `sudo cargo xtask bench`"
        );
        return ExitCode::FAILURE;
    }
    match lbd_tests::bench_xdp::run() {
        Ok(figures) => {
            for (name, value) in figures {
                println!("{name}: {value:.2}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lbd-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
