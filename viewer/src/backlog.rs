//! A queue bounded by bytes, not by items: the backlog between the thread that reads a program's
//! stream and the recorder, so the reader can take everything the program sends as fast as it
//! comes while the encoder catches up later (after the program has exited, if need be); also the
//! queues in front of the recorder's helper threads (counted in items, one "byte" each).
//!
//! When the queue holds its budget the reader waits, so the program waits too (its hook applies
//! back-pressure): nothing is ever dropped. Each wait is counted so the recorder can say so.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

struct State<T> {
    items: VecDeque<(T, usize)>,
    bytes: usize,
    peak: usize,
    waits: u64,
    senders: bool,
    receiver: bool,
    /// Whether the receiver (sender) sleeps on `ready` (`room`): a notification is a system
    /// call, made only then (once per item cost the reader a tenth of its time).
    receiver_asleep: bool,
    /// Senders waiting for room (several threads may share one `Sender` through an `Arc`).
    senders_asleep: usize,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Signalled when the queue is down to half its budget or the receiver goes.
    room: Condvar,
    /// Signalled when an item arrives or the sender goes.
    ready: Condvar,
    budget: usize,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The reader's end.
pub struct Sender<T>(Arc<Shared<T>>);

/// The recorder's end.
pub struct Receiver<T>(Arc<Shared<T>>);

/// A backlog of at most `budget` bytes (an item larger than the budget is still taken when
/// the queue is empty).
pub fn backlog<T>(budget: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            bytes: 0,
            peak: 0,
            waits: 0,
            senders: true,
            receiver: true,
            receiver_asleep: false,
            senders_asleep: 0,
        }),
        room: Condvar::new(),
        ready: Condvar::new(),
        budget,
    });
    (Sender(Arc::clone(&shared)), Receiver(shared))
}

impl<T> Sender<T> {
    /// Queues `item`, which holds `bytes` bytes, waiting while the queue holds its budget.
    /// Gives the item back if the receiver is gone.
    pub fn send(&self, item: T, bytes: usize) -> Result<(), T> {
        let mut s = self.0.lock();
        let mut waited = false;
        while s.receiver && !s.items.is_empty() && s.bytes + bytes > self.0.budget {
            waited = true;
            s.senders_asleep += 1;
            s = self.0.room.wait(s).unwrap_or_else(PoisonError::into_inner);
            s.senders_asleep -= 1;
        }
        if !s.receiver {
            return Err(item);
        }
        s.waits += u64::from(waited);
        self.push(s, item, bytes);
        Ok(())
    }

    /// Queues `item` under the lock `s`, then wakes the receiver if it sleeps.
    fn push(&self, mut s: MutexGuard<'_, State<T>>, item: T, bytes: usize) {
        s.bytes += bytes;
        s.peak = s.peak.max(s.bytes);
        s.items.push_back((item, bytes));
        let wake = s.receiver_asleep;
        drop(s);
        if wake {
            self.0.ready.notify_one();
        }
    }

    /// Bytes queued now.
    pub fn queued(&self) -> usize {
        self.0.lock().bytes
    }

    /// Queues `item` if it fits now; gives it back otherwise (or if the receiver is gone).
    #[cfg(test)]
    pub fn try_send(&self, item: T, bytes: usize) -> Result<(), T> {
        let s = self.0.lock();
        if !s.receiver || (!s.items.is_empty() && s.bytes + bytes > self.0.budget) {
            return Err(item);
        }
        self.push(s, item, bytes);
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.0.lock().senders = false;
        self.0.ready.notify_all();
    }
}

/// How full a backlog has been.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// The most bytes it held at once.
    pub peak: usize,
    /// How many times the sender had to wait for room.
    pub waits: u64,
    /// The budget.
    pub budget: usize,
}

