//! BIRD 2 (Debian `bird2`) in the namespaces: on the router, passive BGP to every lbd node with
//! BFD and ECMP (`merge paths`) into its kernel table; on each lbd node, BGP to the router
//! exporting the VIP routes lbd keeps in its table (`[announce] table`, learned by a `protocol
//! kernel`). Configs, control sockets and logs live in the test's run directory; each BIRD is a
//! [`Spawned`] child, stopped on drop.
//!
//! Dual-stack: lbd keeps `/32` routes for IPv4 VIPs and `/128` routes for IPv6 VIPs in the same
//! table. BIRD 2 gives a kernel protocol one channel, so each node learns the table with two
//! kernel protocols (`lbd_vips`, `lbd_vips6`), and the one IPv4 BGP session carries both families
//! (multiprotocol BGP: an `ipv6` channel beside the `ipv4` one). An IPv6 route over an IPv4
//! session needs an IPv6 next hop: the node sets it to its own global address (`next hop
//! address`; BIRD would otherwise pick the interface's preferred IPv6 address), which the router
//! reaches directly on the shared link. The router merges the IPv6 routes into multipath kernel
//! routes as it does the IPv4 ones.
//!
//! The settings are the tests' (short timers, no graceful restart, BFD at 100 ms × 3), per the
//! probe of this design; `packaging/bird/` holds the documented production snippets.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

use crate::{Family, Host, Spawned, Topology};

/// The routers' AS and the lbd nodes' AS.
pub const ROUTER_AS: u32 = 65000;
/// See [`ROUTER_AS`].
pub const NODE_AS: u32 = 65001;
/// lbd's table of VIP routes in the tests.
pub const TABLE: u32 = 100;

/// BGP and BFD timers shared by both ends: quick to come up and to notice a dead peer.
const TIMERS: &str = "    hold time 9;
    connect delay time 1;
    connect retry time 1;
    error wait time 1, 2;
    graceful restart off;
";

/// The router's config: a passive session per lbd node, ECMP into the kernel (both families).
pub fn router_config(nodes: &[Host]) -> String {
    let mut c = format!(
        "router id {router};
protocol device {{ scan time 1; }}
protocol kernel {{
    ipv4 {{ import none; export all; }};
    merge paths on;
}}
protocol kernel {{
    ipv6 {{ import none; export all; }};
    merge paths on;
}}
protocol bfd {{
    interface \"eth0\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }};
}}
template bgp lbd_node {{
    local {router} as {ROUTER_AS};
    passive on;
    bfd on;
{TIMERS}    ipv4 {{ import all; export none; }};
    ipv6 {{ import all; export none; }};
}}
",
        router = Host::Router.ip()
    );
    for n in nodes {
        c += &format!(
            "protocol bgp {} from lbd_node {{ neighbor {} as {NODE_AS}; }}\n",
            n.role(),
            n.ip()
        );
    }
    c
}

