//! Reading a trace: header and index at open, chunks on demand.
//!
//! The file is untrusted. Every length is checked against the file's size and a fixed maximum
//! before anything is allocated; every chunk's checksum is verified before it is decoded. A file
//! without an intact index (the recorder was killed, or the file was cut or damaged) is scanned
//! chunk by chunk up to its end or the first incomplete chunk.
//!
//! A damaged chunk costs only its own events ([`Damage`]): a scan that meets one looks for the
//! next chunk that verifies and goes on there; a chunk found damaged when read (its checksum, its
//! decompression or its decoding fails) is recorded and the other chunks still read.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use heaplens_alloc::event::Event;

use super::damage::Damage;
use super::encode::Decoder;
use super::end::EndInfo;
use super::error::TraceError;
use super::format::{
    CHUNK_HEADER_SIZE, CHUNK_TAG, ChunkDefect, ChunkHeader, ChunkType, Compression,
    FILE_HEADER_FIXED, MAGIC, MAX_METADATA_LEN, MAX_PAYLOAD_LEN, TRAILER_SIZE, VERSION,
    parse_trailer, u32_at,
};
use super::index::{ChunkInfo, Entry, KeyframeInfo, TraceIndex};
use super::metadata::Metadata;

/// How much of the file is intact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Finished cleanly: End chunk, index and trailer are there.
    Complete,
    /// The data stops at byte `at` (the recorder stopped, or the file was cut); everything before
    /// reads.
    Truncated {
        /// Where the readable part ends.
        at: u64,
    },
    /// Chunk `chunk` (counting every chunk from 0) at byte `at` is damaged and no chunk after it
    /// verifies; everything before it reads.
    Corrupt {
        /// The chunk's number.
        chunk: usize,
        /// Where it starts.
        at: u64,
        /// What is wrong.
        defect: ChunkDefect,
    },
}

/// An open trace file.
pub struct TraceReader<R = BufReader<File>> {
    src: R,
    len: u64,
    version: u16,
    metadata: Metadata,
    index: TraceIndex,
    status: Status,
    damaged: Vec<Damage>,
    end: Option<EndInfo>,
    /// The Index chunk the file ends with, when it was read from there.
    index_chunk: Option<Entry>,
    stored: Vec<u8>,
    raw: Vec<u8>,
    decoder: Decoder,
}

impl TraceReader<BufReader<File>> {
    /// Opens a trace file: reads the header and the index (or rebuilds the index by scanning).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, TraceError> {
        let file = File::open(path)?;
        Self::new(BufReader::with_capacity(1 << 16, file))
    }
}

use heaplens_alloc::wire::read_full as read_up_to;

impl<R: Read + Seek> TraceReader<R> {
    /// Reads a trace from any seekable source (a file, a `Cursor` over bytes).
    pub fn new(mut src: R) -> Result<Self, TraceError> {
        let len = src.seek(SeekFrom::End(0))?;
        src.seek(SeekFrom::Start(0))?;
        let (version, metadata, data_start) = read_header(&mut src, len)?;
        let mut reader = Self {
            src,
            len,
            version,
            metadata,
            index: TraceIndex::default(),
            status: Status::Complete,
            damaged: Vec::new(),
            end: None,
            index_chunk: None,
            stored: Vec::new(),
            raw: Vec::new(),
            decoder: Decoder::for_version(version),
        };
        if !reader.load_index(data_start)? {
            reader.scan(data_start)?;
        }
        Ok(reader)
    }

    /// The format version the file was written with.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// What the trace was recorded from.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The chunk index (event chunks, keyframes, lookups).
    pub fn index(&self) -> &TraceIndex {
        &self.index
    }

    /// Where the Index chunk the file ends with starts, and its header: `None` unless the
    /// index was read from the file (not rebuilt by a scan).
    pub(crate) fn index_chunk(&self) -> Option<(u64, ChunkHeader)> {
        self.index_chunk.map(|e| (e.offset, e.header))
    }

    /// The Events chunks.
    pub fn chunks(&self) -> &[ChunkInfo] {
        self.index.chunks()
    }

    /// The keyframes, in event order.
    pub fn keyframes(&self) -> &[KeyframeInfo] {
        self.index.keyframes()
    }

