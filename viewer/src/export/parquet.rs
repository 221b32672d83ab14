//! `heaplens export --format parquet`: a trace as tables for SQL engines.
//!
//! Six tables, each one file `OUT/TABLE/host=HOST/pid=PID/part-0.parquet` (hive partitions: the
//! host name and pid come from the trace's metadata and are not columns of the files; DuckDB,
//! Spark, Trino and DataFusion add them from the path), zstd-compressed:
//!
//! - `events`: every event as recorded: `event` (its number in the trace), `time`, `thread`
//!   (heap id; 0 for process-level events), `kind` (`Alloc`, `Free`, `PageInit`, ...), `flags`,
//!   `addr`, `arg`, `arg32`, `aux` (what they mean per kind: `heaplens_alloc::event`).
//! - `blocks`: one row per allocation: `address`, `size` (requested), `block_size` and `bin` (of
//!   its page), `thread`, `alloc_time`, `free_time` (null: live at the end), `free_thread`,
//!   `cross_thread_free`, `site_id` (null without a stack), `site_weight` (how many allocations
//!   a sampled one stands for).
//! - `sites`: `site_id`, `site` (the name `heaplens stats` shows), `truncated`, and `frames`,
//!   leaf first: a list of `pc`, `function`, `file`, `line`, `module`, `offset` (in the module's
//!   file) and `inlined` (a function inlined into the next element, which has the same pc).
//! - `samples`: the metric series (bytes, blocks, pages, fragmentations) over time.
//! - `pages`: every page of every census: `census`, `time`, `census_thread` (0: a whole census;
//!   else the heap whose part it is), `page` (address of its first block), `kind`, `bin`,
//!   `block_size`, `capacity`, `owner`, `used`, `local_free`, `thread_free`, `in_full`.
//! - `process`: one row: command, start, duration, exit, event and block totals, stack mode.
//!
//! Times are nanoseconds since recording started (`process.start_unix_ns` is when). Addresses
//! and other unsigned values are `int64`, bit for bit (user-space addresses stay below 2^63).
//!
//! Memory is bounded by what the trace's state needs, not by its length: each table buffers
//! one row group ([`Options::row_group_rows`] rows; about 21 MiB for `events` at the default),
//! the model holds its pages, live blocks, interned stacks and at most `MAX_SAMPLES` samples,
//! and the pairing of allocations with frees holds 48 bytes per live block ([`blocks`]). On
//! the 100 M-event synthetic trace (2.0 M blocks live at its end) the peak was 280 MiB
//! resident (`cargo bench -p heaplens-viewer --bench export_parquet`).
//! A damaged chunk's events are skipped (counted in [`Summary::events_lost`]).

mod blocks;
mod table;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use heaplens_alloc::event::{EventKind, flags, stack_mode};
use parquet::data_type::ByteArray;

use crate::model::hash::FastMap;
use crate::model::{CensusPage, Model, Sites};
use crate::symbols::Symbolizer;
use crate::trace::{ExitStatus, TraceError, TraceReader};
use blocks::{Freed, NO_BIN, Open, Pairing};
use table::{Table, Value, int, small, text};

/// How to export.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Rows per row group (and so per table in memory at once).
    pub row_group_rows: usize,
    /// zstd level (1 to 22).
    pub zstd_level: i32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            row_group_rows: 1 << 18,
            zstd_level: 3,
        }
    }
}

/// What was written.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The `host=` partition.
    pub host: String,
    /// The `pid=` partition.
    pub pid: u32,
    /// Each table's name, file and rows.
    pub tables: Vec<(&'static str, PathBuf, u64)>,
    /// Events of damaged chunks, skipped.
    pub events_lost: u64,
    /// Frees whose allocation is not in the trace (no `blocks` row).
    pub unmatched_frees: u64,
}

impl Summary {
    /// The rows of table `name`.
    pub fn rows(&self, name: &str) -> u64 {
        self.tables.iter().find(|t| t.0 == name).map_or(0, |t| t.2)
    }
}