/// An lbd node's config: the VIP routes of lbd's table (both families), exported to the router.
pub fn node_config(node: Host) -> String {
    format!(
        "router id {me};
protocol device {{ scan time 1; }}
# lbd's VIP routes: lbd adds and removes them ([announce] table = {TABLE}).
protocol kernel lbd_vips {{
    kernel table {TABLE};
    learn;
    scan time 1;
    ipv4 {{ import all; export none; }};
}}
# The same table's IPv6 routes (/128): BIRD 2 has one channel per kernel protocol.
protocol kernel lbd_vips6 {{
    kernel table {TABLE};
    learn;
    scan time 1;
    ipv6 {{ import all; export none; }};
}}
protocol bfd {{
    interface \"eth0\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }};
}}
protocol bgp upstream {{
    local {me} as {NODE_AS};
    neighbor {router} as {ROUTER_AS};
    bfd on;
{TIMERS}    ipv4 {{ import none; export where proto = \"lbd_vips\"; next hop self; }};
    ipv6 {{
        import none;
        export where proto = \"lbd_vips6\";
        next hop self;
        next hop address {me6};
    }};
}}
",
        me = node.ip(),
        me6 = node.ip6(),
        router = Host::Router.ip()
    )
}

/// One BIRD: the process and its control socket.
pub struct Bird {
    /// The daemon, stopped on drop.
    pub process: Spawned,
    socket: PathBuf,
    ns: String,
}

impl Bird {
    /// Writes `config` into `dir` and starts BIRD with it in `host`'s namespace.
    pub fn start(topo: &Topology, host: Host, dir: &Path, config: &str) -> Result<Bird> {
        std::fs::create_dir_all(dir)?;
        let conf = dir.join(format!("bird-{}.conf", host.role()));
        let socket = dir.join(format!("bird-{}.ctl", host.role()));
        std::fs::write(&conf, config).with_context(|| format!("writing {}", conf.display()))?;
        let ns = topo.ns(host);
        let check = ns.output(
            "bird",
            &["-p", "-c", &conf.display().to_string()],
            Duration::from_secs(10),
        )?;
        ensure!(
            check.status.success(),
            "bird -p on {}: {}",
            conf.display(),
            String::from_utf8_lossy(&check.stderr)
        );
        let mut cmd = Command::new("bird");
        cmd.arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(dir.join(format!("bird-{}.pid", host.role())));
        let process = ns
            .spawn(cmd)
            .context("starting bird (cargo xtask setup installs bird2)")?;
        let bird = Bird {
            process,
            socket,
            ns: ns.name().to_owned(),
        };
        lb_testkit::wait_until("bird's control socket", Duration::from_secs(10), || {
            bird.birdc(&["show", "status"]).is_ok()
        })?;
        Ok(bird)
    }

    /// Runs `birdc -s SOCKET ARGS...`; its output.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .context("running birdc")?;
        ensure!(
            out.status.success(),
            "birdc {args:?} ({}): {}",
            self.ns,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The next hops of the router's kernel route to the VIP (`ip route show VIP`).
pub fn vip_next_hops(topo: &Topology) -> Result<Vec<Ipv4Addr>> {
    Ok(vip_next_hops_of(topo, Family::V4)?
        .into_iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect())
}

/// The next hops of the router's kernel route to the VIP of `family` (`ip -4 route show
/// VIP/32`, `ip -6 route show VIP6/128`): one `via` per next hop, multipath or not.
pub fn vip_next_hops_of(topo: &Topology, family: Family) -> Result<Vec<IpAddr>> {
    let prefix = match family {
        Family::V4 => format!("{}/32", family.vip()),
        Family::V6 => format!("{}/128", family.vip()),
    };
    let out = topo
        .ns(Host::Router)
        .run("ip", &[family.ip_flag(), "route", "show", &prefix])?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .filter_map(|w| w[1].parse().ok())
        .collect())
}

/// Waits until the router's route to the VIP has exactly `want` next hops (sorted). Polls every
/// 5 ms (not with a growing back-off): the reroute times are measured with it.
pub fn wait_next_hops(topo: &Topology, want: &[Ipv4Addr], timeout: Duration) -> Result<()> {
    let want: Vec<IpAddr> = want.iter().map(|&ip| ip.into()).collect();
    wait_next_hops_of(topo, Family::V4, &want, timeout)
}

/// [`wait_next_hops`] for the VIP of `family`; `want` holds addresses of that family.
pub fn wait_next_hops_of(
    topo: &Topology,
    family: Family,
    want: &[IpAddr],
    timeout: Duration,
) -> Result<()> {
    let mut want = want.to_vec();
    want.sort();
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut have = vip_next_hops_of(topo, family).unwrap_or_default();
        have.sort();
        if have == want {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "the router's next hops to {} are {have:?} after {timeout:?}, wanted {want:?}",
                family.vip()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
