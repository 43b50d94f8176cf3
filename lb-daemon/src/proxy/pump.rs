//! The byte pump of one proxied TCP connection: both directions at once until both have
//! ended, one fails, the connection idles out or the service shuts down.
//!
//! Each direction moves bytes with `splice(2)` through its own pipe (socket → pipe → socket:
//! the payload stays in the kernel) where it can, else with a copy loop through a userspace
//! buffer. Both wait on tokio's readiness (`readable`/`writable`, then `try_io`), so nothing
//! blocks the runtime. When one side sends FIN, the pump shuts down the write half of the other
//! side and keeps pumping the opposite direction until it ends too (half-close).

use std::{
    io,
    net::Shutdown,
    sync::{
        LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    net::TcpStream,
    time::{Instant, sleep_until},
};
use tokio_util::sync::CancellationToken;

use super::{backends::Counters, ratelimit::RateLimit};

/// Copy-loop buffer per direction. Small, because a busy proxy holds two per connection; the
/// splice path needs no buffer at all.
const COPY_BUF: usize = 16 * 1024;
/// Bytes a direction copies through a buffer before it switches to splice: a short request or
/// answer never pays for two pipes (four descriptors and their set-up); a bulk transfer does,
/// and then moves the rest without copies (HAProxy's `splice-auto` idea).
const SPLICE_AFTER: u64 = 64 * 1024;

/// How a connection's pump ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Both directions reached end of stream.
    Done,
    /// No byte moved in either direction for the idle timeout.
    Idle,
    /// The service is shutting down.
    Shutdown,
    /// A read or write failed (typically a reset by one of the peers).
    Error(io::Error),
}

/// What the pump needs besides the two sockets.
pub(crate) struct PumpParams<'a> {
    /// Try splice first.
    pub splice: bool,
    /// Idle timeout.
    pub idle: Duration,
    /// The service's and the backend's counters.
    pub counters: [&'a Counters; 2],
    /// Cancelled when the service shuts down.
    pub cancel: &'a CancellationToken,
}

/// Bytes moved through one connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Client → backend.
    pub bytes_in: u64,
    /// Backend → client.
    pub bytes_out: u64,
    /// Directions that used the copy loop instead of splice (0, 1 or 2).
    pub copy_loops: u32,
}

/// Pumps bytes between `client` and `backend` until the connection ends; says why and how much.
pub(crate) async fn pump(
    client: &TcpStream,
    backend: &TcpStream,
    p: PumpParams<'_>,
) -> (End, Totals) {
    let state = State {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
        bytes: [AtomicU64::new(0), AtomicU64::new(0)],
        copy_loops: AtomicU64::new(0),
        counters: p.counters,
    };
    let c2b = one_way(client, backend, Dir::In, p.splice, &state);
    let b2c = one_way(backend, client, Dir::Out, p.splice, &state);
    let end = tokio::select! {
        r = async { tokio::try_join!(c2b, b2c) } => match r {
            Ok(_) => End::Done,
            Err(e) => End::Error(e),
        },
        () = idle(&state, p.idle) => End::Idle,
        () = p.cancel.cancelled() => End::Shutdown,
    };
    let totals = Totals {
        bytes_in: state.bytes[0].load(Ordering::Relaxed),
        bytes_out: state.bytes[1].load(Ordering::Relaxed),
        copy_loops: u32::try_from(state.copy_loops.load(Ordering::Relaxed)).unwrap_or(2),
    };
    (end, totals)
}

/// Direction of a byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Client → backend.
    In,
    /// Backend → client.
    Out,
}

/// Shared by both directions of one connection (atomics: the two directions run in one task,
/// but the task must be `Send`, which rules out `Cell`).
struct State<'a> {
    start: Instant,
    /// Milliseconds from `start` to the last byte moved in either direction.
    last_ms: AtomicU64,
    /// Bytes moved in and out.
    bytes: [AtomicU64; 2],
    copy_loops: AtomicU64,
    counters: [&'a Counters; 2],
}

impl State<'_> {
    fn moved(&self, dir: Dir, n: usize) {
        let n = n as u64;
        let since = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(since, Ordering::Relaxed);
        let i = match dir {
            Dir::In => 0,
            Dir::Out => 1,
        };
        self.bytes[i].fetch_add(n, Ordering::Relaxed);
        for c in self.counters {
            match dir {
                Dir::In => c.add_in(n),
                Dir::Out => c.add_out(n),
            }
        }
    }
}

/// Returns once no byte has moved for `timeout`.
async fn idle(state: &State<'_>, timeout: Duration) {
    loop {
        let last = state.start + Duration::from_millis(state.last_ms.load(Ordering::Relaxed));
        let deadline = last + timeout;
        if Instant::now() >= deadline {
            return;
        }
        sleep_until(deadline).await;
    }
}

