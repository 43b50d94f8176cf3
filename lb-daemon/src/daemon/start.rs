//! Choosing the data path at start: `[daemon] datapath`, privileges, and the fallbacks of
//! `auto` (native XDP → generic XDP → userspace), each step logged with its reason.

use std::{collections::HashMap, path::PathBuf};

use anyhow::{Context as _, bail};
use aya::programs::{
    Xdp,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};

pub use crate::xdp::pins::Found;

use crate::{
    config::{Config, Datapath as DatapathSetting},
    datapath::{Datapath, proxy::ProxyDatapath, xdp::XdpDatapath},
    engine::IdMap,
    handover::Inherited,
    net,
    xdp::{
        self, AttachMode,
        pins::{self, Pins},
    },
};

/// The file beside the state file that keeps the engine's ids for a pinned data path.
pub fn ids_file(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("datapath-ids.json")
}

/// What the ids file holds: the layout of the maps the ids are in, and the ids.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedIds {
    /// The maps' layout (see [`pins::layout`]).
    pub layout: String,
    /// The ids.
    pub ids: IdMap,
}

/// What a start found pinned and took over.
pub struct Adoption {
    /// The pins.
    pub pins: Pins,
    /// What was there.
    pub found: Found,
    /// The engine's ids when the maps were adopted (None: fresh maps).
    pub ids: Option<IdMap>,
    /// The adopted backends' MACs by id.
    pub macs: HashMap<u32, [u8; 6]>,
}

impl Adoption {
    /// The adopted backends' MACs by address: what needs no look-up at start.
    pub fn macs_by_addr(&self) -> HashMap<std::net::IpAddr, [u8; 6]> {
        let Some(ids) = &self.ids else {
            return HashMap::new();
        };
        ids.services
            .iter()
            .flat_map(|s| s.backends.iter())
            .filter_map(|(addr, id)| self.macs.get(id).map(|mac| (*addr, *mac)))
            .collect()
    }
}

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
    /// The pinned data path taken over, when `daemon.pin_dir` is set (XDP).
    pub adoption: Option<Adoption>,
}

/// Loads the XDP program and attaches it in one mode. With `daemon.pin_dir`, the maps are
/// pinned (adopted when pinned already) and so is the link: an existing link keeps its place
/// and gets the new program once the first tables are written ([`Datapath::go_live`]).
fn attach_xdp(
    config: &Config,
    link: &net::Link,
    mode: AttachMode,
    attached: Option<AttachMode>,
) -> anyhow::Result<(XdpDatapath, Option<Adoption>)> {
    let Some(dir) = &config.daemon.pin_dir else {
        let mut ebpf = xdp::load_with(
            link.mac,
            [0; 6],
            config.daemon.conntrack_max,
            config.daemon.conntrack6_max,
            config.daemon.max_services,
            &[xdp::PROG_LBD],
            None,
        )?;
        xdp::attach(
            &mut ebpf,
            xdp::PROG_LBD,
            &config.daemon.interface,
            link.index,
            mode,
        )?;
        return Ok((XdpDatapath::attached(ebpf, mode, None)?, None));
    };
    let pins = Pins::new(
        dir,
        pins::layout(
            config.daemon.conntrack_max,
            config.daemon.conntrack6_max,
            config.daemon.max_services,
        ),
    );
    let mut found = pins
        .prepare()
        .with_context(|| format!("daemon.pin_dir = {:?}", dir.display().to_string()))?;
    let ids_path = ids_file(&config.daemon.state_dir);
    let mut ids = None;
    if found == Found::Adopted {
        let saved = std::fs::read(&ids_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<SavedIds>(&b).ok())
            .filter(|s| s.layout == pins.layout());
        match saved {
            Some(s) => ids = Some(s.ids),
            None => {
                // Without the ids the connection table cannot be read right: fresh maps.
                tracing::warn!(file = %ids_path.display(), "pinned maps without their backend ids: building fresh maps");
                let mine = pins.maps_dir();
                for name in pins::MAP_NAMES {
                    let _ = std::fs::remove_file(mine.join(name));
                }
                found = Found::LayoutChanged { old: Vec::new() };
            }
        }
    }
    let maps_dir = pins.maps_dir();
    std::fs::create_dir_all(&maps_dir)
        .with_context(|| format!("creating {}", maps_dir.display()))?;
    let mut ebpf = xdp::load_with(
        link.mac,
        [0; 6],
        config.daemon.conntrack_max,
        config.daemon.conntrack6_max,
        config.daemon.max_services,
        &[xdp::PROG_LBD],
        Some(&maps_dir),
    )?;
    let link_pin = pins.link();
    if link_pin.exists() && attached.is_none() {
        // The interface has no program: the pinned link belongs to an interface that is gone
        // (or was detached by hand). Attach afresh.
        tracing::warn!(link = %link_pin.display(), "the pinned XDP link is not on the interface any more: attaching anew");
        std::fs::remove_file(&link_pin)
            .with_context(|| format!("removing the stale link pin {}", link_pin.display()))?;
    }
    let (mode, pending) = if link_pin.exists() {
        let pinned = PinnedLink::from_pin(&link_pin)
            .with_context(|| format!("opening the pinned link {}", link_pin.display()))?;
        let xdp_link = XdpLink::try_from(FdLink::from(pinned))
            .with_context(|| format!("{} is not an XDP link", link_pin.display()))?;
        // The link keeps the mode it was made with.
        (attached.unwrap_or(mode), Some(xdp_link))
    } else {
        let prog: &mut Xdp = ebpf
            .program_mut(xdp::PROG_LBD)
            .context("the balancer program is missing")?
            .try_into()?;
        let id = match prog.attach_to_if_index(link.index, mode.aya()) {
            Ok(id) => id,
            Err(e) => {
                // Nothing runs from these pins yet: take them back, so that the next try (auto's
                // generic mode) starts as fresh as this one did.
                drop(ebpf);
                if let Err(e) = pins.remove_all() {
                    tracing::warn!(pins = %dir.display(), error = %e, "removing the pins of a failed attach failed");
                }
                return Err(xdp::XdpError::Attach {
                    interface: config.daemon.interface.clone(),
                    mode: mode.as_str(),
                    reason: format!("{e:#}"),
                }
                .into());
            }
        };
        let taken = prog.take_link(id)?;
        match FdLink::try_from(taken) {
            // The pin holds the link (and the program on the interface) after lbd is gone.
            Ok(fd) => drop(
                fd.pin(&link_pin)
                    .with_context(|| format!("pinning the XDP link at {}", link_pin.display()))?,
            ),
            Err(e) => bail!(
                "this kernel attaches XDP without a bpf_link ({e}); daemon.pin_dir needs Linux 5.9+: remove it to run without a pinned data path"
            ),
        }
        (mode, None)
    };
    let mut dp = XdpDatapath::attached(ebpf, mode, pending)?;
    let macs = if ids.is_some() {
        dp.adopt()
    } else {
        HashMap::new()
    };
    match &found {
        Found::Fresh => {
            tracing::info!(pins = %dir.display(), layout = %pins.layout(), "data path pinned: it outlives lbd; `lbd --detach` removes it");
        }
        Found::Adopted => {
            tracing::info!(pins = %dir.display(), layout = %pins.layout(), "adopted the pinned data path: flows and tables kept; the new program takes over once the tables are current");
        }
        Found::LayoutChanged { old } => {
            tracing::warn!(pins = %dir.display(), layout = %pins.layout(), old = ?old, "the pinned maps have another layout: fresh maps (flows re-hash through Maglev); the old ones go once the new program runs");
        }
    }
    Ok((
        dp,
        Some(Adoption {
            pins,
            found,
            ids,
            macs,
        }),
    ))
}

