//! Reading a trace: header and index at open, chunks on demand.
//!
//! The file is untrusted. Every length is checked against the file's size and a fixed maximum
//! before anything is allocated; every chunk's checksum is verified before it is decoded. A file
//! without an intact index (the recorder was killed, or the file was cut or damaged) is scanned
//! chunk by chunk up to the first incomplete or damaged chunk, and everything before it reads.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use heaplens_alloc::event::Event;

use super::encode::Decoder;
use super::end::EndInfo;
use super::error::TraceError;
use super::format::{
    CHUNK_HEADER_SIZE, ChunkDefect, ChunkHeader, ChunkType, Compression, FILE_HEADER_FIXED, MAGIC,
    MAX_METADATA_LEN, MAX_PAYLOAD_LEN, TRAILER_SIZE, VERSION, parse_trailer, u32_at,
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
    /// Chunk `chunk` (counting every chunk from 0) at byte `at` is damaged; everything before it
    /// reads.
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
    end: Option<EndInfo>,
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
            end: None,
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

    /// The Events chunks.
    pub fn chunks(&self) -> &[ChunkInfo] {
        self.index.chunks()
    }

    /// The keyframes, in event order.
    pub fn keyframes(&self) -> &[KeyframeInfo] {
        self.index.keyframes()
    }

    /// Events readable.
    pub fn total_events(&self) -> u64 {
        self.index.total_events()
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
            events: self.total_events(),
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
        self.load(info.number, entry)?;
        self.decoder
            .decode(&self.raw, info.events, out)
            .map_err(|what| {
                TraceError::corrupt(info.number, info.offset, ChunkDefect::BadPayload(what))
            })
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
        self.load(info.number, entry)?;
        Ok(std::mem::take(&mut self.raw))
    }

    /// The events with trace indices in `range` (clipped to the readable events).
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
            self.read_chunk_into(i, &mut buf)?;
            let from = range.start.saturating_sub(info.first_event) as usize;
            let to = ((end - info.first_event) as usize).min(buf.len());
            out.extend_from_slice(&buf[from..to]);
        }
        Ok(out)
    }

    /// Every readable event in order, chunk by chunk; stops after the first error.
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
        self.status = Status::Complete;
        Ok(true)
    }

    /// Rebuilds the index chunk by chunk, verifying each, up to the first that is incomplete or
    /// damaged (or the index chunk).
    fn scan(&mut self, data_start: u64) -> Result<(), TraceError> {
        let mut index = TraceIndex::default();
        let mut end = None;
        let mut pos = data_start;
        self.src.seek(SeekFrom::Start(pos))?;
        let status = loop {
            let number = index.chunk_count();
            let corrupt = |defect| Status::Corrupt {
                chunk: number,
                at: pos,
                defect,
            };
            if self.len - pos < CHUNK_HEADER_SIZE as u64 {
                break Status::Truncated { at: pos };
            }
            let mut hb = [0u8; CHUNK_HEADER_SIZE];
            self.src.read_exact(&mut hb)?;
            let Some(header) = ChunkHeader::from_bytes(&hb) else {
                break corrupt(ChunkDefect::BadTag);
            };
            if header.raw_len > header.max_raw_len() {
                break corrupt(ChunkDefect::BadLength);
            }
            if header.total_len() > self.len - pos {
                break Status::Truncated { at: pos };
            }
            let kind = header.kind();
            let keep = matches!(kind, Some(ChunkType::End | ChunkType::Index));
            if !self.verify_streaming(&header, keep)? {
                break corrupt(ChunkDefect::ChecksumMismatch);
            }
            let next = pos + header.total_len();
            match kind {
                Some(ChunkType::Index) => {
                    break self.check_trailer(pos, next, number);
                }
                Some(ChunkType::End) => {
                    let parsed =
                        decompress(&header, &mut self.stored, &mut self.raw).and_then(|()| {
                            EndInfo::from_bytes(&self.raw).map_err(ChunkDefect::BadPayload)
                        });
                    match parsed {
                        Ok(info) => end = Some(info),
                        Err(defect) => break corrupt(defect),
                    }
                }
                _ => {}
            }
            if let Err(defect) = index.push(pos, header) {
                break corrupt(defect);
            }
            pos = next;
        };
        index.seal();
        self.index = index;
        self.end = end;
        self.status = status;
        Ok(())
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
            if let Err(e) = self.reader.read_chunk_into(self.next_chunk, &mut self.buf) {
                self.done = true;
                return Some(Err(e));
            }
            self.next_chunk += 1;
        }
        self.pos += 1;
        Some(Ok(self.buf[self.pos - 1]))
    }
}
