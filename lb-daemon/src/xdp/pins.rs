//! The XDP data path's pins in bpffs, so that it outlives the process: the maps under
//! `DIR/maps-LAYOUT/NAME`, the XDP link at `DIR/link`.
//!
//! `LAYOUT` names the maps' layout (key and value sizes, entries, a version for changes of
//! meaning): a new lbd adopts maps of its own layout as they are (the connection table and its
//! flows survive) and builds fresh ones for another, removing the old once its program runs.

use std::{
    io,
    path::{Path, PathBuf},
};

use lb_common::{
    Backend, CONNTRACK_DEFAULT_MAX, Counter, FloodSlot, FlowKey, FlowKey6, FlowState, MAGLEV_M,
    MAX_BACKENDS, MAX_RINGS, MAX_SERVICES, STATS_LEN, Settings, VipInfo, VipKey, VipKey6,
};

/// The maps pinned, by their names in the object.
pub const MAP_NAMES: [&str; 9] = [
    "VIPS",
    "VIPS6",
    "RINGS",
    "BACKENDS",
    "CONNTRACK",
    "CONNTRACK6",
    "STATS",
    "SETTINGS",
    "FLOOD",
];
/// Bumped when a map's meaning changes while its sizes stay (3: the IPv6 maps, and STATS
/// reasons renumbered).
const LAYOUT_VERSION: u32 = 3;
/// `BPF_FS_MAGIC` from `linux/magic.h`: the `f_type` of a bpffs mount.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is mounted by convention (and where lbd mounts it when it is not).
const BPFFS: &str = "/sys/fs/bpf";
/// Prefix of the maps' directories.
const MAPS_PREFIX: &str = "maps-";

/// What a start finds under the pin directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing: a first start (or after `lbd --detach`).
    Fresh,
    /// Maps of this layout: adopted as they are.
    Adopted,
    /// Maps of other layouts only: fresh maps, the old ones removed once the new program runs.
    LayoutChanged {
        /// The old maps' directories.
        old: Vec<PathBuf>,
    },
}

/// The pins of one data path (one interface).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pins {
    dir: PathBuf,
    layout: String,
}

/// The layout name of maps sized for `conntrack_max` IPv4 and `conntrack6_max` IPv6 flows and
/// `max_services` services.
pub fn layout(conntrack_max: u32, conntrack6_max: u32, max_services: u32) -> String {
    let sizes = [
        LAYOUT_VERSION as usize,
        size_of::<VipKey>(),
        size_of::<VipInfo>(),
        size_of::<Backend>(),
        size_of::<FlowKey>(),
        size_of::<VipKey6>(),
        size_of::<FlowKey6>(),
        size_of::<FlowState>(),
        size_of::<Counter>(),
        size_of::<Settings>(),
        size_of::<FloodSlot>(),
        MAX_SERVICES as usize,
        MAX_RINGS as usize,
        MAGLEV_M as usize,
        MAX_BACKENDS as usize,
        STATS_LEN as usize,
        conntrack_max as usize,
        conntrack6_max as usize,
        CONNTRACK_DEFAULT_MAX as usize,
        crate::xdp::rings_len(max_services) as usize,
    ];
    let text: Vec<String> = sizes.iter().map(usize::to_string).collect();
    let hash = lb_common::hash::bytes_hash(0x6c62_645f_6c61_796f, text.join(":").as_bytes());
    format!("v{LAYOUT_VERSION}-{hash:016x}")
}

