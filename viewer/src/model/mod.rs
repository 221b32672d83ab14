//! The model: a shadow of the allocator rebuilt from its events (no egui here).
//!
//! [`Model::apply`] takes events in the order the collector delivers them, each with the id of the
//! heap whose buffer it came from (0: process-level events such as thread names, drop counts and
//! censuses). The model keeps segments and their pages with the lengths of the three free lists
//! ([`segment`], [`page`]), heaps ([`heap`]), live blocks ([`live`]), time series ([`metrics`]), and
//! checks itself against the allocator's census ([`census`]).
//!
//! **Order tolerance.** Event times are coarse (about a millisecond) and the events of different
//! threads within one tick come in any order; a cross-thread free is even reported after its block
//! was pushed, so its owner may collect it first. The model's state after all events of a quiet
//! interval does not depend on that order:
//! - counters that other threads change (`thread_free`, `delayed`, live-block counts) are signed
//!   running sums, never reset by page re-initialisation;
//! - the owner-side counters (`used`, `local_free`, `capacity`, `in_full`) change only through the
//!   owning heap's own events, which keep their order;
//! - a free that arrives after its segment was freed (or before it was announced) is kept on a
//!   ghost segment until it settles (see [`segment`]);
//! - handing a segment from one thread to another (abandon, free) moves the allocator's clock on,
//!   so those events stay in order across threads.
//!
//! **Speed.** The hot path (alloc and free) allocates nothing and hashes nothing in the common
//! case: the segment is found through a small direct-mapped cache in front of a hash map, the page
//! by a shift, the live block in the page's own table by a multiply (see [`live`]), and the
//! metrics are kept up to date incrementally. `benches/model_ingest.rs` measures it.

pub mod census;
pub mod compare;
pub mod geometry;
pub mod hash;
pub mod heap;
pub mod invariants;
pub mod live;
pub mod metrics;
pub mod page;
pub mod segment;
pub mod sites;
pub mod synth;

use heaplens_alloc::bin::PageKind;
use heaplens_alloc::event::{Event, EventKind, flags};
use heaplens_alloc::schema::{self, Free};
use heaplens_alloc::{SEGMENT_MASK, SEGMENT_SIZE};
use serde::{Deserialize, Serialize};

pub use census::{Census, CensusCheck, CensusPage, CensusSegment, CensusTally, Field, Mismatch};
pub use heap::{BinGroup, Heap, Heaps, PageTotals};
pub use invariants::{Point, Violation};
pub use live::{Block, LiveBlock, LiveBlocks, LiveTable};
pub use metrics::{Marker, Metrics, Sample, Totals};
pub use page::{BlockState, LastEvent, Page};
pub use segment::{Segment, Segments, segment_base, segment_named};
pub use sites::{Frame, Module, SiteKey, SiteStats, Sites, StackedBlock};

use census::CensusState;
use live::Side;
use page::page_kind;

/// How many events ahead [`Model::apply_batch`] loads the events themselves (2 KiB).
const EVENTS_AHEAD: usize = 64;

const ALLOC: u8 = EventKind::Alloc as u8;
const FREE: u8 = EventKind::Free as u8;
const RESIZE: u8 = EventKind::Resize as u8;
const REALLOC: u8 = EventKind::Realloc as u8;
const PAGE_INIT: u8 = EventKind::PageInit as u8;
const PAGE_EXTEND: u8 = EventKind::PageExtend as u8;
const PAGE_COLLECT: u8 = EventKind::PageCollect as u8;
const PAGE_FULL: u8 = EventKind::PageFull as u8;
const PAGE_UNFULL: u8 = EventKind::PageUnfull as u8;
const PAGE_RETIRE: u8 = EventKind::PageRetire as u8;
const PAGE_FREE: u8 = EventKind::PageFree as u8;
const PAGE_RECLAIM: u8 = EventKind::PageReclaim as u8;
const SEGMENT_ALLOC: u8 = EventKind::SegmentAlloc as u8;
const SEGMENT_FREE: u8 = EventKind::SegmentFree as u8;
const SEGMENT_ABANDON: u8 = EventKind::SegmentAbandon as u8;
const SEGMENT_RECLAIM: u8 = EventKind::SegmentReclaim as u8;
const THREAD_START: u8 = EventKind::ThreadStart as u8;
const THREAD_EXIT: u8 = EventKind::ThreadExit as u8;
const THREAD_NAME: u8 = EventKind::ThreadName as u8;
const OS_COMMIT: u8 = EventKind::OsCommit as u8;
const OS_PURGE: u8 = EventKind::OsPurge as u8;
const MARK: u8 = EventKind::Mark as u8;
const DROPPED: u8 = EventKind::Dropped as u8;
const CLOCK_SYNC: u8 = EventKind::ClockSync as u8;
const CENSUS_BEGIN: u8 = EventKind::CensusBegin as u8;
const CENSUS_PAGE: u8 = EventKind::CensusPage as u8;
const CENSUS_PAGE2: u8 = EventKind::CensusPage2 as u8;
const CENSUS_SEGMENT: u8 = EventKind::CensusSegment as u8;
const CENSUS_END: u8 = EventKind::CensusEnd as u8;
const STACK_FRAME: u8 = EventKind::StackFrame as u8;
const MODULE_GONE: u8 = EventKind::ModuleGone as u8;

/// The first bytes of a keyframe of version 1 on (a version 0 keyframe, a model in postcard,
/// starts with a segment count: these would take over nine thousand segments and then more).
pub const KEYFRAME_MAGIC: [u8; 4] = *b"\xffHKF";

/// The keyframe version this build writes: 0 had no header and no sites; 1 adds them; 2
/// appends the last census check's detail (heaps' parts, pages taken over) and the segments'
/// last reclaim times; 3 appends the generations segments replaced (`Segment::replaced`).
pub const KEYFRAME_VERSION: u16 = 3;

/// Sums kept up to date as events arrive (over live segments).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Aggregates {
    block_bytes: i64,
    page_capacity_bytes: i64,
    committed: i64,
    segment_pages: i64,
    segment_pages_used: i64,
}

