//! The lbd config as converted, and its TOML text: `[daemon]`, `[vrrp]`, `[[service]]` with the
//! comments that say where each part came from and what did not carry over.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
};

/// The converted config.
#[derive(Debug, Default)]
pub(crate) struct LbdConfig {
    /// Name of the keepalived file converted.
    pub source: String,
    /// Comments that belong to no section: global settings, what was not converted at all.
    pub global: Vec<String>,
    /// `daemon.interface`.
    pub interface: String,
    /// Comments of `[daemon]`.
    pub daemon_comments: Vec<String>,
    /// `[vrrp]`.
    pub vrrp: Option<Vrrp>,
    /// `[[service]]`.
    pub services: Vec<Service>,
}

/// `[vrrp]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Vrrp {
    pub comments: Vec<String>,
    pub vrid: u8,
    pub priority: u8,
    pub advert_interval_ms: Option<u64>,
    pub preempt: Option<bool>,
    pub preempt_delay_ms: Option<u64>,
    pub interface: Option<String>,
    /// The VIPs, of one family or (from two merged instances) both: lbd runs one virtual
    /// router per family.
    pub vips: Vec<IpAddr>,
    pub unicast_peers: Vec<IpAddr>,
    pub notify: Option<String>,
    pub track_interfaces: Vec<(String, u8)>,
}

/// `[[service]]`.
#[derive(Debug, Clone)]
pub(crate) struct Service {
    pub comments: Vec<String>,
    /// `198.18.0.100:80` or `[2001:db8::100]:80`.
    pub vip: SocketAddr,
    pub udp: bool,
    pub scheduler: &'static str,
    /// Of the VIP's family.
    pub backends: Vec<(IpAddr, u32)>,
    pub health: Option<Health>,
}

/// `health = { .. }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Health {
    /// `None`: kind "tcp"; otherwise kind "http" with this path and status.
    pub http: Option<(String, u16)>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
}

impl LbdConfig {
    /// The TOML text.
    pub(crate) fn to_toml(&self) -> String {
        let mut out = String::new();
        comment(
            &mut out,
            &format!(
                "lbd config converted by lb-import from the keepalived configuration {}.",
                self.source
            ),
        );
        comment(
            &mut out,
            "Lines \"keepalived FILE:LINE: ...\" say where a part came from, how it was mapped, and what was not converted.",
        );
        if !self.global.is_empty() {
            out.push('\n');
            for c in &self.global {
                comment(&mut out, c);
            }
        }

        out.push_str("\n[daemon]\n");
        for c in &self.daemon_comments {
            comment(&mut out, c);
        }
        let _ = writeln!(out, "interface = {}", string(&self.interface));

        if let Some(v) = &self.vrrp {
            out.push_str("\n[vrrp]\n");
            for c in &v.comments {
                comment(&mut out, c);
            }
            let _ = writeln!(out, "vrid = {}", v.vrid);
            let _ = writeln!(out, "priority = {}", v.priority);
            if let Some(ms) = v.advert_interval_ms {
                let _ = writeln!(out, "advert_interval_ms = {ms}");
            }
            if let Some(p) = v.preempt {
                let _ = writeln!(out, "preempt = {p}");
            }
            if let Some(ms) = v.preempt_delay_ms {
                let _ = writeln!(out, "preempt_delay_ms = {ms}");
            }
            if let Some(i) = &v.interface {
                let _ = writeln!(out, "interface = {}", string(i));
            }
            let _ = writeln!(out, "vips = {}", addr_list(&v.vips));
            if !v.unicast_peers.is_empty() {
                let _ = writeln!(out, "unicast_peers = {}", addr_list(&v.unicast_peers));
            }
            if let Some(n) = &v.notify {
                let _ = writeln!(out, "notify = {}", string(n));
            }
            if !v.track_interfaces.is_empty() {
                let items: Vec<String> = v
                    .track_interfaces
                    .iter()
                    .map(|(name, w)| format!("{} = {w}", key(name)))
                    .collect();
                let _ = writeln!(out, "track_interfaces = {{ {} }}", items.join(", "));
            }
        }

        for s in &self.services {
            out.push_str("\n[[service]]\n");
            for c in &s.comments {
                comment(&mut out, c);
            }
            let _ = writeln!(out, "vip = {}", string(&s.vip.to_string()));
            let _ = writeln!(out, "proto = {}", if s.udp { "\"udp\"" } else { "\"tcp\"" });
            let _ = writeln!(out, "scheduler = {}", string(s.scheduler));
            if let Some(h) = &s.health {
                let mut items = Vec::new();
                match &h.http {
                    None => items.push("kind = \"tcp\"".to_owned()),
                    Some((path, status)) => {
                        items.push("kind = \"http\"".to_owned());
                        items.push(format!("path = {}", string(path)));
                        items.push(format!("expect_status = {status}"));
                    }
                }
                items.push(format!("interval_ms = {}", h.interval_ms));
                items.push(format!("timeout_ms = {}", h.timeout_ms));
                items.push(format!("rise = {}", h.rise));
                items.push(format!("fall = {}", h.fall));
                let _ = writeln!(out, "health = {{ {} }}", items.join(", "));
            }
            if s.backends.is_empty() {
                out.push_str("backends = []\n");
            } else {
                out.push_str("backends = [\n");
                for (addr, weight) in &s.backends {
                    let _ = writeln!(
                        out,
                        "    {{ addr = {}, weight = {weight} }},",
                        string(&addr.to_string())
                    );
                }
                out.push_str("]\n");
            }
        }
        out
    }
}

/// Appends `# text`: one line, with anything TOML does not allow in a comment (control
/// characters other than tab) written as `\u{..}`.
fn comment(out: &mut String, text: &str) {
    out.push_str("# ");
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out.push('\n');
}

/// A TOML basic string.
pub(crate) fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML key: bare when it can be, quoted otherwise.
fn key(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        s.to_owned()
    } else {
        string(s)
    }
}

fn addr_list(addrs: &[IpAddr]) -> String {
    let items: Vec<String> = addrs.iter().map(|a| string(&a.to_string())).collect();
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_keys_and_comments_are_escaped() {
        assert_eq!(string("a\"b\\c\u{1}"), r#""a\"b\\c\u0001""#);
        assert_eq!(key("eth0"), "eth0");
        assert_eq!(key("eth0.1"), "\"eth0.1\"");
        let mut out = String::new();
        comment(&mut out, "a\nb\tc\u{7f}");
        assert_eq!(out, "# a\\u{a}b\tc\\u{7f}\n");
    }
}
