//! The segment cache: an empty segment is reused for the next big block that fits (its memory
//! still resident, so the block costs no page faults), a segment serves blocks of at least
//! half its size only, and the cache is bounded by the heap it serves: a
//! share of the heap at once, and nothing resident once its purge delay has passed. Before the
//! bound, python3 under `LD_PRELOAD` peaked at 1.5 times mimalloc's resident memory, growing its
//! dicts and lists through such blocks.
//!
//! Its own test binary (so its own process): the resident-set numbers are the whole process's,
//! and the one test runs its steps in order, so that nothing else takes from the cache.
#![allow(unsafe_code)] // tests call the raw allocator API

use std::time::{Duration, Instant};

use heaplens_alloc::SEGMENT_MASK;

#[global_allocator]
static A: heaplens_alloc::HeapLens = heaplens_alloc::HeapLens;

const MIB: usize = 1 << 20;

/// Resident memory of this process, from `/proc/self/statm` (second field, in pages).
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm resident field");
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * usize::try_from(page_size).expect("page size")
}

/// A block of `size` bytes, every byte written.
fn written(size: usize) -> *mut u8 {
    // SAFETY: any size is a valid request.
    let p = unsafe { heaplens_alloc::malloc(size) };
    assert!(!p.is_null(), "malloc({size}) failed");
    // SAFETY: `p` has `size` writable bytes.
    unsafe { p.write_bytes(0x5A, size) };
    p
}

fn free(p: *mut u8) {
    // SAFETY: every caller passes a live block, once.
    unsafe { heaplens_alloc::free(p) };
}

fn segment(p: *mut u8) -> usize {
    (p as usize - 1) & !SEGMENT_MASK
}

/// Allocates and frees `n` blocks of 4 KiB, one at a time: each call takes the generic path
/// (blocks over 1 KiB always do), where the heap's housekeeping runs the cache's purge.
fn activity(n: usize) {
    for _ in 0..n {
        free(written(4096));
    }
}

/// Waits for the cache's purge: after twice the purge delay (10 ms by default) the heap's
/// housekeeping gives cached memory back to the OS. Runs the slow path until the resident set
/// is at most `target` bytes, or a deadline far past the delay; returns the resident set.
fn purged_down_to(target: usize) -> usize {
    let delay = heaplens_alloc::options::purge_delay_ms();
    let deadline = Instant::now() + Duration::from_millis(2 * delay) + Duration::from_secs(30);
    let mut now = rss_bytes();
    while now > target && Instant::now() < deadline {
        activity(64);
        std::thread::yield_now();
        now = rss_bytes();
    }
    now
}

#[test]
fn cached_segments_are_reused_bounded_and_purged() {
    activity(64); // the activity's page exists before the cache is looked at

    // Bound: large blocks freed from a heap of about 12 of them stay cached, resident, up to
    // as much as the heap's other committed memory, not all of them (and the last of their pages
    // stays a while, retired, as the only page of its size class: two blocks).
    const BLOCKS: usize = 12;
    const SIZE: usize = 3 * MIB / 2; // large pages, two blocks to a segment
    let before = rss_bytes();
    let blocks: Vec<*mut u8> = (0..BLOCKS).map(|_| written(SIZE)).collect();
    let peak = rss_bytes();
    let committed = heaplens_alloc::stats().committed_bytes;
    assert!(
        peak >= before + BLOCKS * SIZE * 9 / 10,
        "the blocks were written: {before} -> {peak} bytes resident"
    );
    for p in blocks {
        free(p);
    }
    let after = rss_bytes();
    assert!(
        after <= before + committed + 2 * SIZE,
        "{} MiB still resident after freeing {} MiB (started at {} MiB, {} MiB committed)",
        after / MIB,
        BLOCKS * SIZE / MIB,
        before / MIB,
        committed / MIB
    );

    // Purge: what the cache kept goes back to the OS after the delay (and the retired page to
    // its segment, then to the cache).
    let now = purged_down_to(before + 2 * MIB);
    assert!(
        now <= before + 2 * MIB,
        "the cached segments' memory was not purged: {} MiB resident, {} MiB before the blocks",
        now / MIB,
        before / MIB
    );

    let start = rss_bytes();
    // Reuse: a huge block's segment (4 MiB) serves the next huge block that fits in it.
    let a = written(3 * MIB);
    let seg_a = segment(a);
    free(a);
    let b = written(5 * MIB / 2);
    assert_eq!(
        segment(b),
        seg_a,
        "a freed segment is reused for the next block that fits"
    );
    free(b);
    let b = written(5 * MIB / 2); // take the 4 MiB segment out of the cache again

    // Bounded reuse: an 8 MiB segment that held 7 MiB written serves a block of 3.25 MiB (its
    // segment would be 4 MiB: a cached segment up to twice that may serve it) and keeps its
    // memory, so the block costs no page faults, and nothing more becomes resident.
    let big = written(7 * MIB);
    let seg_big = segment(big);
    let before_free = rss_bytes();
    free(big);
    // SAFETY: any size is a valid request; the block is written, in place of the old one.
    let small = unsafe { heaplens_alloc::malloc(13 * MIB / 4) };
    assert!(!small.is_null());
    assert_eq!(
        segment(small),
        seg_big,
        "the cached 8 MiB segment served the block"
    );
    // SAFETY: `small` has 13/4 MiB writable bytes.
    unsafe { small.write_bytes(0x5A, 13 * MIB / 4) };
    let after_reuse = rss_bytes();
    assert!(
        after_reuse <= before_free + MIB / 4,
        "reusing a cached segment made more memory resident: {} KiB before the old block's \
         free, {} KiB after the reuse",
        before_free >> 10,
        after_reuse >> 10
    );
    free(small);
    free(b);

    let now = purged_down_to(start + 2 * MIB);
    assert!(
        now <= start + 2 * MIB,
        "the cached huge segments' memory was not purged: {} KiB resident, {} KiB at the start",
        now >> 10,
        start >> 10
    );

    // The same for a large page, once the cache's other entries are purged (they would serve it
    // first): a 4 MiB segment that held a huge block of 3.75 MiB, written, reused for a large
    // page of 160 KiB blocks, keeps about two of those blocks' worth.
    let huge = written(15 * MIB / 4);
    let seg_huge = segment(huge);
    let before_free = rss_bytes();
    free(huge);
    // SAFETY: any size is a valid request; not written, as above.
    let large = unsafe { heaplens_alloc::malloc(160 << 10) };
    assert!(!large.is_null());
    assert_eq!(
        segment(large),
        seg_huge,
        "the cached segment served the large page"
    );
    // The segment's free slots, touched by the huge block, go back after the purge delay
    // while the large page lives on.
    let after_reuse = purged_down_to(before_free - 3 * MIB);
    assert!(
        after_reuse + 3 * MIB <= before_free,
        "a large page in a reused segment kept a huge block's memory resident: {} KiB before \
         its free, {} KiB after the reuse",
        before_free >> 10,
        after_reuse >> 10
    );
    free(large);
    let now = purged_down_to(start + 2 * MIB);
    assert!(
        now <= start + 2 * MIB,
        "the cached segment's memory was not purged: {} KiB resident, {} KiB at the start",
        now >> 10,
        start >> 10
    );
}
