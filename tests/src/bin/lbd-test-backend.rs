//! `lbd-test-backend`: the backend server of the namespace tests and the demo.
//!
//! ```text
//! lbd-test-backend --name b1 --http 0.0.0.0:80 --udp 198.18.0.100:5353 [--udp 198.18.0.21:5353]
//!                  [--http [::]:80] [--udp [2001:db8::100]:5353] [--udp [2001:db8::21]:5353]
//! ```
//! - Every address gets a socket of its own family. IPv6 sockets are `IPV6_V6ONLY`, so `[::]:80` and
//!   `0.0.0.0:80` bind side by side and an IPv4 peer always shows as `198.18.0.10:port`, never as
//!   `[::ffff:198.18.0.10]:port`. An IPv6 peer shows as `[2001:db8::10]:port` (`X-Client`, `/echo-peer`).
//! - HTTP/1.1 with keep-alive on every `--http` address; answers as described in `lbd_tests::http`:
//!   body `<name>\n` with `X-Backend` and `X-Client` headers, `/echo-peer`, `/stream?bytes=N&chunk_ms=M`,
//!   `/reset` (no answer: the connection is reset).
//! - UDP on every `--udp` address: each datagram is answered with `<name> <payload>` from the same socket. In
//!   direct routing the socket binds the VIP explicitly so the reply leaves with the VIP as source.
//! - Prints `listening http|udp <addr>` per socket, then `ready`, on stdout once every socket is bound; exits
//!   with status 0 on SIGTERM or SIGINT.
//!
//! One thread per connection (at most [`MAX_CONNECTIONS`] at once; more get `503`), idle connections closed
//! after [`IDLE_TIMEOUT`].

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use lbd_tests::http::{DEFAULT_STREAM_CHUNK, Head, HttpReader, query_param, stream_byte};
use socket2::{Domain, Protocol, Socket, Type};

/// Connections served at once; the next ones get `503` and are closed.
const MAX_CONNECTIONS: usize = 4096;
/// A keep-alive connection with no request for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A response write that makes no progress for this long aborts the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body read (and dropped).
const MAX_BODY: u64 = 1 << 20;
/// Largest `/stream` body.
const MAX_STREAM_BYTES: u64 = 1 << 30;
/// Longest pause between `/stream` chunks.
const MAX_CHUNK_MS: u64 = 10_000;
/// Largest `/stream` chunk.
const MAX_CHUNK: usize = 1 << 20;
/// Stack of a connection thread: the handlers keep little on the stack.
const CONN_STACK: usize = 256 * 1024;
/// TCP listen backlog: bursts of short connections must not overflow it.
const BACKLOG: i32 = 1024;

const USAGE: &str = "usage: lbd-test-backend --name NAME [--http IP:PORT]... [--udp IP:PORT]... [--health-file PATH]";

