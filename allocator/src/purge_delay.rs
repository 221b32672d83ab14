//! How long free memory waits before it goes back to the OS: `HEAPLENS_PURGE_DELAY_MS` (10 ms
//! by default) at the shortest, longer for a thread whose memory is wanted again soon after.
//!
//! A purge costs twice when its memory is wanted again: the `madvise` that gives it back, and a
//! page fault for each 4 KiB of it touched again. Some programs free a working set and build it
//! again a few dozen milliseconds later, round after round: python3 on the LD_PRELOAD suite's
//! script took 94 % of the free pages purged after 10 ms, and all the memory purged from cached
//! segments, again within 64 ms (34 k page faults against mimalloc's 19 k, and 1.07-1.12x its
//! time). Others do not take it again soon: a larson-like server 3 % of it; there a longer
//! delay only keeps memory resident (larson's peak RSS 1.3x at a fixed 100 ms).
//!
//! So each thread keeps its own delay ([`PurgeDelay`], with its segments). Every purge of its
//! memory counts its bytes, and every page or cached segment it purged and takes again within the
//! longest delay counts its bytes and how long it had been free. At each [`WINDOW_BYTES`] purged
//! or retaken the delay is weighed ([`weigh`]) on the windows so far, each seven eighths the
//! weight of the one after it: where three quarters of what was purged was taken again, it grows
//! to cover the longest such gap (at least doubling, at most [`MAX_TIMES`] the option); where
//! less than half, it halves (down to the option). A new delay is weighed on what it purged
//! alone, once that had the longest delay to be taken again (`PurgeDelay::changed_ms`).
//!
//! Memory one thread purged and another takes again measures neither's delay: threads that come
//! and go exchanging memory (`stress`, `threadex`), weighed on one process-wide count, grew the
//! delay to the longest, and their peak RSS 1.5-3x (`threadex`'s 1.2x mimalloc's). Counted per
//! thread, a few of their threads grow theirs, and their peaks stay within a tenth of the fixed
//! delay's.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::options;

/// The delay grows to this many times `HEAPLENS_PURGE_DELAY_MS` at most (160 ms by default;
/// Debian's mimalloc 2.0.9 resets free pages after 100 ms and decommits segments after 500).
pub const MAX_TIMES: u64 = 16;

/// The delay is weighed each time this many bytes were purged, or taken again, since the last
/// time: python3's rounds purge about 10 MiB each; larson purges 55 MiB in its whole run.
pub const WINDOW_BYTES: u64 = 4 << 20;

/// The longest delay: memory taken again this long after its purge or later is not counted.
pub(crate) fn longest_ms() -> u64 {
    options::purge_delay_ms().saturating_mul(MAX_TIMES)
}

/// One thread's purge delay, kept with its segments ([`crate::segment::SegmentsTld`]) and
/// touched by that thread alone.
#[derive(Debug)]
pub struct PurgeDelay {
    /// The delay now, in milliseconds; 0 until it first grows (then the option's applies).
    delay_ms: u64,
    /// Bytes purged, and purged and taken again within the longest delay, since the delay was
    /// last weighed.
    purged: u64,
    retaken: u64,
    /// The longest time such memory had been free (the delay it waited, and the time since its
    /// purge), since the delay was last weighed.
    gap_ms: u64,
    /// The windows weighed so far, each seven eighths the weight of the one after it.
    past_purged: u64,
    past_retaken: u64,
    /// When the delay last changed ([`crate::os::clock_ms`]; 0: never). A new delay is weighed
    /// on what it purges alone, and not before the longest delay has passed, so that what it
    /// purged had the time to be taken again: memory purged before the change is not counted
    /// when it is taken again, and the windows weighed before it are dropped. Weighed on those,
    /// a delay just lengthened counted the memory purged after the shorter one, which the
    /// program still took again, while it purged little itself; and weighed at once, on a window
    /// of purges whose memory was still to be taken again, it was shortened as soon as it grew.
    changed_ms: u64,
    /// The id of the heap it belongs to (`Heap::id`, never given to another heap of the
    /// process; set when the heap is made): whose cached segment is whose.
    owner: u32,
}

impl Default for PurgeDelay {
    fn default() -> Self {
        Self::new()
    }
}

