//! Trace files round-trip: whatever batches, keyframes and end a recorder writes, a reader gives
//! back exactly, through every chunk size and with or without compression; lookups by event and
//! time agree with the data; a recorder that stops without finishing leaves a readable file.

use std::io::Cursor;

use heaplens_alloc::event::{Event, EventKind, flags};
use heaplens_viewer::trace::synth::{self, SynthConfig};
use heaplens_viewer::trace::{
    EndInfo, EndReason, ExitStatus, Metadata, SharedBatch, Status, TraceReader, TraceWriter,
    WriterOptions,
};
use proptest::prelude::*;

/// Something written: batches and keyframes in order, then the end.
#[derive(Clone, Debug)]
enum Item {
    Batch(u32, Vec<Event>),
    /// A keyframe at `events written so far − back`.
    Keyframe {
        back: u64,
        time: u64,
        payload: Vec<u8>,
    },
}

fn kind() -> impl Strategy<Value = u8> {
    prop_oneof![
        8 => Just(EventKind::Alloc as u8),
        8 => Just(EventKind::Free as u8),
        1 => Just(EventKind::Resize as u8),
        1 => Just(EventKind::Realloc as u8),
        2 => prop::sample::select(vec![10u8, 11, 12, 13, 14, 15, 16, 17]),
        1 => prop::sample::select(vec![20u8, 21, 22, 23, 40, 41, 60, 61, 62, 63, 64]),
        1 => prop::sample::select(vec![30u8, 31, 32, 50, 51, 52]),
        1 => any::<u8>(),
    ]
}

/// Events shaped like the allocator's (a small pool of addresses, so frees find their allocs and
/// blocks are reused), with arbitrary values mixed in.
fn event() -> impl Strategy<Value = Event> {
    let addr = prop_oneof![
        6 => (0u64..64).prop_map(|i| 0x7f00_0000_0000 + i * 48),
        1 => (0u64..8).prop_map(|i| 0x7f00_0040_0000 + (i << 16)),
        1 => any::<u64>(),
        1 => Just(0u64),
    ];
    let small = prop_oneof![4 => Just(0u64), 4 => 1u64..5000, 1 => any::<u64>()];
    (
        kind(),
        prop_oneof![6 => Just(0u8), 1 => Just(flags::CROSS_THREAD), 1 => any::<u8>()],
        prop_oneof![6 => Just(0u16), 1 => 1u16..80, 1 => any::<u16>()],
        prop_oneof![4 => Just(0u32), 2 => 1u32..5000, 1 => any::<u32>()],
        addr,
        small,
        prop_oneof![8 => 0u64..3, 1 => any::<u64>()],
    )
        .prop_map(|(kind, flags, aux, arg32, addr, arg, time)| Event {
            kind,
            flags,
            aux,
            arg32,
            addr,
            arg,
            time,
        })
}

fn items() -> impl Strategy<Value = Vec<Item>> {
    let batch = (
        prop_oneof![4 => 0u32..4, 1 => any::<u32>()],
        prop::collection::vec(event(), 0..40),
    )
        .prop_map(|(h, evs)| Item::Batch(h, evs));
    let keyframe = (
        0u64..10,
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(back, time, payload)| Item::Keyframe {
            back,
            time,
            payload,
        });
    prop::collection::vec(prop_oneof![6 => batch, 1 => keyframe], 0..30)
}

fn end() -> impl Strategy<Value = EndInfo> {
    (
        prop::sample::select(vec![
            EndReason::Clean,
            EndReason::PeerVanished,
            EndReason::Truncated,
        ]),
        prop_oneof![
            Just(ExitStatus::Unknown),
            any::<i32>().prop_map(ExitStatus::Code),
            any::<i32>().prop_map(ExitStatus::Signal),
        ],
    )
        .prop_map(|(reason, status)| EndInfo { reason, status })
}

