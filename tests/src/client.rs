//! Clients for `lbd-test-backend`, every operation bounded in time. Run them inside the client namespace with
//! [`crate::Netns::enter`].
//!
//! - [`http_get`] / [`http_get_path`]: one request on a new TCP connection; the [`Reply`] says which backend
//!   answered and what client address it saw.
//! - [`KeepAlive`]: repeated requests on one connection; [`classify`] tells a reset from a close or timeout.
//! - [`http_stream`]: a long, slow download (`/stream`) checked byte by byte, for transfers across failover.
//! - [`udp_query`]: one datagram, one reply, with the reply's source address.

use std::io::{ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::http::{Head, HttpReader, stream_byte};

/// Time allowed to establish a TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time allowed for a whole request/response exchange (and for a UDP reply).
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response body [`http_get`] accepts.
const MAX_BODY: u64 = 1 << 20;

/// A response from `lbd-test-backend`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// The backend's name from `X-Backend` (`b1`).
    pub backend: String,
    /// The client address the backend saw (`X-Client`): with direct routing, the client's own address.
    pub client_addr: SocketAddr,
    /// Our end of the connection.
    pub local_addr: SocketAddr,
    /// The response body.
    pub body: String,
}

/// How a failed exchange failed, from its error chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The peer reset the connection (RST), or a write hit a broken pipe.
    Reset,
    /// The peer closed the connection cleanly (FIN) where a response was expected.
    Closed,
    /// No answer within the time limit.
    Timeout,
    /// Connection refused (RST to our SYN).
    Refused,
    /// Anything else (bad response, local error).
    Other,
}

/// Classifies an error returned by this module.
pub fn classify(err: &anyhow::Error) -> Failure {
    for cause in err.chain() {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe => Failure::Reset,
                ErrorKind::UnexpectedEof => Failure::Closed,
                ErrorKind::TimedOut | ErrorKind::WouldBlock => Failure::Timeout,
                ErrorKind::ConnectionRefused => Failure::Refused,
                _ => Failure::Other,
            };
        }
    }
    Failure::Other
}

/// Whether `err` means the connection was reset ([`Failure::Reset`]).
pub fn was_reset(err: &anyhow::Error) -> bool {
    classify(err) == Failure::Reset
}

/// `GET /` on a new connection to `addr` with [`IO_TIMEOUT`].
pub fn http_get(addr: SocketAddr) -> Result<Reply> {
    http_get_path(addr, "/", IO_TIMEOUT)
}

/// `GET path` on a new connection (`Connection: close`), all within `timeout` (connect within
/// [`CONNECT_TIMEOUT`] at most).
pub fn http_get_path(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Reply> {
    let deadline = Instant::now() + timeout;
    let stream = connect(addr, timeout)?;
    let mut conn = HttpReader::new(stream);
    exchange(&mut conn, addr, path, false, deadline)
}

/// Opens a TCP connection with a bounded connect time.
fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout.min(CONNECT_TIMEOUT))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    Ok(stream)
}

/// Time left before `deadline`, as an error once it has passed (socket timeouts must not be zero).
fn left(deadline: Instant, addr: SocketAddr) -> Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::Error::new(ErrorKind::TimedOut, "deadline passed"))
            .with_context(|| format!("talking to {addr}"));
    }
    Ok(left)
}

/// Sends one GET and reads one response.
fn exchange(
    conn: &mut HttpReader<TcpStream>,
    addr: SocketAddr,
    path: &str,
    keep_alive: bool,
    deadline: Instant,
) -> Result<Reply> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: {connection}\r\n\r\n");
    let t = left(deadline, addr)?;
    conn.get_mut()
        .set_write_timeout(Some(t))
        .context("setting the write timeout")?;
    conn.get_mut()
        .write_all(request.as_bytes())
        .with_context(|| format!("sending GET {path} to {addr}"))?;
    let (head, body) = read_response(conn, addr, deadline)?;
    let local_addr = conn
        .get_ref()
        .local_addr()
        .context("reading the local address")?;
    let status = head
        .status_code()
        .with_context(|| format!("response from {addr}"))?;
    let backend = head
        .header("x-backend")
        .with_context(|| format!("response from {addr} has no X-Backend"))?;
    let client = head
        .header("x-client")
        .with_context(|| format!("response from {addr} has no X-Client"))?;
    let client_addr = client
        .parse()
        .with_context(|| format!("X-Client {client:?} from {addr} is not IP:PORT"))?;
    let body = String::from_utf8(body).with_context(|| format!("body from {addr} is not UTF-8"))?;
    Ok(Reply {
        status,
        backend: backend.to_owned(),
        client_addr,
        local_addr,
        body,
    })
}

