//! The events the hook records: enough to rebuild every page's state exactly.
//!
//! Each event is a fixed 32-byte [`Event`] in a per-thread buffer; a buffer travels whole, with the
//! id of the heap (thread) that wrote it. Events of heap id 0 are process-level: written by the
//! collector (thread names, census, drop counts). Addresses name things: a block by its pointer, a page by
//! the address of its first block ([`crate::page::Page::start`]), a segment by its base. Times are
//! nanoseconds since the hook started, from a coarse clock the collector advances about
//! every millisecond (a precise timestamp per event would cost more than the `malloc` it records),
//! so events of different threads within one tick come in no particular order.
//!
//! What each kind's slots (`addr`, `arg`, `arg32`, `aux`, `flags`) hold, and how the trace
//! encoder codes them, is one table: [`crate::schema`] (with a typed view per kind).
//!
//! Stacks: each thread interns the stacks it captures as a tree of frames (node ids from one
//! process-wide counter, so an id names one node whatever thread made it). A node's
//! `StackFrame` is sent in the thread's own stream before the first event that uses it; an
//! `Alloc`'s `arg32` names the leaf (the frame that called `malloc`), the parents lead outwards.
//! `TRUNCATED` on the outermost node sent: the walk stopped early (depth limit, a frame that
//! failed a check), so frames beyond it are unknown. Modules are process-level events (heap 0)
//! from the collector: `Module`, its `ModuleRange`s and `ModuleText`s, before any stack that
//! uses an address in them is resolved (symbols are resolved by `heaplens`, never in the target).

/// One recorded event (32 bytes, little-endian on the wire in this field order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// [`EventKind`] as a byte.
    pub kind: u8,
    /// Kind-specific flag bits (see the `flags` module).
    pub flags: u8,
    /// Kind-specific small value (a bin).
    pub aux: u16,
    /// Kind-specific 32-bit value.
    pub arg32: u32,
    /// The address the event is about.
    pub addr: u64,
    /// Kind-specific 64-bit value.
    pub arg: u64,
    /// Nanoseconds since the hook started (coarse: see the module docs).
    pub time: u64,
}

impl Event {
    /// The first 8 bytes of an event in memory, as one word: `kind`, `flags`, `aux`, `arg32`.
    #[inline(always)]
    pub const fn head_word(kind: u8, flags: u8, aux: u16, arg32: u32) -> u64 {
        let a = aux.to_ne_bytes();
        let b = arg32.to_ne_bytes();
        u64::from_ne_bytes([kind, flags, a[0], a[1], b[0], b[1], b[2], b[3]])
    }

    /// The event of four words as it lies in memory: [`Event::head_word`], then `addr`, `arg`
    /// and `time`.
    #[inline(always)]
    #[must_use]
    pub const fn from_words(head: u64, addr: u64, arg: u64, time: u64) -> Self {
        let h = head.to_ne_bytes();
        Self {
            kind: h[0],
            flags: h[1],
            aux: u16::from_ne_bytes([h[2], h[3]]),
            arg32: u32::from_ne_bytes([h[4], h[5], h[6], h[7]]),
            addr,
            arg,
            time,
        }
    }
}

const _: () = {
    // `head_word` matches the field layout.
    assert!(core::mem::offset_of!(Event, kind) == 0);
    assert!(core::mem::offset_of!(Event, flags) == 1);
    assert!(core::mem::offset_of!(Event, aux) == 2);
    assert!(core::mem::offset_of!(Event, arg32) == 4);
    assert!(core::mem::offset_of!(Event, addr) == 8);
    assert!(core::mem::offset_of!(Event, arg) == 16);
    assert!(core::mem::offset_of!(Event, time) == 24);
};

/// Size of an encoded [`Event`].
pub const EVENT_SIZE: usize = 32;
const _: () = assert!(core::mem::size_of::<Event>() == EVENT_SIZE);

