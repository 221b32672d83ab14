//! Why a trace cannot be read, or not all of it.

use std::{fmt, io};

use super::format::ChunkDefect;

/// An error reading a trace file. The messages are meant for the user as they are.
#[derive(Debug)]
pub enum TraceError {
    /// Reading the file failed.
    Io(io::Error),
    /// The file does not start with the heaplens magic.
    NotATrace,
    /// Written by a newer heaplens.
    NewerVersion {
        /// The file's format version.
        found: u16,
        /// The newest version this build reads.
        supported: u16,
    },
    /// The file header is damaged.
    CorruptHeader(String),
    /// The file ends inside its header: nothing is readable.
    TruncatedHeader {
        /// The file's length.
        len: u64,
    },
    /// The data stops at byte `at`: the rest of the file is missing.
    Truncated {
        /// Where the readable part ends.
        at: u64,
    },
    /// A chunk is damaged.
    CorruptChunk {
        /// The chunk's number, counting every chunk in the file from 0.
        chunk: usize,
        /// Where it starts.
        at: u64,
        /// What is wrong.
        defect: ChunkDefect,
    },
    /// The file is damaged or cut short; what comes before the damage is readable.
    Partial {
        /// The damage ([`TraceError::Truncated`] or [`TraceError::CorruptChunk`]).
        problem: Box<TraceError>,
        /// Events readable.
        events: u64,
        /// Time of the last readable event (ns since recording started).
        until_ns: u64,
    },
    /// Recorded with an allocator geometry this build does not model.
    Geometry(crate::model::geometry::Unsupported),
    /// A chunk or keyframe number past the end.
    OutOfRange {
        /// What was asked for.
        index: usize,
        /// How many there are.
        count: usize,
    },
}

impl TraceError {
    pub(crate) fn corrupt(chunk: usize, at: u64, defect: ChunkDefect) -> Self {
        Self::CorruptChunk { chunk, at, defect }
    }
}

/// Seconds with one decimal from 10 s on, milliseconds precision below.
pub(crate) fn seconds(ns: u64) -> String {
    let s = ns as f64 / 1e9;
    if s >= 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.3} s")
    }
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "cannot read the trace: {e}"),
            Self::NotATrace => f.write_str("not a heaplens trace"),
            Self::NewerVersion { found, supported } => write!(
                f,
                "trace format version {found} is newer than this heaplens (reads up to {supported})"
            ),
            Self::CorruptHeader(what) => write!(f, "corrupt trace header: {what}"),
            Self::TruncatedHeader { len } => write!(
                f,
                "truncated at byte {len}, inside the file header: no events are readable"
            ),
            Self::Truncated { at } => write!(f, "truncated at byte {at}"),
            Self::CorruptChunk {
                at,
                defect: ChunkDefect::BadTrailer,
                ..
            } => write!(f, "corrupt trailer at byte {at}"),
            Self::CorruptChunk { chunk, at, defect } => {
                write!(f, "corrupt chunk {chunk} at byte {at}: {defect}")
            }
            Self::Partial {
                problem,
                events,
                until_ns,
            } => write!(
                f,
                "{problem}; {events} events up to {} are readable",
                seconds(*until_ns)
            ),
            Self::OutOfRange { index, count } => {
                write!(f, "no chunk or keyframe {index}: there are {count}")
            }
            Self::Geometry(g) => write!(f, "{g}"),
        }
    }
}

impl std::error::Error for TraceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            Self::Partial { problem, .. } => Some(problem.as_ref()),
            _ => None,
        }
    }
}

impl From<crate::model::geometry::Unsupported> for TraceError {
    fn from(e: crate::model::geometry::Unsupported) -> Self {
        Self::Geometry(e)
    }
}

impl From<io::Error> for TraceError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_well() {
        let partial = TraceError::Partial {
            problem: Box::new(TraceError::Truncated { at: 83_422 }),
            events: 1_234_567,
            until_ns: 12_500_000_000,
        };
        assert_eq!(
            partial.to_string(),
            "truncated at byte 83422; 1234567 events up to 12.5 s are readable"
        );
        assert_eq!(
            TraceError::corrupt(12, 83_422, ChunkDefect::ChecksumMismatch).to_string(),
            "corrupt chunk 12 at byte 83422: checksum mismatch"
        );
        assert_eq!(
            TraceError::NewerVersion {
                found: 7,
                supported: 1
            }
            .to_string(),
            "trace format version 7 is newer than this heaplens (reads up to 1)"
        );
        assert_eq!(seconds(4_000_000), "0.004 s");
    }
}