/// Reads a response head and its `Content-Length` body before `deadline`.
fn read_response(
    conn: &mut HttpReader<TcpStream>,
    addr: SocketAddr,
    deadline: Instant,
) -> Result<(Head, Vec<u8>)> {
    let t = left(deadline, addr)?;
    conn.get_mut()
        .set_read_timeout(Some(t))
        .context("setting the read timeout")?;
    let head = conn
        .read_head()
        .with_context(|| format!("reading the response from {addr}"))?
        .ok_or_else(|| {
            std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed before a response",
            )
        })
        .with_context(|| format!("reading the response from {addr}"))?;
    let len = head
        .content_length()
        .with_context(|| format!("response from {addr}"))?
        .with_context(|| format!("response from {addr} has no Content-Length"))?;
    if len > MAX_BODY {
        bail!(
            "response body from {addr} is {len} bytes; at most {MAX_BODY} accepted (use http_stream)"
        );
    }
    let t = left(deadline, addr)?;
    conn.get_mut()
        .set_read_timeout(Some(t))
        .context("setting the read timeout")?;
    let body = conn
        .read_body_exact(len as usize)
        .with_context(|| format!("reading the body from {addr}"))?;
    Ok((head, body))
}

/// One TCP connection carrying repeated `GET`s (HTTP keep-alive).
#[derive(Debug)]
pub struct KeepAlive {
    conn: HttpReader<TcpStream>,
    addr: SocketAddr,
    timeout: Duration,
    requests: u64,
}

impl KeepAlive {
    /// Connects to `addr`; each later request must complete within `timeout`.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<KeepAlive> {
        let stream = connect(addr, timeout)?;
        Ok(KeepAlive {
            conn: HttpReader::new(stream),
            addr,
            timeout,
            requests: 0,
        })
    }

    /// Sends `GET path` on the connection and reads the reply. A reset shows as an error for which
    /// [`was_reset`] is true; a clean close as [`Failure::Closed`].
    pub fn get(&mut self, path: &str) -> Result<Reply> {
        let deadline = Instant::now() + self.timeout;
        let reply = exchange(&mut self.conn, self.addr, path, true, deadline)
            .with_context(|| format!("request {} on a kept-alive connection", self.requests + 1))?;
        self.requests += 1;
        Ok(reply)
    }

    /// Requests answered so far on this connection.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Our end of the connection.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.conn
            .get_ref()
            .local_addr()
            .context("reading the local address")
    }

    /// Closes the connection (FIN).
    pub fn close(self) -> Result<()> {
        match self.conn.get_ref().shutdown(Shutdown::Both) {
            Err(e) if e.kind() != ErrorKind::NotConnected => {
                Err(e).context("closing the connection")
            }
            _ => Ok(()),
        }
    }
}

/// The outcome of a complete [`http_stream`] download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamResult {
    /// The backend that served it.
    pub backend: String,
    /// Body bytes received (equal to the bytes requested).
    pub received: u64,
    /// Time from connect to the last byte.
    pub elapsed: Duration,
}

