//! keepalived's checkers → a service's `health = { .. }`.
//!
//! keepalived checks each real server with its own checkers; lbd runs one check per service on
//! every backend, a TCP connect or an HTTP GET to the service port. So `TCP_CHECK` and
//! `HTTP_GET` convert (`SSL_GET` as a TCP connect: lbd's probes speak no TLS), the first real
//! server's check becomes the service's, and real servers checked differently are reported.
//! Timing: `delay_loop` → `interval_ms`, `connect_timeout` → `timeout_ms`, `retry` → `fall =
//! retry + 1` (keepalived takes a server out after the first failure and `retry` more),
//! `rise = 1` (keepalived takes it back after one passed check). Each of those settings is
//! inherited virtual_server → real_server → checker, as in keepalived.

use std::net::IpAddr;

use super::{Findings, parse_int, parse_timer, shorten};
use crate::emit::Health;
use crate::include::At;
use crate::parser::Node;

/// keepalived's defaults: `delay_loop` 60 s, `connect_timeout` 5 s, `retry` 1.
const DEFAULT_DELAY_LOOP_MS: u64 = 60_000;
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_RETRY: i64 = 1;
/// lbd's ranges.
const INTERVAL_MS: (u64, u64) = (50, 3_600_000);
const MIN_TIMEOUT_MS: u64 = 10;
const MAX_THRESHOLD: i64 = 100;
const MAX_PATH_LEN: usize = 1024;

/// Timing settings in force at one level, with where each was set.
#[derive(Debug, Clone, Default)]
pub(crate) struct Timing {
    delay_loop: Option<(u64, At)>,
    connect_timeout: Option<(u64, At)>,
    retry: Option<(i64, At)>,
}

/// Handles a timing keyword valid at the virtual_server, real_server and checker levels; false
/// when `n` is not one.
pub(crate) fn timing_keyword(n: &Node, t: &mut Timing, f: &mut Findings) -> bool {
    let timer = |n: &Node, f: &mut Findings| {
        let ms = n.arg(0).and_then(parse_timer);
        if ms.is_none() {
            f.not_converted(
                n,
                "expected seconds, e.g. 3 or 1.5; keepalived's default is used",
            );
        }
        ms.map(|ms| (ms, n.at()))
    };
    match n.key() {
        "delay_loop" => t.delay_loop = timer(n, f).or(t.delay_loop),
        "connect_timeout" => t.connect_timeout = timer(n, f).or(t.connect_timeout),
        "retry" | "nb_get_retry" => match n.arg(0).and_then(parse_int) {
            Some(r) if r >= 0 => t.retry = Some((r, n.at())),
            _ => f.not_converted(n, "expected a count; keepalived's default is used"),
        },
        "delay_before_retry" => f.note(
            n.at(),
            format!(
                "{}: lbd probes every interval_ms and counts failures at that pace (no separate retry delay)",
                shorten(&n.line())
            ),
        ),
        "warmup" => f.note(
            n.at(),
            format!(
                "{}: lbd spreads its probes by ±10 % of interval_ms instead",
                shorten(&n.line())
            ),
        ),
        "alpha" => {
            if !matches!(n.arg(0), Some("no" | "off" | "false")) {
                f.not_converted(
                    n,
                    "lbd starts every backend up (as keepalived does without alpha) and takes it out after fall failed probes",
                );
            }
        }
        "inhibit_on_failure" => {
            if !matches!(n.arg(0), Some("no" | "off" | "false")) {
                f.not_converted(
                    n,
                    "lbd takes a failed backend out of the hash table and its flows out of the connection table; \
                     it has no weight-0 state that keeps existing connections",
                );
            }
        }
        "virtualhost" => f.not_converted(
            n,
            "lbd's HTTP probe sends the backend's address and port as Host",
        ),
        _ => return false,
    }
    true
}

