//! The golden traces of every format version (`assets/traces/golden-vN.hltrace`) read to exactly
//! what was written when they were made: readers must read every older version forever.
//!
//! Each file was written once by its test with `HEAPLENS_BLESS=1`, and only the current version's
//! can be (a writer writes no other): never rewrite one for a format change, add
//! `golden-v{N+1}.hltrace` and a test of its own instead. Each holds a synthetic allocator stream,
//! an edge batch (every event kind, an unknown kind, extreme values), two keyframes and an End
//! chunk; the assertions below are literal values, not recomputed ones. Version 1 was written
//! before stacks existed (its edge batch codes `StackFrame` as a kind it does not name);
//! version 2 adds stacks (mode `all`) and modules; versions 3 to 7 change how events are coded,
//! not which (version 4's stream differs from version 3's only where the synthetic generator
//! changed in between: its `PageCollect`s now carry the blocks they move; versions 5's to 7's
//! are version 4's).

use std::path::PathBuf;

use heaplens_alloc::event::{Event, EventKind, flags, stack_mode};
use heaplens_viewer::trace::synth::{self, SynthConfig};
use heaplens_viewer::trace::{
    EndInfo, EndReason, ExitStatus, Metadata, Status, TraceReader, TraceWriter, VERSION,
    WriterOptions,
};

fn traces_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/traces")
}

/// Whether bless mode (`asked`) may write the golden file of format `version`: only the current
/// version's, since the writer writes only the current version.
fn may_bless(version: u16, asked: bool) -> bool {
    if asked && version != VERSION {
        eprintln!(
            "golden-v{version}.hltrace is of an older format version (this build writes \
             {VERSION}): never rewritten"
        );
    }
    asked && version == VERSION
}

fn bless_asked() -> bool {
    std::env::var_os("HEAPLENS_BLESS").is_some()
}

/// FNV-1a over bytes.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The hash of each older version's golden file as it was written: `(version, hash)`.
const FROZEN: [(u16, u64); 6] = [
    (1, 0x7ce4_7639_3085_7392),
    (2, 0xd034_57b0_5d3b_8b62),
    (3, 0x541a_9fab_b4fd_e7b2),
    (4, 0xf051_2687_51d7_897f),
    (5, 0x6cb5_da55_9fa6_df8c),
    (6, 0x183e_19a9_b3ff_f8ac),
];

#[test]
fn bless_mode_rewrites_only_the_current_versions_golden_file() {
    assert!(may_bless(VERSION, true));
    assert!(!may_bless(VERSION, false));
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(traces_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(v) = name
            .strip_prefix("golden-v")
            .and_then(|n| n.strip_suffix(".hltrace"))
        else {
            continue;
        };
        let v: u16 = v.parse().unwrap();
        let r = TraceReader::open(traces_dir().join(&name)).unwrap();
        assert_eq!(
            r.version(),
            v,
            "{name} holds format version {}",
            r.version()
        );
        assert!(v <= VERSION, "{name} is newer than this build");
        if v < VERSION {
            assert!(!may_bless(v, true), "{name} could be rewritten");
        }
        if let Some((_, hash)) = FROZEN.iter().find(|(f, _)| *f == v) {
            let bytes = std::fs::read(traces_dir().join(&name)).unwrap();
            assert_eq!(fnv(&bytes), *hash, "{name} was rewritten");
        } else {
            assert_eq!(
                v, VERSION,
                "{name}: an older golden file needs its hash in FROZEN"
            );
        }
        versions.push(v);
    }
    versions.sort_unstable();
    assert_eq!(
        versions,
        (1..=VERSION).collect::<Vec<_>>(),
        "a golden file per version"
    );
}

fn golden_path(version: u16) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../assets/traces/golden-v{version}.hltrace"))
}

/// Every kind up to `last`, an unknown kind, wide events, extreme values.
fn edge_batch(last: u8) -> Vec<Event> {
    let mut v: Vec<Event> = (0u8..=last)
        .filter(|&k| EventKind::from_u8(k).is_some())
        .map(|k| Event {
            kind: k,
            flags: k.wrapping_mul(3),
            aux: u16::from(k) * 7,
            arg32: u32::from(k) << 20,
            addr: 0x7f00_dead_0000 + u64::from(k) * 0x1000,
            arg: u64::from(k) * 1_000_003,
            time: 9_000_000_000 + u64::from(k),
        })
        .collect();
    v.push(Event {
        kind: 200,
        flags: 0xff,
        aux: u16::MAX,
        arg32: u32::MAX,
        addr: u64::MAX,
        arg: u64::MAX,
        time: u64::MAX,
    });
    v.push(Event {
        kind: EventKind::Free as u8,
        flags: flags::CROSS_THREAD,
        addr: 0x10,
        time: 0,
        ..Event::default()
    });
    v
}

