//! `malloc` and friends. The fast path: look up the page in the heap's direct slot for the size,
//! pop its `free` list. Everything else goes through [`malloc_miss`]: the recording path while
//! the hook is on (it empties the direct slots, so the fast path never tests it), else
//! [`malloc_generic`].

use core::ptr;

use crate::event::flags;
use crate::heap::{self, EMPTY_HEAP_PTR, Heap};
use crate::page::{self, FLAG_HAS_ALIGNED, Page};
use crate::schema;
use crate::segment::{self, page_of, segment_of};
use crate::{MAX_ALIGN, MAX_ALLOC_SIZE, SMALL_SIZE_MAX, check, hook, init, options};

/// Reports an allocation to the hook (one predictable branch when it is off).
#[inline(always)]
unsafe fn traced(heap: *mut Heap, p: *mut u8, size: usize, flags: u8) -> *mut u8 {
    if hook::enabled() && !p.is_null() {
        // SAFETY: `heap` is the calling thread's.
        unsafe { hook::alloc_event(heap, p, size, flags) }
    } else {
        p
    }
}

/// Allocates `size` bytes aligned to 16; null when out of memory or `size > MAX_ALLOC_SIZE`.
/// `malloc(0)` returns a unique pointer.
///
/// # Safety
/// Always safe to call; the result must be released with [`crate::free`] (or `realloc`).
#[inline]
pub unsafe fn malloc(size: usize) -> *mut u8 {
    // SAFETY: forwarded.
    unsafe { alloc_fast::<false>(size) }
}

/// [`malloc`], zeroed.
///
/// # Safety
/// As [`malloc`].
#[inline]
pub unsafe fn zalloc(size: usize) -> *mut u8 {
    // SAFETY: forwarded.
    unsafe { alloc_fast::<true>(size) }
}

/// The fast path of [`malloc`] (and, with `ZERO`, [`zalloc`]): pop the free list of the page in
/// the heap's direct slot for the size. It does not test the hook: while the hook is on, every
/// direct slot points at the empty page ([`heap::direct_off`]), so the fast path misses.
///
/// The paths it leaves for are `extern "C"` functions: they cannot unwind (an allocator must
/// not), so a C entry point that inlines this fast path needs no landing pad around them and
/// reaches them with a jump instead of a call with a stack frame.
///
/// # Safety
/// As [`malloc`].
#[inline(always)]
unsafe fn alloc_fast<const ZERO: bool>(size: usize) -> *mut u8 {
    let heap = heap::default_heap();
    // SAFETY: `heap` is the calling thread's heap; a page from the direct slot has a free block
    // of at least `size` bytes.
    unsafe {
        let page = direct_page(heap, size);
        if !page.is_null() {
            return page::pop(page, if ZERO { size.max(1) } else { 0 });
        }
        malloc_miss::<ZERO>(heap, size)
    }
}

/// Where the fast path goes when its direct slot has no block: the recording path if the hook
/// is on, else the generic path. Both by tail calls, so it needs no stack frame (the stack
/// entry finds the caller's registers through it: see `stacks`).
///
/// # Safety
/// As [`malloc`]; `heap` is [`heap::default_heap`].
#[inline(never)]
unsafe extern "C" fn malloc_miss<const ZERO: bool>(heap: *mut Heap, size: usize) -> *mut u8 {
    // SAFETY: forwarded.
    unsafe {
        if hook::enabled() {
            // With the hook's release store: this thread's slots, emptied before the hook went
            // on, read empty from now on (no instruction on x86-64, where loads are acquires).
            core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
            return alloc_traced::<ZERO>(heap, size);
        }
        malloc_generic(heap, size, ZERO)
    }
}

