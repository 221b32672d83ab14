//! Heaps: one per thread. A heap has
//! - `pages_first`: for each 16-byte step of size up to [`SMALL_SIZE_MAX`], the page to allocate
//!   from (the first page of that size's bin queue), and `pages_direct`, the same slots as the
//!   fast path reads them, so the fast path is two loads and a pop. While the hook records, every
//!   `pages_direct` slot points at the empty page ([`direct_off`]): the fast path misses, and the
//!   path it falls to reports the allocation. So `malloc`'s fast path does not test the hook at
//!   all: it is the same with the hook compiled in as compiled out;
//! - a page queue per bin, and `queues[BIN_FULL]` for pages with no free block;
//! - `thread_delayed_free`: blocks other threads freed into this heap's full pages.
//!
//! A thread's heap starts as [`EMPTY_HEAP`], whose direct slots all point at a page with no free
//! blocks, so the first `malloc` of a thread falls into the generic path, which creates the
//! thread's heap: the fast path never tests "is this thread initialised?".

use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering::*};

use crate::bin::{BIN_COUNT, BIN_FULL, BIN_HUGE, BIN_LARGE_MAX, bin_of, block_size};
use crate::event::flags;
use crate::hook;
use crate::page::{
    self, Block, DELAYED_FREEING, FLAG_IN_FULL, NO_DELAYED_FREE, Page, USE_DELAYED_FREE,
};
use crate::page_queue::PageQueue;
use crate::schema;
use crate::segment::{self, SegmentsTld};
use crate::{LARGE_OBJ_SIZE_MAX, MAX_ALLOC_SIZE, SMALL_OBJ_SIZE_MAX, SMALL_SIZE_MAX, os};

/// Number of direct slots: one per 16 bytes of size, 0 ..= [`SMALL_SIZE_MAX`].
pub const DIRECT_SLOTS: usize = SMALL_SIZE_MAX / 16 + 1;

/// A thread's heap. Only its thread touches it, except `thread_delayed_free` (atomic pushes from
/// other threads), `pages_direct` (emptied by the thread that switches the hook on, see
/// [`direct_off`]), the collector's atomics, and the statistics walker (which reads only through
/// pages).
#[repr(C)]
pub struct Heap {
    /// The fast path's slots: `pages_first`, or the empty page while the direct slots are off
    /// (the hook records). Atomic because the thread that switches the hook on empties every
    /// heap's slots (a relaxed load is the same `mov` as a plain one).
    pub(crate) pages_direct: [AtomicPtr<Page>; DIRECT_SLOTS],
    /// For each 16-byte step of size, the first page of its bin's queue, or the empty page (the
    /// owner's alone): where the recording paths take blocks from.
    pub(crate) pages_first: [*mut Page; DIRECT_SLOTS],
    /// The owning thread's id (with the low bit set in checked mode, see [`crate::check`]).
    pub(crate) thread_id: usize,
    pub(crate) queues: [PageQueue; BIN_COUNT],
    pub(crate) thread_delayed_free: AtomicPtr<Block>,
    pub(crate) tld: SegmentsTld,
    pub(crate) generic_count: u64,
    /// Range of bins whose first page may be a retired (empty, kept) page.
    pub(crate) retired_min: usize,
    pub(crate) retired_max: usize,
    /// A small number naming the thread (1 for the first thread that allocated).
    pub(crate) id: u32,
    /// The kernel's id of the thread (names threads in the viewer).
    pub(crate) os_tid: i32,
    /// The hook's buffer for this thread's events (null: none yet, or untraced).
    pub(crate) events: AtomicPtr<crate::hook::EventBuffer>,
    /// Where the next event goes in `events` (null with it). The owner publishes each event by
    /// moving it on; a drain reads how far it got (see `hook::append`).
    pub(crate) event_cursor: AtomicPtr<crate::event::Event>,
    /// The end of `events`' event array (null with it): the cursor's limit. The owner sets it;
    /// the collector nulls it to ask for a census of this heap (see `census_want`), so that the
    /// owner's next event leaves the fast path. Relaxed loads: the same instruction as a plain one.
    pub(crate) event_end: AtomicPtr<crate::event::Event>,
    /// The census whose part for this heap the collector wants (see `hook::census_point`).
    pub(crate) census_want: AtomicU32,
    /// The last census this heap reported its part of (the owner's alone).
    pub(crate) census_done: u32,
    /// The time of the census part this heap is reading and writing (0: none): its pages are
    /// read before its events are published, and the collector passes no later event on until
    /// they are (see `hook::write_part`).
    pub(crate) part_time: AtomicU64,
    /// Whether this heap's events are recorded (the collector's own heap is not).
    pub(crate) traced: AtomicBool,
    /// Event buffers this heap has taken (numbers them, see `EventBuffer::seq`).
    pub(crate) buffers_taken: u32,
    /// Events lost since the last one recorded.
    pub(crate) dropped: u64,
    /// Why they were lost: [`crate::event::drop_reason`] bits.
    pub(crate) drop_reasons: u16,
    /// Events emitted while the hook itself ran on this thread (it was fetching a buffer): kept
    /// here and appended after the event being emitted, so lossless mode stays lossless.
    pub(crate) spill: [crate::event::Event; crate::hook::SPILL_EVENTS],
    pub(crate) spill_len: u8,
    /// Where events emitted while the hook runs go once `spill` is full (null until then): a
    /// buffer of the heap's own that the collector never sees, emptied after them by the same
    /// write (see `hook::put`).
    pub(crate) spill_more: *mut crate::hook::EventBuffer,
    /// Spilled events wait until this is false again: a census part too large for one buffer
    /// is being written (see `hook::heap_census`).
    pub(crate) spill_deferred: bool,
    /// Stack capture: the sampling countdown, the interned stacks (see [`crate::stacks`]).
    pub(crate) stacks: crate::stacks::HeapStacks,
    pub(crate) next_heap: *mut Heap,
    pub(crate) prev_heap: *mut Heap,
}

