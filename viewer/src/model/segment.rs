//! Segments of the model, and the collection that finds the page of an address.
//!
//! Layout as in `heaplens_alloc::segment`: a segment is 4 MiB aligned to its size (a huge one is
//! larger), `(p - 1) & !SEGMENT_MASK` finds it, and `(p - base) >> page_shift` is the page index:
//! 64 small pages of 64 KiB, 8 medium pages of 512 KiB, 64 slots of 64 KiB whose large pages
//! are spans of them, or one huge page. The first page starts after the segment header
//! (`INFO_SIZE`). A large page is a span of slots holding one block at its start: the page is
//! kept at its first slot, where the block's address finds it. (Before spans, traces announced a
//! large segment with one page filling it, [`geometry`].)
//!
//! Besides the live segments the collection keeps *ghosts*, which exist only because events of one
//! tick come in any order across threads:
//! - a freed segment whose pages still owe a late cross-thread free (its `thread_free` or
//!   `delayed` sum is not zero) stays as a ghost until those events arrive. Blocks remember the
//!   generation of the segment they were allocated in, so a late free finds its ghost even when a
//!   new segment already lives at the same address.
//! - a free whose segment has not been announced yet (its `SegmentAlloc` comes later in the same
//!   tick) lands on an *early* ghost of unknown kind, with the finest (small-page) geometry; the
//!   segment's `SegmentAlloc` folds it in.
//!
//! Ghosts take no part in queries or metrics.
//!
//! A segment's address can be mapped again by another thread as soon as its owner unmapped it (or
//! gave it to the segment cache), and the two threads' streams reach the model in any order. The
//! allocator stamps a segment's free and moves the clock on before the address can be taken
//! again, so every event of the earlier segment is older than the next one's `SegmentAlloc`: an
//! event older than the live segment at its address ([`Segment::announced_after`]) is the
//! earlier segment's, arriving late, and never changes the live one (see `Model::stale`).

use heaplens_alloc::bin::PageKind;
use heaplens_alloc::segment::INFO_SIZE;
use heaplens_alloc::{
    MEDIUM_PAGE_SHIFT, SEGMENT_MASK, SEGMENT_SIZE, SMALL_PAGE_SHIFT, SMALL_PAGES_PER_SEGMENT,
};
use serde::{Deserialize, Serialize};

use super::hash::FastMap;
use super::page::{Page, page_kind};

/// `Segment::kind` of an early ghost (a segment not announced yet).
pub const KIND_UNKNOWN: u8 = u8::MAX;

/// Page shift of one-page (large and huge) segments: every address maps to page 0.
const ONE_PAGE_SHIFT: u32 = 63;

/// The segment holding address `p` (as `heaplens_alloc::segment::segment_of`).
#[inline(always)]
pub fn segment_base(p: u64) -> u64 {
    p.wrapping_sub(1) & !(SEGMENT_MASK as u64)
}

/// The segment an event's address names: a segment event's (or an OS range's) address may be
/// the segment's base itself, which [`segment_base`] would take for the end of the one before.
#[inline(always)]
pub fn segment_named(addr: u64) -> u64 {
    if addr & SEGMENT_MASK as u64 == 0 {
        addr
    } else {
        segment_base(addr)
    }
}

/// `(page_shift, page_count)` of a segment of kind byte `kind` announced with `pages` pages (0: not
/// known, as for a segment the model infers: this build's layout). A large segment of one page
/// is a trace's from before large pages were spans.
pub fn geometry(kind: u8, pages: u32) -> (u32, usize) {
    match (kind, pages) {
        (1, _) => (MEDIUM_PAGE_SHIFT as u32, SEGMENT_SIZE >> MEDIUM_PAGE_SHIFT),
        (2, 1) | (3, _) => (ONE_PAGE_SHIFT, 1),
        _ => (SMALL_PAGE_SHIFT as u32, SMALL_PAGES_PER_SEGMENT),
    }
}

/// One segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Base address.
    pub base: u64,
    /// Bytes mapped.
    pub bytes: u64,
    /// `PageKind as u8`, or [`KIND_UNKNOWN`] for an early ghost.
    pub kind: u8,
    /// `(p - base) >> page_shift` is the page index (63 for one-page segments).
    pub page_shift: u32,
    /// The pages, by index.
    pub pages: Vec<Page>,
    /// Owning heap; 0 while abandoned.
    pub owner: u32,
    /// Abandoned by its thread and not reclaimed yet.
    pub abandoned: bool,
    /// Bytes purged (returned to the OS) and not recommitted.
    pub purged: u64,
    /// Generation: distinguishes successive segments at the same address.
    pub generation: u32,
    /// Time of its `SegmentAlloc`.
    pub allocated_at: u64,
    /// Known from a page event or a census rather than its `SegmentAlloc` (events were lost).
    pub inferred: bool,
    /// Time of its latest `SegmentReclaim` (0: none). An abandon stamped before it happened
    /// before the reclaim, whenever it arrives: the exiting thread's last buffer can reach the
    /// collector after the reclaiming thread's events (not in keyframes).
    #[serde(skip)]
    pub reclaimed_at: u64,
    /// Generation of the segment this one replaced at its address while that one's events were
    /// still owed (0: none; not in keyframes).
    #[serde(skip)]
    pub replaced: u32,
}

