//! The allocator's census, and checking the model against it.
//!
//! A census is a snapshot of every in-use page that the collector takes at a quiet point and sends
//! as heap-0 events: `CensusBegin`, a `CensusSegment` per segment, a `CensusPage`/`CensusPage2`
//! pair per page, `CensusEnd`. The model gathers it into a [`Census`], compares itself with it
//! ([`Model::compare`]: the model must agree exactly) and can reset its pages from it
//! ([`Model::resync`], after lost events).

use std::collections::HashSet;
use std::fmt;

use heaplens_alloc::event::{Event, EventKind, flags};
use heaplens_alloc::schema;
use heaplens_alloc::segment::INFO_SIZE;
use heaplens_alloc::{MEDIUM_PAGE_SHIFT, SEGMENT_SIZE, SMALL_PAGE_SHIFT};
use serde::{Deserialize, Serialize};

use super::Model;
use super::hash::FastMap;
use super::page::page_kind;
use super::segment::{Segment, segment_base};

/// One segment in a census.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CensusSegment {
    /// Base address.
    pub base: u64,
    /// Bytes mapped.
    pub bytes: u64,
    /// Pages.
    pub page_count: u32,
    /// `PageKind as u8`.
    pub kind: u8,
}

impl CensusSegment {
    /// A segment from its `CensusSegment` event.
    pub fn of_event(ev: &Event) -> Self {
        let s = schema::CensusSegment::from_event(ev);
        Self {
            base: s.base,
            bytes: s.bytes,
            page_count: s.pages,
            kind: s.flags,
        }
    }
}

/// One in-use page in a census.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CensusPage {
    /// Address of the first block.
    pub start: u64,
    /// Block size.
    pub block_size: u64,
    /// Blocks carved.
    pub capacity: u32,
    /// Size class.
    pub bin: u16,
    /// `PageKind as u8`.
    pub kind: u8,
    /// Owning heap id (0: abandoned).
    pub owner: u32,
    /// mimalloc's `used`.
    pub used: u32,
    /// Length of `local_free`.
    pub local_free: u32,
    /// Length of `thread_free`.
    pub thread_free: u32,
    /// In its heap's full queue.
    pub in_full: bool,
    /// The page's census epoch from this census on (`flags::EPOCH`): the cross-thread frees
    /// this census counted in `thread_free` were pushed under the other one. Read as the census
    /// is applied; not kept after (the model's last census, keyframes).
    #[serde(skip)]
    pub epoch: bool,
}

impl CensusPage {
    /// A page from its `CensusPage` event (block size, capacity, bin, kind).
    pub fn first_half(ev: &Event) -> Self {
        let p = schema::CensusPage::from_event(ev);
        Self {
            start: p.start,
            block_size: p.block_size,
            capacity: p.capacity,
            bin: p.bin,
            kind: p.flags,
            ..Self::default()
        }
    }

    /// The page completed by its `CensusPage2` event (owner, list counts, full flag).
    pub fn with_second_half(mut self, ev: &Event) -> Self {
        let p = schema::CensusPage2::from_event(ev);
        self.owner = u32::try_from(p.owner).unwrap_or(u32::MAX);
        self.used = p.used();
        self.local_free = p.local_free();
        self.thread_free = p.thread_free;
        self.in_full = p.flags & flags::IN_FULL != 0;
        self.epoch = p.flags & flags::EPOCH != 0;
        self
    }
}

/// A whole census.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Census {
    /// Census number (counts up from 1).
    pub number: u32,
    /// Trace time it was taken.
    pub time: u64,
    /// Taken when recording started: it describes what existed before (pages made before the
    /// hook was switched on), and the model starts from it.
    #[serde(default)]
    pub initial: bool,
    /// Every segment (including those of untraced heaps, whose pages are not listed).
    pub segments: Vec<CensusSegment>,
    /// Every in-use page of a traced heap or an abandoned segment.
    pub pages: Vec<CensusPage>,
}

impl Census {
    /// The census as the heap-0 events the collector sends.
    pub fn to_events(&self) -> Vec<Event> {
        let t = self.time;
        let mut out = Vec::with_capacity(2 + self.segments.len() + 2 * self.pages.len());
        out.push(Event {
            kind: EventKind::CensusBegin as u8,
            flags: if self.initial { flags::INITIAL } else { 0 },
            arg32: self.number,
            arg: self.pages.len() as u64,
            time: t,
            ..Event::default()
        });
        for s in &self.segments {
            out.push(Event {
                kind: EventKind::CensusSegment as u8,
                flags: s.kind,
                arg32: s.page_count,
                addr: s.base,
                arg: s.bytes,
                time: t,
                ..Event::default()
            });
        }
        for p in &self.pages {
            out.push(Event {
                kind: EventKind::CensusPage as u8,
                flags: p.kind,
                aux: p.bin,
                arg32: p.capacity,
                addr: p.start,
                arg: p.block_size,
                time: t,
            });
            out.push(Event {
                kind: EventKind::CensusPage2 as u8,
                flags: if p.in_full { flags::IN_FULL } else { 0 }
                    | if p.epoch { flags::EPOCH } else { 0 },
                aux: 0,
                arg32: p.thread_free,
                addr: u64::from(p.owner),
                arg: u64::from(p.used) | (u64::from(p.local_free) << 32),
                time: t,
            });
        }
        out.push(Event {
            kind: EventKind::CensusEnd as u8,
            arg32: self.number,
            time: t,
            ..Event::default()
        });
        out
    }
}

