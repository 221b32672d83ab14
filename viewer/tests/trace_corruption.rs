//! Damaged and hostile files: bit flips anywhere are either read correctly or reported as
//! corruption (never silently wrong, never a panic), and one damaged chunk costs its own events
//! only, whether the index is intact or the file is scanned; random bytes and forged lengths give clear
//! errors without panicking or allocating what a length field claims; a newer format version is
//! refused with both versions named.

use std::io::Cursor;
use std::sync::OnceLock;

use heaplens_alloc::event::Event;
use heaplens_viewer::source::{Replay, Resumed};
use heaplens_viewer::trace::format::{CHUNK_HEADER_SIZE, ChunkHeader, ChunkType};
use heaplens_viewer::trace::synth::{self, SynthConfig};
use heaplens_viewer::trace::{
    ChunkDefect, ChunkInfo, Damage, EndInfo, Metadata, Status, TraceError, TraceReader,
    TraceWriter, WriterOptions,
};
use proptest::prelude::*;

struct Trace {
    bytes: Vec<u8>,
    events: Vec<(u32, Event)>,
    keyframes: Vec<Vec<u8>>,
}

/// A small finished trace: a few Events chunks, two keyframes, End, index, trailer.
fn small() -> &'static Trace {
    static T: OnceLock<Trace> = OnceLock::new();
    T.get_or_init(|| {
        let batches = synth::generate(&SynthConfig {
            threads: 2,
            events: 1200,
            seed: 9,
            census_every: 4,
            ..SynthConfig::default()
        });
        let options = WriterOptions {
            chunk_events: 300,
            ..WriterOptions::default()
        };
        let mut w =
            TraceWriter::new(Vec::new(), &Metadata::with_allocator_constants(), options).unwrap();
        let mut keyframes = Vec::new();
        for (i, (h, evs)) in batches.iter().enumerate() {
            w.write_batch(*h, evs).unwrap();
            if i == 3 || i == 7 {
                let payload: Vec<u8> = (0..200).map(|j| (j * i) as u8).collect();
                w.write_keyframe(w.events_written(), evs[0].time, &payload)
                    .unwrap();
                keyframes.push(payload);
            }
        }
        Trace {
            bytes: w.finish(EndInfo::clean(0)).unwrap(),
            events: synth::flatten(&batches),
            keyframes,
        }
    })
}

/// Opens and reads everything; checks that whatever reads is the original and that whatever
/// does not is reported as corruption.
fn read_checked(bytes: &[u8], original: &Trace) {
    read_all(bytes, Some(original));
}

