//! `health = { .. }` of a service: the raw TOML table and its validated form.
//!
//! [`RawHealth`] is the TOML table (`health = { kind = "http", path = "/healthz", .. }`);
//! [`RawHealth::validate`] turns it into a [`HealthConfig`], with errors that name the key, the
//! value and what is allowed, in the shape of [`ConfigError`].

use std::{fmt, time::Duration};

use serde::Deserialize;

use super::ConfigError;

/// Default time between two probes of one target, in milliseconds.
pub const DEFAULT_INTERVAL_MS: u64 = 1000;
/// Longest default probe timeout, in milliseconds (capped at half the interval).
pub const DEFAULT_TIMEOUT_MS: u64 = 500;
/// Default number of consecutive passed probes that bring a Down target Up.
pub const DEFAULT_RISE: u32 = 2;
/// Default number of consecutive failed probes that take an Up target Down.
pub const DEFAULT_FALL: u32 = 3;
/// Default HTTP request path.
pub const DEFAULT_HTTP_PATH: &str = "/";
/// Default expected HTTP status.
pub const DEFAULT_EXPECT_STATUS: u16 = 200;
/// Allowed probe intervals, in milliseconds.
pub const INTERVAL_MS_RANGE: std::ops::RangeInclusive<u64> = 50..=3_600_000;
/// Shortest allowed probe timeout, in milliseconds (the longest is `interval_ms - 1`).
pub const MIN_TIMEOUT_MS: u64 = 10;
/// Allowed rise and fall thresholds.
pub const THRESHOLD_RANGE: std::ops::RangeInclusive<u32> = 1..=100;
/// Allowed expected HTTP statuses.
pub const STATUS_RANGE: std::ops::RangeInclusive<u16> = 100..=599;
/// Longest HTTP request path, in bytes.
pub const MAX_PATH_LEN: usize = 1024;

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// Connect over TCP within the timeout.
    Tcp,
    /// Connect, send `GET path HTTP/1.1`, and read a status line equal to `expect_status`
    /// within the timeout.
    Http {
        /// Request path: starts with '/', visible ASCII only.
        path: String,
        /// Status that counts as healthy.
        expect_status: u16,
    },
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckKind::Tcp => f.write_str("tcp"),
            CheckKind::Http {
                path,
                expect_status,
            } => write!(f, "http GET {path} expecting {expect_status}"),
        }
    }
}

/// A validated health check config.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthConfig {
    /// Kind of probe.
    pub kind: CheckKind,
    /// Time between probes (each probe starts `interval ± 10 %` after the previous one).
    pub interval: Duration,
    /// Limit on a whole probe: connect, request and status line; always below `interval`.
    pub timeout: Duration,
    /// Consecutive passed probes that bring a Down target Up.
    pub rise: u32,
    /// Consecutive failed probes that take an Up target Down.
    pub fall: u32,
}

impl Default for HealthConfig {
    /// A TCP check every second, 500 ms timeout, rise 2, fall 3.
    fn default() -> Self {
        HealthConfig {
            kind: CheckKind::Tcp,
            interval: Duration::from_millis(DEFAULT_INTERVAL_MS),
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
        }
    }
}

/// The `health` table of a service as written in TOML, before validation. Embed it in the
/// service's raw struct (`health: Option<RawHealth>`) and call [`RawHealth::validate`]. All keys
/// are optional: `health = {}` is a TCP check with the defaults. Unknown keys are errors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// `tcp` (default) or `http`.
    pub kind: Option<String>,
    /// HTTP request path (http only), default `/`.
    pub path: Option<String>,
    /// Expected HTTP status (http only), default 200.
    pub expect_status: Option<i64>,
    /// Milliseconds between probes, default 1000.
    pub interval_ms: Option<i64>,
    /// Probe timeout in milliseconds, default `min(500, interval_ms / 2)`.
    pub timeout_ms: Option<i64>,
    /// Consecutive passes to come up, default 2.
    pub rise: Option<i64>,
    /// Consecutive failures to go down, default 3.
    pub fall: Option<i64>,
}

