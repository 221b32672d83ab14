//! Segments: 4 MiB regions aligned to their size, holding pages and, at their start, the metadata
//! of those pages. `(ptr - 1) & !SEGMENT_MASK` finds a block's segment (the `- 1` lets a block of a
//! huge segment start exactly one segment size past the header, which huge alignments need; no
//! block ever starts at a segment's first byte, because the header is there).
//!
//! ```text
//!  small segment   | header+page metadata | page 0 (64 KiB - header) | page 1 | ... | page 63 |
//!  medium segment  | header | page 0 (512 KiB - header) | page 1 | ... | page 7 |
//!  large segment   | header | one page                                         |
//!  huge segment    | header | one block of any size (the mapping is as large as needed) ...
//! ```
//! A thread owns its segments (`thread_id`); the pages in a segment belong to the owner's heap.
//! Each thread keeps its small and medium segments that have a free page in a queue. An empty
//! page goes back to its segment; an empty segment goes to a small process-wide cache or back to
//! the OS. Free pages are purged (their memory returned to the OS) a purge delay after their
//! segment last freed a page, together; cached segments are unmapped ten delays later. The delay
//! is `HEAPLENS_PURGE_DELAY_MS`, longer while purged memory is taken again soon after
//! ([`crate::purge_delay`]).
//!
//! When a thread exits its segments are *abandoned* (`thread_id == 0`) onto a global list; a
//! thread that needs a new segment first *reclaims* abandoned ones, taking their pages into its
//! heap. Metadata is one header per segment (under 8 KiB per 4 MiB: 0.2%).

use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};

use crate::bin::PageKind;
use crate::event::flags;
use crate::heap::Heap;
use crate::hook;
use crate::page::{self, NEVER_DELAYED_FREE, NO_DELAYED_FREE, Page};
use crate::schema;
use crate::sync::SpinLock;
use crate::{
    MEDIUM_PAGE_SHIFT, MEDIUM_PAGE_SIZE, SEGMENT_MASK, SEGMENT_SIZE, SMALL_PAGE_SHIFT,
    SMALL_PAGE_SIZE, SMALL_PAGES_PER_SEGMENT, os, purge_delay, segment_map,
};
use purge_delay::PurgeDelay;

/// A segment header. The page metadata comes first, at the segment's first byte, so a page is
/// found as `segment + index * size_of::<Page>()`: `free` needs no offset added. (A 128-byte
/// `Page`, found with a shift, costs no fewer instructions, and would change [`INFO_SIZE`],
/// which traces recorded before it was written into them depend on.)
#[repr(C)]
pub struct Segment {
    pub(crate) pages: [Page; SMALL_PAGES_PER_SEGMENT],
    /// Owning thread (see [`crate::heap::thread_id`]); 0 while abandoned.
    pub(crate) thread_id: AtomicUsize,
    /// Number of pages.
    pub(crate) capacity: usize,
    /// Pages handed to a heap.
    pub(crate) used: AtomicUsize,
    /// Pages whose heap exited (the segment is abandoned when `abandoned == used`).
    pub(crate) abandoned: usize,
    /// Bytes mapped.
    pub(crate) segment_size: usize,
    pub(crate) purged_bytes: usize,
    /// Bytes from the segment's start that blocks may have touched since it was mapped (so may
    /// be resident): what a block placed below it finds already faulted in when the segment is
    /// reused from the cache.
    pub(crate) touched: usize,
    /// A large segment's free slots, bit `i` for slot `i` (see [`span_alloc`]).
    pub(crate) free_slots: u64,
    /// No free page of the segment is purged before this time (milliseconds, [`os::clock_ms`]):
    /// a purge delay after the last page it freed ([`page_free`]). A segment that keeps freeing
    /// pages is busy, and hands them out again: purged one delay after its own free, a page's
    /// memory was faulted in again soon after, and each `madvise` of a program with threads on
    /// several cores is a TLB shootdown on each of them. The LD_PRELOAD suite's `stress` made
    /// 30 k of them, and those IPIs were a fifth of its samples (perf). Held (as mimalloc extends
    /// a segment's purge while it frees), the segment's free pages go back together once it is
    /// quiet. `stress` took 0.51-0.53 s instead of 0.57-0.59, `threadex-1m` 0.37-0.43 s instead
    /// of 0.46-0.49, at peak RSS 103-107 and 51-53 MiB instead of 75-89 and 40-42 (mimalloc's:
    /// 474-493 and 219-343).
    pub(crate) purge_hold_ms: u64,
    /// Links in the owner's queue of segments with free pages.
    pub(crate) next: *mut Segment,
    pub(crate) prev: *mut Segment,
    /// Links in the registry of live segments ([`segment_map`]).
    pub(crate) all_next: *mut Segment,
    pub(crate) all_prev: *mut Segment,
    /// Links in the global list of abandoned segments (under its lock).
    pub(crate) abandoned_next: *mut Segment,
    pub(crate) abandoned_prev: *mut Segment,
    // The bytes together, so the header stays within INFO_SIZE.
    pub(crate) kind: PageKind,
    /// `(p - segment) >> page_shift` is the page index (63 for one-page segments).
    pub(crate) page_shift: u8,
    pub(crate) in_free_queue: bool,
    pub(crate) is_abandoned: bool,
    /// Whether the trace knows this segment: its pages belong to a traced heap, or were
    /// abandoned by one. Set by its owner (at allocation, reclaim, and when its thread turns
    /// tracing on or off), read by any thread that frees into it (whether to report the free)
    /// and by the census (whether to list it). A segment an untraced thread abandoned stays
    /// unknown until a traced thread takes it over and reports its pages (`hook::adopt_segment`).
    pub(crate) traced: AtomicBool,
}

/// Bytes at the start of every segment taken by its header (a multiple of 64).
pub const INFO_SIZE: usize = core::mem::size_of::<Segment>().next_multiple_of(64);
const _: () = assert!(INFO_SIZE < SMALL_PAGE_SIZE / 4, "segment header too large");
const _: () = assert!(core::mem::offset_of!(Segment, pages) == 0, "pages first");
// Traces recorded before the geometry was written into them were read with this header size.
const _: () = assert!(INFO_SIZE == 7296, "the segment header size changed");
// Bounded overhead: the metadata of a segment is at most 2% of it (checked when compiling).
const _: () = assert!(INFO_SIZE * 50 <= SEGMENT_SIZE, "segment metadata over 2%");

impl Segment {
    /// Kind of the pages in this segment.
    pub fn kind(&self) -> PageKind {
        self.kind
    }
    /// Number of pages.
    pub fn page_count(&self) -> usize {
        self.capacity
    }
    /// Pages in use.
    pub fn used_pages(&self) -> usize {
        self.used.load(Relaxed)
    }
    /// Bytes mapped for this segment.
    pub fn size(&self) -> usize {
        self.segment_size
    }
    /// Owning thread id; 0 when abandoned.
    pub fn thread_id(&self) -> usize {
        self.thread_id.load(Relaxed)
    }
    /// The `i`th page's metadata.
    pub fn page(&self, i: usize) -> &Page {
        &self.pages[i]
    }
}

/// The segment holding `p` (a pointer that heaplens returned).
#[inline(always)]
pub fn segment_of(p: *const u8) -> *mut Segment {
    ((p as usize).wrapping_sub(1) & !SEGMENT_MASK) as *mut Segment
}

/// The page holding `p` in `segment`.
///
/// # Safety
/// `segment` is `segment_of(p)` for a pointer `p` that heaplens returned.
#[inline(always)]
pub unsafe fn page_of(segment: *mut Segment, p: *const u8) -> *mut Page {
    // SAFETY: for a pointer heaplens returned the index is below the segment's page count, and
    // the header is readable while the block is live.
    unsafe {
        let idx = (p as usize - segment as usize) >> (*segment).page_shift;
        segment.cast::<Page>().add(idx)
    }
}

/// Whether the calling thread owns `segment` (its `thread_id` is the caller's
/// [`crate::heap::thread_id`]): `free`'s first test. On x86-64 one compare of the thread pointer
/// against the header word and a jump (LLVM loads an atomic into a register before comparing it).
///
/// # Safety
/// `segment`'s header is mapped.
#[inline(always)]
pub(crate) unsafe fn is_owned_by_caller(segment: *const Segment) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        'owned: {
            // SAFETY: the header is mapped (the contract); a compare against an aligned word in
            // memory is a relaxed atomic load of `thread_id` on x86-64, and writes nothing but
            // the flags register.
            unsafe {
                core::arch::asm!(
                    "cmp {tid}, qword ptr [{segment} + {offset}]",
                    "je {owned}",
                    tid = in(reg) crate::heap::thread_id(),
                    segment = in(reg) segment,
                    offset = const core::mem::offset_of!(Segment, thread_id),
                    owned = label { break 'owned true },
                    options(nostack, readonly),
                );
            }
            false
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: the header is mapped (the contract).
    unsafe {
        (*segment).thread_id.load(Relaxed) == crate::heap::thread_id()
    }
}

