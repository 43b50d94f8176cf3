//! lb-import against keepalived's own sample configurations and documentation examples
//! (tests/fixtures/keepalived, see tests/fixtures/README.md) and lb-import's own fixtures.
//!
//! Each fixture either converts, and then its TOML must equal the golden file
//! `expected/NAME.toml`, load through lbd's own config parser, and give the warnings in
//! `expected/NAME.warnings`; or it is refused, with the error and warnings in
//! `expected/NAME.error`. `UPDATE_EXPECT=1 cargo test -p lb-import` rewrites the golden files.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use lb_daemon::config::Config;
use lb_import::{Import, ImportError, Options, import_file, import_str, import_str_with_files};

const FIXTURES: &str = "tests/fixtures/keepalived";
const EXPECTED: &str = "tests/fixtures/expected";

#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// Converts into a config with this many services and, when true, a `[vrrp]` section.
    Converts { services: usize, vrrp: bool },
    /// Refused: nothing to convert, and the error says this.
    NothingToConvert(&'static str),
}

use Outcome::{Converts, NothingToConvert};

/// Every fixture (entry file) and what it gives.
const TABLE: &[(&str, Outcome)] = &[
    // keepalived's doc/samples.
    (
        "keepalived.conf.HTTP_GET.port",
        NothingToConvert("lb_kind NAT"),
    ),
    // IPv6, but NAT.
    ("keepalived.conf.IPv6", NothingToConvert("lb_kind NAT")),
    (
        "keepalived.conf.PING_CHECK",
        NothingToConvert("lb_kind NAT"),
    ),
    (
        "keepalived.conf.SMTP_CHECK",
        NothingToConvert("lb_kind NAT"),
    ),
    (
        "keepalived.conf.SSL_GET",
        Converts {
            services: 0,
            vrrp: true,
        },
    ),
    ("keepalived.conf.UDP_CHECK", NothingToConvert("lb_kind NAT")),
    (
        "keepalived.conf.conditional_conf",
        Converts {
            services: 0,
            vrrp: true,
        },
    ),
    ("keepalived.conf.fwmark", NothingToConvert("firewall mark")),
    ("keepalived.conf.inhibit", NothingToConvert("lb_kind NAT")),
    (
        "keepalived.conf.misc_check",
        NothingToConvert("lb_kind NAT"),
    ),
    (
        "keepalived.conf.misc_check_arg",
        NothingToConvert("lb_kind NAT"),
    ),
    ("keepalived.conf.quorum", NothingToConvert("lb_kind NAT")),
    (
        "keepalived.conf.sample",
        Converts {
            services: 0,
            vrrp: true,
        },
    ),
    (
        "keepalived.conf.status_code",
        NothingToConvert("lb_kind NAT"),
    ),
    (
        "keepalived.conf.track_interface",
        Converts {
            services: 0,
            vrrp: true,
        },
    ),
    (
        "keepalived.conf.virtual_server_group",
        NothingToConvert("virtual_server_group"),
    ),
    (
        "keepalived.conf.virtualhost",
        NothingToConvert("lb_kind NAT"),
    ),
    (
        "keepalived.conf.vrrp",
        Converts {
            services: 0,
            vrrp: true,
        },
    ),
    (
        "keepalived.conf.vrrp.localcheck",
        Converts {
            services: 0,
            vrrp: true,
        },
    ),
    (
        "keepalived.conf.vrrp.lvs_syncd",
        Converts {
            services: 0,
            vrrp: true,
        },
    ),
    (
        "keepalived.conf.vrrp.routes",
        Converts {
            services: 0,
            vrrp: true,
        },
    ),
    (
        "keepalived.conf.vrrp.rules",
        Converts {
            services: 0,
            vrrp: true,
        },
    ),
    (
        "keepalived.conf.vrrp.scripts",
        Converts {
            services: 0,
            vrrp: true,
        },
    ),
    (
        "keepalived.conf.vrrp.static_ipaddress",
        Converts {
            services: 0,
            vrrp: true,
        },
    ),
    (
        "keepalived.conf.vrrp.sync",
        Converts {
            services: 0,
            vrrp: true,
        },
    ),
    // keepalived/etc/keepalived/keepalived.conf and docker/keepalived.conf.
    (
        "keepalived.conf",
        Converts {
            services: 0,
            vrrp: true,
        },
    ),
    (
        "docker-keepalived.conf",
        Converts {
            services: 0,
            vrrp: true,
        },
    ),
    // The examples of keepalived's user guide.
    (
        "case-study-failover.conf",
        Converts {
            services: 0,
            vrrp: true,
        },
    ),
    (
        "case-study-healthcheck.conf",
        NothingToConvert("lb_kind NAT"),
    ),
    (
        "case-study-healthcheck-ssl.conf",
        NothingToConvert("lb_kind NAT"),
    ),
    (
        "case-study-mixing.conf",
        Converts {
            services: 0,
            vrrp: true,
        },
    ),
    (
        "quick-start-vrrp.conf",
        Converts {
            services: 0,
            vrrp: true,
        },
    ),
    ("quick-start-lvs.conf", NothingToConvert("lb_kind NAT")),
    // lb-import's own.
    (
        "lbimport-dr.conf",
        Converts {
            services: 4,
            vrrp: true,
        },
    ),
    (
        "lbimport-mixed.conf",
        Converts {
            services: 2,
            vrrp: true,
        },
    ),
    (
        "lbimport-include/main.conf",
        Converts {
            services: 2,
            vrrp: true,
        },
    ),
    (
        "lbimport-ipv6.conf",
        Converts {
            services: 2,
            vrrp: true,
        },
    ),
    (
        "lbimport-dual-stack.conf",
        Converts {
            services: 2,
            vrrp: true,
        },
    ),
    (
        "lbimport-dual-stack-differ.conf",
        Converts {
            services: 3,
            vrrp: true,
        },
    ),
];

