//! Listening sockets that outlive a process, so that a planned restart of the userspace proxy
//! refuses no connection: the kernel keeps queueing clients in a listening socket's backlog as
//! long as some process holds it open, whichever process accepts them later.
//!
//! Two ways a starting lbd inherits its listeners, both by name ([`name`]):
//! - **`lbd --replace`**, as HAProxy's seamless reload does: the new process asks the running one
//!   over the control socket ([`take_over`]); the old one sends its listeners (`SCM_RIGHTS`),
//!   lets go of what the two cannot share (VRRP holding the VIPs, the pinned XDP data path, the
//!   control socket, the metrics port), says `released`, and then lets its open proxied
//!   connections finish before it exits.
//! - **systemd's file descriptor store**: each listener is pushed to it (`FDSTORE=1`, [`store`]),
//!   so that across `systemctl restart`, a crash and its `Restart=`, systemd holds the sockets and
//!   passes them back (`LISTEN_FDS`, [`Inherited::from_systemd`]). A socket unit with the same
//!   names works the same way.
//!
//! The frames after the `handover` request are a 4-byte big-endian length and a JSON [`Frame`];
//! the descriptors of a `sockets` frame ride on its first byte.

use std::{
    collections::BTreeMap,
    io::{self, IoSlice, IoSliceMut, Read as _, Write as _},
    net::SocketAddr,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    path::Path,
    time::Duration,
};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

use crate::config::Proto;

/// Descriptors per `sockets` frame: below the kernel's `SCM_MAX_FD` (253).
const FDS_PER_FRAME: usize = 200;
/// Longest frame accepted.
const MAX_FRAME: usize = 1 << 20;
/// How long a replacing lbd waits for the running one to let go (its VRRP speaker and core
/// stop; a stop that holds the VIPs is quick).
pub const RELEASE_WAIT: Duration = Duration::from_secs(20);

/// Errors of a hand-over.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// No lbd answers on the control socket.
    #[error("no lbd to replace: nothing answers on {path}: {source}")]
    NotRunning {
        /// Control socket path.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The running lbd refused or failed.
    #[error("the running lbd refused the hand-over: {0}")]
    Refused(String),
    /// The exchange broke off.
    #[error("hand-over: {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A frame that is not understood.
    #[error("hand-over: bad frame from the running lbd: {0}")]
    BadFrame(String),
}

/// One frame of the hand-over, from the running lbd to its successor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "frame", rename_all = "snake_case", deny_unknown_fields)]
pub enum Frame {
    /// Listening sockets, one descriptor per name in order.
    Sockets {
        /// Their names ([`name`]).
        names: Vec<String>,
    },
    /// The running lbd has let go of everything the two cannot share; the successor goes on.
    Released {
        /// Its process id (it exits once its open connections are done).
        pid: u32,
    },
    /// The running lbd cannot hand over.
    Error {
        /// Why.
        message: String,
    },
}

/// The name a listener is handed over and stored under: protocol, address and port, with no
/// `:` (systemd's `FDNAME` allows none).
pub fn name(proto: Proto, addr: SocketAddr) -> String {
    format!("{proto}-{}-{}", addr.ip(), addr.port()).replace(':', "_")
}

/// Listening sockets a starting lbd was given, by name, until the proxy takes them.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: BTreeMap<String, OwnedFd>,
    /// Where they came from, for the log and the status.
    pub source: Option<String>,
    /// The lbd this one replaces (`lbd --replace`): it held the VIPs for this one.
    pub replaced: Option<u32>,
}

impl Inherited {
    /// Nothing inherited.
    pub fn none() -> Inherited {
        Inherited::default()
    }

    /// The sockets systemd passed (`LISTEN_FDS`, `LISTEN_FDNAMES`): from its file descriptor
    /// store across a restart, or from socket units named as [`name`] names them.
    pub fn from_systemd() -> io::Result<Inherited> {
        let mut sockets = BTreeMap::new();
        for (fd, fd_name) in sd_notify::listen_fds_with_names()? {
            // SAFETY: systemd passed these descriptors to this process for it to own
            // (LISTEN_PID names it); nothing else here takes them.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            sockets.insert(fd_name, owned);
        }
        let source = (!sockets.is_empty()).then(|| "systemd".to_string());
        Ok(Inherited {
            sockets,
            source,
            replaced: None,
        })
    }

    /// Adds `other`'s sockets (a name given twice keeps the later socket).
    pub fn merge(&mut self, other: Inherited) {
        self.sockets.extend(other.sockets);
        if other.source.is_some() {
            self.source = other.source;
        }
        self.replaced = self.replaced.or(other.replaced);
    }

