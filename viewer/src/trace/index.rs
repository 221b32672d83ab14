//! The chunk index: where each chunk is, which events and times it covers, and the keyframes.
//!
//! A finished trace stores it as its last chunk (an Index chunk: one 56-byte entry per earlier
//! chunk, the chunk's offset u64 followed by a copy of its 48-byte header). A reader that finds
//! no intact index rebuilds the same thing by scanning the chunks.

use super::encode::MIN_EVENT_BYTES;
use super::format::{
    CHUNK_HEADER_SIZE, ChunkDefect, ChunkHeader, ChunkType, Compression, MAX_CHUNK_EVENTS, u64_at,
};

/// Size of one index entry.
pub const ENTRY_SIZE: usize = 8 + CHUNK_HEADER_SIZE;

/// An Events chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    /// The chunk's number among all chunks of the file (as error messages count).
    pub number: usize,
    /// Where its header starts.
    pub offset: u64,
    /// Index of its first event in the trace.
    pub first_event: u64,
    /// Number of events.
    pub events: u32,
    /// Earliest event time (ns).
    pub start_time: u64,
    /// Latest event time (ns).
    pub end_time: u64,
    /// Payload bytes in the file.
    pub stored_len: u32,
    /// Payload bytes after decompression.
    pub raw_len: u32,
}

impl ChunkInfo {
    /// The events it holds, as trace event indices.
    pub fn event_range(&self) -> std::ops::Range<u64> {
        self.first_event..self.first_event + u64::from(self.events)
    }
}

/// A Keyframe chunk: a snapshot valid after the first `event_index` events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyframeInfo {
    /// The chunk's number among all chunks of the file.
    pub number: usize,
    /// Where its header starts.
    pub offset: u64,
    /// The snapshot is the state after this many events.
    pub event_index: u64,
    /// The time it corresponds to (ns).
    pub time: u64,
    /// Payload bytes after decompression.
    pub len: u32,
    /// Payload bytes in the file.
    pub stored_len: u32,
}

/// A chunk as the index lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) offset: u64,
    pub(crate) header: ChunkHeader,
}

/// Every chunk of a trace, with lookups by event index and time.
#[derive(Clone, Debug, Default)]
pub struct TraceIndex {
    pub(crate) entries: Vec<Entry>,
    chunks: Vec<ChunkInfo>,
    keyframes: Vec<KeyframeInfo>,
    end: Option<usize>,
    total_events: u64,
    end_time: u64,
    /// A damaged stretch was skipped: the next Events chunk may start past `total_events`.
    gap_open: bool,
}

impl TraceIndex {
    /// Adds the next chunk in file order, checking that it fits: event numbers continue, counts
    /// and lengths are within what a reader accepts. Index chunks are not added.
    pub(crate) fn push(&mut self, offset: u64, header: ChunkHeader) -> Result<(), ChunkDefect> {
        let number = self.entries.len();
        let compression = Compression::from_u8(header.compression)
            .ok_or(ChunkDefect::UnknownCompression(header.compression))?;
        if header.raw_len > header.max_raw_len()
            || (compression == Compression::None && header.stored_len != header.raw_len)
        {
            return Err(ChunkDefect::BadLength);
        }
        match header.kind() {
            Some(ChunkType::Events) => {
                let after_gap = self.gap_open && header.first_event > self.total_events;
                if header.first_event != self.total_events && !after_gap {
                    return Err(ChunkDefect::EventOrder);
                }
                let n = header.event_count;
                if n == 0
                    || n > MAX_CHUNK_EVENTS
                    || (n as usize).saturating_mul(MIN_EVENT_BYTES) > header.raw_len as usize
                {
                    return Err(ChunkDefect::BadLength);
                }
                if header.start_time > header.end_time {
                    return Err(ChunkDefect::BadPayload("time range reversed"));
                }
                self.chunks.push(ChunkInfo {
                    number,
                    offset,
                    first_event: header.first_event,
                    events: n,
                    start_time: header.start_time,
                    end_time: header.end_time,
                    stored_len: header.stored_len,
                    raw_len: header.raw_len,
                });
                self.total_events = header.first_event + u64::from(n);
                self.end_time = self.end_time.max(header.end_time);
                self.gap_open = false;
            }
            Some(ChunkType::Keyframe) => {
                let k = KeyframeInfo {
                    number,
                    offset,
                    event_index: header.first_event,
                    time: header.start_time,
                    len: header.raw_len,
                    stored_len: header.stored_len,
                };
                // Kept in event order (a writer adds them in order; a stable insert otherwise).
                let at = self
                    .keyframes
                    .partition_point(|x| x.event_index <= k.event_index);
                self.keyframes.insert(at, k);
            }
            Some(ChunkType::End) => {
                if self.end.is_some() {
                    return Err(ChunkDefect::BadPayload("a second End chunk"));
                }
                self.end = Some(number);
            }
            Some(ChunkType::Index) => return Err(ChunkDefect::BadPayload("an index in the index")),
            None => {} // a chunk type of a later version of v1: skipped
        }
        self.entries.push(Entry { offset, header });
        Ok(())
    }

