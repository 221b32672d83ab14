//! The model rebuilt from a simulated allocator's events agrees with the simulation's true state.

mod common;

use common::{assert_agrees, model_of, simulate};
use heaplens_viewer::model::Model;
use heaplens_viewer::model::synth::{Synth, SynthConfig};

fn configs() -> Vec<(&'static str, SynthConfig)> {
    vec![
        ("default", SynthConfig::default()),
        (
            "cross-thread heavy",
            SynthConfig {
                seed: 7,
                threads: 6,
                cross_thread_percent: 70,
                late_free_percent: 60,
                ..SynthConfig::default()
            },
        ),
        (
            "thread churn",
            SynthConfig {
                seed: 11,
                threads: 3,
                churn_per_million: 25_000,
                cross_thread_percent: 40,
                live_per_thread: 80,
                sizes: vec![24, 1000, 3000, 9000],
                ..SynthConfig::default()
            },
        ),
        (
            "big blocks",
            SynthConfig {
                seed: 13,
                medium_percent: 30,
                large_per_mille: 40,
                live_per_thread: 40,
                churn_per_million: 5_000,
                ..SynthConfig::default()
            },
        ),
    ]
}

#[test]
fn model_agrees_with_the_simulated_allocator() {
    for (name, cfg) in configs() {
        let (s, events, census) = simulate(cfg, 40_000);
        let m = model_of(&events);
        eprintln!(
            "{name}: {} events, {} segments, {} pages, {} live blocks",
            events.len(),
            census.segments.len(),
            census.pages.len(),
            m.live().len()
        );
        assert!(
            census.pages.len() > 3,
            "{name}: the run should use some pages"
        );
        assert_agrees(&m, &s, &census);
    }
}

#[test]
fn the_stream_exercises_every_page_event_kind() {
    use heaplens_alloc::event::EventKind as K;
    let (_, events, _) = simulate(configs()[2].1.clone(), 40_000);
    for k in [
        K::Alloc,
        K::Free,
        K::Resize,
        K::Realloc,
        K::PageInit,
        K::PageExtend,
        K::PageCollect,
        K::PageFull,
        K::PageUnfull,
        K::PageRetire,
        K::PageFree,
        K::PageReclaim,
        K::SegmentAlloc,
        K::SegmentFree,
        K::SegmentAbandon,
        K::SegmentReclaim,
        K::ThreadStart,
        K::ThreadExit,
        K::ThreadName,
        K::Mark,
    ] {
        assert!(
            events.iter().any(|(_, e)| e.kind == k as u8),
            "no {} event",
            k.name()
        );
    }
    use heaplens_alloc::event::flags;
    for f in [
        flags::CROSS_THREAD,
        flags::TO_DELAYED,
        flags::FROM_DELAYED,
        flags::REALLOC,
    ] {
        assert!(
            events
                .iter()
                .any(|(_, e)| e.kind == K::Free as u8 && e.flags & f != 0),
            "no free with flag {f}"
        );
    }
}

#[test]
fn censuses_in_the_stream_are_checked_as_they_arrive() {
    let mut s = Synth::new(SynthConfig {
        seed: 3,
        churn_per_million: 10_000,
        ..SynthConfig::default()
    });
    let mut m = Model::new();
    let mut applied = 0;
    for round in 1..=5u32 {
        s.run(5_000);
        s.quiesce();
        s.emit_census();
        for (heap, ev) in &s.events()[applied..] {
            m.apply(*heap, ev);
        }
        applied = s.events().len();
        let check = m.last_census_check().expect("a census arrived");
        assert_eq!(check.number, round);
        assert_eq!(check.mismatches, 0, "{:?}", check.first);
        assert!(!check.resynced);
        assert_eq!(m.totals().censuses, u64::from(round));
    }
    assert_eq!(
        m.last_census().map(|c| c.pages.len()),
        Some(s.census().pages.len())
    );
}
