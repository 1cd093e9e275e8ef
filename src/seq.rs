//! Per-thread sequence tracking in bounded memory. Each thread's last sequence is kept in an
//! LRU map keyed by a 64-bit hash of the thread id (so a 256-byte id costs 16 bytes); the least
//! recently seen threads are evicted past the capacity. Results are counted by kind only: no
//! thread id ever becomes a metric label.

use lru::LruCache;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::num::NonZeroUsize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqOutcome {
    /// `sequence` is 0: the producer does not sequence this thread.
    Unsequenced,
    /// First event seen for this thread (or seen again after eviction).
    First,
    InOrder,
    /// `missing` sequence numbers were skipped.
    Gap {
        missing: u64,
    },
    Duplicate,
    /// Older than the last one seen (and not equal). The tracker resynchronises on it: a
    /// producer that restarted a thread at 1 shows one `Reorder`, then `InOrder` again.
    Reorder,
}

/// The 64-bit key a thread id is tracked under.
pub fn thread_hash(thread_id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    thread_id.hash(&mut h);
    h.finish()
}

pub struct SequenceTracker {
    last: LruCache<u64, u64>,
    evictions: u64,
}

impl SequenceTracker {
    pub fn new(capacity: usize) -> Self {
        Self {
            last: LruCache::new(NonZeroUsize::new(capacity.max(1)).expect("non-zero")),
            evictions: 0,
        }
    }

    pub fn observe(&mut self, thread_id: &str, sequence: u64) -> SeqOutcome {
        self.observe_hash(thread_hash(thread_id), sequence)
    }

    /// Same as [`observe`](Self::observe), for a thread id already hashed with
    /// [`thread_hash`].
    pub fn observe_hash(&mut self, key: u64, sequence: u64) -> SeqOutcome {
        if sequence == 0 {
            return SeqOutcome::Unsequenced;
        }
        match self.last.get_mut(&key) {
            None => {
                if self.last.push(key, sequence).is_some_and(|(k, _)| k != key) {
                    self.evictions += 1;
                }
                SeqOutcome::First
            }
            Some(last) => {
                let prev = *last;
                if sequence == prev + 1 {
                    *last = sequence;
                    SeqOutcome::InOrder
                } else if sequence > prev + 1 {
                    *last = sequence;
                    SeqOutcome::Gap {
                        missing: sequence - prev - 1,
                    }
                } else if sequence == prev {
                    SeqOutcome::Duplicate
                } else {
                    *last = sequence;
                    SeqOutcome::Reorder
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
    /// Threads forgotten to stay within capacity, since creation.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        let mut t = SequenceTracker::new(10);
        assert_eq!(t.observe("a", 0), SeqOutcome::Unsequenced);
        assert_eq!(t.observe("a", 1), SeqOutcome::First);
        assert_eq!(t.observe("a", 2), SeqOutcome::InOrder);
        assert_eq!(t.observe("a", 5), SeqOutcome::Gap { missing: 2 });
        assert_eq!(t.observe("a", 5), SeqOutcome::Duplicate);
        assert_eq!(t.observe("a", 3), SeqOutcome::Reorder);
        // Resynchronised: a thread restarted by its producer is in order again at once.
        assert_eq!(t.observe("a", 4), SeqOutcome::InOrder);
        assert_eq!(t.observe("a", 6), SeqOutcome::Gap { missing: 1 });
    }

    #[test]
    fn memory_is_bounded() {
        let mut t = SequenceTracker::new(100);
        for i in 0..1000 {
            t.observe(&format!("thread-{i}"), 1);
        }
        assert_eq!(t.len(), 100);
        assert_eq!(t.evictions(), 900);
    }
}