impl Segment {
    /// A segment of `kind` at `base`, announced with `pages` pages (0: not known; see
    /// [`geometry`]).
    pub(crate) fn new(
        base: u64,
        bytes: u64,
        kind: u8,
        pages: u32,
        generation: u32,
        time: u64,
    ) -> Self {
        let (page_shift, count) = geometry(kind, pages);
        let page_kind = if kind == KIND_UNKNOWN { 0 } else { kind };
        let pages = (0..count)
            .map(|i| {
                let start = if i == 0 {
                    base.wrapping_add(INFO_SIZE as u64)
                } else {
                    base.wrapping_add((i as u64) << page_shift)
                };
                Page::empty(i as u16, start, page_kind)
            })
            .collect();
        Self {
            base,
            bytes,
            kind,
            page_shift,
            pages,
            owner: 0,
            reclaimed_at: 0,
            abandoned: false,
            purged: 0,
            generation,
            allocated_at: time,
            inferred: false,
            replaced: 0,
        }
    }

    /// Whether the segment was announced (by its `SegmentAlloc`) after `time`, so that an event
    /// of `time` at its address belongs to an earlier segment there. A segment the model
    /// inferred, or took from a census, has no such bound.
    #[inline(always)]
    pub fn announced_after(&self, time: u64) -> bool {
        time < self.allocated_at && !self.inferred
    }

    /// The page kind (small for an early ghost).
    pub fn page_kind(&self) -> PageKind {
        page_kind(self.kind)
    }

    /// Index of the page holding `addr`.
    #[inline(always)]
    pub fn page_index(&self, addr: u64) -> usize {
        let i = (addr.wrapping_sub(self.base) >> self.page_shift) as usize;
        i.min(self.pages.len() - 1)
    }

    /// The page holding `addr`.
    pub fn page_at(&self, addr: u64) -> &Page {
        &self.pages[self.page_index(addr)]
    }

    /// Pages in use.
    pub fn used_pages(&self) -> usize {
        self.pages.iter().filter(|p| p.in_use).count()
    }

    /// Bytes committed: mapped less purged.
    pub fn committed(&self) -> u64 {
        self.bytes.saturating_sub(self.purged)
    }

    /// Whether the census lists this segment with its kind and page layout.
    pub(crate) fn laid_out_as(&self, cs: &super::census::CensusSegment) -> bool {
        let kind = page_kind(cs.kind) as u8;
        kind == self.kind && geometry(kind, cs.page_count).1 == self.pages.len()
    }

    /// A large segment whose large pages are spans of its slots.
    pub fn is_spans(&self) -> bool {
        self.kind == PageKind::Large as u8 && self.pages.len() > 1
    }

    /// Pages (slots) page `pi` covers: a large page in use its span's, else 1.
    pub fn page_slots(&self, pi: usize) -> usize {
        let p = &self.pages[pi];
        if !self.is_spans() || !p.in_use {
            return 1;
        }
        let bytes = p.block_size.saturating_mul(u64::from(p.reserved.max(1)));
        heaplens_alloc::segment::span_slots(usize::try_from(bytes).unwrap_or(usize::MAX))
            .clamp(1, self.pages.len() - pi)
    }

    /// Small or medium: counted for segment-level fragmentation.
    pub fn is_multi_page(&self) -> bool {
        self.kind == PageKind::Small as u8 || self.kind == PageKind::Medium as u8
    }

    pub(crate) fn settled(&self) -> bool {
        self.pages.iter().all(Page::settled)
    }
}

/// Most ghosts kept: past this (only with lost or corrupt events) the oldest are dropped.
const MAX_GHOSTS: usize = 1024;
const NO_CACHE: u64 = u64::MAX;
/// Entries of the lookup cache (direct-mapped by segment number).
const CACHE_WAYS: usize = 256;

fn no_cache() -> [(u64, u32); CACHE_WAYS] {
    [(NO_CACHE, 0); CACHE_WAYS]
}

#[inline(always)]
fn cache_way(base: u64) -> usize {
    (base >> SEGMENT_SIZE.trailing_zeros()) as usize % CACHE_WAYS
}