/// `GET /health` answers 503 while this file exists, else 200: tests flap a backend's health
/// check without stopping its server.
static HEALTH_FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Parsed command line.
struct Args {
    name: String,
    http: Vec<SocketAddr>,
    udp: Vec<SocketAddr>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args> {
    let mut name = None;
    let mut http = Vec::new();
    let mut udp = Vec::new();
    while let Some(flag) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .with_context(|| format!("{flag} needs a value; {USAGE}"))
        };
        match flag.as_str() {
            "--name" => name = Some(value("--name")?),
            "--http" => {
                let v = value("--http")?;
                http.push(
                    v.parse()
                        .with_context(|| format!("--http {v:?} is not an IP:PORT"))?,
                );
            }
            "--udp" => {
                let v = value("--udp")?;
                udp.push(
                    v.parse()
                        .with_context(|| format!("--udp {v:?} is not an IP:PORT"))?,
                );
            }
            "--health-file" => {
                let v = value("--health-file")?;
                let _ = HEALTH_FILE.set(v.into());
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    let name = name.with_context(|| format!("--name is required; {USAGE}"))?;
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        bail!("--name {name:?}: use 1-64 characters from [A-Za-z0-9._-]");
    }
    if http.is_empty() && udp.is_empty() {
        bail!("nothing to serve: give at least one --http or --udp; {USAGE}");
    }
    Ok(Args { name, http, udp })
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbd-test-backend: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args = parse_args(std::env::args().skip(1))?;
    // Block SIGTERM/SIGINT before any thread starts (threads inherit the mask); the main thread takes them
    // with sigwait and returns, which ends the process with status 0.
    let signals = block_signals(&[libc::SIGTERM, libc::SIGINT])?;
    let name: Arc<str> = Arc::from(args.name.as_str());
    let active = Arc::new(AtomicUsize::new(0));
    let mut bound = Vec::new();
    for addr in &args.http {
        let listener = listen(*addr)?;
        bound.push(format!(
            "listening http {}",
            listener.local_addr().context("reading the bound address")?
        ));
        let (name, active) = (Arc::clone(&name), Arc::clone(&active));
        thread::Builder::new()
            .name(format!("http {addr}"))
            .spawn(move || accept_loop(listener, name, active))
            .context("spawning the HTTP accept thread")?;
    }
    for addr in &args.udp {
        let socket = bind_udp(*addr).with_context(|| {
            format!("binding UDP {addr} (is the address configured here? the VIP must be on lo before start)")
        })?;
        bound.push(format!(
            "listening udp {}",
            socket.local_addr().context("reading the bound address")?
        ));
        let name = Arc::clone(&name);
        thread::Builder::new()
            .name(format!("udp {addr}"))
            .spawn(move || udp_loop(socket, name))
            .context("spawning a UDP thread")?;
    }
    {
        let mut out = std::io::stdout().lock();
        for line in &bound {
            writeln!(out, "{line}").context("writing to stdout")?;
        }
        writeln!(out, "ready")
            .and_then(|()| out.flush())
            .context("writing `ready` to stdout")?;
    }
    wait_signal(&signals)
}

/// Blocks `sigs` in the calling thread (and the threads it starts); returns the set for [`wait_signal`].
fn block_signals(sigs: &[i32]) -> Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use; the calls only touch `set`.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc)).context("blocking SIGTERM/SIGINT");
        }
        Ok(set)
    }
}

/// Waits for one of the blocked signals in `set`.
fn wait_signal(set: &libc::sigset_t) -> Result<()> {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is a valid, initialised signal set and `sig` a valid out-pointer.
    let rc = unsafe { libc::sigwait(set, &mut sig) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc)).context("waiting for SIGTERM");
    }
    Ok(())
}

/// A TCP listener on `addr` with SO_REUSEADDR and a large backlog (IPv6 only for an IPv6 address).
fn listen(addr: SocketAddr) -> Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .context("creating a TCP socket")?;
    socket
        .set_reuse_address(true)
        .context("setting SO_REUSEADDR")?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).context("setting IPV6_V6ONLY")?;
    }
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding TCP {addr}"))?;
    socket
        .listen(BACKLOG)
        .with_context(|| format!("listening on {addr}"))?;
    Ok(socket.into())
}

/// A UDP socket bound to `addr` (IPv6 only for an IPv6 address, so IPv4 peers never arrive mapped).
fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Decrements the active-connection count when a connection ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn accept_loop(listener: TcpListener, name: Arc<str>, active: Arc<AtomicUsize>) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("lbd-test-backend: accept: {e}");
                thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let slot = Slot(Arc::clone(&active));
        if active.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            let mut stream = stream;
            let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
            let _ = stream.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            drop(slot);
            continue;
        }
        let name = Arc::clone(&name);
        let spawned = thread::Builder::new()
            .stack_size(CONN_STACK)
            .spawn(move || {
                let _slot = slot;
                if let Err(e) = serve(stream, peer, &name)
                    && !is_disconnect(&e)
                {
                    eprintln!("lbd-test-backend: connection from {peer}: {e}");
                }
            });
        if let Err(e) = spawned {
            eprintln!("lbd-test-backend: cannot spawn a connection thread: {e}");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Errors that only mean the client went away or idled out.
fn is_disconnect(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof
            | ErrorKind::WouldBlock
            | ErrorKind::TimedOut
    )
}

