//! Every map of the data path, one comment each. Keys and values are `lb-common` types, the
//! same definitions userspace uses, so the two sides cannot drift.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Backend, CONNTRACK_DEFAULT_MAX, Counter, DEFAULT_MAX_SERVICES, FloodSlot, FlowKey, FlowKey6,
    FlowState, MAGLEV_M, MAX_BACKENDS, MAX_SERVICES, STATS_LEN, Settings, VipInfo, VipKey, VipKey6,
};

/// BPF_F_NO_COMMON_LRU: per-CPU LRU lists over one shared table (no global LRU lock).
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;

/// VIPS: (VIP, port, protocol) → service id and the Maglev table it uses now.
#[map]
pub static VIPS: HashMap<VipKey, VipInfo> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// VIPS6: the IPv6 services, as VIPS. Their service ids and Maglev rings share one space
/// with the IPv4 ones.
#[map]
pub static VIPS6: HashMap<VipKey6, VipInfo> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// BPF_F_MMAPABLE: userspace maps the array into its memory (Linux 5.5+).
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// RINGS: the Maglev tables, two per service of `MAGLEV_M` slots each, slot → backend id.
/// Mappable, so the daemon writes a whole table as one copy instead of 65,537 map updates.
/// Userspace sizes it from `daemon.max_services` before loading.
#[map]
pub static RINGS: Array<u32> =
    Array::with_max_entries(2 * DEFAULT_MAX_SERVICES * MAGLEV_M, BPF_F_MMAPABLE);

/// BACKENDS: backend id → MAC, address and state.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// CONNTRACK: flow (5-tuple, or client address only) → backend id; LRU so old flows age out.
/// Userspace sizes it from `[daemon] conntrack_max` before loading.
#[map]
pub static CONNTRACK: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(CONNTRACK_DEFAULT_MAX, BPF_F_NO_COMMON_LRU);

/// CONNTRACK6: the IPv6 flows, as CONNTRACK. A table of its own keeps IPv4 keys at 16 bytes
/// (hashed and compared on every packet). Userspace sizes it from `[daemon] conntrack6_max`.
#[map]
pub static CONNTRACK6: LruHashMap<FlowKey6, FlowState> =
    LruHashMap::with_max_entries(CONNTRACK_DEFAULT_MAX, BPF_F_NO_COMMON_LRU);

/// STATS: per-CPU packet and byte counters: pass/drop reasons, then services, then backends.
#[map]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_LEN, 0);

/// SETTINGS: one entry of run-time knobs (the flood guard's rate), written by userspace.
#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// FLOOD: per-CPU new-flow count of the flood guard's current time slice.
#[map]
pub static FLOOD: PerCpuArray<FloodSlot> = PerCpuArray::with_max_entries(1, 0);