    /// The number of the event after the last readable one (events lost to damage in the middle
    /// of the file count: trace event indices keep the writer's numbering).
    pub fn total_events(&self) -> u64 {
        self.index.total_events()
    }

    /// Damaged chunks in the middle of the file found so far, in file order: by the scan at open
    /// (a file without an intact index), and by reading chunks (a chunk is checked when read;
    /// read every chunk, as [`TraceReader::events`] does, to find all).
    pub fn damaged(&self) -> &[Damage] {
        &self.damaged
    }

    /// Events lost to the damage found so far.
    pub fn events_lost(&self) -> u64 {
        self.damaged.iter().map(Damage::events_lost).sum()
    }

    /// Verifies every chunk's header against the index and its checksum (no decompression),
    /// adding the damaged ones to [`TraceReader::damaged`]: what a reader that wants to say
    /// up front what is lost calls at open. Fails only if reading the file fails.
    pub fn verify_all(&mut self) -> Result<(), TraceError> {
        let entries = self.index.entries.clone();
        for (number, entry) in entries.into_iter().enumerate() {
            let Some(kind) = entry.header.kind() else {
                continue; // a damaged stretch the scan skipped (recorded), or an unknown type
            };
            self.src.seek(SeekFrom::Start(entry.offset))?;
            let mut hb = [0u8; CHUNK_HEADER_SIZE];
            self.src.read_exact(&mut hb)?;
            let defect = match ChunkHeader::from_bytes(&hb) {
                None => Some(ChunkDefect::BadTag),
                Some(h) if h != entry.header => Some(ChunkDefect::IndexMismatch),
                Some(h) => {
                    (!self.verify_streaming(&h, false)?).then_some(ChunkDefect::ChecksumMismatch)
                }
            };
            let Some(defect) = defect else {
                continue;
            };
            let h = entry.header;
            let events = match kind {
                ChunkType::Events => h.first_event..h.first_event + u64::from(h.event_count),
                _ => 0..0,
            };
            self.record(Damage {
                chunk: number,
                at: entry.offset,
                defect,
                events,
                start_time: h.start_time,
                end_time: h.end_time.max(h.start_time),
            });
        }
        Ok(())
    }

    /// Records damage found reading chunk `number` at `at` (once per chunk).
    fn record(&mut self, damage: Damage) {
        if let Err(i) = self.damaged.binary_search_by_key(&damage.at, |d| d.at) {
            self.damaged.insert(i, damage);
        }
    }

    /// Time of the last readable event (ns since recording started).
    pub fn duration_ns(&self) -> u64 {
        self.index.end_time()
    }

    /// How the recording ended, if the file says (a trace that was cut short does not).
    pub fn end_info(&self) -> Option<EndInfo> {
        self.end
    }

    /// How much of the file is intact.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Whether the writer finished the file and it is intact up to its index.
    pub fn is_complete(&self) -> bool {
        self.status == Status::Complete
    }

    /// What is missing or damaged, as a message for the user ("truncated at byte N; 1234567
    /// events up to 12.5 s are readable"); `None` for a complete file.
    pub fn damage(&self) -> Option<TraceError> {
        let problem = match self.status {
            Status::Complete => return None,
            Status::Truncated { at } => TraceError::Truncated { at },
            Status::Corrupt { chunk, at, defect } => TraceError::corrupt(chunk, at, defect),
        };
        Some(TraceError::Partial {
            problem: Box::new(problem),
            events: self.total_events() - self.events_lost().min(self.total_events()),
            until_ns: self.duration_ns(),
        })
    }

    /// The latest keyframe at or before event `index`.
    pub fn keyframe_before_event(&self, index: u64) -> Option<&KeyframeInfo> {
        self.index.keyframe_before_event(index)
    }

    /// The latest keyframe at or before `time`.
    pub fn keyframe_before_time(&self, time: u64) -> Option<&KeyframeInfo> {
        self.index.keyframe_before_time(time)
    }

    /// Where replay to event `index` starts: the latest keyframe at or before it, with its
    /// payload (`None`: start from the beginning of the trace).
    pub fn keyframe_for_event(
        &mut self,
        index: u64,
    ) -> Result<Option<(KeyframeInfo, Vec<u8>)>, TraceError> {
        let k = self
            .index
            .keyframes()
            .partition_point(|k| k.event_index <= index);
        let Some(k) = k.checked_sub(1) else {
            return Ok(None);
        };
        let info = self.index.keyframes()[k];
        Ok(Some((info, self.read_keyframe(k)?)))
    }

