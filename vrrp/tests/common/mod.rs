//! Helpers shared by the integration tests: a tiny pcap/pcapng reader and the fixture paths.

use std::path::PathBuf;
use std::time::Duration;

/// One captured frame: its timestamp (since the epoch) and its bytes (Ethernet frame).
#[derive(Debug, Clone)]
pub struct Frame {
    pub ts: Duration,
    pub data: Vec<u8>,
}

/// The directory of the keepalived captures, in the repository: `vrrp/tests/fixtures` (its README
/// says how they were made and what they show).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Reads every frame of fixture `name` (pcap or pcapng). Panics with a clear message if missing.
pub fn fixture(name: &str) -> Vec<Frame> {
    let path = fixtures_dir().join(name);
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
    read_capture(&bytes).unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()))
}

/// Parses a classic pcap or a pcapng file.
pub fn read_capture(bytes: &[u8]) -> Result<Vec<Frame>, String> {
    match bytes.get(..4) {
        Some([0x0a, 0x0d, 0x0d, 0x0a]) => read_pcapng(bytes),
        Some(_) => read_pcap(bytes),
        None => Err("empty file".into()),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    le: bool,
}

impl Reader<'_> {
    fn u16(&self, at: usize) -> Result<u16, String> {
        let b: [u8; 2] = self
            .bytes
            .get(at..at + 2)
            .and_then(|s| s.try_into().ok())
            .ok_or("truncated")?;
        Ok(if self.le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    }

    fn u32(&self, at: usize) -> Result<u32, String> {
        let b: [u8; 4] = self
            .bytes
            .get(at..at + 4)
            .and_then(|s| s.try_into().ok())
            .ok_or("truncated")?;
        Ok(if self.le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }

    fn slice(&self, at: usize, len: usize) -> Result<&[u8], String> {
        self.bytes
            .get(at..at + len)
            .ok_or_else(|| "truncated".into())
    }
}

fn read_pcap(bytes: &[u8]) -> Result<Vec<Frame>, String> {
    let magic = bytes.get(..4).ok_or("truncated")?;
    let (le, nanos) = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (true, false),
        [0xa1, 0xb2, 0xc3, 0xd4] => (false, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (true, true),
        [0xa1, 0xb2, 0x3c, 0x4d] => (false, true),
        _ => return Err("not a pcap file".into()),
    };
    let r = Reader { bytes, le };
    let mut at = 24;
    let mut frames = Vec::new();
    while at < bytes.len() {
        let secs = r.u32(at)?;
        let frac = r.u32(at + 4)?;
        let caplen = r.u32(at + 8)? as usize;
        let data = r.slice(at + 16, caplen)?.to_vec();
        let ts = Duration::from_secs(secs.into())
            + if nanos {
                Duration::from_nanos(frac.into())
            } else {
                Duration::from_micros(frac.into())
            };
        frames.push(Frame { ts, data });
        at += 16 + caplen;
    }
    Ok(frames)
}

fn read_pcapng(bytes: &[u8]) -> Result<Vec<Frame>, String> {
    let mut r = Reader { bytes, le: true };
    let mut at = 0;
    // Timestamp unit (in nanoseconds per tick) of each interface of the current section.
    let mut units: Vec<u64> = Vec::new();
    let mut frames = Vec::new();
    while at + 12 <= bytes.len() {
        if r.slice(at, 4)? == [0x0a, 0x0d, 0x0d, 0x0a] {
            // Section header: the byte-order magic decides the endianness of what follows.
            r.le = match r.slice(at + 8, 4)? {
                [0x4d, 0x3c, 0x2b, 0x1a] => true,
                [0x1a, 0x2b, 0x3c, 0x4d] => false,
                _ => return Err("bad byte-order magic".into()),
            };
            units.clear();
        }
        let block_type = r.u32(at)?;
        let total = r.u32(at + 4)? as usize;
        if total < 12 || !total.is_multiple_of(4) {
            return Err(format!("bad block length {total} at {at}"));
        }
        match block_type {
            1 => {
                // Interface description: options start after linktype, reserved, snaplen.
                let mut unit = 1_000; // default: microseconds
                let mut opt = at + 16;
                while opt + 4 <= at + total - 4 {
                    let code = r.u16(opt)?;
                    let len = r.u16(opt + 2)? as usize;
                    if code == 0 {
                        break;
                    }
                    if code == 9 && len == 1 {
                        let v = r.slice(opt + 4, 1)?[0];
                        unit = if v & 0x80 == 0 {
                            1_000_000_000 / 10u64.pow(u32::from(v).min(9))
                        } else {
                            1_000_000_000 >> (v & 0x7f).min(30)
                        };
                    }
                    opt += 4 + len.div_ceil(4) * 4;
                }
                units.push(unit.max(1));
            }
            6 => {
                // Enhanced packet.
                let iface = r.u32(at + 8)? as usize;
                let ticks = (u64::from(r.u32(at + 12)?) << 32) | u64::from(r.u32(at + 16)?);
                let caplen = r.u32(at + 20)? as usize;
                let data = r.slice(at + 28, caplen)?.to_vec();
                let unit = units
                    .get(iface)
                    .copied()
                    .ok_or("packet before its interface")?;
                frames.push(Frame {
                    ts: Duration::from_nanos(ticks * unit),
                    data,
                });
            }
            _ => {}
        }
        at += total;
    }
    Ok(frames)
}

/// The IPv4 datagram of an Ethernet frame carrying IP protocol 112, cut to its total length.
pub fn vrrp_datagram(frame: &[u8]) -> Option<&[u8]> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..)?;
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 112 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    ip.get(..total)
}