/// A field compared between the model and a census.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Field {
    /// Page block size.
    BlockSize,
    /// Page bin.
    Bin,
    /// Page or segment kind.
    Kind,
    /// Page capacity.
    Capacity,
    /// Page `used`.
    Used,
    /// Page `local_free` length.
    LocalFree,
    /// Page `thread_free` length.
    ThreadFree,
    /// Page owner heap.
    Owner,
    /// Page in the full queue.
    InFull,
    /// Segment bytes.
    Bytes,
    /// Segment page count.
    PageCount,
}

impl Field {
    /// The field's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::BlockSize => "block_size",
            Self::Bin => "bin",
            Self::Kind => "kind",
            Self::Capacity => "capacity",
            Self::Used => "used",
            Self::LocalFree => "local_free",
            Self::ThreadFree => "thread_free",
            Self::Owner => "owner",
            Self::InFull => "in_full",
            Self::Bytes => "bytes",
            Self::PageCount => "page_count",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A difference between the model and a census.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mismatch {
    /// A census page the model does not have in use.
    PageMissingInModel {
        /// Page start.
        start: u64,
    },
    /// A page the model has in use that the census does not list.
    PageMissingInCensus {
        /// Page start.
        start: u64,
        /// Its owner in the model.
        owner: u32,
    },
    /// A page field differs.
    PageField {
        /// Page start.
        start: u64,
        /// Field name.
        field: Field,
        /// The model's value.
        model: i64,
        /// The census's value.
        census: i64,
    },
    /// A live segment of the model that the census does not list.
    SegmentMissingInCensus {
        /// Base address.
        base: u64,
    },
    /// A census segment holding listed pages that the model does not have.
    SegmentMissingInModel {
        /// Base address.
        base: u64,
    },
    /// A segment field differs.
    SegmentField {
        /// Base address.
        base: u64,
        /// Field name.
        field: Field,
        /// The model's value.
        model: i64,
        /// The census's value.
        census: i64,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PageMissingInModel { start } => {
                write!(f, "page {start:#x}: in the census, not in use in the model")
            }
            Self::PageMissingInCensus { start, owner } => write!(
                f,
                "page {start:#x}: in use by heap {owner} in the model, not in the census"
            ),
            Self::PageField {
                start,
                field,
                model,
                census,
            } => write!(
                f,
                "page {start:#x}: {field} is {model} in the model, {census} in the census"
            ),
            Self::SegmentMissingInCensus { base } => {
                write!(f, "segment {base:#x}: live in the model, not in the census")
            }
            Self::SegmentMissingInModel { base } => {
                write!(f, "segment {base:#x}: in the census, not in the model")
            }
            Self::SegmentField {
                base,
                field,
                model,
                census,
            } => write!(
                f,
                "segment {base:#x}: {field} is {model} in the model, {census} in the census"
            ),
        }
    }
}

/// The outcome of checking the model against a census as it arrived.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CensusCheck {
    /// Census number.
    pub number: u32,
    /// Trace time of the census.
    pub time: u64,
    /// Number of mismatches.
    pub mismatches: usize,
    /// The first few of them.
    pub first: Vec<Mismatch>,
    /// Whether the model was reset from the census (mismatches after lost events).
    pub resynced: bool,
    /// Heaps whose own part of the census arrived (a census taken while the program ran:
    /// each heap reports its pages at a point of its own event order); 0 for a census the
    /// collector took whole.
    #[serde(skip)]
    pub heap_parts: u32,
    /// The initial census: the pages that existed before recording started, which the model
    /// took over (`mismatches` is then the check after taking them over).
    #[serde(skip)]
    pub adopted_pages: usize,
    /// A census taken by the heaps (`heap_parts` says how many reported).
    #[serde(skip)]
    pub by_heap: bool,
    /// Pages set from heaps' parts after lost events (`resynced` is then set).
    #[serde(skip)]
    pub resynced_pages: usize,
}

impl CensusCheck {
    /// Whether the check compared anything: a census left to the heaps compares only the parts
    /// that arrived (none when no traced thread allocated in between).
    pub fn compared(&self) -> bool {
        !self.by_heap || self.heap_parts > 0
    }
}

/// Mismatches kept in a [`CensusCheck`].
const CHECK_KEEP: usize = 16;
/// Pages reserved ahead from `CensusBegin`'s count (an untrusted length).
const RESERVE_MAX: usize = 1 << 16;

