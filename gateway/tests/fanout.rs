//! Three gateway replicas, 30 clients spread across them, half in JSON and half in protobuf:
//! every client receives the same full stream (each produced event once, per-partition order),
//! whichever replica it hit and whichever format it asked for.

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_client_on_every_replica_gets_the_full_stream_in_both_formats() {
    deadline(240, async {
        let sys = System::new("fanout", 4, None).await;
        // Gateways and clients first, before any stream exists: streams that appear later are
        // followed from their first entry.
        let gws = [
            sys.gateway("g1", &[]).await,
            sys.gateway("g2", &[]).await,
            sys.gateway("g3", &[]).await,
        ];
        let _ingest = sys.ingest(&[]).await;
        // Every replica serves the live viewer page at `/`.
        let (status, page) = dashstream_testkit::http_get(&gws[0].addr, "/")
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert!(page.contains("new WebSocket(") && page.contains("DashStream live viewer"));

        let mut clients = Vec::new();
        for i in 0..30 {
            let format = if i % 2 == 0 { "json" } else { "protobuf" };
            let mut c = connect(&gws[i % 3].addr, &format!("from=latest&format={format}"))
                .await
                .expect("upgrade");
            let mut rx = Received::default();
            match c.next(Duration::from_secs(10)).await {
                Some(f @ Frame::Welcome { .. }) => rx.take(&f),
                other => panic!("expected welcome, got {other:?}"),
            }
            clients.push((c, rx));
        }
        let report = sys.produce(sys.produce_options(6_000, Some(3_000.0))).await;
        let want = expected(&report.deliveries);
        for (c, rx) in clients.iter_mut() {
            read_until(c, rx, &want, Duration::from_secs(90)).await;
        }
        for (i, (_, rx)) in clients.iter().enumerate() {
            assert_eq!(rx.duplicates, 0, "client {i}: duplicates");
            assert_eq!(rx.out_of_order, 0, "client {i}: out of order");
            assert!(rx.gaps.is_empty(), "client {i}: gaps {:?}", rx.gaps);
            assert_eq!(rx.events, want, "client {i}: exactly the produced events");
        }
    })
    .await;
}
