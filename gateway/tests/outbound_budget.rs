//! The replica bounds what waits for all its clients together (GATEWAY_OUTBOUND_BUFFER_BYTES):
//! over it, the connection holding the most (a client that stopped reading) is shed, while a
//! client that reads keeps everything. The shed client resumes with the last cursor it got and
//! misses nothing.

mod common;
use common::*;
use dashstream_testkit::{http_get, metric_sum, parse_metrics, wait_for};
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_the_outbound_budget_the_client_holding_most_is_shed_and_resumes_losslessly() {
    deadline(300, async {
        let sys = System::new("outbound", 2, None).await;
        let _ingest = sys.ingest(&[]).await;
        sys.produce(sys.produce_options(50, None)).await;
        sys.wait_streams().await;
        let budget = 1024 * 1024;
        let gw = GatewayProc::spawn(
            &sys,
            &[
                ("GATEWAY_OUTBOUND_BUFFER_BYTES", &budget.to_string()),
                ("GATEWAY_SEND_QUEUE", "100000"),
                ("GATEWAY_SEND_QUEUE_BYTES", &budget.to_string()),
                ("GATEWAY_MAX_FRAME_BYTES", "16384"),
            ],
        )
        .await;

        let mut fast = connect(&gw.addr, "from=latest").await.unwrap();
        let mut fast_rx = Received::default();
        fast_rx.take(&fast.next(Duration::from_secs(5)).await.unwrap());
        // A client with a small receive buffer that stops reading after its welcome.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(16 * 1024).unwrap();
        let stream = sock.connect(gw.addr.parse().unwrap()).await.unwrap();
        let mut slow = Client::over(&gw.addr, "from=latest", stream).await;
        let mut slow_rx = Received::default();
        slow_rx.take(&slow.next(Duration::from_secs(5)).await.unwrap());

        // 8 MB at 1 MB/s: more than the slow client's kernel buffers (up to 4 MiB sent, 16 KiB
        // received) and the budget together, at a pace the fast client keeps up with: it is
        // shed only if it falls half the budget (0.5 s) behind.
        let mut opts = sys.produce_options(4_000, Some(500.0));
        opts.payload_bytes = 2_000;
        let producer = tokio::spawn({
            let sys = sys.clone();
            async move { sys.produce(opts).await }
        });
        // The fast client reads until it has everything the producer sent (known once the
        // producer is done) or its connection ends; a pause in the stream does not end it.
        let (fast_want, mut want_seen) =
            tokio::sync::watch::channel(None::<BTreeSet<(i32, i64, u32)>>);
        let fast_task = tokio::spawn(async move {
            let mut closed = None;
            let end = tokio::time::Instant::now() + Duration::from_secs(240);
            loop {
                if let Some(w) = &*want_seen.borrow_and_update() {
                    if w.is_subset(&fast_rx.events) {
                        break;
                    }
                }
                let left = end.saturating_duration_since(tokio::time::Instant::now());
                tokio::select! {
                    f = fast.next(left) => match f {
                        Some(Frame::Close(code)) => {
                            closed = Some(code);
                            break;
                        }
                        Some(f) => fast_rx.take(&f),
                        None => break,
                    },
                    _ = want_seen.changed() => {}
                }
            }
            (fast_rx, closed)
        });
        wait_for("the slow client shed", Duration::from_secs(120), || async {
            let m = parse_metrics(&http_get(&gw.addr, "/metrics").await.ok()?.1);
            (metric_sum(
                &m,
                "dashstream_gateway_disconnects_total",
                &[("reason", "slow")],
            ) >= 1.0)
                .then_some(())
        })
        .await;
        let report = producer.await.unwrap();
        let want = expected(&report.deliveries);
        fast_want.send_replace(Some(want.clone()));

        // The slow client reads what reached it, up to the end of its connection...
        let mut closed = None;
        while let Some(f) = slow.next(Duration::from_secs(10)).await {
            if let Frame::Close(code) = f {
                closed = Some(code);
                break;
            }
            slow_rx.take(&f);
        }
        assert!(
            matches!(closed, None | Some(4009)),
            "shed with 4009 or cut: {closed:?}"
        );
        assert!(
            !want.is_subset(&slow_rx.events),
            "it was shed before the end"
        );
        // ...then resumes with its last cursor and gets the rest: nothing lost, nothing twice.
        let cursor = slow_rx.cursor.clone().expect("a cursor");
        let mut again = connect(&gw.addr, &format!("from={cursor}")).await.unwrap();
        read_until(&mut again, &mut slow_rx, &want, Duration::from_secs(120)).await;
        assert!(slow_rx.gaps.is_empty(), "{:?}", slow_rx.gaps);
        assert_eq!(slow_rx.duplicates + slow_rx.out_of_order, 0);

        // The client that kept reading was never shed and got everything.
        let (fast_rx, fast_closed) = fast_task.await.unwrap();
        let m = parse_metrics(&http_get(&gw.addr, "/metrics").await.unwrap().1);
        assert_eq!(
            metric_sum(
                &m,
                "dashstream_gateway_disconnects_total",
                &[("reason", "slow")]
            ),
            1.0,
            "only the slow client was shed (the fast one closed with {fast_closed:?})"
        );
        assert!(
            want.is_subset(&fast_rx.events),
            "the fast client got everything: {} of {}, closed with {fast_closed:?}",
            want.intersection(&fast_rx.events).count(),
            want.len()
        );
        assert_eq!(fast_rx.duplicates + fast_rx.out_of_order, 0);
    })
    .await;
}
