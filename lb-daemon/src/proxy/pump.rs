//! The byte pump of one proxied TCP connection: both directions at once until both have
//! ended, one fails, the connection idles out or the service shuts down.
//!
//! Each direction moves bytes with `splice(2)` through its own pipe (socket → pipe → socket:
//! the payload stays in the kernel) where it can, else with a copy loop through a userspace
//! buffer. Both wait on tokio's readiness, so nothing blocks the runtime. When one side sends
//! FIN, the pump shuts down the write half of the other side and keeps pumping the opposite
//! direction until it ends too (half-close).
//!
//! Per-connection costs are kept to what the kernel needs, since short connections are where a
//! proxy loses to the direct path (HAProxy's tricks, measured against it in `cargo xtask bench
//! net`): the client's first read happens before tokio knows the socket and the first writes
//! before any wait for readiness, copy buffers come from a per-thread pool and are never
//! zeroed, a short read ends the wait for more, a FIN that already follows the data leaves on
//! the data's segment, and the FIN of the direction that ends last goes out with the `close`
//! that follows instead of a `shutdown` of its own.
//! Bulk directions splice through pipes grown to 1 MiB within a budget.

use std::{
    future::Future as _,
    io,
    net::Shutdown,
    sync::{
        LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, Interest},
    net::{
        TcpStream,
        tcp::{ReadHalf, WriteHalf},
    },
    time::{Instant, sleep_until},
};
use tokio_util::sync::CancellationToken;

use super::{backends::Counters, open::Activity, ratelimit::RateLimit};

/// Copy-loop buffer per direction. Small, because a busy proxy holds two per connection; the
/// splice path needs no buffer at all.
const COPY_BUF: usize = 16 * 1024;
/// Copy buffers each thread keeps for the next connections (at most 1 MiB a thread): a
/// short connection then costs no allocator round trip for its two buffers (HAProxy keeps
/// pools for the same reason).
const POOL_MAX: usize = 64;