impl Heap {
    pub(crate) const fn new() -> Self {
        let mut queues = [const { PageQueue::new(0) }; BIN_COUNT];
        let mut bin = 1;
        while bin <= BIN_LARGE_MAX {
            queues[bin] = PageQueue::new(block_size(bin));
            bin += 1;
        }
        queues[BIN_HUGE] = PageQueue::new(LARGE_OBJ_SIZE_MAX + 1);
        queues[BIN_FULL] = PageQueue::new(LARGE_OBJ_SIZE_MAX + 2);
        Self {
            pages_direct: [const { AtomicPtr::new(EMPTY_PAGE_PTR) }; DIRECT_SLOTS],
            pages_first: [EMPTY_PAGE_PTR; DIRECT_SLOTS],
            thread_id: 0,
            queues,
            thread_delayed_free: AtomicPtr::new(ptr::null_mut()),
            tld: SegmentsTld::new(),
            generic_count: 0,
            retired_min: BIN_FULL,
            retired_max: 0,
            id: 0,
            os_tid: 0,
            events: AtomicPtr::new(ptr::null_mut()),
            event_cursor: AtomicPtr::new(ptr::null_mut()),
            event_end: AtomicPtr::new(ptr::null_mut()),
            census_want: AtomicU32::new(0),
            census_done: 0,
            part_time: AtomicU64::new(0),
            traced: AtomicBool::new(false),
            buffers_taken: 0,
            dropped: 0,
            drop_reasons: 0,
            spill: [crate::event::Event::EMPTY; crate::hook::SPILL_EVENTS],
            spill_len: 0,
            spill_more: ptr::null_mut(),
            spill_deferred: false,
            stacks: crate::stacks::HeapStacks::new(),
            next_heap: ptr::null_mut(),
            prev_heap: ptr::null_mut(),
        }
    }

    /// A small number naming the heap's thread.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The page queue of `bin`.
    pub fn queue(&self, bin: usize) -> &PageQueue {
        &self.queues[bin]
    }
}

/// `Sync` wrapper for the read-only empty statics (they contain raw pointers).
#[repr(transparent)]
pub(crate) struct Static<T>(pub(crate) T);
// SAFETY: the empty page and empty heap are never written: the fast path only writes a page
// after finding a block on it (the empty page has none), and the generic path replaces the empty
// heap before touching any heap state.
unsafe impl<T> Sync for Static<T> {}

