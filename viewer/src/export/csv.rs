//! CSV: every metric series of the model, one row per sample, with a header. Rates are per
//! second since the sample before (the first: since the start of the trace).

use std::io::Write;

use crate::model::Sample;

/// The columns, in order.
pub const COLUMNS: [&str; 20] = [
    "time_s",
    "requested_bytes",
    "block_bytes",
    "page_capacity_bytes",
    "committed_bytes",
    "segment_pages",
    "segment_pages_used",
    "live_blocks",
    "allocs",
    "frees",
    "threads",
    "free_blocks",
    "local_free_blocks",
    "thread_free_blocks",
    "full_pages",
    "internal_fragmentation",
    "page_fragmentation",
    "segment_fragmentation",
    "alloc_rate_per_s",
    "free_rate_per_s",
];

/// The values of one row: `s`, with rates since `before`.
pub fn row(s: &Sample, before: &Sample) -> [f64; 20] {
    [
        s.time as f64 / 1e9,
        s.requested_bytes as f64,
        s.block_bytes as f64,
        s.page_capacity_bytes as f64,
        s.committed_bytes as f64,
        s.segment_pages as f64,
        s.segment_pages_used as f64,
        s.live_blocks as f64,
        s.allocs as f64,
        s.frees as f64,
        f64::from(s.threads),
        s.free_blocks as f64,
        s.local_free_blocks as f64,
        s.thread_free_blocks as f64,
        s.full_pages as f64,
        s.internal_fragmentation(),
        s.page_fragmentation(),
        s.segment_fragmentation(),
        s.alloc_rate_since(before),
        s.free_rate_since(before),
    ]
}

/// Each sample with the one before it (the first with an empty sample at time 0).
pub fn with_previous(samples: &[Sample]) -> impl Iterator<Item = (&Sample, Sample)> + '_ {
    samples.iter().enumerate().map(move |(i, s)| {
        let before = if i == 0 {
            Sample::default()
        } else {
            samples[i - 1]
        };
        (s, before)
    })
}

/// Writes the series.
pub fn write(samples: &[Sample], mut w: impl Write) -> std::io::Result<()> {
    writeln!(w, "{}", COLUMNS.join(","))?;
    for (s, before) in with_previous(samples) {
        let r = row(s, &before);
        for (i, v) in r.iter().enumerate() {
            if i > 0 {
                w.write_all(b",")?;
            }
            // Counts print as integers; ratios, rates and times with their fraction.
            if v.fract() == 0.0 && v.abs() < 1e15 {
                write!(w, "{}", *v as i64)?;
            } else {
                write!(w, "{v}")?;
            }
        }
        w.write_all(b"\n")?;
    }
    w.flush()
}