thread_local! {
    /// Spare copy buffers of this thread, each empty with `COPY_BUF` capacity.
    static POOL: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A copy buffer from this thread's pool (or new), given back to the pool of the thread that
/// drops it.
struct PooledBuf(Vec<u8>);

impl PooledBuf {
    fn take() -> PooledBuf {
        let spare = POOL.try_with(|p| p.borrow_mut().pop()).ok().flatten();
        // Capacity only: the reads fill the uninitialised tail, so nothing is zeroed.
        PooledBuf(spare.unwrap_or_else(|| Vec::with_capacity(COPY_BUF)))
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        if buf.capacity() != COPY_BUF {
            return;
        }
        buf.clear();
        // try_with: a thread being torn down just frees the buffer.
        let _ = POOL.try_with(|p| {
            let mut pool = p.borrow_mut();
            if pool.len() < POOL_MAX {
                pool.push(buf);
            }
        });
    }
}

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
    /// Stamped on every transfer: the idle timeout and `lbctl flows` read it.
    pub activity: &'a Activity,
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
/// `first` holds what [`read_first`] already took from the client.
///
/// The caller closes both sockets right after: the FIN of the direction that ends last is
/// sent by that close.
pub(crate) async fn pump(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    first: Option<FirstBytes>,
    p: PumpParams<'_>,
) -> (End, Totals) {
    let state = State {
        activity: p.activity,
        bytes: [AtomicU64::new(0), AtomicU64::new(0)],
        copy_loops: AtomicU64::new(0),
        ended: AtomicU64::new(0),
        counters: p.counters,
    };
    let (client_rx, client_tx) = client.split();
    let (backend_rx, backend_tx) = backend.split();
    let c2b = one_way(client_rx, backend_tx, Dir::In, p.splice, &state, first);
    let b2c = one_way(backend_rx, client_tx, Dir::Out, p.splice, &state, None);
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
    /// The last byte moved in either direction.
    activity: &'a Activity,
    /// Bytes moved in and out.
    bytes: [AtomicU64; 2],
    copy_loops: AtomicU64,
    /// Directions that have reached end of stream.
    ended: AtomicU64,
    counters: [&'a Counters; 2],
}

impl State<'_> {
    fn moved(&self, dir: Dir, n: usize) {
        let n = n as u64;
        self.activity.touch();
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
        let deadline = state.activity.last() + timeout;
        if Instant::now() >= deadline {
            return;
        }
        sleep_until(deadline).await;
    }
}

/// One direction: `src` to `dst` until end of stream, then half-close `dst`.
async fn one_way(
    mut src: ReadHalf<'_>,
    mut dst: WriteHalf<'_>,
    dir: Dir,
    splice: bool,
    state: &State<'_>,
    mut first: Option<FirstBytes>,
) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    if splice {
        let copied = copy_loop(
            &mut src,
            &mut dst,
            dir,
            state,
            first.take(),
            Some(SPLICE_AFTER),
        );
        if copied.await? == CopyEnd::Eof {
            return Ok(());
        }
        let (src, dst) = (src.as_ref(), dst.as_ref());
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
    copy_loop(&mut src, &mut dst, dir, state, first, None)
        .await
        .map(drop)
}

/// After end of stream from one peer, passes the FIN on to the other, unless the opposite
/// direction has ended already: then the pump is over and the caller's `close` sends the FIN
/// (the socket's receive queue is empty, since its end of stream was read, so the close is a
/// FIN, not a reset).
fn half_close(dst: &TcpStream, state: &State<'_>) {
    if state.ended.fetch_add(1, Ordering::AcqRel) > 0 {
        return;
    }
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

/// The client's first bytes, read before its socket was registered with tokio.
pub(crate) struct FirstBytes(PooledBuf);

/// Reads what the client has sent already, before its socket is registered with tokio: the
/// request is usually in the receive queue when `accept` returns (clients speak first in most
/// protocols), and a read before registration leaves tokio no stale readiness to try again
/// (one `recv` that says EAGAIN less per connection). `None` when nothing is there yet (or
/// the client closed at once: the pump then finds out through tokio).
pub(crate) fn read_first(client: &std::net::TcpStream) -> io::Result<Option<FirstBytes>> {
    let mut buf = PooledBuf::take();
    match socket2::SockRef::from(client).recv(buf.0.spare_capacity_mut()) {
        Ok(0) => Ok(None),
        Ok(n) => {
            // SAFETY: recv initialised the first `n` bytes of the spare capacity.
            unsafe { buf.0.set_len(n) };
            Ok(Some(FirstBytes(buf)))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// Copies through a userspace buffer: the start of every connection, and the fallback where
/// splice cannot be used. With `switch_after`, returns once that many bytes have moved.
///
/// tokio's `read` on a TCP half takes a short read as "socket drained" (epoll is
/// edge-triggered), so a request or answer smaller than the buffer costs one `recv`, not a
/// second one that only says EAGAIN.
///
/// The first write of each direction is speculative, as HAProxy's: a socket registered a
/// moment ago has no readiness yet in tokio, whose `write` would first wait for a turn of the
/// event loop although the send buffer has room. Only a would-block waits.
async fn copy_loop(
    src: &mut ReadHalf<'_>,
    dst: &mut WriteHalf<'_>,
    dir: Dir,
    state: &State<'_>,
    first: Option<FirstBytes>,
    switch_after: Option<u64>,
) -> io::Result<CopyEnd> {
    let mut have_first = first.is_some();
    let mut pooled = first.map_or_else(PooledBuf::take, |f| f.0);
    let buf = &mut pooled.0;
    let mut total = 0u64;
    let mut first_write = true;
    loop {
        if switch_after.is_some_and(|limit| total >= limit) {
            return Ok(CopyEnd::Switch);
        }
        let n = if std::mem::take(&mut have_first) {
            buf.len()
        } else {
            buf.clear();
            src.read_buf(buf).await?
        };
        if n == 0 {
            half_close(dst.as_ref(), state);
            return Ok(CopyEnd::Eof);
        }
        // A short read that the peer's FIN already follows: the FIN goes out on the same
        // segment as these bytes (MSG_MORE holds the segment until the half-close right
        // after), as HAProxy does; a request/answer/close exchange then costs the client two
        // packets less (a separate FIN, and its own ACK of the data).
        let eof = buf.len() < buf.capacity() && fin_queued(src.as_ref(), dir);
        let mut sent = 0;
        if std::mem::take(&mut first_write) || eof {
            let flags = if eof { libc::MSG_MORE } else { 0 };
            match socket2::SockRef::from(dst.as_ref()).send_with_flags(buf, flags) {
                Ok(m) => sent = m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        dst.write_all(&buf[sent..]).await?;
        state.moved(dir, n);
        total += n as u64;
        if eof {
            half_close(dst.as_ref(), state);
            return Ok(CopyEnd::Eof);
        }
    }
}

/// Whether the peer's FIN is next in `src`'s receive queue: a one-byte `MSG_PEEK` says so.
///
/// On the client's side the peek is made only once epoll has reported the FIN (EPOLLRDHUP,
/// which tokio keeps once seen): clients close only after reading the answer, so a peek there
/// would almost always just say EAGAIN. epoll's word alone is not enough, since more data may
/// have arrived before the FIN. Servers close right after their answer, often just after
/// epoll reported the data, so a backend's side is always peeked.
fn fin_queued(src: &TcpStream, dir: Dir) -> bool {
    if dir == Dir::In {
        let ready = std::pin::pin!(src.ready(Interest::READABLE));
        let mut cx = Context::from_waker(Waker::noop());
        let rdhup = matches!(ready.poll(&mut cx), Poll::Ready(Ok(r)) if r.is_read_closed());
        if !rdhup {
            return false;
        }
    }
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    matches!(
        socket2::SockRef::from(src).recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT),
        Ok(0)
    )
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A FIN that epoll has reported does not make data queued before it look like the end.
    #[tokio::test]
    async fn fin_queued_only_when_no_data_is_left() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut src, _) = listener.accept().await.unwrap();
        for dir in [Dir::In, Dir::Out] {
            assert!(!fin_queued(&src, dir), "{dir:?}: nothing sent yet");
        }
        peer.write_all(b"more").await.unwrap();
        peer.shutdown().await.unwrap();
        // Wait (at most 5 s) until tokio has seen the FIN (EPOLLRDHUP).
        let rdhup = async {
            while !src
                .ready(Interest::READABLE)
                .await
                .unwrap()
                .is_read_closed()
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), rdhup)
            .await
            .expect("tokio reports the FIN");
        for dir in [Dir::In, Dir::Out] {
            assert!(!fin_queued(&src, dir), "{dir:?}: data before the FIN");
        }
        let mut got = Vec::new();
        src.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"more");
        for dir in [Dir::In, Dir::Out] {
            assert!(fin_queued(&src, dir), "{dir:?}: only the FIN left");
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::{
        io,
        os::fd::{AsFd, OwnedFd},
        sync::{
            LazyLock,
            atomic::{AtomicUsize, Ordering},
        },
    };

    use nix::{
        errno::Errno,
        fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice},
        unistd::pipe2,
    };
    use tokio::{io::Interest, net::TcpStream};

    use super::{Dir, State, half_close};

    /// Most bytes one splice moves into a pipe of the default size (16 pages).
    const CHUNK: usize = 64 * 1024;
    /// Size a bulk direction asks its pipe to grow to (`F_SETPIPE_SZ`; the default
    /// `fs.pipe-max-size`): one splice pair then moves up to a whole receive queue, with up to
    /// a sixteenth of the system calls and wake-ups of a default pipe (4-stream iperf3 through
    /// the proxy: 16.2 against 14.5 Gbit/s with default pipes, in one run here).
    const BULK_PIPE: usize = 1 << 20;

    /// Bytes of grown pipes a process may hold at once.
    pub(super) struct Budget(AtomicUsize);

    impl Budget {
        pub(super) const fn new(bytes: usize) -> Budget {
            Budget(AtomicUsize::new(bytes))
        }

        /// Takes `bytes` if that much is left.
        pub(super) fn reserve(&self, bytes: usize) -> bool {
            self.0
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                    left.checked_sub(bytes)
                })
                .is_ok()
        }

        pub(super) fn release(&self, bytes: usize) {
            self.0.fetch_add(bytes, Ordering::AcqRel);
        }

        #[cfg(test)]
        pub(super) fn left(&self) -> usize {
            self.0.load(Ordering::Acquire)
        }
    }

    /// This process's budget: half of the per-user soft limit of pipe pages
    /// (`fs.pipe-user-pages-soft`, 64 MiB by default), so that the pipes lbd grows never push
    /// its user over the limit, past which the kernel gives every new pipe two pages. A
    /// direction that finds the budget spent keeps a default pipe.
    pub(super) static BUDGET: LazyLock<Budget> = LazyLock::new(|| {
        // SAFETY: sysconf only reads a system constant.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|&p| p > 0)
            .unwrap_or(4096);
        let soft_pages = read_usize("/proc/sys/fs/pipe-user-pages-soft")
            .filter(|&p| p > 0)
            .unwrap_or(16384);
        Budget::new(soft_pages.saturating_mul(page) / 2)
    });

    /// The size a bulk pipe grows to: `BULK_PIPE`, or less where `fs.pipe-max-size` is lower
    /// (unprivileged processes cannot go past it).
    pub(super) static BULK_SIZE: LazyLock<usize> = LazyLock::new(|| {
        read_usize("/proc/sys/fs/pipe-max-size").map_or(BULK_PIPE, |max| max.min(BULK_PIPE))
    });

    fn read_usize(path: &str) -> Option<usize> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// A pipe, both ends non-blocking.
    pub(super) struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        /// Most bytes one splice into it may move.
        pub(super) chunk: usize,
        /// Bytes of the budget it holds (0 for a default pipe).
        reserved: usize,
    }

    impl Pipe {
        /// A pipe grown for bulk transfer while the budget allows, else of the default size.
        pub(super) fn new() -> io::Result<Pipe> {
            let (read, write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
            let mut pipe = Pipe {
                read,
                write,
                chunk: CHUNK,
                reserved: 0,
            };
            let size = *BULK_SIZE;
            if size > CHUNK && BUDGET.reserve(size) {
                let want = i32::try_from(size).unwrap_or(i32::MAX);
                match fcntl(&pipe.write, FcntlArg::F_SETPIPE_SZ(want)) {
                    Ok(got) => {
                        pipe.chunk = usize::try_from(got).unwrap_or(CHUNK).max(CHUNK);
                        pipe.reserved = size;
                    }
                    // EPERM past the user's pipe limits, ENOMEM: a default pipe still works.
                    Err(e) => {
                        BUDGET.release(size);
                        tracing::debug!(error = %e, size, "F_SETPIPE_SZ failed; default pipe");
                    }
                }
            }
            Ok(pipe)
        }
    }

    impl Drop for Pipe {
        fn drop(&mut self) {
            if self.reserved > 0 {
                BUDGET.release(self.reserved);
            }
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
                match src.try_io(Interest::READABLE, || {
                    splice_once(src, &pipe.write, pipe.chunk)
                }) {
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
                half_close(dst, state);
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

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn budget_gives_out_no_more_than_it_has() {
            let b = Budget::new(3 << 20);
            assert!(b.reserve(1 << 20));
            assert!(b.reserve(2 << 20));
            assert!(!b.reserve(1), "spent");
            b.release(1 << 20);
            assert!(!b.reserve(2 << 20));
            assert!(b.reserve(1 << 20));
            assert_eq!(b.left(), 0);
        }

        #[test]
        fn a_bulk_pipe_grows_and_gives_its_share_back() {
            let before = BUDGET.left();
            let pipe = Pipe::new().expect("pipe2");
            if before >= *BULK_SIZE && *BULK_SIZE > CHUNK {
                assert!(
                    pipe.chunk >= *BULK_SIZE,
                    "pipe of {} bytes, wanted {}",
                    pipe.chunk,
                    *BULK_SIZE
                );
                assert_eq!(BUDGET.left(), before - *BULK_SIZE);
            } else {
                assert_eq!(pipe.chunk, CHUNK);
            }
            drop(pipe);
            assert_eq!(BUDGET.left(), before);
        }
    }
}
