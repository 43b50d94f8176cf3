//! Network namespaces as RAII values, and what runs inside them.
//!
//! - [`Netns`]: created with `ip netns add`, deleted on drop after killing whatever still runs in it.
//! - [`Netns::run`] / [`Netns::output`]: one command through `ip netns exec`, time-limited.
//! - [`Netns::spawn`]: a long-running child in the namespace, owned by a [`Spawned`] guard that stops it on drop.
//! - [`Netns::enter`]: a closure on a fresh thread that has joined the namespace (`setns(CLONE_NEWNET)`), so
//!   sockets it creates belong there; the test process itself plays client or server.
//! - [`sweep`] and [`sweep_orphans`]: remove namespaces left behind by earlier, crashed runs.
//!
//! Names are `lbdt-<tag>-<role>` ([`ns_name`]); the tag (see [`crate::test_tag`]) keeps parallel tests apart.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::NS_PREFIX;
use crate::exec::{self, COMMAND_TIMEOUT};

/// Where iproute2 keeps the bind mounts that name network namespaces.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Serialises `ip netns add` within this process.
static CREATE_LOCK: Mutex<()> = Mutex::new(());

/// How many lines of a spawned child's stdout and stderr a [`Spawned`] keeps.
const LOG_LINES: usize = 200;

/// The namespace name for `role` under `tag`: `lbdt-<tag>-<role>`.
pub fn ns_name(tag: &str, role: &str) -> String {
    format!("{NS_PREFIX}{tag}-{role}")
}

/// Checks that `name` is safe as a namespace name and a path component.
fn validate_name(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && !name.starts_with('.'),
        "invalid namespace name {name:?}: use 1-64 characters from [A-Za-z0-9._-]"
    );
    Ok(())
}

/// A named network namespace that is deleted (with everything running in it) when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `lbdt-<tag>-<role>` (see [`ns_name`]).
    pub fn new(tag: &str, role: &str) -> Result<Netns> {
        Netns::create(&ns_name(tag, role))
    }

    /// Creates a namespace with exactly this name (`ip netns add NAME`); fails if it exists.
    pub fn create(name: &str) -> Result<Netns> {
        validate_name(name)?;
        // The first `ip netns add` on a machine sets up the /var/run/netns mount; concurrent first calls can
        // stack mounts, so creations from this process go one at a time.
        let _one_at_a_time = CREATE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        exec::ip(&["netns", "add", name])
            .with_context(|| format!("creating network namespace {name}"))?;
        Ok(Netns {
            name: name.to_owned(),
        })
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file under [`NETNS_RUN_DIR`] that holds the namespace.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(&self.name)
    }

    /// A [`Command`] for `program` run through `ip netns exec NAME`; add arguments and run it yourself.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `program args...` in the namespace (`ip netns exec`) with [`COMMAND_TIMEOUT`]; a non-zero exit
    /// status is an error quoting the command and its stderr.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        let mut cmd = self.command(program);
        cmd.args(args);
        exec::checked(&mut cmd, COMMAND_TIMEOUT)
    }

    /// Runs `program args...` in the namespace with `timeout` and returns its output whatever its exit status.
    pub fn output(&self, program: &str, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut cmd = self.command(program);
        cmd.args(args);
        exec::output(&mut cmd, timeout)
    }

    /// Runs `ip -n NAME ARGS...`, failing on a non-zero exit status.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        exec::ip(&all)
    }

    /// Writes a sysctl of this namespace, e.g. `set_sysctl("net/ipv4/conf/all/arp_ignore", "1")` (the path is
    /// relative to `/proc/sys`, with `/` or `.` as separator).
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        let rel = key.replace('.', "/");
        ensure!(
            !rel.split('/').any(|part| part.is_empty() || part == ".."),
            "invalid sysctl name {key:?}"
        );
        let path = Path::new("/proc/sys").join(rel);
        let value = value.to_owned();
        self.enter(move || std::fs::write(&path, value.as_bytes()))?
            .with_context(|| format!("setting sysctl {key} in namespace {}", self.name))
    }

    /// Starts `cmd` inside the namespace and returns a guard that stops it on drop.
    ///
    /// The child joins the namespace between fork and exec (`setns`), so `cmd` keeps its arguments,
    /// environment and working directory. Its stdin is closed; stdout and stderr are captured line by line
    /// (see [`Spawned::wait_for_line`], [`Spawned::stdout_lines`], [`Spawned::stderr_tail`]).
    pub fn spawn(&self, mut cmd: Command) -> Result<Spawned> {
        let what = exec::describe(&cmd);
        let ns_file =
            File::open(self.path()).with_context(|| format!("opening namespace {}", self.name))?;
        let ns_fd = ns_file.as_raw_fd();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and only makes the async-signal-safe
        // `setns` system call on a descriptor that stays open in the parent until `spawn` returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting `{what}` in namespace {}", self.name))?;
        drop(ns_file);
        let stdout_log = Arc::new(Mutex::new(VecDeque::new()));
        let stderr_log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::sync_channel(1024);
        if let Some(out) = child.stdout.take() {
            pump_lines(out, Arc::clone(&stdout_log), Some(tx));
        }
        if let Some(err) = child.stderr.take() {
            pump_lines(err, Arc::clone(&stderr_log), None);
        }
        Ok(Spawned {
            child,
            label: format!("`{what}` in {}", self.name),
            lines: rx,
            stdout_log,
            stderr_log,
            exited: None,
        })
    }

    /// Runs `f` on a new thread that has joined this namespace and returns its result.
    ///
    /// Sockets `f` creates belong to the namespace and keep working after `f` returns, from any thread. Threads
    /// `f` spawns start in the namespace too. A panic in `f` is resumed in the caller. Fails only when the
    /// namespace cannot be joined.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let ns_file =
            File::open(self.path()).with_context(|| format!("opening namespace {}", self.name))?;
        thread::scope(|scope| {
            let handle = thread::Builder::new()
                .name(format!("netns {}", self.name))
                .spawn_scoped(scope, move || -> Result<T> {
                    // SAFETY: `setns` only reads the descriptor, which `ns_file` keeps open for the call; it
                    // changes the namespace of this fresh thread alone.
                    let rc = unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        return Err(std::io::Error::last_os_error())
                            .with_context(|| format!("setns into namespace {}", self.name));
                    }
                    drop(ns_file);
                    Ok(f())
                })
                .context("spawning a thread to enter the namespace")?;
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Pids of the processes whose network namespace is this one (`ip netns pids`).
    pub fn pids(&self) -> Result<Vec<i32>> {
        pids_in(&self.name)
    }

    /// Kills every process in the namespace and deletes it now, reporting errors (drop only prints them).
    pub fn delete(mut self) -> Result<()> {
        let name = std::mem::take(&mut self.name);
        delete_ns(&name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return; // already deleted by `delete`
        }
        if let Err(e) = delete_ns(&self.name) {
            eprintln!("lbd-tests: cleaning up namespace {}: {e:#}", self.name);
        }
    }
}

