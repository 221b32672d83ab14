//! What must hold of the model, checked by [`Model::check_invariants`].
//!
//! Some invariants hold at every sample whatever order the threads' events arrive in, since
//! they rest only on counters a page's owner changes, in its own order ([`Point::AnySample`]):
//!
//! - segment-level fragmentation lies in 0..=1; page-capacity bytes <= committed bytes;
//! - on every in-use page, the blocks in use and the lengths of `free` and `local_free` add up
//!   to the blocks carved (`used + |free| + |local_free| == capacity`, `used` counting the
//!   blocks on `thread_free` and the delayed list) with each of them at least 0, and
//!   `capacity <= reserved`.
//!
//! The others hold where the model is *settled*: every event before that point in each
//! thread's own order has been applied ([`Point::Settled`]: the end of a recording, a census
//! that agrees with the model):
//!
//! - internal and page-level fragmentation lie in 0..=1;
//! - requested bytes <= block bytes <= page-capacity bytes;
//! - on every in-use page `thread_free >= 0`, `delayed >= 0`, `thread_free + delayed <= used`.
//!
//! Between settled points they can fail for a while, honestly: a thread's events reach the
//! model in batches, so another thread's free of a block can be applied before the owner's
//! earlier events (its allocation of the block, its collect of the block), and a collect can be
//! applied before the cross-thread free it collected. Then `thread_free` is briefly negative or
//! above `used`, block bytes count a block twice or not at all, and requested bytes exceed block
//! bytes (the "internal fragmentation −1.8 %" a live view can show for a moment). Each later
//! event of the late thread puts it right; `tests/model_invariants.rs` (viewer and command)
//! checks both sets on recorded traces.
//!
//! `debug_assert!` checks the first set as the model takes each sample (compiled out in release
//! builds; a pass over the pages per sample), unless the stream is known to lack events or the
//! check is turned off ([`Model::set_invariant_checks`]) for a stream that lacks them silently:
//! a model whose input lost events owes nothing to these invariants, and never panics.

use std::fmt;

use super::{Model, Sample};

/// An invariant that does not hold.
#[derive(Clone, Debug, PartialEq)]
pub enum Violation {
    /// A fragmentation figure outside 0..=1.
    Fragmentation {
        /// `internal`, `page` or `segment`.
        which: &'static str,
        /// Its value.
        value: f64,
    },
    /// `smaller <= larger` fails between two byte totals.
    Order {
        /// The name of the total that should be the smaller.
        smaller: &'static str,
        /// Its value.
        small: u64,
        /// The name of the total that should be the larger.
        larger: &'static str,
        /// Its value.
        large: u64,
    },
    /// A page's counts do not add up.
    Page {
        /// The page's first block.
        start: u64,
        /// What is wrong.
        what: &'static str,
        /// `used`, `free`, `local_free`, `thread_free`, `delayed`, `capacity`, `reserved`.
        counts: [i64; 7],
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fragmentation { which, value } => {
                write!(f, "{which} fragmentation is {:.2} %", value * 100.0)
            }
            Self::Order {
                smaller,
                small,
                larger,
                large,
            } => write!(f, "{smaller} {small} exceed {larger} {large}"),
            Self::Page {
                start,
                what,
                counts: [u, fr, l, t, d, c, r],
            } => write!(
                f,
                "page {start:#x}: {what} (used {u}, free {fr}, local_free {l}, thread_free {t}, \
                 delayed {d}, capacity {c}, reserved {r})"
            ),
        }
    }
}

/// Where the invariants are checked: which of them must hold there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// Any sample: only what holds whatever order the threads' events arrive in.
    AnySample,
    /// A settled point (every earlier event of every thread applied): all of them.
    Settled,
}

/// The sample-level invariants of `s` that must hold at `point`.
pub fn sample_violations(s: &Sample, point: Point, out: &mut Vec<Violation>) {
    let settled = point == Point::Settled;
    for (which, value, always) in [
        ("internal", s.internal_fragmentation(), false),
        ("page", s.page_fragmentation(), false),
        ("segment", s.segment_fragmentation(), true),
    ] {
        if (always || settled) && !(0.0..=1.0).contains(&value) {
            out.push(Violation::Fragmentation { which, value });
        }
    }
    for (smaller, small, larger, large, always) in [
        (
            "requested bytes",
            s.requested_bytes,
            "block bytes",
            s.block_bytes,
            false,
        ),
        (
            "block bytes",
            s.block_bytes,
            "page-capacity bytes",
            s.page_capacity_bytes,
            false,
        ),
        (
            "page-capacity bytes",
            s.page_capacity_bytes,
            "committed bytes",
            s.committed_bytes,
            true,
        ),
    ] {
        if (always || settled) && small > large {
            out.push(Violation::Order {
                smaller,
                small,
                larger,
                large,
            });
        }
    }
}

impl Model {
    /// Every invariant that must hold at `point` and does not hold now (empty: all hold).
    /// Costs a pass over the pages.
    pub fn check_invariants(&self, point: Point) -> Vec<Violation> {
        let settled = point == Point::Settled;
        let mut out = Vec::new();
        sample_violations(&self.current(), point, &mut out);
        for seg in self.segs.iter() {
            // An unsure page's counts may be wrong (events were lost): nothing is owed.
            for p in seg.pages.iter().filter(|p| p.in_use && !p.unsure) {
                let counts = [
                    p.used,
                    p.free_len(),
                    p.local_free,
                    p.thread_free,
                    p.delayed,
                    i64::from(p.capacity),
                    i64::from(p.reserved),
                ];
                let what = if counts[..3].iter().any(|&n| n < 0) {
                    "a negative count"
                } else if p.capacity > p.reserved && p.reserved != 0 {
                    "more blocks carved than the page holds"
                } else if !settled {
                    continue;
                } else if p.thread_free < 0 || p.delayed < 0 {
                    "a negative count of blocks freed by other threads"
                } else if p.thread_free.saturating_add(p.delayed) > p.used {
                    "more blocks freed by other threads than in use"
                } else {
                    continue;
                };
                out.push(Violation::Page {
                    start: p.start,
                    what,
                    counts,
                });
            }
        }
        out
    }

    /// The debug build's check, as a sample is taken ([`Point::AnySample`]) and at a whole
    /// census the model agrees with ([`Point::Settled`]: every event before it applied, so
    /// fragmentation within 0..=100 % and the rest): skipped when turned off
    /// ([`Model::set_invariant_checks`]) or when the stream is known to lack events.
    #[cfg(debug_assertions)]
    pub(crate) fn debug_check_invariants(&self, point: Point) {
        let lossy =
            self.totals.dropped > 0 || self.totals.unknown_events > 0 || self.lost_to_damage > 0;
        if !self.invariant_checks || lossy {
            return;
        }
        let v = self.check_invariants(point);
        debug_assert!(
            v.is_empty(),
            "model invariants at {} ns ({point:?}): {}",
            self.time,
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
}
