//! The XDP programs: load the embedded object, attach a program, and read and write its maps
//! ([`XdpMaps`]: services, Maglev rings, backends, counters; [`XdpFlows`]: the connection
//! table). [`crate::datapath::xdp`] drives them as a [`crate::datapath::Datapath`].

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    os::fd::AsFd as _,
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, IterableMap as _, MapData, PerCpuArray, PerCpuValues},
    programs::{Xdp, XdpMode},
};
use lb_common::{
    Backend, Counter, FLOW_FLAG_CLOSING, FlowKey, FlowKey6, FlowState, MAGLEV_M, MAX_BACKENDS,
    STATS_LEN, Settings, VipInfo, VipKey, VipKey6, ipv6_lanes, ipv6_octets,
};

mod batch;
pub mod pins;

use crate::{
    config::Proto,
    flows::{Collector, FlowListing, FlowQuery, FlowRecord},
    model::FlowCounts,
};

/// The compiled XDP programs (`lb-ebpf`), embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// Name of the balancer program in the object.
pub const PROG_LBD: &str = "lbd_xdp";
/// Name of the bare MAC-rewrite program (benchmark floor).
pub const PROG_BARE: &str = "bare_tx";
/// Name of the pass-everything program (veth peers in tests).
pub const PROG_PASS: &str = "xdp_pass";
/// The tc program of the test router that clears a packet's flow hash (see lb-ebpf).
pub const PROG_CLEAR_HASH: &str = "clear_hash";

/// Errors of the XDP data path.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// Loading the object or a program failed.
    #[error("loading the XDP programs failed: {0}")]
    Load(String),
    /// A map is missing or has the wrong type.
    #[error("map {0}: {1}")]
    Map(&'static str, String),
    /// Attaching failed.
    #[error("attaching XDP in {mode} mode to {interface} failed: {reason}")]
    Attach {
        /// Interface name.
        interface: String,
        /// "native" or "generic".
        mode: &'static str,
        /// Kernel's answer.
        reason: String,
    },
}

/// Attach mode actually in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachMode {
    /// Native (driver) mode.
    Native,
    /// Generic (skb) mode.
    Generic,
}

impl AttachMode {
    /// Human name.
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        }
    }

    /// aya's name for it.
    pub fn aya(self) -> XdpMode {
        match self {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
        }
    }
}

/// Loads the object with this node's MAC and the connection table size, and loads (verifies)
/// the programs named in `programs`.
pub fn load(
    own_mac: [u8; 6],
    bare_dst_mac: [u8; 6],
    conntrack_max: u32,
    programs: &[&str],
) -> Result<Ebpf, XdpError> {
    load_with(
        own_mac,
        bare_dst_mac,
        conntrack_max,
        conntrack_max,
        lb_common::DEFAULT_MAX_SERVICES,
        programs,
        None,
    )
}

