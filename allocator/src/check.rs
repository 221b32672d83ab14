//! Checked mode (`HEAPLENS_CHECK=1`): every block carries a 16-byte trailer and every `malloc` and
//! `free` goes through the generic paths, which verify it. Detected, reported with address, page
//! and size class, then `abort()`:
//! - a double free (the trailer says "freed");
//! - a free of a pointer heaplens never returned (outside every segment, outside a page's carved
//!   blocks, not at a block start, or a block whose trailer is not a live one);
//! - a write past the end of a block (the bytes between the requested size and the trailer are a
//!   pattern, and the trailer repeats the size it guards).
//!
//! ```text
//! | user bytes (size) | 0xBD pattern ... | req_end: u64 | tag: u64 |   <- block_size
//! ```
//! `req_end` is where the user's bytes end, as an offset from the block start; `tag` is
//! `LIVE ^ req_end` while allocated and `FREED ^ req_end` once freed. The cost is paid only in
//! checked mode: its direct slots stay empty (so `malloc` is always generic) and its segments
//! record the owner thread with the low bit set (so `free` is always generic).

use core::fmt::Write as _;
use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::heap::{self, Heap};
use crate::page::{self, FLAG_HAS_ALIGNED, Page};
use crate::segment::Segment;
use crate::{MAX_ALIGN, options, segment_map};

const TRAILER: usize = 16;
const PATTERN: u8 = 0xBD;
const LIVE: u64 = 0xA11C_A7ED_B10C_0001;
const FREED: u64 = 0xF4EE_D00D_B10C_0002;

/// Whether checked mode is on.
pub fn enabled() -> bool {
    options::check()
}

/// Allocates `size` bytes aligned to `align`, with the trailer.
///
/// # Safety
/// `heap` is the calling thread's initialised heap.
pub(crate) unsafe fn malloc(heap: *mut Heap, size: usize, align: usize, zero: bool) -> *mut u8 {
    let extra = if align > MAX_ALIGN { align - 1 } else { 0 };
    let Some(total) = size.checked_add(TRAILER + extra) else {
        return ptr::null_mut();
    };
    // SAFETY: the heap is this thread's; the block holds `total` bytes, so the aligned pointer,
    // the user bytes, the pattern and the trailer all fit inside it.
    unsafe {
        let page = if crate::segment::aligned_fits_a_page(total, align.max(MAX_ALIGN)) {
            heap::find_page(heap, total)
        } else {
            heap::huge_page(heap, size + TRAILER, align.max(MAX_ALIGN))
        };
        if page.is_null() {
            return ptr::null_mut();
        }
        let block = page::pop(page, 0);
        let p = (block as usize).next_multiple_of(align.max(MAX_ALIGN)) as *mut u8;
        if p != block {
            (*page).set_flag(FLAG_HAS_ALIGNED, true);
        }
        let bsize = (*page).block_size();
        let trailer = block.add(bsize - TRAILER);
        let req_end = (p as usize - block as usize + size) as u64;
        if zero {
            ptr::write_bytes(p, 0, size);
        }
        let pad_start = p.add(size);
        ptr::write_bytes(pad_start, PATTERN, trailer as usize - pad_start as usize);
        trailer.cast::<u64>().write_unaligned(req_end);
        trailer.add(8).cast::<u64>().write_unaligned(LIVE ^ req_end);
        p
    }
}

/// Aborts with a report unless `segment` (that of `p`) is a live heaplens segment: called before
/// anything is read from it, since the address below a foreign pointer may not be mapped.
pub(crate) fn verify_segment(segment: *const Segment, p: *const u8) {
    if !segment_map::contains(segment) {
        report(
            "free of a pointer heaplens never returned (not in any heaplens segment)",
            p,
            None,
        );
    }
}

/// Verifies a free of `p` and marks its block freed; returns the block start. Aborts with a report
/// on a double free, a foreign pointer or a damaged trailer.
///
/// # Safety
/// `segment`/`page` are `segment_of(p)`/`page_of(..)`; they may be garbage if `p` is foreign,
/// which is what this checks before reading them.
pub(crate) unsafe fn free(segment: *mut Segment, page: *mut Page, p: *mut u8) -> *mut u8 {
    verify_segment(segment, p);
    // SAFETY: the segment is live (registered), so its header and pages are readable; the block
    // range is checked against the page's carved blocks before the trailer is read.
    unsafe {
        let pg = &*page;
        let bsize = pg.block_size();
        let start = pg.start as usize;
        let carved_end = start + pg.capacity() as usize * bsize;
        if !pg.is_in_use() || bsize < TRAILER || (p as usize) < start || p as usize >= carved_end {
            report(
                "free of a pointer heaplens never returned (not a carved block)",
                p,
                Some(pg),
            );
        }
        let block = pg.block_start_of(p);
        if block != p && pg.flags.load(Relaxed) & FLAG_HAS_ALIGNED == 0 {
            report(
                "free of a pointer heaplens never returned (inside a block)",
                p,
                Some(pg),
            );
        }
        let trailer = block.add(bsize - TRAILER);
        let req_end = trailer.cast::<u64>().read_unaligned();
        let tag = trailer.add(8).cast::<u64>().read_unaligned();
        if tag == FREED ^ req_end {
            report("double free", p, Some(pg));
        }
        let user_end = block as usize + req_end as usize;
        if tag != LIVE ^ req_end || req_end as usize > bsize - TRAILER || user_end < p as usize {
            report(
                "write past the end of a block, or free of a pointer heaplens never returned (trailer damaged)",
                p,
                Some(pg),
            );
        }
        let mut q = user_end as *const u8;
        while (q as usize) < trailer as usize {
            if *q != PATTERN {
                report(
                    "write past the end of a block (padding overwritten)",
                    p,
                    Some(pg),
                );
            }
            q = q.add(1);
        }
        trailer
            .add(8)
            .cast::<u64>()
            .write_unaligned(FREED ^ req_end);
        block
    }
}

/// The size requested for the live block at `p`.
///
/// # Safety
/// `page` is `p`'s page and `p` is live.
pub(crate) unsafe fn requested_size(page: *mut Page, p: *const u8) -> usize {
    // SAFETY: a live checked block has a trailer at its end.
    unsafe {
        let block = (*page).block_start_of(p);
        let trailer = block.add((*page).block_size() - TRAILER);
        let req_end = trailer.cast::<u64>().read_unaligned() as usize;
        (block as usize + req_end).saturating_sub(p as usize)
    }
}

static REPORTING: AtomicBool = AtomicBool::new(false);

/// Writes a report to stderr and aborts.
fn report(what: &str, p: *const u8, page: Option<&Page>) -> ! {
    if !REPORTING.swap(true, Relaxed) {
        let mut out = crate::stats::FdWriter::<512>::new(2);
        let _ = write!(out, "heaplens: {what}: {p:p}");
        if let Some(pg) = page {
            let segment = crate::segment::segment_of_page(pg);
            let _ = write!(
                out,
                " (page {} of {} segment {:p}, size class {} = {} B blocks)",
                pg.index(),
                // SAFETY: `pg` lies in a live segment (checked by the caller).
                unsafe { (*segment).kind().name() },
                segment,
                pg.bin(),
                pg.block_size()
            );
        }
        let _ = out.write_str("\n");
        out.flush();
    }
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}
