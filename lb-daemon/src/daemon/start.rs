//! Choosing the data path at start: `[daemon] datapath`, privileges, and the fallbacks of
//! `auto` (native XDP → generic XDP → userspace), each step logged with its reason.

use anyhow::{Context as _, bail};

use crate::{
    config::{Config, Datapath as DatapathSetting},
    datapath::{Datapath, proxy::ProxyDatapath, xdp::XdpDatapath},
    net,
    xdp::{self, AttachMode},
};

/// Capabilities the XDP data path needs, by number and name.
const NEEDED_CAPS: [(u32, &str); 3] = [(12, "CAP_NET_ADMIN"), (38, "CAP_PERFMON"), (39, "CAP_BPF")];

/// Checks the effective capabilities and names the missing ones.
pub fn check_privileges() -> anyhow::Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .context("no CapEff line in /proc/self/status")?;
    let missing: Vec<&str> = NEEDED_CAPS
        .iter()
        .filter(|(bit, _)| eff & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if !missing.is_empty() {
        bail!(
            "lbd lacks {} needed to load and attach XDP programs; run it as root or grant them \
             (systemd: AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_NET_RAW CAP_PERFMON)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// The data path chosen, the interface when it needs backend MACs (XDP), and why.
pub struct Chosen {
    /// The data path.
    pub datapath: Box<dyn Datapath>,
    /// The interface (index, MAC), for XDP.
    pub link: Option<net::Link>,
    /// Why this one, for the log and `lbctl status`.
    pub reason: String,
}

/// Loads the XDP program and attaches it in one mode.
fn attach_xdp(config: &Config, link: &net::Link, mode: AttachMode) -> anyhow::Result<XdpDatapath> {
    let mut ebpf = xdp::load(
        link.mac,
        [0; 6],
        config.daemon.conntrack_max,
        &[xdp::PROG_LBD],
    )?;
    xdp::attach(
        &mut ebpf,
        xdp::PROG_LBD,
        &config.daemon.interface,
        link.index,
        mode,
    )?;
    Ok(XdpDatapath::attached(ebpf, mode)?)
}

/// Picks the data path by `[daemon] datapath`. `auto` steps down native XDP → generic XDP →
/// userspace, logging each step's reason; the explicit modes fail instead.
///
/// The program is attached before its maps are filled: until the first apply (moments later) the
/// VIPS map is empty and every packet passes to the kernel, as before lbd started.
pub async fn choose(
    config: &Config,
    handle: &rtnetlink::Handle,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<Chosen> {
    let iface = config.daemon.interface.clone();
    let userspace = |reason: String| Chosen {
        datapath: Box::new(ProxyDatapath::new(config.proxy.clone(), runtime.clone())),
        link: None,
        reason,
    };
    let link = || async {
        net::link(handle, &iface)
            .await
            .with_context(|| format!("daemon.interface = {iface:?}"))
    };
    let xdp = |dp: XdpDatapath, link, reason: String| Chosen {
        datapath: Box::new(dp),
        link: Some(link),
        reason,
    };
    match config.daemon.datapath {
        DatapathSetting::Userspace => Ok(userspace("datapath = \"userspace\"".into())),
        DatapathSetting::Xdp => {
            check_privileges()?;
            let link = link().await?;
            let dp = attach_xdp(config, &link, AttachMode::Native).context(
                "datapath = \"xdp\" requires native XDP; use datapath = \"auto\" to allow generic mode",
            )?;
            Ok(xdp(dp, link, "datapath = \"xdp\"".into()))
        }
        DatapathSetting::XdpGeneric => {
            check_privileges()?;
            let link = link().await?;
            let dp = attach_xdp(config, &link, AttachMode::Generic)?;
            Ok(xdp(dp, link, "datapath = \"xdp-generic\"".into()))
        }
        DatapathSetting::Auto => {
            if let Some(s) = config.services.iter().find(|s| !s.scheduler.xdp_capable()) {
                let why = format!(
                    "datapath = \"auto\": service {} uses scheduler {}, which only the userspace data path has; userspace in use",
                    s.name, s.scheduler
                );
                tracing::warn!("{why}");
                return Ok(userspace(why));
            }
            if let Err(e) = check_privileges() {
                let why = format!("datapath = \"auto\": {e:#}; userspace in use");
                tracing::warn!("{why}");
                return Ok(userspace(why));
            }
            let link = link().await?;
            let native = match attach_xdp(config, &link, AttachMode::Native) {
                Ok(dp) => {
                    return Ok(xdp(
                        dp,
                        link,
                        "datapath = \"auto\": native XDP attached".into(),
                    ));
                }
                Err(e) => format!("{e:#}"),
            };
            tracing::warn!(error = %native, "native XDP failed; trying generic XDP");
            let generic = match attach_xdp(config, &link, AttachMode::Generic) {
                Ok(dp) => {
                    let why =
                        format!("datapath = \"auto\": native failed ({native}); generic in use");
                    return Ok(xdp(dp, link, why));
                }
                Err(e) => format!("{e:#}"),
            };
            let why = format!(
                "datapath = \"auto\": native XDP failed ({native}); generic XDP failed ({generic}); userspace in use"
            );
            tracing::warn!("{why}");
            Ok(userspace(why))
        }
    }
}
