//! `[proxy]`: limits and timeouts of the userspace data path.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, err};

/// Limits and timeouts of the proxy, per service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// How long a TCP connect to a backend may take before it counts as failed (and the
    /// connection is retried once on another backend).
    pub connect_timeout: Duration,
    /// A TCP connection with no bytes in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Most TCP connections open at once per service. At the bound the proxy stops accepting:
    /// new clients wait in the kernel's listen backlog until a connection closes. Each spliced
    /// connection holds six file descriptors (two sockets, two pipes): the open-files limit
    /// (`LimitNOFILE=`) must allow for the sum over services.
    pub max_connections: usize,
    /// A UDP session with no datagram in either direction for this long is closed.
    pub udp_session_timeout: Duration,
    /// Most UDP sessions (client addresses) at once per service. At the bound, datagrams from
    /// new clients are dropped (UDP has no backlog to wait in); existing sessions go on.
    pub max_udp_sessions: usize,
    /// Copy TCP payload with `splice(2)` through a pipe (Linux, zero-copy) instead of a copy
    /// loop through a userspace buffer. Off only for comparison and tests; when splice fails
    /// as unsupported, the copy loop takes over by itself.
    pub splice: bool,
}

impl Default for ProxyConfig {
    fn default() -> ProxyConfig {
        ProxyConfig {
            connect_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(300),
            max_connections: 10_000,
            udp_session_timeout: Duration::from_secs(30),
            max_udp_sessions: 10_000,
            splice: true,
        }
    }
}

/// Largest connection or session bound: the shutdown waits for all of them with one
/// `Semaphore::acquire_many(u32)`.
pub const MAX_LIMIT: usize = 1 << 24;

impl ProxyConfig {
    /// Checks that every timeout is non-zero and every bound is within 1..=[`MAX_LIMIT`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        let durations = [
            ("connect_timeout", self.connect_timeout),
            ("idle_timeout", self.idle_timeout),
            ("udp_session_timeout", self.udp_session_timeout),
        ];
        for (field, d) in durations {
            if d.is_zero() {
                return Err(err(format!("proxy.{field}"), "must be greater than zero"));
            }
        }
        for (field, n) in [
            ("max_connections", self.max_connections),
            ("max_udp_sessions", self.max_udp_sessions),
        ] {
            if !(1..=MAX_LIMIT).contains(&n) {
                return Err(err(
                    format!("proxy.{field}"),
                    format!("{n} is out of range (allowed: 1 to {MAX_LIMIT})"),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    connect_timeout_ms: Option<i64>,
    idle_timeout_s: Option<i64>,
    max_connections: Option<i64>,
    udp_session_timeout_s: Option<i64>,
    max_udp_sessions: Option<i64>,
    splice: Option<bool>,
}

impl RawProxy {
    pub(super) fn validate(self) -> Result<ProxyConfig, ConfigError> {
        let mut c = ProxyConfig::default();
        let range = |key: &str, v: i64, lo: i64, hi: i64| -> Result<u64, ConfigError> {
            if (lo..=hi).contains(&v) {
                Ok(v as u64)
            } else {
                Err(err(
                    format!("proxy.{key}"),
                    format!("{v} is out of range (allowed: {lo} to {hi})"),
                ))
            }
        };
        let max = MAX_LIMIT as i64;
        if let Some(v) = self.connect_timeout_ms {
            c.connect_timeout = Duration::from_millis(range("connect_timeout_ms", v, 10, 60_000)?);
        }
        if let Some(v) = self.idle_timeout_s {
            c.idle_timeout = Duration::from_secs(range("idle_timeout_s", v, 1, 86_400)?);
        }
        if let Some(v) = self.max_connections {
            c.max_connections = range("max_connections", v, 1, max)? as usize;
        }
        if let Some(v) = self.udp_session_timeout_s {
            c.udp_session_timeout =
                Duration::from_secs(range("udp_session_timeout_s", v, 1, 86_400)?);
        }
        if let Some(v) = self.max_udp_sessions {
            c.max_udp_sessions = range("max_udp_sessions", v, 1, max)? as usize;
        }
        if let Some(v) = self.splice {
            c.splice = v;
        }
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zero_values_are_named() {
        assert!(ProxyConfig::default().validate().is_ok());
        let e = ProxyConfig {
            connect_timeout: Duration::ZERO,
            ..ProxyConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "proxy.connect_timeout: must be greater than zero"
        );
        let e = ProxyConfig {
            max_connections: 0,
            ..ProxyConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("proxy.max_connections: 0 is out of range")
        );
    }
}