/// [`load`], with an IPv6 connection table of `conntrack6_max` flows, rings for
/// `max_services` services and the maps pinned in `maps_dir` (adopted when pinned there
/// already).
pub fn load_with(
    own_mac: [u8; 6],
    bare_dst_mac: [u8; 6],
    conntrack_max: u32,
    conntrack6_max: u32,
    max_services: u32,
    programs: &[&str],
    maps_dir: Option<&std::path::Path>,
) -> Result<Ebpf, XdpError> {
    let mut loader = EbpfLoader::new();
    loader
        .override_global("OWN_MAC", &own_mac, true)
        .override_global("BARE_DST_MAC", &bare_dst_mac, true)
        .map_max_entries("CONNTRACK", conntrack_max)
        .map_max_entries("CONNTRACK6", conntrack6_max)
        .map_max_entries("RINGS", rings_len(max_services));
    if let Some(dir) = maps_dir {
        for name in pins::MAP_NAMES {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .map_err(|e| XdpError::Load(format!("{e:#}")))?;
    for name in programs {
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or_else(|| XdpError::Load(format!("program {name} missing from the object")))?
            .try_into()
            .map_err(|e| XdpError::Load(format!("{name}: {e}")))?;
        prog.load()
            .map_err(|e| XdpError::Load(format!("{name}: {}", verifier_error(&e))))?;
    }
    Ok(ebpf)
}

fn verifier_error(e: &aya::programs::ProgramError) -> String {
    // The verifier log is long; its last lines say why.
    let text = format!("{e:#}");
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Attaches a loaded program to an interface index in one mode.
pub fn attach(
    ebpf: &mut Ebpf,
    program: &str,
    interface: &str,
    ifindex: u32,
    mode: AttachMode,
) -> Result<(), XdpError> {
    let attach_err = |reason: String| XdpError::Attach {
        interface: interface.to_string(),
        mode: mode.as_str(),
        reason,
    };
    let prog: &mut Xdp = ebpf
        .program_mut(program)
        .ok_or_else(|| attach_err(format!("program {program} missing")))?
        .try_into()
        .map_err(|e| attach_err(format!("{e}")))?;
    prog.attach_to_if_index(ifindex, mode.aya())
        .map(|_| ())
        .map_err(|e| attach_err(format!("{e:#}")))
}

/// The balancer's tables, taken out of the loaded object (the connection table apart, in
/// [`XdpFlows`], so that it can be scanned on a thread of its own).
pub struct XdpMaps {
    /// VIPS: (VIP, port, protocol) → service id, ring in use, flags.
    vips: BpfHashMap<MapData, VipKey, VipInfo>,
    /// VIPS6: the same for IPv6 VIPs.
    vips6: BpfHashMap<MapData, VipKey6, VipInfo>,
    /// RINGS: the Maglev tables, two rings per service, `MAGLEV_M` backend ids each.
    rings: Array<MapData, u32>,
    /// BACKENDS: backend id → MAC, address, state.
    backends: Array<MapData, Backend>,
    /// STATS: per-CPU counters: pass/drop reasons, then services, then backends.
    stats: PerCpuArray<MapData, Counter>,
    /// SETTINGS: the run-time knobs (the flood guard).
    settings: Array<MapData, Settings>,
    /// CONNTRACK and CONNTRACK6 until [`XdpMaps::take_flows`] hands them out.
    flows: Option<XdpFlows>,
    /// RINGS mapped into this process, where the kernel allows it.
    rings_mem: Option<MappedRings>,
    /// Whether the kernel takes batch writes on the rings (until it refuses one).
    batch_writes: bool,
}

/// Bytes between two slots of a mapped array: the kernel rounds an array's element size up to
/// 8 (`round_up(value_size, 8)` in `array_map_alloc`).
const RING_SLOT_STRIDE: usize = 8;

/// RINGS written through memory mappings (`BPF_F_MMAPABLE`): a table is written with plain
/// stores into a mapping of just the pages that hold it, unmapped again at once. Mapping the
/// whole array for good would count it all (1 MiB per service) in lbd's resident memory.
struct MappedRings {
    fd: std::os::fd::OwnedFd,
    /// Slots in the array.
    len: usize,
    page: usize,
}

impl MappedRings {
    /// Checks that the array (`len` slots) can be mapped, with a mapping of its first page.
    fn new(fd: std::os::fd::BorrowedFd<'_>, len: usize) -> std::io::Result<MappedRings> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| std::io::Error::other("no page size"))?;
        let rings = MappedRings {
            fd: fd.try_clone_to_owned()?,
            len,
            page,
        };
        rings.map(0, 1).map(|m| rings.unmap(m))?;
        Ok(rings)
    }

    /// Maps the pages holding slots `base..base + n`; returns the mapping and where slot
    /// `base` is in it.
    fn map(&self, base: usize, n: usize) -> std::io::Result<(std::ptr::NonNull<u8>, usize, usize)> {
        use std::os::fd::AsRawFd as _;
        let start = base * RING_SLOT_STRIDE;
        let offset = start / self.page * self.page;
        let bytes = (start + n * RING_SLOT_STRIDE - offset).div_ceil(self.page) * self.page;
        // SAFETY: a fresh shared mapping of a BPF array's fd; the kernel checks the offset, the
        // length and the map's BPF_F_MMAPABLE flag.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.fd.as_raw_fd(),
                libc::off_t::try_from(offset).map_err(|_| std::io::Error::other("offset"))?,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok((ptr, bytes, start - offset))
    }

    fn unmap(&self, (ptr, bytes, _): (std::ptr::NonNull<u8>, usize, usize)) {
        // SAFETY: a mapping made by `map`, of `bytes` bytes, unmapped once.
        unsafe { libc::munmap(ptr.as_ptr().cast(), bytes) };
    }

    /// Copies `table` into the slots from `base`; false when it does not fit or cannot be
    /// mapped (the caller writes it another way).
    fn write(&mut self, base: usize, table: &[u32]) -> bool {
        if table.is_empty()
            || base
                .checked_add(table.len())
                .is_none_or(|end| end > self.len)
        {
            return false;
        }
        let Ok(mapping) = self.map(base, table.len()) else {
            return false;
        };
        let (ptr, _, first) = mapping;
        for (i, id) in table.iter().enumerate() {
            // SAFETY: slot `base + i` lies inside the mapping (it covers the pages of slots
            // `base..base + len`), 8-byte aligned (page-aligned offset, stride 8); the ring
            // written is the idle one, which the program reads only once VIPS points at it
            // (a syscall later).
            unsafe {
                ptr.as_ptr()
                    .add(first + i * RING_SLOT_STRIDE)
                    .cast::<u32>()
                    .write(*id);
            }
        }
        self.unmap(mapping);
        true
    }
}

/// The connection tables (CONNTRACK and CONNTRACK6: flow key → backend id, last seen, flags),
/// scanned for flow counts and expiry.
pub struct XdpFlows {
    v4: Conntrack<FlowKey>,
    v6: Conntrack<FlowKey6>,
}

/// One family's connection table.
struct Conntrack<K> {
    name: &'static str,
    map: BpfHashMap<MapData, K, FlowState>,
    /// Whether the kernel takes batch commands on the table (until it refuses one).
    batch_ops: bool,
}

/// A connection table's key: what a listing shows of it.
trait TableKey: aya::Pod {
    fn proto(&self) -> u8;
    fn client(&self) -> SocketAddr;
    fn vip(&self) -> SocketAddr;
}

/// An address and port as the IPv4 map keys hold them (network order).
fn socket_v4(addr_be: u32, port_be: u16) -> SocketAddr {
    let ip = std::net::Ipv4Addr::from(addr_be.to_ne_bytes());
    SocketAddr::new(IpAddr::V4(ip), u16::from_be(port_be))
}

/// An address and port as the IPv6 map keys hold them (network order).
fn socket_v6(addr_be: lb_common::Ipv6Lanes, port_be: u16) -> SocketAddr {
    let ip = std::net::Ipv6Addr::from(ipv6_octets(addr_be));
    SocketAddr::new(IpAddr::V6(ip), u16::from_be(port_be))
}

impl TableKey for FlowKey {
    fn proto(&self) -> u8 {
        self.proto
    }
    fn client(&self) -> SocketAddr {
        socket_v4(self.src_be, self.sport_be)
    }
    fn vip(&self) -> SocketAddr {
        socket_v4(self.dst_be, self.dport_be)
    }
}

impl TableKey for FlowKey6 {
    fn proto(&self) -> u8 {
        self.proto
    }
    fn client(&self) -> SocketAddr {
        socket_v6(self.src_be, self.sport_be)
    }
    fn vip(&self) -> SocketAddr {
        socket_v6(self.dst_be, self.dport_be)
    }
}

/// The VIPS or VIPS6 key of a VIP, port and protocol.
pub enum AnyVipKey {
    /// An IPv4 service.
    V4(VipKey),
    /// An IPv6 service.
    V6(VipKey6),
}

impl AnyVipKey {
    /// The key of `vip` with IP protocol `proto`.
    pub fn new(vip: SocketAddr, proto: u8) -> AnyVipKey {
        match vip.ip() {
            IpAddr::V4(ip) => AnyVipKey::V4(VipKey {
                addr_be: u32::from_ne_bytes(ip.octets()),
                port_be: vip.port().to_be(),
                proto,
                _pad: 0,
            }),
            IpAddr::V6(ip) => AnyVipKey::V6(VipKey6 {
                addr_be: ipv6_lanes(ip.octets()),
                port_be: vip.port().to_be(),
                proto,
                _pad: 0,
            }),
        }
    }
}

/// Idle timeouts of connection table entries (IPVS defaults: tcp 900 s, tcpfin 120 s, udp 300 s).
#[derive(Debug, Clone, Copy)]
pub struct FlowTimeouts {
    /// An open TCP flow.
    pub tcp_ns: u64,
    /// A TCP flow after FIN or RST.
    pub tcp_closing_ns: u64,
    /// A UDP flow.
    pub udp_ns: u64,
}

impl FlowTimeouts {
    /// The timeout of a flow of IP protocol `proto`, closing or not.
    pub fn of(&self, proto: u8, closing: bool) -> u64 {
        match (proto, closing) {
            (lb_common::IPPROTO_UDP, _) => self.udp_ns,
            (_, true) => self.tcp_closing_ns,
            (_, false) => self.tcp_ns,
        }
    }
}

impl Default for FlowTimeouts {
    fn default() -> Self {
        const S: u64 = 1_000_000_000;
        FlowTimeouts {
            tcp_ns: 900 * S,
            tcp_closing_ns: 120 * S,
            udp_ns: 300 * S,
        }
    }
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds: the clock of `bpf_ktime_get_coarse_ns`.
pub fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec; this clock id always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Flows per backend id while a scan runs: plain arrays over the id range, which every valid
/// id is in (an id outside it, from a corrupt entry, counts as dead).
struct Tally<F> {
    is_dead: F,
    /// Per id: 0 not asked yet, 1 live, 2 dead.
    verdict: Vec<u8>,
    active: Vec<u64>,
    closing: Vec<u64>,
}

impl<F: Fn(u32) -> bool> Tally<F> {
    fn new(is_dead: F) -> Self {
        let n = MAX_BACKENDS as usize;
        Tally {
            is_dead,
            verdict: vec![0; n],
            active: vec![0; n],
            closing: vec![0; n],
        }
    }

    fn clear(&mut self) {
        self.active.fill(0);
        self.closing.fill(0);
    }

    /// Counts one flow, or marks it for deletion: idle past its timeout, or of a dead backend.
    fn visit<K: TableKey>(
        &mut self,
        now_ns: u64,
        t: FlowTimeouts,
        doomed: &mut Vec<K>,
        key: &K,
        st: &FlowState,
    ) {
        let closing = st.flags & FLOW_FLAG_CLOSING != 0;
        let timeout = t.of(key.proto(), closing);
        if now_ns.saturating_sub(st.last_seen_ns) > timeout || !self.count(st.backend_id, closing) {
            doomed.push(*key);
        }
    }

    /// Counts a flow of backend `id`, unless the backend is dead: then false.
    fn count(&mut self, id: u32, closing: bool) -> bool {
        let i = id as usize;
        let Some(verdict) = self.verdict.get_mut(i) else {
            return false;
        };
        if *verdict == 0 {
            *verdict = if (self.is_dead)(id) { 2 } else { 1 };
        }
        if *verdict == 2 {
            return false;
        }
        let slot = if closing {
            &mut self.closing
        } else {
            &mut self.active
        };
        slot[i] += 1;
        true
    }

    fn into_counts(self) -> FlowCounts {
        let by_id = |v: Vec<u64>| -> HashMap<u32, u64> {
            (0u32..).zip(v).filter(|&(_, n)| n > 0).collect()
        };
        let active = by_id(self.active);
        let closing = by_id(self.closing);
        FlowCounts {
            entries: active.values().chain(closing.values()).sum(),
            active,
            closing,
            expired: 0,
        }
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, XdpError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| XdpError::Map(name, "missing from the object".into()))?;
    T::try_from(map).map_err(|e| XdpError::Map(name, e.to_string()))
}

impl XdpMaps {
    /// Takes the maps out of a loaded object.
    pub fn new(ebpf: &mut Ebpf) -> Result<XdpMaps, XdpError> {
        let rings: Array<MapData, u32> = take(ebpf, "RINGS")?;
        // Its size as loaded (`daemon.max_services`), which an adopted pinned map keeps.
        let len = rings
            .map()
            .info()
            .map_err(|e| XdpError::Map("RINGS", e.to_string()))?
            .max_entries() as usize;
        let rings_mem = match MappedRings::new(rings.map().fd().as_fd(), len) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::info!(error = %e, "the Maglev rings cannot be mapped: writing them in batches");
                None
            }
        };
        Ok(XdpMaps {
            vips: take(ebpf, "VIPS")?,
            vips6: take(ebpf, "VIPS6")?,
            rings,
            rings_mem,
            backends: take(ebpf, "BACKENDS")?,
            stats: take(ebpf, "STATS")?,
            settings: take(ebpf, "SETTINGS")?,
            flows: Some(XdpFlows {
                v4: Conntrack {
                    name: "CONNTRACK",
                    map: take(ebpf, "CONNTRACK")?,
                    batch_ops: true,
                },
                v6: Conntrack {
                    name: "CONNTRACK6",
                    map: take(ebpf, "CONNTRACK6")?,
                    batch_ops: true,
                },
            }),
            batch_writes: true,
        })
    }

    /// The VIPS and VIPS6 entries (what an adopted data path serves): VIP and port, IP
    /// protocol, entry.
    pub fn vips(&self) -> Vec<(SocketAddr, u8, VipInfo)> {
        let v4 = self
            .vips
            .iter()
            .filter_map(Result::ok)
            .map(|(k, info)| (socket_v4(k.addr_be, k.port_be), k.proto, info));
        let v6 = self
            .vips6
            .iter()
            .filter_map(Result::ok)
            .map(|(k, info)| (socket_v6(k.addr_be, k.port_be), k.proto, info));
        v4.chain(v6).collect()
    }

    /// BACKENDS[id].
    pub fn backend(&self, id: u32) -> Option<Backend> {
        self.backends.get(&id, 0).ok()
    }

    /// Whether table writes go through the mapped rings (Linux 5.5+), not map updates.
    pub fn rings_mapped(&self) -> bool {
        self.rings_mem.is_some()
    }

    /// The connection table, once: its owner scans it (off the daemon's core).
    pub fn take_flows(&mut self) -> Option<XdpFlows> {
        self.flows.take()
    }

    /// Sets the flood guard to `new_flows_per_sec` for the node (0: off): each CPU may insert
    /// its share per slice, as receive-side scaling spreads a flood over the CPUs.
    pub fn set_flood_guard(&mut self, new_flows_per_sec: u32) -> Result<(), XdpError> {
        let cpus = aya::util::nr_cpus().map_or(1, |n| n.max(1)) as u64;
        let settings = Settings {
            flood_new_flows_per_slice: flood_per_slice(new_flows_per_sec, cpus),
        };
        self.settings
            .set(0, settings, 0)
            .map_err(|e| XdpError::Map("SETTINGS", e.to_string()))
    }

    /// Sets BACKENDS[id].
    pub fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), XdpError> {
        self.backends
            .set(id, backend, 0)
            .map_err(|e| XdpError::Map("BACKENDS", format!("[{id}]: {e}")))
    }

    /// Writes a whole Maglev table into ring `ring` (`MAGLEV_M` backend ids): one copy into the
    /// mapped rings, else one batch where the kernel has them, else entry by entry.
    pub fn write_ring(&mut self, ring: u32, table: &[u32]) -> Result<(), XdpError> {
        let base = ring * MAGLEV_M;
        if let Some(mem) = &mut self.rings_mem
            && mem.write(base as usize, table)
        {
            return Ok(());
        }
        if self.batch_writes {
            match batch::update_array(self.rings.map().fd().as_fd(), base, table) {
                Ok(()) => return Ok(()),
                Err(e) if batch::unsupported(&e) => {
                    tracing::info!(error = %e, "no batch writes on the Maglev rings: writing them entry by entry");
                    self.batch_writes = false;
                }
                Err(e) => return Err(XdpError::Map("RINGS", format!("[{ring}]: {e}"))),
            }
        }
        for (slot, id) in table.iter().enumerate() {
            self.rings
                .set(base + slot as u32, id, 0)
                .map_err(|e| XdpError::Map("RINGS", format!("[{ring}][{slot}]: {e}")))?;
        }
        Ok(())
    }

    /// Inserts or replaces a VIPS (or VIPS6) entry.
    pub fn set_vip(&mut self, key: &AnyVipKey, info: &VipInfo) -> Result<(), XdpError> {
        match key {
            AnyVipKey::V4(k) => self
                .vips
                .insert(k, info, 0)
                .map_err(|e| XdpError::Map("VIPS", format!("insert: {e}"))),
            AnyVipKey::V6(k) => self
                .vips6
                .insert(k, info, 0)
                .map_err(|e| XdpError::Map("VIPS6", format!("insert: {e}"))),
        }
    }

    /// Removes a VIPS (or VIPS6) entry (one already gone is fine).
    pub fn remove_vip(&mut self, key: &AnyVipKey) -> Result<(), XdpError> {
        let (name, r) = match key {
            AnyVipKey::V4(k) => ("VIPS", self.vips.remove(k)),
            AnyVipKey::V6(k) => ("VIPS6", self.vips6.remove(k)),
        };
        match r {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(XdpError::Map(name, format!("remove: {e}"))),
        }
    }

    /// Returns a backend's summed counters and zeroes them, so that the next backend given the
    /// id starts from zero.
    pub fn retire_backend(&mut self, id: u32) -> Result<Counter, XdpError> {
        let index = lb_common::STATS_BACKEND_BASE + id;
        let err = |e: aya::maps::MapError| XdpError::Map("STATS", format!("[{index}]: {e}"));
        let per_cpu = self.stats.get(&index, 0).map_err(err)?;
        let mut last = Counter::default();
        for c in per_cpu.iter() {
            last.add(*c);
        }
        let zeros = PerCpuValues::try_from(vec![Counter::default(); per_cpu.len()])
            .map_err(|e| XdpError::Map("STATS", format!("[{index}]: {e}")))?;
        self.stats.set(index, zeros, 0).map_err(err)?;
        Ok(last)
    }

    /// Sums the per-CPU counters: index → counter (reasons, then services, then backends).
    pub fn read_stats(&self) -> Result<Vec<Counter>, XdpError> {
        sum_stats(&self.stats)
    }

    /// [`Self::read_stats`] entry by entry, as where the kernel has no batch reads of arrays
    /// (tests and the benchmark compare the two).
    pub fn read_stats_walked(&self) -> Result<Vec<Counter>, XdpError> {
        sum_stats_each(&self.stats)
    }

    /// [`Self::read_stats`] in batches only: an error where the kernel has none.
    pub fn read_stats_batched(&self) -> Result<Vec<Counter>, XdpError> {
        sum_stats_batched(&self.stats)
    }

    /// A second handle on the counters, for readers on other threads (`lbctl status` and
    /// scrapes read them without the daemon's core).
    pub fn stats_reader(&self) -> Result<XdpStats, XdpError> {
        let err = |e: String| XdpError::Map("STATS", e);
        let fd = self
            .stats
            .map()
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| err(format!("duplicating the map's descriptor: {e}")))?;
        let data = MapData::from_fd(fd).map_err(|e| err(e.to_string()))?;
        let stats = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
            .map_err(|e| err(e.to_string()))?;
        Ok(XdpStats(stats))
    }
}

