//! lbd: a layer-4 load balancer (XDP direct routing with Maglev hashing, a userspace proxy
//! where XDP cannot run, VRRPv3 for the VIP).
//!
//! # Modules
//! - [`config`]: the TOML config, raw and validated (`health`, `proxy`, `vrrp` sections in
//!   their own files); one enum per concept (data path setting, protocol, scheduler).
//! - [`overrides`]: the runtime changes `lbctl` makes, kept in the state file.
//! - [`engine`]: services and backends with stable ids, one Maglev table per service
//!   ([`maglev`]), driving a data path; [`model`]: the backend state and flow counts shared by
//!   engine, data paths and status.
//! - [`datapath`]: the [`datapath::Datapath`] trait and its two implementations, XDP (on
//!   [`xdp`]: the program loader and maps) and the userspace [`proxy`].
//! - [`health`]: health checks (probe, rise/fall tracker, monitor).
//! - [`daemon`]: the core that owns all state, and the I/O around it; [`control`]: the control
//!   socket protocol; [`status`]: what `lbctl status` and [`metrics`] show; [`net`]: netlink
//!   look-ups (interfaces, neighbours).
//!
//! # How a packet flows (XDP)
//! The program matches (VIP, port, protocol) in VIPS, finds the flow in CONNTRACK or picks a
//! backend from the service's Maglev ring, rewrites the MACs and sends the frame back out
//! (`XDP_TX`); the backend answers the client directly. The proxy does the same with sockets.
//!
//! # How a change flows
//! `lbctl`, SIGHUP, a health transition or a learned MAC becomes a command to the core
//! ([`daemon::core`]), which saves runtime changes first ([`overrides`]), has the engine work out
//! what changed, and hands only that to the data path; on failure it rolls back and says so.

pub mod announce;
pub mod clidoc;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod engine;
pub mod flows;
pub mod handover;
pub mod health;
pub mod limits;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod net;
pub mod overrides;
pub mod proxy;
pub mod rates;
pub mod status;
pub mod top;
pub mod xdp;