/// A census being received, and the last whole one.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct CensusState {
    building: Option<Census>,
    half: Option<CensusPage>,
    last: Option<Census>,
    check: Option<CensusCheck>,
    dropped_at_last: u64,
    /// Heaps' parts of a census being received, by heap (transient: not in keyframes, so a
    /// part cut by a seek is ignored).
    #[serde(skip)]
    parts: FastMap<u32, (Census, Option<CensusPage>, u8)>,
    /// Censuses checked, and how many of them agreed (not in keyframes: counts from the start
    /// of a replay).
    #[serde(skip)]
    tally: CensusTally,
    /// Losses seen so far (`Dropped` events, damage): each one makes every page unsure.
    #[serde(skip)]
    lost_epoch: u64,
    /// The latest time a lost event may have had (a `Dropped` note's time; `u64::MAX` when
    /// not known, for damage), until a whole census resets the model. Batches of different
    /// heaps arrive out of time order, so the lost ones can hold events later than events that
    /// came after them: a page laid out, reclaimed or set from a part at or before this time
    /// may have lost events since.
    #[serde(skip)]
    lost_until: u64,
    /// The loss each heap's pages were last set from a census after (its part, or a whole
    /// census: `all_synced`).
    #[serde(skip)]
    synced: FastMap<u32, u64>,
    #[serde(skip)]
    all_synced: u64,
    /// Heaps that took over pages the model is unsure of, or does not know, after a loss
    /// (reclaimed from a thread whose events were lost): set from their next part again.
    #[serde(skip)]
    dirty: HashSet<u32>,
    /// Pages whose counts were last set from a census reading, with the census epoch of the
    /// cross-thread frees that reading already counted (see [`Model::counted_by_census`]);
    /// until the page's next census or its next layout.
    #[serde(skip)]
    counted_epoch: FastMap<u64, bool>,
}

/// What a keyframe (version 2 on) keeps of the last census check beyond [`CensusCheck`]'s own
/// serialised fields, which older keyframes fixed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CensusDetail {
    heap_parts: u32,
    adopted_pages: u64,
    by_heap: bool,
}

/// How many censuses were checked and how many agreed with the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CensusTally {
    /// Censuses whose check finished (a census taken by heaps counts once, with its parts).
    pub censuses: u32,
    /// Of those, the ones with no difference.
    pub agreeing: u32,
    /// Of `censuses`, those taken by the heaps while the program ran.
    pub by_heap: u32,
    /// Of `by_heap`, the ones with no difference.
    pub by_heap_agreeing: u32,
}

impl CensusTally {
    fn count(&mut self, c: &CensusCheck) {
        if c.compared() {
            let agrees = u32::from(c.mismatches == 0);
            self.censuses += 1;
            self.agreeing += agrees;
            if c.by_heap {
                self.by_heap += 1;
                self.by_heap_agreeing += agrees;
            }
        }
    }
}

fn field(out: &mut Vec<Mismatch>, start: u64, name: Field, model: i64, census: i64) {
    if model != census {
        out.push(Mismatch::PageField {
            start,
            field: name,
            model,
            census,
        });
    }
}

/// Blocks of `block_size` that fit in page `index` of `seg` starting at `start`.
fn reserved_for(seg: &Segment, index: usize, start: u64, block_size: u64) -> u32 {
    if block_size == 0 {
        return 0;
    }
    let end = match seg.kind {
        0 => seg
            .base
            .saturating_add((index as u64 + 1) << SMALL_PAGE_SHIFT),
        1 => seg
            .base
            .saturating_add((index as u64 + 1) << MEDIUM_PAGE_SHIFT),
        _ => seg.base.saturating_add(seg.bytes.max(SEGMENT_SIZE as u64)),
    };
    let first = start.max(seg.base.saturating_add(INFO_SIZE as u64));
    (end.saturating_sub(first) / block_size).min(u64::from(u32::MAX)) as u32
}

impl Model {
    pub(super) fn on_census_event(&mut self, heap: u32, ev: &Event) {
        const BEGIN: u8 = EventKind::CensusBegin as u8;
        const PAGE: u8 = EventKind::CensusPage as u8;
        const PAGE2: u8 = EventKind::CensusPage2 as u8;
        const SEGMENT: u8 = EventKind::CensusSegment as u8;
        if heap != 0 {
            self.on_heap_part_event(heap, ev);
            return;
        }
        let st = &mut self.census;
        match ev.kind {
            BEGIN if ev.flags & flags::BY_HEAP != 0 => {
                // The heaps send the pages, each in its own stream.
                self.finish_tally();
                self.totals.censuses += 1;
                self.census.check = Some(CensusCheck {
                    number: schema::CensusBegin::from_event(ev).number,
                    time: ev.time,
                    by_heap: true,
                    ..CensusCheck::default()
                });
            }
            BEGIN => {
                let b = schema::CensusBegin::from_event(ev);
                st.building = Some(Census {
                    number: b.number,
                    time: ev.time,
                    initial: b.flags & flags::INITIAL != 0,
                    segments: Vec::new(),
                    pages: Vec::with_capacity((b.pages as usize).min(RESERVE_MAX)),
                });
                st.half = None;
            }
            SEGMENT => {
                if let Some(c) = &mut st.building {
                    c.segments.push(CensusSegment::of_event(ev));
                }
            }
            PAGE => st.half = Some(CensusPage::first_half(ev)),
            PAGE2 => {
                if let (Some(c), Some(p)) = (&mut st.building, st.half.take()) {
                    c.pages.push(p.with_second_half(ev));
                }
            }
            _ => {
                // CensusEnd
                match st.building.take() {
                    Some(c) if c.number == schema::CensusEnd::from_event(ev).number => {
                        self.census_done(c);
                    }
                    _ => {}
                }
            }
        }
    }