/// The per-CPU counters (STATS), readable from any thread.
pub struct XdpStats(PerCpuArray<MapData, Counter>);

impl XdpStats {
    /// Sums the per-CPU counters: index → counter (reasons, then services, then backends).
    pub fn read(&self) -> Result<Vec<Counter>, XdpError> {
        sum_stats(&self.0)
    }
}

/// Sums the per-CPU counters: one batch read of the whole map where the kernel has it (5.7+;
/// 8,717 entries, read every second by the rates sampler and on each scrape), else entry by
/// entry, two syscalls each.
fn sum_stats(stats: &PerCpuArray<MapData, Counter>) -> Result<Vec<Counter>, XdpError> {
    sum_stats_batched(stats).or_else(|e| {
        tracing::debug!(error = %e, "batch read of STATS failed: reading it entry by entry");
        sum_stats_each(stats)
    })
}

/// [`sum_stats`] in batches only.
fn sum_stats_batched(stats: &PerCpuArray<MapData, Counter>) -> Result<Vec<Counter>, XdpError> {
    let err = |e: String| XdpError::Map("STATS", e);
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| err(e.to_string()))?;
    let values = batch::lookup_percpu_array::<Counter>(stats.map().fd().as_fd(), STATS_LEN, cpus)
        .map_err(|e| err(format!("batch read: {e}")))?;
    Ok(values
        .chunks_exact(cpus)
        .map(|per_cpu| {
            let mut sum = Counter::default();
            for c in per_cpu {
                sum.add(*c);
            }
            sum
        })
        .collect())
}

