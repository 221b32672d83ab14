//! An empty segment whose free pages were purged goes to the segment cache like any other, and
//! serves the next segment asked for: it is not unmapped and mapped again. (Unmapped, the
//! LD_PRELOAD suite's `stress` mapped 362 segments anew in one run, each `munmap` a TLB shootdown
//! on every core the program ran on.)
//!
//! Its own test binary (so its own process): the reserved and committed bytes are the whole
//! heap's, and no other test allocates meanwhile.
#![allow(unsafe_code)] // tests call the raw allocator API and mincore

use heaplens_alloc::{SEGMENT_MASK, stats};

mod common;

use common::{
    generic_path_activity as activity, resident_pages as resident, slow_path_until as until,
};

#[global_allocator]
static A: heaplens_alloc::HeapLens = heaplens_alloc::HeapLens;

const MIB: usize = 1 << 20;
const OS_PAGE: usize = 4096;

/// A block of `size` bytes, every byte written.
fn written(size: usize) -> usize {
    // SAFETY: any size is a valid request.
    let p = unsafe { heaplens_alloc::malloc(size) };
    assert!(!p.is_null(), "malloc({size}) failed");
    // SAFETY: `p` has `size` writable bytes.
    unsafe { p.write_bytes(0x5A, size) };
    p as usize
}

fn free(p: usize) {
    // SAFETY: every caller passes a live block, once.
    unsafe { heaplens_alloc::free(p as *mut u8) };
}

fn segment(p: usize) -> usize {
    (p - 1) & !SEGMENT_MASK
}

#[test]
fn an_empty_segment_with_purged_pages_is_cached_not_unmapped() {
    activity(64); // the activity's page exists before the blocks below

    // Two blocks of 1 MiB (large pages) in one segment.
    let mut others = Vec::new();
    let (a, b) = loop {
        let p = written(MIB);
        if let Some(&q) = others.iter().find(|&&q| segment(q) == segment(p)) {
            others.retain(|&o| o != q);
            break (q, p);
        }
        others.push(p);
        assert!(others.len() < 16, "no two blocks of 1 MiB in one segment");
    };

    // The first goes back to the OS a purge delay after its free (the segment frees no other
    // page meanwhile).
    let (inner, inner_len) = ((a + OS_PAGE).next_multiple_of(OS_PAGE), MIB - 2 * OS_PAGE);
    assert!(resident(inner, inner_len) > 0, "written, so resident");
    free(a);
    assert!(
        until(|| resident(inner, inner_len) == 0),
        "the freed block's memory was never purged"
    );

    // The second one's free empties the segment (once its page leaves the heap: a size class's
    // last page stays a while, retired). It goes to the cache, still mapped.
    let (live, reserved) = (stats().segments, stats().reserved_bytes);
    free(b);
    assert!(
        until(|| stats().segments < live),
        "the segment never emptied"
    );
    assert_eq!(
        stats().reserved_bytes,
        reserved,
        "the emptied segment, with purged pages, was unmapped instead of cached"
    );

    // It serves the next large page: no new mapping.
    let c = written(2 * MIB);
    assert_eq!(
        stats().reserved_bytes,
        reserved,
        "the next large block mapped a new segment"
    );
    assert_eq!(segment(c), segment(b), "the cached segment served it");
    free(c);
    for p in others {
        free(p);
    }
}
