//! A damaged chunk in the middle of a trace: what it cost, and where reading went on.
//!
//! A chunk whose checksum fails (or that does not decompress or decode) loses its own events and
//! no others: readers skip it and go on at the next chunk they can trust. With an intact index
//! the next chunk is known; without one the scan looks for the next chunk tag whose chunk
//! verifies. The events lost are those between the last readable event before the damage and
//! the first readable event after it.

use std::fmt;
use std::ops::Range;

use super::error::seconds;
use super::format::ChunkDefect;

/// A stretch of the file that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The damaged chunk's number (counting every chunk from 0; a damaged stretch found by a
    /// scan counts as one chunk).
    pub chunk: usize,
    /// Where it starts.
    pub at: u64,
    /// What is wrong with it.
    pub defect: ChunkDefect,
    /// The trace event indices lost (empty: a keyframe or End chunk, no events).
    pub events: Range<u64>,
    /// The time span the lost events cover (ns since recording started): from the last
    /// readable event before the damage to the first after it, as far as the file tells.
    pub start_time: u64,
    /// See `start_time`.
    pub end_time: u64,
}

impl Damage {
    /// Number of events lost.
    pub fn events_lost(&self) -> u64 {
        self.events.end.saturating_sub(self.events.start)
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "chunk {} at byte {} is damaged ({}): ",
            self.chunk, self.at, self.defect
        )?;
        match self.events_lost() {
            0 => f.write_str("no events lost"),
            n => write!(
                f,
                "{n} events from {} to {} lost",
                seconds(self.start_time),
                seconds(self.end_time)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_chunk_events_and_time_span() {
        let d = Damage {
            chunk: 21,
            at: 4_868_685,
            defect: ChunkDefect::ChecksumMismatch,
            events: 2_752_512..2_883_584,
            start_time: 3_200_000_000,
            end_time: 3_400_000_000,
        };
        assert_eq!(
            d.to_string(),
            "chunk 21 at byte 4868685 is damaged (checksum mismatch): 131072 events from \
             3.200 s to 3.400 s lost"
        );
    }
}