/// The live segments by base address, with a small direct-mapped cache in front, and the ghosts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Segments {
    list: Vec<Segment>,
    index: FastMap<u64, u32>,
    ghosts: Vec<Segment>,
    next_generation: u32,
    #[serde(skip, default = "no_cache")]
    cache: [(u64, u32); CACHE_WAYS],
}

impl Default for Segments {
    fn default() -> Self {
        Self {
            list: Vec::new(),
            index: FastMap::default(),
            ghosts: Vec::new(),
            next_generation: 1,
            cache: no_cache(),
        }
    }
}

impl Segments {
    /// The live segments, in no particular order.
    pub fn iter(&self) -> std::slice::Iter<'_, Segment> {
        self.list.iter()
    }

    /// Number of live segments.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// No live segment.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Ghosts waiting for late events (see the module docs).
    pub fn ghosts(&self) -> &[Segment] {
        &self.ghosts
    }

    pub(crate) fn get(&self, i: usize) -> &Segment {
        &self.list[i]
    }

    pub(crate) fn get_mut(&mut self, i: usize) -> &mut Segment {
        &mut self.list[i]
    }

    pub(crate) fn list_mut(&mut self) -> &mut [Segment] {
        &mut self.list
    }

    /// Index of the live segment at `base`.
    #[inline(always)]
    pub(crate) fn find(&mut self, base: u64) -> Option<usize> {
        let way = cache_way(base);
        let (b, i) = self.cache[way];
        if b == base {
            return Some(i as usize);
        }
        let i = *self.index.get(&base)?;
        self.cache[way] = (base, i);
        Some(i as usize)
    }

    /// Index of the live segment at `base` (no cache update).
    pub(crate) fn find_ref(&self, base: u64) -> Option<usize> {
        self.index.get(&base).map(|&i| i as usize)
    }

    /// `(segment, page)` indices of the live page holding `addr`.
    #[inline(always)]
    pub(crate) fn locate(&mut self, addr: u64) -> Option<(usize, usize)> {
        let si = self.find(segment_base(addr))?;
        Some((si, self.list[si].page_index(addr)))
    }

    pub(crate) fn new_generation(&mut self) -> u32 {
        let g = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        g
    }

    /// Adds a live segment (none may live at its base); returns its index.
    pub(crate) fn insert(&mut self, seg: Segment) -> usize {
        let i = self.list.len();
        self.index.insert(seg.base, i as u32);
        self.list.push(seg);
        i
    }

    /// Removes live segment `i`.
    pub(crate) fn remove(&mut self, i: usize) -> Segment {
        let seg = self.list.swap_remove(i);
        self.index.remove(&seg.base);
        if let Some(moved) = self.list.get(i) {
            self.index.insert(moved.base, i as u32);
        }
        self.cache = no_cache();
        seg
    }

    /// Keeps a removed segment as a ghost if late events are still owed to it.
    pub(crate) fn bury(&mut self, mut seg: Segment) {
        if seg.settled() {
            return;
        }
        for p in &mut seg.pages {
            p.clear_owner_state();
        }
        self.push_ghost(seg);
    }

    fn push_ghost(&mut self, seg: Segment) {
        if self.ghosts.len() >= MAX_GHOSTS {
            self.ghosts.remove(0);
        }
        self.ghosts.push(seg);
    }

    /// The ghost of generation `generation` at `base`, made if missing (geometry unknown).
    pub(crate) fn ghost(&mut self, base: u64, generation: u32, time: u64) -> &mut Segment {
        let i = match self
            .ghosts
            .iter()
            .position(|g| g.base == base && g.generation == generation)
        {
            Some(i) => i,
            None => {
                self.push_ghost(Segment::new(base, 0, KIND_UNKNOWN, 0, generation, time));
                self.ghosts.len() - 1
            }
        };
        &mut self.ghosts[i]
    }

    /// The ghost of generation `generation` at `base`, if there is one.
    pub(crate) fn ghost_of(&mut self, base: u64, generation: u32) -> Option<&mut Segment> {
        self.ghosts
            .iter_mut()
            .find(|g| g.base == base && g.generation == generation)
    }

    /// Drops ghosts that owe nothing any more.
    pub(crate) fn prune_ghosts(&mut self) {
        self.ghosts.retain(|g| !g.settled());
    }

    /// Takes the early ghost (generation 0) at `base`, if any.
    pub(crate) fn take_early_ghost(&mut self, base: u64) -> Option<Segment> {
        let i = self
            .ghosts
            .iter()
            .position(|g| g.base == base && g.generation == 0)?;
        Some(self.ghosts.remove(i))
    }

    /// Forgets every ghost (a census resynchronised the model).
    pub(crate) fn clear_ghosts(&mut self) {
        self.ghosts.clear();
    }
}
