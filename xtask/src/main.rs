//! `cargo xtask`: the jobs around the build.
//!
//! - `setup`: installs what the project needs, idempotently (apt packages, the nightly
//!   toolchain with rust-src, bpf-linker built against LLVM 22, rustfmt and clippy).
//! - `test`: set-up if anything is missing, then fmt, clippy (userspace and eBPF), and every
//!   test: unit, XDP program tests (BPF_PROG_TEST_RUN) and network-namespace end-to-end tests.
//! - `demo`: builds and runs the live demo in network namespaces.
//! - `bench`: builds and runs the benchmarks; prints `name: value` lines.
//! - `install`: puts `lbd`, `lbctl`, the systemd unit and a default config in place.
//!
//! xtask itself depends on nothing that needs the eBPF toolchain, so it builds on a fresh machine.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};

/// Debian packages: the eBPF toolchain (LLVM 22 for bpf-linker), the namespace harness, and the
/// peers the tests and benchmarks compare against.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "clang-22",
    "libzstd-dev",
    "zlib1g-dev",
    "bpftool",
    "ethtool",
    "iproute2",
    "iputils-ping",
    "iputils-arping",
    "tcpdump",
    "curl",
    "keepalived",
    "haproxy",
    "iperf3",
    "wrk",
    "tshark",
    "systemd",
    // groff checks the generated man pages (tests/cli.rs).
    "groff-base",
    // promtool checks and unit-tests the shipped alert rules (tests/alerts.rs).
    "prometheus",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// How long CI fuzzes the VRRP decoder: short and bounded, on every run.
const FUZZ_SECONDS: u32 = 20;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("test") => test(),
        Some("demo") => demo(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("install") => install(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <setup|test|demo|bench|install [--destdir DIR]>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// Runs a command (from the workspace root unless it names a directory), echoing it; fails
/// with its exit status.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {}", describe(cmd));
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(root());
    }
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// What is missing, as human-readable items; empty when the machine is ready.
fn missing() -> Vec<String> {
    let mut out = Vec::new();
    let apt: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output("dpkg-query", &["-W", "-f=${Status}", p])
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if !apt.is_empty() {
        out.push(format!("apt: {}", apt.join(" ")));
    }
    let nightly = output("rustup", &["toolchain", "list"])
        .is_some_and(|s| s.lines().any(|l| l.starts_with("nightly")));
    if !nightly {
        out.push("rustup: nightly toolchain".into());
    }
    let src = output("rustup", &["+nightly", "component", "list", "--installed"])
        .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")));
    if !src {
        out.push("rustup: nightly rust-src".into());
    }
    let stable = output("rustup", &["component", "list", "--installed"]).unwrap_or_default();
    for c in ["clippy", "rustfmt"] {
        if !stable.lines().any(|l| l.starts_with(c)) {
            out.push(format!("rustup: {c}"));
        }
    }
    let nightly_components =
        output("rustup", &["+nightly", "component", "list", "--installed"]).unwrap_or_default();
    if !nightly_components.lines().any(|l| l.starts_with("clippy")) {
        out.push("rustup: nightly clippy".into());
    }
    let linker =
        output("bpf-linker", &["--version"]).is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if !linker {
        out.push(format!("cargo: bpf-linker {BPF_LINKER_VERSION}"));
    }
    // `cargo fuzz --version` prints "cargo-fuzz 0.13.2".
    let fuzz = output("cargo", &["fuzz", "--version"])
        .is_some_and(|v| v.split_whitespace().any(|w| w == CARGO_FUZZ_VERSION));
    if !fuzz {
        out.push(format!("cargo: cargo-fuzz {CARGO_FUZZ_VERSION}"));
    }
    out
}

fn setup() -> anyhow::Result<()> {
    let todo = missing();
    if todo.is_empty() {
        eprintln!("setup: everything is installed");
        return Ok(());
    }
    eprintln!("setup: installing: {}", todo.join("; "));
    if todo.iter().any(|t| t.starts_with("apt:")) {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(APT_PACKAGES)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if todo.iter().any(|t| t == "rustup: nightly toolchain") {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    if todo.iter().any(|t| t.starts_with("rustup:")) {
        run(Command::new("rustup").args(["component", "add", "clippy", "rustfmt"]))?;
        run(Command::new("rustup").args(["+nightly", "component", "add", "rust-src", "clippy"]))?;
    }
    if todo.iter().any(|t| t.starts_with("cargo: bpf-linker")) {
        // bpf-linker's default feature targets LLVM 23; rustc nightly here uses LLVM 22.
        run(cargo()
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    }
    if todo.iter().any(|t| t.starts_with("cargo: cargo-fuzz")) {
        run(cargo().args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
            "--force",
        ]))?;
    }
    let left = missing();
    if !left.is_empty() {
        bail!("still missing after set-up: {}", left.join("; "));
    }
    eprintln!("setup: done");
    Ok(())
}

fn test() -> anyhow::Result<()> {
    setup()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "lb-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate as the template checks it: no unwinding, so panic=abort for the host build.
    run(Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "-p",
            "lb-ebpf",
            "--all-targets",
            "--",
        ])
        .args(["-D", "warnings", "-C", "panic=abort", "-Zpanic_abort_tests"]))?;
    // The end-to-end tests start these binaries. (Default members: all but the eBPF crate,
    // which only builds for the BPF target.)
    run(cargo().args(["build", "--bins"]))?;
    run(cargo().args(["test", "--no-fail-fast"]))?;
    fuzz_vrrp()
}

