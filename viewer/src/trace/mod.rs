//! The heaplens trace file: a recorded event stream, replayable and seekable.
//!
//! A file is a header (magic, format version, JSON metadata) followed by self-describing chunks:
//! compressed Events (the collector's batches, delta-coded), Keyframes (opaque snapshots the
//! caller supplies, for seeking), and when the writer finished, End (how the process exited),
//! an Index and a trailer pointing at it. Every chunk is checksummed and written whole, so a
//! file cut off anywhere reads up to its last complete chunk, and a damaged chunk costs its own
//! events only ([`Damage`]). The specification is `README.md`
//! in this directory.
//!
//! A recorder:
//! ```no_run
//! # use heaplens_viewer::trace::*;
//! # fn f(batches: &[(u32, Vec<heaplens_alloc::event::Event>)]) -> std::io::Result<()> {
//! let mut w = TraceWriter::create("run.hltrace", &Metadata::for_this_process())?;
//! for (heap, events) in batches {
//!     w.write_batch(*heap, events)?;
//! }
//! w.write_keyframe(w.events_written(), 1_000_000, b"model snapshot")?;
//! w.finish(EndInfo::clean(0))?;
//! # Ok(()) }
//! ```
//! A replay viewer:
//! ```no_run
//! # use heaplens_viewer::trace::*;
//! # fn f() -> Result<(), TraceError> {
//! let mut r = TraceReader::open("run.hltrace")?;
//! if let Some(problem) = r.damage() {
//!     eprintln!("{problem}"); // "truncated at byte N; 1234 events up to 1.250 s are readable"
//! }
//! for d in r.damaged() {
//!     // A damaged chunk in the middle costs its own events only (found by the scan at open,
//!     // or when read): "chunk 21 at byte 4868685 is damaged (checksum mismatch): ..."
//!     eprintln!("{d}");
//! }
//! let target = r.total_events() / 2;
//! let start = match r.keyframe_for_event(target)? {
//!     Some((k, _snapshot)) => k.event_index, // restore the model from the snapshot
//!     None => 0,                             // or start from an empty model
//! };
//! for (_heap, _event) in r.read_events(start..target)? { /* apply to the model */ }
//! # Ok(()) }
//! ```

pub(crate) mod addr_map;
pub mod append;
pub mod damage;
pub mod encode;
pub mod end;
pub mod error;
pub mod format;
pub mod huffman;
pub mod index;
pub mod metadata;
pub mod reader;
pub(crate) mod sink;
pub mod synth;
pub mod writer;

pub use append::{Appended, NewKeyframe, append_keyframes};
pub use damage::Damage;
pub use end::{EndInfo, EndReason, ExitStatus};
pub use error::TraceError;
pub use format::{ChunkDefect, VERSION};
pub use index::{ChunkInfo, KeyframeInfo, TraceIndex};
pub use metadata::Metadata;
pub use reader::{Events, Status, TraceReader};
pub use writer::{SHARED_BATCHES_IN_FLIGHT, SharedBatch, SharedEvents, TraceWriter, WriterOptions};

/// The file name extension of trace files.
pub const EXTENSION: &str = "hltrace";