/// [`sum_stats`] entry by entry.
fn sum_stats_each(stats: &PerCpuArray<MapData, Counter>) -> Result<Vec<Counter>, XdpError> {
    let mut out = vec![Counter::default(); STATS_LEN as usize];
    for (i, slot) in out.iter_mut().enumerate() {
        let per_cpu = stats
            .get(&(i as u32), 0)
            .map_err(|e| XdpError::Map("STATS", e.to_string()))?;
        for c in per_cpu.iter() {
            slot.add(*c);
        }
    }
    Ok(out)
}

/// Entries of the RINGS map for `max_services` services: two tables each.
pub fn rings_len(max_services: u32) -> u32 {
    2 * max_services.clamp(1, lb_common::MAX_SERVICES) * MAGLEV_M
}

/// One CPU's share of a node's new-flow rate per flood-guard slice (at least one; 0 stays 0).
pub fn flood_per_slice(new_flows_per_sec: u32, cpus: u64) -> u64 {
    if new_flows_per_sec == 0 {
        return 0;
    }
    u64::from(new_flows_per_sec)
        .div_ceil(cpus.max(1) * lb_common::FLOOD_SLICES_PER_SEC)
        .max(1)
}

impl XdpFlows {
    /// One pass over the connection tables: counts flows per backend and deletes entries idle
    /// past their timeout and entries whose backend `is_dead` (freed or of a removed service).
    ///
    /// Reads and deletes in batches where the kernel has them (5.6+), else entry by entry. The
    /// tables may hold millions of flows, so the per-flow work is array indexing: `is_dead` is
    /// asked once per backend id.
    pub fn scan_at(
        &mut self,
        now_ns: u64,
        t: FlowTimeouts,
        is_dead: impl Fn(u32) -> bool,
    ) -> FlowCounts {
        let mut tally = Tally::new(is_dead);
        let (mut doomed4, mut doomed6) = (Vec::new(), Vec::new());
        let batched = self
            .v4
            .try_batched(|k, v| tally.visit(now_ns, t, &mut doomed4, k, v))
            && self
                .v6
                .try_batched(|k, v| tally.visit(now_ns, t, &mut doomed6, k, v));
        if !batched {
            // Part of a table may have been counted: start over, entry by entry.
            tally.clear();
            doomed4.clear();
            doomed6.clear();
            self.v4
                .each_flow(|k, v| tally.visit(now_ns, t, &mut doomed4, k, v));
            self.v6
                .each_flow(|k, v| tally.visit(now_ns, t, &mut doomed6, k, v));
        }
        let expired = self.v4.delete(doomed4, batched) + self.v6.delete(doomed6, batched);
        let mut counts = tally.into_counts();
        counts.expired = expired;
        counts
    }

