//! Seeking through keyframes: at random positions of several recorded traces, the model a
//! replay reaches through the latest keyframe before the position equals, whole
//! ([`Model::differences`]: every segment, page, list length, live block, ghost, heap, sample
//! and marker), the model built by applying every event from the start.
//!
//! Each asset trace is rewritten with a keyframe about every twelfth of its events, made the way
//! `heaplens record` makes them (the model serialised with postcard after a batch).

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use heaplens_alloc::event::Event;
use heaplens_viewer::model::Model;
use heaplens_viewer::source::Replay;
use heaplens_viewer::trace::{EndInfo, TraceReader, TraceWriter, WriterOptions};
use proptest::prelude::*;

const TRACES: [&str; 4] = [
    "server.hltrace",
    "producer-consumer.hltrace",
    "thread-churn.hltrace",
    "fragmentation.hltrace",
];

/// A trace with keyframes: its events, and a replay of it (positioned anywhere).
struct Seekable {
    events: Vec<(u32, Event)>,
    keyframes: Vec<u64>,
    replay: Mutex<Replay>,
}

/// Rewrites asset trace `name` with keyframes about every twelfth of its events.
fn with_keyframes(name: &str) -> Seekable {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/traces")
        .join(name);
    let mut r = TraceReader::open(&src).unwrap();
    let meta = r.metadata().clone();
    let events: Vec<(u32, Event)> = r.events().map(Result::unwrap).collect();
    let every = (events.len() as u64 / 12).max(1);
    let path =
        std::env::temp_dir().join(format!("heaplens-keyframes-{}-{name}", std::process::id()));
    let options = WriterOptions {
        chunk_events: 16 * 1024,
        ..WriterOptions::default()
    };
    let mut w = TraceWriter::create_with(&path, &meta, options).unwrap();
    let mut model = Model::new();
    let (mut applied, mut next) = (0u64, every);
    let mut keyframes = Vec::new();
    // Batches as the collector hands them over: one heap's events, at most a buffer's worth.
    let batches = events
        .chunk_by(|a, b| a.0 == b.0)
        .flat_map(|run| run.chunks(2048));
    for batch in batches {
        let heap = batch[0].0;
        let evs: Vec<Event> = batch.iter().map(|(_, e)| *e).collect();
        w.write_batch(heap, &evs).unwrap();
        model.apply_batch(heap, &evs);
        applied += evs.len() as u64;
        if applied >= next {
            let snapshot = model.to_keyframe().unwrap();
            w.write_keyframe(applied, model.time(), &snapshot).unwrap();
            keyframes.push(applied);
            next = applied + every;
        }
    }
    w.finish(EndInfo::clean(0)).unwrap();
    let replay = Replay::open(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        keyframes.len() >= 4,
        "{name}: {} keyframes",
        keyframes.len()
    );
    Seekable {
        events,
        keyframes,
        replay: Mutex::new(replay),
    }
}

fn traces() -> &'static [Seekable] {
    static T: OnceLock<Vec<Seekable>> = OnceLock::new();
    T.get_or_init(|| TRACES.iter().map(|n| with_keyframes(n)).collect())
}

/// The model after the first `n` events, applied one by one from an empty model.
fn from_start(events: &[(u32, Event)], n: usize) -> Model {
    let mut m = Model::new();
    for (heap, e) in &events[..n] {
        m.apply(*heap, e);
    }
    m
}

/// Seeks the replay of trace `t` to `pos` and compares its model with the one from the start.
fn check(t: usize, pos: u64) -> Result<(), TestCaseError> {
    let s = &traces()[t];
    let mut replay = s.replay.lock().unwrap();
    let before = replay.position();
    replay.seek_event(pos).unwrap();
    prop_assert_eq!(replay.position(), pos);
    // A seek back goes through the latest keyframe at or before `pos` (before the first, it
    // replays from the start); a short seek forward applies the events in between.
    let keyframe = s.keyframes.iter().rev().find(|&&k| k <= pos).copied();
    if pos < before && keyframe.is_some() {
        prop_assert_eq!(replay.restored_from(), keyframe);
    }
    let want = from_start(&s.events, pos as usize);
    let diff = replay.view().model.differences(&want);
    prop_assert!(
        diff.is_empty(),
        "{} at event {pos} (keyframes {:?}): {}",
        TRACES[t],
        s.keyframes,
        diff.join("\n")
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_seek_through_a_keyframe_equals_replaying_from_the_start(
        t in 0..TRACES.len(),
        at in any::<prop::sample::Index>(),
    ) {
        let total = traces()[t].events.len();
        // Anywhere before the end (the end is where the replay opened, with its last sample).
        check(t, at.index(total) as u64)?;
    }
}

#[test]
fn seeks_at_and_around_each_keyframe_equal_replaying_from_the_start() {
    for (t, s) in traces().iter().enumerate() {
        // Backwards, so that each seek goes through a keyframe.
        for &k in s.keyframes.iter().rev() {
            for pos in [k + 1, k, k - 1] {
                if pos < s.events.len() as u64 {
                    check(t, pos).unwrap();
                }
            }
        }
    }
}

#[test]
fn the_comparison_sees_a_difference() {
    let s = &traces()[0];
    let a = from_start(&s.events, 1000);
    let b = from_start(&s.events, 1001);
    assert!(!a.differences(&b).is_empty());
    assert!(a.differences(&from_start(&s.events, 1000)).is_empty());
}