    /// An event of heap `heap`'s own part of a census (`flags::HEAP_PART`).
    fn on_heap_part_event(&mut self, heap: u32, ev: &Event) {
        const BEGIN: u8 = EventKind::CensusBegin as u8;
        const PAGE: u8 = EventKind::CensusPage as u8;
        const PAGE2: u8 = EventKind::CensusPage2 as u8;
        const END: u8 = EventKind::CensusEnd as u8;
        const SEGMENT: u8 = EventKind::CensusSegment as u8;
        let parts = &mut self.census.parts;
        match ev.kind {
            BEGIN => {
                let b = schema::CensusBegin::from_event(ev);
                let c = Census {
                    number: b.number,
                    time: ev.time,
                    initial: b.flags & flags::INITIAL != 0,
                    pages: Vec::with_capacity((b.pages as usize).min(RESERVE_MAX)),
                    ..Census::default()
                };
                parts.insert(heap, (c, None, b.flags));
            }
            PAGE => {
                if let Some((_, half, _)) = parts.get_mut(&heap) {
                    *half = Some(CensusPage::first_half(ev));
                }
            }
            PAGE2 => {
                if let Some((c, half, _)) = parts.get_mut(&heap)
                    && let Some(p) = half.take()
                {
                    c.pages.push(p.with_second_half(ev));
                }
            }
            SEGMENT => {
                // Only in a part the model takes over (`INITIAL`, `ADOPT`).
                if let Some((c, _, _)) = parts.get_mut(&heap)
                    && c.segments.len() < RESERVE_MAX
                {
                    c.segments.push(CensusSegment::of_event(ev));
                }
            }
            END => {
                if let Some((c, _, f)) = parts.remove(&heap)
                    && c.number == schema::CensusEnd::from_event(ev).number
                {
                    self.end_counted_epochs(&c.pages);
                    if f & flags::ADOPT != 0 {
                        self.take_over_part(heap, &c, false);
                    } else if f & flags::INITIAL != 0 {
                        self.take_over_part(heap, &c, true);
                    } else {
                        self.heap_part_done(heap, &c);
                    }
                }
            }
            _ => {}
        }
    }

    /// Takes over what heap `heap` reports of pages the trace did not follow (a part with
    /// `INITIAL` or `ADOPT`): the segments and pages it lists become the model's, as listed,
    /// with no live blocks known in them; with `whole` (the heap's whole state, as tracing
    /// starts or stops on its thread) the heap's other segments and pages leave the model.
    pub(crate) fn take_over_part(&mut self, heap: u32, part: &Census, whole: bool) {
        let listed_segments: HashSet<u64> = part.segments.iter().map(|s| s.base).collect();
        let listed_pages: HashSet<u64> = part.pages.iter().map(|p| p.start).collect();
        for cs in &part.segments {
            let kind = page_kind(cs.kind) as u8;
            if let Some(si) = self.segs.find(cs.base) {
                let seg = self.segs.get(si);
                if seg.laid_out_as(cs) && seg.bytes == cs.bytes {
                    continue;
                }
                self.forget_segment(si);
            }
            let _ = self.segs.take_early_ghost(cs.base);
            let generation = self.segs.new_generation();
            let mut seg = Segment::new(
                cs.base,
                cs.bytes,
                kind,
                cs.page_count,
                generation,
                part.time,
            );
            seg.owner = heap;
            seg.inferred = true; // known from the part, not its `SegmentAlloc`
            self.segs.insert(seg);
        }
        if whole {
            let mut i = 0;
            while i < self.segs.len() {
                let seg = self.segs.get(i);
                if seg.owner == heap && !seg.abandoned && !listed_segments.contains(&seg.base) {
                    self.forget_segment(i);
                } else {
                    i += 1;
                }
            }
        }
        // The heap's pages it does not list are not in use (a whole part), and every listed
        // page is set up as listed.
        for si in 0..self.segs.len() {
            for pi in 0..self.segs.get(si).pages.len() {
                let p = &self.segs.get(si).pages[pi];
                let gone = whole && p.in_use && p.owner == heap && !listed_pages.contains(&p.start);
                let set_anew = p.in_use && listed_pages.contains(&p.start);
                // A page of the heap's own segment that is not in use holds no block on any
                // list: counts left on it came from what the part replaces (a census read while
                // its thread ran, with the thread's events replayed on it after: a page of the
                // prodcons workload kept thread_free -393 through its next layouts, attached,
                // in 2 recordings of 12).
                let residue = whole
                    && !p.in_use
                    && self.segs.get(si).owner == heap
                    && (p.thread_free != 0 || p.delayed != 0);
                if gone || set_anew {
                    self.forget_page_blocks(si, pi);
                    let p = &mut self.segs.get_mut(si).pages[pi];
                    p.clear_for_census();
                } else if residue {
                    let p = &mut self.segs.get_mut(si).pages[pi];
                    p.thread_free = 0;
                    p.delayed = 0;
                }
            }
        }
        for cp in &part.pages {
            self.set_page_from_census(cp, part.time);
        }
        self.mark_delayed_unknown(part);
        for cs in &part.segments {
            if let Some(si) = self.segs.find(cs.base) {
                let seg = self.segs.get_mut(si);
                seg.owner = heap;
                seg.abandoned = false;
            }
        }
        self.recompute_aggregates();
    }