impl RawHealth {
    /// Validates the table. `key` is its key path, e.g. `service[0].health`; errors name the
    /// field under it, e.g. `service[0].health.interval_ms: 10 is out of range (allowed: 50 to
    /// 3600000 ms)`.
    pub fn validate(&self, key: &str) -> Result<HealthConfig, ConfigError> {
        let field_err = |field: &str, message: String| ConfigError {
            path: format!("{key}.{field}"),
            message,
        };
        let is_http = match self.kind.as_deref().unwrap_or("tcp") {
            "tcp" => false,
            "http" => true,
            other => {
                return Err(field_err(
                    "kind",
                    format!("{other:?} is not a health check kind (allowed: tcp, http)"),
                ));
            }
        };
        let interval_ms = match self.interval_ms {
            None => DEFAULT_INTERVAL_MS,
            Some(n) => in_range(n, INTERVAL_MS_RANGE).ok_or_else(|| {
                field_err(
                    "interval_ms",
                    format!(
                        "{n} is out of range (allowed: {} to {} ms)",
                        INTERVAL_MS_RANGE.start(),
                        INTERVAL_MS_RANGE.end()
                    ),
                )
            })?,
        };
        let max_timeout = interval_ms - 1;
        let timeout_ms = match self.timeout_ms {
            // Half the interval leaves room for the jitter and keeps a slow probe from running
            // into the next one.
            None => DEFAULT_TIMEOUT_MS.min(interval_ms / 2),
            Some(n) => in_range(n, MIN_TIMEOUT_MS..=max_timeout).ok_or_else(|| {
                field_err(
                    "timeout_ms",
                    format!(
                        "{n} is out of range (allowed: {MIN_TIMEOUT_MS} to {max_timeout} ms: \
                         less than interval_ms = {interval_ms})"
                    ),
                )
            })?,
        };
        let threshold = |field: &str, value: Option<i64>, default: u32| match value {
            None => Ok(default),
            Some(n) => in_range(n, THRESHOLD_RANGE).ok_or_else(|| {
                field_err(
                    field,
                    format!(
                        "{n} is out of range (allowed: {} to {} consecutive probes)",
                        THRESHOLD_RANGE.start(),
                        THRESHOLD_RANGE.end()
                    ),
                )
            }),
        };
        let rise = threshold("rise", self.rise, DEFAULT_RISE)?;
        let fall = threshold("fall", self.fall, DEFAULT_FALL)?;
        let kind = if is_http {
            let path = self.path.as_deref().unwrap_or(DEFAULT_HTTP_PATH);
            // Only visible ASCII: a space or a line break would let the path rewrite the request.
            if !path.starts_with('/')
                || path.len() > MAX_PATH_LEN
                || !path.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(field_err(
                    "path",
                    format!(
                        "{path:?} is not a request path (starts with '/', at most \
                         {MAX_PATH_LEN} visible ASCII characters, no spaces)"
                    ),
                ));
            }
            let expect_status = match self.expect_status {
                None => DEFAULT_EXPECT_STATUS,
                Some(n) => in_range(n, STATUS_RANGE).ok_or_else(|| {
                    field_err(
                        "expect_status",
                        format!(
                            "{n} is out of range (allowed: HTTP statuses {} to {})",
                            STATUS_RANGE.start(),
                            STATUS_RANGE.end()
                        ),
                    )
                })?,
            };
            CheckKind::Http {
                path: path.to_owned(),
                expect_status,
            }
        } else {
            for (field, given) in [
                ("path", self.path.is_some()),
                ("expect_status", self.expect_status.is_some()),
            ] {
                if given {
                    return Err(field_err(
                        field,
                        "only applies to kind = \"http\" (this check is kind = \"tcp\")".into(),
                    ));
                }
            }
            CheckKind::Tcp
        };
        Ok(HealthConfig {
            kind,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
            rise,
            fall,
        })
    }
}

