//! A trace cut off at any byte opens up to its last complete chunk: the reader reports where the
//! data stops and how many events are readable, every readable event is the original one, and
//! nothing panics. Every offset of a small trace, a sample of a bigger one, and real files cut
//! with `set_len`.

use std::io::Cursor;

use heaplens_alloc::event::Event;
use heaplens_viewer::trace::synth::{self, SynthConfig};
use heaplens_viewer::trace::{
    EndInfo, Metadata, Status, TraceError, TraceReader, TraceWriter, WriterOptions,
};

/// A finished trace and what is in it.
struct Trace {
    bytes: Vec<u8>,
    events: Vec<(u32, Event)>,
}

fn trace(events: usize, chunk_events: u32, keyframe_every: usize) -> Trace {
    let batches = synth::generate(&SynthConfig {
        threads: 2,
        events,
        seed: 5,
        census_every: 5,
        ..SynthConfig::default()
    });
    let meta = Metadata {
        command: vec!["truncate-me".into()],
        ..Metadata::with_allocator_constants()
    };
    let options = WriterOptions {
        chunk_events,
        ..WriterOptions::default()
    };
    let mut w = TraceWriter::new(Vec::new(), &meta, options).unwrap();
    for (i, (h, evs)) in batches.iter().enumerate() {
        w.write_batch(*h, evs).unwrap();
        if i % keyframe_every == keyframe_every - 1 {
            let at = w.events_written();
            w.write_keyframe(at, evs[0].time, &[i as u8; 40]).unwrap();
        }
    }
    Trace {
        bytes: w.finish(EndInfo::clean(0)).unwrap(),
        events: synth::flatten(&batches),
    }
}

/// What the complete file's chunks say a cut at `cut` should leave readable.
struct Readable {
    events: u64,
    keyframes: usize,
    /// Where the readable data ends: the start of the first chunk cut off.
    at: u64,
}

/// A data chunk of a finished trace: offset, end, events, whether it is a keyframe.
type Span = (u64, u64, u64, bool);

/// The data chunks (Events and Keyframe) of a finished trace, in file order.
fn layout(bytes: &[u8], full: &TraceReader<Cursor<&[u8]>>) -> Vec<Span> {
    let end = |offset: u64| {
        let o = offset as usize;
        offset
            + 48
            + u64::from(u32::from_le_bytes(
                bytes[o + 12..o + 16].try_into().unwrap(),
            ))
    };
    let mut v: Vec<Span> = full
        .chunks()
        .iter()
        .map(|c| (c.offset, end(c.offset), u64::from(c.events), false))
        .collect();
    v.extend(
        full.keyframes()
            .iter()
            .map(|k| (k.offset, end(k.offset), 0, true)),
    );
    v.sort_unstable();
    v
}

fn expected(layout: &[Span], cut: u64) -> Readable {
    let mut r = Readable {
        events: 0,
        keyframes: 0,
        at: 0,
    };
    for &(offset, end, events, keyframe) in layout {
        if end > cut {
            r.at = offset;
            break;
        }
        r.events += events;
        r.keyframes += usize::from(keyframe);
    }
    r
}

