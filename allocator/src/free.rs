//! `free`. The fast path: the block's segment belongs to this thread and its page is neither full
//! nor holding aligned blocks, so push the block onto the page's `local_free`. Otherwise
//! [`free_generic`]: a local free with more to do, or a cross-thread free onto `thread_free`.

use core::sync::atomic::Ordering::*;

use crate::event::flags;
use crate::heap::{self, Heap, thread_id};
use crate::page::{
    self, Block, DELAYED_FREEING, FLAG_HAS_ALIGNED, NO_DELAYED_FREE, Page, USE_DELAYED_FREE,
};
use crate::schema;
use crate::segment::{self, Segment, page_of, segment_of};
use crate::{check, hook, options};

/// Frees a block; null is a no-op.
///
/// # Safety
/// `p` is null or a live pointer from heaplens, not used afterwards.
#[inline]
pub unsafe fn free(p: *mut u8) {
    if p.is_null() {
        return;
    }
    let segment = segment_of(p);
    // SAFETY: `p` is live, so its segment header is mapped; a page of this thread's segment with
    // no flags holds `p` at a block start and belongs to this thread's heap.
    unsafe {
        if options::watching() {
            return free_watched(segment, p);
        }
        free_reported::<false>(segment, p);
    }
}

/// [`free`] in checked mode or with the hook on (`watch`, from [`options::watch`], says which):
/// the same steps, with the pointer verified first and the local free reported. Out of line, so
/// that the fast path inlined into callers is the same with the hook compiled in (and off) as
/// compiled out; its rare cases are tail calls, so the traced local free needs no stack frame.
///
/// # Safety
/// As [`free`]; `segment` is `p`'s.
#[inline(never)]
unsafe extern "C" fn free_watched(segment: *mut Segment, p: *mut u8) {
    let watch = options::watch();
    // SAFETY: forwarded.
    unsafe {
        if watch & options::WATCH_CHECK != 0 {
            return free_checked(segment, p, watch);
        }
        // Not checked mode, so the hook is why `free` came here.
        free_reported::<{ hook::COMPILED }>(segment, p);
    }
}

/// [`free_watched`] in checked mode: the pointer is verified before anything is read from it.
///
/// # Safety
/// As [`free`]; `segment` is `p`'s.
#[inline(never)]
unsafe fn free_checked(segment: *mut Segment, p: *mut u8, watch: u8) {
    check::verify_segment(segment, p);
    // SAFETY: verified above.
    unsafe {
        if hook::COMPILED && watch & options::WATCH_HOOK != 0 {
            free_reported::<true>(segment, p);
        } else {
            free_reported::<false>(segment, p);
        }
    }
}

/// [`free`]'s steps (its fast path, inlined there), with the local free reported to the hook if
/// `TRACE`.
///
/// # Safety
/// As [`free`]; `segment` is `p`'s.
#[inline(always)]
unsafe fn free_reported<const TRACE: bool>(segment: *mut Segment, p: *mut u8) {
    // SAFETY: as in `free`.
    unsafe {
        let page = page_of(segment, p);
        if segment::is_owned_by_caller(segment) && (*page).flags_owned() == 0 {
            if TRACE {
                // The page is in a segment of the calling thread, whose one heap owns all of
                // its pages: its heap is the thread's, read from the thread pointer rather than
                // from the page's second cache line, which a local free touches nowhere else
                // (binary trees frees blocks across many pages: that load was a third of the
                // traced free's samples).
                let heap = crate::heap::default_heap();
                debug_assert_eq!(heap, (*page).heap());
                if !hook::try_free_event(heap, p) {
                    return free_local_reported(heap, page, p);
                }
            }
            if push_local(page, p.cast()) {
                retire_local(page);
            }
            return;
        }
        free_generic(segment, page, p);
    }
}

/// Retires `page`, which the local free just emptied. Out of line and `extern "C"` (it cannot
/// unwind) like `free`'s other exits, so the fast path reaches it with a jump and needs no stack
/// frame; it loads the page's heap itself, so the fast path does not.
///
/// # Safety
/// `page` is an empty page of the calling thread's heap.
#[inline(never)]
unsafe extern "C" fn retire_local(page: *mut Page) {
    // SAFETY: forwarded; an owned page's heap is the calling thread's.
    unsafe { heap::retire((*page).heap(), page) }
}

/// A local free whose event did not fit the thread's buffer: reported through the slow path.
///
/// # Safety
/// `page` is a page of the calling thread's `heap` holding the live block `p`.
#[inline(never)]
unsafe fn free_local_reported(heap: *mut Heap, page: *mut Page, p: *mut u8) {
    // SAFETY: forwarded.
    unsafe {
        hook::emit(
            heap,
            schema::Free {
                ptr: p as u64,
                flags: 0,
            },
        );
        if push_local(page, p.cast()) {
            heap::retire(heap, page);
        }
    }
}

