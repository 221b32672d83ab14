//! Keyframes made by the first replay of a trace that has none (as `heaplens record` writes
//! them): seeks through them equal replaying from the start, stored in the file they are the
//! file's own keyframes at the next opening (which no longer goes through every event), and a
//! file that cannot take them is left as it was.

use std::path::{Path, PathBuf};

use heaplens_alloc::event::Event;
use heaplens_viewer::model::Model;
use heaplens_viewer::model::synth::{Synth, SynthConfig};
use heaplens_viewer::source::Replay;
use heaplens_viewer::source::keyframes::KEYFRAME_EVERY;
use heaplens_viewer::trace::{
    Appended, EndInfo, Metadata, NewKeyframe, TraceReader, TraceWriter, WriterOptions,
    append_keyframes,
};

/// A synthetic program's events, `n` of them or a few more.
fn events(n: usize) -> Vec<(u32, Event)> {
    let mut synth = Synth::new(SynthConfig {
        seed: 11,
        ..SynthConfig::default()
    });
    synth.run_events(n);
    synth.take_events()
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("heaplens-kfopen-{}-{name}", std::process::id()))
}

/// Writes `events` to `path` as the recorder does: batches of one heap, no keyframes; with
/// `finish`, End chunk, index and trailer. Stored uncompressed, so that keyframes of the
/// synthetic model (which grows with its time series) are small against the events' bytes and
/// come every 500 k events.
fn write(path: &Path, events: &[(u32, Event)], finish: bool) {
    let options = WriterOptions {
        chunk_events: 64 * 1024,
        zstd_level: None,
    };
    let mut w = TraceWriter::create_with(path, &Metadata::default(), options).unwrap();
    for batch in events.chunk_by(|a, b| a.0 == b.0) {
        let evs: Vec<Event> = batch.iter().map(|(_, e)| *e).collect();
        w.write_batch(batch[0].0, &evs).unwrap();
    }
    if finish {
        w.finish(EndInfo::clean(0)).unwrap();
    } else {
        // Dropped unfinished, as when the recorder fails: the events, no End chunk, no index.
        drop(w);
    }
}

/// A synthetic program's `n` events (or a few more) written to temporary trace `name` (see
/// [`write`]).
fn trace(name: &str, n: usize, finish: bool) -> (Vec<(u32, Event)>, PathBuf) {
    let events = events(n);
    let path = temp(name);
    write(&path, &events, finish);
    (events, path)
}

fn from_start(events: &[(u32, Event)], n: u64) -> Model {
    let mut m = Model::new();
    for (heap, e) in &events[..n as usize] {
        m.apply(*heap, e);
    }
    m
}

/// Seeks `replay` back to `pos` and compares its model with the one built from the start;
/// returns the keyframe it went through.
fn seek_matches(replay: &mut Replay, events: &[(u32, Event)], pos: u64) -> Option<u64> {
    replay.seek_event(pos).unwrap();
    assert_eq!(replay.position(), pos);
    let diff = replay.view().model.differences(&from_start(events, pos));
    assert!(diff.is_empty(), "at event {pos}: {}", diff.join("\n"));
    replay.restored_from()
}

#[test]
fn keyframes_made_on_opening_serve_seeks_and_the_next_opening_once_stored() {
    let (events, path) = trace("stored.hltrace", 3_000_000, true);
    let total = events.len() as u64;
    assert!(TraceReader::open(&path).unwrap().keyframes().is_empty());

    let mut replay = Replay::open(&path).unwrap();
    assert_eq!(replay.position(), total);
    let built: Vec<u64> = replay
        .built_keyframes()
        .iter()
        .map(|k| k.event_index)
        .collect();
    assert!(built.len() >= 2, "{built:?} in {total} events");
    assert_eq!(built[0], KEYFRAME_EVERY);
    assert!(built.windows(2).all(|w| w[1] - w[0] >= KEYFRAME_EVERY));
    // Backwards through each keyframe, and between them.
    for &k in built.iter().rev() {
        assert_eq!(seek_matches(&mut replay, &events, k + 7), Some(k));
        assert_eq!(seek_matches(&mut replay, &events, k), Some(k));
    }
    seek_matches(&mut replay, &events, KEYFRAME_EVERY - 3);

    let before = std::fs::metadata(&path).unwrap().len();
    let Appended::Added { keyframes, bytes } = replay.store_keyframes(&path).unwrap() else {
        panic!("nothing added");
    };
    assert_eq!(keyframes, built.len());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), before + bytes);
    // A second store (another viewer of the same file) finds them there.
    assert_eq!(
        replay.store_keyframes(&path).unwrap(),
        Appended::NothingToAdd
    );

    // The file reads as a finished trace with those keyframes, every chunk verifying.
    let mut reader = TraceReader::open(&path).unwrap();
    reader.verify_all().unwrap();
    assert!(reader.is_complete());
    assert_eq!(reader.total_events(), total);
    let stored: Vec<u64> = reader.keyframes().iter().map(|k| k.event_index).collect();
    assert_eq!(stored, built);
    let read: Vec<(u32, Event)> = reader.events().map(Result::unwrap).collect();
    assert!(read == events, "the events read back as written");

    // The next opening starts from the last stored keyframe and makes none.
    let mut again = Replay::open(&path).unwrap();
    assert!(again.built_keyframes().is_empty());
    assert_eq!(again.restored_from(), built.last().copied());
    assert_eq!(
        seek_matches(&mut again, &events, built[1] + 1),
        Some(built[1])
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn an_unfinished_trace_gets_keyframes_in_memory_and_its_file_is_left_as_it_was() {
    let (events, path) = trace("cut.hltrace", 1_100_000, false);
    let before = std::fs::read(&path).unwrap();
    let mut replay = Replay::open(&path).unwrap();
    assert!(!replay.built_keyframes().is_empty());
    assert_eq!(
        seek_matches(&mut replay, &events, KEYFRAME_EVERY + 1),
        Some(KEYFRAME_EVERY)
    );
    let err = replay.store_keyframes(&path).unwrap_err();
    assert!(err.to_string().contains("not finished"), "{err}");
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the file is unchanged"
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn keyframes_that_do_not_fit_the_trace_change_nothing() {
    let (events, path) = trace("misfit.hltrace", 100_000, true);
    let before = std::fs::read(&path).unwrap();
    let raw = Model::new().to_keyframe().unwrap();
    let zstd = zstd::bulk::compress(&raw, 3).unwrap();
    let k = |event_index| NewKeyframe {
        event_index,
        time: 0,
        raw_len: raw.len(),
        zstd: &zstd,
    };
    let total = events.len() as u64;
    // The first would fit: the second, past the events or out of order, stops them both
    // before anything is written.
    for bad in [[k(10), k(total + 1)], [k(20), k(10)]] {
        let err = append_keyframes(&path, &bad).unwrap_err();
        assert!(err.to_string().contains("nothing was added"), "{err}");
        assert!(
            std::fs::read(&path).unwrap() == before,
            "the file is unchanged"
        );
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_short_trace_gets_no_keyframes() {
    let (_, path) = trace("short.hltrace", 100_000, true);
    let replay = Replay::open(&path).unwrap();
    assert!(replay.built_keyframes().is_empty());
    assert_eq!(
        replay.store_keyframes(&path).unwrap(),
        Appended::NothingToAdd
    );
    let _ = std::fs::remove_file(&path);
}