impl Aggregates {
    fn of_segment(seg: &Segment) -> Self {
        let mut a = Self {
            committed: seg.committed() as i64,
            ..Self::default()
        };
        for p in &seg.pages {
            a.block_bytes = a.block_bytes.wrapping_add(p.held_bytes());
            a.page_capacity_bytes = a.page_capacity_bytes.wrapping_add(p.capacity_bytes());
            if seg.is_multi_page() {
                a.segment_pages += 1;
                a.segment_pages_used += i64::from(p.in_use);
            }
        }
        a
    }

    fn add(&mut self, o: &Self, sign: i64) {
        let f = |a: i64, b: i64| a.wrapping_add(sign.wrapping_mul(b));
        self.block_bytes = f(self.block_bytes, o.block_bytes);
        self.page_capacity_bytes = f(self.page_capacity_bytes, o.page_capacity_bytes);
        self.committed = f(self.committed, o.committed);
        self.segment_pages = f(self.segment_pages, o.segment_pages);
        self.segment_pages_used = f(self.segment_pages_used, o.segment_pages_used);
    }
}

/// A page and its segment.
#[derive(Clone, Copy, Debug)]
pub struct PageRef<'a> {
    /// The segment.
    pub segment: &'a Segment,
    /// The page.
    pub page: &'a Page,
}

/// The shadow of the allocator. `Clone` and serde (keyframes of a trace file).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Model {
    segs: Segments,
    heaps: Heaps,
    live: LiveBlocks,
    metrics: Metrics,
    totals: Totals,
    agg: Aggregates,
    census: CensusState,
    /// Latest event time seen.
    time: u64,
    /// Latest `ClockSync`: (trace time, CLOCK_MONOTONIC ns).
    clock_sync: Option<(u64, u64)>,
    /// A marker label of heap 0 being assembled.
    #[serde(skip)]
    pending_mark: Vec<u8>,
    auto_resync: bool,
    /// Events lost to a damaged trace since the last census (not in keyframes: a keyframe is a
    /// state with nothing lost).
    #[serde(skip)]
    lost_to_damage: u64,
    /// Whether debug builds check the invariants at each sample (see [`invariants`]).
    #[serde(skip, default = "checks_on")]
    invariant_checks: bool,
    /// Freed segments the allocator keeps mapped in its cache, `(base, bytes)`, until it reuses
    /// or unmaps them (an `OsPurge` of the segment).
    cached: Vec<(u64, u64)>,
    /// The interior addresses of aligned blocks on page tables (not in keyframes).
    #[serde(skip)]
    interior: live::InteriorPointers,
    /// Stacks, modules and allocation sites. The last field: a keyframe of version 0 (before
    /// sites) is read by appending an empty one (see [`Model::from_keyframe`]).
    sites: Sites,
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

fn checks_on() -> bool {
    true
}

fn text_bytes(ev: &Event) -> ([u8; 16], usize) {
    let t = ev.text();
    let n = t.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    (t, n)
}

impl Model {
    /// An empty model. It resynchronises itself from a census that follows lost events.
    pub fn new() -> Self {
        Self {
            segs: Segments::default(),
            heaps: Heaps::default(),
            live: LiveBlocks::default(),
            metrics: Metrics::default(),
            totals: Totals::default(),
            agg: Aggregates::default(),
            census: CensusState::default(),
            time: 0,
            clock_sync: None,
            pending_mark: Vec::new(),
            auto_resync: true,
            lost_to_damage: 0,
            invariant_checks: true,
            cached: Vec::new(),
            interior: live::InteriorPointers::new(),
            sites: Sites::default(),
        }
    }

    /// Whether a census that arrives after lost events (`Dropped`) and disagrees with the model
    /// resets the model's pages to it (on by default).
    pub fn set_auto_resync(&mut self, on: bool) {
        self.auto_resync = on;
    }

    /// Tells the model that `n` events were lost between the last event applied and the next
    /// (a damaged chunk of a trace): like a `Dropped` event, the next census that disagrees
    /// resynchronises the pages. Unlike drops, the count is not in [`Totals::dropped`].
    pub fn events_lost(&mut self, n: u64) {
        self.lost_to_damage = self.lost_to_damage.saturating_add(n.max(1));
        // When the lost events happened is not known: the pages laid out after the damage
        // stay unsure too, until the next whole census.
        self.note_loss(u64::MAX);
    }

    /// Whether debug builds check the invariants that hold in any event order at each sample
    /// (on by default; release builds never do). A stream known to lack events (`Dropped`,
    /// damage, events of unknown kinds) is not checked; one that lacks events silently (a test
    /// that drops them on purpose, hand-made garbage) must turn the check off.
    pub fn set_invariant_checks(&mut self, on: bool) {
        self.invariant_checks = on;
    }

    /// Applies the events of one batch of heap `heap`.
    pub fn apply_batch(&mut self, heap: u32, events: &[Event]) {
        for (i, ev) in events.iter().enumerate() {
            // The batch has usually left the cache since it arrived (a recording's keyframe
            // model takes it after the encoder): load it ahead.
            if let Some(ahead) = events.get(i + EVENTS_AHEAD) {
                crate::trace::addr_map::AddrMap::prefetch_item(ahead);
            }
            self.apply(heap, ev);
        }
    }

    /// Applies one event from the buffer of heap `heap` (0: process-level events).
    #[inline]
    pub fn apply(&mut self, heap: u32, ev: &Event) {
        self.totals.events += 1;
        if ev.time > self.time {
            self.advance(ev.time);
        }
        self.heaps.set_current(heap, ev.time);
        match ev.kind {
            ALLOC => {
                self.on_alloc(heap, ev);
                if schema::Alloc::from_event(ev).stack != 0 {
                    self.sites.on_alloc(heap, ev);
                } else if self.sites.is_on() {
                    self.sites.on_unstacked_alloc(heap);
                }
            }
            FREE => {
                self.on_free(heap, ev);
                if self.sites.is_on() && self.sites.wants_free(ev) {
                    self.sites.on_free(heap, ev);
                }
            }
            _ => self.apply_other(heap, ev),
        }
    }