fn metadata(version: u16) -> Metadata {
    let mut m = Metadata {
        pid: 4242,
        command: vec!["golden".into(), "--seed".into(), "7".into()],
        start_unix_ns: 1_700_000_000_123_456_789,
        hostname: "golden-host".into(),
        ..Metadata::with_allocator_constants()
    };
    m.extra.insert(
        "note".into(),
        format!("format v{version} golden file").into(),
    );
    m
}

/// Writes the golden file of the current version (only with `HEAPLENS_BLESS=1`).
fn bless() {
    write_golden(&golden_path(heaplens_viewer::trace::VERSION));
}

/// This build's writer writes the current version's golden file again, byte for byte: a
/// change to the encoder, the writer or their helpers that changes a single byte (the encoder
/// has fast paths for the latest version that must write what its general loop writes) fails
/// here, where a reading test would pass as long as the events round-trip. The payloads are
/// zstd's (level 3, the version `Cargo.lock` pins): a new zstd may compress differently, and
/// then the file is blessed again (`HEAPLENS_BLESS=1`) once the events still read exactly.
#[test]
fn the_writer_writes_the_current_golden_file_byte_for_byte() {
    if bless_asked() {
        return; // the file is being written again by the same recipe, maybe at this moment
    }
    let path = std::env::temp_dir().join(format!("heaplens-golden-{}.hltrace", std::process::id()));
    write_golden(&path);
    let written = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let golden = std::fs::read(golden_path(VERSION)).unwrap();
    let first_difference = written.iter().zip(&golden).position(|(a, b)| a != b);
    assert!(
        written == golden,
        "{} bytes written against the golden file's {}, first difference at byte {:?}",
        written.len(),
        golden.len(),
        first_difference
    );
}

/// The golden file of the current version, written to `path`.
fn write_golden(path: &std::path::Path) {
    let batches = synth::generate(&SynthConfig {
        threads: 2,
        events: 12_000,
        seed: 7,
        cross_thread: 0.05,
        census_every: 3,
        stacks: stack_mode::ALL,
        sample_bytes: 0,
    });
    let options = WriterOptions {
        chunk_events: 1024,
        zstd_level: Some(3),
    };
    let version = heaplens_viewer::trace::VERSION;
    let mut w = TraceWriter::create_with(path, &metadata(version), options).unwrap();
    for (i, (h, evs)) in batches.iter().enumerate() {
        w.write_batch(*h, evs).unwrap();
        if i == 2 || i == 6 {
            let payload = format!("keyframe after batch {i}").into_bytes();
            w.write_keyframe(w.events_written(), evs[0].time, &payload)
                .unwrap();
        }
    }
    let mut edge = edge_batch(EventKind::ModuleGone as u8);
    edge.extend(frame_edges());
    w.write_batch(3, &edge).unwrap();
    w.finish(EndInfo {
        reason: EndReason::PeerVanished,
        status: ExitStatus::Signal(11),
    })
    .unwrap();
}

