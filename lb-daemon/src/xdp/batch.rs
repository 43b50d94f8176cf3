//! Batched reads, writes and deletes of BPF maps (`BPF_MAP_LOOKUP_BATCH`,
//! `BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`, Linux 5.6+), which aya does not wrap.
//!
//! Walking a map with aya's iterator costs two syscalls per entry (next key, then lookup). The
//! connection table holds up to millions of flows and is scanned every few seconds, so that walk
//! alone would keep a core busy under load; a batch moves thousands of entries per syscall.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use aya::Pod;

/// `BPF_MAP_LOOKUP_BATCH` from `enum bpf_cmd` (uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// `BPF_MAP_UPDATE_BATCH` from `enum bpf_cmd`.
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// `BPF_MAP_DELETE_BATCH` from `enum bpf_cmd`.
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// `ENOTSUPP`: the kernel-internal "not supported" some map types answer batch commands with.
const ENOTSUPP: i32 = 524;
/// Entries asked for per lookup call (grown when one hash bucket holds more).
const LOOKUP_CHUNK: usize = 4096;
/// Largest chunk a lookup grows to before giving up on a bucket.
const LOOKUP_CHUNK_MAX: usize = 1 << 20;

/// The `batch` member of `union bpf_attr`, the argument of the batch commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const _: () = assert!(std::mem::size_of::<BatchAttr>() == 56);

/// Runs one batch command; the kernel writes the count it handled back into `attr`.
fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; the pointers in it point
    // at buffers of `attr.count` elements that outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether an error of the first batch call means "this kernel or map has no batch commands".
pub fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP | libc::ENOSYS)
    )
}

/// Calls `f` with every entry of the hash map `fd`, a chunk of entries per syscall. Entries
/// added or deleted meanwhile may or may not be seen, as with any walk of a live map.
pub fn for_each<K: Pod, V: Pod>(fd: BorrowedFd<'_>, mut f: impl FnMut(&K, &V)) -> io::Result<()> {
    let mut chunk = LOOKUP_CHUNK;
    // SAFETY: K and V are Pod: any bytes, zeroes included, are valid values.
    let zero_k: K = unsafe { std::mem::zeroed() };
    let zero_v: V = unsafe { std::mem::zeroed() };
    let mut keys = vec![zero_k; chunk];
    let mut values = vec![zero_v; chunk];
    // Opaque position tokens: a bucket index (u32) for hash maps; a u64 leaves room.
    let mut position = 0u64;
    let mut next = 0u64;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &mut position as *mut u64 as u64
            },
            out_batch: &mut next as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = (attr.count as usize).min(chunk);
        let done = match result {
            Ok(()) => false,
            // The walk reached the end; the entries of this last call are valid.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // One bucket holds more entries than the chunk: grow it and ask again.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && chunk < LOOKUP_CHUNK_MAX => {
                chunk *= 2;
                keys.resize(chunk, zero_k);
                values.resize(chunk, zero_v);
                continue;
            }
            Err(e) => return Err(e),
        };
        for (k, v) in keys.iter().zip(&values).take(got) {
            f(k, v);
        }
        if done {
            return Ok(());
        }
        position = next;
        first = false;
    }
}

/// Deletes `keys` from the map `fd`, a chunk per syscall; keys that are gone already (an LRU
/// eviction in between) are skipped. Adds the number deleted to `deleted`, also when it fails
/// part way.
pub fn delete<K: Pod>(fd: BorrowedFd<'_>, keys: &[K], deleted: &mut u64) -> io::Result<()> {
    let mut rest = keys;
    while !rest.is_empty() {
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: u32::try_from(rest.len()).unwrap_or(u32::MAX),
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let result = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        // On an error the kernel stops at the failing key; `count` says how many went before.
        let done = (attr.count as usize).min(rest.len());
        *deleted += done as u64;
        match result {
            Ok(()) => rest = &rest[done..],
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                rest = rest.get(done + 1..).unwrap_or_default();
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads the whole per-CPU array map `fd` of `len` entries of `V`, on `cpus` possible CPUs, in
/// chunks of consecutive indices: `out[i * cpus + cpu]`. The kernel lays each entry out as one
/// value per possible CPU, each rounded up to 8 bytes, which `V` must already be.
pub fn lookup_percpu_array<V: Pod>(
    fd: BorrowedFd<'_>,
    len: u32,
    cpus: usize,
) -> io::Result<Vec<V>> {
    const CHUNK: u32 = 1024;
    if !size_of::<V>().is_multiple_of(8) {
        return Err(io::Error::other(
            "per-CPU values must be a multiple of 8 bytes",
        ));
    }
    // SAFETY: V is Pod: any bytes, zeroes included, are a valid value.
    let zero: V = unsafe { std::mem::zeroed() };
    let mut out = vec![zero; len as usize * cpus];
    let mut keys = vec![0u32; CHUNK as usize];
    // The position tokens of an array walk are indices.
    let mut position = 0u32;
    let mut next = 0u32;
    let mut read = 0u32;
    while read < len {
        let want = CHUNK.min(len - read);
        let mut attr = BatchAttr {
            in_batch: if read == 0 {
                0
            } else {
                &mut position as *mut u32 as u64
            },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: out[read as usize * cpus..].as_mut_ptr() as u64,
            count: want,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = attr.count.min(want);
        match result {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                read += got;
                break;
            }
            Err(e) => return Err(e),
        }
        // An array walk returns its indices in order, from `position` on.
        if got == 0 || keys.first() != Some(&read) {
            return Err(io::Error::other(
                "the array walk did not continue where it stopped",
            ));
        }
        read += got;
        position = next;
    }
    if read != len {
        return Err(io::Error::other(format!(
            "the array walk gave {read} of {len} entries"
        )));
    }
    Ok(out)
}

/// Writes `values` at the consecutive indices `first..` of the array map `fd`, a chunk per
/// syscall (a Maglev table is 65,537 entries: one call instead of 65,537).
pub fn update_array<V: Pod>(fd: BorrowedFd<'_>, first: u32, values: &[V]) -> io::Result<()> {
    const CHUNK: usize = 1 << 16;
    for (n, chunk) in values.chunks(CHUNK).enumerate() {
        let base = first + (n * CHUNK) as u32;
        let keys: Vec<u32> = (base..).take(chunk.len()).collect();
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
        if attr.count as usize != chunk.len() {
            return Err(io::Error::other(format!(
                "the kernel wrote {} of {} entries",
                attr.count,
                chunk.len()
            )));
        }
    }
    Ok(())
}
