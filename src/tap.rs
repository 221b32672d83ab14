//! The viewer's side of a live stream (`heaplens run`, `heaplens attach`): it never blocks the
//! stream's reader; batches that do not fit in the viewer's channel are counted, and a `Dropped`
//! note goes before the next batch that fits.
//!
//! The note is stamped with the latest time of the events it stands for, not the next batch's:
//! batches of different heaps arrive out of time order, so a lost batch can hold events later
//! than the first events after the gap, and the model judges which pages the loss may have
//! touched by that time (a page laid out at or before it may have lost events since).

use crossbeam_channel::{Sender, TrySendError};
use heaplens_alloc::batch::{Batch, Message};
use heaplens_alloc::event::{Event, EventKind, drop_reason};
use heaplens_viewer::source::Feed;

use crate::launch::{Frame, StreamItem};

/// See the module docs.
pub(crate) struct Tap<'a> {
    tx: &'a Sender<Feed>,
    /// Events missed since the last note.
    missed: u64,
    /// The latest time among them.
    missed_until: u64,
}

impl<'a> Tap<'a> {
    pub(crate) fn new(tx: &'a Sender<Feed>) -> Self {
        Self {
            tx,
            missed: 0,
            missed_until: 0,
        }
    }

    /// Passes one heap's batch on, or counts it as missed.
    pub(crate) fn send(&mut self, heap: u32, events: Vec<Event>) {
        if self.missed > 0 {
            let note = Event {
                kind: EventKind::Dropped as u8,
                aux: drop_reason::SUBSCRIBER,
                arg: self.missed,
                time: self.missed_until,
                ..Event::default()
            };
            match self.tx.try_send(Feed::from(Batch {
                heap: 0,
                events: vec![note],
            })) {
                Ok(()) => (self.missed, self.missed_until) = (0, 0),
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.miss(&events);
                    return;
                }
            }
        }
        match self.tx.try_send(Feed::from(Batch { heap, events })) {
            Err(TrySendError::Full(f)) => {
                if let Feed::Message(Message::Batch(b)) = &f {
                    self.miss(&b.events);
                }
            }
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn miss(&mut self, events: &[Event]) {
        self.missed += events.len() as u64;
        let latest = events.iter().map(|e| e.time).max().unwrap_or(0);
        self.missed_until = self.missed_until.max(latest);
    }
}

/// Which frames of a launched command the viewer shows: the program's, from its latest
/// connection (a program that `exec`s connects again, and the viewer follows what it became:
/// a `python3` that is a pyenv shim runs bash, then the real interpreter).
pub(crate) struct Program {
    pid: i32,
    conn: u64,
}

impl Program {
    pub(crate) fn new(pid: u32) -> Self {
        Self {
            pid: i32::try_from(pid).unwrap_or(-1),
            conn: 0,
        }
    }

    /// The batch `frame` carries for the viewer, if any.
    pub(crate) fn batch<'f>(&mut self, frame: &'f Frame) -> Option<(u32, &'f Vec<Event>)> {
        if frame.pid != self.pid {
            return None;
        }
        match &frame.item {
            StreamItem::Message(Message::Meta(_)) => {
                self.conn = frame.conn;
                None
            }
            StreamItem::Message(Message::Batch(Batch { heap, events }))
                if frame.conn == self.conn =>
            {
                Some((*heap, events))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(times: &[u64]) -> Vec<Event> {
        times
            .iter()
            .map(|&time| Event {
                kind: EventKind::Alloc as u8,
                time,
                ..Event::default()
            })
            .collect()
    }

    fn take(rx: &crossbeam_channel::Receiver<Feed>) -> Batch {
        match rx.try_recv() {
            Ok(Feed::Message(Message::Batch(b))) => b,
            _ => panic!("a batch"),
        }
    }

    /// A full channel misses batches; the note before the next batch that fits counts them and
    /// carries the latest time among them, which can be later than the next batch's events.
    #[test]
    fn the_note_counts_what_was_missed_and_carries_its_latest_time() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let mut tap = Tap::new(&tx);
        tap.send(1, batch(&[10, 20]));
        tap.send(2, batch(&[30, 90, 40]));
        tap.send(3, batch(&[50]));
        assert_eq!(take(&rx).heap, 1);
        tap.send(4, batch(&[60, 70]));
        let note = take(&rx);
        assert_eq!(note.heap, 0);
        assert_eq!(note.events.len(), 1);
        let d = note.events[0];
        assert_eq!(d.kind, EventKind::Dropped as u8);
        assert_eq!(d.arg, 4, "the two missed batches' events");
        assert_eq!(
            d.time, 90,
            "the latest missed event, not the next batch's first"
        );
        // The batch that came with the note missed in turn (the channel held the note): the
        // next note stands for it alone.
        tap.send(5, batch(&[80]));
        let note = take(&rx);
        assert_eq!((note.events[0].arg, note.events[0].time), (2, 70));
        assert!(rx.is_empty());
    }

    /// The viewer follows the program through an `exec` (its new connection), and shows
    /// nothing of its earlier connection after that, nor of other processes.
    #[test]
    fn the_program_is_followed_to_its_latest_connection() {
        let frame = |conn: u64, pid: i32, item: StreamItem| Frame { conn, pid, item };
        let meta = || StreamItem::Message(Message::Meta("{}".into()));
        let batch = |heap: u32| {
            StreamItem::Message(Message::Batch(Batch {
                heap,
                events: batch(&[1]),
            }))
        };
        let frames = [
            frame(1, 7, meta()),
            frame(1, 7, batch(1)),
            frame(2, 8, meta()),
            frame(2, 8, batch(2)),
            frame(1, 7, StreamItem::Closed(None)),
            frame(3, 7, meta()),
            frame(3, 7, batch(3)),
            frame(1, 7, batch(4)),
            frame(3, 7, batch(5)),
        ];
        let mut program = Program::new(7);
        let shown: Vec<u32> = frames
            .iter()
            .filter_map(|f| program.batch(f).map(|(heap, _)| heap))
            .collect();
        assert_eq!(shown, [1, 3, 5]);
    }
}
