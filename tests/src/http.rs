//! Minimal HTTP/1.1 message reading, shared by [`crate::client`] and the `lbd-test-backend` binary.
//!
//! Only what the harness needs: a message head (start line and headers, at most [`MAX_HEAD`] bytes), bodies
//! framed by `Content-Length`, keep-alive and pipelined messages on one connection. No chunked encoding.
//!
//! The backend's HTTP interface (what [`crate::client`] expects):
//! - any request: `200` with body `<name>\n`, headers `X-Backend: <name>`, `X-Client: <peer ip:port>`;
//! - `GET /echo-peer`: body `<peer ip:port>\n`;
//! - `GET /stream?bytes=N&chunk_ms=M[&chunk=K]`: `N` bytes of [`stream_byte`] pattern, `K` (default
//!   [`DEFAULT_STREAM_CHUNK`]) at a time with `M` ms pauses between chunks;
//! - `GET /reset`: no answer; the backend resets the connection (RST), to exercise reset detection.

use std::io::{self, ErrorKind, Read};

/// Longest message head accepted (start line plus headers).
pub const MAX_HEAD: usize = 16 * 1024;

/// Bytes per chunk of `/stream` when the request does not say.
pub const DEFAULT_STREAM_CHUNK: usize = 1024;

/// The byte at offset `i` of a `/stream` body: `a..z` repeating, so the client can check every byte.
pub fn stream_byte(i: u64) -> u8 {
    b'a' + (i % 26) as u8
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg.into())
}

/// A parsed message head: the start line and the header fields in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// `GET / HTTP/1.1` or `HTTP/1.1 200 OK`.
    pub start_line: String,
    /// Header fields as (name, value), value trimmed; names keep their case.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// Parses a head without its final empty line.
    pub fn parse(bytes: &[u8]) -> io::Result<Head> {
        let text = std::str::from_utf8(bytes).map_err(|_| invalid("message head is not UTF-8"))?;
        let mut lines = text.split("\r\n");
        let start_line = lines.next().unwrap_or_default().to_owned();
        if start_line.is_empty() {
            return Err(invalid("empty start line"));
        }
        let mut headers = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                return Err(invalid("obsolete header line folding is not supported"));
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| invalid(format!("header without colon: {line:?}")))?;
            if name.is_empty()
                || name
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            {
                return Err(invalid(format!("bad header name {name:?}")));
            }
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        Ok(Head {
            start_line,
            headers,
        })
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header `name` contains `token` (case-insensitive), e.g. `Connection: close`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The body length from `Content-Length` (`None` when absent); conflicting or malformed values are errors.
    pub fn content_length(&self) -> io::Result<Option<u64>> {
        let mut found: Option<u64> = None;
        for (_, v) in self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        {
            let len: u64 = v
                .parse()
                .map_err(|_| invalid(format!("bad Content-Length {v:?}")))?;
            if found.is_some_and(|f| f != len) {
                return Err(invalid("conflicting Content-Length headers"));
            }
            found = Some(len);
        }
        Ok(found)
    }

    /// Splits a request line into (method, target, version).
    pub fn request_line(&self) -> io::Result<(&str, &str, &str)> {
        let mut parts = self.start_line.split(' ');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(m), Some(t), Some(v), None)
                if !m.is_empty() && t.starts_with('/') && v.starts_with("HTTP/1.") =>
            {
                Ok((m, t, v))
            }
            _ => Err(invalid(format!("bad request line {:?}", self.start_line))),
        }
    }

    /// The status code of a status line (`HTTP/1.1 200 OK`).
    pub fn status_code(&self) -> io::Result<u16> {
        let mut parts = self.start_line.splitn(3, ' ');
        match (parts.next(), parts.next()) {
            (Some(v), Some(code)) if v.starts_with("HTTP/1.") && code.len() == 3 => code
                .parse()
                .map_err(|_| invalid(format!("bad status line {:?}", self.start_line))),
            _ => Err(invalid(format!("bad status line {:?}", self.start_line))),
        }
    }
}

