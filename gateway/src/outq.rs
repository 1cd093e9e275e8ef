//! Outbound queues: what a connection's session has handed to its writer and the socket has not
//! taken yet, bounded per connection in frames and in bytes, and across the replica in bytes.
//!
//! A queue holds no allocation while it is empty (an idle connection costs its state only).
//! Bytes count from the moment a frame is queued until the writer has written it, so a frame
//! in flight on a slow socket still counts. A frame larger than a connection's byte bound is
//! queued alone (it must be sendable), everything else waits for room.
//!
//! The [`Outbox`] adds every queue's bytes up. When the total goes over its budget, the
//! connection holding the most bytes (the slowest reader) is shed: its queue is emptied and
//! closed, and the connection ends (with close 4009 when the socket still takes it). The client
//! resumes with the cursor of the last frame it received, so shedding loses nothing.

use crate::frames::Outgoing;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use tokio::sync::Notify;

/// What goes to a connection's writer.
#[derive(Debug)]
pub enum Outbound {
    Frame(Outgoing),
    /// A pass's shared frames.
    Shared(Arc<[Outgoing]>),
    /// Close the connection with this code and reason.
    Close(u16, &'static str),
}

impl Outbound {
    /// Bytes on the wire.
    pub fn bytes(&self) -> usize {
        match self {
            Outbound::Frame(f) => f.wire.len(),
            Outbound::Shared(fs) => fs.iter().map(|f| f.wire.len()).sum(),
            Outbound::Close(..) => 0,
        }
    }
}

/// The queue is closed: the connection is ending (or was shed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every connection's outbound bytes, against one budget.
pub struct Outbox {
    budget: usize,
    bytes: AtomicUsize,
    sheds: AtomicU64,
    next_id: AtomicU64,
    queues: Mutex<HashMap<u64, Weak<OutQueue>>>,
    /// Held by the one push that looks for a connection to shed.
    shedding: Mutex<()>,
}

impl Outbox {
    pub fn new(budget: usize) -> Arc<Self> {
        Arc::new(Self {
            budget: budget.max(1),
            bytes: AtomicUsize::new(0),
            sheds: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            queues: Mutex::new(HashMap::new()),
            shedding: Mutex::new(()),
        })
    }

    /// Bytes queued or in flight over all connections.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Connections shed so far.
    pub fn sheds(&self) -> u64 {
        self.sheds.load(Ordering::Relaxed)
    }

    /// Counts `n` more bytes; whether the total is now over the budget.
    fn add(&self, n: usize) -> bool {
        let total = self.bytes.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        total > self.budget
    }