/// Pids in the namespace called `name`, without our own.
fn pids_in(name: &str) -> Result<Vec<i32>> {
    let out = exec::ip(&["netns", "pids", name])?;
    let me = std::process::id() as i32;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|&p| p != me && p > 1)
        .collect())
}

/// Kills the processes in namespace `name` (SIGKILL) and deletes it.
fn delete_ns(name: &str) -> Result<()> {
    validate_name(name)?;
    if !Path::new(NETNS_RUN_DIR).join(name).exists() {
        return Ok(());
    }
    // A failed `pids` must not keep the namespace alive: delete it regardless.
    let pids = pids_in(name).unwrap_or_default();
    for pid in pids {
        // SAFETY: plain kill(2) on a pid the kernel reported inside this namespace.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    match exec::ip(&["netns", "del", name]) {
        // Another sweep (a parallel test building its topology) removed it in between.
        Err(_) if !Path::new(NETNS_RUN_DIR).join(name).exists() => Ok(()),
        r => r
            .map(drop)
            .with_context(|| format!("deleting network namespace {name}")),
    }
}

/// Names of all namespaces under [`NETNS_RUN_DIR`] that start with `prefix`.
pub fn list(prefix: &str) -> Result<Vec<String>> {
    let dir = match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {NETNS_RUN_DIR}")),
    };
    let mut names = Vec::new();
    for entry in dir {
        let entry = entry.with_context(|| format!("listing {NETNS_RUN_DIR}"))?;
        if let Some(name) = entry.file_name().to_str()
            && name.starts_with(prefix)
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Deletes every namespace whose name starts with `prefix` (killing the processes in it first) and returns
/// their names. The prefix must start with [`NS_PREFIX`], so this can never remove namespaces it did not make.
pub fn sweep(prefix: &str) -> Result<Vec<String>> {
    ensure!(
        prefix.starts_with(NS_PREFIX) && prefix.len() > NS_PREFIX.len(),
        "refusing to sweep namespaces with prefix {prefix:?}: it must start with {NS_PREFIX:?} and name a tag"
    );
    let names = list(prefix)?;
    let mut errors = Vec::new();
    for name in &names {
        if let Err(e) = delete_ns(name) {
            errors.push(format!("{e:#}"));
        }
    }
    if !errors.is_empty() {
        bail!("sweeping {prefix:?}: {}", errors.join("; "));
    }
    Ok(names)
}

/// Deletes namespaces made by test processes that no longer exist: names `lbdt-<6 hex>-<pid>-<role>` (the
/// shape [`crate::test_tag`] produces) whose pid has no `/proc` entry. Returns the names removed.
pub fn sweep_orphans() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in list(NS_PREFIX)? {
        let mut parts = name[NS_PREFIX.len()..].splitn(3, '-');
        let (Some(hash), Some(pid), Some(_role)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if hash.len() != 6
            || !hash.bytes().all(|b| b.is_ascii_hexdigit())
            || pid == std::process::id()
        {
            continue;
        }
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        delete_ns(&name).with_context(|| format!("removing orphaned namespace {name}"))?;
        removed.push(name);
    }
    Ok(removed)
}

/// Reads `pipe` line by line on a thread into `log` (last [`LOG_LINES`] kept) and, if given, `tx`.
fn pump_lines<R: Read + Send + 'static>(
    pipe: R,
    log: Arc<Mutex<VecDeque<String>>>,
    tx: Option<SyncSender<String>>,
) {
    thread::spawn(move || {
        let reader = BufReader::new(pipe);
        for line in reader.lines() {
            let Ok(line) = line else { break };
            {
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                if log.len() == LOG_LINES {
                    log.pop_front();
                }
                log.push_back(line.clone());
            }
            if let Some(tx) = &tx {
                // A full channel means nobody is waiting for lines: dropping them is fine, the log has them.
                let _ = tx.try_send(line);
            }
        }
    });
}

