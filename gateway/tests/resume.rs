//! Resume is exact: a client that disconnects at random points and reconnects to another
//! replica with its last cursor receives, in union, the full stream, each event once. A
//! draining replica tells its clients where to resume, and they lose nothing.

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_random_disconnects_across_replicas_lose_and_double_nothing() {
    deadline(240, async {
        let sys = System::new("resume", 4, None).await;
        let _ingest = sys.ingest(&[]).await;
        sys.produce(sys.produce_options(100, None)).await;
        sys.wait_streams().await;
        // One client reconnecting as fast as it can, hundreds of times: past the per-address
        // upgrade rate (an abuse limit, tested in limits.rs), not what this checks.
        let no_rate = ["--upgrade-rate-per-ip=0"];
        let gws = [
            sys.gateway("g1", &no_rate).await,
            sys.gateway("g2", &no_rate).await,
            sys.gateway("g3", &no_rate).await,
        ];

        let mut rx = Received::default();
        let mut c = connect(&gws[0].addr, "from=latest").await.unwrap();
        rx.take(&c.next(Duration::from_secs(10)).await.unwrap());
        let producer = tokio::spawn({
            let (sys, opts) = (sys.clone(), sys.produce_options(8_000, Some(400.0)));
            async move { sys.produce(opts).await }
        });
        let mut reconnects = 0;
        while !producer.is_finished() || reconnects < 50 {
            // Read a random number of frames (0..=3), then drop the connection abruptly.
            for _ in 0..(rand::random::<u32>() % 4) {
                match c.next(Duration::from_secs(10)).await {
                    Some(f) => rx.take(&f),
                    None => break,
                }
            }
            drop(c);
            reconnects += 1;
            let cursor = rx.cursor.clone().expect("a cursor");
            let gw = &gws[reconnects % 3];
            c = connect(&gw.addr, &format!("from={cursor}"))
                .await
                .expect("resume accepted");
            match c.next(Duration::from_secs(10)).await {
                Some(f @ Frame::Welcome { resumed: true, .. }) => rx.take(&f),
                other => panic!("expected a resumed welcome, got {other:?}"),
            }
        }
        let report = producer.await.unwrap();
        let want = expected(&report.deliveries);
        read_until(&mut c, &mut rx, &want, Duration::from_secs(60)).await;
        assert!(reconnects >= 50);
        assert_eq!(rx.duplicates, 0, "no event twice");
        assert_eq!(rx.out_of_order, 0, "per-partition order");
        assert!(
            rx.gaps.is_empty(),
            "no gap while Redis retains everything: {:?}",
            rx.gaps
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_draining_replica_sends_reconnect_and_clients_resume_elsewhere() {
    deadline(180, async {
        let sys = System::new("drain", 2, None).await;
        let _ingest = sys.ingest(&[]).await;
        sys.produce(sys.produce_options(100, None)).await;
        sys.wait_streams().await;
        let g1 = sys.gateway("g1", &[]).await;
        let g2 = sys.gateway("g2", &[]).await;
        let mut clients = Vec::new();
        for _ in 0..5 {
            let mut c = connect(&g1.addr, "from=latest").await.unwrap();
            let mut rx = Received::default();
            rx.take(&c.next(Duration::from_secs(10)).await.unwrap());
            clients.push((c, rx));
        }
        let producer = tokio::spawn({
            let (sys, opts) = (sys.clone(), sys.produce_options(4_000, Some(1_000.0)));
            async move { sys.produce(opts).await }
        });
        // Drain mid-stream: once every client has received events.
        for (c, rx) in clients.iter_mut() {
            while rx.events.len() < 100 {
                let f = c
                    .next(Duration::from_secs(30))
                    .await
                    .expect("events flowing");
                rx.take(&f);
            }
        }
        let stopping = tokio::spawn(g1.shutdown());
        for (c, rx) in clients.iter_mut() {
            // Events until a reconnect frame with a cursor, then close 4012.
            loop {
                match c.next(Duration::from_secs(10)).await {
                    Some(f @ Frame::Reconnect { .. }) => {
                        assert!(
                            matches!(&f, Frame::Reconnect { reason, .. } if reason == "draining")
                        );
                        rx.take(&f);
                        break;
                    }
                    Some(f) => rx.take(&f),
                    None => panic!("closed without a reconnect frame"),
                }
            }
            assert_eq!(
                c.next(Duration::from_secs(10)).await,
                Some(Frame::Close(4012))
            );
        }
        stopping.await.unwrap();
        let report = producer.await.unwrap();
        let want = expected(&report.deliveries);
        for (_, rx) in clients.iter_mut() {
            let mut c = connect(&g2.addr, &format!("from={}", rx.cursor.clone().unwrap()))
                .await
                .unwrap();
            read_until(&mut c, rx, &want, Duration::from_secs(60)).await;
            assert_eq!(rx.duplicates, 0);
            assert_eq!(rx.out_of_order, 0);
            assert!(rx.gaps.is_empty());
        }
    })
    .await;
}
