//! A topic of 4,096 partitions (the documented limit): a client resumes with the cursor the
//! gateway gave it, on another replica, and a cursor that is too large gets a JSON error, not
//! an empty 431. The streams are written straight into Redis in the ingest's layout
//! (docs/PROTOCOL.md §3): this test is about the gateway's request path, not about Kafka.

mod common;
use common::*;
use dashstream::keys::StreamKeys;
use dashstream::proto::{Event, Header};
use prost::Message as _;
use std::collections::BTreeSet;
use std::time::Duration;

const PARTITIONS: i32 = 4096;

async fn write_streams(sys: &System) {
    let client = redis::Client::open(sys.redis_url.as_str()).unwrap();
    let mut c = client
        .get_multiplexed_async_connection_with_config(&dashstream_testkit::redis_patient())
        .await
        .unwrap();
    let keys = StreamKeys::new(&sys.prefix, &sys.topic);
    let mut pipe = redis::pipe();
    for p in 0..PARTITIONS {
        let ev = Event {
            header: Some(Header {
                message_id: vec![p as u8; 16].into(),
                timestamp_us: dashstream::now_us(),
                tenant_id: "t".into(),
                thread_id: format!("thread-{p}"),
                sequence: 1,
                event_type: "token".into(),
                schema_version: 1,
            }),
            payload: b"{}".to_vec().into(),
            content_type: "application/json".into(),
        }
        .encode_to_vec();
        pipe.cmd("HSET")
            .arg(keys.meta(p))
            .arg("epoch")
            .arg(format!("{:016x}", 0xfeed_0000_0000u64 + p as u64))
            .arg("next_offset")
            .arg(1_000_001)
            .arg("owner")
            .arg("test")
            .ignore();
        pipe.cmd("XADD")
            .arg(keys.stream(p))
            .arg("1000000-1")
            .arg("ev")
            .arg(ev)
            .ignore();
        pipe.cmd("SADD").arg(keys.partitions()).arg(p).ignore();
    }
    let _: () = pipe.query_async(&mut c).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_4096_partition_cursor_resumes_on_another_replica() {
    deadline(180, async {
        let sys = System::new("wide", 1, None).await;
        write_streams(&sys).await;
        let a = sys.gateway("a", &[]).await;
        let b = sys.gateway("b", &[]).await;

        // From the start: one event per partition, then a cursor naming all of them.
        let mut c = connect(&a.addr, "from=earliest").await.expect("connect");
        let mut seen = BTreeSet::new();
        let mut cursor = String::new();
        while seen.len() < PARTITIONS as usize {
            match c.next(Duration::from_secs(30)).await {
                Some(Frame::Events {
                    events,
                    cursor: cur,
                    ..
                }) => {
                    seen.extend(events.iter().map(|(p, _, _)| *p));
                    cursor = cur;
                }
                Some(Frame::Welcome { .. }) => {}
                other => panic!("unexpected {other:?} after {} partitions", seen.len()),
            }
        }
        assert!(
            cursor.len() > 16 * 1024,
            "a 4096-partition cursor is large ({} characters)",
            cursor.len()
        );

        // Too large for a URL (HTTP libraries cap a URI at 64 KiB), it goes in the header.
        assert!(connect(&b.addr, &format!("from={cursor}")).await.is_err());
        // The other replica takes it: welcome says resumed, and nothing is sent again.
        let mut r = connect_with(&b.addr, "", &[("dashstream-cursor", &cursor)])
            .await
            .unwrap_or_else(|e| panic!("the issued cursor was refused: {e:?}"));
        match r.next(Duration::from_secs(10)).await {
            Some(Frame::Welcome { resumed, .. }) => assert!(resumed),
            other => panic!("expected welcome, got {other:?}"),
        }
        // Caught up: the next frame (if any within a second) is not an old event.
        if let Some(f) = r.next(Duration::from_secs(1)).await {
            panic!("nothing new was written, yet the resumed client got {f:?}");
        }

        // A browser offers it as a subprotocol, and gets `dashstream` back.
        let mut s = connect_with(
            &a.addr,
            "",
            &[(
                "sec-websocket-protocol",
                &format!("dashstream, cursor.{cursor}"),
            )],
        )
        .await
        .unwrap_or_else(|e| panic!("the cursor subprotocol was refused: {e:?}"));
        assert!(matches!(
            s.next(Duration::from_secs(10)).await,
            Some(Frame::Welcome { resumed: true, .. })
        ));

        // A cursor over the documented limit: a JSON error naming it.
        let huge = "A".repeat(200 * 1024);
        let (status, body) = connect_with(&b.addr, "", &[("dashstream-cursor", &huge)])
            .await
            .err()
            .expect("refused");
        assert_eq!(status, 400, "{body}");
        assert!(
            body.contains("BAD_CURSOR") && body.contains("too long"),
            "{body}"
        );
    })
    .await;
}
