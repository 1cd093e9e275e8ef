//! The resume cursor parser on arbitrary text: it never panics, and a cursor it accepts
//! encodes back to one that decodes to the same positions.
#![no_main]
use dashstream_gateway::cursor::Cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Cursor::decode(s) {
        let again = Cursor::decode(&c.encode()).expect("an encoded cursor decodes");
        assert_eq!(again, c);
    }
});