/// Opens and reads everything: whatever does not read is reported as corruption, and with
/// `original`, whatever reads is the original's. (Without it, for a file made of a forged chunk
/// with a valid checksum: that chunk is a chunk, and what it reads is its own.)
fn read_all(bytes: &[u8], original: Option<&Trace>) {
    let Ok(mut r) = TraceReader::new(Cursor::new(bytes)) else {
        return; // a clear error (header damage, newer version, not a trace)
    };
    for i in 0..r.chunks().len() {
        let c = r.chunks()[i];
        match r.read_chunk(i) {
            Ok(evs) => {
                if let Some(original) = original {
                    let from = c.first_event as usize;
                    assert_eq!(
                        evs[..],
                        original.events[from..from + evs.len()],
                        "chunk {i}"
                    );
                }
            }
            Err(e) => assert!(
                matches!(e, TraceError::CorruptChunk { .. }),
                "chunk {i}: {e}"
            ),
        }
    }
    for k in 0..r.keyframes().len() {
        match r.read_keyframe(k) {
            Ok(payload) => {
                assert!(original.is_none_or(|o| o.keyframes.contains(&payload)));
            }
            Err(e) => assert!(matches!(e, TraceError::CorruptChunk { .. }), "{e}"),
        }
    }
    if let Some(end) = r.end_info()
        && original.is_some()
    {
        assert_eq!(end, EndInfo::clean(0));
    }
    let _ = r.damage().map(|d| d.to_string());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn bit_flips_read_correctly_or_report_corruption(
        flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4),
    ) {
        let t = small();
        let mut bytes = t.bytes.clone();
        for (at, bit) in &flips {
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        read_checked(&bytes, t);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let t = small();
        read_checked(&bytes, t);
        // The same bytes behind a valid header, and in place of the first chunk.
        let start = 16 + u32::from_le_bytes(t.bytes[12..16].try_into().unwrap()) as usize + 4;
        let mut forged = t.bytes[..start].to_vec();
        forged.extend_from_slice(&bytes);
        read_checked(&forged, t);
        let mut spliced = forged.clone();
        spliced.extend_from_slice(&t.bytes[start..]);
        read_checked(&spliced, t);
    }

    #[test]
    fn random_chunk_headers_with_valid_checksums_never_panic(
        kind in prop_oneof![1u8..=4, any::<u8>()],
        compression in prop_oneof![0u8..=1, any::<u8>()],
        raw_len in prop_oneof![0u32..2000, any::<u32>()],
        event_count in prop_oneof![0u32..500, any::<u32>()],
        first_event in prop_oneof![Just(0u64), any::<u64>()],
        payload in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let t = small();
        let start = 16 + u32::from_le_bytes(t.bytes[12..16].try_into().unwrap()) as usize + 4;
        let mut h = ChunkHeader {
            chunk_type: kind,
            compression,
            raw_len,
            stored_len: payload.len() as u32,
            event_count,
            first_event,
            ..ChunkHeader::default()
        };
        h.checksum = h.compute_checksum(&payload);
        let mut bytes = t.bytes[..start].to_vec();
        bytes.extend_from_slice(&h.to_bytes());
        bytes.extend_from_slice(&payload);
        // The only chunk is the forged one: a keyframe of any payload (kind 2, stored raw) is a
        // keyframe, and reads as it was written.
        read_all(&bytes, None);
    }
}

/// Where the chunks of `bytes` start (after the file header).
fn data_start(bytes: &[u8]) -> usize {
    16 + u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize + 4
}

/// Reads every event of a damaged copy of `original` and checks that damage cost only the
/// damaged part: every event outside the chunks reported damaged reads, in order, and the
/// damage reported is at most one chunk's events (one flip damages one chunk). `what` names the
/// damage in messages.
fn keeps_all_but_the_damaged_chunk(bytes: &[u8], original: &Trace, in_header: bool, what: &str) {
    let mut r = match TraceReader::new(Cursor::new(bytes)) {
        Ok(r) => r,
        Err(e) => {
            // Only damage to the file header may refuse the file.
            assert!(in_header, "{what}: {e}");
            return;
        }
    };
    // Checking every chunk up front finds the damage that reading the events meets.
    r.verify_all().unwrap();
    let found_first = r.damaged().to_vec();
    let got: Vec<(u32, Event)> = r.events().filter_map(Result::ok).collect();
    assert_eq!(r.damaged(), found_first, "{what}");
    let lost: Vec<std::ops::Range<u64>> = r.damaged().iter().map(|d| d.events.clone()).collect();
    let want: Vec<(u32, Event)> = original
        .events
        .iter()
        .enumerate()
        .filter(|(i, _)| !lost.iter().any(|l| l.contains(&(*i as u64))))
        .map(|(_, e)| *e)
        .collect();
    assert_eq!(got.len(), want.len(), "{what}: damage {:?}", r.damaged());
    assert!(got == want, "{what}: events differ");
    assert!(
        r.damaged().len() <= 1 && r.events_lost() <= 300,
        "{what}: {:?}",
        r.damaged()
    );
    assert_eq!(r.total_events(), original.events.len() as u64, "{what}");
}

#[test]
fn a_bit_flip_in_every_byte_of_the_small_trace() {
    let t = small();
    let mut bytes = t.bytes.clone();
    for i in 0..bytes.len() {
        let bit = i % 8;
        bytes[i] ^= 1 << bit;
        read_checked(&bytes, t);
        let what = format!("bit {bit} of byte {i}");
        keeps_all_but_the_damaged_chunk(&bytes, t, i < data_start(&t.bytes), &what);
        bytes[i] ^= 1 << bit;
    }
}

