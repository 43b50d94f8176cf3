//! `lbctl top` in a real terminal: tmux (80×24) runs a shell, the shell runs `lbctl top` against
//! an lbd in a namespace; the screen shows the services and backends, the rates move under
//! traffic, and `q` ends it with exit code 0, the alternate screen left and the cursor back.

use std::{
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use lbd_tests::{
    Host, bin_path, client,
    lbd::{self, LbdNode, Mode, SingleNode},
    netns_tests_enabled, test_tag,
};

/// A tmux server of the test's own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(tag: &str, shell_cmd: &str) -> Result<Tmux> {
        let tmux = Tmux {
            socket: format!("{tag}-tmux"),
        };
        tmux.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "80",
            "-y",
            "24",
            shell_cmd,
        ])?;
        Ok(tmux)
    }

    fn run(&self, args: &[&str]) -> Result<Output> {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .env_remove("TMUX")
            .output()
            .context("running tmux (cargo xtask setup installs it)")?;
        ensure!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    fn screen(&self) -> Result<String> {
        let out = self.run(&["capture-pane", "-p", "-t", "t"])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn display(&self, format: &str) -> Result<String> {
        let out = self.run(&["display-message", "-p", "-t", "t", format])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn keys(&self, keys: &[&str]) -> Result<()> {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        self.run(&args).map(drop)
    }

    /// Polls the screen until `check` holds (10 s at most); returns that screen.
    fn wait_screen(&self, what: &str, check: impl Fn(&str) -> bool) -> Result<String> {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < Duration::from_secs(10) {
            last = self.screen()?;
            if check(&last) {
                return Ok(last);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("timed out waiting for {what}; the screen:\n{last}")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// The CONN/S figure of the service row of `service` (`web 198.18.0.100:80  3/3  tcp  N ...`).
fn service_conn_rate(screen: &str, service: &str) -> Option<String> {
    let line = screen
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{service} ")))?;
    line.split_whitespace().nth(4).map(str::to_owned)
}

#[test]
fn top_shows_the_services_follows_traffic_and_quits_cleanly() -> Result<()> {
    let name = "lbctl_top";
    if !netns_tests_enabled(name) {
        return Ok(());
    }
    let SingleNode {
        topo,
        backends: _backends,
        peer: _peer,
    } = SingleNode::build(name, Mode::XdpGeneric)?;
    let node = Host::Lbd(1);
    let all: Vec<_> = topo.backends().into_iter().map(|b| topo.ip(b)).collect();
    let socket = LbdNode::socket_path(&topo, node);
    let config = lbd::all_backends_config(&topo, node, Mode::XdpGeneric);
    let lbd = LbdNode::start(&topo, node, &config)?;
    for ip in &all {
        lbd.wait_backend_state("web", &ip.to_string(), "active")?;
    }

    let tmux = Tmux::start(
        &test_tag(name),
        "env -i TERM=xterm-256color PS1='$ ' bash --norc --noprofile",
    )?;
    let lbctl = bin_path("lbctl")?;
    tmux.keys(&[
        &format!("{} --socket {} top", lbctl.display(), quoted(&socket)),
        "Enter",
    ])?;
    let screen = tmux.wait_screen("the services on the screen", |s| {
        s.contains("web 198.18.0.100:80") && s.contains("dns 198.18.0.100:5353")
    })?;
    for ip in &all {
        ensure!(
            screen.contains(&ip.to_string()),
            "{ip} not shown:\n{screen}"
        );
    }
    ensure!(
        screen.contains("xdp-generic") && screen.contains("CONN/S") && screen.contains("q quit"),
        "{screen}"
    );
    ensure!(
        screen.lines().all(|l| l.chars().count() <= 80),
        "wider than 80 columns:\n{screen}"
    );
    ensure!(
        service_conn_rate(&screen, "web").as_deref() == Some("0"),
        "no traffic yet, but:\n{screen}"
    );
    ensure!(
        tmux.display("#{alternate_on}")? == "1",
        "top draws on the alternate screen"
    );

    // Traffic: 40 connections over 4 s; the screen's rate for web rises above zero.
    let vip = topo.vip_http();
    let load = topo.client().enter(move || {
        std::thread::spawn(move || -> Result<()> {
            for i in 0..40 {
                client::http_get(vip).with_context(|| format!("connection {i}"))?;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        })
    })?;
    let moving = tmux.wait_screen("web's conn/s above zero", |s| {
        service_conn_rate(s, "web").is_some_and(|r| r != "0")
    })?;
    eprintln!("lbctl top under traffic:\n{moving}");
    load.join()
        .map_err(|_| anyhow::anyhow!("the load thread panicked"))??;

    // q: back to the shell, the terminal as it was, exit code 0.
    tmux.keys(&["q"])?;
    let started = Instant::now();
    while tmux.display("#{alternate_on}")? != "0" {
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "still on the alternate screen after q:\n{}",
            tmux.screen()?
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    tmux.keys(&["echo top-exit-$?", "Enter"])?;
    tmux.wait_screen("the shell after top", |s| s.contains("top-exit-0"))?;
    ensure!(
        tmux.display("#{cursor_flag}")? == "1",
        "cursor still hidden"
    );
    drop(tmux);
    lbd.stop()
}

fn quoted(p: &Path) -> String {
    format!("'{}'", p.display())
}