/// Why an export failed.
#[derive(Debug)]
pub enum Error {
    /// The trace could not be read.
    Trace(TraceError),
    /// A file or folder could not be written.
    Io {
        /// Which.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The Parquet writer failed.
    Parquet(parquet::errors::ParquetError),
}

impl Error {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Trace(e) => write!(f, "{e}"),
            Self::Io { path, source } => write!(f, "cannot write {}: {source}", path.display()),
            Self::Parquet(e) => write!(f, "writing Parquet failed: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<TraceError> for Error {
    fn from(e: TraceError) -> Self {
        Self::Trace(e)
    }
}

impl From<parquet::errors::ParquetError> for Error {
    fn from(e: parquet::errors::ParquetError) -> Self {
        Self::Parquet(e)
    }
}

const EVENTS: &str = "message events {
    required int64 event; required int64 time; required int64 thread;
    required binary kind (UTF8); required int32 flags; required int64 addr;
    required int64 arg; required int64 arg32; required int32 aux; }";

const BLOCKS: &str = "message blocks {
    required int64 address; required int64 size; optional int64 block_size;
    optional int32 bin; required int64 thread; required int64 alloc_time;
    optional int64 free_time; optional int64 free_thread; optional boolean cross_thread_free;
    optional int64 site_id; optional double site_weight; }";

const SITES: &str = "message sites {
    required int64 site_id; required binary site (UTF8); required boolean truncated;
    required group frames (LIST) { repeated group list { required group element {
        required int64 pc; optional binary function (UTF8); optional binary file (UTF8);
        optional int32 line; optional binary module (UTF8); required int64 offset;
        required boolean inlined; } } } }";

const SAMPLES: &str = "message samples {
    required int64 time; required int64 requested_bytes; required int64 block_bytes;
    required int64 page_capacity_bytes; required int64 committed_bytes;
    required int64 segment_pages; required int64 segment_pages_used; required int64 live_blocks;
    required int64 allocs; required int64 frees; required int64 threads;
    required int64 free_blocks; required int64 local_free_blocks;
    required int64 thread_free_blocks; required int64 full_pages;
    required double internal_fragmentation; required double page_fragmentation;
    required double segment_fragmentation; }";

const PAGES: &str = "message pages {
    required int64 census; required int64 time; required int64 census_thread;
    required int64 page; required binary kind (UTF8); required int32 bin;
    required int64 block_size; required int64 capacity; required int64 owner;
    required int64 used; required int64 local_free; required int64 thread_free;
    required boolean in_full; }";

const PROCESS: &str = "message process {
    required binary command (UTF8); required int64 start_unix_ns; required int64 duration_ns;
    optional int32 exit_code; optional int32 exit_signal; required boolean complete;
    required int64 events; required int64 events_lost; required int64 allocs;
    required int64 frees; required int64 live_blocks_at_exit; required int64 live_bytes_at_exit;
    required binary stacks (UTF8); }";

/// A partition value safe in a path: letters, digits, `.`, `-` and `_` kept, the rest `_`.
fn partition_value(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if v.is_empty() || v.chars().all(|c| c == '.') {
        "unknown".into()
    } else {
        v
    }
}

