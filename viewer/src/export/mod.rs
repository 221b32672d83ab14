//! Exports of a trace for other tools: pprof, folded stacks, speedscope, Chrome / Perfetto
//! trace events, CSV and Parquet tables, and the comparison of two positions (`diff`).
//!
//! Parquet ([`parquet`]) stands apart: it writes the whole trace, event by event, as it
//! replays it, rather than the model at one position.
//!
//! Every export replays the trace once, event by event, into one [`Model`] and stops at the
//! position asked for ([`Position`]); then the writer reads the model. Memory is the model's
//! (pages, live blocks, the sites' tables, at most [`crate::model::metrics::MAX_SAMPLES`]
//! samples and [`crate::model::metrics::MAX_MARKERS`] markers), the symbols of the sites' pcs
//! and, without stacks, one tally per thread and size class: nothing grows with the number of
//! events. The stack formats build their profile (a sample per site, a location per pc) before
//! writing it; the series formats write sample by sample. Measured by
//! `cargo bench -p heaplens-viewer --bench export_memory`: on 100 M events of churn over 51 200
//! live blocks and 64 sites, 22-23 MiB peak, as on 10 M.
//!
//! A trace without stacks still exports: the allocator's structure takes the place of call
//! stacks, a "stack" being thread → size class → page (see [`profile`]).

pub mod chrome;
pub mod collapsed;
pub mod csv;
pub mod diff;
pub mod parquet;
pub mod pprof;
pub mod profile;
pub mod speedscope;

use std::fmt;
use std::io::{Read, Seek};

use heaplens_alloc::event::EventKind;

use crate::model::Model;
use crate::trace::{TraceError, TraceReader};

pub use profile::{Profile, StructureTally};

/// The output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A gzipped pprof `profile.proto` heap profile.
    Pprof,
    /// Folded stacks, one `a;b;c value` line per stack, for flame graph tools.
    Collapsed,
    /// speedscope's JSON file format.
    Speedscope,
    /// Chrome / Perfetto trace-event JSON: counter tracks and markers.
    Chrome,
    /// Every metric series, one row per sample.
    Csv,
    /// Tables of the trace for SQL engines.
    Parquet,
}

impl Format {
    /// Every format, by its name on the command line.
    pub const ALL: [(&'static str, Format); 6] = [
        ("pprof", Format::Pprof),
        ("collapsed", Format::Collapsed),
        ("speedscope", Format::Speedscope),
        ("chrome", Format::Chrome),
        ("csv", Format::Csv),
        ("parquet", Format::Parquet),
    ];

    /// The format called `name`.
    pub fn parse(name: &str) -> Option<Format> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }
}

/// What a stack-based export weighs its stacks by (pprof's four heap sample types).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Metric {
    /// Allocations in all, up to the position.
    AllocObjects,
    /// Bytes allocated in all, up to the position.
    AllocSpace,
    /// Blocks live at the position.
    InuseObjects,
    /// Bytes live at the position (requested bytes).
    #[default]
    InuseSpace,
}

impl Metric {
    /// The four, in the order of pprof's sample types (and of [`profile::Sample::values`]).
    pub const ALL: [Metric; 4] = [
        Metric::AllocObjects,
        Metric::AllocSpace,
        Metric::InuseObjects,
        Metric::InuseSpace,
    ];

    /// pprof's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Metric::AllocObjects => "alloc_objects",
            Metric::AllocSpace => "alloc_space",
            Metric::InuseObjects => "inuse_objects",
            Metric::InuseSpace => "inuse_space",
        }
    }

    /// Its unit: `count` or `bytes`.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::AllocObjects | Metric::InuseObjects => "count",
            Metric::AllocSpace | Metric::InuseSpace => "bytes",
        }
    }

    /// Its index in [`Metric::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The metric called `name`.
    pub fn parse(name: &str) -> Option<Metric> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// Where in the trace an export looks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Position {
    /// The end of the trace.
    #[default]
    End,
    /// The events before the first one stamped after this trace time (ns).
    Time(u64),
    /// Just after the first marker with this label.
    Marker(String),
}

impl Position {
    /// Reads a time: a number with a unit (`ns`, `us`, `ms`, `s`), seconds without one.
    pub fn parse_time(text: &str) -> Result<u64, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let scale = match unit.trim() {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "" | "s" => 1e9,
            other => {
                return Err(format!(
                    "unknown time unit {other:?} in {text:?} (ns, us, ms or s)"
                ));
            }
        };
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{text:?} is not a time (for example 1.5s, 200ms, 3000us)"))?;
        Ok((n * scale).round() as u64)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::End => f.write_str("the end"),
            Position::Time(t) => write!(f, "{:.6} s", *t as f64 / 1e9),
            Position::Marker(m) => write!(f, "marker {m:?}"),
        }
    }
}

