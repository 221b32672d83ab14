//! Pages: runs of memory inside a segment holding blocks of one size, and their three free lists.
//!
//! ```text
//!   free        malloc pops here (owner thread only)
//!   local_free  the owner's frees push here (no atomics); moved to `free` when `free` runs dry
//!   thread_free other threads' frees push here with a CAS; the owner takes the whole list at once
//! ```
//! Invariant (mimalloc's): `used + |free| + |local_free| == capacity`, where `used` counts blocks
//! handed out and not yet back on `free` or `local_free`, so it includes the blocks waiting on
//! `thread_free`. Blocks the program holds: `used - |thread_free|`. Blocks past `capacity` up to
//! `reserved` are not carved yet: [`extend_free`] carves them lazily, a few KiB at a time, so a
//! page's memory becomes resident only as it is used.
//!
//! The low two bits of `thread_free` hold the page's *delayed free* state. A page in the heap's
//! full queue is not looked at by `malloc`, so a block freed into it from another thread would
//! be found only by luck. Instead the page is switched to `USE_DELAYED_FREE`: the first
//! cross-thread free after that pushes its block onto the owning heap's `thread_delayed_free`
//! list, and the owner, on its next generic `malloc`, frees it locally, which moves the page out
//! of the full queue. This is mimalloc's design; it keeps the cross-thread free a single CAS in
//! the common case and needs no lock.
//!
//! The top 16 bits of `thread_free` count the blocks on the list, so that one CAS both pushes a
//! block and counts it, and the owner's collect takes the list and its length together:
//!
//! ```text
//!   63        48 47                       3    2     1 0
//!   | count    | block address (16-aligned) | epoch | state |
//! ```
//! The *census epoch* bit flips each time a census reads the word ([`census_reading`], one
//! atomic step), and a cross-thread free reports the epoch it pushed under (the `EPOCH` flag of
//! its `Free` event). So the trace says exactly which frees a census's `thread_free` count
//! already holds: those pushed under the epoch before the flip. A model that takes a page's
//! counts from a census while other threads' frees are still on their way (after lost events,
//! or when tracing starts on a running program) counts each of them once.
//! A page never holds more than [`THREAD_FREE_MAX`] blocks ([`init`] caps `reserved`), and user
//! addresses on x86-64 and AArch64 Linux fit in 48 bits, so neither field spills into the other.

use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicU32, AtomicUsize, Ordering::*};

use crate::heap::Heap;
use crate::hook;
use crate::schema;

/// A free block: its first word links to the next free block.
#[repr(C)]
pub struct Block {
    pub(crate) next: *mut Block,
}

/// Delayed-free states (low two bits of [`Page::thread_free`]).
pub(crate) const USE_DELAYED_FREE: usize = 0;
/// A freeing thread is pushing onto the heap's delayed list right now.
pub(crate) const DELAYED_FREEING: usize = 1;
/// Frees go to `thread_free` (the page is in a regular queue).
pub(crate) const NO_DELAYED_FREE: usize = 2;
/// Frees always go to `thread_free` (the page's heap is gone: abandoned).
pub(crate) const NEVER_DELAYED_FREE: usize = 3;
const STATE_MASK: usize = 3;
/// The census epoch bit of [`Page::thread_free`] (blocks are 16-aligned: bit 2 is free).
const TF_EPOCH: usize = 4;
/// Where the length of `thread_free` sits in the word.
const TF_COUNT_SHIFT: u32 = 48;
/// One block on `thread_free`, as added to the word.
const TF_COUNT_ONE: usize = 1 << TF_COUNT_SHIFT;
/// The block address bits of the word.
const TF_BLOCK_MASK: usize = (TF_COUNT_ONE - 1) & !(STATE_MASK | TF_EPOCH);
/// Most blocks a page may hold: the largest count the word can carry.
pub(crate) const THREAD_FREE_MAX: usize = (1 << (usize::BITS - TF_COUNT_SHIFT)) - 1;
const _: () = assert!(
    usize::BITS == 64,
    "thread_free packs its count into a 64-bit word"
);
const _: () = assert!(
    crate::SMALL_PAGE_SIZE / 16 <= THREAD_FREE_MAX,
    "a small page's blocks fit the count"
);

