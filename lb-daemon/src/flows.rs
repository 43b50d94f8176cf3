//! `lbctl flows`: the connection table as `ipvsadm -Lnc` shows it — protocol, client, VIP,
//! backend, state, idle time — filtered, and bounded however big the table is.
//!
//! A data path lists its flows into a [`Collector`] ([`crate::datapath::FlowTable::list`]): one
//! pass over the table (in batches for XDP), each flow checked against the [`FlowQuery`], the
//! `limit` most recently active ones kept in a bounded heap and the rest only counted. So a
//! 16M-entry table costs one read pass and `limit` rows of memory. The core names the backend
//! ids and answers a [`FlowsReport`].

use std::{
    collections::{BinaryHeap, HashSet},
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::config::{Proto, ServiceKey};

/// Rows shown when `--limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `--limit`: the answer is one JSON line over the control socket.
pub const MAX_LIMIT: usize = 100_000;

/// Which flows to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowQuery {
    /// Only this service's flows.
    pub service: Option<ServiceKey>,
    /// Only flows pinned to these backend ids.
    pub backends: Option<HashSet<u32>>,
    /// Only this client (address, and port when given).
    pub client: Option<ClientFilter>,
    /// Rows to return at most; the others are counted.
    pub limit: usize,
}

/// A client address, with or without a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFilter {
    /// Address.
    pub ip: IpAddr,
    /// Port, when given.
    pub port: Option<u16>,
}

impl ClientFilter {
    /// Parses `198.18.0.10`, `198.18.0.10:40000`, `2001:db8::10` or `[2001:db8::10]:40000`;
    /// the error says what is accepted.
    pub fn parse(s: &str) -> Result<ClientFilter, String> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(ClientFilter { ip, port: None });
        }
        s.parse::<SocketAddr>()
            .map(|a| ClientFilter {
                ip: a.ip(),
                port: Some(a.port()),
            })
            .map_err(|_| {
                format!("client: {s:?} is not an address or address:port (e.g. 198.18.0.10, 198.18.0.10:40000, 2001:db8::10 or [2001:db8::10]:40000)")
            })
    }

    fn matches(&self, client: SocketAddr) -> bool {
        client.ip() == self.ip && self.port.is_none_or(|p| p == client.port())
    }
}

impl FlowQuery {
    /// Whether a flow passes the filters.
    pub fn matches(&self, f: &FlowRecord) -> bool {
        self.service
            .is_none_or(|s| s.vip == f.vip && s.proto == f.proto)
            && self
                .backends
                .as_ref()
                .is_none_or(|ids| ids.contains(&f.backend_id))
            && self.client.is_none_or(|c| c.matches(f.client))
    }
}

/// One flow as a data path holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRecord {
    /// Protocol.
    pub proto: Proto,
    /// Client address and port (port 0 for a client-address-only service, `sh`).
    pub client: SocketAddr,
    /// VIP and port.
    pub vip: SocketAddr,
    /// Backend id it is pinned to.
    pub backend_id: u32,
    /// A FIN or RST was seen (TCP).
    pub closing: bool,
    /// Time since its last packet (XDP: to the second) or transfer (proxy).
    pub idle: Duration,
    /// Time left before the entry expires, where the data path expires entries (XDP).
    pub expires: Option<Duration>,
}

/// Keeps the `limit` most recently active flows of a pass and counts the others.
#[derive(Debug)]
pub struct Collector<'q> {
    query: &'q FlowQuery,
    /// A max-heap on idle time: its top is the first to leave when a fresher flow comes.
    kept: BinaryHeap<Keyed>,
    matched: u64,
    scanned: u64,
}

/// A record ordered by idle time, then by its fields (a total order, for a stable output).
#[derive(Debug, PartialEq, Eq)]
struct Keyed(FlowRecord);

impl Keyed {
    fn key(&self) -> impl Ord {
        let f = &self.0;
        (
            f.idle,
            f.proto.number(),
            f.client,
            f.vip,
            f.backend_id,
            f.closing,
        )
    }
}