/// What went wrong in an export.
#[derive(Debug)]
pub enum ExportError {
    /// The trace could not be read.
    Trace(TraceError),
    /// The output could not be written.
    Io(std::io::Error),
    /// The request cannot be met (a marker that is not in the trace, a format not built).
    Invalid(String),
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportError::Trace(e) => write!(f, "{e}"),
            ExportError::Io(e) => write!(f, "writing the export: {e}"),
            ExportError::Invalid(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for ExportError {}

impl From<TraceError> for ExportError {
    fn from(e: TraceError) -> Self {
        ExportError::Trace(e)
    }
}

impl From<std::io::Error> for ExportError {
    fn from(e: std::io::Error) -> Self {
        ExportError::Io(e)
    }
}

/// A model replayed to a position, with the tallies the exports need besides it.
#[derive(Debug, Default)]
pub struct Replayed {
    /// The model at the position.
    pub model: Model,
    /// Without stacks: allocations per thread and size class up to the position.
    pub tally: StructureTally,
    /// Chunks that were damaged and skipped.
    pub damaged_chunks: u64,
}

/// Replays `reader` into a fresh model up to `to`, calling `at` with the model at each
/// position of `stops` (markers, in order; a label met again later does not stop twice) as it
/// passes them. Fails on an I/O error, or if a marker asked for is not in the trace.
pub fn replay_to<R: Read + Seek>(
    reader: &mut TraceReader<R>,
    to: &Position,
    stops: &[String],
    at: &mut dyn FnMut(&str, &Model, &StructureTally),
) -> Result<Replayed, ExportError> {
    const MARK: u8 = EventKind::Mark as u8;
    let mut r = Replayed::default();
    let mut next_stop = 0;
    let mut markers_seen = 0;
    let mut found_marker = false;
    for item in reader.events() {
        let (heap, ev) = match item {
            Ok(x) => x,
            Err(TraceError::CorruptChunk { .. }) => {
                r.damaged_chunks += 1;
                r.model.events_lost(1);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if let Position::Time(t) = to
            && ev.time > *t
        {
            break;
        }
        r.model.apply(heap, &ev);
        if !r.model.sites().is_on() {
            r.tally.on_event(&r.model, heap, &ev);
        }
        if ev.kind == MARK && r.model.metrics().markers().len() > markers_seen {
            markers_seen = r.model.metrics().markers().len();
            let label = &r.model.metrics().markers()[markers_seen - 1].label;
            if stops.get(next_stop) == Some(label) {
                at(label, &r.model, &r.tally);
                next_stop += 1;
            }
            if let Position::Marker(m) = to
                && m == label
                && next_stop >= stops.len()
            {
                found_marker = true;
                break;
            }
        }
    }
    if let Some(missing) = stops.get(next_stop) {
        return Err(missing_marker(missing, &r.model));
    }
    if let Position::Marker(m) = to
        && !found_marker
    {
        return Err(missing_marker(m, &r.model));
    }
    r.model.finish();
    Ok(r)
}

fn missing_marker(label: &str, model: &Model) -> ExportError {
    let mut known: Vec<&str> = model
        .metrics()
        .markers()
        .iter()
        .map(|m| m.label.as_str())
        .collect();
    known.dedup();
    let list = if known.is_empty() {
        "the trace has no markers".to_owned()
    } else {
        let shown: Vec<String> = known.iter().take(10).map(|l| format!("{l:?}")).collect();
        format!("its markers are {}", shown.join(", "))
    };
    ExportError::Invalid(format!(
        "no marker {label:?} in the trace at that point ({list})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_with_and_without_units() {
        assert_eq!(Position::parse_time("1.5s"), Ok(1_500_000_000));
        assert_eq!(Position::parse_time("2"), Ok(2_000_000_000));
        assert_eq!(Position::parse_time("200ms"), Ok(200_000_000));
        assert_eq!(Position::parse_time("3us"), Ok(3_000));
        assert_eq!(Position::parse_time("7ns"), Ok(7));
        assert!(Position::parse_time("5 min").is_err());
        assert!(Position::parse_time("soon").is_err());
    }

    #[test]
    fn formats_and_metrics_parse_by_name() {
        assert_eq!(Format::parse("pprof"), Some(Format::Pprof));
        assert_eq!(Format::parse("svg"), None);
        for m in Metric::ALL {
            assert_eq!(Metric::parse(m.name()), Some(m));
        }
        assert_eq!(Metric::ALL[Metric::InuseSpace.index()], Metric::InuseSpace);
    }
}