/// Page flag: the page is in the heap's full queue.
pub(crate) const FLAG_IN_FULL: u8 = 1;
/// Page flag: some block was handed out at an interior, aligned address.
pub(crate) const FLAG_HAS_ALIGNED: u8 = 2;

/// Page metadata; lives in its segment's header. Fields that another thread (a cross-thread free,
/// the statistics walker) may read are atomics used with `Relaxed` order; `free`, `local_free`
/// and the queue links belong to the owning thread alone.
#[repr(C)]
pub struct Page {
    // --- the fast path touches only this first cache line ---
    pub(crate) free: *mut Block,
    pub(crate) local_free: *mut Block,
    pub(crate) used: AtomicU32,
    pub(crate) local_free_count: AtomicU32,
    /// `FLAG_IN_FULL | FLAG_HAS_ALIGNED`; zero lets a local free take the fast path.
    pub(crate) flags: AtomicU8,
    /// Every block on `free` is zero but for its first word (fresh OS memory).
    pub(crate) free_is_zero: bool,
    /// Housekeeping rounds of the heap left before an empty, retired page goes back to its
    /// segment (see `heap::find_page`).
    pub(crate) retire_expire: u8,
    pub(crate) bin: AtomicU8,
    pub(crate) capacity: AtomicU32,
    pub(crate) reserved: AtomicU32,
    pub(crate) block_size: AtomicUsize,
    /// Other threads' frees: count, list head and delayed-free state in one word (see above).
    pub(crate) thread_free: AtomicUsize,
    // --- page-level state, set by the segment ---
    pub(crate) in_use: AtomicBool,
    /// Memory past `capacity` reads as zero (fresh from the OS or purged).
    pub(crate) is_zero_init: bool,
    pub(crate) is_purged: bool,
    pub(crate) index: u8,
    pub(crate) heap: AtomicPtr<Heap>,
    pub(crate) next: *mut Page,
    pub(crate) prev: *mut Page,
    /// First byte of the page's blocks.
    pub(crate) start: *mut u8,
    /// Bytes available for blocks.
    pub(crate) area: usize,
    /// When a free page's memory may go back to the OS (milliseconds, [`crate::os::clock_ms`]).
    pub(crate) purge_at_ms: u64,
}

impl Page {
    /// A page with no blocks: the direct slots of the empty heap point at it.
    pub(crate) const fn empty() -> Self {
        Self {
            free: ptr::null_mut(),
            local_free: ptr::null_mut(),
            used: AtomicU32::new(0),
            local_free_count: AtomicU32::new(0),
            flags: AtomicU8::new(0),
            free_is_zero: false,
            retire_expire: 0,
            bin: AtomicU8::new(0),
            capacity: AtomicU32::new(0),
            reserved: AtomicU32::new(0),
            block_size: AtomicUsize::new(0),
            thread_free: AtomicUsize::new(NO_DELAYED_FREE),
            in_use: AtomicBool::new(false),
            is_zero_init: false,
            is_purged: false,
            index: 0,
            heap: AtomicPtr::new(ptr::null_mut()),
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
            start: ptr::null_mut(),
            area: 0,
            purge_at_ms: 0,
        }
    }