/// [`alloc_fast`] with the hook on: the same steps on the heap's `pages_first` slots (the direct
/// ones are empty), with the allocation reported. Out of line, so that the fast path inlined
/// into callers is the same with the hook compiled in (and off) as compiled out: with the event
/// write inlined, the trees benchmark ran 15-20% slower. Its rare cases are tail calls: no stack
/// frame.
///
/// Takes the heap from [`malloc_miss`] in the register it came in, rather than reading the
/// thread pointer again.
///
/// # Safety
/// As [`malloc`]; `heap` is [`heap::default_heap`].
#[inline(never)]
unsafe extern "C" fn alloc_traced<const ZERO: bool>(heap: *mut Heap, size: usize) -> *mut u8 {
    // SAFETY: as in `alloc_fast`; the generic path reports the allocation itself.
    unsafe {
        // One compare decides whether the allocation may get a stack; the rest is out of line,
        // reached by a tail call so that it finds the caller's registers (see `stacks`).
        if (*heap).stacks.sampler.take(size) {
            let how = crate::stacks::Shape::plain(ZERO);
            return crate::stacks::alloc_sampled_entry(size, how, heap);
        }
        let page = first_page(heap, size);
        if !page.is_null() {
            let p = page::pop(page, if ZERO { size.max(1) } else { 0 });
            return hook::alloc_event(heap, p, size, if ZERO { flags::ZERO } else { 0 });
        }
        malloc_generic(heap, size, ZERO)
    }
}

/// [`malloc`]'s fast path alone: a block from the page in the direct slot for `size` when that
/// page has a free block (never while the hook is on: the slots are empty then); null
/// otherwise, and then the caller calls [`malloc`]. For a C entry point that handles the rare
/// cases out of line (`errno`), so that its fast path needs no stack frame.
///
/// # Safety
/// As [`malloc`].
#[inline(always)]
pub unsafe fn malloc_fast(size: usize) -> *mut u8 {
    // SAFETY: as in `alloc_fast`.
    unsafe {
        let page = direct_page(heap::default_heap(), size);
        if page.is_null() {
            return page.cast();
        }
        page::pop(page, 0)
    }
}

/// [`malloc`] after [`malloc_fast`] returned null: the rest of its path (recording, or the
/// generic path), without looking at the direct slot again.
///
/// # Safety
/// As [`malloc`].
#[inline(always)]
pub unsafe fn malloc_missed(size: usize) -> *mut u8 {
    // SAFETY: forwarded; the heap is the calling thread's.
    unsafe { malloc_miss::<false>(heap::default_heap(), size) }
}

/// The page in `heap`'s direct slot for `size` if the size has one and its page a free block;
/// null otherwise (always while the hook is on).
///
/// # Safety
/// `heap` is the calling thread's heap (or the empty heap).
#[inline(always)]
unsafe fn direct_page(heap: *mut Heap, size: usize) -> *mut Page {
    if size > SMALL_SIZE_MAX {
        return ptr::null_mut();
    }
    // SAFETY: `size / 16` rounded up is at most SMALL_SIZE_MAX / 16, inside the direct slots; a
    // direct slot always points at a page of this thread's heap or at the empty page.
    unsafe {
        let slot = (*heap).pages_direct.get_unchecked(size.div_ceil(16));
        with_free_block(slot.load(core::sync::atomic::Ordering::Relaxed))
    }
}

/// [`direct_page`] from the `pages_first` slots, which the hook leaves alone: the page the
/// recording paths take a block from.
///
/// # Safety
/// As [`direct_page`].
#[inline(always)]
unsafe fn first_page(heap: *mut Heap, size: usize) -> *mut Page {
    if size > SMALL_SIZE_MAX {
        return ptr::null_mut();
    }
    // SAFETY: as in `direct_page`.
    unsafe { with_free_block(*(*heap).pages_first.get_unchecked(size.div_ceil(16))) }
}

/// `page` if it has a free block, else null.
///
/// # Safety
/// `page` is a page of the calling thread's heap or the empty page.
#[inline(always)]
unsafe fn with_free_block(page: *mut Page) -> *mut Page {
    // SAFETY: the contract.
    if unsafe { (*page).free.is_null() } {
        ptr::null_mut()
    } else {
        page
    }
}