    /// Lists the flows `query` asks for (see [`crate::flows`]): one read pass over each table,
    /// the `limit` most recently active kept.
    pub fn list_at(&mut self, now_ns: u64, t: FlowTimeouts, query: &FlowQuery) -> FlowListing {
        let mut collector = Collector::new(query);
        let batched = self
            .v4
            .try_batched(|k, v| offer(&mut collector, now_ns, t, k, v))
            && self
                .v6
                .try_batched(|k, v| offer(&mut collector, now_ns, t, k, v));
        if !batched {
            collector = Collector::new(query);
            self.v4
                .each_flow(|k, v| offer(&mut collector, now_ns, t, k, v));
            self.v6
                .each_flow(|k, v| offer(&mut collector, now_ns, t, k, v));
        }
        collector.finish()
    }

    /// Whether scans read and delete in batches (the default, where the kernel has them) or
    /// entry by entry; tests compare the two.
    pub fn set_batch_ops(&mut self, on: bool) {
        self.v4.batch_ops = on;
        self.v6.batch_ops = on;
    }

    /// Whether scans still use batches (false once the kernel refused them).
    pub fn batch_ops(&self) -> bool {
        self.v4.batch_ops && self.v6.batch_ops
    }

    /// Looks up one IPv4 flow (tests and diagnostics).
    pub fn flow(&self, key: &FlowKey) -> Option<FlowState> {
        self.v4.map.get(key, 0).ok()
    }