/// A child process running in a namespace; on drop it gets SIGTERM, then SIGKILL after a second.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
    label: String,
    lines: Receiver<String>,
    stdout_log: Arc<Mutex<VecDeque<String>>>,
    stderr_log: Arc<Mutex<VecDeque<String>>>,
    exited: Option<ExitStatus>,
}

impl Spawned {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What was started and where, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Waits up to `timeout` for a stdout line (read since the last call) that satisfies `pred` and returns it.
    /// Fails when the child exits first or the time runs out; the error quotes the child's stderr.
    pub fn wait_for_line(
        &mut self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return Ok(line),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{} printed no expected line within {timeout:?}; stderr: {}",
                        self.label,
                        self.stderr_tail()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self
                        .try_status()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "running".into());
                    bail!(
                        "{} closed stdout before printing the expected line ({status}); stderr: {}",
                        self.label,
                        self.stderr_tail()
                    )
                }
            }
        }
    }

    /// Waits up to `timeout` for the line `ready`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        self.wait_for_line(|l| l.trim() == "ready", timeout)
            .map(drop)
    }

    /// The exit status if the child has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// The last stdout lines seen (up to 200).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The last stderr lines seen (up to 200), joined with ` | `.
    pub fn stderr_tail(&self) -> String {
        let log = self.stderr_log.lock().unwrap_or_else(|p| p.into_inner());
        if log.is_empty() {
            "(empty)".to_owned()
        } else {
            log.iter().cloned().collect::<Vec<_>>().join(" | ")
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the child if it is still running.
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        let pid = i32::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill(2) on our own unreaped child: the pid cannot have been reused.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("signalling {}", self.label));
        }
        Ok(())
    }

    /// Kills the child with SIGKILL (no chance to clean up: a crash) and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_status() {
            return Ok(status);
        }
        self.child
            .kill()
            .with_context(|| format!("killing {}", self.label))?;
        let status = self
            .child
            .wait()
            .with_context(|| format!("reaping {}", self.label))?;
        self.exited = Some(status);
        Ok(status)
    }

    /// Sends SIGTERM and waits up to `timeout` for the child to exit; kills it and fails if it does not.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        match exec::wait_timeout(&mut self.child, timeout)
            .with_context(|| format!("waiting for {}", self.label))?
        {
            Some(status) => {
                self.exited = Some(status);
                Ok(status)
            }
            None => {
                let _ = self.child.kill();
                self.exited = self.child.wait().ok();
                bail!(
                    "{} did not exit within {timeout:?} of SIGTERM; killed it",
                    self.label
                )
            }
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if !self.is_running() {
            return;
        }
        if self.terminate(Duration::from_secs(1)).is_err() {
            eprintln!("lbd-tests: {} ignored SIGTERM; killed", self.label);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("lbdt-abc123-4242-client").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("../etc").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn sweep_refuses_foreign_prefixes() {
        assert!(sweep("").is_err());
        assert!(sweep("lbdt-").is_err());
        assert!(sweep("docker").is_err());
    }
}