/// The segment whose header holds `page`.
#[inline]
pub(crate) fn segment_of_page(page: *const Page) -> *mut Segment {
    ((page as usize) & !SEGMENT_MASK) as *mut Segment
}

/// A thread's segments that have a free page, one queue per page kind.
#[repr(C)]
pub struct SegmentQueue {
    first: *mut Segment,
    last: *mut Segment,
}

impl SegmentQueue {
    const fn new() -> Self {
        Self {
            first: ptr::null_mut(),
            last: ptr::null_mut(),
        }
    }

    unsafe fn push(&mut self, s: *mut Segment) {
        // SAFETY: owner-only links; `s` is not in a queue.
        unsafe {
            (*s).next = ptr::null_mut();
            (*s).prev = self.last;
            if self.last.is_null() {
                self.first = s;
            } else {
                (*self.last).next = s;
            }
            self.last = s;
            (*s).in_free_queue = true;
        }
    }

    unsafe fn push_front(&mut self, s: *mut Segment) {
        // SAFETY: owner-only links; `s` is not in a queue.
        unsafe {
            (*s).prev = ptr::null_mut();
            (*s).next = self.first;
            if self.first.is_null() {
                self.last = s;
            } else {
                (*self.first).prev = s;
            }
            self.first = s;
            (*s).in_free_queue = true;
        }
    }

    unsafe fn remove(&mut self, s: *mut Segment) {
        // SAFETY: `s` is in this queue; owner-only links.
        unsafe {
            let (prev, next) = ((*s).prev, (*s).next);
            if prev.is_null() {
                self.first = next;
            } else {
                (*prev).next = next;
            }
            if next.is_null() {
                self.last = prev;
            } else {
                (*next).prev = prev;
            }
            (*s).next = ptr::null_mut();
            (*s).prev = ptr::null_mut();
            (*s).in_free_queue = false;
        }
    }
}

/// Per-thread segment state, kept in the heap.
#[repr(C)]
pub struct SegmentsTld {
    small: SegmentQueue,
    medium: SegmentQueue,
    /// Large segments, whether or not a span of the size wanted is free in them.
    large: SegmentQueue,
    /// Earliest time a free page of these segments may be purged; 0 when none waits.
    pub(crate) next_purge_ms: u64,
    /// How long this thread's free memory waits before it is purged.
    pub(crate) purge_delay: PurgeDelay,
}

impl SegmentsTld {
    pub(crate) const fn new() -> Self {
        Self {
            small: SegmentQueue::new(),
            medium: SegmentQueue::new(),
            large: SegmentQueue::new(),
            next_purge_ms: 0,
            purge_delay: PurgeDelay::new(),
        }
    }

