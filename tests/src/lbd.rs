//! Running `lbd` in a node of a [`Topology`]: config, start, status through `lbctl`, metrics, reload, stop;
//! and the `xdp_pass` program on the bridge side of a veth, which native XDP_TX on veth needs.

use std::{fmt::Write as _, net::Ipv4Addr, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use lb_daemon::{control::Status, xdp};

use crate::{Host, Spawned, Topology, bin_path, fdstore::FdStore};

/// How long lbd may take to come up (load, verify, resolve MACs, attach).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// XDP mode a test runs lbd in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Native (driver) XDP; the bridge-side veth peer gets `xdp_pass`.
    XdpNative,
    /// Generic (skb) XDP.
    XdpGeneric,
    /// The userspace proxy.
    Userspace,
}

impl Mode {
    /// The `[daemon] datapath` value.
    pub fn datapath(self) -> &'static str {
        match self {
            Mode::XdpNative => "xdp",
            Mode::XdpGeneric => "xdp-generic",
            Mode::Userspace => "userspace",
        }
    }

    /// What `lbctl status` reports for it.
    pub fn status_name(self) -> &'static str {
        match self {
            Mode::XdpNative => "xdp-native",
            Mode::XdpGeneric => "xdp-generic",
            Mode::Userspace => "userspace",
        }
    }

    /// Every data path, for tests that run the same scenario on each.
    pub const ALL: [Mode; 3] = [Mode::XdpNative, Mode::XdpGeneric, Mode::Userspace];

    /// Prepares a node of the topology for this mode: the node holds the VIP (it answers ARP
    /// for it) and, for native XDP, the bridge side of its veth gets `xdp_pass`. The returned
    /// object keeps that program attached.
    pub fn prepare(self, topo: &Topology, node: Host) -> Result<Option<aya::Ebpf>> {
        topo.add_vip(node)?;
        match self {
            Mode::XdpNative => Ok(Some(attach_peer_pass(topo, node)?)),
            Mode::XdpGeneric | Mode::Userspace => Ok(None),
        }
    }
}

/// The services of a test config: a TCP service on VIP:80 and a UDP service on VIP:5353.
#[derive(Debug, Clone)]
pub struct Services {
    /// Backends of the TCP service (VIP:80).
    pub tcp: Vec<Ipv4Addr>,
    /// Backends of the UDP service (VIP:5353).
    pub udp: Vec<Ipv4Addr>,
}