/// Whether `key` names a keepalived checker.
pub(crate) fn is_checker(key: &str) -> bool {
    matches!(
        key,
        "TCP_CHECK"
            | "HTTP_GET"
            | "SSL_GET"
            | "MISC_CHECK"
            | "SMTP_CHECK"
            | "DNS_CHECK"
            | "UDP_CHECK"
            | "PING_CHECK"
            | "BFD_CHECK"
            | "FILE_CHECK"
    )
}

/// The check of one real server, if it has one lbd can run.
#[derive(Debug, Clone)]
pub(crate) struct RsCheck {
    rs_at: At,
    addr: IpAddr,
    check: Option<Converted>,
}

#[derive(Debug, Clone)]
struct Converted {
    health: Health,
    at: At,
    /// How it was mapped, said once for the service.
    note: String,
}

/// Converts the checkers of one real server; the first one lbd can run is its check.
#[expect(
    clippy::too_many_arguments,
    reason = "the real server's identity and its inherited settings"
)]
pub(crate) fn real_server_checks(
    rs: &Node,
    addr: IpAddr,
    rs_port: u16,
    vip_port: u16,
    udp: bool,
    timing: &Timing,
    checkers: &[&Node],
    f: &mut Findings,
) -> RsCheck {
    let mut check: Option<Converted> = None;
    for c in checkers {
        if udp {
            f.not_converted(
                c,
                "lbd health-checks TCP services only (TCP connects and HTTP GETs); a UDP service has no check",
            );
            continue;
        }
        let converted = match c.key() {
            "TCP_CHECK" | "HTTP_GET" | "SSL_GET" => checker(c, addr, rs_port, vip_port, timing, f),
            "MISC_CHECK" => {
                f.not_converted(
                    c,
                    "lbd runs no check scripts: its checks are TCP connects and HTTP GETs",
                );
                None
            }
            "SMTP_CHECK" | "DNS_CHECK" | "UDP_CHECK" | "PING_CHECK" => {
                f.not_converted(c, "lbd's checks are TCP connects and HTTP GETs only");
                None
            }
            "BFD_CHECK" => {
                f.not_converted(c, "lbd has no BFD");
                None
            }
            _ => {
                f.not_converted(
                    c,
                    "lbd's checks are TCP connects and HTTP GETs only (it reads no track files)",
                );
                None
            }
        };
        if let Some(conv) = converted {
            if check.is_some() {
                f.warn(
                    conv.at,
                    format!(
                        "{} of real_server {addr} not converted: lbd runs one check per service (the first of this real server is kept)",
                        c.key()
                    ),
                );
            } else {
                check = Some(conv);
            }
        }
    }
    RsCheck {
        rs_at: rs.at(),
        addr,
        check,
    }
}