macro_rules! kinds {
    ($($(#[$doc:meta])* $name:ident = $v:expr,)*) => {
        /// What an [`Event`] records.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum EventKind { $($(#[$doc])* $name = $v,)* }

        impl EventKind {
            /// The kind for a byte, if it names one.
            pub const fn from_u8(v: u8) -> Option<Self> {
                match v { $($v => Some(Self::$name),)* _ => None }
            }
            /// The name, as written in logs and JSON.
            pub const fn name(self) -> &'static str {
                match self { $(Self::$name => stringify!($name),)* }
            }
        }
    };
}

kinds! {
    /// `malloc` and friends returned a block.
    Alloc = 1,
    /// A block was freed.
    Free = 2,
    /// `realloc` kept the block and changed its requested size.
    Resize = 3,
    /// `realloc` moved a block (after its `Alloc` and `Free`, which carry the `REALLOC` flag).
    Realloc = 4,
    /// A segment handed a page to a heap, which set it up for one block size.
    PageInit = 10,
    /// More blocks of a page were carved onto its `free` list.
    PageExtend = 11,
    /// `thread_free` moved to `local_free`, and `local_free` to `free`.
    PageCollect = 12,
    /// The page had no free block and moved to the heap's full queue.
    PageFull = 13,
    /// A block of a full page was freed: the page is back in its bin's queue.
    PageUnfull = 14,
    /// The page emptied and stays a little while for reuse.
    PageRetire = 15,
    /// The page went back to its segment.
    PageFree = 16,
    /// A heap took over a page of an abandoned segment.
    PageReclaim = 17,
    /// A segment was mapped (or taken from the cache).
    SegmentAlloc = 20,
    /// A segment was unmapped or cached.
    SegmentFree = 21,
    /// The owner thread exited; the segment waits for another thread.
    SegmentAbandon = 22,
    /// Another thread took the segment over.
    SegmentReclaim = 23,
    /// A thread's heap was created (carries the thread's name).
    ThreadStart = 30,
    /// A thread exited and its heap was abandoned.
    ThreadExit = 31,
    /// The name of a thread (a process-level event from the collector).
    ThreadName = 32,
    /// Memory was made available again after a purge.
    OsCommit = 40,
    /// Memory went back to the OS.
    OsPurge = 41,
    /// A user marker (`heaplens_alloc::mark`).
    Mark = 50,
    /// Events lost because the consumer was too slow (live mode only).
    Dropped = 51,
    /// Pairs the tick counter with CLOCK_MONOTONIC nanoseconds.
    ClockSync = 52,
    /// A census starts.
    CensusBegin = 60,
    /// One page in a census (first half).
    CensusPage = 61,
    /// One page in a census (second half).
    CensusPage2 = 62,
    /// A census ends.
    CensusEnd = 63,
    /// A segment in a census (before its pages).
    CensusSegment = 64,
    /// A node of a thread's tree of interned stack frames.
    StackFrame = 70,
    /// How stacks are captured (a process-level event, before the first stack).
    StackMode = 71,
    /// A module (executable or shared library) was loaded.
    Module = 72,
    /// An executable address range of a module.
    ModuleRange = 73,
    /// 16 bytes of a module's path or build id.
    ModuleText = 74,
    /// A module was unloaded (`dlclose`).
    ModuleGone = 75,
}

/// Flag bits of [`Event::flags`].
pub mod flags {
    /// Alloc: the block was zeroed.
    pub const ZERO: u8 = 1;
    /// Alloc: an over-aligned request.
    pub const ALIGNED: u8 = 2;
    /// Alloc/Free: part of a `realloc` that moved the block.
    pub const REALLOC: u8 = 4;
    /// Free: freed by a thread that does not own the page (pushed onto `thread_free`).
    pub const CROSS_THREAD: u8 = 8;
    /// Free: cross-thread into a full page: pushed onto the owner heap's delayed list.
    pub const TO_DELAYED: u8 = 16;
    /// Free: the owner freeing a block from its delayed list (onto `local_free`).
    pub const FROM_DELAYED: u8 = 32;
    /// Free (`CROSS_THREAD`, `TO_DELAYED`): the page's census epoch when the block was pushed
    /// (see `page::census_reading`); CensusPage2: the page's census epoch from this census on.
    /// A census's `thread_free` count holds exactly the cross-thread frees of the epoch before.
    pub const EPOCH: u8 = 64;
    /// SegmentFree: offered to the segment cache rather than unmapped (the cache may be full).
    pub const CACHED: u8 = 1;
    /// Mark, ThreadName: the text continues in the next event.
    pub const MORE: u8 = 1;
    /// CensusPage2: the page is in its heap's full queue.
    pub const IN_FULL: u8 = 1;
    /// CensusBegin: some segments were left out (they appeared while the census ran).
    pub const PARTIAL: u8 = 2;
    /// CensusBegin: the census taken when recording started (the state before it).
    pub const INITIAL: u8 = 4;
    /// CensusBegin, CensusEnd: one heap's part of a census, in that heap's own stream, taken at
    /// a point of its own event order (its pages only; `thread_free` is a reading, see
    /// `hook::census_point`).
    pub const HEAP_PART: u8 = 8;
    /// CensusBegin: a census whose pages come in each heap's part (`HEAP_PART`); the collector
    /// sends only its begin and end.
    pub const BY_HEAP: u8 = 16;
    /// CensusBegin, CensusEnd with `HEAP_PART`: the segment a heap just took over from a
    /// thread the trace did not follow, with its pages (`CensusSegment` first); the model takes
    /// them over as listed. With `HEAP_PART|INITIAL` instead: the heap's whole state (its
    /// segments and pages, none when tracing stops on its thread), taken over when tracing
    /// starts on a thread that had already allocated.
    pub const ADOPT: u8 = 32;
    /// StackFrame: the walk stopped at this frame; the frames beyond it are unknown.
    pub const TRUNCATED: u8 = 1;
}

/// Stack capture modes: the `aux` of a `StackMode` event.
pub mod stack_mode {
    /// No stacks.
    pub const OFF: u16 = 0;
    /// A stack for about one allocation per sampling interval of bytes (a Poisson process on
    /// bytes: each byte is sampled with probability 1/interval), and for every allocation of
    /// the interval or more. An unbiased estimate weighs a sampled allocation of `size` bytes
    /// as `1 / (1 - exp(-size / interval))` allocations when `size < interval`, as 1 otherwise.
    /// Allocations that were not sampled carry no stack (`arg32` 0).
    pub const SAMPLED: u16 = 1;
    /// A stack for every allocation.
    pub const ALL: u16 = 2;
}

/// What a `ModuleText` event carries: its `aux`.
pub mod module_text {
    /// The module's path.
    pub const PATH: u16 = 0;
    /// The module's GNU build id (raw bytes).
    pub const BUILD_ID: u16 = 1;
}

/// Why events were lost: the bits of a `Dropped` event's `aux`.
pub mod drop_reason {
    /// Emitted while the hook was already running on the thread, with its spill slots full.
    pub const NESTED: u16 = 1;
    /// No event buffer could be mapped (out of memory).
    pub const NO_BUFFER: u16 = 2;
    /// The consumer did not take the buffer: live mode and it fell behind, or recording stopped.
    pub const CONSUMER: u16 = 4;
    /// A subscriber's channel was full (in-process live mode).
    pub const SUBSCRIBER: u16 = 8;
    /// The batch reached the recorder damaged: the events from the damage on (one `Dropped`
    /// each, in the batch's place).
    pub const DAMAGED: u16 = 16;

    /// Names of the bits set in `bits`.
    pub fn names(bits: u16) -> impl Iterator<Item = &'static str> {
        [
            (NESTED, "nested"),
            (NO_BUFFER, "no_buffer"),
            (CONSUMER, "consumer"),
            (SUBSCRIBER, "subscriber"),
            (DAMAGED, "damaged"),
        ]
        .into_iter()
        .filter(move |(b, _)| bits & b != 0)
        .map(|(_, n)| n)
    }
}