    /// The events of Events chunk `i` (see [`TraceReader::chunks`]), with their heap ids.
    pub fn read_chunk(&mut self, i: usize) -> Result<Vec<(u32, Event)>, TraceError> {
        let mut out = Vec::new();
        self.read_chunk_into(i, &mut out)?;
        Ok(out)
    }

    /// Like [`TraceReader::read_chunk`], into `out` (cleared first; reuse it to save allocations).
    /// A damaged chunk gives [`TraceError::CorruptChunk`] and is added to
    /// [`TraceReader::damaged`].
    pub fn read_chunk_into(
        &mut self,
        i: usize,
        out: &mut Vec<(u32, Event)>,
    ) -> Result<(), TraceError> {
        out.clear();
        let count = self.index.chunks().len();
        let info = *self
            .index
            .chunks()
            .get(i)
            .ok_or(TraceError::OutOfRange { index: i, count })?;
        let entry = self.index.entries[info.number];
        let read = self.load(info.number, entry).and_then(|()| {
            self.decoder
                .decode(&self.raw, info.events, out)
                .map_err(|what| {
                    TraceError::corrupt(info.number, info.offset, ChunkDefect::BadPayload(what))
                })
        });
        if let Err(TraceError::CorruptChunk { defect, .. }) = &read {
            out.clear();
            self.record(Damage {
                chunk: info.number,
                at: info.offset,
                defect: *defect,
                events: info.event_range(),
                start_time: info.start_time,
                end_time: info.end_time,
            });
        }
        read
    }

    /// The payload of keyframe `k` (see [`TraceReader::keyframes`]).
    pub fn read_keyframe(&mut self, k: usize) -> Result<Vec<u8>, TraceError> {
        let count = self.index.keyframes().len();
        let info = *self
            .index
            .keyframes()
            .get(k)
            .ok_or(TraceError::OutOfRange { index: k, count })?;
        let entry = self.index.entries[info.number];
        if let Err(e) = self.load(info.number, entry) {
            if let TraceError::CorruptChunk { defect, .. } = e {
                self.record(Damage {
                    chunk: info.number,
                    at: info.offset,
                    defect,
                    events: info.event_index..info.event_index,
                    start_time: info.time,
                    end_time: info.time,
                });
            }
            return Err(e);
        }
        Ok(std::mem::take(&mut self.raw))
    }

    /// The events with trace indices in `range` (clipped to the readable events; events lost to
    /// damage are left out, so the result may be shorter than the range).
    pub fn read_events(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<(u32, Event)>, TraceError> {
        let mut out = Vec::new();
        let end = range.end.min(self.total_events());
        if range.start >= end {
            return Ok(out);
        }
        let mut buf = Vec::new();
        let Some(first) = self.index.chunk_of_event(range.start) else {
            return Ok(out);
        };
        for i in first..self.index.chunks().len() {
            let info = self.index.chunks()[i];
            if info.first_event >= end {
                break;
            }
            match self.read_chunk_into(i, &mut buf) {
                Ok(()) => {}
                Err(TraceError::CorruptChunk { .. }) => continue, // recorded in `damaged`
                Err(e) => return Err(e),
            }
            let from = (range.start.saturating_sub(info.first_event) as usize).min(buf.len());
            let to = ((end - info.first_event) as usize).clamp(from, buf.len());
            out.extend_from_slice(&buf[from..to]);
        }
        Ok(out)
    }

    /// Every readable event in order, chunk by chunk. A damaged chunk gives one error in its
    /// place and the events of the next chunks follow; an I/O error ends the iteration.
    pub fn events(&mut self) -> Events<'_, R> {
        Events {
            reader: self,
            next_chunk: 0,
            buf: Vec::new(),
            pos: 0,
            done: false,
        }
    }

