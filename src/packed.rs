//! A batch as it waits packed ([`heaplens_alloc::pack`]) in the backlog. Its bytes stay where
//! they are (a slab the reader read them into, or a vector of their own) from the socket to the
//! recorder, which unpacks them once into a vector it reuses.

use heaplens_alloc::event::Event;
use heaplens_alloc::pack::{self, Packed};
use heaplens_alloc::wire::{self, WireError};

use crate::slab::SlabBytes;

/// Where a packed batch's bytes are kept.
#[derive(Debug)]
enum Bytes {
    /// As they came from the socket, in a slab of the backlog.
    Slab(SlabBytes),
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
}

impl PackedBatch {
    /// `count` events packed in `bytes` as the peer sent them (checked when unpacked).
    pub fn came(heap: u32, count: usize, bytes: SlabBytes) -> Self {
        Self {
            heap,
            count,
            bytes: Bytes::Slab(bytes),
        }
    }

    /// `events` packed, with `scratch` as room to pack in.
    pub fn pack(heap: u32, events: &[Event], scratch: &mut Vec<u8>) -> Self {
        Self {
            heap,
            count: events.len(),
            bytes: Bytes::Owned(pack::pack(events, scratch)),
        }
    }

    /// How many events it holds.
    pub fn len(&self) -> usize {
        self.count
    }

    /// The memory its bytes take.
    pub fn held(&self) -> usize {
        match &self.bytes {
            Bytes::Slab(b) => b.len(),
            Bytes::Owned(p) => p.capacity(),
        }
    }

    /// Unpacks the events into `events` (cleared first); an error if the bytes are damaged
    /// (`events` then holds the events before the damage).
    pub fn unpack_into(&self, events: &mut Vec<Event>) -> Result<(), WireError> {
        let bytes: &[u8] = match &self.bytes {
            Bytes::Slab(b) => b,
            Bytes::Owned(p) => p.bytes(),
        };
        wire::unpack_wire(bytes, self.count, events)
    }
}