impl Ord for Keyed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for Keyed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<'q> Collector<'q> {
    /// An empty collection for `query`.
    pub fn new(query: &'q FlowQuery) -> Collector<'q> {
        Collector {
            query,
            kept: BinaryHeap::with_capacity(query.limit.min(MAX_LIMIT) + 1),
            matched: 0,
            scanned: 0,
        }
    }

    /// Offers one flow of the pass.
    pub fn offer(&mut self, f: FlowRecord) {
        self.scanned += 1;
        if !self.query.matches(&f) {
            return;
        }
        self.matched += 1;
        if self.query.limit == 0 {
            return;
        }
        if self.kept.len() < self.query.limit {
            self.kept.push(Keyed(f));
        } else if let Some(mut top) = self.kept.peek_mut()
            && Keyed(f) < *top
        {
            *top = Keyed(f);
        }
    }

    /// The kept flows, most recently active first, and the counts.
    pub fn finish(self) -> FlowListing {
        // Ascending: the least idle first.
        let flows = self
            .kept
            .into_sorted_vec()
            .into_iter()
            .map(|k| k.0)
            .collect();
        FlowListing {
            flows,
            matched: self.matched,
            scanned: self.scanned,
        }
    }
}

/// What one pass found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowListing {
    /// Up to `limit` flows, most recently active first.
    pub flows: Vec<FlowRecord>,
    /// Flows that passed the filters.
    pub matched: u64,
    /// Flows in the table.
    pub scanned: u64,
}

/// A flow's state as `lbctl flows` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowStateName {
    /// Established (or a UDP flow).
    Open,
    /// A FIN or RST was seen.
    Closing,
}

/// One row of `lbctl flows` (and of its `--json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRow {
    /// `tcp` or `udp`.
    pub proto: Proto,
    /// Client `address:port`.
    pub client: String,
    /// VIP `address:port`.
    pub vip: String,
    /// Service name.
    pub service: String,
    /// Backend address (`id N` when the id has no backend any more).
    pub backend: String,
    /// `open` or `closing`.
    pub state: FlowStateName,
    /// Seconds since its last packet.
    pub idle_s: u64,
    /// Seconds before it expires, where the data path expires flows (XDP).
    pub expires_s: Option<u64>,
}

/// The answer to `lbctl flows`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowsReport {
    /// The rows, most recently active first.
    pub flows: Vec<FlowRow>,
    /// Flows that passed the filters (rows beyond the limit are counted here only).
    pub matched: u64,
    /// Flows in the table.
    pub total: u64,
    /// How long the pass over the table took, in milliseconds.
    pub took_ms: f64,
}

impl FlowsReport {
    /// Names a listing: `name(id)` gives a backend id's service and address.
    pub fn new(
        listing: FlowListing,
        took: Duration,
        service_of: impl Fn(&FlowRecord) -> String,
        backend_of: impl Fn(u32) -> Option<String>,
    ) -> FlowsReport {
        let flows = listing
            .flows
            .iter()
            .map(|f| FlowRow {
                proto: f.proto,
                client: f.client.to_string(),
                vip: f.vip.to_string(),
                service: service_of(f),
                backend: backend_of(f.backend_id).unwrap_or_else(|| format!("id {}", f.backend_id)),
                state: if f.closing {
                    FlowStateName::Closing
                } else {
                    FlowStateName::Open
                },
                idle_s: f.idle.as_secs(),
                expires_s: f.expires.map(|d| d.as_secs()),
            })
            .collect();
        FlowsReport {
            flows,
            matched: listing.matched,
            total: listing.scanned,
            took_ms: took.as_secs_f64() * 1000.0,
        }
    }

    /// The table `lbctl flows` prints, like `ipvsadm -Lnc`, with a last line on what was not
    /// shown.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<5} {:<21} {:<21} {:<15} {:<8} {:>7} {:>8}  SERVICE",
            "PRO", "CLIENT", "VIP", "BACKEND", "STATE", "IDLE", "EXPIRES"
        );
        for r in &self.flows {
            let state = match r.state {
                FlowStateName::Open => "open",
                FlowStateName::Closing => "closing",
            };
            let expires = r.expires_s.map_or_else(|| "-".to_string(), mmss);
            let _ = writeln!(
                out,
                "{:<5} {:<21} {:<21} {:<15} {:<8} {:>7} {:>8}  {}",
                r.proto.to_string().to_uppercase(),
                r.client,
                r.vip,
                r.backend,
                state,
                mmss(r.idle_s),
                expires,
                r.service
            );
        }
        let shown = self.flows.len() as u64;
        let rest = self.matched.saturating_sub(shown);
        let _ = write!(
            out,
            "{shown} shown of {} matching, {} in the table ({:.0} ms)",
            self.matched, self.total, self.took_ms
        );
        if rest > 0 {
            let _ = write!(out, "; {rest} more not shown (--limit N shows more)");
        }
        out.push('\n');
        out
    }
}