/// FNV-1a over the decoded events (heap id, then the event's 32 bytes).
fn fingerprint(events: &[(u32, Event)]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for (heap, e) in events {
        for b in heap.to_le_bytes().iter().chain(e.to_bytes().iter()) {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

/// Stack frames and stack ids at the edges of their predictors.
fn frame_edges() -> Vec<Event> {
    let frame = |flags, arg32, addr, arg| Event {
        kind: EventKind::StackFrame as u8,
        flags,
        arg32,
        addr,
        arg,
        ..Event::default()
    };
    let alloc = |arg32| Event {
        kind: EventKind::Alloc as u8,
        arg32,
        addr: 0x7f00_0000_1000,
        arg: 24,
        aux: 2,
        ..Event::default()
    };
    vec![
        frame(0, u32::MAX, u64::MAX, 0),
        frame(flags::TRUNCATED, 0, 0, u64::MAX),
        frame(0, 1, 0x4000, u64::from(u32::MAX)),
        alloc(u32::MAX),
        alloc(1),
        alloc(u32::MAX),
        alloc(7),
    ]
}

#[test]
fn golden_v1_reads_exactly() {
    let path = golden_path(1);
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size < 100 * 1024, "golden file is {size} bytes");
    let mut r = TraceReader::open(&path).unwrap();
    assert_eq!(r.version(), 1);
    assert_eq!(r.status(), Status::Complete);
    assert_eq!(
        r.end_info(),
        Some(EndInfo {
            reason: EndReason::PeerVanished,
            status: ExitStatus::Signal(11),
        })
    );

    let m = r.metadata().clone();
    let all: Vec<(u32, Event)> = r.events().map(Result::unwrap).collect();
    assert_eq!(m.pid, 4242);
    assert_eq!(m.command, ["golden", "--seed", "7"]);
    assert_eq!(m.start_unix_ns, 1_700_000_000_123_456_789);
    assert_eq!(m.hostname, "golden-host");
    assert_eq!(m.segment_size, 4 << 20);
    assert_eq!(m.small_page_size, 64 << 10);
    assert_eq!(m.medium_page_size, 512 << 10);
    assert_eq!(m.segment_info_size, GOLDEN_INFO_SIZE);
    assert_eq!(m.bin_block_sizes.len(), GOLDEN_BINS);
    assert_eq!(m.bin_block_sizes[..6], [16, 32, 48, 64, 80, 96]);
    assert_eq!(m.extra["note"], "format v1 golden file");

    assert_eq!(all.len() as u64, GOLDEN_EVENTS);
    assert_eq!(r.total_events(), GOLDEN_EVENTS);
    assert_eq!(r.chunks().len(), GOLDEN_CHUNKS);
    assert_eq!(r.duration_ns(), u64::MAX);
    assert_eq!(fingerprint(&all), GOLDEN_FINGERPRINT);

    // The stream starts with the threads' names (process events), then their starts.
    let (addr, arg) = Event::pack_text(b"worker-1");
    let named = Event {
        kind: EventKind::ThreadName as u8,
        arg32: 1,
        addr,
        arg,
        ..Event::default()
    };
    assert_eq!(all[0], (0, named));
    let started = Event {
        kind: EventKind::ThreadStart as u8,
        ..named
    };
    assert_eq!(all[2], (1, started));
    // It ends with the edge batch, exactly.
    // Kinds known when it was written (the stack kinds, 70 on, came later).
    let edge = edge_batch(69);
    let tail = &all[all.len() - edge.len()..];
    assert!(tail.iter().all(|(h, _)| *h == 3));
    assert_eq!(tail.iter().map(|(_, e)| *e).collect::<Vec<_>>(), edge);

    let kf: Vec<(u64, u64)> = r
        .keyframes()
        .iter()
        .map(|k| (k.event_index, k.time))
        .collect();
    assert_eq!(kf, GOLDEN_KEYFRAMES);
    assert_eq!(r.read_keyframe(0).unwrap(), b"keyframe after batch 2");
    assert_eq!(r.read_keyframe(1).unwrap(), b"keyframe after batch 6");
}

/// What a golden file with stacks holds, as written.
struct Golden {
    version: u16,
    events: u64,
    chunks: usize,
    fingerprint: u64,
    keyframes: [(u64, u64); 2],
}

#[test]
fn golden_v2_reads_exactly() {
    stacks_golden_reads_exactly(&Golden {
        version: 2,
        events: GOLDEN_V2_EVENTS,
        chunks: GOLDEN_V2_CHUNKS,
        fingerprint: GOLDEN_V2_FINGERPRINT,
        keyframes: GOLDEN_V2_KEYFRAMES,
    });
}

/// The golden file of `version` 4 to 7: versions 5 to 7 hold version 4's stream, coded
/// differently, so they read as the same events.
fn version_4s_stream(version: u16) -> Golden {
    Golden {
        version,
        events: GOLDEN_V4_EVENTS,
        chunks: GOLDEN_V4_CHUNKS,
        fingerprint: GOLDEN_V4_FINGERPRINT,
        keyframes: GOLDEN_V4_KEYFRAMES,
    }
}

#[test]
fn golden_v7_reads_exactly() {
    stacks_golden_reads_exactly(&version_4s_stream(7));
}

#[test]
fn golden_v6_reads_exactly() {
    stacks_golden_reads_exactly(&version_4s_stream(6));
}

#[test]
fn golden_v5_reads_exactly() {
    stacks_golden_reads_exactly(&version_4s_stream(5));
}

#[test]
fn golden_v4_reads_exactly() {
    stacks_golden_reads_exactly(&version_4s_stream(4));
}

#[test]
fn golden_v3_reads_exactly() {
    stacks_golden_reads_exactly(&Golden {
        version: 3,
        events: GOLDEN_V3_EVENTS,
        chunks: GOLDEN_V3_CHUNKS,
        fingerprint: GOLDEN_V3_FINGERPRINT,
        keyframes: GOLDEN_V3_KEYFRAMES,
    });
}

/// Reads the golden file of `g.version` (version 2 on: stacks and modules), after writing it in
/// bless mode if it is the current version's.
fn stacks_golden_reads_exactly(g: &Golden) {
    let bless_mode = g.version == VERSION && may_bless(VERSION, bless_asked());
    if bless_mode {
        bless();
    }
    let path = golden_path(g.version);
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size < 100 * 1024, "golden file is {size} bytes");
    let mut r = TraceReader::open(&path).unwrap();
    assert_eq!(r.version(), g.version);
    assert_eq!(r.status(), Status::Complete);
    let m = r.metadata().clone();
    assert_eq!(m.command, ["golden", "--seed", "7"]);
    assert_eq!(
        m.extra["note"],
        format!("format v{} golden file", g.version).as_str()
    );
    let all: Vec<(u32, Event)> = r.events().map(Result::unwrap).collect();
    let kf: Vec<(u64, u64)> = r
        .keyframes()
        .iter()
        .map(|k| (k.event_index, k.time))
        .collect();
    if bless_mode {
        eprintln!(
            "events {} chunks {} fingerprint {:#x} keyframes {kf:?}",
            all.len(),
            r.chunks().len(),
            fingerprint(&all),
        );
    }
    assert_eq!(all.len() as u64, g.events);
    assert_eq!(r.chunks().len(), g.chunks);
    assert_eq!(fingerprint(&all), g.fingerprint);
    assert_eq!(kf, g.keyframes);

    // Stacks and modules: the stack mode first among the process events, then the modules.
    let mode = all
        .iter()
        .find(|(_, e)| e.kind == EventKind::StackMode as u8)
        .unwrap();
    assert_eq!((mode.0, mode.1.aux), (0, stack_mode::ALL));
    let frames = all
        .iter()
        .filter(|(_, e)| e.kind == EventKind::StackFrame as u8)
        .count();
    assert!(frames > 100, "{frames} frames");
    let allocs_without = all
        .iter()
        .filter(|(h, e)| *h != 3 && e.kind == EventKind::Alloc as u8 && e.arg32 == 0)
        .count();
    assert_eq!(allocs_without, 0);
    // It ends with the edge batch, exactly.
    let mut edge = edge_batch(EventKind::ModuleGone as u8);
    edge.extend(frame_edges());
    let tail = &all[all.len() - edge.len()..];
    assert!(tail.iter().all(|(h, _)| *h == 3));
    assert_eq!(tail.iter().map(|(_, e)| *e).collect::<Vec<_>>(), edge);
}

// Literal values of the golden files, as they were written.
const GOLDEN_INFO_SIZE: u64 = 7296;
const GOLDEN_BINS: usize = 64;
const GOLDEN_EVENTS: u64 = 8102;
const GOLDEN_CHUNKS: usize = 9;
const GOLDEN_FINGERPRINT: u64 = 0x6c10_c1c5_7330_c544;
const GOLDEN_KEYFRAMES: [(u64, u64); 2] = [(1015, 0), (5356, 2_000_000)];
const GOLDEN_V2_EVENTS: u64 = 14229;
const GOLDEN_V2_CHUNKS: usize = 16;
const GOLDEN_V2_FINGERPRINT: u64 = 0x265d_c42e_38cb_2ec4;
const GOLDEN_V2_KEYFRAMES: [(u64, u64); 2] = [(3772, 0), (10951, 2_000_000)];
const GOLDEN_V3_EVENTS: u64 = 14229;
const GOLDEN_V3_CHUNKS: usize = 16;
const GOLDEN_V3_FINGERPRINT: u64 = 0xe9b3_161b_258a_ee9a;
const GOLDEN_V3_KEYFRAMES: [(u64, u64); 2] = [(3772, 0), (10951, 2_000_000)];
const GOLDEN_V4_EVENTS: u64 = 14229;
const GOLDEN_V4_CHUNKS: usize = 16;
const GOLDEN_V4_FINGERPRINT: u64 = 0xcb55_0dea_3420_abba;
const GOLDEN_V4_KEYFRAMES: [(u64, u64); 2] = [(3772, 0), (10951, 2_000_000)];