    #[inline(never)]
    fn apply_other(&mut self, heap: u32, ev: &Event) {
        let segment_event = matches!(
            ev.kind,
            SEGMENT_ALLOC | SEGMENT_FREE | SEGMENT_ABANDON | SEGMENT_RECLAIM
        );
        if segment_event && ev.addr & SEGMENT_MASK as u64 != 0 {
            // Not a segment base: the event is damaged.
            self.totals.unknown_events += 1;
            return;
        }
        if matches!(ev.kind, PAGE_INIT..=SEGMENT_RECLAIM | OS_COMMIT | OS_PURGE) && self.stale(ev) {
            return;
        }
        match ev.kind {
            RESIZE => {
                let r = schema::Resize::from_event(ev);
                self.totals.resizes += 1;
                self.resize_block(r.ptr, r.size);
                self.sites.on_resize(r.ptr, r.size);
            }
            REALLOC => {
                let r = schema::Realloc::from_event(ev);
                self.totals.reallocs += 1;
                if r.size != u32::MAX {
                    self.resize_block(r.ptr, u64::from(r.size));
                }
            }
            PAGE_INIT => self.on_page_init(heap, ev),
            PAGE_EXTEND => self.with_page(heap, ev, |p, ev| {
                let capacity = schema::PageExtend::from_event(ev).capacity;
                p.capacity = capacity;
                if p.div_magic != 0 {
                    p.live.ensure((capacity as usize).min(p.table_limit()));
                }
            }),
            PAGE_COLLECT => self.with_page(heap, ev, |p, ev| {
                let c = schema::PageCollect::from_event(ev);
                let n = i64::from(c.from_thread_free);
                let m = i64::from(c.to_free.min(u64::from(u32::MAX)) as u32);
                p.thread_free = p.thread_free.wrapping_sub(n);
                p.used = p.used.wrapping_sub(n);
                p.local_free = p.local_free.wrapping_add(n - m);
                // thread_free joins local_free, then local_free joins free.
                let (thread, local, free) = (
                    BlockState::ThreadFree as u8,
                    BlockState::LocalFree as u8,
                    BlockState::Free as u8,
                );
                match (n > 0, m > 0) {
                    (true, true) => p.live.move_lists((thread, free), (local, free)),
                    (true, false) => p.live.move_lists((thread, local), (0, 0)),
                    (false, true) => p.live.move_lists((local, free), (0, 0)),
                    (false, false) => {}
                }
            }),
            PAGE_FULL => self.with_page(heap, ev, |p, _| p.in_full = true),
            PAGE_UNFULL => self.with_page(heap, ev, |p, _| p.in_full = false),
            PAGE_RETIRE => self.with_page(heap, ev, |_, _| {}),
            PAGE_FREE => self.on_page_free(heap, ev),
            PAGE_RECLAIM => self.on_page_reclaim(heap, ev),
            SEGMENT_ALLOC => self.on_segment_alloc(heap, ev),
            SEGMENT_FREE => {
                let f = schema::SegmentFree::from_event(ev);
                if f.flags & flags::CACHED != 0 && self.cached.len() < 1024 {
                    self.cached.push((f.base, f.bytes));
                }
                if let Some(si) = self.segs.find(f.base) {
                    let seg = self.remove_segment(si);
                    self.segs.bury(seg);
                }
            }
            SEGMENT_ABANDON => {
                if let Some(si) = self.segs.find(schema::SegmentAbandon::from_event(ev).base)
                    && ev.time >= self.segs.get(si).reclaimed_at
                {
                    let seg = self.segs.get_mut(si);
                    seg.owner = 0;
                    seg.abandoned = true;
                    for p in seg.pages.iter_mut().filter(|p| p.in_use) {
                        p.owner = 0;
                        p.in_full = false;
                    }
                }
            }
            SEGMENT_RECLAIM => {
                let r = schema::SegmentReclaim::from_event(ev);
                let owner = if r.owner != 0 { r.owner } else { heap };
                let unknown = self.segs.find_ref(r.base).is_none();
                self.note_taken_over(owner, unknown, false);
                if let Some(si) = self.segs.find(r.base) {
                    let seg = self.segs.get_mut(si);
                    seg.owner = if r.owner != 0 { r.owner } else { heap };
                    seg.abandoned = false;
                    seg.reclaimed_at = ev.time;
                }
            }
            THREAD_START => {
                let s = schema::ThreadStart::from_event(ev);
                self.heaps.start(s.heap, ev.time, s.os_tid);
            }
            THREAD_EXIT => {
                self.heaps
                    .exit(schema::ThreadExit::from_event(ev).heap, ev.time);
            }
            THREAD_NAME => {
                let (t, n) = text_bytes(ev);
                let name = schema::ThreadName::from_event(ev);
                self.heaps
                    .name_part(name.heap, &t[..n], name.flags & flags::MORE == 0, ev.time);
            }
            OS_PURGE | OS_COMMIT => self.on_os(ev),
            MARK => self.on_mark(heap, ev),
            DROPPED => {
                let d = schema::Dropped::from_event(ev);
                self.totals.dropped = self.totals.dropped.saturating_add(d.lost);
                self.totals.drop_reasons |= d.reasons;
                // The note comes after the events it stands for (its time is the latest).
                self.note_loss(ev.time);
            }
            CLOCK_SYNC => {
                self.clock_sync = Some((ev.time, schema::ClockSync::from_event(ev).monotonic_ns));
            }
            CENSUS_BEGIN | CENSUS_PAGE | CENSUS_PAGE2 | CENSUS_SEGMENT | CENSUS_END => {
                self.on_census_event(heap, ev);
            }
            STACK_FRAME..=MODULE_GONE => self.sites.on_event(ev),
            _ => self.totals.unknown_events += 1,
        }
    }