/// One `TCP_CHECK`, `HTTP_GET` or `SSL_GET` block.
fn checker(
    c: &Node,
    addr: IpAddr,
    rs_port: u16,
    vip_port: u16,
    timing: &Timing,
    f: &mut Findings,
) -> Option<Converted> {
    let kind = c.key();
    let mut t = timing.clone();
    let mut port = (rs_port, None::<At>);
    let mut urls = Vec::new();
    for k in c.children() {
        if timing_keyword(k, &mut t, f) {
            continue;
        }
        match k.key() {
            "connect_port" => match k.arg(0).and_then(parse_int) {
                Some(p @ 1..=65535) => port = (u16::try_from(p).unwrap_or(rs_port), Some(k.at())),
                _ => f.not_converted(k, "the port is not 1 to 65535"),
            },
            "connect_ip" if k.arg(0).and_then(|a| a.parse::<IpAddr>().ok()) == Some(addr) => {}
            "connect_ip" => f.not_converted(k, "lbd probes the backend's own address"),
            "bindto" | "bind_port" | "bind_if" | "fwmark" => f.not_converted(
                k,
                "lbd's probes leave from the node's own address, unmarked",
            ),
            "log_all_failures" => f.not_converted(
                k,
                "lbd logs each backend state change; probe results are in its metrics",
            ),
            "url" if kind != "TCP_CHECK" => urls.push(k),
            "http_protocol" if kind != "TCP_CHECK" && k.arg(0) == Some("1.1") => {}
            // SSL_GET's TLS settings go with the SSL_GET warning below.
            "enable_sni" | "sni_name" | "tls_compliant" if kind == "SSL_GET" => {}
            "http_protocol" | "fast_recovery" | "enable_sni" | "sni_name" | "tls_compliant"
                if kind != "TCP_CHECK" =>
            {
                f.not_converted(k, "lbd's HTTP probe is one HTTP/1.1 GET without TLS");
            }
            _ => f.not_converted(k, "no lbd equivalent (or not a keyword of this checker)"),
        }
    }
    if port.0 != vip_port {
        f.warn(
            port.1.unwrap_or(c.at()),
            format!(
                "{kind} of real_server {addr} probes port {}; not converted: lbd probes the service port {vip_port}",
                port.0
            ),
        );
    }

    let mut http = None;
    match kind {
        "SSL_GET" => f.warn(
            c.at(),
            format!(
                "SSL_GET of real_server {addr} converted as a TCP connect check: lbd's probes speak no TLS \
                 (its url checks and TLS settings are not converted)"
            ),
        ),
        "HTTP_GET" => http = http_url(c, addr, &urls, f),
        _ => {}
    }

    let (delay, delay_at) = t
        .delay_loop
        .map_or((DEFAULT_DELAY_LOOP_MS, None), |(ms, at)| (ms, Some(at)));
    let interval_ms = delay.clamp(INTERVAL_MS.0, INTERVAL_MS.1);
    if interval_ms != delay {
        f.warn(
            delay_at.unwrap_or(c.at()),
            format!(
                "delay_loop {delay} ms converted as interval_ms = {interval_ms}: lbd's probe intervals are {} to {} ms",
                INTERVAL_MS.0, INTERVAL_MS.1
            ),
        );
    }
    let (timeout, timeout_at) = t
        .connect_timeout
        .map_or((DEFAULT_CONNECT_TIMEOUT_MS, None), |(ms, at)| {
            (ms, Some(at))
        });
    let timeout_ms = timeout.clamp(MIN_TIMEOUT_MS, interval_ms - 1);
    if timeout_ms != timeout {
        f.warn(
            timeout_at.unwrap_or(c.at()),
            format!(
                "connect_timeout {timeout} ms converted as timeout_ms = {timeout_ms}: lbd's probe timeout is {MIN_TIMEOUT_MS} ms \
                 to less than interval_ms"
            ),
        );
    }
    let (retry, retry_at) = t
        .retry
        .map_or((DEFAULT_RETRY, None), |(r, at)| (r, Some(at)));
    let fall = (retry + 1).clamp(1, MAX_THRESHOLD);
    if fall != retry + 1 {
        f.warn(
            retry_at.unwrap_or(c.at()),
            format!("retry {retry} converted as fall = {fall}: lbd counts at most {MAX_THRESHOLD} failed probes"),
        );
    }
    let describe = |v: Option<At>, name: &str, value: String| match v {
        Some(_) => format!("{name} {value}"),
        None => format!("{name} {value} (keepalived's default)"),
    };
    let note = format!(
        "{kind} → health{}: interval_ms from {}, timeout_ms from {}, fall = {} + 1, rise = 1 \
         (keepalived takes a server back after one passed check)",
        match &http {
            Some((path, status)) => format!(" GET {path} expecting {status}"),
            None => " TCP connect".to_owned(),
        },
        describe(delay_at, "delay_loop", format!("{} s", ms_text(delay))),
        describe(
            timeout_at,
            "connect_timeout",
            format!("{} s", ms_text(timeout))
        ),
        describe(retry_at, "retry", retry.to_string()),
    );
    Some(Converted {
        health: Health {
            http,
            interval_ms,
            timeout_ms,
            rise: 1,
            fall: u32::try_from(fall).unwrap_or(1),
        },
        at: c.at(),
        note,
    })
}