    /// Sets heap `heap`'s pages from its census part after lost events: the pages it lists
    /// take its values (`thread_free` as read), its other pages are not in use; the live blocks
    /// of those pages are forgotten (which of them are live is not known). Returns the pages
    /// set.
    fn resync_heap_part(&mut self, heap: u32, part: &Census) -> usize {
        let listed: HashSet<u64> = part.pages.iter().map(|p| p.start).collect();
        // A segment of another kind at a listed page's address is a stale one (its free and
        // the new segment's allocation were lost): it goes, the page's segment is inferred.
        for cp in &part.pages {
            if let Some(si) = self.segs.find(segment_base(cp.start))
                && self.segs.get(si).kind != page_kind(cp.kind) as u8
            {
                self.forget_segment(si);
            }
        }
        for si in 0..self.segs.len() {
            for pi in 0..self.segs.get(si).pages.len() {
                let p = &self.segs.get(si).pages[pi];
                if p.in_use && (p.owner == heap || listed.contains(&p.start)) {
                    self.forget_page_blocks(si, pi);
                    let p = &mut self.segs.get_mut(si).pages[pi];
                    p.clear_for_census();
                    p.unsure = false;
                }
            }
        }
        // A listed page the model has not in use, or in a segment it does not know (their
        // events were lost): blocks kept at its addresses meanwhile (`on_alloc` keeps a block
        // of an unknown segment in the pending map) are counted in the part's `used` now.
        for cp in &part.pages {
            match self.segs.locate(cp.start) {
                Some((si, pi)) if !self.segs.get(si).pages[pi].in_use => {
                    self.forget_page_blocks(si, pi);
                }
                Some(_) => {}
                None => {
                    let base = segment_base(cp.start);
                    self.live
                        .forget_range(base, base.saturating_add(SEGMENT_SIZE as u64));
                }
            }
        }
        let unsure = part.time <= self.census.lost_until;
        for cp in &part.pages {
            self.set_page_from_census(cp, part.time);
            if unsure && let Some((si, pi)) = self.segs.locate(cp.start) {
                self.segs.get_mut(si).pages[pi].unsure = true;
            }
        }
        self.mark_delayed_unknown(part);
        self.recompute_aggregates();
        part.pages.len()
    }

    /// Removes live segment `si` and forgets the live blocks of its pages (they are no longer
    /// followed: a thread the trace does not follow owns them).
    pub(super) fn forget_segment(&mut self, si: usize) {
        for pi in 0..self.segs.get(si).pages.len() {
            self.forget_page_blocks(si, pi);
        }
        self.agg
            .add(&super::Aggregates::of_segment(self.segs.get(si)), -1);
        self.segs.remove(si);
    }

    /// Forgets every live block (after lost events, before a whole census resets the pages).
    fn forget_all_blocks(&mut self) {
        for seg in self.segs.list_mut() {
            for p in &mut seg.pages {
                p.live.take_unsettled();
            }
        }
        self.live = super::LiveBlocks::default();
    }

    /// Forgets the live blocks of page `pi` of segment `si` (its table and the overflow entries
    /// at its addresses).
    fn forget_page_blocks(&mut self, si: usize, pi: usize) {
        let seg = self.segs.get_mut(si);
        let single = seg.pages.len() == 1;
        let (base, shift, bytes) = (seg.base, seg.page_shift, seg.bytes);
        let p = &mut seg.pages[pi];
        for (_, count, size) in p.live.take_unsettled() {
            self.live.forget(count, size);
        }
        let lo = base.saturating_add(u64::from(p.index) << shift);
        let hi = if single {
            base.saturating_add(bytes.max(1u64 << shift))
        } else {
            lo.saturating_add(1u64 << shift)
        };
        self.live.forget_range(lo, hi);
    }

    /// Events were lost (a `Dropped` event, a damaged chunk), none later than `until`: every
    /// page is unsure until its heap's next census part, or the next whole census, sets it
    /// again.
    pub(super) fn note_loss(&mut self, until: u64) {
        self.census.lost_epoch += 1;
        self.census.lost_until = self.census.lost_until.max(until);
        for seg in self.segs.list_mut() {
            for p in seg.pages.iter_mut().filter(|p| p.in_use) {
                p.unsure = true;
            }
        }
    }

    /// Heap `heap` took over a page (`unknown`: one the model does not have in use): after a
    /// loss, if the page is unknown or unsure, the heap's pages are set again from its next
    /// census part.
    pub(super) fn note_taken_over(&mut self, heap: u32, unknown: bool, unsure: bool) {
        if self.census.lost_epoch > 0 && (unknown || unsure) {
            self.census.dirty.insert(heap);
        }
    }

    /// Whether events after `time` may have been lost, for a page laid out, taken over or set
    /// from a census then (see `CensusState::lost_until`). If so, the page is unsure, and its
    /// heap `heap` is set from its next part again.
    pub(super) fn may_have_lost_since(&mut self, heap: u32, time: u64) -> bool {
        let may = self.census.lost_epoch > 0 && time <= self.census.lost_until;
        if may {
            self.census.dirty.insert(heap);
        }
        may
    }

