//! `lbctl top`: a live terminal view, refreshed every second, as `ipvsadm -L --rate` with
//! `top`'s feel: a header with the node (data path, VRRP, connection table, uptime), then every
//! service and its backends with state, weight, new connections/s, packets/s, bytes/s and active
//! flows. `q` (or Esc, Ctrl-C) quits and gives the terminal back as it was.
//!
//! The rates are the daemon's (sampled once a second, [`crate::rates`]), so two `lbctl top`
//! and the status page show the same figures. The drawing ([`draw`]) is a pure function of the
//! last status, so tests render it into a buffer; [`run`] is the thin terminal loop.

use std::time::{Duration, Instant};

use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Cell, Paragraph, Row, Table},
};

use crate::{model::BackendState, status::Status};

/// How often the view asks the daemon (its rates move once a second).
pub const REFRESH: Duration = Duration::from_secs(1);

/// What the view shows: the last status, or why there is none.
#[derive(Debug, Clone)]
pub struct View {
    /// The last status read.
    pub status: Option<Status>,
    /// The last error, shown in the header until a read succeeds.
    pub error: Option<String>,
    /// Local wall-clock time of the last read, `HH:MM:SS`.
    pub at: String,
}

/// A count per second, short: `950`, `12.3k`, `4.5M`.
pub fn rate(n: f64) -> String {
    for (d, p) in [(1e9, "G"), (1e6, "M"), (1e3, "k")] {
        if n >= d {
            return format!("{:.1}{p}", n / d);
        }
    }
    format!("{n:.0}")
}

fn uptime(s: u64) -> String {
    match (s / 86400, s % 86400 / 3600, s % 3600 / 60) {
        (0, 0, m) => format!("{m}m{:02}s", s % 60),
        (0, h, m) => format!("{h}h{m:02}m"),
        (d, h, _) => format!("{d}d{h:02}h"),
    }
}

fn state_style(state: BackendState) -> Style {
    let colour = match state {
        BackendState::Active => Color::Green,
        BackendState::Draining => Color::Yellow,
        BackendState::Down => Color::Red,
        BackendState::Maintenance => Color::Magenta,
        BackendState::Removed => Color::DarkGray,
        BackendState::Unresolved => Color::LightYellow,
    };
    Style::default().fg(colour)
}

/// The header lines: the node, then the help.
fn header(view: &View) -> Vec<Line<'static>> {
    let mut first = vec![Span::styled(
        "lbd",
        Style::default().add_modifier(Modifier::BOLD),
    )];
    if let Some(s) = &view.status {
        let fill = if s.conntrack_max > 0 {
            100.0 * s.conntrack_entries as f64 / f64::from(s.conntrack_max)
        } else {
            0.0
        };
        first.push(Span::raw(format!(
            " {}  {}  {}",
            s.interface, s.datapath, view.at
        )));
        let vrrp = match (&s.vrrp, &s.vrrp6) {
            (Some(v), _) | (None, Some(v)) if v.resigned => {
                format!("VRRP {} prio {} resigned", v.state, v.priority)
            }
            // Both families' routers: one state when they agree, both when not.
            (Some(v), Some(v6)) if v6.state != v.state => {
                format!("VRRP {} (IPv6 {}) prio {}", v.state, v6.state, v.priority)
            }
            (Some(v), _) | (None, Some(v)) => format!("VRRP {} prio {}", v.state, v.priority),
            (None, None) => "no VRRP".to_string(),
        };
        let second = Line::from(format!(
            "{vrrp}  table {}/{} ({fill:.1}%)  up {}",
            rate(s.conntrack_entries as f64),
            rate(f64::from(s.conntrack_max)),
            uptime(s.uptime_s)
        ));
        let mut lines = vec![Line::from(first), second];
        if let Some(e) = &view.error {
            lines.push(Line::styled(
                format!("stale: {e}"),
                Style::default().fg(Color::Red),
            ));
        }
        return lines;
    }
    first.push(Span::raw(format!("  {}", view.at)));
    vec![
        Line::from(first),
        Line::styled(
            view.error.clone().unwrap_or_else(|| "connecting…".into()),
            Style::default().fg(Color::Red),
        ),
    ]
}