    /// Looks up one IPv6 flow (tests and diagnostics).
    pub fn flow6(&self, key: &FlowKey6) -> Option<FlowState> {
        self.v6.map.get(key, 0).ok()
    }
}

/// Offers one flow to a listing.
fn offer<K: TableKey>(
    collector: &mut Collector<'_>,
    now_ns: u64,
    t: FlowTimeouts,
    key: &K,
    st: &FlowState,
) {
    let Some(proto) = Proto::from_number(key.proto()) else {
        return;
    };
    let closing = st.flags & FLOW_FLAG_CLOSING != 0;
    let idle = now_ns.saturating_sub(st.last_seen_ns);
    let timeout = t.of(key.proto(), closing);
    collector.offer(FlowRecord {
        proto,
        client: key.client(),
        vip: key.vip(),
        backend_id: st.backend_id,
        closing,
        idle: Duration::from_nanos(idle),
        expires: Some(Duration::from_nanos(timeout.saturating_sub(idle))),
    });
}

impl<K: TableKey> Conntrack<K> {
    /// Deletes `doomed` (in a batch when the scan could read in batches); returns how many
    /// went.
    fn delete(&mut self, doomed: Vec<K>, batched: bool) -> u64 {
        let mut expired = 0;
        if batched {
            let fd = self.map.map().fd().as_fd();
            match batch::delete(fd, &doomed, &mut expired) {
                Ok(()) => return expired,
                // The keys deleted already fail again below, uncounted.
                Err(e) => {
                    tracing::warn!(table = self.name, error = %e, "deleting expired flows in batches failed: deleting them one by one");
                }
            }
        }
        for key in doomed {
            if self.map.remove(&key).is_ok() {
                expired += 1;
            }
        }
        expired
    }