    fn queue(&mut self, kind: PageKind) -> Option<&mut SegmentQueue> {
        match kind {
            PageKind::Small => Some(&mut self.small),
            PageKind::Medium => Some(&mut self.medium),
            PageKind::Large => Some(&mut self.large),
            PageKind::Huge => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pages from segments

/// Hands `heap` a page for blocks of `block_size` bytes (small, medium or large), from a segment
/// with a free page (for a large page, a free span), a reclaimed segment, or a new one. Null
/// when out of memory.
///
/// # Safety
/// `heap` is the calling thread's heap.
pub(crate) unsafe fn page_alloc(heap: *mut Heap, block_size: usize) -> *mut Page {
    let kind = PageKind::for_block_size(block_size);
    // SAFETY: the heap and its tld belong to the calling thread.
    unsafe {
        let tld = &raw mut (*heap).tld;
        if kind == PageKind::Large {
            return span_alloc(heap, block_size);
        }
        if (*tld).queue(kind).is_some_and(|q| q.first.is_null()) {
            reclaim_abandoned(heap);
        }
        let mut s = (*tld).queue(kind).map_or(ptr::null_mut(), |q| q.first);
        if s.is_null() {
            s = segment_alloc(heap, kind, SEGMENT_SIZE, 0);
            if s.is_null() {
                return ptr::null_mut();
            }
        }
        let Some(idx) = (0..(*s).capacity).find(|&i| !(*s).pages[i].is_in_use()) else {
            return ptr::null_mut(); // unreachable: segments in the queue have a free page
        };
        take_page(tld, s, idx)
    }
}

/// A page of its own segment for one huge block of `size` bytes whose start is aligned to `align`.
///
/// # Safety
/// `heap` is the calling thread's heap.
pub(crate) unsafe fn huge_page_alloc(heap: *mut Heap, size: usize, align: usize) -> *mut Page {
    // SAFETY: as for `page_alloc`.
    unsafe {
        let s = segment_alloc(heap, PageKind::Huge, size, align);
        if s.is_null() {
            ptr::null_mut()
        } else {
            take_page(&raw mut (*heap).tld, s, 0)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Large pages: spans of slots
//
// A large segment is cut into 64 slots of `SMALL_PAGE_SIZE`, as a small one is into pages, and
// a large page is a *span*: a run of free slots that holds one block, its page metadata in the
// span's first slot (so `page_of` of the block's start finds it). A freed span's slots serve a
// block of any size again, where a large page that held blocks of one size class only served
// that class (mimalloc 2's spans; `large`, blocks of 64 KiB..8 MiB replaced at random, faulted
// in 46.6 k pages with those pages, and discarded 55 MiB of them to keep its peak RSS down).
// Slot 0 shares its 64 KiB with the segment header and takes no span: a block at a slot's start
// is aligned to 64 KiB, so the address an aligned allocation hands out (up to 64 KiB alignment)
// is always the block's start, in the span's first slot.

/// The first slot a span may start at.
const FIRST_SPAN_SLOT: usize = 1;

/// Whether a block of `total` bytes holding an `align`-aligned allocation inside it may come from
/// a page of a size class: beyond 64 KiB of alignment, the address handed out could lie past
/// the first slot of a large page's span, where `page_of` would not find the page (a huge page
/// then, whose single block starts aligned).
pub(crate) const fn aligned_fits_a_page(total: usize, align: usize) -> bool {
    total <= crate::MEDIUM_OBJ_SIZE_MAX
        || (total <= crate::LARGE_OBJ_SIZE_MAX && align <= SMALL_PAGE_SIZE)
}

/// Slots a large page for blocks of `block_size` bytes takes (the model reads a large page's
/// span with it too).
pub const fn span_slots(block_size: usize) -> usize {
    block_size.div_ceil(SMALL_PAGE_SIZE)
}

/// Slots the page of slot `page` covers: its span's if it is a large page in use, else 1.
///
/// # Safety
/// `page` is a page of `s`, which the calling thread owns (or holds the abandoned list's lock
/// while `s` is on it).
unsafe fn slots_of(s: *const Segment, page: *const Page) -> usize {
    // SAFETY: owner-only segment and page state.
    unsafe {
        if (*s).kind == PageKind::Large && (*page).is_in_use() {
            (*page).area / SMALL_PAGE_SIZE
        } else {
            1
        }
    }
}

/// The shortest run of at least `k` (at least 1) set bits in `free`, as `(start, length)`: the
/// free slots that fit a span of `k` best. The best fit, not the first: a run of exactly `k` is
/// most often the span a block of that size just left, whose pages the program touched (as
/// mimalloc, which takes the span freed last of the size), where the first fit would hand out
/// untouched memory. `threadex 1 20` (blocks up to 1 MiB of which the program touches the
/// first and last word, exchanged between threads) faulted in 150-157 k pages in 0.88-0.91 s,
/// against 172-182 k in 1.08-1.15 s with the first fit (mimalloc: 90 k, 0.77-0.83 s).
fn best_span(free: u64, k: usize) -> Option<(usize, usize)> {
    let (mut rest, mut best): (u64, Option<(usize, usize)>) = (free, None);
    while rest != 0 {
        let start = rest.trailing_zeros() as usize;
        let len = (!(rest >> start)).trailing_zeros() as usize;
        if len >= k && best.is_none_or(|(_, l)| len < l) {
            best = Some((start, len));
            if len == k {
                break;
            }
        }
        rest &= !span_bits(start, len);
    }
    best
}

/// Bits `idx..idx + k` (`1 <= k`, `idx + k <= 64`): the slots of a span.
const fn span_bits(idx: usize, k: usize) -> u64 {
    (u64::MAX >> (64 - k)) << idx
}

/// How many of its large segments with room for a span a thread looks at for the best fit: each
/// costs a cache miss on its header, and a thread of `threadex 1 20` held dozens (blocks of
/// exited threads live on in a shared table); the segments whose spans were freed last come
/// first, and hold the exact fits. There, the samples in `page_alloc` went from 7.2 % (all
/// segments looked at, in queue order) to 5.6 % (freed ones first) and 4.3 % (and at most four);
/// the wall time did not move beyond the machine's noise (6 pairs, 1.00x).
const SPAN_CANDIDATES: usize = 4;

/// The free slots of this thread's large segments that fit a span of `k` slots best
/// ([`best_span`]): the segment and the span's first slot.
///
/// # Safety
/// `tld` is the calling thread's.
unsafe fn find_span(tld: *mut SegmentsTld, k: usize) -> Option<(*mut Segment, usize)> {
    // SAFETY: the thread's own queue of large segments.
    unsafe {
        let mut s = (*tld).large.first;
        let mut best: Option<(*mut Segment, usize, usize)> = None;
        let mut fits = 0;
        while !s.is_null() && fits < SPAN_CANDIDATES {
            if let Some((i, len)) = best_span((*s).free_slots, k) {
                fits += 1;
                if best.is_none_or(|(_, _, l)| len < l) {
                    best = Some((s, i, len));
                    if len == k {
                        break;
                    }
                }
            }
            s = (*s).next;
        }
        best.map(|(s, i, _)| (s, i))
    }
}

/// A large page for one block of `block_size` bytes: a span of free slots in one of this thread's
/// large segments, in a reclaimed one, or in a new one.
///
/// # Safety
/// `heap` is the calling thread's heap.
unsafe fn span_alloc(heap: *mut Heap, block_size: usize) -> *mut Page {
    // SAFETY: the heap and its tld belong to the calling thread.
    unsafe {
        let tld = &raw mut (*heap).tld;
        let k = span_slots(block_size);
        let mut found = find_span(tld, k);
        if found.is_none() && ABANDONED_COUNT.load(Relaxed) > 0 && reclaim_abandoned(heap) > 0 {
            found = find_span(tld, k);
        }
        let (s, idx) = match found {
            Some(at) => at,
            None => {
                let s = segment_alloc(heap, PageKind::Large, block_size, 0);
                if s.is_null() {
                    return ptr::null_mut();
                }
                (s, FIRST_SPAN_SLOT)
            }
        };
        let mut zero = true;
        for i in idx + 1..idx + k {
            let slot = &raw mut (*s).pages[i];
            recommit(tld, s, slot);
            zero &= (*slot).is_zero_init;
        }
        let page = take_page(tld, s, idx);
        (*page).is_zero_init &= zero;
        (*page).area = k * SMALL_PAGE_SIZE;
        (*s).free_slots &= !span_bits(idx, k);
        page
    }
}

/// Gives the slots after the first of large page `page` back to its segment as free slots (the
/// first one [`page_free`] frees as any page), due to be purged at `due` as the first.
///
/// # Safety
/// The calling thread owns the page's segment `s`; the page holds no live blocks.
unsafe fn span_free(s: *mut Segment, page: *mut Page, due: u64) {
    // SAFETY: owner-only segment and page state.
    unsafe {
        let (idx, k) = (usize::from((*page).index), slots_of(s, page));
        for i in idx + 1..idx + k {
            let slot = &raw mut (*s).pages[i];
            (*slot).is_zero_init = false;
            (*slot).purge_at_ms = due;
        }
        (*page).area = SMALL_PAGE_SIZE;
        (*s).free_slots |= span_bits(idx, k);
    }
}

/// The purge time a purged page of a reclaimed segment is given: long before any purge the new
/// owner made, so that taking it again is not counted against that owner's purge delay (and not
/// 0, which says the page was never used).
const PURGED_BY_ANOTHER: u64 = 1;

/// Commits a free page (or slot) of `s` again if it was purged, reports it, and counts it
/// against the purge delay of `tld`'s thread.
///
/// # Safety
/// The calling thread owns `s` and `tld`; `page` is a free page of `s`.
unsafe fn recommit(tld: *mut SegmentsTld, s: *mut Segment, page: *mut Page) {
    // SAFETY: the contract.
    unsafe {
        if (*page).is_purged {
            (*page).is_purged = false;
            (*page).is_zero_init = true;
            let (p, len) = purge_range(page);
            (*s).purged_bytes -= len;
            os::recommit(len);
            // `purge_at_ms` is when it was purged (`purge_page`), or `PURGED_BY_ANOTHER`.
            (*tld)
                .purge_delay
                .retaken(len, (*page).purge_at_ms, os::clock_ms());
            if hook::enabled() {
                hook::emit_current(schema::OsCommit {
                    addr: p as u64,
                    bytes: len as u64,
                    flags: 0,
                });
            }
        }
    }
}

unsafe fn take_page(tld: *mut SegmentsTld, s: *mut Segment, idx: usize) -> *mut Page {
    // SAFETY: the calling thread owns `s`; page `idx` is free.
    unsafe {
        let page = &raw mut (*s).pages[idx];
        (*page).in_use.store(true, Relaxed);
        recommit(tld, s, page);
        let used = (*s).used.load(Relaxed) + 1;
        (*s).used.store(used, Relaxed);
        if used == (*s).capacity
            && (*s).in_free_queue
            && let Some(q) = (*tld).queue((*s).kind)
        {
            q.remove(s);
        }
        page
    }
}

/// Gives an empty page back to its segment, and the segment back when it empties.
///
/// # Safety
/// The calling thread owns the page's segment; the page holds no live blocks and is in no queue.
pub(crate) unsafe fn page_free(tld: *mut SegmentsTld, page: *mut Page) {
    // SAFETY: owner-only segment state.
    unsafe {
        let s = segment_of_page(page);
        if hook::enabled() {
            hook::emit_current(schema::PageFree {
                start: (*page).start as u64,
                flags: 0,
            });
        }
        let due = os::clock_ms() + (*tld).purge_delay.delay_ms();
        // The segment is busy: none of its free pages goes back to the OS before it has freed
        // no page for a whole delay (see `Segment::purge_hold_ms`).
        (*s).purge_hold_ms = due;
        if (*s).kind == PageKind::Large {
            let carved = (*page).capacity() as usize * (*page).block_size();
            let end = ((*page).start as usize - s as usize).saturating_add(carved);
            (*s).touched = (*s).touched.max(end);
            span_free(s, page, due);
        }
        (*page).in_use.store(false, Relaxed);
        (*page).heap.store(ptr::null_mut(), Relaxed);
        (*page).free = ptr::null_mut();
        (*page).local_free = ptr::null_mut();
        (*page).capacity.store(0, Relaxed);
        (*page).used.store(0, Relaxed);
        (*page).local_free_count.store(0, Relaxed);
        (*page).reserved.store(0, Relaxed);
        (*page).is_zero_init = false;
        (*page).purge_at_ms = due;
        let used = (*s).used.load(Relaxed) - 1;
        (*s).used.store(used, Relaxed);
        if used == 0 {
            segment_free(tld, s);
            return;
        }
        if (*s).abandoned > 0 {
            abandon_if_complete(tld, s); // its thread is exiting: this was the last page in use
            return;
        }
        (*tld).next_purge_ms = earliest((*tld).next_purge_ms, (*page).purge_at_ms);
        if (*s).kind == PageKind::Large {
            // First in the queue: `find_span` looks at it first, and the span just freed, its
            // memory resident, is most often the one that fits the next block exactly.
            if (*s).in_free_queue {
                (*tld).large.remove(s);
            }
            (*tld).large.push_front(s);
        } else if !(*s).in_free_queue
            && let Some(q) = (*tld).queue((*s).kind)
        {
            q.push(s);
        }
    }
}

/// The OS-page-aligned part of a page's area: what a purge can give back.
unsafe fn purge_range(page: *mut Page) -> (*mut u8, usize) {
    let ps = os::page_size();
    // SAFETY: reads the page's constant geometry.
    let (start, area) = unsafe { ((*page).start as usize, (*page).area) };
    let lo = start.next_multiple_of(ps);
    let hi = (start + area) & !(ps - 1);
    (lo as *mut u8, hi.saturating_sub(lo))
}

/// Marks the free `page` purged at `now`: zeroes the partial OS pages at either end of its area,
/// reports the purge and counts it (against `delay`, the purge delay of the segment's owner, if
/// not null), and returns the whole OS pages `(address, bytes)` that the caller gives
/// back to the OS (with [`os::purge`], together with adjacent pages' ranges in one call).
///
/// # Safety
/// The page is free and its segment owned by the calling thread (or abandoned, with the abandoned
/// list's lock held, or taken off that list).
unsafe fn purge_page(
    s: *mut Segment,
    page: *mut Page,
    now: u64,
    delay: *mut PurgeDelay,
) -> (*mut u8, usize) {
    // SAFETY: see the contract: nobody else touches a free page's memory.
    unsafe {
        let (p, len) = purge_range(page);
        // The OS takes whole pages only: zero the partial ones at either end (page 0 starts
        // right after the header), so that a purged page really reads as zero.
        let (start, end) = ((*page).start, (*page).start.add((*page).area));
        if len == 0 {
            ptr::write_bytes(start, 0, (*page).area);
        } else {
            ptr::write_bytes(start, 0, p as usize - start as usize);
            ptr::write_bytes(p.add(len), 0, end as usize - (p as usize + len));
            if hook::enabled() {
                hook::emit_current(schema::OsPurge {
                    addr: p as u64,
                    bytes: len as u64,
                    flags: 0,
                });
            }
        }
        (*page).is_purged = true;
        // Until the page is freed again, its purge time: how soon `recommit` takes it again.
        (*page).purge_at_ms = now;
        (*s).purged_bytes += len;
        match delay.as_mut() {
            Some(delay) => delay.purged(len, now),
            None => purge_delay::count_purged(len),
        }
        (p, len)
    }
}

/// Runs of adjacent memory to purge, given back to the OS in one `madvise` each: a segment whose
/// 64 small pages all come due at once costs one system call, not 64.
struct PurgeRun {
    start: usize,
    len: usize,
}

impl PurgeRun {
    const fn new() -> Self {
        Self { start: 0, len: 0 }
    }

    /// Adds `p..p + len`; a range that does not continue the run purges the run first.
    ///
    /// # Safety
    /// As [`PurgeRun::flush`], for the run and for the range added.
    unsafe fn add(&mut self, p: *mut u8, len: usize) {
        if len == 0 {
            return;
        }
        if self.len > 0 && self.start + self.len == p as usize {
            self.len += len;
            return;
        }
        // SAFETY: forwarded.
        unsafe { self.flush() };
        self.start = p as usize;
        self.len = len;
    }

    /// Gives the run back to the OS.
    ///
    /// # Safety
    /// The run is memory of free pages of a segment the caller may purge (see [`purge_page`]).
    unsafe fn flush(&mut self) {
        if self.len > 0 {
            // SAFETY: the contract.
            unsafe { os::purge(self.start as *mut u8, self.len) };
            self.len = 0;
        }
    }
}

/// Purges the free pages of this thread's segments whose delay has passed.
///
/// # Safety
/// `tld` is the calling thread's.
pub(crate) unsafe fn purge_expired(tld: *mut SegmentsTld, now: u64) {
    // SAFETY: walks the calling thread's own segment queues.
    unsafe {
        let mut next_due = 0u64;
        for q in [
            &raw mut (*tld).small,
            &raw mut (*tld).medium,
            &raw mut (*tld).large,
        ] {
            let mut s = (*q).first;
            while !s.is_null() {
                next_due = earliest(next_due, purge_segment(s, now, &raw mut (*tld).purge_delay));
                s = (*s).next;
            }
        }
        (*tld).next_purge_ms = next_due;
    }
}

/// Purges the free pages of `s` whose delay has passed, once the segment has freed no page for a
/// delay ([`Segment::purge_hold_ms`]; `now == 0` purges none); returns when the next of the others
/// is due (0: none). Pages never used since the segment was mapped hold no memory and are skipped.
/// The purges count against `delay`, the owner's purge delay (null: an abandoned segment's).
///
/// # Safety
/// The calling thread owns `s` and `delay`, or holds the abandoned list's lock while `s` is on
/// it (or took it off) and passes a null `delay`.
unsafe fn purge_segment(s: *mut Segment, now: u64, delay: *mut PurgeDelay) -> u64 {
    let mut next_due = 0;
    let mut run = PurgeRun::new();
    // SAFETY: see the contract; free pages are touched by no one else.
    unsafe {
        let hold = (*s).purge_hold_ms;
        let mut i = 0;
        while i < (*s).capacity {
            let page = &raw mut (*s).pages[i];
            i += slots_of(s, page); // a large page's span holds its block in all its slots
            if (*page).is_in_use() || (*page).is_purged || (*page).purge_at_ms == 0 {
                continue;
            }
            let due = (*page).purge_at_ms.max(hold);
            if due <= now {
                let (p, len) = purge_page(s, page, now, delay);
                run.add(p, len);
            } else {
                next_due = earliest(next_due, due);
            }
        }
        run.flush();
    }
    next_due
}

/// When the next free page of `s` is due to be purged (0: none); purges nothing.
///
/// # Safety
/// As [`purge_segment`].
unsafe fn purge_due(s: *mut Segment) -> u64 {
    // SAFETY: forwarded; with `now == 0` no page is purged.
    unsafe { purge_segment(s, 0, ptr::null_mut()) }
}

/// The earlier of two due times, where 0 means "none".
fn earliest(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

// ---------------------------------------------------------------------------------------------
// Segments from the OS

/// Empty segments kept for reuse, so a program that frees and re-allocates a working set does not
/// pay a `mmap` and its page faults each time: regular segments, and huge segments up to
/// [`CACHE_HUGE_MAX`], holding at most [`cache_limit`] bytes touched in all. Their touched memory
/// goes back to the OS `2 * purge_delay_ms` after they arrive (memory the program does not take
/// again soon does not stay resident), and they are unmapped `10 * purge_delay_ms` after.
struct SegmentCache {
    entries: [CacheEntry; CACHE_SLOTS],
    len: usize,
    /// Bytes mapped.
    bytes: usize,
    /// Bytes touched ([`CacheEntry::touched`]): what the cache may hold resident.
    touched: usize,
}
#[derive(Clone, Copy)]
struct CacheEntry {
    addr: usize,
    /// Bytes mapped.
    size: usize,
    /// When its touched memory goes back to the OS (milliseconds, [`os::clock_ms`]): it stays
    /// mapped, for reuse without a `mmap`, until `expiry`.
    purge_at: u64,
    /// When it is unmapped.
    expiry: u64,
    /// [`Segment::touched`].
    touched: usize,
    /// The touched bytes it gave back to the OS (once `touched` is 0): their purge time is
    /// `purge_at`.
    purged: usize,
    /// The heap that cached it ([`PurgeDelay::owner`]): its purge delay answers for the purge
    /// when that thread takes the segment again.
    owner: u32,
}
const EMPTY_ENTRY: CacheEntry = CacheEntry {
    addr: 0,
    size: 0,
    purge_at: 0,
    expiry: 0,
    touched: 0,
    purged: 0,
    owner: 0,
};
/// Segments the cache holds at most. Its bytes are bounded by the heap (`cache_limit`); this
/// bounds its entries. 16 were too few for threads that come and go exchanging big blocks: the
/// LD_PRELOAD suite's `threadex-1m` mapped 789 segments in one run and unmapped as many (each
/// `munmap` a TLB shootdown, each new segment faulted in anew), against mimalloc's 62 `mmap`
/// calls. With 64: 457 and 790 calls, `threadex 1 20` 0.83x the time and `stress` 0.95x
/// (`farm-bench -n 10`), peak RSS 60 against 56 MiB and 118 against 105 (mimalloc's 235 and
/// 472).
const CACHE_SLOTS: usize = 64;
/// Cached segments keep their touched memory this many purge delays before it goes back to the OS.
const CACHE_PURGE_DELAYS: u64 = 2;
const CACHE_HUGE_MAX: usize = 32 << 20;
/// The largest cached segment a large page may take (see `segment_alloc`).
const LARGE_REUSE_MAX: usize = 2 * SEGMENT_SIZE;
const CACHE_BYTES_MAX: usize = 128 << 20;
/// Huge segments are sized in these steps, so blocks of similar sizes can reuse each other's. It is
/// the transparent huge page size: a segment that ended inside a huge page would fault its tail in
/// 4 KiB pages, each fault costing about three times as much per byte as zeroing a huge page.
const HUGE_GRANULE: usize = 2 << 20;
static CACHE: SpinLock<SegmentCache> = SpinLock::new(SegmentCache {
    entries: [EMPTY_ENTRY; CACHE_SLOTS],
    len: 0,
    bytes: 0,
    touched: 0,
});
/// Earliest expiry in the cache (0: empty), read without the lock.
static CACHE_NEXT_EXPIRY: AtomicU64 = AtomicU64::new(0);

impl SegmentCache {
    fn remove(&mut self, i: usize) -> CacheEntry {
        let e = self.entries[i];
        self.len -= 1;
        self.entries[i] = self.entries[self.len];
        self.bytes -= e.size;
        self.touched -= e.touched;
        self.update_next();
        e
    }

    /// Sets [`CACHE_NEXT_EXPIRY`] to the earliest purge or expiry due.
    fn update_next(&self) {
        let next = self.entries[..self.len]
            .iter()
            .map(|e| if e.touched > 0 { e.purge_at } else { e.expiry })
            .min()
            .unwrap_or(0);
        CACHE_NEXT_EXPIRY.store(next, Relaxed);
    }
}

/// Purges the touched memory of cached segments whose purge time has come, and unmaps those whose
/// expiry has. A purge is done under the cache's lock, so no thread can take the segment
/// meanwhile; it stays counted committed, like the rest of the cached segment (the viewer counts
/// it cached until the segment is unmapped). The purges of segments the calling thread cached
/// count against its purge delay `me`.
pub(crate) fn cache_expire(now: u64, me: &mut PurgeDelay) {
    let next = CACHE_NEXT_EXPIRY.load(Relaxed);
    if next == 0 || next > now {
        return;
    }
    let mut expired = [(0usize, 0usize); CACHE_SLOTS];
    let mut n = 0;
    {
        let mut c = CACHE.lock();
        let mut i = 0;
        while i < c.len {
            let e = c.entries[i];
            if e.expiry <= now {
                c.remove(i);
                expired[n] = (e.addr, e.size);
                n += 1;
                continue;
            }
            if e.touched > 0 && e.purge_at <= now {
                // SAFETY: a cached segment is unused, and the lock keeps it from being taken;
                // its header is rewritten when it is.
                unsafe { os::discard(e.addr as *mut u8, e.touched) };
                me.purged_of(e.owner, e.touched, now);
                c.touched -= e.touched;
                c.entries[i] = CacheEntry {
                    touched: 0,
                    purged: e.touched,
                    purge_at: now,
                    ..e
                };
            }
            i += 1;
        }
        c.update_next();
    }
    unmap_cached(&expired[..n]);
}

/// Unmaps segments taken out of the cache: (address, bytes).
fn unmap_cached(segments: &[(usize, usize)]) {
    for &(addr, size) in segments {
        // SAFETY: cached segments are whole, unregistered mappings that nothing references.
        unsafe { os::free(addr as *mut u8, size, 0) };
        if hook::enabled() {
            // The segment's memory leaves the process: the viewer stops counting it as cached.
            hook::emit_current(schema::OsPurge {
                addr: addr as u64,
                bytes: size as u64,
                flags: 0,
            });
        }
    }
}

/// A cached segment of `min..=max` bytes for a block that reaches `want` bytes past the segment's
/// start, or null. Preferred: one whose touched memory already covers `want` (no page faults),
/// the smallest such; else the one with the most memory touched. What the block will touch of
/// memory the cache gave back counts against the purge delay `me` of the calling thread, if it
/// cached the segment.
fn cache_pop(min: usize, max: usize, want: usize, me: &mut PurgeDelay) -> Option<CacheEntry> {
    if CACHE_NEXT_EXPIRY.load(Relaxed) == 0 {
        return None;
    }
    let mut c = CACHE.lock();
    let best = (0..c.len)
        .filter(|&i| (min..=max).contains(&c.entries[i].size))
        .min_by_key(|&i| {
            let e = &c.entries[i];
            if e.touched >= want {
                (0, e.size, e.touched)
            } else {
                (1, usize::MAX - e.touched, e.size)
            }
        });
    let taken = best.map(|i| c.remove(i));
    drop(c);
    if let Some(e) = taken {
        me.retaken_of(e.owner, e.purged.min(want), e.purge_at, os::clock_ms());
    }
    taken
}

/// How many touched bytes the cache may hold when it maps `cached` bytes: a multiple of the
/// memory the heap has committed besides the cache ([`CACHE_HEAP_TIMES`]), at least one segment,
/// at most [`CACHE_BYTES_MAX`]. Cached memory stays resident until it is purged, so a fixed bound
/// (it was 128 MiB) let a program whose heap is 30 MiB peak at 1.5 times that; bounded by the
/// heap, a program that replaces big blocks still finds most of them in the cache. What counts
/// is touched memory, not mapped: a segment whose large block was 200 KiB holds 200 KiB
/// resident, not 4 MiB.
fn cache_limit(cached: usize) -> usize {
    let heap = os::COMMITTED.load(Relaxed).saturating_sub(cached);
    heap.saturating_mul(CACHE_HEAP_TIMES)
        .clamp(SEGMENT_SIZE, CACHE_BYTES_MAX)
}
/// The cache holds at most this many times the heap's other committed memory, counted in
/// touched bytes. The suite's `large` (blocks of 64 KiB..8 MiB replaced at random) faulted in
/// 162 k pages with a quarter, 116 k with a third, 74 k with a half and 62 k with once the heap
/// (mimalloc 33 k), at the same peak RSS (129 MiB, mimalloc's 132 MiB), while a large page filled
/// a segment. Since large pages are spans of a segment's slots, large blocks take a few segments
/// instead of one each, so the heap besides the cache is smaller for the same blocks: once the
/// heap, `large` faulted in 53 k pages and ran 1.4x mimalloc's time; twice, 32.5 k and 1.0x, its
/// peak RSS 125 MiB both, and no other workload of `c_suite` moved its peak RSS.
/// The purge after `2 * purge_delay_ms` keeps python3 (growing dicts and lists through large
/// blocks it does not take again) near mimalloc's peak RSS: 1.22x without it, 1.10x after
/// `3 * purge_delay_ms`; after one delay `large` faulted in 140 k pages instead of 85 k. (See
/// also [`LARGE_REUSE_MAX`].)
const CACHE_HEAP_TIMES: usize = 2;

/// Caches an empty segment of `size` bytes with `touched` bytes touched, for its purge after the
/// calling thread's purge delay `me`; false when it does not fit.
fn cache_push(s: *mut Segment, size: usize, touched: usize, me: &mut PurgeDelay) -> bool {
    let now = os::clock_ms();
    let (delay, owner) = (me.delay_ms().max(1), me.owner());
    let mut c = CACHE.lock();
    if c.len == CACHE_SLOTS || size > CACHE_HUGE_MAX || c.touched + touched > cache_limit(c.bytes) {
        return false;
    }
    let len = c.len;
    c.entries[len] = CacheEntry {
        addr: s as usize,
        size,
        purge_at: now + CACHE_PURGE_DELAYS * delay,
        expiry: now + 10 * delay,
        touched,
        purged: 0,
        owner,
    };
    c.len += 1;
    c.bytes += size;
    c.touched += touched;
    let next = CACHE_NEXT_EXPIRY.load(Relaxed);
    if next == 0 || now + CACHE_PURGE_DELAYS * delay < next {
        CACHE_NEXT_EXPIRY.store(now + CACHE_PURGE_DELAYS * delay, Relaxed);
    }
    true
}

/// Allocates and initialises a segment owned by `heap`'s thread. For `Huge`, `size` is the block
/// size and `align` its alignment; the block starts at the single page's `start`. For `Large`,
/// `size` is the block size (a cached segment whose touched memory covers it is preferred).
unsafe fn segment_alloc(
    heap: *mut Heap,
    kind: PageKind,
    size: usize,
    align: usize,
) -> *mut Segment {
    // An untraced thread (the collector) keeps out of the shared cache while the hook records:
    // what it took or unmapped there would not be recorded.
    // SAFETY: the calling thread's heap.
    let shared = unsafe { hook::records(heap) };
    // SAFETY: the calling thread's heap.
    let me = unsafe { &mut (*heap).tld.purge_delay };
    if shared {
        cache_expire(os::clock_ms(), me);
    }
    let (s, segment_size, first_start, is_zero, touched) = if kind == PageKind::Huge {
        // A cached huge segment serves a block that fits with at most its own size to spare and
        // whose alignment its block start already has.
        let need = INFO_SIZE
            .checked_add(size)
            .and_then(|n| os::align_up(n, HUGE_GRANULE));
        let cached = match need {
            // its block starts at `segment + INFO_SIZE`, and the segment is SEGMENT_SIZE-aligned
            Some(need) if shared && INFO_SIZE.is_multiple_of(align.max(1)) => {
                cache_pop(need, need.saturating_mul(2), INFO_SIZE + size, me)
            }
            _ => None,
        };
        match cached {
            Some(e) => (
                e.addr as *mut Segment,
                e.size,
                e.addr + INFO_SIZE,
                false,
                e.touched,
            ),
            None => match huge_mapping(size, align) {
                Some((s, len, start)) => (s, len, start, true, 0),
                None => return ptr::null_mut(),
            },
        }
    } else {
        let want = if kind == PageKind::Large {
            FIRST_SPAN_SLOT * SMALL_PAGE_SIZE + size
        } else {
            SEGMENT_SIZE
        };
        // A large page may also take a cached huge segment of up to twice the size (its page
        // stays within the first SEGMENT_SIZE bytes, where `segment_of` finds the header): the
        // sizes of huge blocks and large pages then share the cache, as they share mimalloc's
        // segments. `large` mapped 46 fresh segments with each kept to its own size.
        let max = if kind == PageKind::Large {
            LARGE_REUSE_MAX
        } else {
            SEGMENT_SIZE
        };
        let cached = if shared {
            cache_pop(SEGMENT_SIZE, max, want, me)
        } else {
            None
        };
        let (s, size, zero, touched) = match cached {
            Some(e) => (e.addr as *mut Segment, e.size, false, e.touched),
            None => (
                os::alloc_aligned(SEGMENT_SIZE, SEGMENT_SIZE).cast::<Segment>(),
                SEGMENT_SIZE,
                true,
                0,
            ),
        };
        if s.is_null() {
            return ptr::null_mut();
        }
        (s, size, s as usize + INFO_SIZE, zero, touched)
    };
    // No transparent huge pages are asked for (`MADV_HUGEPAGE` on large and huge segments was
    // tried): a program that touches a few bytes of a large block then pays for 2 MiB of memory;
    // xz, whose 64 MiB dictionary is touched sparsely, peaked at 39.6 MiB instead of 22.7, and
    // the stress workload's blocks of 128-256 KiB (a large page each) at 1.5 times the RSS.
    let (capacity, page_shift, page_size) = match kind {
        // a large segment's pages are its slots, which its large pages take in spans
        PageKind::Small | PageKind::Large => {
            (SMALL_PAGES_PER_SEGMENT, SMALL_PAGE_SHIFT, SMALL_PAGE_SIZE)
        }
        PageKind::Medium => (
            SEGMENT_SIZE / MEDIUM_PAGE_SIZE,
            MEDIUM_PAGE_SHIFT,
            MEDIUM_PAGE_SIZE,
        ),
        PageKind::Huge => (1, 63, segment_size),
    };
    // SAFETY: `s` is a fresh (or cached, unregistered) mapping of at least INFO_SIZE bytes that
    // nothing else references; we initialise the header before publishing it.
    unsafe {
        let seg = &mut *s;
        seg.thread_id = AtomicUsize::new((*heap).thread_id);
        seg.kind = kind;
        seg.page_shift = page_shift as u8;
        seg.capacity = capacity;
        seg.used = AtomicUsize::new(0);
        seg.abandoned = 0;
        seg.segment_size = segment_size;
        seg.purged_bytes = 0;
        seg.touched = touched;
        seg.free_slots = u64::MAX << FIRST_SPAN_SLOT;
        seg.purge_hold_ms = 0;
        if kind == PageKind::Huge {
            // Not trimmed: the cache gives a huge block a segment at most twice its size, so
            // what it keeps resident beyond itself is bounded by that. Trimming past twice the
            // block (as for large pages) cost `large` 54 k page faults instead of 47 k at the
            // same peak RSS (132 MiB against 130), and python3's peak did not move (33.9 MiB).
            let end = first_start - s as usize + size;
            seg.touched = seg.touched.max(end);
        }
        seg.next = ptr::null_mut();
        seg.prev = ptr::null_mut();
        seg.in_free_queue = false;
        seg.abandoned_next = ptr::null_mut();
        seg.abandoned_prev = ptr::null_mut();
        seg.is_abandoned = false;
        seg.traced = AtomicBool::new((*heap).traced.load(Relaxed));
        let base = s as usize;
        let cached_due = os::clock_ms() + (*heap).tld.purge_delay.delay_ms();
        for i in 0..SMALL_PAGES_PER_SEGMENT {
            let page = &raw mut seg.pages[i];
            page.write(Page::empty());
            (*page).index = i as u8;
            if i < capacity {
                let page_base = base + i * page_size;
                let start = if i == 0 { first_start } else { page_base };
                (*page).start = start as *mut u8;
                (*page).area = if kind == PageKind::Huge {
                    base + segment_size - start
                } else {
                    page_base + page_size - start
                };
                (*page).is_zero_init = is_zero;
                // A fresh mapping's pages hold no memory until used (0: nothing to purge); a
                // cached segment's may, and go back after the usual delay unless used first.
                (*page).purge_at_ms = if is_zero { 0 } else { cached_due };
            }
        }
        if !is_zero {
            let tld = &raw mut (*heap).tld;
            (*tld).next_purge_ms = earliest((*tld).next_purge_ms, cached_due);
        }
        segment_map::register(s);
        if hook::enabled() {
            hook::emit(
                heap,
                schema::SegmentAlloc {
                    base: s as u64,
                    bytes: segment_size as u64,
                    pages: capacity as u32,
                    flags: kind as u8,
                },
            );
        }
        if let Some(q) = (*heap).tld.queue(kind) {
            q.push(s);
        }
    }
    s
}

/// Maps a huge segment: returns (segment, mapped bytes, block start). The block start is aligned to
/// `align` and lies in `(segment, segment + SEGMENT_SIZE]` with room for the header before it.
fn huge_mapping(size: usize, align: usize) -> Option<(*mut Segment, usize, usize)> {
    let ps = os::page_size();
    let align = align.max(crate::MAX_ALIGN);
    let reserve = os::align_up(
        INFO_SIZE.checked_add(align)?.checked_add(size)?,
        HUGE_GRANULE,
    )?;
    let base = os::alloc_aligned(reserve, SEGMENT_SIZE) as usize;
    if base == 0 {
        return None;
    }
    let start = os::align_up(base + INFO_SIZE, align)?;
    let seg = (start - 1) & !SEGMENT_MASK;
    // Sized in granules (the untouched tail costs address space, not memory), so that the segment
    // can serve similar sizes again from the cache.
    let end = (seg + os::align_up(os::align_up(start + size, ps)? - seg, HUGE_GRANULE)?)
        .min(base + reserve);
    // SAFETY: [base, seg) and [end, base + reserve) are parts of our fresh mapping outside the
    // segment we keep.
    unsafe {
        if seg > base {
            os::free(base as *mut u8, seg - base, 0);
        }
        if base + reserve > end {
            os::free(end as *mut u8, base + reserve - end, 0);
        }
    }
    Some((seg as *mut Segment, end - seg, start))
}

/// How far from its start the blocks of the empty segment `s` may have touched it: its
/// [`Segment::touched`] so far (raised by [`page_free`] to the end of a large page's carved
/// blocks), raised to the end of a huge page, or the end of the last page of a small or medium segment that was ever used
/// (a page never used since the mapping has `purge_at_ms == 0`).
///
/// # Safety
/// The calling thread owns `s`, which has no pages in use.
unsafe fn touched_extent(s: *mut Segment) -> usize {
    // SAFETY: owner-only segment and page state.
    unsafe {
        let base = s as usize;
        let extent = match (*s).kind {
            // raised by `segment_alloc` (huge) and `page_free` (large), which knew the blocks
            PageKind::Huge | PageKind::Large => 0,
            PageKind::Small | PageKind::Medium => (0..(*s).capacity)
                .rev()
                .find(|&i| (*s).pages[i].purge_at_ms != 0)
                .map_or(INFO_SIZE, |i| {
                    let page = &raw const (*s).pages[i];
                    (*page).start as usize - base + (*page).area
                }),
        };
        (*s).touched.max(extent).min((*s).segment_size)
    }
}

/// Frees an empty segment: to the cache or the OS.
unsafe fn segment_free(tld: *mut SegmentsTld, s: *mut Segment) {
    // SAFETY: the calling thread owns `s`, which has no pages in use.
    unsafe {
        if (*s).in_free_queue
            && let Some(q) = (*tld).queue((*s).kind)
        {
            q.remove(s);
        }
        segment_map::unregister(s);
        let (size, purged) = ((*s).segment_size, (*s).purged_bytes);
        // A segment whose free pages were purged is cached too: its mapping is what the cache
        // saves (a `mmap`, and a `munmap` of the alignment's excess), besides its resident
        // memory. Unmapped instead, `stress` of the LD_PRELOAD suite mapped 362 segments anew
        // and unmapped 331 from here in one run, each `munmap` a TLB shootdown.
        let cacheable = size <= CACHE_HUGE_MAX;
        let touched = touched_extent(s);
        if hook::enabled() {
            // Before the segment can be taken again (from the cache, or as a new mapping).
            let flag = if cacheable { flags::CACHED } else { 0 };
            hook::emit_current(schema::SegmentFree {
                base: s as u64,
                bytes: size as u64,
                flags: flag,
            });
            hook::bump_clock();
        }
        let shared = hook::records(crate::heap::default_heap()); // see `segment_alloc`
        // A cached segment counts as committed whole (`cache_expire` and `unmap_cached` take it
        // out whole): its purged pages count again, before another thread can take it from the
        // cache. Refused, it is unmapped whole, nothing of it purged any more.
        let purged = if cacheable && shared {
            os::recommit(purged);
            0
        } else {
            purged
        };
        if !(cacheable && shared && cache_push(s, size, touched, &mut (*tld).purge_delay)) {
            if cacheable && hook::enabled() {
                // Announced as cached above, but the cache had no room (it is bounded by the
                // heap, see `cache_limit`): the memory leaves the process now, said before the
                // address can be mapped again.
                hook::emit_current(schema::OsPurge {
                    addr: s as u64,
                    bytes: size as u64,
                    flags: 0,
                });
            }
            os::free(s.cast(), size, purged);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Abandon and reclaim

/// Abandoned segments: a doubly linked list through `abandoned_next/prev`, changed under a lock
/// (thread exit, segment allocation, and the first free into an abandoned segment; never a fast
/// path).
static ABANDONED: SpinLock<usize> = SpinLock::new(0);
/// Number of abandoned segments, read without the lock.
pub(crate) static ABANDONED_COUNT: AtomicUsize = AtomicUsize::new(0);
/// When the next free page of an abandoned segment is due to be purged (0: none); written under
/// the lock, read without it.
static ABANDONED_PURGE_DUE: AtomicU64 = AtomicU64::new(0);

/// Purges the free pages of abandoned segments whose delay has passed, so memory of exited
/// threads goes back to the OS even when no thread takes their segments over. Called from the
/// slow path of any thread; skipped when the list is busy.
///
/// The segments to purge are taken off the list first and put back after: purging reports to the
/// hook, which may allocate, and an allocation may need the list.
pub(crate) fn purge_abandoned(now: u64) {
    let due = ABANDONED_PURGE_DUE.load(Relaxed);
    if due == 0 || due > now {
        return;
    }
    let mut taken = [ptr::null_mut::<Segment>(); 16];
    let mut n = 0;
    {
        let Some(mut head) = ABANDONED.try_lock() else {
            return;
        };
        let mut s = *head as *mut Segment;
        while !s.is_null() && n < taken.len() {
            // SAFETY: we hold the list lock; listed segments stay mapped while listed.
            unsafe {
                let next = (*s).abandoned_next;
                let next_due = purge_due(s);
                if next_due != 0 && next_due <= now && abandoned_take(&mut head, s) {
                    taken[n] = s;
                    n += 1;
                }
                s = next;
            }
        }
    }
    for &s in &taken[..n] {
        // SAFETY: taking `s` off the list made it ours (nobody can reclaim it meanwhile).
        unsafe { purge_segment(s, now, ptr::null_mut()) };
    }
    let mut head = ABANDONED.lock();
    for &s in &taken[..n] {
        // SAFETY: ours since we took it; the lock is held.
        unsafe { abandoned_push(&mut head, s) };
    }
    let mut next_due = 0;
    let mut s = *head as *mut Segment;
    while !s.is_null() {
        // SAFETY: we hold the list lock.
        unsafe {
            next_due = earliest(next_due, purge_due(s));
            s = (*s).abandoned_next;
        }
    }
    ABANDONED_PURGE_DUE.store(next_due, Relaxed);
}

/// Puts `s` at the head of the abandoned list.
///
/// # Safety
/// The caller holds the list lock (`head`) and owns `s`, which is not on the list.
unsafe fn abandoned_push(head: &mut usize, s: *mut Segment) {
    // SAFETY: see the contract.
    unsafe {
        (*s).abandoned_prev = ptr::null_mut();
        (*s).abandoned_next = *head as *mut Segment;
        if *head != 0 {
            (*(*head as *mut Segment)).abandoned_prev = s;
        }
        *head = s as usize;
        (*s).is_abandoned = true;
        ABANDONED_COUNT.fetch_add(1, Relaxed);
    }
}

/// Marks a page of an exiting thread's heap abandoned; abandons its segment once every used page
/// of it is.
///
/// # Safety
/// The calling thread owns the page's segment and is exiting; the page is in no queue.
pub(crate) unsafe fn page_abandon(tld: *mut SegmentsTld, page: *mut Page) {
    // SAFETY: owner-only segment state; the list is changed under its lock.
    unsafe {
        let s = segment_of_page(page);
        (*page).heap.store(ptr::null_mut(), Release);
        (*s).abandoned += 1;
        abandon_if_complete(tld, s);
    }
}

/// Abandons `s` once every used page of it is abandoned.
unsafe fn abandon_if_complete(tld: *mut SegmentsTld, s: *mut Segment) {
    // SAFETY: owner-only segment state; the list is changed under its lock.
    unsafe {
        if (*s).abandoned > 0 && (*s).abandoned == (*s).used.load(Relaxed) {
            if (*s).in_free_queue
                && let Some(q) = (*tld).queue((*s).kind)
            {
                q.remove(s);
            }
            // Its free pages keep their purge time: a thread that starts soon after takes the
            // segment back with its memory still resident (see `purge_abandoned`).
            // Its thread is exiting: its delay answers for no more purges.
            let due = purge_segment(s, os::clock_ms(), ptr::null_mut());
            if hook::enabled() {
                hook::emit_current(schema::SegmentAbandon {
                    base: s as u64,
                    flags: 0,
                });
                hook::bump_clock();
            }
            let mut head = ABANDONED.lock();
            ABANDONED_PURGE_DUE.store(earliest(ABANDONED_PURGE_DUE.load(Relaxed), due), Relaxed);
            (*s).thread_id.store(0, Release);
            abandoned_push(&mut head, s);
        }
    }
}

/// Whether `s` is on the abandoned list that starts at `head`; compares addresses only, so `s`
/// need not be mapped.
///
/// # Safety
/// The caller holds the list lock.
unsafe fn abandoned_contains(head: *mut Segment, s: *mut Segment) -> bool {
    let mut cur = head;
    while !cur.is_null() {
        if cur == s {
            return true;
        }
        // SAFETY: the caller holds the lock; listed segments stay mapped while listed.
        cur = unsafe { (*cur).abandoned_next };
    }
    false
}

/// Unlinks `s` from the abandoned list if it is still there; true if this call took it.
unsafe fn abandoned_take(head: &mut usize, s: *mut Segment) -> bool {
    // SAFETY: the caller holds the list lock; listed segments stay mapped while listed.
    unsafe {
        if s.is_null() || !(*s).is_abandoned {
            return false;
        }
        let (prev, next) = ((*s).abandoned_prev, (*s).abandoned_next);
        if prev.is_null() {
            *head = next as usize;
        } else {
            (*prev).abandoned_next = next;
        }
        if !next.is_null() {
            (*next).abandoned_prev = prev;
        }
        (*s).is_abandoned = false;
        ABANDONED_COUNT.fetch_sub(1, Relaxed);
        true
    }
}

/// Segments an untraced thread looks at for one of its own kind (see [`abandoned_pop`]).
const UNTRACED_SCAN: usize = 64;

/// Takes an abandoned segment off the list: the first, or with `untraced_only` the first of the
/// first [`UNTRACED_SCAN`] that no traced thread owned (`Segment::traced` false), or null.
fn abandoned_pop(untraced_only: bool) -> *mut Segment {
    if ABANDONED_COUNT.load(Relaxed) == 0 {
        return ptr::null_mut();
    }
    let mut head = ABANDONED.lock();
    let mut s = *head as *mut Segment;
    if untraced_only {
        let mut seen = 0;
        // SAFETY: we hold the lock; listed segments stay mapped while listed.
        while !s.is_null() && unsafe { (*s).traced.load(Relaxed) } {
            seen += 1;
            if seen == UNTRACED_SCAN {
                return ptr::null_mut();
            }
            // SAFETY: as above.
            s = unsafe { (*s).abandoned_next };
        }
    }
    // SAFETY: we hold the lock.
    if unsafe { abandoned_take(&mut head, s) } {
        s
    } else {
        ptr::null_mut()
    }
}

/// Called after a free into an abandoned segment: the freeing thread takes the segment over, so
/// pages that are now empty go back at once instead of waiting for a thread to need a segment.
///
/// # Safety
/// `heap` is the calling thread's initialised heap; `s` is the segment of a block just freed.
pub(crate) unsafe fn reclaim_on_free(heap: *mut Heap, s: *mut Segment) {
    // SAFETY: the calling thread's heap.
    if unsafe { !hook::records(heap) } {
        return;
    }
    let taken = {
        let mut head = ABANDONED.lock();
        // `s` itself may be gone: between the free that found it abandoned and this lock,
        // another thread may have taken it from the list, collected the block just freed and
        // freed the segment (unmapped, or cached and purged). So it is looked for on the list,
        // whose members stay mapped while listed, before anything is read from it.
        // SAFETY: we hold the lock; listed segments are mapped, and `s` is read only once found
        // among them.
        unsafe { abandoned_contains(*head as *mut Segment, s) && abandoned_take(&mut head, s) }
    };
    if taken {
        // SAFETY: taking it from the list made it ours.
        unsafe { reclaim(heap, s) };
    }
}

/// Takes over up to 8 abandoned segments: their empty pages are freed, the others join `heap`'s
/// queues. Returns how many were reclaimed. An untraced thread, while a collector runs, takes
/// only segments no traced thread owned ([`hook::records`]): the collector of each `heaplens attach`
/// session takes over what the sessions before it left (it grew the program by a segment a
/// session).
///
/// # Safety
/// `heap` is the calling thread's heap.
pub(crate) unsafe fn reclaim_abandoned(heap: *mut Heap) -> usize {
    // SAFETY: the calling thread's heap.
    let untraced_only = unsafe { !hook::records(heap) };
    let mut n = 0;
    while n < 8 {
        let s = abandoned_pop(untraced_only);
        if s.is_null() {
            break;
        }
        n += 1;
        // SAFETY: popping gave us exclusive ownership of `s`; other threads only push onto its
        // pages' thread_free lists, atomically.
        unsafe { reclaim(heap, s) };
    }
    n
}

unsafe fn reclaim(heap: *mut Heap, s: *mut Segment) {
    // SAFETY: see `reclaim_abandoned`.
    unsafe {
        let tld = &raw mut (*heap).tld;
        (*s).thread_id.store((*heap).thread_id, Release);
        (*s).abandoned = 0;
        // Abandoned by a thread the trace did not follow: its pages are reported once taken.
        let adopt = !(*s).traced.load(Relaxed) && (*heap).traced.load(Relaxed);
        (*s).traced.store((*heap).traced.load(Relaxed), Relaxed);
        if hook::enabled() && !adopt {
            hook::emit(
                heap,
                schema::SegmentReclaim {
                    base: s as u64,
                    owner: (*heap).id,
                    flags: 0,
                },
            );
        }
        for i in 0..(*s).capacity {
            let page = &raw mut (*s).pages[i];
            if !(*page).is_in_use() {
                if (*page).is_purged {
                    // Purged by another thread: no measure of this one's delay.
                    (*page).purge_at_ms = PURGED_BY_ANOTHER;
                }
                continue;
            }
            (*page).heap.store(heap, Release);
            if hook::enabled() && !adopt {
                hook::emit(
                    heap,
                    schema::PageReclaim {
                        start: (*page).start as u64,
                        owner: (*heap).id,
                        flags: 0,
                    },
                );
            }
            page::use_delayed_free(page, NO_DELAYED_FREE, true);
            page::collect(page);
            (*page).set_flag(crate::page::FLAG_IN_FULL, false);
            if (*page).used() == 0 {
                (*page).flags.store(0, Relaxed);
                let last = (*s).used.load(Relaxed) == 1;
                page_free(tld, page);
                if last {
                    return; // the segment itself was freed
                }
            } else {
                crate::heap::queue_push_back(heap, (*page).bin(), page);
            }
        }
        if adopt && hook::enabled() {
            hook::adopt_segment(heap, &*s);
        }
        // Free pages still waiting for their purge now wait on this thread's clock.
        (*tld).next_purge_ms = earliest((*tld).next_purge_ms, purge_due(s));
        if (*s).used.load(Relaxed) < (*s).capacity
            && !(*s).in_free_queue
            && let Some(q) = (*tld).queue((*s).kind)
        {
            q.push(s);
        }
    }
}

/// Sets every page of a segment list to never use delayed free (used when a heap exits).
///
/// # Safety
/// `page` is live and owned by the calling thread.
pub(crate) unsafe fn page_never_delayed(page: *mut Page) {
    // SAFETY: forwarded contract.
    unsafe { page::use_delayed_free(page, NEVER_DELAYED_FREE, false) };
}

pub(crate) fn fork_lock(acquire: bool) {
    if acquire {
        CACHE.acquire();
        ABANDONED.acquire();
    } else {
        ABANDONED.force_unlock();
        CACHE.force_unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LARGE_OBJ_SIZE_MAX, MEDIUM_OBJ_SIZE_MAX, SMALL_OBJ_SIZE_MAX};

    #[test]
    fn pointers_find_their_segment_and_page_for_every_kind() {
        for (size, kind) in [
            (24, PageKind::Small),
            (SMALL_OBJ_SIZE_MAX, PageKind::Small),
            (SMALL_OBJ_SIZE_MAX + 1, PageKind::Medium),
            (MEDIUM_OBJ_SIZE_MAX + 1, PageKind::Large),
            (LARGE_OBJ_SIZE_MAX + 1, PageKind::Huge),
            (9 * SEGMENT_SIZE, PageKind::Huge),
        ] {
            // SAFETY: a live allocation, inspected through its metadata, then freed.
            unsafe {
                let p = crate::malloc(size);
                assert!(!p.is_null());
                let s = segment_of(p);
                assert!(segment_map::contains(s));
                assert_eq!((*s).kind(), kind, "size {size}");
                let page = page_of(s, p);
                assert!((*page).is_in_use());
                assert!((*page).block_size() >= size);
                assert!(
                    p >= (*page).start() && (p as usize) < (*page).start() as usize + (*page).area
                );
                p.write_bytes(1, size);
                crate::free(p);
            }
        }
    }

    /// Large pages are spans of a large segment's slots: blocks of several size classes share a
    /// segment, each at a slot's start; a freed span serves a block of another class (the free
    /// run that fits it best), and the blocks beside it keep their bytes.
    #[test]
    fn large_blocks_of_any_size_share_a_segment_and_take_freed_spans() {
        const KIB: usize = 1 << 10;
        // bins of 224 KiB, 768 KiB, 320 KiB, 768 KiB, 160 KiB: 4, 12, 5, 12 and 3 slots
        let sizes = [200 * KIB, 700 * KIB, 300 * KIB, 700 * KIB, 150 * KIB];
        // SAFETY: live allocations of this thread, written within their sizes, inspected through
        // their metadata, then freed once.
        unsafe {
            let blocks: Vec<*mut u8> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let p = crate::malloc(n);
                    p.write_bytes(i as u8 + 1, n);
                    p
                })
                .collect();
            let s = segment_of(blocks[0]);
            assert_eq!((*s).kind(), PageKind::Large);
            let mut spans: Vec<(usize, usize)> = Vec::new();
            for &p in &blocks {
                assert_eq!(
                    segment_of(p),
                    s,
                    "one large segment holds blocks of every size"
                );
                assert_eq!(p as usize % SMALL_PAGE_SIZE, 0, "a span starts at a slot");
                let page = page_of(s, p);
                assert_eq!((*page).start(), p);
                assert_eq!((*page).capacity(), 1, "one block a large page");
                spans.push((p as usize, p as usize + (*page).area));
            }
            spans.sort_unstable();
            assert!(
                spans.windows(2).all(|w| w[0].1 <= w[1].0),
                "spans overlap: {spans:x?}"
            );
            // Two 12-slot runs come free (an emptied page may stay a while for its own bin, but
            // not both), between the segment's long run of never used slots.
            crate::free(blocks[1]);
            crate::free(blocks[3]);
            let q = crate::malloc(500 * KIB); // 512 KiB: 8 slots
            assert!(
                q == blocks[1] || q == blocks[3],
                "a freed span fits best: {q:?} of {blocks:?}"
            );
            q.write_bytes(0xEE, 500 * KIB);
            for i in [0, 2, 4] {
                let b = core::slice::from_raw_parts(blocks[i], sizes[i]);
                assert!(b.iter().all(|&x| x == i as u8 + 1), "block {i} changed");
            }
            for p in [q, blocks[0], blocks[2], blocks[4]] {
                crate::free(p);
            }
        }
    }

    #[test]
    fn a_span_takes_the_shortest_free_run_that_fits() {
        // free runs: slots 1..4 (3), 6..13 (7), 20..25 (5), 30..64 (34)
        let free = span_bits(1, 3) | span_bits(6, 7) | span_bits(20, 5) | span_bits(30, 34);
        assert_eq!(best_span(free, 1), Some((1, 3)));
        assert_eq!(best_span(free, 4), Some((20, 5)));
        assert_eq!(best_span(free, 6), Some((6, 7)));
        assert_eq!(best_span(free, 7), Some((6, 7)));
        assert_eq!(best_span(free, 8), Some((30, 34)));
        assert_eq!(best_span(free, 34), Some((30, 34)));
        assert_eq!(best_span(free, 35), None);
        assert_eq!(best_span(0, 1), None);
        assert_eq!(best_span(u64::MAX << 1, 63), Some((1, 63)));
    }

    /// An aligned large allocation hands out its block's start, in its span's first slot, up to
    /// 64 KiB of alignment; beyond, a huge page whose block starts aligned.
    #[test]
    fn aligned_large_blocks_are_found_from_their_address() {
        for (align, kind) in [
            (4096, PageKind::Large),
            (SMALL_PAGE_SIZE, PageKind::Large),
            (2 * SMALL_PAGE_SIZE, PageKind::Huge),
        ] {
            // SAFETY: a live allocation, inspected, then freed.
            unsafe {
                let p = crate::malloc_aligned(200 << 10, align);
                assert_eq!(p as usize % align, 0);
                let s = segment_of(p);
                assert_eq!((*s).kind(), kind, "align {align}");
                assert_eq!((*page_of(s, p)).start(), p);
                assert!(crate::usable_size(p) >= 200 << 10);
                p.write_bytes(7, 200 << 10);
                crate::free(p);
            }
        }
    }

    #[test]
    fn huge_alignments_keep_the_header_reachable() {
        for align in [SEGMENT_SIZE / 2, SEGMENT_SIZE, 4 * SEGMENT_SIZE] {
            // SAFETY: a live allocation, inspected, then freed.
            unsafe {
                let p = crate::malloc_aligned(3 * SEGMENT_SIZE, align);
                assert_eq!(p as usize % align, 0);
                let s = segment_of(p);
                assert!(segment_map::contains(s));
                assert_eq!((*s).kind(), PageKind::Huge);
                assert_eq!((*page_of(s, p)).start(), p);
                assert!(crate::usable_size(p) >= 3 * SEGMENT_SIZE);
                crate::free(p);
                assert!(
                    !segment_map::contains(s),
                    "a freed huge segment is unmapped"
                );
            }
        }
    }
}