fn check_cut(t: &Trace, layout: &[Span], data_start: u64, cut: u64) {
    let part = &t.bytes[..cut as usize];
    let opened = TraceReader::new(Cursor::new(part));
    if cut < data_start {
        match opened {
            Err(TraceError::TruncatedHeader { len }) => assert_eq!(len, cut),
            Err(e) => panic!("cut {cut}: {e}"),
            Ok(_) => panic!("cut {cut} inside the header opened"),
        }
        return;
    }
    let mut r = opened.unwrap_or_else(|e| panic!("cut {cut}: {e}"));
    let full = cut == t.bytes.len() as u64;
    if full {
        assert_eq!(r.status(), Status::Complete);
        assert_eq!(r.total_events(), t.events.len() as u64);
        return;
    }
    let want = expected(layout, cut);
    assert_eq!(r.total_events(), want.events, "cut {cut}");
    assert_eq!(r.keyframes().len(), want.keyframes, "cut {cut}");
    match r.status() {
        Status::Truncated { at } => {
            assert!(at <= cut);
            if want.events < t.events.len() as u64 {
                assert_eq!(at, want.at, "cut {cut}");
            }
        }
        s => panic!("cut {cut}: {s:?}"),
    }
    let msg = r.damage().unwrap().to_string();
    assert!(
        msg.contains(&format!("; {} events up to ", want.events)),
        "{msg}"
    );
    let got: Vec<_> = r.events().map(Result::unwrap).collect();
    assert_eq!(got[..], t.events[..got.len()], "cut {cut}");
    for k in 0..r.keyframes().len() {
        assert_eq!(r.read_keyframe(k).unwrap().len(), 40);
    }
}

fn data_start(bytes: &[u8]) -> u64 {
    16 + u64::from(u32::from_le_bytes(bytes[12..16].try_into().unwrap())) + 4
}

#[test]
fn cut_at_every_byte_of_a_small_trace() {
    let t = trace(1500, 150, 1);
    assert!(t.bytes.len() < 64 * 1024, "{}", t.bytes.len());
    let full = TraceReader::new(Cursor::new(&t.bytes[..])).unwrap();
    let (chunks, keyframes) = (full.chunks().len(), full.keyframes().len());
    assert!(
        chunks >= 8 && keyframes >= 2,
        "{chunks} chunks, {keyframes} keyframes"
    );
    let layout = layout(&t.bytes, &full);
    let start = data_start(&t.bytes);
    for cut in 0..=t.bytes.len() as u64 {
        check_cut(&t, &layout, start, cut);
    }
}

#[test]
fn cut_at_sampled_bytes_of_a_bigger_trace() {
    let t = trace(150_000, 20_000, 40);
    let full = TraceReader::new(Cursor::new(&t.bytes[..])).unwrap();
    let layout = layout(&t.bytes, &full);
    let start = data_start(&t.bytes);
    let len = t.bytes.len() as u64;
    let mut cuts: Vec<u64> = (0..100).map(|i| i * len / 100).collect();
    for &(offset, _, _, _) in &layout {
        cuts.extend([
            offset.saturating_sub(1),
            offset,
            offset + 1,
            offset + 47,
            offset + 48,
        ]);
    }
    cuts.extend(len.saturating_sub(20)..=len);
    for cut in cuts.into_iter().filter(|&c| c <= len) {
        check_cut(&t, &layout, start, cut);
    }
}

#[test]
fn files_cut_on_disk_open_with_a_clear_message() {
    let t = trace(20_000, 2_000, 10);
    let dir = std::env::temp_dir().join(format!("heaplens-trace-cut-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cut.hltrace");
    let full = TraceReader::new(Cursor::new(&t.bytes[..])).unwrap();
    let third = full.chunks()[3];
    // Cut in the middle of the fourth Events chunk.
    let cut = third.offset + 100;
    std::fs::write(&path, &t.bytes[..cut as usize]).unwrap();
    let mut r = TraceReader::open(&path).unwrap();
    assert_eq!(r.status(), Status::Truncated { at: third.offset });
    assert_eq!(r.total_events(), third.first_event);
    let until = t.events[third.first_event as usize - 1].1.time;
    assert_eq!(
        r.damage().unwrap().to_string(),
        format!(
            "truncated at byte {}; {} events up to {:.3} s are readable",
            third.offset,
            third.first_event,
            until as f64 / 1e9
        )
    );
    assert_eq!(r.events().count() as u64, third.first_event);

    std::fs::write(&path, &t.bytes[..5]).unwrap();
    let e = TraceReader::open(&path).err().unwrap();
    assert_eq!(
        e.to_string(),
        "truncated at byte 5, inside the file header: no events are readable"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
