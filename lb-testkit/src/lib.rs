//! Test support shared by the test suites of the lbd workspace (`lb-daemon`, `vrrp`, `lbd-tests`).
//!
//! - The one rule for tests that need something the machine may lack (root, `ip`, keepalived, ...):
//!   [`is_ci`] says whether this is CI, [`require_or_skip`] turns a missing requirement into a loud
//!   failure under CI and a printed skip elsewhere. [`netns_unavailable_reason`],
//!   [`root_unavailable_reason`] and [`tool_unavailable_reason`] name what is missing.
//! - Waiting for an event instead of sleeping before an assertion: [`wait_until`],
//!   [`try_wait_until`] and [`wait_until_async`] poll a condition up to a deadline and fail with a
//!   message naming what did not happen.

use std::fmt;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether this run is CI: `CI` set to anything but empty, `0` or `false` (case-insensitive).
///
/// CI systems set `CI=true` (GitHub, GitLab), `CI=1` or other values; a developer may write `CI=0` to
/// say "not CI". Under CI a test that lacks a privilege or tool fails instead of skipping.
pub fn is_ci() -> bool {
    ci_value_is_set(std::env::var("CI").ok().as_deref())
}

fn ci_value_is_set(value: Option<&str>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// The gate of every test that needs something the machine may lack: `true` when `unavailable` is
/// `None` (the test can run).
///
/// When it is `Some(reason)`: under [`is_ci`] this panics, so CI fails loudly instead of passing
/// without testing anything; otherwise it prints `skipping TEST: REASON` to stderr and returns `false`
/// so the test can return early.
///
/// # Panics
/// When `unavailable` is `Some` and [`is_ci`] is true.
pub fn require_or_skip(test: &str, unavailable: Option<String>) -> bool {
    match unavailable {
        None => true,
        Some(reason) if is_ci() => {
            panic!("{test}: {reason}; CI is set, so this is a failure, not a skip")
        }
        Some(reason) => {
            // Written to the stderr handle directly: the test harness captures `eprintln!` of passing
            // tests, and a skip should show.
            let _ = writeln!(std::io::stderr(), "skipping {test}: {reason}");
            false
        }
    }
}

/// Why this process cannot make network namespaces and work in them, or `None` when it can: it needs
/// CAP_NET_ADMIN, CAP_NET_RAW and CAP_SYS_ADMIN (root) and a working iproute2 `ip`.
pub fn netns_unavailable_reason() -> Option<String> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_NET_RAW: u32 = 13;
    const CAP_SYS_ADMIN: u32 = 21;
    let status = match std::fs::read_to_string("/proc/self/status") {
        Ok(s) => s,
        Err(e) => return Some(format!("cannot read /proc/self/status: {e}")),
    };
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    let Some(cap_eff) = cap_eff else {
        return Some("no CapEff line in /proc/self/status".to_owned());
    };
    let missing: Vec<&str> = [
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_NET_RAW, "CAP_NET_RAW"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .into_iter()
    .filter(|(bit, _)| cap_eff & (1u64 << bit) == 0)
    .map(|(_, name)| name)
    .collect();
    if !missing.is_empty() {
        return Some(format!(
            "missing {} (run the namespace tests as root, e.g. `sudo -E cargo test`)",
            missing.join(", ")
        ));
    }
    match Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("iproute2 `ip -V` failed ({s})")),
        Err(e) => Some(format!("iproute2 `ip` is not usable: {e}")),
    }
}

/// Why this process is not root, or `None` when it is (BPF_PROG_TEST_RUN and map creation need
/// CAP_BPF and CAP_NET_ADMIN, which root has).
pub fn root_unavailable_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    (euid != 0).then(|| format!("needs root (CAP_BPF, CAP_NET_ADMIN), running as uid {euid}"))
}

/// Why `program` cannot be used, or `None` when `program ARG` (e.g. `--version`) runs and succeeds.
pub fn tool_unavailable_reason(program: &str, arg: &str) -> Option<String> {
    match Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!(
            "`{program} {arg}` failed ({s}); `cargo xtask setup` installs it"
        )),
        Err(e) => Some(format!(
            "`{program}` is not installed ({e}); `cargo xtask setup` installs it"
        )),
    }
}

/// A condition did not hold before its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    what: String,
    within: Duration,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not {} within {:?}", self.what, self.within)
    }
}