static EMPTY_PAGE: Static<Page> = Static(Page::empty());
const EMPTY_PAGE_PTR: *mut Page = (&raw const EMPTY_PAGE.0).cast_mut();
/// The heap every thread starts with: no pages, so its first `malloc` takes the generic path.
pub(crate) static EMPTY_HEAP: Static<Heap> = Static(Heap::new());
pub(crate) const EMPTY_HEAP_PTR: *mut Heap = (&raw const EMPTY_HEAP.0).cast_mut();

/// The calling thread's heap ([`EMPTY_HEAP`] before its first allocation): a thread-local word
/// read in two instructions (see [`crate::tls`]).
#[inline(always)]
pub(crate) fn default_heap() -> *mut Heap {
    crate::tls::heap()
}

pub(crate) fn set_default_heap(heap: *mut Heap) {
    crate::tls::set_heap(heap);
}

/// A number unique among live threads: the thread pointer.
#[inline(always)]
pub fn thread_id() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let tp: usize;
        // SAFETY: on x86-64 Linux `fs:0` holds the thread control block's self pointer.
        unsafe {
            core::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly, preserves_flags, pure));
        }
        tp
    }
    #[cfg(target_arch = "aarch64")]
    {
        let tp: usize;
        // SAFETY: reading the thread pointer register has no side effects.
        unsafe {
            core::arch::asm!("mrs {}, tpidr_el0", out(reg) tp, options(nostack, nomem, preserves_flags, pure));
        }
        tp
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        thread_local! { static ID: u8 = const { 0 } }
        ID.with(|b| core::ptr::from_ref(b) as usize)
    }
}

// ---------------------------------------------------------------------------------------------
// Queues, kept in step with the direct slots

/// Points the slots of `bin`'s sizes at its first page (or the empty page): `pages_first`
/// always, `pages_direct` unless the direct slots are off.
unsafe fn update_direct(heap: *mut Heap, bin: usize) {
    if bin == 0 || bin > BIN_LARGE_MAX || crate::options::check() {
        return; // checked mode keeps every slot empty so every malloc is checked
    }
    let bsize = block_size(bin);
    if bsize > SMALL_SIZE_MAX {
        return;
    }
    // SAFETY: the calling thread owns `heap`.
    unsafe {
        let first = (*heap).queues[bin].first;
        let page = if first.is_null() {
            EMPTY_PAGE_PTR
        } else {
            first
        };
        let lo = if bin == 1 {
            0
        } else {
            block_size(bin - 1) / 16 + 1
        };
        let slots = lo..=bsize / 16;
        // Field by field: other threads use the heap's atomics meanwhile (`pages_direct` among
        // them), so no reference to the whole heap.
        (&mut (*heap).pages_first)[slots.clone()].fill(page);
        set_direct(&(&(*heap).pages_direct)[slots], page);
    }
}

/// While set, every heap's `pages_direct` slot points at the empty page: set before the hook
/// goes on (after every slot is emptied), cleared after it goes off ([`direct_off`]).
#[cfg(feature = "hook")]
static DIRECT_OFF: AtomicBool = AtomicBool::new(false);

/// Sets the owner's fast-path `slots` to `page` unless the direct slots are off (another thread
/// only ever empties them).
#[inline]
fn set_direct(slots: &[AtomicPtr<Page>], page: *mut Page) {
    #[cfg(feature = "hook")]
    let page = if DIRECT_OFF.load(Relaxed) {
        EMPTY_PAGE_PTR
    } else {
        page
    };
    for slot in slots {
        slot.store(page, Relaxed);
    }
    #[cfg(feature = "hook")]
    if page != EMPTY_PAGE_PTR {
        empty_if_off(slots);
    }
}

/// Points `slots` at the empty page.
#[cfg(feature = "hook")]
fn empty(slots: &[AtomicPtr<Page>]) {
    for slot in slots {
        slot.store(EMPTY_PAGE_PTR, Relaxed);
    }
}