    /// Calls `f` on every flow in batches, where the kernel has them. Returns false when it
    /// could not (then `f` may have seen part of the table: start over with [`Self::each_flow`]).
    fn try_batched(&mut self, f: impl FnMut(&K, &FlowState)) -> bool {
        if !self.batch_ops {
            return false;
        }
        match batch::for_each(self.map.map().fd().as_fd(), f) {
            Ok(()) => true,
            Err(e) => {
                if batch::unsupported(&e) {
                    tracing::info!(table = self.name, error = %e, "no batch operations on the connection table: reading it entry by entry");
                    self.batch_ops = false;
                } else {
                    tracing::warn!(table = self.name, error = %e, "reading the connection table in batches failed: reading it entry by entry");
                }
                false
            }
        }
    }

    /// Calls `f` on every flow, entry by entry.
    fn each_flow(&self, mut f: impl FnMut(&K, &FlowState)) {
        for item in self.map.iter() {
            // An entry can vanish under us (LRU eviction): skip it.
            let Ok((key, st)) = item else { continue };
            f(&key, &st);
        }
    }
}

/// Result of one `BPF_PROG_TEST_RUN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunOutput {
    /// XDP action returned by the program.
    pub action: u32,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
    /// Mean run time per repeat, as the kernel measured it.
    pub ns_per_run: u64,
}

/// Runs a loaded XDP program on one packet through `BPF_PROG_TEST_RUN`, `repeat` times.
/// Serves both the fixture tests (repeat 1) and the per-packet benchmark.
pub fn test_run(
    ebpf: &Ebpf,
    program: &str,
    packet: &[u8],
    repeat: u32,
) -> Result<TestRunOutput, XdpError> {
    use aya::programs::{TestRun as _, TestRunOptions};
    let prog: &Xdp = ebpf
        .program(program)
        .ok_or_else(|| XdpError::Load(format!("program {program} missing")))?
        .try_into()
        .map_err(|e| XdpError::Load(format!("{program}: {e}")))?;
    let mut out = vec![0u8; packet.len() + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        })
        .map_err(|e| XdpError::Load(format!("test run of {program}: {e:#}")))?;
    out.truncate(r.data_size_out as usize);
    Ok(TestRunOutput {
        action: r.return_value,
        packet: out,
        ns_per_run: r.duration.as_nanos() as u64,
    })
}
