//! Peak memory of each export on a large synthetic trace (100 M events by default;
//! `HEAPLENS_BENCH_EXPORT_EVENTS=N` for another size): a heap of 1024 small pages of 64-byte
//! blocks, 50 live per page, churned by free + allocate pairs, every allocation tagged with one
//! of 64 stacks (stacks `all`). Each export runs in this process after the peak RSS is reset
//! (`/proc/self/clear_refs`), and prints its peak RSS (VmHWM), time and events per second; what
//! the allocator kept from the export before stays resident, so the first line is the clean
//! figure and `/usr/bin/time -v heaplens export` gives each format's own.
//! Memory must not grow with the number of events: compare a run at 10 M with one at 100 M.
//! `HEAPLENS_BENCH_TRACE=PATH` keeps the trace there.

use std::io::{BufWriter, sink};
use std::time::Instant;

use heaplens_alloc::bin::bin_of;
use heaplens_alloc::event::{Event, EventKind, stack_mode};
use heaplens_alloc::segment::INFO_SIZE;
use heaplens_alloc::{SEGMENT_SIZE, SMALL_PAGE_SIZE, SMALL_PAGES_PER_SEGMENT};
use heaplens_viewer::export::{self, Metric, Position, Profile};
use heaplens_viewer::symbols::Symbolizer;
use heaplens_viewer::trace::{EndInfo, Metadata, TraceReader, TraceWriter};

const BLOCK: u64 = 64;
const PAGES: u64 = 1024;
const PER_PAGE: u64 = 50;
const SITES: u64 = 64;
const BASE: u64 = 0x7f00_0000_0000;

fn ev(kind: EventKind, addr: u64, arg: u64, arg32: u32, aux: u16, t: u64) -> Event {
    Event {
        kind: kind as u8,
        addr,
        arg,
        arg32,
        aux,
        time: t,
        ..Event::default()
    }
}

fn page_start(p: u64) -> u64 {
    let seg = BASE + (p / SMALL_PAGES_PER_SEGMENT as u64) * SEGMENT_SIZE as u64;
    let i = p % SMALL_PAGES_PER_SEGMENT as u64;
    let start = seg + i * SMALL_PAGE_SIZE as u64;
    if i == 0 {
        start + INFO_SIZE as u64
    } else {
        start
    }
}

/// Stack nodes: 8 callers (ids 1..=8), each with 8 leaves (ids 9..=72).
fn stacks() -> Vec<Event> {
    let mut out = vec![ev(EventKind::StackMode, 0, 0, 0, stack_mode::ALL, 1)];
    for c in 0..8u64 {
        out.push(ev(
            EventKind::StackFrame,
            0x40_0000 + c * 0x100,
            0,
            1 + c as u32,
            0,
            1,
        ));
    }
    for s in 0..SITES {
        let parent = 1 + s / 8;
        out.push(ev(
            EventKind::StackFrame,
            0x50_0000 + s * 0x40,
            parent,
            9 + s as u32,
            0,
            1,
        ));
    }
    out
}

fn setup() -> Vec<Event> {
    let mut out = stacks();
    let segs = PAGES.div_ceil(SMALL_PAGES_PER_SEGMENT as u64);
    let bin = bin_of(BLOCK as usize) as u16;
    for s in 0..segs {
        let base = BASE + s * SEGMENT_SIZE as u64;
        out.push(ev(
            EventKind::SegmentAlloc,
            base,
            SEGMENT_SIZE as u64,
            SMALL_PAGES_PER_SEGMENT as u32,
            0,
            1,
        ));
    }
    for p in 0..PAGES {
        let start = page_start(p);
        let reserved = ((SMALL_PAGE_SIZE as u64 - (start % SMALL_PAGE_SIZE as u64)) / BLOCK) as u32;
        out.push(ev(EventKind::PageInit, start, BLOCK, reserved, bin, 1));
        out.push(ev(EventKind::PageExtend, start, 0, reserved, 0, 1));
        for k in 0..PER_PAGE {
            let site = 9 + ((p + k) % SITES) as u32;
            out.push(ev(EventKind::Alloc, start + k * BLOCK, 48, site, 0, 1));
        }
    }
    out
}

fn churn(n: u64, seed: &mut u64, t: u64) -> Vec<Event> {
    let mut out = Vec::with_capacity(2 * n as usize);
    for _ in 0..n {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let a = page_start(*seed % PAGES) + ((*seed >> 32) % PER_PAGE) * BLOCK;
        let site = 9 + ((*seed >> 20) % SITES) as u32;
        out.push(ev(EventKind::Free, a, 0, 0, 0, t));
        out.push(ev(EventKind::Alloc, a, 40 + (*seed >> 60), site, 0, t));
    }
    out
}

/// Peak RSS of this process since the last reset, in KiB.
fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn main() {
    let total: u64 = std::env::var("HEAPLENS_BENCH_EXPORT_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000_000);
    let keep = std::env::var_os("HEAPLENS_BENCH_TRACE");
    let path = keep.clone().map_or_else(
        || std::env::temp_dir().join(format!("heaplens-export-{}.hltrace", std::process::id())),
        std::path::PathBuf::from,
    );
    let start = Instant::now();
    let mut w = TraceWriter::create(&path, &Metadata::with_allocator_constants()).unwrap();
    w.write_batch(1, &setup()).unwrap();
    let (mut seed, mut t) = (0x9e37_79b9_7f4a_7c15u64, 2);
    while w.events_written() < total {
        t += 100_000;
        w.write_batch(1, &churn(1_000, &mut seed, t)).unwrap();
    }
    let events = w.events_written();
    w.finish(EndInfo::clean(0)).unwrap();
    let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
    println!(
        "export memory: a trace of {events} events ({:.0} MiB, {} live blocks of {SITES} sites) \
         written in {:.1} s",
        bytes as f64 / 1048576.0,
        PAGES * PER_PAGE,
        start.elapsed().as_secs_f64()
    );
    for name in ["pprof", "collapsed", "speedscope", "chrome", "csv"] {
        reset_peak();
        let before = peak_kib();
        let start = Instant::now();
        let mut reader = TraceReader::open(&path).unwrap();
        let r = export::replay_to(&mut reader, &Position::End, &[], &mut |_, _, _| {}).unwrap();
        let out = BufWriter::new(sink());
        let profile = || Profile::build(&r.model, &r.tally, &mut Symbolizer::new());
        match name {
            "pprof" => export::pprof::write(&profile(), Metric::InuseSpace, 0, "", out),
            "collapsed" => export::collapsed::write(&profile(), Metric::InuseSpace, out),
            "speedscope" => export::speedscope::write(&profile(), Metric::InuseSpace, "b", out),
            "chrome" => export::chrome::write(&r.model, "bench", 1, out),
            _ => export::csv::write(r.model.metrics().samples(), out),
        }
        .unwrap();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "  {name:<10} peak RSS {:6.1} MiB (resident before: {:5.1} MiB), {secs:5.1} s, {:.1} M events/s",
            peak_kib() as f64 / 1024.0,
            before as f64 / 1024.0,
            events as f64 / secs / 1e6
        );
    }
    if keep.is_none() {
        let _ = std::fs::remove_file(&path);
    }
}