/// The table rows: each service, then its backends indented.
fn rows(s: &Status) -> Vec<Row<'static>> {
    let mut out = Vec::new();
    for svc in &s.services {
        let flows: u64 = svc.backends.iter().map(|b| b.flows).sum();
        let in_rotation = svc
            .backends
            .iter()
            .filter(|b| b.state == BackendState::Active)
            .count();
        out.push(
            Row::new(vec![
                Cell::from(format!("{} {}", svc.name, svc.vip)),
                Cell::from(format!("{}/{}", in_rotation, svc.backends.len())),
                Cell::from(svc.proto.to_string()),
                Cell::from(rate(svc.rates.new_flows_per_s)),
                Cell::from(rate(svc.rates.packets_per_s)),
                Cell::from(rate(svc.rates.bytes_per_s)),
                Cell::from(flows.to_string()),
            ])
            .style(Style::default().add_modifier(Modifier::BOLD)),
        );
        for b in &svc.backends {
            out.push(Row::new(vec![
                Cell::from(format!("  {}", b.addr)),
                Cell::from(Span::styled(b.state.as_str(), state_style(b.state))),
                Cell::from(b.weight.to_string()),
                Cell::from(rate(b.rates.new_flows_per_s)),
                Cell::from(rate(b.rates.packets_per_s)),
                Cell::from(rate(b.rates.bytes_per_s)),
                Cell::from(b.flows.to_string()),
            ]));
        }
    }
    out
}

/// Draws the view into a frame (any size; 80 columns is the design width).
pub fn draw(frame: &mut Frame<'_>, view: &View) {
    let head = header(view);
    let [top, body, foot] = Layout::vertical([
        Constraint::Length(head.len() as u16),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(head), top);
    if let Some(s) = &view.status {
        let widths = [
            Constraint::Min(22),
            Constraint::Length(11),
            Constraint::Length(5),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
        ];
        let table = Table::new(rows(s), widths)
            .header(
                Row::new([
                    "SERVICE/BACKEND",
                    "STATE",
                    "W",
                    "CONN/S",
                    "PKT/S",
                    "BYTES/S",
                    "FLOWS",
                ])
                .style(Style::default().add_modifier(Modifier::REVERSED)),
            )
            .column_spacing(1);
        frame.render_widget(table, body);
    }
    frame.render_widget(
        Paragraph::new("q quit   refreshes every second")
            .style(Style::default().fg(Color::DarkGray)),
        foot,
    );
}

/// Runs the view until `q`, Esc or Ctrl-C: reads with `fetch` every [`REFRESH`], draws, and
/// gives the terminal back as it found it (also on an error or a panic).
pub fn run(mut fetch: impl FnMut() -> Result<Status, String>) -> std::io::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let result = (|| -> std::io::Result<()> {
        let mut view = View {
            status: None,
            error: None,
            at: String::new(),
        };
        loop {
            match fetch() {
                Ok(s) => {
                    view.status = Some(s);
                    view.error = None;
                }
                Err(e) => view.error = Some(e),
            }
            view.at = clock();
            terminal.draw(|f| draw(f, &view))?;
            let next = Instant::now() + REFRESH;
            loop {
                let left = next.saturating_duration_since(Instant::now());
                if left.is_zero() || !event::poll(left)? {
                    break;
                }
                match event::read()? {
                    Event::Key(k) if k.kind == KeyEventKind::Press => {
                        let ctrl_c = k.modifiers.contains(KeyModifiers::CONTROL)
                            && k.code == KeyCode::Char('c');
                        if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                            return Ok(());
                        }
                    }
                    // A resize redraws at once.
                    Event::Resize(..) => terminal.draw(|f| draw(f, &view)).map(drop)?,
                    _ => {}
                }
            }
        }
    })();
    ratatui::try_restore()?;
    result
}