    /// A damaged stretch of the file at `offset`, found by a scan and skipped: it counts as one
    /// chunk (so later chunks keep numbers close to the writer's), and the next Events chunk may
    /// start past the events seen so far (the damaged stretch held them).
    pub(crate) fn push_damaged(&mut self, offset: u64) {
        self.entries.push(Entry {
            offset,
            header: ChunkHeader::default(),
        });
        self.gap_open = true;
    }

    /// After a damaged stretch at the end of the events: the End or Index chunk that follows
    /// says how many events the trace held (`total`), and the numbering ends there.
    pub(crate) fn end_gap_at(&mut self, total: u64) {
        if self.gap_open && total > self.total_events {
            self.total_events = total;
        }
        self.gap_open = false;
    }

    /// Drops keyframes that refer to events the file does not hold (a recorder that stopped
    /// between writing a keyframe and the events before it).
    pub(crate) fn seal(&mut self) {
        let total = self.total_events;
        self.keyframes.retain(|k| k.event_index <= total);
    }

    /// The Index chunk payload.
    pub(crate) fn to_payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * ENTRY_SIZE);
        for e in &self.entries {
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&e.header.to_bytes());
        }
        out
    }

    /// Parses an Index chunk payload of a file whose chunks start at `data_start` and whose
    /// index chunk is at `index_offset`.
    pub(crate) fn from_payload(
        payload: &[u8],
        data_start: u64,
        index_offset: u64,
    ) -> Result<Self, ChunkDefect> {
        if !payload.len().is_multiple_of(ENTRY_SIZE) {
            return Err(ChunkDefect::BadPayload("index length"));
        }
        let mut index = Self::default();
        let mut next = data_start;
        for e in payload.chunks_exact(ENTRY_SIZE) {
            let offset = u64_at(e, 0);
            let mut h = [0u8; CHUNK_HEADER_SIZE];
            h.copy_from_slice(&e[8..]);
            let header = ChunkHeader::from_bytes(&h).ok_or(ChunkDefect::BadTag)?;
            if offset != next {
                return Err(ChunkDefect::BadPayload("index entries leave gaps"));
            }
            next = offset
                .checked_add(header.total_len())
                .filter(|&n| n <= index_offset)
                .ok_or(ChunkDefect::BadPayload("index entry past the index"))?;
            index.push(offset, header)?;
        }
        if next != index_offset {
            return Err(ChunkDefect::BadPayload("index does not cover the file"));
        }
        index.seal();
        Ok(index)
    }

    /// The End chunk's entry, if there is one.
    pub(crate) fn end_entry(&self) -> Option<(usize, Entry)> {
        self.end.map(|i| (i, self.entries[i]))
    }

    /// The Events chunks in order.
    pub fn chunks(&self) -> &[ChunkInfo] {
        &self.chunks
    }

    /// The keyframes, in event order.
    pub fn keyframes(&self) -> &[KeyframeInfo] {
        &self.keyframes
    }

    /// Number of chunks of every type (not counting an index chunk).
    pub fn chunk_count(&self) -> usize {
        self.entries.len()
    }

    /// The number of the event after the last readable one: the events of all Events chunks,
    /// and those of damaged stretches between them.
    pub fn total_events(&self) -> u64 {
        self.total_events
    }

    /// The latest event time (ns since recording started; 0 without events).
    pub fn end_time(&self) -> u64 {
        self.end_time
    }

    /// The Events chunk holding event `index`, or after a damaged stretch holding it, the first
    /// chunk after the damage.
    pub fn chunk_of_event(&self, index: u64) -> Option<usize> {
        let i = self
            .chunks
            .partition_point(|c| c.first_event + u64::from(c.events) <= index);
        (i < self.chunks.len()).then_some(i)
    }

    /// The first Events chunk with events at or after `time`.
    pub fn chunk_at_time(&self, time: u64) -> Option<usize> {
        let i = self.chunks.partition_point(|c| c.end_time < time);
        (i < self.chunks.len()).then_some(i)
    }

    /// The latest keyframe at or before event `index` (the state after at most `index` events).
    pub fn keyframe_before_event(&self, index: u64) -> Option<&KeyframeInfo> {
        let i = self.keyframes.partition_point(|k| k.event_index <= index);
        i.checked_sub(1).map(|i| &self.keyframes[i])
    }

    /// The latest keyframe whose time is at or before `time`.
    pub fn keyframe_before_time(&self, time: u64) -> Option<&KeyframeInfo> {
        self.keyframes.iter().rev().find(|k| k.time <= time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(first: u64, n: u32, t0: u64, t1: u64) -> ChunkHeader {
        ChunkHeader {
            chunk_type: ChunkType::Events as u8,
            compression: 1,
            raw_len: n * 10,
            stored_len: n * 3,
            event_count: n,
            first_event: first,
            start_time: t0,
            end_time: t1,
            ..ChunkHeader::default()
        }
    }

    fn keyframe(at: u64, t: u64) -> ChunkHeader {
        ChunkHeader {
            chunk_type: ChunkType::Keyframe as u8,
            raw_len: 4,
            stored_len: 4,
            first_event: at,
            start_time: t,
            end_time: t,
            ..ChunkHeader::default()
        }
    }

    #[test]
    fn lookups_and_round_trip() {
        let mut ix = TraceIndex::default();
        let mut off = 30;
        for h in [
            events(0, 100, 0, 10),
            keyframe(100, 10),
            events(100, 50, 10, 20),
            keyframe(150, 20),
            events(150, 10, 30, 40),
        ] {
            ix.push(off, h).unwrap();
            off += h.total_len();
        }
        assert_eq!(ix.total_events(), 160);
        assert_eq!(ix.end_time(), 40);
        assert_eq!(ix.chunk_of_event(0), Some(0));
        assert_eq!(ix.chunk_of_event(99), Some(0));
        assert_eq!(ix.chunk_of_event(100), Some(1));
        assert_eq!(ix.chunk_of_event(159), Some(2));
        assert_eq!(ix.chunk_of_event(160), None);
        assert_eq!(ix.chunk_at_time(15), Some(1));
        assert_eq!(ix.chunk_at_time(25), Some(2));
        assert_eq!(ix.chunk_at_time(41), None);
        assert_eq!(ix.keyframe_before_event(99), None);
        assert_eq!(ix.keyframe_before_event(120).unwrap().event_index, 100);
        assert_eq!(ix.keyframe_before_event(150).unwrap().event_index, 150);
        assert_eq!(ix.keyframe_before_time(19).unwrap().time, 10);
        let back = TraceIndex::from_payload(&ix.to_payload(), 30, off).unwrap();
        assert_eq!(back.entries, ix.entries);
        assert_eq!(back.chunks(), ix.chunks());
        assert!(TraceIndex::from_payload(&ix.to_payload(), 30, off + 1).is_err());
        assert!(TraceIndex::from_payload(&ix.to_payload(), 31, off).is_err());
    }

    #[test]
    fn rejects_out_of_sequence_and_oversized_chunks() {
        let mut ix = TraceIndex::default();
        assert_eq!(ix.push(0, events(5, 1, 0, 0)), Err(ChunkDefect::EventOrder));
        let mut h = events(0, 1, 0, 0);
        h.event_count = MAX_CHUNK_EVENTS + 1;
        assert_eq!(ix.push(0, h), Err(ChunkDefect::BadLength));
        let mut h = events(0, 10, 0, 0);
        h.raw_len = 9; // ten events need at least ten bytes (an op each)
        assert_eq!(ix.push(0, h), Err(ChunkDefect::BadLength));
        let mut h = events(0, 1, 0, 0);
        h.compression = 9;
        assert_eq!(ix.push(0, h), Err(ChunkDefect::UnknownCompression(9)));
    }
}
