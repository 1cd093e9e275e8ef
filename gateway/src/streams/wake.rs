//! The tail's wake-up on a Redis Cluster. A single Redis wakes the tail with one `XREAD BLOCK`
//! over every partition stream; a cluster cannot (a command's keys must share a slot, and the
//! partitions are spread over slots on purpose). Instead the ingest's write publishes on the
//! shard channel named like the stream (`SPUBLISH`, same slot), and the gateway subscribes to
//! every partition's channel (`SSUBSCRIBE`) on one RESP3 cluster connection: redis-rs keeps one
//! connection per node, so each node carries one subscription connection for all the partitions
//! it masters, whatever their number. redis-rs subscribes again after a reconnection or a new
//! slot map (a failover); a channel whose slot migrated is unsubscribed by Redis
//! (`sunsubscribe` push), noticed here and subscribed again at the next wait.
//!
//! A wake-up is only a hint: the tail reads after at most its block time even without one, so
//! a message lost in a reconnection or a migration delays events by that much, never loses them.

use dashstream::redis_config::RedisSettings;
use redis::{PushInfo, PushKind, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Subscriptions of one gateway replica to the partitions' shard channels.
pub struct ShardWaker {
    conn: redis::cluster_async::ClusterConnection,
    notify: Arc<Notify>,
    /// Channel name → partition, for every partition the tail has asked about.
    state: Arc<Mutex<State>>,
    timeout: Duration,
}

#[derive(Default)]
struct State {
    /// The partitions whose channel is subscribed (as far as the last pushes tell).
    subscribed: HashSet<i32>,
    channels: HashMap<Vec<u8>, i32>,
}

impl ShardWaker {
    /// Connects to the cluster of `settings` (which must be one) with RESP3 and a push channel.
    pub async fn connect(settings: &RedisSettings) -> redis::RedisResult<Arc<Self>> {
        let dashstream::redis_config::RedisTarget::Cluster(seeds) = &settings.target else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "shard wake-ups need a Redis Cluster",
            )));
        };
        let (tx, rx) = mpsc::unbounded_channel::<PushInfo>();
        let client = settings
            .cluster_builder(seeds, Duration::ZERO)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(tx)
            .build()?;
        let conn = client.get_async_connection().await?;
        let waker = Arc::new(Self {
            conn,
            notify: Arc::new(Notify::new()),
            state: Arc::default(),
            timeout: settings.command_timeout,
        });
        tokio::spawn(pushes(rx, waker.notify.clone(), waker.state.clone()));
        Ok(waker)
    }

    /// Waits up to `block` for a write to any of `partitions` (`stream(p)` names a partition's
    /// stream, which is also its channel), subscribing first to those not subscribed yet.
    pub async fn wait(
        &self,
        partitions: &[i32],
        stream: impl Fn(i32) -> String,
        block: Duration,
    ) -> redis::RedisResult<()> {
        let missing: Vec<i32> = {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            partitions
                .iter()
                .copied()
                .filter(|p| !st.subscribed.contains(p))
                .collect()
        };
        for p in missing {
            let channel = stream(p);
            self.state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .channels
                .insert(channel.clone().into_bytes(), p);
            let mut c = self.conn.clone();
            // Each channel on its own: a command's channels must share a slot.
            match tokio::time::timeout(self.timeout, c.ssubscribe(&channel)).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "SSUBSCRIBE timed out",
                    )))
                }
            }
            self.state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .subscribed
                .insert(p);
        }
        // A permit left by a message since the last wait returns at once: that write may not
        // have been read yet.
        let _ = tokio::time::timeout(block, self.notify.notified()).await;
        Ok(())
    }
}

/// Turns pushes into wake-ups, and notes channels Redis unsubscribed (their slot moved).
async fn pushes(
    mut rx: mpsc::UnboundedReceiver<PushInfo>,
    notify: Arc<Notify>,
    state: Arc<Mutex<State>>,
) {
    while let Some(push) = rx.recv().await {
        match push.kind {
            PushKind::SMessage | PushKind::Message => notify.notify_one(),
            PushKind::SUnsubscribe | PushKind::Disconnection => {
                let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                match push.data.first() {
                    Some(Value::BulkString(ch)) if push.kind == PushKind::SUnsubscribe => {
                        if let Some(p) = st.channels.get(ch.as_slice()).copied() {
                            st.subscribed.remove(&p);
                        }
                    }
                    // A connection lost: redis-rs subscribes again; the next wait checks.
                    _ => st.subscribed.clear(),
                }
                drop(st);
                // Read now: what was written while unsubscribed has woken no one.
                notify.notify_one();
            }
            _ => {}
        }
    }
}
