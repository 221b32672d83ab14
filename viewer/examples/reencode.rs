//! Encodes a recorded trace's events again, timing the Events chunk encoder alone
//! (`ChunkEncoder`, before compression): how the trace writer's per-event cost is measured on a
//! real recording, where `--bench trace_size` uses streams made in process.
//!
//! ```text
//! cargo build --release --example reencode -p heaplens-viewer
//! target/release/examples/reencode TRACE [CHUNKS]
//! valgrind --tool=callgrind '--toggle-collect=*ChunkEncoder::push_batch*' \
//!     target/release/examples/reencode TRACE 2          # instructions an event
//! ```
//!
//! Prints the events, the encoded bytes, a hash of them (an encoder change that keeps the
//! format must keep it) and the encoder's nanoseconds an event. Batches are the trace's runs
//! of one heap's events, up to 4096 (the collector hands on at most 2046 a buffer).

use heaplens_viewer::trace::encode::ChunkEncoder;
use std::time::{Duration, Instant};

mod common;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: reencode TRACE [CHUNKS]");
        std::process::exit(2);
    };
    let chunks: usize = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX);
    let all = common::chunks_as_batches("reencode", path, chunks, 0);
    let events: usize = all.iter().flatten().map(|(_, b)| b.len()).sum();
    let mut encoder = ChunkEncoder::new();
    let mut payload = Vec::new();
    let (mut bytes, mut hash, mut spent) = (0, 0xcbf2_9ce4_8422_2325_u64, Duration::ZERO);
    for batches in &all {
        let start = Instant::now();
        for (heap, batch) in batches {
            encoder.push_batch(*heap, batch);
        }
        encoder.finish_into(&mut payload);
        spent += start.elapsed();
        bytes += payload.len();
        // FNV-1a, outside the time taken.
        for &b in &payload {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    println!(
        "{events} events, {bytes} bytes encoded, hash {hash:016x}, {:.2} ns/event",
        spent.as_secs_f64() * 1e9 / events.max(1) as f64
    );
}