/// The local time of day, `HH:MM:SS`, from the C library (the terminal's user's time zone).
fn clock() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let t = libc::time_t::try_from(now).unwrap_or(0);
    // SAFETY: `localtime_r` writes only into `tm`, which lives for the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return String::new();
    }
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::{
        config::{Proto, Scheduler},
        datapath::DatapathMode,
        engine::Source,
        rates::Rates,
        status::{BackendStatus, ServiceStatus},
    };

    fn backend(addr: &str, state: BackendState, pps: f64) -> BackendStatus {
        BackendStatus {
            addr: addr.into(),
            weight: 1,
            state,
            source: Source::Config,
            overrides: Vec::new(),
            mac: None,
            packets: 0,
            bytes: 0,
            new_flows: 0,
            rates: Rates {
                new_flows_per_s: pps / 10.0,
                packets_per_s: pps,
                bytes_per_s: pps * 1000.0,
            },
            history_pps: Vec::new(),
            flows: 7,
            closing_flows: 0,
            health: None,
        }
    }

    fn status() -> Status {
        Status {
            version: "0.1.0".into(),
            config_path: String::new(),
            state_file: String::new(),
            interface: "eth0".into(),
            datapath: DatapathMode::XdpNative,
            datapath_reason: String::new(),
            datapath_setting: "auto".into(),
            uptime_s: 3725,
            config_loaded_unix: 0,
            config_reloads: 0,
            config_reload_failures: 0,
            conntrack_entries: 1500,
            conntrack_max: 262_144,
            reasons: Vec::new(),
            flood_guard: Default::default(),
            services: vec![ServiceStatus {
                name: "web".into(),
                vip: "198.18.0.100:80".into(),
                proto: Proto::Tcp,
                scheduler: Scheduler::Maglev,
                packets: 0,
                bytes: 0,
                new_flows: 0,
                rates: Rates {
                    new_flows_per_s: 123.0,
                    packets_per_s: 45_600.0,
                    bytes_per_s: 7_800_000.0,
                },
                backends: vec![
                    backend("198.18.0.21", BackendState::Active, 20_000.0),
                    backend("198.18.0.22", BackendState::Draining, 5.0),
                ],
            }],
            vrrp: None,
            vrrp6: None,
            announce: None,
        }
    }

    fn screen(view: &View, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).expect("terminal");
        t.draw(|f| draw(f, view)).expect("draw");
        let buf = t.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
                    .trim_end()
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn shows_services_backends_and_rates_in_80_columns() {
        let view = View {
            status: Some(status()),
            error: None,
            at: "12:00:00".into(),
        };
        let text = screen(&view, 80, 24);
        for want in [
            "lbd eth0  xdp-native  12:00:00",
            "no VRRP  table 1.5k/262.1k (0.6%)  up 1h02m",
            "SERVICE/BACKEND",
            "web 198.18.0.100:80",
            "198.18.0.21",
            "draining",
            "45.6k",
            "7.8M",
            "q quit",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        let row = text
            .lines()
            .find(|l| l.contains("198.18.0.21"))
            .expect("b1 row");
        assert!(
            row.contains("active") && row.contains("2.0k") && row.ends_with('7'),
            "{row}"
        );
        assert!(text.lines().all(|l| l.chars().count() <= 80));
    }

    #[test]
    fn an_unreachable_daemon_is_said_and_a_stale_view_marked() {
        let view = View {
            status: None,
            error: Some("lbd is not running".into()),
            at: String::new(),
        };
        assert!(screen(&view, 80, 10).contains("lbd is not running"));
        let view = View {
            status: Some(status()),
            error: Some("timed out".into()),
            at: String::new(),
        };
        assert!(screen(&view, 80, 10).contains("stale: timed out"));
    }

    #[test]
    fn rates_are_short() {
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(999.4), "999");
        assert_eq!(rate(1234.0), "1.2k");
        assert_eq!(rate(5_600_000.0), "5.6M");
        assert_eq!(rate(2.5e9), "2.5G");
    }
}