/// How an XDP program is attached to the interface now (a pinned link keeps its mode).
async fn attached_mode(handle: &rtnetlink::Handle, iface: &str) -> Option<AttachMode> {
    net::link_health(handle, iface)
        .await
        .ok()
        .and_then(|h| h.xdp_mode)
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
    inherited: Inherited,
) -> anyhow::Result<Chosen> {
    let iface = config.daemon.interface.clone();
    let mut inherited = Some(inherited);
    let mut userspace = |reason: String| {
        // A pinned XDP data path of an earlier run would go on taking the VIP's packets ahead
        // of the proxy: it goes.
        if let Some(dir) = &config.daemon.pin_dir {
            match Pins::new(dir, String::new()).remove_all() {
                Ok(true) => {
                    tracing::warn!(pins = %dir.display(), "the userspace data path runs: the pinned XDP data path of an earlier run is removed");
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(pins = %dir.display(), error = %e, "removing the pinned XDP data path failed: it may still take the VIP's packets");
                }
            }
        }
        Chosen {
            datapath: Box::new(ProxyDatapath::new(
                config.proxy.clone(),
                runtime.clone(),
                inherited.take().unwrap_or_default(),
            )),
            link: None,
            reason,
            adoption: None,
        }
    };
    let link = || async {
        net::link(handle, &iface)
            .await
            .with_context(|| format!("daemon.interface = {iface:?}"))
    };
    let xdp = |(dp, adoption): (XdpDatapath, Option<Adoption>), link, reason: String| Chosen {
        datapath: Box::new(dp),
        link: Some(link),
        reason,
        adoption,
    };
    match config.daemon.datapath {
        DatapathSetting::Userspace => Ok(userspace("datapath = \"userspace\"".into())),
        DatapathSetting::Xdp => {
            check_privileges()?;
            let link = link().await?;
            let attached = attached_mode(handle, &iface).await;
            let dp = attach_xdp(config, &link, AttachMode::Native, attached).context(
                "datapath = \"xdp\" requires native XDP; use datapath = \"auto\" to allow generic mode",
            )?;
            Ok(xdp(dp, link, "datapath = \"xdp\"".into()))
        }
        DatapathSetting::XdpGeneric => {
            check_privileges()?;
            let link = link().await?;
            let attached = attached_mode(handle, &iface).await;
            let dp = attach_xdp(config, &link, AttachMode::Generic, attached)?;
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
            let attached = attached_mode(handle, &iface).await;
            let native = match attach_xdp(config, &link, AttachMode::Native, attached) {
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
            let generic = match attach_xdp(config, &link, AttachMode::Generic, attached) {
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