    /// Takes a last sample at the current time (call at the end of a trace).
    pub fn finish(&mut self) {
        let s = self.current();
        self.metrics.push(s, self.time);
    }

    /// Whether applying an event of time `t` takes a sample first (of the state before it):
    /// the points [`Model::check_invariants`] is meant for.
    pub fn sample_due(&self, t: u64) -> bool {
        t > self.time && t >= self.metrics.next_due
    }

    fn advance(&mut self, t: u64) {
        if t >= self.metrics.next_due {
            #[cfg(debug_assertions)]
            self.debug_check_invariants(invariants::Point::AnySample);
            let s = self.current();
            self.metrics.push(s, t);
            let interval = self.metrics.interval();
            if t > self.time.saturating_add(2 * interval) && self.time > 0 {
                // A quiet stretch (no event for more than two intervals): the state as it was,
                // one interval into the stretch and one before its end, so the rates read zero
                // across it rather than along a line from the last busy sample to the next (and
                // the next is measured over an interval at least: the clock is coarse, and the
                // burst that ends the stretch may share one time).
                for at in [self.time + interval, t - interval] {
                    self.metrics.push(Sample { time: at, ..s }, t);
                }
            }
        }
        self.time = t;
    }

    // ---------------------------------------------------------------------------------------
    // Blocks

    /// The overflow key of `addr` on page `p`: its block start on pages with aligned blocks.
    #[inline]
    fn overflow_key(p: &Page, addr: u64) -> u64 {
        if p.has_aligned {
            p.block_start(addr)
        } else {
            addr
        }
    }

    /// Where a block of page `p` that its live table cannot hold is counted: huge pages have no
    /// table; on other pages it is an early free (the page is not set up for it yet), found by
    /// its allocation through the pending map.
    #[inline]
    fn side_for(p: &Page) -> Side {
        if p.kind == PageKind::Huge as u8 {
            Side::Untabled
        } else {
            Side::Pending
        }
    }

    /// Sets the requested size of the live block at `addr` (realloc in place).
    fn resize_block(&mut self, addr: u64, size: u64) {
        if let Some((si, pi)) = self.segs.locate(addr) {
            let p = &mut self.segs.get_mut(si).pages[pi];
            if let Some(i) = p.table_index(addr)
                && p.live.resize(i, &mut self.live, size)
            {
                return;
            }
            let key = Self::overflow_key(p, addr);
            if self.live.resize(key, size) {
                return;
            }
        }
        self.live.resize(addr, size);
    }

    #[inline(always)]
    fn on_alloc(&mut self, heap: u32, ev: &Event) {
        self.totals.allocs += 1;
        self.heaps.count_alloc();
        let a = schema::Alloc::from_event(ev);
        let Some((si, pi)) = self.segs.locate(a.ptr) else {
            // Its segment is unknown (events were lost): keep the block, at least.
            self.live.alloc(Side::Pending, a.ptr, a.size, 0);
            return;
        };
        let seg = self.segs.get_mut(si);
        if seg.announced_after(ev.time) {
            // An allocation in the segment that was at this address before (`stale`).
            let replaced = seg.replaced;
            self.live.alloc(Side::Pending, a.ptr, a.size, replaced);
            return;
        }
        let generation = seg.generation;
        let p = &mut seg.pages[pi];
        p.used += 1;
        p.last = LastEvent {
            kind: ALLOC,
            heap,
            time: ev.time,
        };
        if a.flags & flags::ALIGNED != 0 {
            p.has_aligned = true;
        }
        self.agg.block_bytes = self.agg.block_bytes.wrapping_add(p.block_size as i64);
        if self.live.has_pending() {
            // An early free (reported before this allocation, by another thread) waits under
            // the key its page gave it then: the block's start once the page has aligned
            // blocks, else the address itself. This allocation may be the page's first aligned
            // one (an interior address), so both are looked at, as a free looks at both. The
            // address itself first: a free waiting there is of an allocation handed out at it,
            // while one under the block's start may be of the block allocated at its start
            // (recorded from the stress workload: both frees came before the segment was
            // mapped, the aligned allocation took the start's, and its own stayed unmatched).
            let key = Self::overflow_key(p, a.ptr);
            if (key != a.ptr && self.live.cancel_early_free(a.ptr, a.size))
                || self.live.cancel_early_free(key, a.size)
            {
                return;
            }
        }
        let counted = match p.table_index(a.ptr) {
            Some(i) => {
                let ok = p.live.alloc(i, p.table_limit(), &mut self.live, a.size);
                let start = p.block_addr(i as u64);
                if ok && start != a.ptr {
                    self.interior.insert(start, a.ptr);
                }
                ok
            }
            None => false,
        };
        if !counted {
            let key = Self::overflow_key(p, a.ptr);
            self.live.alloc(Self::side_for(p), key, a.size, generation);
        }
    }

