//! Fuzz the control socket: each line of the input is one request line, decoded as the control
//! server decodes it (`serde_json` into `Request`, lines over `MAX_REQUEST` refused first), and
//! every request that decodes is answered by the daemon's core, over a data path that holds
//! nothing (see `lb_daemon_fuzz::CoreBed`). The lines of one input go to one core in turn, so
//! that a request meets the state an earlier one left.
//!
//! Invariants: nothing panics; a decoded request re-encodes (as `lbctl` sends it) to an equal
//! request; every request gets exactly one answer, which `lbctl` can read; the status is still
//! answered after the input.

#![no_main]

use lb_daemon::control::{MAX_REQUEST, Request};
use lb_daemon_fuzz::{CoreBed, answer_round_trip};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Started at the first request that reaches it: the start builds the Maglev tables, by far
    // the slowest step, and most inputs decode to nothing.
    let mut bed: Option<CoreBed> = None;
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line.len() > MAX_REQUEST {
            continue;
        }
        let Ok(req) = serde_json::from_slice::<Request>(line) else {
            continue;
        };
        let sent = match serde_json::to_vec(&req) {
            Ok(s) => s,
            Err(e) => panic!("{req:?} does not encode: {e}"),
        };
        match serde_json::from_slice::<Request>(&sent) {
            Ok(again) => assert_eq!(again, req, "a request changed through encoding"),
            Err(e) => panic!("{req:?} does not decode once encoded: {e}"),
        }
        // The server hands this one over to the daemon's I/O layer with its connection.
        if req == (Request::Handover {}) {
            continue;
        }
        let bed = bed.get_or_insert_with(|| match CoreBed::start(Default::default()) {
            Ok(bed) => bed,
            Err(e) => panic!("the core does not start over its fixed config: {e:#}"),
        });
        answer_round_trip(&bed.request(req));
    }
    if let Some(mut bed) = bed {
        answer_round_trip(&bed.status());
    }
});
