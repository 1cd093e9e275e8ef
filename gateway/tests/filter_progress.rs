//! A filter that matches nothing still moves its client's cursor (review m7): after skipping
//! `PROGRESS_EVENTS` events without a frame, the gateway sends an `events` frame with no events
//! and the cursor past them, from history and live alike. A reconnect then re-reads at most
//! that many events instead of everything since the client's last match.

mod common;
use common::*;
use dashstream_gateway::cursor::Cursor;
use dashstream_gateway::frames::PROGRESS_EVENTS;
use std::time::Duration;

/// The offset partition 0 of `cursor` has reached (-1 when it names none).
fn reached(cursor: &str) -> i64 {
    let c = Cursor::decode(cursor).expect("a cursor the gateway gave");
    c.parts.get(&0).map_or(-1, |p| p.last.offset)
}

/// The next progress frame (an `events` frame with no events); its cursor's offset.
async fn progress(c: &mut Client) -> i64 {
    match c.next(Duration::from_secs(30)).await {
        Some(Frame::Events { cursor, events, .. }) => {
            assert!(events.is_empty(), "the filter matches nothing: {events:?}");
            reached(&cursor)
        }
        other => panic!("expected a progress frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_filter_matching_nothing_still_moves_the_cursor_from_history_and_live() {
    deadline(180, async {
        let sys = System::new("progress", 1, None).await;
        let _ingest = sys.ingest(&[]).await;
        let n = 2 * PROGRESS_EVENTS + 500;
        sys.produce(sys.produce_options(n, None)).await;
        sys.wait_streams().await;
        let gw = sys.gateway("g1", &["--history-page=1000"]).await;

        let mut c = connect(&gw.addr, "from=earliest&tenant=nobody")
            .await
            .unwrap();
        assert!(matches!(
            c.next(Duration::from_secs(10)).await,
            Some(Frame::Welcome { .. })
        ));
        // History: a page of skipped events, then another.
        let first = progress(&mut c).await;
        assert!(
            first >= PROGRESS_EVENTS as i64 - 1,
            "the cursor moved over the skipped page: {first}"
        );
        let second = progress(&mut c).await;
        assert!(second > first, "{second} after {first}");

        // Live: skipped events move it again.
        sys.produce(sys.produce_options(PROGRESS_EVENTS + 200, None))
            .await;
        let live = progress(&mut c).await;
        assert!(live >= n as i64, "{live}: past what history held");
    })
    .await;
}