    fn sub(&self, n: usize) {
        if n > 0 {
            self.bytes.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Sheds the connection holding the most bytes, unless another push is doing it.
    fn shed_largest(&self) {
        let Ok(_one) = self.shedding.try_lock() else {
            return;
        };
        if self.bytes() <= self.budget {
            return;
        }
        let largest = {
            let queues = lock(&self.queues);
            queues
                .values()
                .filter_map(Weak::upgrade)
                .map(|q| (q.held(), q))
                .filter(|(held, _)| *held > 0)
                .max_by_key(|(held, _)| *held)
        };
        if let Some((_, q)) = largest {
            if q.shed() {
                self.sheds.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[derive(Default)]
struct State {
    items: VecDeque<Outbound>,
    /// Bytes queued, or taken by the writer and not written yet.
    bytes: usize,
    closed: bool,
    shed: bool,
}

/// One connection's queue: the session pushes, the writer takes and reports what it wrote.
pub struct OutQueue {
    id: u64,
    outbox: Arc<Outbox>,
    max_items: usize,
    max_bytes: usize,
    state: Mutex<State>,
    /// Woken when there is something to take, or the queue closed.
    to_writer: Notify,
    /// Woken when room was made, or the queue closed.
    to_session: Notify,
}

impl OutQueue {
    pub fn new(outbox: &Arc<Outbox>, max_items: usize, max_bytes: usize) -> Arc<Self> {
        let id = outbox.next_id.fetch_add(1, Ordering::Relaxed);
        let q = Arc::new(Self {
            id,
            outbox: outbox.clone(),
            max_items: max_items.max(1),
            max_bytes: max_bytes.max(1),
            state: Mutex::new(State::default()),
            to_writer: Notify::new(),
            to_session: Notify::new(),
        });
        lock(&outbox.queues).insert(id, Arc::downgrade(&q));
        q
    }

    fn held(&self) -> usize {
        lock(&self.state).bytes
    }

    /// Whether the queue was shed (over the replica's outbound budget).
    pub fn was_shed(&self) -> bool {
        lock(&self.state).shed
    }

    pub fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    fn fits(&self, s: &State, n: usize) -> bool {
        s.items.is_empty() && s.bytes == 0
            || (s.items.len() < self.max_items && s.bytes + n <= self.max_bytes)
    }

    fn push_locked(&self, mut s: MutexGuard<'_, State>, o: Outbound) {
        let n = o.bytes();
        // Counted before the writer can see the frame: its `written` must never subtract
        // bytes the total does not hold yet (the total would wrap and look over budget).
        let over = self.outbox.add(n);
        s.bytes += n;
        s.items.push_back(o);
        drop(s);
        self.to_writer.notify_one();
        if over {
            // Outside this queue's lock: shedding reads every queue's state.
            self.outbox.shed_largest();
        }
    }

    /// Queues `o`, waiting for room.
    pub async fn push(&self, o: Outbound) -> Result<(), Closed> {
        let n = o.bytes();
        loop {
            let room = self.to_session.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let s = lock(&self.state);
                if s.closed {
                    return Err(Closed);
                }
                if self.fits(&s, n) {
                    self.push_locked(s, o);
                    return Ok(());
                }
            }
            room.await;
        }
    }

    /// Queues `o` if there is room now (replies that may be skipped); whether it was queued.
    pub fn try_push(&self, o: Outbound) -> bool {
        let s = lock(&self.state);
        if s.closed || !self.fits(&s, o.bytes()) {
            return false;
        }
        self.push_locked(s, o);
        true
    }

    /// Queues a close (it takes no room, and nothing queued after it is written).
    pub fn push_close(&self, code: u16, reason: &'static str) {
        let s = lock(&self.state);
        if !s.closed {
            self.push_locked(s, Outbound::Close(code, reason));
        }
    }

    /// Moves up to `max` queued items into `into`, waiting for one; `false` once the queue is
    /// closed and empty.
    pub async fn take(&self, into: &mut Vec<Outbound>, max: usize) -> bool {
        loop {
            let ready = self.to_writer.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            // An idle connection holds no queue: `try_take` frees it once empty.
            if self.try_take(into, max) {
                return true;
            }
            if self.is_closed() {
                return false;
            }
            ready.await;
        }
    }

    /// Like [`take`](Self::take), without waiting: whether something was taken.
    pub fn try_take(&self, into: &mut Vec<Outbound>, max: usize) -> bool {
        let mut s = lock(&self.state);
        if s.items.is_empty() {
            return false;
        }
        let k = s.items.len().min(max.max(1));
        into.extend(s.items.drain(..k));
        if s.items.is_empty() {
            s.items = VecDeque::new();
        }
        true
    }

    /// Resolves once the queue is closed (shed, or the connection is ending).
    pub async fn closed(&self) {
        loop {
            let woken = self.to_writer.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.is_closed() {
                return;
            }
            woken.await;
        }
    }

    /// The writer wrote `n` bytes it had taken.
    pub fn written(&self, n: usize) {
        {
            let mut s = lock(&self.state);
            s.bytes = s.bytes.saturating_sub(n);
        }
        self.outbox.sub(n);
        self.to_session.notify_one();
    }

    /// Closes the queue: what is queued is dropped, the session's pushes fail.
    pub fn close(&self) {
        let dropped = {
            let mut s = lock(&self.state);
            s.closed = true;
            let queued: usize = s.items.iter().map(Outbound::bytes).sum();
            s.items = VecDeque::new();
            s.bytes -= queued.min(s.bytes);
            queued
        };
        self.outbox.sub(dropped);
        self.to_writer.notify_waiters();
        self.to_writer.notify_one();
        self.to_session.notify_waiters();
        self.to_session.notify_one();
    }

    /// Sheds this connection; `false` if it was already closed.
    fn shed(&self) -> bool {
        {
            let mut s = lock(&self.state);
            if s.closed {
                return false;
            }
            s.shed = true;
        }
        self.close();
        true
    }
}

impl Drop for OutQueue {
    fn drop(&mut self) {
        let s = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        self.outbox.sub(s.bytes);
        lock(&self.outbox.queues).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::Wire;

    fn frame(n: usize) -> Outbound {
        Outbound::Frame(Outgoing::control(Wire::text(&"x".repeat(n)), "events"))
    }

    #[tokio::test]
    async fn bounded_in_bytes_and_items_and_a_large_frame_goes_alone() {
        let outbox = Outbox::new(1 << 30);
        let q = OutQueue::new(&outbox, 4, 1000);
        assert!(q.try_push(frame(600)));
        assert!(!q.try_push(frame(600)), "over the byte bound");
        assert!(q.try_push(frame(100)));
        let mut got = Vec::new();
        assert!(q.take(&mut got, 64).await);
        assert_eq!(got.len(), 2);
        // Taken but not written: still counted.
        assert!(!q.try_push(frame(600)));
        let n: usize = got.drain(..).map(|o| o.bytes()).sum();
        q.written(n);
        assert_eq!(outbox.bytes(), 0);
        assert!(
            q.try_push(frame(5000)),
            "alone, a frame over the bound is queued"
        );
        assert!(!q.try_push(frame(1)));
        assert!(q.take(&mut got, 64).await);
        q.written(got.drain(..).map(|o| o.bytes()).sum());
        for _ in 0..4 {
            assert!(q.try_push(frame(1)));
        }
        assert!(!q.try_push(frame(1)), "over the item bound");
    }

    #[tokio::test]
    async fn push_waits_for_room_and_fails_once_closed() {
        let outbox = Outbox::new(1 << 30);
        let q = OutQueue::new(&outbox, 32, 1000);
        q.push(frame(900)).await.unwrap();
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move { q.push(frame(900)).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let mut got = Vec::new();
        q.take(&mut got, 64).await;
        q.written(got.drain(..).map(|o| o.bytes()).sum());
        waiting.await.unwrap().unwrap();
        q.close();
        assert_eq!(q.push(frame(1)).await, Err(Closed));
        assert!(!q.take(&mut got, 64).await, "closed and empty");
        assert_eq!(outbox.bytes(), 0, "what was queued is released");
    }

    #[tokio::test]
    async fn over_the_budget_the_connection_holding_most_is_shed() {
        let outbox = Outbox::new(2500);
        let slow = OutQueue::new(&outbox, 32, 4000);
        let fast = OutQueue::new(&outbox, 32, 4000);
        slow.push(frame(1000)).await.unwrap();
        slow.push(frame(1000)).await.unwrap();
        fast.push(frame(400)).await.unwrap();
        assert_eq!(outbox.sheds(), 0);
        // Over the budget: the slow one goes, whoever pushed.
        fast.push(frame(400)).await.unwrap();
        assert!(slow.was_shed() && slow.is_closed());
        assert!(!fast.was_shed());
        assert_eq!(outbox.sheds(), 1);
        assert_eq!(outbox.bytes(), 2 * frame(400).bytes());
        assert_eq!(slow.push(frame(1)).await, Err(Closed));
        drop(fast);
        assert_eq!(outbox.bytes(), 0, "a dropped queue releases what it held");
    }
}
