//! Model ingest: events applied per second on one core (budget: >= 20 M events/s).
//!
//! Generates about 20 M realistic events with the allocator simulation (`model::synth`): eight
//! threads allocating and freeing across many pages and bins, 15% cross-thread frees (some
//! reported late), reallocs, thread churn, medium and large blocks. Then times `Model::apply`
//! over the stream in the order the collector delivers it (within a tick, each heap's events in
//! one run), and, for comparison, with a tick's events interleaved one by one (the worst order)
//! and with a 32 times larger live set. Rates are per second of the thread's CPU time (so other
//! processes on a busy machine count less), best of five runs, with the median.
//!
//! `cargo bench -p heaplens-viewer --bench model_ingest`; `HEAPLENS_BENCH_EVENTS` (20 M),
//! `HEAPLENS_BENCH_LIVE` (live blocks per thread, 2000), `HEAPLENS_BENCH_REPS` (5) change the
//! run, `HEAPLENS_BENCH_DEBUG=1` prints each run's CPU and wall time.

use std::time::Instant;

use heaplens_alloc::event::{Event, EventKind, stack_mode};
use heaplens_viewer::model::Model;
use heaplens_viewer::model::synth::{
    Synth, SynthConfig, merge_like_collector, shuffle_within_ticks,
};

const BUDGET: f64 = 20e6;

fn generate(n: usize, live_per_thread: usize, seed: u64) -> Vec<(u32, Event)> {
    generate_with(n, live_per_thread, seed, stack_mode::OFF)
}

fn generate_with(n: usize, live_per_thread: usize, seed: u64, stacks: u16) -> Vec<(u32, Event)> {
    let mut s = Synth::new(SynthConfig {
        stacks,
        seed,
        threads: 8,
        live_per_thread,
        cross_thread_percent: 15,
        late_free_percent: 20,
        churn_per_million: 50,
        ops_per_tick: 5_000,
        medium_percent: 3,
        large_per_mille: 1,
        realloc_percent: 3,
        ..SynthConfig::default()
    });
    s.run_events(n);
    s.quiesce();
    s.take_events()
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mix(events: &[(u32, Event)]) -> String {
    let mut counts = [0usize; 256];
    for (_, e) in events {
        counts[e.kind as usize] += 1;
    }
    let mut v: Vec<(usize, usize)> = counts
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(k, c)| (k, *c))
        .collect();
    v.sort_by_key(|&(_, c)| std::cmp::Reverse(c));
    v.iter()
        .take(6)
        .map(|&(k, c)| {
            let name = EventKind::from_u8(k as u8).map_or("?", EventKind::name);
            format!("{name} {:.1}%", 100.0 * c as f64 / events.len() as f64)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Nanoseconds this thread has run on a CPU (Linux `schedstat`), so that other processes on a
/// busy machine do not count; wall time where it is not available.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Applies `events` to a new model five times; returns the best rate (events per second of CPU
/// time), and prints it with the median.
fn measure(name: &str, events: &[(u32, Event)]) -> f64 {
    let mut rates = Vec::new();
    let mut last = None;
    for _ in 0..env("HEAPLENS_BENCH_REPS", 5).max(1) {
        let mut m = Model::new();
        let (t, c) = (Instant::now(), cpu_ns());
        for (heap, ev) in events {
            m.apply(*heap, ev);
        }
        m.finish();
        let wall = t.elapsed().as_secs_f64();
        let secs = match (c, cpu_ns()) {
            (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
            _ => wall,
        };
        if std::env::var_os("HEAPLENS_BENCH_DEBUG").is_some() {
            eprintln!("  cpu {secs:.3} s, wall {wall:.3} s");
        }
        rates.push(events.len() as f64 / secs);
        last = Some(m);
    }
    rates.sort_by(f64::total_cmp);
    let (best, median) = (rates[rates.len() - 1], rates[rates.len() / 2]);
    let m = last.expect("ran");
    let s = m.current();
    println!(
        "{name}: {} events, {:.1} M events/s of CPU time (best of {}; median {:.1}); end state: \
         {} segments, {} live blocks, {} samples",
        events.len(),
        best / 1e6,
        rates.len(),
        median / 1e6,
        m.segments().len(),
        s.live_blocks,
        m.metrics().samples().len()
    );
    best
}

fn main() {
    let n = env("HEAPLENS_BENCH_EVENTS", 20_000_000);
    let live = env("HEAPLENS_BENCH_LIVE", 2_000);
    let t = Instant::now();
    let truth = generate(n, live, 42);
    println!(
        "generated {} events in {:.1} s: {}",
        truth.len(),
        t.elapsed().as_secs_f64(),
        mix(&truth)
    );
    // The collector merges the threads' streams by time, each heap's events of a tick in a run.
    let events = merge_like_collector(&truth, 1);
    let rate = measure("collector order", &events);
    drop(events);
    // Worst case: a tick's events of different threads interleaved one by one.
    let events = shuffle_within_ticks(&truth, 2);
    let worst = measure("interleaved", &events);
    drop((events, truth));
    let big = merge_like_collector(&generate(n / 4, 32 * live, 43), 3);
    let big_rate = measure("32x live set", &big);
    drop(big);
    // Stacks: every allocation's (a side map entry per live block), and sampled (512 KiB).
    let all = merge_like_collector(&generate_with(n / 2, live, 42, stack_mode::ALL), 4);
    let all_rate = measure("stacks all", &all);
    drop(all);
    let sampled = merge_like_collector(&generate_with(n / 2, live, 42, stack_mode::SAMPLED), 5);
    let sampled_rate = measure("stacks sampled", &sampled);
    drop(sampled);
    let verdict = if rate >= BUDGET { "within" } else { "BELOW" };
    println!(
        "model ingest: {:.1} M events/s ({verdict} the budget of {:.0} M/s); interleaved {:.1} M/s; \
         32x live set {:.1} M/s; stacks all {:.1} M/s ({:.2}x), sampled {:.1} M/s ({:.2}x)",
        rate / 1e6,
        BUDGET / 1e6,
        worst / 1e6,
        big_rate / 1e6,
        all_rate / 1e6,
        rate / all_rate,
        sampled_rate / 1e6,
        rate / sampled_rate,
    );
}
