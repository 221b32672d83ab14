//! Writing a trace: header, then chunks as the events come, then End, index and trailer.
//!
//! Every chunk is written whole and flushed before the call returns, so a recorder that dies
//! leaves a file that reads up to its last chunk. Call [`TraceWriter::flush`] now and then (say
//! once a second) to bound what a crash of the recorder itself can lose.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use heaplens_alloc::event::Event;

use super::encode::ChunkEncoder;
use super::end::EndInfo;
use super::format::{
    ChunkHeader, ChunkType, Compression, MAX_CHUNK_EVENTS, MAX_KEYFRAME_LEN, MAX_METADATA_LEN,
    file_header_fixed, trailer_bytes,
};
use super::index::TraceIndex;
use super::metadata::Metadata;

/// How a [`TraceWriter`] cuts and compresses chunks.
#[derive(Clone, Copy, Debug)]
pub struct WriterOptions {
    /// Events per Events chunk (1 to [`MAX_CHUNK_EVENTS`]).
    pub chunk_events: u32,
    /// zstd level for chunk payloads; `None` stores them uncompressed.
    pub zstd_level: Option<i32>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            chunk_events: 512 * 1024,
            zstd_level: Some(1),
        }
    }
}

/// Writes a heaplens trace (see the module docs of [`crate::trace`]).
pub struct TraceWriter<W: Write = BufWriter<File>> {
    out: Option<W>,
    pos: u64,
    options: WriterOptions,
    encoder: ChunkEncoder,
    /// Events accepted, including those not yet in a chunk.
    events: u64,
    /// Events already in chunks.
    written_events: u64,
    end_time: u64,
    index: TraceIndex,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    payload: Vec<u8>,
    failed: bool,
    /// Bytes of Events chunks so far.
    event_bytes: u64,
    /// Bytes of the last Keyframe chunk.
    last_keyframe: u64,
}

impl TraceWriter<BufWriter<File>> {
    /// Creates (or truncates) `path` and writes the file header.
    pub fn create(path: impl AsRef<Path>, metadata: &Metadata) -> io::Result<Self> {
        Self::create_with(path, metadata, WriterOptions::default())
    }

    /// [`TraceWriter::create`] with options.
    pub fn create_with(
        path: impl AsRef<Path>,
        metadata: &Metadata,
        options: WriterOptions,
    ) -> io::Result<Self> {
        let file = File::create(path)?;
        Self::new(BufWriter::with_capacity(1 << 18, file), metadata, options)
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl<W: Write> TraceWriter<W> {
    /// Writes the file header to `out`; chunks follow as events come.
    pub fn new(mut out: W, metadata: &Metadata, options: WriterOptions) -> io::Result<Self> {
        if options.chunk_events == 0 || options.chunk_events > MAX_CHUNK_EVENTS {
            return Err(invalid("chunk_events must be 1..=MAX_CHUNK_EVENTS"));
        }
        let json = metadata.to_json();
        let meta_len = u32::try_from(json.len())
            .ok()
            .filter(|&n| n <= MAX_METADATA_LEN)
            .ok_or_else(|| invalid("metadata too large"))?;
        let fixed = file_header_fixed(meta_len);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&fixed);
        crc.update(json.as_bytes());
        out.write_all(&fixed)?;
        out.write_all(json.as_bytes())?;
        out.write_all(&crc.finalize().to_le_bytes())?;
        out.flush()?;
        let compressor = match options.zstd_level {
            Some(level) => Some(zstd::bulk::Compressor::new(level)?),
            None => None,
        };
        Ok(Self {
            out: Some(out),
            pos: (fixed.len() + json.len() + 4) as u64,
            options,
            encoder: ChunkEncoder::new(),
            events: 0,
            written_events: 0,
            end_time: 0,
            index: TraceIndex::default(),
            compressor,
            payload: Vec::new(),
            failed: false,
            event_bytes: 0,
            last_keyframe: 0,
        })
    }

    /// Events accepted so far (the index the next event will get).
    pub fn events_written(&self) -> u64 {
        self.events
    }

    /// Bytes in the file so far (not counting events not yet in a chunk).
    pub fn bytes_written(&self) -> u64 {
        self.pos
    }

    /// Bytes the last keyframe took in the file (header included; 0 before the first).
    pub fn last_keyframe_bytes(&self) -> u64 {
        self.last_keyframe
    }

    /// Bytes per event of the Events chunks written so far (0 before the first).
    pub fn event_bytes_per_event(&self) -> f64 {
        self.event_bytes as f64 / self.written_events.max(1) as f64
    }

    /// Adds a batch of one heap's events (heap 0: process-level events). A batch may be of any
    /// length; it is split across chunks as needed.
    pub fn write_batch(&mut self, heap: u32, events: &[Event]) -> io::Result<()> {
        self.check()?;
        if !self.encoder.has_room_for(heap) {
            self.write_events_chunk()?;
        }
        let mut rest = events;
        while !rest.is_empty() {
            let room = (self.options.chunk_events - self.encoder.len()) as usize;
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.encoder.push_batch(heap, now);
            self.events += now.len() as u64;
            if self.encoder.len() >= self.options.chunk_events {
                self.write_events_chunk()?;
            }
            rest = later;
        }
        Ok(())
    }

    /// Writes a keyframe: an opaque snapshot (e.g. a serialized model) of the state after the
    /// first `event_index` events, at `time`. Events given so far but not yet in a chunk go
    /// first, so a keyframe never precedes its events in the file.
    pub fn write_keyframe(
        &mut self,
        event_index: u64,
        time: u64,
        payload: &[u8],
    ) -> io::Result<()> {
        self.check()?;
        if event_index > self.events {
            return Err(invalid("keyframe refers to events not written yet"));
        }
        if payload.len() > MAX_KEYFRAME_LEN as usize {
            return Err(invalid("keyframe larger than MAX_KEYFRAME_LEN"));
        }
        if event_index > self.written_events {
            self.write_events_chunk()?;
        }
        self.write_chunk(
            ChunkType::Keyframe,
            event_index,
            0,
            (time, time),
            payload,
            true,
        )?;
        self.flush_out()
    }

    /// Puts the events given so far into a chunk and flushes the file.
    pub fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        self.write_events_chunk()?;
        self.flush_out()
    }

