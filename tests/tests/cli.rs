//! The binaries' answers to bad input: configs, privileges, a daemon that is not running.

use std::process::Command;

use anyhow::{Context, Result, ensure};
use lbd_tests::bin_path;

/// A directory of files for one test, removed when the test ends, passed or failed.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(test: &str) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("lbdt-cli-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }

    /// Writes `text` to the file `name` in it.
    fn file(&self, name: &str, text: &str) -> Result<std::path::PathBuf> {
        let p = self.0.join(name);
        std::fs::write(&p, text)?;
        Ok(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const GOOD: &str = "[daemon]\ninterface = \"eth0\"\n[[service]]\nvip = \"198.18.0.100:80\"\nbackends = [ { addr = \"198.18.0.21\" } ]\n";

/// `lbd --check-config` on bad configs: exit 1 and a one-line message naming the key and value.
#[test]
fn check_config_names_key_and_value() -> Result<()> {
    let scratch = Scratch::new("check_config_names_key_and_value")?;
    let lbd = bin_path("lbd")?;
    let cases = [
        (
            "missing-daemon.toml",
            "[[service]]\nvip = \"198.18.0.100:80\"\n",
            "missing field `daemon`",
        ),
        (
            "bad-datapath.toml",
            "[daemon]\ninterface = \"eth0\"\ndatapath = \"fast\"\n",
            "daemon.datapath: \"fast\" is not a data path (allowed: auto, xdp, xdp-generic, userspace)",
        ),
        (
            "bad-weight.toml",
            "[daemon]\ninterface = \"eth0\"\n[[service]]\nvip = \"198.18.0.100:80\"\nbackends = [ { addr = \"198.18.0.21\", weight = -3 } ]\n",
            "service[0].backends[0].weight: -3 is out of range (allowed: 1 to 1000)",
        ),
        (
            "bad-vip.toml",
            "[daemon]\ninterface = \"eth0\"\n[[service]]\nvip = \"example.com:80\"\n",
            "service[0].vip: \"example.com:80\" is not an address and port (e.g. 198.18.0.100:80 or [2001:db8::100]:80)",
        ),
        (
            "typo.toml",
            "[daemon]\ninterface = \"eth0\"\n[[service]]\nvip = \"198.18.0.100:80\"\nbackend = []\n",
            "unknown field `backend`",
        ),
        ("not-toml.toml", "[daemon\n", "line 1"),
    ];
    for (file, text, want) in cases {
        let path = scratch.file(file, text)?;
        let out = Command::new(&lbd)
            .arg("--check-config")
            .arg(&path)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(1),
            "{file}: exit {:?}, stderr {err}",
            out.status.code()
        );
        ensure!(err.contains(want), "{file}: want {want:?} in {err:?}");
        ensure!(
            err.trim().lines().count() == 1,
            "{file}: message is not one line: {err:?}"
        );
    }
    let path = scratch.file("good.toml", GOOD)?;
    let out = Command::new(&lbd)
        .arg("--check-config")
        .arg(&path)
        .output()?;
    ensure!(
        out.status.success(),
        "good config rejected: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(String::from_utf8_lossy(&out.stdout).contains("ok (1 services, 1 backends)"));
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("bounds need"),
        "the descriptor budget"
    );
    // A host whose hard limit is below what the bounds need: said, with the fix.
    let out = Command::new("prlimit")
        .arg("--nofile=1024:2048")
        .arg(&lbd)
        .arg("--check-config")
        .arg(&path)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success()
            && text.contains("warning: the configured bounds need")
            && text.contains("the hard limit is 2048")
            && text.contains("LimitNOFILE"),
        "under a hard limit of 2048: {text}"
    );
    let out = Command::new(&lbd)
        .arg("--check-config")
        .arg("/nonexistent/lbd.toml")
        .output()?;
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/lbd.toml: cannot read"),
        "missing file"
    );
    Ok(())
}

/// lbd without CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, asked for XDP, names what it lacks and
/// exits 1.
#[test]
fn unprivileged_lbd_says_what_it_lacks() -> Result<()> {
    let scratch = Scratch::new("unprivileged_lbd_says_what_it_lacks")?;
    use std::os::unix::process::CommandExt as _;
    let path = scratch.file(
        "unpriv.toml",
        &GOOD.replace("[daemon]\n", "[daemon]\ndatapath = \"xdp\"\n"),
    )?;
    // Readable by the unprivileged user.
    std::fs::set_permissions(
        path.parent().context("dir")?,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let mut cmd = Command::new(bin_path("lbd")?);
    cmd.arg("--config").arg(&path);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1),
        "exit {:?}: {err}",
        out.status.code()
    );
    ensure!(
        err.contains("lbd lacks CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF"),
        "stderr: {err}"
    );
    ensure!(
        err.contains("run it as root or grant them"),
        "no advice: {err}"
    );
    Ok(())
}

