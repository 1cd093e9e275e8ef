//! `dashstream tail ws` (the library function behind it) against a running gateway: every
//! event once, as JSON lines.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tail_ws_prints_every_event_once() {
    deadline(120, async {
        let sys = System::new("tail-ws", 2, None).await;
        let _ingest = sys.ingest(&[]).await;
        let report = sys.produce(sys.produce_options(1_000, None)).await;
        sys.wait_streams().await;
        let gw = sys.gateway("g1", &[]).await;
        let want = expected(&report.deliveries);
        let url = format!("ws://{}/ws", gw.addr);
        let mut lines = Vec::new();
        let stop = dashstream::tail::Stop {
            count: Some(want.len() as u64),
            idle: Some(Duration::from_secs(30)),
        };
        let n = dashstream::tail::ws(&url, "earliest", "", None, stop, &mut |l| lines.push(l))
            .await
            .unwrap();
        assert_eq!(n as usize, want.len());
        let got: BTreeSet<(i32, i64, u32)> = lines
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["partition"].as_i64().unwrap() as i32,
                    v["offset"].as_i64().unwrap(),
                    v["index"].as_u64().unwrap() as u32,
                )
            })
            .collect();
        assert_eq!(got.len(), lines.len(), "no event twice");
        assert_eq!(got, want);
    })
    .await;
}