    /// Block size in bytes.
    #[inline]
    pub fn block_size(&self) -> usize {
        self.block_size.load(Relaxed)
    }
    /// Blocks handed out and not back on `free`/`local_free` (includes `thread_free`).
    #[inline]
    pub fn used(&self) -> u32 {
        self.used.load(Relaxed)
    }
    /// Blocks carved so far.
    #[inline]
    pub fn capacity(&self) -> u32 {
        self.capacity.load(Relaxed)
    }
    /// Blocks the page can hold.
    #[inline]
    pub fn reserved(&self) -> u32 {
        self.reserved.load(Relaxed)
    }
    /// Length of `local_free`.
    #[inline]
    pub fn local_free_len(&self) -> u32 {
        self.local_free_count.load(Relaxed)
    }
    /// Length of `thread_free` (blocks pushed by other threads, not yet collected).
    #[inline]
    pub fn thread_free_len(&self) -> u32 {
        count_of(self.thread_free.load(Relaxed))
    }
    /// Length of `free`.
    #[inline]
    pub fn free_len(&self) -> u32 {
        self.capacity()
            .saturating_sub(self.used())
            .saturating_sub(self.local_free_len())
    }
    /// Size class.
    #[inline]
    pub fn bin(&self) -> usize {
        usize::from(self.bin.load(Relaxed))
    }
    /// Whether the page is in its heap's full queue.
    #[inline]
    pub fn is_in_full(&self) -> bool {
        self.flags.load(Relaxed) & FLAG_IN_FULL != 0
    }
    /// Whether the segment has handed this page to a heap.
    #[inline]
    pub fn is_in_use(&self) -> bool {
        self.in_use.load(Relaxed)
    }
    /// Index of the page in its segment.
    #[inline]
    pub fn index(&self) -> usize {
        usize::from(self.index)
    }
    /// Address of the first block.
    #[inline]
    pub fn start(&self) -> *mut u8 {
        self.start
    }
    /// The owning heap, null when abandoned.
    #[inline]
    pub fn heap(&self) -> *mut Heap {
        self.heap.load(Relaxed)
    }

    /// The flags, read by the owning thread: only the owner writes them (and a thread that takes
    /// a segment over does so before it owns it), so its own read races no write and may be a
    /// plain load, which LLVM folds into the compare that tests it.
    ///
    /// # Safety
    /// The calling thread owns the page's segment.
    #[inline(always)]
    pub(crate) unsafe fn flags_owned(&self) -> u8 {
        // SAFETY: every write to `flags` happens on the owning thread, or before ownership passed
        // to it (through the abandoned list's lock and the `thread_id` store it follows); other
        // threads only read, so this plain read races no write.
        unsafe { self.flags.as_ptr().read() }
    }

    /// Takes one from `used` on the owning thread; true when it reaches zero (the page is empty).
    /// On x86-64 a `dec` of the word in memory and a jump on its zero flag: the relaxed load and
    /// store it replaces are three instructions and a test, which LLVM does not fuse.
    ///
    /// # Safety
    /// The calling thread owns the page; `used > 0`.
    #[inline(always)]
    pub(crate) unsafe fn used_dec_is_zero(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            'zero: {
                // SAFETY: only the owner writes `used` (the contract), other threads load it with
                // relaxed order; an unlocked `dec` of an aligned dword is a load and a store, each
                // single-copy atomic on x86-64: the same relaxed load and store as the portable
                // code below, fused.
                unsafe {
                    core::arch::asm!(
                        "dec dword ptr [{page} + {used}]",
                        "jz {zero}",
                        page = in(reg) ptr::from_ref(self),
                        used = const core::mem::offset_of!(Page, used),
                        zero = label { break 'zero true },
                        options(nostack),
                    );
                }
                false
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let used = self.used() - 1;
            self.used.store(used, Relaxed);
            used == 0
        }
    }

    #[inline]
    pub(crate) fn set_flag(&self, flag: u8, on: bool) {
        let f = self.flags.load(Relaxed);
        self.flags
            .store(if on { f | flag } else { f & !flag }, Relaxed);
    }

    /// The start of the block containing `p` (for interior, aligned pointers).
    #[inline]
    pub(crate) fn block_start_of(&self, p: *const u8) -> *mut u8 {
        let offset = p as usize - self.start as usize;
        let bsize = self.block_size();
        self.start.wrapping_add(offset - offset % bsize)
    }
}

#[inline]
pub(crate) fn state_of(tf: usize) -> usize {
    tf & STATE_MASK
}
#[inline]
pub(crate) fn block_of(tf: usize) -> *mut Block {
    (tf & TF_BLOCK_MASK) as *mut Block
}
/// The number of blocks on the `thread_free` list of word `tf`.
#[inline]
pub(crate) fn count_of(tf: usize) -> u32 {
    (tf >> TF_COUNT_SHIFT) as u32
}
/// The census epoch of word `tf` (see the module documentation).
#[inline]
pub(crate) fn epoch_of(tf: usize) -> bool {
    tf & TF_EPOCH != 0
}
/// The `thread_free` word `tf` with `block` pushed: `block` the head, the count one more, the
/// state and the census epoch kept. `block.next` must already link to `block_of(tf)`.
#[inline(always)]
pub(crate) fn pushed(tf: usize, block: *mut Block) -> usize {
    debug_assert_eq!(block as usize & !TF_BLOCK_MASK, 0, "a block is 16-aligned");
    ((tf & !TF_BLOCK_MASK) + TF_COUNT_ONE) | block as usize
}