impl Event {
    /// An all-zero event (usable in constants).
    pub const EMPTY: Self = Self {
        kind: 0,
        flags: 0,
        aux: 0,
        arg32: 0,
        addr: 0,
        arg: 0,
        time: 0,
    };
}

impl Event {
    /// The same event at `time`.
    #[inline(always)]
    #[must_use]
    pub const fn at(mut self, time: u64) -> Self {
        self.time = time;
        self
    }

    /// The kind, if the byte names one.
    pub fn event_kind(&self) -> Option<EventKind> {
        EventKind::from_u8(self.kind)
    }

    /// Encodes to 32 little-endian bytes.
    pub fn to_bytes(&self) -> [u8; EVENT_SIZE] {
        let mut b = [0u8; EVENT_SIZE];
        b[0] = self.kind;
        b[1] = self.flags;
        b[2..4].copy_from_slice(&self.aux.to_le_bytes());
        b[4..8].copy_from_slice(&self.arg32.to_le_bytes());
        b[8..16].copy_from_slice(&self.addr.to_le_bytes());
        b[16..24].copy_from_slice(&self.arg.to_le_bytes());
        b[24..32].copy_from_slice(&self.time.to_le_bytes());
        b
    }

    /// Decodes 32 little-endian bytes.
    pub fn from_bytes(b: &[u8; EVENT_SIZE]) -> Self {
        let u64_at = |i: usize| {
            u64::from_le_bytes([
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
                b[i + 4],
                b[i + 5],
                b[i + 6],
                b[i + 7],
            ])
        };
        Self {
            kind: b[0],
            flags: b[1],
            aux: u16::from_le_bytes([b[2], b[3]]),
            arg32: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            addr: u64_at(8),
            arg: u64_at(16),
            time: u64_at(24),
        }
    }

    /// Packs up to 16 bytes of text into `(addr, arg)` (thread names, marker labels).
    pub fn pack_text(text: &[u8]) -> (u64, u64) {
        let mut b = [0u8; 16];
        let n = text.len().min(16);
        b[..n].copy_from_slice(&text[..n]);
        let (lo, hi) = b.split_at(8);
        (
            u64::from_le_bytes(lo.try_into().unwrap_or([0; 8])),
            u64::from_le_bytes(hi.try_into().unwrap_or([0; 8])),
        )
    }

    /// The text packed in `addr` and `arg`, without trailing NULs.
    pub fn text(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..].copy_from_slice(&self.arg.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_bytes() {
        let e = Event {
            kind: EventKind::Alloc as u8,
            flags: flags::ZERO,
            aux: 7,
            arg32: 9,
            addr: 0xdead_beef_0000,
            arg: 48,
            time: u64::MAX - 1,
        };
        assert_eq!(Event::from_bytes(&e.to_bytes()), e);
        assert_eq!(e.event_kind(), Some(EventKind::Alloc));
        assert_eq!(EventKind::from_u8(0), None);
        assert_eq!(EventKind::from_u8(62), Some(EventKind::CensusPage2));
    }

    #[test]
    fn text_packs_into_two_words() {
        let (addr, arg) = Event::pack_text(b"worker-12");
        let e = Event {
            addr,
            arg,
            ..Event::default()
        };
        assert_eq!(&e.text()[..9], b"worker-12");
        assert_eq!(e.text()[9], 0);
    }
}