/// A buffered reader of HTTP messages from a byte stream; bytes past one message stay for the next.
#[derive(Debug)]
pub struct HttpReader<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: Read> HttpReader<S> {
    /// Wraps `stream`.
    pub fn new(stream: S) -> Self {
        HttpReader {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    /// The underlying stream (to write responses or requests to it).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// Reads more bytes into the buffer; returns how many (0 at end of stream).
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let n = loop {
            match self.stream.read(&mut chunk) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads the next message head. `Ok(None)` when the stream ends cleanly before a new message starts;
    /// a stream that ends inside a head is `UnexpectedEof`; a head over [`MAX_HEAD`] is `InvalidData`.
    pub fn read_head(&mut self) -> io::Result<Option<Head>> {
        loop {
            // Tolerate empty lines between messages (RFC 9112 section 2.2).
            while self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
            }
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = Head::parse(&self.buf[..end]);
                self.buf.drain(..end + 4);
                return head.map(Some);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid(format!(
                    "message head longer than {MAX_HEAD} bytes"
                )));
            }
            if self.fill()? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "stream ended inside a message head",
                    ))
                };
            }
        }
    }

    /// Reads up to `out.len()` body bytes (buffered ones first); 0 only at end of stream.
    pub fn read_body(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.buf.is_empty() && self.fill()? == 0 {
            return Ok(0);
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf.drain(..n);
        Ok(n)
    }

    /// Reads exactly `len` body bytes.
    pub fn read_body_exact(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let mut body = vec![0u8; len];
        let mut got = 0;
        while got < len {
            let n = self.read_body(&mut body[got..])?;
            if n == 0 {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("body ended after {got} of {len} bytes"),
                ));
            }
            got += n;
        }
        Ok(body)
    }

    /// Reads and drops `len` body bytes.
    pub fn discard_body(&mut self, mut len: u64) -> io::Result<()> {
        let mut scratch = [0u8; 8192];
        while len > 0 {
            let want = usize::try_from(len)
                .unwrap_or(usize::MAX)
                .min(scratch.len());
            let n = self.read_body(&mut scratch[..want])?;
            if n == 0 {
                return Err(io::Error::new(ErrorKind::UnexpectedEof, "body ended early"));
            }
            len -= n as u64;
        }
        Ok(())
    }
}

/// The value of `key` in the query string of `target` (`/stream?bytes=10&chunk_ms=5`), undecoded.
pub fn query_param<'a>(target: &'a str, key: &str) -> Option<&'a str> {
    let (_, query) = target.split_once('?')?;
    query
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((k, v)) if k == key => Some(v),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pipelined_requests_and_bodies() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\r\nGET /b HTTP/1.0\r\nConnection: keep-alive, Upgrade\r\n\r\n";
        let mut r = HttpReader::new(&raw[..]);
        let h = r.read_head().unwrap().unwrap();
        assert_eq!(h.request_line().unwrap(), ("GET", "/", "HTTP/1.1"));
        assert_eq!(h.header("host"), Some("x"));
        assert_eq!(h.content_length().unwrap(), None);
        let h = r.read_head().unwrap().unwrap();
        assert_eq!(h.content_length().unwrap(), Some(3));
        assert_eq!(r.read_body_exact(3).unwrap(), b"abc");
        let h = r.read_head().unwrap().unwrap();
        assert!(h.has_token("connection", "keep-alive"));
        assert!(!h.has_token("connection", "close"));
        assert!(r.read_head().unwrap().is_none());
    }

    #[test]
    fn rejects_malformed_heads() {
        let mut r = HttpReader::new(&b"GET / HTTP/1.1\r\nbad header\r\n\r\n"[..]);
        assert_eq!(r.read_head().unwrap_err().kind(), ErrorKind::InvalidData);
        let mut r = HttpReader::new(&b"GET / HTTP/1.1\r\nHost"[..]);
        assert_eq!(r.read_head().unwrap_err().kind(), ErrorKind::UnexpectedEof);
        let long = vec![b'a'; MAX_HEAD + 10];
        let mut r = HttpReader::new(&long[..]);
        assert_eq!(r.read_head().unwrap_err().kind(), ErrorKind::InvalidData);
        let h = Head::parse(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2").unwrap();
        assert!(h.content_length().is_err());
        assert!(Head::parse(b"GARBAGE").unwrap().request_line().is_err());
        assert!(
            Head::parse(b"HTTP/1.1 2000 OK")
                .unwrap()
                .status_code()
                .is_err()
        );
        assert_eq!(
            Head::parse(b"HTTP/1.1 200 OK")
                .unwrap()
                .status_code()
                .unwrap(),
            200
        );
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param("/stream?bytes=10&chunk_ms=5", "chunk_ms"),
            Some("5")
        );
        assert_eq!(query_param("/stream?bytes=10", "chunk"), None);
        assert_eq!(query_param("/stream", "bytes"), None);
        assert_eq!(stream_byte(0), b'a');
        assert_eq!(stream_byte(27), b'b');
    }
}