    /// Writes the remaining events, the End chunk, the index and the trailer; returns the
    /// underlying writer.
    pub fn finish(mut self, end: EndInfo) -> io::Result<W> {
        self.check()?;
        self.write_events_chunk()?;
        let (events, t) = (self.events, self.end_time);
        self.write_chunk(ChunkType::End, events, 0, (t, t), &end.to_bytes(), false)?;
        let index_offset = self.pos;
        let payload = self.index.to_payload();
        self.write_chunk(ChunkType::Index, events, 0, (t, t), &payload, true)?;
        let trailer = trailer_bytes(index_offset);
        let r = self.out_mut().write_all(&trailer);
        self.track(r)?;
        self.pos += trailer.len() as u64;
        self.flush_out()?;
        self.out
            .take()
            .ok_or_else(|| invalid("writer already finished"))
    }

    fn check(&self) -> io::Result<()> {
        if self.failed || self.out.is_none() {
            return Err(io::Error::other("an earlier write to the trace failed"));
        }
        Ok(())
    }

    fn track<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn out_mut(&mut self) -> &mut W {
        self.out.as_mut().expect("checked by check()")
    }

    fn flush_out(&mut self) -> io::Result<()> {
        let r = self.out_mut().flush();
        self.track(r)
    }

    fn write_events_chunk(&mut self) -> io::Result<()> {
        if self.encoder.is_empty() {
            return Ok(());
        }
        let count = self.encoder.len();
        let range = self.encoder.time_range();
        let mut payload = std::mem::take(&mut self.payload);
        self.encoder.finish_into(&mut payload);
        let first = self.written_events;
        let r = self.write_chunk(ChunkType::Events, first, count, range, &payload, true);
        self.payload = payload;
        r?;
        self.written_events += u64::from(count);
        self.end_time = self.end_time.max(range.1);
        self.flush_out()
    }

    fn write_chunk(
        &mut self,
        kind: ChunkType,
        first_event: u64,
        event_count: u32,
        (start_time, end_time): (u64, u64),
        raw: &[u8],
        compress: bool,
    ) -> io::Result<()> {
        let raw_len = u32::try_from(raw.len()).map_err(|_| invalid("chunk payload too large"))?;
        let compressed = match &mut self.compressor {
            Some(c) if compress && !raw.is_empty() => {
                let r = c.compress(raw);
                Some(self.track(r)?).filter(|z| z.len() < raw.len())
            }
            _ => None,
        };
        let (compression, stored) = match &compressed {
            Some(z) => (Compression::Zstd, z.as_slice()),
            None => (Compression::None, raw),
        };
        let mut header = ChunkHeader {
            chunk_type: kind as u8,
            compression: compression as u8,
            reserved: 0,
            raw_len,
            stored_len: stored.len() as u32,
            event_count,
            checksum: 0,
            first_event,
            start_time,
            end_time,
        };
        header.checksum = header.compute_checksum(stored);
        let out = self.out_mut();
        let r = out
            .write_all(&header.to_bytes())
            .and_then(|()| out.write_all(stored));
        self.track(r)?;
        if kind != ChunkType::Index {
            // Our own chunks always fit the index.
            let _ = self.index.push(self.pos, header);
        }
        match kind {
            ChunkType::Events => self.event_bytes += header.total_len(),
            ChunkType::Keyframe => self.last_keyframe = header.total_len(),
            _ => {}
        }
        self.pos += header.total_len();
        Ok(())
    }
}

impl<W: Write> Drop for TraceWriter<W> {
    /// A writer dropped without [`TraceWriter::finish`] (a panic in the recorder) still writes
    /// its pending events, so the file reads as truncated after them.
    fn drop(&mut self) {
        if self.check().is_ok() {
            let _ = self.flush();
        }
    }
}
