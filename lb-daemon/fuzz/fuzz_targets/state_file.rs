//! Fuzz the state file: arbitrary bytes, as the daemon reads them at start
//! (`Overrides::parse`, what `StateFile::load` runs). Nothing may panic; what parses must
//! survive a save (the same JSON `StateFile::save` writes parses back to equal overrides), and
//! the daemon's core must start over it, or refuse with an error, and answer its status.

#![no_main]

use lb_daemon::overrides::Overrides;
use lb_daemon_fuzz::{CoreBed, answer_round_trip};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The daemon reads the file as UTF-8 (read_to_string): other bytes never reach the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(overrides) = Overrides::parse(text) else {
        return;
    };
    let saved = match serde_json::to_string_pretty(&overrides) {
        Ok(s) => s,
        Err(e) => panic!("{overrides:?} does not encode: {e}"),
    };
    match Overrides::parse(&saved) {
        Ok(again) => assert_eq!(again, overrides, "overrides changed through a save"),
        Err(e) => panic!("a saved state file does not load: {e}\n{saved}"),
    }
    // Refusing to start (an error, as for too many backends) is fine; a panic is not.
    if let Ok(mut bed) = CoreBed::start(overrides) {
        answer_round_trip(&bed.status());
    }
});
