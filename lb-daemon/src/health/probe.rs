//! One probe of one backend: a TCP connect, or an HTTP/1.1 `GET` whose status line is compared
//! with the expected status. The whole probe is bounded by the timeout, every read is bounded in
//! size, and nothing a backend sends can make it panic.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::Instant,
};

use crate::config::health::{CheckKind, HealthConfig};

/// Most bytes read while looking for the HTTP status line: a status line is short, and a
/// backend that sends more without a line break is not speaking HTTP.
pub const MAX_STATUS_LINE: usize = 1024;

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// Whether the check passed.
    pub ok: bool,
    /// From the start of the connect to the result (the timeout when it timed out).
    pub latency: Duration,
    /// What happened, for logs and status: e.g. `connected`, `HTTP 503, expected 200`,
    /// `connect failed: Connection refused (os error 111)`, `no answer within 500 ms
    /// (waiting for the status line)`.
    pub detail: String,
}

/// Where a probe was when it ran out of time.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Connecting,
    Sending,
    Reading,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Connecting => "connecting",
            Stage::Sending => "sending the request",
            Stage::Reading => "waiting for the status line",
        }
    }
}

/// Runs one check of `target` as `cfg` says, bounded by `cfg.timeout`. Never panics and never
/// fails: every problem is a failed [`ProbeResult`] with its reason in `detail`.
pub async fn probe(target: SocketAddr, cfg: &HealthConfig) -> ProbeResult {
    let start = Instant::now();
    let mut stage = Stage::Connecting;
    let outcome = tokio::time::timeout(cfg.timeout, check(target, &cfg.kind, &mut stage)).await;
    let latency = start.elapsed();
    let (ok, detail) = match outcome {
        Ok(Ok(detail)) => (true, detail),
        Ok(Err(detail)) => (false, detail),
        Err(_) => (
            false,
            format!(
                "no answer within {} ms ({})",
                cfg.timeout.as_millis(),
                stage.as_str()
            ),
        ),
    };
    ProbeResult {
        ok,
        latency,
        detail,
    }
}

/// The check itself, unbounded in time (the caller bounds it). `Ok` and `Err` both carry the
/// detail.
async fn check(target: SocketAddr, kind: &CheckKind, stage: &mut Stage) -> Result<String, String> {
    let mut stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect failed: {e}"))?;
    let (path, expect_status) = match kind {
        CheckKind::Tcp => return Ok("connected".into()),
        CheckKind::Http {
            path,
            expect_status,
        } => (path, *expect_status),
    };
    *stage = Stage::Sending;
    // SocketAddr's Display brackets IPv6 addresses, as the Host header wants them.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: lbd-health-check/{}\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the request failed: {e}"))?;
    *stage = Stage::Reading;
    let line = read_status_line(&mut stream).await?;
    let status = parse_status_line(&line)?;
    if status == expect_status {
        Ok(format!("HTTP {status}"))
    } else {
        Err(format!("HTTP {status}, expected {expect_status}"))
    }
}

/// Reads up to the first line break, at most [`MAX_STATUS_LINE`] bytes. Returns the line
/// without its line break (or all that came before the peer closed). Generic over the reader
/// so that a fuzz target can feed it a backend's answer from memory.
pub async fn read_status_line<R: AsyncRead + Unpin>(stream: &mut R) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; MAX_STATUS_LINE];
    let mut len = 0;
    loop {
        if let Some(end) = buf[..len].iter().position(|&b| b == b'\n') {
            buf.truncate(end);
            return Ok(buf);
        }
        if len == buf.len() {
            return Err(format!(
                "not HTTP: no line break in the first {MAX_STATUS_LINE} bytes of the answer"
            ));
        }
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(|e| format!("reading the answer failed: {e}"))?;
        if n == 0 {
            if len == 0 {
                return Err("connection closed without an answer".into());
            }
            buf.truncate(len);
            return Ok(buf);
        }
        len += n;
    }
}

/// Parses `HTTP/1.1 200 OK` (with or without the reason phrase and the trailing CR) into its
/// status code. Anything else is an error quoting the start of the line.
pub fn parse_status_line(line: &[u8]) -> Result<u16, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let bad = || {
        let shown = &line[..line.len().min(64)];
        format!(
            "not an HTTP status line: {:?}",
            String::from_utf8_lossy(shown)
        )
    };
    // `HTTP/` DIGIT `.` DIGIT SP 3DIGIT [SP reason] (RFC 9112 §4).
    let rest = line.strip_prefix(b"HTTP/").ok_or_else(bad)?;
    let (version, rest) = rest.split_at_checked(3).ok_or_else(bad)?;
    let rest = rest.strip_prefix(b" ").ok_or_else(bad)?;
    let (code, rest) = rest.split_at_checked(3).ok_or_else(bad)?;
    let version_ok =
        version[0].is_ascii_digit() && version[1] == b'.' && version[2].is_ascii_digit();
    if !version_ok || !code.iter().all(u8::is_ascii_digit) || !(rest.is_empty() || rest[0] == b' ')
    {
        return Err(bad());
    }
    Ok(code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        let good: [(&[u8], u16); 5] = [
            (b"HTTP/1.1 200 OK\r", 200),
            (b"HTTP/1.0 503 Service Unavailable", 503),
            (b"HTTP/1.1 204", 204),
            (b"HTTP/1.1 404 \r", 404),
            (b"HTTP/2.0 999 odd but well-formed", 999),
        ];
        for (line, code) in good {
            assert_eq!(parse_status_line(line), Ok(code), "{line:?}");
        }
        let bad: [&[u8]; 11] = [
            b"",
            b"\r",
            b"HTTP/1.1",
            b"HTTP/1.1 20",
            b"HTTP/1.1 2000",
            b"HTTP/1.1 20x OK",
            b"HTTP/1.1  200 OK",
            b"HTTP/x.1 200 OK",
            b"http/1.1 200 OK",
            b"SSH-2.0-OpenSSH_9.2",
            &[0xff, 0xfe, 0x00, 0x80, b' ', b'2'],
        ];
        for line in bad {
            let e = parse_status_line(line).expect_err("bad line accepted");
            assert!(e.starts_with("not an HTTP status line: "), "{e}");
        }
    }
}
