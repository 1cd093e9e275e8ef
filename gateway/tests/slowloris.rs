//! Slowloris (security issue §2): one address (127.0.0.2) holding hundreds of silent or
//! trickling connections cannot delay another address's upgrade, nor a probe on the operations
//! listener (`GATEWAY_OPS_LISTEN`), beyond 1 s. The attacker gets its 16 connections not yet
//! upgraded (`MAX_CONNECTIONS_PER_IP`), the rest are closed at accept and counted; a request
//! head must arrive within 3 s. The public listener serves no operations endpoint.

mod common;
use common::*;
use dashstream_testkit::{free_port, http_get, metric_sum, parse_metrics};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A connection to `addr` from `from` (a loopback address of its own).
async fn connect_from(from: &str, addr: &str) -> std::io::Result<tokio::net::TcpStream> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.bind(format!("{from}:0").parse().unwrap())?;
    s.connect(addr.parse().unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_address_holding_hundreds_of_connections_cannot_delay_another() {
    deadline(120, async {
        let sys = System::new("slowloris", 1, None).await;
        let _ingest = sys.ingest(&[]).await;
        sys.produce(sys.produce_options(10, None)).await;
        sys.wait_streams().await;
        let ops = format!("127.0.0.1:{}", free_port());
        let gw = sys.gateway("g1", &[&format!("--ops-listen={ops}")]).await;

        // The public port serves only /ws and the viewer.
        let (status, _) = http_get(&gw.addr, "/metrics").await.unwrap();
        assert_eq!(status, 404, "/metrics is not on the public port");
        let (status, _) = http_get(&ops, "/readyz").await.unwrap();
        assert_eq!(status, 200);

        // 300 connections from 127.0.0.2: half send nothing, half trickle a request head.
        let mut attackers = Vec::new();
        for i in 0..300 {
            let Ok(mut s) = connect_from("127.0.0.2", &gw.addr).await else {
                continue;
            };
            if i % 2 == 1 {
                let _ = s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await;
            }
            attackers.push(s);
        }
        assert!(
            attackers.len() >= 290,
            "the attacker opened its connections: {}",
            attackers.len()
        );
        let trickle = tokio::spawn(async move {
            // The attack's pace: a header byte every 500 ms on every held connection.
            let mut open = attackers;
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                for s in open.iter_mut() {
                    let _ = s.write_all(b"X").await;
                }
            }
        });

        // Another address upgrades at once, again and again, and the ops probe answers.
        for _ in 0..5 {
            let t = Instant::now();
            let mut c = connect(&gw.addr, "from=latest")
                .await
                .expect("an upgrade from 127.0.0.1");
            assert!(
                matches!(
                    c.next(Duration::from_secs(5)).await,
                    Some(Frame::Welcome { .. })
                ),
                "welcome"
            );
            let took = t.elapsed();
            assert!(took < Duration::from_secs(1), "the upgrade took {took:?}");
            let t = Instant::now();
            let (status, _) = http_get(&ops, "/readyz").await.unwrap();
            assert_eq!(status, 200);
            let took = t.elapsed();
            assert!(took < Duration::from_secs(1), "the probe took {took:?}");
            c.close().await;
        }

        let m = parse_metrics(&http_get(&ops, "/metrics").await.unwrap().1);
        let refused = metric_sum(
            &m,
            "dashstream_http_connections_refused_total",
            &[("reason", "ip_limit")],
        );
        assert!(
            refused >= 250.0,
            "the attacker's extra connections were closed: {refused}"
        );

        // A silent connection is closed once its head is overdue (3 s).
        let mut silent = connect_from("127.0.0.3", &gw.addr).await.unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
            .await
            .expect("closed within 10 s");
        assert!(matches!(n, Ok(0) | Err(_)), "closed, not answered: {n:?}");
        assert!(
            t.elapsed() < Duration::from_secs(6),
            "closed after {:?}",
            t.elapsed()
        );
        trickle.abort();
    })
    .await;
}
