//! Fuzz the HTTP health check's reader: a backend's answer, from memory, through the probe's own
//! `read_status_line` and `parse_status_line`. The first input byte sets how the answer arrives
//! (each read returns at most that many bytes plus one), the rest is the answer.
//!
//! Invariants: nothing panics; the line read is the answer up to its first line break (or all of
//! it when the peer closes first), never longer than `MAX_STATUS_LINE`; an error only for an
//! empty answer or one without a line break in its first `MAX_STATUS_LINE` bytes; a status that
//! parses has three digits and comes from an `HTTP/` line.

#![no_main]

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use lb_daemon::health::probe::{MAX_STATUS_LINE, parse_status_line, read_status_line};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

/// An answer that arrives `chunk` bytes per read at most, then the end of the stream.
struct Answer<'a> {
    rest: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Answer<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.rest.len().min(self.chunk).min(buf.remaining());
        let (now, later) = self.rest.split_at(n);
        buf.put_slice(now);
        self.rest = later;
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&how, answer)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(how) + 1;
    let mut reader = Answer {
        rest: answer,
        chunk,
    };
    let read = futures::executor::block_on(read_status_line(&mut reader));
    let head = &answer[..answer.len().min(MAX_STATUS_LINE)];
    let line_end = head.iter().position(|&b| b == b'\n');
    match (&read, line_end) {
        (Ok(line), Some(end)) => assert_eq!(line.as_slice(), &answer[..end], "not the first line"),
        (Ok(line), None) => {
            assert!(
                answer.len() < MAX_STATUS_LINE,
                "a line longer than the limit"
            );
            assert_eq!(line.as_slice(), answer, "not all of a closed answer");
            assert!(!answer.is_empty(), "an empty answer read as a line");
        }
        (Err(e), None) => assert!(
            answer.is_empty() || answer.len() >= MAX_STATUS_LINE,
            "a short unterminated answer refused: {e}"
        ),
        (Err(e), Some(_)) => panic!("an answer with a line break refused: {e}"),
    }
    if let Ok(line) = read
        && let Ok(status) = parse_status_line(&line)
    {
        assert!(status <= 999, "status {status} is not three digits");
        assert!(line.starts_with(b"HTTP/"), "a status from a line not HTTP");
    }
});