/// Fuzzes the VRRP decoder for a bounded time, starting from keepalived's real adverts.
fn fuzz_vrrp() -> anyhow::Result<()> {
    let dir = root().join("vrrp/fuzz");
    let corpus = dir.join("corpus/decode");
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    run(Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "fuzz",
            "run",
            "decode",
            "corpus/decode",
            "seeds",
            "--",
        ])
        .arg(format!("-max_total_time={FUZZ_SECONDS}"))
        .current_dir(&dir))
}

fn demo(args: &[String]) -> anyhow::Result<()> {
    run_release_bin("lbd-demo", args)
}

fn bench(args: &[String]) -> anyhow::Result<()> {
    run_release_bin("lbd-bench", args)
}

/// Set-up, a release build of every binary (the demo and benchmarks start lbd, lbctl and the
/// test backend), then one of the harness binaries.
fn run_release_bin(name: &str, args: &[String]) -> anyhow::Result<()> {
    setup()?;
    run(cargo().args(["build", "--release", "--bins"]))?;
    run(cargo()
        .args([
            "run",
            "--release",
            "-q",
            "-p",
            "lbd-tests",
            "--bin",
            name,
            "--",
        ])
        .args(args))
}

/// Installs the release binaries, the systemd unit, the README and (if there is none yet) the
/// default config. `--destdir DIR` installs under DIR instead of `/` (packaging, tests).
/// Completions (bash, zsh, fish) and man pages of `lbd` and `lbctl`, generated by the binaries
/// just built from their clap definitions, installed with `put`.
fn docs(
    root: &Path,
    put: &dyn Fn(&Path, &str, u32, bool) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let gen_dir = root.join("target/release/docs");
    let _ = std::fs::remove_dir_all(&gen_dir);
    std::fs::create_dir_all(&gen_dir).with_context(|| format!("creating {}", gen_dir.display()))?;
    for bin in ["lbd", "lbctl"] {
        let exe = root.join("target/release").join(bin);
        for (shell, to) in [
            (
                "bash",
                format!("/usr/local/share/bash-completion/completions/{bin}"),
            ),
            ("zsh", format!("/usr/local/share/zsh/site-functions/_{bin}")),
            (
                "fish",
                format!("/usr/local/share/fish/vendor_completions.d/{bin}.fish"),
            ),
        ] {
            let mut cmd = Command::new(&exe);
            if bin == "lbd" {
                cmd.args(["--completions", shell]);
            } else {
                cmd.args(["completions", shell]);
            }
            let out = cmd
                .output()
                .with_context(|| format!("running {}", exe.display()))?;
            if !out.status.success() {
                bail!(
                    "{bin}: generating {shell} completions failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let file = gen_dir.join(format!("{bin}.{shell}"));
            std::fs::write(&file, &out.stdout)
                .with_context(|| format!("writing {}", file.display()))?;
            put(&file, &to, 0o644, true)?;
        }
        let man_dir = gen_dir.join("man");
        let mut cmd = Command::new(&exe);
        if bin == "lbd" {
            cmd.arg("--man").arg(&man_dir);
        } else {
            cmd.arg("man").arg(&man_dir);
        }
        run(&mut cmd)?;
    }
    let pages = std::fs::read_dir(gen_dir.join("man")).context("reading the man pages")?;
    for page in pages {
        let page = page?.path();
        let name = page
            .file_name()
            .and_then(|n| n.to_str())
            .context("a man page's name")?
            .to_string();
        put(
            &page,
            &format!("/usr/local/share/man/man1/{name}"),
            0o644,
            true,
        )?;
    }
    Ok(())
}

fn install(args: &[String]) -> anyhow::Result<()> {
    let destdir = match args {
        [] => PathBuf::from("/"),
        [flag, dir] if flag == "--destdir" => PathBuf::from(dir),
        _ => bail!("usage: cargo xtask install [--destdir DIR]"),
    };
    setup()?;
    run(cargo().args(["build", "--release", "-p", "lb-daemon", "--bins"]))?;
    let root = root();
    let put = |from: &Path, to: &str, mode: u32, replace: bool| -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let dest = destdir.join(to.trim_start_matches('/'));
        if !replace && dest.exists() {
            eprintln!(
                "install: {} exists, kept (the new default is {})",
                dest.display(),
                from.display()
            );
            return Ok(());
        }
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // Write aside and rename, so a running lbd binary is replaced, not overwritten.
        let tmp = dest.with_extension("xtask-new");
        std::fs::copy(from, &tmp)
            .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, &dest).with_context(|| format!("installing {}", dest.display()))?;
        eprintln!("install: {}", dest.display());
        Ok(())
    };
    put(
        &root.join("target/release/lbd"),
        "/usr/local/sbin/lbd",
        0o755,
        true,
    )?;
    put(
        &root.join("target/release/lbctl"),
        "/usr/local/sbin/lbctl",
        0o755,
        true,
    )?;
    put(
        &root.join("packaging/lbd.service"),
        "/etc/systemd/system/lbd.service",
        0o644,
        true,
    )?;
    put(
        &root.join("README.md"),
        "/usr/local/share/doc/lbd/README.md",
        0o644,
        true,
    )?;
    put(
        &root.join("packaging/lbd.toml"),
        "/etc/lbd/lbd.toml",
        0o644,
        false,
    )?;
    put(
        &root.join("packaging/prometheus/lbd-alerts.yml"),
        "/usr/local/share/lbd/prometheus/lbd-alerts.yml",
        0o644,
        true,
    )?;
    put(
        &root.join("packaging/grafana/lbd.json"),
        "/usr/local/share/lbd/grafana/lbd.json",
        0o644,
        true,
    )?;
    docs(&root, &put)?;
    if destdir == Path::new("/") && Path::new("/run/systemd/system").exists() {
        run(Command::new("systemctl").arg("daemon-reload"))?;
        eprintln!("install: done; edit /etc/lbd/lbd.toml, then `systemctl enable --now lbd`");
    } else {
        eprintln!("install: done (systemd is not running here: no daemon-reload)");
    }
    Ok(())
}