/// Bytes purged, and purged and taken again within the longest delay, since the process began
/// (by any thread, of any thread's memory).
static PURGED_TOTAL: AtomicU64 = AtomicU64::new(0);
static RETAKEN_TOTAL: AtomicU64 = AtomicU64::new(0);
/// The longest delay any thread grew to.
static LONGEST_GROWN_MS: AtomicU64 = AtomicU64::new(0);

impl PurgeDelay {
    pub const fn new() -> Self {
        Self {
            delay_ms: 0,
            purged: 0,
            retaken: 0,
            gap_ms: 0,
            past_purged: 0,
            past_retaken: 0,
            changed_ms: 0,
            owner: 0,
        }
    }

    /// How long the thread's free memory waits now before it is purged (milliseconds): never
    /// less than `HEAPLENS_PURGE_DELAY_MS`.
    #[inline]
    pub fn delay_ms(&self) -> u64 {
        self.delay_ms.max(options::purge_delay_ms())
    }

    /// The id of the heap this delay belongs to (a thread pointer, or a heap's memory, is
    /// reused by the threads that come after; a heap's id is not).
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// Names the heap this delay belongs to (at the heap's making).
    pub(crate) fn set_owner(&mut self, heap_id: u32) {
        self.owner = heap_id;
    }

    /// Counts `bytes` of the thread's memory given back to the OS at `now_ms`.
    pub(crate) fn purged(&mut self, bytes: usize, now_ms: u64) {
        count_purged(bytes);
        self.purged += bytes as u64;
        if self.purged >= WINDOW_BYTES {
            self.reweigh(now_ms);
        }
    }

    /// Counts `bytes` the thread purged at `purged_at_ms` and took again at `now_ms`
    /// ([`crate::os::clock_ms`]): a regret if a longer delay, up to the longest, would have
    /// kept them.
    pub(crate) fn retaken(&mut self, bytes: usize, purged_at_ms: u64, now_ms: u64) {
        let since = now_ms.saturating_sub(purged_at_ms);
        if !count_retaken(bytes, since) || purged_at_ms < self.changed_ms {
            // Long ago, or purged after a delay there is no longer: no measure of this one.
            return;
        }
        self.gap_ms = self.gap_ms.max(since + self.delay_ms());
        self.retaken += bytes as u64;
        if self.retaken >= WINDOW_BYTES {
            self.reweigh(now_ms);
        }
    }

    /// [`PurgeDelay::purged`] of memory the heap `owner` cached: counted against this delay if
    /// that is its heap, else in the process's totals alone.
    pub(crate) fn purged_of(&mut self, owner: u32, bytes: usize, now_ms: u64) {
        if owner == self.owner {
            self.purged(bytes, now_ms);
        } else {
            count_purged(bytes);
        }
    }

    /// [`PurgeDelay::retaken`] of memory the heap `owner` cached: counted against this delay if
    /// that is its heap, else in the process's totals alone.
    pub(crate) fn retaken_of(&mut self, owner: u32, bytes: usize, purged_at_ms: u64, now_ms: u64) {
        if owner == self.owner {
            self.retaken(bytes, purged_at_ms, now_ms);
        } else {
            count_retaken(bytes, now_ms.saturating_sub(purged_at_ms));
        }
    }

    /// Weighs the delay on what this window counted and the past ones, and starts the next
    /// window.
    #[cold]
    fn reweigh(&mut self, now_ms: u64) {
        self.past_purged = self.past_purged / 8 * 7 + std::mem::take(&mut self.purged);
        self.past_retaken = self.past_retaken / 8 * 7 + std::mem::take(&mut self.retaken);
        let (was, base) = (self.delay_ms(), options::purge_delay_ms());
        if self.changed_ms != 0 && now_ms < self.changed_ms.saturating_add(longest_ms()) {
            // Too soon to weigh a new delay: what it purged has not had the time to be taken
            // again. (The gap stays, for when it is weighed.)
            return;
        }
        let gap = std::mem::take(&mut self.gap_ms);
        let delay = weigh(was, base, self.past_purged, self.past_retaken, gap);
        if delay != was {
            self.delay_ms = delay;
            self.changed_ms = now_ms.max(1);
            self.past_purged = 0;
            self.past_retaken = 0;
            LONGEST_GROWN_MS.fetch_max(delay, Relaxed);
        }
    }
}

