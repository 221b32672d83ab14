//! The segment cache is bounded by the heap it serves: a small heap that frees a run of large
//! blocks (a segment each) keeps a share of itself cached, resident, not every segment up to a
//! fixed 128 MiB. Before the bound, python3 under `LD_PRELOAD` peaked at 1.5 times mimalloc's
//! resident memory, growing its dicts and lists through such blocks.
//!
//! Its own test binary (so its own process): the resident-set numbers are the whole process's.
#![allow(unsafe_code)] // tests call the raw allocator API

use heaplens_alloc::SEGMENT_SIZE;

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

#[test]
fn freed_large_blocks_stay_resident_only_up_to_the_cache_share() {
    const BLOCKS: usize = 12;
    const SIZE: usize = 3 * MIB / 2; // a large page: a segment of its own
    let before = rss_bytes();
    let mut blocks = Vec::with_capacity(BLOCKS);
    for i in 0..BLOCKS {
        // SAFETY: any size is a valid request.
        let p = unsafe { heaplens_alloc::malloc(SIZE) };
        assert!(!p.is_null(), "malloc({SIZE}) failed");
        // SAFETY: `p` has `SIZE` writable bytes.
        unsafe { p.write_bytes(u8::try_from(i + 1).expect("small"), SIZE) };
        blocks.push(p);
    }
    let peak = rss_bytes();
    assert!(
        peak >= before + BLOCKS * SIZE * 9 / 10,
        "the blocks were written: {before} -> {peak} bytes resident"
    );
    for p in blocks {
        // SAFETY: each block is live and freed once.
        unsafe { heaplens_alloc::free(p) };
    }
    // At once, before any cache expiry: with the heap at about BLOCKS segments, the cache keeps
    // at most a quarter of that (3 segments, 4.5 MiB written); unbounded it kept all 12 (18 MiB).
    let after = rss_bytes();
    let cached_max = BLOCKS * SEGMENT_SIZE / 4 / SEGMENT_SIZE * SIZE;
    assert!(
        after <= before + cached_max + 2 * MIB,
        "{} MiB still resident after freeing {} MiB (started at {} MiB, cache share {} MiB)",
        after / MIB,
        BLOCKS * SIZE / MIB,
        before / MIB,
        cached_max / MIB
    );
}
