//! `lbctl`: the lbd command line.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use lb_daemon::{
    config::DEFAULT_CONTROL_SOCKET,
    control::{self, Request, Response, Status},
};

/// Control a running lbd.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// lbd's control socket.
    #[arg(long, env = "LBD_SOCKET", default_value = DEFAULT_CONTROL_SOCKET, global = true)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Services, backends, counters and the data path in use.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader goes away (`lbctl status | head`).
    // SAFETY: setting a signal disposition to its default before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    match args.command {
        Command::Status { json } => {
            let answer = rt
                .block_on(control::request(&args.socket, &Request::Status {}))
                .map_err(|e| e.to_string())?;
            match answer {
                Response::Status(s) if json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&s).map_err(|e| e.to_string())?
                    );
                    Ok(())
                }
                Response::Status(s) => {
                    print_status(&s);
                    Ok(())
                }
                Response::Error { message } => Err(message),
            }
        }
    }
}

fn print_status(s: &Status) {
    println!(
        "lbd {}  interface {}  data path {} ({})  up {}s",
        s.version, s.interface, s.datapath, s.datapath_reason, s.uptime_s
    );
    println!(
        "config {}  connection table {}/{}",
        s.config_path, s.conntrack_entries, s.conntrack_max
    );
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header([
        "SERVICE", "VIP", "PROTO", "SCHED", "BACKEND", "WEIGHT", "STATE", "PACKETS", "BYTES",
        "FLOWS",
    ]);
    for svc in &s.services {
        t.add_row([
            svc.name.clone(),
            svc.vip.clone(),
            svc.proto.clone(),
            svc.scheduler.clone(),
            String::new(),
            String::new(),
            String::new(),
            svc.packets.to_string(),
            svc.bytes.to_string(),
            String::new(),
        ]);
        for b in &svc.backends {
            let flows = if b.closing_flows > 0 {
                format!("{} (+{} closing)", b.flows, b.closing_flows)
            } else {
                b.flows.to_string()
            };
            t.add_row([
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                b.addr.clone(),
                b.weight.to_string(),
                b.state.clone(),
                b.packets.to_string(),
                b.bytes.to_string(),
                flows,
            ]);
        }
    }
    println!("{t}");
    let reasons: Vec<String> = s
        .reasons
        .iter()
        .filter(|r| r.packets > 0)
        .map(|r| format!("{} {}", r.reason, r.packets))
        .collect();
    if !reasons.is_empty() {
        println!("not balanced: {}", reasons.join(", "));
    }
}