/// `3000` → `3`, `1500` → `1.5`.
fn ms_text(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        (ms / 1000).to_string()
    } else {
        let s = format!("{}.{:03}", ms / 1000, ms % 1000);
        s.trim_end_matches('0').to_owned()
    }
}

/// The path and status of an `HTTP_GET`'s first `url`; none (a TCP check) when it has none lbd
/// can send.
fn http_url(c: &Node, addr: IpAddr, urls: &[&Node], f: &mut Findings) -> Option<(String, u16)> {
    let Some((first, rest)) = urls.split_first() else {
        f.warn(
            c.at(),
            format!("HTTP_GET of real_server {addr} has no url: converted as a TCP connect check"),
        );
        return None;
    };
    for u in rest {
        f.not_converted(
            u,
            "lbd's HTTP check requests one path (the first url is kept); keepalived required every url to pass",
        );
    }
    let mut path = None;
    let mut status: Option<u16> = None;
    for k in first.children() {
        match k.key() {
            "path" => path = k.arg(0).map(|p| (p.to_owned(), k.at())),
            "status_code" => status = status_code(k, f),
            "digest" => f.not_converted(k, "lbd checks the HTTP status only, not the body"),
            k2 if k2.starts_with("regex") => {
                f.not_converted(k, "lbd checks the HTTP status only, not the body");
            }
            "virtualhost" => f.not_converted(
                k,
                "lbd's HTTP probe sends the backend's address and port as Host",
            ),
            _ => f.not_converted(k, "no lbd equivalent (or not a keepalived url keyword)"),
        }
    }
    let (path, path_at) = path.unwrap_or_else(|| ("/".to_owned(), first.at()));
    if !path.starts_with('/')
        || path.len() > MAX_PATH_LEN
        || !path.bytes().all(|b| b.is_ascii_graphic())
    {
        f.warn(
            path_at,
            format!(
                "path {} converted as a TCP connect check: lbd requests paths that start with '/', of at most {MAX_PATH_LEN} visible ASCII characters",
                shorten(&path)
            ),
        );
        return None;
    }
    let status = match status {
        Some(s) => s,
        None => {
            f.note(
                first.at(),
                "no status_code: keepalived accepts any 2xx; lbd expects exactly 200",
            );
            200
        }
    };
    Some((path, status))
}

/// `status_code 200` → 200; a list or range is reported and its first status taken.
fn status_code(k: &Node, f: &mut Findings) -> Option<u16> {
    let first = k.arg(0)?;
    let low = first.split('-').next().and_then(|s| s.parse::<u16>().ok());
    let low = low.filter(|s| (100..=599).contains(s));
    match low {
        Some(s) if k.args.len() == 1 && !first.contains('-') => Some(s),
        Some(s) => {
            f.warn(
                k.at(),
                format!(
                    "{} converted as expect_status = {s}: lbd expects one status",
                    shorten(&k.line())
                ),
            );
            Some(s)
        }
        None => {
            f.not_converted(k, "not an HTTP status (100 to 599); 200 is expected");
            None
        }
    }
}

/// The service's check: the first real server's; real servers checked differently, or not at
/// all, are reported.
pub(crate) fn service_health(checks: &[RsCheck], udp: bool, f: &mut Findings) -> Option<Health> {
    if udp {
        return None;
    }
    let (first_addr, chosen) = checks
        .iter()
        .find_map(|c| c.check.as_ref().map(|conv| (c.addr, conv)))?;
    f.note(chosen.at, chosen.note.clone());
    for c in checks {
        match &c.check {
            Some(conv) if conv.health == chosen.health => {}
            Some(conv) => f.warn(
                conv.at,
                format!(
                    "the check of real_server {} differs from the one of real_server {first_addr}: \
                     lbd runs one check per service, the one of {first_addr}",
                    c.addr
                ),
            ),
            None => f.warn(
                c.rs_at,
                format!(
                    "real_server {} has no check lbd can run (keepalived counted it up without one); lbd probes it with the service's check",
                    c.addr
                ),
            ),
        }
    }
    Some(chosen.health.clone())
}