/// A census's reading of `page.thread_free`: its length, and the census epoch from now on.
/// Flips the epoch in the same atomic step as the read, so every cross-thread free pushed
/// before it reports the old epoch and every later one the new (see the module documentation).
pub(crate) fn census_reading(page: &Page) -> (u32, bool) {
    let before = page.thread_free.fetch_xor(TF_EPOCH, AcqRel);
    (count_of(before), !epoch_of(before))
}

/// Resets a page that a segment just handed out and carves its first blocks.
///
/// # Safety
/// `page` is in use by `heap`'s thread and holds no live blocks.
pub(crate) unsafe fn init(page: *mut Page, heap: *mut Heap, bin: usize, block_size: usize) {
    // SAFETY: the caller owns the empty page; nobody else reads the owner-only fields.
    unsafe {
        let pg = &mut *page;
        pg.block_size.store(block_size, Relaxed);
        pg.bin.store(bin as u8, Relaxed);
        let reserved = (pg.area / block_size.max(1)).min(THREAD_FREE_MAX) as u32;
        pg.reserved.store(reserved, Relaxed);
        pg.capacity.store(0, Relaxed);
        pg.used.store(0, Relaxed);
        pg.local_free_count.store(0, Relaxed);
        pg.free = ptr::null_mut();
        pg.local_free = ptr::null_mut();
        pg.flags.store(0, Relaxed);
        pg.free_is_zero = false;
        pg.retire_expire = 0;
        pg.thread_free.store(NO_DELAYED_FREE, Release);
        pg.heap.store(heap, Release);
        pg.next = ptr::null_mut();
        pg.prev = ptr::null_mut();
        if hook::enabled() {
            let kind = (*crate::segment::segment_of_page(page)).kind() as u8;
            hook::emit(
                heap,
                schema::PageInit {
                    start: pg.start as u64,
                    block_size: block_size as u64,
                    reserved,
                    bin: bin as u16,
                    flags: kind,
                },
            );
        }
        extend_free(page);
    }
}

/// Largest number of bytes carved per extension: pages become resident as they are used.
const MAX_EXTEND_SIZE: usize = 4 * 1024;

/// Carves the next blocks of an empty `free` list out of the page's uncarved memory.
///
/// # Safety
/// The calling thread owns `page` and its `free` list is empty.
pub(crate) unsafe fn extend_free(page: *mut Page) {
    // SAFETY: owner-only fields; the carved blocks lie inside the page's area
    // (`capacity + extend <= reserved` and `reserved * block_size <= area`).
    unsafe {
        let pg = &mut *page;
        let cap = pg.capacity() as usize;
        let reserved = pg.reserved() as usize;
        if cap >= reserved {
            return;
        }
        let bsize = pg.block_size();
        let extend = (reserved - cap).min((MAX_EXTEND_SIZE / bsize).max(1));
        let first = pg.start.add(cap * bsize);
        let mut block = first;
        for _ in 1..extend {
            let next = block.add(bsize);
            (*block.cast::<Block>()).next = next.cast();
            block = next;
        }
        (*block.cast::<Block>()).next = pg.free;
        pg.free = first.cast();
        pg.free_is_zero = pg.is_zero_init;
        pg.capacity.store((cap + extend) as u32, Relaxed);
        if hook::enabled() {
            hook::emit(
                pg.heap(),
                schema::PageExtend {
                    start: pg.start as u64,
                    capacity: (cap + extend) as u32,
                    flags: 0,
                },
            );
        }
    }
}