    /// How many sockets are left.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether none is left.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Takes the socket of `proto` on `addr`, if one was inherited and is still what its name
    /// says (a listening socket of that type on that address); a socket that is not is closed.
    pub fn take(&mut self, proto: Proto, addr: SocketAddr) -> Option<OwnedFd> {
        let fd = self.sockets.remove(&name(proto, addr))?;
        let sock = socket2::SockRef::from(&fd);
        let ty = match proto {
            Proto::Tcp => socket2::Type::STREAM,
            Proto::Udp => socket2::Type::DGRAM,
        };
        let local = sock.local_addr().ok().and_then(|a| a.as_socket());
        let listening = proto == Proto::Udp || sock.is_listener().unwrap_or(false);
        if sock.r#type().ok() == Some(ty) && local == Some(addr) && listening {
            Some(fd)
        } else {
            tracing::warn!(proto = %proto, addr = %addr, local = ?local, "an inherited socket is not what its name says; binding anew");
            None
        }
    }

    /// Closes what no service took (services gone from the config), and says so.
    pub fn close_rest(&mut self) {
        for name in std::mem::take(&mut self.sockets).into_keys() {
            tracing::info!(socket = %name, "inherited listener not in the config: closed");
        }
    }
}

/// Pushes a listener to systemd's file descriptor store under [`name`] (nothing outside
/// systemd, or where the unit sets no `FileDescriptorStoreMax=`: then systemd drops it).
pub fn store(name: &str, fd: BorrowedFd<'_>) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let states = [
        sd_notify::NotifyState::FdStore,
        sd_notify::NotifyState::FdName(name),
    ];
    if let Err(e) = sd_notify::notify_with_fds(&states, &[fd]) {
        tracing::warn!(socket = %name, error = %e, "cannot push a listener to systemd's fd store: a restart will refuse connections for a moment");
    }
}

/// Takes a listener out of systemd's file descriptor store (its service is gone).
pub fn unstore(name: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let states = [
        sd_notify::NotifyState::FdStoreRemove,
        sd_notify::NotifyState::FdName(name),
    ];
    if let Err(e) = sd_notify::notify(&states) {
        tracing::warn!(socket = %name, error = %e, "cannot remove a listener from systemd's fd store");
    }
}

/// Sends one frame, with `fds` on its first byte.
pub fn send_frame(stream: &UnixStream, frame: &Frame, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let body = serde_json::to_vec(frame).map_err(io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(io::Error::other)?;
    let mut bytes = len.to_be_bytes().to_vec();
    bytes.extend_from_slice(&body);
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsgs = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsgs };
    let sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(io::Error::from)?;
    // The descriptors went with the first byte; the rest is plain data.
    let mut writer = stream;
    writer.write_all(&bytes[sent..])
}

/// Receives one frame and the descriptors that came with it.
pub fn recv_frame(stream: &UnixStream) -> Result<(Frame, Vec<OwnedFd>), HandoverError> {
    let io = |what| move |source| HandoverError::Io { what, source };
    let mut len = [0u8; 4];
    let mut space = nix::cmsg_space!([RawFd; FDS_PER_FRAME]);
    let (got, fds) = {
        let mut iov = [IoSliceMut::new(&mut len)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| io("receiving a frame")(io::Error::from(e)))?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(|e| io("receiving a frame")(e.into()))? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors in this process for
                // this message; nothing else refers to them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (msg.bytes, fds)
    };
    if got == 0 {
        return Err(io("receiving a frame")(io::ErrorKind::UnexpectedEof.into()));
    }
    let mut reader = stream;
    reader
        .read_exact(&mut len[got..])
        .map_err(io("receiving a frame"))?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(HandoverError::BadFrame(format!(
            "a frame of {n} bytes (at most {MAX_FRAME})"
        )));
    }
    let mut body = vec![0u8; n];
    reader
        .read_exact(&mut body)
        .map_err(io("receiving a frame"))?;
    let frame =
        serde_json::from_slice(&body).map_err(|e| HandoverError::BadFrame(e.to_string()))?;
    Ok((frame, fds))
}

/// The running lbd's side, after a `handover` request: sends `listeners`, in frames of at most
/// [`FDS_PER_FRAME`] descriptors.
pub fn send_sockets(stream: &UnixStream, listeners: &[(String, OwnedFd)]) -> io::Result<()> {
    for chunk in listeners.chunks(FDS_PER_FRAME) {
        let names = chunk.iter().map(|(n, _)| n.clone()).collect();
        let fds: Vec<BorrowedFd<'_>> = chunk.iter().map(|(_, fd)| fd.as_fd()).collect();
        send_frame(stream, &Frame::Sockets { names }, &fds)?;
    }
    Ok(())
}