    #[inline(always)]
    fn on_free(&mut self, heap: u32, ev: &Event) {
        let Free { ptr, flags: f } = Free::from_event(ev);
        let last = LastEvent {
            kind: FREE,
            heap,
            time: ev.time,
        };
        let mut located = self.segs.locate(ptr);
        let mut earlier = 0;
        if let Some((si, _)) = located
            && self.segs.get(si).announced_after(ev.time)
        {
            // A free in the segment that was at this address before (`stale`).
            earlier = self.segs.get(si).replaced;
            located = None;
        }
        if f & flags::FROM_DELAYED != 0 {
            // The owner frees a block of its delayed list: the program's free was the TO_DELAYED
            // one, so the live blocks do not change.
            if let Some((si, pi)) = located {
                let p = &mut self.segs.get_mut(si).pages[pi];
                if p.delayed_unknown && p.delayed <= 0 {
                    // A block that waited on the delayed list when a census set the page
                    // (counted in `used`, not in `delayed`): it stops being held now.
                    self.agg.block_bytes = self.agg.block_bytes.wrapping_sub(p.block_size as i64);
                } else {
                    p.delayed -= 1;
                }
                p.used -= 1;
                p.local_free += 1;
                if let Some(i) = p.table_index(ptr) {
                    p.live.set_list(i, BlockState::LocalFree as u8);
                }
                p.last = last;
            } else {
                self.free_on_ghost(ev, earlier);
            }
            return;
        }
        self.totals.frees += 1;
        if f & (flags::CROSS_THREAD | flags::TO_DELAYED) != 0 {
            self.totals.cross_thread_frees += 1;
        }
        if let Some(h) = self.heaps.current_mut() {
            h.frees += 1;
            if f & (flags::CROSS_THREAD | flags::TO_DELAYED) != 0 {
                h.cross_frees += 1;
            }
        }
        if let Some((si, pi)) = located
            && f & (flags::CROSS_THREAD | flags::TO_DELAYED) != 0
            && self.counted_by_census(self.segs.get(si).pages[pi].start, f)
        {
            // Counted already: the page's counts were set from a census taken after it.
            return;
        }
        let Some((si, pi)) = located else {
            // Its segment is gone (a late free) or not announced yet (an early one).
            let generation = self
                .live
                .free_older(Side::Untabled, ptr)
                .or_else(|| self.live.free(Side::Pending, ptr))
                .unwrap_or(earlier);
            self.free_on_ghost(ev, generation);
            return;
        };
        let seg = self.segs.get_mut(si);
        let generation = seg.generation;
        let p = &mut seg.pages[pi];
        // Which allocation does this free? A cross-thread free may be reported late: then it
        // frees an older allocation left in the pending map (its page was set up anew, or its
        // segment freed, before the free arrived). A local free is reported before the owner
        // can reuse the block, so it frees the page table's.
        let cross = f & (flags::CROSS_THREAD | flags::TO_DELAYED) != 0;
        let mut freed = None;
        let mut counted = false;
        if cross && self.live.has_pending() {
            let key = Self::overflow_key(p, ptr);
            freed = self.live.free_older(Side::Pending, key);
            if freed.is_none() && key != ptr {
                freed = self.live.free_older(Side::Pending, ptr);
            }
            counted = freed.is_some();
        }
        // Another thread's free of an interior (aligned) address where no block is live: an
        // early free, reported before the allocation it frees reached the model. That
        // allocation may come after the page is set up anew for another block size, so the
        // free waits under the address itself, where the allocation looks, not under a block
        // start of this layout. (Recorded from the stress workload: a free of 0x...124000 counted
        // in this layout's block at 0x...123000 stayed there when the page was set up for 16 KiB
        // blocks, and the allocation at 0x...124000 missed it: requested bytes exceeded block
        // bytes at the end.)
        //
        // The same for a live block there that was not handed out at this interior address
        // (it was allocated at its start, say): the free is of the page's next layout.
        let mut early_interior = false;
        let mut slot = None;
        if !counted {
            // Another thread's late free of an aligned block's interior address, after its
            // page was freed (its owner collected the free before the event was reported): the
            // block is still in the table of the page's last layout, under its start, though
            // `PageFree` cleared the page's aligned mark. (Recorded from the stress workload, 2
            // recordings in 25: the free waited under its address for ever, and the block stayed
            // live beside it.)
            let interior = &mut self.interior;
            let late_aligned = if cross && !p.in_use {
                p.block_index(ptr).filter(|&i| {
                    p.live.get(i).0 >= 1 && interior.holds(p.block_addr(i as u64), ptr)
                })
            } else {
                None
            };
            counted = match late_aligned.or_else(|| p.table_index(ptr)) {
                Some(i)
                    if cross && {
                        let start = p.block_addr(i as u64);
                        start != ptr && (p.live.get(i).0 == 0 || !interior.may_free(start, ptr))
                    } =>
                {
                    early_interior = true;
                    false
                }
                Some(i) => {
                    let ok = p.live.free(i, p.table_limit(), &mut self.live);
                    slot = ok.then_some(i);
                    if ok && p.live.get(i).0 <= 0 {
                        // No allocation of the block is left: its addresses are forgotten.
                        interior.remove(p.block_addr(i as u64), ptr);
                    }
                    ok
                }
                None => false,
            };
        }
        if !counted {
            let key = if early_interior {
                ptr
            } else {
                Self::overflow_key(p, ptr)
            };
            freed = self.live.free(Self::side_for(p), key);
        }
        if let Some(g) = freed
            && g != generation
            && g != 0
        {
            // Allocated in an earlier segment at this address, freed late. (Generation 0: the
            // allocation came while no segment at this address was known, before the census
            // that made this one known (a recording started while the program ran) or before
            // its `SegmentAlloc`: it is this segment's. Sent to a ghost, such frees left the
            // page's `thread_free` short, and the ghost's came back on the next segment mapped
            // at the address: the last census of 6 attached recordings in 75 disagreed.)
            self.free_on_ghost(ev, g);
            return;
        }
        let list = if f & flags::TO_DELAYED != 0 {
            p.delayed += 1;
            BlockState::Delayed
        } else if f & flags::CROSS_THREAD != 0 {
            p.thread_free += 1;
            BlockState::ThreadFree
        } else {
            p.used -= 1;
            p.local_free += 1;
            BlockState::LocalFree
        };
        if let Some(i) = slot {
            p.live.set_list(i, list as u8);
        }
        p.last = last;
        self.agg.block_bytes = self.agg.block_bytes.wrapping_sub(p.block_size as i64);
    }

    /// A free whose segment is gone (generation `g`) or not announced yet (`g == 0`).
    #[cold]
    fn free_on_ghost(&mut self, ev: &Event, generation: u32) {
        let ptr = Free::from_event(ev).ptr;
        let g = self.segs.ghost(segment_base(ptr), generation, ev.time);
        let i = g.page_index(ptr);
        let p = &mut g.pages[i];
        if ev.flags & flags::TO_DELAYED != 0 {
            p.delayed += 1;
        } else if ev.flags & flags::FROM_DELAYED != 0 {
            p.delayed -= 1;
        } else if ev.flags & flags::CROSS_THREAD != 0 {
            p.thread_free += 1;
        }
        if g.settled() {
            self.segs.prune_ghosts();
        }
    }

