//! Fuzz the config: arbitrary bytes, as text, through what `lbd --check-config` and a start or a
//! reload run (`Config::parse`: TOML, then validation). Nothing may panic, and a config that
//! passes validation must be one the engine can apply: the check promises that it starts.

#![no_main]

use std::collections::HashMap;

use lb_daemon::{config::Config, datapath::DatapathMode, engine::Engine, overrides::Overrides};
use lb_daemon_fuzz::{NullDatapath, resolves};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(config) = Config::parse(&text) else {
        return;
    };
    // Every backend's MAC known, as after the start's look-ups: all of them enter the tables.
    let macs: HashMap<_, _> = config
        .services
        .iter()
        .flat_map(|s| s.backends.iter())
        .filter_map(|b| resolves(b.addr).map(|mac| (b.addr, mac)))
        .collect();
    for mode in [DatapathMode::XdpNative, DatapathMode::Userspace] {
        let mut engine = Engine::with_mac_required(mode.needs_macs());
        let mut dp = NullDatapath(mode);
        if let Err(e) = engine.apply(&config, &Overrides::default(), &macs, &mut dp) {
            panic!("a config that passed validation does not apply ({mode}): {e}\n{text}");
        }
    }
});