/// The owner's half of the switch, after it stored pages into `slots`: its store and
/// [`direct_off`]'s are ordered by a fence on each side, so either the owner sees the flag here
/// and empties the slots again, or `direct_off`'s emptying lands after the owner's store. So no
/// slot points at a page once `direct_off(true)` has returned.
#[cfg(feature = "hook")]
fn empty_if_off(slots: &[AtomicPtr<Page>]) {
    core::sync::atomic::fence(SeqCst);
    if DIRECT_OFF.load(Relaxed) {
        empty(slots);
    }
}

/// Switches the fast path's direct slots off (`true`: before the hook goes on, so every
/// allocation after it leaves the fast path for the one that reports it) or back on (`false`:
/// after the hook goes off; each heap refills its slots at its next generic allocation,
/// [`refill_direct`]).
#[cfg(feature = "hook")]
pub(crate) fn direct_off(off: bool) {
    if !off {
        DIRECT_OFF.store(false, Release);
        return;
    }
    DIRECT_OFF.store(true, Relaxed);
    core::sync::atomic::fence(SeqCst);
    crate::init::for_each_heap(|h| empty(&h.pages_direct));
}

/// Points `heap`'s fast path at its pages again if its slot for `size` was left empty by a
/// recording that has ended (a cheap test on the generic path).
///
/// # Safety
/// The calling thread owns `heap`, not the empty heap.
#[inline]
pub(crate) unsafe fn refill_direct(heap: *mut Heap, size: usize) {
    #[cfg(feature = "hook")]
    if size <= SMALL_SIZE_MAX && !DIRECT_OFF.load(Relaxed) {
        let slot = size.div_ceil(16);
        // SAFETY: the owner's slots; `slot` is inside them (size <= SMALL_SIZE_MAX).
        unsafe {
            if (*heap).pages_direct[slot].load(Relaxed) != (*heap).pages_first[slot] {
                refill_all(heap);
            }
        }
    }
    #[cfg(not(feature = "hook"))]
    let _ = (heap, size);
}

/// Copies all of `heap`'s `pages_first` slots into `pages_direct` (out of line: once a heap
/// after a recording).
///
/// # Safety
/// As [`refill_direct`].
#[cfg(feature = "hook")]
#[inline(never)]
#[cold]
unsafe fn refill_all(heap: *mut Heap) {
    // SAFETY: the owner's slots.
    let (direct, first) = unsafe { (&(*heap).pages_direct, &(*heap).pages_first) };
    for (slot, &page) in direct.iter().zip(first) {
        slot.store(page, Relaxed);
    }
    // A recording that began meanwhile finds the slots empty.
    empty_if_off(direct);
}

/// Pushes `page` at the front of `bin`'s queue (where malloc takes from).
///
/// # Safety
/// The calling thread owns `heap` and `page`; the page is in no queue.
pub(crate) unsafe fn queue_push_front(heap: *mut Heap, bin: usize, page: *mut Page) {
    // SAFETY: forwarded contract.
    unsafe {
        (*heap).queues[bin].push_front(page);
        update_direct(heap, bin);
    }
}

/// Appends `page` to `bin`'s queue.
///
/// # Safety
/// As [`queue_push_front`].
pub(crate) unsafe fn queue_push_back(heap: *mut Heap, bin: usize, page: *mut Page) {
    // SAFETY: forwarded contract.
    unsafe {
        let was_empty = (*heap).queues[bin].first.is_null();
        (*heap).queues[bin].push_back(page);
        if was_empty {
            update_direct(heap, bin);
        }
    }
}

