//! The trace file layout: constants, the file header and the chunk header (see `README.md` in
//! this directory for the specification). Everything is little-endian.
//!
//! ```text
//! file    = header chunk* [index-chunk trailer]
//! header  = "HEAPLENS" | version u16 | reserved u16 | meta_len u32 | meta[meta_len] | crc32 u32
//! chunk   = chunk-header (48 bytes) | payload[stored_len]
//! trailer = index_offset u64 | crc32(index_offset) u32 | "HLTR"
//! ```

use std::fmt;

/// The first 8 bytes of every trace file.
pub const MAGIC: [u8; 8] = *b"HEAPLENS";
/// The format version this build writes. It reads every version up to this one.
pub const VERSION: u16 = 7;
/// Bytes before the metadata: magic, version, reserved, metadata length.
pub const FILE_HEADER_FIXED: usize = 16;
/// The start of every chunk header: lets a scan tell a chunk from garbage.
pub const CHUNK_TAG: [u8; 4] = *b"HLCK";
/// Size of a chunk header.
pub const CHUNK_HEADER_SIZE: usize = 48;
/// The last 4 bytes of a finished trace.
pub const TRAILER_TAG: [u8; 4] = *b"HLTR";
/// Size of the trailer.
pub const TRAILER_SIZE: usize = 16;

/// Largest metadata block a reader accepts.
pub const MAX_METADATA_LEN: u32 = 16 << 20;
/// Most events in one Events chunk (readers reject more; the writer cuts chunks far earlier).
pub const MAX_CHUNK_EVENTS: u32 = 1 << 20;
/// Largest uncompressed Events, Index or End payload a reader accepts.
pub const MAX_PAYLOAD_LEN: u32 = 64 << 20;
/// Largest uncompressed keyframe payload (a model snapshot) a writer or reader accepts.
pub const MAX_KEYFRAME_LEN: u32 = 1 << 30;

/// What a chunk holds (the chunk header's type byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ChunkType {
    /// Delta-encoded event batches.
    Events = 1,
    /// An opaque snapshot supplied by the caller (a serialized model), valid after
    /// `first_event` events, at time `start_time`.
    Keyframe = 2,
    /// Where every other chunk is; the last chunk of a finished trace.
    Index = 3,
    /// How the recorded process and the recording ended.
    End = 4,
}

impl ChunkType {
    /// The type for a byte, if it names one. Readers skip chunks of types they do not know.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Events),
            2 => Some(Self::Keyframe),
            3 => Some(Self::Index),
            4 => Some(Self::End),
            _ => None,
        }
    }
}

/// How a chunk's payload is stored (the chunk header's compression byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Compression {
    /// Stored as is.
    None = 0,
    /// One zstd frame.
    Zstd = 1,
}

impl Compression {
    /// The compression for a byte, if it names one.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::None),
            1 => Some(Self::Zstd),
            _ => None,
        }
    }
}

/// The fixed 48-byte header in front of every chunk's payload.
///
/// | bytes | field |
/// |---|---|
/// | 0..4 | tag `"HLCK"` |
/// | 4 | chunk type ([`ChunkType`]) |
/// | 5 | compression ([`Compression`]) |
/// | 6..8 | reserved (0) |
/// | 8..12 | `raw_len`: payload length after decompression |
/// | 12..16 | `stored_len`: payload length in the file |
/// | 16..20 | `event_count`: events in an Events chunk (0 otherwise) |
/// | 20..24 | `checksum`: CRC-32 of this header (with the checksum field zeroed) and the payload |
/// | 24..32 | `first_event`: index of the chunk's first event in the whole trace |
/// | 32..40 | `start_time`: earliest event time (ns) |
/// | 40..48 | `end_time`: latest event time (ns) |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkHeader {
    /// [`ChunkType`] as a byte.
    pub chunk_type: u8,
    /// [`Compression`] as a byte.
    pub compression: u8,
    /// Reserved, written as 0.
    pub reserved: u16,
    /// Payload length after decompression.
    pub raw_len: u32,
    /// Payload length in the file.
    pub stored_len: u32,
    /// Events in an Events chunk.
    pub event_count: u32,
    /// CRC-32 of the header (checksum field zeroed) followed by the stored payload.
    pub checksum: u32,
    /// Events chunk: index of its first event. Keyframe: the events it includes. End and Index:
    /// the total number of events.
    pub first_event: u64,
    /// Earliest event time in the chunk (a keyframe's time).
    pub start_time: u64,
    /// Latest event time in the chunk.
    pub end_time: u64,
}

impl ChunkHeader {
    /// The 48 bytes of the header.
    pub fn to_bytes(&self) -> [u8; CHUNK_HEADER_SIZE] {
        let mut b = [0u8; CHUNK_HEADER_SIZE];
        b[0..4].copy_from_slice(&CHUNK_TAG);
        b[4] = self.chunk_type;
        b[5] = self.compression;
        b[6..8].copy_from_slice(&self.reserved.to_le_bytes());
        b[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.stored_len.to_le_bytes());
        b[16..20].copy_from_slice(&self.event_count.to_le_bytes());
        b[20..24].copy_from_slice(&self.checksum.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_event.to_le_bytes());
        b[32..40].copy_from_slice(&self.start_time.to_le_bytes());
        b[40..48].copy_from_slice(&self.end_time.to_le_bytes());
        b
    }

