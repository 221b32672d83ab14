//! Comparing two models whole: what a keyframe restores must equal what replaying every event
//! from the start builds (`tests/keyframe_seek.rs`).

use std::fmt::Debug;

use super::{Block, Model, Segment};

/// Pushes a line to `out` when `a != b`.
fn same<T: PartialEq + Debug>(out: &mut Vec<String>, what: &str, a: &T, b: &T) {
    if a != b {
        out.push(format!("{what}: {a:?} != {b:?}"));
    }
}

/// Compares two lists keyed by `key` element by element, naming the first few differences.
fn same_by<T: PartialEq + Debug, K: Ord + Debug + Copy>(
    out: &mut Vec<String>,
    what: &str,
    mut a: Vec<T>,
    mut b: Vec<T>,
    key: impl Fn(&T) -> K,
) {
    a.sort_by_key(&key);
    b.sort_by_key(&key);
    if a.len() != b.len() {
        out.push(format!("{what}: {} != {} entries", a.len(), b.len()));
    }
    let mut n = 0;
    for (x, y) in a.iter().zip(&b) {
        if x != y && n < 4 {
            n += 1;
            out.push(format!("{what} {:?}: {x:?} != {y:?}", key(x)));
        }
    }
}

impl Model {
    /// Every difference between `self` and `other` in what the model holds: each segment with
    /// its pages (free-list lengths, live tables, owners, flags), each ghost segment, each heap,
    /// each live block and unmatched free, the totals, the current sample and every sample and
    /// marker of the time series, the last census and its check, the clock and the cached
    /// segments. Caches that only speed lookups up are not compared. Empty: the models are the
    /// same.
    pub fn differences(&self, other: &Model) -> Vec<String> {
        let mut out = Vec::new();
        same(&mut out, "time", &self.time, &other.time);
        same(&mut out, "clock sync", &self.clock_sync, &other.clock_sync);
        same(&mut out, "totals", &self.totals(), &other.totals());
        same(
            &mut out,
            "current sample",
            &self.current(),
            &other.current(),
        );
        let seg_key = |s: &&Segment| (s.base, s.generation);
        same_by(
            &mut out,
            "segment",
            self.segs.iter().collect(),
            other.segs.iter().collect(),
            seg_key,
        );
        same_by(
            &mut out,
            "ghost",
            self.segs.ghosts().iter().collect(),
            other.segs.ghosts().iter().collect(),
            seg_key,
        );
        same_by(
            &mut out,
            "heap",
            self.heaps.iter().collect(),
            other.heaps.iter().collect(),
            |h| h.id,
        );
        let block_key = |b: &Block| b.addr;
        same_by(
            &mut out,
            "live block",
            self.live_blocks().collect(),
            other.live_blocks().collect(),
            block_key,
        );
        same_by(
            &mut out,
            "unmatched free",
            self.unmatched_frees().collect(),
            other.unmatched_frees().collect(),
            block_key,
        );
        same(
            &mut out,
            "live totals",
            &(self.live.len(), self.live.requested_bytes()),
            &(other.live.len(), other.live.requested_bytes()),
        );
        same(
            &mut out,
            "samples",
            &self.metrics.samples(),
            &other.metrics.samples(),
        );
        same(
            &mut out,
            "markers",
            &(self.metrics.markers(), self.metrics.markers_dropped()),
            &(other.metrics.markers(), other.metrics.markers_dropped()),
        );
        same(
            &mut out,
            "last census",
            &self.last_census(),
            &other.last_census(),
        );
        same(
            &mut out,
            "last census check",
            &self.last_census_check(),
            &other.last_census_check(),
        );
        same(&mut out, "cached segments", &self.cached, &other.cached);
        out
    }
}