/// `lbd --replace`: asks the lbd answering on `control` for its listeners and waits until it
/// has let go of the rest ([`Frame::Released`]).
pub fn take_over(control: &Path) -> Result<Inherited, HandoverError> {
    let stream = UnixStream::connect(control).map_err(|source| HandoverError::NotRunning {
        path: control.display().to_string(),
        source,
    })?;
    let io = |what| move |source| HandoverError::Io { what, source };
    stream
        .set_read_timeout(Some(RELEASE_WAIT))
        .map_err(io("setting a timeout"))?;
    (&stream)
        .write_all(b"{\"cmd\":\"handover\"}\n")
        .map_err(io("sending the request"))?;
    let mut inherited = Inherited::none();
    loop {
        let (frame, fds) = match recv_frame(&stream) {
            Ok(f) => f,
            // An lbd from before hand-overs answers with a JSON line, not a frame.
            Err(HandoverError::BadFrame(_)) if inherited.is_empty() => {
                return Err(HandoverError::Refused(
                    "it does not know hand-overs (an older lbd?): stop it and start this one"
                        .into(),
                ));
            }
            Err(e) => return Err(e),
        };
        match frame {
            Frame::Sockets { names } => {
                if names.len() != fds.len() {
                    return Err(HandoverError::BadFrame(format!(
                        "{} names with {} descriptors",
                        names.len(),
                        fds.len()
                    )));
                }
                inherited.sockets.extend(names.into_iter().zip(fds));
            }
            Frame::Released { pid } => {
                inherited.source = Some(format!("lbd pid {pid}"));
                inherited.replaced = Some(pid);
                return Ok(inherited);
            }
            Frame::Error { message } => return Err(HandoverError::Refused(message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_have_no_colon() {
        assert_eq!(
            name(Proto::Tcp, "10.0.0.10:80".parse().unwrap()),
            "tcp-10.0.0.10-80"
        );
        assert_eq!(
            name(Proto::Udp, "[2001:db8::1]:53".parse().unwrap()),
            "udp-2001_db8__1-53"
        );
    }

    /// Listeners go through a socket pair with their names; the received ones are the same
    /// sockets (same local address, still listening), in frames of at most FDS_PER_FRAME.
    #[test]
    fn sockets_cross_with_their_names() {
        let (old, new) = UnixStream::pair().unwrap();
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for _ in 0..(FDS_PER_FRAME + 3) {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            addrs.push(addr);
            listeners.push((name(Proto::Tcp, addr), OwnedFd::from(l)));
        }
        let sender = std::thread::spawn(move || {
            send_sockets(&old, &listeners).unwrap();
            send_frame(&old, &Frame::Released { pid: 42 }, &[]).unwrap();
            drop(listeners);
        });
        let mut got = Inherited::none();
        loop {
            match recv_frame(&new).unwrap() {
                (Frame::Sockets { names }, fds) => {
                    assert!(fds.len() <= FDS_PER_FRAME);
                    got.sockets.extend(names.into_iter().zip(fds));
                }
                (Frame::Released { pid }, fds) => {
                    assert_eq!((pid, fds.len()), (42, 0));
                    break;
                }
                (f, _) => panic!("unexpected {f:?}"),
            }
        }
        sender.join().unwrap();
        assert_eq!(got.len(), addrs.len());
        // The first address: a UDP name does not take a TCP socket.
        assert!(got.take(Proto::Udp, addrs[0]).is_none());
        for addr in &addrs {
            let fd = got.take(Proto::Tcp, *addr).expect("inherited");
            let l = std::net::TcpListener::from(fd);
            assert_eq!(l.local_addr().unwrap(), *addr);
            // Still listening: a client connects and is accepted here.
            let _c = std::net::TcpStream::connect(addr).unwrap();
            l.accept().unwrap();
        }
        assert!(got.is_empty());
    }

    #[test]
    fn a_bad_frame_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(b"{\"result\":\"error\"}\n").unwrap();
        assert!(matches!(recv_frame(&b), Err(HandoverError::BadFrame(_))));
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(&[0, 0, 0, 3, b'{', b'}', b'x']).unwrap();
        assert!(matches!(recv_frame(&b), Err(HandoverError::BadFrame(_))));
        drop(a);
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert!(matches!(recv_frame(&b), Err(HandoverError::Io { .. })));
    }
}
