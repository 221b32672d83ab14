//! Adding keyframes to a finished trace, after its End chunk: the file keeps every chunk it had,
//! and gains the keyframes and a new index.
//!
//! `heaplens record` writes no keyframes (see [`crate::source::keyframes`]); the first replay
//! makes them, and `heaplens view` stores them here so the next opening does not go through
//! every event again. The keyframe chunks take the old Index chunk's place, followed by a new
//! Index chunk and trailer. A writer cut off midway leaves a file without a trailer whose
//! chunks up to the End chunk (and any keyframes whole by then) still read, by a scan; the
//! file is locked (`flock`) while it changes, and a file that already has keyframes where
//! these would go is left as it is.

use std::fs::OpenOptions;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;

use super::format::{ChunkHeader, ChunkType, Compression, MAX_KEYFRAME_LEN, trailer_bytes};
use super::reader::{Status, TraceReader};
use super::writer::KEYFRAME_ZSTD_LEVEL;

/// A keyframe to add: the model after `event_index` events at `time`, `raw_len` bytes
/// serialised, compressed with zstd to `zstd`.
#[derive(Clone, Copy, Debug)]
pub struct NewKeyframe<'a> {
    /// The snapshot is the state after this many events.
    pub event_index: u64,
    /// Its time (ns).
    pub time: u64,
    /// The snapshot's length before compression.
    pub raw_len: usize,
    /// The snapshot, compressed.
    pub zstd: &'a [u8],
}

/// What [`append_keyframes`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Added `keyframes` keyframes, `bytes` bytes with the new index.
    Added {
        /// Keyframes added.
        keyframes: usize,
        /// Bytes the file grew by.
        bytes: u64,
    },
    /// Nothing to add: none given, or the file already has keyframes at or past the first one
    /// given (another viewer added them).
    NothingToAdd,
}

/// Adds `keyframes` (in event order) to the finished trace at `path`. Fails, changing nothing,
/// if the file is not a finished trace (no End chunk, index and trailer: it is read by a scan,
/// and an added chunk could not be told from the damage the scan reads past), or if a keyframe
/// refers to events the trace does not hold.
pub fn append_keyframes(path: &Path, keyframes: &[NewKeyframe<'_>]) -> io::Result<Appended> {
    let Some(first) = keyframes.first() else {
        return Ok(Appended::NothingToAdd);
    };
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    // Released when the file closes, at the end.
    file.lock()?;
    let reader = TraceReader::open(path).map_err(io::Error::other)?;
    let (Status::Complete, Some((index_at, index_header))) =
        (reader.status(), reader.index_chunk())
    else {
        return Err(io::Error::other(
            "the trace was not finished (no index at its end): keyframes are added only to \
             finished traces",
        ));
    };
    if reader
        .keyframes()
        .last()
        .is_some_and(|k| k.event_index >= first.event_index)
    {
        return Ok(Appended::NothingToAdd);
    }
    // Every keyframe checked before a byte is written: a bad one changes nothing.
    let total = reader.total_events();
    let mut last = first.event_index;
    for k in keyframes {
        if k.event_index > total || k.event_index < last || k.raw_len > MAX_KEYFRAME_LEN as usize {
            return Err(io::Error::other(format!(
                "a keyframe at event {} does not fit a trace of {total} events (or comes out of \
                 order); nothing was added",
                k.event_index
            )));
        }
        last = k.event_index;
    }
    let mut index = reader.index().clone();
    let old_len = file.seek(SeekFrom::End(0))?;
    let mut out = io::BufWriter::new(&mut file);
    out.seek(SeekFrom::Start(index_at))?;
    let mut pos = index_at;
    for k in keyframes {
        let header = ChunkHeader::sealed(
            ChunkType::Keyframe,
            Compression::Zstd,
            (k.event_index, 0),
            (k.time, k.time),
            k.raw_len as u32,
            k.zstd,
        );
        out.write_all(&header.to_bytes())?;
        out.write_all(k.zstd)?;
        index
            .push(pos, header)
            .map_err(|d| io::Error::other(d.to_string()))?;
        pos += header.total_len();
    }
    let payload = index.to_payload();
    let stored = zstd::bulk::compress(&payload, KEYFRAME_ZSTD_LEVEL)?;
    let header = ChunkHeader::sealed(
        ChunkType::Index,
        Compression::Zstd,
        (index_header.first_event, 0),
        (index_header.start_time, index_header.end_time),
        u32::try_from(payload.len()).map_err(|_| io::Error::other("index too large"))?,
        &stored,
    );
    out.write_all(&header.to_bytes())?;
    out.write_all(&stored)?;
    out.write_all(&trailer_bytes(pos))?;
    out.flush()?;
    drop(out);
    let end = pos + header.total_len() + trailer_bytes(pos).len() as u64;
    file.set_len(end)?;
    file.sync_data()?;
    Ok(Appended::Added {
        keyframes: keyframes.len(),
        bytes: end.saturating_sub(old_len),
    })
}
