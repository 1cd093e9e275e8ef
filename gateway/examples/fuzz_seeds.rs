//! Writes the fuzz targets' seed corpus (fuzz/corpus/<target>/): valid and near-valid inputs of
//! each parser, made with the project's own encoders so they follow the formats as they are.
//! `cargo run -p dashstream-gateway --example fuzz_seeds` (fuzz/run.sh runs it when a seed
//! directory is missing; the seeds are committed).

use dashstream::codec::encode_record;
use dashstream::proto::{envelope::Body, Envelope, Event, EventBatch, Header};
use dashstream_gateway::cursor::{Cursor, EntryId, PartitionPos};
use std::path::Path;

fn event(thread: &str, seq: u64, tenant: &str) -> Event {
    Event {
        header: Some(Header {
            message_id: vec![7; 16].into(),
            timestamp_us: 1_732_300_001_402_211,
            tenant_id: tenant.into(),
            thread_id: thread.into(),
            sequence: seq,
            event_type: "token".into(),
            schema_version: 1,
        }),
        payload: br#"{"text":"hello"}"#.to_vec().into(),
        content_type: "application/json".into(),
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("seed");
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let single = Envelope {
        body: Some(Body::Event(event("run-1", 1, "acme"))),
    };
    let batch = Envelope {
        body: Some(Body::Batch(EventBatch {
            events: (1..=5).map(|i| event("run-2", i, "globex")).collect(),
        })),
    };
    let d = root.join("record_decoder");
    write(&d, "raw-event", &encode_record(&single, false));
    write(&d, "zstd-event", &encode_record(&single, true));
    write(&d, "raw-batch", &encode_record(&batch, false));
    write(&d, "zstd-batch", &encode_record(&batch, true));
    write(&d, "bad-marker", &[0x07, 1, 2, 3]);
    write(&d, "empty-body", &[0x00]);

    let mut c = Cursor::default();
    for p in 0..3 {
        c.parts.insert(
            p,
            PartitionPos {
                epoch: format!("{:032x}", 0xdead_beef_u64 + p as u64),
                last: EntryId {
                    offset: 1000 + i64::from(p),
                    n: 1,
                },
            },
        );
    }
    let d = root.join("cursor");
    write(&d, "three-partitions", c.encode().as_bytes());
    write(&d, "empty", Cursor::default().encode().as_bytes());
    write(&d, "garbled", b"%%%not-a-cursor");

    let d = root.join("client_frame");
    write(&d, "ping", br#"{"type":"ping"}"#);
    write(
        &d,
        "auth",
        br#"{"type":"auth","token":"eyJhbGciOiJIUzI1NiJ9.e30.sig"}"#,
    );
    write(&d, "other", br#"{"type":"subscribe","x":[1,{"y":null}]}"#);
    write(&d, "not-json", b"ping");

    let d = root.join("query");
    write(
        &d,
        "full",
        b"from=latest&format=json&tenant=acme,globex&thread=run-1&type=token",
    );
    write(
        &d,
        "cursor-token",
        format!("from={}&access_token=abc", c.encode()).as_bytes(),
    );
    write(&d, "repeated", b"tenant=a&tenant=b");
    write(&d, "empty-value", b"type=a,,b");
    println!("seeds written under {}", root.display());
}