/// `mm:ss` as ipvsadm prints times (hours as more minutes).
fn mmss(s: u64) -> String {
    format!("{:02}:{:02}", s / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(client_port: u16, backend_id: u32, idle_s: u64) -> FlowRecord {
        FlowRecord {
            proto: Proto::Tcp,
            client: SocketAddr::new(IpAddr::from([198, 18, 0, 10]), client_port),
            vip: SocketAddr::new(IpAddr::from([198, 18, 0, 100]), 80),
            backend_id,
            closing: false,
            idle: Duration::from_secs(idle_s),
            expires: Some(Duration::from_secs(900 - idle_s)),
        }
    }

    #[test]
    fn keeps_the_most_recent_flows_and_counts_the_rest() {
        let query = FlowQuery {
            limit: 3,
            ..FlowQuery::default()
        };
        let mut c = Collector::new(&query);
        for (port, idle) in [(1, 50), (2, 5), (3, 500), (4, 1), (5, 30), (6, 2)] {
            c.offer(flow(port, 1, idle));
        }
        let l = c.finish();
        let idles: Vec<u64> = l.flows.iter().map(|f| f.idle.as_secs()).collect();
        assert_eq!(idles, vec![1, 2, 5]);
        assert_eq!((l.matched, l.scanned), (6, 6));
    }

    #[test]
    fn filters_by_service_backend_and_client() {
        let web = ServiceKey {
            vip: SocketAddr::new(IpAddr::from([198, 18, 0, 100]), 80),
            proto: Proto::Tcp,
        };
        let mut udp = flow(9, 1, 0);
        udp.proto = Proto::Udp;
        let mut other_client = flow(7, 2, 0);
        other_client.client = SocketAddr::new(IpAddr::from([198, 18, 0, 11]), 7);
        let all = [flow(1, 1, 0), flow(2, 2, 0), udp, other_client];
        let run = |query: FlowQuery| {
            let mut c = Collector::new(&query);
            for f in all {
                c.offer(f);
            }
            c.finish()
        };
        let base = FlowQuery {
            limit: 10,
            ..FlowQuery::default()
        };
        let l = run(FlowQuery {
            service: Some(web),
            ..base.clone()
        });
        assert_eq!(l.matched, 3, "the UDP flow is another service");
        let l = run(FlowQuery {
            backends: Some(HashSet::from([2])),
            ..base.clone()
        });
        assert_eq!(l.matched, 2);
        let l = run(FlowQuery {
            client: Some(ClientFilter::parse("198.18.0.10").expect("ip")),
            ..base.clone()
        });
        assert_eq!(l.matched, 3);
        let l = run(FlowQuery {
            client: Some(ClientFilter::parse("198.18.0.10:2").expect("ip:port")),
            ..base.clone()
        });
        assert_eq!(l.matched, 1);
        let l = run(FlowQuery { limit: 0, ..base });
        assert_eq!(
            (l.flows.len(), l.matched, l.scanned),
            (0, 4, 4),
            "count only"
        );
    }

    #[test]
    fn client_filter_errors_say_what_is_accepted() {
        let e = ClientFilter::parse("198.18.0.x").expect_err("bad");
        assert!(e.contains("198.18.0.10:40000"), "{e}");
        assert!(ClientFilter::parse("198.18.0.10:99999").is_err());
    }

    #[test]
    fn renders_like_ipvsadm_with_a_count_of_the_rest() {
        let listing = FlowListing {
            flows: vec![flow(40000, 7, 65), {
                let mut f = flow(40001, 9, 3);
                f.closing = true;
                f
            }],
            matched: 5,
            scanned: 12,
        };
        let report = FlowsReport::new(
            listing,
            Duration::from_millis(3),
            |_| "web".into(),
            |id| (id == 7).then(|| "198.18.0.21".into()),
        );
        assert_eq!(report.flows[0].backend, "198.18.0.21");
        assert_eq!(report.flows[1].backend, "id 9");
        assert_eq!(report.flows[1].state, FlowStateName::Closing);
        let text = report.render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("PRO   CLIENT"), "{text}");
        assert!(
            lines[1]
                == "TCP   198.18.0.10:40000     198.18.0.100:80       198.18.0.21     open       01:05    13:55  web",
            "{text}"
        );
        assert_eq!(
            lines[3],
            "2 shown of 5 matching, 12 in the table (3 ms); 3 more not shown (--limit N shows more)"
        );
    }

    /// The JSON rows are read by scripts: their keys are pinned.
    #[test]
    fn json_schema_is_stable() {
        let report = FlowsReport::new(
            FlowListing {
                flows: vec![flow(1, 1, 1)],
                matched: 1,
                scanned: 1,
            },
            Duration::ZERO,
            |_| "web".into(),
            |_| Some("198.18.0.21".into()),
        );
        let v = serde_json::to_value(&report).expect("json");
        let keys = |v: &serde_json::Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(&v), ["flows", "matched", "took_ms", "total"]);
        assert_eq!(
            keys(&v["flows"][0]),
            [
                "backend",
                "client",
                "expires_s",
                "idle_s",
                "proto",
                "service",
                "state",
                "vip"
            ]
        );
        assert_eq!(v["flows"][0]["state"], "open");
        assert_eq!(v["flows"][0]["proto"], "tcp");
    }
}