    /// Reads, checks and decompresses the chunk of `entry` into `self.raw`.
    fn load(&mut self, number: usize, entry: Entry) -> Result<(), TraceError> {
        let bad = |defect| TraceError::corrupt(number, entry.offset, defect);
        self.src.seek(SeekFrom::Start(entry.offset))?;
        let mut hb = [0u8; CHUNK_HEADER_SIZE];
        self.src.read_exact(&mut hb)?;
        let header = ChunkHeader::from_bytes(&hb).ok_or(bad(ChunkDefect::BadTag))?;
        if header != entry.header {
            return Err(bad(ChunkDefect::IndexMismatch));
        }
        // The index checked that the chunk lies inside the file.
        self.stored.resize(header.stored_len as usize, 0);
        self.src.read_exact(&mut self.stored)?;
        if header.compute_checksum(&self.stored) != header.checksum {
            return Err(bad(ChunkDefect::ChecksumMismatch));
        }
        decompress(&header, &mut self.stored, &mut self.raw).map_err(bad)
    }

    /// Reads the index a finished file ends with. False if there is none or it does not hold up
    /// (then the file is scanned).
    fn load_index(&mut self, data_start: u64) -> Result<bool, TraceError> {
        let min = data_start + (CHUNK_HEADER_SIZE + TRAILER_SIZE) as u64;
        if self.len < min {
            return Ok(false);
        }
        let trailer_at = self.len - TRAILER_SIZE as u64;
        self.src.seek(SeekFrom::Start(trailer_at))?;
        let mut tb = [0u8; TRAILER_SIZE];
        self.src.read_exact(&mut tb)?;
        let Some(index_at) = parse_trailer(&tb) else {
            return Ok(false);
        };
        if index_at < data_start || index_at > trailer_at - CHUNK_HEADER_SIZE as u64 {
            return Ok(false);
        }
        self.src.seek(SeekFrom::Start(index_at))?;
        let mut hb = [0u8; CHUNK_HEADER_SIZE];
        self.src.read_exact(&mut hb)?;
        let Some(header) = ChunkHeader::from_bytes(&hb) else {
            return Ok(false);
        };
        if header.kind() != Some(ChunkType::Index)
            || index_at + header.total_len() != trailer_at
            || header.raw_len > MAX_PAYLOAD_LEN
        {
            return Ok(false);
        }
        let entry = Entry {
            offset: index_at,
            header,
        };
        if self.load(usize::MAX, entry).is_err() {
            return Ok(false);
        }
        let Ok(index) = TraceIndex::from_payload(&self.raw, data_start, index_at) else {
            return Ok(false);
        };
        let Some((number, end_entry)) = index.end_entry() else {
            return Ok(false);
        };
        if self.load(number, end_entry).is_err() {
            return Ok(false);
        }
        let Ok(end) = EndInfo::from_bytes(&self.raw) else {
            return Ok(false);
        };
        self.index = index;
        self.end = Some(end);
        self.index_chunk = Some(entry);
        self.status = Status::Complete;
        Ok(true)
    }

    /// Rebuilds the index chunk by chunk, verifying each, up to the end, the index chunk, or an
    /// incomplete chunk. A damaged chunk is skipped: the scan goes on at the next chunk that
    /// verifies, if any.
    fn scan(&mut self, data_start: u64) -> Result<(), TraceError> {
        let mut index = TraceIndex::default();
        let mut end = None;
        let mut pos = data_start;
        let mut pending: Option<Damage> = None;
        self.src.seek(SeekFrom::Start(pos))?;
        let status = loop {
            let number = index.chunk_count();
            let problem = self.scan_chunk(pos, &mut index, &mut end, &mut pending)?;
            let defect = match problem {
                Scanned::Next(next) => {
                    pos = next;
                    continue;
                }
                Scanned::Stop(status) => break status,
                Scanned::Damaged(defect) => defect,
            };
            let hint = self.hint_after(pos);
            match self.find_next_chunk(pos + 1, hint)? {
                Some(next) => {
                    pending.get_or_insert(Damage {
                        chunk: number,
                        at: pos,
                        defect,
                        events: index.total_events()..index.total_events(),
                        start_time: index.end_time(),
                        end_time: index.end_time(),
                    });
                    index.push_damaged(pos);
                    pos = next;
                    self.src.seek(SeekFrom::Start(pos))?;
                }
                None if defect == ChunkDefect::BadLength && self.claims_past_end(pos) => {
                    break Status::Truncated { at: pos };
                }
                None => {
                    break Status::Corrupt {
                        chunk: number,
                        at: pos,
                        defect,
                    };
                }
            }
        };
        if let Some(d) = pending {
            // Damage with nothing after it that tells how many events it held.
            self.damaged.push(d);
        }
        index.seal();
        self.index = index;
        self.end = end;
        self.status = status;
        Ok(())
    }

