//! `cargo xtask fuzz [--minutes N] [TARGET...]`, and the short fuzzing pass of `cargo xtask test`.
//!
//! Every cargo-fuzz target of the project is one row of [`TARGETS`]. Each crate is built once
//! before anything runs, so that a build error is reported as one. Each target then runs from its
//! own corpus (`<crate>/corpus/<target>`, kept between runs, not committed) and its committed
//! seeds; a crash leaves its input in `<crate>/artifacts/<target>/`, and once fixed it joins the
//! seeds as `regression-*`. A failing target does not stop the others: all failures are reported
//! at the end.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, bail};

/// One cargo-fuzz target.
struct Target {
    /// Its cargo-fuzz crate, from the workspace root.
    krate: &'static str,
    /// The target's name (`cargo fuzz list`).
    name: &'static str,
    /// Its seeds, from the crate.
    seeds: &'static str,
    /// How long CI runs it, in seconds.
    ci_seconds: u64,
}

/// Every fuzz target. CI runs each for its `ci_seconds`: 115 s in all.
const TARGETS: &[Target] = &[
    Target {
        krate: "vrrp/fuzz",
        name: "decode",
        seeds: "seeds",
        ci_seconds: 15,
    },
    Target {
        krate: "lb-import/fuzz",
        name: "import",
        seeds: "seeds",
        ci_seconds: 15,
    },
    Target {
        krate: "lb-daemon/fuzz",
        name: "config",
        seeds: "seeds/config",
        ci_seconds: 15,
    },
    Target {
        krate: "lb-daemon/fuzz",
        name: "control",
        seeds: "seeds/control",
        ci_seconds: 15,
    },
    Target {
        krate: "lb-daemon/fuzz",
        name: "state_file",
        seeds: "seeds/state_file",
        ci_seconds: 15,
    },
    Target {
        krate: "lb-daemon/fuzz",
        name: "health_http",
        seeds: "seeds/health_http",
        ci_seconds: 15,
    },
    // The XDP program through BPF_PROG_TEST_RUN: needs root, as the rest of `cargo xtask test`.
    Target {
        krate: "lb-daemon/fuzz",
        name: "xdp",
        seeds: "seeds/xdp",
        ci_seconds: 25,
    },
];

/// Minutes per target of `cargo xtask fuzz` without `--minutes`.
const DEFAULT_MINUTES: u64 = 5;
/// A single input taking longer than this is a finding (a hang), not a slow run.
const INPUT_TIMEOUT_SECONDS: u64 = 30;

const USAGE: &str = "usage: cargo xtask fuzz [--minutes N] [TARGET...]";

/// CI: every target for its short, bounded time.
pub fn ci() -> anyhow::Result<()> {
    let plan: Vec<(&Target, Duration)> = TARGETS
        .iter()
        .map(|t| (t, Duration::from_secs(t.ci_seconds)))
        .collect();
    fuzz(&plan)
}

/// `cargo xtask fuzz [--minutes N] [TARGET...]`: the named targets (all without a name) for N
/// minutes each (default [`DEFAULT_MINUTES`]).
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut minutes = DEFAULT_MINUTES;
    let mut names: Vec<&str> = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--minutes" => {
                let n = args
                    .next()
                    .with_context(|| format!("--minutes needs N; {USAGE}"))?;
                minutes = n.parse().ok().filter(|&m| m > 0).with_context(|| {
                    format!("--minutes {n:?}: not a whole number of minutes above 0")
                })?;
            }
            "-h" | "--help" => {
                println!("{USAGE}\ntargets: {}", target_list());
                return Ok(());
            }
            flag if flag.starts_with('-') => bail!("unknown option {flag}; {USAGE}"),
            name => names.push(name),
        }
    }
    let mut selected: Vec<&Target> = Vec::new();
    for name in &names {
        let Some(t) = TARGETS.iter().find(|t| t.name == *name) else {
            bail!(
                "unknown fuzz target {name:?}; the targets: {}",
                target_list()
            );
        };
        if !selected.iter().any(|s| s.name == t.name) {
            selected.push(t);
        }
    }
    if selected.is_empty() {
        selected = TARGETS.iter().collect();
    }
    let each = Duration::from_secs(minutes * 60);
    let plan: Vec<(&Target, Duration)> = selected.into_iter().map(|t| (t, each)).collect();
    fuzz(&plan)
}

/// `name (crate)` of every target, for messages.
fn target_list() -> String {
    TARGETS
        .iter()
        .map(|t| format!("{} ({})", t.name, t.krate))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `rustup run nightly cargo fuzz SUB` in a fuzz crate. All fuzz crates build into one
/// `target/fuzz` of the workspace, so the dependencies they share (lb-common, vrrp, tokio, serde)
/// are built once, not once a crate; the sanitizer builds stay apart from the workspace's own.
fn cargo_fuzz(dir: &Path, sub: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz", sub])
        .arg("--target-dir")
        .arg(super::root().join("target").join("fuzz"))
        .current_dir(dir)
        .env_remove("CARGO_TARGET_DIR");
    cmd
}

/// Builds each crate of `plan` once, then runs each target for its time; fails at the end
/// naming every target that failed, was not built, or has no crate yet.
fn fuzz(plan: &[(&Target, Duration)]) -> anyhow::Result<()> {
    let root = super::root();
    let mut failed: Vec<String> = Vec::new();
    let mut built: Vec<&str> = Vec::new();
    let mut broken: Vec<&str> = Vec::new();
    for (t, _) in plan {
        if built.contains(&t.krate) || broken.contains(&t.krate) {
            continue;
        }
        let dir = root.join(t.krate);
        if !dir.join("Cargo.toml").is_file() {
            eprintln!(
                "fuzz: {} has no cargo-fuzz crate yet ({} not found): skipping its targets",
                t.krate,
                dir.join("Cargo.toml").display()
            );
            failed.push(format!("{}: no crate at {}", t.krate, dir.display()));
            broken.push(t.krate);
            continue;
        }
        match super::run(&mut cargo_fuzz(&dir, "build")) {
            Ok(()) => built.push(t.krate),
            Err(e) => {
                eprintln!("fuzz: building {} failed: {e:#}", t.krate);
                failed.push(format!("{}: build failed", t.krate));
                broken.push(t.krate);
            }
        }
    }
    for (t, time) in plan {
        if !built.contains(&t.krate) {
            continue;
        }
        let dir = root.join(t.krate);
        let corpus = Path::new("corpus").join(t.name);
        let abs = dir.join(&corpus);
        std::fs::create_dir_all(&abs).with_context(|| format!("creating {}", abs.display()))?;
        eprintln!("fuzz: {} ({}) for {} s", t.name, t.krate, time.as_secs());
        let result = super::run(
            cargo_fuzz(&dir, "run")
                .arg(t.name)
                .arg(&corpus)
                .arg(t.seeds)
                .arg("--")
                .arg(format!("-max_total_time={}", time.as_secs()))
                .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}")),
        );
        if let Err(e) = result {
            eprintln!("fuzz: {} failed: {e:#}", t.name);
            failed.push(format!(
                "{} ({}): see its output above; a crash's input is in {}",
                t.name,
                t.krate,
                dir.join("artifacts").join(t.name).display()
            ));
        }
    }
    if !failed.is_empty() {
        bail!("fuzzing failed:\n  {}", failed.join("\n  "));
    }
    eprintln!("fuzz: {} targets ran clean", plan.len());
    Ok(())
}