/// What a reader should give back.
#[derive(Default)]
struct Expected {
    events: Vec<(u32, Event)>,
    /// (event index, time, payload), in the order written.
    keyframes: Vec<(u64, u64, Vec<u8>)>,
}

fn write(items: &[Item], options: WriterOptions, end: EndInfo) -> (Vec<u8>, Expected) {
    let meta = Metadata::with_allocator_constants();
    let mut w = TraceWriter::new(Vec::new(), &meta, options).unwrap();
    let mut want = Expected::default();
    for item in items {
        match item {
            Item::Batch(h, evs) => {
                w.write_batch(*h, evs).unwrap();
                want.events.extend(evs.iter().map(|&e| (*h, e)));
            }
            Item::Keyframe {
                back,
                time,
                payload,
            } => {
                let at = w.events_written().saturating_sub(*back);
                w.write_keyframe(at, *time, payload).unwrap();
                want.keyframes.push((at, *time, payload.clone()));
            }
        }
    }
    (w.finish(end).unwrap(), want)
}

fn read_all(r: &mut TraceReader<Cursor<&[u8]>>) -> Vec<(u32, Event)> {
    r.events().collect::<Result<Vec<_>, _>>().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_batches_keyframes_and_end_round_trip(
        items in items(),
        chunk_events in prop_oneof![1u32..8, 8u32..64, Just(128 * 1024)],
        compress in any::<bool>(),
        end in end(),
    ) {
        let options = WriterOptions {
            chunk_events,
            zstd_level: compress.then_some(3),
        };
        let (bytes, want) = write(&items, options, end);
        let mut r = TraceReader::new(Cursor::new(&bytes[..])).unwrap();
        prop_assert_eq!(r.status(), Status::Complete);
        prop_assert!(r.damage().is_none());
        prop_assert_eq!(r.end_info(), Some(end));
        prop_assert_eq!(r.total_events(), want.events.len() as u64);
        prop_assert_eq!(read_all(&mut r), want.events.clone());

        // Chunks: contiguous event ranges, within the size, their times as the events say.
        let mut next = 0;
        for (i, c) in r.chunks().to_vec().iter().enumerate() {
            prop_assert_eq!(c.first_event, next);
            prop_assert!(c.events <= chunk_events);
            next += u64::from(c.events);
            let evs = r.read_chunk(i).unwrap();
            let lo = evs.iter().map(|e| e.1.time).min().unwrap();
            let hi = evs.iter().map(|e| e.1.time).max().unwrap();
            prop_assert_eq!((c.start_time, c.end_time), (lo, hi));
            prop_assert_eq!(r.index().chunk_of_event(c.first_event), Some(i));
        }
        prop_assert_eq!(r.duration_ns(), want.events.iter().map(|e| e.1.time).max().unwrap_or(0));

        // Keyframes: all of them, in event order, with their payloads.
        let mut kf = want.keyframes.clone();
        kf.sort_by_key(|k| k.0);
        prop_assert_eq!(r.keyframes().len(), kf.len());
        for (k, (at, time, payload)) in kf.iter().enumerate() {
            let info = r.keyframes()[k];
            prop_assert_eq!((info.event_index, info.time), (*at, *time));
            prop_assert_eq!(&r.read_keyframe(k).unwrap(), payload);
            let before = r.keyframe_before_event(*at).unwrap();
            prop_assert!(before.event_index == *at);
        }

        // Any range of events reads as the same slice.
        let n = want.events.len() as u64;
        let (a, b) = (n / 3, n - n / 4);
        prop_assert_eq!(r.read_events(a..b).unwrap(), want.events[a as usize..b as usize].to_vec());
    }
}

fn synthetic(events: usize) -> Vec<(u32, Vec<Event>)> {
    synth::generate(&SynthConfig {
        threads: 3,
        events,
        seed: 11,
        census_every: 20,
        ..SynthConfig::default()
    })
}