/// Exports `trace` under `out_root` (see the module docs for the layout and the tables).
pub fn write(trace: &Path, out_root: &Path, opts: &Options) -> Result<Summary, Error> {
    let mut reader = TraceReader::open(trace)?;
    let meta = reader.metadata().clone();
    let host = partition_value(&meta.hostname);
    let pid = meta.pid;
    let dir = |table: &str| out_root.join(table).join(format!("host={host}/pid={pid}"));
    let props = table::properties(opts.zstd_level)?;
    let rows = opts.row_group_rows;
    let mut events = Table::create(&dir("events"), EVENTS, &props, rows)?;
    let mut blocks = Table::create(&dir("blocks"), BLOCKS, &props, rows)?;
    let mut pages = Table::create(&dir("pages"), PAGES, &props, rows)?;

    let kinds: Vec<ByteArray> = (0..=u8::MAX)
        .map(|k| {
            let name = EventKind::from_u8(k).map_or("unknown", EventKind::name);
            ByteArray::from(bytes::Bytes::from_static(name.as_bytes()))
        })
        .collect();
    let mut model = Model::new();
    let mut pairing = Pairing::default();
    let mut censuses = Censuses::default();
    let mut stacks = BTreeSet::new();
    let mut buf = Vec::new();
    let mut events_lost = 0u64;
    let mut next = 0u64;
    for i in 0..reader.chunks().len() {
        let info = reader.chunks()[i];
        if info.first_event > next {
            // A damaged stretch the scan skipped.
            events_lost += info.first_event - next;
            model.events_lost(info.first_event - next);
        }
        next = info.event_range().end;
        match reader.read_chunk_into(i, &mut buf) {
            Ok(()) => {}
            Err(TraceError::CorruptChunk { .. }) => {
                let n = info.event_range().end - info.first_event;
                events_lost += n;
                model.events_lost(n);
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        for (j, (heap, ev)) in buf.iter().enumerate() {
            model.apply(*heap, ev);
            events.set(0, int(info.first_event + j as u64));
            events.set(1, int(ev.time));
            events.set(2, int(u64::from(*heap)));
            events.set(3, Some(Value::Str(kinds[usize::from(ev.kind)].clone())));
            events.set(4, small(u32::from(ev.flags)));
            events.set(5, int(ev.addr));
            events.set(6, int(ev.arg));
            events.set(7, int(u64::from(ev.arg32)));
            events.set(8, small(u32::from(ev.aux)));
            events.end_row()?;
            let kind = EventKind::from_u8(ev.kind);
            let pair = match kind {
                Some(EventKind::Alloc) => {
                    let page = model.page_at(ev.addr).map(|r| r.page);
                    if ev.arg32 != 0 {
                        stacks.insert(ev.arg32);
                    }
                    pairing
                        .alloc(
                            ev.addr,
                            Open {
                                size: ev.arg,
                                time: ev.time,
                                block_size: page.map_or(0, |p| p.block_size),
                                weight: if ev.arg32 == 0 {
                                    0.0
                                } else {
                                    model.sites().weight(ev.arg) as f32
                                },
                                heap: *heap,
                                stack: ev.arg32,
                                bin: page.map_or(NO_BIN, |p| p.bin),
                            },
                        )
                        .map(|(a, f)| (ev.addr, a, f))
                }
                // The owner emptying its delayed list: not the program's free (that was the
                // `TO_DELAYED` one).
                Some(EventKind::Free) if ev.flags & flags::FROM_DELAYED == 0 => {
                    let cross = flags::CROSS_THREAD | flags::TO_DELAYED;
                    pairing
                        .free(
                            ev.addr,
                            Freed {
                                time: ev.time,
                                heap: *heap,
                                cross_thread: ev.flags & cross != 0,
                            },
                        )
                        .map(|(a, f)| (ev.addr, a, f))
                }
                Some(EventKind::Resize) => {
                    pairing.resize(ev.addr, ev.arg);
                    None
                }
                Some(k) => {
                    censuses.on_event(k, *heap, ev, &mut pages)?;
                    None
                }
                None => None,
            };
            if let Some((addr, a, f)) = pair {
                block_row(&mut blocks, addr, &a, Some(&f))?;
            }
        }
    }
    model.finish();
    let unmatched_frees = pairing.early_frees();
    for (addr, a) in pairing.into_open() {
        block_row(&mut blocks, addr, &a, None)?;
    }

    let mut tables = Vec::new();
    for (name, t) in [("events", events), ("blocks", blocks), ("pages", pages)] {
        let path = t.path().to_owned();
        tables.push((name, path, t.close()?));
    }
    let mut samples = Table::create(&dir("samples"), SAMPLES, &props, rows)?;
    for s in model.metrics().samples() {
        let counts = [
            s.time,
            s.requested_bytes,
            s.block_bytes,
            s.page_capacity_bytes,
            s.committed_bytes,
            s.segment_pages,
            s.segment_pages_used,
            s.live_blocks,
            s.allocs,
            s.frees,
            u64::from(s.threads),
            s.free_blocks,
            s.local_free_blocks,
            s.thread_free_blocks,
            s.full_pages,
        ];
        for (c, v) in counts.into_iter().enumerate() {
            samples.set(c, int(v));
        }
        samples.set(15, Some(Value::F64(s.internal_fragmentation())));
        samples.set(16, Some(Value::F64(s.page_fragmentation())));
        samples.set(17, Some(Value::F64(s.segment_fragmentation())));
        samples.end_row()?;
    }
    let path = samples.path().to_owned();
    tables.push(("samples", path, samples.close()?));

    let mut sites = Table::create(&dir("sites"), SITES, &props, rows)?;
    let mut sym = Symbolizer::new();
    for &id in &stacks {
        site_row(&mut sites, &mut sym, model.sites(), id)?;
    }
    let path = sites.path().to_owned();
    tables.push(("sites", path, sites.close()?));

    let mut process = Table::create(&dir("process"), PROCESS, &props, rows)?;
    let totals = model.totals();
    let live = model.live();
    process.set(0, text(meta.command.join(" ")));
    process.set(1, int(meta.start_unix_ns));
    process.set(2, int(reader.duration_ns()));
    let status = reader.end_info().map(|e| e.status);
    let code = match status {
        Some(ExitStatus::Code(c)) => Some(Value::I32(c)),
        _ => None,
    };
    let signal = match status {
        Some(ExitStatus::Signal(s)) => Some(Value::I32(s)),
        _ => None,
    };
    process.set(3, code);
    process.set(4, signal);
    process.set(5, Some(Value::Bool(reader.is_complete())));
    process.set(6, int(totals.events));
    process.set(7, int(events_lost));
    process.set(8, int(totals.allocs));
    process.set(9, int(totals.frees));
    process.set(10, int(live.len()));
    process.set(11, int(live.requested_bytes()));
    process.set(12, text(stack_mode_name(model.sites())));
    process.end_row()?;
    let path = process.path().to_owned();
    tables.push(("process", path, process.close()?));

    Ok(Summary {
        host,
        pid,
        tables,
        events_lost,
        unmatched_frees,
    })
}

/// The stack mode as `heaplens stats` names it.
fn stack_mode_name(s: &Sites) -> &'static str {
    match s.mode() {
        stack_mode::SAMPLED => "sampled",
        stack_mode::ALL => "all",
        _ if s.is_on() => "unknown",
        _ => "off",
    }
}

/// A row of `blocks`: allocation `a` at `addr` and its free (`None`: live at the end).
fn block_row(t: &mut Table, addr: u64, a: &Open, f: Option<&Freed>) -> Result<(), Error> {
    t.set(0, int(addr));
    t.set(1, int(a.size));
    t.set(2, int(a.block_size).filter(|_| a.block_size != 0));
    t.set(3, small(u32::from(a.bin)).filter(|_| a.bin != NO_BIN));
    t.set(4, int(u64::from(a.heap)));
    t.set(5, int(a.time));
    t.set(6, f.and_then(|f| int(f.time)));
    t.set(7, f.and_then(|f| int(u64::from(f.heap))));
    t.set(8, f.map(|f| Value::Bool(f.cross_thread)));
    let stacked = a.stack != 0;
    t.set(9, int(u64::from(a.stack)).filter(|_| stacked));
    t.set(
        10,
        Some(Value::F64(f64::from(a.weight))).filter(|_| stacked),
    );
    t.end_row()
}

/// A row of `sites`: the stack of leaf node `id`, symbolised, one element per function.
fn site_row(t: &mut Table, sym: &mut Symbolizer, sites: &Sites, id: u32) -> Result<(), Error> {
    let stack = sites.stack(id);
    t.set(0, int(u64::from(id)));
    t.set(1, text(sym.site_name(sites, id)));
    t.set(
        2,
        Some(Value::Bool(stack.last().is_some_and(|f| f.truncated))),
    );
    let mut rep = 0;
    for f in &stack {
        let loc = sym.frame(sites, f.pc);
        let n = loc.frames.len().max(1);
        for k in 0..n {
            let fr = loc.frames.get(k);
            // Inside the list: 1 for a required leaf, 2 for an optional one that is set.
            let opt = |v: Option<Value>| (v.is_some(), v);
            t.put(3, int(f.pc), 1, rep);
            for (col, (set, v)) in [
                (4, opt(fr.and_then(|x| x.function.clone()).and_then(text))),
                (5, opt(fr.and_then(|x| x.file.clone()).and_then(text))),
                (6, opt(fr.and_then(|x| x.line).and_then(small))),
                (7, opt(loc.module.clone().and_then(text))),
            ] {
                t.put(col, v, 1 + i16::from(set), rep);
            }
            t.put(8, int(loc.offset), 1, rep);
            t.put(9, Some(Value::Bool(k + 1 < n)), 1, rep);
            rep = 1;
        }
    }
    if stack.is_empty() {
        // An empty list: every leaf undefined at the list's level.
        for col in 3..=9 {
            t.put(col, None, 0, 0);
        }
    }
    t.end_row()
}

/// The census being read in each heap's stream (0: the collector's whole censuses).
#[derive(Default)]
struct Censuses {
    /// Census number and time, by heap.
    open: FastMap<u32, (u32, u64)>,
    /// A page's first half waiting for its second, by heap.
    half: FastMap<u32, CensusPage>,
}

impl Censuses {
    fn on_event(
        &mut self,
        kind: EventKind,
        heap: u32,
        ev: &heaplens_alloc::event::Event,
        pages: &mut Table,
    ) -> Result<(), Error> {
        match kind {
            EventKind::CensusBegin => {
                self.open.insert(heap, (ev.arg32, ev.time));
            }
            EventKind::CensusPage => {
                self.half.insert(heap, CensusPage::first_half(ev));
            }
            EventKind::CensusPage2 => {
                let Some(p) = self.half.remove(&heap) else {
                    return Ok(());
                };
                let p = p.with_second_half(ev);
                let (number, time) = self.open.get(&heap).copied().unwrap_or((0, ev.time));
                let kind = match crate::model::page::page_kind(p.kind) {
                    heaplens_alloc::bin::PageKind::Small => "small",
                    heaplens_alloc::bin::PageKind::Medium => "medium",
                    heaplens_alloc::bin::PageKind::Large => "large",
                    heaplens_alloc::bin::PageKind::Huge => "huge",
                };
                pages.set(0, int(u64::from(number)));
                pages.set(1, int(time));
                pages.set(2, int(u64::from(heap)));
                pages.set(3, int(p.start));
                pages.set(4, text(kind));
                pages.set(5, small(u32::from(p.bin)));
                pages.set(6, int(p.block_size));
                pages.set(7, int(u64::from(p.capacity)));
                pages.set(8, int(u64::from(p.owner)));
                pages.set(9, int(u64::from(p.used)));
                pages.set(10, int(u64::from(p.local_free)));
                pages.set(11, int(u64::from(p.thread_free)));
                pages.set(12, Some(Value::Bool(p.in_full)));
                pages.end_row()?;
            }
            EventKind::CensusEnd => {
                self.open.remove(&heap);
                self.half.remove(&heap);
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_values_stay_one_path_component() {
        assert_eq!(
            partition_value("build-07.example.org"),
            "build-07.example.org"
        );
        assert_eq!(partition_value("a/b=c d"), "a_b_c_d");
        assert_eq!(partition_value(""), "unknown");
        assert_eq!(partition_value(".."), "unknown");
    }
}
