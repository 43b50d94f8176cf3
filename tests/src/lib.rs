//! Network-namespace test harness for lbd.
//!
//! Integration tests (in `tests/tests/`) and `cargo xtask demo` build a small switched network out of Linux
//! network namespaces, start test backends in it and act as the client, all from one process and without
//! touching the host's own interfaces. Everything lives in 198.18.0.0/24 and 2001:db8::/64 (dual-stack) inside
//! namespaces this crate made.
//!
//! Modules:
//! - [`netns`]: [`Netns`], an RAII network namespace (`ip netns add`/`del`), running commands in it, spawning
//!   guarded child processes ([`Spawned`]) and running closures on a thread inside it ([`Netns::enter`]);
//!   [`netns::sweep`] removes leftovers by name prefix.
//! - [`topology`]: [`Topology`], a bridge namespace plus client, lbd nodes and backends wired to it with veth
//!   pairs, deterministic addresses and MACs, backends set up for direct routing.
//! - [`client`]: bounded-time HTTP/1.1 and UDP clients that talk to [`lbd-test-backend`](crate::http) and
//!   report which backend answered.
//! - [`bird`]: BIRD 2 on a router namespace and on lbd nodes: BGP, BFD and ECMP for the
//!   active-active tests.
//! - [`browser`]: headless Chromium in a namespace, driven over the DevTools protocol (the status
//!   page test).
//! - [`capture`]: an `AF_PACKET` socket on an interface of a namespace, to prove which MAC a reply came from.
//! - [`http`]: the minimal HTTP/1.1 message reader shared by the client and the `lbd-test-backend` binary.
//! - [`exec`]: running commands with a time limit and errors that name the command.
//! - [`stress`]: the daemon core under stress (a VRRP pair, the largest config reloaded in a loop,
//!   a million flows, unresolved backends, `lbctl status` timed), shared by the `core_stress` test
//!   and `cargo xtask bench core`.
//!
//! Helpers at the crate root: [`test_tag`] (unique namespace prefix per test), [`netns_tests_enabled`]
//! (privilege check that fails loudly under CI; the rule is `lb-testkit`'s), [`bin_path`] (locate
//! workspace binaries) and the [`Mac`] address type.
//!
//! A test typically reads:
//! ```no_run
//! use lbd_tests::{Host, Topology, bin_path, client, netns_tests_enabled, test_tag};
//! # fn main() -> anyhow::Result<()> {
//! if !netns_tests_enabled("direct_fetch") {
//!     return Ok(());
//! }
//! let topo = Topology::builder(&test_tag("direct_fetch")).lbd_nodes(1).backends(3).build()?;
//! let _backends = topo.start_backends(&bin_path("lbd-test-backend")?)?;
//! let addr = topo.http_addr(Host::Backend(1));
//! let reply = topo.client().enter(move || client::http_get(addr))??;
//! assert_eq!(reply.backend, "b1");
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod bench_core;
pub mod bench_ecmp;
pub mod bench_failover;
pub mod bench_net;
pub mod bench_restart;
pub mod bench_scale;
pub mod bench_xdp;
pub mod bird;
pub mod browser;
pub mod capture;
pub mod client;
pub mod ecmp;
pub mod exec;
pub mod failover;
pub mod fdstore;
pub mod http;
pub mod lbd;
pub mod netns;
pub mod restart;
pub mod soak;
pub mod stress;
pub mod topology;

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

pub use capture::{Capture, Frame};
pub use netns::{Netns, Spawned};
pub use topology::{Family, HTTP_PORT, Host, Topology, TopologyBuilder, UDP_PORT, VIP, VIP6};

/// Prefix of every namespace this crate creates; [`netns::sweep`] refuses any other prefix.
pub const NS_PREFIX: &str = "lbdt-";

/// An Ethernet MAC address, printed as `02:00:00:00:00:15`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The broadcast address `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: Mac = Mac([0xff; 6]);
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Mac {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut out = [0u8; 6];
        let mut parts = s.trim().split(':');
        for byte in &mut out {
            let part = parts
                .next()
                .with_context(|| format!("MAC {s:?} has fewer than 6 octets"))?;
            *byte = u8::from_str_radix(part, 16)
                .with_context(|| format!("MAC {s:?}: octet {part:?} is not hex"))?;
        }
        if parts.next().is_some() {
            bail!("MAC {s:?} has more than 6 octets");
        }
        Ok(Mac(out))
    }
}