#[test]
fn a_realistic_stream_round_trips_through_a_file() {
    let batches = synthetic(400_000);
    let dir = std::env::temp_dir().join(format!("heaplens-trace-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("run.hltrace");
    let meta = Metadata {
        command: vec!["./server".into(), "--port".into(), "80".into()],
        pid: 1234,
        hostname: "box".into(),
        ..Metadata::for_this_process()
    };
    let mut w = TraceWriter::create(&path, &meta).unwrap();
    let mut kf = Vec::new();
    for (i, (h, evs)) in batches.iter().enumerate() {
        w.write_batch(*h, evs).unwrap();
        if i % 300 == 0 {
            let at = w.events_written();
            w.write_keyframe(at, evs[evs.len() - 1].time, &at.to_le_bytes())
                .unwrap();
            kf.push(at);
        }
    }
    w.finish(EndInfo::clean(3)).unwrap();

    let mut r = TraceReader::open(&path).unwrap();
    assert!(r.is_complete());
    assert_eq!(r.metadata(), &meta);
    assert_eq!(r.metadata().bin_block_sizes[0], 16);
    assert_eq!(r.end_info().unwrap().to_string(), "process exited (code 3)");
    assert_eq!(
        r.keyframes()
            .iter()
            .map(|k| k.event_index)
            .collect::<Vec<_>>(),
        kf
    );
    let all: Vec<_> = r.events().map(Result::unwrap).collect();
    assert_eq!(all, synth::flatten(&batches));
    // Seeking: the keyframe before an event, and the chunk that holds it.
    let target = all.len() as u64 * 2 / 3;
    let k = *r.keyframe_before_event(target).unwrap();
    assert!(k.event_index <= target && target - k.event_index < 400_000);
    let (info, snapshot) = r.keyframe_for_event(target).unwrap().unwrap();
    assert_eq!(info, k);
    assert_eq!(snapshot, k.event_index.to_le_bytes());
    // Before the first keyframe (written after the first batch), replay starts from zero.
    assert!(r.keyframe_for_event(kf[0] - 1).unwrap().is_none());
    let tail = r.read_events(k.event_index..target).unwrap();
    assert_eq!(tail, all[k.event_index as usize..target as usize]);
    let t = all[target as usize].1.time;
    let c = r.index().chunk_at_time(t).unwrap();
    assert!(r.chunks()[c].start_time <= t && t <= r.chunks()[c].end_time);
    assert!(r.keyframe_before_time(t).unwrap().time <= t);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A trace written where one was replaces it with a new file (ext4 writes a truncated file's
/// data out at `close`, which cost a recording 18 ms): a hard link to the old trace keeps its
/// bytes, and the path reads as the new trace. A symbolic link is followed, as
/// `File::create` does.
#[test]
#[cfg(unix)]
fn a_trace_written_over_another_is_a_new_file() {
    use std::os::unix::fs::MetadataExt;
    let dir = std::env::temp_dir().join(format!("heaplens-trace-over-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |path: &std::path::Path, events: usize| {
        let mut w = TraceWriter::create(path, &Metadata::for_this_process()).unwrap();
        for (h, evs) in synthetic(events) {
            w.write_batch(h, &evs).unwrap();
        }
        w.finish(EndInfo::clean(0)).unwrap();
    };
    let count = |path: &std::path::Path| TraceReader::open(path).unwrap().events().count();
    let path = dir.join("run.hltrace");
    let kept = dir.join("kept.hltrace");
    write(&path, 30_000);
    std::fs::hard_link(&path, &kept).unwrap();
    let old = std::fs::metadata(&path).unwrap();
    write(&path, 10_000);
    let new = std::fs::metadata(&path).unwrap();
    assert_ne!(new.ino(), old.ino(), "the path names a new file");
    assert_eq!(std::fs::metadata(&kept).unwrap().len(), old.len());
    assert!(count(&kept) > count(&path), "the old trace is whole");

    let link = dir.join("link.hltrace");
    std::os::unix::fs::symlink(&kept, &link).unwrap();
    write(&link, 10_000);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(count(&kept), count(&path), "written through the link");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_recorder_that_stops_without_finishing_leaves_a_readable_file() {
    let batches = synthetic(60_000);
    let all = synth::flatten(&batches);
    let meta = Metadata::with_allocator_constants();
    let options = WriterOptions {
        chunk_events: 10_000,
        ..WriterOptions::default()
    };
    let dir = std::env::temp_dir().join(format!("heaplens-trace-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // Dropped (a panicking recorder): pending events are flushed, the file reads as truncated.
    let path = dir.join("dropped.hltrace");
    let mut w = TraceWriter::create_with(&path, &meta, options).unwrap();
    for (h, evs) in &batches {
        w.write_batch(*h, evs).unwrap();
    }
    drop(w);
    let mut r = TraceReader::open(&path).unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    assert_eq!(r.status(), Status::Truncated { at: len });
    assert_eq!(r.end_info(), None);
    assert_eq!(r.total_events(), all.len() as u64);
    assert_eq!(r.events().map(Result::unwrap).collect::<Vec<_>>(), all);
    let msg = r.damage().unwrap().to_string();
    assert!(
        msg.starts_with(&format!(
            "truncated at byte {len}; {} events up to ",
            all.len()
        )),
        "{msg}"
    );

    // Killed mid-chunk (the file is cut after the last flush): everything flushed reads.
    let path = dir.join("killed.hltrace");
    let mut w = TraceWriter::create_with(&path, &meta, options).unwrap();
    let mut flushed = 0;
    for (i, (h, evs)) in batches.iter().enumerate() {
        w.write_batch(*h, evs).unwrap();
        if i == batches.len() / 2 {
            w.flush().unwrap();
            flushed = w.events_written();
        }
    }
    let cut = w.bytes_written() + 100; // part of the next chunk was written
    drop(w);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(cut).unwrap();
    let mut r = TraceReader::open(&path).unwrap();
    assert!(matches!(r.status(), Status::Truncated { .. }));
    assert!(r.total_events() >= flushed);
    let got: Vec<_> = r.events().map(Result::unwrap).collect();
    assert_eq!(got[..], all[..got.len()]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn writer_rejects_impossible_requests() {
    let meta = Metadata::default();
    let bad = WriterOptions {
        chunk_events: 0,
        ..WriterOptions::default()
    };
    assert!(TraceWriter::new(Vec::new(), &meta, bad).is_err());
    let mut w = TraceWriter::new(Vec::new(), &meta, WriterOptions::default()).unwrap();
    w.write_batch(1, &[Event::default(); 3]).unwrap();
    assert!(
        w.write_keyframe(4, 0, b"x").is_err(),
        "keyframe past the events"
    );
    w.write_keyframe(3, 0, b"x").unwrap();
    let bytes = w.finish(EndInfo::clean(0)).unwrap();
    let r = TraceReader::new(Cursor::new(&bytes[..])).unwrap();
    assert_eq!(r.keyframes().len(), 1);
}

/// `events` synthetic events, and a writer's metadata and options for chunks of 5000 of them,
/// compressed: several chunks in flight on the helpers.
fn in_small_chunks(events: usize) -> (Vec<(u32, Vec<Event>)>, Metadata, WriterOptions) {
    let options = WriterOptions {
        chunk_events: 5_000,
        zstd_level: Some(1),
    };
    (
        synthetic(events),
        Metadata::with_allocator_constants(),
        options,
    )
}

#[test]
fn compressing_on_a_helper_thread_writes_the_same_file() {
    // Events chunks go through the helper (several in flight), keyframes and the end do not:
    // the bytes must be those of the writer that compresses in line, in the same order.
    let (batches, meta, options) = in_small_chunks(60_000);
    // `shared`: the batches go as shared ones, which the helper encodes too.
    let write = |helper: bool, shared: bool| {
        let w = TraceWriter::new(Vec::new(), &meta, options).unwrap();
        let mut w = if helper {
            w.compress_on_helper(|| || {}).unwrap()
        } else {
            w
        };
        for (i, (h, evs)) in batches.iter().enumerate() {
            if shared {
                let batch: SharedBatch = std::sync::Arc::new(evs.clone());
                w.write_shared(*h, &batch).unwrap();
            } else {
                w.write_batch(*h, evs).unwrap();
            }
            if i % 7 == 3 {
                let at = w.events_written();
                w.write_keyframe(at, 0, &[i as u8; 300]).unwrap();
            }
        }
        w.finish(EndInfo::clean(0)).unwrap()
    };
    let inline = write(false, false);
    assert_eq!(write(true, false), inline);
    assert_eq!(write(true, true), inline, "encoded on the helper");
    assert_eq!(write(false, true), inline);
    let mut r = TraceReader::new(Cursor::new(inline)).unwrap();
    assert_eq!(r.status(), Status::Complete);
    assert_eq!(
        r.events().map(Result::unwrap).collect::<Vec<_>>(),
        synth::flatten(&batches)
    );
}

#[test]
fn the_last_chunk_is_cut_for_the_idle_helper_and_the_events_stay_the_same() {
    // Chunks of 5000 events: the first goes to helper 0, which then waits (its `before_each`
    // blocks until the test lets it go), the second to helper 1, which does not; the open third
    // chunk's parts queue on helper 0. Told that no more events are coming, the writer cuts the
    // open chunk once helper 0 has at least as many queued as helper 1: the rest of the stream
    // goes to helper 1.
    let (batches, meta, options) = in_small_chunks(30_000);
    let inline = {
        let mut w = TraceWriter::new(Vec::new(), &meta, options).unwrap();
        for (h, evs) in &batches {
            w.write_batch(*h, evs).unwrap();
        }
        w.finish(EndInfo::clean(0)).unwrap()
    };
    let chunks = |bytes: &[u8]| TraceReader::new(Cursor::new(bytes)).unwrap().chunks().len();
    let events = |bytes: Vec<u8>| {
        let mut r = TraceReader::new(Cursor::new(bytes)).unwrap();
        assert_eq!(r.status(), Status::Complete);
        r.events().map(Result::unwrap).collect::<Vec<_>>()
    };
    let write = |remaining: u64| {
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let wait = std::sync::Mutex::new(Some(wait));
        let w = TraceWriter::new(Vec::new(), &meta, options).unwrap();
        let mut w = w
            .compress_on_helper(|| {
                // The first helper made waits before its first chunk until `go` is sent.
                let mut first = wait.lock().unwrap().take();
                move || {
                    if let Some(wait) = first.take() {
                        let _ = wait.recv();
                    }
                }
            })
            .unwrap();
        let mut sent = 0;
        let (mut asked, mut cut) = (false, false);
        for (h, evs) in &batches {
            let batch: SharedBatch = std::sync::Arc::new(evs.clone());
            w.write_shared(*h, &batch).unwrap();
            sent += evs.len();
            if sent > 10_500 && !asked {
                asked = true;
                // Helper 1 drains its chunk meanwhile: ask until the writer cuts (or the
                // remaining count never lets it).
                let start = std::time::Instant::now();
                while !cut && start.elapsed() < std::time::Duration::from_secs(2) {
                    cut = w.last_events_coming(remaining).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                go.send(()).unwrap();
            }
        }
        (w.finish(EndInfo::clean(0)).unwrap(), cut)
    };
    // Plenty still coming: never cut, the same file as the writer that encodes in line.
    let (whole, cut) = write(u64::MAX);
    assert!(!cut);
    assert_eq!(whole, inline);
    // Nothing more (as far as the writer is told): cut once, one chunk more, the same events.
    let (split, cut) = write(0);
    assert!(cut, "helper 1 drained its queue, so the open chunk is cut");
    assert_eq!(chunks(&split), chunks(&inline) + 1);
    assert_eq!(events(split), events(inline));
}