    /// In-use pages whose counts may be wrong since events were lost (see [`Page::unsure`]).
    pub fn unsure_pages(&self) -> usize {
        self.segs
            .iter()
            .map(|s| s.pages.iter().filter(|p| p.in_use && p.unsure).count())
            .sum()
    }

    fn heap_part_done(&mut self, heap: u32, part: &Census) {
        let st = &self.census;
        let synced = st
            .synced
            .get(&heap)
            .copied()
            .unwrap_or(0)
            .max(st.all_synced);
        let dirty = self.census.dirty.remove(&heap);
        let st = &self.census;
        let resync = self.auto_resync && (synced < st.lost_epoch || dirty);
        let mut resynced_pages = 0;
        if resync {
            // Events of this heap may be among those lost: its pages are set from its part.
            resynced_pages = self.resync_heap_part(heap, part);
            // A part read before the latest lost event leaves the heap to be set again.
            if part.time > self.census.lost_until {
                let epoch = self.census.lost_epoch;
                self.census.synced.insert(heap, epoch);
            } else {
                self.census.dirty.insert(heap);
            }
        }
        let mismatches = self.compare_heap_part(heap, part);
        let check = match &mut self.census.check {
            Some(c) if c.number == part.number => c,
            _ => {
                // A part of a census whose begin was not seen (a seek into its middle).
                self.finish_tally();
                self.census.check.insert(CensusCheck {
                    number: part.number,
                    time: part.time,
                    by_heap: true,
                    ..CensusCheck::default()
                })
            }
        };
        check.heap_parts += 1;
        check.resynced |= resync;
        check.resynced_pages += resynced_pages;
        check.mismatches += mismatches.len();
        let room = CHECK_KEEP.saturating_sub(check.first.len());
        check.first.extend(mismatches.into_iter().take(room));
    }

    /// Counts the current check in the tally once it is complete (the next census began).
    fn finish_tally(&mut self) {
        if let Some(c) = self.census.check.take() {
            self.census.tally.count(&c);
        }
    }

    /// The last check's detail, for a keyframe.
    pub(crate) fn census_detail(&self) -> CensusDetail {
        self.census
            .check
            .as_ref()
            .map_or_else(CensusDetail::default, |c| CensusDetail {
                heap_parts: c.heap_parts,
                adopted_pages: c.adopted_pages as u64,
                by_heap: c.by_heap,
            })
    }

    /// Restores the last check's detail from a keyframe.
    pub(crate) fn set_census_detail(&mut self, d: CensusDetail) {
        if let Some(c) = &mut self.census.check {
            c.heap_parts = d.heap_parts;
            c.adopted_pages = usize::try_from(d.adopted_pages).unwrap_or(usize::MAX);
            c.by_heap = d.by_heap;
        }
    }

    /// Censuses checked so far and how many agreed, counting the last one.
    pub fn census_tally(&self) -> CensusTally {
        let mut t = self.census.tally;
        if let Some(c) = &self.census.check {
            t.count(c);
        }
        t
    }

    /// The differences between heap `heap`'s pages in the model and its part of a census: as
    /// [`Model::compare`] for its pages alone, without `thread_free` (other threads push onto it
    /// while the owner reads it, so at a point of the owner's order it is only a reading).
    pub fn compare_heap_part(&self, heap: u32, part: &Census) -> Vec<Mismatch> {
        let mut out = Vec::new();
        let mut listed: HashSet<u64> = HashSet::with_capacity(part.pages.len());
        for cp in &part.pages {
            listed.insert(cp.start);
            self.compare_page(cp, false, &mut out);
        }
        for seg in self.segs.iter() {
            for p in seg.pages.iter().filter(|p| p.in_use && p.owner == heap) {
                if !listed.contains(&p.start) {
                    out.push(Mismatch::PageMissingInCensus {
                        start: p.start,
                        owner: p.owner,
                    });
                }
            }
        }
        out
    }

    fn census_done(&mut self, mut c: Census) {
        self.end_counted_epochs(&c.pages);
        self.finish_tally();
        self.totals.censuses += 1;
        let mut mismatches = self.compare(&c);
        let lost = self.totals.dropped > self.census.dropped_at_last || self.lost_to_damage > 0;
        self.lost_to_damage = 0;
        // The census taken when recording started describes what existed before (pages made
        // before the hook was switched on): the model starts from it, and the check is whether
        // it then agrees (the differences before were the program's earlier life, not errors).
        let resync = self.auto_resync && (lost || c.initial) && !mismatches.is_empty();
        let mut adopted_pages = 0;
        if self.auto_resync && lost {
            // Every heap's pages agree with this census, or are set from it: none is unsure
            // any more.
            self.census.all_synced = self.census.lost_epoch;
            self.census.lost_until = 0;
            self.census.dirty.clear();
            for seg in self.segs.list_mut() {
                for p in &mut seg.pages {
                    p.unsure = false;
                }
            }
            // Which blocks are live is not known after lost events (a lost free leaves its
            // block live in the model for good): the census says how many each page holds,
            // not which.
            self.forget_all_blocks();
        }
        if resync {
            self.resync(&c);
            if lost {
                self.mark_delayed_unknown(&c);
            }
            if c.initial && !lost {
                adopted_pages = mismatches.len();
                mismatches = self.compare(&c);
            }
        }
        self.census.check = Some(CensusCheck {
            number: c.number,
            time: c.time,
            mismatches: mismatches.len(),
            first: mismatches.into_iter().take(CHECK_KEEP).collect(),
            resynced: resync,
            heap_parts: 0,
            adopted_pages,
            by_heap: false,
            resynced_pages: 0,
        });
        self.census.dropped_at_last = self.totals.dropped;
        // The epochs matter only as the census is applied (keyframes do not keep them).
        for p in &mut c.pages {
            p.epoch = false;
        }
        self.census.last = Some(c);
        #[cfg(debug_assertions)]
        if self
            .census
            .check
            .as_ref()
            .is_some_and(|c| c.mismatches == 0)
        {
            self.debug_check_invariants(super::invariants::Point::Settled);
        }
    }

