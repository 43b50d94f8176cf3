//! A stand-in for systemd's file descriptor store (`FileDescriptorStoreMax=`), for tests and
//! benchmarks without systemd as PID 1: lbd pushes its listeners to `NOTIFY_SOCKET` with
//! `FDSTORE=1` and `FDNAME=`, and every start gets them back as `LISTEN_FDS` (from fd 3),
//! `LISTEN_FDNAMES` and `LISTEN_PID`, as systemd does across `systemctl restart` and `Restart=`.

use std::{
    collections::BTreeMap,
    io::IoSliceMut,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::{net::UnixDatagram, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, PoisonError},
};

use anyhow::{Context, Result};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

use crate::Netns;

/// `SD_LISTEN_FDS_START`.
const FIRST_FD: RawFd = 3;

/// The store of one service: its notify socket and the descriptors it pushed, by name.
#[derive(Debug)]
pub struct FdStore {
    socket: UnixDatagram,
    path: PathBuf,
    fds: Mutex<BTreeMap<String, OwnedFd>>,
}

impl FdStore {
    /// A store whose notify socket is `dir/notify.sock`.
    pub fn new(dir: &Path) -> Result<FdStore> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let socket =
            UnixDatagram::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        socket.set_nonblocking(true)?;
        Ok(FdStore {
            socket,
            path,
            fds: Mutex::default(),
        })
    }

    /// Reads every message waiting: `FDSTORE=1` keeps the descriptors under their `FDNAME`,
    /// `FDSTOREREMOVE=1` drops them; other states (READY, STATUS, ...) are not kept.
    fn drain(&self) -> Result<()> {
        let mut fds = self.fds.lock().unwrap_or_else(PoisonError::into_inner);
        let mut buf = vec![0u8; 4096];
        loop {
            let mut space = nix::cmsg_space!([RawFd; 16]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                Err(e) => return Err(e).context("reading the notify socket"),
            };
            let mut got = Vec::new();
            for c in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: the kernel just installed these descriptors in this process.
                    got.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            let n = msg.bytes;
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let has = |line: &str| text.lines().any(|l| l == line);
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("FDNAME="))
                .unwrap_or("stored")
                .to_string();
            if has("FDSTORE=1") {
                if let Some(fd) = got.into_iter().next() {
                    fds.insert(name, fd);
                }
            } else if has("FDSTOREREMOVE=1") {
                fds.remove(&name);
            }
        }
    }

    /// The names stored now.
    pub fn names(&self) -> Result<Vec<String>> {
        self.drain()?;
        Ok(self
            .fds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect())
    }

    /// `program` in `ns` as systemd would start the service: `NOTIFY_SOCKET` set, and the
    /// stored descriptors from fd 3 with `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` (the
    /// pid is the shell's, which `exec`s `ip netns exec`, which `exec`s the program).
    /// Spawn it with [`Netns::spawn`] while the store lives.
    pub fn command(&self, ns: &Netns, program: &str) -> Result<Command> {
        self.drain()?;
        let fds = self.fds.lock().unwrap_or_else(PoisonError::into_inner);
        let names: Vec<String> = fds.keys().cloned().collect();
        let raw: Vec<RawFd> = fds.values().map(|fd| fd.as_raw_fd()).collect();
        anyhow::ensure!(
            raw.len() <= 64,
            "{} descriptors stored (64 at most here)",
            raw.len()
        );
        // bash moves the descriptors (their numbers are the same in the child): first above
        // every number in play, then to 3, 4, ...; the originals and the temporaries are closed.
        // (The namespace's own pre_exec needs its descriptor: nothing is moved before exec.)
        let n = RawFd::try_from(raw.len()).context("too many descriptors")?;
        let base = raw.iter().copied().max().unwrap_or(0).max(FIRST_FD + n) + 1;
        let mut script = String::new();
        for (i, fd) in raw.iter().enumerate() {
            script.push_str(&format!("exec {}<&{fd} {fd}<&-; ", base + i as RawFd));
        }
        for i in 0..n {
            script.push_str(&format!(
                "exec {}<&{} {}<&-; ",
                FIRST_FD + i,
                base + i,
                base + i
            ));
        }
        script.push_str("export LISTEN_PID=$$; exec \"$0\" \"$@\"");
        let mut cmd = Command::new("bash");
        cmd.args(["-c", &script, "ip", "netns", "exec", ns.name(), program]);
        cmd.env("NOTIFY_SOCKET", &self.path);
        // As systemd: no LISTEN_* at all when nothing is passed.
        if !raw.is_empty() {
            cmd.env("LISTEN_FDS", raw.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
        }
        // SAFETY: the closure runs in the forked child before exec and only clears FD_CLOEXEC
        // (fcntl, async-signal-safe) on descriptors this store keeps open for the spawn.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &raw {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(cmd)
    }
}

impl Drop for FdStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
