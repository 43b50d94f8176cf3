//! Generated keepalived configurations, valid and not, mixed from values at and beyond lbd's
//! limits, of both address families: whatever lb-import converts must load through lbd's own
//! config parser.

use std::path::Path;

use lb_daemon::config::Config;
use lb_import::{Options, import_str};
use proptest::prelude::*;

fn pick(values: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
    proptest::sample::select(values)
}

fn instance() -> impl Strategy<Value = String> {
    (
        pick(&["0", "1", "51", "255", "256", "x"]),
        pick(&["0", "1", "100", "254", "255", "300"]),
        pick(&["0.001", "0.005", "0.123", "1", "40.95", "41"]),
        pick(&["0", "1.5", "3600", "3601"]),
        pick(&["eth0", "bond0.1", "a-very-long-interface", "\"with space\"", "eth1"]),
        proptest::collection::vec(
            pick(&["10.0.0.100", "10.0.0.100", "224.0.0.1", "0.0.0.0", "fe80::1", "10.0.0.2/24 dev eth9 label x scope link", "10.0.0.3",
                   "2001:db8::100", "2001:db8::100/64 dev eth1", "::ffff:10.0.0.9", "ff02::1"]),
            0..5,
        ),
        proptest::collection::vec(pick(&["10.0.0.4", "10.0.0.4", "fe80::4", "10.0.0.5 min_ttl 3", "2001:db8::4"]), 0..3),
        proptest::collection::vec(pick(&["eth1", "eth1 weight 254", "eth2 weight -254", "eth3 weight 200", "eth4 weight 0", "eth5 weight 9 reverse"]), 0..4),
        pick(&["", "notify /bin/n", "notify \"/bin/n a\"", "version 3", "version 2", "nopreempt"]),
    )
        .prop_map(|(vrid, prio, advert, delay, ifname, vips, peers, tracks, extra)| {
            format!(
                "vrrp_instance V {{\n virtual_router_id {vrid}\n priority {prio}\n advert_int {advert}\n preempt_delay {delay}\n \
                 interface {ifname}\n virtual_ipaddress {{\n{}\n }}\n unicast_peer {{\n{}\n }}\n track_interface {{\n{}\n }}\n {extra}\n}}\n",
                vips.join("\n"),
                peers.join("\n"),
                tracks.join("\n")
            )
        })
}

fn real_server() -> impl Strategy<Value = String> {
    (
        pick(&["10.0.0.21", "10.0.0.21", "10.0.0.22", "127.0.0.1", "fe80::21", "10.0.0.23", "2001:db8::21", "2001:db8::22", "::1", "::ffff:10.0.0.21"]),
        pick(&["80", "8080", "0", ""]),
        pick(&["0", "1", "1000", "1001", "99999"]),
        pick(&["TCP_CHECK", "HTTP_GET", "SSL_GET", "MISC_CHECK", ""]),
        pick(&["0", "0.01", "6", "3600", "3601"]),
        pick(&["0", "0.001", "3", "10"]),
        pick(&["0", "1", "99", "100", "1000"]),
        pick(&["/", "x", "\"/a b\"", "/ok"]),
        pick(&["200", "99", "600", "200-299", "204"]),
        pick(&["", "connect_port 80", "connect_port 81", "lvs_method NAT"]),
    )
        .prop_map(|(addr, port, weight, check, delay, timeout, retry, path, status, extra)| {
            let check = if check.is_empty() {
                String::new()
            } else {
                format!(
                    " {check} {{\n delay_loop {delay}\n connect_timeout {timeout}\n retry {retry}\n {extra}\n \
                     url {{\n path {path}\n status_code {status}\n }}\n }}\n"
                )
            };
            format!(" real_server {addr} {port} {{\n weight {weight}\n{check} }}\n")
        })
}

fn virtual_server() -> impl Strategy<Value = String> {
    (
        pick(&["10.0.0.100", "10.0.0.100", "255.255.255.255", "2001:db8::1", "10.0.0.101", "2001:db8::100", "fe80::100", "::ffff:10.0.0.100"]),
        pick(&["80", "0", "65536", "443"]),
        pick(&["TCP", "UDP", "SCTP"]),
        pick(&["DR", "DR", "NAT", "TUN", "bogus"]),
        pick(&["rr", "wrr", "lc", "wlc", "sh", "mh", "dh", "fo", "x"]),
        pick(&["", "persistence_timeout 50", "sh-port", "sorry_server 10.0.0.9 80"]),
        proptest::collection::vec(real_server(), 0..5),
    )
        .prop_map(|(ip, port, proto, kind, algo, extra, servers)| {
            format!(
                "virtual_server {ip} {port} {{\n protocol {proto}\n lb_kind {kind}\n lb_algo {algo}\n {extra}\n{}}}\n",
                servers.concat()
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn converted_configs_load_in_lbd(
        global in pick(&["", "global_defs {\n vrrp_version 3\n}\n", "global_defs {\n router_id r\n}\n"]),
        instances in proptest::collection::vec(instance(), 0..3),
        servers in proptest::collection::vec(virtual_server(), 0..5),
    ) {
        let text = format!("{global}{}{}", instances.concat(), servers.concat());
        match import_str(&text, Path::new("gen.conf"), &Options::default()) {
            Ok(import) => {
                if let Err(e) = Config::parse(&import.toml) {
                    panic!("lbd rejects the output: {e}\n--- keepalived\n{text}\n--- lbd\n{}", import.toml);
                }
            }
            Err(e) => {
                let ok = matches!(e, lb_import::ImportError::NothingToConvert { .. });
                prop_assert!(ok, "{e}\n{text}");
            }
        }
    }
}