/// Tags already handed out by [`test_tag`] in this process.
static ISSUED_TAGS: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// A short tag, unique per call within this process and across processes, for naming a test's namespaces:
/// `<6 hex digits of a hash of name>-<pid>`, e.g. `3fa9c1-40211`.
///
/// The pid lets [`netns::sweep_orphans`] recognise namespaces left behind by a test process that died.
pub fn test_tag(name: &str) -> String {
    let pid = std::process::id();
    let mut issued = ISSUED_TAGS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let issued = issued.get_or_insert_with(HashSet::new);
    for salt in 0u32.. {
        let hash = fnv1a(name.as_bytes(), salt) & 0x00ff_ffff;
        let tag = format!("{hash:06x}-{pid}");
        if issued.insert(tag.clone()) {
            return tag;
        }
    }
    unreachable!("a u32 salt space cannot be exhausted by tests")
}

/// FNV-1a over `bytes`, seeded by `salt`.
fn fnv1a(bytes: &[u8], salt: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5 ^ salt.wrapping_mul(0x0100_0193);
    for &b in bytes {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

pub use lb_testkit::{is_ci, netns_unavailable_reason, require_or_skip};

/// Gate for tests that need namespaces: `true` when they can run.
///
/// When they cannot (not root, no `ip`): under [`is_ci`] this panics, so CI fails loudly instead of
/// passing without testing anything; otherwise it prints the reason to stderr and returns `false` so the
/// test can return early. The rule is [`require_or_skip`]'s, the same in every crate of the workspace.
///
/// # Panics
/// When namespace tests cannot run and `CI` is set.
pub fn netns_tests_enabled(test: &str) -> bool {
    require_or_skip(test, netns_unavailable_reason())
}

/// Path of a binary of this workspace (`lbd`, `lbctl`, `lbd-test-backend`, ...).
///
/// Looked up in order:
/// 1. an environment override: `LBD_TEST_BACKEND` for `lbd-test-backend`, and for any name
///    `LBD_BIN_<NAME>` with the name upper-cased and `-` turned into `_` (`LBD_BIN_LBD`, `LBD_BIN_LBCTL`);
/// 2. next to the running executable: an integration test runs from `target/<profile>/deps/`, so its
///    parent directory `target/<profile>/` is searched; `cargo xtask` runs from `target/<profile>/` itself.
///
/// Errors name the paths tried and the `cargo build` command that produces the binary.
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let env_name = format!("LBD_BIN_{}", name.to_ascii_uppercase().replace('-', "_"));
    let mut overrides = vec![env_name];
    if name == "lbd-test-backend" {
        overrides.insert(0, "LBD_TEST_BACKEND".to_owned());
    }
    for var in &overrides {
        if let Some(path) = std::env::var_os(var) {
            let path = PathBuf::from(path);
            if path.is_file() {
                return Ok(path);
            }
            bail!("{var}={} does not name a file", path.display());
        }
    }
    let exe = std::env::current_exe().context("cannot find the path of the running executable")?;
    let mut tried = Vec::new();
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        tried.push(candidate);
        if d.file_name().is_some_and(|n| n == "deps") {
            dir = d.parent();
        } else {
            break;
        }
    }
    let package = match name {
        "lbd" | "lbctl" => "lb-daemon",
        "lbd-test-backend" => "lbd-tests",
        _ => "<package>",
    };
    let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "binary `{name}` not found (tried {}); build it with `cargo build -p {package} --bin {name}` using the \
         same profile and CARGO_TARGET_DIR as the tests, or set {}",
        tried.join(", "),
        overrides.join(" or ")
    )
}

/// A process's resident memory (`VmRSS`), MiB.
pub fn vm_rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips() {
        let mac: Mac = "02:00:00:00:00:15".parse().unwrap();
        assert_eq!(mac, Mac([2, 0, 0, 0, 0, 0x15]));
        assert_eq!(mac.to_string(), "02:00:00:00:00:15");
        assert!("02:00:00:00:00".parse::<Mac>().is_err());
        assert!("02:00:00:00:00:15:01".parse::<Mac>().is_err());
        assert!("02:00:00:00:00:zz".parse::<Mac>().is_err());
    }

    #[test]
    fn tags_are_unique_and_carry_the_pid() {
        let a = test_tag("same");
        let b = test_tag("same");
        assert_ne!(a, b);
        assert!(a.ends_with(&format!("-{}", std::process::id())));
        assert_eq!(a.split('-').next().unwrap().len(), 6);
    }
}

/// A file or directory a test made, removed when this is dropped (a test that fails leaves
/// nothing behind either).
#[derive(Debug)]
pub struct TempPath(pub PathBuf);

impl TempPath {
    /// `temp_dir()/name`.
    pub fn in_temp(name: &str) -> TempPath {
        TempPath(std::env::temp_dir().join(name))
    }
}

impl std::ops::Deref for TempPath {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}