    /// Parses a header; `None` if the tag is wrong.
    pub fn from_bytes(b: &[u8; CHUNK_HEADER_SIZE]) -> Option<Self> {
        if b[0..4] != CHUNK_TAG {
            return None;
        }
        Some(Self {
            chunk_type: b[4],
            compression: b[5],
            reserved: u16::from_le_bytes([b[6], b[7]]),
            raw_len: u32_at(b, 8),
            stored_len: u32_at(b, 12),
            event_count: u32_at(b, 16),
            checksum: u32_at(b, 20),
            first_event: u64_at(b, 24),
            start_time: u64_at(b, 32),
            end_time: u64_at(b, 40),
        })
    }

    /// The header of a chunk whose payload is `raw_len` bytes before compression and `stored`
    /// in the file (with `compression`), its checksum computed.
    pub fn sealed(
        kind: ChunkType,
        compression: Compression,
        (first_event, event_count): (u64, u32),
        (start_time, end_time): (u64, u64),
        raw_len: u32,
        stored: &[u8],
    ) -> Self {
        let mut header = Self {
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
        header
    }

    /// The checksum of this header (its own checksum field taken as 0) and `payload`.
    pub fn compute_checksum(&self, payload: &[u8]) -> u32 {
        let mut h = *self;
        h.checksum = 0;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&h.to_bytes());
        crc.update(payload);
        crc.finalize()
    }

    /// The chunk type, if known.
    pub fn kind(&self) -> Option<ChunkType> {
        ChunkType::from_u8(self.chunk_type)
    }

    /// Header and payload size in the file.
    pub fn total_len(&self) -> u64 {
        CHUNK_HEADER_SIZE as u64 + u64::from(self.stored_len)
    }

    /// The largest `raw_len` a reader accepts for this chunk type.
    pub fn max_raw_len(&self) -> u32 {
        if self.kind() == Some(ChunkType::Keyframe) {
            MAX_KEYFRAME_LEN
        } else {
            MAX_PAYLOAD_LEN
        }
    }
}

/// The trailer of a finished trace: where the index chunk starts.
pub fn trailer_bytes(index_offset: u64) -> [u8; TRAILER_SIZE] {
    let mut b = [0u8; TRAILER_SIZE];
    b[0..8].copy_from_slice(&index_offset.to_le_bytes());
    b[8..12].copy_from_slice(&crc32fast::hash(&index_offset.to_le_bytes()).to_le_bytes());
    b[12..16].copy_from_slice(&TRAILER_TAG);
    b
}

/// The index offset a trailer points at, if the trailer is intact.
pub fn parse_trailer(b: &[u8; TRAILER_SIZE]) -> Option<u64> {
    let offset = u64_at(b, 0);
    (b[12..16] == TRAILER_TAG && u32_at(b, 8) == crc32fast::hash(&b[0..8])).then_some(offset)
}

/// The file header up to the metadata: magic, version, reserved, metadata length.
pub fn file_header_fixed(meta_len: u32) -> [u8; FILE_HEADER_FIXED] {
    let mut b = [0u8; FILE_HEADER_FIXED];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..10].copy_from_slice(&VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&meta_len.to_le_bytes());
    b
}

/// What is wrong with a chunk (or the trailer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkDefect {
    /// The chunk does not start with `"HLCK"`.
    BadTag,
    /// The CRC-32 does not match.
    ChecksumMismatch,
    /// A length field is beyond what a reader accepts.
    BadLength,
    /// The compression byte names no compression this build knows.
    UnknownCompression(u8),
    /// The payload does not decompress to its stated length.
    Decompress,
    /// The decoded payload is inconsistent (the text says how).
    BadPayload(&'static str),
    /// The chunk's first event index does not follow the previous chunk's events.
    EventOrder,
    /// The chunk header differs from its entry in the index.
    IndexMismatch,
    /// The trailer is damaged.
    BadTrailer,
}

impl fmt::Display for ChunkDefect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadTag => f.write_str("no chunk tag"),
            Self::ChecksumMismatch => f.write_str("checksum mismatch"),
            Self::BadLength => f.write_str("impossible length"),
            Self::UnknownCompression(c) => write!(f, "unknown compression {c}"),
            Self::Decompress => f.write_str("payload does not decompress"),
            Self::BadPayload(what) => write!(f, "bad payload: {what}"),
            Self::EventOrder => f.write_str("event numbers out of sequence"),
            Self::IndexMismatch => f.write_str("header does not match the index"),
            Self::BadTrailer => f.write_str("bad trailer"),
        }
    }
}

pub(crate) fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

pub(crate) fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_header_round_trips() {
        let h = ChunkHeader {
            chunk_type: 1,
            compression: 1,
            reserved: 0,
            raw_len: 1000,
            stored_len: 300,
            event_count: 99,
            checksum: 0xdead_beef,
            first_event: 1 << 40,
            start_time: 5,
            end_time: u64::MAX,
        };
        assert_eq!(ChunkHeader::from_bytes(&h.to_bytes()), Some(h));
        let mut b = h.to_bytes();
        b[0] = b'X';
        assert_eq!(ChunkHeader::from_bytes(&b), None);
    }

    #[test]
    fn trailer_round_trips_and_detects_damage() {
        let t = trailer_bytes(123_456);
        assert_eq!(parse_trailer(&t), Some(123_456));
        let mut bad = t;
        bad[3] ^= 1;
        assert_eq!(parse_trailer(&bad), None);
    }
}