/// Collects `thread_free` into `local_free`, then `local_free` into `free` if `free` is empty.
///
/// Joining two lists means walking one to its tail, and every link of it is a load that
/// misses: `local_free`'s blocks were freed long ago, `thread_free`'s by other cores (on the
/// suite's `stress` that walk was 5 % of the run). So where `free` is empty and both lists hold
/// blocks (the usual case: `malloc` collects when `free` runs out), nothing is walked:
/// `local_free` becomes `free` and the thread-freed blocks become `local_free`, to be taken
/// when `free` runs out again. The hook reports that as its two steps, in order: `local_free`
/// joins `free`, then `thread_free` joins `local_free`.
///
/// # Safety
/// The calling thread owns `page`.
pub(crate) unsafe fn collect(page: *mut Page) {
    // SAFETY: owner-only fields; the thread_free list was published with Release by the CAS
    // in `free_block_mt` and is taken with Acquire here, so its links are visible.
    unsafe {
        let pg = &mut *page;
        let (head, count) = take_thread_free(pg);
        if count > 0 && pg.free.is_null() && !pg.local_free.is_null() {
            // `local_free` becomes `free` first: the thread-freed blocks then make up
            // `local_free` alone, and neither list is walked.
            let moved = local_to_free(pg);
            report_collect(pg, moved, 0);
        }
        if count > 0 {
            if pg.local_free.is_null() {
                pg.local_free = head;
            } else {
                // Find the tail: `count` links, so a corrupted (cyclic) list cannot hang the owner.
                let mut tail = head;
                for _ in 1..count {
                    if (*tail).next.is_null() {
                        break;
                    }
                    tail = (*tail).next;
                }
                (*tail).next = pg.local_free;
                pg.local_free = head;
            }
            pg.local_free_count
                .store(pg.local_free_len() + count, Relaxed);
            pg.used.store(pg.used() - count, Relaxed);
        }
        let to_free = if pg.free.is_null() && !pg.local_free.is_null() {
            local_to_free(pg)
        } else {
            0
        };
        report_collect(pg, to_free, count);
    }
}

/// Moves the whole of `local_free` to `free` (which is empty); returns how many blocks moved.
#[inline]
fn local_to_free(pg: &mut Page) -> u32 {
    let moved = pg.local_free_len();
    pg.free = pg.local_free;
    pg.local_free = ptr::null_mut();
    pg.local_free_count.store(0, Relaxed);
    pg.free_is_zero = false;
    moved
}

/// Takes the page's `thread_free` list and its length in one step, leaving the delayed-free
/// state and the census epoch; (null, 0) if it is empty. For the page's owner.
#[inline]
fn take_thread_free(pg: &Page) -> (*mut Block, u32) {
    let mut tf = pg.thread_free.load(Relaxed);
    if block_of(tf).is_null() {
        return (ptr::null_mut(), 0);
    }
    loop {
        match pg.thread_free.compare_exchange_weak(
            tf,
            tf & (STATE_MASK | TF_EPOCH),
            AcqRel,
            Relaxed,
        ) {
            Ok(_) => return (block_of(tf), count_of(tf)),
            Err(cur) => tf = cur,
        }
    }
}

/// Reports a collection of page `pg` to the hook: `to_free` blocks moved from `local_free` to
/// `free`, `from_thread_free` from `thread_free` to `local_free` (in that order when both).
///
/// # Safety
/// The calling thread owns `pg`.
#[inline]
unsafe fn report_collect(pg: &Page, to_free: u32, from_thread_free: u32) {
    if hook::enabled() && (from_thread_free | to_free) != 0 {
        // SAFETY: the page's heap is the calling thread's (it owns the page).
        unsafe {
            hook::emit(
                pg.heap(),
                schema::PageCollect {
                    start: pg.start as u64,
                    to_free: u64::from(to_free),
                    from_thread_free,
                    flags: 0,
                },
            );
        }
    }
}

