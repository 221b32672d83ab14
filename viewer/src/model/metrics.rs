//! Time series of the model's metrics, markers and running totals.
//!
//! A [`Sample`] is taken whenever trace time crosses the sampling interval (10 ms to start with)
//! and when the model is told the trace ended. Memory stays bounded: past [`MAX_SAMPLES`] every
//! other sample is dropped and the interval doubles.

use serde::{Deserialize, Serialize};

/// Nanoseconds between samples to start with.
pub const SAMPLE_INTERVAL_NS: u64 = 1_000_000;
/// Samples kept before decimating.
pub const MAX_SAMPLES: usize = 8192;
/// User markers kept (further ones are counted in `Metrics::markers_dropped`).
pub const MAX_MARKERS: usize = 100_000;

/// The metrics at one point of trace time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Trace time (ns).
    pub time: u64,
    /// Bytes the program asked for, over its live blocks.
    pub requested_bytes: u64,
    /// Bytes of the blocks the program holds: Σ (used − thread_free − delayed) × block size.
    pub block_bytes: u64,
    /// Bytes the in-use pages can hold: Σ reserved × block size.
    pub page_capacity_bytes: u64,
    /// Bytes committed: live segments' bytes less purged bytes.
    pub committed_bytes: u64,
    /// Pages of small and medium segments.
    pub segment_pages: u64,
    /// Of those, pages in use.
    pub segment_pages_used: u64,
    /// Live blocks.
    pub live_blocks: u64,
    /// Allocations so far.
    pub allocs: u64,
    /// Frees so far.
    pub frees: u64,
    /// Threads (heaps) alive.
    pub threads: u32,
    /// Blocks on the pages' `free` lists.
    pub free_blocks: u64,
    /// Blocks on `local_free` lists.
    pub local_free_blocks: u64,
    /// Blocks on `thread_free` lists and delayed lists (freed by other threads, not collected).
    pub thread_free_blocks: u64,
    /// Pages in their heap's full queue.
    pub full_pages: u64,
}

fn ratio_left(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        1.0 - part as f64 / whole as f64
    }
}

impl Sample {
    /// Internal fragmentation: 1 − requested / block bytes (waste inside blocks).
    pub fn internal_fragmentation(&self) -> f64 {
        ratio_left(self.requested_bytes, self.block_bytes)
    }

    /// Page-level fragmentation: 1 − block bytes / page capacity bytes (free blocks in pages).
    pub fn page_fragmentation(&self) -> f64 {
        ratio_left(self.block_bytes, self.page_capacity_bytes)
    }

    /// Segment-level fragmentation: unused pages / pages, over small and medium segments.
    pub fn segment_fragmentation(&self) -> f64 {
        ratio_left(self.segment_pages_used, self.segment_pages)
    }

    /// Allocations per second between `earlier` and this sample.
    pub fn alloc_rate_since(&self, earlier: &Sample) -> f64 {
        per_second(self.allocs, earlier.allocs, self.time, earlier.time)
    }

    /// Frees per second between `earlier` and this sample.
    pub fn free_rate_since(&self, earlier: &Sample) -> f64 {
        per_second(self.frees, earlier.frees, self.time, earlier.time)
    }
}

fn per_second(n: u64, n0: u64, t: u64, t0: u64) -> f64 {
    if t <= t0 {
        0.0
    } else {
        n.saturating_sub(n0) as f64 * 1e9 / (t - t0) as f64
    }
}

/// A user marker (`heaplens_alloc::hook::mark`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// Trace time (ns).
    pub time: u64,
    /// Heap (thread) that set it.
    pub heap: u32,
    /// Label.
    pub label: String,
    /// Events applied up to and including the marker's (in a replay: the trace position just
    /// after it).
    pub event: u64,
}

/// Sampled time series and markers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Metrics {
    samples: Vec<Sample>,
    interval: u64,
    pub(crate) next_due: u64,
    markers: Vec<Marker>,
    markers_dropped: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            samples: Vec::new(),
            interval: SAMPLE_INTERVAL_NS,
            next_due: SAMPLE_INTERVAL_NS,
            markers: Vec::new(),
            markers_dropped: 0,
        }
    }
}

impl Metrics {
    /// The samples, in time order.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Current sampling interval (ns); doubles each time the series is decimated.
    pub fn interval(&self) -> u64 {
        self.interval
    }

    /// User markers, in arrival order.
    pub fn markers(&self) -> &[Marker] {
        &self.markers
    }

    /// Markers not kept (past [`MAX_MARKERS`]).
    pub fn markers_dropped(&self) -> u64 {
        self.markers_dropped
    }

    /// Appends a sample (replacing the last one if it has the same time) and schedules the next
    /// one after `now`.
    pub(crate) fn push(&mut self, s: Sample, now: u64) {
        match self.samples.last_mut() {
            Some(last) if last.time >= s.time => {
                *last = Sample {
                    time: last.time,
                    ..s
                }
            }
            _ => self.samples.push(s),
        }
        if self.samples.len() >= MAX_SAMPLES {
            let last = self.samples.len() - 1;
            let mut i = 0;
            self.samples.retain(|_| {
                let keep = i % 2 == 0 || i == last;
                i += 1;
                keep
            });
            self.interval = self.interval.saturating_mul(2);
        }
        self.next_due = (now / self.interval)
            .saturating_add(1)
            .saturating_mul(self.interval);
    }

    pub(crate) fn push_marker(&mut self, m: Marker) {
        if self.markers.len() < MAX_MARKERS {
            self.markers.push(m);
        } else {
            self.markers_dropped += 1;
        }
    }
}

/// Running totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Events applied.
    pub events: u64,
    /// `Alloc` events.
    pub allocs: u64,
    /// `Free` events by the program (not the owner's processing of its delayed list).
    pub frees: u64,
    /// Of those, frees by a thread that does not own the page.
    pub cross_thread_frees: u64,
    /// `Realloc` events (a block moved).
    pub reallocs: u64,
    /// `Resize` events (realloc in place).
    pub resizes: u64,
    /// Events lost, as reported by `Dropped` events.
    pub dropped: u64,
    /// Why they were lost: `heaplens_alloc::event::drop_reason` bits.
    pub drop_reasons: u16,
    /// Threads seen: heaps that started or allocated ([`super::Heap::is_thread`]), not those
    /// seen only freeing.
    pub threads_seen: u64,
    /// Most bytes committed at once.
    pub peak_committed: u64,
    /// Segments allocated.
    pub segments_allocated: u64,
    /// Pages initialised.
    pub pages_initialised: u64,
    /// Censuses received whole.
    pub censuses: u64,
    /// Events of a kind this model does not know, or naming a segment by an address that
    /// cannot be a segment base.
    pub unknown_events: u64,
}