impl Pins {
    /// The pins under `dir` for maps of `layout`.
    pub fn new(dir: &Path, layout: String) -> Pins {
        Pins {
            dir: dir.to_path_buf(),
            layout,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The layout this lbd uses.
    pub fn layout(&self) -> &str {
        &self.layout
    }

    /// Where this layout's maps are pinned.
    pub fn maps_dir(&self) -> PathBuf {
        self.dir.join(format!("{MAPS_PREFIX}{}", self.layout))
    }

    /// Where the XDP link is pinned.
    pub fn link(&self) -> PathBuf {
        self.dir.join("link")
    }

    /// Makes sure the directory exists on a bpffs mount (mounting bpffs at /sys/fs/bpf when
    /// nothing is mounted there), and says what is pinned already.
    pub fn prepare(&self) -> io::Result<Found> {
        ensure_bpffs(&self.dir)?;
        std::fs::create_dir_all(&self.dir)?;
        let mine = self.maps_dir();
        let mut old = Vec::new();
        let mut adopted = false;
        for path in self.all_maps_dirs()? {
            if path == mine {
                adopted = MAP_NAMES.iter().all(|n| path.join(n).exists());
            } else {
                old.push(path);
            }
        }
        Ok(match (adopted, old.is_empty()) {
            (true, _) => Found::Adopted,
            (false, true) => Found::Fresh,
            (false, false) => Found::LayoutChanged { old },
        })
    }

    /// Removes the maps of every other layout (the program using them was replaced).
    pub fn remove_other_layouts(&self) -> io::Result<Vec<PathBuf>> {
        let mine = self.maps_dir();
        let mut removed = Vec::new();
        for path in self.all_maps_dirs()? {
            if path != mine {
                remove_pinned_dir(&path)?;
                removed.push(path);
            }
        }
        Ok(removed)
    }

    /// The maps' directories of every layout pinned here.
    fn all_maps_dirs(&self) -> io::Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let is_maps = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(MAPS_PREFIX));
            if is_maps {
                dirs.push(path);
            }
        }
        Ok(dirs)
    }

    /// Removes every pin (the link first: the program leaves the interface), then the
    /// directory. Returns whether there was anything.
    pub fn remove_all(&self) -> io::Result<bool> {
        if !self.dir.exists() {
            return Ok(false);
        }
        match std::fs::remove_file(self.link()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        remove_pinned_dir(&self.dir)?;
        Ok(true)
    }
}

/// Removes a directory of pins (and directories of pins) in bpffs.
fn remove_pinned_dir(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            remove_pinned_dir(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    std::fs::remove_dir(dir)
}

/// Checks that `dir` (or its nearest existing ancestor) is on bpffs; mounts bpffs at
/// /sys/fs/bpf when `dir` is below it and nothing is mounted there.
fn ensure_bpffs(dir: &Path) -> io::Result<()> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if fs_type(existing)? == BPF_FS_MAGIC {
        return Ok(());
    }
    if dir.starts_with(BPFFS)
        && Path::new(BPFFS).exists()
        && fs_type(Path::new(BPFFS))? != BPF_FS_MAGIC
    {
        mount_bpffs()?;
        if fs_type(existing)? == BPF_FS_MAGIC {
            tracing::info!("mounted bpffs at {BPFFS}");
            return Ok(());
        }
    }
    Err(io::Error::other(format!(
        "{} is not on a bpffs mount (mount -t bpf bpf {BPFFS}, or set daemon.pin_dir below it)",
        dir.display()
    )))
}

fn fs_type(path: &Path) -> io::Result<i64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a zeroed statfs is a valid out-parameter; `c` is a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // f_type's integer type differs between libc targets.
    Ok(st.f_type)
}

fn mount_bpffs() -> io::Result<()> {
    let (src, target, fstype) = (c"bpf", c"/sys/fs/bpf", c"bpf");
    // SAFETY: NUL-terminated strings; no data argument.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_differ_by_table_size_and_are_stable() {
        assert_eq!(layout(262_144, 262_144, 64), layout(262_144, 262_144, 64));
        assert_ne!(layout(262_144, 262_144, 64), layout(524_288, 262_144, 64));
        assert_ne!(
            layout(262_144, 262_144, 64),
            layout(262_144, 1024, 64),
            "a smaller IPv6 table"
        );
        assert_ne!(
            layout(262_144, 262_144, 64),
            layout(262_144, 262_144, 128),
            "rings for more services"
        );
        assert!(layout(1024, 1024, 64).starts_with("v3-"));
    }
}