    /// Reads and verifies the chunk at `pos` (the source is positioned there) and adds it to
    /// `index`.
    fn scan_chunk(
        &mut self,
        pos: u64,
        index: &mut TraceIndex,
        end: &mut Option<EndInfo>,
        pending: &mut Option<Damage>,
    ) -> Result<Scanned, TraceError> {
        let number = index.chunk_count();
        if self.len - pos < CHUNK_HEADER_SIZE as u64 {
            return Ok(Scanned::Stop(Status::Truncated { at: pos }));
        }
        let mut hb = [0u8; CHUNK_HEADER_SIZE];
        self.src.read_exact(&mut hb)?;
        let Some(header) = ChunkHeader::from_bytes(&hb) else {
            return Ok(Scanned::Damaged(ChunkDefect::BadTag));
        };
        if header.raw_len > header.max_raw_len() {
            return Ok(Scanned::Damaged(ChunkDefect::BadLength));
        }
        if header.total_len() > self.len - pos {
            // Cut off, or a damaged length: the scan looks for a chunk after it to tell which.
            return Ok(Scanned::Damaged(ChunkDefect::BadLength));
        }
        let kind = header.kind();
        let keep = matches!(kind, Some(ChunkType::End | ChunkType::Index));
        if !self.verify_streaming(&header, keep)? {
            return Ok(Scanned::Damaged(ChunkDefect::ChecksumMismatch));
        }
        let next = pos + header.total_len();
        match kind {
            Some(ChunkType::Index) => {
                index.end_gap_at(header.first_event);
                self.close_damage(pending, header.first_event, index.end_time());
                return Ok(Scanned::Stop(self.check_trailer(pos, next, number)));
            }
            Some(ChunkType::End) => {
                let parsed = decompress(&header, &mut self.stored, &mut self.raw)
                    .and_then(|()| EndInfo::from_bytes(&self.raw).map_err(ChunkDefect::BadPayload));
                match parsed {
                    Ok(info) => *end = Some(info),
                    Err(defect) => return Ok(Scanned::Damaged(defect)),
                }
            }
            _ => {}
        }
        if let Err(defect) = index.push(pos, header) {
            return Ok(Scanned::Damaged(defect));
        }
        match kind {
            Some(ChunkType::Events) => {
                self.close_damage(pending, header.first_event, header.start_time);
            }
            Some(ChunkType::End) => {
                index.end_gap_at(header.first_event);
                self.close_damage(pending, header.first_event, index.end_time());
            }
            _ => {}
        }
        Ok(Scanned::Next(next))
    }

    /// Ends the damaged stretch `pending` before the chunk that comes next: its events end at
    /// `first_event` (where the next chunk's numbering starts), its time at `time`.
    fn close_damage(&mut self, pending: &mut Option<Damage>, first_event: u64, time: u64) {
        if let Some(mut d) = pending.take() {
            d.events.end = first_event.max(d.events.start);
            d.end_time = time.max(d.start_time);
            self.damaged.push(d);
        }
    }

    /// Where the chunk at `pos` would end if its header's lengths were right (`None` if there is
    /// no header there).
    fn hint_after(&mut self, pos: u64) -> Option<u64> {
        let mut hb = [0u8; CHUNK_HEADER_SIZE];
        self.src.seek(SeekFrom::Start(pos)).ok()?;
        self.src.read_exact(&mut hb).ok()?;
        let h = ChunkHeader::from_bytes(&hb)?;
        pos.checked_add(h.total_len()).filter(|&n| n < self.len)
    }

    /// Whether the header at `pos` claims a chunk longer than what is left of the file.
    fn claims_past_end(&mut self, pos: u64) -> bool {
        let mut hb = [0u8; CHUNK_HEADER_SIZE];
        if self.src.seek(SeekFrom::Start(pos)).is_err() || self.src.read_exact(&mut hb).is_err() {
            return false;
        }
        ChunkHeader::from_bytes(&hb)
            .is_some_and(|h| h.raw_len <= h.max_raw_len() && h.total_len() > self.len - pos)
    }