/// A config for one lbd node of a topology.
pub fn config_text(mode: Mode, socket: &std::path::Path, services: &Services) -> String {
    let list = |ips: &[Ipv4Addr]| {
        ips.iter()
            .map(|ip| format!("{{ addr = \"{ip}\" }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = String::new();
    let _ = write!(
        s,
        "[daemon]\ninterface = \"eth0\"\ndatapath = \"{}\"\ncontrol_socket = \"{}\"\nstate_dir = \"{}\"\n\n\
         [[service]]\nname = \"web\"\nvip = \"{}:80\"\nbackends = [{}]\n\n\
         [[service]]\nname = \"dns\"\nvip = \"{}:5353\"\nproto = \"udp\"\nbackends = [{}]\n",
        mode.datapath(),
        socket.display(),
        socket
            .parent()
            .unwrap_or(std::path::Path::new("/tmp"))
            .display(),
        crate::VIP,
        list(&services.tcp),
        crate::VIP,
        list(&services.udp),
    );
    s
}

/// The bed of the per-mode scenarios: one lbd node (`Host::Lbd(1)`) and three running backends,
/// the node prepared for the mode ([`Mode::prepare`]). Destructure it as
/// `let SingleNode { topo, backends, peer } = ...` so that the namespaces go last.
pub struct SingleNode {
    /// The topology.
    pub topo: Topology,
    /// The test backends, running.
    pub backends: Vec<Spawned>,
    /// The peer program of native XDP, kept attached while held.
    pub peer: Option<aya::Ebpf>,
}

impl SingleNode {
    /// Builds it for a test named `name`.
    pub fn build(name: &str, mode: Mode) -> Result<SingleNode> {
        let topo = Topology::builder(&crate::test_tag(name))
            .lbd_nodes(1)
            .backends(3)
            .build()?;
        let backends = topo.start_backends(&bin_path("lbd-test-backend")?)?;
        let peer = mode.prepare(&topo, Host::Lbd(1))?;
        Ok(SingleNode {
            topo,
            backends,
            peer,
        })
    }
}

/// A node's config ([`config_text`]) with web and dns over every backend of the topology.
pub fn all_backends_config(topo: &Topology, node: Host, mode: Mode) -> String {
    let all: Vec<Ipv4Addr> = topo.backends().into_iter().map(|b| topo.ip(b)).collect();
    config_text(
        mode,
        &LbdNode::socket_path(topo, node),
        &Services {
            tcp: all.clone(),
            udp: all,
        },
    )
}

/// A `[vrrp]` section for a node: VRID 51, adverts every 100 ms, on eth0, for the VIP.
pub fn vrrp_section(priority: u8, preempt: bool) -> String {
    format!(
        "\n[vrrp]\nvrid = 51\npriority = {priority}\nadvert_interval_ms = 100\npreempt = {preempt}\n\
         interface = \"eth0\"\nvips = [\"{}\"]\n",
        crate::VIP
    )
}

/// A keepalived 2.2 config that interoperates with [`vrrp_section`]: VRRPv3, same VRID, interval
/// and VIP, no `vrrp_strict`.
pub fn keepalived_config(priority: u8, preempt: bool) -> String {
    format!(
        "global_defs {{\n  vrrp_version 3\n  script_user root\n  enable_script_security\n}}\n\
         vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {priority}\n\
         advert_int 0.1\n  {}\n  virtual_ipaddress {{\n    {}/32 dev eth0\n  }}\n}}\n",
        if preempt { "" } else { "nopreempt" },
        crate::VIP
    )
}

/// An lbd process on a node, with its own config file and control socket.
#[derive(Debug)]
pub struct LbdNode {
    /// The running daemon.
    pub process: Spawned,
    /// Its config file.
    pub config_path: PathBuf,
    /// Its control socket.
    pub socket: PathBuf,
    /// Its directory (removed on drop).
    pub dir: PathBuf,
    /// A stand-in for systemd's fd store that every (re)start goes through, if any.
    pub fdstore: Option<FdStore>,
}

impl LbdNode {
    /// Directory for a node's files: per tag and node, so parallel tests never share one.
    pub fn dir(topo: &Topology, node: Host) -> PathBuf {
        std::env::temp_dir().join(format!("lbdt-{}-{}", topo.tag(), node.role()))
    }

    /// Writes `config` (which must use [`LbdNode::socket_path`] as its control socket), starts
    /// lbd in `node`, and waits until `lbctl status` answers with every backend resolved.
    pub fn start(topo: &Topology, node: Host, config: &str) -> Result<LbdNode> {
        Self::start_until(topo, node, config, "every backend active", |s| {
            s.services
                .iter()
                .all(|svc| svc.backends.iter().all(|b| b.state == "active"))
        })
    }

    /// [`start`](Self::start), but waiting until the status satisfies `ready` (described by
    /// `what` in errors) instead: for configs with backends that never answer ARP.
    pub fn start_until(
        topo: &Topology,
        node: Host,
        config: &str,
        what: &str,
        ready: impl Fn(&Status) -> bool,
    ) -> Result<LbdNode> {
        Self::start_wrapped(topo, node, config, &[], what, ready)
    }

    /// [`start_until`](Self::start_until) with lbd run through `wrapper` (a program and its
    /// arguments, e.g. `["prlimit", "--nofile=1024:"]`).
    pub fn start_wrapped(
        topo: &Topology,
        node: Host,
        config: &str,
        wrapper: &[&str],
        what: &str,
        ready: impl Fn(&Status) -> bool,
    ) -> Result<LbdNode> {
        let dir = Self::dir(topo, node);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let config_path = dir.join("lbd.toml");
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let lbd = bin_path("lbd")?.display().to_string();
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = topo.ns(node).command(program);
                c.args(args).arg(&lbd);
                c
            }
            None => topo.ns(node).command(&lbd),
        };
        cmd.arg("--config").arg(&config_path).env("LBD_LOG", "info");
        let process = topo.ns(node).spawn(cmd)?;
        let node = LbdNode {
            process,
            config_path,
            socket: dir.join("lbd.sock"),
            dir,
            fdstore: None,
        };
        node.wait_status(START_TIMEOUT, what, ready)?;
        Ok(node)
    }

    /// [`start`](Self::start) as systemd would with `FileDescriptorStoreMax=` (a stand-in
    /// store, [`FdStore`]): every later start gets the listeners lbd pushed to it.
    pub fn start_with_fdstore(topo: &Topology, node: Host, config: &str) -> Result<LbdNode> {
        let dir = Self::dir(topo, node);
        let store = FdStore::new(&dir)?;
        let config_path = dir.join("lbd.toml");
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let mut node_ = LbdNode {
            // Replaced at once by start_again.
            process: topo.ns(node).spawn(topo.ns(node).command("true"))?,
            config_path,
            socket: dir.join("lbd.sock"),
            dir,
            fdstore: Some(store),
        };
        node_.start_again(topo, node)?;
        Ok(node_)
    }

    /// The command that starts lbd in `node` with this node's config (through the fd store,
    /// if any).
    fn command(
        &self,
        topo: &Topology,
        node: Host,
        extra: &[&str],
    ) -> Result<std::process::Command> {
        let program = bin_path("lbd")?.display().to_string();
        let mut cmd = match &self.fdstore {
            Some(store) => store.command(topo.ns(node), &program)?,
            None => topo.ns(node).command(&program),
        };
        cmd.args(extra)
            .arg("--config")
            .arg(&self.config_path)
            .env("LBD_LOG", "info");
        Ok(cmd)
    }

    /// The control socket path a node's config must use.
    pub fn socket_path(topo: &Topology, node: Host) -> PathBuf {
        Self::dir(topo, node).join("lbd.sock")
    }

    /// `lbctl status --json`, parsed.
    pub fn status(&self) -> Result<Status> {
        let out = std::process::Command::new(bin_path("lbctl")?)
            .args(["--socket"])
            .arg(&self.socket)
            .args(["status", "--json"])
            .output()
            .context("running lbctl")?;
        if !out.status.success() {
            bail!(
                "lbctl status failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).context("parsing lbctl status --json")
    }

    /// Polls the status until `pred` holds, up to `timeout`.
    pub fn wait_status(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Status) -> bool,
    ) -> Result<Status> {
        let mut last = String::from("no answer yet");
        let mut found = None;
        let waited = lb_testkit::wait_until(what, timeout, || match self.status() {
            Ok(s) if pred(&s) => {
                found = Some(s);
                true
            }
            Ok(s) => {
                last = format!("{:?}", s.services);
                false
            }
            Err(e) => {
                last = format!("{e:#}");
                false
            }
        });
        match (waited, found) {
            (Ok(()), Some(s)) => Ok(s),
            (waited, _) => bail!(
                "lbd: {}; last status: {last}; lbd stderr: {}",
                waited.err().map_or_else(String::new, |e| e.to_string()),
                self.process.stderr_tail()
            ),
        }
    }

    /// Kills lbd with SIGKILL (a crash), waits `down`, and starts it again with the same files.
    pub fn crash_and_restart(&mut self, topo: &Topology, node: Host, down: Duration) -> Result<()> {
        self.process.kill()?;
        std::thread::sleep(down);
        self.start_again(topo, node)
    }

    /// Stops lbd (cleanly) and starts it again with the same files: the state file survives.
    pub fn restart(&mut self, topo: &Topology, node: Host) -> Result<()> {
        let status = self.process.terminate(Duration::from_secs(10))?;
        if !status.success() {
            bail!(
                "lbd exited with {status} on restart; stderr: {}",
                self.process.stderr_tail()
            );
        }
        self.start_again(topo, node)
    }

    /// A planned restart with a hand-over: a new lbd started with `--replace` takes the running
    /// one's listeners (and VIPs, and pinned data path). Returns the replaced process, which
    /// finishes its open connections and exits by itself.
    pub fn replace(&mut self, topo: &Topology, node: Host) -> Result<Spawned> {
        let cmd = self.command(topo, node, &["--replace"])?;
        let new = topo.ns(node).spawn(cmd)?;
        let old = std::mem::replace(&mut self.process, new);
        // The old lbd answers until it lets go: wait for the new one's answer.
        let from = format!("from lbd pid {}", old.pid());
        self.wait_status(START_TIMEOUT, "the new lbd, every backend active", |s| {
            s.datapath_reason.contains(&from)
                && s.services
                    .iter()
                    .all(|svc| svc.backends.iter().all(|b| b.state == "active"))
        })?;
        Ok(old)
    }

    /// The config file this node runs with.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    fn start_again(&mut self, topo: &Topology, node: Host) -> Result<()> {
        let cmd = self.command(topo, node, &[])?;
        self.process = topo.ns(node).spawn(cmd)?;
        self.wait_status(START_TIMEOUT, "every backend active", |s| {
            s.services
                .iter()
                .all(|svc| svc.backends.iter().all(|b| b.state == "active"))
        })?;
        Ok(())
    }

    /// Runs `lbctl --socket S ARGS...`; returns (exit code, stdout, stderr).
    pub fn lbctl(&self, args: &[&str]) -> Result<(i32, String, String)> {
        let out = std::process::Command::new(bin_path("lbctl")?)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .context("running lbctl")?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Polls the status until the backend `addr` of service `service` is in `state`.
    pub fn wait_backend_state(&self, service: &str, addr: &str, state: &str) -> Result<Status> {
        self.wait_status(
            Duration::from_secs(10),
            &format!("showing {addr} {state}"),
            |s| {
                s.services.iter().any(|svc| {
                    svc.name == service
                        && svc
                            .backends
                            .iter()
                            .any(|b| b.addr == addr && b.state == state)
                })
            },
        )
    }

    /// Rewrites the config and sends SIGHUP.
    pub fn reload(&mut self, config: &str) -> Result<()> {
        std::fs::write(&self.config_path, config).context("rewriting the config")?;
        self.process.signal(libc::SIGHUP)
    }

    /// SIGTERM, and the exit must be clean.
    pub fn stop(mut self) -> Result<()> {
        let status = self.process.terminate(Duration::from_secs(10))?;
        if !status.success() {
            bail!(
                "lbd exited with {status}; stderr: {}",
                self.process.stderr_tail()
            );
        }
        Ok(())
    }
}

impl Drop for LbdNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Checks that every `lbd_*` metric the shipped alert rules and Grafana dashboard use, of those
/// `which` selects, is in `scraped` (a live scrape); returns how many were checked.
pub fn check_shipped_metrics(
    scraped: &[(String, f64)],
    which: impl Fn(&str) -> bool,
) -> Result<usize> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
    let mut used = std::collections::BTreeSet::new();
    for file in ["prometheus/lbd-alerts.yml", "grafana/lbd.json"] {
        let text = std::fs::read_to_string(root.join(file))
            .with_context(|| format!("reading packaging/{file}"))?;
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("lbd_") && which(word) {
                used.insert(word.to_string());
            }
        }
    }
    let live: std::collections::BTreeSet<&str> = scraped
        .iter()
        .map(|(k, _)| k.split('{').next().unwrap_or(k))
        .collect();
    let missing: Vec<&String> = used.iter().filter(|n| !live.contains(n.as_str())).collect();
    anyhow::ensure!(
        missing.is_empty(),
        "the shipped rules or dashboard use metrics lbd does not export: {missing:?}"
    );
    Ok(used.len())
}