/// One direction: `src` to `dst` until end of stream, then half-close `dst`.
async fn one_way(
    src: &TcpStream,
    dst: &TcpStream,
    dir: Dir,
    splice: bool,
    state: &State<'_>,
) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    if splice {
        if copy_loop(src, dst, dir, state, Some(SPLICE_AFTER)).await? == CopyEnd::Eof {
            return Ok(());
        }
        match linux::Pipe::new() {
            Ok(pipe) => match linux::splice_loop(src, dst, dir, &pipe, state).await {
                Ok(()) => return Ok(()),
                Err(linux::SpliceError::Io(e)) => return Err(e),
                Err(linux::SpliceError::Unsupported(e)) => {
                    tracing::debug!(error = %e, "splice unsupported on this socket; copy loop");
                }
            },
            Err(e) => {
                // Most likely out of file descriptors (each spliced connection holds two
                // pipes): this connection still works, through a buffer.
                static WARN: LazyLock<RateLimit> =
                    LazyLock::new(|| RateLimit::new(Duration::from_secs(10)));
                if let Some(held) = WARN.check() {
                    tracing::warn!(error = %e, suppressed = held, "cannot create a pipe for splice; copying through a buffer (raise the open-files limit?)");
                }
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = splice;
    state.copy_loops.fetch_add(1, Ordering::Relaxed);
    copy_loop(src, dst, dir, state, None).await.map(drop)
}

/// After end of stream from one peer, passes the FIN on to the other.
fn half_close(dst: &TcpStream) {
    // The other direction goes on. If the peer is already gone (ENOTCONN), the other direction
    // finds out by itself, so the error is only worth a debug line.
    if let Err(e) = socket2::SockRef::from(dst).shutdown(Shutdown::Write) {
        tracing::debug!(error = %e, "shutdown(SHUT_WR) after end of stream failed");
    }
}

/// How a copy loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyEnd {
    /// End of stream: `dst` is half-closed.
    Eof,
    /// `switch_after` bytes moved: the caller goes on with splice.
    Switch,
}

/// Copies through a userspace buffer: the start of every connection, and the fallback where
/// splice cannot be used. With `switch_after`, returns once that many bytes have moved.
async fn copy_loop(
    src: &TcpStream,
    dst: &TcpStream,
    dir: Dir,
    state: &State<'_>,
    switch_after: Option<u64>,
) -> io::Result<CopyEnd> {
    let mut buf = vec![0u8; COPY_BUF];
    let mut total = 0u64;
    loop {
        if switch_after.is_some_and(|limit| total >= limit) {
            return Ok(CopyEnd::Switch);
        }
        src.readable().await?;
        let n = match src.try_read(&mut buf) {
            Ok(0) => {
                half_close(dst);
                return Ok(CopyEnd::Eof);
            }
            Ok(n) => n,
            // Readiness was stale; try_read has cleared it, wait again.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut sent = 0;
        while sent < n {
            dst.writable().await?;
            match dst.try_write(&buf[sent..n]) {
                Ok(m) => sent += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        state.moved(dir, n);
        total += n as u64;
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::{
        io,
        os::fd::{AsFd, OwnedFd},
    };

    use nix::{
        errno::Errno,
        fcntl::{OFlag, SpliceFFlags, splice},
        unistd::pipe2,
    };
    use tokio::{io::Interest, net::TcpStream};

    use super::{Dir, State, half_close};

    /// Most bytes one splice moves into the pipe: the default pipe capacity (16 pages). The
    /// pipe is not enlarged: unprivileged users share a budget of pipe pages
    /// (`/proc/sys/fs/pipe-user-pages-soft`) that thousands of connections would exhaust.
    const CHUNK: usize = 64 * 1024;

    /// A pipe, both ends non-blocking.
    pub(super) struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
    }

    impl Pipe {
        pub(super) fn new() -> io::Result<Pipe> {
            let (read, write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
            Ok(Pipe { read, write })
        }
    }

    /// Why the splice loop stopped short.
    pub(super) enum SpliceError {
        /// The first splice was refused as unsupported: nothing moved, the copy loop can
        /// take over.
        Unsupported(io::Error),
        /// A real I/O error.
        Io(io::Error),
    }

    impl From<io::Error> for SpliceError {
        fn from(e: io::Error) -> SpliceError {
            SpliceError::Io(e)
        }
    }

    fn splice_once(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
        // SPLICE_F_NONBLOCK makes the pipe end non-blocking for this call; the socket end is
        // non-blocking already (tokio's sockets are O_NONBLOCK).
        splice(
            from,
            None,
            to,
            None,
            len,
            SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
        )
        .map_err(io::Error::from)
    }

    /// `src` → pipe → `dst` until end of stream.
    ///
    /// A splice into a socket whose peer has gone raises SIGPIPE like a write would; Rust
    /// programs ignore SIGPIPE from the start, so it surfaces as EPIPE here.
    ///
    /// The pipe is always drained before the next fill, so a fill that would block means the
    /// socket has no data (not a full pipe) and a drain that would block means the socket's
    /// send buffer is full: `try_io` may then safely clear the socket's readiness.
    pub(super) async fn splice_loop(
        src: &TcpStream,
        dst: &TcpStream,
        dir: Dir,
        pipe: &Pipe,
        state: &State<'_>,
    ) -> Result<(), SpliceError> {
        let mut first = true;
        loop {
            let n = loop {
                src.readable().await?;
                match src.try_io(Interest::READABLE, || splice_once(src, &pipe.write, CHUNK)) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e)
                        if first
                            && matches!(
                                Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                                Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP
                            ) =>
                    {
                        return Err(SpliceError::Unsupported(e));
                    }
                    Err(e) => return Err(SpliceError::Io(e)),
                }
            };
            first = false;
            if n == 0 {
                half_close(dst);
                return Ok(());
            }
            let mut left = n;
            while left > 0 {
                dst.writable().await?;
                match dst.try_io(Interest::WRITABLE, || splice_once(&pipe.read, dst, left)) {
                    Ok(0) => {
                        // The pipe held `left` bytes and we hold its write end: cannot happen;
                        // give up on the connection rather than spin.
                        return Err(SpliceError::Io(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "splice from a non-empty pipe moved nothing",
                        )));
                    }
                    Ok(m) => left -= m.min(left),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(SpliceError::Io(e)),
                }
            }
            state.moved(dir, n);
        }
    }
}