/// Zeroed memory for `count` elements of `size` bytes; null if the product overflows.
///
/// # Safety
/// As [`malloc`].
pub unsafe fn calloc(count: usize, size: usize) -> *mut u8 {
    match count.checked_mul(size) {
        // SAFETY: forwarded.
        Some(total) => unsafe { zalloc(total) },
        None => ptr::null_mut(),
    }
}

/// The calling thread's heap, created on first use. Null when out of memory.
#[inline]
unsafe fn ensure_heap(heap: *mut Heap) -> *mut Heap {
    if heap == EMPTY_HEAP_PTR {
        init::thread_init()
    } else {
        heap
    }
}

/// The generic path: initialise the thread, find a page with a free block, pop it.
///
/// # Safety
/// `heap` is [`heap::default_heap`].
#[inline(never)]
pub(crate) unsafe extern "C" fn malloc_generic(
    heap: *mut Heap,
    size: usize,
    zero: bool,
) -> *mut u8 {
    // SAFETY: the heap is this thread's; a page from `find_page` has a free block.
    unsafe {
        let made = heap == EMPTY_HEAP_PTR;
        let heap = ensure_heap(heap);
        if heap.is_null() {
            return ptr::null_mut();
        }
        let p = generic_block(heap, size, zero);
        heap::refill_direct(heap, size);
        let p = traced(heap, p, size, if zero { flags::ZERO } else { 0 });
        if made {
            init::end_if_late(heap);
        }
        p
    }
}

/// The block of the generic path, not reported.
///
/// # Safety
/// `heap` is the calling thread's heap (not the empty heap).
#[inline(always)]
unsafe fn generic_block(heap: *mut Heap, size: usize, zero: bool) -> *mut u8 {
    // SAFETY: forwarded; a page from `find_page` has a free block.
    unsafe {
        if options::check() {
            check::malloc(heap, size, MAX_ALIGN, zero)
        } else {
            let page = heap::find_page(heap, size);
            if page.is_null() {
                return ptr::null_mut();
            }
            page::pop(page, if zero { size.max(1) } else { 0 })
        }
    }
}

/// A block of `size` bytes (zeroed with `zero`) from `heap`, not reported: the allocation of
/// the stack-capturing path ([`crate::stacks`]), which reports it with its stack.
///
/// # Safety
/// `heap` is the calling thread's heap (not the empty heap).
pub(crate) unsafe fn block_untraced(heap: *mut Heap, size: usize, zero: bool) -> *mut u8 {
    // SAFETY: forwarded; a page from the first slot has a free block of at least `size` bytes.
    unsafe {
        let page = first_page(heap, size);
        if !page.is_null() {
            return page::pop(page, if zero { size.max(1) } else { 0 });
        }
        generic_block(heap, size, zero)
    }
}

/// Allocates `size` bytes aligned to `align` (a power of two; any size). Null otherwise or when out
/// of memory.
///
/// # Safety
/// As [`malloc`].
#[inline]
pub unsafe fn malloc_aligned(size: usize, align: usize) -> *mut u8 {
    // SAFETY: forwarded.
    unsafe { aligned(size, align, false) }
}

/// [`malloc_aligned`], zeroed.
///
/// # Safety
/// As [`malloc`].
#[inline]
pub unsafe fn zalloc_aligned(size: usize, align: usize) -> *mut u8 {
    // SAFETY: forwarded.
    unsafe { aligned(size, align, true) }
}

