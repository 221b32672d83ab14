//! The metadata block of a trace file: what was recorded, where and when, and the allocator
//! constants the events are to be read with.
//!
//! It is stored as JSON. The field names match the live stream's `Meta` frame
//! (`heaplens_alloc::wire::metadata_json`), so a recorder can pass that text through with
//! [`Metadata::from_json`]. Every field is optional when reading, and fields this build does not
//! know are kept in [`Metadata::extra`] and written back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::geometry::Geometry;

/// What a trace was recorded from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metadata {
    /// Process id of the recorded program.
    pub pid: u32,
    /// Its command line.
    pub command: Vec<String>,
    /// When recording started (Unix time, ns); event times count from here.
    pub start_unix_ns: u64,
    /// The machine's host name.
    pub hostname: String,
    /// `heaplens_alloc::SEGMENT_SIZE`.
    pub segment_size: u64,
    /// `heaplens_alloc::SMALL_PAGE_SIZE`.
    pub small_page_size: u64,
    /// `heaplens_alloc::MEDIUM_PAGE_SIZE`.
    pub medium_page_size: u64,
    /// `heaplens_alloc::segment::INFO_SIZE`: the segment header and page metadata.
    pub segment_info_size: u64,
    /// Block size of bins `1..=BIN_LARGE_MAX` (element 0 is bin 1).
    pub bin_block_sizes: Vec<u64>,
    /// Other fields, kept as they were.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Metadata {
    /// Empty metadata carrying this build's allocator geometry ([`Geometry::this_build`]).
    pub fn with_allocator_constants() -> Self {
        let g = Geometry::this_build();
        Self {
            segment_size: g.segment_size,
            small_page_size: g.small_page_size,
            medium_page_size: g.medium_page_size,
            segment_info_size: g.segment_info_size,
            bin_block_sizes: g.bin_block_sizes,
            ..Self::default()
        }
    }

    /// Metadata for recording the calling process: pid, command line, now, host name and the
    /// allocator constants.
    pub fn for_this_process() -> Self {
        Self {
            pid: std::process::id(),
            command: std::env::args().collect(),
            start_unix_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            hostname: hostname(),
            ..Self::with_allocator_constants()
        }
    }

    /// Parses the JSON form (the live stream's `Meta` frame, or a trace's metadata block).
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The JSON form.
    pub fn to_json(&self) -> String {
        // Serializing plain data to a string cannot fail (all map keys are strings).
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The host name (from `/proc`; empty if unknown).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_unknown_fields() {
        let json = r#"{"pid":7,"command":["a","b"],"start_unix_ns":5,"segment_size":4194304,
            "small_page_size":65536,"medium_page_size":524288,"segment_info_size":1024,
            "bin_block_sizes":[16,32],"future":{"x":1}}"#;
        let m = Metadata::from_json(json).unwrap();
        assert_eq!(m.pid, 7);
        assert_eq!(m.command, ["a", "b"]);
        assert_eq!(m.bin_block_sizes, [16, 32]);
        assert!(m.extra.contains_key("future"));
        assert_eq!(Metadata::from_json(&m.to_json()).unwrap(), m);
        assert_eq!(Metadata::from_json("{}").unwrap(), Metadata::default());
    }

    #[test]
    fn carries_the_allocator_constants() {
        let m = Metadata::for_this_process();
        assert_eq!(m.segment_size, heaplens_alloc::SEGMENT_SIZE as u64);
        assert_eq!(m.bin_block_sizes[0], 16);
        assert_eq!(m.pid, std::process::id());
    }
}
