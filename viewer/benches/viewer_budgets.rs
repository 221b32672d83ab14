//! The viewer's budgets (issue 4), printed as measured against their limits:
//! - a UI frame while the model takes updates, with 10 000 pages and 1 M live blocks: <= 16 ms;
//! - seeking anywhere in a 100 M-event trace: <= 100 ms.
//!
//! Frame: the app runs headless in egui_kittest on a live source holding the state; each frame a
//! batch of 20 000 churn events (10 000 frees, 10 000 allocations) goes to the ingest thread and
//! the frame is timed (layout and tessellation on the UI thread; painting is the GPU's). Each tab
//! is measured; the model update's own time is printed beside it. The baseline is the same frame
//! on an empty model.
//!
//! Seek: writes a trace of `HEAPLENS_BENCH_SEEK_EVENTS` (100 M) churn events with a keyframe
//! every 500 000 events, as `heaplens record` does, then times 20 seeks to random positions.
//!
//! `cargo bench -p heaplens-viewer --bench viewer_budgets`

use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use heaplens_alloc::batch::Batch;
use heaplens_alloc::bin::bin_of;
use heaplens_alloc::event::{Event, EventKind};
use heaplens_alloc::segment::INFO_SIZE;
use heaplens_alloc::{SEGMENT_SIZE, SMALL_PAGE_SIZE, SMALL_PAGES_PER_SEGMENT};
use heaplens_viewer::model::Model;
use heaplens_viewer::source::{Feed, Live, Replay};
use heaplens_viewer::trace::{EndInfo, Metadata, TraceWriter};
use heaplens_viewer::ui::{App, Source, WINDOW_SIZE};

const FRAME_BUDGET_MS: f64 = 16.0;
const SEEK_BUDGET_MS: f64 = 100.0;
const BLOCK: u64 = 64;

/// A heap of `pages` small pages of 64-byte blocks with `per_page` live blocks each.
struct Layout {
    pages: u64,
    per_page: u64,
    base: u64,
}

impl Layout {
    fn page_start(&self, p: u64) -> u64 {
        let seg = self.base + (p / SMALL_PAGES_PER_SEGMENT as u64) * SEGMENT_SIZE as u64;
        let i = p % SMALL_PAGES_PER_SEGMENT as u64;
        let start = seg + i * SMALL_PAGE_SIZE as u64;
        if i == 0 {
            start + INFO_SIZE as u64
        } else {
            start
        }
    }

    fn block(&self, p: u64, k: u64) -> u64 {
        self.page_start(p) + k * BLOCK
    }

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

    /// Segments, pages and the live blocks.
    fn setup(&self) -> Vec<Event> {
        let mut out = Vec::new();
        let segs = self.pages.div_ceil(SMALL_PAGES_PER_SEGMENT as u64);
        let bin = bin_of(BLOCK as usize) as u16;
        for s in 0..segs {
            let base = self.base + s * SEGMENT_SIZE as u64;
            out.push(Self::ev(
                EventKind::SegmentAlloc,
                base,
                SEGMENT_SIZE as u64,
                SMALL_PAGES_PER_SEGMENT as u32,
                0,
                1,
            ));
        }
        for p in 0..self.pages {
            let start = self.page_start(p);
            let reserved =
                ((SMALL_PAGE_SIZE as u64 - (start % SMALL_PAGE_SIZE as u64)) / BLOCK) as u32;
            out.push(Self::ev(
                EventKind::PageInit,
                start,
                BLOCK,
                reserved,
                bin,
                1,
            ));
            out.push(Self::ev(EventKind::PageExtend, start, 0, reserved, 0, 1));
            for k in 0..self.per_page {
                out.push(Self::ev(EventKind::Alloc, self.block(p, k), 48, 0, 0, 1));
            }
        }
        out
    }

