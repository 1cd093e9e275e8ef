//! The client-frame parser on arbitrary text: it never panics (JSON nesting, huge numbers,
//! odd escapes), and `ping` / `auth` are recognised only from their `type`.
#![no_main]
use dashstream_gateway::ws::{parse_client_frame, ClientFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match parse_client_frame(s) {
        ClientFrame::Ping | ClientFrame::Auth(_) => assert!(s.contains("type")),
        ClientFrame::Other | ClientFrame::NotJson => {}
    }
});
