//! `lbctl`: the lbd command line.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand, ValueEnum};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use lb_daemon::{
    config::DEFAULT_CONTROL_SOCKET,
    control::{self, Request, Response, Status},
};

/// Control a running lbd: status, and backend changes that survive restarts.
#[derive(Parser)]
#[command(name = "lbctl", version)]
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
    /// The connection table, like `ipvsadm -Lnc`: protocol, client, VIP, backend, state, idle
    /// time and time to expiry, the most recently active first.
    Flows {
        /// Only this service (name or VIP:port).
        #[arg(long)]
        service: Option<String>,
        /// Only flows to this backend address.
        #[arg(long)]
        backend: Option<String>,
        /// Only this client (address, or address:port).
        #[arg(long)]
        client: Option<String>,
        /// Rows at most; the others are counted (0 counts only).
        #[arg(long, default_value_t = lb_daemon::flows::DEFAULT_LIMIT)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A live view refreshed every second, like `ipvsadm -L --rate` with top's feel: per
    /// service and backend, new connections/s, packets/s, bytes/s and flows; q quits.
    Top,
    /// Write an lbd config from another balancer's config.
    Import {
        #[command(subcommand)]
        from: ImportCmd,
    },
    /// Change backends at run time (saved in lbd's state file, kept across restarts).
    Backend {
        #[command(subcommand)]
        action: BackendCmd,
    },
    /// This node behind ECMP ([announce]): take its VIPs out of the routers, or back in.
    Node {
        #[command(subcommand)]
        action: NodeCmd,
    },
    /// This node in the VRRP election.
    Vrrp {
        #[command(subcommand)]
        action: VrrpCmd,
    },
    /// Print lbctl's completion script for a shell (`cargo xtask install` installs them).
    Completions {
        /// The shell.
        shell: lb_daemon::clidoc::Shell,
    },
    /// Write lbctl's man pages (one per subcommand) into a directory.
    Man {
        /// The directory.
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ImportCmd {
    /// A keepalived configuration (vrrp_instance, virtual_server with direct routing, health
    /// checks, includes): what has no lbd equivalent becomes a comment in the output and a
    /// warning naming the keepalived line.
    Keepalived {
        /// keepalived.conf.
        file: PathBuf,
        /// Write the config here instead of to stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Refuse anything that would not be converted (exit 1 on the first).
        #[arg(long)]
        strict: bool,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Withdraw every VIP of this node (flows move to the other nodes by ECMP and keep their
    /// backend there through Maglev); what still arrives is forwarded. Kept across restarts.
    Drain {
        /// Wait until no packet has reached this node for 3 seconds.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (e.g. 30s, 5m).
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Announce the VIPs again (those with a backend in rotation).
    Undrain,
}

#[derive(Subcommand)]
enum VrrpCmd {
    /// Take this node out for maintenance: a master sends its priority-0 advert and keeps the
    /// VIPs until the new master's first advert (make-before-break); then it stays out of the
    /// election, across restarts, until `resume`.
    Resign,
    /// Take this node back into the election.
    Resume,
}

#[derive(Subcommand)]
enum BackendCmd {
    /// Add a backend to a service.
    Add {
        /// Service name or VIP:port.
        service: String,
        /// Backend address (IPv4 or IPv6, optionally with the VIP's port: `[2001:db8::21]:80`).
        addr: String,
        /// Weight, 1 to 1000.
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Set a backend's weight.
    Weight {
        /// Service name or VIP:port.
        service: String,
        /// Backend address.
        addr: String,
        /// Weight, 1 to 1000.
        weight: u32,
    },
    /// Drain a backend: no new flows; established flows go on.
    Drain {
        /// Service name or VIP:port.
        service: String,
        /// Backend address.
        addr: String,
        /// Wait until its open flows reach zero, showing them as they fall.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (e.g. 30s, 5m, 500ms).
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Remove a backend; refused while it has open flows, unless --force.
    Remove {
        /// Service name or VIP:port.
        service: String,
        /// Backend address.
        addr: String,
        /// Cut its open flows.
        #[arg(long)]
        force: bool,
    },
    /// Put a backend in maintenance (on), or back in rotation (off; also ends a drain).
    Maintenance {
        /// Service name or VIP:port.
        service: String,
        /// Backend address.
        addr: String,
        /// on or off.
        state: OnOff,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// Parses `500ms`, `30s`, `5m`, `1h`, or a number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 30s, 5m, 500ms)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (allowed: ms, s, m, h)"
            ));
        }
    };
    Ok(d)
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

fn ask(rt: &tokio::runtime::Runtime, socket: &Path, req: &Request) -> Result<Response, String> {
    rt.block_on(control::request(socket, req))
        .map_err(|e| e.to_string())
}

fn status(rt: &tokio::runtime::Runtime, socket: &Path) -> Result<Status, String> {
    match ask(rt, socket, &Request::Status {})? {
        Response::Status(s) => Ok(*s),
        Response::Error { message } => Err(message),
        Response::Done { message } => Err(format!("unexpected answer: {message}")),
        Response::Flows(_) => Err("unexpected answer: flows".into()),
    }
}

fn change(rt: &tokio::runtime::Runtime, socket: &Path, req: Request) -> Result<(), String> {
    match ask(rt, socket, &req)? {
        Response::Done { message } => {
            println!("{message}");
            Ok(())
        }
        Response::Error { message } => Err(message),
        Response::Status(_) => Err("unexpected answer: a status".into()),
        Response::Flows(_) => Err("unexpected answer: flows".into()),
    }
}

fn run(args: Args) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let socket = args.socket.as_path();
    match args.command {
        Command::Status { json } => {
            let s = status(&rt, socket)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s).map_err(|e| e.to_string())?
                );
            } else {
                print_status(&s);
            }
            Ok(())
        }
        Command::Flows {
            service,
            backend,
            client,
            limit,
            json,
        } => {
            let req = Request::Flows {
                service,
                backend,
                client,
                limit: Some(limit),
            };
            let report = match ask(&rt, socket, &req)? {
                Response::Flows(r) => r,
                Response::Error { message } => return Err(message),
                _ => return Err("unexpected answer to a flows request".into()),
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
                );
            } else {
                print!("{}", report.render());
            }
            Ok(())
        }
        Command::Import {
            from:
                ImportCmd::Keepalived {
                    file,
                    output,
                    strict,
                },
        } => {
            let import = lb_import::import_file(&file, &lb_import::Options { strict })
                .map_err(|e| e.to_string())?;
            for w in &import.warnings {
                eprintln!("lbctl: warning: {w}");
            }
            match output {
                Some(path) => {
                    std::fs::write(&path, &import.toml)
                        .map_err(|e| format!("writing {}: {e}", path.display()))?;
                    eprintln!(
                        "lbctl: {} written ({} warnings); check it with `lbd --check-config {}`",
                        path.display(),
                        import.warnings.len(),
                        path.display()
                    );
                }
                None => print!("{}", import.toml),
            }
            Ok(())
        }
        Command::Top => {
            use std::io::IsTerminal as _;
            if !std::io::stdout().is_terminal() {
                return Err("top needs a terminal; use `lbctl status` in scripts".into());
            }
            lb_daemon::top::run(|| status(&rt, socket))
                .map_err(|e| format!("the terminal failed: {e}"))
        }
        Command::Backend { action } => match action {
            BackendCmd::Add {
                service,
                addr,
                weight,
            } => change(
                &rt,
                socket,
                Request::BackendAdd {
                    service,
                    addr,
                    weight: Some(weight),
                },
            ),
            BackendCmd::Weight {
                service,
                addr,
                weight,
            } => change(
                &rt,
                socket,
                Request::BackendWeight {
                    service,
                    addr,
                    weight,
                },
            ),
            BackendCmd::Drain {
                service,
                addr,
                wait,
                timeout,
            } => {
                change(
                    &rt,
                    socket,
                    Request::BackendDrain {
                        service: service.clone(),
                        addr: addr.clone(),
                    },
                )?;
                if wait {
                    wait_drained(&rt, socket, &service, &addr, timeout)?;
                }
                Ok(())
            }
            BackendCmd::Remove {
                service,
                addr,
                force,
            } => change(
                &rt,
                socket,
                Request::BackendRemove {
                    service,
                    addr,
                    force,
                },
            ),
            BackendCmd::Maintenance {
                service,
                addr,
                state,
            } => change(
                &rt,
                socket,
                Request::BackendMaintenance {
                    service,
                    addr,
                    on: matches!(state, OnOff::On),
                },
            ),
        },
        Command::Completions { shell } => {
            lb_daemon::clidoc::completions(
                <Args as clap::CommandFactory>::command(),
                shell,
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man { dir } => {
            let n = lb_daemon::clidoc::man_pages(<Args as clap::CommandFactory>::command(), &dir)
                .map_err(|e| format!("writing man pages into {}: {e}", dir.display()))?;
            println!("{n} man pages written to {}", dir.display());
            Ok(())
        }
        Command::Node { action } => match action {
            NodeCmd::Drain { wait, timeout } => {
                change(&rt, socket, Request::NodeDrain {})?;
                if wait {
                    wait_quiet(&rt, socket, timeout)?;
                }
                Ok(())
            }
            NodeCmd::Undrain => change(&rt, socket, Request::NodeUndrain {}),
        },
        Command::Vrrp { action } => change(
            &rt,
            socket,
            match action {
                VrrpCmd::Resign => Request::VrrpResign {},
                VrrpCmd::Resume => Request::VrrpResume {},
            },
        ),
    }
}

/// Polls the node's packet rate until it has been zero for 3 seconds or the timeout passes.
fn wait_quiet(
    rt: &tokio::runtime::Runtime,
    socket: &Path,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut quiet = 0;
    let mut last = None;
    loop {
        let s = status(rt, socket)?;
        let pps: f64 = s.services.iter().map(|svc| svc.rates.packets_per_s).sum();
        let shown = format!("{pps:.0}");
        if last.as_ref() != Some(&shown) {
            println!("{shown} packets/s still reach this node");
            last = Some(shown);
        }
        quiet = if pps == 0.0 { quiet + 1 } else { 0 };
        if quiet >= 3 {
            println!("no traffic reaches this node any more");
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "timeout after {}s: {pps:.0} packets/s still reach this node (is the router still sending? `birdc show route` on it)",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Polls the backend's open flows until they reach zero or the timeout passes.
fn wait_drained(
    rt: &tokio::runtime::Runtime,
    socket: &Path,
    service: &str,
    addr: &str,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let ip = addr.split(':').next().unwrap_or(addr);
    let mut last = None;
    loop {
        let s = status(rt, socket)?;
        let svc = s
            .services
            .iter()
            .find(|x| {
                x.name == service || x.vip == service || format!("{}/{}", x.proto, x.vip) == service
            })
            .ok_or_else(|| format!("service {service:?} is gone"))?;
        let flows = svc
            .backends
            .iter()
            .find(|b| b.addr == ip)
            .map(|b| b.flows)
            .unwrap_or(0);
        if last != Some(flows) {
            println!("{ip}: {flows} open flows");
            last = Some(flows);
        }
        if flows == 0 {
            println!("{ip} is drained");
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "timeout after {}s: {ip} still has {flows} open flows (they go on; `lbctl backend remove --force` cuts them)",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn print_status(s: &Status) {
    println!(
        "lbd {}  interface {}  data path {} ({})  up {}s",
        s.version, s.interface, s.datapath, s.datapath_reason, s.uptime_s
    );
    println!(
        "config {}  state {}  connection table {}/{}",
        s.config_path, s.state_file, s.conntrack_entries, s.conntrack_max
    );
    if let Some(a) = &s.announce {
        let vips: Vec<String> = a
            .vips
            .iter()
            .map(|v| {
                if v.announced {
                    format!("{} announced", v.vip)
                } else {
                    format!("{} withdrawn ({})", v.vip, v.reason.as_str())
                }
            })
            .collect();
        println!(
            "announce (table {}){}: {}",
            a.table,
            if a.drained { " NODE DRAINED" } else { "" },
            vips.join(", ")
        );
    }
    let f = &s.flood_guard;
    if f.new_flows_per_sec == 0 {
        println!("flood guard off");
    } else {
        println!(
            "flood guard {} new flows/s: {}  ({} episodes, {} held back since start)",
            f.new_flows_per_sec,
            if f.active {
                "HOLDING NEW FLOWS BACK"
            } else {
                "quiet"
            },
            f.episodes,
            f.held
        );
    }
    for (family, v) in [("", &s.vrrp), (" (IPv6)", &s.vrrp6)] {
        let Some(v) = v else { continue };
        let since = v
            .last_transition_unix
            .and_then(|t| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_secs_f64();
                Some(format!(" since {:.1}s", (now - t).max(0.0)))
            })
            .unwrap_or_default();
        let mut failed = if v.failed_conditions.is_empty() {
            String::new()
        } else {
            format!("  failed: {}", v.failed_conditions.join(", "))
        };
        if v.resigned {
            failed.push_str("  resigned (lbctl vrrp resume)");
        }
        println!(
            "vrrp{family} vrid {}  {}{since}  priority {} (configured {})  master {}{failed}",
            v.vrid,
            v.state,
            v.priority,
            v.configured_priority,
            v.master.as_deref().unwrap_or("unknown"),
        );
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header([
        "SERVICE", "VIP", "PROTO", "SCHED", "BACKEND", "WEIGHT", "STATE", "PACKETS", "BYTES",
        "FLOWS", "SOURCE",
    ]);
    for svc in &s.services {
        t.add_row([
            svc.name.clone(),
            svc.vip.clone(),
            svc.proto.to_string(),
            svc.scheduler.to_string(),
            String::new(),
            String::new(),
            String::new(),
            svc.packets.to_string(),
            svc.bytes.to_string(),
            String::new(),
            String::new(),
        ]);
        for b in &svc.backends {
            let flows = if b.closing_flows > 0 {
                format!("{} (+{} closing)", b.flows, b.closing_flows)
            } else {
                b.flows.to_string()
            };
            let source = if b.overrides.is_empty() {
                b.source.to_string()
            } else {
                format!("{}; {}", b.source, b.overrides.join("; "))
            };
            t.add_row([
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                b.addr.clone(),
                b.weight.to_string(),
                b.state.to_string(),
                b.packets.to_string(),
                b.bytes.to_string(),
                flows,
                source,
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

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        assert!(
            parse_duration("5 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("is not a duration")
        );
    }
}