    // ---------------------------------------------------------------------------------------
    // Pages

    /// Applies `f` to the page at `ev.addr` (ignored if its segment is unknown).
    fn with_page(&mut self, heap: u32, ev: &Event, f: impl FnOnce(&mut Page, &Event)) {
        if let Some((si, pi)) = self.segs.locate(ev.addr) {
            let p = &mut self.segs.get_mut(si).pages[pi];
            f(p, ev);
            p.last = LastEvent {
                kind: ev.kind,
                heap,
                time: ev.time,
            };
        }
    }

    /// Applies `f` to page `pi` of segment `si`, keeping the sums right.
    fn bulk(&mut self, si: usize, pi: usize, f: impl FnOnce(&mut Page)) {
        let seg = self.segs.get_mut(si);
        let multi = seg.is_multi_page();
        let p = &mut seg.pages[pi];
        let (held, cap, used) = (p.held_bytes(), p.capacity_bytes(), p.in_use);
        f(p);
        self.agg.block_bytes =
            (self.agg.block_bytes).wrapping_add(p.held_bytes().wrapping_sub(held));
        self.agg.page_capacity_bytes =
            (self.agg.page_capacity_bytes).wrapping_add(p.capacity_bytes().wrapping_sub(cap));
        if multi {
            self.agg.segment_pages_used += i64::from(p.in_use) - i64::from(used);
        }
    }

    fn on_page_init(&mut self, heap: u32, ev: &Event) {
        self.totals.pages_initialised += 1;
        let init = schema::PageInit::from_event(ev);
        let kind = page_kind(init.flags) as u8;
        let mut located = self.segs.locate(init.start);
        if let Some((si, _)) = located
            && self.segs.get(si).kind != kind
        {
            // The segment at this address is another kind now: the one the model has is stale
            // (its free and the new one's allocation were lost, or the new one's came from a
            // thread the trace does not follow). It goes; this page's segment is inferred.
            self.forget_segment(si);
            self.note_taken_over(heap, true, false);
            located = None;
        }
        let (si, pi) = match located {
            Some(x) => x,
            None => self.infer_segment(init.start, kind, ev.time),
        };
        self.spill_page(si, pi);
        self.page_relaid(self.segs.get(si).pages[pi].start);
        self.page_relaid(init.start);
        self.bulk(si, pi, |p| {
            p.clear_owner_state();
            p.delayed_unknown = false;
            p.awaiting_purge = false;
            p.live.clear_lists();
            p.set_layout(init.block_size, kind);
            p.in_use = true;
            p.owner = heap;
            p.start = init.start;
            p.block_size = init.block_size;
            p.reserved = init.reserved;
            p.bin = init.bin;
            p.kind = kind;
            p.last = LastEvent {
                kind: ev.kind,
                heap,
                time: ev.time,
            };
        });
        if self.may_have_lost_since(heap, ev.time) {
            self.segs.get_mut(si).pages[pi].unsure = true;
        }
    }

    fn on_page_free(&mut self, heap: u32, ev: &Event) {
        if let Some((si, pi)) = self.segs.locate(ev.addr) {
            self.page_relaid(self.segs.get(si).pages[pi].start);
            self.bulk(si, pi, |p| {
                p.awaiting_purge = p.capacity > 0;
                p.clear_owner_state();
                p.last = LastEvent {
                    kind: ev.kind,
                    heap,
                    time: ev.time,
                };
            });
        }
    }

    fn on_page_reclaim(&mut self, heap: u32, ev: &Event) {
        let r = schema::PageReclaim::from_event(ev);
        let owner = if r.owner != 0 { r.owner } else { heap };
        let (unknown, unsure) = self
            .page_at(r.start)
            .map_or((true, false), |p| (!p.page.in_use, p.page.unsure));
        self.note_taken_over(owner, unknown, unsure);
        let late = self.may_have_lost_since(owner, ev.time);
        if let Some((si, pi)) = self.segs.locate(r.start) {
            let seg = self.segs.get_mut(si);
            seg.pages[pi].unsure |= late;
            seg.owner = owner;
            seg.abandoned = false;
            let p = &mut seg.pages[pi];
            p.owner = owner;
            p.in_full = false;
            p.last = LastEvent {
                kind: ev.kind,
                heap,
                time: ev.time,
            };
        }
    }

    // ---------------------------------------------------------------------------------------
    // Segments

    fn on_segment_alloc(&mut self, heap: u32, ev: &Event) {
        self.totals.segments_allocated += 1;
        let a = schema::SegmentAlloc::from_event(ev);
        self.cached.retain(|(b, _)| *b != a.base);
        let mut replaced = 0;
        if let Some(si) = self.segs.find(a.base) {
            // Its free was lost, or comes later (in the stream of the thread that freed it).
            let old = self.remove_segment(si);
            replaced = old.generation;
            self.segs.bury(old);
        }
        let generation = self.segs.new_generation();
        let kind = page_kind(a.flags) as u8;
        let mut seg = Segment::new(a.base, a.bytes, kind, a.pages, generation, ev.time);
        seg.owner = heap;
        seg.replaced = replaced;
        self.add_segment(seg);
    }

    /// Whether `ev` (a page, segment or OS event) is the earlier segment's at its address: older
    /// than the live segment there, which another thread mapped after the earlier one was freed,
    /// its events arriving first (see the module docs of `segment`). Such an event does not
    /// touch the live segment; a `PageCollect` still settles the earlier segment's ghost. An
    /// `OsPurge` at a live segment's very base is never its own (its pages start past the
    /// header): it is an earlier, cached segment's memory leaving the process.
    fn stale(&mut self, ev: &Event) -> bool {
        let Some(si) = self.segs.find(segment_named(ev.addr)) else {
            return false;
        };
        let seg = self.segs.get(si);
        if ev.kind == OS_PURGE && ev.addr == seg.base {
            return true;
        }
        if !seg.announced_after(ev.time) {
            return false;
        }
        let (base, earlier) = (seg.base, seg.replaced);
        match ev.kind {
            SEGMENT_ALLOC => self.totals.segments_allocated += 1,
            PAGE_COLLECT => {
                let n = i64::from(schema::PageCollect::from_event(ev).from_thread_free);
                if let Some(g) = self.segs.ghost_of(base, earlier) {
                    let i = g.page_index(ev.addr);
                    g.pages[i].thread_free -= n;
                    if g.settled() {
                        self.segs.prune_ghosts();
                    }
                }
            }
            _ => {}
        }
        true
    }