#[test]
fn a_flipped_byte_in_any_chunk_loses_that_chunk_only_with_or_without_the_index() {
    let t = small();
    let clean = TraceReader::new(Cursor::new(&t.bytes[..])).unwrap();
    let start = data_start(&t.bytes);
    assert!(clean.chunks().len() >= 4);
    let n = t.bytes.len();
    for (k, c) in clean.chunks().iter().enumerate() {
        // In the header's first_event, and in the middle of the payload.
        for at in [
            c.offset as usize + 24,
            c.offset as usize + CHUNK_HEADER_SIZE + c.stored_len as usize / 2,
        ] {
            for trailer_too in [false, true] {
                let mut bytes = t.bytes.clone();
                bytes[at] ^= 0x5a;
                if trailer_too {
                    bytes[n - 1] ^= 1; // no index: the reader scans
                }
                let what = format!("chunk {k} byte {at}, index used: {}", !trailer_too);
                keeps_all_but_the_damaged_chunk(&bytes, t, false, &what);
                let mut r = TraceReader::new(Cursor::new(&bytes[..])).unwrap();
                let read = r.events().filter(Result::is_ok).count();
                assert_eq!(read, t.events.len() - c.events as usize, "{what}");
                let d = &r.damaged()[0];
                assert_eq!((d.chunk, d.at), (c.number, c.offset), "{what}");
                assert_eq!(d.events, c.event_range(), "{what}");
                assert!(start <= at);
            }
        }
    }
}

#[test]
fn a_damaged_chunk_is_named_and_the_rest_reads() {
    let t = small();
    let clean = TraceReader::new(Cursor::new(&t.bytes[..])).unwrap();
    let c = clean.chunks()[2];
    let (before, after) = (clean.chunks()[1], clean.chunks()[3]);
    let mut bytes = t.bytes.clone();
    bytes[c.offset as usize + CHUNK_HEADER_SIZE + 5] ^= 0x10;
    // With the index intact, the damage shows when the chunk is read.
    let mut r = TraceReader::new(Cursor::new(&bytes[..])).unwrap();
    assert!(r.is_complete());
    let e = r.read_chunk(2).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "corrupt chunk {} at byte {}: checksum mismatch",
            c.number, c.offset
        )
    );
    assert!(r.read_chunk(1).is_ok() && r.read_chunk(3).is_ok());
    let all: Vec<_> = r.events().collect();
    assert_eq!(all.iter().filter(|e| e.is_err()).count(), 1);
    assert!(all[c.first_event as usize].is_err());
    assert_eq!(all.len(), t.events.len() - c.events as usize + 1);
    assert_eq!(
        r.damaged(),
        [Damage {
            chunk: c.number,
            at: c.offset,
            defect: ChunkDefect::ChecksumMismatch,
            events: c.event_range(),
            start_time: c.start_time,
            end_time: c.end_time,
        }]
    );
    assert_eq!(r.events_lost(), u64::from(c.events));
    assert!(
        r.damaged()[0].to_string().starts_with(&format!(
            "chunk {} at byte {} is damaged (checksum mismatch): {} events from ",
            c.number, c.offset, c.events
        )),
        "{}",
        r.damaged()[0]
    );
    // A range across the damage leaves its events out.
    let across = r
        .read_events(before.first_event..after.first_event + 1)
        .unwrap();
    assert_eq!(across.len(), before.events as usize + 1);

    // Without the index (the trailer is damaged too), the scan skips the damaged chunk and
    // goes on at the next.
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    let mut r = TraceReader::new(Cursor::new(&bytes[..])).unwrap();
    assert!(matches!(
        r.status(),
        Status::Corrupt {
            defect: ChunkDefect::BadTrailer,
            ..
        }
    ));
    assert_eq!(r.total_events(), t.events.len() as u64);
    assert_eq!(
        r.damaged(),
        [Damage {
            chunk: c.number,
            at: c.offset,
            defect: ChunkDefect::ChecksumMismatch,
            events: c.event_range(),
            start_time: before.end_time,
            end_time: after.start_time,
        }]
    );
    assert_eq!(
        r.events().filter(Result::is_ok).count(),
        t.events.len() - c.events as usize
    );
    let msg = r.damage().unwrap().to_string();
    assert!(
        msg.starts_with(&format!(
            "corrupt trailer at byte {}; {} events up to ",
            n - 16,
            t.events.len() - c.events as usize
        )),
        "{msg}"
    );

    // Without the index and with every chunk after the damage cut off, the file reads up to
    // the damage and says where it stops.
    let cut = &bytes[..after.offset as usize + 10];
    let mut r = TraceReader::new(Cursor::new(cut)).unwrap();
    assert_eq!(
        r.status(),
        Status::Corrupt {
            chunk: c.number,
            at: c.offset,
            defect: ChunkDefect::ChecksumMismatch
        }
    );
    assert_eq!(r.total_events(), c.first_event);
    assert_eq!(r.events().count() as u64, c.first_event);

    // Only the trailer damaged: nothing is lost, the damage is still reported.
    let mut bytes = t.bytes.clone();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    let mut r = TraceReader::new(Cursor::new(&bytes[..])).unwrap();
    assert!(matches!(
        r.status(),
        Status::Corrupt {
            defect: ChunkDefect::BadTrailer,
            ..
        }
    ));
    assert!(
        r.damage()
            .unwrap()
            .to_string()
            .starts_with("corrupt trailer at byte ")
    );
    assert!(r.damaged().is_empty());
    assert_eq!(r.events().count(), t.events.len());
    assert_eq!(r.end_info(), Some(EndInfo::clean(0)));
}

