//! A headless Chromium (Debian `chromium`) in a namespace, driven over the DevTools protocol: the
//! status page test loads lbd's page in it, reads the rendered DOM as the page's own script left
//! it, waits for the page's refresh to show a change, and takes a screenshot.
//!
//! Chromium listens for DevTools on 127.0.0.1 of its namespace only; the test connects from a
//! thread inside that namespace ([`Netns::enter`]). The browser is stopped on drop.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use base64::Engine as _;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use crate::netns::{Netns, Spawned};

/// The DevTools port inside the browser's namespace (no other user there).
const DEVTOOLS_PORT: u16 = 9222;
/// How long the browser may take to start and to answer one command.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// The browser binary, from Debian's `chromium` package (`cargo xtask setup` installs it).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// One headless browser with one page open.
pub struct Browser {
    process: Spawned,
    page: WebSocket<TcpStream>,
    next_id: u64,
    /// Its profile directory, removed on drop.
    profile: PathBuf,
}

impl Browser {
    /// Starts Chromium in `ns` with `url` open, `width`×`height` pixels, and connects to the page.
    pub fn open(ns: &Netns, url: &str, width: u32, height: u32, run_dir: &Path) -> Result<Browser> {
        ensure!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: run `cargo xtask setup` (Debian package chromium)"
        );
        let profile = run_dir.join("chromium-profile");
        std::fs::create_dir_all(&profile)
            .with_context(|| format!("creating {}", profile.display()))?;
        let mut cmd = Command::new(CHROMIUM);
        cmd.args([
            "--headless",
            // As root in a namespace: no user namespace for the sandbox.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--remote-debugging-address=127.0.0.1",
            &format!("--remote-debugging-port={DEVTOOLS_PORT}"),
            &format!("--user-data-dir={}", profile.display()),
            &format!("--window-size={width},{height}"),
            url,
        ])
        .env("HOME", run_dir);
        let process = ns.spawn(cmd).context("starting chromium")?;
        let started = Instant::now();
        let ws_url = loop {
            match ns.enter(|| page_ws_url(url))? {
                Ok(Some(u)) => break u,
                Ok(None) | Err(_) if started.elapsed() < START_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Ok(None) => bail!(
                    "chromium showed no page for {url} within {START_TIMEOUT:?}; its stderr:\n{}",
                    process.stderr_tail()
                ),
                Err(e) => {
                    return Err(e.context(format!(
                        "chromium's DevTools did not answer within {START_TIMEOUT:?}; its stderr:\n{}",
                        process.stderr_tail()
                    )));
                }
            }
        };
        let page = ns.enter(|| -> Result<WebSocket<TcpStream>> {
            let stream = TcpStream::connect(("127.0.0.1", DEVTOOLS_PORT))?;
            stream.set_read_timeout(Some(COMMAND_TIMEOUT))?;
            let (ws, _) = tungstenite::client(ws_url.as_str(), stream)
                .map_err(|e| anyhow::anyhow!("DevTools WebSocket {ws_url}: {e}"))?;
            Ok(ws)
        })??;
        Ok(Browser {
            process,
            page,
            next_id: 1,
            profile,
        })
    }

    /// Sends one DevTools command to the page and returns its `result`, skipping events.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.page
            .send(Message::text(msg.to_string()))
            .with_context(|| format!("sending {method}"))?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        while Instant::now() < deadline {
            let frame = self
                .page
                .read()
                .with_context(|| format!("reading the answer to {method}"))?;
            let Message::Text(text) = frame else {
                continue;
            };
            let v: Value = serde_json::from_str(&text).context("DevTools message")?;
            if v.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(e) = v.get("error") {
                bail!("{method}: {e}");
            }
            return Ok(v.get("result").cloned().unwrap_or(Value::Null));
        }
        bail!("no answer to {method} within {COMMAND_TIMEOUT:?}")
    }

    /// Evaluates a JavaScript expression in the page and returns its value (JSON-serialisable).
    pub fn eval(&mut self, expression: &str) -> Result<Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expression}: {e}");
        }
        Ok(r.pointer("/result/value").cloned().unwrap_or(Value::Null))
    }

    /// The rendered DOM, as `--dump-dom` prints it.
    pub fn dom(&mut self) -> Result<String> {
        let v = self.eval("document.documentElement.outerHTML")?;
        v.as_str()
            .map(str::to_owned)
            .context("outerHTML is not a string")
    }

    /// Reloads the page (as a user pressing F5 would).
    pub fn reload(&mut self) -> Result<()> {
        self.call("Page.reload", json!({ "ignoreCache": true }))
            .map(drop)
    }

    /// A PNG screenshot of the viewport.
    pub fn screenshot(&mut self) -> Result<Vec<u8>> {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" }))?;
        let data = r
            .get("data")
            .and_then(Value::as_str)
            .context("no screenshot data")?;
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .context("screenshot base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.page.close(None);
        let _ = self.process.terminate(Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The WebSocket URL of the page showing `url`, from DevTools' `/json/list`; none while it has
/// no such page yet.
fn page_ws_url(url: &str) -> Result<Option<String>> {
    let mut s = TcpStream::connect_timeout(
        &([127, 0, 0, 1], DEVTOOLS_PORT).into(),
        Duration::from_secs(2),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /json/list HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    // DevTools keeps the connection open: read the head, then Content-Length bytes.
    let mut out = Vec::new();
    let mut buf = [0; 8192];
    let body = loop {
        let n = s.read(&mut buf)?;
        ensure!(n > 0, "DevTools closed the connection early");
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .context("no Content-Length from DevTools")?;
        if body.len() >= len {
            break body.to_owned();
        }
    };
    let targets: Vec<Value> = serde_json::from_str(&body).context("/json/list")?;
    Ok(targets
        .iter()
        .filter(|t| t.get("type").and_then(Value::as_str) == Some("page"))
        .filter(|t| {
            t.get("url")
                .and_then(Value::as_str)
                .is_some_and(|u| u.starts_with(url))
        })
        .find_map(|t| t.get("webSocketDebuggerUrl").and_then(Value::as_str))
        .map(str::to_owned))
}

/// What a PNG shows, roughly: its size and how many distinct colours it has (a blank page has
/// one or two).
pub fn png_summary(png_bytes: &[u8]) -> Result<(u32, u32, usize)> {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().context("PNG header")?;
    let mut buf = vec![0; reader.output_buffer_size().context("PNG size")?];
    let info = reader.next_frame(&mut buf).context("PNG frame")?;
    let bytes_per_pixel = info.color_type.samples() * usize::from(info.bit_depth as u8).div_ceil(8);
    let colours: std::collections::HashSet<&[u8]> = buf[..info.buffer_size()]
        .chunks(bytes_per_pixel.max(1))
        .collect();
    Ok((info.width, info.height, colours.len()))
}