    /// The last whole census received.
    pub fn last_census(&self) -> Option<&Census> {
        self.census.last.as_ref()
    }

    /// How the model compared with the last census when it arrived.
    pub fn last_census_check(&self) -> Option<&CensusCheck> {
        self.census.check.as_ref()
    }

    /// Every difference between the model and `census`: each census page must be in use in the
    /// model with the same block size, bin, kind, capacity, used, local_free, thread_free, owner
    /// and full flag; each in-use page of the model must be in the census; and, when the census
    /// lists segments, each live segment of the model must be there with the same kind, size and
    /// page count. Empty when they agree.
    pub fn compare(&self, census: &Census) -> Vec<Mismatch> {
        let mut out = Vec::new();
        let mut listed: HashSet<u64> = HashSet::with_capacity(census.pages.len());
        let mut page_segments: HashSet<u64> = HashSet::new();
        for cp in &census.pages {
            listed.insert(cp.start);
            page_segments.insert(segment_base(cp.start));
            self.compare_page(cp, true, &mut out);
        }
        for seg in self.segs.iter() {
            for p in seg.pages.iter().filter(|p| p.in_use) {
                if !listed.contains(&p.start) {
                    out.push(Mismatch::PageMissingInCensus {
                        start: p.start,
                        owner: p.owner,
                    });
                }
            }
        }
        if !census.segments.is_empty() {
            let by_base: FastMap<u64, &CensusSegment> =
                census.segments.iter().map(|s| (s.base, s)).collect();
            for seg in self.segs.iter() {
                let Some(cs) = by_base.get(&seg.base) else {
                    out.push(Mismatch::SegmentMissingInCensus { base: seg.base });
                    continue;
                };
                let mut sf = |name, model: i64, census: i64| {
                    if model != census {
                        out.push(Mismatch::SegmentField {
                            base: seg.base,
                            field: name,
                            model,
                            census,
                        });
                    }
                };
                sf(Field::Kind, seg.kind.into(), cs.kind.into());
                sf(Field::Bytes, seg.bytes as i64, cs.bytes as i64);
                sf(
                    Field::PageCount,
                    seg.pages.len() as i64,
                    cs.page_count.into(),
                );
            }
            for cs in &census.segments {
                if page_segments.contains(&cs.base) && self.segs.find_ref(cs.base).is_none() {
                    out.push(Mismatch::SegmentMissingInModel { base: cs.base });
                }
            }
        }
        out
    }

    /// The differences between census page `cp` and the model's page there (`thread_free`
    /// compared when asked).
    fn compare_page(&self, cp: &CensusPage, thread_free: bool, out: &mut Vec<Mismatch>) {
        let Some(r) = self.page_at(cp.start) else {
            out.push(Mismatch::PageMissingInModel { start: cp.start });
            return;
        };
        let p = r.page;
        if !p.in_use || p.start != cp.start {
            out.push(Mismatch::PageMissingInModel { start: cp.start });
            return;
        }
        let s = cp.start;
        field(
            out,
            s,
            Field::BlockSize,
            p.block_size as i64,
            cp.block_size as i64,
        );
        field(out, s, Field::Bin, p.bin.into(), cp.bin.into());
        field(out, s, Field::Kind, p.kind.into(), cp.kind.into());
        field(
            out,
            s,
            Field::Capacity,
            p.capacity.into(),
            cp.capacity.into(),
        );
        field(out, s, Field::Used, p.used, cp.used.into());
        field(out, s, Field::LocalFree, p.local_free, cp.local_free.into());
        if thread_free {
            field(
                out,
                s,
                Field::ThreadFree,
                p.thread_free,
                cp.thread_free.into(),
            );
        }
        field(out, s, Field::Owner, p.owner.into(), cp.owner.into());
        field(out, s, Field::InFull, p.in_full.into(), cp.in_full.into());
    }