/// Inlined into each entry point, so that each reaches [`aligned_traced`] from a call site of
/// its own (the stack entry's calibration tells them apart; see [`crate::stacks`]).
#[inline(always)]
unsafe fn aligned(size: usize, align: usize, zero: bool) -> *mut u8 {
    if !align.is_power_of_two() || align > MAX_ALLOC_SIZE {
        return ptr::null_mut();
    }
    if hook::enabled() {
        // SAFETY: forwarded.
        return unsafe { aligned_traced(size, align, zero) };
    }
    if align <= MAX_ALIGN {
        // SAFETY: forwarded.
        return unsafe { if zero { zalloc(size) } else { malloc(size) } };
    }
    let heap = heap::default_heap();
    let made = heap == EMPTY_HEAP_PTR;
    // SAFETY: the calling thread's heap.
    unsafe {
        let (heap, p) = aligned_untraced(heap, size, align, zero);
        if made {
            init::end_if_late(heap);
        }
        p
    }
}

/// [`aligned`] with the hook on: as [`alloc_traced`], one compare decides whether the
/// allocation may get a stack, and the stack entry is reached by a tail call.
///
/// # Safety
/// As [`malloc`]; `align` is a power of two no larger than [`MAX_ALLOC_SIZE`].
#[inline(never)]
unsafe extern "C" fn aligned_traced(size: usize, align: usize, zero: bool) -> *mut u8 {
    let heap = heap::default_heap();
    // SAFETY: `heap` is the calling thread's heap; the empty heap's countdown is 0, so a thread
    // without a heap of its own goes to the stack entry, which makes one.
    unsafe {
        if (*heap).stacks.sampler.take(size) {
            let how = crate::stacks::Shape { align, zero }.encode();
            return crate::stacks::alloc_sampled_entry(size, how, heap);
        }
        let made = heap == EMPTY_HEAP_PTR;
        let (heap, p) = aligned_untraced(heap, size, align, zero);
        let p = traced(heap, p, size, aligned_flags(align, zero));
        if made {
            init::end_if_late(heap);
        }
        p
    }
}

/// The event flags of an allocation aligned to `align`.
pub(crate) fn aligned_flags(align: usize, zero: bool) -> u8 {
    let aligned = if align > MAX_ALIGN { flags::ALIGNED } else { 0 };
    aligned | if zero { flags::ZERO } else { 0 }
}

/// An `align`-aligned block of `size` bytes, not reported: the heap it came from (made for the
/// thread if `heap` is the empty heap) and the block, null when out of memory or too large.
///
/// # Safety
/// `heap` is the calling thread's heap or the empty heap; `align` is a power of two.
pub(crate) unsafe fn aligned_untraced(
    heap: *mut Heap,
    size: usize,
    align: usize,
    zero: bool,
) -> (*mut Heap, *mut u8) {
    if size > MAX_ALLOC_SIZE {
        return (heap, ptr::null_mut());
    }
    // SAFETY: as in `malloc`; the heap is made before a block is taken from it.
    unsafe {
        if align > MAX_ALIGN && size <= SMALL_SIZE_MAX {
            // Take the next free block when it happens to be aligned (the empty heap's pages have
            // none).
            let page = *(*heap).pages_first.get_unchecked(size.div_ceil(16));
            let block = (*page).free;
            if !block.is_null() && (block as usize) & (align - 1) == 0 {
                return (heap, page::pop(page, if zero { size.max(1) } else { 0 }));
            }
        }
        let heap = ensure_heap(heap);
        if heap.is_null() {
            return (heap, ptr::null_mut());
        }
        if align <= MAX_ALIGN {
            return (heap, block_untraced(heap, size, zero));
        }
        (heap, aligned_block(heap, size, align, zero))
    }
}