    /// The next offset at or after `from` where a chunk starts that verifies (its tag, lengths
    /// and checksum), trying `hint` first. Looks at no more than `MAX_RESYNC_CANDIDATES` tags.
    fn find_next_chunk(&mut self, from: u64, hint: Option<u64>) -> io::Result<Option<u64>> {
        if let Some(h) = hint.filter(|&h| h >= from)
            && self.verifies_at(h)?
        {
            return Ok(Some(h));
        }
        let mut tried = 0;
        let mut block = vec![0u8; RESYNC_BLOCK];
        let mut at = from;
        while at + CHUNK_HEADER_SIZE as u64 <= self.len {
            self.src.seek(SeekFrom::Start(at))?;
            let n = read_up_to(&mut self.src, &mut block)?;
            if n < CHUNK_TAG.len() {
                break;
            }
            let found: Vec<usize> = block[..n]
                .windows(CHUNK_TAG.len())
                .enumerate()
                .filter(|(_, w)| *w == CHUNK_TAG)
                .map(|(i, _)| i)
                .collect();
            for i in found {
                let q = at + i as u64;
                if Some(q) == hint {
                    continue;
                }
                tried += 1;
                if tried > MAX_RESYNC_CANDIDATES {
                    return Ok(None);
                }
                if self.verifies_at(q)? {
                    return Ok(Some(q));
                }
            }
            // The next block overlaps this one by the tag's length less one.
            at += (n - (CHUNK_TAG.len() - 1)) as u64;
        }
        Ok(None)
    }

    /// Whether a whole chunk that verifies starts at `at`.
    fn verifies_at(&mut self, at: u64) -> io::Result<bool> {
        if self.len.saturating_sub(at) < CHUNK_HEADER_SIZE as u64 {
            return Ok(false);
        }
        self.src.seek(SeekFrom::Start(at))?;
        let mut hb = [0u8; CHUNK_HEADER_SIZE];
        self.src.read_exact(&mut hb)?;
        let Some(header) = ChunkHeader::from_bytes(&hb) else {
            return Ok(false);
        };
        if header.raw_len > header.max_raw_len() || header.total_len() > self.len - at {
            return Ok(false);
        }
        self.verify_streaming(&header, false)
    }

    /// After an index chunk that ends at `index_end`: is the trailer there and right?
    fn check_trailer(&mut self, index_at: u64, index_end: u64, number: usize) -> Status {
        if self.len - index_end < TRAILER_SIZE as u64 {
            return Status::Truncated { at: index_end };
        }
        let mut tb = [0u8; TRAILER_SIZE];
        let ok = self.src.read_exact(&mut tb).is_ok() && parse_trailer(&tb) == Some(index_at);
        if ok {
            Status::Complete
        } else {
            Status::Corrupt {
                chunk: number,
                at: index_end,
                defect: ChunkDefect::BadTrailer,
            }
        }
    }

    /// Reads the payload after `header` (the source is positioned there) and checks its
    /// checksum without holding it whole, unless `keep` (then it is left in `self.stored`).
    fn verify_streaming(&mut self, header: &ChunkHeader, keep: bool) -> io::Result<bool> {
        let mut h = *header;
        h.checksum = 0;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&h.to_bytes());
        let mut left = header.stored_len as usize;
        if keep {
            self.stored.resize(left, 0);
            self.src.read_exact(&mut self.stored)?;
            crc.update(&self.stored);
        } else {
            let mut buf = std::mem::take(&mut self.stored);
            buf.resize(left.min(1 << 20), 0);
            while left > 0 {
                let n = left.min(buf.len());
                self.src.read_exact(&mut buf[..n])?;
                crc.update(&buf[..n]);
                left -= n;
            }
            self.stored = buf;
        }
        Ok(crc.finalize() == header.checksum)
    }
}

/// Bytes read at a time looking for the next chunk after damage.
const RESYNC_BLOCK: usize = 1 << 20;
/// Chunk tags tried after damage before the rest of the file is given up (hostile input could
/// hold a tag every few bytes, each claiming a long chunk).
const MAX_RESYNC_CANDIDATES: usize = 4096;

/// What the scan found at one position.
enum Scanned {
    /// A good chunk; the next one starts here.
    Next(u64),
    /// The scan ends with this status.
    Stop(Status),
    /// The chunk is damaged.
    Damaged(ChunkDefect),
}