/// Unlinks `page` from `bin`'s queue.
///
/// # Safety
/// `page` is in that queue of the calling thread's `heap`.
pub(crate) unsafe fn queue_remove(heap: *mut Heap, bin: usize, page: *mut Page) {
    // SAFETY: forwarded contract.
    unsafe {
        let was_first = (*heap).queues[bin].first == page;
        (*heap).queues[bin].remove(page);
        if was_first {
            update_direct(heap, bin);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The generic allocation path

/// Every this many generic calls a heap counts down its retired pages and purges what is due
/// (mimalloc does it every 1000): the generic path is hot for blocks over [`SMALL_SIZE_MAX`], and
/// walking the retired bins touches a cold page header per bin.
const HOUSEKEEPING_EVERY: u64 = 16;

/// Finds (or makes) a page of `heap` with a free block for `size` bytes. Also does the heap's
/// deferred work: delayed frees from other threads, retired pages, purging. Null when out of
/// memory or `size` is impossible.
///
/// # Safety
/// `heap` is the calling thread's initialised heap.
pub(crate) unsafe fn find_page(heap: *mut Heap, size: usize) -> *mut Page {
    // SAFETY: the calling thread owns `heap` and every page in its queues.
    unsafe {
        (*heap).generic_count += 1;
        delayed_free_all(heap, false);
        if (*heap).generic_count.is_multiple_of(HOUSEKEEPING_EVERY) {
            collect_retired(heap);
            deferred_purge(heap);
        }
        if size > LARGE_OBJ_SIZE_MAX {
            return huge_page(heap, size, crate::MAX_ALIGN);
        }
        let bin = bin_of(size);
        let mut page = (*heap).queues[bin].first;
        while !page.is_null() {
            let next = (*page).next;
            page::collect(page);
            if (*page).free.is_null() {
                page::extend_free(page);
            }
            if !(*page).free.is_null() {
                (*page).retire_expire = 0;
                return page;
            }
            if to_full(heap, bin, page) {
                return page;
            }
            page = next;
        }
        // Before taking a fresh page: retired pages whose time has come go back to their
        // segments, where this allocation may find one.
        collect_retired(heap);
        let page = segment::page_alloc(heap, block_size(bin));
        if page.is_null() {
            return page;
        }
        page::init(page, heap, bin, block_size(bin));
        queue_push_front(heap, bin, page);
        page
    }
}

/// A huge page for one block of `size` bytes aligned to `align`, in `heap`'s huge queue.
///
/// # Safety
/// `heap` is the calling thread's initialised heap.
pub(crate) unsafe fn huge_page(heap: *mut Heap, size: usize, align: usize) -> *mut Page {
    if size > MAX_ALLOC_SIZE {
        return ptr::null_mut();
    }
    // SAFETY: forwarded contract.
    unsafe {
        // A zero-sized (aligned) request still gets a block of its own.
        let page = segment::huge_page_alloc(heap, size.max(1), align);
        if page.is_null() {
            return page;
        }
        page::init(page, heap, BIN_HUGE, (*page).area);
        queue_push_front(heap, BIN_HUGE, page);
        page
    }
}

/// Moves a page with no free block to the full queue. Returns true instead if a cross-thread free
/// raced in before the page was marked, leaving it usable where it is.
unsafe fn to_full(heap: *mut Heap, bin: usize, page: *mut Page) -> bool {
    // SAFETY: the calling thread owns `heap` and `page`.
    unsafe {
        page::use_delayed_free(page, USE_DELAYED_FREE, false);
        page::collect(page); // frees that came in before USE_DELAYED_FREE was set
        if !(*page).free.is_null() {
            page::use_delayed_free(page, NO_DELAYED_FREE, false);
            return true;
        }
        queue_remove(heap, bin, page);
        (*page).set_flag(FLAG_IN_FULL, true);
        (*heap).queues[BIN_FULL].push_back(page);
        if hook::enabled() {
            hook::emit(
                heap,
                schema::PageFull {
                    start: (*page).start as u64,
                    flags: 0,
                },
            );
        }
        false
    }
}

/// Moves a page out of the full queue after a block of it was freed.
unsafe fn from_full(heap: *mut Heap, page: *mut Page) {
    // SAFETY: the calling thread owns `heap` and `page`.
    unsafe {
        page::use_delayed_free(page, NO_DELAYED_FREE, false);
        (*heap).queues[BIN_FULL].remove(page);
        (*page).set_flag(FLAG_IN_FULL, false);
        queue_push_back(heap, (*page).bin(), page);
        if hook::enabled() {
            hook::emit(
                heap,
                schema::PageUnfull {
                    start: (*page).start as u64,
                    flags: 0,
                },
            );
        }
    }
}

/// Frees `block` of `page` on the owning thread: push onto `local_free`, then move the page out of
/// the full queue or retire it if that is now due.
///
/// # Safety
/// The calling thread owns `page`; `block` is a live block of it (its start).
pub(crate) unsafe fn free_block_local(page: *mut Page, block: *mut Block) {
    // SAFETY: owner-only fields of an owned page.
    unsafe {
        let empty = crate::free::push_local(page, block);
        let heap = (*page).heap();
        if (*page).is_in_full() {
            from_full(heap, page);
        }
        if empty {
            retire(heap, page);
        }
    }
}

/// An empty page goes back to its segment, unless it is the only page of its size class: then it
/// stays for a few housekeeping rounds, so a loop that allocates and frees one block does not map
/// and unmap a page each time.
///
/// # Safety
/// The calling thread owns `page`, which has no used blocks and is in a regular queue.
pub(crate) unsafe fn retire(heap: *mut Heap, page: *mut Page) {
    // SAFETY: as documented.
    unsafe {
        let bin = (*page).bin();
        let q = &(*heap).queues[bin];
        if bin != BIN_HUGE && q.first == page && q.last == page {
            let bsize = (*page).block_size();
            (*page).retire_expire = if bsize <= SMALL_OBJ_SIZE_MAX { 16 } else { 4 };
            if hook::enabled() {
                hook::emit(
                    heap,
                    schema::PageRetire {
                        start: (*page).start as u64,
                        flags: 0,
                    },
                );
            }
            (*heap).retired_min = (*heap).retired_min.min(bin);
            (*heap).retired_max = (*heap).retired_max.max(bin);
            return;
        }
        free_page(heap, bin, page);
    }
}

unsafe fn free_page(heap: *mut Heap, bin: usize, page: *mut Page) {
    // SAFETY: the page is empty and owned; it leaves the queue before going to its segment.
    unsafe {
        (*page).flags.store(0, Relaxed);
        (*page).retire_expire = 0;
        queue_remove(heap, bin, page);
        segment::page_free(&raw mut (*heap).tld, page);
    }
}

/// Counts down the retired pages; those whose count reaches zero go back to their segments.
unsafe fn collect_retired(heap: *mut Heap) {
    // SAFETY: the calling thread owns `heap`.
    unsafe {
        let (lo, hi) = ((*heap).retired_min, (*heap).retired_max);
        if lo > hi {
            return;
        }
        (*heap).retired_min = BIN_FULL;
        (*heap).retired_max = 0;
        for bin in lo..=hi.min(BIN_LARGE_MAX) {
            let page = (*heap).queues[bin].first;
            if page.is_null() || (*page).retire_expire == 0 {
                continue;
            }
            if (*page).used() != 0 {
                (*page).retire_expire = 0;
                continue;
            }
            (*page).retire_expire -= 1;
            if (*page).retire_expire == 0 {
                free_page(heap, bin, page);
            } else {
                (*heap).retired_min = (*heap).retired_min.min(bin);
                (*heap).retired_max = (*heap).retired_max.max(bin);
            }
        }
    }
}

unsafe fn deferred_purge(heap: *mut Heap) {
    let now = os::clock_ms();
    // SAFETY: the calling thread owns `heap`.
    unsafe {
        // Shared state (cached segments, abandoned ones) is left to threads whose work is
        // recorded (see `hook::records`).
        if hook::records(heap) {
            segment::cache_expire(now, &mut (*heap).tld.purge_delay);
            segment::purge_abandoned(now);
        }
        let due = (*heap).tld.next_purge_ms;
        if due != 0 && due <= now {
            segment::purge_expired(&raw mut (*heap).tld, now);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Delayed frees (blocks other threads freed into this heap's full pages)

/// Frees the blocks on the heap's delayed list. A block whose page is still in `DELAYED_FREEING`
/// (its freeing thread has not finished) goes back on the list unless `all`, which waits.
///
/// # Safety
/// The calling thread owns `heap`.
pub(crate) unsafe fn delayed_free_all(heap: *mut Heap, all: bool) {
    // SAFETY: the list was published with Release CASes; we take it with Acquire.
    unsafe {
        loop {
            if (*heap).thread_delayed_free.load(Relaxed).is_null() {
                return;
            }
            let mut block = (*heap).thread_delayed_free.swap(ptr::null_mut(), Acquire);
            let mut kept = false;
            while !block.is_null() {
                let next = (*block).next;
                if !free_delayed_block(block) {
                    push_delayed(heap, block);
                    kept = true;
                }
                block = next;
            }
            if !all || !kept {
                return;
            }
            core::hint::spin_loop();
        }
    }
}

/// Pushes a block onto `heap`'s delayed list (any thread).
///
/// # Safety
/// `block` is a block no one else references; `heap` is live.
pub(crate) unsafe fn push_delayed(heap: *mut Heap, block: *mut Block) {
    // SAFETY: `heap` is live (the page's state guarantees it, see `free::free_block_mt`).
    unsafe {
        let list = &(*heap).thread_delayed_free;
        let mut head = list.load(Relaxed);
        loop {
            (*block).next = head;
            match list.compare_exchange_weak(head, block, Release, Relaxed) {
                Ok(_) => return,
                Err(cur) => head = cur,
            }
        }
    }
}

unsafe fn free_delayed_block(block: *mut Block) -> bool {
    // SAFETY: a block on our delayed list belongs to one of our pages (its state was
    // USE_DELAYED_FREE, which only the owner sets).
    unsafe {
        let seg = segment::segment_of(block.cast());
        let page = segment::page_of(seg, block.cast());
        if page::state_of((*page).thread_free.load(Acquire)) == DELAYED_FREEING {
            return false; // its freeing thread is still busy with the page
        }
        page::collect(page);
        if hook::enabled() {
            hook::emit(
                (*page).heap(),
                schema::Free {
                    ptr: block as u64,
                    flags: flags::FROM_DELAYED,
                },
            );
        }
        free_block_local(page, block);
        true
    }
}

// ---------------------------------------------------------------------------------------------
// Thread exit

/// Abandons everything `heap` holds: empty pages go back to their segments, the other pages stay
/// in segments marked abandoned, for another thread to reclaim.
///
/// The events this emits can make the thread send its buffer, and a send that waits allocates
/// (the channel's wake-up state of an exiting thread, whose thread-locals are gone). That
/// allocation comes from `heap`, which is still the thread's default: it may reclaim segments
/// just abandoned, or take a new page, into a queue already emptied. So this repeats until no
/// queue holds a page: a page left there would point at a heap that is about to be freed, and
/// at whatever thread's heap reuses its memory (a census then disagreed with the model on
/// every page of such a segment, about once in a few hundred recordings of the stress
/// workload).
///
/// # Safety
/// `heap` is the calling (exiting) thread's heap; it is not used afterwards.
pub(crate) unsafe fn abandon(heap: *mut Heap) {
    // SAFETY: forwarded contract.
    while unsafe { holds_pages(heap) } {
        // SAFETY: forwarded contract.
        unsafe { abandon_pages(heap) };
    }
}

/// Whether any of `heap`'s queues holds a page.
///
/// # Safety
/// The calling thread owns `heap`.
unsafe fn holds_pages(heap: *mut Heap) -> bool {
    // SAFETY: the calling thread owns `heap`.
    unsafe { (*heap).queues.iter().any(|q| !q.first.is_null()) }
}

/// One pass of [`abandon`] over the pages `heap`'s queues hold.
///
/// # Safety
/// As [`abandon`].
unsafe fn abandon_pages(heap: *mut Heap) {
    // SAFETY: the calling thread owns `heap` and all its pages.
    unsafe {
        // No new delayed frees may target this heap: wait out any in progress, then drain.
        for bin in 0..BIN_COUNT {
            let mut page = (*heap).queues[bin].first;
            while !page.is_null() {
                segment::page_never_delayed(page);
                page = (*page).next;
            }
        }
        delayed_free_all(heap, true);
        // First give every empty page back, then abandon the rest: a segment is abandoned when
        // all its used pages are, which must be decided after its empty pages are gone.
        for bin in 0..BIN_COUNT {
            let mut page = (*heap).queues[bin].first;
            while !page.is_null() {
                let next = (*page).next;
                page::collect(page);
                if (*page).used() == 0 {
                    free_page(heap, bin, page);
                }
                page = next;
            }
        }
        for bin in 0..BIN_COUNT {
            loop {
                let page = (*heap).queues[bin].first;
                if page.is_null() {
                    break;
                }
                queue_remove(heap, bin, page);
                (*page).set_flag(FLAG_IN_FULL, false);
                (*page).retire_expire = 0;
                segment::page_abandon(&raw mut (*heap).tld, page);
            }
        }
    }
    #[cfg(test)]
    if let Some(f) = tests::DURING_ABANDON.take() {
        f();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::{page_of, segment_of};

    std::thread_local! {
        /// Called once at the end of a pass of `abandon_pages` on this thread, if set: what an
        /// exiting thread's send that allocates does there.
        pub(super) static DURING_ABANDON: core::cell::Cell<Option<fn()>> =
            const { core::cell::Cell::new(None) };
        static LATE: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
    }

    #[test]
    fn an_allocation_while_the_heap_is_abandoned_leaves_no_page_on_it() {
        std::thread::spawn(|| {
            // SAFETY: plain allocations on this thread, then its heap abandoned as at its exit
            // (which then finds nothing left to abandon).
            unsafe {
                let held = [crate::malloc(48), crate::malloc(3000)];
                let heap = default_heap();
                // A block of a size class whose queue the pass emptied, taken after it: the
                // heap takes its segments back from the abandoned list, or a new page.
                DURING_ABANDON.set(Some(|| LATE.set(crate::malloc(48) as usize)));
                abandon(heap);
                let late = LATE.get() as *mut u8;
                assert!(!late.is_null());
                assert!(!holds_pages(heap), "a page is left in the abandoned heap");
                for p in [late, held[0], held[1]] {
                    let page = page_of(segment_of(p), p);
                    assert_ne!(
                        (*page).heap(),
                        heap,
                        "a page still names the abandoned heap"
                    );
                }
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_one_block_alloc_free_loop_reuses_one_page() {
        // SAFETY: plain allocations on this thread.
        unsafe {
            let first = crate::malloc(3000);
            let page = page_of(segment_of(first), first);
            crate::free(first);
            for _ in 0..10_000 {
                let p = crate::malloc(3000);
                assert_eq!(
                    page_of(segment_of(p), p),
                    page,
                    "retired page was given back and remade"
                );
                crate::free(p);
            }
        }
    }

    #[test]
    fn direct_slots_point_at_the_page_with_free_blocks() {
        // SAFETY: plain allocations on this thread; the heap is read by its own thread.
        unsafe {
            let p = crate::malloc(40);
            let heap = default_heap();
            assert_ne!(heap, EMPTY_HEAP_PTR);
            let page = page_of(segment_of(p), p);
            assert_eq!((*heap).pages_first[3], page); // sizes 33..=48
            assert_eq!((*heap).pages_direct[3].load(Relaxed), page);
            assert_eq!((*heap).queues[bin_of(40)].first, page);
            crate::free(p);
        }
    }

    #[test]
    fn full_pages_come_back_through_delayed_free() {
        // SAFETY: blocks are allocated here, freed by another thread, and never used after.
        unsafe {
            let size = 8000; // 8 blocks per small page
            let mut blocks: Vec<usize> = (0..64).map(|_| crate::malloc(size) as usize).collect();
            let page = page_of(segment_of(blocks[0] as *const u8), blocks[0] as *const u8);
            let same_page: Vec<usize> = blocks
                .iter()
                .copied()
                .filter(|&b| page_of(segment_of(b as *const u8), b as *const u8) == page)
                .collect();
            // the first page filled up and went to the full queue
            assert!((*page).is_in_full());
            let victim = same_page[0];
            blocks.retain(|&b| b != victim);
            std::thread::spawn(move || crate::free(victim as *mut u8))
                .join()
                .unwrap();
            // the next generic malloc processes the delayed free: the page leaves the full queue
            let mut got_victim = false;
            for _ in 0..64 {
                let p = crate::malloc(size);
                got_victim |= p as usize == victim;
                blocks.push(p as usize);
            }
            assert!(!(*page).is_in_full() || got_victim);
            assert!(got_victim, "the block freed by another thread was reused");
            for b in blocks {
                crate::free(b as *mut u8);
            }
        }
    }
}