/// `n` converted to `T` when it lies in `range`.
fn in_range<T>(n: i64, range: std::ops::RangeInclusive<T>) -> Option<T>
where
    T: TryFrom<i64> + PartialOrd,
{
    T::try_from(n).ok().filter(|v| range.contains(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(table: &str) -> Result<HealthConfig, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Svc {
            health: RawHealth,
        }
        let svc: Svc = toml::from_str(&format!("health = {table}")).map_err(|e| e.to_string())?;
        svc.health
            .validate("service[0].health")
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        assert_eq!(parse("{}").unwrap(), HealthConfig::default());
        let http = parse(r#"{ kind = "http" }"#).unwrap();
        assert_eq!(
            http.kind,
            CheckKind::Http {
                path: "/".into(),
                expect_status: 200
            }
        );
        // The default timeout stays below a short interval.
        let short = parse("{ interval_ms = 100 }").unwrap();
        assert_eq!(short.timeout, Duration::from_millis(50));
        let full = parse(
            r#"{ kind = "http", path = "/healthz?x=1", expect_status = 204, interval_ms = 2000,
                 timeout_ms = 1999, rise = 1, fall = 100 }"#,
        )
        .unwrap();
        assert_eq!(
            full,
            HealthConfig {
                kind: CheckKind::Http {
                    path: "/healthz?x=1".into(),
                    expect_status: 204
                },
                interval: Duration::from_millis(2000),
                timeout: Duration::from_millis(1999),
                rise: 1,
                fall: 100,
            }
        );
    }

    #[test]
    fn config_errors_name_field_value_and_range() {
        let cases = [
            (
                r#"{ kind = "udp" }"#,
                r#"service[0].health.kind: "udp" is not a health check kind (allowed: tcp, http)"#,
            ),
            (
                "{ interval_ms = 49 }",
                "service[0].health.interval_ms: 49 is out of range (allowed: 50 to 3600000 ms)",
            ),
            (
                "{ interval_ms = 3600001 }",
                "service[0].health.interval_ms: 3600001 is out of range",
            ),
            (
                "{ interval_ms = -1 }",
                "service[0].health.interval_ms: -1 is out of range",
            ),
            (
                "{ interval_ms = 1000, timeout_ms = 1000 }",
                "service[0].health.timeout_ms: 1000 is out of range (allowed: 10 to 999 ms: less than interval_ms = 1000)",
            ),
            (
                "{ timeout_ms = 5 }",
                "service[0].health.timeout_ms: 5 is out of range (allowed: 10 to 999 ms",
            ),
            (
                "{ rise = 0 }",
                "service[0].health.rise: 0 is out of range (allowed: 1 to 100 consecutive probes)",
            ),
            (
                "{ fall = 101 }",
                "service[0].health.fall: 101 is out of range",
            ),
            (
                r#"{ kind = "http", path = "healthz" }"#,
                r#"service[0].health.path: "healthz" is not a request path (starts with '/'"#,
            ),
            (
                r#"{ kind = "http", path = "/a b" }"#,
                r#"service[0].health.path: "/a b" is not a request path"#,
            ),
            (
                r#"{ kind = "http", path = "/a\r\nX: y" }"#,
                r#"service[0].health.path: "/a\r\nX: y" is not a request path"#,
            ),
            (
                r#"{ kind = "http", expect_status = 99 }"#,
                "service[0].health.expect_status: 99 is out of range (allowed: HTTP statuses 100 to 599)",
            ),
            (
                r#"{ kind = "http", expect_status = 600 }"#,
                "service[0].health.expect_status: 600 is out of range",
            ),
            (
                r#"{ path = "/healthz" }"#,
                r#"service[0].health.path: only applies to kind = "http" (this check is kind = "tcp")"#,
            ),
            (
                "{ expect_status = 200 }",
                r#"service[0].health.expect_status: only applies to kind = "http""#,
            ),
            ("{ intervall_ms = 100 }", "unknown field `intervall_ms`"),
        ];
        for (table, want) in cases {
            let got = parse(table).expect_err(table);
            assert!(got.contains(want), "{table}\nwant: {want}\ngot:  {got}");
        }
        let long = format!(
            r#"{{ kind = "http", path = "/{}" }}"#,
            "a".repeat(MAX_PATH_LEN)
        );
        assert!(parse(&long).unwrap_err().contains("at most 1024"));
    }
}
