//! The one envelope for events on their way from the collector to a model: a [`Batch`] is one
//! heap's events in time order, and a stream of [`Message`]s carries them, the same on both
//! paths. Over the socket (`heaplens record`, `heaplens run`) [`crate::wire`] frames them; in
//! process (the demo, `collector::subscribe`) they travel on a channel as they are.
//!
//! The collector hands its sink a [`BatchRef`] (the events in place, not copied: the socket
//! sends them from the collector's own buffers); a consumer that keeps them takes a [`Batch`].

use crate::event::Event;

/// Events of one heap (thread), in time order; heap 0 holds the collector's own events
/// (censuses, thread names, modules, drop counts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The heap the events come from; 0 for process-level events.
    pub heap: u32,
    /// The events.
    pub events: Vec<Event>,
}

/// A [`Batch`] borrowed from where the collector keeps it.
#[derive(Clone, Copy, Debug)]
pub struct BatchRef<'a> {
    /// The heap the events come from; 0 for process-level events.
    pub heap: u32,
    /// The events.
    pub events: &'a [Event],
}

impl BatchRef<'_> {
    /// The batch, copied.
    pub fn to_batch(self) -> Batch {
        Batch {
            heap: self.heap,
            events: self.events.to_vec(),
        }
    }
}

/// What a stream from the collector carries, in this order: the process's metadata (over the
/// socket; an in-process stream has none), batches, and the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// The process's metadata (JSON: pid, command line, start time, allocator geometry).
    Meta(String),
    /// Events of one heap.
    Batch(Batch),
    /// Recording ended (the process exits, or the collector was shut down); nothing follows.
    End,
    /// The process exits with this status (over the socket only, just before `End`, when the C
    /// library told it: `exit`'s argument or `main`'s return value).
    Exit(i32),
}