impl std::error::Error for TimedOut {}

/// Pauses between polls: short at first (most events come quickly), then at most 100 ms, never
/// past the deadline.
struct Backoff {
    deadline: Instant,
    pause: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(2);
    const MAX: Duration = Duration::from_millis(100);

    fn new(within: Duration) -> Self {
        Self {
            deadline: Instant::now() + within,
            pause: Self::FIRST,
        }
    }

    /// The next pause, or `None` once the deadline has passed.
    fn next(&mut self) -> Option<Duration> {
        let left = self.deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() {
            return None;
        }
        let pause = self.pause.min(left);
        self.pause = (self.pause * 2).min(Self::MAX);
        Some(pause)
    }
}

/// Polls `cond` until it holds, for at most `within`. `what` names the event for the error:
/// "not `what` within 3s".
///
/// The condition is checked once more after the deadline, so a slow poll never loses an event
/// that did happen.
pub fn wait_until(
    what: &str,
    within: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<(), TimedOut> {
    try_wait_until(what, within, || Ok::<_, TimedOut>(cond()))
}

/// [`wait_until`] for a condition that can fail: its first error ends the wait and is returned.
/// `E` takes the [`TimedOut`] error too (e.g. `anyhow::Error`).
pub fn try_wait_until<E: From<TimedOut>>(
    what: &str,
    within: Duration,
    mut cond: impl FnMut() -> Result<bool, E>,
) -> Result<(), E> {
    let mut backoff = Backoff::new(within);
    loop {
        if cond()? {
            return Ok(());
        }
        match backoff.next() {
            Some(pause) => std::thread::sleep(pause),
            None if cond()? => return Ok(()),
            None => {
                return Err(TimedOut {
                    what: what.to_owned(),
                    within,
                }
                .into());
            }
        }
    }
}

/// [`wait_until`] inside a tokio runtime: polls with `tokio::time::sleep`, so the tasks that make
/// the condition true keep running on a current-thread runtime.
pub async fn wait_until_async(
    what: &str,
    within: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<(), TimedOut> {
    let mut backoff = Backoff::new(within);
    loop {
        if cond() {
            return Ok(());
        }
        match backoff.next() {
            Some(pause) => tokio::time::sleep(pause).await,
            None if cond() => return Ok(()),
            None => {
                return Err(TimedOut {
                    what: what.to_owned(),
                    within,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_values() {
        for set in ["true", "1", "yes", "TRUE"] {
            assert!(ci_value_is_set(Some(set)), "{set:?}");
        }
        for unset in [None, Some(""), Some("0"), Some("false"), Some("False")] {
            assert!(!ci_value_is_set(unset), "{unset:?}");
        }
    }

    #[test]
    fn nothing_missing_means_run() {
        assert!(require_or_skip("t", None));
    }

    #[test]
    fn wait_returns_once_the_condition_holds() {
        let mut polls = 0;
        wait_until("three polls", Duration::from_secs(5), || {
            polls += 1;
            polls == 3
        })
        .unwrap();
        assert_eq!(polls, 3);
    }

    #[test]
    fn wait_times_out_with_the_event_named() {
        let err = wait_until("never", Duration::from_millis(20), || false).unwrap_err();
        assert_eq!(err.to_string(), "not never within 20ms");
    }

    #[test]
    fn a_failing_condition_ends_the_wait_with_its_error() {
        #[derive(Debug, PartialEq)]
        enum E {
            Cond,
            Timeout,
        }
        impl From<TimedOut> for E {
            fn from(_: TimedOut) -> Self {
                E::Timeout
            }
        }
        let mut polls = 0;
        let r = try_wait_until("x", Duration::from_secs(5), || {
            polls += 1;
            if polls == 2 { Err(E::Cond) } else { Ok(false) }
        });
        assert_eq!(r, Err(E::Cond));
        assert_eq!(
            try_wait_until("x", Duration::ZERO, || Ok::<_, E>(false)),
            Err(E::Timeout)
        );
    }

    #[test]
    fn async_wait_lets_other_tasks_run() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let setter = flag.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                setter.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            wait_until_async("the flag set", Duration::from_secs(5), || {
                flag.load(std::sync::atomic::Ordering::SeqCst)
            })
            .await
            .unwrap();
        });
    }
}