/// Serves HTTP/1.1 requests on one connection until the client closes it or asks to.
fn serve(stream: TcpStream, peer: SocketAddr, name: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut conn = HttpReader::new(stream);
    loop {
        let head = match conn.read_head() {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::InvalidData => {
                return respond_error(conn.get_mut(), 400, "Bad Request", name, peer);
            }
            Err(e) => return Err(e),
        };
        let Ok((method, target, version)) = head.request_line() else {
            return respond_error(conn.get_mut(), 400, "Bad Request", name, peer);
        };
        if head.header("transfer-encoding").is_some() {
            return respond_error(conn.get_mut(), 501, "Not Implemented", name, peer);
        }
        match head.content_length() {
            Ok(Some(len)) if len > MAX_BODY => {
                return respond_error(conn.get_mut(), 413, "Content Too Large", name, peer);
            }
            Ok(len) => conn.discard_body(len.unwrap_or(0))?,
            Err(_) => return respond_error(conn.get_mut(), 400, "Bad Request", name, peer),
        }
        let keep_alive = wants_keep_alive(&head, version);
        let head_only = method == "HEAD";
        let path = target.split('?').next().unwrap_or(target);
        let out = conn.get_mut();
        match path {
            "/reset" => {
                // Abortive close: SO_LINGER 0 makes close(2) send an RST instead of a FIN.
                socket2::SockRef::from(&*out).set_linger(Some(Duration::ZERO))?;
                return Ok(());
            }
            "/health" => {
                let down = HEALTH_FILE.get().is_some_and(|f| f.exists());
                let (code, reason, body) = if down {
                    (503, "Service Unavailable", "down\n")
                } else {
                    (200, "OK", "up\n")
                };
                write_head(out, code, reason, name, peer, body.len() as u64, keep_alive)?;
                if !head_only {
                    out.write_all(body.as_bytes())?;
                }
            }
            "/stream" => {
                let Some(plan) = StreamPlan::from_target(target) else {
                    return respond_error(out, 400, "Bad Request", name, peer);
                };
                write_head(out, 200, "OK", name, peer, plan.bytes, keep_alive)?;
                if !head_only {
                    plan.send(out)?;
                }
            }
            _ => {
                let body = if path == "/echo-peer" {
                    format!("{peer}\n")
                } else {
                    format!("{name}\n")
                };
                write_head(out, 200, "OK", name, peer, body.len() as u64, keep_alive)?;
                if !head_only {
                    out.write_all(body.as_bytes())?;
                }
            }
        }
        out.flush()?;
        if !keep_alive {
            let _ = out.shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
    }
}

/// HTTP/1.1 keeps the connection unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
fn wants_keep_alive(head: &Head, version: &str) -> bool {
    if version == "HTTP/1.0" {
        head.has_token("connection", "keep-alive")
    } else {
        !head.has_token("connection", "close")
    }
}

fn write_head(
    out: &mut TcpStream,
    code: u16,
    reason: &str,
    name: &str,
    peer: SocketAddr,
    len: u64,
    keep_alive: bool,
) -> std::io::Result<()> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len}\r\nX-Backend: {name}\r\n\
         X-Client: {peer}\r\nConnection: {connection}\r\n\r\n"
    );
    out.write_all(head.as_bytes())
}

/// Answers an error and ends the connection.
fn respond_error(
    out: &mut TcpStream,
    code: u16,
    reason: &str,
    name: &str,
    peer: SocketAddr,
) -> std::io::Result<()> {
    let body = format!("{code} {reason}\n");
    write_head(out, code, reason, name, peer, body.len() as u64, false)?;
    out.write_all(body.as_bytes())?;
    out.flush()?;
    let _ = out.shutdown(std::net::Shutdown::Write);
    Ok(())
}

/// A validated `/stream` request.
struct StreamPlan {
    bytes: u64,
    chunk: usize,
    pause: Duration,
}