fn update() -> bool {
    std::env::var("UPDATE_EXPECT").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Compares `got` with the golden file, or writes it with UPDATE_EXPECT.
fn golden(name: &str, got: &str) {
    let path = Path::new(EXPECTED).join(name);
    if update() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_EXPECT=1 to create it)",
            path.display()
        )
    });
    assert!(
        got == want,
        "{} differs (UPDATE_EXPECT=1 rewrites it)\n--- want\n{want}\n--- got\n{got}",
        path.display()
    );
}

fn golden_name(fixture: &str) -> String {
    fixture.replace('/', "__")
}

fn warning_lines(warnings: &[lb_import::Warning]) -> String {
    warnings.iter().map(|w| format!("{w}\n")).collect()
}

/// lbd's own loader accepts the TOML; the services and [vrrp] are the ones expected.
fn check_loads(fixture: &str, import: &Import, services: usize, vrrp: bool) -> Config {
    let config = Config::parse(&import.toml).unwrap_or_else(|e| {
        panic!(
            "{fixture}: lbd rejects the converted config: {e}\n{}",
            import.toml
        )
    });
    assert_eq!(config.services.len(), services, "{fixture}: services");
    assert_eq!(!config.vrrp.is_empty(), vrrp, "{fixture}: [vrrp]");
    config
}

