//! Running external commands (`ip`, `ethtool`, `curl`) with a time limit, and errors that name the command.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Time limit for configuration commands (`ip`, `ethtool`, `sysctl`).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// The command line of `cmd` as a shell-like string, for error messages: `ip -n lbdt-x-br link add vc ...`.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion with stdin closed and stdout/stderr captured; kills it after `timeout`.
///
/// Returns the output whatever the exit status; fails only when the command cannot start or runs too long.
pub fn output(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{what}`"))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = match wait_timeout(&mut child, timeout) {
        Ok(Some(status)) => status,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{what}` did not finish within {timeout:?}; killed it");
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e).with_context(|| format!("waiting for `{what}`"));
        }
    };
    Ok(Output {
        status,
        stdout: join_drain(stdout),
        stderr: join_drain(stderr),
    })
}

/// Like [`output`], but a non-zero exit status is an error that quotes the command and its stderr.
pub fn checked(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let what = describe(cmd);
    let out = output(cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Runs `ip ARGS...` with [`COMMAND_TIMEOUT`] and fails on a non-zero exit status.
pub fn ip(args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    checked(&mut cmd, COMMAND_TIMEOUT)
}

/// Waits for `child` to exit for at most `timeout`; `Ok(None)` when it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Reads a pipe to its end on a thread, so a chatty child never blocks on a full pipe.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Option<JoinHandle<Vec<u8>>> {
    pipe.map(|mut p| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            buf
        })
    })
}

fn join_drain(handle: Option<JoinHandle<Vec<u8>>>) -> Vec<u8> {
    handle.and_then(|h| h.join().ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_reports_the_command_and_stderr() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo oops >&2; exit 3"]);
        let err = checked(&mut cmd, Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sh -c echo oops"), "{err}");
        assert!(err.contains("oops"), "{err}");
    }

    #[test]
    fn output_kills_a_command_that_runs_too_long() {
        let mut cmd = Command::new("sleep");
        cmd.arg("10");
        let start = Instant::now();
        let err = output(&mut cmd, Duration::from_millis(100))
            .unwrap_err()
            .to_string();
        assert!(err.contains("did not finish"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn missing_program_is_an_error_naming_it() {
        let mut cmd = Command::new("/nonexistent/lbd-nothing");
        let err = output(&mut cmd, Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/lbd-nothing"), "{err}");
    }
}
