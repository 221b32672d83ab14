//! Live sources: events arrive over a channel and are applied to the model on a thread of their
//! own, so a burst never stalls the UI; the UI takes the lock only to draw. The producer is
//! either the socket of a launched program (the `heaplens` command wires it, adding the program's
//! status) or the collector's in-process subscription, whose channel of
//! [`Message`]s a [`Live`] reads as it is.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;
use heaplens_alloc::batch::{Batch, Message};

use super::{Status, View};

/// What a live view reads: the collector's stream, and what the launcher knows besides.
#[derive(Debug)]
pub enum Feed {
    /// From the collector (batches are applied; metadata and the end mark are not needed).
    Message(Message),
    /// The source's state changed (connected, exited, ended).
    Status(Status),
}

impl From<Message> for Feed {
    fn from(m: Message) -> Self {
        Self::Message(m)
    }
}

impl From<Batch> for Feed {
    fn from(b: Batch) -> Self {
        Self::Message(Message::Batch(b))
    }
}

/// Events applied per hold of the lock: about 50 µs of work at the model's 20 M events/s, under
/// half a millisecond where it is slower (a million live blocks on a busy machine ingest about
/// 3 M/s), so the UI waits at most that long for its frame, unless the ingest thread loses its
/// core while it holds the lock. Taking an uncontended lock costs tens of nanoseconds.
const SLICE: usize = 1024;

/// A view fed from a channel.
pub struct Live {
    view: Arc<Mutex<View>>,
    /// Set while the UI waits for the lock: the ingest thread lets it have the lock before
    /// taking it again (a mutex is not fair: a thread that unlocks and locks again at once
    /// can keep a waiter out for many slices, and the frame waits hundreds of milliseconds).
    ui_waiting: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

impl Live {
    /// Starts applying what arrives on `rx` ([`Feed`]s, or the collector's [`Message`]s
    /// straight from `collector::subscribe`). When every sender is gone the stream has ended.
    pub fn start<M: Into<Feed> + Send + 'static>(rx: Receiver<M>, what: &str) -> Self {
        let view = Arc::new(Mutex::new(View::new(Status::Waiting)));
        let ui_waiting = Arc::new(AtomicBool::new(false));
        let shared = (Arc::clone(&view), Arc::clone(&ui_waiting));
        let what = what.to_owned();
        let thread = std::thread::Builder::new()
            .name("heaplens-ingest".into())
            .spawn(move || ingest(&rx, &shared.0, &shared.1, &what))
            .ok();
        Self {
            view,
            ui_waiting,
            thread,
        }
    }

    /// The view, to draw from (held briefly: the ingest thread waits meanwhile, and lets the
    /// caller in at its next slice boundary).
    pub fn view(&self) -> MutexGuard<'_, View> {
        self.ui_waiting.store(true, Ordering::Release);
        let guard = self.view.lock().unwrap_or_else(PoisonError::into_inner);
        self.ui_waiting.store(false, Ordering::Release);
        guard
    }

    /// Whether the stream has ended and every event is applied.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

fn ingest<M: Into<Feed>>(
    rx: &Receiver<M>,
    view: &Mutex<View>,
    ui_waiting: &AtomicBool,
    what: &str,
) {
    // In a process that watches itself (the demo) the model's own allocations stay out of it.
    heaplens_alloc::hook::set_thread_traced(false);
    view.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .model
        .set_auto_resync(true);
    let lock = || view.lock().unwrap_or_else(PoisonError::into_inner);
    for msg in rx {
        match msg.into() {
            Feed::Message(Message::Batch(Batch { heap, events })) => {
                for slice in events.chunks(SLICE) {
                    let mut v = lock();
                    if v.status == Status::Waiting {
                        v.status = Status::Connected {
                            what: what.to_owned(),
                        };
                    }
                    v.apply_batch(heap, slice);
                    v.backlog = rx.len() as u64;
                    v.note_lag(heaplens_alloc::os::clock_ns());
                    drop(v);
                    // The UI asked for the lock: let it take it before the next slice.
                    while ui_waiting.load(Ordering::Acquire) {
                        std::thread::yield_now();
                    }
                }
            }
            Feed::Status(s) => lock().status = s,
            Feed::Message(Message::Meta(_) | Message::End | Message::Exit(_)) => {}
        }
    }
    let mut v = lock();
    v.model.finish();
    v.backlog = 0;
    if matches!(v.status, Status::Waiting | Status::Connected { .. }) {
        v.status = Status::Ended("the connection closed".to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heaplens_alloc::event::{Event, EventKind};

    #[test]
    fn events_are_applied_and_the_end_is_reported() {
        let (tx, rx) = crossbeam_channel::bounded(4);
        let live = Live::start(rx, "test");
        let mark = |t| Event {
            kind: EventKind::Mark as u8,
            addr: u64::from_le_bytes(*b"phase\0\0\0"),
            time: t,
            ..Event::default()
        };
        tx.send(Feed::from(Batch {
            heap: 1,
            events: vec![mark(10), mark(20)],
        }))
        .unwrap();
        tx.send(Feed::Status(Status::Exited(
            crate::trace::ExitStatus::Code(7),
        )))
        .unwrap();
        drop(tx);
        while !live.is_finished() {
            std::thread::yield_now();
        }
        let v = live.view();
        assert_eq!(v.applied, 2);
        assert_eq!(v.model.metrics().markers().len(), 2);
        assert_eq!(v.recent.len(), 2);
        assert_eq!(v.status.describe(), "process exited (code 7)");
    }
}