    /// Makes a live segment for a page event whose segment was never announced.
    fn infer_segment(&mut self, addr: u64, kind: u8, time: u64) -> (usize, usize) {
        let base = segment_base(addr);
        let generation = self.segs.new_generation();
        let mut seg = Segment::new(base, SEGMENT_SIZE as u64, kind, 0, generation, time);
        seg.inferred = true;
        let si = self.add_segment(seg);
        (si, self.segs.get(si).page_index(addr))
    }

    /// Adds a live segment, folding in an early ghost at its address.
    fn add_segment(&mut self, mut seg: Segment) -> usize {
        if let Some(ghost) = self.segs.take_early_ghost(seg.base) {
            for (i, gp) in ghost.pages.iter().enumerate() {
                if gp.settled() {
                    continue;
                }
                let at = ghost.base.wrapping_add((i as u64) << ghost.page_shift);
                let j = seg.page_index(at);
                seg.pages[j].thread_free += gp.thread_free;
                seg.pages[j].delayed += gp.delayed;
            }
        }
        self.agg.add(&Aggregates::of_segment(&seg), 1);
        self.note_committed();
        self.segs.insert(seg)
    }

    /// Removes live segment `si`; its pages' unsettled live blocks go to the overflow.
    fn remove_segment(&mut self, si: usize) -> Segment {
        self.agg.add(&Aggregates::of_segment(self.segs.get(si)), -1);
        for pi in 0..self.segs.get(si).pages.len() {
            self.spill_page(si, pi);
        }
        self.segs.remove(si)
    }

    /// Moves the unsettled entries of a page's live table to the overflow (before the page is
    /// laid out anew or its segment goes).
    fn spill_page(&mut self, si: usize, pi: usize) {
        let seg = self.segs.get_mut(si);
        let generation = seg.generation;
        let p = &mut seg.pages[pi];
        let (start, end) = (p.start, p.block_addr(u64::from(p.reserved)));
        if p.live.is_settled() {
            p.live.take_unsettled();
            self.interior.forget_range(start, end);
            return;
        }
        for (i, count, size) in p.live.take_unsettled() {
            let block = p.block_addr(i as u64);
            // An aligned block waits under the address it was handed out at, where its late
            // free looks once the page has another layout.
            let key = match self.interior.only(block) {
                Some(ptr) if count == 1 => ptr,
                _ => block,
            };
            self.live.spill(key, count, size, generation);
        }
        self.interior.forget_range(start, end);
    }

    fn note_committed(&mut self) {
        let c = self.agg.committed.max(0) as u64;
        if c > self.totals.peak_committed {
            self.totals.peak_committed = c;
        }
    }

    fn on_os(&mut self, ev: &Event) {
        // `OsCommit` and `OsPurge` have the same slots.
        let os = schema::OsPurge::from_event(ev);
        let Some(si) = self.segs.find(segment_named(os.addr)) else {
            if ev.kind == OS_PURGE {
                self.cached.retain(|(b, _)| *b != os.addr); // a cached segment unmapped
            }
            return;
        };
        let seg = self.segs.get_mut(si);
        if ev.kind == OS_PURGE {
            let (from, to) = (os.addr, os.addr.saturating_add(os.bytes));
            let page_bytes = 1u64 << seg.page_shift;
            for p in &mut seg.pages {
                let base = seg
                    .base
                    .saturating_add(u64::from(p.index) << seg.page_shift);
                if base < to && base.saturating_add(page_bytes) > from {
                    p.awaiting_purge = false;
                }
            }
        }
        let before = seg.purged;
        seg.purged = if ev.kind == OS_PURGE {
            seg.purged.saturating_add(os.bytes).min(seg.bytes)
        } else {
            seg.purged.saturating_sub(os.bytes)
        };
        self.agg.committed =
            (self.agg.committed).wrapping_sub((seg.purged as i64).wrapping_sub(before as i64));
        self.note_committed();
    }

    fn on_mark(&mut self, heap: u32, ev: &Event) {
        let (t, n) = text_bytes(ev);
        let buf = match self.heaps.current_mut() {
            Some(h) => &mut h.pending_mark,
            None => &mut self.pending_mark,
        };
        if buf.len() < 4096 {
            buf.extend_from_slice(&t[..n]);
        }
        if ev.flags & flags::MORE == 0 {
            let label = String::from_utf8_lossy(buf).into_owned();
            buf.clear();
            self.metrics.push_marker(Marker {
                time: ev.time,
                heap,
                label,
                event: self.totals.events,
            });
        }
    }

    /// Recomputes the sums from the pages (after a resync).
    fn recompute_aggregates(&mut self) {
        let mut a = Aggregates::default();
        for seg in self.segs.iter() {
            a.add(&Aggregates::of_segment(seg), 1);
        }
        self.agg = a;
        self.note_committed();
    }

    // ---------------------------------------------------------------------------------------
    // Queries

    /// Freed segments still mapped in the allocator's cache: `(base, bytes)`.
    pub fn cached_segments(&self) -> &[(u64, u64)] {
        &self.cached
    }

    /// The live segments.
    pub fn segments(&self) -> &Segments {
        &self.segs
    }

    /// The live segments by address.
    pub fn segments_by_address(&self) -> Vec<&Segment> {
        let mut v: Vec<&Segment> = self.segs.iter().collect();
        v.sort_unstable_by_key(|s| s.base);
        v
    }

