//! The ingest's record decoder on arbitrary bytes (raw, batch, zstd; the marker byte comes
//! from the input): it never panics, and every event it accepts decodes with prost, as
//! `scan_record` promises.
#![no_main]
use dashstream::codec::{decode_record, scan_record, Limits};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_record_bytes: 64 * 1024,
        max_decompressed_bytes: 256 * 1024,
        max_batch_events: 100,
    };
    if let Ok(record) = scan_record(data, &limits) {
        for e in record.events() {
            dashstream::proto::Event::decode(record.event_bytes(e))
                .expect("an event scan_record accepts decodes with prost");
        }
    }
    let _ = decode_record(data, &limits);
});
