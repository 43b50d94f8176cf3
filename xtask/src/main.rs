//! `cargo xtask`: the jobs around the build.
//!
//! - `setup`: installs what the project needs, idempotently (apt packages, the nightly
//!   toolchain with rust-src, bpf-linker built against LLVM 22, rustfmt and clippy).
//! - `test`: set-up if anything is missing, then fmt, clippy (userspace and eBPF), and every
//!   test: unit, XDP program tests (BPF_PROG_TEST_RUN) and network-namespace end-to-end tests.
//! - `demo`: builds and runs the live demo in network namespaces.
//! - `bench`: builds and runs the benchmarks; prints `name: value` lines.
//! - `soak [--minutes N] [--mode M]`: lbd under mixed load and changes for N minutes, then its
//!   checks (see `lbd_tests::soak`).
//! - `install`: puts `lbd`, `lbctl`, the systemd unit and a default config in place.
//! - `fuzz [--minutes N] [TARGET...]`: runs the cargo-fuzz targets ([`fuzz`]); `test` runs
//!   each briefly.
//!
//! xtask itself depends on nothing that needs the eBPF toolchain, so it builds on a fresh machine.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};

mod fuzz;

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
    // The package check (cargo xtask test builds the .deb and lints it).
    "lintian",
    // dpkg-shlibdeps and strip for the package.
    "dpkg-dev",
    "binutils",
    // Headless browser for the status page test (tests/status_page.rs).
    "chromium",
    // A terminal for the lbctl top test (tests/top.rs).
    "tmux",
    // BGP on the router and the lbd nodes of the active-active tests (tests/ecmp_e2e.rs).
    "bird2",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("test") => test(),
        Some("demo") => demo(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("soak") => run_release_bin("lbd-soak", &args[1..]),
        Some("install") => install(&args[1..]),
        Some("deb") if args.get(1).is_some_and(|a| a == "--check") => check_deb(),
        Some("deb") => deb(&args[1..]).map(|path| println!("{}", path.display())),
        Some("fuzz") => fuzz::run(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <setup|test|demo [ecmp]|bench [PART...]|soak [--minutes N] [--mode M]|install [--destdir DIR]|fuzz [--minutes N] [TARGET...]>"
            );
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

/// Disk the test job writes below the checkout at its peak, measured on a clean checkout: 2.3 GB
/// for the debug build (CI then removes it), 1.8 GB for the fuzz crates' shared target dir. A
/// developer's run keeps both: 4.1 GB, rounded up.
const TEST_DISK_NEED_MB: u64 = 5 * 1024;

/// Says how much disk is free where the build goes, and warns when it is less than the job
/// needs, so that a "No space left on device" later is read for what it is.
fn report_disk() {
    let root = root();
    let free_mb = output("df", &["-Pm", &root.to_string_lossy()]).and_then(|out| {
        // POSIX format: a header, then "fs blocks used available capacity mount".
        out.lines()
            .nth(1)?
            .split_whitespace()
            .nth(3)?
            .parse::<u64>()
            .ok()
    });
    match free_mb {
        Some(mb) if mb < TEST_DISK_NEED_MB => eprintln!(
            "test: warning: {mb} MB free under {}, the tests need about {TEST_DISK_NEED_MB} MB",
            root.display()
        ),
        Some(mb) => eprintln!("test: {mb} MB free under {}", root.display()),
        None => eprintln!(
            "test: free disk under {} unknown (df failed)",
            root.display()
        ),
    }
}

fn test() -> anyhow::Result<()> {
    setup()?;
    report_disk();
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
    check_deb()?;
    if is_ci() {
        free_debug_build()?;
    }
    fuzz::ci()
}

/// Whether this run is CI, by the tests' rule (`lb_testkit::is_ci`, not a dependency here: xtask
/// builds before anything else): `CI` set to anything but empty, `0` or `false`.
fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// CI's checkout is thrown away after the run, and the fuzz pass builds into its own target dir
/// (nightly, sanitizers): removing the debug build first makes the job's peak disk the larger of
/// the two builds instead of their sum (2.3 and 1.8 GB, measured). A developer's run keeps it.
fn free_debug_build() -> anyhow::Result<()> {
    let debug = root().join("target").join("debug");
    std::fs::remove_dir_all(&debug).with_context(|| format!("removing {}", debug.display()))?;
    eprintln!("test: CI: removed {} before the fuzz pass", debug.display());
    Ok(())
}

/// Lintian tags accepted on the package, each with why.
const LINTIAN_ACCEPTED: [(&str, &str); 1] = [(
    "initial-upload-closes-no-bugs",
    "the package is built outside Debian's archive: there is no ITP bug to close",
)];

/// The package as CI checks it: built (from the debug binaries, stripped), its control data and
/// contents checked, lintian clean but for [`LINTIAN_ACCEPTED`], installed and removed again in
/// a throwaway root (dpkg --instdir, maintainer scripts run with DPKG_ROOT), and its unit
/// verified by `systemd-analyze verify`.
fn check_deb() -> anyhow::Result<()> {
    let deb = deb(&["--debug".to_string()])?;
    let output = |cmd: &mut Command| -> anyhow::Result<String> {
        eprintln!("+ {}", describe(cmd));
        let out = cmd.output().with_context(|| describe(cmd))?;
        if !out.status.success() {
            bail!(
                "{} failed: {}{}",
                describe(cmd),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let info = output(Command::new("dpkg-deb").arg("--info").arg(&deb))?;
    for want in [
        "Package: lbd",
        "Depends: libc6",
        "conffiles",
        "postinst",
        "prerm",
        "postrm",
    ] {
        anyhow::ensure!(
            info.contains(want),
            "dpkg-deb --info lacks {want:?}:\n{info}"
        );
    }
    let contents = output(Command::new("dpkg-deb").arg("--contents").arg(&deb))?;
    for want in [
        "./usr/sbin/lbd",
        "./usr/sbin/lbctl",
        "./lib/systemd/system/lbd.service",
        "./etc/lbd/lbd.toml",
        "./usr/share/lbd/prometheus/lbd-alerts.yml",
        "./usr/share/lbd/grafana/lbd.json",
        "./usr/share/man/man8/lbd.8.gz",
        "./usr/share/bash-completion/completions/lbctl",
        "./usr/share/doc/lbd/copyright",
    ] {
        anyhow::ensure!(
            contents.lines().any(|l| l.ends_with(want)),
            "the package lacks {want}"
        );
    }
    let lintian = Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(&deb)
        .output()
        .context("running lintian")?;
    let tags = String::from_utf8_lossy(&lintian.stdout).into_owned();
    for line in tags.lines().filter(|l| l.starts_with(['E', 'W', 'I'])) {
        let accepted = LINTIAN_ACCEPTED
            .iter()
            .find(|(tag, _)| line.contains(&format!(": {tag}")));
        match accepted {
            Some((tag, why)) => eprintln!("lintian: {tag} accepted: {why}"),
            None => bail!("lintian: {line}"),
        }
    }

    // Installed into a throwaway root and removed again.
    let root = root().join("target/deb/root");
    let _ = std::fs::remove_dir_all(&root);
    let admin = root.join("var/lib/dpkg");
    for dir in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(dir))?;
    }
    std::fs::write(admin.join("status"), "")?;
    std::fs::write(admin.join("available"), "")?;
    let dpkg = |args: &[&str]| -> anyhow::Result<String> {
        output(
            Command::new("dpkg")
                .arg(format!("--instdir={}", root.display()))
                .arg(format!("--admindir={}", admin.display()))
                .args([
                    "--force-script-chrootless",
                    "--force-depends",
                    "--force-not-root",
                    "--log=/dev/null",
                ])
                .args(args),
        )
    };
    dpkg(&["-i", &deb.display().to_string()])?;
    for want in [
        "usr/sbin/lbd",
        "var/lib/lbd",
        "etc/systemd/system/multi-user.target.wants/lbd.service",
    ] {
        // The enable link points into the root's /lib: not followed here.
        anyhow::ensure!(
            root.join(want).symlink_metadata().is_ok(),
            "after install: no {want}"
        );
    }
    // The installed unit, verified against this host's systemd with its paths pointing into the
    // throwaway root (binaries, man pages).
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/lbd.service"))?
        .replace("/usr/sbin/", &format!("{}/usr/sbin/", root.display()));
    let verify_dir = root.join("verify");
    std::fs::create_dir_all(&verify_dir)?;
    std::fs::write(verify_dir.join("lbd.service"), unit)?;
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(verify_dir.join("lbd.service"))
        .env("MANPATH", root.join("usr/share/man"))
        .output()
        .context("running systemd-analyze")?;
    let said = String::from_utf8_lossy(&verify.stderr).into_owned();
    anyhow::ensure!(
        verify.status.success() && !said.contains("lbd.service:"),
        "systemd-analyze verify lbd.service: {said}"
    );
    dpkg(&["--purge", "lbd"])?;
    for gone in ["usr/sbin/lbd", "var/lib/lbd", "etc/lbd/lbd.toml"] {
        anyhow::ensure!(
            root.join(gone).symlink_metadata().is_err(),
            "after purge: {gone} is left"
        );
    }
    std::fs::remove_dir_all(&root)?;
    eprintln!("deb: {} checked", deb.display());
    Ok(())
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
/// `cargo xtask deb [--debug]`: builds `target/deb/lbd_VERSION-1_amd64.deb` from the release
/// binaries (`--debug`: the debug ones, stripped all the same, for the tests), and returns its
/// path. The package holds lbd and lbctl in /usr/sbin, the unit, the default config as a
/// conffile, completions, man pages, the alert rules and the dashboard under /usr/share/lbd; its
/// maintainer scripts (packaging/debian) create the state directory, enable the service without
/// starting it, and stop it on removal.
fn deb(args: &[String]) -> anyhow::Result<PathBuf> {
    let debug = match args {
        [] => false,
        [flag] if flag == "--debug" => true,
        _ => bail!("usage: cargo xtask deb [--debug]"),
    };
    setup()?;
    let mut build = cargo();
    build.args(["build", "-p", "lb-daemon", "--bins"]);
    if !debug {
        build.arg("--release");
    }
    run(&mut build)?;
    let root = root();
    let bins = root.join(if debug {
        "target/debug"
    } else {
        "target/release"
    });
    let version = format!("{}-1", env!("CARGO_PKG_VERSION"));
    let name = format!("lbd_{version}_amd64");
    let deb_dir = root.join("target/deb");
    let stage = deb_dir.join(&name);
    let _ = std::fs::remove_dir_all(&stage);
    let put =
        |from: &Path, to: &str, mode: u32, replace: bool| place(&stage, from, to, mode, replace);
    // Bytes made here (the unit, the control files, compressed pages) go straight in.
    let write = |to: &str, body: &[u8], mode: u32| -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let dest = stage.join(to.trim_start_matches('/'));
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&dest, body).with_context(|| format!("writing {}", dest.display()))?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    for bin in ["lbd", "lbctl"] {
        let to = format!("/usr/sbin/{bin}");
        put(&bins.join(bin), &to, 0o755, true)?;
        run(Command::new("strip")
            .args([
                "--strip-unneeded",
                "--remove-section=.comment",
                "--remove-section=.note",
            ])
            .arg(stage.join(to.trim_start_matches('/'))))?;
    }
    let unit = std::fs::read_to_string(root.join("packaging/lbd.service"))?
        .replace("/usr/local/sbin/", "/usr/sbin/")
        .replace(
            "Documentation=file:///usr/local/share/doc/lbd/README.md",
            "Documentation=man:lbd(8) man:lbctl(8) file:///usr/share/doc/lbd/README.md.gz",
        )
        .replace("cargo xtask install", "the lbd package");
    write("/lib/systemd/system/lbd.service", unit.as_bytes(), 0o644)?;
    put(
        &root.join("packaging/lbd.toml"),
        "/etc/lbd/lbd.toml",
        0o644,
        true,
    )?;
    put(
        &root.join("packaging/prometheus/lbd-alerts.yml"),
        "/usr/share/lbd/prometheus/lbd-alerts.yml",
        0o644,
        true,
    )?;
    put(
        &root.join("packaging/grafana/lbd.json"),
        "/usr/share/lbd/grafana/lbd.json",
        0o644,
        true,
    )?;
    put(
        &root.join("packaging/debian/copyright"),
        "/usr/share/doc/lbd/copyright",
        0o644,
        true,
    )?;
    // Completions and man pages, generated by the binaries just built.
    let gen_dir = deb_dir.join("gen");
    let _ = std::fs::remove_dir_all(&gen_dir);
    generate_docs(&bins, &gen_dir)?;
    for bin in ["lbd", "lbctl"] {
        put(
            &gen_dir.join(format!("{bin}.bash")),
            &format!("/usr/share/bash-completion/completions/{bin}"),
            0o644,
            true,
        )?;
        put(
            &gen_dir.join(format!("{bin}.zsh")),
            &format!("/usr/share/zsh/vendor-completions/_{bin}"),
            0o644,
            true,
        )?;
        put(
            &gen_dir.join(format!("{bin}.fish")),
            &format!("/usr/share/fish/vendor_completions.d/{bin}.fish"),
            0o644,
            true,
        )?;
    }
    // Compressed as Debian policy wants (gzip -9n: no name, no time stamp).
    let gz = |from: &Path, to: &str| -> anyhow::Result<()> {
        let out = Command::new("gzip").args(["-9nc"]).arg(from).output()?;
        anyhow::ensure!(out.status.success(), "gzip {}", from.display());
        write(to, &out.stdout, 0o644)
    };
    for page in std::fs::read_dir(gen_dir.join("man"))? {
        let page = page?.path();
        let file = page
            .file_name()
            .and_then(|n| n.to_str())
            .context("page name")?;
        gz(&page, &format!("/usr/share/man/man8/{file}.gz"))?;
    }
    gz(&root.join("README.md"), "/usr/share/doc/lbd/README.md.gz")?;
    let changelog = format!(
        "lbd ({version}) unstable; urgency=medium\n\n  * Built by cargo xtask deb.\n\n -- lbd developers <lbd@lbd.dev>  Fri, 04 Dec 2026 00:00:00 +0000\n"
    );
    let changelog_file = deb_dir.join("changelog.Debian");
    std::fs::write(&changelog_file, changelog)?;
    gz(&changelog_file, "/usr/share/doc/lbd/changelog.Debian.gz")?;

    // The control files.
    let shlibs = deb_dir.join("shlibs");
    let _ = std::fs::remove_dir_all(&shlibs);
    std::fs::create_dir_all(shlibs.join("debian"))?;
    std::fs::write(
        shlibs.join("debian/control"),
        "Source: lbd\n\nPackage: lbd\nArchitecture: any\n",
    )?;
    let out = Command::new("dpkg-shlibdeps")
        .args(["-O", "-e"])
        .arg(stage.join("usr/sbin/lbd"))
        .arg("-e")
        .arg(stage.join("usr/sbin/lbctl"))
        .current_dir(&shlibs)
        .output()
        .context("running dpkg-shlibdeps")?;
    anyhow::ensure!(
        out.status.success(),
        "dpkg-shlibdeps: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let depends = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends=").map(str::to_string))
        .context("dpkg-shlibdeps gave no shlibs:Depends")?;
    let size_kib = dir_size(&stage)?.div_ceil(1024);
    let control = format!(
        "Package: lbd\nVersion: {version}\nArchitecture: amd64\nMaintainer: lbd developers <lbd@lbd.dev>\n\
         Installed-Size: {size_kib}\nDepends: {depends}, iproute2\nSection: net\nPriority: optional\n\
         Homepage: https://lbd.dev\n\
         Description: layer-4 load balancer with XDP, Maglev hashing and VRRP\n \
         lbd balances TCP and UDP services on virtual IPs: an XDP program in the NIC\n \
         driver picks a backend by Maglev consistent hashing with a connection table\n \
         and forwards in direct-routing mode, with a userspace proxy where XDP cannot\n \
         run. A VRRPv3 speaker moves the VIPs between nodes and interoperates with\n \
         keepalived. Health checks, lbctl for run-time changes, Prometheus metrics.\n"
    );
    write("/DEBIAN/control", control.as_bytes(), 0o644)?;
    write("/DEBIAN/conffiles", b"/etc/lbd/lbd.toml\n", 0o644)?;
    for script in ["postinst", "prerm", "postrm"] {
        put(
            &root.join("packaging/debian").join(script),
            &format!("/DEBIAN/{script}"),
            0o755,
            true,
        )?;
    }
    let deb = deb_dir.join(format!("{name}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    Ok(deb)
}

/// Bytes of the files under `dir`.
fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Generates completions (`DIR/BIN.SHELL` for bash, zsh, fish) and man pages (`DIR/man/`) of
/// `lbd` and `lbctl` with the binaries in `bins`, from their clap definitions.
fn generate_docs(bins: &Path, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for bin in ["lbd", "lbctl"] {
        let exe = bins.join(bin);
        let flag = |lbd: &'static str, lbctl: &'static str| if bin == "lbd" { lbd } else { lbctl };
        for shell in ["bash", "zsh", "fish"] {
            let out = Command::new(&exe)
                .args([flag("--completions", "completions"), shell])
                .output()
                .with_context(|| format!("running {}", exe.display()))?;
            if !out.status.success() {
                bail!(
                    "{bin}: generating {shell} completions failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let file = dir.join(format!("{bin}.{shell}"));
            std::fs::write(&file, &out.stdout)
                .with_context(|| format!("writing {}", file.display()))?;
        }
        run(Command::new(&exe)
            .arg(flag("--man", "man"))
            .arg(dir.join("man")))?;
    }
    Ok(())
}

/// Completions and man pages of `lbd` and `lbctl` (see [`generate_docs`]), installed with `put`
/// under /usr/local/share.
fn docs(
    root: &Path,
    put: &dyn Fn(&Path, &str, u32, bool) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let gen_dir = root.join("target/release/docs");
    let _ = std::fs::remove_dir_all(&gen_dir);
    generate_docs(&root.join("target/release"), &gen_dir)?;
    for bin in ["lbd", "lbctl"] {
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
            put(&gen_dir.join(format!("{bin}.{shell}")), &to, 0o644, true)?;
        }
    }
    for page in std::fs::read_dir(gen_dir.join("man")).context("reading the man pages")? {
        let page = page?.path();
        let name = page
            .file_name()
            .and_then(|n| n.to_str())
            .context("a man page's name")?
            .to_string();
        put(
            &page,
            &format!("/usr/local/share/man/man8/{name}"),
            0o644,
            true,
        )?;
    }
    Ok(())
}

/// Copies `from` to `to` under `destdir` with `mode`; a file there is kept unless `replace` (a
/// conffile). Written aside and renamed, so a running lbd binary is replaced, not overwritten.
fn place(destdir: &Path, from: &Path, to: &str, mode: u32, replace: bool) -> anyhow::Result<()> {
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
    let tmp = dest.with_extension("xtask-new");
    std::fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, &dest).with_context(|| format!("installing {}", dest.display()))?;
    eprintln!("install: {}", dest.display());
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
    let put =
        |from: &Path, to: &str, mode: u32, replace: bool| place(&destdir, from, to, mode, replace);
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