    /// The live segment at `base`.
    pub fn segment(&self, base: u64) -> Option<&Segment> {
        self.segs.find_ref(base).map(|i| self.segs.get(i))
    }

    /// The page holding `addr` (a block or page start), in a live segment.
    pub fn page_at(&self, addr: u64) -> Option<PageRef<'_>> {
        let seg = self.segment(segment_base(addr))?;
        Some(PageRef {
            segment: seg,
            page: seg.page_at(addr),
        })
    }

    /// The time series and markers.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Running totals.
    pub fn totals(&self) -> Totals {
        Totals {
            threads_seen: self.heaps.threads_seen(),
            ..self.totals
        }
    }

    /// Latest event time seen (ns since trace start).
    pub fn time(&self) -> u64 {
        self.time
    }

    /// Stacks, modules and allocation sites.
    pub fn sites(&self) -> &Sites {
        &self.sites
    }

    /// The model serialised as a keyframe: [`KEYFRAME_MAGIC`], the version
    /// ([`KEYFRAME_VERSION`], u16 little-endian), then the model in postcard.
    pub fn to_keyframe(&self) -> Result<Vec<u8>, String> {
        let mut out = KEYFRAME_MAGIC.to_vec();
        out.extend_from_slice(&KEYFRAME_VERSION.to_le_bytes());
        let bad = |e: postcard::Error| format!("cannot serialise a keyframe: {e}");
        let out = postcard::to_extend(self, out).map_err(bad)?;
        let reclaimed = self.segment_field(|seg| seg.reclaimed_at);
        let replaced = self.segment_field(|seg| seg.replaced);
        postcard::to_extend(&(self.census_detail(), reclaimed, replaced), out).map_err(bad)
    }

    /// `(base, value)` of each live segment whose `value` is not zero: the segments' fields that
    /// a keyframe carries after the model (they are not serialised with it).
    fn segment_field<T: Copy + Default + PartialEq>(
        &self,
        value: impl Fn(&Segment) -> T,
    ) -> Vec<(u64, T)> {
        self.segs
            .iter()
            .map(|seg| (seg.base, value(seg)))
            .filter(|(_, v)| *v != T::default())
            .collect()
    }

    /// Sets a field of each listed live segment (from [`Model::segment_field`]).
    fn set_segment_field<T>(&mut self, list: Vec<(u64, T)>, set: impl Fn(&mut Segment, T)) {
        for (base, v) in list {
            if let Some(si) = self.segs.find(base) {
                set(self.segs.get_mut(si), v);
            }
        }
    }

    /// A model from a keyframe of any version up to [`KEYFRAME_VERSION`]. Version 0 (no
    /// header: the model in postcard, before allocation sites) reads with no sites.
    pub fn from_keyframe(bytes: &[u8]) -> Result<Self, String> {
        let mut model = Self::from_keyframe_as_written(bytes)?;
        // Keyframes written before threads were told from heaps seen only freeing counted
        // those among the threads alive.
        model.heaps.recount_alive();
        Ok(model)
    }

    fn from_keyframe_as_written(bytes: &[u8]) -> Result<Self, String> {
        let bad = |e: postcard::Error| format!("keyframe does not decode: {e}");
        match bytes.strip_prefix(&KEYFRAME_MAGIC[..]) {
            Some(rest) if rest.len() >= 2 => {
                let version = u16::from_le_bytes([rest[0], rest[1]]);
                if version > KEYFRAME_VERSION {
                    return Err(format!(
                        "keyframe version {version} is newer than this heaplens (reads up to {KEYFRAME_VERSION})"
                    ));
                }
                if version < 2 {
                    return postcard::from_bytes(&rest[2..]).map_err(bad);
                }
                let (mut model, tail) =
                    postcard::take_from_bytes::<Self>(&rest[2..]).map_err(bad)?;
                let ((detail, reclaimed), tail): ((_, Vec<(u64, u64)>), _) =
                    postcard::take_from_bytes(tail).map_err(bad)?;
                let replaced: Vec<(u64, u32)> = if version >= 3 {
                    postcard::from_bytes(tail).map_err(bad)?
                } else {
                    Vec::new()
                };
                model.set_census_detail(detail);
                model.set_segment_field(reclaimed, |seg, at| seg.reclaimed_at = at);
                model.set_segment_field(replaced, |seg, g| seg.replaced = g);
                Ok(model)
            }
            _ => {
                // Version 0: the fields before `sites`, then an empty `Sites` appended.
                let empty = postcard::to_stdvec(&Sites::default()).map_err(bad)?;
                let mut v = Vec::with_capacity(bytes.len() + empty.len());
                v.extend_from_slice(bytes);
                v.extend_from_slice(&empty);
                postcard::from_bytes(&v).map_err(bad)
            }
        }
    }

    /// Latest `ClockSync`: (trace time, CLOCK_MONOTONIC ns).
    pub fn clock_sync(&self) -> Option<(u64, u64)> {
        self.clock_sync
    }

    /// The metrics now.
    pub fn current(&self) -> Sample {
        let lists = self.page_totals(None);
        Sample {
            free_blocks: lists.free.max(0) as u64,
            local_free_blocks: lists.local_free.max(0) as u64,
            thread_free_blocks: (lists.thread_free + lists.delayed).max(0) as u64,
            full_pages: lists.full_pages,
            time: self.time,
            requested_bytes: self.live.requested_bytes(),
            block_bytes: self.agg.block_bytes.max(0) as u64,
            page_capacity_bytes: self.agg.page_capacity_bytes.max(0) as u64,
            committed_bytes: self.agg.committed.max(0) as u64,
            segment_pages: self.agg.segment_pages.max(0) as u64,
            segment_pages_used: self.agg.segment_pages_used.max(0) as u64,
            live_blocks: self.live.len(),
            allocs: self.totals.allocs,
            frees: self.totals.frees,
            threads: self.heaps.alive(),
        }
    }
}

#[cfg(test)]
mod tests;