/// Decompresses `stored` into `raw` (cleared first), producing at most `header.raw_len` bytes.
fn decompress(
    header: &ChunkHeader,
    stored: &mut Vec<u8>,
    raw: &mut Vec<u8>,
) -> Result<(), ChunkDefect> {
    let want = header.raw_len as usize;
    raw.clear();
    match Compression::from_u8(header.compression) {
        Some(Compression::None) => {
            if stored.len() != want {
                return Err(ChunkDefect::BadLength);
            }
            std::mem::swap(stored, raw);
        }
        Some(Compression::Zstd) => {
            // Streamed, so the output grows with what the data really holds, never more than
            // `want + 1` bytes, whatever the header claims.
            let mut dec = zstd::stream::read::Decoder::with_buffer(&stored[..])
                .map_err(|_| ChunkDefect::Decompress)?;
            let got = (&mut dec)
                .take(want as u64 + 1)
                .read_to_end(raw)
                .map_err(|_| ChunkDefect::Decompress)?;
            if got != want {
                return Err(ChunkDefect::Decompress);
            }
        }
        None => return Err(ChunkDefect::UnknownCompression(header.compression)),
    }
    Ok(())
}

/// Reads and checks the file header; returns the version, the metadata and where chunks start.
fn read_header(src: &mut impl Read, len: u64) -> Result<(u16, Metadata, u64), TraceError> {
    let mut fixed = [0u8; FILE_HEADER_FIXED];
    let n = read_up_to(src, &mut fixed)?;
    let magic_part = n.min(MAGIC.len());
    if fixed[..magic_part] != MAGIC[..magic_part] {
        return Err(TraceError::NotATrace);
    }
    if n < 10 {
        return Err(TraceError::TruncatedHeader { len });
    }
    let version = u16::from_le_bytes([fixed[8], fixed[9]]);
    if version == 0 {
        return Err(TraceError::CorruptHeader("format version 0".into()));
    }
    if version > VERSION {
        return Err(TraceError::NewerVersion {
            found: version,
            supported: VERSION,
        });
    }
    if n < FILE_HEADER_FIXED {
        return Err(TraceError::TruncatedHeader { len });
    }
    let meta_len = u32_at(&fixed, 12);
    if meta_len > MAX_METADATA_LEN {
        return Err(TraceError::CorruptHeader(format!(
            "metadata length {meta_len} is impossible"
        )));
    }
    let data_start = (FILE_HEADER_FIXED + meta_len as usize + 4) as u64;
    if data_start > len {
        return Err(TraceError::TruncatedHeader { len });
    }
    let mut rest = vec![0u8; meta_len as usize + 4];
    src.read_exact(&mut rest)?;
    let (meta, crc) = rest.split_at(meta_len as usize);
    let mut h = crc32fast::Hasher::new();
    h.update(&fixed);
    h.update(meta);
    if h.finalize() != u32_at(crc, 0) {
        return Err(TraceError::CorruptHeader("checksum mismatch".into()));
    }
    let json = std::str::from_utf8(meta)
        .map_err(|_| TraceError::CorruptHeader("metadata is not UTF-8".into()))?;
    let metadata = Metadata::from_json(json)
        .map_err(|e| TraceError::CorruptHeader(format!("metadata: {e}")))?;
    Ok((version, metadata, data_start))
}

/// Every readable event of a trace, from [`TraceReader::events`].
pub struct Events<'r, R> {
    reader: &'r mut TraceReader<R>,
    next_chunk: usize,
    buf: Vec<(u32, Event)>,
    pos: usize,
    done: bool,
}

impl<R: Read + Seek> Iterator for Events<'_, R> {
    type Item = Result<(u32, Event), TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.pos == self.buf.len() {
            if self.done || self.next_chunk >= self.reader.chunks().len() {
                return None;
            }
            self.pos = 0;
            let chunk = self.next_chunk;
            self.next_chunk += 1;
            if let Err(e) = self.reader.read_chunk_into(chunk, &mut self.buf) {
                self.buf.clear();
                self.done = !matches!(e, TraceError::CorruptChunk { .. });
                return Some(Err(e));
            }
        }
        self.pos += 1;
        Some(Ok(self.buf[self.pos - 1]))
    }
}
