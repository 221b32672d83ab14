//! Helpers shared by the model's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use heaplens_alloc::event::Event;
use heaplens_viewer::model::synth::{Synth, SynthConfig};
use heaplens_viewer::model::{Census, LastEvent, Model, Page, Sample, Totals};

/// A segment's order-independent state: base, bytes, kind, owner, abandoned, purged, pages.
pub type SegmentCanon = (u64, u64, u8, u32, bool, u64, Vec<Page>);

/// The parts of a model's state that must not depend on the order of a tick's events.
#[derive(Debug, PartialEq)]
pub struct Canon {
    pub segments: Vec<SegmentCanon>,
    pub ghosts: usize,
    pub live: Vec<(u64, i32, u64)>,
    pub now: Sample,
    pub samples: Vec<Sample>,
    pub heaps: Vec<(u32, String, bool, u64, u64)>,
    pub totals: Totals,
}

/// The order-independent state of `m` (the "last event" of a page, generations, and the peak of
/// committed bytes within a tick legitimately depend on order).
pub fn canon(m: &Model) -> Canon {
    let mut segments: Vec<_> = m
        .segments()
        .iter()
        .map(|s| {
            let pages = s
                .pages
                .iter()
                .map(|p| {
                    let mut q: Page = p.clone();
                    q.last = LastEvent::default();
                    q
                })
                .collect();
            (
                s.base,
                s.bytes,
                s.kind,
                s.owner,
                s.abandoned,
                s.purged,
                pages,
            )
        })
        .collect();
    segments.sort_by_key(|s| s.0);
    let mut live: Vec<_> = m
        .live_blocks()
        .chain(m.unmatched_frees())
        .map(|b| (b.addr, b.count, b.size))
        .collect();
    live.sort_unstable();
    let mut heaps: Vec<_> = m
        .heaps()
        .iter()
        .map(|h| (h.id, h.name.clone(), h.is_alive(), h.allocs, h.frees))
        .collect();
    heaps.sort();
    Canon {
        segments,
        ghosts: m.segments().ghosts().len(),
        live,
        now: m.current(),
        samples: m.metrics().samples().to_vec(),
        heaps,
        totals: Totals {
            peak_committed: 0,
            ..m.totals()
        },
    }
}

/// Applies `(heap, event)` pairs to a new model.
pub fn model_of(events: &[(u32, Event)]) -> Model {
    let mut m = Model::new();
    for (heap, ev) in events {
        m.apply(*heap, ev);
    }
    m
}

/// [`model_of`] for a stream that lost events silently (on purpose): the debug build's
/// invariant check is off, since such a model owes nothing to the invariants.
pub fn model_of_lossy(events: &[(u32, Event)]) -> Model {
    let mut m = Model::new();
    m.set_invariant_checks(false);
    for (heap, ev) in events {
        m.apply(*heap, ev);
    }
    m
}

/// Runs a simulation for `ops` operations and brings it to a quiet point; returns the events in
/// true order and the true census.
pub fn simulate(cfg: SynthConfig, ops: usize) -> (Synth, Vec<(u32, Event)>, Census) {
    let mut s = Synth::new(cfg);
    s.run(ops);
    s.quiesce();
    let census = s.census();
    let events = s.events().to_vec();
    (s, events, census)
}

/// Asserts the model agrees with the simulation's truth: the census, live blocks with their
/// sizes, delayed counts and the metrics derived from them.
pub fn assert_agrees(m: &Model, s: &Synth, census: &Census) {
    let mismatches = m.compare(census);
    assert!(
        mismatches.is_empty(),
        "{} mismatches, first: {}",
        mismatches.len(),
        mismatches
            .iter()
            .take(5)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    );
    let truth = s.live_blocks();
    let live: BTreeMap<u64, (u64, i32)> = m
        .live_blocks()
        .map(|b| (b.addr, (b.size, b.count)))
        .collect();
    let want: BTreeMap<u64, (u64, i32)> = truth.iter().map(|(&a, &s)| (a, (s, 1))).collect();
    let extra: Vec<_> = live
        .iter()
        .filter(|(a, v)| want.get(a) != Some(v))
        .take(5)
        .collect();
    let missing: Vec<_> = want
        .iter()
        .filter(|(a, v)| live.get(a) != Some(v))
        .take(5)
        .collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "live blocks differ: model has {extra:x?}, truth has {missing:x?}"
    );
    assert_eq!(m.unmatched_frees().count(), 0);
    assert_eq!(
        m.live().overflow_len(),
        (0, overflow_huge(m)),
        "overflow entries left"
    );
    assert!(
        m.segments().ghosts().is_empty(),
        "ghosts left at a quiet point"
    );
    let delayed = s.delayed();
    for seg in m.segments().iter() {
        for p in &seg.pages {
            let want = delayed.get(&p.start).copied().unwrap_or(0);
            assert_eq!(p.delayed, want, "delayed of page {:#x}", p.start);
            if !p.in_use {
                assert_eq!(p.thread_free, 0, "thread_free of free page {:#x}", p.start);
            }
        }
    }
    let now = m.current();
    assert_eq!(now.requested_bytes, truth.values().sum::<u64>());
    assert_eq!(now.live_blocks, truth.len() as u64);
    let held: u64 = census
        .pages
        .iter()
        .map(|p| {
            let d = delayed.get(&p.start).copied().unwrap_or(0) as u64;
            (u64::from(p.used) - u64::from(p.thread_free) - d) * p.block_size
        })
        .sum();
    assert_eq!(now.block_bytes, held);
    let committed: u64 = census.segments.iter().map(|s| s.bytes).sum();
    assert_eq!(now.committed_bytes, committed);
    let heaps = s.running_heaps();
    assert_eq!(now.threads as usize, heaps.len());
}

/// Overflow entries a quiet model may hold: live huge blocks (their pages have no table).
fn overflow_huge(m: &Model) -> usize {
    m.segments()
        .iter()
        .filter(|s| s.page_kind() == heaplens_alloc::bin::PageKind::Huge)
        .filter(|s| m.live_block(s.pages[0].start).is_some_and(|b| b.count == 1))
        .count()
}

/// A short description of where two canonical states differ.
pub fn first_difference(a: &Canon, b: &Canon) -> String {
    if a.segments != b.segments {
        for (x, y) in a.segments.iter().zip(&b.segments) {
            if x.0 != y.0 {
                return format!("segment {:#x} vs {:#x}", x.0, y.0);
            }
            for (p, q) in x.6.iter().zip(&y.6) {
                if p != q {
                    return format!("page {:#x}: {p:?} vs {q:?}", p.start);
                }
            }
            if x != y {
                return format!("segment {:#x} differs", x.0);
            }
        }
        return format!("{} vs {} segments", a.segments.len(), b.segments.len());
    }
    if a.live != b.live {
        let d: Vec<_> = a
            .live
            .iter()
            .filter(|x| !b.live.contains(x))
            .take(3)
            .collect();
        let e: Vec<_> = b
            .live
            .iter()
            .filter(|x| !a.live.contains(x))
            .take(3)
            .collect();
        return format!("live blocks: {d:x?} vs {e:x?}");
    }
    if a.samples != b.samples {
        for (x, y) in a.samples.iter().zip(&b.samples) {
            if x != y {
                return format!("sample {x:?} vs {y:?}");
            }
        }
        return "sample counts differ".into();
    }
    format!(
        "ghosts {} vs {}, now {:?} vs {:?}, heaps {:?} vs {:?}, totals {:?} vs {:?}",
        a.ghosts, b.ghosts, a.now, b.now, a.heaps, b.heaps, a.totals, b.totals
    )
}