/// Sets the page's delayed-free state to `state`, waiting while another thread is in the middle
/// of a delayed free. A page that is `NEVER_DELAYED_FREE` keeps that unless `override_never`.
///
/// # Safety
/// `page` is a live page.
pub(crate) unsafe fn use_delayed_free(page: *mut Page, state: usize, override_never: bool) {
    // SAFETY: the caller guarantees the page is live; thread_free is atomic.
    let tf_cell = unsafe { &(*page).thread_free };
    let mut spins = 0u32;
    loop {
        let tf = tf_cell.load(Acquire);
        let old = state_of(tf);
        if old == DELAYED_FREEING {
            spins += 1;
            if spins > 64 {
                // SAFETY: no preconditions.
                unsafe { libc::sched_yield() };
            } else {
                core::hint::spin_loop();
            }
            continue;
        }
        if old == state || (old == NEVER_DELAYED_FREE && !override_never) {
            return;
        }
        if tf_cell
            .compare_exchange_weak(tf, (tf & !STATE_MASK) | state, AcqRel, Relaxed)
            .is_ok()
        {
            return;
        }
    }
}

/// Pops a block from `free` (which must be non-empty), zeroing `zero_len` bytes if asked.
///
/// # Safety
/// The calling thread owns `page`, `page.free` is not null and `zero_len <= block_size`.
#[inline(always)]
pub(crate) unsafe fn pop(page: *mut Page, zero_len: usize) -> *mut u8 {
    // SAFETY: owner-only fields; `free` is a valid block of this page.
    unsafe {
        let pg = &mut *page;
        let block = pg.free;
        pg.free = (*block).next;
        pg.used.store(pg.used() + 1, Relaxed);
        if zero_len > 0 {
            if pg.free_is_zero {
                (*block).next = ptr::null_mut();
            } else {
                crate::os::zero(block.cast::<u8>(), zero_len);
            }
        }
        block.cast()
    }
}

#[cfg(test)]
mod tests {
    use crate::segment::{page_of, segment_of};

    /// The blocks of a free list from `head`, as addresses.
    fn list(mut b: *mut super::Block) -> Vec<usize> {
        let mut v = Vec::new();
        while !b.is_null() {
            v.push(b as usize);
            // SAFETY: a free list of a page this thread owns: its blocks, linked through `next`.
            b = unsafe { (*b).next };
        }
        v
    }

    fn invariant(page: &super::Page) {
        let free = list(page.free).len() as u32;
        assert_eq!(
            page.free_len(),
            free,
            "free-list length derived from the counters"
        );
        assert_eq!(page.used() + free + page.local_free_len(), page.capacity());
    }

    #[test]
    fn free_lists_keep_the_capacity_invariant() {
        // SAFETY: blocks of one page, used on this thread, freed once; thread_free pushes come
        // from another thread after the allocation.
        unsafe {
            let blocks: Vec<usize> = (0..300).map(|_| crate::malloc(100) as usize).collect();
            let p0 = blocks[0] as *const u8;
            let page = &*page_of(segment_of(p0), p0);
            invariant(page);
            let (mine, theirs): (Vec<usize>, Vec<usize>) =
                blocks.iter().partition(|&&b| b % 32 == 0);
            for &b in &mine {
                crate::free(b as *mut u8);
            }
            invariant(page);
            let theirs_on_page: u32 = theirs
                .iter()
                .filter(|&&b| {
                    page_of(segment_of(b as *const u8), b as *const u8)
                        == core::ptr::from_ref(page).cast_mut()
                })
                .count() as u32;
            std::thread::spawn(move || {
                for b in theirs {
                    crate::free(b as *mut u8);
                }
            })
            .join()
            .unwrap();
            if !page.is_in_full() {
                assert_eq!(page.thread_free_len(), theirs_on_page);
            }
            invariant(page);
            super::collect(core::ptr::from_ref(page).cast_mut());
            assert_eq!(page.thread_free_len(), 0);
            invariant(page);
        }
    }