#[test]
fn forged_lengths_are_refused_before_anything_is_allocated() {
    let t = small();
    let start = 16 + u32::from_le_bytes(t.bytes[12..16].try_into().unwrap()) as usize + 4;
    // An Events chunk claiming a million events and a 4 GiB payload, checksum and all.
    let mut h = ChunkHeader {
        chunk_type: ChunkType::Events as u8,
        compression: 1,
        raw_len: u32::MAX,
        stored_len: 10,
        event_count: 1 << 20,
        ..ChunkHeader::default()
    };
    h.checksum = h.compute_checksum(&[0; 10]);
    let mut bytes = t.bytes[..start].to_vec();
    bytes.extend_from_slice(&h.to_bytes());
    bytes.extend_from_slice(&[0; 10]);
    let r = TraceReader::new(Cursor::new(&bytes[..])).unwrap();
    assert!(matches!(
        r.status(),
        Status::Corrupt {
            defect: ChunkDefect::BadLength,
            ..
        }
    ));
    assert_eq!(r.total_events(), 0);

    // A payload length past the end of the file: the file is cut there.
    h.raw_len = 100;
    h.stored_len = 1 << 30;
    h.checksum = 0;
    let mut bytes = t.bytes[..start].to_vec();
    bytes.extend_from_slice(&h.to_bytes());
    let r = TraceReader::new(Cursor::new(&bytes[..])).unwrap();
    assert_eq!(r.status(), Status::Truncated { at: start as u64 });

    // A metadata block longer than any reader accepts.
    let mut bytes = t.bytes.clone();
    bytes[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = TraceReader::new(Cursor::new(&bytes[..])).err().unwrap();
    assert!(
        e.to_string()
            .starts_with("corrupt trace header: metadata length"),
        "{e}"
    );
}

#[test]
fn a_newer_version_is_refused_naming_both_versions() {
    let mut bytes = small().bytes.clone();
    bytes[8..10].copy_from_slice(&9u16.to_le_bytes());
    let e = TraceReader::new(Cursor::new(&bytes[..])).err().unwrap();
    assert_eq!(
        e.to_string(),
        "trace format version 9 is newer than this heaplens (reads up to 7)"
    );
    bytes[8..10].copy_from_slice(&0u16.to_le_bytes());
    let e = TraceReader::new(Cursor::new(&bytes[..])).err().unwrap();
    assert_eq!(e.to_string(), "corrupt trace header: format version 0");
}

#[test]
fn other_files_are_not_traces() {
    for bytes in [
        &b"GIF89a........"[..],
        b"\x7fELF\x02\x01\x01",
        b"HEAPLENX\x01\x00",
    ] {
        let e = TraceReader::new(Cursor::new(bytes)).err().unwrap();
        assert_eq!(e.to_string(), "not a heaplens trace");
    }
    let e = TraceReader::new(Cursor::new(&b""[..])).err().unwrap();
    assert!(matches!(e, TraceError::TruncatedHeader { len: 0 }));
    let mut bytes = small().bytes.clone();
    bytes[20] ^= 1; // inside the metadata
    let e = TraceReader::new(Cursor::new(&bytes[..])).err().unwrap();
    assert_eq!(e.to_string(), "corrupt trace header: checksum mismatch");
}

/// Writes asset trace `name` with four bytes of Events chunk `k`'s payload flipped to a
/// temporary file; returns its path and the chunk.
fn damaged_asset(name: &str, k: usize) -> (std::path::PathBuf, ChunkInfo) {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/traces")
        .join(name);
    let c = TraceReader::open(&src).unwrap().chunks()[k];
    let mut bytes = std::fs::read(&src).unwrap();
    let mid = c.offset as usize + CHUNK_HEADER_SIZE + c.stored_len as usize / 2;
    for b in &mut bytes[mid..mid + 4] {
        *b ^= 0xff;
    }
    let out = std::env::temp_dir().join(format!(
        "heaplens-damaged-{k}-{}-{name}",
        std::process::id()
    ));
    std::fs::write(&out, bytes).unwrap();
    (out, c)
}

#[test]
fn replay_goes_on_past_a_damaged_chunk_from_the_next_keyframe_or_the_next_chunk() {
    let assets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/traces");

    // A keyframe follows: the model at the end is the undamaged trace's.
    let clean = Replay::open(assets.join("server.hltrace")).unwrap();
    let (path, c) = damaged_asset("server.hltrace", 2);
    let r = Replay::open(&path).unwrap();
    assert_eq!(r.position(), clean.position());
    let [(d, how)] = r.damaged() else {
        panic!("{:?}", r.damaged())
    };
    assert_eq!((d.chunk, d.events.clone()), (c.number, c.event_range()));
    assert!(matches!(how, Resumed::Keyframe(k) if *k >= c.event_range().end));
    let msg = r.damage().unwrap();
    assert!(msg.contains("is damaged (checksum mismatch)"), "{msg}");
    assert!(msg.contains("resumed exact at the keyframe"), "{msg}");
    let (a, b) = (&r.view().model, &clean.view().model);
    assert_eq!(a.totals(), b.totals());
    assert_eq!(a.current(), b.current());
    assert_eq!(a.last_census_check(), b.last_census_check());
    // Seeking into the damaged stretch by time, and playing across it, go on past it.
    let mut r = Replay::open(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    r.seek_time(c.start_time + (c.end_time - c.start_time) / 2)
        .unwrap();
    assert!(r.position() >= c.event_range().end, "{}", r.position());
    r.seek_event(0).unwrap();
    r.set_speed(1000.0);
    r.set_playing(true).unwrap();
    while r.is_playing() {
        r.tick(0.01, None).unwrap();
    }
    assert_eq!(r.position(), clean.position());
    assert_eq!(r.view().model.totals(), clean.view().model.totals());

    // None follows: the events after the damage are applied; the model knows it lost some.
    let clean = Replay::open(assets.join("c-program.hltrace")).unwrap();
    let (path, c) = damaged_asset("c-program.hltrace", 0);
    let r = Replay::open(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(r.position(), clean.position());
    assert_eq!(r.damaged().len(), 1);
    assert_eq!(r.damaged()[0].1, Resumed::AfterGap);
    assert_eq!(
        r.view().model.totals().events,
        clean.view().model.totals().events - u64::from(c.events)
    );
    assert!(r.view().model.last_census_check().unwrap().resynced);
}
