//! Damaged and hostile files: bit flips anywhere are either read correctly or reported as
//! corruption (never silently wrong, never a panic); random bytes and forged lengths give clear
//! errors without panicking or allocating what a length field claims; a newer format version is
//! refused with both versions named.

use std::io::Cursor;
use std::sync::OnceLock;

use heaplens_alloc::event::Event;
use heaplens_viewer::trace::format::{CHUNK_HEADER_SIZE, ChunkHeader, ChunkType};
use heaplens_viewer::trace::synth::{self, SynthConfig};
use heaplens_viewer::trace::{
    ChunkDefect, EndInfo, Metadata, Status, TraceError, TraceReader, TraceWriter, WriterOptions,
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
    let Ok(mut r) = TraceReader::new(Cursor::new(bytes)) else {
        return; // a clear error (header damage, newer version, not a trace)
    };
    for i in 0..r.chunks().len() {
        let c = r.chunks()[i];
        match r.read_chunk(i) {
            Ok(evs) => {
                let from = c.first_event as usize;
                assert_eq!(
                    evs[..],
                    original.events[from..from + evs.len()],
                    "chunk {i}"
                );
            }
            Err(e) => assert!(
                matches!(e, TraceError::CorruptChunk { .. }),
                "chunk {i}: {e}"
            ),
        }
    }
    for k in 0..r.keyframes().len() {
        match r.read_keyframe(k) {
            Ok(payload) => assert!(original.keyframes.contains(&payload)),
            Err(e) => assert!(matches!(e, TraceError::CorruptChunk { .. }), "{e}"),
        }
    }
    if let Some(end) = r.end_info() {
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
        read_checked(&bytes, t);
    }
}

#[test]
fn a_bit_flip_in_every_byte_of_the_small_trace() {
    let t = small();
    let mut bytes = t.bytes.clone();
    for i in 0..bytes.len() {
        let bit = i % 8;
        bytes[i] ^= 1 << bit;
        read_checked(&bytes, t);
        bytes[i] ^= 1 << bit;
    }
}

#[test]
fn a_damaged_chunk_is_named_and_what_precedes_it_reads() {
    let t = small();
    let clean = TraceReader::new(Cursor::new(&t.bytes[..])).unwrap();
    let c = clean.chunks()[2];
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
    assert!(all.last().unwrap().is_err());
    assert_eq!(all.len() as u64, c.first_event + 1);

    // Without the index (the trailer is damaged too), the scan stops at the damage.
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    let mut r = TraceReader::new(Cursor::new(&bytes[..])).unwrap();
    assert_eq!(
        r.status(),
        Status::Corrupt {
            chunk: c.number,
            at: c.offset,
            defect: ChunkDefect::ChecksumMismatch
        }
    );
    assert_eq!(r.total_events(), c.first_event);
    let msg = r.damage().unwrap().to_string();
    assert!(msg.starts_with(&format!(
        "corrupt chunk {} at byte {}: checksum mismatch; {} events up to ",
        c.number, c.offset, c.first_event
    )));
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
    bytes[8..10].copy_from_slice(&7u16.to_le_bytes());
    let e = TraceReader::new(Cursor::new(&bytes[..])).err().unwrap();
    assert_eq!(
        e.to_string(),
        "trace format version 7 is newer than this heaplens (reads up to 2)"
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