impl<T> Receiver<T> {
    /// The next item, waiting for one; `None` once the sender is gone and the queue is empty.
    pub fn recv(&self) -> Option<T> {
        let mut s = self.0.lock();
        loop {
            if let Some((item, bytes)) = s.items.pop_front() {
                s.bytes -= bytes;
                // Waiting senders wake once the queue is down to half its budget, not at every
                // item taken: woken at every item, a sender that is always ahead sends one more
                // and sleeps again, two context switches an item (the keyframe model's queue:
                // a tenth of the model thread's time in futex calls on binary trees).
                let wake = s.senders_asleep > 0 && s.bytes <= self.0.budget / 2;
                drop(s);
                if wake {
                    self.0.room.notify_all();
                }
                return Some(item);
            }
            if !s.senders {
                return None;
            }
            s.receiver_asleep = true;
            s = self.0.ready.wait(s).unwrap_or_else(PoisonError::into_inner);
            s.receiver_asleep = false;
        }
    }

    /// Bytes queued now.
    pub fn queued(&self) -> usize {
        self.0.lock().bytes
    }

    /// How full the backlog has been so far.
    pub fn usage(&self) -> Usage {
        let s = self.0.lock();
        Usage {
            peak: s.peak,
            waits: s.waits,
            budget: self.0.budget,
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.0.lock().receiver = false;
        self.0.room.notify_all();
    }
}

impl<T> Iterator for &Receiver<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.recv()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_arrive_in_order_and_the_end_follows_the_last() {
        let (tx, rx) = backlog(100);
        for i in 0..5 {
            tx.send(i, 10).unwrap();
        }
        drop(tx);
        assert_eq!(rx.drain_all(), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn the_budget_bounds_what_is_queued_and_nothing_is_dropped() {
        let (tx, rx) = backlog(100);
        for i in 0..10 {
            tx.try_send(i, 10).unwrap();
        }
        assert_eq!(tx.try_send(10, 1), Err(10), "a full backlog refuses");
        assert_eq!(rx.queued(), 100);
        assert_eq!(rx.recv(), Some(0));
        tx.try_send(10, 10).unwrap();
        // An item larger than the budget is taken when the queue is empty, never refused
        // forever.
        let (big_tx, big_rx) = backlog(10);
        big_tx.try_send("big", 1000).unwrap();
        assert_eq!(big_rx.recv(), Some("big"));

        // A sender that blocks on a full backlog goes on as the receiver takes items, and
        // every item arrives: the queue never held more than its budget.
        let (tx, rx) = backlog::<u32>(64);
        let producer = std::thread::spawn(move || {
            for i in 0..10_000 {
                tx.send(i, 16).unwrap();
            }
        });
        let got = rx.drain_all();
        producer.join().unwrap();
        assert_eq!(got, (0..10_000).collect::<Vec<_>>());
        let usage = rx.usage();
        assert!(usage.peak <= 64, "{usage:?}");
    }

    #[test]
    fn senders_sharing_one_sender_all_wake_and_nothing_is_lost() {
        // The launcher's readers (one per process) share the sender: several wait on a full
        // backlog at once, and each must be woken as room appears, or one sleeps forever.
        let (tx, rx) = backlog::<u32>(32);
        let tx = std::sync::Arc::new(tx);
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let tx = std::sync::Arc::clone(&tx);
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        tx.send(p * 10_000 + i, 16).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        let mut got = rx.drain_all();
        for p in producers {
            p.join().unwrap();
        }
        got.sort_unstable();
        let want: Vec<u32> = (0..4)
            .flat_map(|p| (0..5_000).map(move |i| p * 10_000 + i))
            .collect();
        assert_eq!(got, want);
        assert!(rx.usage().peak <= 32);
    }

    #[test]
    fn a_receiver_that_goes_away_releases_a_waiting_sender() {
        let (tx, rx) = backlog(10);
        tx.send(1, 10).unwrap();
        let producer = std::thread::spawn(move || tx.send(2, 10));
        drop(rx);
        assert_eq!(producer.join().unwrap(), Err(2));
    }

    impl<T> Receiver<T> {
        fn drain_all(&self) -> Vec<T> {
            self.collect()
        }
    }
}