    /// Resets segments and pages to `census` (a keyframe, or recovery after lost events):
    /// segments it lists appear or disappear, listed pages take its values (`delayed` 0), the
    /// other pages are not in use, ghosts are forgotten. Live blocks and totals are kept.
    pub fn resync(&mut self, census: &Census) {
        if !census.segments.is_empty() {
            let by_base: FastMap<u64, &CensusSegment> =
                census.segments.iter().map(|s| (s.base, s)).collect();
            let mut i = 0;
            while i < self.segs.len() {
                let seg = self.segs.get(i);
                let keep = by_base.get(&seg.base).is_some_and(|cs| seg.laid_out_as(cs));
                if keep {
                    let bytes = by_base[&seg.base].bytes;
                    self.segs.get_mut(i).bytes = bytes;
                    i += 1;
                } else {
                    self.remove_segment(i);
                }
            }
            for cs in &census.segments {
                if self.segs.find_ref(cs.base).is_none() {
                    let generation = self.segs.new_generation();
                    let mut seg = Segment::new(
                        cs.base,
                        cs.bytes,
                        page_kind(cs.kind) as u8,
                        cs.page_count,
                        generation,
                        census.time,
                    );
                    seg.inferred = true;
                    self.segs.insert(seg);
                }
            }
        }
        self.segs.clear_ghosts();
        for seg in self.segs.list_mut() {
            for p in &mut seg.pages {
                p.clear_for_census();
                p.unsure = false;
            }
        }
        for cp in &census.pages {
            self.set_page_from_census(cp, census.time);
        }
        for seg in self.segs.list_mut() {
            if seg.pages.iter().any(|p| p.in_use)
                && seg.pages.iter().all(|p| !p.in_use || p.owner == 0)
            {
                seg.owner = 0;
                seg.abandoned = true;
            } else if let Some(o) = seg.pages.iter().find(|p| p.in_use).map(|p| p.owner) {
                seg.owner = o;
                seg.abandoned = false;
            }
        }
        self.recompute_aggregates();
    }

    /// Sets the page `cp` describes as it says (its segment inferred if the model has none).
    fn set_page_from_census(&mut self, cp: &CensusPage, time: u64) {
        let base = segment_base(cp.start);
        let si = match self.segs.find_ref(base) {
            Some(si) => si,
            None => {
                let generation = self.segs.new_generation();
                let mut seg = Segment::new(
                    base,
                    SEGMENT_SIZE as u64,
                    page_kind(cp.kind) as u8,
                    0,
                    generation,
                    time,
                );
                seg.inferred = true;
                self.segs.insert(seg)
            }
        };
        let pi = self.segs.get(si).page_index(cp.start);
        let page = &self.segs.get(si).pages[pi];
        if page.block_size != cp.block_size || page.start != cp.start {
            self.spill_page(si, pi);
        }
        let seg = self.segs.get_mut(si);
        seg.pages[pi].set_layout(cp.block_size, cp.kind);
        let reserved = if seg.pages[pi].block_size == cp.block_size && seg.pages[pi].reserved > 0 {
            seg.pages[pi].reserved
        } else {
            reserved_for(seg, pi, cp.start, cp.block_size)
        };
        let p = &mut seg.pages[pi];
        p.in_use = true;
        p.start = cp.start;
        p.block_size = cp.block_size;
        p.reserved = reserved.max(cp.capacity);
        p.bin = cp.bin;
        p.kind = cp.kind;
        p.capacity = cp.capacity;
        p.used = cp.used.into();
        p.local_free = cp.local_free.into();
        p.thread_free = cp.thread_free.into();
        p.owner = cp.owner;
        p.in_full = cp.in_full;
        self.census.counted_epoch.insert(cp.start, !cp.epoch);
    }

    /// A census lists these pages: the frees an earlier census reading of them counted have
    /// all been reported by now (each page's epoch has flipped again).
    fn end_counted_epochs(&mut self, pages: &[CensusPage]) {
        if !self.census.counted_epoch.is_empty() {
            for cp in pages {
                self.census.counted_epoch.remove(&cp.start);
            }
        }
    }

    /// Page `start` is laid out anew or freed: its epoch starts again (the allocator resets the
    /// word), so no free of it was counted by a census.
    pub(super) fn page_relaid(&mut self, start: u64) {
        if !self.census.counted_epoch.is_empty() {
            self.census.counted_epoch.remove(&start);
        }
    }

    /// Whether a cross-thread free (`TO_DELAYED` or `CROSS_THREAD`, flags `ev_flags`) of page
    /// `start` is one that the census the page's counts were set from already counted: pushed
    /// under the census epoch before that census's reading, but reported after it (another
    /// thread's events reach the model in their own batches). Exact: the census flipped the
    /// page's epoch in the same atomic step as it read the count (`page::census_reading`), and
    /// moved the clock first, so a free pushed after the reading reaches the model after the
    /// census.
    #[inline]
    pub(super) fn counted_by_census(&self, start: u64, ev_flags: u8) -> bool {
        !self.census.counted_epoch.is_empty()
            && self.census.counted_epoch.get(&start) == Some(&(ev_flags & flags::EPOCH != 0))
    }

    /// Marks the pages `census` lists as set after lost events (see `Page::delayed_unknown`).
    fn mark_delayed_unknown(&mut self, census: &Census) {
        for cp in &census.pages {
            if let Some((si, pi)) = self.segs.locate(cp.start) {
                self.segs.get_mut(si).pages[pi].delayed_unknown = true;
            }
        }
    }
}