/// lbctl against a daemon that is not running: exit 1 and what to do.
#[test]
fn lbctl_reports_a_missing_daemon() -> Result<()> {
    let out = Command::new(bin_path("lbctl")?)
        .args(["--socket", "/nonexistent/lbd.sock", "status"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "exit {:?}", out.status.code());
    ensure!(
        err.trim()
            == "lbctl: lbd is not running: no control socket at /nonexistent/lbd.sock (start it with `systemctl start lbd`, or pass --socket / LBD_SOCKET)",
        "stderr: {err}"
    );
    let out = Command::new(bin_path("lbctl")?)
        .args(["status", "--bogus"])
        .output()?;
    ensure!(
        out.status.code() == Some(2),
        "bad flag: exit {:?}",
        out.status.code()
    );
    Ok(())
}

/// The shipped systemd unit passes `systemd-analyze verify` (with its binaries and config in
/// place), and the shipped default config is valid.
#[test]
fn systemd_unit_verifies_and_default_config_is_valid() -> Result<()> {
    let scratch = Scratch::new("systemd_unit_verifies_and_default_config_is_valid")?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let lbd = bin_path("lbd")?;
    let out = Command::new(&lbd)
        .arg("--check-config")
        .arg(root.join("packaging/lbd.toml"))
        .output()?;
    ensure!(
        out.status.success(),
        "default config: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    if !lb_testkit::require_or_skip(
        "systemd_unit_verifies_and_default_config_is_valid",
        lb_testkit::tool_unavailable_reason("systemd-analyze", "--version"),
    ) {
        return Ok(());
    }
    let unit = std::fs::read_to_string(root.join("packaging/lbd.service"))?;
    let unit = unit
        .replace("/usr/local/sbin/lbd ", &format!("{} ", lbd.display()))
        .replace(
            "/etc/lbd/lbd.toml",
            &root.join("packaging/lbd.toml").display().to_string(),
        );
    let path = scratch.file("lbd.service", &unit)?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    // Lines about other units on this machine are not ours.
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("lbd.service")).collect();
    ensure!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {err}"
    );
    Ok(())
}

/// Completions and man pages come from the clap definitions: bash accepts the scripts and they
/// know the newest options; every man page renders with groff without a warning.
#[test]
fn completions_and_man_pages_are_generated() -> Result<()> {
    let scratch = Scratch::new("completions_and_man_pages_are_generated")?;
    for (bin, args, wants) in [
        (
            "lbctl",
            &["completions", "bash"][..],
            &["resign", "maintenance"][..],
        ),
        (
            "lbd",
            &["--completions", "bash"][..],
            &["--replace", "--detach"][..],
        ),
    ] {
        let out = Command::new(bin_path(bin)?).args(args).output()?;
        ensure!(
            out.status.success(),
            "{bin} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let script = String::from_utf8(out.stdout).context("completion script")?;
        for want in wants {
            ensure!(
                script.contains(want),
                "{bin}'s bash completion lacks {want}"
            );
        }
        let path = scratch.file(&format!("{bin}.bash"), &script)?;
        let check = Command::new("bash").arg("-n").arg(&path).output()?;
        ensure!(
            check.status.success(),
            "bash -n {bin}.bash: {}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
    let dir = std::env::temp_dir().join(format!("lbdt-cli-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (bin, args) in [("lbctl", &["man"][..]), ("lbd", &["--man"][..])] {
        let out = Command::new(bin_path(bin)?).args(args).arg(&dir).output()?;
        ensure!(
            out.status.success(),
            "{bin} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut pages: Vec<String> = std::fs::read_dir(&dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    pages.sort();
    for want in [
        "lbd.8",
        "lbctl.8",
        "lbctl-backend-drain.8",
        "lbctl-vrrp-resign.8",
    ] {
        ensure!(pages.iter().any(|p| p == want), "no {want} in {pages:?}");
    }
    for page in &pages {
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(dir.join(page))
            .output()
            .context("running groff (cargo xtask setup installs groff-base)")?;
        ensure!(
            out.status.success() && out.stderr.is_empty(),
            "groff on {page}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