impl StreamPlan {
    fn from_target(target: &str) -> Option<StreamPlan> {
        let bytes: u64 = query_param(target, "bytes")?.parse().ok()?;
        let chunk_ms: u64 = query_param(target, "chunk_ms").map_or(Some(0), |v| v.parse().ok())?;
        let chunk: usize =
            query_param(target, "chunk").map_or(Some(DEFAULT_STREAM_CHUNK), |v| v.parse().ok())?;
        if bytes > MAX_STREAM_BYTES || chunk_ms > MAX_CHUNK_MS || chunk == 0 || chunk > MAX_CHUNK {
            return None;
        }
        Some(StreamPlan {
            bytes,
            chunk,
            pause: Duration::from_millis(chunk_ms),
        })
    }

    fn send(&self, out: &mut TcpStream) -> std::io::Result<()> {
        let mut sent: u64 = 0;
        let mut buf = Vec::with_capacity(self.chunk);
        while sent < self.bytes {
            let n = (self.bytes - sent).min(self.chunk as u64);
            buf.clear();
            buf.extend((sent..sent + n).map(stream_byte));
            out.write_all(&buf)?;
            sent += n;
            if sent < self.bytes && !self.pause.is_zero() {
                out.flush()?;
                thread::sleep(self.pause);
            }
        }
        Ok(())
    }
}

/// Answers each datagram with `<name> <payload>` from the same socket.
fn udp_loop(socket: UdpSocket, name: Arc<str>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) => {
                eprintln!("lbd-test-backend: udp recv: {e}");
                thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let mut reply = Vec::with_capacity(name.len() + 1 + n);
        reply.extend_from_slice(name.as_bytes());
        reply.push(b' ');
        reply.extend_from_slice(&buf[..n]);
        if let Err(e) = socket.send_to(&reply, from) {
            eprintln!("lbd-test-backend: udp reply to {from}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_repeated_flags() {
        let a = args(&[
            "--name",
            "b1",
            "--http",
            "0.0.0.0:80",
            "--udp",
            "198.18.0.100:5353",
            "--udp",
            "198.18.0.21:5353",
        ])
        .unwrap();
        assert_eq!(a.name, "b1");
        assert_eq!(a.http.len(), 1);
        assert_eq!(a.udp.len(), 2);

        let a = args(&[
            "--name",
            "b1",
            "--http",
            "0.0.0.0:80",
            "--http",
            "[::]:80",
            "--udp",
            "[2001:db8::100]:5353",
        ])
        .unwrap();
        assert_eq!(a.http[1], "[::]:80".parse::<SocketAddr>().unwrap());
        assert!(a.udp[0].is_ipv6());
    }

    #[test]
    fn ipv4_and_ipv6_wildcards_bind_side_by_side() {
        // Port 0 picks a free port; the IPv6 listener then takes the same one, which only works with
        // IPV6_V6ONLY (else [::] would also claim it for IPv4).
        let v4 = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = v4.local_addr().unwrap().port();
        let Ok(v6) = listen(SocketAddr::from(([0u16; 8], port))) else {
            return; // no IPv6 where the unit tests run
        };
        let only_v6 = socket2::SockRef::from(&v6).only_v6().unwrap();
        assert!(only_v6);
        let u6 = bind_udp(SocketAddr::from(([0u16; 8], 0))).unwrap();
        assert!(socket2::SockRef::from(&u6).only_v6().unwrap());
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(args(&["--http", "0.0.0.0:80"]).is_err());
        assert!(args(&["--name", "b 1", "--http", "0.0.0.0:80"]).is_err());
        assert!(args(&["--name", "b1", "--http", "nope"]).is_err());
        assert!(args(&["--name", "b1"]).is_err());
        assert!(args(&["--name", "b1", "--bogus"]).is_err());
        assert!(args(&["--name"]).is_err());
    }

    #[test]
    fn stream_plans_are_bounded() {
        assert!(StreamPlan::from_target("/stream?bytes=100&chunk_ms=5").is_some());
        assert!(StreamPlan::from_target("/stream").is_none());
        assert!(StreamPlan::from_target("/stream?bytes=100&chunk=0").is_none());
        assert!(
            StreamPlan::from_target(&format!("/stream?bytes={}", MAX_STREAM_BYTES + 1)).is_none()
        );
        assert!(StreamPlan::from_target("/stream?bytes=1&chunk_ms=999999").is_none());
    }
}
