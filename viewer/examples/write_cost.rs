//! What writing a recorded trace's events costs the recorder's helpers, by format version: the
//! Events chunk encoder (`push_batch`), the payload's assembly (`finish_into`, with version 7's
//! entropy coding) and zstd at the writer's level, each in nanoseconds an event, and the bytes
//! an event compressed. Where `reencode` times the encoder alone, this compares versions'
//! whole write path on the same events. The older version's `push_batch` runs the encoder's
//! general loop, not the copy compiled for the latest version, so its "encode" column reads
//! slower than that version's own build did: compare the payload and zstd columns.
//!
//! ```text
//! cargo build --release --example write_cost -p heaplens-viewer
//! target/release/examples/write_cost TRACE [CHUNKS]       # 8 chunks of 100 000 events or more
//! ```

use heaplens_viewer::trace::encode::ChunkEncoder;
use heaplens_viewer::trace::{VERSION, WriterOptions};
use std::time::Instant;

mod common;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: write_cost TRACE [CHUNKS]");
        std::process::exit(2);
    };
    let want: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(8);
    // Chunks as the writer got them; the last, short one left out.
    let chunks = common::chunks_as_batches("write_cost", path, want, 100_000);
    let level = WriterOptions::default().zstd_level.unwrap_or(1);
    let mut zstd = zstd::bulk::Compressor::new(level).expect("zstd");
    for round in 0..3 {
        for version in [VERSION - 1, VERSION] {
            let (mut encode, mut finish, mut compress) = (0.0, 0.0, 0.0);
            let (mut bytes, mut events) = (0usize, 0usize);
            let mut enc = ChunkEncoder::for_version(version);
            let mut payload = Vec::new();
            for chunk in &chunks {
                let t = Instant::now();
                for (heap, batch) in chunk {
                    enc.push_batch(*heap, batch);
                    events += batch.len();
                }
                encode += t.elapsed().as_secs_f64();
                let t = Instant::now();
                enc.finish_into(&mut payload);
                finish += t.elapsed().as_secs_f64();
                let t = Instant::now();
                bytes += zstd.compress(&payload).expect("zstd").len();
                compress += t.elapsed().as_secs_f64();
            }
            let ns = |s: f64| s / events as f64 * 1e9;
            println!(
                "round {round} v{version}: encode {:.2}, payload {:.2}, zstd {:.2}, all {:.2} ns an event; {:.3} bytes an event",
                ns(encode),
                ns(finish),
                ns(compress),
                ns(encode + finish + compress),
                bytes as f64 / events as f64
            );
        }
    }
}