#[test]
fn fixtures() {
    let mut seen = Vec::new();
    let mut failures = Vec::new();
    for (fixture, outcome) in TABLE {
        seen.push(*fixture);
        let path = Path::new(FIXTURES).join(fixture);
        let name = golden_name(fixture);
        let result = import_file(&path, &Options::default());
        match (*outcome, result) {
            (Converts { services, vrrp }, Ok(import)) => {
                check_loads(fixture, &import, services, vrrp);
                // Every warning is also a comment of the TOML.
                for w in &import.warnings {
                    assert!(
                        import.toml.contains(&format!("# keepalived {w}")),
                        "{fixture}: warning not in the TOML: {w}"
                    );
                }
                golden(&format!("{name}.toml"), &import.toml);
                golden(
                    &format!("{name}.warnings"),
                    &warning_lines(&import.warnings),
                );
            }
            (NothingToConvert(why), Err(e @ ImportError::NothingToConvert { .. })) => {
                let text = e.to_string();
                assert!(text.contains(why), "{fixture}: {text}");
                let ImportError::NothingToConvert { warnings, .. } = &e else {
                    unreachable!()
                };
                assert!(!warnings.is_empty(), "{fixture}: a refusal names why");
                golden(
                    &format!("{name}.error"),
                    &format!("{text}\n{}", warning_lines(warnings)),
                );
            }
            (outcome, result) => {
                failures.push(format!("{fixture}: expected {outcome:?}, got {result:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every keepalived fixture file is in the table (included files are reached through theirs).
    for entry in std::fs::read_dir(FIXTURES).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            let name = entry.file_name().into_string().unwrap();
            assert!(
                seen.contains(&name.as_str()),
                "{name} is not in the fixture table"
            );
        }
    }
}

#[test]
fn converted_values_reach_lbd() {
    let import = import_file(
        &Path::new(FIXTURES).join("lbimport-dr.conf"),
        &Options::default(),
    )
    .unwrap();
    let c = check_loads("lbimport-dr.conf", &import, 4, true);
    assert_eq!(c.daemon.interface, "eth0");
    let v = c.vrrp.into_iter().next().unwrap();
    assert_eq!((v.vrid.get(), v.priority.get()), (51, 150));
    assert_eq!(v.advert_interval.millis(), 500);
    assert_eq!(v.preempt_delay, std::time::Duration::from_secs(5));
    assert_eq!(
        v.unicast_peers,
        ["198.18.0.3".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert_eq!(
        v.notify.as_deref(),
        Some(Path::new("/usr/local/bin/lb-notify"))
    );
    assert_eq!(v.tracked.len(), 1);
    assert_eq!(
        (v.tracked[0].name.as_str(), v.tracked[0].weight),
        ("interface:eth1", 30)
    );

    let web = &c.services[0];
    assert_eq!(web.vip.to_string(), "198.18.0.100:80");
    assert_eq!(web.scheduler.as_str(), "maglev");
    let weights: Vec<u32> = web.backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, [3, 1]);
    let h = web.health.as_ref().unwrap();
    assert_eq!(h.kind.to_string(), "http GET /healthz expecting 200");
    assert_eq!(h.interval, std::time::Duration::from_secs(2));
    assert_eq!(h.timeout, std::time::Duration::from_secs(1));
    assert_eq!((h.rise, h.fall), (1, 3));

    assert_eq!(c.services[1].scheduler.as_str(), "sh", "persistence → sh");
    assert_eq!(c.services[2].scheduler.as_str(), "sh", "mh → sh");
    let h = c.services[2].health.as_ref().unwrap();
    assert_eq!(h.interval, std::time::Duration::from_millis(500));
    assert_eq!(h.timeout, std::time::Duration::from_millis(250));
    assert_eq!(h.fall, 1);
    let dns = &c.services[3];
    assert_eq!(dns.proto.to_string(), "udp");
    assert!(dns.health.is_none());
    assert!(
        import
            .warnings
            .iter()
            .all(|w| !w.message.contains("lb_algo")),
        "rr/wrr/sh/mh map without warnings: {:?}",
        import.warnings
    );
}

#[test]
fn strict_fails_on_the_first_warning() {
    let path = Path::new(FIXTURES).join("lbimport-dr.conf");
    let lenient = import_file(&path, &Options::default()).unwrap();
    let first = lenient.warnings.first().expect("the fixture has warnings");
    match import_file(&path, &Options { strict: true }) {
        Err(ImportError::Unsupported {
            file,
            line,
            message,
        }) => {
            assert_eq!(
                (&file, line, &message),
                (&first.file, first.line, &first.message)
            );
            assert_eq!(line, 5, "router_id in global_defs");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    // A configuration that converts exactly passes strict.
    let clean = "global_defs {\n vrrp_version 3\n}\nvrrp_instance V {\n interface eth1\n virtual_router_id 9\n priority 120\n \
                 virtual_ipaddress {\n 198.18.0.100\n }\n}\nvirtual_server 198.18.0.100 80 {\n lb_kind DR\n lb_algo sh\n \
                 delay_loop 3\n real_server 198.18.0.21 80 {\n TCP_CHECK {\n connect_timeout 1\n retry 2\n }\n }\n}\n";
    let import = import_str(clean, Path::new("clean.conf"), &Options { strict: true }).unwrap();
    assert!(import.warnings.is_empty(), "{:?}", import.warnings);
    check_loads("clean.conf", &import, 1, true);
}

#[test]
fn includes_follow_globs_and_relative_paths() {
    let import = import_file(
        &Path::new(FIXTURES).join("lbimport-include/main.conf"),
        &Options::default(),
    )
    .unwrap();
    let c = check_loads("main.conf", &import, 2, true);
    // conf.d/*.conf in sorted order: 10-web before 20-api; .hidden.conf and notes.txt not read.
    let vips: Vec<String> = c.services.iter().map(|s| s.vip.to_string()).collect();
    assert_eq!(vips, ["198.18.1.100:80", "198.18.1.101:8080"]);
    assert_eq!(
        c.services[0].backends.len(),
        2,
        "backends from common/backends.conf"
    );
    assert_eq!(c.vrrp[0].vips.len(), 2, "VIPs from common/vips.conf");
    // The include that matches nothing is reported where it stands.
    let missing = import
        .warnings
        .iter()
        .find(|w| w.message.contains("matches no file"))
        .expect("a warning for the include without match");
    assert_eq!(
        (missing.file.as_path(), missing.line),
        (
            Path::new("tests/fixtures/keepalived/lbimport-include/main.conf"),
            8
        )
    );
    // Warnings in included files name them.
    assert!(
        import
            .toml
            .contains("lbimport-include/conf.d/../common/backends.conf:2: HTTP_GET → health"),
        "{}",
        import.toml
    );
    // import_str resolves includes relative to the name's directory.
    let text =
        std::fs::read_to_string(Path::new(FIXTURES).join("lbimport-include/main.conf")).unwrap();
    let again = import_str(
        &text,
        &Path::new(FIXTURES).join("lbimport-include/main.conf"),
        &Options::default(),
    )
    .unwrap();
    assert_eq!(again, import);
}

#[test]
fn include_loops_and_depth_are_errors() {
    let e = import_file(
        &Path::new(FIXTURES).join("lbimport-include-loop/a.conf"),
        &Options::default(),
    )
    .unwrap_err();
    assert!(matches!(e, ImportError::Include { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.starts_with("tests/fixtures/keepalived/lbimport-include-loop/b.conf:7: include loop"),
        "{text}"
    );

    // A file including itself through a different spelling of its path, in memory.
    let files = BTreeMap::from([(
        PathBuf::from("k/x.conf"),
        "include ../k/./x.conf\n".to_owned(),
    )]);
    let e = import_str_with_files(
        "include x.conf\n",
        Path::new("k/main.conf"),
        &files,
        &Options::default(),
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("k/x.conf:1: include loop"), "{e}");

    // A chain deeper than the limit.
    let files: BTreeMap<PathBuf, String> = (0..40)
        .map(|i| {
            (
                PathBuf::from(format!("d/{i}.conf")),
                format!("include {}.conf\n", i + 1),
            )
        })
        .collect();
    let e = import_str_with_files(
        "include 0.conf\n",
        Path::new("d/main.conf"),
        &files,
        &Options::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("nest deeper than 16"), "{e}");
}

#[test]
fn syntax_errors_name_file_and_line() {
    let cases = [
        (
            "vrrp_instance V {\n  virtual_router_id 1\n",
            "k.conf:1: '{' is never closed",
        ),
        (
            "vrrp_instance V {\n}\n}\n",
            "k.conf:3: '}' without a matching '{'",
        ),
        (
            "global_defs {\n router_id \"LB 1\n}\n",
            "k.conf:2: unterminated quoted string",
        ),
    ];
    for (text, want) in cases {
        let e = import_str(text, Path::new("k.conf"), &Options::default()).unwrap_err();
        assert!(matches!(e, ImportError::Syntax { .. }), "{e:?}");
        assert!(e.to_string().starts_with(want), "{text:?}: {e}");
    }
    // In an included file, the included file and its line.
    let files = BTreeMap::from([(
        PathBuf::from("etc/bad.conf"),
        "\n\nreal_server 1.2.3.4 80 {\n".to_owned(),
    )]);
    let e = import_str_with_files(
        "virtual_server 198.18.0.100 80 {\n include bad.conf\n",
        Path::new("etc/k.conf"),
        &files,
        &Options::default(),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("etc/bad.conf:3: '{' is never closed"),
        "{e}"
    );
}

fn ip(text: &str) -> std::net::IpAddr {
    text.parse().unwrap()
}

fn vip_texts(c: &Config) -> Vec<String> {
    c.services.iter().map(|s| s.vip.to_string()).collect()
}

#[test]
fn ipv6_direct_routing_converts() {
    let import = import_file(
        &Path::new(FIXTURES).join("lbimport-ipv6.conf"),
        &Options::default(),
    )
    .unwrap();
    assert!(
        import.toml.contains("vip = \"[2001:db8::100]:80\""),
        "{}",
        import.toml
    );
    let c = check_loads("lbimport-ipv6.conf", &import, 2, true);
    assert_eq!(vip_texts(&c), ["[2001:db8::100]:80", "[2001:db8::101]:53"]);
    let web = &c.services[0];
    let backends: Vec<(String, u32)> = web
        .backends
        .iter()
        .map(|b| (b.addr.to_string(), b.weight))
        .collect();
    assert_eq!(
        backends,
        [
            ("2001:db8::21".to_owned(), 2),
            ("2001:db8::22".to_owned(), 1)
        ]
    );
    assert_eq!(
        web.health.as_ref().unwrap().kind.to_string(),
        "http GET /healthz expecting 200"
    );
    assert_eq!(c.services[1].proto.to_string(), "udp");
    // One IPv6 virtual router.
    assert_eq!(c.vrrp.len(), 1);
    let v = &c.vrrp[0];
    assert_eq!((v.vrid.get(), v.priority.get()), (61, 120));
    assert!(!v.preempt);
    assert_eq!(
        v.vips,
        [ip("fe80::61"), ip("2001:db8::100"), ip("2001:db8::101")]
    );
    // The IPv4 real server of the IPv6 virtual_server, and the link-local VIP, are reported.
    let lines: Vec<String> = import.warnings.iter().map(ToString::to_string).collect();
    for want in [
        "lbimport-ipv6.conf:55: real_server 198.18.0.23 80 not converted: an IPv4 real server of an IPv6 virtual_server",
        "lbimport-ipv6.conf:71: virtual_server fe80::1 80 not converted: a link-local address",
    ] {
        assert!(lines.iter().any(|w| w.contains(want)), "{want}: {lines:?}");
        assert!(import.toml.contains(want), "{want}\n{}", import.toml);
    }
    // keepalived runs IPv6 instances as VRRPv3: no version warning.
    assert!(
        lines.iter().all(|w| !w.contains("VRRP version 2")),
        "{lines:?}"
    );
}

#[test]
fn matching_ipv4_and_ipv6_instances_merge() {
    let import = import_file(
        &Path::new(FIXTURES).join("lbimport-dual-stack.conf"),
        &Options::default(),
    )
    .unwrap();
    assert!(
        import
            .toml
            .contains("vips = [\"198.18.0.100\", \"2001:db8::100\"]\nunicast_peers = [\"198.18.0.3\", \"fe80::3\"]\n"),
        "{}",
        import.toml
    );
    let c = check_loads("lbimport-dual-stack.conf", &import, 2, true);
    assert_eq!(vip_texts(&c), ["198.18.0.100:80", "[2001:db8::100]:80"]);
    let addrs: Vec<String> = c.services[1]
        .backends
        .iter()
        .map(|b| b.addr.to_string())
        .collect();
    assert_eq!(addrs, ["2001:db8::21", "2001:db8::22"]);
    // One virtual router per family, IPv4 first, with the same settings.
    assert_eq!(c.vrrp.len(), 2, "{}", import.toml);
    let (v4, v6) = (&c.vrrp[0], &c.vrrp[1]);
    assert_eq!(v4.vips, [ip("198.18.0.100")]);
    assert_eq!(v4.unicast_peers, [ip("198.18.0.3")]);
    assert_eq!(v6.vips, [ip("2001:db8::100")]);
    assert_eq!(v6.unicast_peers, [ip("fe80::3")]);
    for v in [v4, v6] {
        assert_eq!((v.vrid.get(), v.priority.get()), (51, 150));
        assert_eq!(v.advert_interval.millis(), 500);
        assert_eq!(v.preempt_delay, std::time::Duration::from_secs(5));
        assert_eq!(v.interface, "eth0");
        assert_eq!(v.tracked.len(), 1);
    }
    assert!(
        import.toml.contains(
            "lbimport-dual-stack.conf:29: vrrp_instance VI_6 (IPv6) merged into [vrrp] with vrrp_instance VI_4 (IPv4)"
        ),
        "{}",
        import.toml
    );
    assert!(
        import
            .warnings
            .iter()
            .all(|w| !w.message.contains("not converted: [vrrp]")
                && !w.message.contains("not among the VIPs")),
        "{:?}",
        import.warnings
    );

    // The IPv6 instance first, and the IPv4 one holding more service VIPs: [vrrp] comes from
    // the IPv4 one, and still lists the IPv4 VIPs first.
    let text = "vrrp_instance B {\n interface eth0\n virtual_router_id 9\n virtual_ipaddress {\n 2001:db8::1\n }\n}\n\
                vrrp_instance A {\n interface eth0\n virtual_router_id 9\n version 3\n virtual_ipaddress {\n 198.18.0.1\n }\n}\n\
                virtual_server 198.18.0.1 80 {\n lb_kind DR\n real_server 198.18.0.21 80 {\n }\n}\n";
    let import = import_str(text, Path::new("d.conf"), &Options::default()).unwrap();
    let c = check_loads("d.conf", &import, 1, true);
    assert_eq!(c.vrrp.len(), 2);
    assert_eq!(c.vrrp[0].vips, [ip("198.18.0.1")]);
    assert_eq!(c.vrrp[1].vips, [ip("2001:db8::1")]);
    assert!(
        import.toml.contains(
            "d.conf:1: vrrp_instance B (IPv6) merged into [vrrp] with vrrp_instance A (IPv4)"
        ),
        "{}",
        import.toml
    );
}

#[test]
fn instances_that_differ_are_not_merged() {
    let import = import_file(
        &Path::new(FIXTURES).join("lbimport-dual-stack-differ.conf"),
        &Options::default(),
    )
    .unwrap();
    let c = check_loads("lbimport-dual-stack-differ.conf", &import, 3, true);
    // The IPv6 instance holds two of the services' VIPs, the IPv4 one one: the IPv6 one converts.
    assert_eq!(c.vrrp.len(), 1);
    assert_eq!(c.vrrp[0].vips, [ip("2001:db8::100"), ip("2001:db8::101")]);
    let refusal = import
        .warnings
        .iter()
        .find(|w| w.message.starts_with("vrrp_instance VI_4 not converted"))
        .expect("VI_4 is reported");
    assert_eq!(refusal.line, 10);
    for differs in [
        "priority 150 (VI_6: 100)",
        "advert_int 1000 ms (VI_6: 2000 ms)",
        "preemption preempt (VI_6: nopreempt)",
    ] {
        assert!(refusal.message.contains(differs), "{differs}: {refusal}");
    }
    assert!(
        !refusal.message.contains("virtual_router_id") && !refusal.message.contains("interface"),
        "only what differs: {refusal}"
    );

    // Each setting [vrrp] shares, alone, keeps them apart; the differing one is named.
    let base = [
        "interface eth0",
        "virtual_router_id 9",
        "priority 100",
        "advert_int 1",
        "preempt_delay 0",
        "track_interface {\n eth1 weight -10\n }",
    ];
    let cases = [
        ("interface eth1", "interface eth1 (A: eth0)"),
        ("virtual_router_id 10", "virtual_router_id 10 (A: 9)"),
        ("priority 101", "priority 101 (A: 100)"),
        ("advert_int 1.5", "advert_int 1500 ms (A: 1000 ms)"),
        ("preempt_delay 2", "preempt_delay 2000 ms (A: 0 ms)"),
        (
            "track_interface {\n eth1 weight -20\n }",
            "track_interface eth1 weight -20 (A: eth1 weight -10)",
        ),
        ("nopreempt", "preemption nopreempt (A: preempt)"),
        (
            "unicast_peer {\n 2001:db8::2\n }",
            "unicast_peer some (unicast) (A: none (multicast))",
        ),
    ];
    for (change, want) in cases {
        let key = change.split_whitespace().next().unwrap();
        let b: Vec<&str> = base
            .iter()
            .copied()
            .filter(|l| !l.starts_with(key))
            .chain([change])
            .collect();
        let text = format!(
            "vrrp_instance A {{\n version 3\n {}\n virtual_ipaddress {{\n 198.18.0.1\n }}\n}}\n\
             vrrp_instance B {{\n {}\n virtual_ipaddress {{\n 2001:db8::1\n }}\n}}\n",
            base.join("\n "),
            b.join("\n ")
        );
        let import = import_str(&text, Path::new("x.conf"), &Options::default()).unwrap();
        let c = check_loads(change, &import, 0, true);
        assert_eq!(c.vrrp.len(), 1, "{change}");
        assert_eq!(c.vrrp[0].vips, [ip("198.18.0.1")], "{change}");
        let refusal = import
            .warnings
            .iter()
            .find(|w| w.message.starts_with("vrrp_instance B not converted"))
            .unwrap_or_else(|| panic!("{change}: {:?}", import.warnings));
        assert!(
            refusal.message.contains(&format!("differ: {want}; ")),
            "{change}: {refusal}"
        );
    }
}

#[test]
fn commented_keepalived_text_cannot_break_the_toml() {
    // Quotes, backslashes and control characters in names, paths and unknown keywords.
    let text = "vrrp_instance \"a\\\"b\" {\n interface \"e\\\\0\"\n virtual_router_id 3\n \"weird\u{1}key\" \"x\\\"y\"\n \
                virtual_ipaddress {\n 198.18.0.100\n }\n notify \"/usr/bin/a\\\"b\"\n}\n";
    let import = import_str(text, Path::new("q\"uote.conf"), &Options::default()).unwrap();
    let c = Config::parse(&import.toml).unwrap_or_else(|e| panic!("{e}\n{}", import.toml));
    assert_eq!(
        c.vrrp[0].notify.as_deref(),
        Some(Path::new("/usr/bin/a\"b"))
    );
}

/// Inputs the fuzz target found or that once mattered: they must give a result, not a panic.
#[test]
fn fuzz_regressions() {
    let dir = Path::new("tests/fixtures/fuzz-regressions");
    let files = BTreeMap::new();
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        count += 1;
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(import) =
            import_str_with_files(&text, Path::new("fuzz.conf"), &files, &Options::default())
        {
            Config::parse(&import.toml).unwrap_or_else(|e| {
                panic!(
                    "{}: lbd rejects the output: {e}\n{}",
                    path.display(),
                    import.toml
                )
            });
        }
    }
    assert!(count > 0, "no regression inputs in {}", dir.display());
}

#[test]
fn schedulers_keep_direct_routing() {
    // (lb_algo, extra virtual_server line, lbd scheduler, whether it is a warning)
    let cases = [
        ("rr", "", "maglev", false),
        ("wrr", "", "maglev", false),
        ("lc", "", "maglev", false),
        ("wlc", "", "maglev", false),
        ("sed", "", "maglev", false),
        ("nq", "", "maglev", false),
        ("twos", "", "maglev", false),
        ("sh", "", "sh", false),
        ("mh", "", "sh", false),
        ("sh", "sh-port", "maglev", false),
        ("mh", "mh-port", "maglev", false),
        ("rr", "persistence_timeout 60", "sh", false),
        ("dh", "", "maglev", true),
        ("lblc", "", "maglev", true),
        ("lblcr", "", "maglev", true),
        ("fo", "", "maglev", true),
        ("ovf", "", "maglev", true),
        ("random", "", "maglev", true),
    ];
    for (algo, extra, want, warns) in cases {
        let text = format!(
            "global_defs {{\n vrrp_version 3\n}}\nvirtual_server 198.18.0.100 80 {{\n lb_kind DR\n lb_algo {algo}\n {extra}\n \
             real_server 198.18.0.21 80 {{\n }}\n}}\n"
        );
        let import = import_str(&text, Path::new("s.conf"), &Options::default()).unwrap();
        let c = check_loads(algo, &import, 1, false);
        assert_eq!(c.services[0].scheduler.as_str(), want, "{algo} {extra}");
        assert_eq!(
            !import.warnings.is_empty(),
            warns,
            "{algo} {extra}: {:?}",
            import.warnings
        );
        assert!(
            import.toml.contains(&format!("s.conf:6: lb_algo {algo}"))
                || import.toml.contains("s.conf:7: persistence_timeout"),
            "{algo}: the mapping is explained\n{}",
            import.toml
        );
    }
}

#[test]
fn nothing_to_convert_says_why() {
    let e = import_str(
        "global_defs {\n router_id x\n}\n",
        Path::new("g.conf"),
        &Options::default(),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "g.conf: nothing to convert: the configuration has no vrrp_instance or virtual_server"
    );
    // With --strict, the first warning comes first.
    let e = import_str(
        "global_defs {\n router_id x\n}\nvirtual_server 10.0.0.1 80 {\n lb_kind NAT\n}\n",
        Path::new("g.conf"),
        &Options { strict: true },
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "g.conf:2: router_id x not converted: lbd has no router id: its logs and metrics name the node by the instance Prometheus scrapes (strict import)"
    );
}

#[test]
fn lbd_limits_are_kept() {
    let server = |port: usize, backends: usize| {
        let rs: String = (0..backends)
            .map(|i| {
                format!(
                    " real_server 10.1.{}.{} {port} {{\n }}\n",
                    i / 250,
                    i % 250 + 1
                )
            })
            .collect();
        format!("virtual_server 198.18.0.100 {port} {{\n lb_kind DR\n lb_algo sh\n{rs}}}\n")
    };
    // (services, backends each, services converted, the refusal)
    let cases = [
        (513, 1, 512, "at most 512 services"),
        (9, 500, 8, "at most 4096 backends"),
    ];
    for (services, backends, converted, why) in cases {
        let text: String = (1..=services).map(|p| server(p, backends)).collect();
        let import = import_str(&text, Path::new("l.conf"), &Options::default()).unwrap();
        check_loads("limits", &import, converted, false);
        let refused: Vec<&lb_import::Warning> = import
            .warnings
            .iter()
            .filter(|w| w.message.contains(why))
            .collect();
        assert_eq!(refused.len(), 1, "{why}: {:?}", import.warnings);
    }
}