/// The calling thread's purge delay now, in milliseconds (the option's while it has no heap).
pub fn thread_delay_ms() -> u64 {
    let heap = crate::heap::default_heap();
    // SAFETY: the calling thread's heap (or the static empty heap, never written), read by the
    // thread that owns it.
    unsafe { (*heap).tld.purge_delay.delay_ms() }
}

/// Counts `bytes` given back to the OS, in the process's totals ([`purge_stats`]): for memory no
/// thread's delay answers for (an exited thread's, or a segment cached by another thread).
pub(crate) fn count_purged(bytes: usize) {
    PURGED_TOTAL.fetch_add(bytes as u64, Relaxed);
}

/// Counts `bytes` taken again `since_ms` after their purge in the process's totals, if within
/// the longest delay; returns whether they were.
pub(crate) fn count_retaken(bytes: usize, since_ms: u64) -> bool {
    if bytes == 0 || since_ms >= longest_ms() {
        return false;
    }
    RETAKEN_TOTAL.fetch_add(bytes as u64, Relaxed);
    true
}

/// What the purges did so far, process-wide: bytes purged, bytes of them taken again within the
/// longest delay, and the longest delay a thread grew to (0: none grew).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PurgeStats {
    pub purged_bytes: u64,
    pub retaken_bytes: u64,
    pub longest_grown_ms: u64,
}

/// The purges so far ([`PurgeStats`]).
pub fn purge_stats() -> PurgeStats {
    PurgeStats {
        purged_bytes: PURGED_TOTAL.load(Relaxed),
        retaken_bytes: RETAKEN_TOTAL.load(Relaxed),
        longest_grown_ms: LONGEST_GROWN_MS.load(Relaxed),
    }
}

/// The next delay, from the delay now, the option's (`base`), bytes `purged` and bytes of them
/// `retaken` (the windows' weighed), and the longest `gap` (milliseconds) memory retaken in the
/// last window had been free: at least doubled to cover the gap where three quarters were taken
/// again, halved where less than half were, else the same; always between `base` and
/// [`MAX_TIMES`] `base`.
#[must_use]
pub fn weigh(delay: u64, base: u64, purged: u64, retaken: u64, gap: u64) -> u64 {
    let longest = base.saturating_mul(MAX_TIMES);
    let next = if retaken > 0 && retaken.saturating_mul(4) >= purged.saturating_mul(3) {
        let mut grown = delay.saturating_mul(2).max(1);
        while grown <= gap && grown < longest {
            grown = grown.saturating_mul(2);
        }
        grown
    } else if retaken.saturating_mul(2) < purged {
        delay / 2
    } else {
        delay
    };
    next.clamp(base, longest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn memory_taken_again_soon_lengthens_the_delay_past_its_gap() {
        // Python's rounds: most of what went back was wanted again about 60 ms later.
        assert_eq!(weigh(10, 10, 4 * MIB, 4 * MIB, 64), 80);
        // At least doubled, even for a short gap.
        assert_eq!(weigh(10, 10, 4 * MIB, 3 * MIB, 3), 20);
        assert_eq!(weigh(20, 10, MIB, 4 * MIB, 0), 40);
        // Never past the longest.
        assert_eq!(weigh(80, 10, 0, 4 * MIB, 10_000), 160);
        assert_eq!(weigh(160, 10, 0, 4 * MIB, 10), 160);
    }

    #[test]
    fn memory_not_taken_again_shortens_the_delay_to_the_option() {
        assert_eq!(weigh(160, 10, 4 * MIB, 0, 0), 80);
        // `stress` and `threadex` take about a third of it again.
        assert_eq!(weigh(80, 10, 3 * MIB, MIB, 50), 40);
        assert_eq!(weigh(80, 10, 4 * MIB, 2 * MIB - 1, 50), 40);
        assert_eq!(weigh(10, 10, 4 * MIB, 0, 0), 10);
        // Between a half and three quarters: it stays.
        assert_eq!(weigh(40, 10, 4 * MIB, 2 * MIB, 30), 40);
        assert_eq!(weigh(40, 10, 4 * MIB, 3 * MIB - 1, 30), 40);
    }

    #[test]
    fn a_delay_of_zero_stays_zero() {
        // HEAPLENS_PURGE_DELAY_MS=0 purges at once, whatever is taken again.
        assert_eq!(weigh(0, 0, 0, 4 * MIB, 100), 0);
        assert_eq!(weigh(0, 0, 4 * MIB, 0, 0), 0);
    }
}
