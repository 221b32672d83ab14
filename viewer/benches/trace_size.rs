//! Trace file size and speed: bytes per event on disk (budget: <= 4), write and read throughput.
//!
//! Two streams: a synthetic one shaped like the allocator's (`trace::synth`: several threads,
//! blocks carved sequentially on pages of various bins, alloc/free churn, small sizes, page events,
//! cross-thread frees, a census every second), and one recorded from the real allocator: this
//! binary's global allocator is heaplens, the collector records a multithreaded workload of
//! ordinary Rust allocations, and the recorded batches are written as a trace.
//!
//! Run: `cargo bench -p heaplens-viewer --bench trace_size` (one run, ratios and rates printed).

use std::sync::{Arc, Mutex, mpsc};

use heaplens_alloc::collector::{self, Config};
use heaplens_alloc::event::{Event, EventKind, stack_mode};
use heaplens_viewer::trace::encode::ChunkEncoder;
use heaplens_viewer::trace::synth::{self, Rng, SynthConfig};
use heaplens_viewer::trace::{EndInfo, Metadata, TraceReader, TraceWriter, WriterOptions};

#[global_allocator]
static GLOBAL: heaplens_alloc::HeapLens = heaplens_alloc::HeapLens;

type Batches = Vec<(u32, Vec<Event>)>;

/// This thread's CPU time: the machine may be shared, so rates are per CPU second, not per wall
/// second (one thread does all the work measured).
#[derive(Clone, Copy)]
struct Instant(u64);

impl Instant {
    fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
        Self(
            stat.split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        )
    }

    fn elapsed(self) -> std::time::Duration {
        std::time::Duration::from_nanos(Self::now().0.saturating_sub(self.0).max(1))
    }
}

const BUDGET: f64 = 4.0;

fn main() {
    let dir = std::env::temp_dir().join(format!("heaplens-trace-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");

    let synthetic = synth::generate(&SynthConfig {
        threads: 4,
        events: 3_000_000,
        seed: 42,
        ..SynthConfig::default()
    });
    let synthetic_ok = report(
        "synthetic (4 threads)",
        &synthetic,
        &dir.join("synthetic.hltrace"),
    );
    codecs(&synthetic);
    drop(synthetic);

    // The same stream with stacks: every allocation's, then a sample by bytes.
    let mut stacks_ok = true;
    for (name, mode) in [
        ("synthetic, stacks all", stack_mode::ALL),
        ("synthetic, stacks sampled", stack_mode::SAMPLED),
    ] {
        let with_stacks = synth::generate(&SynthConfig {
            threads: 4,
            events: 3_000_000,
            seed: 42,
            stacks: mode,
            ..SynthConfig::default()
        });
        let frames = with_stacks
            .iter()
            .flat_map(|(_, e)| e)
            .filter(|e| e.kind == EventKind::StackFrame as u8)
            .count();
        println!("{name}: {frames} stack frame events");
        stacks_ok &= report(name, &with_stacks, &dir.join("stacks.hltrace"));
        if mode == stack_mode::ALL {
            codecs(&with_stacks);
        }
    }

    let real = record_real_workload();
    let real_ok = report(
        "real allocator (4 threads)",
        &real,
        &dir.join("real.hltrace"),
    );
    codecs(&real);

    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "budget {BUDGET} bytes/event: {}",
        if synthetic_ok && real_ok && stacks_ok {
            "met"
        } else {
            "MISSED"
        }
    );
}

/// Writes `batches` as a trace, reads it back and checks it; prints size and rates. True if
/// within the budget.
fn report(name: &str, batches: &Batches, path: &std::path::Path) -> bool {
    let events: usize = batches.iter().map(|(_, e)| e.len()).sum();
    let t = Instant::now();
    let mut w = TraceWriter::create(path, &Metadata::for_this_process()).expect("create");
    for (heap, evs) in batches {
        w.write_batch(*heap, evs).expect("write");
    }
    w.finish(EndInfo::clean(0)).expect("finish");
    let write_s = t.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(path).expect("stat").len();

    let t = Instant::now();
    let mut r = TraceReader::open(path).expect("open");
    let mut buf = Vec::new();
    let mut read = 0usize;
    let mut check = 0u64;
    for i in 0..r.chunks().len() {
        r.read_chunk_into(i, &mut buf).expect("read");
        read += buf.len();
        check = buf.iter().fold(check, |c, (h, e)| {
            c.wrapping_mul(31).wrapping_add(e.addr ^ u64::from(*h))
        });
    }
    let read_s = t.elapsed().as_secs_f64();
    assert_eq!(read, events, "every event reads back");
    let want = batches.iter().fold(0u64, |c, (h, evs)| {
        evs.iter().fold(c, |c, e| {
            c.wrapping_mul(31).wrapping_add(e.addr ^ u64::from(*h))
        })
    });
    assert_eq!(check, want, "events read back as written");

    let per_event = bytes as f64 / events as f64;
    println!(
        "{name}: {events} events in {} batches, {} chunks, {bytes} bytes: {per_event:.2} bytes/event (budget {BUDGET}); \
         write {:.1} M events/s, read {:.1} M events/s",
        batches.len(),
        r.chunks().len(),
        events as f64 / write_s / 1e6,
        events as f64 / read_s / 1e6,
    );
    per_event <= BUDGET
}