/// Scrapes lbd's metrics from inside its node (127.0.0.1:9300 there, the default `metrics_addr`) and
/// returns the samples as (`name{labels}`, value) pairs.
pub fn scrape(topo: &Topology, node: Host) -> Result<Vec<(String, f64)>> {
    use std::io::{Read as _, Write as _};
    let body = topo.ns(node).enter(|| -> Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(
            &"127.0.0.1:9300".parse()?,
            Duration::from_secs(2),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lbd\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        anyhow::ensure!(
            out.starts_with("HTTP/1.1 200"),
            "scrape: {}",
            out.lines().next().unwrap_or_default()
        );
        Ok(out)
    })??;
    Ok(body
        .lines()
        .filter(|l| l.starts_with("lbd_"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect())
}

/// The value of metric `name` in `samples` whose labels include every one of `labels` (e.g.
/// `backend="198.18.0.22"`); a metric without labels matches with `labels` empty.
pub fn sample(samples: &[(String, f64)], name: &str, labels: &[&str]) -> Result<f64> {
    samples
        .iter()
        .find(|(k, _)| {
            (k == name || k.starts_with(&format!("{name}{{")))
                && labels.iter().all(|l| k.contains(l))
        })
        .map(|(_, v)| *v)
        .with_context(|| format!("no sample {name} with {labels:?}"))
}

/// Loads `xdp_pass` and attaches it natively to the bridge-side veth of `host`: veth delivers
/// native XDP_TX frames only when the peer runs an XDP program. Detached when dropped.
pub fn attach_peer_pass(topo: &Topology, host: Host) -> Result<aya::Ebpf> {
    let port = topo.bridge_port_of(host);
    topo.bridge_ns().enter(move || -> Result<aya::Ebpf> {
        let mut ebpf = xdp::load([0; 6], [0; 6], 1024, &[xdp::PROG_PASS])?;
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        let name = std::ffi::CString::new(port.clone())?;
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            bail!("bridge port {port} not found");
        }
        xdp::attach(
            &mut ebpf,
            xdp::PROG_PASS,
            &port,
            index,
            xdp::AttachMode::Native,
        )?;
        Ok(ebpf)
    })?
}

/// Declares one `#[test]` per data path, each running `scenario(mode, name)` after the privilege
/// gate, so the same scenario runs on native XDP, generic XDP and the userspace proxy:
/// `test_each_mode!(scenario: test_native => Mode::XdpNative, test_user => Mode::Userspace);`
#[macro_export]
macro_rules! test_each_mode {
    ($scenario:ident: $($test:ident => $mode:expr),+ $(,)?) => {
        $(
            #[test]
            fn $test() -> anyhow::Result<()> {
                if !$crate::netns_tests_enabled(stringify!($test)) {
                    return Ok(());
                }
                $scenario($mode, stringify!($test))
            }
        )+
    };
}

/// Loads `clear_hash` and attaches it to the ingress of `host`'s `eth0` (the test router): the
/// router then hashes each packet's 5-tuple for ECMP instead of reusing the hash the sender's
/// socket gave it, which crosses veth and which TCP re-rolls after a timeout (no real router
/// sees it). Detached when dropped.
pub fn attach_clear_hash(topo: &Topology, host: Host) -> Result<aya::Ebpf> {
    use aya::programs::{SchedClassifier, TcAttachType, tc};
    topo.ns(host).enter(move || -> Result<aya::Ebpf> {
        let mut ebpf = xdp::load([0; 6], [0; 6], 1024, &[])?;
        // A clsact qdisc that is there already is fine.
        let _ = tc::qdisc_add_clsact(crate::topology::HOST_IF);
        let prog: &mut SchedClassifier = ebpf
            .program_mut(xdp::PROG_CLEAR_HASH)
            .context("clear_hash missing from the object")?
            .try_into()?;
        prog.load()?;
        prog.attach(crate::topology::HOST_IF, TcAttachType::Ingress)?;
        Ok(ebpf)
    })?
}
