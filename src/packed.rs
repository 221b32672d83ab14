//! A batch as it waits packed ([`heaplens_alloc::pack`]) in the backlog. Its bytes stay where
//! they are (a slab the reader read them into, or a vector of their own) from the socket to
//! whoever unpacks them, once: `heaplens record`'s trace writer helpers as they encode them, or
//! the consumer of [`crate::launch::Frames::recv`].
//!
//! Nothing checks a batch before it is unpacked: a check reads every control word in turn, one
//! after another, as unpacking does, and cost as much (`heaplens record` of larson, 10
//! alternating pairs: 1.03x the wall time with the reader checking each batch, 0.89x without).
//! A batch that turns out damaged keeps its length, so that whoever counted its events counts
//! right: the events from the damage on each become one lost event (`Dropped`, reason
//! `damaged`), and the launch's [`Damage`] says what was lost and why.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use heaplens_alloc::event::{Event, drop_reason};
use heaplens_alloc::pack::{self, Form, Packed};
use heaplens_alloc::schema;
use heaplens_alloc::wire;
use heaplens_viewer::trace::SharedEvents;

use crate::slab::SlabBytes;

/// What arrived damaged in one launch's streams.
#[derive(Debug, Default)]
pub struct Damage {
    batches: AtomicU64,
    events: AtomicU64,
    first: OnceLock<String>,
}

impl Damage {
    /// Batches and events that arrived damaged, and why the first one was refused; `None` if
    /// none did.
    pub fn seen(&self) -> Option<(u64, u64, &str)> {
        let first = self.first.get()?;
        Some((
            self.batches.load(Ordering::Relaxed),
            self.events.load(Ordering::Relaxed),
            first,
        ))
    }

    /// In words, for the end of a command: `None` if nothing arrived damaged.
    pub fn note(&self) -> Option<String> {
        let (batches, events, first) = self.seen()?;
        Some(format!(
            "{events} events in {batches} batches arrived damaged and are recorded as lost \
             (the first: {first})"
        ))
    }
}

/// Where a packed batch's bytes are kept.
#[derive(Debug)]
enum Bytes {
    /// As they came from the socket, in a slab of the backlog, and how the peer packed them.
    Slab(SlabBytes, Form),
    /// Packed here (a version 1 peer's batch).
    Owned(Packed),
}

/// One heap's batch of events, packed.
#[derive(Debug)]
pub struct PackedBatch {
    /// The heap of the batch.
    pub heap: u32,
    /// How many events.
    count: usize,
    bytes: Bytes,
    /// Where it says that it was damaged.
    damage: Arc<Damage>,
}

impl PackedBatch {
    /// `count` events packed in `bytes` as the peer sent them, in `form`
    /// (they may yet turn out damaged: see the module docs), reporting damage to `damage`.
    pub fn came(
        heap: u32,
        count: usize,
        form: Form,
        bytes: SlabBytes,
        damage: &Arc<Damage>,
    ) -> Self {
        Self {
            heap,
            count,
            bytes: Bytes::Slab(bytes, form),
            damage: Arc::clone(damage),
        }
    }

    /// `events` packed, with `scratch` as room to pack in.
    pub fn pack(heap: u32, events: &[Event], scratch: &mut Vec<u8>, damage: &Arc<Damage>) -> Self {
        Self {
            heap,
            count: events.len(),
            bytes: Bytes::Owned(pack::pack(events, scratch)),
            damage: Arc::clone(damage),
        }
    }

    /// How many events it holds.
    pub fn len(&self) -> usize {
        self.count
    }

    /// The memory its bytes take.
    pub fn held(&self) -> usize {
        match &self.bytes {
            Bytes::Slab(b, _) => b.len(),
            Bytes::Owned(p) => p.capacity(),
        }
    }

    /// The packed bytes, and how they are packed.
    fn bytes(&self) -> (&[u8], Form) {
        match &self.bytes {
            Bytes::Slab(b, form) => (b, *form),
            Bytes::Owned(p) => (p.bytes(), p.form()),
        }
    }

    /// Unpacks the events into `events` (cleared first), for another thread to read. Exactly
    /// [`PackedBatch::len`] of them, damaged or not (see the module docs).
    pub fn unpack_into(&self, events: &mut Vec<Event>) {
        self.unpack_with(events, pack::unpack_bytes);
    }

    /// [`PackedBatch::unpack_into`] for the calling thread to read next (ordinary stores).
    pub fn unpack_here(&self, events: &mut Vec<Event>) {
        self.unpack_with(events, pack::unpack_here);
    }

    fn unpack_with(
        &self,
        events: &mut Vec<Event>,
        unpack: fn(&[u8], usize, Form, &mut Vec<Event>) -> Option<()>,
    ) {
        let (bytes, form) = self.bytes();
        if unpack(bytes, self.count, form, events).is_some() {
            return;
        }
        // The events before the damage stand; each one from it on is one lost event, at the
        // time of the last one that stands.
        events.truncate(self.count);
        let lost = self.count - events.len();
        let time = events.last().map_or(0, |e| e.time);
        let note = schema::Dropped {
            lost: 1,
            reasons: drop_reason::DAMAGED,
            flags: 0,
        }
        .into_event()
        .at(time);
        events.resize(self.count, note);
        let d = &self.damage;
        d.batches.fetch_add(1, Ordering::Relaxed);
        d.events.fetch_add(lost as u64, Ordering::Relaxed);
        let _ = d.first.set(wire::damaged(bytes, self.count).to_string());
    }
}

/// A batch shared with the trace writer: its helper unpacks it into room of its own as it
/// encodes it.
impl SharedEvents for PackedBatch {
    fn len(&self) -> usize {
        self.count
    }

    fn events<'a>(&'a self, room: &'a mut Vec<Event>) -> &'a [Event] {
        self.unpack_here(room);
        room
    }
}