/// Where the time goes (encode and decode alone), bytes/event of the Events payloads at other
/// zstd levels, and each stream's share.
fn codecs(batches: &Batches) {
    let chunk = WriterOptions::default().chunk_events as usize;
    let mut enc = ChunkEncoder::new();
    let mut payloads = Vec::new();
    let mut payload = Vec::new();
    let mut events = 0usize;
    let mut counts = Vec::new();
    let t = Instant::now();
    for (heap, evs) in batches {
        for part in evs.chunks(chunk) {
            if enc.len() as usize + part.len() > chunk {
                counts.push(enc.len());
                enc.finish_into(&mut payload);
                payloads.push(payload.clone());
            }
            enc.push_batch(*heap, part);
            events += part.len();
        }
    }
    counts.push(enc.len());
    enc.finish_into(&mut payload);
    payloads.push(payload);
    let encode_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut out = Vec::new();
    let mut decoder = heaplens_viewer::trace::encode::Decoder::new();
    for (p, &n) in payloads.iter().zip(&counts) {
        out.clear();
        decoder.decode(p, n, &mut out).expect("decodes");
    }
    let decode_s = t.elapsed().as_secs_f64();
    let rate = |s: f64| events as f64 / s / 1e6;
    println!(
        "  encode alone {:.1} M events/s, decode alone {:.1} M events/s",
        rate(encode_s),
        rate(decode_s)
    );
    let raw: usize = payloads.iter().map(Vec::len).sum();
    let per = |n: usize| n as f64 / events as f64;
    let mut line = format!("  payload before compression {:.2} B/ev", per(raw));
    for level in [1, 3, 6, 9] {
        let t = Instant::now();
        let z: Vec<Vec<u8>> = payloads
            .iter()
            .map(|p| zstd::bulk::compress(p, level).expect("zstd"))
            .collect();
        let cs = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for (z, p) in z.iter().zip(&payloads) {
            let back = zstd::bulk::decompress(z, p.len()).expect("unzstd");
            assert_eq!(back.len(), p.len());
        }
        let ds = t.elapsed().as_secs_f64();
        let n: usize = z.iter().map(Vec::len).sum();
        line += &format!(
            "; zstd-{level} {:.2} (compress {:.0}, decompress {:.0} M ev/s)",
            per(n),
            rate(cs),
            rate(ds)
        );
    }
    println!("{line}");
    // Each stream compressed alone (zstd-1): what each part of an event costs.
    let mut per_stream = [(0usize, 0usize); heaplens_viewer::trace::encode::STREAMS];
    let version = heaplens_viewer::trace::VERSION;
    for p in &payloads {
        let sizes = heaplens_viewer::trace::encode::stream_sizes(p, version, 1).expect("streams");
        for (total, (plain, after)) in per_stream.iter_mut().zip(sizes) {
            total.0 += plain as usize;
            total.1 += after as usize;
        }
    }
    let names = heaplens_viewer::trace::encode::STREAM_NAMES;
    let parts: Vec<String> = names
        .iter()
        .zip(per_stream)
        .map(|(n, (raw, z))| format!("{n} {:.2}->{:.2}", per(raw), per(z)))
        .collect();
    println!("  per stream, B/ev raw->zstd-1: {}", parts.join(", "));
}

/// Records a workload of ordinary Rust allocations on heaplens (this binary's global allocator):
/// 4 threads, skewed small sizes, mostly short lifetimes, some blocks freed by another thread.
fn record_real_workload() -> Batches {
    let recorded: Arc<Mutex<Batches>> = Arc::default();
    let sink = recorded.clone();
    collector::start(
        Config {
            lossless: true,
            census_every_ms: 1000,
            channel_buffers: 64,
        },
        Box::new(move |batch| {
            if let collector::Handed::Batch(b) = batch
                && let Ok(mut v) = sink.lock()
            {
                v.push((b.heap, b.events.to_vec()));
            }
            true
        }),
    )
    .expect("the collector starts (the hook is compiled in for benches)");

    let threads = 4;
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..threads).map(|_| mpsc::channel::<Box<[u8]>>()).unzip();
    let handles: Vec<_> = rxs
        .into_iter()
        .enumerate()
        .map(|(i, rx)| {
            let peers = txs.clone();
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || workload(i, &rx, &peers))
                .expect("spawn")
        })
        .collect();
    drop(txs);
    for h in handles {
        h.join().expect("worker");
    }
    collector::shutdown();
    let mut out = recorded.lock().expect("recorded");
    std::mem::take(&mut *out)
}

fn workload(i: usize, inbox: &mpsc::Receiver<Box<[u8]>>, peers: &[mpsc::Sender<Box<[u8]>>]) {
    let mut rng = Rng::new(i as u64 + 7);
    let sizes: Vec<usize> = (0..64)
        .map(|_| match rng.below(100) {
            0..=59 => 8 + rng.below(56) as usize,
            60..=89 => 64 + rng.below(200) as usize,
            90..=98 => 256 + rng.below(3000) as usize,
            _ => 4096 + rng.below(60_000) as usize,
        })
        .collect();
    let mut live: Vec<Box<[u8]>> = Vec::new();
    for step in 0..400_000u32 {
        let grow = if (step / 20_000).is_multiple_of(2) {
            55
        } else {
            45
        };
        if live.is_empty() || rng.below(100) < grow {
            let n = sizes.len() as u64;
            let size = sizes[(rng.below(n) * rng.below(n) / n) as usize];
            let b = vec![step as u8; size].into_boxed_slice();
            if rng.below(100) < 4 {
                let to = (i + 1 + rng.below(peers.len() as u64 - 1) as usize) % peers.len();
                let _ = peers[to].send(b);
            } else {
                live.push(b);
            }
        } else {
            let n = live.len() as u64;
            let k = if rng.below(10) < 6 {
                n - 1 - rng.below(n.min(8))
            } else {
                rng.below(n)
            };
            drop(live.swap_remove(k as usize));
        }
        while let Ok(b) = inbox.try_recv() {
            drop(b);
        }
    }
    drop(live);
    // Blocks still in flight are freed by whoever receives them, or here at the end.
    while let Ok(b) = inbox.try_recv() {
        drop(b);
    }
}
