//! `lbd`: the load balancer daemon.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Parser;
use lb_daemon::{
    config::Config,
    daemon,
    handover::{self, HandoverError, Inherited},
};

/// lbd: layer-4 load balancer (XDP direct routing with Maglev hashing, userspace proxy fallback, VRRPv3).
#[derive(Parser)]
#[command(name = "lbd", version)]
struct Args {
    /// Config file.
    #[arg(long, short, value_name = "FILE", default_value = "/etc/lbd/lbd.toml")]
    config: PathBuf,
    /// Validate the config file and exit.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
    /// Take over from the lbd running with this config: its listening sockets (no connection
    /// is refused), its VIPs and its pinned data path; it finishes its open connections and
    /// exits. Starts as usual when none runs.
    #[arg(long, conflicts_with = "detach")]
    replace: bool,
    /// Print lbd's completion script for a shell and exit.
    #[arg(long, value_name = "SHELL", conflicts_with_all = ["replace", "detach"])]
    completions: Option<lb_daemon::clidoc::Shell>,
    /// Write lbd's man page into a directory and exit.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["replace", "detach"])]
    man: Option<PathBuf>,
    /// Remove the pinned XDP data path of the config's interface (daemon.pin_dir) and exit;
    /// refused while lbd runs.
    #[arg(long)]
    detach: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LBD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Some(shell) = args.completions {
        let cmd = <Args as clap::CommandFactory>::command();
        lb_daemon::clidoc::completions(cmd, shell, &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    if let Some(dir) = args.man {
        let cmd = <Args as clap::CommandFactory>::command();
        return match lb_daemon::clidoc::man_pages(cmd, &dir) {
            Ok(n) => {
                println!("{n} man pages written to {}", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lbd: writing man pages into {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        };
    }
    if let Some(path) = args.check_config {
        return match Config::load(&path) {
            Ok(c) => {
                let backends: usize = c.services.iter().map(|s| s.backends.len()).sum();
                println!(
                    "{}: ok ({} services, {backends} backends)",
                    path.display(),
                    c.services.len()
                );
                // The descriptors the bounds need, against what this host allows.
                let budget = lb_daemon::limits::FdBudget::of(&c);
                match lb_daemon::limits::nofile() {
                    Ok(l) => match lb_daemon::limits::shortfall(&budget, l.hard) {
                        Some(short) => println!("warning: {short}"),
                        None => println!(
                            "open files: the bounds need {budget}; the hard limit here is {}",
                            l.hard
                        ),
                    },
                    Err(e) => println!("warning: cannot read the open-files limit: {e}"),
                }
                if c.daemon.datapath != lb_daemon::config::Datapath::Userspace {
                    let (warn, note) = lb_daemon::limits::map_memory_note(
                        &c,
                        lb_daemon::limits::mem_available_mib(),
                    );
                    println!("{}{note}", if warn { "warning: " } else { "" });
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                ExitCode::FAILURE
            }
        };
    }
    if args.detach {
        let result = Config::load(&args.config)
            .with_context(|| format!("config {}", args.config.display()))
            .and_then(|c| daemon::detach(&c));
        return match result {
            Ok(message) => {
                println!("{message}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lbd: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(args.config, args.replace) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: PathBuf, replace: bool) -> anyhow::Result<()> {
    let config = Config::load(&path).with_context(|| format!("config {}", path.display()))?;
    // Sockets systemd kept across a restart (its fd store) or a socket unit passed.
    let mut inherited = Inherited::from_systemd().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "ignoring the sockets systemd passed (LISTEN_FDS, LISTEN_FDNAMES): binding anew");
        Inherited::none()
    });
    if replace {
        match handover::take_over(&config.daemon.control_socket) {
            Ok(from) => {
                tracing::info!(listeners = from.len(), from = ?from.source, "took over from the running lbd");
                inherited.merge(from);
            }
            Err(HandoverError::NotRunning { path, .. }) => {
                tracing::info!(socket = %path, "--replace: no lbd runs; starting");
            }
            Err(e) => return Err(e).context("--replace"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(daemon::run(path, config, inherited))
}
