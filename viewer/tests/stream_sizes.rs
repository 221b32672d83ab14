//! Where a trace's bytes are: each Events chunk of real recordings re-encoded by every format
//! version this build writes, each of its byte streams compressed alone with zstd at the
//! writer's level, summed over the trace. A measuring tool, not a check (ignored):
//!
//! `HEAPLENS_TRACES=a.hltrace,b.hltrace cargo test --release -p heaplens-viewer --test stream_sizes -- --ignored --nocapture`
//!
//! `HEAPLENS_LEVEL=N` also compresses whole payloads at zstd level N (v3 payloads of a
//! random-free program: level 3 is 1.3 % smaller than level 1, level 9 4 %).

use heaplens_alloc::event::Event;
use heaplens_viewer::trace::encode::{ChunkEncoder, STREAMS, stream_sizes};
use heaplens_viewer::trace::{TraceReader, VERSION, WriterOptions};

use heaplens_viewer::trace::encode::STREAM_NAMES as NAMES;

/// Compressed and raw bytes of each stream, and of whole payloads.
#[derive(Default)]
struct Sizes {
    streams: [(u64, u64); STREAMS],
    whole: u64,
    /// Whole payloads at the level `HEAPLENS_LEVEL` names.
    other: u64,
    /// Time spent encoding (a new encoder per chunk, as the writer's first chunk).
    encode_ns: u128,
    events: u64,
}

/// Re-encodes one chunk's events (consecutive events of one heap as one batch) in `version`.
fn add_chunk(sizes: &mut Sizes, version: u16, events: &[(u32, Event)], level: i32) {
    let batches: Vec<(u32, Vec<Event>)> = events
        .chunk_by(|a, b| a.0 == b.0)
        .map(|b| (b[0].0, b.iter().map(|(_, e)| *e).collect()))
        .collect();
    let start = std::time::Instant::now();
    let mut enc = ChunkEncoder::for_version(version);
    for (heap, evs) in &batches {
        enc.push_batch(*heap, evs);
    }
    let mut payload = Vec::new();
    enc.finish_into(&mut payload);
    sizes.encode_ns += start.elapsed().as_nanos();
    for (k, (plain, after)) in stream_sizes(&payload, version, level)
        .unwrap()
        .into_iter()
        .enumerate()
    {
        sizes.streams[k].0 += after;
        sizes.streams[k].1 += plain;
    }
    sizes.whole += zstd::bulk::compress(&payload, level).unwrap().len() as u64;
    if let Some(l) = std::env::var("HEAPLENS_LEVEL")
        .ok()
        .and_then(|l| l.parse().ok())
    {
        sizes.other += zstd::bulk::compress(&payload, l).unwrap().len() as u64;
    }
    sizes.events += events.len() as u64;
}

#[test]
#[ignore = "a measuring tool: HEAPLENS_TRACES names the traces"]
fn print_each_streams_compressed_size() {
    let Some(paths) = std::env::var_os("HEAPLENS_TRACES") else {
        eprintln!("HEAPLENS_TRACES is not set");
        return;
    };
    let level = WriterOptions::default().zstd_level.unwrap_or(1);
    for path in paths.to_string_lossy().split(',') {
        let mut r = TraceReader::open(path).unwrap();
        let mut sizes: Vec<(u16, Sizes)> =
            (2..=VERSION).rev().map(|v| (v, Sizes::default())).collect();
        for i in 0..r.chunks().len() {
            let Ok(events) = r.read_chunk(i) else {
                continue;
            };
            if events.is_empty() {
                continue;
            }
            for (v, s) in &mut sizes {
                add_chunk(s, *v, &events, level);
            }
        }
        println!("{path}:");
        for (v, s) in &sizes {
            let per = |b: u64| b as f64 / s.events.max(1) as f64;
            let parts: Vec<String> = NAMES
                .iter()
                .zip(&s.streams)
                .map(|(n, (z, raw))| format!("{n} {:.3} ({:.2})", per(*z), per(*raw)))
                .collect();
            println!(
                "  v{v}: {} events, encoded in {:.1} ns/ev, whole {:.3} B/ev ({} B; at HEAPLENS_LEVEL {} B); per stream zstd B/ev (raw): {}",
                s.events,
                s.encode_ns as f64 / s.events.max(1) as f64,
                per(s.whole),
                s.whole,
                s.other,
                parts.join(", ")
            );
        }
    }
}