/// Downloads `/stream?bytes=N&chunk_ms=M&chunk=K` from `addr` and checks every byte, all within `timeout`.
/// Fails (with [`classify`]-able errors) if the stream is cut, corrupted or too slow; the error says how many
/// bytes had arrived.
pub fn http_stream(
    addr: SocketAddr,
    bytes: u64,
    chunk: usize,
    chunk_ms: u64,
    timeout: Duration,
) -> Result<StreamResult> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut conn = HttpReader::new(connect(addr, timeout)?);
    let request = format!(
        "GET /stream?bytes={bytes}&chunk={chunk}&chunk_ms={chunk_ms} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    conn.get_mut()
        .set_write_timeout(Some(left(deadline, addr)?))
        .context("setting the write timeout")?;
    conn.get_mut()
        .write_all(request.as_bytes())
        .with_context(|| format!("sending the stream request to {addr}"))?;
    conn.get_mut()
        .set_read_timeout(Some(left(deadline, addr)?))
        .context("setting the read timeout")?;
    let head = conn
        .read_head()
        .with_context(|| format!("reading the stream response from {addr}"))?
        .ok_or_else(|| {
            std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed before a response",
            )
        })
        .with_context(|| format!("reading the stream response from {addr}"))?;
    let status = head
        .status_code()
        .with_context(|| format!("stream response from {addr}"))?;
    if status != 200 {
        bail!("stream request to {addr} answered {status}");
    }
    let backend = head.header("x-backend").unwrap_or("?").to_owned();
    let mut received: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while received < bytes {
        conn.get_mut()
            .set_read_timeout(Some(left(deadline, addr)?))
            .context("setting the read timeout")?;
        let want = usize::try_from(bytes - received)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = match conn.read_body(&mut buf[..want]) {
            Ok(0) => Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "stream closed early",
            )),
            other => other,
        }
        .with_context(|| {
            format!("stream from {backend} at {addr} cut after {received} of {bytes} bytes")
        })?;
        if let Some(bad) = (0..n).find(|&i| buf[i] != stream_byte(received + i as u64)) {
            bail!(
                "stream from {backend} at {addr} corrupted at byte {}",
                received + bad as u64
            );
        }
        received += n as u64;
    }
    Ok(StreamResult {
        backend,
        received,
        elapsed: start.elapsed(),
    })
}

/// A datagram answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpReply {
    /// Where the reply came from (with direct routing: the VIP, not the backend's own address).
    pub from: SocketAddr,
    /// The reply payload, lossily decoded (`b2 hello` from `lbd-test-backend`).
    pub text: String,
}

/// Sends `payload` to `addr` from a fresh unconnected socket and returns the first reply within `timeout`
/// (from any source, so a direct-routing reply from the VIP is accepted).
pub fn udp_query(addr: SocketAddr, payload: &[u8], timeout: Duration) -> Result<UdpReply> {
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(bind).context("binding a UDP socket")?;
    socket
        .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
        .context("setting the read timeout")?;
    socket
        .send_to(payload, addr)
        .with_context(|| format!("sending a datagram to {addr}"))?;
    let mut buf = vec![0u8; 65_536];
    let (n, from) = socket
        .recv_from(&mut buf)
        .with_context(|| format!("waiting for a UDP reply from {addr}"))?;
    Ok(UdpReply {
        from,
        text: String::from_utf8_lossy(&buf[..n]).into_owned(),
    })
}

/// `n` new TCP connections to `vip` (each `GET /`, status 200), in the current namespace; how
/// many each backend answered.
pub fn answered_by(vip: SocketAddr, n: usize) -> Result<std::collections::HashMap<String, usize>> {
    let mut by_backend = std::collections::HashMap::new();
    for i in 0..n {
        let r = http_get(vip).with_context(|| format!("connection {i} to {vip}"))?;
        anyhow::ensure!(
            r.status == 200,
            "connection {i} to {vip}: status {}",
            r.status
        );
        *by_backend.entry(r.backend).or_insert(0) += 1;
    }
    Ok(by_backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_io_errors_through_context() {
        let err =
            anyhow::Error::from(std::io::Error::from(ErrorKind::ConnectionReset)).context("outer");
        assert_eq!(classify(&err), Failure::Reset);
        assert!(was_reset(&err));
        let err = anyhow::Error::from(std::io::Error::from(ErrorKind::WouldBlock));
        assert_eq!(classify(&err), Failure::Timeout);
        assert_eq!(classify(&anyhow::anyhow!("plain")), Failure::Other);
    }
}