/// An aligned block for [`aligned_untraced`]: over-allocate within a bin and align inside the block,
/// or a huge page whose single block starts aligned.
unsafe fn aligned_block(heap: *mut Heap, size: usize, align: usize, zero: bool) -> *mut u8 {
    // SAFETY: the heap is this thread's; pages from `find_page`/`huge_page` have a free block;
    // the aligned pointer stays inside the block because the block has `align - 1` spare bytes.
    unsafe {
        if options::check() {
            return check::malloc(heap, size, align, zero);
        }
        let Some(total) = size.checked_add(align - 1) else {
            return ptr::null_mut();
        };
        if segment::aligned_fits_a_page(total, align) {
            let page = heap::find_page(heap, total);
            if page.is_null() {
                return ptr::null_mut();
            }
            let block = page::pop(page, if zero { total } else { 0 });
            let p = (block as usize).next_multiple_of(align) as *mut u8;
            if p != block {
                (*page).set_flag(FLAG_HAS_ALIGNED, true);
            }
            p
        } else {
            let page = heap::huge_page(heap, size, align);
            if page.is_null() {
                return ptr::null_mut();
            }
            page::pop(page, if zero { size.max(1) } else { 0 })
        }
    }
}

/// Bytes usable at `p` (at least what was asked for); 0 for null.
///
/// # Safety
/// `p` is null or a live pointer from heaplens.
pub unsafe fn usable_size(p: *const u8) -> usize {
    if p.is_null() {
        return 0;
    }
    if options::check() {
        check::verify_segment(segment_of(p), p); // a foreign pointer: report, don't fault
    }
    // SAFETY: `p` is live, so its segment header and page metadata are readable.
    unsafe {
        let page = page_of(segment_of(p), p);
        if options::check() {
            return check::requested_size(page, p);
        }
        let bsize = (*page).block_size();
        if (*page).flags.load(core::sync::atomic::Ordering::Relaxed) & FLAG_HAS_ALIGNED != 0 {
            bsize - (p as usize - (*page).block_start_of(p) as usize)
        } else {
            bsize
        }
    }
}

/// Resizes the block at `p` to `new_size` bytes, in place while the block fits and is not more
/// than twice too large. Null `p` allocates. On failure returns null and leaves `p` intact.
/// `new_size == 0` frees `p` and returns a fresh minimal block.
///
/// # Safety
/// `p` is null or a live pointer from heaplens, not used afterwards unless null is returned.
pub unsafe fn realloc(p: *mut u8, new_size: usize) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe { realloc_aligned(p, new_size, MAX_ALIGN) }
}

/// [`realloc`] keeping the alignment `align` (a power of two).
///
/// # Safety
/// As [`realloc`]; `p` was allocated with alignment `align`.
pub unsafe fn realloc_aligned(p: *mut u8, new_size: usize, align: usize) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe { resize(p, usize::MAX, new_size, align) }
}

/// Resizes, copying at most `old_size` bytes (the Layout's size when the caller knows it).
///
/// # Safety
/// As [`realloc_aligned`].
pub(crate) unsafe fn resize(p: *mut u8, old_size: usize, new_size: usize, align: usize) -> *mut u8 {
    // SAFETY: `p` is live; the new block is a different live block of at least `new_size` bytes.
    unsafe {
        if p.is_null() {
            return malloc_aligned(new_size, align);
        }
        if new_size > MAX_ALLOC_SIZE || !align.is_power_of_two() {
            return ptr::null_mut();
        }
        let usable = usable_size(p);
        if new_size <= usable
            && new_size >= usable / 2
            && !options::check()
            && (p as usize).is_multiple_of(align)
        {
            if hook::enabled() {
                hook::emit_current(schema::Resize {
                    ptr: p as u64,
                    size: new_size as u64,
                    flags: 0,
                });
            }
            return p;
        }
        let q = malloc_aligned(new_size, align);
        if q.is_null() {
            return q;
        }
        ptr::copy_nonoverlapping(p, q, usable.min(old_size).min(new_size));
        crate::free(p);
        if hook::enabled() {
            let size32 = u32::try_from(new_size).unwrap_or(u32::MAX);
            hook::emit_current(schema::Realloc {
                ptr: q as u64,
                old: p as u64,
                size: size32,
                flags: 0,
            });
        }
        q
    }
}