    /// Collecting when `free` is empty and both other lists hold blocks walks neither:
    /// `local_free` becomes `free`, the thread-freed blocks become `local_free`.
    #[test]
    fn collecting_into_an_empty_free_list_swaps_the_lists_whole() {
        std::thread::spawn(|| {
            // SAFETY: blocks of this thread's page, freed once each (some from another thread).
            unsafe {
                let first = crate::malloc(200);
                let page_ptr = page_of(segment_of(first), first);
                let page = &*page_ptr;
                let mut blocks = vec![first as usize];
                while !page.free.is_null() || page.capacity() < page.reserved() {
                    let b = crate::malloc(200);
                    assert_eq!(
                        page_of(segment_of(b), b),
                        page_ptr,
                        "a fresh thread's first page"
                    );
                    blocks.push(b as usize);
                }
                assert!(
                    page.free.is_null() && blocks.len() > 8,
                    "the page never filled"
                );
                let mine: Vec<usize> = blocks.iter().copied().step_by(3).collect();
                let theirs: Vec<usize> = blocks.iter().copied().skip(1).step_by(3).collect();
                for &b in &mine {
                    crate::free(b as *mut u8);
                }
                let t = theirs.clone();
                std::thread::spawn(move || {
                    for b in t {
                        crate::free(b as *mut u8);
                    }
                })
                .join()
                .unwrap();
                // Not in the full queue (no `malloc` found it empty), so the cross-thread frees
                // went to its `thread_free`, not to the heap's delayed list.
                let (local, thread) = (list(page.local_free), page.thread_free_len());
                assert_eq!(local.len(), mine.len());
                assert_eq!(thread as usize, theirs.len());
                assert!(page.free.is_null());
                super::collect(page_ptr);
                let sorted = |mut v: Vec<usize>| {
                    v.sort_unstable();
                    v
                };
                assert_eq!(
                    sorted(list(page.free)),
                    sorted(mine.clone()),
                    "free = old local_free"
                );
                assert_eq!(sorted(list(page.local_free)), sorted(theirs.clone()));
                assert_eq!(page.local_free_len() as usize, theirs.len());
                assert_eq!(page.thread_free_len(), 0);
                invariant(page);
                for (i, &b) in blocks.iter().enumerate() {
                    if i % 3 == 2 {
                        crate::free(b as *mut u8);
                    }
                }
            }
        })
        .join()
        .expect("the test thread");
    }

    /// A census reading counts exactly the cross-thread frees pushed before it, and flips the
    /// epoch they report: the ones before carry the old epoch, the ones after the new; pushing
    /// and collecting keep the epoch.
    #[test]
    fn a_census_reading_splits_cross_thread_frees_by_epoch() {
        // SAFETY: blocks of one page, allocated on this thread and freed once each, from
        // another thread; the page is this thread's.
        unsafe {
            let blocks: Vec<usize> = (0..8).map(|_| crate::malloc(48) as usize).collect();
            let p0 = blocks[0] as *const u8;
            let page_ptr = page_of(segment_of(p0), p0);
            let page = &*page_ptr;
            assert!(
                blocks
                    .iter()
                    .all(|&b| page_of(segment_of(b as *const u8), b as *const u8) == page_ptr)
            );
            let free_from_other = |b: usize| {
                std::thread::spawn(move || {
                    let seg = segment_of(b as *const u8);
                    let pg = page_of(seg, b as *const u8);
                    crate::free::free_block_mt(pg, b as *mut super::Block)
                })
                .join()
                .unwrap()
            };
            let before = super::epoch_of(page.thread_free.load(super::Relaxed));
            let f1 = free_from_other(blocks[1]);
            let f2 = free_from_other(blocks[2]);
            let (count, after) = super::census_reading(page);
            assert_eq!(
                count, 2,
                "the reading counts the two frees pushed before it"
            );
            assert_eq!(after, !before, "the reading flips the epoch");
            let f3 = free_from_other(blocks[3]);
            let epoch = |f: u8| f & crate::event::flags::EPOCH != 0;
            assert_eq!((epoch(f1), epoch(f2), epoch(f3)), (before, before, after));
            assert_eq!(page.thread_free_len(), 3);
            super::collect(page_ptr);
            assert_eq!(page.thread_free_len(), 0);
            assert_eq!(
                super::epoch_of(page.thread_free.load(super::Relaxed)),
                after
            );
            assert_eq!(
                epoch(free_from_other(blocks[4])),
                after,
                "a collect keeps the epoch"
            );
            super::collect(page_ptr);
            for (i, &b) in blocks.iter().enumerate() {
                if !(1..=4).contains(&i) {
                    crate::free(b as *mut u8);
                }
            }
        }
    }
}