/// Pushes `block` onto `page.local_free`; true when the page is now empty (`used == 0`).
///
/// # Safety
/// The calling thread owns `page`; `block` is a live block of it.
#[inline(always)]
pub(crate) unsafe fn push_local(page: *mut Page, block: *mut Block) -> bool {
    // SAFETY: owner-only fields; `used` counts `block`, so it is above zero.
    unsafe {
        let pg = &mut *page;
        (*block).next = pg.local_free;
        pg.local_free = block;
        pg.local_free_count.store(pg.local_free_len() + 1, Relaxed);
        pg.used_dec_is_zero()
    }
}

#[inline(never)]
unsafe extern "C" fn free_generic(segment: *mut Segment, page: *mut Page, p: *mut u8) {
    // SAFETY: `p` is live (checked mode verifies it and aborts otherwise).
    unsafe {
        let block = if options::check() {
            check::free(segment, page, p)
        } else if (*page).flags.load(Relaxed) & FLAG_HAS_ALIGNED != 0 {
            (*page).block_start_of(p)
        } else {
            p
        };
        let owner = (*segment).thread_id.load(Relaxed);
        if owner != 0 && owner & !1 == thread_id() {
            if hook::enabled() {
                hook::on_free(p, 0);
            }
            heap::free_block_local(page, block.cast());
        } else {
            // Whether the trace knows the page, read while the block is live (which keeps the
            // segment mapped): frees into an untraced thread's pages are not reported.
            let known = hook::enabled() && (*segment).traced.load(Relaxed);
            let how = free_block_mt(page, block.cast());
            if known && hook::enabled() {
                hook::on_free(p, how);
            }
            if owner == 0 {
                let heap = heap::default_heap();
                if heap != heap::EMPTY_HEAP_PTR {
                    segment::reclaim_on_free(heap, segment);
                }
            }
        }
    }
}

/// A free from a thread that does not own the page: push onto `thread_free` with a CAS, or, the
/// first time after the owner moved the page to its full queue, onto the owner heap's delayed
/// list (see [`crate::page`]).
/// Returns the `Free` event's flags: `CROSS_THREAD`, or `TO_DELAYED` when the block went to the
/// owner heap's delayed list, with `EPOCH` if the page's census epoch was set when the CAS that
/// decided it succeeded.
///
/// # Safety
/// `block` is a live block of `page`, not owned by the calling thread's heap, freed once.
pub(crate) unsafe fn free_block_mt(page: *mut Page, block: *mut Block) -> u8 {
    let epoch = |tf: usize| if page::epoch_of(tf) { flags::EPOCH } else { 0 };
    // SAFETY: `page` is live while `block` is (the owner cannot free the page before collecting
    // this block); thread_free and the count are atomics.
    unsafe {
        let tf_cell = &(*page).thread_free;
        let mut tf = tf_cell.load(Relaxed);
        let claimed_epoch = loop {
            if page::state_of(tf) == USE_DELAYED_FREE {
                let claimed = (tf & !3) | DELAYED_FREEING;
                match tf_cell.compare_exchange_weak(tf, claimed, Acquire, Relaxed) {
                    Ok(_) => break epoch(tf),
                    Err(cur) => tf = cur,
                }
            } else {
                // One CAS pushes the block and counts it (the count is in the same word).
                (*block).next = page::block_of(tf);
                match tf_cell.compare_exchange_weak(tf, page::pushed(tf, block), Release, Relaxed) {
                    Ok(_) => return flags::CROSS_THREAD | epoch(tf),
                    Err(cur) => tf = cur,
                }
            }
        };
        // We hold DELAYED_FREEING: the owner heap cannot go away (abandon waits for us).
        let heap = (*page).heap.load(Acquire);
        let mut tf = tf_cell.load(Relaxed);
        if heap.is_null() {
            loop {
                (*block).next = page::block_of(tf);
                let pushed = (page::pushed(tf, block) & !3) | NO_DELAYED_FREE;
                match tf_cell.compare_exchange_weak(tf, pushed, Release, Relaxed) {
                    Ok(_) => return flags::CROSS_THREAD | epoch(tf),
                    Err(cur) => tf = cur,
                }
            }
        }
        heap::push_delayed(heap, block);
        loop {
            match tf_cell.compare_exchange_weak(tf, (tf & !3) | NO_DELAYED_FREE, Release, Relaxed) {
                Ok(_) => return flags::TO_DELAYED | claimed_epoch,
                Err(cur) => tf = cur,
            }
        }
    }
}