    /// `n` pairs of free + allocate of the same block, spread over the pages, at time `t`.
    fn churn(&self, n: u64, seed: &mut u64, t: u64) -> Vec<Event> {
        let mut out = Vec::with_capacity(2 * n as usize);
        for _ in 0..n {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            let p = *seed % self.pages;
            let k = (*seed >> 32) % self.per_page;
            let a = self.block(p, k);
            out.push(Self::ev(EventKind::Free, a, 0, 0, 0, t));
            out.push(Self::ev(EventKind::Alloc, a, 40 + (*seed >> 60), 0, 0, t));
        }
        out
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn frames() {
    let layout = Layout {
        pages: 10_240,
        per_page: 100,
        base: 0x7f00_0000_0000,
    };
    println!(
        "frame: {} pages, {} live blocks, 20 000 events per frame",
        layout.pages,
        layout.pages * layout.per_page
    );
    for (name, populated) in [
        ("empty model (baseline)", false),
        ("10k pages, 1M blocks", true),
    ] {
        let (tx, rx) = bounded(64);
        let live = Live::start(rx, "bench");
        if populated {
            let setup = layout.setup();
            let n = setup.len() as u64;
            tx.send(Feed::from(Batch {
                heap: 1,
                events: setup,
            }))
            .unwrap();
            while live.view().applied < n {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let mut h = Harness::builder()
            .with_size(WINDOW_SIZE)
            .build_eframe(|_| App::new(Source::Live(live), "bench"));
        h.run_steps(2);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut t = 2;
        for tab in ["Overview", "Segment map", "Heaps", "Free lists", "Events"] {
            h.get_by_label(tab).click();
            h.run_steps(2);
            let mut times = Vec::new();
            let mut updates = Vec::new();
            for _ in 0..15 {
                t += 1_000_000;
                let batch = if populated {
                    layout.churn(10_000, &mut seed, t)
                } else {
                    Vec::new()
                };
                let applied_before = match h.state().source() {
                    Source::Live(l) => l.view().applied,
                    Source::Replay(_) => 0,
                };
                let n = batch.len() as u64;
                let start = Instant::now();
                tx.send(Feed::from(Batch {
                    heap: 1,
                    events: batch,
                }))
                .unwrap();
                if let Source::Live(l) = h.state().source() {
                    while l.view().applied < applied_before + n {
                        std::hint::spin_loop();
                    }
                }
                updates.push(start.elapsed().as_secs_f64() * 1e3);
                let start = Instant::now();
                h.step();
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
            let upd = median(&mut updates);
            let worst = times.iter().copied().fold(0.0, f64::max);
            let med = median(&mut times);
            println!(
                "  {name:<24} {tab:<12} frame median {med:6.2} ms, worst {worst:6.2} ms \
                 (+ model update {upd:5.2} ms) -> {:.2} of the {FRAME_BUDGET_MS} ms budget",
                (med + upd) / FRAME_BUDGET_MS
            );
        }
    }
}

fn seeks() {
    let total: u64 = std::env::var("HEAPLENS_BENCH_SEEK_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000_000);
    let layout = Layout {
        pages: 1_024,
        per_page: 50,
        base: 0x7f00_0000_0000,
    };
    let path = std::env::temp_dir().join(format!("heaplens-seek-{}.hltrace", std::process::id()));
    let start = Instant::now();
    let mut w = TraceWriter::create(&path, &Metadata::with_allocator_constants()).unwrap();
    let mut model = Model::new();
    let setup = layout.setup();
    w.write_batch(1, &setup).unwrap();
    model.apply_batch(1, &setup);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut t = 2;
    let mut next_keyframe = 500_000;
    while w.events_written() < total {
        t += 100_000;
        let batch = layout.churn(1_000, &mut seed, t);
        w.write_batch(1, &batch).unwrap();
        model.apply_batch(1, &batch);
        if w.events_written() >= next_keyframe {
            let snapshot = model.to_keyframe().unwrap();
            w.write_keyframe(w.events_written(), model.time(), &snapshot)
                .unwrap();
            next_keyframe += 500_000;
        }
    }
    let events = w.events_written();
    w.finish(EndInfo::clean(0)).unwrap();
    let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
    println!(
        "seek: a trace of {events} events ({:.0} MiB) written in {:.1} s",
        bytes as f64 / 1048576.0,
        start.elapsed().as_secs_f64()
    );
    let open = Instant::now();
    let mut r = Replay::open(&path).unwrap();
    println!(
        "  open (and show the end): {:.1} ms",
        open.elapsed().as_secs_f64() * 1e3
    );
    let mut times = Vec::new();
    for _ in 0..20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let target = seed % events;
        let start = Instant::now();
        r.seek_event(target).unwrap();
        times.push(start.elapsed().as_secs_f64() * 1e3);
        assert_eq!(r.position(), target);
    }
    let worst = times.iter().copied().fold(0.0, f64::max);
    let med = median(&mut times);
    println!(
        "  20 random seeks: median {med:.1} ms, worst {worst:.1} ms -> worst is {:.2} of the \
         {SEEK_BUDGET_MS} ms budget",
        worst / SEEK_BUDGET_MS
    );
    let _ = std::fs::remove_file(&path);
}

fn main() {
    frames();
    seeks();
}
