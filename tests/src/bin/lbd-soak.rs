//! `cargo xtask soak [--minutes N] [--mode xdp|xdp-generic|userspace]`: lbd under mixed load
//! and changes for N minutes (default 10) in network namespaces; prints the figures, one
//! `name: value` a line, then what missed, and exits 1 if anything did (see `lbd_tests::soak`).

use std::{process::ExitCode, time::Duration};

use lbd_tests::{
    lbd::Mode,
    soak::{self, SoakOptions},
};

const USAGE: &str = "usage: lbd-soak [--minutes N] [--mode xdp|xdp-generic|userspace]";

fn parse(args: &[String]) -> Result<(f64, Mode), String> {
    let (mut minutes, mut mode) = (10.0, Mode::XdpGeneric);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value; {USAGE}"));
        match a.as_str() {
            "--minutes" => {
                let v = value()?;
                minutes = v
                    .parse::<f64>()
                    .ok()
                    .filter(|m| *m > 0.0 && *m <= 24.0 * 60.0)
                    .ok_or(format!(
                        "--minutes {v:?}: a number of minutes from 0 to 1440"
                    ))?;
            }
            "--mode" => {
                mode = match value()?.as_str() {
                    "xdp" => Mode::XdpNative,
                    "xdp-generic" => Mode::XdpGeneric,
                    "userspace" => Mode::Userspace,
                    other => {
                        return Err(format!(
                            "--mode {other:?}: allowed are xdp, xdp-generic, userspace"
                        ));
                    }
                };
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }
    Ok((minutes, mode))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (minutes, mode) = match parse(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("lbd-soak: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("lbd-soak: needs root (network namespaces, XDP); run `sudo cargo xtask soak`");
        return ExitCode::FAILURE;
    }
    let opts = SoakOptions::new(Duration::from_secs_f64(minutes * 60.0), mode);
    eprintln!(
        "lbd-soak: {minutes} minutes on {}: short and long TCP, UDP, SIGHUP every {:?}, lbctl every {:?}, b3's health flipping every {:?}",
        mode.datapath(),
        opts.reload_every,
        opts.admin_every,
        opts.flap_every
    );
    match soak::run("soak", &opts) {
        Ok(report) => {
            print!("{}", report.report());
            let failed = report.failed_checks();
            for f in &failed {
                eprintln!("lbd-soak: missed: {f}");
            }
            if failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("lbd-soak: {e:#}");
            ExitCode::FAILURE
        }
    }
}
